"""No plaintext token at rest: not in any table of the private schema, not in
the server log (with statement logging on and tokens bound as parameters),
not in a NOTIFY payload.

The scans are generic: every relation of schema session_auth is discovered
from the catalog, each row is rendered as text and each bytea column is also
hex-encoded, and each is searched for every token, the token's body (the
part after its fixed prefix), and the hex of both the token's bytes and the
bytes its body encodes. Positive controls prove the scans would find a token
if one were there.
"""

import json
import time

import psycopg
import pytest

import sa

ALLOWED_EVENTS = {"issued", "reuse_detected", "revoked", "revoked_user", "reauthenticated", "evicted"}


def private_relations(conn):
    return conn.execute(
        """
        SELECT c.oid::regclass::text AS rel,
               array_remove(array_agg(quote_ident(a.attname) ORDER BY a.attnum)
                            FILTER (WHERE a.atttypid = 'bytea'::regtype), NULL) AS bytea_cols
        FROM pg_class c
        LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        WHERE c.relnamespace = 'session_auth'::regnamespace
          AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
        GROUP BY c.oid
        ORDER BY 1
        """
    ).fetchall()


def dump_private_schema(conn):
    """{relation: [text of each row, hex of each bytea value...]}"""
    dump = {}
    for r in private_relations(conn):
        texts = [row["t"] for row in conn.execute(f"SELECT ROW(x.*)::text AS t FROM {r['rel']} AS x")]
        for col in r["bytea_cols"] or []:
            texts += [
                row["h"]
                for row in conn.execute(f"SELECT encode({col}, 'hex') AS h FROM {r['rel']} WHERE {col} IS NOT NULL")
            ]
        dump[r["rel"]] = texts
    return dump


def needles(token, prefixes):
    """Forms a stored plaintext token could take."""
    out = {token: "token", token.encode().hex(): "hex of the token"}
    prefix = next((p for p in prefixes if token.startswith(p)), "")
    body = token[len(prefix):]
    assert len(body) >= 43, "a token body shorter than 256 bits of base64"
    out[body] = "token body"
    out[body.encode().hex()] = "hex of the token body"
    raw = sa.b64url_decode(body)
    if raw and len(raw) >= 32:
        out[raw.hex()] = "hex of the decoded body"
        out[raw[-32:].hex()] = "hex of the last 32 bytes of the decoded body (the secret)"
    return out


def find(haystacks, tokens, prefixes):
    """[(where, needle kind, token start)] for every hit. Hex needles are
    matched case-insensitively."""
    lowered = {where: [t.lower() for t in texts] for where, texts in haystacks.items()}
    hits = []
    for token in tokens:
        for needle, kind in needles(token, prefixes).items():
            for where, texts in haystacks.items():
                pool = lowered[where] if kind.startswith("hex") else texts
                if any(needle in t for t in pool):
                    hits.append((where, kind, token[:12] + "..."))
    return hits


