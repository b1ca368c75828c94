//! Token generation, parsing and digests.
//!
//! A token is `<prefix><body>` where the prefix names its kind (`pgsa_at_`
//! for access, `pgsa_rt_` for refresh) and the body is unpadded base64url of
//!
//! ```text
//! session id (16 bytes) || generation (4 bytes, big-endian) || secret (32 bytes)
//! ```
//!
//! The 32 bytes come from the operating system's CSPRNG (or, for a refresh,
//! are derived from such bytes, see `retry_pair`) and are the secret.
//! Carrying the session id lets every check start with one primary-key
//! probe; carrying the pair's generation lets a hot standby tell a token
//! newer than what it has replayed from one that was never issued (rule 8
//! of docs/design.md). Neither is secret: the holder of a token knows its
//! session anyway. Only a digest is ever stored (the first 128 bits of
//! `SHA-256(token)`: `DIGEST_LEN` says why that is enough), and it covers
//! the generation too, so changing it makes a token that matches nothing.
//! The random part makes a dictionary attack on the digest pointless, so no
//! key is needed for it.
//!
//! Tokens of 0.1.0 (`LEGACY_TOKEN_LEN`: no generation) stay valid: they are
//! parsed with `generation: None` and checked against their digests like any
//! other; a session's next rotation hands out the current format.
//!
//! Parsing is purely syntactic and looks at the length first, so a megabyte of
//! garbage is rejected before anything is decoded or hashed.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::clock::{self, Micros};
use crate::ids::SessionId;

pub const SECRET_LEN: usize = 32;
pub const SESSION_ID_LEN: usize = 16;
const GENERATION_LEN: usize = 4;
const BODY_BYTES: usize = SESSION_ID_LEN + GENERATION_LEN + SECRET_LEN;
const LEGACY_BODY_BYTES: usize = SESSION_ID_LEN + SECRET_LEN;
const PREFIX_LEN: usize = 8;
/// Every well-formed token has exactly this many characters (unpadded
/// base64 of `BODY_BYTES`).
pub const TOKEN_LEN: usize = PREFIX_LEN + base64_len(BODY_BYTES);
/// ... or, made by 0.1.0, this many.
pub const LEGACY_TOKEN_LEN: usize = PREFIX_LEN + base64_len(LEGACY_BODY_BYTES);
/// A session's first pair; each rotation adds one.
pub const FIRST_GENERATION: i32 = 1;

/// Characters of unpadded base64 for `bytes` bytes.
const fn base64_len(bytes: usize) -> usize {
    (bytes * 4).div_ceil(3)
}

pub type Secret = [u8; SECRET_LEN];
/// What is stored of a token: the first 16 bytes (128 bits) of its SHA-256.
/// A token's 32 secret bytes are uniformly random, so finding another string
/// with a stored digest is a second-preimage search of 2^128 (2^98 against a
/// billion stored digests at once); collisions, at 2^64, would need the
/// attacker to choose both tokens, and the server chooses every one. Half
/// the bytes per stored digest, in the session row, the blacklist and its
/// index (docs/security.md, "What is stored").
pub const DIGEST_LEN: usize = 16;
pub type Digest = [u8; DIGEST_LEN];

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
}

/// A token whose shape is right. Whether it was ever issued is for the
/// caller to find out by comparing `digest` with what is stored.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub kind: Kind,
    pub session: SessionId,
    /// The generation of the pair the token claims to belong to; `None` for
    /// a token of 0.1.0. A claim only: it is covered by the digest, which
    /// alone says whether the token was issued.
    pub generation: Option<i32>,
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

/// A new session's id, dated `now` (see `SessionId`).
pub fn new_session_id(now: Micros) -> Result<SessionId, rand::Error> {
    random_bytes().map(|random| SessionId::dated(clock::unix_millis(now), random))
}

/// The token of generation `generation` of `session` with `secret`.
pub fn encode(kind: Kind, session: &SessionId, generation: i32, secret: &Secret) -> String {
    let mut body = [0u8; BODY_BYTES];
    let (id, rest) = body.split_at_mut(SESSION_ID_LEN);
    let (gen, secret_part) = rest.split_at_mut(GENERATION_LEN);
    id.copy_from_slice(session.as_bytes());
    gen.copy_from_slice(&generation.to_be_bytes());
    secret_part.copy_from_slice(secret);
    with_prefix(kind, &body)
}

/// The token as 0.1.0 wrote it (no generation), for tests.
#[cfg(test)]
pub fn encode_legacy(kind: Kind, session: &SessionId, secret: &Secret) -> String {
    let mut body = [0u8; LEGACY_BODY_BYTES];
    body[..SESSION_ID_LEN].copy_from_slice(session.as_bytes());
    body[SESSION_ID_LEN..].copy_from_slice(secret);
    with_prefix(kind, &body)
}

