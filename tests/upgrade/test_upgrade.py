"""In-place upgrade from a released version (tests/upgrade/run sets it up).

A cluster runs the old release; sessions are made in every state (live,
rotated inside and outside the grace window, an older ancestor, revoked,
reuse-detected, expired and not yet purged, re-authenticated), with events
and blacklist rows. Then the DBA installs the new package and restarts, and
before ALTER EXTENSION ... UPDATE every call either works or raises one
clear error naming that command, nothing crashes, and the worker waits
quietly. A bad target version, a script that fails half-way and what a DBA
attached to a table the update rebuilds leave the database at the old
version. After the update every session answers as the
rules say it must, nothing stored is lost, and the schema is exactly that of
a fresh install.
"""

import os
import re
import shutil
import sys
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

import sa
from harness import Cluster, connect_retry, crash_lines, lib_sh, pg_bindir, pg_ctl, wait_until, worker_pid

ROOT = Path(os.environ["UPGRADE_ROOT"])
OLD_VERSION = os.environ["UPGRADE_OLD_VERSION"]
OLD_PACKAGE = Path(os.environ["UPGRADE_OLD_PACKAGE"])
NEW_VERSION = os.environ["UPGRADE_NEW_VERSION"]
NEW_PACKAGE = Path(os.environ["UPGRADE_NEW_PACKAGE"])
UPDATE = "ALTER EXTENSION pg_session_auth UPDATE"


def install(package: Path):
    """Installs a `cargo pgrx package` directory into the private copy of
    PostgreSQL, as a package upgrade would: the extension's previous files
    go first (a new package brings its own install and upgrade scripts)."""
    pkglibdir = Path(subprocess.run([os.environ["PG_CONFIG"], "--pkglibdir"], capture_output=True,
                                    text=True, check=True).stdout.strip())
    sharedir = Path(subprocess.run([os.environ["PG_CONFIG"], "--sharedir"], capture_output=True,
                                   text=True, check=True).stdout.strip())
    for old in [pkglibdir / "pg_session_auth.so", *(sharedir / "extension").glob("pg_session_auth*")]:
        old.unlink(missing_ok=True)
    for src in package.rglob("*"):
        if src.is_file():
            rel = src.relative_to(package)
            dst = ROOT / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def version(db):
    return db.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_session_auth'").fetchone()["extversion"]


def column_exists(db, table, column):
    return db.execute(
        "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s "
        "AND NOT attisdropped) AS e", [table, column]).fetchone()["e"]


def status(db, fn, token):
    return db.execute(f"SELECT status FROM {fn}(%s)", [token]).fetchone()["status"]


def files_holding(db, needles):
    """The files of the current database's directory, as a reader of the
    data directory sees them after a checkpoint, that hold any of
    `needles`."""
    db.execute("CHECKPOINT")
    where = db.execute("SELECT current_setting('data_directory') AS d, oid FROM pg_database "
                       "WHERE datname = current_database()").fetchone()
    found = []
    for path in sorted((Path(where["d"]) / "base" / str(where["oid"])).iterdir()):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # unlinked by the checkpoint meanwhile
            continue
        found += [(path.name, needle.hex()) for needle in needles if needle in data]
    return found


