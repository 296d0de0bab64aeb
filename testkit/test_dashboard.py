"""GET /dashboard in a real headless Chromium (Playwright), against a real bridge.

The rows come from real requests through the bridge and its fake `claude`. Needs the
`playwright` package and a Chromium: $DASHBOARD_CHROMIUM, else /usr/bin/chromium (the
browser Playwright downloads is not used). Outside CI the tests skip when either is
missing; in CI (CI set) that is a failure, since .ci/run installs both.
Set DASHBOARD_SCREENSHOT=/path.png to save a screenshot of the page with data.
"""
import contextlib
import os
import re
import time

import pytest
import requests

from testkit import harness


if os.environ.get("CI"):
    from playwright import sync_api
else:
    sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

CHROMIUM = os.environ.get("DASHBOARD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
HOSTILE = "<img src=x onerror=alert(1)>"
HOSTILE_SESSION = "<svg onload=alert(2)>"
TIMEOUT_MS = 15_000

expect.set_options(timeout=TIMEOUT_MS)


@contextlib.contextmanager
def chromium(*extra_args):
    """Debian's headless Chromium under Playwright (a failure in CI when missing)."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"no Chromium at {CHROMIUM}: .ci/run installs Debian's chromium")
        pytest.skip(f"no Chromium at {CHROMIUM}")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra_args])
        yield b
        b.close()


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


class Page:
    """A fresh browser context and page, recording what the page did."""

    def __init__(self, browser):
        self.context = browser.new_context(viewport={"width": 1400, "height": 900})
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()
        self.dialogs, self.errors, self.requests = [], [], []
        self.page.on("dialog", self._dialog)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("request", lambda req: self.requests.append(req))

    def _dialog(self, dialog):
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def api_urls(self, route):
        return [r.url for r in self.requests if r.url.split("?")[0].endswith(route)]


@pytest.fixture
def page(browser):
    p = Page(browser)
    yield p
    p.context.close()
    assert p.errors == [], "uncaught errors in the page"
    assert p.dialogs == [], "the page opened a dialog"


def chat(br, text, model="claude-code", key=None, **kw):
    headers = kw.pop("headers", {})
    if key:
        headers["Authorization"] = f"Bearer {key}"
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return br.post(body, headers=headers, **kw)


def seed(br, key=None):
    """One success, one CLI failure (502), one refused hostile model name (400)."""
    assert chat(br, "hello", key=key).status_code == 200
    assert chat(br, "[fake:error-401]", key=key).status_code == 502
    assert chat(br, "hi", model=HOSTILE, key=key).status_code == 400


def api(br, path, key=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    resp = requests.get(br.url + path, headers=headers, timeout=10)
    resp.raise_for_status()
    return resp.json()


def wait_until(predicate, timeout=TIMEOUT_MS / 1000):
    return harness.wait_until(predicate, timeout)


def open_dashboard(page, br):
    page.page.goto(br.url + "/dashboard")
    expect(page.page.locator("#updated")).to_have_text(re.compile(r"^Last updated \d\d:\d\d:\d\d$"))


# ----------------------------------------------------------------------------------------

def test_rows_render_in_totals_models_recent_and_chart(start, page):
    br = start()
    seed(br)
    open_dashboard(page, br)
    pg = page.page
    expect(pg.locator("#auth")).to_be_hidden()
    expect(pg.locator("#error")).to_be_hidden()

    # Totals agree with the API.
    usage = api(br, "/v1/usage?since=24h")
    expect(pg.locator("#total-requests")).to_have_text("3")
    tokens = sum(r["total_tokens"] for r in usage)
    assert tokens > 0
    expect(pg.locator("#total-tokens")).to_have_text(f"{tokens:,}")
    expect(pg.locator("#total-error-rate")).to_have_text("66.7%")
    expect(pg.locator("#total-cost")).to_have_text(re.compile(r"^\$0\.\d+$"))

    # The per-model table: one row per (model, provider), every column filled in.
    rows = pg.locator("#models tbody tr")
    expect(rows).to_have_count(2)  # claude-code (ok + 502) and the hostile name (400)
    cells = {tuple(rows.nth(i).locator("td").all_text_contents()) for i in range(2)}
    by_model = {c[0]: c for c in cells}
    assert set(by_model) == {"claude-code", HOSTILE}
    cc = by_model["claude-code"]
    assert len(cc) == 12 and cc[1:4] == ("claude", "chat", br.app.bridge.instance)
    assert cc[4:6] == ("2", "1")
    want = next(r for r in usage if r["model"] == "claude-code")
    assert cc[6:10] == tuple(f"{want[k]:,}" for k in (
        "prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens"))
    assert re.fullmatch(r"[\d,]+", cc[11])

    # The recent list, newest first.
    recent = pg.locator("#recent tbody tr")
    expect(recent).to_have_count(3)
    assert recent.locator("td.model").all_text_contents() == [HOSTILE, "claude-code", "claude-code"]
    assert recent.nth(2).locator(".badge").text_content() == "ok"
    assert recent.nth(1).locator("td").nth(6).text_content() == "502"

    # The chart: an SVG with bars, a token line and labelled axes.
    svg = pg.locator("#chart svg")
    expect(svg).to_have_count(1)
    assert svg.locator("rect.bar").count() >= 1
    assert svg.locator("path.line").count() == 1
    labels = svg.locator("text").all_text_contents()
    assert "requests" in labels and "tokens" in labels
    assert any(re.fullmatch(r"\d\d:00", t) for t in labels)  # hour buckets for 24 h
    # Empty buckets are filled: 24 h of hours is at least 24 slots, one per hover area.
    assert svg.locator("rect.hover").count() >= 24

    shot = os.environ.get("DASHBOARD_SCREENSHOT")
    if shot:
        pg.screenshot(path=shot, full_page=True)


def test_auto_refresh_picks_up_new_requests(start, page):
    br = start()
    seed(br)
    pg = page.page
    pg.clock.install()
    open_dashboard(page, br)
    expect(pg.locator("#total-requests")).to_have_text("3")
    first = pg.locator("#updated").text_content()
    fetched = len(page.api_urls("/v1/usage/recent"))
    assert fetched == 1

    assert chat(br, "another one", model="sonnet").status_code == 200

    # Not before 30 s...
    pg.clock.fast_forward(20_000)
    time.sleep(0.5)
    assert len(page.api_urls("/v1/usage/recent")) == fetched
    expect(pg.locator("#total-requests")).to_have_text("3")
    # ...but after.
    pg.clock.fast_forward(11_000)
    expect(pg.locator("#total-requests")).to_have_text("4")
    expect(pg.locator("#recent tbody tr").first.locator("td.model")).to_have_text("sonnet")
    expect(pg.locator("#models tbody td.model", has_text="sonnet")).to_have_count(1)
    expect(pg.locator("#updated")).not_to_have_text(first)
    expect(pg.locator("#updated")).to_have_text(re.compile(r"^Last updated \d\d:\d\d:\d\d$"))


def test_failed_refresh_shows_an_error_and_keeps_the_data(start, page):
    br = start()
    seed(br)
    pg = page.page
    pg.clock.install()
    open_dashboard(page, br)
    br.stop()
    pg.clock.fast_forward(31_000)
    expect(pg.locator("#error")).to_be_visible()
    expect(pg.locator("#error")).to_contain_text("Could not load usage data")
    expect(pg.locator("#updated")).to_contain_text("update failed")
    expect(pg.locator("#total-requests")).to_have_text("3")  # last good data stays


def test_hostile_strings_render_as_text(start, page):
    br = start()
    seed(br)
    assert chat(br, "hello", headers={"X-Session-ID": HOSTILE_SESSION}).status_code == 200
    pg = page.page
    open_dashboard(page, br)
    expect(pg.locator("#recent tbody tr")).to_have_count(4)

    model_cells = pg.locator("#models td.model", has_text="onerror")
    expect(model_cells).to_have_count(1)
    assert model_cells.text_content() == HOSTILE
    recent_cells = pg.locator("#recent td.model", has_text="onerror")
    expect(recent_cells).to_have_count(1)
    assert recent_cells.text_content() == HOSTILE
    # A session id never comes back from the API: its keyed tag stands in for it.
    tag = br.app.bridge.store.session_tag(HOSTILE_SESSION)
    session = pg.locator("#recent td.session", has_text=tag)
    expect(session).to_have_count(1)
    assert session.text_content() == tag
    assert "onload" not in pg.content()
    # The bridge's 400 message may quote the name: it is text as well.
    assert recent_cells.locator("xpath=..").locator("td.err-text").text_content()

    time.sleep(0.5)  # time for an injected onerror/onload to fire, if any existed
    for scope in ("#data", "body"):
        assert pg.locator(f"{scope} img").count() == 0
        assert pg.locator(f"{scope} [onerror], {scope} [onload]").count() == 0
    assert pg.locator("#chart svg svg").count() == 0
    assert page.dialogs == []


def test_key_form_when_the_bridge_needs_a_key(start, page):
    br = start(CLAUDE_AUTH_KEY="secret")
    seed(br, key="secret")
    pg = page.page
    pg.goto(br.url + "/dashboard")

    form = pg.locator("#auth")
    expect(form).to_be_visible()
    expect(pg.locator("#auth-refused")).to_be_hidden()
    expect(pg.locator("#data")).to_be_hidden()

    pg.fill("#auth-key", "wrong-key")
    pg.press("#auth-key", "Enter")
    expect(pg.locator("#auth-refused")).to_be_visible()
    expect(pg.locator("#auth-refused")).to_contain_text("The key was refused (401)")
    expect(pg.locator("#auth-refused")).to_contain_text("CLAUDE_AUTH_KEY")
    expect(form).to_be_visible()
    assert pg.evaluate("sessionStorage.getItem('claude-bridge-key')") is None

    pg.fill("#auth-key", "secret")
    pg.click("#auth button[type=submit]")
    expect(form).to_be_hidden()
    expect(pg.locator("#data")).to_be_visible()
    expect(pg.locator("#total-requests")).to_have_text("3")
    expect(pg.locator("#models td.model", has_text="claude-code")).to_have_count(1)
    assert pg.evaluate("sessionStorage.getItem('claude-bridge-key')") == "secret"

    # Kept for the tab: a reload asks no more.
    pg.reload()
    expect(pg.locator("#updated")).to_have_text(re.compile(r"^Last updated "))
    expect(form).to_be_hidden()
    expect(pg.locator("#total-requests")).to_have_text("3")

    api_requests = [r for r in page.requests if "/v1/" in r.url]
    assert api_requests
    for req in page.requests:
        assert "secret" not in req.url and "wrong-key" not in req.url
    sent = [r.headers.get("authorization") for r in api_requests]
    assert "Bearer secret" in sent and "Bearer wrong-key" in sent
    assert all(s in (None, "Bearer secret", "Bearer wrong-key") for s in sent)
    assert pg.url == br.url + "/dashboard"


def test_failed_rows_are_highlighted_and_the_window_selector_refetches(start, page):
    br = start()
    seed(br)
    # A cancelled stream: the client hangs up after the first ticks.
    resp = br.post({"model": "claude-code", "stream": True,
                    "messages": [{"role": "user", "content": "[fake:slow:50:50]"}]}, stream=True)
    for line in resp.iter_lines():
        if b"tick2" in line:
            break
    resp.close()
    assert wait_until(lambda: any(r["outcome"] == "cancelled" for r in br.rows()))

    pg = page.page
    open_dashboard(page, br)
    rows = pg.locator("#recent tbody tr")
    expect(rows).to_have_count(4)
    outcomes = [rows.nth(i).get_attribute("data-outcome") for i in range(4)]
    assert sorted(outcomes) == ["cancelled", "error", "error", "ok"]

    def background(locator):
        return locator.evaluate("e => getComputedStyle(e).backgroundColor")

    ok_row = pg.locator("#recent tbody tr[data-outcome=ok]")
    err_rows = pg.locator("#recent tbody tr.row-error")
    cancelled = pg.locator("#recent tbody tr.row-cancelled")
    expect(err_rows).to_have_count(2)
    expect(cancelled).to_have_count(1)
    expect(ok_row).not_to_have_class(re.compile("row-"))
    assert background(ok_row) == "rgba(0, 0, 0, 0)"
    red = background(err_rows.first)
    r, g, b = (int(v) for v in re.findall(r"\d+", red)[:3])
    assert r > g and r > b, red
    assert background(cancelled) not in (red, "rgba(0, 0, 0, 0)")
    expect(err_rows.first.locator(".badge")).to_have_text("error")
    expect(cancelled.locator(".badge")).to_have_text("cancelled")
    expect(pg.locator("#recent tbody tr", has_text="502").locator("td.err-text")).not_to_be_empty()

    # The default window is 24 h; 1 h refetches everything with since=1h and minute buckets.
    for route in ("/v1/usage", "/v1/usage/recent", "/v1/usage/timeseries"):
        assert all("since=24h" in u for u in page.api_urls(route)), route
    expect(pg.locator("button[data-window='24h']")).to_have_attribute("aria-pressed", "true")
    pg.click("button[data-window='1h']")
    expect(pg.locator("button[data-window='1h']")).to_have_attribute("aria-pressed", "true")
    expect(pg.locator("button[data-window='24h']")).to_have_attribute("aria-pressed", "false")
    assert wait_until(lambda: all(any("since=1h" in u for u in page.api_urls(route)) for route in (
        "/v1/usage", "/v1/usage/recent", "/v1/usage/timeseries")))
    assert any("bucket=minute" in u for u in page.api_urls("/v1/usage/timeseries"))
    expect(pg.locator("#chart-caption")).to_have_text(re.compile("hour, per minute"))
    expect(pg.locator("#total-requests")).to_have_text("4")
    labels = pg.locator("#chart svg text").all_text_contents()
    assert any(re.fullmatch(r"\d\d:\d\d", t) for t in labels)

    # All: no since at all, day buckets.
    pg.click("button[data-window='all']")
    assert wait_until(lambda: any("bucket=day" in u for u in page.api_urls("/v1/usage/timeseries")))
    last = page.api_urls("/v1/usage/timeseries")[-1]
    assert "since=" not in last
    expect(pg.locator("#chart-caption")).to_have_text(re.compile("all time"))
    expect(pg.locator("#total-requests")).to_have_text("4")


def test_sessions_panel_lists_sessions_and_filters_the_recent_requests(start, page):
    br = start(RECOGNISE_CONVERSATIONS="true")
    client = br.client()
    history = [{"role": "user", "content": "first question"}]
    reply = client.chat.completions.create(model="claude-code", messages=history)
    history += [{"role": "assistant", "content": reply.choices[0].message.content},
                {"role": "user", "content": "second question"}]
    client.chat.completions.create(model="claude-code", messages=history)  # the same one
    client.chat.completions.create(model="claude-code", extra_headers={"X-Session-ID": "b"},
                                   messages=[{"role": "user", "content": "elsewhere"}])
    sessions = api(br, "/v1/sessions")["data"]
    assert [s["turns"] for s in sessions] == [1, 2]
    open_dashboard(page, br)
    pg = page.page
    rows = pg.locator("#sessions tbody tr")
    expect(rows).to_have_count(2)
    assert rows.locator("td.session").all_text_contents() == [s["id"] for s in sessions]
    expect(pg.locator("#recent tbody tr")).to_have_count(3)
    rows.nth(1).click()  # the recognised conversation: its two turns only
    expect(pg.locator("#recent tbody tr")).to_have_count(2)
    expect(pg.locator("#recent-caption")).to_have_text("session " + sessions[1]["id"])
    rows.nth(1).click()
    expect(pg.locator("#recent tbody tr")).to_have_count(3)


def test_the_api_filter_refetches_only_that_api(start, page):
    br = start()
    seed(br)  # three chat completions
    resp = requests.post(br.url + "/v1/responses", timeout=30,
                         json={"model": "claude-code", "input": "from the Responses API"})
    assert resp.status_code == 200, resp.text
    pg = page.page
    open_dashboard(page, br)
    expect(pg.locator("#recent tbody tr")).to_have_count(4)
    pg.select_option("#api", "responses")
    assert wait_until(lambda: all(any("api=responses" in u for u in page.api_urls(route))
                                  for route in ("/v1/usage", "/v1/usage/recent",
                                                "/v1/usage/timeseries")))
    expect(pg.locator("#recent tbody tr")).to_have_count(1)
    expect(pg.locator("#total-requests")).to_have_text("1")
    cells = pg.locator("#models tbody tr").first.locator("td").all_text_contents()
    assert cells[:3] == ["claude-code", "claude", "responses"]
    pg.select_option("#api", "")
    expect(pg.locator("#recent tbody tr")).to_have_count(4)


def test_the_instance_filter_lists_the_bridges_seen(start, page):
    br = start(INSTANCE_NAME="laptop")
    seed(br)  # three requests answered by this bridge
    br.app.bridge.store.record({"request_id": "elsewhere-1", "model": "sonnet",
                                "provider": "claude", "outcome": "ok", "status": 200,
                                "instance": "desk"})
    pg = page.page
    open_dashboard(page, br)
    expect(pg.locator("#recent tbody tr")).to_have_count(4)
    options = pg.locator("#instance option").all_text_contents()
    assert sorted(options) == ["all", "desk", "laptop"]
    pg.select_option("#instance", "desk")
    assert wait_until(lambda: any("instance=desk" in u for u in page.api_urls("/v1/usage/recent")))
    expect(pg.locator("#recent tbody tr")).to_have_count(1)
    expect(pg.locator("#recent tbody tr td.model")).to_have_text("sonnet")
