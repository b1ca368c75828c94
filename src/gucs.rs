//! The `session_auth.*` settings.
//!
//! Policy settings are `PGC_SUSET`: a DBA sets them in postgresql.conf, per
//! database or per role, and an application role cannot loosen them. Time
//! settings carry units so `'15min'` works and `SHOW` prints units.

use std::ffi::CString;

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;

const MINUTE: i32 = 60;
const HOUR: i32 = 60 * MINUTE;
const DAY: i32 = 24 * HOUR;

/// Seconds.
pub static ACCESS_TTL: GucSetting<i32> = GucSetting::<i32>::new(15 * MINUTE);
/// Seconds.
pub static IDLE_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(30 * MINUTE);
/// Seconds.
pub static ABSOLUTE_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(12 * HOUR);
/// Milliseconds, so tests and tight deployments can use sub-second windows.
pub static REFRESH_GRACE: GucSetting<i32> = GucSetting::<i32>::new(10_000);
pub static MAX_SESSIONS_PER_USER: GucSetting<i32> = GucSetting::<i32>::new(0);
/// Seconds.
pub static EVENT_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(30 * DAY);
/// Milliseconds.
pub static PURGE_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(60_000);
pub static PURGE_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(10_000);
pub static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(DEFAULT_DATABASE));

const DEFAULT_DATABASE: &std::ffi::CStr = c"postgres";

/// The database the purge worker serves.
pub fn worker_database() -> String {
    DATABASE
        .get()
        .unwrap_or_else(|| DEFAULT_DATABASE.to_owned())
        .to_string_lossy()
        .into_owned()
}

// Not `clock::SECOND`: the clock reads these settings, not the other way.
use pgrx::datum::datetime_support::USECS_PER_SEC as USEC_PER_SEC;
const USEC_PER_MS: i64 = USEC_PER_SEC / 1_000;

pub fn access_ttl_us() -> i64 {
    i64::from(ACCESS_TTL.get()) * USEC_PER_SEC
}

pub fn idle_timeout_us() -> i64 {
    i64::from(IDLE_TIMEOUT.get()) * USEC_PER_SEC
}

pub fn absolute_timeout_us() -> i64 {
    i64::from(ABSOLUTE_TIMEOUT.get()) * USEC_PER_SEC
}

pub fn refresh_grace_us() -> i64 {
    i64::from(REFRESH_GRACE.get()) * USEC_PER_MS
}

pub fn event_retention_us() -> i64 {
    i64::from(EVENT_RETENTION.get()) * USEC_PER_SEC
}

/// Registers every setting. Called from `_PG_init` in every backend, so the
/// settings exist whether or not the library is preloaded.
/// `session_auth.database` is `PGC_POSTMASTER`, which PostgreSQL only allows
/// while preloading, so it exists only then (it matters only to the worker).
pub fn register(preloading: bool) {
    GucRegistry::define_int_guc(
        c"session_auth.access_ttl",
        c"Lifetime of an access token.",
        c"Fixed on the token when it is issued; a later, shorter setting also shortens tokens already issued.",
        &ACCESS_TTL,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"session_auth.idle_timeout",
        c"A session not refreshed for this long expires.",
        c"The sliding lifetime of a refresh token.",
        &IDLE_TIMEOUT,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"session_auth.absolute_timeout",
        c"Hard cap on a session's life, whatever its activity.",
        c"",
        &ABSOLUTE_TIMEOUT,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"session_auth.refresh_grace",
        c"Window in which a superseded refresh token returns the same new pair and a superseded access token still validates.",
        c"Covers lost responses and two tabs refreshing at once. Zero disables it.",
        &REFRESH_GRACE,
        0,
        3_600_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"session_auth.max_sessions_per_user",
        c"Live sessions a user may have; issuing beyond it revokes the oldest. Zero means no limit.",
        c"",
        &MAX_SESSIONS_PER_USER,
        0,
        1_000_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"session_auth.event_retention",
        c"How long security events are kept.",
        c"",
        &EVENT_RETENTION,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"session_auth.purge_interval",
        c"How often the purge worker runs.",
        c"",
        &PURGE_INTERVAL,
        100,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"session_auth.purge_batch_size",
        c"Rows of each kind removed per purge transaction.",
        c"",
        &PURGE_BATCH_SIZE,
        1,
        10_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    if preloading {
        GucRegistry::define_string_guc(
            c"session_auth.database",
            c"The database the purge worker serves.",
            c"Other databases schedule session_purge() themselves.",
            &DATABASE,
            GucContext::Postmaster,
            GucFlags::default(),
        );
    }
    // SAFETY: called from _PG_init with a static, NUL-terminated prefix.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"session_auth".as_ptr()) };
}
