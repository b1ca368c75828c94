"""pgbouncer in transaction-pooling mode in front of the primary (issue 16).

Most applications reach PostgreSQL through a pooler, and in transaction
mode a client holds a server connection only for one transaction: the next
transaction of the same client may run in another backend, and the backend
it used goes to another client. Nothing of a session may therefore live in a
connection. These tests run Debian's pgbouncer (bookworm's 1.18 on the host,
trixie's 1.24 in the PostgreSQL 17 chroot; scripts/lib.sh installs it) with
a pool of two server connections in front of the suite's cluster, and show
that the whole public API works through it, from sixteen clients at once,
and that a reuse detection rolled back inside a pooled transaction is still
revoked exactly once, leaving nothing behind in the backend that the next
client gets.

What works (for the README):

- `pool_mode = transaction`, tested here (session mode gives each client a
  connection of its own, and needs none of what follows).
- Prepared statements: pgbouncer before 1.21 cannot follow protocol-level
  named prepared statements across server connections in transaction mode,
  so turn the driver's preparing off (psycopg: `prepare_threshold=None`, as
  here; the driver's equivalent elsewhere). From 1.21, `max_prepared_statements`
  > 0 lets pgbouncer track them. Bind parameters need no named statement
  (unnamed ones work on every version), so tokens still travel as bind
  parameters.
- Settings: the `session_auth.*` policy settings are superuser-only, so the
  application role cannot set them at all. A session-level `SET` (by a
  superuser) stays in the backend that ran it and reaches whichever client
  gets that backend next (`test_a_session_level_set_stays_in_the_backend`);
  use `SET LOCAL` inside a transaction, or `ALTER ROLE/DATABASE ... SET`,
  which a backend reads when pgbouncer opens it (backends already open keep
  the old value until pgbouncer replaces them: `server_lifetime`, or
  `RECONNECT` on its console).
- `LISTEN session_auth` needs a direct connection (or a session pool): a
  transaction-pooled LISTEN listens in a backend the client no longer holds.
  NOTIFYs sent by calls made through the pooler arrive there as usual.

The settings used (`CONF`): a Unix socket only (`listen_addr` empty,
`unix_socket_dir`), `auth_type = trust` with an `auth_file` naming the
roles (pgbouncer 1.18 still wants the name there), `pool_mode =
transaction`, `default_pool_size = 2`, `max_client_conn = 100`, run as the
`postgres` OS user (pgbouncer refuses root).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

import sa
from harness import wait_until

PORT = 6432
POOL_SIZE = 2
CLIENTS = 16
# Rounds per client: enough to keep two backends busy for a second or two
# (not more: every token they see is searched for in the server log at the
# end of the session).
ROUNDS = 60
RUN_SECONDS = 5  # at most, on a slow machine
GRACE = "100ms"  # the thief role's refresh_grace (ALTER ROLE ... SET)
# A pgbouncer left behind by a killed pytest ends by itself after this.
LIFETIME_SECONDS = 600

API_ROLE = "pgb_api"        # the whole API, through the pool of two
CROWD_ROLE = "pgb_crowd"    # sixteen clients, through the pool of two
THIEF_ROLE = "pgb_thief"    # the rolled-back detection, through the pool of one

CONF = """\
[databases]
postgres = host={pg_dir} port={pg_port} dbname=postgres
; one server connection per role: the next client surely gets the backend
; the previous one used
postgres_one = host={pg_dir} port={pg_port} dbname=postgres pool_size=1

