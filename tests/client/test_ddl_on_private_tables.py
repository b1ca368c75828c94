"""No DDL on the extension's tables crashes a backend (issue 13 §3).

`session_validate` reads the session table and its primary-key index
directly. In 0.1.0 it found both by name and trusted what it found: a
superuser partitioning the table (a realistic thing to try at scale),
replacing it with a view, re-creating the primary key on another column or
changing a column's type made validate crash the server (SIGSEGV, every
connection dropped). Now the first call after any change re-checks the
relation kind, the index (its table, its column, valid), and the type of
every column it reads, and anything unexpected raises one clear error that
names the object and the cause (SQLSTATE 55000).

All cases run in one cluster of their own, each in a database of its own;
the cluster's log must show no crashed backend at the end.
"""

import psycopg
import pytest

import sa
from conftest import Cluster, crash_lines, lib_sh

CHANGED = "changed outside ALTER EXTENSION"


@pytest.fixture(scope="module")
def ddl_cluster():
    import os
    from pathlib import Path
    cdir = Path(f"/tmp/pg_session_auth_ddl_{os.getpid()}")
    lib_sh("start_cluster", str(cdir), "max_connections = 40")
    c = Cluster(cdir)
    yield c
    for conn in c.connections:
        conn.close()
    log = c.log_text()
    lib_sh("stop_cluster", str(cdir))
    import shutil
    shutil.rmtree(cdir, ignore_errors=True)
    assert not crash_lines(log), f"a backend crashed: {crash_lines(log)[:3]}"


@pytest.fixture
def fresh_db(ddl_cluster, request):
    """(cluster, database name, connection): a database of this test's own;
    every connection the test opens is closed when it ends."""
    name = "ddl_" + request.node.name.split("[")[-1].rstrip("]").replace("-", "_")[:40]
    opened_before = len(ddl_cluster.connections)
    admin = ddl_cluster.connect()
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.execute(f'CREATE DATABASE "{name}"')
    db = ddl_cluster.connect(dbname=name)
    db.execute("CREATE EXTENSION pg_session_auth")
    yield ddl_cluster, name, db
    for conn in ddl_cluster.connections[opened_before:]:
        conn.close()
    del ddl_cluster.connections[opened_before:]


def clear_error(fn):
    with pytest.raises(psycopg.Error) as e:
        fn()
    err = e.value
    assert err.sqlstate == "55000", (err.sqlstate, str(err))
    assert CHANGED in str(err) and "session_auth." in str(err), str(err)
    return err


CASES = {
    "partitioned": [
        "ALTER TABLE session_auth.sessions RENAME TO sessions_old",
        "CREATE TABLE session_auth.sessions (LIKE session_auth.sessions_old) PARTITION BY HASH (session_id)",
        "CREATE TABLE session_auth.sessions_p0 PARTITION OF session_auth.sessions "
        "FOR VALUES WITH (MODULUS 2, REMAINDER 0)",
        "CREATE TABLE session_auth.sessions_p1 PARTITION OF session_auth.sessions "
        "FOR VALUES WITH (MODULUS 2, REMAINDER 1)",
        "ALTER TABLE session_auth.sessions ADD PRIMARY KEY (session_id)",
        "INSERT INTO session_auth.sessions SELECT * FROM session_auth.sessions_old",
    ],
    "view": [
        "ALTER TABLE session_auth.sessions RENAME TO sessions_old",
        "CREATE VIEW session_auth.sessions AS SELECT * FROM session_auth.sessions_old",
    ],
    "pkey_on_another_column": [
        "ALTER TABLE session_auth.sessions DROP CONSTRAINT sessions_pkey",
        "CREATE UNIQUE INDEX sessions_pkey ON session_auth.sessions (access_digest)",
    ],
    "pkey_on_another_table": [
        "ALTER TABLE session_auth.sessions DROP CONSTRAINT sessions_pkey",
        "ALTER TABLE session_auth.blacklist DROP CONSTRAINT blacklist_pkey",
        "CREATE UNIQUE INDEX sessions_pkey ON session_auth.blacklist (session_id, generation)",
    ],
    "user_id_bigint": [
        "DELETE FROM session_auth.sessions",
        "ALTER TABLE session_auth.sessions ALTER COLUMN user_id TYPE bigint USING 1",
    ],
    "data_json": [
        "ALTER TABLE session_auth.sessions ALTER COLUMN data TYPE json",
    ],
    "pkey_dropped": [
        "ALTER TABLE session_auth.sessions DROP CONSTRAINT sessions_pkey",
    ],
    "blacklist_digest_text": [
        "ALTER TABLE session_auth.blacklist ALTER COLUMN access_digest TYPE text USING encode(access_digest, 'hex')",
    ],
    # The blacklist's key has two columns: the probe trusts their order.
    "blacklist_key_columns_swapped": [
        "ALTER TABLE session_auth.blacklist DROP CONSTRAINT blacklist_pkey",
        "CREATE UNIQUE INDEX blacklist_pkey ON session_auth.blacklist (generation, session_id)",
    ],
    "blacklist_key_one_column": [
        "ALTER TABLE session_auth.blacklist DROP CONSTRAINT blacklist_pkey",
        "CREATE INDEX blacklist_pkey ON session_auth.blacklist (session_id)",
    ],
}


