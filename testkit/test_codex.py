"""OpenAI's Codex CLI (npm `@openai/codex`, 0.171.0) against a real bridge and the fake Claude
CLI, over `POST /v1/responses`: a plain prompt, and a tool round trip in which the "model"
calls Codex's own `exec_command` function and answers with what the command printed.

Codex is pointed at the bridge offline by a config file in a temporary CODEX_HOME (a custom
provider with wire_api = "responses"; the bridge key comes from the variable named by
env_key; no retries, so a bridge error fails at once), and runs as `codex exec` without
sandbox or approvals (no bubblewrap needed), stdin closed (else it waits for more input).
It prints only its final answer on stdout, its log (commands run, errors) on stderr.

Installed outside the repo:

    npm install --no-save --prefix ~/.cache/claude-bridge/codex @openai/codex@0.171.0

Outside CI the tests skip when it is missing; in CI (CI set) that is a failure, since
.ci/run installs it.
"""
import json
import os
from pathlib import Path

import pytest
import requests

from testkit.harness import prompt_of, run_program

CODEX_VERSION = "0.171.0"
CODEX = Path.home() / ".cache/claude-bridge/codex/node_modules/.bin/codex"
KEY = "sk-codex-bridge-test"
TIMEOUT = 120  # seconds for one `codex exec`


@pytest.fixture
def codex():
    if not CODEX.exists():
        if os.environ.get("CI"):
            pytest.fail("the Codex CLI must be installed in CI (.ci/run does it)")
        pytest.skip(f"Codex CLI {CODEX_VERSION} not installed (see .ci/run)")
    return str(CODEX)


def run_codex(codex, br, tmp_path, prompt):
    """`codex exec PROMPT` against the bridge br: (returncode, stdout, stderr)."""
    home = tmp_path / "codex-home"
    home.mkdir(exist_ok=True)
    # No retries: a bridge error shows at once instead of after 5 x 5 reconnects.
    (home / "config.toml").write_text(f"""\
model = "claude-code"
model_provider = "bridge"

[model_providers.bridge]
name = "claude-bridge"
base_url = "{br.url}/v1"
env_key = "BRIDGE_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
stream_idle_timeout_ms = 60000
""")
    work = tmp_path / "codex-work"
    work.mkdir(exist_ok=True)
    user_home = tmp_path / "codex-user-home"
    user_home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CODEX_", "OPENAI_"))}
    env.update(CODEX_HOME=str(home), HOME=str(user_home),
               BRIDGE_KEY=br.settings.claude_auth_key or "unused", NO_COLOR="1")
    argv = [codex, "exec", "--skip-git-repo-check",
            "--dangerously-bypass-approvals-and-sandbox", "--color", "never", prompt]
    return run_program(argv, work, env, TIMEOUT, "codex exec")


def responses_rows(br):
    """The rows of GET /v1/usage/recent for /v1/responses requests, oldest first."""
    resp = requests.get(br.url + "/v1/usage/recent",
                        headers={"Authorization": "Bearer " + KEY}, timeout=30)
    assert resp.status_code == 200, resp.text
    rows = resp.json()
    rows = rows["data"] if isinstance(rows, dict) else rows
    return [r for r in reversed(rows) if r.get("api") == "responses"]


def test_codex_plain_prompt(start, codex, tmp_path):
    br = start(CLAUDE_AUTH_KEY=KEY)
    code, out, err = run_codex(codex, br, tmp_path, "Say hello to codex-plain-check")
    assert code == 0, f"stdout:\n{out}\nstderr:\n{err}"
    # `codex exec` prints the final answer alone on stdout: the fake's reply to the prompt.
    assert "FAKE-REPLY" in out, err
    assert "codex-plain-check" in out
    runs = br.chat_runs()
    assert len(runs) == 1
    assert "Say hello to codex-plain-check" in prompt_of(runs[0])
    rows = responses_rows(br)
    assert len(rows) == 1, rows
    row = rows[0]
    assert (row["provider"], row["outcome"], row["status"], row["stream"]) == (
        "claude", "ok", 200, True), row


def test_codex_runs_exec_command_for_the_model(start, codex, tmp_path):
    br = start(CLAUDE_AUTH_KEY=KEY)
    # The shell works out 42: the reply can only hold it if Codex ran the command.
    args = {"cmd": "echo codex-ran-$((6*7))"}
    prompt = f"Run it [fake:mcp-call:exec_command:{json.dumps(args)}]"
    code, out, err = run_codex(codex, br, tmp_path, prompt)
    assert code == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert "echo codex-ran-$((6*7))" in err  # Codex's log of the command it ran
    assert "FAKE-REPLY tool results: exec_command=" in out, err
    result = out.split("FAKE-REPLY tool results: exec_command=", 1)[1]
    assert "codex-ran-42" in result
    # The function call went out to Codex and its output came back to the same CLI run.
    assert len(br.chat_runs()) == 1, br.chat_runs()
    rows = responses_rows(br)
    assert len(rows) == 2, rows  # the call, then the request carrying its output
    assert [(r["outcome"], r["status"]) for r in rows] == [("ok", 200)] * 2, rows
