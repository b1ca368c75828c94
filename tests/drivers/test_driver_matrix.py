"""The driver matrix (issue 18 §2): the scenario list of scenarios.json,
written once, run through psycopg 3 and asyncpg here and through
node-postgres and postgres.js by node/run_scenarios.mjs (one subprocess
per driver, started first so that they run while the Python drivers do),
all against the harness's cluster, each driver in a database of its own
(the last scenario drops and creates the extension), as an application role
granted session_auth_client.

Each driver's observations are checked against the scenarios (matrix.py),
and the four must agree with each other step by step. The scenarios cover
every public function, every status word a primary answers, every SQLSTATE
the raising functions and bad arguments give (SA006 needs a hot standby:
tests/client/test_replica.py; the contract defines no SA004), the composite
of session_require as each driver exposes it, jsonb documents byte for byte,
timestamptz as the driver's date type, NULL tokens, and one prepared
statement of each kind executed 2,000 times on one connection across a
settings change, DROP EXTENSION and CREATE EXTENSION (new oids for every
function and table: the server must re-plan the driver's statements, which
the driver keeps), ANALYZE of the extension's tables and a search_path /
plan_cache_mode change.

No token leaves a runner or reaches the server log: the runners search
every raw error text for matrix.TOKEN_SHAPE before they redact it, and the
tests search the runners' whole output and the server log for it.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

import matrix
import packages
import python_runner
import sa

NODE_DIR = Path(__file__).with_name("node")
APP_ROLE = "drv_app"
# The settings the scenarios change within their session (SUSET: a grant
# lets the application role set them, as a DBA would only in a test).
SETTINGS = ["session_auth.access_ttl", "session_auth.idle_timeout", "session_auth.refresh_grace",
            "session_auth.max_sessions_per_user"]
RUN_TIMEOUT = 120  # seconds a runner may take (each takes a few)
DRIVERS = ["psycopg", "asyncpg", "node-postgres", "postgres.js"]
NODE_DRIVERS = ["node-postgres", "postgres.js"]  # node/run_scenarios.mjs; the others python_runner.py


@pytest.fixture(scope="module")
def spec():
    return matrix.load_spec()


def database_of(driver: str) -> str:
    return "drv_" + re.sub(r"\W", "_", driver)


def known_event(cluster, dbname: str) -> dict:
    """An event every driver can look up with session_event (its id comes
    from the table, which only a superuser reads): the run variables."""
    with cluster.connect(dbname=dbname) as su:
        issued = sa.issue(su, "drv:known-event")
        event = su.execute(
            "SELECT event_id FROM session_auth.events WHERE session_id = %s AND event = 'issued'",
            [issued["session_id"]],
        ).fetchone()
    return {"known_event_id": event["event_id"], "known_session_id": str(issued["session_id"]),
            "known_user_id": "drv:known-event"}


def driver_database(cluster, driver: str) -> python_runner.Target:
    """A database of the driver's own with the extension, and its target."""
    dbname = database_of(driver)
    with cluster.connect() as su:
        su.execute(f"CREATE DATABASE {dbname}")
    with cluster.connect(dbname=dbname) as su:
        su.execute("CREATE EXTENSION pg_session_auth")
    return python_runner.Target(cluster.conninfo(APP_ROLE, dbname), cluster.conninfo("postgres", dbname),
                                known_event(cluster, dbname))


@pytest.fixture(scope="module")
def targets(cluster) -> dict[str, python_runner.Target]:
    """The application role, and per driver a database of its own with the
    extension (the scenarios drop and create it there, which would pull the
    sessions from under the other drivers in a shared one)."""
    cluster.create_role(APP_ROLE)
    with cluster.connect() as su:
        su.execute(f"GRANT SET ON PARAMETER {', '.join(SETTINGS)} TO {APP_ROLE}")
    return {driver: driver_database(cluster, driver) for driver in DRIVERS}


