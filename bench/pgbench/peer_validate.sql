-- peer: validate a uniformly drawn access token (read from the lookup table
-- in the same statement).
\set id random(1, :n)
SELECT v.status, (v.status = 'ok')::int AS ok, v.user_id, v.data, v.auth_level,
       v.authenticated_at, v.expires_at
  FROM bench.peer_tokens t, LATERAL peer.validate(t.access) v WHERE t.id = :id \gset
\if :ok = 0
SELECT bench.note_bad(:run, :status);
\endif
