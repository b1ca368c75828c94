-- Timeouts, and a DBA tightening them.
--
-- Deadlines are fixed on a session when a token is issued or refreshed,
-- from the settings of that moment. Every check also applies the caller's
-- current settings: the effective deadline is the earlier of the stored
-- one and its anchor (creation, last refresh, token issue) plus the current
-- setting. So tightening a timeout (in postgresql.conf, per database, per
-- role; here with SET, as a superuser) tightens it for existing sessions at
-- once, while loosening it never extends a stored deadline. Every
-- expires_at returned is the caller's effective one.
\set VERBOSITY terse

SELECT session_id, access_token AS at, refresh_token AS rt
FROM session_issue('alice@timeouts') \gset

-- Under the defaults: access 15min, session (idle) 30min.
SELECT expires_at - authenticated_at AS access_expires_after FROM session_validate(:'at');
SELECT expires_at - created_at AS session_expires_after FROM session_list('alice@timeouts');

-- Tighter settings shorten what every call reports...
SET session_auth.access_ttl = '5min';
SET session_auth.idle_timeout = '10min';
SELECT expires_at - authenticated_at AS access_expires_after FROM session_validate(:'at');
SELECT expires_at - created_at AS session_expires_after FROM session_list('alice@timeouts');
SET session_auth.idle_timeout = '3min';
SELECT expires_at - authenticated_at AS access_capped_by_session FROM session_validate(:'at');
SET session_auth.idle_timeout = '1h';
SET session_auth.absolute_timeout = '20min';
SELECT expires_at - created_at AS capped_by_absolute FROM session_list('alice@timeouts');
RESET ALL;
-- ...looser ones change nothing.
SET session_auth.access_ttl = '1d';
SET session_auth.idle_timeout = '30d';
SET session_auth.absolute_timeout = '90d';
SELECT expires_at - authenticated_at AS access_expires_after FROM session_validate(:'at');
SELECT expires_at - created_at AS session_expires_after FROM session_list('alice@timeouts');
RESET ALL;

-- A session a second old, refreshed once: its access token and current
-- refresh token are fresh, the session itself is not.
SELECT pg_sleep(1.1);
SELECT status, access_token AS at, refresh_token AS rt FROM session_refresh(:'rt') \gset
SELECT status FROM session_validate(:'at');

-- The DBA sets the idle timeout to one second: the session was refreshed
-- just now, so it lives on.
SET session_auth.idle_timeout = '1s';
SELECT status FROM session_validate(:'at');
SELECT count(*) AS listed FROM session_list('alice@timeouts');
RESET session_auth.idle_timeout;

-- The DBA sets the absolute timeout to one second: the session was created
-- over a second ago, so it is expired at once, for every call.
SET session_auth.absolute_timeout = '1s';
SELECT * FROM session_validate(:'at');
SELECT * FROM session_refresh(:'rt');
SELECT count(*) AS listed FROM session_list('alice@timeouts');
SELECT session_set_data(:'session_id', '{"x": 1}') AS set_data;
SELECT session_revoke_user('alice@timeouts') AS revoked_live_sessions;
\set VERBOSITY sqlstate
SELECT * FROM session_require(:'at');
SELECT * FROM session_reauthenticate(:'at');
\set VERBOSITY terse
-- Nothing was written: back under the stored deadlines, the session is live.
RESET session_auth.absolute_timeout;
SELECT status FROM session_validate(:'at');
SELECT count(*) AS listed FROM session_list('alice@timeouts');

-- The same with the idle timeout, for a session nobody refreshed.
SELECT access_token AS idle_at, refresh_token AS idle_rt
FROM session_issue('bob@timeouts') \gset
SELECT pg_sleep(1.1);
SET session_auth.idle_timeout = '1s';
SELECT status AS validate FROM session_validate(:'idle_at');
SELECT status AS refresh FROM session_refresh(:'idle_rt');
SELECT count(*) AS listed FROM session_list('bob@timeouts');
RESET session_auth.idle_timeout;

-- Stored deadlines hold whatever the settings later say: a session issued
-- under a 2s absolute timeout gets refresh and access deadlines capped by
-- it, a refresh does not extend them, and it ends two seconds after login
-- even under the default settings.
SET session_auth.absolute_timeout = '2s';
SELECT access_token AS at, refresh_token AS rt,
       access_expires_at - statement_timestamp() AS access_lifetime,
       refresh_expires_at - statement_timestamp() AS refresh_lifetime,
       refresh_expires_at AS ends_at
FROM session_issue('dave@timeouts') \gset
RESET session_auth.absolute_timeout;
SELECT :'access_lifetime' AS access_lifetime, :'refresh_lifetime' AS refresh_lifetime;
SELECT status, refresh_expires_at = :'ends_at' AS same_end, access_expires_at = :'ends_at' AS access_too,
       access_token AS at, refresh_token AS rt
FROM session_refresh(:'rt') \gset
SELECT :'status' AS status, :'same_end' AS same_end, :'access_too' AS access_too;
SELECT pg_sleep(2.1);
SELECT status AS validate FROM session_validate(:'at');
SELECT status AS refresh FROM session_refresh(:'rt');
SELECT count(*) AS listed FROM session_list('dave@timeouts');

-- Time is the statement's timestamp, not the transaction's: a long
-- transaction cannot stretch a deadline.
SET session_auth.access_ttl = '1s';
SELECT access_token AS at FROM session_issue('frank@timeouts') \gset
RESET session_auth.access_ttl;
BEGIN;
SELECT status AS at_start FROM session_validate(:'at');
SELECT pg_sleep(1.1);
SELECT status AS a_second_later_same_transaction FROM session_validate(:'at');
COMMIT;

-- An idle timeout shorter than the access lifetime (a DBA who tightens the
-- idle timeout below access_ttl makes this common): every new pair's access
-- deadline is capped by the session's idle and absolute deadlines, so the
-- access_expires_at a call returns is the one validate enforces, and a retry
-- inside the grace window returns the same deadline as the first answer.
SET session_auth.access_ttl = '1h';
SET session_auth.idle_timeout = '30s';
SELECT access_token AS at, refresh_token AS rt,
       access_expires_at - statement_timestamp() AS access_lifetime,
       access_expires_at AS issued_access_expires_at
FROM session_issue('grace@timeouts') \gset
SELECT :'access_lifetime' AS issue_access_capped_by_idle;
SELECT status, expires_at = :'issued_access_expires_at' AS validate_agrees
FROM session_validate(:'at');
SELECT status, access_token AS at, refresh_token AS rt2,
       access_expires_at - statement_timestamp() AS access_lifetime,
       access_expires_at AS refreshed_access_expires_at
FROM session_refresh(:'rt') \gset
SELECT :'status' AS status, :'access_lifetime' AS refresh_access_capped_by_idle;
SELECT status, access_expires_at = :'refreshed_access_expires_at' AS retry_same_access_deadline
FROM session_refresh(:'rt');
SELECT status, expires_at = :'refreshed_access_expires_at' AS validate_agrees
FROM session_validate(:'at');
SELECT access_expires_at - statement_timestamp() AS reauthenticate_access_capped_by_idle
FROM session_reauthenticate(:'at');
RESET ALL;