[pgbouncer]
listen_addr =
listen_port = {port}
unix_socket_dir = {dir}
auth_type = trust
auth_file = {dir}/userlist.txt
admin_users = postgres
pool_mode = transaction
default_pool_size = {pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 100
logfile = {dir}/pgbouncer.log
"""


@dataclass
class Bouncer:
    dir: Path
    proc: subprocess.Popen
    connections: list = field(default_factory=list)

    def connect(self, user, dbname="postgres", autocommit=True):
        """A client connection through pgbouncer, without server-side
        prepared statements (pgbouncer 1.18 in transaction mode)."""
        conn = psycopg.connect(host=str(self.dir), port=PORT, user=user, dbname=dbname,
                               autocommit=autocommit, row_factory=dict_row, connect_timeout=10,
                               prepare_threshold=None, application_name="pg_session_auth_pgbouncer")
        self.connections.append(conn)
        return conn

    def console(self):
        """pgbouncer's admin console (SHOW POOLS, SHOW SERVERS...)."""
        return self.connect("postgres", dbname="pgbouncer")

    def log_text(self):
        path = self.dir / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else "(no log file)"


def pgbouncer_binary():
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None)
    if not found:
        pytest.fail("pgbouncer is not installed: `apt-get install pgbouncer` (scripts/lib.sh "
                    "ensure_toolchain installs it, and CI runs that); these tests never skip")
    return found


@pytest.fixture(scope="module")
def bouncer(cluster):
    """pgbouncer in front of the suite's cluster, for this module's tests,
    with the roles they use (made before pgbouncer opens any backend for
    them, so every backend reads their ALTER ROLE settings)."""
    for role in (API_ROLE, CROWD_ROLE, THIEF_ROLE):
        cluster.create_role(role)
    with cluster.connect() as su:
        su.execute(f"ALTER ROLE {THIEF_ROLE} SET session_auth.refresh_grace = '{GRACE}'")

    binary = pgbouncer_binary()
    bdir = Path(f"/tmp/pg_session_auth_pgbouncer_{os.getpid()}")
    shutil.rmtree(bdir, ignore_errors=True)
    bdir.mkdir()
    (bdir / "pgbouncer.ini").write_text(CONF.format(
        dir=bdir, port=PORT, pool_size=POOL_SIZE, pg_dir=cluster.dir, pg_port=cluster.port))
    (bdir / "userlist.txt").write_text(
        "".join(f'"{r}" ""\n' for r in ("postgres", API_ROLE, CROWD_ROLE, THIEF_ROLE)))
    as_postgres = {}
    if os.geteuid() == 0:
        for p in (bdir, bdir / "pgbouncer.ini", bdir / "userlist.txt"):
            shutil.chown(p, "postgres", "postgres")
        as_postgres = {"user": "postgres", "group": "postgres", "extra_groups": []}
    # `timeout` passes our SIGTERM on, and ends pgbouncer by itself if
    # nobody does (a killed pytest). Its output goes to a file: a pipe
    # nobody reads would stall it once full.
    with open(bdir / "pgbouncer.out", "wb") as out:
        proc = subprocess.Popen(["timeout", "--kill-after=5", str(LIFETIME_SECONDS), binary,
                                 str(bdir / "pgbouncer.ini")],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd=bdir, **as_postgres)
    b = Bouncer(bdir, proc)
    try:
        up = wait_until(lambda: proc.poll() is not None or _answers(b), 15, step=0.1)
        if not up or proc.poll() is not None:
            _stop(proc)
            why = f"exited {proc.returncode}" if up else "no answer in 15 s"
            output = (bdir / "pgbouncer.out").read_text(errors="replace")
            pytest.fail(f"pgbouncer did not come up ({why})\n--- its output:\n{output}"
                        f"--- {bdir}/pgbouncer.log:\n{b.log_text()}")
        yield b
    finally:
        for conn in b.connections:
            conn.close()
        _stop(proc)
        if os.environ.get("PG_SESSION_AUTH_KEEP_CLUSTER") != "1":
            shutil.rmtree(bdir, ignore_errors=True)


def _answers(b):
    try:
        with psycopg.connect(host=str(b.dir), port=PORT, user="postgres", dbname="pgbouncer",
                             autocommit=True, connect_timeout=2) as conn:
            conn.execute("SHOW VERSION")
        return True
    except psycopg.Error:
        return False


def _stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # pgbouncer's immediate shutdown
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


