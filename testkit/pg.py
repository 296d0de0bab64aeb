"""A real, throwaway PostgreSQL server for tests (Debian's `postgresql` package).

    with Cluster() as pg:                 # initdb in a fresh temp dir, start, wait ready
        url = pg.url()                    # CREATE DATABASE t_1 -> postgresql://postgres@127.0.0.1:PORT/t_1
        pg.stop(); pg.start()             # an outage: same data dir, same port, same URLs
        pg.kill(); pg.start()             # a crash (SIGKILL to every server process), then recovery
    # leaving the block stops the server (immediate shutdown) and removes the temp dir

pytest fixtures (register them in a conftest.py with `from testkit.pg import pg_cluster, pg_url`):
  pg_cluster  session-scoped: one Cluster for the whole run
  pg_url      function-scoped: a fresh database per test, dropped after it

Where the binaries or psycopg are missing the fixtures skip, but fail when CI is set
(.ci/run installs both).

Running as root (as CI does): initdb and postgres refuse root, so the server runs as
the `postgres` system user the package creates (subprocess's user=/group=), and the
temp dir is made that user's. The postmaster is a child of this process, in a session
of its own: stop() signals it directly, as `pg_ctl stop -m fast|immediate` would (pg_ctl
itself refuses root), then reaps it; kill() SIGKILLs the postmaster and its backends
together. A server started from the main thread also gets SIGQUIT (immediate shutdown)
when this process dies, so a killed test run leaves no server behind (its temp dir
stays). The methods may be called from any thread (one lock).

psycopg (3) is imported only when a database is created or a test needs it; this module
imports without it.
"""

from __future__ import annotations

import ctypes
import glob
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref

__all__ = ["Cluster", "ClusterError", "find_bin_dir", "pg_cluster", "pg_url", "require"]

# Settings for speed over durability: a test server holds nothing worth an fsync. Commits
# still reach the OS (synchronous_commit stays on), so kill() loses no committed row.
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "100",
    "max_wal_size": "256MB",
    "checkpoint_timeout": "30min",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "log_line_prefix": "%m [%p] ",
    "TimeZone": "UTC",
}


class ClusterError(RuntimeError):
    """The server could not be set up, started or stopped; the message has its log's tail."""


def find_bin_dir() -> str | None:
    """The directory holding initdb, pg_ctl and postgres, or None.

    $PG_BIN if set; else the newest /usr/lib/postgresql/<ver>/bin (Debian, Ubuntu);
    else wherever `initdb` on PATH links to (/usr/local/bin/initdb here links to Debian's).
    """
    need = ("initdb", "pg_ctl", "postgres")

    def ok(d):
        return d and all(os.access(os.path.join(d, n), os.X_OK) for n in need)

    env = os.environ.get("PG_BIN")
    if env:
        return env if ok(env) else None

    def ver(d):
        m = re.search(r"/postgresql/([\d.]+)/bin$", d)
        return tuple(int(x) for x in m.group(1).split(".") if x) if m else ()

    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=ver, reverse=True):
        if ok(d):
            return d
    initdb = shutil.which("initdb")
    if initdb:
        d = os.path.dirname(os.path.realpath(initdb))
        if ok(d):
            return d
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_libc = None


def _die_with_parent():
    """preexec_fn: SIGQUIT (postgres: immediate shutdown) when the parent thread dies.

    subprocess applies user=/group= before preexec_fn, so the setting survives the
    switch of user (a change of credentials would clear it).
    """
    if _libc is not None:
        _libc.prctl(1, signal.SIGQUIT, 0, 0, 0)  # PR_SET_PDEATHSIG


def _load_libc():
    global _libc
    if _libc is None and os.uname().sysname == "Linux":
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            pass


def _children(pid: int) -> list[int]:
    """The pids whose parent is pid (Linux /proc)."""
    kids = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid ...
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(entry))
    return kids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return stat[stat.rindex(")") + 2:].split()[0] != "Z"
    except OSError:
        return False


