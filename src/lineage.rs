//! The lineage rules (docs/design.md, "Refresh rules" and "Re-authentication"):
//! which of a session's tokens was presented, and what each call answers
//! for it. Pure: no SQL, no clock of its own (the caller passes the time and
//! its settings), so every rule is unit-tested here without a server.
//! `session` does the reading and writing around them.

use crate::blacklist::Blacklisted;
use crate::clock::{Effective, Micros, Policy, SECOND};
use crate::session_row::SessionRow;
use crate::token::{self, Kind, Parsed};

/// The status word of a good token: what the `Ok` of a `Result<_, Status>`
/// answers in SQL.
pub const OK: &str = "ok";

/// The status words of the contract, and one of this extension's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Invalid,
    Revoked,
    Expired,
    ReuseDetected,
    /// Only `session_reauthenticate` reports it (as SA003, with a HINT): the
    /// access token is the in-grace parent of the current pair, which still
    /// validates (rule 6) but may not re-authenticate.
    Superseded,
    /// Only on a hot standby: the token may be newer than what the standby
    /// has replayed (rule 8, `standby`); ask the primary.
    NotReplayed,
}

impl Status {
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Invalid => "invalid",
            Status::Revoked => "revoked",
            Status::Expired => "expired",
            Status::ReuseDetected => "reuse_detected",
            Status::Superseded => "superseded",
            Status::NotReplayed => "not_replayed",
        }
    }
}

/// Which of a session's tokens was presented.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Presented {
    Current,
    /// Of the pair the current one replaced (the row's generation minus
    /// one), with the token's own deadline; from the blacklist.
    Parent {
        expires_at: Micros,
    },
    /// Superseded before the parent; from the blacklist.
    Older {
        generation: i32,
        expires_at: Micros,
    },
}

/// Finds which token of `row` the parsed token is, if any. Only the current
/// pair is on the row; `blacklisted` looks any other up on the blacklist of
/// its session (writers through SPI with a fresh snapshot, validate through
/// a direct probe; `blacklist`), where every pair the session no longer
/// holds is, the parent included: one copy of each, and a row no wider than
/// its current pair.
pub fn identify(
    parsed: &Parsed,
    row: &SessionRow,
    blacklisted: impl FnOnce(&Parsed) -> Option<Blacklisted>,
) -> Option<Presented> {
    let current = match parsed.kind {
        Kind::Access => &row.access_digest,
        Kind::Refresh => &row.refresh_digest,
    };
    if token::same_digest(&parsed.digest, Some(current)) {
        return Some(Presented::Current);
    }
    let listed = blacklisted(parsed)?;
    if listed.generation == row.generation.saturating_sub(1) {
        return Some(Presented::Parent {
            expires_at: listed.expires_at,
        });
    }
    // An older token that had expired before its pair was superseded is no
    // longer one of the family (`blacklist`): it answers `invalid`.
    (!listed.expired_when_listed).then_some(Presented::Older {
        generation: listed.generation,
        expires_at: listed.expires_at,
    })
}

/// Whether the parent pair is still inside its grace window: the one fixed
/// at rotation, shortened by the caller's current setting (rules 2 and 6).
fn in_grace(row: &SessionRow, now: Micros, policy: &Policy) -> bool {
    row.grace_until.is_some_and(|until| now < until)
        && row
            .rotated_at()
            .is_some_and(|at| now < at.saturating_add(policy.refresh_grace))
}

/// How long after a refresh rotation a call that presents its parent counts
/// as racing it (rule 7), whatever `refresh_grace` says: requests sent at the
/// same instant reach the server a little apart, and one may start while
/// the rotation is still committing, yet take its snapshot after it.
pub const RACE_WINDOW: Micros = SECOND / 10;

/// Whether the current pair came from a re-authentication so recent that a
/// refresh presenting the pair it replaced is racing it (rule 7).
fn racing_reauthentication(row: &SessionRow, now: Micros) -> bool {
    row.grace_until.is_none()
        && row
            .rotated_at()
            .is_some_and(|at| now < at.saturating_add(RACE_WINDOW))
}

