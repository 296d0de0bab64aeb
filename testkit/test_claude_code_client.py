"""The real Claude Code CLI (2.1.332 and 2.1.197, the real_cli fixture) as a client of the
bridge's Anthropic Messages API: ANTHROPIC_BASE_URL points it at the bridge, `--model
ollama/llama3.2` routes its requests to the fake Ollama (testkit/fake_ollama.py), and the
fake's answers come back through the bridge into what `claude -p` prints.

- A plain prompt, with x-api-key auth (CLAUDE_AUTH_KEY on the bridge, ANTHROPIC_API_KEY for
  the CLI): the result is the fake's ECHO of the prompt, and the bridge's usage row says
  api "messages", provider "ollama", outcome ok. With a wrong key the CLI reports the
  bridge's 401 (Invalid API key) and nothing reaches Ollama.
- A tool round trip: a `[tool:Bash:{...}]` marker makes the fake Ollama ask for Claude
  Code's own Bash tool; the CLI runs the command (the shell works out 6*7, so only a real
  run can print cc-ran-42), sends the tool_result back through the bridge, and the fake's
  next /api/chat request carries it as a `tool` message; the result the CLI prints is the
  fake's second reply (the fake answers text once tool results follow the marker).

The CLI runs offline (the env recipe of /work/shared/reference/clients.md, "Claude Code CLI
as a client of the bridge"): a fresh HOME per test, no nonessential traffic, no retries,
stdin closed, a scratch working directory, in its own process group (killed and reaped
whatever happens).
"""
import json
import os

import requests

from testkit.harness import run_program

KEY = "sk-claude-code-bridge-test"
MODEL = "ollama/llama3.2"
TIMEOUT = 20  # seconds for one `claude -p`


def run_claude(cli, br, tmp_path, prompt, *extra, key=KEY):
    """`claude -p PROMPT --model ollama/llama3.2` (stream-json) against the bridge br:
    (returncode, the parsed stdout events, stdout, stderr)."""
    home = tmp_path / "cc-home"
    home.mkdir(exist_ok=True)
    work = tmp_path / "cc-work"
    work.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANTHROPIC_", "CLAUDE", "OLLAMA_", "FAKE_CLAUDE"))}
    env.update(HOME=str(home), ANTHROPIC_BASE_URL=br.url, ANTHROPIC_API_KEY=key,
               CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_TELEMETRY="1",
               DISABLE_AUTOUPDATER="1", DISABLE_ERROR_REPORTING="1",
               CLAUDE_CODE_MAX_RETRIES="0", NO_COLOR="1")
    argv = [cli, "-p", prompt, "--model", MODEL, "--output-format", "stream-json",
            "--verbose", "--no-session-persistence", *extra]
    code, out, err = run_program(argv, work, env, TIMEOUT, "claude -p")
    events = []
    for line in out.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return code, events, out, err


def shown(out, err):
    """The CLI's output for a failure message (its ends: a looping run prints a lot)."""
    def cut(text):
        return text if len(text) <= 6000 else text[:2000] + "\n[...]\n" + text[-4000:]
    return f"stdout:\n{cut(out)}\nstderr:\n{cut(err)}"


def result_of(events, out, err):
    """The one `result` event of a stream-json run."""
    results = [e for e in events if e.get("type") == "result"]
    assert len(results) == 1, shown(out, err)
    return results[0]


def messages_rows(br):
    """The rows of GET /v1/usage/recent for /v1/messages requests, oldest first."""
    resp = requests.get(br.url + "/v1/usage/recent", headers={"x-api-key": KEY}, timeout=30)
    assert resp.status_code == 200, resp.text
    rows = resp.json()
    rows = rows["data"] if isinstance(rows, dict) else rows
    return [r for r in reversed(rows) if r.get("api") == "messages"]


def echo_of(body):
    """What the fake Ollama answers a chat body without tool calls (see its docstring)."""
    messages = body["messages"]
    last = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    images = sum(len(m.get("images") or []) for m in messages)
    return f"ECHO model={body['model']} msgs={len(messages)} images={images} last={last}"


