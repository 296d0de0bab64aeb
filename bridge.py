#!/usr/bin/env python3
"""claude-bridge: an OpenAI-compatible API over the Claude Code CLI and Ollama.

Point any OpenAI client at http://127.0.0.1:8080/v1 and every request runs through the
`claude` CLI (or a local Ollama for models named `ollama/...`), with each request's tokens,
cost and outcome kept in SQLite. Run it with `python bridge.py`; `--help` lists settings.
"""

import argparse
import base64
import collections
import dataclasses
import datetime
import functools
import hashlib
import hmac
import itertools
import json
import logging
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import typing
import uuid
import zlib

import bottle
import requests

__version__ = "0.1.0"


# ----------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------

def _parse_bool(raw):
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _int_between(low, high):
    def parse(raw):
        expected = f"expected a whole number from {low} to {high}"
        if not re.fullmatch(r"\s*-?[0-9]+\s*", raw):
            raise ValueError(expected)
        value = int(raw)
        if not low <= value <= high:
            raise ValueError(expected)
        return value
    return parse


def _seconds_up_to_a_day(zero_ok):
    def parse(raw):
        expected = "expected seconds, " + ("from 0" if zero_ok else "more than 0") + " to 86400"
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(expected) from None
        if not (0 <= value if zero_ok else 0 < value) or value > 86400:  # (nan fails too)
            raise ValueError(expected)
        return value
    return parse


_seconds = _seconds_up_to_a_day(zero_ok=False)
_seconds_or_zero = _seconds_up_to_a_day(zero_ok=True)


def _one_of(*choices):
    def parse(raw):
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return value
    return parse


def _http_url(raw):
    value = raw.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
        raise ValueError("expected an http:// or https:// URL")
    return value


def _text(raw):
    return raw.strip()


def _directory(raw):
    value = raw.strip()
    if value and not os.path.isdir(value):
        raise ValueError("no such directory")
    return value


def _host_list(raw):
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    for name in names:
        if name != "*" and not re.fullmatch(r"(\*\.)?[a-z0-9._-]+|\[[0-9a-f:.]+\]", name):
            raise ValueError(f"{name!r} is not a host name, an IP address or *")
    return tuple(names)


def _origin_list(raw):
    origins = [o.strip().rstrip("/").lower() for o in raw.split(",") if o.strip()]
    for origin in origins:
        if not re.fullmatch(r"https?://[a-z0-9._-]+(:[0-9]{1,5})?|https?://\[[0-9a-f:.]+\]"
                            r"(:[0-9]{1,5})?|null", origin):
            raise ValueError(f"{origin!r} is not an origin such as http://localhost:3000 "
                             "(scheme, host and port only; no * and no path)")
    return tuple(origins)


def _model_setting(raw):
    value = raw.strip()
    if value != "claude-code" and not value.startswith("ollama/") \
            and not _MODEL_NAME.match(value):
        raise ValueError("expected a model name such as claude-code, sonnet or ollama/llama3.2")
    return value


def _alias_map(raw):
    """`gpt-4o=sonnet,gpt-4o-mini=haiku` -> {name: CLI model}."""
    aliases = {}
    for item in filter(None, (i.strip() for i in raw.split(","))):
        name, sep, target = (part.strip() for part in item.partition("="))
        if not sep or not _MODEL_NAME.match(name) or not _MODEL_NAME.match(target):
            raise ValueError(f"expected name=model pairs such as gpt-4o=sonnet, not {item!r}")
        aliases[name] = target
    return aliases


def _database_url(raw):
    raw = raw.strip()
    if raw and not re.match(r"^postgres(ql)?://", raw):
        raise ValueError("must be empty (SQLite at USAGE_DB_PATH) or a postgresql:// URL")
    return raw


def _name_list(raw):
    names = tuple(filter(None, (n.strip() for n in raw.split(","))))
    for name in names:
        _model_setting(name)
    return names


# Model names passed to --model: plain names only, never something the CLI reads as a flag.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9._:\[\]][A-Za-z0-9._:\[\]-]{0,199}\Z")  # \Z: no "\n"
# What follows `ollama/`: the same, plus / and @ (hf.co/user/repo:tag, name@sha256:...).
_OLLAMA_NAME = re.compile(r"^[A-Za-z0-9._:\[\]][A-Za-z0-9._:\[\]/@-]{0,199}\Z")
# Any backend's names, checked before routing (each backend then applies its own rule).
_ANY_MODEL_NAME = re.compile(r"^[A-Za-z0-9._:\[\]][A-Za-z0-9._:\[\]/@-]{0,255}\Z")


Setting = collections.namedtuple("Setting", "name default parse help")

# The one table of settings: each is an environment variable and a --flag. The README's
# settings table is checked against this by the tests.
SETTINGS = (
    Setting("HOST", "127.0.0.1", _text, "Address to listen on (127.0.0.1 keeps it on this machine)."),
    Setting("PORT", "8080", _int_between(0, 65535), "Port to listen on (0 picks a free one)."),
    Setting("THREADS", "64", _int_between(4, 1024),
            "Worker threads; each open request or stream holds one."),
    Setting("MAX_BODY_MB", "32", _int_between(1, 1024), "Largest request body accepted, in MiB."),
    Setting("MAX_CONNECTIONS", "1000", _int_between(16, 100_000),
            "Client connections open at once; more wait in the listen queue."),
    Setting("REQUEST_HEAD_TIMEOUT", "10", _seconds,
            "Seconds a client gets to send a request's line and headers."),
    Setting("REQUEST_BODY_TIMEOUT", "60", _seconds,
            "Seconds a client gets to send a request's body once its headers are in."),
    Setting("ALLOWED_HOSTS", "", _host_list,
            "More names clients may reach the bridge by (the Host header), comma-separated; "
            "* = any. localhost, loopback addresses and HOST are always allowed."),
    Setting("CORS_ORIGINS", "", _origin_list,
            "Web origins allowed to call the API from a browser (e.g. http://localhost:3000), "
            "comma-separated; other pages are refused."),
    Setting("ALLOW_EXPOSED_WITHOUT_KEY", "false", _parse_bool,
            "Start on a non-loopback HOST without CLAUDE_AUTH_KEY (anyone who reaches the "
            "port can use the API)."),
    Setting("CLAUDE_BIN", "", _text, "Path to the `claude` executable (default: found on PATH)."),
    Setting("CLAUDE_WORKDIR", "", _directory,
            "Working directory of the CLI (default: where the bridge was started)."),
    Setting("CLAUDE_SKIP_PERMS", "false", _parse_bool,
            "Pass --dangerously-skip-permissions: the CLI runs tools without asking."),
    Setting("CLAUDE_DEFAULT_MODEL", "claude-code", _model_setting,
            "Model used when a request names none (claude-code = the CLI's own default)."),
    Setting("MODEL_ALIASES", "", _alias_map,
            "Client model names run as other CLI models, e.g. gpt-4o=sonnet,gpt-4o-mini=haiku "
            "(other names pass to --model as they are)."),
    Setting("STRICT_PARAMS", "false", _parse_bool,
            "Refuse (400) request parameters the backend cannot honour instead of ignoring "
            "them; each reply names the ones it ignored in X-Bridge-Ignored-Params."),
    Setting("CLAUDE_SYSTEM_PROMPT", "append", _one_of("append", "replace"),
            "System messages: append to Claude Code's prompt, or replace it."),
    Setting("CLAUDE_TIMEOUT", "600", _seconds, "Seconds a whole Claude request may take."),
    Setting("CLAUDE_IDLE_TIMEOUT", "120", _seconds,
            "Seconds the CLI may stay silent before the request is ended."),
    Setting("CLAUDE_MAX_CONCURRENCY", "4", _int_between(1, 1024),
            "CLIs running at once (each needs 200-300 MB)."),
    Setting("CLAUDE_QUEUE_TIMEOUT", "30", _seconds,
            "Seconds a request waits for a free CLI slot before a 429."),
    Setting("CLAUDE_QUEUE_MAX", "16", _int_between(0, 1024),
            "Requests that may wait for a CLI slot at once; more get an immediate 429."),
    Setting("CLAUDE_WARM_POOL", "1", _int_between(0, 16),
            "Pre-started CLIs kept per model and system prompt (0 = off)."),
    Setting("CLAUDE_WARM_KEYS", "4", _int_between(1, 64),
            "Model and system prompt pairs kept warm (least recently used dropped)."),
    Setting("CLAUDE_WARM_MODELS", "claude-code", _name_list,
            "Models kept warm from their first request, comma-separated; other model and "
            "system prompt pairs once CLAUDE_WARM_AFTER requests used them."),
    Setting("CLAUDE_WARM_AFTER", "3", _int_between(1, 1000),
            "Requests a model and system prompt pair needs before it gets a warm CLI."),
    Setting("CLAUDE_IDLE_MAX", "4", _int_between(0, 1024),
            "Warm and kept CLIs at once, all together (each holds 150-300 MB); the least "
            "recently used end first."),
    Setting("CLAUDE_SESSION_KEEPALIVE", "300", _seconds_or_zero,
            "Seconds a session's CLI stays running between turns (0 = resume each turn)."),
    Setting("CLAUDE_SESSIONS", "10000", _int_between(1, 10_000_000),
            "Claude sessions (X-Session-ID) remembered (least recently used forgotten)."),
    Setting("CLAUDE_SESSION_DAYS", "30", _int_between(1, 3650),
            "Days an unused Claude session is remembered."),
    Setting("RECOGNISE_CONVERSATIONS", "true", _parse_bool,
            "Continue a conversation without X-Session-ID when a client resends its history "
            "(chat UIs do): only the new messages go to the backend."),
    Setting("CONVERSATIONS_MAX", "10000", _int_between(1, 10_000_000),
            "Conversations recognised by their history (least recently used forgotten; "
            "each is forgotten after CLAUDE_SESSION_DAYS unused)."),
    Setting("RESPONSES_MAX", "1000", _int_between(1, 1_000_000),
            "Responses API responses kept for previous_response_id and GET (oldest "
            "forgotten; each after CLAUDE_SESSION_DAYS)."),
    Setting("CLAUDE_TOOL_NOTES", "true", _parse_bool,
            "Show each tool Claude Code runs as a line of reasoning_content (`Read app.py`)."),
    Setting("CLAUDE_TOOL_WAIT", "300", _seconds,
            "Seconds a run whose tool calls went to the client waits for their results."),
    Setting("CLAUDE_TOOLS_WITH_CLIENT_TOOLS", "false", _parse_bool,
            "Keep Claude Code's own tools when a request brings its own (default: only "
            "the client's)."),
    Setting("CLAUDE_AUTH_KEY", "", _text,
            "If set, clients must send `Authorization: Bearer <key>` (all routes but /health)."),
    Setting("OLLAMA_URL", "http://localhost:11434", _http_url, "Base URL of the Ollama server."),
    Setting("OLLAMA_CONNECT_TIMEOUT", "3", _seconds,
            "Seconds to connect to Ollama before it counts as unreachable."),
    Setting("OLLAMA_TIMEOUT", "300", _seconds,
            "Seconds Ollama may stay silent (loading a model counts) before a 504."),
    Setting("OLLAMA_SESSIONS", "1000", _int_between(1, 1_000_000),
            "Ollama conversations kept in memory (least recently used dropped)."),
    Setting("OLLAMA_SESSION_TTL", "3600", _seconds,
            "Seconds an idle Ollama conversation is kept."),
    Setting("OLLAMA_SESSION_MAX_MESSAGES", "200", _int_between(2, 100_000),
            "Messages kept per Ollama conversation (oldest turns dropped)."),
    Setting("OLLAMA_SESSION_MAX_KB", "1024", _int_between(1, 1_048_576),
            "KiB kept per Ollama conversation (oldest turns dropped)."),
    Setting("USAGE_DB_PATH", "./usage.db", _text, "SQLite file for usage rows and sessions "
            "(with USAGE_DB_URL: the rows not yet shipped)."),
    Setting("USAGE_DB_URL", "", _database_url,
            "`postgresql://...`: keep usage rows, sessions and digests in PostgreSQL, shared "
            "by several bridges (needs `pip install psycopg[binary]`)."),
    Setting("USAGE_QUEUE_MAX", "100000", _int_between(100, 100_000_000),
            "Usage rows that may wait for PostgreSQL (more are dropped and counted)."),
    Setting("USAGE_RETENTION_DAYS", "0", _int_between(0, 36500),
            "Days raw usage rows are kept (0 = forever); the hourly and daily sums stay."),
    Setting("INSTANCE_NAME", "", _text,
            "This bridge's name in usage rows and sessions (with USAGE_DB_URL the default "
            "is host:port)."),
    Setting("SESSION_ELSEWHERE", "heal", _one_of("heal", "refuse"),
            "With USAGE_DB_URL, a session another bridge holds: `heal` (answer from the "
            "history, row via=elsewhere) or `refuse` (a 421 naming that bridge)."),
    Setting("SSE_HEARTBEAT_SECONDS", "15", _seconds,
            "Seconds between keep-alive comments while a stream is silent."),
    Setting("SHUTDOWN_TIMEOUT", "10", _seconds,
            "Seconds in-flight requests get to finish on SIGTERM or Ctrl-C."),
    Setting("METRICS_LOOPBACK_OPEN", "false", _parse_bool,
            "Let scrapers on this machine read /metrics without CLAUDE_AUTH_KEY."),
    Setting("LOG_REQUESTS", "true", _parse_bool, "One line per request on stderr."),
)

Settings = collections.namedtuple("Settings", [s.name.lower() for s in SETTINGS])
# Never shown in errors, and never passed on to the CLI's environment.
SECRET_SETTINGS = ("CLAUDE_AUTH_KEY", "USAGE_DB_URL")


class SettingsError(ValueError):
    """A setting has a value that cannot be used."""


def _flag(setting):
    return "--" + setting.name.lower().replace("_", "-")


def build_arg_parser():
    """The command line: one --flag for each setting, overriding its variable."""
    parser = argparse.ArgumentParser(
        prog="bridge.py",
        description="OpenAI-compatible API over the Claude Code CLI and Ollama.",
        epilog="Each flag can also be set by the environment variable in brackets.")
    for s in SETTINGS:
        shown = "(unset)" if not s.default else s.default
        parser.add_argument(_flag(s), dest=s.name, default=None, metavar="VALUE",
                            help=f"{s.help} [{s.name}, default {shown}]")
    parser.add_argument("--version", action="version", version=f"claude-bridge {__version__}")
    return parser


def load_settings(environ=None, argv=None):
    """Build the frozen settings from flags, then the environment, then defaults."""
    environ = os.environ if environ is None else environ
    flags = vars(build_arg_parser().parse_args([] if argv is None else argv))
    values = {}
    for s in SETTINGS:
        raw = flags.get(s.name)
        if raw is None:
            raw = environ.get(s.name, s.default)
        try:
            values[s.name.lower()] = s.parse(raw)
        except ValueError as exc:
            shown = "(hidden)" if s.name in SECRET_SETTINGS else repr(raw)
            raise SettingsError(f"{s.name}={shown} is not valid: {exc}") from None
    settings = Settings(**values)
    if settings.claude_auth_key or _is_loopback(settings.host):
        return settings
    if settings.claude_skip_perms:
        raise SettingsError(
            f"HOST={settings.host} with CLAUDE_SKIP_PERMS=true and no CLAUDE_AUTH_KEY would let "
            "anyone who reaches the port run commands as this user (the CLI runs tools "
            "without asking). Set CLAUDE_AUTH_KEY, or keep HOST=127.0.0.1.")
    if not settings.allow_exposed_without_key:
        raise SettingsError(
            f"HOST={settings.host} without CLAUDE_AUTH_KEY would let anyone who reaches the "
            "port use the API (read files through Claude Code, read usage). Set "
            "CLAUDE_AUTH_KEY, keep HOST=127.0.0.1, or set ALLOW_EXPOSED_WITHOUT_KEY=true "
            "to accept that.")
    return settings


def _is_loopback(host):
    import ipaddress
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


# ----------------------------------------------------------------------------------------
# Errors and logging
# ----------------------------------------------------------------------------------------

class BridgeError(Exception):
    """An error the client sees as an OpenAI error object with an HTTP status."""

    status = 500
    type = "server_error"
    code = None

    def __init__(self, message, *, param=None, code=None, headers=None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self):
        """The OpenAI error object."""
        return {"error": {"message": self.message, "type": self.type,
                          "param": self.param, "code": self.code}}


class InvalidRequest(BridgeError):
    status, type = 400, "invalid_request_error"


class Unauthorized(BridgeError):
    status, type, code = 401, "invalid_request_error", "invalid_api_key"


class Forbidden(BridgeError):
    status, type, code = 403, "invalid_request_error", "forbidden"


class UnsupportedMediaType(BridgeError):
    status, type, code = 415, "invalid_request_error", "unsupported_media_type"


class NotFound(BridgeError):
    status, type, code = 404, "invalid_request_error", "not_found"


class MethodNotAllowed(BridgeError):
    status, type, code = 405, "invalid_request_error", "method_not_allowed"


class PayloadTooLarge(BridgeError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class RateLimited(BridgeError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"


class BackendFailed(BridgeError):
    status, type, code = 502, "server_error", "backend_error"


class BackendUnavailable(BridgeError):
    status, type, code = 503, "server_error", "backend_unavailable"


class SessionElsewhere(BridgeError):
    status, type, code = 421, "invalid_request_error", "session_elsewhere"


class BackendTimeout(BridgeError):
    status, type, code = 504, "server_error", "timeout"


def _too_large(settings):
    return PayloadTooLarge(f"The request body is over the limit of {settings.max_body_mb} "
                           "MiB (MAX_BODY_MB).")


class ClientGone(Exception):
    """The HTTP client went away; nothing more can be sent."""


def _never():
    return False


def _escaped(text):
    """`text` on one line: control and other unprintable characters as escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


_LOG = logging.getLogger("claude_bridge")


class LogFormat(logging.Formatter):
    """`2026-11-25T16:31:02Z message`, UTC. Text from requests (paths, model names, the
    CLI's words) is escaped, so it cannot start a line of its own; a traceback follows on
    lines starting with `  | `."""

    converter = time.gmtime

    def __init__(self):
        super().__init__("%(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%SZ")

    def format(self, record):
        record.message = _escaped(record.getMessage())
        record.asctime = self.formatTime(record, self.datefmt)
        text = self.formatMessage(record)
        trace = getattr(record, "trace", None) or (
            self.formatException(record.exc_info) if record.exc_info else None)
        if trace:
            text += "".join("\n  | " + _escaped(line) for line in trace.splitlines())
        return text


def configure_logging():
    """Log lines on stderr (as `python bridge.py` does; an embedding app can do its own)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormat())
    _LOG.handlers[:] = [handler]
    _LOG.setLevel(logging.INFO)
    _LOG.propagate = False


# ----------------------------------------------------------------------------------------
# Usage store
# ----------------------------------------------------------------------------------------

_REQUEST_COLUMNS = (
    ("request_id", "TEXT"), ("session_id", "TEXT"), ("stream", "INTEGER NOT NULL DEFAULT 0"),
    ("outcome", "TEXT"), ("status", "INTEGER"), ("error", "TEXT"),
    ("cached_tokens", "INTEGER NOT NULL DEFAULT 0"), ("cost_usd", "REAL NOT NULL DEFAULT 0"),
    ("ttft_ms", "INTEGER"),
)


def _columns(db, table):
    """The names of a table's columns (none if it does not exist)."""
    if getattr(db, "dialect", "sqlite") == "postgresql":
        return {row[0] for row in db.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?"
            " AND table_schema = current_schema()", (table,))}
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def _migrate_requests(db):
    """v1: the requests log; adopts the Go bridge's `requests` table in place."""
    if not _columns(db, "requests"):
        db.execute(
            "CREATE TABLE requests ("
            " id INTEGER PRIMARY KEY,"
            " ts DATETIME DEFAULT CURRENT_TIMESTAMP,"  # UTC, 'YYYY-MM-DD HH:MM:SS.SSS'
            " model TEXT, provider TEXT,"
            " prompt_tokens INTEGER NOT NULL DEFAULT 0,"
            " completion_tokens INTEGER NOT NULL DEFAULT 0,"
            " total_tokens INTEGER NOT NULL DEFAULT 0,"
            " duration_ms INTEGER, is_error INTEGER NOT NULL DEFAULT 0)")
    have = _columns(db, "requests")
    for name, decl in _REQUEST_COLUMNS:
        if name not in have:
            db.execute(f"ALTER TABLE requests ADD COLUMN {name} {decl}")
    db.execute("UPDATE requests SET outcome = CASE WHEN is_error <> 0 THEN 'error' ELSE 'ok' END"
               " WHERE outcome IS NULL")
    db.execute("CREATE INDEX IF NOT EXISTS requests_ts ON requests(ts)")


def _migrate_claude_sessions(db):
    """v2: client session ids -> Claude session UUIDs, kept only after a good turn."""
    db.execute(
        "CREATE TABLE claude_sessions ("
        " client_id TEXT PRIMARY KEY, claude_uuid TEXT NOT NULL, workdir TEXT NOT NULL,"
        " total_cost_usd REAL NOT NULL DEFAULT 0, updated_at TEXT NOT NULL)")


_SUMS = ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens",
         "cached_tokens", "cost_usd", "duration_ms_sum", "duration_count")
# The same sums over raw rows, in _SUMS order.
# (Written for both SQLite and PostgreSQL: no TOTAL(), no sums of booleans.)
_RAW_SUMS = ("COUNT(*), SUM(CASE WHEN outcome <> 'ok' THEN 1 ELSE 0 END),"
             " COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0),"
             " COALESCE(SUM(total_tokens), 0), COALESCE(SUM(cached_tokens), 0),"
             " COALESCE(SUM(cost_usd), 0), COALESCE(SUM(duration_ms), 0),"
             " COUNT(duration_ms)")
_ROLLUP_SUMS = ", ".join(f"COALESCE(SUM({name}), 0)" for name in (
    "requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens",
    "cached_tokens", "cost_usd", "duration_ms_sum", "duration_count"))


def _create_rollup(db, table, key, width):
    db.execute(
        f"CREATE TABLE {table} ("
        f" {key} TEXT NOT NULL, model TEXT NOT NULL, provider TEXT NOT NULL,"
        " requests INTEGER NOT NULL, errors INTEGER NOT NULL,"
        " prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,"
        " total_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL,"
        " cost_usd REAL NOT NULL, duration_ms_sum INTEGER NOT NULL,"
        f" duration_count INTEGER NOT NULL, PRIMARY KEY ({key}, model, provider))"
        " WITHOUT ROWID")
    db.execute(
        f"INSERT INTO {table} SELECT substr(ts, 1, {width}), COALESCE(model, ''),"
        f" COALESCE(provider, ''), {_RAW_SUMS} FROM requests WHERE ts IS NOT NULL"
        " GROUP BY 1, 2, 3")


def _migrate_hourly_rollup(db):
    """v3: per-hour sums kept on insert, so totals over a long history stay fast."""
    _create_rollup(db, "usage_hourly", "hour", 13)


def _migrate_daily_rollup(db):
    """v4: per-day sums too: a year of history is ~365 rows a model, not ~8,760."""
    _create_rollup(db, "usage_daily", "day", 10)


def _migrate_x_request_id(db):
    """v5: the X-Request-ID of each request, to find its row from a client's or proxy's log."""
    db.execute("ALTER TABLE requests ADD COLUMN x_request_id TEXT")


def _migrate_via(db):
    """v7: how a turn reached its backend when that is worth knowing: `held` (it
    continued a run that waited for the client's tool results), `rebuilt` (that run was
    gone, so a new one got the whole history), `forked` (a regenerated or edited message,
    resumed at an earlier reply of a Claude session)."""
    db.execute("ALTER TABLE requests ADD COLUMN via TEXT")


def _migrate_conversations(db):
    """v8: conversations recognised by their history: the keyed digest of the history
    after each good turn -> the session it belongs to and that turn's number."""
    db.execute("CREATE TABLE conversations (digest TEXT PRIMARY KEY, session_id TEXT NOT NULL,"
               " turn INTEGER NOT NULL, updated_at TEXT NOT NULL, provider TEXT,"
               # Where a Claude turn ended: its session and the reply's message uuid, to
               # resume a fork there (--resume-session-at).
               " claude_uuid TEXT, message_uuid TEXT)")
    db.execute("CREATE INDEX conversations_session ON conversations(session_id, turn)")
    db.execute("CREATE INDEX conversations_updated ON conversations(updated_at)")


def session_tag(key, session_id):
    """The short keyed hash that stands for a client's X-Session-ID everywhere outside the
    request itself: the raw id lets anyone continue (and read) that conversation."""
    return hmac.new(key, session_id.encode("utf-8"), "sha256").hexdigest()[:16]


def _migrate_session_tags(db):
    """v6: session ids are kept only as keyed hashes, under a key made here."""
    key = secrets.token_bytes(32)
    db.execute("CREATE TABLE bridge_meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)")
    db.execute("INSERT INTO bridge_meta VALUES ('session_key', ?)", (key,))
    db.execute("CREATE INDEX claude_sessions_updated ON claude_sessions(updated_at)")
    if getattr(db, "dialect", "sqlite") == "postgresql":
        return  # a new database: no raw ids to replace
    db.create_function("session_tag", 1, lambda raw: session_tag(key, raw), deterministic=True)
    db.execute("PRAGMA secure_delete = ON")  # the raw ids must not linger in free pages
    db.execute("UPDATE requests SET session_id = session_tag(session_id)"
               " WHERE session_id IS NOT NULL")
    db.execute("UPDATE OR REPLACE claude_sessions SET client_id = session_tag(client_id)")
    db.execute("PRAGMA secure_delete = OFF")


def _rekey_rollups(db, keys, column, value):
    """The rollups with one more key column (`keys` before it), `value` for every sum so
    far."""
    for table, key in (("usage_hourly", "hour"), ("usage_daily", "day")):
        db.execute(f"ALTER TABLE {table} RENAME TO {table}_old")
        db.execute(
            f"CREATE TABLE {table} ("
            f" {key} TEXT NOT NULL, {' TEXT NOT NULL, '.join(keys)} TEXT NOT NULL,"
            f" {column} TEXT NOT NULL, requests INTEGER NOT NULL, errors INTEGER NOT NULL,"
            " prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,"
            " total_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL,"
            " cost_usd REAL NOT NULL, duration_ms_sum INTEGER NOT NULL,"
            f" duration_count INTEGER NOT NULL, PRIMARY KEY ({key}, {', '.join(keys)},"
            f" {column})) WITHOUT ROWID")
        db.execute(f"INSERT INTO {table} SELECT {key}, {', '.join(keys)}, ?, requests,"
                   " errors, prompt_tokens, completion_tokens, total_tokens, cached_tokens,"
                   f" cost_usd, duration_ms_sum, duration_count FROM {table}_old", (value,))
        db.execute(f"DROP TABLE {table}_old")


def _migrate_api(db):
    """v9: the API a request came in by (chat, responses, messages, completions,
    embeddings), in the rows and as a key of the rollups; everything before was chat."""
    db.execute("ALTER TABLE requests ADD COLUMN api TEXT NOT NULL DEFAULT 'chat'")
    _rekey_rollups(db, ("model", "provider"), "api", "chat")


def _migrate_responses(db):
    """v10: stored Responses API responses (previous_response_id, GET and DELETE): the
    response as sent, and the history it ends (compressed JSON), per caller."""
    db.execute("CREATE TABLE responses (id TEXT PRIMARY KEY, owner TEXT NOT NULL,"
               " created_at TEXT NOT NULL, session_id TEXT, body TEXT NOT NULL,"
               " history BLOB NOT NULL)")
    db.execute("CREATE INDEX responses_created ON responses(created_at)")


def _migrate_instances(db):
    """v11: which bridge answered each request (INSTANCE_NAME; '' before), in the rows and
    as a key of the rollups, and which owns each session; row_key makes shipping a row to
    a shared database happen at most once."""
    db.execute("ALTER TABLE requests ADD COLUMN instance TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE requests ADD COLUMN row_key TEXT")
    db.execute("CREATE UNIQUE INDEX requests_row_key ON requests(row_key)")
    _rekey_rollups(db, ("model", "provider", "api"), "instance", "")
    for table in ("claude_sessions", "conversations"):
        db.execute(f"ALTER TABLE {table} ADD COLUMN instance TEXT NOT NULL DEFAULT ''")


def _migrate_copies(db):
    """v12: SQLite histories copied in (--copy-usage): up to which row, per source."""
    db.execute("CREATE TABLE usage_copies (source TEXT PRIMARY KEY, last_id INTEGER NOT NULL,"
               " copied_at TEXT NOT NULL)")


# Ordered: the number applied is PRAGMA user_version (SQLite), bridge_schema (PostgreSQL).
MIGRATIONS = (_migrate_requests, _migrate_claude_sessions, _migrate_hourly_rollup,
              _migrate_daily_rollup, _migrate_x_request_id, _migrate_session_tags,
              _migrate_via, _migrate_conversations, _migrate_api, _migrate_responses,
              _migrate_instances, _migrate_copies)

# Where sums come from, coarsest first: (table, key column, characters of `ts` in the key).
# A time window is cut into whole days, then whole hours, then raw rows at its two edges.
class Level(typing.NamedTuple):
    """Where sums over a time window come from: a rollup, or the raw rows."""
    table: str
    column: str  # its time column
    width: int  # characters of a timestamp that name one bucket; None for raw rows


_LEVELS = (Level("usage_daily", "day", 10), Level("usage_hourly", "hour", 13),
           Level("requests", "ts", None))

_TS_FORMAT = "%Y-%m-%d %H:%M:%S"  # the `ts` column: UTC, as SQLite's CURRENT_TIMESTAMP
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])\Z")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _ts_text(epoch):
    return time.strftime(_TS_FORMAT, time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}"


def _utc_now_text():
    return _ts_text(time.time())


def _iso(ts):
    """A `ts` value as ISO 8601 UTC."""
    return ts.replace(" ", "T", 1) + "Z" if ts else ts


def parse_time(value, name, now=None):
    """`24h`, `7d`, `30m` (ago) or ISO 8601 -> a `ts` string; InvalidRequest if neither."""
    now = time.time() if now is None else now
    value = value.strip()
    match = _RELATIVE.match(value)
    if match:
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        return _ts_text(max(0.0, now - min(seconds, now)))
    try:
        # Python 3.10's fromisoformat takes "+00:00" but not the "Z" everyone sends.
        moment = datetime.datetime.fromisoformat(re.sub(r"[Zz]\Z", "+00:00", value))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
        return _ts_text(max(0.0, moment.timestamp()))
    except (ValueError, OverflowError, OSError):
        raise InvalidRequest(f"'{name}' must be ISO 8601 (2026-11-25T10:00:00Z) or relative "
                             "like 30m, 24h, 7d.", param=name) from None


_STEP = {10: datetime.timedelta(days=1), 13: datetime.timedelta(hours=1)}


def _floor_ts(ts, width):
    """The start of the day (width 10) or hour (13) that `ts` falls in."""
    return ts[:width] + " 00:00:00.000"[width - 10:]


def _ceil_ts(ts, width):
    """The first whole day (width 10) or hour (13) starting at or after `ts`."""
    floor = _floor_ts(ts, width)
    if ts[width:].strip(" :0.") == "":
        return floor
    moment = datetime.datetime.strptime(floor[:19], _TS_FORMAT) + _STEP[width]
    return moment.strftime(_TS_FORMAT) + ".000"


def _split_window(since, until, levels=_LEVELS):
    """[(level, low, high)] covering [since, until) with the coarsest sums that fit;
    None is an open end."""
    if since is not None and until is not None and since >= until:
        return []
    level, finer = levels[0], levels[1:]
    width = level.width
    if width is None:  # raw rows: whatever is left
        return [(level, since, until)]
    low = None if since is None else _ceil_ts(since, width)
    high = None if until is None else _floor_ts(until, width)
    if low is not None and high is not None and low >= high:
        return _split_window(since, until, finer)
    parts = [(level, low, high)]
    if since is not None and since < low:
        parts += _split_window(since, low, finer)
    if until is not None and high < until:
        parts += _split_window(high, until, finer)
    return parts


class ClaudeSession(typing.NamedTuple):
    """The Claude CLI session behind a client's session id."""
    claude_uuid: str
    workdir: str
    total_cost_usd: float  # the CLI's cumulative figure


_ROW_COLUMNS = ("ts", "request_id", "model", "provider", "session_id", "stream", "outcome",
                "status", "error", "prompt_tokens", "completion_tokens", "total_tokens",
                "cached_tokens", "cost_usd", "duration_ms", "ttft_ms", "is_error",
                "x_request_id", "via", "api", "instance", "row_key")
_ROLLUP_KEYS = ("model", "provider", "api", "instance")
_SUMS_COLUMNS = ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens",
                 "cached_tokens", "cost_usd", "duration_ms_sum", "duration_count")


def _stamped(row):
    """A usage row as stored: its time, defaults and derived fields, in _ROW_COLUMNS."""
    prompt, completion = row.get("prompt_tokens", 0), row.get("completion_tokens", 0)
    error, instance = row.get("error"), row.get("instance") or ""
    return {
        **{name: row.get(name) for name in _ROW_COLUMNS}, "ts": row.get("ts") or _utc_now_text(),
        "stream": int(bool(row.get("stream"))), "error": error[:500] if error else None,
        "prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion, "cached_tokens": row.get("cached_tokens", 0),
        "cost_usd": row.get("cost_usd", 0.0), "is_error": int(row["outcome"] != "ok"),
        "api": row.get("api") or "chat", "instance": instance,
        # Unique across bridges: what makes shipping it to a shared database idempotent.
        "row_key": row.get("row_key") or f"{instance}/{row['request_id']}"}


def _row_statements(row, insert="INSERT INTO requests"):
    """The statements that store a stamped row and add it to its hour's and day's sums."""
    duration = row["duration_ms"]
    sums = (*(row[k] for k in _ROLLUP_KEYS), row["is_error"], row["prompt_tokens"],
            row["completion_tokens"], row["total_tokens"], row["cached_tokens"],
            row["cost_usd"], duration or 0, int(duration is not None))
    return (
        (f"{insert} ({', '.join(_ROW_COLUMNS)}) VALUES ({', '.join('?' * len(_ROW_COLUMNS))})",
         tuple(row[name] for name in _ROW_COLUMNS)),
        *((f"INSERT INTO {table} VALUES (?,?,?,?,?,1,?,?,?,?,?,?,?,?)"
           f" ON CONFLICT ({key}, {', '.join(_ROLLUP_KEYS)}) DO UPDATE SET"
           f" requests = {table}.requests + 1, errors = {table}.errors + excluded.errors,"
           + ",".join(f" {c} = {table}.{c} + excluded.{c}" for c in (
               "prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens",
               "cost_usd", "duration_ms_sum", "duration_count")),
           ((row["ts"] or "")[:width], *sums)) for table, key, width in _LEVELS[:-1]))


