"""SQL-level fuzzer (issue 19 §3): a fixed-seed run of 100,000 calls over
every public function with hostile arguments (tests/faults/hostile.py),
interleaved with valid calls whose answers an oracle predicts exactly.

    tests/client/run --suite tests/faults -k fuzz              # 100,000 calls
    tests/client/run --suite tests/faults -k fuzz --fuzz-long  # 10 minutes, for a release

Pass: no backend crash (the server log has no "terminated by signal"), every
error is a SQLSTATE the README documents for that call (or PostgreSQL's own
refusal of a parameter its type cannot hold, before any function runs), no
error and no log line carries a token, and the valid calls, during the run
and again afterwards, answer exactly as the oracle says, with the events
and blacklist rows their history implies.

The calls go as the application role would make them: a LOGIN role granted
`session_auth_client` (`fuzz_app`, long timeouts and a one-hour grace so no
oracle answer depends on time), and, for a share of them, a role with
second-long timeouts and a session cap (`fuzz_tight`: expiry and eviction
paths), and the superuser. Each call is its own transaction, sent in
pipelined batches (tests/faults/libpq_calls.py).
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import hostile
import server_log
from hostile import ACCESS, REFRESH, Arg
from libpq_calls import INT4, INT8, INTERVAL, JSONB, TEXT, UUID, Call, Outcome, Pipe

SEED = 19
CALLS = 100_000
LONG_SECONDS = 600
BATCH = 100                 # calls per round trip
BATCH_BYTES = 64 * 1024     # ... and at most this many bytes of arguments, so
                            # sending never waits on results not yet read

# Every error in the log (what the server logs of it is what the client
# reads, checked call by call), without its statement, and no statement
# logging: 100,000 calls stay fast and the log small enough to scan.
FUZZ_CONF = [
    "log_min_error_statement = panic",
    "log_parameter_max_length_on_error = 0",
    "log_line_prefix = '%m [%p] '",
]

OK, INVALID, EXPIRED, REVOKED, REUSE = "ok", "invalid", "expired", "revoked", "reuse_detected"
EVENTS = {"issued", "reuse_detected", "revoked", "revoked_user", "reauthenticated", "evicted"}


def setup_roles(c) -> None:
    with c.connect() as db:
        db.execute("CREATE EXTENSION pg_session_auth")
        for role, settings in [
            ("fuzz_app", {"access_ttl": "1h", "idle_timeout": "2h", "refresh_grace": "1h"}),
            ("fuzz_tight", {"access_ttl": "1s", "idle_timeout": "2s", "absolute_timeout": "3s",
                            "refresh_grace": "0", "max_sessions_per_user": "3"}),
        ]:
            db.execute(f"CREATE ROLE {role} LOGIN")
            db.execute(f"GRANT session_auth_client TO {role}")
            for name, value in settings.items():
                db.execute(f"ALTER ROLE {role} SET session_auth.{name} = '{value}'")


# ---------------------------------------------------------------------------
# What each call should come to.

@dataclass
class Expect:
    """`must`: the SQLSTATE the call must raise; else `may`: the SQLSTATEs it
    may raise, and `check(rows)` returns what is wrong with its rows."""
    must: str | None = None
    may: frozenset = frozenset()
    check: object = None


def first_bad(*checks) -> str | None:
    """The SQLSTATE of the first failing argument check, in the order the
    function makes them: (verdict, 22004 on 'null'?, 22023 on 'bad')."""
    for verdict, null_raises in checks:
        if verdict == "null" and null_raises:
            return "22004"
        if verdict == "bad":
            return "22023"
    return None


def secret_pieces(args: list[Arg]):
    for a in args:
        for s in a.secrets:
            for piece in {s, s[8:], s[-40:], s[8:40]}:
                if len(piece) >= 12:
                    yield piece


def is_token(value: str | None, prefix: str) -> bool:
    return bool(value) and value.startswith(prefix) and len(value) == 78


# ---------------------------------------------------------------------------
# The oracle: sessions only valid calls touch, whose every answer is known.

@dataclass
class OracleSession:
    user: str
    session_id: str
    access: str
    refresh: str
    data: dict
    level: int
    parent: tuple | None = None         # the pair a refresh replaced: in grace all run long
    reauthenticated: bool = False       # the current pair came from a re-authentication
    revoked: bool = False
    busy: bool = False                  # a call that changes its tokens is in flight
    rotations: int = 0                  # each put the old pair on the blacklist (one row)
    reauths: int = 0

    @property
    def tokens(self):
        return [self.access, self.refresh, *(self.parent or ())]


# ---------------------------------------------------------------------------

@dataclass
class Fuzz:
    rng: random.Random
    pg_major: int
    fuzz_users: list = field(default_factory=lambda: [f"fuzz-user-{i}" for i in range(12)])
    genuine: list = field(default_factory=list)        # (token, kind) of fuzz sessions
    fuzz_ids: list = field(default_factory=list)
    oracle: list = field(default_factory=list)
    oracle_users: list = field(default_factory=lambda: [f"oracle-user-{i}" for i in range(4)])
    pending_issues: Counter = field(default_factory=Counter)
    counts: Counter = field(default_factory=Counter)
    findings: list = field(default_factory=list)
    seen_tokens: set = field(default_factory=set)
    calls: int = 0

    # -- bookkeeping ---------------------------------------------------------

    def finding(self, what: str) -> None:
        if len(self.findings) < 200:
            self.findings.append(server_log.redact(f"call {self.calls}: {what}"))

    def remember(self, *tokens) -> None:
        for t in tokens:
            if t:
                self.seen_tokens.add(t)

    def add_genuine(self, access: str | None, refresh: str | None, session_id: str | None) -> None:
        self.remember(access, refresh)
        self.genuine += [(access, "access"), (refresh, "refresh")]
        del self.genuine[:-400]
        if session_id:
            self.fuzz_ids.append(session_id)
            del self.fuzz_ids[:-400]

    def live_oracle(self):
        return [s for s in self.oracle if not s.revoked and not s.busy]

    def all_tokens_for_mutation(self):
        return self.genuine + [(t, "oracle") for s in self.oracle for t in s.tokens]

    # -- judging ---------------------------------------------------------------

    def judge(self, fn: str, args: list[Arg], expect: Expect, o: Outcome) -> None:
        self.calls += 1
        notes = ", ".join(a.note for a in args) or "no arguments"
        # What it came to: its SQLSTATE, its status word, or ok.
        status = o.rows[0][0] if fn in ("session_validate", "session_refresh") and o.rows else None
        self.counts[(fn, o.sqlstate or status or "ok")] += 1
        if o.lost:
            self.finding(f"{fn}({notes}): the connection was lost ({o.sqlstate} {o.message})")
            return
        if o.sqlstate:
            self.check_error_is_secret_free(fn, args, o, notes)
        pg_all = frozenset().union(*(a.pg_errors for a in args))
        pg_must = any(a.pg_errors and a.pg_certain for a in args)
        if o.sqlstate in pg_all:
            return                       # PostgreSQL refused the parameter
        if pg_must:
            self.finding(f"{fn}({notes}): {o.sqlstate or 'success'} where PostgreSQL refuses "
                         f"the input ({sorted(pg_all)})")
            return
        if expect.must:
            if o.sqlstate != expect.must:
                self.finding(f"{fn}({notes}): {o.sqlstate or 'success'}, expected {expect.must}"
                             f" {o.message!r}")
            return
        if o.sqlstate:
            if o.sqlstate not in expect.may:
                self.finding(f"{fn}({notes}): undocumented SQLSTATE {o.sqlstate}: {o.message!r}")
            return
        if expect.check and (wrong := expect.check(o.rows)):
            self.finding(f"{fn}({notes}): {wrong}")

    def check_error_is_secret_free(self, fn, args, o: Outcome, notes) -> None:
        for text in o.texts:
            if server_log.TOKEN_PREFIX.search(text):
                self.finding(f"{fn}({notes}): {o.sqlstate} error text has a token prefix: {text[:120]!r}")
            for piece in secret_pieces(args):
                if piece in text:
                    self.finding(f"{fn}({notes}): {o.sqlstate} error repeats the token argument")

    # -- hostile calls ---------------------------------------------------------

    def token(self) -> Arg:
        pool = self.genuine if self.rng.random() < 0.7 else self.all_tokens_for_mutation()
        arg = hostile.token_arg(self.rng, pool, self.fuzz_ids + [s.session_id for s in self.oracle])
        if arg.verdict.startswith("genuine") and (arg.value.decode(), "oracle") in pool:
            # Oracle tokens are only ever mutated, never spent.
            return hostile.mutant(arg.value.decode(), self.rng)
        return arg

    def plan_hostile(self):
        fn = self.rng.choices(
            ["validate", "refresh", "revoke", "revoke_id", "revoke_user", "list", "set_data",
             "reauthenticate", "require", "issue", "purge", "event"],
            weights=[20, 15, 6, 5, 4, 5, 6, 9, 10, 12, 1, 3])[0]
        return getattr(self, f"hostile_{fn}")()

    def status_row(self, rows, allowed, width):
        if len(rows) != 1 or len(rows[0]) != width:
            return f"{len(rows)} rows of {len(rows[0]) if rows else 0} columns"
        status, *rest = rows[0]
        if status not in allowed:
            return f"status {status!r}, expected one of {sorted(allowed)}"
        if status != OK and any(v is not None for v in rest):
            return f"status {status} with non-NULL columns"
        if status == OK and rest[0] is None:
            return "status ok without a session id"
        return None

    def hostile_validate(self):
        t = self.token()
        allowed = {OK, INVALID, EXPIRED, REVOKED} if t.verdict == "genuine access" else {INVALID}
        return "session_validate", Call("SELECT * FROM session_validate($1)", [t.value], [TEXT]), [t], \
            Expect(check=lambda rows: self.status_row(rows, allowed, 7))

    def hostile_refresh(self):
        t = self.token()
        allowed = {OK, INVALID, EXPIRED, REVOKED, REUSE} if t.verdict == "genuine refresh" else {INVALID}

        def check(rows):
            wrong = self.status_row(rows, allowed, 6)
            if not wrong and rows[0][0] == OK:
                _, sid, access, _, refresh, _ = rows[0]
                if not (is_token(access, ACCESS) and is_token(refresh, REFRESH)):
                    return "ok without a well-formed pair"
                self.add_genuine(access, refresh, sid)
            return wrong
        return "session_refresh", Call("SELECT * FROM session_refresh($1)", [t.value], [TEXT]), [t], \
            Expect(check=check)

    def bool_check(self, allowed):
        def check(rows):
            if len(rows) != 1 or len(rows[0]) != 1 or rows[0][0] not in allowed:
                return f"answered {rows}, expected one row of {sorted(allowed)}"
        return check

    def hostile_revoke(self):
        t = self.token()
        allowed = {"t", "f"} if t.verdict.startswith("genuine") else {"f"}
        return "session_revoke", Call("SELECT session_revoke($1)", [t.value], [TEXT]), [t], \
            Expect(check=self.bool_check(allowed))

    def uuid(self) -> Arg:
        return hostile.uuid_arg(self.rng, self.fuzz_ids, [s.session_id for s in self.oracle])

    def hostile_revoke_id(self):
        u = self.uuid()
        allowed = {"t", "f"} if u.verdict == "fuzz" else {"f"}
        return "session_revoke_id", Call("SELECT session_revoke_id($1)", [u.value], [UUID]), [u], \
            Expect(check=self.bool_check(allowed))

    def user(self) -> Arg:
        return hostile.user_id_arg(self.rng, self.fuzz_users)

    def hostile_revoke_user(self):
        user, keep = self.user(), self.uuid()

        def check(rows):
            if len(rows) != 1 or not rows[0][0] or int(rows[0][0]) < 0:
                return f"answered {rows}"
        return "session_revoke_user", Call("SELECT session_revoke_user($1, $2)", [user.value, keep.value],
                                           [TEXT, UUID]), [user, keep], \
            Expect(must=first_bad((user.verdict, True)), check=check)

    def hostile_list(self):
        user = self.user()

        def check(rows):
            for r in rows:
                if len(r) != 7 or r[0] is None or r[5] not in {"1", "2", "3"} or r[4] is None:
                    return f"a malformed row {r[:6]}"
        return "session_list", Call("SELECT * FROM session_list($1)", [user.value], [TEXT]), [user], \
            Expect(must=first_bad((user.verdict, True)), check=check)

    def hostile_set_data(self):
        u, data = self.uuid(), hostile.data_arg(self.rng)
        allowed = {"t", "f"} if u.verdict == "fuzz" else {"f"}
        return "session_set_data", Call("SELECT session_set_data($1, $2)", [u.value, data.value],
                                        [UUID, JSONB]), [u, data], \
            Expect(must=first_bad((data.verdict, True)), check=self.bool_check(allowed))

    def pair_check(self, width):
        def check(rows):
            if len(rows) != 1 or len(rows[0]) != width:
                return f"{len(rows)} rows"
            sid, access, _, refresh, _ = rows[0][-5:]
            if not (is_token(access, ACCESS) and is_token(refresh, REFRESH)) or sid is None:
                return "no well-formed pair"
            self.add_genuine(access, refresh, sid)
        return check

    def hostile_reauthenticate(self):
        t, level = self.token(), hostile.level_arg(self.rng)
        must = first_bad((level.verdict, False))
        if not must and t.verdict != "genuine access":
            must = "SA001"
        return "session_reauthenticate", Call("SELECT * FROM session_reauthenticate($1, $2)",
                                              [t.value, level.value], [TEXT, INT4]), [t, level], \
            Expect(must=must, may=frozenset({"SA001", "SA002", "SA003"}), check=self.pair_check(5))

    def hostile_require(self):
        t, age, level = self.token(), hostile.interval_arg(self.rng, self.pg_major), hostile.level_arg(self.rng)
        must = first_bad((age.verdict, False), (level.verdict, False))
        if not must and t.verdict != "genuine access":
            must = "SA001"

        def check(rows):
            if len(rows) != 1 or len(rows[0]) != 4 or rows[0][1] is None:
                return f"answered {rows}"
            if age.verdict == "zero":
                return "a zero max_auth_age was met"
        return "session_require", Call("SELECT * FROM session_require($1, $2, $3)",
                                       [t.value, age.value, level.value], [TEXT, INTERVAL, INT4]), \
            [t, age, level], \
            Expect(must=must, may=frozenset({"SA001", "SA002", "SA003", "SA005"}), check=check)

    def hostile_issue(self):
        user, data, level = self.user(), hostile.data_arg(self.rng), hostile.level_arg(self.rng)
        if self.rng.random() < 0.2:      # the defaults
            return "session_issue", Call("SELECT * FROM session_issue($1)", [user.value], [TEXT]), [user], \
                Expect(must=first_bad((user.verdict, True)), check=self.pair_check(5))
        must = first_bad((user.verdict, True), (data.verdict, True), (level.verdict, True))
        return "session_issue", Call("SELECT * FROM session_issue($1, $2, $3)",
                                     [user.value, data.value, level.value], [TEXT, JSONB, INT4]), \
            [user, data, level], Expect(must=must, check=self.pair_check(5))

    def hostile_purge(self):
        def check(rows):
            if len(rows) != 1 or int(rows[0][0]) < 0:
                return f"answered {rows}"
        return "session_purge", Call("SELECT session_purge()"), [], Expect(check=check)

    def hostile_event(self):
        e = hostile.event_id_arg(self.rng)

        def check(rows):
            if len(rows) > 1 or any(r[1] not in EVENTS for r in rows):
                return f"answered {rows}"
        return "session_event", Call("SELECT * FROM session_event($1)", [e.value], [INT8]), [e], \
            Expect(check=check)

    # -- valid calls, with exact answers ---------------------------------------

    def plan_valid(self):
        live = self.live_oracle()
        if len([s for s in self.oracle if not s.revoked]) + sum(self.pending_issues.values()) < 24 or not live:
            return self.valid_issue()
        s = self.rng.choice(live)
        op = self.rng.choices(
            ["validate", "validate_parent", "refresh", "retry", "set_data", "reauthenticate",
             "require", "list", "revoke", "revoke_id", "wrong_kind"],
            weights=[25, 8, 12, 6, 6, 5, 10, 6, 2, 1, 3])[0]
        return getattr(self, f"valid_{op}")(s)

    def text(self, v: str) -> Arg:
        return Arg(v.encode(), TEXT, "ok", "valid", secrets=(v,) if v.startswith("pgsa_") else ())

    def exact(self, expected_rows):
        return Expect(check=lambda rows: None if rows == expected_rows
                      else f"answered {rows!r:.300}, expected {expected_rows!r:.300}")

    def check_validated(self, s: OracleSession, expected_status=OK):
        # What the session is when this call is planned: later calls of the
        # same batch (set_data) change the model before this one's answer.
        expected = ("ok", s.session_id, s.user, s.data, str(s.level))

        def check(rows):
            if len(rows) != 1:
                return f"{len(rows)} rows"
            status, sid, user, data, level, _, expires = rows[0]
            if expected_status != OK:
                return None if status == expected_status and sid is None else f"{status}, expected {expected_status}"
            got = (status, sid, user, data and json.loads(data), level)
            if got != expected or expires is None:
                return f"answered {got!r:.200}, expected {expected!r:.200}"
        return Expect(check=check)

    def valid_validate(self, s):
        return "oracle validate", Call("SELECT * FROM session_validate($1)", [s.access.encode()], [TEXT]), \
            [self.text(s.access)], self.check_validated(s)

    def valid_validate_parent(self, s):
        if not s.parent:
            return self.valid_validate(s)
        # A refresh's parent validates in its grace (an hour here); a
        # re-authentication's parent never again.
        expected = REVOKED if s.reauthenticated else OK
        return "oracle validate parent", Call("SELECT * FROM session_validate($1)", [s.parent[0].encode()],
                                              [TEXT]), [self.text(s.parent[0])], \
            self.check_validated(s, expected)

    def valid_wrong_kind(self, s):
        return "oracle validate refresh token", Call("SELECT * FROM session_validate($1)", [s.refresh.encode()],
                                                     [TEXT]), [self.text(s.refresh)], \
            self.check_validated(s, INVALID)

    def valid_refresh(self, s):
        s.busy = True
        old = (s.access, s.refresh)

        def check(rows):
            s.busy = False
            if len(rows) != 1 or rows[0][0] != OK or rows[0][1] != s.session_id:
                return f"answered {rows!r:.200}"
            _, _, access, _, refresh, _ = rows[0]
            self.remember(access, refresh)
            s.access, s.refresh, s.parent, s.reauthenticated = access, refresh, old, False
            s.rotations += 1
        return "oracle refresh", Call("SELECT * FROM session_refresh($1)", [s.refresh.encode()], [TEXT]), \
            [self.text(s.refresh)], Expect(check=check)

    def valid_retry(self, s):
        if not s.parent or s.reauthenticated:
            return self.valid_validate(s)
        # Rule 2: the parent inside its grace gets the very same pair.
        def check(rows):
            if len(rows) != 1 or (rows[0][0], rows[0][2], rows[0][4]) != (OK, s.access, s.refresh):
                return f"a retry answered {rows[0][0] if rows else rows}, not the current pair"
        return "oracle retry", Call("SELECT * FROM session_refresh($1)", [s.parent[1].encode()], [TEXT]), \
            [self.text(s.parent[1])], Expect(check=check)

    def valid_set_data(self, s):
        s.data = {"n": self.rng.randrange(10**6), "s": "é\u0001\"", "deep": [[[{}]]]}
        return "oracle set_data", Call("SELECT session_set_data($1, $2)",
                                       [s.session_id.encode(), json.dumps(s.data).encode()], [UUID, JSONB]), \
            [], self.exact([("t",)])

    def valid_reauthenticate(self, s):
        s.busy = True
        level = self.rng.choice([None, 1, 2, 3])

        def check(rows):
            s.busy = False
            if len(rows) != 1 or rows[0][0] != s.session_id:
                return f"answered {rows!r:.200}"
            _, access, _, refresh, _ = rows[0]
            self.remember(access, refresh)
            s.parent, s.access, s.refresh, s.reauthenticated = (s.access, s.refresh), access, refresh, True
            s.level = max(s.level, level or 0)
            s.rotations += 1
            s.reauths += 1
        return "oracle reauthenticate", Call("SELECT * FROM session_reauthenticate($1, $2)",
                                             [s.access.encode(), level and str(level).encode()], [TEXT, INT4]), \
            [self.text(s.access)], Expect(check=check)

    def valid_require(self, s):
        roll = self.rng.randrange(3)
        if roll == 0 and s.level < 3:
            args, must = [None, str(s.level + 1).encode()], "SA005"
        elif roll == 1:
            args, must = [b"0", None], "SA005"
        else:
            args, must = [self.rng.choice([None, b"1000 years"]), str(self.rng.randint(1, s.level)).encode()], None
        expected = [(s.session_id, s.user, s.data, str(s.level))]

        def check(rows):
            got = [(r[0], r[1], json.loads(r[2]), r[3]) for r in rows]
            if got != expected:
                return f"answered {got!r:.200}, expected {expected!r:.200}"
        return "oracle require", Call("SELECT * FROM session_require($1, $2, $3)", [s.access.encode(), *args],
                                      [TEXT, INTERVAL, INT4]), [self.text(s.access)], Expect(must=must, check=check)

    def valid_list(self, s):
        if self.pending_issues[s.user] or any(o.busy for o in self.oracle if o.user == s.user):
            return self.valid_validate(s)
        live = {o.session_id: o.data for o in self.oracle if o.user == s.user and not o.revoked}

        def check(rows):
            got = {r[0]: json.loads(r[6]) for r in rows}
            if got != live or len(rows) != len(live):
                return f"listed {len(rows)} sessions, expected {len(live)}"
            created = [r[1] for r in rows]
            if created != sorted(created, reverse=True):
                return "not newest first"
        return "oracle list", Call("SELECT * FROM session_list($1)", [s.user.encode()], [TEXT]), [], \
            Expect(check=check)

    def valid_revoke(self, s):
        token = self.rng.choice(s.tokens)
        s.revoked = True
        return "oracle revoke", Call("SELECT session_revoke($1)", [token.encode()], [TEXT]), \
            [self.text(token)], self.exact([("t",)])

    def valid_revoke_id(self, s):
        s.revoked = True
        return "oracle revoke_id", Call("SELECT session_revoke_id($1)", [s.session_id.encode()], [UUID]), [], \
            self.exact([("t",)])

    def valid_issue(self):
        user = self.rng.choice(self.oracle_users)
        data, level = {"oracle": True, "n": self.rng.randrange(1000)}, self.rng.randint(1, 3)
        self.pending_issues[user] += 1

        def check(rows):
            self.pending_issues[user] -= 1
            if len(rows) != 1:
                return f"{len(rows)} rows"
            sid, access, _, refresh, _ = rows[0]
            self.remember(access, refresh)
            self.oracle.append(OracleSession(user, sid, access, refresh, data, level))
        return "oracle issue", Call("SELECT * FROM session_issue($1, $2, $3)",
                                    [user.encode(), json.dumps(data).encode(), str(level).encode()],
                                    [TEXT, JSONB, INT4]), [], Expect(check=check)

    # -- running -----------------------------------------------------------------

    def batch(self, valid_share: float):
        planned, size = [], 0
        while len(planned) < BATCH:
            p = self.plan_valid() if self.rng.random() < valid_share else self.plan_hostile()
            planned.append(p)
            size += p[1].size()
            if size > BATCH_BYTES:
                break
        return planned

    def run_batch(self, pipe: Pipe, planned) -> None:
        outcomes = pipe.run([p[1] for p in planned])
        for (fn, _, args, expect), o in zip(planned, outcomes):
            self.judge(fn, args, expect, o)
        if pipe.lost:
            raise AssertionError(f"the connection was lost: {self.findings[-3:]}")


def run_fuzz(fuzz: Fuzz, pipes: dict, until, say) -> None:
    """Batches until `until(calls, seconds)` says stop: most as the
    application, with the oracle's valid calls among them; the rest as the
    tight role and the superuser, hostile calls only."""
    started, last_report = time.monotonic(), time.monotonic()
    while not until(fuzz.calls, time.monotonic() - started):
        who = fuzz.rng.choices(["app", "tight", "superuser"], weights=[75, 15, 10])[0]
        fuzz.run_batch(pipes[who], fuzz.batch(valid_share=0.2 if who == "app" else 0.0))
        if time.monotonic() - last_report > 10:
            last_report = time.monotonic()
            say(f"  fuzz: {fuzz.calls:,} calls in {last_report - started:.0f} s, {len(fuzz.findings)} findings")


# ---------------------------------------------------------------------------
# Afterwards.

def final_oracle_checks(fuzz: Fuzz, app: Pipe) -> None:
    """Every oracle session answers as its history says: the live ones
    validate with their data and level and still refresh, the revoked ones
    answer revoked; each user's list is exactly its live sessions."""
    planned = []
    for user in fuzz.oracle_users:
        someone = next((s for s in fuzz.oracle if s.user == user and not s.revoked), None)
        if someone:
            planned.append(fuzz.valid_list(someone))
    for s in fuzz.oracle:
        if s.revoked:
            planned.append(("final validate revoked", Call("SELECT * FROM session_validate($1)",
                                                           [s.access.encode()], [TEXT]), [],
                            fuzz.check_validated(s, REVOKED)))
            planned.append(("final refresh revoked", Call("SELECT status FROM session_refresh($1)",
                                                          [s.refresh.encode()], [TEXT]), [],
                            fuzz.exact([(REVOKED,)])))
        else:
            planned.append(fuzz.valid_validate(s))
    fuzz.run_batch(app, planned)
    fuzz.run_batch(app, [fuzz.valid_refresh(s) for s in fuzz.oracle if not s.revoked])
    fuzz.run_batch(app, [fuzz.valid_validate(s) for s in fuzz.oracle if not s.revoked])