def test_plain_prompt_through_the_bridge(start, ollama_fake, real_cli, tmp_path):
    br = start(OLLAMA_URL=ollama_fake.url, CLAUDE_AUTH_KEY=KEY)
    prompt = "Say hello to cc-plain-check"
    code, events, out, err = run_claude(real_cli, br, tmp_path, prompt)
    assert code == 0, shown(out, err)
    result = result_of(events, out, err)
    assert result["is_error"] is False, result
    assert result["subtype"] == "success", result
    # One request reached Ollama: the prompt is its last user message, the answer its echo.
    bodies = ollama_fake.chat_bodies()
    assert len(bodies) == 1, bodies
    assert bodies[0]["model"] == "llama3.2"
    # Claude Code's system prompt and its `role: system` message (sent after the prompt)
    # reach Ollama as system messages; the prompt is the last message.
    roles = [m["role"] for m in bodies[0]["messages"]]
    assert roles[-1] == "user" and set(roles[:-1]) == {"system"}, roles
    assert echo_of(bodies[0]).endswith(prompt)  # after Claude Code's <system-reminder>
    assert result["result"] == echo_of(bodies[0]), result
    # The assistant message in the stream carries the same text.
    texts = [b["text"] for e in events if e.get("type") == "assistant"
             for b in e["message"]["content"] if b.get("type") == "text"]
    assert "".join(texts) == result["result"], events
    rows = messages_rows(br)
    assert len(rows) == 1, rows
    row = rows[0]
    assert (row["provider"], row["model"], row["outcome"], row["status"], row["stream"]) == (
        "ollama", MODEL, "ok", 200, True), row
    # The tokens Ollama counted reach the CLI's result as they reach the usage row.
    assert (result["usage"]["input_tokens"], result["usage"]["output_tokens"]) == (
        row["prompt_tokens"], row["completion_tokens"]), (result["usage"], row)
    assert row["completion_tokens"] > 0
    assert [r["api"] for r in br.rows()] == ["messages"]


def test_plain_prompt_needs_the_key(start, ollama_fake, real_cli, tmp_path):
    br = start(OLLAMA_URL=ollama_fake.url, CLAUDE_AUTH_KEY=KEY)
    code, events, out, err = run_claude(real_cli, br, tmp_path, "hello", key="sk-wrong")
    assert code != 0, shown(out, err)
    result = result_of(events, out, err)
    assert result["is_error"] is True, result
    assert result["api_error_status"] == 401, result
    assert "Invalid API key" in result["result"], result
    assert ollama_fake.chat_bodies() == []


def test_bash_tool_round_trip(start, ollama_fake, real_cli, tmp_path):
    br = start(OLLAMA_URL=ollama_fake.url, CLAUDE_AUTH_KEY=KEY)
    # The shell works out 42: the tool result can only hold it if Claude Code ran it.
    args = {"command": "echo cc-ran-$((6*7))", "description": "Print a marker"}
    prompt = f"Run it [tool:Bash:{json.dumps(args)}]"
    code, events, out, err = run_claude(real_cli, br, tmp_path, prompt,
                                        "--allowedTools", "Bash")
    assert code == 0, shown(out, err)
    result = result_of(events, out, err)
    assert result["is_error"] is False, result
    bodies = ollama_fake.chat_bodies()
    assert len(bodies) == 2, bodies
    first, second = bodies
    assert "Bash" in [t["function"]["name"] for t in first["tools"]]
    # The second request: the call the fake made, then the command's output as a tool message.
    call = second["messages"][-2]
    assert call["role"] == "assistant", second["messages"][-2:]
    assert [c["function"] for c in call["tool_calls"]] == [
        {"name": "Bash", "arguments": args}], call
    tool = second["messages"][-1]
    assert tool["role"] == "tool", second["messages"][-2:]
    assert "cc-ran-42" in tool["content"], tool
    assert tool.get("tool_name") == "Bash", tool
    # What the CLI printed is the fake's answer to the second request.
    assert result["result"] == echo_of(second), result
    # The stream shows the tool_use, then the tool_result Claude Code made of the output.
    uses = [b for e in events if e.get("type") == "assistant"
            for b in e["message"]["content"] if b.get("type") == "tool_use"]
    assert [(u["name"], u["input"]) for u in uses] == [("Bash", args)], events
    results = [b for e in events if e.get("type") == "user"
               for b in e["message"]["content"] if b.get("type") == "tool_result"]
    assert [r["tool_use_id"] for r in results] == [uses[0]["id"]], events
    assert "cc-ran-42" in str(results[0]["content"]) and not results[0].get("is_error")
    rows = messages_rows(br)  # the call, then the request carrying its result
    assert [(r["provider"], r["model"], r["outcome"], r["status"]) for r in rows] == [
        ("ollama", MODEL, "ok", 200)] * 2, rows
