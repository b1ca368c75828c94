"""Attacks of a role that can create objects where the extension's elevated
SQL might look (issue 12 §2).

PostgreSQL resolves an operator or function by the best match over every
schema of the search_path: `pg_catalog` comes first only for exact matches,
so `public.>=(bigint, double precision)` beats the built-in comparison that
needs a cast. 0.1.0's worker compared `bigint >= double precision` as the
bootstrap superuser with the default search_path ("$user", public), and an
application role that could CREATE in public became superuser two seconds
later; `session_require` called `format()` unqualified with the private
schema first in its path.

Here a role plants traps for every comparison operator over integer, float,
numeric, oid, text-like, time and other types, and overloads of every
function name the extension's SQL uses, in `public`, in a schema named
after the worker's user and (a misconfiguration, one grant away) in
`session_auth` itself. Every API function runs, as the application role and
as a superuser, the worker makes several passes and a VACUUM decision, a
rolled-back reuse detection goes through the backstop, and no trap may ever
have run with a superuser's or the extension owner's rights.
"""

import time

import pytest

import psycopg

import sa
from harness import wait_until, worker_pid

TYPES = [
    "smallint", "integer", "bigint", "real", "double precision", "numeric", "oid", "regclass",
    "regnamespace", "regprocedure", "regrole", "regtype", "regproc",
    "text", "character varying", "name", "character", '"char"', "timestamp with time zone",
    "timestamp without time zone", "date", "interval", "bytea", "uuid", "boolean", "jsonb",
]
OPERATORS = ["=", "<>", "<", ">", "<=", ">="]
FUNCTIONS_NO_ARGS = ["now", "statement_timestamp", "clock_timestamp", "transaction_timestamp",
                     "gen_random_uuid", "getdatabaseencoding", "pg_backend_pid", "random",
                     "current_schema", "pg_notification_queue_usage"]
# Every function name the extension's SQL (install and update scripts
# included) calls, and a few it might.
FUNCTIONS = [
    "format", "concat_ws", "concat", "string_agg", "quote_ident", "quote_literal", "hashtext",
    "pg_notify", "pg_notification_queue_usage", "make_interval", "sha256", "substr", "uuid_send", "encode",
    "pg_stat_get_dead_tuples", "pg_stat_get_vacuum_count", "has_schema_privilege",
    "has_function_privilege", "to_regnamespace", "current_schema", "generate_series", "octet_length",
    "nextval", "jsonb_build_object", "to_jsonb", "jsonb_object_agg", "count", "array_agg", "unnest",
    "left", "lower", "length", "coalesce", "greatest", "least", "exists", "any", "text", "int4",
    "int8", "float8", "current_setting", "set_config", "pg_get_userbyid", "obj_description",
    "pg_extension_config_dump", "pg_sleep",
]
PAIR_TYPES = ["text", "character varying", "name", "integer", "bigint", "oid", "uuid", "bytea",
              "timestamp with time zone", "double precision", "numeric", "jsonb", "regclass",
              "regnamespace", "regprocedure"]


TRAP_BODY = """
BEGIN
    RAISE LOG 'pg_session_auth_trap % ran as % (superuser: %)', @SIG@, current_user,
        (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) current_user);
    BEGIN
        INSERT INTO public.trap (what, as_user, super) VALUES (@SIG@, current_user,
            (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) current_user));
    EXCEPTION WHEN others THEN NULL;
    END;
    BEGIN
        EXECUTE 'ALTER ROLE regress_attacker SUPERUSER';
    EXCEPTION WHEN others THEN NULL;
    END;
    RETURN NULL;
END
"""

