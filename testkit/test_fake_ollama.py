"""Checks that testkit.fake_ollama speaks Ollama's native API as the official
`ollama` Python client (and plain `requests`) expect.

Collected by `python -m pytest` with the rest of the suite.
"""

import base64
import json
import socket
import time

import pytest

import ollama  # noqa: E402
import requests  # noqa: E402
from ollama._types import ChatResponse, ListResponse, Message  # noqa: E402

from testkit import fake_ollama  # noqa: E402

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}]

CHAT_KEYS = set(ChatResponse.model_fields)
MESSAGE_KEYS = set(Message.model_fields)


@pytest.fixture
def fake():
    server = fake_ollama.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(fake):
    return ollama.Client(host=fake.url)


def user(text, **extra):
    return [{"role": "user", "content": text, **extra}]


def strict_chat_line(line):
    """Validate one NDJSON line the strictest way the client's types allow."""
    obj = json.loads(line)
    assert set(obj) <= CHAT_KEYS, set(obj) - CHAT_KEYS
    assert set(obj["message"]) <= MESSAGE_KEYS
    assert obj["message"]["role"] == "assistant"
    ChatResponse.model_validate_json(line, strict=True)
    return obj


def test_root_version_and_unknown_path(fake):
    r = requests.get(fake.url + "/")
    assert r.status_code == 200 and r.text == "Ollama is running"
    assert requests.get(fake.url + "/api/version").json() == {"version": "0.5.1"}
    r = requests.get(fake.url + "/api/nope")
    assert r.status_code == 404 and "error" in r.json()


def test_chat_non_stream(fake, client):
    r = client.chat(model="llama3.2", messages=user("hello world"), stream=False)
    assert r.message.role == "assistant"
    assert r.message.content == "ECHO model=llama3.2 msgs=1 images=0 last=hello world"
    assert r.done is True and r.done_reason == "stop"
    assert r.prompt_eval_count == 10 and r.eval_count == 6
    for k in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(getattr(r, k), int) and getattr(r, k) > 0
    assert fake.requests[-1][0] == "/api/chat"
    assert fake.requests[-1][1]["stream"] is False


def test_chat_stream(fake, client):
    parts = list(client.chat(model="qwen2.5:0.5b",
                             messages=[{"role": "system", "content": "s"}] + user("a b"),
                             stream=True))
    assert all(isinstance(p, ChatResponse) for p in parts)
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p.message.content for p in parts) == \
        "ECHO model=qwen2.5:0.5b msgs=2 images=0 last=a b"
    assert parts[0].message.content == "ECHO "
    final = parts[-1]
    assert final.message.content == "" and final.done_reason == "stop"
    assert final.eval_count == len(parts) - 1 and final.prompt_eval_count == 20


def test_stream_is_default_and_requests_iter_lines(fake):
    r = requests.post(fake.url + "/api/chat",
                      json={"model": "llama3.2", "messages": user("x y z")}, stream=True)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/x-ndjson"
    assert r.headers.get("Transfer-Encoding") == "chunked"
    lines = list(r.iter_lines())
    assert all(lines), "no blank NDJSON lines"
    objs = [strict_chat_line(line) for line in lines]
    assert objs[-1]["done"] is True and all(o["done"] is False for o in objs[:-1])
    assert "done_reason" not in objs[0]
    assert "".join(o["message"]["content"] for o in objs).endswith("last=x y z")


def test_list_models(fake, client):
    resp = client.list()
    names = [m.model for m in resp.models]
    assert names == ["llama3.2:latest", "qwen2.5:0.5b"]
    m = resp.models[0]
    assert m.modified_at.tzinfo is not None and m.size > 0 and len(m.digest) == 64
    assert m.details.family == "llama" and m.details.quantization_level
    raw = requests.get(fake.url + "/api/tags")
    ListResponse.model_validate_json(raw.content, strict=True)
    assert all("name" in e for e in raw.json()["models"])


def test_added_model_is_listed_and_usable(fake, client):
    fake.add_model("mistral", family="llama", parameter_size="7.2B")
    assert "mistral:latest" in [m.model for m in client.list().models]
    assert client.chat(model="mistral", messages=user("hi"), stream=False).done


