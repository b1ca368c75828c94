//! What the extension keeps in shared memory, which exists only when the
//! library is preloaded (`shared_preload_libraries`); every accessor returns
//! `None` otherwise.
//!
//! * The purge worker's latch, where a backend that detected a theft wakes it.
//! * The retry keys of the last seconds' rotations (see `retry_keys`).
//! * How many backends listen on channel `session_auth` (see `listeners`).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use pgrx::prelude::*;
use pgrx::{PgAtomic, PgLwLock};

use crate::key_ring::{KeyId, KeyRing};

static PURGE_WORKER_LATCH: PgAtomic<AtomicUsize> =
    // SAFETY: the name is the extension's own.
    unsafe { PgAtomic::new(c"pg_session_auth purge worker latch") };

static RETRY_KEYS: PgLwLock<KeyRing> =
    // SAFETY: the name is the extension's own.
    unsafe { PgLwLock::new(c"pg_session_auth retry keys") };

static LISTENERS: PgAtomic<AtomicU32> =
    // SAFETY: the name is the extension's own.
    unsafe { PgAtomic::new(c"pg_session_auth listeners") };

/// Set in the postmaster while preloading, inherited by every backend.
static READY: AtomicBool = AtomicBool::new(false);

/// Requests the shared memory; only while preloading.
pub fn init() {
    pgrx::pg_shmem_init!(PURGE_WORKER_LATCH);
    // Zero in every run of the server: a crash restart ends every listener.
    pgrx::pg_shmem_init!(LISTENERS);
    // Set up in the postmaster with shared memory: empty in every run of
    // the server (a crash restart too), its ids starting at a random value.
    pgrx::pg_shmem_init!(RETRY_KEYS = KeyRing::starting_at(first_key_id()));
    READY.store(true, Ordering::Relaxed);
}

fn first_key_id() -> KeyId {
    let bytes = crate::token::random_bytes::<4>()
        .expect("the OS random source is readable at server start");
    // Positive and far from wrapping.
    KeyId::from_be_bytes(bytes) & (KeyId::MAX >> 1)
}

pub fn purge_worker_latch() -> Option<&'static AtomicUsize> {
    READY
        .load(Ordering::Relaxed)
        .then(|| PURGE_WORKER_LATCH.get())
}

/// The retry-key ring, if the library is preloaded.
pub fn retry_keys() -> Option<&'static PgLwLock<KeyRing>> {
    READY.load(Ordering::Relaxed).then_some(&RETRY_KEYS)
}

/// The number of backends counted as listening on `session_auth`, if the
/// library is preloaded (without it nobody counts them).
pub fn listeners() -> Option<&'static AtomicU32> {
    READY.load(Ordering::Relaxed).then(|| LISTENERS.get())
}
