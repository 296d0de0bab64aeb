#!/usr/bin/env python3
"""Replay a list of attacks against a bridge.py started as a subprocess, and print figures.

Why: the hardening of bridge.py (Host/Origin checks, bounded queues and bodies, read
deadlines, the CLI reaper, ...) is easiest to judge by running the same attacks against the
old and the new code and comparing measured numbers side by side.  The script prints what
happened (status codes, CLIs started, memory, latency, seconds), never pass/fail: what is
"good" is for the reader to decide.

    python testkit/attacks.py --bridge-dir DIR [--only NAME ...]

DIR holds the bridge.py under test and its testkit/fake_claude.py and testkit/fake_ollama.py;
the fakes of that directory are used.  Every attack gets a fresh bridge (on 127.0.0.1, port
0, state in a temporary directory), every network call has a timeout and every loop a bound,
and every process started here is killed and reaped before the next attack.
Needs only the standard library and `requests`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import json
import os
import re
import select
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import requests

LISTENING_RE = re.compile(r"listening on http://127\.0\.0\.1:(\d+)/v1")
CHAT = "/v1/chat/completions"
MIB = 1024 * 1024


def chat_body(text="hi", model="claude-code", system=None):
    """The smallest chat request the bridge accepts; a system message when asked."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": text})
    return {"model": model, "messages": messages}


def err(exc):
    """Exceptions are figures too: a refused or reset connection is an outcome."""
    return "error=" + type(exc).__name__


def outcome(resp):
    """The status, with the error code of a JSON error (which refusal it was)."""
    if resp.status_code < 400:
        return str(resp.status_code)
    try:
        error = resp.json().get("error")
        code = error.get("code") or error.get("type") if isinstance(error, dict) else None
    except (ValueError, AttributeError):
        code = None
    return f"{resp.status_code}({code})" if code else str(resp.status_code)


def yes(flag):
    return "yes" if flag else "no"


# ----------------------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------------------


