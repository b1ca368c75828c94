//! In-server tests (`cargo pgrx test`). Each runs in a transaction that is
//! rolled back, within one statement: `statement_timestamp()` does not move,
//! so expiry is tested from outside (pg_regress and tests/client).

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn one<T: FromDatum + IntoDatum>(sql: &str) -> T {
        Spi::get_one::<T>(sql)
            .expect("query failed")
            .expect("query returned NULL")
    }

    /// Issues a session for `user` and returns (session_id, access, refresh).
    fn issue(user: &str) -> (String, String, String) {
        let (id, access, refresh) = Spi::get_three::<String, String, String>(&format!(
            "SELECT session_id::text, access_token, refresh_token FROM session_issue('{user}')"
        ))
        .unwrap();
        (id.unwrap(), access.unwrap(), refresh.unwrap())
    }

    fn validate_status(token: &str) -> String {
        one(&format!("SELECT status FROM session_validate('{token}')"))
    }

    fn refresh(token: &str) -> (String, Option<String>, Option<String>) {
        let (status, access, refresh) = Spi::get_three::<String, String, String>(&format!(
            "SELECT status, access_token, refresh_token FROM session_refresh('{token}')"
        ))
        .unwrap();
        (status.unwrap(), access, refresh)
    }

    fn events(kind: &str, session: &str) -> i64 {
        one(&format!(
            "SELECT count(*) FROM session_auth.events WHERE event = '{kind}' \
             AND session_id = '{session}'"
        ))
    }

    #[pg_test]
    fn issue_returns_prefixed_tokens_and_stores_only_digests() {
        let (id, access, refresh) = issue("alice");
        assert!(access.starts_with("pgsa_at_") && access.len() == crate::token::TOKEN_LEN);
        assert!(refresh.starts_with("pgsa_rt_") && refresh.len() == crate::token::TOKEN_LEN);
        let leaked: i64 = one(&format!(
            "SELECT count(*) FROM session_auth.sessions s \
             WHERE s::text LIKE '%{}%' OR s::text LIKE '%{}%'",
            &access[8..],
            &refresh[8..]
        ));
        assert_eq!(leaked, 0);
        let digest_ok: bool = one(&format!(
            "SELECT access_digest = substr(sha256('{access}'::bytea), 1, 16) \
             AND refresh_digest = substr(sha256('{refresh}'::bytea), 1, 16) \
             FROM session_auth.sessions WHERE session_id = '{id}'"
        ));
        assert!(digest_ok);
        assert_eq!(events("issued", &id), 1);
    }

    #[pg_test]
    fn validate_answers_ok_with_the_session_row() {
        let (id, access, _) = issue("bob");
        let (status, user, level) = Spi::get_three::<String, String, i32>(&format!(
            "SELECT status, user_id, auth_level FROM session_validate('{access}')"
        ))
        .unwrap();
        assert_eq!(status.as_deref(), Some("ok"));
        assert_eq!(user.as_deref(), Some("bob"));
        assert_eq!(level, Some(1));
        let same_id: bool = one(&format!(
            "SELECT session_id = '{id}' FROM session_validate('{access}')"
        ));
        assert!(same_id);
    }

    #[pg_test]
    fn validate_answers_invalid_for_anything_not_issued() {
        let (_, access, refresh) = issue("carol");
        assert_eq!(validate_status(&refresh), "invalid", "wrong kind");
        assert_eq!(validate_status(""), "invalid");
        assert_eq!(validate_status("garbage"), "invalid");
        // Right shape, right session id, wrong secret.
        let forged = format!(
            "{}AAAAAAAAAAAAAAAA",
            &access[..crate::token::TOKEN_LEN - 16]
        );
        assert_eq!(forged.len(), crate::token::TOKEN_LEN);
        assert_eq!(validate_status(&forged), "invalid");
        let null: String = one("SELECT status FROM session_validate(NULL)");
        assert_eq!(null, "invalid");
        let huge: String = one("SELECT status FROM session_validate(repeat('x', 10000000))");
        assert_eq!(huge, "invalid");
        let others_null: bool = one(
            "SELECT session_id IS NULL AND user_id IS NULL AND data IS NULL \
             AND expires_at IS NULL FROM session_validate('nope')",
        );
        assert!(others_null);
    }

    #[pg_test]
    fn refresh_rotates_and_the_parent_retries_to_the_same_pair() {
        let (id, access, refresh_token) = issue("dave");
        let (status, a2, r2) = refresh(&refresh_token);
        assert_eq!(status, "ok");
        let (a2, r2) = (a2.unwrap(), r2.unwrap());
        assert_ne!(a2, access);
        assert_ne!(r2, refresh_token);
        // Rule 2: within the grace window the parent gets the same pair.
        let (status, a3, r3) = refresh(&refresh_token);
        assert_eq!(status, "ok");
        assert_eq!(a3.as_deref(), Some(a2.as_str()));
        assert_eq!(r3.as_deref(), Some(r2.as_str()));
        // Rule 6: the superseded access token still validates in the window.
        assert_eq!(validate_status(&access), "ok");
        assert_eq!(validate_status(&a2), "ok");
        let generation: i32 = one(&format!(
            "SELECT generation FROM session_auth.sessions WHERE session_id = '{id}'"
        ));
        assert_eq!(generation, 2, "exactly one rotation");
        let blacklisted: i64 = one(&format!(
            "SELECT count(*) FROM session_auth.blacklist WHERE session_id = '{id}' \
             AND reason = 'superseded' AND generation = 1 \
             AND access_digest IS NOT NULL AND refresh_digest IS NOT NULL"
        ));
        assert_eq!(
            blacklisted, 1,
            "one row for the superseded pair, both digests"
        );
    }

    #[pg_test]
    fn replaying_an_ancestor_revokes_the_whole_family() {
        let (id, _, r1) = issue("erin");
        let (_, _, r2) = refresh(&r1);
        let (_, a3, r3) = refresh(&r2.unwrap());
        // r1 is the grandparent now: reuse, whatever the grace.
        let (status, a, r) = refresh(&r1);
        assert_eq!(status, "reuse_detected");
        assert!(a.is_none() && r.is_none());
        assert_eq!(validate_status(&a3.unwrap()), "revoked");
        assert_eq!(refresh(&r3.unwrap()).0, "revoked");
        assert_eq!(
            refresh(&r1).0,
            "revoked",
            "a revoked family never reports reuse again"
        );
        assert_eq!(events("reuse_detected", &id), 1);
        let details: String = one(&format!(
            "SELECT details::text FROM session_auth.events \
             WHERE event = 'reuse_detected' AND session_id = '{id}'"
        ));
        assert_eq!(
            details,
            r#"{"current_generation": 3, "presented_generation": 1}"#
        );
    }

    #[pg_test]
    fn without_grace_a_parent_racing_its_rotation_gets_the_pair_and_an_ancestor_is_reuse() {
        // One statement: its clock does not move, so every call here races
        // the rotation (rule 7: RACE_WINDOW), even with no grace at all. That
        // the parent is reuse once the race window is over, with real time
        // passing, is in tests/pg_regress/sql/03_refresh.sql.
        let (id, _, r1) = issue("frank");
        Spi::run("SET LOCAL session_auth.refresh_grace = 0").unwrap();
        let (_, _, r2) = refresh(&r1);
        let (status, _, again) = refresh(&r1);
        assert_eq!((status.as_str(), &again), ("ok", &r2));
        assert_eq!(events("reuse_detected", &id), 0);
        let (_, _, _r3) = refresh(r2.as_deref().unwrap());
        assert_eq!(
            refresh(&r1).0,
            "reuse_detected",
            "an older ancestor never races"
        );
        assert_eq!(events("reuse_detected", &id), 1);
    }

    #[pg_test]
    fn revoke_takes_any_token_and_is_idempotent() {
        let (id, access, refresh_token) = issue("gina");
        let revoked: bool = one(&format!("SELECT session_revoke('{refresh_token}')"));
        assert!(revoked);
        let again: bool = one(&format!("SELECT session_revoke('{access}')"));
        assert!(!again);
        assert_eq!(validate_status(&access), "revoked");
        assert_eq!(refresh(&refresh_token).0, "revoked");
        assert_eq!(events("revoked", &id), 1);
        let nothing: bool = one("SELECT session_revoke(NULL) OR session_revoke('x')");
        assert!(!nothing);
    }

    #[pg_test]
    fn revoke_user_keeps_one_and_list_shows_live_sessions_newest_first() {
        let (first, _, _) = issue("henry");
        let (second, access, _) = issue("henry");
        let listed: i64 = one("SELECT count(*) FROM session_list('henry')");
        assert_eq!(listed, 2);
        let revoked: i32 = one(&format!("SELECT session_revoke_user('henry', '{second}')"));
        assert_eq!(revoked, 1);
        assert_eq!(validate_status(&access), "ok");
        let remaining: String =
            one("SELECT string_agg(session_id::text, ',') FROM session_list('henry')");
        assert_eq!(remaining, second);
        assert_eq!(events("revoked_user", &first), 1);
        let none_left: i32 = one("SELECT session_revoke_user('henry')");
        assert_eq!(none_left, 1);
        let empty: i64 = one("SELECT count(*) FROM session_list('henry')");
        assert_eq!(empty, 0);
    }

    #[pg_test]
    fn revoke_id_signs_out_one_device() {
        let (id, access, _) = issue("ivy");
        let revoked: bool = one(&format!("SELECT session_revoke_id('{id}')"));
        assert!(revoked);
        assert_eq!(validate_status(&access), "revoked");
        let again: bool = one(&format!("SELECT session_revoke_id('{id}')"));
        assert!(!again);
        let null: bool = one("SELECT session_revoke_id(NULL)");
        assert!(!null);
    }

    #[pg_test]
    fn set_data_replaces_the_data_of_live_sessions_only() {
        let (id, access, _) = issue("jack");
        let set: bool = one(&format!(
            "SELECT session_set_data('{id}', '{{\"csrf\": \"abc\"}}')"
        ));
        assert!(set);
        let data: String = one(&format!(
            "SELECT data->>'csrf' FROM session_validate('{access}')"
        ));
        assert_eq!(data, "abc");
        Spi::run(&format!("SELECT session_revoke_id('{id}')")).unwrap();
        let after: bool = one(&format!("SELECT session_set_data('{id}', '{{}}')"));
        assert!(!after);
    }

    #[pg_test]
    fn require_returns_the_row() {
        let (_, access, _) = issue("kate");
        let user: String = one(&format!(
            "SELECT user_id FROM session_require('{access}', '1 hour', 1)"
        ));
        assert_eq!(user, "kate");
    }

    #[pg_test(error = "invalid session token")]
    fn require_raises_for_an_unknown_token() {
        Spi::run("SELECT session_require('nope')").unwrap();
    }

    #[pg_test(error = "reauthentication required")]
    fn require_raises_for_a_low_auth_level() {
        let (_, access, _) = issue("leo");
        Spi::run(&format!("SELECT session_require('{access}', NULL, 2)")).unwrap();
    }

    #[pg_test]
    fn reauthenticate_rotates_raises_the_level_and_kills_the_old_pair() {
        let (id, access, refresh_token) = issue("mia");
        let (new_access, new_refresh) = Spi::get_two::<String, String>(&format!(
            "SELECT access_token, refresh_token FROM session_reauthenticate('{access}', 3)"
        ))
        .unwrap();
        let (new_access, new_refresh) = (new_access.unwrap(), new_refresh.unwrap());
        assert_eq!(validate_status(&access), "revoked", "no grace for reauth");
        let level: i32 = one(&format!(
            "SELECT auth_level FROM session_validate('{new_access}')"
        ));
        assert_eq!(level, 3);
        // Never lowers the level.
        let lowered: String = one(&format!(
            "SELECT access_token FROM session_reauthenticate('{new_access}', 1)"
        ));
        let level: i32 = one(&format!(
            "SELECT auth_level FROM session_validate('{lowered}')"
        ));
        assert_eq!(level, 3);
        assert_eq!(events("reauthenticated", &id), 2);
        // The refresh token the last reauthentication superseded, presented
        // at the same statement time (one test runs in one statement):
        // another tab racing the step-up (rule 7), not theft. Past the race
        // window it is reuse: tests/pg_regress/sql/09_reauthenticate.sql.
        assert_eq!(refresh(&new_refresh).0, "expired");
        assert_eq!(validate_status(&lowered), "ok");
        assert_eq!(events("reuse_detected", &id), 0);
        // One generation older is theft, race window or not.
        assert_eq!(refresh(&refresh_token).0, "reuse_detected");
        assert_eq!(validate_status(&lowered), "revoked");
    }

    #[pg_test(error = "user_id must not be NULL")]
    fn issue_rejects_a_null_user() {
        Spi::run("SELECT session_issue(NULL)").unwrap();
    }

    #[pg_test(error = "user_id must be at most 256 bytes")]
    fn issue_rejects_a_long_user() {
        Spi::run("SELECT session_issue(repeat('u', 257))").unwrap();
    }

    #[pg_test(error = "data must be a JSON object")]
    fn issue_rejects_non_object_data() {
        Spi::run("SELECT session_issue('u', '[1]')").unwrap();
    }

    #[pg_test(error = "auth_level must be between 1 and 3")]
    fn issue_rejects_an_out_of_range_level() {
        Spi::run("SELECT session_issue('u', '{}', 4)").unwrap();
    }

    #[pg_test]
    fn gucs_have_the_contract_defaults() {
        for (name, value) in [
            ("session_auth.access_ttl", "15min"),
            ("session_auth.idle_timeout", "30min"),
            ("session_auth.absolute_timeout", "12h"),
            ("session_auth.refresh_grace", "10s"),
            ("session_auth.max_sessions_per_user", "0"),
            ("session_auth.event_retention", "30d"),
            ("session_auth.purge_interval", "1min"),
            ("session_auth.purge_batch_size", "10000"),
        ] {
            let shown: String = one(&format!("SELECT current_setting('{name}')"));
            assert_eq!(shown, value, "{name}");
        }
    }

    #[pg_test]
    fn nothing_is_executable_by_public() {
        let public_exec: i64 = one(
            "SELECT count(*) FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid \
             AND d.deptype = 'e' JOIN pg_extension e ON e.oid = d.refobjid \
             AND e.extname = 'pg_session_auth' \
             WHERE has_function_privilege('public', p.oid, 'EXECUTE')",
        );
        assert_eq!(public_exec, 0);
        let client_exec: i64 = one(
            "SELECT count(*) FROM pg_proc WHERE proname LIKE 'session\\_%' \
             AND has_function_privilege('session_auth_client', oid, 'EXECUTE')",
        );
        assert!(
            client_exec >= 10,
            "client role can call the API ({client_exec})"
        );
        let client_tables: i64 = one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'session_auth' \
             AND has_table_privilege('session_auth_client', \
                 format('%I.%I', schemaname, tablename), 'SELECT')",
        );
        assert_eq!(client_tables, 0);
    }

    #[pg_test]
    fn purge_worker_runs_in_the_test_database_and_stats_are_readable() {
        // The test database is created after the server starts, so the
        // worker's first connection may fail; it comes back within its
        // restart time (5 s).
        let running = (0..40).any(|_| {
            Spi::run("SELECT pg_stat_clear_snapshot(), pg_sleep(0.5)").unwrap();
            one::<bool>(
                "SELECT EXISTS (SELECT FROM pg_stat_activity \
                 WHERE backend_type = 'pg_session_auth purge' \
                   AND datname = current_database())",
            )
        });
        assert!(
            running,
            "the purge worker is connected to the test database"
        );
        let readable: bool =
            one("SELECT live_sessions >= 0 AND blacklist_entries >= 0 FROM session_auth.stats");
        assert!(readable);
    }

    #[pg_test]
    fn session_purge_removes_expired_rows_and_keeps_live_ones() {
        let (id, _, r1) = issue("purgeme");
        refresh(&r1);
        // Age everything of this session, as if its deadlines had passed.
        Spi::run(&format!(
            "UPDATE session_auth.sessions SET purge_after = now() - interval '1 s', \
               access_expires_at = now() - interval '1 s', \
               refresh_expires_at = now() - interval '1 s' \
             WHERE session_id = '{id}'; \
             UPDATE session_auth.blacklist SET expires_at = now() - interval '1 s' \
             WHERE session_id = '{id}'"
        ))
        .unwrap();
        let (live, _, _) = issue("stays");
        let removed: i64 = one("SELECT session_purge()");
        assert_eq!(removed, 2, "one session and its superseded pair");
        let again: i64 = one("SELECT session_purge()");
        assert_eq!(again, 0);
        let left: i64 = one(&format!(
            "SELECT count(*) FROM session_auth.sessions WHERE session_id IN ('{id}', '{live}')"
        ));
        assert_eq!(left, 1);
        let by: String = one("SELECT last_purge_by FROM session_auth.stats");
        assert_eq!(by, "session_purge");
    }

    #[pg_test]
    fn issuing_beyond_the_cap_evicts_the_oldest() {
        Spi::run("SET LOCAL session_auth.max_sessions_per_user = 2").unwrap();
        for _ in 0..3 {
            issue("capped");
        }
        let live: i64 = one("SELECT count(*) FROM session_list('capped')");
        assert_eq!(live, 2);
        let evicted: i64 = one(
            "SELECT count(*) FROM session_auth.events e JOIN session_auth.sessions s \
             USING (session_id) WHERE e.event = 'evicted' AND s.user_id = 'capped' \
             AND s.revoked_reason = 'evicted'",
        );
        assert_eq!(evicted, 1);
        Spi::run("SET LOCAL session_auth.max_sessions_per_user = 0").unwrap();
        issue("capped");
        let uncapped: i64 = one("SELECT count(*) FROM session_list('capped')");
        assert_eq!(uncapped, 3);
    }

    #[pg_test]
    fn the_data_size_count_is_exactly_the_length_of_jsonb_text() {
        // Shapes of every kind: nesting, escapes, numbers in every spelling,
        // unicode, empty containers. The count must equal what PostgreSQL
        // writes (octet_length of jsonb::text) to the byte: within at that
        // length, over at one byte less.
        let samples = [
            r#"{}"#,
            r#"{"a": 1}"#,
            r#"{"a": {"b": [1, {}]}, "c": []}"#,
            r#"{"k": "quote \" backslash \\ tab \t nl \n ctl \u0001 é ✓ 😀"}"#,
            r#"{"n": [0, -0, 1.50, 1e3, 1E-3, -12345678901234567890.000100, 0.0000001]}"#,
            r#"{"t": true, "f": false, "z": null, "s": ""}"#,
            r#"{"deep": [[[[[[["x"]]]]]]], "obj": {"a": {"b": {"c": {}}}}}"#,
            r#"{"": "", "\u001fx": 1}"#,
            r#"{"big": 1e300, "neg": -1e-300, "many": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}"#,
        ];
        for sample in samples {
            let sql = format!("SELECT $j${sample}$j$::jsonb");
            let value: crate::jsonb::RawJsonb = Spi::get_one(&sql).unwrap().unwrap();
            let length: i32 = Spi::get_one(&format!("SELECT octet_length(({sql})::text)"))
                .unwrap()
                .unwrap();
            let length = usize::try_from(length).unwrap();
            assert!(value.text_len_at_most(length), "{sample}: {length} fits");
            assert!(
                !value.text_len_at_most(length - 1),
                "{sample}: {length} - 1 does not"
            );
        }
    }

    #[pg_test]
    fn preloaded_retry_keys_live_in_shared_memory_and_revocation_unlinks_them() {
        // The test server preloads the library: keys live in the ring in
        // shared memory, never in the table (their erasure over time is
        // key_ring's unit tests and tests/security/test_database_reader.py).
        let (id, _, r1) = issue("keyed");
        let (status, _, rotated) = refresh(&r1);
        assert_eq!(status, "ok");
        let keyed: bool = one(&format!(
            "SELECT retry_key_id IS NOT NULL FROM session_auth.sessions WHERE session_id = '{id}'"
        ));
        assert!(keyed, "the rotation names its key");
        let rows: i64 = one("SELECT count(*) FROM session_auth.retry_keys");
        assert_eq!(rows, 0, "no key is ever in the table");
        Spi::run("SELECT session_purge()").unwrap();
        let (status, _, again) = refresh(&r1);
        assert_eq!(
            (status.as_str(), &again),
            ("ok", &rotated),
            "a retry gets the same pair"
        );

        let (other, _, r) = issue("keyed2");
        refresh(&r);
        Spi::run(&format!("SELECT session_revoke_id('{other}')")).unwrap();
        let unlinked: bool = one(&format!(
            "SELECT retry_key_id IS NULL FROM session_auth.sessions WHERE session_id = '{other}'"
        ));
        assert!(unlinked, "a revoked session names no retry key");
    }

    #[pg_test]
    fn rotations_are_hot_updates_and_the_purge_moves_purge_after_up() {
        let (id, _, mut r) = issue("hot");
        let before: i64 = one("SELECT n_tup_hot_upd FROM pg_stat_xact_user_tables \
             WHERE schemaname = 'session_auth' AND relname = 'sessions'");
        for _ in 0..5 {
            let (status, _, next) = refresh(&r);
            assert_eq!(status, "ok");
            r = next.unwrap();
        }
        let after: i64 = one("SELECT n_tup_hot_upd FROM pg_stat_xact_user_tables \
             WHERE schemaname = 'session_auth' AND relname = 'sessions'");
        assert_eq!(after - before, 5, "every rotation is a HOT update");
        // A purge_after passed on a live session: moved up, not deleted.
        Spi::run(&format!(
            "UPDATE session_auth.sessions SET purge_after = now() - interval '1 s' \
             WHERE session_id = '{id}'"
        ))
        .unwrap();
        let done: i64 = one("SELECT session_purge()");
        assert_eq!(
            done, 1,
            "nothing removed, one session rescheduled: not done yet"
        );
        let again: i64 = one("SELECT session_purge()");
        assert_eq!(again, 0, "now done");
        let kept: i64 = one(&format!(
            "SELECT count(*) FROM session_auth.sessions WHERE session_id = '{id}'"
        ));
        assert_eq!(kept, 1);
        let moved: bool = one(&format!(
            "SELECT purge_after = greatest(access_expires_at, refresh_expires_at) \
             FROM session_auth.sessions WHERE session_id = '{id}'"
        ));
        assert!(moved, "purge_after is now the session's real deadline");
    }

    #[pg_test]
    fn session_data_comes_back_exactly_as_stored() {
        let data = r#"{"n": 1.50, "big": 12345678901234567890123, "e": 1e2, "deep": [[[[1]]]], "s": "\u00e9"}"#;
        let (access, id) = Spi::get_two::<String, String>(&format!(
            "SELECT access_token, session_id::text FROM session_issue('exact', '{data}')"
        ))
        .unwrap();
        let (access, id) = (access.unwrap(), id.unwrap());
        let same: bool = one(&format!(
            "SELECT data::text = '{data}'::jsonb::text FROM session_validate('{access}')"
        ));
        assert!(same, "validate returns the stored jsonb unchanged");
        let listed: bool = one(&format!(
            "SELECT data::text = '{data}'::jsonb::text FROM session_list('exact') \
             WHERE session_id = '{id}'"
        ));
        assert!(listed);
        let text: String = one(&format!(
            "SELECT data->>'big' FROM session_validate('{access}')"
        ));
        assert_eq!(text, "12345678901234567890123");
    }

    #[pg_test]
    fn an_access_token_expired_before_its_rotation_is_expired_as_the_parent_then_invalid() {
        let (id, access, r1) = issue("late");
        // The access token ran out before the client refreshed, as usual.
        Spi::run(&format!(
            "UPDATE session_auth.sessions SET access_expires_at = now() - interval '1 s' \
             WHERE session_id = '{id}'"
        ))
        .unwrap();
        let (status, _, r2) = refresh(&r1);
        assert_eq!(status, "ok");
        // The superseded pair is the parent now, and the parent is only on
        // the blacklist: both its digests are kept there.
        let kept = |generation: i32| -> String {
            one(&format!(
                "SELECT concat_ws(',', CASE WHEN access_digest IS NOT NULL THEN 'access' END, \
                                       CASE WHEN refresh_digest IS NOT NULL THEN 'refresh' END) \
                 FROM session_auth.blacklist WHERE session_id = '{id}' AND generation = {generation}"
            ))
        };
        assert_eq!(kept(1), "access,refresh");
        assert_eq!(
            validate_status(&access),
            "expired",
            "as the parent (rule 6)"
        );
        // One rotation later it is an older token, one that had expired
        // before its pair was superseded: not one of the family any more.
        assert_eq!(refresh(&r2.expect("a rotated pair")).0, "ok");
        assert_eq!(validate_status(&access), "invalid");
    }
}
