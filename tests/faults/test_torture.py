"""Crash torture (issue 19 §1): about a minute of clients rotating,
validating, revoking, issuing, rolling back and stealing while the server
is killed every few seconds in five ways, then every family checked (the
invariants are in torture.py's docstring) and the extension's tables and
indexes checked with amcheck (consistency.py). The counts are printed.

    tests/client/run --suite tests/faults -k torture
    PG_SESSION_AUTH_TORTURE_SECONDS=300 tests/client/run --suite tests/faults -k torture   # longer
    PG_SESSION_AUTH_TORTURE_SEED=1234 ...   # the same random choices again (the timing differs)
"""

import os
import re

import consistency
import torture
from harness import connect_retry

SECONDS = float(os.environ.get("PG_SESSION_AUTH_TORTURE_SECONDS", "60"))
SEED = int(os.environ["PG_SESSION_AUTH_TORTURE_SEED"]) if os.environ.get("PG_SESSION_AUTH_TORTURE_SEED") else None


def test_no_kill_loses_or_corrupts_anything(own_cluster, capsys):
    c = own_cluster(*torture.CONF, crashes_expected=True)
    with c.connect() as db:
        db.execute("CREATE EXTENSION pg_session_auth")

    def say(line):
        with capsys.disabled():
            print(line, flush=True)

    say("")
    t = torture.Torture(c, SECONDS, progress=say, seed=SEED)
    try:
        t.run()
        t.check_families()
        with connect_retry(c) as db:
            say(consistency.assert_consistent(db).summary())
    finally:
        say(t.report())
    every_kind_happened_and_recovered(t)
    assert t.counts["retries"] > 0, "no call died with its connection: the torture tortured nothing"
    log = t.log_since_start()
    assert re.search(r"pg_session_auth purge: removed \d+ blacklist entries, [1-9]", log), \
        "the purge worker removed no session during the torture"
    assert "pg_session_auth purge: vacuumed" in log, "the purge worker never VACUUMed during the torture"
    trouble = torture.trouble_in(log)
    assert not trouble, f"{len(trouble)} bad log line(s), first: {trouble[:3]}"


def every_kind_happened_and_recovered(t):
    missing = [k for k in t.kinds if t.counts[k] == 0]
    assert not missing, f"kills that never happened (a longer torture needed?): {missing}"
    restarts = sum(t.counts[k] for k in torture.RESTARTING)
    assert t.counts["recoveries"] == restarts, \
        f"{restarts} kills that restart the server, but {t.counts['recoveries']} recoveries in the log"
