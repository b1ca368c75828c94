"""The purge worker against real preloaded clusters (docs/design.md, "The purge").

Each test that restarts or kills processes gets a cluster of its own, so
the shared cluster of the other tests is never disturbed.
"""

import os
import random
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest

import sa

from conftest import Cluster, connect_retry, lib_sh, own_cluster, pg_ctl, wait_until, worker_pid  # noqa: F401

FAST = ["session_auth.purge_interval = '200ms'", "max_connections = 40"]


def make_expired_rows(conn, n_sessions=20):
    """Sessions, superseded digests and events that have all expired, by
    their stored deadlines, plus the ids of live sessions that must stay."""
    conn.execute("SET session_auth.access_ttl = '1s'")
    conn.execute("SET session_auth.idle_timeout = '1s'")
    for i in range(n_sessions):
        refresh = conn.execute("SELECT refresh_token FROM session_issue(%s)", [f"short{i}"]).fetchone()
        conn.execute("SELECT * FROM session_refresh(%s)", [refresh["refresh_token"]])
    conn.execute("RESET session_auth.access_ttl")
    conn.execute("RESET session_auth.idle_timeout")
    conn.execute(
        "INSERT INTO session_auth.events (event, at, session_id, user_id) "
        "SELECT 'issued', now() - interval '31 days', gen_random_uuid(), 'old' "
        "FROM generate_series(1, 30)"
    )
    live = [
        conn.execute("SELECT session_id, access_token FROM session_issue(%s)", [f"live{i}"]).fetchone()
        for i in range(5)
    ]
    time.sleep(1.2)  # the short deadlines pass
    return live


def counts(conn):
    return conn.execute(
        "SELECT (SELECT count(*) FROM session_auth.sessions WHERE user_id LIKE 'short%') AS sessions, "
        "       (SELECT count(*) FROM session_auth.blacklist b JOIN session_auth.sessions s "
        "          USING (session_id) WHERE s.user_id LIKE 'short%') "
        "     + (SELECT count(*) FROM session_auth.blacklist b WHERE NOT EXISTS "
        "          (SELECT FROM session_auth.sessions s WHERE s.session_id = b.session_id)) AS blacklist, "
        "       (SELECT count(*) FROM session_auth.events WHERE user_id = 'old') AS events"
    ).fetchone()


def test_expired_rows_disappear_without_any_call_and_live_ones_stay(own_cluster):
    c = own_cluster(*FAST)
    db = c.connect()
    db.execute("CREATE EXTENSION pg_session_auth")
    live = make_expired_rows(db)
    assert wait_until(lambda: counts(db) == {"sessions": 0, "blacklist": 0, "events": 0}, 10), counts(db)
    for s in live:
        status = db.execute("SELECT status FROM session_validate(%s)", [s["access_token"]]).fetchone()
        assert status["status"] == "ok"
    stats = db.execute("SELECT * FROM session_auth.stats").fetchone()
    assert stats["last_purge_by"] == "worker"
    assert stats["live_sessions"] == 5
    assert stats["blacklist_entries"] == 0
    log = c.log_text()
    assert "pg_session_auth purge: removed" in log
    assert "tokens" not in log.split("pg_session_auth purge: removed", 1)[1].splitlines()[0]


def test_waits_quietly_until_the_extension_exists(own_cluster):
    c = own_cluster(*FAST)
    db = c.connect()
    assert worker_pid(db) is not None
    time.sleep(1.5)  # several periods without the extension
    log = c.log_text()
    assert log.count("waiting for CREATE EXTENSION") == 1, "one line, no spam"
    assert "ERROR" not in log
    db.execute("CREATE EXTENSION pg_session_auth")
    make_expired_rows(db, n_sessions=3)
    assert wait_until(lambda: counts(db)["sessions"] == 0, 10)


def test_sighup_changes_the_interval_without_restart(own_cluster):
    c = own_cluster(*FAST)
    db = c.connect()
    db.execute("CREATE EXTENSION pg_session_auth")
    pid = worker_pid(db)
    db.execute("ALTER SYSTEM SET session_auth.purge_interval = '1h'")
    db.execute("SELECT pg_reload_conf()")
    time.sleep(1.0)  # the worker wakes on the SIGHUP, reloads, then sleeps an hour
    make_expired_rows(db, n_sessions=3)
    time.sleep(2.0)
    assert counts(db)["sessions"] == 3, "with a 1h interval nothing is purged yet"
    db.execute("ALTER SYSTEM SET session_auth.purge_interval = '200ms'")
    db.execute("SELECT pg_reload_conf()")
    assert wait_until(lambda: counts(db)["sessions"] == 0, 5), "SIGHUP woke it with the new interval"
    assert worker_pid(db) == pid, "same process: reloaded, not restarted"


