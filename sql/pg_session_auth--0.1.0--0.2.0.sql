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
--   longer dumped. Key ids are 4 bytes (int), as the sessions keep them.
-- * Digests are the first 16 bytes of SHA-256 (src/token.rs, DIGEST_LEN):
--   the stored ones are cut to that, in the sessions and the blacklist.
-- * A session row holds its current pair only: the parent pair's columns
--   go (0.1.0 put every superseded pair on the blacklist too, where the
--   parent is now found), and so do access_issued_at and rotated_at, which
--   0.1.0 always set to last_refreshed_at. A parent token whose blacklist
--   entry 0.1.0 had already purged (it had expired) answers 'invalid' after
--   the update instead of 'expired'. The row's columns are in an order
--   that needs no padding and keeps what a rotation writes together.
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

-- The rebuild makes both tables anew, so what a DBA attached to them would
-- be dropped with the old ones (a trigger, a policy, an index, extended
-- statistics, a publication, a column or constraint of their own, a
-- tablespace, row level security, a replica identity, UNLOGGED, CLUSTER ON)
-- or would stop the update half-way (a view, a foreign key or a function on
-- them or their row type). Name all of it and stop before anything changes. (Grants and
-- column settings are not carried over either; the README says so.)
DO $$
DECLARE
    update_path pg_catalog.text := pg_catalog.current_setting('search_path');
    rebuilt pg_catalog.oid[];
    attached pg_catalog.text;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    rebuilt := ARRAY['session_auth.sessions'::pg_catalog.regclass::pg_catalog.oid,
                     'session_auth.blacklist'::pg_catalog.regclass::pg_catalog.oid];
    SELECT pg_catalog.string_agg(a.what, '; ' ORDER BY a.what) INTO attached FROM (
        SELECT pg_catalog.format('trigger %I on %s', t.tgname, t.tgrelid::pg_catalog.regclass) AS what
          FROM pg_catalog.pg_trigger AS t
         WHERE t.tgrelid OPERATOR(pg_catalog.=) ANY (rebuilt) AND NOT t.tgisinternal
        UNION ALL
        SELECT pg_catalog.format('policy %I on %s', p.polname, p.polrelid::pg_catalog.regclass)
          FROM pg_catalog.pg_policy AS p WHERE p.polrelid OPERATOR(pg_catalog.=) ANY (rebuilt)
        UNION ALL
        SELECT pg_catalog.format('publication %I', b.pubname)
          FROM pg_catalog.pg_publication_rel AS r
          JOIN pg_catalog.pg_publication AS b ON b.oid OPERATOR(pg_catalog.=) r.prpubid
         WHERE r.prrelid OPERATOR(pg_catalog.=) ANY (rebuilt)
        UNION ALL
        SELECT pg_catalog.format('index %s', i.indexrelid::pg_catalog.regclass)
          FROM pg_catalog.pg_index AS i
         WHERE i.indrelid OPERATOR(pg_catalog.=) ANY (rebuilt)
           AND NOT i.indexrelid::pg_catalog.regclass::pg_catalog.text OPERATOR(pg_catalog.=) ANY (ARRAY[
               'session_auth.sessions_pkey', 'session_auth.sessions_user_id_idx',
               'session_auth.sessions_purge_after_idx', 'session_auth.blacklist_pkey',
               'session_auth.blacklist_expires_at_idx'])
        UNION ALL
        SELECT pg_catalog.pg_describe_object('pg_catalog.pg_statistic_ext'::pg_catalog.regclass, s.oid, 0)
          FROM pg_catalog.pg_statistic_ext AS s WHERE s.stxrelid OPERATOR(pg_catalog.=) ANY (rebuilt)
        UNION ALL
        SELECT pg_catalog.format('column %s.%I', c.attrelid::pg_catalog.regclass, c.attname)
          FROM pg_catalog.pg_attribute AS c
         WHERE c.attrelid OPERATOR(pg_catalog.=) ANY (rebuilt)
           AND c.attnum OPERATOR(pg_catalog.>) 0 AND NOT c.attisdropped
           AND NOT c.attname::pg_catalog.text OPERATOR(pg_catalog.=) ANY (CASE
               WHEN c.attrelid OPERATOR(pg_catalog.=) 'session_auth.sessions'::pg_catalog.regclass
               THEN ARRAY['session_id', 'user_id', 'data', 'auth_level', 'created_at',
                          'authenticated_at', 'last_refreshed_at', 'generation', 'access_digest',
                          'access_issued_at', 'access_expires_at', 'refresh_digest',
                          'refresh_expires_at', 'absolute_expires_at', 'parent_access_digest',
                          'parent_access_expires_at', 'parent_refresh_digest',
                          'parent_refresh_expires_at', 'rotated_at', 'grace_until', 'retry_pair',
                          'revoked_at', 'revoked_reason', 'purge_after']
               ELSE ARRAY['digest', 'session_id', 'kind', 'generation', 'revoked_at',
                          'expires_at', 'reason'] END)
        UNION ALL
        SELECT pg_catalog.format('tablespace %I of %s', s.spcname, c.oid::pg_catalog.regclass)
          FROM pg_catalog.pg_class AS c
          JOIN pg_catalog.pg_tablespace AS s ON s.oid OPERATOR(pg_catalog.=) c.reltablespace
         WHERE c.oid OPERATOR(pg_catalog.=) ANY (rebuilt)
            OR c.oid OPERATOR(pg_catalog.=) ANY (ARRAY(
                   SELECT i.indexrelid FROM pg_catalog.pg_index AS i
                    WHERE i.indrelid OPERATOR(pg_catalog.=) ANY (rebuilt)))
        UNION ALL
        -- Table settings a fresh table does not have.
        SELECT pg_catalog.format('%s on %s', x.setting, c.oid::pg_catalog.regclass)
          FROM pg_catalog.pg_class AS c,
               LATERAL (VALUES
                   (c.relrowsecurity OR c.relforcerowsecurity, 'row level security'),
                   (c.relreplident OPERATOR(pg_catalog.<>) 'd'::pg_catalog.char, 'a replica identity'),
                   (c.relpersistence OPERATOR(pg_catalog.<>) 'p'::pg_catalog.char, 'UNLOGGED')) AS x(isset, setting)
         WHERE c.oid OPERATOR(pg_catalog.=) ANY (rebuilt) AND x.isset
        UNION ALL
        SELECT pg_catalog.format('CLUSTER ON %s', i.indexrelid::pg_catalog.regclass)
          FROM pg_catalog.pg_index AS i
         WHERE i.indrelid OPERATOR(pg_catalog.=) ANY (rebuilt) AND i.indisclustered
        UNION ALL
        -- Constraints of their own but 0.1.0's (the key, NOT NULL, its checks).
        SELECT pg_catalog.format('constraint %I on %s', k.conname, k.conrelid::pg_catalog.regclass)
          FROM pg_catalog.pg_constraint AS k
         WHERE k.conrelid OPERATOR(pg_catalog.=) ANY (rebuilt)
           AND NOT k.contype OPERATOR(pg_catalog.=) ANY (ARRAY['p', 'n']::pg_catalog.char[])
           AND NOT k.conname::pg_catalog.text OPERATOR(pg_catalog.=) ANY (ARRAY[
               'sessions_auth_level_check', 'blacklist_kind_check'])
        UNION ALL
        -- Views, rules, foreign keys and functions that depend on them or
        -- on their row types, but for the extension's own stats view, which
        -- the rebuild makes again, and what is listed above.
        SELECT DISTINCT pg_catalog.pg_describe_object(d.classid, d.objid, 0)
          FROM pg_catalog.pg_depend AS d
         WHERE ((d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                 AND d.refobjid OPERATOR(pg_catalog.=) ANY (rebuilt))
                OR (d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_type'::pg_catalog.regclass
                    AND d.refobjid OPERATOR(pg_catalog.=) ANY (ARRAY(
                        SELECT t.oid FROM pg_catalog.pg_type AS t
                         WHERE t.typrelid OPERATOR(pg_catalog.=) ANY (rebuilt)
                            OR t.typelem OPERATOR(pg_catalog.=) ANY (ARRAY(
                                   SELECT u.oid FROM pg_catalog.pg_type AS u
                                    WHERE u.typrelid OPERATOR(pg_catalog.=) ANY (rebuilt)))))))
           AND d.deptype OPERATOR(pg_catalog.=) 'n'
           AND NOT d.classid OPERATOR(pg_catalog.=) ANY (ARRAY[
                   'pg_catalog.pg_trigger'::pg_catalog.regclass, 'pg_catalog.pg_policy'::pg_catalog.regclass,
                   'pg_catalog.pg_publication_rel'::pg_catalog.regclass,
                   'pg_catalog.pg_statistic_ext'::pg_catalog.regclass]::pg_catalog.oid[])
           AND NOT (d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass
                    AND d.objid OPERATOR(pg_catalog.=) ANY (ARRAY(
                        SELECT w.oid FROM pg_catalog.pg_rewrite AS w
                         WHERE w.ev_class OPERATOR(pg_catalog.=) 'session_auth.stats'::pg_catalog.regclass)))
           AND NOT (d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_constraint'::pg_catalog.regclass
                    AND d.objid OPERATOR(pg_catalog.=) ANY (ARRAY(
                        SELECT k.oid FROM pg_catalog.pg_constraint AS k
                         WHERE k.conrelid OPERATOR(pg_catalog.=) ANY (rebuilt))))
    ) AS a;
    IF attached IS NOT NULL THEN
        RAISE EXCEPTION 'pg_session_auth 0.2.0 rebuilds session_auth.sessions and session_auth.blacklist, which would lose or be stopped by what is attached to them: %',
            attached
            USING ERRCODE = '55000',
                  HINT = 'Drop or reset these (and move the tables and their indexes back to the default '
                         'tablespace), run ALTER EXTENSION pg_session_auth UPDATE, then make them again '
                         'on the new tables.';
    END IF;
    PERFORM pg_catalog.set_config('search_path', update_path, true);
