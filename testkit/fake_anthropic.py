"""A loopback fake of the Anthropic Messages API, for end-to-end tests that run
the real Claude Code CLI offline (stdlib only).

    fake = start()                  # binds 127.0.0.1 on a port the OS picks
    env["ANTHROPIC_BASE_URL"] = fake.url
    ...
    fake.requests                   # parsed JSON bodies of POST /v1/messages
    fake.mode = "error-401"         # or "ok", "error-500", "slow:N:MS"
    fake.stop()

Reply text (one text block), as in the reference transcripts:
    FAKE-REPLY model=<model> msgs=<n> len_last=<len(text)> to: <text>
where <text> is the last text block of the last user message and <n> is the
number of messages in the request.  Usage: input 111, cache_creation 222,
cache_read 333, output 44.

Modes (read per request, so tests may change `fake.mode` between calls):
    ok          normal answer (SSE when "stream" is true, else plain JSON)
    error-401   401 authentication_error "invalid x-api-key"
    error-500   500 api_error "fake: internal server error"
    slow:N:MS   the normal reply followed by N extra words "tick1 ... tickN",
                sleeping MS milliseconds before every text delta (for
                cancellation / timeout tests); non-streaming: sleeps
                (words * MS) then answers.  A client that goes away ends the
                stream at the next write.

Markers in the last user text (the last text block of the last user message; for a
request whose last user message holds tool_result blocks: the text of those results),
read per request, overriding `mode`:
    [upstream:tool:NAME:{json}]   answer with a tool_use block (name NAME, input the
                                  JSON object) instead of text; several markers = several
                                  tool_use blocks in one message (parallel calls);
                                  stop_reason "tool_use".  Ids: toolu_fake_<10 hex>.
    [upstream:json:{json}]        when the request offers a StructuredOutput tool (the
                                  CLI's --json-schema) and no tool marker applies: call it
                                  with this object (the last such marker in any user text;
                                  without one: {}).  At most two StructuredOutput calls per
                                  conversation, then text.
    [upstream:think:TEXT]         a thinking block (thinking_delta per word, then one
                                  signature_delta; signature "fakesig_<hex>") before
                                  the answer.
    [upstream:words:N]            the text answer gets N extra words "w1 ... wN".
    [upstream:error-429]          429 rate_limit_error with header retry-after: 7
    [upstream:error-529]          529 overloaded_error "Overloaded"
After tool results (last user message = tool_result blocks, no marker in them) the answer
is text: "FAKE-REPLY after tool_result: <id>=<is_error>:<text>; ..." in the order of the
results.
max_tokens: 1 word = 1 token; a text answer longer than the request's max_tokens words is
cut there and ends with stop_reason "max_tokens" (output_tokens = max_tokens).

Endpoints: HEAD/GET / -> 200; POST /v1/messages[?beta=true];
POST /v1/messages/count_tokens -> {"input_tokens": 111}; anything else -> 404
JSON in the Anthropic error format.

Run by hand:  python testkit/fake_anthropic.py [--host H] [--port N] [--mode M]
"""

import argparse
import json
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run as a script, or imported
import markers  # noqa: E402

USAGE = {
    "input_tokens": 111,
    "cache_creation_input_tokens": 222,
    "cache_read_input_tokens": 333,
    "output_tokens": 44,
}

# Seconds a connection may stay idle (or a body take to arrive) before the
# handler gives up: no thread can block forever on a silent peer.
SOCKET_TIMEOUT = 30.0


def last_user_text(messages):
    """Last text block of the last role=user message ("" if none)."""
    for msg in reversed(messages or []):
        if not isinstance(msg, dict) or msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            for block in reversed(content):
                if isinstance(block, dict) and block.get("type") == "text":
                    return block.get("text", "")
                if isinstance(block, str):
                    return block
        return ""
    return ""


def reply_text(body):
    model = body.get("model", "")
    messages = body.get("messages") or []
    text = last_user_text(messages)
    return "FAKE-REPLY model=%s msgs=%d len_last=%d to: %s" % (
        model, len(messages), len(text), text)




