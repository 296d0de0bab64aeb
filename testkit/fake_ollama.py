"""A faithful fake of Ollama's native HTTP API, for tests and benchmarks.

Stdlib only.  Follows /work/shared/reference/wire-formats.md (the Ollama
native API as the real server speaks it and as the official clients need it).

Use from tests::

    from testkit import fake_ollama
    fake = fake_ollama.start()          # port 0 -> fake.url = http://127.0.0.1:PORT
    ...
    fake.requests        # [(path, parsed JSON body or None), ...] in arrival order
    fake.chat_bodies()   # just the /api/chat bodies
    fake.embed_bodies()  # just the /api/embed bodies (embeddings_bodies(): legacy /api/embeddings)
    fake.models          # name -> /api/tags entry (add_model() builds realistic ones)
    fake.closed_streams  # int: chats whose client went away mid-response
    fake.active_streams  # int: chats (streaming or not) being generated right now
    fake.set_delay_ms(5) # per-piece delay for every chat
    fake.stop()

Or by hand / for benchmarks::

    python testkit/fake_ollama.py --port 11434 [--delay-ms 20] [--verbose]

Endpoints: GET|HEAD /, GET /api/version, GET /api/tags, POST /api/chat,
POST /api/embed, POST /api/embeddings (legacy); anything else is 404 {"error": "..."}.

POST /api/chat replies ``ECHO model=<model> msgs=<n> images=<k> last=<text>``
split into word pieces.  Markers in the last user message select failure
scenarios (the first marker in the text wins):

    [ollama:error-500]        500 {"error": "llama runner process has terminated: exit status 2"}
    [ollama:busy]             503 {"error": "server busy, please try again.  maximum pending requests exceeded"}
    [ollama:badreq]           400 {"error": "invalid options"}
    [ollama:midstream-error]  200, two pieces, then {"error": "..."} and no done line
                              (stream=false: 500 with that error, as the real server does)
    [ollama:no-done]          200, two pieces, then the body ends (stream=false: done=false object)
    [ollama:slow:N:MS]        N pieces "tick0 ", "tick1 ", ... MS ms apart (defaults 10, 100)
    [ollama:stamped:N:MS]     the same, each piece "tick<i>@<time.monotonic() when sent> "
    [ollama:hang]             streaming: headers only, then nothing for 60 s or until stop();
                              stream=false: nothing at all (like a real server stuck loading)

With ``tools`` in the request, ``[tool:NAME]`` or ``[tool:NAME:{json object}]`` in
the last user message (several allowed) turn the reply into tool calls, sent
whole in one chunk with content "".  Once tool results (role "tool" messages) follow
that user message, the markers are done with: the fake answers with its ECHO text, as a
model does with the results it asked for (a client that runs the tools and sends the
results back gets one round trip, not a loop).

Embeddings (see the "Ollama: POST /api/embed" section of wire-formats.md).  A
model embeds when add_model(..., embedding=True) said so, or (embedding=None,
the default) when its name contains "embed" or starts with all-minilm / bge-
(nomic-embed-text, mxbai-embed-large, embeddinggemma, ...).  No default model
embeds: call fake.add_model("nomic-embed-text").  Vectors are deterministic:
the sum over the lowercased words (runs of \\w) of a per-(model, word) pseudo-random
vector from shake_256, L2-normalised like real /api/embed (texts sharing
words are cosine-similar; word order is ignored).  Dimensions: 768 unless the
name is in KNOWN_EMBEDDERS or add_model(embedding_dims=N).  Token count of
one input: words-and-punctuation pieces + 2 (BOS/EOS; "why is the sky blue?"
-> 8, the same as real all-minilm).  The chat markers [ollama:error-500],
[ollama:busy], [ollama:badreq], [ollama:hang] and [ollama:slow:N:MS] (sleep
N*MS ms) also work inside an embed input.  A chat on an embedding model is
400 '"<model>" does not support chat'.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import functools
import hashlib
import json
import math
import re
import select
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["FakeOllama", "start", "model_info", "DEFAULT_MODELS", "KNOWN_EMBEDDERS",
           "embed_vector", "count_tokens", "is_embedding_name"]


class _QuietServer(ThreadingHTTPServer):
    """A peer that hangs up (or is killed) is normal here, not a traceback."""

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

ERR_500 = "llama runner process has terminated: exit status 2"
ERR_BUSY = "server busy, please try again.  maximum pending requests exceeded"
ERR_BADREQ = "invalid options"
ERR_MIDSTREAM = "an error was encountered while running the model: unexpected EOF"
HANG_SECONDS = 60.0
# A model with no embedding head (current Ollama runs llama-server without
# --embedding: its 501 text; before 0.33 the Go runner said
# "this model does not support embeddings", also 501).  Match the status.
ERR_NO_EMBED = "This server does not support embeddings. Start it with `--embeddings`"
ERR_EMBED_TOO_LONG = "the input length exceeds the context length"
ERR_EMBED_TRUNC = "input after truncation exceeds maximum context length"
ERR_EMBED_INPUT = "invalid input type"
DEFAULT_EMBED_DIMS = 768
DEFAULT_EMBED_CONTEXT = 2048
EMBED_LOAD_NS = 1_019_500
EMBED_NS_PER_TOKEN = 60_000

_JSON_CT = "application/json; charset=utf-8"
_NDJSON_CT = "application/x-ndjson"


def model_info(name, *, size=1_000_000_000, digest=None, family="llama",
               parameter_size="1B", quantization_level="Q4_K_M",
               modified_at="2025-01-08T14:22:31.462811372+01:00", fmt="gguf"):
    """A realistic /api/tags entry for NAME (a tag is added when missing)."""
    if ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    if digest is None:
        digest = (binascii.hexlify(name.encode()).decode() * 8)[:64].ljust(64, "0")
    return {
        "name": name,
        "model": name,
        "modified_at": modified_at,
        "size": size,
        "digest": digest,
        "details": {
            "parent_model": "",
            "format": fmt,
            "family": family,
            "families": [family],
            "parameter_size": parameter_size,
            "quantization_level": quantization_level,
        },
    }


DEFAULT_MODELS = {
    "llama3.2:latest": model_info(
        "llama3.2:latest", size=2019393189,
        digest="a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
        family="llama", parameter_size="3.2B", quantization_level="Q4_K_M",
        modified_at="2024-12-07T09:26:59.154545233-08:00"),
    "qwen2.5:0.5b": model_info(
        "qwen2.5:0.5b", size=397821319,
        digest="a8b0c51577010a279d933d14c2a8ab4b268079d44c5c8830c0a93900f1827c67",
        family="qwen2", parameter_size="494.03M", quantization_level="Q4_K_M",
        modified_at="2025-01-02T17:41:08.011377925+01:00"),
}


# name (tag stripped) -> (embedding dims, context length in tokens).  Dims are the
# real models'; context lengths approximate the real ones.
KNOWN_EMBEDDERS = {
    "nomic-embed-text": (768, 2048),
    "mxbai-embed-large": (1024, 512),
    "all-minilm": (384, 512),
    "snowflake-arctic-embed": (1024, 512),
    "bge-m3": (1024, 8192),
    "embeddinggemma": (768, 2048),
}


def is_embedding_name(name):
    """The name rule for models that embed when add_model() was not told."""
    base = _norm_name(name).rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return "embed" in base or base.startswith(("all-minilm", "bge-"))


_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_WORD_RE = re.compile(r"\w+")


def count_tokens(text):
    """The fake tokenizer's count: words and punctuation marks, plus BOS and EOS."""
    return len(_TOKEN_RE.findall(text)) + 2


