-- session_issue: starting a session.
--
-- The application has verified the user's credentials and starts a session:
-- one token family, one login on one device. It gets back the session's id,
-- an access token (short-lived, sent with every request) and a refresh
-- token (to get the next pair), each with its deadline.
--
-- Tokens are random, so this file never prints one: it prints their shape.
\set VERBOSITY terse

-- The result columns.
SELECT * FROM session_issue('alice@issue') \gdesc

-- user_id, then optional data (a JSON object, default '{}') and auth_level
-- (1-3, the NIST assurance level, default 1).
SELECT *, statement_timestamp() AS issued_at
FROM session_issue('alice@issue', '{"roles": ["admin"], "device": "laptop"}', 2) \gset

-- The session id is a version-7 uuid: its first 48 bits are the time of
-- issue in Unix milliseconds, the rest random. (The time is what lets a hot
-- standby tell a session it has not replayed yet from one never issued.)
SELECT :'session_id' ~ '^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$'
    AS session_id_is_a_v7_uuid,
       to_timestamp(('x' || left(replace(:'session_id', '-', ''), 12))::bit(48)::bigint / 1000.0)
           BETWEEN :'issued_at'::timestamptz - interval '1 second' AND clock_timestamp()
    AS dated_when_issued;

-- Tokens have a fixed prefix per kind (so a token pasted in the wrong
-- place is recognisable and secret scanners can match them), a fixed
-- length (the session id, the generation of the pair and 256 random bits,
-- in base64url), and only cookie- and URL-safe characters.
SELECT left(:'access_token', 8) AS access_prefix,
       length(:'access_token') AS access_length,
       :'access_token' ~ '^[A-Za-z0-9_-]+$' AS access_url_safe,
       left(:'refresh_token', 8) AS refresh_prefix,
       length(:'refresh_token') AS refresh_length,
       :'refresh_token' ~ '^[A-Za-z0-9_-]+$' AS refresh_url_safe,
       :'access_token' <> :'refresh_token' AS distinct_tokens;

-- Deadlines come from the settings (session_auth.access_ttl, 15min by
-- default; session_auth.idle_timeout, 30min, for the refresh token).
SELECT :'access_expires_at'::timestamptz - :'issued_at'::timestamptz AS access_lifetime,
       :'refresh_expires_at'::timestamptz - :'issued_at'::timestamptz AS refresh_lifetime;

-- Only digests are stored: neither token, nor the random part of either,
-- appears anywhere in the private tables.
SELECT count(*) AS rows_holding_a_token
FROM (SELECT s::text AS r FROM session_auth.sessions s
      UNION ALL SELECT b::text FROM session_auth.blacklist b
      UNION ALL SELECT e::text FROM session_auth.events e) AS everything
WHERE r LIKE '%' || :'access_token' || '%'
   OR r LIKE '%' || :'refresh_token' || '%'
   OR r LIKE '%' || substr(:'access_token', 30) || '%'
   OR r LIKE '%' || substr(:'refresh_token', 30) || '%';

-- What is stored for a token is its digest: the first 16 bytes (128 bits)
-- of its SHA-256, plenty for 256 random bits (docs/security.md).
SELECT access_digest = substr(sha256(convert_to(:'access_token', 'UTF8')), 1, 16)
           AS access_digest_is_sha256_128,
       refresh_digest = substr(sha256(convert_to(:'refresh_token', 'UTF8')), 1, 16)
           AS refresh_digest_is_sha256_128
FROM session_auth.sessions WHERE session_id = :'session_id';

-- The session as the application sees it.
SELECT status, session_id = :'session_id' AS same_session, user_id, data, auth_level,
       authenticated_at = :'issued_at' AS authenticated_at_issue
FROM session_validate(:'access_token');

-- An 'issued' event, with no token in it.
SELECT event, user_id, details, at = :'issued_at' AS at_issue
FROM session_auth.events WHERE session_id = :'session_id'
ORDER BY event_id;

-- Defaults: empty data, auth_level 1.
SELECT access_token AS bob_token FROM session_issue('bob@issue') \gset
SELECT status, data, auth_level FROM session_validate(:'bob_token');

-- Every call starts a new session, even for the same user: one per device.
SELECT count(DISTINCT session_id) AS sessions, count(DISTINCT access_token) AS access_tokens
FROM (SELECT * FROM session_issue('carol@issue')
      UNION ALL SELECT * FROM session_issue('carol@issue')
      UNION ALL SELECT * FROM session_issue('carol@issue')) AS three;
SELECT count(*) AS carol_sessions FROM session_list('carol@issue');
SELECT event, count(*) FROM session_auth.events WHERE user_id = 'carol@issue' GROUP BY event;

-- user_id is any text of at most 256 bytes: an email, a uuid, a number.
-- (Validate in a statement of its own: like any STABLE function it sees the
-- snapshot its statement started with, not rows that statement inserted.)
SELECT access_token AS multibyte_token FROM session_issue(repeat('é', 128)) \gset
SELECT status, length(user_id) AS characters, octet_length(user_id) AS bytes
FROM session_validate(:'multibyte_token');
