"""Fixtures for the client-side tests.

One throwaway cluster per pytest session, started and stopped through the
shell helpers of scripts/lib.sh (Unix socket in its own directory under
/tmp, the library preloaded), with statement logging on and bind-parameter
logging off, so the server log shows every SQL text but no parameter value.
The extension is created in database `postgres`.

At the end of the session the server log is checked once more for every
token any test saw (`sa.TOKENS`) and for signs of a crashed backend.
"""

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

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


def lib_sh(function, *args):
    """Calls a function of scripts/lib.sh with arguments (no shell quoting)."""
    subprocess.run(
        ["bash", "-c", f'source scripts/lib.sh; {function} "$@"', "lib.sh", *args],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
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
    crash = re.search(r"terminated by signal|was terminated by|PANIC:|all server processes terminated", log)
    assert not crash, f"a backend crashed: {crash.group(0)!r} in {c.log_path}"


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
