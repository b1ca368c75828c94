-- pg_session_auth: private state.
--
-- Token and user-id handling assumes UTF-8 text: refuse other encodings
-- with a clear message rather than fail later on odd bytes.
--
-- Everything in this script is schema-qualified, operators included
-- (OPERATOR(pg_catalog.x)): CREATE EXTENSION runs as a superuser with the
-- target schema in its search_path, where another role may have created
-- look-alike operators or functions.
DO $$
BEGIN
    IF pg_catalog.getdatabaseencoding() OPERATOR(pg_catalog.<>) 'UTF8'::pg_catalog.name THEN
        RAISE EXCEPTION 'pg_session_auth requires a UTF8 database, not %',
            pg_catalog.getdatabaseencoding()
            USING ERRCODE = '0A000',
                  HINT = 'CREATE DATABASE ... ENCODING ''UTF8'' TEMPLATE template0';
    END IF;
END
$$;
-- A role that can create objects in the schema the session_* functions will
-- live in can shadow them: a session_validate(varchar) of its own is a better
-- match for a driver that binds varchar (JDBC does) than ours taking text,
-- and it would run with the caller's rights and see the caller's tokens.
-- Warn the DBA who installs into such a schema (the README says how to
-- install safely and to call schema-qualified names). First thing, while
-- such a role is still what it was.
DO $$
DECLARE
    -- CREATE EXTENSION puts the target schema first in the search_path.
    target pg_catalog.oid := pg_catalog.to_regnamespace(pg_catalog.current_schema()::pg_catalog.text)::pg_catalog.oid;
    writers pg_catalog.text;
BEGIN
    SELECT pg_catalog.string_agg(pg_catalog.quote_ident(r.rolname::pg_catalog.text), ', '
                                 ORDER BY r.rolname)
      INTO writers
      FROM pg_catalog.pg_roles AS r
     WHERE NOT r.rolsuper
       -- Predefined roles (pg_database_owner owns schema public) act only
       -- through their members, who are checked themselves.
       AND r.oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid
       AND pg_catalog.has_schema_privilege(r.oid, target, 'CREATE');
    IF pg_catalog.has_schema_privilege('public', target, 'CREATE') THEN
        writers := pg_catalog.concat_ws(', ', 'PUBLIC', writers);
    END IF;
    IF writers IS NOT NULL THEN
        RAISE WARNING 'pg_session_auth: roles other than superusers can create objects in schema %, where its session_* functions now live: %',
            pg_catalog.current_schema(), writers
            USING HINT = 'Such a role can shadow a function (say session_validate(varchar)) for callers '
                         'that bind other types. Install into a schema only superusers can create in '
                         '(CREATE EXTENSION pg_session_auth SCHEMA ...), or REVOKE CREATE on this one, '
                         'and call the functions schema-qualified.';
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

