-- Bad arguments raise 22004 (a required argument is NULL) or 22023 (out of
-- range or the wrong shape), with a message that names the argument.
--
-- Limits: user_id at most 256 bytes, not empty; data a JSON object of at
-- most 64 kB; auth_level 1 to 3; intervals not negative. Tokens are never
-- bad arguments: a bad token is 'invalid' (or false, or SA001).

-- What the client sees: the SQLSTATE...
\set VERBOSITY sqlstate
SELECT * FROM session_issue(NULL);
SELECT * FROM session_issue('');
-- ...and the message.
\set VERBOSITY default
SELECT * FROM session_issue(NULL);
SELECT * FROM session_issue('');

-- From here on, each case shows the SQLSTATE and message of the error its
-- statement raises, caught by this helper.
CREATE FUNCTION pg_temp.error_of(statement text, OUT code text, OUT message text)
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE statement;
    message := 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT;
END
$$;

-- user_id: session_issue, session_revoke_user, session_list.
SELECT * FROM pg_temp.error_of($$ SELECT session_issue(NULL) $$);
SELECT * FROM pg_temp.error_of($$ SELECT session_issue('') $$);
SELECT * FROM pg_temp.error_of($$ SELECT session_issue(repeat('u', 257)) $$);
SELECT * FROM pg_temp.error_of($$ SELECT session_issue(repeat('é', 129)) $$);
SELECT * FROM pg_temp.error_of($$ SELECT session_issue(repeat('u', 256)) $$);
SELECT * FROM pg_temp.error_of($$ SELECT session_revoke_user(NULL) $$);
SELECT * FROM pg_temp.error_of($$ SELECT session_revoke_user('') $$);
SELECT * FROM pg_temp.error_of($$ SELECT session_revoke_user(repeat('u', 257)) $$);
SELECT * FROM pg_temp.error_of($$ SELECT session_list(NULL) $$);
SELECT * FROM pg_temp.error_of($$ SELECT session_list('') $$);
SELECT * FROM pg_temp.error_of($$ SELECT session_list(repeat('u', 257)) $$);

-- data: session_issue, session_set_data.
SELECT * FROM pg_temp.error_of($$ SELECT session_issue('alice@args', NULL) $$);
SELECT * FROM pg_temp.error_of($$ SELECT session_issue('alice@args', '[]') $$);
SELECT * FROM pg_temp.error_of($$ SELECT session_issue('alice@args', '1') $$);
SELECT * FROM pg_temp.error_of($$ SELECT session_issue('alice@args', '"text"') $$);
SELECT * FROM pg_temp.error_of($$ SELECT session_issue('alice@args', 'null') $$);
SELECT * FROM pg_temp.error_of($$ SELECT session_issue('alice@args', jsonb_build_object('blob', repeat('x', 70000))) $$);
SELECT * FROM pg_temp.error_of($$ SELECT session_issue('alice@args', jsonb_build_object('blob', repeat('x', 60000))) $$);
SELECT session_id AS sid FROM session_issue('alice@args') \gset
SELECT * FROM pg_temp.error_of(format($$ SELECT session_set_data(%L, NULL) $$, :'sid'));
SELECT * FROM pg_temp.error_of(format($$ SELECT session_set_data(%L, '[]') $$, :'sid'));
SELECT * FROM pg_temp.error_of(format($$ SELECT session_set_data(%L, '1') $$, :'sid'));
SELECT * FROM pg_temp.error_of(format($$ SELECT session_set_data(%L, jsonb_build_object('blob', repeat('x', 70000))) $$, :'sid'));

-- auth_level: session_issue (1 to 3, not NULL), session_reauthenticate
-- (1 to 3, or NULL to keep the level).
SELECT * FROM pg_temp.error_of($$ SELECT session_issue('alice@args', '{}', 0) $$);
SELECT * FROM pg_temp.error_of($$ SELECT session_issue('alice@args', '{}', 4) $$);
SELECT * FROM pg_temp.error_of($$ SELECT session_issue('alice@args', '{}', -1) $$);
SELECT * FROM pg_temp.error_of($$ SELECT session_issue('alice@args', '{}', NULL) $$);
SELECT * FROM pg_temp.error_of($$ SELECT session_issue('alice@args', auth_level => 3) $$);
SELECT access_token AS at FROM session_issue('alice@args') \gset
SELECT * FROM pg_temp.error_of(format($$ SELECT session_reauthenticate(%L, 0) $$, :'at'));
SELECT * FROM pg_temp.error_of(format($$ SELECT session_reauthenticate(%L, 4) $$, :'at'));
-- (the argument is checked before the token, so a bad token changes nothing)
SELECT * FROM pg_temp.error_of($$ SELECT session_reauthenticate('pgsa_at_garbage', 4) $$);
SELECT status AS token_still_good FROM session_validate(:'at');

-- session_require: max_auth_age not negative, min_auth_level 1 to 3.
SELECT * FROM pg_temp.error_of(format($$ SELECT session_require(%L, max_auth_age => '-1 second') $$, :'at'));
SELECT * FROM pg_temp.error_of(format($$ SELECT session_require(%L, min_auth_level => 5) $$, :'at'));
SELECT * FROM pg_temp.error_of(format($$ SELECT session_require(%L, min_auth_level => 0) $$, :'at'));
SELECT * FROM pg_temp.error_of($$ SELECT session_require('pgsa_at_garbage', max_auth_age => '-1 second') $$);
-- Zero is not negative, so not a bad argument: but no authentication is
-- ever that recent, so the session is asked to reauthenticate.
SELECT * FROM pg_temp.error_of(format($$ SELECT session_require(%L, max_auth_age => '0', min_auth_level => 1) $$, :'at'));

-- Only the four calls above that raised nothing started a session.
SELECT count(*) AS sessions FROM session_list('alice@args');
