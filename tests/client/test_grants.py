"""The README's single GRANT gives an application role the functions and
nothing else; PUBLIC (a role without the grant) gets nothing at all."""

import psycopg
import pytest

import sa

CONTRACT_FUNCTIONS = {
    "session_issue", "session_validate", "session_refresh", "session_revoke",
    "session_revoke_id", "session_revoke_user", "session_list", "session_set_data",
    "session_reauthenticate", "session_require",
}


def extension_functions(db):
    """Every function of the extension: (regprocedure, name, schema, arg types)."""
    return db.execute(
        """
        SELECT p.oid::regprocedure::text AS sig, p.proname AS name, n.nspname AS schema,
               coalesce(array_agg(format_type(t, NULL) ORDER BY i) FILTER (WHERE t IS NOT NULL),
                        '{}') AS args
        FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace
        JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
        JOIN pg_extension e ON d.refclassid = 'pg_extension'::regclass AND d.refobjid = e.oid
        LEFT JOIN LATERAL unnest(p.proargtypes::oid[]) WITH ORDINALITY AS a(t, i) ON true
        WHERE e.extname = 'pg_session_auth'
        GROUP BY p.oid, p.proname, n.nspname
        ORDER BY 1
        """
    ).fetchall()


def null_call(fn):
    args = ", ".join(f"NULL::{t}" for t in fn["args"])
    return f"SELECT {fn['schema']}.{fn['name']}({args})"


def private_relations(db):
    return db.execute(
        """
        SELECT c.oid::regclass::text AS rel, c.relkind::text AS kind,
               (SELECT quote_ident(attname) FROM pg_attribute
                WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped
                ORDER BY attnum LIMIT 1) AS col
        FROM pg_class c
        WHERE c.relnamespace = 'session_auth'::regnamespace
          AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
        ORDER BY 1
        """
    ).fetchall()


def refused(conn, sql, params=None):
    """The SQLSTATE of the statement's error (None if it succeeded)."""
    try:
        conn.execute(sql, params)
    except psycopg.Error as e:
        return e.sqlstate
    return None


@pytest.fixture(scope="module")
def app_user(cluster):
    with cluster.connect() as db:
        db.execute("DROP ROLE IF EXISTS app_user")
        db.execute("CREATE ROLE app_user LOGIN")
        db.execute("GRANT session_auth_client TO app_user;")  # the README's one GRANT
    return "app_user"


@pytest.fixture(scope="module")
def outsider(cluster):
    with cluster.connect() as db:
        db.execute("DROP ROLE IF EXISTS no_grant_user")
        db.execute("CREATE ROLE no_grant_user LOGIN")
    return "no_grant_user"


def test_app_role_can_call_every_session_function(connect, app_user):
    app = connect(app_user)
    assert app.execute("SELECT current_user AS u").fetchone()["u"] == "app_user"
    assert app.execute("SELECT usesuper FROM pg_user WHERE usename = current_user").fetchone()["usesuper"] is False

    s = sa.issue(app, "grant-user", {"k": 1}, auth_level=1)
    assert s["session_id"] and s["access_token"] and s["refresh_token"]
    assert sa.validate(app, s["access_token"])["status"] == "ok"
    assert sa.require(app, s["access_token"])["user_id"] == "grant-user"
    listed = sa.list_sessions(app, "grant-user")
    assert [r["session_id"] for r in listed] == [s["session_id"]]
    assert sa.set_data(app, s["session_id"], {"k": 2}) is True
    r = sa.refresh(app, s["refresh_token"])
    assert r["status"] == "ok", r
    re = sa.reauthenticate(app, r["access_token"], 2)
    assert sa.validate(app, re["access_token"])["auth_level"] == 2
    assert sa.revoke(app, re["refresh_token"]) is True
    s2 = sa.issue(app, "grant-user")
    assert sa.revoke_id(app, s2["session_id"]) is True
    sa.issue(app, "grant-user")
    sa.issue(app, "grant-user")
    assert sa.revoke_user(app, "grant-user") == 2


def test_every_public_function_is_granted_to_the_client_role_only(db, app_user):
    fns = [f for f in extension_functions(db) if f["name"].startswith("session_") and f["schema"] != "session_auth"]
    names = {f["name"] for f in fns}
    assert CONTRACT_FUNCTIONS <= names, f"missing: {CONTRACT_FUNCTIONS - names}"
    for f in fns:
        row = db.execute(
            "SELECT has_function_privilege('app_user', %s, 'EXECUTE') AS app, "
            "has_function_privilege('public', %s, 'EXECUTE') AS pub",
            [f["sig"], f["sig"]],
        ).fetchone()
        assert row == {"app": True, "pub": False}, (f["sig"], row)


def test_app_role_cannot_touch_private_relations(db, connect, app_user):
    sa.issue(db, "rows-to-protect")
    rels = private_relations(db)
    assert {"session_auth.sessions", "session_auth.blacklist", "session_auth.events"} <= {r["rel"] for r in rels}
    app = connect(app_user)
    checked = 0
    for r in rels:
        rel, col = r["rel"], r["col"]
        if r["kind"] == "S":
            statements = [f"SELECT * FROM {rel}", f"SELECT nextval('{rel}')", f"SELECT setval('{rel}', 1)"]
        else:
            statements = [
                f"SELECT * FROM {rel}",
                f"SELECT count(*) FROM {rel}",
                f"INSERT INTO {rel} DEFAULT VALUES",
                f"UPDATE {rel} SET {col} = {col}",
                f"DELETE FROM {rel}",
                f"TRUNCATE {rel}",
            ]
        for sql in statements:
            assert refused(app, sql) == "42501", sql
            checked += 1
    assert checked >= 18
    # nor can it create anything in the private schema
    assert refused(app, "CREATE TABLE session_auth.mine (x int)") == "42501"
    # the rows are still there (the refusals were not vacuous)
    assert db.execute("SELECT count(*) AS n FROM session_auth.sessions").fetchone()["n"] > 0


def test_app_role_cannot_call_internal_functions(db, connect, app_user):
    internal = [f for f in extension_functions(db) if f["schema"] == "session_auth"]
    app = connect(app_user)
    for f in internal:
        assert refused(app, null_call(f)) == "42501", f["sig"]


def test_role_without_grant_can_execute_nothing(db, connect, outsider):
    fns = extension_functions(db)
    assert CONTRACT_FUNCTIONS <= {f["name"] for f in fns}
    out = connect(outsider)
    for f in fns:
        assert refused(out, null_call(f)) == "42501", f["sig"]
    # also with real-looking arguments, through the ordinary entry points
    s = sa.issue(db, "someone")
    assert refused(out, "SELECT * FROM session_validate(%s)", [s["access_token"]]) == "42501"
    assert refused(out, "SELECT * FROM session_refresh(%s)", [s["refresh_token"]]) == "42501"
    assert refused(out, "SELECT * FROM session_issue(%s)", ["x"]) == "42501"
    assert refused(out, "SELECT * FROM session_auth.sessions") == "42501"
    # and the session is untouched
    assert sa.validate(db, s["access_token"])["status"] == "ok"
