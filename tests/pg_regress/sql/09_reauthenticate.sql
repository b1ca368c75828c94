-- session_reauthenticate: the user proved who they are again.
--
-- The application verified the user again (password, MFA) and passes the
-- session's current access token. The session gets authenticated_at = now,
-- its auth_level raised if asked (never lowered), and a new token pair at
-- once. The old pair stops working immediately, with no grace window: its
-- refresh token presented later is reuse. A token that is not 'ok' raises
-- SA001, SA002 or SA003, like session_require.

SELECT * FROM session_reauthenticate('') \gdesc

SELECT session_id, access_token AS a1, refresh_token AS r1, statement_timestamp() AS issued_at
FROM session_issue('alice@reauth', '{"device": "laptop"}', 1) \gset

-- Step up to level 2 (say, after a second factor).
SELECT session_id AS sid2, access_token AS a2, refresh_token AS r2,
       access_expires_at - statement_timestamp() AS access_lifetime,
       statement_timestamp() AS reauthenticated_at
FROM session_reauthenticate(:'a1', 2) \gset
SELECT :'sid2' = :'session_id' AS same_session,
       left(:'a2', 8) AS access_prefix, left(:'r2', 8) AS refresh_prefix,
       :'a2' <> :'a1' AS new_access, :'r2' <> :'r1' AS new_refresh,
       :'access_lifetime' AS access_lifetime;
SELECT status, user_id, data, auth_level,
       authenticated_at = :'reauthenticated_at' AS authenticated_now,
       authenticated_at > :'issued_at' AS later_than_login
FROM session_validate(:'a2');

-- The old access token is revoked at once: no grace for a reauthentication.
SELECT status AS old_access FROM session_validate(:'a1');

-- The level is never lowered: asking for 1, or for nothing, keeps 2.
SELECT access_token AS a3 FROM session_reauthenticate(:'a2', 1) \gset
SELECT status, auth_level FROM session_validate(:'a3');
SELECT access_token AS a4, refresh_token AS r4 FROM session_reauthenticate(:'a3') \gset
SELECT status, auth_level FROM session_validate(:'a4');
-- And raised as far as 3.
SELECT access_token AS a5, refresh_token AS r5 FROM session_reauthenticate(:'a4', 3) \gset
SELECT status, auth_level FROM session_validate(:'a5');

-- One 'reauthenticated' event per call, with the resulting level.
SELECT event, details FROM session_auth.events
WHERE session_id = :'session_id' ORDER BY event_id;

-- The refresh token of a pair replaced by a reauthentication has no grace
-- (even within session_auth.refresh_grace). For the first 100 ms it is
-- taken for another tab racing the reauthentication, and answers 'expired'
-- (docs/design.md, rule 7); the session lives on.
SELECT status AS racing_tab FROM session_refresh(:'r4');
SELECT status AS current_access FROM session_validate(:'a5');
-- After that it is reuse: the whole session dies.
SELECT pg_sleep(0.2);
SELECT status AS superseded_refresh FROM session_refresh(:'r4');
SELECT status AS current_access FROM session_validate(:'a5');
SELECT status AS current_refresh FROM session_refresh(:'r5');
SELECT event, details FROM session_auth.events
WHERE session_id = :'session_id' AND event = 'reuse_detected';

-- Only the current access token of a live session can reauthenticate.
\set VERBOSITY sqlstate
SELECT access_token AS b1, refresh_token AS b_r1 FROM session_issue('bob@reauth') \gset
-- SA001: not an access token this extension issued.
SELECT * FROM session_reauthenticate(NULL);
SELECT * FROM session_reauthenticate('');
SELECT * FROM session_reauthenticate('pgsa_at_garbage');
SELECT * FROM session_reauthenticate(:'b_r1');
SELECT * FROM session_reauthenticate(left(:'b1', 40) || repeat('A', 32));
SELECT * FROM session_reauthenticate(repeat('x', 10000000));
-- SA003: a revoked session (alice's, above).
SELECT * FROM session_reauthenticate(:'a5');
-- SA002: an expired access token.
SET session_auth.access_ttl = '1s';
SELECT access_token AS short FROM session_issue('carol@reauth') \gset
RESET session_auth.access_ttl;
SELECT pg_sleep(1.2);
SELECT * FROM session_reauthenticate(:'short');
\set VERBOSITY terse
SELECT * FROM session_reauthenticate(:'short');
SELECT * FROM session_reauthenticate(:'a5');
SELECT * FROM session_reauthenticate('pgsa_at_garbage');

-- None of that touched bob's session.
SELECT status, auth_level FROM session_validate(:'b1');
