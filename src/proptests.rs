//! Property tests of the pure rules (issue 19 §3): token parsing, the retry
//! pair, deadline arithmetic and the status rules, each property a rule of
//! docs/design.md or README.md restated over generated inputs. No server.
//!
//! ```text
//! cargo test --lib --no-default-features --features pg18 -- proptests::
//! PROPTEST_CASES=100000 cargo test --lib ... -- proptests::   # a longer run
//! ```
//!
//! Each property runs proptest's default 256 cases (`PROPTEST_CASES`
//! overrides it). Failure persistence is off: CI runs in a fresh clone, where
//! a regression file would be lost anyway, and proptest prints the shrunk
//! failing input, which belongs in the module's unit tests as a named case.
//!
//! Times are `TimestampTz` microseconds; PostgreSQL's `infinity` and
//! `-infinity` are `i64::MAX` and `i64::MIN`, so the generators weigh those
//! and values next to them. Settings come from the GUCs' own ranges
//! (`gucs`: seconds 1..=i32::MAX, the grace 0..=3,600,000 ms), and beyond
//! them up to `i64::MAX`. Tests build with overflow checks, so an
//! unsaturated addition anywhere below panics.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use proptest::prelude::*;

use crate::blacklist::{self, Blacklisted, Kept, ListedPair};
use crate::clock::{self, Effective, Micros, NewPair, Policy, Stored, SECOND};
use crate::ids::SessionId;
use crate::key_ring::KeyId;
use crate::lineage::{
    access_status, decide_refresh, identify, rotatable, Presented, Refresh, Status, RACE_WINDOW,
};
use crate::retry_keys::RetryKey;
use crate::retry_pair;
use crate::session_row::SessionRow;
use crate::standby::{self, Found, Position};
use crate::token::{self, Kind, Secret, FIRST_GENERATION, LEGACY_TOKEN_LEN, TOKEN_LEN};

const MINUTE: Micros = 60 * SECOND;
const DAY: Micros = 24 * 60 * MINUTE;
/// 2026-11-30 as a PostgreSQL time: where real sessions live.
const NOW: Micros = 849_312_000 * SECOND;

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Generators.

/// Any time, weighted towards the present and the type's limits.
fn timestamp() -> impl Strategy<Value = Micros> {
    prop_oneof![
        4 => (NOW - 400 * DAY)..(NOW + 400 * DAY),
        2 => any::<i64>(),
        1 => prop_oneof![
            Just(i64::MAX),
            Just(i64::MIN),
            Just(i64::MAX - 1),
            Just(i64::MIN + 1),
            Just(0),
        ],
    ]
}

/// A distance between two of a session's times: around the race window,
/// the grace, the default timeouts, or anything at all.
fn offset() -> impl Strategy<Value = Micros> {
    prop_oneof![
        3 => (-3 * RACE_WINDOW)..(3 * RACE_WINDOW),
        3 => (-60 * SECOND)..(60 * SECOND),
        3 => (-DAY)..DAY,
        1 => any::<i64>(),
        1 => prop_oneof![Just(i64::MAX), Just(i64::MIN)],
    ]
}

/// A time setting in microseconds: a GUC in seconds (1..=i32::MAX), a
/// realistic one, or past any GUC.
fn seconds_setting() -> impl Strategy<Value = Micros> {
    prop_oneof![
        3 => (1..=3 * 3600_i64).prop_map(|s| s * SECOND),
        2 => (1..=i64::from(i32::MAX)).prop_map(|s| s * SECOND),
        1 => prop_oneof![Just(i64::MAX), Just(0)],
    ]
}

/// `refresh_grace` in microseconds: the GUC's 0..=3,600,000 ms.
fn grace_setting() -> impl Strategy<Value = Micros> {
    prop_oneof![
        3 => (0..=20_000_i64).prop_map(|ms| ms * 1000),
        1 => (0..=3_600_000_i64).prop_map(|ms| ms * 1000),
        1 => Just(0),
    ]
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        seconds_setting(),
        seconds_setting(),
        seconds_setting(),
        grace_setting(),
    )
        .prop_map(
            |(access_ttl, idle_timeout, absolute_timeout, refresh_grace)| Policy {
                access_ttl,
                idle_timeout,
                absolute_timeout,
                refresh_grace,
            },
        )
}

fn stored() -> impl Strategy<Value = Stored> {
    prop::array::uniform5(timestamp()).prop_map(|t| Stored {
        created_at: t[0],
        last_refreshed_at: t[1],
        refresh_expires_at: t[2],
        absolute_expires_at: t[3],
        access_expires_at: t[4],
    })
}

