"""A hot standby (review 0.2.0 §11).

Writing functions on a standby raised `XX000 cannot assign TransactionIds
during recovery`: an "internal error" for a client that merely talked to a
replica. The contract says `25006` (PostgreSQL's read-only error), and that
the reading functions answer from what the standby has replayed.

`not_replayed` / `SA006` for tokens the standby has not replayed yet, and
promotion, are tests/client/test_replica.py.
"""

import time

import psycopg
import pytest

import sa
from harness import wait_until

WRITERS = [
    ("session_issue", "SELECT * FROM session_issue('standby-new')", []),
    ("session_refresh", "SELECT * FROM session_refresh(%s)", ["refresh_token"]),
    ("session_reauthenticate", "SELECT * FROM session_reauthenticate(%s, 2)", ["access_token"]),
    ("session_revoke", "SELECT session_revoke(%s)", ["refresh_token"]),
    ("session_revoke_id", "SELECT session_revoke_id(%s)", ["session_id"]),
    ("session_revoke_user", "SELECT session_revoke_user('standby-user')", []),
    ("session_set_data", "SELECT session_set_data(%s, '{\"x\": 1}')", ["session_id"]),
    ("session_purge", "SELECT session_purge()", []),
]


@pytest.fixture
def standby(own_cluster, own_standby):
    primary = own_cluster()
    primary.connect().execute("CREATE EXTENSION pg_session_auth")
    return primary, own_standby(primary)


def test_writing_functions_on_a_standby_raise_25006_and_reading_ones_answer(standby):
    primary, replica = standby
    s = sa.issue(primary.connect(), "standby-user")
    r = replica.connect()
    assert wait_until(lambda: sa.validate(r, s["access_token"])["status"] == "ok", 30), "replayed"
    assert r.execute("SELECT pg_is_in_recovery() AS r").fetchone()["r"]
    assert sa.require(r, s["access_token"])["user_id"] == "standby-user"
    assert len(r.execute("SELECT * FROM session_list('standby-user')").fetchall()) == 1
    for name, sql, args in WRITERS:
        with pytest.raises(psycopg.Error) as e:
            r.execute(sql, [s[a] for a in args])
        assert e.value.sqlstate == "25006", f"{name}: {e.value.sqlstate} {e.value}"
        assert name in str(e.value), f"{name}: the error names the function: {e.value}"
    # Nothing changed on the primary, and the session still works there.
    assert sa.refresh(primary.connect(), s["refresh_token"])["status"] == "ok"
    r.execute("SELECT pg_stat_clear_snapshot()")
    workers = r.execute("SELECT count(*) AS n FROM pg_stat_activity "
                        "WHERE backend_type LIKE 'pg_session_auth%%'").fetchone()["n"]
    assert workers == 0, "no worker runs on a standby"
    time.sleep(0.5)
    assert "XX000" not in replica.log_text() and "TransactionId" not in replica.log_text()
