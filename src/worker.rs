//! The purge worker: started by the postmaster when the library is
//! preloaded, it serves `session_auth.database`.
//!
//! * Every `session_auth.purge_interval` a pass: purge batches, each in its
//!   own transaction with a short `lock_timeout`, until a batch comes back
//!   short, pausing after each batch nine times as long as it took (a backlog
//!   is worked off at no more than a tenth of one core); then a VACUUM of the
//!   tables that need one (see `vacuum`).
//! * Every second, and when a detecting backend wakes it: erase the retry
//!   keys whose grace windows are over (see `retry_pair`), apply the pending
//!   reuse revocations of its database, and start a backstop worker for each
//!   other database that has some (see `backstop`).
//!
//! Signals are PostgreSQL's own (see `bgworker`): SIGTERM ends it within a
//! second wherever it is, and nothing starts after it; SIGHUP reloads the
//! settings without starting a pass; a cancel cancels the statement
//! running, if any. An error in a pass is logged and the pass is tried again
//! next period. It waits quietly while the extension is not created in its
//! database, and on a standby it does not run at all (it starts when
//! recovery ends, so after a promotion).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime,
    DynamicBackgroundWorker,
};
use pgrx::prelude::*;

use crate::backstop;
use crate::bgworker::{self, in_transaction};
use crate::clock::statement_now;
use crate::extension;
use crate::gucs;
use crate::pending;
use crate::purge::{self, Removed};
use crate::retry_keys;
use crate::vacuum;

pub const NAME: &str = "pg_session_auth purge";

/// How often the worker erases expired retry keys and looks for pending
/// revocations, whatever the purge interval.
const TICK: Duration = Duration::from_secs(1);

/// After a VACUUM that failed, the worker leaves VACUUM alone for this long.
const VACUUM_BACKOFF: Duration = Duration::from_secs(60);

