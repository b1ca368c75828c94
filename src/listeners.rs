//! Whether anyone may hear a login, and the handshake that lets a login that
//! nobody can hear stay quiet without a later listener missing it (see
//! `notify`; the rules in docs/design.md, "Announcing events").
//!
//! With the library preloaded, shared memory counts the backends that have
//! run `LISTEN session_auth` (`notify`'s hook calls `before_listen`). A
//! backend is counted at its first one and stays counted until it exits:
//! UNLISTEN, `DISCARD ALL` or a rolled-back LISTEN leave it counted, which
//! only costs NOTIFYs that nobody hears. Not preloaded, there is no count,
//! and every login is announced.
//!
//! The race: a login finds the count at zero and stays quiet; a LISTEN
//! starts and returns; the login commits, and the listener never hears of
//! it. Closed with a lock that only quiet logins take:
//!
//! * a login that finds the count at zero takes the quiet-login lock
//!   (shared among logins, held until its transaction ends) and reads the
//!   count again;
//! * a backend's first LISTEN counts it, then waits for every holder of
//!   that lock.
//!
//! Either the login's second read sees the count (and it lets the lock go),
//! or it took the lock before the LISTEN looked for holders, and the LISTEN
//! waits until the login's transaction has ended. The lock is a
//! database-object lock on an object that does not exist (`pg_extension`,
//! object id 0), which no SQL statement takes: only a role that may log
//! users in, by leaving a login's transaction open, can make a LISTEN wait.

use std::cell::Cell;
use std::sync::atomic::{fence, AtomicU32, Ordering};

use pgrx::pg_sys;

thread_local! {
    /// Whether this backend is in the shared count.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
    /// Whether a LISTEN of this backend has waited for the quiet logins in
    /// flight (after an interrupted wait, the next LISTEN waits again).
    static SYNCED: Cell<bool> = const { Cell::new(false) };
}

/// Whether a login may be heard. When nobody can hear it, the login holds
/// the quiet-login lock until its transaction ends. Always true without the
/// count (not preloaded).
pub fn may_hear_a_login() -> bool {
    let Some(count) = crate::shmem::listeners() else {
        return true;
    };
    if count.load(Ordering::SeqCst) > 0 {
        return true;
    }
    let tag = quiet_login_lock();
    // SAFETY: a transaction lock (released when the transaction ends), in
    // a mode that logins share, inside the login's transaction.
    unsafe { pg_sys::LockAcquire(&tag, pg_sys::RowExclusiveLock as _, false, false) };
    // Orders the lock (taken) before the second read; a starting LISTEN
    // counts itself, then looks for the lock's holders.
    fence(Ordering::SeqCst);
    let heard = count.load(Ordering::SeqCst) > 0;
    if heard {
        // A login that will be announced need not hold LISTENs up (nor,
        // prepared, hold them up for good): this acquisition goes, one
        // taken by a quiet login earlier in the transaction stays.
        // SAFETY: releases the acquisition just made, in the same mode.
        unsafe { pg_sys::LockRelease(&tag, pg_sys::RowExclusiveLock as _, false) };
    }
    heard
}

/// Before a `LISTEN session_auth` runs: counts this backend, then waits for
/// the quiet logins in flight (at the backend's first LISTEN, and at the
/// next one after a wait that ended in an error). Not where PostgreSQL
/// refuses the LISTEN anyway: on a standby, in a security-restricted
/// operation, in a process other than a client backend.
pub fn before_listen() {
    let Some(count) = crate::shmem::listeners() else {
        return;
    };
    // SAFETY: plain reads of the backend's state.
    let refused = unsafe {
        pg_sys::MyBackendType != pg_sys::BackendType::B_BACKEND
            || pg_sys::RecoveryInProgress()
            || pg_sys::InSecurityRestrictedOperation()
    };
    if refused {
        return;
    }
    if !COUNTED.get() {
        count_this_backend(count);
    }
    if !SYNCED.get() {
        wait_for_quiet_logins();
        SYNCED.set(true);
    }
}

fn count_this_backend(count: &'static AtomicU32) {
    // SAFETY: registered once per backend, with a function that only
    // touches an atomic.
    unsafe { pg_sys::before_shmem_exit(Some(uncount_this_backend), pg_sys::Datum::from(0)) };
    count.fetch_add(1, Ordering::SeqCst);
    COUNTED.set(true);
    // Orders the count before the lock table is read (`may_hear_a_login`
    // has the other half).
    fence(Ordering::SeqCst);
}

unsafe extern "C-unwind" fn uncount_this_backend(_code: std::ffi::c_int, _arg: pg_sys::Datum) {
    if let Some(count) = crate::shmem::listeners() {
        count.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits until every other transaction holding the quiet-login lock in this
/// database has ended (without taking the lock: as CREATE INDEX
/// CONCURRENTLY waits for writers). Cancellable, and subject to
/// `lock_timeout`, like any lock wait.
fn wait_for_quiet_logins() {
    // SAFETY: a lock tag of the default lock method, inside a transaction.
    unsafe { pg_sys::WaitForLockers(quiet_login_lock(), pg_sys::AccessExclusiveLock as _, false) };
}

/// The quiet-login lock of this database, as `SET_LOCKTAG_OBJECT` makes it
/// for `pg_extension` row 0, sub-object 1: `LockDatabaseObject`'s tag, for
/// an object that does not exist.
fn quiet_login_lock() -> pg_sys::LOCKTAG {
    pg_sys::LOCKTAG {
        // SAFETY: the backend's database, set before any statement runs.
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: pg_sys::ExtensionRelationId.to_u32(),
        locktag_field3: pg_sys::InvalidOid.to_u32(),
        locktag_field4: 1,
        locktag_type: pg_sys::LockTagType::LOCKTAG_OBJECT as u8,
        locktag_lockmethodid: pg_sys::DEFAULT_LOCKMETHOD as u8,
    }
}
