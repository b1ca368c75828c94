-- ext: validate a uniformly drawn access token.
\set id random(1, :n)
SELECT access AS tok FROM bench.tokens WHERE id = :id \gset
SELECT status, (status = 'ok')::int AS ok, user_id, data, auth_level, authenticated_at, expires_at
  FROM session_validate(:tok) \gset
\if :ok = 0
SELECT bench.note_bad(:run, :status);
\endif
