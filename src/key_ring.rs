//! The ring of retry keys in shared memory, used with preloading (see
//! `retry_keys` for the rules and where keys live otherwise). Plain data
//! and pure functions: the LWLock around it is in `shmem`; the clock, the
//! deadlines and the random source are the caller's.

use pgrx::PGRXSharedMemory;

use crate::clock::Micros;
use crate::token::Secret;

/// Slots in the ring. A new key is made at most once a second
/// (`retry_keys::KEY_LIFETIME`), and a key lives at most `refresh_grace`
/// (at most an hour) plus a few seconds, so 4096 slots never wrap onto a
/// live key; if a clock jump made one do so, that key's retries would answer
/// `expired`, never wrongly.
pub const RING_SLOTS: usize = 4096;

/// A retry key's id, as a session row stores it (`sessions.retry_key_id`,
/// `int`: 4 bytes of every row). Ids need only tell apart the keys of the
/// last grace window: a stale id that names a newer key derives a pair
/// that its session's digests refuse (`session::retry_pair`).
pub type KeyId = i32;

#[derive(Clone, Copy)]
struct KeySlot {
    /// 0: empty or erased.
    id: KeyId,
    /// Rotations at or after this instant make a new key.
    usable_until: Micros,
    /// Not found at or after this instant, and zeroed by the next sweep.
    erase_after: Micros,
    secret: Secret,
}

const EMPTY: KeySlot = KeySlot {
    id: 0,
    usable_until: 0,
    erase_after: 0,
    secret: [0; 32],
};

/// The keys of the last seconds' rotations, cluster-wide (the HKDF info
/// binds each pair to its session, so databases can share keys).
#[derive(Clone, Copy)]
pub struct KeyRing {
    /// The id the next key gets; slot `id % RING_SLOTS`. Starts at a random
    /// value in each run of the server, so that an id stored by an earlier
    /// run finds nothing.
    next_id: KeyId,
    /// The id of the key rotations use now, 0 if none.
    current: KeyId,
    slots: [KeySlot; RING_SLOTS],
}

// SAFETY: plain data, no pointers: valid in shared memory as it is.
unsafe impl PGRXSharedMemory for KeyRing {}

impl Default for KeyRing {
    fn default() -> Self {
        KeyRing::starting_at(1)
    }
}

impl KeyRing {
    pub fn starting_at(first_id: KeyId) -> Self {
        KeyRing {
            next_id: first_id.max(1),
            current: 0,
            slots: [EMPTY; RING_SLOTS],
        }
    }

    fn slot(&self, id: KeyId) -> &KeySlot {
        &self.slots[slot_index(id)]
    }

    fn slot_mut(&mut self, id: KeyId) -> &mut KeySlot {
        &mut self.slots[slot_index(id)]
    }

    /// The current key (id, secret) for a use at `now` that needs it found
    /// until `erase_after`, if `now` is before its `usable_until` (its
    /// deadline pushed out to `erase_after` if that is later). What nearly
    /// every rotation gets: a new key is needed once a second at most.
    pub fn current_key(&mut self, now: Micros, erase_after: Micros) -> Option<(KeyId, Secret)> {
        let current = self.current;
        let slot = self.slot_mut(current);
        if current == 0 || slot.id != current || now >= slot.usable_until || now >= slot.erase_after
        {
            return None;
        }
        slot.erase_after = slot.erase_after.max(erase_after);
        Some((current, slot.secret))
    }

    /// The current key as `current_key` gives it, otherwise `new_secret` as
    /// a new key usable until `usable_until`, after a sweep. The caller
    /// draws `new_secret` before taking the lock, so nothing under the lock
    /// can fail (and asks `current_key` first, so that it draws one only
    /// when it is likely to be needed).
    pub fn key_for(
        &mut self,
        now: Micros,
        usable_until: Micros,
        erase_after: Micros,
        new_secret: Secret,
    ) -> (KeyId, Secret) {
        if let Some(key) = self.current_key(now, erase_after) {
            return key;
        }
        self.sweep(now);
        let id = self.next_id;
        self.next_id = if id == KeyId::MAX { 1 } else { id + 1 };
        *self.slot_mut(id) = KeySlot {
            id,
            usable_until,
            erase_after,
            secret: new_secret,
        };
        self.current = id;
        (id, new_secret)
    }

    /// The secret of key `id`, if it is still there at `now`.
    pub fn find(&self, id: KeyId, now: Micros) -> Option<Secret> {
        let slot = self.slot(id);
        (id != 0 && slot.id == id && now < slot.erase_after).then_some(slot.secret)
    }

    /// Zeroes every key whose deadline has passed at `now`; how many.
    pub fn sweep(&mut self, now: Micros) -> usize {
        let mut erased = 0;
        for slot in self.slots.iter_mut() {
            if slot.id != 0 && slot.erase_after <= now {
                // Volatile writes: the compiler may not drop a store to
                // memory it never reads again.
                // SAFETY: a valid, aligned array of this struct.
                unsafe { std::ptr::write_volatile(slot, EMPTY) };
                erased += 1;
            }
        }
        if self.slot(self.current).id != self.current {
            self.current = 0;
        }
        erased
    }
}

