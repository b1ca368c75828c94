//! The purge worker's VACUUM of the extension's own tables.
//!
//! The blacklist is a queue (every rotation appends, the purge deletes what
//! expired) and every rotation leaves a dead session row version. Left to
//! autovacuum, which looks at a database once per `autovacuum_naptime` and
//! waits for 20 % of a table to be dead, the tables grow to hold a minute
//! or more of dead rows. The worker instead vacuums a table right after a
//! pass once a tenth of it is dead, so freed space is reused within one
//! `purge_interval`.
//!
//! VACUUM cannot run through SPI (it refuses to run inside a function), so
//! the worker calls it as a top-level command, outside any transaction
//! block, as a client's VACUUM runs. It runs with `SKIP_LOCKED` (a table
//! that autovacuum or a DBA is vacuuming is skipped, nobody waits),
//! `TRUNCATE false`, `PARALLEL 0` (no parallel workers to start, or to fail
//! to start during a shutdown) and autovacuum's cost-based delay, so it
//! never competes hard with the hot path and takes no lock that blocks
//! reads or writes. SIGTERM ends it at its next cost-delay point, as it
//! ends any backend's VACUUM (the worker's SIGTERM handler is `die`).

use pgrx::prelude::*;
use pgrx::PgList;

/// Tables of the extension with enough dead row versions to be worth a
/// VACUUM now: a tenth of the table and at least 1000, by the cumulative
/// statistics (which lag a second or so). Names come back qualified and
/// quoted (`quote_ident`), ready to be spliced into a VACUUM.
///
/// This runs as the bootstrap superuser. The worker's session resolves names
/// in `pg_catalog` only, and still every operator here is spelled
/// `OPERATOR(pg_catalog.x)` with both sides of one type (0.1.0 compared
/// `bigint >= double precision` through the default search_path, and a
/// `public.>=` planted by an application role ran as superuser).
pub const DUE_SQL: &str = "SELECT pg_catalog.quote_ident(n.nspname::pg_catalog.text) \
        OPERATOR(pg_catalog.||) '.' \
        OPERATOR(pg_catalog.||) pg_catalog.quote_ident(c.relname::pg_catalog.text) \
    FROM pg_catalog.pg_class c \
    JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
    WHERE n.nspname OPERATOR(pg_catalog.=) 'session_auth'::pg_catalog.name \
      AND c.relname OPERATOR(pg_catalog.=) ANY ('{blacklist,sessions,events}'::pg_catalog.name[]) \
      AND pg_catalog.pg_stat_get_dead_tuples(c.oid)::pg_catalog.float8 \
          OPERATOR(pg_catalog.>=) GREATEST(1000::pg_catalog.float8, \
              0.1::pg_catalog.float8 OPERATOR(pg_catalog.*) \
              GREATEST(c.reltuples::pg_catalog.float8, 0::pg_catalog.float8)) \
    ORDER BY c.relname";

/// One VACUUM statement for the due tables (as `DUE_SQL` gives them:
/// the extension's own, quoted), or `None` if there are none. `TRUNCATE
/// false`: giving the end of a table back to the OS would take an ACCESS
/// EXCLUSIVE lock (briefly blocking validate, and replayed on standbys), and
/// the space is about to be reused anyway.
pub fn statement(due: &[String]) -> Option<std::ffi::CString> {
    if due.is_empty() {
        return None;
    }
    let sql = format!(
        "VACUUM (SKIP_LOCKED, TRUNCATE false, PARALLEL 0) {}",
        due.join(", ")
    );
    std::ffi::CString::new(sql).ok()
}

thread_local! {
    /// Where the parse tree and VACUUM's own working memory live: a context
    /// that survives the transactions VACUUM commits, reset before each use.
    static CONTEXT: std::cell::Cell<pg_sys::MemoryContext> =
        const { std::cell::Cell::new(std::ptr::null_mut()) };
}

fn context() -> pg_sys::MemoryContext {
    CONTEXT.with(|cx| {
        if cx.get().is_null() {
            // SAFETY: a child of TopMemoryContext, kept for the process.
            cx.set(unsafe {
                pg_sys::AllocSetContextCreateExtended(
                    pg_sys::TopMemoryContext,
                    c"pg_session_auth vacuum".as_ptr(),
                    pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
                    pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                    pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
                )
            });
        }
        cx.get()
    })
}

/// Runs a `VACUUM` statement as a top-level command, as a client's would
/// run: VACUUM commits the transaction it is called in and runs one of its
/// own per table. An ERROR comes out as a panic for the caller to catch;
/// the caller then aborts the transaction and calls [`after_error`].
///
/// # Safety
/// Only in a background worker connected to a database, between
/// transactions (none open, no active snapshot).
pub unsafe fn run_top_level(sql: &std::ffi::CStr) {
    let cx = context();
    // SAFETY: the caller guarantees we are between transactions; this is
    // the bracket exec_simple_query puts around a VACUUM, with the parse
    // tree outside the transaction's memory (VACUUM commits it).
    unsafe {
        pg_sys::MemoryContextReset(cx);
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::CurrentMemoryContext = cx;
        let parsed = pg_sys::raw_parser(sql.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        let raw = PgList::<pg_sys::RawStmt>::from_pg(parsed)
            .head()
            .expect("a VACUUM statement parses to one statement");
        let stmt = (*raw).stmt.cast::<pg_sys::VacuumStmt>();
        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        // VACUUM keeps its working memory under PortalContext, which a
        // background worker has none of.
        pg_sys::PortalContext = cx;
        pg_sys::ExecVacuum(pstate, stmt, true);
        pg_sys::PortalContext = std::ptr::null_mut();
        pg_sys::CommitTransactionCommand();
        pg_sys::MemoryContextReset(cx);
    }
}

/// Cleans up after a VACUUM that raised, once the transaction is aborted.
///
/// # Safety
/// Same as [`run_top_level`].
pub unsafe fn after_error() {
    // SAFETY: nothing refers to the context once the transaction is gone.
    unsafe {
        pg_sys::PortalContext = std::ptr::null_mut();
        pg_sys::MemoryContextReset(context());
    }
}
