"""The Claude path as agent frameworks use it: client tools over the bridge's MCP endpoint
(held runs, rebuilt runs, tool_choice, parallel_tool_calls, legacy functions), structured
output, max_tokens / stop, thinking, ignored parameters and upstream limits, driven by the
official openai SDK (strict response validation), LangChain's ChatOpenAI, against the fake
CLI (testkit/fake_claude.py) in both versions it speaks.

The fake is steered by markers in the prompt: ``[fake:mcp-call:NAME:{json}]`` makes the
"model" call the client's function NAME over MCP (several = parallel calls in one message;
a tool result holding such markers makes it call those next); after the results it answers
``FAKE-REPLY tool results: <name>=<text>; ...``. ``[fake:json:{...}]`` is the structured
output, ``[fake:think:TEXT]`` a thinking block, ``[fake:error-429]`` / ``[fake:error-529]``
the upstream limits.
"""

import importlib
import json
import os
import signal
import sqlite3
import time

import openai
import pydantic
import pytest
import requests

from testkit.harness import alive, assert_error, prompt_of, sse_events, user, wait_until

VERSIONS = ["2.1.332", "2.1.197"]

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Local time in a time zone",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string"}},
                   "required": ["tz"]}}}
TOOLS = [WEATHER, TIME]


def call(name, **args):
    """The fake's marker for the model calling the client's function NAME."""
    return f"[fake:mcp-call:{name}:{json.dumps(args)}]"


def results(message, texts):
    """The assistant message as the client resends it, and one tool message per call."""
    return [message.model_dump(exclude_none=True),
            *({"role": "tool", "tool_call_id": c.id, "content": texts[c.function.name]}
              for c in message.tool_calls)]


def create(client, messages, **kw):
    kw.setdefault("tools", TOOLS)
    return client.chat.completions.create(model="claude-code", messages=messages, **kw)


def vias(br):
    return [r["via"] for r in br.rows()]


def chunks_of(response):
    """The JSON chunks of a raw SSE response (asserting it ends with [DONE])."""
    assert response.status_code == 200, response.text
    data, _ = sse_events(response)
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def tool_deltas(chunks):
    return [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get(
        "tool_calls") or ()]


def finish_of(chunks):
    return [c["choices"][0]["finish_reason"] for c in chunks
            if c["choices"] and c["choices"][0]["finish_reason"]]


@pytest.fixture
def start(start):
    """The harness's `start`; at the end, CLIs still holding tool calls are ended before
    the bridge stops (its MCP request would keep the test server's stop waiting 5 s; the
    bridge's own SIGTERM path has a test of its own below)."""
    made = []

    def _start(**env):
        made.append(start(**env))
        return made[-1]

    yield _start
    for running in made:
        running.app.bridge.claude.held.shutdown()


@pytest.fixture(params=VERSIONS)
def version(request, monkeypatch):
    """Both CLI versions users have (the CLI inherits the bridge's environment)."""
    monkeypatch.setenv("FAKE_CLAUDE_VERSION", request.param)
    return request.param


@pytest.fixture
def agent(start, version):
    return start(CLAUDE_TOOL_WAIT="30")


@pytest.fixture
def br332(start, monkeypatch):
    monkeypatch.setenv("FAKE_CLAUDE_VERSION", "2.1.332")
    return start(CLAUDE_TOOL_WAIT="30")


# ----------------------------------------------------------------------------------------
# Client tools: one round trip, streamed, parallel, several rounds
# ----------------------------------------------------------------------------------------

def test_one_tool_round_trip_continues_the_same_cli(agent):
    client = agent.client()
    history = [{"role": "user", "content": "Weather? " + call("get_weather", city="Paris")}]
    first = create(client, history)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (tc,) = choice.message.tool_calls
    assert tc.id.startswith("toolu_") and tc.type == "function"
    assert (tc.function.name, json.loads(tc.function.arguments)) == (
        "get_weather", {"city": "Paris"})
    assert first.usage.prompt_tokens > 0 and first.usage.completion_tokens > 0
    # The CLI is still running, holding the call open.
    (run,) = agent.chat_runs()
    assert alive(run["pid"]) and "exit" not in run
    assert agent.app.bridge.claude.held.count() == 1

    history += results(choice.message, {"get_weather": "sunny, 21 C"})
    final = create(client, history)
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == "FAKE-REPLY tool results: get_weather=sunny, 21 C"
    assert final.choices[0].message.tool_calls is None
    (run,) = agent.chat_runs()  # the same CLI answered: no second process
    assert wait_until(lambda: not alive(run["pid"]))
    assert agent.app.bridge.claude.held.count() == 0
    # The functions reached the CLI over MCP, never in argv; Claude Code's own tools are off.
    assert run["mcp"] == {"client": {"status": "connected", "tools": ["get_weather", "get_time"]}}
    argv = run["argv"]
    assert "--strict-mcp-config" in argv and argv[argv.index("--tools") + 1] == ""
    assert not any("get_weather" in a for a in argv)
    rows = agent.rows()
    assert [(r["via"], r["status"], r["outcome"]) for r in rows] == [
        (None, 200, "ok"), ("held", 200, "ok")]
    assert sum(r["cost_usd"] for r in rows) > 0


