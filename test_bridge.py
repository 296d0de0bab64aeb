"""Tests: the real bridge under waitress on port 0, driven over HTTP by real clients.

Backends are fakes that follow the real wire formats: testkit/fake_claude.py prints what
Claude Code CLI 2.1.332 prints (built from its transcripts), testkit/fake_ollama.py answers
like Ollama. One test runs the real CLI against testkit/fake_anthropic.py.
"""

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import openai
import pytest
import requests

import bridge
from testkit.harness import (  # noqa: F401  (the fixtures: pytest finds them here)
    FAKE_CLAUDE, FIXED_ARGV, REPLY, ROOT, alive, assert_error, br, bridge_process, fake_api,
    ollama_fake, prompt_of, real_cli, sse_events, start, user, wait_until)


# ----------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------

def test_settings_defaults_match_the_deployed_names():
    s = bridge.load_settings(environ={})
    assert (s.port, s.host, s.claude_bin, s.claude_skip_perms) == (8080, "127.0.0.1", "", False)
    assert s.claude_default_model == "claude-code"
    assert s.ollama_url == "http://localhost:11434"
    assert s.usage_db_path == "./usage.db"
    assert s.threads >= 64 and s.max_body_mb == 32


@pytest.mark.parametrize("name,value", [
    ("PORT", "eighty"), ("PORT", "70000"), ("CLAUDE_SKIP_PERMS", "maybe"),
    ("CLAUDE_TIMEOUT", "-1"), ("OLLAMA_URL", "localhost:11434"),
    ("CLAUDE_WORKDIR", "/no/such/dir"), ("CLAUDE_DEFAULT_MODEL", "--evil"),
    ("CLAUDE_SYSTEM_PROMPT", "sideways"), ("THREADS", "1")])
def test_bad_setting_names_the_variable(name, value):
    with pytest.raises(bridge.SettingsError, match=name):
        bridge.load_settings(environ={name: value})


def test_bad_setting_stops_start_up_with_a_message():
    out = subprocess.run([sys.executable, str(ROOT / "bridge.py")], capture_output=True,
                         text=True, timeout=30, env={**os.environ, "PORT": "nope"})
    assert out.returncode == 2
    assert "PORT" in out.stderr and "Traceback" not in out.stderr


def test_flags_override_environment_and_help_lists_every_setting():
    s = bridge.load_settings(environ={"PORT": "1234"}, argv=["--port", "9000"])
    assert s.port == 9000
    help_text = bridge.build_arg_parser().format_help()
    for setting in bridge.SETTINGS:
        assert bridge._flag(setting) in help_text and setting.name in help_text


def test_readme_documents_every_setting():
    readme = (ROOT / "README.md").read_text()
    documented = dict(re.findall(r"^\| `([A-Z_]+)` \| (\S+) \|", readme, re.M))
    assert documented == {s.name: f"`{s.default}`" if s.default else "(unset)"
                          for s in bridge.SETTINGS}


def test_no_routes_on_bottles_default_app():
    import bottle
    assert not bottle.default_app().routes


# ----------------------------------------------------------------------------------------
# Chat: JSON and streaming through the official SDK
# ----------------------------------------------------------------------------------------

def test_chat_json_parses_strictly_and_counts_tokens(br):
    reply = br.client().chat.completions.create(
        model="claude-code", messages=[{"role": "user", "content": "hello"}])
    assert reply.choices[0].message.content == REPLY
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.object == "chat.completion" and reply.model == "claude-code"
    # prompt = input + cache_creation + cache_read; cached = cache_read.
    assert reply.usage.prompt_tokens == 111 + 222 + 333
    assert reply.usage.prompt_tokens_details.cached_tokens == 333
    assert reply.usage.completion_tokens == 44
    assert reply.usage.total_tokens == 666 + 44


def test_cli_gets_prompt_on_stdin_and_fixed_flags(br, monkeypatch):
    br.client().chat.completions.create(
        model="claude-code", messages=[{"role": "user", "content": "-p --help hello"}])
    (run,) = br.chat_runs()
    assert prompt_of(run) == "-p --help hello"
    assert "-p --help hello" not in " ".join(run["argv"])
    assert run["argv"][:7] == FIXED_ARGV
    assert not any(a.startswith("--model") for a in run["argv"])
    assert "--dangerously-skip-permissions" not in run["argv"]
    assert "--no-session-persistence" in run["argv"]
    assert run["cwd"] == str(br.tmp)


def test_cli_environment_drops_claudecode(start, monkeypatch):
    monkeypatch.setenv("CLAUDECODE", "1")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    br = start()
    br.client().chat.completions.create(model="claude-code",
                                        messages=[{"role": "user", "content": "hi"}])
    (run,) = br.chat_runs()
    assert run["env_claudecode"] is None


def test_stream_is_token_level_with_constant_id_and_usage(br):
    chunks = list(br.client().chat.completions.create(
        model="claude-code", messages=[{"role": "user", "content": "hello"}], stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    texts = [c.choices[0].delta.content for c in chunks[1:] if c.choices
             and c.choices[0].delta.content]
    assert texts == ["FAKE-REPLY ", "model=claude-opus-5-5 ", "msgs=2 ", "len_last=5 ",
                     "to: ", "hello"]
    finishes = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1 and finishes[0].choices[0].finish_reason == "stop"
    assert finishes[0].choices[0].delta.content is None
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage.prompt_tokens == 666
    assert usage.usage.completion_tokens == 44


def test_stream_wire_format_ends_with_done(br):
    resp = br.post({**user("hello"), "stream": True}, stream=True)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    data, _ = sse_events(resp)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert not any("usage" in c for c in chunks)  # only with include_usage
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                        "finish_reason": "stop"}


def test_stream_helper_of_the_sdk_accumulates_the_reply(br):
    with br.client().chat.completions.stream(
            model="claude-code", messages=[{"role": "user", "content": "hello"}]) as s:
        final = s.get_final_completion()
    assert final.choices[0].message.content == REPLY


def test_models_lists_claude_names(start):
    br = start(CLAUDE_DEFAULT_MODEL="claude-sonnet-4-5")
    ids = [m.id for m in br.client().models.list()]
    assert ids[:4] == ["claude-code", "sonnet", "opus", "haiku"]
    assert "claude-sonnet-4-5" in ids


def test_named_model_is_passed_and_default_model_applies(start):
    br = start(CLAUDE_DEFAULT_MODEL="haiku")
    reply = br.client().chat.completions.create(
        model="sonnet", messages=[{"role": "user", "content": "hello"}])
    assert "model=claude-sonnet-5-5" in reply.choices[0].message.content
    resp = br.post({"messages": [{"role": "user", "content": "hello"}]})
    assert resp.status_code == 200 and resp.json()["model"] == "haiku"
    argvs = [r["argv"] for r in br.chat_runs()]
    assert "--model=sonnet" in argvs[0] and "--model=haiku" in argvs[1]


@pytest.mark.parametrize("model", ["-p", "--dangerously-skip-permissions", "a b",
                                   "x\ny", "sonnet\x00", "x" * 300, "$(id)", ""])
def test_model_names_that_could_be_flags_are_refused(br, model):
    err = assert_error(br.post({**user("hi"), "model": model}), 400)
    assert err["param"] == "model"
    assert br.chat_runs() == []


def _system_file(run, flag):
    """The path given to the CLI by `flag` (the file itself is gone after the run)."""
    (path,) = [a.split("=", 1)[1] for a in run["argv"] if a.startswith(flag + "=")]
    return path


def test_system_messages_go_to_append_system_prompt_by_a_private_file(br):
    br.client().chat.completions.create(model="claude-code", messages=[
        {"role": "system", "content": "-be terse"},
        {"role": "developer", "content": "answer in French"},
        {"role": "user", "content": "hello"}])
    (run,) = br.chat_runs()
    assert run["append_system_prompt"] == "-be terse\n\nanswer in French"
    assert prompt_of(run) == "hello"
    # Never in argv (any local user reads /proc/PID/cmdline); the file was the user's
    # alone, in a folder only the user can enter, and it is removed with the CLI.
    assert not any("terse" in a or "French" in a for a in run["argv"])
    path = _system_file(run, "--append-system-prompt-file")
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    assert wait_until(lambda: not os.path.exists(path))


def test_system_prompt_can_replace_claude_codes_prompt(start):
    br = start(CLAUDE_SYSTEM_PROMPT="replace")
    br.client().chat.completions.create(model="claude-code", messages=[
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "hello"}])
    (run,) = br.chat_runs()
    assert run["system_prompt"] == "You are a pirate."
    assert _system_file(run, "--system-prompt-file")
    assert not any("pirate" in a for a in run["argv"])


def test_history_is_flattened_with_the_last_user_message_last(br):
    br.client().chat.completions.create(model="claude-code", messages=[
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]}])
    (run,) = br.chat_runs()
    prompt = prompt_of(run)
    assert prompt.index("[user]\nMy name is Ada.") < prompt.index("[assistant]\nHello Ada.")
    assert prompt.endswith("\n\nWhat is my name?")


def test_large_prompt_goes_through_stdin(br):
    big = "word " * 80_000  # 400 KB: far past the 128 KiB argv limit
    reply = br.client().chat.completions.create(
        model="claude-code", messages=[{"role": "user", "content": big}])
    assert f"len_last={len(big)}" in reply.choices[0].message.content
    (run,) = br.chat_runs()
    assert len(prompt_of(run)) == len(big)
    assert sum(len(a) for a in run["argv"]) < 1000


def test_huge_output_line_and_stderr_flood_are_handled(br):
    reply = br.client().chat.completions.create(
        model="claude-code", messages=[{"role": "user", "content": "[fake:big:2000000]"}])
    assert reply.choices[0].message.content.endswith("x" * 2_000_000)
    reply = br.client().chat.completions.create(
        model="claude-code", messages=[{"role": "user", "content": "[fake:stderr-flood]"}])
    assert reply.choices[0].message.content.startswith("FAKE-REPLY")


def test_claude_tools_run_inside_the_cli_and_text_comes_back(br):
    reply = br.client().chat.completions.create(
        model="claude-code", messages=[{"role": "user", "content": "[fake:tool-use]"}])
    content = reply.choices[0].message.content
    assert "Calling tool." in content and "FAKE-REPLY after tool_result" in content


# ----------------------------------------------------------------------------------------
# Abandoned blocks: the CLI voids streamed text and answers again
# ----------------------------------------------------------------------------------------

def test_abandoned_blocks_json_holds_the_final_text_only(br):
    reply = br.client().chat.completions.create(
        model="claude-code", messages=[{"role": "user", "content": "[fake:midstream-fallback]"}])
    content = reply.choices[0].message.content
    assert content.startswith("FAKE-REPLY model=") and content.count("FAKE-REPLY") == 1


def test_abandoned_blocks_stream_sends_only_the_rest_when_it_repeats(br):
    chunks = br.client().chat.completions.create(
        model="claude-code", stream=True,
        messages=[{"role": "user", "content": "[fake:midstream-fallback]"}])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("FAKE-REPLY model=") and text.count("FAKE-REPLY") == 1


def test_abandoned_blocks_stream_that_differs_keeps_the_whole_answer(br):
    prompt = "[fake:midstream-fallback:Something else entirely]"
    chunks = br.client().chat.completions.create(
        model="claude-code", stream=True, messages=[{"role": "user", "content": prompt}])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # Sent text cannot be unsent: the voided text, then the whole retried answer.
    assert text.startswith("Something else entirely")
    assert text.endswith("to: " + prompt)
    reply = br.client().chat.completions.create(
        model="claude-code", messages=[{"role": "user", "content": prompt}])
    assert reply.choices[0].message.content.startswith("FAKE-REPLY")


def _assemble(*events):
    """(streamed text, streamed tool call events, JSON text) of one turn's events."""
    turn = bridge.Assembly()
    pieces = [p for e in events for p in turn.feed(e)]
    return ("".join(p.text for p in pieces if isinstance(p, bridge.TextDelta)),
            [p for p in pieces if isinstance(p, (bridge.ToolCallStart, bridge.ToolCallDelta))],
            turn.text())


T, R = bridge.TextDelta, bridge.Retract


