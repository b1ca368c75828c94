-- pg_session_auth 0.1.0 -> 0.2.0
--
-- Runs in one transaction (ALTER EXTENSION ... UPDATE): if any step fails,
-- the database stays at 0.1.0. Sessions, tokens, blacklist entries and
-- events are kept; tokens issued by 0.1.0 keep their meaning (their format
-- is still read, and their stored digests are cut to the 16 bytes kept now).
--
-- What changes (docs/security.md says why):
-- * The wrapped retry pairs go (sessions.retry_pair): a database reader could
--   unwrap them. Refreshes now derive their pair from the parent token and a
--   retry key (sessions.retry_key_id). A retry inside the grace window of a
--   rotation made by 0.1.0 answers 'expired' after the update.
-- * The retry keys are emptied, and the table becomes UNLOGGED and is no
--   longer dumped.
-- * Digests are the first 16 bytes of SHA-256 (src/token.rs, DIGEST_LEN):
--   the stored ones are cut to that, in the sessions and the blacklist.
-- * A session row holds its current pair only: the parent pair's columns
--   go (0.1.0 put every superseded pair on the blacklist too, where the
--   parent is now found), and so do access_issued_at and rotated_at, which
--   0.1.0 always set to last_refreshed_at. A parent token whose blacklist
--   entry 0.1.0 had already purged (it had expired) answers 'invalid' after
--   the update instead of 'expired'. The dropped columns' bytes leave the
--   existing rows as they are rewritten (VACUUM FULL does it at once).
-- * The blacklist keeps one row per pair, keyed by session and generation,
--   instead of one per token digest, its columns ordered to need no padding.
-- * The sessions' user index is on user_id alone.
-- * Capped logins lock rows of session_auth.login_locks, not an advisory lock.
-- * Every SECURITY DEFINER function pins search_path to pg_catalog, pg_temp.
-- * session_event(id) confirms the event a NOTIFY names; session_require and
--   session_reauthenticate share session_auth.raise_for_status, and check
--   their level arguments with session_auth.check_auth_level.
--
-- Like the install script, everything here is schema-qualified.

-- Refuse to run outside ALTER EXTENSION (psql -f would half-apply it).
\echo Use "ALTER EXTENSION pg_session_auth UPDATE TO '0.2.0'" to load this file. \quit

-- Sessions: no more wrapped pairs. Dropping the column erases them at once.
ALTER TABLE session_auth.sessions DROP COLUMN retry_pair;
ALTER TABLE session_auth.sessions ADD COLUMN retry_key_id bigint;

-- The current pair only (see above).
ALTER TABLE session_auth.sessions
    DROP COLUMN parent_access_digest,
    DROP COLUMN parent_access_expires_at,
    DROP COLUMN parent_refresh_digest,
    DROP COLUMN parent_refresh_expires_at,
    DROP COLUMN access_issued_at,
    DROP COLUMN rotated_at;

-- Sessions are found by user without their creation time (the callers
-- order them themselves), so equal user ids share an index entry.
DROP INDEX session_auth.sessions_user_id_idx;
CREATE INDEX sessions_user_id_idx ON session_auth.sessions (user_id);

-- Digests: the first 16 bytes of what 0.1.0 stored (the whole SHA-256).
UPDATE session_auth.sessions SET
    access_digest = pg_catalog.substr(access_digest, 1, 16),
    refresh_digest = pg_catalog.substr(refresh_digest, 1, 16);

-- The blacklist: one row per pair, by session and generation, instead of one
-- per token digest (src/blacklist.rs). 0.1.0 put both tokens of a pair in
-- with the same session, generation and reason; each keeps its deadline.
-- The table is rebuilt, so the update takes a moment per million entries.
-- Storage parameters a DBA set on it (say autovacuum_vacuum_scale_factor,
-- which the README suggests) are carried over; grants on it to other roles
-- are not (the README says to grant again). The stats view reads it: it is
-- made again over the new table from its own definition (unchanged since
-- 0.1.0), before the old table goes. The block runs with nothing but
-- pg_catalog on the search_path: the definition is deparsed and parsed again
-- there, so every name in it resolves to what it did (the update's own path
-- holds the target schema, where a role may have planted a look-alike
-- jsonb_object_agg).
DO $$
DECLARE
    update_path pg_catalog.text := pg_catalog.current_setting('search_path');
    stats_definition pg_catalog.text;
    storage pg_catalog.text[];
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    stats_definition := pg_catalog.pg_get_viewdef('session_auth.stats'::pg_catalog.regclass);
    SELECT c.reloptions INTO storage FROM pg_catalog.pg_class AS c
     WHERE c.oid OPERATOR(pg_catalog.=) 'session_auth.blacklist'::pg_catalog.regclass;
    ALTER TABLE session_auth.blacklist RENAME TO blacklist_0_1_0;
    ALTER INDEX session_auth.blacklist_pkey RENAME TO blacklist_0_1_0_pkey;
    ALTER INDEX session_auth.blacklist_expires_at_idx RENAME TO blacklist_0_1_0_expires_at_idx;
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
    IF storage IS NOT NULL THEN
        EXECUTE pg_catalog.format('ALTER TABLE session_auth.blacklist SET (%s)',
                                  pg_catalog.array_to_string(storage, ', '));
    END IF;
    EXECUTE 'CREATE OR REPLACE VIEW session_auth.stats AS '
            OPERATOR(pg_catalog.||) stats_definition;
    PERFORM pg_catalog.set_config('search_path', update_path, true);
