//! Every statement the extension runs, prepared once per backend.
//!
//! Plans are kept with `SPI_keepplan`, so a call costs an executor run, not
//! a parse and plan. PostgreSQL's plan cache revalidates them if the tables
//! change (or the extension is dropped and created again). All names are
//! schema-qualified, and every statement runs with `search_path` pinned to
//! `pg_catalog, pg_temp` (the SECURITY DEFINER functions' SET clause, the
//! workers' session settings), so operators and functions resolve in
//! `pg_catalog` only.
//!
//! No parameter is ever a secret (a token, a key, a pair): `auto_explain`
//! prints the parameters of nested statements in custom plans (and, from
//! PostgreSQL 16, as "Query Parameters"). Digests are parameters: a reader
//! of the tables has them anyway.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::PgBuiltInOids as T;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiHeapTupleData, SpiTupleTable};
use pgrx::{pg_sys, FromDatum, IntoDatum, PgOid};

use crate::blacklist::{self, Blacklisted, Kept, ListedPair};
use crate::clock::Micros;
use crate::error;
use crate::ids::SessionId;
use crate::key_ring::KeyId;
use crate::session_row::{column_list, session_row_columns, SessionRow};
use crate::token::Parsed;

/// A statement and the types of its parameters.
pub struct Stmt {
    pub name: &'static str,
    pub sql: &'static str,
    pub args: &'static [T],
    /// Writers always take a fresh snapshot (READ COMMITTED) and may lock.
    /// Read-only statements run read-only: on the caller's snapshot while
    /// the transaction has written nothing (validate is STABLE), on a fresh
    /// one after that (pgrx's rule).
    pub writes: bool,
}

thread_local! {
    static PLANS: RefCell<HashMap<&'static str, Rc<OwnedPreparedStatement>>> =
        RefCell::new(HashMap::new());
    /// The memory context the running API call was entered in; see `connect`.
    static CALLER_CONTEXT: std::cell::Cell<pg_sys::MemoryContext> =
        const { std::cell::Cell::new(std::ptr::null_mut()) };
}

