"""The extension never holds up a shutdown and reacts to signals the way a
DBA expects (issue 13 §1): SIGTERM ends the purge worker and every backstop
within a second whatever they are doing (purging a backlog, vacuuming, next
to a prepared transaction that holds a session row), and nothing starts
after it; a cancel cancels the current statement only; a reload only
reloads. Each scenario runs in a cluster of its own."""

import os
import signal
import time

import pytest

import sa
from conftest import connect_retry, crash_lines, pg_ctl, wait_until, worker_pid

FAST = ["session_auth.purge_interval = '200ms'", "max_connections = 40", "max_prepared_transactions = 5"]


def backlog(db, n):
    """n expired blacklist rows, written directly (a purge backlog)."""
    sa.add_expired_blacklist(db, n)


def purging(db, pid):
    db.execute("SELECT pg_stat_clear_snapshot()")
    row = db.execute("SELECT state, query, wait_event FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
    return row


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def stop_fast(c, timeout=10):
    started = time.monotonic()
    result = pg_ctl(c, "stop", "-m", "fast", check=False, timeout=timeout)
    took = time.monotonic() - started
    return result, took


def test_sigterm_during_a_purge_pass_ends_the_worker_within_a_second(own_cluster):
    c = own_cluster(*FAST)
    db = c.connect()
    db.execute("CREATE EXTENSION pg_session_auth")
    backlog(db, 300_000)
    pid = worker_pid(db)
    assert wait_until(lambda: db.execute("SELECT count(*) < 300000 AS n FROM session_auth.blacklist").fetchone()["n"],
                      20), "the worker started purging"
    db.execute("SELECT pg_terminate_backend(%s)", [pid])
    assert wait_until(lambda: not alive(pid), 1.0, step=0.05), "the worker went on after SIGTERM"
    left = db.execute("SELECT count(*) AS n FROM session_auth.blacklist").fetchone()["n"]
    time.sleep(1.0)
    assert db.execute("SELECT count(*) AS n FROM session_auth.blacklist").fetchone()["n"] == left, \
        "something went on purging after the worker was told to stop"
    assert worker_pid(db, timeout=15) not in (None, pid), "the postmaster starts a new worker"


def test_fast_shutdown_during_a_million_row_purge_backlog(own_cluster):
    c = own_cluster(*FAST)
    db = c.connect()
    db.execute("CREATE EXTENSION pg_session_auth")
    backlog(db, 1_000_000)
    assert wait_until(lambda: db.execute(
        "SELECT count(*) < 1000000 AS n FROM session_auth.blacklist").fetchone()["n"], 30)
    db.close()
    result, took = stop_fast(c)
    print(f"\n    fast shutdown during a 1,000,000-row purge backlog: {took:.2f} s")
    assert result.returncode == 0 and "server stopped" in result.stdout, result.stdout
    assert not crash_lines(c.log_text())


def test_fast_shutdown_during_a_vacuum(own_cluster):
    c = own_cluster(*FAST, "autovacuum = off")
    db = c.connect()
    db.execute("CREATE EXTENSION pg_session_auth")
    # 1,000,000 dead rows and a live tenth: the worker's VACUUM has real work.
    backlog(db, 1_000_000)
    db.execute("UPDATE session_auth.blacklist SET expires_at = now() + interval '1 h'")
    vacuuming = wait_until(lambda: db.execute(
        "SELECT pg_stat_clear_snapshot(), count(*) AS n FROM pg_stat_progress_vacuum "
        "WHERE relid = 'session_auth.blacklist'::regclass").fetchone()["n"] > 0, 60, step=0.05)
    assert vacuuming, "the worker is vacuuming the blacklist"
    db.close()
    result, took = stop_fast(c)
    print(f"\n    fast shutdown during the worker's VACUUM: {took:.2f} s")
    assert result.returncode == 0 and "server stopped" in result.stdout, result.stdout
    log = c.log_text()
    assert "parallel worker failed to initialize" not in log
    assert not crash_lines(log)


def test_fast_shutdown_next_to_a_prepared_transaction_that_holds_a_detected_session(own_cluster):
    c = own_cluster(*FAST)
    db = c.connect()
    db.execute("CREATE EXTENSION pg_session_auth")
    db.execute("SET session_auth.refresh_grace = '100ms'")
    s = sa.issue(db, "shutdown-prepared")
    first = sa.refresh(db, s["refresh_token"])
    time.sleep(0.2)
    app = c.connect(autocommit=False)
    app.execute("SET session_auth.refresh_grace = '100ms'")
    assert sa.refresh(app, first["refresh_token"])["status"] == "ok"
    app.execute("SAVEPOINT s")
    assert sa.refresh(app, s["refresh_token"])["status"] == "reuse_detected"
    app.execute("ROLLBACK TO SAVEPOINT s")
    app.execute("PREPARE TRANSACTION 'held'")
    app.commit()
    time.sleep(1.0)
    db.close()
    app.close()
    result, took = stop_fast(c)
    print(f"\n    fast shutdown next to a prepared transaction holding a detected session: {took:.2f} s")
    assert result.returncode == 0 and "server stopped" in result.stdout, result.stdout
    # Nor is the detection lost across the restart: once the prepared
    # transaction rolls back, the session is revoked, with one event.
    pg_ctl(c, "start")
    db = connect_retry(c)
    db.execute("ROLLBACK PREPARED 'held'")
    assert wait_until(lambda: db.execute(
        "SELECT revoked_at IS NOT NULL AS r FROM session_auth.sessions WHERE session_id = %s",
        [s["session_id"]]).fetchone()["r"], 15), "the pending revocation survived the restart"
    assert db.execute("SELECT count(*) AS n FROM session_auth.events WHERE event = 'reuse_detected' "
                      "AND session_id = %s", [s["session_id"]]).fetchone()["n"] == 1


def test_a_cancel_of_the_idle_worker_cancels_nothing(own_cluster):
    c = own_cluster(*FAST)
    db = c.connect()
    db.execute("CREATE EXTENSION pg_session_auth")
    pid = worker_pid(db)
    for _ in range(5):
        db.execute("SELECT pg_cancel_backend(%s)", [pid])
        time.sleep(0.3)
    assert alive(pid), "a cancel ended the idle worker"
    assert worker_pid(db) == pid


def test_a_reload_only_reloads(own_cluster):
    c = own_cluster("session_auth.purge_interval = '30s'", "max_connections = 40")
    db = c.connect()
    db.execute("CREATE EXTENSION pg_session_auth")
    worker_pid(db)
    time.sleep(1.0)  # the first pass of a fresh worker
    before = db.execute("SELECT last_purge_at FROM session_auth.stats").fetchone()["last_purge_at"]
    for _ in range(5):
        db.execute("SELECT pg_reload_conf()")
        time.sleep(0.3)
    after = db.execute("SELECT last_purge_at FROM session_auth.stats").fetchone()["last_purge_at"]
    assert after == before, "a SIGHUP started a purge pass"


def test_nothing_the_worker_does_starts_after_sigterm(own_cluster):
    """A SIGTERM in the middle of a pass: the pass ends, and neither another
    batch nor the VACUUM that follows a pass starts."""
    c = own_cluster(*FAST, "autovacuum = off", "log_line_prefix = '%m [%p] '")
    db = c.connect()
    db.execute("CREATE EXTENSION pg_session_auth")
    backlog(db, 200_000)
    pid = worker_pid(db)
    assert wait_until(lambda: db.execute("SELECT count(*) < 200000 AS n FROM session_auth.blacklist")
                      .fetchone()["n"], 20)
    os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not alive(pid), 1.0, step=0.05)
    time.sleep(1.0)
    lines = [line for line in c.log_text().splitlines() if f"[{pid}]" in line]
    terminated = next(i for i, line in enumerate(lines) if "terminating" in line or "stopping" in line)
    after = [line for line in lines[terminated + 1:] if "exited with exit code" not in line]
    assert not [line for line in after if "vacuum" in line.lower() or "removed" in line], after
