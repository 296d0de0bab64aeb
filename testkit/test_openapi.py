"""The OpenAPI description (GET /openapi.json) against the live bridge, with schemathesis.

A real bridge (fake `claude`, fake Ollama, CLAUDE_AUTH_KEY set) serves its own
/openapi.json. Schemathesis loads that document and, for every operation, sends the
documented examples, its coverage cases (boundaries, each kind of invalid value, wrong
methods) and a bounded number of generated requests, valid and invalid, from a fixed seed.
Every response must be documented (status, content type, body schema, headers: the
X-Request-ID on all of them), none may be a 5xx, invalid input must get a 4xx, and every
operation that declares the bearer key must refuse a request without it. A second test
sends the requests no generator reaches (tool calls, a failing stream, each error status)
and checks those responses against the description too.

Needs schemathesis (pinned in requirements-test.txt); outside CI the tests skip without it.
To search wider by hand: `FUZZ_SEED=7 FUZZ_EXAMPLES=300 python -m pytest testkit/test_openapi.py`.
"""

import collections
import json
import os
import re
import threading
import time
import urllib.parse

import pytest
import requests

if os.environ.get("CI"):
    import schemathesis
else:
    schemathesis = pytest.importorskip("schemathesis")

from schemathesis.core.failures import (  # noqa: E402
    AcceptedNegativeData, FailureGroup, as_reported_failure)
from schemathesis.core.result import Err  # noqa: E402
from schemathesis.pytest.lazy import get_all_tests  # noqa: E402
from schemathesis.specs.openapi import checks as openapi_checks  # noqa: E402

import bridge  # noqa: E402

KEY = "openapi-test-key"
# A fixed seed keeps CI repeatable; FUZZ_SEED and FUZZ_EXAMPLES widen a search by hand
# (the seed alone does not pin the cases: hypothesis versions generate differently).
SEED = int(os.environ.get("FUZZ_SEED") or 20261125)
# Generated requests per operation in the fuzzing phase; the examples and coverage phases
# add their own bounded sets. The whole run takes about 40 s.
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or 25)

CHECKS = (
    schemathesis.checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.negative_data_rejection,
    openapi_checks.ignored_auth,
)

# Known deviations, tolerated so that everything else is enforced.
#
# 1. (none left in the request body)
IGNORED_BODY_FIELDS = re.compile(r"(?!)")  # matches nothing
# 2. A query parameter that is empty or blank counts as absent (limit=, bucket=, ...).
#    That is usual for query strings and is not reported as a bug.


def _tolerated(failure, case, response):
    """Whether a failed check is one of the known deviations above."""
    if not isinstance(failure, AcceptedNegativeData) or case.meta is None:
        return False
    data = case.meta.phase.data
    pointers = [p for p in [data.location, *(m.schema_pointer for m in data.mutations)] if p]
    if data.parameter_location is not None and data.parameter_location.value == "body":
        return bool(pointers) and all(IGNORED_BODY_FIELDS.search(p) for p in pointers)
    if data.parameter_location is not None and data.parameter_location.value == "query":
        names = {n for n in [data.parameter, *(m.parameter for m in data.mutations)] if n}
        # Judge what went on the wire: an empty array or object serializes to nothing.
        sent = urllib.parse.parse_qs(urllib.parse.urlsplit(response.request.url).query,
                                     keep_blank_values=True)
        return bool(names) and all(all(not v.strip() for v in sent.get(name, []))
                                   for name in names)
    return False


@pytest.fixture
def live(start, ollama_fake):
    """A bridge with a key (its description at /openapi.json is public)."""
    br = start(OLLAMA_URL=ollama_fake.url, CLAUDE_AUTH_KEY=KEY)
    br.ollama = ollama_fake
    return br