-- One row per session (token family). The current token pair is digests on
-- the row, so checking a current token is one primary-key probe and a
-- rotation is one row update (and the blacklist row of the pair it
-- replaces: the parent, and every older pair, are only there). A rotation
-- changes no indexed column, and a tenth of every page is kept free, so it
-- is a HOT update: the new row version goes on the same page and no index
-- changes. Nothing derivable is stored: the current pair was issued at
-- last_refreshed_at, which is also when it replaced its parent, if its
-- generation is not the first (docs/design.md, "Sessions, tokens, lineage").
--
-- The column order is physical (measured in bench/README.md, "The write
-- path"): the fixed-width columns first, in an order where each starts at
-- its alignment, so that no byte of a row is padding (while user_id and data
-- are under 127 bytes, as varlenas with a 1-byte header need no alignment);
-- and the columns a rotation writes next to one another, from generation to
-- refresh_digest. A HOT update's WAL record leaves out the bytes the old and
-- the new row share at their start and at their end (unless wal_level is
-- logical), so it carries little more than those.
CREATE TABLE session_auth.sessions (
    session_id            uuid        PRIMARY KEY,
    created_at            timestamptz NOT NULL,
    authenticated_at      timestamptz NOT NULL,
    absolute_expires_at   timestamptz NOT NULL,
    -- Not before this can the session be purged: every token of it expires
    -- later by its stored deadline. Set at issue; rotations leave it (so
    -- they stay HOT updates) and the purge moves it up when it passes on a
    -- session still alive.
    purge_after           timestamptz NOT NULL,
    revoked_at            timestamptz,
    auth_level            int         NOT NULL CHECK (auth_level BETWEEN 1 AND 3),
    -- What a rotation writes, from here to refresh_digest.
    -- Generation of the current pair: 1 at issue, +1 per rotation.
    generation            int         NOT NULL,
    -- Anchor of the idle timeout and the access token's issue time:
    -- creation, then every rotation.
    last_refreshed_at     timestamptz NOT NULL,
    access_expires_at     timestamptz NOT NULL,
    -- The refresh token's stored deadline: idle timeout, capped by absolute.
    refresh_expires_at    timestamptz NOT NULL,
    -- End of the parent's grace window, fixed by the rotating caller's
    -- refresh_grace; NULL after a reauthentication (no grace then).
    grace_until           timestamptz,
    -- The retry key the current pair was derived with, from the parent
    -- refresh token (src/retry_pair.rs): a retry within the grace derives the
    -- same pair again. NULL after an issue, a reauthentication or a
    -- revocation. Nothing about the pair itself is stored.
    retry_key_id          int,
    access_digest         bytea       NOT NULL,
    refresh_digest        bytea       NOT NULL,
    -- The end of what a rotation writes.
    user_id               text        NOT NULL,
    data                  jsonb       NOT NULL,
    revoked_reason        text
) WITH (fillfactor = 90);
-- By user only: logout everywhere, the devices list and the session cap
-- find a user's sessions here and order them themselves, and equal keys
-- share one index entry (B-tree deduplication).
CREATE INDEX sessions_user_id_idx ON session_auth.sessions (user_id);
CREATE INDEX sessions_purge_after_idx ON session_auth.sessions (purge_after);
COMMENT ON TABLE session_auth.sessions IS
    'One row per session (token family); token digests only, never tokens';

-- The pairs a session no longer holds (superseded by a rotation or a
-- re-authentication, or current when it was revoked), one row per pair,
-- keyed by the session and the pair's generation, which every token
-- carries (src/blacklist.rs). Both digests are kept, each with its token's
-- deadline (a revocation leaves out, as NULL, a token that had expired
-- already); the row is kept until the later deadline (expires_at), then the
-- worker deletes it. The row one generation below the session's is the
-- parent pair, which the session row does not hold.
-- Columns in an order that needs no alignment padding (the 8-byte ones
-- first, then the 4-byte one, then the variable-length ones): a row per
-- rotation, so every byte counts.
CREATE TABLE session_auth.blacklist (
    session_id          uuid        NOT NULL,
    revoked_at          timestamptz NOT NULL,
    expires_at          timestamptz NOT NULL,
    access_expires_at   timestamptz,
    refresh_expires_at  timestamptz,
    generation          int         NOT NULL,
    access_digest       bytea,
    refresh_digest      bytea,
    reason              text        NOT NULL,
    PRIMARY KEY (session_id, generation)
);
CREATE INDEX blacklist_expires_at_idx ON session_auth.blacklist (expires_at);
COMMENT ON TABLE session_auth.blacklist IS
    'Superseded and revoked token pairs (digests only) until their tokens would have expired';

-- Keys that salt the derivation of refreshed pairs (src/retry_pair.rs), when
-- the library is not preloaded; preloaded, they live in shared memory and
-- this table stays empty (src/retry_keys.rs). A key serves a second of
-- rotations and is erased a few seconds after the last grace window it
-- covers; then no pair derived with it can be derived again. UNLOGGED, and
-- not registered for pg_dump: no WAL record, base backup, standby or dump
-- ever holds a key, so none of them, with a superseded token, rebuilds a
-- pair later. (A crash, a restore or a failover therefore ends the retries
-- of the last few seconds' rotations: they answer 'expired'.)
CREATE UNLOGGED TABLE session_auth.retry_keys (
    key_id      int         PRIMARY KEY,
    secret      bytea       NOT NULL CHECK (pg_catalog.octet_length(secret) OPERATOR(pg_catalog.=) 32),
    erase_after timestamptz NOT NULL
);
COMMENT ON TABLE session_auth.retry_keys IS
    'Short-lived keys of recent rotations'' retry pairs; never logged or dumped';

-- What logins of one user lock while max_sessions_per_user applies: one of
-- 1024 rows, by a hash of the user id. A row lock in a private table, not an
-- advisory lock: advisory locks are open to every role that can connect.
CREATE TABLE session_auth.login_locks (
    slot int PRIMARY KEY
);
INSERT INTO session_auth.login_locks SELECT pg_catalog.generate_series(0, 1023);
COMMENT ON TABLE session_auth.login_locks IS
    'Row locks that serialise one user''s logins under a session cap';

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
SELECT pg_catalog.pg_extension_config_dump('session_auth.events_event_id_seq', '');

-- The one role a DBA grants to an application role:
--     GRANT session_auth_client TO my_app;
-- Roles are cluster-wide, so a second database reuses it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                   WHERE rolname OPERATOR(pg_catalog.=) 'session_auth_client'::pg_catalog.name) THEN
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
    (SELECT pg_catalog.count(*) FROM session_auth.sessions
      WHERE revoked_at IS NULL
        AND least(refresh_expires_at, absolute_expires_at)
            OPERATOR(pg_catalog.>) pg_catalog.statement_timestamp())
        AS live_sessions,
    (SELECT pg_catalog.count(*) FROM session_auth.sessions WHERE revoked_at IS NOT NULL)
        AS revoked_sessions,
    (SELECT pg_catalog.count(*) FROM session_auth.sessions
      WHERE revoked_at IS NULL
        AND least(refresh_expires_at, absolute_expires_at)
            OPERATOR(pg_catalog.<=) pg_catalog.statement_timestamp())
        AS expired_sessions,
    (SELECT pg_catalog.count(*) FROM session_auth.blacklist) AS blacklist_entries,
    (SELECT coalesce(pg_catalog.jsonb_object_agg(event, n), '{}'::jsonb)
       FROM (SELECT event, pg_catalog.count(*) AS n FROM session_auth.events
              WHERE at OPERATOR(pg_catalog.>)
                    (pg_catalog.statement_timestamp() OPERATOR(pg_catalog.-) interval '1 hour')
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