def test_tool_call_streams_id_and_name_first_then_argument_deltas(agent):
    history = [{"role": "user", "content": call("get_weather", city="Paris")}]
    resp = agent.post({"model": "claude-code", "messages": history, "tools": TOOLS,
                       "stream": True, "stream_options": {"include_usage": True}}, stream=True)
    assert resp.status_code == 200
    chunks = chunks_of(resp)
    assert len({c["id"] for c in chunks}) == 1
    deltas = tool_deltas(chunks)
    head, rest = deltas[0], deltas[1:]
    assert head["index"] == 0 and head["id"].startswith("toolu_")
    assert head["type"] == "function"
    assert head["function"] == {"name": "get_weather", "arguments": ""}
    assert rest, "the arguments come as deltas after the start chunk"
    for d in rest:
        assert set(d) == {"index", "function"} and d["index"] == 0
        assert set(d["function"]) == {"arguments"}
    assert json.loads("".join(d["function"]["arguments"] for d in rest)) == {"city": "Paris"}
    assert finish_of(chunks) == ["tool_calls"]
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    # No text before or beside the call.
    assert not "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                       if c["choices"])

    # The results, streamed too: the same CLI's answer as text chunks.
    history += [{"role": "assistant", "content": None, "tool_calls": [{
        "id": head["id"], "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": head["id"], "content": "rain"}]
    resp = agent.post({"model": "claude-code", "messages": history, "tools": TOOLS,
                       "stream": True}, stream=True)
    chunks = chunks_of(resp)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "FAKE-REPLY tool results: get_weather=rain"
    assert finish_of(chunks) == ["stop"]
    assert vias(agent) == [None, "held"]
    assert len(agent.chat_runs()) == 1


def test_sdk_stream_helper_assembles_the_tool_call(agent):
    client = agent.client()
    history = [{"role": "user", "content": call("get_weather", city="Oslo")}]
    with client.chat.completions.stream(model="claude-code", messages=history,
                                        tools=TOOLS) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.delta" in kinds
    assert "tool_calls.function.arguments.done" in kinds
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    (tc,) = choice.message.tool_calls
    assert tc.id.startswith("toolu_")
    assert (tc.function.name, json.loads(tc.function.arguments)) == (
        "get_weather", {"city": "Oslo"})
    history += results(choice.message, {"get_weather": "snow"})
    with client.chat.completions.stream(model="claude-code", messages=history,
                                        tools=TOOLS) as stream:
        text = "".join(e.delta for e in stream if e.type == "content.delta")
    assert text == "FAKE-REPLY tool results: get_weather=snow"
    assert vias(agent) == [None, "held"]


def test_two_parallel_calls_in_one_reply(agent):
    client = agent.client()
    history = [{"role": "user", "content": call("get_weather", city="Paris")
                + call("get_time", tz="CET")}]
    first = create(client, history)
    calls = first.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris"},
                                                                 {"tz": "CET"}]
    assert len({c.id for c in calls}) == 2
    history += results(first.choices[0].message, {"get_weather": "sunny", "get_time": "9:00"})
    final = create(client, history)
    text = final.choices[0].message.content
    assert text.startswith("FAKE-REPLY tool results: ")
    assert sorted(text[len("FAKE-REPLY tool results: "):].split("; ")) == [
        "get_time=9:00", "get_weather=sunny"]
    assert vias(agent) == [None, "held"] and len(agent.chat_runs()) == 1


def test_parallel_calls_stream_with_their_own_indexes(agent):
    body = {"model": "claude-code", "tools": TOOLS, "stream": True, "messages": [
        {"role": "user", "content": call("get_weather", city="Rome") + call("get_time", tz="UTC")}]}
    chunks = chunks_of(agent.post(body, stream=True))
    deltas = tool_deltas(chunks)
    starts = [d for d in deltas if "id" in d]
    assert [(d["index"], d["function"]["name"]) for d in starts] == [
        (0, "get_weather"), (1, "get_time")]
    for index, args in ((0, {"city": "Rome"}), (1, {"tz": "UTC"})):
        assert json.loads("".join(d["function"]["arguments"] for d in deltas
                                  if d["index"] == index)) == args
    assert finish_of(chunks) == ["tool_calls"]


def test_three_round_trips_in_a_row_are_one_cli(agent):
    client = agent.client()
    history = [{"role": "user", "content": call("get_weather", city="Paris")}]
    # Each result asks for the next call (the fake calls what a result's markers name).
    script = [("get_weather", "sunny " + call("get_time", tz="CET")),
              ("get_time", "9:00 " + call("get_weather", city="Lyon")),
              ("get_weather", "cloudy")]
    for name, result in script:
        reply = create(client, history)
        (tc,) = reply.choices[0].message.tool_calls
        assert tc.function.name == name and reply.choices[0].finish_reason == "tool_calls"
        history += results(reply.choices[0].message, {name: result})
    final = create(client, history)
    assert final.choices[0].message.content == "FAKE-REPLY tool results: get_weather=cloudy"
    assert vias(agent) == [None, "held", "held", "held"]
    (run,) = agent.chat_runs()  # exactly one CLI process for all four requests
    assert run["turns"] == [history[0]["content"]]
    assert [r["status"] for r in agent.rows()] == [200] * 4


def test_results_for_some_of_the_calls_give_the_cli_an_error_for_the_others(br332):
    client = br332.client()
    history = [{"role": "user", "content": call("get_weather", city="Paris")
                + call("get_time", tz="CET")}]
    first = create(client, history)
    weather, _ = first.choices[0].message.tool_calls
    history += [first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": weather.id, "content": "sunny"}]
    text = create(client, history).choices[0].message.content
    assert "get_weather=sunny" in text and "get_time=The client sent no result" in text
    assert vias(br332) == [None, "held"]


def test_a_session_turn_with_tools_is_held_then_resumed(br332):
    client = br332.client()
    headers = {"X-Session-ID": "agent-session"}
    history = [{"role": "user", "content": call("get_weather", city="Paris")}]
    first = create(client, history, extra_headers=headers)
    history += results(first.choices[0].message, {"get_weather": "sunny"})
    second = create(client, history, extra_headers=headers)
    assert second.choices[0].message.content == "FAKE-REPLY tool results: get_weather=sunny"
    history += [{"role": "assistant", "content": second.choices[0].message.content},
                {"role": "user", "content": "and tomorrow?"}]
    third = create(client, history, extra_headers=headers)
    assert third.choices[0].message.content.endswith("to: and tomorrow?")
    assert vias(br332) == [None, "held", None]
    first_run, resumed = br332.chat_runs()
    assert "--resume" in resumed["argv"] and resumed["turns"] == ["and tomorrow?"]
    assert resumed["session_id"] == first_run["session_id"]


# ----------------------------------------------------------------------------------------
# A held run that is gone: the client's whole history starts a new one
# ----------------------------------------------------------------------------------------

def test_held_run_times_out_then_the_history_is_rebuilt(start, version):
    br = start(CLAUDE_TOOL_WAIT="1")
    client = br.client()
    history = [{"role": "user", "content": call("get_weather", city="Paris")}]
    first = create(client, history)
    (tc,) = first.choices[0].message.tool_calls
    (held,) = br.chat_runs()
    # Nobody brings the result: after CLAUDE_TOOL_WAIT the CLI is ended, its slot freed.
    assert wait_until(lambda: not alive(held["pid"]), timeout=8)
    assert br.app.bridge.claude.held.count() == 0
    history += results(first.choices[0].message, {"get_weather": "sunny, 21 C"})
    final = create(client, history)
    assert final.choices[0].finish_reason == "stop"
    assert "sunny, 21 C" in final.choices[0].message.content
    assert vias(br) == [None, "rebuilt"]
    runs = br.chat_runs()
    assert len(runs) == 2
    prompt = prompt_of(runs[1])
    # The new run got the flattened history: the call and its result, the result last.
    assert call("get_weather", city="Paris") in prompt
    assert f"[call {tc.id}]" in prompt
    assert prompt.rstrip().endswith(f"(result of the get_weather call {tc.id}): sunny, 21 C")
    assert runs[1]["mcp"]["client"]["tools"] == ["get_weather", "get_time"]  # offered again


def process_rows(bp):
    db = sqlite3.connect(bp.tmp / "usage.db")
    try:
        return [r[0] for r in db.execute("SELECT via FROM requests ORDER BY id")]
    finally:
        db.close()


def sdk(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                         _strict_response_validation=True, timeout=30)


def test_bridge_restart_between_call_and_result_rebuilds(bridge_process, version):
    """`python bridge.py` stopped by SIGTERM while Claude waits for a result; a new bridge
    on the same USAGE_DB_PATH gets the result."""
    first_bridge = bridge_process(CLAUDE_TOOL_WAIT="30", SHUTDOWN_TIMEOUT="1")
    history = [{"role": "user", "content": call("get_weather", city="Paris")}]
    first = create(sdk(first_bridge.url), history)
    (held,) = [r for r in first_bridge.runs() if "--version" not in r["argv"]]
    first_bridge.proc.send_signal(signal.SIGTERM)
    assert first_bridge.proc.wait(timeout=15) == 0
    assert not alive(held["pid"])  # shutdown ended the held CLI
    again = bridge_process(CLAUDE_TOOL_WAIT="30")  # the same tmp: the same usage.db
    history += results(first.choices[0].message, {"get_weather": "hail"})
    final = create(sdk(again.url), history)
    assert final.choices[0].finish_reason == "stop"
    assert "hail" in final.choices[0].message.content
    assert process_rows(again) == [None, "rebuilt"]
    rebuilt = max((r for r in again.runs() if "--version" not in r["argv"]),
                  key=lambda r: r["started"])
    assert prompt_of(rebuilt).rstrip().endswith("): hail")


def test_stop_signal_with_a_held_tool_call_does_not_wait_out_the_grace(bridge_process):
    """No client request is in flight while Claude waits for a tool result: SIGTERM stops
    the bridge at once (the CLI's pending MCP call is not a request to drain)."""
    bp = bridge_process(CLAUDE_TOOL_WAIT="30", SHUTDOWN_TIMEOUT="5")
    create(sdk(bp.url), [{"role": "user", "content": call("get_weather", city="Paris")}])
    started = time.monotonic()
    bp.proc.send_signal(signal.SIGTERM)
    assert bp.proc.wait(timeout=15) == 0
    assert time.monotonic() - started < 2.5


def test_results_after_another_history_never_continue_a_held_run(br332):
    """The same call id after a different conversation is not that run's continuation."""
    client = br332.client()
    history = [{"role": "user", "content": call("get_weather", city="Paris")}]
    first = create(client, history)
    forged = [{"role": "user", "content": "something else entirely"},
              *results(first.choices[0].message, {"get_weather": "x"})]
    create(client, forged)
    assert vias(br332) == [None, "rebuilt"]
    assert br332.app.bridge.claude.held.count() == 1  # the real one still waits


# ----------------------------------------------------------------------------------------
# tool_choice, parallel_tool_calls, legacy functions
# ----------------------------------------------------------------------------------------

def test_tool_choice_none_offers_no_tools(br332):
    reply = create(br332.client(), [{"role": "user", "content": "hello"}], tool_choice="none")
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.content.endswith("to: hello")
    (run,) = br332.chat_runs()
    assert "mcp" not in run and "--mcp-config" not in run["argv"]


@pytest.mark.parametrize("tools", [{"tools": TOOLS, "tool_choice": "none"}, {"tools": None}],
                         ids=["tool_choice-none", "no-tools"])
def test_a_reply_never_calls_a_function_the_client_did_not_offer(br332, tools):
    """Claude calling an `mcp__client__...` tool the bridge did not serve (a user MCP server
    named "client": without tools the CLI loads the user's MCP config) is not a client call."""
    kw = {"tools": openai.NOT_GIVEN} if tools["tools"] is None else tools
    reply = create(br332.client(), [{"role": "user", "content": call("get_weather", city="X")}],
                   **kw)
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].message.content
    assert br332.app.bridge.claude.held.count() == 0


def test_tool_choice_auto_offers_every_function_without_a_rule(br332):
    reply = create(br332.client(), [{"role": "user", "content": call("get_time", tz="UTC")}],
                   tool_choice="auto")
    assert reply.choices[0].message.tool_calls[0].function.name == "get_time"
    (run,) = br332.chat_runs()
    assert run["mcp"]["client"]["tools"] == ["get_weather", "get_time"]
    assert "call" not in (run.get("append_system_prompt") or "").lower()


def test_tool_choice_required_is_a_rule_in_the_system_prompt(br332):
    reply = create(br332.client(), [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": call("get_time", tz="UTC")}], tool_choice="required")
    assert reply.choices[0].finish_reason == "tool_calls"
    (run,) = br332.chat_runs()
    system = run["append_system_prompt"]
    assert system.startswith("Be brief.")
    assert "call at least one of the tools" in system and "mcp__client__" in system
    assert run["mcp"]["client"]["tools"] == ["get_weather", "get_time"]


def test_named_tool_choice_offers_only_that_function(br332):
    reply = create(br332.client(), [{"role": "user", "content": call("get_weather", city="Oslo")}],
                   tool_choice={"type": "function", "function": {"name": "get_weather"}})
    (tc,) = reply.choices[0].message.tool_calls
    assert tc.function.name == "get_weather"
    (run,) = br332.chat_runs()
    assert run["mcp"]["client"]["tools"] == ["get_weather"]  # what tools/list answered
    assert "mcp__client__get_weather" in run["append_system_prompt"]


def test_parallel_tool_calls_false_sends_one_call_and_the_cli_an_error_for_the_rest(start):
    br332 = start(CLAUDE_TOOL_WAIT="3")  # (bounds the stall of the test below, if it hits)
    client = br332.client()
    history = [{"role": "user", "content": call("get_weather", city="Paris")
                + call("get_time", tz="CET")}]
    first = create(client, history, parallel_tool_calls=False)
    (tc,) = first.choices[0].message.tool_calls
    assert tc.function.name == "get_weather"
    (run,) = br332.chat_runs()
    assert "at most one tool per message" in run["append_system_prompt"]
    history += results(first.choices[0].message, {"get_weather": "sunny"})
    final = create(client, history, parallel_tool_calls=False)
    text = final.choices[0].message.content
    assert "get_weather=sunny" in text
    assert "get_time=Not run" in text  # the CLI was told to call it again later
    assert vias(br332) == [None, "held"]


def test_parallel_tool_calls_false_continuation_never_waits_for_the_dropped_call(start):
    """The CLI's call of the dropped function may reach the MCP endpoint after the client's
    results did: it must still get its error at once, not after CLAUDE_TOOL_WAIT (the
    client's request would stall that long; with the default 300 s, CLAUDE_IDLE_TIMEOUT
    makes it a 504 after 120 s)."""
    br = start(CLAUDE_TOOL_WAIT="2")
    client = br.client()
    for attempt in range(10):
        history = [{"role": "user", "content": call("get_weather", city="Paris")
                    + call("get_time", tz="CET")}]
        first = create(client, history, parallel_tool_calls=False)
        history += results(first.choices[0].message, {"get_weather": "sunny"})
        started = time.monotonic()
        final = create(client, history, parallel_tool_calls=False)
        took = time.monotonic() - started
        assert "get_time=Not run" in final.choices[0].message.content
        assert took < 1.5, f"round {attempt}: the continuation took {took:.1f} s"


def test_parallel_tool_calls_false_streams_a_single_call(br332):
    body = {"model": "claude-code", "tools": TOOLS, "stream": True, "parallel_tool_calls": False,
            "messages": [{"role": "user", "content": call("get_weather", city="Rome")
                          + call("get_time", tz="UTC")}]}
    deltas = tool_deltas(chunks_of(br332.post(body, stream=True)))
    assert {d["index"] for d in deltas} == {0}
    assert [d["function"]["name"] for d in deltas if "id" in d] == ["get_weather"]


def test_legacy_functions_round_trip(br332):
    client = br332.client()
    history = [{"role": "user", "content": call("get_weather", city="Paris")}]
    first = client.chat.completions.create(model="claude-code", messages=history,
                                           functions=[WEATHER["function"]])
    choice = first.choices[0]
    assert choice.finish_reason == "function_call"
    assert choice.message.tool_calls is None
    assert choice.message.function_call.name == "get_weather"
    assert json.loads(choice.message.function_call.arguments) == {"city": "Paris"}
    history += [choice.message.model_dump(exclude_none=True),
                {"role": "function", "name": "get_weather", "content": "sunny"}]
    final = client.chat.completions.create(model="claude-code", messages=history,
                                           functions=[WEATHER["function"]])
    assert final.choices[0].finish_reason == "stop"
    # The result reaches the CLI that made the call, as its tool result.
    assert final.choices[0].message.content == "FAKE-REPLY tool results: get_weather=sunny"
    assert vias(br332) == [None, "held"]
    assert br332.app.bridge.claude.held.count() == 0
    assert len(br332.chat_runs()) == 1


def test_legacy_function_call_streams_as_function_call_deltas(br332):
    body = {"model": "claude-code", "functions": [WEATHER["function"]], "stream": True,
            "messages": [{"role": "user", "content": call("get_weather", city="Nice")}]}
    chunks = chunks_of(br332.post(body, stream=True))
    pieces = [c["choices"][0]["delta"]["function_call"] for c in chunks
              if c["choices"] and "function_call" in c["choices"][0]["delta"]]
    assert pieces[0]["name"] == "get_weather"
    assert json.loads("".join(p["arguments"] for p in pieces)) == {"city": "Nice"}
    assert not tool_deltas(chunks)
    assert finish_of(chunks) == ["function_call"]


def test_legacy_function_call_none_offers_no_tools(br332):
    reply = br332.client().chat.completions.create(
        model="claude-code", messages=[{"role": "user", "content": "hi"}],
        functions=[WEATHER["function"]], function_call="none")
    assert reply.choices[0].finish_reason == "stop"
    assert "mcp" not in br332.chat_runs()[0]


def test_a_client_that_never_sends_the_results_does_not_keep_a_slot(start, monkeypatch):
    """A call whose results never come (the client moved on: with_structured_output
    by function calling, a user who gave up) must not keep later requests waiting."""
    monkeypatch.setenv("FAKE_CLAUDE_VERSION", "2.1.332")
    br = start(CLAUDE_MAX_CONCURRENCY="1", CLAUDE_QUEUE_TIMEOUT="2", CLAUDE_TOOL_WAIT="60")
    client = br.client()
    create(client, [{"role": "user", "content": call("get_weather", city="Paris")}])
    started = time.monotonic()
    reply = client.chat.completions.create(model="claude-code",
                                           messages=[{"role": "user", "content": "hello"}])
    assert reply.choices[0].message.content.endswith("to: hello")
    assert time.monotonic() - started < 2


# ----------------------------------------------------------------------------------------
# Structured output
# ----------------------------------------------------------------------------------------

class Weather(pydantic.BaseModel):
    city: str
    temp_c: int


def test_parse_with_a_pydantic_model(agent):
    client = agent.client()
    marker = '[fake:json:{"city": "Oslo", "temp_c": 3}]'
    reply = client.chat.completions.parse(
        model="claude-code", messages=[{"role": "user", "content": "Weather? " + marker}],
        response_format=Weather)
    assert reply.choices[0].message.parsed == Weather(city="Oslo", temp_c=3)
    assert json.loads(reply.choices[0].message.content) == {"city": "Oslo", "temp_c": 3}
    assert reply.choices[0].finish_reason == "stop"
    (run,) = agent.chat_runs()
    # The schema went on stdin (initialize), never argv.
    assert not any("temp_c" in a for a in run["argv"]) and "--json-schema" not in run["argv"]
    init = json.loads(run["stdin"].splitlines()[0])
    assert init["request"]["subtype"] == "initialize"
    assert init["request"]["jsonSchema"]["required"] == ["city", "temp_c"]


def test_beta_parse_gets_a_schema_instance_without_a_marker(br332):
    client = br332.client()
    reply = client.beta.chat.completions.parse(
        model="claude-code", messages=[{"role": "user", "content": "Weather in Oslo?"}],
        response_format=Weather)
    parsed = reply.choices[0].message.parsed
    assert isinstance(parsed, Weather)


def test_real_cli_parse_with_a_pydantic_model(start, real_cli, fake_api):
    """The same parse() through the real CLI against testkit/fake_anthropic.py: the schema
    in the stream-json initialize request is what the real CLI honours."""
    br = start(CLAUDE_BIN=real_cli)
    reply = br.client().chat.completions.parse(
        model="claude-code", response_format=Weather, messages=[
            {"role": "user", "content": '[upstream:json:{"city": "Oslo", "temp_c": 3}]'}])
    assert reply.choices[0].message.parsed == Weather(city="Oslo", temp_c=3)
    offered = [t for r in fake_api.requests for t in r.get("tools") or ()
               if t["name"] == "StructuredOutput"]
    assert offered and offered[0]["input_schema"]["required"] == ["city", "temp_c"]


def test_json_object_content_is_the_structured_output(agent):
    reply = agent.client().chat.completions.create(
        model="claude-code", response_format={"type": "json_object"},
        messages=[{"role": "user", "content": 'Answer in JSON [fake:json:{"a": 1, "b": [2]}]'}])
    assert json.loads(reply.choices[0].message.content) == {"a": 1, "b": [2]}
    assert reply.choices[0].finish_reason == "stop"


def test_json_schema_stream_sends_only_the_json(br332):
    body = {"model": "claude-code", "stream": True, "messages": [
        {"role": "user", "content": '[fake:json:{"city": "Rome", "temp_c": 20}]'}],
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "Weather", "schema": Weather.model_json_schema()}}}
    chunks = chunks_of(br332.post(body, stream=True))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert json.loads(text) == {"city": "Rome", "temp_c": 20}
    assert finish_of(chunks) == ["stop"]


# ----------------------------------------------------------------------------------------
# max_tokens, stop, thinking, reasoning_effort
# ----------------------------------------------------------------------------------------

def test_max_tokens_hit_is_finish_length(agent):
    client = agent.client()
    messages = [{"role": "user", "content": "hello there"}]
    full = client.chat.completions.create(model="claude-code", messages=messages)
    cut = client.chat.completions.create(model="claude-code", messages=messages, max_tokens=3)
    assert cut.choices[0].finish_reason == "length"
    assert cut.choices[0].message.content == " ".join(full.choices[0].message.content.split()[:3])
    assert cut.usage.completion_tokens == 3
    newer = client.chat.completions.create(model="claude-code", messages=messages,
                                           max_completion_tokens=2)
    assert newer.choices[0].finish_reason == "length"
    assert newer.choices[0].message.content == " ".join(
        full.choices[0].message.content.split()[:2])
    chunks = list(client.chat.completions.create(model="claude-code", messages=messages,
                                                 max_tokens=3, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        cut.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"
    # A limit the answer stays under changes nothing.
    roomy = client.chat.completions.create(model="claude-code", messages=messages,
                                           max_tokens=500)
    assert roomy.choices[0].message.content == full.choices[0].message.content
    assert roomy.choices[0].finish_reason == "stop"
    assert [r["status"] for r in agent.rows()] == [200] * 5


def test_stop_sequence_cuts_the_text(agent):
    client = agent.client()
    messages = [{"role": "user", "content": "hello"}]
    full = client.chat.completions.create(model="claude-code", messages=messages)
    text = full.choices[0].message.content
    cut = client.chat.completions.create(model="claude-code", messages=messages,
                                         stop=["len_last", "NEVER-THERE"])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text.split("len_last")[0]
    chunks = list(client.chat.completions.create(model="claude-code", messages=messages,
                                                 stop="len_last", stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text.split("len_last")[0]
    assert chunks[-1].choices[0].finish_reason == "stop"
    absent = client.chat.completions.create(model="claude-code", messages=messages,
                                            stop=["NEVER-THERE"])
    assert absent.choices[0].message.content == text


def test_thinking_is_reasoning_content_in_json_and_stream(agent):
    client = agent.client()
    messages = [{"role": "user", "content": "[fake:think:weighing the options carefully]"}]
    reply = client.chat.completions.create(model="claude-code", messages=messages)
    msg = reply.choices[0].message
    assert msg.reasoning_content == "weighing the options carefully"
    assert msg.content.endswith("to: " + messages[0]["content"])
    assert msg.content.count("FAKE-REPLY") == 1
    chunks = list(client.chat.completions.create(model="claude-code", messages=messages,
                                                 stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = [d.reasoning_content for d in deltas if getattr(d, "reasoning_content", None)]
    content = [d.content for d in deltas if d.content]
    assert len(reasoning) > 1 and "".join(reasoning) == "weighing the options carefully"
    assert "".join(content) == msg.content  # never doubled, on either version
    first_text = next(i for i, d in enumerate(deltas) if d.content)
    assert all(not getattr(d, "reasoning_content", None) for d in deltas[first_text:])


def test_claude_codes_own_tool_uses_are_reasoning_lines(br332):
    reply = br332.client().chat.completions.create(
        model="claude-code", messages=[{"role": "user", "content": "[fake:tool-use]"}])
    assert reply.choices[0].message.reasoning_content.startswith("Bash")
    assert reply.choices[0].message.tool_calls is None


@pytest.mark.parametrize("effort,flag", [("high", "--effort=high"), ("minimal", "--effort=low")])
def test_reasoning_effort_is_the_clis_effort(br332, effort, flag):
    br332.client().chat.completions.create(model="claude-code", reasoning_effort=effort,
                                           messages=[{"role": "user", "content": "hi"}])
    assert flag in br332.chat_runs()[-1]["argv"]


# ----------------------------------------------------------------------------------------
# Ignored parameters, upstream limits, rows
# ----------------------------------------------------------------------------------------

def test_ignored_parameters_are_named_in_a_header(br332):
    raw = br332.client().chat.completions.with_raw_response.create(
        model="claude-code", messages=[{"role": "user", "content": "hi"}],
        temperature=0.2, top_p=0.9, seed=7, presence_penalty=0.5, logit_bias={"1": 2})
    assert set(raw.headers["X-Bridge-Ignored-Params"].split(", ")) == {
        "temperature", "top_p", "seed", "presence_penalty", "logit_bias"}
    assert raw.parse().choices[0].message.content.endswith("to: hi")
    resp = br332.post({**user("hi"), "stream": True, "frequency_penalty": 1}, stream=True)
    assert resp.headers["X-Bridge-Ignored-Params"] == "frequency_penalty"
    chunks_of(resp)
    plain = br332.client().chat.completions.with_raw_response.create(
        model="claude-code", messages=[{"role": "user", "content": "hi"}], max_tokens=100)
    assert "X-Bridge-Ignored-Params" not in plain.headers


def test_strict_params_refuses_them_with_a_400(start):
    br = start(STRICT_PARAMS="true")
    client = br.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="claude-code", temperature=0.2,
                                       messages=[{"role": "user", "content": "hi"}])
    err = caught.value
    assert err.status_code == 400 and err.code == "unsupported_parameter"
    assert err.param == "temperature" and "STRICT_PARAMS" in err.message
    ok = client.chat.completions.create(model="claude-code", max_tokens=50,
                                        messages=[{"role": "user", "content": "hi"}])
    assert ok.choices[0].finish_reason == "stop"
    assert br.chat_runs() and len(br.chat_runs()) == 1  # the refused one started no CLI
    assert [(r["status"], r["outcome"]) for r in br.rows()] == [(400, "error"), (200, "ok")]


def test_upstream_429_and_529_keep_their_meaning_with_retry_after(agent):
    client = agent.client()
    for marker, error, status, code in (
            ("[fake:error-429]", openai.RateLimitError, 429, "upstream_rate_limited"),
            ("[fake:error-529]", openai.InternalServerError, 503, "upstream_overloaded")):
        with pytest.raises(error) as caught:
            client.chat.completions.create(model="claude-code",
                                           messages=[{"role": "user", "content": marker}])
        assert (caught.value.status_code, caught.value.code) == (status, code)
        assert int(caught.value.response.headers["Retry-After"]) > 0
    # Streamed: the status is known before the stream begins.
    resp = agent.post({**user("[fake:error-429]"), "stream": True})
    err = assert_error(resp, 429, "upstream_rate_limited")
    assert "429" in err["message"] and int(resp.headers["Retry-After"]) > 0
    resp = agent.post({**user("[fake:error-529]"), "stream": True})
    assert_error(resp, 503, "upstream_overloaded")
    assert int(resp.headers["Retry-After"]) > 0
    assert [r["status"] for r in agent.rows()] == [429, 503, 429, 503]


def test_one_usage_row_per_request_with_how_it_ran(start, monkeypatch):
    monkeypatch.setenv("FAKE_CLAUDE_VERSION", "2.1.332")
    br = start(CLAUDE_TOOL_WAIT="30")
    client = br.client()
    history = [{"role": "user", "content": call("get_weather", city="Paris")}]
    first = create(client, history)  # 1: a call
    history += results(first.choices[0].message, {"get_weather": "sunny"})
    create(client, history)  # 2: held
    create(client, history)  # 3: the same results again: that run is gone -> rebuilt
    client.chat.completions.create(model="claude-code", messages=[  # 4: plain
        {"role": "user", "content": "hello"}])
    br.post({**user("[fake:error-429]"), "tools": TOOLS})  # 5: a failed run with tools
    br.post({**user("hi"), "tools": [{"type": "function", "function": {"name": "bad name"}}]})
    chunks_of(br.post({"model": "claude-code", "messages": history, "tools": TOOLS,
                       "stream": True}, stream=True))  # 7: rebuilt, streamed
    rows = br.rows()
    assert [(r["via"], r["status"], r["stream"]) for r in rows] == [
        (None, 200, 0), ("held", 200, 0), ("rebuilt", 200, 0), (None, 200, 0),
        (None, 429, 0), (None, 400, 0), ("rebuilt", 200, 1)]
    assert len({r["request_id"] for r in rows}) == 7
    recent = requests.get(br.url + "/v1/usage/recent", timeout=10).json()
    recent = recent.get("data", recent) if isinstance(recent, dict) else recent
    assert [r.get("via") for r in recent][:3] == ["rebuilt", None, None]


# ----------------------------------------------------------------------------------------
# LangChain (langchain-openai's ChatOpenAI)
# ----------------------------------------------------------------------------------------

def langchain(module):
    """A LangChain module: requirements-test.txt has it, so CI must too; elsewhere a
    missing one skips."""
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module)


def chat_model(br, **kw):
    langchain_openai = langchain("langchain_openai")
    return langchain_openai.ChatOpenAI(base_url=br.url + "/v1", api_key="unused",
                                       model="claude-code", max_retries=0, timeout=30, **kw)


def get_weather(city: str) -> str:
    """Weather for a city."""
    return f"sunny in {city}"


def test_langchain_bind_tools_round_trip(br332):
    messages = langchain("langchain_core.messages")
    HumanMessage, ToolMessage = messages.HumanMessage, messages.ToolMessage
    llm = chat_model(br332).bind_tools([get_weather])
    history = [HumanMessage("Weather? " + call("get_weather", city="Paris"))]
    ai = llm.invoke(history)
    (tc,) = ai.tool_calls
    assert (tc["name"], tc["args"]) == ("get_weather", {"city": "Paris"})
    assert tc["id"].startswith("toolu_")
    assert ai.response_metadata["finish_reason"] == "tool_calls"
    history += [ai, ToolMessage(get_weather(**tc["args"]), tool_call_id=tc["id"])]
    final = llm.invoke(history)
    assert final.content == "FAKE-REPLY tool results: get_weather=sunny in Paris"
    assert not final.tool_calls
    assert vias(br332) == [None, "held"] and len(br332.chat_runs()) == 1


def test_langchain_streamed_tool_call(br332):
    HumanMessage = langchain("langchain_core.messages").HumanMessage
    llm = chat_model(br332).bind_tools([get_weather])
    merged = None
    for piece in llm.stream([HumanMessage(call("get_weather", city="Lima"))]):
        merged = piece if merged is None else merged + piece
    (tc,) = merged.tool_calls
    assert (tc["name"], tc["args"]) == ("get_weather", {"city": "Lima"})


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_langchain_with_structured_output(br332, method):
    structured = chat_model(br332).with_structured_output(Weather, method=method)
    if method == "function_calling":
        prompt = "Weather in Oslo? " + call("Weather", city="Oslo", temp_c=3)
    else:
        prompt = 'Weather in Oslo, as JSON. [fake:json:{"city": "Oslo", "temp_c": 3}]'
    assert structured.invoke(prompt) == Weather(city="Oslo", temp_c=3)
    (row,) = br332.rows()
    assert row["status"] == 200