/// Whether a retry of a refresh rotation's parent gets the same pair: inside
/// the grace window (rule 2), or racing the rotation (rule 7). Never after a
/// reauthentication, which has no grace (its `grace_until` is NULL).
fn may_retry(row: &SessionRow, now: Micros, policy: &Policy) -> bool {
    in_grace(row, now, policy)
        || (row.grace_until.is_some()
            && row
                .rotated_at()
                .is_some_and(|at| now < at.saturating_add(RACE_WINDOW)))
}

/// The status of an access token and, when it is good, until when.
/// Precedence: invalid, revoked, expired.
pub fn access_status(
    presented: &Presented,
    row: &SessionRow,
    now: Micros,
    policy: &Policy,
) -> Result<Micros, Status> {
    if row.revoked_at.is_some() {
        return Err(Status::Revoked);
    }
    let effective = Effective::of(&row.stored(), policy);
    let until = match presented {
        Presented::Current => effective.access,
        Presented::Parent { expires_at } => {
            // Rule 6: in-flight requests of the pair a refresh replaced.
            if !in_grace(row, now, policy) {
                return Err(Status::Revoked);
            }
            let grace_end = row.grace_until.unwrap_or(now).min(
                row.rotated_at()
                    .unwrap_or(now)
                    .saturating_add(policy.refresh_grace),
            );
            grace_end.min(*expires_at).min(effective.session)
        }
        Presented::Older { .. } => return Err(Status::Revoked),
    };
    if now >= until {
        return Err(Status::Expired);
    }
    Ok(until)
}

/// The effective deadlines of a live, unexpired session.
pub fn rotatable(row: &SessionRow, now: Micros, policy: &Policy) -> Option<Effective> {
    let effective = Effective::of(&row.stored(), policy);
    (row.revoked_at.is_none() && now < effective.session).then_some(effective)
}

/// What a refresh does with the locked row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refresh {
    /// Rule 1: a new pair, with these deadlines.
    Rotate(Effective),
    /// Rules 2 and 7: the pair that replaced the presented parent, again.
    Retry(Effective),
    /// Rule 3: the session is stolen; the presented token was of this
    /// generation.
    ReuseDetected {
        replayed_generation: i32,
    },
    Refused(Status),
}

