"""Load and fault script for several bridges on one shared PostgreSQL store: prints figures.
testkit/test_load_pg.py runs it at a smaller size.

    python testkit/load_pg.py [--bridges 3] [--requests 10000] [--concurrency 50]
                              [--kill-requests N] [--outage 10]

Starts a throwaway PostgreSQL (testkit/pg.py), a fake Ollama (its own process) and N
`python bridge.py` processes on that database (USAGE_DB_URL, INSTANCE_NAME b1..bN, a spool
each at USAGE_DB_PATH, the fake `claude`), started at once (they race to migrate). Requests
are spread round robin over the bridges, each with its own X-Request-ID (`<phase>-<n>`), in
load.py's mix (successes, 502s, 400s, clients hanging up mid-stream), then:
a. the mixed load; once every spool is empty (/health database.queued == 0) the rows in
   PostgreSQL are exactly the requests (by X-Request-ID: outcome and instance), and
   /v1/usage on every bridge shows the same team totals, equal to the rows;
b. kill -9 of one bridge in the middle of more load, restarted on the same spool: every
   request that got a complete answer (from any bridge) has exactly one row;
c. PostgreSQL stopped for --outage seconds in the middle of more load, then started: every
   request still gets its expected status, and every row arrives afterwards (time to drain
   and the most rows queued are printed).
At the end the team totals (/v1/usage, from the daily sums) equal the raw rows again (no
row shipped twice is counted twice). Exits 1 on any mismatch. Every loop is bounded in
count and time.
"""

import argparse
import collections
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from testkit import load  # noqa: E402
from testkit.pg import Cluster  # noqa: E402

KINDS = list(load.MIX)
STALL_SECONDS = 15  # a request this old: the bridges' stacks are dumped (once a phase)
# Loaded by the bridges (PYTHONPATH): SIGUSR1 appends every thread's name and stack to a
# file, the evidence when a request hangs (faulthandler would show only 100 threads, unnamed).
STACKS_HOOK = """import os, signal, sys, threading, traceback
def _dump(signum, frame):
    names = {t.ident: t.name for t in threading.enumerate()}
    with open(os.environ["BRIDGE_STACKS_FILE"], "a") as out:
        for ident, top in sys._current_frames().items():
            out.write(f"--- thread {names.get(ident, ident)}\\n")
            out.write("".join(traceback.format_stack(top)))
if os.environ.get("BRIDGE_STACKS_FILE"):
    signal.signal(signal.SIGUSR1, _dump)
"""
WEIGHTS = [load.MIX[k][0] for k in KINDS]


def pct_ms(values, q):
    """The q-quantile of seconds, in ms (None for no values)."""
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1)