def make_world(db):
    """Sessions in every state, made by the old release. Returns the tokens
    and what each must answer after the update."""
    w = {}
    db.execute("SET session_auth.refresh_grace = '1h'")
    a = sa.issue(db, "alice@upgrade", {"roles": ["editor"], "n": 1.50}, 2)
    w["live"] = a
    b0 = sa.issue(db, "bob@upgrade")
    b1 = sa.refresh(db, b0["refresh_token"])
    assert sa.pair(sa.refresh(db, b0["refresh_token"])) == sa.pair(b1), "a retry in the grace, in the old release"
    w["in_grace"] = (b0, b1)
    db.execute("SET session_auth.refresh_grace = '200ms'")
    c0 = sa.issue(db, "carol@upgrade")
    c1 = sa.refresh(db, c0["refresh_token"])
    d0 = sa.issue(db, "dave@upgrade")
    d1 = sa.refresh(db, d0["refresh_token"])
    d2 = sa.refresh(db, d1["refresh_token"])
    f0 = sa.issue(db, "frank@upgrade")
    f1 = sa.refresh(db, f0["refresh_token"])
    time.sleep(0.3)
    assert sa.refresh(db, f0["refresh_token"])["status"] == "reuse_detected"
    w["after_grace"] = (c0, c1)
    w["ancestor"] = (d0, d1, d2)
    w["reuse_detected"] = (f0, f1)
    e = sa.issue(db, "erin@upgrade")
    assert sa.revoke(db, e["access_token"])
    w["revoked"] = e
    db.execute("SET session_auth.access_ttl = '1s'")
    db.execute("SET session_auth.idle_timeout = '1s'")
    w["expired"] = sa.issue(db, "gina@upgrade")
    db.execute("RESET session_auth.access_ttl")
    db.execute("RESET session_auth.idle_timeout")
    h0 = sa.issue(db, "henry@upgrade")
    h1 = sa.reauthenticate(db, h0["access_token"], 3)
    w["reauthenticated"] = (h0, h1)
    db.execute("RESET session_auth.refresh_grace")
    time.sleep(1.2)  # gina's deadlines pass
    w["events"] = db.execute("SELECT event_id, event, session_id FROM session_auth.events ORDER BY 1").fetchall()
    w["blacklist"] = db.execute("SELECT session_id, generation, kind, digest, expires_at, reason "
                                "FROM session_auth.blacklist ORDER BY 1, 2, 3").fetchall()
    # What 0.1.0's README told DBAs to set on a growing blacklist, and a
    # storage parameter on the sessions.
    db.execute("ALTER TABLE session_auth.blacklist SET (autovacuum_vacuum_scale_factor = 0.01)")
    db.execute("ALTER TABLE session_auth.sessions SET (autovacuum_vacuum_scale_factor = 0.02)")
    # What the update removes: the wrapped retry pairs, and the half of each
    # stored digest that is no longer kept.
    w["removed"] = [bytes(r["v"]) for r in db.execute(
        "SELECT retry_pair AS v FROM session_auth.sessions WHERE retry_pair IS NOT NULL "
        "UNION ALL SELECT substr(access_digest, 17) FROM session_auth.sessions "
        "UNION ALL SELECT substr(refresh_digest, 17) FROM session_auth.sessions "
        "UNION ALL SELECT substr(digest, 17) FROM session_auth.blacklist").fetchall()]
    assert any(len(v) > 16 for v in w["removed"]), "the world has wrapped retry pairs"
    assert all(len(v) >= 16 for v in w["removed"])
    w["sessions"] = db.execute("SELECT session_id, user_id, data, auth_level, generation, revoked_at "
                               "FROM session_auth.sessions ORDER BY 1").fetchall()
    return w


WORLD = "upgrade_world"  # a database the worker does not serve: nothing is purged behind the test's back


@pytest.fixture(scope="module")
def upgraded_cluster():
    """The old release's cluster with its world, then the new package
    installed and the server restarted, not yet updated. The world lives in
    its own database; the worker's database (postgres) has the extension
    too, with one expired session for the worker to purge once updated."""
    cdir = Path(f"/tmp/pg_session_auth_upgrade_cluster_{os.getpid()}")
    install(OLD_PACKAGE)
    lib_sh("start_cluster", str(cdir), "session_auth.purge_interval = '1h'", "log_min_messages = info")
    c = Cluster(cdir)
    try:
        admin = c.connect()
        admin.execute("CREATE EXTENSION pg_session_auth")
        admin.execute("SET session_auth.access_ttl = '1s'")
        admin.execute("SET session_auth.idle_timeout = '1s'")
        sa.issue(admin, "ivan@upgrade")
        admin.execute(f"CREATE DATABASE {WORLD}")
        # A database its owner can plant look-alikes in, for test_7.
        admin.execute("CREATE ROLE regress_attacker LOGIN")
        admin.execute("CREATE DATABASE planted OWNER regress_attacker")
        c.connect(dbname="planted").execute("CREATE EXTENSION pg_session_auth")
        db = c.connect(dbname=WORLD)
        db.execute("CREATE EXTENSION pg_session_auth")
        assert version(db) == OLD_VERSION
        world = make_world(db)
        db.close()
        admin.close()
        pg_ctl(c, "stop", "-m", "fast")
        install(NEW_PACKAGE)
        pg_ctl(c, "start")
        yield c, world
    finally:
        for conn in c.connections:
            conn.close()
        log = c.log_text() if c.log_path.exists() else ""
        lib_sh("stop_cluster", str(cdir))
        shutil.rmtree(cdir, ignore_errors=True)
        assert not crash_lines(log), f"a backend crashed: {crash_lines(log)[:3]}"