@pytest.mark.parametrize("events,streamed,reply", [
    # No retract: everything as it comes.
    ([T("Hel"), T("lo")], "Hello", "Hello"),
    # The retry repeats the voided text, in other pieces: only the rest is streamed.
    ([T("Hel"), R("Hel"), T("He"), T("llo w"), T("orld")], "Hello world", "Hello world"),
    # The retry differs: the stream keeps the voided text and then the whole retry.
    ([T("Hel"), R("Hel"), T("He"), T("y there")], "HelHey there", "Hey there"),
    # Only part of earlier text is voided; the retry repeats it exactly, then stops.
    ([T("A. "), T("B"), R("B"), T("B")], "A. B", "A. B"),
    # A retract of text never sent (a mismatch) leaves the JSON text alone.
    ([T("abc"), R("zz"), T("zzd")], "abcd", "abczzd"),
])
def test_the_assembly_of_a_turn_with_voided_text(events, streamed, reply):
    assert _assemble(*events)[0::2] == (streamed, reply)


def test_the_assembly_keeps_tool_calls_in_order_with_their_argument_pieces():
    events = (bridge.ToolCallStart(0, "a", "f"), bridge.ToolCallDelta(0, '{"x":'),
              T("x"), bridge.ToolCallStart(1, "b", "g"), bridge.ToolCallDelta(0, " 1}"),
              bridge.ToolCallDelta(1, "{}"))
    turn = bridge.Assembly()
    streamed = [p for e in events for p in turn.feed(e)]
    assert [p for p in streamed if not isinstance(p, T)] == [
        e for e in events if not isinstance(e, T)]
    assert turn.tool_calls() == [bridge.ToolCall("a", "f", '{"x": 1}'),
                                 bridge.ToolCall("b", "g", "{}")]


def test_reasoning_is_kept_apart_from_the_text():
    turn = bridge.Assembly()
    for event in (bridge.ReasoningDelta("think"), T("answer"),
                  bridge.Final("stop", 1, 2, 0, 0.0)):
        turn.feed(event)
    chat = bridge.ChatRequest("m", [])
    message = bridge.completion_body(chat, turn)["choices"][0]["message"]
    assert (message["content"], message["reasoning_content"]) == ("answer", "think")


# ----------------------------------------------------------------------------------------
# Errors before and after the first byte
# ----------------------------------------------------------------------------------------

def test_unknown_route_and_wrong_method_are_json(br):
    assert_error(requests.get(br.url + "/nope", timeout=10), 404)
    assert_error(requests.get(br.url + "/v1/chat/completions", timeout=10), 405)
    assert_error(requests.delete(br.url + "/v1/models", timeout=10), 405)


BAD_BODIES = [
    (b"", None), (b"{not json", None), (b"[1, 2]", None), (b'"hi"', None),
    (b'{"model": "claude-code"}', "messages"),
    (b'{"messages": []}', "messages"),
    (b'{"messages": {"role": "user"}}', "messages"),
    (b'{"messages": ["hi"]}', "messages[0]"),
    (b'{"messages": [{"content": "hi"}]}', "messages[0].role"),
    (b'{"messages": [{"role": "wizard", "content": "hi"}]}', "messages[0].role"),
    (b'{"messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
    (b'{"messages": [{"role": "user"}]}', "messages[0].content"),
    (b'{"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}',
     "messages[0].content[0].type"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "n": 2}', "n"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', "stream"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "model": 7}', "model"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
     "temperature"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": true}', "max_tokens"),
    (b"[" * 100000 + b"]" * 100000, None),
    # Not UTF-8 (Latin-1, UTF-16), or a lone surrogate no pipe or database can carry.
    (b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', None),
    ('{"messages": [{"role": "user", "content": "hi"}]}'.encode("utf-16"), None),
    (b'{"messages": [{"role": "user", "content": "\\ud800 hi"}]}', None),
    (b'{"model": "ollama/\\udfffx", "messages": [{"role": "user", "content": "hi"}]}', None),
    (b'{"messages": [{"role": "user", "content": "[image]", "x": ["\\udbff"]}]}', None),
]


@pytest.mark.parametrize("body,param", BAD_BODIES)
def test_bad_requests_get_a_400_with_the_openai_error(br, body, param):
    resp = requests.post(br.url + "/v1/chat/completions", data=body, timeout=10,
                         headers={"Content-Type": "application/json"})
    err = assert_error(resp, 400)
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert "Traceback" not in resp.text


def test_escaped_surrogate_pairs_and_a_byte_order_mark_are_fine(br):
    body = b'\xef\xbb\xbf{"messages": [{"role": "user", "content": "\\ud83d\\ude00 ok"}]}'
    resp = requests.post(br.url + "/v1/chat/completions", data=body, timeout=30,
                         headers={"Content-Type": "application/json"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"].endswith("to: \U0001F600 ok")


def test_images_become_content_blocks_of_the_stream_json_message(br):
    reply = br.post({"model": "claude-code", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]})
    assert reply.json()["choices"][0]["message"]["content"].endswith(
        "to: what is this?[image][image]")
    (run,) = br.chat_runs()
    message = json.loads(run["stdin"])["message"]
    assert message["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "AAAA"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}]
    err = assert_error(br.post({"model": "claude-code", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}), 400)
    assert err["param"] == "messages[0].content"


@pytest.mark.parametrize("value", ["x" * 129, "a\tb", "a\x85b", ""])
def test_bad_session_ids_are_400(br, value):
    resp = requests.post(br.url + "/v1/chat/completions", timeout=10,
                         data=json.dumps(user("hi")).encode(),
                         headers={"X-Session-ID": value.encode("latin-1"),
                                  "Content-Type": "application/json"})
    assert assert_error(resp, 400)["param"] == "X-Session-ID"


def test_sdk_raises_typed_errors(br):
    client = br.client()
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="claude-code", messages=[], n=1)
    assert info.value.body["param"] == "messages"
    with pytest.raises(openai.NotFoundError):
        client.get("/nope", cast_to=object)


def test_body_limit_answers_413_with_the_error_object(start):
    br = start(MAX_BODY_MB="1")
    big = user("x" * (1024 * 1024 + 10))
    assert_error(br.post(big), 413, "request_too_large")
    assert br.chat_runs() == []


def test_api_error_is_a_502_with_the_clis_own_text(br):
    for stream in (False, True):
        resp = br.post({**user("[fake:error-401]"), "stream": stream})
        err = assert_error(resp, 502)
        assert "Invalid API key · Fix external API key" in err["message"]


@pytest.mark.parametrize("scenario,words", [
    ("error-500", "API Error: 500"), ("error-connrefused", "Connection refused"),
    ("garbage", "garbage"), ("half-line", "unreadable output"), ("crash", "signal 9"),
    ("exit-nonzero:Error: bad flag", "bad flag"), ("max-turns", "Claude Code CLI")])
def test_cli_failures_are_502_and_leave_no_process(br, scenario, words):
    resp = br.post(user(f"[fake:{scenario}]"))
    err = assert_error(resp, 502)
    assert words in err["message"], err["message"]
    for run in br.chat_runs():
        assert wait_until(lambda: not alive(run["pid"]))
    row = br.rows()[-1]
    assert (row["outcome"], row["status"], row["is_error"]) == ("error", 502, 1)
    assert requests.get(br.url + "/health", timeout=10).json()["status"] == "ok"


def test_crash_after_text_is_an_sse_error_event(br):
    resp = br.post({**user("[fake:crash]"), "stream": True}, stream=True)
    assert resp.status_code == 200
    data, _ = sse_events(resp)
    assert "[DONE]" not in data
    err = json.loads(data[-1])["error"]
    assert set(err) == {"message", "type", "param", "code"} and "signal 9" in err["message"]
    assert br.rows()[-1]["outcome"] == "error"


def test_midstream_api_error_raises_in_the_sdk(br):
    with pytest.raises(openai.APIError, match="stream interrupted"):
        for _ in br.client().chat.completions.create(
                model="claude-code", stream=True,
                messages=[{"role": "user", "content": "[fake:midstream-error]"}]):
            pass


def test_missing_binary_is_503_saying_how_to_install(start):
    br = start(CLAUDE_BIN=str(br_tmp_missing := "/nonexistent/claude"))
    err = assert_error(br.post(user("hi")), 503, "claude_not_found")
    assert "npm install -g @anthropic-ai/claude-code" in err["message"]
    assert br_tmp_missing in err["message"]
    health = requests.get(br.url + "/health", timeout=10).json()
    assert health["status"] == "degraded"
    assert "not found" in health["backends"]["claude"]["error"]


def test_root_refusal_of_skip_permissions_is_reported(start, monkeypatch):
    monkeypatch.delenv("IS_SANDBOX", raising=False)
    br = start(CLAUDE_SKIP_PERMS="true")
    resp = br.post(user("hello"))
    (run,) = br.chat_runs()
    assert "--dangerously-skip-permissions" in run["argv"]
    if os.geteuid() == 0:  # CI runs as root: the CLI refuses, and says why
        assert "cannot be used with root/sudo" in assert_error(resp, 502)["message"]
    else:
        assert resp.status_code == 200


# ----------------------------------------------------------------------------------------
# Auth and health
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("header", [None, "Bearer wrong", "secret", "Basic secret",
                                    "Bearer", "Bearer secret2", "Bearersecret"])
def test_auth_key_refuses_missing_or_wrong_keys(start, header):
    br = start(CLAUDE_AUTH_KEY="secret")
    headers = {"Authorization": header} if header else {}
    for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models"),
                         ("GET", "/v1/usage"), ("GET", "/nope")):
        resp = requests.request(method, br.url + path, headers=headers, json=user("hi"),
                                timeout=10)
        assert_error(resp, 401, "invalid_api_key")
    assert br.chat_runs() == []


def test_auth_key_accepts_the_bearer_key_and_health_stays_open(start):
    br = start(CLAUDE_AUTH_KEY="secret")
    assert br.client().models.list().data
    for header in ("bearer secret", "BEARER  secret "):
        resp = requests.get(br.url + "/v1/models", headers={"Authorization": header},
                            timeout=10)
        assert resp.status_code == 200
    with pytest.raises(openai.AuthenticationError):
        br.client(api_key="nope").models.list()
    assert requests.get(br.url + "/health", timeout=10).status_code == 200


def test_health_reports_the_cli_version_without_running_a_chat(br):
    body = requests.get(br.url + "/health", timeout=10).json()
    assert body["status"] == "ok"
    claude = body["backends"]["claude"]
    assert claude["ok"] and claude["version"] == "2.1.332 (Claude Code)"
    assert claude["binary"] == str(FAKE_CLAUDE)
    assert claude["logged_in"] is True and claude["warning"] is None
    assert body["database"]["ok"]
    assert br.chat_runs() == []


def test_health_says_when_the_cli_is_not_logged_in_without_a_model_call(start, monkeypatch):
    monkeypatch.setenv("FAKE_CLAUDE_AUTH", "none")  # what `claude auth status` then says
    br = start()
    claude = requests.get(br.url + "/health", timeout=10).json()["backends"]["claude"]
    assert (claude["ok"], claude["logged_in"]) == (False, False)
    assert "not logged in" in claude["error"] and "ANTHROPIC_API_KEY" in claude["error"]
    assert br.chat_runs() == []


def test_health_warns_about_a_cli_older_than_the_oldest_tested(start, tmp_path):
    old = tmp_path / "claude"
    old.write_text(f"#!/bin/sh\nif [ \"$1\" = --version ]; then echo '2.1.100 (Claude Code)'; "
                   f"else exec {sys.executable} {FAKE_CLAUDE} \"$@\"; fi\n")
    old.chmod(0o755)
    claude = requests.get(start(CLAUDE_BIN=str(old)).url + "/health",
                          timeout=10).json()["backends"]["claude"]
    assert claude["ok"] and "older than 2.1.197" in claude["warning"]


# ----------------------------------------------------------------------------------------
# Sessions
# ----------------------------------------------------------------------------------------

def test_session_first_turn_then_resume_with_only_the_new_message(br):
    client = br.client()
    h = {"X-Session-ID": "chat-1"}
    first = client.chat.completions.create(
        model="claude-code", extra_headers=h,
        messages=[{"role": "user", "content": "My secret word is PINEAPPLE."}])
    second = client.chat.completions.create(model="claude-code", extra_headers=h, messages=[
        {"role": "user", "content": "My secret word is PINEAPPLE."},
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "What is my secret word?"}])
    assert "msgs=4" in second.choices[0].message.content
    one, two = br.chat_runs()
    i = one["argv"].index("--session-id")
    claude_uuid = one["argv"][i + 1]
    assert uuid.UUID(claude_uuid)
    assert two["argv"][two["argv"].index("--resume") + 1] == claude_uuid
    assert prompt_of(two) == "What is my secret word?"
    # total_cost_usd is cumulative: the second row holds only its own run's cost.
    rows = br.rows()
    assert [r["cost_usd"] for r in rows] == pytest.approx([0.0025006, 0.0025006])
    # Rows hold the session's keyed tag, never the id (a bearer secret for the chat).
    tag = br.app.bridge.store.session_tag("chat-1")
    assert [r["session_id"] for r in rows] == [tag, tag] and len(tag) == 16