class FakeOllama:
    """testkit/fake_ollama.py in its own process (the load generator keeps its GIL)."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "testkit" / "fake_ollama.py"),
                                      "--port", "0"], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.url = None
        line = self.proc.stdout.readline()  # "fake-ollama listening on http://..."
        if "listening on" not in line:
            self.stop()
            raise RuntimeError(f"the fake Ollama did not start: {line!r}")
        self.url = line.split()[-1]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Fleet:
    """N bridges on one database; urls[i] is bridge i's current address."""

    def __init__(self, tmp, db_url, ollama_url, count):
        self.tmp, self.db_url, self.ollama_url = tmp, db_url, ollama_url
        self.names = [f"b{i + 1}" for i in range(count)]
        self.bridges = [None] * count
        self.urls = [None] * count
        self.stalls = []  # requests stuck past STALL_SECONDS, and where the stacks went
        errors = []

        def up(i):
            try:
                self.start(i)
            except Exception as exc:  # reported below, after every start has ended
                errors.append(repr(exc))

        threads = [threading.Thread(target=up, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        if errors or None in self.urls:
            self.stop()
            raise RuntimeError(f"bridges did not start: {errors}")

    def spool(self, i):
        return self.tmp / f"spool-{self.names[i]}.db"

    def stacks_path(self, i):
        return self.tmp / f"stacks-{self.names[i]}.txt"

    def start(self, i):
        workdir = self.tmp / self.names[i]
        workdir.mkdir(exist_ok=True)
        hooks = self.tmp / "hooks"
        hooks.mkdir(exist_ok=True)
        (hooks / "sitecustomize.py").write_text(STACKS_HOOK)
        running = load.Bridge(workdir, self.spool(i), self.ollama_url,
                              USAGE_DB_URL=self.db_url, INSTANCE_NAME=self.names[i],
                              PYTHONPATH=hooks, BRIDGE_STACKS_FILE=self.stacks_path(i))
        self.bridges[i] = running
        self.urls[i] = running.url
        return running

    def dump_stacks(self):
        """SIGUSR1 to every bridge: each writes its threads' stacks to stacks_path(i)."""
        for running in self.bridges:
            if running is not None and running.proc.poll() is None:
                running.proc.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        return [str(self.stacks_path(i)) for i in range(len(self.bridges))]

    def kill(self, i):
        self.bridges[i].proc.kill()
        self.bridges[i].proc.wait()

    def health(self, i, timeout=5):
        return requests.get(self.urls[i] + "/health", timeout=timeout).json()["database"]

    def queued(self):
        """[rows queued] per bridge (None where /health did not answer)."""
        out = []
        for i in range(len(self.urls)):
            try:
                out.append(self.health(i, timeout=2)["queued"])
            except (requests.RequestException, ValueError, KeyError):
                out.append(None)
        return out

    def drained(self, timeout=60):
        """Wait until every spool is empty; seconds it took, or None past timeout."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if all(q == 0 for q in self.queued()):
                return time.monotonic() - t0
            time.sleep(0.05)
        return None

    def stop(self):
        for running in self.bridges:
            if running is not None:
                running.stop()


class Monitor:
    """Samples every bridge's database.queued every `every` seconds, in a thread."""

    def __init__(self, fleet, every=0.1):
        self.fleet, self.every = fleet, every
        self.samples = []  # (monotonic time, [queued per bridge])
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.halt.wait(self.every):
            self.samples.append((time.monotonic(), self.fleet.queued()))

    def stop(self):
        self.halt.set()
        self.thread.join(10)

    def max_queued(self, since=0.0):
        seen = [q for t, qs in self.samples if t >= since for q in qs if q is not None]
        return max(seen, default=0)

    def timeline(self, since):
        return [(round(t - since, 1), qs) for t, qs in self.samples if t >= since]

    def first_empty(self, since):
        """Seconds after `since` until each bridge had been seen with an empty spool;
        the slowest bridge's (None if one never was)."""
        out = []
        for i in range(len(self.fleet.urls)):
            times = [t for t, qs in self.samples if t >= since and qs[i] == 0]
            out.append(min(times) - since if times else None)
        return None if None in out else max(out)


def drive(fleet, phase, total, concurrency, seed, stop=None, progress=None):
    """`total` requests of load.MIX spread round robin over the fleet (its current urls),
    each with X-Request-ID `<phase>-<n>`. Returns (results, seconds); a result is a dict:
    xid, kind, bridge, expected status and outcome, got (status or the exception),
    complete (the whole answer came, as expected), latency (s). `stop` (an Event) ends the
    run early (requests not yet sent are skipped); `progress` is called after each."""
    import random
    plan = random.Random(seed).choices(KINDS, WEIGHTS, k=total)
    results = []
    lock = threading.Lock()
    n = len(fleet.urls)

    inflight = {}  # xid -> (bridge, start)
    finished = threading.Event()

    def watchdog():  # a request stuck: the bridges' stacks, once
        while not finished.wait(0.5):
            now = time.monotonic()
            with lock:
                stuck = [(x, b, now - t) for x, (b, t) in inflight.items()
                         if now - t > STALL_SECONDS]
            if stuck:
                fleet.stalls.append({"phase": phase, "stuck": len(stuck),
                                     "first": stuck[0], "stacks": fleet.dump_stacks()})
                return

    def one(i, kind):
        if stop is not None and stop.is_set():
            return
        _, body, stream, hang_up, outcome, status = load.MIX[kind]
        xid = f"{phase}-{i:06d}"
        which = i % n
        t = time.monotonic()
        with lock:
            inflight[xid] = (fleet.names[which], t)
        done_id = None
        try:
            got, done_id = load.chat(fleet.urls[which], body, stream, hang_up,
                                     timeout=60, headers={"X-Request-ID": xid})
        except requests.RequestException as exc:
            got = type(exc).__name__
        latency = time.monotonic() - t
        complete = got == status and status != 499 and (status != 200 or bool(done_id))
        item = {"xid": xid, "kind": kind, "bridge": which, "status": status,
                "outcome": outcome, "got": got, "complete": complete, "latency": latency}
        with lock:
            results.append(item)
            inflight.pop(xid, None)
        if progress is not None:
            progress(item)

    t0 = time.monotonic()
    dog = threading.Thread(target=watchdog, daemon=True)
    dog.start()
    try:
        with ThreadPoolExecutor(concurrency) as pool:
            for i, kind in enumerate(plan):
                pool.submit(one, i, kind)
    finally:
        finished.set()
        dog.join(10)
    return results, time.monotonic() - t0


def pg_rows(db_url, phase):
    """{x_request_id: (outcome, instance, count)} of a phase's rows."""
    import psycopg
    with psycopg.connect(db_url, connect_timeout=10) as db:
        return {x: (o, i, n) for x, o, i, n in db.execute(
            "SELECT x_request_id, MIN(outcome), MIN(instance), COUNT(*) FROM requests"
            " WHERE x_request_id LIKE %s GROUP BY x_request_id", (phase + "-%",))}


def pg_totals(db_url):
    """{instance: (rows, rows not ok)} over every row."""
    import psycopg
    with psycopg.connect(db_url, connect_timeout=10) as db:
        return {i: (int(n), int(e)) for i, n, e in db.execute(
            "SELECT instance, COUNT(*), SUM(CASE WHEN outcome <> 'ok' THEN 1 ELSE 0 END)"
            " FROM requests GROUP BY instance")}


def wait_rows(db_url, phase, count, timeout=60):
    """Wait until a phase has `count` rows (cancelled rows are written when the bridge
    notices the client left); the rows."""
    deadline = time.monotonic() + timeout
    while True:
        rows = pg_rows(db_url, phase)
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def tally(pairs):
    """{(a, b): n} -> ({a: n}, {b: n}) summed over the other key."""
    by_first, by_second = collections.Counter(), collections.Counter()
    for (a, b), n in pairs.items():
        by_first[a] += n
        by_second[b] += n
    return dict(sorted(by_first.items())), dict(sorted(by_second.items()))


def compare_rows(fleet, results, rows):
    """Expected (from the answers) vs found (in PostgreSQL) per outcome and per instance,
    and the X-Request-IDs that differ."""
    expected = {r["xid"]: (r["outcome"], fleet.names[r["bridge"]])
                for r in results if r["got"] == r["status"]}
    found = {x: (o, i) for x, (o, i, _) in rows.items()}
    exp_outcome, exp_instance = tally(collections.Counter(expected.values()))
    got_outcome, got_instance = tally(collections.Counter(
        found[x] for x in found if x in expected))
    wrong = sorted(x for x in expected if found.get(x) != expected[x])
    extra = sorted(x for x in found if x not in expected)
    twice = sorted(x for x, (_, _, n) in rows.items() if n != 1)
    return {"expected_outcomes": exp_outcome, "rows_outcomes": got_outcome,
            "expected_instances": exp_instance, "rows_instances": got_instance,
            "missing_or_different": len(wrong), "examples": wrong[:5],
            "rows_without_answer": len(extra), "rows_twice": len(twice)}


def timing(results, seconds):
    lat = [r["latency"] for r in results]
    ok = [r["latency"] for r in results if r["complete"]]
    return {"requests": len(results), "seconds": round(seconds, 2),
            "rps": round(len(results) / seconds, 1) if seconds else None,
            "p50_ms": pct_ms(lat, .5), "p95_ms": pct_ms(lat, .95),
            "complete_p50_ms": pct_ms(ok, .5), "complete_p95_ms": pct_ms(ok, .95),
            "wrong_status": sum(r["got"] != r["status"] for r in results),
            "wrong_examples": [(r["xid"], r["kind"], r["got"], round(r["latency"], 1))
                               for r in results if r["got"] != r["status"]][:5]}


def usage_views(fleet):
    """GET /v1/usage from every bridge (sorted items, durations left out: they are
    averages that the same sums give alike anyway)."""
    views = []
    for url in fleet.urls:
        resp = requests.get(url + "/v1/usage", timeout=30)
        resp.raise_for_status()
        views.append(sorted(json.dumps(item, sort_keys=True) for item in resp.json()))
    return [[json.loads(item) for item in view] for view in views]


def team_check(fleet, db_url, problems, out, label):
    """Every bridge's /v1/usage is the same and equals the raw rows per instance."""
    views = usage_views(fleet)
    same = all(view == views[0] for view in views)
    per_instance = collections.defaultdict(lambda: [0, 0])
    for item in views[0]:
        per_instance[item["instance"]][0] += item["requests"]
        per_instance[item["instance"]][1] += item["errors"]
    usage = {k: tuple(v) for k, v in sorted(per_instance.items())}
    raw = dict(sorted(pg_totals(db_url).items()))
    filtered = {}
    for name in fleet.names:  # ?instance= on another bridge than the one named
        other = fleet.urls[(fleet.names.index(name) + 1) % len(fleet.urls)]
        items = requests.get(other + "/v1/usage", params={"instance": name}, timeout=30).json()
        filtered[name] = sum(item["requests"] for item in items)
    filter_ok = all(filtered[n] == usage.get(n, (0, 0))[0] for n in fleet.names)
    out(f"  {label}: /v1/usage the same on all {len(views)} bridges: {same}; "
        f"(requests, errors) per instance {usage}; raw rows {raw}; "
        f"?instance= on another bridge {filtered}")
    if not same:
        problems.append(f"{label}: the bridges' /v1/usage differ")
    if usage != raw:
        problems.append(f"{label}: /v1/usage {usage} != rows in PostgreSQL {raw}")
    if not filter_ok:
        problems.append(f"{label}: ?instance= totals {filtered} != {usage}")
    return {"same_on_every_bridge": same, "usage": usage, "rows": raw,
            "instance_filter": filtered}


def run(bridges=3, total=10_000, concurrency=50, kill_total=None, outage=10.0,
        out=print):
    """Every phase; returns the figures (and prints them through `out`); figures
    ["problems"] lists every mismatch."""
    figures = {"problems": []}
    problems = figures["problems"]
    kill_total = kill_total or max(300, total // 5)
    tmp = Path(tempfile.mkdtemp(prefix="bridge-load-pg-"))
    cluster = ollama = fleet = monitor = None
    try:
        t0 = time.monotonic()
        cluster = Cluster()
        cluster.create()
        db_url = cluster.url("bridge_usage")
        ollama = FakeOllama()
        fleet = Fleet(tmp, db_url, ollama.url, bridges)
        out(f"PostgreSQL, fake Ollama and {bridges} bridges up in "
            f"{time.monotonic() - t0:.1f} s ({', '.join(fleet.urls)})")
        monitor = Monitor(fleet)
        drive(fleet, "w", 4 * concurrency, concurrency, seed=0)  # warm-up: pools fill

        # a. mixed load
        since = time.monotonic()
        results, seconds = drive(fleet, "a", total, concurrency, seed=1)
        drain = fleet.drained()
        answered = sum(r["got"] == r["status"] for r in results)
        rows = wait_rows(db_url, "a", answered)
        fig = {**timing(results, seconds), **compare_rows(fleet, results, rows),
               "drain_after_load_s": round(drain, 2) if drain is not None else None,
               "max_queued": monitor.max_queued(since)}
        figures["mixed"] = fig
        out(f"a. mixed load: {fig['requests']} requests at concurrency {concurrency} over "
            f"{bridges} bridges in {seconds:.1f} s ({fig['rps']} req/s), p50 "
            f"{fig['p50_ms']} ms, p95 {fig['p95_ms']} ms, {fig['wrong_status']} unexpected "
            f"statuses; max queued {fig['max_queued']}, spools empty "
            f"{fig['drain_after_load_s']} s after the load")
        out(f"  rows per outcome {fig['rows_outcomes']} (expected "
            f"{fig['expected_outcomes']})")
        out(f"  rows per instance {fig['rows_instances']} (expected "
            f"{fig['expected_instances']})")
        check_rows("a", fig, problems)
        figures["mixed"]["team"] = team_check(fleet, db_url, problems, out, "a")

        # b. kill -9 of one bridge mid-load, restarted on the same spool
        victim = 1 % bridges
        done = collections.Counter()
        lock = threading.Lock()
        third = threading.Event()

        def counted(item):
            with lock:
                done["n"] += 1
                if done["n"] >= kill_total // 3:
                    third.set()

        holder = {}
        loader = threading.Thread(target=lambda: holder.update(result=drive(
            fleet, "b", kill_total, concurrency, seed=2, progress=counted)))
        loader.start()
        third.wait(120)
        queued_at_kill = fleet.queued()[victim]
        fleet.kill(victim)
        t_kill = time.monotonic()
        fleet.start(victim)
        restart_s = time.monotonic() - t_kill
        loader.join(300)
        results, seconds = holder["result"]
        drain = fleet.drained()
        complete = [r for r in results if r["complete"]]
        rows = wait_rows(db_url, "b", len(complete), timeout=15)
        missing = [r["xid"] for r in complete if r["xid"] not in rows]
        twice = sorted(x for x, (_, _, n) in rows.items() if n != 1)
        failed = collections.Counter(str(r["got"]) for r in results
                                     if r["got"] != r["status"])
        spool = sqlite3.connect(fleet.spool(victim))
        integrity = spool.execute("PRAGMA integrity_check").fetchone()[0]
        spool.close()
        fig = {**timing(results, seconds), "complete": len(complete),
               "complete_on_victim": sum(r["bridge"] == victim for r in complete),
               "missing": len(missing), "missing_examples": missing[:5],
               "rows_twice": len(twice), "rows": len(rows), "failed": dict(failed),
               "restart_s": round(restart_s, 2), "queued_at_kill": queued_at_kill,
               "spool_integrity": integrity,
               "drain_s": round(drain, 2) if drain is not None else None}
        figures["kill"] = fig
        out(f"b. kill -9 of {fleet.names[victim]} mid-load ({queued_at_kill} rows in its "
            f"spool just before), restarted on the same spool in {restart_s:.1f} s: "
            f"{fig['requests']} requests ({fig['rps']} req/s, p50 {fig['p50_ms']} ms, p95 "
            f"{fig['p95_ms']} ms), {len(complete)} complete answers "
            f"({fig['complete_on_victim']} from {fleet.names[victim]}), {len(missing)} of "
            f"them without a row, {len(twice)} rows twice; failed as expected from the "
            f"kill: {dict(failed)}; spool integrity_check {integrity}")
        if missing or twice or integrity != "ok" or not complete:
            problems.append(f"b: {len(missing)} complete answers without a row "
                            f"{missing[:5]}, {len(twice)} rows twice, integrity {integrity}")
        if drain is None:
            problems.append("b: the spools did not empty")

        # c. PostgreSQL stopped mid-load
        halt = threading.Event()
        holder = {}
        started = threading.Event()
        loader = threading.Thread(target=lambda: holder.update(result=drive(
            fleet, "c", 10 * total, concurrency, seed=3, stop=halt,
            progress=lambda item: started.set())))
        loader.start()
        started.wait(60)
        time.sleep(1.0)
        t_down = time.monotonic()
        cluster.stop()
        time.sleep(outage)
        cluster.start()
        t_back = time.monotonic()
        time.sleep(max(3.0, outage / 2))  # load goes on after PostgreSQL is back
        halt.set()
        loader.join(300)
        results, seconds = holder["result"]
        drain_end = fleet.drained()
        time.sleep(3 * monitor.every)  # the monitor's samples catch up
        answered = sum(r["got"] == r["status"] for r in results)
        rows = wait_rows(db_url, "c", answered)
        during = [r for r in results if r["status"] == 200]
        fig = {**timing(results, seconds), **compare_rows(fleet, results, rows),
               "outage_s": round(t_back - t_down, 1),
               "ok_expected": len(during),
               "ok_answered": sum(r["got"] == 200 for r in during),
               "max_queued": monitor.max_queued(t_down),
               "drain_after_pg_back_s": monitor.first_empty(t_back),
               "drain_after_load_s": round(drain_end, 2) if drain_end is not None else None,
               "dropped": [fleet.health(i)["dropped"] for i in range(bridges)]}
        if fig["drain_after_pg_back_s"] is not None:
            fig["drain_after_pg_back_s"] = round(fig["drain_after_pg_back_s"], 2)
        figures["outage"] = fig
        out(f"c. PostgreSQL down {fig['outage_s']} s mid-load: {fig['requests']} requests "
            f"({fig['rps']} req/s, p50 {fig['p50_ms']} ms, p95 {fig['p95_ms']} ms), "
            f"{fig['wrong_status']} unexpected statuses, {fig['ok_answered']} of "
            f"{fig['ok_expected']} successes answered 200; max queued {fig['max_queued']} "
            f"rows; every spool empty {fig['drain_after_pg_back_s']} s after PostgreSQL "
            f"was back; dropped {fig['dropped']}")
        out(f"  rows per outcome {fig['rows_outcomes']} (expected "
            f"{fig['expected_outcomes']})")
        out(f"  rows per instance {fig['rows_instances']} (expected "
            f"{fig['expected_instances']})")
        check_rows("c", fig, problems)
        if fig["ok_answered"] != fig["ok_expected"]:
            problems.append(f"c: {fig['ok_expected'] - fig['ok_answered']} successes were "
                            "not answered 200 during the outage")
        if any(fig["dropped"]):
            problems.append(f"c: rows dropped {fig['dropped']}")
        if fig["drain_after_pg_back_s"] is None:
            problems.append("c: a spool never emptied after PostgreSQL came back: "
                            f"{monitor.timeline(t_back)[:40]}")
        figures["end"] = team_check(fleet, db_url, problems, out, "end")
    finally:
        if fleet is not None and fleet.stalls:
            figures["stalls"] = fleet.stalls
            problems.append(f"requests stuck past {STALL_SECONDS} s: {fleet.stalls}")
        if monitor is not None:
            monitor.stop()
        if fleet is not None:
            fleet.stop()
        if ollama is not None:
            ollama.stop()
        if cluster is not None:
            cluster.close()
        if problems:
            out(f"kept for a look: {tmp} (spools, stacks-*.txt)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return figures


def check_rows(phase, fig, problems):
    if fig["wrong_status"]:
        problems.append(f"{phase}: {fig['wrong_status']} unexpected statuses")
    if fig["rows_outcomes"] != fig["expected_outcomes"]:
        problems.append(f"{phase}: rows per outcome {fig['rows_outcomes']} != "
                        f"{fig['expected_outcomes']}")
    if fig["rows_instances"] != fig["expected_instances"]:
        problems.append(f"{phase}: rows per instance {fig['rows_instances']} != "
                        f"{fig['expected_instances']}")
    if fig["missing_or_different"] or fig["rows_without_answer"] or fig["rows_twice"]:
        problems.append(f"{phase}: {fig['missing_or_different']} requests without their "
                        f"row (e.g. {fig['examples']}), {fig['rows_without_answer']} rows "
                        f"without a request, {fig['rows_twice']} rows twice")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bridges", type=int, default=3)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--kill-requests", type=int, default=None,
                        help="requests in the kill phase (default: max(300, requests / 5))")
    parser.add_argument("--outage", type=float, default=10.0,
                        help="seconds PostgreSQL is down in the outage phase")
    args = parser.parse_args()
    figures = run(args.bridges, args.requests, args.concurrency, args.kill_requests,
                  args.outage)
    print(json.dumps(figures, indent=1))
    if figures["problems"]:
        print("PROBLEMS:\n  " + "\n  ".join(figures["problems"]), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
