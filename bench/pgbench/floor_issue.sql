-- floor: a one-row INSERT of a random digest into the floor table.
\set u random(1, 1000000)
INSERT INTO bench.floor (digest, session_id, user_id, data, auth_level, authenticated_at, expires_at)
VALUES (substr(sha256(gen_random_bytes(32)), 1, 16), gen_random_uuid(), 'user' || :u,
        '{"roles": ["user"], "tenant": 42}', 1, statement_timestamp(),
        statement_timestamp() + interval '2 hours')
RETURNING session_id;
