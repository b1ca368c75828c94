//! The blacklist: one row per pair a session no longer holds, superseded by
//! a rotation or a re-authentication, or current when the session was
//! revoked. A row is keyed by the session and the pair's generation, which
//! every token since 0.2.0 carries, so a token older than its session's
//! parent is found with one primary-key probe whatever its kind; a token of
//! 0.1.0 (no generation) is looked for among its session's rows.
//!
//! The row keeps both tokens' digests, each with its own deadline, and the
//! row goes when the later of the two deadlines has passed. A revocation
//! does not keep a digest whose token had already expired (NULL). A
//! rotation keeps it, because the pair it supersedes is the new pair's
//! parent, whose tokens are told apart from any other for as long as it is
//! the parent (an expired parent access token answers `expired`, rule 6);
//! once older, such a token is found no more (`expired_when_listed`), as
//! if it had not been kept.
//! Pure: `store` and `probe` read the rows, this says which one, if any, is
//! the presented token's.

use crate::clock::Micros;
use crate::token::{self, Kind, Parsed};

/// One token of a blacklisted pair: its digest and its deadline.
#[derive(Clone, Debug)]
pub struct Kept {
    pub digest: Vec<u8>,
    pub expires_at: Micros,
}

/// A blacklisted pair as stored.
#[derive(Clone, Debug)]
pub struct ListedPair {
    pub generation: i32,
    pub access: Option<Kept>,
    pub refresh: Option<Kept>,
    /// When the pair left the session row (`revoked_at`).
    pub listed_at: Micros,
}

/// What the blacklist says of a presented token: the generation of its pair
/// and the token's own deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blacklisted {
    pub generation: i32,
    pub expires_at: Micros,
    /// The token had expired before its pair left the row: only as the
    /// parent is it still one of the session's (`lineage::identify`).
    pub expired_when_listed: bool,
}

impl ListedPair {
    /// The entry of the presented token if this pair holds it. The digest
    /// decides (in constant time): a generation or session id alone, which
    /// anybody who holds a token of the session can write, finds nothing.
    pub fn entry_for(&self, parsed: &Parsed) -> Option<Blacklisted> {
        let kept = match parsed.kind {
            Kind::Access => self.access.as_ref(),
            Kind::Refresh => self.refresh.as_ref(),
        }?;
        token::same_digest(&parsed.digest, Some(&kept.digest)).then_some(Blacklisted {
            generation: self.generation,
            expires_at: kept.expires_at,
            expired_when_listed: kept.expires_at <= self.listed_at,
        })
    }
}

/// The entry of the presented token among `pairs` (the rows of its session,
/// or the one row of its generation), if any.
pub fn find(parsed: &Parsed, pairs: impl IntoIterator<Item = ListedPair>) -> Option<Blacklisted> {
    pairs.into_iter().find_map(|pair| pair.entry_for(parsed))
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use crate::ids::SessionId;

    fn parsed(kind: Kind, name: &str) -> Parsed {
        Parsed {
            kind,
            session: SessionId::from_bytes([7; 16]),
            generation: Some(3),
            digest: token::digest(name),
        }
    }

    fn kept(name: &str, expires_at: Micros) -> Option<Kept> {
        Some(Kept {
            digest: token::digest(name).to_vec(),
            expires_at,
        })
    }

    fn pair() -> ListedPair {
        ListedPair {
            generation: 3,
            access: kept("a3", 10),
            refresh: kept("r3", 20),
            listed_at: 5,
        }
    }

    #[test]
    fn each_token_of_the_pair_is_found_with_its_own_deadline() {
        let access = pair().entry_for(&parsed(Kind::Access, "a3"));
        assert_eq!(
            access,
            Some(Blacklisted {
                generation: 3,
                expires_at: 10,
                expired_when_listed: false,
            })
        );
        let late = ListedPair {
            listed_at: 10,
            ..pair()
        };
        let expired = late.entry_for(&parsed(Kind::Access, "a3")).unwrap();
        assert!(
            expired.expired_when_listed,
            "its deadline had come when it was listed"
        );
        assert!(
            !late
                .entry_for(&parsed(Kind::Refresh, "r3"))
                .unwrap()
                .expired_when_listed
        );
        let refresh = pair().entry_for(&parsed(Kind::Refresh, "r3"));
        assert_eq!(refresh.map(|b| b.expires_at), Some(20));
    }

    #[test]
    fn a_digest_of_the_other_kind_or_another_token_is_not_found() {
        assert_eq!(pair().entry_for(&parsed(Kind::Access, "r3")), None);
        assert_eq!(pair().entry_for(&parsed(Kind::Refresh, "a3")), None);
        assert_eq!(pair().entry_for(&parsed(Kind::Refresh, "r4")), None);
    }

    #[test]
    fn a_token_not_kept_is_not_found() {
        let expired_access = ListedPair {
            access: None,
            ..pair()
        };
        assert_eq!(expired_access.entry_for(&parsed(Kind::Access, "a3")), None);
        assert!(expired_access
            .entry_for(&parsed(Kind::Refresh, "r3"))
            .is_some());
    }

    #[test]
    fn find_looks_through_every_pair_of_the_session() {
        let older = ListedPair {
            generation: 2,
            access: kept("a2", 5),
            refresh: kept("r2", 15),
            listed_at: 1,
        };
        let found = find(&parsed(Kind::Refresh, "r2"), [pair(), older]);
        assert_eq!(found.map(|b| b.generation), Some(2));
        assert_eq!(find(&parsed(Kind::Refresh, "r9"), [pair()]), None);
    }
}
