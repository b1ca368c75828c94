"""The Python half of the driver matrix: runs tests/drivers/scenarios.json
through psycopg 3 and asyncpg and returns what each driver saw, in the
observation format that tests/drivers/node/run_scenarios.mjs prints for
node-postgres and postgres.js (matrix.py checks both):

    {"driver", "version", "scenarios": [{"name", "vars", "steps": [obs...]}]}
    call:  {"call", "t0_us", "t1_us", "columns", "types": {column: [native type names]},
            "rows": [{column: value}], "error": null | {"sqlstate", "message", "hint"}}
    sleep: {"sleep": s}    admin: {"admin": sql, "error"}
    error: {"sqlstate", "message", "hint", "token_shaped": whether any raw text of the
            error (message, detail, hint, context) held something shaped like a token}
    loop:  {"loop": n, "done": i, "outcomes": {call: {outcome: count}}, "at": [obs...],
            "error": null | {"iteration", "call", "sqlstate", "message"}}

Values are normalised to JSON: a timestamp becomes {"ts_us": epoch
microseconds}, a uuid its text, a composite a list; a token (a string with
a pgsa_xx_ prefix) becomes a label "token:<prefix>:<length>:#<n>", so no
token leaves the runner, and equal labels mean equal tokens. An error's
texts are searched for matrix.TOKEN_SHAPE as the driver gave them, then
redacted: a token the runner saw becomes its label, anything else shaped
like one "token:unseen". (The tokens are
not added to sa.TOKENS: the harness would search the server log for each of
the thousands of them, for seconds; test_driver_matrix.py searches it once for
anything shaped like a token instead, which covers the Node drivers too.)

Each driver runs against a database of its own (the scenarios drop and
create the extension there), given with its run variables by the caller.

Both drivers run every call as a server-side prepared statement: psycopg
with prepare=True (a RawCursor, so the $n text is the same as elsewhere),
asyncpg through PreparedStatement objects kept per SQL text (unlike
conn.fetch's statement cache, these do not re-prepare themselves after a
plan invalidation, so an invalidation error would show). jsonb comes back
as the text the server sent (psycopg: the text loader; asyncpg does so by
default), so documents can be compared byte for byte.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import psycopg
from psycopg.types.string import TextLoader

from matrix import TOKEN_SHAPE

STATEMENT_TIMEOUT = "30s"  # every statement is bounded; nothing here should take a second
TOKEN = re.compile(r"^pgsa_[a-z]{2}_")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def now_us() -> int:
    return time.time_ns() // 1000


class Labels:
    """Token -> stable label, so observations can be compared without tokens."""

    def __init__(self) -> None:
        self.labels: dict[str, str] = {}

    def label(self, token: str) -> str:
        if token not in self.labels:
            self.labels[token] = f"token:{token[:8]}:{len(token)}:#{len(self.labels) + 1}"
        return self.labels[token]

    def redact(self, text: str | None) -> str | None:
        for token, label in self.labels.items():
            text = text.replace(token, label) if text else text
        return TOKEN_SHAPE.sub("token:unseen", text) if text else text


def native(value: Any) -> str:
    """The name of the Python type the driver returned (datetime+tz for an aware datetime)."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return "datetime+tz"
    return type(value).__name__


