-- session_refresh: rotating refresh tokens, with theft detection.
--
-- A session is one lineage of refresh tokens. Presenting the current one
-- returns a new pair and supersedes it. Presenting a superseded one means
-- either a lost response or two tabs refreshing at once (within
-- session_auth.refresh_grace: the same new pair again), or a stolen token
-- being replayed (after the grace, or an older ancestor: the whole session
-- is revoked and the call answers 'reuse_detected').
\set VERBOSITY terse

SELECT * FROM session_refresh('') \gdesc

-- Generation 1.
SELECT session_id, access_token AS a1, refresh_token AS r1
FROM session_issue('alice@refresh') \gset

-- Rule 1: the current refresh token rotates to a new pair (generation 2).
SELECT status AS s2, session_id AS sid2, access_token AS a2, refresh_token AS r2,
       access_expires_at AS a2_expires_at, refresh_expires_at AS r2_expires_at,
       refresh_expires_at - statement_timestamp() AS idle_lifetime
FROM session_refresh(:'r1') \gset
SELECT :'s2' AS status, :'sid2' = :'session_id' AS same_session,
       left(:'a2', 8) AS access_prefix, left(:'r2', 8) AS refresh_prefix,
       :'a2' <> :'a1' AS new_access, :'r2' <> :'r1' AS new_refresh,
       :'idle_lifetime' AS refresh_slides_by_idle_timeout;

-- The new access token is good, and so, for in-flight requests, is the old
-- one, but only within the grace window (rule 6, 10s by default).
SELECT status, expires_at = :'a2_expires_at' AS full_lifetime FROM session_validate(:'a2');
SELECT status, expires_at <= statement_timestamp() + interval '10 seconds' AS within_grace
FROM session_validate(:'a1');

-- Rule 2: presenting the superseded parent again within the grace window
-- (a lost response, a second tab) returns the very same pair: no second
-- branch of the lineage is created.
SELECT status,
       access_token = :'a2' AS same_access_token,
       refresh_token = :'r2' AS same_refresh_token,
       access_expires_at = :'a2_expires_at' AS same_access_expiry,
       refresh_expires_at = :'r2_expires_at' AS same_refresh_expiry
FROM session_refresh(:'r1');
SELECT status, access_token = :'a2' AS same_access_token, refresh_token = :'r2' AS same_refresh_token
FROM session_refresh(:'r1');

-- So the pair it returned is still the current one: it rotates (generation 3).
SELECT status AS s3, access_token AS a3, refresh_token AS r3 FROM session_refresh(:'r2') \gset
SELECT :'s3' AS status, :'a3' NOT IN (:'a1', :'a2') AS new_access,
       :'r3' NOT IN (:'r1', :'r2') AS new_refresh;

-- a1 belongs to a pair superseded twice: it stopped validating when its
-- successor was superseded in turn, grace or not.
SELECT status AS a1_after_two_rotations FROM session_validate(:'a1');
SELECT status AS a2_within_grace FROM session_validate(:'a2');

-- Rule 3: r1 is now an older ancestor, not the parent, so even inside the
-- grace window it is reuse. The whole session is revoked at once.
SELECT * FROM session_refresh(:'r1');
SELECT 'a1' AS token, status FROM session_validate(:'a1')
UNION ALL SELECT 'a2', status FROM session_validate(:'a2')
UNION ALL SELECT 'a3', status FROM session_validate(:'a3');
SELECT status FROM session_refresh(:'r3');
SELECT count(*) AS live_sessions FROM session_list('alice@refresh');

-- One 'reuse_detected' event, saying which generation came back.
SELECT event, user_id, details FROM session_auth.events
WHERE session_id = :'session_id' ORDER BY event_id;

-- Precedence: the session is revoked now, so a replay answers 'revoked', not
-- 'reuse_detected' again, and records nothing more (reuse is only detected
-- for a live session; a revocation never re-opens a grace window).
SELECT status FROM session_refresh(:'r1');
SELECT status FROM session_refresh(:'r2');
SELECT count(*) FILTER (WHERE event = 'reuse_detected') AS reuse_events
FROM session_auth.events WHERE session_id = :'session_id';

-- After the grace window, the parent itself is reuse too. With a 500ms
-- grace: rotate, wait, and replay the parent.
SET session_auth.refresh_grace = '500ms';
SELECT session_id, access_token AS a1, refresh_token AS r1
FROM session_issue('bob@refresh') \gset
SELECT access_token AS a2, refresh_token AS r2 FROM session_refresh(:'r1') \gset
SELECT status AS old_access_within_grace FROM session_validate(:'a1');
SELECT pg_sleep(0.6);
-- Rule 6: the old access token stops once the grace is over.
SELECT status AS old_access_after_grace FROM session_validate(:'a1');
SELECT status AS new_access FROM session_validate(:'a2');
-- The parent refresh token comes back after the grace: reuse.
SELECT * FROM session_refresh(:'r1');
-- Every token of the family answers 'revoked' from now on.
SELECT 'a1' AS token, status FROM session_validate(:'a1')
UNION ALL SELECT 'a2', status FROM session_validate(:'a2')
UNION ALL SELECT 'r1', status FROM session_refresh(:'r1')
UNION ALL SELECT 'r2', status FROM session_refresh(:'r2');
SELECT event, details FROM session_auth.events
WHERE session_id = :'session_id' ORDER BY event_id;
RESET session_auth.refresh_grace;

-- A session revoked by logout: its old tokens answer 'revoked', and the
-- grace window of its last rotation is closed too.
SELECT access_token AS a1, refresh_token AS r1 FROM session_issue('carol@refresh') \gset
SELECT access_token AS a2, refresh_token AS r2 FROM session_refresh(:'r1') \gset
SELECT session_revoke(:'a2');
SELECT status AS parent_refresh FROM session_refresh(:'r1');
SELECT status AS parent_access FROM session_validate(:'a1');
SELECT status AS current_refresh FROM session_refresh(:'r2');
SELECT count(*) FILTER (WHERE event = 'reuse_detected') AS reuse_events
FROM session_auth.events WHERE user_id = 'carol@refresh';

-- Not a refresh token: 'invalid', every other column NULL, nothing revoked.
SELECT access_token AS a1, refresh_token AS r1 FROM session_issue('dave@refresh') \gset
SELECT * FROM session_refresh(NULL);
SELECT * FROM session_refresh('');
SELECT status AS access_token_given FROM session_refresh(:'a1');
SELECT status AS garbage FROM session_refresh('pgsa_rt_garbage');
SELECT status AS forged FROM session_refresh(left(:'r1', 40) || repeat('A', 32));
SELECT status AS ten_megabytes FROM session_refresh(repeat('x', 10000000));
SELECT status AS still_good FROM session_validate(:'a1');
SELECT status AS still_refreshes FROM session_refresh(:'r1');