@pytest.mark.parametrize("case", list(CASES))
def test_changed_tables_raise_one_clear_error_and_crash_nothing(fresh_db, case):
    c, name, db = fresh_db
    s = sa.issue(db, "ddl-user")
    r = sa.refresh(db, s["refresh_token"])
    # A second backend validates before the change (caches what it found).
    other = c.connect(dbname=name)
    assert sa.validate(other, r["access_token"])["status"] == "ok"
    for stmt in CASES[case]:
        db.execute(stmt)
    for conn in (other, c.connect(dbname=name)):  # a backend with caches, and a fresh one
        clear_error(lambda: sa.validate(conn, r["access_token"]))
        clear_error(lambda: sa.validate(conn, s["access_token"]))  # the parent: a blacklist probe
        clear_error(lambda: sa.refresh(conn, r["refresh_token"]))
        with pytest.raises(psycopg.Error):
            sa.require(conn, r["access_token"])


def test_a_dropped_and_re_added_column_is_re_read_not_served_stale(fresh_db):
    c, name, db = fresh_db
    s = sa.issue(db, "ddl-stale", {"v": 1}, auth_level=2)
    other = c.connect(dbname=name)
    assert sa.validate(other, s["access_token"])["auth_level"] == 2
    db.execute("ALTER TABLE session_auth.sessions DROP COLUMN auth_level")
    db.execute("ALTER TABLE session_auth.sessions ADD COLUMN auth_level int NOT NULL DEFAULT 3")
    # Same names and types, new column numbers: the new values, never the dropped ones.
    assert sa.validate(other, s["access_token"])["auth_level"] == 3
    assert sa.validate(c.connect(dbname=name), s["access_token"])["auth_level"] == 3


def test_a_failed_concurrent_index_build_under_the_pkey_name_is_refused(fresh_db):
    c, name, db = fresh_db
    s = sa.issue(db, "ddl-invalid-index")
    sa.issue(db, "ddl-invalid-index")
    db.execute("ALTER TABLE session_auth.sessions DROP CONSTRAINT sessions_pkey")
    db.execute("UPDATE session_auth.sessions SET session_id = %s", [s["session_id"]])  # duplicates
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute("CREATE UNIQUE INDEX CONCURRENTLY sessions_pkey ON session_auth.sessions (session_id)")
    clear_error(lambda: sa.validate(c.connect(dbname=name), s["access_token"]))


@pytest.mark.parametrize("change", ["TRUNCATE session_auth.retry_keys",
                                    "DROP EXTENSION pg_session_auth; CREATE EXTENSION pg_session_auth"])
def test_a_retry_right_after_the_retry_keys_are_reset_still_works(fresh_db, change):
    """A backend caches the retry key it wraps with; after the table is
    emptied under it (TRUNCATE, or the extension re-created), its next
    rotation must not hand out a pair whose retry cannot be answered."""
    c, name, db = fresh_db
    s = sa.issue(db, "ddl-retry-warm")
    sa.refresh(db, s["refresh_token"])  # this backend now caches a key
    for stmt in change.split("; "):
        c.connect(dbname=name).execute(stmt)
    s = sa.issue(db, "ddl-retry")
    first = sa.refresh(db, s["refresh_token"])
    again = sa.refresh(c.connect(dbname=name), s["refresh_token"])
    assert again["status"] == "ok" and sa.pair(again) == sa.pair(first), again["status"]


def test_the_owner_rights_switch_is_undone_after_an_error_inside_validate(fresh_db):
    c, name, db = fresh_db
    db.execute("CREATE ROLE ddl_app LOGIN" if not db.execute(
        "SELECT 1 FROM pg_roles WHERE rolname = 'ddl_app'").fetchone() else "SELECT 1")
    db.execute("GRANT session_auth_client TO ddl_app")
    s = sa.issue(db, "ddl-owner")
    db.execute("ALTER TABLE session_auth.sessions ALTER COLUMN data TYPE json")
    app = c.connect(user="ddl_app", dbname=name, autocommit=False)
    app.execute("SAVEPOINT a")
    with pytest.raises(psycopg.Error):
        sa.validate(app, s["access_token"])
    app.execute("ROLLBACK TO SAVEPOINT a")
    row = app.execute("SELECT current_user AS cu, session_user AS su").fetchone()
    assert (row["cu"], row["su"]) == ("ddl_app", "ddl_app")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app.execute("SELECT * FROM session_auth.sessions")
    app.rollback()
