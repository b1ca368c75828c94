-- When several outcomes apply, the first wins:
--
--     invalid, revoked, expired, reuse_detected
--
-- and reuse is only detected, recorded and announced for a session that is
-- still live.
\set VERBOSITY terse

-- invalid before revoked: a revoked session's own tokens answer 'revoked',
-- but a forged token naming it, or a token of the wrong kind, is 'invalid'.
SELECT access_token AS alice_a, refresh_token AS alice_r FROM session_issue('alice@precedence') \gset
SELECT session_revoke(:'alice_a');
SELECT status AS own_access FROM session_validate(:'alice_a');
SELECT status AS own_refresh FROM session_refresh(:'alice_r');
SELECT status AS forged_access FROM session_validate(left(:'alice_a', 40) || repeat('A', 32));
SELECT status AS forged_refresh FROM session_refresh(left(:'alice_r', 40) || repeat('A', 32));
SELECT status AS refresh_token_to_validate FROM session_validate(:'alice_r');
SELECT status AS access_token_to_refresh FROM session_refresh(:'alice_a');
\set VERBOSITY sqlstate
SELECT * FROM session_require(left(:'alice_a', 40) || repeat('A', 32));
\set VERBOSITY terse

-- The stage for the rest: sessions a second old. erin's r0 and r1 were
-- issued under a 1s idle timeout; r1 was replaced at once by r2 (30min).
SELECT access_token AS carol_a1, refresh_token AS carol_r1 FROM session_issue('carol@precedence') \gset
SET session_auth.idle_timeout = '1s';
SELECT session_id AS erin, refresh_token AS erin_r0 FROM session_issue('erin@precedence') \gset
SELECT refresh_token AS erin_r1 FROM session_refresh(:'erin_r0') \gset
RESET session_auth.idle_timeout;
SELECT access_token AS erin_a2, refresh_token AS erin_r2 FROM session_refresh(:'erin_r1') \gset
SELECT pg_sleep(1.1);

-- revoked before expired: alice's session is revoked, and under a 1s
-- absolute timeout it is expired too. Revoked it says.
SET session_auth.absolute_timeout = '1s';
SELECT status AS access FROM session_validate(:'alice_a');
SELECT status AS refresh FROM session_refresh(:'alice_r');
\set VERBOSITY sqlstate
SELECT * FROM session_require(:'alice_a');
\set VERBOSITY terse
RESET session_auth.absolute_timeout;

-- expired before a grace retry and before reuse. carol refreshes now; then
-- under a 1s absolute timeout her session is expired, and her superseded
-- parent refresh token answers 'expired', within the grace window or
-- after it, and records no reuse.
SELECT access_token AS carol_a2, refresh_token AS carol_r2 FROM session_refresh(:'carol_r1') \gset
SET session_auth.absolute_timeout = '1s';
SELECT status AS parent_within_grace FROM session_refresh(:'carol_r1');
SET session_auth.refresh_grace = 0;
SELECT status AS parent_after_grace FROM session_refresh(:'carol_r1');
SELECT status AS current_access FROM session_validate(:'carol_a2');
SELECT count(*) FILTER (WHERE event = 'reuse_detected') AS reuse_events
FROM session_auth.events WHERE user_id = 'carol@precedence';
RESET ALL;
-- Nothing was revoked: under the default settings carol is still logged in.
SELECT status AS current_access FROM session_validate(:'carol_a2');

-- A superseded refresh token is also expired once its own deadline has
-- passed, and expired wins over reuse. erin's session is live (r2 is good
-- for 30min), but r1 and its parent r0 passed their 1s idle deadline: a
-- replay of either, after a 200ms grace, answers 'expired' and revokes
-- nothing.
SET session_auth.refresh_grace = '200ms';
SELECT status AS session FROM session_validate(:'erin_a2');
SELECT status AS older_ancestor_r0 FROM session_refresh(:'erin_r0');
SELECT status AS parent_r1 FROM session_refresh(:'erin_r1');
SELECT status AS session FROM session_validate(:'erin_a2');
SELECT count(*) FILTER (WHERE event = 'reuse_detected') AS reuse_events
FROM session_auth.events WHERE session_id = :'erin';
RESET session_auth.refresh_grace;