fn slot_index(id: KeyId) -> usize {
    id.unsigned_abs() as usize % RING_SLOTS
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    const S: Micros = crate::clock::SECOND;

    fn ring() -> Box<KeyRing> {
        Box::new(KeyRing::starting_at(7))
    }

    /// Distinct secrets, as the CSPRNG would give.
    fn secrets() -> impl FnMut() -> Secret {
        let mut n = 0u16;
        move || {
            n += 1;
            let mut s = [0xA5; 32];
            s[..2].copy_from_slice(&n.to_be_bytes());
            s
        }
    }

    /// A use at `now` of a key usable for a second, found until `until`.
    fn use_at(
        r: &mut KeyRing,
        now: Micros,
        until: Micros,
        s: &mut impl FnMut() -> Secret,
    ) -> (KeyId, Secret) {
        r.key_for(now, now + S, until, s())
    }

    #[test]
    fn one_key_serves_until_usable_until_then_a_new_one_comes() {
        let (mut r, mut s) = (ring(), secrets());
        let a = use_at(&mut r, 100 * S, 110 * S, &mut s);
        let b = use_at(&mut r, 100 * S + S / 2, 110 * S, &mut s);
        assert_eq!(a, b);
        let c = use_at(&mut r, 101 * S, 111 * S, &mut s);
        assert_ne!(a.0, c.0);
        assert_ne!(a.1, c.1);
        assert_eq!(r.find(a.0, 101 * S), Some(a.1));
    }

    #[test]
    fn a_key_is_found_until_the_latest_deadline_of_its_uses() {
        let (mut r, mut s) = (ring(), secrets());
        let short = use_at(&mut r, 100 * S, 103 * S, &mut s);
        let long = use_at(&mut r, 100 * S + 1, 132 * S, &mut s);
        assert_eq!(short, long, "the same key, its deadline pushed out");
        let shorter = use_at(&mut r, 100 * S + 2, 101 * S, &mut s);
        assert_eq!(short, shorter, "and never pulled in");
        assert!(r.find(short.0, 132 * S - 1).is_some());
        assert!(r.find(short.0, 132 * S).is_none());
    }

    #[test]
    fn a_sweep_zeroes_expired_keys_and_keeps_live_ones() {
        let (mut r, mut s) = (ring(), secrets());
        let old = use_at(&mut r, 100 * S, 102 * S, &mut s);
        let live = use_at(&mut r, 101 * S, 200 * S, &mut s);
        assert_ne!(old, live);
        assert_eq!(r.sweep(150 * S), 1);
        assert!(r.find(old.0, 0).is_none());
        // SAFETY: reads the ring's own bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref::<KeyRing>(&r).cast::<u8>(),
                std::mem::size_of::<KeyRing>(),
            )
        };
        assert!(
            !bytes.windows(32).any(|w| w == old.1),
            "erased bytes are gone"
        );
        assert!(bytes.windows(32).any(|w| w == live.1));
        assert_eq!(r.find(live.0, 150 * S), Some(live.1));
    }

    #[test]
    fn the_current_key_is_handed_out_without_a_new_secret_until_it_is_due() {
        let (mut r, mut s) = (ring(), secrets());
        assert_eq!(r.current_key(100 * S, 103 * S), None, "an empty ring");
        let a = r.key_for(100 * S, 101 * S, 103 * S, s());
        assert_eq!(r.current_key(100 * S + 1, 105 * S), Some(a));
        assert_eq!(
            r.find(a.0, 104 * S),
            Some(a.1),
            "its deadline moved to 105 s"
        );
        assert_eq!(
            r.current_key(101 * S, 106 * S),
            None,
            "past usable_until: a new key is due"
        );
    }

    #[test]
    fn an_expired_current_key_is_not_handed_out_again() {
        let (mut r, mut s) = (ring(), secrets());
        let a = r.key_for(100 * S, 200 * S, 101 * S, s());
        let b = use_at(&mut r, 102 * S, 110 * S, &mut s);
        assert_ne!(
            a.0, b.0,
            "past its deadline a key serves nobody, usable or not"
        );
    }

    #[test]
    fn an_id_from_another_run_or_an_overwritten_slot_finds_nothing() {
        let (mut r, mut s) = (ring(), secrets());
        let first = use_at(&mut r, 0, 3 * S, &mut s);
        assert!(r.find(first.0 + RING_SLOTS as KeyId, 0).is_none());
        assert!(r.find(0, 0).is_none());
        assert!(r.find(-first.0, 0).is_none());
        let mut now = 0;
        for _ in 0..RING_SLOTS {
            now += S;
            use_at(&mut r, now, now + 3 * S, &mut s);
        }
        assert!(r.find(first.0, 0).is_none(), "its slot went to a newer key");
    }
}
