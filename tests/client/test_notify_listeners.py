"""Who hears a login (issue 17: the write path; docs/design.md, "Announcing
events").

PostgreSQL serialises every commit that carries a NOTIFY (one cluster-wide
lock, held through the commit's WAL flush), so a login that announces
itself to nobody still waits its turn. With the library preloaded, a login
queues its `issued` NOTIFY only while some backend of the server has run
`LISTEN session_auth`; revocations and reuse detection always do. What a
listener hears must not change:

* a listener hears every login that commits after its LISTEN's transaction
  committed;
* a LISTEN that starts while a login that decided to stay quiet is still
  in flight waits for it, so no login commits unheard after a LISTEN;
* without preloading (no shared memory to count listeners in) every login
  is announced, as before.

"Nobody can hear it" is measured, not timed: a listener on another channel
idles in a transaction, which pins the queue's tail, so everything queued
stays queued and `pg_notification_queue_usage()` counts it (by 8 kB page;
LOGINS payloads fill several pages)."""

import json
import threading

import psycopg
import pytest

import sa
from harness import wait_until

LOGINS = 200


def queue_usage(conn):
    return conn.execute("SELECT pg_notification_queue_usage() AS u").fetchone()["u"]


def pin_the_queue(c):
    """A listener on another channel, idle in a transaction: it reads
    nothing until it commits, so the queue's tail stays where it is."""
    stuck = c.connect()
    stuck.execute("LISTEN unrelated_channel")
    stuck.autocommit = False
    stuck.execute("SELECT 1")
    return stuck


def logins(db, prefix, n=LOGINS):
    return {str(sa.issue(db, f"{prefix}{i}")["session_id"]) for i in range(n)}


def heard(listener, expected, timeout=10.0):
    """The payloads on channel session_auth until `expected` of them came, or
    `timeout` seconds passed."""
    got = []
    for n in listener.notifies(timeout=timeout, stop_after=expected):
        if n.channel == "session_auth":
            got.append(json.loads(n.payload))
    return got


def fresh(own_cluster, *conf):
    c = own_cluster(*conf)
    db = c.connect()
    db.execute("CREATE EXTENSION pg_session_auth")
    return c, db


def backend_is_gone(db, pid):
    db.execute("SELECT pg_stat_clear_snapshot()")
    return db.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()["n"] == 0


def waits_for_a_lock(db, pid):
    db.execute("SELECT pg_stat_clear_snapshot()")
    row = db.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
    return row is not None and row["wait_event_type"] == "Lock"


def test_a_login_nobody_can_hear_queues_nothing_and_a_listener_hears_every_login(own_cluster):
    c, db = fresh(own_cluster)
    pin_the_queue(c)

    logins(db, "quiet")
    assert queue_usage(db) == 0, "logins nobody listens for were queued"

    # The same logins with a listener: queued (so the measure works), and
    # every one of them heard, in order of commit.
    listener = c.connect()
    listener.execute("LISTEN session_auth")
    listener_pid = listener.info.backend_pid
    loud = logins(db, "loud")
    assert queue_usage(db) > 0
    got = heard(listener, LOGINS)
    assert [p["event"] for p in got] == ["issued"] * LOGINS
    assert {p["session_id"] for p in got} == loud
    event_ids = [p["event_id"] for p in got]
    assert event_ids == sorted(event_ids), "heard in the order they committed"

    # The listener gone, logins are quiet again.
    listener.close()
    assert wait_until(lambda: backend_is_gone(db, listener_pid), 10)
    before = queue_usage(db)
    quiet_again = logins(db, "again")
    assert queue_usage(db) == before, "a listener that left still made logins announce themselves"

    # Revocations are announced whoever listens: each of these queues one.
    for session_id in quiet_again:
        assert sa.revoke_id(db, session_id)
    assert queue_usage(db) > before, "a revocation went unannounced"


def test_a_listen_waits_for_a_login_that_decided_to_stay_quiet(own_cluster):
    c, db = fresh(own_cluster)
    app = c.connect(autocommit=False)
    in_flight = sa.issue(app, "in-flight")  # nobody listens yet: no NOTIFY queued

    listener = c.connect()
    listener_pid = listener.info.backend_pid
    listening = threading.Thread(target=listener.execute, args=("LISTEN session_auth",))
    listening.start()

    try:
        assert wait_until(lambda: waits_for_a_lock(db, listener_pid), 10), \
            "LISTEN returned while a login that announced nothing was still in flight"
        assert listening.is_alive()
    finally:
        app.commit()
        listening.join(10)
    assert not listening.is_alive(), "LISTEN still waits after the login committed"

    after = sa.issue(db, "after-listen")
    got = heard(listener, 1)
    assert [(p["event"], p["session_id"]) for p in got] == [("issued", str(after["session_id"]))]
    assert str(in_flight["session_id"]) != got[0]["session_id"]