def test_session_mapping_survives_a_restart(start):
    br = start()
    h = {"X-Session-ID": "persisted"}
    br.client().chat.completions.create(model="claude-code", extra_headers=h,
                                        messages=[{"role": "user", "content": "one"}])
    br.stop()
    again = start()
    reply = again.client().chat.completions.create(
        model="claude-code", extra_headers=h, messages=[{"role": "user", "content": "two"}])
    assert "msgs=4" in reply.choices[0].message.content
    assert "--resume" in again.chat_runs()[-1]["argv"]


def test_lost_claude_session_heals_from_the_clients_history(br, tmp_path):
    client = br.client()
    h = {"X-Session-ID": "healme"}
    first = client.chat.completions.create(model="claude-code", extra_headers=h,
                                           messages=[{"role": "user", "content": "one"}])
    for f in (tmp_path / "claude-config").rglob("*.jsonl"):
        f.unlink()  # the CLI lost its session file
    reply = client.chat.completions.create(model="claude-code", extra_headers=h, messages=[
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "two"}])
    assert reply.choices[0].message.content.startswith("FAKE-REPLY")
    runs = br.chat_runs()
    assert "--resume" in runs[1]["argv"]
    healed = runs[2]["argv"]
    new_uuid = healed[healed.index("--session-id") + 1]
    assert new_uuid != runs[0]["argv"][runs[0]["argv"].index("--session-id") + 1]
    assert "[user]\none" in prompt_of(runs[2]) and prompt_of(runs[2]).endswith("two")
    # ... and the next turn resumes the healed session.
    client.chat.completions.create(model="claude-code", extra_headers=h,
                                   messages=[{"role": "user", "content": "three"}])
    assert br.chat_runs()[3]["argv"][-1] == new_uuid


def test_changed_workdir_starts_a_new_session(start, tmp_path):
    br = start()
    h = {"X-Session-ID": "moving"}
    br.client().chat.completions.create(model="claude-code", extra_headers=h,
                                        messages=[{"role": "user", "content": "one"}])
    br.stop()
    other = tmp_path / "elsewhere"
    other.mkdir()
    moved = start(CLAUDE_WORKDIR=str(other))
    reply = moved.client().chat.completions.create(
        model="claude-code", extra_headers=h, messages=[{"role": "user", "content": "two"}])
    assert reply.choices[0].message.content.startswith("FAKE-REPLY")
    assert "--session-id" in moved.chat_runs()[-1]["argv"]


def test_failed_first_turn_is_not_kept_and_its_uuid_never_reused(br):
    h = {"X-Session-ID": "unlucky"}
    assert br.post(user("[fake:error-401]"), headers=h).status_code == 502
    reply = br.client().chat.completions.create(
        model="claude-code", extra_headers=h, messages=[{"role": "user", "content": "again"}])
    assert "msgs=2" in reply.choices[0].message.content
    failed, ok = br.chat_runs()
    assert "--session-id" in ok["argv"]
    assert failed["argv"][-1] != ok["argv"][-1]