/// `Spi::connect_mut` for the API functions, with the values read from SPI
/// results kept in the memory context the call was entered in.
///
/// pgrx copies every value it reads from an SPI result into the parent of
/// SPI's own context, which for our (atomic) SPI connections is
/// `TopTransactionContext`: a loop of calls in one transaction kept every
/// call's values until the end (3,000 `session_list` calls held 900 MB). The
/// call's own context is right-sized: a function's per-call memory, or for a
/// set-returning function the memory of the whole scan, which its rows need.
pub fn connect<R>(body: impl FnOnce(&mut SpiClient<'_>) -> R) -> R {
    // SAFETY: reads the backend's current memory context.
    let caller = unsafe { pg_sys::CurrentMemoryContext };
    let _restore = CallerContext::enter(caller);
    pgrx::spi::Spi::connect_mut(body)
}

/// Sets `CALLER_CONTEXT` until dropped, on an error's unwinding too: a
/// context pointer left behind would name memory that the error's cleanup
/// has freed.
struct CallerContext {
    outer: pg_sys::MemoryContext,
}

impl CallerContext {
    fn enter(caller: pg_sys::MemoryContext) -> Self {
        CallerContext {
            outer: CALLER_CONTEXT.with(|c| c.replace(caller)),
        }
    }
}

impl Drop for CallerContext {
    fn drop(&mut self) {
        CALLER_CONTEXT.with(|c| c.set(self.outer));
    }
}

/// Runs `read` with a throwaway child of the caller's context current, so
/// that pgrx copies the values it reads into the caller's context (the
/// parent of the current one); outside `connect`, pgrx's default.
fn reading_into_caller<R>(read: impl FnOnce() -> R) -> R {
    let caller = CALLER_CONTEXT.with(std::cell::Cell::get);
    if caller.is_null() {
        return read();
    }
    // SAFETY: a child of a live context, made current for `read` only and
    // deleted after it; on an ERROR the transaction's cleanup resets the
    // current context, and the child goes with the caller's.
    unsafe {
        let child = pg_sys::AllocSetContextCreateExtended(
            caller,
            c"pg_session_auth read".as_ptr(),
            0,
            pg_sys::ALLOCSET_SMALL_INITSIZE as usize,
            pg_sys::ALLOCSET_SMALL_MAXSIZE as usize,
        );
        let previous = pg_sys::MemoryContextSwitchTo(child);
        let result = read();
        pg_sys::MemoryContextSwitchTo(previous);
        pg_sys::MemoryContextDelete(child);
        result
    }
}

fn plan(client: &SpiClient<'_>, stmt: &Stmt) -> Rc<OwnedPreparedStatement> {
    if let Some(plan) = PLANS.with(|p| p.borrow().get(stmt.name).cloned()) {
        return plan;
    }
    let oids: Vec<PgOid> = stmt.args.iter().map(|t| PgOid::BuiltIn(*t)).collect();
    let prepared = if stmt.writes {
        client.prepare_mut(stmt.sql, &oids)
    } else {
        client.prepare(stmt.sql, &oids)
    };
    let plan = Rc::new(
        prepared
            .unwrap_or_else(|e| error::internal(stmt.name, e))
            .keep(),
    );
    PLANS.with(|p| p.borrow_mut().insert(stmt.name, plan.clone()));
    plan
}

/// Runs a statement and hands its result to `read` while SPI still owns it.
pub fn run<'conn, R>(
    client: &mut SpiClient<'conn>,
    stmt: &Stmt,
    args: &[DatumWithOid<'_>],
    read: impl FnOnce(SpiTupleTable<'conn>) -> R,
) -> R {
    let plan = plan(client, stmt);
    let result = if stmt.writes {
        client.update(&*plan, None, args)
    } else {
        client.select(&*plan, None, args)
    };
    let table = result.unwrap_or_else(|e| error::internal(stmt.name, e));
    reading_into_caller(|| read(table))
}

/// Column `n` (1-based) of a row, NULL as `None`.
pub fn col<T: FromDatum + IntoDatum>(row: &SpiHeapTupleData<'_>, n: usize) -> Option<T> {
    row.get::<T>(n)
        .unwrap_or_else(|e| error::internal("reading a row", e))
}

/// Column `n` that the schema declares NOT NULL.
pub fn req<T: FromDatum + IntoDatum>(row: &SpiHeapTupleData<'_>, n: usize) -> T {
    col(row, n).unwrap_or_else(|| error::internal("reading a row", format!("column {n} is NULL")))
}

/// Helpers to turn Rust values into typed parameters.
pub fn bytes(b: &[u8]) -> DatumWithOid<'static> {
    // SAFETY: a bytea datum with the bytea type oid.
    unsafe { DatumWithOid::new(b, T::BYTEAOID.value()) }
}

pub fn ts(us: i64) -> DatumWithOid<'static> {
    // SAFETY: a TimestampTz is an int64 datum, passed with its own type oid.
    unsafe { DatumWithOid::new(us, T::TIMESTAMPTZOID.value()) }
}

pub fn opt_ts(us: Option<i64>) -> DatumWithOid<'static> {
    match us {
        Some(us) => ts(us),
        None => DatumWithOid::null_oid(T::TIMESTAMPTZOID.value()),
    }
}

pub fn uuid(id: &SessionId) -> DatumWithOid<'static> {
    pgrx::Uuid::from(*id).into()
}

pub fn opt_i32(v: Option<i32>) -> DatumWithOid<'static> {
    match v {
        Some(v) => v.into(),
        None => DatumWithOid::null_oid(T::INT4OID.value()),
    }
}

/// A timestamptz column as microseconds.
pub fn ts_col(row: &SpiHeapTupleData<'_>, n: usize) -> Option<i64> {
    col::<pgrx::datum::TimestampWithTimeZone>(row, n).map(|t| t.into_inner())
}

