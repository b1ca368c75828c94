//! Where retry keys live, and how they are erased. What a key is for, and
//! why erasing it ends every retry it served, is `retry_pair`'s part.
//!
//! * **Preloaded** (`shared_preload_libraries`): in a ring of slots in shared
//!   memory (`key_ring`, behind an LWLock in `shmem`). A key is 256 bits
//!   from the operating system's CSPRNG, written there and nowhere else: no
//!   table, page, file, WAL record, dump or log ever holds one. One key
//!   serves every rotation of the server during [`KEY_LIFETIME`]; its erase
//!   deadline grows to cover the grace window of each rotation it serves,
//!   plus [`ERASE_MARGIN`]. Past its deadline a key is not found, and its
//!   bytes are zeroed by the next sweep: the purge worker's, every second,
//!   and the one before every new key. A server restart (or crash) starts
//!   with an empty ring.
//! * **Not preloaded**: there is no shared memory, so a key is a row of
//!   `session_auth.retry_keys` (UNLOGGED, never dumped, made by the INSERT
//!   itself so that it is never a statement parameter). A DELETE erases it,
//!   but a deleted row's bytes stay in the table's pages until the space is
//!   reused: docs/security.md says what that costs, and why preloading is
//!   the answer.
//!
//! 0.2.0 before its review stored every key in the table and, preloaded,
//! kept only an HMAC key in shared memory; a reader of the raw pages still
//! found the erased seeds, and a reader of the server's memory the HMAC key.

use std::cell::{Cell, RefCell};

use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::clock::{Micros, SECOND};
use crate::error::fresh;
use crate::key_ring::KeyId;
use crate::store;
use crate::token::{self, Secret};

/// How long one key serves new rotations.
pub const KEY_LIFETIME: Micros = SECOND;

/// How long a key outlives the last grace window it covers: a retry judged
/// inside its grace by its statement's time may still have to wait for the
/// rotating transaction to commit before it reads the key.
pub const ERASE_MARGIN: Micros = 2 * SECOND;

/// How often one backend's writing calls erase expired key rows at most
/// (without preloading).
const ERASE_EVERY: Micros = SECOND;

/// A key that salts retry pairs: once it is erased, no pair derived with it
/// can be derived again. Only `id` is stored with a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryKey {
    pub id: KeyId,
    pub secret: Secret,
}

/// The ring's sweep for the purge worker's tick, at the real time: zeroes
/// the keys past their deadline. Does nothing without preloading.
pub fn sweep_ring() -> usize {
    let Some(ring) = crate::shmem::retry_keys() else {
        return 0;
    };
    ring.exclusive().sweep(crate::clock::wall_now())
}

// ---------------------------------------------------------------------------
// Either place.

/// The key for a rotation at `now` whose grace ends at `grace_until`.
pub fn for_rotation(client: &mut SpiClient<'_>, now: Micros, grace_until: Micros) -> RetryKey {
    match crate::shmem::retry_keys() {
        Some(ring) => {
            let erase_after = grace_until.max(now).saturating_add(ERASE_MARGIN);
            // The common case takes the current key: no random draw, which
            // happens outside the lock and only when a new key is due.
            let current = ring.exclusive().current_key(now, erase_after);
            let (id, secret) = current.unwrap_or_else(|| {
                let new_secret = fresh(token::new_secret());
                ring.exclusive().key_for(
                    now,
                    now.saturating_add(KEY_LIFETIME),
                    erase_after,
                    new_secret,
                )
            });
            RetryKey { id, secret }
        }
        None => table_key_for_rotation(client, now, grace_until),
    }
}

/// The key a rotation used, if it has not been erased.
pub fn find(client: &mut SpiClient<'_>, id: KeyId, now: Micros) -> Option<RetryKey> {
    match crate::shmem::retry_keys() {
        Some(ring) => ring
            .share()
            .find(id, now)
            .map(|secret| RetryKey { id, secret }),
        None => {
            let secret: Option<Vec<u8>> =
                store::run(client, &store::FIND_RETRY_KEY, &[id.into()], |t| {
                    store::first_row(t, |r| store::req(r, 1))
                });
            Some(RetryKey {
                id,
                secret: secret?.try_into().ok()?,
            })
        }
    }
}

