//! The session lifecycle: issue, validate, refresh, revoke, list, set data,
//! reauthenticate. The numbered rules cited here ("rule 3") are those of
//! docs/design.md.
//!
//! A token names its session, so every operation starts with one
//! primary-key probe of `session_auth.sessions`, then decides which of the
//! session's tokens was presented by comparing digests:
//!
//! * the current pair, on the row;
//! * the parent pair it replaced (grace window, rules 2/6), found on the
//!   blacklist as the pair one generation back;
//! * an older superseded token, also found there (reuse, rule 3).
//!
//! A token matching none of them was never issued: `invalid`, whatever
//! session id it claims. Writers lock the session row (`FOR UPDATE`), which
//! serialises concurrent refreshes of one family (rule 7). The one exception
//! is the common refresh, the current token of a live session: its rotation
//! is a single guarded `UPDATE` that changes nothing if the row no longer
//! holds that token, and only then does the refresh lock and decide again.
//! A refresh token that was current when the call began is never taken for
//! a stolen one: if a concurrent call rotated it meanwhile, this call gets
//! that rotation's pair (rule 7), whatever `refresh_grace` is.

use pgrx::spi::SpiClient;
use serde_json::json;

use crate::backstop;
use crate::clock::{statement_now, Effective, Micros, NewPair, Policy};
use crate::error::{self, fresh};
use crate::gucs;
use crate::ids::SessionId;
use crate::jsonb::RawJsonb;
use crate::key_ring::KeyId;
use crate::lineage::{self, access_status, identify, rotatable, Presented, Refresh, Status};
use crate::probe;
use crate::retry_keys;
use crate::retry_pair;
use crate::revocation::{self, Event, Reuse};
use crate::session_row::{self, SessionRow};
use crate::standby::{self, Found};
use crate::store;
use crate::token::{self, Kind, Parsed};

/// A freshly issued or rotated pair.
#[derive(Clone, Debug)]
pub struct Pair {
    pub session_id: SessionId,
    pub access_token: String,
    pub access_expires_at: Micros,
    pub refresh_token: String,
    pub refresh_expires_at: Micros,
}

/// What `session_validate` answers for a good access token.
#[derive(Clone, Debug)]
pub struct Validated {
    pub session_id: SessionId,
    pub user_id: String,
    pub data: RawJsonb,
    pub auth_level: i32,
    pub authenticated_at: Micros,
    pub expires_at: Micros,
}

/// A live session for a "your devices" page.
#[derive(Clone, Debug)]
pub struct Listed {
    pub session_id: SessionId,
    pub created_at: Micros,
    pub authenticated_at: Micros,
    pub last_refreshed_at: Micros,
    pub expires_at: Micros,
    pub auth_level: i32,
    pub data: RawJsonb,
}

/// What every writing call does first, cheaply (each at most once a second
/// per backend): erase expired retry keys where no worker does, and retry
/// pending reuse revocations where no worker does.
fn housekeeping(client: &mut SpiClient<'_>, now: Micros) {
    retry_keys::erase_expired(client, now);
    backstop::retry_pending();
}

fn new_pair_secrets() -> (token::Secret, token::Secret) {
    (fresh(token::new_secret()), fresh(token::new_secret()))
}

fn load_for_update(client: &mut SpiClient<'_>, session: &SessionId) -> Option<SessionRow> {
    store::run(
        client,
        &store::LOAD_FOR_UPDATE,
        &[store::uuid(session)],
        |t| store::first_row(t, SessionRow::read),
    )
}

/// Whether the token is one of its session's, checked without taking any
/// lock, so that knowing a session id alone never lets anyone hold a lock on
/// somebody else's session. Writers then lock and check again.
fn genuine_unlocked(parsed: &Parsed) -> bool {
    probe_unlocked(parsed).is_some()
}

/// The session row and which of its tokens was presented, read without a
/// lock, as a writer sees them (`probe::as_writer`: what earlier calls of
/// the same statement wrote included).
fn probe_unlocked(parsed: &Parsed) -> Option<(SessionRow, Presented)> {
    probe::as_writer(|| {
        let row = probe::session_row(&parsed.session)?;
        let presented = identify(parsed, &row, probe::blacklisted)?;
        Some((row, presented))
    })
}

/// `identify` for writers, which hold the row lock and read the blacklist
/// with a fresh snapshot.
fn identify_locked(
    client: &mut SpiClient<'_>,
    parsed: &Parsed,
    row: &SessionRow,
) -> Option<Presented> {
    identify(parsed, row, |parsed| {
        store::find_blacklisted(client, parsed)
    })
}

