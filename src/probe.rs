//! Direct primary-key probes for the read-only hot path (`session_validate`).
//!
//! A validate is one lookup of a session row by its primary key, and rarely
//! a second one of the blacklist by digest. Going through SPI would cost a
//! connect, an executor start and end, and a `SET search_path` push and pop
//! per call; a probe opens the index, fetches one tuple under the caller's
//! snapshot and copies out the columns it needs. It runs no SQL, so no
//! `search_path`, operator or function can be substituted under it, and it
//! switches to the extension owner's user id (the tables' owner) for the
//! duration, as a SECURITY DEFINER function would.
//!
//! Relations are found by name in the `session_auth` schema through the
//! syscache on every call (cheap, and never stale after DROP/CREATE
//! EXTENSION); column numbers are cached per relation oid.

use std::cell::RefCell;
use std::ffi::CStr;
use std::rc::Rc;

use pgrx::pg_sys::{self, Datum, Oid};
use pgrx::{FromDatum, IntoDatum};

use crate::jsonb::RawJsonb;

use crate::store::{Blacklisted, SessionRow};

const SCHEMA: &CStr = c"session_auth";

/// Column names of `SessionRow`, in the order `read_row` expects (the same
/// order as `store::session_columns!`, which a test checks), then `data`.
pub const SESSION_COLUMNS: [&CStr; ROW_COLUMNS + 1] = [
    c"session_id",
    c"user_id",
    c"auth_level",
    c"created_at",
    c"authenticated_at",
    c"last_refreshed_at",
    c"generation",
    c"access_digest",
    c"access_issued_at",
    c"access_expires_at",
    c"refresh_digest",
    c"refresh_expires_at",
    c"absolute_expires_at",
    c"parent_access_digest",
    c"parent_access_expires_at",
    c"parent_refresh_digest",
    c"rotated_at",
    c"grace_until",
    c"retry_pair",
    c"revoked_at",
    c"parent_refresh_expires_at",
    c"data",
];

const ROW_COLUMNS: usize = crate::store::SESSION_COLUMNS;

const BLACKLIST_COLUMNS: [&CStr; 4] = [c"session_id", c"kind", c"generation", c"expires_at"];

thread_local! {
    /// (relation oid, attribute numbers) per probed table.
    static ATTNUMS: RefCell<Vec<(Oid, Rc<[usize]>)>> = const { RefCell::new(Vec::new()) };
}

/// The session row and its data, or `None` if there is no such session (or
/// the extension's schema is gone).
pub fn session(session_id: &[u8; 16]) -> Option<(SessionRow, RawJsonb)> {
    probe_session(session_id, &SESSION_COLUMNS, |v| {
        // SAFETY: columns in SESSION_COLUMNS order, typed as the table.
        unsafe { (read_row(v), get::<RawJsonb>(v, ROW_COLUMNS)) }
    })
}

/// The session row without its data (writers check a token with it before
/// they lock anything).
pub fn session_row(session_id: &[u8; 16]) -> Option<SessionRow> {
    probe_session(session_id, &SESSION_COLUMNS[..ROW_COLUMNS], |v| {
        // SAFETY: columns in SESSION_COLUMNS order, typed as the table.
        unsafe { read_row(v) }
    })
}

