"""Benchmarks that print figures (never run by the test suite).

    python testkit/bench.py first-byte [--runs 30] [--real-cli PATH]
    python testkit/bench.py usage [--rows 1000000]
    python testkit/bench.py store [--requests 2000] [--rows 1000000]
    python testkit/bench.py overhead [--requests 2000]
    python testkit/bench.py tools [--rounds 3] [--runs 3] [--real-cli PATH]
    python testkit/bench.py idle-memory [--concurrency 4] [--real-cli PATH]
    python testkit/bench.py chat-ui [--turns 5] [--runs 3] [--pause 1] [--real-cli PATH]
    python testkit/bench.py dialects [--requests 1000]

store: the usage store's cost, PostgreSQL (USAGE_DB_URL, throwaway server of testkit/pg.py)
vs SQLite, in one run: two `python bridge.py` (one per store) and the fake Ollama called
directly, cells interleaved, at concurrency 1 and 16: p50/p95, the latency each bridge adds
over the direct call, the bridge's CPU per request (its shipping thread included) and the
PostgreSQL server's; then GET /v1/usage (and its filtered forms) over --rows rows seeded
alike in both (PostgreSQL: INSERT ... SELECT generate_series, with the hourly and daily
sums built from the rows), p50/p95 side by side (target: at most 50 ms).

dialects: the same non-streamed Ollama turn (fake Ollama in its own process) through chat
completions, Responses (with and without storing the response), Anthropic Messages and
legacy completions, interleaved in one run: p50/p95, requests per second, p50 against chat.

overhead: the bridge (`python bridge.py` in its own process) against a fast fake Ollama
(another process), side by side with the same client calling that fake directly, in one
run: latency p50/p95/p99 at concurrency 1 and 32, requests per second, the CPU the bridge
spends per request, per-chunk delay and first byte of streams, and idle RSS.

first-byte: time from sending a streaming request to the first SSE byte and to the first
content chunk through the bridge, against the same fake `claude` run bare (time from
spawn to its first stdout line and to its first text delta), all in one run. With
--real-cli, the real CLI against the loopback fake Anthropic API is measured the same way.

tools: a client-tool conversation (each tool result asks for the next call; the last one
for the answer), the time of each round (a request carrying tool results) in two modes in
one run: held (the bridge keeps the CLI whose call went to the client, and the results
continue it: usage row via=held) and rebuilt (a second bridge with CLAUDE_TOOL_WAIT=0.05
has ended that CLI before the results come, so each round starts a new CLI from the whole
history: via=rebuilt). With --real-cli, the real CLI against the fake Anthropic API too.

idle-memory: a mixed workload (stateless requests over 6 model names and 3 system prompts,
and X-Session-ID sessions of 2 turns), then, once the bridge is idle, the CLIs it keeps
(warm pool + kept session CLIs) and the RSS of their process groups: once with settings
that mimic the policy before CLAUDE_IDLE_MAX, once with the defaults, in one run.

chat-ui: a conversation as a chat UI (Open WebUI) holds it: streamed, every turn resending
the whole history with the replies exactly as received, and no X-Session-ID. Per turn, the
time to the first content token and the prompt characters the CLI was sent, in three modes
on three bridges (defaults: CLAUDE_WARM_POOL=1, CLAUDE_SESSION_KEEPALIVE=300), one
conversation of each in turn: recognised (RECOGNISE_CONVERSATIONS=true: the kept CLI gets
only the new message), header (X-Session-ID, only the new message sent) and flattened
(RECOGNISE_CONVERSATIONS=false: each turn a new CLI gets the whole history as one prompt).
Also how each turn reached a CLI (kept, warm, resume, new). With --real-cli, the real CLI
against the loopback fake Anthropic API too.
"""

import argparse
import collections
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bridge  # noqa: E402

FAKE_CLAUDE = ROOT / "testkit" / "fake_claude.py"
ARGV = ["-p", "--output-format", "stream-json", "--verbose", "--include-partial-messages",
        "--no-session-persistence"]


def _set_env(values, real=False):
    """Put values (None = unset) in the environment the CLIs inherit; the real CLI keeps
    its state under HOME, not the fake's CLAUDE_CONFIG_DIR. Returns what was there."""
    keys = [*values, "CLAUDE_CONFIG_DIR"] if real else list(values)
    saved = {k: os.environ.get(k) for k in keys}
    for key, value in {**values, **({"CLAUDE_CONFIG_DIR": None} if real else {})}.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return saved


def _end_target(name, problems, summary, means, saved):
    """A CLI measured: its problems printed, its figures kept, the environment restored."""
    for problem in problems:
        print(f"  !! {name}: {problem}")
    summary.append((name, means))
    _set_env(saved)


