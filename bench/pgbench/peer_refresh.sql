-- peer: rotate a uniformly drawn family of this client's own (ids are partitioned by client_id), storing the new pair back.
\set per :n / :clients
\set id 1 + :client_id * :per + random(0, :per - 1)
SELECT refresh AS tok FROM bench.peer_tokens WHERE id = :id \gset
WITH r AS (SELECT * FROM peer.refresh(:tok)),
     u AS (UPDATE bench.peer_tokens t SET access = r.access_token, refresh = r.refresh_token
             FROM r WHERE t.id = :id AND r.status = 'ok')
SELECT status, (status = 'ok')::int AS ok FROM r \gset
\if :ok = 0
SELECT bench.note_bad(:run, :status);
\endif