/// Rows a data-modifying statement touched.
pub fn affected(client: &mut SpiClient<'_>, stmt: &Stmt, args: &[DatumWithOid<'_>]) -> u64 {
    run(client, stmt, args, |t| t.len() as u64)
}

// ---------------------------------------------------------------------------
// The statements.

pub static LOAD_FOR_UPDATE: Stmt = Stmt {
    name: "load_for_update",
    sql: concat!(
        "SELECT ",
        session_row_columns!(column_list),
        " FROM session_auth.sessions WHERE session_id = $1 FOR UPDATE"
    ),
    args: &[T::UUIDOID],
    writes: true,
};

pub static LOAD_USER_FOR_UPDATE: Stmt = Stmt {
    name: "load_user_for_update",
    // One fixed lock order (session_id) for every multi-session operation.
    sql: concat!(
        "SELECT ",
        session_row_columns!(column_list),
        " FROM session_auth.sessions WHERE user_id = $1 AND revoked_at IS NULL \
         ORDER BY session_id FOR UPDATE"
    ),
    args: &[T::TEXTOID],
    writes: true,
};

pub static LIST_USER: Stmt = Stmt {
    name: "list_user",
    sql: concat!(
        "SELECT ",
        session_row_columns!(column_list),
        ", data FROM session_auth.sessions WHERE user_id = $1 AND revoked_at IS NULL"
    ),
    args: &[T::TEXTOID],
    writes: false,
};

/// The blacklisted pair of a session's generation (`blacklist`).
///
/// Run as a writer for a fresh snapshot, like the row lock before it: an
/// entry committed by a rotation after the calling statement began must be
/// seen, or a replayed ancestor would pass for `invalid` instead of reuse.
pub static FIND_BLACKLISTED: Stmt = Stmt {
    name: "find_blacklisted",
    sql: "SELECT generation, access_digest, access_expires_at, refresh_digest, \
          refresh_expires_at, revoked_at FROM session_auth.blacklist \
          WHERE session_id = $1 AND generation = $2",
    args: &[T::UUIDOID, T::INT4OID],
    writes: true,
};

/// All the blacklisted pairs of a session, for a token of 0.1.0 (which
/// names no generation); as `FIND_BLACKLISTED` otherwise.
pub static FIND_BLACKLISTED_LEGACY: Stmt = Stmt {
    name: "find_blacklisted_legacy",
    sql: "SELECT generation, access_digest, access_expires_at, refresh_digest, \
          refresh_expires_at, revoked_at FROM session_auth.blacklist WHERE session_id = $1",
    args: &[T::UUIDOID],
    writes: true,
};

pub static INSERT_SESSION: Stmt = Stmt {
    name: "insert_session",
    sql: "INSERT INTO session_auth.sessions (session_id, user_id, data, auth_level, \
          created_at, authenticated_at, last_refreshed_at, generation, access_digest, \
          access_expires_at, refresh_digest, refresh_expires_at, \
          absolute_expires_at, purge_after) \
          VALUES ($1, $2, $3, $4, $5, $5, $5, $11, $6, $7, $8, $9, $10, greatest($7, $9))",
    args: &[
        T::UUIDOID,
        T::TEXTOID,
        T::JSONBOID,
        T::INT4OID,
        T::TIMESTAMPTZOID,
        T::BYTEAOID,
        T::TIMESTAMPTZOID,
        T::BYTEAOID,
        T::TIMESTAMPTZOID,
        T::TIMESTAMPTZOID,
        T::INT4OID,
    ],
    writes: true,
};

