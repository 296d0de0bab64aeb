"""Benchmarks that print figures (never run by the test suite).

    python testkit/bench.py first-byte [--runs 30] [--real-cli PATH]

first-byte: time from sending a streaming request to the first SSE byte and to the first
content chunk through the bridge, against the same fake `claude` run bare (time from
spawn to its first stdout line and to its first text delta), all in one run. With
--real-cli, the real CLI against the loopback fake Anthropic API is measured the same way.
"""

import argparse
import json
import os
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


def bare_cli(binary, prompt):
    """(first stdout line, first text delta) in seconds after spawn."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([binary, *ARGV], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
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


def through_bridge(url, prompt):
    """(first SSE byte, first content chunk) in seconds after the request was sent."""
    body = {"model": "claude-code", "stream": True,
            "messages": [{"role": "user", "content": prompt}]}
    t0 = time.perf_counter()
    first_byte = first_content = None
    with requests.post(url + "/v1/chat/completions", json=body, stream=True,
                       timeout=60) as resp:
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
    rows = []
    tmp = tempfile.mkdtemp(prefix="bench-")
    os.environ.pop("FAKE_CLAUDE_LOG", None)
    os.environ["CLAUDE_CONFIG_DIR"] = os.path.join(tmp, "cfg")
    targets = [("fake claude", str(FAKE_CLAUDE))]
    if args.real_cli:
        from testkit import fake_anthropic
        api = fake_anthropic.start()
        os.environ.update({
            "HOME": tmp, "ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": "dummy",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_MAX_RETRIES": "0"})
        os.environ.pop("CLAUDE_CONFIG_DIR")
        targets.append(("real claude 2.1.332", args.real_cli))
    for name, binary in targets:
        server, url = serve({"PORT": "0", "CLAUDE_BIN": binary, "CLAUDE_WORKDIR": tmp,
                             "USAGE_DB_PATH": os.path.join(tmp, "usage.db")})
        bare, via = [], []
        through_bridge(url, "warm up")
        for i in range(args.runs):
            # Interleave so drift on a noisy machine hits both sides alike.
            bare.append(bare_cli(binary, f"hello {i}"))
            via.append(through_bridge(url, f"hello {i}"))
        bridge.stop_server(server, server.thread)
        server.app.bridge.close()
        b_line, b_delta = (median_ms([b[k] for b in bare]) for k in (0, 1))
        v_byte, v_content = (median_ms([v[k] for v in via]) for k in (0, 1))
        rows.append((name, b_line, b_delta, v_byte, v_content))
    print(f"first byte, median of {args.runs} interleaved runs (ms)")
    print(f"{'backend':22} {'bare 1st line':>14} {'bare 1st delta':>15} "
          f"{'bridge 1st byte':>16} {'bridge 1st text':>16} {'added (text)':>13}")
    for name, b_line, b_delta, v_byte, v_content in rows:
        print(f"{name:22} {b_line:14.1f} {b_delta:15.1f} {v_byte:16.1f} {v_content:16.1f} "
              f"{v_content - b_delta:13.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    fb = sub.add_parser("first-byte")
    fb.add_argument("--runs", type=int, default=30)
    fb.add_argument("--real-cli", default=None)
    args = parser.parse_args()
    {"first-byte": first_byte}[args.command](args)


if __name__ == "__main__":
    main()