def _truncate_tokens(text, limit):
    """TEXT cut so that count_tokens() <= LIMIT (LIMIT >= 3)."""
    pieces = list(_TOKEN_RE.finditer(text))
    keep = limit - 2
    if len(pieces) <= keep:
        return text
    return text[:pieces[keep - 1].end()] if keep > 0 else ""


def _f32(v):
    return struct.unpack("f", struct.pack("f", v))[0]


def _f32_short(v):
    """V as float32, with the shortest decimal form that round-trips (like Go)."""
    f = _f32(v)
    for p in range(1, 10):
        s = float(f"{f:.{p}g}")
        if _f32(s) == f:
            return s
    return f


@functools.lru_cache(maxsize=65536)
def _word_vector(model_key, word, dims):
    raw = hashlib.shake_256(f"{model_key}\0{word}".encode()).digest(4 * dims)
    return tuple(u / 2147483648.0 - 1.0 for u in struct.unpack(f"<{dims}I", raw))


def _raw_vector(text, dims, model):
    """The fake model's un-normalised output for TEXT: a sum of word vectors."""
    key = _norm_name(model or "")
    words = [w.lower() for w in _WORD_RE.findall(text)] or ["\0" + text]
    acc = [0.0] * dims
    for w in words:
        for i, x in enumerate(_word_vector(key, w, dims)):
            acc[i] += x
    return acc


def _normalize(vec):
    norm = max(math.sqrt(sum(x * x for x in vec)), 1e-12)
    return [x / norm for x in vec]


def embed_vector(text, dims=DEFAULT_EMBED_DIMS, model="nomic-embed-text", dimensions=None):
    """Exactly the vector POST /api/embed returns for TEXT (after any truncation).

    DIMENSIONS (0 < d < dims): the first d values, normalised again, like Ollama.
    """
    vec = _normalize(_raw_vector(text, dims, model))
    vec = [_f32(x) for x in vec]
    if dimensions and 0 < dimensions < len(vec):
        vec = [_f32(x) for x in _normalize(vec[:dimensions])]
    return [_f32_short(x) for x in vec]


