"""WAL replays exactly as it was written (issue 19 §2).

A primary with `wal_consistency_checking = 'all'` and a streaming hot
standby. With that setting the primary adds a full image of every page a
WAL record touches, and whoever replays the record (the standby, and the
primary's own crash recovery after each kill) compares its result with the
image, page by page, and stops with "inconsistent page found" on the first
difference. `all` rather than `heap,btree`: every resource manager the
extension's writes reach is checked (heap, heap2, btree, and what the
isolation specs' CREATE / DROP EXTENSION write), and it costs next to
nothing over `heap,heap2,btree` here (49 s against 46 s for this test: the
torture's length is fixed, the replay keeps up).

On the primary: a shorter torture (torture.py, with its kills and final
checks), then the concurrency tests: the client tests of
tests/client/test_concurrent_refresh.py and test_theft.py (run as they are,
on this primary), and the isolation specs (tests/isolation/run --cluster).
Then, once the standby has replayed up to the primary's WAL position:
neither log shows a page that replayed differently or a PANIC; amcheck
finds nothing on the primary (parent checks) nor on the standby
(`bt_index_check`, `verify_heapam`); and the extension's tables hold the
same rows on both.

    tests/client/run --suite tests/faults -k wal_consistency
"""

import inspect
import os
import re
import subprocess

import consistency
import test_concurrent_refresh
import test_theft
import torture
from harness import REPO, connect_retry, wait_until

SECONDS = float(os.environ.get("PG_SESSION_AUTH_WAL_TORTURE_SECONDS", "20"))
CHECKING = "all"

# The concurrency tests of the client suite, run here on the checked primary.
CLIENT_TEST_MODULES = [test_concurrent_refresh, test_theft]

# The tables compared row for row between primary and standby.
COMPARED = ["session_auth.sessions", "session_auth.blacklist", "session_auth.events"]


def test_replay_matches_on_a_streaming_standby_and_in_crash_recovery(own_cluster, own_standby, capsys):
    def say(line):
        with capsys.disabled():
            print(line, flush=True)

    primary = own_cluster(*torture.CONF, f"wal_consistency_checking = '{CHECKING}'", crashes_expected=True)
    with primary.connect() as db:
        db.execute("CREATE EXTENSION pg_session_auth")
        db.execute("CREATE EXTENSION amcheck")
        assert db.execute("SHOW wal_consistency_checking").fetchone()["wal_consistency_checking"] == CHECKING
        # A slot keeps every WAL segment the standby has not received: it
        # is cut off while the primary restarts, and full page images make
        # segments go fast.
        db.execute("SELECT pg_create_physical_replication_slot('faults_standby', true)")
    standby = own_standby(primary, "primary_slot_name = 'faults_standby'")
    say(f"\nprimary with wal_consistency_checking = '{CHECKING}', a streaming standby")

    # The kills whose crash recovery replays (and so checks) WAL on the primary.
    kills = [torture.IMMEDIATE_STOP, torture.BACKEND_SIGKILL, torture.POSTMASTER_SIGKILL]
    t = torture.Torture(primary, SECONDS, kills=kills, progress=say)
    try:
        t.run()
        t.check_families()
    finally:
        say(t.report())
    assert t.counts["recoveries"] >= 1, "no crash recovery on the primary: its replay went unchecked"
    run_client_tests(primary, say)
    run_isolation_specs(primary, say)

    with connect_retry(primary) as db:
        stop_purging(db)
        target = db.execute("SELECT pg_current_wal_lsn()::text AS lsn").fetchone()["lsn"]
    with connect_retry(standby) as replica:
        assert wait_until(lambda: replayed(replica, target), 120, step=0.2), \
            f"the standby did not replay up to {target}:\n{standby.log_text()[-3000:]}"
    say(f"standby replayed up to {target}")
    for name, c in (("standby", standby), ("primary", primary)):
        trouble = torture.trouble_in(c.log_text())
        assert not trouble, f"the {name}'s log: {trouble[:3]}"

    with connect_retry(primary) as db, connect_retry(standby) as replica:
        say("primary " + consistency.assert_consistent(db).summary())
        say("standby " + consistency.assert_consistent(replica).summary())
        same_rows_on_both(db, replica, standby)
    say("the extension's tables hold the same rows on primary and standby")


def run_client_tests(primary, say):
    """Every test of CLIENT_TEST_MODULES that asks for nothing but
    `connect`, called with connections to the primary."""
    made = []

    def connect(user="postgres", dbname="postgres", autocommit=True, **kwargs):
        """As the harness's `connect` fixture: closed when the test ends."""
        made.append(primary.connect(user, dbname, autocommit, **kwargs))
        return made[-1]

    ran = []
    for module in CLIENT_TEST_MODULES:
        for name, test in vars(module).items():
            if name.startswith("test_") and callable(test):
                assert list(inspect.signature(test).parameters) == ["connect"], \
                    f"{module.__name__}.{name} needs more than `connect`: teach run_client_tests"
                try:
                    test(connect)
                finally:
                    while made:
                        made.pop().close()
                ran.append(name)
    say(f"concurrency: {len(ran)} client tests of {', '.join(m.__name__ for m in CLIENT_TEST_MODULES)} passed")


def run_isolation_specs(primary, say):
    result = subprocess.run([str(REPO / "tests/isolation/run"), "--cluster", str(primary.dir)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert result.returncode == 0, result.stdout[-4000:]
    say("concurrency: " + " ".join(re.findall(r"All \d+ tests passed", result.stdout) or ["isolation specs passed"]))


def stop_purging(db):
    """From here the worker starts no pass (a reload starts none either), so
    the tables stay as they are while they are compared."""
    db.execute("ALTER SYSTEM SET session_auth.purge_interval = '1h'")
    db.execute("SELECT pg_reload_conf()")


def replayed(replica, lsn: str) -> bool:
    return replica.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn AS done", [lsn]).fetchone()["done"]


def table_digests(conn) -> dict:
    return {table: conn.execute(
        f"SELECT count(*) AS n, md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) AS md5 FROM {table} t"
    ).fetchone() for table in COMPARED}


def same_rows_on_both(db, replica, standby):
    """A pass that was running when the purge was stopped may still commit:
    compare again, after a replay of the newer position, before failing."""
    for _ in range(5):
        on_primary = table_digests(db)
        target = db.execute("SELECT pg_current_wal_lsn()::text AS lsn").fetchone()["lsn"]
        assert wait_until(lambda: replayed(replica, target), 60, step=0.2), standby.log_text()[-3000:]
        on_standby = table_digests(replica)
        if on_standby == on_primary:
            return
    assert on_standby == on_primary, f"primary {on_primary}\nstandby {on_standby}"
