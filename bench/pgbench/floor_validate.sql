-- floor: the bare cost of one primary-key probe of a token digest, with the
-- same client-side work as the validate scripts.
\set id random(1, :n)
SELECT access AS tok FROM bench.floor_tokens WHERE id = :id \gset
SELECT 'ok' AS status, 1 AS ok, user_id, data, auth_level, authenticated_at, expires_at
  FROM bench.floor WHERE digest = sha256(convert_to(:tok, 'UTF8')) \gset
\if :ok = 0
SELECT bench.note_bad(:run, :status);
\endif
