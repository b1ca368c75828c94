"""Attacks of a database reader (issue 12 §1): nothing stored lets anyone who
holds no token rebuild one, and a holder of a superseded refresh token plus
every stored byte rebuilds nothing once the grace window (plus the margin
docs/security.md states) is over, in databases the worker serves and in
those it does not."""

import time

import pytest

import sa
from harness import wait_until
from reader import rebuilt_pairs

# docs/security.md, "How long retry material lives": a retry key is erased
# at most this long after the end of the last grace window it covers
# (1 s of key life + 2 s of margin + the worker's 1 s tick).
ERASE_MARGIN_S = 4.0


def rotated_sessions(db, n=4):
    """n sessions rotated once just now (inside the grace window), with their
    superseded refresh tokens, and a few sessions in other states."""
    parents = []
    for i in range(n):
        s = sa.issue(db, f"reader-victim-{i}")
        r = sa.refresh(db, s["refresh_token"])
        assert r["status"] == "ok"
        parents.append(s["refresh_token"])
    twice = sa.issue(db, "reader-twice")
    mid = sa.refresh(db, twice["refresh_token"])
    sa.refresh(db, mid["refresh_token"])
    re = sa.issue(db, "reader-reauth")
    sa.reauthenticate(db, re["access_token"], 2)
    gone = sa.issue(db, "reader-revoked")
    sa.revoke(db, gone["access_token"])
    return parents + [twice["refresh_token"], mid["refresh_token"]]


def test_a_reader_holding_no_token_rebuilds_no_live_pair(connect):
    db = connect()
    for table in ("sessions", "blacklist", "events"):  # only this test's rows: fewer combinations
        db.execute(f"DELETE FROM session_auth.{table}")
    parents = rotated_sessions(db)

    # Positive control: with the superseded tokens among the inputs, the
    # search finds the current pairs, as a retry inside the grace may.
    with_tokens = rebuilt_pairs(db, extra_secrets=parents)
    assert len({sid for sid, _ in with_tokens}) >= 4, (
        "the search must rebuild what a holder of a token inside its grace window can; "
        f"it found {with_tokens}: the construction in reader.py no longer matches docs/security.md"
    )

    stolen = rebuilt_pairs(db)
    assert stolen == [], f"a reader without any token rebuilt {len(stolen)} live pair(s): {stolen}"


def test_a_superseded_token_plus_every_stored_byte_rebuilds_nothing_after_the_grace(connect):
    """In the database the worker serves: the window closes by itself."""
    db = connect()
    db.execute("SET session_auth.refresh_grace = '1s'")
    s = sa.issue(db, "reader-after-grace")
    parent = s["refresh_token"]
    rotated_at = time.monotonic()
    assert sa.refresh(db, parent)["status"] == "ok"

    def rebuildable():
        return bool(rebuilt_pairs(db, extra_secrets=[parent], session_ids=[s["session_id"]]))

    assert rebuildable(), "positive control: inside the grace the parent rebuilds the pair"
    closed = wait_until(lambda: not rebuildable(), timeout=1.0 + ERASE_MARGIN_S + 1.0, step=0.1)
    took = time.monotonic() - rotated_at
    print(f"\n    retry material of a 1 s grace gone {took:.1f} s after the rotation")
    assert closed and took <= 1.0 + ERASE_MARGIN_S + 1.0, \
        f"the parent still rebuilds the current pair {took:.1f} s after a 1 s grace"


def rebuilt_pairs_of(db, parent, pair, session_id):
    """Whether `parent` plus every stored byte still derives `pair` (a pair
    that is no longer current, so the digest search of `rebuilt_pairs`
    cannot see it): tries every stored 32-byte string as the retry key."""
    from reader import ACCESS, V2_INFO, hkdf, stored_byte_strings, token
    sid = bytes.fromhex(str(session_id).replace("-", ""))
    generations = {r["generation"] for r in db.execute(
        "SELECT generation FROM session_auth.blacklist WHERE session_id = %s", [session_id])}
    keys = [k for k in stored_byte_strings(db, [session_id]) if len(k) == 32]
    for g in generations | {g + 1 for g in generations}:
        info = V2_INFO + sid + int(g).to_bytes(4, "big")
        for k in keys:
            if token(ACCESS, sid, hkdf(k, parent.encode(), info, 64)[:32]) == pair["access_token"]:
                return True
    return False


@pytest.fixture
def unserved_db(cluster):
    """A database the worker does not serve (it serves `postgres`)."""
    admin = cluster.connect()
    admin.execute("DROP DATABASE IF EXISTS reader_unserved")
    admin.execute("CREATE DATABASE reader_unserved")
    conn = cluster.connect(dbname="reader_unserved")
    conn.execute("CREATE EXTENSION pg_session_auth")
    yield conn
    conn.close()
    admin.execute("DROP DATABASE reader_unserved WITH (FORCE)")


@pytest.mark.parametrize("closer", ["session_purge()", "the next call that touches the session",
                                    "the next refresh of the session"])
def test_without_the_worker_the_next_call_or_session_purge_closes_the_window(unserved_db, cluster, closer):
    db = unserved_db
    db.execute("SET session_auth.refresh_grace = '500ms'")
    s = sa.issue(db, "reader-unserved")
    parent = s["refresh_token"]
    current = sa.refresh(db, parent)
    assert current["status"] == "ok"

    def rebuildable():
        return bool(rebuilt_pairs(db, extra_secrets=[parent], session_ids=[s["session_id"]]))

    assert rebuildable(), "positive control"
    time.sleep(0.5 + ERASE_MARGIN_S)
    assert rebuildable(), "nothing but a call or session_purge() erases retry keys here (no worker)"
    # A new connection: a backend's own once-a-second erase must not be what closes it.
    other = cluster.connect(dbname="reader_unserved")
    if closer == "session_purge()":
        other.execute("SELECT session_purge()")
    elif closer == "the next refresh of the session":
        assert sa.refresh(other, current["refresh_token"])["status"] == "ok"
        # The session rotated on: what must not be derivable is the pair
        # that was current when the grace ended, from its parent.
        assert not rebuilt_pairs_of(db, parent, current, s["session_id"])
        return
    else:
        assert sa.set_data(other, current["session_id"], {"touched": True}) is True
    assert not rebuildable(), f"{closer} left the retry material of an expired grace window readable"