def expect_update_error(db, sql, args=()):
    with pytest.raises(psycopg.Error) as e:
        db.execute(sql, list(args)).fetchall()
    err = e.value
    assert err.sqlstate == "55000", (sql, err.sqlstate, str(err))
    assert UPDATE in (err.diag.message_hint or ""), (sql, err.diag.message_hint)
    assert OLD_VERSION in err.diag.message_primary and NEW_VERSION in err.diag.message_primary
    return err


def test_1_before_the_update_every_call_says_to_run_it_and_nothing_crashes(upgraded_cluster):
    c, w = upgraded_cluster
    db = connect_retry(c, dbname=WORLD)
    assert version(db) == OLD_VERSION
    a = w["live"]
    calls = [
        ("SELECT * FROM session_validate(%s)", [a["access_token"]]),
        ("SELECT * FROM session_refresh(%s)", [a["refresh_token"]]),
        ("SELECT * FROM session_issue('new@upgrade')", []),
        ("SELECT * FROM session_list('alice@upgrade')", []),
        ("SELECT session_set_data(%s, '{}')", [a["session_id"]]),
        ("SELECT session_revoke(%s)", [a["access_token"]]),
        ("SELECT session_revoke_id(%s)", [a["session_id"]]),
        ("SELECT session_revoke_user('alice@upgrade')", []),
        ("SELECT * FROM session_require(%s)", [a["access_token"]]),
        ("SELECT * FROM session_reauthenticate(%s)", [a["access_token"]]),
        ("SELECT session_purge()", []),
    ]
    for sql, args in calls:
        expect_update_error(db, sql, args)
    # Malformed tokens need no table: they still answer (invalid), as ever.
    assert status(db, "session_validate", "garbage") == "invalid"
    # The worker (serving postgres, also not updated) waits, and says why once.
    assert worker_pid(db) is not None
    assert wait_until(lambda: "waiting for ALTER EXTENSION pg_session_auth UPDATE" in c.log_text(), 10)
    time.sleep(2.5)
    assert c.log_text().count("waiting for ALTER EXTENSION pg_session_auth UPDATE") == 1
    # Nothing was changed by any of it.
    assert db.execute("SELECT count(*) AS n FROM session_auth.sessions WHERE revoked_at IS NULL").fetchone()["n"] \
        == sum(1 for s in w["sessions"] if s["revoked_at"] is None)


def test_2_an_unknown_target_version_changes_nothing(upgraded_cluster):
    c, _ = upgraded_cluster
    db = connect_retry(c, dbname=WORLD)
    for target in ("9.9.9", "0.0.1", "", "0.2.0' OR '1"):
        with pytest.raises(psycopg.Error):
            db.execute(f"{UPDATE} TO '{target.replace(chr(39), chr(39) * 2)}'")
    assert version(db) == OLD_VERSION
    assert column_exists(db, "session_auth.sessions", "retry_pair")


def test_3_an_update_that_fails_half_way_leaves_the_old_version(upgraded_cluster):
    c, _ = upgraded_cluster
    db = connect_retry(c, dbname=WORLD)
    # A late step of the script fails: a table it creates already exists.
    db.execute("CREATE TABLE session_auth.login_locks (squatter int)")
    with pytest.raises(psycopg.errors.DuplicateTable):
        db.execute(UPDATE)
    assert version(db) == OLD_VERSION
    assert column_exists(db, "session_auth.sessions", "retry_pair"), "the earlier steps were rolled back"
    assert not column_exists(db, "session_auth.sessions", "retry_key_id")
    db.execute("DROP TABLE session_auth.login_locks")