def history_checks(fuzz: Fuzz, db) -> list[str]:
    """The events and blacklist rows of every oracle session agree with its
    history: one `issued`, one `reauthenticated` per re-authentication, one
    `revoked` if revoked, nothing else; a blacklist row per rotation (the
    superseded pair, both digests) and one for a revocation."""
    wrong = []
    ids = [s.session_id for s in fuzz.oracle]
    events = Counter()
    for r in db.execute("SELECT session_id::text AS id, event FROM session_auth.events "
                        "WHERE session_id = ANY(%s::uuid[])", [ids]):
        events[(r["id"], r["event"])] += 1
    listed = Counter(r["id"] for r in db.execute(
        "SELECT session_id::text AS id FROM session_auth.blacklist WHERE session_id = ANY(%s::uuid[]) "
        "AND access_digest IS NOT NULL AND refresh_digest IS NOT NULL", [ids]))
    for s in fuzz.oracle:
        expected = Counter({"issued": 1, "reauthenticated": s.reauths, "revoked": int(s.revoked)})
        got = Counter({e: n for (i, e), n in events.items() if i == s.session_id})
        if +expected != +got:
            wrong.append(f"oracle session {s.session_id}: events {dict(got)}, expected {dict(+expected)}")
        rows = s.rotations + int(s.revoked)
        if listed[s.session_id] != rows:
            wrong.append(f"oracle session {s.session_id}: {listed[s.session_id]} blacklist rows, expected {rows}")
    return wrong