def test_turns_of_one_session_run_one_at_a_time(br):
    h = {"X-Session-ID": "serial"}
    results = []

    def turn(text):
        results.append(br.post(user(text), headers=h).json())

    threads = [threading.Thread(target=turn, args=(f"[fake:slow:3:100] {i}",))
               for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all("choices" in r for r in results)
    runs = br.chat_runs()
    assert len(runs) == 3
    for earlier, later in zip(runs, runs[1:]):
        assert later["started"] >= earlier["finished"]
    # The first turn created the Claude session, the others resumed it in turn.
    assert "--session-id" in runs[0]["argv"]
    assert all("--resume" in r["argv"] for r in runs[1:])
    assert len(br.app.bridge.claude.session_locks) == 0


# ----------------------------------------------------------------------------------------
# Lifecycle: disconnects, timeouts, heartbeats, concurrency
# ----------------------------------------------------------------------------------------

def _first_run(br):
    assert wait_until(lambda: br.chat_runs())
    return br.chat_runs()[0]


def test_client_disconnect_mid_stream_ends_the_cli(br):
    resp = br.post({**user("[fake:slow:100:100]"), "stream": True}, stream=True)
    lines = resp.iter_lines()
    for line in lines:
        if b"tick1" in line:
            break
    run = _first_run(br)
    resp.close()
    assert wait_until(lambda: not alive(run["pid"]), timeout=8)
    assert wait_until(lambda: br.rows() and br.rows()[-1]["outcome"] == "cancelled")


def test_client_disconnect_while_cli_is_silent_ends_it_and_its_children(start):
    br = start(SSE_HEARTBEAT_SECONDS="0.5")
    for stream in (True, False):
        sock = socket.create_connection(("127.0.0.1", br.server.effective_port))
        body = json.dumps({**user("[fake:child]"), "stream": stream}).encode()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert wait_until(lambda: any("child_pid" in r for r in br.chat_runs()[-1:]))
        run = br.chat_runs()[-1]
        sock.close()
        assert wait_until(lambda: not alive(run["pid"]), timeout=8)
        assert wait_until(lambda: not alive(run["child_pid"]), timeout=8)
        for f in br.log_dir.glob("*.json"):
            f.unlink()


def test_whole_request_timeout_before_first_byte_is_504(start):
    br = start(CLAUDE_TIMEOUT="1")
    t0 = time.monotonic()
    assert_error(br.post({**user("[fake:hang]"), "stream": True}), 504, "timeout")
    assert time.monotonic() - t0 < 6
    assert wait_until(lambda: not alive(br.chat_runs()[0]["pid"]))
    assert br.rows()[-1]["status"] == 504


def test_idle_timeout_ends_a_silent_cli(start):
    br = start(CLAUDE_IDLE_TIMEOUT="1")
    err = assert_error(br.post(user("[fake:silent]")), 504)
    assert "CLAUDE_IDLE_TIMEOUT" in err["message"]
    assert wait_until(lambda: not alive(br.chat_runs()[0]["pid"]))


def test_idle_timeout_after_first_byte_is_an_sse_error(start):
    br = start(CLAUDE_IDLE_TIMEOUT="1", CLAUDE_TIMEOUT="30")
    resp = br.post({**user("[fake:slow:2:3000]"), "stream": True}, stream=True)
    assert resp.status_code == 200
    data, _ = sse_events(resp)
    assert "CLAUDE_IDLE_TIMEOUT" in json.loads(data[-1])["error"]["message"]
    assert wait_until(lambda: not alive(br.chat_runs()[0]["pid"]))


def test_heartbeat_comments_while_claude_is_silent(start):
    br = start(SSE_HEARTBEAT_SECONDS="0.3")
    resp = br.post({**user("[fake:slow:3:1000]"), "stream": True}, stream=True)
    data, comments = sse_events(resp)
    assert data[-1] == "[DONE]"
    assert len(comments) >= 2 and all(c == ": keep-alive" for c in comments)


def test_concurrency_cap_answers_429_with_retry_after(start):
    br = start(CLAUDE_MAX_CONCURRENCY="1", CLAUDE_QUEUE_TIMEOUT="0.5")
    slow = threading.Thread(target=br.post, args=(user("[fake:slow:20:100]"),))
    slow.start()
    assert wait_until(lambda: br.chat_runs())
    resp = br.post(user("hello"))
    err = assert_error(resp, 429, "rate_limit_exceeded")
    assert resp.headers["Retry-After"].isdigit() and "CLAUDE_MAX_CONCURRENCY" in err["message"]
    slow.join()
    assert br.post(user("hello")).status_code == 200


def test_requests_wait_in_the_queue_for_a_free_slot(start):
    br = start(CLAUDE_MAX_CONCURRENCY="2", CLAUDE_QUEUE_TIMEOUT="30")
    statuses = []
    threads = [threading.Thread(target=lambda: statuses.append(
        br.post(user("[fake:slow:3:100]")).status_code)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 6
    runs = br.chat_runs()
    events = sorted([(r["started"], 1) for r in runs] + [(r["finished"], -1) for r in runs])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak <= 2


def test_shutdown_ends_running_clis(start):
    br = start()

    def hang():
        with pytest.raises(requests.ConnectionError):  # the bridge goes away
            br.post(user("[fake:hang]"))

    client = threading.Thread(target=hang)
    client.start()
    run = _first_run(br)
    br.stop()
    client.join()
    assert wait_until(lambda: not alive(run["pid"]), timeout=8)


# ----------------------------------------------------------------------------------------
# Usage rows (the basics; the usage API has its own issue)
# ----------------------------------------------------------------------------------------

def test_every_request_past_parsing_is_one_row(br):
    br.post(user("hello"))
    br.post(user("[fake:error-401]"))
    br.post({**user("hello"), "model": "-x"})
    br.post({**user("hello"), "stream": True})
    rows = br.rows()
    assert [(r["outcome"], r["status"], r["stream"]) for r in rows] == [
        ("ok", 200, 0), ("error", 502, 0), ("error", 400, 0), ("ok", 200, 1)]
    assert rows[0]["prompt_tokens"] == 666 and rows[0]["total_tokens"] == 710
    assert rows[0]["cost_usd"] == pytest.approx(0.0025006)
    assert rows[3]["ttft_ms"] is not None and rows[0]["duration_ms"] >= 0
    summary = requests.get(br.url + "/v1/usage", timeout=10).json()
    by_model = {s["model"]: s for s in summary}
    assert by_model["claude-code"]["requests"] == 3 and by_model["claude-code"]["errors"] == 1


# ----------------------------------------------------------------------------------------
# The real Claude Code CLI against a loopback fake Anthropic API
# ----------------------------------------------------------------------------------------

def test_real_cli_client_tools_round_trip_and_parse(start, real_cli, fake_api):
    br = start(CLAUDE_BIN=real_cli, CLAUDE_AUTH_KEY="k")
    client = br.client(api_key="k")
    history = [{"role": "user", "content":
                '[upstream:tool:mcp__client__get_weather:{"city": "Paris"}]'}]
    reply = client.chat.completions.create(model="claude-code", messages=history, tools=TOOLS)
    (call,) = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls"
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather", {"city": "Paris"})
    history += [reply.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    final = client.chat.completions.create(model="claude-code", messages=history, tools=TOOLS)
    assert final.choices[0].message.content == \
        f"FAKE-REPLY after tool_result: {call.id}=false:sunny, 21 C"
    assert [r["via"] for r in br.rows()] == [None, "held"]
    assert len([r for r in fake_api.requests if r.get("tools")]) == 2  # one run, two calls


def test_real_cli_end_to_end(start, real_cli, tmp_path, fake_api):
    api = fake_api
    br = start(CLAUDE_BIN=real_cli)
    client = br.client()
    reply = client.chat.completions.create(
        model="claude-code", messages=[{"role": "user", "content": "hello"}])
    assert reply.choices[0].message.content.endswith("to: hello")
    assert reply.usage.prompt_tokens == 666 and reply.usage.completion_tokens == 44
    chunks = list(client.chat.completions.create(
        model="claude-code", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "stream please"}]))
    texts = [c.choices[0].delta.content for c in chunks if c.choices
             and c.choices[0].delta.content]
    assert len(texts) > 2 and "".join(texts).endswith("to: stream please")
    # Once each: 2.1.197's stream lines do not name their message.
    assert "".join(texts).count("FAKE-REPLY") == 1
    assert reply.choices[0].message.content.count("FAKE-REPLY") == 1
    # System messages reach the real CLI through --append-system-prompt-file.
    client.chat.completions.create(model="claude-code", messages=[
        {"role": "system", "content": "Talk like a SYSTEM-PIRATE."},
        {"role": "user", "content": "hi"}])
    assert "SYSTEM-PIRATE" in json.dumps(api.requests[-1]["system"])
    h = {"X-Session-ID": "real"}
    client.chat.completions.create(model="claude-code", extra_headers=h,
                                   messages=[{"role": "user", "content": "PINEAPPLE"}])
    again = client.chat.completions.create(
        model="claude-code", extra_headers=h,
        messages=[{"role": "user", "content": "What was the word?"}])
    assert "msgs=4" in again.choices[0].message.content  # the CLI re-sent the history
    assert "PINEAPPLE" in json.dumps(api.requests[-1]["messages"])
    rows = br.rows()
    assert rows[-1]["cost_usd"] == pytest.approx(rows[-2]["cost_usd"])
    api.mode = "error-401"
    err = assert_error(br.post(user("hi")), 502)
    assert "Invalid API key" in err["message"]
    api.mode = "ok"
    # Warm CLIs and a session's CLI kept between turns, with the real CLI.
    warm = start(CLAUDE_BIN=real_cli, CLAUDE_WARM_POOL="1", CLAUDE_SESSION_KEEPALIVE="30",
                 USAGE_DB_PATH=str(tmp_path / "warm.db"))
    client = warm.client()
    client.chat.completions.create(model="claude-code",
                                   messages=[{"role": "user", "content": "first"}])
    assert wait_until(lambda: warm.app.bridge.claude.pool.count() == 1, timeout=20)
    sent = len(api.requests)
    reply = client.chat.completions.create(
        model="claude-code", messages=[{"role": "user", "content": "to the warm one"}])
    assert reply.choices[0].message.content.endswith("to: to the warm one")
    assert len(api.requests) == sent + 1
    h = {"X-Session-ID": "kept"}
    client.chat.completions.create(model="claude-code", extra_headers=h,
                                   messages=[{"role": "user", "content": "MANGO"}])
    assert warm.app.bridge.claude.live.count() == 1
    again = client.chat.completions.create(
        model="claude-code", extra_headers=h,
        messages=[{"role": "user", "content": "Which fruit?"}])
    assert "msgs=4" in again.choices[0].message.content
    assert "MANGO" in json.dumps(api.requests[-1]["messages"])
    costs = [r["cost_usd"] for r in warm.rows()[-2:]]
    assert costs[0] == pytest.approx(costs[1]) and costs[0] > 0


# ----------------------------------------------------------------------------------------
# Ollama: native /api/chat behind the same OpenAI contract
# ----------------------------------------------------------------------------------------

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]


@pytest.fixture
def obr(start, ollama_fake):
    running = start(OLLAMA_URL=ollama_fake.url)
    running.ollama = ollama_fake
    return running


def ask(text, model="ollama/llama3.2", **extra):
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ollama_json_reply_and_usage(obr):
    reply = obr.client().chat.completions.create(
        model="ollama/llama3.2", messages=[{"role": "user", "content": "hello there"}])
    assert reply.choices[0].message.content == \
        "ECHO model=llama3.2 msgs=1 images=0 last=hello there"
    assert reply.choices[0].finish_reason == "stop" and reply.model == "ollama/llama3.2"
    assert reply.usage.prompt_tokens == 10 and reply.usage.completion_tokens == 6
    assert reply.usage.total_tokens == 16
    body = obr.ollama.last_chat()
    assert body["stream"] is False and body["model"] == "llama3.2"
    row = obr.rows()[-1]
    assert (row["provider"], row["model"], row["outcome"], row["total_tokens"]) == (
        "ollama", "ollama/llama3.2", "ok", 16)


def test_ollama_stream_chunks_and_usage(obr):
    chunks = list(obr.client().chat.completions.create(
        model="ollama/llama3.2", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "hi"}]))
    assert obr.ollama.last_chat()["stream"] is True
    texts = [c.choices[0].delta.content for c in chunks if c.choices
             and c.choices[0].delta.content]
    assert texts == ["ECHO ", "model=llama3.2 ", "msgs=1 ", "images=0 ", "last=hi"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_ollama_stream_is_not_buffered(obr):
    resp = obr.post({**ask("[ollama:slow:3:400]"), "stream": True}, stream=True)
    t0 = time.monotonic()
    seen = []
    for line in resp.iter_lines():
        if b"tick" in line:
            seen.append(time.monotonic() - t0)
    assert len(seen) == 3
    assert seen[0] < seen[2] - 0.5  # the first tick came long before the last


def test_ollama_request_translation(obr):
    obr.client().chat.completions.create(
        model="ollama/llama3.2", max_tokens=50, temperature=0.2, top_p=0.9, seed=7,
        stop="END", response_format={"type": "json_object"},
        messages=[{"role": "system", "content": "be brief"},
                  {"role": "developer", "content": "use JSON"},
                  {"role": "user", "content": "hi"}])
    body = obr.ollama.last_chat()
    assert body["options"] == {"num_predict": 50, "temperature": 0.2, "top_p": 0.9,
                               "seed": 7, "stop": ["END"]}
    assert body["format"] == "json"
    assert [m["role"] for m in body["messages"]] == ["system", "system", "user"]
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    obr.client().chat.completions.create(
        model="ollama/llama3.2", max_completion_tokens=9,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        messages=[{"role": "user", "content": "hi"}])
    body = obr.ollama.last_chat()
    assert body["format"] == schema and body["options"] == {"num_predict": 9}


def test_ollama_length_finish_reason(obr):
    reply = obr.client().chat.completions.create(
        model="ollama/llama3.2", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content == "ECHO model=llama3.2 "


def test_ollama_images_become_raw_base64(obr):
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
    reply = obr.client().chat.completions.create(model="ollama/llama3.2", messages=[
        {"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png}}]}])
    assert "images=1" in reply.choices[0].message.content
    msg = obr.ollama.last_chat()["messages"][0]
    assert msg == {"role": "user", "content": "what is this", "images": [png]}


def test_ollama_http_image_urls_are_400(obr):
    err = assert_error(obr.post({"model": "ollama/llama3.2", "messages": [{
        "role": "user", "content": [{"type": "image_url",
                                     "image_url": {"url": "https://example.com/a.png"}}]}]}),
        400, "image_url_not_supported")
    assert "data:image" in err["message"]
    assert obr.ollama.chat_bodies() == []


def test_ollama_tool_calls_json(obr):
    reply = obr.client().chat.completions.create(
        model="ollama/llama3.2", tools=TOOLS,
        messages=[{"role": "user", "content": '[tool:get_weather:{"city": "Paris"}]'}])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert obr.ollama.last_chat()["tools"] == TOOLS


def test_ollama_tool_calls_stream(obr):
    with obr.client().chat.completions.stream(
            model="ollama/llama3.2", tools=TOOLS,
            messages=[{"role": "user", "content": '[tool:get_weather:{"city": "Oslo"}]'}]) as s:
        final = s.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    assert final.choices[0].finish_reason == "tool_calls"
    resp = obr.post({**ask('[tool:get_weather:{"city": "Rome"}]'), "tools": TOOLS,
                     "stream": True}, stream=True)
    data, _ = sse_events(resp)
    deltas = [json.loads(d)["choices"][0]["delta"] for d in data[:-1]
              if json.loads(d)["choices"]]
    (tool_delta,) = [d for d in deltas if "tool_calls" in d]
    assert tool_delta["tool_calls"][0]["index"] == 0


def test_ollama_tool_history_maps_back(obr):
    obr.client().chat.completions.create(model="ollama/llama3.2", tools=TOOLS, messages=[
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}])
    assistant, tool = obr.ollama.last_chat()["messages"][1:]
    assert assistant["tool_calls"] == [{"function": {"name": "get_weather",
                                                     "arguments": {"city": "Paris"}}}]
    assert tool == {"role": "tool", "content": "sunny", "tool_name": "get_weather"}


def test_ollama_bad_tool_arguments_are_400(obr):
    err = assert_error(obr.post({"model": "ollama/llama3.2", "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1"}}]}]}),
        400)
    assert err["param"] == "messages[1].tool_calls[0].function.arguments"