def proc_stat(pid):
    """(state, ppid, starttime) from /proc/<pid>/stat, or None if there is no such pid.
    The command name may hold spaces and parentheses, so split after the last ')'."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[19])


def gone(pid):
    """A pid is gone when it no longer exists or is a zombie nobody reaped yet."""
    st = proc_stat(pid)
    return st is None or st[0] in ("Z", "X")


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def descendants(root):
    """All (pid, starttime) below ROOT: the bridge's CLIs, the reaper, grandchildren.
    Taken before the bridge is stopped, so leftovers can be found even once reparented;
    the start time guards against a reused pid."""
    children = collections.defaultdict(list)
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None:
                children[st[1]].append((int(name), st[2]))
    found, todo = [], [root]
    while todo and len(found) < 10_000:
        for pid, start in children.get(todo.pop(), []):
            found.append((pid, start))
            todo.append(pid)
    return found


def kill_if_same(pid, start):
    """SIGKILL PID only if it is still the process we saw (same start time)."""
    st = proc_stat(pid)
    if st is not None and st[2] == start and st[0] not in ("Z", "X"):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def mem_kib(pid, key):
    """VmRSS / VmHWM of PID in KiB (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for ln in f:
                if ln.startswith(key + ":"):
                    return int(ln.split()[1])
    except OSError:
        return None
    return None


def mib(kib):
    return "?" if kib is None else f"{kib / 1024:.0f}MiB"


def load_fake_ollama(bridge_dir):
    """Import the directory's own fake Ollama by path (in this process, on a thread)."""
    path = os.path.join(bridge_dir, "testkit", "fake_ollama.py")
    spec = importlib.util.spec_from_file_location("attack_fake_ollama", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Bridge:
    """One bridge.py subprocess with its own temporary state, fake CLI log and stderr."""

    START_TIMEOUT = 30

    def __init__(self, bridge_dir, extra_env=None):
        self.dir = bridge_dir
        self.tmp = tempfile.mkdtemp(prefix="bridge-attack-")
        self.fake_log = os.path.join(self.tmp, "fake-log")
        os.mkdir(self.fake_log)
        self.claude_bin = os.path.join(bridge_dir, "testkit", "fake_claude.py")
        if not os.access(self.claude_bin, os.X_OK):
            raise RuntimeError(f"{self.claude_bin} is not executable")
        self.db_path = os.path.join(self.tmp, "usage.db")
        env = dict(os.environ)
        env.pop("CLAUDECODE", None)
        env.update({
            "PORT": "0", "HOST": "127.0.0.1",
            "CLAUDE_BIN": self.claude_bin,
            "CLAUDE_WARM_POOL": "0", "CLAUDE_SESSION_KEEPALIVE": "0",
            "CLAUDE_WORKDIR": self.tmp, "USAGE_DB_PATH": self.db_path,
            "FAKE_CLAUDE_LOG": self.fake_log,
            "CLAUDE_CONFIG_DIR": os.path.join(self.tmp, "claude-config"),
            # Only so that stopping a bridge with a hung CLI does not take 10 s.
            "SHUTDOWN_TIMEOUT": "3",
        })
        env.update(extra_env or {})
        self.lines = []
        self._port_found = threading.Event()
        self.port = None
        self._snapshot = []
        # Own session: nothing we signal by group can ever be this script's group.
        self.proc = subprocess.Popen([sys.executable, os.path.join(bridge_dir, "bridge.py")],
                                     env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, text=True, errors="replace",
                                     start_new_session=True)
        self.pid = self.proc.pid
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()
        if not self._port_found.wait(self.START_TIMEOUT) or self.port is None:
            self.close()
            raise RuntimeError("bridge did not start: " + " | ".join(self.lines[-5:]))
        self.url = f"http://127.0.0.1:{self.port}"

    def _read_stderr(self):
        """Keep every line (attacks read the log) and learn the port from the first."""
        for ln in self.proc.stderr:
            self.lines.append(ln.rstrip("\n"))
            if self.port is None:
                m = LISTENING_RE.search(ln)
                if m:
                    self.port = int(m.group(1))
                    self._port_found.set()
        self._port_found.set()  # the bridge ended before listening: stop waiting

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- figures
    def cli_runs(self):
        """The fake CLI's per-run logs, health checks (`claude --version`) left out."""
        runs = []
        for name in os.listdir(self.fake_log):
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(self.fake_log, name), encoding="utf-8") as f:
                    data = json.load(f)
            except (OSError, ValueError):
                continue  # being replaced right now; seen on the next look
            if "--version" not in (data.get("argv") or []):
                runs.append(data)
        return runs

    def clis(self):
        return len(self.cli_runs())

    def wait_for_run(self, predicate=lambda run: True, timeout=15):
        """The first CLI run matching PREDICATE, polled until TIMEOUT (None if none)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for run in self.cli_runs():
                if predicate(run):
                    return run
            time.sleep(0.05)
        return None

    def mem(self, key):
        return mem_kib(self.pid, key)

    def log_text(self):
        return "\n".join(self.lines)

    # -- requests
    def get(self, path, timeout=10, **kw):
        return requests.get(self.url + path, timeout=timeout, **kw)

    def post(self, path=CHAT, timeout=30, **kw):
        return requests.post(self.url + path, timeout=timeout, **kw)

    # -- ending
    def snapshot(self):
        """Remember the bridge's process tree before it goes (see close)."""
        if self.proc.poll() is None:
            self._snapshot = descendants(self.pid)

    def kill9(self):
        self.snapshot()
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout=15):
        """SIGTERM, wait; SIGKILL if it does not end.  Returns seconds until it ended."""
        t0 = time.monotonic()
        self.snapshot()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return time.monotonic() - t0

    def close(self):
        """Stop the bridge, then kill whatever it left: its process tree as seen before it
        ended, and every fake CLI (and CLI child) its log names.  Then remove the files."""
        self.stop()
        self._drain.join(5)
        for pid, start in self._snapshot:
            kill_if_same(pid, start)
        for run in self.cli_runs():
            pid, pgid = run.get("pid"), run.get("pgid")
            if pid and not gone(pid) and b"fake_claude" in cmdline(pid):
                if pgid and pgid not in (os.getpgid(0), self.pid):
                    with contextlib.suppress(OSError):
                        os.killpg(pgid, signal.SIGKILL)
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            child = run.get("child_pid")
            if child and not gone(child) and b"sleep" in cmdline(child):
                with contextlib.suppress(OSError):
                    os.kill(child, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.proc.stderr.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def fake_ollama(bridge_dir):
    """A fake Ollama on a free port for the length of one attack."""
    fake = load_fake_ollama(bridge_dir).start()
    try:
        yield fake
    finally:
        fake.stop()


def post_in_thread(bridge, body, timeout, headers=None):
    """Fire one chat without waiting for it; the thread ends with the request."""
    out = {}

    def run():
        try:
            out["status"] = bridge.post(json=body, headers=headers, timeout=timeout).status_code
        except requests.RequestException as exc:
            out["status"] = err(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


# ----------------------------------------------------------------------------------------
# Attacks: each takes the bridge directory and returns its figures as one string.
# ----------------------------------------------------------------------------------------


def cross_site_post(d):
    """A web page may POST text/plain to localhost without a CORS preflight: does the
    bridge run a CLI for it?"""
    with Bridge(d) as b:
        headers = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site",
                   "Content-Type": "text/plain"}
        try:
            status = outcome(b.post(data=json.dumps(chat_body()), headers=headers))
        except requests.RequestException as exc:
            status = err(exc)
        return f"status={status} clis_started={b.clis()}"


def rebinding_read(d):
    """DNS rebinding: a page on evil.example whose name now points at 127.0.0.1 talks to
    the bridge with `Host: evil.example:PORT`.  Can it read usage rows, or run a CLI?"""
    with Bridge(d) as b:
        b.post(json=chat_body(), headers={"X-Session-ID": "victim-session-1"})
        evil = {"Host": f"evil.example:{b.port}"}
        try:
            r = b.get("/v1/usage/recent?limit=50", headers=evil)
            read = f"read_status={outcome(r)} victim_id_in_body={yes('victim-session-1' in r.text)}"
        except requests.RequestException as exc:
            read = "read_" + err(exc)
        before = b.clis()
        try:
            status = outcome(b.post(json=chat_body(), timeout=30,
                                    headers={**evil, "X-Session-ID": "victim-session-1"}))
        except requests.RequestException as exc:
            status = err(exc)
        return f"{read} post_status={status} post_clis_started={b.clis() - before}"


def session_ids_in_api(d):
    """Session ids act as conversation keys: are they handed back by the API or logged?"""
    with Bridge(d) as b:
        r1 = b.post(json=chat_body(), headers={"X-Session-ID": "secret-sess-42"})
        r2 = b.get("/v1/usage/recent?limit=50")
        time.sleep(0.3)  # let the request's log line arrive
        return (f"chat_status={r1.status_code} usage_status={r2.status_code} "
                f"id_in_api={yes('secret-sess-42' in r2.text)} "
                f"id_in_log={yes('secret-sess-42' in b.log_text())}")


def log_forging(d):
    """CR/LF in a path or a model name must not start a new, forged log line."""
    with Bridge(d) as b:
        try:
            s1 = outcome(b.get("/x%0D%0A2026-01-01T00:00:00Z%20FORGED%20LINE"))
        except requests.RequestException as exc:
            s1 = err(exc)
        try:
            s2 = outcome(b.post(json=chat_body(model="sonnet\n2026-01-01T00:00:00Z FORGED MODEL")))
        except requests.RequestException as exc:
            s2 = err(exc)
        time.sleep(0.5)
        forged = sum(ln.startswith("2026-01-01T00:00:00Z FORGED") for ln in b.lines)
        return f"path_status={s1} model_status={s2} forged_lines={forged}"


def ollama_huge_name(d):
    """A 4 MiB model name: is it stored in the usage db and echoed in /metrics labels?"""
    with fake_ollama(d) as fake, Bridge(d, {"MAX_BODY_MB": "16", "OLLAMA_URL": fake.url}) as b:
        try:
            status = outcome(b.post(json=chat_body(model="ollama/" + "a" * (4 * MIB)), timeout=60))
        except requests.RequestException as exc:
            status = err(exc)
        time.sleep(0.3)
        try:
            with contextlib.closing(sqlite3.connect(f"file:{b.db_path}?mode=ro", uri=True,
                                                    timeout=5)) as db:
                longest_db = db.execute("SELECT MAX(LENGTH(model)) FROM requests").fetchone()[0]
        except sqlite3.Error as exc:
            longest_db = err(exc)
        try:
            m = b.get("/metrics", timeout=20)
            metrics = (f"metrics_status={m.status_code} "
                       f"metrics_longest_line={max((len(x) for x in m.text.splitlines()), default=0)}")
        except requests.RequestException as exc:
            metrics = "metrics_" + err(exc)
        return f"status={status} db_longest_model={longest_db} {metrics}"


def ollama_session_system(d):
    """A 16 MiB system message in an Ollama session: how much stays in the bridge's memory
    (the session keeps the conversation for the next turn)?"""
    with fake_ollama(d) as fake, Bridge(d, {"MAX_BODY_MB": "64", "OLLAMA_URL": fake.url}) as b:
        before = b.mem("VmRSS")
        body = {"model": "ollama/llama3.2",
                "messages": [{"role": "system", "content": "s" * (16 * MIB)},
                             {"role": "user", "content": "hi"}]}
        try:
            status = outcome(b.post(json=body, headers={"X-Session-ID": "big"}, timeout=60))
        except requests.RequestException as exc:
            status = err(exc)
        time.sleep(1)
        fake.reset()  # its copy of the body is this process's memory, not the bridge's
        return (f"status={status} rss_before={mib(before)} rss_after={mib(b.mem('VmRSS'))} "
                f"hwm={mib(b.mem('VmHWM'))}")


def container_bomb(d):
    """~11 million empty objects in a body under the size limit: what does parsing cost?"""
    with Bridge(d, {"MAX_BODY_MB": "32"}) as b:
        n = (33_000_000 - 4) // 3
        body = b"[" + b"{}," * n + b"{}]"
        hwm0 = b.mem("VmHWM")
        t0 = time.monotonic()
        try:
            status = outcome(b.post(data=body, headers={"Content-Type": "application/json"},
                                    timeout=120))
        except requests.RequestException as exc:
            status = err(exc)
        secs = time.monotonic() - t0
        hwm1 = b.mem("VmHWM")
        growth = "?" if None in (hwm0, hwm1) else f"{(hwm1 - hwm0) / 1024:.0f}MiB"
        return f"status={status} body_bytes={len(body)} hwm_growth={growth} seconds={secs:.1f}"


def read_response_head(sock, timeout=10):
    """Read until the end of the response head (or EOF / TIMEOUT); returns the bytes."""
    sock.settimeout(timeout)
    data = b""
    end = time.monotonic() + timeout
    while b"\r\n\r\n" not in data and time.monotonic() < end and len(data) < 1 << 20:
        try:
            chunk = sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data


def oversize_body(d):
    """A body over MAX_BODY_MB: refused, and is the refusal JSON like every other error?"""
    with Bridge(d, {"MAX_BODY_MB": "1"}) as b:
        size = 3 * MIB
        head = (f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1:{b.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {size}\r\n"
                "Connection: close\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", b.port), timeout=10) as s:
            s.sendall(head)
            sent_all = True
            try:
                s.sendall(b"x" * size)
            except OSError:
                sent_all = False  # the server may answer and close before reading it all
            data = read_response_head(s)
        head_text = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        lines = head_text.split("\r\n")
        status = lines[0].split(" ")[1] if lines and len(lines[0].split(" ")) > 1 else "none"
        ctype = next((ln.split(":", 1)[1].strip() for ln in lines[1:]
                      if ln.lower().startswith("content-type:")), "none")
        return f"status={status} content_type={ctype!r} body_fully_sent={yes(sent_all)}"


def health_prober(bridge, stop, results, every=0.5, timeout=10):
    """GET /health every EVERY seconds until STOP; appends (ok, ms) per probe."""
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            ok = bridge.get("/health", timeout=timeout).status_code == 200
        except requests.RequestException:
            ok = False
        results.append((ok, (time.monotonic() - t0) * 1000))
        stop.wait(max(0.0, every - (time.monotonic() - t0)))


def latency_figures(results):
    oks = sum(ok for ok, _ in results)
    ms = [m for _, m in results]
    if not ms:
        return "health=0/0"
    return (f"health_ok={oks}/{len(results)} p50_ms={statistics.median(ms):.0f} "
            f"max_ms={max(ms):.0f}")


def trickle(d):
    """Slowloris: 300 connections that send a request head one byte a second.  Does the
    bridge stay available, and does it drop the slow clients?"""
    with Bridge(d, {"THREADS": "16", "REQUEST_HEAD_TIMEOUT": "5"}) as b:
        socks, connect_errors = [], 0
        head = f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
        open_until = time.monotonic() + 5
        for _ in range(300):
            if time.monotonic() > open_until:
                break
            try:
                s = socket.create_connection(("127.0.0.1", b.port), timeout=2)
                s.sendall(head)
                s.setblocking(False)
                socks.append(s)
            except OSError:
                connect_errors += 1
        closed = set()
        stop, probes = threading.Event(), []
        prober = threading.Thread(target=health_prober, args=(b, stop, probes), daemon=True)
        prober.start()
        attack_end = time.monotonic() + 20
        while time.monotonic() < attack_end and len(closed) < len(socks):
            for i, s in enumerate(socks):
                if i in closed:
                    continue
                try:
                    readable, _, _ = select.select([s], [], [], 0)
                    if readable:  # an answer (e.g. 408) or EOF: the server gave up on it
                        s.recv(65536)
                        closed.add(i)
                        continue
                    s.send(b"X")
                except OSError:
                    closed.add(i)
            time.sleep(max(0.0, min(1.0, attack_end - time.monotonic())))
        stop.set()
        prober.join(12)
        for s in socks:
            s.close()
        return (f"{latency_figures(probes)} sockets_open={len(socks)} "
                f"connect_errors={connect_errors} closed_by_server={len(closed)}")


def flood(bridge, n, timeout, body=None):
    """N concurrent chats; returns their threads and a list that fills with outcomes."""
    outcomes = []

    def one():
        try:
            outcomes.append(bridge.post(json=body or chat_body(), timeout=timeout).status_code)
        except requests.RequestException as exc:
            outcomes.append(err(exc))

    threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads, outcomes


def counts(outcomes):
    return " ".join(f"{k}:{v}" for k, v in sorted(collections.Counter(map(str, outcomes)).items()))


def queued_flood(d):
    """64 chats while the only CLI slot is busy: how many wait (each holding a worker
    thread) and can /health still get a thread? (THREADS at its default of 64.)"""
    env = {"THREADS": "64", "CLAUDE_MAX_CONCURRENCY": "1", "CLAUDE_QUEUE_TIMEOUT": "20"}
    with Bridge(d, env) as b:
        holder, held = post_in_thread(b, chat_body("[fake:slow:60:100]"), timeout=60)
        if b.wait_for_run() is None:
            return "holder CLI did not start"
        threads, outcomes = flood(b, 64, timeout=30)
        time.sleep(0.5)
        probes = []
        for _ in range(5):
            t0 = time.monotonic()
            try:
                ok = b.get("/health", timeout=10).status_code == 200
            except requests.RequestException:
                ok = False
            probes.append((ok, (time.monotonic() - t0) * 1000))
            time.sleep(0.2)
        end = time.monotonic() + 40
        for t in threads + [holder]:
            t.join(max(0.0, end - time.monotonic()))
        answered = sum(ok for ok, _ in probes)
        return (f"flood={counts(outcomes)} holder={held.get('status')} "
                f"health_during={answered}/5 health_max_ms={max(m for _, m in probes):.0f} "
                f"clis_started={b.clis()}")


def abandoned_queue(d):
    """Clients that give up while queued: does the bridge still run a CLI for each once a
    slot frees up (paying for answers nobody reads)?"""
    env = {"THREADS": "32", "CLAUDE_MAX_CONCURRENCY": "1", "CLAUDE_QUEUE_TIMEOUT": "30"}
    with Bridge(d, env) as b:
        holder, held = post_in_thread(b, chat_body("[fake:slow:40:100]"), timeout=60)
        if b.wait_for_run() is None:
            return "holder CLI did not start"
        threads, outcomes = flood(b, 20, timeout=0.5)
        for t in threads:
            t.join(5)
        holder.join(30)
        time.sleep(8)
        return (f"abandoned={counts(outcomes)} holder={held.get('status')} "
                f"clis_for_abandoned={b.clis() - 1}")


def kill_9_orphans(d):
    """The bridge dies by SIGKILL mid-request: do its CLI and the CLI's child die too?"""
    with Bridge(d) as b:
        post_in_thread(b, chat_body("[fake:child]"), timeout=60)
        run = b.wait_for_run(lambda r: r.get("child_pid"))
        if run is None:
            return "CLI with child did not start"
        cli, child = run["pid"], run["child_pid"]
        t0 = time.monotonic()  # from the SIGKILL, the reaping of the bridge included
        b.kill9()
        gone_at = {}
        while time.monotonic() - t0 < 30 and len(gone_at) < 2:
            for name, pid in (("cli", cli), ("child", child)):
                if name not in gone_at and gone(pid):
                    gone_at[name] = time.monotonic() - t0
            time.sleep(0.1)
        figures = []
        for name in ("cli", "child"):
            if name in gone_at:
                figures.append(f"{name}_gone_after={gone_at[name]:.2f}s")
            else:
                figures.append(f"{name}=alive after 30 s")
        # Bridge.close() kills what is left (the pgid from the log, the child by pid).
        return " ".join(figures)


def cli_env_and_argv(d):
    """What a local user can read in /proc of a running CLI: the bridge's API key in its
    environment? The client's system prompt on its command line?"""
    with Bridge(d, {"CLAUDE_AUTH_KEY": "attack-secret-key"}) as b:
        post_in_thread(b, chat_body("[fake:hang]", system="TOP-SECRET-SYSTEM-PROMPT"),
                       timeout=60, headers={"Authorization": "Bearer attack-secret-key"})
        run = b.wait_for_run(lambda r: r.get("scenario") == "hang")
        if run is None:
            return "CLI did not start"
        pid = run["pid"]
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read()
        except OSError as exc:
            environ = err(exc).encode()
        argv = cmdline(pid)
        stop_secs = b.stop()
        return (f"key_in_cli_environ={yes(b'attack-secret-key' in environ)} "
                f"system_prompt_in_cli_cmdline={yes(b'TOP-SECRET-SYSTEM-PROMPT' in argv)} "
                f"bridge_stop_seconds={stop_secs:.1f}")


def health_disclosure_and_flood(d):
    """/health needs no key: what does it tell a stranger, and does a flood of it turn
    into a flood of probes on Ollama?"""
    with fake_ollama(d) as fake, Bridge(d, {"CLAUDE_AUTH_KEY": "k", "OLLAMA_URL": fake.url}) as b:
        try:
            r = b.get("/health")
            shown = (f"status={r.status_code} cli_path_shown={yes(b.claude_bin in r.text)} "
                     f"db_path_shown={yes(b.db_path in r.text)} body_bytes={len(r.content)}")
        except requests.RequestException as exc:
            shown = err(exc)
        versions_before = sum(p == "/api/version" for p, _ in list(fake.requests))
        answers, errors = [], []
        end = time.monotonic() + 3

        def loop():
            with requests.Session() as s:
                while time.monotonic() < end:
                    try:
                        answers.append(s.get(b.url + "/health", timeout=5).status_code)
                    except requests.RequestException as exc:
                        errors.append(type(exc).__name__)

        threads = [threading.Thread(target=loop, daemon=True) for _ in range(150)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, end + 6 - time.monotonic()))
        versions = sum(p == "/api/version" for p, _ in list(fake.requests)) - versions_before
        return (f"{shown} flood_answers={counts(answers) or 0} flood_errors={len(errors)} "
                f"ollama_version_probes={versions}")