END
$$;

-- Sessions and the blacklist are rebuilt, so the update takes a moment per
-- million rows of each:
-- * A session row loses the wrapped retry pair (its bytes go with the old
--   table's files, where DROP COLUMN would only hide them), the parent pair
--   and the two derived timestamps, gains retry_key_id, has its digests cut
--   to 16 bytes, and has its columns in the physical order of a fresh
--   install (sql/bootstrap.sql says why).
-- * The blacklist keeps one row per pair, by session and generation, instead
--   of one per token digest (src/blacklist.rs). 0.1.0 put both tokens of a
--   pair in with the same session, generation and reason; each keeps its
--   deadline.
-- Storage parameters a DBA set on the tables (say the
-- autovacuum_vacuum_scale_factor the README suggests) are carried over;
-- grants on them to other roles are not (the README says to grant again).
-- The stats view reads both: it is made again over the new tables from its
-- own definition (unchanged since 0.1.0), before the old ones go. The block
-- runs with nothing but pg_catalog on the search_path: the definition is
-- deparsed and parsed again there, so every name in it resolves to what it
-- did (the update's own path holds the target schema, where a role may have
-- planted a look-alike jsonb_object_agg).
DO $$
DECLARE
    update_path pg_catalog.text := pg_catalog.current_setting('search_path');
    stats_definition pg_catalog.text;
    session_storage pg_catalog.text[];
    blacklist_storage pg_catalog.text[];
    old_table pg_catalog.regclass;
    old_name pg_catalog.name;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    stats_definition := pg_catalog.pg_get_viewdef('session_auth.stats'::pg_catalog.regclass);
    SELECT c.reloptions INTO session_storage FROM pg_catalog.pg_class AS c
     WHERE c.oid OPERATOR(pg_catalog.=) 'session_auth.sessions'::pg_catalog.regclass;
    SELECT c.reloptions INTO blacklist_storage FROM pg_catalog.pg_class AS c
     WHERE c.oid OPERATOR(pg_catalog.=) 'session_auth.blacklist'::pg_catalog.regclass;
    ALTER TABLE session_auth.sessions RENAME TO sessions_0_1_0;
    ALTER INDEX session_auth.sessions_pkey RENAME TO sessions_0_1_0_pkey;
    ALTER INDEX session_auth.sessions_user_id_idx RENAME TO sessions_0_1_0_user_id_idx;
    ALTER INDEX session_auth.sessions_purge_after_idx RENAME TO sessions_0_1_0_purge_after_idx;
    ALTER TABLE session_auth.blacklist RENAME TO blacklist_0_1_0;
    ALTER INDEX session_auth.blacklist_pkey RENAME TO blacklist_0_1_0_pkey;
    ALTER INDEX session_auth.blacklist_expires_at_idx RENAME TO blacklist_0_1_0_expires_at_idx;
    -- The old tables' other constraints too: a new one is named uniquely in
    -- the schema, so the new tables' would get a suffix (sessions_auth_level_check1
    -- and, from PostgreSQL 18, which names NOT NULL constraints, every
    -- sessions_<column>_not_null), unlike a fresh install's.
    FOR old_table, old_name IN
        SELECT k.conrelid::pg_catalog.regclass, k.conname FROM pg_catalog.pg_constraint AS k
         WHERE k.conrelid OPERATOR(pg_catalog.=) ANY (ARRAY[
                   'session_auth.sessions_0_1_0'::pg_catalog.regclass::pg_catalog.oid,
                   'session_auth.blacklist_0_1_0'::pg_catalog.regclass::pg_catalog.oid])
           AND k.conindid OPERATOR(pg_catalog.=) 0::pg_catalog.oid
    LOOP
        EXECUTE pg_catalog.format('ALTER TABLE %s RENAME CONSTRAINT %I TO %I', old_table, old_name,
                                  pg_catalog.left('old_0_1_0_' OPERATOR(pg_catalog.||) old_name, 63));
    END LOOP;
    -- Both as sql/bootstrap.sql makes them (tests/upgrade compares).
    CREATE TABLE session_auth.sessions (
        session_id            uuid        PRIMARY KEY,
        created_at            timestamptz NOT NULL,
        authenticated_at      timestamptz NOT NULL,
        absolute_expires_at   timestamptz NOT NULL,
        purge_after           timestamptz NOT NULL,
        revoked_at            timestamptz,
        auth_level            int         NOT NULL CHECK (auth_level BETWEEN 1 AND 3),
        generation            int         NOT NULL,
        last_refreshed_at     timestamptz NOT NULL,
        access_expires_at     timestamptz NOT NULL,
        refresh_expires_at    timestamptz NOT NULL,
        grace_until           timestamptz,
        retry_key_id          int,
        access_digest         bytea       NOT NULL,
        refresh_digest        bytea       NOT NULL,
        user_id               text        NOT NULL,
        data                  jsonb       NOT NULL,
        revoked_reason        text
    ) WITH (fillfactor = 90);
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
    IF session_storage IS NOT NULL THEN
        EXECUTE pg_catalog.format('ALTER TABLE session_auth.sessions SET (%s)',
                                  pg_catalog.array_to_string(session_storage, ', '));
    END IF;
    IF blacklist_storage IS NOT NULL THEN
        EXECUTE pg_catalog.format('ALTER TABLE session_auth.blacklist SET (%s)',
                                  pg_catalog.array_to_string(blacklist_storage, ', '));
    END IF;
    EXECUTE 'CREATE OR REPLACE VIEW session_auth.stats AS '
            OPERATOR(pg_catalog.||) stats_definition;
    PERFORM pg_catalog.set_config('search_path', update_path, true);
