"""The usage store, SQLite and PostgreSQL alike (one parametrised fixture), and what only a
shared PostgreSQL store does: several bridges on one database, outages, a killed bridge's
spool, --copy-usage. PostgreSQL is a real throwaway server (testkit/pg.py)."""
import json
import os
import subprocess
import sys
import time

import pytest
import requests

import bridge
from testkit.harness import ROOT, assert_error, user, wait_until


# (pg_url comes before start in a test's arguments: its database is dropped after the
# bridges stop, not under them.)
@pytest.fixture(params=["sqlite", "postgresql"])
def store_env(request):
    """The settings of a bridge on each store."""
    if request.param == "sqlite":
        return {}
    return {"USAGE_DB_URL": request.getfixturevalue("pg_url")}


def summary(running, query=""):
    resp = requests.get(f"{running.url}/v1/usage{query}", timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def old_row(i, days_ago, **extra):
    """A usage row of `days_ago` days ago, as the store stamps them."""
    return {"request_id": f"old-{i}", "model": "sonnet", "provider": "claude",
            "outcome": "ok", "status": 200, "prompt_tokens": 10, "completion_tokens": 5,
            "duration_ms": 100, "ts": bridge._ts_text(time.time() - days_ago * 86400),
            **extra}


def test_rows_and_figures_agree_on_both_stores(start, store_env):
    running = start(INSTANCE_NAME="alpha", **store_env)
    assert running.post(bridge_user("one")).status_code == 200
    assert running.post(bridge_user("two")).status_code == 200
    assert_error(running.post(bridge_user("[fake:error-500]")), 502)
    assert_error(running.post({"model": "-bad", "messages": []}), 400)
    rows = running.rows()
    assert [(r["outcome"], r["status"], r["instance"]) for r in rows] == [
        ("ok", 200, "alpha"), ("ok", 200, "alpha"), ("error", 502, "alpha"),
        ("error", 400, "alpha")]
    assert len({r["row_key"] for r in rows}) == 4
    figures = {(s["model"], s["instance"]): s for s in summary(running)}
    good = figures[("claude-code", "alpha")]
    assert (good["requests"], good["errors"]) == (3, 1)
    assert good["prompt_tokens"] == sum(r["prompt_tokens"] for r in rows[:3])
    assert summary(running, "?instance=beta") == []
    recent = requests.get(f"{running.url}/v1/usage/recent?instance=alpha", timeout=10).json()
    assert len(recent) == 4 and {r["instance"] for r in recent} == {"alpha"}
    series = requests.get(f"{running.url}/v1/usage/timeseries?since=1h&bucket=minute",
                          timeout=10).json()
    assert sum(b["requests"] for b in series) == 4
    health = requests.get(f"{running.url}/health", timeout=10).json()
    assert health["database"]["ok"] is True
    metrics = requests.get(f"{running.url}/metrics", timeout=10).text
    assert "bridge_usage_rows_queued 0" in metrics.splitlines()


def bridge_user(text):
    return user(text)


def test_retention_prunes_raw_rows_and_keeps_the_totals(start, store_env):
    seeded = start(**store_env)
    for i in range(30):
        seeded.app.bridge.store.record(old_row(i, days_ago=40))
    seeded.app.bridge.store.record(old_row(99, days_ago=1))
    assert seeded.app.bridge.store.flush()
    before = summary(seeded)
    assert sum(s["requests"] for s in before) == 31
    assert len(seeded.rows()) == 31
    seeded.stop()
    running = start(USAGE_RETENTION_DAYS="30", **store_env)
    # The pruner starts a second after the bridge, off the request path.
    assert wait_until(lambda: len(running.rows()) == 1, timeout=15)
    assert running.rows()[0]["request_id"] == "old-99"
    assert summary(running) == before  # the hourly and daily sums keep the totals


def test_two_bridges_share_one_postgresql(pg_url, start, ollama_fake):
    env = {"USAGE_DB_URL": pg_url, "OLLAMA_URL": ollama_fake.url}
    a = start(INSTANCE_NAME="a", **env)
    b = start(INSTANCE_NAME="b", **env)
    assert a.app.bridge.store.session_key == b.app.bridge.store.session_key
    for running, n in ((a, 3), (b, 2)):
        for i in range(n):
            assert running.post(user(f"hi {i}")).status_code == 200
    assert a.app.bridge.store.flush() and b.app.bridge.store.flush()
    for running in (a, b):  # either bridge shows the team's figures
        by_instance = {s["instance"]: s["requests"] for s in summary(running)}
        assert by_instance == {"a": 3, "b": 2}
    # A response stored by one bridge continues on the other (Ollama: the stored history).
    first = a.client().responses.create(model="ollama/llama3.2", input="remember me")
    second = b.client().responses.create(model="ollama/llama3.2", input="and now?",
                                         previous_response_id=first.id)
    assert second.previous_response_id == first.id
    sent = ollama_fake.last_chat()["messages"]
    assert [m["content"] for m in sent if m["role"] == "user"] == ["remember me", "and now?"]


def test_postgresql_outage_costs_no_request_and_no_row(pg_url, pg_cluster, start):
    running = start(USAGE_DB_URL=pg_url)
    assert running.post(user("before")).status_code == 200
    running.app.bridge.store.flush()
    pg_cluster.stop()
    try:
        started = time.monotonic()
        statuses = [running.post(user(f"during {i}")).status_code for i in range(20)]
        took = time.monotonic() - started
        assert statuses == [200] * 20
        health = requests.get(f"{running.url}/health", timeout=10).json()["database"]
        assert health["queued"] >= 20
        metrics = requests.get(f"{running.url}/metrics", timeout=10).text
        queued = [line for line in metrics.splitlines()
                  if line.startswith("bridge_usage_rows_queued ")]
        assert int(queued[0].split()[1]) >= 20
    finally:
        pg_cluster.start()
    assert took < 20  # no request waited on the database (20 turns of the fake CLI)
    assert running.app.bridge.store.flush(timeout=20)
    rows = running.rows()
    assert len(rows) == 21 and all(r["outcome"] == "ok" for r in rows)
    health = requests.get(f"{running.url}/health", timeout=10).json()["database"]
    assert health["queued"] == 0


def test_a_killed_bridge_loses_no_answered_row(bridge_process, pg_url, pg_cluster, tmp_path):
    spool = tmp_path / "spool.db"
    env = {"USAGE_DB_URL": pg_url, "USAGE_DB_PATH": str(spool), "INSTANCE_NAME": "k"}
    proc = bridge_process(**env)
    pg_cluster.stop()  # the rows can only wait in the spool
    try:
        answered = [requests.post(f"{proc.url}/v1/chat/completions", json=user(f"n{i}"),
                                  timeout=30).status_code for i in range(10)]
        assert answered == [200] * 10
        proc.kill()  # SIGKILL: no shutdown, no flush
    finally:
        pg_cluster.start()
    again = bridge_process(**env)  # the same spool: its rows are shipped now
    import psycopg

    def shipped():
        with psycopg.connect(pg_url) as db:
            return db.execute("SELECT COUNT(*) FROM requests WHERE instance = 'k'").fetchone()[0]
    assert wait_until(lambda: shipped() == 10, timeout=20)
    again.kill()


def test_bridges_starting_together_migrate_once(pg_url, tmp_path):
    import threading
    stores, errors = [], []

    def open_one(n):
        try:
            stores.append(bridge.PgStore(pg_url, str(tmp_path / f"s{n}.db"), 100))
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)
    threads = [threading.Thread(target=open_one, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(stores) == 4
    assert all(s.last_error is None for s in stores)
    assert len({s.session_key for s in stores}) == 1
    assert stores[0]._read("SELECT version FROM bridge_schema") == [(len(bridge.MIGRATIONS),)]
    for s in stores:
        s.close()


def test_copy_usage_copies_a_sqlite_history_once(pg_url, start, tmp_path):
    local = start(INSTANCE_NAME="laptop")
    for i in range(3):
        assert local.post(user(f"q{i}")).status_code == 200
    local.app.bridge.store.record(old_row(1, days_ago=3))
    path = local.settings.usage_db_path

    def copy():
        out = subprocess.run([sys.executable, str(ROOT / "bridge.py"), "--copy-usage",
                              f"sqlite://{os.path.abspath(path)}", pg_url],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert copy().startswith("copied 4 rows")
    shared = start(USAGE_DB_URL=pg_url)
    strip = [{k: v for k, v in s.items()} for s in summary(local, "?since=30d")]
    assert summary(shared, "?since=30d") == strip
    assert copy().startswith("copied 0 rows")  # again: nothing twice
    assert local.post(user("later")).status_code == 200
    assert copy().startswith("copied 1 rows")
    assert summary(shared) == summary(local)
    bad = subprocess.run([sys.executable, str(ROOT / "bridge.py"), "--copy-usage",
                          "sqlite:///nowhere.db", pg_url], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "no SQLite file" in bad.stderr
    assert json.dumps(summary(shared))  # (the figures are plain JSON)


def test_a_session_held_by_another_bridge_heals_or_is_refused(pg_url, start):
    a = start(INSTANCE_NAME="a", USAGE_DB_URL=pg_url)
    healer = start(INSTANCE_NAME="b", USAGE_DB_URL=pg_url)
    strict = start(INSTANCE_NAME="c", USAGE_DB_URL=pg_url, SESSION_ELSEWHERE="refuse")
    session = {"X-Session-ID": "team-chat"}
    assert a.post(user("hello"), headers=session).status_code == 200
    assert a.app.bridge.store.flush()
    refused = strict.post(user("again"), headers=session)
    err = assert_error(refused, 421, "session_elsewhere")
    assert refused.headers["X-Bridge-Session-Owner"] == "a" and "'a'" in err["message"]
    assert healer.post(user("again"), headers=session).status_code == 200
    assert healer.app.bridge.store.flush()  # (its writes land a moment after its answer)
    # The session now goes with b, which answered its latest turn.
    assert a.post(user("back home"), headers=session).status_code == 200
    rows = a.rows()
    assert [(r["instance"], r["status"], r["via"]) for r in rows] == [
        ("a", 200, None), ("c", 421, None), ("b", 200, "elsewhere"), ("a", 200, "elsewhere")]
    # Stateless requests have no session to hold.
    assert strict.post(user("anyone")).status_code == 200


def test_a_recognised_conversation_continues_on_both_stores(start, store_env):
    running = start(RECOGNISE_CONVERSATIONS="true", **store_env)
    client = running.client()
    history = [{"role": "user", "content": "first"}]
    reply = client.chat.completions.create(model="claude-code", messages=history)
    assert running.app.bridge.store.flush()
    history += [{"role": "assistant", "content": reply.choices[0].message.content},
                {"role": "user", "content": "second"}]
    client.chat.completions.create(model="claude-code", messages=history)
    runs = running.chat_runs()
    assert "--resume" in runs[-1]["argv"]  # the same Claude session, only the new turn
    assert running.app.bridge.store.flush()  # (the rows ship a moment after the answer)
    sessions = requests.get(f"{running.url}/v1/sessions", timeout=10).json()["data"]
    assert [s["turns"] for s in sessions] == [2]


def test_postgresql_down_at_start_up_is_no_outage(pg_url, pg_cluster, start):
    pg_cluster.stop()
    try:
        running = start(USAGE_DB_URL=pg_url)
        assert [running.post(user(f"early {i}")).status_code for i in range(3)] == [200] * 3
        health = requests.get(f"{running.url}/health", timeout=10).json()
        assert health["database"]["ok"] is False and health["database"]["queued"] == 3
        assert health["database"]["path"].startswith("postgresql://***@")  # no password
    finally:
        pg_cluster.start()
    assert running.app.bridge.store.flush(timeout=20)
    assert len(running.rows()) == 3
    assert requests.get(f"{running.url}/health", timeout=10).json()["database"]["ok"] is True


def test_a_row_postgresql_refuses_is_dropped_alone(pg_url, start):
    running = start(USAGE_DB_URL=pg_url)
    store = running.app.bridge.store
    bad = old_row(1, days_ago=0, model="x" * 10)
    bad["prompt_tokens"] = 2 ** 63  # no bigint holds it
    for row in (old_row(2, days_ago=0), bad, old_row(3, days_ago=0)):
        store.record(row)
    assert store.flush()
    assert [r["request_id"] for r in running.rows()] == ["old-2", "old-3"]
    assert store.health()["dropped"] == 1


def test_a_postgresql_url_needs_the_driver_and_a_postgresql_scheme(monkeypatch, tmp_path):
    with pytest.raises(bridge.SettingsError, match="USAGE_DB_URL"):
        bridge.load_settings(environ={"USAGE_DB_URL": "mysql://x/y"})
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if it were not installed
    with pytest.raises(bridge.SettingsError, match="psycopg"):
        bridge.PgStore("postgresql://nobody@127.0.0.1:1/x", str(tmp_path / "s.db"), 100)
