-- The raising forms. PostgreSQL custom SQLSTATEs (SA001..SA006) cannot cross
-- pgrx's FFI boundary, so these two are PL/pgSQL over functions that return
-- a status word. Messages never contain a token.
--
-- Both run as the extension owner with search_path pinned to pg_catalog,
-- pg_temp, and name everything of the extension by its schema: no name
-- resolves through a schema another role can write (0.1.0 called format()
-- unqualified with the private schema first in its path). And both plan
-- their statements generically (plan_cache_mode): a custom plan would show
-- the token as a literal in auto_explain's log of nested statements.

-- The one mapping from a status word to its SQLSTATE, for both wrappers.
-- Private: only the wrappers (running as the owner) call it.
CREATE FUNCTION session_auth.raise_for_status(status text)
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
CREATE FUNCTION session_require(
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
CREATE FUNCTION session_reauthenticate(token text, auth_level int DEFAULT NULL)
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
CREATE FUNCTION session_event(id bigint)
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
