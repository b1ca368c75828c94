"""Attacks of a database reader (issue 12 §1): nothing stored lets anyone who
holds no token rebuild one, and a holder of a superseded refresh token plus
every stored byte rebuilds nothing once the grace window (plus the margin
docs/security.md states) is over.

Two ways the extension can run:
* preloaded (the worker needs it): retry keys live in shared memory only,
  so no row, page, file or dump ever holds one. A reader of the server's
  memory (a superuser's pg_read_binary_file('/proc/self/mem')) finds the
  live ones, which the grace window gives a token holder anyway, and none
  once it is over: they are zeroed;
* not preloaded: a key is a row, so the holder of a superseded token who
  can read the database can rebuild the current pair until the key is
  erased: by the next writing call that commits or by session_purge().
"""

import os
import subprocess
import time
from pathlib import Path

import pytest

import sa
from harness import Cluster, connect_retry, lib_sh, pg_ctl, wait_until
from reader import (ACCESS, V2_INFO, derives_pair, hkdf, rebuilt_pairs, shared_memory_of,
                    stored_byte_strings, token, windows)

# docs/security.md, "How long retry material lives".
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


@pytest.fixture(scope="module")
def unpreloaded():
    """A cluster where the library is not preloaded (no worker, no shared
    memory): retry keys are rows of session_auth.retry_keys."""
    cdir = f"/tmp/pg_session_auth_unpreloaded_{os.getpid()}"
    lib_sh("start_cluster", cdir, "shared_preload_libraries = ''", "max_connections = 30")
    c = Cluster(Path(cdir))
    c.connect().execute("CREATE EXTENSION pg_session_auth")
    yield c
    for conn in c.connections:
        conn.close()
    lib_sh("stop_cluster", cdir)
    subprocess.run(["rm", "-rf", cdir], check=False)


def test_a_reader_holding_no_token_rebuilds_no_live_pair(unpreloaded):
    """In the weakest mode (not preloaded), with a positive control."""
    db = unpreloaded.connect()
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


def test_preloaded_nothing_stored_rebuilds_a_pair_even_with_the_parent_inside_the_grace(connect):
    """Preloaded, no key is in any table: even a holder of the parent token,
    inside its grace window, rebuilds nothing from what is stored, while the
    retry itself works (the key is in shared memory)."""
    db = connect()
    for table in ("sessions", "blacklist", "events"):
        db.execute(f"DELETE FROM session_auth.{table}")
    parents = rotated_sessions(db)
    retried = sa.refresh(db, parents[0])
    assert retried["status"] == "ok", "the retry inside the grace gets its pair: a key exists"
    assert db.execute("SELECT count(*) AS n FROM session_auth.retry_keys").fetchone()["n"] == 0
    assert db.execute("SELECT pg_relation_size('session_auth.retry_keys') AS n").fetchone()["n"] == 0, \
        "no page of the key table was ever written"
    assert rebuilt_pairs(db, extra_secrets=parents) == []
    assert rebuilt_pairs(db) == []


RING = "pg_session_auth retry keys"


def test_a_reader_of_server_memory_finds_a_key_only_inside_its_window(connect):
    """The review of 0.2.0 rebuilt pairs from erased keys' bytes left in the
    key table's pages; its follow-up, from the key a preloaded server kept in
    memory. Now a key is in shared memory only, and zeroed once its window
    is over: a superuser reading the server's memory finds it while the
    grace lasts (the positive control: the search works) and never after."""
    db = connect()
    db.execute("SET session_auth.refresh_grace = '1s'")
    s = sa.issue(db, "reader-memory")
    parent = s["refresh_token"]
    rotated_at = time.monotonic()
    current = sa.refresh(db, parent)
    sid = s["session_id"].bytes

    def found():
        return derives_pair(windows(shared_memory_of(db, RING)), parent, sid, 2, current["access_token"])

    assert found(), "positive control: inside the grace the key is in the ring"
    gone = wait_until(lambda: not found(), 1.0 + ERASE_MARGIN_S + 2.0, step=0.2)
    took = time.monotonic() - rotated_at
    print(f"\n    the key of a rotation with a 1 s grace zeroed {took:.1f} s after it")
    assert gone, "the key's bytes are still in shared memory"
    assert took <= 1.0 + ERASE_MARGIN_S + 1.5, took
    assert sa.refresh(db, current["refresh_token"])["status"] == "ok", "the session lives on"


@pytest.mark.parametrize("closer", ["session_purge()", "the next call that touches the session",
                                    "the next refresh of the session"])
def test_without_preloading_the_next_call_or_session_purge_closes_the_window(unpreloaded, closer):
    c = unpreloaded
    db = c.connect()
    db.execute("SET session_auth.refresh_grace = '500ms'")
    s = sa.issue(db, f"reader-unserved-{closer[:12]}")
    parent = s["refresh_token"]
    current = sa.refresh(db, parent)
    assert current["status"] == "ok"

    def rebuildable():
        return bool(rebuilt_pairs(db, extra_secrets=[parent], session_ids=[s["session_id"]]))

    assert rebuildable(), "positive control"
    time.sleep(0.5 + ERASE_MARGIN_S)
    assert rebuildable(), "nothing but a call or session_purge() erases retry keys here (no worker)"
    # A new connection: a backend's own once-a-second erase must not be what closes it.
    other = c.connect()
    if closer == "session_purge()":
        other.execute("SELECT session_purge()")
    elif closer == "the next refresh of the session":
        assert sa.refresh(other, current["refresh_token"])["status"] == "ok"
        # The session rotated on: what must not be derivable is the pair
        # that was current when the grace ended, from its parent.
        assert not derives(db, parent, current, s["session_id"])
        return
    else:
        assert sa.set_data(other, current["session_id"], {"touched": True}) is True
    assert not rebuildable(), f"{closer} left the retry material of an expired grace window readable"


def derives(db, parent, pair, session_id):
    """Whether `parent` plus any stored 32-byte string (as the salt) still
    derives `pair`, a pair that is no longer current."""
    sid = session_id.bytes
    keys = [k for k in stored_byte_strings(db, [session_id]) if len(k) == 32]
    generation = 2
    info = V2_INFO + sid + generation.to_bytes(4, "big")
    return any(token(ACCESS, sid, hkdf(k, parent.encode(), info, 64)[:32], generation) == pair["access_token"]
               for k in keys)



def test_a_restart_ends_the_retries_of_the_rotations_before_it(own_cluster):
    """Preloaded, the keys are in the server's memory only: after a restart
    a retry inside its grace window answers `expired` (no key), revokes
    nothing, and the current pair goes on working. What the README and
    docs/security.md say."""
    c = own_cluster()
    db = c.connect()
    db.execute("CREATE EXTENSION pg_session_auth")
    db.execute("SET session_auth.refresh_grace = '1h'")
    s = sa.issue(db, "reader-restart")
    current = sa.refresh(db, s["refresh_token"])
    assert sa.pair(sa.refresh(db, s["refresh_token"])) == sa.pair(current), "before: the retry works"
    db.close()
    pg_ctl(c, "restart", "-m", "fast")
    db = connect_retry(c)
    db.execute("SET session_auth.refresh_grace = '1h'")
    assert sa.refresh(db, s["refresh_token"])["status"] == "expired"
    assert sa.validate(db, current["access_token"])["status"] == "ok"
    assert sa.refresh(db, current["refresh_token"])["status"] == "ok"
