"""Conversations recognised by the history a client resends (RECOGNISE_CONVERSATIONS):
chat UIs send no X-Session-ID, only the whole history every turn. The bridge must send
the backend exactly that history, never more and never twice, and on the Claude path
only the new message once a conversation is known (kept CLI or --resume). Regenerated
and edited turns, tools, restarts, forks under X-Session-ID, /v1/sessions and pruning.

Driven by the official openai SDK (strict response validation) against the fake CLI
(testkit/fake_claude.py: replies ``FAKE-REPLY model=M msgs=N len_last=L to: TEXT``, N the
messages of its session) and the fake Ollama (``ECHO model=M msgs=N images=0 last=TEXT``).
"""

import json
import re
import sqlite3
import threading
import time
import uuid

import pytest
import requests

import bridge
from testkit.harness import alive, prompt_of, wait_until
from testkit.test_claude_agent import TOOLS, call, results

CONV = {"RECOGNISE_CONVERSATIONS": "true"}
CONV_ID = re.compile(r"^c[0-9a-f]{16}\Z")
OLLAMA = "ollama/llama3.2"


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------

def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def say(client, history, text, model="claude-code", **kw):
    """One UI turn: the whole history plus `text`; the reply, exactly as received, is
    appended to `history` (which the function extends in place). Returns the reply text."""
    history.append(u(text))
    reply = client.chat.completions.create(model=model, messages=list(history), **kw)
    content = reply.choices[0].message.content
    history.append(a(content))
    return content


def msgs(reply):
    return int(re.search(r"msgs=(\d+)", reply).group(1))


def flag(run, name):
    """The value after `name` in a CLI run's argv, or None."""
    argv = run["argv"]
    return argv[argv.index(name) + 1] if name in argv else None


def claude_uuid(run):
    return flag(run, "--session-id") or flag(run, "--resume")


def prompt(run):
    """A run's prompt; "" for a warm CLI never given one."""
    return prompt_of(run) if run.get("turns") or run.get("stdin") else ""


def runs_with(br, text):
    """The CLI runs one of whose turns is exactly `text`, or whose prompt contains it."""
    return [r for r in br.chat_runs()
            if text in (r.get("turns") or []) or text in prompt(r)]


def run_of_turn(br, text):
    """The one CLI run that was given `text` as a turn (the newest, if several)."""
    found = [r for r in br.chat_runs() if text in (r.get("turns") or [])]
    assert found, f"no CLI run got {text!r}: {[r.get('turns') for r in br.chat_runs()]}"
    return found[-1]


def ok_rows(br):
    return [r for r in br.rows() if r["outcome"] == "ok"]


def sent_pairs(ollama_fake):
    return [(m["role"], m["content"]) for m in ollama_fake.last_chat()["messages"]]


def pairs(history):
    return [(m["role"], m["content"]) for m in history]


def assert_flattened_exactly(prompt, history):
    """A new session's prompt is the client's history, each message once and in order,
    the last (user) one last, and nothing else of the conversation."""
    if len(history) == 1:
        assert prompt == history[0]["content"]
        return
    lines = ["Earlier turns of this conversation, oldest first:", ""]
    for m in history[:-1]:
        lines += [f"[{m['role']}]", m["content"], ""]
    lines += ["[end of earlier turns; the user's new message follows]", "",
              history[-1]["content"]]
    assert prompt == "\n".join(lines)


@pytest.fixture
def obr(start, ollama_fake):
    running = start(OLLAMA_URL=ollama_fake.url, **CONV)
    running.ollama = ollama_fake
    return running


# ----------------------------------------------------------------------------------------
# A UI's conversation: the whole history every turn, no header
# ----------------------------------------------------------------------------------------

