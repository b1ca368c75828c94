//! The revocation backstop (rule 4 of docs/design.md): every detected reuse
//! ends in a revoked session with one `reuse_detected` event and one NOTIFY,
//! whatever the detecting caller does next.
//!
//! The detecting call revokes the session in its own transaction and, before
//! it returns, records the detection durably outside any transaction (see
//! `pending`). When that transaction ends (commit, rollback, PREPARE) or a
//! savepoint around the detection rolls back, it wakes an applier:
//!
//! * with the library preloaded, the purge worker: it applies the records of
//!   its own database itself and starts a short-lived backstop worker for
//!   each other database that has records (retrying every second while no
//!   worker slot is free);
//! * without preloading, the detecting backend starts that backstop worker
//!   itself, and `session_purge()` applies the records of its database too.
//!
//! Applying a record is one transaction that locks the session row with
//! `SKIP LOCKED`: a row that a caller's open or prepared transaction holds is
//! left for the next attempt, a second later, so nothing of ours ever waits
//! on a caller (or holds up a shutdown). A live row is revoked with its event
//! and NOTIFY; a revoked or vanished one needs nothing. Either way the record
//! is deleted once that transaction has committed. Records survive restarts
//! and crashes; see the README for the limits without preloading.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorkerBuilder, BgWorkerStartTime, DynamicBackgroundWorker};
use pgrx::prelude::*;

use crate::bgworker;
use crate::ids::SessionId;
use crate::pending::{self, Detection};
use crate::revocation::{self, Reuse};
use crate::store;

const LIBRARY: &str = "pg_session_auth";
const FUNCTION: &str = "pg_session_auth_backstop_main";
pub const BACKEND_TYPE: &str = "pg_session_auth backstop";

/// The purge worker announces itself, so detecting backends can wake it.
pub fn register_purge_worker() {
    if let Some(latch) = crate::shmem::purge_worker_latch() {
        // SAFETY: MyLatch is this process's latch in shared memory (PGPROC).
        latch.store(unsafe { pg_sys::MyLatch } as usize, Ordering::Release);
        // SAFETY: a callback that runs at process exit, registered once.
        unsafe { pg_sys::on_shmem_exit(Some(unregister_purge_worker), pg_sys::Datum::from(0)) };
    }
}