END
$$;
INSERT INTO session_auth.blacklist (session_id, generation,
    access_digest, access_expires_at, refresh_digest, refresh_expires_at,
    revoked_at, expires_at, reason)
SELECT b.session_id, b.generation,
       pg_catalog.substr(a.digest, 1, 16), a.expires_at,
       pg_catalog.substr(r.digest, 1, 16), r.expires_at,
       pg_catalog.min(b.revoked_at), pg_catalog.max(b.expires_at), pg_catalog.min(b.reason)
FROM session_auth.blacklist_0_1_0 AS b
LEFT JOIN session_auth.blacklist_0_1_0 AS a
       ON a.session_id OPERATOR(pg_catalog.=) b.session_id
      AND a.generation OPERATOR(pg_catalog.=) b.generation
      AND a.kind OPERATOR(pg_catalog.=) 'access'::pg_catalog.text
LEFT JOIN session_auth.blacklist_0_1_0 AS r
       ON r.session_id OPERATOR(pg_catalog.=) b.session_id
      AND r.generation OPERATOR(pg_catalog.=) b.generation
      AND r.kind OPERATOR(pg_catalog.=) 'refresh'::pg_catalog.text
GROUP BY b.session_id, b.generation, a.digest, a.expires_at, r.digest, r.expires_at;
ALTER EXTENSION pg_session_auth DROP TABLE session_auth.blacklist_0_1_0;
DROP TABLE session_auth.blacklist_0_1_0;
CREATE INDEX blacklist_expires_at_idx ON session_auth.blacklist (expires_at);
COMMENT ON TABLE session_auth.blacklist IS
    'Superseded and revoked token pairs (digests only) until their tokens would have expired';
REVOKE ALL ON TABLE session_auth.blacklist FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('session_auth.blacklist', '');

-- Retry keys: emptied, unlogged, out of pg_dump. A table leaves the dumped
-- set only by leaving the extension, so it is dropped and made again.
ALTER EXTENSION pg_session_auth DROP TABLE session_auth.retry_keys;
DROP TABLE session_auth.retry_keys;
CREATE UNLOGGED TABLE session_auth.retry_keys (
    key_id      bigint      PRIMARY KEY,
    secret      bytea       NOT NULL CHECK (pg_catalog.octet_length(secret) OPERATOR(pg_catalog.=) 32),
    erase_after timestamptz NOT NULL
);
COMMENT ON TABLE session_auth.retry_keys IS
    'Short-lived keys of recent rotations'' retry pairs; never logged or dumped';
REVOKE ALL ON TABLE session_auth.retry_keys FROM PUBLIC;

-- What capped logins lock.
CREATE TABLE session_auth.login_locks (
    slot int PRIMARY KEY
);
INSERT INTO session_auth.login_locks SELECT pg_catalog.generate_series(0, 1023);
COMMENT ON TABLE session_auth.login_locks IS
    'Row locks that serialise one user''s logins under a session cap';
REVOKE ALL ON TABLE session_auth.login_locks FROM PUBLIC;

