"""The crash torture (issue 19 §1): clients keep working while the server
is killed in every way a machine or an operator kills it, then every
family is checked for what the extension promises.

    t = Torture(cluster, seconds=60)
    t.run()                   # clients + killer, bounded by `seconds`
    t.check_families()        # every invariant below; raises AssertionError
    print(t.report())

Clients (threads, one connection each) own a few token families each and
rotate them (autocommit, and in a transaction committed after a rollback
to a savepoint), validate, roll a rotation back, roll a revocation and an
issue back, revoke a family, and steal from one (an ancestor replayed,
then rolled back or committed: rule 4). A "fodder" client issues sessions
with a 1 s idle timeout so that the purge worker deletes rows and VACUUMs
all the time. The main thread kills, in turn: a client backend mid-call
(SIGKILL: the postmaster restarts every process, crash recovery), the purge
worker (SIGKILL, preferably during its VACUUM), a client backend with
SIGTERM (its connection ends, no crash), the server with `pg_ctl stop -m
immediate`, and the postmaster itself with SIGKILL (its orphans must go
before it can start again), then restarts the server where needed.

"Acknowledged" is what a client saw answered on a connection that lived to
return it: a refresh's `ok` and pair in autocommit, a COMMIT that returned,
a revocation's boolean. A call that died with its connection is unknown:
the client reconnects and retries it with the token it held (the parent,
if the rotation committed). What a retry may answer (README "Refresh
semantics", docs/design.md rules 2 and 7, "The retry pair"):

* `ok` and a pair of the next generation: the same pair again (its retry
  key survived: a SIGTERM ends one backend but not shared memory) or a
  fresh rotation (the lost one never committed);
* `expired`, only after a restart (a crash restart too) came between the
  lost call and the retry: the retry key lived in shared memory only, so
  the pair cannot be derived again; the session is untouched, the client
  must log in again (its family is "abandoned"). At the end the row must
  show that the lost rotation did commit, with the held pair as parent;
* never `reuse_detected`, `revoked` or `invalid`.

Checked at the end, for every family:

* live: the last acknowledged pair is the row's current pair (the digests
  on the row), validates `ok` and refreshes `ok`; no pair seen in a
  transaction that rolled back validates; older acknowledged access tokens
  answer `revoked` (their blacklist entries survived), the parent `ok`
  (grace) or `revoked`;
* abandoned: not revoked, the generation one above the held pair's and the
  held pair as parent;
* revoked by the client: revoked, its tokens answer `revoked`;
* stolen: revoked once the backstop has run, exactly one `reuse_detected`
  event;
* no revoked session the clients did not revoke or steal, no
  `reuse_detected` event for a family nobody stole, no pair on a live
  family's blacklist that its client never saw (a second branch of the
  lineage), and no session issued in a rolled-back transaction;
* the fodder's expired sessions are all purged in the end.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

import sa
from harness import Cluster, connect_retry, pg_ctl, wait_until, worker_pid

# The torture cluster's settings. A 60 s grace covers a retry across any
# restart here; the purge runs twice a second (and VACUUMs after its passes).
CONF = [
    "session_auth.refresh_grace = '60s'",
    "session_auth.purge_interval = '500ms'",
    "max_connections = 40",
    "restart_after_crash = on",  # the default, which the backend kills rely on
]

APP_ROLE = "torture_app"  # the clients' role: granted session_auth_client, as an application's is
CLIENTS = 4
FAMILIES_PER_CLIENT = 3
STATEMENT_TIMEOUT = "30s"  # a call that waits longer is a hang: fail, not wait
RECOVERY_TIMEOUT = 90  # seconds a restart may take before the torture fails

# The kills, in the order they take turns.
BACKEND_SIGKILL = "client backend SIGKILL"
WORKER_SIGKILL = "purge worker SIGKILL"
BACKEND_SIGTERM = "client backend SIGTERM"
IMMEDIATE_STOP = "pg_ctl stop -m immediate"
POSTMASTER_SIGKILL = "postmaster SIGKILL"
ALL_KILLS = [BACKEND_SIGKILL, IMMEDIATE_STOP, WORKER_SIGKILL, BACKEND_SIGTERM, POSTMASTER_SIGKILL]
# Those that restart every process, and so empty the retry keys' shared memory.
RESTARTING = {BACKEND_SIGKILL, WORKER_SIGKILL, IMMEDIATE_STOP, POSTMASTER_SIGKILL}

READY_LINE = "database system is ready to accept connections"

# Log lines that no kill may cause: a PANIC, a failed assertion, a process
# that died of anything but the SIGKILLs sent or exited abnormally (a FATAL
# of the startup process: its replay failed), a page that replays
# differently, a purge pass or VACUUM of the worker that failed.
TROUBLE = re.compile(
    r".*(?:PANIC:|TRAP:|terminated by signal (?!9:)|exited with exit code (?![01]\b)|startup process .* exited|"
    r"inconsistent page found|invalid page in block|could not read block|"
    r"pg_session_auth purge: pass failed|pg_session_auth purge: VACUUM of .* failed).*")


def trouble_in(log: str) -> list:
    return TROUBLE.findall(log)


class ConnectionLost(Exception):
    """The call's connection died: whether it committed is unknown."""