pub fn issue(user_id: &str, data: RawJsonb, auth_level: i32) -> Pair {
    let now = statement_now();
    let policy = Policy::current();
    let session_id = fresh(token::new_session_id(now)); // dated as created_at
    let (access, refresh) = new_pair_secrets();
    let generation = token::FIRST_GENERATION;
    let access_token = token::encode(Kind::Access, &session_id, generation, &access);
    let refresh_token = token::encode(Kind::Refresh, &session_id, generation, &refresh);
    let absolute = now.saturating_add(policy.absolute_timeout);
    let deadlines = NewPair::at(now, absolute, &policy);
    probe::check_tables();
    store::connect(|client| {
        housekeeping(client, now);
        let cap = gucs::MAX_SESSIONS_PER_USER.get();
        if cap > 0 {
            evict_beyond_cap(client, user_id, cap, now, &policy);
        }
        store::run(
            client,
            &store::INSERT_SESSION,
            &[
                store::uuid(&session_id),
                user_id.into(),
                data.into(),
                auth_level.into(),
                store::ts(now),
                store::bytes(&token::digest(&access_token)),
                store::ts(deadlines.access_expires_at),
                store::bytes(&token::digest(&refresh_token)),
                store::ts(deadlines.refresh_expires_at),
                store::ts(absolute),
                generation.into(),
            ],
            |_| (),
        );
        let event_id = revocation::record(
            client,
            Event::Issued,
            now,
            &session_id,
            user_id,
            json!({ "auth_level": auth_level }),
        );
        revocation::notify(Event::Issued, event_id, &session_id, user_id);
    });
    Pair {
        session_id,
        access_token,
        access_expires_at: deadlines.access_expires_at,
        refresh_token,
        refresh_expires_at: deadlines.refresh_expires_at,
    }
}

/// Makes room for one more session under `max_sessions_per_user` by
/// revoking the user's oldest live sessions (by creation), event `evicted`.
fn evict_beyond_cap(
    client: &mut SpiClient<'_>,
    user_id: &str,
    cap: i32,
    now: Micros,
    policy: &Policy,
) {
    store::run(client, &store::LOCK_USER_LOGINS, &[user_id.into()], |_| ());
    let mut live: Vec<SessionRow> = store::run(
        client,
        &store::LOAD_USER_FOR_UPDATE,
        &[user_id.into()],
        |t| t.map(|r| SessionRow::read(&r)).collect(),
    );
    live.retain(|r| now < Effective::of(&r.stored(), policy).session);
    let keep = usize::try_from(cap).unwrap_or(usize::MAX).saturating_sub(1);
    if live.len() <= keep {
        return;
    }
    live.sort_by_key(|r| (r.created_at, r.session_id));
    let oldest: Vec<SessionId> = live[..live.len() - keep]
        .iter()
        .map(|r| r.session_id)
        .collect();
    revocation::revoke(
        client,
        &oldest,
        now,
        Event::Evicted,
        json!({ "max_sessions_per_user": cap }),
    );
}

/// Read-only: two direct index probes at most, no SPI (see `probe`).
pub fn validate(token: Option<&str>) -> Result<Validated, Status> {
    let parsed = token
        .and_then(|t| token::parse(t, Some(Kind::Access)))
        .ok_or(Status::Invalid)?;
    let now = statement_now();
    let policy = Policy::current();
    let Some((row, data)) = probe::session(&parsed.session) else {
        return Err(unmatched(&parsed, Found::Nothing));
    };
    let presented = identify(&parsed, &row, probe::blacklisted)
        .ok_or_else(|| unmatched(&parsed, Found::Row(&row)))?;
    let expires_at = access_status(&presented, &row, now, &policy)?;
    Ok(Validated {
        session_id: row.session_id,
        user_id: row.user_id,
        data,
        auth_level: row.auth_level,
        authenticated_at: row.authenticated_at,
        expires_at,
    })
}

/// An access token that matches nothing this server has: `invalid`, or on
/// a hot standby perhaps `not_replayed` (rule 8).
fn unmatched(parsed: &Parsed, found: Found<'_>) -> Status {
    if standby::in_recovery() {
        standby::unmatched(parsed, found, standby::Position::current())
    } else {
        Status::Invalid
    }
}

