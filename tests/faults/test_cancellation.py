"""Cancellation and timeouts (issue 19 §4): `pg_cancel_backend`,
`pg_terminate_backend`, `statement_timeout` and `lock_timeout` hit issue,
refresh, reauthenticate, revoke_user and purge in the middle of the call,
again and again. After every hit the subject (the session, the user's
sessions, the purge backlog) is in exactly its state before the call or its
state after it, never in between; its blacklist rows and events agree with
that state; and the same call made again succeeds or answers what the
README documents for that state.

    tests/client/run --suite tests/faults -k cancellation

How a call is hit in its middle, three ways:

* waiting: the test holds a lock the call needs (the session's row, the
  user's login slot, one of the user's sessions, a table the purge deletes
  from) in a transaction of its own, sees the call wait for it in
  `pg_stat_activity`, and cancels or terminates it there, or lets its
  `statement_timeout` / `lock_timeout` fire. These are the hits counted
  against the minimum (`MIN_WAITING_HITS` per function and kind), so the
  test cannot pass without hitting anything;
* released: the same, but the lock is released and the cancel or terminate
  sent a random fraction of a millisecond later, while the call does its
  work (or after it finished: then it must have finished whole);
* free: no lock; a cancel or terminate after a random delay, or a
  `statement_timeout` of 1 to 3 ms, anywhere in the call.

The calls are made as the application role (`session_auth_client`), in a
database the purge worker does not serve, so nothing but the test moves
the purge backlog.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field

import sa
import server_log
from harness import wait_until
from libpq_calls import INT4, TEXT, Call, Outcome, Pipe

SEED = 194
MIN_WAITING_HITS = 12          # per (function, kind), each seen waiting first
TIME_LIMIT = 120               # seconds; the loop stops itself
PURGE_BATCH = 500
DB = "faults"

KINDS = ["cancel", "terminate", "statement_timeout", "lock_timeout"]
INTERRUPTED = {"cancel": "57014", "statement_timeout": "57014", "lock_timeout": "55P03", "terminate": "57P01"}

CONF = [
    f"session_auth.purge_batch_size = {PURGE_BATCH}",
    "log_min_error_statement = panic",
    "log_line_prefix = '%m [%p] '",
]

# The first 16 bytes of SHA-256: the digest the extension stores of a token.
DIGEST = "substring(pg_catalog.sha256(convert_to({}, 'UTF8')) FROM 1 FOR 16)"


def digest(param: str) -> str:
    return DIGEST.format(param)


# ---------------------------------------------------------------------------
# The subjects: what each function changes, and how to see which state it is in.

@dataclass
class Subject:
    """One call to hit: `call`, the lock that makes it wait (`lock_sql`,
    `lock_params`), `state()` now, the `before` state and the `after` one
    (a tuple, or a predicate where it holds a time), `retry_ok(outcome,
    state)`: whether the same call made again answered what it documents
    for the state the hit left, and `settled(state_then, state_now)`:
    whether the retry left the state it should."""
    fn: str
    call: Call
    lock_sql: str
    lock_params: list
    state: object
    before: tuple
    after: object
    retry_ok: object
    settled: object

    def is_after(self, state: tuple) -> bool:
        return self.after(state) if callable(self.after) else state == self.after


class Subjects:
    def __init__(self, su, rng: random.Random):
        self.su, self.rng = su, rng
        self.users = 0
        self.tokens = set()     # every token seen, for the log check

    def issued(self, user=None, level=1):
        user = user or self.new_user()
        row = self.su.execute(
            "SELECT session_id::text AS id, access_token AS at, refresh_token AS rt "
            "FROM session_issue(%s, '{}', %s)", [user, level]).fetchone()
        self.tokens |= {row["at"], row["rt"]}
        return user, row["id"], row["at"], row["rt"]

    def seen(self, *outcomes: Outcome) -> None:
        self.tokens |= {v for o in outcomes for r in (o.rows or []) for v in r if v and v.startswith("pgsa_")}

    def new_user(self) -> str:
        self.users += 1
        return f"cancel-user-{self.users}"

    def one(self, sql, params):
        """The one row of `sql`, as a tuple (its columns must be named apart)."""
        row = self.su.execute(sql, params).fetchone()
        return tuple(row.values())

    def make(self, fn: str) -> Subject:
        return getattr(self, fn)()

    def rotation_state(self, sid: str, at: str, rt: str, reason: str) -> tuple:
        """A session a call may have rotated: its generation; whether the
        pair (at, rt) is its current pair, or its parent; its level; whether
        it has a grace window; whether it is revoked; how many blacklist
        rows hold the pair for `reason` (one a pair); all its blacklist rows;
        its events."""
        return self.one(
            "SELECT s.generation, "
            "s.access_digest = " + digest("%(at)s") + " AND s.refresh_digest = " + digest("%(rt)s")
            + " AS current, "
            # The parent: the blacklisted pair one generation back.
            "EXISTS (SELECT FROM session_auth.blacklist p WHERE p.session_id = s.session_id "
            "  AND p.generation = s.generation - 1 "
            "  AND p.access_digest IS NOT DISTINCT FROM " + digest("%(at)s")
            + " AND p.refresh_digest IS NOT DISTINCT FROM " + digest("%(rt)s") + ") AS parent, "
            "s.auth_level, s.grace_until IS NOT NULL AS grace, s.revoked_at IS NOT NULL AS revoked, "
            "(SELECT count(*) FROM session_auth.blacklist b WHERE b.session_id = s.session_id "
            "  AND b.reason = %(reason)s AND b.generation = 1 "
            "  AND b.access_digest = " + digest("%(at)s") + " AND b.refresh_digest = " + digest("%(rt)s")
            + ") AS listed, "
            "(SELECT count(*) FROM session_auth.blacklist b WHERE b.session_id = s.session_id) AS blacklist, "
            "(SELECT pg_catalog.array_agg(event ORDER BY event_id) FROM session_auth.events e "
            "  WHERE e.session_id = s.session_id) AS events "
            "FROM session_auth.sessions s WHERE s.session_id = %(sid)s",
            {"sid": sid, "at": at, "rt": rt, "reason": reason})

    # -- refresh: the session's current refresh token rotates ---------------

    def refresh(self) -> Subject:
        user, sid, at, rt = self.issued()
        before = (1, True, False, 1, False, False, 0, 0, ["issued"])
        after = (2, False, True, 1, True, False, 1, 1, ["issued"])

        def retry_ok(o: Outcome, was: tuple) -> bool:
            # Before: it rotates now; after: the parent inside its grace gets
            # the same pair again (rule 2). Either way: ok, and that pair is
            # the one the row holds.
            if o.sqlstate or not o.rows or o.rows[0][0] != "ok":
                return False
            new_at, new_rt = o.rows[0][2], o.rows[0][4]
            return self.rotation_state(sid, new_at, new_rt, "superseded")[1] is True

        return Subject("refresh", Call("SELECT * FROM session_refresh($1)", [rt.encode()], [TEXT]),
                       "SELECT FROM session_auth.sessions WHERE session_id = %s FOR UPDATE", [sid],
                       lambda: self.rotation_state(sid, at, rt, "superseded"), before, after, retry_ok,
                       lambda was, now: now == after)

    # -- reauthenticate: both tokens rotate, no grace, level raised ----------

    def reauthenticate(self) -> Subject:
        user, sid, at, rt = self.issued(level=1)
        level = self.rng.choice([2, 3])
        before = (1, True, False, 1, False, False, 0, 0, ["issued"])
        after = (2, False, True, level, False, False, 1, 1, ["issued", "reauthenticated"])

        def retry_ok(o: Outcome, was: tuple) -> bool:
            # Before: it re-authenticates now. After: the old access token is
            # the parent of a re-authentication, with no grace: SA003.
            if was == before:
                return not o.sqlstate and len(o.rows) == 1 and o.rows[0][0] == sid
            return o.sqlstate == "SA003"

        return Subject("reauthenticate", Call("SELECT * FROM session_reauthenticate($1, $2)",
                                              [at.encode(), str(level).encode()], [TEXT, INT4]),
                       "SELECT FROM session_auth.sessions WHERE session_id = %s FOR UPDATE", [sid],
                       lambda: self.rotation_state(sid, at, rt, "reauthenticated"), before, after, retry_ok,
                       lambda was, now: now == after)

    # -- revoke_user: all of the user's sessions, or none ----------------------

    def revoke_user(self) -> Subject:
        user = self.new_user()
        ids = sorted(self.issued(user)[1] for _ in range(self.rng.randint(3, 6)))
        m = len(ids)
        state = lambda: self.one(  # noqa: E731
            "SELECT count(*) FILTER (WHERE revoked_at IS NULL) AS live, "
            "count(*) FILTER (WHERE revoked_reason = 'revoked_user') AS revoked, "
            "(SELECT count(*) FROM session_auth.events WHERE user_id = %(u)s AND event = 'revoked_user') AS events, "
            "(SELECT count(*) FROM session_auth.blacklist WHERE session_id = ANY(%(ids)s::uuid[]) "
            "  AND reason = 'revoked_user') AS listed "
            "FROM session_auth.sessions WHERE user_id = %(u)s", {"u": user, "ids": ids})
        before, after = (m, 0, 0, 0), (0, m, m, m)

        def retry_ok(o: Outcome, was: tuple) -> bool:
            # Idempotent, and it counts what it revoked now.
            return not o.sqlstate and o.rows == [(str(m if was == before else 0),)]

        # Lock one of them, not the first: the call has locked those before
        # it (session-id order) when it waits.
        held = ids[self.rng.randrange(1, m)]
        return Subject("revoke_user", Call("SELECT session_revoke_user($1)", [user.encode()], [TEXT]),
                       "SELECT FROM session_auth.sessions WHERE session_id = %s FOR UPDATE", [held],
                       state, before, after, retry_ok, lambda was, now: now == after)

    # -- issue: one more session (under a session cap: the login slot) -------

    def issue(self) -> Subject:
        user = self.new_user()
        n = self.rng.randint(0, 2)
        for _ in range(n):
            self.issued(user)
        state = lambda: self.one(  # noqa: E731
            "SELECT (SELECT count(*) FROM session_auth.sessions WHERE user_id = %(u)s AND revoked_at IS NULL) AS live, "
            "(SELECT count(*) FROM session_auth.events WHERE user_id = %(u)s AND event = 'issued') AS issued, "
            "(SELECT count(*) FROM session_auth.events WHERE user_id = %(u)s AND event <> 'issued') AS other",
            {"u": user})
        before, after = (n, n, 0), (n + 1, n + 1, 0)

        def retry_ok(o: Outcome, was: tuple) -> bool:
            return not o.sqlstate and len(o.rows) == 1 and o.rows[0][1].startswith("pgsa_at_")

        # The retry issues one more session, whatever the hit left.
        return Subject("issue", Call("SELECT * FROM session_issue($1)", [user.encode()], [TEXT]),
                       "SELECT FROM session_auth.login_locks WHERE slot = pg_catalog.hashtext(%s) & 1023 FOR UPDATE",
                       [user], state, before, after, retry_ok,
                       lambda was, now: now == (was[0] + 1, was[1] + 1, 0))

    # -- purge: one batch of each kind, or nothing ---------------------------

    def purge(self) -> Subject:
        self.top_up_backlog()
        state = lambda: self.one(  # noqa: E731
            "SELECT (SELECT count(*) FROM session_auth.blacklist WHERE expires_at < now()) AS blacklist, "
            "(SELECT count(*) FROM session_auth.events WHERE at < now() - interval '40 days') AS events, "
            "(SELECT count(*) FROM session_auth.sessions WHERE user_id = 'backlog') AS sessions, "
            "(SELECT last_run_at FROM session_auth.purge_status) AS last_run", {})
        b, e, s, last = state()
        before = (b, e, s, last)
        batch = [min(x, PURGE_BATCH) for x in (b, e, s)]
        after_counts = (b - batch[0], e - batch[1], s - batch[2])

        def is_after(st):   # a pass recorded, at a time not known in advance
            return st[:3] == after_counts and st[3] != last

        def retry_ok(o: Outcome, was: tuple) -> bool:
            # It removes one more batch and says how many rows.
            expected = sum(min(x, PURGE_BATCH) for x in was[:3])
            return not o.sqlstate and o.rows == [(str(expected),)]

        def settled(was, now):   # one more batch gone, and recorded
            return now[:3] == tuple(x - min(x, PURGE_BATCH) for x in was[:3]) and now[3] != was[3]

        # Hold one of the tables it deletes from: it waits there, after
        # deleting from those before it.
        table = self.rng.choice(["blacklist", "events", "sessions"])
        return Subject("purge", Call("SELECT session_purge()"),
                       f"LOCK TABLE session_auth.{table} IN SHARE MODE", [],
                       state, before, is_after, retry_ok, settled)

    def top_up_backlog(self) -> None:
        low = self.su.execute(
            "SELECT least((SELECT count(*) FROM session_auth.blacklist WHERE expires_at < now()), "
            "(SELECT count(*) FROM session_auth.events WHERE at < now() - interval '40 days'), "
            "(SELECT count(*) FROM session_auth.sessions WHERE user_id = 'backlog')) AS n").fetchone()["n"]
        if low >= 2 * PURGE_BATCH:
            return
        n = 20 * PURGE_BATCH
        sa.add_expired_blacklist(self.su, n)
        self.su.execute(
            "INSERT INTO session_auth.events (event, at, session_id, user_id) "
            "SELECT 'issued', now() - interval '60 days', gen_random_uuid(), 'backlog' "
            "FROM generate_series(1, %s)", [n])
        self.su.execute(
            "INSERT INTO session_auth.sessions (session_id, user_id, data, auth_level, created_at, authenticated_at, "
            "last_refreshed_at, generation, access_digest, access_expires_at, refresh_digest, "
            "refresh_expires_at, absolute_expires_at, purge_after) "
            "SELECT gen_random_uuid(), 'backlog', '{}', 1, now() - interval '3 h', now() - interval '3 h', "
            "now() - interval '3 h', 1, decode(md5(random()::text || i), 'hex'), "
            "now() - interval '2 h', decode(md5(random()::text || i || 'r'), 'hex'), now() - interval '2 h', "
            "now() + interval '9 h', now() - interval '2 h' FROM generate_series(1, %s) i", [n])


# ---------------------------------------------------------------------------

@dataclass
class Hitter:
    """Makes the calls as the application role and hits them."""
    c: object
    su: object          # superuser, autocommit: signals, pg_stat_activity, states
    holder: object      # superuser, in a transaction while it holds a lock
    rng: random.Random
    pipe: Pipe = None

    def app(self) -> Pipe:
        if self.pipe is None or self.pipe.lost:
            self.pipe = Pipe(self.c.conninfo(user="cancel_app", dbname=DB))
        return self.pipe

    def signal(self, kind: str, pid: int) -> None:
        fn = "pg_cancel_backend" if kind == "cancel" else "pg_terminate_backend"
        self.su.execute(f"SELECT {fn}(%s)", [pid])

    def waiting(self, pid: int, call: Call, sent_at) -> bool:
        """Whether the backend is seen waiting for a lock inside `call`, sent
        at `sent_at` (False once the call has ended without being seen so)."""
        seen = []

        def settled() -> bool:
            row = self.su.execute("SELECT state, wait_event_type AS wait, query FROM pg_stat_activity "
                                  "WHERE pid = %s AND query_start >= %s", [pid, sent_at]).fetchone()
            if row is None or row["query"] != call.sql:
                return False            # not yet in the call
            seen.append(row["state"] == "active" and row["wait"] == "Lock")
            return seen[-1] or row["state"] != "active"
        wait_until(settled, timeout=10, step=0.0005)
        return bool(seen) and seen[-1]

    def settle(self, kind: str) -> None:
        """After a signal: a terminated backend's connection is gone even if
        the call finished first; a cancel that arrived after the call is
        absorbed here, not by the retry."""
        if kind == "terminate":
            self.pipe.close()
            self.pipe = None
        elif kind == "cancel" and not self.pipe.lost:
            self.pipe.run([Call("SELECT 1")])

    @staticmethod
    def reset_timeouts(pipe: Pipe) -> None:
        """RESET, until it gets through: under a 1 ms statement_timeout the
        RESET itself can time out."""
        for _ in range(100):
            if not any(o.sqlstate for o in pipe.run([Call("RESET statement_timeout"), Call("RESET lock_timeout")])):
                return
        raise AssertionError("could not reset the timeouts")

    def hit(self, subject: Subject, kind: str, mode: str) -> tuple[Outcome, bool]:
        """Makes the call and hits it; returns its outcome and whether it was
        seen waiting inside the call before it was hit."""
        pipe = self.app()
        setting = []
        if kind == "statement_timeout":
            # Waiting: long enough to see the call wait before it fires.
            ms = self.rng.choice([1, 1, 2, 3]) if mode == "free" else self.rng.randint(20, 60)
            setting = [Call(f"SET statement_timeout = '{ms}ms'")]
        elif kind == "lock_timeout":
            setting = [Call(f"SET lock_timeout = '{self.rng.randint(1, 20)}ms'")]
        if mode != "free":
            self.holder.execute(subject.lock_sql, subject.lock_params)
        sent_at = self.su.execute("SELECT clock_timestamp() AS t").fetchone()["t"]
        pipe.send(setting + [subject.call])
        seen_waiting = False
        if mode != "free" and kind != "lock_timeout":
            seen_waiting = self.waiting(pipe.pid, subject.call, sent_at)
        if mode != "free" and kind in ("cancel", "terminate"):
            if mode == "released":
                self.holder.rollback()
                time.sleep(self.rng.random() / 1000)
            self.signal(kind, pipe.pid)
        elif mode == "free" and kind in ("cancel", "terminate"):
            time.sleep(self.rng.random() * (0.012 if subject.fn == "purge" else 0.002))
            self.signal(kind, pipe.pid)
        outcome = pipe.receive()[-1]
        if mode != "free":
            # A lock timeout fires only in a lock wait, and the test's is the
            # only lock held.
            seen_waiting = seen_waiting or (kind == "lock_timeout" and outcome.sqlstate == INTERRUPTED[kind])
            self.holder.rollback()
        if setting and not pipe.lost:
            self.reset_timeouts(pipe)
        if kind in ("cancel", "terminate"):
            self.settle(kind)
        return outcome, seen_waiting

    def retry(self, subject: Subject) -> Outcome:
        return self.app().run([subject.call])[0]


def check_cycle(subject: Subject, kind: str, mode: str, outcome: Outcome, state: tuple) -> list[str]:
    """What is wrong after one hit: the state, and the outcome for it."""
    wrong = []
    is_after = subject.is_after(state)
    if state != subject.before and not is_after:
        wrong.append(f"{subject.fn} hit by {kind} ({mode}): state {state}, neither before {subject.before} "
                     f"nor after {subject.after if not callable(subject.after) else '(one batch less)'}")
    interrupted = outcome.sqlstate == INTERRUPTED[kind] or (kind == "terminate" and outcome.lost)
    if outcome.sqlstate and not interrupted:
        wrong.append(f"{subject.fn} hit by {kind} ({mode}): {outcome.sqlstate} {outcome.message!r}")
    if outcome.lost and kind != "terminate":
        wrong.append(f"{subject.fn} hit by {kind} ({mode}): the connection was lost")
    if not outcome.sqlstate and not outcome.lost and not is_after:
        wrong.append(f"{subject.fn} succeeded under {kind} ({mode}) but its state is {state}")
    return wrong


# The ways each kind of hit is made (see the module's docstring): a lock
# timeout needs a lock wait; the others also hit calls that run free.
MODES = {"cancel": ["waiting", "waiting", "released", "free"],
         "terminate": ["waiting", "waiting", "released", "free"],
         "statement_timeout": ["waiting", "waiting", "free"],
         "lock_timeout": ["waiting"]}
FUNCTIONS = ["issue", "refresh", "reauthenticate", "revoke_user", "purge"]


@dataclass
class Tally:
    waiting_hits: Counter = field(default_factory=Counter)   # (fn, kind): hit, seen inside the call
    hits: Counter = field(default_factory=Counter)           # (fn, kind, mode): interrupted
    completed: Counter = field(default_factory=Counter)      # (fn, kind, mode): finished first
    findings: list = field(default_factory=list)

    def short(self) -> dict:
        pairs = ((f, k) for f in FUNCTIONS for k in KINDS)
        return {p: self.waiting_hits[p] for p in pairs if self.waiting_hits[p] < MIN_WAITING_HITS}

    def report(self, elapsed: float, say) -> None:
        say(f"cancellation: {sum(self.hits.values())} calls hit mid-call, {sum(self.completed.values())} "
            f"finished before the hit landed, in {elapsed:.1f} s")
        for fn in FUNCTIONS:
            say(f"  {fn:15} " + "  ".join(f"{k} {self.waiting_hits[(fn, k)]:3}/" + "/".join(
                str(self.hits[(fn, k, m)]) for m in ("waiting", "released", "free")) for k in KINDS))
        say("  (per kind: hits seen inside the call / hits by mode waiting/released/free)")


def one_cycle(subjects: Subjects, hitter: Hitter, fn: str, kind: str, mode: str, tally: Tally) -> None:
    """Makes a subject, hits its call, checks the state it left, retries
    the call and checks the retry's answer and the state after it."""
    subject = subjects.make(fn)
    assert subject.state() == subject.before, f"{fn}: the subject is not as made"
    outcome, seen_waiting = hitter.hit(subject, kind, mode)
    state = subject.state()
    tally.findings += check_cycle(subject, kind, mode, outcome, state)
    if outcome.sqlstate == INTERRUPTED[kind] or outcome.lost:
        tally.hits[(fn, kind, mode)] += 1
        tally.waiting_hits[(fn, kind)] += seen_waiting
    else:
        tally.completed[(fn, kind, mode)] += 1
    retried = hitter.retry(subject)
    subjects.seen(outcome, retried)
    if not subject.retry_ok(retried, state):
        tally.findings.append(f"{fn} after {kind} ({mode}) in state {state}: the retry answered "
                              f"{retried.sqlstate or retried.rows!r:.200}")
    if not subject.settled(state, now := subject.state()):
        tally.findings.append(f"{fn} after {kind} ({mode}) and a retry: state {now}, from {state}")


