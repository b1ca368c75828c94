"""Physical consistency of the extension's tables and indexes, checked by
PostgreSQL's own checker, contrib `amcheck` (issue 19 §2).

    from consistency import assert_consistent
    checked = assert_consistent(conn)      # raises AssertionError listing every problem

On a primary every btree index of the schema's tables (their TOAST indexes
too) gets `bt_index_parent_check(heapallindexed => true, rootdescend =>
true)`: the structure across levels, every heap tuple found through the
index by a fresh descent from the root. Every table (and its TOAST table)
gets `verify_heapam(check_toast => true)`: tuple headers, visibility
information, TOAST pointers. On a hot standby the parent check is not
possible (it takes a ShareLock, which recovery refuses), so indexes get
`bt_index_check(heapallindexed => true)`, and UNLOGGED tables are skipped
(a standby has no contents for them).

`conn` is a superuser connection, autocommit, to the database that has the
extension. On a primary the helper creates `amcheck` if it is missing; a
standby must have replayed that `CREATE EXTENSION` from its primary.
amcheck ships with the server (contrib) on every major this project tests:
Debian's postgresql-15 and -17 packages, and the PostgreSQL 18 wheel.
"""

from dataclasses import dataclass, field

import psycopg

SCHEMA = "session_auth"

# The schema's tables and their TOAST tables; each with whether it is
# UNLOGGED (nothing to read on a standby).
TABLES_SQL = """
    SELECT t.oid::regclass::text AS name, t.relpersistence = 'u' AS unlogged
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_class t ON t.oid = c.oid OR t.oid = c.reltoastrelid
     WHERE n.nspname = %s AND c.relkind IN ('r', 'm')
     ORDER BY 1
"""

# Every index of those tables, with its access method and whether amcheck
# can take it: an index that a failed CREATE INDEX CONCURRENTLY left invalid
# is a DDL state, not corruption, and amcheck refuses it.
INDEXES_SQL = """
    SELECT i.indexrelid::regclass::text AS name, am.amname AS am,
           i.indisvalid AND i.indisready AS checkable, t.relpersistence = 'u' AS unlogged
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_class t ON t.oid = c.oid OR t.oid = c.reltoastrelid
      JOIN pg_index i ON i.indrelid = t.oid
      JOIN pg_class ic ON ic.oid = i.indexrelid
      JOIN pg_am am ON am.oid = ic.relam
     WHERE n.nspname = %s AND c.relkind IN ('r', 'm')
     ORDER BY 1
"""


@dataclass
class Checked:
    """What one run of the checks covered; `problems` is empty when
    everything is consistent."""

    tables: list = field(default_factory=list)
    indexes: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    problems: list = field(default_factory=list)

    def summary(self) -> str:
        skipped = f", skipped {', '.join(self.skipped)}" if self.skipped else ""
        return f"amcheck: {len(self.tables)} tables and {len(self.indexes)} indexes consistent{skipped}"


def in_recovery(conn) -> bool:
    return conn.execute("SELECT pg_is_in_recovery() AS r").fetchone()["r"]


def ensure_amcheck(conn):
    """CREATE EXTENSION amcheck where it is missing (a primary only)."""
    if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'amcheck'").fetchone():
        return
    if in_recovery(conn):
        raise AssertionError("amcheck is not installed on this standby: create it on the primary first")
    conn.execute("CREATE EXTENSION amcheck")


def check(conn, schema: str = SCHEMA) -> Checked:
    """Runs every check; collects what amcheck reports rather than stopping
    at the first problem."""
    ensure_amcheck(conn)
    standby = in_recovery(conn)
    result = Checked()
    for t in conn.execute(TABLES_SQL, [schema]).fetchall():
        if standby and t["unlogged"]:
            result.skipped.append(f"{t['name']} (unlogged, on a standby)")
            continue
        _check_table(conn, t["name"], result)
    for i in conn.execute(INDEXES_SQL, [schema]).fetchall():
        if i["am"] != "btree" or not i["checkable"] or (standby and i["unlogged"]):
            reason = "not btree" if i["am"] != "btree" else "invalid" if not i["checkable"] else "unlogged"
            result.skipped.append(f"{i['name']} ({reason})")
            continue
        _check_index(conn, i["name"], standby, result)
    if not result.tables:
        result.problems.append(f"no table found in schema {schema}: is the extension there?")
    return result


def assert_consistent(conn, schema: str = SCHEMA) -> Checked:
    """check(), failing with every problem listed."""
    result = check(conn, schema)
    assert not result.problems, "amcheck found problems:\n  " + "\n  ".join(result.problems)
    return result


def _check_table(conn, name: str, result: Checked):
    try:
        rows = conn.execute(
            "SELECT blkno, offnum, attnum, msg FROM verify_heapam(%s::regclass, check_toast => true)", [name]
        ).fetchall()
    except psycopg.Error as e:
        result.problems.append(f"verify_heapam({name}) raised {e.sqlstate}: {e.diag.message_primary}")
        return
    result.tables.append(name)
    for r in rows:
        result.problems.append(f"verify_heapam({name}): block {r['blkno']} offset {r['offnum']} "
                               f"attribute {r['attnum']}: {r['msg']}")


def _check_index(conn, name: str, standby: bool, result: Checked):
    if standby:
        function, sql = "bt_index_check", "SELECT bt_index_check(%s::regclass, heapallindexed => true)"
    else:
        function = "bt_index_parent_check"
        sql = "SELECT bt_index_parent_check(%s::regclass, heapallindexed => true, rootdescend => true)"
    try:
        conn.execute(sql, [name])
    except psycopg.Error as e:
        detail = f" ({e.diag.message_detail})" if e.diag.message_detail else ""
        result.problems.append(f"{function}({name}) raised {e.sqlstate}: {e.diag.message_primary}{detail}")
        return
    result.indexes.append(name)
