//! Session ids: the uuid a token carries and every table is keyed by.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// A session's id. Random (version 4) when the extension makes one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(Uuid);

impl SessionId {
    /// A version-4 id from 16 random bytes (the version and variant bits are
    /// set, as RFC 9562 says, so it reads as an ordinary uuid).
    pub fn random_from(bytes: [u8; 16]) -> Self {
        SessionId(uuid::Builder::from_random_bytes(bytes).into_uuid())
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
    fn random_ids_are_version_4_and_print_as_uuids() {
        let id = SessionId::random_from([0xff; 16]);
        assert_eq!(id.as_bytes()[6] >> 4, 4, "version 4");
        assert_eq!(id.as_bytes()[8] >> 6, 2, "RFC variant");
        let text = id.to_string();
        assert_eq!(text, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(text.parse::<SessionId>().unwrap(), id);
        assert!("not-a-uuid".parse::<SessionId>().is_err());
    }
}