/// Replaces the current pair and puts the old one on the blacklist, where
/// it is the parent of the new one (`lineage::identify`), in one statement.
/// It changes no indexed column (`purge_after` is a lower bound the purge
/// moves up; see PURGE_SESSIONS), so with the table's free space it is a
/// HOT update: no new index entries, a fraction of the WAL.
///
/// The row is rotated only if its current refresh digest and generation are
/// still `$15` and `$12` and it is not revoked: the caller either holds the
/// row lock or read the row without one (a refresh's fast path), and then a
/// concurrent rotation makes this statement change nothing (it returns no
/// row) instead of branching the lineage; the caller falls back to locking.
/// Every value taken from the row it read is fixed by those three columns.
///
/// The old pair goes to the blacklist as one row (`blacklist`), where it is
/// the new pair's parent: its access digest is kept even if that token has
/// expired already (the common case: a client refreshes once its access
/// token expired), so that it answers `expired` as the parent and `invalid`
/// once older. A refresh digest is kept while its token lives (always, for
/// a session alive enough to rotate), and a pair whose tokens have both
/// expired would get no row. No `ON CONFLICT`: a pair
/// reaches the blacklist exactly once, when it stops being current, so a
/// conflict cannot happen and the speculative-insertion check would be paid
/// on every rotation for nothing.
static ROTATE: Stmt = Stmt {
    name: "rotate",
    sql: "WITH rotated AS ( \
            UPDATE session_auth.sessions SET \
              generation = generation + 1, \
              grace_until = $3, retry_key_id = $4, \
              access_digest = $5, access_expires_at = $6, \
              refresh_digest = $7, refresh_expires_at = $8, last_refreshed_at = $2, \
              authenticated_at = coalesce($9, authenticated_at), \
              auth_level = greatest(auth_level, coalesce($10, auth_level)) \
            WHERE session_id = $1 AND refresh_digest = $15 AND generation = $12 \
              AND revoked_at IS NULL \
            RETURNING 1), \
          listed AS ( \
            INSERT INTO session_auth.blacklist (session_id, generation, \
              access_digest, access_expires_at, refresh_digest, refresh_expires_at, \
              revoked_at, expires_at, reason) \
            SELECT $1, $12, $11, $13, \
              CASE WHEN $16 > $2 THEN $15 END, CASE WHEN $16 > $2 THEN $16 END, \
              $2, greatest($13, $16), $14 \
            WHERE greatest($13, $16) > $2 AND EXISTS (SELECT FROM rotated)) \
          SELECT 1 FROM rotated",
    args: &[
        T::UUIDOID,
        T::TIMESTAMPTZOID,
        T::TIMESTAMPTZOID,
        T::INT4OID,
        T::BYTEAOID,
        T::TIMESTAMPTZOID,
        T::BYTEAOID,
        T::TIMESTAMPTZOID,
        T::TIMESTAMPTZOID,
        T::INT4OID,
        T::BYTEAOID,
        T::INT4OID,
        T::TIMESTAMPTZOID,
        T::TEXTOID,
        T::BYTEAOID,
        T::TIMESTAMPTZOID,
    ],
    writes: true,
};

/// What a rotation writes, by name (`ROTATE`'s parameters are bound from
/// it in `rotate`, beside the statement, and nowhere else).
pub struct RotateArgs<'a> {
    /// The row as the caller read it: its id, generation and current pair,
    /// which become the parent (and the guard against a concurrent change).
    pub row: &'a SessionRow,
    pub now: Micros,
    /// The end of the new pair's grace window, and the retry key it was
    /// derived with; `None` for a re-authentication (no grace).
    pub grace_until: Option<Micros>,
    pub retry_key_id: Option<KeyId>,
    pub new_access_digest: &'a [u8],
    pub new_access_expires_at: Micros,
    pub new_refresh_digest: &'a [u8],
    pub new_refresh_expires_at: Micros,
    /// A re-authentication's time and the level it asks for.
    pub authenticated_at: Option<Micros>,
    pub auth_level: Option<i32>,
    /// Why the old pair is blacklisted: `superseded` or `reauthenticated`.
    pub reason: &'static str,
}

