-- Installing pg_session_auth.
--
-- A superuser runs CREATE EXTENSION once per database. The session_*
-- functions land in the schema named at CREATE EXTENSION (public here), and
-- all state lives in the private schema session_auth, which the extension
-- creates itself. Every later test file runs in this same database.
\set VERBOSITY terse
CREATE EXTENSION pg_session_auth;

SELECT extname, extnamespace::regnamespace AS functions_in, extrelocatable
FROM pg_extension WHERE extname = 'pg_session_auth';

-- The private schema, the three tables that hold sessions, superseded or
-- revoked token digests and security events, and what else lives there:
-- the short-lived retry keys (UNLOGGED, never dumped), the rows capped
-- logins lock, the last purge pass, and the stats view.
SELECT nspname, pg_get_userbyid(nspowner) AS owner
FROM pg_namespace WHERE nspname = 'session_auth';

SELECT relname, relkind
FROM pg_class
WHERE relnamespace = 'session_auth'::regnamespace AND relkind IN ('r', 'v', 'S')
ORDER BY relname;

-- The tables are registered with pg_extension_config_dump, so pg_dump of
-- the database keeps its live sessions. Not the retry keys: a dump that held
-- them would let a holder of a superseded token rebuild the pair that
-- replaced it, long after the grace window (docs/security.md).
SELECT unnest(extconfig)::regclass AS dumped
FROM pg_extension WHERE extname = 'pg_session_auth'
ORDER BY 1::text;

-- The public functions: their arguments (every token argument is named
-- token) and results.
SELECT p.proname, pg_get_function_arguments(p.oid) AS arguments
FROM pg_proc p
WHERE p.proname LIKE 'session\_%' AND p.pronamespace = 'public'::regnamespace
ORDER BY p.proname;
SELECT p.proname, pg_get_function_result(p.oid) AS returns
FROM pg_proc p
WHERE p.proname LIKE 'session\_%' AND p.pronamespace = 'public'::regnamespace
ORDER BY p.proname;

-- Every function that touches state runs with the extension owner's rights
-- and a pinned search_path: pg_catalog, then pg_temp. Every object of the
-- extension is named with its schema, so no name resolves through a schema
-- another role could write (not even the private one). The PL/pgSQL
-- wrappers also plan generically, so auto_explain never shows a token as a
-- literal of their statements. The one exception is session_validate, the
-- hot path: it runs no SQL at all (two direct index probes at most) and
-- switches to the owner's user id inside Rust, which saves the settings
-- push and pop of a SET clause per call.
-- None that takes an argument is STRICT: a NULL must answer 'invalid' or
-- raise, never vanish silently.
-- session_validate writes nothing (STABLE), so it runs on a hot standby.
SELECT p.proname, p.prosecdef AS security_definer, p.proconfig,
       p.provolatile AS volatility, p.proisstrict AS strict
FROM pg_proc p
WHERE p.proname LIKE 'session\_%' AND p.pronamespace = 'public'::regnamespace
ORDER BY p.proname;

-- Installation fails when a schema named session_auth already exists:
-- somebody else owns it, and the extension will not trust it.
CREATE DATABASE regress_squatted;
\c regress_squatted
CREATE SCHEMA session_auth;
CREATE EXTENSION pg_session_auth;
SELECT count(*) AS installed FROM pg_extension WHERE extname = 'pg_session_auth';

-- Once the squatter is gone it installs, here with its functions in a
-- schema of the DBA's choosing (the private schema is still session_auth).
DROP SCHEMA session_auth;
CREATE SCHEMA auth_api;
CREATE EXTENSION pg_session_auth SCHEMA auth_api;
SELECT count(*) FILTER (WHERE pronamespace = 'auth_api'::regnamespace) AS in_auth_api,
       count(*) FILTER (WHERE pronamespace = 'public'::regnamespace) AS in_public
FROM pg_proc WHERE proname LIKE 'session\_%';
SELECT access_token AS at, refresh_token AS rt FROM auth_api.session_issue('alice@install') \gset
SELECT status FROM auth_api.session_validate(:'at');
SELECT user_id FROM auth_api.session_require(:'at');
SELECT access_token AS at FROM auth_api.session_reauthenticate(:'at', 2) \gset
SELECT status, auth_level FROM auth_api.session_validate(:'at');

