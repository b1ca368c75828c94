"""Calls to the session_* functions over libpq's pipeline mode, for the
fault suites that make many calls (test_fuzz.py) or must hold a call open
while they hit it (test_cancellation.py).

Each call is one extended-protocol statement with its arguments as bind
parameters (text format, explicit types: the bytes go to the server as they
are, invalid UTF-8 included) followed by its own Sync, so every call is its
own transaction and an error ends that call only. Many calls go out before
the first result is read: one round trip per batch instead of per call.

psycopg's high-level pipeline has no Sync per statement (an error would
abort the rest of the batch), hence psycopg's libpq binding, `psycopg.pq`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from psycopg import pq

# The types of the functions' arguments.
TEXT, JSONB, INT4, INT8, UUID, INTERVAL = 25, 3802, 23, 20, 2950, 1186

# Every field of an error a client can read.
_ERROR_FIELDS = [
    pq.DiagnosticField.MESSAGE_PRIMARY,
    pq.DiagnosticField.MESSAGE_DETAIL,
    pq.DiagnosticField.MESSAGE_HINT,
    pq.DiagnosticField.CONTEXT,
    pq.DiagnosticField.INTERNAL_QUERY,
    pq.DiagnosticField.SCHEMA_NAME,
    pq.DiagnosticField.TABLE_NAME,
    pq.DiagnosticField.COLUMN_NAME,
    pq.DiagnosticField.DATATYPE_NAME,
    pq.DiagnosticField.CONSTRAINT_NAME,
    pq.DiagnosticField.SOURCE_FILE,
    pq.DiagnosticField.SOURCE_FUNCTION,
]


@dataclass
class Call:
    sql: str
    params: list = field(default_factory=list)   # bytes or None, one per $n
    types: list = field(default_factory=list)    # one OID per $n

    def size(self) -> int:
        return len(self.sql) + sum(len(p) for p in self.params if p)


@dataclass
class Outcome:
    rows: list | None = None      # rows of str/None values, when the call succeeded
    sqlstate: str | None = None   # when it failed
    texts: list = field(default_factory=list)   # every text of the error
    lost: bool = False            # the connection died under the call

    @property
    def message(self) -> str:
        return self.texts[0] if self.texts else ""


def _text(b: bytes | None) -> str | None:
    return None if b is None else b.decode("utf-8", errors="replace")


def _outcome(result) -> Outcome:
    status = result.status
    if status in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
        rows = [
            tuple(_text(result.get_value(r, c)) for c in range(result.nfields))
            for r in range(result.ntuples)
        ]
        return Outcome(rows=rows)
    sqlstate = _text(result.error_field(pq.DiagnosticField.SQLSTATE))
    texts = [t for f in _ERROR_FIELDS if (t := _text(result.error_field(f)))]
    if not texts:
        texts = [_text(result.error_message) or f"status {status.name}"]
    return Outcome(sqlstate=sqlstate, texts=texts)


class Pipe:
    """One connection in pipeline mode. `run(calls)` sends a batch and
    returns one Outcome per call; `send` / `receive` split that, for a
    caller that acts while the calls run (cancels them, say)."""

    def __init__(self, conninfo: dict):
        info = " ".join(f"{k}={v}" for k, v in {**conninfo, "client_encoding": "UTF8"}.items())
        self.pg = pq.PGconn.connect(info.encode())
        if self.pg.status != pq.ConnStatus.OK:
            raise ConnectionError(_text(self.pg.error_message))
        self.pid = self.pg.backend_pid
        self.pg.enter_pipeline_mode()
        self.pending = 0
        self.lost = False

    def send(self, calls: list[Call]) -> None:
        for c in calls:
            self.pg.send_query_params(c.sql.encode(), c.params, c.types)
            self.pg.pipeline_sync()
        self.pg.flush()
        self.pending += len(calls)

    def receive(self) -> list[Outcome]:
        """The outcomes of every call sent and not yet received. A call the
        connection died under, and every one after it, is `lost`."""
        outcomes = []
        while self.pending:
            self.pending -= 1
            if self.lost:
                outcomes.append(Outcome(lost=True))
                continue
            outcomes.append(self._receive_one())
        return outcomes

    def _receive_one(self) -> Outcome:
        results = []
        while (r := self.pg.get_result()) is not None:
            results.append(r)
            if self.pg.status != pq.ConnStatus.OK:
                break
        first = _outcome(results[0]) if results else Outcome()
        # A FATAL error (a terminated backend: 57P01) comes as the call's
        # result; the connection is gone when the Sync's result should come.
        sync = self.pg.get_result() if self.pg.status == pq.ConnStatus.OK else None
        if not results or sync is None or sync.status != pq.ExecStatus.PIPELINE_SYNC:
            self.lost = True
            return Outcome(sqlstate=first.sqlstate, texts=first.texts, lost=True)
        return first

    def run(self, calls: list[Call]) -> list[Outcome]:
        self.send(calls)
        return self.receive()

    def close(self) -> None:
        self.pg.finish()