unsafe extern "C-unwind" fn unregister_purge_worker(_code: i32, _arg: pg_sys::Datum) {
    if let Some(latch) = crate::shmem::purge_worker_latch() {
        // SAFETY: as in register_purge_worker.
        let mine = unsafe { pg_sys::MyLatch } as usize;
        let _ = latch.compare_exchange(mine, 0, Ordering::AcqRel, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------
// The detecting backend.

thread_local! {
    /// The innermost (sub)transaction of the current transaction that
    /// detected a reuse; 0: none.
    static DETECTED_IN: Cell<pg_sys::SubTransactionId> = const { Cell::new(0) };
    static CALLBACKS_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Records a reuse the current transaction has just revoked, so that the
/// revocation happens even if this transaction does not commit.
pub fn detected(reuse: &Reuse) {
    let detection = Detection {
        // SAFETY: set for every backend connected to a database.
        database: unsafe { pg_sys::MyDatabaseId },
        session_id: reuse.session_id,
        detected_at: reuse.detected_at,
        presented_generation: reuse.presented_generation,
        current_generation: reuse.current_generation,
    };
    if let Err(e) = pending::record(&detection) {
        // The revocation in this transaction stands if it commits; only a
        // rollback could lose it now. Say so loudly rather than fail the call.
        ereport!(
            WARNING,
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            format!(
                "pg_session_auth: could not record the reuse detection of session {} outside this transaction: {e}",
                reuse.session_id
            ),
            "If this transaction rolls back, revoke the session by hand: SELECT session_revoke_id(...)."
        );
        return;
    }
    register_callbacks();
    // SAFETY: reads the current subtransaction's id.
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    DETECTED_IN.with(|d| d.set(d.get().max(subxact)));
}

fn register_callbacks() {
    crate::xact::register_callbacks_once(
        &CALLBACKS_REGISTERED,
        Some(on_xact_event),
        Some(on_subxact_event),
    );
}

/// PostgreSQL calls the callbacks from C, in the middle of a commit or an
/// abort: a panic must not unwind into it (that would abort the process,
/// and the postmaster would restart the server). Whatever goes wrong in one
/// is dropped; the records stay, and a later applier takes them.
fn in_callback(body: impl FnOnce()) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
}

unsafe extern "C-unwind" fn on_xact_event(
    event: pg_sys::XactEvent::Type,
    _: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    in_callback(|| {
        if crate::xact::ends_transaction(event)
            && DETECTED_IN.try_with(|d| d.replace(0)).unwrap_or(0) != 0
        {
            wake_applier();
        }
        match event {
            XACT_EVENT_COMMIT => records_made_sure_of_committed(),
            XACT_EVENT_ABORT | XACT_EVENT_PREPARE | XACT_EVENT_PARALLEL_ABORT => {
                // Not (or not yet) committed: the records stay for an applier.
                let _ = DONE_AT_COMMIT.try_with(|d| d.borrow_mut().clear());
            }
            _ => {}
        }
    });
}

/// `session_purge()`'s transaction committed: log its revocations and delete
/// its records, if that commit is durable already. After an asynchronous
/// commit (`synchronous_commit = off`) a crash could still undo the
/// revocations, so the records stay; the next applier finds the sessions
/// revoked, flushes, and deletes them.
fn records_made_sure_of_committed() {
    let done = DONE_AT_COMMIT
        .try_with(|d| std::mem::take(&mut *d.borrow_mut()))
        .unwrap_or_default();
    // SAFETY: reads a setting of this backend.
    let durable = unsafe { pg_sys::synchronous_commit }
        >= pg_sys::SyncCommitLevel::SYNCHRONOUS_COMMIT_LOCAL_FLUSH as i32;
    for (path, revoked) in done {
        if let Some(session_id) = revoked {
            log!("pg_session_auth: session_purge() revoked session {session_id} for refresh-token reuse the detecting transaction did not commit");
        }
        if durable {
            pending::done(&path);
        }
    }
}

unsafe extern "C-unwind" fn on_subxact_event(
    event: pg_sys::SubXactEvent::Type,
    aborted: pg_sys::SubTransactionId,
    _: pg_sys::SubTransactionId,
    _: *mut std::ffi::c_void,
) {
    if event != pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        return;
    }
    in_callback(|| {
        // What a session_purge() under it made sure of may be undone: keep
        // those records for an applier.
        let _ = DONE_AT_COMMIT.try_with(|d| d.borrow_mut().clear());
        // A savepoint rolled back: a detection under it is undone, while
        // the transaction goes on. Subtransaction ids grow, and the only
        // subtransactions with an id at most a detection's that can still
        // abort are the one that detected and those around it: exactly the
        // aborts that undo it. (ORMs roll back many savepoints; the others
        // start nothing.)
        let detected_in = DETECTED_IN.try_with(Cell::get).unwrap_or(0);
        if detected_in != 0 && aborted <= detected_in {
            wake_applier();
        }
    });
}

/// Called from transaction callbacks: must not raise. Starts a backstop for
/// this database at once (whatever the purge worker is busy with), and wakes
/// the purge worker, which tries again every second while records are left
/// (a caller still holding the row, no free worker slot). Without
/// preloading, the backend's own later calls retry (`retry_pending`).
fn wake_applier() {
    if let Some(latch) = crate::shmem::purge_worker_latch() {
        let latch = latch.load(Ordering::Acquire) as *mut pg_sys::Latch;
        if !latch.is_null() {
            // SAFETY: a latch in shared memory; SetLatch never raises.
            unsafe { pg_sys::SetLatch(latch) };
        }
    }
    // SAFETY: as in `detected`.
    let database = unsafe { pg_sys::MyDatabaseId };
    let _ = std::panic::catch_unwind(|| launch(database));
}

thread_local! {
    /// When this backend may next retry, and the delay after that.
    static NEXT_RETRY: Cell<(Option<Instant>, Duration)> =
        const { Cell::new((None, RETRY_FIRST)) };
}

const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_LAST: Duration = Duration::from_secs(30);

/// Without a purge worker, nothing else retries a record whose row a caller
/// held (a prepared transaction, say): every writing call does, by starting
/// a backstop if its database has records. At most once a second per
/// backend, backing off to once every 30 s while records stay, so that
/// many backends and a long-held row do not fill the worker slots.
pub fn retry_pending() {
    if crate::shmem::purge_worker_latch().is_some() {
        return; // the purge worker retries
    }
    let (next, delay) = NEXT_RETRY.with(Cell::get);
    if next.is_some_and(|t| Instant::now() < t) {
        return;
    }
    // SAFETY: as in `detected`.
    let database = unsafe { pg_sys::MyDatabaseId };
    if pending::of_database(database).is_empty() {
        NEXT_RETRY.with(|r| r.set((Some(Instant::now() + RETRY_FIRST), RETRY_FIRST)));
        return;
    }
    NEXT_RETRY.with(|r| r.set((Some(Instant::now() + delay), (delay * 2).min(RETRY_LAST))));
    launch(database);
}

// ---------------------------------------------------------------------------
// Applying the records.

/// Applies the pending records of the current database, each in a
/// transaction of its own. Returns (made sure of, left for later).
pub fn apply_pending() -> (usize, usize) {
    // SAFETY: set for every backend connected to a database.
    let database = unsafe { pg_sys::MyDatabaseId };
    let mut done = 0;
    let mut left = 0;
    for (path, detection) in pending::of_database(database) {
        match bgworker::in_transaction(|| {
            // Nothing of ours waits long on anyone: a DBA's table lock too.
            Spi::run("SET LOCAL lock_timeout = '1s'").ok();
            try_revoke(&detection)
        }) {
            Ok(Outcome::Held) => left += 1,
            Ok(outcome) => {
                // Committed and flushed: the workers commit synchronously
                // (`bgworker`), and both outcomes locked the session row,
                // so the transaction had an id and a commit record that
                // comes after the detecting transaction's, if that one
                // revoked the session (asynchronously, perhaps). The
                // record can go.
                if matches!(outcome, Outcome::Revoked) {
                    log!(
                        "pg_session_auth: revoked session {} for refresh-token reuse the detecting transaction did not commit",
                        detection.session_id
                    );
                }
                pending::done(&path);
                done += 1;
            }
            Err(e) => {
                log!(
                    "pg_session_auth backstop: session {}: {e}; trying again",
                    detection.session_id
                );
                left += 1;
            }
        }
    }
    (done, left)
}

/// Applies the records of the current database in the caller's transaction
/// (`session_purge()`, the backstop's work where no worker serves): revokes
/// what it can; when, and only if, this transaction commits, the revocations
/// are logged and the records deleted (see `records_made_sure_of_committed`).
pub fn apply_pending_in_caller() {
    // SAFETY: as above.
    let database = unsafe { pg_sys::MyDatabaseId };
    for (path, detection) in pending::of_database(database) {
        let revoked = match try_revoke(&detection) {
            Outcome::Held => continue,
            Outcome::Revoked => Some(detection.session_id),
            Outcome::AlreadyDone => None,
        };
        register_callbacks();
        DONE_AT_COMMIT.with(|d| d.borrow_mut().push((path, revoked)));
    }
}

thread_local! {
    /// Records this transaction made sure of (with the session, if it
    /// revoked it): deleted when it commits.
    static DONE_AT_COMMIT: RefCell<Vec<(PathBuf, Option<SessionId>)>> =
        const { RefCell::new(Vec::new()) };
}

enum Outcome {
    Revoked,
    AlreadyDone,
    Held,
}

fn try_revoke(d: &Detection) -> Outcome {
    store::connect(|client| {
        let state: Option<bool> = store::run(
            client,
            &store::LOCK_SESSION_NOWAIT,
            &[store::uuid(&d.session_id)],
            |t| store::first_row(t, |r| store::req(r, 1)),
        );
        match state {
            Some(true) => Outcome::AlreadyDone,
            Some(false) => {
                let reuse = Reuse {
                    session_id: d.session_id,
                    detected_at: d.detected_at,
                    presented_generation: d.presented_generation,
                    current_generation: d.current_generation,
                };
                // Revoked now, not back-dated to the detection: rotations
                // may have happened since, and the record says when each
                // thing happened. "Now" is once the tables are locked, so a
                // wait on a DBA's lock does not date it before it took effect.
                store::run(client, &store::LOCK_REVOCATION_TABLES, &[], |_| ());
                if revocation::revoke_for_reuse(client, &reuse, crate::clock::wall_now()) {
                    Outcome::Revoked
                } else {
                    Outcome::AlreadyDone
                }
            }
            None => {
                let exists: bool = store::run(
                    client,
                    &store::SESSION_EXISTS,
                    &[store::uuid(&d.session_id)],
                    |t| store::first_row(t, |r| store::req(r, 1)),
                )
                .unwrap_or(false);
                if exists {
                    Outcome::Held
                } else {
                    Outcome::AlreadyDone
                }
            }
        }
    })
}

// ---------------------------------------------------------------------------
// The backstop worker: one pass over one database's records.

/// Starts a backstop worker for `database`; `None` if no worker slot is free.
pub fn launch(database: pg_sys::Oid) -> Option<DynamicBackgroundWorker> {
    BackgroundWorkerBuilder::new("pg_session_auth revocation backstop")
        .set_type(BACKEND_TYPE)
        .set_library(LIBRARY)
        .set_function(FUNCTION)
        .set_argument(database.into_datum())
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .load_dynamic()
        .ok()
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_session_auth_backstop_main(arg: pg_sys::Datum) {
    bgworker::setup_signals();
    // SAFETY: the argument was set from an Oid datum by `launch`.
    let Some(database) = (unsafe { pg_sys::Oid::from_datum(arg, false) }) else {
        return;
    };
    pgrx::bgworkers::BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    if let Err(e) = bgworker::pin_session_settings() {
        log!("pg_session_auth backstop: {e}");
        return;
    }
    match bgworker::in_transaction(crate::extension::sql_version) {
        Ok(Some(v)) if v == crate::extension::LIBRARY_VERSION => {
            apply_pending();
        }
        // Not updated yet: the purge worker starts another backstop a second
        // later; the records wait.
        Ok(Some(_)) | Err(_) => {}
        // The extension was dropped: its sessions are gone, and so is what
        // the records were for.
        Ok(None) => {
            for (path, _) in pending::of_database(database) {
                pending::done(&path);
            }
        }
    }
}
