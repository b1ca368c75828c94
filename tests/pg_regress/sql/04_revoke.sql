-- session_revoke and session_revoke_id: logging out one session.
--
-- session_revoke(token) is the logout button: any token of the session
-- (access or refresh, current or superseded) revokes the whole session.
-- session_revoke_id(session_id) is "sign out this device" on a devices page.
-- Both answer true if they revoked something, false otherwise, and are
-- idempotent. Neither raises on a bad token.
\set VERBOSITY terse

-- Logout with the access token.
SELECT session_id AS s1, access_token AS a1, refresh_token AS r1
FROM session_issue('alice@revoke') \gset
SELECT session_revoke(:'a1') AS revoked;
SELECT session_revoke(:'a1') AS revoked_again;
SELECT session_revoke(:'r1') AS revoked_with_the_other_token;
SELECT status AS access FROM session_validate(:'a1');
SELECT status AS refresh FROM session_refresh(:'r1');

-- One 'revoked' event, and the session's current pair on the blacklist.
SELECT event, user_id, details FROM session_auth.events
WHERE session_id = :'s1' ORDER BY event_id;
SELECT generation, access_digest IS NOT NULL AS access_kept,
       refresh_digest IS NOT NULL AS refresh_kept, reason,
       expires_at > revoked_at AS kept_until_expiry
FROM session_auth.blacklist WHERE session_id = :'s1';

-- Logout with the refresh token.
SELECT access_token AS a1, refresh_token AS r1 FROM session_issue('alice@revoke') \gset
SELECT session_revoke(:'r1') AS revoked;
SELECT status AS access FROM session_validate(:'a1');

-- Logout with a superseded token: the parent of the current pair, or an
-- older ancestor, still names the session.
SELECT access_token AS a1, refresh_token AS r1 FROM session_issue('alice@revoke') \gset
SELECT access_token AS a2, refresh_token AS r2 FROM session_refresh(:'r1') \gset
SELECT access_token AS a3, refresh_token AS r3 FROM session_refresh(:'r2') \gset
SELECT session_revoke(:'r1') AS revoked_with_an_ancestor;
SELECT status AS current_access FROM session_validate(:'a3');
-- Revoking with an old token is a logout, not a theft: no reuse event.
SELECT access_token AS a1, refresh_token AS r1 FROM session_issue('alice@revoke') \gset
SELECT access_token AS a2, refresh_token AS r2 FROM session_refresh(:'r1') \gset
SELECT session_revoke(:'a1') AS revoked_with_the_parent_access_token;
SELECT status AS current_refresh FROM session_refresh(:'r2');
SELECT event, count(*) FROM session_auth.events
WHERE user_id = 'alice@revoke' GROUP BY event ORDER BY event;

-- Anything else is false, never an error, and revokes nothing.
SELECT access_token AS live FROM session_issue('alice@revoke') \gset
SELECT session_revoke(NULL) AS null_token;
SELECT session_revoke('') AS empty;
SELECT session_revoke('pgsa_at_garbage') AS garbage;
SELECT session_revoke('pgsa_at_' || repeat('A', 64)) AS unknown_session;
SELECT session_revoke(left(:'live', 40) || repeat('A', 32)) AS forged_secret;
SELECT session_revoke(repeat('x', 10000000)) AS ten_megabytes;
SELECT status AS still_live FROM session_validate(:'live');

-- session_revoke_id: by session id.
SELECT session_id AS s2, access_token AS a2, refresh_token AS r2
FROM session_issue('bob@revoke') \gset
SELECT session_revoke_id(:'s2') AS revoked;
SELECT session_revoke_id(:'s2') AS revoked_again;
SELECT status AS access FROM session_validate(:'a2');
SELECT status AS refresh FROM session_refresh(:'r2');
SELECT event FROM session_auth.events WHERE session_id = :'s2' ORDER BY event_id;
SELECT session_revoke_id(NULL) AS null_id;
SELECT session_revoke_id('00000000-0000-4000-8000-000000000000') AS unknown_id;

-- Once a session is revoked, revoking it by token answers false as well.
SELECT session_revoke(:'a2') AS by_token;