def _now_rfc3339():
    """UTC now like Go's time.Time JSON (RFC 3339, nanoseconds, zeros trimmed)."""
    ns = time.time_ns()
    secs, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    frac_s = f"{frac:09d}".rstrip("0")
    return base + ("." + frac_s if frac_s else "") + "Z"


def _norm_name(name):
    name = name.strip().lower()
    for prefix in ("registry.ollama.ai/library/", "registry.ollama.ai/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    if ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name


def _go_type(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _split_pieces(text):
    """Word pieces with their trailing whitespace; ''.join(pieces) == text."""
    pieces = re.findall(r"\s*\S+\s*", text)
    if not pieces and text:
        pieces = [text]
    return pieces


_MARKER_RE = re.compile(r"\[ollama:(error-500|busy|badreq|midstream-error|no-done|slow|stamped|hang)"
                        r"(?::(\d+))?(?::(\d+))?\]")


def _find_scenario(text):
    m = _MARKER_RE.search(text)
    if not m:
        return None, None
    return m.group(1), (m.group(2), m.group(3))


def _find_tool_calls(text):
    """Parse [tool:NAME] / [tool:NAME:{json}] markers into Ollama tool calls."""
    calls = []
    dec = json.JSONDecoder()
    pos = 0
    while True:
        i = text.find("[tool:", pos)
        if i < 0:
            return calls
        j = i + len("[tool:")
        m = re.match(r"[A-Za-z0-9_.\-]+", text[j:])
        if not m:
            pos = j
            continue
        name = m.group(0)
        k = j + len(name)
        args = {}
        if text.startswith("]", k):
            pos = k + 1
        elif text.startswith(":", k):
            try:
                val, end = dec.raw_decode(text, k + 1)
            except ValueError:
                pos = k + 1
                continue
            if not text.startswith("]", end):
                pos = end
                continue
            args = val if isinstance(val, dict) else {}
            pos = end + 1
        else:
            pos = k
            continue
        calls.append({"function": {"name": name, "arguments": args}})


class _BadRequest(Exception):
    pass


def _validate_chat(body):
    """Mimic Go's json.Unmarshal into api.ChatRequest plus the handler's checks.

    Returns a problem string (-> 400) or None.
    """
    def want(v, kinds, where):
        if v is None:
            return
        if _go_type(v) not in kinds:
            raise _BadRequest(f"json: cannot unmarshal {_go_type(v)} into Go struct field "
                              f"{where} of type {kinds[0] if kinds[0] != 'array' else 'slice'}")

    try:
        want(body.get("model"), ("string",), "ChatRequest.model")
        want(body.get("stream"), ("bool",), "ChatRequest.stream")
        want(body.get("options"), ("object",), "ChatRequest.options")
        want(body.get("tools"), ("array",), "ChatRequest.tools")
        want(body.get("messages"), ("array",), "ChatRequest.messages")
        for t in body.get("tools") or []:
            want(t, ("object",), "ChatRequest.tools")
            if t is not None:
                want(t.get("function"), ("object",), "ChatRequest.tools.function")
        for msg in body.get("messages") or []:
            want(msg, ("object",), "ChatRequest.messages")
            if msg is None:
                continue
            want(msg.get("role"), ("string",), "ChatRequest.messages.role")
            want(msg.get("content"), ("string",), "ChatRequest.messages.content")
            want(msg.get("tool_name"), ("string",), "ChatRequest.messages.tool_name")
            want(msg.get("images"), ("array",), "ChatRequest.messages.images")
            for img in msg.get("images") or []:
                want(img, ("string",), "ChatRequest.messages.images")
                if img is None:
                    continue
                try:
                    base64.b64decode(img, validate=True)
                except (binascii.Error, ValueError):
                    bad = next((i for i, ch in enumerate(img)
                                if not (ch.isalnum() or ch in "+/=")), len(img))
                    raise _BadRequest(f"illegal base64 data at input byte {bad}")
            want(msg.get("tool_calls"), ("array",), "ChatRequest.messages.tool_calls")
            for tc in msg.get("tool_calls") or []:
                want(tc, ("object",), "ChatRequest.messages.tool_calls")
                fn = (tc or {}).get("function")
                want(fn, ("object",), "ChatRequest.messages.tool_calls.function")
                if fn:
                    want(fn.get("name"), ("string",),
                         "ChatRequest.messages.tool_calls.function.name")
                    want(fn.get("arguments"), ("object",),
                         "ChatRequest.messages.tool_calls.function.arguments")
        fmt = body.get("format")
        if fmt not in (None, "", "json") and not isinstance(fmt, dict):
            raise _BadRequest(f"invalid format: {json.dumps(fmt)}; "
                              "expected \"json\" or a valid JSON schema")
    except _BadRequest as e:
        return str(e)
    return None


def _validate_fields(body, struct_name, fields):
    """Go's json.Unmarshal type errors for BODY's FIELDS {name: go kind}."""
    for name, kind in fields.items():
        v = body.get(name)
        if v is None:
            continue
        t = _go_type(v)
        if kind == "int":
            if t == "number" and isinstance(v, int):  # Go rejects 5.0 for an int too
                continue
            shown = f"number {v}" if t == "number" else t
            return (f"json: cannot unmarshal {shown} into Go struct field "
                    f"{struct_name}.{name} of type int")
        if t != kind:
            go_kind = {"object": "map[string]interface {}", "bool": "bool",
                       "string": "string"}[kind]
            return (f"json: cannot unmarshal {t} into Go struct field "
                    f"{struct_name}.{name} of type {go_kind}")
    return None


def _parse_body(raw, body, go_type):
    """400 text for a missing / non-JSON / non-object body, else None."""
    if not raw or not raw.strip():
        return "missing request body"
    if isinstance(body, str):
        return "invalid character in request body: not valid JSON"
    if not isinstance(body, dict):
        return f"json: cannot unmarshal {_go_type(body)} into Go value of type {go_type}"
    return None


class _ClientGone(Exception):
    """The client went away mid-response."""


class _Stopped(Exception):
    """stop() was called mid-response."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "fake-ollama"

    # ---- plumbing -------------------------------------------------------
    @property
    def fake(self) -> "FakeOllama":
        return self.server.fake  # type: ignore[attr-defined]

    def setup(self):
        super().setup()
        self.fake._track(self.connection, True)

    def finish(self):
        try:
            super().finish()
        finally:
            self.fake._track(self.connection, False)

    def log_message(self, fmt, *args):
        if self.fake.verbose:
            sys.stderr.write("fake-ollama: %s - %s\n" % (self.address_string(), fmt % args))

    def send_response(self, code, message=None):
        # Like Go's net/http: a Date header, no Server header.
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = bytearray()
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_bytes(self, status, body, ctype):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status, obj):
        self._send_bytes(status, json.dumps(obj, separators=(",", ":")).encode(), _JSON_CT)

    def _send_error(self, status, text):
        self._send_json(status, {"error": text})

    # ---- routing --------------------------------------------------------
    def do_HEAD(self):
        self._route("HEAD", None)

    def do_GET(self):
        self._route("GET", None)

    def do_POST(self):
        self._route("POST", self._read_body())

    def do_PUT(self):
        self._route("PUT", self._read_body())

    def do_DELETE(self):
        self._route("DELETE", self._read_body())

    def _route(self, method, raw):
        path = self.path.split("?", 1)[0]
        parsed = None
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode("utf-8", "replace")
        self.fake._record(path, parsed)
        if path == "/" and method in ("GET", "HEAD"):
            self._send_bytes(200, b"Ollama is running", "text/plain; charset=utf-8")
        elif path == "/api/version" and method in ("GET", "HEAD"):
            self._send_json(200, {"version": self.fake.version})
        elif path == "/api/tags" and method in ("GET", "HEAD"):
            self._send_json(200, {"models": self.fake._tags()})
        elif path == "/api/chat" and method == "POST":
            self._chat(raw, parsed)
        elif path == "/api/embed" and method == "POST":
            self._embed(raw, parsed)
        elif path == "/api/embeddings" and method == "POST":
            self._embeddings(raw, parsed)
        else:
            self._send_error(404, f"404 page not found: {method} {path}")

    # ---- /api/chat ------------------------------------------------------
    def _chat(self, raw, body):
        if not raw or not raw.strip():
            return self._send_error(400, "missing request body")
        if isinstance(body, str):
            return self._send_error(400, "invalid character in request body: not valid JSON")
        if not isinstance(body, dict):
            return self._send_error(
                400, f"json: cannot unmarshal {_go_type(body)} into Go value of type api.ChatRequest")
        problem = _validate_chat(body)
        if problem:
            return self._send_error(400, problem)
        model = body.get("model") or ""
        if not model.strip():
            return self._send_error(400, "model is required")
        if not self.fake._has_model(model):
            return self._send_error(404, f'model "{model}" not found, try pulling it first')
        if self.fake.embed_spec(model) is not None:  # no completion capability
            return self._send_error(400, f'"{model}" does not support chat')

        stream = body.get("stream")
        stream = True if stream is None else bool(stream)
        messages = [m for m in (body.get("messages") or []) if m is not None]

        if not messages:  # real Ollama: load the model and say so
            return self._send_json(200, {
                "model": model, "created_at": _now_rfc3339(),
                "message": {"role": "assistant", "content": ""},
                "done_reason": "load", "done": True})

        last_user = ""
        answered = False  # tool results came after the last user message
        for m in reversed(messages):
            if m.get("role") == "user":
                last_user = m.get("content") or ""
                break
            answered = answered or m.get("role") == "tool"
        n_images = sum(len(m.get("images") or []) for m in messages)

        scenario, params = _find_scenario(last_user)
        if scenario == "error-500":
            return self._send_error(500, ERR_500)
        if scenario == "busy":
            return self._send_error(503, ERR_BUSY)
        if scenario == "badreq":
            return self._send_error(400, ERR_BADREQ)

        options = body.get("options") or {}
        tool_calls = (_find_tool_calls(last_user)
                      if body.get("tools") and not answered else [])

        gap = 0.0
        if scenario in ("slow", "stamped"):
            count = int(params[0]) if params[0] is not None else 10
            gap = (int(params[1]) if params[1] is not None else 100) / 1000.0
            # stamped: each piece carries time.monotonic() at the moment it is written
            # (the same clock for every process here), for per-chunk delay benchmarks.
            stamp = "@{now}" if scenario == "stamped" else ""
            pieces = [f"tick{i}{stamp} " for i in range(count)]
        elif tool_calls and scenario is None:
            pieces = []
        else:
            text = (f"ECHO model={model} msgs={len(messages)} images={n_images} "
                    f"last={last_user}")
            stops = options.get("stop")
            if isinstance(stops, str):
                stops = [stops]
            cut = min((text.find(s) for s in (stops or [])
                       if isinstance(s, str) and s and s in text), default=-1)
            if cut >= 0:
                text = text[:cut]
            pieces = _split_pieces(text)

        done_reason = "stop"
        num_predict = options.get("num_predict")
        if (isinstance(num_predict, (int, float)) and not isinstance(num_predict, bool)
                and num_predict > 0 and int(num_predict) < len(pieces)):
            pieces = pieces[:int(num_predict)]
            done_reason = "length"

        gen = _Generation(self, model=model, n_messages=len(messages), stream=stream)
        self.fake._stream_started()
        try:
            if scenario == "hang":
                gen.hang()
            elif scenario in ("midstream-error", "no-done"):
                gen.broken(pieces[:2], with_error=(scenario == "midstream-error"))
            elif tool_calls and scenario is None:
                gen.tools(tool_calls)
            else:
                gen.normal(pieces, done_reason, gap)
        except _ClientGone:
            self.close_connection = True
            self.fake._client_gone()
        except _Stopped:  # server going down: drop the connection, not a client disconnect
            self.close_connection = True
        finally:
            self.fake._stream_ended()


    # ---- /api/embed -----------------------------------------------------
    _EMBED_FIELDS = {"model": "string", "truncate": "bool", "dimensions": "int",
                     "options": "object"}

    def _embed(self, raw, body):
        """server/routes.go EmbedHandler, step by step."""
        t0 = time.perf_counter_ns()
        problem = (_parse_body(raw, body, "api.EmbedRequest")
                   or _validate_fields(body, "EmbedRequest", self._EMBED_FIELDS))
        if problem:
            return self._send_error(400, problem)
        model = body.get("model") or ""
        if not model.strip():
            return self._send_error(404, f"model '{model}' not found")
        inp = body.get("input")
        if isinstance(inp, str):
            inputs = [inp] if inp else []
        elif isinstance(inp, list):
            if not all(isinstance(x, str) for x in inp):
                return self._send_error(400, ERR_EMBED_INPUT)
            inputs = list(inp)
        elif inp is None:
            inputs = []
        else:
            return self._send_error(400, ERR_EMBED_INPUT)
        if not self.fake._has_model(model):
            return self._send_error(404, f'model "{model}" not found, try pulling it first')

        gen = _Generation(self, model=model, n_messages=0, stream=False)
        try:
            if self._embed_scenario(gen, inputs):
                return
            if not inputs:  # real Ollama: load the model, answer no vectors
                return gen._send_full(200, {"model": model, "embeddings": []})
            spec = self.fake.embed_spec(model)
            if spec is None:
                return gen._send_full(501, {"error": ERR_NO_EMBED})
            dims, ctx = spec
            num_ctx = (body.get("options") or {}).get("num_ctx")
            if isinstance(num_ctx, int) and not isinstance(num_ctx, bool) and num_ctx > 0:
                ctx = min(ctx, num_ctx)
            truncate = body.get("truncate") is not False
            texts, tokens = [], 0
            for text in inputs:
                n = count_tokens(text)
                if ctx - 2 <= 0:
                    return gen._send_full(400, {"error": ERR_EMBED_TRUNC})
                if n > ctx:
                    if not truncate:
                        return gen._send_full(400, {"error": ERR_EMBED_TOO_LONG})
                    text = _truncate_tokens(text, ctx)
                    n = count_tokens(text)
                texts.append(text)
                tokens += n
            if self.fake.delay_ms:
                gen._wait(self.fake.delay_ms / 1000.0 * len(texts))
            dimensions = body.get("dimensions") or 0
            vectors = [embed_vector(t, dims, model, int(dimensions)) for t in texts]
            load = EMBED_LOAD_NS
            total = max(time.perf_counter_ns() - t0, 0) + load + EMBED_NS_PER_TOKEN * tokens
            gen._send_full(200, {"model": model, "embeddings": vectors,
                                 "total_duration": int(total), "load_duration": load,
                                 "prompt_eval_count": tokens})
        except _ClientGone:
            self.close_connection = True
        except _Stopped:
            self.close_connection = True

    def _embed_scenario(self, gen, inputs):
        """Chat failure markers inside an embed input; True when answered."""
        for text in inputs:
            scenario, params = _find_scenario(text)
            if scenario == "error-500":
                gen._send_full(500, {"error": ERR_500})
            elif scenario == "busy":
                gen._send_full(503, {"error": ERR_BUSY})
            elif scenario == "badreq":
                gen._send_full(400, {"error": ERR_BADREQ})
            elif scenario == "hang":
                self.close_connection = True
                gen._wait(HANG_SECONDS)
            elif scenario in ("slow", "stamped"):
                count = int(params[0]) if params[0] is not None else 10
                gap = (int(params[1]) if params[1] is not None else 100) / 1000.0
                gen._wait(count * gap)
                continue
            else:
                continue
            return True
        return False

    # ---- /api/embeddings (legacy) ----------------------------------------
    def _embeddings(self, raw, body):
        """server/routes.go EmbeddingsHandler: one prompt, a raw (unnormalised) vector."""
        problem = (_parse_body(raw, body, "api.EmbeddingRequest")
                   or _validate_fields(body, "EmbeddingRequest",
                                       {"model": "string", "prompt": "string",
                                        "options": "object"}))
        if problem:
            return self._send_error(400, problem)
        model = body.get("model") or ""
        if not model.strip():
            return self._send_error(400, "model is required")
        if not self.fake._has_model(model):
            return self._send_error(404, f'model "{model}" not found, try pulling it first')
        prompt = body.get("prompt") or ""
        gen = _Generation(self, model=model, n_messages=0, stream=False)
        try:
            if prompt and self._embed_scenario(gen, [prompt]):
                return
            if not prompt:  # "an empty request loads the model"
                return gen._send_full(200, {"embedding": []})
            spec = self.fake.embed_spec(model)
            if spec is None:  # every runner error is a 500 here
                return gen._send_full(500, {"error": ERR_NO_EMBED})
            dims, ctx = spec
            num_ctx = (body.get("options") or {}).get("num_ctx")
            if isinstance(num_ctx, int) and not isinstance(num_ctx, bool) and num_ctx > 0:
                ctx = min(ctx, num_ctx)
            if count_tokens(prompt) > ctx:
                return gen._send_full(500, {"error": ERR_EMBED_TOO_LONG})
            if self.fake.delay_ms:
                gen._wait(self.fake.delay_ms / 1000.0)
            # []float32 from the runner widened to float64: long decimal forms.
            vec = [_f32(x) for x in _raw_vector(prompt, dims, model)]
            gen._send_full(200, {"embedding": vec})
        except (_ClientGone, _Stopped):
            self.close_connection = True


class _Generation:
    """Writes one /api/chat reply, streaming (chunked NDJSON) or not."""

    def __init__(self, handler: _Handler, *, model, n_messages, stream):
        self.h = handler
        self.fake = handler.fake
        self.model = model
        self.n_messages = n_messages
        self.stream = stream
        self.t0 = time.perf_counter_ns()
        self.headers_sent = False
        self.chunked = handler.request_version != "HTTP/1.0"

    # -- low level
    def _gone(self):
        """True if the client closed its end (peer EOF or socket error)."""
        sock = self.h.connection
        try:
            r, _, _ = select.select([sock], [], [], 0)
            if not r:
                return False
            return sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _wait(self, seconds):
        """Sleep SECONDS, watching for client disconnects and stop()."""
        deadline = time.monotonic() + seconds
        while True:
            if self._gone():
                raise _ClientGone()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self.fake._stopping.wait(min(left, 0.05)):
                self._abort()

    def _abort(self):
        """stop() was called: drop the connection like a dying server."""
        self.h.close_connection = True
        raise _Stopped()

    def _start_stream(self):
        h = self.h
        h.send_response(200)
        h.send_header("Content-Type", _NDJSON_CT)
        if self.chunked:
            h.send_header("Transfer-Encoding", "chunked")
        else:
            h.send_header("Connection", "close")
            h.close_connection = True
        try:
            h.end_headers()
            h.wfile.flush()
        except OSError:
            raise _ClientGone()
        self.headers_sent = True

    def _write_line(self, obj, *, last=False):
        if self.fake._stopping.is_set():
            self._abort()
        if self._gone():
            raise _ClientGone()
        data = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
        if self.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
            if last:
                data += b"0\r\n\r\n"
        try:
            self.h.wfile.write(data)
            self.h.wfile.flush()
        except OSError:
            raise _ClientGone()

    def _end_stream(self):
        if self.chunked:
            try:
                self.h.wfile.write(b"0\r\n\r\n")
                self.h.wfile.flush()
            except OSError:
                raise _ClientGone()

    def _send_full(self, status, obj):
        if self._gone():
            raise _ClientGone()
        try:
            self.h._send_json(status, obj)
        except OSError:
            raise _ClientGone()

    # -- objects
    def _chunk(self, content, tool_calls=None):
        msg = {"role": "assistant", "content": content}
        if tool_calls:
            msg["tool_calls"] = tool_calls
        return {"model": self.model, "created_at": _now_rfc3339(), "message": msg, "done": False}

    def _final(self, content, done_reason, eval_count, tool_calls=None):
        msg = {"role": "assistant", "content": content}
        if tool_calls:
            msg["tool_calls"] = tool_calls
        prompt_eval_count = 10 * self.n_messages
        load = 1_523_708
        prompt_eval = 2_000_000 + 150_000 * prompt_eval_count
        eval_d = 12_000_000 * max(eval_count, 1)
        total = max(time.perf_counter_ns() - self.t0, 0) + load + prompt_eval + eval_d
        return {
            "model": self.model, "created_at": _now_rfc3339(), "message": msg,
            "done_reason": done_reason, "done": True,
            "total_duration": int(total), "load_duration": load,
            "prompt_eval_count": prompt_eval_count, "prompt_eval_duration": prompt_eval,
            "eval_count": eval_count, "eval_duration": eval_d,
        }

    # -- scenarios
    def normal(self, pieces, done_reason, gap):
        delay = self.fake.delay_ms / 1000.0
        if not self.stream:
            total = delay * len(pieces) + gap * max(len(pieces) - 1, 0)
            if total > 0:
                self._wait(total)
            return self._send_full(200, self._final("".join(pieces), done_reason, len(pieces)))
        self._start_stream()
        for i, piece in enumerate(pieces):
            wait = delay + (gap if i > 0 else 0.0)
            if wait > 0:
                self._wait(wait)
            if "{now}" in piece:
                piece = piece.replace("{now}", f"{time.monotonic():.6f}")
            self._write_line(self._chunk(piece))
        self._write_line(self._final("", done_reason, len(pieces)), last=True)

    def tools(self, tool_calls):
        delay = self.fake.delay_ms / 1000.0
        if delay > 0:
            self._wait(delay)
        if not self.stream:
            return self._send_full(200, self._final("", "stop", 1, tool_calls))
        self._start_stream()
        self._write_line(self._chunk("", tool_calls))
        self._write_line(self._final("", "stop", 1), last=True)

    def broken(self, pieces, *, with_error):
        delay = self.fake.delay_ms / 1000.0
        if not self.stream:
            if with_error:
                return self._send_full(500, {"error": ERR_MIDSTREAM})
            obj = self._chunk("".join(pieces))
            return self._send_full(200, obj)
        self._start_stream()
        for piece in pieces:
            if delay > 0:
                self._wait(delay)
            self._write_line(self._chunk(piece))
        if with_error:
            self._write_line({"error": ERR_MIDSTREAM}, last=True)
        else:
            self._end_stream()

    def hang(self):
        if self.stream:
            self._start_stream()
        self.h.close_connection = True
        try:
            self._wait(HANG_SECONDS)
        except _Stopped:
            return
        # Give up like a proxy timeout would: drop the connection, no body end.


class FakeOllama:
    """A running fake Ollama server (see module docstring)."""

    def __init__(self, host="127.0.0.1", port=0, *, delay_ms=0, verbose=False):
        self.version = "0.5.1"
        self.models = {k: json.loads(json.dumps(v)) for k, v in DEFAULT_MODELS.items()}
        # normalised name -> (dims, context length), or None: add_model() said it cannot
        # embed.  Names missing here fall back to is_embedding_name().
        self.embedders = {}
        self.requests = []
        self.closed_streams = 0
        self.active_streams = 0
        self.delay_ms = delay_ms
        self.verbose = verbose
        self._lock = threading.Lock()
        self._conns = set()
        self._stopping = threading.Event()
        self._httpd = _QuietServer((host, port), _Handler, bind_and_activate=False)
        self._httpd.daemon_threads = True
        self._httpd.request_queue_size = 1024
        self._httpd.allow_reuse_address = True
        self._httpd.server_bind()
        self._httpd.server_activate()
        self._httpd.fake = self
        h, p = self._httpd.server_address[:2]
        self.host, self.port = h, p
        self.url = f"http://{h}:{p}"
        self._thread = None

    # -- lifecycle
    def serve_in_thread(self):
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="fake-ollama", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stop serving; in-flight streams are cut off, idle connections closed."""
        self._stopping.set()
        try:
            self._httpd.shutdown()
        finally:
            self._httpd.server_close()
            with self._lock:
                conns = list(self._conns)
            for c in conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            if self._thread is not None:
                self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- test helpers
    def set_delay_ms(self, ms):
        self.delay_ms = max(0, ms or 0)

    def add_model(self, name, *, embedding=None, embedding_dims=None,
                  context_length=None, **kw):
        """Add a realistic model entry (see model_info) and return it.

        EMBEDDING: True / False, or None for the name rule (is_embedding_name).
        EMBEDDING_DIMS: vector length (default KNOWN_EMBEDDERS' or 768).
        CONTEXT_LENGTH: tokens one input may have (default KNOWN_EMBEDDERS' or 2048).
        """
        info = model_info(name, **kw)
        self.models[info["name"]] = info
        key = _norm_name(info["name"])
        if embedding is None:
            embedding = is_embedding_name(name) or embedding_dims is not None
        if embedding:
            known = KNOWN_EMBEDDERS.get(key.rsplit(":", 1)[0].rsplit("/", 1)[-1],
                                        (DEFAULT_EMBED_DIMS, DEFAULT_EMBED_CONTEXT))
            self.embedders[key] = (embedding_dims or known[0], context_length or known[1])
        else:
            self.embedders[key] = None
        return info

    def embed_spec(self, name):
        """(dims, context length) when model NAME embeds, else None."""
        key = _norm_name(name)
        if key in self.embedders:
            return self.embedders[key]
        if not is_embedding_name(name):
            return None
        return KNOWN_EMBEDDERS.get(key.rsplit(":", 1)[0].rsplit("/", 1)[-1],
                                   (DEFAULT_EMBED_DIMS, DEFAULT_EMBED_CONTEXT))

    def chat_bodies(self):
        return [b for p, b in list(self.requests) if p == "/api/chat"]

    def last_chat(self):
        bodies = self.chat_bodies()
        return bodies[-1] if bodies else None

    def embed_bodies(self):
        """The /api/embed request bodies, in arrival order."""
        return [b for p, b in list(self.requests) if p == "/api/embed"]

    def last_embed(self):
        bodies = self.embed_bodies()
        return bodies[-1] if bodies else None

    def embeddings_bodies(self):
        """The legacy /api/embeddings request bodies, in arrival order."""
        return [b for p, b in list(self.requests) if p == "/api/embeddings"]

    def reset(self):
        with self._lock:
            self.requests.clear()
            self.closed_streams = 0

    def wait_for(self, predicate, timeout=5.0):
        """Poll PREDICATE(self) until true or TIMEOUT; returns its last value."""
        deadline = time.monotonic() + timeout
        while True:
            v = predicate(self)
            if v or time.monotonic() >= deadline:
                return v
            time.sleep(0.01)

    # -- used by the handler
    def _record(self, path, body):
        with self._lock:
            self.requests.append((path, body))

    def _track(self, conn, add):
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def _stream_started(self):
        with self._lock:
            self.active_streams += 1

    def _stream_ended(self):
        with self._lock:
            self.active_streams -= 1

    def _client_gone(self):
        with self._lock:
            self.closed_streams += 1

    def _has_model(self, name):
        want = _norm_name(name)
        for key, info in list(self.models.items()):
            names = {key}
            if isinstance(info, dict):
                names.update(n for n in (info.get("name"), info.get("model")) if n)
            if any(_norm_name(n) == want for n in names):
                return True
        return False

    def _tags(self):
        out = []
        for key, info in list(self.models.items()):
            entry = dict(info) if isinstance(info, dict) else {}
            entry.setdefault("name", key)
            entry.setdefault("model", entry["name"])
            out.append(entry)
        return out


def start(host="127.0.0.1", port=0, *, delay_ms=0, verbose=False) -> FakeOllama:
    """Start a fake Ollama on HOST:PORT (0 = any free port) in a daemon thread."""
    return FakeOllama(host, port, delay_ms=delay_ms, verbose=verbose).serve_in_thread()


def main(argv=None):
    ap = argparse.ArgumentParser(description="Fake Ollama server (native API).")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=11434)
    ap.add_argument("--delay-ms", type=int, default=0, help="delay before each piece")
    ap.add_argument("--verbose", action="store_true", help="log each request")
    args = ap.parse_args(argv)
    fake = FakeOllama(args.host, args.port, delay_ms=args.delay_ms, verbose=args.verbose)
    print(f"fake-ollama listening on {fake.url}", flush=True)
    try:
        fake._httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        fake._stopping.set()
        fake._httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
