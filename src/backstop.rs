//! The revocation backstop (contract rule 4).
//!
//! When `session_refresh` detects reuse it revokes the session, records the
//! event and queues the NOTIFY in the caller's transaction. A caller may roll
//! that transaction back (many drivers do when the application raises on a
//! bad status), so the detection is also remembered in this backend, keyed
//! by the subtransaction that made it:
//!
//! * the (sub)transaction commits: the revocation committed with it, and the
//!   memory is dropped (or handed to the parent subtransaction);
//! * it aborts: a transaction callback starts a dynamic background worker
//!   carrying the detections, which revokes each session still live, with
//!   its event and NOTIFY, in a transaction of its own.
//!
//! So the revocation, its event row and its NOTIFY happen exactly once,
//! whichever way the caller ends. No worker waits on the caller (locks are
//! gone by the time one starts), and a committed detection costs none. A
//! dynamic worker needs no preloading, only a free `max_worker_processes`
//! slot; if none is free at abort, the detections are kept and the launch is
//! retried at this backend's next call of the extension, with a WARNING.

use std::cell::{Cell, RefCell};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;

use crate::clock::Micros;
use crate::session::{self, format_uuid};

const FUNCTION: &str = "pg_session_auth_backstop_main";

/// What the worker must do, packed into `bgw_extra` (at most 127 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub session_id: [u8; 16],
    pub detected_at: Micros,
    pub presented_generation: i32,
    pub current_generation: i32,
}

impl Job {
    /// 32 bytes as 43 characters of unpadded base64url.
    fn encode(&self) -> String {
        let mut raw = Vec::with_capacity(32);
        raw.extend_from_slice(&self.session_id);
        raw.extend_from_slice(&self.detected_at.to_be_bytes());
        raw.extend_from_slice(&self.presented_generation.to_be_bytes());
        raw.extend_from_slice(&self.current_generation.to_be_bytes());
        URL_SAFE_NO_PAD.encode(raw)
    }

    fn encode_all(jobs: &[Job]) -> String {
        jobs.iter().map(Job::encode).collect::<Vec<_>>().join(";")
    }

    fn decode_all(extra: &str) -> Option<Vec<Job>> {
        extra.split(';').map(Job::decode).collect()
    }

    fn decode(extra: &str) -> Option<Job> {
        let raw = URL_SAFE_NO_PAD.decode(extra).ok()?;
        if raw.len() != 32 {
            return None;
        }
        let mut session_id = [0u8; 16];
        session_id.copy_from_slice(&raw[..16]);
        Some(Job {
            session_id,
            detected_at: i64::from_be_bytes(raw[16..24].try_into().ok()?),
            presented_generation: i32::from_be_bytes(raw[24..28].try_into().ok()?),
            current_generation: i32::from_be_bytes(raw[28..32].try_into().ok()?),
        })
    }
}

/// Jobs per worker: `bgw_extra` holds at most 127 bytes.
const JOBS_PER_WORKER: usize = 2;

thread_local! {
    /// Detections of the current transaction, by subtransaction id, and
    /// detections whose worker could not be started yet.
    static PENDING: RefCell<Vec<(pg_sys::SubTransactionId, Job)>> = const { RefCell::new(Vec::new()) };
    static UNLAUNCHED: RefCell<Vec<Job>> = const { RefCell::new(Vec::new()) };
    static CALLBACKS_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Remembers a reuse revocation made in the current (sub)transaction, so
/// that an abort hands it to a worker.
pub fn remember(job: Job) {
    if !CALLBACKS_REGISTERED.with(Cell::get) {
        // SAFETY: registered once per backend; the callbacks live forever.
        unsafe {
            pg_sys::RegisterXactCallback(Some(on_xact_event), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(Some(on_subxact_event), std::ptr::null_mut());
        }
        CALLBACKS_REGISTERED.with(|c| c.set(true));
    }
    // SAFETY: reads the current subtransaction id.
    let subid = unsafe { pg_sys::GetCurrentSubTransactionId() };
    PENDING.with(|p| p.borrow_mut().push((subid, job)));
}

/// Retries launches that found no free worker slot. Cheap when there is
/// nothing to retry; called at the start of every writing call.
pub fn retry_unlaunched() {
    let jobs = UNLAUNCHED.with(|u| std::mem::take(&mut *u.borrow_mut()));
    if jobs.is_empty() {
        return;
    }
    let left = launch_all(jobs);
    if !left.is_empty() {
        ereport!(
            WARNING,
            PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            format!(
                "pg_session_auth: {} reuse revocation(s) rolled back and still waiting for a free background worker slot",
                left.len()
            ),
            "Raise max_worker_processes; the sessions stay live until then."
        );
        UNLAUNCHED.with(|u| u.borrow_mut().extend(left));
    }
}

unsafe extern "C-unwind" fn on_xact_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT | XACT_EVENT_PREPARE => {
            PENDING.with(|p| p.borrow_mut().clear());
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            let jobs: Vec<Job> =
                PENDING.with(|p| p.borrow_mut().drain(..).map(|(_, j)| j).collect());
            hand_over(jobs);
        }
        _ => {}
    }
}

