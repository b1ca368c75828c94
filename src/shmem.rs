//! What the extension keeps in shared memory, which exists only when the
//! library is preloaded (`shared_preload_libraries`); every accessor returns
//! `None` otherwise.
//!
//! * The purge worker's latch, where a backend that detected a theft wakes it.
//! * The retry-key key: 256 random bits made when the postmaster starts,
//!   never written anywhere (see `retry_pair`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use pgrx::prelude::*;
use pgrx::{PgAtomic, PgLwLock};

static PURGE_WORKER_LATCH: PgAtomic<AtomicUsize> =
    // SAFETY: the name is the extension's own.
    unsafe { PgAtomic::new(c"pg_session_auth purge worker latch") };

static RETRY_KEY_KEY: PgLwLock<[u8; 32]> =
    // SAFETY: the name is the extension's own.
    unsafe { PgLwLock::new(c"pg_session_auth retry key key") };

/// Set in the postmaster while preloading, inherited by every backend.
static READY: AtomicBool = AtomicBool::new(false);

/// Requests the shared memory; only while preloading.
pub fn init() {
    pgrx::pg_shmem_init!(PURGE_WORKER_LATCH);
    // The value is made once, in the postmaster, when shared memory is set
    // up: every backend of this server run sees the same key, and a restart
    // makes a new one.
    pgrx::pg_shmem_init!(RETRY_KEY_KEY = fresh_key());
    READY.store(true, Ordering::Relaxed);
}

fn fresh_key() -> [u8; 32] {
    crate::token::random_bytes().expect("the OS random source is readable at server start")
}

pub fn purge_worker_latch() -> Option<&'static AtomicUsize> {
    READY
        .load(Ordering::Relaxed)
        .then(|| PURGE_WORKER_LATCH.get())
}

/// The retry-key key, if the library is preloaded.
pub fn retry_key_key() -> Option<[u8; 32]> {
    READY
        .load(Ordering::Relaxed)
        .then(|| *RETRY_KEY_KEY.share())
}
