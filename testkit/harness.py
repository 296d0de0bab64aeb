"""The test harness: a real bridge under waitress on port 0 (or as `python bridge.py`),
its fake CLI's log, the fake Ollama, and the helpers the tests share. Plain module: the
fixtures are imported by testkit/conftest.py and test_bridge.py."""

import json
import os
import re
import sqlite3
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest
import requests

import bridge

ROOT = Path(__file__).resolve().parent.parent
FAKE_CLAUDE = ROOT / "testkit" / "fake_claude.py"
REPLY = "FAKE-REPLY model=claude-opus-5-5 msgs=2 len_last=5 to: hello"


# ----------------------------------------------------------------------------------------
# Harness
# ----------------------------------------------------------------------------------------

class Running:
    """A bridge served by waitress in a thread, with its fake CLI's log directory."""

    def __init__(self, tmp, env):
        self.tmp = tmp
        self.log_dir = tmp / "fake-log"
        self.log_dir.mkdir(exist_ok=True)
        # No warm CLIs unless a test asks: the other tests count the CLIs they start.
        base = {"PORT": "0", "CLAUDE_BIN": str(FAKE_CLAUDE), "CLAUDE_WORKDIR": str(tmp),
                "USAGE_DB_PATH": str(tmp / "usage.db"), "THREADS": "16",
                "CLAUDE_WARM_POOL": "0", "CLAUDE_SESSION_KEEPALIVE": "0",
                # Stateless unless a test asks: the other tests count sessions they start.
                "RECOGNISE_CONVERSATIONS": "false"}
        base.update(env)
        self.settings = bridge.load_settings(environ=base)
        self.server = bridge.create_server(self.settings)
        self.app = self.server.app
        self.url = f"http://127.0.0.1:{self.server.effective_port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def client(self, **kw):
        """The official SDK with strict response validation and no retries."""
        kw.setdefault("api_key", self.settings.claude_auth_key or "unused")
        return openai.OpenAI(base_url=self.url + "/v1", max_retries=0,
                             timeout=60, **{"_strict_response_validation": True, **kw})

    def post(self, body, headers=None, **kw):
        """POST /v1/chat/completions with requests."""
        return requests.post(self.url + "/v1/chat/completions", json=body,
                             headers=headers or {}, timeout=60, **kw)

    def runs(self):
        """What each fake CLI run recorded (argv, stdin, pid, ...), oldest first."""
        out = []
        for path in self.log_dir.glob("*.json"):
            try:
                out.append(json.loads(path.read_text()))
            except ValueError:
                continue  # being written
        return sorted(out, key=lambda r: r["started"])

    def chat_runs(self):
        """Fake CLI runs other than `--version` (health checks)."""
        return [r for r in self.runs() if "--version" not in r["argv"]]

    def rows(self):
        """The usage rows, oldest first (from PostgreSQL once they reached it, with
        USAGE_DB_URL)."""
        if self.settings.usage_db_url:
            import psycopg
            from psycopg.rows import dict_row
            assert self.app.bridge.store.flush(), "rows still waiting for PostgreSQL"
            with psycopg.connect(self.settings.usage_db_url, row_factory=dict_row) as db:
                return db.execute("SELECT * FROM requests ORDER BY id").fetchall()
        db = sqlite3.connect(self.settings.usage_db_path)
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute("SELECT * FROM requests ORDER BY id")]
        finally:
            db.close()

    def stop(self):
        if self.thread.is_alive():
            bridge.stop_server(self.server, self.thread)
            self.app.bridge.close()


@pytest.fixture
def start(tmp_path, monkeypatch):
    """Start a bridge with extra settings; every one started is stopped after the test."""
    started = []
    # The CLI inherits the bridge's environment: the fake keeps its sessions and logs here.
    monkeypatch.setenv("CLAUDE_CONFIG_DIR", str(tmp_path / "claude-config"))
    monkeypatch.setenv("FAKE_CLAUDE_LOG", str(tmp_path / "fake-log"))
    monkeypatch.setenv("FAKE_CLAUDE_AUTH", "ok")  # `claude auth status`: logged in
    monkeypatch.delenv("CLAUDECODE", raising=False)

    def _start(**env):
        running = Running(tmp_path, {k: str(v) for k, v in env.items()})
        started.append(running)
        return running

    yield _start
    for running in started:
        running.stop()


@pytest.fixture
def br(start):
    return start()


