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
//! A retry key is a row of `session_auth.retry_keys`: an id and a 256-bit
//! *seed* from PostgreSQL's strong random source (made by the INSERT itself,
//! so it is never a statement parameter that a log or a plan could show).
//! The salt is not the seed itself but `HMAC-SHA-256(key = K, seed)`, where
//! `K` is 256 bits the postmaster makes in shared memory when it starts and
//! never writes anywhere (`shmem`). So no stored byte is a salt: not the
//! rows, not the table's pages or files after a row is deleted (its bytes
//! linger until the space is reused), not a dump (the table is not dumped),
//! not WAL (it is UNLOGGED). Without preloading there is no shared memory and
//! the seed is the salt: the README says what that costs.
//!
//! A backend makes a key when it first rotates and then every
//! [`KEY_LIFETIME`]; each is erased [`ERASE_MARGIN`] after the last grace
//! window it covers, by the worker within a second, and in a database the
//! worker does not serve by `session_purge()` and the next writing call that
//! commits ([`erase_expired`]). Once it is gone, not even the holder of the
//! parent token can derive the pair. A retry that finds no key, or a key made
//! by another run of the server (a restart makes a new `K`), answers
//! `expired`: the session itself is untouched.

use std::cell::{Cell, RefCell};

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use sha2::Sha256;

use crate::clock::Micros;
use crate::error::fresh;
use crate::ids::SessionId;
use crate::store;
use crate::token::{self, Secret};

/// How long a backend keeps deriving with one key.
pub const KEY_LIFETIME: Micros = 1_000_000;

/// How long a key outlives the last grace window it covers: a retry judged
/// inside its grace by its statement's time may still have to wait for the
/// rotating transaction to commit before it reads the key.
pub const ERASE_MARGIN: Micros = 2_000_000;

/// How often one backend's writing calls erase expired keys at most.
const ERASE_EVERY: Micros = 1_000_000;

/// Domain separation for the derivation; a new construction gets a new one.
const INFO: &[u8] = b"pg_session_auth retry pair v2";

/// Domain separation for the salt a seed gives under the server's key.
const SALT_LABEL: &[u8] = b"pg_session_auth retry key v2";

/// A key that salts retry pairs: erasing it makes every pair derived with
/// it underivable. `salt` is what the derivation uses; only its id and seed
/// are stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryKey {
    pub id: i64,
    pub salt: Secret,
}

impl RetryKey {
    /// The key a stored seed stands for in this run of the server:
    /// `HMAC-SHA-256(key = K, label || seed)` with the server's in-memory key
    /// `K`, or the seed itself without preloading.
    fn from_seed(id: i64, seed: &Secret) -> Self {
        let salt = match crate::shmem::retry_key_key() {
            Some(k) => {
                let mut mac =
                    <Hmac<Sha256> as Mac>::new_from_slice(&k).expect("HMAC takes a 32-byte key");
                mac.update(SALT_LABEL);
                mac.update(seed);
                mac.finalize().into_bytes().into()
            }
            None => *seed,
        };
        RetryKey { id, salt }
    }
}