pub fn refresh(token: Option<&str>) -> Result<Pair, Status> {
    let token = token.ok_or(Status::Invalid)?;
    let parsed = token::parse(token, Some(Kind::Refresh)).ok_or(Status::Invalid)?;
    // Checked without taking any lock, so that knowing a session id alone
    // never lets anyone hold a lock on somebody else's session.
    let (row, presented) = probe_unlocked(&parsed).ok_or(Status::Invalid)?;
    let now = statement_now();
    let policy = Policy::current();
    let current = matches!(presented, Presented::Current);
    let was_current = current || current_when_the_statement_began(&parsed);
    store::connect(|client| {
        housekeeping(client, now);
        // The common case, without a separate row lock: the rotation applies
        // only if the row still holds the pair it was read with (ROTATE's
        // guard), and that pair must be the presented token's. (A token that
        // was current only under the statement's older snapshot is the
        // parent of `row`: rotating `row` would supersede a pair this call
        // never held.)
        if current {
            if let Some(effective) = rotatable(&row, now, &policy) {
                if let Some(pair) = rotate(client, &row, token, &parsed, now, &policy, effective) {
                    return Ok(pair);
                }
            }
        }
        refresh_locked(client, &parsed, token, now, &policy, was_current)
    })
}

/// Whether the refresh token was its session's current one under the
/// calling statement's snapshot. The writer's snapshot (`probe_unlocked`) is
/// newer: a rotation that committed in between shows there as this token's
/// parent, yet this call began while the token was current, so it raced
/// that rotation and gets its pair (rule 7), whatever `refresh_grace` is.
fn current_when_the_statement_began(parsed: &Parsed) -> bool {
    probe::session_row(&parsed.session).is_some_and(|row| {
        identify(parsed, &row, |_| None).is_some_and(|p| p == Presented::Current)
    })
}

/// Every refresh rule, decided on the locked row. `was_current`: the token
/// was the current one when this call began, so if it is not any more, a
/// concurrent call rotated it in the meantime (rule 7).
fn refresh_locked(
    client: &mut SpiClient<'_>,
    parsed: &Parsed,
    token: &str,
    now: Micros,
    policy: &Policy,
    was_current: bool,
) -> Result<Pair, Status> {
    let row = load_for_update(client, &parsed.session).ok_or(Status::Invalid)?;
    let presented = identify_locked(client, parsed, &row).ok_or(Status::Invalid)?;
    match lineage::decide_refresh(&presented, &row, now, policy, was_current) {
        Refresh::Rotate(effective) => {
            Ok(rotate(client, &row, token, parsed, now, policy, effective)
                .unwrap_or_else(|| error::internal("rotate", "the locked row changed")))
        }
        // If the retry key is gone already (a wait longer than the erase
        // margin, a restart), the pair cannot be given again: the token has
        // outlived what its grace allows.
        Refresh::Retry(effective) => {
            retry_pair(client, &row, token, effective).ok_or(Status::Expired)
        }
        Refresh::ReuseDetected {
            replayed_generation,
        } => {
            reuse_detected(client, &row, replayed_generation, now);
            Err(Status::ReuseDetected)
        }
        Refresh::Refused(status) => Err(status),
    }
}

/// Rule 1: a new pair replaces the current one, which becomes the parent.
/// The new pair is derived from the presented token and a retry key, so a
/// retry with that token inside the grace window derives it again
/// (`retry_pair`).
fn rotate(
    client: &mut SpiClient<'_>,
    row: &SessionRow,
    presented_refresh: &str,
    presented: &Parsed,
    now: Micros,
    policy: &Policy,
    effective: Effective,
) -> Option<Pair> {
    // The new pair supersedes the presented token, so it must be the row's
    // current one; anything else would branch the lineage.
    // (`presented` is `presented_refresh` parsed: its digest is already made.)
    if !token::same_digest(&presented.digest, Some(&row.refresh_digest)) {
        error::internal("rotate", "the presented token is not the row's current one");
    }
    let grace_until = now.saturating_add(policy.refresh_grace);
    let key = retry_keys::for_rotation(client, now, grace_until);
    let (access, refresh) = retry_pair::derive(
        presented_refresh,
        &key,
        &row.session_id,
        row.next_generation(),
    );
    write_rotation(
        client,
        row,
        Rotation {
            now,
            policy,
            absolute: effective.absolute,
            access,
            refresh,
            retry: Some((key.id, grace_until)),
            reauth: None,
        },
    )
}

