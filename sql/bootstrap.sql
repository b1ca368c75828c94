-- pg_session_auth: private state.
--
-- Token and user-id handling assumes UTF-8 text: refuse other encodings
-- with a clear message rather than fail later on odd bytes.
DO $$
BEGIN
    IF pg_catalog.getdatabaseencoding() <> 'UTF8' THEN
        RAISE EXCEPTION 'pg_session_auth requires a UTF8 database, not %',
            pg_catalog.getdatabaseencoding()
            USING ERRCODE = '0A000',
                  HINT = 'CREATE DATABASE ... ENCODING ''UTF8'' TEMPLATE template0';
    END IF;
END
$$;
--
-- A plain CREATE SCHEMA on purpose: if a schema of this name already exists,
-- somebody else owns it and installation must fail rather than trust it.
CREATE SCHEMA session_auth;
REVOKE ALL ON SCHEMA session_auth FROM PUBLIC;
COMMENT ON SCHEMA session_auth IS
    'pg_session_auth private state: read-only for DBAs, never for applications';

-- One row per session (token family). The current token pair and its
-- superseded parent are digests on the row, so every check is one
-- primary-key probe and a rotation is one row update. A rotation changes no
-- indexed column, and a tenth of every page is kept free, so it is a HOT
-- update: the new row version goes on the same page and no index changes.
CREATE TABLE session_auth.sessions (
    session_id            uuid        PRIMARY KEY,
    user_id               text        NOT NULL,
    data                  jsonb       NOT NULL,
    auth_level            int         NOT NULL CHECK (auth_level BETWEEN 1 AND 3),
    created_at            timestamptz NOT NULL,
    authenticated_at      timestamptz NOT NULL,
    -- Anchor of the idle timeout: creation, then every rotation.
    last_refreshed_at     timestamptz NOT NULL,
    -- Generation of the current pair: 1 at issue, +1 per rotation.
    generation            int         NOT NULL,
    access_digest         bytea       NOT NULL,
    access_issued_at      timestamptz NOT NULL,
    access_expires_at     timestamptz NOT NULL,
    refresh_digest        bytea       NOT NULL,
    -- The refresh token's stored deadline: idle timeout, capped by absolute.
    refresh_expires_at    timestamptz NOT NULL,
    absolute_expires_at   timestamptz NOT NULL,
    -- The pair the current one replaced, for the grace window.
    parent_access_digest  bytea,
    parent_access_expires_at timestamptz,
    parent_refresh_digest bytea,
    parent_refresh_expires_at timestamptz,
    rotated_at            timestamptz,
    -- End of the parent's grace window, fixed by the rotating caller's
    -- refresh_grace; NULL after a reauthentication (no grace then).
    grace_until           timestamptz,
    -- The current pair's secrets, wrapped under keys derived from the parent
    -- refresh token and a retry key, so a retry within the grace gets the
    -- same pair back. Unreadable once the purge erases the retry key (after
    -- the grace window); cleared at revocation.
    retry_pair            bytea,
    revoked_at            timestamptz,
    revoked_reason        text,
    -- Not before this can the session be purged: every token of it expires
    -- later by its stored deadline. Set at issue; rotations leave it (so
    -- they stay HOT updates) and the purge moves it up when it passes on a
    -- session still alive.
    purge_after           timestamptz NOT NULL
) WITH (fillfactor = 90);
CREATE INDEX sessions_user_id_idx ON session_auth.sessions (user_id, created_at);
CREATE INDEX sessions_purge_after_idx ON session_auth.sessions (purge_after);
COMMENT ON TABLE session_auth.sessions IS
    'One row per session (token family); token digests only, never tokens';

-- Superseded or revoked token digests, kept until the token would have
-- expired anyway; the worker deletes expired entries.
CREATE TABLE session_auth.blacklist (
    digest      bytea       PRIMARY KEY,
    session_id  uuid        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('access', 'refresh')),
    generation  int         NOT NULL,
    revoked_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    reason      text        NOT NULL
);
CREATE INDEX blacklist_expires_at_idx ON session_auth.blacklist (expires_at);
COMMENT ON TABLE session_auth.blacklist IS
    'Superseded and revoked token digests until they would have expired';