def digest(token: str) -> bytes:
    """What the extension stores for a token (src/token.rs)."""
    return hashlib.sha256(token.encode()).digest()[:16]


def answer(r, expected_pair) -> str:
    """A refresh answer, for a message."""
    if r["status"] != "ok":
        return r["status"]
    return ("the same pair (its retry key outlived a restart)" if Pair.of(r) == expected_pair
            else "a different pair (a second branch)")


def generation_of(token: str) -> int:
    return int.from_bytes(sa.b64url_decode(token[8:])[16:20], "big")


@dataclass(frozen=True)
class Pair:
    access: str
    refresh: str

    @staticmethod
    def of(row) -> Pair:
        return Pair(row["access_token"], row["refresh_token"])

    @property
    def generation(self) -> int:
        return generation_of(self.refresh)


@dataclass(frozen=True)
class Moment:
    """Where the restarts stood at one moment: how many had begun (the
    killer counts one before it kills) and how many were over."""

    begun: int
    over: int


@dataclass
class Family:
    """One session as its client knows it."""

    user_id: str
    session_id: str
    acked: list  # acknowledged pairs, oldest first; acked[-1] is held
    state: str = "live"  # live, abandoned, revoked, stolen
    rolled_back: list = field(default_factory=list)  # pairs seen in transactions that rolled back
    unknown: list = field(default_factory=list)  # pairs seen in a transaction whose COMMIT died
    # A rotation whose answer the client "forgot": (the moment before it
    # was sent, the forgotten pair); retried after the next restart.
    forgotten: tuple | None = None
    held_since: Moment = Moment(0, 0)  # when acked[-1] was acknowledged

    @property
    def held(self) -> Pair:
        return self.acked[-1]


