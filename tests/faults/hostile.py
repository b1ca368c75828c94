"""Hostile arguments for the session_* functions, with what each should
come to (test_fuzz.py judges every call by it).

Every generator returns an `Arg`: the bytes sent as a text-format bind
parameter (None: SQL NULL), its type, what the extension should make of it
(`verdict`), the SQLSTATEs with which PostgreSQL's own input function
refuses it before any function of the extension runs (`pg_errors`; then the
call must fail with one of them), and a note that says how it was made (for
a reproduction: never the token itself).

Token mutations follow the ways a token gets damaged or forged: truncated,
extended, one bit flipped, the prefix swapped, the body in another base64
spelling (padding, the standard alphabet, non-canonical trailing bits), the
claimed generation or session changed, a secret made up. None of them was
ever issued, so each must answer `invalid` (or `false`, or SA001).
"""

from __future__ import annotations

import base64
import random
import uuid
from dataclasses import dataclass

from libpq_calls import INT4, INT8, INTERVAL, JSONB, TEXT, UUID

ACCESS, REFRESH = "pgsa_at_", "pgsa_rt_"
MAX_USER_ID_BYTES = 256
MAX_DATA_BYTES = 64 * 1024

# PostgreSQL's input functions refuse these, before any function runs.
BAD_ENCODING = frozenset({"22021"})             # invalid UTF-8
BAD_SYNTAX = frozenset({"22P02"})               # uuid, int, jsonb syntax
OUT_OF_RANGE = frozenset({"22003"})             # int4, int8, numeric
TOO_DEEP = frozenset({"54001"})                 # jsonb nesting: stack depth
BAD_INTERVAL = frozenset({"22007", "22008", "22015"})
BAD_ESCAPE = frozenset({"22P05", "22P02"})      # \u0000, lone surrogates in JSON


@dataclass(frozen=True)
class Arg:
    value: bytes | None
    oid: int
    verdict: str                  # generator-specific: "ok", "null", "bad", "invalid", "genuine", ...
    note: str
    pg_errors: frozenset = frozenset()
    # For tokens: the texts no error may repeat (the token and its mutant).
    secrets: tuple = ()
    # False: PostgreSQL may refuse it with `pg_errors` (or may not: a
    # nesting depth near the stack's limit), else `verdict` applies.
    pg_certain: bool = True

    @property
    def refused_by_postgres(self) -> bool:
        return bool(self.pg_errors)


def _utf8(s: str) -> bytes:
    return s.encode()


def is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def as_received(b: bytes) -> bytes:
    """What a function receives of a text-format parameter: PostgreSQL
    passes it to the type's input function as a C string, so a NUL byte
    silently ends it (PostgreSQL's behaviour, not the extension's)."""
    return b.split(b"\x00", 1)[0]


def _text_arg(b: bytes | None, oid: int, verdict: str, note: str, secrets=()) -> Arg:
    """A text-typed value: PostgreSQL refuses bytes that are not UTF-8
    (before the first NUL: see `as_received`)."""
    if b is not None and not is_utf8(as_received(b)):
        return Arg(b, oid, verdict, note, BAD_ENCODING, secrets)
    return Arg(b, oid, verdict, note, frozenset(), secrets)


# ---------------------------------------------------------------------------
# Tokens.