/// How the session's current pair came to be.
#[derive(Clone, Copy, Debug)]
enum History {
    Issued,
    Refreshed,
    Reauthenticated,
}

/// How far a stored deadline lies from its anchor: mostly ahead (a live
/// session), sometimes anywhere.
fn deadline_offset() -> impl Strategy<Value = Micros> {
    prop_oneof![
        3 => 0..(2 * DAY),
        2 => offset(),
    ]
}

/// A session row in any state a session can reach (issued, refreshed,
/// re-authenticated; revoked or not; its times anywhere around each other
/// and the type's limits, mostly as the code writes them: the grace window
/// from a `refresh_grace` setting, deadlines ahead), and a token of it that
/// was presented.
fn row_and_presented() -> impl Strategy<Value = (SessionRow, Presented)> {
    (
        (timestamp(), offset()),
        prop::array::uniform8(deadline_offset()),
        prop_oneof![
            Just(History::Issued),
            Just(History::Refreshed),
            Just(History::Reauthenticated)
        ],
        prop_oneof![3 => Just(None), 1 => offset().prop_map(Some)],
        prop_oneof![3 => grace_setting(), 1 => offset()],
        (FIRST_GENERATION..=i32::MAX, 0..3_u8, any::<i32>()),
    )
        .prop_map(
            |((created, since), off, history, revoked, grace, (generation, which, older))| {
                let rotated = !matches!(history, History::Issued);
                let last = if rotated {
                    created.saturating_add(since)
                } else {
                    created
                };
                let at = |i: usize| last.saturating_add(off[i]);
                let row = SessionRow {
                    created_at: created,
                    authenticated_at: created,
                    last_refreshed_at: last,
                    generation: if rotated { generation.max(2) } else { 1 },
                    access_expires_at: at(0),
                    refresh_expires_at: at(1),
                    absolute_expires_at: created.saturating_add(off[2]),
                    grace_until: matches!(history, History::Refreshed)
                        .then(|| last.saturating_add(grace)),
                    retry_key_id: matches!(history, History::Refreshed).then_some(1),
                    revoked_at: revoked.map(|o| last.saturating_add(o)),
                    ..SessionRow::refreshed_at(0)
                };
                let presented = match which {
                    0 => Presented::Current,
                    // The parent's own deadline, by its kind: at(3) or at(4).
                    1 if rotated => Presented::Parent {
                        expires_at: at(3 + usize::from(older % 2 == 0)),
                    },
                    _ => Presented::Older {
                        generation: older,
                        expires_at: at(5),
                    },
                };
                (row, presented)
            },
        )
}

/// A session id of any 16 bytes.
fn session_id() -> impl Strategy<Value = SessionId> {
    any::<[u8; 16]>().prop_map(SessionId::from_bytes)
}

/// Any generation, weighted to the first one and the type's limits.
fn generation() -> impl Strategy<Value = i32> {
    prop_oneof![
        Just(FIRST_GENERATION - 1),
        Just(FIRST_GENERATION),
        Just(-1),
        Just(i32::MIN),
        Just(i32::MAX),
        any::<i32>(),
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(Kind::Access), Just(Kind::Refresh)]
}

fn other(kind: Kind) -> Kind {
    match kind {
        Kind::Access => Kind::Refresh,
        Kind::Refresh => Kind::Access,
    }
}

/// Strings shaped like tokens: a prefix (the two real ones, a wrong one, or
/// anything) and a body of about the right length from base64url and the
/// characters a careless encoder or an attacker would put there.
fn token_shaped() -> impl Strategy<Value = String> {
    let prefix = prop_oneof![
        Just("pgsa_at_".to_string()),
        Just("pgsa_rt_".to_string()),
        Just("pgsa_xx_".to_string()),
        Just("PGSA_AT_".to_string()),
        "[a-z_]{7,9}",
    ];
    let body = "[A-Za-z0-9_+/=é\\-]{62,72}";
    (prefix, body).prop_map(|(p, b)| p + &b)
}