class Torture:
    def __init__(self, cluster: Cluster, seconds: float, kills=ALL_KILLS, clients=CLIENTS, progress=print,
                 seed=None):
        self.cluster = cluster
        self.seconds = seconds
        self.kinds = list(kills)
        self.clients = clients
        self.progress = progress
        self.seed = seed if seed is not None else int.from_bytes(os.urandom(4), "big")
        self.rng = random.Random(self.seed)
        self.counts: Counter = Counter()
        self.lock = threading.Lock()
        self.violations: list = []
        self.families: list = []
        self.rolled_back_issues: list = []  # access tokens of sessions issued in rolled-back transactions
        self.epoch = 0  # restarts begun: bumped before every kill that restarts all processes
        self.restarts = 0  # restarts over
        self.recovery_seconds: list = []
        self.workers: list = []
        self.stop = threading.Event()
        self.busy_pids: dict = {}  # client name -> backend pid while a call runs

    # -- bookkeeping ---------------------------------------------------------

    def count(self, what: str, n: int = 1):
        with self.lock:
            self.counts[what] += n

    def violation(self, text: str):
        with self.lock:
            self.violations.append(text)

    def add_family(self, family: Family):
        with self.lock:
            self.families.append(family)

    # A restart empties the retry keys' shared memory. A rotation's key is
    # gone for sure once a restart that began after it is over; it may be
    # gone if a restart was under way at the time or began since.

    def now(self) -> Moment:
        with self.lock:
            return Moment(self.epoch, self.restarts)

    def restart_may_have_come_since(self, m: Moment) -> bool:
        return self.epoch > m.over

    def restart_surely_came_since(self, m: Moment) -> bool:
        return self.restarts > m.begun

    # -- the run -------------------------------------------------------------

    def run(self):
        self.cluster.create_role(APP_ROLE)
        self.ready_lines_at_start = self.ready_lines()
        self.log_offset = self.cluster.log_path.stat().st_size
        self.progress(f"torture: {self.seconds:.0f} s, {self.clients} clients + fodder, "
                      f"kills {', '.join(self.kinds)}, seed {self.seed}")
        self.workers = [threading.Thread(target=Client(self, f"c{i}", self.seed + i).run, name=f"c{i}")
                        for i in range(self.clients)]
        self.workers.append(threading.Thread(target=Fodder(self).run, name="fodder"))
        started = time.monotonic()
        self.deadline = started + self.seconds
        for w in self.workers:
            w.start()
        try:
            self.kill_in_turns(started)
        finally:
            self.stop.set()
            for w in self.workers:
                w.join(timeout=RECOVERY_TIMEOUT + 60)
        hung = [w.name for w in self.workers if w.is_alive()]
        assert not hung, f"clients still running after the torture: {hung}"
        self.counts["recoveries"] = self.ready_lines() - self.ready_lines_at_start

    def kill_in_turns(self, started: float):
        # Kills stop a few seconds before the end, so that the last recovery
        # has clients working on the recovered server too.
        last_kill = self.deadline - min(8.0, self.seconds / 4)
        next_kill = started + self.rng.uniform(2.0, 4.0)
        turn = 0
        while time.monotonic() < last_kill and not self.stop.is_set():
            time.sleep(max(0.0, min(next_kill, self.deadline) - time.monotonic()))
            if time.monotonic() >= last_kill:
                break
            kind = self.kinds[turn % len(self.kinds)]
            turn += 1
            self.kill(kind)
            self.progress(f"  {time.monotonic() - started:5.1f} s  {kind}: "
                          f"{self.counts['rotations']} rotations, {self.counts['retries']} retries so far")
            next_kill = time.monotonic() + self.rng.uniform(2.0, 4.5)
        time.sleep(max(0.0, self.deadline - time.monotonic()))

    # -- kills ---------------------------------------------------------------

    def ready_lines(self) -> int:
        return self.cluster.log_text().count(READY_LINE)

    def postmaster_pid(self) -> int:
        return int((self.cluster.dir / "data" / "postmaster.pid").read_text().split("\n")[0])

    def kill(self, kind: str):
        before = self.ready_lines()
        began = time.monotonic()
        if kind in RESTARTING:
            with self.lock:
                self.epoch += 1
        if kind == BACKEND_SIGKILL:
            self.kill_client_backend(signal.SIGKILL)
            self.wait_ready(before)
        elif kind == WORKER_SIGKILL:
            self.kill_purge_worker()
            self.wait_ready(before)
        elif kind == BACKEND_SIGTERM:
            self.kill_client_backend(signal.SIGTERM)
        elif kind == IMMEDIATE_STOP:
            pg_ctl(self.cluster, "stop", "-m", "immediate")
            self.start_server(before)
        elif kind == POSTMASTER_SIGKILL:
            self.kill_postmaster()
            self.start_server(before)
        else:
            raise ValueError(kind)
        self.count(kind)
        if kind in RESTARTING:
            self.recovery_seconds.append(time.monotonic() - began)
            with self.lock:
                self.restarts += 1

    def kill_client_backend(self, sig):
        """A client backend, preferably one running a call right now."""
        for _ in range(50):
            with self.lock:
                busy = list(self.busy_pids.values())
            if busy:
                pid = self.rng.choice(busy)
                try:
                    os.kill(pid, sig)
                    self.count(f"{sig.name} mid-call")
                    return pid
                except ProcessLookupError:
                    pass
            time.sleep(0.01)
        raise AssertionError("no client backend was running a call for 0.5 s: are the clients stuck?")

    def kill_purge_worker(self):
        """The purge worker, during a VACUUM if one comes within 2 s."""
        conn = connect_retry(self.cluster, timeout=RECOVERY_TIMEOUT)
        try:
            pid = worker_pid(conn, timeout=15)
            assert pid, "the purge worker is not running"
            vacuuming = wait_until(lambda: conn.execute(
                "SELECT pg_stat_clear_snapshot(), count(*) AS n FROM pg_stat_progress_vacuum WHERE pid = %s",
                [pid]).fetchone()["n"] > 0, 2.0, step=0.02)
            os.kill(pid, signal.SIGKILL)
            if vacuuming:
                self.count("worker SIGKILL during VACUUM")
        finally:
            conn.close()

    def kill_postmaster(self):
        """SIGKILL to the postmaster; its children notice and exit on their
        own, and a new postmaster cannot start while one of them holds the
        old shared memory. They are found by their working directory, the
        data directory: a backend forked a moment before the kill counts."""
        datadir = self.cluster.dir / "data"
        postmaster = self.postmaster_pid()
        os.kill(postmaster, signal.SIGKILL)
        if not wait_until(lambda: not processes_in(datadir), 30, step=0.05):
            left = processes_in(datadir)
            self.violation(f"{len(left)} processes of a SIGKILLed postmaster still ran after 30 s: "
                           f"{[process_title(p) for p in left]}")
            for p in left:
                os.kill(p, signal.SIGKILL)
        # The new postmaster takes a lock file naming a pid that still
        # exists for a live server, and a zombie exists until its new parent
        # (PID 1 here) reaps it, which can take seconds. An operator removes
        # the lock file of a server that has no process left; so do we.
        if not wait_until(lambda: not exists(postmaster), 10, step=0.05):
            (datadir / "postmaster.pid").unlink()

    def start_server(self, ready_before: int):
        result = pg_ctl(self.cluster, "start", check=False, timeout=RECOVERY_TIMEOUT)
        assert result.returncode == 0, \
            f"the server did not start again: {result.stdout}\n{self.cluster.log_text()[-3000:]}"
        self.wait_ready(ready_before)

    def wait_ready(self, ready_before: int):
        """Until the log says the restart is over (not merely that a
        connection went through: the postmaster may not have noticed the
        dead child yet)."""
        assert wait_until(lambda: self.ready_lines() > ready_before, RECOVERY_TIMEOUT, step=0.05), \
            f"the server did not recover within {RECOVERY_TIMEOUT} s"

    # -- the checks ----------------------------------------------------------

    def check_families(self):
        """Every invariant of the module docstring; raises AssertionError
        with every violation found (during the run and now)."""
        db = connect_retry(self.cluster, timeout=RECOVERY_TIMEOUT)
        try:
            rows = {str(r["session_id"]): r for r in db.execute(
                "SELECT s.session_id, s.generation, s.access_digest, s.refresh_digest, "
                # The parent pair is the blacklisted one a generation back.
                "(SELECT b.refresh_digest FROM session_auth.blacklist AS b WHERE b.session_id = s.session_id "
                " AND b.generation = s.generation - 1) AS parent_refresh_digest, "
                "s.revoked_at IS NOT NULL AS revoked, s.grace_until > now() + interval '5 s' AS in_grace "
                "FROM session_auth.sessions AS s WHERE s.user_id LIKE 'torture-%'"
            ).fetchall()}
            self.wait_for_backstop(db)
            for f in self.families:
                check = getattr(self, f"check_{f.state}")
                check(db, f, rows.get(f.session_id))
            self.check_global(db)
            self.check_fodder_purged(db)
        finally:
            db.close()
        assert not self.violations, (f"{len(self.violations)} violation(s) (seed {self.seed}):\n  "
                                     + "\n  ".join(self.violations[:30]))

    def wait_for_backstop(self, db):
        """Stolen families whose detecting transaction rolled back are
        revoked by the backstop, a second or so later."""
        stolen = [f.session_id for f in self.families if f.state == "stolen"]
        wait_until(lambda: db.execute(
            "SELECT count(*) AS n FROM session_auth.sessions WHERE session_id = ANY(%s::uuid[]) "
            "AND revoked_at IS NULL", [stolen]).fetchone()["n"] == 0, 30, step=0.2)

    def check_live(self, db, f: Family, row):
        name = f"family {f.user_id} (live)"
        if row is None:
            return self.violation(f"{name}: its session row is gone")
        held = f.held
        if row["revoked"] or bytes(row["refresh_digest"]) != digest(held.refresh) \
                or bytes(row["access_digest"]) != digest(held.access):
            return self.violation(f"{name}: the row's current pair (generation {row['generation']}, revoked "
                                  f"{row['revoked']}) is not the last acknowledged one (generation {held.generation})")
        if sa.validate(db, held.access)["status"] != "ok":
            self.violation(f"{name}: the acknowledged access token does not validate")
        acked = set(f.acked) | set(f.unknown)
        for p in f.rolled_back:
            if p not in acked and (got := sa.validate(db, p.access)["status"]) != "invalid":
                self.violation(f"{name}: a pair of a rolled-back transaction answers {got}")
        for p in f.acked[:-1]:
            got = sa.validate(db, p.access)["status"]
            allowed = {"ok", "revoked"} if p.generation == held.generation - 1 else {"revoked"}
            if got not in allowed:
                self.violation(f"{name}: superseded access token of generation {p.generation} answers {got}")
        if len(f.acked) > 1 and row["in_grace"]:
            self.check_parent_retry(db, f, name)
        r = sa.refresh(db, held.refresh)
        if r["status"] != "ok" or sa.validate(db, r["access_token"])["status"] != "ok":
            self.violation(f"{name}: the acknowledged refresh token answers {r['status']}")
        self.count("final refreshes")

    def check_parent_retry(self, db, f: Family, name: str):
        """The parent of the held pair, presented again inside its grace:
        the held pair once more if no restart came since its rotation
        (rule 2), else `expired` (its retry key is gone); never theft."""
        r = sa.refresh(db, f.acked[-2].refresh)
        may, surely = self.restart_may_have_come_since(f.held_since), self.restart_surely_came_since(f.held_since)
        if r["status"] == "ok" and Pair.of(r) == f.held and not surely:
            self.count("final parent retries answered with the held pair")
        elif r["status"] == "expired" and may:
            self.count("final parent retries expired after a restart")
        else:
            self.violation(f"{name}: its parent, presented again in its grace "
                           f"{'after' if may else 'without'} a restart, answers {answer(r, f.held)}")

    def check_abandoned(self, db, f: Family, row):
        name = f"family {f.user_id} (retry answered expired)"
        if row is None:
            return self.violation(f"{name}: its session row is gone")
        if row["revoked"]:
            self.violation(f"{name}: revoked, but nobody revoked it")
        if row["generation"] != f.held.generation + 1 or bytes(row["parent_refresh_digest"] or b"") != \
                digest(f.held.refresh):
            return self.violation(f"{name}: `expired` although the lost rotation of generation {f.held.generation} "
                                  f"did not commit (the row is at generation {row['generation']})")
        # Presented again inside its grace, the held token (now the parent)
        # is still no theft.
        if row["in_grace"] and (got := sa.refresh(db, f.held.refresh)["status"]) != "expired":
            self.violation(f"{name}: presented again in its grace, the held token answers {got}")

    def check_revoked(self, db, f: Family, row):
        name = f"family {f.user_id} (revoked by its client)"
        if row is None or not row["revoked"]:
            return self.violation(f"{name}: an acknowledged revocation is lost")
        for status in (sa.validate(db, f.held.access)["status"], sa.refresh(db, f.held.refresh)["status"]):
            if status != "revoked":
                self.violation(f"{name}: a token answers {status}")

    def check_stolen(self, db, f: Family, row):
        name = f"family {f.user_id} (stolen)"
        if row is None or not row["revoked"]:
            return self.violation(f"{name}: the reuse revocation is lost (rule 4)")
        n = db.execute("SELECT count(*) AS n FROM session_auth.events WHERE session_id = %s "
                       "AND event = 'reuse_detected'", [f.session_id]).fetchone()["n"]
        if n != 1:
            self.violation(f"{name}: {n} reuse_detected events, not exactly one")

    def check_broken(self, db, f: Family, row):
        pass  # its violation was recorded when it happened

    def check_global(self, db):
        revoked = {str(r["session_id"]) for r in db.execute(
            "SELECT session_id FROM session_auth.sessions WHERE revoked_at IS NOT NULL").fetchall()}
        meant = {f.session_id for f in self.families if f.state in ("revoked", "stolen")}
        if revoked - meant:
            self.violation(f"{len(revoked - meant)} session(s) revoked that no client revoked or stole")
        thefts = {str(r["session_id"]) for r in db.execute(
            "SELECT session_id FROM session_auth.events WHERE event = 'reuse_detected'").fetchall()}
        stolen = {f.session_id for f in self.families if f.state == "stolen"}
        if thefts - stolen:
            self.violation(f"{len(thefts - stolen)} reuse_detected event(s) for families nobody stole")
        self.check_blacklisted_pairs(db)
        for access in self.rolled_back_issues:
            if (got := sa.validate(db, access)["status"]) != "invalid":
                self.violation(f"a session issued in a rolled-back transaction answers {got}")

    def check_blacklisted_pairs(self, db):
        """Every digest on the blacklist of a live family is one of the
        pair its client acknowledged at that generation: a pair it never saw
        superseded there would be a second branch of the lineage. (Read as
        JSON, whatever the table's layout: a row per digest or per pair.)"""
        live = {f.session_id: f for f in self.families if f.state == "live"}
        rows = db.execute("SELECT session_id, generation, to_jsonb(b) AS r FROM session_auth.blacklist b "
                          "WHERE session_id = ANY(%s::uuid[])", [list(live)]).fetchall()
        for row in rows:
            f = live[str(row["session_id"])]
            known = {digest(t) for p in f.acked if p.generation == row["generation"] for t in (p.access, p.refresh)}
            stored = {bytes.fromhex(row["r"][k][2:]) for k in ("digest", "access_digest", "refresh_digest")
                      if row["r"].get(k)}
            if not stored <= known:
                self.violation(f"family {f.user_id}: generation {row['generation']} was superseded with a pair "
                               f"its client never saw: a second branch of the lineage")

    def check_fodder_purged(self, db):
        def expired_left():
            return db.execute(
                "SELECT count(*) AS n FROM session_auth.sessions WHERE user_id = 'fodder' "
                "AND greatest(refresh_expires_at, access_expires_at) < now() - interval '2 s'").fetchone()["n"]
        if not wait_until(lambda: expired_left() == 0, 30, step=0.2):
            self.violation(f"{expired_left()} expired fodder sessions were never purged")

    # -- the report ----------------------------------------------------------

    def log_since_start(self) -> str:
        with open(self.cluster.log_path, "rb") as f:
            f.seek(self.log_offset)
            return f.read().decode("utf-8", errors="replace")

    def report(self) -> str:
        c = self.counts
        log = self.log_since_start()
        kills = ", ".join(f"{c[k]} {k}" for k in self.kinds)
        worst = max(self.recovery_seconds, default=0.0)
        return "\n".join([
            f"torture ({self.seconds:.0f} s, seed {self.seed}):",
            f"  calls: {c['rotations']} rotations acknowledged ({c['savepoint commits']} after a rollback to a "
            f"savepoint), {c['validations']} validations, {c['rolled back rotations']} rotations rolled back, "
            f"{c['rolled back revocations']} revocations and {c['rolled back issues']} issues rolled back, "
            f"{c['revocations']} revocations, {c['thefts']} thefts, {c['issues']} issues, "
            f"{c['fodder sessions']} fodder sessions",
            f"  kills: {kills} ({c['SIGKILL mid-call']} backend SIGKILLs and {c['SIGTERM mid-call']} SIGTERMs "
            f"mid-call, {c['worker SIGKILL during VACUUM']} worker SIGKILLs during its VACUUM)",
            f"  recoveries: {c['recoveries']} (the slowest {worst:.1f} s)",
            f"  lost calls: {c['lost calls']}; retries: {c['retries']} ({c['retries ok']} ok, "
            f"{c['retries expired']} expired after a restart, {c['retries lost']} lost again); "
            f"lost issues: {c['lost issues']}",
            f"  answers forgotten: {c['answers forgotten']} ({c['forgotten answers given again']} given again by "
            f"a retry, {c['forgotten answers expired after a restart']} expired after a restart)",
            f"  purge passes that removed rows: {len(re.findall(r'pg_session_auth purge: removed', log))}, "
            f"worker VACUUMs: {len(re.findall(r'pg_session_auth purge: vacuumed', log))}",
            f"  families: {Counter(f.state for f in self.families)}; final refreshes: {c['final refreshes']}; "
            f"final parent retries: {c['final parent retries answered with the held pair']} with the held pair, "
            f"{c['final parent retries expired after a restart']} expired after a restart",
        ])


