-- floor: a one-row UPDATE by token digest, with the same client-side work
-- as the refresh scripts (its own families; the token read from the lookup
-- table and stored back, in one statement).
\set per :n / :clients
\set id 1 + :client_id * :per + random(0, :per - 1)
WITH r AS (UPDATE bench.floor f SET expires_at = statement_timestamp() + interval '2 hours'
             FROM bench.floor_tokens t
            WHERE t.id = :id AND f.digest = substr(sha256(convert_to(t.access, 'UTF8')), 1, 16)
           RETURNING 'ok'::text AS status),
     u AS (UPDATE bench.floor_tokens t SET refresh = t.refresh FROM r WHERE t.id = :id)
SELECT status, (status = 'ok')::int AS ok FROM r \gset
\if :ok = 0
SELECT bench.note_bad(:run, :status);
\endif