def bare_cli(binary, prompt):
    """(first stdout line, first text delta) in seconds after spawn."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([binary, *ARGV], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)  # plain `claude -p`, text on stdin
    proc.stdin.write(prompt.encode())
    proc.stdin.close()
    first_line = first_delta = None
    for line in proc.stdout:
        now = time.perf_counter() - t0
        if first_line is None:
            first_line = now
        if first_delta is None and b'"text_delta"' in line:
            first_delta = now
    proc.wait()
    return first_line, first_delta


def through_bridge(url, prompt, session=None):
    """(first SSE byte, first content chunk) in seconds after the request was sent."""
    body = {"model": "claude-code", "stream": True,
            "messages": [{"role": "user", "content": prompt}]}
    headers = {"X-Session-ID": session} if session else {}
    t0 = time.perf_counter()
    first_byte = first_content = None
    with requests.post(url + "/v1/chat/completions", json=body, stream=True,
                       headers=headers, timeout=60) as resp:
        for line in resp.iter_lines():
            now = time.perf_counter() - t0
            if first_byte is None:
                first_byte = now
            if first_content is None and b'"content":"' in line and b'"content":""' not in line:
                first_content = now
    return first_byte, first_content


def serve(env):
    settings = bridge.load_settings(environ=env)
    server = bridge.create_server(settings)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    server.thread = thread
    return server, f"http://127.0.0.1:{server.effective_port}"


def median_ms(values):
    return statistics.median(values) * 1000


def first_byte(args):
    """Time to first text: a bare `claude -p` vs the bridge, cold and with a warm CLI."""
    tmp = tempfile.mkdtemp(prefix="bench-")
    os.environ.pop("FAKE_CLAUDE_LOG", None)
    os.environ["CLAUDE_CONFIG_DIR"] = os.path.join(tmp, "cfg")
    # The fake CLI with the real one's start-up time, and the real CLI if given.
    targets = [("fake claude (450 ms start)", str(FAKE_CLAUDE), {"FAKE_CLAUDE_STARTUP_MS": "450"})]
    if args.real_cli:
        from testkit import fake_anthropic
        api = fake_anthropic.start()
        os.environ.update({
            "HOME": tmp, "ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": "dummy",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_MAX_RETRIES": "0"})
        os.environ.pop("CLAUDE_CONFIG_DIR")
        targets.append(("real claude 2.1.332", args.real_cli, {}))
    rows = []
    for name, binary, extra in targets:
        os.environ.update(extra)
        servers = {}
        # Apart, so session CLIs kept alive never take the warm pool's slots.
        for mode, pool, keep in (("cold", "0", "0"), ("warm", "1", "0"),
                                 ("session", "0", "300")):
            servers[mode] = serve({"PORT": "0", "CLAUDE_BIN": binary, "CLAUDE_WORKDIR": tmp,
                                   "CLAUDE_WARM_POOL": pool, "CLAUDE_SESSION_KEEPALIVE": keep,
                                   "USAGE_DB_PATH": os.path.join(tmp, f"{mode}.db")})
            through_bridge(servers[mode][1], "warm up")
        bare, cold, warm, second = [], [], [], []
        for i in range(args.runs):
            # Interleaved, so drift on a noisy machine hits every column alike (and the
            # warm pool has refilled by its turn).
            bare.append(bare_cli(binary, f"hello {i}"))
            cold.append(through_bridge(servers["cold"][1], f"hello {i}"))
            warm.append(through_bridge(servers["warm"][1], f"hello {i}"))
            through_bridge(servers["session"][1], "first turn", session=f"s{i}")
            second.append(through_bridge(servers["session"][1], "second turn",
                                         session=f"s{i}"))
        for server, _ in servers.values():
            bridge.stop_server(server, server.thread)
            server.app.bridge.close()
        for key in extra:
            os.environ.pop(key)
        rows.append((name, median_ms([b[0] for b in bare]), median_ms([b[1] for b in bare]),
                     median_ms([c[1] for c in cold]), median_ms([w[1] for w in warm]),
                     median_ms([t[1] for t in second])))
    print(f"time to first text, median of {args.runs} interleaved runs (ms)")
    print(f"{'backend':28} {'bare 1st line':>13} {'bare 1st text':>13} {'bridge cold':>12} "
          f"{'bridge warm':>12} {'session turn 2':>15} {'warm/bare':>10} {'turn2/bare':>11}")
    for name, b_line, b_text, c_text, w_text, s_text in rows:
        print(f"{name:28} {b_line:13.1f} {b_text:13.1f} {c_text:12.1f} {w_text:12.1f} "
              f"{s_text:15.1f} {w_text / b_text:10.2f} {s_text / b_text:11.2f}")


_SEED_MODELS = [("claude-code", "claude"), ("sonnet", "claude"), ("opus", "claude"),
                ("haiku", "claude"), ("ollama/llama3.2", "ollama"), ("ollama/qwen2.5", "ollama")]


def _seed_rollups(db):
    """The hourly and daily sums of the seeded rows, as the store keeps them on insert
    (keyed by model, provider, api and instance); SQLite's or psycopg's connection."""
    keys = ", ".join(bridge._ROLLUP_KEYS)
    for table, column, width in bridge._LEVELS[:-1]:
        db.execute(f"DELETE FROM {table}")
        db.execute(f"INSERT INTO {table} ({column}, {keys}, {', '.join(bridge._SUMS)})"
                   f" SELECT substr(ts, 1, {width}), COALESCE(model, ''),"
                   f" COALESCE(provider, ''), api, instance, {bridge._RAW_SUMS}"
                   " FROM requests GROUP BY 1, 2, 3, 4, 5")


def _seed_sqlite(path, rows, instances=("",)):
    """A SQLite usage database of `rows` requests over the last year, and its sums;
    {table: rows}."""
    import random
    bridge.UsageStore(path).close()  # the current schema
    db = sqlite3.connect(path)
    rnd = random.Random(1)
    now = time.time()
    batch = []
    for i in range(rows):
        model, provider = _SEED_MODELS[i % len(_SEED_MODELS)]
        p, c = rnd.randint(10, 5000), rnd.randint(1, 2000)
        batch.append((bridge._ts_text(now - rnd.random() * 365 * 86400), f"chatcmpl-{i}",
                      model, provider, None, i % 2, "ok" if i % 17 else "error",
                      200 if i % 17 else 502, None, p, c, p + c, p // 3, 0.0001 * c,
                      rnd.randint(50, 20000), 40, 0 if i % 17 else 1,
                      instances[i // len(_SEED_MODELS) % len(instances)]))
        if len(batch) == 50_000 or i == rows - 1:
            db.executemany("INSERT INTO requests (ts, request_id, model, provider, session_id,"
                           " stream, outcome, status, error, prompt_tokens, completion_tokens,"
                           " total_tokens, cached_tokens, cost_usd, duration_ms, ttft_ms,"
                           " is_error, instance) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                           batch)
            batch.clear()
    _seed_rollups(db)
    db.commit()
    sizes = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
             for t, _, _ in bridge._LEVELS}
    db.close()
    return sizes


def _seed_postgres(url, spool, rows, instances=("",)):
    """The same history as _seed_sqlite (same shape: models, outcomes, token ranges, a
    year) in PostgreSQL, made by the server (INSERT ... SELECT generate_series), its sums
    and statistics (VACUUM ANALYZE, as autovacuum would have); {table: rows}."""
    import psycopg
    bridge.PgStore(url, spool, 1000).close()  # the current schema, by the bridge's migrations
    names = [m for m, _ in _SEED_MODELS]
    providers = [p for _, p in _SEED_MODELS]
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("SELECT setseed(0.1)")
        with db.transaction():
            db.execute(
                "INSERT INTO requests (ts, request_id, model, provider, session_id, stream,"
                " outcome, status, error, prompt_tokens, completion_tokens, total_tokens,"
                " cached_tokens, cost_usd, duration_ms, ttft_ms, is_error, api, instance,"
                " row_key)"
                " SELECT to_char(%(now)s::timestamp - random() * interval '365 days',"
                "  'YYYY-MM-DD HH24:MI:SS.MS'), 'chatcmpl-' || i,"
                "  (%(models)s::text[])[i %% 6 + 1], (%(providers)s::text[])[i %% 6 + 1], NULL,"
                "  i %% 2, CASE WHEN i %% 17 <> 0 THEN 'ok' ELSE 'error' END,"
                "  CASE WHEN i %% 17 <> 0 THEN 200 ELSE 502 END, NULL, p, c, p + c, p / 3,"
                "  0.0001 * c, 50 + floor(random() * 19951)::int, 40,"
                "  CASE WHEN i %% 17 <> 0 THEN 0 ELSE 1 END, 'chat',"
                "  (%(instances)s::text[])[i / 6 %% %(n)s + 1],"
                "  (%(instances)s::text[])[i / 6 %% %(n)s + 1] || '/chatcmpl-' || i"
                " FROM (SELECT i, 10 + floor(random() * 4991)::int AS p,"
                "  1 + floor(random() * 2000)::int AS c FROM generate_series(0, %(rows)s - 1) i) s",
                {"now": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "models": names,
                 "providers": providers, "instances": list(instances), "n": len(instances),
                 "rows": rows})
            _seed_rollups(db)
        db.execute("VACUUM ANALYZE")
        return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t, _, _ in bridge._LEVELS}


_USAGE_CASES = [("/v1/usage", {}), ("/v1/usage?since=24h", {"since": "24h"}),
                ("/v1/usage?since=7d&provider=claude", {"since": "7d", "provider": "claude"}),
                ("/v1/usage?since=2026-01-01T10:30:00Z", {"since": "2026-01-01T10:30:00Z"}),
                ("/v1/usage/timeseries?bucket=day", None),
                ("/v1/usage/recent?limit=50", None)]


def _usage_times(url, store, runs=30):
    """{path: (HTTP p50 ms, HTTP p95 ms, store.summary p50 ms or None)} of _USAGE_CASES."""
    http = requests.Session()
    out = {}
    for path, filters in _USAGE_CASES:
        http.get(url + path, timeout=60).raise_for_status()
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            http.get(url + path, timeout=60).raise_for_status()
            times.append(time.perf_counter() - t)
        inner = None
        if filters is not None:
            kw = {k: bridge.parse_time(v, k) if k in ("since", "until") else v
                  for k, v in filters.items()}
            st = []
            for _ in range(runs):
                t = time.perf_counter()
                store.summary(**kw)
                st.append(time.perf_counter() - t)
            inner = median_ms(st)
        out[path] = (median_ms(times), _pct(times, .95), inner)
    return out


_ROW = {"request_id": "chatcmpl-x", "model": "claude-code", "provider": "claude",
        "session_id": None, "stream": True, "outcome": "ok", "status": 200,
        "prompt_tokens": 666, "completion_tokens": 44, "cached_tokens": 333,
        "cost_usd": 0.0025, "duration_ms": 444, "ttft_ms": 120}


def _record_ms(store, n=5000):
    """Mean ms of store.record(row) (for PostgreSQL: into the spool, then shipped)."""
    t = time.perf_counter()
    for i in range(n):
        store.record({**_ROW, "request_id": f"chatcmpl-bench-{i}"})
    per = (time.perf_counter() - t) / n * 1000
    store.flush(timeout=60)
    return per


def usage(args):
    """GET /v1/usage over a big history, and the cost of logging one request."""
    tmp = tempfile.mkdtemp(prefix="bench-usage-")
    path = os.path.join(tmp, "usage.db")
    t0 = time.perf_counter()
    sizes = _seed_sqlite(path, args.rows)
    print(f"built in {time.perf_counter() - t0:.1f} s: "
          + ", ".join(f"{t} {n:,} rows" for t, n in sizes.items()))
    server, url = serve({"PORT": "0", "USAGE_DB_PATH": path, "CLAUDE_WORKDIR": tmp})
    store = server.app.bridge.store
    total = sum(s["requests"] for s in store.summary())
    assert total == args.rows, (total, args.rows)
    print(f"{'request':42} {'HTTP p50 ms':>12} {'HTTP p95 ms':>12} {'store p50 ms':>13}")
    for path, (p50, p95, inner) in _usage_times(url, store).items():
        print(f"{path:42} {p50:12.2f} {p95:12.2f} "
              + (f"{inner:13.2f}" if inner is not None else ""))
    n = 5000
    per = _record_ms(store, n)
    print(f"logging one request (row + hourly and daily sums, one transaction): {per:.3f} ms "
          f"(mean of {n:,} on the {args.rows:,}-row database)")
    bridge.stop_server(server, server.thread)
    server.app.bridge.close()


def _cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


class _Client:
    """A keep-alive HTTP/1.1 client on one connection (the same for both sides)."""

    def __init__(self, port):
        import http.client
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def post(self, path, body):
        self.conn.request("POST", path, body=body,
                          headers={"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{resp.status}: {data[:200]!r}")
        return data


def _load(port, path, body, total, concurrency):
    """(latencies, seconds) for `total` requests over `concurrency` connections."""
    latencies = []
    lock = threading.Lock()
    per = total // concurrency

    def worker():
        client = _Client(port)
        mine = []
        for _ in range(per):
            t = time.perf_counter()
            client.post(path, body)
            mine.append(time.perf_counter() - t)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - t0


def _start_bridge(argv, env):
    """(process, port) of a bridge started from the repository root."""
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    port = None
    for line in proc.stderr:
        if "listening on" in line:
            port = int(line.rsplit(":", 1)[1].split("/")[0])
            break
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, port


def overhead(args):
    tmp = tempfile.mkdtemp(prefix="bench-overhead-")
    fake = subprocess.Popen([sys.executable, str(ROOT / "testkit" / "fake_ollama.py"),
                             "--port", "0"], stdout=subprocess.PIPE, text=True)
    fake_url = fake.stdout.readline().split()[-1]
    fake_port = int(fake_url.rsplit(":", 1)[1])
    env = {**os.environ, "PORT": "0", "OLLAMA_URL": fake_url, "CLAUDE_WORKDIR": tmp,
           "USAGE_DB_PATH": os.path.join(tmp, "usage.db"), "THREADS": str(args.threads)}
    # `python -m bridge` (as the installed command does) runs the cached bytecode; `python
    # bridge.py` compiles the script first, and that memory stays resident.
    module, _ = _start_bridge([sys.executable, "-m", "bridge"], env)
    time.sleep(0.5)
    module_rss = _rss_mib(module.pid)
    module.terminate()
    module.wait()
    proc, port = _start_bridge([sys.executable, str(ROOT / "bridge.py")], env)
    try:
        time.sleep(0.5)
        idle_rss = _rss_mib(proc.pid)
        direct_body = json.dumps({"model": "llama3.2", "stream": False, "messages": [
            {"role": "user", "content": "hello"}]}).encode()
        bridge_body = json.dumps({"model": "ollama/llama3.2", "messages": [
            {"role": "user", "content": "hello"}]}).encode()
        sides = {"direct": (fake_port, "/api/chat", direct_body),
                 "bridge": (port, "/v1/chat/completions", bridge_body)}
        for side in sides.values():
            _load(*side, 200, 4)  # warm-up: connections, pools, caches
        print(f"non-streamed chat, {args.requests} requests per cell, fake Ollama in its own "
              "process")
        print(f"{'conc':>4} {'side':7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
              f"{'req/s':>8}")
        results = {}
        for concurrency in (1, 32):
            for name in ("direct", "bridge", "direct", "bridge"):  # interleaved twice
                cpu0 = _cpu_seconds(proc.pid)
                lat, secs = _load(*sides[name], args.requests, concurrency)
                cpu = _cpu_seconds(proc.pid) - cpu0
                results.setdefault((concurrency, name), []).append((lat, secs, cpu))
            for name in ("direct", "bridge"):
                lat = [x for run in results[(concurrency, name)] for x in run[0]]
                secs = sum(run[1] for run in results[(concurrency, name)])
                print(f"{concurrency:4} {name:7} {_pct(lat, .5):8.2f} {_pct(lat, .95):8.2f} "
                      f"{_pct(lat, .99):8.2f} {len(lat) / secs:8.0f}")
        for concurrency in (1, 32):
            d = [x for run in results[(concurrency, "direct")] for x in run[0]]
            b = [x for run in results[(concurrency, "bridge")] for x in run[0]]
            cpu = sum(run[2] for run in results[(concurrency, "bridge")]) / len(b) * 1000
            print(f"concurrency {concurrency}: added p50 {_pct(b, .5) - _pct(d, .5):.2f} ms, "
                  f"bridge/direct p50 {_pct(b, .5) / _pct(d, .5):.2f}x, "
                  f"bridge CPU {cpu:.2f} ms per request")
        b1 = [x for run in results[(1, "bridge")] for x in run[0]]
        b32 = [x for run in results[(32, "bridge")] for x in run[0]]
        rps1 = len(b1) / sum(r[1] for r in results[(1, "bridge")])
        rps32 = len(b32) / sum(r[1] for r in results[(32, "bridge")])
        print(f"bridge req/s at 32 vs 1 connection: {rps32 / rps1:.2f}x; "
              f"p99/p50 at 32: {_pct(b32, .99) / _pct(b32, .5):.2f}")
        _stream_delay(port, fake_port)
        client = _Client(port)
        for i in range(1000):  # 1,000 live Ollama conversations kept by the bridge
            client.conn.request("POST", "/v1/chat/completions", body=json.dumps({
                "model": "ollama/llama3.2", "messages": [
                    {"role": "user", "content": f"session {i}: tell me something"}]}),
                headers={"Content-Type": "application/json", "X-Session-ID": f"s-{i}"})
            client.conn.getresponse().read()
        print(f"RSS of the bridge: idle {idle_rss:.1f} MiB as `python bridge.py`, "
              f"{module_rss:.1f} MiB as `python -m bridge`; with 1,000 live sessions "
              f"{_rss_mib(proc.pid):.1f} MiB")
    finally:
        proc.terminate()
        proc.wait()
        fake.terminate()
        fake.wait()


def _pg_cpu_seconds(cluster):
    """CPU of the PostgreSQL server: the postmaster, its live backends and those gone."""
    from testkit import pg
    pid = cluster.pid
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    for child in pg._children(pid):
        try:
            total += _cpu_seconds(child)
        except OSError:
            pass
    return total


def _queued(port):
    return requests.get(f"http://127.0.0.1:{port}/health", timeout=10).json()["database"].get(
        "queued", 0)


def store(args):
    """The usage store's cost: logging to PostgreSQL vs SQLite per request, and GET
    /v1/usage over 1,000,000 rows in each."""
    from testkit.pg import Cluster
    tmp = tempfile.mkdtemp(prefix="bench-store-")
    fake = subprocess.Popen([sys.executable, str(ROOT / "testkit" / "fake_ollama.py"),
                             "--port", "0"], stdout=subprocess.PIPE, text=True)
    procs = []
    with Cluster() as cluster:
        try:
            fake_url = fake.stdout.readline().split()[-1]
            fake_port = int(fake_url.rsplit(":", 1)[1])
            base = {**os.environ, "PORT": "0", "OLLAMA_URL": fake_url, "CLAUDE_WORKDIR": tmp,
                    "THREADS": "64", "INSTANCE_NAME": "bench"}
            base.pop("USAGE_DB_URL", None)
            sqlite_proc, sqlite_port = _start_bridge(
                [sys.executable, str(ROOT / "bridge.py")],
                {**base, "USAGE_DB_PATH": os.path.join(tmp, "sqlite.db")})
            procs.append(sqlite_proc)
            pg_proc, pg_port = _start_bridge(
                [sys.executable, str(ROOT / "bridge.py")],
                {**base, "USAGE_DB_PATH": os.path.join(tmp, "spool.db"),
                 "USAGE_DB_URL": cluster.url("bench_requests")})
            procs.append(pg_proc)
            direct_body = json.dumps({"model": "llama3.2", "stream": False, "messages": [
                {"role": "user", "content": "hello"}]}).encode()
            bridge_body = json.dumps({"model": "ollama/llama3.2", "messages": [
                {"role": "user", "content": "hello"}]}).encode()
            sides = {"direct": (fake_port, "/api/chat", direct_body, None),
                     "sqlite": (sqlite_port, "/v1/chat/completions", bridge_body, sqlite_proc),
                     "postgresql": (pg_port, "/v1/chat/completions", bridge_body, pg_proc)}
            for port, path, body, _ in sides.values():
                _load(port, path, body, 200, 4)  # warm-up: connections, pools, caches
            print(f"1. logging a request: non-streamed Ollama turn (fake Ollama, its own "
                  f"process), {args.requests} requests per cell, cells interleaved twice; "
                  "CPU per request of the bridge process (its shipping thread included, "
                  "measured once its spool is empty) and of the PostgreSQL server")
            print(f"{'conc':>4} {'store':11} {'p50 ms':>8} {'p95 ms':>8} {'req/s':>7} "
                  f"{'added p50':>10} {'bridge CPU ms':>14} {'PG CPU ms':>10}")
            for concurrency in (1, 16):
                results = {}
                for _ in range(2):
                    for name, (port, path, body, proc) in sides.items():
                        cpu0 = _cpu_seconds(proc.pid) if proc else 0.0
                        pg0 = _pg_cpu_seconds(cluster)
                        lat, secs = _load(port, path, body, args.requests, concurrency)
                        if proc is not None:
                            deadline = time.monotonic() + 60
                            while _queued(port) and time.monotonic() < deadline:
                                time.sleep(0.02)
                        cpu = _cpu_seconds(proc.pid) - cpu0 if proc else 0.0
                        results.setdefault(name, []).append(
                            (lat, secs, cpu, _pg_cpu_seconds(cluster) - pg0))
                direct_p50 = _pct([x for r in results["direct"] for x in r[0]], .5)
                for name, runs in results.items():
                    lat = [x for r in runs for x in r[0]]
                    n = len(lat)
                    cells = (f"{concurrency:4} {name:11} {_pct(lat, .5):8.2f} "
                             f"{_pct(lat, .95):8.2f} {n / sum(r[1] for r in runs):7.0f}")
                    if name != "direct":
                        cells += (f" {_pct(lat, .5) - direct_p50:10.2f}"
                                  f" {sum(r[2] for r in runs) / n * 1000:14.3f}"
                                  f" {sum(r[3] for r in runs) / n * 1000:10.3f}")
                    print(cells)
        finally:
            for proc in procs:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            fake.terminate()
            fake.wait()

        print(f"2. GET /v1/usage over {args.rows:,} rows (6 models, 3 instances, a year), "
              "the bridge in this process")
        figures = {}
        t0 = time.perf_counter()
        path = os.path.join(tmp, "usage.db")
        sizes = _seed_sqlite(path, args.rows, instances=("b1", "b2", "b3"))
        print(f"  SQLite built in {time.perf_counter() - t0:.1f} s: "
              + ", ".join(f"{t} {n:,}" for t, n in sizes.items()))
        t0 = time.perf_counter()
        url = cluster.url("bench_usage")
        sizes = _seed_postgres(url, os.path.join(tmp, "seed-spool.db"), args.rows,
                               instances=("b1", "b2", "b3"))
        print(f"  PostgreSQL built in {time.perf_counter() - t0:.1f} s (INSERT ... SELECT "
              "generate_series, sums, VACUUM ANALYZE): "
              + ", ".join(f"{t} {n:,}" for t, n in sizes.items()))
        record = {}
        for name, env in (("sqlite", {"USAGE_DB_PATH": path}),
                          ("postgresql", {"USAGE_DB_URL": url,
                                          "USAGE_DB_PATH": os.path.join(tmp, "spool2.db")})):
            server, served = serve({"PORT": "0", "CLAUDE_WORKDIR": tmp,
                                    "INSTANCE_NAME": "bench", **env})
            try:
                running = server.app.bridge.store
                total = sum(s["requests"] for s in running.summary())
                assert total == args.rows, (name, total, args.rows)
                figures[name] = _usage_times(served, running)
                record[name] = _record_ms(running)
            finally:
                bridge.stop_server(server, server.thread)
                server.app.bridge.close()
        print(f"  {'request':40} {'SQLite p50':>10} {'PG p50':>8} {'PG p95':>8} "
              f"{'PG store p50':>13}  (ms; target: PG p50 <= 50)")
        worst = 0.0
        for path_, _ in _USAGE_CASES:
            s50, _, _ = figures["sqlite"][path_]
            p50, p95, inner = figures["postgresql"][path_]
            worst = max(worst, p50)
            print(f"  {path_:40} {s50:10.2f} {p50:8.2f} {p95:8.2f} "
                  + (f"{inner:13.2f}" if inner is not None else f"{'':13}"))
        print(f"  slowest PostgreSQL p50: {worst:.2f} ms "
              f"({'within' if worst <= 50 else 'OVER'} the 50 ms target)")
        print(f"  store.record() in process: SQLite {record['sqlite']:.3f} ms (row and sums, "
              f"one transaction), PostgreSQL {record['postgresql']:.3f} ms (into the spool; "
              "shipped by its thread)")


def dialects(args):
    """The same Ollama turn through each API: what a dialect costs over chat completions."""
    tmp = tempfile.mkdtemp(prefix="bench-dialects-")
    fake = subprocess.Popen([sys.executable, str(ROOT / "testkit" / "fake_ollama.py"),
                             "--port", "0"], stdout=subprocess.PIPE, text=True)
    fake_url = fake.stdout.readline().split()[-1]
    env = {**os.environ, "PORT": "0", "OLLAMA_URL": fake_url, "CLAUDE_WORKDIR": tmp,
           "USAGE_DB_PATH": os.path.join(tmp, "usage.db"), "LOG_REQUESTS": "false"}
    proc, port = _start_bridge([sys.executable, str(ROOT / "bridge.py")], env)
    model, text = "ollama/llama3.2", "hello there"
    cells = {
        "chat": ("/v1/chat/completions", {"model": model, "messages": [
            {"role": "user", "content": text}]}),
        "responses": ("/v1/responses", {"model": model, "input": text, "store": False}),
        "responses+store": ("/v1/responses", {"model": model, "input": text}),
        "messages": ("/v1/messages", {"model": model, "max_tokens": 100, "messages": [
            {"role": "user", "content": text}]}),
        "completions": ("/v1/completions", {"model": model, "prompt": text}),
    }
    try:
        time.sleep(0.5)
        for path, body in cells.values():
            _load(port, path, json.dumps(body).encode(), 100, 4)  # warm-up
        print(f"non-streamed Ollama turn, {args.requests} requests per cell over 4 "
              "connections, interleaved twice")
        results = {}
        for _ in range(2):
            for name, (path, body) in cells.items():
                lat, secs = _load(port, path, json.dumps(body).encode(), args.requests, 4)
                results.setdefault(name, []).append((lat, secs))
        base = None
        for name in cells:
            lat = [x for run in results[name] for x in run[0]]
            rps = len(lat) / sum(run[1] for run in results[name])
            base = base or _pct(lat, .5)
            print(f"{name:16} p50 {_pct(lat, .5):6.2f} ms  p95 "
                  f"{_pct(lat, .95):6.2f} ms  {rps:6.0f} req/s  "
                  f"p50/chat {_pct(lat, .5) / base:.2f}x")
    finally:
        proc.terminate()
        proc.wait()
        fake.terminate()
        fake.wait()


def _stream_delay(port, fake_port, pieces=20, gap_ms=20, runs=10):
    """Per-chunk delay: each chunk carries the fake's send time (time.monotonic(), one
    clock for all processes here); the client notes when it arrives, direct and through
    the bridge, in the same run."""
    import http.client
    import re as _re

    def delays(port, path, body):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        t0 = time.monotonic()
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        out, first_byte, buf = [], None, b""
        while True:
            chunk = resp.read1(65536)
            now = time.monotonic()
            if not chunk:
                break
            if first_byte is None:
                first_byte = now - t0
            buf += chunk
            end = 0
            for match in _re.finditer(rb"tick\d+@(\d+\.\d+) ", buf):
                out.append(now - float(match.group(1)))
                end = match.end()
            buf = buf[end:]
        conn.close()
        return first_byte, out

    text = f"[ollama:stamped:{pieces}:{gap_ms}]"
    direct = json.dumps({"model": "llama3.2", "stream": True,
                         "messages": [{"role": "user", "content": text}]}).encode()
    bridged = json.dumps({"model": "ollama/llama3.2", "stream": True,
                          "messages": [{"role": "user", "content": text}]}).encode()
    d_all, b_all, fb_d, fb_b = [], [], [], []
    for _ in range(runs):
        fd, dd = delays(fake_port, "/api/chat", direct)
        fbb, bd = delays(port, "/v1/chat/completions", bridged)
        d_all.extend(dd)
        b_all.extend(bd)
        fb_d.append(fd)
        fb_b.append(fbb)
    added = statistics.median(b_all) - statistics.median(d_all)
    print(f"streaming ({pieces} chunks {gap_ms} ms apart, {runs} runs): chunks seen direct "
          f"{len(d_all)}, bridge {len(b_all)}; send-to-client delay per chunk: direct p50 "
          f"{statistics.median(d_all) * 1000:.2f} ms, bridge p50 "
          f"{statistics.median(b_all) * 1000:.2f} ms / p95 {_pct(b_all, .95):.2f} ms; added "
          f"{added * 1000:.2f} ms; first byte direct {statistics.median(fb_d) * 1000:.2f} ms,"
          f" bridge {statistics.median(fb_b) * 1000:.2f} ms")

# The environment the real CLI needs to run offline against the fake Anthropic API (as
# test_bridge.py's fake_api fixture sets it); HOME holds its config and sessions.
def _real_cli_env(home, api_url):
    return {"HOME": home, "ANTHROPIC_BASE_URL": api_url, "ANTHROPIC_API_KEY": "dummy",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_MAX_RETRIES": "0"}


def _start_fake_api():
    """The fake Anthropic API, quiet about CLIs the bridge ends mid-connection."""
    from testkit import fake_anthropic
    api = fake_anthropic.start()
    default = api._httpd.handle_error

    def handle_error(request, address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            default(request, address)

    api._httpd.handle_error = handle_error
    return api


def _fake_api_sees_new_part_only(fake_anthropic):
    """A rebuilt run gets the whole history as one prompt, every earlier turn's marker in
    it; the fake API would answer all of them at once (parallel calls). Here it reads only
    the text after the bridge's "[end of earlier turns" line, as the fake CLI does."""
    whole = fake_anthropic.last_user_text

    def new_part(messages):
        text = whole(messages)
        cut = text.rfind("[end of earlier turns")
        return text[text.find("\n", cut) + 1:].lstrip("\n") if cut >= 0 else text

    fake_anthropic.last_user_text = new_part


_WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


def _vias(db_path):
    db = sqlite3.connect(db_path)
    try:
        return [r[0] for r in db.execute("SELECT via FROM requests ORDER BY id")]
    finally:
        db.close()


def _tool_conversation(url, rounds, marker, before_round=None):
    """(seconds per request, the opening one first; what went wrong or None) of one
    client-tool conversation: every tool result but the last holds the marker (the model
    calls again), the last one gets the answer."""
    http = requests.Session()
    history = [{"role": "user", "content": "What is the weather in Oslo? " + marker}]
    times = []
    for r in range(rounds + 1):
        if r and before_round:
            before_round()
        t = time.perf_counter()
        resp = http.post(url + "/v1/chat/completions", timeout=120, json={
            "model": "claude-code", "messages": history, "tools": [_WEATHER]})
        times.append(time.perf_counter() - t)
        if resp.status_code != 200:
            return times, f"request {r}: HTTP {resp.status_code} {resp.text[:200]}"
        message = resp.json()["choices"][0]["message"]
        if r == rounds:
            if message.get("tool_calls") or not message.get("content"):
                return times, f"request {r}: no final answer: {json.dumps(message)[:200]}"
            return times, None
        if not message.get("tool_calls"):
            return times, f"request {r}: no tool call: {json.dumps(message)[:200]}"
        history.append({k: v for k, v in message.items() if v is not None})
        more = " " + marker if r + 1 < rounds else ""
        history += [{"role": "tool", "tool_call_id": c["id"], "content": f"sunny, 2{r} C{more}"}
                    for c in message["tool_calls"]]
    return times, None