@pytest.fixture(scope="module")
def workload(cluster):
    """Runs every kind of operation with tokens as bind parameters and
    returns what it saw: tokens, notifications, sessions."""
    listener = cluster.connect()
    listener.execute("LISTEN session_auth")
    app = cluster.connect()
    tight = cluster.connect()  # a connection with a short grace window
    tight.execute("SET session_auth.refresh_grace = '100ms'")

    tokens, sessions = [], []

    def keep(row):
        tokens.extend(t for t in sa.pair(row) if t)
        return row

    users = ["alice", "bob", "carol", "dave", "erin", "frank", "mallory", "\x01\"\\" * 85 + "z"]
    assert len(users[-1].encode()) == 256
    for i, user in enumerate(users):
        s = keep(sa.issue(app, user, {"device": f"dev{i}", "csrf": "not-a-token"}))
        sessions.append(s)
    # a second session for alice, so revoke_user with keep_session has work
    alice2 = keep(sa.issue(app, "alice", {"device": "alice-2"}))
    alice3 = keep(sa.issue(app, "alice", {"device": "alice-3"}, auth_level=2))
    expected = {"issued": len(users) + 2}

    # Rotate sessions 0..3 twice each: superseded tokens go to the blacklist.
    history = {i: [sessions[i]] for i in range(len(sessions))}
    for i in range(4):
        for _ in range(2):
            r = keep(sa.refresh(app, history[i][-1]["refresh_token"]))
            assert r["status"] == "ok", r
            history[i].append(r)

    # Rule 2: a retry within the grace window gets the same pair (the pair is
    # kept wrapped so that it can be answered again).
    again = sa.refresh(app, history[2][1]["refresh_token"])
    assert again["status"] == "ok" and sa.pair(again) == sa.pair(history[2][2]), "grace retry"

    # Rule 3: the parent of session 1, replayed after a 100ms grace window.
    time.sleep(0.25)
    r = sa.refresh(tight, history[1][1]["refresh_token"])
    assert r["status"] == "reuse_detected", r
    expected["reuse_detected"] = 1
    # An older ancestor of session 3 is reuse too.
    r = sa.refresh(app, history[3][0]["refresh_token"])
    assert r["status"] == "reuse_detected", r
    expected["reuse_detected"] += 1

    # Revocations by refresh token, by superseded access token, by id, by user.
    assert sa.revoke(app, history[0][-1]["refresh_token"]) is True
    assert sa.revoke(app, history[2][0]["access_token"]) is True
    assert sa.revoke(app, sessions[4]["access_token"]) is True
    assert sa.revoke(app, sessions[4]["access_token"]) is False  # idempotent
    assert sa.revoke_id(app, sessions[5]["session_id"]) is True
    expected["revoked"] = 4
    assert sa.revoke_user(app, "alice", keep_session=alice3["session_id"]) == 1  # sessions[0] is revoked already
    expected["revoked_user"] = 1

    # Reauthenticate one, set data on it, then replay its pre-reauthentication
    # refresh token (reuse: no grace after a reauthentication, only the
    # 100 ms race window of design rule 7, which the sleep below passes).
    re = keep(sa.reauthenticate(app, sessions[6]["access_token"], 3))
    assert sa.validate(app, re["access_token"])["status"] == "ok"
    assert sa.validate(app, sessions[6]["access_token"])["status"] != "ok"
    assert sa.set_data(app, re["session_id"], {"roles": ["admin"], "note": "set_data"}) is True
    assert sa.require(app, re["access_token"], min_auth_level=3)["auth_level"] == 3
    time.sleep(0.2)
    assert sa.refresh(app, sessions[6]["refresh_token"])["status"] == "reuse_detected"
    expected["reuse_detected"] += 1
    # The last one stays live, with new data.
    assert sa.set_data(app, sessions[7]["session_id"], {"theme": "dark"}) is True
    for t in list(tokens):
        sa.validate(app, t)
    assert [r["session_id"] for r in sa.list_sessions(app, "alice")] == [alice3["session_id"]]

    # The notifications of the committed transactions, in commit order.
    want = sum(expected.values())
    notes = list(listener.notifies(timeout=5, stop_after=want))
    # anything more (e.g. a `reauthenticated` notice) arrives by now too
    notes += list(listener.notifies(timeout=0.5))
    return {
        "tokens": tokens,
        "sessions": sessions + [alice2, alice3],
        "notes": notes,
        "expected_events": expected,
        "users": users,
    }


def test_no_plaintext_token_in_tables_log_or_notify(cluster, connect, workload):
    tokens = workload["tokens"]
    assert len(tokens) >= 36
    prefix_a = sa.common_prefix(s["access_token"] for s in workload["sessions"])
    prefix_r = sa.common_prefix(s["refresh_token"] for s in workload["sessions"])
    assert prefix_a and prefix_r and prefix_a != prefix_r, "distinct fixed prefixes"
    prefixes = [prefix_a, prefix_r]

    db = connect()
    dump = dump_private_schema(db)
    assert {"session_auth.sessions", "session_auth.blacklist", "session_auth.events"} <= set(dump), dump.keys()
    assert sum(len(v) for v in dump.values()) > 20, "the workload left rows to scan"
    hits = find(dump, tokens, prefixes)
    assert not hits, f"plaintext token material in the private schema: {hits[:5]}"

    log = cluster.log_text()
    hits = find({"server.log": [log]}, tokens, prefixes)
    assert not hits, f"plaintext token in the server log: {hits[:5]}"
    # The statements were logged, with their parameters as $n placeholders.
    for fn in ("session_issue", "session_refresh", "session_validate", "session_revoke",
               "session_reauthenticate"):
        assert f"{fn}($1" in log, f"no {fn} statement in the log: is statement logging on?"

    payloads = [n.payload for n in workload["notes"]]
    hits = find({"NOTIFY": payloads}, tokens, prefixes)
    assert not hits, f"plaintext token in a NOTIFY payload: {hits[:5]}"