def test_tool_call_non_stream(fake, client):
    r = client.chat(model="llama3.2", tools=TOOLS, stream=False,
                    messages=user('please [tool:get_weather:{"city": "Paris [FR]"}]'))
    assert r.message.content == ""
    (call,) = r.message.tool_calls
    assert call.function.name == "get_weather"
    assert dict(call.function.arguments) == {"city": "Paris [FR]"}
    assert r.done_reason == "stop"
    assert fake.last_chat()["tools"][0]["function"]["name"] == "get_weather"


def test_tool_calls_stream_arrive_whole_in_one_chunk(fake, client):
    parts = list(client.chat(model="llama3.2", tools=TOOLS, stream=True,
                             messages=user('[tool:get_weather][tool:other:{"n": 1}]')))
    with_calls = [p for p in parts if p.message.tool_calls]
    assert len(with_calls) == 1 and with_calls[0].done is False
    calls = with_calls[0].message.tool_calls
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == \
        [("get_weather", {}), ("other", {"n": 1})]
    assert parts[-1].done and parts[-1].done_reason == "stop"


def test_tool_results_after_the_marker_get_text(fake, client):
    ask = {"role": "user", "content": '[tool:get_weather:{"city": "Oslo"}]'}
    call = {"role": "assistant", "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]}
    result = {"role": "tool", "content": "sunny", "tool_name": "get_weather"}
    r = client.chat(model="llama3.2", tools=TOOLS, stream=False,
                    messages=[ask, call, result])
    assert r.message.tool_calls is None
    assert r.message.content == f"ECHO model=llama3.2 msgs=3 images=0 last={ask['content']}"
    # A system message after the results changes nothing; a new user turn asks again.
    r = client.chat(model="llama3.2", tools=TOOLS, stream=False,
                    messages=[ask, call, result, {"role": "system", "content": "note"}])
    assert r.message.tool_calls is None
    r = client.chat(model="llama3.2", tools=TOOLS, stream=False,
                    messages=[ask, call, result, {"role": "assistant", "content": "ok"}, ask])
    assert [c.function.name for c in r.message.tool_calls] == ["get_weather"]


def test_tool_marker_without_tools_is_plain_text(client):
    r = client.chat(model="llama3.2", messages=user("[tool:x]"), stream=False)
    assert r.message.tool_calls is None and r.message.content.endswith("last=[tool:x]")


def test_images_counted_and_recorded(fake, client):
    png = base64.b64encode(b"\x89PNG\r\n fake").decode()
    r = client.chat(model="llama3.2", stream=False,
                    messages=[{"role": "user", "content": "one", "images": [png]},
                              {"role": "assistant", "content": "ok"},
                              {"role": "user", "content": "two", "images": [b"raw bytes"]}])
    assert r.message.content == "ECHO model=llama3.2 msgs=3 images=2 last=two"
    msgs = fake.last_chat()["messages"]
    assert msgs[0]["images"] == [png]
    assert base64.b64decode(msgs[2]["images"][0]) == b"raw bytes"


def test_data_url_image_is_rejected_like_real_ollama(fake):
    r = requests.post(fake.url + "/api/chat", json={
        "model": "llama3.2", "messages": user("x", images=["data:image/png;base64,AAAA"])})
    assert r.status_code == 400 and "base64" in r.json()["error"]


def test_unknown_model_404(client):
    with pytest.raises(ollama.ResponseError) as ei:
        client.chat(model="nope", messages=user("x"), stream=False)
    assert ei.value.status_code == 404
    assert ei.value.error == 'model "nope" not found, try pulling it first'
    with pytest.raises(ollama.ResponseError) as ei:
        list(client.chat(model="nope:7b", messages=user("x"), stream=True))
    assert ei.value.status_code == 404


def test_model_required_and_name_forms(fake):
    r = requests.post(fake.url + "/api/chat", json={"messages": user("x")})
    assert r.status_code == 400 and r.json() == {"error": "model is required"}
    for name in ("llama3.2", "llama3.2:latest", "qwen2.5:0.5b"):
        r = requests.post(fake.url + "/api/chat",
                          json={"model": name, "messages": user("x"), "stream": False})
        assert r.status_code == 200 and r.json()["model"] == name


def test_bad_translation_shapes_are_400(fake):
    bad = [
        {"model": "llama3.2", "messages": user([{"type": "text", "text": "x"}])},
        {"model": "llama3.2", "messages": [{"role": "assistant", "content": "",
                                            "tool_calls": [{"function": {
                                                "name": "f", "arguments": "{\"a\": 1}"}}]}]},
        {"model": "llama3.2", "messages": user("x"), "format": "json_schema"},
    ]
    for body in bad:
        r = requests.post(fake.url + "/api/chat", json=body)
        assert r.status_code == 400, body
    ok = {"model": "llama3.2", "messages": user("x"), "stream": False,
          "format": {"type": "object"}, "options": {"temperature": 0.2, "num_ctx": 4096}}
    assert requests.post(fake.url + "/api/chat", json=ok).status_code == 200
    assert fake.last_chat()["options"] == {"temperature": 0.2, "num_ctx": 4096}


def test_num_predict_truncates_with_length(client):
    r = client.chat(model="llama3.2", messages=user("a b c"), options={"num_predict": 2},
                    stream=False)
    assert r.message.content == "ECHO model=llama3.2 " and r.done_reason == "length"
    assert r.eval_count == 2
    parts = list(client.chat(model="llama3.2", messages=user("a"),
                             options={"num_predict": 1}, stream=True))
    assert [p.message.content for p in parts] == ["ECHO ", ""]
    assert parts[-1].done_reason == "length"


@pytest.mark.parametrize("marker,status,text", [
    ("[ollama:error-500]", 500, fake_ollama.ERR_500),
    ("[ollama:busy]", 503, fake_ollama.ERR_BUSY),
    ("[ollama:badreq]", 400, fake_ollama.ERR_BADREQ),
])
def test_status_error_markers(client, marker, status, text):
    for stream in (False, True):
        with pytest.raises(ollama.ResponseError) as ei:
            r = client.chat(model="llama3.2", messages=user("x " + marker), stream=stream)
            if stream:
                list(r)
        assert ei.value.status_code == status and ei.value.error == text


def test_first_marker_wins(client):
    with pytest.raises(ollama.ResponseError) as ei:
        client.chat(model="llama3.2", messages=user("[ollama:busy] [ollama:error-500]"))
    assert ei.value.status_code == 503


def test_midstream_error(fake, client):
    got = []
    with pytest.raises(ollama.ResponseError) as ei:
        for p in client.chat(model="llama3.2", messages=user("[ollama:midstream-error]"),
                             stream=True):
            got.append(p.message.content)
    assert got == ["ECHO ", "model=llama3.2 "]
    assert ei.value.error == fake_ollama.ERR_MIDSTREAM
    r = requests.post(fake.url + "/api/chat", stream=True, json={
        "model": "llama3.2", "messages": user("[ollama:midstream-error]")})
    lines = [json.loads(x) for x in r.iter_lines()]
    assert r.status_code == 200 and lines[-1] == {"error": fake_ollama.ERR_MIDSTREAM}
    assert not any(o.get("done") for o in lines)


def test_no_done(client):
    parts = list(client.chat(model="llama3.2", messages=user("[ollama:no-done]"), stream=True))
    assert len(parts) == 2 and not any(p.done for p in parts)


def test_slow_ticks(client):
    t0 = time.monotonic()
    parts = list(client.chat(model="llama3.2", messages=user("[ollama:slow:3:40]"),
                             stream=True))
    assert [p.message.content for p in parts] == ["tick0 ", "tick1 ", "tick2 ", ""]
    assert time.monotonic() - t0 >= 0.07


def test_client_disconnect_is_counted(fake):
    r = requests.post(fake.url + "/api/chat", stream=True, json={
        "model": "llama3.2", "messages": user("[ollama:slow:100:30]")})
    it = r.iter_lines()
    assert json.loads(next(it))["message"]["content"] == "tick0 "
    assert fake.active_streams == 1
    r.close()
    assert fake.wait_for(lambda f: f.closed_streams == 1)
    assert fake.wait_for(lambda f: f.active_streams == 0)


def test_hang_sends_headers_only(fake):
    r = requests.post(fake.url + "/api/chat", stream=True, timeout=(2, 0.3), json={
        "model": "llama3.2", "messages": user("[ollama:hang]")})
    assert r.status_code == 200
    with pytest.raises(requests.exceptions.RequestException):
        next(r.iter_lines())
    r.close()
    assert fake.wait_for(lambda f: f.closed_streams == 1)


def test_stop_ends_hanging_stream_quickly(fake):
    s = socket.create_connection((fake.host, fake.port))
    body = json.dumps({"model": "llama3.2", "messages": user("[ollama:hang]")}).encode()
    s.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    t0 = time.monotonic()
    fake.stop()
    s.settimeout(2)
    while s.recv(4096):
        pass
    assert time.monotonic() - t0 < 2
    s.close()


def test_set_delay_ms(fake, client):
    fake.set_delay_ms(20)
    t0 = time.monotonic()
    parts = list(client.chat(model="llama3.2", messages=user("x"), stream=True))
    assert time.monotonic() - t0 >= 0.02 * (len(parts) - 1) * 0.9
    fake.set_delay_ms(0)


def test_empty_messages_load_response(client):
    r = client.chat(model="llama3.2", messages=[], stream=False)
    assert r.done and r.done_reason == "load" and r.message.content == ""


def test_requests_recorded_in_order(fake, client):
    client.list()
    client.chat(model="llama3.2", messages=user("x"), stream=False, format="json",
                options={"seed": 1}, keep_alive="5m")
    assert [p for p, _ in fake.requests] == ["/api/tags", "/api/chat"]
    assert fake.requests[0][1] is None
    body = fake.requests[1][1]
    assert body["format"] == "json" and body["options"] == {"seed": 1}
    assert body["keep_alive"] == "5m"


# ---- embeddings: POST /api/embed and the legacy POST /api/embeddings ----------

from ollama._types import EmbeddingsResponse, EmbedResponse  # noqa: E402

EMBED = "nomic-embed-text"


@pytest.fixture
def efake(fake):
    fake.add_model(EMBED, family="nomic-bert", parameter_size="137M", quantization_level="F16")
    return fake


def norm(vec):
    return sum(x * x for x in vec) ** 0.5


def cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / (norm(a) * norm(b))


def test_embed_single_shape_and_values(efake, client):
    r = client.embed(model=EMBED, input="why is the sky blue?")
    assert isinstance(r, EmbedResponse) and r.model == EMBED
    (vec,) = r.embeddings
    assert len(vec) == 768 and abs(norm(vec) - 1) < 1e-6  # L2-normalised like real Ollama
    assert vec == fake_ollama.embed_vector("why is the sky blue?", 768, EMBED)
    assert r.prompt_eval_count == 8  # the same count real all-minilm reports for this text
    assert isinstance(r.total_duration, int) and isinstance(r.load_duration, int)
    assert r.total_duration >= r.load_duration > 0
    raw = requests.post(efake.url + "/api/embed", json={"model": EMBED, "input": "x"})
    assert raw.headers["Content-Type"].startswith("application/json")
    assert set(raw.json()) == {"model", "embeddings", "total_duration", "load_duration",
                               "prompt_eval_count"}
    EmbedResponse.model_validate_json(raw.content, strict=True)


def test_embed_batch_is_deterministic_and_similarity_follows_words(efake, client):
    texts = ["Why is the sky blue?", "Why is the grass green?", "stock market crash"]
    r = client.embed(model=EMBED + ":latest", input=texts)
    assert len(r.embeddings) == 3 and r.model == EMBED + ":latest"
    assert r.prompt_eval_count == 8 + 8 + 5
    again = client.embed(model=EMBED, input=texts[1])
    assert again.embeddings[0] == r.embeddings[1]
    a, b, c = r.embeddings
    assert cos(a, b) > cos(a, c) + 0.2
    efake.add_model("mxbai-embed-large")
    other = client.embed(model="mxbai-embed-large", input=texts[0]).embeddings[0]
    assert len(other) == 1024  # per-model dims (KNOWN_EMBEDDERS)


def test_embed_dimensions_truncate_and_renormalise(efake, client):
    full = client.embed(model=EMBED, input="hello world").embeddings[0]
    short = client.embed(model=EMBED, input="hello world", dimensions=64).embeddings[0]
    assert len(short) == 64 and abs(norm(short) - 1) < 1e-6
    head = full[:64]
    assert all(abs(x - y / norm(head)) < 1e-6 for x, y in zip(short, head))
    assert client.embed(model=EMBED, input="hello world", dimensions=5000).embeddings[0] == full
    assert efake.last_embed()["dimensions"] == 5000


def test_add_model_embedding_options(fake, client):
    fake.add_model("tiny-embed", embedding_dims=16)
    fake.add_model("custom-vectors", embedding=True, embedding_dims=8, context_length=5)
    fake.add_model("my-embed-chat", embedding=False)
    assert len(client.embed(model="tiny-embed", input="a").embeddings[0]) == 16
    assert len(client.embed(model="custom-vectors", input="a").embeddings[0]) == 8
    r = client.embed(model="custom-vectors", input="a b c d e f")
    assert r.prompt_eval_count == 5  # truncated to the context length
    assert r.embeddings[0] == fake_ollama.embed_vector("a b c", 8, "custom-vectors")
    with pytest.raises(ollama.ResponseError) as ei:
        client.embed(model="my-embed-chat", input="a")
    assert ei.value.status_code == 501
    assert fake.embed_spec("tiny-embed:latest") == (16, 2048)
    assert fake.embed_spec("llama3.2") is None and fake.embed_spec("my-embed-chat") is None


@pytest.mark.parametrize("inp", ["", [], None])
def test_embed_empty_input_answers_no_vectors(efake, inp):
    for model in (EMBED, "llama3.2"):  # also for a chat model: Ollama only loads it
        body = {"model": model} if inp is None else {"model": model, "input": inp}
        r = requests.post(efake.url + "/api/embed", json=body)
        assert r.status_code == 200 and r.json() == {"model": model, "embeddings": []}


def test_embed_truncation(efake, client):
    long = "very long input " * 100
    r = client.embed(model=EMBED, input=long, options={"num_ctx": 10})
    assert r.prompt_eval_count == 10
    assert r.embeddings[0] == fake_ollama.embed_vector(
        "very long input very long input very long", 768, EMBED)
    with pytest.raises(ollama.ResponseError) as ei:
        client.embed(model=EMBED, input=["short", long], truncate=False,
                     options={"num_ctx": 10})
    assert ei.value.status_code == 400
    assert ei.value.error == "the input length exceeds the context length"
    assert client.embed(model=EMBED, input="a b", truncate=False).prompt_eval_count == 4
    with pytest.raises(ollama.ResponseError) as ei:
        client.embed(model=EMBED, input="a b", options={"num_ctx": 2})
    assert ei.value.status_code == 400
    assert ei.value.error == "input after truncation exceeds maximum context length"
    body = efake.embed_bodies()[1]
    assert body["truncate"] is False and body["options"] == {"num_ctx": 10}


@pytest.mark.parametrize("body,status,error", [
    ({"model": "", "input": "x"}, 404, "model '' not found"),
    ({"input": "x"}, 404, "model '' not found"),
    ({"model": "nope", "input": "x"}, 404, 'model "nope" not found, try pulling it first'),
    ({"model": "llama3.2", "input": "x"}, 501, fake_ollama.ERR_NO_EMBED),
    ({"model": EMBED, "input": [[101, 2054]]}, 400, "invalid input type"),
    ({"model": EMBED, "input": ["ok", 3]}, 400, "invalid input type"),
    ({"model": EMBED, "input": 7}, 400, "invalid input type"),
    ({"model": EMBED, "input": {"text": "x"}}, 400, "invalid input type"),
    ({"model": EMBED, "input": "x", "dimensions": "5"}, 400,
     "json: cannot unmarshal string into Go struct field EmbedRequest.dimensions of type int"),
    ({"model": EMBED, "input": "x", "truncate": "no"}, 400,
     "json: cannot unmarshal string into Go struct field EmbedRequest.truncate of type bool"),
    ({"model": EMBED, "input": "x [ollama:busy]"}, 503, fake_ollama.ERR_BUSY),
    ({"model": EMBED, "input": ["a", "[ollama:error-500]"]}, 500, fake_ollama.ERR_500),
])
def test_embed_errors(efake, body, status, error):
    r = requests.post(efake.url + "/api/embed", json=body)
    assert r.status_code == status and r.json() == {"error": error}
    assert efake.last_embed() == body


def test_embed_errors_through_the_client(efake, client):
    with pytest.raises(ollama.ResponseError) as ei:
        client.embed(model="llama3.2", input="hello")
    assert ei.value.status_code == 501 and "does not support embeddings" in ei.value.error
    with pytest.raises(ollama.ResponseError) as ei:
        client.embed(model="nope", input="hello")
    assert ei.value.status_code == 404
    r = requests.post(efake.url + "/api/embed", data=b"")
    assert r.status_code == 400 and r.json() == {"error": "missing request body"}


def test_chat_on_embedding_model_is_refused(efake, client):
    with pytest.raises(ollama.ResponseError) as ei:
        client.chat(model=EMBED, messages=user("hi"), stream=False)
    assert ei.value.status_code == 400 and ei.value.error == f'"{EMBED}" does not support chat'


def test_embed_requests_recorded(efake, client):
    client.embed(model=EMBED, input=["a", "b"], truncate=True, keep_alive="10m",
                 options={"num_ctx": 512}, dimensions=32)
    client.embeddings(model=EMBED, prompt="c")
    assert [p for p, _ in efake.requests] == ["/api/embed", "/api/embeddings"]
    assert efake.embed_bodies() == [{"model": EMBED, "input": ["a", "b"], "truncate": True,
                                     "options": {"num_ctx": 512}, "keep_alive": "10m",
                                     "dimensions": 32}]
    assert efake.embeddings_bodies() == [{"model": EMBED, "prompt": "c"}]
    assert efake.chat_bodies() == []


def test_embed_hang_and_delay(efake):
    t0 = time.monotonic()
    with pytest.raises(requests.exceptions.RequestException):
        requests.post(efake.url + "/api/embed", timeout=(2, 0.3),
                      json={"model": EMBED, "input": "[ollama:hang]"})
    assert time.monotonic() - t0 < 2
    efake.set_delay_ms(50)
    t0 = time.monotonic()
    requests.post(efake.url + "/api/embed", json={"model": EMBED, "input": ["a", "b"]})
    assert time.monotonic() - t0 >= 0.09


def test_legacy_embeddings(efake, client):
    r = client.embeddings(model=EMBED, prompt="why is the sky blue?")
    assert isinstance(r, EmbeddingsResponse) and len(r.embedding) == 768
    assert norm(r.embedding) > 2  # raw runner output, not normalised
    same_dir = [x / norm(r.embedding) for x in r.embedding]
    new = client.embed(model=EMBED, input="why is the sky blue?").embeddings[0]
    assert cos(same_dir, new) > 0.999999
    raw = requests.post(efake.url + "/api/embeddings", json={"model": EMBED, "prompt": "x"})
    assert set(raw.json()) == {"embedding"}
    EmbeddingsResponse.model_validate_json(raw.content, strict=True)
    assert client.embeddings(model=EMBED, prompt="").embedding == []
    for body, status, error in [
        ({"model": "", "prompt": "x"}, 400, "model is required"),
        ({"model": "nope", "prompt": "x"}, 404, 'model "nope" not found, try pulling it first'),
        ({"model": "llama3.2", "prompt": "x"}, 500, fake_ollama.ERR_NO_EMBED),
        ({"model": EMBED, "prompt": "x " * 3000}, 500,
         "the input length exceeds the context length"),
    ]:
        r = requests.post(efake.url + "/api/embeddings", json=body)
        assert r.status_code == status and r.json() == {"error": error}, body