/// Runs `ROTATE`; false if the row no longer holds the pair it was read with.
pub fn rotate(client: &mut SpiClient<'_>, r: &RotateArgs<'_>) -> bool {
    let old = r.row;
    let args = [
        uuid(&old.session_id),        // $1
        ts(r.now),                    // $2
        opt_ts(r.grace_until),        // $3
        opt_i32(r.retry_key_id),      // $4
        bytes(r.new_access_digest),   // $5
        ts(r.new_access_expires_at),  // $6
        bytes(r.new_refresh_digest),  // $7
        ts(r.new_refresh_expires_at), // $8
        opt_ts(r.authenticated_at),   // $9
        r.auth_level.into(),          // $10
        bytes(&old.access_digest),    // $11
        old.generation.into(),        // $12
        ts(old.access_expires_at),    // $13
        r.reason.into(),              // $14
        bytes(&old.refresh_digest),   // $15
        ts(old.refresh_expires_at),   // $16
    ];
    affected(client, &ROTATE, &args) == 1
}

/// Revokes live sessions by id, blacklists their current pairs and records
/// one event per session, in one statement. Returns what a NOTIFY needs,
/// the event's id included. `$3` is the event (and the revocation reason).
pub static REVOKE: Stmt = Stmt {
    name: "revoke",
    sql: "WITH r AS ( \
            UPDATE session_auth.sessions SET revoked_at = $2, revoked_reason = $3, \
              retry_key_id = NULL \
            WHERE session_id = ANY($1) AND revoked_at IS NULL \
            RETURNING session_id, user_id, generation, access_digest, access_expires_at, \
                      refresh_digest, refresh_expires_at), \
          b AS ( \
            INSERT INTO session_auth.blacklist (session_id, generation, \
              access_digest, access_expires_at, refresh_digest, refresh_expires_at, \
              revoked_at, expires_at, reason) \
            SELECT r.session_id, r.generation, \
              CASE WHEN r.access_expires_at > $2 THEN r.access_digest END, \
              CASE WHEN r.access_expires_at > $2 THEN r.access_expires_at END, \
              CASE WHEN r.refresh_expires_at > $2 THEN r.refresh_digest END, \
              CASE WHEN r.refresh_expires_at > $2 THEN r.refresh_expires_at END, \
              $2, greatest(r.access_expires_at, r.refresh_expires_at), $3 FROM r \
            WHERE greatest(r.access_expires_at, r.refresh_expires_at) > $2 \
            ON CONFLICT (session_id, generation) DO NOTHING), \
          e AS ( \
            INSERT INTO session_auth.events (event, at, session_id, user_id, details) \
            SELECT $3, $2, r.session_id, r.user_id, $4 FROM r \
            RETURNING session_id, user_id, event_id) \
          SELECT session_id, user_id, event_id FROM e ORDER BY session_id",
    args: &[T::UUIDARRAYOID, T::TIMESTAMPTZOID, T::TEXTOID, T::JSONBOID],
    writes: true,
};

/// Serialises logins of one user while a session cap applies, so two racing
/// logins cannot both see room under the cap: a row lock on one of 1024
/// slots of a private table, held until the transaction ends. Not an
/// advisory lock: those are open to every role that can connect, and 0.1.0's
/// let a CONNECT-only role stall a user's logins. Hash collisions only
/// serialise a little more.
pub static LOCK_USER_LOGINS: Stmt = Stmt {
    name: "lock_user_logins",
    sql: "SELECT FROM session_auth.login_locks \
          WHERE slot = pg_catalog.hashtext($1) & 1023 FOR UPDATE",
    args: &[T::TEXTOID],
    writes: true,
};

pub static INSERT_EVENT: Stmt = Stmt {
    name: "insert_event",
    sql: "INSERT INTO session_auth.events (event, at, session_id, user_id, details) \
          VALUES ($1, $2, $3, $4, $5) RETURNING event_id",
    args: &[
        T::TEXTOID,
        T::TIMESTAMPTZOID,
        T::UUIDOID,
        T::TEXTOID,
        T::JSONBOID,
    ],
    writes: true,
};

pub static SET_DATA: Stmt = Stmt {
    name: "set_data",
    sql: "UPDATE session_auth.sessions SET data = $2 WHERE session_id = $1",
    args: &[T::UUIDOID, T::JSONBOID],
    writes: true,
};