def test_ui_conversation_on_a_kept_cli_sends_only_each_new_message(start):
    br = start(CLAUDE_SESSION_KEEPALIVE="30", CLAUDE_WARM_POOL="1", **CONV)
    client = br.client()
    history = []
    replies = [say(client, history, f"message {i}") for i in range(1, 7)]
    assert [msgs(r) for r in replies] == [2, 4, 6, 8, 10, 12]
    assert all(r.endswith(f"to: message {i}") for i, r in enumerate(replies, 1))
    kept = run_of_turn(br, "message 2")
    # Exactly one CLI served turns 2..6, each adding exactly the new message.
    assert {run_of_turn(br, f"message {i}")["pid"] for i in range(2, 7)} == {kept["pid"]}
    assert kept["turns"][-5:] == [f"message {i}" for i in range(2, 7)]
    assert kept["turns"] == [f"message {i}" for i in range(1, 7)]  # turn 1 started it
    assert alive(kept["pid"]) and flag(kept, "--session-id")
    # No other CLI was ever given a message of this conversation.
    for i in range(1, 7):
        assert [r["pid"] for r in runs_with(br, f"message {i}")] == [kept["pid"]]
    rows = ok_rows(br)
    assert len(rows) == 6 and len({r["session_id"] for r in rows}) == 1
    assert CONV_ID.match(rows[0]["session_id"])


def test_ui_conversation_resumes_the_same_session_with_only_the_new_message(start):
    br = start(CLAUDE_SESSION_KEEPALIVE="0", **CONV)
    client = br.client()
    history = []
    replies = [say(client, history, f"turn {i}") for i in range(1, 7)]
    assert [msgs(r) for r in replies] == [2, 4, 6, 8, 10, 12]
    runs = br.chat_runs()
    assert len(runs) == 6
    first = runs[0]
    session = flag(first, "--session-id")
    assert uuid.UUID(session) and prompt_of(first) == "turn 1"
    for i, run in enumerate(runs[1:], 2):
        assert flag(run, "--resume") == session, run["argv"]
        assert "--session-id" not in run["argv"]
        assert prompt_of(run) == f"turn {i}"
    rows = ok_rows(br)
    assert len({r["session_id"] for r in rows}) == 1 and CONV_ID.match(rows[0]["session_id"])


def test_ollama_gets_exactly_the_clients_history_every_turn(obr):
    client = obr.client()
    history = []
    for i in range(1, 7):
        reply = say(client, history, f"o{i}", model=OLLAMA)
        assert msgs(reply) == 2 * i - 1
        assert sent_pairs(obr.ollama) == pairs(history[:-1])
    rows = ok_rows(obr)
    assert len({r["session_id"] for r in rows}) == 1 and CONV_ID.match(rows[0]["session_id"])


def test_ollama_with_x_session_id_and_the_whole_history_never_doubles_it(obr):
    client = obr.client()
    history = []
    counts = []
    for i in range(1, 5):
        reply = say(client, history, f"h{i}", model=OLLAMA,
                    extra_headers={"X-Session-ID": "ui-with-header"})
        counts.append(len(obr.ollama.last_chat()["messages"]))
        assert sent_pairs(obr.ollama) == pairs(history[:-1]), f"turn {i}"
        assert msgs(reply) == 2 * i - 1
    assert counts == [1, 3, 5, 7]  # (the old bug: 1, 2, 6, 12 ...)
    tag = obr.app.bridge.store.session_tag("ui-with-header")
    assert {r["session_id"] for r in ok_rows(obr)} == {tag}


# ----------------------------------------------------------------------------------------
# Regenerate and edit at turn 3
# ----------------------------------------------------------------------------------------

def two_turns_then_third(client, model="claude-code"):
    history = []
    for text in ("first question", "second question", "third question"):
        say(client, history, text, model=model)
    return history


def assert_forked_from(run, session, text):
    """The run resumed `session` at an earlier reply into a session of its own, and was
    sent only the new message."""
    assert flag(run, "--resume") == session and flag(run, "--resume-session-at")
    assert "--fork-session" in run["argv"] and flag(run, "--session-id") != session
    assert prompt_of(run) == text


