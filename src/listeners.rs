//! Counting the backends that listen on channel `session_auth`, so a login
//! announces itself only when someone may hear it (see `notify`; rules in
//! docs/design.md, "Announcing events").
//!
//! With the library preloaded, a ProcessUtility hook (installed in the
//! postmaster, so every backend has it) sees each `LISTEN session_auth`. A
//! backend is counted in shared memory at its first one and stays counted
//! until it exits: UNLISTEN, `DISCARD ALL` or a rolled-back LISTEN leave
//! it counted, which only costs the NOTIFYs nobody hears.
//!
//! The race it must not lose: a login that found the count at zero, still
//! in flight when a LISTEN starts, would otherwise commit unheard after the
//! LISTEN returned. Every transaction that records an event holds
//! RowExclusiveLock on `session_auth.events` until it ends, and a login
//! reads the count only after its event row's INSERT. So a starting LISTEN
//! first counts itself, then waits for every transaction holding that lock
//! (without taking it, as CREATE INDEX CONCURRENTLY waits for writers): a
//! login either sees the count, or has committed before the LISTEN returns.
//! Logins made earlier in the listener's own transaction cannot be waited
//! for: the LISTEN announces those itself (`notify::announce_unannounced`).

use std::cell::Cell;
use std::ffi::CStr;
use std::sync::atomic::{fence, AtomicU32, Ordering};

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::notify;

static mut PREVIOUS_HOOK: pg_sys::ProcessUtility_hook_type = None;

thread_local! {
    /// Whether this backend is in the shared count.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

/// Installs the hook; only while preloading (the count lives in shared
/// memory, which exists only then).
pub fn install_hook() {
    // SAFETY: called once, from _PG_init in the postmaster; the previous
    // hook is kept and called.
    unsafe {
        PREVIOUS_HOOK = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

/// PostgreSQL's ProcessUtility_hook signature, all eight arguments.
#[allow(clippy::too_many_arguments)]
#[pg_guard]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: PostgreSQL passes a valid planned utility statement.
    if unsafe { listens_on_our_channel(pstmt) } {
        before_listen();
    }
    // SAFETY: the arguments as PostgreSQL passed them, to the hook that was
    // installed before ours or to PostgreSQL's own implementation; an error
    // there crosses back into Rust as a panic, which pg_guard re-raises.
    unsafe {
        match PREVIOUS_HOOK {
            Some(previous) => pg_sys::ffi::pg_guard_ffi_boundary(|| {
                previous(
                    pstmt,
                    query_string,
                    read_only_tree,
                    context,
                    params,
                    query_env,
                    dest,
                    qc,
                )
            }),
            None => pg_sys::standard_ProcessUtility(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
        }
    }
}

/// Whether the statement is `LISTEN session_auth` (the channel name as
/// parsed, so `LISTEN "session_auth"` too).
///
/// # Safety
/// `pstmt` is a valid planned utility statement.
unsafe fn listens_on_our_channel(pstmt: *mut pg_sys::PlannedStmt) -> bool {
    // SAFETY: the caller's promise; a ListenStmt's conditionname is a
    // NUL-terminated string.
    unsafe {
        let node = (*pstmt).utilityStmt;
        if node.is_null() || !pgrx::is_a(node, pg_sys::NodeTag::T_ListenStmt) {
            return false;
        }
        let name = (*node.cast::<pg_sys::ListenStmt>()).conditionname;
        !name.is_null() && CStr::from_ptr(name).to_bytes() == notify::CHANNEL.as_bytes()
    }
}

fn before_listen() {
    if let Some(count) = crate::shmem::listeners() {
        if !COUNTED.get() {
            count_this_backend(count);
            wait_for_event_writers();
        }
    }
    notify::announce_unannounced();
}

fn count_this_backend(count: &'static AtomicU32) {
    // SAFETY: registered once per backend, with a function that only
    // touches an atomic.
    unsafe { pg_sys::before_shmem_exit(Some(uncount_this_backend), pg_sys::Datum::from(0)) };
    count.fetch_add(1, Ordering::SeqCst);
    COUNTED.set(true);
    // Orders the count before the lock tables are read (see the module's
    // comment; `notify::someone_may_listen` has the other half).
    fence(Ordering::SeqCst);
}

unsafe extern "C-unwind" fn uncount_this_backend(_code: std::ffi::c_int, _arg: pg_sys::Datum) {
    if let Some(count) = crate::shmem::listeners() {
        count.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits until every transaction that holds a lock on `session_auth.events`
/// conflicting with SHARE (any writer of an event row) has ended; none if
/// the extension is not in this database.
fn wait_for_event_writers() {
    let Some(events) = events_table() else {
        return;
    };
    let tag = pg_sys::LOCKTAG {
        // SAFETY: the backend's database, set before any statement runs.
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: events.to_u32(),
        locktag_field3: 0,
        locktag_field4: 0,
        locktag_type: pg_sys::LockTagType::LOCKTAG_RELATION as u8,
        locktag_lockmethodid: pg_sys::DEFAULT_LOCKMETHOD as u8,
    };
    // SAFETY: a relation lock tag as SET_LOCKTAG_RELATION makes it, inside
    // a transaction; the wait can be cancelled like any lock wait.
    unsafe { pg_sys::WaitForLockers(tag, pg_sys::ShareLock as pg_sys::LOCKMODE, false) };
}

fn events_table() -> Option<pg_sys::Oid> {
    // SAFETY: catalog lookups by name inside a transaction; `true`: a
    // missing schema is InvalidOid, not an error.
    unsafe {
        let schema = pg_sys::get_namespace_oid(c"session_auth".as_ptr(), true);
        if schema == pg_sys::InvalidOid {
            return None;
        }
        let table = pg_sys::get_relname_relid(c"events".as_ptr(), schema);
        (table != pg_sys::InvalidOid).then_some(table)
    }
}
