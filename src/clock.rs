//! Time: the statement's clock and the effective deadlines of a session.
//!
//! Times are PostgreSQL `TimestampTz` values (microseconds since 2000-01-01)
//! so the arithmetic is plain integer arithmetic.
//!
//! A deadline is stored when a token is issued or refreshed, from the
//! settings of the calling database session. A check also applies the
//! caller's current settings to the deadline's anchor and takes the earlier
//! of the two, so a DBA who tightens a timeout tightens it for existing
//! sessions at once, while loosening it never extends a stored deadline.

use pgrx::datum::datetime_support;
use pgrx::datum::TimestampWithTimeZone;

pub type Micros = i64;

/// One second.
pub const SECOND: Micros = datetime_support::USECS_PER_SEC;

/// The start of the current top-level statement (`statement_timestamp()`),
/// so a long transaction cannot stretch a deadline.
pub fn statement_now() -> Micros {
    datetime_support::statement_timestamp().into_inner()
}

/// The wall clock now (`clock_timestamp()`), for a time that must follow
/// something the statement waited for.
pub fn wall_now() -> Micros {
    datetime_support::clock_timestamp().into_inner()
}

/// PostgreSQL's epoch (2000-01-01) in Unix time.
const UNIX_TO_POSTGRES_EPOCH: Micros = 946_684_800 * SECOND;

/// A time as Unix milliseconds (0 before 1970, which no issue time is).
pub fn unix_millis(t: Micros) -> u64 {
    u64::try_from(t.saturating_add(UNIX_TO_POSTGRES_EPOCH) / 1000).unwrap_or(0)
}

/// Unix milliseconds as a time.
pub fn from_unix_millis(ms: u64) -> Micros {
    i64::try_from(ms)
        .unwrap_or(i64::MAX)
        .saturating_mul(1000)
        .saturating_sub(UNIX_TO_POSTGRES_EPOCH)
}

/// A time as the SQL value a function returns.
pub fn to_timestamptz(us: Micros) -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(us)
        .unwrap_or_else(|e| crate::error::internal("timestamp out of range", e))
}

/// A time as ISO 8601 text (in the server's time zone), for event details.
pub fn iso8601(t: Micros) -> String {
    use pgrx::datum::datetime_support::ToIsoString;
    to_timestamptz(t).to_iso_string()
}

/// The settings that bound a session's life, in microseconds.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub access_ttl: Micros,
    pub idle_timeout: Micros,
    pub absolute_timeout: Micros,
    pub refresh_grace: Micros,
}

impl Policy {
    /// The caller's current settings.
    pub fn current() -> Self {
        use crate::gucs;
        Policy {
            access_ttl: gucs::access_ttl_us(),
            idle_timeout: gucs::idle_timeout_us(),
            absolute_timeout: gucs::absolute_timeout_us(),
            refresh_grace: gucs::refresh_grace_us(),
        }
    }
}

/// What is stored on a session row about its life.
#[derive(Clone, Copy, Debug)]
pub struct Stored {
    pub created_at: Micros,
    /// Also when the current pair (its access token) was issued: every
    /// pair is made by the issue or the rotation that sets this.
    pub last_refreshed_at: Micros,
    pub refresh_expires_at: Micros,
    pub absolute_expires_at: Micros,
    pub access_expires_at: Micros,
}

/// Deadlines with the caller's current settings applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effective {
    /// When the session ends if it is not refreshed: idle or absolute.
    pub session: Micros,
    /// When the absolute timeout ends the session whatever happens.
    pub absolute: Micros,
    /// When the current access token stops validating.
    pub access: Micros,
}

impl Effective {
    pub fn of(stored: &Stored, policy: &Policy) -> Self {
        let idle = stored
            .refresh_expires_at
            .min(stored.last_refreshed_at.saturating_add(policy.idle_timeout));
        let absolute = stored
            .absolute_expires_at
            .min(stored.created_at.saturating_add(policy.absolute_timeout));
        let session = idle.min(absolute);
        let access = stored
            .access_expires_at
            .min(stored.last_refreshed_at.saturating_add(policy.access_ttl))
            .min(session);
        Effective {
            session,
            absolute,
            access,
        }
    }
}

/// Stored deadlines for a pair issued now: the refresh token slides by the
/// idle timeout but never past the absolute deadline, and the access token
/// never outlives the refresh token (an idle timeout shorter than
/// `access_ttl` ends the session, and its access, first). So the deadlines a
/// call returns are the ones every later check enforces (`Effective::of`
/// caps the access deadline by the session's the same way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewPair {
    pub access_expires_at: Micros,
    pub refresh_expires_at: Micros,
}

