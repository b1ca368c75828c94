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