END
$$;
-- Digests: the first 16 bytes of what 0.1.0 stored (the whole SHA-256).
-- No session has a retry key yet: the wrapped pairs and the keys are gone.
INSERT INTO session_auth.sessions (session_id, created_at, authenticated_at,
    absolute_expires_at, purge_after, revoked_at, auth_level, generation,
    last_refreshed_at, access_expires_at, refresh_expires_at, grace_until,
    retry_key_id, access_digest, refresh_digest, user_id, data, revoked_reason)
SELECT s.session_id, s.created_at, s.authenticated_at,
       s.absolute_expires_at, s.purge_after, s.revoked_at, s.auth_level, s.generation,
       s.last_refreshed_at, s.access_expires_at, s.refresh_expires_at, s.grace_until,
       NULL, pg_catalog.substr(s.access_digest, 1, 16), pg_catalog.substr(s.refresh_digest, 1, 16),
       s.user_id, s.data, s.revoked_reason
FROM session_auth.sessions_0_1_0 AS s;
ALTER EXTENSION pg_session_auth DROP TABLE session_auth.sessions_0_1_0;
DROP TABLE session_auth.sessions_0_1_0;
CREATE INDEX sessions_user_id_idx ON session_auth.sessions (user_id);
CREATE INDEX sessions_purge_after_idx ON session_auth.sessions (purge_after);
COMMENT ON TABLE session_auth.sessions IS
    'One row per session (token family); token digests only, never tokens';
REVOKE ALL ON TABLE session_auth.sessions FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('session_auth.sessions', '');

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
    key_id      int         PRIMARY KEY,
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
