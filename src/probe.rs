//! Direct primary-key probes for the read-only hot path (`session_validate`),
//! and for the writers' check of a token before they lock anything.
//!
//! A validate is one lookup of a session row by its primary key, and rarely
//! a second one of the blacklist by session and generation. Going through SPI would cost a
//! connect, an executor start and end, and a `SET search_path` push and pop
//! per call; a probe opens the index, fetches one tuple under the caller's
//! snapshot and copies out the columns it needs. It runs no SQL, so no
//! `search_path`, operator or function can be substituted under it, and it
//! switches to the extension owner's user id (the tables' owner) for the
//! duration, as a SECURITY DEFINER function would.
//!
//! Reading a table this way trusts its layout, so the layout is verified
//! before it is trusted: the first probe of a table after any change to it
//! (a relcache invalidation; see `forget_layouts`) checks that the relation
//! is a plain table, that the index is a valid, ready, non-partial btree on
//! that table's key columns, in order, each with its type's default operator
//! class, and that
//! every column the probe reads exists with the expected type. Anything else
//! raises one clear error (`55000`, naming the object); in 0.1.0 a
//! partitioned table, a view, or a changed column type crashed the server.
//! Every probe checks both tables this way (the blacklist too, so a changed
//! blacklist is reported even by a validate that does not need it). The
//! verified layouts, relation oids and column numbers included, are cached
//! per backend until the next relcache invalidation that touches them, and
//! re-checked after the probe has locked the relations (taking a lock is
//! when PostgreSQL delivers pending invalidations).

use std::cell::RefCell;
use std::ffi::CStr;
use std::rc::Rc;

use pgrx::pg_sys::{self, Datum, Oid};
use pgrx::{FromDatum, IntoDatum};

use crate::blacklist::{Blacklisted, Kept, ListedPair};
use crate::error;
use crate::ids::SessionId;
use crate::jsonb::RawJsonb;
use crate::session_row::{self, Column, RowValues, SessionRow, COLUMN_COUNT};
use crate::token::Parsed;

const SCHEMA: &CStr = c"session_auth";

/// Raises the error for a table that is not as the extension made it; but
/// first the clearer one if this database still has the SQL objects of
/// another version (an update the DBA has not run yet explains it).
fn layout_changed(object: &str, what: &str) -> ! {
    crate::extension::require_current_sql();
    error::changed_outside_extension(object, what)
}

const fn col(name: &'static CStr, type_oid: Oid) -> Column {
    Column::named(name, type_oid)
}

/// The columns of a `SessionRow` (`session_row::COLUMNS`), then `data`.
const SESSION_COLUMNS: [Column; COLUMN_COUNT + 1] = {
    let mut columns = [col(c"data", pg_sys::JSONBOID); COLUMN_COUNT + 1];
    let mut i = 0;
    while i < COLUMN_COUNT {
        columns[i] = session_row::COLUMNS[i];
        i += 1;
    }
    columns
};

/// The blacklist's key (session, generation), then the columns `blacklisted`
/// reads.
const BLACKLIST_COLUMNS: [Column; 7] = [
    col(c"session_id", pg_sys::UUIDOID),
    col(c"generation", pg_sys::INT4OID),
    col(c"access_digest", pg_sys::BYTEAOID),
    col(c"access_expires_at", pg_sys::TIMESTAMPTZOID),
    col(c"refresh_digest", pg_sys::BYTEAOID),
    col(c"refresh_expires_at", pg_sys::TIMESTAMPTZOID),
    col(c"revoked_at", pg_sys::TIMESTAMPTZOID),
];

/// A probed table as verified: its oid, its index's, and the zero-based
/// attribute numbers of the columns read (in the order asked for).
#[derive(Clone)]
struct Layout {
    name: &'static CStr,
    table: Oid,
    index: Oid,
    /// How many columns were asked for (one table is probed with two lists).
    columns: usize,
    attnums: Rc<[usize]>,
}

thread_local! {
    /// Verified layouts, until a relcache invalidation touches them.
    static LAYOUTS: RefCell<Vec<Layout>> = const { RefCell::new(Vec::new()) };
}

