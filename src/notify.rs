//! Announcing events on channel `session_auth` (docs/design.md, "Announcing
//! events"): the payload, the queue-room check, and the logins nobody could
//! hear.
//!
//! PostgreSQL serialises every commit that carries a NOTIFY (a cluster-wide
//! lock, held through the commit's WAL flush), so a login's `issued` NOTIFY
//! made logins wait in line even when nobody listened (issue 17: 0.44× a
//! bare INSERT with it, 0.73× without). A login therefore asks
//! `someone_may_listen()` and, when nobody can, queues nothing and remembers
//! the payload until its transaction ends: a `LISTEN session_auth` later in
//! the same transaction announces it after all (see `listeners`).
//! Revocations and reuse detection are announced whoever listens: they are
//! rare, and a theft's announcement must not depend on a count being right.

use std::cell::RefCell;
use std::sync::atomic::{fence, Ordering};

use pgrx::{pg_sys, IntoDatum};
use serde_json::json;

use crate::ids::SessionId;

/// The channel every event is announced on.
pub const CHANNEL: &str = "session_auth";

/// Who an announcement is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    /// Queued whoever listens.
    Everyone,
    /// Queued only if some backend may be listening on `CHANNEL`; must be
    /// called after the event row's INSERT (its lock is what a starting
    /// LISTEN waits for: see `listeners`).
    Listeners,
}

/// `NOTIFY session_auth` with `{"event", "event_id", "session_id",
/// "user_id"}`, delivered when the transaction commits. `user_id` is at most
/// 256 bytes (escaped JSON: at most 6 × 256), so the payload stays far below
/// PostgreSQL's 8000-byte limit.
pub fn announce(
    event: &str,
    event_id: i64,
    session_id: &SessionId,
    user_id: &str,
    audience: Audience,
) {
    let payload = json!({
        "event": event,
        "event_id": event_id,
        "session_id": session_id.to_string(),
        "user_id": user_id,
    })
    .to_string();
    if audience == Audience::Listeners && !someone_may_listen() {
        remember_unannounced(event_id, payload);
    } else {
        send_if_room(event_id, &payload);
    }
}

/// Whether a backend may be listening on `CHANNEL`: always without the
/// count (the library not preloaded).
fn someone_may_listen() -> bool {
    let Some(listeners) = crate::shmem::listeners() else {
        return true;
    };
    // Orders the event row's lock (taken before) before this read; a
    // starting LISTEN counts itself, then looks for that lock.
    fence(Ordering::SeqCst);
    listeners.load(Ordering::Relaxed) > 0
}

/// Announces the logins of the current transaction that nobody could hear
/// when they were made; called by a `LISTEN session_auth`. A transaction
/// announces each payload once however often this runs: PostgreSQL drops a
/// NOTIFY that repeats one already queued by the same transaction.
pub fn announce_unannounced() {
    UNANNOUNCED.with(|u| {
        for entry in u.borrow().iter() {
            send_if_room(entry.event_id, &entry.payload);
        }
    });
}

/// A payload held back, with the subtransaction that recorded its event
/// (the event is gone if that one rolls back).
struct Unannounced {
    event_id: i64,
    payload: String,
    subxact: pg_sys::SubTransactionId,
}

thread_local! {
    static UNANNOUNCED: RefCell<Vec<Unannounced>> = const { RefCell::new(Vec::new()) };
    static CALLBACKS_REGISTERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn remember_unannounced(event_id: i64, payload: String) {
    register_callbacks();
    // SAFETY: reads the current subtransaction's id.
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    UNANNOUNCED.with(|u| {
        u.borrow_mut().push(Unannounced {
            event_id,
            payload,
            subxact,
        })
    });
}

fn register_callbacks() {
    if CALLBACKS_REGISTERED.with(std::cell::Cell::get) {
        return;
    }
    // SAFETY: registered once per backend; the callbacks live as long as it.
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact_event), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact_event), std::ptr::null_mut());
    }
    CALLBACKS_REGISTERED.with(|c| c.set(true));
}

/// Any end of the transaction ends what it held back. Called from C in the
/// middle of a commit or an abort: nothing here can panic (`try_with`, no
/// allocation).
unsafe extern "C-unwind" fn on_xact_event(
    event: pg_sys::XactEvent::Type,
    _: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    if matches!(
        event,
        XACT_EVENT_COMMIT
            | XACT_EVENT_ABORT
            | XACT_EVENT_PREPARE
            | XACT_EVENT_PARALLEL_COMMIT
            | XACT_EVENT_PARALLEL_ABORT
    ) {
        let _ = UNANNOUNCED.try_with(|u| u.try_borrow_mut().map(|mut u| u.clear()));
    }
}

/// A rolled-back subtransaction takes its events with it, and those of the
/// subtransactions it started (their ids are higher).
unsafe extern "C-unwind" fn on_subxact_event(
    event: pg_sys::SubXactEvent::Type,
    subxact: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        let _ = UNANNOUNCED.try_with(|u| {
            u.try_borrow_mut()
                .map(|mut u| u.retain(|entry| entry.subxact < subxact))
        });
    }
}

/// A hint, never a condition: while the cluster's notification queue is half
/// full or more (any role that can connect can fill it), nothing is queued,
/// and the event row, which the transaction records anyway, is the only
/// trace (the server log says so, at most once a minute per backend).
fn send_if_room(event_id: i64, payload: &str) {
    if notify_queue_has_room() {
        send_notify(CHANNEL, payload);
    } else {
        log_skipped_notify(event_id);
    }
}

/// Whether the cluster's notification queue is less than half full: every
/// role that can connect can fill it, and a full queue fails the committing
/// transaction (54000), so a login, a logout or a theft revocation must never
/// depend on it. Asked on every call, never remembered: on PostgreSQL 17 and
/// later a DBA may make the queue small enough to fill in a moment
/// (`max_notify_queue_pages`). Asking also advances the queue's tail, which
/// a listener that has gone away may have left behind.
///
/// PostgreSQL's own functions, called directly (as SQL's
/// `pg_notification_queue_usage()` and `pg_notify()` would call them):
/// nothing is looked up by name, and no statement is planned or run for
/// what is two function calls (issue 17: the write path).
fn notify_queue_has_room() -> bool {
    // SAFETY: a built-in function of no arguments, called as fmgr would.
    let usage =
        unsafe { pgrx::direct_function_call::<f64>(pg_sys::pg_notification_queue_usage, &[]) };
    usage.is_some_and(|u| u < 0.5)
}

/// `pg_notify(channel, payload)`: queued with the transaction, sent when it
/// commits; PostgreSQL refuses it on a standby, as the statement would.
fn send_notify(channel: &str, payload: &str) {
    // SAFETY: a built-in function of two text arguments, called as fmgr
    // would; the datums live in the current memory context until it ends.
    unsafe {
        pgrx::fcinfo::direct_function_call_as_datum(
            pg_sys::pg_notify,
            &[channel.into_datum(), payload.into_datum()],
        );
    }
}

fn log_skipped_notify(event_id: i64) {
    thread_local! {
        static LAST: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
    }
    let due = LAST.with(|l| {
        l.get()
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60))
    });
    if due {
        LAST.with(|l| l.set(Some(std::time::Instant::now())));
        pgrx::log!(
            "pg_session_auth: the NOTIFY queue is half full or more; events are recorded but not announced \
             (event {event_id}, and any others in the next minute): see pg_notification_queue_usage()"
        );
    }
}
