//! Revoking sessions, recording security events and announcing them: one
//! place, used by the lifecycle (logout, logout everywhere, eviction, reuse
//! detection) and by the backstop that makes a reuse revocation stick.
//!
//! Every event row gets an `event_id`, and the NOTIFY on channel
//! `session_auth` names it, so a listener can confirm a payload with
//! `session_event(event_id)` before acting on it: PostgreSQL lets any role
//! that can connect send on any channel.

use pgrx::spi::SpiClient;
use pgrx::JsonB;
use serde_json::{json, Value};

use crate::clock::Micros;
use crate::ids::SessionId;
use crate::notify::{self, Audience};
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

    /// Who hears of it. A login is announced only if someone may listen
    /// (PostgreSQL makes every announcing commit wait in line); everything
    /// that ends a session is announced whoever listens.
    const fn audience(self) -> Audience {
        match self {
            Event::Issued => Audience::Listeners,
            _ => Audience::Everyone,
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

/// Announces a recorded event (its id from the event row's INSERT) on
/// channel `session_auth` (see `notify`).
pub fn notify(event: Event, event_id: i64, session_id: &SessionId, user_id: &str) {
    notify::announce(
        event.as_str(),
        event_id,
        session_id,
        user_id,
        event.audience(),
    );
}
