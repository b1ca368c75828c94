-- Benchmark-only objects: token lookup tables, loaders, the floor.
-- Runs in the throwaway benchmark database only (bench/run), as a superuser.
-- Token text lives in bench.* tables because pgbench cannot hold it any other
-- way; that is fine in a benchmark database and nowhere else.

CREATE SCHEMA bench;

-- Pre-issued tokens of the extension's sessions, by a dense id that pgbench
-- draws uniformly. Refresh scripts store the rotated pair back. Unlogged: it
-- is harness state, the same for every system measured.
CREATE UNLOGGED TABLE bench.tokens (
    id      int PRIMARY KEY,
    access  text NOT NULL,
    refresh text NOT NULL
) WITH (fillfactor = 80);

-- The same for the peer's sessions.
CREATE UNLOGGED TABLE bench.peer_tokens (
    id      int PRIMARY KEY,
    access  text NOT NULL,
    refresh text NOT NULL
) WITH (fillfactor = 80);

-- Answers other than 'ok' where every answer should be 'ok' (a benchmark or
-- extension bug); pgbench scripts call note_bad only on that path.
CREATE UNLOGGED TABLE bench.bad (
    run    text,
    status text,
    n      bigint NOT NULL,
    PRIMARY KEY (run, status)
);
CREATE FUNCTION bench.note_bad(run text, status text) RETURNS void LANGUAGE sql AS $$
    INSERT INTO bench.bad VALUES (run, coalesce(status, 'null'), 1)
    ON CONFLICT (run, status) DO UPDATE SET n = bench.bad.n + 1