/// A real token with one thing changed: its prefix, one character, its
/// length, or its body re-encoded in another base64 alphabet.
fn mutated_token() -> impl Strategy<Value = String> {
    (
        kind(),
        session_id(),
        generation(),
        any::<Secret>(),
        any::<bool>(),
        0..6_u8,
        any::<usize>(),
        "[ -~]{1,9}",
    )
        .prop_map(
            |(kind, session, generation, secret, legacy, how, at, text)| {
                let t = if legacy {
                    token::encode_legacy(kind, &session, &secret)
                } else {
                    token::encode(kind, &session, generation, &secret)
                };
                let i = at % t.len();
                match how {
                    0 => format!("{:8.8}{}", text + "________", &t[8..]),
                    1 => format!("{}{}{}", &t[..i], text.chars().next().unwrap(), &t[i + 1..]),
                    2 => t[..i].to_string(),
                    3 => t + &text,
                    4 => t.replace('-', "+").replace('_', "/"),
                    _ => t + "==",
                }
            },
        )
}

/// Anything a client can send as `text`: any Unicode, the lossy reading of
/// any bytes, something shaped like a token, or a token changed a little.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(any::<u8>(), 0..200)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        token_shaped(),
        mutated_token(),
    ]
}

fn expected_kind() -> impl Strategy<Value = Option<Kind>> {
    prop_oneof![Just(None), kind().prop_map(Some)]
}

/// `token` with bit `bit` (0..7: it stays ASCII, so still `text`) of byte
/// `at` flipped.
fn flip_ascii_bit(token: &str, at: usize, bit: u8) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let i = at % bytes.len();
    bytes[i] ^= 1 << (bit % 7);
    String::from_utf8(bytes).expect("ASCII stays UTF-8")
}

fn no_blacklist(_: &token::Parsed) -> Option<Blacklisted> {
    None
}

/// The blacklist row of a pair of real tokens (access, refresh).
fn listed(generation: i32, access: &str, refresh: &str) -> ListedPair {
    let kept = |t: &str| {
        Some(Kept {
            digest: token::digest(t).to_vec(),
            expires_at: i64::MAX,
        })
    };
    ListedPair {
        generation,
        access: kept(access),
        refresh: kept(refresh),
        listed_at: 0,
    }
}

// ---------------------------------------------------------------------------
// Tokens (src/token.rs).

