"""Fixtures for the client-side tests.

One throwaway cluster per pytest session, started and stopped through the
shell helpers of scripts/lib.sh (Unix socket in its own directory under
/tmp, the library preloaded), with statement logging on and bind-parameter
logging off, so the server log shows every SQL text but no parameter value.
The extension is created in database `postgres`.

At the end of the session amcheck checks the extension's tables and indexes
(`consistency`), and the server log is checked once more for every token
any test saw (`sa.TOKENS`) and for signs of a crashed backend.
"""

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

import consistency
import sa

REPO = Path(__file__).resolve().parents[2]
PORT = int(os.environ.get("PGPORT_FOR_TESTS", "5432"))

# Logging that would print any token inlined in SQL text, but never the
# values of bind parameters (the README's advice to DBAs).
SERVER_CONF = [
    "log_statement = 'all'",
    "log_min_duration_statement = 0",
    "log_parameter_max_length = 0",
    "log_parameter_max_length_on_error = 0",
    "log_min_error_statement = error",
    "log_line_prefix = '%m [%p] %q%u@%d '",
    "max_connections = 60",
]


def lib_sh(function, *args, env=None):
    """Calls a function of scripts/lib.sh with arguments (no shell quoting);
    `env` adds environment variables (the server inherits them)."""
    subprocess.run(
        ["bash", "-c", f'source scripts/lib.sh; {function} "$@"', "lib.sh", *args],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


@dataclass
class Cluster:
    dir: Path
    port: int = PORT
    connections: list = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.dir / "server.log"

    def conninfo(self, user="postgres", dbname="postgres"):
        return {"host": str(self.dir), "port": self.port, "user": user, "dbname": dbname}

    def connect(self, user="postgres", dbname="postgres", autocommit=True, **kwargs):
        """A new connection (closed at the end of the session at the latest)."""
        conn = psycopg.connect(
            **self.conninfo(user, dbname),
            autocommit=autocommit,
            row_factory=dict_row,
            connect_timeout=10,
            application_name="pg_session_auth_client_tests",
            **kwargs,
        )
        self.connections.append(conn)
        return conn

    def log_text(self) -> str:
        return self.log_path.read_bytes().decode("utf-8", errors="replace")

    def create_role(self, name, grant_client=True):
        """A LOGIN role (trust auth on the socket), optionally granted the
        extension's client role the way the README says."""
        with self.connect() as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone()
            if not exists:
                conn.execute(f'CREATE ROLE "{name}" LOGIN')
            if grant_client:
                conn.execute(f'GRANT session_auth_client TO "{name}"')
        return name


@pytest.fixture(scope="session")
def cluster():
    cdir = Path(f"/tmp/pg_session_auth_client_{os.getpid()}")
    lib_sh("start_cluster", str(cdir), *SERVER_CONF)
    c = Cluster(cdir)
    try:
        with c.connect() as conn:
            conn.execute("CREATE EXTENSION pg_session_auth")
        yield c
        for conn in c.connections:
            conn.close()
        with c.connect() as conn:  # what every test left: physically consistent
            print("\n" + consistency.assert_consistent(conn).summary())
        _final_log_checks(c)
    finally:
        for conn in c.connections:
            conn.close()
        lib_sh("stop_cluster", str(cdir))
        if os.environ.get("PG_SESSION_AUTH_KEEP_CLUSTER") != "1":
            shutil.rmtree(cdir, ignore_errors=True)


def _final_log_checks(c: Cluster):
    log = c.log_text()
    assert "database system is ready to accept connections" in log, "not the server log?"
    leaked = [t for t in sa.TOKENS if t in log]
    assert not leaked, f"{len(leaked)} token(s) of this test session appear in {c.log_path}"
    crashed = crash_lines(log)
    assert not crashed, f"a backend crashed: {crashed[0]!r} in {c.log_path}"


@pytest.fixture
def connect(cluster):
    """connect(user='postgres', dbname='postgres', autocommit=True): a new
    connection, closed when the test ends."""
    made = []

    def _connect(user="postgres", dbname="postgres", autocommit=True, **kwargs):
        conn = cluster.connect(user, dbname, autocommit, **kwargs)
        made.append(conn)
        return conn

    yield _connect
    for conn in made:
        conn.close()


@pytest.fixture
def db(connect):
    """A superuser connection to `postgres`, autocommit."""
    return connect()


# ---------------------------------------------------------------------------
# Clusters of a test's own, and helpers for tests that drive processes.

PG_CONFIG = os.environ.get("PG_CONFIG", "/usr/lib/postgresql/15/bin/pg_config")


def pg_bindir() -> str:
    return subprocess.run([PG_CONFIG, "--bindir"], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def own_cluster(request):
    """start(conf..., env=None, crashes_expected=False) -> Cluster: a fresh
    cluster of this test's own, stopped and removed when the test ends. Its
    log must show no crashed backend, unless the test crashes one on purpose."""
    started = []

    def start(*conf, env=None, crashes_expected=False):
        cdir = Path(f"/tmp/pg_session_auth_own_{os.getpid()}_{len(started)}")
        lib_sh("start_cluster", str(cdir), *conf, env=env)
        c = Cluster(cdir)
        started.append((c, crashes_expected))
        return c

    yield start
    crashed = []
    for c, crashes_expected in started:
        for conn in c.connections:
            conn.close()
        lib_sh("stop_cluster", str(c.dir))
        if not crashes_expected and c.log_path.exists():
            crashed += crash_lines(c.log_text())
        subprocess.run(["rm", "-rf", str(c.dir)], check=False)
    assert not crashed, f"a backend crashed: {crashed[:3]}"


@pytest.fixture
def own_standby():
    """start(primary, conf...) -> Cluster: a streaming hot standby of
    `primary` made with `pg_basebackup -R -X stream` (so it preloads the
    library as its primary does), with `conf` lines added; stopped and
    removed when the test ends."""
    started = []

    def start(primary: Cluster, *conf):
        sdir = Path(f"/tmp/pg_session_auth_standby_{os.getpid()}_{len(started)}")
        shutil.rmtree(sdir, ignore_errors=True)
        sdir.mkdir()
        if os.geteuid() == 0:
            shutil.chown(sdir, "postgres", "postgres")
        backup = [f"{pg_bindir()}/pg_basebackup", "-h", str(primary.dir), "-p", str(primary.port),
                  "-U", "postgres", "-D", str(sdir / "data"), "-R", "-X", "stream", "-c", "fast"]
        subprocess.run(["runuser", "-u", "postgres", "--", *backup] if os.geteuid() == 0 else backup,
                       check=True)
        with open(sdir / "data" / "postgresql.conf", "a") as f:
            f.write("\n".join([f"unix_socket_directories = '{sdir}'", "hot_standby = on", *conf, ""]))
        standby = Cluster(sdir, port=primary.port)
        started.append(standby)
        pg_ctl(standby, "start")
        return standby

    yield start
    crashed = []
    for standby in started:
        for conn in standby.connections:
            conn.close()
        pg_ctl(standby, "-m", "fast", "stop", check=False)
        if standby.log_path.exists():
            crashed += crash_lines(standby.log_text())
        shutil.rmtree(standby.dir, ignore_errors=True)
    assert not crashed, f"a standby's backend crashed: {crashed[:3]}"


def pg_ctl(c: Cluster, *args, check=True, timeout=60):
    """pg_ctl against a cluster, as its owner; returns the CompletedProcess."""
    cmd = [f"{pg_bindir()}/pg_ctl", "-D", str(c.dir / "data"), "-l", str(c.log_path), "-w", "-t", str(timeout), *args]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, check=check, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def worker_pid(conn, timeout=15.0, backend_type="pg_session_auth purge"):
    """The pid of the first process of `backend_type`, waiting up to `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = %s", [backend_type]).fetchone()
        if row:
            return row["pid"]
        time.sleep(0.1)
    return None


def wait_until(predicate, timeout, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def connect_retry(c: Cluster, timeout=30.0, **kwargs):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return c.connect(**kwargs)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def crash_lines(log: str):
    """Lines of a server log that show a crashed backend or a server restart."""
    # Anchored at line starts: unanchored, the regex engine retries `.*` from
    # every character (5 s on a 9 MB log instead of 0.1 s).
    return re.findall(r"^.*(?:terminated by signal|was terminated by|PANIC:|all server processes terminated).*$",
                      log, re.M)