class Recording:
    """A connection that remembers which session_* functions its statements
    name, so the test can tell which of the public API it has not called."""

    def __init__(self, conn, seen):
        self.conn, self.seen = conn, seen

    def execute(self, query, params=None):
        self.seen.update(re.findall(r"\b(session_[a-z_]+)\s*\(", query))
        return self.conn.execute(query, params)


def public_functions(db):
    """The session_* functions of the extension outside its private schema
    (the ones sql/finalize.sql grants to session_auth_client)."""
    rows = db.execute(
        "SELECT DISTINCT p.proname::text AS name FROM pg_proc p "
        "JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e' "
        "JOIN pg_extension e ON d.refclassid = 'pg_extension'::regclass AND d.refobjid = e.oid "
        "WHERE e.extname = 'pg_session_auth' AND p.pronamespace <> 'session_auth'::regnamespace "
        "AND p.proname LIKE 'session\\_%'").fetchall()
    return {r["name"] for r in rows}


def notes_for(listener, session_id, seconds):
    """The payloads of `session_auth` notifications about one session that
    arrive within `seconds`."""
    got = []
    for n in listener.notifies(timeout=seconds):
        payload = json.loads(n.payload)
        if payload.get("session_id") == str(session_id):
            got.append(payload)
    return got


def raises(sqlstate, fn, *args, **kwargs):
    with pytest.raises(psycopg.Error) as e:
        fn(*args, **kwargs)
    assert e.value.sqlstate == sqlstate, f"{e.value.sqlstate}: {e.value}"


def test_the_whole_public_api_through_pgbouncer(bouncer, db, connect):
    """Two application servers (two client connections) sharing two backends
    call every public function; the calls of one session land in whichever
    backend is free, which is the point."""
    called = set()
    a = Recording(bouncer.connect(API_ROLE), called)
    b = Recording(bouncer.connect(API_ROLE), called)
    listener = connect()  # LISTEN needs a direct connection
    listener.execute("LISTEN session_auth")
    user = "pgb-api-user"

    s = sa.issue(a, user, data={"role": "reader"})
    sid = s["session_id"]
    v = sa.validate(b, s["access_token"])
    assert (v["status"], v["session_id"], v["user_id"], v["data"], v["auth_level"]) == \
        ("ok", sid, user, {"role": "reader"}, 1)
    assert sa.require(a, s["access_token"])["user_id"] == user
    raises("SA005", sa.require, b, s["access_token"], min_auth_level=2)

    # The issued event's NOTIFY, confirmed through the pooler.
    issued = notes_for(listener, sid, 1.0)
    assert [n["event"] for n in issued] == ["issued"], issued
    ev = b.execute("SELECT * FROM session_event(%s)", [issued[0]["event_id"]]).fetchall()
    assert [(e["event"], e["session_id"], e["user_id"]) for e in ev] == [("issued", sid, user)]

    # Rotation, then a retry from "another tab" in the grace window: the
    # very same pair, whichever backend each call ran in.
    r1 = sa.refresh(b, s["refresh_token"])
    assert r1["status"] == "ok" and sa.pair(r1) != sa.pair(s)
    retry = sa.refresh(a, s["refresh_token"])
    assert retry["status"] == "ok" and sa.pair(retry) == sa.pair(r1)
    assert sa.validate(b, s["access_token"])["status"] == "ok", "in-flight requests (rule 6)"
    assert sa.validate(a, r1["access_token"])["status"] == "ok"

    # Step-up: a new pair at level 2, the old one dead at once.
    re2 = sa.reauthenticate(a, r1["access_token"], 2)
    assert re2["session_id"] == sid and sa.pair(re2) != sa.pair(r1)
    assert sa.validate(b, r1["access_token"])["status"] == "revoked"
    assert sa.require(b, re2["access_token"], max_auth_age="1 minute", min_auth_level=2)["auth_level"] == 2

    assert sa.set_data(b, sid, {"role": "editor"}) is True
    assert sa.validate(a, re2["access_token"])["data"] == {"role": "editor"}

    # Other devices of the same user: one logged out by token, one by id,
    # two by "everywhere else".
    s2, s3, s4, s5 = (sa.issue(b, user) for _ in range(4))
    listed = sa.list_sessions(a, user)
    assert [r["session_id"] for r in listed] == [x["session_id"] for x in (s5, s4, s3, s2, s)], "newest first"
    assert listed[-1]["auth_level"] == 2 and listed[-1]["data"] == {"role": "editor"}
    assert sa.revoke(a, s2["refresh_token"]) is True
    assert sa.revoke(b, s2["access_token"]) is False, "idempotent"
    assert sa.validate(a, s2["access_token"])["status"] == "revoked"
    assert sa.revoke_id(b, s3["session_id"]) is True
    assert sa.refresh(a, s3["refresh_token"])["status"] == "revoked"
    assert sa.revoke_user(a, user, keep_session=sid) == 2
    assert [r["session_id"] for r in sa.list_sessions(b, user)] == [sid]
    assert sa.validate(b, s5["access_token"])["status"] == "revoked"

    purged = b.execute("SELECT session_purge() AS n").fetchone()["n"]
    assert isinstance(purged, int) and purged >= 0

    assert sa.revoke(a, re2["access_token"]) is True
    assert sa.validate(b, re2["access_token"])["status"] == "revoked"
    raises("SA003", sa.require, a, re2["access_token"])
    assert sa.list_sessions(a, user) == []

    public = public_functions(db)
    assert called == public, (f"public functions not called through pgbouncer: {sorted(public - called)}; "
                              f"called but not public: {sorted(called - public)}")


