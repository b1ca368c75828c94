"""The driver matrix (issue 18 §2): the scenario list of scenarios.json,
written once, run through psycopg 3 and asyncpg here and through
node-postgres and postgres.js by node/run_scenarios.mjs (a subprocess,
started first so that it runs while the Python drivers do), all against the
harness's cluster, as an application role granted session_auth_client.

Each driver's observations are checked against the scenarios (matrix.py),
and the four must agree with each other step by step. The scenarios cover
every public function, every status word a primary answers, every SQLSTATE
the raising functions and bad arguments give (SA006 needs a hot standby:
tests/client/test_replica.py; the contract defines no SA004), the composite
of session_require as each driver exposes it, jsonb documents byte for byte,
timestamptz as the driver's date type, NULL tokens, and one prepared
statement of each kind executed 2,000 times on one connection across a
settings change, ALTER EXTENSION ... UPDATE, ANALYZE of the extension's
tables and a search_path / plan_cache_mode change.
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


@pytest.fixture(scope="module")
def run_vars(cluster):
    """The application role, and an event every driver can look up with
    session_event (its id comes from the table, which only a superuser reads)."""
    cluster.create_role(APP_ROLE)
    with cluster.connect() as su:
        su.execute(f"GRANT SET ON PARAMETER {', '.join(SETTINGS)} TO {APP_ROLE}")
        issued = sa.issue(su, "drv:known-event")
        event = su.execute(
            "SELECT event_id FROM session_auth.events WHERE session_id = %s AND event = 'issued'",
            [issued["session_id"]],
        ).fetchone()
    return {"known_event_id": event["event_id"], "known_session_id": str(issued["session_id"]),
            "known_user_id": "drv:known-event"}


@pytest.fixture(scope="module", autouse=True)
def node_run(cluster, run_vars):
    """The Node runner, started before the first test of this module so that
    it runs alongside the Python drivers; yields a function that waits for
    its output."""
    packages.npm_ci(NODE_DIR)
    proc = subprocess.Popen(
        ["node", "run_scenarios.mjs", "--host", str(cluster.dir), "--port", str(cluster.port),
         "--dbname", "postgres", "--user", APP_ROLE, "--admin-user", "postgres", "--vars", json.dumps(run_vars)],
        cwd=NODE_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    done = {}

    def result():
        if not done:
            out, err = proc.communicate(timeout=RUN_TIMEOUT)
            assert proc.returncode == 0, f"run_scenarios.mjs exited {proc.returncode}:\n{err[-3000:]}"
            done.update(json.loads(out)["drivers"])
        return done

    yield result
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module")
def observations(cluster, spec, run_vars, node_run):
    """driver -> its observations; the two Python drivers run together on
    first use, while the Node runner runs too."""
    seen = {}

    def get(driver):
        if driver not in seen:
            if driver in NODE_DRIVERS:
                seen.update(node_run())
            else:
                seen.update(python_runner.run(
                    spec, cluster.conninfo(APP_ROLE), cluster.conninfo("postgres"), run_vars, RUN_TIMEOUT))
        return seen[driver]

    return get


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
    leaked = re.findall(r"pgsa_[a-z]{2}_[A-Za-z0-9_-]{43,}", cluster.log_text())
    assert not leaked, f"{len(leaked)} token-shaped strings in {cluster.log_path}"


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