class UsageStore:
    """SQLite: the request log, its hourly rollup and the Claude session map, behind one
    lock (one connection: SQLite has one writer anyway, and each use is short).

    A database that cannot be opened or written never stops requests: the error is logged
    and reported by /health, and the bridge keeps serving.
    """

    def __init__(self, path, max_sessions=10_000, session_days=30, max_conversations=10_000,
                 max_responses=1000):
        self.path = re.sub(r"//[^@/]*@", "//***@", path)  # (a URL's password: never shown)
        self.instance = ""  # the bridge's INSTANCE_NAME, for the sessions it keeps
        self.max_conversations = max_conversations
        self.max_responses = max_responses
        self.lock = threading.Lock()
        self.last_error = None
        self.db = None
        self.max_sessions = max_sessions
        self.session_seconds = session_days * 86400
        try:
            self.db = self._open(path)
        except self._OPEN_ERRORS as exc:
            self._failed("open", exc)
        self.session_key = self._session_key()

    _OPEN_ERRORS = (sqlite3.Error, OSError)

    def _session_key(self):
        rows = self._read("SELECT value FROM bridge_meta WHERE name = 'session_key'")
        # Without a database, sessions last as long as the process: so does the key.
        return bytes(rows[0][0]) if rows else secrets.token_bytes(32)

    def session_tag(self, session_id):
        """The stored stand-in for a client's session id (None stays None)."""
        return None if session_id is None else session_tag(self.session_key, session_id)

    @staticmethod
    def _open(path):
        # check_same_thread=False: every use is under self.lock. timeout: busy wait, in
        # seconds, for another process writing the same file (kept short: a request waits).
        if path != ":memory:" and not os.path.exists(path):
            # Rows hold prompts' costs and errors: this user's to read, nobody else's.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        db = sqlite3.connect(path, timeout=2, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a crash of this process; only power loss can drop
        # the last commits.
        db.execute("PRAGMA synchronous=NORMAL")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for number, migrate in enumerate(MIGRATIONS[version:], start=version + 1):
            db.execute("BEGIN IMMEDIATE")
            try:
                migrate(db)
                db.execute(f"PRAGMA user_version = {number}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        if version < len(MIGRATIONS):
            # Into the main file now: what a migration replaced must not stay readable.
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return db

    def _failed(self, what, exc):
        message = f"{what} failed: {exc}"
        if message != self.last_error:  # once per distinct failure, not once per request
            _LOG.warning("usage db %s: %s", self.path, message)
        self.last_error = message

    def _read(self, sql, params=()):
        if self.db is None:
            return []
        try:
            with self.lock:
                return self.db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            self._failed("read", exc)
            return []

    def _write(self, statements):
        """Run (sql, params) pairs in one transaction; False if the database refused."""
        if self.db is None:
            return False
        try:
            with self.lock:
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    for sql, params in statements:
                        self.db.execute(sql, params)
                    self.db.execute("COMMIT")
                except BaseException:
                    if self.db.in_transaction:
                        self.db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            self._failed("write", exc)
            return False
        if self.last_error:
            _LOG.warning("usage db %s: writing works again", self.path)
            self.last_error = None
        return True

    def health(self):
        """The database's state for /health."""
        return {"path": self.path, "ok": self.db is not None and self.last_error is None,
                "error": self.last_error}

    def record(self, row):
        """Append one request row and add it to its hour's sums."""
        self._write(_row_statements(_stamped(row)))

    def _sums(self, group, since, until, levels=_LEVELS, **keys):
        """{group: [sums in _SUMS order]} over [since, until), reading the coarsest sums
        that fit (see _split_window). `group(key column)` is the SQL to group by; `keys`
        ({column: value or None}) filter."""
        where, params = [], []
        for column, value in keys.items():
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        width = len(_SUMS)
        out = {}
        for (table, key, key_width), low, high in _split_window(since, until, levels):
            cond, cparams = list(where), list(params)
            for test, bound in ((">=", low), ("<", high)):
                if bound is not None:
                    cond.append(f"{key} {test} ?")
                    # A rollup key is the prefix of ts; the bounds are whole units there.
                    cparams.append(bound[:key_width])
            sums = _RAW_SUMS if table == "requests" else _ROLLUP_SUMS
            clause = " WHERE " + " AND ".join(cond) if cond else ""
            rows = self._read(f"SELECT {group(key)}, {sums} FROM {table}{clause}"
                              f" GROUP BY {group(key)}", cparams)
            for row in rows:
                name = row[0] if len(row) == width + 1 else tuple(row[:-width])
                acc = out.setdefault(name, [0] * width)
                for i, value in enumerate(row[-width:]):
                    acc[i] += value or 0
        return out

    def summary(self, since=None, until=None, **keys):
        """Totals grouped by model, provider, API and instance, busiest first."""
        out = []
        for (name, prov, via_api, instance), sums in self._sums(
                lambda key: "model, provider, api, instance", since, until, **keys).items():
            item = dict(zip(_SUMS, sums))
            if not item["requests"]:
                continue
            count, total_ms = item["duration_count"], item["duration_ms_sum"]
            out.append({"model": name, "provider": prov, "api": via_api,
                        "instance": instance, "requests": int(item["requests"]),
                        "errors": int(item["errors"]),
                        "prompt_tokens": int(item["prompt_tokens"]),
                        "completion_tokens": int(item["completion_tokens"]),
                        "total_tokens": int(item["total_tokens"]),
                        "avg_duration_ms": round(total_ms / count, 1) if count else 0.0,
                        "cached_tokens": int(item["cached_tokens"]),
                        "cost_usd": round(item["cost_usd"], 7)})
        out.sort(key=lambda item: (-item["requests"], item["model"] or "", item["provider"],
                                   item["api"], item["instance"]))
        return out

    # bucket -> (characters of `ts` that name it, what completes it as ISO 8601)
    BUCKETS = {"minute": (16, ":00Z"), "hour": (13, ":00:00Z"), "day": (10, "T00:00:00Z")}

    def timeseries(self, bucket, since=None, until=None, **keys):
        """Sums per minute, hour or day (only buckets with requests), oldest first."""
        width, suffix = self.BUCKETS[bucket]
        # Only sums at least as fine as the bucket can fill it.
        levels = tuple(level for level in _LEVELS if level.width is None or level.width >= width)
        groups = self._sums(lambda key: f"substr({key}, 1, {width})", since, until, levels,
                            **keys)
        out = []
        for key in sorted(k for k in groups if k):
            item = dict(zip(_SUMS, groups[key]))
            out.append({"bucket": key.replace(" ", "T") + suffix,
                        "requests": int(item["requests"]), "errors": int(item["errors"]),
                        "prompt_tokens": int(item["prompt_tokens"]),
                        "completion_tokens": int(item["completion_tokens"]),
                        "total_tokens": int(item["total_tokens"]),
                        "cost_usd": round(item["cost_usd"], 7)})
        return out

    _RECENT = ("id", "ts", "request_id", "x_request_id", "model", "provider", "session_id",
               "stream", "outcome", "status", "error", "prompt_tokens", "completion_tokens",
               "total_tokens", "cached_tokens", "cost_usd", "duration_ms", "ttft_ms", "via",
               "api", "instance")

    def recent(self, limit, since=None, api=None, instance=None):
        """The latest rows, newest first."""
        where = [(cond, value) for cond, value in (
            ("ts >= ?", since), ("api = ?", api), ("instance = ?", instance))
            if value is not None]
        clause = "WHERE " + " AND ".join(cond for cond, _ in where) if where else ""
        params = [value for _, value in where]
        rows = self._read(f"SELECT {', '.join(self._RECENT)} FROM requests {clause}"
                          " ORDER BY id DESC LIMIT ?", params + [limit])
        out = []
        for row in rows:
            item = dict(zip(self._RECENT, row))
            item["ts"] = _iso(item["ts"])
            item["stream"] = bool(item["stream"])
            out.append(item)
        return out

    def _session_cutoff(self):
        return _ts_text(time.time() - self.session_seconds)

    def get_claude_session(self, client_id):
        """The ClaudeSession of a client session id, or None."""
        rows = self._read("SELECT claude_uuid, workdir, total_cost_usd FROM claude_sessions"
                          " WHERE client_id = ? AND updated_at >= ?",
                          (client_id, self._session_cutoff()))
        return ClaudeSession(*rows[0]) if rows else None

    def put_claude_session(self, client_id, claude_uuid, workdir, total_cost_usd):
        """Remember (or move) a client session after a successful turn, forgetting the
        sessions past CLAUDE_SESSION_DAYS and the least recent past CLAUDE_SESSIONS."""
        known = self._read("SELECT 1 FROM claude_sessions WHERE client_id = ?", (client_id,))
        statements = [("INSERT INTO claude_sessions (client_id, claude_uuid, workdir,"
                       " total_cost_usd, updated_at, instance) VALUES (?,?,?,?,?,?)"
                       " ON CONFLICT(client_id) DO UPDATE SET claude_uuid=excluded.claude_uuid,"
                       " workdir=excluded.workdir, total_cost_usd=excluded.total_cost_usd,"
                       " updated_at=excluded.updated_at, instance=excluded.instance",
                       (client_id, claude_uuid, workdir, total_cost_usd, _utc_now_text(),
                        self.instance)),
                      ("DELETE FROM claude_sessions WHERE updated_at < ?",
                       (self._session_cutoff(),))]
        if not known:  # only a new session can take the table past CLAUDE_SESSIONS (the
            # count walks the whole index, so a session's later turns skip it)
            statements.append(("DELETE FROM claude_sessions WHERE client_id IN (SELECT"
                               " client_id FROM claude_sessions ORDER BY updated_at DESC"
                               " LIMIT -1 OFFSET ?)", (self.max_sessions,)))
        self._write(statements)

    def put_turn(self, digest, session_id, turn, provider, point=None):
        """Remember that a history (its digest) is `session_id` after `turn` good turns;
        forget digests past CONVERSATION_DAYS, and the least recent conversations past
        CONVERSATIONS_MAX (counted when a conversation starts)."""
        statements = [("INSERT INTO conversations (digest, session_id, turn, updated_at,"
                       " provider, claude_uuid, message_uuid, instance) VALUES"
                       " (?,?,?,?,?,?,?,?) ON CONFLICT (digest)"
                       " DO UPDATE SET session_id = excluded.session_id, turn = excluded.turn,"
                       " updated_at = excluded.updated_at, provider = excluded.provider,"
                       " claude_uuid = excluded.claude_uuid,"
                       " message_uuid = excluded.message_uuid, instance = excluded.instance",
                       (digest, session_id, turn, _utc_now_text(), provider,
                        *(point or (None, None)), self.instance)),
                      ("DELETE FROM conversations WHERE updated_at < ?",
                       (self._session_cutoff(),))]
        if turn == 1:
            statements.append((
                "DELETE FROM conversations WHERE session_id IN (SELECT session_id FROM"
                " conversations GROUP BY session_id ORDER BY MAX(updated_at) DESC"
                " LIMIT -1 OFFSET ?)", (self.max_conversations,)))
        self._write(statements)

    def find_turn(self, digest):
        """(session id, turn, the session's latest turn) of a history's digest, or None."""
        rows = self._read("SELECT c.session_id, c.turn, (SELECT MAX(turn) FROM conversations"
                          " WHERE session_id = c.session_id) FROM conversations c"
                          " WHERE digest = ? AND updated_at >= ?",
                          (digest, self._session_cutoff()))
        return tuple(rows[0]) if rows else None

    def fork_point(self, digest):
        """(Claude session UUID, reply's message uuid, that session's total cost) where a
        history (its digest) ended in a Claude session still known, or None."""
        rows = self._read("SELECT c.claude_uuid, c.message_uuid, s.total_cost_usd FROM"
                          " conversations c JOIN claude_sessions s ON s.claude_uuid ="
                          " c.claude_uuid WHERE c.digest = ? AND c.message_uuid IS NOT NULL"
                          " LIMIT 1", (digest,))
        return tuple(rows[0]) if rows else None

    shared = False  # several bridges use this store (PostgreSQL)

    def session_owner(self, session_id):
        """The instance that answered a session's latest turn ('' if unknown)."""
        rows = self._read("SELECT instance FROM conversations WHERE session_id = ? ORDER BY"
                          " turn DESC, updated_at DESC LIMIT 1", (session_id,))
        return rows[0][0] if rows else ""

    def latest_turn(self, session_id):
        """(digest, turn, provider) of a session's latest good turn, or None."""
        rows = self._read("SELECT digest, turn, provider FROM conversations WHERE"
                          " session_id = ? ORDER BY turn DESC, updated_at DESC LIMIT 1",
                          (session_id,))
        return tuple(rows[0]) if rows else None

    def sessions(self, limit):
        """The sessions with rows, most recently used first."""
        rows = self._read(
            "SELECT session_id, MAX(provider), SUM(CASE WHEN outcome = 'ok' THEN 1 ELSE 0 END),"
            " MAX(ts), COALESCE(SUM(total_tokens), 0), COALESCE(SUM(cost_usd), 0) FROM requests"
            " WHERE session_id IS NOT NULL GROUP BY session_id"
            " ORDER BY MAX(ts) DESC LIMIT ?", (limit,))
        return [{"id": r[0], "backend": r[1], "turns": int(r[2] or 0), "last_used": _iso(r[3]),
                 "total_tokens": int(r[4]), "cost_usd": round(r[5], 7)} for r in rows]

    def forget_session(self, session_id):
        """Forget a session's Claude mapping and digests; False if it was not known."""
        known = self._read("SELECT 1 FROM requests WHERE session_id = ? LIMIT 1",
                           (session_id,)) or self._read(
            "SELECT 1 FROM conversations WHERE session_id = ? LIMIT 1", (session_id,))
        self._write((("DELETE FROM claude_sessions WHERE client_id = ?", (session_id,)),
                     ("DELETE FROM conversations WHERE session_id = ?", (session_id,))))
        return bool(known)

    def put_response(self, response_id, owner, session_id, body, history):
        """Keep a response (its JSON text and the history it ends, as JSON text) for
        previous_response_id and GET; forget those past CLAUDE_SESSION_DAYS and the oldest
        past RESPONSES_MAX."""
        self._write((
            ("INSERT INTO responses VALUES (?,?,?,?,?,?) ON CONFLICT (id) DO NOTHING",
             (response_id, owner, _utc_now_text(), session_id, body,
              zlib.compress(history.encode("utf-8"), 6))),
            ("DELETE FROM responses WHERE created_at < ?", (self._session_cutoff(),)),
            ("DELETE FROM responses WHERE id IN (SELECT id FROM responses ORDER BY"
             " created_at DESC LIMIT -1 OFFSET ?)", (self.max_responses,))))

    def get_response(self, response_id, owner):
        """(session id, response JSON text, history JSON text) of a caller's stored
        response, or None."""
        rows = self._read("SELECT session_id, body, history FROM responses WHERE id = ? AND"
                          " owner = ? AND created_at >= ?",
                          (response_id, owner, self._session_cutoff()))
        if not rows:
            return None
        session_id, body, history = rows[0]
        return session_id, body, zlib.decompress(history).decode("utf-8")

    def delete_response(self, response_id, owner):
        """Forget a caller's stored response; False if there was none."""
        if not self._read("SELECT 1 FROM responses WHERE id = ? AND owner = ?",
                          (response_id, owner)):
            return False
        return self._erase(("DELETE FROM responses WHERE id = ?", (response_id,)))

    def _erase(self, statement):
        """Delete so that the text is gone from the file, not just unlinked: overwritten
        in its pages, and checkpointed out of the write-ahead log."""
        done = self._write((("PRAGMA secure_delete = ON", ()), statement,
                            ("PRAGMA secure_delete = OFF", ())))
        self._read("PRAGMA wal_checkpoint(TRUNCATE)")
        return done

    def prune_rows(self, days, batch=1000):
        """Delete up to `batch` raw rows older than `days` (the sums keep them); how many."""
        cutoff = _ts_text(time.time() - days * 86400)
        ids = [r[0] for r in self._read("SELECT id FROM requests WHERE ts < ? ORDER BY id"
                                        " LIMIT ?", (cutoff, batch))]
        if ids and self._write((("DELETE FROM requests WHERE id IN (%s)"
                                 % ",".join("?" * len(ids)), tuple(ids)),)):
            return len(ids)
        return 0

    def queued(self):
        """Rows and writes waiting for the database (none here: they are written at once)."""
        return 0

    def flush(self, timeout=10.0):
        """Wait until everything queued is in the database; whether it is."""
        return True

    def dropped(self):
        return 0

    def claude_session_count(self):
        """Client sessions remembered."""
        rows = self._read("SELECT COUNT(*) FROM claude_sessions")
        return rows[0][0] if rows else 0

    def close(self):
        """Close the connection."""
        if self.db is not None:
            with self.lock:
                self.db.close()
                self.db = None


def _pg_sql(sql):
    """A statement written for SQLite, as PostgreSQL takes it (the few differences the
    store's SQL has: parameters, types, LIMIT -1)."""
    for old, new in (("?", "%s"), ("id INTEGER PRIMARY KEY", "id BIGSERIAL PRIMARY KEY"),
                     ("DATETIME DEFAULT CURRENT_TIMESTAMP", "TEXT"), ("INTEGER", "BIGINT"),
                     (" REAL", " DOUBLE PRECISION"), ("BLOB", "BYTEA"),
                     (" WITHOUT ROWID", ""), ("LIMIT -1", "LIMIT ALL")):
        sql = sql.replace(old, new)
    return sql


class _PgMigrating:
    """A PostgreSQL connection as the migrations see it: SQLite's SQL, translated."""

    dialect = "postgresql"

    def __init__(self, db):
        self.db = db

    def execute(self, sql, params=()):
        return self.db.execute(_pg_sql(sql), params)


class Spool:
    """Usage rows on their way to a shared database, in a local SQLite file: a row is
    committed here before its response ends, so a crash loses nothing answered, and is
    deleted once the database has it."""

    def __init__(self, path, limit):
        self.path = path
        self.limit = limit
        self.lock = threading.Lock()
        self.dropped = 0  # rows refused because the spool was full
        if path != ":memory:" and not os.path.exists(path):
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self.db = sqlite3.connect(path, timeout=2, isolation_level=None,
                                  check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY,"
                        " row TEXT NOT NULL)")

    @property
    def size(self):
        """Rows waiting (counted, not tracked: bridges sharing a spool file by mistake
        ship each other's rows, once each, and still agree on what is left)."""
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM spool").fetchone()[0]

    def put(self, row):
        """Keep a stamped row; False if the spool is full (the row is dropped)."""
        if self.size >= self.limit:
            self.dropped += 1
            return False
        with self.lock:
            self.db.execute("INSERT INTO spool (row) VALUES (?)", (_dumps(row),))
        return True

    def take(self, n):
        """[(spool id, row)] of the oldest n rows (they stay until done())."""
        with self.lock:
            return [(i, json.loads(text)) for i, text in self.db.execute(
                "SELECT id, row FROM spool ORDER BY id LIMIT ?", (n,))]

    def done(self, ids):
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("DELETE FROM spool WHERE id = ?", [(i,) for i in ids])
            self.db.execute("COMMIT")

    def close(self):
        with self.lock:
            self.db.close()


class PgStore(UsageStore):
    """PostgreSQL (USAGE_DB_URL), shared by several bridges: the same tables, migrations
    and queries as SQLite's, translated where the SQL differs (_pg_sql).

    A slow or absent database never holds a response: usage rows go to a local Spool and
    one thread ships them in batches, each at most once (row_key). Other writes (sessions,
    digests, stored responses) wait in memory (the last 10,000) for the same thread; a
    read first lets them land (so a conversation's next turn sees its last), and while
    the database is down finds nothing: conversations heal from the history clients
    resend."""

    dialect = "postgresql"
    shared = True
    RETRY_SECONDS = 2.0  # after a failure, how long the database is left alone
    BATCH = 500  # rows shipped per transaction

    def __init__(self, url, spool_path, queue_max, **limits):
        try:
            import psycopg  # only for this store: SQLite needs no driver
        except ImportError:
            raise SettingsError("USAGE_DB_URL needs the psycopg driver: pip install "
                                "'psycopg[binary]' (or claude-bridge[postgres]).") from None
        self.psycopg = psycopg
        self.url = url
        self.migrated = False
        self.spool = Spool(spool_path, queue_max)
        self.pending = collections.deque(maxlen=10_000)  # writes waiting for the database
        self.down_until = 0.0
        self.wake = threading.Event()
        self.hurry = threading.Event()
        self.stopped = threading.Event()
        self.write_lock = threading.Lock()  # one writer connection
        self.writer = None
        super().__init__(url, **limits)
        self.shipper = threading.Thread(target=self._ship_forever, daemon=True,
                                        name="usage-shipper")
        self.shipper.start()

    # Down at start-up is not fatal: the store connects when the database comes.
    _OPEN_ERRORS = (Exception,)

    def _open(self, url):
        return self._connect()

    def _connect(self):
        """A new connection; the schema migrated first, by whichever bridge comes first."""
        db = self.psycopg.connect(self.url, autocommit=True, connect_timeout=3,
                                  options="-c statement_timeout=10000")
        if self.migrated:
            return db
        try:
            with db.transaction():
                # Several bridges may start at once: one migrates, the others wait.
                db.execute("SELECT pg_advisory_xact_lock(7162534)")
                db.execute("CREATE TABLE IF NOT EXISTS bridge_schema (version INTEGER)")
                row = db.execute("SELECT version FROM bridge_schema").fetchone()
                if row is None:
                    db.execute("INSERT INTO bridge_schema VALUES (0)")
                version = row[0] if row else 0
                for number, migrate in enumerate(MIGRATIONS[version:], start=version + 1):
                    migrate(_PgMigrating(db))
                    db.execute("UPDATE bridge_schema SET version = %s", (number,))
                key = db.execute("SELECT value FROM bridge_meta WHERE name = 'session_key'")
                self.session_key = bytes(key.fetchone()[0])  # the team's: tags agree
        except BaseException:
            db.close()
            raise
        self.migrated = True
        return db

    def _session_key(self):
        return getattr(self, "session_key", None) or secrets.token_bytes(32)

    def _down(self, what, exc, name):
        """The database failed: leave it alone a while, and say so. Only the connection
        that failed is closed (under its own lock: another thread may be using the
        other)."""
        self._failed(what, exc)
        self.down_until = time.monotonic() + self.RETRY_SECONDS
        conn = getattr(self, name)
        setattr(self, name, None)
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def _conn(self, name):
        """The named connection, (re)connected; None while the database is down."""
        conn = getattr(self, name)
        if conn is None and time.monotonic() >= self.down_until:
            conn = self._connect()
            setattr(self, name, conn)
        return conn

    def _read(self, sql, params=()):
        self._settle()
        try:
            with self.lock:
                conn = self._conn("db")
                rows = [] if conn is None else conn.execute(_pg_sql(sql), params).fetchall()
        except self.psycopg.Error as exc:
            self._down("read", exc, "db")
            return []
        # SUM() of a bigint is numeric: the figures are plain numbers, as SQLite's.
        return [tuple(float(v) if type(v).__name__ == "Decimal" else v for v in row)
                for row in rows]

    def _erase(self, statement):
        # (PostgreSQL overwrites dead rows when it vacuums them; it has no secure_delete.)
        return self._write((statement,))

    def _write(self, statements):
        """Queue them for the shipper, which runs them in one transaction, in order: a
        request never waits on the database (a later read waits for them; see _settle)."""
        self.pending.append(tuple(statements))
        self.wake.set()
        return True

    def _settle(self, timeout=1.0):
        """Let the queued writes land before a read (the next turn of a conversation must
        see the last one's), unless the database is down: at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            if time.monotonic() < self.down_until:
                return  # down: they will not land soon
            self.hurry.set()  # (the shipper skips its wait for more)
            self.wake.set()
            time.sleep(0.001)

    def _transaction(self, work, alone, what, dropped=None):
        """Run work(connection) in one transaction: True once done, or once refused when
        `alone` (a bug: logged, dropped, never retried); None if refused and not alone
        (the caller tries its parts one by one); False while the database is unreachable.
        `dropped()` is called for what is dropped."""
        try:
            with self.write_lock:
                conn = self._conn("writer")
                if conn is None:
                    return False
                with conn.transaction():
                    work(conn)
        except self.psycopg.OperationalError as exc:
            self._down("write", exc, "writer")
            return False
        except self.psycopg.Error as exc:
            if not alone:
                return None
            _LOG.error("usage db %s: %s was refused and dropped: %s", self.path, what, exc)
            if dropped is not None:
                dropped()
            return True
        self._recovered()
        return True

    def _apply(self, statements, alone=True):
        """The statements in one transaction (see _transaction)."""
        def work(conn):
            for sql, params in statements:
                conn.execute(_pg_sql(sql), params)
        return self._transaction(work, alone, "a write")

    def _apply_pending(self):
        """The queued writes, many in one transaction; whether all of them are done."""
        while self.pending:
            groups = list(itertools.islice(self.pending, self.BATCH))
            done = self._apply([s for group in groups for s in group], alone=len(groups) == 1)
            if done is None:
                done = all(self._apply(group) for group in groups)
            if not done:
                return False
            for _ in groups:
                self.pending.popleft()
        return True

    def _recovered(self):
        if self.last_error:
            _LOG.warning("usage db %s: writing works again", self.path)
            self.last_error = None

    def record(self, row):
        if not self.spool.put(_stamped(row)):
            _LOG.warning("usage spool full (USAGE_QUEUE_MAX=%d): a row was dropped",
                         self.spool.limit)
        self.wake.set()

    GATHER = 0.02  # seconds a wake-up waits for more rows: one transaction for a burst

    def _ship_forever(self):
        while not self.stopped.is_set():
            self.wake.wait(0.5)
            self.hurry.wait(self.GATHER)  # unless a read waits for what is queued
            self.hurry.clear()
            self.wake.clear()
            while self._apply_pending() and self._ship(self.spool.take(self.BATCH)):
                pass

    def _ship(self, batch):
        """Ship spooled rows; True if there may be more."""
        if not batch:
            return False
        shipped = self._apply_rows([row for _, row in batch])
        if shipped is None:  # a row the database refuses: each alone, to find it
            shipped = all(self._apply_rows([row]) is not False for _, row in batch)
        if not shipped:
            return False
        self.spool.done([i for i, _ in batch])
        return len(batch) == self.BATCH

    def _apply_rows(self, rows):
        """The rows and their sums in one transaction (see _transaction)."""
        def work(conn):
            for row in rows:
                (sql, params), *sums = _row_statements(row)
                # Shipped before a crash? Then it is in already: skip it, and its sums.
                inserted = conn.execute(_pg_sql(sql) + " ON CONFLICT (row_key) DO NOTHING"
                                        " RETURNING 1", params).fetchone()
                for sql, params in sums if inserted else ():
                    conn.execute(_pg_sql(sql), params)
        def count():
            self.spool.dropped += 1
        return self._transaction(work, len(rows) == 1, "a row", count)

    def queued(self):
        return self.spool.size + len(self.pending)

    def dropped(self):
        return self.spool.dropped

    def health(self):
        return {**super().health(), "ok": self.last_error is None,
                "queued": self.queued(), "dropped": self.spool.dropped}

    def flush(self, timeout=10.0):
        """Wait until everything queued has reached the database (tests, --copy-usage)."""
        deadline = time.monotonic() + timeout
        while self.queued() and time.monotonic() < deadline:
            self.hurry.set()
            self.wake.set()
            time.sleep(0.02)
        return not self.queued()

    def close(self):
        self.flush(timeout=5.0)  # what is left waits in the spool for the next start
        self.stopped.set()
        self.hurry.set()
        self.wake.set()
        self.shipper.join(timeout=15)
        with self.lock, self.write_lock:
            for name in ("db", "writer"):
                conn = getattr(self, name)
                if conn is not None:
                    conn.close()
                setattr(self, name, None)
        self.spool.close()


class Pruner:
    """Deletes raw usage rows past USAGE_RETENTION_DAYS off the request path: a batch at a
    time with a pause between, so writers never wait long; once a minute."""

    INTERVAL = 60.0
    PAUSE = 0.05

    def __init__(self, store, days):
        self.stopping = threading.Event()
        self.pruned = 0
        self.thread = threading.Thread(target=self._run, args=(store, days), daemon=True,
                                       name="usage-pruner")
        self.thread.start()

    def _run(self, store, days):
        wait = 1.0  # the first pass soon after start
        while not self.stopping.wait(wait):
            wait = self.INTERVAL
            while not self.stopping.is_set():
                done = store.prune_rows(days)
                self.pruned += done
                if not done or self.stopping.wait(self.PAUSE):
                    break

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=5)


def open_store(settings):
    """The usage store the settings ask for: SQLite at USAGE_DB_PATH, or PostgreSQL."""
    limits = {"max_sessions": settings.claude_sessions,
              "session_days": settings.claude_session_days,
              "max_conversations": settings.conversations_max,
              "max_responses": settings.responses_max}
    if settings.usage_db_url:
        return PgStore(settings.usage_db_url, settings.usage_db_path,
                       settings.usage_queue_max, **limits)
    return UsageStore(settings.usage_db_path, **limits)


# ----------------------------------------------------------------------------------------
# Conversation model
# ----------------------------------------------------------------------------------------
# Every API dialect translates its requests into these records and renders these events
# back; every backend takes the records and yields the events. A message keeps its parts
# in the order the client sent them.

@dataclasses.dataclass(frozen=True)
class Text:
    text: str


@dataclasses.dataclass(frozen=True)
class Image:
    url: str  # data:image/...;base64,... or http(s)://...


@dataclasses.dataclass(frozen=True)
class ToolCall:
    id: str
    name: str  # as the client named the function
    arguments: str  # a JSON object, as text


@dataclasses.dataclass(frozen=True)
class ToolResult:
    call_id: str
    text: str


_SYSTEM_ROLES = ("system", "developer")


@dataclasses.dataclass(frozen=True)
class Message:
    role: str  # system, developer, user, assistant or tool
    parts: tuple = ()  # Text, Image, ToolCall and ToolResult, in order

    @property
    def text(self):
        return "\n".join(p.text for p in self.parts if isinstance(p, (Text, ToolResult)))

    @property
    def images(self):
        return [p.url for p in self.parts if isinstance(p, Image)]

    @property
    def tool_calls(self):
        return [p for p in self.parts if isinstance(p, ToolCall)]

    @property
    def tool_call_id(self):
        """The call a tool message answers."""
        return next((p.call_id for p in self.parts if isinstance(p, ToolResult)), None)

    @property
    def is_system(self):
        return self.role in _SYSTEM_ROLES

    @property
    def size(self):
        """Bytes it takes to keep, roughly."""
        return 16 + sum(len(p.text.encode("utf-8")) if isinstance(p, (Text, ToolResult)) else
                        len(p.url) if isinstance(p, Image) else len(p.name) + len(p.arguments)
                        for p in self.parts)


def _new_request_id():
    return "chatcmpl-" + secrets.token_hex(12)


@dataclasses.dataclass
class ChatRequest:
    """One validated request, whatever API it came in by."""
    model: str
    messages: list  # of Message, the whole history the client sent
    stream: bool = False
    include_usage: bool = False  # a stream's last chunk carries the usage
    session_id: str = None  # X-Session-ID; its keyed tag once the request is accepted
    params: dict = dataclasses.field(default_factory=dict)  # generation parameters given
    request_id: str = dataclasses.field(default_factory=_new_request_id)
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))
    client_gone: object = _never  # () -> True once the client hung up
    owner: str = ""  # who asks: a hash of the caller's key (its conversations are its own)
    history_digest: str = None  # of the history up to its last reply, when it has one
    recognised: bool = False  # its session was recognised from its history, not a header
    api: str = "chat"  # the dialect it came in by
    echo: dict = dataclasses.field(default_factory=dict)  # what its dialect's reply repeats

    def system(self):
        """The system and developer messages."""
        return [m for m in self.messages if m.is_system]

    def system_text(self):
        """The system messages joined, for the CLI's system prompt."""
        return "\n\n".join(m.text for m in self.messages if m.is_system and m.text)

    def turns(self):
        """The conversation without its system messages."""
        return [m for m in self.messages if not m.is_system]

    def new_turns(self):
        """The messages after the last assistant reply: what a kept session has not seen."""
        turns = self.turns()
        last = max((i for i, m in enumerate(turns) if m.role == "assistant"), default=-1)
        return turns[last + 1:] or turns[-1:]


# A run's events, from backend to dialect.
class Progress(typing.NamedTuple):
    """The backend is alive (resets the idle clock); nothing to send."""


class TextDelta(typing.NamedTuple):
    text: str


class ReasoningDelta(typing.NamedTuple):
    text: str


class ToolCallStart(typing.NamedTuple):
    index: int  # the call's place in this turn, from 0
    id: str
    name: str
    arguments: str = ""  # their first piece (all of them, from a backend that has them)


class ToolCallDelta(typing.NamedTuple):
    index: int
    arguments: str  # the next piece of the JSON text


class Usage(typing.NamedTuple):
    """Token counts so far (a turn cut short is charged these)."""
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


class Retract(typing.NamedTuple):
    """Text sent earlier that the backend voided (the tail so far); a retry follows."""
    text: str


class Final(typing.NamedTuple):
    """The turn ended well."""
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: float
    stop_sequence: str = None  # the stop sequence that ended it, when the backend knows


class Failed(typing.NamedTuple):
    error: Exception  # a BridgeError


PROGRESS = Progress()


# ----------------------------------------------------------------------------------------
# Sessions
# ----------------------------------------------------------------------------------------

class _KeyedLock:
    __slots__ = ("lock", "users")

    def __init__(self):
        self.lock = threading.Lock()
        self.users = 0  # holding or waiting


class KeyedLocks:
    """One lock per key (a session id), dropped when nobody holds or waits for it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._locks = {}  # key -> [lock, users]

    def take_turn(self, session_id, timeout, line=None, gone=_never):
        """Take a session's lock, or RateLimited: turns of one session run one at a time
        (waiting in `line`, if given)."""
        if line is not None:
            taken = line.wait(lambda seconds: self.acquire(session_id, seconds), timeout, gone)
        else:
            taken = self.acquire(session_id, timeout)
        if not taken:
            raise RateLimited(f"Another request of session {session_id!r} is still running; "
                              "send turns of one session one at a time.",
                              headers={"Retry-After": "5"})

    def acquire(self, key, timeout):
        """Take the key's lock; False if it stayed busy for `timeout` seconds."""
        with self._lock:
            entry = self._locks.get(key)
            if entry is None:
                entry = self._locks[key] = _KeyedLock()
            entry.users += 1
        if entry.lock.acquire(timeout=timeout):
            return True
        self._drop(key, entry)
        return False

    def release(self, key):
        """Give the key's lock back."""
        with self._lock:
            entry = self._locks[key]
        entry.lock.release()
        self._drop(key, entry)

    def _drop(self, key, entry):
        with self._lock:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[key]

    def __len__(self):
        return len(self._locks)


# Seconds Ollama's version and model list are reused: /health and /v1/models must not
# become a way to flood it.
_HEALTH_SECONDS = 5


class Cached:
    """A value recomputed at most every `max_age` seconds, by one caller at a time: the
    others wait for that result instead of all computing it at once."""

    def __init__(self, compute, max_age):
        self.compute = compute
        self.max_age = max_age
        self.lock = threading.Lock()
        self.value = None
        self.stamp = 0.0

    def get(self):
        """The value, fresh enough."""
        with self.lock:
            if self.value is None or time.monotonic() - self.stamp >= self.max_age:
                self.value = self.compute()
                self.stamp = time.monotonic()
            return self.value


class WaitLine:
    """Requests waiting for something scarce (a CLI slot, their session's turn). At most
    `size` wait at once, so waiting requests never hold every server thread; a request
    whose client has gone stops waiting at once."""

    def __init__(self, size, setting):
        self.size = size
        self.setting = setting
        self.lock = threading.Lock()
        self.count = 0

    def wait(self, acquire, timeout, gone):
        """True once acquire(seconds) succeeds, False after `timeout`; RateLimited when
        the line is full, ClientGone when the client left while waiting."""
        if acquire(0):
            return True
        with self.lock:
            if self.count >= self.size:
                raise RateLimited(f"{self.count} requests are already waiting ({self.setting}); "
                                  "try again shortly.", headers={"Retry-After": "5"})
            self.count += 1
        try:
            deadline = time.monotonic() + timeout
            while True:
                if gone():
                    raise ClientGone()
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if acquire(min(left, 0.25)):
                    return True
        finally:
            with self.lock:
                self.count -= 1


@dataclasses.dataclass
class _History:
    used: float  # time.monotonic() of the last turn
    system: list = dataclasses.field(default_factory=list)
    messages: list = dataclasses.field(default_factory=list)


def _history_digest(messages, legacy=False, seed=b""):
    """What a client's resent history must match: roles, texts (stripped), images, tool
    call ids and the calls results answer; an assistant's text beside tool calls is left
    out (clients drop it), and legacy function calls, which have no ids, go by name."""
    digest = hashlib.sha256(seed)
    for m in messages:
        calls = [c.name if legacy else c.id for c in m.tool_calls]
        item = ("system" if m.is_system else m.role, "" if calls else m.text.strip(),
                [hashlib.sha256(url.encode()).hexdigest() for url in m.images], calls,
                m.tool_call_id)
        digest.update(_dumps(item).encode("utf-8") + b"\n")
    return digest.hexdigest()


class Conversations:
    """Conversations recognised by the history a client resends (chat UIs send no
    X-Session-ID): after each good turn the keyed digest of the whole history is kept; a
    request whose history up to its last reply matches the latest turn of a conversation
    continues it, one that matches an earlier turn (a regenerated or edited message)
    starts a new one from the client's history. A history that departs from its
    X-Session-ID's latest turn is such a fork too. The digests are keyed by the store's
    secret and the caller's key: no one can guess one, or continue another key's."""

    def __init__(self, store, enabled):
        self.store = store
        self.enabled = enabled

    def _digest(self, chat, messages):
        return _history_digest(messages, seed=self.store.session_key + chat.owner.encode())

    def resolve(self, chat):
        """The request with the session it belongs to, and the digest of its history up to
        its last reply (which its backend checks against what the session holds)."""
        if chat.session_id is None and not self.enabled:
            return chat  # stateless: nothing to match
        answered = max((i + 1 for i, m in enumerate(chat.messages) if m.role == "assistant"),
                       default=0)
        digest = self._digest(chat, chat.messages[:answered]) if answered else None
        chat = dataclasses.replace(chat, history_digest=digest)
        if chat.session_id is not None:
            return chat
        found = self.store.find_turn(digest) if digest else None
        if found is not None and found[1] == found[2]:
            return dataclasses.replace(chat, session_id=found[0], recognised=True)
        return dataclasses.replace(chat, session_id="c" + secrets.token_hex(8),
                                   recognised=True)

    def departs(self, chat, provider):
        """Whether a request's resent history is not what its session's backend holds: a
        reply it never saw (another branch was answered meanwhile, or another backend
        answered the last turn), or an edited message. Checked under the session's turn
        lock; a request that sends only its new messages never departs."""
        if chat.history_digest is None or chat.session_id is None:
            return False
        latest = self.store.latest_turn(chat.session_id)
        return latest is not None and (latest[0] != chat.history_digest or latest[2] != provider)

    def record(self, chat, reply, provider, point=None):
        """A turn ended well: remember its history, the reply included (and where a Claude
        session holds it)."""
        if chat.session_id is None:
            return
        messages = [*chat.messages, reply]
        turn = sum(m.role == "assistant" for m in messages)
        self.store.put_turn(self._digest(chat, messages), chat.session_id, turn, provider,
                            point)


class ChatHistories:
    """Conversations kept in memory per session id, for backends with no store of their
    own (Ollama). Bounded in sessions (least recently used dropped), idle time, and
    messages and bytes per session (oldest turns dropped, the system message kept)."""

    def __init__(self, max_sessions, ttl_seconds, max_messages, max_bytes):
        self.max_sessions = max_sessions
        self.ttl = ttl_seconds
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.locks = KeyedLocks()  # one turn of a session at a time
        self._lock = threading.Lock()  # guards _items only; never held during I/O
        self._items = collections.OrderedDict()  # id -> _History

    def get(self, session_id):
        """(system messages, earlier messages) of a session; empty if unknown or expired."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            item = self._items.get(session_id)
            if item is None:
                return [], []
            item.used = now
            self._items.move_to_end(session_id)
            return list(item.system), list(item.messages)

    def append(self, session_id, system, messages, replace=False):
        """Add a finished turn (or, with `replace`, make it all the session holds);
        `system` replaces the kept system messages when given."""
        now = time.monotonic()
        with self._lock:
            item = self._items.get(session_id)
            if item is None or replace:
                item = self._items[session_id] = _History(now)
            item.used = now
            if system:
                item.system = list(system)
            item.messages.extend(messages)
            self._trim(item)
            self._items.move_to_end(session_id)
            while len(self._items) > self.max_sessions:
                self._items.popitem(last=False)

    def _trim(self, item):
        kept = item.messages
        size = sum(m.size for m in item.system + kept)
        while kept and (len(kept) > self.max_messages or size > self.max_bytes):
            size -= kept.pop(0).size
            # Drop whole turns: never keep a reply or tool result without its question.
            while kept and kept[0].role != "user":
                size -= kept.pop(0).size

    def forget(self, session_id):
        with self._lock:
            self._items.pop(session_id, None)

    def _expire(self, now):
        while self._items:
            session_id, item = next(iter(self._items.items()))
            if now - item.used <= self.ttl:
                break
            del self._items[session_id]

    def __len__(self):
        with self._lock:
            self._expire(time.monotonic())
            return len(self._items)


# ----------------------------------------------------------------------------------------
# Run machinery
# ----------------------------------------------------------------------------------------
# A backend's open(chat) returns a Run: a producer thread turns the backend's output into
# the conversation model's events on a queue, so the HTTP side can wait with a timeout
# (heartbeats, disconnects, idle limits) whatever the backend is.

class Backend:
    """What the bridge needs of a backend. The bridge keeps a list of them: a request goes
    to the first whose matches() takes its model (the last one, Claude, takes the rest), and
    /v1/models, /health, /metrics, the usage API's provider filter, the start-up banner
    and shutdown loop over the list. A new backend is a subclass and its settings."""

    provider = None  # its name in usage rows, /health and the usage API's filter

    def matches(self, model):
        """Whether this backend serves `model` (a name that passed the common rule)."""
        raise NotImplementedError

    def open(self, chat):
        """A Run for the request, not yet started; InvalidRequest (say, a model name this
        backend cannot take) before anything is sent."""
        raise NotImplementedError

    def models(self):
        """OpenAI model objects for /v1/models."""
        return []

    def health(self):
        """{"ok": bool, ...} for /health: cheap, so probes are cached."""
        return {"ok": True}

    def ignored(self, chat):
        """Names of the request's parameters this backend cannot honour (they are then
        named in X-Bridge-Ignored-Params, or refused under STRICT_PARAMS)."""
        return [name for name in chat.params if name in self.unsupported]

    unsupported = frozenset()  # ... by default, these

    def gauges(self):
        """(metric name, help, value) for /metrics."""
        return ()

    def describe(self):
        """A few words for the start-up banner."""
        return self.provider

    def listening(self, url):
        """The bridge's own base URL, once it listens (for backends that call back)."""

    def draining(self):
        """The bridge is stopping: end what waits on clients that may never come back."""

    def forget(self, session_id):
        """Drop what the backend keeps for a session (DELETE /v1/sessions/{id})."""

    def embed(self, request):
        """Embedded vectors of an EmbeddingRequest, or InvalidRequest if it has none."""
        raise InvalidRequest(f"{request.model[:80]!r} has no embeddings (a {self.provider} "
                             "model); use an Ollama embedding model, e.g. "
                             "'ollama/nomic-embed-text'.", param="model",
                             code="embeddings_not_supported")

    def shutdown(self):
        """End whatever the backend still runs."""

_END = object()


