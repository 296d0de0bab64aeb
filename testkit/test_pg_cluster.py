"""The throwaway PostgreSQL of testkit/pg.py works with psycopg 3: the fixtures, an outage
(stop, start), a crash (kill, start), isolated databases, and nothing left behind."""

import os
import re
import threading
import time

import pytest

from testkit import pg


def _psycopg():
    return pytest.importorskip("psycopg") if not os.environ.get("CI") else __import__("psycopg")


def _server_pids(cluster):
    """The postmaster and its children, from /proc (empty when the server is down)."""
    pid = cluster.pid
    return [pid, *pg._children(pid)] if pid else []


def test_crud(pg_url):
    psycopg = _psycopg()
    assert re.fullmatch(r"postgresql://\w+@127\.0\.0\.1:\d+/t_\d+", pg_url), pg_url
    with psycopg.connect(pg_url, connect_timeout=5) as conn:
        conn.execute("CREATE TABLE usage (id serial PRIMARY KEY, model text, tokens int)")
        conn.execute("INSERT INTO usage (model, tokens) VALUES (%s, %s), (%s, %s)",
                     ("sonnet", 10, "haiku", 5))
        rows = conn.execute("SELECT model, tokens FROM usage ORDER BY id").fetchall()
        assert rows == [("sonnet", 10), ("haiku", 5)]
        assert conn.execute("SHOW fsync").fetchone() == ("off",)
        assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)


def test_two_databases_are_isolated(pg_cluster, pg_url):
    psycopg = _psycopg()
    other = pg_cluster.url()
    assert other != pg_url
    for url, n in ((pg_url, 1), (other, 2)):
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("CREATE TABLE t (n int)")
            conn.execute("INSERT INTO t VALUES (%s)", (n,))
    for url, n in ((pg_url, 1), (other, 2)):
        with psycopg.connect(url, connect_timeout=5) as conn:
            assert conn.execute("SELECT n FROM t").fetchall() == [(n,)]
    pg_cluster.drop_database(other.rsplit("/", 1)[1])


def test_stop_and_start_keeps_data_and_url(pg_cluster, pg_url):
    psycopg = _psycopg()
    conn = psycopg.connect(pg_url, connect_timeout=5, autocommit=True)
    conn.execute("CREATE TABLE t (n int)")
    conn.execute("INSERT INTO t VALUES (1)")
    port = pg_cluster.port
    pg_cluster.stop()
    assert not pg_cluster.running
    with pytest.raises(psycopg.OperationalError):  # the open connection is gone
        conn.execute("SELECT 1")
    conn.close()
    with pytest.raises(psycopg.OperationalError):  # and so is the server
        psycopg.connect(pg_url, connect_timeout=2)
    pg_cluster.start()
    assert pg_cluster.port == port
    with psycopg.connect(pg_url, connect_timeout=5) as conn:
        conn.execute("INSERT INTO t VALUES (2)")
        assert conn.execute("SELECT n FROM t ORDER BY n").fetchall() == [(1,), (2,)]


def test_outage_from_another_thread(pg_cluster, pg_url):
    """The "stop PostgreSQL for a while mid-load" pattern: a thread stops, sleeps, starts;
    the server it starts outlives that thread."""
    psycopg = _psycopg()
    with psycopg.connect(pg_url, connect_timeout=5) as conn:
        conn.execute("CREATE TABLE t (n int)")

    def outage():
        pg_cluster.stop()
        time.sleep(0.5)
        pg_cluster.start()

    th = threading.Thread(target=outage)
    th.start()
    ok = failed = 0
    deadline = time.monotonic() + 15
    while th.is_alive() and time.monotonic() < deadline:  # bounded load while it is down
        try:
            with psycopg.connect(pg_url, connect_timeout=2, autocommit=True) as conn:
                conn.execute("INSERT INTO t VALUES (1)")
            ok += 1
        except psycopg.OperationalError:
            failed += 1
            time.sleep(0.02)
    th.join(timeout=30)
    assert not th.is_alive()
    time.sleep(0.3)  # the starting thread has ended: the server must still be up
    assert pg_cluster.running
    with psycopg.connect(pg_url, connect_timeout=5) as conn:
        n, = conn.execute("SELECT count(*) FROM t").fetchone()
    assert ok <= n <= ok + failed  # one in flight at the stop may have committed unseen
    assert failed > 0


def test_kill_then_start_recovers_committed_rows(pg_cluster, pg_url):
    psycopg = _psycopg()
    with psycopg.connect(pg_url, connect_timeout=5) as conn:
        conn.execute("CREATE TABLE t (n int)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 1000)")
    idle = psycopg.connect(pg_url, connect_timeout=5)  # a backend that the kill must take too
    pids = _server_pids(pg_cluster)
    assert len(pids) > 3
    pg_cluster.kill()
    assert not pg_cluster.running
    assert not any(pg._alive(p) for p in pids)
    idle.close()
    pg_cluster.start()
    with psycopg.connect(pg_url, connect_timeout=5) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1000,)


def test_own_cluster_leaves_nothing_behind():
    """A Cluster of its own (not the session's): a failure inside the block still stops
    the server and removes its temp dir; the Unix socket works too."""
    pg.require()
    psycopg = _psycopg()
    with pytest.raises(ZeroDivisionError):
        with pg.Cluster() as c:
            base, pids = c.base, _server_pids(c)
            with psycopg.connect(c.dsn(c.create_database(), host="socket"),
                                 connect_timeout=5) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
                assert conn.info.host == c.socket_dir
            1 / 0
    assert not os.path.exists(base)
    assert pids and not any(pg._alive(p) for p in pids)
    assert not c.running
    with pytest.raises(pg.ClusterError):
        c.start()  # closed for good


def test_missing_postgresql_skips_locally_and_fails_in_ci(monkeypatch):
    monkeypatch.setenv("PG_BIN", "/nonexistent")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="PostgreSQL server binaries"):
        pg.require()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run"):
        pg.require()