def tools(args):
    """Rounds of a client-tool conversation: the held CLI continued vs a new CLI from the
    whole history, on two bridges in one run, conversations interleaved."""
    tmp = tempfile.mkdtemp(prefix="bench-tools-")
    os.environ.pop("FAKE_CLAUDE_LOG", None)
    os.environ.pop("CLAUDECODE", None)
    os.environ["CLAUDE_CONFIG_DIR"] = os.path.join(tmp, "cfg")
    os.environ["FAKE_CLAUDE_AUTH"] = "ok"
    # The fake CLI with the real one's start-up time, and the real CLI if given.
    targets = [("fake claude (450 ms start)", str(FAKE_CLAUDE),
                {"FAKE_CLAUDE_STARTUP_MS": "450"},
                '[fake:mcp-call:get_weather:{"city":"Oslo"}]')]
    if args.real_cli:
        from testkit import fake_anthropic
        _fake_api_sees_new_part_only(fake_anthropic)
        api = _start_fake_api()
        targets.append((f"real claude {_cli_version(args.real_cli)}", args.real_cli,
                        _real_cli_env(tmp, api.url),
                        '[upstream:tool:mcp__client__get_weather:{"city":"Oslo"}]'))
    modes = (("held", "300"), ("rebuilt", "0.05"))
    print(f"client-tool conversation: an opening request, then {args.rounds} rounds (each a "
          f"request carrying the tool result; all but the last get another call), "
          f"{args.runs} conversations per mode, interleaved; mean ms per request")
    print("held: CLAUDE_TOOL_WAIT=300, the results continue the CLI the bridge holds; "
          "rebuilt: a second bridge with CLAUDE_TOOL_WAIT=0.05, and each round's request "
          "is sent only once that bridge has ended the held CLI (so a new CLI starts from "
          "the whole history)")
    print("both: CLAUDE_WARM_POOL=0, CLAUDE_SESSION_KEEPALIVE=0 (no idle CLIs starting in "
          "the background; a tool request never takes a warm CLI)")
    heads = " ".join(f"{'round ' + str(r + 1):>9}" for r in range(args.rounds))
    print(f"{'backend':28} {'mode':8} {'opening':>9} {heads} {'round mean':>11}  via")
    summary = []
    for name, binary, extra, marker in targets:
        saved = _set_env(extra, real=binary != str(FAKE_CLAUDE))
        servers = {}
        for mode, wait in modes:
            db = os.path.join(tmp, f"{mode}-{len(summary)}.db")
            servers[mode] = (*serve({
                "PORT": "0", "CLAUDE_BIN": binary, "CLAUDE_WORKDIR": tmp,
                "CLAUDE_WARM_POOL": "0", "CLAUDE_SESSION_KEEPALIVE": "0",
                "CLAUDE_TOOL_WAIT": wait, "USAGE_DB_PATH": db, "LOG_REQUESTS": "false"}), db)
        times = {mode: [] for mode, _ in modes}
        problems = []

        def idle(server):
            """Until the bridge has no CLI left (a held one ended, a finished one reaped)."""
            claude = server.app.bridge.claude
            deadline = time.monotonic() + 30
            while (claude.held.count() or claude.procs) and time.monotonic() < deadline:
                time.sleep(0.01)
            if claude.procs:
                problems.append(f"CLIs still running 30 s after a conversation: "
                                f"{sorted(p.pid for p in list(claude.procs))}")

        for run in range(args.runs + 1):  # the first, a warm-up, is not counted
            for mode, _ in modes:
                server, url, _ = servers[mode]
                gone = (lambda s=server: idle(s)) if mode == "rebuilt" else None
                took, problem = _tool_conversation(url, args.rounds, marker, gone)
                idle(server)
                if problem:
                    problems.append(f"{mode}: {problem}")
                elif run:
                    times[mode].append(took)
        means = {}
        for mode, _ in modes:
            server, _, db = servers[mode]
            vias = _vias(db)
            per = len(vias) // (args.runs + 1)
            seen = sorted({",".join(str(v) for v in vias[i:i + per][1:])
                           for i in range(0, len(vias), per)}) if per else ["(no rows)"]
            cols = [statistics.mean(t[r] for t in times[mode]) * 1000 if times[mode]
                    else float("nan") for r in range(args.rounds + 1)]
            means[mode] = statistics.mean(cols[1:])
            print(f"{name if mode == 'held' else '':28} {mode:8} {cols[0]:9.1f} "
                  + " ".join(f"{c:9.1f}" for c in cols[1:])
                  + f" {means[mode]:11.1f}  {' | '.join(seen)}")
            bridge.stop_server(server, server.thread)
            server.app.bridge.close()
        _end_target(name, problems, summary, means, saved)
    for name, means in summary:
        print(f"{name}: a round rebuilt takes {means['rebuilt'] / means['held']:.2f}x a "
              f"held one ({means['rebuilt'] - means['held']:+.1f} ms)")


