//! Token generation, parsing and digests.
//!
//! A token is `<prefix><body>` where the prefix names its kind (`pgsa_at_`
//! for access, `pgsa_rt_` for refresh) and the body is unpadded base64url of
//! the 16-byte session id followed by 32 bytes from the operating system's
//! CSPRNG. Carrying the session id lets every check start with one primary-key
//! probe; the 256 random bits are the secret. Only `SHA-256(token)` is ever
//! stored: the random part makes a dictionary attack on the digest pointless,
//! so no key is needed for it.
//!
//! Parsing is purely syntactic and looks at the length first, so a megabyte of
//! garbage is rejected before anything is decoded or hashed.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::ids::SessionId;

pub const SECRET_LEN: usize = 32;
pub const SESSION_ID_LEN: usize = 16;
const BODY_BYTES: usize = SESSION_ID_LEN + SECRET_LEN;
/// base64url without padding of 48 bytes.
const BODY_CHARS: usize = BODY_BYTES / 3 * 4;
const PREFIX_LEN: usize = 8;
/// Every well-formed token has exactly this many characters.
pub const TOKEN_LEN: usize = PREFIX_LEN + BODY_CHARS;

pub type Secret = [u8; SECRET_LEN];
pub type Digest = [u8; 32];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Access,
    Refresh,
}

impl Kind {
    pub const fn prefix(self) -> &'static str {
        match self {
            Kind::Access => "pgsa_at_",
            Kind::Refresh => "pgsa_rt_",
        }
    }

    /// The word stored in `session_auth.blacklist.kind`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Access => "access",
            Kind::Refresh => "refresh",
        }
    }
}

/// A token whose shape is right. Whether it was ever issued is for the
/// caller to find out by comparing `digest` with what is stored.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub kind: Kind,
    pub session: SessionId,
    pub digest: Digest,
}

/// Fresh random bytes from the OS. Failure to read the OS source is not
/// something to paper over: the caller turns it into an error
/// (`error::fresh`).
pub fn random_bytes<const N: usize>() -> Result<[u8; N], rand::Error> {
    let mut bytes = [0u8; N];
    OsRng.try_fill_bytes(&mut bytes)?;
    Ok(bytes)
}

pub fn new_secret() -> Result<Secret, rand::Error> {
    random_bytes()
}

pub fn new_session_id() -> Result<SessionId, rand::Error> {
    random_bytes().map(SessionId::random_from)
}

pub fn encode(kind: Kind, session: &SessionId, secret: &Secret) -> String {
    let mut body = [0u8; BODY_BYTES];
    body[..SESSION_ID_LEN].copy_from_slice(session.as_bytes());
    body[SESSION_ID_LEN..].copy_from_slice(secret);
    let mut token = String::with_capacity(TOKEN_LEN);
    token.push_str(kind.prefix());
    URL_SAFE_NO_PAD.encode_string(body, &mut token);
    token
}

pub fn digest(token: &str) -> Digest {
    Sha256::digest(token.as_bytes()).into()
}

/// Recognises a token of the expected kind; `None` for anything else
/// (wrong length, wrong prefix, wrong kind, bad characters).
pub fn parse(token: &str, expected: Option<Kind>) -> Option<Parsed> {
    if token.len() != TOKEN_LEN {
        return None;
    }
    let kind = if token.starts_with(Kind::Access.prefix()) {
        Kind::Access
    } else if token.starts_with(Kind::Refresh.prefix()) {
        Kind::Refresh
    } else {
        return None;
    };
    if expected.is_some_and(|want| want != kind) {
        return None;
    }
    let mut body = [0u8; BODY_BYTES];
    let n = URL_SAFE_NO_PAD
        .decode_slice(&token.as_bytes()[PREFIX_LEN..], &mut body)
        .ok()?;
    if n != BODY_BYTES {
        return None;
    }
    let mut session = [0u8; SESSION_ID_LEN];
    session.copy_from_slice(&body[..SESSION_ID_LEN]);
    Some(Parsed {
        kind,
        session: SessionId::from_bytes(session),
        digest: digest(token),
    })
}

/// Compares a presented digest with a stored one without an early exit.
pub fn same_digest(presented: &Digest, stored: Option<&[u8]>) -> bool {
    match stored {
        Some(stored) => bool::from(presented.as_slice().ct_eq(stored)),
        None => false,
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    fn sample(kind: Kind) -> (SessionId, Secret, String) {
        let session = new_session_id().unwrap();
        let secret = new_secret().unwrap();
        let token = encode(kind, &session, &secret);
        (session, secret, token)
    }

    #[test]
    fn encoded_tokens_have_fixed_length_prefix_and_url_safe_characters() {
        for kind in [Kind::Access, Kind::Refresh] {
            let (_, _, token) = sample(kind);
            assert_eq!(token.len(), TOKEN_LEN);
            assert!(token.starts_with(kind.prefix()));
            assert!(token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        }
    }

    #[test]
    fn parse_round_trips_session_and_digest() {
        let (session, _, token) = sample(Kind::Refresh);
        let parsed = parse(&token, Some(Kind::Refresh)).unwrap();
        assert_eq!(parsed.session, session);
        assert_eq!(parsed.kind, Kind::Refresh);
        assert_eq!(parsed.digest, digest(&token));
    }

    #[test]
    fn parse_rejects_wrong_kind_length_prefix_and_alphabet() {
        let (_, _, token) = sample(Kind::Access);
        assert!(parse(&token, Some(Kind::Refresh)).is_none());
        assert!(parse(&token, None).is_some());
        assert!(parse(&token[..TOKEN_LEN - 1], None).is_none());
        assert!(parse(&format!("{token}A"), None).is_none());
        assert!(parse(&token.replacen("pgsa_at_", "pgsa_xx_", 1), None).is_none());
        let bad_char = format!("{}+{}", &token[..20], &token[21..]);
        assert!(parse(&bad_char, None).is_none());
        assert!(parse("", None).is_none());
        let multibyte = format!("{}é{}", &token[..20], &token[22..]);
        assert_eq!(multibyte.len(), TOKEN_LEN);
        assert!(parse(&multibyte, None).is_none());
    }

    #[test]
    fn secrets_differ_every_time() {
        let a = new_secret().unwrap();
        let b = new_secret().unwrap();
        assert_ne!(a, b);
        let id = new_session_id().unwrap();
        assert_eq!(id.as_bytes()[6] >> 4, 4, "uuid version 4");
        assert_eq!(id.as_bytes()[8] >> 6, 2, "uuid variant 1");
    }

    #[test]
    fn same_digest_compares_whole_values() {
        let d = digest("x");
        assert!(same_digest(&d, Some(&d[..])));
        assert!(!same_digest(&d, Some(&digest("y")[..])));
        assert!(!same_digest(&d, Some(&d[..31])));
        assert!(!same_digest(&d, None));
    }
}
