-- floor: the bare cost of one primary-key probe of a token digest, with the
-- same client-side work as the validate scripts (the token read from the
-- lookup table in the same statement).
\set id random(1, :n)
SELECT 'ok' AS status, 1 AS ok, f.user_id, f.data, f.auth_level, f.authenticated_at,
       f.expires_at
  FROM bench.floor_tokens t JOIN bench.floor f ON f.digest = substr(sha256(convert_to(t.access, 'UTF8')), 1, 16)
 WHERE t.id = :id \gset
\if :ok = 0
SELECT bench.note_bad(:run, :status);
\endif
