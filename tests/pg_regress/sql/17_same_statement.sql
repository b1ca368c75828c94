-- Effects earlier in the same statement.
--
-- The writing functions (session_refresh, session_revoke, session_revoke_user,
-- session_reauthenticate, session_set_data) are VOLATILE: like any SQL a
-- VOLATILE function runs, they see what earlier calls of their own statement
-- wrote, here the session a subquery has just issued. session_validate is
-- STABLE: it reads the statement's snapshot, taken when the statement began,
-- so a session issued by the same statement is not there yet for it
-- ('invalid'); a later statement sees it.
\set VERBOSITY terse

SELECT status, left(refresh_token, 8) AS prefix
FROM session_refresh((SELECT refresh_token FROM session_issue('alice@same-statement')));

SELECT session_revoke((SELECT access_token FROM session_issue('bob@same-statement'))) AS revoked;
SELECT session_revoke((SELECT refresh_token FROM session_issue('bob@same-statement'))) AS revoked;

SELECT left(access_token, 8) AS reauthenticated_prefix
FROM session_reauthenticate((SELECT access_token FROM session_issue('carol@same-statement')), 2);

SELECT session_set_data((SELECT session_id FROM session_issue('dave@same-statement')),
                        '{"theme": "dark"}') AS data_set;
SELECT data FROM session_list('dave@same-statement');

SELECT session_revoke_user('erin@same-statement')
FROM (SELECT session_issue('erin@same-statement')) AS just_issued;

-- A rotation and a logout with the pair it returned, in one statement: the
-- revoke sees the rotation that an earlier call of its statement made.
SELECT refresh_token AS rt FROM session_issue('frank@same-statement') \gset
SELECT r.status, session_revoke(r.access_token) AS revoked_with_the_new_pair
FROM session_refresh(:'rt') AS r;
SELECT status AS the_parent_after_logout FROM session_refresh(:'rt');

-- Under REPEATABLE READ the writer's snapshot is the transaction's, with
-- the statement's own writes visible.
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT status FROM session_refresh((SELECT refresh_token FROM session_issue('gina@same-statement')));
COMMIT;

-- Three refreshes of one token in one statement: the first rotates; the
-- others find the pair it made (they see its rotation) and get that pair
-- again as retries inside the grace window (rule 2).
SELECT refresh_token AS rt FROM session_issue('hank@same-statement') \gset
SELECT count(*) AS calls, count(DISTINCT r.refresh_token) AS distinct_pairs, min(r.status) AS status
FROM generate_series(1, 3) AS g,
     LATERAL session_refresh(:'rt' || left(g::text, 0)) AS r;

-- STABLE validate: the statement's snapshot.
SELECT status AS validate_in_the_issuing_statement
FROM session_validate((SELECT access_token FROM session_issue('grace@same-statement')));