class Workers:
    """Reusable daemon threads: each job gets a thread at once, without a thread start
    per request once the pool is warm (and each thread keeps its own HTTP session)."""

    # Idle threads kept for the next burst; the rest exit after their job.
    IDLE_MAX = 64

    def __init__(self):
        self._jobs = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0

    def submit(self, job):
        """Run job() on a worker thread."""
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        self._jobs.put(job)
        if spawn:
            threading.Thread(target=self._work, daemon=True, name="bridge-worker").start()

    def _work(self):
        while True:
            job = self._jobs.get()
            try:
                job()
            except Exception:  # a job's bug must not kill the pool
                _LOG.exception("worker job failed")
            with self._lock:
                if self._idle >= self.IDLE_MAX:
                    return
                self._idle += 1



class Run:
    """One backend turn: events from a producer thread, cancel() to stop it early."""

    timeout = 600.0  # seconds for the whole turn ...
    idle_timeout = 600.0  # ... and without any sign of life
    timeout_setting = idle_setting = "the limit"  # named in timeout messages
    # Inline runs produce in the request's own thread: no handoff, but no heartbeats or
    # disconnect checks while the backend is silent (its own read timeout bounds that).
    inline = False

    def __init__(self, workers):
        self._workers = workers
        self._events = queue.SimpleQueue()
        self._cancelled = threading.Event()
        self._done = False  # the producer delivered Final: let it finish in peace
        self._finished = None  # set when the producer has returned
        self._inline = None  # the events, when produced in the caller's thread
        self.usage = None  # the latest Usage event, for turns cut short

    def start(self):
        """Start the producer on a worker thread (or inline)."""
        if self.inline:
            self._inline = self._safe_events()
            return self
        self._finished = threading.Event()
        self._workers.submit(self._pump)
        return self

    def _safe_events(self):
        """produce()'s events, its exceptions as Failed events, then _END."""
        try:
            # Iterate to the end even after Final: the producer reaps its process there.
            for event in self.produce():
                if isinstance(event, Final):
                    self._done = True
                elif isinstance(event, Usage):
                    self.usage = event
                yield event
        except BridgeError as exc:
            yield Failed(exc)
        except Exception:  # a bug must still end the request cleanly
            _LOG.exception("backend crashed")  # the traceback is for the log only
            yield Failed(BackendFailed("The backend failed inside the bridge (a bug); the "
                                       "bridge's log has the details."))
        yield _END

    def _pump(self):
        try:
            for event in self._safe_events():
                self._events.put(event)
        finally:
            self._finished.set()

    def produce(self):
        """Yield events; runs in the producer thread."""
        raise NotImplementedError

    def get(self, timeout):
        """The next event, None after `timeout` seconds, or _END."""
        if self._inline is not None:
            return next(self._inline, _END)
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return None

    def cancel(self):
        """Stop the turn (idempotent)."""
        self._cancelled.set()

    def close(self):
        """Release everything the run holds; a run still going is cancelled first."""
        if self._inline is not None:
            self._inline.close()  # runs the producer's finally blocks
        if self._finished is not None and self._done:
            # After a good reply the backend gets a moment to exit on its own (the CLI
            # writes its session file as it ends).
            self._finished.wait(timeout=_KILL_GRACE_SECONDS + 1)
        self.cancel()
        if self._finished is not None:
            self._finished.wait(timeout=10)


def _dumps(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


_DATA_URL = re.compile(r"^data:(image/[A-Za-z0-9.+-]+);base64,(.*)\Z", re.S)


def _data_url(url, param):
    """(media type, base64 data) of a `data:image/...;base64,` URL; None for other URLs."""
    match = _DATA_URL.match(url)
    if match is None:
        return None
    data = re.sub(r"\s+", "", match.group(2))
    try:
        base64.b64decode(data, validate=True)
    except ValueError:  # binascii.Error, or a str with non-ASCII characters
        raise InvalidRequest("The image's base64 data is not valid.", param=param) from None
    return match.group(1), data


_TICK = object()  # a heartbeat is due


def _events_with_housekeeping(run, environ, heartbeat):
    """The run's events to pass on, and _TICK when a heartbeat is due; enforces timeouts;
    raises a Failed event's error."""
    started = last_event = last_beat = time.monotonic()
    disconnected = environ.get("waitress.client_disconnected")
    tick = min(1.0, heartbeat)
    while True:
        event = run.get(tick)
        now = time.monotonic()
        if event is _END:
            if disconnected is not None and disconnected():
                raise ClientGone()
            raise BackendFailed("the backend ended without a result")
        if event is None:
            if disconnected is not None and disconnected():
                raise ClientGone()
            if now - started > run.timeout:
                raise BackendTimeout(f"the request took longer than {run.timeout:g} s "
                                     f"({run.timeout_setting})")
            if now - last_event > run.idle_timeout:
                raise BackendTimeout(f"the backend sent nothing for {run.idle_timeout:g} s "
                                     f"({run.idle_setting})")
            if now - last_beat >= heartbeat:
                last_beat = now
                yield _TICK
            continue
        last_event = now
        if isinstance(event, (Progress, Usage)):
            continue
        if isinstance(event, Failed):
            raise event.error
        yield event
        if isinstance(event, Final):
            return


class Assembly:
    """One turn's events, as a client is sent them: the text, reasoning and tool calls of
    a JSON reply, or the pieces of a stream, and the turn's Final.

    A backend may void text it already produced (Retract, then a retry). A JSON reply
    simply drops it. A stream cannot unsend it: when the retried answer starts with the
    voided text, only the rest is sent; when it differs, the client gets the voided text
    followed by the whole retried answer."""

    def __init__(self):
        self.parts = []  # the JSON reply's text
        self.reasoning = []
        self.calls = {}  # index -> [id, name, argument pieces]
        self.final = None
        self.void_left = ""  # voided text the retry has not repeated yet
        self.held = ""  # retry text held back because it repeats voided text

    def text(self):
        """The JSON reply's text."""
        return "".join(self.parts)

    def message(self):
        """The reply as a Message, as the client will send it back."""
        return Message("assistant", (Text(self.text()), *self.tool_calls()))

    def tool_calls(self):
        """The turn's tool calls, in order."""
        return [ToolCall(call_id, name, "".join(args))
                for _, (call_id, name, args) in sorted(self.calls.items())]

    def feed(self, event):
        """Take one event; the events to stream for it."""
        if isinstance(event, TextDelta):
            self.parts.append(event.text)
            text = self._unrepeated(event.text)
            return [TextDelta(text)] if text else []
        if isinstance(event, ReasoningDelta):
            self.reasoning.append(event.text)
        elif isinstance(event, ToolCallStart):
            self.calls[event.index] = [event.id, event.name, [event.arguments]]
        elif isinstance(event, ToolCallDelta):
            self.calls[event.index][2].append(event.arguments)
        elif isinstance(event, Retract):
            text = self.text()
            if text.endswith(event.text):
                self.parts = [text[:len(text) - len(event.text)]]
            self.void_left, self.held = self.void_left + event.text, ""
            return []
        elif isinstance(event, Final):
            self.final = event
            return []
        else:
            return []
        return [event]

    def _unrepeated(self, text):
        if not self.void_left:
            return text
        n = len(os.path.commonprefix([self.void_left, text]))
        if n == len(text):  # all of it repeats what was voided: hold it back
            self.void_left, self.held = self.void_left[n:], self.held + text
            return ""
        if n == len(self.void_left):  # the repeat is complete: the rest is new
            self.void_left, self.held = "", ""
            return text[n:]
        text, self.void_left, self.held = self.held + text, "", ""  # a different answer
        return text


# ----------------------------------------------------------------------------------------
# Backend: Claude
# ----------------------------------------------------------------------------------------

# How long a signalled CLI gets to exit before SIGKILL.
_KILL_GRACE_SECONDS = 2.0
# stderr kept per CLI for error messages (the rest is drained and dropped).
_STDERR_KEEP_BYTES = 64 * 1024


class PrivateFiles:
    """Files only this user can read (a 0700 folder made on first use, each file 0600):
    how system prompts reach the CLI without appearing in its argv."""

    def __init__(self, prefix):
        self.prefix = prefix
        self.folder = None
        self.lock = threading.Lock()

    def where(self):
        """The folder (made now if need be)."""
        import tempfile
        with self.lock:
            if self.folder is None:
                self.folder = tempfile.mkdtemp(prefix=self.prefix)
            return self.folder

    def write(self, text):
        """A new file holding `text`; its path."""
        path = os.path.join(self.where(), uuid.uuid4().hex)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
        return path

    def remove(self, path):
        """Remove a file made by write() (None: nothing to do)."""
        if path is not None:
            try:
                os.unlink(path)
            except OSError:
                pass

    def close(self):
        """Remove the folder and whatever is left in it."""
        with self.lock:
            folder, self.folder = self.folder, None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


# The reaper: reads "+PGID" / "-PGID" lines until EOF, which comes when the bridge is gone
# however it ended (its write end closes with its last descriptor); then ends the groups
# still listed, TERM first, KILL after 2 s, and removes the bridge's private folder.
_REAPER_CODE = """
import os, shutil, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
groups = set()
for line in sys.stdin:
    (groups.add if line[0] == "+" else groups.discard)(int(line[1:]))
for sig in (signal.SIGTERM, signal.SIGKILL):
    for pgid in list(groups):
        try:
            os.killpg(pgid, sig)
        except OSError:
            groups.discard(pgid)
    end = time.monotonic() + 2
    while groups and sig == signal.SIGTERM and time.monotonic() < end:
        time.sleep(0.05)
        for pgid in list(groups):
            try:
                os.killpg(pgid, 0)
            except OSError:
                groups.discard(pgid)
shutil.rmtree(sys.argv[1], ignore_errors=True)
"""


class Reaper:
    """A watchdog process that outlives the bridge by a moment: if the bridge dies without
    ending its CLIs (kill -9, a crash), the watchdog ends their process groups, children
    included (the CLI itself would not stop: it ignores EOF on stdin mid-turn). Started
    with the first CLI; costs one small Python process."""

    def __init__(self, files):
        self.files = files
        self.lock = threading.Lock()
        self.proc = None
        self.groups = set()

    def watch(self, pgid):
        """End this process group if the bridge dies."""
        self._send(pgid, "+")

    def forget(self, pgid):
        """The group has been ended by the bridge itself."""
        self._send(pgid, "-")

    def _send(self, pgid, op):
        with self.lock:
            (self.groups.add if op == "+" else self.groups.discard)(pgid)
            for attempt in range(2):
                try:
                    if self.proc is None or self.proc.poll() is not None:
                        self._start()  # first use, or it died: it learns every group
                    else:
                        self.proc.stdin.write(f"{op}{pgid}\n".encode())
                    self.proc.stdin.flush()
                    return
                except OSError as exc:
                    if attempt:
                        _LOG.error("the CLI reaper cannot run: %s", exc)
                    self.proc = None

    def _start(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _REAPER_CODE, self.files.where()],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)  # not in the terminal's group: Ctrl-C is the bridge's
        self.proc.stdin.write("".join(f"+{g}\n" for g in self.groups).encode())

    def close(self):
        """The bridge ended its CLIs itself: let the reaper go."""
        with self.lock:
            proc, self.proc = self.proc, None
            self.groups.clear()
        if proc is not None:
            try:
                proc.stdin.close()
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()


def _kill_group(proc):
    """SIGTERM the process group, SIGKILL after a grace period, and reap the leader."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=_KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            pass
    # Sweep the group even after the leader exited: tools it started must not outlive it.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        _LOG.error("claude pid %s did not exit after SIGKILL", proc.pid)


class CliSpec(typing.NamedTuple):
    """What a CLI is started with: a warm or kept CLI serves a request only if they match."""
    model: str
    system: str
    effort: str = None  # --effort
    max_tokens: int = None  # CLAUDE_CODE_MAX_OUTPUT_TOKENS
    json_schema: str = None  # JSON text, for --json-schema's stream-json equivalent
    tools: object = None  # the ToolBroker serving the client's functions


# OpenAI's reasoning_effort -> the CLI's --effort.
_EFFORTS = {"none": "low", "minimal": "low", "low": "low", "medium": "medium",
            "high": "high", "xhigh": "xhigh"}


def _write_line(proc, line):
    """One line to a CLI's stdin; a CLI that already died tells why by its exit."""
    try:
        proc.stdin.write(line.encode("utf-8") + b"\n")
        proc.stdin.flush()
    except (BrokenPipeError, OSError, ValueError):
        pass


class ClaudeBackend(Backend):
    """Runs `claude -p` per request, stream-json out, prompt on stdin. It serves every
    model name no other backend takes (`claude-code` = the CLI's own default)."""

    provider = "claude"
    aliases = ("sonnet", "opus", "haiku")
    unsupported = frozenset(("temperature", "top_p", "seed", "presence_penalty",
                             "frequency_penalty", "logprobs", "top_logprobs", "logit_bias"))

    def __init__(self, settings, store, workers, conversations):
        self.settings = settings
        self.store = store
        self.workers = workers
        self.workdir = os.path.abspath(settings.claude_workdir or os.getcwd())
        self.slots = threading.BoundedSemaphore(settings.claude_max_concurrency)
        self.line = WaitLine(settings.claude_queue_max, "CLAUDE_QUEUE_MAX")
        self.session_locks = KeyedLocks()
        # Not the bridge's own secrets, and not CLAUDECODE (the CLI refuses to nest).
        self.env = {k: v for k, v in os.environ.items()
                    if k != "CLAUDECODE" and k not in SECRET_SETTINGS}
        self.files = PrivateFiles("claude-bridge-")
        self.reaper = Reaper(self.files)
        self.procs = set()  # live CLI processes, for shutdown
        self.procs_lock = threading.Lock()
        self.started = int(time.time())  # the `created` of its model objects
        self._health = Cached(self._probe, 60)
        self.pool = WarmPool(self, settings.claude_warm_pool, settings.claude_warm_keys)
        self.live = LiveSessions(self, settings.claude_session_keepalive)
        self.conversations = conversations  # whether a resent history is what it holds
        self.held = HeldRuns(self, settings.claude_tool_wait)
        self.brokers = {}  # MCP path token -> the ToolBroker of a running CLI
        self.mcp_url = None  # where CLIs reach the bridge's MCP endpoint, once it listens

    def listening(self, url):
        self.mcp_url = url.rstrip("/") + "/mcp/"

    def draining(self):
        self.held.shutdown()  # their MCP calls would hold the drain to its end

    def forget(self, session_id):
        self.live.forget(session_id)

    def idle_room(self, idle):
        """Whether one more warm or kept CLI fits beside `idle` ones (CLAUDE_IDLE_MAX)."""
        return idle < self.settings.claude_idle_max

    def binary(self):
        """Absolute path of the CLI, or raise BackendUnavailable saying how to get it."""
        name = self.settings.claude_bin or "claude"
        path = shutil.which(name)
        if path is None:
            where = f"CLAUDE_BIN={name}" if self.settings.claude_bin else "PATH"
            raise BackendUnavailable(
                f"The Claude Code CLI was not found ({where}). Install it with "
                "`npm install -g @anthropic-ai/claude-code` and log in with `claude`, "
                "or set CLAUDE_BIN to its path.", code="claude_not_found")
        return path

    def matches(self, model):
        return True

    def models(self):
        names = ["claude-code", *self.aliases, *self.settings.model_aliases]
        if self.settings.claude_default_model not in names:
            names.append(self.settings.claude_default_model)
        return [{"id": name, "object": "model", "created": self.started,
                 "owned_by": "anthropic"} for name in names]

    def gauges(self):
        with self.procs_lock:
            running = len(self.procs)
        warm, live, held = self.pool.count(), self.live.count(), self.held.count()
        return (("bridge_claude_processes_running", "CLIs answering a request now.",
                 max(0, running - warm - live - held)),
                ("bridge_claude_processes_warm", "Pre-started CLIs waiting for a request.",
                 warm),
                ("bridge_claude_processes_kept", "Session CLIs kept between turns.", live),
                ("bridge_claude_processes_holding_tool_calls", "CLIs waiting for the client's "
                 "tool results (CLAUDE_TOOL_WAIT).", self.held.count()),
                ("bridge_claude_requests_waiting", "Requests waiting for a CLI slot or their "
                 "session's turn (CLAUDE_QUEUE_MAX).", self.line.count))

    def describe(self):
        state = self.health()
        words = [state["version"] or state["error"]]
        if state["version"] and not state["logged_in"]:
            words.append("NOT LOGGED IN")
        if state["warning"]:
            words.append(f"WARNING: {state['warning']}")
        return "claude: " + ", ".join(words)

    def health(self):
        """Binary and version, cached for a minute so probes never pay a CLI start."""
        return self._health.get()

    def _probe(self):
        """The CLI's version, and whether it has credentials: `claude auth status` looks
        at them without a call to the API (so an expired login still looks fine)."""
        state = {"ok": False, "binary": None, "version": None, "logged_in": None,
                 "warning": None, "error": None}
        try:
            state["binary"] = self.binary()
            code, text, err = self._run_cli(state["binary"], "--version")
            if code != 0 or not text:
                state["error"] = f"`claude --version` exited {code}: {(err or text)[:300]}"
                return state
            state["version"] = text.splitlines()[0]
            if _version(state["version"]) < _OLDEST_TESTED:
                state["warning"] = (f"CLI {state['version']} is older than "
                                    f"{'.'.join(map(str, _OLDEST_TESTED))}, the oldest tested")
            code, text, err = self._run_cli(state["binary"], "auth", "status", "--json")
            try:
                state["logged_in"] = bool(json.loads(text).get("loggedIn"))
            except (ValueError, AttributeError):
                state["logged_in"] = code == 0
            state["ok"] = state["logged_in"]
            if not state["ok"]:
                state["error"] = "the CLI is not logged in" + _LOGIN_HINT
        except BackendUnavailable as exc:
            state["error"] = exc.message
        except (OSError, subprocess.SubprocessError) as exc:
            state["error"] = f"cannot run {state['binary']}: {exc}"
        return state

    def _run_cli(self, binary, *args):
        """(exit code, stdout, stderr) of a quick CLI command."""
        out = subprocess.run([binary, *args], capture_output=True, timeout=15,
                             stdin=subprocess.DEVNULL, env=self.env, cwd=self.workdir)
        return (out.returncode, out.stdout.decode("utf-8", "replace").strip(),
                out.stderr.decode("utf-8", "replace").strip())

    def open(self, chat):
        if chat.model != "claude-code" and not _MODEL_NAME.match(chat.model):
            raise bad_model(chat.model, "up to 200 letters, digits and . _ - : [ ]")
        for k, tool in enumerate(chat.params.get("tools") or ()):
            if not _FUNCTION_NAME.match(tool["function"]["name"]):
                raise InvalidRequest("A function name must be 1 to 64 letters, digits, _ or "
                                     "-.", param=f"tools[{k}].function.name")
        return ClaudeRun(self, chat)

    def spec(self, chat):
        """The CliSpec a request needs."""
        params = chat.params
        limit = params.get("max_completion_tokens", params.get("max_tokens"))
        fmt = params.get("response_format") or {}
        schema = {"json_object": {"type": "object"},
                  "json_schema": (fmt.get("json_schema") or {}).get("schema")
                  or {"type": "object"}}.get(fmt.get("type"))
        return CliSpec(self.settings.model_aliases.get(chat.model, chat.model),
                       chat.system_text(), _EFFORTS.get(params.get("reasoning_effort")),
                       limit, schema and _dumps(schema))

    def argv(self, binary, spec, system_file, session_flags):
        """The CLI's argv: only flags and values the bridge checked, never the prompt, the
        system prompt or a schema (any local user can read argv in /proc/PID/cmdline)."""
        argv = [binary, "-p", "--input-format", "stream-json", "--output-format", "stream-json",
                "--verbose", "--include-partial-messages"]
        if spec.model != "claude-code":
            argv.append("--model=" + spec.model)
        if spec.effort:
            argv.append("--effort=" + spec.effort)
        if spec.tools is not None:
            # The tools' names are request data: they reach the CLI over MCP, not argv.
            argv += ["--mcp-config", spec.tools.config_file, "--strict-mcp-config",
                     "--allowedTools", "mcp__client"]
            if not self.settings.claude_tools_with_client_tools:
                argv += ["--tools", ""]
        if system_file:
            flag = ("--system-prompt-file=" if self.settings.claude_system_prompt == "replace"
                    else "--append-system-prompt-file=")
            argv.append(flag + system_file)
        if self.settings.claude_skip_perms:
            argv.append("--dangerously-skip-permissions")
        argv.extend(session_flags)
        return argv

    def spawn(self, binary, spec, session_flags):
        """Start a CLI in its own process group (so the whole group can be signalled),
        known to the reaper; its system prompt goes in a private file, removed at reap,
        and a JSON schema in the stream-json `initialize` request."""
        system_file = self.files.write(spec.system) if spec.system else None
        env = self.env
        if spec.max_tokens:
            env = {**env, "CLAUDE_CODE_MAX_OUTPUT_TOKENS": str(spec.max_tokens)}
        if spec.tools is not None:
            env = {**env, "MCP_TOOL_TIMEOUT": str(int(spec.tools.wait + 60) * 1000)}
            spec.tools.config_file = self.files.write(_dumps({"mcpServers": {"client": {
                "type": "http", "url": self.mcp_url + spec.tools.token,
                "headers": {"Authorization": "Bearer " + self.settings.claude_auth_key}
                if self.settings.claude_auth_key else {}}}}))
            self.brokers[spec.tools.token] = spec.tools
        argv = self.argv(binary, spec, system_file, session_flags)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, cwd=self.workdir, env=env,
                                    start_new_session=True)
        except OSError as exc:
            self.files.remove(system_file)
            if isinstance(exc, FileNotFoundError):
                raise BackendUnavailable(f"cannot run {binary}: not found. Install the CLI "
                                         "or fix CLAUDE_BIN.", code="claude_not_found") from None
            raise BackendUnavailable(f"cannot run {binary}: {exc}. Check CLAUDE_BIN and "
                                     "CLAUDE_WORKDIR.") from None
        proc.system_file = system_file
        proc.tools, proc.json_schema, proc.max_tokens = spec.tools, spec.json_schema, \
            spec.max_tokens
        if spec.json_schema:
            _write_line(proc, '{"type":"control_request","request_id":"init","request":'
                              '{"subtype":"initialize","jsonSchema":%s}}' % spec.json_schema)
        self.reaper.watch(proc.pid)
        with self.procs_lock:
            self.procs.add(proc)
        return proc

    def reap(self, proc):
        """End a CLI's process group and forget it."""
        _kill_group(proc)
        self.reaper.forget(proc.pid)
        self.files.remove(getattr(proc, "system_file", None))
        tools = getattr(proc, "tools", None)
        if tools is not None:
            tools.close()
            self.files.remove(tools.config_file)
            self.brokers.pop(tools.token, None)
        with self.procs_lock:
            self.procs.discard(proc)

    def shutdown(self):
        """End every CLI still running, warm and live ones included."""
        self.pool.shutdown()
        self.live.shutdown()
        self.held.shutdown()
        with self.procs_lock:
            procs = list(self.procs)
        for proc in procs:
            self.reap(proc)
        self.reaper.close()
        self.files.close()

    def acquire_slot(self, timeout, gone=_never):
        """A CLI slot: a free one, else one an idle warm CLI gives up, else wait in line."""
        if self.slots.acquire(blocking=False):
            return True
        # Idle CLIs give way first; then the run held longest for a client's tool results
        # (those results, if they come, start a new run from the history).
        self.pool.evict_one() or self.live.evict_one() or self.held.evict_one()
        return self.line.wait(lambda seconds: self.slots.acquire(timeout=seconds),
                              timeout, gone)


# A warm CLI older than this is replaced rather than used (it may hold stale state).
_WARM_MAX_AGE_SECONDS = 600


class Cli(typing.NamedTuple):
    """A started CLI waiting for its next message, and what it holds."""
    proc: subprocess.Popen
    stderr: object  # its _StderrTail
    since: float  # time.monotonic() when it started, or last answered
    claude_uuid: str = None  # the session it continues (a kept session CLI)
    key: tuple = None  # the (model, system prompt) it was started with


class IdleClis:
    """Running CLIs kept by key for a request still to come, oldest first: each holds a
    CLAUDE_MAX_CONCURRENCY slot (given up when a request needs it) and ends after
    `seconds` unused. Subclasses say how to end one (`_discard`)."""

    label = "idle"

    def __init__(self, backend, seconds):
        self.backend = backend
        self.seconds = seconds
        self.lock = threading.Lock()
        self.items = collections.OrderedDict()  # key -> an entry with .proc and .since
        self.reaper = None
        self.closed = threading.Event()

    def _put(self, key, entry):
        with self.lock:
            if self.closed.is_set():
                old = entry
            else:
                old = self.items.pop(key, None)
                self.items[key] = entry
                if self.reaper is None:
                    self.reaper = threading.Thread(target=self._expire_loop, daemon=True,
                                                   name=f"claude-{self.label}-reaper")
                    self.reaper.start()
        if old is not None:
            self._discard(old)

    def _expire_loop(self):
        tick = max(0.05, min(self.seconds / 4, 5.0))
        while not self.closed.wait(tick):
            now = time.monotonic()
            with self.lock:
                expired = [k for k, e in self.items.items() if now - e.since > self.seconds]
                entries = [self.items.pop(k) for k in expired]
            for entry in entries:
                self._discard(entry)

    def forget(self, key):
        with self.lock:
            entry = self.items.pop(key, None)
        if entry is not None:
            self._discard(entry)

    def evict_one(self):
        """End the one unused longest, freeing its slot; False if none."""
        with self.lock:
            if not self.items:
                return False
            _, entry = self.items.popitem(last=False)
        self._discard(entry)
        return True

    def _discard(self, entry):
        raise NotImplementedError

    def count(self):
        with self.lock:
            return len(self.items)

    def shutdown(self):
        """End every one."""
        with self.lock:
            self.closed.set()
            entries = list(self.items.values())
            self.items.clear()
        for entry in entries:
            self._discard(entry)


class LiveSessions(IdleClis):
    """Session CLIs left running between turns (stdin open, waiting for the next message),
    so a session's next turn is one more line instead of a `--resume` start; after
    CLAUDE_SESSION_KEEPALIVE idle seconds (or a restart) turns `--resume`."""

    label = "live"

    @property
    def keepalive(self):
        return self.seconds

    def take(self, client_id, claude_uuid, key):
        """The session's running CLI (and its slot) if it is the one to continue."""
        with self.lock:
            entry = self.items.pop(client_id, None)
        if entry is None:
            return None
        if entry.claude_uuid == claude_uuid and entry.key == key and entry.proc.poll() is None:
            return entry
        self._discard(entry)  # other flags now, or gone: the turn resumes instead
        return None

    def park(self, client_id, proc, tail, claude_uuid, key):
        """Keep a CLI that just answered a turn well, for the session's next turn (a warm
        CLI, else the least recently kept one, makes room under CLAUDE_IDLE_MAX)."""
        entry = Cli(proc, tail, time.monotonic(), claude_uuid, key)
        backend = self.backend
        while not backend.idle_room(backend.pool.count() + self.count()) and \
                (backend.pool.evict_one() or self.evict_one()):
            pass
        if not backend.idle_room(backend.pool.count() + self.count()):
            self._discard(entry)  # CLAUDE_IDLE_MAX=0: never kept
            return
        self._put(client_id, entry)

    def _discard(self, entry):
        proc = entry.proc
        try:
            proc.stdin.close()  # EOF: the CLI finishes its session file and exits
            proc.wait(timeout=_KILL_GRACE_SECONDS)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.backend.reap(proc)
        self.backend.slots.release()


class WarmPool:
    """Pre-started stateless CLIs in `--input-format stream-json` mode, waiting for their
    first message, keyed by everything fixed at start (model, system prompt). Each serves
    one request and is then ended; the pool refills in the background. Every warm CLI
    holds one of the CLAUDE_MAX_CONCURRENCY slots, and gives it up when a request needs
    it."""

    # Keys whose uses are counted (least recently used forgotten).
    SEEN_MAX = 256

    def __init__(self, backend, size, max_keys):
        self.backend = backend
        self.size = size
        self.max_keys = max_keys
        settings = backend.settings
        self.models, self.after = settings.claude_warm_models, settings.claude_warm_after
        self.sessions = settings.recognise_conversations
        self.seen = collections.OrderedDict()  # key -> requests that used it
        self.lock = threading.Lock()
        self.idle = collections.OrderedDict()  # key -> [Cli]
        self.starting = collections.Counter()  # key -> CLIs being started for it
        self.closed = False

    def take(self, key):
        """An idle warm CLI for key (its slot comes with it), or None."""
        if not self.size:
            return None
        while True:
            with self.lock:
                entries = self.idle.get(key)
                if not entries:
                    return None
                entry = entries.pop(0)
                self.idle.move_to_end(key)
            if entry.proc.poll() is None and \
                    time.monotonic() - entry.since < _WARM_MAX_AGE_SECONDS:
                return entry
            self._discard(entry)  # died or too old: never hand it out

    def take_for_session(self, key):
        """A warm CLI that started a session of its own, or None."""
        return self.take(key) if self.sessions else None

    def want(self, key):
        """A request used key: fill its place in the pool in the background, if it is a
        configured model's (with no system prompt) or was used often enough."""
        if not self.size or self.closed:
            return
        with self.lock:
            uses = self.seen.pop(key, 0) + 1
            self.seen[key] = uses
            if len(self.seen) > self.SEEN_MAX:
                self.seen.popitem(last=False)
        if uses >= self.after or (key.model in self.models and not key.system):
            self.backend.workers.submit(lambda: self._fill(key))

    def _fill(self, key):
        while not self.closed:
            with self.lock:
                # CLIs still starting count too: two refills must not both start one.
                if len(self.idle.get(key, ())) + self.starting[key] >= self.size:
                    return
                idle = self.count_locked() + sum(self.starting.values())
                if not self.backend.idle_room(idle + self.backend.live.count()):
                    return  # CLAUDE_IDLE_MAX: kept session CLIs come first
                if not self.backend.slots.acquire(blocking=False):
                    return
                self.starting[key] += 1
            # With conversations recognised, every first turn starts a session: a warm CLI
            # starts its own, so that it can serve one.
            claude_uuid = str(uuid.uuid4()) if self.sessions else None
            try:
                proc = self.backend.spawn(self.backend.binary(), key,
                                          ["--session-id", claude_uuid] if claude_uuid
                                          else ["--no-session-persistence"])
            except BridgeError:
                self.backend.slots.release()
                with self.lock:
                    self.starting[key] -= 1
                return
            entry = Cli(proc, _StderrTail(proc.stderr), time.monotonic(), claude_uuid)
            dropped = []
            with self.lock:
                self.starting[key] -= 1
                if not self.starting[key]:
                    del self.starting[key]
                if self.closed:
                    dropped.append(entry)
                else:
                    self.idle.setdefault(key, []).append(entry)
                    self.idle.move_to_end(key)
                    while len(self.idle) > self.max_keys:
                        dropped.extend(self.idle.popitem(last=False)[1])
            for old in dropped:
                self._discard(old)

    def evict_one(self):
        """End the least recently used idle warm CLI, freeing its slot; False if none."""
        with self.lock:
            for key, entries in self.idle.items():
                if entries:
                    entry = entries.pop(0)
                    break
            else:
                return False
        self._discard(entry)
        return True

    def _discard(self, entry):
        self.backend.reap(entry.proc)
        self.backend.slots.release()

    def count(self):
        """Idle warm CLIs."""
        with self.lock:
            return self.count_locked()

    def count_locked(self):
        return sum(len(v) for v in self.idle.values())

    def shutdown(self):
        """End every idle warm CLI."""
        with self.lock:
            self.closed = True
            entries = [e for v in self.idle.values() for e in v]
            self.idle.clear()
        for entry in entries:
            self._discard(entry)


class _StderrTail:
    """Drains a pipe in a thread, keeping only its last bytes."""

    def __init__(self, pipe):
        self.data = bytearray()
        self.thread = threading.Thread(target=self._drain, args=(pipe,), daemon=True,
                                       name="claude-stderr")
        self.thread.start()

    def _drain(self, pipe):
        try:
            while True:
                chunk = pipe.read1(65536)
                if not chunk:
                    break
                self.data += chunk
                if len(self.data) > _STDERR_KEEP_BYTES:
                    del self.data[:-_STDERR_KEEP_BYTES]
        except (OSError, ValueError):
            pass

    def text(self):
        """What the CLI printed last, decoded, once the pipe is closed."""
        self.thread.join(timeout=2)
        return bytes(self.data).decode("utf-8", "replace").strip()


def _claude_usage(usage):
    """Anthropic usage -> (prompt, completion, cached) the OpenAI way."""
    usage = usage or {}
    cached = int(usage.get("cache_read_input_tokens") or 0)
    prompt = (int(usage.get("input_tokens") or 0)
              + int(usage.get("cache_creation_input_tokens") or 0) + cached)
    return prompt, int(usage.get("output_tokens") or 0), cached


_NO_CONVERSATION = "No conversation found"
# What a resume that found nothing to resume says (the session, or the message to fork at).
_GONE = (_NO_CONVERSATION, "No message found with message.uuid")
# From this version on, a resumed run's total_cost_usd is the session's total so far;
# up to 2.1.276, the run's own (bisected over the published versions, fake API).
_CUMULATIVE_COST_SINCE = (2, 1, 277)
# The oldest CLI the tests run (what npm installs on Node 20); older ones get a warning.
_OLDEST_TESTED = (2, 1, 197)
_RETRY_AFTER = re.compile(r"retry[- ]after\D{0,20}(\d{1,5})|try again in (\d{1,5}) ?s", re.I)
_LOGIN_HINT = (" (the bridge runs the CLI as its own user: log that user in with `claude`, "
               "or give the bridge ANTHROPIC_API_KEY)")


def _version(text):
    """(2, 1, 197) from "2.1.197 (Claude Code)"; () when there is none."""
    match = re.match(r"\s*(\d+)\.(\d+)\.(\d+)", text or "")
    return tuple(int(n) for n in match.groups()) if match else ()


def _cli_error(message, api_status):
    """The error a failed CLI run answers: upstream limits keep their meaning (and a
    Retry-After, so SDKs wait instead of starting the CLI again at once)."""
    match = _RETRY_AFTER.search(message)
    wait = next((g for g in match.groups() if g), None) if match else None
    if api_status == 429 or "rate limit" in message.lower():
        return RateLimited(message, code="upstream_rate_limited",
                           headers={"Retry-After": wait or "30"})
    if api_status == 529 or "overloaded" in message.lower():
        return BackendUnavailable(message, code="upstream_overloaded",
                                  headers={"Retry-After": wait or "15"})
    if api_status in (401, 403) or "/login" in message or "API key" in message:
        return BackendFailed(message + _LOGIN_HINT, code="claude_not_logged_in")
    return BackendFailed(message)
def _claude_image(url, param):
    """An OpenAI image URL as an Anthropic image content block."""
    inline = _data_url(url, param)
    if inline:
        media_type, data = inline
        return {"type": "image", "source": {"type": "base64", "media_type": media_type,
                                            "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequest("An image URL must be 'data:image/...;base64,...' or http(s).",
                         param=param)


def _render(msg, names):
    """A message as prompt text; `names` maps tool call ids to function names."""
    text = msg.text
    if msg.role == "tool":
        call_id = msg.tool_call_id
        return f"(result of the {names.get(call_id, 'tool')} call {call_id}): {text}"
    if msg.tool_calls:
        calls = "; ".join(f"{c.name}({c.arguments}) [call {c.id}]" for c in msg.tool_calls)
        text = (text + "\n" if text else "") + f"(called tools: {calls})"
    return text


def _call_names(turns):
    return {c.id: c.name for m in turns for c in m.tool_calls}


def flatten_prompt(turns):
    """A conversation as one prompt: earlier turns with role markers, the last one last."""
    names = _call_names(turns)
    if len(turns) <= 1:
        return "".join(_render(m, names) for m in turns)
    last = turns[-1]
    lines = ["Earlier turns of this conversation, oldest first:", ""]
    for m in turns[:-1]:
        lines += [f"[{m.role}]", _render(m, names), ""]
    lines += [f"[end of earlier turns; the {last.role}'s new message follows]", "",
              _render(last, names)]
    return "\n".join(lines)


def new_turn_prompt(turns):
    """The new messages of a kept session's turn."""
    names = _call_names(turns)
    return "\n\n".join(_render(m, names) for m in turns)


# The client's functions, served to the CLI as an MCP server ("client") at a path only
# that CLI knows. tools/call is held open until the client's next request brings the result.
_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
_MCP_VERSION = "2025-11-25"


class ToolBroker:
    """One CLI's MCP server: the client's functions, and the calls Claude made to them."""

    def __init__(self, tools, choice, single, wait):
        self.token = secrets.token_urlsafe(24)
        named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        self.tools = [t["function"] for t in tools
                      if named is None or t["function"]["name"] == named]
        self.single = single  # parallel_tool_calls=false: one call per reply
        self.wait = wait  # seconds a call may wait for its result
        self.forwarded = set()  # ids of the calls the client was sent, every round
        self.dropped = set()  # ... and of those it was not (parallel_tool_calls=false)
        self.results = {}  # call id -> (text, is_error)
        self.config_file = None  # the CLI's --mcp-config, a private file
        self.cond = threading.Condition()
        self.round_open = True  # the model's reply is still being read
        self.closed = False

    def serve(self, rpc):
        """One JSON-RPC message from the CLI -> the answer, or None (a notification)."""
        method, rpc_id = rpc.get("method"), rpc.get("id")
        if rpc_id is None:
            return None
        if method == "initialize":
            version = (rpc.get("params") or {}).get("protocolVersion") or _MCP_VERSION
            result = {"protocolVersion": str(version),
                      "capabilities": {"tools": {"listChanged": False}},
                      "serverInfo": {"name": "claude-bridge", "version": __version__}}
        elif method == "tools/list":
            # readOnlyHint: the CLI then calls parallel tool uses at once, not in turn.
            result = {"tools": [{"name": fn["name"], "description": fn.get("description", ""),
                                 "inputSchema": fn.get("parameters") or {"type": "object"},
                                 "annotations": {"readOnlyHint": True}} for fn in self.tools]}
        elif method == "tools/call":
            text, is_error = self.call(rpc.get("params") or {})
            result = {"content": [{"type": "text", "text": text}], "isError": is_error}
        elif method == "ping":
            result = {}
        else:
            return {"jsonrpc": "2.0", "id": rpc_id,
                    "error": {"code": -32601, "message": "Method not found"}}
        return {"jsonrpc": "2.0", "id": rpc_id, "result": result}

    def call(self, params):
        """Wait for the client's result of one call."""
        call_id = str((params.get("_meta") or {}).get("claudecode/toolUseId") or "")
        with self.cond:
            # The CLI may call before the bridge has read the reply that carries the call.
            self.cond.wait_for(lambda: call_id in self.forwarded or call_id in self.dropped
                               or not self.round_open or self.closed, self.wait)
            if call_id not in self.forwarded:
                return ("Not run: call one tool at a time (the client asked for no parallel "
                        "calls); call it again after this result." if self.single else
                        "Not run: the client never received this call."), True
            self.cond.wait_for(lambda: call_id in self.results or self.closed, self.wait)
            return self.results.get(call_id) or ("The client sent no result.", True)

    def end_round(self, calls, dropped):
        """The reply is read: these calls (ids) went to the client, those did not."""
        with self.cond:
            self.forwarded.update(calls)
            self.dropped.update(dropped)
            self.round_open = False
            self.cond.notify_all()

    def answer(self, results):
        """The client's results ({call id: text}); calls it left out get an error."""
        with self.cond:
            for call_id in self.forwarded - set(self.results):
                self.results[call_id] = ((results[call_id], False) if call_id in results else
                                         ("The client sent no result for this call.", True))
            self.round_open = True
            self.cond.notify_all()

    def close(self):
        with self.cond:
            self.closed = True
            self.cond.notify_all()


def _offers_tools(params):
    return bool(params.get("tools")) and params.get("tool_choice") != "none"


def _tool_rules(params):
    """What the system prompt says of tool_choice and parallel_tool_calls (the CLI has
    no flag for either; a named choice also offers that function alone)."""
    choice, rules = params.get("tool_choice"), []
    if choice == "required":
        rules.append("Before you answer, call at least one of the tools whose names start "
                     "with mcp__client__.")
    elif isinstance(choice, dict):
        rules.append(f"Before you answer, call the tool mcp__client__{choice['function']['name']}.")
    if params.get("parallel_tool_calls") is False:
        rules.append("Call at most one tool per message.")
    return " ".join(rules)


def _tool_results(chat, held=None):
    """The trailing tool messages of a request: (the history before them, {id: text});
    with the run they continue, legacy results (by function name) under its call ids."""
    turns = chat.messages
    end = len(turns)
    while end and turns[end - 1].role == "tool":
        end -= 1
    results = {m.tool_call_id: m.text for m in turns[end:]}
    if held is not None and chat.params.get("legacy_functions"):
        results = {call_id: results["fn:" + name] for call_id, name in held.names.items()
                   if "fn:" + name in results}
    return turns[:end], results


class HeldRun(typing.NamedTuple):
    """A CLI waiting for the results of the tool calls it made, and what continues it."""
    proc: subprocess.Popen
    stderr: object
    parser: object  # its _ClaudeEvents, mid-run
    broker: ToolBroker
    digest: str  # of the history the results must follow
    session: object  # the ClaudeSession it serves, or None
    spec: object
    first_call: str  # the id of the reply's first call, which the results must name
    names: dict  # call id -> function name
    since: float
    was_held: bool  # the run had a kept CLI: its cost is counted from the session's


class HeldRuns(IdleClis):
    """CLIs holding tool calls open, by the reply's first call id; each ends after
    CLAUDE_TOOL_WAIT seconds without the results."""

    label = "held"

    def park(self, held):
        self._put(held.first_call, held)

    def claim(self, chat):
        """The held run a request's tool results continue, or None."""
        history, results = _tool_results(chat)
        legacy = bool(chat.params.get("legacy_functions"))
        if not results:
            return None
        with self.lock:
            for first, held in self.items.items():
                if ("fn:" + held.names[first] if legacy else first) in results:
                    if held.digest != _history_digest(history, legacy):
                        return None  # the same ids after another history: never mix
                    return self.items.pop(first)
        return None

    def _discard(self, held):
        if not self.closed.is_set():
            _LOG.info("a run held for tool results got none in %g s (CLAUDE_TOOL_WAIT), or "
                      "gave its slot up; ended", self.seconds)
        held.broker.close()
        self.backend.reap(held.proc)
        self.backend.slots.release()


class StopWatch:
    """Text up to the first stop sequence; what may be the start of one is held back."""

    def __init__(self, stops):
        self.stops = stops
        self.held = ""
        self.hit = None  # the stop sequence met

    def feed(self, text):
        """What of the text so far can be sent."""
        text = self.held + text
        cuts = [(i, stop) for stop in self.stops for i in (text.find(stop),) if i >= 0]
        if cuts:
            at, self.hit = min(cuts)
            self.held = ""
            return text[:at]
        keep = max((k for stop in self.stops for k in range(1, len(stop))
                    if text.endswith(stop[:k])), default=0)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]


