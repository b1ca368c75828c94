"""Checks what one driver saw (an observation from python_runner.py or
node/run_scenarios.mjs) against tests/drivers/scenarios.json, and reduces
an observation to what every driver must see alike (`signature`).

The expectations live in the scenario file; the rules every call obeys
whatever the scenario (the contract's) are here: column names and order,
the driver's native type for each PostgreSQL type, status words, NULL
columns next to a status other than ok, token prefixes, no token in an
error message."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

SPEC_PATH = Path(__file__).with_name("scenarios.json")

# How each driver exposes each PostgreSQL type (the runners report the
# native type's name). jsonb is text because the runners ask for it raw;
# node-postgres and postgres.js give int8 and anonymous records as strings.
_PYTHON = {"uuid": "UUID", "text": "str", "jsonb": "str", "int": "int", "bigint": "int", "bool": "bool",
           "timestamptz": "datetime+tz", "record": "tuple"}
_NODE = {"uuid": "string", "text": "string", "jsonb": "string", "int": "number", "bigint": "string",
         "bool": "boolean", "timestamptz": "Date", "record": "string"}
NATIVE_TYPES = {"psycopg": _PYTHON, "asyncpg": _PYTHON, "node-postgres": _NODE, "postgres.js": _NODE}

TOKEN_PREFIXES = {"access_token": "pgsa_at_", "refresh_token": "pgsa_rt_"}
# src/token.rs: TOKEN_LEN is the 8-character prefix and the unpadded
# base64url of 52 bytes (session id, generation, secret): 70 characters.
TOKEN_LENGTH = 8 + 70
TOKEN = re.compile(r"pgsa_(?:at|rt)_[A-Za-z0-9_-]{70}")
# What a leak looks like in any text: the prefix and at least 64 base64url
# characters (0.1.0's tokens, LEGACY_TOKEN_LEN, have 64; these have 70).
# The runners search every raw error text with it before they redact, and
# the tests search the runners' output and the server log.
TOKEN_SHAPE = re.compile(r"pgsa_(?:at|rt)_[A-Za-z0-9_-]{64}")
# A timestamp returned for a statement lies between the client's clock
# readings around the call; the slack covers rounding (JavaScript's Date
# has milliseconds).
TIME_SLACK_US = 50_000


def load_spec() -> dict:
    return json.loads(SPEC_PATH.read_text(encoding="utf-8"))


def parse_record(text: str) -> list[str | None]:
    """The fields of a composite value in PostgreSQL's text output, e.g.
    (a,"b c",,"x""y") -> ['a', 'b c', None, 'x"y']."""
    assert text.startswith("(") and text.endswith(")"), text
    fields: list[str | None] = []
    body, i = text[1:-1], 0
    while True:
        if i < len(body) and body[i] == '"':
            value, i = [], i + 1
            while True:
                if body[i] == "\\" or (body[i] == '"' and body[i + 1 : i + 2] == '"'):
                    value.append(body[i + 1])
                    i += 2
                elif body[i] == '"':
                    i += 1
                    break
                else:
                    value.append(body[i])
                    i += 1
            fields.append("".join(value))
        else:
            end = body.find(",", i)
            end = len(body) if end < 0 else end
            fields.append(body[i:end] or None)
            i = end
        if i >= len(body):
            return fields
        i += 1  # the comma


class ScenarioCheck:
    """The expectations of one scenario against one driver's observations."""

    def __init__(self, spec: dict, driver: str, scenario: dict, seen: dict) -> None:
        self.spec, self.driver, self.scenario, self.seen = spec, driver, scenario, seen
        self.saved: dict[str, dict] = {}  # save name -> the observation of the step that saved it
        self.failures: list[str] = []

    def fail(self, where: str, message: str) -> None:
        self.failures.append(f"{self.driver} / {self.scenario['name']} / {where}: {message}")

    def run(self) -> list[str]:
        steps, seen = self.scenario["steps"], self.seen["steps"]
        if len(steps) != len(seen):
            self.fail("steps", f"{len(seen)} observed for {len(steps)} in the scenario")
        for i, (step, obs) in enumerate(zip(steps, seen)):
            where = f"step {i} ({step.get('call') or next(iter(step))})"
            self.check_no_token_in_errors(where, obs)
            if "admin" in step and obs["error"]:
                self.fail(where, f"admin statement failed: {obs['error']}")
            elif "loop" in step:
                self.check_loop(where, step, obs)
            elif "call" in step:
                self.check_call(where, step, obs)
                if step.get("save") and obs["rows"]:
                    self.saved[step["save"]] = obs
        return self.failures

    def check_no_token_in_errors(self, where: str, obs: dict) -> None:
        """The runners looked at every raw error text (message, detail, hint,
        context) before redacting it, and say whether it held anything shaped
        like a token: one they never saw would be no label after redaction."""
        errors = [obs.get("error")] + [extra.get("error") for extra in obs.get("at", [])]
        for error in filter(None, errors):
            if error.get("token_shaped") is not False:
                self.fail(where, f"an error text held something shaped like a token: {error}")

    # -- one call -----------------------------------------------------------

    def check_call(self, where: str, step: dict, obs: dict) -> None:
        error = obs["error"]
        if "error" in step:
            self.check_error(where, step, error)
            return
        if error:
            self.fail(where, f"unexpected error {error}")
            return
        call = self.spec["calls"][step["call"]]
        self.check_contract(where, call, obs)
        if "expect" in step:
            if len(obs["rows"]) != 1:
                self.fail(where, f"{len(obs['rows'])} rows, expected one")
            else:
                self.check_row(where, call, step["expect"], obs["rows"][0], obs)
        if "rows" in step:
            if len(obs["rows"]) != len(step["rows"]):
                self.fail(where, f"{len(obs['rows'])} rows, expected {len(step['rows'])}")
            for n, (expected, row) in enumerate(zip(step["rows"], obs["rows"])):
                self.check_row(f"{where} row {n}", call, expected, row, obs)

    def check_error(self, where: str, step: dict, error: dict | None) -> None:
        if not error:
            self.fail(where, f"no error, expected SQLSTATE {step['error']}")
            return
        if error["sqlstate"] != step["error"]:
            self.fail(where, f"SQLSTATE {error['sqlstate']} ({error['message']}), expected {step['error']}")
        if step.get("message_contains", "") not in (error["message"] or ""):
            self.fail(where, f"message {error['message']!r} does not name {step['message_contains']!r}")
        if step.get("hint_contains", "") not in (error["hint"] or ""):
            self.fail(where, f"hint {error['hint']!r} does not contain {step['hint_contains']!r}")

    def check_contract(self, where: str, call: dict, obs: dict) -> None:
        names = [c for c, _ in call["columns"]]
        if obs["columns"] != names:
            self.fail(where, f"columns {obs['columns']}, expected {names}")
        for column, pgtype in call["columns"]:
            wanted = NATIVE_TYPES[self.driver][pgtype]
            got = obs["types"].get(column, [])
            if any(t != wanted for t in got):
                self.fail(where, f"{column} ({pgtype}) came as {got}, expected {wanted}")
        for row in obs["rows"]:
            status = row.get("status")
            if "statuses" in call and status not in call["statuses"]:
                self.fail(where, f"status {status!r} is not one of {call['statuses']}")
            if "statuses" in call and status != "ok":
                filled = [c for c, v in row.items() if c != "status" and v is not None]
                if filled:
                    self.fail(where, f"status {status!r} with non-NULL columns {filled}")
            for column, prefix in TOKEN_PREFIXES.items():
                self.check_token(where, column, prefix, row.get(column))

    def check_token(self, where: str, column: str, prefix: str, label: Any) -> None:
        if label is None:
            return
        m = re.fullmatch(r"token:(.{8}):(\d+):#\d+", str(label))
        if not m or m.group(1) != prefix or int(m.group(2)) != TOKEN_LENGTH:
            self.fail(where, f"{column} is not a {prefix} token of {TOKEN_LENGTH} characters: {label!r}")

    def check_row(self, where: str, call: dict, expected: dict, row: dict, obs: dict) -> None:
        types = dict(call["columns"])
        for column, want in expected.items():
            if column not in row:
                self.fail(where, f"no column {column}")
                continue
            problem = self.mismatch(want, row[column], types[column], obs)
            if problem:
                self.fail(where, f"{column}: {problem}")

    # -- values ---------------------------------------------------------------

    def value_of(self, want: Any) -> Any:
        """An expected value with {"ref"}, {"var"}, {"data"} resolved."""
        if not isinstance(want, dict):
            return want
        if "ref" in want or "not_ref" in want:
            name, column = (want.get("ref") or want["not_ref"]).split(".")
            return self.saved[name]["rows"][0][column]
        if "var" in want:
            return self.seen["vars"][want["var"]]
        if "data" in want:
            return self.spec["data"][want["data"]]
        raise ValueError(f"not a value: {want}")

    def mismatch(self, want: Any, got: Any, pgtype: str, obs: dict) -> str | None:
        if pgtype == "bigint" and isinstance(got, str):
            got = int(got)
        if isinstance(want, dict) and "call_time_plus_s" in want:
            step = self.saved[want["of"]] if "of" in want else obs
            lo = step["t0_us"] + want["call_time_plus_s"] * 1_000_000 - TIME_SLACK_US
            hi = step["t1_us"] + want["call_time_plus_s"] * 1_000_000 + TIME_SLACK_US
            ok = isinstance(got, dict) and lo <= got["ts_us"] <= hi
            return None if ok else f"{got} is not {want['call_time_plus_s']} s after the statement ({lo}..{hi})"
        if isinstance(want, dict) and "min" in want:
            return None if isinstance(got, int) and got >= want["min"] else f"{got!r} < {want['min']}"
        if isinstance(want, dict) and "record" in want:
            return self.record_mismatch(want["record"], got)
        if isinstance(want, dict) and "not_ref" in want:
            return f"{got!r} equals {want['not_ref']}" if got == self.value_of(want) else None
        expected = self.value_of(want)
        return None if got == expected else f"{got!r}, expected {expected!r}"

    def record_mismatch(self, want: list, got: Any) -> str | None:
        fields = parse_record(got) if isinstance(got, str) else got
        expected = [str(self.value_of(w)) for w in want]
        actual = [None if f is None else str(f) for f in fields]
        return None if actual == expected else f"composite {got!r}, expected the fields {expected!r}"

    def check_loop(self, where: str, step: dict, obs: dict) -> None:
        if obs["error"]:
            self.fail(where, f"iteration {obs['error']['iteration']}: {obs['error']}")
        if obs["done"] != step["loop"]:
            self.fail(where, f"{obs['done']} iterations done of {step['loop']}")
        # The "at" steps, in the order the runner took them (by iteration).
        at_steps = [s for i in sorted(step.get("at", {}), key=int) for s in step["at"][i]]
        for extra_step, extra in zip(at_steps, obs["at"]):
            extra_where = f"{where}, between iterations ({extra_step.get('call') or next(iter(extra_step))})"
            if "admin" in extra_step and extra["error"]:
                self.fail(extra_where, f"admin statement failed: {extra['error']}")
            elif "call" in extra_step:
                self.check_call(extra_where, extra_step, extra)
        for inner in step["steps"]:
            call = self.spec["calls"][inner["call"]]
            good = "ok" if "statuses" in call else "row"
            counts = obs["outcomes"].get(inner["call"], {})
            if counts != {good: step["loop"]}:
                self.fail(where, f"{inner['call']} answered {counts}, expected {good} {step['loop']} times")