def normalise(value: Any, labels: Labels) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return labels.label(value) if TOKEN.match(value) else value
    if isinstance(value, datetime):
        return {"ts_us": (value - EPOCH) // timedelta(microseconds=1)}
    if isinstance(value, tuple):
        return [normalise(v, labels) for v in value]
    return str(value)  # uuid.UUID and asyncpg's UUID


def resolve(arg: Any, spec: dict, scenario_vars: dict, saved: dict) -> Any:
    """An argument of a step, with {"var"}, {"ref"}, {"data"}, {"repeat"} filled in."""
    if not isinstance(arg, dict):
        return arg
    if "var" in arg:
        return scenario_vars[arg["var"]]
    if "ref" in arg:
        name, column = arg["ref"].split(".")
        return saved[name][column]
    if "data" in arg:
        return spec["data"][arg["data"]]
    if "repeat" in arg:
        return arg.get("prefix", "") + arg["repeat"] * arg["times"] + arg.get("suffix", "")
    raise ValueError(f"unknown argument form {arg}")


def raw_texts(exc: Exception) -> list[str]:
    """Every text of an error as the driver gives it, before any redaction."""
    if isinstance(exc, psycopg.Error):
        d = exc.diag
        texts = [str(exc), d.message_primary, d.message_detail, d.message_hint, d.context, d.internal_query]
    elif isinstance(exc, asyncpg.PostgresError):
        texts = [str(exc), *map(str, exc.as_dict().values())]
    else:
        texts = [str(exc)]
    return [t for t in texts if t]


def error_of(exc: Exception, labels: Labels) -> dict:
    if isinstance(exc, psycopg.Error):
        sqlstate, message, hint = exc.sqlstate, exc.diag.message_primary, exc.diag.message_hint
    else:
        sqlstate, hint = getattr(exc, "sqlstate", None), getattr(exc, "hint", None)
        message = getattr(exc, "message", None)
    return {"sqlstate": sqlstate, "message": labels.redact(message or str(exc)), "hint": labels.redact(hint),
            "token_shaped": any(TOKEN_SHAPE.search(t) for t in raw_texts(exc))}


class Psycopg:
    name = "psycopg"
    version = psycopg.__version__
    errors = (psycopg.Error,)

    async def connect(self, conninfo: dict) -> Any:
        conn = await psycopg.AsyncConnection.connect(
            **conninfo, autocommit=True, cursor_factory=psycopg.AsyncRawCursor,
            options=f"-c statement_timeout={STATEMENT_TIMEOUT}", application_name="pg_session_auth_drivers",
        )
        conn.adapters.register_loader("jsonb", TextLoader)
        return conn

    async def query(self, conn: Any, sql: str, args: list) -> tuple[list[str], list[tuple]]:
        cur = await conn.execute(sql, args, prepare=True)
        return [d.name for d in cur.description], await cur.fetchall()

    async def admin(self, conn: Any, sql: str) -> None:
        await conn.execute(sql, prepare=False)

    async def close(self, conn: Any) -> None:
        await conn.close()


class Asyncpg:
    name = "asyncpg"
    version = asyncpg.__version__
    errors = (asyncpg.PostgresError, asyncpg.InterfaceError)

    def __init__(self) -> None:
        self.statements: dict[tuple[int, str], Any] = {}

    async def connect(self, conninfo: dict) -> Any:
        return await asyncpg.connect(
            host=conninfo["host"], port=conninfo["port"], user=conninfo["user"], database=conninfo["dbname"],
            server_settings={"statement_timeout": STATEMENT_TIMEOUT, "application_name": "pg_session_auth_drivers"},
        )

    async def query(self, conn: Any, sql: str, args: list) -> tuple[list[str], list[tuple]]:
        key = (id(conn), sql)
        if key not in self.statements:
            self.statements[key] = await conn.prepare(sql)
        stmt = self.statements[key]
        rows = await stmt.fetch(*args)
        return [a.name for a in stmt.get_attributes()], [tuple(r.values()) for r in rows]

    async def admin(self, conn: Any, sql: str) -> None:
        await conn.execute(sql)

    async def close(self, conn: Any) -> None:
        await conn.close()


class Walker:
    """Runs the scenarios on one driver: an application connection for the
    calls, a superuser connection for the {"admin"} steps."""

    def __init__(self, driver: Any, spec: dict, app: Any, admin: Any, run_vars: dict) -> None:
        self.driver, self.spec, self.app, self.admin_conn = driver, spec, app, admin
        self.run_vars = run_vars
        self.labels = Labels()

    async def scenario(self, scenario: dict) -> dict:
        scenario_vars = {**self.run_vars, "user": f"drv:{self.driver.name}:{scenario['name']}"}
        saved: dict = {}
        steps = [await self.step(step, scenario_vars, saved) for step in scenario["steps"]]
        return {"name": scenario["name"], "vars": scenario_vars, "steps": steps}

    async def step(self, step: dict, scenario_vars: dict, saved: dict) -> dict:
        if "sleep" in step:
            await asyncio.sleep(step["sleep"])
            return {"sleep": step["sleep"]}
        if "admin" in step:
            try:
                await self.driver.admin(self.admin_conn, step["admin"])
                return {"admin": step["admin"], "error": None}
            except self.driver.errors as e:
                return {"admin": step["admin"], "error": error_of(e, self.labels)}
        if "loop" in step:
            return await self.loop(step, scenario_vars, saved)
        return await self.call(step, scenario_vars, saved)

    async def call(self, step: dict, scenario_vars: dict, saved: dict) -> dict:
        args = [resolve(a, self.spec, scenario_vars, saved) for a in step["args"]]
        obs: dict = {"call": step["call"], "t0_us": now_us()}
        try:
            columns, rows = await self.driver.query(self.app, self.spec["calls"][step["call"]]["sql"], args)
            obs["error"] = None
        except self.driver.errors as e:
            columns, rows = [], []
            obs["error"] = error_of(e, self.labels)
        obs["t1_us"] = now_us()
        if step.get("save") and rows:
            saved[step["save"]] = dict(zip(columns, rows[0]))
        obs["columns"] = columns
        obs["types"] = {c: sorted({native(r[i]) for r in rows if r[i] is not None}) for i, c in enumerate(columns)}
        obs["rows"] = [{c: normalise(v, self.labels) for c, v in zip(columns, r)} for r in rows]
        return obs

    async def loop(self, step: dict, scenario_vars: dict, saved: dict) -> dict:
        obs: dict = {"loop": step["loop"], "done": 0, "outcomes": {}, "at": [], "error": None}
        for i in range(step["loop"]):
            for extra in step.get("at", {}).get(str(i), []):
                obs["at"].append(await self.step(extra, scenario_vars, saved))
            for inner in step["steps"]:
                result = await self.call(inner, scenario_vars, saved)
                outcome = outcome_of(result, self.spec["calls"][inner["call"]])
                counts = obs["outcomes"].setdefault(inner["call"], {})
                counts[outcome] = counts.get(outcome, 0) + 1
                if result["error"]:
                    obs["error"] = {"iteration": i, "call": inner["call"], **result["error"]}
                    return obs
            obs["done"] = i + 1
        return obs


def outcome_of(result: dict, call: dict) -> str:
    """What a call in a loop came to: its status, its SQLSTATE, other
    columns than the call's, or 'row'."""
    if result["error"]:
        return f"error {result['error']['sqlstate']}"
    if result["columns"] != [c for c, _ in call["columns"]]:
        return f"columns {','.join(result['columns'])}"
    rows = result["rows"]
    if len(rows) == 1:
        return rows[0].get("status", "row")
    return f"{len(rows)} rows"


@dataclass
class Target:
    """Where a driver runs: its application and superuser connections (to its
    own database), and the run variables of that database."""

    conninfo: dict
    admin_conninfo: dict
    run_vars: dict


async def run_driver(driver: Any, spec: dict, target: Target) -> dict:
    app = await driver.connect(target.conninfo)
    admin = await driver.connect(target.admin_conninfo)
    try:
        walker = Walker(driver, spec, app, admin, target.run_vars)
        scenarios = [await walker.scenario(s) for s in spec["scenarios"]]
    finally:
        await driver.close(app)
        await driver.close(admin)
    return {"driver": driver.name, "version": driver.version, "scenarios": scenarios}


PYTHON_DRIVERS = {"psycopg": Psycopg, "asyncpg": Asyncpg}


def run(spec: dict, targets: dict[str, Target], timeout: float) -> dict[str, dict]:
    """Runs every scenario on both Python drivers at once (each on connections
    of its own, to its target); driver name -> observations. Bounded by
    `timeout` seconds."""

    async def both() -> list[dict]:
        runs = [run_driver(d(), spec, targets[name]) for name, d in PYTHON_DRIVERS.items()]
        return await asyncio.wait_for(asyncio.gather(*runs), timeout)

    return {o["driver"]: o for o in asyncio.run(both())}
