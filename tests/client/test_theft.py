"""Theft detection against a real server (docs/design.md, rules 3 and 4): the attacker scenarios,
and rule 4 — a reuse revocation survives the caller's rollback, with its
event row and NOTIFY produced exactly once."""

import threading
import time

import psycopg

import sa


def short_grace(conn, grace="200ms"):
    conn.execute(f"SET session_auth.refresh_grace = '{grace}'")


def family(db, session_id):
    row = db.execute(
        "SELECT revoked_at IS NOT NULL AS revoked, revoked_reason FROM session_auth.sessions "
        "WHERE session_id = %s",
        [session_id],
    ).fetchone()
    events = db.execute(
        "SELECT count(*) AS n FROM session_auth.events WHERE session_id = %s AND event = 'reuse_detected'",
        [session_id],
    ).fetchone()["n"]
    return row["revoked"], row["revoked_reason"], events


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def drain(listener, seconds=0.5):
    got = []
    deadline = time.monotonic() + seconds
    gen = listener.notifies(timeout=seconds)
    for n in gen:
        got.append(n.payload)
        if time.monotonic() > deadline:
            break
    return got


def everything_dead(db, tokens):
    for t in tokens:
        if t.startswith("pgsa_at_"):
            assert sa.validate(db, t)["status"] == "revoked", "access token still works"
        else:
            assert sa.refresh(db, t)["status"] == "revoked", "refresh token still works"


def stolen_then_rotated(db):
    """A session whose first refresh token was copied by an attacker, and
    which has since rotated once beyond the grace window."""
    s = sa.issue(db, "victim")
    r1 = s["refresh_token"]
    r2 = sa.refresh(db, r1)
    assert r2["status"] == "ok"
    time.sleep(0.3)  # past the 200 ms grace
    return s, r1, r2


def test_replay_after_rollback_is_still_revoked_once(connect):
    db = connect()
    short_grace(db)
    listener = connect()
    listener.execute("LISTEN session_auth")
    s, r1, r2 = stolen_then_rotated(db)
    drain(listener, 0.2)  # the issued notification

    app = connect(autocommit=False)
    short_grace(app)
    assert sa.refresh(app, r1)["status"] == "reuse_detected"
    app.rollback()  # a driver that rolls back when the application raises

    assert wait_for(lambda: family(db, s["session_id"])[0]), "revoked despite the rollback"
    revoked, reason, events = family(db, s["session_id"])
    assert reason == "reuse_detected"
    time.sleep(0.3)
    assert family(db, s["session_id"])[2] == 1, "exactly one event"
    payloads = [p for p in drain(listener) if str(s["session_id"]) in p]
    assert len(payloads) == 1 and '"event":"reuse_detected"' in payloads[0], payloads
    everything_dead(db, [s["access_token"], r2["access_token"], r2["refresh_token"], r1])


def test_replay_in_a_committed_transaction_is_revoked_once(connect):
    db = connect()
    short_grace(db)
    listener = connect()
    listener.execute("LISTEN session_auth")
    s, r1, r2 = stolen_then_rotated(db)
    drain(listener, 0.2)

    app = connect(autocommit=False)
    short_grace(app)
    assert sa.refresh(app, r1)["status"] == "reuse_detected"
    app.commit()

    time.sleep(0.5)  # give the backstop worker every chance to act twice
    assert family(db, s["session_id"]) == (True, "reuse_detected", 1)
    payloads = [p for p in drain(listener) if str(s["session_id"]) in p]
    assert len(payloads) == 1, payloads
    everything_dead(db, [r2["access_token"], r2["refresh_token"]])


def test_replay_then_rollback_to_savepoint(connect):
    db = connect()
    short_grace(db)
    s, r1, _ = stolen_then_rotated(db)
    app = connect(autocommit=False)
    short_grace(app)
    app.execute("SAVEPOINT before_refresh")
    assert sa.refresh(app, r1)["status"] == "reuse_detected"
    app.execute("ROLLBACK TO SAVEPOINT before_refresh")
    app.execute("SELECT 1")
    app.commit()
    assert wait_for(lambda: family(db, s["session_id"]) == (True, "reuse_detected", 1))


def test_attacker_refreshes_first_then_the_victim_replays(connect):
    db = connect()
    short_grace(db)
    s = sa.issue(db, "victim")
    attacker = sa.refresh(db, s["refresh_token"])  # the thief uses the stolen token first
    assert attacker["status"] == "ok"
    time.sleep(0.3)
    victim = sa.refresh(db, s["refresh_token"])  # the victim's app refreshes with its copy
    assert victim["status"] == "reuse_detected"
    everything_dead(db, [attacker["access_token"], attacker["refresh_token"]])
    assert family(db, s["session_id"]) == (True, "reuse_detected", 1)