unsafe extern "C-unwind" fn on_subxact_event(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    parent_subid: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    match event {
        SUBXACT_EVENT_COMMIT_SUB => PENDING.with(|p| {
            for (subid, _) in p.borrow_mut().iter_mut() {
                if *subid == my_subid {
                    *subid = parent_subid;
                }
            }
        }),
        SUBXACT_EVENT_ABORT_SUB => {
            // Subtransaction ids grow within a transaction: everything at or
            // above the aborted one belongs to it or to its children.
            let jobs: Vec<Job> = PENDING.with(|p| {
                let mut p = p.borrow_mut();
                let (aborted, kept): (Vec<_>, Vec<_>) =
                    p.drain(..).partition(|(s, _)| *s >= my_subid);
                *p = kept;
                aborted.into_iter().map(|(_, j)| j).collect()
            });
            hand_over(jobs);
        }
        _ => {}
    }
}

/// Called during abort processing: must not raise. What cannot be launched
/// now waits for `retry_unlaunched`.
fn hand_over(jobs: Vec<Job>) {
    if jobs.is_empty() {
        return;
    }
    let left = std::panic::catch_unwind(|| launch_all(jobs.clone())).unwrap_or(jobs);
    if !left.is_empty() {
        UNLAUNCHED.with(|u| u.borrow_mut().extend(left));
    }
}

/// Starts workers for `jobs`; returns the jobs no worker slot was free for.
fn launch_all(jobs: Vec<Job>) -> Vec<Job> {
    let mut left = Vec::new();
    for chunk in jobs.chunks(JOBS_PER_WORKER) {
        if !launch(chunk) {
            left.extend_from_slice(chunk);
        }
    }
    left
}

fn launch(jobs: &[Job]) -> bool {
    // SAFETY: MyDatabaseId is set for every backend connected to a database.
    let database = unsafe { pg_sys::MyDatabaseId };
    BackgroundWorkerBuilder::new("pg_session_auth revocation backstop")
        .set_type("pg_session_auth backstop")
        .set_library("pg_session_auth")
        .set_function(FUNCTION)
        .set_argument(database.into_datum())
        .set_extra(&Job::encode_all(jobs))
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .load_dynamic()
        .is_ok()
}

/// The worker: revokes every session of its jobs that is still live.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_session_auth_backstop_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGTERM);
    // SAFETY: the argument was set from an Oid datum by `launch`.
    let database = unsafe { pg_sys::Oid::from_datum(arg, false) };
    let Some(jobs) = Job::decode_all(BackgroundWorker::get_extra()) else {
        log!("pg_session_auth backstop: malformed job, nothing done");
        return;
    };
    BackgroundWorker::connect_worker_to_spi_by_oid(database, None);
    for job in &jobs {
        let revoked = BackgroundWorker::transaction(|| {
            Spi::run("SET LOCAL search_path = pg_catalog, pg_temp").ok();
            Spi::connect_mut(|client| session::revoke_for_reuse(client, job))
        });
        if revoked {
            log!(
                "pg_session_auth: revoked session {} for refresh-token reuse after the detecting transaction rolled back",
                format_uuid(&job.session_id)
            );
        }
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
        assert_eq!(Job::decode(&format!("{extra}AAAA")), None);
        assert_eq!(Job::decode(""), None);
        let two = Job::encode_all(&[
            Job {
                session_id: [0xff; 16],
                detected_at: i64::MIN,
                presented_generation: i32::MAX,
                current_generation: i32::MAX,
            },
            Job {
                session_id: [0; 16],
                detected_at: i64::MAX,
                presented_generation: i32::MIN,
                current_generation: i32::MIN,
            },
        ]);
        assert!(two.len() < 128, "{} bytes", two.len());
        assert_eq!(Job::decode_all(&two).map(|j| j.len()), Some(2));
    }
}
