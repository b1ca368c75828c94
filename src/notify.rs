//! Announcing events on channel `session_auth` (docs/design.md, "Announcing
//! events"): the payload, the queue-room check, and the logins nobody could
//! hear.
//!
//! PostgreSQL serialises every commit that carries a NOTIFY (a cluster-wide
//! lock, held through the commit's WAL flush), so a login's `issued` NOTIFY
//! made logins wait in line even when nobody listened (issue 17: 0.44× a
//! bare INSERT with it, 0.73× without). A login therefore asks `listeners`
//! whether anyone may hear it and, when nobody can, queues nothing and holds
//! the payload back until its transaction ends: a `LISTEN session_auth`
//! later in the same transaction announces it after all (this module's
//! ProcessUtility hook), and such a transaction cannot be prepared (as one
//! that queued the NOTIFY could not).
//! Every other event is announced whoever listens: they are rare, and a
//! theft's announcement must not depend on a count being right.

use std::cell::RefCell;
use std::ffi::CStr;

use pgrx::prelude::*;
use pgrx::{pg_sys, IntoDatum};
use serde_json::json;

use crate::ids::SessionId;
use crate::listeners;

/// The channel every event is announced on.
pub const CHANNEL: &str = "session_auth";

/// Who an announcement is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    /// Queued whoever listens.
    Everyone,
    /// Queued only if some backend may be listening on `CHANNEL` (see
    /// `listeners`).
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
    if audience == Audience::Listeners && !listeners::may_hear_a_login() {
        hold_back(event_id, payload);
    } else {
        send_if_room(event_id, &payload);
    }
}

static mut PREVIOUS_HOOK: pg_sys::ProcessUtility_hook_type = None;

/// Installs the hook that sees every `LISTEN session_auth`; only while
/// preloading (installed in the postmaster, every backend has it).
pub fn install_listen_hook() {
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
        listeners::before_listen();
        announce_held_back();
    }
    let next = PREVIOUS_HOOK.unwrap_or(standard_ProcessUtility);
    // SAFETY: the arguments as PostgreSQL passed them, to the hook that was
    // installed before ours or to PostgreSQL's own implementation; an error
    // there crosses back into Rust as a panic, which pg_guard re-raises.
    unsafe {
        pg_sys::ffi::pg_guard_ffi_boundary(|| {
            next(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            )
        })
    }
}

unsafe extern "C-unwind" {
    /// PostgreSQL's own implementation, the raw symbol: a pointer of the
    /// hook's type (pgrx's binding is a guarded wrapper).
    fn standard_ProcessUtility(
        pstmt: *mut pg_sys::PlannedStmt,
        query_string: *const std::ffi::c_char,
        read_only_tree: bool,
        context: pg_sys::ProcessUtilityContext::Type,
        params: pg_sys::ParamListInfo,
        query_env: *mut pg_sys::QueryEnvironment,
        dest: *mut pg_sys::DestReceiver,
        qc: *mut pg_sys::QueryCompletion,
    );
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
        !name.is_null() && CStr::from_ptr(name).to_bytes() == CHANNEL.as_bytes()
    }
}

/// Announces the logins of the current transaction that nobody could hear
/// when they were made; called by a `LISTEN session_auth` (other
/// transactions' quiet logins it waits for: see `listeners`). A transaction
/// announces each payload once however often this runs: PostgreSQL drops a
/// NOTIFY that repeats one already queued by the same transaction.
fn announce_held_back() {
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

fn hold_back(event_id: i64, payload: String) {
    crate::xact::register_callbacks_once(
        &CALLBACKS_REGISTERED,
        Some(on_xact_event),
        Some(on_subxact_event),
    );
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

/// Any end of the transaction ends what it held back. A transaction that
/// holds a login back cannot be prepared: its NOTIFY would have refused
/// PREPARE, and a prepared quiet login would make every LISTEN wait for
/// it. Called from C in the middle of a commit or an abort: nothing but the
/// PREPARE refusal raises (`try_with`, no allocation).
#[pg_guard]
unsafe extern "C-unwind" fn on_xact_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    if event == XACT_EVENT_PRE_PREPARE && holds_logins_back() {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "cannot PREPARE a transaction that issued a session",
            "session_issue announces a login when its transaction commits, as a NOTIFY would."
        );
    }
    if crate::xact::ends_transaction(event) {
        let _ = UNANNOUNCED.try_with(|u| u.try_borrow_mut().map(|mut u| u.clear()));
    }
}

fn holds_logins_back() -> bool {
    UNANNOUNCED
        .try_with(|u| u.try_borrow().is_ok_and(|u| !u.is_empty()))
        .unwrap_or(false)
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