def test_comes_back_after_terminate_and_restart(own_cluster):
    c = own_cluster(*FAST)
    db = c.connect()
    db.execute("CREATE EXTENSION pg_session_auth")
    first = worker_pid(db)
    t0 = time.monotonic()
    assert db.execute("SELECT pg_terminate_backend(%s)", [first]).fetchone()["pg_terminate_backend"]
    assert wait_until(lambda: worker_pid(db, timeout=0.1) not in (None, first), 15), "restarted"
    print(f"worker back {time.monotonic() - t0:.1f}s after pg_terminate_backend")
    make_expired_rows(db, n_sessions=3)
    assert wait_until(lambda: counts(db)["sessions"] == 0, 10), "and purging again"
    db.close()

    t0 = time.monotonic()
    pg_ctl(c, "restart", "-m", "fast")
    stop_start = time.monotonic() - t0
    assert stop_start < 20
    db = connect_retry(c)
    assert worker_pid(db) is not None
    make_expired_rows(db, n_sessions=3)
    assert wait_until(lambda: counts(db)["sessions"] == 0, 10), "purging after pg_ctl restart"


def test_sigterm_stops_it_promptly(own_cluster):
    c = own_cluster(*FAST)
    db = c.connect()
    pid = worker_pid(db)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not Path(f"/proc/{pid}").exists(), 1.0), "gone within a second"
    assert time.monotonic() - t0 < 1.0


def test_kill_9_reinitialises_and_the_worker_is_back(own_cluster):
    c = own_cluster(*FAST, crashes_expected=True)
    db = c.connect()
    db.execute("CREATE EXTENSION pg_session_auth")
    pid = worker_pid(db)
    db.close()
    os.kill(pid, signal.SIGKILL)
    # The postmaster treats it as a crash: every backend is reinitialised.
    assert wait_until(lambda: "all server processes terminated; reinitializing" in c.log_text(), 10)
    db = connect_retry(c)
    new = worker_pid(db, timeout=20)
    assert new is not None and new != pid
    make_expired_rows(db, n_sessions=3)
    assert wait_until(lambda: counts(db)["sessions"] == 0, 10)


def test_large_purge_never_blocks_validate(own_cluster, capsys):
    """1,000,000 expired blacklist rows and 100,000 live sessions; a validate
    loop keeps running during the purge, never errors, never waits on a lock."""
    c = own_cluster(
        "session_auth.purge_interval = '1h'",  # start it by hand, below
        "max_connections = 40",
        "shared_buffers = '256MB'",
    )
    db = c.connect()
    db.execute("CREATE EXTENSION pg_session_auth")
    tokens = [
        r["access_token"]
        for r in db.execute(
            "SELECT (session_issue('real' || g)).access_token FROM generate_series(1, 1000) g"
        ).fetchall()
    ]
    # 99,000 more live sessions, written directly (digests of nothing anyone holds).
    db.execute(
        "INSERT INTO session_auth.sessions (session_id, user_id, data, auth_level, created_at, "
        " authenticated_at, last_refreshed_at, generation, access_digest, "
        " access_expires_at, refresh_digest, refresh_expires_at, absolute_expires_at, purge_after) "
        "SELECT gen_random_uuid(), 'filler' || g, '{}', 1, now(), now(), now(), 1, "
        " sha256(('a' || g)::bytea), now() + interval '15 min', sha256(('r' || g)::bytea), "
        " now() + interval '30 min', now() + interval '12 h', now() + interval '30 min' "
        "FROM generate_series(1, 99000) g"
    )
    sa.add_expired_blacklist(db, 1_000_000, spread_ms=1)
    db.execute("ANALYZE session_auth.blacklist")
    db.execute("ANALYZE session_auth.sessions")

    stop = threading.Event()
    errors, statuses, latencies, lock_waits = [], {}, [], []
    validator_pid = []

    def validate_loop():
        with c.connect() as conn:
            validator_pid.append(conn.execute("SELECT pg_backend_pid() AS p").fetchone()["p"])
            while not stop.is_set():
                t = time.perf_counter()
                try:
                    s = conn.execute(
                        "SELECT status FROM session_validate(%s)", [random.choice(tokens)]
                    ).fetchone()["status"]
                    statuses[s] = statuses.get(s, 0) + 1
                except Exception as e:  # noqa: BLE001 - every error is a failure here
                    errors.append(repr(e))
                latencies.append(time.perf_counter() - t)

    def watch_waits():
        with c.connect() as conn:
            while not stop.is_set():
                conn.execute("SELECT pg_stat_clear_snapshot()")
                row = conn.execute(
                    "SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s",
                    validator_pid,
                ).fetchone()
                if row and row["wait_event_type"] == "Lock":
                    lock_waits.append(row["wait_event"])
                time.sleep(0.005)

    v = threading.Thread(target=validate_loop)
    v.start()
    assert wait_until(lambda: bool(validator_pid), 5)
    w = threading.Thread(target=watch_waits)
    w.start()
    time.sleep(0.5)

    t0 = time.monotonic()
    db.execute("ALTER SYSTEM SET session_auth.purge_interval = '100ms'")
    db.execute("SELECT pg_reload_conf()")
    done = wait_until(
        lambda: db.execute("SELECT count(*) AS n FROM session_auth.blacklist").fetchone()["n"] == 0,
        300,  # the worker pauses 9x as long as each batch took
        step=0.25,
    )
    elapsed = time.monotonic() - t0
    time.sleep(0.3)
    stop.set()
    v.join()
    w.join()

    assert done, "the worker removed every expired blacklist row"
    assert not errors, errors[:3]
    assert not lock_waits, f"validate waited on a lock: {lock_waits[:5]}"
    assert statuses.get("ok", 0) > 100 and set(statuses) == {"ok"}, statuses
    live = db.execute("SELECT count(*) AS n FROM session_auth.sessions").fetchone()["n"]
    assert live == 100000, "only live rows remain, all of them"
    # The worker vacuums the blacklist it emptied, without waiting for autovacuum.
    vacuumed_line = re.compile(r"pg_session_auth purge: vacuumed [a-z_., ]*session_auth\.blacklist")
    assert wait_until(lambda: vacuumed_line.search(c.log_text()), 30), c.log_text()[-2000:]
    vacuumed = db.execute(
        "SELECT vacuum_count + autovacuum_count AS vacuum_count, n_dead_tup FROM pg_stat_user_tables "
        "WHERE schemaname = 'session_auth' AND relname = 'blacklist'"
    ).fetchone()
    assert vacuumed["vacuum_count"] >= 1 and vacuumed["n_dead_tup"] < 100_000, vacuumed
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    with capsys.disabled():
        print(
            f"\n    purge: 1,000,000 expired blacklist rows in {elapsed:.1f}s "
            f"({1_000_000 / elapsed:,.0f} rows/s) beside 100,000 live sessions; "
            f"{len(latencies)} concurrent validates, none waited on a lock, p99 {p99:.2f} ms"
        )