def load_schema(br):
    """The description as the bridge serves it, set up for a deterministic, bounded run."""
    resp = requests.get(br.url + "/openapi.json", timeout=10)  # public: no key
    assert resp.status_code == 200, resp.text
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "base-url": br.url,
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True,
                       "database": "none", "mode": "all"},
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True},
                   "fuzzing": {"enabled": True}, "stateful": {"enabled": False}},
        "auth": {"openapi": {"bearerAuth": {"bearer": KEY}}},
        "request-timeout": 30,
    })
    # from_dict, not from_url: from_url leaves the document's own operation out of the run.
    return schemathesis.openapi.from_dict(resp.json(), config=config)


@pytest.fixture
def seen():
    """(operation, status, content type) -> responses; checks the run reached them."""
    counts = collections.Counter()
    yield counts
    if counts["failed"]:
        return
    got = {key[:3] for key in counts if key != "failed"}
    for label in ("GET /", "GET /v1/models", "GET /v1/usage", "GET /v1/usage/recent",
                  "GET /v1/usage/timeseries", "GET /health", "GET /dashboard", "GET /metrics",
                  "GET /openapi.json"):
        assert any(k[0] == label and k[1] == 200 for k in got), f"no 200 from {label}"
    for key in (("POST /v1/chat/completions", 200, "application/json"),
                ("POST /v1/chat/completions", 200, "text/event-stream"),
                ("POST /v1/chat/completions", 400, "application/json"),
                ("GET /v1/models", 401, "application/json"),
                ("GET /v1/usage/recent", 400, "application/json")):
        assert key in got, f"the run never saw {key}: {sorted(got)}"


# Framing headers belong to the HTTP client: a generated `Content-Length: tUVB` tests
# waitress's parser (a plain 400 before any route), not the bridge.
FRAMING_HEADERS = {"content-length", "transfer-encoding", "host", "connection", "expect"}


def test_bridge_conforms_to_its_openapi_description(live, seen):
    """Each operation in turn: its examples, its coverage cases, then MAX_EXAMPLES generated
    requests. get_all_tests builds for each operation the hypothesis test that
    `@schema.parametrize()` runs (same phases, same per-operation seed); running them here,
    not under `schemathesis.pytest.from_fixture`, leaves pytest's nodes alone (that wrapper
    rewrites the private Node._nodeid to label each operation). Every operation runs; the
    failures are raised together, each noted with its operation."""
    failed = []
    for built in get_all_tests(schema=load_schema(live), test_func=check_case,
                               settings=None, given_kwargs={}):
        if isinstance(built, Err):  # an operation schemathesis cannot read
            failed.append(built.err())
            continue
        operation, run = built.ok()
        try:
            run(seen=seen)
        except FailureGroup as group:
            failed.append(as_reported_failure(group))
            failed[-1].add_note(f"operation: {operation.label}")
        except Exception as exc:
            exc.add_note(f"operation: {operation.label}")
            failed.append(exc)
    if failed:
        raise ExceptionGroup(f"{len(failed)} operation(s) failed", failed)


def check_case(case, seen):
    """One request and its response against CHECKS (schemathesis's `case` argument)."""
    if case.headers:
        for name in [n for n in case.headers if n.lower() in FRAMING_HEADERS]:
            del case.headers[name]
    response = case.call(timeout=30)
    seen[(case.operation.label, response.status_code, _content_type(response))] += 1
    failures = []
    for check in CHECKS:
        try:
            case.validate_response(response, checks=[check])
        except FailureGroup as group:
            failures.extend(f for f in group.exceptions
                            if not _tolerated(f, case, response))
    if failures:
        seen["failed"] += 1
        raise FailureGroup(failures, _describe(case, response, failures))


def _content_type(response):
    value = response.headers.get("content-type") or [""]
    return (value[0] if isinstance(value, list) else value).split(";")[0].strip()


def _describe(case, response, failures):
    phase = f"{case.meta.phase.name.value} {case.meta.generation.mode.value} " \
            f"{getattr(case.meta.phase.data, 'description', '')}" if case.meta else ""
    return (f"{case.operation.label} [{phase}] -> {response.status_code} "
            f"{response.text[:500]}\n{case.as_curl_command()}\n"
            + "\n".join(f"{f.title}: {f.message}" for f in failures))


