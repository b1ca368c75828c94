//! Revoking sessions, recording security events and announcing them: one
//! place, used by the lifecycle (logout, logout everywhere, eviction, reuse
//! detection) and by the backstop that makes a reuse revocation stick.
//!
//! Every event row gets an `event_id`, and the NOTIFY on channel
//! `session_auth` names it, so a listener can confirm a payload with
//! `session_event(event_id)` before acting on it: PostgreSQL lets any role
//! that can connect send on any channel.

use pgrx::spi::SpiClient;
use pgrx::{IntoDatum, JsonB};
use serde_json::{json, Value};

use crate::clock::Micros;
use crate::ids::SessionId;
use crate::store;

/// The events of `session_auth.events` (its CHECK constraint lists the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Issued,
    ReuseDetected,
    Revoked,
    RevokedUser,
    Reauthenticated,
    Evicted,
}

impl Event {
    pub const fn as_str(self) -> &'static str {
        match self {
            Event::Issued => "issued",
            Event::ReuseDetected => "reuse_detected",
            Event::Revoked => "revoked",
            Event::RevokedUser => "revoked_user",
            Event::Reauthenticated => "reauthenticated",
            Event::Evicted => "evicted",
        }
    }
}

/// A reuse detection: which session, when, and which generation came back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reuse {
    pub session_id: SessionId,
    pub detected_at: Micros,
    pub presented_generation: i32,
    pub current_generation: i32,
}

/// Revokes a session for reuse at `now` with its event and NOTIFY, if it is
/// still live; whether it did. The details say which generation came back
/// and when the reuse was detected (the backstop revokes later than that).
pub fn revoke_for_reuse(client: &mut SpiClient<'_>, reuse: &Reuse, now: Micros) -> bool {
    let mut details = json!({
        "presented_generation": reuse.presented_generation,
        "current_generation": reuse.current_generation,
    });
    if now != reuse.detected_at {
        details["detected_at"] = json!(crate::clock::iso8601(reuse.detected_at));
    }
    revoke(
        client,
        &[reuse.session_id],
        now,
        Event::ReuseDetected,
        details,
    ) == 1
}

/// Revokes the given live sessions, blacklists their current pairs, records
/// one event each and announces each. Returns how many it revoked; a
/// session already revoked gets nothing (so an event is recorded once).
pub fn revoke(
    client: &mut SpiClient<'_>,
    ids: &[SessionId],
    now: Micros,
    event: Event,
    details: Value,
) -> usize {
    if ids.is_empty() {
        return 0;
    }
    let uuids: Vec<pgrx::Uuid> = ids.iter().map(|id| pgrx::Uuid::from(*id)).collect();
    let revoked: Vec<(pgrx::Uuid, String, i64)> = store::run(
        client,
        &store::REVOKE,
        &[
            uuids.into(),
            store::ts(now),
            event.as_str().into(),
            JsonB(details).into(),
        ],
        |t| {
            t.map(|r| (store::req(&r, 1), store::req(&r, 2), store::req(&r, 3)))
                .collect()
        },
    );
    for (id, user_id, event_id) in &revoked {
        notify(event, *event_id, &SessionId::from(*id), user_id);
    }
    revoked.len()
}

/// Records an event that revokes nothing (`issued`, `reauthenticated`) and
/// returns its id.
pub fn record(
    client: &mut SpiClient<'_>,
    event: Event,
    at: Micros,
    session_id: &SessionId,
    user_id: &str,
    details: Value,
) -> i64 {
    store::run(
        client,
        &store::INSERT_EVENT,
        &[
            event.as_str().into(),
            store::ts(at),
            store::uuid(session_id),
            user_id.into(),
            JsonB(details).into(),
        ],
        |t| store::first_row(t, |r| store::req(r, 1)),
    )
    .unwrap_or_else(|| crate::error::internal("recording an event", "INSERT returned no row"))
}

/// `NOTIFY session_auth` with `{"event", "event_id", "session_id",
/// "user_id"}`, delivered when the transaction commits. `user_id` is at most
/// 256 bytes (escaped JSON: at most 6 × 256), so the payload stays far below
/// PostgreSQL's 8000-byte limit.
///
/// A hint, never a condition: while the cluster's notification queue is half
/// full or more (any role that can connect can fill it), it is not sent, and
/// the event row, which the transaction records anyway, is the only trace
/// (the server log says so, at most once a minute per backend).
pub fn notify(event: Event, event_id: i64, session_id: &SessionId, user_id: &str) {
    let payload = json!({
        "event": event.as_str(),
        "event_id": event_id,
        "session_id": session_id.to_string(),
        "user_id": user_id,
    });
    if notify_queue_has_room() {
        send_notify(CHANNEL, &payload.to_string());
    } else {
        log_skipped_notify(event_id);
    }
}

/// The channel every event is announced on.
const CHANNEL: &str = "session_auth";

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
    let usage = unsafe {
        pgrx::direct_function_call::<f64>(pgrx::pg_sys::pg_notification_queue_usage, &[])
    };
    usage.is_some_and(|u| u < 0.5)
}

/// `pg_notify(channel, payload)`: queued with the transaction, sent when it
/// commits; PostgreSQL refuses it on a standby, as the statement would.
fn send_notify(channel: &str, payload: &str) {
    // SAFETY: a built-in function of two text arguments, called as fmgr
    // would; the datums live in the current memory context until it ends.
    unsafe {
        pgrx::fcinfo::direct_function_call_as_datum(
            pgrx::pg_sys::pg_notify,
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
