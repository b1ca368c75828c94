-- replica: validate a uniformly drawn access token of a family no refresher
-- touches (ids :lo..:n), read from bench.replica_tokens: a logged copy, since
-- a standby cannot read an unlogged table. The same script on the standby and
-- on the primary; non-ok answers are counted either way (bench.note_status).
\set id random(:lo, :n)
SELECT v.status, (v.status = 'ok')::int AS ok, v.user_id, v.data, v.auth_level,
       v.authenticated_at, v.expires_at
  FROM bench.replica_tokens t, LATERAL session_validate(t.access) v WHERE t.id = :id \gset
\if :ok = 0
SELECT bench.note_status(:run, :status);
\endif