def test_4_what_a_dba_attached_to_a_rebuilt_table_stops_the_update_by_name(upgraded_cluster):
    """The update rebuilds the sessions table and the blacklist: a trigger,
    an index, a column, a constraint, a setting, a view or a function a DBA
    attached to them would be dropped or would stop the update half-way. It
    stops first, naming each and nothing else, and changes nothing."""
    c, _ = upgraded_cluster
    db = connect_retry(c, dbname=WORLD)
    attached = [
        ("CREATE FUNCTION public.audit() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'",
         "DROP FUNCTION public.audit()", None),
        ("CREATE TRIGGER audit BEFORE UPDATE ON session_auth.sessions FOR EACH ROW EXECUTE FUNCTION public.audit()",
         "DROP TRIGGER audit ON session_auth.sessions", "trigger audit on session_auth.sessions"),
        ("CREATE INDEX dba_idx ON session_auth.sessions (created_at)",
         "DROP INDEX session_auth.dba_idx", "index session_auth.dba_idx"),
        ("ALTER TABLE session_auth.sessions ADD COLUMN note text",
         "ALTER TABLE session_auth.sessions DROP COLUMN note", "column session_auth.sessions.note"),
        ("ALTER TABLE session_auth.blacklist ADD CONSTRAINT dba_check CHECK (generation > 0)",
         "ALTER TABLE session_auth.blacklist DROP CONSTRAINT dba_check",
         "constraint dba_check on session_auth.blacklist"),
        ("ALTER TABLE session_auth.blacklist ENABLE ROW LEVEL SECURITY",
         "ALTER TABLE session_auth.blacklist DISABLE ROW LEVEL SECURITY",
         "row level security on session_auth.blacklist"),
        ("CREATE VIEW public.recent_theft AS SELECT session_id FROM session_auth.blacklist",
         "DROP VIEW public.recent_theft", "rule _RETURN on view public.recent_theft"),
        ("CREATE FUNCTION public.some_session() RETURNS session_auth.sessions LANGUAGE sql "
         "AS 'SELECT * FROM session_auth.sessions LIMIT 1'",
         "DROP FUNCTION public.some_session()", "function public.some_session()"),
    ]
    made = []
    try:
        for make, drop, _ in attached:
            db.execute(make)
            made.append(drop)
        with pytest.raises(psycopg.Error) as e:
            db.execute(UPDATE)
        assert e.value.sqlstate == "55000", str(e.value)
        listed = e.value.diag.message_primary.split(": ", 1)[1].split("; ")
        assert sorted(listed) == sorted(named for _, _, named in attached if named)
        assert "ALTER EXTENSION pg_session_auth UPDATE" in e.value.diag.message_hint
        assert version(db) == OLD_VERSION
        assert column_exists(db, "session_auth.sessions", "retry_pair")
    finally:
        for drop in reversed(made):
            db.execute(drop)