/// Registers the worker; only possible while preloading.
pub fn register() {
    BackgroundWorkerBuilder::new(NAME)
        .set_type(NAME)
        .set_library("pg_session_auth")
        .set_function("pg_session_auth_purge_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_session_auth_purge_main(_arg: pg_sys::Datum) {
    bgworker::setup_signals();
    let database = gucs::worker_database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    log!("{NAME}: serving database \"{database}\"");
    if let Err(e) = bgworker::pin_session_settings() {
        // Without its settings the worker could be fooled (search_path) or
        // stalled (read-only defaults): stop, and let the postmaster start
        // it again in 5 s (a worker that returns, exit code 0, is never
        // restarted).
        log!("{NAME}: could not set up its session, stopping: {e}");
        // SAFETY: ends this process the way PostgreSQL's own code does.
        unsafe { pg_sys::proc_exit(1) };
    }
    // The worker's own VACUUMs yield like autovacuum's (see `vacuum`).
    if let Err(e) = in_transaction(|| Spi::run("SET vacuum_cost_delay = '2ms'")) {
        log!("{NAME}: {e}");
    }
    backstop::register_purge_worker();

    let mut state = State::new();
    loop {
        let now = Instant::now();
        // The key ring is the whole server's: swept whatever the state of
        // this database.
        retry_keys::sweep_ring();
        if state.extension_ready(&database) {
            tick();
            if now >= state.last_pass + interval() {
                state.last_pass = now;
                run_pass(&mut state);
                // A background worker has no idle loop to send its statistics;
                // the purge's deletions must be counted before `vacuum_due`
                // reads them.
                // SAFETY: between transactions, as PostgresMain calls it.
                unsafe { pg_sys::pgstat_report_stat(true) };
                state.vacuum_if_due();
            }
        }
        state.supervise_other_databases();
        // A reload (SIGHUP) only wakes the loop: the next pass still comes
        // one (possibly new) interval after the last one.
        let until_pass = (state.last_pass + interval()).saturating_duration_since(Instant::now());
        bgworker::sleep(until_pass.min(TICK));
    }
}

struct State {
    /// When the last pass started; the first pass comes as soon as the
    /// extension exists.
    last_pass: Instant,
    waiting_logged: bool,
    vacuum_paused_until: Option<Instant>,
    /// Backstop workers started for other databases, by database.
    backstops: HashMap<pg_sys::Oid, DynamicBackgroundWorker>,
    /// Where the backstops' handles are allocated: reset whenever none is
    /// left, so a long run of launches does not grow the worker.
    handles: pg_sys::MemoryContext,
    /// Per database whose records outlived a backstop (a caller still holds
    /// the rows): when to try again, the current delay, and how many
    /// records there were.
    backoff: HashMap<pg_sys::Oid, (Instant, Duration, usize)>,
    /// When the worker last said that records wait for a free slot.
    slot_shortage_logged: Option<Instant>,
}

impl State {
    fn new() -> Self {
        State {
            last_pass: Instant::now()
                .checked_sub(interval())
                .unwrap_or_else(Instant::now),
            waiting_logged: false,
            vacuum_paused_until: None,
            backstops: HashMap::new(),
            handles: std::ptr::null_mut(),
            backoff: HashMap::new(),
            slot_shortage_logged: None,
        }
    }

    /// Whether the extension exists in the worker's database, at the
    /// library's version; says once what it waits for when not.
    fn extension_ready(&mut self, database: &str) -> bool {
        match in_transaction(extension::sql_version) {
            Ok(Some(version)) if version == extension::LIBRARY_VERSION => {
                self.waiting_logged = false;
                true
            }
            Ok(found) => {
                if !self.waiting_logged {
                    match found {
                        None => log!(
                            "{NAME}: waiting for CREATE EXTENSION pg_session_auth in \"{database}\""
                        ),
                        Some(version) => log!(
                            "{NAME}: waiting for ALTER EXTENSION pg_session_auth UPDATE in \"{database}\" \
                             (its SQL objects are version {version}, the library {})",
                            extension::LIBRARY_VERSION
                        ),
                    }
                    self.waiting_logged = true;
                }
                false
            }
            Err(e) => {
                log!("{NAME}: {e}");
                false
            }
        }
    }

    /// Between two batches of a pass: what the tick does, so that a long
    /// pass delays no pending revocation by more than a batch.
    fn between_batches(&mut self) {
        retry_keys::sweep_ring();
        backstop::apply_pending();
        self.supervise_other_databases();
    }

    fn vacuum_if_due(&mut self) {
        if self.vacuum_paused_until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        // A VACUUM can run for minutes, and it cannot pause for a pending
        // revocation: not while one waits in this database.
        // SAFETY: set once the worker is connected.
        if !pending::of_database(unsafe { pg_sys::MyDatabaseId }).is_empty() {
            return;
        }
        if !vacuum_due() {
            self.vacuum_paused_until = Some(Instant::now() + VACUUM_BACKOFF);
        }
    }

    /// Starts a backstop worker for each other database with pending reuse
    /// revocations that has none running.
    fn supervise_other_databases(&mut self) {
        // SAFETY: set once the worker is connected.
        let own = unsafe { pg_sys::MyDatabaseId };
        let mut waiting: HashMap<pg_sys::Oid, usize> = HashMap::new();
        for (_, d) in pending::all() {
            if d.database != own {
                *waiting.entry(d.database).or_default() += 1;
            }
        }
        let finished: Vec<pg_sys::Oid> = self
            .backstops
            .iter()
            .filter(|(_, handle)| {
                matches!(
                    handle.pid(),
                    Err(BackgroundWorkerStatus::Stopped | BackgroundWorkerStatus::PostmasterDied)
                )
            })
            .map(|(db, _)| *db)
            .collect();
        for database in finished {
            self.backstops.remove(&database);
            if let Some(&count) = waiting.get(&database) {
                self.back_off(database, count);
            }
        }
        if self.backstops.is_empty() && !self.handles.is_null() {
            // SAFETY: no handle allocated in it is left.
            unsafe { pg_sys::MemoryContextReset(self.handles) };
        }
        self.backoff.retain(|db, _| waiting.contains_key(db));
        for (database, count) in waiting {
            let due = self
                .backoff
                .get(&database)
                .is_none_or(|&(at, _, last)| Instant::now() >= at || count != last);
            if self.backstops.contains_key(&database) || !due {
                continue;
            }
            if !database_accepts_workers(database) {
                continue;
            }
            match self.launch(database) {
                Some(handle) => {
                    self.backstops.insert(database, handle);
                }
                None => self.log_slot_shortage(database, count),
            }
        }
    }

    /// Starts a backstop for `database`, its handle in `handles`.
    fn launch(&mut self, database: pg_sys::Oid) -> Option<DynamicBackgroundWorker> {
        // SAFETY: a child of TopMemoryContext, made once and kept; current
        // only for the launch.
        unsafe {
            if self.handles.is_null() {
                self.handles = pg_sys::AllocSetContextCreateExtended(
                    pg_sys::TopMemoryContext,
                    c"pg_session_auth backstop handles".as_ptr(),
                    0,
                    pg_sys::ALLOCSET_SMALL_INITSIZE as usize,
                    pg_sys::ALLOCSET_SMALL_MAXSIZE as usize,
                );
            }
            let previous = pg_sys::MemoryContextSwitchTo(self.handles);
            let handle = backstop::launch(database);
            pg_sys::MemoryContextSwitchTo(previous);
            handle
        }
    }

    /// A backstop finished and `count` records of its database are left:
    /// rows a caller holds. Try again after a delay that doubles (1 s to
    /// 30 s) while nothing changes, so a long prepared transaction does not
    /// cost a process start every second.
    fn back_off(&mut self, database: pg_sys::Oid, count: usize) {
        let delay = match self.backoff.get(&database) {
            Some(&(_, delay, last)) if last == count => (delay * 2).min(Duration::from_secs(30)),
            _ => TICK,
        };
        self.backoff
            .insert(database, (Instant::now() + delay, delay, count));
    }

    fn log_slot_shortage(&mut self, database: pg_sys::Oid, count: usize) {
        if self
            .slot_shortage_logged
            .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        self.slot_shortage_logged = Some(Instant::now());
        log!(
            "{NAME}: {count} reuse revocation(s) of database {} wait for a free background worker slot (max_worker_processes); they are kept and retried every second",
            u32::from(database)
        );
    }
}

/// Whether a backstop can connect to `database`; records of a database
/// that no longer exists are dropped.
fn database_accepts_workers(database: pg_sys::Oid) -> bool {
    let state: Result<Option<bool>, String> = in_transaction(|| {
        Spi::get_one_with_args::<bool>(
            "SELECT datallowconn FROM pg_catalog.pg_database WHERE oid OPERATOR(pg_catalog.=) $1",
            &[database.into()],
        )
        .ok()
        .flatten()
    });
    match state {
        Ok(Some(allowed)) => allowed,
        Ok(None) => {
            for (path, d) in pending::of_database(database) {
                log!(
                    "{NAME}: database {} is gone; dropping its pending revocation of session {}",
                    u32::from(database),
                    d.session_id
                );
                pending::done(&path);
            }
            false
        }
        Err(e) => {
            log!("{NAME}: {e}");
            false
        }
    }
}

fn interval() -> Duration {
    Duration::from_millis(u64::try_from(gucs::PURGE_INTERVAL.get()).unwrap_or(60_000))
}

/// Erases expired retry key rows (left from a run without preloading) and
/// applies this database's pending reuse revocations. Nothing waits long on
/// a DBA's lock.
fn tick() {
    if let Err(e) = in_transaction(|| {
        Spi::run("SET LOCAL lock_timeout = '1s'").ok();
        Spi::connect_mut(|client| retry_keys::erase_expired_now(client, statement_now()))
    }) {
        log!("{NAME}: erasing retry keys: {e}");
    }
    backstop::apply_pending();
}

/// Time spent working per time spent pausing, between the batches of one
/// pass: the worker is busy at most 1 / (1 + PAUSE_PER_WORK) of the time.
const PAUSE_PER_WORK: u32 = 9;

/// The pause after a batch that took `work`; at least a millisecond, so a
/// fast batch still yields, and at most a second, so a slow one (waiting on
/// a lock, say) does not stretch the pass further.
fn pause_after(work: Duration) -> Duration {
    (work * PAUSE_PER_WORK).clamp(Duration::from_millis(1), Duration::from_secs(1))
}

/// One pass: batches until one comes back short, or an error.
fn run_pass(state: &mut State) {
    let started = Instant::now();
    let batch_size = purge::batch_size();
    let mut removed = Removed::default();
    let mut batches = 0;
    loop {
        let batch_started = Instant::now();
        let result = in_transaction(|| {
            Spi::run("SET LOCAL lock_timeout = '1s'").ok();
            Spi::connect_mut(|client| purge::batch(client, statement_now(), batch_size))
        });
        match result {
            Ok(batch) => {
                batches += 1;
                removed.add(batch);
                if batch.drained(u64::try_from(batch_size).unwrap_or(0)) {
                    break;
                }
            }
            Err(e) => {
                log!("{NAME}: pass failed after {batches} batches, retrying next period: {e}");
                break;
            }
        }
        // A backlog is worked off at a bounded share of one core, so that
        // the hot path keeps its latency while the purge catches up. SIGTERM
        // ends the process in here.
        bgworker::sleep(pause_after(batch_started.elapsed()));
        state.between_batches();
    }
    let _ = in_transaction(|| {
        Spi::run("SET LOCAL lock_timeout = '1s'").ok();
        Spi::connect_mut(|client| purge::record(client, "worker", removed, batches, started))
    });
    if removed.total() > 0 {
        log!(
            "{NAME}: removed {} blacklist entries, {} sessions, {} events in {} batches, {:.3} s",
            removed.blacklist,
            removed.sessions,
            removed.events,
            batches,
            started.elapsed().as_secs_f64()
        );
    }
}

/// VACUUMs the extension's tables that have enough dead row versions;
/// false if that failed.
fn vacuum_due() -> bool {
    let due = in_transaction(|| {
        Spi::connect(|client| {
            client
                .select(vacuum::DUE_SQL, None, &[])
                .map(|t| {
                    t.filter_map(|r| r.get::<String>(1).ok().flatten())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
    });
    let due = match due {
        Ok(due) => due,
        Err(e) => {
            log!("{NAME}: {e}");
            return false;
        }
    };
    let Some(sql) = vacuum::statement(&due) else {
        return true;
    };
    let before = vacuum_counts(&due);
    let started = Instant::now();
    let result = PgTryBuilder::new(|| {
        // SAFETY: between transactions, in this background worker.
        unsafe { vacuum::run_top_level(&sql) };
        Ok(())
    })
    .catch_others(|error| {
        // SAFETY: ends the failed VACUUM's transaction, then its memory.
        unsafe {
            pg_sys::AbortCurrentTransaction();
            vacuum::after_error();
        }
        Err(bgworker::describe(&error))
    })
    .execute();
    let tables = due.join(", ");
    match result {
        Ok(()) => {
            // SKIP_LOCKED passes over a table another VACUUM has: say so,
            // rather than claim it was vacuumed.
            let after = vacuum_counts(&due);
            let (done, skipped): (Vec<_>, Vec<_>) = due
                .iter()
                .zip(before.iter().zip(after.iter()))
                .partition(|(_, (b, a))| a > b || **b < 0 || **a < 0);
            let names = |v: &[(&String, (&i64, &i64))]| {
                v.iter()
                    .map(|(t, _)| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if !done.is_empty() {
                log!(
                    "{NAME}: vacuumed {} in {:.3} s",
                    names(&done),
                    started.elapsed().as_secs_f64()
                );
            }
            if !skipped.is_empty() && skip_log_due() {
                log!(
                    "{NAME}: skipped VACUUM of {} (another VACUUM or a lock holds it; said at most once a minute)",
                    names(&skipped)
                );
            }
            true
        }
        Err(e) => {
            log!(
                "{NAME}: VACUUM of {tables} failed, not trying again for {} s: {e}",
                VACUUM_BACKOFF.as_secs()
            );
            false
        }
    }
}

/// How many times each table has been vacuumed, from the cumulative
/// statistics (-1 where they cannot be read): compared before and after a
/// VACUUM, it tells the tables vacuumed from those SKIP_LOCKED passed over.
fn vacuum_counts(tables: &[String]) -> Vec<i64> {
    let counts = in_transaction(|| {
        Spi::connect(|client| {
            tables
                .iter()
                .map(|table| {
                    client
                        .select(
                            "SELECT pg_catalog.pg_stat_get_vacuum_count(\
                             $1::pg_catalog.text::pg_catalog.regclass::pg_catalog.oid)",
                            None,
                            &[table.as_str().into()],
                        )
                        .ok()
                        .and_then(|t| t.first().get_one::<i64>().ok().flatten())
                        .unwrap_or(-1)
                })
                .collect::<Vec<_>>()
        })
    });
    counts.unwrap_or_else(|_| vec![-1; tables.len()])
}

thread_local! {
    static SKIP_LOGGED_AT: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// Whether to log a skipped VACUUM now: autovacuum can hold a table for
/// minutes, and a line after every pass would bury the log.
fn skip_log_due() -> bool {
    SKIP_LOGGED_AT.with(|at| {
        let due = at
            .get()
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
        if due {
            at.set(Some(Instant::now()));
        }
        due
    })
}
