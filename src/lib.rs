//! pg_session_auth: session management inside PostgreSQL.
//!
//! Module map (docs/design.md has the rules they cite):
//!
//! * `api`: the SQL functions, thin over `session`.
//! * `session`: the lifecycle: issue, validate, refresh, revoke, list,
//!   set data, re-authenticate, reading and writing around `lineage`, the
//!   pure rules: which token was presented and what each call answers.
//!   `standby`: what a hot standby answers for a token it has not replayed.
//! * `token`: the token format, parsing, digests. `ids`: session ids.
//!   `blacklist`: the pairs a session no longer holds, and which one a
//!   presented token is.
//! * `retry_pair`: how a retry inside the grace gets the same pair (HKDF).
//!   `retry_keys`: the short-lived keys that allows, and where they live
//!   (`key_ring` in shared memory, or a table).
//! * `revocation`: revoking and recording events. `notify`: announcing
//!   them on channel `session_auth`; `listeners`: whether anyone may hear
//!   a login, and the lock that lets a quiet one go unheard safely.
//! * `backstop` and `pending`: making a reuse revocation stick when the
//!   detecting transaction does not commit. `xact`: what their transaction
//!   callbacks share.
//! * `clock`: statement time, effective deadlines. `gucs`: settings.
//! * `session_row`: the session row's columns, defined once.
//! * `store`: every SQL statement. `probe`: validate's direct index probes.
//! * `jsonb`: session data as stored. `error`: argument checks, SQLSTATEs.
//!   `extension`: the SQL objects' version against the library's.
//! * `purge`, `worker`, `vacuum`: removing what has expired.
//! * `bgworker`: what both workers share. `compat`: differences between
//!   PostgreSQL majors. `shmem`: what lives in shared memory.
//! * `tests`: the in-server tests (`cargo pgrx test`). `layout`: the tests
//!   that hold this map and the module graph (no cycles) to the code.
//!   `proptests`: property tests of the pure rules (tokens, retry pairs,
//!   deadlines, statuses), compiled for tests only.

use pgrx::prelude::*;

mod api;
mod backstop;
mod bgworker;
mod blacklist;
mod clock;
mod compat;
mod error;
mod extension;
mod gucs;
mod ids;
mod jsonb;
mod key_ring;
mod lineage;
mod listeners;
mod notify;
mod pending;
mod probe;
mod purge;
mod retry_keys;
mod retry_pair;
mod revocation;
mod session;
mod session_row;
mod shmem;
mod standby;
mod store;
mod token;
mod vacuum;
mod worker;
mod xact;

#[cfg(test)]
mod layout;
#[cfg(test)]
mod proptests;
#[cfg(any(test, feature = "pg_test"))]
mod tests;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!(
    "../sql/raising.sql",
    name = "raising",
    requires = [
        api::session_validate,
        api::session_auth::reauthenticate_pair,
        api::session_auth::check_auth_level
    ]
);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    error::quiet_panics();
    // SAFETY: a flag PostgreSQL sets while it loads shared_preload_libraries.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    gucs::register(preloading);
    // SAFETY: registered once per process, before any relation is read.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(on_relation_changed), pg_sys::Datum::from(0))
    };
    if preloading {
        shmem::init();
        notify::install_listen_hook();
        worker::register();
    }
}

/// A relation was changed (or the whole relcache reset, `InvalidOid`): the
/// layouts validate trusts and the cached retry key are checked again
/// before their next use. Must not raise.
unsafe extern "C-unwind" fn on_relation_changed(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    probe::forget_layouts(relid);
    retry_keys::forget_cached_key(relid);
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
