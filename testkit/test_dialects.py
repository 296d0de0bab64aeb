"""The other APIs over the same backends: OpenAI Responses, Anthropic Messages, legacy
completions and embeddings, driven by the official SDKs in strict mode (where they have
it) against the real server, with the fake Claude CLI and the fake Ollama."""
import base64
import json
import os
import sqlite3
import struct

import anthropic
import openai
import pydantic
import pytest
import requests

from testkit.harness import assert_error, prompt_of

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}
ANTHROPIC_WEATHER = {"name": "get_weather", "description": "Weather for a city",
                     "input_schema": WEATHER["parameters"]}


def call(name, **args):
    """The fake CLI's marker for the model calling the client's function NAME."""
    return f"[fake:mcp-call:{name}:{json.dumps(args)}]"


@pytest.fixture
def br(start, monkeypatch):
    monkeypatch.setenv("FAKE_CLAUDE_VERSION", "2.1.332")
    running = start(CLAUDE_TOOL_WAIT="30", RECOGNISE_CONVERSATIONS="true")
    yield running
    running.app.bridge.claude.held.shutdown()


@pytest.fixture
def with_ollama(start, ollama_fake):
    ollama_fake.add_model("nomic-embed-text")
    return start(OLLAMA_URL=ollama_fake.url)


def claude_client(running, **kw):
    return anthropic.Anthropic(base_url=running.url, api_key="unused", max_retries=0,
                               timeout=60, **kw)


def named_events(response):
    """[(event name, data)] of a raw SSE response with named events."""
    assert response.status_code == 200, response.text
    out, name = [], None
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            out.append((name, json.loads(line[6:])))
    return out


def rows(running, api):
    return [r for r in running.rows() if r["api"] == api]


# ----------------------------------------------------------------------------------------
# OpenAI Responses API
# ----------------------------------------------------------------------------------------

def test_responses_create_answers_and_is_stored(br):
    client = br.client()
    response = client.responses.create(model="claude-code", input="hello there",
                                       instructions="Answer briefly.")
    assert response.status == "completed"
    assert response.output_text.endswith("to: hello there")
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.instructions == "Answer briefly."
    assert br.chat_runs()[-1]["append_system_prompt"] == "Answer briefly."
    got = client.responses.retrieve(response.id)
    assert got.id == response.id and got.output_text == response.output_text
    [row] = rows(br, "responses")
    assert row["request_id"] == response.id and row["outcome"] == "ok"


def test_previous_response_id_continues_the_claude_session(br):
    client = br.client()
    first = client.responses.create(model="claude-code", input="my name is Ada")
    second = client.responses.create(model="claude-code", input="what is my name?",
                                     previous_response_id=first.id)
    assert second.previous_response_id == first.id
    runs = br.chat_runs()
    # The second turn resumed the first's Claude session and sent only its new message.
    assert "--resume" in runs[-1]["argv"]
    assert "my name is Ada" not in prompt_of(runs[-1])
    assert "what is my name?" in prompt_of(runs[-1])
    session_ids = {r["session_id"] for r in rows(br, "responses")}
    assert len(session_ids) == 1 and None not in session_ids


def test_previous_response_id_must_exist_and_be_the_callers(start):
    keyed = start(CLAUDE_AUTH_KEY="k1")
    client = keyed.client()
    first = client.responses.create(model="claude-code", input="hi")
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="claude-code", input="x",
                                previous_response_id="resp_" + "0" * 24)
    assert err.value.body["param"] == "previous_response_id"
    assert err.value.body["code"] == "previous_response_not_found"
    # Stored responses are the key's own: GET answers 404 to no key... and the row stays.
    assert requests.get(f"{keyed.url}/v1/responses/{first.id}", timeout=10).status_code == 401
    assert rows(keyed, "responses")[-1]["status"] == 400