def test_a_listen_that_gave_up_waiting_waits_again_when_retried(own_cluster):
    """A LISTEN whose wait ended in an error (lock_timeout here; a cancel or
    a deadlock alike) has counted its backend but not waited: the next one
    on the same connection must wait, or the login in flight commits unheard."""
    c, db = fresh(own_cluster)
    app = c.connect(autocommit=False)
    sa.issue(app, "in-flight")  # quiet: nobody listens
    listener = c.connect()
    listener_pid = listener.info.backend_pid
    listener.execute("SET lock_timeout = '200ms'")
    with pytest.raises(psycopg.errors.LockNotAvailable):
        listener.execute("LISTEN session_auth")
    listener.execute("RESET lock_timeout")
    listening = threading.Thread(target=listener.execute, args=("LISTEN session_auth",))
    listening.start()
    try:
        assert wait_until(lambda: waits_for_a_lock(db, listener_pid), 10), \
            "the retried LISTEN returned while the quiet login was still in flight"
    finally:
        app.commit()
        listening.join(10)
    assert not listening.is_alive()


def test_a_transaction_that_issued_a_session_cannot_be_prepared(own_cluster):
    """Before, a login's NOTIFY made PREPARE TRANSACTION fail; a quiet login
    must not change that (a prepared one would hold every LISTEN)."""
    c, db = fresh(own_cluster, "max_prepared_transactions = 2")
    for listening in (False, True):
        if listening:
            listener = c.connect()
            listener.execute("LISTEN session_auth")
        tx = c.connect(autocommit=False)
        sa.issue(tx, f"prepared-{listening}")
        with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            tx.execute("PREPARE TRANSACTION 'login'")
        assert "PREPARE" in str(e.value)
        tx.rollback()
    assert db.execute("SELECT count(*) AS n FROM pg_prepared_xacts").fetchone()["n"] == 0


def test_a_listen_does_not_wait_for_readers_of_events(own_cluster):
    """Only quiet logins in flight hold a LISTEN up: an application
    confirming a payload in an open transaction does not."""
    c, db = fresh(own_cluster)
    s = sa.issue(db, "reader")
    event_id = db.execute("SELECT event_id FROM session_auth.events WHERE session_id = %s",
                          [s["session_id"]]).fetchone()["event_id"]
    reader = c.connect(autocommit=False)
    assert reader.execute("SELECT * FROM session_event(%s)", [event_id]).fetchone()["event"] == "issued"
    listener = c.connect()
    listener.execute("SET statement_timeout = '10s'")
    listener.execute("LISTEN session_auth")  # a wait here would time out
    reader.rollback()


def test_a_listen_does_not_wait_for_announced_events_in_flight(own_cluster):
    """Transactions left open after events that were announced (a logout, a
    login made while someone listened, a re-authentication) hold no LISTEN
    up: only quiet logins do."""
    c, db = fresh(own_cluster)
    early = c.connect()
    early.execute("LISTEN session_auth")  # logins are announced while it listens
    s = sa.issue(db, "open-after-events")
    t = sa.issue(db, "open-after-events-2")
    open_txs = []
    for act in (lambda tx: sa.revoke_id(tx, s["session_id"]),
                lambda tx: sa.issue(tx, "loud-login"),
                lambda tx: sa.reauthenticate(tx, t["access_token"])):
        tx = c.connect(autocommit=False)
        act(tx)
        open_txs.append(tx)
    listener = c.connect()
    listener.execute("SET statement_timeout = '10s'")
    listener.execute("LISTEN session_auth")  # a wait here would time out
    for tx in open_txs:
        tx.rollback()


def test_a_listen_in_the_logins_own_transaction_hears_it(own_cluster):
    """Waiting for others cannot cover a login earlier in the listener's own
    transaction: the LISTEN announces that one itself."""
    c, db = fresh(own_cluster)
    tx = c.connect(autocommit=False)
    s = sa.issue(tx, "own-tx")
    tx.execute("LISTEN session_auth")
    tx.commit()
    got = heard(tx, 1)
    assert [(p["event"], p["session_id"]) for p in got] == [("issued", str(s["session_id"]))]

    # A login rolled back to a savepoint was never made: there is nothing
    # to hear of it. (A backend of its own: one that has listened is counted
    # until it exits, and its logins announce themselves at once.)
    tx_pid = tx.info.backend_pid
    tx.close()
    assert wait_until(lambda: backend_is_gone(db, tx_pid), 10)
    tx = c.connect(autocommit=False)
    tx.execute("SAVEPOINT before_login")
    gone = sa.issue(tx, "rolled-back")
    tx.execute("ROLLBACK TO SAVEPOINT before_login")
    kept = sa.issue(tx, "kept")
    tx.execute("LISTEN session_auth")
    tx.commit()
    got = heard(tx, 2, timeout=2.0)
    assert [(p["event"], p["session_id"]) for p in got] == [("issued", str(kept["session_id"]))]
    assert str(gone["session_id"]) not in {p["session_id"] for p in got}


def test_without_preloading_every_login_is_announced(own_cluster):
    c, db = fresh(own_cluster, "shared_preload_libraries = ''")
    pin_the_queue(c)
    logins(db, "unpreloaded")
    assert queue_usage(db) > 0, "without a count of listeners, every login must be announced"
    listener = c.connect()  # has not loaded the library: LISTEN is PostgreSQL's alone
    listener.execute("LISTEN session_auth")
    s = sa.issue(db, "heard-unpreloaded")
    got = heard(listener, 1)
    assert [(p["event"], p["session_id"]) for p in got] == [("issued", str(s["session_id"]))]