PLANT = """
DO $plant$
DECLARE
    l text; r text; op text; fn text; a text; b text; n int := 0;
    body text := @BODY@;
    sig text;
BEGIN
    FOREACH l IN ARRAY @TYPES@ LOOP
        FOREACH r IN ARRAY @TYPES@ LOOP
            fn := pg_catalog.format('%I.trap_op_%s', @SCHEMA@, n);
            n := n + 1;
            sig := pg_catalog.format('operator(%s, %s) in %s', l, r, @SCHEMA@);
            EXECUTE pg_catalog.format('CREATE FUNCTION %s(%s, %s) RETURNS boolean LANGUAGE plpgsql AS %L',
                fn, l, r, pg_catalog.replace(body, '@SIG@', pg_catalog.quote_literal(sig)));
            FOREACH op IN ARRAY @OPERATORS@ LOOP
                EXECUTE pg_catalog.format('CREATE OPERATOR %I.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = %s)',
                    @SCHEMA@, op, l, r, fn);
            END LOOP;
        END LOOP;
    END LOOP;
    FOREACH fn IN ARRAY @NO_ARGS@ LOOP
        sig := pg_catalog.format('%s() in %s', fn, @SCHEMA@);
        EXECUTE pg_catalog.format('CREATE FUNCTION %I.%I() RETURNS text LANGUAGE plpgsql AS %L',
            @SCHEMA@, fn, pg_catalog.replace(body, '@SIG@', pg_catalog.quote_literal(sig)));
    END LOOP;
    FOREACH fn IN ARRAY @FUNCTIONS@ LOOP
        FOREACH a IN ARRAY @TYPES@ LOOP
            sig := pg_catalog.format('%s(%s) in %s', fn, a, @SCHEMA@);
            BEGIN
                EXECUTE pg_catalog.format('CREATE FUNCTION %I.%I(%s) RETURNS text LANGUAGE plpgsql AS %L',
                    @SCHEMA@, fn, a, pg_catalog.replace(body, '@SIG@', pg_catalog.quote_literal(sig)));
            EXCEPTION WHEN others THEN NULL;  -- a name the grammar reserves
            END;
        END LOOP;
        FOREACH a IN ARRAY @PAIR_TYPES@ LOOP
            FOREACH b IN ARRAY @PAIR_TYPES@ LOOP
                sig := pg_catalog.format('%s(%s, %s) in %s', fn, a, b, @SCHEMA@);
                BEGIN
                    EXECUTE pg_catalog.format('CREATE FUNCTION %I.%I(%s, %s) RETURNS text LANGUAGE plpgsql AS %L',
                        @SCHEMA@, fn, a, b, pg_catalog.replace(body, '@SIG@', pg_catalog.quote_literal(sig)));
                EXCEPTION WHEN others THEN NULL;
                END;
            END LOOP;
        END LOOP;
    END LOOP;
    -- The overload that hijacked session_require's HINT in 0.1.0, and its cousins.
    FOREACH a IN ARRAY ARRAY['integer', 'bigint', 'text', 'numeric'] LOOP
        FOREACH b IN ARRAY ARRAY['integer', 'bigint', 'text', 'numeric', 'interval'] LOOP
            sig := pg_catalog.format('format(text, %s, %s) in %s', a, b, @SCHEMA@);
            BEGIN
                EXECUTE pg_catalog.format('CREATE FUNCTION %I.format(text, %s, %s) RETURNS text LANGUAGE plpgsql AS %L',
                    @SCHEMA@, a, b, pg_catalog.replace(body, '@SIG@', pg_catalog.quote_literal(sig)));
            EXCEPTION WHEN duplicate_function THEN NULL;
            END;
        END LOOP;
    END LOOP;
END
$plant$
"""


def literal(text):
    return "'" + text.replace("'", "''") + "'"


def sql_array(items):
    return "ARRAY[" + ", ".join(literal(i) for i in items) + "]::text[]"


def plant(conn, schema):
    sql = PLANT
    for marker, value in {
        "@BODY@": literal(TRAP_BODY), "@TYPES@": sql_array(TYPES), "@PAIR_TYPES@": sql_array(PAIR_TYPES),
        "@OPERATORS@": sql_array(OPERATORS), "@NO_ARGS@": sql_array(FUNCTIONS_NO_ARGS),
        "@FUNCTIONS@": sql_array(FUNCTIONS), "@SCHEMA@": literal(schema),
    }.items():
        sql = sql.replace(marker, value)
    conn.execute(sql)