def test_store_false_is_not_kept_and_delete_forgets(br):
    client = br.client()
    kept = client.responses.create(model="claude-code", input="private-words-7f3a")
    gone = client.responses.create(model="claude-code", input="hi", store=False)
    db = br.settings.usage_db_path

    def on_disk():
        return any(os.path.exists(path) and b"private-words-7f3a" in open(path, "rb").read()
                   for path in (db, db + "-wal"))
    assert on_disk()
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(gone.id)
    assert client.responses.delete(kept.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(kept.id)
    assert_error(requests.delete(f"{br.url}/v1/responses/{kept.id}", timeout=10), 404)
    # Its text is gone from the database file and its write-ahead log, not just unlinked.
    assert not on_disk()


def test_responses_are_bounded_by_responses_max(start):
    running = start(RESPONSES_MAX="2")
    client = running.client()
    ids = [client.responses.create(model="claude-code", input=f"n{i}").id for i in range(3)]
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(ids[0])
    assert client.responses.retrieve(ids[2]).id == ids[2]


def test_responses_stream_events_in_order(br):
    client = br.client()
    with client.responses.stream(model="claude-code", input="stream me") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    for kind in ("response.output_item.added", "response.content_part.added",
                 "response.output_text.delta", "response.output_text.done",
                 "response.content_part.done", "response.output_item.done"):
        assert kind in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text and final.output_text.endswith("to: stream me")
    assert final.usage.total_tokens > 0
    # The stored response is the one the stream ended with.
    assert client.responses.retrieve(final.id).output[0].id == final.output[0].id


def test_responses_parse_with_a_pydantic_model(br):
    class Weather(pydantic.BaseModel):
        city: str
        temp_c: int

    parsed = br.client().responses.parse(
        model="claude-code", input='[fake:json:{"city": "Oslo", "temp_c": 3}] weather?',
        text_format=Weather)
    assert parsed.output_parsed == Weather(city="Oslo", temp_c=3)
    argv = br.chat_runs()[-1]["argv"]
    assert "--json-schema" not in argv  # the schema goes over stdin, not argv


def test_function_call_round_trip_with_previous_response_id(br):
    client = br.client()
    first = client.responses.create(model="claude-code", tools=[WEATHER],
                                    input="weather? " + call("get_weather", city="Oslo"))
    [fc] = [item for item in first.output if item.type == "function_call"]
    assert fc.name == "get_weather" and json.loads(fc.arguments) == {"city": "Oslo"}
    second = client.responses.create(
        model="claude-code", tools=[WEATHER], previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": fc.call_id, "output": "3 C"}])
    assert second.output_text == "FAKE-REPLY tool results: get_weather=3 C"
    assert [r["via"] for r in rows(br, "responses")] == [None, "held"]
    assert len(br.chat_runs()) == 1  # the same CLI run went on


def test_function_call_round_trip_stateless_like_codex(br):
    """store=false and the whole input resent, as Codex CLI does: the held run continues."""
    client = br.client()
    ask = [{"type": "message", "role": "user",
            "content": [{"type": "input_text",
                         "text": "weather? " + call("get_weather", city="Rome")}]}]
    events = list(client.responses.create(model="claude-code", tools=[WEATHER], input=ask,
                                          store=False, stream=True))
    done = [e.item for e in events if e.type == "response.output_item.done"]
    [fc] = [item for item in done if item.type == "function_call"]
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(args) == {"city": "Rome"}
    resent = [*ask, fc.model_dump(exclude_none=True),
              {"type": "function_call_output", "call_id": fc.call_id, "output": "20 C"}]
    second = client.responses.create(model="claude-code", tools=[WEATHER], input=resent,
                                     store=False)
    assert second.output_text == "FAKE-REPLY tool results: get_weather=20 C"
    assert [r["via"] for r in rows(br, "responses")] == [None, "held"]


def test_responses_unsupported_items_and_tools(br):
    resp = requests.post(f"{br.url}/v1/responses", timeout=30, json={
        "model": "claude-code", "input": [{"type": "item_reference", "id": "x"}]})
    assert assert_error(resp, 400)["param"] == "input[0]"
    resp = requests.post(f"{br.url}/v1/responses", timeout=30, json={
        "model": "claude-code", "input": "hi", "background": True})
    assert assert_error(resp, 400)["param"] == "background"
    resp = requests.post(f"{br.url}/v1/responses", timeout=30, json={
        "model": "claude-code", "input": "hi", "tools": [{"type": "web_search"}]})
    assert resp.status_code == 200, resp.text
    assert resp.headers["X-Bridge-Ignored-Params"] == "tools[0] (web_search)"
    assert [r["status"] for r in rows(br, "responses")] == [400, 400, 200]


def test_responses_on_ollama_with_previous_response_id(with_ollama, ollama_fake):
    client = with_ollama.client()
    first = client.responses.create(model="ollama/llama3.2", input="first")
    second = client.responses.create(model="ollama/llama3.2", input="second",
                                     previous_response_id=first.id)
    assert second.output_text.startswith("ECHO")
    sent = ollama_fake.last_chat()["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[0]["content"] == "first" and sent[2]["content"] == "second"


# ----------------------------------------------------------------------------------------
# Anthropic Messages API
# ----------------------------------------------------------------------------------------

def test_messages_create_and_stream(br):
    client = claude_client(br)
    message = client.messages.create(model="claude-code", max_tokens=200, system="Be brief.",
                                     messages=[{"role": "user", "content": "hi"}])
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text.endswith("to: hi")
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens > 0
    with client.messages.stream(model="claude-code", max_tokens=200,
                                messages=[{"role": "user", "content": "again"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text and text.endswith("to: again")
    assert final.usage.output_tokens > 0 and final.stop_reason == "end_turn"
    assert [r["api"] for r in br.rows()] == ["messages", "messages"]


def test_messages_raw_stream_shape(br):
    resp = requests.post(f"{br.url}/v1/messages", timeout=30, stream=True, json={
        "model": "claude-code", "max_tokens": 100, "stream": True,
        "messages": [{"role": "user", "content": "[fake:think:hmm] hi"}]})
    events = named_events(resp)
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert all(name == data["type"] for name, data in events)
    starts = [d["content_block"]["type"] for n, d in events if n == "content_block_start"]
    assert starts == ["thinking", "text"]
    assert names.count("content_block_start") == names.count("content_block_stop")
    delta = dict(events)["message_delta"]
    assert delta["delta"]["stop_reason"] == "end_turn" and delta["usage"]["output_tokens"] > 0


def test_messages_tool_use_round_trip_on_claude(br):
    client = claude_client(br)
    ask = {"role": "user", "content": "weather? " + call("get_weather", city="Oslo")}
    first = client.messages.create(model="claude-code", max_tokens=200, messages=[ask],
                                   tools=[ANTHROPIC_WEATHER])
    assert first.stop_reason == "tool_use"
    [use] = [b for b in first.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": "Oslo"}
    second = client.messages.create(
        model="claude-code", max_tokens=200, tools=[ANTHROPIC_WEATHER],
        messages=[ask, {"role": "assistant", "content": [b.model_dump() for b in first.content]},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                "content": "3 C"}]}])
    assert second.content[0].text == "FAKE-REPLY tool results: get_weather=3 C"
    assert [r["via"] for r in br.rows()] == [None, "held"]


def test_messages_tool_use_on_ollama_streamed(with_ollama, ollama_fake):
    client = claude_client(with_ollama)
    with client.messages.stream(
            model="ollama/llama3.2", max_tokens=100, tools=[ANTHROPIC_WEATHER],
            messages=[{"role": "user",
                       "content": 'weather? [tool:get_weather:{"city": "Oslo"}]'}]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    [use] = [b for b in final.content if b.type == "tool_use"]
    assert use.input == {"city": "Oslo"}
    sent = ollama_fake.last_chat()
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["options"]["num_predict"] == 100


def test_messages_stop_sequences_report_the_one_met(br):
    message = claude_client(br).messages.create(
        model="claude-code", max_tokens=100, stop_sequences=["to:"],
        messages=[{"role": "user", "content": "hi"}])
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "to:"
    assert not message.content[0].text.endswith("to:")


def test_messages_errors_are_anthropic_shaped(start):
    keyed = start(CLAUDE_AUTH_KEY="sekrit")
    with pytest.raises(anthropic.AuthenticationError) as err:
        claude_client(keyed).messages.create(model="claude-code", max_tokens=10,
                                             messages=[{"role": "user", "content": "x"}])
    assert err.value.body["type"] == "error"
    assert err.value.body["error"]["type"] == "authentication_error"
    good = anthropic.Anthropic(base_url=keyed.url, api_key="sekrit", max_retries=0)
    resp = requests.post(f"{keyed.url}/v1/messages", headers={"x-api-key": "sekrit"},
                         json={"model": "claude-code",
                               "messages": [{"role": "user", "content": "x"}]}, timeout=30)
    assert resp.status_code == 400
    assert resp.json() == {"type": "error", "error": {"type": "invalid_request_error",
                                                      "message": "'max_tokens' is required."}}
    with pytest.raises(anthropic.BadRequestError):
        good.messages.create(model="claude-code", max_tokens=10, messages=[
            {"role": "user", "content": [{"type": "document", "source": {}}]}])
    ok = good.messages.create(model="claude-code", max_tokens=10,
                              messages=[{"role": "user", "content": "x"}])
    assert ok.content[0].text
    assert [r["status"] for r in keyed.rows()] == [400, 400, 200]
    resp = requests.get(f"{keyed.url}/v1/messages/nope", headers={"x-api-key": "sekrit"},
                        timeout=10)
    assert resp.status_code == 404 and resp.json()["error"]["type"] == "not_found_error"


def test_count_tokens_is_a_flagged_estimate(br):
    count = claude_client(br).messages.count_tokens(
        model="claude-code", system="s", messages=[{"role": "user", "content": "x" * 400}])
    assert 100 <= count.input_tokens <= 110
    assert count.model_extra["estimated"] is True
    assert not br.rows()  # nothing ran


# ----------------------------------------------------------------------------------------
# Legacy completions
# ----------------------------------------------------------------------------------------

def test_completions_both_backends(with_ollama, ollama_fake):
    client = with_ollama.client()
    done = client.completions.create(model="claude-code", prompt="Say this", max_tokens=50)
    assert done.object == "text_completion" and done.choices[0].text.endswith("to: Say this")
    assert done.choices[0].finish_reason == "stop"
    echoed = client.completions.create(model="ollama/llama3.2", prompt="Hi", echo=True)
    assert echoed.choices[0].text.startswith("HiECHO")
    # The SDK's chunk type says finish_reason is never null, OpenAI's stream sends null:
    # only a lenient client reads a real stream.
    lenient = with_ollama.client(_strict_response_validation=False)
    chunks = list(lenient.completions.create(model="claude-code", prompt="Go", stream=True,
                                             stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text.endswith("to: Go")
    assert chunks[-1].usage.completion_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    resp = requests.post(f"{with_ollama.url}/v1/completions", timeout=30,
                         json={"model": "claude-code", "prompt": "x", "suffix": "y"})
    assert assert_error(resp, 400)["param"] == "suffix"
    resp = requests.post(f"{with_ollama.url}/v1/completions", timeout=30,
                         json={"model": "claude-code", "prompt": ["a", "b"]})
    assert assert_error(resp, 400)["param"] == "prompt"
    assert [r["status"] for r in rows(with_ollama, "completions")] == [200, 200, 200, 400, 400]


# ----------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------

def test_embeddings_float_and_base64_agree(with_ollama, ollama_fake):
    strict = with_ollama.client()
    floats = strict.embeddings.create(model="ollama/nomic-embed-text", input=["a b", "c"],
                                      encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1] and len(floats.data[0].embedding) == 768
    assert floats.usage.prompt_tokens > 0
    # The SDK asks for base64 by default and decodes it (its strict mode would refuse the
    # string it asked for, so a lenient client).
    decoded = with_ollama.client(_strict_response_validation=False).embeddings.create(
        model="ollama/nomic-embed-text", input=["a b", "c"])
    assert decoded.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    raw = requests.post(f"{with_ollama.url}/v1/embeddings", timeout=30, json={
        "model": "ollama/nomic-embed-text", "input": "a b", "encoding_format": "base64"})
    packed = base64.b64decode(raw.json()["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(packed) // 4}f", packed)) == pytest.approx(
        floats.data[0].embedding, abs=1e-6)
    short = strict.embeddings.create(model="ollama/nomic-embed-text", input="a b",
                                     dimensions=8, encoding_format="float")
    assert len(short.data[0].embedding) == 8
    assert ollama_fake.last_embed()["dimensions"] == 8
    assert [r["prompt_tokens"] > 0 for r in rows(with_ollama, "embeddings")] == [True] * 4


def test_embeddings_refusals(with_ollama):
    client = with_ollama.client()
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="claude-code", input="x", encoding_format="float")
    assert err.value.body["code"] == "embeddings_not_supported"
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="ollama/nomic-embed-text", input=[[1, 2, 3]],
                                 encoding_format="float")
    assert err.value.body["code"] == "token_input_not_supported"
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="ollama/llama3.2", input="x", encoding_format="float")
    assert err.value.body["param"] == "model"
    assert [r["status"] for r in rows(with_ollama, "embeddings")] == [400, 400, 400]


def test_langchain_openai_embeddings(with_ollama):
    if os.environ.get("CI"):  # requirements-test.txt has it: CI must run this
        import langchain_openai
    else:
        langchain_openai = pytest.importorskip("langchain_openai")
    embeddings = langchain_openai.OpenAIEmbeddings(
        model="ollama/nomic-embed-text", base_url=with_ollama.url + "/v1", api_key="unused",
        check_embedding_ctx_length=False, max_retries=0)
    vectors = embeddings.embed_documents(["the sky is blue", "grass is green"])
    query = embeddings.embed_query("the sky is blue")
    assert len(vectors) == 2 and vectors[0] == pytest.approx(query, abs=1e-6)


# ----------------------------------------------------------------------------------------
# Everywhere: usage by API, metrics, the migration
# ----------------------------------------------------------------------------------------

def test_usage_api_and_metrics_by_dialect(br):
    client = br.client()
    client.responses.create(model="claude-code", input="a")
    client.chat.completions.create(model="claude-code",
                                   messages=[{"role": "user", "content": "b"}])
    claude_client(br).messages.create(model="claude-code", max_tokens=5,
                                      messages=[{"role": "user", "content": "c"}])
    summary = requests.get(f"{br.url}/v1/usage", timeout=10).json()
    assert sorted(item["api"] for item in summary) == ["chat", "messages", "responses"]
    only = requests.get(f"{br.url}/v1/usage?api=messages", timeout=10).json()
    assert [item["api"] for item in only] == ["messages"]
    recent = requests.get(f"{br.url}/v1/usage/recent?api=responses", timeout=10).json()
    assert [r["api"] for r in recent] == ["responses"]
    series = requests.get(f"{br.url}/v1/usage/timeseries?api=chat", timeout=10).json()
    assert sum(b["requests"] for b in series) == 1
    assert_error(requests.get(f"{br.url}/v1/usage?api=nope", timeout=10), 400)
    metrics = requests.get(f"{br.url}/metrics", timeout=10).text
    assert 'api="responses",outcome="ok"} 1' in metrics


def test_v8_database_gets_the_api_column(tmp_path, start):
    import bridge
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    for migrate in bridge.MIGRATIONS[:8]:
        migrate(db)
    db.execute("PRAGMA user_version = 8")
    db.execute("INSERT INTO requests (ts, model, provider, outcome, prompt_tokens) VALUES"
               " ('2026-01-01 10:00:00', 'sonnet', 'claude', 'ok', 7)")
    for table, key in (("usage_hourly", "2026-01-01 10"), ("usage_daily", "2026-01-01")):
        db.execute(f"INSERT INTO {table} VALUES (?, 'sonnet', 'claude', 1, 0, 7, 0, 7, 0,"
                   " 0, 0, 0)", (key,))
    db.commit()
    db.close()
    running = start(USAGE_DB_PATH=str(path))
    assert running.rows()[0]["api"] == "chat"
    summary = requests.get(f"{running.url}/v1/usage?api=chat&since=2025-12-31T00:00:00Z",
                           timeout=10).json()
    assert [(s["model"], s["api"], s["prompt_tokens"]) for s in summary] == [
        ("sonnet", "chat", 7)]



def test_messages_take_what_claude_code_sends(with_ollama, ollama_fake):
    """Claude Code's own body (captured from 2.1.332): system blocks with cache_control, a
    `system` message last, a deferred tool, adaptive thinking, output_config, metadata."""
    body = {"model": "ollama/llama3.2", "max_tokens": 32000, "stream": True,
            "system": [{"type": "text", "text": "You are Claude Code.",
                        "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi there",
                                                       "cache_control": {"type": "ephemeral"}}]},
                         {"role": "system", "content": "A reminder."}],
            "tools": [ANTHROPIC_WEATHER, {"name": "DeferredToolPlaceholder",
                                          "input_schema": {"type": "object"},
                                          "defer_loading": True}],
            "thinking": {"type": "adaptive"}, "output_config": {"effort": "high"},
            "context_management": {"edits": []},
            "metadata": {"user_id": "{\"device\": \"x\"}"}}
    resp = requests.post(f"{with_ollama.url}/v1/messages?beta=true", json=body, timeout=30,
                         stream=True, headers={"anthropic-version": "2023-06-01"})
    events = [data for _, data in named_events(resp)]
    assert resp.headers["X-Bridge-Ignored-Params"] == "reasoning_effort, tools[1] (deferred)"
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text.startswith("ECHO") and text.endswith("last=hi there")
    sent = ollama_fake.last_chat()
    assert [(m["role"], m["content"]) for m in sent["messages"]] == [
        ("system", "You are Claude Code."), ("system", "A reminder."), ("user", "hi there")]
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]


def test_foreign_hosts_and_bodies_get_each_apis_error(br):
    for path, shape in (("/v1/messages", "anthropic"), ("/v1/responses", "openai"),
                        ("/v1/embeddings", "openai"), ("/v1/completions", "openai")):
        resp = requests.post(br.url + path, json={}, timeout=10,
                             headers={"Host": "evil.example"})
        assert resp.status_code == 403
        resp2 = requests.post(br.url + path, data="{}", timeout=10,
                              headers={"Content-Type": "text/plain"})
        assert resp2.status_code == 415
        for r in (resp, resp2):
            if shape == "anthropic":
                assert r.json()["type"] == "error" and r.json()["error"]["message"]
            else:
                assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert not br.rows() and not br.chat_runs()  # none reached a backend


def test_token_limits_end_each_api_its_own_way(br):
    """The same cut (the fake CLI answers one word a token) in each API's words."""
    client = br.client()
    response = client.responses.create(model="claude-code", input="say a lot",
                                       max_output_tokens=3)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"
    with client.responses.stream(model="claude-code", input="say more",
                                 max_output_tokens=3) as stream:
        events = [e.type for e in stream]
    assert events[-1] == "response.incomplete"
    message = claude_client(br).messages.create(model="claude-code", max_tokens=3,
                                                messages=[{"role": "user", "content": "go"}])
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 3
    done = client.completions.create(model="claude-code", prompt="go", max_tokens=3)
    assert done.choices[0].finish_reason == "length"
    assert len(done.choices[0].text.split()) == 3


PNG = "iVBORw0KGgo="


def test_images_reach_ollama_from_every_dialect(with_ollama, ollama_fake):
    claude_client(with_ollama).messages.create(
        model="ollama/llama3.2", max_tokens=20, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": PNG}},
            {"type": "text", "text": "what is it?"}]}])
    assert ollama_fake.last_chat()["messages"][-1]["images"] == [PNG]
    with_ollama.client().responses.create(model="ollama/llama3.2", input=[
        {"role": "user", "content": [{"type": "input_text", "text": "and this?"},
                                     {"type": "input_image",
                                      "image_url": f"data:image/png;base64,{PNG}"}]}])
    assert ollama_fake.last_chat()["messages"][-1]["images"] == [PNG]


def test_thinking_and_effort_in_each_dialect(br):
    client = br.client()
    with client.responses.stream(model="claude-code", input="[fake:think:deep thought] hi",
                                 reasoning={"effort": "high"}) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert "response.reasoning_summary_text.delta" in kinds
    assert final.output[0].type == "reasoning"
    assert "deep thought" in final.output[0].summary[0].text
    assert final.output[1].type == "message"
    assert "--effort=high" in br.chat_runs()[-1]["argv"]
    message = claude_client(br).messages.create(
        model="claude-code", max_tokens=50, thinking={"type": "enabled", "budget_tokens": 2000},
        messages=[{"role": "user", "content": "[fake:think:hmm] hi"}])
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert "--effort=low" in br.chat_runs()[-1]["argv"]  # a budget of 2,000 tokens