def test_sixteen_clients_over_two_server_connections(bouncer, db):
    """Sixteen clients log in, then validate, refresh, retry a refresh in the
    grace window and validate the superseded access token (in-flight
    requests) as fast as they can, all at once through a pool of two
    backends. Nobody is logged out, nothing fails, and no more than two
    backends serve them."""
    console = bouncer.console()
    connected = threading.Barrier(CLIENTS + 1)
    finished = threading.Event()  # clients stay connected until sampled
    results = [None] * CLIENTS

    def client(i):
        errors, pids, rounds = [], set(), 0
        try:
            conn = bouncer.connect(CROWD_ROLE)
        except psycopg.Error as e:
            results[i] = ([f"connect: {e}"], pids, rounds, None)
            connected.wait(timeout=30)
            return
        connected.wait(timeout=30)
        deadline = time.monotonic() + RUN_SECONDS
        current = None
        try:
            current = sa.issue(conn, f"pgb-crowd-{i}")
            while rounds < ROUNDS and time.monotonic() < deadline:
                pids.add(conn.execute("SELECT pg_backend_pid() AS p").fetchone()["p"])
                if (v := sa.validate(conn, current["access_token"]))["status"] != "ok":
                    errors.append(f"round {rounds}: validate {v['status']}")
                    break
                nxt = sa.refresh(conn, current["refresh_token"])
                if nxt["status"] != "ok":
                    errors.append(f"round {rounds}: refresh {nxt['status']}")
                    break
                if rounds % 3 == 0:
                    again = sa.refresh(conn, current["refresh_token"])
                    if again["status"] != "ok" or sa.pair(again) != sa.pair(nxt):
                        errors.append(f"round {rounds}: retry in the grace {again['status']}, other pair")
                        break
                if (old := sa.validate(conn, current["access_token"]))["status"] != "ok":
                    errors.append(f"round {rounds}: superseded access token {old['status']} in the grace")
                    break
                current, rounds = nxt, rounds + 1
        except psycopg.Error as e:
            errors.append(f"round {rounds}: {e.sqlstate} {e}")
        except Exception as e:  # noqa: BLE001 - reported below, not lost in a thread
            errors.append(f"round {rounds}: {e!r}")
        results[i] = (errors, pids, rounds, current)
        finished.wait(timeout=60)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        connected.wait(timeout=30)
        samples = []
        end = time.monotonic() + RUN_SECONDS
        while not samples or (time.monotonic() < end and None in results):
            pools = [p for p in console.execute("SHOW POOLS").fetchall()
                     if p["database"] == "postgres" and p["user"] == CROWD_ROLE]
            servers = [s for s in console.execute("SHOW SERVERS").fetchall() if s["user"] == CROWD_ROLE]
            db.execute("SELECT pg_stat_clear_snapshot()")
            backends = db.execute("SELECT count(*) AS n FROM pg_stat_activity WHERE usename = %s",
                                  [CROWD_ROLE]).fetchone()["n"]
            clients = sum(p["cl_active"] + p["cl_waiting"] for p in pools)
            waiting = sum(p["cl_waiting"] for p in pools)
            samples.append((clients, waiting, len(servers), backends))
            time.sleep(0.05)
    finally:
        finished.set()
        for t in threads:
            t.join(timeout=60)

    failed = {i: r[0] if r else "no result" for i, r in enumerate(results) if r is None or r[0]}
    assert not failed, f"clients failed: {failed}"
    assert all(r[2] >= 1 for r in results), f"a client never got a round done: {[r[2] for r in results]}"
    # (clients connected, clients waiting for a backend, pgbouncer's servers, backends)
    assert all(c == CLIENTS for c, _, _, _ in samples), f"all {CLIENTS} clients connected throughout: {samples}"
    assert max(w for _, w, _, _ in samples) > 0, f"clients queued for the two backends: {samples}"
    assert max(s for _, _, s, _ in samples) <= POOL_SIZE, f"pgbouncer's servers: {samples}"
    assert max(b for _, _, _, b in samples) <= POOL_SIZE, f"backends of {CROWD_ROLE}: {samples}"
    served_by = set().union(*(r[1] for r in results))
    assert 1 <= len(served_by) <= POOL_SIZE, f"backends that answered the clients: {sorted(served_by)}"

    # Nobody was logged out: every client's last pair works, every session is
    # listed, and no session of the crowd has an event but its login.
    for i, (_, _, _, current) in enumerate(results):
        assert sa.validate(db, current["access_token"])["status"] == "ok", f"client {i}"
        assert [r["session_id"] for r in sa.list_sessions(db, f"pgb-crowd-{i}")] == [current["session_id"]]
    events = db.execute("SELECT event, count(*) AS n FROM session_auth.events "
                        "WHERE user_id LIKE 'pgb-crowd-%' GROUP BY event").fetchall()
    assert {e["event"]: e["n"] for e in events} == {"issued": CLIENTS}, events