def test_regenerate_at_turn_3_forks_the_session_at_the_second_reply(start):
    br = start(**CONV)
    client = br.client()
    history = two_turns_then_third(client)
    (old_session,) = {claude_uuid(r) for r in br.chat_runs()}
    # Regenerate: the history without the last reply, once more (with another model, so
    # that the new reply differs from the first, as a model's would: the fake's reply is a
    # function of what it was sent).
    again = history[:-1]
    reply = client.chat.completions.create(model="sonnet", messages=again)
    content = reply.choices[0].message.content
    # The model saw exactly the client's history, once: two turns, then the question.
    assert msgs(content) == 6 and content.endswith("to: third question")
    new = br.chat_runs()[-1]
    assert_forked_from(new, old_session, "third question")
    new_session = flag(new, "--session-id")
    rows = ok_rows(br)
    assert rows[-1]["session_id"] != rows[0]["session_id"] and rows[-1]["via"] == "forked"
    assert CONV_ID.match(rows[-1]["session_id"])
    # The regenerated branch continues on its own session ...
    branch = again + [a(content)]
    more = say(client, branch, "fourth on the branch")
    assert msgs(more) == 8
    run = br.chat_runs()[-1]
    assert flag(run, "--resume") == new_session and prompt_of(run) == "fourth on the branch"
    # ... and the old conversation still continues when its own history is resent.
    more = say(client, history, "fourth on the original")
    assert msgs(more) == 8
    run = br.chat_runs()[-1]
    assert flag(run, "--resume") == old_session and prompt_of(run) == "fourth on the original"
    rows = ok_rows(br)
    assert rows[-1]["session_id"] == rows[0]["session_id"]
    assert rows[-2]["session_id"] == rows[3]["session_id"] != rows[0]["session_id"]


def test_edit_at_turn_3_forks_the_kept_clis_session_at_the_first_reply(start):
    br = start(CLAUDE_SESSION_KEEPALIVE="30", **CONV)
    client = br.client()
    history = two_turns_then_third(client)
    kept = run_of_turn(br, "third question")
    # Edit the second question: the UI drops everything after it.
    edited = history[:2] + [u("second question, edited")]
    reply = client.chat.completions.create(model="claude-code", messages=edited)
    content = reply.choices[0].message.content
    assert msgs(content) == 4 and content.endswith("to: second question, edited")
    new = [r for r in br.chat_runs() if r["pid"] != kept["pid"]]
    assert len(new) == 1, [r["argv"] for r in br.chat_runs()]
    assert_forked_from(new[0], flag(kept, "--session-id"), "second question, edited")
    assert "second question, edited" not in kept["turns"] and len(kept["turns"]) == 3
    # The edited branch continues on the new CLI with only its new message.
    edited.append(a(content))
    assert msgs(say(client, edited, "after the edit")) == 6
    assert run_of_turn(br, "after the edit")["pid"] == new[0]["pid"]
    # The original continues on its own kept CLI.
    assert msgs(say(client, history, "original goes on")) == 8
    assert run_of_turn(br, "original goes on")["pid"] == kept["pid"]
    sessions = [r["session_id"] for r in ok_rows(br)]
    assert sessions[3] == sessions[4] != sessions[0] == sessions[5]


def test_a_fork_whose_session_is_gone_starts_from_the_clients_history(start, tmp_path):
    br = start(**CONV)
    client = br.client()
    history = two_turns_then_third(client)
    for f in (tmp_path / "claude-config").rglob("*.jsonl"):
        f.unlink()  # the CLI lost the session to fork from
    again = history[:-1]
    content = client.chat.completions.create(
        model="claude-code", messages=again).choices[0].message.content
    assert msgs(content) == 2  # a new session, from the flattened history
    assert_flattened_exactly(prompt_of(br.chat_runs()[-1]), again)
    assert ok_rows(br)[-1]["via"] is None


