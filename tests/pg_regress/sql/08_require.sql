-- session_require: the raising form of session_validate.
--
-- For SQL, views and row-level-security policies: it returns one composite
-- row (session_id, user_id, data, auth_level), not a set, so a policy
-- expression can call it, and raises instead of answering a status:
--
--   SA001  invalid token (unknown, malformed, wrong kind)
--   SA002  expired
--   SA003  revoked
--   SA005  reauthentication required: max_auth_age or min_auth_level not
--          met, and the HINT says which

SELECT * FROM session_require('') \gdesc
SELECT proretset AS returns_a_set FROM pg_proc WHERE proname = 'session_require';

-- To show an error's SQLSTATE, message and HINT together (psql would add a
-- CONTEXT line naming the function's internals), this file catches them.
CREATE FUNCTION pg_temp.require_error(token text, max_auth_age interval DEFAULT NULL,
                                      min_auth_level int DEFAULT NULL,
                                      OUT code text, OUT message text, OUT hint text)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM session_require(token, max_auth_age, min_auth_level);
    message := 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
                            hint = PG_EXCEPTION_HINT;
END
$$;

SELECT session_id, access_token, refresh_token
FROM session_issue('alice@require', '{"roles": ["teller"]}', 2) \gset

-- A good token: the row.
SELECT session_id = :'session_id' AS same_session, user_id, data, auth_level
FROM session_require(:'access_token');
SELECT (session_require(:'access_token')).user_id;
-- Requirements that are met change nothing.
SELECT user_id FROM session_require(:'access_token', max_auth_age => '1 hour', min_auth_level => 2);

\set VERBOSITY sqlstate
-- SA001: anything that is not a live access token.
SELECT * FROM session_require(NULL);
SELECT * FROM session_require('');
SELECT * FROM session_require('pgsa_at_garbage');
SELECT * FROM session_require(:'refresh_token');
SELECT * FROM session_require(repeat('x', 10000000));
-- SA005: the session is at level 2, the caller requires 3.
SELECT * FROM session_require(:'access_token', min_auth_level => 3);
\set VERBOSITY default

SELECT * FROM pg_temp.require_error(NULL);
SELECT * FROM pg_temp.require_error(:'access_token', min_auth_level => 3);
-- A bad token is reported as such, whatever the requirements.
SELECT * FROM pg_temp.require_error('pgsa_at_garbage', min_auth_level => 3);

-- SA002: an expired token (issued with a 1s access TTL, a second ago), and
-- SA005 for max_auth_age: the last authentication is older than required.
SET session_auth.access_ttl = '1s';
SELECT access_token AS short_token FROM session_issue('bob@require') \gset
RESET session_auth.access_ttl;
SELECT pg_sleep(1.2);
\set VERBOSITY sqlstate
SELECT * FROM session_require(:'short_token');
SELECT * FROM session_require(:'access_token', max_auth_age => '1 second');
\set VERBOSITY default
SELECT * FROM pg_temp.require_error(:'short_token');
SELECT * FROM pg_temp.require_error(:'access_token', max_auth_age => '1 second');
-- Token problems come first: an expired token is SA002 whatever else.
SELECT * FROM pg_temp.require_error(:'short_token', max_auth_age => '1 second', min_auth_level => 3);

-- SA003: a revoked session.
SELECT session_revoke(:'access_token');
\set VERBOSITY sqlstate
SELECT * FROM session_require(:'access_token');
\set VERBOSITY default
SELECT * FROM pg_temp.require_error(:'access_token');

-- In a row-level-security policy. A bank: every teller session reads its
-- own account; moving money needs an authentication at most 2 seconds old
-- (10 minutes in real life). The application passes the access token in a
-- setting (SET app.token, or set_config(..., true) per transaction).
CREATE ROLE regress_bank;
GRANT session_auth_client TO regress_bank;
CREATE TABLE regress_accounts (owner text PRIMARY KEY, balance int NOT NULL);
INSERT INTO regress_accounts VALUES ('carol@require', 100), ('dave@require', 100);
GRANT SELECT, UPDATE ON regress_accounts TO regress_bank;
ALTER TABLE regress_accounts ENABLE ROW LEVEL SECURITY;
CREATE POLICY read_own ON regress_accounts FOR SELECT
    USING (owner = (session_require(current_setting('app.token', true))).user_id);
CREATE POLICY move_money_after_recent_login ON regress_accounts FOR UPDATE
    USING (owner = (session_require(current_setting('app.token', true),
                                    max_auth_age => '2 seconds')).user_id);

SET ROLE regress_bank;
SELECT access_token AS carol_token FROM session_issue('carol@require') \gset
SET app.token = :'carol_token';
SELECT * FROM regress_accounts;
-- Within two seconds of login, carol can move money.
UPDATE regress_accounts SET balance = balance - 10 WHERE owner = 'carol@require'
RETURNING *;
SELECT pg_sleep(2.1);
-- Later, she can still read her account...
SELECT * FROM regress_accounts;
-- ...but her session is too old to move money: the policy raises SA005.
\set VERBOSITY sqlstate
UPDATE regress_accounts SET balance = balance - 10 WHERE owner = 'carol@require';
\set VERBOSITY default
-- She enters her password again; the application reauthenticates the
-- session and uses the new token. Now the update goes through.
SELECT access_token AS carol_token FROM session_reauthenticate(:'carol_token') \gset
SET app.token = :'carol_token';
UPDATE regress_accounts SET balance = balance - 10 WHERE owner = 'carol@require'
RETURNING *;
-- Someone else's account is simply not there for her.
UPDATE regress_accounts SET balance = 0 WHERE owner = 'dave@require' RETURNING *;
SELECT * FROM regress_accounts;
-- Without a valid token the policy raises rather than showing nothing.
\set VERBOSITY sqlstate
RESET app.token;
SELECT * FROM regress_accounts;
SET app.token = 'pgsa_at_garbage';
SELECT * FROM regress_accounts;
SELECT session_revoke(:'carol_token');
SET app.token = :'carol_token';
SELECT * FROM regress_accounts;
\set VERBOSITY default
RESET app.token;
RESET ROLE;
SELECT * FROM regress_accounts ORDER BY owner;

DROP TABLE regress_accounts;
DROP ROLE regress_bank;