struct Rotation<'a> {
    now: Micros,
    policy: &'a Policy,
    absolute: Micros,
    access: token::Secret,
    refresh: token::Secret,
    /// For a refresh, the retry key the pair was derived with and the end
    /// of its grace window; `None` for a reauthentication (no grace).
    retry: Option<(KeyId, Micros)>,
    /// The level a reauthentication asks for (`Some(None)`: keep the level).
    reauth: Option<Option<i32>>,
}

/// Writes the rotation of `row` as read; `None` if the row no longer holds
/// that pair (only possible when it was read without the row lock).
fn write_rotation(client: &mut SpiClient<'_>, row: &SessionRow, r: Rotation<'_>) -> Option<Pair> {
    let generation = row.next_generation();
    let access_token = token::encode(Kind::Access, &row.session_id, generation, &r.access);
    let refresh_token = token::encode(Kind::Refresh, &row.session_id, generation, &r.refresh);
    let deadlines = NewPair::at(r.now, r.absolute, r.policy);
    let reason = if r.reauth.is_some() {
        "reauthenticated"
    } else {
        "superseded"
    };
    let (retry_key_id, grace_until) = r.retry.unzip();
    let rotated = store::rotate(
        client,
        &store::RotateArgs {
            row,
            now: r.now,
            grace_until,
            retry_key_id,
            new_access_digest: &token::digest(&access_token),
            new_access_expires_at: deadlines.access_expires_at,
            new_refresh_digest: &token::digest(&refresh_token),
            new_refresh_expires_at: deadlines.refresh_expires_at,
            authenticated_at: r.reauth.map(|_| r.now),
            auth_level: r.reauth.flatten(),
            reason,
        },
    );
    rotated.then_some(Pair {
        session_id: row.session_id,
        access_token,
        access_expires_at: deadlines.access_expires_at,
        refresh_token,
        refresh_expires_at: deadlines.refresh_expires_at,
    })
}

/// The pair that replaced `parent`, derived again, with the caller's
/// effective deadlines; `None` if its retry key has been erased.
fn retry_pair(
    client: &mut SpiClient<'_>,
    row: &SessionRow,
    parent: &str,
    effective: Effective,
) -> Option<Pair> {
    let key = retry_keys::find(client, row.retry_key_id?, statement_now())?;
    let (access, refresh) = retry_pair::derive(parent, &key, &row.session_id, row.generation);
    let access_token = token::encode(Kind::Access, &row.session_id, row.generation, &access);
    let refresh_token = token::encode(Kind::Refresh, &row.session_id, row.generation, &refresh);
    // Only the holder of the true parent derives the true pair; check it.
    // (No pair of 0.1.0 is ever derived again: its rows have no retry key.)
    let genuine = token::same_digest(&token::digest(&access_token), Some(&row.access_digest))
        && token::same_digest(&token::digest(&refresh_token), Some(&row.refresh_digest));
    genuine.then_some(Pair {
        session_id: row.session_id,
        access_token,
        access_expires_at: effective.access,
        refresh_token,
        refresh_expires_at: effective.session,
    })
}

/// Rule 3: a superseded refresh token came back. The whole family dies, in
/// this transaction and, should it not commit, through the backstop (rule 4).
/// The durable record comes first: if anything fails between it and the
/// revocation (a cancel, a timeout), the backstop still revokes.
fn reuse_detected(client: &mut SpiClient<'_>, row: &SessionRow, replayed: i32, now: Micros) {
    let reuse = Reuse {
        session_id: row.session_id,
        detected_at: now,
        presented_generation: replayed,
        current_generation: row.generation,
    };
    backstop::detected(&reuse);
    revocation::revoke_for_reuse(client, &reuse, now);
}

pub fn revoke_token(token: Option<&str>) -> bool {
    let Some(parsed) = token.and_then(|t| token::parse(t, None)) else {
        return false;
    };
    if !genuine_unlocked(&parsed) {
        return false;
    }
    let now = statement_now();
    store::connect(|client| {
        housekeeping(client, now);
        let Some(row) = load_for_update(client, &parsed.session) else {
            return false;
        };
        if identify_locked(client, &parsed, &row).is_none() || row.revoked_at.is_some() {
            return false;
        }
        revocation::revoke(client, &[row.session_id], now, Event::Revoked, json!({})) == 1
    })
}

pub fn revoke_id(session_id: &SessionId) -> bool {
    let now = statement_now();
    probe::check_tables();
    store::connect(|client| {
        housekeeping(client, now);
        revocation::revoke(client, &[*session_id], now, Event::Revoked, json!({})) == 1
    })
}

