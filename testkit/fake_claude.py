#!/usr/bin/env python3
"""Fake `claude` executable: prints what Claude Code CLI 2.1.332 prints (``-p`` mode).

Built from the real transcripts in ``transcripts/2.1.332-*.jsonl`` (loaded at run time as
templates: only ids, session_id, model, text, usage/cost and timestamps are rewritten).

Behaviour is chosen per turn by a marker in the prompt: ``[fake:NAME]`` or
``[fake:NAME:ARG]`` (first marker wins; none = success).  Scenarios: success, error-401,
error-500, error-connrefused, midstream-fallback[:TEXT], midstream-error, slow[:N[:MS]],
hang, silent, garbage, half-line, crash, exit-nonzero[:MSG], big:N, tool-use, max-turns,
child, stderr-flood, sleep-start:MS.

Environment: CLAUDE_CONFIG_DIR / HOME (session store), IS_SANDBOX, FAKE_CLAUDE_LOG (dir for
``<pid>.json`` logs), FAKE_CLAUDE_STARTUP_MS (start-up delay before the first line).
"""
import os
import signal

# Signals first, so that even a very early SIGTERM behaves like the real CLI.
_SIG = {"mode": None, "sleeping": False, "pending": False}


class Interrupted(Exception):
    pass


def _on_term(signum, frame):
    os._exit(143)


def _on_int(signum, frame):
    if _SIG["mode"] == "slow":
        if _SIG["sleeping"]:
            raise Interrupted()
        _SIG["pending"] = True
        return
    os._exit(130)


signal.signal(signal.SIGTERM, _on_term)
signal.signal(signal.SIGINT, _on_int)

import json  # noqa: E402
import re  # noqa: E402  (already imported by json)
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

VERSION = "2.1.332"
TRANSCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "transcripts")
PREFIX = VERSION + "-"

ALIASES = {"sonnet": "claude-sonnet-5-5", "opus": "claude-opus-5-5", "haiku": "claude-haiku-5-5"}
DEFAULT_MODEL = "claude-opus-5-5"
# One API call of the fake upstream: usage and cost (cost = IN_COST + output * OUT_COST).
RUN_USAGE = {"i": 111, "cc": 222, "cr": 333, "o": 44}
RUN_COST = 0.0025006
IN_COST = 0.0016206
OUT_COST = 0.00002

MARKER_RE = re.compile(r"\[fake:([A-Za-z0-9_-]+)(?::([^\]]*))?\]")
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
SCENARIOS = {
    "success", "error-401", "error-500", "error-connrefused", "midstream-fallback",
    "midstream-error", "slow", "hang", "silent", "garbage", "half-line", "crash",
    "exit-nonzero", "big", "tool-use", "max-turns", "child", "stderr-flood", "sleep-start",
}

# Events not present in testkit/transcripts, copied from the real CLI's output
# (/work/shared/reference/claude-cli/event-examples.jsonl).
MAX_TURNS_RESULT = (
    '{"duration_api_ms":38,"stop_reason":"tool_use","session_id":"4296594e-b15a-432e-94e7-cbb33eaa04d9",'
    '"total_cost_usd":0.0025006,"usage":{"input_tokens":111,"cache_creation_input_tokens":222,'
    '"cache_read_input_tokens":333,"output_tokens":44,"output_tokens_details":{"thinking_tokens":0},'
    '"server_tool_use":{"web_search_requests":0,"web_fetch_requests":0},"service_tier":"standard",'
    '"cache_creation":{"ephemeral_1h_input_tokens":0,"ephemeral_5m_input_tokens":0},"inference_geo":"",'
    '"iterations":[],"speed":"standard","fallback_credit":null},"modelUsage":{"claude-opus-5-5":'
    '{"inputTokens":111,"outputTokens":44,"cacheReadInputTokens":333,"cacheCreationInputTokens":222,'
    '"webSearchRequests":0,"costUSD":0.0025006,"contextWindow":1000000,"maxOutputTokens":128000,'
    '"thinkingTokens":0,"cacheCreationEphemeral5mInputTokens":0,"cacheCreationEphemeral1hInputTokens":0,'
    '"canonicalModel":"claude-opus-5-5","provider":"firstParty","costBasis":"list"}},'
    '"permission_denials":[],"terminal_reason":"max_turns","fast_mode_state":"off",'
    '"fast_mode_disabled_reason":"sdk_opt_in_required","subagent_stats":{"spawned":0,"requested":'
    '{"background":0,"foreground":0,"unset":0},"started_in_background":0,"max_depth":0,'
    '"spawned_by_subagents":0,"completed":0,"failed":0,"killed":{"parent":0,"user":0,"system":0},'
    '"refused":{"depth_limit":0,"concurrency_limit":0,"budget":0},"by_type":{}},"safety_stops":0,'
    '"is_error":true,"num_turns":2,"subtype":"error_max_turns","errors":["Reached maximum number of '
    'turns (1)"],"type":"result","duration_ms":137,"uuid":"6b592ba0-9ff7-4616-b725-c769cef1e748",'
    '"queued_turn_count":0,"result_index":0,"model_usage_since_last_result":{"claude-opus-5-5":'
    '{"inputTokens":111,"outputTokens":44,"cacheReadInputTokens":333,"cacheCreationInputTokens":222,'
    '"webSearchRequests":0,"costUSD":0.0025006,"contextWindow":1000000,"maxOutputTokens":128000,'
    '"thinkingTokens":0,"cacheCreationEphemeral5mInputTokens":0,"cacheCreationEphemeral1hInputTokens":0,'
    '"canonicalModel":"claude-opus-5-5","provider":"firstParty","costBasis":"list"}}}'
)
TOOL_BLOCK_START = (
    '{"type":"stream_event","event":{"type":"content_block_start","index":1,"content_block":'
    '{"type":"tool_use","id":"toolu_fake_2db67830ca","name":"Bash","input":{}}},'
    '"session_id":"93db0b5b-e783-442f-9c6f-bacdeed2db6b","parent_tool_use_id":null,'
    '"uuid":"2ab0e69d-a5f0-4381-bcef-c1db50c73a1e","api_message_id":"msg_fake_c444acc80002455e"}'
)
INPUT_JSON_DELTA = (
    '{"type":"stream_event","event":{"type":"content_block_delta","index":1,"delta":'
    '{"type":"input_json_delta","partial_json":"{\\"command\\": \\"echo READONL"}},'
    '"session_id":"93db0b5b-e783-442f-9c6f-bacdeed2db6b","parent_tool_use_id":null,'
    '"uuid":"ef9868ed-0ad5-4566-bdcf-dc7483268e80","api_message_id":"msg_fake_c444acc80002455e"}'
)
RESUME_NOT_UUID = (
    "Error: --resume requires a valid session ID or session title when used with --print. "
    "Usage: claude -p --resume <session-id|title>. Provided value \"{}\" is not a UUID and does "
    "not match any session title."
)

