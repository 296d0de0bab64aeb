"""Load and fault script: prints figures. test_bridge.py runs it at a smaller size.

    python testkit/load.py [--streams 200] [--requests 10000] [--concurrency 50]
    python testkit/load.py --postgres [--bridges 3] [--requests 10000] [--concurrency 50]
                           [--kill-requests N] [--outage 10]    (= testkit/load_pg.py)

Starts `python bridge.py` in a subprocess (fake `claude`, fake Ollama in this process, all
on loopback), then:
1. holds N streaming clients at once (each stream lasts ~2 s) and counts errors;
2. sends a mix of requests (successes, backend errors, 4xx, clients hanging up mid-stream)
   at the given concurrency, then checks the usage rows equal the requests, per outcome;
3. compares the bridge's open fds, threads and RSS, and its child processes, with their
   values before the load;
4. kills the bridge with SIGKILL in the middle of more load, restarts it on the same
   database and checks `PRAGMA integrity_check` and that every completed response is logged.
Every loop is bounded in count and time.
"""

import argparse
import collections
import json
import os
import random
import re
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
FAKE_CLAUDE = ROOT / "testkit" / "fake_claude.py"


class Bridge:
    """`python bridge.py` in a subprocess; its port comes from the start-up banner."""

    def __init__(self, workdir, db_path, ollama_url, **env):
        full = {**os.environ, "PORT": "0", "CLAUDE_BIN": str(FAKE_CLAUDE),
                "CLAUDE_WORKDIR": str(workdir), "USAGE_DB_PATH": str(db_path),
                "OLLAMA_URL": ollama_url, "CLAUDE_CONFIG_DIR": str(Path(workdir) / "cfg"),
                "THREADS": "256", "CLAUDE_MAX_CONCURRENCY": "16", "CLAUDE_QUEUE_TIMEOUT": "60",
                **{k: str(v) for k, v in env.items()}}
        full.pop("FAKE_CLAUDE_LOG", None)
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "bridge.py")], env=full,
                                     stderr=subprocess.PIPE, text=True)
        self.port = None
        deadline = time.monotonic() + 30
        for line in self.proc.stderr:
            match = re.search(r"listening on http://127.0.0.1:(\d+)/v1", line)
            if match:
                self.port = int(match.group(1))
                break
            if time.monotonic() > deadline:
                break
        if self.port is None:
            raise RuntimeError("the bridge did not start")
        # Keep draining stderr so the bridge never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        self.url = f"http://127.0.0.1:{self.port}"

    def stats(self):
        """Open fds, threads, RSS in MiB, and live child processes of the bridge."""
        pid = self.proc.pid
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        status = Path(f"/proc/{pid}/status").read_text()
        threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
        rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
        return {"fds": fds, "threads": threads, "rss_mib": round(rss, 1),
                "children": len(children_of(pid))}

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def children_of(pid):
    """Live (non-zombie) processes whose parent is pid."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return out


_local = threading.local()


def http():
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
    return session


def chat(url, body, stream=False, hang_up=False, timeout=60, headers=None):
    """One request: (observed status, completed response id or None); 499 when the client
    hung up mid-stream, -1 when a stream ended without [DONE]."""
    resp = http().post(url + "/v1/chat/completions", json=body, stream=stream,
                       timeout=timeout, headers=headers)
    try:
        if resp.status_code != 200:
            resp.content  # noqa: B018 (drain)
            return resp.status_code, None
        if not stream:
            return 200, resp.json()["id"]
        last_id = None
        for line in resp.iter_lines():
            if not line.startswith(b"data: "):
                continue
            if line == b"data: [DONE]":
                return 200, last_id
            event = json.loads(line[6:])
            if "error" in event:
                return 502, None
            last_id = event["id"]
            if hang_up and event["choices"] and event["choices"][0]["delta"].get("content"):
                return 499, None  # leave mid-stream
        return -1, None
    finally:
        resp.close()


def _ollama(text, **extra):
    return {"model": "ollama/llama3.2", "messages": [{"role": "user", "content": text}],
            **extra}


def _claude(text):
    return {"model": "claude-code", "messages": [{"role": "user", "content": text}]}


# kind -> (weight, body, stream, hang up, expected outcome, expected status)
MIX = {
    "ollama-json": (40, _ollama("hello"), False, False, "ok", 200),
    "ollama-stream": (20, _ollama("hello", stream=True), True, False, "ok", 200),
    "claude-json": (8, _claude("hello"), False, False, "ok", 200),
    "ollama-error": (10, _ollama("[ollama:error-500]"), False, False, "error", 502),
    "claude-error": (4, _claude("[fake:error-401]"), False, False, "error", 502),
    "bad-request": (10, {"model": "ollama/llama3.2", "messages": []}, False, False,
                    "error", 400),
    # 4 s of stream the client leaves after its first piece: time enough, even on a busy
    # machine, for the bridge to notice before the stream would have ended well.
    "hang-up": (8, _ollama("[ollama:slow:20:200]", stream=True), True, True,
                "cancelled", 499),
}


def held_streams(url, count, seconds=2.0):
    """`count` streams open at once: (errors, clients streaming at the same moment)."""
    pieces = 20
    body = _ollama(f"[ollama:slow:{pieces}:{int(seconds * 1000 / pieces)}]", stream=True)
    spans = []
    errors = []
    barrier = threading.Barrier(count)

    def one():
        try:
            barrier.wait(timeout=30)
            resp = http().post(url + "/v1/chat/completions", json=body, stream=True,
                               timeout=60)
            first = done = None
            for line in resp.iter_lines():
                if first is None and b"tick0" in line:
                    first = time.monotonic()
                if line == b"data: [DONE]":
                    done = time.monotonic()
            resp.close()
            if resp.status_code != 200 or first is None or done is None:
                errors.append(resp.status_code)
            else:
                spans.append((first, done))
        except Exception as exc:  # counted, not raised: the figure is the error count
            errors.append(repr(exc))

    with ThreadPoolExecutor(count) as pool:
        for _ in range(count):
            pool.submit(one)
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return errors, peak


def mixed(url, total, concurrency, seed=1, stop_after=None):
    """The mixed load: (sent per kind, mismatches, completed response ids, seconds)."""
    rnd = random.Random(seed)
    kinds = list(MIX)
    weights = [MIX[k][0] for k in kinds]
    plan = rnd.choices(kinds, weights, k=total)
    sent = collections.Counter()
    wrong = []
    completed = []
    lock = threading.Lock()
    stop = threading.Event()

    def one(kind):
        if stop.is_set():
            return
        _, body, stream, hang_up, _, status = MIX[kind]
        try:
            got, done_id = chat(url, body, stream, hang_up)
        except requests.RequestException as exc:
            got, done_id = repr(exc), None
        with lock:
            sent[kind] += 1
            if got != status:
                wrong.append((kind, got))
            if done_id:
                completed.append(done_id)
            if stop_after is not None and len(completed) >= stop_after:
                stop.set()

    t0 = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        for kind in plan:
            pool.submit(one, kind)
    return sent, wrong, completed, time.monotonic() - t0


def rows_by_outcome(db_path):
    db = sqlite3.connect(db_path)
    try:
        return dict(db.execute("SELECT outcome, COUNT(*) FROM requests GROUP BY outcome"))
    finally:
        db.close()


def expected_outcomes(sent):
    out = collections.Counter()
    for kind, n in sent.items():
        out[MIX[kind][4]] += n
    return dict(out)


def run(streams=200, total=10_000, concurrency=50, kill_total=None, out=print):
    """Run every phase; returns the figures (and prints them through `out`)."""
    sys.path.insert(0, str(ROOT))
    from testkit import fake_ollama
    figures = {}
    tmp = Path(tempfile.mkdtemp(prefix="bridge-load-"))
    ollama = fake_ollama.start()
    ollama.verbose = False
    db_path = tmp / "usage.db"
    bridge = Bridge(tmp, db_path, ollama.url)
    try:
        t0 = time.monotonic()
        errors, peak = held_streams(bridge.url, streams)
        figures["held"] = {"streams": streams, "errors": len(errors), "peak_at_once": peak,
                           "seconds": round(time.monotonic() - t0, 2)}
        out(f"held streams: {streams} clients, {peak} streaming at the same moment, "
            f"{len(errors)} errors, {figures['held']['seconds']} s")
        if errors:
            out(f"  errors: {errors[:5]}")
        # Warm-up at the same concurrency: the bounded pools (worker threads, keep-alive
        # connections) fill here, so growth after the load means a leak.
        mixed(bridge.url, 10 * concurrency, concurrency, seed=0)
        wait_rows(db_path, streams + 10 * concurrency)
        time.sleep(1)
        before = bridge.stats()
        base = rows_by_outcome(db_path)
        sent, wrong, _, seconds = mixed(bridge.url, total, concurrency)
        expect = expected_outcomes(sent)
        wait_rows(db_path, sum(base.values()) + total)
        got = {k: v - base.get(k, 0) for k, v in rows_by_outcome(db_path).items()
               if v - base.get(k, 0)}
        figures["mixed"] = {"requests": total, "concurrency": concurrency,
                            "seconds": round(seconds, 2), "rps": round(total / seconds, 1),
                            "wrong_status": len(wrong), "sent": dict(sent),
                            "expected_outcomes": expect, "rows": got}
        out(f"mixed load: {total} requests at concurrency {concurrency} in {seconds:.1f} s "
            f"({total / seconds:.0f} req/s), {len(wrong)} unexpected statuses")
        if wrong:
            out(f"  unexpected: {wrong[:5]}")
        out(f"  rows per outcome: {got} (expected {expect})")
        time.sleep(2)  # let idle keep-alive sockets and worker threads settle
        after = bridge.stats()
        figures["growth"] = {"before": before, "after": after}
        out(f"bridge before: {before}")
        out(f"bridge after:  {after}")
        bridge.stop()
        # Phase 4: SIGKILL in the middle of load, then restart on the same database.
        kill_db = tmp / "kill.db"
        victim = Bridge(tmp, kill_db, ollama.url)
        holder = {}
        kill_total = kill_total or max(500, total // 5)

        def load():
            holder["result"] = mixed(victim.url, kill_total, concurrency, seed=2)

        loader = threading.Thread(target=load)
        loader.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(rows_by_outcome(kill_db).values()) < \
                kill_total // 3:
            time.sleep(0.05)
        victim.proc.kill()
        victim.proc.wait()
        loader.join(120)
        _, _, completed, _ = holder["result"]
        again = Bridge(tmp, kill_db, ollama.url)
        db = sqlite3.connect(kill_db)
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        logged = {r[0] for r in db.execute("SELECT request_id FROM requests")}
        db.close()
        missing = [i for i in completed if i not in logged]
        figures["kill"] = {"completed": len(completed), "missing": len(missing),
                           "integrity": integrity, "rows": len(logged)}
        out(f"kill -9 mid-load: {len(completed)} responses completed before the kill, "
            f"{len(missing)} of them missing from the log, {len(logged)} rows, "
            f"integrity_check: {integrity}")
        again.stop()
    finally:
        bridge.stop()
        ollama.stop()
    return figures


def wait_rows(db_path, count, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(rows_by_outcome(db_path).values()) >= count:
            return True
        time.sleep(0.05)
    return False


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--postgres", action="store_true",
                        help="several bridges on one PostgreSQL instead: testkit/load_pg.py "
                             "(--bridges, --outage, --kill-requests are its options)")
    args, rest = parser.parse_known_args()
    if args.postgres:
        sys.path.insert(0, str(ROOT))
        from testkit import load_pg
        sys.argv = [sys.argv[0], "--requests", str(args.requests),
                    "--concurrency", str(args.concurrency), *rest]
        return load_pg.main()
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    figures = run(args.streams, args.requests, args.concurrency)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
