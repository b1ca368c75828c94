"""Thin wrappers over the session_* functions for the client tests.

Every token travels as a bind parameter (psycopg 3's `conn.execute(sql,
params)` uses the extended protocol with server-side binding), and every
token a wrapper sees is remembered in TOKENS, which conftest checks against
the server log at the end of the session.
"""

import base64
import os

from psycopg.types.json import Jsonb

TOKENS: set = set()


def remember(*values):
    for v in values:
        if isinstance(v, str) and v:
            TOKENS.add(v)
    return values


def _remember_row(row):
    if row:
        remember(row.get("access_token"), row.get("refresh_token"))
    return row


def issue(conn, user_id, data=None, auth_level=None):
    args, sql = [user_id], "%s"
    if data is not None:
        args.append(Jsonb(data))
        sql += ", data => %s"
    if auth_level is not None:
        args.append(auth_level)
        sql += ", auth_level => %s"
    rows = conn.execute(f"SELECT * FROM session_issue({sql})", args).fetchall()
    assert len(rows) == 1, rows
    return _remember_row(rows[0])


def validate(conn, token):
    rows = conn.execute("SELECT * FROM session_validate(%s)", [token]).fetchall()
    assert len(rows) == 1, f"session_validate returned {len(rows)} rows"
    return rows[0]


def refresh(conn, token):
    rows = conn.execute("SELECT * FROM session_refresh(%s)", [token]).fetchall()
    assert len(rows) == 1, f"session_refresh returned {len(rows)} rows"
    return _remember_row(rows[0])


def revoke(conn, token):
    return conn.execute("SELECT session_revoke(%s) AS r", [token]).fetchone()["r"]


def revoke_id(conn, session_id):
    return conn.execute("SELECT session_revoke_id(%s) AS r", [session_id]).fetchone()["r"]


def revoke_user(conn, user_id, keep_session=None):
    return conn.execute(
        "SELECT session_revoke_user(%s, %s::uuid) AS r", [user_id, keep_session]
    ).fetchone()["r"]


def set_data(conn, session_id, data):
    return conn.execute("SELECT session_set_data(%s, %s) AS r", [session_id, Jsonb(data)]).fetchone()["r"]


def reauthenticate(conn, token, auth_level=None):
    rows = conn.execute(
        "SELECT * FROM session_reauthenticate(%s, %s::int)", [token, auth_level]
    ).fetchall()
    assert len(rows) == 1, rows
    return _remember_row(rows[0])


def require(conn, token, max_auth_age=None, min_auth_level=None):
    return conn.execute(
        "SELECT * FROM session_require(%s, %s::interval, %s::int)",
        [token, max_auth_age, min_auth_level],
    ).fetchone()


def list_sessions(conn, user_id):
    return conn.execute("SELECT * FROM session_list(%s)", [user_id]).fetchall()


def pair(row):
    return (row["access_token"], row["refresh_token"])


def common_prefix(strings):
    strings = list(strings)
    first = min(strings)
    last = max(strings)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


def token_text(prefix, session_id: bytes, secret: bytes, generation=None) -> str:
    """A token in the extension's format (src/token.rs): prefix, then
    base64url without padding of session id || generation (4 bytes,
    big-endian) || secret; 0.1.0's format, without the generation, when it
    is None."""
    claim = b"" if generation is None else int(generation).to_bytes(4, "big")
    return prefix + base64.urlsafe_b64encode(session_id + claim + secret).rstrip(b"=").decode()


def b64url_decode(text):
    """The bytes a base64url body encodes, or None if it is not base64url."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except Exception:  # noqa: BLE001 - any failure means "not base64url"
        return None


def marker(label):
    return f"pg_session_auth_{label}_{os.urandom(8).hex()}"


def error_texts(exc):
    """Everything an error tells a client: message, detail, hint, context..."""
    d = exc.diag
    parts = [
        str(exc),
        d.message_primary,
        d.message_detail,
        d.message_hint,
        d.context,
        d.internal_query,
        d.schema_name,
        d.table_name,
        d.column_name,
        d.datatype_name,
        d.constraint_name,
    ]
    return [p for p in parts if p]


def add_expired_blacklist(conn, rows, expired="1 hour", spread_ms=0):
    """Writes `rows` blacklist entries (superseded pairs of made-up
    sessions) that expired `expired` ago, written directly as a purge
    backlog; with `spread_ms`, entry g expired g * spread_ms later. Under
    search_path pg_catalog only, so look-alike functions or operators a test
    planted elsewhere are never called."""
    with conn.transaction():
        conn.execute("SET LOCAL search_path = pg_catalog, pg_temp")
        conn.execute(
            "INSERT INTO session_auth.blacklist (session_id, generation, refresh_digest, "
            " refresh_expires_at, revoked_at, expires_at, reason) "
            "SELECT gen_random_uuid(), 1, substr(sha256(('backlog' || g)::bytea), 1, 16), t, "
            "       t - interval '1 h', t, 'superseded' "
            "FROM generate_series(1, %s) g, "
            "     LATERAL (SELECT now() - %s::interval + g * %s * interval '1 ms' AS t) AS e",
            [rows, expired, spread_ms],
        )
