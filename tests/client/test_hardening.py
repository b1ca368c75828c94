"""Regression tests for findings of the security review: each fails if the
weakness comes back."""

import time

import psycopg
import pytest

import sa


def test_a_forged_token_with_a_known_session_id_takes_no_lock(connect):
    """Knowing a session id (it is in every token) must not let anyone hold
    a lock on that session: the token is checked before anything is locked."""
    db = connect()
    s = sa.issue(db, "locked-out")
    forged = s["refresh_token"][:40] + ("A" if s["refresh_token"][40] != "A" else "B") + s["refresh_token"][41:]
    attacker = connect(autocommit=False)
    assert sa.refresh(attacker, forged)["status"] == "invalid"
    assert sa.revoke(attacker, forged) is False
    with pytest.raises(psycopg.Error) as e:
        sa.reauthenticate(attacker, s["access_token"][:40] + "AAAA" + s["access_token"][44:])
    assert e.value.sqlstate == "SA001"
    attacker.rollback()
    attacker.execute("SELECT * FROM session_refresh(%s)", [forged])  # and keep the transaction open
    victim = connect()
    victim.execute("SET lock_timeout = '1s'")
    assert sa.refresh(victim, s["refresh_token"])["status"] == "ok", "not blocked by the attacker"
    attacker.rollback()


def test_a_retry_in_the_grace_answers_the_callers_effective_deadlines(connect):
    db = connect()
    s = sa.issue(db, "tightened")
    first = sa.refresh(db, s["refresh_token"])
    db.execute("SET session_auth.access_ttl = '1min'")
    db.execute("SET session_auth.idle_timeout = '2min'")
    retry = sa.refresh(db, s["refresh_token"])
    assert sa.pair(retry) == sa.pair(first)
    now = db.execute("SELECT statement_timestamp() AS t").fetchone()["t"]
    assert (retry["access_expires_at"] - now).total_seconds() <= 60
    assert (retry["refresh_expires_at"] - now).total_seconds() <= 120
    assert retry["access_expires_at"] == sa.validate(db, retry["access_token"])["expires_at"]


def test_require_accepts_a_huge_max_auth_age(connect):
    db = connect()
    s = sa.issue(db, "patient")
    assert sa.require(db, s["access_token"], max_auth_age="300000 years")["user_id"] == "patient"


def test_a_non_utf8_database_is_refused_with_a_clear_error(connect):
    db = connect()
    db.execute("DROP DATABASE IF EXISTS latin1_db")
    db.execute("CREATE DATABASE latin1_db ENCODING 'LATIN1' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'")
    try:
        other = connect(dbname="latin1_db")
        with pytest.raises(psycopg.Error) as e:
            other.execute("CREATE EXTENSION pg_session_auth")
        assert e.value.sqlstate == "0A000"
        assert "UTF8" in str(e.value)
        other.close()
    finally:
        db.execute("DROP DATABASE latin1_db WITH (FORCE)")


def test_retry_key_rows_do_not_outlive_the_grace_without_preloading(own_cluster):
    """Without preloading, the key a rotation derived its pair with is a row,
    erased a few seconds after the last grace window it covers
    (src/retry_keys.rs: 1 s of key life + the grace + 2 s of margin), by
    session_purge() here; until then it stays, so a retry that waited on the
    rotating transaction still gets its pair. (Preloaded, keys are in shared
    memory: src/key_ring.rs's unit tests. The attack both prevent, a reader
    with a superseded token rebuilding the pair, is
    tests/security/test_database_reader.py.)"""
    c = own_cluster("shared_preload_libraries = ''")
    db = c.connect()
    db.execute("CREATE EXTENSION pg_session_auth")
    db.execute("SET session_auth.refresh_grace = '200ms'")
    s = sa.issue(db, "keyed")
    first = sa.refresh(db, s["refresh_token"])
    key = ("FROM session_auth.retry_keys k JOIN session_auth.sessions s ON k.key_id = s.retry_key_id "
           "WHERE s.session_id = %s")
    key_held = lambda: db.execute(  # noqa: E731
        f"SELECT EXISTS (SELECT {key}) AS h", [s["session_id"]]
    ).fetchone()["h"]
    assert key_held()
    left = db.execute(f"SELECT k.erase_after - now() AS left {key}", [s["session_id"]]).fetchone()["left"]
    assert 2.0 < left.total_seconds() <= 3.2 + 0.5, left
    db.execute("SELECT session_purge()")
    assert key_held(), "kept while a grace window it covers may last"
    db.execute("UPDATE session_auth.retry_keys k SET erase_after = now() - interval '1 ms' "
               "FROM session_auth.sessions s WHERE k.key_id = s.retry_key_id AND s.session_id = %s",
               [s["session_id"]])
    db.execute("SELECT session_purge()")
    assert not key_held(), "erased once its time has come"
    # A retry that comes after the key is gone cannot get the pair again:
    # 'expired' (not theft), and the current pair is untouched.
    db.execute("SET session_auth.refresh_grace = '1h'")
    assert sa.refresh(db, s["refresh_token"])["status"] == "expired"
    assert sa.validate(db, first["access_token"])["status"] == "ok"

def test_a_retry_key_id_that_names_another_live_key_answers_expired(connect):
    """Retry key ids are 4 bytes and start at random in each run of the
    server, so the id a session row keeps may one day name a newer key. The
    pair derived with that key is not the session's: its digests refuse it,
    the retry answers 'expired', and the session's pair is untouched."""
    db = connect()
    db.execute("SET session_auth.refresh_grace = '1h'")
    a = sa.issue(db, "key-a")
    a1 = sa.refresh(db, a["refresh_token"])
    time.sleep(1.1)  # keys serve rotations for a second: the next makes a new one
    b = sa.issue(db, "key-b")
    assert sa.refresh(db, b["refresh_token"])["status"] == "ok"
    key = lambda s: db.execute(  # noqa: E731
        "SELECT retry_key_id FROM session_auth.sessions WHERE session_id = %s", [s["session_id"]]
    ).fetchone()["retry_key_id"]
    assert key(a) != key(b), "a second live key"
    assert sa.pair(sa.refresh(db, a["refresh_token"])) == sa.pair(a1), "the retry works with its own key"
    db.execute("UPDATE session_auth.sessions SET retry_key_id = %s WHERE session_id = %s", [key(b), a["session_id"]])
    r = sa.refresh(db, a["refresh_token"])
    assert (r["status"], r["access_token"], r["refresh_token"]) == ("expired", None, None)
    assert sa.validate(db, a1["access_token"])["status"] == "ok"
    assert sa.refresh(db, a1["refresh_token"])["status"] == "ok"
