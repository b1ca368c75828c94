-- session_revoke_user: logout everywhere, or everywhere else.
--
-- Revokes every live session of a user except keep_session (the device the
-- user is on when they press "sign out other devices") and returns how
-- many it revoked. One event per revoked session.
\set VERBOSITY terse

SELECT session_id AS phone, access_token AS phone_at FROM session_issue('alice@revoke_user', '{"device": "phone"}') \gset
SELECT session_id AS laptop, access_token AS laptop_at FROM session_issue('alice@revoke_user', '{"device": "laptop"}') \gset
SELECT session_id AS tablet, access_token AS tablet_at, refresh_token AS tablet_rt
FROM session_issue('alice@revoke_user', '{"device": "tablet"}') \gset
SELECT access_token AS bob_at FROM session_issue('bob@revoke_user') \gset

-- "Sign out other devices", from the laptop.
SELECT session_revoke_user('alice@revoke_user', keep_session => :'laptop') AS revoked;
SELECT data->>'device' AS device, session_id = :'laptop' AS is_the_laptop
FROM session_list('alice@revoke_user');
SELECT 'phone' AS device, status FROM session_validate(:'phone_at')
UNION ALL SELECT 'laptop', status FROM session_validate(:'laptop_at')
UNION ALL SELECT 'tablet', status FROM session_validate(:'tablet_at');
SELECT status AS tablet_refresh FROM session_refresh(:'tablet_rt');
-- Other users are untouched.
SELECT status AS bob FROM session_validate(:'bob_at');

-- One 'revoked_user' event per revoked session, naming the kept one.
SELECT count(*) AS events,
       count(DISTINCT session_id) AS sessions,
       bool_and(details->>'kept_session' = :'laptop') AS all_name_the_kept_session
FROM session_auth.events
WHERE user_id = 'alice@revoke_user' AND event = 'revoked_user';

-- "Sign out everywhere": the laptop too. Already revoked sessions do not
-- count again, so a second call revokes nothing.
SELECT session_revoke_user('alice@revoke_user') AS revoked;
SELECT session_revoke_user('alice@revoke_user') AS revoked_again;
SELECT status AS laptop FROM session_validate(:'laptop_at');
SELECT count(*) AS live_sessions FROM session_list('alice@revoke_user');
SELECT details FROM session_auth.events
WHERE session_id = :'laptop' AND event = 'revoked_user';

-- A user with no sessions, or a keep_session of another user: nothing
-- special, the count says what happened.
SELECT session_revoke_user('nobody@revoke_user') AS revoked;
SELECT session_revoke_user('bob@revoke_user', keep_session => :'laptop') AS revoked;
SELECT status AS bob FROM session_validate(:'bob_at');

-- keep_session may name the only session: then nothing is revoked.
SELECT session_id AS carol, access_token AS carol_at FROM session_issue('carol@revoke_user') \gset
SELECT session_revoke_user('carol@revoke_user', :'carol') AS revoked;
SELECT status AS carol FROM session_validate(:'carol_at');