/// Where a probe reads: the table, its key index, and the columns, the
/// index's key columns first (`key_columns` of them, in index order).
struct Target {
    table: &'static CStr,
    index: &'static CStr,
    key_columns: usize,
    columns: &'static [Column],
}

const SESSIONS: Target = Target {
    table: c"sessions",
    index: c"sessions_pkey",
    key_columns: 1,
    columns: &SESSION_COLUMNS,
};

const SESSIONS_WITHOUT_DATA: Target = Target {
    table: c"sessions",
    index: c"sessions_pkey",
    key_columns: 1,
    columns: session_row::COLUMNS,
};

const BLACKLIST: Target = Target {
    table: c"blacklist",
    index: c"blacklist_pkey",
    key_columns: 2,
    columns: &BLACKLIST_COLUMNS,
};

/// Forgets every verified layout that involves `relid` (or all of them for
/// `InvalidOid`: the whole relcache was reset). Called from the relcache
/// invalidation callback: must not raise.
pub fn forget_layouts(relid: Oid) {
    LAYOUTS.with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            l.retain(|layout| {
                relid != pg_sys::InvalidOid && layout.table != relid && layout.index != relid
            });
        }
    });
}

/// The session row and its data, or `None` if there is no such session.
pub fn session(session_id: &SessionId) -> Option<(SessionRow, RawJsonb)> {
    probe_session(session_id, &SESSIONS, |v| {
        // SAFETY: columns in SESSION_COLUMNS order, of the verified types.
        unsafe { (read_row(v), get::<RawJsonb>(v, COLUMN_COUNT)) }
    })
}

/// The session row without its data (writers check a token with it before
/// they lock anything).
pub fn session_row(session_id: &SessionId) -> Option<SessionRow> {
    probe_session(session_id, &SESSIONS_WITHOUT_DATA, |v| {
        // SAFETY: columns in SESSION_COLUMNS order, of the verified types.
        unsafe { read_row(v) }
    })
}