def test_an_error_in_a_pass_is_logged_and_the_next_period_carries_on(own_cluster):
    c = own_cluster(*FAST)
    db = c.connect()
    db.execute("CREATE EXTENSION pg_session_auth")
    pid = worker_pid(db)
    db.execute(
        "CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'injected purge failure'; END $$"
    )
    db.execute(
        "CREATE TRIGGER refuse BEFORE DELETE ON session_auth.sessions "
        "FOR EACH ROW EXECUTE FUNCTION public.refuse()"
    )
    make_expired_rows(db, n_sessions=3)
    assert wait_until(lambda: "injected purge failure" in c.log_text(), 5)
    assert "pass failed" in c.log_text()
    assert counts(db)["sessions"] == 3, "the failed batch was rolled back whole"
    db.execute("DROP TRIGGER refuse ON session_auth.sessions")
    assert wait_until(lambda: counts(db) == {"sessions": 0, "blacklist": 0, "events": 0}, 5)
    assert worker_pid(db) == pid, "the same worker carried on"


def test_a_table_lock_makes_a_batch_give_up_not_hang(own_cluster):
    """A DBA holding an exclusive lock: the batch fails on lock_timeout (1s),
    the worker logs it and retries later instead of queueing behind it."""
    c = own_cluster(*FAST)
    db = c.connect()
    db.execute("CREATE EXTENSION pg_session_auth")
    pid = worker_pid(db)
    make_expired_rows(db, n_sessions=3)
    dba = c.connect(autocommit=False)
    dba.execute("LOCK TABLE session_auth.blacklist IN ACCESS EXCLUSIVE MODE")
    assert wait_until(lambda: "lock timeout" in c.log_text(), 5)
    dba.rollback()
    assert wait_until(lambda: counts(db) == {"sessions": 0, "blacklist": 0, "events": 0}, 5)
    assert worker_pid(db) == pid


def test_a_vacuum_that_skip_locked_passed_over_is_logged_as_skipped(own_cluster):
    """Review 0.2.0 §12: while autovacuum (or a DBA) held a table, the worker
    logged "vacuumed session_auth.sessions in 0.000 s" after every pass. The
    VACUUM's SKIP_LOCKED had passed over it. Now the log says it was skipped,
    at most once a minute, and says "vacuumed" once it really is."""
    c = own_cluster(*FAST)
    db = c.connect()
    db.execute("CREATE EXTENSION pg_session_auth")
    holder = c.connect(autocommit=False)
    holder.execute("LOCK TABLE session_auth.blacklist IN SHARE UPDATE EXCLUSIVE MODE")  # VACUUM's lock
    sa.add_expired_blacklist(db, 5000)
    skipped = re.compile(r"pg_session_auth purge: skipped VACUUM of [a-z_., ]*session_auth\.blacklist")
    vacuumed = re.compile(r"pg_session_auth purge: vacuumed [a-z_., ]*session_auth\.blacklist")
    assert wait_until(lambda: skipped.search(c.log_text()), 30), c.log_text()[-2000:]
    time.sleep(3)  # some fifteen more passes
    log = c.log_text()
    assert len(skipped.findall(log)) == 1, "said once, not after every pass"
    assert not vacuumed.search(log), "never claimed while the table was held"
    holder.rollback()
    assert wait_until(lambda: vacuumed.search(c.log_text()), 30), c.log_text()[-2000:]
