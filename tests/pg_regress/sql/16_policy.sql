-- Policy per role and per database.
--
-- A DBA sets the timeouts for one application role (ALTER ROLE ... SET) or
-- for one database (ALTER DATABASE ... SET), with PostgreSQL's usual
-- precedence: a role's setting beats the database's, and a setting for
-- the role in that database (ALTER ROLE ... IN DATABASE ... SET) beats
-- both. Deadlines are fixed on a session from the settings of the
-- connection that issues or refreshes it. The settings are superuser-only,
-- so the application role cannot change them (42501).
\set VERBOSITY terse

CREATE ROLE regress_policy_mobile LOGIN;
CREATE ROLE regress_policy_web LOGIN;
GRANT session_auth_client TO regress_policy_mobile, regress_policy_web;

-- The mobile app's sessions may idle for a week and live a month.
ALTER ROLE regress_policy_mobile SET session_auth.idle_timeout = '7d';
ALTER ROLE regress_policy_mobile SET session_auth.absolute_timeout = '30d';

\c - regress_policy_mobile
SELECT current_user,
       current_setting('session_auth.idle_timeout') AS idle_timeout,
       current_setting('session_auth.absolute_timeout') AS absolute_timeout,
       current_setting('session_auth.access_ttl') AS access_ttl;
SELECT session_id AS mobile_sid, access_token AS mobile_at,
       refresh_expires_at - statement_timestamp()
           = current_setting('session_auth.idle_timeout')::interval AS refresh_deadline_is_idle_timeout,
       access_expires_at - statement_timestamp()
           = current_setting('session_auth.access_ttl')::interval AS access_deadline_is_access_ttl
FROM session_issue('alice@policy', '{"app": "mobile"}') \gset
SELECT :'refresh_deadline_is_idle_timeout' AS refresh_deadline_is_idle_timeout,
       :'access_deadline_is_access_ttl' AS access_deadline_is_access_ttl;
-- The role's own connections see the week-long idle deadline.
SELECT status FROM session_validate(:'mobile_at');
SELECT expires_at - created_at = interval '7 days' AS idle_deadline_a_week
FROM session_list('alice@policy');

-- Still not something the role can change: not with SET, SET LOCAL,
-- set_config() or RESET, nor by altering itself.
\set VERBOSITY sqlstate
SET session_auth.idle_timeout = '365d';
SET session_auth.absolute_timeout = '365d';
BEGIN;
SET LOCAL session_auth.absolute_timeout = '365d';
ROLLBACK;
SELECT set_config('session_auth.absolute_timeout', '365d', false);
RESET session_auth.idle_timeout;
ALTER ROLE regress_policy_mobile SET session_auth.idle_timeout = '365d';
ALTER ROLE CURRENT_USER RESET session_auth.absolute_timeout;
\set VERBOSITY terse
SHOW session_auth.idle_timeout;

-- What is stored on the session: the role's settings at issue, a week of
-- idle time and a month of life.
\c - postgres
SELECT refresh_expires_at - created_at = interval '7 days' AS stored_idle_deadline_a_week,
       absolute_expires_at - created_at = interval '30 days' AS stored_absolute_deadline_a_month,
       access_expires_at - created_at = interval '15 minutes' AS stored_access_deadline_default
FROM session_auth.sessions WHERE session_id = :'mobile_sid';
-- Every check also applies the checking connection's settings: under the
-- defaults (30min idle) the same session ends after 30 minutes. So the
-- connections that issue and those that check should share the policy.
SELECT expires_at - created_at AS idle_deadline_under_defaults
FROM session_list('alice@policy');

-- A database of its own with a 20 minute absolute timeout for everyone in
-- it, superusers included.
CREATE DATABASE regress_policy_db;
ALTER DATABASE regress_policy_db SET session_auth.absolute_timeout = '20min';
\c regress_policy_db
CREATE EXTENSION pg_session_auth;
SHOW session_auth.absolute_timeout;

-- The web app's role has no settings of its own: the database's apply, and
-- the 20 minute absolute deadline caps the 30 minute idle one.
\c - regress_policy_web
SELECT current_database(), current_user,
       current_setting('session_auth.idle_timeout') AS idle_timeout,
       current_setting('session_auth.absolute_timeout') AS absolute_timeout;
SELECT session_id AS web_sid, access_token AS web_at,
       refresh_expires_at - statement_timestamp()
           = current_setting('session_auth.absolute_timeout')::interval AS refresh_deadline_is_absolute_timeout
FROM session_issue('bob@policy', '{"app": "web"}') \gset
SELECT :'refresh_deadline_is_absolute_timeout' AS refresh_deadline_is_absolute_timeout;
SELECT status FROM session_validate(:'web_at');
-- Nor can the web app lift the database's cap.
\set VERBOSITY sqlstate
SET session_auth.absolute_timeout = '12h';
RESET session_auth.absolute_timeout;
ALTER DATABASE regress_policy_db RESET session_auth.absolute_timeout;
\set VERBOSITY terse

-- The mobile role's own setting beats the database's...
\c - regress_policy_mobile
SELECT current_setting('session_auth.idle_timeout') AS idle_timeout,
       current_setting('session_auth.absolute_timeout') AS absolute_timeout;
SELECT session_id AS mobile_db_sid FROM session_issue('alice@policy', '{"app": "mobile"}') \gset

-- ...and a setting for the role in this database beats both.
\c - postgres
ALTER ROLE regress_policy_mobile IN DATABASE regress_policy_db SET session_auth.absolute_timeout = '1d';
\c - regress_policy_mobile
SELECT current_setting('session_auth.idle_timeout') AS idle_timeout,
       current_setting('session_auth.absolute_timeout') AS absolute_timeout;
SELECT session_id AS mobile_db_day_sid,
       refresh_expires_at - statement_timestamp()
           = current_setting('session_auth.absolute_timeout')::interval AS refresh_deadline_is_absolute_timeout
FROM session_issue('alice@policy', '{"app": "mobile"}') \gset
SELECT :'refresh_deadline_is_absolute_timeout' AS refresh_deadline_is_absolute_timeout;

-- The stored deadlines, session by session.
\c - postgres
SELECT CASE session_id WHEN :'web_sid' THEN 'web, database setting'
                       WHEN :'mobile_db_sid' THEN 'mobile, role setting'
                       WHEN :'mobile_db_day_sid' THEN 'mobile, role in database setting' END AS session,
       refresh_expires_at - created_at AS refresh_deadline,
       absolute_expires_at - created_at AS absolute_deadline
FROM session_auth.sessions
ORDER BY created_at;

\c contrib_regression postgres
DROP DATABASE regress_policy_db;
ALTER ROLE regress_policy_mobile RESET ALL;
DROP ROLE regress_policy_mobile;
DROP ROLE regress_policy_web;
