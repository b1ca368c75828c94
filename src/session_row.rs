//! The session row: its columns are defined once, here, and everything that
//! reads a row is generated from that one table: the `SessionRow` struct,
//! the column list the statements select (`store`), and the columns and
//! types the direct probe verifies and reads (`probe`). Adding a column is
//! one line in `session_row_columns!` (and the upgrade script).

use std::ffi::CStr;

use pgrx::datum::TimestampWithTimeZone;
use pgrx::pg_sys::{self, Oid};
use pgrx::spi::SpiHeapTupleData;
use pgrx::{FromDatum, IntoDatum};

use crate::clock::{Micros, Stored};
use crate::ids::SessionId;

/// The columns of `session_auth.sessions` a row is read with, in order:
/// `name: how Type = type oid`. `how` says how the value is read: `id` (the
/// session id), `req` (NOT NULL), `opt` (NULL is `None`), `ts` and `opt_ts`
/// (a timestamptz as microseconds). The first is the key the probe's index
/// must be on. `data` is not here: only some readers want it, after these.
///
/// Invoked with the name of a macro that generates something from the table.
macro_rules! session_row_columns {
    ($generate:ident) => {
        $generate! {
            session_id: id SessionId = UUIDOID,
            user_id: req String = TEXTOID,
            auth_level: req i32 = INT4OID,
            created_at: ts Micros = TIMESTAMPTZOID,
            authenticated_at: ts Micros = TIMESTAMPTZOID,
            last_refreshed_at: ts Micros = TIMESTAMPTZOID,
            generation: req i32 = INT4OID,
            access_digest: req Vec<u8> = BYTEAOID,
            access_expires_at: ts Micros = TIMESTAMPTZOID,
            refresh_digest: req Vec<u8> = BYTEAOID,
            refresh_expires_at: ts Micros = TIMESTAMPTZOID,
            absolute_expires_at: ts Micros = TIMESTAMPTZOID,
            grace_until: opt_ts Option<Micros> = TIMESTAMPTZOID,
            // The retry key the current pair was derived with (a refresh), or
            // NULL (issue, re-authentication, revocation).
            retry_key_id: opt Option<crate::key_ring::KeyId> = INT4OID,
            revoked_at: opt_ts Option<Micros> = TIMESTAMPTZOID,
        }
    };
}
pub(crate) use session_row_columns;

/// Generator: the columns as one SQL select list, a string literal (so
/// statements can `concat!` it): `session_row_columns!(column_list)`.
macro_rules! column_list {
    ($first:ident : $fhow:ident $fty:ty = $foid:ident
     $(, $name:ident : $how:ident $ty:ty = $oid:ident)* $(,)?) => {
        concat!(stringify!($first) $(, ", ", stringify!($name))*)
    };
}
pub(crate) use column_list;

/// Generator: the struct and its reader.
macro_rules! define_session_row {
    ($($name:ident : $how:ident $ty:ty = $oid:ident),+ $(,)?) => {
        /// A session row, without its data.
        #[derive(Clone, Debug)]
        pub struct SessionRow {
            $(pub $name: $ty,)+
        }

        impl SessionRow {
            /// Reads the columns, in table order, from `values`.
            pub fn read_from(values: &impl RowValues) -> Self {
                let mut i = 0;
                let mut next = || {
                    i += 1;
                    i - 1
                };
                // Struct fields are evaluated in the order written: the
                // table's.
                SessionRow { $($name: read::$how(values, next()),)+ }
            }
        }

        /// The columns, with their types, for the direct probe.
        pub const COLUMNS: &[Column] = &[$(Column::named(
            match CStr::from_bytes_with_nul(concat!(stringify!($name), "\0").as_bytes()) {
                Ok(name) => name,
                Err(_) => panic!("a column name is a C string"),
            },
            pg_sys::$oid,
        ),)+];
    };
}
session_row_columns!(define_session_row);

/// How many columns a `SessionRow` is read from.
pub const COLUMN_COUNT: usize = COLUMNS.len();

/// A column as the direct probe verifies it: its name and type.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub name: &'static CStr,
    pub type_oid: Oid,
}

impl Column {
    pub const fn named(name: &'static CStr, type_oid: Oid) -> Self {
        Column { name, type_oid }
    }
}

/// Where a row's values come from: a row SPI returned, or the direct
/// probe's deformed tuple. Zero-based, in `COLUMNS` order.
pub trait RowValues {
    /// Column `i`, NULL as `None`.
    fn value<T: FromDatum + IntoDatum>(&self, i: usize) -> Option<T>;
}

/// A row of a statement that selected `session_row_columns!(column_list)`
/// first.
impl RowValues for SpiHeapTupleData<'_> {
    fn value<T: FromDatum + IntoDatum>(&self, i: usize) -> Option<T> {
        self.get::<T>(i + 1)
            .unwrap_or_else(|e| crate::error::internal("reading a session row", e))
    }
}

