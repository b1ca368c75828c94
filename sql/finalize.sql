-- Privileges, last of all. PUBLIC may execute nothing of the extension; the
-- role session_auth_client may execute the public session_* functions and
-- nothing else, and no one but the owner touches the private schema.
DO $$
DECLARE
    fn regprocedure;
    public_api boolean;
BEGIN
    FOR fn, public_api IN
        SELECT p.oid::regprocedure,
               p.pronamespace <> 'session_auth'::regnamespace AND p.proname LIKE 'session\_%'
        FROM pg_catalog.pg_proc p
        JOIN pg_catalog.pg_depend d
          ON d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
        JOIN pg_catalog.pg_extension e
          ON d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.refobjid = e.oid
        WHERE e.extname = 'pg_session_auth'
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
        IF public_api THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO session_auth_client', fn);
        END IF;
    END LOOP;
END
$$;

REVOKE ALL ON ALL TABLES IN SCHEMA session_auth FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA session_auth FROM PUBLIC;

-- A role that can create objects in the schema the session_* functions live
-- in can shadow them: a session_validate(varchar) of its own is a better
-- match for a driver that binds varchar (JDBC does) than ours taking text,
-- and it would run with the caller's rights and see the caller's tokens.
-- Warn the DBA who installs into such a schema (the README says how to
-- install safely and to call schema-qualified names).
DO $$
DECLARE
    -- CREATE EXTENSION puts the target schema first in the search_path.
    target oid := pg_catalog.to_regnamespace(pg_catalog.current_schema()::pg_catalog.text)::pg_catalog.oid;
    writers text;
BEGIN
    SELECT pg_catalog.string_agg(pg_catalog.quote_ident(r.rolname::pg_catalog.text), ', '
                                 ORDER BY r.rolname)
      INTO writers
      FROM pg_catalog.pg_roles AS r
     WHERE NOT r.rolsuper
       -- Predefined roles (pg_database_owner owns schema public) act only
       -- through their members, who are checked themselves.
       AND r.oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid
       AND pg_catalog.has_schema_privilege(r.oid, target, 'CREATE');
    IF pg_catalog.has_schema_privilege('public', target, 'CREATE') THEN
        writers := pg_catalog.concat_ws(', ', 'PUBLIC', writers);
    END IF;
    IF writers IS NOT NULL THEN
        RAISE WARNING 'pg_session_auth: roles other than superusers can create objects in schema %, where its session_* functions now live: %',
            pg_catalog.current_schema(), writers
            USING HINT = 'Such a role can shadow a function (say session_validate(varchar)) for callers '
                         'that bind other types. Install into a schema only superusers can create in '
                         '(CREATE EXTENSION pg_session_auth SCHEMA ...), or REVOKE CREATE on this one, '
                         'and call the functions schema-qualified.';
    END IF;
END
$$;