def every_api_call(conn, qualify=""):
    """Every public function once or more, tokens as bind parameters.
    Returns the (call, sqlstate) of every error other than the one expected:
    a hijacked call fails in odd ways, and the traps say why."""
    q = qualify
    ex = conn.execute
    odd = []

    def expect(sqlstate, sql, args):
        try:
            ex(sql, args).fetchall()
            odd.append((sql, "no error"))
        except psycopg.Error as e:
            if e.sqlstate != sqlstate:
                odd.append((sql, e.sqlstate))

    s = ex(f"SELECT * FROM {q}session_issue(%s, %s::jsonb, 2)", ["trap-user", '{"a": 1}']).fetchone()
    sa.remember(s["access_token"], s["refresh_token"])
    ex(f"SELECT * FROM {q}session_validate(%s)", [s["access_token"]]).fetchall()
    ex(f"SELECT * FROM {q}session_validate(%s)", ["pgsa_at_not-a-token"]).fetchall()
    r = ex(f"SELECT * FROM {q}session_refresh(%s)", [s["refresh_token"]]).fetchone()
    sa.remember(r["access_token"], r["refresh_token"])
    ex(f"SELECT * FROM {q}session_refresh(%s)", [s["refresh_token"]]).fetchall()  # a retry in the grace
    ex(f"SELECT * FROM {q}session_list(%s)", ["trap-user"]).fetchall()
    ex(f"SELECT {q}session_set_data(%s, %s::jsonb)", [r["session_id"], '{"b": 2}'])
    ex(f"SELECT * FROM {q}session_require(%s, '1 hour', 2)", [r["access_token"]]).fetchall()
    for args in (["1 microsecond", None], [None, 3]):  # SA005 with each HINT
        expect("SA005", f"SELECT * FROM {q}session_require(%s, %s::interval, %s::int)", [r["access_token"], *args])
    expect("SA001", f"SELECT * FROM {q}session_require(%s)", ["pgsa_at_not-a-token"])
    re = ex(f"SELECT * FROM {q}session_reauthenticate(%s, 3)", [r["access_token"]]).fetchone()
    sa.remember(re["access_token"], re["refresh_token"])
    ex(f"SELECT {q}session_revoke(%s)", [re["access_token"]])
    s2 = ex(f"SELECT * FROM {q}session_issue(%s)", ["trap-user"]).fetchone()
    ex(f"SELECT {q}session_revoke_id(%s)", [s2["session_id"]])
    ex(f"SELECT * FROM {q}session_issue(%s)", ["trap-user"]).fetchone()
    ex(f"SELECT {q}session_revoke_user(%s)", ["trap-user"])
    ex(f"SELECT {q}session_purge()")
    # Reuse after a short grace (the role's setting: ALTER ROLE), detected in
    # a transaction that rolls back: the backstop then revokes it again.
    s3 = ex(f"SELECT * FROM {q}session_issue(%s)", ["trap-user"]).fetchone()
    sa.remember(s3["refresh_token"])
    ex(f"SELECT * FROM {q}session_refresh(%s)", [s3["refresh_token"]]).fetchone()
    time.sleep(0.3)
    ex("BEGIN")
    assert ex(f"SELECT status FROM {q}session_refresh(%s)", [s3["refresh_token"]]).fetchone()["status"] \
        == "reuse_detected"
    ex("ROLLBACK")
    return odd


def test_planted_operators_and_functions_never_run_with_elevated_rights(own_cluster):
    c = own_cluster("session_auth.purge_interval = '200ms'", "max_connections = 40")
    su = c.connect()
    su.execute("CREATE EXTENSION pg_session_auth")
    su.execute("ALTER ROLE postgres SET session_auth.refresh_grace = '200ms'")
    su.close()
    su = c.connect()
    su.execute("CREATE ROLE regress_attacker LOGIN")
    su.execute("GRANT session_auth_client TO regress_attacker")
    su.execute("GRANT CREATE ON SCHEMA public TO regress_attacker")       # as a database owner can
    su.execute("GRANT CREATE ON DATABASE postgres TO regress_attacker")   # for a schema named "postgres"
    su.execute("GRANT CREATE, USAGE ON SCHEMA session_auth TO regress_attacker")  # a misconfiguration
    for role in ("regress_attacker", "postgres"):
        su.execute(f"ALTER ROLE {role} SET session_auth.refresh_grace = '200ms'")
    assert worker_pid(su) is not None, "the worker serves this database"

    attacker = c.connect(user="regress_attacker")
    attacker.execute("CREATE TABLE public.trap (what text, as_user name, super boolean)")
    attacker.execute("GRANT INSERT ON public.trap TO PUBLIC")
    attacker.execute("CREATE SCHEMA postgres")  # named after the worker's (bootstrap superuser's) role
    attacker.execute("GRANT USAGE ON SCHEMA postgres TO PUBLIC")
    for schema in ("public", "postgres", "session_auth"):
        plant(attacker, schema)
    # (The test's own queries compare like types only: its traps would
    # catch it too.)
    planted = su.execute(
        "SELECT count(*) AS n FROM pg_proc "
        "WHERE proowner = (SELECT oid FROM pg_roles WHERE rolname = 'regress_attacker')"
    ).fetchone()["n"]
    assert planted > 5000, planted

    # Every API function, as the application role and as superusers.
    odd = every_api_call(attacker)
    odd += every_api_call(su, qualify="public.")
    su.execute("SET search_path = postgres, public")  # a superuser's own path through the traps
    odd += every_api_call(su, qualify="public.")
    su.execute("RESET search_path")

    # Worker passes with work to do and a VACUUM decision: 2,000 expired
    # blacklist rows (1,000 dead rows make a table due): 1,000 superseded
    # pairs of these refreshes (one row a pair) and 1,000 written directly.
    sa.add_expired_blacklist(su, 1000)
    su.execute("SET session_auth.access_ttl = '1s'")
    su.execute("SET session_auth.idle_timeout = '1s'")
    for i in range(1000):
        t = su.execute("SELECT refresh_token FROM public.session_issue(%s)", [f"trap-expiring-{i}"]).fetchone()
        su.execute("SELECT * FROM public.session_refresh(%s)", [t["refresh_token"]])
    su.execute("RESET session_auth.access_ttl")
    su.execute("RESET session_auth.idle_timeout")
    vacuumed = wait_until(lambda: "vacuumed session_auth.blacklist" in c.log_text(), timeout=30, step=0.5)
    assert vacuumed, "the worker decided to VACUUM and did"
    time.sleep(1.0)  # a few more passes

    log = c.log_text()
    elevated = [line for line in log.splitlines() if "pg_session_auth_trap" in line and "(superuser: t)" in line]
    rows = su.execute("SELECT what, as_user, super FROM public.trap").fetchall()
    owner = su.execute(
        "SELECT pg_get_userbyid(extowner) AS o FROM pg_extension WHERE extname = 'pg_session_auth'"
    ).fetchone()["o"]
    hijacked = [r for r in rows if r["super"] or r["as_user"] == owner]
    became_super = su.execute("SELECT rolsuper FROM pg_roles WHERE rolname = 'regress_attacker'").fetchone()
    print(f"\n    {planted} traps planted; {len(rows)} ran, all as the attacker itself")
    assert not elevated and not hijacked, (
        f"{len(hijacked)} trap(s) ran with elevated rights: {hijacked[:5]} {elevated[:5]}"
    )
    assert became_super["rolsuper"] is False
    assert not odd, f"calls that failed other than as documented: {odd}"