def test_ollama_unknown_model_is_404(obr):
    with pytest.raises(openai.NotFoundError) as info:
        obr.client().chat.completions.create(
            model="ollama/nope", messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["code"] == "model_not_found"
    assert "ollama pull nope" in info.value.body["message"]


def test_ollama_unreachable_is_502_naming_the_setting(start):
    br = start(OLLAMA_URL=f"http://127.0.0.1:{closed_port()}", OLLAMA_CONNECT_TIMEOUT="2")
    t0 = time.monotonic()
    for stream in (False, True):
        err = assert_error(br.post({**ask("hi"), "stream": stream}), 502)
        assert "OLLAMA_URL" in err["message"]
    assert time.monotonic() - t0 < 4
    assert br.rows()[-1]["outcome"] == "error"


@pytest.mark.parametrize("marker,status,words", [
    ("busy", 503, "server busy"), ("error-500", 502, "llama runner process"),
    ("badreq", 400, "invalid options")])  # Ollama's 400 is the request's fault
def test_ollama_status_errors(obr, marker, status, words):
    for stream in (False, True):
        err = assert_error(obr.post({**ask(f"[ollama:{marker}]"), "stream": stream}), status)
        assert words in err["message"]
    assert [r["outcome"] for r in obr.rows()] == ["error", "error"]
    assert obr.post(ask("hi")).status_code == 200  # still healthy


@pytest.mark.parametrize("marker,words", [("midstream-error", "unexpected EOF"),
                                          ("no-done", "without finishing")])
def test_ollama_broken_streams_end_with_an_error_event(obr, marker, words):
    with pytest.raises(openai.APIError, match=words):
        for _ in obr.client().chat.completions.create(
                model="ollama/llama3.2", stream=True,
                messages=[{"role": "user", "content": f"[ollama:{marker}]"}]):
            pass
    row = obr.rows()[-1]
    assert (row["outcome"], row["provider"]) == ("error", "ollama")


def test_ollama_disconnect_stops_generation(obr):
    resp = obr.post({**ask("[ollama:slow:100:100]"), "stream": True}, stream=True)
    for line in resp.iter_lines():
        if b"tick1" in line:
            break
    resp.close()
    assert wait_until(lambda: obr.ollama.closed_streams == 1, timeout=5)
    assert wait_until(lambda: obr.ollama.active_streams == 0, timeout=5)
    assert wait_until(lambda: obr.rows() and obr.rows()[-1]["outcome"] == "cancelled")


def test_ollama_timeout_is_504(start, ollama_fake):
    br = start(OLLAMA_URL=ollama_fake.url, OLLAMA_TIMEOUT="1")
    err = assert_error(br.post(ask("[ollama:hang]")), 504)
    assert "OLLAMA_TIMEOUT" in err["message"]


def test_models_include_ollamas_and_survive_ollama_down(obr, start):
    models = {m.id: m for m in obr.client().models.list()}
    assert models["ollama/llama3.2:latest"].owned_by == "ollama"
    assert models["ollama/llama3.2:latest"].created > 1_600_000_000
    assert "claude-code" in models
    down = start(OLLAMA_URL=f"http://127.0.0.1:{closed_port()}")
    ids = [m.id for m in down.client().models.list()]
    assert "claude-code" in ids and not any(i.startswith("ollama/") for i in ids)


def test_health_reports_ollama(obr, start):
    body = requests.get(obr.url + "/health", timeout=10).json()
    assert body["backends"]["ollama"] == {"ok": True, "url": obr.ollama.url,
                                          "version": "0.5.1", "error": None}
    down = start(OLLAMA_URL=f"http://127.0.0.1:{closed_port()}")
    body = requests.get(down.url + "/health", timeout=10).json()
    assert body["backends"]["ollama"]["ok"] is False and body["status"] == "ok"


def test_ollama_session_keeps_history(obr):
    client = obr.client()
    h = {"X-Session-ID": "o-1"}
    client.chat.completions.create(model="ollama/llama3.2", extra_headers=h, messages=[
        {"role": "system", "content": "be kind"}, {"role": "user", "content": "one"}])
    assert obr.post(ask("[ollama:error-500]"), headers=h).status_code == 502
    reply = client.chat.completions.create(
        model="ollama/llama3.2", extra_headers=h, messages=[{"role": "user", "content": "two"}])
    assert "msgs=4" in reply.choices[0].message.content
    sent = obr.ollama.last_chat()["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("system", "be kind"), ("user", "one"),
        ("assistant", "ECHO model=llama3.2 msgs=2 images=0 last=one"), ("user", "two")]


def test_ollama_session_keeps_tool_calls(obr):
    h = {"X-Session-ID": "tools"}
    client = obr.client()
    first = client.chat.completions.create(
        model="ollama/llama3.2", tools=TOOLS, extra_headers=h,
        messages=[{"role": "user", "content": '[tool:get_weather:{"city": "Oslo"}]'}])
    call = first.choices[0].message.tool_calls[0]
    client.chat.completions.create(model="ollama/llama3.2", tools=TOOLS, extra_headers=h,
                                   messages=[{"role": "tool", "tool_call_id": call.id,
                                              "content": "rainy"}])
    sent = obr.ollama.last_chat()["messages"]
    assert sent[1]["tool_calls"][0]["function"] == {"name": "get_weather",
                                                    "arguments": {"city": "Oslo"}}
    assert sent[2] == {"role": "tool", "content": "rainy", "tool_name": "get_weather"}


def test_ollama_session_bounds(start, ollama_fake):
    br = start(OLLAMA_URL=ollama_fake.url, OLLAMA_SESSION_MAX_MESSAGES="4",
               OLLAMA_SESSIONS="2")
    client = br.client()
    h = {"X-Session-ID": "bounded"}
    client.chat.completions.create(model="ollama/llama3.2", extra_headers=h, messages=[
        {"role": "system", "content": "sys"}, {"role": "user", "content": "t1"}])
    for text in ("t2", "t3", "t4"):
        client.chat.completions.create(model="ollama/llama3.2", extra_headers=h,
                                       messages=[{"role": "user", "content": text}])
    sent = ollama_fake.last_chat()["messages"]
    # System kept; only the last 4 stored messages (2 turns) plus the new one.
    assert [m["content"] for m in sent if m["role"] != "assistant"] == ["sys", "t2", "t3", "t4"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user", "assistant",
                                         "user"]
    histories = br.app.bridge.ollama.histories
    for other in ("b", "c"):
        client.chat.completions.create(model="ollama/llama3.2",
                                       extra_headers={"X-Session-ID": other},
                                       messages=[{"role": "user", "content": other}])
    tag = br.app.bridge.store.session_tag
    assert len(histories) == 2 and histories.get(tag("bounded")) == ([], [])
    assert histories.get(tag("c")) != ([], [])


def test_ollama_session_byte_cap_and_expiry(start, ollama_fake):
    br = start(OLLAMA_URL=ollama_fake.url, OLLAMA_SESSION_MAX_KB="1",
               OLLAMA_SESSION_TTL="0.5")
    client = br.client()
    h = {"X-Session-ID": "small"}
    client.chat.completions.create(model="ollama/llama3.2", extra_headers=h,
                                   messages=[{"role": "user", "content": "a" * 300}])
    client.chat.completions.create(model="ollama/llama3.2", extra_headers=h,
                                   messages=[{"role": "user", "content": "b" * 300}])
    tag = br.app.bridge.store.session_tag("small")
    system, kept = br.app.bridge.ollama.histories.get(tag)
    assert [m.text[0] for m in kept if m.role == "user"] == ["b"]
    # (len() expires without touching; get() would count as a use and keep it alive)
    assert wait_until(lambda: len(br.app.bridge.ollama.histories) == 0, timeout=5)
    assert br.app.bridge.ollama.histories.get(tag) == ([], [])


# ----------------------------------------------------------------------------------------
# Usage log, usage API
# ----------------------------------------------------------------------------------------

def test_rows_for_every_outcome_with_units(start, ollama_fake):
    br = start(OLLAMA_URL=ollama_fake.url, CLAUDE_TIMEOUT="1")
    h = {"X-Session-ID": "s-1"}
    br.post(user("hello"), headers=h)
    br.post({"model": "sonnet", "messages": []})                 # 400 after parsing
    requests.post(br.url + "/v1/chat/completions", data=b"{not json", timeout=10)  # no row
    br.post(user("[fake:error-500]"))                            # 502
    br.post(user("[fake:hang]"))                                 # 504
    resp = br.post({**user("[fake:slow:50:50]"), "stream": True}, stream=True)
    for line in resp.iter_lines():
        if b"tick2" in line:
            break
    resp.close()                                                 # cancelled
    assert wait_until(lambda: len(br.rows()) == 5)
    rows = br.rows()
    assert [(r["model"], r["provider"], r["outcome"], r["status"]) for r in rows] == [
        ("claude-code", "claude", "ok", 200), ("sonnet", "claude", "error", 400),
        ("claude-code", "claude", "error", 502), ("claude-code", "claude", "error", 504),
        ("claude-code", "claude", "cancelled", 499)]
    ok, bad, failed, slow, gone = rows
    assert ok["session_id"] == br.app.bridge.store.session_tag("s-1")
    assert ok["request_id"].startswith("chatcmpl-")
    assert (ok["prompt_tokens"], ok["completion_tokens"], ok["total_tokens"],
            ok["cached_tokens"]) == (666, 44, 710, 333)
    assert ok["cost_usd"] == pytest.approx(0.0025006)
    assert ok["ts"][:2] == "20" and ok["duration_ms"] >= ok["ttft_ms"] >= 0
    assert "messages" in bad["error"] and "API Error: 500" in failed["error"]
    assert slow["duration_ms"] >= 900 and "CLAUDE_TIMEOUT" in slow["error"]
    # Tokens known so far (message_start's usage) are kept.
    assert gone["stream"] == 1 and gone["prompt_tokens"] == 666 and gone["cached_tokens"] == 333
    assert all(len(r["error"] or "") <= 500 for r in rows)


def test_a_stream_row_is_written_before_its_last_byte(br):
    resp = br.post({**user("hello"), "stream": True}, stream=True)
    for line in resp.iter_lines():
        if b'"finish_reason":"stop"' in line:
            assert br.rows() and br.rows()[-1]["outcome"] == "ok"
            break
    else:
        pytest.fail("no finish chunk")


def _go_bridge_db(path):
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE requests (id INTEGER PRIMARY KEY AUTOINCREMENT,"
               " ts DATETIME DEFAULT CURRENT_TIMESTAMP, model TEXT, provider TEXT,"
               " prompt_tokens INTEGER, completion_tokens INTEGER, total_tokens INTEGER,"
               " duration_ms INTEGER, is_error INTEGER)")
    rows = [("claude-code", "claude", 10, 5, 15, 100, 0),
            ("claude-code", "claude", 20, 0, 20, 300, 1),
            ("ollama/llama3.2", "ollama", 7, 3, 10, 50, 0)]
    db.executemany("INSERT INTO requests (model, provider, prompt_tokens, completion_tokens,"
                   " total_tokens, duration_ms, is_error) VALUES (?,?,?,?,?,?,?)", rows)
    db.execute("INSERT INTO requests (ts, model, provider, prompt_tokens, completion_tokens,"
               " total_tokens, duration_ms, is_error) VALUES"
               " ('2025-01-02 03:04:05', 'opus', 'claude', 1, 1, 2, 10, 0)")
    db.commit()
    db.close()


def test_go_bridge_database_is_migrated_in_place(start, tmp_path):
    path = tmp_path / "usage.db"
    _go_bridge_db(path)
    br = start(USAGE_DB_PATH=str(path))
    summary = {s["model"]: s for s in requests.get(br.url + "/v1/usage", timeout=10).json()}
    assert summary["claude-code"] == {
        "model": "claude-code", "provider": "claude", "api": "chat", "instance": "",
        "requests": 2, "errors": 1, "prompt_tokens": 30, "completion_tokens": 5,
        "total_tokens": 35,
        "avg_duration_ms": 200.0, "cached_tokens": 0, "cost_usd": 0}
    assert summary["ollama/llama3.2"]["total_tokens"] == 10
    old = requests.get(br.url + "/v1/usage?until=2025-06-01", timeout=10).json()
    assert [(s["model"], s["requests"]) for s in old] == [("opus", 1)]
    br.post(user("hello"))
    summary = {s["model"]: s for s in requests.get(br.url + "/v1/usage", timeout=10).json()}
    assert summary["claude-code"]["requests"] == 3
    assert summary["claude-code"]["total_tokens"] == 35 + 710
    rows = br.rows()
    assert len(rows) == 5 and [r["outcome"] for r in rows[:4]] == ["ok", "error", "ok", "ok"]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(bridge.MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    br.stop()
    again = start(USAGE_DB_PATH=str(path))  # opening a current database changes nothing
    assert len(again.rows()) == 5


def _store_with_rows(tmp_path, monkeypatch, stamps):
    store = bridge.UsageStore(str(tmp_path / "u.db"))
    for i, stamp in enumerate(stamps):
        monkeypatch.setattr(bridge, "_utc_now_text", lambda stamp=stamp: stamp)
        store.record({"request_id": f"r{i}", "model": ["a", "b"][i % 2],
                      "provider": ["claude", "ollama"][i % 3 == 0], "outcome":
                      ["ok", "error", "cancelled"][i % 3], "status": 200,
                      "prompt_tokens": i, "completion_tokens": 2 * i, "cached_tokens": i % 5,
                      "cost_usd": 0.001 * i, "duration_ms": 10 * i})
    return store


def _brute_force(store, since, until):
    db = store.db
    where, params = [], []
    if since:
        where.append("ts >= ?")
        params.append(since)
    if until:
        where.append("ts < ?")
        params.append(until)
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    return {(m, p): (n, e, t, round(c, 7)) for m, p, n, e, t, c in db.execute(
        "SELECT model, provider, COUNT(*), SUM(outcome != 'ok'), SUM(total_tokens),"
        f" TOTAL(cost_usd) FROM requests {clause} GROUP BY 1, 2", params)}


def test_rollup_answers_equal_the_raw_rows(tmp_path, monkeypatch):
    import random
    rnd = random.Random(7)
    stamps = sorted(bridge._ts_text(1_790_000_000 + rnd.random() * 5 * 86400)
                    for _ in range(400))
    store = _store_with_rows(tmp_path, monkeypatch, stamps)
    cuts = [None] + [bridge._ts_text(1_790_000_000 + rnd.random() * 5 * 86400)
                     for _ in range(30)] + ["2026-11-11 11:00:00.000"]
    for since in cuts:
        for until in cuts:
            if since and until and since >= until:
                continue
            got = {(s["model"], s["provider"]): (s["requests"], s["errors"], s["total_tokens"],
                                                 s["cost_usd"])
                   for s in store.summary(since=since, until=until)}
            assert got == _brute_force(store, since, until), (since, until)
    series = store.timeseries("hour", since=cuts[3])
    assert sum(b["requests"] for b in series) == sum(
        v[0] for v in _brute_force(store, cuts[3], None).values())
    assert all(b["bucket"].endswith(":00:00Z") for b in series)
    days = store.timeseries("day")
    assert sum(b["requests"] for b in days) == 400
    store.close()


def test_usage_filters_recent_and_timeseries(start, ollama_fake):
    br = start(OLLAMA_URL=ollama_fake.url)
    for body in (user("hello"), user("[fake:error-401]"), ask("hi")):
        br.post(body)
    get = lambda path: requests.get(br.url + path, timeout=10)  # noqa: E731
    assert [s["model"] for s in get("/v1/usage?provider=ollama").json()] == ["ollama/llama3.2"]
    assert get("/v1/usage?model=claude-code").json()[0]["errors"] == 1
    assert get("/v1/usage?since=1h").json() and not get("/v1/usage?until=1h").json()
    assert get("/v1/usage?since=2020-01-01T00:00:00Z&until=2999-01-01").json()
    recent = get("/v1/usage/recent?limit=2").json()
    assert [r["model"] for r in recent] == ["ollama/llama3.2", "claude-code"]
    assert recent[1]["outcome"] == "error" and "Invalid API key" in recent[1]["error"]
    assert recent[0]["ts"].endswith("Z") and "T" in recent[0]["ts"]
    assert recent[0]["stream"] is False
    for bucket, since in (("minute", "1h"), ("hour", "24h"), ("day", None)):
        series = get(f"/v1/usage/timeseries?bucket={bucket}"
                     + (f"&since={since}" if since else "")).json()
        assert sum(b["requests"] for b in series) == 3
        assert series[-1]["total_tokens"] == 710 + 15


@pytest.mark.parametrize("path,param", [
    ("/v1/usage?since=yesterday", "since"), ("/v1/usage?until=13/01/2025", "until"),
    ("/v1/usage?since=1h&until=2h", "since"), ("/v1/usage?provider=openai", "provider"),
    ("/v1/usage/recent?limit=0", "limit"), ("/v1/usage/recent?limit=5000", "limit"),
    ("/v1/usage/recent?limit=ten", "limit"), ("/v1/usage/timeseries?bucket=week", "bucket"),
    ("/v1/usage/timeseries?bucket=minute", "since"),
    ("/v1/usage/timeseries?bucket=minute&since=30d", "since"),
    ("/v1/usage/recent?limit=5&limit=", "limit"), ("/v1/usage?model=a&model=b", "model")])
def test_bad_usage_filters_are_400(br, path, param):
    assert assert_error(requests.get(br.url + path, timeout=10), 400)["param"] == param


def test_usage_routes_need_the_key(start):
    br = start(CLAUDE_AUTH_KEY="k")
    for path in ("/v1/usage", "/v1/usage/recent", "/v1/usage/timeseries"):
        assert_error(requests.get(br.url + path, timeout=10), 401)
        ok = requests.get(br.url + path, headers={"Authorization": "Bearer k"}, timeout=10)
        assert ok.status_code == 200 and ok.json() == []
    page = requests.get(br.url + "/dashboard", timeout=10)  # the page holds no data
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]


def test_unwritable_database_never_stops_requests(br, caplog):
    store = br.app.bridge.store
    with store.lock:
        store.db.execute("PRAGMA query_only = 1")  # writes now fail, as on a read-only disk
    reply = br.client().chat.completions.create(
        model="claude-code", messages=[{"role": "user", "content": "hello"}])
    assert reply.choices[0].message.content == REPLY
    health = requests.get(br.url + "/health", timeout=10).json()
    assert health["status"] == "degraded" and not health["database"]["ok"]
    assert "readonly" in health["database"]["error"]
    assert "usage db" in caplog.text and "readonly" in caplog.text
    with store.lock:
        store.db.execute("PRAGMA query_only = 0")
    br.post(user("hello"))
    assert requests.get(br.url + "/health", timeout=10).json()["database"]["ok"]
    assert len(br.rows()) == 1  # the row written while the disk was back


def test_database_that_cannot_be_opened_never_stops_requests(start, tmp_path):
    br = start(USAGE_DB_PATH=str(tmp_path / "missing-dir" / "usage.db"))
    assert br.post(user("hello")).status_code == 200
    health = requests.get(br.url + "/health", timeout=10).json()
    assert health["database"]["ok"] is False and "open failed" in health["database"]["error"]
    assert requests.get(br.url + "/v1/usage", timeout=10).json() == []


# ----------------------------------------------------------------------------------------
# Start-up safety and graceful stop (the real `python bridge.py` process)
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "myhost.example"])
def test_skip_perms_without_key_on_a_public_address_is_refused(host):
    with pytest.raises(bridge.SettingsError, match="run commands as this user"):
        bridge.load_settings(environ={"HOST": host, "CLAUDE_SKIP_PERMS": "true"})
    bridge.load_settings(environ={"HOST": host, "CLAUDE_SKIP_PERMS": "true",
                                  "CLAUDE_AUTH_KEY": "k"})
    bridge.load_settings(environ={"HOST": host, "CLAUDE_AUTH_KEY": "k"})
    with pytest.raises(bridge.SettingsError, match="ALLOW_EXPOSED_WITHOUT_KEY"):
        bridge.load_settings(environ={"HOST": host})
    bridge.load_settings(environ={"HOST": host, "ALLOW_EXPOSED_WITHOUT_KEY": "true"})
    with pytest.raises(bridge.SettingsError, match="run commands as this user"):
        bridge.load_settings(environ={"HOST": host, "ALLOW_EXPOSED_WITHOUT_KEY": "true",
                                      "CLAUDE_SKIP_PERMS": "true"})
    for loopback in ("127.0.0.1", "::1", "localhost"):
        bridge.load_settings(environ={"HOST": loopback, "CLAUDE_SKIP_PERMS": "true"})


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_drains_in_flight_requests_then_ends_children(bridge_process, signum):
    bp = bridge_process(SHUTDOWN_TIMEOUT="3")
    results = {}

    def call(name, prompt):
        try:
            resp = requests.post(bp.url + "/v1/chat/completions", stream=True, timeout=30,
                                 json={**user(prompt), "stream": True})
            results[name] = [line for line in resp.iter_lines() if line]
        except requests.RequestException as exc:
            results[name] = exc

    threads = [threading.Thread(target=call, args=("slow", "[fake:slow:10:150]")),
               threading.Thread(target=call, args=("hang", "[fake:hang]"))]
    for t in threads:
        t.start()
    assert wait_until(lambda: len(bp.runs()) == 2)
    t0 = time.monotonic()
    bp.proc.send_signal(signum)

    def refused():
        try:
            requests.get(bp.url + "/health", timeout=2)
        except requests.ConnectionError:
            return True
        return False

    assert wait_until(refused, timeout=2)  # no longer accepting
    for t in threads:
        t.join(15)
    assert bp.proc.wait(timeout=15) == 0
    took = time.monotonic() - t0
    assert results["slow"][-1] == b"data: [DONE]"  # finished within the grace period
    assert b"[DONE]" not in b"".join(results["hang"]) if isinstance(results["hang"], list) \
        else True
    assert 2.5 < took < 10
    for run in bp.runs():
        assert not alive(run["pid"])
    db = sqlite3.connect(bp.tmp / "usage.db")
    outcomes = sorted(r[0] for r in db.execute("SELECT outcome FROM requests"))
    db.close()
    assert outcomes == ["error", "ok"]
    assert "stopped" in bp.lines[-1]