def _kill_tree(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGKILL the postmaster and its children at once (each backend is its own process
    group, so killpg would miss them), then wait until none is left: a new postmaster
    refuses to start while an old backend still holds the shared memory."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGSTOP)  # no new children while we collect them
    except ProcessLookupError:
        return
    kids = _children(proc.pid)
    for pid in [proc.pid, *kids]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + timeout
    while any(_alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.01)


def _reap(proc: subprocess.Popen | None, timeout: float) -> None:
    """Wait for the postmaster to exit; past timeout SIGKILL it and its children."""
    if proc is None:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)


def _finalize(state: dict) -> None:
    """Immediate shutdown and temp dir removal: Cluster.close, GC and interpreter exit
    (weakref.finalize runs at exit) all end here; it runs once."""
    proc = state.get("proc")
    state["proc"] = None
    if proc is not None and proc.poll() is None:
        try:
            proc.send_signal(signal.SIGQUIT)
        except ProcessLookupError:
            pass
    _reap(proc, timeout=10)
    if state.get("log") is not None:
        state["log"].close()
        state["log"] = None
    base = state.get("base")
    state["base"] = None
    if base and not state.get("keep"):
        shutil.rmtree(base, ignore_errors=True)


def _locked(method):
    def wrapper(self, *a, **kw):
        with self._lock:
            return method(self, *a, **kw)
    wrapper.__name__, wrapper.__doc__ = method.__name__, method.__doc__
    return wrapper


