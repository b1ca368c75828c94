-- session_auth.max_sessions_per_user: a cap on live sessions per user.
--
-- On a login beyond the cap the user's oldest live sessions (by creation)
-- are revoked, one 'evicted' event each. Revoked and expired sessions do
-- not count. 0 (the default) means no limit.
\set VERBOSITY terse

SET session_auth.max_sessions_per_user = 2;

-- bob is logged in on two devices before any of alice's logins.
SELECT access_token AS bob1_at FROM session_issue('bob@max_sessions', '{"device": "phone"}') \gset
SELECT access_token AS bob2_at FROM session_issue('bob@max_sessions', '{"device": "laptop"}') \gset

-- alice logs in three times, one statement after another.
SELECT session_id AS phone, access_token AS phone_at, refresh_token AS phone_rt
FROM session_issue('alice@max_sessions', '{"device": "phone"}') \gset
SELECT session_id AS laptop, access_token AS laptop_at
FROM session_issue('alice@max_sessions', '{"device": "laptop"}') \gset
SELECT count(*) AS sessions_after_two_logins FROM session_list('alice@max_sessions');
SELECT session_id AS tablet, access_token AS tablet_at
FROM session_issue('alice@max_sessions', '{"device": "tablet"}') \gset

-- The third login evicted the oldest: the list shows the two newest.
SELECT data->>'device' AS device FROM session_list('alice@max_sessions');

-- The evicted session is revoked: every token of it, every function.
SELECT status AS phone_access FROM session_validate(:'phone_at');
SELECT status AS phone_refresh FROM session_refresh(:'phone_rt');
\set VERBOSITY sqlstate
SELECT * FROM session_require(:'phone_at');
\set VERBOSITY terse
SELECT session_revoke(:'phone_at') AS revoked_again;
SELECT 'laptop' AS device, status FROM session_validate(:'laptop_at')
UNION ALL SELECT 'tablet', status FROM session_validate(:'tablet_at');

-- One 'evicted' event, for the phone, saying which cap evicted it; the
-- session row records why it was revoked.
SELECT event, session_id = :'phone' AS is_the_phone, details
FROM session_auth.events
WHERE user_id = 'alice@max_sessions' AND event <> 'issued'
ORDER BY event_id;
SELECT revoked_reason FROM session_auth.sessions WHERE session_id = :'phone';

-- Other users are unaffected.
SELECT 'bob1' AS session, status FROM session_validate(:'bob1_at')
UNION ALL SELECT 'bob2', status FROM session_validate(:'bob2_at');
SELECT count(*) AS bob_evictions
FROM session_auth.events WHERE user_id = 'bob@max_sessions' AND event = 'evicted';

-- Only live sessions count: after alice signs out of the laptop she has
-- one, so her next login evicts nothing.
SELECT session_revoke_id(:'laptop') AS laptop_signed_out;
SELECT session_id AS watch FROM session_issue('alice@max_sessions', '{"device": "watch"}') \gset
SELECT data->>'device' AS device FROM session_list('alice@max_sessions');
SELECT count(*) AS evictions
FROM session_auth.events WHERE user_id = 'alice@max_sessions' AND event = 'evicted';

-- A lower cap evicts as many of the oldest as it takes: with a cap of 1
-- the next login leaves only itself.
SET session_auth.max_sessions_per_user = 1;
SELECT session_id AS desktop FROM session_issue('alice@max_sessions', '{"device": "desktop"}') \gset
SELECT data->>'device' AS device FROM session_list('alice@max_sessions');
SELECT CASE session_id WHEN :'phone' THEN 'phone' WHEN :'tablet' THEN 'tablet'
                       WHEN :'watch' THEN 'watch' END AS evicted, details
FROM session_auth.events
WHERE user_id = 'alice@max_sessions' AND event = 'evicted'
ORDER BY details->>'max_sessions_per_user' DESC, 1;

-- 0 means no limit.
SET session_auth.max_sessions_per_user = 0;
SELECT count(*) AS logins
FROM generate_series(1, 5) AS i, LATERAL session_issue('carol@max_sessions', jsonb_build_object('n', i));
SELECT count(*) AS carol_sessions FROM session_list('carol@max_sessions');
SELECT session_id AS phone2 FROM session_issue('alice@max_sessions', '{"device": "phone"}') \gset
SELECT session_id AS laptop2 FROM session_issue('alice@max_sessions', '{"device": "laptop"}') \gset
SELECT data->>'device' AS device FROM session_list('alice@max_sessions');
SELECT count(*) AS evictions
FROM session_auth.events WHERE event = 'evicted' AND user_id IN ('carol@max_sessions', 'alice@max_sessions');
RESET session_auth.max_sessions_per_user;