# ---------------------------------------------------------------------------
# Clients.

class Client:
    """One application process: one connection at a time, a few families."""

    def __init__(self, torture: Torture, name: str, seed: int):
        self.t = torture
        self.name = name
        self.rng = random.Random(seed)
        self.conn = None
        self.pid = None
        self.serial = 0
        self.families: list = []

    # -- calls ---------------------------------------------------------------

    def connect(self):
        self.conn = connect_retry(self.t.cluster, timeout=RECOVERY_TIMEOUT, user=APP_ROLE,
                                  options=f"-c statement_timeout={STATEMENT_TIMEOUT}")
        self.pid = self.conn.info.backend_pid

    def call(self, fn):
        """fn(conn); ConnectionLost if the connection died meanwhile."""
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.connect()
        with self.t.lock:
            self.t.busy_pids[self.name] = self.pid
        try:
            return fn(self.conn)
        except psycopg.Error as e:
            if self.conn.closed or self.conn.broken:
                self.t.count("lost calls")
                raise ConnectionLost() from e
            raise
        finally:
            with self.t.lock:
                self.t.busy_pids.pop(self.name, None)

    def call_until_answered(self, fn, lost: str = None):
        """fn(conn), again on a new connection each time the connection
        dies, until an answer comes back; `lost` names the counter of calls
        lost on the way. For calls that may be repeated: a read, or a write
        whose repetition answers for the lost attempt."""
        while True:
            try:
                return self.call(fn)
            except ConnectionLost:
                if lost:
                    self.t.count(lost)

    # -- the loop ------------------------------------------------------------

    def run(self):
        try:
            while len(self.families) < FAMILIES_PER_CLIENT:
                self.issue()
            while not self.t.stop.is_set():
                self.step()
            # No kill comes any more: what was forgotten is retried now.
            for family in [f for f in self.families if f.forgotten]:
                self.retry_forgotten(family)
        except Exception as e:  # noqa: BLE001 - reported as a violation, with its type
            self.t.violation(f"client {self.name} failed: {type(e).__name__}: {e}")
        finally:
            if self.conn is not None:
                self.conn.close()

    def step(self):
        due = [f for f in self.families if f.forgotten and self.t.restart_surely_came_since(f.forgotten[0])]
        if due:
            self.retry_forgotten(due[0])
        else:
            ready = [f for f in self.families if not f.forgotten]
            family = self.rng.choice(ready)
            op = self.rng.choices(
                [self.rotate, self.validate, self.rollback_rotation, self.savepoint_rotation,
                 self.rollback_revocation, self.rollback_issue, self.revoke, self.steal, self.forget_answer],
                weights=[50, 20, 6, 6, 3, 3, 2, 2, 2])[0]
            if op == self.steal and len(family.acked) < 3 or op == self.forget_answer and len(ready) < 2:
                op = self.rotate
            op(family)
        # A family revoked, stolen, abandoned (or broken) is replaced by a new login.
        for family in [f for f in self.families if f.state != "live"]:
            self.families.remove(family)
            self.issue()

    def issue(self):
        self.serial += 1
        user_id = f"torture-{self.name}-{self.serial}"
        s = self.call_until_answered(lambda c: sa.issue(c, user_id), lost="lost issues")
        family = Family(user_id, str(s["session_id"]), [Pair.of(s)])
        self.families.append(family)
        self.t.add_family(family)
        self.t.count("issues")

    def expect(self, family: Family, what: str, got, wanted):
        if got != wanted:
            self.t.violation(f"family {family.user_id}: {what} answered {got!r}, not {wanted!r}")
            family.state = "broken"
            return False
        return True

    def rotate(self, family: Family):
        pair = self.rotate_held(family)
        if pair:
            self.acknowledge(family, pair)

    def rotate_held(self, family: Family):
        """Presents the held refresh token: the new pair, or None if the
        call died with its connection (its retry settles the family) or
        answered anything but `ok` (a violation)."""
        sent = self.t.now()
        try:
            r = self.call(lambda c: sa.refresh(c, family.held.refresh))
        except ConnectionLost:
            self.retry(family, sent)
            return None
        if self.expect(family, "a refresh of the held pair", r["status"], "ok"):
            return Pair.of(r)
        return None

    def acknowledge(self, family: Family, pair: Pair):
        if pair.generation != family.held.generation + 1:
            self.t.violation(f"family {family.user_id}: a rotation of generation {family.held.generation} "
                             f"gave generation {pair.generation}")
            family.state = "broken"
            return
        family.acked.append(pair)
        family.held_since = self.t.now()
        self.t.count("rotations")

    def retry(self, family: Family, sent: Moment):
        """The call presenting the held refresh token, `sent` at that
        moment, died with its connection: present it again until an answer
        comes back."""
        for _ in range(20):
            self.t.count("retries")
            try:
                r = self.call(lambda c: sa.refresh(c, family.held.refresh))
            except ConnectionLost:
                self.t.count("retries lost")
                continue
            if r["status"] == "ok":
                self.t.count("retries ok")
                return self.acknowledge(family, Pair.of(r))
            if r["status"] == "expired" and self.t.restart_may_have_come_since(sent):
                self.t.count("retries expired")
                family.state = "abandoned"
                return
            self.t.violation(f"family {family.user_id}: a retry after a lost call answered {r['status']}"
                             + (" without a restart in between" if r["status"] == "expired" else ""))
            family.state = "broken"
            return
        self.t.violation(f"family {family.user_id}: 20 retries all lost their connection")
        family.state = "broken"

    def forget_answer(self, family: Family):
        """A rotation whose answer never reaches the application (its
        process died after the server answered, say): it retries with the
        token it held, at once (the very same pair must come back: rule 2)
        or, for half of them, only after the next restart of the server
        (then its retry key is gone: `expired`, and the session lives on)."""
        sent = self.t.now()
        pair = self.rotate_held(family)
        if pair is None:
            return
        family.unknown.append(pair)
        family.forgotten = (sent, pair)
        self.t.count("answers forgotten")
        if self.rng.random() < 0.5:
            self.retry_forgotten(family)

    def retry_forgotten(self, family: Family):
        sent, forgotten = family.forgotten
        family.forgotten = None
        restarted = self.t.restart_surely_came_since(sent)  # before the retry is sent
        r = self.call_until_answered(lambda c: sa.refresh(c, family.held.refresh))
        if r["status"] == "expired" and self.t.restart_may_have_come_since(sent):
            self.t.count("forgotten answers expired after a restart")
            family.state = "abandoned"
        elif r["status"] == "ok" and Pair.of(r) == forgotten and not restarted:
            self.t.count("forgotten answers given again")
            self.acknowledge(family, forgotten)
        else:
            self.t.violation(f"family {family.user_id}: the retry of a forgotten answer "
                             f"{'after' if restarted else 'without'} a restart answered {answer(r, forgotten)}")
            family.state = "broken"

    def validate(self, family: Family):
        v = self.call_until_answered(lambda c: sa.validate(c, family.held.access))
        self.expect(family, "validate of the held pair", v["status"], "ok")
        self.t.count("validations")

    def in_transaction(self, family: Family, body, commit: bool) -> str:
        """BEGIN; body(conn, seen); then COMMIT or ROLLBACK. `seen` collects
        the pairs the body saw. Returns "done"; "lost" if the connection
        died before the transaction's end was sent (so it rolled back);
        "unknown" if it died during the COMMIT."""
        seen: list = []
        ending = False

        def run(c):
            nonlocal ending
            c.execute("BEGIN")
            body(c, seen)
            ending = True
            c.execute("COMMIT" if commit else "ROLLBACK")
        try:
            self.call(run)
            outcome = "done"
        except ConnectionLost:
            outcome = "unknown" if ending and commit else "lost"
        if outcome == "unknown":
            family.unknown += seen
        elif outcome == "lost" or not commit:
            family.rolled_back += seen
        return outcome

    def rollback_rotation(self, family: Family):
        def body(c, seen):
            r = sa.refresh(c, family.held.refresh)
            if self.expect(family, "a refresh in a transaction", r["status"], "ok"):
                seen.append(Pair.of(r))
                self.expect(family, "validate in the same transaction",
                            sa.validate(c, r["access_token"])["status"], "ok")
        self.in_transaction(family, body, commit=False)
        self.t.count("rolled back rotations")

    def savepoint_rotation(self, family: Family):
        """A rotation rolled back to a savepoint, then done again and
        committed: only the second counts (it may be the very same pair:
        the same parent and retry key derive the same pair)."""
        sent = self.t.now()
        committed: list = []

        def body(c, seen):
            c.execute("SAVEPOINT before_refresh")
            first = sa.refresh(c, family.held.refresh)
            if not self.expect(family, "a refresh in a transaction", first["status"], "ok"):
                return
            first = Pair.of(first)
            seen.append(first)
            c.execute("ROLLBACK TO SAVEPOINT before_refresh")
            seen.remove(first)
            family.rolled_back.append(first)
            second = sa.refresh(c, family.held.refresh)
            if self.expect(family, "a refresh after a rollback to a savepoint", second["status"], "ok"):
                seen.append(Pair.of(second))
                committed.append(Pair.of(second))
        outcome = self.in_transaction(family, body, commit=True)
        if outcome == "unknown":
            return self.retry(family, sent)
        if outcome == "done" and committed and family.state == "live":
            self.acknowledge(family, committed[0])
            self.t.count("savepoint commits")

    def rollback_revocation(self, family: Family):
        def body(c, seen):
            self.expect(family, "a revocation in a transaction", sa.revoke(c, family.held.access), True)
            self.expect(family, "validate after it", sa.validate(c, family.held.access)["status"], "revoked")
        self.in_transaction(family, body, commit=False)
        self.t.count("rolled back revocations")

    def rollback_issue(self, family: Family):
        def body(c, seen):
            s = sa.issue(c, f"torture-{self.name}-rolled-back")
            with self.t.lock:
                self.t.rolled_back_issues.append(s["access_token"])
        self.in_transaction(family, body, commit=False)
        self.t.count("rolled back issues")

    def revoke(self, family: Family):
        attempts = 0

        def revoke_held(c):
            nonlocal attempts
            attempts += 1
            return sa.revoke(c, family.held.access)
        revoked = self.call_until_answered(revoke_held)
        # A repeated call may find the family revoked by the lost one already.
        if attempts == 1:
            self.expect(family, "a revocation", revoked, True)
        if family.state == "live":
            family.state = "revoked"
        self.t.count("revocations")

    def steal(self, family: Family):
        """An attacker replays an ancestor two generations back (reuse, rule
        3), in a transaction that then rolls back or commits: either way the
        family is revoked (rule 4). If the connection dies, the attacker
        replays it again: `reuse_detected`, or `revoked` if the lost call's
        detection took effect already."""
        ancestor = family.acked[-3]

        def body(c, seen):
            self.expect(family, "a replayed ancestor", sa.refresh(c, ancestor.refresh)["status"], "reuse_detected")
        outcome = self.in_transaction(family, body, commit=self.rng.random() < 0.5)
        if outcome != "done" and family.state == "live":
            status = self.call_until_answered(lambda c: sa.refresh(c, ancestor.refresh))["status"]
            if status not in ("reuse_detected", "revoked"):
                self.expect(family, "a replayed ancestor, again", status, "reuse_detected or revoked")
        if family.state == "live":
            family.state = "stolen"
        self.t.count("thefts")


