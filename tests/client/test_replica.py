"""Hot standbys and failover (issue 16; rule 8 of docs/design.md).

A primary and a streaming hot standby made with `pg_basebackup -R`, both
preloading the library. Validation is nine calls in ten, and a shop scales
reads by sending them to standbys; a standby only knows what it has
replayed. A token the primary issued or rotated since must not answer
`invalid` there (that logs a user out for the length of the replay lag):
it answers `not_replayed`, `session_require` raises `SA006`, and the
application asks the primary. A token the standby can tell forged stays
`invalid`, and no answer depends on whether a secret is right.

`recovery_min_apply_delay` holds the standby a fixed time behind, so
"not replayed yet" lasts long enough to look at.
"""

import os
import time
import uuid

import psycopg
import pytest

import sa
from harness import pg_ctl, wait_until, worker_pid

DELAY = "5s"  # recovery_min_apply_delay of the lagging standby: the checks of
# "not replayed yet" each take a few round trips, well inside it
GRACE = "100ms"


def forged(session_id, generation=None, prefix="pgsa_at_"):
    """A token of `session_id` claiming `generation` (0.1.0's format when it
    is None), with a fresh random secret."""
    return sa.token_text(prefix, uuid.UUID(str(session_id)).bytes, os.urandom(32), generation)


def v7(unix_ms):
    """A version-7 uuid dated `unix_ms`, the rest random."""
    b = bytearray(unix_ms.to_bytes(6, "big") + os.urandom(10))
    b[6] = 0x70 | (b[6] & 0x0F)
    b[8] = 0x80 | (b[8] & 0x3F)
    return uuid.UUID(bytes=bytes(b))


def generation_of(token):
    body = sa.b64url_decode(token[8:])
    return int.from_bytes(body[16:20], "big")


def status(conn, token):
    return sa.validate(conn, token)["status"]


def sqlstate_of_require(conn, token):
    try:
        sa.require(conn, token)
    except psycopg.Error as e:
        return e.sqlstate, e.diag.message_hint
    return None, None


@pytest.fixture
def primary(own_cluster):
    p = own_cluster()
    p.connect().execute("CREATE EXTENSION pg_session_auth")
    return p


@pytest.fixture
def lagging(primary, own_standby):
    """(primary, standby) with the standby DELAY behind."""
    return primary, own_standby(primary, f"recovery_min_apply_delay = '{DELAY}'")


def replayed(standby, token):
    """Until the standby has replayed the token's session (one connection
    for the whole wait: the harness keeps every connection open until the
    test ends, and a loaded machine polls often enough to fill the
    standby's max_connections)."""
    conn = standby.connect()
    return wait_until(lambda: status(conn, token) != "not_replayed", 30)


def test_validate_require_and_list_on_a_standby_answer_as_on_the_primary(primary, own_standby):
    standby = own_standby(primary)
    p = primary.connect()
    s = sa.issue(p, "replica-user", {"device": "phone"}, 2)
    r = standby.connect()
    assert wait_until(lambda: status(r, s["access_token"]) == "ok", 30), "replayed"
    got = sa.validate(r, s["access_token"])
    assert (got["user_id"], got["auth_level"], got["data"]) == ("replica-user", 2, {"device": "phone"})
    assert sa.require(r, s["access_token"], min_auth_level=2)["user_id"] == "replica-user"
    listed = sa.list_sessions(r, "replica-user")
    assert [x["session_id"] for x in listed] == [s["session_id"]]
    assert sa.list_sessions(p, "replica-user") == listed, "the same list as on the primary"
    # A writer on the standby raises 25006 and the connection goes on serving.
    with pytest.raises(psycopg.Error) as e:
        sa.refresh(r, s["refresh_token"])
    assert e.value.sqlstate == "25006"
    assert status(r, s["access_token"]) == "ok"
    assert status(p, s["access_token"]) == "ok"


def test_a_token_the_standby_has_not_replayed_is_not_replayed_then_ok(lagging):
    primary, standby = lagging
    p, r = primary.connect(), standby.connect()
    s = sa.issue(p, "lag-issue")
    # Issued, not replayed: neither `invalid` nor listed yet.
    assert status(p, s["access_token"]) == "ok"
    assert status(r, s["access_token"]) == "not_replayed"
    code, hint = sqlstate_of_require(r, s["access_token"])
    assert code == "SA006" and "primary" in hint, (code, hint)
    assert sa.list_sessions(r, "lag-issue") == []
    assert replayed(standby, s["access_token"])
    assert status(r, s["access_token"]) == "ok"
    assert sa.require(r, s["access_token"])["user_id"] == "lag-issue"

    # Refreshed on the primary: the new access token is newer than the
    # standby's row, the old one is still current there.
    new = sa.refresh(p, s["refresh_token"])
    assert new["status"] == "ok"
    assert generation_of(new["access_token"]) == 2
    assert status(r, new["access_token"]) == "not_replayed"
    assert sqlstate_of_require(r, new["access_token"])[0] == "SA006"
    assert status(r, s["access_token"]) == "ok"
    assert replayed(standby, new["access_token"])
    assert status(r, new["access_token"]) == "ok"
    assert status(r, new["access_token"]) == status(p, new["access_token"])
    # Once replayed, the parent answers as on the primary (in grace: ok).
    assert status(r, s["access_token"]) == status(p, s["access_token"])