proptest! {
    #![proptest_config(config())]

    /// Any text is either refused or a token of a documented shape: 78
    /// characters (or 0.1.0's 72), a kind's prefix (the expected one, if
    /// asked), base64url in its one canonical spelling, a generation of at
    /// least the first exactly when the format carries one, and the digest
    /// of the very text presented.
    #[test]
    fn any_text_parses_to_nothing_or_a_documented_token(s in any_text(), expected in expected_kind()) {
        let Some(parsed) = token::parse(&s, expected) else { return Ok(()) };
        prop_assert!(s.len() == TOKEN_LEN || s.len() == LEGACY_TOKEN_LEN);
        prop_assert!(s.starts_with(parsed.kind.prefix()));
        if let Some(want) = expected {
            prop_assert_eq!(parsed.kind, want);
        }
        let body = &s[8..];
        prop_assert!(body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        let bytes = URL_SAFE_NO_PAD.decode(body).expect("accepted, so base64url");
        prop_assert_eq!(URL_SAFE_NO_PAD.encode(&bytes), body, "one spelling per token");
        prop_assert_eq!(&bytes[..16], parsed.session.as_bytes());
        match parsed.generation {
            Some(g) => {
                prop_assert_eq!(s.len(), TOKEN_LEN);
                prop_assert!(g >= FIRST_GENERATION);
            }
            None => prop_assert_eq!(s.len(), LEGACY_TOKEN_LEN),
        }
        prop_assert_eq!(parsed.digest, token::digest(&s));
    }

    /// encode then parse gives back the kind, the session and the
    /// generation, for the expected kind or none, and nothing for the other
    /// kind; a generation below the first is never a token.
    #[test]
    fn tokens_round_trip(kind in kind(), session in session_id(), generation in generation(), secret in any::<Secret>()) {
        let t = token::encode(kind, &session, generation, &secret);
        prop_assert_eq!(t.len(), TOKEN_LEN);
        prop_assert!(token::parse(&t, Some(other(kind))).is_none(), "wrong kind");
        let parsed = token::parse(&t, Some(kind));
        if generation < FIRST_GENERATION {
            prop_assert!(parsed.is_none(), "generation {} was never issued", generation);
            return Ok(());
        }
        let parsed = parsed.expect("a token we made");
        prop_assert_eq!(parsed.kind, kind);
        prop_assert_eq!(parsed.session, session);
        prop_assert_eq!(parsed.generation, Some(generation));
        prop_assert_eq!(parsed.digest, token::digest(&t));
        prop_assert!(token::parse(&t, None).is_some());
    }

    /// Tokens of 0.1.0 parse without a generation.
    #[test]
    fn legacy_tokens_round_trip(kind in kind(), session in session_id(), secret in any::<Secret>()) {
        let t = token::encode_legacy(kind, &session, &secret);
        let parsed = token::parse(&t, Some(kind)).expect("a 0.1.0 token");
        prop_assert_eq!((parsed.session, parsed.generation), (session, None));
        prop_assert_eq!(parsed.digest, token::digest(&t));
    }

    /// Any one bit flipped, anywhere in a token, or its prefix swapped for
    /// the other kind's: refused, or a token that identifies as nothing of
    /// its session (neither the current nor the parent pair).
    #[test]
    fn a_mutated_token_identifies_as_nothing(
        (row, tokens) in issued_pairs(),
        which in 0..4_usize,
        at in any::<usize>(),
        bit in 0..7_u8,
        swap_prefix in any::<bool>(),
    ) {
        let genuine = &tokens[which];
        let mutated = if swap_prefix {
            let kind = if genuine.starts_with(Kind::Access.prefix()) { Kind::Refresh } else { Kind::Access };
            format!("{}{}", kind.prefix(), &genuine[8..])
        } else {
            flip_ascii_bit(genuine, at, bit)
        };
        prop_assert_ne!(&mutated, genuine);
        let parent = |parsed: &token::Parsed| {
            blacklist::find(parsed, [listed(row.generation - 1, &tokens[2], &tokens[3])])
        };
        if let Some(parsed) = token::parse(&mutated, None) {
            prop_assert_eq!(identify(&parsed, &row, parent), None);
            // Nor is it found on the blacklist beside the genuine tokens.
            let both = [listed(1, &tokens[0], &tokens[1]), listed(2, &tokens[2], &tokens[3])];
            prop_assert_eq!(blacklist::find(&parsed, both), None);
        }
        // ... while the genuine token is what it was issued as.
        let parsed = token::parse(genuine, None).expect("genuine");
        let expected = if which < 2 {
            Presented::Current
        } else {
            Presented::Parent { expires_at: i64::MAX }
        };
        prop_assert_eq!(identify(&parsed, &row, parent), Some(expected));
        // The row alone knows only the current pair.
        let on_the_row = (which < 2).then_some(Presented::Current);
        prop_assert_eq!(identify(&parsed, &row, no_blacklist), on_the_row);
    }
}

/// A rotated session row whose digests are those of real tokens, and the
/// tokens: current access, current refresh, parent access, parent refresh
/// (the parent pair's digests are for its blacklist row, `listed`).
fn issued_pairs() -> impl Strategy<Value = (SessionRow, [String; 4])> {
    (
        session_id(),
        FIRST_GENERATION..i32::MAX,
        prop::array::uniform4(any::<Secret>()),
    )
        .prop_map(|(session, parent_generation, secrets)| {
            let generation = parent_generation + 1;
            let tokens = [
                token::encode(Kind::Access, &session, generation, &secrets[0]),
                token::encode(Kind::Refresh, &session, generation, &secrets[1]),
                token::encode(Kind::Access, &session, parent_generation, &secrets[2]),
                token::encode(Kind::Refresh, &session, parent_generation, &secrets[3]),
            ];
            let d = |i: usize| token::digest(&tokens[i]).to_vec();
            let row = SessionRow {
                session_id: session,
                generation,
                access_digest: d(0),
                refresh_digest: d(1),
                ..SessionRow::refreshed_at(MINUTE)
            };
            (row, tokens)
        })
}

// ---------------------------------------------------------------------------
// The retry pair (src/retry_pair.rs).

/// What a retry checks (`session::retry_pair`): the pair derived again from
/// the presented parent must be the one the rotation stored.
fn retry_matches(
    parent: &str,
    key: &RetryKey,
    session: &SessionId,
    generation: i32,
    stored: &(token::Digest, token::Digest),
) -> (bool, bool) {
    let (access, refresh) = retry_pair::derive(parent, key, session, generation);
    let access = token::encode(Kind::Access, session, generation, &access);
    let refresh = token::encode(Kind::Refresh, session, generation, &refresh);
    (
        token::same_digest(&token::digest(&access), Some(&stored.0)),
        token::same_digest(&token::digest(&refresh), Some(&stored.1)),
    )
}

/// What a rotation stores of the pair it derives: its tokens' digests.
fn rotation_digests(
    parent: &str,
    key: &RetryKey,
    session: &SessionId,
    generation: i32,
) -> (token::Digest, token::Digest) {
    let (access, refresh) = retry_pair::derive(parent, key, session, generation);
    (
        token::digest(&token::encode(Kind::Access, session, generation, &access)),
        token::digest(&token::encode(Kind::Refresh, session, generation, &refresh)),
    )
}

fn retry_inputs() -> impl Strategy<Value = (String, RetryKey, SessionId, i32)> {
    (
        session_id(),
        FIRST_GENERATION..i32::MAX,
        any::<Secret>(),
        any::<(KeyId, Secret)>(),
    )
        .prop_map(|(session, generation, parent_secret, (id, secret))| {
            let parent = token::encode(Kind::Refresh, &session, generation, &parent_secret);
            (parent, RetryKey { id, secret }, session, generation + 1)
        })
}

proptest! {
    #![proptest_config(config())]

    /// A retry with the same parent and key derives the very pair the
    /// rotation stored, whose tokens carry the session and the new
    /// generation; its access and refresh secrets differ.
    #[test]
    fn a_retry_derives_the_stored_pair((parent, key, session, generation) in retry_inputs()) {
        let stored = rotation_digests(&parent, &key, &session, generation);
        prop_assert_eq!(retry_matches(&parent, &key, &session, generation, &stored), (true, true));
        let (access, refresh) = retry_pair::derive(&parent, &key, &session, generation);
        prop_assert_ne!(access, refresh);
        for (kind, secret) in [(Kind::Access, access), (Kind::Refresh, refresh)] {
            let t = token::encode(kind, &session, generation, &secret);
            let parsed = token::parse(&t, Some(kind)).expect("a derived token parses");
            prop_assert_eq!((parsed.session, parsed.generation), (session, Some(generation)));
        }
    }

    /// Any one bit flipped in any input (the parent token, the key, the
    /// session id, the generation) derives a pair that matches neither
    /// stored digest: the retry is refused.
    #[test]
    fn any_bit_flip_in_a_retry_input_is_refused(
        (parent, key, session, generation) in retry_inputs(),
        input in 0..4_u8,
        at in any::<usize>(),
        bit in 0..8_u8,
    ) {
        let stored = rotation_digests(&parent, &key, &session, generation);
        let (mut p, mut k, mut s, mut g) = (parent.clone(), key.secret, *session.as_bytes(), generation);
        match input {
            0 => p = flip_ascii_bit(&parent, at, bit),
            1 => k[at % k.len()] ^= 1 << bit,
            2 => s[at % s.len()] ^= 1 << bit,
            _ => g ^= 1 << (at % 32),
        }
        let flipped_key = RetryKey { id: key.id, secret: k };
        let flipped_session = SessionId::from_bytes(s);
        prop_assert_eq!(retry_matches(&p, &flipped_key, &flipped_session, g, &stored), (false, false));
        // The secrets themselves differ, not only the tokens around them:
        // a pair is bound to its session and generation.
        let (a0, r0) = retry_pair::derive(&parent, &key, &session, generation);
        let (a1, r1) = retry_pair::derive(&p, &flipped_key, &flipped_session, g);
        prop_assert!(a0 != a1 && r0 != r1);
    }
}

// ---------------------------------------------------------------------------
// Deadlines (src/clock.rs).

proptest! {
    #![proptest_config(config())]

    /// For any stored times and any settings (infinity included), the
    /// effective deadlines exist (no overflow), are never later than the
    /// stored ones nor than their anchors plus the current settings, and
    /// nest: access within the session, the session within the absolute.
    #[test]
    fn effective_deadlines_never_exceed_stored_or_current_ones(s in stored(), p in policy()) {
        let e = Effective::of(&s, &p);
        prop_assert!(e.access <= e.session && e.session <= e.absolute);
        prop_assert!(e.session <= s.refresh_expires_at);
        prop_assert!(e.absolute <= s.absolute_expires_at);
        prop_assert!(e.access <= s.access_expires_at);
        prop_assert!(e.session <= s.last_refreshed_at.saturating_add(p.idle_timeout));
        prop_assert!(e.absolute <= s.created_at.saturating_add(p.absolute_timeout));
        prop_assert!(e.access <= s.last_refreshed_at.saturating_add(p.access_ttl));
    }

    /// Loosening a setting never shortens a deadline and, by the previous
    /// property, never extends one past what is stored: a DBA's change
    /// moves effective deadlines the way the change goes, or not at all.
    #[test]
    fn effective_deadlines_follow_the_settings_monotonically(
        s in stored(), p in policy(), more in prop::array::uniform3(0..=i64::MAX),
    ) {
        let looser = Policy {
            access_ttl: p.access_ttl.saturating_add(more[0]),
            idle_timeout: p.idle_timeout.saturating_add(more[1]),
            absolute_timeout: p.absolute_timeout.saturating_add(more[2]),
            ..p
        };
        let (tight, loose) = (Effective::of(&s, &p), Effective::of(&s, &looser));
        prop_assert!(tight.access <= loose.access);
        prop_assert!(tight.session <= loose.session);
        prop_assert!(tight.absolute <= loose.absolute);
    }

    /// A new pair never outlives the absolute deadline, the access token
    /// never outlives the refresh token, and each is its setting from now
    /// when nothing caps it (all saturating at infinity).
    #[test]
    fn new_pairs_nest_within_their_caps(now in timestamp(), absolute in timestamp(), p in policy()) {
        let pair = NewPair::at(now, absolute, &p);
        prop_assert!(pair.access_expires_at <= pair.refresh_expires_at);
        prop_assert!(pair.refresh_expires_at <= absolute);
        let idle_end = now.saturating_add(p.idle_timeout);
        let ttl_end = now.saturating_add(p.access_ttl);
        prop_assert_eq!(pair.refresh_expires_at, idle_end.min(absolute));
        prop_assert_eq!(pair.access_expires_at, ttl_end.min(idle_end).min(absolute));
    }

    /// What a call returns is what every later check enforces: a pair
    /// stored as issued or rotated under a policy has, under that policy,
    /// exactly the effective deadlines the call handed out.
    #[test]
    fn returned_deadlines_are_the_enforced_ones(created in timestamp(), since in 0..=i64::MAX, p in policy()) {
        let now = created.saturating_add(since);
        let absolute = created.saturating_add(p.absolute_timeout);
        let pair = NewPair::at(now, absolute, &p);
        let s = Stored {
            created_at: created,
            last_refreshed_at: now,
            refresh_expires_at: pair.refresh_expires_at,
            absolute_expires_at: absolute,
            access_expires_at: pair.access_expires_at,
        };
        let e = Effective::of(&s, &p);
        prop_assert_eq!(e, Effective { session: pair.refresh_expires_at, absolute, access: pair.access_expires_at });
    }

    /// Unix milliseconds (the session id's date) exist for every time,
    /// grow with it, and round-trip to the millisecond for every time from
    /// 1970 on.
    #[test]
    fn unix_millis_are_total_monotonic_and_round_trip(a in timestamp(), b in timestamp(), ms in any::<u64>()) {
        let (lo, hi) = (a.min(b), a.max(b));
        prop_assert!(clock::unix_millis(lo) <= clock::unix_millis(hi));
        let _ = clock::from_unix_millis(ms);
        let epoch_1970 = -946_684_800 * SECOND;
        if a >= epoch_1970 && a < i64::MAX - 946_684_800 * SECOND {
            prop_assert_eq!(clock::from_unix_millis(clock::unix_millis(a)), a - a.rem_euclid(1000));
        }
    }
}

// ---------------------------------------------------------------------------
// The status rules (src/lineage.rs, src/standby.rs; docs/design.md).

fn now_around(row: &SessionRow) -> impl Strategy<Value = Micros> {
    let anchor = row.rotated_at().unwrap_or(row.created_at);
    prop_oneof![
        3 => offset().prop_map(move |o| anchor.saturating_add(o)),
        1 => timestamp(),
    ]
}

fn refresh_case() -> impl Strategy<Value = (SessionRow, Presented, Micros, Policy, bool)> {
    row_and_presented().prop_flat_map(|(row, presented)| {
        let now = now_around(&row);
        (Just(row), Just(presented), now, policy(), any::<bool>())
    })
}

proptest! {
    #![proptest_config(config())]

    /// Rule 5 and the precedence: a revoked session never answers ok, to a
    /// refresh or a validation, whatever token of it is presented.
    #[test]
    fn a_revoked_session_never_answers_ok(
        (row, presented, now, p, was_current) in refresh_case(), revoked_at in timestamp(),
    ) {
        let row = SessionRow { revoked_at: Some(revoked_at), ..row };
        prop_assert_eq!(decide_refresh(&presented, &row, now, &p, was_current), Refresh::Refused(Status::Revoked));
        prop_assert_eq!(access_status(&presented, &row, now, &p), Err(Status::Revoked));
        prop_assert!(rotatable(&row, now, &p).is_none());
    }

    /// Precedence: on a live session past its effective deadline every
    /// refresh is `expired`, never reuse.
    #[test]
    fn an_expired_session_refuses_every_refresh_as_expired(
        (row, presented, _, p, was_current) in refresh_case(), past in 0..=i64::MAX,
    ) {
        let row = SessionRow { revoked_at: None, ..row };
        let now = Effective::of(&row.stored(), &p).session.saturating_add(past);
        prop_assert_eq!(decide_refresh(&presented, &row, now, &p, was_current), Refresh::Refused(Status::Expired));
        prop_assert!(rotatable(&row, now, &p).is_none());
    }

    /// Reuse is detected only on a live session, never for the current
    /// token, and never for a token that was current when the call began
    /// (rule 7); a rotation or retry hands out the caller's effective
    /// deadlines of a session still alive.
    #[test]
    fn reuse_is_never_decided_for_the_current_token((row, presented, now, p, was_current) in refresh_case()) {
        let decided = decide_refresh(&presented, &row, now, &p, was_current);
        let e = Effective::of(&row.stored(), &p);
        match decided {
            Refresh::ReuseDetected { .. } => {
                prop_assert!(row.revoked_at.is_none() && now < e.session);
                prop_assert_ne!(&presented, &Presented::Current);
                prop_assert!(!was_current);
            }
            Refresh::Rotate(effective) | Refresh::Retry(effective) => {
                prop_assert_eq!(effective, e);
                prop_assert_eq!(rotatable(&row, now, &p), Some(e));
            }
            Refresh::Refused(status) => {
                prop_assert!(matches!(status, Status::Revoked | Status::Expired), "{:?}", status);
            }
        }
        if presented == Presented::Current && row.revoked_at.is_none() && now < e.session {
            prop_assert_eq!(decided, Refresh::Rotate(e), "rule 1");
        }
    }

    /// Rules 2 and 7: the parent of a refresh rotation presented inside its
    /// grace window, within the race window of the rotation, or by a call
    /// that began while it was current, gets the same pair again, never
    /// `reuse_detected`; only a refresh rotation has such a pair (never a
    /// re-authentication, never an older ancestor).
    #[test]
    fn the_parent_inside_its_window_is_a_retry((row, presented, now, p, was_current) in refresh_case()) {
        let decided = decide_refresh(&presented, &row, now, &p, was_current);
        if matches!(decided, Refresh::Retry(_)) {
            let parent = matches!(presented, Presented::Parent { .. });
            prop_assert!(parent);
            prop_assert!(row.grace_until.is_some(), "a re-authentication has no grace");
        }
        let live = row.revoked_at.is_none() && now < Effective::of(&row.stored(), &p).session;
        let (Some(grace_until), Some(rotated)) = (row.grace_until, row.rotated_at()) else { return Ok(()) };
        let in_window = now < grace_until && now < rotated.saturating_add(p.refresh_grace);
        let racing = now < rotated.saturating_add(RACE_WINDOW);
        let parent = matches!(presented, Presented::Parent { .. });
        if parent && live && (in_window || racing || was_current) {
            prop_assert!(matches!(decided, Refresh::Retry(_)), "{:?}", decided);
        }
        // ... and outside its window, by the caller's own setting, not racing
        // and not current when the call began, it never is.
        if !(in_window || racing || was_current) {
            prop_assert!(!matches!(decided, Refresh::Retry(_)), "{:?}", decided);
        }
    }

    /// Rule 2: the caller's current grace setting shortens the window fixed
    /// at rotation, never lengthens it.
    #[test]
    fn a_shorter_grace_never_allows_more_retries(
        (row, presented, now, p, was_current) in refresh_case(), shorter in 0..=i64::MAX,
    ) {
        let tight = Policy { refresh_grace: p.refresh_grace.saturating_sub(shorter).max(0), ..p };
        if matches!(decide_refresh(&presented, &row, now, &tight, was_current), Refresh::Retry(_)) {
            prop_assert!(matches!(decide_refresh(&presented, &row, now, &p, was_current), Refresh::Retry(_)));
        }
    }

    /// Rule 6: an access token validates only as the current one until its
    /// effective deadline, or as the parent of a refresh rotation for at
    /// most `refresh_grace` after it (and never past the session); an older
    /// ancestor never. A failing token answers `revoked` or `expired`.
    #[test]
    fn access_tokens_validate_only_inside_their_deadlines((row, presented, now, p, _) in refresh_case()) {
        let e = Effective::of(&row.stored(), &p);
        match access_status(&presented, &row, now, &p) {
            Ok(until) => {
                prop_assert!(row.revoked_at.is_none());
                prop_assert!(now < until && until <= e.session);
                match presented {
                    Presented::Current => prop_assert_eq!(until, e.access),
                    Presented::Parent { expires_at } => {
                        let (grace_until, rotated) = (row.grace_until.unwrap(), row.rotated_at().unwrap());
                        prop_assert!(until <= grace_until && until <= expires_at);
                        prop_assert!(until <= rotated.saturating_add(p.refresh_grace));
                    }
                    Presented::Older { .. } => prop_assert!(false, "an ancestor validated"),
                }
            }
            Err(status) => prop_assert!(matches!(status, Status::Revoked | Status::Expired), "{:?}", status),
        }
        // Rule 6: after its window, by the caller's setting, the parent of
        // a refresh answers `revoked`; a re-authentication's parent at once.
        if let (Presented::Parent { .. }, Some(rotated)) = (&presented, row.rotated_at()) {
            let window_end = row.grace_until.map(|g| g.min(rotated.saturating_add(p.refresh_grace)));
            if window_end.is_none_or(|end| now >= end) {
                prop_assert_eq!(access_status(&presented, &row, now, &p), Err(Status::Revoked));
            }
        }
    }

    /// A token that stopped validating never validates again (the row
    /// unchanged): the answer is monotonic in time.
    #[test]
    fn a_token_that_stopped_validating_stays_stopped(
        (row, presented, t1, p, _) in refresh_case(), later in 0..=i64::MAX,
    ) {
        let t2 = t1.saturating_add(later);
        if access_status(&presented, &row, t2, &p).is_ok() {
            prop_assert!(access_status(&presented, &row, t1, &p).is_ok());
        }
    }

    /// Rule 8 on a standby: the answer for a token it cannot match depends
    /// on the session id and the claimed generation only, never on the
    /// secret (its digest); a replayed revocation or a claim at or below the
    /// replayed generation is `invalid`; no time overflows.
    #[test]
    fn a_standby_answer_never_depends_on_the_secret(
        (row, _) in row_and_presented(),
        session in session_id(),
        claim in prop::option::of((any::<bool>(), -2..=2_i32, any::<i32>())),
        digests in any::<[[u8; 16]; 2]>(),
        times in (prop::option::of(timestamp()), timestamp(), timestamp()),
        found_row in any::<bool>(),
    ) {
        let at = Position { replayed_until: times.0, snapshot_at: times.1, now: times.2 };
        // A claim next to the row's generation, or anywhere.
        let generation = claim.map(|(near, delta, any)| if near { row.generation.saturating_add(delta) } else { any });
        let parsed = |digest: [u8; 16]| token::Parsed { kind: Kind::Access, session, generation, digest };
        let found = || if found_row { Found::Row(&row) } else { Found::Nothing };
        let answer = standby::unmatched(&parsed(digests[0]), found(), at);
        prop_assert_eq!(answer, standby::unmatched(&parsed(digests[1]), found(), at));
        prop_assert!(matches!(answer, Status::Invalid | Status::NotReplayed));
        if found_row && (row.revoked_at.is_some() || generation.is_none_or(|g| g <= row.generation)) {
            prop_assert_eq!(answer, Status::Invalid);
        }
        if found_row && row.revoked_at.is_none() && generation.is_some_and(|g| g > row.generation) {
            prop_assert_eq!(answer, Status::NotReplayed, "a rotation not replayed yet");
        }
        if !found_row && session.issued_unix_ms().is_none() {
            prop_assert_eq!(answer, Status::Invalid, "an undated id");
        }
    }
}

/// The status words a call can answer are the contract's, plus the one
/// `session_reauthenticate` turns into SA003.
#[test]
fn status_words_are_the_documented_ones() {
    let words = [
        Status::Invalid,
        Status::Revoked,
        Status::Expired,
        Status::ReuseDetected,
        Status::Superseded,
        Status::NotReplayed,
    ]
    .map(Status::as_str);
    assert_eq!(
        words,
        [
            "invalid",
            "revoked",
            "expired",
            "reuse_detected",
            "superseded",
            "not_replayed"
        ]
    );
}
