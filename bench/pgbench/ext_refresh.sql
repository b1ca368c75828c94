-- ext: rotate a uniformly drawn family of this client's own (ids are
-- partitioned by client_id): the refresh token read from the lookup table,
-- rotated, and the new pair stored back, in one statement.
\set per :n / :clients
\set id 1 + :client_id * :per + random(0, :per - 1)
WITH r AS (SELECT r.* FROM bench.tokens t, LATERAL session_refresh(t.refresh) r
            WHERE t.id = :id),
     u AS (UPDATE bench.tokens t SET access = r.access_token, refresh = r.refresh_token
             FROM r WHERE t.id = :id AND r.status = 'ok')
SELECT status, (status = 'ok')::int AS ok FROM r \gset
\if :ok = 0
SELECT bench.note_bad(:run, :status);
\endif
