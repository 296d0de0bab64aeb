"""The official OpenAI Node SDK (npm `openai`) against a real bridge and its fake backends.

testkit/node_sdk_check.mjs makes the calls (JSON and streamed, Claude and Ollama, a session
of two turns each, and calls that must fail) and prints a JSON summary; this checks it.

Needs `node` (20+; $NODE_BIN, else PATH) and the package, installed outside the repo:

    npm install --no-save --no-audit --no-fund --prefix ~/.cache/claude-bridge/node openai@6

(openai 7 needs Node 22; 6 is the last major for Node 20.) The package is looked for in
$OPENAI_NODE_SDK_DIR (the package directory), else ~/.cache/claude-bridge/node/node_modules/
openai. Outside CI the tests skip when node or the package is missing; in CI (CI set) that
is a failure, since .ci/run installs both.
"""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest


HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "node_sdk_check.mjs"
TOOLS_SCRIPT = HERE / "node_tools_check.mjs"
SDK_DIR = Path(os.environ.get("OPENAI_NODE_SDK_DIR") or
               Path.home() / ".cache" / "claude-bridge" / "node" / "node_modules" / "openai")
INSTALL = ("npm install --no-save --no-audit --no-fund "
           "--prefix ~/.cache/claude-bridge/node openai@6")

CLAUDE_USAGE = {"prompt_tokens": 666, "completion_tokens": 44, "total_tokens": 710,
                "cached_tokens": 333}


def claude_reply(text, msgs=2):
    """What testkit/fake_claude.py answers to TEXT (msgs counts the session's messages)."""
    return f"FAKE-REPLY model=claude-opus-5-5 msgs={msgs} len_last={len(text)} to: {text}"


def ollama_reply(text, msgs=1):
    """What testkit/fake_ollama.py answers to TEXT when it is sent MSGS messages."""
    return f"ECHO model=llama3.2 msgs={msgs} images=0 last={text}"


def ollama_usage(msgs=1):
    # fake_ollama: prompt_eval_count = 10 per message, eval_count = number of pieces (5).
    return {"prompt_tokens": 10 * msgs, "completion_tokens": 5, "total_tokens": 10 * msgs + 5,
            "cached_tokens": 0}


def _missing(what):
    if os.environ.get("CI"):
        pytest.fail(f"{what}: .ci/run installs it ({INSTALL})")
    pytest.skip(what)


@pytest.fixture(scope="module")
def node():
    exe = os.environ.get("NODE_BIN") or shutil.which("node")
    if not exe:
        _missing("no node on PATH")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
    m = re.match(r"v(\d+)\.", version)
    if not m or int(m.group(1)) < 20:
        _missing(f"node {version or '?'} is older than 20")
    if not (SDK_DIR / "package.json").is_file():
        _missing(f"the npm package openai is not installed in {SDK_DIR}")
    return exe


def run_check(node, br, api_key, script=SCRIPT):
    env = {**os.environ, "BASE_URL": br.url + "/v1", "API_KEY": api_key,
           "OPENAI_SDK_DIR": str(SDK_DIR), "NODE_PATH": str(SDK_DIR.parent)}
    out = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=180,
                         env=env, cwd=br.tmp)
    assert out.returncode == 0, f"{script.name} failed:\n{out.stderr}\n{out.stdout}"
    return json.loads(out.stdout)


def check_stream(got, content, usage, pieces):
    """A streamed reply: a role chunk, one chunk per piece, the finish chunk, the usage chunk."""
    assert got["content"] == content
    assert got["finish_reason"] == "stop"
    assert got["usage"] == usage
    assert got["role"] == "assistant"
    assert got["objects"] == ["chat.completion.chunk"]
    assert got["content_chunks"] == pieces
    assert got["chunks"] == pieces + 3


def check_json(got, model, content, usage):
    assert got == {"object": "chat.completion", "model": model, "content": content,
                   "role": "assistant", "finish_reason": "stop", "usage": usage}


