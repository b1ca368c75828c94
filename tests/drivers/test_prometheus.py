"""Monitoring with Prometheus (issue 18 §3): Debian's
prometheus-postgres-exporter runs contrib/prometheus/queries.yaml against a
database of the harness's cluster, on 127.0.0.1 and the cluster's Unix
socket, as a role granted what the README's operating notes say and nothing
else. The test makes sessions live, revoked, reused (a theft detection) and
expired, and a purge pass by session_purge(), scrapes /metrics, and finds
each value; then `promtool test rules` evaluates contrib/prometheus/alerts.yaml
on the scraped series.

The database is one of its own (`monitored`): the purge worker serves
`postgres`, so here only session_purge() records passes, and the counts are
this test's alone. Installs the exporter with apt-get if it is missing (its
init script starts nothing without a DATA_SOURCE_NAME); promtool comes from
Debian's `prometheus` package, unpacked under /tmp rather than installed,
since installing it would install a Prometheus server service too.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

import packages
import sa
from harness import REPO, wait_until

EXPORTER = Path("/usr/bin/prometheus-postgres-exporter")
PROMTOOL_DIR = Path("/tmp/pg_session_auth_promtool")
QUERIES = REPO / "contrib" / "prometheus" / "queries.yaml"
ALERTS = REPO / "contrib" / "prometheus" / "alerts.yaml"
DATABASE = "monitored"
MONITOR = "prometheus"
# The README's grants for the exporter's role (operating notes).
MONITOR_GRANTS = [
    f"GRANT USAGE ON SCHEMA session_auth TO {MONITOR}",
    f"GRANT SELECT ON session_auth.stats TO {MONITOR}",
]
SHORT = "1s"  # idle timeout of the sessions made to expire
EVENT_KINDS = ["issued", "reuse_detected", "revoked", "revoked_user", "reauthenticated", "evicted"]


@pytest.fixture(scope="module")
def exporter_binary() -> Path:
    if not EXPORTER.exists():
        packages.apt_install("prometheus-postgres-exporter")
    return EXPORTER


@pytest.fixture(scope="module")
def promtool() -> Path:
    return packages.unpacked("prometheus", "usr/bin/promtool", PROMTOOL_DIR)


@pytest.fixture(scope="module")
def monitored(cluster):
    """The database with the extension, and the monitoring role with the README's grants."""
    with cluster.connect() as su:
        su.execute(f"CREATE DATABASE {DATABASE}")
        su.execute(f"CREATE ROLE {MONITOR} LOGIN")
    with cluster.connect(dbname=DATABASE) as su:
        su.execute("CREATE EXTENSION pg_session_auth")
        for grant in MONITOR_GRANTS:
            su.execute(grant)
    return DATABASE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Straight to the loopback address, whatever proxy the environment names.
LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str) -> str:
    with LOOPBACK.open(url, timeout=10) as response:
        return response.read().decode()


