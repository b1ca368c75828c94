"""The single-page example in a real browser: headless Debian Chromium, driven
by Playwright (the `browser` and `device` fixtures are in
examples/conftest.py), against the Node server and the cluster that
examples/spa/test started; and its API without a browser, for bad input and
a database that is down.

examples/spa/test sets the environment: EXAMPLE_URL (the server on
loopback), EXAMPLE_APP_DSN / EXAMPLE_SUPERUSER_DSN (the cluster),
EXAMPLE_SERVER_LOG and EXAMPLE_APP_LOG, EXAMPLE_PGDATA and EXAMPLE_PG_CTL (to
stop and start the cluster), and the short timings the cluster and the
server were started with (EXAMPLE_ACCESS_TTL, EXAMPLE_REFRESH_GRACE,
EXAMPLE_MAX_AUTH_AGE, seconds).
"""

import http.client
import json
import os
import re
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

URL = os.environ.get("EXAMPLE_URL")
if not URL:
    pytest.skip("EXAMPLE_URL is not set: run examples/spa/test", allow_module_level=True)

from playwright.sync_api import Error as PlaywrightError  # noqa: E402 - only where the test runs
from playwright.sync_api import expect  # noqa: E402

APP_DSN = os.environ["EXAMPLE_APP_DSN"]
SUPERUSER_DSN = os.environ["EXAMPLE_SUPERUSER_DSN"]
SERVER_LOG = Path(os.environ["EXAMPLE_SERVER_LOG"])
APP_LOG = Path(os.environ["EXAMPLE_APP_LOG"])
PGDATA = os.environ["EXAMPLE_PGDATA"]
PG_CTL = os.environ["EXAMPLE_PG_CTL"]
ACCESS_TTL = float(os.environ["EXAMPLE_ACCESS_TTL"])
REFRESH_GRACE = float(os.environ["EXAMPLE_REFRESH_GRACE"])
MAX_AUTH_AGE = float(os.environ["EXAMPLE_MAX_AUTH_AGE"])
HOST, PORT = urlsplit(URL).hostname, urlsplit(URL).port

ALICE = ("alice@example.com", "correct horse battery staple")
BOB = ("bob@example.com", "hunter2 is not a password")
REFRESH = "/api/auth/refresh"
CSRF = {"X-CSRF-Guard": "1"}
BURST = 10  # the page's parallel calls per click
# What a stack trace or an internal path looks like in an answer.
STACK_TRACE = re.compile(r"^\s+at |node:internal|/examples/spa/|\w+Error\b", re.M)

# Every token the test saw, to look for in both logs at the end.
SEEN_TOKENS: set[str] = set()


# --- the database -----------------------------------------------------------------


def sql(dsn, query, params=()):
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def validate_status(token):
    return sql(APP_DSN, "SELECT status FROM session_validate(%s)", (token,))[0][0]


def events(session_id, event):
    return sql(
        SUPERUSER_DSN,
        "SELECT count(*) FROM session_auth.events WHERE session_id = %s AND event = %s",
        (session_id, event),
    )[0][0]


@contextmanager
def session_row_locked(session_id):
    """Holds the session's row lock (FOR UPDATE, as a DBA's statement could)
    until the block ends: a refresh of that session waits for it."""
    with psycopg.connect(SUPERUSER_DSN) as conn:
        conn.execute("SELECT FROM session_auth.sessions WHERE session_id = %s FOR UPDATE", (session_id,))
        yield


def refreshes_waiting():
    return sql(
        SUPERUSER_DSN,
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND query LIKE '%%FROM session_refresh($1)%%'",
    )[0][0]


def pg_ctl(*args):
    """The cluster's pg_ctl, as its owner (postgres, when we are root)."""
    cmd = [PG_CTL, "-D", PGDATA, *args]
    if os.getuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=60)


# --- the API without a browser ------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    text: str

    def json(self):
        return json.loads(self.text)

    @property
    def error(self):
        return self.json().get("error")