class _Reply:
    """What of a CLI's reply reaches the client: its text up to a stop sequence (the
    bridge's job: the CLI has no such flag); under a JSON schema, only the structured
    output, at the end."""

    def __init__(self, stops, structured):
        self.watch = StopWatch(stops) if stops else None
        self.structured = structured

    @property
    def stopped(self):
        return self.watch is not None and self.watch.hit is not None

    def shape(self, event):
        if isinstance(event, (TextDelta, Retract)) and self.structured:
            return []
        if isinstance(event, TextDelta) and self.watch is not None:
            text = self.watch.feed(event.text)
            return [TextDelta(text)] if text else []
        return [event]

    def end(self, result):
        """The events a reply ends with."""
        if self.structured:
            if "structured_output" not in result:
                raise BackendFailed("Claude answered without the structured output the "
                                    "response_format asks for: "
                                    + str(result.get("result") or "")[:300])
            return [TextDelta(_dumps(result["structured_output"]))]
        return [TextDelta(self.watch.held)] if self.watch and self.watch.held else []


class ClaudeRun(Run):
    """One request through the CLI, with the session's resume / heal logic."""

    def __init__(self, backend, chat):
        super().__init__(backend.workers)
        self.backend = backend
        self.chat = chat
        settings = backend.settings
        self.timeout = settings.claude_timeout
        self.idle_timeout = settings.claude_idle_timeout
        self.timeout_setting, self.idle_setting = "CLAUDE_TIMEOUT", "CLAUDE_IDLE_TIMEOUT"
        self.proc = None
        self.proc_lock = threading.Lock()
        self.session_held = False
        self.slot_held = False
        self.cost_usd = 0.0
        binary = backend.binary()  # 503 at once when missing
        self.images = [_claude_image(url, f"messages[{i}].content")
                       for i, m in enumerate(chat.messages) for url in m.images]
        self.held = None  # a running CLI this request uses: warm, or kept from a session
        # Turns of one session run one at a time: concurrent resumes lose a turn.
        if chat.session_id is not None:
            backend.session_locks.take_turn(chat.session_id, settings.claude_queue_timeout,
                                            backend.line, chat.client_gone)
            self.session_held = True
        self.spec = backend.spec(chat)
        self.known = None  # the session's Claude UUID, workdir, cost so far
        self.continued = None  # the HeldRun this request's tool results continue
        self.via = None  # how the turn reached the CLI, when worth a note in the row
        self.fork_point = None  # (Claude session, message uuid, its cost) to fork from
        self.resume_point = None  # where this turn ends up: (Claude session, message uuid)
        if _offers_tools(chat.params):
            self._take_tools(backend, chat)
        if self.continued is not None:
            pass  # its CLI, and the slot that CLI holds, come with it
        elif chat.session_id is None:
            # A stateless request takes a warm CLI (and its slot) when there is one ...
            self.held = backend.pool.take(self.spec)
        elif backend.conversations.departs(chat, backend.provider):
            # The client's history wins: a new Claude session from it (under the same id).
            self._new_session(backend, chat)
        else:
            known = backend.store.get_claude_session(chat.session_id)
            if known is None:
                self._new_session(backend, chat)
            elif known.workdir == backend.workdir:
                self.known = known
                # ... a session's turn, its CLI still running from the turn before.
                self.held = backend.live.take(chat.session_id, known.claude_uuid,
                                              self.spec)
        try:
            if self.held is None and self.continued is None and not backend.acquire_slot(
                    settings.claude_queue_timeout, chat.client_gone):
                raise RateLimited(
                    f"All {settings.claude_max_concurrency} Claude slots are busy "
                    f"(CLAUDE_MAX_CONCURRENCY); try again shortly.",
                    headers={"Retry-After": "5"})
            self.slot_held = True
        except BaseException:
            self._release()
            raise
        self.binary = binary

    def _new_session(self, backend, chat):
        """A session's first turn: forked from where a Claude session holds the client's
        history, when one does (a regenerated or edited message); else on a warm CLI that
        started a session of its own (RECOGNISE_CONVERSATIONS), or a new one."""
        if chat.history_digest is not None:
            self.fork_point = backend.store.fork_point(chat.history_digest)
        if self.fork_point is None:
            self.held = backend.pool.take_for_session(self.spec)

    def _take_tools(self, backend, chat):
        """The held run this request's tool results continue, else a broker for a new
        run (from the whole history when the results were for a run that is gone)."""
        self.continued = backend.held.claim(chat)
        if self.continued is not None:
            self.via = "held"
            return
        if _tool_results(chat)[1]:
            self.via = "rebuilt"
        params = chat.params
        broker = ToolBroker(params["tools"], params.get("tool_choice"),
                            params.get("parallel_tool_calls") is False,
                            backend.settings.claude_tool_wait)
        rules = _tool_rules(params)
        self.spec = self.spec._replace(tools=broker, system="\n\n".join(
            filter(None, (self.spec.system, rules))))

    def _release(self):
        if self.slot_held:
            self.slot_held = False
            self.backend.slots.release()
        if self.session_held:
            self.session_held = False
            self.backend.session_locks.release(self.chat.session_id)

    def cancel(self):
        super().cancel()
        with self.proc_lock:
            proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass

    def close(self):
        super().close()
        with self.proc_lock:
            proc, self.proc = self.proc, None
        if proc is not None:
            self.backend.reap(proc)
        if self.held is not None:  # taken but never used (cancelled before it ran)
            self.backend.reap(self.held.proc)
            self.held = None
            # (its slot is this run's, released below)
        self._release()
        if self.spec.tools is None and (self.chat.session_id is None or self.backend.pool.sessions):
            # Warm or cold, the next request like this one finds a CLI waiting (and may
            # use the slot this one just gave back).
            self.backend.pool.want(self.spec)

    def produce(self):
        chat = self.chat
        if self.continued is not None:
            yield from self._continue()
            return
        if chat.session_id is None:
            stateless = (["--no-session-persistence"], flatten_prompt(chat.turns()))
            if (yield from self._attempt(*stateless)) == "dead":
                yield from self._attempt(*stateless)  # the warm CLI had died: a cold one
            return
        known = self.known
        if known is not None and self.held is not None:
            outcome = yield from self._attempt(
                [], new_turn_prompt(chat.new_turns()), session=known)
            if outcome != "dead":
                return  # else the kept CLI had died: resume the session instead
        if known is not None:
            outcome = yield from self._attempt(
                ["--resume", known.claude_uuid], new_turn_prompt(chat.new_turns()),
                session=known, heal=True)
            if outcome != "heal":
                return
            _LOG.info("session %s: Claude session %s is gone; starting a new one from the "
                      "history the client sent", chat.session_id, known.claude_uuid)
        # A warm CLI started a session of its own; else a fresh UUID each time: a failed
        # first turn still leaves its session file, so reusing it fails "already in use".
        new = "dead"
        if self.fork_point is not None:
            new = yield from self._fork_turn()
        elif self.held is not None:
            new = yield from self._first_turn()
        if new in ("dead", "heal"):
            if self.via == "forked":
                self.via = None  # the fork found nothing to resume: a new session after all
            claude_uuid = str(uuid.uuid4())
            yield from self._attempt(["--session-id", claude_uuid],
                                     flatten_prompt(chat.turns()),
                                     session=ClaudeSession(claude_uuid, self.backend.workdir,
                                                           0.0))

    def _fork_turn(self):
        """Resume the Claude session that holds the client's history at its last reply,
        into a session of its own: "heal" if that session or message is gone."""
        parent, message_uuid, parent_cost = self.fork_point
        claude_uuid = str(uuid.uuid4())
        self.via = "forked"
        # (The fork's total_cost_usd goes on from the whole parent session's.)
        session = ClaudeSession(claude_uuid, self.backend.workdir, parent_cost)
        return (yield from self._attempt(
            ["--resume", parent, "--resume-session-at", message_uuid, "--fork-session",
             "--session-id", claude_uuid], new_turn_prompt(self.chat.new_turns()),
            session=session, heal=True))

    def _first_turn(self):
        """A session's first turn on a warm CLI: "dead" if it had died, else None."""
        session = ClaudeSession(self.held.claude_uuid, self.backend.workdir, 0.0)
        return (yield from self._attempt([], flatten_prompt(self.chat.turns()), session=session))

    def _attempt(self, session_flags, prompt, session=None, heal=False):
        """Run one turn on a CLI: the one held for this request (warm or kept from the
        session's last turn) or a new one. Returns "heal" if a resumed session turned out
        to be gone, "dead" if the held CLI had died before it said anything."""
        if self._cancelled.is_set():
            return None
        backend = self.backend
        keep = session is not None and backend.live.keepalive > 0 and self.spec.tools is None
        was_held = self.held is not None
        if was_held:
            proc, stderr, self.held = self.held.proc, self.held.stderr, None
        elif self.chat.client_gone():
            self._cancelled.set()  # nobody to answer: never start a CLI for it
            return None
        else:
            proc = self.backend.spawn(self.binary, self.spec, session_flags)
            stderr = _StderrTail(proc.stderr)
        with self.proc_lock:
            self.proc = proc
        self._send(proc, prompt, keep)
        parser = _ClaudeEvents(backend.settings.claude_tool_notes,
                               self.chat.params.get("parallel_tool_calls") is False,
                               getattr(proc, "tools", None) is not None)
        return (yield from self._read(proc, stderr, parser, session, was_held, heal, keep))

    def _continue(self):
        """Hand the client's tool results to the CLI that waits for them, and read on."""
        held = self.continued
        with self.proc_lock:
            self.proc = held.proc
        self.slot_held = True
        held.parser.next_reply()
        held.broker.answer(_tool_results(self.chat, held)[1])
        yield from self._read(held.proc, held.stderr, held.parser, held.session,
                              held.was_held, False, False)

    def _read(self, proc, stderr, parser, session, was_held, heal, keep):
        """Read one reply from a CLI, then end it, keep it for the session, or hold it
        for the client's tool results."""
        reply = _Reply(self.chat.params.get("stop"), getattr(proc, "json_schema", None))
        for raw in proc.stdout:
            for event in parser.feed(raw):
                yield from reply.shape(event)
            if parser.result is not None or parser.waiting or reply.stopped or (
                    parser.stop_reason == "max_tokens" and getattr(proc, "max_tokens", None)):
                break
        # At a stop sequence, or at the client's max_tokens (the CLI would ask the model to
        # go on, up to 3 times, and then fail): the rest is never wanted.
        cut = "stop" if reply.stopped else "length" if parser.stop_reason == "max_tokens" \
            and getattr(proc, "max_tokens", None) else None
        if cut:
            self._forget(proc)
            if cut == "length" and not reply.structured:
                yield from reply.end({})  # text held back as a possible stop sequence
            yield Final(cut, *parser.tokens_so_far(), 0.0,
                        reply.watch.hit if cut == "stop" else None)
            return None
        if parser.waiting and not self._cancelled.is_set():
            yield parser.end_reply()
            self._hold(proc, stderr, parser, session, was_held)
            return None
        result = parser.result
        if result is None or result.get("is_error"):
            message = self._failed(proc, parser, stderr)
            if self._cancelled.is_set():
                return None
            if was_held and parser.lines == 0:
                _LOG.warning("held claude pid %s was dead (%s); starting another", proc.pid,
                             message)
                return "dead"
            if heal and not parser.sent_text and any(gone in message for gone in _GONE):
                return "heal"
            yield Failed(_cli_error(message, parser.api_status))
            return None
        yield from reply.end(result)
        return (yield from self._finish(proc, stderr, parser, result, session, was_held, keep))

    def _finish(self, proc, stderr, parser, result, session, was_held, keep):
        """A reply that ended well: its Final, then the CLI kept for the session or ended."""
        backend = self.backend
        prompt_tokens, completion_tokens, cached = parser.final_tokens(result.get("usage"))
        total_cost = float(result.get("total_cost_usd") or 0.0)
        cost = total_cost
        if session is not None:
            # A kept CLI's total counts every turn it ran; a resumed one's, by version.
            version = parser.version or self.backend.health().get("version")
            if was_held or _version(version) >= _CUMULATIVE_COST_SINCE:
                cost = max(0.0, total_cost - session.total_cost_usd)
            self.backend.store.put_claude_session(self.chat.session_id, session.claude_uuid,
                                                  self.backend.workdir, total_cost)
        self.cost_usd = cost
        if session is not None and parser.last_uuid:
            self.resume_point = (session.claude_uuid, parser.last_uuid)
        stop = result.get("stop_reason")
        yield Final("length" if stop == "max_tokens" else "stop",
                    prompt_tokens, completion_tokens, cached, cost)
        if keep and not self._cancelled.is_set():
            # Keep it for the session's next turn; its slot goes with it.
            with self.proc_lock:
                self.proc = None
            self.slot_held = False
            backend.live.park(self.chat.session_id, proc, stderr, session.claude_uuid,
                              self.spec)
            return None
        # The reply is on its way; now let the CLI exit (or end it) and reap it.
        for _ in proc.stdout:
            pass
        proc.stdout.close()
        try:
            proc.wait(timeout=_KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            pass
        self._forget(proc)
        return None

    def _hold(self, proc, stderr, parser, session, was_held):
        """The reply ended in calls of the client's functions: keep the CLI (and its slot)
        waiting for the results, which the client's next request brings."""
        broker = proc.tools
        broker.end_round(parser.calls, parser.dropped)
        calls = tuple(ToolCall(call_id, parser.names[call_id], "") for call_id in parser.calls)
        digest = _history_digest([*self.chat.messages, Message("assistant", calls)],
                                 bool(self.chat.params.get("legacy_functions")))
        with self.proc_lock:
            self.proc = None
        self.slot_held = False
        self.backend.held.park(HeldRun(proc, stderr, parser, broker, digest, session, self.spec,
                                       calls[0].id, dict(parser.names), time.monotonic(),
                                       was_held))

    def _send(self, proc, prompt, keep):
        """Write the turn's one stream-json message (its images as content blocks)."""
        content = prompt
        if self.images:
            content = [{"type": "text", "text": prompt}, *self.images]
        _write_line(proc, _dumps({"type": "user", "message": {"role": "user",
                                                              "content": content}}))
        if not keep:
            try:
                proc.stdin.close()  # EOF after one message: the CLI answers it and exits
            except OSError:
                pass

    def _failed(self, proc, parser, stderr):
        """End a CLI whose turn failed; the CLI's own words for why."""
        for pipe in (proc.stdin, proc.stdout):  # a kept CLI would wait for more input
            try:
                pipe.close()
            except OSError:
                pass
        try:
            code = proc.wait(timeout=_KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            code = None
        message = parser.error_message(stderr.text(), code)
        self._forget(proc)
        return message

    def _forget(self, proc):
        with self.proc_lock:
            self.proc = None
        self.backend.reap(proc)


# Claude Code's own tools, as one line of the reasoning: the input that says what it did.
_TOOL_NOTE_KEYS = ("file_path", "notebook_path", "path", "command", "pattern", "url", "query",
                   "description", "prompt")
# What the CLI calls a client's function: its MCP server is named "client".
_CLIENT_TOOL_PREFIX = "mcp__client__"


def _tool_note(block):
    """`Read src/app.py`, `Bash: pytest -q`: one short line for a tool the CLI ran."""
    name, args = str(block.get("name") or "tool"), block.get("input")
    args = args if isinstance(args, dict) else {}
    key = next((k for k in _TOOL_NOTE_KEYS if isinstance(args.get(k), str)), None)
    if key is None:
        return name + "\n"
    value = " ".join(args[key].split())[:160]
    return f"{name} {value}\n" if key.endswith("path") else f"{name}: {value}\n"


class _ClaudeEvents:
    """Turns stream-json lines into bridge events."""

    def __init__(self, tool_notes=False, single=False, client_tools=False):
        self.tool_notes = tool_notes  # Claude Code's own tool uses as reasoning lines
        self.client_tools = client_tools  # the bridge serves the client's functions
        self.single = single  # forward one client tool call per reply, no more
        self.stop_reason = None  # of the message streaming now
        self.waiting = False  # the reply ended in client tool calls: the CLI waits
        self.segment = [0, 0, 0]  # tokens of the API calls since the last reply ended
        self.reported = [0, 0, 0]  # ... and of the replies already ended
        self.result = None
        self.lines = 0
        self.sent_text = False
        self.message_id = None  # of the message streaming now (2.1.197 names it only once)
        self.streamed = {}  # (message id, block index) -> text already sent
        self.blocks = {}  # the same for thinking (its text) and client tool calls (index)
        self.assistant_blocks = collections.Counter()  # message id -> assistant lines seen
        self.calls = {}  # a client tool call's id -> its index in this reply
        self.names = {}  # ... -> its function's name
        self.dropped = set()  # ids of calls kept from the client (parallel_tool_calls=false)
        self.api_error = None
        self.api_status = None
        self.version = None  # the CLI's, from its init line
        self.last_uuid = None  # of the last assistant line: the session file's entry
        self.garbage = None
        self.usage = {}

    def feed(self, raw):
        """Events for one stdout line."""
        self.lines += 1
        try:
            obj = json.loads(raw)
        except ValueError:
            text = raw.decode("utf-8", "replace").strip()
            if text:
                self.garbage = text[:300]
            return [PROGRESS]
        if not isinstance(obj, dict):
            self.garbage = raw.decode("utf-8", "replace").strip()[:300]
            return [PROGRESS]
        kind = obj.get("type")
        if kind == "stream_event":
            return self._stream_event(obj)
        if kind == "system" and obj.get("subtype") == "init":
            self.version = obj.get("claude_code_version")
        if kind == "assistant":
            return self._assistant(obj)
        if kind == "result":
            self.result = obj
            self.api_status = obj.get("api_error_status") or self.api_status
            return []
        return [PROGRESS]

    def _text(self, key, text, thinking=False):
        if thinking:
            self.blocks[key] = self.blocks.get(key, "") + text
            return ReasoningDelta(text)
        if not any(k[0] == key[0] for k in self.streamed) and any(self.streamed.values()):
            text = "\n\n" + text  # a new assistant message: a paragraph of its own
        self.streamed[key] = self.streamed.get(key, "") + text
        self.sent_text = True
        return TextDelta(text)

    def _stream_event(self, obj):
        event = obj.get("event") or {}
        etype = event.get("type")
        if etype == "message_start":
            self.message_id = (event.get("message") or {}).get("id")
        message_id = obj.get("api_message_id") or self.message_id
        if etype == "content_block_delta":
            return self._delta(event.get("delta") or {}, (message_id, event.get("index", 0)))
        if etype == "content_block_start":
            block = event.get("content_block") or {}
            name = str(block.get("name") or "")
            if block.get("type") == "tool_use" and self._is_client(name):
                return self._client_call(block, (message_id, event.get("index", 0)), "")
        elif etype == "message_start":
            usage = (event.get("message") or {}).get("usage")
            if usage:
                self.usage = dict(usage)
                return [Usage(*_claude_usage(self.usage))]
        elif etype == "message_delta":
            self.stop_reason = (event.get("delta") or {}).get("stop_reason")
            usage = event.get("usage") or {}
            if "output_tokens" in usage:
                self.usage["output_tokens"] = usage["output_tokens"]
                return [Usage(*_claude_usage(self.usage))]
        elif etype == "message_stop":
            if obj.get("abandoned_blocks"):
                return self._abandoned(obj["abandoned_blocks"], message_id)
            self.segment = [a + b for a, b in zip(self.segment, _claude_usage(self.usage))]
            self.waiting = self.stop_reason == "tool_use" and bool(self.calls)
        return [PROGRESS]

    def _delta(self, delta, key):
        dtype = delta.get("type")
        if dtype == "text_delta" and delta.get("text"):
            return [self._text(key, delta["text"])]
        if dtype == "thinking_delta" and delta.get("thinking"):
            return [self._text(key, delta["thinking"], thinking=True)]
        if dtype == "input_json_delta" and isinstance(self.blocks.get(key), int):
            return [ToolCallDelta(self.blocks[key], str(delta.get("partial_json") or ""))]
        return [PROGRESS]

    def _abandoned(self, abandoned, message_id):
        """The CLI voids what it streamed for these blocks and asks again."""
        first = abandoned.get("from_block_index", 0)
        mid = abandoned.get("api_message_id", message_id)
        keys = sorted(k for k in self.streamed if k[0] == mid and k[1] >= first)
        void = "".join(self.streamed.pop(k) for k in keys)
        for k in keys:  # never filled again from the assistant line either
            self.streamed[k] = ""
        return [Retract(void)] if void else [PROGRESS]

    def _assistant(self, obj):
        message = obj.get("message") or {}
        if obj.get("error") or message.get("model") == "<synthetic>":
            texts = [b.get("text", "") for b in message.get("content") or []
                     if isinstance(b, dict) and b.get("type") == "text"]
            self.api_error = " ".join(t for t in texts if t) or str(obj.get("error"))
            self.api_status = obj.get("api_error_status") or self.api_status
            return [PROGRESS]
        self.last_uuid = obj.get("uuid") or self.last_uuid  # where a fork may resume
        message_id = message.get("id")
        index = self.assistant_blocks[message_id]
        self.assistant_blocks[message_id] += 1
        events = []
        for block in message.get("content") or []:
            if not isinstance(block, dict):
                continue
            # Text not streamed as deltas (no partial messages, or the CLI's non-streamed
            # retry after abandoned blocks) arrives here whole.
            fresh = (message_id, index) not in self.streamed and \
                (message_id, index) not in self.blocks
            if block.get("type") in ("text", "thinking") and fresh:
                text = block.get(block["type"])
                if text:
                    events.append(self._text((message_id, index), text,
                                             thinking=block["type"] == "thinking"))
            elif block.get("type") == "tool_use":
                events.extend(self._tool_use(block, (message_id, index), fresh))
        return events or [PROGRESS]

    def _tool_use(self, block, key, fresh):
        name = str(block.get("name") or "")
        if not self._is_client(name):
            own = self.tool_notes and name != "StructuredOutput"
            return [ReasoningDelta(_tool_note(block))] if own else []
        return self._client_call(block, key, _dumps(block.get("input") or {})) if fresh else []

    def _client_call(self, block, key, arguments):
        """A call of the client's function: the start of a tool call in the reply (under
        parallel_tool_calls=false only the first; the CLI is told to call the rest later)."""
        call_id = str(block.get("id"))
        if self.single and self.calls and call_id not in self.calls:
            self.dropped.add(call_id)
            return [PROGRESS]
        index = self.calls.setdefault(call_id, len(self.calls))
        self.blocks[key] = index
        name = self.names[call_id] = str(block.get("name"))[len(_CLIENT_TOOL_PREFIX):]
        return [ToolCallStart(index, call_id, name, arguments)]

    def _is_client(self, name):
        # (Without the bridge's MCP server, a user's own server may be called "client".)
        return self.client_tools and name.startswith(_CLIENT_TOOL_PREFIX)

    def end_reply(self):
        """The Final of a reply that ended in tool calls; the run goes on after it."""
        tokens, self.segment = self.segment, [0, 0, 0]
        self.reported = [a + b for a, b in zip(self.reported, tokens)]
        return Final("tool_calls", *tokens, 0.0)

    def next_reply(self):
        """The client's results are in: the CLI speaks again."""
        self.calls, self.waiting, self.sent_text = {}, False, False

    def tokens_so_far(self):
        """The reply's tokens when it is cut short (the CLI says no more)."""
        return [a + b for a, b in zip(self.segment, _claude_usage(self.usage))]

    def final_tokens(self, usage):
        """The run's tokens (its result's usage) less those already reported."""
        return [max(0, a - b) for a, b in zip(_claude_usage(usage), self.reported)]

    def error_message(self, stderr_text, code):
        """The CLI's own words for a failed run."""
        result = self.result or {}
        parts = []
        if result.get("result"):
            parts.append(str(result["result"]))
        elif self.api_error:
            parts.append(self.api_error)
        errors = result.get("errors")
        if isinstance(errors, list) and errors:
            parts.extend(str(e) for e in errors if str(e) not in parts)
        if stderr_text and not parts:
            parts.append(stderr_text[-1000:])
        if not parts and self.garbage:
            parts.append(f"unreadable output from the CLI: {self.garbage}")
        if not parts:
            if code is not None and code < 0:
                parts.append(f"the CLI was killed by signal {-code}")
            elif code in (143, 137):
                parts.append(f"the CLI was killed (exit {code})")
            else:
                parts.append(f"the CLI exited with code {code} without a result")
        message = "; ".join(parts)
        return f"Claude Code CLI: {message}"


# ----------------------------------------------------------------------------------------
# Backend: Ollama
# ----------------------------------------------------------------------------------------

def _ollama_image(url, param):
    inline = _data_url(url, param)
    if inline:
        return inline[1]
    if url.startswith(("http://", "https://")):
        raise InvalidRequest("Ollama takes images inline only: send them as "
                             "'data:image/png;base64,...' URLs, not http(s) links.",
                             param=param, code="image_url_not_supported")
    raise InvalidRequest("An image URL must be a 'data:image/...;base64,...' URL.",
                         param=param)


def _ollama_format(response_format):
    if not isinstance(response_format, dict):
        raise InvalidRequest("'response_format' must be an object.", param="response_format")
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequest("'response_format.json_schema.schema' must be an object.",
                                 param="response_format.json_schema.schema")
        return schema
    raise InvalidRequest(f"response_format type {kind!r} is not supported; use text, "
                         "json_object or json_schema.", param="response_format.type")


def ollama_request(chat, messages):
    """The native /api/chat body for a chat request and its full message list."""
    out = []
    names = {}  # tool_call_id -> function name, for role "tool" results
    for i, m in enumerate(messages):
        role = "system" if m.is_system else m.role
        item = {"role": role, "content": m.text}
        if m.images:
            item["images"] = [_ollama_image(u, f"messages[{i}].content") for u in m.images]
        if m.tool_calls:
            calls = []
            for j, call in enumerate(m.tool_calls):
                try:
                    args = json.loads(call.arguments or "{}")
                except ValueError:
                    args = None
                if not isinstance(args, dict):
                    raise InvalidRequest("Tool call arguments must be a JSON object string.",
                                         param=f"messages[{i}].tool_calls[{j}].function."
                                               "arguments")
                names[call.id] = call.name
                calls.append({"function": {"name": call.name, "arguments": args}})
            item["tool_calls"] = calls
        if role == "tool" and m.tool_call_id in names:
            item["tool_name"] = names[m.tool_call_id]
        out.append(item)
    params = chat.params
    options = {}
    limit = params.get("max_completion_tokens", params.get("max_tokens"))
    if limit is not None:
        options["num_predict"] = limit
    for name in ("temperature", "top_p", "seed", "stop", "presence_penalty",
                 "frequency_penalty"):
        if name in params:
            options[name] = params[name]
    body = {"model": chat.model[len("ollama/"):], "messages": out,
            "stream": chat.stream}  # Ollama streams when "stream" is absent
    if options:
        body["options"] = options
    if "tools" in params and params.get("tool_choice") != "none":
        body["tools"] = params["tools"]
    if "response_format" in params:
        fmt = _ollama_format(params["response_format"])
        if fmt is not None:
            body["format"] = fmt
    return body


def _ollama_tool_call(call):
    """One of Ollama's tool calls as a ToolCall (Ollama gives no ids: one is made)."""
    fn = call.get("function") or {} if isinstance(call, dict) else {}
    args = fn.get("arguments")
    return ToolCall("call_" + secrets.token_hex(12), str(fn.get("name", "")),
                    args if isinstance(args, str) else _dumps(args if args is not None else {}))


_JSON_HEADERS = {"Content-Type": "application/json"}
# Keep-alive connections kept to Ollama; more concurrent calls open short-lived ones.
_OLLAMA_POOL = 32


def _response_socket(response):
    """The socket under a streamed `requests` response, to cut it from another thread."""
    connection = getattr(response.raw, "_connection", None)
    return getattr(connection, "sock", None)


def _epoch(stamp):
    """RFC 3339 (Ollama's modified_at, nanoseconds and all) -> Unix seconds; 0 if odd."""
    try:
        text = re.sub(r"(\.\d{6})\d+", r"\1", str(stamp)).replace("Z", "+00:00")
        return int(datetime.datetime.fromisoformat(text).timestamp())
    except ValueError:
        return 0


def _ollama_status_error(response, model):
    """The error for an Ollama reply other than 200."""
    try:
        text = str(response.json().get("error") or response.text)
    except (ValueError, AttributeError):
        text = response.text[:500] or response.reason
    status = response.status_code
    if status == 404:
        return NotFound(f"Ollama: {text} (pull it with `ollama pull {model}`).",
                        param="model", code="model_not_found")
    if status == 503:
        return BackendUnavailable(f"Ollama is busy: {text}", code="backend_busy",
                                  headers={"Retry-After": "5"})
    if status == 400:  # the request's fault (options, format, tools): the client's to fix
        return InvalidRequest(f"Ollama refused the request: {text}")
    if status == 501:  # (a model that cannot embed)
        return InvalidRequest(f"Ollama cannot do this with {model!r}: {text}",
                              param="model", code="model_not_supported")
    return BackendFailed(f"Ollama answered {status}: {text}")


class OllamaBackend(Backend):
    """Models named `ollama/<name>`, through Ollama's native /api/chat."""

    provider = "ollama"
    unsupported = frozenset(("logprobs", "top_logprobs", "logit_bias", "reasoning_effort"))

    def forget(self, session_id):
        self.histories.forget(session_id)

    def ignored(self, chat):
        names = super().ignored(chat)
        if chat.params.get("tool_choice") not in (None, "auto", "none"):
            names.append("tool_choice")  # Ollama chooses for itself
        if chat.params.get("parallel_tool_calls") is False:
            names.append("parallel_tool_calls")
        return names

    def __init__(self, settings, workers):
        self.settings = settings
        self.workers = workers
        self.url = settings.ollama_url
        self.chat_url = self.url + "/api/chat"
        self.timeout = (settings.ollama_connect_timeout, settings.ollama_timeout)
        self.histories = ChatHistories(settings.ollama_sessions, settings.ollama_session_ttl,
                                       settings.ollama_session_max_messages,
                                       settings.ollama_session_max_kb * 1024)
        self._http = requests.Session()
        self._http.trust_env = False  # a proxy from the environment must not catch localhost
        # One pool for all threads: keep-alive connections are reused, and at most
        # _OLLAMA_POOL stay open however many threads have called Ollama.
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=_OLLAMA_POOL)
        self._http.mount("http://", adapter)
        self._http.mount("https://", adapter)
        self._tags = Cached(self._fetch_models, _HEALTH_SECONDS)
        self._health = Cached(self._probe, _HEALTH_SECONDS)

    def http(self):
        """The requests session (thread-safe for what the bridge does: no cookies)."""
        return self._http

    def unreachable(self, exc):
        """The 502 for an Ollama that does not answer."""
        return BackendFailed(f"Ollama is not reachable at {self.url} (OLLAMA_URL): {exc}. "
                             "Start it with `ollama serve` or fix OLLAMA_URL.",
                             code="backend_unreachable")

    def silent(self):
        """The 504 for an Ollama that stopped answering."""
        return BackendTimeout(f"Ollama sent nothing for {self.timeout[1]:g} s (OLLAMA_TIMEOUT)")

    def _get(self, path):
        return self.http().get(self.url + path, timeout=(self.settings.ollama_connect_timeout,
                                                        5))

    def models(self):
        """Ollama's installed models as OpenAI model objects; cached a few seconds."""
        return self._tags.get()

    def _fetch_models(self):
        try:
            resp = self._get("/api/tags")
            resp.raise_for_status()
            models = resp.json().get("models") or []
            return [{"id": "ollama/" + str(m.get("name") or m.get("model")),
                     "object": "model", "created": _epoch(m.get("modified_at")),
                     "owned_by": "ollama"} for m in models if isinstance(m, dict)]
        except (requests.RequestException, ValueError, AttributeError):
            return []

    def health(self):
        """Reachability and version of Ollama, asked at most every few seconds however
        many callers ask."""
        return self._health.get()

    def _probe(self):
        state = {"ok": False, "url": self.url, "version": None, "error": None}
        try:
            resp = self._get("/api/version")
            resp.raise_for_status()
            state.update(ok=True, version=resp.json().get("version"))
        except (requests.RequestException, ValueError, AttributeError) as exc:
            state["error"] = f"not reachable: {exc}"
        return state

    def matches(self, model):
        return model.startswith("ollama/")

    @staticmethod
    def _name(model):
        name = model[len("ollama/"):]
        if not name:
            raise InvalidRequest("Name the Ollama model: 'ollama/<name>', e.g. "
                                 "'ollama/llama3.2'.", param="model")
        if not _OLLAMA_NAME.match(name):
            raise bad_model(model, "'ollama/' and up to 200 letters, digits and "
                                   ". _ - : [ ] / @")
        return name

    def open(self, chat):
        self._name(chat.model)
        return OllamaRun(self, chat)

    def embed(self, request):
        """Ollama's /api/embed (vectors L2-normalised; `dimensions` keeps the first n)."""
        body = {"model": self._name(request.model), "input": request.inputs}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        try:
            response = self.http().post(self.url + "/api/embed", data=_dumps(body).encode(),
                                        headers=_JSON_HEADERS, timeout=self.timeout)
        except requests.Timeout as exc:
            if isinstance(exc, requests.ConnectTimeout):
                raise self.unreachable(exc) from None
            raise self.silent() from None
        except requests.RequestException as exc:
            raise self.unreachable(exc) from None
        with response:
            if response.status_code != 200:
                raise _ollama_status_error(response, body["model"])
            try:
                reply = response.json()
                vectors = reply["embeddings"]
                if not isinstance(vectors, list) or len(vectors) != len(request.inputs):
                    raise ValueError(f"{len(vectors)} vectors for {len(request.inputs)} inputs")
            except (ValueError, KeyError, TypeError) as exc:
                raise BackendFailed(f"Ollama's embeddings reply is not usable: {exc}") \
                    from None
        return Embedded(vectors, int(reply.get("prompt_eval_count") or 0))

    def gauges(self):
        return (("bridge_ollama_up", "1 if Ollama answered its version request.",
                 int(self.health()["ok"])),)

    def describe(self):
        state = self.health()
        return (f"ollama at {self.url}: "
                f"{'version ' + str(state['version']) if state['ok'] else 'not reachable'}")


class OllamaRun(Run):
    """One /api/chat call; cancel() cuts the socket so Ollama stops generating."""

    def __init__(self, backend, chat):
        super().__init__(backend.workers)
        self.backend = backend
        self.chat = chat
        self.timeout = float("inf")  # Ollama's own pace; OLLAMA_TIMEOUT bounds silence
        self.idle_timeout = backend.settings.ollama_timeout
        self.idle_setting = "OLLAMA_TIMEOUT"
        # Ollama streams steadily once it generates, so producing in the request thread
        # costs nothing but the silent-phase checks, and saves a thread handoff per chunk.
        self.inline = True
        self.cost_usd = 0.0
        self.response = None
        self.session_held = False
        histories = backend.histories
        system, earlier = [], []
        # Only X-Session-ID sessions keep a history here: a recognised conversation's
        # client resends it all anyway (RECOGNISE_CONVERSATIONS).
        self.session_id = None if chat.recognised else chat.session_id
        if self.session_id is not None:
            histories.locks.take_turn(self.session_id, backend.settings.ollama_timeout)
            self.session_held = True
            system, earlier = histories.get(self.session_id)
        # A request with replies in it is the client's whole history: it wins over what
        # the session kept (never both: Ollama would see the history twice).
        self.resent = any(m.role == "assistant" for m in chat.messages)
        if self.resent:
            system, earlier = [], []
        try:
            own_system = chat.system()
            if self.session_id is not None and \
                    sum(m.size for m in own_system) > histories.max_bytes:
                raise InvalidRequest(
                    f"The system messages are over the {histories.max_bytes // 1024} KiB a "
                    "session keeps (OLLAMA_SESSION_MAX_KB); send them without X-Session-ID, "
                    "or shorter.", param="messages", code="session_too_large")
            self.new_messages = chat.turns()
            self.system = own_system
            self.body = ollama_request(chat, (own_system or system) + earlier
                                       + self.new_messages)
        except BaseException:
            self._release()
            raise

    def _release(self):
        if self.session_held:
            self.session_held = False
            self.backend.histories.locks.release(self.session_id)

    def cancel(self):
        super().cancel()
        response = self.response
        if response is not None:
            sock = _response_socket(response)
            try:
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the reader at once
                else:
                    response.close()
            except OSError:
                pass

    def close(self):
        super().close()
        self._release()

    def produce(self):
        backend = self.backend
        request = requests.PreparedRequest()
        request.prepare(method="POST", url=backend.chat_url, headers=_JSON_HEADERS,
                        data=_dumps(self.body).encode("utf-8"))
        try:
            # send() skips Session.request's merging of settings we never use.
            response = backend.http().send(request, stream=True, timeout=backend.timeout)
        except requests.Timeout as exc:
            if isinstance(exc, requests.ConnectTimeout):
                raise backend.unreachable(exc) from None
            raise backend.silent() from None
        except requests.RequestException as exc:
            raise backend.unreachable(exc) from None
        self.response = response
        if self._cancelled.is_set():
            self.cancel()
        try:
            if response.status_code != 200:
                raise self._status_error(response)
            yield PROGRESS
            if self.chat.stream:
                lines = response.iter_lines()
            else:
                lines = [response.content]
            yield from self._read(lines)
        except requests.Timeout:
            raise backend.silent() from None
        except (requests.RequestException, OSError) as exc:
            if self._cancelled.is_set():
                return
            raise BackendFailed(f"Ollama's reply broke off: {exc}") from None
        finally:
            self.response = None
            response.close()

    def _status_error(self, response):
        return _ollama_status_error(response, self.body["model"])

    def _read(self, lines):
        texts, calls = [], []
        for line in lines:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise BackendFailed(f"Ollama sent something that is not JSON: "
                                    f"{line[:200]!r}") from None
            if not isinstance(obj, dict):
                continue
            if obj.get("error"):
                raise BackendFailed(f"Ollama: {obj['error']}")
            message = obj.get("message") or {}
            if message.get("thinking"):
                yield ReasoningDelta(message["thinking"])
            if message.get("content"):
                texts.append(message["content"])
                yield TextDelta(message["content"])
            for raw_call in message.get("tool_calls") or ():
                call = _ollama_tool_call(raw_call)
                yield ToolCallStart(len(calls), call.id, call.name, call.arguments)
                calls.append(call)
            if obj.get("done"):
                reason = "tool_calls" if calls else (
                    "length" if obj.get("done_reason") == "length" else "stop")
                if self.session_id is not None:
                    reply = Message("assistant", (Text("".join(texts)), *calls))
                    self.backend.histories.append(self.session_id, self.system,
                                                  self.new_messages + [reply], self.resent)
                yield Final(reason, int(obj.get("prompt_eval_count") or 0),
                            int(obj.get("eval_count") or 0), 0, 0.0)
                return
        raise BackendFailed("Ollama ended its reply without finishing it (no done).")


# ----------------------------------------------------------------------------------------
# Dialects: requests in, replies out
# ----------------------------------------------------------------------------------------

_ROLES = ("system", "developer", "user", "assistant", "tool")
_SESSION_ID_MAX = 128


def _type_name(value):
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(value), "?")