fn probe_session<R>(
    session_id: &SessionId,
    target: &Target,
    read: impl FnOnce(Values<'_>) -> R,
) -> Option<R> {
    let key = pgrx::Uuid::from(*session_id).into_datum()?;
    // A primary key: the first visible tuple is the only one.
    let mut read = Some(read);
    probe(target, &[(pg_sys::F_UUID_EQ, key)], |v| {
        read.take().map(|r| r(v))
    })
}

/// The blacklist entry of the presented token: one probe of its session and
/// generation, or for a token of 0.1.0 (no generation) a look through its
/// session's rows (`blacklist`).
pub fn blacklisted(parsed: &Parsed) -> Option<Blacklisted> {
    let session = pgrx::Uuid::from(parsed.session).into_datum()?;
    let mut keys = vec![(pg_sys::F_UUID_EQ, session)];
    if let Some(generation) = parsed.generation {
        keys.push((pg_sys::F_INT4EQ, generation.into_datum()?));
    }
    probe(&BLACKLIST, &keys, |v| {
        // SAFETY: columns in BLACKLIST_COLUMNS order, of the verified types.
        let pair = unsafe { read_listed_pair(v) };
        pair.entry_for(parsed)
    })
}

/// # Safety
/// Columns in BLACKLIST_COLUMNS order, of the verified types.
unsafe fn read_listed_pair(v: Values<'_>) -> ListedPair {
    // SAFETY: as the caller vouches.
    unsafe {
        let kept = |digest: usize| -> Option<Kept> {
            Some(Kept {
                digest: get_opt::<Vec<u8>>(v, digest)?,
                expires_at: get_opt::<pgrx::datum::TimestampWithTimeZone>(v, digest + 1)?
                    .into_inner(),
            })
        };
        ListedPair {
            generation: get(v, 1),
            access: kept(2),
            refresh: kept(4),
            listed_at: get::<pgrx::datum::TimestampWithTimeZone>(v, 6).into_inner(),
        }
    }
}

/// Runs `check` under the snapshot the next SQL statement of a VOLATILE
/// function gets (what SPI does for a writer): after the command counter
/// is advanced, so that it sees what earlier calls of the same statement
/// wrote (a session issued by a subquery of the statement), and under READ
/// COMMITTED a fresh one. The writing functions check a token this way
/// before they lock; `session_validate` is STABLE and keeps the statement's
/// snapshot. On an error, the (sub)transaction's abort pops the snapshot.
pub fn as_writer<R>(check: impl FnOnce() -> R) -> R {
    // SAFETY: the snapshot pushed here is popped below, or by the abort of
    // the (sub)transaction if `check` raises; advancing the command counter
    // is what every writing SPI statement does first.
    unsafe {
        pg_sys::CommandCounterIncrement();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        pg_sys::UpdateActiveSnapshotCommandId();
    }
    let result = check();
    // SAFETY: pops the snapshot pushed above, still the active one.
    unsafe { pg_sys::PopActiveSnapshot() };
    result
}

/// Verifies both probed tables, all their columns (cached), so that every
/// function raises the same clear error when a table was changed by hand.
pub fn check_tables() {
    // SAFETY: catalog lookups in a transaction.
    unsafe {
        layout(&SESSIONS);
        layout(&BLACKLIST);
    }
}

/// Values of one fetched tuple, by position in the requested column list.
type Values<'a> = &'a [(Datum, bool)];

/// Looks `keys` (equality function and value of the index's leading key
/// columns, in order) up in the target's index and hands the requested
/// columns of each visible tuple to `read` until it answers `Some`; `read`
/// must copy what it keeps: each tuple's buffer is released afterwards.
fn probe<R>(
    target: &Target,
    keys: &[(u32, Datum)],
    mut read: impl FnMut(Values<'_>) -> Option<R>,
) -> Option<R> {
    check_tables();
    // SAFETY: an index scan under the active snapshot, bracketed by
    // open/close, on relations whose layout `layout` verified and that are
    // locked before the layout is trusted; errors unwind through PostgreSQL,
    // which releases the relations, the scan and the user id at abort.
    unsafe {
        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        let (layout, rel, idx) = loop {
            let layout = layout(target);
            let rel = pg_sys::table_open(layout.table, lock);
            let idx = pg_sys::index_open(layout.index, lock);
            // Taking the locks delivered any pending invalidation: if one
            // touched these relations, look again (a DDL that committed just
            // before; none can run while we hold the locks).
            if still_cached(&layout) {
                break (layout, rel, idx);
            }
            pg_sys::index_close(idx, lock);
            pg_sys::table_close(rel, lock);
            check_tables();
        };
        let _owner = OwnerRights::switch_to((*(*rel).rd_rel).relowner);
        let snapshot = if pg_sys::ActiveSnapshotSet() {
            pg_sys::GetActiveSnapshot()
        } else {
            pg_sys::GetTransactionSnapshot()
        };
        assert!(
            keys.len() <= target.key_columns,
            "more keys than the index has"
        );
        let mut scankeys: Vec<pg_sys::ScanKeyData> = keys
            .iter()
            .zip(1..)
            .map(|(&(equality, key), attno)| {
                let mut scankey = pg_sys::ScanKeyData::default();
                pg_sys::ScanKeyInit(
                    &mut scankey,
                    attno,
                    pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
                    pg_sys::RegProcedure::from(equality),
                    key,
                );
                scankey
            })
            .collect();
        let nkeys = scankeys.len() as i32;
        let scan = crate::compat::index_beginscan(rel, idx, snapshot, nkeys);
        pg_sys::index_rescan(scan, scankeys.as_mut_ptr(), nkeys, std::ptr::null_mut(), 0);
        let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
        let mut result = None;
        while result.is_none()
            && pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot)
        {
            pg_sys::slot_getallattrs(slot);
            let values: Vec<(Datum, bool)> = layout
                .attnums
                .iter()
                .map(|&n| (*(*slot).tts_values.add(n), *(*slot).tts_isnull.add(n)))
                .collect();
            result = read(&values);
        }
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::index_endscan(scan);
        // Keep the locks until the transaction ends, as the executor does.
        pg_sys::index_close(idx, pg_sys::NoLock as pg_sys::LOCKMODE);
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        result
    }
}

/// The private schema's oid; a clear error if it is gone.
unsafe fn namespace() -> Oid {
    // SAFETY: a syscache lookup in a transaction.
    let namespace = unsafe { pg_sys::get_namespace_oid(SCHEMA.as_ptr(), true) };
    if namespace == pg_sys::InvalidOid {
        layout_changed("schema session_auth", "it does not exist");
    }
    namespace
}

fn cached(target: &Target) -> Option<Layout> {
    LAYOUTS.with(|l| {
        l.borrow()
            .iter()
            .find(|c| c.name == target.table && c.columns == target.columns.len())
            .cloned()
    })
}

fn still_cached(layout: &Layout) -> bool {
    cached_by_oids(layout.table, layout.index, layout.columns)
}

fn cached_by_oids(table: Oid, index: Oid, columns: usize) -> bool {
    LAYOUTS.with(|l| {
        l.borrow()
            .iter()
            .any(|c| c.table == table && c.index == index && c.columns == columns)
    })
}

/// The verified layout of a target: from the cache (no catalog lookup at
/// all), or found by name and checked now.
unsafe fn layout(target: &Target) -> Layout {
    if let Some(layout) = cached(target) {
        return layout;
    }
    let object = format!("session_auth.{}", target.table.to_string_lossy());
    // SAFETY: syscache lookups in a transaction.
    let (table_oid, index_oid) = unsafe {
        let namespace = namespace();
        (
            pg_sys::get_relname_relid(target.table.as_ptr(), namespace),
            pg_sys::get_relname_relid(target.index.as_ptr(), namespace),
        )
    };
    if table_oid == pg_sys::InvalidOid {
        layout_changed(&object, "it does not exist");
    }
    if index_oid == pg_sys::InvalidOid {
        layout_changed(
            &object,
            &format!("its index {} is missing", target.index.to_string_lossy()),
        );
    }
    // SAFETY: as above.
    let attnums = unsafe { verify(&object, table_oid, index_oid, target) };
    let layout = Layout {
        name: target.table,
        table: table_oid,
        index: index_oid,
        columns: target.columns.len(),
        attnums,
    };
    LAYOUTS.with(|l| l.borrow_mut().push(layout.clone()));
    layout
}

/// Checks that the table and index are what the extension made (see the
/// module comment) and returns the zero-based column numbers of `columns`.
unsafe fn verify(object: &str, table_oid: Oid, index_oid: Oid, target: &Target) -> Rc<[usize]> {
    let (index, columns) = (target.index, target.columns);
    let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
    // SAFETY: catalog and relcache reads under AccessShareLock, in a
    // transaction. The table is locked first (any relkind: relation_open
    // does not care), so every change that committed before is delivered
    // and none can happen before the transaction ends; the relations are
    // closed (the locks kept) before returning or raising.
    unsafe {
        let rel = pg_sys::relation_open(table_oid, lock);
        let kind = (*(*rel).rd_rel).relkind as u8;
        pg_sys::relation_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        if kind != pg_sys::RELKIND_RELATION {
            layout_changed(
                object,
                &format!("it is a {}, not a plain table", relkind_name(kind)),
            );
        }
        let attnums: Rc<[usize]> = columns
            .iter()
            .map(|c| {
                let n = pg_sys::get_attnum(table_oid, c.name.as_ptr());
                if n <= 0 {
                    layout_changed(
                        object,
                        &format!("column {} is missing", c.name.to_string_lossy()),
                    );
                }
                let actual = pg_sys::get_atttype(table_oid, n);
                if actual != c.type_oid {
                    layout_changed(
                        object,
                        &format!(
                            "column {} has another type than the extension gave it",
                            c.name.to_string_lossy()
                        ),
                    );
                }
                (n - 1) as usize
            })
            .collect();
        if pg_sys::get_rel_relkind(index_oid) as u8 != pg_sys::RELKIND_INDEX {
            layout_changed(
                object,
                &format!("{} is not an index", index.to_string_lossy()),
            );
        }
        let idx = pg_sys::index_open(index_oid, lock);
        let form = &*(*idx).rd_index;
        // (index_open refuses what is not an index, with PostgreSQL's own error.)
        let problem = if form.indrelid != table_oid {
            Some("belongs to another table")
        } else if !(form.indisvalid && form.indisready && form.indislive) {
            Some("is not valid (a failed CREATE INDEX CONCURRENTLY?)")
        } else if (*(*idx).rd_rel).relam != pg_sys::BTREE_AM_OID {
            Some("is not a btree")
        } else if form.indnkeyatts as usize != target.key_columns
            || (0..target.key_columns).any(|i| {
                i32::from(form.indkey.values.as_slice(target.key_columns)[i])
                    != (attnums[i] + 1) as i32
            })
        {
            Some("is not on the key columns")
        } else if !pg_sys::heap_attisnull(
            (*idx).rd_indextuple,
            pg_sys::Anum_pg_index_indpred as i32,
            std::ptr::null_mut(),
        ) || !pg_sys::heap_attisnull(
            (*idx).rd_indextuple,
            pg_sys::Anum_pg_index_indexprs as i32,
            std::ptr::null_mut(),
        ) {
            Some("is partial or on an expression")
        } else if (0..target.key_columns).any(|i| {
            *(*idx).rd_opfamily.add(i)
                != pg_sys::get_opclass_family(pg_sys::GetDefaultOpClass(
                    columns[i].type_oid,
                    pg_sys::BTREE_AM_OID,
                ))
        }) {
            Some("does not use the default operator class")
        } else {
            None
        };
        pg_sys::index_close(idx, pg_sys::NoLock as pg_sys::LOCKMODE);
        if let Some(problem) = problem {
            layout_changed(
                object,
                &format!("its index {} {problem}", index.to_string_lossy()),
            );
        }
        attnums
    }
}

fn relkind_name(kind: u8) -> &'static str {
    match kind {
        pg_sys::RELKIND_PARTITIONED_TABLE => "partitioned table",
        pg_sys::RELKIND_VIEW => "view",
        pg_sys::RELKIND_MATVIEW => "materialized view",
        pg_sys::RELKIND_FOREIGN_TABLE => "foreign table",
        pg_sys::RELKIND_INDEX | pg_sys::RELKIND_PARTITIONED_INDEX => "index",
        pg_sys::RELKIND_SEQUENCE => "sequence",
        _ => "relation of another kind",
    }
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

/// Reads a `SessionRow` from a tuple fetched with (at least) the columns
/// `session_row::COLUMNS`, in that order.
///
/// # Safety
/// The layout check must have verified each column's type.
unsafe fn read_row(v: Values<'_>) -> SessionRow {
    SessionRow::read_from(&Verified(v))
}

/// Values of the types `session_row::COLUMNS` names, as the layout check
/// verified them; made only in `read_row`, whose caller vouches for that.
struct Verified<'a>(Values<'a>);

impl RowValues for Verified<'_> {
    fn value<T: FromDatum + IntoDatum>(&self, i: usize) -> Option<T> {
        // The layout check verified column i against `COLUMNS[i]`; this holds
        // the Rust type the row reads it as to the same type, so a wrong
        // line in `session_row_columns!` raises instead of reading one
        // type's datum as another's.
        let column = &session_row::COLUMNS[i];
        if !T::is_compatible_with(column.type_oid) {
            error::internal(
                "reading a session row",
                format!(
                    "column {} read as the wrong type",
                    column.name.to_string_lossy()
                ),
            );
        }
        let (datum, isnull) = self.0[i];
        // SAFETY: column i is of `column.type_oid` (the layout check) and
        // `T` is that type (just checked).
        unsafe { T::from_datum(datum, isnull) }
    }
}
