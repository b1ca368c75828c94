//! Where PostgreSQL's C API differs between the majors this extension builds
//! for, behind functions with one signature. Nothing else uses `#[cfg]` on a
//! PostgreSQL version.

use std::ffi::c_int;

use pgrx::pg_sys;

unsafe extern "C-unwind" {
    /// PostgreSQL's SIGTERM handler for backends: sets `ProcDiePending` and
    /// the latch, so the next interrupt check (in a lock wait, in VACUUM's
    /// cost delay, between our steps) ends the process with FATAL. The raw
    /// symbol: a signal handler must not go through pgrx's guarded wrapper.
    fn die(signal: c_int);
    /// Sets `ConfigReloadPending` and the latch.
    fn SignalHandlerForConfigReload(signal: c_int);
}

/// Installs PostgreSQL's own handlers for SIGTERM (`die`) and SIGHUP (reload
/// pending). SIGINT keeps the statement-cancel handler PostgreSQL installs
/// for database-connected background workers.
pub fn install_backend_signal_handlers() {
    // SAFETY: installing signal handlers PostgreSQL provides for exactly
    // this use, before signals are unblocked.
    unsafe {
        set_handler(pg_sys::SIGTERM as c_int, die);
        set_handler(pg_sys::SIGHUP as c_int, SignalHandlerForConfigReload);
        pg_sys::BackgroundWorkerUnblockSignals();
    }
}

/// `pqsignal` (PostgreSQL 18 renamed the backend's to `pqsignal_be`).
unsafe fn set_handler(signal: c_int, handler: unsafe extern "C-unwind" fn(c_int)) {
    // SAFETY: the caller installs a handler PostgreSQL provides.
    unsafe {
        #[cfg(not(feature = "pg18"))]
        pg_sys::pqsignal(signal, Some(handler));
        #[cfg(feature = "pg18")]
        pg_sys::pqsignal_be(signal, Some(handler));
    }
}

/// `index_beginscan` for a scan with `nkeys` keys and no ORDER BY keys
/// (PostgreSQL 18 added an instrumentation argument).
///
/// # Safety
/// As `index_beginscan`: open relations, a registered snapshot.
pub unsafe fn index_beginscan(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    snapshot: pg_sys::Snapshot,
    nkeys: c_int,
) -> pg_sys::IndexScanDesc {
    // SAFETY: the caller's promise.
    unsafe {
        #[cfg(not(feature = "pg18"))]
        return pg_sys::index_beginscan(heap, index, snapshot, nkeys, 0);
        #[cfg(feature = "pg18")]
        return pg_sys::index_beginscan(heap, index, snapshot, std::ptr::null_mut(), nkeys, 0);
    }
}