def test_5_after_the_update_every_session_answers_as_before(upgraded_cluster):
    c, w = upgraded_cluster
    db = connect_retry(c, dbname=WORLD)
    assert files_holding(db, w["removed"]), "the test sees the bytes where they are"
    db.execute(UPDATE)
    assert version(db) == NEW_VERSION
    # What the update removes leaves the files with it: the sessions and the
    # blacklist are rebuilt, where DROP COLUMN and UPDATE would leave the
    # bytes in place until the pages are rewritten.
    assert files_holding(db, w["removed"]) == []
    # Nothing stored was lost.
    assert db.execute("SELECT event_id, event, session_id FROM session_auth.events ORDER BY 1").fetchall() \
        == w["events"]
    # The blacklist keeps one row per pair now (src/blacklist.rs), each token
    # with its deadline, and the stored digests are cut to their first 16
    # bytes (src/token.rs).
    assert db.execute("SELECT b.session_id, b.generation, t.kind, t.digest, t.expires_at, b.reason "
                      "FROM session_auth.blacklist AS b, LATERAL (VALUES "
                      "  ('access', b.access_digest, b.access_expires_at), "
                      "  ('refresh', b.refresh_digest, b.refresh_expires_at)) AS t(kind, digest, expires_at) "
                      "WHERE t.digest IS NOT NULL ORDER BY 1, 2, 3").fetchall() \
        == [{**r, "digest": bytes(r["digest"])[:16]} for r in w["blacklist"]]
    assert w["blacklist"], "the 0.1.0 world had blacklisted tokens to carry over"
    # The rebuilt table keeps the DBA's storage parameters. (Reset after, so
    # test 6 compares the schema with a fresh install.)
    assert db.execute("SELECT reloptions FROM pg_class WHERE oid = 'session_auth.blacklist'::regclass"
                      ).fetchone()["reloptions"] == ["autovacuum_vacuum_scale_factor=0.01"]
    db.execute("ALTER TABLE session_auth.blacklist RESET (autovacuum_vacuum_scale_factor)")
    assert db.execute("SELECT reloptions FROM pg_class WHERE oid = 'session_auth.sessions'::regclass"
                      ).fetchone()["reloptions"] == ["fillfactor=90", "autovacuum_vacuum_scale_factor=0.02"]
    db.execute("ALTER TABLE session_auth.sessions RESET (autovacuum_vacuum_scale_factor)")
    assert db.execute("SELECT count(*) AS n FROM session_auth.sessions WHERE octet_length(access_digest) <> 16 "
                      "OR octet_length(refresh_digest) <> 16").fetchone()["n"] == 0
    assert db.execute("SELECT session_id, user_id, data, auth_level, generation, revoked_at "
                      "FROM session_auth.sessions ORDER BY 1").fetchall() == w["sessions"]

    a = w["live"]
    v = sa.validate(db, a["access_token"])
    assert (v["status"], v["user_id"], v["data"], v["auth_level"]) == \
        ("ok", "alice@upgrade", {"roles": ["editor"], "n": 1.50}, 2)
    r = sa.refresh(db, a["refresh_token"])
    assert r["status"] == "ok" and sa.validate(db, r["access_token"])["status"] == "ok"
    # The old release's tokens (72 characters) stay valid; the rotation hands
    # out the current format, which carries the pair's generation.
    assert (len(a["access_token"]), len(r["access_token"])) == (72, 78)

    b0, b1 = w["in_grace"]
    # The old release's wrapped retry pair is gone with the update (it was
    # the weakness): the parent inside its grace answers expired, not theft,
    # and the current pair goes on.
    assert status(db, "session_refresh", b0["refresh_token"]) == "expired"
    assert status(db, "session_validate", b1["access_token"]) == "ok"
    b2 = sa.refresh(db, b1["refresh_token"])
    assert b2["status"] == "ok"
    assert sa.pair(sa.refresh(db, b1["refresh_token"])) == sa.pair(b2), "new retries work"

    c0, c1 = w["after_grace"]
    assert status(db, "session_refresh", c0["refresh_token"]) == "reuse_detected"
    assert status(db, "session_validate", c1["access_token"]) == "revoked"

    d0, d1, d2 = w["ancestor"]
    # A token of 0.1.0 carries no generation: its blacklist row is found
    # among its session's (the probe's prefix scan; src/blacklist.rs).
    assert status(db, "session_validate", d0["access_token"]) == "revoked"
    assert status(db, "session_refresh", d0["refresh_token"]) == "reuse_detected"
    assert status(db, "session_refresh", d2["refresh_token"]) == "revoked"

    f0, f1 = w["reuse_detected"]
    for token in (f1["access_token"],):
        assert status(db, "session_validate", token) == "revoked"
    assert status(db, "session_refresh", f1["refresh_token"]) == "revoked"

    e = w["revoked"]
    assert status(db, "session_validate", e["access_token"]) == "revoked"
    assert status(db, "session_refresh", e["refresh_token"]) == "revoked"

    assert status(db, "session_validate", w["expired"]["access_token"]) == "expired"
    assert db.execute("SELECT session_purge() AS n").fetchone()["n"] > 0
    assert status(db, "session_validate", w["expired"]["access_token"]) == "invalid", "purged"

    h0, h1 = w["reauthenticated"]
    assert sa.validate(db, h1["access_token"])["auth_level"] == 3
    assert status(db, "session_refresh", h0["refresh_token"]) == "reuse_detected"

    # The worker goes back to work once its own database is updated: it
    # purges ivan's expired session at once.
    worker_db = connect_retry(c)
    worker_db.execute(UPDATE)
    ivan = lambda: worker_db.execute(  # noqa: E731
        "SELECT count(*) AS n FROM session_auth.sessions WHERE user_id = 'ivan@upgrade'").fetchone()["n"]
    assert wait_until(lambda: ivan() == 0, 15), "the worker purges after the update"


