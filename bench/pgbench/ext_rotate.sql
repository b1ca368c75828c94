-- ext: rotate this client's own families round-robin (each one every
-- per/rate seconds; needs -D k=0), storing the new pair back, in one
-- statement.
\set per :n / :clients
\set k :k + 1
\set id 1 + :client_id * :per + (:k % :per)
WITH r AS (SELECT r.* FROM bench.tokens t, LATERAL session_refresh(t.refresh) r
            WHERE t.id = :id),
     u AS (UPDATE bench.tokens t SET access = r.access_token, refresh = r.refresh_token
             FROM r WHERE t.id = :id AND r.status = 'ok')
SELECT status, (status = 'ok')::int AS ok FROM r \gset
\if :ok = 0
SELECT bench.note_bad(:run, :status);
\endif
