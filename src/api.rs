//! The SQL functions of the public contract, thin over `session`.
//!
//! Every function that touches state is `SECURITY DEFINER` with the search
//! path pinned to the private schema, then `pg_temp`, except
//! `session_validate`, which switches user id inside Rust and runs no SQL. None is STRICT: a NULL
//! token answers `invalid` (or `false`) and a NULL required argument raises
//! `22004`, where a STRICT function would silently return no row.
//! `session_require` and `session_reauthenticate` are PL/pgSQL wrappers in
//! `sql/raising.sql`, because custom SQLSTATEs cannot cross pgrx's FFI.
//!
//! pgrx needs the `name!` result tuples spelled out in each signature.
#![allow(clippy::type_complexity)]

use pgrx::datum::TimestampWithTimeZone as Tstz;
use pgrx::prelude::*;
use pgrx::Uuid;

use crate::jsonb::RawJsonb;

use crate::clock::to_timestamptz;
use crate::error;
use crate::ids::SessionId;
use crate::lineage::{self, Status};
use crate::session::{self, Pair};

type PairRow = (Uuid, String, Tstz, String, Tstz);

fn pair_row(p: Pair) -> PairRow {
    (
        Uuid::from(p.session_id),
        p.access_token,
        to_timestamptz(p.access_expires_at),
        p.refresh_token,
        to_timestamptz(p.refresh_expires_at),
    )
}

/// Starts a session (a new token family) for a user the application has
/// just authenticated.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn session_issue(
    user_id: Option<&str>,
    data: default!(Option<RawJsonb>, "'{}'"),
    auth_level: default!(Option<i32>, 1),
) -> TableIterator<
    'static,
    (
        name!(session_id, Uuid),
        name!(access_token, String),
        name!(access_expires_at, Tstz),
        name!(refresh_token, String),
        name!(refresh_expires_at, Tstz),
    ),
> {
    error::require_primary(c"session_issue");
    let user_id = error::require_user_id(user_id);
    let data = error::require_data(data);
    let auth_level = error::require_auth_level(auth_level);
    TableIterator::once(pair_row(session::issue(user_id, data, auth_level)))
}

/// Checks an access token. Writes nothing, so it runs on a hot standby.
/// Not SECURITY DEFINER: it runs no SQL, and its direct index probes switch
/// to the tables' owner themselves (`probe`), which saves the settings push
/// and pop a `SET search_path` clause costs on every call.
#[pg_extern(stable, parallel_safe)]
fn session_validate(
    token: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(status, String),
        name!(session_id, Option<Uuid>),
        name!(user_id, Option<String>),
        name!(data, Option<RawJsonb>),
        name!(auth_level, Option<i32>),
        name!(authenticated_at, Option<Tstz>),
        name!(expires_at, Option<Tstz>),
    ),
> {
    let row = match session::validate(token) {
        Ok(v) => (
            lineage::OK.to_string(),
            Some(Uuid::from(v.session_id)),
            Some(v.user_id),
            Some(v.data),
            Some(v.auth_level),
            Some(to_timestamptz(v.authenticated_at)),
            Some(to_timestamptz(v.expires_at)),
        ),
        Err(status) => (
            status.as_str().to_string(),
            None,
            None,
            None,
            None,
            None,
            None,
        ),
    };
    TableIterator::once(row)
}

type RefreshRow = (
    String,
    Option<Uuid>,
    Option<String>,
    Option<Tstz>,
    Option<String>,
    Option<Tstz>,
);

fn status_pair_row(result: Result<Pair, Status>) -> RefreshRow {
    match result {
        Ok(p) => {
            let (id, at, ax, rt, rx) = pair_row(p);
            (
                lineage::OK.to_string(),
                Some(id),
                Some(at),
                Some(ax),
                Some(rt),
                Some(rx),
            )
        }
        Err(status) => (status.as_str().to_string(), None, None, None, None, None),
    }
}

/// Rotates a refresh token: a new pair, the presented token superseded.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn session_refresh(
    token: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(status, String),
        name!(session_id, Option<Uuid>),
        name!(access_token, Option<String>),
        name!(access_expires_at, Option<Tstz>),
        name!(refresh_token, Option<String>),
        name!(refresh_expires_at, Option<Tstz>),
    ),
> {
    error::require_primary(c"session_refresh");
    TableIterator::once(status_pair_row(session::refresh(token)))
}

/// Logout: any token of a session revokes the whole session.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn session_revoke(token: Option<&str>) -> bool {
    error::require_primary(c"session_revoke");
    session::revoke_token(token)
}

