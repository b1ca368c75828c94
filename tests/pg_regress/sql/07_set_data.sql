-- session_set_data: replacing a live session's data.
--
-- The data is the application's (roles, preferences, a CSRF secret...),
-- a JSON object of at most 64 kB, returned by session_validate,
-- session_require and session_list. session_set_data replaces it whole and
-- answers true, or false if there is no live session with that id.
\set VERBOSITY terse

SELECT session_id, access_token, refresh_token
FROM session_issue('alice@set_data', '{"roles": ["reader"]}') \gset
SELECT data FROM session_validate(:'access_token');

SELECT session_set_data(:'session_id', '{"roles": ["reader", "writer"], "csrf": "k3y"}');
SELECT data FROM session_validate(:'access_token');
SELECT data FROM session_require(:'access_token');
SELECT data FROM session_list('alice@set_data');

-- Replaced, not merged.
SELECT session_set_data(:'session_id', '{"theme": "dark"}');
SELECT data FROM session_validate(:'access_token');

-- The data follows the session through a refresh.
SELECT access_token FROM session_refresh(:'refresh_token') \gset
SELECT data FROM session_validate(:'access_token');

-- An empty object is fine.
SELECT session_set_data(:'session_id', '{}');
SELECT data FROM session_validate(:'access_token');

-- No such live session: false, and nothing changes.
SELECT session_set_data('00000000-0000-4000-8000-000000000000', '{"x": 1}') AS unknown_id;
SELECT session_set_data(NULL, '{"x": 1}') AS null_id;
SELECT session_revoke_id(:'session_id');
SELECT session_set_data(:'session_id', '{"x": 1}') AS revoked_session;
SELECT data FROM session_auth.sessions WHERE session_id = :'session_id';
