//! Hot standbys: `not_replayed` (rule 8 of docs/design.md).
//!
//! A standby knows only what it has replayed. An access token that matches
//! nothing it has is either one the primary issued or rotated since (the
//! standby must not answer `invalid`: that would log a user out for the
//! length of the replay lag) or one that was never issued. The token says
//! which it could be:
//!
//! * its session's row is there: the token claims the pair's generation;
//!   a generation above the row's is a rotation the standby has not
//!   replayed, and one at or below it is a secret that matches nothing the
//!   primary issued for it (`invalid`, as on the primary);
//! * the row is not there: the session id carries its time of issue; a
//!   session issued after (or shortly before) the last transaction the
//!   caller's snapshot has of the replay may be in what it has not replayed
//!   yet (and before any replayed commit, nothing tells how far behind the
//!   standby is: any dated id may be).
//!
//! Neither needs the secret to be right, so the answer says nothing about a
//! guessed secret: it depends only on the session id and the generation the
//! token claims, which its holder knows anyway. What it does tell the holder
//! of a session's id is how many times that session has been refreshed, and
//! whether the standby has it revoked (docs/security.md). On a primary none of this runs: `not_replayed` never
//! appears there.

use pgrx::pg_sys;

use crate::clock::{self, Micros, SECOND};
use crate::lineage::Status;
use crate::session_row::SessionRow;
use crate::token::Parsed;

/// How long before the last replayed commit a session may have been issued
/// and still be missing: the id is dated when `session_issue` runs, and the
/// issuing transaction commits later. A transaction that stays open longer
/// after issuing than this hands out a token that a standby calls `invalid`
/// until it replays the commit. Erring long costs nothing: a token that only
/// looks recent answers `not_replayed`, and the primary then says `invalid`.
const ISSUE_TO_COMMIT: Micros = 300 * SECOND;

/// How far after the standby's clock an id may be dated and still be taken
/// for a real one (the primary's clock may run ahead); anything later was
/// made up.
const CLOCK_SKEW: Micros = 300 * SECOND;

/// Whether this server is a standby (in recovery). Cheap: a flag in shared
/// memory once read.
pub fn in_recovery() -> bool {
    // SAFETY: callable in any backend; reads shared state under its lock.
    unsafe { pg_sys::RecoveryInProgress() }
}

/// Where the standby's replay stands, as the caller's snapshot sees it.
#[derive(Clone, Copy, Debug)]
pub struct Position {
    /// The commit time of the last transaction replayed, by the primary's
    /// clock (`pg_last_xact_replay_timestamp()`); `None` if none since the
    /// standby started (then nothing tells how far it is).
    pub replayed_until: Option<Micros>,
    /// When the caller's snapshot was taken: the statement's start, or the
    /// transaction's under REPEATABLE READ and SERIALIZABLE. A row replayed
    /// after it is not in the snapshot, however far replay has gone since.
    pub snapshot_at: Micros,
    /// The standby's clock.
    pub now: Micros,
}

impl Position {
    pub fn current() -> Self {
        // SAFETY: reads the recovery state's latest commit time under its
        // spinlock; 0 until a commit is replayed. XactIsoLevel is this
        // backend's; the transaction start time is set for every statement.
        let (latest, whole_transaction, transaction_start) = unsafe {
            (
                pg_sys::GetLatestXTime(),
                pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32,
                pg_sys::GetCurrentTransactionStartTimestamp(),
            )
        };
        Position {
            replayed_until: (latest != 0).then_some(latest),
            snapshot_at: if whole_transaction {
                transaction_start
            } else {
                clock::statement_now()
            },
            now: clock::wall_now(),
        }
    }

    /// The time after which a session may be missing from the snapshot:
    /// the last replayed commit it can see; `None` when nothing tells.
    fn seen_until(&self) -> Option<Micros> {
        self.replayed_until.map(|r| r.min(self.snapshot_at))
    }
}

/// What the standby has of the session a token names.
pub enum Found<'a> {
    Row(&'a SessionRow),
    Nothing,
}