@pytest.fixture(scope="module")
def exporter(cluster, monitored, exporter_binary):
    """The exporter on 127.0.0.1:<free port>, connected through the socket; yields /metrics' URL."""
    port = free_port()
    log = open(cluster.dir / "exporter.log", "w")
    dsn = f"host={cluster.dir} port={cluster.port} user={MONITOR} dbname={monitored} sslmode=disable"
    proc = subprocess.Popen(
        [str(exporter_binary), f"--web.listen-address=127.0.0.1:{port}", f"--extend.query-path={QUERIES}",
         "--disable-default-metrics", "--disable-settings-metrics"],
        env={**os.environ, "DATA_SOURCE_NAME": dsn}, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/metrics"

    def answers():
        try:
            return "pg_up" in get(url)
        except OSError:
            return proc.poll() is not None  # stop waiting if it died
    try:
        assert wait_until(answers, timeout=20) and proc.poll() is None, \
            f"the exporter did not come up: {(cluster.dir / 'exporter.log').read_text()[-2000:]}"
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text format -> {(name, frozenset of (label, value)): value}."""
    samples = {}
    for line in text.splitlines():
        m = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if not m or line.startswith("#"):
            continue
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def sample(samples: dict, name: str, **labels) -> float:
    """The one sample of `name` whose labels include `labels`."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) == 1, f"{len(found)} samples of {name}{labels}"
    return found[0]


@contextmanager
def short_lived(conn):
    """Sessions issued or refreshed inside expire (idle timeout) in SHORT."""
    conn.execute(f"SET session_auth.idle_timeout = '{SHORT}'")
    try:
        yield
    finally:
        conn.execute("RESET session_auth.idle_timeout")


def wait_expired(conn, session_id) -> None:
    stored = "SELECT refresh_expires_at <= statement_timestamp() AS e FROM session_auth.sessions WHERE session_id = %s"
    assert wait_until(lambda: conn.execute(stored, [session_id]).fetchone()["e"], timeout=10)


@pytest.fixture(scope="module")
def scraped(cluster, monitored, exporter):
    """The workload, then one scrape: (samples, the stats view as the superuser
    read it, facts the test knows)."""
    db = cluster.connect(dbname=monitored)
    # Purged below: a session rotated once, so the blacklist holds its first pair.
    with short_lived(db):
        purged = sa.issue(db, "mon:purged")
        assert sa.refresh(db, purged["refresh_token"])["status"] == "ok"
    # Live: four sessions; one revoked by logout.
    live = [sa.issue(db, f"mon:user{i}") for i in range(4)]
    assert sa.revoke(db, live[0]["access_token"]) is True
    # Reuse: the first refresh token presented after its child was rotated.
    stolen = sa.issue(db, "mon:victim")
    child = sa.refresh(db, stolen["refresh_token"])
    assert sa.refresh(db, child["refresh_token"])["status"] == "ok"
    assert sa.refresh(db, stolen["refresh_token"])["status"] == "reuse_detected"
    wait_expired(db, purged["session_id"])
    purgeable_blacklist = db.execute(
        "SELECT count(*) AS n FROM session_auth.blacklist WHERE session_id = %s", [purged["session_id"]]
    ).fetchone()["n"]
    purged_at = time.monotonic()  # before the call: the pass is dated by its statement's start
    assert db.execute("SELECT session_purge() AS n").fetchone()["n"] > 0
    # Expired but not purged: made after the purge pass.
    with short_lived(db):
        expired = sa.issue(db, "mon:expired")
    wait_expired(db, expired["session_id"])
    truth = db.execute("SELECT * FROM session_auth.stats").fetchone()
    samples = parse_metrics(get(exporter))
    facts = {"issued": 7, "purgeable_blacklist": purgeable_blacklist, "since_purge": time.monotonic() - purged_at}
    return samples, truth, facts


def test_the_exporter_reports_sessions_blacklist_and_events(scraped):
    samples, truth, facts = scraped
    health = {n: sample(samples, n) for n in ("pg_up", "pg_exporter_last_scrape_error",
                                              "pg_exporter_user_queries_load_error")}
    assert health == {"pg_up": 1, "pg_exporter_last_scrape_error": 0, "pg_exporter_user_queries_load_error": 0}, \
        "the exporter could not run queries.yaml (see exporter.log in the cluster's directory)"
    sessions = {s: sample(samples, "pg_session_auth_sessions_count", datname=DATABASE, state=s)
                for s in ("live", "revoked", "expired")}
    # 4 issued - 1 logout; revoked: the logout and the reuse's victim; expired: not purged yet.
    assert sessions == {"live": 3, "revoked": 2, "expired": 1}
    blacklist = sample(samples, "pg_session_auth_blacklist_entries", datname=DATABASE)
    assert blacklist == truth["blacklist_entries"] > 0
    events = {k: sample(samples, "pg_session_auth_events_last_hour", datname=DATABASE, event=k) for k in EVENT_KINDS}
    assert events == {**dict.fromkeys(EVENT_KINDS, 0), "issued": facts["issued"], "reuse_detected": 1, "revoked": 1}
    assert events == {k: truth["events_last_hour"].get(k, 0) for k in EVENT_KINDS}


def test_the_exporter_reports_the_last_purge_pass(scraped):
    samples, truth, facts = scraped
    labels = {"datname": DATABASE, "served_by_worker": "false"}  # the worker serves `postgres`
    purge = {m: sample(samples, f"pg_session_auth_purge_{m}", **labels)
             for m in ("last_age_seconds", "last_duration_seconds", "last_batches", "interval_seconds")}
    assert 0 <= purge["last_age_seconds"] <= facts["since_purge"] + 0.1, purge  # 0.1: two clocks
    assert purge["last_duration_seconds"] == pytest.approx(truth["last_purge_duration"].total_seconds(), abs=1e-6)
    assert purge["last_batches"] == 1  # session_purge() is one batch
    assert purge["interval_seconds"] == 60  # the default 1min
    removed = {k: sample(samples, "pg_session_auth_purge_last_removed", datname=DATABASE, kind=k)
               for k in ("sessions", "blacklist", "events")}
    assert facts["purgeable_blacklist"] > 0
    assert removed == {"sessions": 1, "blacklist": facts["purgeable_blacklist"], "events": 0}


def test_the_monitoring_role_reads_the_counts_and_nothing_else(cluster, monitored):
    """Least privilege: the README's two grants give the view, not the tables
    (digests, user ids) nor the functions."""
    with cluster.connect(MONITOR, monitored) as mon:
        assert mon.execute("SELECT live_sessions FROM session_auth.stats").fetchone() is not None
        for sql in ["SELECT count(*) FROM session_auth.sessions", "SELECT count(*) FROM session_auth.blacklist",
                    "SELECT count(*) FROM session_auth.events", "SELECT * FROM session_validate('x')",
                    "SELECT session_purge()"]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                mon.execute(sql)


def series(name: str, labels: dict) -> str:
    return name + "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def labels_of(samples: dict, name: str, **match) -> dict:
    found = [dict(ls) for (n, ls) in samples if n == name and set(match.items()) <= ls]
    assert len(found) == 1, f"{len(found)} samples of {name}{match}"
    return found[0]


def alert_test(alert: str, inputs: list[tuple[str, float]], firing: list[dict]) -> dict:
    """A promtool unit test: `inputs` constant for ten minutes; at 5m `alert`
    fires for exactly the label sets in `firing`."""
    return {
        "interval": "1m",
        "input_series": [{"series": s, "values": f"{v}x10"} for s, v in inputs],
        "promql_expr_test": [{
            "expr": f'ALERTS{{alertname="{alert}", alertstate="firing"}}',
            "eval_time": "5m",
            "exp_samples": [{"labels": series("ALERTS", {"alertname": alert, "alertstate": "firing", **ls}), "value": 1}
                            for ls in firing],
        }],
    }


def test_the_alert_rules_fire_on_the_scraped_series(scraped, promtool, tmp_path):
    """alerts.yaml on the exporter's own series: the scraped reuse detection
    fires, none does not; the purge age fires past 3 x purge_interval where
    the worker serves the database, not before, and never where it does not
    (as scraped here)."""
    samples, _, _ = scraped
    events, age, interval = ("pg_session_auth_events_last_hour", "pg_session_auth_purge_last_age_seconds",
                             "pg_session_auth_purge_interval_seconds")
    reuse = labels_of(samples, events, event="reuse_detected")
    scraped_age = labels_of(samples, age)
    served = {**scraped_age, "served_by_worker": "true"}
    tests = [
        alert_test("SessionAuthRefreshTokenReuse", [(series(events, reuse), sample(samples, events, **reuse))],
                   [{**reuse, "severity": "warning"}]),
        alert_test("SessionAuthRefreshTokenReuse", [(series(events, reuse), 0)], []),
        alert_test("SessionAuthPurgeStalled", [(series(age, served), 181), (series(interval, served), 60)],
                   [{**served, "severity": "warning"}]),
        alert_test("SessionAuthPurgeStalled", [(series(age, served), 179), (series(interval, served), 60)], []),
        alert_test("SessionAuthPurgeStalled", [(series(age, scraped_age), 10_000),
                                               (series(interval, scraped_age), 60)], []),
    ]
    spec = tmp_path / "alerts_test.yaml"  # JSON is YAML
    spec.write_text(json.dumps({"rule_files": [str(ALERTS)], "evaluation_interval": "1m", "tests": tests}))
    check = subprocess.run([str(promtool), "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    result = subprocess.run([str(promtool), "test", "rules", str(spec)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
