"""Safe by default: each attack on a bridge left running on a laptop, as a test.

The threat is the browser next to it (a web page can POST to 127.0.0.1 and, by DNS
rebinding, read the answers), other local users (argv is world-readable), clients that
trickle or flood, and a bridge killed with -9. Every request here goes over HTTP to a real
bridge; the browser tests drive a real headless Chromium.
"""
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import requests

import bridge
from testkit.harness import FAKE_CLAUDE, ROOT, alive, assert_error, sse_events, user, wait_until


def host(br, name):
    return {"Host": f"{name}:{br.server.effective_port}"}


def chat(br, text="hi", headers=None, **kw):
    kw.setdefault("timeout", 30)
    return requests.post(br.url + "/v1/chat/completions", json=user(text),
                         headers=headers or {}, **kw)


# ----------------------------------------------------------------------------------------
# Host: DNS rebinding
# ----------------------------------------------------------------------------------------

ROUTES = [("POST", "/v1/chat/completions"), ("GET", "/v1/usage/recent"), ("GET", "/v1/usage"),
          ("GET", "/v1/models"), ("GET", "/health"), ("GET", "/metrics"),
          ("GET", "/dashboard"), ("GET", "/openapi.json"), ("GET", "/nowhere")]


def test_a_foreign_host_is_refused_on_every_route_before_any_work(start):
    br = start()
    for method, path in ROUTES:
        resp = requests.request(method, br.url + path, json=user("hi"), timeout=10,
                                headers=host(br, "evil.example"))
        err = assert_error(resp, 403, "host_not_allowed")
        assert "ALLOWED_HOSTS" in err["message"] and resp.headers["X-Request-ID"]
    assert br.chat_runs() == [] and br.rows() == []


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "[::1]", "LocalHost",
                                  "10.1.2.3", "127.0.0.5"])
def test_loopback_names_and_ip_addresses_are_allowed(br, name):
    # An IP address cannot be rebound: only a DNS name can be made to point here.
    assert chat(br, headers=host(br, name)).status_code == 200


def test_allowed_hosts_extends_the_names(start):
    br = start(ALLOWED_HOSTS="bridge.example, *.corp.example")
    for name in ("bridge.example", "a.corp.example", "x.y.corp.example"):
        resp = requests.get(br.url + "/v1/models", headers=host(br, name), timeout=10)
        assert resp.status_code == 200, name
    for name in ("corp.example", "evil.example", "bridge.example.evil.example"):
        resp = requests.get(br.url + "/v1/models", headers=host(br, name), timeout=10)
        assert_error(resp, 403, "host_not_allowed")
    anything = start(ALLOWED_HOSTS="*")
    assert requests.get(anything.url + "/v1/models", headers=host(br, "evil.example"),
                        timeout=10).status_code == 200


@pytest.mark.parametrize("value", ["*.", "a b", "http://x", "x/y"])
def test_bad_allowed_hosts_or_origins_stop_start_up(value):
    with pytest.raises(bridge.SettingsError, match="ALLOWED_HOSTS"):
        bridge.load_settings(environ={"ALLOWED_HOSTS": value})


@pytest.mark.parametrize("value", ["*", "localhost:3000", "http://a/b", "https://x:1:2"])
def test_bad_cors_origins_stop_start_up(value):
    with pytest.raises(bridge.SettingsError, match="CORS_ORIGINS"):
        bridge.load_settings(environ={"CORS_ORIGINS": value})


# ----------------------------------------------------------------------------------------
# Origin, Sec-Fetch-Site, Content-Type: cross-site requests
# ----------------------------------------------------------------------------------------

