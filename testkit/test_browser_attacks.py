"""A web page in a real headless Chromium attacks the bridge, as one on a laptop would.

The page is served from a second loopback origin (127.0.0.2, another port). It tries the
cross-site "simple" POST that needs no preflight, and a DNS-rebinding-style request: the
browser resolves evil.test to 127.0.0.1 (--host-resolver-rules), so a page of evil.test is
same-origin with the bridge and could read it, were the Host header not checked. A page of
an origin listed in CORS_ORIGINS, by contrast, can use the API, streams included.
Needs the same Playwright and Chromium as test_dashboard.py.
"""
import http.server
import json
import threading

import pytest

from testkit import harness
from testkit.test_dashboard import TIMEOUT_MS, chromium


@pytest.fixture(scope="module")
def browser():
    with chromium("--host-resolver-rules=MAP evil.test 127.0.0.1") as b:
        yield b


@pytest.fixture
def page(browser):
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    yield context.new_page()
    context.close()


@pytest.fixture
def other_origin():
    """An HTTP server on 127.0.0.2 serving one blank page: another origin, on loopback."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<!doctype html><title>page</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.2:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


BODY = json.dumps(harness.user("hello"))


def test_a_page_of_another_origin_cannot_run_a_claude_turn(start, page, other_origin):
    br = start()
    page.goto(other_origin + "/")
    # No preflight for this one: text/plain, no-cors. The browser sends it; the bridge
    # refuses it (the response is opaque to the page either way).
    sent = page.evaluate("""([url, body]) => fetch(url, {method: "POST", mode: "no-cors",
        headers: {"Content-Type": "text/plain"}, body}).then(() => "sent", e => String(e))""",
        [br.url + "/v1/chat/completions", BODY])
    assert sent == "sent"
    # With CORS (to read the answer): the preflight is refused, so nothing is sent.
    cors = page.evaluate("""([url, body]) => fetch(url, {method: "POST", body,
        headers: {"Content-Type": "application/json"}}).then(r => r.status, e => "blocked")""",
        [br.url + "/v1/chat/completions", BODY])
    assert cors == "blocked"
    read = page.evaluate("url => fetch(url).then(r => r.status, e => 'blocked')",
                         br.url + "/v1/usage/recent")
    assert read == "blocked"
    assert br.chat_runs() == [] and br.rows() == []


def test_a_rebound_name_gets_nothing_from_the_bridge(start, page):
    br = start()
    harness.requests.post(br.url + "/v1/chat/completions", json=harness.user("hi"),
                              headers={"X-Session-ID": "victim"}, timeout=30)
    port = br.server.effective_port
    # evil.test now resolves to the bridge: the attacker's page is same-origin with it.
    response = page.goto(f"http://evil.test:{port}/dashboard")
    assert response.status == 403
    assert json.loads(page.inner_text("body"))["error"]["code"] == "host_not_allowed"
    statuses = page.evaluate("""async (body) => {
        const read = await fetch("/v1/usage/recent");
        const run = await fetch("/v1/chat/completions", {method: "POST", body,
            headers: {"Content-Type": "application/json", "X-Session-ID": "victim"}});
        return [read.status, await read.text(), run.status];
    }""", BODY)
    assert statuses[0] == 403 and "victim" not in statuses[1] and statuses[2] == 403
    assert len(br.chat_runs()) == 1  # only the victim's own request


def test_a_listed_origin_can_use_the_api_and_read_a_stream(start, page, other_origin):
    br = start(CORS_ORIGINS=other_origin)
    page.goto(other_origin + "/")
    result = page.evaluate("""async ([url, body]) => {
        const r = await fetch(url, {method: "POST", body: JSON.stringify(
            {...JSON.parse(body), stream: true}),
            headers: {"Content-Type": "application/json", "X-Session-ID": "web"}});
        return [r.status, r.headers.get("X-Request-ID"), await r.text()];
    }""", [br.url + "/v1/chat/completions", BODY])
    status, request_id, text = result
    assert status == 200 and request_id
    chunks = [json.loads(line[6:]) for line in text.splitlines()
              if line.startswith("data: {")]
    reply = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert reply == harness.REPLY and text.rstrip().endswith("data: [DONE]")