def test_cancels_and_timeouts_leave_every_call_whole(own_cluster, capsys):
    c = own_cluster(*CONF)
    with c.connect() as db:
        db.execute(f"CREATE DATABASE {DB}")
        db.execute("CREATE ROLE cancel_app LOGIN")
        for name, value in {"access_ttl": "1h", "idle_timeout": "2h", "refresh_grace": "1h",
                            "max_sessions_per_user": "1000"}.items():
            db.execute(f"ALTER ROLE cancel_app SET session_auth.{name} = '{value}'")
    su = c.connect(dbname=DB)
    su.execute("CREATE EXTENSION pg_session_auth")
    su.execute("GRANT session_auth_client TO cancel_app")
    rng = random.Random(SEED)
    subjects = Subjects(su, rng)
    hitter = Hitter(c, su, c.connect(dbname=DB, autocommit=False), rng)

    tally = Tally()
    started = time.monotonic()
    # Round after round over every function and kind, until each pair has
    # its minimum of hits seen inside the call, or the time is up.
    while tally.short() and time.monotonic() - started < TIME_LIMIT:
        for fn in FUNCTIONS:
            for kind in KINDS:
                one_cycle(subjects, hitter, fn, kind, rng.choice(MODES[kind]), tally)
    elapsed = time.monotonic() - started
    tally.findings += server_log.findings(c.log_text(), subjects.tokens)

    with capsys.disabled():
        print()
        tally.report(elapsed, lambda line: print(line, flush=True))
    assert not tally.short(), f"too few genuine mid-call hits within {TIME_LIMIT} s: {tally.short()}"
    assert not tally.findings, server_log.redact("\n".join(tally.findings[:30]))