def test_a_cross_site_simple_post_starts_no_cli(br):
    body = json.dumps(user("hi"))
    # What `fetch(url, {mode: "no-cors", method: "POST", body})` from a web page sends.
    resp = requests.post(br.url + "/v1/chat/completions", data=body, timeout=10, headers={
        "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site",
        "Sec-Fetch-Mode": "no-cors", "Content-Type": "text/plain;charset=UTF-8"})
    assert_error(resp, 403, "origin_not_allowed")
    # Without Origin (an old browser) the body type still refuses it; without both too.
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}):
        assert_error(requests.post(br.url + "/v1/chat/completions", data=body, timeout=10,
                                   headers={**headers, "Content-Type": "application/json"}),
                     403, "origin_not_allowed")
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                  None):
        resp = requests.post(br.url + "/v1/chat/completions", data=body, timeout=10,
                             headers={"Content-Type": ctype} if ctype else {})
        assert_error(resp, 415, "unsupported_media_type")
    assert br.chat_runs() == [] and br.rows() == []
    # A JSON body with any charset, from no page or from the bridge's own: served.
    own = f"http://127.0.0.1:{br.server.effective_port}"
    for headers in ({"Content-Type": "application/json; charset=utf-8"},
                    {"Content-Type": "Application/JSON", "Origin": own,
                     "Sec-Fetch-Site": "same-origin"}):
        resp = requests.post(br.url + "/v1/chat/completions", data=body, timeout=10,
                             headers=headers)
        assert resp.status_code == 200 and "Access-Control-Allow-Origin" not in resp.headers


def test_a_cross_site_read_of_the_usage_api_is_refused(br):
    chat(br, headers={"X-Session-ID": "victim"})
    for headers in ({"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"},
                    {"Origin": "http://localhost:9999", "Sec-Fetch-Site": "same-site"}):
        resp = requests.get(br.url + "/v1/usage/recent", headers=headers, timeout=10)
        assert_error(resp, 403, "origin_not_allowed")
    # A link from another site to the dashboard still opens it (the page holds no data).
    resp = requests.get(br.url + "/dashboard", timeout=10, headers={
        "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"})
    assert resp.status_code == 200


