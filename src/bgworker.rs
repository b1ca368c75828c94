//! What the purge worker and the backstop worker share: signals, sleeping,
//! the settings their database session runs with, and transactions.
//!
//! Signals are PostgreSQL's own (see `compat`): SIGTERM ends the process at
//! the next interrupt check wherever it is (waiting on a lock, inside a
//! VACUUM, between two steps), so a shutdown never waits for us; SIGHUP
//! marks the configuration for reloading and wakes the latch; SIGINT
//! cancels the statement running, and is ignored while idle.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

use crate::compat;

/// Installs the signal handlers; call first thing in a worker's main.
pub fn setup_signals() {
    compat::install_backend_signal_handlers();
}

/// Sleeps on the latch for at most `timeout` (or until something sets it).
/// Ends the process if SIGTERM arrived or the postmaster died; reloads the
/// configuration if SIGHUP arrived; forgets a cancel that found nothing to
/// cancel. Returns whether the configuration was reloaded.
pub fn sleep(timeout: Duration) -> bool {
    let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
    // SAFETY: the standard latch wait of a background worker.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            ms.clamp(0, i64::from(i32::MAX)) as _,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    check_for_interrupts_idle()
}

/// `CHECK_FOR_INTERRUPTS()` outside any statement: a pending cancel is
/// dropped (there is nothing to cancel), a pending SIGTERM ends the process.
/// Returns whether the configuration was reloaded.
pub fn check_for_interrupts_idle() -> bool {
    // SAFETY: backend-local flags, read and written as PostgreSQL's own
    // idle loops do.
    unsafe {
        std::ptr::write_volatile(&raw mut pg_sys::QueryCancelPending, 0);
    }
    pg_sys::check_for_interrupts!();
    // SAFETY: as above.
    unsafe {
        if std::ptr::read_volatile(&raw const pg_sys::ConfigReloadPending) != 0 {
            std::ptr::write_volatile(&raw mut pg_sys::ConfigReloadPending, 0);
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
            return true;
        }
    }
    false
}

/// The settings every session of ours runs with, whatever the database's or
/// the role's defaults say (`ALTER DATABASE ... SET` applies to background
/// workers too): names resolve in `pg_catalog` only (every object of ours
/// is schema-qualified), transactions are read-write READ COMMITTED, and no
/// timeout of the DBA's can cut a revocation short. Each step bounds its own
/// waits (`SKIP LOCKED`, a `lock_timeout` per purge batch).
pub const PINNED_SETTINGS: &str = "SET search_path = pg_catalog, pg_temp; \
     SET default_transaction_read_only = off; \
     SET default_transaction_isolation = 'read committed'; \
     SET statement_timeout = 0; \
     SET lock_timeout = 0; \
     SET idle_in_transaction_session_timeout = 0; \
     SET max_parallel_maintenance_workers = 0; \
     SET max_parallel_workers_per_gather = 0";

/// Applies [`PINNED_SETTINGS`] for the rest of the session.
pub fn pin_session_settings() -> Result<(), String> {
    in_transaction(|| Spi::run(PINNED_SETTINGS)).and_then(|r| r.map_err(|e| e.to_string()))
}

/// Runs `body` in a transaction of its own. An ERROR aborts the transaction
/// and comes back as `Err` with its message, so the worker carries on. A
/// FATAL (SIGTERM) ends the process as it should.
pub fn in_transaction<R>(body: impl FnOnce() -> R) -> Result<R, String> {
    let body = AssertUnwindSafe(body);
    // SAFETY: the standard transaction bracket of a background worker.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    PgTryBuilder::new(move || {
        // Take `body` whole: a closure capturing only `body.0` would not be
        // UnwindSafe.
        let body = body;
        let result = (body.0)();
        // SAFETY: pairs with the bracket above.
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        }
        Ok(result)
    })
    .catch_others(|error| {
        // SAFETY: ends the failed transaction; the next one starts clean.
        unsafe { pg_sys::AbortCurrentTransaction() };
        Err(describe(&error))
    })
    .execute()
}

/// The message of a caught error, for the server log.
pub fn describe(error: &CaughtError) -> String {
    match error {
        CaughtError::PostgresError(e) | CaughtError::ErrorReport(e) => e.message().to_string(),
        CaughtError::RustPanic { ereport, .. } => ereport.message().to_string(),
    }
}