def plant_everywhere(attacker):
    attacker.execute("CREATE TABLE IF NOT EXISTS public.trap (what text, as_user name, super boolean)")
    attacker.execute("GRANT INSERT ON public.trap TO PUBLIC")
    attacker.execute("CREATE SCHEMA IF NOT EXISTS postgres")
    attacker.execute("GRANT USAGE ON SCHEMA postgres TO PUBLIC")
    for schema in ("public", "postgres"):
        plant(attacker, schema)


def elevated_traps(c, su):
    log = c.log_text()
    elevated = [line for line in log.splitlines() if "pg_session_auth_trap" in line and "(superuser: t)" in line]
    rows = su.execute("SELECT what, as_user, super FROM public.trap WHERE super").fetchall()
    became = su.execute("SELECT rolsuper FROM pg_roles WHERE rolname = 'regress_attacker'").fetchone()["rolsuper"]
    return elevated, rows, became


@pytest.mark.parametrize("step", ["CREATE EXTENSION", "CREATE EXTENSION in a schema the attacker owns"])
def test_objects_planted_before_create_extension_never_run_as_superuser(own_cluster, step):
    """The database owner (who can CREATE in public on PostgreSQL 15) plants
    traps first; then the DBA installs the extension. 0.2.0's first release
    candidate resolved =(oid, regclass) and format(text, regprocedure)
    through the install schema here, and the owner became superuser."""
    c = own_cluster("max_connections = 20")
    su = c.connect()
    su.execute("CREATE ROLE regress_attacker LOGIN")
    su.execute("CREATE DATABASE victim OWNER regress_attacker")
    attacker = c.connect(user="regress_attacker", dbname="victim")
    plant_everywhere(attacker)
    schema = "public"
    if step != "CREATE EXTENSION":
        attacker.execute("CREATE SCHEMA api")
        plant(attacker, "api")
        schema = "api"
    db = c.connect(dbname="victim")
    notices = []
    db.add_notice_handler(lambda d: notices.append((d.severity_nonlocalized, d.message_primary)))
    db.execute(f"CREATE EXTENSION pg_session_auth SCHEMA {schema}")
    elevated, rows, became = elevated_traps(c, db)
    assert not elevated and not rows and not became, f"install ran traps as superuser: {elevated[:3]} {rows[:3]}"
    warned = [m for sev, m in notices if sev == "WARNING" and "regress_attacker" in (m or "")]
    assert warned, f"the DBA is warned that the schema is writable: {notices}"