def test_victim_refreshes_first_then_the_attacker_replays(connect):
    db = connect()
    short_grace(db)
    s = sa.issue(db, "victim")
    victim = sa.refresh(db, s["refresh_token"])
    time.sleep(0.3)
    assert sa.refresh(db, s["refresh_token"])["status"] == "reuse_detected"
    everything_dead(db, [victim["access_token"], victim["refresh_token"]])
    assert family(db, s["session_id"]) == (True, "reuse_detected", 1)


def test_both_at_the_same_instant_one_is_logged_out_eventually(connect):
    """Victim and attacker present the same token at once. Within the grace
    both get the same pair (it cannot tell them apart); the next time either
    one's lineage diverges from the other's, the family dies."""
    db = connect()
    short_grace(db)
    s = sa.issue(db, "victim")
    a, b = connect(), connect()
    for c in (a, b):
        short_grace(c)
    barrier = threading.Barrier(2)
    results = {}

    def go(name, conn):
        barrier.wait()
        results[name] = sa.refresh(conn, s["refresh_token"])

    threads = [threading.Thread(target=go, args=(n, c)) for n, c in (("victim", a), ("attacker", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {r["status"] for r in results.values()} == {"ok"}
    assert sa.pair(results["victim"]) == sa.pair(results["attacker"]), "one rotation, one pair"
    # The attacker rotates on; the victim's next refresh replays a superseded token.
    onward = sa.refresh(b, results["attacker"]["refresh_token"])
    assert onward["status"] == "ok"
    time.sleep(0.3)
    assert sa.refresh(a, results["victim"]["refresh_token"])["status"] == "reuse_detected"
    everything_dead(db, [onward["access_token"], onward["refresh_token"]])
    assert family(db, s["session_id"]) == (True, "reuse_detected", 1)


def test_revocation_never_reopens_the_grace_window(connect):
    """GoTrue's bug class: revoking must not reset the time the grace is
    measured from. A revoked family answers revoked to its parent token even
    right after the revocation."""
    db = connect()
    db.execute("SET session_auth.refresh_grace = '10s'")
    s = sa.issue(db, "victim")
    child = sa.refresh(db, s["refresh_token"])
    assert sa.revoke(db, child["access_token"])
    assert sa.refresh(db, s["refresh_token"])["status"] == "revoked"
    assert sa.refresh(db, child["refresh_token"])["status"] == "revoked"
    assert sa.validate(db, s["access_token"])["status"] == "revoked"


def test_racing_logins_under_a_cap_leave_exactly_the_cap(connect):
    """max_sessions_per_user = 1 with 8 logins of one user at once: exactly
    one live session remains, the others evicted with an event each."""
    db = connect()
    conns = [connect() for _ in range(8)]
    for c in conns:
        c.execute("SET session_auth.max_sessions_per_user = 1")
    barrier = threading.Barrier(len(conns))
    errors = []

    def login(conn):
        barrier.wait()
        try:
            sa.issue(conn, "racer")
        except psycopg.Error as e:
            errors.append(e)

    threads = [threading.Thread(target=login, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(sa.list_sessions(db, "racer")) == 1
    evicted = db.execute(
        "SELECT count(*) AS n FROM session_auth.events e JOIN session_auth.sessions s USING (session_id) "
        "WHERE s.user_id = 'racer' AND e.event = 'evicted'"
    ).fetchone()["n"]
    assert evicted == 7


def test_many_detections_in_one_rolled_back_transaction_are_all_revoked(connect):
    """Twelve replays in one transaction that stays open, then rolls back:
    no worker slot is held while it is open, and every one of the twelve
    sessions ends revoked with exactly one event."""
    db = connect()
    short_grace(db)
    stolen = []
    for i in range(12):
        s = sa.issue(db, f"many{i}")
        sa.refresh(db, s["refresh_token"])
        stolen.append((s["session_id"], s["refresh_token"]))
    time.sleep(0.3)
    app = connect(autocommit=False)
    short_grace(app)
    for _, token in stolen:
        assert sa.refresh(app, token)["status"] == "reuse_detected"
    db.execute("SELECT pg_stat_clear_snapshot()")
    waiting = db.execute(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE backend_type = 'pg_session_auth backstop'"
    ).fetchone()["n"]
    assert waiting == 0, "no backstop worker occupies a slot while the caller is open"
    time.sleep(0.5)
    app.rollback()
    assert wait_for(lambda: all(family(db, sid)[0] for sid, _ in stolen), 10), "all revoked"
    time.sleep(0.3)
    assert [family(db, sid) for sid, _ in stolen] == [(True, "reuse_detected", 1)] * 12