def test_rolled_back_reuse_detection_through_pgbouncer(bouncer, db, connect):
    """A stolen refresh token replayed in a transaction that the application
    rolls back, through a pool of one backend: the session still ends
    revoked with one reuse_detected event and one NOTIFY (rule 4), and the
    next client, handed that very backend, finds nothing of it: no open
    transaction, no setting, no listener, no prepared statement, and its own
    session works."""
    listener = connect()
    listener.execute("LISTEN session_auth")
    victim_app = bouncer.connect(THIEF_ROLE, dbname="postgres_one")
    grace = victim_app.execute("SELECT current_setting('session_auth.refresh_grace') AS g").fetchone()["g"]
    assert grace == GRACE, "ALTER ROLE ... SET reaches the backends pgbouncer opens"
    victim = sa.issue(victim_app, "pgb-victim")
    sid = victim["session_id"]
    rotated = sa.refresh(victim_app, victim["refresh_token"])
    assert rotated["status"] == "ok"
    time.sleep(0.3)  # past the grace (100 ms) and the race window (100 ms)
    notes_for(listener, sid, 0.2)  # the issued notification

    thief = bouncer.connect(THIEF_ROLE, dbname="postgres_one", autocommit=False)
    thief_pid = thief.execute("SELECT pg_backend_pid() AS p").fetchone()["p"]
    assert sa.refresh(thief, victim["refresh_token"])["status"] == "reuse_detected"
    assert sa.validate(thief, rotated["access_token"])["status"] == "revoked", "in the transaction"
    thief.rollback()  # the application raised on the status; the driver rolled back

    def outcome():
        row = db.execute(
            "SELECT revoked_at IS NOT NULL AS revoked, (SELECT count(*) FROM session_auth.events e "
            "  WHERE e.session_id = s.session_id AND e.event = 'reuse_detected') AS events "
            "FROM session_auth.sessions s WHERE session_id = %s", [sid]).fetchone()
        return row["revoked"], row["events"]

    assert wait_until(lambda: outcome() == (True, 1), 15), f"revoked despite the rollback: {outcome()}"
    notes = notes_for(listener, sid, 1.0)  # time for a second, wrong, revocation to show
    assert outcome() == (True, 1)
    assert [n["event"] for n in notes] == ["reuse_detected"], notes
    assert sa.validate(victim_app, rotated["access_token"])["status"] == "revoked"
    assert sa.refresh(victim_app, rotated["refresh_token"])["status"] == "revoked"

    # The next client gets the thief's backend, and nothing in it.
    nxt = bouncer.connect(THIEF_ROLE, dbname="postgres_one")
    state = nxt.execute(
        "SELECT pg_backend_pid() AS pid, txid_current_if_assigned() AS xid, "
        "  current_setting('session_auth.refresh_grace') AS grace, "
        "  (SELECT count(*) FROM pg_listening_channels()) AS listening, "
        "  (SELECT count(*) FROM pg_prepared_statements) AS prepared, "
        "  (SELECT count(*) FROM pg_prepared_xacts) AS prepared_xacts, "
        "  pg_my_temp_schema() AS temp_schema").fetchone()
    assert state == {"pid": thief_pid, "xid": None, "grace": GRACE, "listening": 0, "prepared": 0,
                     "prepared_xacts": 0, "temp_schema": 0}, state
    mine = sa.issue(nxt, "pgb-next-client")
    step = sa.refresh(nxt, mine["refresh_token"])
    assert step["status"] == "ok"
    assert sa.validate(nxt, step["access_token"])["status"] == "ok"
    again = sa.refresh(nxt, step["refresh_token"])
    assert again["status"] == "ok"
    assert sa.require(nxt, again["access_token"])["user_id"] == "pgb-next-client"
    events = db.execute("SELECT event FROM session_auth.events WHERE session_id = %s",
                        [mine["session_id"]]).fetchall()
    assert [e["event"] for e in events] == ["issued"], events
    servers = [s for s in bouncer.console().execute("SHOW SERVERS").fetchall() if s["user"] == THIEF_ROLE]
    assert len(servers) == 1, f"one backend served the victim, the thief and the next client: {servers}"


