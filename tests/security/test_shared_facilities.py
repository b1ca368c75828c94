"""Attacks through what PostgreSQL shares with every role that can connect
(issue 12 §4, §5): advisory locks and NOTIFY channels. A role with nothing
but CONNECT must not be able to stall logins, and must not be able to pass
a forged event off as a real one. (That the private lock still serialises
racing logins under a cap is tests/client/test_theft.py's
test_racing_logins_under_a_cap_leave_exactly_the_cap.)"""

import json
import os
import threading
import time

import psycopg
import pytest

import sa
from harness import wait_until


@pytest.fixture
def connect_only(cluster):
    """A role that may connect and nothing else."""
    with cluster.connect() as admin:
        if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = 'regress_connect_only'").fetchone():
            admin.execute("CREATE ROLE regress_connect_only LOGIN")
    return cluster.connect(user="regress_connect_only")


def test_a_connect_only_role_cannot_stall_logins_under_a_session_cap(connect, connect_only):
    # 0.1.0 serialised capped logins with this advisory lock, which any role may take.
    connect_only.execute(
        "SELECT pg_advisory_lock(hashtext('pg_session_auth logins'), hashtext('alice@stall'))")
    for key in range(0, 1024):  # and every other small key, in case the key moved
        connect_only.execute("SELECT pg_try_advisory_lock(%s)", [key])
        connect_only.execute("SELECT pg_try_advisory_lock(0, %s)", [key])
    app = connect()
    app.execute("SET session_auth.max_sessions_per_user = 1")
    app.execute("SET statement_timeout = '5s'")
    started = time.monotonic()
    try:
        sa.issue(app, "alice@stall")
        sa.issue(app, "alice@stall")
    except psycopg.errors.QueryCanceled:
        pytest.fail("session_issue waited on a lock a CONNECT-only role holds")
    assert time.monotonic() - started < 5
    assert len(sa.list_sessions(app, "alice@stall")) == 1


def test_a_forged_notify_cannot_be_confirmed_and_a_real_one_can(connect, connect_only):
    listener = connect()
    listener.execute("LISTEN session_auth")
    app = connect()
    s = sa.issue(app, "notify@forge")
    assert sa.revoke(app, s["access_token"])
    forged = {"event": "reuse_detected", "event_id": 999999999, "session_id": str(s["session_id"]),
              "user_id": "notify@forge"}
    connect_only.execute("SELECT pg_notify('session_auth', %s)", [json.dumps(forged)])

    payloads = []
    for n in listener.notifies(timeout=1.0):
        payloads.append(json.loads(n.payload))
    mine = [p for p in payloads if p.get("session_id") == str(s["session_id"])]
    assert {p["event"] for p in mine} == {"issued", "revoked", "reuse_detected"}, mine
    for p in mine:
        assert isinstance(p.get("event_id"), int), f"every payload names its event: {p}"
        assert len(json.dumps(p)) < 8000

    def confirmed(p):
        row = app.execute("SELECT * FROM session_event(%s)", [p["event_id"]]).fetchone()
        return row is not None and row["event"] == p["event"] and str(row["session_id"]) == p["session_id"] \
            and row["user_id"] == p["user_id"]

    real = [p for p in mine if p["event_id"] != forged["event_id"]]
    assert real and all(confirmed(p) for p in real), "the application confirms real events"
    assert not confirmed(forged), "a forged payload is not confirmed"

    # The confirming function is the application's, not everybody's.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        connect_only.execute("SELECT * FROM session_event(1)")