-- DROP EXTENSION removes the private schema and everything in it, and a
-- new CREATE EXTENSION works in the same connection.
DROP EXTENSION pg_session_auth;
SELECT count(*) AS private_schemas FROM pg_namespace WHERE nspname = 'session_auth';
CREATE EXTENSION pg_session_auth SCHEMA auth_api;
SELECT status AS old_token FROM auth_api.session_validate(:'at');
SELECT access_token AS at FROM auth_api.session_issue('alice@install') \gset
SELECT status AS new_token FROM auth_api.session_validate(:'at');
\c contrib_regression
DROP DATABASE regress_squatted;

-- Privileges. PUBLIC can execute no function of the extension: only the
-- owner (the superuser who installed it) and the role session_auth_client,
-- which may execute the public session_* functions and nothing else.
SELECT p.oid::regprocedure AS function, p.proacl
FROM pg_proc p
JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_session_auth')
  AND p.pronamespace IN ('public'::regnamespace, 'session_auth'::regnamespace)
ORDER BY p.pronamespace::regnamespace::text, p.proname;

-- A fresh role with no grants can execute none of them.
CREATE ROLE regress_nobody;
SELECT count(*) AS functions,
       count(*) FILTER (WHERE has_function_privilege('regress_nobody', p.oid, 'EXECUTE'))
           AS executable_by_a_fresh_role,
       count(*) FILTER (WHERE has_function_privilege('public', p.oid, 'EXECUTE'))
           AS executable_by_public
FROM pg_proc p
JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_session_auth')
  AND p.pronamespace IN ('public'::regnamespace, 'session_auth'::regnamespace);

SET ROLE regress_nobody;
SELECT status FROM session_validate('pgsa_at_x');
RESET ROLE;

-- The one GRANT a DBA runs for an application role.
CREATE ROLE regress_app;
GRANT session_auth_client TO regress_app;

-- The application role can call every session_* function...
SET ROLE regress_app;
SELECT session_id AS sid, access_token AS at, refresh_token AS rt
FROM session_issue('alice@install', '{"device": "laptop"}') \gset
SELECT status FROM session_validate(:'at');
SELECT user_id, auth_level FROM session_require(:'at');
SELECT status AS refresh_status, access_token AS at, refresh_token AS rt
FROM session_refresh(:'rt') \gset
SELECT :'refresh_status' AS refresh_status;
SELECT access_token AS at, refresh_token AS rt FROM session_reauthenticate(:'at', 2) \gset
SELECT count(*) AS sessions FROM session_list('alice@install');
SELECT session_set_data(:'sid', '{"device": "phone"}');
SELECT session_revoke(:'at');
SELECT session_id AS sid FROM session_issue('alice@install') \gset
SELECT session_revoke_id(:'sid');
SELECT session_id AS sid FROM session_issue('alice@install') \gset
SELECT session_revoke_user('alice@install');

-- ...but cannot read or write the private tables, nor call the internal
-- functions of the private schema.
SELECT * FROM session_auth.sessions;
SELECT * FROM session_auth.blacklist;
SELECT * FROM session_auth.events;
SELECT * FROM session_auth.stats;
INSERT INTO session_auth.events (event, at, session_id, user_id)
    VALUES ('issued', now(), gen_random_uuid(), 'mallory');
UPDATE session_auth.sessions SET auth_level = 3;
UPDATE session_auth.blacklist SET expires_at = now();
DELETE FROM session_auth.blacklist;
DELETE FROM session_auth.events;
TRUNCATE session_auth.sessions;
SELECT * FROM session_auth.reauthenticate_pair('pgsa_at_x', 3);
RESET ROLE;

-- The same, as privileges: the schema is closed, and so is every table
-- and view in it.
SELECT has_schema_privilege('regress_app', 'session_auth', 'USAGE') AS schema_usage;
SELECT c.relname,
       has_table_privilege('regress_app', c.oid, 'SELECT') AS "select",
       has_table_privilege('regress_app', c.oid, 'INSERT') AS "insert",
       has_table_privilege('regress_app', c.oid, 'UPDATE') AS "update",
       has_table_privilege('regress_app', c.oid, 'DELETE') AS "delete",
       has_table_privilege('regress_app', c.oid, 'TRUNCATE') AS "truncate"
FROM pg_class c
WHERE c.relnamespace = 'session_auth'::regnamespace AND c.relkind IN ('r', 'v', 'S')
ORDER BY c.relname;

DROP ROLE regress_app;
DROP ROLE regress_nobody;