/// Purge batches: rows chosen in index order with `SKIP LOCKED`, so a batch
/// never waits for a row that validate or refresh holds, then deleted by
/// their (locked, so stable) ctids: a TID scan, where `key IN (subquery)`
/// would hash-join against a scan of the whole table.
/// `$1` is the cutoff on the indexed expiry column, `$2` the batch size.
macro_rules! purge_batch {
    ($name:literal, $table:literal, $expiry:literal) => {
        Stmt {
            name: $name,
            sql: concat!(
                "DELETE FROM session_auth.",
                $table,
                " WHERE ctid = ANY (ARRAY( ",
                "SELECT ctid FROM session_auth.",
                $table,
                " WHERE ",
                $expiry,
                " < $1 ",
                "ORDER BY ",
                $expiry,
                " LIMIT $2 FOR UPDATE SKIP LOCKED))"
            ),
            args: &[T::TIMESTAMPTZOID, T::INT4OID],
            writes: true,
        }
    };
}

pub static PURGE_BLACKLIST: Stmt = purge_batch!("purge_blacklist", "blacklist", "expires_at");
/// One batch of sessions due by `purge_after`, a lower bound of when every
/// token of the session has expired by its stored deadline: set at issue,
/// not moved by rotations (which stay HOT updates). The purge deletes the
/// rows whose tokens have all expired and moves `purge_after` up to the real
/// deadline on the others, which a later batch finds again when it passes:
/// one non-HOT update per session per idle period, in the worker, instead of
/// one per rotation. Returns `(deleted, moved)`.
pub static PURGE_SESSIONS: Stmt = Stmt {
    name: "purge_sessions",
    sql: "WITH due AS MATERIALIZED ( \
            SELECT ctid, greatest(access_expires_at, refresh_expires_at) < $1 AS expired \
            FROM session_auth.sessions WHERE purge_after < $1 \
            ORDER BY purge_after LIMIT $2 FOR UPDATE SKIP LOCKED), \
          gone AS ( \
            DELETE FROM session_auth.sessions \
            WHERE ctid = ANY (ARRAY(SELECT ctid FROM due WHERE expired)) RETURNING 1), \
          moved AS ( \
            UPDATE session_auth.sessions \
            SET purge_after = greatest(access_expires_at, refresh_expires_at) \
            WHERE ctid = ANY (ARRAY(SELECT ctid FROM due WHERE NOT expired)) RETURNING 1) \
          SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM moved)",
    args: &[T::TIMESTAMPTZOID, T::INT4OID],
    writes: true,
};
pub static PURGE_EVENTS: Stmt = purge_batch!("purge_events", "events", "at");

/// Erases the retry keys whose every grace window is over, and with them
/// the means to derive any pair made with them (see `retry_pair`).
pub static ERASE_RETRY_KEYS: Stmt = Stmt {
    name: "erase_retry_keys",
    sql: "DELETE FROM session_auth.retry_keys WHERE key_id = ANY (ARRAY( \
            SELECT key_id FROM session_auth.retry_keys WHERE erase_after < $1 \
            FOR UPDATE SKIP LOCKED))",
    args: &[T::TIMESTAMPTZOID],
    writes: true,
};

/// A new retry key. Its secret is made here, from PostgreSQL's strong random
/// source (`gen_random_uuid()` reads it, 122 bits each), never passed in: a
/// parameter could show in a log or a plan. Three uuids hashed to 256 bits.
pub static INSERT_RETRY_KEY: Stmt = Stmt {
    name: "insert_retry_key",
    sql: "INSERT INTO session_auth.retry_keys (key_id, secret, erase_after) \
          VALUES ($1, pg_catalog.sha256( \
                    pg_catalog.uuid_send(pg_catalog.gen_random_uuid()) \
                    || pg_catalog.uuid_send(pg_catalog.gen_random_uuid()) \
                    || pg_catalog.uuid_send(pg_catalog.gen_random_uuid())), $2) \
          ON CONFLICT (key_id) DO NOTHING \
          RETURNING secret",
    args: &[T::INT4OID, T::TIMESTAMPTZOID],
    writes: true,
};