def test_a_session_level_set_stays_in_the_backend(bouncer):
    """Why the README says SET LOCAL or ALTER ROLE/DATABASE SET behind a
    transaction pooler: a superuser's session-level SET of a policy setting
    outlives its transaction in the backend, and the next client handed that
    backend inherits it; SET LOCAL ends with its transaction. (The
    application role can set neither: the settings are superuser-only.)"""
    first = bouncer.connect("postgres", dbname="postgres_one")
    second = bouncer.connect("postgres", dbname="postgres_one")
    first.execute("SET session_auth.access_ttl = '1min'")
    try:
        assert second.execute("SHOW session_auth.access_ttl").fetchone()["session_auth.access_ttl"] == "1min", \
            "another client inherits a session-level SET"
    finally:
        second.execute("RESET session_auth.access_ttl")
    with second.transaction():
        second.execute("SET LOCAL session_auth.access_ttl = '2min'")
        s = sa.issue(second, "pgb-set-local")
        lifetime = second.execute("SELECT %s::timestamptz - statement_timestamp() AS t",
                                  [s["access_expires_at"]]).fetchone()["t"]
        assert 100 <= lifetime.total_seconds() <= 120, lifetime
    assert first.execute("SHOW session_auth.access_ttl").fetchone()["session_auth.access_ttl"] == "15min"
    restricted = bouncer.connect(API_ROLE)
    raises("42501", restricted.execute, "SET session_auth.access_ttl = '1d'")
