-- session_purge(): the worker's cleanup, by hand or from a scheduler.
--
-- One call removes one batch: at most session_auth.purge_batch_size rows of
-- each kind, among
--   * blacklist entries past their expires_at,
--   * sessions past their stored deadlines: every token of theirs has
--     expired, whether the session was revoked or simply left alone,
--   * events older than session_auth.event_retention,
-- and returns how many rows it removed, so a caller loops until it returns
-- 0. A call that removed rows records itself in session_auth.stats.
--
-- This story runs in a database of its own, so every count below is its
-- own. (The regression cluster's purge worker serves database postgres and
-- never touches this one.)
\set VERBOSITY terse
CREATE DATABASE regress_purge;
\c regress_purge
CREATE EXTENSION pg_session_auth;

-- An empty store: nothing to remove, and no pass recorded yet.
SELECT live_sessions, revoked_sessions, expired_sessions, blacklist_entries,
       events_last_hour, last_purge_at IS NULL AS never_purged
FROM session_auth.stats;
SELECT session_purge() AS removed;
SELECT last_purge_at IS NULL AS never_purged FROM session_auth.stats;

-- The batch size is a worker setting (PGC_SIGHUP): a DBA changes it in
-- postgresql.conf, here with ALTER SYSTEM, and reloads. Batches of 2 rows
-- of each kind.
ALTER SYSTEM SET session_auth.purge_batch_size = 2;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SHOW session_auth.purge_batch_size;

-- Rows that will have expired: three sessions issued under one second
-- timeouts. short1 and short2 are refreshed once (their first pair goes to
-- the blacklist), short3 is logged out (its pair goes to the blacklist).
SET session_auth.access_ttl = '1s';
SET session_auth.idle_timeout = '1s';
SELECT access_token AS short1_at0, refresh_token AS short1_rt0 FROM session_issue('short1@purge') \gset
SELECT status, access_token AS short1_at, refresh_token AS short1_rt FROM session_refresh(:'short1_rt0') \gset
SELECT refresh_token AS short2_rt0 FROM session_issue('short2@purge') \gset
SELECT status AS short2_refresh FROM session_refresh(:'short2_rt0');
SELECT access_token AS short3_at FROM session_issue('short3@purge') \gset
SELECT session_revoke(:'short3_at') AS short3_logged_out;
RESET session_auth.access_ttl;
RESET session_auth.idle_timeout;
SELECT pg_sleep(1.1);

-- Rows that must stay, under the default timeouts: alice is logged in and
-- refreshed once; bob logged out just now, and his session stays (revoked)
-- until its tokens would have expired anyway.
SELECT session_id AS alice, refresh_token AS alice_rt0 FROM session_issue('alice@purge') \gset
SELECT status, access_token AS alice_at, refresh_token AS alice_rt FROM session_refresh(:'alice_rt0') \gset
SELECT access_token AS bob_at FROM session_issue('bob@purge') \gset
SELECT session_revoke(:'bob_at') AS bob_logged_out;

-- What the DBA sees: alice live; short3 and bob revoked; short1 and short2
-- expired but not yet purged; a blacklist entry (the pair) per refresh or
-- logout;
-- five logins and two logouts in the last hour.
SELECT live_sessions, revoked_sessions, expired_sessions, blacklist_entries,
       events_last_hour
FROM session_auth.stats;

-- Events are kept for event_retention: one second here, so the four events
-- of the short sessions (over a second old) are past it, alice's and bob's
-- are not.
SET session_auth.event_retention = '1s';

-- One call removes at most 2 rows of each kind, and says how many in all.
SELECT session_purge() AS removed;
SELECT last_purge_by, last_purge_blacklist_removed, last_purge_sessions_removed,
       last_purge_events_removed, last_purge_batches,
       last_purge_at IS NOT NULL AS recorded, last_purge_duration >= interval '0' AS timed
FROM session_auth.stats;
SELECT (SELECT count(*) FROM session_auth.blacklist WHERE expires_at < statement_timestamp())
           AS expired_blacklist_left,
       (SELECT count(*) FROM session_auth.sessions WHERE purge_after < statement_timestamp())
           AS expired_sessions_left,
       (SELECT count(*) FROM session_auth.events
         WHERE at < statement_timestamp() - interval '1 second') AS old_events_left;

-- The loop of the README: a batch per transaction until a call returns 0.
DO $$ BEGIN
    WHILE session_purge() > 0 LOOP COMMIT; END LOOP;   -- one transaction per batch
END $$;
SELECT session_purge() AS removed;

-- Everything expired is gone; the live rows stay.
SELECT user_id, revoked_at IS NOT NULL AS revoked, revoked_reason
FROM session_auth.sessions ORDER BY user_id;
SELECT s.user_id, b.generation, b.access_digest IS NOT NULL AS access_kept,
       b.refresh_digest IS NOT NULL AS refresh_kept, b.reason
FROM session_auth.blacklist b JOIN session_auth.sessions s USING (session_id)
ORDER BY 1, 2;
SELECT count(*) AS blacklist_entries_without_session
FROM session_auth.blacklist b
WHERE NOT EXISTS (SELECT FROM session_auth.sessions s WHERE s.session_id = b.session_id);
SELECT user_id, event FROM session_auth.events ORDER BY event_id;

-- Purged tokens are unknown now ('invalid'); the live ones answer as
-- before.
SELECT 'short1 access' AS token, status FROM session_validate(:'short1_at')
UNION ALL SELECT 'short1 refresh', status FROM session_refresh(:'short1_rt')
UNION ALL SELECT 'short3 access', status FROM session_validate(:'short3_at')
UNION ALL SELECT 'alice access', status FROM session_validate(:'alice_at')
UNION ALL SELECT 'bob access', status FROM session_validate(:'bob_at');

-- The stats after the loop. The last pass recorded is the last call that
-- removed something (the one that found the last blacklist entry, the
-- expired session and the old events);
-- calls that removed nothing leave the record alone.
SELECT live_sessions, revoked_sessions, expired_sessions, blacklist_entries,
       events_last_hour
FROM session_auth.stats;
SELECT last_purge_by, last_purge_blacklist_removed, last_purge_sessions_removed,
       last_purge_events_removed, last_purge_batches
FROM session_auth.stats;

-- Back to the default batch size.
ALTER SYSTEM RESET session_auth.purge_batch_size;
SELECT pg_reload_conf();
SELECT pg_sleep(0.5);
SHOW session_auth.purge_batch_size;

\c contrib_regression
DROP DATABASE regress_purge;