/// "Sign out this device": revokes one session by id.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn session_revoke_id(session_id: Option<Uuid>) -> bool {
    error::require_primary(c"session_revoke_id");
    session_id.is_some_and(|id| session::revoke_id(&id.into()))
}

/// Logout everywhere, or everywhere but `keep_session`. Returns how many
/// sessions were revoked.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn session_revoke_user(user_id: Option<&str>, keep_session: default!(Option<Uuid>, "NULL")) -> i32 {
    error::require_primary(c"session_revoke_user");
    let user_id = error::require_user_id(user_id);
    let keep = keep_session.map(SessionId::from);
    let revoked = session::revoke_user(user_id, keep.as_ref());
    i32::try_from(revoked).unwrap_or(i32::MAX)
}

/// The user's live sessions, newest first.
#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn session_list(
    user_id: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(session_id, Uuid),
        name!(created_at, Tstz),
        name!(authenticated_at, Tstz),
        name!(last_refreshed_at, Tstz),
        name!(expires_at, Tstz),
        name!(auth_level, i32),
        name!(data, RawJsonb),
    ),
> {
    let user_id = error::require_user_id(user_id);
    TableIterator::new(session::list(user_id).into_iter().map(|s| {
        (
            Uuid::from(s.session_id),
            to_timestamptz(s.created_at),
            to_timestamptz(s.authenticated_at),
            to_timestamptz(s.last_refreshed_at),
            to_timestamptz(s.expires_at),
            s.auth_level,
            s.data,
        )
    }))
}

/// Replaces a live session's data.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn session_set_data(session_id: Option<Uuid>, data: Option<RawJsonb>) -> bool {
    error::require_primary(c"session_set_data");
    let data = error::require_data(data);
    session_id.is_some_and(|id| session::set_data(&id.into(), data))
}

/// Functions in the private schema, callable only by the extension owner
/// (the PL/pgSQL wrappers run as the owner). `bootstrap.sql` creates the
/// schema first with a plain CREATE SCHEMA; pgrx's IF NOT EXISTS is then a
/// no-op.
#[pg_schema]
pub mod session_auth {
    use pgrx::prelude::*;
    use pgrx::Uuid;

    use super::{status_pair_row, Tstz};
    use crate::error;
    use crate::session;

    /// Internal: the PL/pgSQL wrappers' check of a level argument, so the
    /// range of levels is stated in Rust only (`error::AUTH_LEVELS`). It
    /// runs no SQL, so it needs no pinned search_path (whose save and
    /// restore the wrappers would pay on every call).
    #[pg_extern(immutable, parallel_safe)]
    pub fn check_auth_level(argument: &str, level: Option<i32>) {
        error::check_auth_level(argument, level);
    }

    /// The rotation behind `session_reauthenticate`, which raises on its status.
    /// Internal: lives in the private schema, callable only by the owner.
    #[pg_extern(volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    pub fn reauthenticate_pair(
        token: Option<&str>,
        auth_level: Option<i32>,
    ) -> TableIterator<
        'static,
        (
            name!(status, String),
            name!(session_id, Option<Uuid>),
            name!(access_token, Option<String>),
            name!(access_expires_at, Option<Tstz>),
            name!(refresh_token, Option<String>),
            name!(refresh_expires_at, Option<Tstz>),
        ),
    > {
        error::check_auth_level("auth_level", auth_level);
        error::require_primary(c"session_reauthenticate");
        TableIterator::once(status_pair_row(session::reauthenticate(token, auth_level)))
    }
}

/// One cleanup batch in the caller's transaction: at most
/// `session_auth.purge_batch_size` rows of each kind. Returns rows removed
/// (plus live sessions whose next purge check it moved later, so that the
/// count is 0 only when nothing is left to do): a scheduler calls it until
/// it returns 0. It also erases expired retry keys and revokes the sessions
/// of reuse detections still pending in this database (the backstop's work,
/// for databases no worker serves).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn session_purge() -> i64 {
    error::require_primary(c"session_purge");
    let started = std::time::Instant::now();
    crate::probe::check_tables();
    crate::backstop::apply_pending_in_caller();
    crate::store::connect(|client| {
        let removed = crate::purge::batch(
            client,
            crate::clock::statement_now(),
            crate::purge::batch_size(),
        );
        if removed.done() > 0 {
            crate::purge::record(client, "session_purge", removed, 1, started);
        }
        i64::try_from(removed.done()).unwrap_or(i64::MAX)
    })
}