/// Run as a writer for a fresh snapshot: the key may have been committed,
/// with the rotation that used it, after the calling statement began.
pub static FIND_RETRY_KEY: Stmt = Stmt {
    name: "find_retry_key",
    sql: "SELECT secret FROM session_auth.retry_keys WHERE key_id = $1",
    args: &[T::INT4OID],
    writes: true,
};

/// The backstop's lock on a session it must make sure is revoked: `SKIP
/// LOCKED`, so it never waits for a caller. No row: locked, or gone.
pub static LOCK_SESSION_NOWAIT: Stmt = Stmt {
    name: "lock_session_nowait",
    sql: "SELECT revoked_at IS NOT NULL FROM session_auth.sessions \
          WHERE session_id = $1 FOR UPDATE SKIP LOCKED",
    args: &[T::UUIDOID],
    writes: true,
};

/// Takes, before a backstop revocation is dated, the locks its statement
/// needs on every table it writes: the date is then when it took effect,
/// not when a DBA's lock (or `lock_timeout`) let it through.
pub static LOCK_REVOCATION_TABLES: Stmt = Stmt {
    name: "lock_revocation_tables",
    sql: "LOCK TABLE session_auth.sessions, session_auth.blacklist, session_auth.events \
          IN ROW EXCLUSIVE MODE",
    args: &[],
    writes: true,
};

pub static SESSION_EXISTS: Stmt = Stmt {
    name: "session_exists",
    sql: "SELECT EXISTS (SELECT FROM session_auth.sessions WHERE session_id = $1)",
    args: &[T::UUIDOID],
    writes: true,
};

/// Records a purge pass unless another one is recording right now.
pub static RECORD_PURGE: Stmt = Stmt {
    name: "record_purge",
    sql: "UPDATE session_auth.purge_status p SET last_run_at = $1, source = $2, \
            blacklist_removed = $3, sessions_removed = $4, events_removed = $5, \
            batches = $6, duration = pg_catalog.make_interval(secs => $7) \
          FROM (SELECT singleton FROM session_auth.purge_status \
                FOR UPDATE SKIP LOCKED) AS free \
          WHERE p.singleton = free.singleton",
    args: &[
        T::TIMESTAMPTZOID,
        T::TEXTOID,
        T::INT8OID,
        T::INT8OID,
        T::INT8OID,
        T::INT4OID,
        T::FLOAT8OID,
    ],
    writes: true,
};

// ---------------------------------------------------------------------------
// Rows.

pub fn first_row<'conn, R>(
    mut table: SpiTupleTable<'conn>,
    read: impl FnOnce(&SpiHeapTupleData<'conn>) -> R,
) -> Option<R> {
    table.next().map(|row| read(&row))
}

/// The blacklist entry of the presented token (`blacklist`), read with a
/// fresh snapshot.
pub fn find_blacklisted(client: &mut SpiClient<'_>, parsed: &Parsed) -> Option<Blacklisted> {
    let read = |t: SpiTupleTable<'_>| {
        let pairs: Vec<ListedPair> = t.map(|r| read_listed_pair(&r)).collect();
        blacklist::find(parsed, pairs)
    };
    match parsed.generation {
        Some(generation) => run(
            client,
            &FIND_BLACKLISTED,
            &[uuid(&parsed.session), generation.into()],
            read,
        ),
        None => run(
            client,
            &FIND_BLACKLISTED_LEGACY,
            &[uuid(&parsed.session)],
            read,
        ),
    }
}

fn read_listed_pair(r: &SpiHeapTupleData<'_>) -> ListedPair {
    let kept = |digest: usize| {
        Some(Kept {
            digest: col::<Vec<u8>>(r, digest)?,
            expires_at: ts_col(r, digest + 1)?,
        })
    };
    ListedPair {
        generation: req(r, 1),
        access: kept(2),
        refresh: kept(4),
        listed_at: ts_col(r, 6).unwrap_or_else(|| {
            crate::error::internal("reading the blacklist", "revoked_at is NULL")
        }),
    }
}
