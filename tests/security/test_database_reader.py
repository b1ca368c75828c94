"""Attacks of a database reader (issue 12 §1): nothing stored lets anyone who
holds no token rebuild one, and a holder of a superseded refresh token plus
every stored byte rebuilds nothing once the grace window (plus the margin
docs/security.md states) is over.

Two ways the extension can run:
* preloaded (the worker needs it): a retry key's stored seed is useless
  without the 256-bit key the postmaster keeps in shared memory, so stored
  bytes (rows, pages, files) rebuild nothing at all, inside the grace window
  or after;
* not preloaded: the seed is the salt, so the holder of a superseded token
  who can read the database can rebuild the current pair until the key is
  erased: by the next writing call that commits or by session_purge().
"""

import os
import subprocess
import time
from pathlib import Path

import pytest

import sa
from harness import Cluster, lib_sh, wait_until
from reader import ACCESS, V2_INFO, hkdf, rebuilt_pairs, stored_byte_strings, token

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
    memory): retry keys' seeds are their salts."""
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


def test_preloaded_stored_bytes_rebuild_nothing_even_with_the_parent_inside_the_grace(connect):
    """Preloaded, the seeds are no salts: even a holder of the parent token,
    inside its grace window, rebuilds nothing from what is stored."""
    db = connect()
    for table in ("sessions", "blacklist", "events"):
        db.execute(f"DELETE FROM session_auth.{table}")
    parents = rotated_sessions(db)
    assert db.execute("SELECT count(*) AS n FROM session_auth.retry_keys").fetchone()["n"] > 0
    assert rebuilt_pairs(db, extra_secrets=parents) == []
    assert rebuilt_pairs(db) == []


def raw_page_windows(db):
    """Every 32-byte window of every page of session_auth.retry_keys, as the
    buffer holds them (deleted tuples included): what a reader of the data
    files, pageinspect or pg_read_binary_file sees."""
    db.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
    pages = db.execute("SELECT pg_relation_size('session_auth.retry_keys') / 8192 AS n").fetchone()["n"]
    windows = set()
    for blk in range(pages):
        page = bytes(db.execute("SELECT get_raw_page('session_auth.retry_keys', %s) AS p", [blk])
                     .fetchone()["p"])
        windows |= {page[i:i + 32] for i in range(len(page) - 31)}
    return windows


def test_preloaded_raw_pages_of_erased_keys_rebuild_nothing(connect):
    """The independent review rebuilt a live pair from a deleted retry key's
    bytes left in the table's page (and file). Preloaded, those bytes are
    seeds, useless without the server's in-memory key."""
    db = connect()
    db.execute("SET session_auth.refresh_grace = '100ms'")
    s = sa.issue(db, "reader-pages")
    parent = s["refresh_token"]
    current = sa.refresh(db, parent)
    seed = bytes(db.execute("SELECT k.secret FROM session_auth.retry_keys k JOIN session_auth.sessions s "
                            "ON k.key_id = s.retry_key_id WHERE s.session_id = %s",
                            [s["session_id"]]).fetchone()["secret"])
    windows = raw_page_windows(db)
    assert seed in windows, "positive control: the page scan sees the stored seed"
    assert wait_until(lambda: db.execute(
        "SELECT count(*) AS n FROM session_auth.retry_keys WHERE secret = %s", [seed]).fetchone()["n"] == 0,
        1 + ERASE_MARGIN_S + 1), "the worker erases the key row"
    assert seed in raw_page_windows(db), "its bytes linger in the page (the review's point)"
    sid = s["session_id"].bytes
    info = V2_INFO + sid + (2).to_bytes(4, "big")
    rebuilt = [w for w in raw_page_windows(db)
               if token(ACCESS, sid, hkdf(w, parent.encode(), info, 64)[:32]) == current["access_token"]]
    assert not rebuilt, "a raw page and the parent token rebuilt the live pair"


def test_the_worker_erases_key_rows_soon_after_the_grace(connect):
    """Preloaded, the rows go too, within the documented margin (what
    matters if the server's memory itself leaks, say in a core dump)."""
    db = connect()
    db.execute("SET session_auth.refresh_grace = '1s'")
    s = sa.issue(db, "reader-key-rows")
    rotated_at = time.monotonic()
    sa.refresh(db, s["refresh_token"])
    key = db.execute("SELECT retry_key_id AS k FROM session_auth.sessions WHERE session_id = %s",
                     [s["session_id"]]).fetchone()["k"]
    assert key is not None
    gone = wait_until(lambda: db.execute("SELECT count(*) AS n FROM session_auth.retry_keys WHERE key_id = %s",
                                         [key]).fetchone()["n"] == 0, 1.0 + ERASE_MARGIN_S + 1.0, step=0.1)
    took = time.monotonic() - rotated_at
    print(f"\n    the key row of a rotation with a 1 s grace erased {took:.1f} s after it")
    assert gone and took <= 1.0 + ERASE_MARGIN_S + 1.0, took


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
    info = V2_INFO + sid + (2).to_bytes(4, "big")
    return any(token(ACCESS, sid, hkdf(k, parent.encode(), info, 64)[:32]) == pair["access_token"]
               for k in keys)