def check(spec: dict, observation: dict) -> list[str]:
    """Every way in which `observation` departs from the scenarios."""
    driver = observation["driver"]
    seen = {s["name"]: s for s in observation["scenarios"]}
    failures = []
    for scenario in spec["scenarios"]:
        if scenario["name"] not in seen:
            failures.append(f"{driver}: scenario {scenario['name']} was not run")
            continue
        failures += ScenarioCheck(spec, driver, scenario, seen[scenario["name"]]).run()
    return failures


# Calls whose values depend on the other drivers, which run at the same time:
# session_purge() removes what any of them left expired.
VARYING_CALLS = {"purge"}
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _comparable(value: Any) -> Any:
    """A value with what differs between drivers by design taken out:
    timestamps, session ids, user ids (they name the driver), composites
    (a tuple here, a string there) and the type of int8 (a string in Node)."""
    if isinstance(value, dict) and "ts_us" in value:
        return "<timestamp>"
    if isinstance(value, list) or (isinstance(value, str) and value.startswith("(")):
        return "<composite>"
    if isinstance(value, str) and UUID.match(value):
        return "<uuid>"
    if isinstance(value, str) and value.startswith("drv:"):
        return "<user>"
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def signature(observation: dict) -> list:
    """What every driver must see alike, step by step: SQLSTATEs, columns,
    row counts, statuses and values (tokens as labels, numbered in order of
    appearance, so which token equals which is compared too)."""
    out = []
    for scenario in observation["scenarios"]:
        for i, obs in enumerate(scenario["steps"]):
            where = f"{scenario['name']} step {i}"
            if "call" in obs:
                rows = [{c: "<varies>" if obs["call"] in VARYING_CALLS else _comparable(v) for c, v in r.items()}
                        for r in obs["rows"]]
                error = obs["error"] and (obs["error"]["sqlstate"], obs["error"]["message"], obs["error"]["hint"])
                out.append((where, obs["call"], error, obs["columns"], rows))
            elif "loop" in obs:
                out.append((where, "loop", obs["done"], obs["outcomes"], obs["error"] and obs["error"]["sqlstate"]))
            else:
                out.append((where, obs.get("admin") or obs.get("sleep"), obs.get("error")))
    return out


def reached(observation: dict) -> tuple[dict[str, set], set]:
    """The statuses each call answered and the SQLSTATEs raised, over all steps."""
    statuses: dict[str, set] = {}
    sqlstates = set()
    for scenario in observation["scenarios"]:
        for obs in scenario["steps"]:
            if "call" not in obs:
                continue
            if obs["error"]:
                sqlstates.add(obs["error"]["sqlstate"])
            for row in obs["rows"]:
                if "status" in row:
                    statuses.setdefault(obs["call"], set()).add(row["status"])
    return statuses, sqlstates