def _expect(value, types, param, what):
    if isinstance(value, bool) and bool not in types:
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        raise InvalidRequest(f"'{param}' must be {what}, not {_type_name(value)}.",
                             param=param)
    return value


_STR, _OBJ, _OPT_BOOL = ((str,), "a string"), ((dict,), "an object"), \
    ((bool, type(None)), "a boolean")


def _check_fields(obj, param, fields):
    """Type-check the optional `fields` ({key: (types, what)}) that `obj` has."""
    for key, (types, what) in fields.items():
        if key in obj:
            _expect(obj[key], types, f"{param}.{key}", what)


def _number(body, name, low, high, integer=False):
    if body.get(name) is None:
        return None
    value = _expect(body[name], (int,) if integer else (int, float), name,
                    "an integer" if integer else "a number")
    if not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be between {low} and {high}.", param=name)
    return value


def _content_parts(msg, i):
    """A message's content as Text and Image parts, in order."""
    content = msg.get("content")
    param = f"messages[{i}].content"
    if content is None:
        if msg["role"] == "assistant" and msg.get("tool_calls"):
            return ()
        raise InvalidRequest(f"'{param}' is required for a {msg['role']} message.",
                             param=param)
    if isinstance(content, str):
        return (Text(content),)
    _expect(content, (list,), param, "a string or an array of content parts")
    parts = []
    for j, part in enumerate(content):
        pparam = f"{param}[{j}]"
        _expect(part, (dict,), pparam, "an object")
        ptype = part.get("type")
        if ptype == "text":
            parts.append(Text(_expect(part.get("text"), (str,), pparam + ".text", "a string")))
        elif ptype == "image_url":
            image = part.get("image_url")
            if isinstance(image, dict) and "detail" in image and \
                    image["detail"] not in ("auto", "low", "high"):
                raise InvalidRequest("image_url.detail must be auto, low or high.",
                                     param=pparam + ".image_url.detail")
            url = image.get("url") if isinstance(image, dict) else image
            parts.append(Image(_expect(url, (str,), pparam + ".image_url.url", "a string")))
        else:
            raise InvalidRequest(
                f"Content part type {ptype!r} at '{pparam}' is not supported; use 'text'"
                " or 'image_url'.", param=pparam + ".type")
    return tuple(parts)


def _tool_calls(msg, i):
    calls = msg.get("tool_calls")
    if calls is None:
        return ()
    param = f"messages[{i}].tool_calls"
    _expect(calls, (list,), param, "an array")
    out = []
    for j, call in enumerate(calls):
        _expect(call, (dict,), f"{param}[{j}]", "an object")
        _check_fields(call, f"{param}[{j}]", {"id": _STR})
        if "type" in call and call["type"] != "function":
            raise InvalidRequest("A tool call's type must be 'function'.",
                                 param=f"{param}[{j}].type")
        fn = _expect(call.get("function"), (dict,), f"{param}[{j}].function", "an object")
        name = _expect(fn.get("name"), (str,), f"{param}[{j}].function.name", "a string")
        args = fn.get("arguments", "{}")
        _expect(args, (str,), f"{param}[{j}].function.arguments", "a JSON string")
        out.append(ToolCall(str(call.get("id") or ""), name, args))
    return tuple(out)


def _session_id(environ):
    raw = environ.get("HTTP_X_SESSION_ID")
    if raw is None:
        return None
    try:
        raw = raw.encode("latin-1").decode("utf-8")  # WSGI hands headers over as latin-1
    except UnicodeError:
        raw = "\n"  # not UTF-8: refused below
    if not raw or len(raw) > _SESSION_ID_MAX or not raw.isprintable():
        raise InvalidRequest(
            f"X-Session-ID must be 1 to {_SESSION_ID_MAX} printable characters.",
            param="X-Session-ID", code="invalid_session_id")
    return raw


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# A JSON string (its escapes included), to tell structure from text.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)


def _containers_allowed(size):
    """Objects and arrays a body of `size` bytes may hold. Each costs Python 60-200 bytes
    against 2-8 bytes of JSON, so `[{},{},...]` would cost ~25x its size once parsed
    (830 MiB for 32 MiB); at one per 56 bytes, a body costs at most ~10x its size on
    Python 3.10 to 3.13 (measured by testkit/test_security.py)."""
    return 10_000 + size // 56


def _check_structure(raw):
    """InvalidRequest if the body holds more objects and arrays than its size allows."""
    allowed = _containers_allowed(len(raw))
    if raw.count(b"{") + raw.count(b"[") <= allowed:
        return  # the common case: brackets in strings count too, and it is still small
    structure = _JSON_STRING.sub(b"", raw)
    if structure.count(b"{") + structure.count(b"[") > allowed:
        raise InvalidRequest(f"The request body has more than {allowed} JSON objects and "
                             f"arrays; a body of {len(raw)} bytes may have at most that.")


def parse_json_body(raw):
    """The request body as a JSON object, or InvalidRequest."""
    if not raw.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.")
    _check_structure(raw)
    try:
        # Decoded here, not by json.loads: that would let UTF-16 and encoded surrogates in.
        body = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"The request body is not UTF-8 ({exc.reason} at byte "
                             f"{exc.start}); send JSON encoded as UTF-8.") from None
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
    if _SURROGATE_ESCAPE.search(raw):
        # A lone \ud800-style escape parses, but no backend, pipe or database can take it.
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest("The request body has a lone UTF-16 surrogate escape "
                                 "(\\ud800-\\udfff without its pair); send valid Unicode "
                                 "text.") from None
    if not isinstance(body, dict):
        raise InvalidRequest(f"The request body must be a JSON object, not {_type_name(body)}.")
    return body


def bad_model(model, allowed):
    """The 400 for a model name that breaks a rule (`allowed` says the rule)."""
    return InvalidRequest(f"Model name {model[:80]!r} is not valid: use {allowed} (not "
                          "starting with '-'), e.g. 'sonnet', 'claude-code' or "
                          "'ollama/llama3.2'.", param="model", code="model_not_found")


def _checked_model(model):
    """The rule every model name meets before a backend sees it (each has its own too):
    bounded, so a huge name never reaches a row or a metric label."""
    if not _ANY_MODEL_NAME.match(model):
        raise bad_model(model, "up to 256 letters, digits and . _ - : [ ] / @")
    return model


def refused_chat(body, environ, default_model, api="chat"):
    """A stand-in ChatRequest for the usage row of a request that failed validation."""
    model = body.get("model")
    try:
        session_id = _session_id(environ)
    except InvalidRequest:
        session_id = None
    return ChatRequest(model[:200] if isinstance(model, str) and model else default_model,
                       [], stream=body.get("stream") is True, session_id=session_id, api=api)


_REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")


def _sampling_params(body):
    """The sampling parameters given, checked: {name: value}."""
    n = _number(body, "n", 1, 128, integer=True)
    if n is not None and n > 1:
        raise InvalidRequest("Only n=1 is supported.", param="n")
    params = {}
    for name, low, high, integer in (
            ("temperature", 0, 2, False), ("top_p", 0, 1, False),
            ("max_tokens", 1, 10_000_000, True), ("max_completion_tokens", 1, 10_000_000, True),
            ("seed", -2**63, 2**63 - 1, True), ("presence_penalty", -2, 2, False),
            ("frequency_penalty", -2, 2, False), ("top_logprobs", 0, 20, True)):
        value = _number(body, name, low, high, integer)
        if value is not None:
            params[name] = value
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        _expect(stop, (list,), "stop", "a string or an array of strings")
        if len(stop) > 4:
            raise InvalidRequest("'stop' takes at most 4 sequences.", param="stop")
        for k, text in enumerate(stop):
            if not _expect(text, (str,), f"stop[{k}]", "a string"):
                raise InvalidRequest("A stop sequence must not be empty.", param=f"stop[{k}]")
        params["stop"] = stop
    for name, types, what in (("user", (str,), "a string"), ("logprobs", (bool,), "a boolean"),
                              ("logit_bias", (dict,), "an object")):
        if body.get(name) is not None:
            params[name] = _expect(body[name], types, name, what)
    params.pop("user", None)  # an end-user id for abuse tracking: nothing to honour
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort not in _REASONING_EFFORTS:
            raise InvalidRequest("reasoning_effort must be one of "
                                 + ", ".join(_REASONING_EFFORTS) + ".", param="reasoning_effort")
        params["reasoning_effort"] = effort
    return params


def _tool_list(tools, param):
    _expect(tools, (list,), param, "an array")
    for k, tool in enumerate(tools):
        _expect(tool, (dict,), f"{param}[{k}]", "an object")
        if tool.get("type") != "function":
            raise InvalidRequest("Only tools of type 'function' are supported.",
                                 param=f"{param}[{k}].type")
        fn = _expect(tool.get("function"), (dict,), f"{param}[{k}].function", "an object")
        _expect(fn.get("name"), (str,), f"{param}[{k}].function.name", "a string")
        _check_fields(fn, f"{param}[{k}].function", {
            "description": _STR, "parameters": _OBJ, "strict": _OPT_BOOL})
    return tools


def _tool_choice(choice, param):
    if isinstance(choice, dict):
        if choice.get("type") != "function":
            raise InvalidRequest("tool_choice type must be 'function'.", param=param + ".type")
        fn = _expect(choice.get("function"), (dict,), param + ".function", "an object")
        _expect(fn.get("name"), (str,), param + ".function.name", "a string")
    elif choice not in ("none", "auto", "required"):
        raise InvalidRequest("tool_choice must be none, auto, required or a function.",
                             param=param)
    return choice


def _tool_params(body):
    """tools, tool_choice and parallel_tool_calls, checked; the legacy functions and
    function_call become the same (and the reply speaks the legacy way)."""
    params = {}
    if body.get("functions") is not None:
        if body.get("tools") is not None:
            raise InvalidRequest("Send either 'tools' or the legacy 'functions', not both.",
                                 param="functions")
        _expect(body["functions"], (list,), "functions", "an array")
        params["tools"] = _tool_list([{"type": "function", "function": f}
                                      for f in body["functions"]], "functions")
        params["legacy_functions"] = True
        params["parallel_tool_calls"] = False
    elif body.get("tools") is not None:
        params["tools"] = _tool_list(body["tools"], "tools")
    call = body.get("function_call")
    if call is not None:
        if isinstance(call, str) and call not in ("none", "auto"):
            raise InvalidRequest("function_call must be none, auto or {\"name\": ...}.",
                                 param="function_call")
        params["tool_choice"] = _tool_choice(
            {"type": "function", "function": call} if isinstance(call, dict) else call,
            "function_call")
    if body.get("tool_choice") is not None:
        params["tool_choice"] = _tool_choice(body["tool_choice"], "tool_choice")
    if body.get("parallel_tool_calls") is not None:
        params["parallel_tool_calls"] = _expect(body["parallel_tool_calls"], (bool,),
                                                "parallel_tool_calls", "a boolean")
    return params


def _format_param(body):
    """The checked response_format, or None."""
    if body.get("response_format") is None:
        return None
    fmt = _expect(body["response_format"], (dict,), "response_format", "an object")
    if fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise InvalidRequest("response_format type must be text, json_object or "
                             "json_schema.", param="response_format.type")
    if fmt["type"] == "json_schema":
        spec = _expect(fmt.get("json_schema"), (dict,), "response_format.json_schema",
                       "an object")
        _expect(spec.get("name"), (str,), "response_format.json_schema.name", "a string")
        _check_fields(spec, "response_format.json_schema", {
            "schema": _OBJ, "strict": _OPT_BOOL, "description": _STR})
    return fmt


def _chat_params(body):
    """The generation parameters of a chat request, checked: {name: value} of those given."""
    params = _sampling_params(body)
    params.update(_tool_params(body))
    fmt = _format_param(body)
    if fmt is not None:
        params["response_format"] = fmt
    return params


def _message(msg, i):
    """One OpenAI chat message as a Message."""
    _expect(msg, (dict,), f"messages[{i}]", "an object")
    role = msg.get("role")
    if role == "assistant" and msg.get("function_call") is not None:
        if msg.get("tool_calls") is not None:
            raise InvalidRequest("Send tool_calls or the legacy function_call, not both.",
                                 param=f"messages[{i}].function_call")
        return _legacy_message(msg, i)
    if role == "function":
        return _legacy_message(msg, i)
    if role not in _ROLES:
        what = "is missing" if role is None else f"{role!r} is not a known role"
        raise InvalidRequest(f"'messages[{i}].role' {what}; use one of "
                             + ", ".join(_ROLES) + ".", param=f"messages[{i}].role")
    parts = _content_parts(msg, i)
    _check_fields(msg, f"messages[{i}]", {"name": _STR, "tool_call_id": _STR})
    if role == "assistant":
        parts += _tool_calls(msg, i)
    elif role == "tool":
        parts = (ToolResult(msg.get("tool_call_id") or "", Message(role, parts).text),
                 *(p for p in parts if isinstance(p, Image)))
    return Message(role, parts)


def _legacy_message(msg, i):
    """The legacy function-calling messages, as tool calls and results: a function's
    name stands for the call's id (the legacy API calls one function at a time)."""
    name = _expect(msg.get("name"), (str,), f"messages[{i}].name", "a string") \
        if msg["role"] == "function" else None
    if name is not None:
        content = msg.get("content")
        text = "" if content is None else _expect(content, (str,), f"messages[{i}].content",
                                                  "a string")
        return Message("tool", (ToolResult("fn:" + name, text),))
    call = _expect(msg["function_call"], (dict,), f"messages[{i}].function_call", "an object")
    name = _expect(call.get("name"), (str,), f"messages[{i}].function_call.name", "a string")
    args = _expect(call.get("arguments", "{}"), (str,),
                   f"messages[{i}].function_call.arguments", "a JSON string")
    text = msg.get("content") if isinstance(msg.get("content"), str) else ""
    return Message("assistant", (Text(text), ToolCall("fn:" + name, name, args)))


def _stream_flag(body):
    stream = body.get("stream")
    return stream is not None and _expect(stream, (bool,), "stream", "a boolean")


def _include_usage(body):
    """stream_options.include_usage: a stream's last chunk carries the usage."""
    options = body.get("stream_options")
    if options is None:
        return False
    _expect(options, (dict,), "stream_options", "an object")
    wanted = options.get("include_usage")
    return wanted is not None and _expect(wanted, (bool,), "stream_options.include_usage",
                                          "a boolean")


def parse_chat_request(body, environ, default_model):
    """Validate a /v1/chat/completions body; InvalidRequest says what to fix."""
    model = body.get("model")
    if model is None:
        model = default_model
    _expect(model, (str,), "model", "a string")
    if not model.strip():
        raise InvalidRequest("'model' must not be empty.", param="model")
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest("'messages' is required.", param="messages")
    _expect(messages, (list,), "messages", "an array")
    if not messages:
        raise InvalidRequest("'messages' must contain at least one message.", param="messages")
    return ChatRequest(
        _checked_model(model), [_message(msg, i) for i, msg in enumerate(messages)],
        stream=_stream_flag(body), include_usage=_include_usage(body),
        params=_chat_params(body), session_id=_session_id(environ),
        client_gone=environ.get("waitress.client_disconnected") or _never)


def _usage_object(final):
    return {"prompt_tokens": final.prompt_tokens, "completion_tokens": final.completion_tokens,
            "total_tokens": final.prompt_tokens + final.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": final.cached_tokens}}


def _openai_call(call):
    return {"id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": call.arguments}}


def completion_body(chat, turn):
    """The non-streamed reply to a finished turn (an Assembly)."""
    text, calls = turn.text(), turn.tool_calls()
    message = {"role": "assistant", "content": text}
    finish = turn.final.finish_reason
    if calls and chat.params.get("legacy_functions"):
        message["function_call"] = {"name": calls[0].name, "arguments": calls[0].arguments}
        message["content"], finish = text or None, "function_call"
    elif calls:
        message["tool_calls"] = [_openai_call(c) for c in calls]
        message["content"] = text or None
    if turn.reasoning:
        message["reasoning_content"] = "".join(turn.reasoning)
    return {"id": chat.request_id, "object": "chat.completion", "created": chat.created,
            "model": chat.model, "system_fingerprint": None,
            "choices": [{"index": 0, "message": message,
                         "logprobs": None, "finish_reason": finish}],
            "usage": _usage_object(turn.final)}


class Dialect:
    """One API over the conversation model: its requests in, its replies, stream events
    and errors out. The HTTP app runs every dialect's requests alike (validation, usage
    row, backend, limits); a new API is one subclass and its routes."""

    api = None  # its name in usage rows, /metrics and the usage API's filter

    def parse(self, bridge, body, environ):
        """The body as a ChatRequest, or InvalidRequest."""
        raise NotImplementedError

    def prepare(self, bridge, chat):
        """The request once its session is tagged and its caller known."""
        return chat

    def reply(self, chat, turn):
        """The JSON reply to a finished turn (an Assembly)."""
        raise NotImplementedError

    def writer(self, chat):
        """A stream's writer: start(), piece(event), tick(), end(turn), error(exc), each
        bytes to send, and `body`, the whole reply once it ended (or None)."""
        raise NotImplementedError

    def done(self, bridge, chat, turn, body):
        """A turn ended well and its row is written; `body` is the reply (or None)."""

    @staticmethod
    def error_body(exc):
        """An error in this API's shape."""
        return exc.body()


class ChatCompletions(Dialect):
    """OpenAI's /v1/chat/completions."""

    api = "chat"

    def parse(self, bridge, body, environ):
        return parse_chat_request(body, environ, bridge.settings.claude_default_model)

    def reply(self, chat, turn):
        return completion_body(chat, turn)

    def writer(self, chat):
        return ChunkWriter(chat)


class ChunkWriter:
    """SSE chunks of one stream: constant id and created."""

    body = None

    def __init__(self, chat):
        self.legacy = bool(chat.params.get("legacy_functions"))
        self.include_usage = chat.include_usage
        self.head = (f'{{"id":"{chat.request_id}","object":"chat.completion.chunk",'
                     f'"created":{chat.created},"model":{_dumps(chat.model)},'
                     f'"system_fingerprint":null,"choices":')

    def chunk(self, delta, finish_reason=None):
        """One choice delta as an SSE event."""
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return f"data: {self.head}[{_dumps(choice)}]}}\n\n".encode("utf-8")

    def piece(self, event):
        """The chunk for one piece of the turn (an event the Assembly passed on)."""
        if isinstance(event, TextDelta):
            return self.chunk({"content": event.text})
        if isinstance(event, ReasoningDelta):
            return self.chunk({"reasoning_content": event.text})
        if self.legacy:
            call = {"arguments": event.arguments}
            if isinstance(event, ToolCallStart):
                call = {"name": event.name, **call}
            return self.chunk({"function_call": call}) if event.index == 0 else b""
        if isinstance(event, ToolCallStart):
            return self.chunk({"tool_calls": [{
                "index": event.index, "id": event.id, "type": "function",
                "function": {"name": event.name, "arguments": event.arguments}}]})
        return self.chunk({"tool_calls": [{"index": event.index,
                                           "function": {"arguments": event.arguments}}]})

    def start(self):
        return self.chunk({"role": "assistant", "content": ""})

    @staticmethod
    def tick():
        return b": keep-alive\n\n"

    def end(self, turn):
        out = self.chunk({}, self.finish_reason(turn.final))
        if self.include_usage:
            out += self.usage(turn.final)
        return out + b"data: [DONE]\n\n"

    def finish_reason(self, final):
        """The legacy API's name for a turn that ended in a call."""
        return "function_call" if self.legacy and final.finish_reason == "tool_calls" \
            else final.finish_reason

    def usage(self, final):
        """The include_usage chunk."""
        return f"data: {self.head}[],\"usage\":{_dumps(_usage_object(final))}}}\n\n".encode()

    @staticmethod
    def error(exc):
        """An error after the stream began."""
        return f"data: {_dumps(exc.body())}\n\n".encode("utf-8")


def _new_id(prefix):
    return prefix + secrets.token_hex(12)


def _model_name(body, default_model, required=False):
    """The checked model name (the default when absent, unless `required`)."""
    model = body.get("model")
    if model is None:
        if required:
            raise InvalidRequest("'model' is required.", param="model")
        model = default_model
    _expect(model, (str,), "model", "a string")
    if not model.strip():
        raise InvalidRequest("'model' must not be empty.", param="model")
    return _checked_model(model)


def _nested_effort(body, name, efforts):
    """`<name>.effort` of a body, checked, or None."""
    holder = body.get(name)
    if holder is None:
        return None
    effort = _expect(holder, (dict,), name, "an object").get("effort")
    if effort is not None and effort not in efforts:
        raise InvalidRequest(f"{name}.effort must be one of {', '.join(efforts)}.",
                             param=f"{name}.effort")
    return effort


def _sse(kind, data):
    """One named SSE event (the Responses and Messages APIs name theirs)."""
    return f"event: {kind}\ndata: {_dumps(data)}\n\n".encode("utf-8")


_TOOL_TYPE = re.compile(r"[^A-Za-z0-9_.-]")


def _other_tool(k, tool):
    """How a tool no backend can run is named in X-Bridge-Ignored-Params."""
    kind = tool.get("type") if isinstance(tool.get("type"), str) else \
        "deferred" if tool.get("defer_loading") is True else "?"
    return f"tools[{k}] ({_TOOL_TYPE.sub('', kind)[:40]})"


def _message_json(m):
    """A Message as JSON, to keep (a stored response's history)."""
    parts = []
    for p in m.parts:
        if isinstance(p, Text):
            parts.append({"text": p.text})
        elif isinstance(p, Image):
            parts.append({"image": p.url})
        elif isinstance(p, ToolCall):
            parts.append({"call": [p.id, p.name, p.arguments]})
        else:
            parts.append({"result": [p.call_id, p.text]})
    return {"role": m.role, "parts": parts}


def _message_from_json(obj):
    parts = []
    for p in obj["parts"]:
        if "text" in p:
            parts.append(Text(p["text"]))
        elif "image" in p:
            parts.append(Image(p["image"]))
        elif "call" in p:
            parts.append(ToolCall(*p["call"]))
        else:
            parts.append(ToolResult(*p["result"]))
    return Message(obj["role"], tuple(parts))


def _with_message(messages, message):
    """Append a message; an assistant's parts join the assistant message before it (a
    Responses input gives a reply's text and each of its calls as items of their own)."""
    if message.role == "assistant" and messages and messages[-1].role == "assistant":
        messages[-1] = Message("assistant", messages[-1].parts + message.parts)
    else:
        messages.append(message)


# --- OpenAI Responses API -----------------------------------------------------------------

def _response_parts(content, param, role):
    """A Responses message's content as Text and Image parts."""
    if isinstance(content, str):
        return (Text(content),)
    _expect(content, (list,), param, "a string or an array of content parts")
    parts = []
    for j, part in enumerate(content):
        pparam = f"{param}[{j}]"
        _expect(part, (dict,), pparam, "an object")
        kind = part.get("type")
        if kind in ("input_text", "output_text"):
            parts.append(Text(_expect(part.get("text"), (str,), pparam + ".text", "a string")))
        elif kind == "refusal":
            parts.append(Text(_expect(part.get("refusal"), (str,), pparam + ".refusal",
                                      "a string")))
        elif kind == "input_image" and role != "assistant":
            url = part.get("image_url")
            if url is None:
                raise InvalidRequest("Send an input_image as 'image_url' (a data: URL or a "
                                     "link); file ids are not supported.",
                                     param=pparam + ".image_url")
            parts.append(Image(_expect(url, (str,), pparam + ".image_url", "a string")))
        else:
            raise InvalidRequest(
                f"Content part type {str(kind)[:40]!r} at '{pparam}' is not supported; use "
                "input_text, output_text or input_image.", param=pparam + ".type")
    return tuple(parts)


def _response_item(item, param):
    """One Responses input item as a Message, or None for the model's own reasoning."""
    _expect(item, (dict,), param, "an object")
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "system", "developer", "assistant"):
            raise InvalidRequest(f"'{param}.role' must be user, system, developer or "
                                 "assistant.", param=param + ".role")
        return Message(role, _response_parts(item.get("content"), param + ".content", role))
    if kind == "function_call":
        call_id = _expect(item.get("call_id"), (str,), param + ".call_id", "a string")
        name = _expect(item.get("name"), (str,), param + ".name", "a string")
        args = _expect(item.get("arguments", "{}"), (str,), param + ".arguments",
                       "a JSON string")
        return Message("assistant", (ToolCall(call_id, name, args),))
    if kind == "function_call_output":
        call_id = _expect(item.get("call_id"), (str,), param + ".call_id", "a string")
        output = item.get("output")
        parts = _response_parts(output, param + ".output", "tool") if output is not None \
            else (Text(""),)
        text = "\n".join(p.text for p in parts if isinstance(p, Text))
        return Message("tool", (ToolResult(call_id, text),
                                *(p for p in parts if isinstance(p, Image))))
    if kind == "reasoning":
        return None  # the model's own thinking: no backend takes it back
    if kind == "item_reference":
        raise InvalidRequest("Item references are not supported; send the items, or "
                             "continue with previous_response_id.", param=param)
    raise InvalidRequest(f"Input items of type {str(kind)[:40]!r} are not supported; use "
                         "message, function_call or function_call_output.",
                         param=param + ".type")


def _response_input(value):
    if isinstance(value, str):
        return [Message("user", (Text(value),))]
    _expect(value, (list,), "input", "a string or an array of input items")
    messages = []
    for k, item in enumerate(value):
        message = _response_item(item, f"input[{k}]")
        if message is not None:
            _with_message(messages, message)
    return messages


def _response_tools(body, params, ignored):
    """Function tools as chat tools (the others, which no backend runs, are named);
    tool_choice and parallel_tool_calls."""
    tools = body.get("tools")
    if tools is not None:
        _expect(tools, (list,), "tools", "an array")
        chat_tools = []
        for k, tool in enumerate(tools):
            _expect(tool, (dict,), f"tools[{k}]", "an object")
            if tool.get("type") != "function":
                ignored.append(_other_tool(k, tool))
                continue
            _expect(tool.get("name"), (str,), f"tools[{k}].name", "a string")
            _check_fields(tool, f"tools[{k}]", {
                "description": _STR, "parameters": _OBJ, "strict": _OPT_BOOL})
            chat_tools.append({"type": "function", "function": {
                key: tool[key] for key in ("name", "description", "parameters", "strict")
                if tool.get(key) is not None}})
        if chat_tools:
            params["tools"] = chat_tools
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        if choice.get("type") != "function":
            raise InvalidRequest("tool_choice must be none, auto, required or a function.",
                                 param="tool_choice.type")
        name = _expect(choice.get("name"), (str,), "tool_choice.name", "a string")
        params["tool_choice"] = {"type": "function", "function": {"name": name}}
    elif choice is not None:
        params["tool_choice"] = _tool_choice(choice, "tool_choice")
    if body.get("parallel_tool_calls") is not None:
        params["parallel_tool_calls"] = _expect(body["parallel_tool_calls"], (bool,),
                                                "parallel_tool_calls", "a boolean")


def _response_format(body, params, ignored):
    """text.format as the chat response_format."""
    text = body.get("text")
    if text is None:
        return {"format": {"type": "text"}}
    _expect(text, (dict,), "text", "an object")
    if text.get("verbosity") is not None:
        ignored.append("text.verbosity")
    fmt = text.get("format")
    if fmt is None:
        return {"format": {"type": "text"}}
    _expect(fmt, (dict,), "text.format", "an object")
    kind = fmt.get("type")
    if kind == "json_schema":
        _expect(fmt.get("name"), (str,), "text.format.name", "a string")
        _expect(fmt.get("schema"), (dict,), "text.format.schema", "an object")
        _check_fields(fmt, "text.format", {"strict": _OPT_BOOL, "description": _STR})
        params["response_format"] = {"type": "json_schema", "json_schema": {
            k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}}
    elif kind == "json_object":
        params["response_format"] = {"type": "json_object"}
    elif kind != "text":
        raise InvalidRequest("text.format type must be text, json_object or json_schema.",
                             param="text.format.type")
    return {"format": fmt}


_RESPONSES_REFUSED = {
    "background": "Background responses are not supported; leave 'background' out.",
    "conversation": "Conversation objects are not supported; use previous_response_id.",
    "prompt": "Prompt templates are not supported; send 'input' and 'instructions'.",
}


def _responses_params(body, ignored):
    """The generation parameters of a Responses request, as the chat names them."""
    for name, message in _RESPONSES_REFUSED.items():
        if body.get(name) is not None and not (name == "background" and body[name] is False):
            raise InvalidRequest(message, param=name)
    params = {}
    for name, low, high, integer, as_name in (
            ("temperature", 0, 2, False, "temperature"), ("top_p", 0, 1, False, "top_p"),
            ("max_output_tokens", 1, 10_000_000, True, "max_tokens"),
            ("top_logprobs", 0, 20, True, "top_logprobs")):
        value = _number(body, name, low, high, integer)
        if value is not None:
            params[as_name] = value
    effort = _nested_effort(body, "reasoning", _REASONING_EFFORTS)
    if effort is not None:
        params["reasoning_effort"] = effort
    if body.get("max_tool_calls") is not None:
        ignored.append("max_tool_calls")
    _response_tools(body, params, ignored)
    return params


class Responses(Dialect):
    """OpenAI's /v1/responses: stored responses continue by previous_response_id."""

    api = "responses"

    def parse(self, bridge, body, environ):
        model = _model_name(body, bridge.settings.claude_default_model)
        if body.get("input") is None:
            raise InvalidRequest("'input' is required.", param="input")
        messages = _response_input(body["input"])
        instructions = body.get("instructions")
        if instructions is not None:
            _expect(instructions, (str,), "instructions", "a string")
        if instructions:
            messages.insert(0, Message("system", (Text(instructions),)))
        ignored = []
        params = _responses_params(body, ignored)
        text = _response_format(body, params, ignored)
        store = body.get("store")
        previous = body.get("previous_response_id")
        if previous is not None:
            _expect(previous, (str,), "previous_response_id", "a string")
        metadata = body.get("metadata")
        if metadata is not None:
            _expect(metadata, (dict,), "metadata", "an object")
        if not messages and previous is None:
            raise InvalidRequest("'input' must have at least one item.", param="input")
        echo = {"instructions": instructions or None, "previous_response_id": previous,
                "store": store is None or _expect(store, (bool,), "store", "a boolean"),
                "metadata": metadata or {}, "text": text, "ignored": ignored,
                "tools": [t for t in body.get("tools") or () if t.get("type") == "function"],
                "tool_choice": body.get("tool_choice") or "auto",
                "parallel_tool_calls": params.get("parallel_tool_calls", True),
                "reasoning": {"effort": params.get("reasoning_effort"), "summary": None},
                "max_output_tokens": params.get("max_tokens"),
                "temperature": params.get("temperature"), "top_p": params.get("top_p")}
        return ChatRequest(model, messages, stream=_stream_flag(body), include_usage=True,
                           params=params, session_id=_session_id(environ),
                           request_id=_new_id("resp_"), api=self.api, echo=echo,
                           client_gone=environ.get("waitress.client_disconnected") or _never)

    def prepare(self, bridge, chat):
        """A continued response gets its predecessor's history and session."""
        previous = chat.echo["previous_response_id"]
        if previous is None:
            if chat.session_id is None and chat.echo["store"] and \
                    not bridge.conversations.enabled:
                # Its successor continues the same session.
                chat = dataclasses.replace(chat, session_id="c" + secrets.token_hex(8),
                                           recognised=True)
            return chat
        found = bridge.store.get_response(previous, chat.owner)
        for _ in range(5 if bridge.store.shared else 0):  # another bridge's may be landing
            if found is not None:
                break
            time.sleep(0.05)
            found = bridge.store.get_response(previous, chat.owner)
        if found is None:
            raise InvalidRequest(f"Previous response with id {previous[:80]!r} not found.",
                                 param="previous_response_id",
                                 code="previous_response_not_found")
        session_id, _, history = found
        head = 1 if chat.echo["instructions"] else 0
        earlier = [_message_from_json(m) for m in json.loads(history)]
        messages = [*chat.messages[:head], *earlier, *chat.messages[head:]]
        if chat.session_id is None and session_id is not None:
            chat = dataclasses.replace(chat, session_id=session_id, recognised=True)
        return dataclasses.replace(chat, messages=messages)

    def done(self, bridge, chat, turn, body):
        if not chat.echo["store"] or body is None:
            return
        head = 1 if chat.echo["instructions"] else 0
        history = [*chat.messages[head:], turn.message()]
        bridge.store.put_response(chat.request_id, chat.owner, chat.session_id,
                                  _dumps(body), _dumps([_message_json(m) for m in history]))

    @staticmethod
    def response(chat, output, status, usage=None, error=None):
        """The response object."""
        echo = chat.echo
        return {
            "id": chat.request_id, "object": "response", "created_at": chat.created,
            "status": status, "background": False, "error": error,
            "incomplete_details": {"reason": "max_output_tokens"}
            if status == "incomplete" else None,
            "instructions": echo["instructions"], "max_output_tokens": echo["max_output_tokens"],
            "model": chat.model, "output": output,
            "parallel_tool_calls": echo["parallel_tool_calls"],
            "previous_response_id": echo["previous_response_id"], "reasoning": echo["reasoning"],
            "store": echo["store"], "temperature": echo["temperature"], "text": echo["text"],
            "tool_choice": echo["tool_choice"], "tools": echo["tools"], "top_p": echo["top_p"],
            "truncation": "disabled", "usage": usage, "user": None, "metadata": echo["metadata"]}

    @staticmethod
    def usage(final):
        return {"input_tokens": final.prompt_tokens,
                "input_tokens_details": {"cached_tokens": final.cached_tokens,
                                         "cache_write_tokens": 0},
                "output_tokens": final.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": final.prompt_tokens + final.completion_tokens}

    def reply(self, chat, turn):
        status = "incomplete" if turn.final.finish_reason == "length" else "completed"
        output = []
        if turn.reasoning:
            output.append({"id": _new_id("rs_"), "type": "reasoning", "summary": [
                {"type": "summary_text", "text": "".join(turn.reasoning)}]})
        text, calls = turn.text(), turn.tool_calls()
        if text or not calls:
            output.append(_output_message(_new_id("msg_"), text, status))
        output.extend(_output_call(_new_id("fc_"), call) for call in calls)
        return self.response(chat, output, status, self.usage(turn.final))

    def writer(self, chat):
        return ResponseEvents(self, chat)


def _output_message(item_id, text, status="completed"):
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [],
                         "logprobs": []}]}


def _output_call(item_id, call, status="completed"):
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call.id,
            "name": call.name, "arguments": call.arguments}


class _OpenItem:
    """An output item being streamed."""

    def __init__(self, kind, index, item_id, call=None):
        self.kind, self.index, self.id, self.call = kind, index, item_id, call
        self.pieces = []


