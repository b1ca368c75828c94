//! Removing what has expired: blacklist entries past `expires_at`, sessions
//! whose every token has expired by its stored deadline, revoked or not
//! (found by `purge_after`, a lower bound the batch moves up on sessions
//! still alive), events past `session_auth.event_retention`, and the retry
//! keys whose grace windows are all over (see `retry_key`).
//!
//! One batch removes at most `purge_batch_size` rows of each kind, with
//! `SKIP LOCKED` so it never waits for a row a refresh holds. The worker runs
//! batches in transactions of their own until one removes nothing;
//! `session_purge()` runs one batch in the caller's transaction.

use std::time::Instant;

use pgrx::spi::SpiClient;

use crate::clock::{statement_now, Micros};
use crate::gucs;
use crate::store;

/// Rows removed, per kind. (Erased retry keys are not counted: they are
/// bookkeeping, a handful per backend and minute.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub blacklist: u64,
    pub sessions: u64,
    pub events: u64,
    /// Sessions found due by `purge_after` but still alive, whose
    /// `purge_after` was moved up to their real deadline.
    pub sessions_deferred: u64,
}

impl Removed {
    pub fn total(&self) -> u64 {
        self.blacklist + self.sessions + self.events
    }

    /// Rows removed, and sessions whose `purge_after` was moved: what a
    /// caller of `session_purge()` loops on, since a batch that only moved
    /// sessions may have left expired ones behind them.
    pub fn done(&self) -> u64 {
        self.total() + self.sessions_deferred
    }

    pub fn add(&mut self, other: Removed) {
        self.blacklist += other.blacklist;
        self.sessions += other.sessions;
        self.events += other.events;
        self.sessions_deferred += other.sessions_deferred;
    }

    /// Whether a batch of `batch_size` came back short on every kind, so
    /// another batch would find nothing more to do.
    pub fn drained(&self, batch_size: u64) -> bool {
        self.blacklist < batch_size
            && self.sessions + self.sessions_deferred < batch_size
            && self.events < batch_size
    }
}

pub fn batch_size() -> i32 {
    gucs::PURGE_BATCH_SIZE.get()
}

/// One batch of each kind, at `now`.
pub fn batch(client: &mut SpiClient<'_>, now: Micros, batch_size: i32) -> Removed {
    let retention = gucs::event_retention_us();
    let expired = |client: &mut SpiClient<'_>, stmt, cutoff| {
        store::affected(client, stmt, &[store::ts(cutoff), batch_size.into()])
    };
    let blacklist = expired(client, &store::PURGE_BLACKLIST, now);
    let events = expired(client, &store::PURGE_EVENTS, now.saturating_sub(retention));
    crate::retry_keys::erase_expired_now(client, now);
    // Last: moving `purge_after` locks live sessions, which a refresh may
    // want, so those locks are held only until the batch commits, next.
    let (sessions, sessions_deferred) = store::run(
        client,
        &store::PURGE_SESSIONS,
        &[store::ts(now), batch_size.into()],
        |t| {
            store::first_row(t, |r| {
                let n = |i| u64::try_from(store::req::<i64>(r, i)).unwrap_or(0);
                (n(1), n(2))
            })
            .unwrap_or((0, 0))
        },
    );
    Removed {
        blacklist,
        sessions,
        events,
        sessions_deferred,
    }
}

/// Records a pass for `session_auth.stats`; skipped if another pass is
/// recording at this moment (nobody waits for the status row).
pub fn record(
    client: &mut SpiClient<'_>,
    source: &str,
    removed: Removed,
    batches: i32,
    started: Instant,
) {
    let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    store::run(
        client,
        &store::RECORD_PURGE,
        &[
            store::ts(statement_now()),
            source.into(),
            clamp(removed.blacklist).into(),
            clamp(removed.sessions).into(),
            clamp(removed.events).into(),
            batches.into(),
            started.elapsed().as_secs_f64().into(),
        ],
        |_| (),
    );
}