def _tool_results(messages):
    """[(tool_use_id, is_error, text)] of the last user message's tool_result blocks."""
    for msg in reversed(messages or []):
        if not isinstance(msg, dict) or msg.get("role") != "user":
            continue
        out = []
        content = msg.get("content")
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                c = block.get("content")
                if isinstance(c, list):
                    c = "".join(b.get("text", "") for b in c
                                if isinstance(b, dict) and b.get("type") == "text")
                out.append((block.get("tool_use_id"), bool(block.get("is_error")), c or ""))
        return out
    return []


def _all_user_text(messages):
    out = []
    for msg in messages or []:
        if isinstance(msg, dict) and msg.get("role") == "user":
            c = msg.get("content")
            if isinstance(c, str):
                out.append(c)
            elif isinstance(c, list):
                out.extend(b.get("text", "") for b in c
                           if isinstance(b, dict) and b.get("type") == "text")
    return "\n".join(out)


def _so_done(messages):
    """True once a StructuredOutput tool_use got a non-error result (or was tried twice)."""
    tries = 0
    for msg in messages or []:
        if isinstance(msg, dict) and msg.get("role") == "assistant" and isinstance(msg.get("content"), list):
            tries += sum(1 for b in msg["content"] if isinstance(b, dict)
                         and b.get("type") == "tool_use" and b.get("name") == "StructuredOutput")
    return tries >= 2


def parse_markers(text):
    """[(kind, arg)] of the [upstream:...] markers in text, in order.  kind "tool" has
    arg (name, input dict); "json" arg dict; "think" arg str; "words" arg int;
    "error-429"/"error-529" arg None."""
    return [(kind, int(arg) if kind == "words" else arg) for kind, arg in markers.scan(
        text, "upstream", named=("tool",), objects=("json",), texts=("think", "words"),
        flags=("error-429", "error-529")) if kind != "words" or arg.isdigit()]


def plan_answer(body):
    """-> (blocks, stop_reason, error) for one request.  blocks: [{"type": "thinking",
    "thinking": str} | {"type": "text", "text": str} | {"type": "tool_use", "name", "input"}];
    error: None or "error-429" / "error-529"."""
    messages = body.get("messages") or []
    results = _tool_results(messages)
    tool_names = [t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)]
    if results:
        marker_text = "\n".join(r[2] for r in results)
    else:
        marker_text = last_user_text(messages)
    marks = parse_markers(marker_text)
    for kind, _ in marks:
        if kind in ("error-429", "error-529"):
            return [], None, kind
    blocks = []
    for kind, arg in marks:
        if kind == "think":
            blocks.append({"type": "thinking", "thinking": arg})
    tools = [arg for kind, arg in marks if kind == "tool"]
    if not tools and "StructuredOutput" in tool_names and not _so_done(messages):
        objs = [arg for kind, arg in parse_markers(_all_user_text(messages)) if kind == "json"]
        tools.append(("StructuredOutput", objs[-1] if objs else {}))
    if tools:
        for name, inp in tools:
            blocks.append({"type": "tool_use", "name": name, "input": inp})
        return blocks, "tool_use", None
    if results:
        text = "FAKE-REPLY after tool_result: " + "; ".join(
            "%s=%s:%s" % (tid, "true" if err else "false", txt) for tid, err, txt in results)
    else:
        text = reply_text(body)
    extra = [arg for kind, arg in marks if kind == "words"]
    if extra:
        text += " " + " ".join("w%d" % i for i in range(1, extra[0] + 1))
    blocks.append({"type": "text", "text": text})
    return blocks, "end_turn", None


def split_words(text):
    """One piece per word, each with its trailing space (the last has none)."""
    parts = text.split(" ")
    return [p + " " for p in parts[:-1]] + [parts[-1]] if parts else []