# ----------------------------------------------------------------------------------------
# What generated requests do not reach: tool calls, a failing stream, every error status
# ----------------------------------------------------------------------------------------

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object",
                                          "properties": {"city": {"type": "string"}}}}}]


def conforms(schema_, path, status, *, method="GET", key=KEY, **kw):
    """Send one request through schemathesis and check the response against the
    description (not_a_server_error aside when a 5xx is the point)."""
    op = schema_[path][method]
    case = op.Case(**kw)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = case.call(headers=headers, timeout=30)
    checks = [c for c in CHECKS if c not in (openapi_checks.negative_data_rejection,
                                             openapi_checks.ignored_auth)]
    if status >= 500:
        checks.remove(schemathesis.checks.not_a_server_error)
    try:
        case.validate_response(response, checks=checks, headers=headers)
    except FailureGroup as group:
        raise AssertionError(_describe(case, response, group.exceptions)) from None
    assert response.status_code == status, response.text
    return response


def header(response, name):
    value = response.headers.get(name.lower()) or response.headers.get(name) or [""]
    return value[0] if isinstance(value, list) else value


def chat_body(text, model="claude-code", **extra):
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def sse_data(response):
    return [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]


def test_documented_responses_beyond_generated_requests(start, live):
    api = load_schema(live)
    post = {"method": "POST", "media_type": "application/json"}
    chat = "/v1/chat/completions"
    # Tool calls from Ollama, whole and streamed.
    weather = "[tool:get_weather:{\"city\": \"Paris\"}]"
    reply = conforms(api, chat, 200, **post, body=chat_body(
        weather, "ollama/llama3.2", tools=TOOLS)).json()
    assert reply["choices"][0]["finish_reason"] == "tool_calls"
    stream = conforms(api, chat, 200, **post, body=chat_body(
        weather, "ollama/llama3.2", tools=TOOLS, stream=True,
        stream_options={"include_usage": True}))
    assert "tool_calls" in stream.text and sse_data(stream)[-1] == "[DONE]"
    # Claude streamed with usage, and a stream that fails after it began.
    conforms(api, chat, 200, **post, body=chat_body(
        "hello", stream=True, stream_options={"include_usage": True}))
    broken = conforms(api, chat, 200, **post, body=chat_body(
        "[fake:midstream-error]", stream=True))
    assert "error" in json.loads(sse_data(broken)[-1])
    # Errors.
    conforms(api, chat, 400, **post, body={"messages": []})
    conforms(api, chat, 400, **post, body=chat_body("hi", "--version"))
    conforms(api, chat, 401, **post, key="wrong", body=chat_body("hi"))
    conforms(api, "/v1/usage", 401, key=None)
    conforms(api, chat, 404, **post, body=chat_body("hi", "ollama/no-such-model"))
    conforms(api, chat, 502, **post, body=chat_body("[fake:error-401]"))
    busy = conforms(api, chat, 503, **post, body=chat_body("[ollama:busy]",
                                                           "ollama/llama3.2"))
    assert header(busy, "Retry-After").isdigit()
    conforms(api, "/v1/usage/timeseries", 400, query={"bucket": "minute"})
    # Every row those left, failures and streams included.
    rows = conforms(api, "/v1/usage/recent", 200, query={"limit": 1000}).json()
    assert {r["outcome"] for r in rows} == {"ok", "error"}
    conforms(api, "/v1/usage", 200, query={"since": "1h"})
    conforms(api, "/v1/usage/timeseries", 200, query={"bucket": "minute", "since": "1h"})
    conforms(api, "/metrics", 200)

    # Statuses that need another bridge: 413, 429, 503 (no CLI), 504.
    tmp = live.tmp
    small = load_schema((start(
        MAX_BODY_MB=1, USAGE_DB_PATH=tmp / "small.db", CLAUDE_AUTH_KEY=KEY)))
    conforms(small, chat, 413, **post, body=chat_body("x" * (1024 * 1024 + 1)))
    nocli = load_schema((start(
        CLAUDE_BIN=tmp / "no-such-claude", USAGE_DB_PATH=tmp / "nocli.db",
        CLAUDE_AUTH_KEY=KEY)))
    conforms(nocli, chat, 503, **post, body=chat_body("hi"))
    slow = (start(
        CLAUDE_MAX_CONCURRENCY=1, CLAUDE_QUEUE_TIMEOUT=0.3, CLAUDE_IDLE_TIMEOUT=1,
        USAGE_DB_PATH=tmp / "slow.db", CLAUDE_AUTH_KEY=KEY))
    slow_api = load_schema(slow)
    # The holder streams for 4 s so that a slow machine still finds the one slot taken.
    held = []
    holder = threading.Thread(target=lambda: held.append(slow.post(
        chat_body("[fake:slow:40:100]"), headers={"Authorization": f"Bearer {KEY}"})))
    holder.start()
    try:
        deadline = time.monotonic() + 10
        # (The fake CLIs of every bridge of this test log to one folder: find the holder's.)
        while not any(r.get("scenario") == "slow" for r in slow.chat_runs()) \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        limited = conforms(slow_api, chat, 429, **post, body=chat_body("hi"))
        assert header(limited, "Retry-After").isdigit()
    finally:
        holder.join(30)
    assert held and held[0].status_code == 200
    conforms(slow_api, chat, 504, **post, body=chat_body("[fake:hang]"))