def test_regenerate_and_edit_at_turn_3_on_ollama_send_the_clients_history(obr):
    client = obr.client()
    history = two_turns_then_third(client, OLLAMA)
    regenerate = history[:-1]
    # (`stop` makes the regenerated reply differ from the first, as a model's would: the
    # fake's reply is a function of the messages)
    client.chat.completions.create(model=OLLAMA, messages=regenerate, stop=["images"])
    assert sent_pairs(obr.ollama) == pairs(regenerate)
    edited = history[:2] + [u("second, edited")]
    client.chat.completions.create(model=OLLAMA, messages=edited)
    assert sent_pairs(obr.ollama) == pairs(edited)
    say(client, history, "original goes on", model=OLLAMA)
    assert sent_pairs(obr.ollama) == pairs(history[:-1])
    sessions = [r["session_id"] for r in ok_rows(obr)]
    assert len(set(sessions[:3])) == 1 and sessions[5] == sessions[0]
    assert len({sessions[0], sessions[3], sessions[4]}) == 3


# ----------------------------------------------------------------------------------------
# Tools, without a header
# ----------------------------------------------------------------------------------------

def test_tool_call_conversation_continues_without_a_header(start):
    br = start(CLAUDE_TOOL_WAIT="30", **CONV)
    client = br.client()
    try:
        history = [u("Weather? " + call("get_weather", city="Paris"))]
        first = client.chat.completions.create(model="claude-code", messages=history,
                                               tools=TOOLS)
        assert first.choices[0].finish_reason == "tool_calls"
        history += results(first.choices[0].message, {"get_weather": "sunny, 21 C"})
        final = client.chat.completions.create(model="claude-code", messages=history,
                                               tools=TOOLS)
        content = final.choices[0].message.content
        assert content == "FAKE-REPLY tool results: get_weather=sunny, 21 C"
        history.append(a(content))
        reply = say(client, history, "and tomorrow?", tools=TOOLS)
        assert reply.endswith("to: and tomorrow?")
        rows = ok_rows(br)
        assert [r["via"] for r in rows] == [None, "held", None]
        assert len({r["session_id"] for r in rows}) == 1
        assert CONV_ID.match(rows[0]["session_id"])
        first_run, resumed = br.chat_runs()
        assert flag(resumed, "--resume") == flag(first_run, "--session-id")
        assert resumed["turns"] == ["and tomorrow?"]
    finally:
        br.app.bridge.claude.held.shutdown()


def test_tool_results_for_a_run_that_is_gone_rebuild_it_in_a_conversation(start):
    br = start(CLAUDE_TOOL_WAIT="0.2", **CONV)
    client = br.client()
    history = [u("Weather? " + call("get_weather", city="Oslo"))]
    first = client.chat.completions.create(model="claude-code", messages=history,
                                           tools=TOOLS)
    assert wait_until(lambda: br.app.bridge.claude.held.count() == 0)  # it waited too long
    history += results(first.choices[0].message, {"get_weather": "snow"})
    final = client.chat.completions.create(model="claude-code", messages=history, tools=TOOLS)
    assert "snow" in prompt_of(br.chat_runs()[-1])
    assert final.choices[0].finish_reason == "stop"
    rows = ok_rows(br)
    assert [r["via"] for r in rows] == [None, "rebuilt"]
    assert rows[0]["session_id"] == rows[1]["session_id"]


# ----------------------------------------------------------------------------------------
# Whose conversation it is
# ----------------------------------------------------------------------------------------

