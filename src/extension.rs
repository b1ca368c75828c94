//! Which version of the extension's SQL objects a database holds, against
//! the library's own. A DBA may install a new library (and restart) before
//! running `ALTER EXTENSION pg_session_auth UPDATE`: the old objects then
//! meet the new code. Nothing crashes (the direct probes check the tables'
//! layout first, see `probe`), and every call raises one clear error that
//! names the command to run; the worker waits quietly.

use pgrx::prelude::*;

/// The version of this library, which is the version of the SQL it expects.
pub const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");

/// `pg_extension.extversion` in the current database, or `None` if the
/// extension is not created here. Fully qualified: callers run with any
/// search_path.
pub fn sql_version() -> Option<String> {
    Spi::get_one::<String>(
        "SELECT extversion FROM pg_catalog.pg_extension \
         WHERE extname OPERATOR(pg_catalog.=) 'pg_session_auth'::pg_catalog.name",
    )
    .ok()
    .flatten()
}

/// Raises the "run ALTER EXTENSION ... UPDATE" error if this database's SQL
/// objects are of another version than the library. Called when the tables
/// do not look as expected, to tell an unfinished update from a hand-made
/// change.
pub fn require_current_sql() {
    if let Some(version) = sql_version().filter(|v| v != LIBRARY_VERSION) {
        crate::error::outdated_sql(&version, LIBRARY_VERSION);
    }
}