# ---------------------------------------------------------------------------

def test_fuzz_every_public_function(own_cluster, request, capsys):
    long_run = request.config.getoption("--fuzz-long")

    def say(line: str) -> None:
        with capsys.disabled():
            print(line, flush=True)

    c = own_cluster(*FUZZ_CONF)
    setup_roles(c)
    db = c.connect()
    pg_major = db.execute("SELECT current_setting('server_version_num')::int / 10000 AS v").fetchone()["v"]
    pipes = {who: Pipe(c.conninfo(user=role)) for who, role in
             [("app", "fuzz_app"), ("tight", "fuzz_tight"), ("superuser", "postgres")]}
    fuzz = Fuzz(random.Random(SEED), pg_major)
    started = time.monotonic()
    try:
        say("")
        if long_run:
            run_fuzz(fuzz, pipes, lambda calls, seconds: seconds >= LONG_SECONDS, say)
        else:
            run_fuzz(fuzz, pipes, lambda calls, seconds: calls >= CALLS, say)
        final_oracle_checks(fuzz, pipes["app"])
    finally:
        for p in pipes.values():
            p.close()
    elapsed = time.monotonic() - started
    log = c.log_text()
    findings = fuzz.findings + history_checks(fuzz, db) + server_log.findings(log, fuzz.seen_tokens)
    print_summary(fuzz, elapsed, say)
    say(f"  server log: {len(log) / 1e6:.1f} MB checked for {len(fuzz.seen_tokens):,} tokens")
    assert fuzz.calls >= (1 if long_run else CALLS)
    assert not findings, "\n".join(findings[:40])


def print_summary(fuzz: Fuzz, elapsed: float, say) -> None:
    """Calls per function, and what they came to (SQLSTATE or ok)."""
    by_fn = Counter()
    for (fn, _), n in fuzz.counts.items():
        by_fn[fn] += n
    say(f"fuzz: {fuzz.calls:,} calls in {elapsed:.1f} s (seed {SEED}); "
        f"{len(fuzz.oracle)} oracle sessions, {sum(s.revoked for s in fuzz.oracle)} of them revoked")
    for fn, n in sorted(by_fn.items()):
        outcomes = ", ".join(f"{k}: {v}" for (f, k), v in sorted(fuzz.counts.items()) if f == fn)
        say(f"  {fn:32} {n:7,}  ({outcomes})")