def _cli_version(binary):
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.split()[0] if out.stdout.strip() else "?"


def _gauges(url):
    text = requests.get(url + "/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def _group_members(pgid):
    """PIDs in process group pgid (a CLI and whatever it started)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                out.append(int(entry.name))
    return out


def _children(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout
    return [int(p) for p in out.split()]


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def _is_chat_cli(argv):
    """A CLI the bridge started for requests (not its reaper helper, not a version or
    auth probe)."""
    return "-p" in argv and "--output-format" in argv


def _workload():
    """30 requests: 22 stateless over 6 model names and 3 system prompts (two pairs used
    often, nine once), 4 sessions of 2 turns, interleaved."""
    models = ["claude-code", "sonnet", "haiku", "gpt-4o-mini", "gpt-4o", "opus"]
    systems = [None, "You are terse.", "Answer as a pirate."]
    stateless = []
    for i in range(22):
        if i % 2 == 0:  # every other one: the usual pairs
            model, system = ("claude-code", None) if i % 4 == 0 else ("sonnet", systems[1])
        else:
            k = i // 2
            model, system = models[k % 6], systems[(k + k // 6) % 3]
        stateless.append((model, system, None))
    turns = [(models[k], None, f"sess-{k}") for k in range(4)] * 2
    out = []
    while stateless or turns:
        out += [stateless.pop(0) for _ in range(3) if stateless]
        if turns:
            out.append(turns.pop(0))
    return out


def _run_workload(url, workload):
    """(HTTP statuses, seconds of the slowest request)."""
    statuses = collections.Counter()
    history = {}
    slowest = 0.0
    for n, (model, system, session) in enumerate(workload):
        messages = [{"role": "system", "content": system}] if system else []
        headers = {}
        if session:
            headers["X-Session-ID"] = session
            messages = history.setdefault(session, [])
            messages.append({"role": "user", "content": f"turn {len(messages) // 2 + 1}"})
        else:
            messages.append({"role": "user", "content": f"request {n}"})
        t = time.perf_counter()
        resp = requests.post(url + "/v1/chat/completions", headers=headers, timeout=120,
                             json={"model": model, "messages": messages})
        slowest = max(slowest, time.perf_counter() - t)
        statuses[resp.status_code] += 1
        if session and resp.status_code == 200:
            messages.append(resp.json()["choices"][0]["message"])
    return statuses, slowest


def _settle(url, bridge_pid, timeout=30):
    """Wait until nothing runs and the idle CLIs stay the same for 2 s: (gauges, CLI pids,
    seconds waited)."""
    t0 = time.monotonic()
    last, since = None, time.monotonic()
    while True:
        g = _gauges(url)
        pids = sorted(p for p in _children(bridge_pid) if _is_chat_cli(_cmdline(p)))
        busy = (g.get("bridge_claude_processes_running", 0)
                + g.get("bridge_claude_processes_holding_tool_calls", 0)
                + g.get("bridge_claude_requests_waiting", 0))
        state = (g.get("bridge_claude_processes_warm"), g.get("bridge_claude_processes_kept"),
                 tuple(pids))
        now = time.monotonic()
        if state != last or busy:
            last, since = state, now
        elif now - since >= 2:
            return g, pids, now - t0
        if now - t0 > timeout:
            return g, pids, now - t0
        time.sleep(0.2)


def idle_memory(args):
    """Idle CLIs (warm + kept) after the same mixed workload, before and after the cap."""
    tmp = tempfile.mkdtemp(prefix="bench-idle-")
    defaults = {s.name: s.default for s in bridge.SETTINGS}
    policies = [
        ("before the cap", {"CLAUDE_WARM_POOL": "1", "CLAUDE_WARM_KEYS": "64",
                            "CLAUDE_WARM_AFTER": "1", "CLAUDE_IDLE_MAX": "1024",
                            "CLAUDE_SESSION_KEEPALIVE": "300"}),
        ("after (defaults)", {})]
    targets = [("fake claude", str(FAKE_CLAUDE), None)]
    if args.real_cli:
        api = _start_fake_api()
        targets.append((f"real claude {_cli_version(args.real_cli)}", args.real_cli, api.url))
    workload = _workload()
    pairs = collections.Counter((m, s) for m, s, sess in workload if not sess)
    print(f"workload: {len(workload)} requests one after another: {sum(pairs.values())} "
          f"stateless over {len(pairs)} model/system pairs (uses: "
          f"{sorted(pairs.values(), reverse=True)}), {len({w[2] for w in workload} - {None})} "
          f"X-Session-ID sessions x 2 turns; CLAUDE_MAX_CONCURRENCY={args.concurrency} "
          "for both")
    print("after = the defaults: " + ", ".join(
        f"{k}={defaults[k]}" for k in ("CLAUDE_WARM_POOL", "CLAUDE_WARM_KEYS",
                                       "CLAUDE_WARM_MODELS", "CLAUDE_WARM_AFTER",
                                       "CLAUDE_IDLE_MAX", "CLAUDE_SESSION_KEEPALIVE")))
    print("before = " + ", ".join(f"{k}={v}" for k, v in policies[0][1].items()))
    print(f"{'backend':22} {'policy':17} {'HTTP':>14} {'warm':>5} {'kept':>5} "
          f"{'idle CLIs':>9} {'processes':>9} {'RSS MB':>8} {'MB/CLI':>7} {'work s':>7} "
          f"{'slowest s':>9}  "
          "idle CLIs' --model (+sys = with a system prompt, +sess = kept session)")
    for name, binary, api_url in targets:
        for policy, extra in policies:
            env = {k: v for k, v in os.environ.items()
                   if k not in ("CLAUDECODE", "FAKE_CLAUDE_LOG", "CLAUDE_CONFIG_DIR")}
            home = tempfile.mkdtemp(dir=tmp)
            if api_url:
                env.update(_real_cli_env(home, api_url))
            else:
                env.update({"CLAUDE_CONFIG_DIR": home, "FAKE_CLAUDE_AUTH": "ok"})
            env.update({"PORT": "0", "CLAUDE_BIN": binary, "CLAUDE_WORKDIR": tmp,
                        "USAGE_DB_PATH": os.path.join(home, "usage.db"),
                        "CLAUDE_MAX_CONCURRENCY": str(args.concurrency),
                        "LOG_REQUESTS": "false", **extra})
            proc, port = _start_bridge([sys.executable, str(ROOT / "bridge.py")], env)
            url = f"http://127.0.0.1:{port}"
            try:
                t = time.perf_counter()
                statuses, slowest = _run_workload(url, workload)
                work = time.perf_counter() - t
                g, pids, _ = _settle(url, proc.pid)
                members = {pid: _group_members(pid) for pid in pids}
                rss = sum(_rss_mib(m) for group in members.values() for m in group)
                labels = []
                for pid in pids:
                    argv = _cmdline(pid)
                    model = next((a.split("=", 1)[1] for a in argv
                                  if a.startswith("--model=")), "claude-code")
                    labels.append(model + ("+sys" if any("system-prompt" in a for a in argv)
                                           else "")
                                  + ("+sess" if "--no-session-persistence" not in argv
                                     else ""))
                warm = int(g.get("bridge_claude_processes_warm", -1))
                kept = int(g.get("bridge_claude_processes_kept", -1))
                http = ",".join(f"{n}x{code}" for code, n in sorted(statuses.items()))
                per = rss / len(pids) if pids else 0.0
                print(f"{name if not policy.startswith('after') else '':22} {policy:17} "
                      f"{http:>14} {warm:5} {kept:5} {len(pids):9} "
                      f"{sum(map(len, members.values())):9} {rss:8.1f} {per:7.1f} "
                      f"{work:7.1f} {slowest:9.2f}  {' '.join(sorted(labels))}")
                if warm + kept != len(pids):
                    print(f"  !! /metrics says {warm + kept} idle CLIs, the bridge has "
                          f"{len(pids)} child CLIs")
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    print("  !! the bridge did not stop in 30 s after SIGTERM")
                    proc.kill()
                    proc.wait()
            left = [m for group in members.values() for m in group
                    if Path(f"/proc/{m}").exists()
                    and "State:\tZ" not in Path(f"/proc/{m}/status").read_text()]
            if left:
                print(f"  !! CLI processes still running after the bridge stopped: {left}")


# What a chat-UI user writes, turn by turn (about 150 characters each).
_CHAT_TURNS = [
    "I'm planning a three-day trip to Lisbon in late spring. What neighbourhoods should I "
    "stay in if I like walking, old tiled buildings and good cheap food?",
    "Alfama sounds nice. How hilly is it really, and is it a problem with a rolling "
    "suitcase coming from the airport on the metro and then on foot?",
    "Fair enough, I'll take a taxi. Could you sketch a rough plan for day one that starts "
    "at the castle and ends somewhere with a view at sunset?",
    "For day two I'd like a half-day trip out of the city. Sintra or Cascais, which one "
    "suits someone who prefers palaces and gardens to beaches?",
    "Great. Last question: what are two or three dishes I should not leave without trying, "
    "and roughly what should a simple lunch cost there?",
]


def _chat_turn(url, messages, session=None):
    """(seconds to the first content token, the reply's content as streamed, HTTP status,
    error text) of one streamed chat turn."""
    headers = {"X-Session-ID": session} if session else {}
    body = {"model": "claude-code", "stream": True, "messages": messages}
    t0 = time.perf_counter()
    first, parts = None, []
    with requests.post(url + "/v1/chat/completions", json=body, stream=True,
                       headers=headers, timeout=180) as resp:
        if resp.status_code != 200:
            return None, "", resp.status_code, resp.text[:200]
        for line in resp.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                return first, "".join(parts), 200, json.dumps(event["error"])[:200]
            for choice in event.get("choices", ()):
                text = (choice.get("delta") or {}).get("content")
                if text:
                    if first is None:
                        first = time.perf_counter() - t0
                    parts.append(text)
    return first, "".join(parts), 200, None


class _HowServed:
    """How each turn reached a CLI, read from the bridge's own registries (wrapped on this
    in-process bridge): kept (its session's running CLI), warm (a pre-started one),
    resume (a known session whose CLI was gone: a new CLI with --resume) or new."""

    def __init__(self, backend):
        self.events = []
        pool_take, live_take = backend.pool.take, backend.live.take

        def take_warm(key):
            entry = pool_take(key)
            self.events.append(("warm", entry.proc.pid) if entry else None)
            return entry

        def take_kept(client_id, claude_uuid, key):
            entry = live_take(client_id, claude_uuid, key)
            self.events.append(("kept", entry.proc.pid) if entry else ("resume", None))
            return entry

        backend.pool.take = take_warm  # take_for_session calls it too
        backend.live.take = take_kept

    def turn(self):
        """The way the last turn was served, and the CLI's pid when it was already running."""
        got = [e for e in self.events if e is not None] or [("new", None)]
        self.events.clear()
        return got[-1]


def _fake_turn_prompts(log_dir, before):
    """{pid: turns} of the fake CLIs' logs; with `before`, the prompts given since then."""
    now = {}
    for path in Path(log_dir).glob("*.json"):
        try:
            run = json.loads(path.read_text())
        except ValueError:
            continue  # being written
        if "--version" not in run["argv"]:
            now[run["pid"]] = run.get("turns") or ([run["stdin"]] if run.get("stdin")
                                                   and "--input-format" not in run["argv"]
                                                   else [])
    if before is None:
        return now
    return [t for pid, turns in now.items() for t in turns[len(before.get(pid, ())):]]


def _text_chars(content):
    if isinstance(content, str):
        return len(content)
    return sum(len(b.get("text") or "") for b in content or ()
               if isinstance(b, dict) and b.get("type") == "text")


def chat_ui(args):
    """A chat UI's conversation (no X-Session-ID, history resent): recognised by the
    bridge, against X-Session-ID and against stateless flattening, in one run."""
    tmp = tempfile.mkdtemp(prefix="bench-chat-")
    turns = [_CHAT_TURNS[i % len(_CHAT_TURNS)] + (f" (#{i + 1})" if i >= len(_CHAT_TURNS)
                                                   else "") for i in range(args.turns)]
    log_dir = os.path.join(tmp, "fake-log")
    os.makedirs(log_dir)
    os.environ.pop("CLAUDECODE", None)
    os.environ["FAKE_CLAUDE_LOG"] = log_dir
    os.environ["CLAUDE_CONFIG_DIR"] = os.path.join(tmp, "cfg")
    os.environ["FAKE_CLAUDE_AUTH"] = "ok"
    targets = [("fake claude (450 ms start)", str(FAKE_CLAUDE),
                {"FAKE_CLAUDE_STARTUP_MS": "450"}, None)]
    if args.real_cli:
        from testkit import fake_anthropic
        # A flattened prompt holds every earlier turn: the fake API answers only its new
        # part (as the fake CLI does), so the replies, and so the histories resent, are
        # the same in every mode.
        _fake_api_sees_new_part_only(fake_anthropic)
        api = _start_fake_api()
        targets.append((f"real claude {_cli_version(args.real_cli)}", args.real_cli,
                        _real_cli_env(os.path.join(tmp, "home"), api.url), api))
        os.makedirs(os.path.join(tmp, "home"))
    modes = (("recognised", {"RECOGNISE_CONVERSATIONS": "true"}, False),
             ("header", {"RECOGNISE_CONVERSATIONS": "true"}, True),
             ("flattened", {"RECOGNISE_CONVERSATIONS": "false"}, False))
    print(f"chat-UI conversation: {args.turns} turns (user messages of "
          f"{min(map(len, turns))}-{max(map(len, turns))} chars), streamed; "
          f"{args.runs} conversations per mode, modes taking turns (one conversation each), "
          f"{args.pause:g} s between turns (the user reading), after one uncounted "
          f"warm-up conversation per mode")
    print("recognised: no X-Session-ID, whole history resent (replies as received), "
          "RECOGNISE_CONVERSATIONS=true; header: X-Session-ID, only the new user message; "
          "flattened: as recognised but RECOGNISE_CONVERSATIONS=false")
    print("all: CLAUDE_WARM_POOL=1, CLAUDE_SESSION_KEEPALIVE=300 (the defaults), "
          "in-process bridges started one after another")
    print("ttft = ms from sending the request to the first content token (median over "
          "runs; the last column, the mean of turns 2 on); "
          "chars = prompt characters the CLI was sent for the turn (fake CLI: the turn's "
          "text in its FAKE_CLAUDE_LOG; real CLI: the text blocks of the last user message "
          "of the turn's last /v1/messages request; upstream = text of all its messages); "
          "via = how the turn reached a CLI (kept / warm / resume / new), per conversation")
    summary = []
    for name, binary, extra, api in targets:
        saved = _set_env(extra, real=api is not None)
        servers = {}
        for mode, settings, _ in modes:
            server, url = serve({
                "PORT": "0", "CLAUDE_BIN": binary, "CLAUDE_WORKDIR": tmp,
                "CLAUDE_WARM_POOL": "1", "CLAUDE_SESSION_KEEPALIVE": "300",
                "USAGE_DB_PATH": os.path.join(tmp, f"{mode}-{len(summary)}.db"),
                "LOG_REQUESTS": "false", **settings})
            servers[mode] = (server, url, _HowServed(server.app.bridge.claude))
        ttft = {m: [[] for _ in turns] for m, _, _ in modes}
        chars = {m: [[] for _ in turns] for m, _, _ in modes}
        upstream = {m: [[] for _ in turns] for m, _, _ in modes}
        vias = {m: [] for m, _, _ in modes}
        problems = []
        for run in range(args.runs + 1):  # the first, a warm-up, is not counted
            for mode, _, header in modes:
                server, url, how = servers[mode]
                session = f"chat-ui-{mode}-{run}" if header else None
                history, seen = [], []
                how.turn()
                for i, text in enumerate(turns):
                    time.sleep(args.pause)
                    history.append({"role": "user", "content": text})
                    sent = history[-1:] if header else history
                    before = _fake_turn_prompts(log_dir, None) if api is None else None
                    asked = len(api.requests) if api is not None else 0
                    first, reply, status, error = _chat_turn(url, sent, session)
                    way, pid = how.turn()
                    seen.append(way)
                    if error or first is None:
                        problems.append(f"{mode} run {run} turn {i + 1}: HTTP {status} "
                                        f"{error or 'no content'}")
                        break
                    history.append({"role": "assistant", "content": reply})
                    if api is None:
                        prompts = _fake_turn_prompts(log_dir, before)
                        n = len(prompts[-1]) if prompts else float("nan")
                        if len(prompts) != 1:
                            problems.append(f"{mode} run {run} turn {i + 1}: {len(prompts)} "
                                            "CLI turns logged")
                        up = float("nan")
                    else:
                        reqs = [r for r in api.requests[asked:] if r.get("messages")]
                        if not reqs:
                            problems.append(f"{mode} run {run} turn {i + 1}: no upstream "
                                            "request")
                            n = up = float("nan")
                        else:
                            msgs = reqs[-1]["messages"]
                            last = [m for m in msgs if m.get("role") == "user"][-1]
                            n = _text_chars(last.get("content"))
                            up = sum(_text_chars(m.get("content")) for m in msgs)
                    if run:
                        ttft[mode][i].append(first)
                        chars[mode][i].append(n)
                        upstream[mode][i].append(up)
                if run:
                    vias[mode].append(",".join(seen))
        heads = " ".join(f"{'turn ' + str(t + 1):>8}" for t in range(len(turns)))
        print(f"\n{name}")
        print(f"{'mode':11} {'figure':9} {heads} {'2-' + str(len(turns)) + ' mean':>9}")
        means = {}
        for mode, _, _ in modes:
            rows = [("ttft ms", [statistics.median(v) * 1000 if v else float("nan")
                                 for v in ttft[mode]])]
            rows.append(("chars", [statistics.mean(v) if v else float("nan")
                                   for v in chars[mode]]))
            if api is not None:
                rows.append(("upstream", [statistics.mean(v) if v else float("nan")
                                          for v in upstream[mode]]))
            for label, cols in rows:
                later = statistics.mean(cols[1:]) if len(cols) > 1 else float("nan")
                if label == "ttft ms":
                    means[mode] = later
                print(f"{mode if label == 'ttft ms' else '':11} {label:9} "
                      + " ".join(f"{c:8.1f}" if label == "ttft ms" else f"{c:8.0f}"
                                 for c in cols) + f" {later:9.1f}")
            print(f"{'':11} {'via':9} " + " | ".join(
                f"{way} (x{n})" for way, n in sorted(collections.Counter(vias[mode]).items())))
        for mode, (server, _, _) in servers.items():
            bridge.stop_server(server, server.thread)
            server.app.bridge.close()
        _end_target(name, problems, summary, means, saved)
    print()
    for name, means in summary:
        print(f"{name}: turns 2-{len(turns)} ttft, recognised / header = "
              f"{means['recognised'] / means['header']:.2f}x (target <= 1.5x); "
              f"flattened / header = {means['flattened'] / means['header']:.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    fb = sub.add_parser("first-byte")
    fb.add_argument("--runs", type=int, default=30)
    fb.add_argument("--real-cli", default=None)
    us = sub.add_parser("usage")
    us.add_argument("--rows", type=int, default=1_000_000)
    st = sub.add_parser("store")
    st.add_argument("--requests", type=int, default=2000)
    st.add_argument("--rows", type=int, default=1_000_000)
    ov = sub.add_parser("overhead")
    ov.add_argument("--requests", type=int, default=2000)
    ov.add_argument("--threads", type=int, default=64)
    tl = sub.add_parser("tools")
    tl.add_argument("--rounds", type=int, default=3)
    tl.add_argument("--runs", type=int, default=3)
    tl.add_argument("--real-cli", default=None)
    im = sub.add_parser("idle-memory")
    im.add_argument("--concurrency", type=int, default=int(
        next(s.default for s in bridge.SETTINGS if s.name == "CLAUDE_MAX_CONCURRENCY")))
    im.add_argument("--real-cli", default=None)
    dl = sub.add_parser("dialects")
    dl.add_argument("--requests", type=int, default=1000)
    cu = sub.add_parser("chat-ui")
    cu.add_argument("--turns", type=int, default=5)
    cu.add_argument("--runs", type=int, default=3)
    cu.add_argument("--pause", type=float, default=1.0,
                    help="seconds between turns (a user reading the reply)")
    cu.add_argument("--real-cli", default=None)
    args = parser.parse_args()
    {"first-byte": first_byte, "usage": usage, "store": store, "overhead": overhead, "tools": tools,
     "idle-memory": idle_memory, "chat-ui": chat_ui, "dialects": dialects}[args.command](args)


if __name__ == "__main__":
    main()