def prompt_of(run):
    """The prompt a fake CLI run was given (stream-json input: its one user message)."""
    return run["turns"][0] if run.get("turns") else run["stdin"]


FIXED_ARGV = ["-p", "--input-format", "stream-json", "--output-format", "stream-json",
              "--verbose", "--include-partial-messages"]


def user(text):
    return {"model": "claude-code", "messages": [{"role": "user", "content": text}]}


def sse_events(response):
    """(data lines, comment lines) of a raw SSE response."""
    data, comments = [], []
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("data: "):
            data.append(line[6:])
        elif line.startswith(":"):
            comments.append(line)
    return data, comments


def alive(pid):
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone (even between open and read)
        return False


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def assert_error(resp, status, code=None):
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if code is not None:
        assert err["code"] == code
    return err


@pytest.fixture
def ollama_fake():
    from testkit import fake_ollama
    server = fake_ollama.start()
    yield server
    server.stop()


class BridgeProcess:
    """`python bridge.py` in a subprocess, its port read from the start-up banner."""

    def __init__(self, tmp, **env):
        self.tmp = tmp
        full = {**os.environ, "PORT": "0", "CLAUDE_BIN": str(FAKE_CLAUDE),
                "CLAUDE_WARM_POOL": "0", "CLAUDE_SESSION_KEEPALIVE": "0",
                "RECOGNISE_CONVERSATIONS": "false",
                "CLAUDE_WORKDIR": str(tmp), "USAGE_DB_PATH": str(tmp / "usage.db"),
                "FAKE_CLAUDE_LOG": str(tmp / "fake-log"), "FAKE_CLAUDE_AUTH": "ok",
                "CLAUDE_CONFIG_DIR": str(tmp / "claude-config"), **env}
        (tmp / "fake-log").mkdir(exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "bridge.py")], env=full,
                                     stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.port = None
        for line in self.proc.stderr:
            self.lines.append(line)
            match = re.search(r"listening on http://127.0.0.1:(\d+)/v1", line)
            if match:
                self.port = int(match.group(1))
                break
        assert self.port, "".join(self.lines)
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr),
                                       daemon=True)
        self.reader.start()
        self.url = f"http://127.0.0.1:{self.port}"

    def runs(self):
        return [json.loads(p.read_text()) for p in (self.tmp / "fake-log").glob("*.json")]

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def bridge_process(tmp_path):
    made = []

    def _start(**env):
        made.append(BridgeProcess(tmp_path, **env))
        return made[-1]

    yield _start
    for p in made:
        p.kill()


# ----------------------------------------------------------------------------------------
# The real CLI
# ----------------------------------------------------------------------------------------

# The two CLI versions users have: the newest, and what npm installs on Node 20.
REAL_CLI_VERSIONS = {"2.1.332": "cli", "2.1.197": "cli197"}


def _real_cli(version):
    path = Path.home() / f".cache/claude-bridge/{REAL_CLI_VERSIONS[version]}/node_modules/.bin/claude"
    return str(path) if path.exists() else None


@pytest.fixture(params=sorted(REAL_CLI_VERSIONS))
def real_cli(request):
    path = _real_cli(request.param)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("the real claude CLI must be installed in CI (.ci/run does it)")
        pytest.skip(f"real claude CLI {request.param} not installed (see .ci/run)")
    return path


@pytest.fixture
def fake_api(tmp_path, monkeypatch):
    """A fake Anthropic API, and the environment that points the real CLI at it."""
    from testkit import fake_anthropic
    api = fake_anthropic.start()
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CLAUDE_CONFIG_DIR")
    for name, value in (("ANTHROPIC_BASE_URL", api.url), ("ANTHROPIC_API_KEY", "dummy"),
                        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
                        ("DISABLE_TELEMETRY", "1"), ("DISABLE_AUTOUPDATER", "1"),
                        ("CLAUDE_CODE_MAX_RETRIES", "0")):
        monkeypatch.setenv(name, value)
    yield api
    api.stop()


def run_program(argv, cwd, env, timeout, what):
    """Run a real client program (stdin closed, its own process group): (returncode,
    stdout, stderr). On a timeout the test fails; the group (a tool's shell too) is always
    killed and reaped."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{what} timed out after {timeout}s\nstdout:\n{out[-4000:]}\n"
                    f"stderr:\n{err[-4000:]}")
    finally:
        if proc.poll() is None:  # an exception other than the timeout
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        try:  # anything it left in its group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.returncode, out, err