DESCRIBE = {
    "relations": """
        SELECT c.relname, c.relkind, c.relpersistence, c.reloptions::text AS options, c.relacl::text AS acl,
               obj_description(c.oid, 'pg_class') AS comment
        FROM pg_class c WHERE c.relnamespace = 'session_auth'::regnamespace ORDER BY 1""",
    "columns": """
        SELECT c.relname, row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum) AS position, a.attname,
               format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid) AS default_value
        FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
        WHERE c.relnamespace = 'session_auth'::regnamespace ORDER BY 1, 2""",
    "constraints": """
        SELECT conrelid::regclass::text AS rel, conname, pg_get_constraintdef(oid) AS def
        FROM pg_constraint WHERE connamespace = 'session_auth'::regnamespace ORDER BY 1, 2""",
    "indexes": """
        SELECT indexrelid::regclass::text AS name, pg_get_indexdef(indexrelid) AS def FROM pg_index
        WHERE indrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'session_auth'::regnamespace)
        ORDER BY 1""",
    "functions": """
        SELECT p.oid::regprocedure::text AS fn, pg_get_functiondef(p.oid) AS def, p.proacl::text AS acl
        FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
        WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_session_auth') ORDER BY 1""",
    "views": """
        SELECT c.relname, pg_get_viewdef(c.oid) AS def FROM pg_class c
        WHERE c.relnamespace = 'session_auth'::regnamespace AND c.relkind = 'v' ORDER BY 1""",
    "members": """
        SELECT pg_describe_object(classid, objid, objsubid) AS member FROM pg_depend
        WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
          AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_session_auth') ORDER BY 1""",
    "dumped": """
        SELECT unnest(extconfig)::regclass::text AS rel, unnest(extcondition) AS cond FROM pg_extension
        WHERE extname = 'pg_session_auth' ORDER BY 1""",
    "schema": """
        SELECT nspname, nspacl::text AS acl, obj_description(oid, 'pg_namespace') AS comment
        FROM pg_namespace WHERE nspname = 'session_auth'""",
}


def describe(db):
    return {k: db.execute(q).fetchall() for k, q in DESCRIBE.items()}


def schema_dump(c, dbname):
    out = subprocess.run([f"{pg_bindir()}/pg_dump", "--schema-only", "-h", str(c.dir), "-p", str(c.port),
                          "-U", "postgres", dbname], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if not re.match(r"^\\(restrict|unrestrict) ", line)]


def test_6_the_updated_schema_is_exactly_a_fresh_install(upgraded_cluster):
    c, _ = upgraded_cluster
    db = connect_retry(c, dbname=WORLD)
    assert version(db) == NEW_VERSION
    admin = connect_retry(c)
    admin.execute("DROP DATABASE IF EXISTS fresh_install")
    admin.execute("CREATE DATABASE fresh_install")
    fresh = c.connect(dbname="fresh_install")
    fresh.execute("CREATE EXTENSION pg_session_auth")
    got, want = describe(db), describe(fresh)
    for part in DESCRIBE:
        assert got[part] == want[part], f"{part} differs after the update"
    assert schema_dump(c, WORLD) == schema_dump(c, "fresh_install")


def test_7_objects_planted_before_the_update_never_run_as_superuser(upgraded_cluster):
    """The owner of a database plants look-alike operators and functions
    (tests/security/test_planted_objects.py) where the update script's
    search_path looks, then the DBA runs ALTER EXTENSION ... UPDATE as
    superuser: no trap may run with a superuser's rights."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "security"))
    from test_planted_objects import elevated_traps, plant_everywhere

    c, _ = upgraded_cluster
    attacker = connect_retry(c, user="regress_attacker", dbname="planted")
    plant_everywhere(attacker)
    db = connect_retry(c, dbname="planted")
    assert version(db) == OLD_VERSION
    db.execute(UPDATE)
    assert version(db) == NEW_VERSION
    elevated, rows, became = elevated_traps(c, db)
    assert not elevated and not rows and not became, f"the update ran traps as superuser: {elevated[:3]}"