def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(body: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except Exception:  # noqa: BLE001 - anything undecodable
        return None


def forged(rng: random.Random, prefix: str, session: bytes | None = None,
           generation: int | None = 1) -> str:
    """A token in the right format that was never issued."""
    session = session if session is not None else rng.randbytes(16)
    claim = b"" if generation is None else (generation % 2**32).to_bytes(4, "big")
    return prefix + b64(session + claim + rng.randbytes(32))


def _flip_bit(b: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(len(b))
    return b[:i] + bytes([b[i] ^ (1 << rng.randrange(8))]) + b[i + 1:]


def _mutations(t: str):
    """(name, function of rng) for every way this token is damaged."""
    prefix, body = t[:8], t[8:]
    other = REFRESH if prefix == ACCESS else ACCESS
    raw = unb64(body) or b""

    def swap_last(rng):
        # Same top bits, other trailing bits: decodes to the same bytes in a
        # lax decoder, but it is not the token's one canonical spelling.
        last = body[-1]
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        i = alphabet.index(last)
        j = (i & ~0b1111) | rng.choice([k for k in range(16) if k != (i & 0b1111)])
        return prefix + body[:-1] + alphabet[j]

    def change_generation(rng):
        if len(raw) != 52:
            return prefix + body[::-1]
        g = rng.choice([0, 1, 2, int.from_bytes(raw[16:20], "big") + 1, 2**31 - 1, 2**31, 2**32 - 1])
        return prefix + b64(raw[:16] + g.to_bytes(4, "big") + raw[20:])

    return [
        ("truncated", lambda rng: t[:rng.choice([0, 1, 8, 9, 40, 71, 72, 77])]),
        ("truncated to 0.1.0's length", lambda rng: t[:72]),
        ("extended", lambda rng: t + rng.choice(["A", "=", "==", " ", "\n", t, "A" * 1000])),
        ("one bit flipped", lambda rng: _flip_bit(t.encode(), rng)),
        ("one character changed", lambda rng: _replace_char(t, rng)),
        ("prefix swapped", lambda rng: other + body),
        ("prefix changed", lambda rng: rng.choice(["pgsa_xx_", "PGSA_AT_", "pgsa-at_", "", "Bearer "]) + body),
        ("padded", lambda rng: t + "=" * rng.choice([1, 2])),
        ("standard base64", lambda rng: prefix + base64.b64encode(raw).decode()),
        ("non-canonical last character", swap_last),
        ("generation changed", change_generation),
        ("made up secret", lambda rng: prefix + b64(raw[:-32] + rng.randbytes(32)) if raw else t + "x"),
        ("0.1.0 format of the same secret",
         lambda rng: prefix + b64(raw[:16] + raw[20:]) if len(raw) == 52 else t[:-1]),
        ("uppercased", lambda rng: t.upper()),
        ("whitespace around", lambda rng: rng.choice([" ", "\t", "\n", "\r\n"]) + t),
        ("NUL inside", lambda rng: t[:20].encode() + b"\x00" + t[20:].encode()),
        ("lookalike character", lambda rng: t.replace("a", "\u0430", 1) if "a" in t else t + "\u0430"),
        ("percent-encoded", lambda rng: t.replace("_", "%5F").replace("-", "%2D")),
    ]


def _replace_char(t: str, rng: random.Random) -> str:
    i = rng.randrange(len(t))
    c = rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=.~é")
    if c == t[i]:
        c = "A" if t[i] != "A" else "B"
    return t[:i] + c + t[i + 1:]


def mutant(t: str, rng: random.Random) -> Arg:
    """A token damaged one way: never issued."""
    name, make = rng.choice(_mutations(t))
    m = make(rng)
    b = m if isinstance(m, bytes) else m.encode()
    if b == t.encode():
        b = b + b"A"
    return _text_arg(b, TEXT, "invalid", f"token mutant: {name}", secrets=(t, b.decode("utf-8", "replace")))


GARBAGE = [
    "", " ", "null", "NULL", "undefined", "Bearer", "pgsa_at_", "pgsa_rt_", "pgsa_at_" + "A" * 70,
    "pgsa_rt_" + "_" * 70, "'; DROP TABLE session_auth.sessions; --", "%s%s%s%n", "\\x00",
    "${jndi:ldap://127.0.0.1/a}", "\u202epgsa_at_", "🔑" * 20, "A" * 78, "-" * 78,
]


def garbage_text(rng: random.Random) -> tuple[bytes, str]:
    """Text that is no token, sometimes no UTF-8, sometimes huge."""
    kind = rng.randrange(7)
    if kind == 0:
        s = rng.choice(GARBAGE)
        return s.encode(), f"garbage {s[:12]!r}"
    if kind == 1:
        n = rng.choices([100, 4096, 65536, 1 << 20], weights=[10, 10, 4, 1])[0]
        return rng.choice([b"A", b"pgsa_at_", b"\xc3\xa9"]) * (n // 8 + 1), f"huge ({n} bytes and more)"
    if kind == 2:
        b = rng.choice([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"pgsa_at_\x80"]) + rng.randbytes(4)
        return b, "invalid UTF-8"
    if kind == 3:
        return rng.randbytes(rng.randrange(1, 100)), "random bytes"
    if kind == 4:
        return "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.randrange(1, 90))).encode(), "random Unicode"
    if kind == 5:
        t = forged(rng, rng.choice([ACCESS, REFRESH]), generation=rng.choice([None, 0, 1, 7, 2**31 - 1]))
        return t.encode(), "forged token, unknown session"
    return rng.choice([b"\x00", b"pgsa_at_\x00" + b"A" * 70]), "NUL byte"


def token_arg(rng: random.Random, genuine: list, known_sessions: list) -> Arg:
    """A token argument: NULL, garbage, a forgery (sometimes for a session
    that exists), a mutant of a genuine token, or a genuine token (from
    `genuine`: (token, kind) pairs the caller may spend)."""
    roll = rng.random()
    if roll < 0.04:
        return Arg(None, TEXT, "invalid", "NULL")
    if roll < 0.16:
        b, note = garbage_text(rng)
        return _text_arg(b, TEXT, "invalid", note, secrets=(b.decode("utf-8", "replace"),))
    if roll < 0.22 and known_sessions:
        session = uuid.UUID(rng.choice(known_sessions)).bytes
        t = forged(rng, rng.choice([ACCESS, REFRESH]), session, rng.choice([None, 1, 2, 3, 1000]))
        return _text_arg(t.encode(), TEXT, "invalid", "forged token of a live session", secrets=(t,))
    if roll < 0.75 or not genuine:
        source = rng.choice(genuine)[0] if genuine else forged(rng, ACCESS)
        return mutant(source, rng)
    t, kind = rng.choice(genuine)
    return Arg(t.encode(), TEXT, f"genuine {kind}", f"a genuine {kind} token", secrets=(t,))


# ---------------------------------------------------------------------------
# user_id: 1-256 bytes.

def user_id_arg(rng: random.Random, users: list) -> Arg:
    roll = rng.randrange(12)
    if roll == 0:
        return Arg(None, TEXT, "null", "NULL user_id")
    if roll == 1:
        return Arg(b"", TEXT, "bad", "empty user_id")
    if roll == 2:
        n = rng.choice([MAX_USER_ID_BYTES + 1, 1000, 1 << 20])
        return Arg(b"u" * n, TEXT, "bad", f"user_id of {n} bytes")
    if roll == 3:
        # 256 bytes exactly, or 257 with the last character multibyte.
        s = "€" * 85 + rng.choice(["a", "é"])
        verdict = "ok" if len(s.encode()) <= MAX_USER_ID_BYTES else "bad"
        return Arg(s.encode(), TEXT, verdict, f"multibyte user_id of {len(s.encode())} bytes")
    if roll == 4:
        return Arg(b"u" * MAX_USER_ID_BYTES, TEXT, "ok", "user_id of 256 bytes")
    if roll == 5:
        b, note = garbage_text(rng)
        received = as_received(b)
        verdict = "bad" if not received or len(received) > MAX_USER_ID_BYTES else "ok"
        return _text_arg(b, TEXT, verdict, f"user_id: {note}")
    return Arg(rng.choice(users).encode(), TEXT, "ok", "a fuzz user")


# ---------------------------------------------------------------------------
# data: a JSON object of at most 64 kB as jsonb_out writes it.

def _nested(depth: int, open_: str, close: str, inner: str) -> str:
    return open_ * depth + inner + close * depth


def _at_the_limit(rng):
    # Exactly at the limit, or one byte over: {"a": "xxx"} is 9 + n bytes.
    s = '{"a": "' + "x" * (MAX_DATA_BYTES - 9 + rng.choice([0, 1])) + '"}'
    return Arg(s.encode(), JSONB, "ok" if len(s) <= MAX_DATA_BYTES else "bad", f"data of {len(s)} bytes")


def _nested_object(rng):
    depth = rng.choice([100, 1000, 5000])    # 7 bytes a level: under 64 kB
    return Arg(_nested(depth, '{"a": ', "}", "1").encode(), JSONB, "ok", f"data nested {depth} deep")


def _nested_deeper(rng):
    depth = rng.choice([20_000, 50_000])
    # Deeper than the stack allows, or parsed, and then too long.
    return Arg(_nested(depth, '{"a":', "}", "1").encode(), JSONB, "bad", f"data nested {depth} deep",
               TOO_DEEP, pg_certain=False)


def _huge_array(rng):
    n = rng.choice([30_000, 200_000])        # 3 bytes each: over 64 kB
    return Arg(('{"a": [' + ", ".join(["0"] * n) + "]}").encode(), JSONB, "bad", f"data with an array of {n} elements")


# (weight, maker): the heavy ones (hundreds of kB to parse) rarely, so that
# 100,000 calls stay quick and still make each of them hundreds of times.
_DATA = [
    (6, lambda rng: Arg(None, JSONB, "null", "NULL data")),
    (12, lambda rng: (lambda s: Arg(s.encode(), JSONB, "bad", f"data not an object: {s}"))(
        rng.choice(["null", "[]", "[{}]", '"{}"', "1", "true", "-0", '"x"']))),
    (2, _at_the_limit),
    (3, _nested_object),
    (0.5, _nested_deeper),
    (0.5, lambda rng: Arg(_nested(300_000, "[", "]", "").encode(), JSONB, "bad", "an array nested 300,000 deep",
                          TOO_DEEP)),
    (0.5, _huge_array),
    (1, lambda rng: Arg(rng.choice([b'{"n": 1e131071}', b'{"n": ' + b"9" * 70_000 + b"}"]), JSONB, "bad",
                        "data whose number is written long")),
    (4, lambda rng: Arg(b'{"n": 1e200000}', JSONB, "bad", "a number numeric cannot hold", OUT_OF_RANGE)),
    (4, lambda rng: (lambda s: Arg(s.encode(), JSONB, "bad", f"JSON escape {s}", BAD_ESCAPE))(
        rng.choice(['{"s": "\\u0000"}', '{"s": "\\ud800"}']))),
    (6, lambda rng: (lambda s: Arg(s.encode(), JSONB, "bad", f"not JSON: {s!r}", BAD_SYNTAX))(
        rng.choice(["{", '{"a":}', "", "{'a': 1}", '{"a": 1,}', "NaN"]))),
    (4, lambda rng: Arg(b'{"s": "\xff"}', JSONB, "bad", "invalid UTF-8 in JSON", BAD_ENCODING)),
    (4, lambda rng: Arg(('{"\\u0001\\n\\"": "' + "\\u0001" * 2000 + '", "a": 1, "a": 2}').encode(), JSONB, "ok",
                        "escapes and a duplicate key")),
    (40, lambda rng: Arg(b'{"roles": ["editor"], "n": 1.50}', JSONB, "ok", "ordinary data")),
]


def data_arg(rng: random.Random) -> Arg:
    weights, makers = zip(*_DATA)
    return rng.choices(makers, weights=weights)[0](rng)


# ---------------------------------------------------------------------------
# auth_level (int), max_auth_age (interval), session ids (uuid), event ids.

def level_arg(rng: random.Random, null_is: str = "null") -> Arg:
    roll = rng.randrange(8)
    if roll == 0:
        return Arg(None, INT4, null_is, "NULL level")
    if roll <= 3:
        v = rng.choice([1, 2, 3])
        return Arg(str(v).encode(), INT4, "ok", f"level {v}")
    if roll <= 5:
        v = rng.choice([0, 4, -1, 2**31 - 1, -(2**31), 100])
        return Arg(str(v).encode(), INT4, "bad", f"level {v}")
    if roll == 6:
        v = rng.choice(["2147483648", "-2147483649", "99999999999999999999"])
        return Arg(v.encode(), INT4, "bad", f"level {v}", OUT_OF_RANGE)
    v = rng.choice(["1.5", "two", "", " "])
    return Arg(v.encode(), INT4, "bad", f"level {v!r}", BAD_SYNTAX)


def interval_arg(rng: random.Random, pg_major: int) -> Arg:
    roll = rng.randrange(7)
    if roll == 0:
        return Arg(None, INTERVAL, "null", "NULL max_auth_age")
    if roll == 1:
        v = rng.choice(["1 hour", "178000000 years", "1000 years", "P1Y", "1 month -30 days", "1 microsecond",
                        "9223372036854775807 microseconds 1 year"])
        return Arg(v.encode(), INTERVAL, "ok", f"interval {v}")
    if roll == 2:
        return Arg(b"0", INTERVAL, "zero", "interval 0")
    if roll == 3:
        v = rng.choice(["-1 microsecond", "-178000000 years", "-1 day", "1 day -25 hours"])
        return Arg(v.encode(), INTERVAL, "bad", f"interval {v}")
    if roll == 4:
        v = rng.choice(["infinity", "-infinity"])
        if pg_major >= 17:   # infinite intervals exist from 17 on
            return Arg(v.encode(), INTERVAL, "ok" if v == "infinity" else "bad", f"interval {v}")
        return Arg(v.encode(), INTERVAL, "bad", f"interval {v}", BAD_INTERVAL)
    if roll == 5:
        v = rng.choice(["999999999999 years", "9223372036854775808 microseconds", "2147483648 months",
                        "-2147483649 days"])
        return Arg(v.encode(), INTERVAL, "bad", f"interval {v}", BAD_INTERVAL)
    if rng.random() < 0.2:
        return Arg(b"\xff", INTERVAL, "bad", "interval of invalid UTF-8", BAD_ENCODING)
    v = rng.choice(["soon", "", "1 fortnight"])
    return Arg(v.encode(), INTERVAL, "bad", f"interval {v!r}", BAD_INTERVAL)


def uuid_arg(rng: random.Random, fuzz_ids: list, oracle_ids: list) -> Arg:
    """A session id: NULL, one of the fuzz's sessions (in any of uuid's
    spellings), or one that exists nowhere (random, nil, an oracle
    session's with one bit flipped), or no uuid at all."""
    roll = rng.randrange(8)
    if roll == 0:
        return Arg(None, UUID, "null", "NULL session id")
    if roll <= 2 and fuzz_ids:
        u = uuid.UUID(rng.choice(fuzz_ids))
        s = rng.choice([str(u), str(u).upper(), "{" + str(u) + "}", u.hex])
        return Arg(s.encode(), UUID, "fuzz", "a fuzz session's id")
    if roll == 3 and oracle_ids:
        b = bytearray(uuid.UUID(rng.choice(oracle_ids)).bytes)
        b[rng.randrange(16)] ^= 1 << rng.randrange(8)
        return Arg(str(uuid.UUID(bytes=bytes(b))).encode(), UUID, "unknown", "an oracle session's id, one bit flipped")
    if roll == 4:
        v = rng.choice(["00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"])
        return Arg(v.encode(), UUID, "unknown", f"session id {v}")
    if roll == 5:
        v = rng.choice(["not-a-uuid", "", "12345678-1234-1234-1234-12345678", "g" * 32])
        return Arg(v.encode(), UUID, "bad", f"session id {v!r}", BAD_SYNTAX)
    return Arg(str(uuid.UUID(bytes=rng.randbytes(16))).encode(), UUID, "unknown", "a random session id")


def event_id_arg(rng: random.Random) -> Arg:
    roll = rng.randrange(5)
    if roll == 0:
        return Arg(None, INT8, "null", "NULL event id")
    if roll == 1:
        return Arg(b"9223372036854775808", INT8, "bad", "event id past bigint", OUT_OF_RANGE)
    v = rng.choice([0, 1, 2, -1, 2**63 - 1, -(2**63), rng.randrange(1, 10_000)])
    return Arg(str(v).encode(), INT8, "ok", f"event id {v}")
