//! pg_session_auth: session management inside PostgreSQL.
//!
//! Module map: `api` (the SQL functions), `session` (the lifecycle),
//! `token` (generation, digests, parsing), `clock` (deadlines), `store`
//! (prepared statements), `probe` (direct index probes for validate), `gucs` (settings), `error` (SQLSTATEs),
//! `backstop` (the worker that keeps a reuse revocation across a rollback),
//! `purge` and `worker` (removing what has expired).

use pgrx::prelude::*;

mod api;
mod backstop;
mod clock;
mod error;
mod gucs;
mod jsonb;
mod probe;
mod purge;
mod retry_key;
mod session;
mod store;
mod token;
mod vacuum;
mod worker;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!(
    "../sql/raising.sql",
    name = "raising",
    requires = [
        api::session_validate,
        api::session_auth::reauthenticate_pair
    ]
);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: a flag PostgreSQL sets while it loads shared_preload_libraries.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    gucs::register(preloading);
    if preloading {
        worker::register();
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'pg_session_auth'",
            "session_auth.database = 'pgrx_tests'",
        ]
    }
}