/// The secrets of the pair that replaces `parent_refresh` as generation
/// `generation` of `session`.
pub fn derive(
    parent_refresh: &str,
    key: &RetryKey,
    session: &SessionId,
    generation: i32,
) -> (Secret, Secret) {
    let hkdf = Hkdf::<Sha256>::new(Some(&key.salt), parent_refresh.as_bytes());
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

struct Cached {
    key: RetryKey,
    /// `session_auth.retry_keys` when the key was made: a TRUNCATE, or the
    /// extension dropped and created again, empties it under us.
    table: pg_sys::Oid,
    /// Rotations at or after this instant make a new key.
    usable_until: Micros,
    /// The latest end of a grace window the key may cover.
    covers_until: Micros,
    /// The (sub)transaction that inserted the key row.
    xid: pg_sys::TransactionId,
}

thread_local! {
    static CURRENT: RefCell<Option<Cached>> = const { RefCell::new(None) };
    static LAST_ERASE: Cell<Micros> = const { Cell::new(Micros::MIN) };
}

/// The key for a rotation at `now` whose grace ends at `grace_until`: this
/// backend's current key if it is young, covers that grace and its row is
/// there to stay; otherwise a new one.
pub fn for_rotation(client: &mut SpiClient<'_>, now: Micros, grace_until: Micros) -> RetryKey {
    let reusable = CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|c| now < c.usable_until && grace_until <= c.covers_until && visible(c.xid))
            .map(|c| c.key.clone())
    });
    if let Some(key) = reusable {
        return key;
    }
    erase_expired(client, now);
    let id = fresh(token::random_bytes().map(i64::from_be_bytes));
    let usable_until = now.saturating_add(KEY_LIFETIME);
    // Later rotations with this key have a grace of at most this one's
    // (otherwise they make a new key), so their windows end by then.
    let covers_until = usable_until.saturating_add(grace_until.saturating_sub(now));
    let erase_after = covers_until.saturating_add(ERASE_MARGIN);
    let seed: Vec<u8> = store::run(
        client,
        &store::INSERT_RETRY_KEY,
        &[id.into(), store::ts(erase_after)],
        |t| store::first_row(t, |r| store::req(r, 1)),
    )
    .unwrap_or_else(|| crate::error::internal("retry key", "INSERT returned no row"));
    let seed: Secret = seed
        .try_into()
        .unwrap_or_else(|_| crate::error::internal("retry key", "not 32 bytes"));
    let key = RetryKey::from_seed(id, &seed);
    // SAFETY: we are in a transaction that has just written a row, and
    // the table's name resolves in a syscache lookup.
    let (xid, table) = unsafe {
        (
            pg_sys::GetCurrentTransactionId(),
            pg_sys::get_relname_relid(
                c"retry_keys".as_ptr(),
                pg_sys::get_namespace_oid(c"session_auth".as_ptr(), false),
            ),
        )
    };
    CURRENT.with(|c| {
        *c.borrow_mut() = Some(Cached {
            key: key.clone(),
            table,
            usable_until,
            covers_until,
            xid,
        })
    });
    key
}

/// The key a rotation used, if it has not been erased.
pub fn find(client: &mut SpiClient<'_>, id: i64) -> Option<RetryKey> {
    let seed: Option<Vec<u8>> = store::run(client, &store::FIND_RETRY_KEY, &[id.into()], |t| {
        store::first_row(t, |r| store::req(r, 1))
    });
    Some(RetryKey::from_seed(id, &seed?.try_into().ok()?))
}

/// Erases every key whose grace windows are all over, in a database no
/// worker serves. Every writing call runs it, at most once a second per
/// backend, so such a database loses its expired keys with the next call
/// that commits.
///
/// Where the worker serves the database, callers leave the keys alone: a
/// DELETE in a caller's transaction keeps the rows (and the key bytes)
/// until that transaction ends, and its row locks would make the worker's
/// `SKIP LOCKED` erase pass them by; the worker erases them within a second
/// instead.
pub fn erase_expired(client: &mut SpiClient<'_>, now: Micros) {
    if now.saturating_sub(LAST_ERASE.with(Cell::get)) < ERASE_EVERY
        || crate::gucs::worker_serves_this_database()
    {
        return;
    }
    erase_expired_now(client, now);
}

/// [`erase_expired`] without the once-a-second limit (the worker's tick,
/// `session_purge()`). Returns how many keys it erased.
pub fn erase_expired_now(client: &mut SpiClient<'_>, now: Micros) -> u64 {
    LAST_ERASE.with(|l| l.set(now));
    store::affected(client, &store::ERASE_RETRY_KEYS, &[store::ts(now)])
}

/// Forgets the cached key if `relid` is its table (truncated, dropped) or
/// the whole relcache was reset. Called from the relcache invalidation
/// callback: must not raise.
pub fn forget_cached_key(relid: pg_sys::Oid) {
    CURRENT.with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            if c.as_ref()
                .is_some_and(|k| relid == pg_sys::InvalidOid || k.table == relid)
            {
                c.take();
            }
        }
    });
}

/// Whether the key row inserted by `xid` exists for good: inserted by this
/// transaction (and not by a subtransaction since rolled back), or committed.
fn visible(xid: pg_sys::TransactionId) -> bool {
    // SAFETY: plain lookups of transaction status; `xid` is recent (at most
    // KEY_LIFETIME old), so its status is still in the commit log.
    unsafe {
        pg_sys::TransactionIdIsCurrentTransactionId(xid) || pg_sys::TransactionIdDidCommit(xid)
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    fn key(byte: u8) -> RetryKey {
        RetryKey {
            id: 7,
            salt: [byte; 32],
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