class Cluster:
    """One PostgreSQL server on 127.0.0.1:<free port> with its data in a temp dir.

    Cluster(bin_dir=None, user=None, settings=None, keep=False)
      bin_dir   where initdb/postgres are (default: find_bin_dir())
      user      the OS user to run the server as; default: the current user, or
                `postgres` (else `nobody`) when running as root. Also the database
                superuser's name (trust auth, no password).
      settings  extra postgresql.conf settings, passed as -c on every start
      keep      leave the temp dir on close (for debugging)

    create() (or entering the context) runs initdb and starts the server; start()
    after stop()/kill() reuses the data dir and port, so URLs stay valid.
    """

    _names = itertools.count(1)

    def __init__(self, bin_dir: str | None = None, user: str | None = None,
                 settings: dict | None = None, keep: bool = False,
                 start_timeout: float = 60.0):
        self.bin_dir = bin_dir or find_bin_dir()
        if not self.bin_dir:
            raise ClusterError("PostgreSQL server binaries not found (apt-get install postgresql)")
        self.settings = {**SETTINGS, **(settings or {})}
        self.start_timeout = start_timeout
        self.port: int | None = None
        self.base: str | None = None  # the temp dir: data/, the Unix socket, postgres.log
        self._run_as: dict = {}
        if os.geteuid() == 0:
            names = [user] if user else ["postgres", "nobody"]
            for name in names:
                try:
                    pw = pwd.getpwnam(name)
                except KeyError:
                    continue
                self.user = name
                self._uid, self._gid = pw.pw_uid, pw.pw_gid
                self._run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
                break
            else:
                raise ClusterError(f"running as root and no user {' or '.join(names)} to run "
                                   "PostgreSQL as (initdb refuses root)")
        else:
            self.user = user or pwd.getpwuid(os.geteuid()).pw_name
            self._uid = self._gid = None
        self._state = {"proc": None, "log": None, "base": None, "keep": keep}
        self._finalizer = weakref.finalize(self, _finalize, self._state)
        self._lock = threading.RLock()
        self._admin = None  # a psycopg connection to the `postgres` database
        self.timings: dict[str, float] = {}

    # -- paths and state ------------------------------------------------------------
    @property
    def data_dir(self) -> str:
        return os.path.join(self.base, "data")

    @property
    def socket_dir(self) -> str:
        return self.base

    @property
    def log_path(self) -> str:
        return os.path.join(self.base, "postgres.log")

    @property
    def pid(self) -> int | None:
        proc = self._state["proc"]
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def log_tail(self, n: int = 4000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - n))
                return f.read().decode("utf-8", "replace")
        except (OSError, TypeError):
            return ""

    def _env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", HOME=self.base or "/")
        return env

    def _run(self, args: list, timeout: float) -> subprocess.CompletedProcess:
        """A short-lived server tool (initdb) as the server's user, with a timeout."""
        return subprocess.run(args, cwd=self.base, env=self._env(), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, **self._run_as)

    # -- life cycle -------------------------------------------------------------------
    @_locked
    def create(self) -> "Cluster":
        """initdb in a fresh temp dir and start the server; closes everything on failure."""
        if self.base is not None or not self._finalizer.alive:
            raise ClusterError("this Cluster was already created (or closed)")
        t0 = time.monotonic()
        try:
            self.base = tempfile.mkdtemp(prefix="pgtest-")
            self._state["base"] = self.base
            os.chmod(self.base, 0o755)
            if self._uid is not None:
                os.chown(self.base, self._uid, self._gid)
            try:
                r = self._run([os.path.join(self.bin_dir, "initdb"), "-D", self.data_dir,
                               "-U", self.user, "--auth=trust", "-E", "UTF8", "--locale=C",
                               "--no-sync", "--no-instructions"], timeout=120)
            except subprocess.TimeoutExpired as e:
                raise ClusterError(f"initdb timed out after {e.timeout}s") from None
            if r.returncode != 0:
                raise ClusterError(f"initdb failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
            self.timings["initdb"] = time.monotonic() - t0
            for attempt in range(5):  # a free port can be taken before the server binds it
                self.port = _free_port()
                try:
                    self.start()
                    break
                except ClusterError as e:
                    if attempt == 4 or "could not bind" not in str(e) and \
                            "already in use" not in str(e):
                        raise
            self.timings["create"] = time.monotonic() - t0
            return self
        except BaseException:
            self.close()
            raise

    @_locked
    def start(self) -> "Cluster":
        """Start the server on the existing data dir and port; wait until it accepts connections."""
        if self.base is None:
            return self.create()
        if self.running:
            return self
        self._drop_admin()
        t0 = time.monotonic()
        args = [os.path.join(self.bin_dir, "postgres"), "-D", self.data_dir,
                "-c", f"port={self.port}", "-c", f"unix_socket_directories={self.socket_dir}"]
        for k, v in self.settings.items():
            args += ["-c", f"{k}={v}"]
        _load_libc()
        # PR_SET_PDEATHSIG fires when the starting *thread* ends: only from the main thread,
        # so that e.g. an outage thread (stop, sleep, start) does not take the server down.
        pre = _die_with_parent if threading.current_thread() is threading.main_thread() else None
        if self._state["log"] is None:
            self._state["log"] = open(self.log_path, "ab")
            if self._uid is not None:
                os.chown(self.log_path, self._uid, self._gid)
        log_start = os.path.getsize(self.log_path)
        proc = subprocess.Popen(args, cwd=self.base, env=self._env(), stdin=subprocess.DEVNULL,
                                stdout=self._state["log"], stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=pre,
                                **self._run_as)
        self._state["proc"] = proc
        pidfile = os.path.join(self.data_dir, "postmaster.pid")
        deadline = t0 + self.start_timeout
        while True:
            if proc.poll() is not None:
                self._state["proc"] = None
                with open(self.log_path, "rb") as f:
                    f.seek(log_start)
                    log = f.read().decode("utf-8", "replace")
                raise ClusterError(f"postgres exited with {proc.returncode} while starting "
                                   f"(port {self.port}):\n{log[-4000:]}")
            try:  # pg_ctl start -w's test: our pid on line 1 and "ready" on line 8
                with open(pidfile) as f:
                    lines = f.read().split("\n")
                if len(lines) > 7 and lines[0].strip() == str(proc.pid) and \
                        lines[7].strip() == "ready":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self._stop(signal.SIGQUIT)
                raise ClusterError(f"postgres not ready after {self.start_timeout}s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.01)
        self.timings["start"] = time.monotonic() - t0
        return self

    @_locked
    def _stop(self, sig: int, timeout: float = 30.0) -> None:
        self._drop_admin()
        proc = self._state["proc"]
        self._state["proc"] = None
        if proc is None:
            return
        if sig == signal.SIGKILL:
            _kill_tree(proc, timeout)
            return
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass
        _reap(proc, timeout)

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Stop the server (data kept): mode "fast" (SIGINT: roll back, disconnect, checkpoint),
        "immediate" (SIGQUIT: no checkpoint, recovery on the next start) or "smart" (SIGTERM:
        waits for clients to leave). Past timeout the server is SIGKILLed."""
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        self._stop(sig, timeout)

    def kill(self) -> None:
        """A crash: SIGKILL to the postmaster and every backend at once (data kept)."""
        self._stop(signal.SIGKILL, timeout=10)

    def restart(self, mode: str = "fast") -> "Cluster":
        self.stop(mode)
        return self.start()

    @_locked
    def close(self) -> None:
        """Immediate shutdown and remove the temp dir (unless keep=True). Idempotent."""
        self._drop_admin()
        self._finalizer()
        self.base = None

    def __enter__(self) -> "Cluster":
        if self.base is None:
            self.create()
        elif not self.running:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- databases -------------------------------------------------------------------
    def dsn(self, dbname: str = "postgres", host: str = "127.0.0.1") -> str:
        """A URL for an existing database: postgresql://USER@127.0.0.1:PORT/DBNAME."""
        if host == "127.0.0.1":
            return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"
        # the Unix socket: libpq takes the directory as host=
        return f"postgresql://{self.user}@/{dbname}?host={self.socket_dir}&port={self.port}"

    def _admin_conn(self):
        import psycopg  # only here: the module itself needs no driver
        if self._admin is None or self._admin.closed or self._admin.broken:
            self._drop_admin()
            self._admin = psycopg.connect(self.dsn(), autocommit=True, connect_timeout=10)
        return self._admin

    def _drop_admin(self):
        if self._admin is not None:
            try:
                self._admin.close()
            except Exception:
                pass
            self._admin = None

    @_locked
    def execute(self, sql: str, params=None) -> list:
        """Run one statement in the `postgres` database (autocommit); rows, if any."""
        if not self.running:
            raise ClusterError("the server is not running")
        try:
            cur = self._admin_conn().execute(sql, params)
        except Exception:
            self._drop_admin()  # e.g. a connection the server dropped: retry once, fresh
            cur = self._admin_conn().execute(sql, params)
        return cur.fetchall() if cur.description else []

    def create_database(self, dbname: str | None = None) -> str:
        """CREATE DATABASE (default name t_<n>); returns the name."""
        name = dbname or f"t_{next(self._names)}"
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"not a plain database name: {name!r}")
        self.execute(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, dbname: str) -> None:
        """DROP DATABASE ... WITH (FORCE): disconnects whoever is still connected."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", dbname):
            raise ValueError(f"not a plain database name: {dbname!r}")
        self.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")

    def url(self, dbname: str | None = None) -> str:
        """Create a fresh database (default name t_<n>) and return its URL."""
        return self.dsn(self.create_database(dbname))

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Cluster {self.bin_dir} port={self.port} {state} base={self.base}>"


# -- pytest ---------------------------------------------------------------------------------
def require() -> None:
    """Skip (or, when CI is set, fail) the calling test unless the server and psycopg are here."""
    import pytest
    missing = []
    if not find_bin_dir():
        missing.append("PostgreSQL server binaries (apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing.append("psycopg (pip install 'psycopg[binary]')")
    if missing:
        msg = "missing: " + "; ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(f"{msg} — CI must run the PostgreSQL tests (.ci/run installs them)",
                        pytrace=False)
        pytest.skip(msg)


try:
    import pytest as _pytest
except ImportError:  # the Cluster is usable without pytest
    _pytest = None

if _pytest is not None:
    @_pytest.fixture(scope="session")
    def pg_cluster():
        """One throwaway PostgreSQL server for the whole test run."""
        require()
        with Cluster() as cluster:
            yield cluster

    @_pytest.fixture
    def pg_url(pg_cluster):
        """A fresh, empty database on pg_cluster; its URL. Dropped after the test."""
        if not pg_cluster.running:  # an earlier test stopped or killed it and failed
            pg_cluster.start()
        name = pg_cluster.create_database()
        yield pg_cluster.dsn(name)
        if not pg_cluster.running:
            pg_cluster.start()
        try:
            pg_cluster.drop_database(name)
        except Exception:
            pass  # it goes with the cluster anyway
