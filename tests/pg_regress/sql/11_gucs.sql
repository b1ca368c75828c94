-- The session_auth.* settings.
--
-- Policy settings are superuser-only (PGC_SUSET): a DBA sets them in
-- postgresql.conf, per database or per role (ALTER ROLE ... SET), and the
-- application role cannot loosen them. Time settings accept units.
\set VERBOSITY terse

-- Every setting, with its default.
SHOW session_auth.access_ttl;
SHOW session_auth.idle_timeout;
SHOW session_auth.absolute_timeout;
SHOW session_auth.refresh_grace;
SHOW session_auth.max_sessions_per_user;
SHOW session_auth.event_retention;
SHOW session_auth.purge_interval;
SHOW session_auth.purge_batch_size;
-- The worker's database; it exists because this cluster preloads the
-- library (shared_preload_libraries = 'pg_session_auth').
SHOW session_auth.database;

-- Who may change what: superuser (suset), only in postgresql.conf plus a
-- reload (sighup), or only at server start (postmaster).
SELECT name, setting, unit, context, vartype, min_val, max_val, boot_val = reset_val AS at_default
FROM pg_settings WHERE name LIKE 'session\_auth.%' ORDER BY name;

-- Units are accepted, and SHOW prints the value in the largest exact unit.
SET session_auth.access_ttl = '15min';
SHOW session_auth.access_ttl;
SET session_auth.access_ttl = '90s';
SHOW session_auth.access_ttl;
SET session_auth.idle_timeout = '1d';
SHOW session_auth.idle_timeout;
SET session_auth.absolute_timeout = '7d';
SHOW session_auth.absolute_timeout;
SET session_auth.refresh_grace = '250ms';
SHOW session_auth.refresh_grace;
SET session_auth.refresh_grace = 0;
SHOW session_auth.refresh_grace;
SET session_auth.event_retention = '90d';
SHOW session_auth.event_retention;
SET session_auth.max_sessions_per_user = 5;
SHOW session_auth.max_sessions_per_user;
-- A bare number is in the setting's base unit: seconds for the timeouts.
SET session_auth.access_ttl = 600;
SHOW session_auth.access_ttl;
RESET ALL;
SHOW session_auth.access_ttl;

-- Nonsense is refused.
\set VERBOSITY sqlstate
SET session_auth.access_ttl = 'forever';
SET session_auth.access_ttl = 0;
SET session_auth.idle_timeout = '-5min';
SET session_auth.max_sessions_per_user = -1;
-- The worker's settings cannot change inside a session.
SET session_auth.purge_interval = '10s';
SET session_auth.purge_batch_size = 100;
SET session_auth.database = 'contrib_regression';
-- The prefix is reserved: a misspelt setting is an error, not a silently
-- created placeholder.
SET session_auth.acess_ttl = '1h';
\set VERBOSITY terse
SET session_auth.acess_ttl = '1h';

-- An application role cannot loosen (nor tighten) a policy setting: 42501.
CREATE ROLE regress_gucs_app LOGIN;
GRANT session_auth_client TO regress_gucs_app;
SET ROLE regress_gucs_app;
\set VERBOSITY sqlstate
SET session_auth.idle_timeout = '30d';
SET session_auth.absolute_timeout = '365d';
SET session_auth.access_ttl = '1d';
SET session_auth.refresh_grace = '1h';
SET session_auth.max_sessions_per_user = 0;
SET session_auth.event_retention = '1d';
BEGIN;
SET LOCAL session_auth.idle_timeout = '30d';
ROLLBACK;
SELECT set_config('session_auth.idle_timeout', '30d', false);
ALTER ROLE regress_gucs_app SET session_auth.idle_timeout = '30d';
\set VERBOSITY terse
SET session_auth.idle_timeout = '30d';
SHOW session_auth.idle_timeout;
RESET ROLE;

-- A DBA gives one role's sessions a longer life (a mobile app, say). The
-- role's next connection gets the settings, and the sessions it issues get
-- the longer deadlines.
ALTER ROLE regress_gucs_app SET session_auth.idle_timeout = '30d';
ALTER ROLE regress_gucs_app SET session_auth.absolute_timeout = '90d';
SELECT unnest(setconfig) AS role_setting
FROM pg_db_role_setting WHERE setrole = 'regress_gucs_app'::regrole
ORDER BY 1;
\c - regress_gucs_app
SELECT current_user;
SHOW session_auth.idle_timeout;
SHOW session_auth.absolute_timeout;
SELECT refresh_expires_at - statement_timestamp() AS refresh_lifetime,
       access_expires_at - statement_timestamp() AS access_lifetime
FROM session_issue('alice@gucs');
-- Still not something the role can change itself.
\set VERBOSITY sqlstate
SET session_auth.idle_timeout = '365d';
\set VERBOSITY terse
\c - postgres
SELECT current_user;

ALTER ROLE regress_gucs_app RESET ALL;
DROP ROLE regress_gucs_app;
