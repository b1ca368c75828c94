-- peer: rotate a uniformly drawn family of this client's own (ids are
-- partitioned by client_id): read, rotate, store the new pair back, in one
-- statement.
\set per :n / :clients
\set id 1 + :client_id * :per + random(0, :per - 1)
WITH r AS (SELECT r.* FROM bench.peer_tokens t, LATERAL peer.refresh(t.refresh) r
            WHERE t.id = :id),
     u AS (UPDATE bench.peer_tokens t SET access = r.access_token, refresh = r.refresh_token
             FROM r WHERE t.id = :id AND r.status = 'ok')
SELECT status, (status = 'ok')::int AS ok FROM r \gset
\if :ok = 0
SELECT bench.note_bad(:run, :status);
\endif