/// Logout everywhere (but `keep`). Locks the user's sessions in session-id
/// order, the one order every multi-session operation uses.
pub fn revoke_user(user_id: &str, keep: Option<&SessionId>) -> usize {
    let now = statement_now();
    let policy = Policy::current();
    probe::check_tables();
    store::connect(|client| {
        housekeeping(client, now);
        let rows: Vec<SessionRow> = store::run(
            client,
            &store::LOAD_USER_FOR_UPDATE,
            &[user_id.into()],
            |t| t.map(|r| SessionRow::read(&r)).collect(),
        );
        let ids: Vec<SessionId> = rows
            .iter()
            .filter(|r| Some(&r.session_id) != keep)
            .filter(|r| now < Effective::of(&r.stored(), &policy).session)
            .map(|r| r.session_id)
            .collect();
        let kept = keep.map(SessionId::to_string);
        revocation::revoke(
            client,
            &ids,
            now,
            Event::RevokedUser,
            json!({ "kept_session": kept }),
        )
    })
}

pub fn list(user_id: &str) -> Vec<Listed> {
    let now = statement_now();
    let policy = Policy::current();
    probe::check_tables();
    let mut live: Vec<Listed> = store::connect(|client| {
        store::run(client, &store::LIST_USER, &[user_id.into()], |t| {
            t.filter_map(|r| {
                let row = SessionRow::read(&r);
                let expires_at = Effective::of(&row.stored(), &policy).session;
                (now < expires_at).then(|| {
                    let data: RawJsonb = store::req(&r, session_row::COLUMN_COUNT + 1);
                    Listed {
                        session_id: row.session_id,
                        created_at: row.created_at,
                        authenticated_at: row.authenticated_at,
                        last_refreshed_at: row.last_refreshed_at,
                        expires_at,
                        auth_level: row.auth_level,
                        data,
                    }
                })
            })
            .collect()
        })
    });
    live.sort_by_key(|s| std::cmp::Reverse((s.created_at, s.session_id)));
    live
}

pub fn set_data(session_id: &SessionId, data: RawJsonb) -> bool {
    let now = statement_now();
    let policy = Policy::current();
    probe::check_tables();
    store::connect(|client| {
        housekeeping(client, now);
        let Some(row) = load_for_update(client, session_id) else {
            return false;
        };
        if row.revoked_at.is_some() || now >= Effective::of(&row.stored(), &policy).session {
            return false;
        }
        store::run(
            client,
            &store::SET_DATA,
            &[store::uuid(session_id), data.into()],
            |_| (),
        );
        true
    })
}

/// The application verified the user again: a new pair at once, no grace
/// for the old one, `authenticated_at` now, the level raised if asked. Only
/// the current access token may do it: the in-grace parent of the current
/// pair (another tab that has not refreshed yet) is refused, or one tab's
/// step-up would supersede the pair another tab holds as current, and that
/// tab's next refresh would look like theft.
pub fn reauthenticate(token: Option<&str>, auth_level: Option<i32>) -> Result<Pair, Status> {
    let parsed = token
        .and_then(|t| token::parse(t, Some(Kind::Access)))
        .ok_or(Status::Invalid)?;
    if !genuine_unlocked(&parsed) {
        return Err(Status::Invalid);
    }
    let now = statement_now();
    let policy = Policy::current();
    store::connect(|client| {
        housekeeping(client, now);
        let row = load_for_update(client, &parsed.session).ok_or(Status::Invalid)?;
        let presented = identify_locked(client, &parsed, &row).ok_or(Status::Invalid)?;
        access_status(&presented, &row, now, &policy)?;
        if !matches!(presented, Presented::Current) {
            return Err(Status::Superseded);
        }
        // Fresh secrets, not derived: nothing the old pair's holders know
        // leads to the pair a re-authentication hands out.
        let (access, refresh) = new_pair_secrets();
        let absolute = Effective::of(&row.stored(), &policy).absolute;
        let pair = write_rotation(
            client,
            &row,
            Rotation {
                now,
                policy: &policy,
                absolute,
                access,
                refresh,
                retry: None,
                reauth: Some(auth_level),
            },
        )
        .unwrap_or_else(|| error::internal("reauthenticate", "the locked row changed"));
        let level = auth_level.map_or(row.auth_level, |l| l.max(row.auth_level));
        revocation::record(
            client,
            Event::Reauthenticated,
            now,
            &row.session_id,
            &row.user_id,
            json!({ "auth_level": level }),
        );
        Ok(pair)
    })
}