class ResponseEvents:
    """A Responses stream: typed events, numbered; one output item open at a time."""

    def __init__(self, dialect, chat):
        self.dialect = dialect
        self.chat = chat
        self.seq = 0
        self.output = []  # finished items, and None where one is open
        self.open = None
        self.calls = {}  # a call's index in the turn -> its _OpenItem
        self.body = None

    def _event(self, kind, **fields):
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return _sse(kind, data)

    def start(self):
        response = self.dialect.response(self.chat, [], "in_progress")
        return (self._event("response.created", response=response)
                + self._event("response.in_progress", response=response))

    @staticmethod
    def tick():
        return b": keep-alive\n\n"

    def _begin(self, kind, item, call=None):
        out = self._close()
        self.open = _OpenItem(kind, len(self.output), item["id"], call)
        self.output.append(None)
        out += self._event("response.output_item.added", output_index=self.open.index,
                           item=item)
        if kind == "message":
            out += self._event("response.content_part.added", item_id=self.open.id,
                               output_index=self.open.index, content_index=0,
                               part={"type": "output_text", "text": "", "annotations": []})
        elif kind == "reasoning":
            out += self._event("response.reasoning_summary_part.added", item_id=self.open.id,
                               output_index=self.open.index, summary_index=0,
                               part={"type": "summary_text", "text": ""})
        return out

    def piece(self, event):
        if isinstance(event, TextDelta):
            out = b"" if self.open and self.open.kind == "message" else self._begin(
                "message", {"id": _new_id("msg_"), "type": "message",
                                    "status": "in_progress", "role": "assistant",
                                    "content": []})
            self.open.pieces.append(event.text)
            return out + self._event("response.output_text.delta", item_id=self.open.id,
                                     output_index=self.open.index, content_index=0,
                                     delta=event.text, logprobs=[])
        if isinstance(event, ReasoningDelta):
            out = b"" if self.open and self.open.kind == "reasoning" else self._begin(
                "reasoning", {"id": _new_id("rs_"), "type": "reasoning", "summary": []})
            self.open.pieces.append(event.text)
            return out + self._event("response.reasoning_summary_text.delta",
                                     item_id=self.open.id, output_index=self.open.index,
                                     summary_index=0, delta=event.text)
        if isinstance(event, ToolCallStart):
            call = ToolCall(event.id, event.name, "")
            out = self._begin("call", _output_call(_new_id("fc_"), call, "in_progress"),
                              call)
            self.calls[event.index] = self.open
            return out + (self._arguments(self.open, event.arguments) if event.arguments
                          else b"")
        return self._arguments(self.calls[event.index], event.arguments)

    def _arguments(self, item, piece):
        item.pieces.append(piece)
        return self._event("response.function_call_arguments.delta", item_id=item.id,
                           output_index=item.index, delta=piece)

    def _close(self, status="completed"):
        item, self.open = self.open, None
        if item is None:
            return b""
        text = "".join(item.pieces)
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == "message":
            part = {"type": "output_text", "text": text, "annotations": []}
            out = (self._event("response.output_text.done", **where, content_index=0,
                               text=text, logprobs=[])
                   + self._event("response.content_part.done", **where, content_index=0,
                                 part=part))
            done = _output_message(item.id, text, status)
        elif item.kind == "reasoning":
            part = {"type": "summary_text", "text": text}
            out = (self._event("response.reasoning_summary_text.done", **where,
                               summary_index=0, text=text)
                   + self._event("response.reasoning_summary_part.done", **where,
                                 summary_index=0, part=part))
            done = {"id": item.id, "type": "reasoning", "summary": [part]}
        else:
            out = self._event("response.function_call_arguments.done", **where,
                              name=item.call.name, arguments=text)
            done = _output_call(item.id, dataclasses.replace(item.call, arguments=text))
        self.output[item.index] = done
        return out + self._event("response.output_item.done", output_index=item.index,
                                 item=done)

    def end(self, turn):
        status = "incomplete" if turn.final.finish_reason == "length" else "completed"
        out = b"" if self.output or self.open else self.piece(TextDelta(""))
        out += self._close(status)
        self.body = self.dialect.response(self.chat, self.output, status,
                                          self.dialect.usage(turn.final))
        return out + self._event(f"response.{status}", response=self.body)

    def error(self, exc):
        output = [item for item in self.output if item is not None]
        failed = self.dialect.response(self.chat, output, "failed", error={
            "code": exc.code or exc.type, "message": exc.message})
        return self._event("response.failed", response=failed)


# --- Anthropic Messages API -----------------------------------------------------------------

_ANTHROPIC_ERRORS = {400: "invalid_request_error", 401: "authentication_error",
                     403: "permission_error", 404: "not_found_error",
                     413: "request_too_large", 429: "rate_limit_error",
                     503: "overloaded_error", 529: "overloaded_error"}
# Anthropic's stop reasons for the bridge's finish reasons.
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
_ANTHROPIC_EFFORTS = ("low", "medium", "high", "xhigh", "max")
# thinking.budget_tokens -> the effort it asks for, at most.
_BUDGET_EFFORTS = ((2048, "low"), (8192, "medium"), (32768, "high"))


def _anthropic_image(source, param):
    _expect(source, (dict,), param, "an object")
    kind = source.get("type")
    if kind == "base64":
        media = _expect(source.get("media_type"), (str,), param + ".media_type", "a string")
        data = _expect(source.get("data"), (str,), param + ".data", "a string")
        return f"data:{media};base64,{data}"
    if kind == "url":
        return _expect(source.get("url"), (str,), param + ".url", "a string")
    raise InvalidRequest("An image source must be of type base64 or url.", param=param + ".type")


def _anthropic_result(block, param):
    """A tool_result block as a tool message."""
    call_id = _expect(block.get("tool_use_id"), (str,), param + ".tool_use_id", "a string")
    content = block.get("content", "")
    texts, images = [], []
    if isinstance(content, str):
        texts.append(content)
    else:
        _expect(content, (list,), param + ".content", "a string or an array of blocks")
        for j, part in enumerate(content):
            pparam = f"{param}.content[{j}]"
            _expect(part, (dict,), pparam, "an object")
            if part.get("type") == "text":
                texts.append(_expect(part.get("text"), (str,), pparam + ".text", "a string"))
            elif part.get("type") == "image":
                images.append(Image(_anthropic_image(part.get("source"), pparam + ".source")))
            else:
                raise InvalidRequest("A tool_result's content blocks must be text or image.",
                                     param=pparam + ".type")
    text = "\n".join(texts)
    if block.get("is_error") is True:
        text = "Error: " + text  # the backends take a result's text only
    return Message("tool", (ToolResult(call_id, text), *images))


def _anthropic_block(block, param, role):
    """A content block as a part, a tool message (a result), or None (thinking)."""
    _expect(block, (dict,), param, "an object")
    kind = block.get("type")
    if kind == "text":
        return Text(_expect(block.get("text"), (str,), param + ".text", "a string"))
    if kind == "image" and role == "user":
        return Image(_anthropic_image(block.get("source"), param + ".source"))
    if kind == "tool_use" and role == "assistant":
        call_id = _expect(block.get("id"), (str,), param + ".id", "a string")
        name = _expect(block.get("name"), (str,), param + ".name", "a string")
        return ToolCall(call_id, name, _dumps(_expect(block.get("input", {}), (dict,),
                                                     param + ".input", "an object")))
    if kind == "tool_result" and role == "user":
        return _anthropic_result(block, param)
    if kind in ("thinking", "redacted_thinking") and role == "assistant":
        return None  # the model's own: no backend takes it back
    raise InvalidRequest(f"Content block type {str(kind)[:40]!r} is not supported in a "
                         f"{role} message.", param=param + ".type")


def _anthropic_messages(messages):
    _expect(messages, (list,), "messages", "an array")
    if not messages:
        raise InvalidRequest("'messages' must contain at least one message.", param="messages")
    out = []
    for i, msg in enumerate(messages):
        param = f"messages[{i}]"
        _expect(msg, (dict,), param, "an object")
        role = msg.get("role")
        if role == "system":  # (Claude Code sends its reminders so)
            out.extend(_anthropic_system(msg.get("content"), param + ".content"))
            continue
        if role not in ("user", "assistant"):
            raise InvalidRequest(f"'{param}.role' must be user or assistant.",
                                 param=param + ".role")
        content = msg.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        _expect(content, (list,), param + ".content", "a string or an array of blocks")
        parts, results = [], []
        for j, block in enumerate(content):
            part = _anthropic_block(block, f"{param}.content[{j}]", role)
            if isinstance(part, Message):
                results.append(part)
            elif part is not None:
                parts.append(part)
        out.extend(results)  # results answer the reply before: they come first
        if parts or not results:
            _with_message(out, Message(role, tuple(parts)))
    return out


def _anthropic_system(system, param="system"):
    if system is None:
        return []
    if isinstance(system, str):
        return [Message("system", (Text(system),))] if system else []
    _expect(system, (list,), param, "a string or an array of text blocks")
    texts = []
    for k, block in enumerate(system):
        _expect(block, (dict,), f"{param}[{k}]", "an object")
        if block.get("type") != "text":
            raise InvalidRequest("System blocks must be of type text.",
                                 param=f"{param}[{k}].type")
        texts.append(_expect(block.get("text"), (str,), f"{param}[{k}].text", "a string"))
    return [Message("system", (Text("\n\n".join(texts)),))] if any(texts) else []


def _anthropic_tools(body, params, ignored):
    tools = body.get("tools")
    if tools is not None:
        _expect(tools, (list,), "tools", "an array")
        chat_tools = []
        for k, tool in enumerate(tools):
            _expect(tool, (dict,), f"tools[{k}]", "an object")
            if tool.get("type") not in (None, "custom") or tool.get("defer_loading") is True:
                # A server tool (no backend has it), or one for a tool search to load later.
                ignored.append(_other_tool(k, tool))
                continue
            name = _expect(tool.get("name"), (str,), f"tools[{k}].name", "a string")
            _check_fields(tool, f"tools[{k}]", {"description": _STR, "input_schema": _OBJ})
            fn = {"name": name, "parameters": tool.get("input_schema") or {"type": "object"}}
            if tool.get("description"):
                fn["description"] = tool["description"]
            chat_tools.append({"type": "function", "function": fn})
        if chat_tools:
            params["tools"] = chat_tools
    choice = body.get("tool_choice")
    if choice is not None:
        _expect(choice, (dict,), "tool_choice", "an object")
        kind = choice.get("type")
        if kind == "tool":
            name = _expect(choice.get("name"), (str,), "tool_choice.name", "a string")
            params["tool_choice"] = {"type": "function", "function": {"name": name}}
        elif kind in ("auto", "any", "none"):
            params["tool_choice"] = {"any": "required"}.get(kind, kind)
        else:
            raise InvalidRequest("tool_choice type must be auto, any, tool or none.",
                                 param="tool_choice.type")
        if choice.get("disable_parallel_tool_use") is True:
            params["parallel_tool_calls"] = False


def _anthropic_thinking(thinking, params):
    _expect(thinking, (dict,), "thinking", "an object")
    kind = thinking.get("type")
    if kind == "enabled":
        budget = _number(thinking, "budget_tokens", 1, 10_000_000, integer=True)
        if budget is None:
            raise InvalidRequest("thinking.budget_tokens is required.",
                                 param="thinking.budget_tokens")
        params["reasoning_effort"] = next(
            (effort for most, effort in _BUDGET_EFFORTS if budget <= most), "xhigh")
    elif kind == "adaptive":
        params["reasoning_effort"] = "medium"
    elif kind == "disabled":
        params["reasoning_effort"] = "none"
    else:
        raise InvalidRequest("thinking.type must be enabled, adaptive or disabled.",
                             param="thinking.type")


def _anthropic_params(body, ignored):
    params = {}
    max_tokens = _number(body, "max_tokens", 1, 10_000_000, integer=True)
    if max_tokens is None:
        raise InvalidRequest("'max_tokens' is required.", param="max_tokens")
    params["max_tokens"] = max_tokens
    for name, high in (("temperature", 1), ("top_p", 1)):
        value = _number(body, name, 0, high)
        if value is not None:
            params[name] = value
    top_k = _number(body, "top_k", 0, 1_000_000, integer=True)
    if top_k is not None:
        params["top_k"] = top_k
    stops = body.get("stop_sequences")
    if stops is not None:
        _expect(stops, (list,), "stop_sequences", "an array of strings")
        for k, text in enumerate(stops):
            if not _expect(text, (str,), f"stop_sequences[{k}]", "a string"):
                raise InvalidRequest("A stop sequence must not be empty.",
                                     param=f"stop_sequences[{k}]")
        if stops:
            params["stop"] = stops
    if body.get("thinking") is not None:
        _anthropic_thinking(body["thinking"], params)
    effort = _nested_effort(body, "output_config", _ANTHROPIC_EFFORTS)
    if effort is not None:
        params["reasoning_effort"] = {"max": "xhigh"}.get(effort, effort)
    _anthropic_tools(body, params, ignored)
    if body.get("metadata") is not None:
        _expect(body["metadata"], (dict,), "metadata", "an object")
    if body.get("mcp_servers") is not None:
        raise InvalidRequest("MCP servers in the request are not supported.",
                             param="mcp_servers")
    return params


class AnthropicMessages(Dialect):
    """Anthropic's /v1/messages."""

    api = "messages"

    def parse(self, bridge, body, environ):
        model = _model_name(body, None, required=True)
        messages = _anthropic_system(body.get("system"))
        messages += _anthropic_messages(body.get("messages"))
        ignored = []
        params = _anthropic_params(body, ignored)
        return ChatRequest(model, messages, stream=_stream_flag(body), params=params,
                           session_id=_session_id(environ), request_id=_new_id("msg_"),
                           api=self.api, echo={"ignored": ignored},
                           client_gone=environ.get("waitress.client_disconnected") or _never)

    @staticmethod
    def error_body(exc):
        return {"type": "error", "error": {
            "type": _ANTHROPIC_ERRORS.get(exc.status, "invalid_request_error"
                                          if exc.status < 500 else "api_error"),
            "message": exc.message}}

    @staticmethod
    def stop(final):
        """stop_reason and stop_sequence."""
        if final.stop_sequence is not None:
            return "stop_sequence", final.stop_sequence
        return _STOP_REASONS.get(final.finish_reason, "end_turn"), None

    @staticmethod
    def usage(final):
        return {"input_tokens": max(0, final.prompt_tokens - final.cached_tokens),
                "output_tokens": final.completion_tokens,
                "cache_read_input_tokens": final.cached_tokens,
                "cache_creation_input_tokens": 0}

    def reply(self, chat, turn):
        content = []
        if turn.reasoning:
            content.append({"type": "thinking", "thinking": "".join(turn.reasoning),
                            "signature": ""})
        if turn.text():
            content.append({"type": "text", "text": turn.text()})
        content.extend({"type": "tool_use", "id": c.id, "name": c.name,
                        "input": _call_input(c.arguments)} for c in turn.tool_calls())
        reason, sequence = self.stop(turn.final)
        return {"id": chat.request_id, "type": "message", "role": "assistant",
                "model": chat.model, "content": content, "stop_reason": reason,
                "stop_sequence": sequence, "usage": self.usage(turn.final)}

    def writer(self, chat):
        return MessageEvents(self, chat)


def _call_input(arguments):
    """A call's JSON arguments as the object Anthropic's tool_use carries."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class MessageEvents:
    """An Anthropic Messages stream: one content block open at a time."""

    body = None

    def __init__(self, dialect, chat):
        self.dialect = dialect
        self.chat = chat
        self.index = -1
        self.open = None  # "text", "thinking" or a call's index
        self.blocks = {}  # a call's index -> its block's index

    def start(self):
        message = {"id": self.chat.request_id, "type": "message", "role": "assistant",
                   "model": self.chat.model, "content": [], "stop_reason": None,
                   "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
        return (_sse("message_start", {"type": "message_start", "message": message})
                + self.tick())

    @staticmethod
    def tick():
        return _sse("ping", {"type": "ping"})

    def _begin(self, kind, block):
        out = self._stop()
        self.index += 1
        self.open = kind
        return out + _sse("content_block_start", {"type": "content_block_start",
                                                  "index": self.index, "content_block": block})

    def _stop(self):
        if self.open is None:
            return b""
        self.open = None
        return _sse("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def _delta(self, index, delta):
        return _sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                            "delta": delta})

    def piece(self, event):
        if isinstance(event, TextDelta):
            out = b"" if self.open == "text" else self._begin("text", {"type": "text",
                                                                       "text": ""})
            return out + self._delta(self.index, {"type": "text_delta", "text": event.text})
        if isinstance(event, ReasoningDelta):
            out = b"" if self.open == "thinking" else self._begin(
                "thinking", {"type": "thinking", "thinking": "", "signature": ""})
            return out + self._delta(self.index, {"type": "thinking_delta",
                                                  "thinking": event.text})
        if isinstance(event, ToolCallStart):
            out = self._begin(event.index, {"type": "tool_use", "id": event.id,
                                            "name": event.name, "input": {}})
            self.blocks[event.index] = self.index
        else:
            out = b""
        if not event.arguments:
            return out
        return out + self._delta(self.blocks[event.index], {"type": "input_json_delta",
                                                            "partial_json": event.arguments})

    def end(self, turn):
        reason, sequence = self.dialect.stop(turn.final)
        return (self._stop()
                + _sse("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": reason,
                                                   "stop_sequence": sequence},
                                         "usage": self.dialect.usage(turn.final)})
                + _sse("message_stop", {"type": "message_stop"}))

    def error(self, exc):
        return _sse("error", self.dialect.error_body(exc))


def count_tokens_estimate(chat, body):
    """Input tokens of a Messages request, estimated: no backend counts them without
    running the model (about 4 characters a token; an image counts 1,600)."""
    chars = sum(len(p.text) if isinstance(p, (Text, ToolResult)) else
                len(p.name) + len(p.arguments) if isinstance(p, ToolCall) else 6400
                for m in chat.messages for p in m.parts)
    chars += len(_dumps(chat.params.get("tools") or []))
    return max(1, (chars + 3) // 4)


# --- OpenAI legacy completions ---------------------------------------------------------------

class Completions(Dialect):
    """OpenAI's legacy /v1/completions: the prompt goes to the model as a user message."""

    api = "completions"

    def parse(self, bridge, body, environ):
        model = _model_name(body, bridge.settings.claude_default_model)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if prompt is None:
            raise InvalidRequest("'prompt' is required.", param="prompt")
        if isinstance(prompt, list):
            raise InvalidRequest("'prompt' must be one string (or a list of one): several "
                                 "prompts or token arrays are not supported.", param="prompt")
        _expect(prompt, (str,), "prompt", "a string")
        if not prompt:
            raise InvalidRequest("'prompt' must not be empty.", param="prompt")
        if body.get("suffix") not in (None, ""):
            raise InvalidRequest("'suffix' (insertion) is not supported.", param="suffix")
        best_of = _number(body, "best_of", 1, 20, integer=True)
        if best_of is not None and best_of > 1:
            raise InvalidRequest("Only best_of=1 is supported.", param="best_of")
        echo = body.get("echo")
        echo = echo is not None and _expect(echo, (bool,), "echo", "a boolean")
        logprobs = _number(body, "logprobs", 0, 5, integer=True)
        params = _sampling_params({k: v for k, v in body.items() if k != "logprobs"})
        if logprobs is not None:
            params["logprobs"] = True
        return ChatRequest(model, [Message("user", (Text(prompt),))],
                           stream=_stream_flag(body), include_usage=_include_usage(body),
                           params=params, session_id=_session_id(environ),
                           request_id=_new_id("cmpl-"), api=self.api,
                           echo={"prompt": prompt if echo else ""},
                           client_gone=environ.get("waitress.client_disconnected") or _never)

    @staticmethod
    def finish(final):
        return "length" if final.finish_reason == "length" else "stop"

    def reply(self, chat, turn):
        return {"id": chat.request_id, "object": "text_completion", "created": chat.created,
                "model": chat.model, "system_fingerprint": None,
                "choices": [{"text": chat.echo["prompt"] + turn.text(), "index": 0,
                             "logprobs": None, "finish_reason": self.finish(turn.final)}],
                "usage": _usage_object(turn.final)}

    def writer(self, chat):
        return CompletionChunks(self, chat)


class CompletionChunks:
    """A legacy completions stream."""

    body = None

    def __init__(self, dialect, chat):
        self.dialect = dialect
        self.chat = chat
        self.head = {"id": chat.request_id, "object": "text_completion",
                     "created": chat.created, "model": chat.model, "system_fingerprint": None}

    def chunk(self, text, finish=None):
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        return f"data: {_dumps({**self.head, 'choices': [choice]})}\n\n".encode("utf-8")

    def start(self):
        return self.chunk(self.chat.echo["prompt"]) if self.chat.echo["prompt"] else b""

    tick = staticmethod(ChunkWriter.tick)
    error = staticmethod(ChunkWriter.error)

    def piece(self, event):
        return self.chunk(event.text) if isinstance(event, TextDelta) else b""

    def end(self, turn):
        out = self.chunk("", self.dialect.finish(turn.final))
        if self.chat.include_usage:
            usage = {**self.head, "choices": [], "usage": _usage_object(turn.final)}
            out += f"data: {_dumps(usage)}\n\n".encode("utf-8")
        return out + b"data: [DONE]\n\n"


# --- OpenAI embeddings -------------------------------------------------------------------------

class EmbeddingRequest(typing.NamedTuple):
    model: str
    inputs: list  # of str
    dimensions: int = None


class Embedded(typing.NamedTuple):
    vectors: list  # of lists of floats, one per input
    prompt_tokens: int


_EMBED_INPUTS_MAX = 2048


def parse_embedding_request(body, default_model):
    model = _model_name(body, default_model)
    inputs = body.get("input")
    if inputs is None:
        raise InvalidRequest("'input' is required.", param="input")
    if isinstance(inputs, str):
        inputs = [inputs]
    _expect(inputs, (list,), "input", "a string or an array of strings")
    if not inputs:
        raise InvalidRequest("'input' must not be empty.", param="input")
    if len(inputs) > _EMBED_INPUTS_MAX:
        raise InvalidRequest(f"'input' takes at most {_EMBED_INPUTS_MAX} items.", param="input")
    for k, text in enumerate(inputs):
        if not isinstance(text, str):
            raise InvalidRequest(
                "Token arrays are not supported (Ollama embeds text only): send strings. "
                "LangChain's OpenAIEmbeddings sends tokens unless check_embedding_ctx_length"
                "=False.", param=f"input[{k}]", code="token_input_not_supported")
        if not text:
            raise InvalidRequest("An input must not be empty.", param=f"input[{k}]")
    fmt = body.get("encoding_format")
    if fmt not in (None, "float", "base64"):
        raise InvalidRequest("encoding_format must be float or base64.",
                             param="encoding_format")
    if body.get("user") is not None:
        _expect(body["user"], (str,), "user", "a string")
    return EmbeddingRequest(model, inputs, _number(body, "dimensions", 1, 65536, integer=True))


def embedding_body(request, embedded, base64_out):
    def encoded(vector):
        if not base64_out:
            return vector
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return {"object": "list", "model": request.model,
            "data": [{"object": "embedding", "index": i, "embedding": encoded(v)}
                     for i, v in enumerate(embedded.vectors)],
            "usage": {"prompt_tokens": embedded.prompt_tokens,
                      "total_tokens": embedded.prompt_tokens}}


# ----------------------------------------------------------------------------------------
# HTTP app
# ----------------------------------------------------------------------------------------

_JSON = "application/json"
# A session's id outside its request: a 16-hex tag (X-Session-ID) or c + 16 hex (recognised).
_SESSION_TAG = re.compile(r"^c?[0-9a-f]{16}\Z")
# /v1/usage/recent answers at most this many rows.
_RECENT_MAX = 1000


def _ts_seconds(ts):
    return datetime.datetime.strptime(ts[:19], _TS_FORMAT).replace(
        tzinfo=datetime.timezone.utc).timestamp()


def _json_response(obj, status=200, headers=None):
    body = _dumps(obj).encode("utf-8")
    response = bottle.HTTPResponse(body=body, status=status)
    response.content_type = _JSON
    for name, value in (headers or {}).items():
        response.set_header(name, value)
    return response


def _error_body(exc, path):
    """The error in the shape of the API the path belongs to."""
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return AnthropicMessages.error_body(exc)
    return exc.body()


def _error_response(exc, path=None):
    body = _error_body(exc, bottle.request.path if path is None else path)
    return _json_response(body, exc.status, exc.headers)