def test_start_up_refuses_an_exposed_unauthenticated_skip_perms(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "bridge.py"), "--host", "0.0.0.0",
                          "--claude-skip-perms", "true"], capture_output=True, text=True,
                         timeout=30, env={**os.environ, "USAGE_DB_PATH": str(tmp_path / "u.db")})
    assert out.returncode == 2 and "CLAUDE_AUTH_KEY" in out.stderr
    assert "Traceback" not in out.stderr


def test_logs_never_show_the_key(bridge_process):
    bp = bridge_process(CLAUDE_AUTH_KEY="s3cret-key-value")
    requests.get(bp.url + "/v1/models", headers={"Authorization": "Bearer s3cret-key-value"},
                 timeout=10)
    requests.get(bp.url + "/v1/models", headers={"Authorization": "Bearer wrong-key-value"},
                 timeout=10)
    requests.post(bp.url + "/v1/chat/completions", json=user("[fake:error-401]"),
                  headers={"Authorization": "Bearer s3cret-key-value"}, timeout=30)
    bp.proc.send_signal(signal.SIGTERM)
    bp.proc.wait(timeout=15)
    bp.reader.join(5)
    text = "".join(bp.lines)
    assert "auth: on" in text
    assert "s3cret-key-value" not in text and "wrong-key-value" not in text


# ----------------------------------------------------------------------------------------
# Hardening: load, faults, hostile input
# ----------------------------------------------------------------------------------------

def test_load_at_ci_size():
    from testkit import load
    lines = []
    figures = load.run(streams=100, total=1000, concurrency=25, kill_total=300,
                       out=lines.append)
    print("\n".join(lines))
    held = figures["held"]
    assert held["errors"] == 0 and held["peak_at_once"] == 100
    mixed = figures["mixed"]
    assert mixed["wrong_status"] == 0
    assert mixed["rows"] == mixed["expected_outcomes"]  # every request is one row
    before, after = figures["growth"]["before"], figures["growth"]["after"]
    # No CLI left behind: only idle ones may wait (warm and kept, CLAUDE_IDLE_MAX = 4 in
    # all), beside the reaper.
    assert after["children"] <= 4 + 1
    assert after["fds"] <= before["fds"] + 10
    assert after["threads"] <= before["threads"] + 10
    assert after["rss_mib"] <= before["rss_mib"] + 25
    kill = figures["kill"]
    assert kill["integrity"] == "ok" and kill["missing"] == 0 and kill["completed"] > 0


def test_cli_killed_by_someone_else_mid_stream(br):
    resp = br.post({**user("[fake:slow:100:100]"), "stream": True}, stream=True)
    data = []
    for line in resp.iter_lines():
        if line:
            data.append(line)
        if b"tick1" in line:
            os.kill(_first_run(br)["pid"], signal.SIGKILL)
    err = json.loads(data[-1][6:])["error"]
    assert "signal 9" in err["message"] and b"data: [DONE]" not in data
    assert br.rows()[-1]["outcome"] == "error"
    assert requests.get(br.url + "/health", timeout=10).json()["status"] == "ok"
    assert br.post(user("hello")).status_code == 200


@pytest.mark.parametrize("value", ["--dangerously-skip-permissions", "-p", "--resume x",
                                   "$(rm -rf ~)", "a" * 128])
def test_session_ids_shaped_like_flags_never_reach_argv(br, value):
    reply = br.post(user("hello"), headers={"X-Session-ID": value})
    assert reply.status_code == 200
    (run,) = br.chat_runs()
    argv = run["argv"]
    # The fixed flags, then the bridge's own UUID: nothing of the header's value.
    assert argv[:7] == FIXED_ARGV
    assert len(argv) == 9 and argv[7] == "--session-id" and uuid.UUID(argv[8])


@pytest.mark.parametrize("raw", [b"a\x00b", b"a\nb", b"x" * 10_000])
def test_session_id_with_nul_newline_or_10kb_is_refused(br, raw):
    body = json.dumps(user("hi")).encode()
    sock = socket.create_connection(("127.0.0.1", br.server.effective_port), timeout=10)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                 b"Content-Type: application/json\r\nX-Session-ID: " + raw + b"\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    sock.close()
    status = int(answer.split(b" ", 2)[1])
    assert 400 <= status < 500
    assert br.chat_runs() == []


@pytest.mark.parametrize("header", ["bearer secret", "BEARER secret", "Bearer  secret",
                                    "Bearer secret  "])
def test_auth_scheme_is_case_insensitive_and_spacing_tolerant(start, header):
    br = start(CLAUDE_AUTH_KEY="secret")
    resp = requests.get(br.url + "/v1/usage/recent", headers={"Authorization": header},
                        timeout=10)
    assert resp.status_code == 200


@pytest.mark.parametrize("header", [None, "", "secret", "Bearer", "Bearer wrong",
                                    "Bearer secret extra", "Basic c2VjcmV0", "Token secret",
                                    "Bearer\tsecret", "Bearer secre"])
def test_auth_refuses_every_route_but_health(start, header):
    br = start(CLAUDE_AUTH_KEY="secret")
    headers = {} if header is None else {"Authorization": header}
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
                         ("GET", "/v1/chat/completions"), ("GET", "/v1/usage"),
                         ("GET", "/v1/usage/recent"), ("GET", "/v1/usage/timeseries"),
                         ("DELETE", "/v1/usage"), ("GET", "/nowhere")):
        resp = requests.request(method, br.url + path, headers=headers, json=user("hi"),
                                timeout=10)
        assert_error(resp, 401, "invalid_api_key")
    assert requests.get(br.url + "/health", headers=headers, timeout=10).status_code == 200
    assert br.rows() == [] and br.chat_runs() == []