impl NewPair {
    pub fn at(now: Micros, absolute_deadline: Micros, policy: &Policy) -> Self {
        let refresh_expires_at = now
            .saturating_add(policy.idle_timeout)
            .min(absolute_deadline);
        NewPair {
            access_expires_at: now
                .saturating_add(policy.access_ttl)
                .min(refresh_expires_at),
            refresh_expires_at,
        }
    }
}

/// The contract's default settings, for unit tests of the rules (the
/// settings themselves are defined in `gucs`).
#[cfg(test)]
pub fn default_policy() -> Policy {
    const MIN: Micros = 60 * SECOND;
    Policy {
        access_ttl: 15 * MIN,
        idle_timeout: 30 * MIN,
        absolute_timeout: 12 * 60 * MIN,
        refresh_grace: 10 * SECOND,
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn unix_millis_round_trip_from_the_postgres_epoch() {
        assert_eq!(unix_millis(0), 946_684_800_000, "2000-01-01");
        assert_eq!(from_unix_millis(946_684_800_123), 123_000);
        let t = 849_312_000 * SECOND + 456_000;
        assert_eq!(from_unix_millis(unix_millis(t)), t);
        assert_eq!(
            unix_millis(-UNIX_TO_POSTGRES_EPOCH - SECOND),
            0,
            "before 1970"
        );
    }

    const MIN: Micros = 60 * SECOND;

    fn policy() -> Policy {
        default_policy()
    }

    fn issued_at(t: Micros) -> Stored {
        let p = policy();
        let pair = NewPair::at(t, t + p.absolute_timeout, &p);
        Stored {
            created_at: t,
            last_refreshed_at: t,
            refresh_expires_at: pair.refresh_expires_at,
            absolute_expires_at: t + p.absolute_timeout,
            access_expires_at: pair.access_expires_at,
        }
    }

    #[test]
    fn stored_deadlines_apply_under_unchanged_settings() {
        let e = Effective::of(&issued_at(0), &policy());
        assert_eq!(e.access, 15 * MIN);
        assert_eq!(e.session, 30 * MIN);
        assert_eq!(e.absolute, 12 * 60 * MIN);
    }

    #[test]
    fn tightened_settings_shorten_existing_sessions() {
        let mut tight = policy();
        tight.idle_timeout = 5 * MIN;
        tight.access_ttl = MIN;
        let e = Effective::of(&issued_at(0), &tight);
        assert_eq!(e.session, 5 * MIN);
        assert_eq!(e.access, MIN);
        tight.absolute_timeout = 2 * MIN;
        let e = Effective::of(&issued_at(0), &tight);
        assert_eq!(e.session, 2 * MIN);
        assert_eq!(e.absolute, 2 * MIN);
    }

    #[test]
    fn loosened_settings_never_extend_stored_deadlines() {
        let mut loose = policy();
        loose.idle_timeout = 600 * MIN;
        loose.access_ttl = 600 * MIN;
        loose.absolute_timeout = 6000 * MIN;
        let e = Effective::of(&issued_at(0), &loose);
        assert_eq!(e, Effective::of(&issued_at(0), &policy()));
    }

    #[test]
    fn new_pairs_never_outlive_the_absolute_deadline() {
        let pair = NewPair::at(100 * MIN, 110 * MIN, &policy());
        assert_eq!(pair.refresh_expires_at, 110 * MIN);
        assert_eq!(pair.access_expires_at, 110 * MIN);
        let pair = NewPair::at(0, 1000 * MIN, &policy());
        assert_eq!(pair.refresh_expires_at, 30 * MIN);
        assert_eq!(pair.access_expires_at, 15 * MIN);
    }

    #[test]
    fn new_access_deadlines_never_outlive_the_idle_deadline() {
        let mut p = policy();
        p.access_ttl = 60 * MIN;
        p.idle_timeout = 2 * SECOND;
        let pair = NewPair::at(100 * MIN, 1000 * MIN, &p);
        assert_eq!(pair.refresh_expires_at, 100 * MIN + 2 * SECOND);
        assert_eq!(pair.access_expires_at, pair.refresh_expires_at);
        let stored = Stored {
            created_at: 100 * MIN,
            last_refreshed_at: 100 * MIN,
            refresh_expires_at: pair.refresh_expires_at,
            absolute_expires_at: 1000 * MIN,
            access_expires_at: pair.access_expires_at,
        };
        assert_eq!(
            Effective::of(&stored, &p).access,
            pair.access_expires_at,
            "what the call returns is what a check enforces"
        );
    }
}