# Inputs that once reached a 500 or a 502: each is the client's mistake, so a 400.
BRIDGE_BUGS = [
    pytest.param("/v1/chat/completions", {"method": "POST", "body": {
        "model": "ollama/llama3.2", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "tool", "content": "r", "tool_call_id": ["not", "a", "string"]}]}},
        id="500-on-a-tool_call_id-that-is-not-a-string"),
    pytest.param("/v1/usage/recent", {"query": {"limit": "\u00b2"}},
                 id="500-on-limit-with-a-non-ascii-digit"),
    pytest.param("/v1/chat/completions", {"method": "POST", "body": {
        "model": "ollama/llama3.2", "tools": [1],
        "messages": [{"role": "user", "content": "hi"}]}},
        id="502-on-tools-that-are-not-objects"),
    pytest.param("/v1/chat/completions", {"method": "POST", "body": {
        "model": "ollama/llama3.2", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,abc"}}]}]}},
        id="502-on-an-image-that-is-not-base64"),
    pytest.param("/v1/chat/completions", {"method": "POST", "body": {
        "model": "claude-code", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": "data:image/y;base64,\u00e9X"}]}]}},
        id="500-on-an-image-with-non-ascii-base64"),
]


@pytest.mark.parametrize("path,request_", BRIDGE_BUGS)
def test_invalid_input_is_a_400(live, path, request_):
    conforms(load_schema(live), path, 400, media_type="application/json", **request_)


# ----------------------------------------------------------------------------------------
# The document itself
# ----------------------------------------------------------------------------------------

def test_description_is_valid_openapi_3_1_and_covers_every_route(live):
    document = requests.get(live.url + "/openapi.json", timeout=10).json()
    if os.environ.get("CI"):
        import openapi_spec_validator
    else:
        openapi_spec_validator = pytest.importorskip("openapi_spec_validator")
    openapi_spec_validator.validate(document)  # raises on the first problem
    assert document["openapi"] == "3.1.0"
    assert document["info"]["version"] == bridge.__version__
    described = {(method.upper(), path) for path, item in document["paths"].items()
                 for method in item if method in ("get", "post", "put", "delete", "patch")}
    routes = {(r.method, re.sub(r"<(\w+)>", r"{\1}", r.rule)) for r in live.app.routes}
    assert described == routes
    public = {path for path, item in document["paths"].items()
              for op in item.values() if op.get("security") == []}
    assert public == {"/health", "/dashboard", "/openapi.json"}
    for path, item in document["paths"].items():
        for op in item.values():
            for status, response in op["responses"].items():
                if "$ref" in response:
                    response = document["components"]["responses"][
                        response["$ref"].rsplit("/", 1)[1]]
                assert "X-Request-ID" in response.get("headers", {}), (path, status)
