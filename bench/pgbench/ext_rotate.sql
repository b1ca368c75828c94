-- ext: rotate this client's own families round-robin (each one every per/rate seconds; needs -D k=0), storing the new pair back.
\set per :n / :clients
\set k :k + 1
\set id 1 + :client_id * :per + (:k % :per)
SELECT refresh AS tok FROM bench.tokens WHERE id = :id \gset
WITH r AS (SELECT * FROM session_refresh(:tok)),
     u AS (UPDATE bench.tokens t SET access = r.access_token, refresh = r.refresh_token
             FROM r WHERE t.id = :id AND r.status = 'ok')
SELECT status, (status = 'ok')::int AS ok FROM r \gset
\if :ok = 0
SELECT bench.note_bad(:run, :status);
\endif
