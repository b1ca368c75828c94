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

/// Every setting a database or role default (`ALTER DATABASE ... SET`,
/// `ALTER ROLE ... SET`) gave this session goes back to its built-in value:
/// such defaults apply to background workers too, and a database owner may
/// set many of them. `role` above all (the session would run as the owner,
/// and fail on the private schema), but also `synchronous_commit` (a pending
/// record deleted before its revocation is durable), the VACUUM cost
/// settings, the planner's switches.
const RESET_DEFAULTS: &str = "SET ROLE NONE; \
    DO $$ \
    DECLARE s record; \
    BEGIN \
        FOR s IN SELECT name, boot_val FROM pg_catalog.pg_settings \
                 WHERE source OPERATOR(pg_catalog.=) ANY \
                       ('{database,user,database user}'::pg_catalog.text[]) \
                   AND name OPERATOR(pg_catalog.<>) ALL \
                       ('{role,session_authorization}'::pg_catalog.text[]) \
        LOOP \
            BEGIN \
                PERFORM pg_catalog.set_config(s.name, s.boot_val, false); \
            EXCEPTION WHEN OTHERS THEN NULL; \
            END; \
        END LOOP; \
    END $$";

/// The settings every session of ours runs with, on top of the built-in
/// defaults: names resolve in `pg_catalog` only (every object of ours is
/// schema-qualified), transactions are read-write READ COMMITTED and commit
/// synchronously (a pending record is deleted only after its revocation is
/// on disk), and no timeout can cut a revocation short. Each step bounds its
/// own waits (`SKIP LOCKED`, a `lock_timeout` per batch and per backstop).
pub const PINNED_SETTINGS: &str = "SET search_path = pg_catalog, pg_temp; \
     SET default_transaction_read_only = off; \
     SET default_transaction_isolation = 'read committed'; \
     SET synchronous_commit = on; \
     SET statement_timeout = 0; \
     SET lock_timeout = 0; \
     SET idle_in_transaction_session_timeout = 0; \
     SET max_parallel_maintenance_workers = 0; \
     SET max_parallel_workers_per_gather = 0; \
     SET jit = off";

/// Resets the database's and role's defaults, applies [`PINNED_SETTINGS`]
/// for the rest of the session, and checks that it runs as the superuser
/// it connected as.
pub fn pin_session_settings() -> Result<(), String> {
    in_transaction(|| -> Result<(), String> {
        Spi::run(RESET_DEFAULTS).map_err(|e| e.to_string())?;
        Spi::run(PINNED_SETTINGS).map_err(|e| e.to_string())?;
        let superuser = Spi::get_one::<bool>(
            "SELECT r.rolsuper AND current_user OPERATOR(pg_catalog.=) session_user \
             FROM pg_catalog.pg_roles AS r WHERE r.rolname OPERATOR(pg_catalog.=) current_user",
        )
        .map_err(|e| e.to_string())?;
        if superuser != Some(true) {
            return Err("the session does not run as the superuser it connected as".into());
        }
        Ok(())
    })
    .and_then(|r| r)
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