def test_fuzzed_bodies_never_get_a_5xx(start, ollama_fake):
    from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
    br = start(OLLAMA_URL=ollama_fake.url)
    scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
               | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                          max_leaves=12)
    parts = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "audio"])
                                   | st.text(max_size=5)},
                                  optional={"text": values, "image_url": values})
    message = st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool"])
         | values},
        optional={"content": values | st.text(max_size=50) | st.lists(parts, max_size=3),
                  "tool_calls": values, "tool_call_id": values})
    models = st.sampled_from(["claude-code", "sonnet", "ollama/llama3.2", "ollama/nope",
                              "ollama/", "-p", "a b", "x" * 300]) | values
    chat = st.fixed_dictionaries(
        {"messages": st.lists(message, max_size=3) | values},
        optional={k: values for k in ("stream", "n", "temperature", "top_p", "max_tokens",
                                      "stop", "seed", "tools", "response_format",
                                      "stream_options", "max_completion_tokens")}
        | {"model": models})

    @hsettings(max_examples=250, deadline=None, derandomize=True,
               suppress_health_check=list(HealthCheck))
    @given(st.one_of(values, chat))
    def check(body):
        resp = requests.post(br.url + "/v1/chat/completions", timeout=30,
                             data=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})
        assert resp.status_code < 500, (body, resp.text)
        if resp.status_code >= 400:
            assert_error(resp, resp.status_code)
        elif body.get("stream") is True if isinstance(body, dict) else False:
            assert resp.text.rstrip().endswith("data: [DONE]")
        else:
            assert resp.json()["object"] == "chat.completion"

    check()
    assert requests.get(br.url + "/health", timeout=10).json()["status"] == "ok"


def test_fuzzed_methods_paths_and_headers_never_get_a_5xx(br):
    from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
    # What an HTTP client can send: visible ASCII, no surrounding spaces.
    header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126),
                          max_size=200).filter(lambda v: v == v.strip())

    @hsettings(max_examples=200, deadline=None, derandomize=True,
               suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]),
           st.sampled_from(["/v1/chat/completions", "/v1/models", "/v1/usage", "/health",
                            "/v1/usage/recent", "/v1/usage/timeseries", "/dashboard", "/"])
           | st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=30)
           .map(lambda p: "/" + p.lstrip("/")),
           st.dictionaries(st.sampled_from(["X-Session-ID", "Content-Type", "Accept",
                                            "Content-Encoding", "Authorization",
                                            "Transfer-Encoding-X"]), header_text),
           st.binary(max_size=300))
    def check(method, path, headers, body):
        resp = requests.request(method, br.url + path, headers=headers, data=body,
                                timeout=30)
        assert resp.status_code < 500, (method, path, headers, body, resp.text)
        if resp.status_code >= 400 and method != "HEAD":
            assert set(resp.json()["error"]) == {"message", "type", "param", "code"}

    check()
    assert requests.get(br.url + "/health", timeout=10).json()["status"] == "ok"


def test_huge_body_is_413_and_chunked_bodies_work(start):
    br = start(MAX_BODY_MB="2")
    assert_error(requests.post(br.url + "/v1/chat/completions", data=b"x" * (3 << 20),
                               timeout=30), 413)

    def chunks():
        yield json.dumps(user("hello")).encode()

    resp = requests.post(br.url + "/v1/chat/completions", data=chunks(), timeout=30,
                         headers={"Content-Type": "application/json"})
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"] == REPLY


# ----------------------------------------------------------------------------------------
# Warm Claude processes
# ----------------------------------------------------------------------------------------

def _idle_warm(br, count=1):
    """Wait until `count` warm CLIs wait in the pool; their fake-log records."""
    pool = br.app.bridge.claude.pool

    def waiting():
        return [r for r in br.chat_runs() if not r.get("turns") and alive(r["pid"])]

    assert wait_until(lambda: pool.count() == count and len(waiting()) == count)
    return waiting()


def test_warm_cli_serves_the_next_stateless_request(start):
    br = start(CLAUDE_WARM_POOL="1")
    client = br.client()
    first = client.chat.completions.create(model="claude-code",
                                           messages=[{"role": "user", "content": "one"}])
    assert first.choices[0].message.content.endswith("to: one")
    (warm,) = _idle_warm(br)
    second = client.chat.completions.create(model="claude-code",
                                            messages=[{"role": "user", "content": "two"}])
    assert second.choices[0].message.content.endswith("to: two")
    served = {r["pid"]: r for r in br.chat_runs()}[warm["pid"]]
    assert served["turns"] == ["two"]  # the pre-started CLI got the request
    assert wait_until(lambda: not alive(warm["pid"]))  # ... and ended after it
    (refill,) = _idle_warm(br)
    assert refill["pid"] != warm["pid"]
    assert all(len(r.get("turns", [])) <= 1 for r in br.chat_runs())