$$;
-- The same on a hot standby, which cannot write: there a NOTICE, which pgbench
-- prints and bench/run counts (the replica workload).
CREATE FUNCTION bench.note_status(run text, status text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF pg_is_in_recovery() THEN
        RAISE NOTICE 'bench status: %', coalesce(status, 'null');
    ELSE
        PERFORM bench.note_bad(run, status);
    END IF;
END
$$;

-- The data every session carries (roles, as an application would).
CREATE FUNCTION bench.session_data() RETURNS jsonb LANGUAGE sql IMMUTABLE
    AS $$ SELECT '{"roles": ["user"], "tenant": 42}'::jsonb $$;

-- The extension's token format (src/token.rs): prefix || base64url without
-- padding of (16-byte session uuid || 4-byte generation, 1 here || 32 random
-- bytes): 8 + 70 characters; 0.1.0's had no generation (8 + 64). The
-- installed build says which it makes (a --rev build can be older than this
-- file): see bench.ext_format.
CREATE FUNCTION bench.ext_token(prefix text, session_id uuid, with_generation bool) RETURNS text
LANGUAGE sql VOLATILE AS $$
    SELECT prefix || rtrim(translate(encode(
               uuid_send(session_id)
               || CASE WHEN with_generation THEN '\x00000001'::bytea ELSE ''::bytea END
               || gen_random_bytes(32), 'base64'), '+/', '-_'), '=')
$$;

-- What the installed build makes, read off one session it issues (then
-- removed): whether its tokens carry the generation, and how many bytes of
-- SHA-256 it stores per token (32 before 0.2.0's cut to 16).
CREATE FUNCTION bench.ext_format(OUT with_generation bool, OUT digest_len int)
LANGUAGE plpgsql AS $$
DECLARE
    probe record;
BEGIN
    SELECT * INTO probe FROM session_issue('bench-format-probe');
    with_generation := length(probe.access_token) = 78;
    SELECT octet_length(access_digest) INTO digest_len
      FROM session_auth.sessions WHERE session_id = probe.session_id;
    DELETE FROM session_auth.events WHERE session_id = probe.session_id;
    DELETE FROM session_auth.sessions WHERE session_id = probe.session_id;
END
$$;

-- Sessions id lo..hi of the extension, written straight into its table with
-- the deadlines session_issue would store under the caller's settings.
-- (Loading through session_issue would also write one event per session;
-- events are not read by validate or refresh.)
CREATE FUNCTION bench.load_ext(lo int, hi int) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    now_      timestamptz := statement_timestamp();
    access_ttl interval := current_setting('session_auth.access_ttl')::interval;
    idle      interval := current_setting('session_auth.idle_timeout')::interval;
    absolute  interval := current_setting('session_auth.absolute_timeout')::interval;
    fmt       record := bench.ext_format();
BEGIN
    CREATE TEMP TABLE stage ON COMMIT DROP AS
        SELECT i AS id, sid,
               bench.ext_token('pgsa_at_', sid, fmt.with_generation) AS access,
               bench.ext_token('pgsa_rt_', sid, fmt.with_generation) AS refresh
          FROM (SELECT i, gen_random_uuid() AS sid FROM generate_series(lo, hi) i) g;
    INSERT INTO bench.tokens SELECT id, access, refresh FROM stage;
    INSERT INTO session_auth.sessions (session_id, user_id, data, auth_level, created_at,
        authenticated_at, last_refreshed_at, generation, access_digest,
        access_expires_at, refresh_digest, refresh_expires_at, absolute_expires_at, purge_after)
    SELECT sid, 'user' || id, bench.session_data(), 1, now_, now_, now_, 1,
           substr(sha256(convert_to(access, 'UTF8')), 1, fmt.digest_len),
           least(now_ + access_ttl, now_ + absolute),
           substr(sha256(convert_to(refresh, 'UTF8')), 1, fmt.digest_len),
           least(now_ + idle, now_ + absolute),
           now_ + absolute, greatest(least(now_ + access_ttl, now_ + absolute),
                                     least(now_ + idle, now_ + absolute))
      FROM stage ORDER BY sid;
END
$$;

-- Sessions of the peer, same sizes and data.
CREATE FUNCTION bench.load_peer(lo int, hi int) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    now_ timestamptz := statement_timestamp();
BEGIN
    -- Consistent by construction: skip the per-row foreign-key checks.
    SET LOCAL session_replication_role = replica;
    CREATE TEMP TABLE stage ON COMMIT DROP AS
        SELECT i AS id, gen_random_uuid() AS sid,
               peer.new_token('peer_at_') AS access, peer.new_token('peer_rt_') AS refresh
          FROM generate_series(lo, hi) i;
    INSERT INTO bench.peer_tokens SELECT id, access, refresh FROM stage;
    INSERT INTO peer.sessions (session_id, user_id, data, auth_level, created_at,
        authenticated_at, last_refreshed_at, idle_expires_at, absolute_expires_at)
    SELECT sid, 'user' || id, bench.session_data(), 1, now_, now_, now_,
           now_ + peer.idle_timeout(), now_ + peer.absolute_timeout()
      FROM stage ORDER BY sid;
    INSERT INTO peer.tokens (session_id, kind, digest, issued_at, expires_at)
    SELECT sid, k.kind, peer.token_digest(k.token), now_, now_ + k.ttl
      FROM stage,
           LATERAL (VALUES ('access', access, peer.access_ttl()),
                           ('refresh', refresh, peer.idle_timeout())) AS k(kind, token, ttl)
     ORDER BY stage.id;
END
$$;

-- Expired sessions for the purge workload: every deadline in the past, so the
-- purge may remove them at once. Not in bench.tokens (nobody presents them).
CREATE FUNCTION bench.load_expired(n int) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    past timestamptz := statement_timestamp() - interval '1 day';
BEGIN
    INSERT INTO session_auth.sessions (session_id, user_id, data, auth_level, created_at,
        authenticated_at, last_refreshed_at, generation, access_digest,
        access_expires_at, refresh_digest, refresh_expires_at, absolute_expires_at, purge_after)
    SELECT gen_random_uuid(), 'expired' || i, bench.session_data(), 1,
           past - interval '1 hour', past - interval '1 hour', past - interval '1 hour', 1,
           substr(sha256(gen_random_bytes(32)), 1, 16), past,
           substr(sha256(gen_random_bytes(32)), 1, 16), past, past, past
      FROM generate_series(1, n) i;
END
$$;

-- The floor: one indexed table of the same size holding what validate
-- returns, keyed by the SHA-256 of an access token, probed once. It has its
-- own copy of the token lookup table (so the extension's rotations never make
-- its digests stale) and is rebuilt whenever the data set grows.
CREATE FUNCTION bench.build_floor() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    now_ timestamptz := statement_timestamp();
BEGIN
    SET LOCAL client_min_messages = warning;
    DROP TABLE IF EXISTS bench.floor, bench.floor_tokens;
    CREATE UNLOGGED TABLE bench.floor_tokens (
        id      int PRIMARY KEY,
        access  text NOT NULL,
        refresh text NOT NULL
    ) WITH (fillfactor = 80);
    INSERT INTO bench.floor_tokens SELECT id, access, refresh FROM bench.tokens ORDER BY id;
    CREATE TABLE bench.floor AS
        SELECT substr(sha256(convert_to(access, 'UTF8')), 1, 16) AS digest,
               gen_random_uuid() AS session_id,
               'user' || id AS user_id, bench.session_data() AS data, 1 AS auth_level,
               now_ AS authenticated_at, now_ + interval '2 hours' AS expires_at
          FROM bench.floor_tokens;
    ALTER TABLE bench.floor ADD PRIMARY KEY (digest);
END
$$;

-- Totals for the bloat workload.
CREATE VIEW bench.ext_size AS
SELECT sum(pg_total_relation_size(c.oid))::bigint AS total,
       sum(pg_total_relation_size(c.oid)) FILTER (WHERE c.relname = 'sessions')::bigint AS sessions,
       sum(pg_total_relation_size(c.oid)) FILTER (WHERE c.relname = 'blacklist')::bigint AS blacklist,
       sum(pg_total_relation_size(c.oid)) FILTER (WHERE c.relname = 'events')::bigint AS events
  FROM pg_class c
 WHERE c.relnamespace = 'session_auth'::regnamespace AND c.relkind = 'r';
