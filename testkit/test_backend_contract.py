"""The backend contract holds: a third backend, defined here and registered through
bridge.Backend alone, shows up everywhere the two built-in ones do, with no edit to
bridge.py: routing, /v1/models, /health, /metrics, usage rows, the usage API's provider
filter, /openapi.json, the dashboard (in headless Chromium) and every API dialect."""
import re

import anthropic
import openai
import pytest
import requests

import bridge
from testkit.harness import user, wait_until
from testkit.test_dashboard import browser, expect, open_dashboard, page  # noqa: F401


class EchoRun(bridge.Run):
    """Streams the last message back, word by word."""

    def __init__(self, backend, chat):
        super().__init__(backend.workers)
        self.chat = chat

    def produce(self):
        words = self.chat.messages[-1].text.split()
        for word in words:
            yield bridge.TextDelta(word + " ")
        yield bridge.Final("stop", 1, len(words), 0, 0.0)


class EchoBackend(bridge.Backend):
    provider = "echo"

    def __init__(self, workers):
        self.workers = workers
        self.calls = 0
        self.stopped = False

    def matches(self, model):
        return model.startswith("echo/")

    def open(self, chat):
        self.calls += 1
        return EchoRun(self, chat)

    def models(self):
        return [{"id": "echo/words", "object": "model", "created": 0, "owned_by": "echo"}]

    def health(self):
        return {"ok": True, "words": "all of them"}

    def gauges(self):
        return (("bridge_echo_calls", "Requests the echo backend answered.", self.calls),)

    def shutdown(self):
        self.stopped = True


def with_echo(start, **settings):
    br = start(**settings)
    echo = EchoBackend(br.app.bridge.workers)
    br.app.bridge.register(echo)
    return br, echo


def test_a_registered_backend_serves_its_models_through_every_route(start):
    br, echo = with_echo(start, CLAUDE_AUTH_KEY="k")
    client = br.client()
    reply = client.chat.completions.create(
        model="echo/words", messages=[{"role": "user", "content": "one two three"}])
    assert reply.choices[0].message.content == "one two three "
    assert reply.usage.completion_tokens == 3
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="echo/words", stream=True, messages=[{"role": "user", "content": "a b"}])
        if c.choices)
    assert streamed == "a b "
    client.chat.completions.create(model="claude-code", messages=[
        {"role": "user", "content": "hello"}])  # the others still route as before
    assert echo.calls == 2
    key = {"Authorization": "Bearer k"}

    ids = [m.id for m in client.models.list()]
    assert "echo/words" in ids and ids[0] == "claude-code"
    health = requests.get(br.url + "/health", headers=key, timeout=10).json()
    assert health["backends"]["echo"] == {"ok": True, "words": "all of them"}
    assert set(health["backends"]) == {"echo", "ollama", "claude"}
    metrics = requests.get(br.url + "/metrics", headers=key, timeout=10).text
    assert "bridge_echo_calls 2" in metrics.splitlines()
    assert 'provider="echo",api="chat",outcome="ok"' in metrics

    assert [r["provider"] for r in br.rows()] == ["echo", "echo", "claude"]
    usage = requests.get(br.url + "/v1/usage?provider=echo", headers=key, timeout=10).json()
    assert [(u["model"], u["requests"]) for u in usage] == [("echo/words", 2)]
    bad = requests.get(br.url + "/v1/usage?provider=nope", headers=key, timeout=10)
    assert bad.status_code == 400 and "echo" in bad.json()["error"]["message"]
    document = requests.get(br.url + "/openapi.json", timeout=10).json()
    (provider,) = [p for p in document["paths"]["/v1/usage"]["get"]["parameters"]
                   if p["name"] == "provider"]
    assert provider["schema"]["enum"] == ["echo", "ollama", "claude"]

    br.app.bridge.end_children()
    assert echo.stopped


def test_a_registered_backend_speaks_every_dialect(start):
    """No dialect knows a backend: one registered in a test serves them all."""
    br, echo = with_echo(start)
    client = br.client()
    assert client.responses.create(model="echo/words", input="r s").output_text == "r s "
    message = anthropic.Anthropic(base_url=br.url, api_key="x", max_retries=0).messages.create(
        model="echo/words", max_tokens=9, messages=[{"role": "user", "content": "m n"}])
    assert message.content[0].text == "m n " and message.usage.output_tokens == 2
    assert client.completions.create(model="echo/words", prompt="c d").choices[0].text == \
        "c d "
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="echo/words", input="e", encoding_format="float")
    assert err.value.body["code"] == "embeddings_not_supported"
    assert [(r["provider"], r["api"]) for r in br.rows()] == [
        ("echo", "responses"), ("echo", "messages"), ("echo", "completions"),
        ("echo", "embeddings")]


def test_a_registered_backends_rows_show_on_the_dashboard(start, page):  # noqa: F811
    br, _ = with_echo(start)
    assert br.post({**user("hi there"), "model": "echo/words"}).status_code == 200
    assert wait_until(lambda: len(br.rows()) == 1)
    open_dashboard(page, br)
    row = page.page.locator("#models tbody tr", has_text="echo/words")
    expect(row).to_have_count(1)
    assert re.search(r"\becho\b", row.text_content())