/// The readers `session_row_columns!` names.
mod read {
    use super::*;

    pub fn req<T: FromDatum + IntoDatum>(v: &impl RowValues, i: usize) -> T {
        v.value(i).unwrap_or_else(|| {
            let name = COLUMNS[i].name.to_string_lossy();
            crate::error::internal("reading a session row", format!("column {name} is NULL"))
        })
    }

    pub fn opt<T: FromDatum + IntoDatum>(v: &impl RowValues, i: usize) -> Option<T> {
        v.value(i)
    }

    pub fn id(v: &impl RowValues, i: usize) -> SessionId {
        SessionId::from(req::<pgrx::Uuid>(v, i))
    }

    pub fn ts(v: &impl RowValues, i: usize) -> Micros {
        req::<TimestampWithTimeZone>(v, i).into_inner()
    }

    pub fn opt_ts(v: &impl RowValues, i: usize) -> Option<Micros> {
        opt::<TimestampWithTimeZone>(v, i).map(TimestampWithTimeZone::into_inner)
    }
}

impl SessionRow {
    /// A row of a statement that selected `session_row_columns!(column_list)`.
    pub fn read(row: &SpiHeapTupleData<'_>) -> Self {
        Self::read_from(row)
    }

    /// The generation the next rotation of this row writes (`store::ROTATE`
    /// sets `generation + 1`), which its tokens carry.
    pub fn next_generation(&self) -> i32 {
        self.generation.saturating_add(1)
    }

    /// When the current pair replaced another (a refresh or a
    /// re-authentication), if it did. Not stored: every rotation sets
    /// `last_refreshed_at` and adds one to `generation`, and nothing else
    /// does either (docs/design.md, "Sessions, tokens, lineage").
    pub fn rotated_at(&self) -> Option<Micros> {
        (self.generation > crate::token::FIRST_GENERATION).then_some(self.last_refreshed_at)
    }

    /// What bounds the session's life, for the deadline rules (`clock`).
    /// The current pair was issued when the row was last refreshed (or
    /// created): `last_refreshed_at` is also its access token's issue time.
    pub fn stored(&self) -> Stored {
        Stored {
            created_at: self.created_at,
            last_refreshed_at: self.last_refreshed_at,
            refresh_expires_at: self.refresh_expires_at,
            absolute_expires_at: self.absolute_expires_at,
            access_expires_at: self.access_expires_at,
        }
    }
}

#[cfg(test)]
impl SessionRow {
    /// For unit tests: a session issued at 0 whose first pair (`a1`/`r1`:
    /// the digests of those words) a refresh at `rotated` replaced with
    /// `a2`/`r2` (generation 2), under the default settings. The first pair
    /// is on the blacklist: `parent_on_the_blacklist` says as what.
    pub fn refreshed_at(rotated: Micros) -> Self {
        let p = crate::clock::default_policy();
        let d = |name: &str| crate::token::digest(name).to_vec();
        SessionRow {
            session_id: SessionId::from_bytes([7; 16]),
            user_id: "alice".into(),
            auth_level: 1,
            created_at: 0,
            authenticated_at: 0,
            last_refreshed_at: rotated,
            generation: 2,
            access_digest: d("a2"),
            access_expires_at: rotated + p.access_ttl,
            refresh_digest: d("r2"),
            refresh_expires_at: rotated + p.idle_timeout,
            absolute_expires_at: p.absolute_timeout,
            grace_until: Some(rotated + p.refresh_grace),
            retry_key_id: Some(1),
            revoked_at: None,
        }
    }

    /// The blacklist row of the first pair of `refreshed_at`: each token
    /// with the deadline it was issued with.
    pub fn parent_on_the_blacklist() -> crate::blacklist::ListedPair {
        let p = crate::clock::default_policy();
        let kept = |name: &str, expires_at| {
            Some(crate::blacklist::Kept {
                digest: crate::token::digest(name).to_vec(),
                expires_at,
            })
        };
        crate::blacklist::ListedPair {
            generation: 1,
            access: kept("a1", p.access_ttl),
            refresh: kept("r1", p.idle_timeout),
            // When `refreshed_at` rotated it: any time will do for a parent.
            listed_at: 0,
        }
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn the_select_list_and_the_probed_columns_are_one_list() {
        let selected: Vec<&str> = session_row_columns!(column_list).split(", ").collect();
        let probed: Vec<&str> = COLUMNS.iter().map(|c| c.name.to_str().unwrap()).collect();
        assert_eq!(selected, probed);
        assert_eq!(selected[0], "session_id", "the key comes first");
        assert_eq!(COLUMN_COUNT, 15);
    }
}