def _answer_errors(callback):
    """The Bottle plugin that answers a BridgeError a route raises with its OpenAI error."""
    def route(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except BridgeError as exc:
            return _error_response(exc)
    return route


# Histogram buckets, in seconds: from a quick Ollama reply to a long agentic Claude turn.
_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Distinct model labels kept; model names come from clients, so the rest are "other".
_MAX_MODEL_LABELS = 100


def _label(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Counters and histograms since start, rendered in the Prometheus text format."""

    def __init__(self):
        self.lock = threading.Lock()
        self.in_flight = 0
        self.requests = collections.Counter()  # (model, provider, api, outcome) -> n
        self.tokens = collections.Counter()  # (model, provider, kind) -> n
        self.cost = collections.Counter()  # (model, provider) -> USD
        self.models = set()
        self.histograms = {"duration": {}, "ttft": {}}  # name -> provider -> [counts, sum]

    def started(self):
        """A chat request began."""
        with self.lock:
            self.in_flight += 1

    def finished(self, row, valid_model=True):
        """A chat request ended with this usage row."""
        provider = row["provider"]
        with self.lock:
            self.in_flight -= 1
            model = row["model"] if valid_model else "invalid"
            if model not in self.models:
                if len(self.models) >= _MAX_MODEL_LABELS:
                    model = "other"
                else:
                    self.models.add(model)
            self.requests[(model, provider, row.get("api") or "chat", row["outcome"])] += 1
            for kind in ("prompt", "completion", "cached"):
                self.tokens[(model, provider, kind)] += row.get(f"{kind}_tokens", 0)
            self.cost[(model, provider)] += row.get("cost_usd", 0.0)
            for name, ms in (("duration", row.get("duration_ms")), ("ttft", row.get("ttft_ms"))):
                if ms is None:
                    continue
                counts, total = self.histograms[name].setdefault(
                    provider, [[0] * (len(_BUCKETS) + 1), 0.0])
                seconds = ms / 1000
                index = next((i for i, edge in enumerate(_BUCKETS) if seconds <= edge),
                             len(_BUCKETS))
                counts[index] += 1
                self.histograms[name][provider][1] = total + seconds

    def render(self, gauges):
        """The text exposition; `gauges` are (name, help, value) read at scrape time."""
        out = []

        def family(name, kind, help_text):
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        with self.lock:
            family("bridge_requests_total", "counter",
                   "Model requests by model, provider, API and outcome.")
            for (model, provider, api, outcome), n in sorted(self.requests.items()):
                out.append(f'bridge_requests_total{{model="{_label(model)}",'
                           f'provider="{provider}",api="{api}",outcome="{outcome}"}} {n}')
            family("bridge_tokens_total", "counter", "Tokens by model, provider and kind.")
            for (model, provider, kind), n in sorted(self.tokens.items()):
                out.append(f'bridge_tokens_total{{model="{_label(model)}",'
                           f'provider="{provider}",kind="{kind}"}} {n}')
            family("bridge_cost_usd_total", "counter", "Cost in USD (Claude's own figures).")
            for (model, provider), usd in sorted(self.cost.items()):
                out.append(f'bridge_cost_usd_total{{model="{_label(model)}",'
                           f'provider="{provider}"}} {usd:.7f}')
            for name, metric, help_text in (
                    ("duration", "bridge_request_duration_seconds",
                     "Time from request to the end of the response."),
                    ("ttft", "bridge_time_to_first_token_seconds",
                     "Time from request to the first content.")):
                family(metric, "histogram", help_text)
                for provider, (counts, total) in sorted(self.histograms[name].items()):
                    running = 0
                    for edge, count in zip((*_BUCKETS, "+Inf"), counts):
                        running += count
                        out.append(f'{metric}_bucket{{provider="{provider}",le="{edge}"}} '
                                   f"{running}")
                    out.append(f'{metric}_sum{{provider="{provider}"}} {total:.6f}')
                    out.append(f'{metric}_count{{provider="{provider}"}} {running}')
            family("bridge_requests_in_flight", "gauge", "Chat requests being answered now.")
            out.append(f"bridge_requests_in_flight {self.in_flight}")
        for name, help_text, value in gauges:
            family(name, "gauge", help_text)
            out.append(f"{name} {value}")
        return "\n".join(out) + "\n"


class RequestRecord:
    """The usage row of one chat request, written exactly once (and counted in the
    metrics and the request's log line)."""

    def __init__(self, bridge, chat, provider, environ):
        self.store = bridge.store
        self.metrics = bridge.metrics
        self.instance = bridge.instance
        self.environ = environ
        self.chat = chat
        self.provider = provider
        self.started = time.monotonic()
        self.first_token = None
        self.written = False
        self.run = None  # its via and resume_point say how the turn went
        self.via = None  # ... or this (elsewhere)
        self.metrics.started()

    def point(self):
        """Where the run's backend holds the turn, if it says (a Claude session's)."""
        return getattr(self.run, "resume_point", None)

    def first(self):
        """Note the time of the first content."""
        if self.first_token is None:
            self.first_token = time.monotonic()

    def write(self, outcome, status, error=None, final=None, run=None):
        """Write the row (once)."""
        if self.written:
            return
        self.written = True
        row = {"request_id": self.chat.request_id, "model": self.chat.model,
               "provider": self.provider, "session_id": self.chat.session_id,
               "stream": self.chat.stream, "outcome": outcome, "status": status,
               "error": error,
               "duration_ms": int((time.monotonic() - self.started) * 1000),
               "api": self.chat.api,
               "ttft_ms": (int((self.first_token - self.started) * 1000)
                           if self.first_token is not None else None)}
        if final is not None:
            row.update(prompt_tokens=final.prompt_tokens,
                       completion_tokens=final.completion_tokens,
                       cached_tokens=final.cached_tokens, cost_usd=final.cost_usd)
        elif run is not None and run.usage:
            row.update(run.usage._asdict())
            row["cost_usd"] = getattr(run, "cost_usd", 0.0)
        row["x_request_id"] = self.environ.get("bridge.request_id")
        row["instance"] = self.instance
        row["via"] = getattr(self.run, "via", None) or self.via
        self.store.record(row)
        self.metrics.finished(row, valid_model=status != 400)
        self.environ["bridge.status"] = str(status)
        self.environ["bridge.log"] = (
            f" model={self.chat.model[:80]} tokens="
            f"{row.get('prompt_tokens', 0) + row.get('completion_tokens', 0)}")


class Bridge:
    """Everything one app instance owns: settings, store, backends."""

    def __init__(self, settings):
        self.settings = settings
        self.store = open_store(settings)
        # Named by default only where several bridges share the store.
        self.instance = settings.instance_name or (
            f"{socket.gethostname()}:{settings.port}" if self.store.shared else "")
        self.store.instance = self.instance
        self.pruner = Pruner(self.store, settings.usage_retention_days) \
            if settings.usage_retention_days else None
        self.conversations = Conversations(self.store, settings.recognise_conversations)
        self.workers = Workers()
        self.claude = ClaudeBackend(settings, self.store, self.workers, self.conversations)
        self.ollama = OllamaBackend(settings, self.workers)
        self.backends = [self.ollama, self.claude]  # Claude last: it takes the rest
        self.metrics = Metrics()
        self.max_body = settings.max_body_mb * 1024 * 1024
        self.auth_key = settings.claude_auth_key.encode("utf-8") or None
        self.dashboard_html = _dashboard_html()

    def authorized(self):
        """Whether the request being answered carries the key (or no key is set)."""
        if self.auth_key is None:
            return True
        token = self._token()
        return token is not None and hmac.compare_digest(
            token.encode("utf-8", "replace"), self.auth_key)

    @staticmethod
    def _token():
        """The key the request carries: `Authorization: Bearer`, or Anthropic's
        `x-api-key` (what its SDKs and Claude Code send); None if neither."""
        scheme, _, token = bottle.request.get_header("Authorization", "").strip().partition(" ")
        # RFC 7235: the scheme is case-insensitive.
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return bottle.request.get_header("X-Api-Key", "").strip() or None

    def owner(self):
        """Who the request being answered comes from, as far as the bridge can tell: a
        hash of its key (one key today; conversations never cross keys)."""
        token = self._token()
        if self.auth_key is None or token is None:
            return ""
        return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()[:16]

    def register(self, backend):
        """Add a backend, asked before those already there."""
        self.backends.insert(0, backend)

    def backend_for(self, model):
        """The backend serving a model name."""
        return next(b for b in self.backends if b.matches(model))

    def providers(self):
        """The backends' names, in order."""
        return [b.provider for b in self.backends]

    def listening(self, url):
        """The server is bound: tell the backends where the bridge is."""
        if self.store.shared and not self.settings.instance_name:  # the port is known now
            self.instance = f"{socket.gethostname()}:{url.rsplit(':', 1)[-1].strip('/')}"
            self.store.instance = self.instance
        for backend in self.backends:
            backend.listening(url)

    def draining(self):
        """Stopping: new requests are refused, those running get their grace."""
        for backend in self.backends:
            backend.draining()

    def end_children(self):
        """End everything the backends still run."""
        for backend in self.backends:
            backend.shutdown()

    def close(self):
        """End every child process and close the database."""
        self.end_children()
        if self.pruner is not None:
            self.pruner.stop()
        self.store.close()


_REQUEST_ID_MAX = 128
_SANE_REQUEST_ID = re.compile(rf"^[A-Za-z0-9._:/=+-]{{1,{_REQUEST_ID_MAX}}}\Z")


_HOST_HEADER = re.compile(r"^(\[[0-9A-Fa-f:.]*\]|[^:\[\]]*)(?::[0-9]*)?\Z")


def _is_ip_literal(name):
    import ipaddress
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return False


class BrowserGuard:
    """Who may call the bridge at all, decided before any work.

    A web page on this machine's browser is the threat: it can send "simple" cross-site
    POSTs without a preflight, and by DNS rebinding make its own origin resolve to the
    bridge and read the answers. So: the Host header must be a name of this bridge (an IP
    address can never be rebound, so any IP literal is one); a request from a web page
    (Origin, Sec-Fetch-Site) must come from the bridge's own origin or one listed in
    CORS_ORIGINS; request bodies must be declared JSON, which no page can send to another
    origin without a preflight."""

    METHODS = "GET, POST, DELETE, OPTIONS"
    HEADERS = ("Authorization, Content-Type, X-Session-ID, X-Request-ID, X-Api-Key, "
               "Anthropic-Version, Anthropic-Beta")
    EXPOSED = "X-Request-ID, Retry-After"

    def __init__(self, settings):
        names = set(settings.allowed_hosts)
        self.any_host = "*" in names
        self.suffixes = tuple(n[1:] for n in names if n.startswith("*."))
        host = settings.host.lower()
        self.hosts = names | {"localhost", f"[{host}]" if ":" in host else host}
        self.origins = frozenset(settings.cors_origins)

    def host_allowed(self, header):
        """Whether a Host header names this bridge."""
        match = _HOST_HEADER.match(header.lower())
        if match is None:
            return False
        name = match.group(1)
        return (self.any_host or name in self.hosts or _is_ip_literal(name)
                or (bool(self.suffixes) and name.endswith(self.suffixes)))

    def check(self, environ):
        """The listed origin the request comes from (for CORS headers), None for a
        request from no other origin, or raise Forbidden / UnsupportedMediaType."""
        host = environ.get("HTTP_HOST")
        if host is not None and not self.host_allowed(host):
            raise Forbidden(f"Host {host[:100]!r} is not a name of this bridge; add it to "
                            "ALLOWED_HOSTS if it is (e.g. behind a reverse proxy).",
                            code="host_not_allowed")
        origin = environ.get("HTTP_ORIGIN")
        site = environ.get("HTTP_SEC_FETCH_SITE", "").lower()
        listed = origin is not None and origin.lower().rstrip("/") in self.origins
        if origin is not None and not listed and site != "same-origin" and \
                origin.lower().partition("://")[2] != (host or "").lower():
            raise Forbidden(f"Requests from the web page at {origin[:100]!r} are refused; "
                            "list its origin in CORS_ORIGINS to allow it.",
                            code="origin_not_allowed")
        if site == "cross-site" and not listed and not (
                environ.get("HTTP_SEC_FETCH_MODE") == "navigate"
                and environ.get("PATH_INFO") == "/dashboard"):
            raise Forbidden("Requests from other web sites are refused; list the page's "
                            "origin in CORS_ORIGINS to allow it.", code="origin_not_allowed")
        if environ.get("REQUEST_METHOD") == "POST":
            media = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
            if media != _JSON:
                raise UnsupportedMediaType(
                    f"Send the body as JSON with 'Content-Type: application/json' "
                    f"(got {media[:60] or 'none'!r}).")
        return origin if listed else None

    def cors_headers(self, origin, preflight=False):
        """The CORS headers for a response to a listed origin."""
        headers = [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        if preflight:
            headers += [("Access-Control-Allow-Methods", self.METHODS),
                        ("Access-Control-Allow-Headers", self.HEADERS),
                        ("Access-Control-Max-Age", "600")]
        else:
            headers.append(("Access-Control-Expose-Headers", self.EXPOSED))
        return headers


def _is_preflight(environ):
    return (environ.get("REQUEST_METHOD") == "OPTIONS" and "HTTP_ORIGIN" in environ
            and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ)


class BridgeApp:
    """The WSGI app: refuses what BrowserGuard refuses, answers CORS preflights, gives
    every request an X-Request-ID and, when it ends, one log line. Everything else is the
    Bottle app inside (its attributes are reachable here)."""

    def __init__(self, inner, bridge, log_requests):
        self.inner = inner
        self.bridge = bridge
        self.log_requests = log_requests
        self.guard = BrowserGuard(bridge.settings)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, environ, start_response):
        given = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = given if _SANE_REQUEST_ID.match(given) else uuid.uuid4().hex
        environ["bridge.request_id"] = request_id
        started = time.monotonic()
        status_line = []
        extra = [("X-Request-ID", request_id)]

        def start(status, headers, exc_info=None):
            status_line.append(status)
            return start_response(status, [*headers, *extra], exc_info)

        try:
            origin = self.guard.check(environ)
            preflight = origin is not None and _is_preflight(environ)
            if origin is not None:
                extra.extend(self.guard.cors_headers(origin, preflight))
            if preflight:
                start("204 No Content", [])
                body = []
            else:
                body = self.inner(environ, start)
        except BridgeError as exc:
            start(f"{exc.status} {bottle.HTTP_CODES[exc.status]}",
                  [("Content-Type", _JSON), *exc.headers.items()])
            body = [_dumps(_error_body(exc, environ.get("PATH_INFO", ""))).encode("utf-8")]
        if not self.log_requests:
            return body
        return _LoggedBody(body, environ, status_line, started)


_MCP_PATH = re.compile(r"^/mcp/.*")


class _LoggedBody:
    """The response body; closing it (the response has left) writes the log line."""

    def __init__(self, body, environ, status_line, started):
        self.body = body
        self.environ = environ
        self.status_line = status_line
        self.started = started

    def __iter__(self):
        return iter(self.body)

    def close(self):
        try:
            if hasattr(self.body, "close"):
                self.body.close()
        finally:
            env = self.environ
            # The usage row's status when there is one: a stream that failed after its
            # 200 went out is logged as what it was.
            status = env.get("bridge.status") or (
                self.status_line[0].split(" ", 1)[0] if self.status_line else "-")
            ms = (time.monotonic() - self.started) * 1000
            # Never headers: the Authorization header (the key) must not reach a log.
            # ... nor an MCP path: its token is the capability to answer a CLI.
            path = _MCP_PATH.sub("/mcp/…", env.get("PATH_INFO", "")[:200])
            _LOG.info("%s %s %s %.0fms%s rid=%s", env.get("REQUEST_METHOD"), path, status,
                      ms, env.get("bridge.log", ""), env["bridge.request_id"])


def _dashboard_html():
    """dashboard.html beside bridge.py, or where `pip install` put it; None if neither."""
    for folder in (os.path.dirname(os.path.abspath(__file__)),
                   os.path.join(sys.prefix, "share", "claude-bridge")):
        try:
            with open(os.path.join(folder, "dashboard.html"), "rb") as f:
                return f.read()
        except OSError:
            continue
    return None


def _check_auth(bridge):
    # /dashboard is a static page without data (it asks for the key itself), the API
    # description is public, and /health says only "ok" or "degraded" without the key.
    path = bottle.request.path
    if path in ("/health", "/dashboard", "/openapi.json") or bridge.authorized():
        return
    if path == "/metrics" and bridge.settings.metrics_loopback_open and _is_loopback(
            bottle.request.environ.get("REMOTE_ADDR", "")):
        return
    raise _error_response(Unauthorized(
        "Missing or wrong API key: send 'Authorization: Bearer <CLAUDE_AUTH_KEY>' (or "
        "'x-api-key: <CLAUDE_AUTH_KEY>')."))


def _default_error(res):
    # Bottle's own errors (404, 405, 500): JSON, never HTML or a traceback.
    if res.status_code == 404:
        exc = NotFound(f"No route for {bottle.request.method} {bottle.request.path}.")
    elif res.status_code == 405:
        exc = MethodNotAllowed(f"{bottle.request.method} is not allowed on "
                               f"{bottle.request.path}.")
    else:
        if res.traceback:
            _LOG.error("unhandled error on %s", bottle.request.path,
                       extra={"trace": res.traceback})
        exc = BridgeError("Internal error in the bridge; see its log.")
        exc.status = res.status_code if res.status_code >= 400 else 500
    # Bottle applied `res` to the response already: set headers on the response.
    bottle.response.content_type = _JSON
    return _dumps(_error_body(exc, bottle.request.path))


def get_health(bridge):
    backends = {b.provider: b.health() for b in bridge.backends}
    database = bridge.store.health()
    # Any backend may be unused on a machine: "ok" needs one of them and the db.
    usable = any(b["ok"] for b in backends.values())
    status = "ok" if usable and database["ok"] else "degraded"
    if not bridge.authorized():  # paths, versions and URLs are for the key's holder
        return _json_response({"status": status})
    return _json_response({"status": status, "version": __version__,
                           "backends": backends, "database": database})


def get_index(bridge):
    return _json_response({
        "name": "claude-bridge", "version": __version__,
        "message": "An OpenAI-compatible API over the Claude Code CLI and Ollama: point "
                   "OpenAI clients at /v1 (base_url http://<this host>/v1). The usage "
                   "dashboard is at /dashboard; the API is described at /openapi.json; "
                   "the README tells the rest.",
        "links": {"api": "/v1", "models": "/v1/models", "dashboard": "/dashboard",
                  "openapi": "/openapi.json", "health": "/health", "usage": "/v1/usage"}})


def list_models(bridge):
    # Claude's names first, as clients show the first as the default.
    data = [m for b in reversed(bridge.backends) for m in b.models()]
    return _json_response({"object": "list", "data": data})


def _query(name):
    # A repeated parameter is ambiguous (frameworks differ on first vs last): refuse it.
    if len(bottle.request.query.getall(name)) > 1:
        raise InvalidRequest(f"'{name}' was given more than once; give it once.",
                             param=name)
    value = bottle.request.query.getunicode(name)
    return value.strip() if value and value.strip() else None


def _filters(bridge):
    since, until = _query("since"), _query("until")
    since = parse_time(since, "since") if since else None
    until = parse_time(until, "until") if until else None
    if since and until and since >= until:
        raise InvalidRequest("'since' must be before 'until'.", param="since")
    provider = _query("provider")
    if provider is not None and provider not in bridge.providers():
        raise InvalidRequest(f"'provider' must be one of {', '.join(bridge.providers())}.",
                             param="provider")
    api = _query("api")
    if api is not None and api not in APIS:
        raise InvalidRequest(f"'api' must be one of {', '.join(APIS)}.", param="api")
    return {"since": since, "until": until, "provider": provider, "model": _query("model"),
            "api": api, "instance": _query("instance")}


def get_usage(bridge):
    return _json_response(bridge.store.summary(**_filters(bridge)))


def _limit():
    raw = _query("limit") or "50"
    if not re.fullmatch(r"[0-9]{1,4}", raw) or not 1 <= int(raw) <= _RECENT_MAX:
        raise InvalidRequest(f"'limit' must be a whole number from 1 to {_RECENT_MAX}.",
                             param="limit")
    return int(raw)


def get_usage_recent(bridge):
    window = _filters(bridge)
    return _json_response(bridge.store.recent(_limit(), window["since"], window["api"],
                                              window["instance"]))


def list_sessions(bridge):
    """Conversations, by header or recognised, most recently used first."""
    return _json_response({"object": "list", "data": bridge.store.sessions(_limit())})


def delete_session(bridge, session_id):
    """Forget a conversation: its Claude session mapping, digests and kept CLI or history
    (its usage rows stay)."""
    known = bool(_SESSION_TAG.match(session_id)) and bridge.store.forget_session(session_id)
    if not known:
        raise NotFound("No such session (use an id from GET /v1/sessions).",
                       param="session_id")
    for backend in bridge.backends:
        backend.forget(session_id)
    return _json_response({"id": session_id, "object": "session.deleted", "deleted": True})


def get_usage_timeseries(bridge):
    bucket = _query("bucket") or "hour"
    if bucket not in UsageStore.BUCKETS:
        raise InvalidRequest("'bucket' must be minute, hour or day.", param="bucket")
    window = _filters(bridge)
    if bucket == "minute":
        # Minutes are summed from raw rows: keep the window small.
        since, until = window["since"], window["until"] or _utc_now_text()
        if since is None or _ts_seconds(until) - _ts_seconds(since) > 2 * 86400:
            raise InvalidRequest("bucket=minute needs 'since' within 2 days of 'until' "
                                 "(e.g. since=1h).", param="since")
    return _json_response(bridge.store.timeseries(bucket, **window))


def get_metrics(bridge):
    text = bridge.metrics.render((
        *(gauge for b in reversed(bridge.backends) for gauge in b.gauges()),
        ("bridge_database_up", "1 if the usage database can be written.",
         int(bridge.store.health()["ok"])),
        ("bridge_usage_rows_queued", "Usage rows and writes waiting for the database.",
         bridge.store.queued()),
        ("bridge_usage_rows_dropped", "Usage rows dropped since start: the queue was full.",
         bridge.store.dropped())))
    response = bottle.HTTPResponse(body=text)
    response.content_type = "text/plain; version=0.0.4; charset=utf-8"
    return response


def get_openapi(bridge):
    return _json_response(openapi_document(__version__, bridge.providers()))


def get_dashboard(bridge):
    if bridge.dashboard_html is None:
        raise NotFound("dashboard.html is missing: copy it next to bridge.py.")
    response = bottle.HTTPResponse(body=bridge.dashboard_html)
    response.content_type = "text/html; charset=utf-8"
    # The page holds no data (it fetches it with the key); still, nothing but itself
    # may run or be loaded, so a hostile string could do nothing even if rendered.
    response.set_header("Content-Security-Policy",
                        "default-src 'none'; script-src 'unsafe-inline'; "
                        "style-src 'unsafe-inline'; connect-src 'self'; img-src data:; "
                        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    response.set_header("X-Content-Type-Options", "nosniff")
    response.set_header("Referrer-Policy", "no-referrer")
    return response


def _json_body(bridge):
    """The request's body as a JSON object, or the 400/413 that says why not."""
    environ = bottle.request.environ
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > bridge.max_body:  # (under waitress, its parser answers this first)
        raise _too_large(bridge.settings)
    return parse_json_body(environ["wsgi.input"].read(length) if length else b"")


def serve_mcp(bridge, token):
    """A CLI's calls to the client's functions (MCP over plain JSON POSTs)."""
    broker = bridge.claude.brokers.get(token)
    if broker is None:
        raise NotFound("No such tool server: it belonged to a CLI that has ended.")
    answer = broker.serve(_json_body(bridge))
    return bottle.HTTPResponse(status=202) if answer is None else _json_response(answer)


def answer(bridge, dialect):
    """A POST in any dialect: validated, run by its backend, answered in JSON or as a
    stream, and one usage row whatever happens."""
    environ, settings = bottle.request.environ, bridge.settings
    body = _json_body(bridge)  # a body that is no JSON object has no usage row
    try:
        chat, refused = dialect.parse(bridge, body, environ), None
    except InvalidRequest as exc:
        chat, refused = refused_chat(body, environ, settings.claude_default_model,
                                     dialect.api), exc
    # From here on the session is known by its tag only: rows, logs, errors, keys.
    chat = dataclasses.replace(chat, session_id=bridge.store.session_tag(chat.session_id),
                               owner=bridge.owner())
    if refused is None:
        try:
            chat = bridge.conversations.resolve(dialect.prepare(bridge, chat))
        except InvalidRequest as exc:
            refused = exc
    if refused is not None:
        RequestRecord(bridge, chat, bridge.backend_for(chat.model).provider, environ).write(
            "error", refused.status, refused.message)
        return _error_response(refused)
    backend = bridge.backend_for(chat.model)
    record = RequestRecord(bridge, chat, backend.provider, environ)
    run = None
    handed_off = False
    try:
        record.via = _elsewhere(bridge, chat)
        ignored = backend.ignored(chat) + chat.echo.get("ignored", [])
        if ignored and settings.strict_params:
            raise InvalidRequest(f"This backend cannot honour {', '.join(ignored)} "
                                 "(STRICT_PARAMS is on); leave them out.", param=ignored[0],
                                 code="unsupported_parameter")
        if ignored:  # (a stream's headers; _complete's reply takes them along)
            bottle.response.set_header("X-Bridge-Ignored-Params", ", ".join(ignored))
        run = backend.open(chat).start()
        record.run = run
        events = _events_with_housekeeping(run, environ, settings.sse_heartbeat_seconds)
        if chat.stream:
            # Wait for the first content before committing to 200, so an early
            # failure still gets its real status.
            first = next(e for e in events if e is not _TICK)
            handed_off = True
            return _stream(bridge, dialect, chat, run, events, first, record)
        return _complete(bridge, dialect, chat, events, record)
    except BridgeError as exc:
        record.write("error", exc.status, exc.message, run=run)
        return _error_response(exc)
    except ClientGone:
        record.write("cancelled", 499, "client disconnected", run=run)
        return bottle.HTTPResponse(status=400)  # nobody is listening
    finally:
        if not handed_off:
            if run is not None:
                run.close()
            # A bug took another way out: the row is still written (Bottle answers 500).
            record.write("error", 500, "internal error in the bridge", run=run)


def _elsewhere(bridge, chat):
    """'elsewhere' when another bridge on the shared store holds the request's session
    (it heals from the history it brings), or SessionElsewhere under
    SESSION_ELSEWHERE=refuse, so a load balancer can be pointed at the owner."""
    if not bridge.store.shared or chat.session_id is None or (
            chat.recognised and chat.history_digest is None):  # (a conversation just begun)
        return None
    owner = bridge.store.session_owner(chat.session_id)
    if not owner or owner == bridge.instance:
        return None
    if bridge.settings.session_elsewhere == "refuse":
        raise SessionElsewhere(f"This session is held by the bridge {owner!r}; send its "
                               "requests there (SESSION_ELSEWHERE=refuse).",
                               headers={"X-Bridge-Session-Owner": owner})
    return "elsewhere"


def _complete(bridge, dialect, chat, events, record):
    turn = Assembly()
    for event in events:
        if turn.feed(event):
            record.first()
    body = dialect.reply(chat, turn)
    record.write("ok", 200, final=turn.final)
    bridge.conversations.record(chat, turn.message(), record.provider, record.point())
    dialect.done(bridge, chat, turn, body)
    ignored = bottle.response.get_header("X-Bridge-Ignored-Params")
    return _json_response(body, headers=ignored and {"X-Bridge-Ignored-Params": ignored})


def _stream(bridge, dialect, chat, run, events, first, record):
    writer = dialect.writer(chat)
    bottle.response.content_type = "text/event-stream"
    bottle.response.set_header("Cache-Control", "no-cache")
    bottle.response.set_header("X-Accel-Buffering", "no")  # nginx: do not buffer

    def generate():
        turn = Assembly()
        try:
            yield writer.start()
            stream = iter(events)
            event = first
            while event is not None:
                if event is _TICK:
                    yield writer.tick()
                for piece in turn.feed(event):
                    record.first()
                    yield writer.piece(piece)
                if isinstance(event, Final):
                    record.write("ok", 200, final=event)
                    bridge.conversations.record(chat, turn.message(), record.provider,
                                                record.point())
                    out = writer.end(turn)
                    dialect.done(bridge, chat, turn, writer.body)
                    yield out
                    return
                event = next(stream, None)
            raise BackendFailed("the backend ended without a result")
        except BridgeError as exc:
            record.write("error", exc.status, exc.message, run=run)
            yield writer.error(exc)
        except ClientGone:
            record.write("cancelled", 499, "client disconnected", run=run)
        except GeneratorExit:
            record.write("cancelled", 499, "client disconnected", run=run)
            raise
        except Exception:  # a bug: still one error event, one row, no traceback in it
            _LOG.exception("stream failed")
            failure = BridgeError("Internal error in the bridge; see its log.")
            record.write("error", 500, failure.message, run=run)
            yield writer.error(failure)
        finally:
            run.close()

    return generate()


def create_embedding(bridge):
    """POST /v1/embeddings: one usage row, like every model request."""
    environ = bottle.request.environ
    body = _json_body(bridge)
    default = bridge.settings.claude_default_model
    try:
        request, refused = parse_embedding_request(body, default), None
    except InvalidRequest as exc:
        request, refused = None, exc
    chat = dataclasses.replace(refused_chat(body, environ, default, "embeddings"),
                               stream=False, request_id=_new_id("emb-"))
    chat.session_id = bridge.store.session_tag(chat.session_id)
    backend = bridge.backend_for(chat.model)
    record = RequestRecord(bridge, chat, backend.provider, environ)
    try:
        if refused is not None:
            raise refused
        embedded = backend.embed(request)
    except BridgeError as exc:
        record.write("error", exc.status, exc.message)
        return _error_response(exc)
    except BaseException:  # a bug: the row is still written (Bottle answers 500)
        record.write("error", 500, "internal error in the bridge")
        raise
    record.write("ok", 200, final=Final("stop", embedded.prompt_tokens, 0, 0, 0.0))
    return _json_response(embedding_body(request, embedded,
                                         body.get("encoding_format") == "base64"))


def count_message_tokens(bridge):
    """POST /v1/messages/count_tokens: an estimate (no backend counts without running)."""
    body = {**_json_body(bridge), "max_tokens": 1}  # (a count needs no limit)
    chat = AnthropicMessages().parse(bridge, body, bottle.request.environ)
    return _json_response({"input_tokens": count_tokens_estimate(chat, body),
                           "estimated": True}, headers={"X-Bridge-Token-Count": "estimated"})


_RESPONSE_ID = re.compile(r"^resp_[0-9a-f]{24}\Z")


def _stored_response(bridge, response_id):
    found = _RESPONSE_ID.match(response_id) and bridge.store.get_response(
        response_id, bridge.owner())
    if not found:
        raise NotFound(f"No stored response with id {response_id[:80]!r}.",
                       param="response_id")
    return found


def get_response(bridge, response_id):
    return bottle.HTTPResponse(body=_stored_response(bridge, response_id)[1],
                               headers={"Content-Type": _JSON})


def delete_response(bridge, response_id):
    if not (_RESPONSE_ID.match(response_id)
            and bridge.store.delete_response(response_id, bridge.owner())):
        raise NotFound(f"No stored response with id {response_id[:80]!r}.",
                       param="response_id")
    return _json_response({"id": response_id, "object": "response", "deleted": True})


# (method, path, function of the Bridge): what make_app registers.
ROUTES = (
    ("GET", "/", get_index), ("GET", "/health", get_health),
    ("GET", "/v1/models", list_models),
    ("POST", "/v1/chat/completions", functools.partial(answer, dialect=ChatCompletions())),
    ("POST", "/v1/responses", functools.partial(answer, dialect=Responses())),
    ("GET", "/v1/responses/<response_id>", get_response),
    ("DELETE", "/v1/responses/<response_id>", delete_response),
    ("POST", "/v1/messages", functools.partial(answer, dialect=AnthropicMessages())),
    ("POST", "/v1/messages/count_tokens", count_message_tokens),
    ("POST", "/v1/completions", functools.partial(answer, dialect=Completions())),
    ("POST", "/v1/embeddings", create_embedding),
    ("GET", "/v1/usage", get_usage), ("GET", "/v1/usage/recent", get_usage_recent),
    ("GET", "/v1/usage/timeseries", get_usage_timeseries), ("GET", "/metrics", get_metrics),
    ("GET", "/openapi.json", get_openapi), ("GET", "/dashboard", get_dashboard),
    ("GET", "/v1/sessions", list_sessions), ("DELETE", "/v1/sessions/<session_id>", delete_session),
    ("POST", "/mcp/<token>", serve_mcp),
)
# The APIs a usage row may have come in by.
APIS = ("chat", "responses", "messages", "completions", "embeddings")


def make_app(settings):
    """Build the WSGI app and everything it owns; `app.bridge` holds the state."""
    bridge = Bridge(settings)
    app = bottle.Bottle()
    app.bridge = bridge
    app.add_hook("before_request", functools.partial(_check_auth, bridge))
    app.default_error_handler = _default_error
    app.install(_answer_errors)
    for method, path, route in ROUTES:
        app.route(path, method, functools.partial(route, bridge))
    return BridgeApp(app, bridge, settings.log_requests)


# ----------------------------------------------------------------------------------------
# Server and main()
# ----------------------------------------------------------------------------------------

def _raise_fd_limit(wanted):
    """Let the process hold `wanted` descriptors if the hard limit allows (poll() has no
    1024 limit; a default soft RLIMIT_NOFILE of 1024 would be the cap instead)."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):
        pass


def _channel_class(settings):
    """waitress's connection class, with two changes: its own errors (a 413 for a body over
    MAX_BODY_MB, a 400 for a malformed request) are OpenAI error objects, not text/plain;
    and a request's head must arrive within REQUEST_HEAD_TIMEOUT, and its body within
    REQUEST_BODY_TIMEOUT after that, so clients that trickle bytes cannot hold connections
    (slowloris)."""
    from waitress.channel import HTTPChannel
    from waitress.task import ErrorTask

    class JsonErrorTask(ErrorTask):
        def execute(self):
            error = self.request.error
            exc = _too_large(settings) if error.code == 413 else InvalidRequest(
                f"{error.reason}: {error.body}", code="bad_http_request")
            exc.status = error.code
            body = _dumps(_error_body(exc, getattr(self.request, "path", None) or "")).encode("utf-8")
            given = self.request.headers.get("X_REQUEST_ID", "")
            self.status = f"{error.code} {error.reason}"
            self.response_headers += [
                ("Content-Type", _JSON),
                ("X-Request-ID", given if _SANE_REQUEST_ID.match(given) else uuid.uuid4().hex)]
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    head_limit, body_limit = settings.request_head_timeout, settings.request_body_timeout

    class Channel(HTTPChannel):
        error_task_class = JsonErrorTask
        request_started = head_done = None

        def received(self, data):
            if self.request is None and data:  # these bytes begin a request
                self.request_started, self.head_done = time.monotonic(), None
            result = super().received(data)
            if self.request is not None and self.request.headers_finished \
                    and self.head_done is None:
                self.head_done = time.monotonic()
            return result

        def overdue(self, now):
            request = self.request  # the one being received, if any
            if request is None or request.completed:
                return False
            if self.head_done is None:
                return now - self.request_started > head_limit
            return now - self.head_done > body_limit

    return Channel


def create_server(settings, app=None):
    """A waitress server for the app (not yet running); port 0 picks a free port."""
    import waitress.server
    app = app or make_app(settings)
    _raise_fd_limit(settings.max_connections + settings.threads + 256)
    server = waitress.server.create_server(
        app, host=settings.host, port=settings.port, threads=settings.threads,
        # A connection still sending its request costs a socket, not a thread.
        connection_limit=settings.max_connections,
        cleanup_interval=1,  # how often overdue requests are looked for, in seconds
        # Lets the bridge notice a client that hung up while the backend is still silent.
        channel_request_lookahead=1,
        max_request_body_size=settings.max_body_mb * 1024 * 1024,
        asyncore_use_poll=True,  # select() cannot watch more than 1024 sockets
        ident="claude-bridge", expose_tracebacks=False)
    server.channel_class = _channel_class(settings)
    idle_cleanup = server.maintenance

    def maintenance(now):
        idle_cleanup(now)
        mono = time.monotonic()
        for channel in list(server.active_channels.values()):
            if channel.overdue(mono):
                channel.will_close = True  # closed on the loop's next pass
    server.maintenance = maintenance
    server.app = app
    host = str(server.effective_host)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    app.bridge.listening(f"http://{f'[{host}]' if ':' in host else host}:"
                         f"{server.effective_port}")
    return server


def stop_server(server, thread, timeout=5.0):
    """Stop a server whose run() loop is in `thread`, closing sockets in that loop."""
    from waitress import wasyncore
    server.app.bridge.draining()
    # Closing the sockets from another thread races the poll loop; a thunk runs inside it.
    try:
        server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
    except OSError:  # the loop already closed its trigger
        pass
    thread.join(timeout)
    server.task_dispatcher.shutdown(timeout=timeout)
    if thread.is_alive():
        server.close()


def serve(server, stop, grace, hurry=None):
    """Run the server until `stop` is set, then drain: stop accepting, give in-flight
    requests `grace` seconds (or until `hurry` is set), end the backends' children, close
    everything."""
    hurry = hurry or threading.Event()
    from waitress import wasyncore
    bridge = server.app.bridge
    loop = dict(map=server._map, use_poll=True, count=1)
    while not stop.is_set():
        # Short polls: a signal only sets `stop`, and is seen within 0.1 s.
        wasyncore.loop(timeout=0.1, **loop)
    wasyncore.dispatcher.close(server)  # the listening socket only: no new connections
    bridge.draining()
    deadline = time.monotonic() + grace
    dispatcher = server.task_dispatcher

    def busy():
        return dispatcher.active_count or dispatcher.queue or any(
            getattr(ch, "total_outbufs_len", 0) for ch in list(server._map.values()))

    while busy() and time.monotonic() < deadline and not hurry.is_set():
        wasyncore.loop(timeout=0.1, **loop)
    if busy():
        _LOG.warning("%s request(s) still running after %g s; ending them",
                     dispatcher.active_count, grace)
    bridge.end_children()  # their requests now fail fast and write their usage rows
    end = time.monotonic() + 3
    while dispatcher.active_count and time.monotonic() < end and not hurry.is_set():
        wasyncore.loop(timeout=0.1, **loop)
    wasyncore.close_all(server._map)
    dispatcher.shutdown(timeout=2)
    bridge.close()


def copy_usage(source, target, out=sys.stdout):
    """--copy-usage sqlite:///PATH postgresql://...: a SQLite history into PostgreSQL, its
    sums included. Again later, it copies only the rows added since (each source is known
    by its own key); each run is one transaction, so an interrupted one copies nothing."""
    if not source.startswith("sqlite:///") or not target.startswith(("postgresql://",
                                                                     "postgres://")):
        raise SettingsError("--copy-usage takes sqlite:///PATH then postgresql://...")
    path = source[len("sqlite://"):]
    if not os.path.exists(path):
        raise SettingsError(f"--copy-usage: no SQLite file at {path}")
    src = UsageStore(path)  # (migrated to this version's schema first)
    dst = PgStore(target, ":memory:", 100)
    try:
        if src.last_error or dst.last_error:
            raise SettingsError(f"--copy-usage: {src.last_error or dst.last_error}")
        name = hashlib.sha256(src.session_key).hexdigest()[:16]
        done = dst._read("SELECT last_id FROM usage_copies WHERE source = ?", (name,))
        rows, statements = _copy_statements(src, name, done[0][0] if done else None)
        if rows and not dst._apply(statements):
            raise SettingsError(f"--copy-usage: {dst.last_error}")
        print(f"copied {rows} rows from {path} (source {name})"
              + (" and its hourly and daily sums" if not done else ""), file=out)
        return rows
    finally:
        src.close()
        dst.close()


def _copy_statements(src, name, last_id):
    """(rows, statements) that copy a source's rows after last_id (None: all, and its sums
    as they are: they may hold rows pruned or migrated without a time)."""
    columns = [c for c in _ROW_COLUMNS if c != "row_key"]
    rows = src._read(f"SELECT id, {', '.join(columns)} FROM requests WHERE id > ? ORDER BY id",
                     (last_id or 0,))
    statements = []
    for row in rows:
        stamped = {**dict(zip(columns, row[1:])), "row_key": f"copy:{name}:{row[0]}"}
        insert, *sums = _row_statements(stamped)
        statements.append((insert[0] + " ON CONFLICT (row_key) DO NOTHING", insert[1]))
        if last_id is not None:
            statements.extend(sums)
    if last_id is None:
        for table, key, _ in _LEVELS[:-1]:
            for bucket in src._read(f"SELECT * FROM {table}"):
                statements.append((
                    f"INSERT INTO {table} VALUES ({', '.join('?' * len(bucket))})"
                    f" ON CONFLICT ({key}, {', '.join(_ROLLUP_KEYS)}) DO UPDATE SET "
                    + ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in _SUMS_COLUMNS),
                    tuple(bucket)))
    newest = rows[-1][0] if rows else (last_id or 0)
    statements.append(("INSERT INTO usage_copies VALUES (?, ?, ?) ON CONFLICT (source) DO"
                       " UPDATE SET last_id = excluded.last_id, copied_at = excluded.copied_at",
                       (name, newest, _utc_now_text())))
    return len(rows), statements


def main(argv=None):
    """Run the bridge until Ctrl-C or SIGTERM (or, with --copy-usage, copy a history)."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--copy-usage"]:
        try:
            if len(args) != 3:
                raise SettingsError("usage: bridge.py --copy-usage sqlite:///PATH "
                                    "postgresql://...")
            copy_usage(args[1], args[2])
        except SettingsError as exc:
            print(f"claude-bridge: {exc}", file=sys.stderr)
            return 2
        return 0
    try:
        settings = load_settings(argv=args)
    except SettingsError as exc:
        print(f"claude-bridge: {exc}", file=sys.stderr)
        return 2
    configure_logging()
    try:
        app = make_app(settings)
    except SettingsError as exc:
        print(f"claude-bridge: {exc}", file=sys.stderr)
        return 2
    try:
        server = create_server(settings, app)
    except OSError as exc:  # the port is taken, or the address is not this machine's
        app.bridge.close()
        print(f"claude-bridge: cannot listen on {settings.host}:{settings.port} (HOST, PORT): "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2
    bridge = server.app.bridge
    stop, hurry = threading.Event(), threading.Event()

    def on_signal(signum, frame):
        if stop.is_set():
            _LOG.info("%s again: stopping now", signal.Signals(signum).name)
            hurry.set()
        else:
            _LOG.info("%s: stopping (in-flight requests get %g s; again to stop now)",
                      signal.Signals(signum).name, settings.shutdown_timeout)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    _LOG.info("claude-bridge %s listening on http://%s:%s/v1", __version__, host,
              server.effective_port)
    _LOG.info("%s; database: %s; auth: %s",
              "; ".join(b.describe() for b in reversed(bridge.backends)),
              bridge.store.path if settings.usage_db_url else
              os.path.abspath(settings.usage_db_path),
              "on" if settings.claude_auth_key else "off")
    if not _is_loopback(settings.host) and not settings.allowed_hosts:
        _LOG.info("clients must reach the bridge by an IP address, localhost or HOST: list "
                  "other names (this machine's, a proxy's) in ALLOWED_HOSTS")
    if not settings.claude_auth_key and not _is_loopback(settings.host):
        _LOG.warning("WARNING: listening on %s without CLAUDE_AUTH_KEY "
                     "(ALLOW_EXPOSED_WITHOUT_KEY=true): anyone who reaches this port can use "
                     "the API", settings.host)
    if settings.threads < settings.claude_max_concurrency + settings.claude_queue_max + 8:
        _LOG.warning("WARNING: THREADS=%s leaves little room beside CLAUDE_MAX_CONCURRENCY "
                     "+ CLAUDE_QUEUE_MAX; other requests may wait", settings.threads)
    serve(server, stop, settings.shutdown_timeout, hurry)
    _LOG.info("stopped")
    return 0



# ----------------------------------------------------------------------------------------
# OpenAPI description
# ----------------------------------------------------------------------------------------
# Built afresh on each call, so no two documents share a dict. Clients diff the JSON: the
# builders keep its key order, so mind where a new field goes.

def _oa_ref(name, kind="schemas"):
    return {"$ref": f"#/components/{kind}/{name}"}


def _oa_nullable(type_name, **extra):
    return {"type": [type_name, "null"], **extra}


def _oa_pattern(regex):
    # ECMA 262 (JSON Schema's regexes) has no \Z; its $ (no m flag) means the same.
    return regex.pattern.replace("\\Z", "$")


def _oa_sums(*names):
    """Totals, never negative: dollars and averages are numbers, the rest counts."""
    return {name: {"type": "number" if name in ("cost_usd", "avg_duration_ms") else "integer",
                   "minimum": 0} for name in names}


def _oa_type(schema):
    """A schema; a bare type name is short for {"type": name}, "name?" for it or null."""
    if not isinstance(schema, str):
        return schema
    return _oa_nullable(schema[:-1]) if schema.endswith("?") else {"type": schema}


def _oa_object(required, properties, description=None, **extra):
    """An object clients send: fields beyond `properties` pass (and are ignored)."""
    described = {"description": description} if description else {}
    return {"type": "object", "required": required, **described,
            "properties": {key: _oa_type(value) for key, value in properties.items()},
            **extra}


def _oa_record(properties, description=None, required=None):
    """An object the bridge writes: exactly `properties`, all of them unless `required`."""
    described = {"description": description} if description else {}
    return {"type": "object", "additionalProperties": False,
            "required": list(properties) if required is None else required, **described,
            "properties": {key: _oa_type(value) for key, value in properties.items()}}


def _oa_response(description, schema, media=_JSON, **headers):
    return {"description": description,
            "headers": {"X-Request-ID": _oa_ref("X-Request-ID", "headers"), **headers},
            "content": {media: {"schema": schema}}}


def _oa_error(description, retry_after=None):
    """An error object; `retry_after` describes the Retry-After header it may carry."""
    return _oa_response(description, _oa_ref("Error"),
                        **({"Retry-After": retry_after} if retry_after else {}))


def _oa_operation(operation_id, tag, summary, responses, description=None, parameters=None,
                  public=False, body=None, method=None, errors=""):
    """{method: the operation}: only POST routes take a body; `public` ones need no key;
    `errors` "Anthropic" for a route that answers errors in Anthropic's shape."""
    optional = {"description": description, "parameters": parameters,
                "security": [] if public else None, "requestBody": body}
    # Refused before any route: a foreign Host or web page, and POST bodies not JSON.
    refused = {"403": _oa_ref(errors + "Forbidden", "responses")}
    if body:
        refused["415"] = _oa_ref(errors + "UnsupportedMediaType", "responses")
    return {method or ("post" if body else "get"): {
        "operationId": operation_id, "tags": [tag], "summary": summary,
        **{key: value for key, value in optional.items() if value is not None},
        "responses": {**responses, **refused}}}


def openapi_document(version, providers=("ollama", "claude")):
    """The OpenAPI 3.1 description of the bridge's routes, as bridge.py answers them."""
    about = ("Models named `ollama/<name>` go to Ollama; every other model name runs the "
             "`claude` CLI. Every chat request is logged to SQLite and can be read back "
             "through the usage API. Errors are OpenAI error objects. Every response carries "
             "an `X-Request-ID` header. When `CLAUDE_AUTH_KEY` is set, every route except "
             "/health, /dashboard and /openapi.json needs `Authorization: Bearer <key>` (a "
             "401 otherwise); an unknown route is a 404 and a wrong method a 405, both as "
             "error objects. Before any route, a `Host` that is not a name of the bridge, or "
             "a request from a web page whose origin is not in CORS_ORIGINS, is a 403, and a "
             f"body not sent as `{_JSON}` a 415.")
    request_id = ("Your id for this request: echoed in the response's X-Request-ID and kept "
                  f"in its usage row when it is 1 to {_REQUEST_ID_MAX} of `A-Z a-z 0-9 . _ : / "
                  "= + -`; otherwise the bridge makes one.")
    error = _oa_record({"message": {"type": "string", "minLength": 1},
                        "type": {"type": "string", "enum": [
                            InvalidRequest.type, RateLimited.type, BridgeError.type]},
                        "param": "string?", "code": "string?"})
    return {
        "openapi": "3.1.0",
        "info": {"title": "claude-bridge", "version": version,
                 "summary": "An OpenAI-compatible API over the Claude Code CLI and a local "
                            "Ollama.", "description": about,
                 "license": {"name": "MIT", "identifier": "MIT"}},
        "security": [{"bearerAuth": []}],
        "paths": {**_oa_chat_path(), **_oa_dialect_paths(), **_oa_other_paths(providers),
                  **_oa_session_paths(), **_oa_mcp_path()},
        "components": {
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer", "description":
                    "`Authorization: Bearer <CLAUDE_AUTH_KEY>`, when the bridge has a key."}},
            "parameters": {"X-Request-ID": {
                "name": "X-Request-ID", "in": "header", "required": False,
                "description": request_id, "schema": {"type": "string"}}},
            "headers": {"X-Request-ID": {
                "description": "The request's id: the client's X-Request-ID when it was "
                               "sane, else a new one.", "required": True,
                "schema": {"type": "string", "pattern": _oa_pattern(_SANE_REQUEST_ID)}}},
            "responses": {
                "BadRequest": _oa_error("Bad JSON, a bad field or parameter (`param` names "
                                        "it), or a model name that is not valid (code "
                                        "`model_not_found`)."),
                "Unauthorized": _oa_error(
                    f"Missing or wrong key (code `{Unauthorized.code}`)."),
                "Forbidden": _oa_error("A Host header that is not a name of this bridge "
                                       "(code `host_not_allowed`; see ALLOWED_HOSTS), or a "
                                       "request from a web page whose origin is not listed "
                                       "in CORS_ORIGINS (code `origin_not_allowed`)."),
                "UnsupportedMediaType": _oa_error(
                    f"A body not sent as `Content-Type: {_JSON}` (code "
                    f"`{UnsupportedMediaType.code}`)."),
                "AnthropicForbidden": _oa_response("As Forbidden, in Anthropic's shape.",
                                                   _oa_ref("AnthropicError")),
                "AnthropicUnsupportedMediaType": _oa_response(
                    "As UnsupportedMediaType, in Anthropic's shape.", _oa_ref("AnthropicError"))},
            "schemas": {
                "Error": {"type": "object", "required": ["error"],
                          "additionalProperties": False, "properties": {"error": error}},
                "CreateChatCompletionRequest": _oa_chat_request(), **_oa_message_schemas(),
                **_oa_reply_schemas(), **_oa_service_schemas(providers),
                **_oa_dialect_requests(), **_oa_dialect_replies()},
        },
    }


def _oa_chat_path():
    retry_after = {"description": "Seconds to wait before trying again.",
                   "schema": {"type": "string", "pattern": "^[0-9]+$"}}
    reply = _oa_response("The reply: a chat.completion object, or with `stream: true` a stream "
                         "of chat.completion.chunk events ending with `data: [DONE]`.",
                         _oa_ref("ChatCompletion"))
    reply["content"]["text/event-stream"] = {"schema": _oa_ref("ChatCompletionStreamEvent")}
    reply["headers"]["X-Bridge-Ignored-Params"] = {
        "description": "The request's parameters the backend could not honour, comma-"
                       "separated (STRICT_PARAMS=true makes them a 400 instead).",
        "schema": {"type": "string"}}
    session = {"name": "X-Session-ID", "in": "header", "required": False, "description":
               "Keep the conversation on the bridge's side (Claude's session store, or memory "
               "for Ollama): later turns send only their new messages. 1 to "
               f"{_SESSION_ID_MAX} printable characters.",
               "schema": {"type": "string", "minLength": 1, "maxLength": _SESSION_ID_MAX,
                          "pattern": "^[!-~]([ -~]*[!-~])?$"}}
    body = {"required": True, "content": {_JSON: {
        "schema": _oa_ref("CreateChatCompletionRequest"), "examples": _oa_chat_examples()}}}
    return {"/v1/chat/completions": _oa_operation(
        "createChatCompletion", "chat",
        "Create a chat completion (JSON, or Server-Sent Events with `stream: true`).", {
            "200": reply, "400": _oa_ref("BadRequest", "responses"),
            "401": _oa_ref("Unauthorized", "responses"),
            "404": _oa_error("An `ollama/<name>` model Ollama does not have (code "
                             "`model_not_found`)."),
            "413": _oa_error("The body is larger than MAX_BODY_MB (code "
                             f"`{PayloadTooLarge.code}`)."),
            "421": _oa_response(
                "Another bridge on the shared store holds this session, and "
                "SESSION_ELSEWHERE=refuse (code `session_elsewhere`).", _oa_ref("Error"),
                **{"X-Bridge-Session-Owner": {"description": "The bridge that holds it.",
                                              "schema": {"type": "string"}}}),
            "429": _oa_error("No free Claude slot within CLAUDE_QUEUE_TIMEOUT, another turn "
                             "of the same session is still running, or Anthropic's rate "
                             "limit (code `upstream_rate_limited`).",
                             {**retry_after, "required": True}),
            "502": _oa_error("The backend failed: the CLI's own message, Ollama unreachable "
                             "(code `backend_unreachable`) or Ollama's error."),
            "503": _oa_error("The CLI is not installed (code `claude_not_found`), Anthropic is "
                             "overloaded (code `upstream_overloaded`, with Retry-After) or "
                             "Ollama is busy (code `backend_busy`, with Retry-After).",
                             retry_after),
            "504": _oa_error("CLAUDE_TIMEOUT, CLAUDE_IDLE_TIMEOUT or OLLAMA_TIMEOUT passed "
                             f"(code `{BackendTimeout.code}`).")},
        description="Every request whose body is a JSON object is one row in the usage log, "
                    "refused ones included. A stream that fails after it began sends one "
                    "`data: {\"error\": {...}}` event and ends without `[DONE]`.",
        parameters=[session, _oa_ref("X-Request-ID", "parameters")], body=body)}


def _oa_session_paths():
    unauthorized = {"401": _oa_ref("Unauthorized", "responses")}
    limit = {"name": "limit", "in": "query", "required": False, "description":
             f"How many, 1 to {_RECENT_MAX}.", "schema": {
                 "type": "integer", "minimum": 1, "maximum": _RECENT_MAX, "default": 50}}
    session = {"name": "session_id", "in": "path", "required": True,
               "schema": {"type": "string"}, "description": "An id from GET /v1/sessions."}
    return {
        "/v1/sessions": _oa_operation(
            "listSessions", "sessions", "Conversations, most recently used first: by "
            "X-Session-ID (its keyed hash) or recognised from the history a client resent.",
            {"200": _oa_response("The sessions.", _oa_record({
                "object": {"const": "list"}, "data": {"type": "array", "items": _oa_record({
                    "id": {"type": "string", "pattern": _oa_pattern(_SESSION_TAG)},
                    "backend": "string?", "turns": {"type": "integer", "minimum": 0},
                    "last_used": {"type": "string", "format": "date-time"},
                    **_oa_sums("total_tokens", "cost_usd")})}})),
             "400": _oa_ref("BadRequest", "responses"), **unauthorized},
            parameters=[limit]),
        "/v1/sessions/{session_id}": _oa_operation(
            "deleteSession", "sessions", "Forget a session: its Claude session, history "
            "digests and kept CLI or history (its usage rows stay).",
            {"200": _oa_response("Forgotten.", _oa_record({
                "id": "string", "object": {"const": "session.deleted"},
                "deleted": {"const": True}})),
             "404": _oa_error("No such session (code `not_found`)."), **unauthorized},
            parameters=[session], method="delete")}