def remember_tokens(text):
    SEEN_TOKENS.update(re.findall(r"pgsa_(?:at|rt)_[A-Za-z0-9_-]+", text))


def call(method, path, body=None, headers=None) -> Answer:
    conn = http.client.HTTPConnection(HOST, PORT, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        answer = Answer(resp.status, resp.headers, resp.read().decode("utf-8", "replace"))
    finally:
        conn.close()
    remember_tokens(answer.text + "".join(answer.headers.get_all("Set-Cookie") or []))
    return answer


def raw_call(data: bytes) -> str:
    """Bytes on a socket, and what comes back until the server closes."""
    chunks = []
    with socket.create_connection((HOST, PORT), timeout=10) as s:
        s.sendall(data)
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass  # a close with our unread bytes still queued: what came before counts
    return b"".join(chunks).decode("utf-8", "replace")


def api_login(who, host=None) -> Answer:
    headers = {"Content-Type": "application/json", **CSRF}
    if host:
        headers["Host"] = host
    return call("POST", "/api/auth/login", json.dumps({"email": who[0], "password": who[1]}), headers)


def refresh_cookie_of(answer: Answer):
    """The refresh token a Set-Cookie of this answer carries."""
    for c in answer.headers.get_all("Set-Cookie") or []:
        if m := re.match(r"(?:__Secure-)?sa_refresh=(pgsa_rt_[^;]+)", c):
            return m.group(1)
    return None


# --- the page ----------------------------------------------------------------------


@dataclass
class Exchange:
    path: str
    status: int
    challenge: str  # WWW-Authenticate
    cookie: str  # the Cookie header the browser sent
    page: object = field(repr=False)
    parsed: dict | None = None  # the JSON body, once the page has read it

    @property
    def body(self) -> dict:
        """The JSON body: Chromium has it only once the page read it to the end."""
        wait_until(lambda: self.parsed is not None, self.page)
        return self.parsed


class Tab:
    """A page of the app, and every API exchange it made, in order."""

    def __init__(self, ctx):
        self.page = ctx.new_page()
        self.exchanges: list[Exchange] = []
        self.page.on("response", self._record)

    def _record(self, response):
        path = urlsplit(response.url).path
        if not path.startswith("/api/"):
            return
        sent = response.request.all_headers()
        remember_tokens(sent.get("authorization", "") + sent.get("cookie", ""))
        remember_tokens(response.headers.get("set-cookie", ""))
        challenge = response.headers.get("www-authenticate", "")
        exchange = Exchange(path, response.status, challenge, sent.get("cookie", ""), self.page)
        self.exchanges.append(exchange)
        # Then the body, for the calls whose answers the tests read. This
        # handler waits here until the page has read it (a page that never
        # does leaves it waiting, harmlessly, until the page closes).
        if path.startswith(("/api/auth/", "/api/account/")):
            try:
                text = response.text()
            except PlaywrightError:
                return  # the page closed first
            remember_tokens(text)
            exchange.parsed = json.loads(text)

    def to(self, path):
        return [e for e in self.exchanges if e.path == path]

    def refreshes(self):
        return self.to(REFRESH)

    def open(self):
        self.page.goto(URL + "/")
        expect(self.page.locator("#view-loading")).to_be_hidden()
        return self

    def log_in(self, who):
        self.open()
        expect(self.page.locator("#view-login")).to_be_visible()
        self.page.fill("#login-form input[name=email]", who[0])
        self.page.fill("#login-form input[name=password]", who[1])
        self.page.click("#sign-in")
        self.expect_signed_in(who[0])
        return self

    def expect_signed_in(self, email=None):
        expect(self.page.locator("#view-app")).to_be_visible()
        if email:
            expect(self.page.locator("#email")).to_have_text(email)

    def expect_login_view(self, message=None):
        expect(self.page.locator("#view-login")).to_be_visible()
        expect(self.page.locator("#view-app")).to_be_hidden()
        if message:
            expect(self.page.locator("#message")).to_contain_text(message)

    def session_id(self):
        return self.page.text_content("#session-id").strip()

    def burst(self):
        """Clicks the button that sends BURST parallel API calls; waits for their end."""
        self.page.click("#burst")
        expect(self.page.locator("#burst-result")).not_to_have_text("…")

    def change_email(self, email):
        self.page.fill("#email-form input[name=email]", email)
        self.page.click("#change-email")


def cookie_jar(ctx):
    found = {c["name"]: c for c in ctx.cookies()}
    for c in found.values():
        remember_tokens(c["value"])
    return found


def wait_until(condition, page, seconds=10.0):
    """Polls condition while Playwright keeps dispatching the page's events."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        page.wait_for_timeout(20)


def two_tabs(device, who):
    """A browser signed in as who in tab a; tab b opened after it (one refresh
    on load, through the cookie both share): the same session in both."""
    ctx = device("laptop")
    a = Tab(ctx).log_in(who)
    b = Tab(ctx).open()
    b.expect_signed_in(who[0])
    assert b.session_id() == a.session_id()
    return ctx, a, b


# --- tests ---------------------------------------------------------------------------


def test_tokens_live_in_memory_and_in_an_http_only_cookie(device):
    ctx = device("laptop")
    tab = Tab(ctx).log_in(ALICE)
    jar = cookie_jar(ctx)
    assert list(jar) == ["sa_refresh"]  # the access token is no cookie
    refresh = jar["sa_refresh"]
    assert refresh["value"].startswith("pgsa_rt_")
    assert refresh["httpOnly"] and refresh["sameSite"] == "Strict" and refresh["path"] == REFRESH
    assert not refresh["secure"]  # plain http on 127.0.0.1 only (below: Secure anywhere else)
    storage = tab.page.evaluate("[document.cookie, localStorage.length, sessionStorage.length]")
    assert storage == ["", 0, 0]
    # The access token went in the Authorization header; the refresh cookie
    # only to the refresh endpoint (never to /api/me).
    me = tab.to("/api/me")
    assert me and all(e.status == 200 for e in me)
    assert all("sa_refresh" not in e.cookie for e in me)
    tab.page.reload()
    tab.expect_signed_in(ALICE[0])
    assert "sa_refresh=pgsa_rt_" in tab.refreshes()[-1].cookie  # what all_headers() shows

    # Over anything but loopback (a TLS proxy in front), the cookie is Secure
    # and takes the __Secure- prefix, which the browser enforces.
    for host, name, secure in (
        (f"127.0.0.1:{PORT}", "sa_refresh", False),
        (f"localhost:{PORT}", "sa_refresh", False),
        (f"spa.example.test:{PORT}", "__Secure-sa_refresh", True),
    ):
        answer = api_login(BOB, host=host)
        assert answer.status == 200
        (cookie,) = answer.headers.get_all("Set-Cookie")
        assert cookie.startswith(f"{name}=pgsa_rt_")
        assert f"; Path={REFRESH};" in cookie and "; HttpOnly" in cookie and "; SameSite=Strict" in cookie
        assert ("; Secure" in cookie) == secure
        assert answer.json()["access_token"].startswith("pgsa_at_")


def test_bursts_at_expiry_in_two_tabs_refresh_once_per_tab_and_share_the_pair(device):
    ctx, a, b = two_tabs(device, ALICE)
    sid = a.session_id()
    assert [r.status for r in b.refreshes()] == [200]
    time.sleep(ACCESS_TTL + 0.3)  # both tabs' access tokens are now refused
    refreshes_before = {a: len(a.refreshes()), b: len(b.refreshes())}

    # Both tabs fire their bursts at the same instant, while the test holds
    # the session's row lock: each tab's refresh waits in the database, so
    # both were sent with the same cookie before either was answered. The
    # race of two tabs refreshing at once, made certain.
    with session_row_locked(sid):
        start = a.page.evaluate("Date.now() + 300")
        for tab in (a, b):
            tab.page.evaluate("at => setTimeout(() => document.getElementById('burst').click(), at - Date.now())", start)
        wait_until(lambda: refreshes_waiting() >= 2, a.page)
        a.page.wait_for_timeout(200)  # and no third one
        assert refreshes_waiting() == 2

    for tab in (a, b):
        expect(tab.page.locator("#burst-result")).to_have_text(f"{BURST}/{BURST} ok")
        tab.expect_signed_in()
        assert tab.session_id() == sid
    # Tab a's pair was superseded by tab b's refresh on load (revoked once the
    # grace window passed), tab b's had expired: every call got a 401
    # invalid_token, then exactly one refresh per tab, then the calls again.
    for tab, status in ((a, "revoked"), (b, "expired")):
        burst_calls = tab.to("/api/me")[-(2 * BURST + 1) :]
        refused = [e for e in burst_calls if e.status == 401]
        assert len(refused) == BURST
        assert all(f'error="invalid_token", error_description="{status}"' in e.challenge for e in refused)
        assert sum(e.status == 200 for e in burst_calls) == BURST + 1  # the burst, then the page's own
    for tab in (a, b):
        assert len(tab.refreshes()) == refreshes_before[tab] + 1
    ra, rb = a.refreshes()[-1], b.refreshes()[-1]
    assert ra.cookie == rb.cookie  # the race: both presented the same refresh token...
    assert ra.status == rb.status == 200
    assert ra.body["access_token"] == rb.body["access_token"]  # ...and both got the very same pair
    new_cookie = cookie_jar(ctx)["sa_refresh"]["value"]
    assert new_cookie not in ra.cookie
    assert validate_status(ra.body["access_token"]) == "ok"
    assert events(sid, "reuse_detected") == 0

    # Reload: no access token in memory any more; one refresh through the cookie.
    a.page.reload()
    a.expect_signed_in(ALICE[0])
    assert a.session_id() == sid and len(a.refreshes()) == refreshes_before[a] + 2
    assert a.refreshes()[-1].status == 200
    # And tab b, whose pair that refresh superseded, carries on.
    b.burst()
    expect(b.page.locator("#burst-result")).to_have_text(f"{BURST}/{BURST} ok")
    assert b.session_id() == sid and events(sid, "reuse_detected") == 0


def test_logout_everywhere_bounces_the_other_tab_and_the_other_device(device):
    laptop, a, b = two_tabs(device, ALICE)
    phone = Tab(device("phone")).log_in(ALICE)
    assert phone.session_id() != a.session_id()

    a.page.click("#logout-everywhere")
    a.expect_login_view("signed out on every device")
    assert sql(APP_DSN, "SELECT session_id FROM session_list('alice')") == []
    assert cookie_jar(laptop) == {}  # the answer cleared the cookie the laptop's tabs share

    # Tab b's next call: its access token is refused (revoked), and the
    # refresh finds the cookie gone: the login view.
    b.burst()
    b.expect_login_view("signed out in another tab")
    assert b.to("/api/me")[-1].status == 401 and 'error_description="revoked"' in b.to("/api/me")[-1].challenge
    assert b.refreshes()[-1].body == {"error": "no_refresh_cookie", "detail": "sign in"}

    # The phone still has its cookie; the server refuses it: revoked.
    phone.burst()
    phone.expect_login_view("This session was ended")
    assert phone.refreshes()[-1].body == {"error": "revoked"}

    # Plain logout revokes the session server-side and clears the cookie; the
    # reload stays signed out.
    phone.log_in(ALICE)
    token = phone.to("/api/auth/login")[-1].body["access_token"]
    phone.page.click("#logout")
    phone.expect_login_view("You are signed out")
    assert validate_status(token) == "revoked"
    assert cookie_jar(phone.page.context) == {}
    phone.page.reload()
    phone.expect_login_view()
    expect(phone.page.locator("#message")).to_be_hidden()


def step_up_challenges(tab):
    return [e.challenge for e in tab.to("/api/account/email") if "insufficient_user_authentication" in e.challenge]


def test_step_up_answers_an_rfc_9470_challenge_and_the_page_retries(device):
    _, a, b = two_tabs(device, BOB)
    sid = a.session_id()
    form = a.page.locator("#step-up-form")

    # A fresh sign-in at level 1: the second factor is missing.
    a.change_email("bob2@example.com")
    expect(a.page.locator("#code-field")).to_be_visible()
    expect(a.page.locator("#password-field")).to_be_hidden()
    assert step_up_challenges(a) == [
        'Bearer realm="pg_session_auth spa example", error="insufficient_user_authentication",'
        ' acr_values="aal2", error_description="a second factor is required"'
    ]
    code = re.search(r"\b\d{6}\b", a.page.text_content("#demo-code")).group(0)
    wrong = "".join(str((int(d) + 5) % 10) for d in code)
    a.page.fill("#step-up-form input[name=code]", wrong)
    a.page.click("#confirm")
    expect(a.page.locator("#step-up-error")).to_contain_text("Wrong or already used code")
    expect(form).to_be_visible()
    a.page.fill("#step-up-form input[name=code]", code)
    a.page.click("#confirm")
    expect(a.page.locator("#email-result")).to_have_text("Your email is now bob2@example.com.")
    expect(a.page.locator("#auth-level")).to_have_text("2")
    expect(form).to_be_hidden()
    assert a.to("/api/account/email")[-1].status == 200

    # Let the sign-in grow older than max_auth_age (and tab b's access token expire).
    time.sleep(MAX_AUTH_AGE + 0.3)

    # session_reauthenticate rotated the pair and the shared cookie at once:
    # tab b's one refresh presents the new cookie and carries on at level 2.
    # (Had the answer not set the cookie, that refresh would present a token
    # superseded by the reauthentication: reuse, and the session revoked.)
    refreshes = len(b.refreshes())
    b.burst()
    expect(b.page.locator("#burst-result")).to_have_text(f"{BURST}/{BURST} ok")
    assert len(b.refreshes()) == refreshes + 1 and b.refreshes()[-1].status == 200
    expect(b.page.locator("#auth-level")).to_have_text("2")
    assert b.session_id() == sid

    # The sign-in is stale: the password is asked again (not the code: level 2 already).
    a.change_email("bob3@example.com")
    expect(a.page.locator("#password-field")).to_be_visible()
    expect(a.page.locator("#code-field")).to_be_hidden()
    assert step_up_challenges(a)[-1] == (
        'Bearer realm="pg_session_auth spa example", error="insufficient_user_authentication",'
        f' max_age={MAX_AUTH_AGE:g}, error_description="a more recent sign-in is required"'
    )
    a.page.fill("#step-up-form input[name=password]", "not the password")
    a.page.click("#confirm")
    expect(a.page.locator("#step-up-error")).to_contain_text("Wrong password")
    a.page.fill("#step-up-form input[name=password]", BOB[1])
    a.page.click("#confirm")
    expect(a.page.locator("#email-result")).to_have_text("Your email is now bob3@example.com.")
    assert a.session_id() == sid
    assert events(sid, "reauthenticated") == 2 and events(sid, "reuse_detected") == 0


def test_a_replayed_refresh_token_logs_both_tabs_out(device):
    ctx, a, b = two_tabs(device, ALICE)
    sid = a.session_id()
    stolen = cookie_jar(ctx)["sa_refresh"]["value"]
    a.page.reload()  # the on-load refresh rotates: `stolen` is superseded
    a.expect_signed_in()
    assert cookie_jar(ctx)["sa_refresh"]["value"] != stolen
    time.sleep(REFRESH_GRACE + 0.5)  # past the retry window

    replay = call("POST", REFRESH, headers={"Cookie": f"sa_refresh={stolen}", **CSRF})
    assert replay.status == 401 and replay.json() == {"error": "reuse_detected"}
    assert events(sid, "reuse_detected") == 1

    # The extension revoked the whole session: each tab's next call is
    # refused, and so is its refresh (the cookie it shares is the current
    # token of a revoked session).
    for tab in (a, b):
        tab.burst()
        tab.expect_login_view("This session was ended")
        assert 'error_description="revoked"' in tab.to("/api/me")[-1].challenge
        assert tab.refreshes()[-1].body == {"error": "revoked"}
    assert events(sid, "reuse_detected") == 1


def test_bad_input_gets_clean_4xx_answers():
    login = api_login(ALICE)
    refresh_token = refresh_cookie_of(login)
    json_post = {"Content-Type": "application/json", **CSRF}
    login_body = json.dumps({"email": ALICE[0], "password": ALICE[1]})
    cases = [
        # (what, method, path, headers, body, status, error)
        ("no Authorization", "GET", "/api/me", {}, None, 401, "unauthorized"),
        ("another scheme", "GET", "/api/me", {"Authorization": "Basic YTpi"}, None, 401, "unauthorized"),
        ("Bearer alone", "GET", "/api/me", {"Authorization": "Bearer"}, None, 400, "invalid_request"),
        ("two words", "GET", "/api/me", {"Authorization": "Bearer a b"}, None, 400, "invalid_request"),
        ("not b64token", "GET", "/api/me", {"Authorization": "Bearer pgsa_at_\xe4;"}, None, 400, "invalid_request"),
        ("far too long", "GET", "/api/me", {"Authorization": "Bearer " + "A" * 3000}, None, 401, "invalid_token"),
        ("not issued", "GET", "/api/me", {"Authorization": "Bearer pgsa_at_" + "A" * 70}, None, 401, "invalid_token"),
        ("a refresh token", "GET", "/api/me", {"Authorization": f"Bearer {refresh_token}"}, None, 401, "invalid_token"),
        ("not JSON", "POST", "/api/auth/login", json_post, "{email:", 400, "invalid_json"),
        ("a JSON array", "POST", "/api/auth/login", json_post, "[1, 2]", 400, "invalid_json"),
        ("a number for email", "POST", "/api/auth/login", json_post, '{"email": 1, "password": "x"}', 400, "invalid_request"),
        ("a form", "POST", "/api/auth/login", {**CSRF, "Content-Type": "application/x-www-form-urlencoded"}, "a=b", 415, "unsupported_media_type"),
        ("no CSRF header", "POST", "/api/auth/login", {"Content-Type": "application/json"}, login_body, 403, "csrf"),
        ("a foreign Origin", "POST", "/api/auth/login", {**json_post, "Origin": "http://evil.test"}, login_body, 403, "csrf"),
        ("cross-site", "POST", REFRESH, {**CSRF, "Sec-Fetch-Site": "cross-site", "Cookie": f"sa_refresh={refresh_token}"}, None, 403, "csrf"),
        ("refresh, no cookie", "POST", REFRESH, CSRF, None, 401, "no_refresh_cookie"),
        ("refresh, garbage cookie", "POST", REFRESH, {**CSRF, "Cookie": "sa_refresh=%00<script>"}, None, 401, "invalid"),
        ("refresh, no CSRF header", "POST", REFRESH, {"Cookie": f"sa_refresh={refresh_token}"}, None, 403, "csrf"),
        ("refresh, an access token", "POST", REFRESH, {**CSRF, "Cookie": f"sa_refresh={login.json()['access_token']}"}, None, 401, "invalid"),
        ("unknown path", "GET", "/api/nothing", {}, None, 404, "not_found"),
        ("wrong method", "GET", REFRESH, {}, None, 405, "method_not_allowed"),
    ]
    for what, method, path, headers, body, status, error in cases:
        answer = call(method, path, body, headers)
        assert (answer.status, answer.error) == (status, error), what
        assert answer.headers["Content-Type"] == "application/json; charset=utf-8", what
        assert not STACK_TRACE.search(answer.text), what
        if status == 401 and path == "/api/me":
            challenge = answer.headers["WWW-Authenticate"]
            assert challenge.startswith('Bearer realm="pg_session_auth spa example"'), what
            assert ('error="invalid_token"' in challenge) == (error == "invalid_token"), what
    assert call("GET", REFRESH).headers["Allow"] == "POST"

    # What never reaches a handler, or is cut off: answered, then the connection closed.
    big = raw_call(
        b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-CSRF-Guard: 1\r\n"
        b"Content-Length: 1000000\r\n\r\n" + b"{" * 100
    )
    chunked = raw_call(
        b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-CSRF-Guard: 1\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + b"1388\r\n" + b" " * 5000 + b"\r\n"
    )
    huge_header = raw_call(b"GET /api/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"A" * 20000 + b"\r\n\r\n")
    garbage = raw_call(b"\x16\x03\x01 not http at all\r\n\r\n")
    for what, text, status, error in (
        ("declared 1 MB", big, "413 Payload Too Large", "body_too_large"),
        ("chunked 5 kB", chunked, "413 Payload Too Large", "body_too_large"),
        ("a 20 kB header", huge_header, "431 Request Header Fields Too Large", "request_header_fields_too_large"),
        ("not HTTP", garbage, "400 Bad Request", "bad_request"),
    ):
        head, _, body = text.partition("\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {status}\r\n"), what
        assert json.loads(body)["error"] == error, what
        assert not STACK_TRACE.search(text), what
    assert call("GET", "/").status == 200  # and the server is still there


def test_a_database_that_is_down_answers_503_and_signs_nobody_out(device):
    tab = Tab(device("laptop")).log_in(ALICE)
    sid = tab.session_id()
    login = api_login(ALICE)  # (bob's email changed in the step-up test)
    access, refresh = login.json()["access_token"], refresh_cookie_of(login)

    pg_ctl("-m", "fast", "-w", "stop")
    try:
        for what, answer in (
            ("validate", call("GET", "/api/me", headers={"Authorization": f"Bearer {access}"})),
            ("refresh", call("POST", REFRESH, headers={**CSRF, "Cookie": f"sa_refresh={refresh}"})),
            ("login", api_login(ALICE)),
        ):
            assert (answer.status, answer.error) == (503, "database_unavailable"), what
            assert answer.headers["Retry-After"] == "5", what
            assert not STACK_TRACE.search(answer.text), what
        assert call("GET", "/").status == 200  # the page itself is still served
        # The page says so, and keeps the user signed in.
        tab.burst()
        expect(tab.page.locator("#status")).to_contain_text("unavailable")
        expect(tab.page.locator("#burst-result")).to_have_text(f"0/{BURST} ok")
        tab.expect_signed_in(ALICE[0])
    finally:
        pg_ctl("-l", str(SERVER_LOG), "-w", "start")

    # The database is back: the same tab carries on in the same session
    # (refreshing on the way if its token expired meanwhile), and so do the
    # tokens issued before the outage.
    tab.burst()
    expect(tab.page.locator("#burst-result")).to_have_text(f"{BURST}/{BURST} ok")
    expect(tab.page.locator("#status")).to_be_hidden()
    assert tab.session_id() == sid
    assert call("POST", REFRESH, headers={**CSRF, "Cookie": f"sa_refresh={refresh}"}).status == 200
    # The app logged the outage (no stack trace: the last test checks the whole log).
    assert "database unreachable" in APP_LOG.read_text()


def test_no_token_in_either_log():  # runs last: every token the tests saw
    server_log = SERVER_LOG.read_text(errors="replace")
    app_log = APP_LOG.read_text(errors="replace")
    # The server logged every statement (log_statement = 'all') and no bind
    # parameter value (log_parameter_max_length = 0): the app's SQL is there.
    assert "session_validate($1)" in server_log and "session_refresh($1)" in server_log
    assert "refresh session=" in app_log
    assert len(SEEN_TOKENS) > 10
    for name, text in (("server log", server_log), ("app log", app_log)):
        leaked = [t for t in SEEN_TOKENS if t in text]
        assert not leaked, f"{len(leaked)} tokens in the {name}"
        assert "pgsa_at_" not in text and "pgsa_rt_" not in text, name
    # Bad input and the outage were answered, not crashed on: no stack trace.
    assert not re.search(r"^\s+at ", app_log, re.M)