def test_two_clients_with_the_same_opening_never_see_each_others_messages(start):
    br = start(**CONV)
    client = br.client()
    alice, bob = [], []
    assert say(client, alice, "hello") == say(client, bob, "hello")  # identical so far
    say(client, alice, "alice asks about apples")
    say(client, bob, "bob asks about bananas")
    say(client, alice, "alice again")
    say(client, bob, "bob again")
    by_session = {}
    for run in br.chat_runs():
        by_session.setdefault(claude_uuid(run), []).extend(run.get("turns") or [prompt(run)])
    for session, prompts in by_session.items():
        text = "\n".join(prompts)
        assert not ("alice" in text and "bob" in text), (session, prompts)
    # Each client's last turn went, alone, to a session that holds only its history.
    for name, other in (("alice", "bob"), ("bob", "alice")):
        run = run_of_turn(br, f"{name} again")
        assert flag(run, "--resume") and prompt_of(run) == f"{name} again"
        assert other not in "\n".join(by_session[claude_uuid(run)])
    rows = ok_rows(br)
    assert rows[4]["session_id"] == rows[2]["session_id"]  # alice's turns 2 and 3
    assert rows[5]["session_id"] == rows[3]["session_id"]  # bob's
    assert rows[2]["session_id"] != rows[3]["session_id"]


def test_conversations_are_keyed_by_the_callers_key(start):
    # One key can be configured; two owners are shown on the store's level.
    br = start(CLAUDE_AUTH_KEY="k-one-0123456789", **CONV)
    conversations = br.app.bridge.conversations
    history = [bridge.Message("user", (bridge.Text("hi"),))]
    reply = bridge.Message("assistant", (bridge.Text("hello"),))
    chat = bridge.ChatRequest(model="claude-code", messages=history, owner="owner-one")
    chat = conversations.resolve(chat)
    conversations.record(chat, reply, "claude")
    resent = history + [reply, bridge.Message("user", (bridge.Text("next"),))]
    same = conversations.resolve(bridge.ChatRequest(model="claude-code", messages=resent,
                                                    owner="owner-one"))
    other = conversations.resolve(bridge.ChatRequest(model="claude-code", messages=resent,
                                                     owner="owner-two"))
    assert same.session_id == chat.session_id
    assert other.session_id != chat.session_id and CONV_ID.match(other.session_id)
    # Over HTTP: the same key continues its conversation, also when the client spells
    # the scheme in lower case (RFC 7235: case-insensitive; the bridge accepts it).
    client = br.client()
    conversation = []
    say(client, conversation, "keyed one")
    say(client, conversation, "keyed two")
    conversation.append(u("keyed three"))
    resp = requests.post(br.url + "/v1/chat/completions", timeout=30, json={
        "model": "claude-code", "messages": conversation},
        headers={"Authorization": "bearer k-one-0123456789"})
    assert resp.status_code == 200, resp.text
    assert msgs(resp.json()["choices"][0]["message"]["content"]) == 6
    sessions = [r["session_id"] for r in ok_rows(br)]
    assert len(set(sessions)) == 1


# ----------------------------------------------------------------------------------------
# Restart, forks under X-Session-ID
# ----------------------------------------------------------------------------------------

def test_a_restart_mid_conversation_resumes_with_only_the_new_message(start):
    first = start(**CONV)
    history = []
    say(first.client(), history, "before restart 1")
    say(first.client(), history, "before restart 2")
    session = flag(first.chat_runs()[0], "--session-id")
    first.stop()
    again = start(**CONV)
    reply = say(again.client(), history, "after restart")
    assert msgs(reply) == 6
    run = again.chat_runs()[-1]
    assert flag(run, "--resume") == session and prompt_of(run) == "after restart"
    assert len({r["session_id"] for r in ok_rows(again)}) == 1


def test_x_session_id_with_an_edited_history_forks_and_the_client_wins(start):
    br = start(**CONV)
    client = br.client()
    h = {"X-Session-ID": "forked-chat"}
    history = []
    say(client, history, "my name is Ann", extra_headers=h)
    say(client, history, "what is my name?", extra_headers=h)
    old = flag(br.chat_runs()[0], "--session-id")
    assert flag(br.chat_runs()[1], "--resume") == old
    edited = [u("my name is Bob"), history[1], history[2], history[3]]
    edited.append(u("and now?"))
    reply = client.chat.completions.create(model="claude-code", messages=edited,
                                           extra_headers=h)
    content = reply.choices[0].message.content
    assert msgs(content) == 2
    run = br.chat_runs()[-1]
    new = flag(run, "--session-id")
    assert new and new != old and "--resume" not in run["argv"]
    assert_flattened_exactly(prompt_of(run), edited)
    assert "[user]\nmy name is Ann" not in prompt_of(run)  # (a1 still quotes it)
    # The fork is the session now: its next turn resumes it with only the new message.
    edited.append(a(content))
    assert msgs(say(client, edited, "still Bob?", extra_headers=h)) == 4
    run = br.chat_runs()[-1]
    assert flag(run, "--resume") == new and prompt_of(run) == "still Bob?"
    tag = br.app.bridge.store.session_tag("forked-chat")
    assert {r["session_id"] for r in ok_rows(br)} == {tag}