ATTACKS = [
    ("cross-site-post", cross_site_post),
    ("rebinding-read", rebinding_read),
    ("session-ids-in-api", session_ids_in_api),
    ("log-forging", log_forging),
    ("ollama-huge-name", ollama_huge_name),
    ("ollama-session-system", ollama_session_system),
    ("container-bomb", container_bomb),
    ("oversize-body", oversize_body),
    ("trickle", trickle),
    ("queued-flood", queued_flood),
    ("abandoned-queue", abandoned_queue),
    ("kill-9-orphans", kill_9_orphans),
    ("cli-env-and-argv", cli_env_and_argv),
    ("health-disclosure-and-flood", health_disclosure_and_flood),
]


def main(argv=None):
    names = [name for name, _ in ATTACKS]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bridge-dir", required=True, help="directory with bridge.py and testkit/")
    ap.add_argument("--only", nargs="+", choices=names, metavar="NAME",
                    help="run only these attacks: " + ", ".join(names))
    args = ap.parse_args(argv)
    bridge_dir = os.path.abspath(args.bridge_dir)
    width = max(map(len, names))
    print(f"bridge: {bridge_dir}")
    print(f"{'attack':<{width}} | figures")
    print(f"{'-' * width}-+-{'-' * 60}")
    t_all = time.monotonic()
    for name, attack in ATTACKS:
        if args.only and name not in args.only:
            continue
        t0 = time.monotonic()
        try:
            figures = attack(bridge_dir)
        except Exception as exc:  # one broken attack must not hide the others' figures
            figures = f"{err(exc)} ({exc})"[:300]
        print(f"{name:<{width}} | {figures} [{time.monotonic() - t0:.1f}s]", flush=True)
    print(f"total runtime: {time.monotonic() - t_all:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
