-- ext: log a user in (a new session), receiving the token pair.
\set u random(1, 1000000)
SELECT * FROM session_issue('user' || :u, '{"roles": ["user"], "tenant": 42}', 1);