-- Keys that wrap retry pairs (sessions.retry_pair). Each backend makes one
-- when it first rotates and then every 5 seconds; the purge deletes a key
-- once every grace window it covers is over, which makes every pair wrapped
-- under it unreadable without touching their rows. Dumped with the
-- sessions, so a retry within the grace works on a restored copy too.
CREATE TABLE session_auth.retry_keys (
    key_id      bigint      PRIMARY KEY,
    secret      bytea       NOT NULL,
    erase_after timestamptz NOT NULL
);
COMMENT ON TABLE session_auth.retry_keys IS
    'Keys wrapping the retry pairs of recent rotations, erased after their grace windows';

-- Security events, one row per affected session, no tokens.
CREATE TABLE session_auth.events (
    event_id    bigserial   PRIMARY KEY,
    event       text        NOT NULL CHECK (event IN ('issued', 'reuse_detected', 'revoked',
                            'revoked_user', 'reauthenticated', 'evicted')),
    at          timestamptz NOT NULL,
    session_id  uuid        NOT NULL,
    user_id     text        NOT NULL,
    details     jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX events_at_idx ON session_auth.events (at);
COMMENT ON TABLE session_auth.events IS 'Security events, kept for session_auth.event_retention';

-- pg_dump / pg_restore keep live sessions.
SELECT pg_catalog.pg_extension_config_dump('session_auth.sessions', '');
SELECT pg_catalog.pg_extension_config_dump('session_auth.blacklist', '');
SELECT pg_catalog.pg_extension_config_dump('session_auth.events', '');
SELECT pg_catalog.pg_extension_config_dump('session_auth.retry_keys', '');
SELECT pg_catalog.pg_extension_config_dump('session_auth.events_event_id_seq', '');

-- The one role a DBA grants to an application role:
--     GRANT session_auth_client TO my_app;
-- Roles are cluster-wide, so a second database reuses it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'session_auth_client') THEN
        CREATE ROLE session_auth_client NOLOGIN;
        COMMENT ON ROLE session_auth_client IS
            'pg_session_auth: may call the session_* functions, nothing else';
    END IF;
END
$$;

-- The last purge pass, for session_auth.stats: one row, updated by the
-- worker or session_purge() (whoever gets the row lock; nobody waits).
-- Not dumped: it describes this server's work, and CREATE EXTENSION makes it.
CREATE TABLE session_auth.purge_status (
    singleton          boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    last_run_at        timestamptz,
    source             text,
    blacklist_removed  bigint      NOT NULL DEFAULT 0,
    sessions_removed   bigint      NOT NULL DEFAULT 0,
    events_removed     bigint      NOT NULL DEFAULT 0,
    batches            int         NOT NULL DEFAULT 0,
    duration           interval
);
INSERT INTO session_auth.purge_status DEFAULT VALUES;

-- What a DBA watches. Counting live sessions scans the table: it is a view
-- for people, not for a hot path.
CREATE VIEW session_auth.stats AS
SELECT
    (SELECT count(*) FROM session_auth.sessions
      WHERE revoked_at IS NULL
        AND least(refresh_expires_at, absolute_expires_at) > pg_catalog.statement_timestamp())
        AS live_sessions,
    (SELECT count(*) FROM session_auth.sessions WHERE revoked_at IS NOT NULL)
        AS revoked_sessions,
    (SELECT count(*) FROM session_auth.sessions
      WHERE revoked_at IS NULL
        AND least(refresh_expires_at, absolute_expires_at) <= pg_catalog.statement_timestamp())
        AS expired_sessions,
    (SELECT count(*) FROM session_auth.blacklist) AS blacklist_entries,
    (SELECT coalesce(pg_catalog.jsonb_object_agg(event, n), '{}'::jsonb)
       FROM (SELECT event, count(*) AS n FROM session_auth.events
              WHERE at > pg_catalog.statement_timestamp() - interval '1 hour'
              GROUP BY event) AS e)
        AS events_last_hour,
    p.last_run_at AS last_purge_at,
    p.source AS last_purge_by,
    p.blacklist_removed AS last_purge_blacklist_removed,
    p.sessions_removed AS last_purge_sessions_removed,
    p.events_removed AS last_purge_events_removed,
    p.batches AS last_purge_batches,
    p.duration AS last_purge_duration
FROM session_auth.purge_status AS p;
COMMENT ON VIEW session_auth.stats IS
    'Live and revoked sessions, blacklist size, events in the last hour, the last purge pass';
