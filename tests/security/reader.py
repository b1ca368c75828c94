"""What a reader of the database can try: every stored byte string, fed into
every derivation the extension has ever used for retry pairs.

A reader (a role with pg_read_all_data, a pg_dump file, a base backup) holds
every row of every table but no token. The adversarial review of 0.1.0
rebuilt live pairs from rows alone: 0.1.0 wrapped the retry pair under
HMAC-SHA-256 keyed with the parent refresh token, and HMAC replaces a key
longer than 64 bytes (a token is 72 or 78) by its SHA-256, the very digest stored
in 0.1.0's `sessions.parent_refresh_digest` (and on the blacklist).

`rebuilt_pairs` runs both constructions, with every stored byte string in
every secret input, and returns the pairs that match a stored current
digest. Tests call it once with a real superseded token among the inputs
(the positive control: the search must find the pair a holder of that token
may rebuild inside the grace window) and once with stored bytes only.
"""

import base64
import hashlib
import hmac

import sa

ACCESS, REFRESH = "pgsa_at_", "pgsa_rt_"

# 0.1.0 (docs/security.md, "What 0.1.0 did"): key id || nonce || access ^ k1 || refresh ^ k2,
# k = HMAC-SHA-256(key = parent refresh token, "pg_session_auth retry pair " || key || nonce || label)
V1_LABEL = b"pg_session_auth retry pair "
# 0.2.0 (docs/security.md, "The retry pair"): the pair a refresh hands out is
# HKDF-SHA-256(salt = retry key, IKM = parent refresh token,
#              info = V2_INFO || session id || new generation (4 bytes, big-endian)), 64 bytes.
V2_INFO = b"pg_session_auth retry pair v2"


token = sa.token_text


def digest(tok: str) -> bytes:
    """What the extension stores of a token: the first 16 bytes of its
    SHA-256 (src/token.rs, DIGEST_LEN)."""
    return hashlib.sha256(tok.encode()).digest()[:16]