def test_forged_tokens_are_invalid_on_the_primary_and_never_ok_on_the_standby(lagging):
    primary, standby = lagging
    p, r = primary.connect(), standby.connect()
    s = sa.issue(p, "lag-forged")
    assert replayed(standby, s["access_token"])
    rotated = sa.refresh(p, s["refresh_token"])  # generation 2, not replayed yet
    assert rotated["status"] == "ok"
    now_ms = int(time.time() * 1000)
    sid = s["session_id"]
    cases = {
        # The standby can tell these forged: invalid there too.
        "real id, generation of the replayed row": (forged(sid, 1), "invalid"),
        "real id, 0.1.0 format": (forged(sid), "invalid"),
        "made-up id dated an hour ago": (forged(v7(now_ms - 3_600_000), 1), "invalid"),
        "made-up id dated an hour ahead": (forged(v7(now_ms + 3_600_000), 1), "invalid"),
        "made-up random (v4) id": (forged(uuid.uuid4(), 1), "invalid"),
        # These it cannot tell from a token it has not replayed; the primary
        # says invalid.
        "real id, the generation the primary has": (forged(sid, 2), "not_replayed"),
        "made-up id dated now": (forged(v7(now_ms), 1), "not_replayed"),
    }
    for name, (token, on_standby) in cases.items():
        assert status(p, token) == "invalid", name
        assert status(r, token) == on_standby, name
        if on_standby == "invalid":
            assert sqlstate_of_require(r, token)[0] == "SA001", name
    # No answer depends on the secret: another random secret with the same
    # claim gets the same answer, and so does the real token's claim.
    for name, (token, on_standby) in cases.items():
        body = sa.b64url_decode(token[8:])
        generation = int.from_bytes(body[16:20], "big") if len(body) == 52 else None
        again = forged(uuid.UUID(bytes=body[:16]), generation)
        assert status(r, again) == on_standby, name
    # After replay, none of them is ok anywhere.
    assert replayed(standby, rotated["access_token"])
    for name, (token, _) in cases.items():
        assert status(r, token) in ("invalid", "not_replayed"), name
        assert status(r, token) != "ok" and status(p, token) == "invalid", name
    assert status(r, forged(sid, 2)) == "invalid", "generation 2 is replayed now"


def test_a_revocation_on_the_primary_reaches_the_standby_with_its_replay(lagging):
    primary, standby = lagging
    p, r = primary.connect(), standby.connect()
    s = sa.issue(p, "lag-revoke")
    assert replayed(standby, s["access_token"])
    assert sa.revoke(p, s["refresh_token"]) is True
    revoked_at = time.monotonic()
    assert status(p, s["access_token"]) == "revoked"
    assert status(r, s["access_token"]) == "ok", "not replayed yet: the standby does not know"
    assert wait_until(lambda: status(r, s["access_token"]) == "revoked", 30, step=0.05)
    seen_after = time.monotonic() - revoked_at
    assert seen_after >= float(DELAY[:-1]) - 0.5, "the delay held the revocation back"
    code, _ = sqlstate_of_require(r, s["access_token"])
    assert code == "SA003"


def test_after_promotion_sessions_live_refresh_works_and_the_worker_purges(own_cluster, own_standby):
    # The old primary never purges (a pass an hour), so expired rows wait
    # for the new primary's worker, whose first pass comes when it starts.
    primary = own_cluster("session_auth.purge_interval = '1h'")
    primary.connect().execute("CREATE EXTENSION pg_session_auth")
    standby = own_standby(primary)
    p = primary.connect()
    live = sa.issue(p, "failover-live")
    p.execute("SET session_auth.access_ttl = '1s'")
    p.execute("SET session_auth.idle_timeout = '1s'")
    expiring = sa.issue(p, "failover-expired")
    r = standby.connect()
    assert wait_until(lambda: status(r, expiring["access_token"]) in ("ok", "expired"), 30), "replayed"
    assert worker_pid(r, timeout=1) is None, "no worker on a standby"
    time.sleep(1.5)  # expired now, and still stored
    pg_ctl(primary, "-m", "fast", "stop")
    pg_ctl(standby, "promote")
    new = standby.connect()
    assert new.execute("SELECT pg_is_in_recovery() AS r").fetchone()["r"] is False

    assert status(new, live["access_token"]) == "ok"
    rotated = sa.refresh(new, live["refresh_token"])
    assert rotated["status"] == "ok" and status(new, rotated["access_token"]) == "ok"
    assert worker_pid(new, timeout=30), "the worker starts after promotion"
    gone = lambda: new.execute(  # noqa: E731
        "SELECT count(*) AS n FROM session_auth.sessions WHERE session_id = %s",
        [expiring["session_id"]]).fetchone()["n"] == 0
    assert wait_until(gone, 30), "the new primary's worker purges expired rows"

    # A reuse detection rolled back on the new primary is still kept.
    new.execute(f"SET session_auth.refresh_grace = '{GRACE}'")
    victim = sa.issue(new, "failover-victim")
    assert sa.refresh(new, victim["refresh_token"])["status"] == "ok"
    time.sleep(0.3)
    app = standby.connect(autocommit=False)
    app.execute(f"SET session_auth.refresh_grace = '{GRACE}'")
    assert sa.refresh(app, victim["refresh_token"])["status"] == "reuse_detected"
    app.rollback()
    kept = lambda: new.execute(  # noqa: E731
        "SELECT s.revoked_at IS NOT NULL AS revoked, (SELECT count(*) FROM session_auth.events e "
        " WHERE e.session_id = s.session_id AND e.event = 'reuse_detected') AS events "
        "FROM session_auth.sessions s WHERE s.session_id = %s", [victim["session_id"]]).fetchone()
    assert wait_until(lambda: kept() == {"revoked": True, "events": 1}, 30), kept()
    # What a standby answers not_replayed (a live row's next generation, a
    # missing session dated now) is invalid on the new primary.
    for token in (forged(rotated["session_id"], 99), forged(v7(int(time.time() * 1000)), 1)):
        assert status(new, token) == "invalid", "not_replayed never appears on a primary"
