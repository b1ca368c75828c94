"""A DBA who tightens session_auth.idle_timeout or absolute_timeout tightens
it for sessions that already exist, at once (the effective deadline is the
earlier of the stored one and its anchor plus the caller's setting), and an
application role cannot loosen (or set) any policy setting.

Sessions are issued with the defaults (30 min idle, 12 h absolute); the
tightened setting is 1 s, so after a short sleep they must report `expired`
where the setting applies and stay `ok` where it does not.
"""

import time
import uuid

import psycopg
import pytest

import sa

TIGHT = "1s"
PAST_IT = 1.3  # seconds of sleep to get past TIGHT


def statuses(conn, s):
    """validate, require, refresh of a session's current tokens, as seen by
    `conn` (refresh last: an ok refresh rotates)."""
    v = sa.validate(conn, s["access_token"])["status"]
    try:
        sa.require(conn, s["access_token"])
        req = "ok"
    except psycopg.Error as e:
        req = e.sqlstate
    r = sa.refresh(conn, s["refresh_token"])["status"]
    return v, req, r


EXPIRED = ("expired", "SA002", "expired")


@pytest.mark.parametrize("guc", ["idle_timeout", "absolute_timeout"])
def test_tightening_applies_to_existing_sessions(cluster, connect, guc):
    tag = uuid.uuid4().hex[:8]
    setting = f"session_auth.{guc}"
    issuer = connect()
    assert issuer.execute(f"SHOW {setting}").fetchone()[setting] in ("30min", "12h")

    # The slow part first (a role, a database of its own for ALTER DATABASE,
    # so other tests' connections to `postgres` keep the defaults), then the
    # sessions, so the 1 s deadline is not reached before the first check.
    role = cluster.create_role(f"tight_app_{tag}")
    dbname = f"tight_db_{tag}"
    dba = connect()
    dba.execute(f"CREATE DATABASE {dbname}")
    with connect(dbname=dbname) as c:
        c.execute("CREATE EXTENSION pg_session_auth")
    before = connect(dbname=dbname)  # opened before the ALTER: keeps the default

    # Sessions with the default deadlines, one per way of tightening, plus
    # ones that nothing tightens.
    s_set, s_role, s_control = (sa.issue(issuer, f"tight-{guc}-{i}") for i in range(3))
    s_db = sa.issue(before, f"tight-{guc}-db")
    s_db_control = sa.issue(before, f"tight-{guc}-db-control")

    # 1. SET in a superuser connection.
    dba.execute(f"SET {setting} = '{TIGHT}'")
    # 2. ALTER ROLE ... SET for an application role, which then (re)connects.
    dba.execute(f"ALTER ROLE {role} SET {setting} = '{TIGHT}'")
    # 3. ALTER DATABASE ... SET, and a new connection to that database.
    dba.execute(f"ALTER DATABASE {dbname} SET {setting} = '{TIGHT}'")

    app = connect(role)
    assert app.execute(f"SHOW {setting}").fetchone()[setting] == TIGHT
    after = connect(dbname=dbname)
    assert after.execute(f"SHOW {setting}").fetchone()[setting] == TIGHT
    assert before.execute(f"SHOW {setting}").fetchone()[setting] != TIGHT

    # Within the tightened deadline everything is still fine.
    assert sa.validate(dba, s_set["access_token"])["status"] == "ok"
    assert sa.validate(app, s_role["access_token"])["status"] == "ok"
    assert sa.validate(after, s_db["access_token"])["status"] == "ok"

    time.sleep(PAST_IT)

    assert statuses(dba, s_set) == EXPIRED, "SET in a superuser connection"
    assert statuses(app, s_role) == EXPIRED, "ALTER ROLE ... SET"
    assert statuses(after, s_db) == EXPIRED, "ALTER DATABASE ... SET"
    # An expired session cannot be reauthenticated either.
    with pytest.raises(psycopg.Error) as e:
        sa.reauthenticate(dba, s_set["access_token"])
    assert e.value.sqlstate == "SA002"

    # The same sessions are still fine for a connection with the defaults:
    # it is the caller's current setting that expired them.
    assert statuses(issuer, s_set)[:2] == ("ok", "ok")
    assert statuses(issuer, s_control) == ("ok", "ok", "ok")
    assert statuses(before, s_db_control) == ("ok", "ok", "ok")
    # session_list, as seen by the tightened caller, no longer shows it.
    assert sa.list_sessions(dba, f"tight-{guc}-1") == []
    assert len(sa.list_sessions(issuer, f"tight-{guc}-1")) == 1

    dba.execute(f"RESET {setting}")
    dba.execute(f"ALTER ROLE {role} RESET {setting}")
    before.close()
    after.close()
    app.close()
    dba.execute(f"DROP DATABASE {dbname} WITH (FORCE)")


def test_absolute_timeout_is_not_reset_by_refreshing(connect):
    """Refreshing moves the idle anchor, never the absolute one."""
    issuer = connect()
    s = sa.issue(issuer, "absolute-refresh")
    dba = connect()
    dba.execute(f"SET session_auth.absolute_timeout = '{TIGHT}'")
    idle = connect()
    idle.execute(f"SET session_auth.idle_timeout = '{TIGHT}'")
    time.sleep(0.6)
    r = sa.refresh(issuer, s["refresh_token"])
    assert r["status"] == "ok"
    time.sleep(0.6)
    # more than 1 s since issue, less than 1 s since the refresh
    assert sa.validate(idle, r["access_token"])["status"] == "ok"
    assert sa.validate(dba, r["access_token"])["status"] == "expired"
    assert sa.refresh(dba, r["refresh_token"])["status"] == "expired"


POLICY_GUCS = ["access_ttl", "idle_timeout", "absolute_timeout", "refresh_grace",
               "max_sessions_per_user", "event_retention"]


def test_app_role_cannot_set_policy(cluster, connect):
    role = cluster.create_role("policy_app")
    db = connect()
    contexts = {
        r["name"]: r["context"]
        for r in db.execute("SELECT name, context FROM pg_settings WHERE name LIKE 'session_auth.%'")
    }
    present = [g for g in POLICY_GUCS if f"session_auth.{g}" in contexts]
    assert {"idle_timeout", "absolute_timeout", "access_ttl", "refresh_grace"} <= set(present), contexts
    for g in present:
        assert contexts[f"session_auth.{g}"] == "superuser", g

    app = connect(role)
    for g in present:
        name = f"session_auth.{g}"
        shown = app.execute(f"SHOW {name}").fetchone()[name]
        for value in ("1s", "30d") if g != "max_sessions_per_user" else ("1", "0"):
            for sql in (f"SET {name} = '{value}'", f"SET LOCAL {name} = '{value}'",
                        f"SELECT set_config('{name}', '{value}', false)",
                        f"ALTER ROLE {role} SET {name} = '{value}'"):
                with pytest.raises(psycopg.Error) as e:
                    app.execute(sql)
                assert e.value.sqlstate == "42501", (sql, e.value.sqlstate, str(e.value))
        assert app.execute(f"SHOW {name}").fetchone()[name] == shown
    # Nor can it reset a role setting a DBA made for it.
    db.execute(f"ALTER ROLE {role} SET session_auth.idle_timeout = '5min'")
    with pytest.raises(psycopg.Error) as e:
        app.execute(f"ALTER ROLE {role} RESET session_auth.idle_timeout")
    assert e.value.sqlstate == "42501"
    app2 = connect(role)
    assert app2.execute("SHOW session_auth.idle_timeout").fetchone()["session_auth.idle_timeout"] == "5min"
    db.execute(f"ALTER ROLE {role} RESET session_auth.idle_timeout")
