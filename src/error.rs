//! Errors raised from Rust, each with one precise SQLSTATE.
//!
//! Only standard SQLSTATEs survive pgrx's FFI boundary, so argument errors
//! (`22004`, `22023`) are raised here, while the token errors `SA001`..`SA006`
//! are raised by the PL/pgSQL wrappers in `sql/raising.sql` from the status a
//! Rust function returns. No message ever contains a token, and nothing
//! internal reaches a client: no Rust backtrace (pgrx would put one in
//! DETAIL when the server runs with `RUST_BACKTRACE` set) and no source path
//! (the protocol's File field).

use std::ffi::{c_char, c_int, CString};

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::jsonb::RawJsonb;

/// Replaces pgrx's panic hook by one that captures nothing: pgrx's would
/// record a backtrace of every panic (every ERROR that crosses our code is
/// one) for the error's DETAIL. The errors themselves are reported as
/// before, by pgrx's guards.
pub fn quiet_panics() {
    std::panic::set_hook(Box::new(|_| {}));
}

unsafe extern "C-unwind" {
    fn errstart(elevel: c_int, domain: *const c_char) -> bool;
    fn errcode(sqlerrcode: c_int) -> c_int;
    fn errmsg(fmt: *const c_char, ...) -> c_int;
    fn errhint(fmt: *const c_char, ...) -> c_int;
    fn errfinish(filename: *const c_char, lineno: c_int, funcname: *const c_char);
}

/// Raises an ERROR whose location fields name the extension, not a file.
/// Raised inside pgrx's FFI guard, so it unwinds through our frames as any
/// PostgreSQL error does.
fn raise(code: PgSqlErrorCode, message: &str, hint: Option<&str>) -> ! {
    let cstring = |s: &str| CString::new(s.replace('\0', "")).expect("NULs removed");
    let message = cstring(message);
    let hint = hint.map(cstring);
    // SAFETY: the standard ereport(ERROR) sequence, inside the guard that
    // turns its longjmp into a Rust panic; every string outlives the call.
    unsafe {
        pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
            if errstart(pg_sys::PGERROR as c_int, std::ptr::null()) {
                errcode(code as c_int);
                errmsg(c"%s".as_ptr(), message.as_ptr());
                if let Some(hint) = &hint {
                    errhint(c"%s".as_ptr(), hint.as_ptr());
                }
                errfinish(c"pg_session_auth".as_ptr(), 0, c"pg_session_auth".as_ptr());
            }
        });
    }
    unreachable!("errfinish(ERROR) does not return")
}

/// `25006`: a writing function called on a hot standby, PostgreSQL's own
/// error ("cannot execute ... during recovery"), raised before anything is
/// touched (otherwise the first write would fail with an internal error).
pub fn require_primary(function: &std::ffi::CStr) {
    // SAFETY: a plain check; raises through pgrx's guard when in recovery.
    unsafe { pg_sys::PreventCommandDuringRecovery(function.as_ptr()) };
}

/// `22004`: a required argument was NULL.
pub fn null_argument(name: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
        &format!("{name} must not be NULL"),
        None,
    )
}

/// `22023`: an argument is out of range or of the wrong shape.
pub fn bad_argument(name: &str, why: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        &format!("{name} {why}"),
        None,
    )
}

/// `55000`: one of the extension's objects is not what the extension made
/// (changed by hand, outside `ALTER EXTENSION`). Names the object.
pub fn changed_outside_extension(object: &str, what: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        &format!("pg_session_auth: {object} was changed outside ALTER EXTENSION: {what}"),
        Some(
            "The extension's tables must keep the layout the extension gave them (partitioning \
             is not supported). Undo the change, or DROP and CREATE the extension again.",
        ),
    )
}

/// `55000`: the library is newer (or older) than the SQL objects of this
/// database: the DBA installed a new package and has not updated yet.
pub fn outdated_sql(sql_version: &str, library_version: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        &format!(
            "pg_session_auth: this database has the extension's SQL objects of version {sql_version}, \
             the installed library is version {library_version}"
        ),
        Some("Run ALTER EXTENSION pg_session_auth UPDATE in this database."),
    )
}

/// Something that should not happen: a failed SPI call, no OS randomness.
/// The message names the operation, never the data.
pub fn internal(what: &str, err: impl std::fmt::Display) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        &format!("pg_session_auth: {what}: {err}"),
        None,
    )
}

/// The value read from the OS random source, or an internal error.
pub fn fresh<T>(r: Result<T, rand::Error>) -> T {
    r.unwrap_or_else(|e| internal("reading the OS random source", e))
}

pub const MAX_USER_ID_BYTES: usize = 256;
pub const MAX_DATA_BYTES: usize = 64 * 1024;

pub fn require_user_id(user_id: Option<&str>) -> &str {
    let Some(user_id) = user_id else {
        null_argument("user_id")
    };
    if user_id.is_empty() {
        bad_argument("user_id", "must not be empty");
    }
    if user_id.len() > MAX_USER_ID_BYTES {
        bad_argument(
            "user_id",
            &format!("must be at most {MAX_USER_ID_BYTES} bytes"),
        );
    }
    user_id
}

/// The session data: a JSON object of at most 64 kB in its text form (as
/// PostgreSQL writes jsonb back), counted without writing it.
pub fn require_data(data: Option<RawJsonb>) -> RawJsonb {
    let Some(value) = data else {
        null_argument("data")
    };
    if !value.is_object() {
        bad_argument("data", "must be a JSON object");
    }
    if !value.text_len_at_most(MAX_DATA_BYTES) {
        bad_argument(
            "data",
            &format!("must be at most {MAX_DATA_BYTES} bytes as JSON text"),
        );
    }
    value
}

/// The authentication levels a session can have. The one statement of the
/// range for every argument check (the PL/pgSQL wrappers call
/// `session_auth.check_auth_level`); the table's CHECK constraint guards the
/// stored value, and a unit test holds it to this.
pub const AUTH_LEVELS: std::ops::RangeInclusive<i32> = 1..=3;

/// `22023` naming `argument` unless `level` is NULL or an authentication
/// level.
pub fn check_auth_level(argument: &str, level: Option<i32>) {
    if level.is_some_and(|level| !AUTH_LEVELS.contains(&level)) {
        let (low, high) = (AUTH_LEVELS.start(), AUTH_LEVELS.end());
        bad_argument(argument, &format!("must be between {low} and {high}"));
    }
}

/// A level a caller must give (`session_issue`'s).
pub fn require_auth_level(auth_level: Option<i32>) -> i32 {
    let Some(level) = auth_level else {
        null_argument("auth_level")
    };
    check_auth_level("auth_level", Some(level));
    level
}

#[cfg(test)]
mod unit_tests {
    use super::AUTH_LEVELS;

    #[test]
    fn the_tables_check_allows_exactly_the_auth_levels() {
        let bootstrap = include_str!("../sql/bootstrap.sql");
        let check = format!(
            "CHECK (auth_level BETWEEN {} AND {})",
            AUTH_LEVELS.start(),
            AUTH_LEVELS.end()
        );
        assert!(
            bootstrap.contains(&check),
            "sql/bootstrap.sql lacks {check}"
        );
    }
}
