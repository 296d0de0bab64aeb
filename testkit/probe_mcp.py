"""A probe MCP server (Streamable HTTP, JSON responses) for observing what an MCP client
(the real or the fake `claude`) sends.  Stdlib only.

    probe = start(tools=[{"name": "get_weather", "description": "...",
                          "inputSchema": {"type": "object", ...}}])
    probe.url                      # http://127.0.0.1:PORT/mcp
    probe.log                      # [{"t", "method", "path", "headers", "body"}] every request
    probe.on_call = fn             # fn(params) -> ("result", {...}) | ("error", {...}) | None
    probe.discover = "error"       # server/discover answered with JSON-RPC -32601
    probe.sse = True               # answer as text/event-stream (one event) instead of JSON
    probe.session_id = "s1"        # send Mcp-Session-Id on every answer
    probe.stop()

Default tools/call answer: {"content": [{"type": "text", "text": "RESULT <name> <args json>"}]}.
A tool argument "sleep_ms" delays the answer; "is_error": true answers with isError;
"rpc_error": true answers with a JSON-RPC error -32000.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PROTOCOL = "2025-06-18"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "probe-mcp/1.0"
    timeout = 300

    def log_message(self, fmt, *args):
        pass

    def _log(self, body):
        p = self.server.probe
        entry = {"t": round(time.time() - p.t0, 3), "method": self.command, "path": self.path,
                 "headers": dict(self.headers.items()), "body": body,
                 "thread": threading.get_ident()}
        with p.lock:
            p.log.append(entry)
        return entry

    def _send(self, status, obj=None, headers=None):
        data = b"" if obj is None else json.dumps(obj).encode()
        sse = obj is not None and self.server.probe.sse and status == 200
        if sse:
            data = b"event: message\ndata: " + data + b"\n\n"
        self.send_response(status)
        if obj is not None:
            self.send_header("Content-Type", "text/event-stream" if sse else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if data:
            self.wfile.write(data)
        self.wfile.flush()

    def do_GET(self):
        self._log(None)
        self._send(405, {"jsonrpc": "2.0", "id": None,
                         "error": {"code": -32000, "message": "Method not allowed"}})

    def do_DELETE(self):
        self._log(None)
        self._send(200)

    def do_POST(self):
        p = self.server.probe
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            msg = json.loads(raw)
        except ValueError:
            msg = raw.decode("utf-8", "replace")
        entry = self._log(msg)
        if not isinstance(msg, dict):
            self._send(400, {"jsonrpc": "2.0", "id": None,
                             "error": {"code": -32700, "message": "Parse error"}})
            return
        method, mid = msg.get("method"), msg.get("id")
        sess = {"Mcp-Session-Id": p.session_id} if p.session_id else {}
        if "id" not in msg:  # notification
            self._send(202, None, sess)
            return
        if method == "server/discover" and p.discover == "error":
            self._send(200, {"jsonrpc": "2.0", "id": mid,
                             "error": {"code": -32601, "message": "Method not found"}}, sess)
            return
        if method == "initialize":
            ver = (msg.get("params") or {}).get("protocolVersion") or PROTOCOL
            self._send(200, {"jsonrpc": "2.0", "id": mid, "result": {
                "protocolVersion": p.answer_version or ver,
                "capabilities": {"tools": {"listChanged": False}},
                "serverInfo": {"name": "probe", "version": "1.0"}}}, sess)
            return
        if method == "tools/list":
            self._send(200, {"jsonrpc": "2.0", "id": mid, "result": {"tools": p.tools}}, sess)
            return
        if method == "tools/call":
            params = msg.get("params") or {}
            out = p.on_call(params) if p.on_call else None
            if out is None:
                args = params.get("arguments") or {}
                if args.get("sleep_ms"):
                    time.sleep(args["sleep_ms"] / 1000.0)
                if args.get("rpc_error"):
                    out = ("error", {"code": -32000, "message": "probe: tool failed"})
                else:
                    res = {"content": [{"type": "text", "text": "RESULT %s %s" % (
                        params.get("name"), json.dumps(args, sort_keys=True))}]}
                    if args.get("is_error"):
                        res["isError"] = True
                    out = ("result", res)
            entry["answered"] = round(time.time() - p.t0, 3)
            self._send(200, {"jsonrpc": "2.0", "id": mid, out[0]: out[1]}, sess)
            return
        if method == "ping":
            self._send(200, {"jsonrpc": "2.0", "id": mid, "result": {}}, sess)
            return
        self._send(200, {"jsonrpc": "2.0", "id": mid,
                         "error": {"code": -32601, "message": "Method not found"}}, sess)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def handle_error(self, request, client_address):
        pass  # a client that gave up on a held call (timeouts): nothing to report


class ProbeMCP:
    def __init__(self, tools=None, path="/mcp", discover="error", session_id=None):
        self.tools = tools or []
        self.discover = discover
        self.session_id = session_id
        self.answer_version = None
        self.on_call = None
        self.sse = False            # answer requests as one-event SSE streams
        self.log = []
        self.lock = threading.Lock()
        self.t0 = time.time()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.probe = self
        self.port = self._httpd.server_address[1]
        self.url = "http://127.0.0.1:%d%s" % (self.port, path)
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def methods(self):
        return [(e["method"], (e["body"] or {}).get("method") if isinstance(e["body"], dict)
                 else None) for e in self.log]

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()


def start(**kw):
    return ProbeMCP(**kw)


WEATHER_TOOL = {"name": "get_weather", "description": "Get the weather for a city",
                "inputSchema": {"type": "object", "properties": {
                    "city": {"type": "string"}, "sleep_ms": {"type": "integer"},
                    "is_error": {"type": "boolean"}, "rpc_error": {"type": "boolean"}},
                    "required": ["city"]}}
TIME_TOOL = {"name": "get_time", "description": "Get the time in a timezone",
             "inputSchema": {"type": "object", "properties": {
                 "tz": {"type": "string"}, "sleep_ms": {"type": "integer"}},
                 "required": ["tz"]}}