fn with_prefix(kind: Kind, body: &[u8]) -> String {
    let mut token = String::with_capacity(TOKEN_LEN);
    token.push_str(kind.prefix());
    URL_SAFE_NO_PAD.encode_string(body, &mut token);
    token
}

pub fn digest(token: &str) -> Digest {
    let full: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let mut digest = [0u8; DIGEST_LEN];
    digest.copy_from_slice(&full[..DIGEST_LEN]);
    digest
}

/// Recognises a token of the expected kind; `None` for anything else
/// (wrong length, wrong prefix, wrong kind, bad characters, a generation
/// out of range).
pub fn parse(token: &str, expected: Option<Kind>) -> Option<Parsed> {
    let body_bytes = match token.len() {
        TOKEN_LEN => BODY_BYTES,
        LEGACY_TOKEN_LEN => LEGACY_BODY_BYTES,
        _ => return None,
    };
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
    if n != body_bytes {
        return None;
    }
    let mut session = [0u8; SESSION_ID_LEN];
    session.copy_from_slice(&body[..SESSION_ID_LEN]);
    let generation = if body_bytes == BODY_BYTES {
        let mut gen = [0u8; GENERATION_LEN];
        gen.copy_from_slice(&body[SESSION_ID_LEN..SESSION_ID_LEN + GENERATION_LEN]);
        let generation = i32::from_be_bytes(gen);
        if generation < FIRST_GENERATION {
            return None; // never issued
        }
        Some(generation)
    } else {
        None
    };
    Some(Parsed {
        kind,
        session: SessionId::from_bytes(session),
        generation,
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

    /// 2026-11-30, as a PostgreSQL time.
    const NOW: Micros = 849_312_000 * clock::SECOND;

    fn sample(kind: Kind) -> (SessionId, Secret, String) {
        let session = new_session_id(NOW).unwrap();
        let secret = new_secret().unwrap();
        let token = encode(kind, &session, 7, &secret);
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
        assert_eq!(parsed.generation, Some(7));
        assert_eq!(parsed.digest, digest(&token));
        assert_eq!(session.issued_unix_ms(), Some(clock::unix_millis(NOW)));
    }

    #[test]
    fn tokens_of_0_1_0_still_parse_without_a_generation() {
        let session = SessionId::from_bytes([3; 16]);
        let secret = new_secret().unwrap();
        let legacy = encode_legacy(Kind::Access, &session, &secret);
        assert_eq!(legacy.len(), LEGACY_TOKEN_LEN);
        assert_eq!(LEGACY_TOKEN_LEN, 72, "0.1.0's length");
        let parsed = parse(&legacy, Some(Kind::Access)).unwrap();
        assert_eq!((parsed.session, parsed.generation), (session, None));
        assert_eq!(parsed.digest, digest(&legacy));
        let current = encode(Kind::Access, &session, 1, &secret);
        assert_ne!(digest(&current), digest(&legacy), "a different token");
    }

    #[test]
    fn the_generation_is_covered_by_the_digest_and_never_below_the_first() {
        let session = SessionId::from_bytes([5; 16]);
        let secret = [9; SECRET_LEN];
        let one = encode(Kind::Access, &session, 1, &secret);
        let two = encode(Kind::Access, &session, 2, &secret);
        assert_ne!(digest(&one), digest(&two));
        for never_issued in [0, -1, i32::MIN] {
            let t = encode(Kind::Access, &session, never_issued, &secret);
            assert!(parse(&t, None).is_none(), "generation {never_issued}");
        }
        let last = encode(Kind::Access, &session, i32::MAX, &secret);
        assert_eq!(parse(&last, None).unwrap().generation, Some(i32::MAX));
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
        let (a, b) = (new_session_id(NOW).unwrap(), new_session_id(NOW).unwrap());
        assert_ne!(a, b, "74 random bits beside the same millisecond");
        assert_eq!(a.as_bytes()[6] >> 4, 7, "uuid version 7");
        assert_eq!(a.as_bytes()[8] >> 6, 2, "uuid variant 1");
    }

    #[test]
    fn same_digest_compares_whole_values() {
        let d = digest("x");
        assert!(same_digest(&d, Some(&d[..])));
        assert!(!same_digest(&d, Some(&digest("y")[..])));
        assert!(!same_digest(&d, Some(&d[..DIGEST_LEN - 1])));
        assert!(!same_digest(&d, None));
    }

    #[test]
    fn the_digest_is_the_first_128_bits_of_sha256() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1: ba7816bf 8f01cfea 414140de 5dae2223 ...
        let expected = [
            0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae,
            0x22, 0x23,
        ];
        assert_eq!(digest("abc"), expected);
        // A full 32-byte digest of 0.1.0 is no digest now.
        let full: [u8; 32] = Sha256::digest(b"abc").into();
        assert!(!same_digest(&digest("abc"), Some(&full[..])));
    }
}