def test_notify_payloads_follow_the_contract(workload):
    notes = workload["notes"]
    assert notes, "no notification at all"
    known = {s["session_id"]: None for s in workload["sessions"]}
    counts = {}
    for n in notes:
        assert n.channel == "session_auth"
        assert len(n.payload.encode()) < 8000
        body = json.loads(n.payload)
        assert isinstance(body, dict) and set(body) == {"event", "event_id", "session_id", "user_id"}, body
        assert isinstance(body["event_id"], int), body
        assert body["event"] in ALLOWED_EVENTS, body
        assert body["user_id"] in workload["users"], body
        assert any(str(sid) == body["session_id"] for sid in known), body
        counts[body["event"]] = counts.get(body["event"], 0) + 1
    counts.pop("reauthenticated", None)  # the contract neither requires nor forbids it
    assert counts == workload["expected_events"]
    # The 256-byte user id full of characters JSON must escape round-trips.
    assert any(json.loads(n.payload)["user_id"] == workload["users"][-1] for n in notes)


def test_scans_would_find_a_token(cluster, connect):
    """Positive controls: the table scan, the log scan and logging itself."""
    db = connect()
    s = sa.issue(db, "control")
    tok = s["refresh_token"]
    prefixes = [sa.common_prefix([s["access_token"], tok])]

    # Table scan: a token planted in a new relation of the private schema (text
    # and bytea), in a transaction rolled back, is found by discovery + scan.
    with connect(autocommit=False) as tx:
        tx.execute("CREATE TABLE session_auth.zz_probe (t text, b bytea)")
        tx.execute("INSERT INTO session_auth.zz_probe VALUES (NULL, convert_to(%s, 'UTF8'))", [tok])
        hits = find(dump_private_schema(tx), [tok], prefixes)
        assert ("session_auth.zz_probe", "hex of the token") in {h[:2] for h in hits}
        tx.execute("UPDATE session_auth.zz_probe SET t = %s, b = NULL", [tok[len(prefixes[0]):]])
        assert any(h[0] == "session_auth.zz_probe" for h in find(dump_private_schema(tx), [tok], prefixes))
        tx.rollback()

    # Log scan: an inlined literal is logged; so is a bound value once
    # parameter logging is turned on (what the README warns DBAs about).
    inline = sa.marker("inline")
    db.execute(f"SELECT '{inline}' AS m")
    bound = sa.marker("bound")
    db.execute("SET log_parameter_max_length = -1")
    db.execute("SELECT %s::text AS m", [bound])
    db.execute("RESET log_parameter_max_length")
    hidden = sa.marker("hidden")
    db.execute("SELECT %s::text AS m", [hidden])
    db.execute("SELECT 1")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        log = cluster.log_text()
        if inline in log and bound in log:
            break
        time.sleep(0.05)
    assert inline in log, "an inlined literal is not in the server log: is it the right file?"
    assert bound in log, "parameter logging on does not log bound values?"
    assert hidden not in log, "bound values are logged with log_parameter_max_length = 0"

    # NOTIFY scan: a payload carrying a token would be caught.
    with connect() as listener:
        listener.execute("LISTEN session_auth_probe")
        db.execute("SELECT pg_notify('session_auth_probe', %s)", [json.dumps({"t": tok})])
        got = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
    assert find({"NOTIFY": got}, [tok], prefixes)


def test_error_with_token_is_not_logged(cluster, connect):
    """An error in a statement whose parameter is a token: the server logs the
    statement (log_min_error_statement) but not the parameter."""
    db = connect()
    s = sa.issue(db, "err-log")
    with pytest.raises(psycopg.Error) as e:
        sa.reauthenticate(db, s["refresh_token"])  # wrong kind: SA001
    assert e.value.sqlstate == "SA001"
    time.sleep(0.1)
    log = cluster.log_text()
    assert "session_reauthenticate($1" in log
    assert s["refresh_token"] not in log