# ----------------------------------------------------------------------------------------
# /v1/sessions
# ----------------------------------------------------------------------------------------

def test_sessions_are_listed_and_a_deleted_one_is_forgotten(start):
    key = "sessions-key-0123"
    br = start(CLAUDE_AUTH_KEY=key, **CONV)
    client = br.client()
    auth = {"Authorization": f"Bearer {key}"}
    history = []
    say(client, history, "listed one")
    say(client, history, "listed two")
    listed = requests.get(br.url + "/v1/sessions", headers=auth, timeout=10)
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert body["object"] == "list"
    (item,) = body["data"]
    rows = ok_rows(br)
    assert set(item) == {"id", "backend", "turns", "last_used", "total_tokens", "cost_usd"}
    assert item["id"] == rows[0]["session_id"] and CONV_ID.match(item["id"])
    assert (item["backend"], item["turns"]) == ("claude", 2)
    assert item["total_tokens"] == sum(r["total_tokens"] for r in rows) > 0
    assert item["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in rows))
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z\Z", item["last_used"])
    session = flag(br.chat_runs()[0], "--session-id")
    # Without the key: 401, nothing forgotten.
    assert requests.get(br.url + "/v1/sessions", timeout=10).status_code == 401
    assert requests.delete(f"{br.url}/v1/sessions/{item['id']}",
                           timeout=10).status_code == 401
    gone = requests.delete(f"{br.url}/v1/sessions/{item['id']}", headers=auth, timeout=10)
    assert gone.status_code == 200, gone.text
    assert gone.json() == {"id": item["id"], "object": "session.deleted", "deleted": True}
    for unknown in ("c0123456789abcdef", "0123456789abcdef", "nope"):
        missing = requests.delete(f"{br.url}/v1/sessions/{unknown}", headers=auth, timeout=10)
        assert missing.status_code == 404, (unknown, missing.text)
        assert missing.json()["error"]["message"]
    # Its history resent: a new conversation from the client's history.
    reply = say(client, history, "listed three")
    assert msgs(reply) == 2
    run = br.chat_runs()[-1]
    assert flag(run, "--session-id") not in (None, session)
    assert_flattened_exactly(prompt_of(run), history[:-1])
    assert ok_rows(br)[-1]["session_id"] != item["id"]


# ----------------------------------------------------------------------------------------
# Pruning
# ----------------------------------------------------------------------------------------

def test_conversations_max_forgets_the_least_recently_used(start):
    br = start(CONVERSATIONS_MAX="2", **CONV)
    client = br.client()
    first, second, third = [], [], []
    say(client, first, "first conversation")
    say(client, second, "second conversation")
    say(client, first, "first again")  # the first is now the most recently used
    say(client, third, "third conversation")  # starting it forgets the second
    assert msgs(say(client, first, "first continues")) == 6
    assert flag(br.chat_runs()[-1], "--resume")
    reply = say(client, second, "second is forgotten")
    assert msgs(reply) == 2
    run = br.chat_runs()[-1]
    assert flag(run, "--session-id") and "--resume" not in run["argv"]
    assert_flattened_exactly(prompt_of(run), second[:-1])
    rows = ok_rows(br)
    assert rows[-1]["session_id"] != rows[1]["session_id"]


def test_conversations_unused_past_claude_session_days_are_forgotten(start):
    br = start(CLAUDE_SESSION_DAYS="1", **CONV)
    client = br.client()
    old, recent = [], []
    say(client, old, "an old conversation")
    say(client, recent, "a recent conversation")
    old_id = ok_rows(br)[0]["session_id"]
    db = sqlite3.connect(br.settings.usage_db_path)
    try:
        with db:
            two_days_ago = bridge._ts_text(time.time() - 2 * 86400)
            db.execute("UPDATE conversations SET updated_at = ? WHERE session_id = ?",
                       (two_days_ago, old_id))
            db.execute("UPDATE claude_sessions SET updated_at = ? WHERE client_id = ?",
                       (two_days_ago, old_id))
    finally:
        db.close()
    assert msgs(say(client, recent, "recent continues")) == 4
    reply = say(client, old, "old is forgotten")
    assert msgs(reply) == 2
    run = br.chat_runs()[-1]
    assert flag(run, "--session-id") and "--resume" not in run["argv"]
    assert ok_rows(br)[-1]["session_id"] != old_id
    db = sqlite3.connect(br.settings.usage_db_path)
    try:
        left = db.execute("SELECT COUNT(*) FROM conversations WHERE session_id = ?",
                          (old_id,)).fetchone()[0]
    finally:
        db.close()
    assert left == 0


# ----------------------------------------------------------------------------------------
# Off
# ----------------------------------------------------------------------------------------

def test_recognise_conversations_false_is_stateless(start):
    br = start(RECOGNISE_CONVERSATIONS="false", CLAUDE_WARM_POOL="1")
    client = br.client()
    history = []
    replies = [say(client, history, f"stateless {i}") for i in range(1, 4)]
    assert [msgs(r) for r in replies] == [2, 2, 2]
    served = [run_of_turn_or_prompt(br, f"stateless {i}") for i in range(1, 4)]
    for i, run in enumerate(served, 1):
        assert "--no-session-persistence" in run["argv"]
        assert "--session-id" not in run["argv"] and "--resume" not in run["argv"]
        assert_flattened_exactly(prompt_of(run), history[:2 * i - 1])
    assert all(r["session_id"] is None for r in br.rows())
    listed = requests.get(br.url + "/v1/sessions", timeout=10).json()
    assert listed["data"] == []


def run_of_turn_or_prompt(br, text):
    found = [r for r in br.chat_runs() if prompt(r).rstrip().endswith(text)]
    assert len(found) == 1, [prompt(r) for r in br.chat_runs()]
    return found[0]


# ----------------------------------------------------------------------------------------
# Streams, system prompts, two branches at once
# ----------------------------------------------------------------------------------------

def test_a_streamed_conversation_with_a_system_prompt_continues(start):
    br = start(**CONV)
    client = br.client()
    history = [{"role": "system", "content": "You are terse."}]
    for i in range(1, 4):
        history.append(u(f"streamed {i}"))
        chunks = list(client.chat.completions.create(
            model="claude-code", messages=list(history), stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert msgs(text) == 2 * i
        history.append(a(text))
    first, *later = br.chat_runs()
    assert first["append_system_prompt"] == "You are terse."
    session = flag(first, "--session-id")
    assert [flag(r, "--resume") for r in later] == [session, session]
    assert [prompt_of(r) for r in later] == ["streamed 2", "streamed 3"]
    assert len({r["session_id"] for r in ok_rows(br)}) == 1


@pytest.mark.parametrize("headers", [{}, {"X-Session-ID": "two-tabs"}], ids=["ui", "header"])
def test_two_branches_sent_at_once_never_mix(start, headers):
    """Two tabs (or a regenerate clicked while a turn runs) continue the same history at
    once: each branch's backend history must be its own."""
    br = start(**CONV)
    client = br.client(default_headers=headers)
    history = []
    say(client, history, "shared opening")
    branch_a = history + [u("[fake:slow:4:250] branch A")]
    branch_b = history + [u("branch B")]
    done = {}
    worker = threading.Thread(target=lambda: done.setdefault(
        "a", client.chat.completions.create(model="claude-code", messages=branch_a)))
    worker.start()
    try:
        assert wait_until(lambda: any("[fake:slow:4:250] branch A" in (r.get("turns") or [])
                                      for r in br.chat_runs()), timeout=10)
        reply_b = client.chat.completions.create(model="claude-code", messages=branch_b)
    finally:
        worker.join(30)
    assert "tick3" in done["a"].choices[0].message.content
    content = reply_b.choices[0].message.content
    run_b = [r for r in br.chat_runs() if "branch B" in prompt(r)][-1]
    session_b = claude_uuid(run_b)
    fed = [t for r in br.chat_runs() if claude_uuid(r) == session_b
           for t in (r.get("turns") or [])]
    assert not any("branch A" in t for t in fed), fed
    assert msgs(content) in (2, 4), content  # a new session, or the opening's alone


def test_switching_models_mid_conversation_keeps_the_backend_history_whole(start,
                                                                           ollama_fake):
    """A UI switches the model between turns (Claude, then Ollama, then Claude again):
    each backend must get the whole history the client sent, Claude included the turn
    Ollama answered."""
    br = start(OLLAMA_URL=ollama_fake.url, **CONV)
    client = br.client()
    history = []
    say(client, history, "asked claude")
    say(client, history, "asked ollama", model=OLLAMA)
    assert sent_pairs(ollama_fake) == pairs(history[:-1])
    reply = say(client, history, "claude again")
    run = br.chat_runs()[-1]
    fed = [t for r in br.chat_runs() if claude_uuid(r) == claude_uuid(run)
           for t in (r.get("turns") or [])]
    assert any("asked ollama" in t for t in fed), fed
    assert any(history[3]["content"] in t for t in fed), fed  # Ollama's reply too
    assert msgs(reply) in (2, 6), reply  # a new session from the history, or all of it


def test_real_cli_continues_and_forks_a_conversation_without_a_header(start, real_cli,
                                                                       fake_api):
    br = start(CLAUDE_BIN=real_cli, CLAUDE_SESSION_KEEPALIVE="0", **CONV)
    client = br.client()
    history = [u("first")]
    history.append(a(client.chat.completions.create(
        model="claude-code", messages=history).choices[0].message.content))
    second = say(client, history, "second")
    # the CLI resumed: turn one (and its environment message), its reply, the new one
    assert "msgs=4" in second
    # Regenerate the second reply: a fork at the first reply, sent only "second".
    again = client.chat.completions.create(model="claude-code", messages=history[:-1]
                                           ).choices[0].message.content
    assert again.endswith("to: second") and "msgs=4" in again
    rows = ok_rows(br)
    assert [r["via"] for r in rows] == [None, None, "forked"]
    assert rows[1]["session_id"] == rows[0]["session_id"] != rows[2]["session_id"]
    sent = [m for m in fake_api.requests[-1]["messages"] if m["role"] != "system"]
    assert len(sent) == 3 and "second" not in json.dumps(sent[:2])
    assert rows[2]["cost_usd"] == pytest.approx(rows[0]["cost_usd"])


def test_a_recognised_ollama_conversation_keeps_no_history_of_its_own(start, ollama_fake):
    # Stateless Ollama requests stay stateless: no session limits, nothing kept in memory.
    br = start(OLLAMA_URL=ollama_fake.url, OLLAMA_SESSION_MAX_KB="1", **CONV)
    body = {"model": OLLAMA, "messages": [{"role": "system", "content": "s" * 2048},
                                          {"role": "user", "content": "hi"}]}
    assert requests.post(br.url + "/v1/chat/completions", json=body,
                         timeout=30).status_code == 200
    assert len(br.app.bridge.ollama.histories) == 0
    assert ok_rows(br)[0]["session_id"] is not None  # still one conversation in the rows