/// Every refresh rule, decided on the locked row. `was_current`: the token
/// was the current one when this call began, so if it is not any more, a
/// concurrent call rotated it in the meantime (rule 7). Precedence:
/// revoked, expired, then the lineage.
pub fn decide_refresh(
    presented: &Presented,
    row: &SessionRow,
    now: Micros,
    policy: &Policy,
    was_current: bool,
) -> Refresh {
    if row.revoked_at.is_some() {
        return Refresh::Refused(Status::Revoked);
    }
    let effective = Effective::of(&row.stored(), policy);
    if now >= effective.session {
        return Refresh::Refused(Status::Expired);
    }
    // A concurrent refresh rotated the token this call presented while it
    // was current: the pair that rotation made is this call's answer too,
    // even with refresh_grace = 0 (then no retry would otherwise be served).
    let lost_race = was_current && row.grace_until.is_some();
    match *presented {
        Presented::Current => Refresh::Rotate(effective),
        // Rule 2: a lost response or a second tab gets the same pair.
        Presented::Parent { .. } if lost_race || may_retry(row, now, policy) => {
            Refresh::Retry(effective)
        }
        // Superseded while this call waited, by a re-authentication or by
        // two rotations, or by a re-authentication a moment before this call
        // (another tab's): not a theft, but no pair to give either.
        Presented::Parent { .. } | Presented::Older { .. } if was_current => {
            Refresh::Refused(Status::Expired)
        }
        Presented::Parent { .. } if racing_reauthentication(row, now) => {
            Refresh::Refused(Status::Expired)
        }
        // Outside the grace a parent past its own deadline is expired, not
        // reuse (precedence: expired first).
        Presented::Parent { expires_at } if now >= expires_at => Refresh::Refused(Status::Expired),
        Presented::Parent { .. } => Refresh::ReuseDetected {
            replayed_generation: row.generation - 1,
        },
        Presented::Older { expires_at, .. } if now >= expires_at => {
            Refresh::Refused(Status::Expired)
        }
        Presented::Older { generation, .. } => Refresh::ReuseDetected {
            replayed_generation: generation,
        },
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use crate::ids::SessionId;

    const MIN: Micros = 60 * SECOND;
    const GRACE: Micros = 10 * SECOND;

    fn policy() -> Policy {
        let policy = crate::clock::default_policy();
        assert_eq!(policy.refresh_grace, GRACE);
        policy
    }

    fn refreshed_at(rotated: Micros) -> SessionRow {
        assert_eq!(policy().refresh_grace, GRACE);
        SessionRow::refreshed_at(rotated)
    }

    /// The same, but the rotation was a re-authentication: no grace.
    fn reauthenticated_at(rotated: Micros) -> SessionRow {
        SessionRow {
            grace_until: None,
            retry_key_id: None,
            ..refreshed_at(rotated)
        }
    }

    fn presented(kind: Kind, name: &str) -> Parsed {
        Parsed {
            kind,
            session: SessionId::from_bytes([7; 16]),
            generation: None,
            digest: token::digest(name),
        }
    }

    fn no_blacklist(_: &Parsed) -> Option<Blacklisted> {
        None
    }

    /// The parent pair (`a1`/`r1`, generation 1) and `r0` and `a0`, two
    /// generations back, are on the blacklist.
    fn blacklist(parsed: &Parsed) -> Option<Blacklisted> {
        let kept = |name| {
            Some(crate::blacklist::Kept {
                digest: token::digest(name).to_vec(),
                expires_at: 20 * MIN,
            })
        };
        let older = crate::blacklist::ListedPair {
            generation: 0,
            access: kept("a0"),
            refresh: kept("r0"),
            listed_at: MIN / 2,
        };
        crate::blacklist::find(parsed, [SessionRow::parent_on_the_blacklist(), older])
    }

    /// The parent's entry only, with its refresh token's deadline at `at`.
    fn parent_until(at: Micros) -> impl Fn(&Parsed) -> Option<Blacklisted> {
        move |parsed| {
            let mut parent = SessionRow::parent_on_the_blacklist();
            if let Some(refresh) = parent.refresh.as_mut() {
                refresh.expires_at = at;
            }
            parent.entry_for(parsed)
        }
    }

    fn refresh(row: &SessionRow, token: &str, now: Micros, was_current: bool) -> Refresh {
        let parsed = presented(Kind::Refresh, token);
        let which = identify(&parsed, row, blacklist).expect("a token of the session");
        decide_refresh(&which, row, now, &policy(), was_current)
    }

    #[test]
    fn identify_tells_current_parent_and_older_tokens_apart() {
        let row = refreshed_at(MIN);
        let which = |kind, name| identify(&presented(kind, name), &row, blacklist);
        assert_eq!(which(Kind::Access, "a2"), Some(Presented::Current));
        assert_eq!(which(Kind::Refresh, "r2"), Some(Presented::Current));
        let p = policy();
        assert_eq!(
            which(Kind::Access, "a1"),
            Some(Presented::Parent {
                expires_at: p.access_ttl
            })
        );
        assert_eq!(
            which(Kind::Refresh, "r1"),
            Some(Presented::Parent {
                expires_at: p.idle_timeout
            })
        );
        assert_eq!(
            which(Kind::Refresh, "r0"),
            Some(Presented::Older {
                generation: 0,
                expires_at: 20 * MIN
            })
        );
        // A token of the other kind never matches, wherever its digest is.
        assert_eq!(which(Kind::Refresh, "a2"), None);
        assert_eq!(which(Kind::Access, "r1"), None);
        assert_eq!(which(Kind::Access, "r0"), None);
        assert_eq!(which(Kind::Refresh, "never issued"), None);
    }

    #[test]
    fn the_blacklist_is_read_only_when_the_row_does_not_answer() {
        let row = refreshed_at(MIN);
        let must_not_read = |_: &Parsed| -> Option<Blacklisted> {
            panic!("the blacklist was read for a token the row knows")
        };
        assert!(identify(&presented(Kind::Refresh, "r2"), &row, must_not_read).is_some());
        assert!(identify(&presented(Kind::Access, "a2"), &row, must_not_read).is_some());
        assert_eq!(
            identify(&presented(Kind::Refresh, "x"), &row, no_blacklist),
            None
        );
    }

    #[test]
    fn the_parent_is_the_blacklisted_pair_one_generation_back() {
        let row = refreshed_at(MIN);
        // Not on the blacklist (its tokens had both expired, or its entry
        // was purged): nothing says it is the session's.
        assert_eq!(
            identify(&presented(Kind::Refresh, "r1"), &row, no_blacklist),
            None
        );
        // The same entry, for a row one rotation further on, is older.
        let next = SessionRow {
            generation: 3,
            ..refreshed_at(MIN)
        };
        assert_eq!(
            identify(&presented(Kind::Refresh, "r1"), &next, blacklist),
            Some(Presented::Older {
                generation: 1,
                expires_at: policy().idle_timeout
            })
        );
    }

    #[test]
    fn rule_1_the_current_refresh_token_rotates() {
        let row = refreshed_at(MIN);
        let effective = Effective::of(&row.stored(), &policy());
        assert_eq!(
            refresh(&row, "r2", 2 * MIN, false),
            Refresh::Rotate(effective)
        );
    }

    #[test]
    fn rule_2_the_parent_within_the_grace_gets_the_same_pair() {
        let row = refreshed_at(MIN);
        let effective = Effective::of(&row.stored(), &policy());
        assert_eq!(
            refresh(&row, "r1", MIN + GRACE - 1, false),
            Refresh::Retry(effective)
        );
        assert_eq!(
            refresh(&row, "r1", MIN + GRACE, false),
            Refresh::ReuseDetected {
                replayed_generation: 1
            }
        );
    }

    #[test]
    fn rule_2_the_callers_shorter_grace_applies_at_once() {
        let row = refreshed_at(MIN);
        let tight = Policy {
            refresh_grace: SECOND,
            ..policy()
        };
        let parsed = presented(Kind::Refresh, "r1");
        let which = identify(&parsed, &row, blacklist).unwrap();
        assert!(matches!(
            decide_refresh(&which, &row, MIN + 2 * SECOND, &tight, false),
            Refresh::ReuseDetected { .. }
        ));
    }

    #[test]
    fn rule_3_an_older_ancestor_is_reuse_even_inside_the_grace() {
        let row = refreshed_at(MIN);
        assert_eq!(
            refresh(&row, "r0", MIN + 1, false),
            Refresh::ReuseDetected {
                replayed_generation: 0
            }
        );
    }

    #[test]
    fn expired_comes_before_reuse() {
        let row = refreshed_at(MIN);
        // The ancestor's own blacklist entry ran out.
        assert_eq!(
            refresh(&row, "r0", 20 * MIN, false),
            Refresh::Refused(Status::Expired)
        );
        // The parent is past its own deadline.
        let which = identify(
            &presented(Kind::Refresh, "r1"),
            &row,
            parent_until(MIN + GRACE),
        )
        .unwrap();
        assert_eq!(
            decide_refresh(&which, &row, MIN + GRACE, &policy(), false),
            Refresh::Refused(Status::Expired)
        );
        // The whole session is past its idle timeout.
        assert_eq!(
            refresh(&row, "r2", MIN + 30 * MIN, false),
            Refresh::Refused(Status::Expired)
        );
        assert_eq!(
            refresh(&row, "r0", MIN + 30 * MIN, false),
            Refresh::Refused(Status::Expired)
        );
    }

    #[test]
    fn rule_5_revoked_comes_first() {
        let row = SessionRow {
            revoked_at: Some(MIN),
            ..refreshed_at(MIN)
        };
        for token in ["r2", "r1", "r0"] {
            assert_eq!(
                refresh(&row, token, 2 * MIN, false),
                Refresh::Refused(Status::Revoked)
            );
        }
        let expired_and_revoked = refresh(&row, "r2", 12 * 60 * MIN, false);
        assert_eq!(expired_and_revoked, Refresh::Refused(Status::Revoked));
    }

    #[test]
    fn rule_7_a_refresh_racing_the_rotation_is_a_retry_even_without_grace() {
        let row = refreshed_at(MIN);
        let no_grace = Policy {
            refresh_grace: 0,
            ..policy()
        };
        let which = identify(&presented(Kind::Refresh, "r1"), &row, blacklist).unwrap();
        let effective = Effective::of(&row.stored(), &no_grace);
        let within = MIN + RACE_WINDOW - 1;
        assert_eq!(
            decide_refresh(&which, &row, within, &no_grace, false),
            Refresh::Retry(effective)
        );
        assert!(matches!(
            decide_refresh(&which, &row, MIN + RACE_WINDOW, &no_grace, false),
            Refresh::ReuseDetected { .. }
        ));
        // The token was current when the call began: it lost the race to a
        // concurrent refresh, however long it waited for the row.
        let late = MIN + 5 * GRACE;
        assert_eq!(
            decide_refresh(&which, &row, late, &no_grace, true),
            Refresh::Retry(effective)
        );
    }

    #[test]
    fn rule_7_a_tab_racing_a_reauthentication_is_told_expired_then_it_is_reuse() {
        let row = reauthenticated_at(MIN);
        assert_eq!(
            refresh(&row, "r1", MIN + RACE_WINDOW - 1, false),
            Refresh::Refused(Status::Expired)
        );
        assert_eq!(
            refresh(&row, "r1", MIN + RACE_WINDOW, false),
            Refresh::ReuseDetected {
                replayed_generation: 1
            }
        );
        // Never a retry: the stepped-up pair is not the old token's to get.
        assert_eq!(
            refresh(&row, "r1", MIN + 1, true),
            Refresh::Refused(Status::Expired)
        );
    }

    #[test]
    fn rule_7_a_token_superseded_twice_while_the_call_waited_is_expired_not_theft() {
        let row = refreshed_at(MIN);
        assert_eq!(
            refresh(&row, "r0", MIN + 1, true),
            Refresh::Refused(Status::Expired)
        );
    }

    #[test]
    fn rule_6_the_parent_access_token_validates_for_the_grace_only() {
        let row = refreshed_at(MIN);
        let p = policy();
        let status = |name, now| {
            let which = identify(&presented(Kind::Access, name), &row, blacklist).unwrap();
            access_status(&which, &row, now, &p)
        };
        assert_eq!(status("a2", MIN + 1), Ok(MIN + p.access_ttl));
        assert_eq!(status("a1", MIN + 1), Ok(MIN + GRACE));
        assert_eq!(status("a1", MIN + GRACE), Err(Status::Revoked));
        assert_eq!(status("a0", MIN + 1), Err(Status::Revoked));
        assert_eq!(status("a2", MIN + p.access_ttl), Err(Status::Expired));
    }

    #[test]
    fn a_revoked_session_validates_nothing() {
        let row = SessionRow {
            revoked_at: Some(MIN),
            ..refreshed_at(MIN)
        };
        let which = identify(&presented(Kind::Access, "a2"), &row, no_blacklist).unwrap();
        assert_eq!(
            access_status(&which, &row, MIN + 1, &policy()),
            Err(Status::Revoked)
        );
    }
}