def test_a_listed_origin_gets_cors_for_preflight_json_and_streams(start):
    app = "http://app.example:3000"
    br = start(CORS_ORIGINS=f"{app}, https://other.example")
    pre = requests.options(br.url + "/v1/chat/completions", timeout=10, headers={
        "Origin": app, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-session-id"})
    assert pre.status_code == 204 and pre.headers["Access-Control-Allow-Origin"] == app
    allowed = {h.strip().lower() for h in pre.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "x-session-id", "x-request-id"} <= allowed
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    assert "*" not in pre.headers["Access-Control-Allow-Origin"]
    assert br.chat_runs() == []
    headers = {"Origin": app, "Sec-Fetch-Site": "cross-site"}
    resp = requests.post(br.url + "/v1/chat/completions", timeout=30, headers=headers,
                         json={**user("hello"), "stream": True}, stream=True)
    assert resp.status_code == 200
    assert resp.headers["Access-Control-Allow-Origin"] == app
    assert "X-Request-ID" in resp.headers["Access-Control-Expose-Headers"]
    assert sse_events(resp)[0][-1] == "[DONE]"
    usage = requests.get(br.url + "/v1/usage/recent", headers=headers, timeout=10)
    assert usage.status_code == 200 and usage.headers["Vary"] == "Origin"
    # Another origin's preflight and request: refused, and no CORS header to read them.
    other = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    resp = requests.options(br.url + "/v1/chat/completions", headers=other, timeout=10)
    assert_error(resp, 403, "origin_not_allowed")
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert len(br.chat_runs()) == 1


# ----------------------------------------------------------------------------------------
# Session ids are bearer secrets
# ----------------------------------------------------------------------------------------

SECRET_SESSION = "sess-SECRET-4f2a9c"


def test_session_ids_never_leave_the_bridge(bridge_process, ollama_fake):
    bp = bridge_process(OLLAMA_URL=ollama_fake.url, CLAUDE_AUTH_KEY="k")
    auth = {"Authorization": "Bearer k", "X-Session-ID": SECRET_SESSION}
    answers = []
    for model in ("claude-code", "ollama/llama3.2"):
        for text in ("hello", "[fake:error-401]"):
            answers.append(requests.post(bp.url + "/v1/chat/completions", headers=auth,
                                         json={**user(text), "model": model}, timeout=30))
    answers.append(requests.post(bp.url + "/v1/chat/completions", headers=auth,
                                 json={"model": "claude-code", "messages": []}, timeout=30))
    for path in ("/v1/usage/recent?limit=1000", "/v1/usage", "/metrics", "/health"):
        answers.append(requests.get(bp.url + path, headers=auth, timeout=10))
    assert [a.status_code for a in answers[:5]] == [200, 502, 200, 200, 400]
    rows = answers[5].json()
    tags = {r["session_id"] for r in rows}
    assert len(rows) == 5 and len(tags) == 1 and re.fullmatch(r"[0-9a-f]{16}", tags.pop())
    bp.proc.send_signal(signal.SIGTERM)
    bp.proc.wait(timeout=15)
    bp.reader.join(5)
    for answer in answers:
        assert SECRET_SESSION not in answer.text
    assert SECRET_SESSION not in "".join(bp.lines)
    # Nor in the database: the mapping to Claude's session is keyed by the tag too.
    for name in ("usage.db", "usage.db-wal"):
        path = bp.tmp / name
        assert not path.exists() or SECRET_SESSION.encode() not in path.read_bytes()
    assert os.stat(bp.tmp / "usage.db").st_mode & 0o077 == 0


def test_an_older_database_has_its_session_ids_replaced_by_tags(start, tmp_path):
    path = tmp_path / "usage.db"
    old = bridge.MIGRATIONS
    bridge.MIGRATIONS = old[:5]  # the schema before session tags
    try:
        bridge.UsageStore(str(path)).close()
        with sqlite3.connect(path) as db:  # rows as that schema's bridge wrote them
            db.execute("INSERT INTO claude_sessions VALUES (?, 'uuid-1', ?, 0.5, ?)",
                       (SECRET_SESSION, str(tmp_path), bridge._utc_now_text()))
            db.execute("INSERT INTO requests (request_id, model, provider, session_id, "
                       "outcome, status) VALUES ('r1', 'm', 'claude', ?, 'ok', 200)",
                       (SECRET_SESSION,))
    finally:
        bridge.MIGRATIONS = old
    br = start()
    tag = br.app.bridge.store.session_tag(SECRET_SESSION)
    assert [r["session_id"] for r in br.rows()] == [tag]
    assert br.app.bridge.store.get_claude_session(tag)[0] == "uuid-1"
    assert SECRET_SESSION.encode() not in path.read_bytes()


def test_claude_sessions_are_bounded_in_count_and_age(start):
    br = start(CLAUDE_SESSIONS="2", CLAUDE_SESSION_DAYS="1")
    store = br.app.bridge.store
    for name in ("a", "b", "c"):
        assert chat(br, headers={"X-Session-ID": name}).status_code == 200
    assert store.claude_session_count() == 2
    assert store.get_claude_session(store.session_tag("a")) is None  # least recent
    # "a" has been forgotten: its next turn starts a new session instead of resuming.
    chat(br, headers={"X-Session-ID": "a"})
    assert "--session-id" in br.chat_runs()[-1]["argv"]
    db = sqlite3.connect(br.settings.usage_db_path)
    db.execute("UPDATE claude_sessions SET updated_at = '2000-01-01 00:00:00.000'")
    db.commit()
    db.close()
    assert store.get_claude_session(store.session_tag("c")) is None  # past its days
    chat(br, headers={"X-Session-ID": "d"})
    assert store.claude_session_count() == 1


# ----------------------------------------------------------------------------------------
# Logs, names, sizes
# ----------------------------------------------------------------------------------------

FORGED = "2026-01-01T00:00:00Z FORGED"


def test_request_text_cannot_forge_log_lines(bridge_process):
    bp = bridge_process()
    requests.get(bp.url + "/x%0D%0A" + FORGED.replace(" ", "%20") + "%1b[31m", timeout=10)
    requests.post(bp.url + "/v1/chat/completions", timeout=30, json={
        "model": "sonnet\n" + FORGED, "messages": [{"role": "user", "content": "hi"}]})
    requests.post(bp.url + "/v1/chat/completions", timeout=30,
                  json={**user("[fake:exit-nonzero:bad\n" + FORGED + "]")})
    bp.proc.send_signal(signal.SIGTERM)
    bp.proc.wait(timeout=15)
    bp.reader.join(5)
    assert not [line for line in bp.lines if line.startswith(FORGED)]
    assert not any("\x1b" in line for line in bp.lines)
    assert any("\\r\\n" + FORGED in line for line in bp.lines)


def test_a_64_mib_model_name_is_a_small_400(start, ollama_fake):
    br = start(MAX_BODY_MB="128", OLLAMA_URL=ollama_fake.url)
    for model in ("ollama/" + "a" * (64 << 20), "ollama/" + "a" * 201, "a" * (64 << 20),
                  "ollama/-rm", "ollama/a b", "ollama/a\nb"):
        resp = requests.post(br.url + "/v1/chat/completions", timeout=60, json={
            "model": model, "messages": [{"role": "user", "content": "hi"}]})
        assert_error(resp, 400, "model_not_found")
        assert len(resp.content) < 1000
    assert ollama_fake.chat_bodies() == []
    assert max(len(r["model"]) for r in br.rows()) <= 256  # the rule before any backend
    metrics = requests.get(br.url + "/metrics", timeout=10).text
    assert max(len(line) for line in metrics.splitlines()) < 500
    # Ollama's own name shapes still work.
    statuses = [requests.post(br.url + "/v1/chat/completions", timeout=30, json={
        "model": model, "messages": [{"role": "user", "content": "hi"}]}).status_code
        for model in ("ollama/llama3.2:latest", "ollama/hf.co/org/repo:Q4_K_M")]
    assert statuses == [200, 404]  # the second is a good name the fake does not have


def test_an_ollama_sessions_system_message_counts_toward_its_limit(start, ollama_fake):
    br = start(OLLAMA_URL=ollama_fake.url, OLLAMA_SESSION_MAX_KB="1")
    body = {"model": "ollama/llama3.2", "messages": [
        {"role": "system", "content": "s" * 2048}, {"role": "user", "content": "hi"}]}
    resp = requests.post(br.url + "/v1/chat/completions", json=body, timeout=30,
                         headers={"X-Session-ID": "big"})
    assert_error(resp, 400, "session_too_large")
    assert len(br.app.bridge.ollama.histories) == 0
    assert requests.post(br.url + "/v1/chat/completions", json=body,
                         timeout=30).status_code == 200  # no session: nothing is kept


def test_a_body_of_many_tiny_objects_is_refused_before_parsing(start):
    br = start(MAX_BODY_MB="16")
    bomb = b"[" + b"{}," * (5 << 20) + b"{}]"  # 15 MiB, ~400 MiB once parsed
    resp = requests.post(br.url + "/v1/chat/completions", data=bomb, timeout=30,
                         headers={"Content-Type": "application/json"})
    assert "JSON objects and arrays" in assert_error(resp, 400)["message"]
    # Brackets inside strings are text, not structure: code pasted into a prompt is fine.
    code = "function f() { return [{a: [1]}, {b: {}}]; }\n" * 60_000  # 2.6 MiB, 600k {[
    resp = requests.post(br.url + "/v1/chat/completions", json=user(code), timeout=30)
    assert resp.status_code == 200


def _parsed_bytes(raw):
    """Peak bytes Python allocates to parse `raw` (the decoded text included)."""
    import tracemalloc
    tracemalloc.start()
    try:
        json.loads(raw)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("unit", [b"{},", b"[],", b'{"a":1},', b'{"role":"user"},'])
def test_the_structure_limit_keeps_parsed_size_near_ten_times_the_bytes(unit):
    # The costliest body of 1 MiB: as many containers as allowed, the rest a string.
    size = 1 << 20
    count = min(bridge._containers_allowed(size) - 3, size // len(unit))  # 3 more below
    head, tail = b'{"x":[', b'{}],"pad":"'
    pad = b"p" * (size - len(head) - count * len(unit) - len(tail) - 2)
    worst = head + unit * count + tail + pad + b'"}'
    assert len(worst) == size
    bridge._check_structure(worst)
    assert _parsed_bytes(worst) <= 10 * size
    more = head + unit * (bridge._containers_allowed(size) + 1) + b'{}]}'
    with pytest.raises(bridge.InvalidRequest):
        bridge._check_structure(more)


def test_a_body_over_the_limit_is_the_openai_413_at_any_size(start):
    br = start(MAX_BODY_MB="1")
    for declared in (2 << 20, 100 << 20):
        sock = socket.create_connection(("127.0.0.1", br.server.effective_port), timeout=10)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: "
                     + str(declared).encode() + b"\r\n\r\n")
        try:
            sock.sendall(b"x" * 65536)
        except OSError:
            pass
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        sock.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"content-type: application/json" in head.lower()
        assert b"x-request-id: " in head.lower()
        assert json.loads(body)["error"]["code"] == "request_too_large"

    def chunks():
        for _ in range(20):
            yield b"x" * 65536 * 2
    resp = requests.post(br.url + "/v1/chat/completions", data=chunks(), timeout=30,
                         headers={"Content-Type": "application/json"})
    assert_error(resp, 413, "request_too_large")
    assert br.chat_runs() == []


# ----------------------------------------------------------------------------------------
# Availability
# ----------------------------------------------------------------------------------------

def _trickle(port, count, head=b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"):
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(head)
        sock.setblocking(False)
        socks.append(sock)
    return socks


def _closed_by_server(sock):
    try:
        sock.sendall(b"X")
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_trickling_clients_cannot_hold_connections_or_starve_health(start):
    br = start(THREADS="4", MAX_CONNECTIONS="400", REQUEST_HEAD_TIMEOUT="2",
               REQUEST_BODY_TIMEOUT="2")
    port = br.server.effective_port
    heads = _trickle(port, 300)
    body = b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model"
    bodies = _trickle(port, 5, b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      + body)
    try:
        latencies = []
        for _ in range(8):
            started = time.monotonic()
            assert requests.get(br.url + "/health", timeout=10).status_code == 200
            latencies.append(time.monotonic() - started)
            for sock in heads + bodies:  # keep trickling: one byte each
                _closed_by_server(sock)
            time.sleep(0.25)
        assert max(latencies) < 5
        # Each gets REQUEST_HEAD_TIMEOUT for its head, and REQUEST_BODY_TIMEOUT more for
        # its body; then the bridge closes it (checked once a second).
        assert wait_until(lambda: all(_closed_by_server(s) for s in heads), timeout=15)
        assert wait_until(lambda: all(_closed_by_server(s) for s in bodies), timeout=15)
    finally:
        for sock in heads + bodies:
            sock.close()
    assert br.chat_runs() == []
    assert requests.get(br.url + "/health", timeout=10).status_code == 200


def test_queued_claude_requests_are_bounded_and_health_still_answers(start):
    br = start(THREADS="8", CLAUDE_MAX_CONCURRENCY="1", CLAUDE_QUEUE_MAX="2",
               CLAUDE_QUEUE_TIMEOUT="20")
    holder = threading.Thread(target=chat, args=(br, "[fake:slow:30:100]"))
    holder.start()
    assert wait_until(lambda: br.chat_runs())
    statuses = []
    threads = [threading.Thread(target=lambda: statuses.append(chat(br)))
               for _ in range(12)]
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: len(statuses) >= 10, timeout=10)
        health = requests.get(br.url + "/health", timeout=5)
        assert health.status_code == 200
        limited = [r for r in statuses if r.status_code == 429]
        assert len(limited) >= 10
        err = assert_error(limited[0], 429, "rate_limit_exceeded")
        assert "CLAUDE_QUEUE_MAX" in err["message"]
        assert limited[0].headers["Retry-After"].isdigit()
    finally:
        holder.join(30)
        for t in threads:
            t.join(60)
    assert sorted(r.status_code for r in statuses) == [200, 200] + [429] * 10


def test_requests_abandoned_in_the_queue_never_start_a_cli(start):
    br = start(CLAUDE_MAX_CONCURRENCY="1", CLAUDE_QUEUE_TIMEOUT="20")
    holder = threading.Thread(target=chat, args=(br, "[fake:slow:25:100]"))
    holder.start()
    assert wait_until(lambda: br.chat_runs())

    def give_up():
        with pytest.raises(requests.Timeout):
            chat(br, timeout=0.5)

    quitters = [threading.Thread(target=give_up) for _ in range(8)]
    for t in quitters:
        t.start()
    for t in quitters:
        t.join(10)
    assert wait_until(lambda: len(br.rows()) == 8, timeout=10)  # gone within ~0.25 s
    holder.join(30)
    time.sleep(0.5)
    assert len(br.chat_runs()) == 1
    outcomes = [(r["outcome"], r["status"]) for r in br.rows()]
    assert outcomes.count(("cancelled", 499)) == 8 and outcomes[-1] == ("ok", 200)


def test_health_without_the_key_says_only_the_status_and_probes_are_cached(
        start, ollama_fake):
    br = start(CLAUDE_AUTH_KEY="k", OLLAMA_URL=ollama_fake.url)
    public = requests.get(br.url + "/health", timeout=10)
    assert public.json() == {"status": "ok"}
    for secret in (str(FAKE_CLAUDE), br.settings.usage_db_path, ollama_fake.url):
        assert secret not in public.text
    full = requests.get(br.url + "/health", headers={"Authorization": "Bearer k"},
                        timeout=10).json()
    assert full["backends"]["claude"]["binary"] == str(FAKE_CLAUDE)

    def probe_count():
        return sum(1 for path, _ in list(ollama_fake.requests) if path == "/api/version")

    before, started = probe_count(), time.monotonic()
    flood = [threading.Thread(target=lambda: [requests.get(br.url + "/health", timeout=10)
                                              for _ in range(10)]) for _ in range(20)]
    for t in flood:
        t.start()
    for t in flood:
        t.join(60)
    # 200 calls (about a second here): Ollama is asked at most once per 5 s, not 200 times.
    assert probe_count() - before <= 1 + (time.monotonic() - started) // 5


# ----------------------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------------------

def test_kill_9_of_the_bridge_leaves_no_cli_or_child_running(bridge_process):
    bp = bridge_process()

    def send():  # its bridge is killed under it
        with pytest.raises(requests.ConnectionError):
            requests.post(bp.url + "/v1/chat/completions", timeout=30, json={
                "model": "claude-code", "messages": [{"role": "system", "content": "private"},
                                                     {"role": "user", "content": "[fake:child]"}]})

    sender = threading.Thread(target=send)
    sender.start()
    assert wait_until(lambda: any("child_pid" in r for r in bp.runs()))
    (run,) = [r for r in bp.runs() if "child_pid" in r]
    folder = os.path.dirname([a for a in run["argv"] if "system-prompt-file" in a][0]
                             .split("=", 1)[1])
    assert os.path.isdir(folder)
    killed = time.monotonic()
    bp.proc.kill()  # SIGKILL: the bridge cannot clean up after itself
    try:
        assert wait_until(lambda: not alive(run["pid"]) and not alive(run["child_pid"]),
                          timeout=5)
        assert time.monotonic() - killed < 5
        assert wait_until(lambda: not os.path.exists(folder), timeout=5)
    finally:
        for pid in (run["child_pid"], run["pid"]):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        sender.join(30)


def test_the_cli_gets_no_bridge_secret_in_its_environment(start, monkeypatch):
    monkeypatch.setenv("CLAUDE_AUTH_KEY", "env-secret-key")
    br = start(CLAUDE_AUTH_KEY="env-secret-key")

    def hang():  # the CLI never answers; the client gives up, and the CLI is ended
        with pytest.raises(requests.Timeout):
            chat(br, "[fake:hang]", {"Authorization": "Bearer env-secret-key"}, timeout=3)

    sender = threading.Thread(target=hang)
    sender.start()
    try:
        assert wait_until(lambda: br.chat_runs())
        pid = br.chat_runs()[0]["pid"]
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
        assert any(e.startswith(b"CLAUDE_CONFIG_DIR=") for e in environ)
        assert not any(e.startswith(b"CLAUDE_AUTH_KEY=") for e in environ)
        assert b"env-secret-key" not in b"\0".join(environ)
    finally:
        sender.join(30)


def test_an_exposed_bridge_without_a_key_needs_consent_and_warns(tmp_path):
    env = {**os.environ, "HOST": "0.0.0.0", "PORT": "0", "CLAUDE_BIN": str(FAKE_CLAUDE),
           "USAGE_DB_PATH": str(tmp_path / "u.db"), "CLAUDE_WARM_POOL": "0"}
    env.pop("CLAUDE_AUTH_KEY", None)
    out = subprocess.run([sys.executable, str(ROOT / "bridge.py")], capture_output=True,
                         text=True, timeout=30, env=env)
    assert out.returncode == 2 and "ALLOW_EXPOSED_WITHOUT_KEY" in out.stderr
    assert "Traceback" not in out.stderr
    proc = subprocess.Popen([sys.executable, str(ROOT / "bridge.py")], text=True,
                            env={**env, "ALLOW_EXPOSED_WITHOUT_KEY": "true"},
                            stderr=subprocess.PIPE)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "WARNING" in line or len(lines) > 10:
                break
        assert "anyone who reaches this port" in lines[-1]
    finally:
        proc.terminate()
        proc.wait(timeout=15)

