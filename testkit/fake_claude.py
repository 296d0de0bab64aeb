#!/usr/bin/env python3
"""Fake `claude` executable: prints what Claude Code CLI 2.1.332 (or 2.1.197) prints (``-p`` mode).

Built from the real transcripts in ``transcripts/<version>-*.jsonl`` (loaded at run time as
templates: only ids, session_id, model, text, usage/cost and timestamps are rewritten; a
2.1.197 run falls back to the 2.1.332 file for cases captured on 2.1.332 only).

Behaviour is chosen per turn by a marker in the prompt: ``[fake:NAME]`` or
``[fake:NAME:ARG]`` (first marker wins; none = success).  Scenarios: success, error-401,
error-500, error-connrefused, error-429, error-529, midstream-fallback[:TEXT], midstream-error,
slow[:N[:MS]], hang, silent, garbage, half-line, crash, exit-nonzero[:MSG], big:N, tool-use,
max-turns, child, stderr-flood, sleep-start:MS.

Model markers (only in the NEW part of the prompt: the text after the last line starting with
``[end of earlier turns``, or all of it), combinable:
  ``[fake:mcp-call:NAME:{json args}]``  the model calls MCP tool NAME (bare ``get_weather`` or
      full ``mcp__client__get_weather``); several markers = several tool_use blocks in one
      message.  The fake POSTs tools/call to the --mcp-config server as the real CLI does
      (one after the other; concurrently when every called tool has annotations.readOnlyHint
      true), waits up to MCP_TOOL_TIMEOUT ms (default 60000), prints one ``user`` tool_result
      line per answer.  If result texts contain mcp-call markers, those tools are called next
      (another round); else the answer is
      ``FAKE-REPLY tool results: <bare name>=<result text>; <name2>=<text>`` (call order for
      sequential calls, completion order for concurrent ones; error texts as the real CLI's).
  ``[fake:json:{...}]``   with --json-schema: the StructuredOutput object (default: a minimal
      instance generated from the schema).
  ``[fake:think:TEXT]``   a thinking block (thinking_tokens + thinking_delta per word,
      signature_delta) before the answer.
Env CLAUDE_CODE_MAX_OUTPUT_TOKENS=N: a text answer longer than N words (1 word = 1 token) is
cut at N with stop_reason max_tokens, the CLI's "Output token limit hit" continuation follows
(up to 3 times, each answer being the fake upstream's reply to that message), then the
``max_output_tokens`` API error (exit 1), as the real CLI does against testkit/fake_anthropic.

Subcommand: ``auth status [--json|--text]`` (logged in with ANTHROPIC_API_KEY,
ANTHROPIC_AUTH_TOKEN, CLAUDE_CODE_OAUTH_TOKEN or <CLAUDE_CONFIG_DIR or ~/.claude>/.credentials.json
with scope user:inference; FAKE_CLAUDE_AUTH=none|ok forces it).

Environment: FAKE_CLAUDE_VERSION (2.1.332 default, or 2.1.197), CLAUDE_CONFIG_DIR / HOME
(session store), IS_SANDBOX, FAKE_CLAUDE_LOG (dir for ``<pid>.json`` logs),
FAKE_CLAUDE_STARTUP_MS (start-up delay before the first line), MCP_TOOL_TIMEOUT,
CLAUDE_CODE_MAX_OUTPUT_TOKENS, ANTHROPIC_BASE_URL (only for the 529 message).
Flags added for this: --mcp-config FILE_OR_JSON..., --strict-mcp-config, --tools, --allowedTools,
--json-schema, --effort (low|medium|high|xhigh|max; another value warns on stderr and runs).
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
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run as a script, or imported
import markers  # noqa: E402

VERSION = os.environ.get("FAKE_CLAUDE_VERSION") or "2.1.332"
if VERSION not in ("2.1.332", "2.1.197"):
    VERSION = "2.1.332"
V197 = VERSION == "2.1.197"
TRANSCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "transcripts")
PREFIX = VERSION + "-"

DEFAULT_MODEL = "claude-opus-4-8" if V197 else "claude-opus-5-5"
ALIASES = {"sonnet": "claude-sonnet-5-5", "opus": DEFAULT_MODEL, "haiku": "claude-haiku-5-5"}
# One API call of the fake upstream: usage and cost (cost = IN_COST + output * OUT_COST).
RUN_USAGE = {"i": 111, "cc": 222, "cr": 333, "o": 44}
IN_COST = 0.002109 if V197 else 0.0016206
OUT_COST = 0.000025 if V197 else 0.00002
RUN_COST = round(IN_COST + RUN_USAGE["o"] * OUT_COST, 7)
EFFORTS = ("low", "medium", "high", "xhigh", "max")

MARKER_RE = re.compile(r"\[fake:([A-Za-z0-9_-]+)(?::([^\]]*))?\]")
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
SCENARIOS = {
    "success", "error-401", "error-500", "error-connrefused", "midstream-fallback",
    "midstream-error", "slow", "hang", "silent", "garbage", "half-line", "crash",
    "exit-nonzero", "big", "tool-use", "max-turns", "child", "stderr-flood", "sleep-start",
    "error-429", "error-529",
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
    """Lines of transcripts/<version>-<name>; a 2.1.197 run falls back to the 2.1.332 file
    for the cases captured on 2.1.332 only."""
    if name not in _TPL_CACHE:
        path = os.path.join(TRANSCRIPTS, PREFIX + name)
        if not os.path.exists(path):
            path = os.path.join(TRANSCRIPTS, "2.1.332-" + name)
        with open(path, encoding="utf-8") as f:
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
    "--json-schema": ("json_schema", "<schema>"),
    "--effort": ("effort", "<level>"),
    "--resume-session-at": ("resume_session_at", "<uuid>"),
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
        self.last_assistant_uuid = None  # of the last assistant line printed
        self.prev_usage = {}  # model -> {"i","o","cr","cc","cost"}
        self.init_done = False
        self.last_result = None
        # 2.1.197 names its default model "<model>[1m]" in system/init and modelUsage.
        self.display_model = model + "[1m]" if (V197 and not opts.get("model")) else model
        self.mcp = []            # McpServer, connected at start-up
        self.tools_opt = opts.get("tools")
        self.json_schema = opts.get("json_schema")

    def file_for(self, sid):
        return os.path.join(self.proj_dir, sid + ".jsonl")

    def load(self, path, upto=None):
        """Count the session's turns (up to the entry with uuid `upto`, for
        --resume-session-at; the cost counts the whole session, as the real CLI's total
        after a fork does). The entries kept, or None when `upto` is not there."""
        kept, done, msgs = [], False, 0
        with open(path, encoding="utf-8") as f:
            for raw in f:
                try:
                    d = json.loads(raw)
                except ValueError:
                    continue
                before = done
                if not done:
                    kept.append(d)
                    done = upto is not None and d.get("uuid") == upto
                ft = d.get("fake_turn")
                if not ft:
                    continue
                if not before:
                    msgs += ft.get("msgs", 2)
                self.prev_cost += ft.get("cost", 0)
                for m, u in (ft.get("usage") or {}).items():
                    acc = self.prev_usage.setdefault(m, {"i": 0, "o": 0, "cr": 0, "cc": 0, "cost": 0.0})
                    for k in acc:
                        acc[k] += u.get(k, 0)
        self.prev_msgs += msgs
        return kept if upto is None or done else None

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
            {"type": "assistant", "sessionId": self.sid,
             "uuid": self.last_assistant_uuid or new_uuid(), "timestamp": ts,
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
        if t == "assistant" and ev.get("uuid"):  # the session file's entry has this uuid
            self.last_assistant_uuid = ev["uuid"]
        if t == "result":
            if not self.partial:
                ev.pop("begun_message_ids", None)
            self.last_result = ev
        if self.fmt != "stream-json":
            return
        if V197 and t == "stream_event":
            ev.pop("api_message_id", None)
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
        ev["model"] = self.display_model
        ev["tools"] = self.tool_names(ev["tools"])
        servers = []
        for srv in self.mcp:
            entry = {"name": srv.name, "status": srv.status}
            if not V197:
                entry["source"] = "dynamic"
            servers.append(entry)
        ev["mcp_servers"] = servers
        ev["permissionMode"] = self.permission_mode
        if isinstance(ev.get("memory_paths"), dict) and "auto" in ev["memory_paths"]:
            ev["memory_paths"]["auto"] = os.path.join(self.proj_dir, "memory") + "/"
        self.emit(ev)

    def tool_names(self, builtin):
        """system/init `tools`: built-ins (all, none for --tools "", or the named ones), then
        StructuredOutput with --json-schema, then the MCP tools sorted by name."""
        opt = self.tools_opt
        if opt is None or opt == ["default"]:
            names = list(builtin)
        else:
            wanted = [n.strip() for v in opt for n in v.split(",") if n.strip()]
            names = [n for n in builtin if n in wanted]
        if self.json_schema is not None:
            pos = len(names)
            for i, n in enumerate(names):
                if i and n > "StructuredOutput":
                    pos = i
                    break
            names.insert(pos, "StructuredOutput")
        mcp = sorted("mcp__%s__%s" % (srv.name, t["name"]) for srv in self.mcp for t in srv.tools)
        return names + mcp

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
        first_ref = next(iter(tpl("stream-partial.jsonl", "result")["modelUsage"].values()))
        resumed_ref = next(iter(tpl("session-resume.jsonl", "result")["modelUsage"].values()))
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
                key = self.display_model if m == self.model else m
                mu[key] = self.usage_entry(resumed_ref if restored else first_ref, m, u)
            ev["modelUsage"] = mu
        if "model_usage_since_last_result" in ev:
            ev["model_usage_since_last_result"] = (
                {self.display_model: self.usage_entry(first_ref, self.model, run_usage)} if run_usage else {})
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
    r = s.result(tpl(P, "result"), u, text=text, begun=[mid])
    s.record_turn(prompt, text, 2, {s.model: u}, u["cost"])  # written before the result line
    s.emit(r)
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
        if name == "error-529.jsonl":
            base = os.environ.get("ANTHROPIC_BASE_URL") or ""
            host = base.split("://", 1)[-1].split("/", 1)[0] if base else ""
            head = text.split(" If it persists,")[0]
            text = head + (" If it persists, check your inference gateway (%s)." % host if base
                           else " If it persists, check https://status.claude.com.")
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
    s.record_turn(prompt, text2, 4, {s.model: u}, u["cost"])
    s.emit(r)
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
    r = s.result(tpl(F, "result"), u, text=text, begun=[mid])
    s.record_turn(prompt, text, 2, {s.model: u}, u["cost"])
    s.emit(r)
    return 0


_LAST = {"new_error": False}


def run_turn(s, prompt):
    """Runs one turn; returns the exit code it implies (0 ok, 1 error)."""
    m = next((mm for mm in MARKER_RE.finditer(prompt) if mm.group(1) not in MODEL_MARKERS), None)
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

    _LAST["new_error"] = name in ("error-429", "error-529")
    if name in ("error-401", "error-500", "error-connrefused", "error-429", "error-529"):
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
    if name == "success":
        _LAST["new_error"] = True
        marks = parse_model_markers(new_part(prompt))
        if marks or s.json_schema is not None or _int(os.environ.get("CLAUDE_CODE_MAX_OUTPUT_TOKENS"), 0) > 0:
            return ModelTurn(s, prompt, marks).run()
    deltas = reply_deltas(s, prompt)
    if name == "big":
        deltas.append("x" * _int(arg, 1024 * 1024))
    return text_turn(s, prompt, deltas)


def _int(v, default):
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


# --------------------------------------------------------------------------- MCP client
# What the real CLI does with an http server of --mcp-config (claude-cli.md, "MCP exchange"):
# at start-up, before stdin is read: [2.1.332 only] server/discover, initialize,
# notifications/initialized, a GET for the SSE stream (in the background), tools/list; later
# one tools/call per tool_use block, after the assistant message's message_stop.

DISCOVER_VERSION = "2026-07-28"
CLIENT_PROTOCOL = "2025-11-25"
_CANONICAL_HEADERS = {"accept": "Accept", "accept-encoding": "Accept-Encoding",
                      "authorization": "Authorization", "content-type": "Content-Type",
                      "user-agent": "User-Agent", "cookie": "Cookie"}


def _client_info():
    return {"name": "claude-code", "title": "Claude Code", "version": VERSION,
            "description": "Anthropic's agentic coding tool",
            "websiteUrl": "https://claude.com/claude-code"}


def _client_caps():
    return ({"roots": {}, "elicitation": {}} if V197 else
            {"roots": {"listChanged": True}, "elicitation": {"form": {}, "url": {}}})


class McpTimeout(Exception):
    pass


class McpServer:
    def __init__(self, name, cfg):
        self.name = name
        self.url = cfg.get("url") or ""
        self.headers = {str(k): str(v) for k, v in (cfg.get("headers") or {}).items()}
        self.status = "pending"
        self.tools = []
        self.session = None
        self.proto = None
        self.next_id = 0
        self.lock = threading.Lock()
        u = urllib.parse.urlsplit(self.url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or (443 if u.scheme == "https" else 80)
        self.https = u.scheme == "https"
        self.path = (u.path or "/") + ("?" + u.query if u.query else "")
        self.netloc = u.netloc

    def _headers(self, body, extra):
        h = {"Accept": "application/json, text/event-stream" if body is not None else "text/event-stream",
             "Accept-Encoding": "identity", "User-Agent": "claude-code/%s (sdk-cli)" % VERSION}
        if body is not None:
            h["Content-Type"] = "application/json"
        if self.proto:
            h["mcp-protocol-version"] = self.proto
        if self.session:
            h["mcp-session-id"] = self.session
        h.update(extra or {})
        for k, v in self.headers.items():
            h[_CANONICAL_HEADERS.get(k.lower(), k.lower())] = v
        return sorted(h.items())

    def _conn(self, timeout):
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=timeout)

    def request(self, method, obj=None, extra=None, timeout=30.0):
        """-> (status, headers dict lower-case, parsed JSON-RPC message or None)."""
        data = None if obj is None else json.dumps(obj, separators=(",", ":")).encode()
        conn = self._conn(timeout)
        try:
            conn.putrequest(method, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in self._headers(data, extra):
                conn.putheader(k, v)
            conn.putheader("Connection", "keep-alive")
            conn.putheader("Host", self.netloc)
            if data is not None:
                conn.putheader("Content-Length", str(len(data)))
            conn.endheaders(data)
            resp = conn.getresponse()
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            if method == "GET":
                return resp, hdrs, conn
            raw = resp.read()
        except socket.timeout:
            conn.close()
            raise McpTimeout()
        except OSError:
            conn.close()
            raise
        conn.close()
        return resp.status, hdrs, self._parse(raw, hdrs.get("content-type", ""),
                                              obj.get("id") if obj else None)

    @staticmethod
    def _parse(raw, ctype, want_id):
        text = raw.decode("utf-8", "replace")
        if "text/event-stream" in ctype:
            for chunk in text.replace("\r\n", "\n").split("\n\n"):
                data = "\n".join(ln[5:].lstrip() for ln in chunk.split("\n") if ln.startswith("data:"))
                try:
                    msg = json.loads(data)
                except ValueError:
                    continue
                if isinstance(msg, dict) and msg.get("id") == want_id:
                    return msg
            return None
        try:
            return json.loads(text) if text.strip() else None
        except ValueError:
            return None

    def _sse_listener(self):
        try:
            resp, hdrs, conn = self.request("GET", timeout=None)
            if resp.status == 200:
                while resp.read(4096):
                    pass
            conn.close()
        except Exception:
            pass

    def connect(self):
        try:
            if not V197:
                try:
                    self.request("POST", {
                        "jsonrpc": "2.0", "id": "server-discover-probe-1", "method": "server/discover",
                        "params": {"_meta": {
                            "io.modelcontextprotocol/protocolVersion": DISCOVER_VERSION,
                            "io.modelcontextprotocol/clientInfo": _client_info(),
                            "io.modelcontextprotocol/clientCapabilities": _client_caps()}}},
                        extra={"mcp-method": "server/discover",
                               "mcp-protocol-version": DISCOVER_VERSION})
                except McpTimeout:
                    pass
            st, hdrs, msg = self.request("POST", {
                "method": "initialize", "params": {
                    "protocolVersion": CLIENT_PROTOCOL, "capabilities": _client_caps(),
                    "clientInfo": _client_info()}, "jsonrpc": "2.0", "id": 0})
            if st >= 300 or not isinstance(msg, dict) or not isinstance(msg.get("result"), dict):
                raise OSError("initialize failed")
            self.session = hdrs.get("mcp-session-id")
            self.proto = msg["result"].get("protocolVersion") or CLIENT_PROTOCOL
            self.request("POST", {"jsonrpc": "2.0", "method": "notifications/initialized"}
                         if not V197 else {"method": "notifications/initialized", "jsonrpc": "2.0"})
            threading.Thread(target=self._sse_listener, daemon=True).start()
            time.sleep(0.005)  # the real CLI's GET precedes tools/list
            st, hdrs, msg = self.request("POST", {"method": "tools/list", "jsonrpc": "2.0", "id": 1})
            if st >= 300 or not isinstance(msg, dict) or not isinstance(msg.get("result"), dict):
                raise OSError("tools/list failed")
            self.tools = [t for t in msg["result"].get("tools") or [] if isinstance(t, dict) and t.get("name")]
            self.next_id = 2
            self.status = "connected"
        except (OSError, McpTimeout, http.client.HTTPException, ValueError):
            self.status = "failed"
            self.tools = []

    def tool(self, bare):
        for t in self.tools:
            if t["name"] == bare:
                return t
        return None

    def call(self, bare, args, tool_use_id, timeout_ms, explicit):
        """-> (kind, payload): ("ok", content blocks) | ("error", text)."""
        with self.lock:
            rid = self.next_id
            self.next_id += 1
        obj = {"method": "tools/call", "params": {
            "name": bare, "arguments": args,
            "_meta": {"claudecode/toolUseId": tool_use_id, "progressToken": rid}},
            "jsonrpc": "2.0", "id": rid}
        try:
            st, hdrs, msg = self.request("POST", obj, timeout=timeout_ms / 1000.0)
        except McpTimeout:
            reason = ("McpError: MCP error -32001: Request timed out" if V197
                      else "SdkError: Request timed out")
            try:
                self.request("POST", {"jsonrpc": "2.0", "method": "notifications/cancelled",
                                      "params": {"requestId": rid, "reason": reason}}, timeout=5)
            except Exception:
                pass
            if explicit:
                return "error", 'MCP server "%s" tool "%s" timed out after %ds' % (
                    self.name, bare, timeout_ms // 1000)
            return "error", "The operation timed out."
        except (OSError, http.client.HTTPException) as e:
            return "error", "MCP error: %s" % e
        if not isinstance(msg, dict):
            return "error", "MCP error: HTTP %s" % st
        if isinstance(msg.get("error"), dict):
            err = msg["error"]
            text = str(err.get("message", ""))
            if V197:
                text = "MCP error %s: %s" % (err.get("code"), text)
            return "error", text
        res = msg.get("result") or {}
        content = res.get("content") or []
        if res.get("isError"):
            return "error", "\n".join(b.get("text", "") for b in content
                                      if isinstance(b, dict) and b.get("type") == "text")
        return "ok", content


def load_mcp_config(values):
    """--mcp-config values (files or JSON strings) -> [McpServer] for the http servers.
    Raises UsageError with the real CLI's message for a missing file."""
    global http, socket, urllib  # imported here: only runs that use MCP pay for them
    import http.client
    import socket
    import urllib.parse
    servers = []
    for v in values or []:
        text = v.strip()
        if not text.startswith("{"):
            try:
                with open(v, encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                raise UsageError("Error: Invalid MCP configuration:\nMCP config file not found: %s" % v)
        try:
            cfg = json.loads(text)
        except ValueError as e:
            raise UsageError("Error: Invalid MCP configuration:\n%s" % e)
        for name, srv in ((cfg or {}).get("mcpServers") or {}).items():
            if isinstance(srv, dict) and (srv.get("type") in ("http", None)) and srv.get("url"):
                servers.append(McpServer(name, srv))
    return servers


# --------------------------------------------------------------------------- model markers

END_EARLIER = "[end of earlier turns"


def new_part(prompt):
    """The text after the last line starting with "[end of earlier turns" (all of it if none)."""
    lines = prompt.split("\n")
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(END_EARLIER):
            return "\n".join(lines[i + 1:])
    return prompt


def parse_model_markers(text):
    """[(kind, arg)] for [fake:mcp-call:NAME:{json}], [fake:json:{json}], [fake:think:TEXT]."""
    return markers.scan(text, "fake", named=("mcp-call",), objects=("json",), texts=("think",))


MODEL_MARKERS = ("mcp-call", "json", "think")


# --------------------------------------------------------------------------- schema instances


def schema_instance(schema, root=None, depth=0):
    """A small instance that validates against a JSON schema (the subset pydantic emits)."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 30:
        return None
    if "$ref" in schema:
        ref = schema["$ref"]
        node = root
        if ref.startswith("#"):
            for part in [p for p in ref[1:].split("/") if p]:
                node = node.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(node, dict) else {}
        return schema_instance(node, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            opts = schema[key]
            non_null = [o for o in opts if not (isinstance(o, dict) and o.get("type") == "null")]
            return schema_instance((non_null or opts)[0], root, depth + 1)
    if schema.get("allOf"):
        merged = {}
        for sub in schema["allOf"]:
            if isinstance(sub, dict) and "$ref" in sub:
                sub = schema_instance_resolve(sub, root)
            if isinstance(sub, dict):
                for k, v in sub.items():
                    if k == "properties":
                        merged.setdefault("properties", {}).update(v)
                    elif k == "required":
                        merged.setdefault("required", []).extend(v)
                    else:
                        merged.setdefault(k, v)
        return schema_instance(merged, root, depth + 1)
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), t[0] if t else None)
    if t is None:
        t = "object" if "properties" in schema else None
    if t == "object":
        props = schema.get("properties") or {}
        obj = {}
        for name in schema.get("required") or []:
            obj[name] = schema_instance(props.get(name, {}), root, depth + 1)
        n = schema.get("minProperties") or 0
        for name, sub in props.items():
            if len(obj) >= n:
                break
            obj.setdefault(name, schema_instance(sub, root, depth + 1))
        return obj
    if t == "array":
        n = schema.get("minItems") or 0
        prefix = schema.get("prefixItems") or []
        items = [schema_instance(p, root, depth + 1) for p in prefix]
        while len(items) < n:
            items.append(schema_instance(schema.get("items") or {}, root, depth + 1))
        return items
    if t == "string":
        fmt = schema.get("format")
        samples = {"date-time": "2026-01-01T00:00:00Z", "date": "2026-01-01", "time": "00:00:00Z",
                   "email": "a@example.com", "uri": "https://example.com", "uuid":
                   "00000000-0000-4000-8000-000000000000", "ipv4": "127.0.0.1"}
        v = samples.get(fmt, "x" * max(1, schema.get("minLength") or 1))
        if schema.get("maxLength") is not None:
            v = v[: schema["maxLength"]]
        return v
    if t in ("integer", "number"):
        lo = schema.get("minimum", schema.get("exclusiveMinimum"))
        v = 0 if lo is None else (lo + 1 if "exclusiveMinimum" in schema and "minimum" not in schema else lo)
        if t == "integer":
            v = int(v) if v == int(v) else int(v) + 1
        hi = schema.get("maximum")
        if hi is not None and v > hi:
            v = hi
        return v
    if t == "boolean":
        return False
    if t == "null":
        return None
    return {}


def schema_instance_resolve(sub, root):
    node = root
    for part in [p for p in sub["$ref"][1:].split("/") if p]:
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node


# --------------------------------------------------------------------------- model turns


def _words(text):
    return text.split(" ")


def _new_id(prefix, n):
    return prefix + new_hex(n)


class ModelTurn:
    """One turn driven by the fake "model": MCP tool calls ([fake:mcp-call:...]), thinking
    ([fake:think:...]), --json-schema (StructuredOutput) and CLAUDE_CODE_MAX_OUTPUT_TOKENS,
    emitting the lines the real CLI prints against testkit/fake_anthropic.py."""

    def __init__(self, s, prompt, marks):
        self.s = s
        self.prompt = prompt
        self.marks = marks
        self.calls = 0          # upstream calls
        self.out_tokens = 0
        self.tool_uses = 0
        self.mids = []
        self.msgs = s.prev_msgs + 2
        self.limit = _int(os.environ.get("CLAUDE_CODE_MAX_OUTPUT_TOKENS"), 0)
        self.so_tries = 0

    # ---- upstream message pieces
    def _start(self):
        s = self.s
        self.calls += 1
        mid = _new_id("msg_fake_", 16)
        self.mids.append(mid)
        s.status()
        s.emit(s.sev("message_start", mid))
        return mid, _new_id("req_fake_", 12)

    def _ev(self, src, etype, sub, nth, mid):
        ev = self.s.base(tpl(src, etype, sub, nth))
        if etype == "stream_event":
            ev["api_message_id"] = mid
        return ev

    def _stop(self, mid, reason, out_tokens=None):
        s = self.s
        ev = s.sev("message_delta", mid)
        ev["event"]["delta"]["stop_reason"] = reason
        if out_tokens is not None and isinstance(ev["event"].get("usage"), dict):
            ev["event"]["usage"]["output_tokens"] = out_tokens
        s.emit(ev)
        s.emit(s.sev("message_stop", mid))

    def _block_stop(self, mid, index):
        ev = self.s.sev("content_block_stop", mid)
        ev["event"]["index"] = index
        self.s.emit(ev)

    def _thinking(self, mid, rid, index, text):
        s = self.s
        T = "think.jsonl"
        ev = self._ev(T, "stream_event", "content_block_start", 0, mid)
        ev["event"]["index"] = index
        s.emit(ev)
        est = 0
        for w in [p + " " for p in _words(text)[:-1]] + [_words(text)[-1]]:
            if True:  # both versions print one thinking_tokens line per thinking_delta
                d = -(-len(w) // 4)
                est += d
                ln = s.base(tpl(T, "system", "thinking_tokens"))
                ln["estimated_tokens"] = est
                ln["estimated_tokens_delta"] = d
                s.emit(ln)
            ev = self._ev(T, "stream_event", "content_block_delta", 0, mid)
            ev["event"]["index"] = index
            ev["event"]["delta"] = {"type": "thinking_delta", "thinking": w}
            s.emit(ev)
        sig = "fakesig_" + new_hex(24)
        ev = self._ev(T, "stream_event", "content_block_delta", 0, mid)
        ev["event"]["index"] = index
        ev["event"]["delta"] = {"type": "signature_delta", "signature": sig}
        s.emit(ev)
        s.emit(s.assistant(T, mid, rid, [{"type": "thinking", "thinking": text, "signature": sig}]))
        self._block_stop(mid, index)

    def _tool_block(self, mid, rid, index, name, args):
        s = self.s
        tid = _new_id("toolu_fake_", 10)
        T = "mcp-tool.jsonl"
        ev = self._ev(T, "stream_event", "content_block_start", 0, mid)
        ev["event"]["index"] = index
        ev["event"]["content_block"] = {"type": "tool_use", "id": tid, "name": name, "input": {}}
        s.emit(ev)
        js = json.dumps(args)
        for part in ("", js[: len(js) // 2], js[len(js) // 2:]):
            ev = self._ev(T, "stream_event", "content_block_delta", 0, mid)
            ev["event"]["index"] = index
            ev["event"]["delta"] = {"type": "input_json_delta", "partial_json": part}
            s.emit(ev)
        s.emit(s.assistant(T, mid, rid, [{"type": "tool_use", "id": tid, "name": name, "input": args}]))
        self._block_stop(mid, index)
        return tid

    def _text_block(self, mid, rid, index, text):
        s = self.s
        ev = s.sev("content_block_start", mid)
        ev["event"]["index"] = index
        s.emit(ev)
        words = _words(text)
        for i, w in enumerate(words):
            s.emit(s.delta(mid, w + (" " if i < len(words) - 1 else ""), index))
        s.emit(s.assistant("stream-partial.jsonl", mid, rid, [{"type": "text", "text": text}]))
        self._block_stop(mid, index)

    # ---- tools
    def resolve(self, name):
        """-> (server, bare name, full name); server None when no such tool."""
        for srv in self.s.mcp:
            prefix = "mcp__%s__" % srv.name
            if name.startswith(prefix) and srv.tool(name[len(prefix):]):
                return srv, name[len(prefix):], name
            if srv.tool(name):
                return srv, name, prefix + name
        if name.startswith("mcp__"):
            return None, name.split("__", 2)[-1], name
        first = self.s.mcp[0].name if self.s.mcp else "client"
        return None, name, "mcp__%s__%s" % (first, name)

    def _user_line(self, tid, kind, payload):
        s = self.s
        if kind == "ok":
            ev = s.base(tpl("mcp-tool.jsonl", "user"))
            ev["message"]["content"] = [{"tool_use_id": tid, "type": "tool_result", "content": payload}]
            ev["tool_use_result"] = payload
        else:
            ev = s.base(tpl("mcp-iserror.jsonl", "user"))
            ev["message"]["content"] = [{"type": "tool_result", "content": payload, "is_error": True,
                                         "tool_use_id": tid}]
            ev["tool_use_result"] = "Error: " + payload.replace(
                "<tool_use_error>", "").replace("</tool_use_error>", "").replace("Error: ", "", 1) \
                if payload.startswith("<tool_use_error>") else "Error: " + payload
        for meta in ev.get("tool_result_meta") or []:
            meta["id"] = tid
        if "tool_result_meta" in ev:
            ev["tool_result_meta"] = ev["tool_result_meta"][:1]
        s.emit(ev)

    def run_tools(self, calls):
        """calls: [(tid, name)] with args; POST tools/call (concurrently when every tool is
        readOnlyHint, else one after the other) -> [(bare, kind, payload)] in completion order."""
        env_t = os.environ.get("MCP_TOOL_TIMEOUT")
        timeout_ms = _int(env_t, 0) or 60000
        explicit = bool(_int(env_t, 0))
        jobs = []
        for tid, name, args in calls:
            srv, bare, full = self.resolve(name)
            jobs.append((tid, srv, bare, full, args))
        done = []

        def one(job):
            tid, srv, bare, full, args = job
            if srv is None or srv.status != "connected":
                res = ("error", "<tool_use_error>Error: No such tool available: %s</tool_use_error>" % full)
            else:
                res = srv.call(bare, args, tid, timeout_ms, explicit)
            with _DONE_LOCK:
                done.append((tid, bare) + res)
                self._user_line(tid, res[0], res[1])

        concurrent = len(jobs) > 1 and all(
            srv is not None and ((srv.tool(bare) or {}).get("annotations") or {}).get("readOnlyHint") is True
            for _, srv, bare, _, _ in jobs)
        if concurrent:
            ths = [threading.Thread(target=one, args=(j,)) for j in jobs]
            for t in ths:
                t.start()
            for t in ths:
                t.join()
        else:
            for j in jobs:
                one(j)
        return done

    # ---- the turn
    def run(self):
        s = self.s
        pending = [arg for kind, arg in self.marks if kind == "mcp-call"]
        thinks = [arg for kind, arg in self.marks if kind == "think"]
        jsons = [arg for kind, arg in self.marks if kind == "json"]
        results = None
        while True:
            mid, rid = self._start()
            index = 0
            if thinks and self.calls == 1:
                self._thinking(mid, rid, index, thinks[0])
                index += 1
            if pending:
                calls = []
                for name, args in pending:
                    srv, bare, full = self.resolve(name)
                    calls.append((self._tool_block(mid, rid, index, full, args), full, args))
                    index += 1
                self._stop(mid, "tool_use")
                self.out_tokens += RUN_USAGE["o"]
                self.tool_uses += len(calls)
                results = self.run_tools(calls)
                pending = []
                for _, _, kind, payload in results:
                    text = payload if isinstance(payload, str) else "".join(
                        b.get("text", "") for b in payload if isinstance(b, dict) and b.get("type") == "text")
                    pending += [a for k, a in parse_model_markers(text) if k == "mcp-call"]
                self.msgs += 2
                continue
            if s.json_schema is not None and self.so_tries < 2:
                return self.structured(mid, rid, index, jsons)
            if results is not None:
                parts = []
                for _, bare, kind, payload in results:
                    text = payload if isinstance(payload, str) else "".join(
                        b.get("text", "") for b in payload if isinstance(b, dict) and b.get("type") == "text")
                    parts.append("%s=%s" % (bare, text))
                text = "FAKE-REPLY tool results: " + "; ".join(parts)
            else:
                text = "".join(reply_deltas(s, self.prompt))
            return self.answer(mid, rid, index, text)

    def answer(self, mid, rid, index, text):
        s = self.s
        k = 0
        while True:
            words = _words(text)
            cut = self.limit and len(words) > self.limit
            if cut:
                text = " ".join(words[: self.limit])
            self._text_block(mid, rid, index, text)
            self._stop(mid, "max_tokens" if cut else "end_turn", self.limit if cut else None)
            self.out_tokens += self.limit if cut else RUN_USAGE["o"]
            if not cut:
                return self.finish("mcp-tool.jsonl" if self.tool_uses else "stream-partial.jsonl", text)
            if k == 3:
                return self.max_tokens_error()
            k += 1
            M = "maxtok.jsonl"
            if not V197:
                s.emit(s.base(tpl(M, "user")))
            cont = tpl(M, "user")["message"]["content"][0]["text"] if not V197 else None
            if V197:
                cont = ("Output token limit hit. Resume directly \u2014 no apology, no recap of what you "
                        "were doing. Pick up mid-thought if that is where the cut happened. Break "
                        "remaining work into smaller pieces.")
            else:
                cont = "<system-reminder>\n%s\n</system-reminder>" % cont
            self.msgs += 2
            text = "FAKE-REPLY model=%s msgs=%d len_last=%d to: %s" % (s.model, self.msgs, len(cont), cont)
            mid, rid = self._start()
            index = 0

    def usage(self):
        c = self.calls
        return {"i": RUN_USAGE["i"] * c, "cc": RUN_USAGE["cc"] * c, "cr": RUN_USAGE["cr"] * c,
                "o": self.out_tokens, "cost": round(IN_COST * c + self.out_tokens * OUT_COST, 7)}

    def _result(self, src, u, text):
        s = self.s
        r = s.result(tpl(src, "result"), u, text=text, begun=list(self.mids))
        if s.partial and "begun_message_ids" not in r and not V197:
            items = list(r.items())
            pos = [k for k, _ in items].index("uuid") + 1
            items.insert(pos, ("begun_message_ids", list(self.mids)))
            r = dict(items)
        return r

    def finish(self, src, text):
        s = self.s
        u = self.usage()
        r = self._result(src, u, text)
        # 1 + one per tool_use; a max_tokens continuation counts on 2.1.332 only.
        r["num_turns"] = (1 + self.tool_uses) if self.tool_uses else (1 if V197 else self.calls)
        r["stop_reason"] = "end_turn"
        s.record_turn(self.prompt, text, self.msgs - s.prev_msgs, {s.model: u}, u["cost"])
        s.emit(r)
        return 0

    def max_tokens_error(self):
        s = self.s
        M = "maxtok.jsonl"
        text = ("API Error: Claude's response exceeded the %d output token maximum. To configure this "
                "behavior, set the CLAUDE_CODE_MAX_OUTPUT_TOKENS environment variable." % self.limit)
        syn = s.base(tpl(M, "assistant", None, 4))
        syn["message"]["id"] = new_uuid()
        syn["message"]["content"] = [{"type": "text", "text": text}]
        s.emit(syn)
        u = self.usage()
        r = self._result(M, u, text)
        r["num_turns"] = 1 if V197 else self.calls
        s.emit(r)
        return 1

    def structured(self, mid, rid, index, jsons):
        s = self.s
        J = "json-schema.jsonl"
        try:
            schema = json.loads(s.json_schema)
        except ValueError:
            schema = {}
        obj = jsons[-1] if jsons else schema_instance(schema)
        self.so_tries += 1
        tid = self._tool_block(mid, rid, index, "StructuredOutput", obj)
        user = s.base(tpl(J, "user"))
        user["message"]["content"][0]["tool_use_id"] = tid
        for meta in user.get("tool_result_meta") or []:
            meta["id"] = tid
        self.out_tokens += RUN_USAGE["o"]
        if V197:
            s.emit(user)
            self._stop(mid, "tool_use")
        else:
            ev = s.sev("message_delta", mid)
            ev["event"]["delta"]["stop_reason"] = "tool_use"
            s.emit(ev)
            s.emit(user)
            s.emit(s.sev("message_stop", mid))
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        u = self.usage()
        r = self._result(J, u, text)
        r["structured_output"] = obj
        r["num_turns"] = 2 + self.tool_uses
        s.record_turn(self.prompt, text, self.msgs + 2 - s.prev_msgs, {s.model: u}, u["cost"])
        s.emit(r)
        return 0


_DONE_LOCK = threading.Lock()


# --------------------------------------------------------------------------- auth status


def auth_status(argv):
    """`claude auth status [--json|--text]` as captured (claude-cli/auth-status.txt): local
    checks only, exit 0 logged in / 1 not."""
    text = "--text" in argv
    cfg = os.environ.get("CLAUDE_CONFIG_DIR") or os.path.join(
        os.environ.get("HOME") or os.path.expanduser("~"), ".claude")
    forced = os.environ.get("FAKE_CLAUDE_AUTH")
    base = {"loggedIn": False, "authMethod": "none", "apiProvider": "firstParty"}
    if not V197:
        analytics = bool(os.environ.get("DISABLE_TELEMETRY") or
                         os.environ.get("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"))
        base.update({"analyticsDisabled": analytics, "projectsDirectory": os.path.join(cfg, "projects"),
                     "configDirectory": cfg, "loginExpiresAt": None, "consoleProfileSignInOffered": True})
    cred = None
    try:
        with open(os.path.join(cfg, ".credentials.json"), encoding="utf-8") as f:
            cred = (json.load(f) or {}).get("claudeAiOauth")
    except (OSError, ValueError, AttributeError):
        cred = None
    out, line_ = dict(base), "Not logged in. Run claude auth login to authenticate."
    if forced == "none":
        pass
    elif os.environ.get("ANTHROPIC_API_KEY") or forced == "ok":
        out.update(loggedIn=True, authMethod="api_key", apiKeySource="ANTHROPIC_API_KEY")
        line_ = "API key: ANTHROPIC_API_KEY"
    elif os.environ.get("ANTHROPIC_AUTH_TOKEN"):
        out.update(loggedIn=True, authMethod="api_key", apiKeySource="ANTHROPIC_AUTH_TOKEN")
        line_ = "Auth token: ANTHROPIC_AUTH_TOKEN"
    elif os.environ.get("CLAUDE_CODE_OAUTH_TOKEN"):
        out.update(loggedIn=True, authMethod="oauth_token")
        line_ = "Login method: Claude account"
    elif isinstance(cred, dict) and cred.get("accessToken") and \
            "user:inference" in (cred.get("scopes") or []):
        sub = cred.get("subscriptionType")
        out.update(loggedIn=True, authMethod="claude.ai", email=None, orgId=None, orgName=None,
                   subscriptionType=sub)
        if not V197:
            out.update(storedClaudeAiLogin=True, planTier="max_other" if sub == "max" else sub)
        line_ = "Login method: Claude %s account" % (str(sub or "").capitalize() or "AI")
    if text:
        write_out((line_ + "\n").encode())
    else:
        write_out((json.dumps(out, indent=2) + "\n").encode())
    os._exit(0 if out["loggedIn"] else 1)


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


def resume_failed(s, resume, msg):
    """Nothing to resume: stderr, one error result (<version>-error-resume-unknown.jsonl)."""
    s.sid = resume
    write_err(msg + "\n")
    s.emit(s.result(tpl("error-resume-unknown.jsonl", "result"), None, errors=[msg]))
    s.flush_final()
    finish(1)


def control_request(s, msg):
    """stream-json input's `initialize` request (what the Agent SDK sends first): its
    jsonSchema works as --json-schema does (<version>-initialize-json-schema.jsonl)."""
    request = msg.get("request") or {}
    if request.get("subtype") == "initialize" and request.get("jsonSchema") is not None:
        s.json_schema = json.dumps(request["jsonSchema"])
        Log.update(json_schema=s.json_schema)
    answer = tpl("initialize-json-schema.jsonl", "control_response")
    answer["response"]["request_id"] = msg.get("request_id")
    answer["response"]["response"]["pid"] = os.getpid()
    s.emit(answer)


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
    if argv[:2] == ["auth", "status"]:
        auth_status(argv[2:])
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

    effort = opts.get("effort")
    if effort is not None and effort not in EFFORTS:
        write_err("Warning: Unknown --effort value '%s' \u2014 ignoring it and using the default effort. "
                  "Valid values: %s.\n" % (effort, ", ".join(EFFORTS)))
    if opts.get("json_schema") is not None:
        try:
            json.loads(opts["json_schema"])
        except ValueError as e:
            die("Error: --json-schema is not valid JSON: JSON Parse error: %s" % e.msg)
    try:
        mcp_servers = load_mcp_config(opts.get("mcp_config"))
    except UsageError as e:
        die(str(e))
    s = Session(opts, model)
    s.mcp = mcp_servers
    sid_opt, resume = opts.get("session_id"), opts.get("resume")
    if sid_opt is not None and not UUID_RE.match(sid_opt):
        die("Error: Invalid session ID. Must be a valid UUID.")
    if opts.get("resume_session_at") is not None and resume is None:
        die("Error: --resume-session-at requires --resume")
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
            resume_failed(s, resume, "No conversation found with session ID: %s" % resume)
        at = opts.get("resume_session_at")
        kept = s.load(rpath, at)
        if kept is None:
            resume_failed(s, resume, "No message found with message.uuid of: %s" % at)
        if opts.get("fork_session"):
            s.sid = sid_opt or new_uuid()
            s.path = s.file_for(s.sid)
            if os.path.exists(s.path):
                die("Error: Session ID %s is already in use." % s.sid)
            # The fork's own copy; its total goes on from the whole parent's, as the real
            # CLI's does (claude-cli/<ver>-resume-at-*.jsonl).
            copied = sum((d.get("fake_turn") or {}).get("cost", 0) for d in kept)
            s.append([{**d, "sessionId": s.sid} for d in kept] + [
                {"type": "fake-carried-cost", "fake_turn": {
                    "msgs": 0, "cost": round(s.prev_cost - copied, 7), "usage": {}}}])
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
    # MCP handshake at start-up, before stdin is read (as the real CLI).
    for srv in s.mcp:
        srv.connect()
    if s.mcp:
        Log.update(mcp={srv.name: {"status": srv.status, "tools": [t["name"] for t in srv.tools]}
                        for srv in s.mcp})

    if not stream_in:
        code = run_turn(s, prompt)
        s.flush_final()
        finish(code)

    # --input-format stream-json: one turn per stdin line, exit 0 at EOF.
    last_code = 0
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
        if isinstance(msg, dict) and msg.get("type") == "control_request":
            control_request(s, msg)
            continue
        if not isinstance(msg, dict) or msg.get("type") != "user":
            continue
        turn_prompt = prompt_from_message(msg)
        Log.update(turns=Log.data.get("turns", []) + [turn_prompt])
        s.init_done = False  # the real CLI prints system/init at the start of every turn
        last_code = run_turn(s, turn_prompt)
    # The real CLI exits 1 at EOF when the last turn ended in an API error (429/529,
    # max_output_tokens); the older scenarios keep exit 0 here, as the fake always did.
    finish(1 if last_code == 1 and _LAST["new_error"] else 0)


if __name__ == "__main__":
    main()