@pytest.mark.parametrize("auth_key", [None, "node-sdk-key"], ids=["open", "auth-key"])
def test_official_node_sdk(node, start, ollama_fake, auth_key):
    env = {"OLLAMA_URL": ollama_fake.url}
    if auth_key:
        env["CLAUDE_AUTH_KEY"] = auth_key
    br = start(**env)
    got = run_check(node, br, auth_key or "unused")
    assert got["sdk_version"].split(".")[0] in ("6", "7"), got["sdk_version"]

    # Claude (the fake CLI): JSON, streamed, and a session whose second turn resumes.
    check_json(got["claude_json"], "claude-code", claude_reply("hello"), CLAUDE_USAGE)
    check_stream(got["claude_stream"], claude_reply("hello"), CLAUDE_USAGE, pieces=6)
    first, second = got["claude_session"]
    check_json(first, "claude-code", claude_reply("first"), CLAUDE_USAGE)
    check_stream(second, claude_reply("second", msgs=4), CLAUDE_USAGE, pieces=6)

    # Ollama (the fake server): the same, and the session resends the kept turn.
    check_json(got["ollama_json"], "ollama/llama3.2", ollama_reply("hello"), ollama_usage())
    check_stream(got["ollama_stream"], ollama_reply("hello"), ollama_usage(), pieces=5)
    first, second = got["ollama_session"]
    check_json(first, "ollama/llama3.2", ollama_reply("first"), ollama_usage())
    check_stream(second, ollama_reply("second", msgs=3), ollama_usage(3), pieces=5)
    assert [len(b["messages"]) for b in ollama_fake.chat_bodies()] == [1, 1, 1, 3]

    # A 4xx is the SDK's typed error, with the bridge's param.
    bad = got["bad_request"]
    assert bad["raised"] and bad["class"] == "BadRequestError" and bad["status"] == 400
    assert bad["type"] == "invalid_request_error" and bad["param"] == "messages"

    # An error after the stream began is raised while iterating (an APIError, no status).
    mid = got["midstream_error"]
    assert mid["raised"] and mid["is_api_error"] and mid["class"] == "APIError"
    assert mid["status"] is None and mid["code"] == "backend_error"
    assert "500 stream interrupted" in mid["message"]

    # A wrong key: AuthenticationError when the bridge has a key, accepted when it has none.
    wrong = got["wrong_key"]
    if auth_key:
        assert wrong["raised"] and wrong["class"] == "AuthenticationError"
        assert wrong["status"] == 401 and wrong["code"] == "invalid_api_key"
    else:
        assert wrong == {"raised": False}


def test_official_node_sdk_client_tools(node, start):
    """testkit/node_tools_check.mjs: a tool round trip (JSON) and a streamed tool call; the
    results continue the CLI that made the call."""
    br = start(CLAUDE_TOOL_WAIT="30")
    got = run_check(node, br, "unused", TOOLS_SCRIPT)

    trip = got["round_trip"]
    assert trip["finish_reason"] == "tool_calls" and trip["content"] is None
    (call,) = trip["calls"]
    assert call["id"].startswith("toolu_") and call["type"] == "function"
    assert (call["name"], json.loads(call["arguments"])) == ("get_weather", {"city": "Paris"})
    assert trip["final_finish_reason"] == "stop" and trip["final_tool_calls"] is None
    assert trip["final_content"] == "FAKE-REPLY tool results: get_weather=sunny, 21 C"

    streamed = got["streamed"]
    head, *rest = streamed["tool_deltas"]
    assert head["index"] == 0 and head["id"].startswith("toolu_") and head["type"] == "function"
    assert head["function"] == {"name": "get_weather", "arguments": ""}
    assert rest and all(set(d) == {"index", "function"} for d in rest)
    assert json.loads("".join(d["function"]["arguments"] for d in rest)) == {"city": "Oslo"}
    assert streamed["finish_reason"] == "tool_calls" and streamed["text"] == ""
    assert len(streamed["chunk_ids"]) == 1 and streamed["usage"]["completion_tokens"] > 0
    answer = "FAKE-REPLY tool results: get_weather=rain"
    assert streamed["answer_text"] == answer == streamed["answer_final_content"]
    assert streamed["answer_finish_reason"] == "stop"

    # Each conversation was one CLI, its second request continuing the held run.
    assert [r["via"] for r in br.rows()] == [None, "held", None, "held"]
    assert len(br.chat_runs()) == 2