def test_a_connect_only_role_cannot_hold_up_a_listen_or_a_login(own_cluster):
    """A backend's first LISTEN waits for the logins in flight that nobody
    could hear (docs/design.md, "Announcing events"), through a lock that no
    SQL statement takes. In a cluster where nobody listens (so logins are
    quiet and a LISTEN does look for that lock), a CONNECT-only role idle in
    a transaction, holding every small advisory key and having tried to
    lock the extension's tables, must delay neither a login nor a LISTEN."""
    c = own_cluster()
    db = c.connect()
    db.execute("CREATE EXTENSION pg_session_auth")
    db.execute("CREATE ROLE regress_connect_only LOGIN")
    attacker = c.connect(user="regress_connect_only", autocommit=False)
    for key in range(0, 256):
        attacker.execute("SELECT pg_try_advisory_xact_lock(%s)", [key])
        attacker.execute("SELECT pg_try_advisory_xact_lock(0, %s)", [key])
    for table in ("events", "sessions"):
        attacker.execute("SAVEPOINT tried")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            attacker.execute(f"LOCK TABLE session_auth.{table} IN SHARE MODE")
        attacker.execute("ROLLBACK TO SAVEPOINT tried")
    app = c.connect()
    app.execute("SET statement_timeout = '5s'")
    assert sa.issue(app, "listen@stall")["session_id"]
    listener = c.connect()
    listener.execute("SET statement_timeout = '5s'")
    listener.execute("LISTEN session_auth")
    s = sa.issue(app, "listen@heard")
    got = [json.loads(n.payload) for n in listener.notifies(timeout=5, stop_after=1)]
    assert [(p["event"], p["session_id"]) for p in got] == [("issued", str(s["session_id"]))]
    attacker.rollback()


def server_major():
    return int(os.environ.get("PG_MAJOR", "15"))


@pytest.mark.skipif(server_major() < 17, reason="filling the NOTIFY queue needs max_notify_queue_pages "
                    "(PostgreSQL 17+; 15's queue is fixed at 8 GB): runs on 17 and 18")
def test_a_connect_only_role_filling_the_notify_queue_blocks_no_login_logout_or_revocation(own_cluster):
    """NOTIFY on any channel is open to every role that can connect, and a
    full queue fails the committing transaction (54000). The extension's
    NOTIFYs are hints: a login, a logout, a logout everywhere and a reuse
    revocation (in the caller and through the backstop) must go through
    while an attacker keeps the queue full, and the thief's token must die."""
    c = own_cluster("max_notify_queue_pages = 64", "max_connections = 30")  # 512 kB
    db = c.connect()
    db.execute("CREATE EXTENSION pg_session_auth")
    db.execute("CREATE ROLE regress_flooder LOGIN")
    db.execute("SET session_auth.refresh_grace = '100ms'")
    victim = sa.issue(db, "victim@flood")
    thief_pair = sa.refresh(db, victim["refresh_token"])
    other = sa.issue(db, "other@flood")
    third = sa.issue(db, "third@flood")
    time.sleep(0.2)

    # The attacker pins the queue's tail (a listener idle in a transaction)
    # and fills it.
    stuck = c.connect(user="regress_flooder")
    stuck.execute("LISTEN anything")
    stuck.autocommit = False
    stuck.execute("SELECT 1")
    flood = c.connect(user="regress_flooder")
    with pytest.raises(psycopg.errors.ProgramLimitExceeded):
        for i in range(10_000):
            flood.execute("SELECT pg_notify('anything', repeat('x', 7000) || %s)", [i])
    assert db.execute("SELECT pg_notification_queue_usage() AS u").fetchone()["u"] > 0.9

    app = c.connect()
    app.execute("SET session_auth.refresh_grace = '100ms'")
    assert sa.issue(app, "new@flood")["session_id"], "a login"
    assert sa.revoke(app, other["access_token"]) is True, "a logout"
    assert sa.revoke_user(app, "third@flood") == 1, "a logout everywhere"
    assert sa.refresh(app, victim["refresh_token"])["status"] == "reuse_detected", "a theft"
    assert sa.validate(app, thief_pair["access_token"])["status"] == "revoked"
    # And through the backstop: a detection the caller rolls back.
    v2 = sa.issue(app, "victim2@flood")
    t2 = sa.refresh(app, v2["refresh_token"])
    time.sleep(0.2)
    tx = c.connect(autocommit=False)
    tx.execute("SET session_auth.refresh_grace = '100ms'")
    assert sa.refresh(tx, v2["refresh_token"])["status"] == "reuse_detected"
    tx.rollback()
    assert wait_until(lambda: sa.validate(app, t2["access_token"])["status"] == "revoked", 10), \
        "the backstop's revocation commits despite the full queue"
    events = db.execute("SELECT event, count(*) AS n FROM session_auth.events GROUP BY 1").fetchall()
    assert {e["event"]: e["n"] for e in events}.get("reuse_detected") == 2, events
    stuck.rollback()
