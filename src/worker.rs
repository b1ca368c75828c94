//! The purge worker: started by the postmaster when the library is
//! preloaded, it serves `session_auth.database`. Every
//! `session_auth.purge_interval` it runs purge batches, each in its own
//! transaction with a short `lock_timeout`, until a batch comes back short,
//! pausing after each batch for nine times as long as it took (a backlog is
//! worked off at no more than a tenth of one core).
//!
//! It reloads its settings on SIGHUP, stops promptly on SIGTERM (checked
//! between batches; batches are small and never wait long), logs an error in
//! a pass and tries again next period, and waits quietly while the extension
//! is not created in its database.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

use crate::clock::statement_now;
use crate::gucs;
use crate::purge::{self, Removed};
use crate::vacuum;

pub const NAME: &str = "pg_session_auth purge";

/// Registers the worker; only possible while preloading.
pub fn register() {
    BackgroundWorkerBuilder::new(NAME)
        .set_type(NAME)
        .set_library("pg_session_auth")
        .set_function("pg_session_auth_purge_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_session_auth_purge_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = gucs::DATABASE
        .get()
        .and_then(|d| d.into_string().ok())
        .unwrap_or_else(|| "postgres".to_string());
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    log!("{NAME}: serving database \"{database}\"");
    // The worker's own VACUUMs yield like autovacuum's (see `vacuum`).
    if let Err(e) = in_transaction(|| Spi::run("SET vacuum_cost_delay = '2ms'")) {
        log!("{NAME}: {e}");
    }

    let mut waiting_for_extension_logged = false;
    while BackgroundWorker::wait_latch(Some(interval())) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: the documented way for a worker to reload its settings.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        match in_transaction(extension_installed) {
            Ok(true) => waiting_for_extension_logged = false,
            Ok(false) => {
                if !waiting_for_extension_logged {
                    log!("{NAME}: waiting for CREATE EXTENSION pg_session_auth in \"{database}\"");
                    waiting_for_extension_logged = true;
                }
                continue;
            }
            Err(e) => {
                log!("{NAME}: {e}");
                continue;
            }
        }
        run_pass();
        // A background worker has no idle loop to send its statistics; the
        // purge's deletions must be counted before `vacuum_due` reads them.
        // SAFETY: between transactions, as PostgresMain calls it.
        unsafe { pg_sys::pgstat_report_stat(true) };
        vacuum_due();
    }
    log!("{NAME}: stopping");
    // Exit code 0 would tell the postmaster never to start the worker again;
    // after pg_terminate_backend it must come back (at shutdown, nothing is
    // restarted anyway).
    // SAFETY: the normal way for a backend to exit.
    unsafe { pg_sys::proc_exit(1) };
}

fn interval() -> Duration {
    Duration::from_millis(u64::try_from(gucs::PURGE_INTERVAL.get()).unwrap_or(60_000))
}

/// Time spent working per time spent pausing, between the batches of one
/// pass: the worker is busy at most 1 / (1 + PAUSE_PER_WORK) of the time.
const PAUSE_PER_WORK: u32 = 9;

/// The pause after a batch that took `work`; at least a millisecond, so a
/// fast batch still yields, and at most a second, so a slow one (waiting on
/// a lock, say) does not stretch the pass further.
fn pause_after(work: Duration) -> Duration {
    (work * PAUSE_PER_WORK).clamp(Duration::from_millis(1), Duration::from_secs(1))
}

fn extension_installed() -> bool {
    Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_session_auth')",
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// One pass: batches until one comes back short, SIGTERM, or an error.
fn run_pass() {
    let started = Instant::now();
    let batch_size = purge::batch_size();
    let mut removed = Removed::default();
    let mut batches = 0;
    loop {
        let batch_started = Instant::now();
        let result = in_transaction(|| {
            Spi::run("SET LOCAL lock_timeout = '1s'; SET LOCAL search_path = pg_catalog, pg_temp")
                .ok();
            Spi::connect_mut(|client| purge::batch(client, statement_now(), batch_size))
        });
        match result {
            Ok(batch) => {
                batches += 1;
                removed.add(batch);
                if batch.drained(u64::try_from(batch_size).unwrap_or(0)) {
                    break;
                }
            }
            Err(e) => {
                log!("{NAME}: pass failed after {batches} batches, retrying next period: {e}");
                break;
            }
        }
        // A backlog is worked off at a bounded share of one core, so that
        // the hot path keeps its latency while the purge catches up.
        if !BackgroundWorker::wait_latch(Some(pause_after(batch_started.elapsed()))) {
            break;
        }
    }
    let _ = in_transaction(|| {
        Spi::connect_mut(|client| purge::record(client, "worker", removed, batches, started))
    });
    if removed.total() > 0 {
        log!(
            "{NAME}: removed {} blacklist entries, {} sessions, {} events in {} batches, {:.3} s",
            removed.blacklist,
            removed.sessions,
            removed.events,
            batches,
            started.elapsed().as_secs_f64()
        );
    }
}

/// VACUUMs the extension's tables that have enough dead row versions.
fn vacuum_due() {
    let due = in_transaction(|| {
        Spi::connect(|client| {
            client
                .select(vacuum::DUE_SQL, None, &[])
                .map(|t| {
                    t.filter_map(|r| r.get::<String>(1).ok().flatten())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
    });
    let due = match due {
        Ok(due) => due,
        Err(e) => {
            log!("{NAME}: {e}");
            return;
        }
    };
    let Some(sql) = vacuum::statement(&due) else {
        return;
    };
    let started = Instant::now();
    let result = PgTryBuilder::new(|| {
        // SAFETY: between transactions, in this background worker.
        unsafe { vacuum::run_top_level(&sql) };
        Ok(())
    })
    .catch_others(|error| {
        // SAFETY: ends the failed VACUUM's transaction, then its memory.
        unsafe {
            pg_sys::AbortCurrentTransaction();
            vacuum::after_error();
        }
        Err(describe(&error))
    })
    .execute();
    let tables = due.join(", ");
    match result {
        Ok(()) => log!(
            "{NAME}: vacuumed {tables} in {:.3} s",
            started.elapsed().as_secs_f64()
        ),
        Err(e) => log!("{NAME}: VACUUM of {tables} failed: {e}"),
    }
}

/// Runs `body` in a transaction of its own. An ERROR aborts the transaction
/// and comes back as `Err` with its message, so the worker carries on.
fn in_transaction<R>(body: impl FnOnce() -> R) -> Result<R, String> {
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

fn describe(error: &CaughtError) -> String {
    match error {
        CaughtError::PostgresError(e) | CaughtError::ErrorReport(e) => e.message().to_string(),
        CaughtError::RustPanic { ereport, .. } => ereport.message().to_string(),
    }
}