@pytest.fixture(scope="module", autouse=True)
def node_run(cluster, targets):
    """The Node runner, one process per Node driver, started before the first
    test of this module so that they run alongside the Python drivers; yields
    a function that waits for their output: driver -> (observations, the
    process's whole output)."""
    packages.npm_ci(NODE_DIR)
    procs = {
        driver: subprocess.Popen(
            ["node", "run_scenarios.mjs", "--driver", driver, "--host", str(cluster.dir), "--port", str(cluster.port),
             "--dbname", targets[driver].conninfo["dbname"], "--user", APP_ROLE, "--admin-user", "postgres",
             "--vars", json.dumps(targets[driver].run_vars), "--token-shape", matrix.TOKEN_SHAPE.pattern],
            cwd=NODE_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for driver in NODE_DRIVERS
    }
    done = {}

    def result():
        for driver, proc in procs.items():
            if driver not in done:
                out, err = proc.communicate(timeout=RUN_TIMEOUT)
                assert proc.returncode == 0, f"run_scenarios.mjs ({driver}) exited {proc.returncode}:\n{err[-3000:]}"
                done[driver] = (json.loads(out)["drivers"][driver], out + err)
        return done

    yield result
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


class Observations:
    """driver -> its observations (call it), and the runner's whole output
    as it came (raw_output); the two Python drivers run together on first
    use, while the Node runners run too."""

    def __init__(self, spec: dict, targets: dict, node_run) -> None:
        self.spec, self.targets, self.node_run = spec, targets, node_run
        self.seen: dict[str, tuple[dict, str]] = {}

    def __call__(self, driver: str) -> dict:
        return self.run(driver)[0]

    def raw_output(self, driver: str) -> str:
        return self.run(driver)[1]

    def run(self, driver: str) -> tuple[dict, str]:
        if driver not in self.seen:
            if driver in NODE_DRIVERS:
                self.seen.update(self.node_run())
            else:
                python_targets = {d: self.targets[d] for d in DRIVERS if d not in NODE_DRIVERS}
                for name, obs in python_runner.run(self.spec, python_targets, RUN_TIMEOUT).items():
                    self.seen[name] = (obs, json.dumps(obs))
        return self.seen[driver]


@pytest.fixture(scope="module")
def observations(spec, targets, node_run):
    return Observations(spec, targets, node_run)


def report(failures, limit=25):
    shown = "\n".join(failures[:limit])
    more = f"\n... and {len(failures) - limit} more" if len(failures) > limit else ""
    return f"{len(failures)} failure(s):\n{shown}{more}"


@pytest.mark.parametrize("driver", DRIVERS)
def test_driver_runs_every_scenario_as_the_contract_says(driver, spec, observations):
    failures = matrix.check(spec, observations(driver))
    assert not failures, report(failures)


def test_the_four_drivers_see_the_same_answers(observations):
    reference = matrix.signature(observations(DRIVERS[0]))
    for driver in DRIVERS[1:]:
        other = matrix.signature(observations(driver))
        assert len(other) == len(reference), f"{driver} made {len(other)} steps, {DRIVERS[0]} {len(reference)}"
        differing = [(a, b) for a, b in zip(reference, other) if a != b]
        assert not differing, f"{driver} differs from {DRIVERS[0]} at:\n{differing[0][0]}\n{differing[0][1]}"


def test_no_driver_put_a_token_into_the_server_log(cluster, observations):
    """Every token travelled as a bind parameter: the log of statements
    (log_statement = 'all') shows none, whichever driver sent it: nothing
    shaped like a token is there (the runners keep tokens to themselves, so
    this looks for the shape, not for values)."""
    for driver in DRIVERS:
        observations(driver)
    leaked = matrix.TOKEN_SHAPE.findall(cluster.log_text())
    assert not leaked, f"{len(leaked)} token-shaped strings in {cluster.log_path}"


def test_no_token_left_a_runner(observations):
    """The runners' whole output, as it came (the Node processes' stdout and
    stderr, the Python observations): labels, never a token. Together with
    each error's token_shaped (matrix.py), which the runners took from the
    raw texts before redacting them."""
    for driver in DRIVERS:
        leaked = matrix.TOKEN_SHAPE.findall(observations.raw_output(driver))
        assert not leaked, f"{len(leaked)} token-shaped strings in the output of {driver}'s runner"


def test_the_token_shape_is_the_one_of_the_extensions_tokens(db):
    """matrix.TOKEN (exact) and TOKEN_SHAPE (what the leak searches use) fit
    the tokens the installed extension issues: were their length to change
    (src/token.rs, TOKEN_LEN), this fails rather than the searches going blind."""
    pair = sa.issue(db, "drv:token-shape")
    for token in (pair["access_token"], pair["refresh_token"]):
        assert len(token) == matrix.TOKEN_LENGTH
        assert matrix.TOKEN.fullmatch(token)
        assert matrix.TOKEN_SHAPE.search(f"a message quoting {token}.")


# What the scenarios must reach on a primary. SA006 (not replayed) needs a
# hot standby (tests/client/test_replica.py); the contract has no SA004.
SQLSTATES = {"SA001", "SA002", "SA003", "SA005", "22004", "22023"}


def test_the_scenarios_cover_every_function_status_and_sqlstate(cluster, spec, observations):
    """Against the installed extension, not a list kept here: a function added
    to it fails this test until a scenario calls it."""
    with cluster.connect() as su:
        functions = {r["proname"] for r in su.execute(
            "SELECT p.proname FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e' "
            "JOIN pg_extension e ON e.oid = d.refobjid "
            "WHERE e.extname = 'pg_session_auth' AND p.pronamespace <> 'session_auth'::regnamespace")}
    called = {f for call in spec["calls"].values() for f in re.findall(r"\b(session_\w+)\(", call["sql"])}
    assert functions - called == set(), "public functions no scenario calls"
    statuses, sqlstates = matrix.reached(observations(DRIVERS[0]))
    for name, call in spec["calls"].items():
        if "statuses" in call:
            assert statuses.get(name, set()) == set(call["statuses"]), f"statuses of {name}"
    assert sqlstates == SQLSTATES