fn probe_session<R>(
    session_id: &[u8; 16],
    columns: &[&CStr],
    read: impl FnOnce(Values<'_>) -> R,
) -> Option<R> {
    let key = pgrx::Uuid::from_bytes(*session_id).into_datum()?;
    probe(
        c"sessions",
        c"sessions_pkey",
        pg_sys::F_UUID_EQ,
        key,
        columns,
        read,
    )
}

/// The blacklist entry for `digest` if it belongs to `session_id`.
pub fn blacklisted(digest: &[u8], session_id: &[u8; 16]) -> Option<Blacklisted> {
    let key_datum = digest.into_datum()?;
    let entry = probe(
        c"blacklist",
        c"blacklist_pkey",
        pg_sys::F_BYTEAEQ,
        key_datum,
        &BLACKLIST_COLUMNS,
        |v| {
            // SAFETY: columns in BLACKLIST_COLUMNS order, typed as the table.
            unsafe {
                let id: pgrx::Uuid = get(v, 0);
                (
                    *id.as_bytes(),
                    Blacklisted {
                        kind: get(v, 1),
                        generation: get(v, 2),
                        expires_at: get_ts(v, 3),
                    },
                )
            }
        },
    )?;
    (&entry.0 == session_id).then_some(entry.1)
}

/// Values of one fetched tuple, by position in the requested column list.
type Values<'a> = &'a [(Datum, bool)];

/// Looks `key` up in `index` of `table` (both in `session_auth`) and hands
/// the requested columns of the visible tuple, if any, to `read`, which must
/// copy what it keeps: the tuple's buffer is released afterwards.
fn probe<R>(
    table: &CStr,
    index: &CStr,
    equality: u32,
    key: Datum,
    columns: &[&CStr],
    read: impl FnOnce(Values<'_>) -> R,
) -> Option<R> {
    // SAFETY: standard catalog lookups and an index scan under the active
    // snapshot, bracketed by open/close; errors unwind through PostgreSQL,
    // which releases the relations, the scan and the user id at abort.
    unsafe {
        let namespace = pg_sys::get_namespace_oid(SCHEMA.as_ptr(), true);
        if namespace == pg_sys::InvalidOid {
            return None;
        }
        let table_oid = pg_sys::get_relname_relid(table.as_ptr(), namespace);
        let index_oid = pg_sys::get_relname_relid(index.as_ptr(), namespace);
        if table_oid == pg_sys::InvalidOid || index_oid == pg_sys::InvalidOid {
            return None;
        }
        let attnums = attnums(table_oid, columns);

        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        let rel = pg_sys::table_open(table_oid, lock);
        let _owner = OwnerRights::switch_to((*(*rel).rd_rel).relowner);
        let idx = pg_sys::index_open(index_oid, lock);
        let snapshot = if pg_sys::ActiveSnapshotSet() {
            pg_sys::GetActiveSnapshot()
        } else {
            pg_sys::GetTransactionSnapshot()
        };
        let mut scankey = pg_sys::ScanKeyData::default();
        pg_sys::ScanKeyInit(
            &mut scankey,
            1,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            pg_sys::RegProcedure::from(equality),
            key,
        );
        let scan = pg_sys::index_beginscan(rel, idx, snapshot, 1, 0);
        pg_sys::index_rescan(scan, &mut scankey, 1, std::ptr::null_mut(), 0);
        let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
        let result = if pg_sys::index_getnext_slot(
            scan,
            pg_sys::ScanDirection::ForwardScanDirection,
            slot,
        ) {
            pg_sys::slot_getallattrs(slot);
            let values: Vec<(Datum, bool)> = attnums
                .iter()
                .map(|&n| (*(*slot).tts_values.add(n), *(*slot).tts_isnull.add(n)))
                .collect();
            Some(read(&values))
        } else {
            None
        };
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::index_endscan(scan);
        // Keep the locks until the transaction ends, as the executor does.
        pg_sys::index_close(idx, pg_sys::NoLock as pg_sys::LOCKMODE);
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        result
    }
}

/// Zero-based attribute indexes of `columns` in `table_oid`, cached (shared,
/// not copied, on the hot path).
unsafe fn attnums(table_oid: Oid, columns: &[&CStr]) -> Rc<[usize]> {
    let cached = ATTNUMS.with(|a| {
        a.borrow()
            .iter()
            .find(|(oid, v)| *oid == table_oid && v.len() == columns.len())
            .map(|(_, v)| Rc::clone(v))
    });
    if let Some(v) = cached {
        return v;
    }
    let found: Rc<[usize]> = columns
        .iter()
        .map(|name| {
            let n = pg_sys::get_attnum(table_oid, name.as_ptr());
            if n <= 0 {
                crate::error::internal("column missing", name.to_string_lossy());
            }
            (n - 1) as usize
        })
        .collect();
    ATTNUMS.with(|a| a.borrow_mut().push((table_oid, Rc::clone(&found))));
    found
}

/// Runs as the given role until dropped: the equivalent of SECURITY DEFINER
/// without a `search_path` push (no SQL runs under it). On an error,
/// transaction abort restores the user id.
struct OwnerRights {
    user: Oid,
    context: i32,
}

impl OwnerRights {
    unsafe fn switch_to(owner: Oid) -> Self {
        let mut user = pg_sys::InvalidOid;
        let mut context = 0;
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            owner,
            context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
        OwnerRights { user, context }
    }
}

impl Drop for OwnerRights {
    fn drop(&mut self) {
        // SAFETY: restores what switch_to saved.
        unsafe { pg_sys::SetUserIdAndSecContext(self.user, self.context) };
    }
}

unsafe fn get<T: FromDatum>(values: Values<'_>, i: usize) -> T {
    let (datum, isnull) = values[i];
    T::from_datum(datum, isnull)
        .unwrap_or_else(|| crate::error::internal("reading a row", format!("column {i} is NULL")))
}

unsafe fn get_opt<T: FromDatum>(values: Values<'_>, i: usize) -> Option<T> {
    let (datum, isnull) = values[i];
    T::from_datum(datum, isnull)
}

unsafe fn get_ts(values: Values<'_>, i: usize) -> i64 {
    get::<pgrx::datum::TimestampWithTimeZone>(values, i).into_inner()
}

unsafe fn get_opt_ts(values: Values<'_>, i: usize) -> Option<i64> {
    get_opt::<pgrx::datum::TimestampWithTimeZone>(values, i).map(|t| t.into_inner())
}

unsafe fn read_row(v: Values<'_>) -> SessionRow {
    let id: pgrx::Uuid = get(v, 0);
    SessionRow {
        session_id: *id.as_bytes(),
        user_id: get(v, 1),
        auth_level: get(v, 2),
        created_at: get_ts(v, 3),
        authenticated_at: get_ts(v, 4),
        last_refreshed_at: get_ts(v, 5),
        generation: get(v, 6),
        access_digest: get(v, 7),
        access_issued_at: get_ts(v, 8),
        access_expires_at: get_ts(v, 9),
        refresh_digest: get(v, 10),
        refresh_expires_at: get_ts(v, 11),
        absolute_expires_at: get_ts(v, 12),
        parent_access_digest: get_opt(v, 13),
        parent_access_expires_at: get_opt_ts(v, 14),
        parent_refresh_digest: get_opt(v, 15),
        rotated_at: get_opt_ts(v, 16),
        grace_until: get_opt_ts(v, 17),
        retry_pair: get_opt(v, 18),
        revoked_at: get_opt_ts(v, 19),
        parent_refresh_expires_at: get_opt_ts(v, 20),
    }
}
