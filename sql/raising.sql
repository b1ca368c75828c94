-- The raising forms. PostgreSQL custom SQLSTATEs (SA001..SA005) cannot cross
-- pgrx's FFI boundary, so these two are PL/pgSQL over functions that return
-- a status word. Messages never contain a token.

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
SET search_path = session_auth, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v record;
BEGIN
    IF max_auth_age < interval '0' THEN
        RAISE EXCEPTION 'max_auth_age must not be negative' USING ERRCODE = '22023';
    END IF;
    IF min_auth_level IS NOT NULL AND min_auth_level NOT BETWEEN 1 AND 3 THEN
        RAISE EXCEPTION 'min_auth_level must be between 1 and 3' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO v FROM @extschema@.session_validate(token);
    CASE v.status
        WHEN 'ok' THEN NULL;
        WHEN 'expired' THEN
            RAISE EXCEPTION 'session token expired' USING ERRCODE = 'SA002';
        WHEN 'revoked' THEN
            RAISE EXCEPTION 'session token revoked' USING ERRCODE = 'SA003';
        ELSE
            RAISE EXCEPTION 'invalid session token' USING ERRCODE = 'SA001';
    END CASE;
    IF min_auth_level IS NOT NULL AND v.auth_level < min_auth_level THEN
        RAISE EXCEPTION 'reauthentication required'
            USING ERRCODE = 'SA005',
                  HINT = format('min_auth_level: the session is at level %s, %s is required',
                                v.auth_level, min_auth_level);
    END IF;
    -- Subtract rather than add, so a huge max_auth_age cannot overflow.
    IF max_auth_age IS NOT NULL
       AND pg_catalog.statement_timestamp() - v.authenticated_at >= max_auth_age THEN
        RAISE EXCEPTION 'reauthentication required'
            USING ERRCODE = 'SA005',
                  HINT = format('max_auth_age: the last authentication is older than %s',
                                max_auth_age);
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
SET search_path = session_auth, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    r record;
BEGIN
    IF auth_level IS NOT NULL AND auth_level NOT BETWEEN 1 AND 3 THEN
        RAISE EXCEPTION 'auth_level must be between 1 and 3' USING ERRCODE = '22023';
    END IF;
    SELECT * INTO r FROM session_auth.reauthenticate_pair(token, auth_level);
    CASE r.status
        WHEN 'ok' THEN NULL;
        WHEN 'expired' THEN
            RAISE EXCEPTION 'session token expired' USING ERRCODE = 'SA002';
        WHEN 'revoked' THEN
            RAISE EXCEPTION 'session token revoked' USING ERRCODE = 'SA003';
        ELSE
            RAISE EXCEPTION 'invalid session token' USING ERRCODE = 'SA001';
    END CASE;
    RETURN QUERY SELECT r.session_id, r.access_token, r.access_expires_at,
                        r.refresh_token, r.refresh_expires_at;
END
$$;