def parse_mode(mode):
    """-> (kind, extra_words, delay_seconds)."""
    mode = (mode or "ok").strip()
    if mode.startswith("slow"):
        bits = mode.split(":")
        n = int(bits[1]) if len(bits) > 1 and bits[1] else 0
        ms = float(bits[2]) if len(bits) > 2 and bits[2] else 100.0
        return "slow", max(n, 0), max(ms, 0.0) / 1000.0
    return mode, 0, 0.0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-anthropic/1.0"
    timeout = SOCKET_TIMEOUT

    # -- plumbing ---------------------------------------------------------
    def log_message(self, fmt, *args):  # quiet unless asked
        if self.server.fake.verbose:
            sys.stderr.write("fake-anthropic: " + (fmt % args) + "\n")

    def _read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = b""
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_json(self, status, obj, extra_headers=None):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", "req_fake_" + uuid.uuid4().hex[:12])
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
            self.wfile.flush()

    def _send_error(self, status, etype, message):
        self._send_json(status, {"type": "error",
                                 "error": {"type": etype, "message": message}})

    def _path(self):
        return urlsplit(self.path).path.rstrip("/") or "/"

    # -- verbs ------------------------------------------------------------
    def do_HEAD(self):
        self.server.fake._hit(self.command, self.path)
        if self._path() == "/":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "3")
            self.end_headers()
        else:
            self._send_error(404, "not_found_error", "Not found: " + self.path)

    def do_GET(self):
        self.server.fake._hit(self.command, self.path)
        if self._path() == "/":
            data = b"ok\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self._send_error(404, "not_found_error", "Not found: " + self.path)

    def do_POST(self):
        fake = self.server.fake
        fake._hit(self.command, self.path)
        raw = self._read_body()
        path = self._path()
        if path not in ("/v1/messages", "/v1/messages/count_tokens"):
            self._send_error(404, "not_found_error", "Not found: " + self.path)
            return
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("body is not an object")
        except ValueError as exc:
            self._send_error(400, "invalid_request_error", "bad JSON: %s" % exc)
            return
        if path == "/v1/messages/count_tokens":
            self._send_json(200, {"input_tokens": USAGE["input_tokens"]})
            return

        fake._record(body, dict(self.headers.items()))
        kind, extra, delay = parse_mode(fake.mode)
        blocks, stop, error = plan_answer(body)
        if error == "error-429":
            kind = error
        elif error == "error-529":
            kind = error
        if kind == "error-401":
            self._send_error(401, "authentication_error", "invalid x-api-key")
            return
        if kind == "error-500":
            self._send_error(500, "api_error", "fake: internal server error")
            return
        if kind == "error-429":
            self._send_json(429, {"type": "error", "error": {
                "type": "rate_limit_error",
                "message": "fake: rate limited, retry later"}},
                {"retry-after": "7"})
            return
        if kind == "error-529":
            self._send_error(529, "overloaded_error", "Overloaded")
            return

        if extra:
            for b in blocks:
                if b["type"] == "text":
                    b["text"] += " " + " ".join("tick%d" % i for i in range(1, extra + 1))
        # max_tokens: 1 word = 1 token; cut a longer text answer there.
        out_tokens = USAGE["output_tokens"]
        limit = body.get("max_tokens")
        if isinstance(limit, int) and stop == "end_turn":
            for b in blocks:
                if b["type"] == "text":
                    words = split_words(b["text"])
                    if len(words) > limit:
                        b["text"] = "".join(words[:limit]).rstrip(" ")
                        stop, out_tokens = "max_tokens", limit
        for b in blocks:
            if b["type"] == "tool_use":
                b["id"] = "toolu_fake_" + uuid.uuid4().hex[:10]
            if b["type"] == "thinking":
                b["signature"] = "fakesig_" + uuid.uuid4().hex[:24]
        model = body.get("model", "")
        msg_id = "msg_fake_" + uuid.uuid4().hex[:16]
        if body.get("stream"):
            self._stream(msg_id, model, blocks, stop, out_tokens, delay)
        else:
            if delay:
                time.sleep(delay * sum(len(split_words(b.get("text", ""))) for b in blocks))
            self._send_json(200, {
                "id": msg_id, "type": "message", "role": "assistant",
                "model": model,
                "content": blocks,
                "stop_reason": stop, "stop_sequence": None,
                "usage": dict(USAGE, output_tokens=out_tokens),
            })

    # -- SSE --------------------------------------------------------------
    def _chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _event(self, name, obj):
        self._chunk(("event: %s\ndata: %s\n\n" % (name, json.dumps(obj))).encode())

    def _stream(self, msg_id, model, blocks, stop, out_tokens, delay):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("request-id", "req_fake_" + uuid.uuid4().hex[:12])
        self.end_headers()
        try:
            start_usage = dict(USAGE, output_tokens=1)
            self._event("message_start", {"type": "message_start", "message": {
                "id": msg_id, "type": "message", "role": "assistant",
                "model": model, "content": [], "stop_reason": None,
                "stop_sequence": None, "usage": start_usage}})
            for index, b in enumerate(blocks):
                self._block(index, b, delay)
            self._event("message_delta", {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": out_tokens}})
            self._event("message_stop", {"type": "message_stop"})
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True  # client went away mid-stream

    def _delta(self, index, delta):
        self._event("content_block_delta", {
            "type": "content_block_delta", "index": index, "delta": delta})

    def _block(self, index, b, delay):
        t = b["type"]
        if t == "text":
            start = {"type": "text", "text": ""}
        elif t == "thinking":
            start = {"type": "thinking", "thinking": "", "signature": ""}
        else:
            start = {"type": "tool_use", "id": b["id"], "name": b["name"], "input": {}}
        self._event("content_block_start", {
            "type": "content_block_start", "index": index, "content_block": start})
        if index == 0:
            self._event("ping", {"type": "ping"})
        if t == "text":
            for word in split_words(b["text"]):
                if delay:
                    if self.server.fake._stopping.wait(delay):
                        break  # server shutting down: end the stream now
                self._delta(index, {"type": "text_delta", "text": word})
        elif t == "thinking":
            for word in split_words(b["thinking"]):
                self._delta(index, {"type": "thinking_delta", "thinking": word})
            self._delta(index, {"type": "signature_delta", "signature": b["signature"]})
        else:
            args = json.dumps(b["input"])
            half = len(args) // 2
            for part in ("", args[:half], args[half:]):
                self._delta(index, {"type": "input_json_delta", "partial_json": part})
        self._event("content_block_stop", {"type": "content_block_stop", "index": index})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False


class FakeAnthropic:
    """A running fake. Attributes: url, host, port, requests, hits, mode."""

    def __init__(self, host="127.0.0.1", port=0, mode="ok", verbose=False):
        self.mode = mode
        self.verbose = verbose
        self.requests = []   # parsed JSON bodies of POST /v1/messages
        self.request_headers = []  # their headers (dicts), same order
        self.hits = []       # (method, raw path) of every request received
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = _Server((host, port), _Handler)
        self._httpd.fake = self
        self.host, self.port = self._httpd.server_address[:2]
        self.url = "http://%s:%d" % (self.host, self.port)
        self._thread = None

    def _record(self, body, headers=None):
        with self._lock:
            self.requests.append(body)
            self.request_headers.append(headers or {})

    def _hit(self, method, path):
        with self._lock:
            self.hits.append((method, path))

    def serve_background(self):
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
            name="fake-anthropic", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stopping.set()
        if self._thread:
            self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start(host="127.0.0.1", port=0, mode="ok", verbose=False):
    """Start a fake in a background thread and return it (see FakeAnthropic)."""
    return FakeAnthropic(host, port, mode, verbose).serve_background()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--mode", default="ok")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    fake = FakeAnthropic(args.host, args.port, args.mode, not args.quiet)
    print(fake.url, flush=True)
    try:
        fake._httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        fake._httpd.server_close()


if __name__ == "__main__":
    main()
