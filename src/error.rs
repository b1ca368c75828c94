//! Errors raised from Rust, each with one precise SQLSTATE.
//!
//! Only standard SQLSTATEs survive pgrx's FFI boundary, so argument errors
//! (`22004`, `22023`) are raised here, while the token errors `SA001`..`SA005`
//! are raised by the PL/pgSQL wrappers in `sql/raising.sql` from the status a
//! Rust function returns. No message ever contains a token.

use pgrx::prelude::*;

use crate::jsonb::RawJsonb;

/// `22004`: a required argument was NULL.
pub fn null_argument(name: &str) -> ! {
    ereport!(
        ERROR,
        PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
        format!("{name} must not be NULL")
    );
}

/// `22023`: an argument is out of range or of the wrong shape.
pub fn bad_argument(name: &str, why: &str) -> ! {
    ereport!(
        ERROR,
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        format!("{name} {why}")
    );
}

/// Something that should not happen: a failed SPI call, no OS randomness.
/// The message names the operation, never the data.
pub fn internal(what: &str, err: impl std::fmt::Display) -> ! {
    ereport!(
        ERROR,
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("pg_session_auth: {what}: {err}")
    );
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

/// The session data: a JSON object of at most 64 kB in its text form.
pub fn require_data(data: Option<RawJsonb>) -> RawJsonb {
    let Some(value) = data else {
        null_argument("data")
    };
    if !value.is_object() {
        bad_argument("data", "must be a JSON object");
    }
    if value.text_len() > MAX_DATA_BYTES {
        bad_argument(
            "data",
            &format!("must be at most {MAX_DATA_BYTES} bytes as JSON text"),
        );
    }
    value
}

pub fn require_auth_level(auth_level: Option<i32>) -> i32 {
    match auth_level {
        None => null_argument("auth_level"),
        Some(level @ 1..=3) => level,
        Some(_) => bad_argument("auth_level", "must be between 1 and 3"),
    }
}