def test_warm_cli_streams_and_is_keyed_by_model_and_system_prompt(start):
    br = start(CLAUDE_WARM_POOL="1")
    client = br.client()
    client.chat.completions.create(model="claude-code",
                                   messages=[{"role": "user", "content": "one"}])
    (warm,) = _idle_warm(br)
    # Another system prompt or model never gets that CLI: it started with other flags.
    client.chat.completions.create(model="claude-code", messages=[
        {"role": "system", "content": "be terse"}, {"role": "user", "content": "two"}])
    client.chat.completions.create(model="sonnet",
                                   messages=[{"role": "user", "content": "three"}])
    runs = {r["pid"]: r for r in br.chat_runs()}
    assert not runs[warm["pid"]].get("turns")
    chunks = list(client.chat.completions.create(
        model="claude-code", stream=True, messages=[{"role": "user", "content": "four"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.endswith("to: four")
    runs = {r["pid"]: r for r in br.chat_runs()}
    assert runs[warm["pid"]]["turns"] == ["four"]
    assert "--append-system-prompt=be terse" not in runs[warm["pid"]]["argv"]


def test_only_configured_models_and_keys_used_often_get_warm_clis(start):
    br = start(CLAUDE_WARM_POOL="1", CLAUDE_WARM_AFTER="3", CLAUDE_WARM_MODELS="claude-code")
    client = br.client()
    pool = br.app.bridge.claude.pool

    def ask(model, text):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])
    for n in range(2):  # a model used twice: no warm CLI for it
        ask("gpt-4o-mini", f"m{n}")
    time.sleep(0.3)  # (a refill would have started by now)
    assert pool.count() == 0
    ask("gpt-4o-mini", "m2")  # the third use
    (warm,) = _idle_warm(br)
    assert "--model=gpt-4o-mini" in warm["argv"]
    ask("claude-code", "once")  # a configured model: warm from its first use
    assert wait_until(lambda: pool.count() == 2)


def test_warm_and_kept_clis_stay_under_claude_idle_max(start):
    br = start(CLAUDE_WARM_POOL="1", CLAUDE_IDLE_MAX="1", CLAUDE_SESSION_KEEPALIVE="30")
    client, claude = br.client(), br.app.bridge.claude
    client.chat.completions.create(model="claude-code",
                                   messages=[{"role": "user", "content": "one"}])
    (warm,) = _idle_warm(br)
    client.chat.completions.create(model="claude-code", extra_headers={"X-Session-ID": "s"},
                                   messages=[{"role": "user", "content": "two"}])
    # The session's CLI is kept; the warm one made room for it and is not refilled.
    assert wait_until(lambda: not alive(warm["pid"]))
    assert (claude.live.count(), claude.pool.count()) == (1, 0)
    time.sleep(0.3)
    assert claude.pool.count() == 0


def test_model_aliases_run_another_cli_model_under_the_clients_name(start):
    br = start(MODEL_ALIASES="gpt-4o=sonnet")
    reply = br.client().chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert reply.model == "gpt-4o" and "model=claude-sonnet-5-5" in reply.choices[0].message.content
    (run,) = br.chat_runs()
    assert "--model=sonnet" in run["argv"]
    assert "gpt-4o" in [m.id for m in br.client().models.list().data]
    assert br.rows()[-1]["model"] == "gpt-4o"


def test_separate_assistant_messages_are_separate_paragraphs_and_tools_are_notes(br):
    reply = br.client().chat.completions.create(
        model="claude-code", messages=[{"role": "user", "content": "[fake:tool-use] go"}])
    message = reply.choices[0].message
    first, second = message.content.split("\n\n")
    assert first and second and not first.endswith("\n")
    notes = message.model_extra["reasoning_content"].splitlines()
    assert len(notes) == 1 and notes[0].split()[0] in ("Bash:", "Read", "Write", "Glob:")


def test_warm_clis_count_within_the_concurrency_cap(start):
    br = start(CLAUDE_WARM_POOL="1", CLAUDE_MAX_CONCURRENCY="1", CLAUDE_QUEUE_TIMEOUT="5")
    client = br.client()
    client.chat.completions.create(model="claude-code",
                                   messages=[{"role": "user", "content": "one"}])
    (warm,) = _idle_warm(br)  # it holds the only slot
    reply = client.chat.completions.create(model="sonnet",
                                           messages=[{"role": "user", "content": "two"}])
    assert reply.choices[0].message.content.endswith("to: two")
    assert wait_until(lambda: not alive(warm["pid"]))  # gave its slot up


def test_a_warm_cli_that_died_is_never_used(start):
    br = start(CLAUDE_WARM_POOL="1")
    client = br.client()
    client.chat.completions.create(model="claude-code",
                                   messages=[{"role": "user", "content": "one"}])
    (warm,) = _idle_warm(br)
    os.kill(warm["pid"], signal.SIGKILL)
    reply = client.chat.completions.create(model="claude-code",
                                           messages=[{"role": "user", "content": "two"}])
    assert reply.choices[0].message.content.endswith("to: two")


def test_disconnect_on_a_warm_cli_ends_it_and_shutdown_ends_idle_ones(start):
    br = start(CLAUDE_WARM_POOL="1")
    br.post(user("one"))
    (warm,) = _idle_warm(br)
    resp = br.post({**user("[fake:slow:100:100]"), "stream": True}, stream=True)
    for line in resp.iter_lines():
        if b"tick1" in line:
            break
    resp.close()
    assert wait_until(lambda: not alive(warm["pid"]), timeout=8)
    (refill,) = _idle_warm(br)
    br.stop()
    assert wait_until(lambda: not alive(refill["pid"]), timeout=8)


def test_a_sessions_cli_stays_running_between_turns(start):
    br = start(CLAUDE_SESSION_KEEPALIVE="30")
    client = br.client()
    h = {"X-Session-ID": "live"}
    for text in ("one", "two", "three"):
        reply = client.chat.completions.create(model="claude-code", extra_headers=h,
                                               messages=[{"role": "user", "content": text}])
    assert "msgs=6" in reply.choices[0].message.content
    (run,) = br.chat_runs()  # one CLI served the three turns
    assert run["turns"] == ["one", "two", "three"] and alive(run["pid"])
    assert "--session-id" in run["argv"]
    rows = br.rows()
    assert [r["cost_usd"] for r in rows] == pytest.approx([0.0025006] * 3)
    # A stream on the kept CLI, then another session's turns run beside it.
    chunks = list(client.chat.completions.create(
        model="claude-code", stream=True, extra_headers=h,
        messages=[{"role": "user", "content": "four"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks
                   if c.choices).endswith("to: four")
    assert len(br.chat_runs()) == 1
    br.stop()
    assert wait_until(lambda: not alive(run["pid"]))


def test_an_idle_sessions_cli_expires_then_the_session_resumes(start):
    br = start(CLAUDE_SESSION_KEEPALIVE="0.5")
    h = {"X-Session-ID": "short"}
    br.post(user("one"), headers=h)
    (first,) = br.chat_runs()
    assert wait_until(lambda: not alive(first["pid"]), timeout=5)
    reply = br.post(user("two"), headers=h).json()
    assert "msgs=4" in reply["choices"][0]["message"]["content"]
    second = [r for r in br.chat_runs() if r["pid"] != first["pid"]][0]
    assert "--resume" in second["argv"]


def test_a_kept_cli_is_dropped_when_it_died_or_the_flags_changed(start):
    br = start(CLAUDE_SESSION_KEEPALIVE="30")
    h = {"X-Session-ID": "fragile"}
    br.post(user("one"), headers=h)
    (first,) = br.chat_runs()
    os.kill(first["pid"], signal.SIGKILL)
    reply = br.post(user("two"), headers=h).json()
    assert "msgs=4" in reply["choices"][0]["message"]["content"]
    runs = br.chat_runs()
    assert len(runs) == 2 and "--resume" in runs[1]["argv"]
    reply = br.post({**user("three"), "model": "sonnet"}, headers=h).json()
    assert "model=claude-sonnet-5-5" in reply["choices"][0]["message"]["content"]
    runs = br.chat_runs()
    assert len(runs) == 3 and "--model=sonnet" in runs[2]["argv"]
    assert wait_until(lambda: not alive(runs[1]["pid"]))


def test_kept_clis_give_their_slot_to_other_requests(start):
    br = start(CLAUDE_SESSION_KEEPALIVE="30", CLAUDE_MAX_CONCURRENCY="1",
               CLAUDE_QUEUE_TIMEOUT="5")
    br.post(user("one"), headers={"X-Session-ID": "a"})
    (kept,) = br.chat_runs()
    assert br.post(user("other"), headers={"X-Session-ID": "b"}).status_code == 200
    assert wait_until(lambda: not alive(kept["pid"]))
    reply = br.post(user("two"), headers={"X-Session-ID": "a"}).json()
    assert "msgs=4" in reply["choices"][0]["message"]["content"]  # resumed


def test_disconnect_mid_turn_on_a_kept_cli_ends_it(start):
    br = start(CLAUDE_SESSION_KEEPALIVE="30")
    h = {"X-Session-ID": "cut"}
    br.post(user("one"), headers=h)
    (kept,) = br.chat_runs()
    resp = br.post({**user("[fake:slow:100:100]"), "stream": True}, headers=h, stream=True)
    for line in resp.iter_lines():
        if b"tick1" in line:
            break
    resp.close()
    assert wait_until(lambda: not alive(kept["pid"]), timeout=8)
    reply = br.post(user("two"), headers=h).json()
    assert reply["choices"][0]["message"]["content"].startswith("FAKE-REPLY")


# ----------------------------------------------------------------------------------------
# Metrics, request ids, logs, packaging
# ----------------------------------------------------------------------------------------

def _metrics(br, headers=None):
    from prometheus_client.parser import text_string_to_metric_families
    resp = requests.get(br.url + "/metrics", headers=headers or {}, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(resp.text)}


def _sample(families, family, name=None, **labels):
    for s in families[family].samples:
        if (name is None or s.name == name) and all(s.labels.get(k) == v
                                                    for k, v in labels.items()):
            return s.value
    return None


def test_metrics_parse_with_the_prometheus_client(start, ollama_fake):
    br = start(OLLAMA_URL=ollama_fake.url, CLAUDE_WARM_POOL="1")
    br.post(user("hello"))
    br.post(user("[fake:error-401]"))
    br.post({**ask("hi"), "stream": True})
    br.post({"model": "<script>", "messages": []})
    _idle_warm(br)
    m = _metrics(br)
    assert _sample(m, "bridge_requests", model="claude-code", outcome="ok") == 1
    assert _sample(m, "bridge_requests", model="claude-code", outcome="error") == 1
    assert _sample(m, "bridge_requests", model="ollama/llama3.2", provider="ollama") == 1
    assert _sample(m, "bridge_requests", model="invalid", outcome="error") == 1
    assert _sample(m, "bridge_tokens", model="claude-code", kind="prompt") == 666
    assert _sample(m, "bridge_tokens", model="claude-code", kind="cached") == 333
    assert _sample(m, "bridge_cost_usd", model="claude-code") == pytest.approx(0.0025006)
    assert _sample(m, "bridge_request_duration_seconds", "bridge_request_duration_seconds_count",
                   provider="claude") == 3  # the 400 counts too
    assert _sample(m, "bridge_time_to_first_token_seconds",
                   "bridge_time_to_first_token_seconds_count", provider="ollama") == 1
    assert _sample(m, "bridge_requests_in_flight") == 0
    assert _sample(m, "bridge_claude_processes_warm") == 1
    assert _sample(m, "bridge_claude_processes_running") == 0
    assert _sample(m, "bridge_ollama_up") == 1 and _sample(m, "bridge_database_up") == 1


def test_metrics_need_the_key_unless_opened_for_loopback(start):
    br = start(CLAUDE_AUTH_KEY="k")
    assert_error(requests.get(br.url + "/metrics", timeout=10), 401)
    assert _metrics(br, {"Authorization": "Bearer k"})
    opened = start(CLAUDE_AUTH_KEY="k", METRICS_LOOPBACK_OPEN="true")
    assert _metrics(opened)
    assert_error(requests.get(opened.url + "/v1/usage", timeout=10), 401)  # only /metrics


def test_request_ids_are_kept_or_made_and_stored(br):
    given = br.post(user("hello"), headers={"X-Request-ID": "trace-42.a"})
    assert given.headers["X-Request-ID"] == "trace-42.a"
    made = br.post(user("hello"), headers={"X-Request-ID": "no spaces allowed\t!"})
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-ID"])
    for resp in (requests.get(br.url + "/health", timeout=10),
                 requests.get(br.url + "/nope", timeout=10),
                 br.post({"messages": []}),
                 br.post({**user("hello"), "stream": True})):
        assert resp.headers["X-Request-ID"]
    rows = br.rows()
    assert rows[0]["x_request_id"] == "trace-42.a"
    assert rows[1]["x_request_id"] == made.headers["X-Request-ID"]
    recent = requests.get(br.url + "/v1/usage/recent", timeout=10).json()
    assert recent[-1]["x_request_id"] == "trace-42.a"


def test_one_log_line_per_request_with_its_request_id(bridge_process):
    bp = bridge_process(CLAUDE_AUTH_KEY="sekrit")
    key = {"Authorization": "Bearer sekrit"}
    requests.post(bp.url + "/v1/chat/completions", json=user("hello"), timeout=30,
                  headers={**key, "X-Request-ID": "abc-1"})
    requests.get(bp.url + "/v1/models", headers=key, timeout=10)
    # A stream that fails after its 200 went out is logged with the status of its row.
    requests.post(bp.url + "/v1/chat/completions", timeout=30, headers={
        **key, "X-Request-ID": "broken-1"}, json={**user("[fake:midstream-error]"),
                                                  "stream": True})
    bp.proc.send_signal(signal.SIGTERM)
    bp.proc.wait(timeout=15)
    bp.reader.join(5)
    text = "".join(bp.lines)
    chat, broken = [line for line in bp.lines if "POST /v1/chat/completions" in line]
    assert re.search(r" 200 \d+ms model=claude-code tokens=710 rid=abc-1$", chat.strip())
    assert re.search(r" 502 \d+ms model=claude-code tokens=\d+ rid=broken-1$", broken.strip())
    assert any("GET /v1/models 200" in line for line in bp.lines)
    assert "sekrit" not in text
    banner = bp.lines[0] + bp.lines[1]
    assert "listening on http://127.0.0.1:" in banner and "auth: on" in banner


def test_pip_install_gives_a_claude_bridge_command(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("bridge.py", "dashboard.html", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # As a user would: the build backend and the three dependencies come from PyPI.
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(src)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    version = subprocess.run([str(venv / "bin" / "claude-bridge"), "--version"],
                             capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == f"claude-bridge {bridge.__version__}"
    proc = subprocess.Popen([str(venv / "bin" / "claude-bridge"), "--port", "0",
                             "--usage-db-path", str(tmp_path / "u.db")],
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        for line in proc.stderr:
            match = re.search(r"listening on (http://127.0.0.1:\d+)/v1", line)
            if match:
                break
        page = requests.get(match.group(1) + "/dashboard", timeout=10)
        assert page.status_code == 200 and b"claude-bridge" in page.content
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# ----------------------------------------------------------------------------------------
# Found by trying it as a new user would
# ----------------------------------------------------------------------------------------

def test_ci_runs_the_readmes_test_command_exactly():
    readme = (ROOT / "README.md").read_text()
    (command,) = [c for c in re.findall(r"```sh\n(.*?)\n```", readme, re.S) if "pytest" in c]
    assert "venv" in command  # Debian's system Python refuses a plain `pip install`
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == command


@pytest.mark.parametrize("name,value,words", [
    ("PORT", "abc", "expected a whole number from 0 to 65535"),
    ("THREADS", "1.5", "expected a whole number from 4 to 1024"),
    ("CLAUDE_TIMEOUT", "soon", "expected seconds, more than 0 to 86400"),
    ("CLAUDE_TIMEOUT", "nan", "expected seconds, more than 0 to 86400")])
def test_bad_numbers_say_what_the_setting_accepts(name, value, words):
    with pytest.raises(bridge.SettingsError) as info:
        bridge.load_settings(environ={name: value})
    assert str(info.value) == f"{name}={value!r} is not valid: {words}"


def test_a_port_in_use_is_one_line_naming_port(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        out = subprocess.run(
            [sys.executable, str(ROOT / "bridge.py")], capture_output=True, text=True,
            timeout=30, env={**os.environ, "PORT": str(taken.getsockname()[1]),
                             "CLAUDE_BIN": str(FAKE_CLAUDE), "CLAUDE_WARM_POOL": "0",
                             "USAGE_DB_PATH": str(tmp_path / "u.db")})
    finally:
        taken.close()
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert "PORT" in line and "in use" in line


def test_a_second_ctrl_c_stops_at_once(bridge_process):
    bp = bridge_process(SHUTDOWN_TIMEOUT="60")
    answers = []

    def in_flight():  # cut short: an error status, or the connection closed under it
        try:
            answers.append(requests.post(bp.url + "/v1/chat/completions", timeout=60,
                                         json=user("[fake:slow:300:100]")).status_code)
        except requests.RequestException:  # reset, or a chunked body cut short
            answers.append("closed")

    sender = threading.Thread(target=in_flight)
    sender.start()
    assert wait_until(lambda: bp.runs())
    bp.proc.send_signal(signal.SIGINT)
    assert wait_until(lambda: any("SIGINT: stopping" in line for line in bp.lines))
    started = time.monotonic()
    bp.proc.send_signal(signal.SIGINT)
    assert bp.proc.wait(timeout=15) == 0
    assert time.monotonic() - started < 8  # not the 30 s stream, not the 60 s grace
    assert wait_until(lambda: not any(alive(r["pid"]) for r in bp.runs()))
    sender.join(10)
    assert answers and answers[0] != 200


def test_the_root_points_to_the_api_the_dashboard_and_the_description(br):
    body = requests.get(br.url + "/", timeout=10).json()
    assert body["links"]["dashboard"] == "/dashboard" and body["links"]["models"] == \
        "/v1/models" and body["links"]["openapi"] == "/openapi.json"
    for link in body["links"].values():
        if link != "/v1":
            assert requests.get(br.url + link, timeout=10).status_code == 200, link


def test_since_with_a_z_works_on_every_python():
    # Python 3.10's datetime.fromisoformat refuses "Z"; the usage API's own example has it.
    assert bridge.parse_time("2026-11-25T10:00:00Z", "since") == \
        bridge.parse_time("2026-11-25T10:00:00+00:00", "since") == "2026-11-25 10:00:00.000"


def test_a_failed_turn_of_a_kept_session_cli_fails_fast(start):
    br = start(CLAUDE_SESSION_KEEPALIVE="30")
    h = {"X-Session-ID": "fails"}
    assert br.post(user("hello"), headers=h).status_code == 200
    started = time.monotonic()
    assert_error(br.post(user("[fake:error-401]"), headers=h), 502)
    assert time.monotonic() - started < 1.5  # was 4.2 s: two 2 s waits on an open stdin


def test_a_bug_in_a_backend_is_a_traceback_in_the_log_never_in_the_answer(
        br, monkeypatch, caplog):
    def broken(self, raw):
        raise RuntimeError("internal detail 4711")

    monkeypatch.setattr(bridge._ClaudeEvents, "feed", broken)
    for stream in (False, True):
        resp = br.post({**user("hello"), "stream": stream})
        assert "4711" not in resp.text and "Traceback" not in resp.text
        assert "the bridge's log has the details" in resp.text
    crashes = [r for r in caplog.records if r.getMessage() == "backend crashed"]
    assert len(crashes) == 2 and "internal detail 4711" in str(crashes[0].exc_info[1])
    assert [r["status"] for r in br.rows()] == [502, 502]
