"""The fake `claude` (testkit/fake_claude.py) against the REAL CLIs, scenario by scenario.

Each test runs the real CLI (2.1.332 and 2.1.197) offline against testkit/fake_anthropic.py
plus a probe MCP server (testkit/probe_mcp.py), runs the fake with the same scenario (its own
markers), and asserts the two have the same shape: the sequence of (type, subtype, stream
event type, content block types), the same MCP requests (methods, the headers that matter,
tools/call params), and the same result fields.  A version is skipped only when its binary is
missing and CI is not set.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from testkit import fake_anthropic, probe_mcp

ROOT = Path(__file__).resolve().parent.parent
FAKE = str(ROOT / "testkit" / "fake_claude.py")
REAL_BINS = {
    "2.1.332": ["/root/.cache/claude-bridge/cli/node_modules/.bin/claude"],
    "2.1.197": ["/root/.cache/claude-bridge/cli197/node_modules/.bin/claude",
                "/tmp/cli197/node_modules/.bin/claude"],
}
VERSIONS = ["2.1.332", "2.1.197"]
BASE = ["-p", "--output-format", "stream-json", "--verbose", "--include-partial-messages",
        "--input-format", "stream-json"]
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


def real_bin(ver):
    for path in REAL_BINS[ver]:
        if os.path.exists(path):
            return path
    if os.environ.get("CI"):
        pytest.fail("real CLI %s missing in CI (looked at %s)" % (ver, REAL_BINS[ver]))
    pytest.skip("real CLI %s not installed" % ver)


class Run:
    """One CLI process (real or fake) with its own fake upstream and probe MCP server."""

    def __init__(self, binary, ver, prompt, args=(), env=None, mcp=False, tools=None,
                 on_call=None, session_id=None, mcp_down=False, fake=False):
        self.work = tempfile.mkdtemp(prefix="tfc-")
        home = os.path.join(self.work, "home")
        proj = os.path.join(self.work, "project")
        os.makedirs(home)
        os.makedirs(proj)
        self.up = fake_anthropic.start()
        self.probe = None
        argv = [binary] + BASE
        if mcp:
            self.probe = probe_mcp.start(
                tools=tools or [probe_mcp.WEATHER_TOOL, probe_mcp.TIME_TOOL], session_id=session_id)
            self.probe.on_call = on_call
            url = self.probe.url
            if mcp_down:
                self.probe.stop()
            cfg = os.path.join(self.work, "mcp.json")
            with open(cfg, "w") as f:
                json.dump({"mcpServers": {"client": {"type": "http", "url": url,
                                                     "headers": {"Authorization": "Bearer S3"}}}}, f)
            names = ",".join("mcp__client__" + t["name"] for t in self.probe.tools)
            argv += ["--mcp-config", cfg, "--strict-mcp-config", "--tools", "",
                     "--allowedTools", names]
        argv += list(args)
        e = {"PATH": os.environ["PATH"], "HOME": home, "ANTHROPIC_BASE_URL": self.up.url,
             "ANTHROPIC_API_KEY": "dummy", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
             "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_MAX_RETRIES": "0"}
        if fake:
            e["FAKE_CLAUDE_VERSION"] = ver
        e.update(env or {})
        self.argv, self.env, self.cwd = argv, e, proj
        self.prompt = prompt
        self.mcp_down = mcp_down

    def run(self, timeout=60):
        try:
            p = subprocess.run(self.argv, cwd=self.cwd, env=self.env, timeout=timeout,
                               input=(json.dumps({"type": "user", "message": {
                                   "role": "user", "content": self.prompt}}) + "\n").encode(),
                               capture_output=True)
            self.rc = p.returncode
            self.stderr = p.stderr.decode()
            self.lines = [json.loads(ln) for ln in p.stdout.decode().splitlines() if ln.strip()]
        finally:
            self.up.stop()
            if self.probe and not self.mcp_down:
                self.probe.stop()
            shutil.rmtree(self.work, ignore_errors=True)
        return self


def both(ver, real_prompt, fake_prompt, **kw):
    """Run the real CLI and the fake side by side (threads) -> (real, fake)."""
    rb = real_bin(ver)
    real_kw = dict(kw)
    fake_kw = dict(kw)
    for k in ("on_call",):
        if k in kw and isinstance(kw[k], tuple):
            real_kw[k], fake_kw[k] = kw[k]
    real = Run(rb, ver, real_prompt, **real_kw)
    fake = Run(FAKE, ver, fake_prompt, fake=True, **fake_kw)
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("real", real.run()))
    th.start()
    out["fake"] = fake.run()
    th.join(120)
    return out["real"], out["fake"]


def shape(lines):
    """(type, subtype or event type, content block types) per line, runs of equal deltas folded.
    The real CLI starts a tool as soon as its tool_use block is complete, so a quick tool_result
    `user` line may come before that message's content_block_stop / message_delta /
    message_stop (racy): such lines are moved after the message_stop."""
    out = []
    held = []
    in_msg = False
    for d in lines:
        if d["type"] == "stream_event":
            k = d["event"]["type"]
            if k == "message_start":
                in_msg = True
            elif k == "message_stop":
                in_msg = False
        if d["type"] == "user" and in_msg:
            held.append(d)
            continue
        out.extend(_shape_items(out, [d]))
        if held and not in_msg:
            out.extend(_shape_items(out, held))
            held = []
    return out


def _shape_items(prev, lines):
    out = []
    for d in lines:
        t = d["type"]
        if t == "stream_event":
            ev = d["event"]
            kind = ev["type"]
            extra = (ev.get("content_block") or {}).get("type") or (ev.get("delta") or {}).get("type")
            item = (t, kind, extra)
        elif t in ("assistant", "user"):
            content = d["message"]["content"]
            item = (t, None, tuple(b.get("type") for b in content) if isinstance(content, list) else "str")
        else:
            item = (t, d.get("subtype"), None)
        last = out[-1] if out else (prev[-1] if prev else None)
        if item[2] in ("text_delta", "input_json_delta") and last == item:
            continue
        out.append(item)
    return out


def result(run):
    return [d for d in run.lines if d["type"] == "result"][-1]


RESULT_FIELDS = ("subtype", "is_error", "num_turns", "api_error_status", "stop_reason",
                 "terminal_reason")


def assert_same(real, fake, fields=RESULT_FIELDS):
    assert real.rc == fake.rc, (real.rc, fake.rc, real.stderr, fake.stderr)
    assert shape(fake.lines) == shape(real.lines)
    rr, fr = result(real), result(fake)
    for f in fields:
        assert fr.get(f) == rr.get(f), f
    assert sorted(fr) == sorted(rr)
    for run in (real, fake):
        ids = {"api_message_id" in d for d in run.lines if d["type"] == "stream_event"}
        assert ids <= ({False} if real.lines[0]["claude_code_version"] == "2.1.197" else {True})
    for a, b in zip(real.lines, fake.lines):
        if a["type"] == b["type"] == "system" and a.get("subtype") == "init":
            assert b["tools"] == a["tools"]
            assert b["mcp_servers"] == a["mcp_servers"]
            assert b["claude_code_version"] == a["claude_code_version"]
        if a["type"] == b["type"] == "user" and "tool_use_result" in a:
            ca, cb = a["message"]["content"][0], b["message"]["content"][0]
            assert list(cb) == list(ca)
            assert type(cb["content"]) is type(ca["content"])
            assert sorted(b) == sorted(a)


HEADERS = ("Accept", "Content-Type", "Authorization", "mcp-protocol-version", "mcp-method",
           "mcp-session-id", "User-Agent")


def mcp_requests(run):
    out = []
    for e in run.probe.log:
        body = e["body"] if isinstance(e["body"], dict) else {}
        h = {k: v for k, v in e["headers"].items() if k in HEADERS}
        params = body.get("params") or {}
        out.append((e["method"], body.get("method"), json.dumps(h, sort_keys=True),
                    sorted(params), sorted(params.get("_meta") or {}), type(body.get("id")).__name__))
    return out


def text_of(lines, t):
    return [d for d in lines if d["type"] == t]


# ------------------------------------------------------------------------------------ MCP

@pytest.mark.parametrize("ver", VERSIONS)
def test_mcp_parallel_pair(ver):
    real, fake = both(
        ver,
        'go [upstream:tool:mcp__client__get_weather:{"city":"Paris","sleep_ms":300}] '
        '[upstream:tool:mcp__client__get_time:{"tz":"UTC"}]',
        'go [fake:mcp-call:get_weather:{"city":"Paris","sleep_ms":300}] '
        '[fake:mcp-call:get_time:{"tz":"UTC"}]',
        mcp=True, session_id="sess-1")
    assert_same(real, fake)
    assert mcp_requests(fake) == mcp_requests(real)
    calls = [e for e in fake.probe.log if (e["body"] or {}).get("method") == "tools/call"]
    assert [c["body"]["params"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert calls[1]["t"] >= calls[0]["answered"]  # one after the other, as the real CLI
    assert all(c["headers"]["Authorization"] == "Bearer S3" for c in calls)
    assert all(c["headers"]["mcp-session-id"] == "sess-1" for c in calls)
    tool_ids = [b["id"] for d in text_of(fake.lines, "assistant") for b in d["message"]["content"]
                if b["type"] == "tool_use"]
    assert [c["body"]["params"]["_meta"]["claudecode/toolUseId"] for c in calls] == tool_ids
    assert result(fake)["result"] == (
        'FAKE-REPLY tool results: get_weather=RESULT get_weather {"city": "Paris", "sleep_ms": 300}; '
        'get_time=RESULT get_time {"tz": "UTC"}')


@pytest.mark.parametrize("ver", VERSIONS)
def test_mcp_readonly_concurrent_and_errors(ver):
    tools = [dict(probe_mcp.WEATHER_TOOL, annotations={"readOnlyHint": True}),
             dict(probe_mcp.TIME_TOOL, annotations={"readOnlyHint": True})]
    real, fake = both(
        ver,
        'go [upstream:tool:mcp__client__get_weather:{"city":"P","is_error":true,"sleep_ms":300}] '
        '[upstream:tool:mcp__client__get_time:{"tz":"UTC","rpc_error":true,"sleep_ms":300}]',
        'go [fake:mcp-call:get_weather:{"city":"P","is_error":true,"sleep_ms":300}] '
        '[fake:mcp-call:get_time:{"tz":"UTC","rpc_error":true,"sleep_ms":300}]',
        mcp=True, tools=tools)
    assert_same(real, fake)
    calls = [e for e in fake.probe.log if (e["body"] or {}).get("method") == "tools/call"]
    assert abs(calls[1]["t"] - calls[0]["t"]) < 0.2  # concurrent
    for run in (real, fake):
        contents = sorted(d["message"]["content"][0]["content"] for d in text_of(run.lines, "user"))
        prefix = "MCP error -32000: " if ver == "2.1.197" else ""
        assert contents == sorted(['RESULT get_weather {"city": "P", "is_error": true, "sleep_ms": 300}',
                                   prefix + "probe: tool failed"])


def _rounds(marker):
    def on_call(params):
        if params["name"] == "get_weather":
            return ("result", {"content": [{"type": "text", "text": "next " + marker}]})
        return None
    return on_call


@pytest.mark.parametrize("ver", VERSIONS)
def test_mcp_rounds_and_timeout(ver):
    real, fake = both(
        ver,
        'go [upstream:tool:mcp__client__get_weather:{"city":"P"}]',
        'go [fake:mcp-call:get_weather:{"city":"P"}]',
        mcp=True, env={"MCP_TOOL_TIMEOUT": "1000"},
        on_call=(_rounds('[upstream:tool:mcp__client__get_time:{"tz":"CET","sleep_ms":2500}]'),
                 _rounds('[fake:mcp-call:get_time:{"tz":"CET","sleep_ms":2500}]')))
    assert_same(real, fake)
    assert mcp_requests(fake) == mcp_requests(real)  # incl. notifications/cancelled
    for run in (real, fake):
        last = text_of(run.lines, "user")[-1]["message"]["content"][0]
        assert last["content"] == 'MCP server "client" tool "get_time" timed out after 1s'
        assert last["is_error"] is True


@pytest.mark.parametrize("ver", VERSIONS)
def test_mcp_server_down(ver):
    real, fake = both(ver, 'go [upstream:tool:mcp__client__get_weather:{"city":"P"}]',
                      'go [fake:mcp-call:get_weather:{"city":"P"}]', mcp=True, mcp_down=True)
    assert_same(real, fake)
    for run in (real, fake):
        assert run.lines[0]["mcp_servers"][0]["status"] == "failed"


# ------------------------------------------------------------------------ other scenarios

@pytest.mark.parametrize("ver", VERSIONS)
def test_json_schema(ver):
    args = ["--json-schema", json.dumps(SCHEMA)]
    real, fake = both(ver, 'person [upstream:json:{"name":"Ann","age":7}]',
                      'person [fake:json:{"name":"Ann","age":7}]', args=args)
    assert_same(real, fake, RESULT_FIELDS + ("structured_output", "result"))


@pytest.mark.parametrize("ver", VERSIONS)
def test_think_and_effort(ver):
    real, fake = both(ver, "hi [upstream:think:Let me think about it]",
                      "hi [fake:think:Let me think about it]", args=["--effort", "high"])
    assert_same(real, fake)
    for run in (real, fake):
        th = [d for d in text_of(run.lines, "assistant") if d["message"]["content"][0]["type"] == "thinking"]
        assert th[0]["message"]["content"][0]["thinking"] == "Let me think about it"


@pytest.mark.parametrize("ver", VERSIONS)
def test_max_output_tokens(ver):
    real, fake = both(ver, "hi [upstream:words:40]", "hi " + "w " * 40,
                      env={"CLAUDE_CODE_MAX_OUTPUT_TOKENS": "10"})
    assert_same(real, fake, RESULT_FIELDS + ("result",))


@pytest.mark.parametrize("ver", VERSIONS)
@pytest.mark.parametrize("code", ["429", "529"])
def test_upstream_errors(ver, code):
    real, fake = both(ver, "hi [upstream:error-%s]" % code, "hi [fake:error-%s]" % code)
    assert_same(real, fake)
    if code == "529":
        assert result(fake)["result"].split("(")[0] == result(real)["result"].split("(")[0]
    else:
        assert result(fake)["result"] == result(real)["result"]


@pytest.mark.parametrize("ver", VERSIONS)
def test_auth_status(ver, tmp_path):
    rb = real_bin(ver)
    cred = tmp_path / "cred" / ".claude"
    cred.mkdir(parents=True)
    (cred / ".credentials.json").write_text(json.dumps({"claudeAiOauth": {
        "accessToken": "a", "refreshToken": "r", "expiresAt": 4102444800000,
        "scopes": ["user:inference", "user:profile"], "subscriptionType": "max"}}))
    noscope = tmp_path / "noscope" / ".claude"
    noscope.mkdir(parents=True)
    (noscope / ".credentials.json").write_text(json.dumps({"claudeAiOauth": {
        "accessToken": "a", "refreshToken": "r", "expiresAt": 4102444800000, "scopes": [],
        "subscriptionType": "max"}}))
    (tmp_path / "none").mkdir()
    cases = [({"HOME": str(tmp_path / "none")}, []),
             ({"HOME": str(tmp_path / "none"), "ANTHROPIC_API_KEY": "k"}, ["--json"]),
             ({"HOME": str(tmp_path / "cred")}, []),
             ({"HOME": str(tmp_path / "cred")}, ["--text"]),
             ({"HOME": str(tmp_path / "noscope")}, [])]
    for env, extra in cases:
        outs = []
        for binary, fv in ((rb, None), (FAKE, ver)):
            e = dict(env, PATH=os.environ["PATH"])
            if fv:
                e["FAKE_CLAUDE_VERSION"] = fv
            p = subprocess.run([binary, "auth", "status"] + extra, env=e, capture_output=True,
                               timeout=30)
            outs.append((p.returncode, p.stdout.decode()))
        assert outs[1] == outs[0], (env, extra)
    e = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "cred"), "FAKE_CLAUDE_AUTH": "none"}
    assert subprocess.run([FAKE, "auth", "status"], env=e, capture_output=True).returncode == 1


# ---------------------------------------------------------------- fake-only: schema instances

def test_schema_instances_validate():
    jsonschema = pytest.importorskip("jsonschema")
    pydantic = pytest.importorskip("pydantic")
    sys.path.insert(0, str(ROOT / "testkit"))
    import fake_claude  # noqa: E402
    from enum import Enum
    from typing import List, Literal, Optional, Union

    class Color(str, Enum):
        red = "red"
        blue = "blue"

    class Inner(pydantic.BaseModel):
        x: int
        tags: List[str] = pydantic.Field(min_length=2)

    class Outer(pydantic.BaseModel):
        name: str = pydantic.Field(min_length=3)
        color: Color
        kind: Literal["a"]
        inner: Inner
        inners: List[Inner] = pydantic.Field(min_length=1)
        maybe: Optional[Inner]
        either: Union[int, Inner]
        score: float = pydantic.Field(gt=1.5)
        flag: bool

    for model in (Inner, Outer):
        schema = model.model_json_schema()
        obj = fake_claude.schema_instance(schema)
        jsonschema.validate(obj, schema)
        model.model_validate(obj)


def test_new_part_and_markers():
    sys.path.insert(0, str(ROOT / "testkit"))
    import fake_claude  # noqa: E402
    p = ('[fake:mcp-call:a:{"x":1}]\n[end of earlier turns]\n'
         'now [fake:mcp-call:b:{"y":"]"}] [fake:think:hm]')
    assert fake_claude.parse_model_markers(fake_claude.new_part(p)) == [
        ("mcp-call", ("b", {"y": "]"})), ("think", "hm")]
    assert fake_claude.new_part("no marker line") == "no marker line"


def test_fake_mcp_hold_until_answer():
    """The fake waits for a held tools/call (as the real CLI) and its default timeout message."""
    gate = threading.Event()

    def on_call(params):
        gate.wait(10)
        return ("result", {"content": [{"type": "text", "text": "late"}]})
    run = Run(FAKE, "2.1.332", 'go [fake:mcp-call:get_weather:{"city":"P"}]', mcp=True,
              on_call=on_call, fake=True)
    timer = threading.Timer(1.0, gate.set)
    timer.start()
    t0 = time.time()
    run.run()
    assert time.time() - t0 >= 1.0
    assert result(run)["result"] == "FAKE-REPLY tool results: get_weather=late"
