//! Retry keys: how a wrapped retry pair stops being readable once its grace
//! window is over, without touching the session row again.
//!
//! A rotation stores the new pair wrapped under the superseded refresh token
//! (rule 2: a retry with that token gets the same pair back). After the grace
//! window nobody may unwrap it any more, not even a database reader who holds
//! the superseded token. Clearing the column row by row would take an index
//! on a column every rotation changes, and that index alone would make every
//! rotation a non-HOT update (new entries in every index of the table).
//!
//! Instead the pair is also wrapped under a retry key from
//! `session_auth.retry_keys`, and the purge deletes each key a minute after
//! every grace window it covers is over (`ERASE_MARGIN`): erasing one key
//! makes all the pairs wrapped
//! under it unreadable at once. A backend creates a key the first time it
//! rotates and then every `KEY_LIFETIME` (5 s), so keys are few (backends that
//! rotate × erase window / lifetime) and cost one small insert per backend
//! every five seconds, while rotations stay HOT updates.
//!
//! Each backend makes its own keys (random ids), in the rotating caller's
//! transaction: no two backends ever touch the same key row, so nobody waits
//! for another's transaction. A key inserted by a transaction that rolled
//! back is never used again: the cache checks that the inserting (sub)
//! transaction is ours or committed.

use std::cell::RefCell;

use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::clock::Micros;
use crate::error::fresh;
use crate::store;
use crate::token::{self, RetryKey};

/// How long a backend keeps wrapping with one key.
const KEY_LIFETIME: Micros = 5_000_000;

/// How long a key outlives the grace windows it covers. A retry is judged
/// in its grace by its statement's time, but may have waited for the
/// rotating transaction to commit before it reads the key; this covers
/// such a wait, and clock reads of different processes.
const ERASE_MARGIN: Micros = 60_000_000;

struct Cached {
    key: RetryKey,
    /// Rotations at or after this instant make a new key.
    usable_until: Micros,
    /// The latest end of a grace window the key may cover.
    covers_until: Micros,
    /// The (sub)transaction that inserted the key row.
    xid: pg_sys::TransactionId,
}

thread_local! {
    static CURRENT: RefCell<Option<Cached>> = const { RefCell::new(None) };
}

/// The key to wrap a pair rotated at `now` whose grace ends at
/// `grace_until`: this backend's current key if it is still young, outlives
/// that grace and its row is there to stay; otherwise a new one.
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
    let key = RetryKey {
        id: fresh(token::new_key_id()),
        secret: fresh(token::new_secret()),
    };
    let usable_until = now.saturating_add(KEY_LIFETIME);
    // Later rotations with this key have a grace of at most this one's
    // (otherwise they make a new key), so their windows end by then.
    let covers_until = usable_until.saturating_add(grace_until.saturating_sub(now));
    let erase_after = covers_until.saturating_add(ERASE_MARGIN);
    store::run(
        client,
        &store::INSERT_RETRY_KEY,
        &[
            key.id.into(),
            store::bytes(&key.secret),
            store::ts(erase_after),
        ],
        |_| (),
    );
    // SAFETY: we are in a transaction that has just written a row.
    let xid = unsafe { pg_sys::GetCurrentTransactionId() };
    CURRENT.with(|c| {
        *c.borrow_mut() = Some(Cached {
            key: key.clone(),
            usable_until,
            covers_until,
            xid,
        })
    });
    key
}

/// The key a wrapped pair names, if it has not been erased.
pub fn find(client: &mut SpiClient<'_>, id: i64) -> Option<RetryKey> {
    let secret: Option<Vec<u8>> = store::run(client, &store::FIND_RETRY_KEY, &[id.into()], |t| {
        store::first_row(t, |r| store::req(r, 1))
    });
    let secret = secret?.try_into().ok()?;
    Some(RetryKey { id, secret })
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