def hkdf(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 with SHA-256."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def columns(db, table):
    return db.execute(
        "SELECT a.attname AS name, a.atttypid::regtype::text AS type FROM pg_attribute a "
        "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        [table],
    ).fetchall()


def private_tables(db):
    return [
        r["rel"]
        for r in db.execute(
            "SELECT c.oid::regclass::text AS rel FROM pg_class c "
            "WHERE c.relnamespace = 'session_auth'::regnamespace AND c.relkind = 'r' ORDER BY 1"
        )
    ]


def stored_byte_strings(db, session_ids=None) -> set:
    """Every value of every column of every table of the private schema, as
    bytes: bytea as stored, uuid as its 16 bytes, text as UTF-8, integers in
    4- and 8-byte big-endian form, and each of those in hex and base64url as
    well (a value could have been stored encoded)."""
    out = set()
    for table in private_tables(db):
        cols = columns(db, table)
        only = ""
        if session_ids is not None and any(c["name"] == "session_id" for c in cols):
            only = " AND session_id = ANY(%s::uuid[])"
        for col in cols:
            name, typ = col["name"], col["type"]
            args = [list(session_ids)] if only else []
            for row in db.execute(f'SELECT "{name}" AS v FROM {table} WHERE "{name}" IS NOT NULL{only}', args):
                v = row["v"]
                if typ == "bytea":
                    raw = [bytes(v)]
                elif typ == "uuid":
                    raw = [v.bytes]
                elif typ in ("integer", "bigint", "smallint"):
                    raw = [int(v).to_bytes(8, "big", signed=True), int(v).to_bytes(4, "big", signed=True)
                           if -2**31 <= int(v) < 2**31 else b""]
                elif typ in ("text", "character varying", "name"):
                    raw = [str(v).encode()]
                else:
                    raw = [str(v).encode()]
                for r in raw:
                    if r:
                        out |= {r, r.hex().encode(), base64.urlsafe_b64encode(r).rstrip(b"=")}
    return out


def session_rows(db, session_ids=None):
    if session_ids is None:
        return db.execute("SELECT * FROM session_auth.sessions WHERE revoked_at IS NULL").fetchall()
    return db.execute("SELECT * FROM session_auth.sessions WHERE revoked_at IS NULL "
                      "AND session_id = ANY(%s::uuid[])", [list(session_ids)]).fetchall()


def rebuilt_pairs(db, extra_secrets=(), session_ids=None) -> list:
    """[(session_id, construction)] for every live session whose current pair
    one of the two constructions rebuilds from the stored byte strings (plus
    `extra_secrets`, strings or bytes, in every secret input). With
    `session_ids`, only those sessions, and only the rows that belong to them
    (and every row of tables without a session id: the keys)."""
    stored = stored_byte_strings(db, session_ids)
    candidates = stored | {s.encode() if isinstance(s, str) else s for s in extra_secrets}
    # Salts: the 32-byte strings, the size of a retry key. (Every 16-byte
    # string as well, the size of a digest and of every session id, makes
    # the search quadratic in the rows: it ran for minutes.)
    keys32 = {s for s in candidates if len(s) == 32} | {s for s in stored if len(s) == 32}
    found = []
    for row in session_rows(db, session_ids):
        sid = row["session_id"].bytes
        want_access, want_refresh = bytes(row["access_digest"]), bytes(row["refresh_digest"])

        def matches(access_secret, refresh_secret):
            # Either format: the row's generation, or none (0.1.0).
            return any(digest(token(ACCESS, sid, access_secret, g)) == want_access
                       or digest(token(REFRESH, sid, refresh_secret, g)) == want_refresh
                       for g in (row["generation"], None))

        wrapped = row.get("retry_pair")
        if wrapped is not None and len(bytes(wrapped)) == 88:
            w = bytes(wrapped)
            nonce, a, r = w[8:24], w[24:56], w[56:88]
            for hkey in candidates:
                for key in keys32:
                    pad_a = hmac.new(hkey, V1_LABEL + key + nonce + b"access", hashlib.sha256).digest()
                    pad_r = hmac.new(hkey, V1_LABEL + key + nonce + b"refresh", hashlib.sha256).digest()
                    if matches(xor(a, pad_a), xor(r, pad_r)):
                        found.append((str(row["session_id"]), "0.1.0 wrapped pair"))
                        break
                else:
                    continue
                break
        if row.get("retry_key_id") is not None:
            info = V2_INFO + sid + int(row["generation"]).to_bytes(4, "big")
            hit = False
            for ikm in candidates:
                for salt in keys32:
                    okm = hkdf(salt, ikm, info, 64)
                    if matches(okm[:32], okm[32:]):
                        found.append((str(row["session_id"]), "0.2.0 derived pair"))
                        hit = True
                        break
                if hit:
                    break
    return found


def shared_memory_of(db, name):
    """The bytes of the shared-memory allocation `name`, read the way a role
    that may read server files (a superuser, pg_read_server_files) can:
    pg_read_binary_file on /proc/self/mem, at the address the allocation has
    in every backend (the main segment's mapping plus its offset)."""
    alloc = db.execute("SELECT off, size FROM pg_get_shmem_allocations() WHERE name = %s",
                       [name]).fetchone()
    assert alloc, f"no shared memory allocation named {name!r}"
    maps = db.execute("SELECT pg_read_file('/proc/self/maps') AS m").fetchone()["m"]
    # The main segment: PostgreSQL's shared anonymous mapping (rw-s), the
    # largest shared mapping of the process.
    shared = []
    for line in maps.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1] == "rw-s":
            start, end = (int(x, 16) for x in fields[0].split("-"))
            shared.append((end - start, start))
    assert shared, "no shared mapping in /proc/self/maps"
    _, base = max(shared)
    return bytes(db.execute("SELECT pg_read_binary_file('/proc/self/mem', %s, %s) AS b",
                            [base + alloc["off"], alloc["size"]]).fetchone()["b"])


def derives_pair(keys, parent: str, session_id: bytes, generation: int, access_token: str):
    """The 32-byte strings among `keys` that, as the retry key, derive
    `access_token` from `parent` (v2 construction)."""
    info = V2_INFO + session_id + generation.to_bytes(4, "big")
    return [k for k in keys
            if token(ACCESS, session_id, hkdf(k, parent.encode(), info, 64)[:32], generation) == access_token]


def windows(data: bytes, width=32):
    """Every `width`-byte window of `data`, aligned to 8 bytes (where the
    ring keeps its keys) and unaligned ones too."""
    return {data[i:i + width] for i in range(len(data) - width + 1)}
