//! The revocation backstop (contract rule 4).
//!
//! When `session_refresh` detects reuse it revokes the session in the
//! caller's transaction, but a caller may roll that transaction back (many
//! drivers do when the application raises on a bad status). So it also
//! starts a dynamic background worker carrying the session id, and never
//! waits for it. The worker's revoking UPDATE blocks on the row lock the
//! caller holds until the caller's transaction ends, then:
//!
//! * the caller committed: the session is already revoked, `WHERE revoked_at
//!   IS NULL` matches nothing, the worker does nothing;
//! * the caller rolled back: the session is live again, the worker revokes
//!   it, records the event and sends the NOTIFY in its own transaction.
//!
//! Either way the revocation, its event row and its NOTIFY happen exactly
//! once. A dynamic worker needs no preloading, only a free
//! `max_worker_processes` slot; without one the revocation stays in the
//! caller's transaction and a WARNING says so.

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;

use crate::clock::Micros;
use crate::session::{self, format_uuid};

const FUNCTION: &str = "pg_session_auth_backstop_main";

/// What the worker must do, packed into `bgw_extra` (at most 127 bytes).
#[derive(Debug, PartialEq, Eq)]
pub struct Job {
    pub session_id: [u8; 16],
    pub detected_at: Micros,
    pub presented_generation: i32,
    pub current_generation: i32,
}

impl Job {
    fn encode(&self) -> String {
        format!(
            "{} {} {} {}",
            hex::encode(self.session_id),
            self.detected_at,
            self.presented_generation,
            self.current_generation
        )
    }

    fn decode(extra: &str) -> Option<Job> {
        let mut parts = extra.split(' ');
        let mut session_id = [0u8; 16];
        hex::decode_to_slice(parts.next()?, &mut session_id).ok()?;
        let job = Job {
            session_id,
            detected_at: parts.next()?.parse().ok()?,
            presented_generation: parts.next()?.parse().ok()?,
            current_generation: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(job)
    }
}

/// Starts the backstop for `job`. Returns false if no worker slot was free.
pub fn launch(job: &Job) -> bool {
    // SAFETY: MyDatabaseId is set for every backend connected to a database.
    let database = unsafe { pg_sys::MyDatabaseId };
    BackgroundWorkerBuilder::new("pg_session_auth revocation backstop")
        .set_type("pg_session_auth backstop")
        .set_library("pg_session_auth")
        .set_function(FUNCTION)
        .set_argument(database.into_datum())
        .set_extra(&job.encode())
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .load_dynamic()
        .is_ok()
}

/// The worker: waits for the detecting transaction by blocking on its row
/// lock, then revokes if the session is still live.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_session_auth_backstop_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGTERM);
    // SAFETY: the argument was set from an Oid datum by `launch`.
    let database = unsafe { pg_sys::Oid::from_datum(arg, false) };
    let Some(job) = Job::decode(BackgroundWorker::get_extra()) else {
        log!("pg_session_auth backstop: malformed job, nothing done");
        return;
    };
    BackgroundWorker::connect_worker_to_spi_by_oid(database, None);
    let revoked = BackgroundWorker::transaction(|| {
        Spi::connect_mut(|client| session::revoke_for_reuse(client, &job))
    });
    if revoked {
        log!(
            "pg_session_auth: revoked session {} for refresh-token reuse after the detecting transaction rolled back",
            format_uuid(&job.session_id)
        );
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn jobs_round_trip_through_bgw_extra() {
        let job = Job {
            session_id: [0xab; 16],
            detected_at: -123_456_789,
            presented_generation: 3,
            current_generation: 7,
        };
        let extra = job.encode();
        assert!(extra.len() < 128);
        assert_eq!(Job::decode(&extra), Some(job));
        assert_eq!(Job::decode("zz 1 2 3"), None);
        assert_eq!(Job::decode(&format!("{extra} 9")), None);
        assert_eq!(Job::decode(""), None);
    }
}