-- The functions written in Rust keep their definitions; only their pinned
-- search_path changes.
ALTER FUNCTION session_issue(text, jsonb, integer) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION session_list(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION session_purge() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION session_refresh(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION session_revoke(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION session_revoke_id(uuid) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION session_revoke_user(text, uuid) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION session_set_data(uuid, jsonb) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION session_auth.reauthenticate_pair(text, integer) SET search_path = pg_catalog, pg_temp;

-- The wrappers' check of a level argument, written in Rust (src/api.rs), as
-- the install script makes it.
CREATE FUNCTION session_auth."check_auth_level"(
	"argument" TEXT, /* &str */
	"level" INT /* Option < i32 > */
) RETURNS void
IMMUTABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'check_auth_level_wrapper';

-- The raising forms and session_event, as sql/raising.sql makes them.
-- The one mapping from a status word to its SQLSTATE, for both wrappers.
-- Private: only the wrappers (running as the owner) call it.
CREATE OR REPLACE FUNCTION session_auth.raise_for_status(status text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    CASE status
        WHEN 'ok' THEN RETURN;
        WHEN 'expired' THEN
            RAISE EXCEPTION 'session token expired' USING ERRCODE = 'SA002';
        WHEN 'revoked' THEN
            RAISE EXCEPTION 'session token revoked' USING ERRCODE = 'SA003';
        WHEN 'superseded' THEN
            RAISE EXCEPTION 'session token superseded'
                USING ERRCODE = 'SA003',
                      HINT = 'A refresh replaced this access token; it still validates for the '
                             'grace window, but only the current access token can reauthenticate. '
                             'Refresh first (the grace window returns the current pair), then '
                             'reauthenticate with its access token.';
        WHEN 'not_replayed' THEN
            RAISE EXCEPTION 'session token not replayed yet'
                USING ERRCODE = 'SA006',
                      HINT = 'This hot standby has not replayed the token''s session or refresh '
                             'yet: retry on the primary.';
        ELSE
            RAISE EXCEPTION 'invalid session token' USING ERRCODE = 'SA001';
    END CASE;
END
$$;

-- session_require: the raising form of session_validate, for SQL, views and
-- row-level-security policies. A single composite row (OUT parameters), not
-- a set, so a policy expression can call it.
CREATE OR REPLACE FUNCTION session_require(
    token text,
    max_auth_age interval DEFAULT NULL,
    min_auth_level int DEFAULT NULL,
    OUT session_id uuid,
    OUT user_id text,
    OUT data jsonb,
    OUT auth_level int)
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    v record;
BEGIN
    IF max_auth_age < interval '0' THEN
        RAISE EXCEPTION 'max_auth_age must not be negative' USING ERRCODE = '22023';
    END IF;
    IF min_auth_level IS NOT NULL THEN
        PERFORM session_auth.check_auth_level('min_auth_level', min_auth_level);
    END IF;
    SELECT * INTO v FROM @extschema@.session_validate(token);
    PERFORM session_auth.raise_for_status(v.status);
    IF min_auth_level IS NOT NULL AND v.auth_level < min_auth_level THEN
        RAISE EXCEPTION 'reauthentication required'
            USING ERRCODE = 'SA005',
                  HINT = pg_catalog.format(
                      'min_auth_level: the session is at level %s, %s is required',
                      v.auth_level, min_auth_level);
    END IF;
    -- Subtract rather than add, so a huge max_auth_age cannot overflow.
    IF max_auth_age IS NOT NULL
       AND pg_catalog.statement_timestamp() - v.authenticated_at >= max_auth_age THEN
        RAISE EXCEPTION 'reauthentication required'
            USING ERRCODE = 'SA005',
                  HINT = pg_catalog.format(
                      'max_auth_age: the last authentication is older than %s', max_auth_age);
    END IF;
    session_id := v.session_id;
    user_id := v.user_id;
    data := v.data;
    auth_level := v.auth_level;
END
$$;

-- session_reauthenticate: the application verified the user again and passes
-- the session's current access token. Rotates both tokens with no grace.
CREATE OR REPLACE FUNCTION session_reauthenticate(token text, auth_level int DEFAULT NULL)
RETURNS TABLE (
    session_id uuid,
    access_token text,
    access_expires_at timestamptz,
    refresh_token text,
    refresh_expires_at timestamptz)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    r record;
BEGIN
    IF auth_level IS NOT NULL THEN
        PERFORM session_auth.check_auth_level('auth_level', auth_level);
    END IF;
    SELECT * INTO r FROM session_auth.reauthenticate_pair(token, auth_level);
    PERFORM session_auth.raise_for_status(r.status);
    RETURN QUERY SELECT r.session_id, r.access_token, r.access_expires_at,
                        r.refresh_token, r.refresh_expires_at;
END
$$;

-- session_event: the application confirms an event a NOTIFY payload names
-- before acting on it. Any role that can connect can NOTIFY on any channel,
-- so a payload is only a hint; this reads the event table, which only the
-- extension writes. No row: no such event (forged, or past retention).
CREATE OR REPLACE FUNCTION session_event(id bigint)
RETURNS TABLE (
    event_id bigint,
    event text,
    at timestamptz,
    session_id uuid,
    user_id text)
LANGUAGE sql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT e.event_id, e.event, e.at, e.session_id, e.user_id
    FROM session_auth.events AS e
    WHERE e.event_id = id
$$;

-- Privileges of the new functions, as sql/finalize.sql sets them.
REVOKE ALL ON FUNCTION session_auth.raise_for_status(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION session_auth.check_auth_level(text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION session_event(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION session_event(bigint) TO session_auth_client;
