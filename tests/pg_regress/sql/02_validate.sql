-- session_validate: checking an access token on every request.
--
-- It answers a status word, never an error: 'ok' with the session's row,
-- or 'invalid', 'expired' or 'revoked' with every other column NULL.
\set VERBOSITY terse

SELECT * FROM session_validate('') \gdesc

SELECT *, statement_timestamp() AS issued_at
FROM session_issue('alice@validate', '{"theme": "dark"}', 2) \gset

-- A good token: 'ok', the session's id, user, data and level, when the user
-- last authenticated, and until when this access token validates (the
-- access_expires_at that session_issue returned).
SELECT status,
       session_id = :'session_id' AS same_session,
       user_id, data, auth_level,
       authenticated_at = :'issued_at' AS authenticated_at_issue,
       expires_at = :'access_expires_at' AS expires_at_is_access_expires_at
FROM session_validate(:'access_token');

-- validate writes nothing: it runs in a read-only transaction (or on a hot
-- standby) and does not even take a transaction id.
BEGIN READ ONLY;
SELECT status FROM session_validate(:'access_token');
SELECT pg_current_xact_id_if_assigned() IS NULL AS no_xid_taken;
COMMIT;

-- Anything that is not a live access token this extension issued is
-- 'invalid', with every other column NULL. NULL is not an error.
SELECT * FROM session_validate(NULL);
SELECT * FROM session_validate('');
SELECT status FROM session_validate('not a token');
SELECT status FROM session_validate('pgsa_at_');
-- The refresh token is the wrong kind of token here.
SELECT status FROM session_validate(:'refresh_token');
-- The right token, one character short, one too long, with a space.
SELECT status FROM session_validate(left(:'access_token', 71));
SELECT status FROM session_validate(:'access_token' || 'A');
SELECT status FROM session_validate(:'access_token' || ' ');
SELECT status FROM session_validate(' ' || :'access_token');
-- Well-formed tokens that were never issued: an unknown session...
SELECT status FROM session_validate('pgsa_at_' || repeat('A', 64));
SELECT status FROM session_validate('pgsa_at_' || translate(encode(decode(
    md5(random()::text) || md5(random()::text) || md5(random()::text), 'hex'), 'base64'), '+/', '-_'));
-- ...and a real session id and generation with a forged secret (the first
-- 36 characters carry the id, the generation and a byte of the secret),
-- also in 0.1.0's 72-character format.
SELECT status FROM session_validate(left(:'access_token', 36) || repeat('A', 42));
SELECT status FROM session_validate(left(:'access_token', 40) || repeat('A', 32));
-- Right length, wrong alphabet: multibyte characters, base64 '+' and '/'.
SELECT status FROM session_validate('pgsa_at_' || repeat('é', 32));
SELECT status FROM session_validate('pgsa_at_' || repeat('+/', 32));
-- An absurdly long string is rejected by its length, without hashing 10 MB.
SELECT status FROM session_validate(repeat('x', 10000000));
SELECT status FROM session_validate('pgsa_at_' || repeat('A', 10000000));

-- The good token is still good after all that.
SELECT status FROM session_validate(:'access_token');

-- Expired: an access token lives session_auth.access_ttl (15min by
-- default). A token issued with a 1s TTL expires a second later, and the
-- deadline is fixed on the token: resetting the setting does not revive it.
SET session_auth.access_ttl = '1s';
SELECT access_token AS short_token, access_expires_at - statement_timestamp() AS ttl
FROM session_issue('alice@validate') \gset
RESET session_auth.access_ttl;
SELECT :'ttl' AS ttl, status FROM session_validate(:'short_token');
SELECT pg_sleep(1.2);
SELECT * FROM session_validate(:'short_token');

-- Revoked: after a logout every token of the session answers 'revoked'.
SELECT session_revoke(:'access_token');
SELECT * FROM session_validate(:'access_token');
-- The refresh token is still the wrong kind here: 'invalid' wins.
SELECT status FROM session_validate(:'refresh_token');
