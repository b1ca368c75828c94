-- Privileges, last of all. PUBLIC may execute nothing of the extension; the
-- role session_auth_client may execute the public session_* functions and
-- nothing else, and no one but the owner touches the private schema.
--
-- Every operator and function below is named with its schema and its
-- operands cast to one type: this runs as a superuser with the target
-- schema in its search_path, where a role that can create objects there
-- could have planted a look-alike (=(oid, regclass) and
-- format(text, regprocedure) have no exact match in pg_catalog, so a
-- planted one would win).
DO $$
DECLARE
    fn pg_catalog.text;
    public_api pg_catalog.bool;
BEGIN
    FOR fn, public_api IN
        SELECT p.oid::pg_catalog.regprocedure::pg_catalog.text,
               p.pronamespace OPERATOR(pg_catalog.<>) 'session_auth'::pg_catalog.regnamespace::pg_catalog.oid
               AND p.proname::pg_catalog.text OPERATOR(pg_catalog.~~) 'session\_%'::pg_catalog.text
        FROM pg_catalog.pg_proc AS p
        JOIN pg_catalog.pg_depend AS d
          ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass::pg_catalog.oid
         AND d.objid OPERATOR(pg_catalog.=) p.oid
         AND d.deptype OPERATOR(pg_catalog.=) 'e'::pg_catalog."char"
        JOIN pg_catalog.pg_extension AS e
          ON d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass::pg_catalog.oid
         AND d.refobjid OPERATOR(pg_catalog.=) e.oid
        WHERE e.extname OPERATOR(pg_catalog.=) 'pg_session_auth'::pg_catalog.name
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
        IF public_api THEN
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO session_auth_client', fn);
        END IF;
    END LOOP;
END
$$;

REVOKE ALL ON ALL TABLES IN SCHEMA session_auth FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA session_auth FROM PUBLIC;
