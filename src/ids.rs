//! Session ids: the uuid a token carries and every table is keyed by.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// A session's id. The extension makes version-7 ids (RFC 9562): the time
/// of issue to the millisecond, then 74 random bits. The time is what lets a
/// hot standby tell a session it has not replayed yet from one that never
/// existed (rule 8 of docs/design.md); it tells a holder of the id no more
/// than `session_list`'s `created_at`. The secret is the token's, never the
/// id. Sessions of 0.1.0 keep their random (version-4) ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(Uuid);

impl SessionId {
    /// A version-7 id for a session issued at `unix_ms`, from 10 random
    /// bytes (the version and variant bits are set over them).
    pub fn dated(unix_ms: u64, random: [u8; 10]) -> Self {
        SessionId(uuid::Builder::from_unix_timestamp_millis(unix_ms, &random).into_uuid())
    }

    /// When a version-7 id says its session was issued (Unix milliseconds);
    /// `None` for any other id.
    pub fn issued_unix_ms(&self) -> Option<u64> {
        if self.0.get_version_num() != 7 {
            return None;
        }
        let mut millis = [0u8; 8];
        millis[2..].copy_from_slice(&self.0.as_bytes()[..6]);
        Some(u64::from_be_bytes(millis))
    }

    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        SessionId(Uuid::from_bytes(bytes))
    }

    pub const fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for SessionId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(SessionId)
    }
}

impl From<pgrx::Uuid> for SessionId {
    fn from(id: pgrx::Uuid) -> Self {
        SessionId::from_bytes(*id.as_bytes())
    }
}

impl From<SessionId> for pgrx::Uuid {
    fn from(id: SessionId) -> Self {
        pgrx::Uuid::from_bytes(*id.as_bytes())
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn dated_ids_are_version_7_carry_their_time_and_print_as_uuids() {
        let unix_ms = 1_796_000_000_123; // 2026-11-30
        let id = SessionId::dated(unix_ms, [0xff; 10]);
        assert_eq!(id.as_bytes()[6] >> 4, 7, "version 7");
        assert_eq!(id.as_bytes()[8] >> 6, 2, "RFC variant");
        assert_eq!(id.issued_unix_ms(), Some(unix_ms));
        let text = id.to_string();
        assert_eq!(text, "01a229f1-287b-7fff-bfff-ffffffffffff");
        assert_eq!(text.parse::<SessionId>().unwrap(), id);
        assert!("not-a-uuid".parse::<SessionId>().is_err());
    }

    #[test]
    fn ids_of_other_versions_carry_no_time() {
        let v4: SessionId = "ffffffff-ffff-4fff-bfff-ffffffffffff".parse().unwrap();
        assert_eq!(v4.issued_unix_ms(), None, "0.1.0's random ids");
        assert_eq!(SessionId::from_bytes([0; 16]).issued_unix_ms(), None);
    }
}