// ---------------------------------------------------------------------------
// Not preloaded: rows of session_auth.retry_keys.

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

/// How many random ids a new key row tries before giving up. A busy backend
/// makes a key row a second, each alive for the grace window and a few
/// seconds, so with an hour's grace a few thousand rows a backend: an id
/// drawn from 2^31 is taken with a chance under one in five thousand even
/// with a hundred such backends, and eight in a row practically never.
const KEY_ID_DRAWS: usize = 8;

/// Inserts a new key row under a random id that no live row has (ids are
/// drawn at random, since backends make keys independently), and returns
/// the id and the secret PostgreSQL made for it.
fn insert_key_row(client: &mut SpiClient<'_>, erase_after: Micros) -> (KeyId, Vec<u8>) {
    for _ in 0..KEY_ID_DRAWS {
        // Positive, as the ring's ids are; never 0, which means none.
        let id = (fresh(token::random_bytes().map(KeyId::from_be_bytes)) & KeyId::MAX).max(1);
        let secret: Option<Vec<u8>> = store::run(
            client,
            &store::INSERT_RETRY_KEY,
            &[id.into(), store::ts(erase_after)],
            |t| store::first_row(t, |r| store::req(r, 1)),
        );
        if let Some(secret) = secret {
            return (id, secret);
        }
    }
    crate::error::internal("retry key", "every id drawn was taken")
}

/// This backend's current key row if it is young, covers the grace and is
/// there to stay; otherwise a new row.
fn table_key_for_rotation(
    client: &mut SpiClient<'_>,
    now: Micros,
    grace_until: Micros,
) -> RetryKey {
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
    let usable_until = now.saturating_add(KEY_LIFETIME);
    // Later rotations with this key have a grace of at most this one's
    // (otherwise they make a new key), so their windows end by then.
    let covers_until = usable_until.saturating_add(grace_until.saturating_sub(now));
    let erase_after = covers_until.saturating_add(ERASE_MARGIN);
    let (id, secret) = insert_key_row(client, erase_after);
    let secret: Secret = secret
        .try_into()
        .unwrap_or_else(|_| crate::error::internal("retry key", "not 32 bytes"));
    let key = RetryKey { id, secret };
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

/// Erases the keys whose grace windows are all over; every writing call
/// runs it, at most once a second per backend. Preloaded, it zeroes them in
/// the ring (the purge worker does too, but not while it runs a VACUUM).
/// Without preloading it deletes their rows, so a database loses its
/// expired keys with the next call that commits. (Preloaded, no key is in
/// the table: rows left from a run without preloading go with the purge.)
pub fn erase_expired(client: &mut SpiClient<'_>, now: Micros) {
    if now.saturating_sub(LAST_ERASE.with(Cell::get)) < ERASE_EVERY {
        return;
    }
    if crate::shmem::retry_keys().is_some() {
        LAST_ERASE.with(|l| l.set(now));
        sweep_ring();
        return;
    }
    erase_expired_now(client, now);
}

/// [`erase_expired`] without the once-a-second limit (the purge,
/// `session_purge()`). Returns how many rows it erased.
pub fn erase_expired_now(client: &mut SpiClient<'_>, now: Micros) -> u64 {
    LAST_ERASE.with(|l| l.set(now));
    store::affected(client, &store::ERASE_RETRY_KEYS, &[store::ts(now)])
}

/// Forgets the cached key row if `relid` is its table (truncated, dropped)
/// or the whole relcache was reset. Called from the relcache invalidation
/// callback: must not raise.
pub fn forget_cached_key(relid: pg_sys::Oid) {
    let _ = CURRENT.try_with(|c| {
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
