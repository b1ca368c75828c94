-- session_list: the user's live sessions, for a "your devices" page.
--
-- Newest first. Revoked and expired sessions are not listed. expires_at is
-- when the session ends if it is not refreshed: the earlier of its idle
-- and absolute deadlines.
\set VERBOSITY terse

SELECT * FROM session_list('x') \gdesc

SELECT session_id AS phone, statement_timestamp() AS phone_issued_at
FROM session_issue('alice@list', '{"device": "phone"}') \gset
SELECT session_id AS laptop, refresh_token AS laptop_rt
FROM session_issue('alice@list', '{"device": "laptop"}', 2) \gset
SELECT session_id AS tablet FROM session_issue('alice@list', '{"device": "tablet"}') \gset
SELECT session_id AS watch FROM session_issue('alice@list', '{"device": "watch"}', 3) \gset
SELECT session_id AS bob FROM session_issue('bob@list', '{"device": "bob''s phone"}') \gset

-- Newest first, with the data the application stored on each.
SELECT data->>'device' AS device, auth_level,
       created_at = authenticated_at AND created_at = last_refreshed_at AS untouched_since_login,
       expires_at - last_refreshed_at AS idle_deadline
FROM session_list('alice@list');

-- The same sessions by id.
SELECT array_agg(session_id ORDER BY ordinality) = ARRAY[:'watch', :'tablet', :'laptop', :'phone']::uuid[]
    AS newest_first
FROM session_list('alice@list') WITH ORDINALITY;
SELECT created_at = :'phone_issued_at' AS phone_created_at_issue
FROM session_list('alice@list') WHERE session_id = :'phone';

-- A refresh moves last_refreshed_at and the idle deadline, not created_at
-- nor the order.
SELECT status FROM session_refresh(:'laptop_rt');
SELECT data->>'device' AS device,
       last_refreshed_at > created_at AS refreshed,
       authenticated_at = created_at AS authenticated_at_login,
       expires_at - last_refreshed_at AS idle_deadline
FROM session_list('alice@list');

-- Revoked sessions are gone from the list.
SELECT session_revoke_id(:'tablet');
SELECT data->>'device' AS device FROM session_list('alice@list');

-- Only this user's sessions; an unknown user has none.
SELECT data->>'device' AS device FROM session_list('bob@list');
SELECT count(*) AS sessions FROM session_list('nobody@list');

-- The idle deadline is capped by the absolute one: a session issued under a
-- 10 minute absolute timeout ends then, whatever the idle timeout says.
SET session_auth.absolute_timeout = '10min';
SELECT session_id AS short FROM session_issue('carol@list') \gset
RESET session_auth.absolute_timeout;
SELECT expires_at - created_at AS ends_after FROM session_list('carol@list');
