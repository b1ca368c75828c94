//! Retry pairs (rule 2 of docs/design.md): how a retry of a refresh inside
//! the grace window gets the very same pair back, while nothing stored lets
//! anyone rebuild it.
//!
//! A refresh does not draw its new pair from the CSPRNG directly. It derives
//! it with HKDF-SHA-256 (RFC 5869, the `hkdf` crate):
//!
//! ```text
//! access secret || refresh secret = HKDF(salt = retry key,
//!                                        IKM  = the presented (parent) refresh token,
//!                                        info = INFO || session id || new generation)
//! ```
//!
//! A retry with the same parent token while the key exists derives the same
//! pair; the session row records only which key was used. The token is the
//! input keying material, never an HMAC key, so no stored digest of it can
//! stand in for it; docs/security.md gives the whole argument, and
//! tests/security/test_database_reader.py tries every stored byte string in
//! every input.
//!
//! The key lives in shared memory when the library is preloaded, and in a
//! table otherwise; how long it lives, and how it is erased, is
//! `retry_keys`. Once it is gone, not even the holder of the parent token
//! can derive the pair: a retry that finds no key answers `expired`, and the
//! session itself is untouched.

use hkdf::Hkdf;
use sha2::Sha256;

use crate::ids::SessionId;
use crate::retry_keys::RetryKey;
use crate::token::{self, Secret};

/// Domain separation for the derivation; a new construction gets a new one.
const INFO: &[u8] = b"pg_session_auth retry pair v2";

/// The secrets of the pair that replaces `parent_refresh` as generation
/// `generation` of `session`.
pub fn derive(
    parent_refresh: &str,
    key: &RetryKey,
    session: &SessionId,
    generation: i32,
) -> (Secret, Secret) {
    let hkdf = Hkdf::<Sha256>::new(Some(&key.secret), parent_refresh.as_bytes());
    let mut okm = [0u8; 2 * token::SECRET_LEN];
    hkdf.expand_multi_info(
        &[INFO, session.as_bytes(), &generation.to_be_bytes()],
        &mut okm,
    )
    .expect("64 bytes is far below HKDF-SHA-256's limit of 8160");
    let (access, refresh) = okm.split_at(token::SECRET_LEN);
    (
        access.try_into().expect("32 bytes"),
        refresh.try_into().expect("32 bytes"),
    )
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    fn key(byte: u8) -> RetryKey {
        RetryKey {
            id: 7,
            secret: [byte; 32],
        }
    }

    const PARENT: &str = "pgsa_rt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    #[test]
    fn the_same_inputs_derive_the_same_pair_and_any_change_another() {
        let session = SessionId::from_bytes([1; 16]);
        let pair = derive(PARENT, &key(9), &session, 2);
        assert_eq!(pair, derive(PARENT, &key(9), &session, 2));
        assert_ne!(pair.0, pair.1, "access and refresh secrets differ");
        let other_parent = PARENT.replace("AAAA", "AAAB");
        for changed in [
            derive(&other_parent, &key(9), &session, 2),
            derive(PARENT, &key(8), &session, 2),
            derive(PARENT, &key(9), &SessionId::from_bytes([2; 16]), 2),
            derive(PARENT, &key(9), &session, 3),
        ] {
            assert_ne!(changed.0, pair.0);
            assert_ne!(changed.1, pair.1);
        }
    }

    #[test]
    fn the_derivation_is_rfc_5869_hkdf_sha256() {
        // RFC 5869, test case 1, through the same call shape (salt, IKM,
        // info in pieces): guards against a silent change of construction.
        let ikm = [0x0b_u8; 22];
        let salt: Vec<u8> = (0x00..=0x0c).collect();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        let mut okm = [0u8; 42];
        Hkdf::<Sha256>::new(Some(&salt), &ikm)
            .expand_multi_info(&[&info[..4], &info[4..]], &mut okm)
            .unwrap();
        assert_eq!(
            okm.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
    }
}
