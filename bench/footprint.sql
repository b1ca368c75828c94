-- bench/footprint.sql: bytes per live session at rest (bench/run, workload
-- footprint; issue 17). Run by bench/run with psql -v n=SESSIONS in a fresh
-- database holding pg_session_auth and nothing else of the benchmark's, so no
-- other workload's rows count and the order of the workloads does not matter.
-- Prints one line of key=value figures (bytes) for bench/report.py.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;

-- :n sessions through the API, 20-byte user ids, no data.
CREATE TEMP TABLE issued AS
    SELECT s.refresh_token
      FROM generate_series(1, :n) i,
           LATERAL session_issue('user-' || lpad(i::text, 15, '0'), '{}') s;

-- Each rotated once, with a short grace window...
SET session_auth.refresh_grace = '1s';
SELECT count(*) FILTER (WHERE r.status = 'ok') AS rotated
  FROM issued, LATERAL session_refresh(issued.refresh_token) r \gset
DROP TABLE issued;

-- ...which is over before anything is measured (the last one, plus a margin).
SELECT pg_sleep(greatest(0, extract(epoch FROM max(grace_until) - clock_timestamp())) + 0.2)
  FROM session_auth.sessions \gset

-- A purge pass, as the worker makes at rest (this database has no worker):
-- removes nothing expired (the policy is hours long), but whatever the purge
-- tidies once a grace window is over is tidied.
SELECT EXISTS (SELECT FROM pg_proc WHERE proname = 'session_purge') AS have_purge \gset
\if :have_purge
DO $$ BEGIN LOOP EXIT WHEN session_purge() = 0; END LOOP; END $$;
\endif

-- VACUUM FULL of every table of the extension, listed from the catalog.
SELECT format('VACUUM FULL %s', c.oid::regclass)
  FROM pg_class c
 WHERE c.relnamespace = 'session_auth'::regnamespace AND c.relkind IN ('r', 'm') \gexec

-- The floor for comparison (bench/setup.sql's bench.floor with these user
-- ids and data): one row per session, a digest primary key, its user id.
CREATE TABLE bench.rest_floor AS
    SELECT substr(sha256(gen_random_bytes(32)), 1, 16) AS digest, gen_random_uuid() AS session_id,
           'user-' || lpad(i::text, 15, '0') AS user_id, '{}'::jsonb AS data, 1 AS auth_level,
           statement_timestamp() AS authenticated_at,
           statement_timestamp() + interval '2 hours' AS expires_at
      FROM generate_series(1, :n) i;
ALTER TABLE bench.rest_floor ADD PRIMARY KEY (digest);

-- Every relation with storage of the extension (its schema, and any member
-- of the extension elsewhere), but session_auth.events and what belongs to
-- it (its indexes and TOAST are in its pg_total_relation_size; its sequence
-- depends on it). pg_total_relation_size: heap, indexes, TOAST, all forks.
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'pg_session_auth'),
rel AS (
    SELECT c.oid, c.relname
      FROM pg_class c
     WHERE c.relkind IN ('r', 'm', 'S')
       AND (c.relnamespace = 'session_auth'::regnamespace
            OR c.oid IN (SELECT d.objid FROM pg_depend d, ext
                          WHERE d.classid = 'pg_class'::regclass
                            AND d.refclassid = 'pg_extension'::regclass
                            AND d.refobjid = ext.oid AND d.deptype = 'e'))
       AND c.oid <> 'session_auth.events'::regclass
       AND NOT EXISTS (SELECT FROM pg_depend d
                        WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                          AND d.refclassid = 'pg_class'::regclass
                          AND d.refobjid = 'session_auth.events'::regclass)
),
live AS (
    SELECT count(*) AS n
      FROM session_auth.sessions
     WHERE revoked_at IS NULL
       AND least(refresh_expires_at, absolute_expires_at) > statement_timestamp()
)
SELECT concat_ws(' ',
           'n=' || :n, 'rotated=' || :rotated, 'live=' || live.n,
           'relations=' || (SELECT count(*) FROM rel),
           'sessions=' || pg_total_relation_size('session_auth.sessions'),
           'sessions_heap=' || pg_table_size('session_auth.sessions'),
           'blacklist=' || coalesce((SELECT pg_total_relation_size(oid) FROM rel
                                      WHERE relname = 'blacklist'), 0),
           'all=' || (SELECT sum(pg_total_relation_size(oid)) FROM rel),
           'events=' || pg_total_relation_size('session_auth.events'),
           'floor=' || pg_total_relation_size('bench.rest_floor'),
           'floor_heap=' || pg_table_size('bench.rest_floor'))
  FROM live;