# --------------------------------------------------------------------------- output


class _Io:
    stdout_ok = True


def _write_fd(fd, data):
    while data:
        n = os.write(fd, data)
        data = data[n:]


def write_out(data):
    """Raw write to stdout; a closed stdout does not stop the process (like the real CLI)."""
    if not _Io.stdout_ok:
        return
    try:
        _write_fd(1, data)
    except OSError:
        _Io.stdout_ok = False


def write_err(text):
    try:
        _write_fd(2, text.encode("utf-8", "replace"))
    except OSError:
        pass


def dumps(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def line(obj):
    return (dumps(obj) + "\n").encode("utf-8", "surrogatepass")


def now_iso():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % (int(t * 1000) % 1000)


def new_uuid():
    return str(uuid.uuid4())


def new_hex(n):
    return uuid.uuid4().hex[:n]


# --------------------------------------------------------------------------- templates

_TPL_CACHE = {}


def _lines(name):
    if name not in _TPL_CACHE:
        with open(os.path.join(TRANSCRIPTS, PREFIX + name), encoding="utf-8") as f:
            _TPL_CACHE[name] = [ln for ln in f.read().splitlines() if ln.strip()]
    return _TPL_CACHE[name]


def tpl(name, etype, sub=None, nth=0):
    """Fresh copy of the nth line of transcript `name` with type etype (and subtype or
    stream-event type `sub`)."""
    k = 0
    for raw in _lines(name):
        d = json.loads(raw)
        if d.get("type") != etype:
            continue
        if sub is not None:
            if etype == "stream_event":
                if d["event"].get("type") != sub:
                    continue
            elif d.get("subtype") != sub:
                continue
        if k == nth:
            return d
        k += 1
    raise LookupError("no %s/%s #%d in %s" % (etype, sub, nth, name))


# --------------------------------------------------------------------------- arguments

FLAG_OPTS = {
    "-p": "print", "--print": "print", "--verbose": "verbose",
    "--include-partial-messages": "partial",
    "--dangerously-skip-permissions": "skip_perms",
    "--no-session-persistence": "no_persist",
    "--strict-mcp-config": "strict_mcp", "--replay-user-messages": "replay_user",
    "--fork-session": "fork_session",
}
VALUE_OPTS = {
    "--output-format": ("output_format", "<format>"),
    "--input-format": ("input_format", "<format>"),
    "--model": ("model", "<model>"),
    "--session-id": ("session_id", "<uuid>"),
    "--system-prompt": ("system_prompt", "<prompt>"),
    "--append-system-prompt": ("append_system_prompt", "<prompt>"),
    "--system-prompt-file": ("system_prompt_file", "<file>"),
    "--append-system-prompt-file": ("append_system_prompt_file", "<file>"),
    "--max-turns": ("max_turns", "<turns>"),
    "--permission-mode": ("permission_mode", "<mode>"),
    "--fallback-model": ("fallback_model", "<model>"),
    "--settings": ("settings", "<file-or-json>"),
    "--setting-sources": ("setting_sources", "<sources>"),
}
LIST_OPTS = {
    "--allowedTools": "allowed_tools", "--allowed-tools": "allowed_tools",
    "--disallowedTools": "disallowed_tools", "--disallowed-tools": "disallowed_tools",
    "--tools": "tools", "--add-dir": "add_dir", "--mcp-config": "mcp_config",
}
CHOICES = {"output_format": ("text", "json", "stream-json"), "input_format": ("text", "stream-json")}


class UsageError(Exception):
    pass


def parse_args(argv):
    o = {"output_format": "text", "input_format": "text", "resume": None, "positional": []}
    i = 0
    only_pos = False
    while i < len(argv):
        a = argv[i]
        i += 1
        if only_pos or not a.startswith("-") or a == "-":
            o["positional"].append(a)
            continue
        if a == "--":
            only_pos = True
            continue
        if a in ("-v", "--version"):
            o["version"] = True
            continue
        if a in ("-h", "--help"):
            o["help"] = True
            continue
        name, eq, inline = a.partition("=")
        if not a.startswith("--"):
            name, eq, inline = a, "", ""
        if name in FLAG_OPTS and not eq:
            o[FLAG_OPTS[name]] = True
        elif name in VALUE_OPTS:
            key, meta = VALUE_OPTS[name]
            if eq:
                val = inline
            elif i < len(argv) and not argv[i].startswith("-"):
                val = argv[i]
                i += 1
            else:
                raise UsageError("error: option '%s %s' argument missing" % (name, meta))
            if key in CHOICES and val not in CHOICES[key]:
                raise UsageError(
                    "error: option '%s %s' argument '%s' is invalid. Allowed choices are %s."
                    % (name, meta, val, ", ".join(CHOICES[key])))
            o[key] = val
        elif name in ("-r", "--resume"):
            if eq:
                o["resume"] = inline
            elif i < len(argv) and not argv[i].startswith("-"):
                o["resume"] = argv[i]
                i += 1
            else:
                o["resume"] = True  # interactive picker in the real CLI
        elif name in LIST_OPTS:
            vals = [inline] if eq else []
            while i < len(argv) and not argv[i].startswith("-"):
                vals.append(argv[i])
                i += 1
            if not vals:
                raise UsageError("error: option '%s <values...>' argument missing" % name)
            o.setdefault(LIST_OPTS[name], []).extend(vals)
        else:
            raise UsageError("error: unknown option '%s'" % a)
    if len(o["positional"]) > 1:
        raise UsageError("error: too many arguments. Expected 1 argument but got %d."
                         % len(o["positional"]))
    return o


# --------------------------------------------------------------------------- log


class Log:
    path = None
    data = {}

    @classmethod
    def start(cls, argv, stdin_text, prompt=None):
        d = os.environ.get("FAKE_CLAUDE_LOG")
        if not d:
            return
        cls.path = os.path.join(d, "%d.json" % os.getpid())
        cls.data = {
            "pid": os.getpid(), "pgid": os.getpgid(0), "ppid": os.getppid(), "argv": argv,
            "cwd": os.getcwd(), "stdin": stdin_text, "env_claudecode": os.environ.get("CLAUDECODE"),
            "started": time.time(),
        }
        if prompt is not None:
            cls.data["prompt"] = prompt
        cls.save()

    @classmethod
    def update(cls, **kw):
        if cls.path is None:
            return
        cls.data.update(kw)
        cls.save()

    @classmethod
    def save(cls):
        tmp = "%s.%d.tmp" % (cls.path, os.getpid())
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(cls.data, f, ensure_ascii=False)
            os.replace(tmp, cls.path)
        except OSError as e:
            write_err("fake_claude: cannot write log %s: %s\n" % (cls.path, e))


def finish(code):
    Log.update(exit=code, finished=time.time())
    os._exit(code)


def die(msg, code=1):
    write_err(msg + "\n")
    finish(code)


# --------------------------------------------------------------------------- session


class Session:
    def __init__(self, opts, model):
        self.model = model
        self.partial = bool(opts.get("partial"))
        self.fmt = opts["output_format"]
        self.persist = not opts.get("no_persist")
        self.permission_mode = ("bypassPermissions" if opts.get("skip_perms")
                                else opts.get("permission_mode") or "default")
        self.max_turns = opts.get("max_turns")
        self.cwd = os.getcwd()
        state = os.environ.get("CLAUDE_CONFIG_DIR") or os.path.join(
            os.environ.get("HOME") or os.path.expanduser("~"), ".claude")
        self.proj_dir = os.path.join(state, "projects",
                                     self.cwd.replace("/", "-").replace(".", "-"))
        self.sid = None
        self.path = None
        self.prev_msgs = 0
        self.prev_cost = 0.0
        self.prev_usage = {}  # model -> {"i","o","cr","cc","cost"}
        self.init_done = False
        self.last_result = None

    def file_for(self, sid):
        return os.path.join(self.proj_dir, sid + ".jsonl")

    def load(self, path):
        with open(path, encoding="utf-8") as f:
            for raw in f:
                try:
                    d = json.loads(raw)
                except ValueError:
                    continue
                ft = d.get("fake_turn")
                if not ft:
                    continue
                self.prev_msgs += ft.get("msgs", 2)
                self.prev_cost += ft.get("cost", 0)
                for m, u in (ft.get("usage") or {}).items():
                    acc = self.prev_usage.setdefault(m, {"i": 0, "o": 0, "cr": 0, "cc": 0, "cost": 0.0})
                    for k in acc:
                        acc[k] += u.get(k, 0)

    def append(self, lines_):
        if not self.persist:
            return
        os.makedirs(self.proj_dir, exist_ok=True)
        data = "".join(dumps(x) + "\n" for x in lines_).encode("utf-8", "surrogatepass")
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            _write_fd(fd, data)
        finally:
            os.close(fd)

    def create(self):
        self.append([{"type": "fake-session", "sessionId": self.sid, "cwd": self.cwd,
                      "version": VERSION, "timestamp": now_iso()}])

    def record_turn(self, prompt, reply, msgs, usage, cost):
        ts = now_iso()
        self.append([
            {"type": "user", "sessionId": self.sid, "uuid": new_uuid(), "timestamp": ts,
             "cwd": self.cwd, "message": {"role": "user", "content": prompt}},
            {"type": "assistant", "sessionId": self.sid, "uuid": new_uuid(), "timestamp": ts,
             "message": {"role": "assistant", "model": self.model,
                         "content": [{"type": "text", "text": reply}]},
             "fake_turn": {"msgs": msgs, "cost": cost, "usage": usage}},
        ])
        self.prev_msgs += msgs
        self.prev_cost = round(self.prev_cost + cost, 7)
        for m, u in usage.items():
            acc = self.prev_usage.setdefault(m, {"i": 0, "o": 0, "cr": 0, "cc": 0, "cost": 0.0})
            for k in acc:
                acc[k] += u.get(k, 0)

    # ---- event output

    def emit(self, ev):
        t = ev.get("type")
        if t == "result":
            if not self.partial:
                ev.pop("begun_message_ids", None)
            self.last_result = ev
        if self.fmt != "stream-json":
            return
        if not self.partial and (t == "stream_event" or (t == "system" and ev.get("subtype") == "status")):
            return
        write_out(line(ev))

    def flush_final(self):
        """json / text output: print the turn's result at the end (nothing streams)."""
        r = self.last_result
        self.last_result = None
        if r is None or self.fmt == "stream-json":
            return
        if self.fmt == "json":
            r.pop("model_usage_since_last_result", None)
            r.pop("begun_message_ids", None)
            write_out(line(r))
        elif "result" in r:
            write_out((r["result"] + "\n").encode("utf-8", "surrogatepass"))

    # ---- event builders

    def base(self, ev):
        if "session_id" in ev:
            ev["session_id"] = self.sid
        if "uuid" in ev:
            ev["uuid"] = new_uuid()
        if "timestamp" in ev:
            ev["timestamp"] = now_iso()
        return ev

    def init(self):
        if self.init_done:
            return
        self.init_done = True
        ev = self.base(tpl("stream-partial.jsonl", "system", "init"))
        ev["cwd"] = ev["original_cwd"] = self.cwd
        ev["model"] = self.model
        ev["permissionMode"] = self.permission_mode
        if isinstance(ev.get("memory_paths"), dict) and "auto" in ev["memory_paths"]:
            ev["memory_paths"]["auto"] = os.path.join(self.proj_dir, "memory") + "/"
        self.emit(ev)

    def status(self):
        self.emit(self.base(tpl("stream-partial.jsonl", "system", "status")))

    def sev(self, sub, mid, src="stream-partial.jsonl", nth=0):
        ev = self.base(tpl(src, "stream_event", sub, nth))
        ev["api_message_id"] = mid
        if sub == "message_start":
            ev["event"]["message"]["id"] = mid
            ev["event"]["message"]["model"] = self.model
        if "abandoned_blocks" in ev:
            ev["abandoned_blocks"]["api_message_id"] = mid
        return ev

    def delta(self, mid, text, index=0):
        ev = self.sev("content_block_delta", mid)
        ev["event"]["index"] = index
        ev["event"]["delta"]["text"] = text
        return ev

    def assistant(self, src, mid, rid, content, nth=0):
        ev = self.base(tpl(src, "assistant", None, nth))
        msg = ev["message"]
        msg["id"] = mid
        if msg.get("model") != "<synthetic>":
            msg["model"] = self.model
        msg["content"] = content
        if "request_id" in ev:
            ev["request_id"] = rid
        return ev

    @staticmethod
    def usage_entry(ref, model, u):
        e = dict(ref)
        e["inputTokens"] = u["i"]
        e["outputTokens"] = u["o"]
        e["cacheReadInputTokens"] = u["cr"]
        e["cacheCreationInputTokens"] = u["cc"]
        e["costUSD"] = round(u["cost"], 7)
        if "canonicalModel" in e:
            e["canonicalModel"] = model
        return e

    def result(self, ev, run_usage, text=None, begun=None, errors=None):
        """run_usage: {"i","o","cr","cc","cost"} of this run for self.model, or None."""
        ev = self.base(ev)
        run_cost = run_usage["cost"] if run_usage else 0
        if "total_cost_usd" in ev:
            total = round(self.prev_cost + run_cost, 7)
            ev["total_cost_usd"] = total if total else ev["total_cost_usd"]
        first_ref = tpl("stream-partial.jsonl", "result")["modelUsage"][DEFAULT_MODEL]
        resumed_ref = tpl("session-resume.jsonl", "result")["modelUsage"][DEFAULT_MODEL]
        if "modelUsage" in ev:
            cum = {}
            for m, u in self.prev_usage.items():
                cum[m] = (dict(u), True)
            if run_usage:
                if self.model in cum:
                    acc = cum[self.model][0]
                    for k in acc:
                        acc[k] += run_usage[k]
                else:
                    cum[self.model] = (dict(run_usage), False)
            mu = {}
            for m, (u, restored) in cum.items():
                mu[m] = self.usage_entry(resumed_ref if restored else first_ref, m, u)
            ev["modelUsage"] = mu
        if "model_usage_since_last_result" in ev:
            ev["model_usage_since_last_result"] = (
                {self.model: self.usage_entry(first_ref, self.model, run_usage)} if run_usage else {})
        if text is not None and "result" in ev:
            ev["result"] = text
        if begun is not None and "begun_message_ids" in ev:
            ev["begun_message_ids"] = begun
        if errors is not None:
            ev["errors"] = errors
        return ev


def run_usage(calls=1, out_tokens=None):
    o = RUN_USAGE["o"] * calls if out_tokens is None else out_tokens
    cost = RUN_COST * calls if out_tokens is None else IN_COST + out_tokens * OUT_COST
    return {"i": RUN_USAGE["i"] * calls, "o": o, "cr": RUN_USAGE["cr"] * calls,
            "cc": RUN_USAGE["cc"] * calls, "cost": round(cost, 7)}


# --------------------------------------------------------------------------- scenarios


def isleep(sec):
    """Sleep during which SIGINT (in a `slow` turn) raises Interrupted."""
    _SIG["sleeping"] = True
    try:
        if _SIG["pending"]:
            raise Interrupted()
        time.sleep(sec)
    finally:
        _SIG["sleeping"] = False
    if _SIG["pending"]:
        raise Interrupted()


def sleep_forever():
    while True:
        time.sleep(3600)


def reply_deltas(s, prompt):
    m = s.prev_msgs + 2
    tail = prompt if len(prompt) <= 200 else prompt[-200:]
    ds = ["FAKE-REPLY ", "model=%s " % s.model, "msgs=%d " % m, "len_last=%d " % len(prompt), "to: "]
    if tail:
        ds.append(tail)
    return ds


def text_turn(s, prompt, deltas, delay=0.0):
    """A normal streamed text answer (2.1.332-stream-partial.jsonl shape)."""
    P = "stream-partial.jsonl"
    mid, rid = "msg_fake_" + new_hex(16), "req_fake_" + new_hex(12)
    s.status()
    s.emit(s.sev("message_start", mid))
    s.emit(s.sev("content_block_start", mid))
    sofar = []
    try:
        for i, d in enumerate(deltas):
            if i and delay:
                isleep(delay)
            s.emit(s.delta(mid, d))
            sofar.append(d)
            if _SIG["pending"]:
                raise Interrupted()
    except Interrupted:
        return sigint_tail(s, mid, rid, "".join(sofar))
    finally:
        _SIG["mode"] = None
    text = "".join(deltas)
    s.emit(s.assistant(P, mid, rid, [{"type": "text", "text": text}]))
    s.emit(s.sev("content_block_stop", mid))
    s.emit(s.sev("message_delta", mid))
    s.emit(s.sev("message_stop", mid))
    u = run_usage()
    s.emit(s.result(tpl(P, "result"), u, text=text, begun=[mid]))
    s.record_turn(prompt, text, 2, {s.model: u}, u["cost"])
    return 0


def sigint_tail(s, mid, rid, text):
    """What 2.1.332-sigint-midstream.jsonl prints after the streamed deltas; exit 0."""
    Q = "sigint-midstream.jsonl"
    s.emit(s.assistant(Q, mid, rid, [{"type": "text", "text": text}]))
    s.emit(s.base(tpl(Q, "user")))
    s.emit(s.sev("content_block_stop", mid, Q))
    s.emit(s.sev("message_delta", mid, Q))
    s.emit(s.sev("message_stop", mid, Q))
    u = run_usage(out_tokens=max(1, round(len(text) / 3)))
    s.emit(s.result(tpl(Q, "result"), u, begun=[mid]))
    s.flush_final()
    finish(0)


def api_error_turn(s, name, text=None):
    """Synthetic assistant + result with is_error true (error-401/500/connrefused)."""
    if text is None:
        text = tpl(name, "assistant")["message"]["content"][0]["text"]
    s.emit(s.assistant(name, new_uuid(), "req_fake_" + new_hex(12), [{"type": "text", "text": text}]))
    s.emit(s.result(tpl(name, "result"), None, text=text))
    return 1


def tool_turn(s, prompt, max_turns_hit=False):
    """2.1.332-tool-use.jsonl: text + tool_use, tool_result, final text."""
    T = "tool-use.jsonl"
    mid1, mid2 = "msg_fake_" + new_hex(16), "msg_fake_" + new_hex(16)
    rid1, rid2 = "req_fake_" + new_hex(12), "req_fake_" + new_hex(12)
    tid = "toolu_fake_" + new_hex(10)
    a1 = tpl(T, "assistant", None, 0)
    a2 = tpl(T, "assistant", None, 1)
    text1 = a1["message"]["content"][0]["text"]
    tool_block = a2["message"]["content"][0]
    tool_block["id"] = tid
    # message 1
    s.status()
    s.emit(s.sev("message_start", mid1))
    s.emit(s.sev("content_block_start", mid1))
    s.emit(s.delta(mid1, text1))
    s.emit(s.assistant(T, mid1, rid1, [{"type": "text", "text": text1}], 0))
    s.emit(s.sev("content_block_stop", mid1))
    ev = s.base(json.loads(TOOL_BLOCK_START))
    ev["api_message_id"] = mid1
    ev["event"]["content_block"]["id"] = tid
    ev["event"]["content_block"]["name"] = tool_block["name"]
    s.emit(ev)
    args = json.dumps(tool_block["input"])
    for part in (args[: len(args) // 2], args[len(args) // 2:]):
        ev = s.base(json.loads(INPUT_JSON_DELTA))
        ev["api_message_id"] = mid1
        ev["event"]["delta"]["partial_json"] = part
        s.emit(ev)
    s.emit(s.assistant(T, mid1, rid1, [tool_block], 1))
    ev = s.sev("content_block_stop", mid1)
    ev["event"]["index"] = 1
    s.emit(ev)
    ev = s.sev("message_delta", mid1)
    ev["event"]["delta"]["stop_reason"] = "tool_use"
    s.emit(ev)
    s.emit(s.sev("message_stop", mid1))
    ev = s.base(tpl(T, "user"))
    ev["message"]["content"][0]["tool_use_id"] = tid
    for meta in ev.get("tool_result_meta") or []:
        meta["id"] = tid
    s.emit(ev)
    if max_turns_hit:
        n = s.max_turns or "1"
        s.emit(s.result(json.loads(MAX_TURNS_RESULT), run_usage(),
                        errors=["Reached maximum number of turns (%s)" % n]))
        return 1
    # message 2
    a3 = tpl(T, "assistant", None, 2)
    text2 = a3["message"]["content"][0]["text"]
    s.emit(s.sev("message_start", mid2))
    s.emit(s.sev("content_block_start", mid2))
    s.emit(s.delta(mid2, text2))
    s.emit(s.assistant(T, mid2, rid2, [{"type": "text", "text": text2}], 2))
    s.emit(s.sev("content_block_stop", mid2))
    s.emit(s.sev("message_delta", mid2))
    s.emit(s.sev("message_stop", mid2))
    u = run_usage(calls=2)
    r = s.result(tpl(T, "result"), u, text=text2)
    if s.partial:  # the non-partial transcript has no begun_message_ids; partial runs do
        items = list(r.items())
        pos = [k for k, _ in items].index("uuid") + 1
        items.insert(pos, ("begun_message_ids", [mid1, mid2]))
        r = dict(items)
    s.emit(r)
    s.record_turn(prompt, text2, 4, {s.model: u}, u["cost"])
    return 0


def midstream_turn(s, prompt, arg, fallback):
    F = "midstream-fallback.jsonl"
    mid, rid = "msg_fake_" + new_hex(16), "req_fake_" + new_hex(12)
    s.status()
    s.emit(s.sev("message_start", mid, F))
    s.emit(s.sev("content_block_start", mid, F))
    s.emit(s.delta(mid, arg if (fallback and arg is not None) else "FAKE-REPLY "))
    s.emit(s.sev("content_block_stop", mid, F))
    if not fallback:
        s.emit(s.sev("message_delta", mid, "sigint-midstream.jsonl"))
    s.emit(s.sev("message_stop", mid, F))
    if not fallback:
        return api_error_turn(s, "error-500.jsonl", "API Error: 500 stream interrupted")
    text = "".join(reply_deltas(s, prompt))
    mid2 = "msg_fake_" + new_hex(16)
    s.emit(s.assistant(F, mid2, rid, [{"type": "text", "text": text}]))
    u = run_usage()
    s.emit(s.result(tpl(F, "result"), u, text=text, begun=[mid]))
    s.record_turn(prompt, text, 2, {s.model: u}, u["cost"])
    return 0


def run_turn(s, prompt):
    """Runs one turn; returns the exit code it implies (0 ok, 1 error)."""
    m = MARKER_RE.search(prompt)
    name, arg = (m.group(1), m.group(2)) if m else ("success", None)
    if name not in SCENARIOS:
        die("fake_claude: unknown scenario %r" % name, 3)
    Log.update(scenario=name, session_id=s.sid, model=s.model)

    if name == "silent":
        sleep_forever()
    if name == "exit-nonzero":
        die(arg or "Error: something went wrong", 2)
    if name == "sleep-start":
        time.sleep(_int(arg, 0) / 1000.0)
    s.init()

    if name in ("hang", "child"):
        if name == "child":
            pid = os.posix_spawnp("sleep", ["sleep", "300"], os.environ)
            Log.update(child_pid=pid)
        s.status()
        sleep_forever()
    if name == "garbage":
        write_out(b"this is not json {\n")
        die("fatal: garbage output", 1)
    if name == "half-line":
        if s.partial:
            ev = s.sev("message_start", "msg_fake_" + new_hex(16))
        else:
            ev = s.assistant("stream-partial.jsonl", "msg_fake_" + new_hex(16),
                             "req_fake_" + new_hex(12), [{"type": "text", "text": "FAKE-REPLY"}])
        data = line(ev)
        write_out(data[: len(data) // 2])
        finish(1)
    if name == "crash":
        mid = "msg_fake_" + new_hex(16)
        s.status()
        s.emit(s.sev("message_start", mid))
        s.emit(s.sev("content_block_start", mid))
        for d in reply_deltas(s, prompt)[:2]:
            s.emit(s.delta(mid, d))
        os.kill(os.getpid(), signal.SIGKILL)
    if name == "stderr-flood":
        chunk = (("stderr flood " + "e" * 1010 + "\n") * 64).encode()
        total = 5 * 1024 * 1024
        while total > 0:
            piece = chunk[:total]
            try:
                _write_fd(2, piece)
            except OSError:
                break
            total -= len(piece)

    if name in ("error-401", "error-500", "error-connrefused"):
        s.status()
        return api_error_turn(s, name + ".jsonl")
    if name == "midstream-fallback":
        return midstream_turn(s, prompt, arg, True)
    if name == "midstream-error":
        return midstream_turn(s, prompt, arg, False)
    if name == "tool-use":
        return tool_turn(s, prompt, max_turns_hit=_int(s.max_turns, 99) < 2)
    if name == "max-turns":
        return tool_turn(s, prompt, max_turns_hit=True)
    if name == "slow":
        parts = (arg or "").split(":")
        n = _int(parts[0], 10)
        ms = _int(parts[1] if len(parts) > 1 else None, 100)
        _SIG["mode"] = "slow"
        _SIG["pending"] = False
        return text_turn(s, prompt, ["tick%d " % i for i in range(n)], ms / 1000.0)
    deltas = reply_deltas(s, prompt)
    if name == "big":
        deltas.append("x" * _int(arg, 1024 * 1024))
    return text_turn(s, prompt, deltas)


def _int(v, default):
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


# --------------------------------------------------------------------------- main


def read_stdin():
    try:
        if os.isatty(0):
            return ""
    except OSError:
        return ""
    chunks = []
    try:
        while True:
            b = os.read(0, 1 << 20)
            if not b:
                break
            chunks.append(b)
    except OSError:
        pass
    return b"".join(chunks).decode("utf-8", "replace")


def prompt_from_message(msg):
    content = (msg.get("message") or {}).get("content")
    if isinstance(content, str):
        return content
    parts = []
    for b in content or []:
        if isinstance(b, dict):
            if b.get("type") == "text":
                parts.append(b.get("text") or "")
            elif b.get("type") == "image":
                parts.append("[image]")
    return "".join(parts)


def main():
    argv = sys.argv[1:]
    try:
        opts = parse_args(argv)
    except UsageError as e:
        Log.start(argv, None)
        die(str(e))
    if opts.get("version"):
        write_out(("%s (Claude Code)\n" % VERSION).encode())
        os._exit(0)
    if opts.get("help"):
        write_out(b"Usage: claude [options] [command] [prompt]\n\n(fake claude for tests)\n")
        os._exit(0)
    if not opts.get("print"):
        Log.start(argv, None)
        die("fake_claude: only --print (-p) mode is supported")
    if os.geteuid() == 0 and os.environ.get("IS_SANDBOX") != "1" and (
            opts.get("skip_perms") or opts.get("permission_mode") == "bypassPermissions"):
        Log.start(argv, None)
        die("--dangerously-skip-permissions cannot be used with root/sudo privileges for security reasons")
    if opts["output_format"] == "stream-json" and not opts.get("verbose"):
        Log.start(argv, None)
        die("Error: When using --print, --output-format=stream-json requires --verbose")
    stream_in = opts["input_format"] == "stream-json"
    if stream_in and opts["output_format"] != "stream-json":
        Log.start(argv, None)
        die("Error: --input-format=stream-json requires output-format=stream-json.")

    # model
    req_model = opts.get("model")
    model = ALIASES.get(req_model, req_model) if req_model else DEFAULT_MODEL
    if not model.startswith("claude-"):
        write_err("Warning: model '%s' is not a known Claude model; using it as given.\n" % model)

    # prompt (single-turn mode reads stdin to EOF first)
    stdin_text = ""
    prompt = None
    if not stream_in:
        stdin_text = read_stdin()
        pos = opts["positional"][0] if opts["positional"] else None
        if pos and stdin_text:
            prompt = pos + "\n" + stdin_text
        else:
            prompt = pos or stdin_text
    Log.start(argv, stdin_text, prompt)
    # Read once at start, as the real CLI does (its messages for a missing file, exit 1).
    for key, what in (("system_prompt_file", "System prompt"),
                      ("append_system_prompt_file", "Append system prompt")):
        if opts.get(key) is not None:
            try:
                with open(opts[key], encoding="utf-8") as f:
                    Log.update(**{key[:-len("_file")]: f.read()})
            except OSError:
                die("Error: %s file not found: %s" % (what, opts[key]))
    if not stream_in and not prompt:
        die("Error: Input must be provided either through stdin or as a prompt argument when using --print")

    s = Session(opts, model)
    sid_opt, resume = opts.get("session_id"), opts.get("resume")
    if sid_opt is not None and not UUID_RE.match(sid_opt):
        die("Error: Invalid session ID. Must be a valid UUID.")
    if resume is not None:
        if resume is True or not UUID_RE.match(resume):
            msg = RESUME_NOT_UUID.format("" if resume is True else resume)
            s.sid = new_uuid()
            write_err(msg + "\n")
            s.emit(s.result(tpl("error-resume-unknown.jsonl", "result"), None, errors=[msg]))
            s.flush_final()
            finish(1)
        if sid_opt is not None and not opts.get("fork_session"):
            die("Error: --session-id can only be used with --continue or --resume if "
                "--fork-session is also specified.")
        rpath = s.file_for(resume)
        if not os.path.isfile(rpath):
            msg = "No conversation found with session ID: %s" % resume
            s.sid = resume
            write_err(msg + "\n")
            s.emit(s.result(tpl("error-resume-unknown.jsonl", "result"), None, errors=[msg]))
            s.flush_final()
            finish(1)
        s.load(rpath)
        if opts.get("fork_session"):
            s.sid = sid_opt or new_uuid()
            s.path = s.file_for(s.sid)
            if os.path.exists(s.path):
                die("Error: Session ID %s is already in use." % s.sid)
        else:
            s.sid, s.path = resume, rpath
    elif sid_opt is not None:
        s.sid = sid_opt
        s.path = s.file_for(sid_opt)
        if os.path.exists(s.path):
            die("Error: Session ID %s is already in use." % sid_opt)
        s.create()
    else:
        s.sid = new_uuid()
        s.path = s.file_for(s.sid)
    Log.update(session_id=s.sid, model=model)

    startup = _int(os.environ.get("FAKE_CLAUDE_STARTUP_MS"), 0)
    if startup > 0:
        time.sleep(startup / 1000.0)

    if not stream_in:
        code = run_turn(s, prompt)
        s.flush_final()
        finish(code)

    # --input-format stream-json: one turn per stdin line, exit 0 at EOF.
    raw_in = []
    fin = sys.stdin.buffer
    while True:
        try:
            raw = fin.readline()
        except OSError:
            raw = b""
        if not raw:
            break
        text = raw.decode("utf-8", "replace")
        raw_in.append(text)
        Log.update(stdin="".join(raw_in))
        if not text.strip():
            continue
        try:
            msg = json.loads(text)
        except ValueError as e:
            die("Error parsing streaming input line: %s: %s" % (text.strip()[:200], e))
        if not isinstance(msg, dict) or msg.get("type") != "user":
            continue
        turn_prompt = prompt_from_message(msg)
        Log.update(turns=Log.data.get("turns", []) + [turn_prompt])
        s.init_done = False  # the real CLI prints system/init at the start of every turn
        run_turn(s, turn_prompt)
    finish(0)


if __name__ == "__main__":
    main()