class Fodder:
    """Sessions that expire a second after their issue (and a rotation),
    fifty per statement: the purge worker always has rows to delete and
    tables to VACUUM. (A superuser: the timeouts are superuser settings.)"""

    SQL = ("SELECT count(*) FILTER (WHERE r.status = 'ok') AS ok, count(*) AS n "
           "FROM generate_series(1, 50) g, LATERAL session_issue('fodder') i, "
           "LATERAL session_refresh(i.refresh_token) r")

    def __init__(self, torture: Torture):
        self.t = torture

    def run(self):
        conn = None
        try:
            while not self.t.stop.is_set():
                try:
                    if conn is None or conn.closed or conn.broken:
                        conn = connect_retry(self.t.cluster, timeout=RECOVERY_TIMEOUT, options=(
                            "-c session_auth.idle_timeout=1s -c session_auth.access_ttl=1s "
                            f"-c statement_timeout={STATEMENT_TIMEOUT}"))
                    r = conn.execute(self.SQL).fetchone()
                except psycopg.Error:
                    if conn is not None and (conn.closed or conn.broken):
                        continue
                    raise
                if r["ok"] != r["n"]:
                    self.t.violation(f"fodder: {r['n'] - r['ok']} of {r['n']} fresh sessions did not refresh")
                self.t.count("fodder sessions", r["n"])
                time.sleep(0.05)
        except Exception as e:  # noqa: BLE001
            self.t.violation(f"fodder failed: {type(e).__name__}: {e}")
        finally:
            if conn is not None:
                conn.close()


# ---------------------------------------------------------------------------
# Processes.

def processes_in(directory: Path) -> list:
    """The live processes whose working directory is `directory` (a data
    directory: every server process works there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) == directory and alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def exists(pid: int) -> bool:
    """Whether `pid` is a process, a zombie included."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def alive(pid: int) -> bool:
    """Whether `pid` is a process that still runs (not a zombie)."""
    try:
        return exists(pid) and (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def process_title(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return str(pid)