def _oa_mcp_path():
    token = {"name": "token", "in": "path", "required": True, "schema": {"type": "string"},
             "description": "The unguessable token of one CLI run."}
    body = {"required": True, "content": {_JSON: {"schema": _oa_object(["jsonrpc"], {
        "jsonrpc": {"const": "2.0"}, "id": {"type": ["integer", "string"]},
        "method": "string", "params": "object"})}}}
    return {"/mcp/{token}": _oa_operation(
        "serveClientTools", "internal", "The client's functions, as an MCP server, for the "
        "one Claude CLI run this token was made for (JSON-RPC over plain JSON POSTs).", {
            "200": _oa_response("The JSON-RPC answer.", {"type": "object"}),
            "202": {"description": "A notification, taken.",
                    "headers": {"X-Request-ID": _oa_ref("X-Request-ID", "headers")}},
            "400": _oa_ref("BadRequest", "responses"),
            "401": _oa_ref("Unauthorized", "responses"),
            "404": _oa_error("No run with this token is running (code `not_found`).")},
        description="Only for the CLI the bridge started: its --mcp-config names this path "
                    "(and the key, when CLAUDE_AUTH_KEY is set). Clients never call it.",
        parameters=[token], body=body)}


def _oa_chat_examples():
    def example(summary, model, messages, **fields):
        return {"summary": summary, "value": {"model": model, **fields, "messages": messages}}

    def user(content):
        return {"role": "user", "content": content}

    image = {"url": "data:image/png;base64,iVBORw0KGgo="}
    weather = {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}
    asked = {"id": "call_1", "type": "function", "function": {
        "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}
    return {
        "claude": example("Claude, one JSON reply", "claude-code", [
            {"role": "system", "content": "Be brief."}, user("What is a bridge?")]),
        "claude-stream": example("Claude, streamed, with usage", "sonnet", [
            user("Write a haiku")], stream=True, stream_options={"include_usage": True}),
        "ollama-image": example("Ollama, text and an image", "ollama/llama3.2", [user([
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": image}])], max_tokens=200, temperature=0.2),
        "ollama-tool-result": example("Ollama, a tool's result sent back", "ollama/llama3.2", [
            user("Weather in Paris?"),
            {"role": "assistant", "content": None, "tool_calls": [asked]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
        ], stream=True, tools=[{"type": "function", "function": weather}]),
    }


def _oa_query(name, schema, description):
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _oa_usage_params(providers):
    """The usage API's query parameters, by name."""
    query, string = _oa_query, {"type": "string"}
    when = {"type": "string", "examples": ["24h", "2026-11-25T10:00:00Z"]}
    return {
        "since": query("since", when, "Start of the window (inclusive): ISO 8601 "
                       "(`2026-11-25T10:00:00Z`, no zone = UTC) or a time ago (`30m`, `24h`, "
                       f"`7d`, `2w`; units {', '.join(_UNIT_SECONDS)}). Empty = open. A bad "
                       "value is a 400 naming it."),
        "until": query("until", when, "End of the window (exclusive), as `since`; must be "
                       "after `since`."),
        "provider": query("provider", {"type": "string", "enum": list(providers)},
                          "Only this provider."),
        "model": query("model", string, "Only this model, as clients named it."),
        "api": query("api", {"type": "string", "enum": list(APIS)}, "Only this API's "
                     "requests."),
        "instance": query("instance", string, "Only this bridge's requests (INSTANCE_NAME)."),
        "limit": query("limit", {"type": "integer", "minimum": 1, "maximum": _RECENT_MAX,
                                 "default": 50}, f"How many rows, 1 to {_RECENT_MAX}."),
        "bucket": query("bucket", {"type": "string", "enum": list(UsageStore.BUCKETS),
                                   "default": "hour"}, "Bucket size; `minute` needs `since` "
                        "within 2 days of `until` (or of now)."),
    }


def _oa_other_paths(providers):
    unauthorized = {"401": _oa_ref("Unauthorized", "responses")}
    usage_errors = {"400": _oa_ref("BadRequest", "responses"), **unauthorized}
    string = {"type": "string"}

    def listing(description, name):
        return _oa_response(description, {"type": "array", "items": _oa_ref(name)})

    params = _oa_usage_params(providers)
    since, until, provider, model, api, instance, limit, bucket = (params[name] for name in (
        "since", "until", "provider", "model", "api", "instance", "limit", "bucket"))
    return {
        "/": _oa_operation(
            "getIndex", "service",
            "What this is and where to go: the API, the dashboard, this description.",
            {"200": _oa_response("Links.", _oa_record({
                "name": {"const": "claude-bridge"}, "version": "string", "message": "string",
                "links": {"type": "object", "additionalProperties": string}})),
             **unauthorized}),
        "/v1/models": _oa_operation(
            "listModels", "models", "The Claude models (claude-code, "
            f"{', '.join(ClaudeBackend.aliases)} and the default) then Ollama's as "
            "`ollama/<name>`.",
            {"200": _oa_response("The models.", _oa_ref("ModelList")), **unauthorized}),
        "/v1/usage": _oa_operation(
            "getUsage", "usage", "Totals per model, provider, API and instance, busiest "
            "first.",
            {"200": listing("Totals.", "UsageSummary"), **usage_errors},
            parameters=[since, until, provider, model, api, instance]),
        "/v1/usage/recent": _oa_operation(
            "getRecentUsage", "usage", "The latest usage rows, newest first.",
            {"200": listing("Rows.", "UsageRow"), **usage_errors},
            parameters=[limit, since, api, instance]),
        "/v1/usage/timeseries": _oa_operation(
            "getUsageTimeseries", "usage",
            "Sums per minute, hour or day, oldest first (only buckets with requests).",
            {"200": listing("Buckets.", "UsageBucket"), **usage_errors},
            parameters=[bucket, since, until, provider, model, api, instance]),
        "/health": _oa_operation(
            "getHealth", "service", "Whether the bridge can serve; never needs a key.",
            {"200": _oa_response("The state (also when degraded).", {"oneOf": [
                _oa_ref("Health"),
                _oa_record({"status": {"type": "string", "enum": ["ok", "degraded"]}})]})},
            description="Without the key (when CLAUDE_AUTH_KEY is set) only `status`; with "
                        "it, the backends' and database's details too. Runs `claude --version` "
                        "(cached for a minute) and asks Ollama for its version (cached for "
                        f"{_HEALTH_SECONDS} s); never a chat.", public=True),
        "/dashboard": _oa_operation(
            "getDashboard", "service",
            "The usage dashboard, a self-contained page (it asks for the key itself).",
            {"200": _oa_response("The page.", string, "text/html"),
             "404": _oa_error("dashboard.html is not installed beside bridge.py.")},
            public=True),
        "/metrics": _oa_operation(
            "getMetrics", "service", "Prometheus metrics (text exposition format 0.0.4).",
            {"200": _oa_response("Counters, histograms and gauges.", string, "text/plain"),
             **unauthorized},
            description="Needs the key like the API, unless METRICS_LOOPBACK_OPEN is set and "
                        "the scraper is on this machine."),
        "/openapi.json": _oa_operation(
            "getOpenAPI", "service", "This description.", {"200": _oa_response(
                "The OpenAPI 3.1 document.",
                {"type": "object", "required": ["openapi", "info", "paths"]})}, public=True),
    }


def _oa_chat_request():
    """What parse_chat_request and _chat_params accept."""
    nullable = _oa_nullable
    many = {"minimum": 1, "maximum": 10_000_000}
    named = _oa_object(["name"], {"name": "string"})
    json_schema = _oa_object(["name"], {"name": "string", "description": "string",
                                        "strict": "boolean?", "schema": "object"})
    ignored = ("A backend that cannot honour it names it in X-Bridge-Ignored-Params "
               "(a 400 under STRICT_PARAMS).")
    return _oa_object(["messages"], {
        "model": nullable(
            "string", description="`claude-code` (the CLI's default model), another Claude "
            "name (`sonnet`, `opus`, `claude-sonnet-4-5`, ...: letters, digits and `. _ - : "
            "[ ]`, not starting with `-`), or `ollama/<name>`. Absent: CLAUDE_DEFAULT_MODEL.",
            anyOf=[{"type": "null"}, {"pattern": _oa_pattern(_MODEL_NAME)},
                   {"pattern": "^ollama/[\\s\\S]+$"}],
            examples=["claude-code", "sonnet", "ollama/llama3.2"]),
        "messages": {"type": "array", "minItems": 1, "items": _oa_ref("ChatMessage")},
        "stream": "boolean?", "stream_options": {"type": ["object", "null"], "properties": {
            "include_usage": nullable("boolean", description="Send a last chunk with `usage` "
                                      "(and no choices) before `[DONE]`.")}},
        "n": nullable("integer", minimum=1, maximum=1, description="Only 1 is supported."),
        **{name: nullable(kind, minimum=low, maximum=high, description=f"{about} {ignored}")
           for name, kind, low, high, about in (
               ("temperature", "number", 0, 2, "Ollama only."),
               ("top_p", "number", 0, 1, "Ollama only."),
               ("presence_penalty", "number", -2, 2, "Ollama only."),
               ("frequency_penalty", "number", -2, 2, "Ollama only."),
               ("seed", "integer", -2 ** 63, 2 ** 63 - 1, "Ollama only."),
               ("top_logprobs", "integer", 0, 20, "Not supported."))},
        "logprobs": nullable("boolean", description="Not supported. " + ignored),
        "logit_bias": nullable("object", description="Not supported. " + ignored),
        "max_tokens": nullable("integer", **many, description="Caps the reply's tokens "
                               "(Claude: CLAUDE_CODE_MAX_OUTPUT_TOKENS; Ollama: num_predict); "
                               "finish_reason `length` when reached."),
        "max_completion_tokens": nullable("integer", **many,
                                          description="As max_tokens, and wins over it."),
        "stop": {"oneOf": [{"type": "null"}, {"type": "string", "minLength": 1},
                           {"type": "array", "maxItems": 4,
                            "items": {"type": "string", "minLength": 1}}],
                 "description": "Up to 4 sequences; the reply ends before the first one "
                                "(Claude: the bridge cuts the text and ends the run)."},
        "reasoning_effort": {"enum": [None, *_REASONING_EFFORTS], "description": "Claude: "
                             "--effort (none and minimal = low). " + ignored},
        "tools": nullable("array", items=_oa_ref("Tool"), description="Functions the model "
                          "may call. Claude: served to the CLI over MCP; a reply that calls "
                          "them ends with finish_reason tool_calls, and the request that "
                          "brings the results continues the same run."),
        "tool_choice": {"description": "none (no tools offered), auto, required or a named "
                        "function (Claude: asked for in the system prompt, and only that "
                        "function offered; not guaranteed). " + ignored, "oneOf": [
            {"type": "null"}, {"type": "string", "enum": ["none", "auto", "required"]},
            _oa_object(["type", "function"], {"type": {"const": "function"},
                                              "function": named})]},
        "parallel_tool_calls": nullable("boolean", description="false: at most one call per "
                                        "reply (Claude: the rest are refused to the model). "
                                        + ignored),
        "functions": nullable("array", items=_oa_object(["name"], {
            "name": "string", "description": "string", "parameters": "object"}),
            description="The legacy form of tools (not both); the reply then uses "
                        "function_call."),
        "function_call": {"description": "The legacy tool_choice.", "oneOf": [
            {"type": "null"}, {"type": "string", "enum": ["none", "auto"]}, named]},
        "response_format": {
            "description": "json_object or json_schema: the reply is JSON text (Claude: the "
                           "CLI's structured output; Ollama: format).",
            "oneOf": [{"type": "null"},
                      _oa_object(["type"], {"type": {"enum": ["text", "json_object"]}}),
                      _oa_object(["type", "json_schema"], {"type": {"const": "json_schema"},
                                                           "json_schema": json_schema})]},
        "user": nullable("string", description="Accepted and ignored."),
    }, "Fields not listed are ignored. An optional field that is null counts as absent.")


def _oa_message_schemas():
    function = {"const": "function"}
    name = {"type": "string", "description": "Accepted and ignored."}
    url = {"type": "string", "pattern": "^(data:image/[A-Za-z0-9.+-]+;base64,|https?://)",
           "examples": ["data:image/png;base64,iVBORw0KGgo="]}
    image = _oa_object(["type", "image_url"], {"type": {"const": "image_url"}, "image_url": {
        "description": "Claude takes `data:image/...;base64,...` and http(s) URLs; Ollama "
                       "only data URLs (an http(s) URL is a 400). The bare URL string is "
                       "accepted too.",
        "oneOf": [_oa_object(["url"], {"url": url, "detail": {
            "type": "string", "enum": ["auto", "low", "high"]}}), url]}})
    text = _oa_object(["type", "text"], {"type": {"const": "text"}, "text": "string"})
    content = {"oneOf": [{"type": "string"}, {"type": "array", "items": {
        "oneOf": [text, image]}}], "description": "Text, or content parts (text and "
               "images); the texts of the parts are joined with newlines."}
    legacy_call = _oa_object(["name"], {"name": "string", "arguments": "string"})
    # A role added to _ROLES fails here, until it has its variant below.
    system, developer, user, assistant, tool = _ROLES
    return {
        "ChatMessage": {"oneOf": [
            _oa_object(["role", "content"], {
                "role": {"enum": [system, developer]}, "content": content, "name": name},
                "System and developer messages become Claude Code's system prompt "
                "(appended, or replacing it with CLAUDE_SYSTEM_PROMPT=replace)."),
            _oa_object(["role", "content"],
                       {"role": {"const": user}, "content": content, "name": name}),
            _oa_object(["role"], {
                "role": {"const": assistant},
                "content": {"oneOf": [{"type": "null"}, *content["oneOf"]]}, "name": name,
                "tool_calls": _oa_nullable("array", items=_oa_ref("MessageToolCall")),
                "function_call": {"oneOf": [{"type": "null"}, legacy_call]}},
                "`content` may be null or absent only with tool_calls (or the legacy "
                "function_call).", anyOf=[
                    {"required": ["content"],
                     "properties": {"content": {"type": ["string", "array"]}}},
                    {"required": ["tool_calls"],
                     "properties": {"tool_calls": {"type": "array", "minItems": 1}}},
                    {"required": ["function_call"],
                     "properties": {"function_call": {"type": "object"}}}]),
            _oa_object(["role", "content"], {
                "role": {"const": tool}, "content": content, "tool_call_id": {
                    "type": "string",
                    "description": "The id of the assistant tool call it answers."}}),
            _oa_object(["role", "name"], {
                "role": {"const": "function"}, "name": "string", "content": "string?"},
                "A legacy function result: `name` stands for the call it answers.")]},
        "MessageToolCall": _oa_object(["function"], {
            "id": "string", "type": function, "function": _oa_object(["name"], {
                "name": "string", "arguments": {
                    "type": "string", "default": "{}", "description": "A JSON object, as a "
                    "string (Ollama refuses anything else with a 400)."}})}),
        "Tool": _oa_object(["type", "function"], {"type": function, "function": _oa_object(
            ["name"], {"name": "string", "description": "string", "parameters": "object",
                       "strict": "boolean?"})}),
    }


def _oa_reply_schemas():
    """What _complete and _stream answer."""
    function, null = {"const": "function"}, {"type": "null"}
    tokens = ("prompt_tokens", "completion_tokens", "total_tokens")
    legacy = _oa_record({"name": "string", "arguments": "string"},
                        "The legacy reply to a request with functions.")
    call_id = {"type": "string", "pattern": "^(call_[0-9a-f]{24}|toolu_[A-Za-z0-9_]+)$",
               "description": "Ollama's calls get call_ ids; Claude's keep their own."}
    completion_id = {"type": "string", "pattern": "^chatcmpl-[0-9a-f]{24}$"}
    message = _oa_record({
        "role": {"const": "assistant"},
        "content": _oa_nullable("string", description="null only beside tool_calls with no "
                                "text."),
        "tool_calls": {"type": "array", "minItems": 1, "items": _oa_ref("ToolCall")},
        "function_call": legacy, "reasoning_content": {
            "type": "string", "description": "The model's thinking (and, on the Claude "
            "path, a line per tool Claude Code ran)."}},
        required=["role", "content"])
    delta = {"type": "object", "additionalProperties": False, "properties": {
        "role": {"const": "assistant"}, "content": {"type": "string"},
        "reasoning_content": {"type": "string"}, "function_call": _oa_object([], {
            "name": "string", "arguments": "string"}),
        "tool_calls": {"type": "array", "minItems": 1, "items": _oa_ref("ToolCallDelta")}}}
    return {
        "ToolCall": _oa_record({"id": call_id, "type": function, "function": _oa_record({
            "name": "string", "arguments": {"type": "string", "contentMediaType": _JSON}})}),
        "ToolCallDelta": _oa_record({
            "index": {"type": "integer", "minimum": 0}, "id": call_id, "type": function,
            "function": _oa_record({"name": "string", "arguments": "string"},
                                   required=["arguments"])},
            "A call's first delta has its index, id, type and name; later ones its index "
            "and the next piece of the arguments. Numbered from 0 in each reply.",
            required=["index", "function"]),
        "Usage": _oa_record({**_oa_sums(*tokens),
                             "prompt_tokens_details": _oa_record(_oa_sums("cached_tokens"))},
                            "prompt_tokens = input + cache creation + cache read tokens; "
                            "cached_tokens = cache read."),
        "FinishReason": {"type": "string",
                         "enum": ["stop", "length", "tool_calls", "function_call"]},
        "ChatCompletion": _oa_record({
            "id": completion_id, "object": {"const": "chat.completion"}, "created": "integer",
            "model": {"type": "string", "description": "As the client named it."},
            "system_fingerprint": null,
            "choices": {"type": "array", "minItems": 1, "maxItems": 1, "items": _oa_record({
                "index": {"const": 0}, "message": message, "logprobs": null,
                "finish_reason": _oa_ref("FinishReason")})},
            "usage": _oa_ref("Usage")}),
        "ChatCompletionChunk": _oa_record({
            "id": completion_id, "object": {"const": "chat.completion.chunk"},
            "created": "integer", "model": "string", "system_fingerprint": null,
            "choices": {"type": "array", "maxItems": 1, "items": _oa_record({
                "index": {"const": 0}, "delta": delta, "logprobs": null,
                "finish_reason": {"oneOf": [null, _oa_ref("FinishReason")]}})},
            "usage": _oa_ref("Usage")},
            "Every chunk of a stream has the same id and created. The first delta is "
            "`{\"role\": \"assistant\", \"content\": \"\"}`; with include_usage the last "
            "chunk has no choices and the usage.",
            required=["id", "object", "created", "model", "system_fingerprint", "choices"]),
        "ChatCompletionStreamEvent": _oa_object(["data"], {
            "event": {"const": "message"}, "data": {"anyOf": [{"const": "[DONE]"}, {
                "type": "string", "contentMediaType": _JSON, "contentSchema": {
                    "oneOf": [_oa_ref("ChatCompletionChunk"), _oa_ref("Error")]}}]}},
            "One Server-Sent Event of a stream (`: keep-alive` comments come between them "
            "while the backend is silent): a chat.completion.chunk, an error object (the "
            "stream failed; it ends there, without [DONE]), or the closing `[DONE]`."),
    }


def _oa_service_schemas(providers):
    """What the models, usage and health routes answer."""
    nullable = _oa_nullable
    tokens = ("prompt_tokens", "completion_tokens", "total_tokens")
    row = {
        "id": "integer",
        "ts": {"type": "string", "format": "date-time", "description": "UTC, with "
               "milliseconds."},
        "request_id": nullable("string", description="The completion's id (chatcmpl-...)."),
        "x_request_id": nullable("string", description="The request's X-Request-ID."),
        "model": "string?", "provider": nullable("string", examples=["claude", "ollama"]),
        "session_id": "string?", "stream": "boolean",
        "outcome": {"type": "string", "enum": ["ok", "error", "cancelled"]},
        "status": nullable("integer", description="HTTP status; 499 = the client went away."),
        "error": nullable("string", maxLength=500),
        **_oa_sums(*tokens, "cached_tokens", "cost_usd"),
        "duration_ms": nullable("integer", minimum=0),
        "ttft_ms": nullable("integer", minimum=0,
                            description="Time to the first token; null when none came."),
        "via": {"type": ["string", "null"],
                "enum": ["held", "rebuilt", "forked", "elsewhere", None],
                "description": "held: the turn continued a Claude run that waited for the "
                "client's tool results; rebuilt: that run was gone, so a new one got the "
                "whole history; forked: a regenerated or edited message, resumed from where "
                "a Claude session holds the history before it; elsewhere: another bridge on "
                "the shared store held the session."},
        "api": {"type": "string", "enum": list(APIS), "description": "The API the request "
                "came in by."},
        "instance": {"type": "string", "description": "The bridge that answered it "
                     "(INSTANCE_NAME; empty for rows from before instances)."}}
    return {
        "Model": _oa_record({
            "id": {"type": "string", "examples": ["claude-code", "ollama/llama3.2:latest"]},
            "object": {"const": "model"}, "created": {"type": "integer", "description":
                "Claude models: when the bridge started; Ollama's: modified_at (0 if "
                "unknown)."},
            "owned_by": {"type": "string", "enum": ["anthropic", "ollama"]}}),
        "ModelList": _oa_record({"object": {"const": "list"},
                                 "data": {"type": "array", "items": _oa_ref("Model")}}),
        "UsageSummary": _oa_record({
            "model": nullable("string", description="null only for rows migrated without "
                              "one."), "provider": "string?",
            "api": {"type": "string", "enum": list(APIS)}, "instance": "string",
            "requests": {"type": "integer", "minimum": 1},
            "errors": {"type": "integer", "minimum": 0,
                       "description": "Requests whose outcome was not ok."},
            **_oa_sums(*tokens, "avg_duration_ms", "cached_tokens", "cost_usd")}),
        # In UsageStore.recent's column order: a column added there is a KeyError here
        # until it is described.
        "UsageRow": _oa_record(
            {column: row[column] for column in UsageStore._RECENT}, "One request. Rows "
            "migrated from the Go bridge have null request_id, status and session fields."),
        "UsageBucket": _oa_record({
            "bucket": {"type": "string", "format": "date-time",
                       "description": "Start of the minute, hour or day (UTC)."},
            **_oa_sums("requests", "errors", *tokens, "cost_usd")}),
        "Health": _oa_record({
            "status": {"type": "string", "enum": ["ok", "degraded"], "description":
                       "ok: the database works and at least one backend is usable."},
            "version": "string",
            "backends": {
                "type": "object", "required": list(providers),
                # A registered backend's own: at least "ok".
                "additionalProperties": _oa_object(["ok"], {"ok": "boolean"}),
                "properties": {
                    "claude": _oa_record({"ok": "boolean", "binary": "string?",
                                          "version": "string?", "logged_in": "boolean?",
                                          "warning": "string?", "error": "string?"}),
                    "ollama": _oa_record({"ok": "boolean", "url": "string",
                                          "version": "string?", "error": "string?"})}},
            "database": _oa_record({"path": "string", "ok": "boolean", "error": "string?",
                                    "queued": {"type": "integer", "minimum": 0},
                                    "dropped": {"type": "integer", "minimum": 0}},
                                   required=["path", "ok", "error"],
                                   description="With USAGE_DB_URL: `path` is the URL "
                                   "without its password, `queued` the rows and writes "
                                   "waiting for PostgreSQL, `dropped` the rows a full queue "
                                   "refused.")}),
    }


def _oa_anthropic_errors():
    return {str(status): _oa_response(what, _oa_ref("AnthropicError")) for status, what in (
        (400, "A bad field (Anthropic's invalid_request_error)."),
        (401, "Missing or wrong key: `x-api-key` or `Authorization: Bearer`."),
        (404, "An `ollama/<name>` model Ollama does not have."), (413, "Too large."),
        (429, "No free Claude slot in time, or Anthropic's rate limit."),
        (502, "The backend failed."), (503, "A backend is busy or missing."),
        (504, "A timeout passed."))}


def _oa_dialect_paths():
    """The Responses, Messages, completions and embeddings routes."""
    unauthorized = {"401": _oa_ref("Unauthorized", "responses")}
    common = {"400": _oa_ref("BadRequest", "responses"), **unauthorized,
              "404": _oa_error("An `ollama/<name>` model Ollama does not have (code "
                               "`model_not_found`)."),
              "413": _oa_error("The body is larger than MAX_BODY_MB."),
              "429": _oa_error("No free Claude slot in time, or Anthropic's rate limit."),
              "502": _oa_error("The backend failed."), "503": _oa_error("A backend is busy "
                                                                       "or missing."),
              "504": _oa_error("A timeout passed.")}
    anthropic = _oa_anthropic_errors()
    def reply(what, schema, stream_what):
        out = _oa_response(what, _oa_ref(schema))
        out["content"]["text/event-stream"] = {"schema": _oa_ref(schema + "StreamEvent")}
        out["content"]["text/event-stream"]["schema"]["description"] = stream_what
        return out

    def body(schema):
        return {"required": True, "content": {_JSON: {"schema": _oa_ref(schema)}}}
    response_id = {"name": "response_id", "in": "path", "required": True,
                   "schema": {"type": "string"}, "description": "A stored response's id."}
    missing = {"404": _oa_error("No stored response of this key with that id."),
               **unauthorized}
    return {
        "/v1/responses": _oa_operation(
            "createResponse", "responses", "OpenAI's Responses API over the same backends.",
            {"200": reply("The response object, or its typed events with `stream: true`.",
                          "Response", "response.created, response.in_progress, "
                          "response.output_item.added/done, response.content_part.added/"
                          "done, response.output_text.delta/done, response.function_call_"
                          "arguments.delta/done, response.reasoning_summary_*, then "
                          "response.completed (or .incomplete, or .failed)."), **common},
            description="Stored (unless `store: false`) for previous_response_id, GET and "
                        "DELETE, up to RESPONSES_MAX. One usage row (api `responses`).",
            body=body("CreateResponseRequest")),
        "/v1/responses/{response_id}": {
            **_oa_operation("getResponse", "responses", "A stored response.",
                            {"200": _oa_response("The response.", _oa_ref("Response")),
                             **missing}, parameters=[response_id]),
            **_oa_operation("deleteResponse", "responses", "Forget a stored response.",
                            {"200": _oa_response("Forgotten.", _oa_record({
                                "id": "string", "object": {"const": "response"},
                                "deleted": {"const": True}})), **missing},
                            parameters=[response_id], method="delete")},
        "/v1/messages": _oa_operation(
            "createMessage", "messages", "Anthropic's Messages API over the same backends.",
            {"200": reply("The message, or its events with `stream: true`.",
                          "AnthropicMessage", "message_start, content_block_start/delta/"
                          "stop, ping, message_delta, message_stop; `error` on failure."),
             **anthropic},
            description="Errors are Anthropic's `{\"type\": \"error\", ...}`. One usage row "
                        "(api `messages`).", body=body("CreateMessageRequest"),
            errors="Anthropic"),
        "/v1/messages/count_tokens": _oa_operation(
            "countMessageTokens", "messages", "An estimate of a request's input tokens.",
            {"200": _oa_response("The estimate (no backend counts without running the "
                                 "model: about 4 characters a token).", _oa_record({
                                     "input_tokens": {"type": "integer", "minimum": 1},
                                     "estimated": {"const": True}}),
                                 **{"X-Bridge-Token-Count": {"schema": {
                                     "const": "estimated"}}}),
             "400": anthropic["400"], "401": anthropic["401"], "413": anthropic["413"]},
            body=body("CountTokensRequest"), errors="Anthropic"),
        "/v1/completions": _oa_operation(
            "createCompletion", "completions", "OpenAI's legacy completions: the prompt goes "
            "to the model as one user message.",
            {"200": reply("A text_completion, or its chunks ending with `data: [DONE]`.",
                          "TextCompletion", "text_completion chunks, then `data: [DONE]`."),
             **common}, body=body("CreateCompletionRequest")),
        "/v1/embeddings": _oa_operation(
            "createEmbedding", "embeddings", "Embeddings from an Ollama model (Claude has "
            "none: a 400).", {"200": _oa_response("The vectors.", _oa_ref("EmbeddingList")),
                              **common}, body=body("CreateEmbeddingRequest")),
    }


def _oa_dialect_requests():
    """What the Responses, Messages, completions and embeddings dialects accept."""
    nullable = _oa_nullable
    chat = _oa_chat_request()["properties"]
    model = chat["model"]
    objects = {"type": "array", "items": {"type": "object"}}
    many = {"minimum": 1, "maximum": 10_000_000}
    schema_format = _oa_object(["type", "name", "schema"], {
        "type": {"const": "json_schema"}, "name": "string", "schema": "object",
        "strict": "boolean?", "description": "string"})
    messages = {"type": "array", "minItems": 1, "items": _oa_object(["role", "content"], {
        "role": {"enum": ["user", "assistant"]},
        "content": {"oneOf": [{"type": "string"}, objects]}})}
    anthropic = {
        "model": {**model, "type": "string", "anyOf": model["anyOf"][1:]},
        "system": {"oneOf": [{"type": "null"}, {"type": "string"}, objects]},
        "messages": messages, "stream": "boolean?",
        "tools": {"oneOf": [{"type": "null"}, objects]},
        "tool_choice": "object?", "thinking": "object?", "metadata": "object?",
        "mcp_servers": {"type": "null", "description": "Not supported."}}
    return {
        "CreateResponseRequest": _oa_object(["input"], {
            "model": model,
            "input": {"oneOf": [{"type": "string"}, objects]},
            "instructions": "string?", "stream": "boolean?", "store": "boolean?",
            "previous_response_id": "string?", "metadata": "object?",
            "temperature": chat["temperature"], "top_p": chat["top_p"],
            "top_logprobs": chat["top_logprobs"],
            "max_output_tokens": nullable("integer", **many),
            "reasoning": {"type": ["object", "null"], "properties": {
                "effort": {"enum": [None, *_REASONING_EFFORTS]}}},
            "tools": {"oneOf": [{"type": "null"}, objects], "description": "Function tools; "
                      "others are named in X-Bridge-Ignored-Params."},
            "tool_choice": {"oneOf": [
                {"type": "null"}, {"type": "string", "enum": ["none", "auto", "required"]},
                _oa_object(["type", "name"], {"type": {"const": "function"},
                                              "name": "string"})]},
            "parallel_tool_calls": "boolean?",
            "text": {"type": ["object", "null"], "properties": {"format": {"oneOf": [
                {"type": "null"}, _oa_object(["type"], {"type": {"enum": ["text",
                                                                          "json_object"]}}),
                schema_format]}}},
            "background": {"enum": [None, False], "description": "Not supported."},
            "conversation": {"type": "null", "description": "Not supported."},
            "prompt": {"type": "null", "description": "Not supported."}},
            "Fields not listed are ignored."),
        "CreateMessageRequest": _oa_object(["model", "max_tokens", "messages"], {
            **anthropic, "max_tokens": {"type": "integer", **many},
            "stop_sequences": nullable("array", items={"type": "string", "minLength": 1}),
            "temperature": nullable("number", minimum=0, maximum=1),
            "top_p": nullable("number", minimum=0, maximum=1),
            "top_k": nullable("integer", minimum=0, maximum=1_000_000)},
            "Fields not listed are ignored."),
        "CountTokensRequest": _oa_object(["model", "messages"], anthropic),
        "CreateCompletionRequest": _oa_object(["prompt"], {
            "model": model, "prompt": {"oneOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "minItems": 1, "maxItems": 1,
                 "items": {"type": "string", "minLength": 1}}]},
            **{name: chat[name] for name in (
                "stream", "stream_options", "n", "temperature", "top_p", "presence_penalty",
                "frequency_penalty", "seed", "logit_bias", "max_tokens", "stop", "user")},
            "echo": "boolean?", "suffix": {"enum": [None, ""], "description": "Not supported."},
            "best_of": nullable("integer", minimum=1, maximum=1),
            "logprobs": nullable("integer", minimum=0, maximum=5, description="Not "
                                 "supported: named in X-Bridge-Ignored-Params.")},
            "Fields not listed are ignored."),
        "CreateEmbeddingRequest": _oa_object(["input"], {
            "model": model, "input": {"oneOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "minItems": 1, "maxItems": _EMBED_INPUTS_MAX,
                 "items": {"type": "string", "minLength": 1}}],
                "description": "Text only (token arrays are a 400)."},
            "encoding_format": {"enum": [None, "float", "base64"]},
            "dimensions": nullable("integer", minimum=1, maximum=65536),
            "user": "string?"}, "Fields not listed are ignored."),
    }


def _oa_stream_schemas(usage):
    """One event of each dialect's stream."""
    def named(names):
        """One named Server-Sent Event whose data is a JSON object of that type."""
        return _oa_object(["event", "data"], {"event": {"enum": names}, "data": {
            "type": "string", "contentMediaType": _JSON, "contentSchema": _oa_object(
                ["type"], {"type": {"enum": names}})}})
    null = {"type": "null"}
    choice = _oa_record({"text": "string", "index": {"const": 0}, "logprobs": null,
                         "finish_reason": {"enum": [None, "stop", "length"]}})
    chunk = _oa_record({
        "id": {"type": "string", "pattern": "^cmpl-[0-9a-f]{24}$"},
        "object": {"const": "text_completion"}, "created": "integer", "model": "string",
        "system_fingerprint": null, "choices": {"type": "array", "maxItems": 1,
                                                "items": choice}, "usage": usage},
        required=["id", "object", "created", "model", "system_fingerprint", "choices"])
    return {
        "ResponseStreamEvent": named(_RESPONSE_EVENTS),
        "AnthropicMessageStreamEvent": named(_MESSAGE_EVENTS),
        "TextCompletionStreamEvent": _oa_object(["data"], {
            "event": {"const": "message"}, "data": {"anyOf": [{"const": "[DONE]"}, {
                "type": "string", "contentMediaType": _JSON, "contentSchema": {
                    "oneOf": [chunk, _oa_ref("Error")]}}]}}),
    }


_RESPONSE_EVENTS = [f"response.{name}" for name in (
    "created", "in_progress", "completed", "incomplete", "failed", "output_item.added",
    "output_item.done", "content_part.added", "content_part.done", "output_text.delta",
    "output_text.done", "function_call_arguments.delta", "function_call_arguments.done",
    "reasoning_summary_part.added", "reasoning_summary_part.done",
    "reasoning_summary_text.delta", "reasoning_summary_text.done")]
_MESSAGE_EVENTS = ["message_start", "content_block_start", "content_block_delta",
                   "content_block_stop", "message_delta", "message_stop", "ping", "error"]


def _oa_dialect_replies():
    """What the Responses, Messages, completions and embeddings dialects answer."""
    null, text = {"type": "null"}, {"type": "string"}
    tokens = ("prompt_tokens", "completion_tokens", "total_tokens")
    usage = _oa_record({**_oa_sums(*tokens),
                        "prompt_tokens_details": _oa_record(_oa_sums("cached_tokens"))})
    output_text = _oa_record({"type": {"const": "output_text"}, "text": "string",
                              "annotations": {"type": "array", "maxItems": 0},
                              "logprobs": {"type": "array", "maxItems": 0}})
    item = {"oneOf": [
        _oa_record({"id": {"type": "string", "pattern": "^msg_"}, "type": {"const": "message"},
                    "status": {"enum": ["completed", "incomplete"]},
                    "role": {"const": "assistant"},
                    "content": {"type": "array", "items": output_text}}),
        _oa_record({"id": {"type": "string", "pattern": "^fc_"},
                    "type": {"const": "function_call"}, "status": {"const": "completed"},
                    "call_id": "string", "name": "string", "arguments": "string"}),
        _oa_record({"id": {"type": "string", "pattern": "^rs_"}, "type": {"const": "reasoning"},
                    "summary": {"type": "array", "items": _oa_record({
                        "type": {"const": "summary_text"}, "text": "string"})}})]}
    response = {
        "id": {"type": "string", "pattern": _oa_pattern(_RESPONSE_ID)},
        "object": {"const": "response"}, "created_at": "integer",
        "status": {"enum": ["completed", "incomplete"]}, "background": {"const": False},
        "error": null, "incomplete_details": {"oneOf": [null, _oa_record({
            "reason": {"const": "max_output_tokens"}})]},
        "instructions": "string?", "max_output_tokens": "integer?", "model": "string",
        "output": {"type": "array", "items": item}, "parallel_tool_calls": "boolean",
        "previous_response_id": "string?", "reasoning": "object", "store": "boolean",
        "temperature": "number?", "text": "object", "tool_choice": {},
        "tools": {"type": "array", "items": {"type": "object"}}, "top_p": "number?",
        "truncation": {"const": "disabled"}, "user": null, "metadata": "object",
        "usage": _oa_record({
            "input_tokens": {"type": "integer", "minimum": 0},
            "input_tokens_details": _oa_record(_oa_sums("cached_tokens",
                                                        "cache_write_tokens")),
            "output_tokens": {"type": "integer", "minimum": 0},
            "output_tokens_details": _oa_record(_oa_sums("reasoning_tokens")),
            "total_tokens": {"type": "integer", "minimum": 0}})}
    block = {"oneOf": [
        _oa_record({"type": {"const": "text"}, "text": "string"}),
        _oa_record({"type": {"const": "thinking"}, "thinking": "string",
                    "signature": "string"}),
        _oa_record({"type": {"const": "tool_use"}, "id": "string", "name": "string",
                    "input": "object"})]}
    return {
        **_oa_stream_schemas(usage),
        "Response": _oa_record(response, "A Responses API response."),
        "AnthropicMessage": _oa_record({
            "id": {"type": "string", "pattern": "^msg_[0-9a-f]{24}$"},
            "type": {"const": "message"}, "role": {"const": "assistant"}, "model": "string",
            "content": {"type": "array", "items": block},
            "stop_reason": {"enum": ["end_turn", "max_tokens", "tool_use", "stop_sequence"]},
            "stop_sequence": "string?",
            "usage": _oa_record(_oa_sums("input_tokens", "output_tokens",
                                         "cache_read_input_tokens",
                                         "cache_creation_input_tokens"))}),
        "AnthropicError": _oa_record({"type": {"const": "error"}, "error": _oa_record({
            "type": {"enum": sorted({*_ANTHROPIC_ERRORS.values(), "invalid_request_error",
                                     "api_error"})}, "message": text})}),
        "TextCompletion": _oa_record({
            "id": {"type": "string", "pattern": "^cmpl-[0-9a-f]{24}$"},
            "object": {"const": "text_completion"}, "created": "integer", "model": "string",
            "system_fingerprint": null, "choices": {
                "type": "array", "minItems": 1, "maxItems": 1, "items": _oa_record({
                    "text": "string", "index": {"const": 0}, "logprobs": null,
                    "finish_reason": {"enum": ["stop", "length"]}})},
            "usage": usage}),
        "EmbeddingList": _oa_record({
            "object": {"const": "list"}, "model": "string",
            "data": {"type": "array", "items": _oa_record({
                "object": {"const": "embedding"}, "index": {"type": "integer", "minimum": 0},
                "embedding": {"oneOf": [{"type": "array", "items": {"type": "number"}},
                                        {"type": "string", "contentEncoding": "base64"}]}})},
            "usage": _oa_record(_oa_sums("prompt_tokens", "total_tokens"))}),
    }


if __name__ == "__main__":
    sys.exit(main())