/// The answer for an access token that matches nothing the standby has:
/// `NotReplayed` if the primary may have issued it since, else `Invalid`.
pub fn unmatched(parsed: &Parsed, found: Found<'_>, at: Position) -> Status {
    let maybe_newer = match found {
        // A revocation is final: once it is replayed, no later rotation
        // exists to wait for.
        Found::Row(row) => {
            row.revoked_at.is_none() && parsed.generation.is_some_and(|g| g > row.generation)
        }
        Found::Nothing => parsed
            .session
            .issued_unix_ms()
            .map(clock::from_unix_millis)
            .is_some_and(|issued| {
                issued <= at.now.saturating_add(CLOCK_SKEW)
                    && at
                        .seen_until()
                        .is_none_or(|seen| issued > seen.saturating_sub(ISSUE_TO_COMMIT))
            }),
    };
    if maybe_newer {
        Status::NotReplayed
    } else {
        Status::Invalid
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use crate::ids::SessionId;
    use crate::token::{self, Kind};

    const NOW: Micros = 849_312_000 * SECOND;
    const MIN: Micros = 60 * SECOND;

    fn token(issued: Micros, generation: i32) -> Parsed {
        let id = SessionId::dated(clock::unix_millis(issued), [7; 10]);
        let t = token::encode(Kind::Access, &id, generation, &[1; token::SECRET_LEN]);
        token::parse(&t, None).unwrap()
    }

    fn legacy(id: SessionId) -> Parsed {
        let t = token::encode_legacy(Kind::Access, &id, &[1; token::SECRET_LEN]);
        token::parse(&t, None).unwrap()
    }

    fn row(generation: i32, revoked: bool) -> SessionRow {
        let mut row = SessionRow::refreshed_at(NOW - MIN);
        row.generation = generation;
        row.revoked_at = revoked.then_some(NOW - MIN);
        row
    }

    fn at(replayed_until: Option<Micros>) -> Position {
        Position {
            replayed_until,
            snapshot_at: NOW,
            now: NOW,
        }
    }

    #[test]
    fn a_newer_generation_of_a_replayed_row_is_not_replayed_yet() {
        let lag = at(Some(NOW - SECOND));
        let r = row(4, false);
        assert_eq!(
            unmatched(&token(NOW, 5), Found::Row(&r), lag),
            Status::NotReplayed
        );
        assert_eq!(
            unmatched(&token(NOW, 90), Found::Row(&r), lag),
            Status::NotReplayed
        );
    }

    #[test]
    fn a_secret_that_matches_no_replayed_generation_is_invalid() {
        let lag = at(Some(NOW - SECOND));
        let r = row(4, false);
        for generation in [1, 3, 4] {
            assert_eq!(
                unmatched(&token(NOW, generation), Found::Row(&r), lag),
                Status::Invalid
            );
        }
        let id = SessionId::dated(clock::unix_millis(NOW), [7; 10]);
        assert_eq!(
            unmatched(&legacy(id), Found::Row(&r), lag),
            Status::Invalid,
            "no claim"
        );
    }

    #[test]
    fn nothing_is_newer_than_a_replayed_revocation() {
        let r = row(4, true);
        let status = unmatched(&token(NOW, 5), Found::Row(&r), at(Some(NOW)));
        assert_eq!(status, Status::Invalid);
    }

    #[test]
    fn a_missing_session_issued_after_the_replayed_commits_is_not_replayed_yet() {
        let lag = at(Some(NOW - 2 * SECOND));
        assert_eq!(
            unmatched(&token(NOW - SECOND, 1), Found::Nothing, lag),
            Status::NotReplayed
        );
        // Issued in a transaction that committed later than it was dated.
        let issued = NOW - 2 * SECOND - ISSUE_TO_COMMIT + SECOND;
        assert_eq!(
            unmatched(&token(issued, 1), Found::Nothing, lag),
            Status::NotReplayed
        );
    }

    #[test]
    fn a_missing_session_older_than_the_replayed_commits_is_invalid() {
        let lag = at(Some(NOW - 2 * SECOND));
        let issued = NOW - 2 * SECOND - ISSUE_TO_COMMIT - SECOND;
        assert_eq!(
            unmatched(&token(issued, 1), Found::Nothing, lag),
            Status::Invalid
        );
        assert_eq!(
            unmatched(&token(NOW - 3600 * SECOND, 9), Found::Nothing, lag),
            Status::Invalid
        );
    }

    #[test]
    fn a_missing_session_dated_after_the_standbys_clock_was_made_up() {
        let lag = at(Some(NOW));
        let soon = token(NOW + CLOCK_SKEW - SECOND, 1);
        assert_eq!(unmatched(&soon, Found::Nothing, lag), Status::NotReplayed);
        let later = token(NOW + CLOCK_SKEW + SECOND, 1);
        assert_eq!(unmatched(&later, Found::Nothing, lag), Status::Invalid);
    }

    #[test]
    fn a_missing_session_with_an_undated_id_is_invalid() {
        let v4: SessionId = "ffffffff-ffff-4fff-bfff-ffffffffffff".parse().unwrap();
        assert_eq!(
            unmatched(&legacy(v4), Found::Nothing, at(None)),
            Status::Invalid
        );
    }

    #[test]
    fn before_any_replayed_commit_any_dated_session_may_be_unreplayed() {
        // A standby restarted far behind knows nothing of how far it is.
        let nothing_yet = at(None);
        let old = token(NOW - 24 * 3600 * SECOND, 1);
        assert_eq!(
            unmatched(&old, Found::Nothing, nothing_yet),
            Status::NotReplayed
        );
        let later = token(NOW + CLOCK_SKEW + SECOND, 1);
        assert_eq!(
            unmatched(&later, Found::Nothing, nothing_yet),
            Status::Invalid
        );
    }

    #[test]
    fn an_old_snapshot_sees_only_what_was_replayed_when_it_was_taken() {
        // A REPEATABLE READ transaction that began an hour ago: replay has
        // gone on, but its snapshot has none of what came since.
        let hour = 3600 * SECOND;
        let old_snapshot = Position {
            replayed_until: Some(NOW),
            snapshot_at: NOW - hour,
            now: NOW,
        };
        let issued_since = token(NOW - hour + MIN, 1);
        assert_eq!(
            unmatched(&issued_since, Found::Nothing, old_snapshot),
            Status::NotReplayed
        );
        let issued_before = token(NOW - hour - ISSUE_TO_COMMIT - MIN, 1);
        assert_eq!(
            unmatched(&issued_before, Found::Nothing, old_snapshot),
            Status::Invalid
        );
    }
}
