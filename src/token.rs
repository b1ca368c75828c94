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
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

pub const SECRET_LEN: usize = 32;
pub const SESSION_ID_LEN: usize = 16;
const BODY_BYTES: usize = SESSION_ID_LEN + SECRET_LEN;
/// base64url without padding of 48 bytes.
const BODY_CHARS: usize = BODY_BYTES / 3 * 4;
const PREFIX_LEN: usize = 8;
/// Every well-formed token has exactly this many characters.
pub const TOKEN_LEN: usize = PREFIX_LEN + BODY_CHARS;

pub type Secret = [u8; SECRET_LEN];
pub type SessionKey = [u8; SESSION_ID_LEN];
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
    pub session: SessionKey,
    pub digest: Digest,
}

/// Fresh random bytes from the OS. Failure to read the OS source is not
/// something to paper over: the caller turns it into an error
/// (`error::fresh`).
fn random_bytes<const N: usize>() -> Result<[u8; N], rand::Error> {
    let mut bytes = [0u8; N];
    OsRng.try_fill_bytes(&mut bytes)?;
    Ok(bytes)
}

pub fn new_secret() -> Result<Secret, rand::Error> {
    random_bytes()
}

pub fn new_session_key() -> Result<SessionKey, rand::Error> {
    let mut key: SessionKey = random_bytes()?;
    // RFC 4122 version 4, variant 1, so the id reads as an ordinary uuid.
    key[6] = (key[6] & 0x0f) | 0x40;
    key[8] = (key[8] & 0x3f) | 0x80;
    Ok(key)
}

pub fn encode(kind: Kind, session: &SessionKey, secret: &Secret) -> String {
    let mut body = [0u8; BODY_BYTES];
    body[..SESSION_ID_LEN].copy_from_slice(session);
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
        session,
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

/// A key that wraps retry pairs (see `retry_key`): erasing it makes every
/// pair wrapped under it unreadable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryKey {
    pub id: i64,
    pub secret: Secret,
}

const KEY_ID_LEN: usize = 8;
pub const NONCE_LEN: usize = 16;
pub type Nonce = [u8; NONCE_LEN];
const WRAPPED_LEN: usize = KEY_ID_LEN + NONCE_LEN + 2 * SECRET_LEN;

/// A fresh nonce for [`wrap_pair`].
pub fn new_nonce() -> Result<Nonce, rand::Error> {
    random_bytes()
}

/// A fresh id for a [`RetryKey`].
pub fn new_key_id() -> Result<i64, rand::Error> {
    random_bytes().map(i64::from_be_bytes)
}

/// The secrets of the pair that replaced a refresh token, wrapped under keys
/// derived from that refresh token, a retry key and a per-rotation nonce:
/// `key id || nonce || access ^ k1 || refresh ^ k2`. A retry with the
/// superseded token (a lost response, a second tab) unwraps them and answers
/// the very same pair, without the database ever holding a usable token;
/// once the retry key is erased, not even the holder of the superseded token
/// can unwrap them. The nonce keeps two wrappings under one token and key
/// (a rotation rolled back, then retried) from sharing a pad.
pub fn wrap_pair(
    parent_refresh: &str,
    key: &RetryKey,
    nonce: &Nonce,
    access: &Secret,
    refresh: &Secret,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(WRAPPED_LEN);
    out.extend(key.id.to_be_bytes());
    out.extend(nonce);
    out.extend(xor(
        access,
        &wrap_key(parent_refresh, key, nonce, b"access"),
    ));
    out.extend(xor(
        refresh,
        &wrap_key(parent_refresh, key, nonce, b"refresh"),
    ));
    out
}

/// The id of the retry key a wrapped pair needs; `None` if the stored value
/// is not a wrapped pair.
pub fn wrapped_key_id(wrapped: &[u8]) -> Option<i64> {
    if wrapped.len() != WRAPPED_LEN {
        return None;
    }
    let id: [u8; KEY_ID_LEN] = wrapped[..KEY_ID_LEN].try_into().ok()?;
    Some(i64::from_be_bytes(id))
}

/// Inverse of [`wrap_pair`]; `None` if the stored value is not a wrapped
/// pair or was wrapped under another key.
pub fn unwrap_pair(
    parent_refresh: &str,
    key: &RetryKey,
    wrapped: &[u8],
) -> Option<(Secret, Secret)> {
    if wrapped_key_id(wrapped)? != key.id {
        return None;
    }
    let (nonce, rest) = wrapped[KEY_ID_LEN..].split_at(NONCE_LEN);
    let nonce: Nonce = nonce.try_into().ok()?;
    let (access, refresh) = rest.split_at(SECRET_LEN);
    let access: Secret = access.try_into().ok()?;
    let refresh: Secret = refresh.try_into().ok()?;
    Some((
        xor(&access, &wrap_key(parent_refresh, key, &nonce, b"access")),
        xor(&refresh, &wrap_key(parent_refresh, key, &nonce, b"refresh")),
    ))
}

/// HMAC-SHA-256 keyed with the parent refresh token over fixed-length
/// fields (label last), so no two inputs can run into each other.
fn wrap_key(parent_refresh: &str, key: &RetryKey, nonce: &Nonce, label: &[u8]) -> Secret {
    let mut mac = Hmac::<Sha256>::new_from_slice(parent_refresh.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(b"pg_session_auth retry pair ");
    mac.update(&key.secret);
    mac.update(nonce);
    mac.update(label);
    mac.finalize().into_bytes().into()
}

fn xor(a: &Secret, b: &Secret) -> Secret {
    let mut out = [0u8; SECRET_LEN];
    for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b.iter())) {
        *o = x ^ y;
    }
    out
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    fn sample(kind: Kind) -> (SessionKey, Secret, String) {
        let session = new_session_key().unwrap();
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
        let key = new_session_key().unwrap();
        assert_eq!(key[6] >> 4, 4, "uuid version 4");
        assert_eq!(key[8] >> 6, 2, "uuid variant 1");
    }

    #[test]
    fn wrapped_pair_unwraps_only_with_the_parent_and_the_key() {
        let (_, _, parent) = sample(Kind::Refresh);
        let (_, _, other) = sample(Kind::Refresh);
        let key = RetryKey {
            id: -42,
            secret: new_secret().unwrap(),
        };
        let a = new_secret().unwrap();
        let r = new_secret().unwrap();
        let nonce = new_nonce().unwrap();
        let wrapped = wrap_pair(&parent, &key, &nonce, &a, &r);
        assert_eq!(wrapped_key_id(&wrapped), Some(-42));
        let rewrapped = wrap_pair(&parent, &key, &new_nonce().unwrap(), &a, &r);
        assert_ne!(
            wrapped[8 + NONCE_LEN..],
            rewrapped[8 + NONCE_LEN..],
            "another nonce, another pad"
        );
        assert!(!wrapped.windows(SECRET_LEN).any(|w| w == a || w == r));
        assert_eq!(unwrap_pair(&parent, &key, &wrapped), Some((a, r)));
        assert_ne!(unwrap_pair(&other, &key, &wrapped), Some((a, r)));
        let same_id_other_secret = RetryKey {
            id: -42,
            secret: new_secret().unwrap(),
        };
        assert_ne!(
            unwrap_pair(&parent, &same_id_other_secret, &wrapped),
            Some((a, r))
        );
        let other_id = RetryKey {
            id: 7,
            ..key.clone()
        };
        assert_eq!(unwrap_pair(&parent, &other_id, &wrapped), None);
        assert_eq!(unwrap_pair(&parent, &key, &wrapped[1..]), None);
        assert_eq!(wrapped_key_id(&wrapped[1..]), None);
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
