"""Errors never carry a token, and no token-shaped input (wrong kind,
malformed, NULL, 10 MB) is an error in validate/refresh/revoke or hurts the
backend."""

import time

import psycopg
import pytest

import sa

MB10 = 10 * 1024 * 1024


def raised(fn, *args, **kwargs):
    with pytest.raises(psycopg.Error) as e:
        fn(*args, **kwargs)
    return e.value


def assert_secret_free(err, *secrets):
    texts = sa.error_texts(err)
    assert texts, "an error with no text at all?"
    for secret in secrets:
        for piece in {secret, secret[8:], secret[-40:]}:
            for t in texts:
                assert piece not in t, f"error {err.sqlstate} repeats a token: {t[:200]!r}"


@pytest.fixture
def live(db):
    return sa.issue(db, "errors-user", {"x": 1}, auth_level=1)


def test_wrong_kind_token_raises_sa001_without_the_token(db, live):
    err = raised(sa.reauthenticate, db, live["refresh_token"])
    assert err.sqlstate == "SA001"
    assert_secret_free(err, live["refresh_token"], live["access_token"])
    err = raised(sa.require, db, live["refresh_token"])
    assert err.sqlstate == "SA001"
    assert_secret_free(err, live["refresh_token"], live["access_token"])
    # validate/refresh answer instead of raising
    assert sa.validate(db, live["refresh_token"])["status"] == "invalid"
    assert sa.refresh(db, live["access_token"])["status"] == "invalid"
    # and nothing happened to the session
    assert sa.validate(db, live["access_token"])["status"] == "ok"


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),     # one character off: unknown
    lambda t: t[:-1],                                       # too short
    lambda t: t + "A",                                      # too long
    lambda t: t[:20] + "+" + t[21:],                        # not URL-safe
    lambda t: t[:20] + "é" + t[22:],                        # multibyte
    lambda t: t.upper(),
    lambda t: " " + t,
    lambda t: "",
])
def test_malformed_tokens_are_invalid_and_errors_do_not_echo_them(db, live, mangle):
    bad_access = mangle(live["access_token"])
    bad_refresh = mangle(live["refresh_token"])
    sa.remember(bad_access, bad_refresh)
    assert sa.validate(db, bad_access)["status"] == "invalid"
    assert sa.refresh(db, bad_refresh)["status"] == "invalid"
    assert sa.revoke(db, bad_access) is False
    assert sa.revoke(db, bad_refresh) is False
    for fn in (sa.require, sa.reauthenticate):
        err = raised(fn, db, bad_access)
        assert err.sqlstate == "SA001"
        if bad_access:
            assert_secret_free(err, bad_access, live["access_token"])
    assert sa.validate(db, live["access_token"])["status"] == "ok"


def test_null_token(db):
    assert sa.validate(db, None)["status"] == "invalid"
    assert sa.refresh(db, None)["status"] == "invalid"
    assert sa.revoke(db, None) is False
    assert raised(sa.require, db, None).sqlstate == "SA001"
    assert raised(sa.reauthenticate, db, None).sqlstate == "SA001"


def test_revoked_and_reauth_errors_do_not_echo_tokens(db, live):
    err = raised(sa.require, db, live["access_token"], min_auth_level=3)
    assert err.sqlstate == "SA005"
    assert err.diag.message_hint and "min_auth_level" in err.diag.message_hint
    assert_secret_free(err, live["access_token"], live["refresh_token"])
    time.sleep(0.01)
    err = raised(sa.require, db, live["access_token"], max_auth_age="1 millisecond")
    assert err.sqlstate == "SA005"
    assert err.diag.message_hint and "max_auth_age" in err.diag.message_hint
    assert_secret_free(err, live["access_token"])

    assert sa.revoke(db, live["refresh_token"]) is True
    for fn in (sa.require, sa.reauthenticate):
        err = raised(fn, db, live["access_token"])
        assert err.sqlstate == "SA003"
        assert_secret_free(err, live["access_token"], live["refresh_token"])


@pytest.mark.parametrize("shape", ["access-prefixed", "refresh-prefixed", "garbage"])
def test_ten_megabyte_token(db, connect, live, shape):
    head = {"access-prefixed": live["access_token"], "refresh-prefixed": live["refresh_token"],
            "garbage": "x"}[shape]
    huge = head + "A" * (MB10 - len(head))
    assert len(huge) == MB10
    sa.remember(huge[:200])
    pid = db.execute("SELECT pg_backend_pid() AS p").fetchone()["p"]
    start_time = db.execute("SELECT pg_postmaster_start_time() AS t").fetchone()["t"]
    db.execute("SET statement_timeout = '20s'")

    def timed(fn, *args):
        t0 = time.monotonic()
        out = fn(*args)
        took = time.monotonic() - t0
        assert took < 5, f"{fn.__name__} took {took:.1f}s on a 10 MB token"
        return out

    assert timed(sa.validate, db, huge)["status"] == "invalid"
    assert timed(sa.refresh, db, huge)["status"] == "invalid"
    assert timed(sa.revoke, db, huge) is False
    for fn in (sa.require, sa.reauthenticate):
        t0 = time.monotonic()
        err = raised(fn, db, huge)
        assert time.monotonic() - t0 < 5, f"{fn.__name__} took too long on a 10 MB token"
        assert err.sqlstate == "SA001"
        assert_secret_free(err, huge[:64], huge[-64:])
        assert all(len(t) < 10_000 for t in sa.error_texts(err))

    # The backend survived, it is the same one, and the server did not restart.
    assert db.execute("SELECT pg_backend_pid() AS p").fetchone()["p"] == pid
    assert db.execute("SELECT pg_postmaster_start_time() AS t").fetchone()["t"] == start_time
    assert sa.validate(db, live["access_token"])["status"] == "ok"
    other = connect()
    assert other.execute("SELECT 1 AS one").fetchone()["one"] == 1


@pytest.mark.parametrize("call, argument, codes", [
    ("SELECT * FROM session_issue(NULL)", "user_id", {"22004", "22023"}),
    ("SELECT * FROM session_issue('')", "user_id", {"22023"}),
    ("SELECT * FROM session_issue(repeat('u', 257))", "user_id", {"22023"}),
    ("SELECT * FROM session_issue('u', '[1]')", "data", {"22023"}),
    ("SELECT * FROM session_issue('u', NULL)", "data", {"22004", "22023"}),
    ("SELECT * FROM session_issue('u', jsonb_build_object('k', repeat('x', 70000)))", "data", {"22023"}),
    ("SELECT * FROM session_issue('u', '{}', 0)", "auth_level", {"22023"}),
    ("SELECT * FROM session_issue('u', '{}', 4)", "auth_level", {"22023"}),
    ("SELECT * FROM session_require('x', interval '-1 second')", "max_auth_age", {"22023"}),
    ("SELECT * FROM session_require('x', NULL, 7)", "min_auth_level", {"22023"}),
    ("SELECT * FROM session_reauthenticate('x', 9)", "auth_level", {"22023"}),
    ("SELECT * FROM session_list(NULL)", "user_id", {"22004", "22023"}),
    ("SELECT session_revoke_user(NULL)", "user_id", {"22004", "22023"}),
    ("SELECT session_set_data(gen_random_uuid(), '\"s\"')", "data", {"22023"}),
])
def test_bad_arguments_name_the_argument(db, call, argument, codes):
    err = raised(db.execute, call)
    assert err.sqlstate in codes, (call, err.sqlstate, str(err))
    assert argument in err.diag.message_primary, (call, err.diag.message_primary)
