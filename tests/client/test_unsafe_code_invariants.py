"""What the audit of the unsafe and FFI code found to hold, kept true
(issue 13 §4): the owner user-id switch inside validate's direct probes is
undone after every error (a cancel or a timeout while the probe waits for a
lock), validate gives the same answers in parallel workers as in the
leader, session data round-trips byte for byte whether it is stored
inline, compressed or out of line, and deadline arithmetic saturates at
the extremes of every setting and interval."""

import base64
import os
import threading

import psycopg
import pytest

import sa


def test_a_cancel_while_validate_waits_for_a_lock_leaves_the_callers_identity(connect, cluster):
    with cluster.connect() as admin:
        if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = 'regress_probe_app'").fetchone():
            admin.execute("CREATE ROLE regress_probe_app LOGIN")
        admin.execute("GRANT session_auth_client TO regress_probe_app")
    db = connect()
    s = sa.issue(db, "probe-identity")
    locker = connect(autocommit=False)
    locker.execute("LOCK TABLE session_auth.sessions IN ACCESS EXCLUSIVE MODE")
    app = cluster.connect(user="regress_probe_app", autocommit=False)
    pid = app.execute("SELECT pg_backend_pid() AS p").fetchone()["p"]
    app.execute("SAVEPOINT before")
    for how in ("cancel", "lock_timeout", "statement_timeout"):
        if how == "cancel":
            t = threading.Timer(0.3, lambda: db.execute("SELECT pg_cancel_backend(%s)", [pid]))
            t.start()
        else:
            app.execute(f"SET LOCAL {how} = '100ms'")
        with pytest.raises(psycopg.Error) as e:
            sa.validate(app, s["access_token"])
        assert e.value.sqlstate in ("57014", "55P03"), e.value.sqlstate
        if how == "cancel":
            t.join()
        app.execute("ROLLBACK TO SAVEPOINT before")
        row = app.execute("SELECT current_user AS cu, session_user AS su").fetchone()
        assert (row["cu"], row["su"]) == ("regress_probe_app", "regress_probe_app"), (how, row)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("SELECT 1 FROM session_auth.sessions LIMIT 1")
        app.execute("ROLLBACK TO SAVEPOINT before")
    app.rollback()
    locker.rollback()
    assert sa.validate(app, s["access_token"])["status"] == "ok"


def test_validate_in_parallel_workers_answers_as_the_leader_does(connect):
    db = connect()
    tokens = []
    for i in range(300):
        s = sa.issue(db, f"parallel-{i}", {"i": i})
        tokens.append(s["access_token"])
        if i % 3 == 0:
            sa.revoke(db, s["access_token"])
    tokens += ["garbage", "", None, tokens[0][:-1] + "A"]
    db.execute("DROP TABLE IF EXISTS parallel_tokens")
    db.execute("CREATE TABLE parallel_tokens (n int, t text)")
    with db.cursor() as cur:
        cur.executemany("INSERT INTO parallel_tokens VALUES (%s, %s)", list(enumerate(tokens)))
    db.execute("ALTER TABLE parallel_tokens SET (parallel_workers = 2)")
    query = ("SELECT n, v.status, v.user_id, v.data::text AS data FROM parallel_tokens, "
             "LATERAL session_validate(t) v ORDER BY n")
    serial = db.execute(query).fetchall()
    for setting in ("parallel_setup_cost = 0", "parallel_tuple_cost = 0", "min_parallel_table_scan_size = 0",
                    "max_parallel_workers_per_gather = 2"):
        db.execute(f"SET {setting}")
    plan = "\n".join(r["QUERY PLAN"] for r in db.execute("EXPLAIN (ANALYZE, COSTS OFF) " + query))
    assert "Workers Launched: 2" in plan or "Workers Launched: 1" in plan, plan
    parallel = db.execute(query).fetchall()
    assert parallel == serial
    assert {r["status"] for r in serial} == {"ok", "revoked", "invalid"}


@pytest.mark.parametrize("kind", ["inline", "compressed", "external"])
def test_session_data_round_trips_however_it_is_stored(db, kind):
    if kind == "inline":
        data = {"roles": ["editor"], "n": 1.50, "big": 123456789012345678901234567890}
    elif kind == "compressed":
        data = {"blob": "abc" * 20000}
    else:
        data = {"blob": base64.b64encode(os.urandom(45000)).decode()}
    s = db.execute("SELECT * FROM session_issue('toast-user', %s::jsonb)", [psycopg.types.json.Jsonb(data)]).fetchone()
    sa.remember(s["access_token"], s["refresh_token"])
    stored = db.execute(
        "SELECT pg_column_size(data) AS stored, octet_length(data::text) AS text_size, "
        "pg_column_compression(data) AS compression FROM session_auth.sessions WHERE session_id = %s",
        [s["session_id"]]).fetchone()
    if kind == "compressed":
        assert stored["compression"] is not None and stored["stored"] < stored["text_size"] / 4, stored
    if kind == "external":
        assert stored["compression"] is None and stored["stored"] > 8000, stored
    want = db.execute("SELECT data::text AS t FROM session_auth.sessions WHERE session_id = %s",
                      [s["session_id"]]).fetchone()["t"]
    assert db.execute("SELECT data::text AS t FROM session_validate(%s)", [s["access_token"]]).fetchone()["t"] == want
    assert db.execute("SELECT data::text AS t FROM session_require(%s)", [s["access_token"]]).fetchone()["t"] == want
    listed = db.execute("SELECT data::text AS t FROM session_list('toast-user') WHERE session_id = %s",
                        [s["session_id"]]).fetchone()["t"]
    assert listed == want


def test_deadline_arithmetic_saturates_at_every_extreme(connect):
    db = connect()
    for guc in ("access_ttl", "idle_timeout", "absolute_timeout"):
        db.execute(f"SET session_auth.{guc} = 2147483647")  # the largest setting: 68 years
    db.execute("SET session_auth.refresh_grace = 3600000")
    s = sa.issue(db, "clock-extreme")
    assert s["access_expires_at"].year >= 2090
    r = sa.refresh(db, s["refresh_token"])
    assert r["status"] == "ok"
    v = sa.validate(db, r["access_token"])
    assert v["status"] == "ok" and v["expires_at"] == r["access_expires_at"]
    for age in ("178000000 years", "-0 seconds", "1 microsecond"):
        try:
            sa.require(db, r["access_token"], max_auth_age=age)
        except psycopg.Error as e:
            assert e.sqlstate == "SA005", e.sqlstate
    if db.info.server_version >= 170000:
        assert sa.require(db, r["access_token"], max_auth_age="infinity")["user_id"] == "clock-extreme"
    for guc in ("access_ttl", "idle_timeout", "absolute_timeout"):
        db.execute(f"SET session_auth.{guc} = 1")
    assert sa.validate(db, r["access_token"])["status"] in ("ok", "expired")
