"""Rule 7: concurrent calls with the same token are serialised. 16 clients
presenting the same current refresh token at the same instant cause exactly
one rotation and all get the same new pair; no deadlock, no false
reuse_detected. A revocation racing refreshes wins for the whole family."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg

import sa

CLIENTS = 16
ROUNDS = 20
# A call that waits longer than this is a hang (or an undetected deadlock).
STATEMENT_TIMEOUT = "20s"


def clients(connect, n):
    conns = [connect() for _ in range(n)]
    for c in conns:
        c.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
    return conns


def race(pool, barrier, conns, work):
    """Runs work(conn, i) in every thread, all released by one barrier."""

    def one(i):
        barrier.wait(timeout=30)
        try:
            return work(conns[i], i)
        except psycopg.Error as e:  # report the SQLSTATE, not a traceback
            return ("error", e.sqlstate, str(e))

    return [f.result(timeout=60) for f in [pool.submit(one, i) for i in range(len(conns))]]


def session_state(db, session_id):
    row = db.execute(
        "SELECT generation, revoked_at FROM session_auth.sessions WHERE session_id = %s", [session_id]
    ).fetchone()
    events = db.execute(
        "SELECT event, count(*) AS n FROM session_auth.events WHERE session_id = %s GROUP BY event",
        [session_id],
    ).fetchall()
    return row, {e["event"]: e["n"] for e in events}


def test_same_refresh_token_sixteen_times_at_once(connect):
    db = connect()
    conns = clients(connect, CLIENTS)
    s = sa.issue(db, "concurrent")
    sid = s["session_id"]
    current = s
    barrier = threading.Barrier(CLIENTS)
    with ThreadPoolExecutor(CLIENTS) as pool:
        for rnd in range(ROUNDS):
            before, _ = session_state(db, sid)
            token = current["refresh_token"]
            results = race(pool, barrier, conns, lambda c, i: sa.refresh(c, token))
            errors = [r for r in results if isinstance(r, tuple)]
            assert not errors, f"round {rnd}: {errors[:3]}"
            statuses = sorted({r["status"] for r in results})
            assert statuses == ["ok"], f"round {rnd}: statuses {statuses}"
            pairs = {sa.pair(r) for r in results}
            assert len(pairs) == 1, f"round {rnd}: {len(pairs)} different pairs handed out"
            assert {r["session_id"] for r in results} == {sid}
            after, events = session_state(db, sid)
            assert after["generation"] == before["generation"] + 1, f"round {rnd}: {before} -> {after}"
            assert after["revoked_at"] is None, f"round {rnd}: session revoked"
            assert "reuse_detected" not in events, f"round {rnd}: {events}"
            current = results[0]
            assert current["refresh_token"] != token
            assert sa.validate(db, current["access_token"])["status"] == "ok"
    # The lineage is intact: the last pair rotates normally once more.
    last = sa.refresh(db, current["refresh_token"])
    assert last["status"] == "ok"
    final, events = session_state(db, sid)
    assert final["generation"] == 1 + ROUNDS + 1
    assert "reuse_detected" not in events and final["revoked_at"] is None


def test_revoke_racing_refreshes_wins_for_the_whole_family(connect):
    db = connect()
    conns = clients(connect, 9)
    barrier = threading.Barrier(len(conns))
    with ThreadPoolExecutor(len(conns)) as pool:
        for rnd in range(8):
            s = sa.issue(db, f"race-revoke-{rnd}")
            family = [s]
            for _ in range(2):  # some history: superseded tokens too
                r = sa.refresh(db, family[-1]["refresh_token"])
                assert r["status"] == "ok"
                family.append(r)
            token = family[-1]["refresh_token"]
            # the revoker uses a different token of the family each round
            revoke_with = [family[-1]["access_token"], family[0]["refresh_token"], family[1]["access_token"],
                           token][rnd % 4]

            def work(c, i):
                if i == 4:
                    return ("revoke", sa.revoke(c, revoke_with))
                return sa.refresh(c, token)

            results = race(pool, barrier, conns, work)
            errors = [r for r in results if isinstance(r, tuple) and r[0] == "error"]
            assert not errors, f"round {rnd}: {errors[:3]}"
            assert ("revoke", True) in results, f"round {rnd}: the revocation did not happen"
            refreshes = [r for r in results if isinstance(r, dict)]
            assert {r["status"] for r in refreshes} <= {"ok", "revoked"}, f"round {rnd}: {refreshes}"
            oks = {sa.pair(r) for r in refreshes if r["status"] == "ok"}
            assert len(oks) <= 1, f"round {rnd}: a second branch of the lineage"
            for r in refreshes:
                if r["status"] != "ok":
                    assert sa.pair(r) == (None, None)
            family += [r for r in refreshes if r["status"] == "ok"]

            # After the revocation committed, every token of the family is revoked.
            for member in family:
                assert sa.validate(db, member["access_token"])["status"] == "revoked", f"round {rnd}"
                assert sa.refresh(db, member["refresh_token"])["status"] == "revoked", f"round {rnd}"
                assert sa.revoke(db, member["refresh_token"]) is False  # idempotent
            row, events = session_state(db, s["session_id"])
            assert row["revoked_at"] is not None
            assert events.get("revoked") == 1 and "reuse_detected" not in events, events


def wait_for_lock_waiters(db, n, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        db.execute("SELECT pg_stat_clear_snapshot()")
        waiting = db.execute(
            "SELECT count(*) AS n FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND query LIKE '%%session_refresh%%'"
        ).fetchone()["n"]
        if waiting >= n:
            return waiting
        time.sleep(0.02)
    return waiting


def test_refreshes_queued_behind_an_open_rotation(connect):
    """Guaranteed overlap: an uncommitted rotation holds the family while 16
    clients present the same token. When it commits, they all get its pair;
    when it rolls back, exactly one of them rotates and the rest get that
    pair. Either way one rotation, one lineage."""
    db = connect()
    conns = clients(connect, CLIENTS)
    blocker = connect(autocommit=False)
    s = sa.issue(db, "queued")
    sid = s["session_id"]
    current = s
    barrier = threading.Barrier(CLIENTS)
    with ThreadPoolExecutor(CLIENTS) as pool, ThreadPoolExecutor(1) as runner:
        for rnd in range(6):
            commit = rnd % 2 == 0
            before, _ = session_state(db, sid)
            token = current["refresh_token"]
            held = sa.refresh(blocker, token)  # in an open transaction
            assert held["status"] == "ok"
            futures = runner.submit(race, pool, barrier, conns, lambda c, i: sa.refresh(c, token))
            waiting = wait_for_lock_waiters(db, CLIENTS)
            assert waiting == CLIENTS, f"round {rnd}: only {waiting} clients waited for the open rotation"
            blocker.commit() if commit else blocker.rollback()
            results = futures.result(timeout=60)
            errors = [r for r in results if isinstance(r, tuple)]
            assert not errors, f"round {rnd}: {errors[:3]}"
            assert {r["status"] for r in results} == {"ok"}, f"round {rnd}"
            pairs = {sa.pair(r) for r in results}
            assert len(pairs) == 1, f"round {rnd}: {len(pairs)} different pairs"
            if commit:
                assert pairs == {sa.pair(held)}
            after, events = session_state(db, sid)
            assert after["generation"] == before["generation"] + 1, f"round {rnd}: {before} -> {after}"
            assert after["revoked_at"] is None and "reuse_detected" not in events, (rnd, events)
            current = results[0]
