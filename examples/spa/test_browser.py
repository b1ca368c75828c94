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
EXAMPLE_MAX_AUTH_AGE, seconds). That server runs as examples/spa/run does
(plain http: SPA_COOKIE_SECURE=0; the demo's TOTP code: SPA_DEMO_CODE=1);
one test starts another with the defaults.
"""

import http.client
import json
import os
import re
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

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
SPA_DIR = Path(__file__).resolve().parent

ALICE = ("alice@example.com", "correct horse battery staple")
BOB = ("bob@example.com", "hunter2 is not a password")
REFRESH = "/api/auth/refresh"
LOGOUT = "/api/auth/logout"
REAUTHENTICATE = "/api/auth/reauthenticate"
COOKIE_PATH = "/api/auth/"  # the refresh cookie's: refresh and logout see it, nothing else
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


def validate_level(token):
    return sql(APP_DSN, "SELECT auth_level FROM session_validate(%s)", (token,))[0][0]


def events(session_id, event):
    return sql(
        SUPERUSER_DSN,
        "SELECT count(*) FROM session_auth.events WHERE session_id = %s AND event = %s",
        (session_id, event),
    )[0][0]


@contextmanager
def session_row_locked(*session_ids):
    """Holds the sessions' row locks (FOR UPDATE, as a DBA's statement could)
    until the block ends: a refresh of such a session waits for it (until
    the app's statement_timeout cancels it)."""
    with psycopg.connect(SUPERUSER_DSN) as conn:
        conn.execute("SELECT FROM session_auth.sessions WHERE session_id = ANY(%s) FOR UPDATE", (list(session_ids),))
        yield


def calls_running(function, waiting_for_a_lock=False):
    """How many of the app's calls of this function the server is running."""
    lock = " AND wait_event_type = 'Lock'" if waiting_for_a_lock else ""
    return sql(
        SUPERUSER_DSN,
        f"SELECT count(*) FROM pg_stat_activity WHERE state = 'active'{lock} AND query LIKE %s",
        (f"%FROM {function}($1%",),
    )[0][0]


def refreshes_waiting():
    return calls_running("session_refresh", waiting_for_a_lock=True)


def last_refreshed(user_id, session_id):
    rows = sql(APP_DSN, "SELECT last_refreshed_at FROM session_list(%s) WHERE session_id = %s", (user_id, session_id))
    return rows[0][0]


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


def call(method, path, body=None, headers=None, port=PORT) -> Answer:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
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


def api_login(who, host=None, port=PORT) -> Answer:
    headers = {"Content-Type": "application/json", **CSRF}
    if host:
        headers["Host"] = host
    return call("POST", "/api/auth/login", json.dumps({"email": who[0], "password": who[1]}), headers, port)


def bearer(answer: Answer) -> dict:
    """The Authorization header with the access token of a login or refresh answer."""
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def api_post(path, body, headers, port=PORT) -> Answer:
    return call("POST", path, json.dumps(body), {"Content-Type": "application/json", **headers}, port)


def api_reauthenticate(login: Answer, **answer) -> Answer:
    """POST /api/auth/reauthenticate with the login's access token and {password} or {code}."""
    return api_post(REAUTHENTICATE, answer, bearer(login))


def step_up_challenge(login: Answer, port=PORT) -> Answer:
    """The sensitive endpoint's answer to this fresh level-1 session: the RFC 9470 challenge."""
    answer = api_post("/api/account/email", {"email": "nobody@example.com"}, bearer(login), port)
    assert answer.status == 401 and 'acr_values="aal2"' in answer.headers["WWW-Authenticate"]
    return answer


def demo_code(login: Answer) -> str:
    """The TOTP code the step-up challenge shows (SPA_DEMO_CODE=1) to this level-1 session."""
    return step_up_challenge(login).json()["demo_code"]


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


def wait_until(condition, page=None, seconds=10.0):
    """Polls condition (while Playwright keeps dispatching the page's events)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        if page is None:
            time.sleep(0.02)
        else:
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
    assert refresh["httpOnly"] and refresh["sameSite"] == "Strict" and refresh["path"] == COOKIE_PATH
    assert not refresh["secure"]  # SPA_COOKIE_SECURE=0: plain http (the defaults: test_the_defaults_...)
    storage = tab.page.evaluate("[document.cookie, localStorage.length, sessionStorage.length]")
    assert storage == ["", 0, 0]
    # The access token went in the Authorization header; the refresh cookie
    # only to the /api/auth/ endpoints (never to /api/me).
    me = tab.to("/api/me")
    assert me and all(e.status == 200 for e in me)
    assert all("sa_refresh" not in e.cookie for e in me)
    tab.page.reload()
    tab.expect_signed_in(ALICE[0])
    assert "sa_refresh=pgsa_rt_" in tab.refreshes()[-1].cookie  # what all_headers() shows

    # The configuration decides Secure, not the Host header (a client picks
    # that): this server, told plain http, never sets Secure.
    for host in (f"127.0.0.1:{PORT}", f"spa.example.test:{PORT}"):
        answer = api_login(ALICE, host=host)
        assert answer.status == 200
        (cookie,) = answer.headers.get_all("Set-Cookie")
        assert cookie.startswith("sa_refresh=pgsa_rt_"), host
        assert f"; Path={COOKIE_PATH};" in cookie and "; HttpOnly" in cookie and "; SameSite=Strict" in cookie
        assert "; Secure" not in cookie, host
        assert answer.json()["access_token"].startswith("pgsa_at_")

    # Logout is the other endpoint the cookie reaches.
    tab.page.click("#logout")
    tab.expect_login_view("You are signed out")
    assert "sa_refresh=pgsa_rt_" in tab.to(LOGOUT)[-1].cookie


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
    assert b.refreshes()[-1].status == 400
    assert b.refreshes()[-1].body == {"error": "invalid_request", "error_description": "no_refresh_cookie"}

    # The phone still has its cookie; the server refuses it: revoked.
    phone.burst()
    phone.expect_login_view("This session was ended")
    assert phone.refreshes()[-1].body == {"error": "invalid_grant", "error_description": "revoked"}

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
    assert replay.status == 400 and replay.json() == {"error": "invalid_grant", "error_description": "reuse_detected"}
    assert events(sid, "reuse_detected") == 1

    # The extension revoked the whole session: each tab's next call is
    # refused, and so is its refresh (the cookie it shares is the current
    # token of a revoked session).
    for tab in (a, b):
        tab.burst()
        tab.expect_login_view("This session was ended")
        assert 'error_description="revoked"' in tab.to("/api/me")[-1].challenge
        assert tab.refreshes()[-1].body == {"error": "invalid_grant", "error_description": "revoked"}
    assert events(sid, "reuse_detected") == 1


def test_a_stale_tab_logs_out_with_the_cookie_and_the_session_really_ends(device):
    ctx, a, b = two_tabs(device, ALICE)
    sid = a.session_id()
    b.page.reload()  # a second rotation: tab a's pair is two rotations old
    b.expect_signed_in()
    stale = a.to("/api/auth/login")[-1].body["access_token"]
    current = b.refreshes()[-1].body["access_token"]
    # What the purge does once the superseded pairs' deadlines have passed
    # (the refresh tokens', idle_timeout later): nothing identifies them then.
    assert sql(SUPERUSER_DSN, "DELETE FROM session_auth.blacklist WHERE session_id = %s RETURNING 1", (sid,))
    assert validate_status(stale) == "invalid"

    # That token alone (no cookie: another browser's, say) identifies no
    # session: logout says so rather than "signed out", and the session lives on.
    answer = call("POST", LOGOUT, headers={**CSRF, "Authorization": f"Bearer {stale}"})
    assert (answer.status, answer.error) == (409, "logout_unconfirmed")
    assert validate_status(current) == "ok"

    # Tab a logs out: its access token revokes nothing, the cookie it sends
    # (the current refresh token every tab shares) does.
    cookie = cookie_jar(ctx)["sa_refresh"]["value"]
    a.page.click("#logout")
    a.expect_login_view("You are signed out")
    assert a.to(LOGOUT)[-1].status == 200 and a.to(LOGOUT)[-1].body == {"revoked": True}
    assert validate_status(current) == "revoked"
    assert sid not in [str(r[0]) for r in sql(APP_DSN, "SELECT session_id FROM session_list('alice')")]
    # The other tab's refresh token answers revoked (the cookie is gone from
    # this browser, so present it by hand), and the tab lands on the login view.
    refused = call("POST", REFRESH, headers={**CSRF, "Cookie": f"sa_refresh={cookie}"})
    assert (refused.status, refused.json()) == (400, {"error": "invalid_grant", "error_description": "revoked"})
    b.burst()
    b.expect_login_view("signed out in another tab")


def test_a_slow_refresh_rolls_back_and_the_page_retries(device):
    tab = Tab(device("laptop")).log_in(ALICE)
    sid = tab.session_id()
    other = api_login(ALICE)  # a second session, refreshed without a browser
    other_sid, other_cookie = other.json()["session_id"], refresh_cookie_of(other)
    rotated_at = last_refreshed("alice", other_sid)
    seen = len(tab.refreshes())

    # Both refreshes wait for the sessions' row locks until the server
    # cancels them (statement_timeout, shorter than the app's query_timeout).
    with session_row_locked(sid, other_sid):
        tab.page.reload()  # the page's refresh on load
        slow = call("POST", REFRESH, headers={**CSRF, "Cookie": f"sa_refresh={other_cookie}"})
        wait_until(lambda: len(tab.refreshes()) > seen, tab.page)
    assert (slow.status, slow.error) == (503, "database_unavailable") and slow.headers["Retry-After"] == "5"
    wait_until(lambda: calls_running("session_refresh") == 0)
    # Rolled back: the cookie still holds the current refresh token.
    assert last_refreshed("alice", other_sid) == rotated_at

    # The page got a 503 and tried again with the same cookie: signed in,
    # the same session, no word of an outage, nothing taken for a theft.
    tab.expect_signed_in(ALICE[0])
    attempts = tab.refreshes()[seen:]
    assert [e.status for e in attempts] == [503, 200]
    assert attempts[0].cookie == attempts[1].cookie
    assert tab.session_id() == sid and events(sid, "reuse_detected") == 0
    expect(tab.page.locator("#status")).to_be_hidden()


def test_a_refresh_whose_answer_was_lost_is_retried_with_the_same_cookie(device):
    tab = Tab(device("laptop")).log_in(ALICE)
    sid = tab.session_id()
    lost = {}

    def lose_the_answer(route, request):
        # The refresh reaches the server, which rotates the pair; its answer
        # never reaches the page (the connection is reset).
        lost["cookie"] = request.all_headers()["cookie"]
        lost["answer"] = call("POST", REFRESH, headers={**CSRF, "Cookie": lost["cookie"]})
        route.abort("connectionreset")

    tab.page.route(f"**{REFRESH}", lose_the_answer, times=1)
    tab.page.reload()
    tab.expect_signed_in(ALICE[0])
    assert lost["answer"].status == 200
    # The retry presented the same cookie inside the grace window, and got
    # the very pair the lost answer carried: no fork, no reuse.
    retry = tab.refreshes()[-1]
    assert retry.cookie == lost["cookie"] and retry.status == 200
    assert retry.body["access_token"] == lost["answer"].json()["access_token"]
    assert cookie_jar(tab.page.context)["sa_refresh"]["value"] == refresh_cookie_of(lost["answer"])
    assert tab.session_id() == sid and events(sid, "reuse_detected") == 0


def test_wrong_reauthentication_answers_are_limited_per_session():
    login, other = api_login(ALICE), api_login(ALICE)
    for _ in range(5):
        assert api_reauthenticate(login, code="abcdef").status == 400
    # The sixth is refused whatever it is, the right code included.
    blocked = api_reauthenticate(login, code=demo_code(login))
    assert (blocked.status, blocked.error) == (429, "too_many_attempts")
    assert 0 < int(blocked.headers["Retry-After"]) <= 60
    # Another session of the same user has its own count.
    assert api_reauthenticate(other, code="abcdef").error == "invalid_grant"


def test_one_totp_code_steps_up_one_session_even_when_two_race():
    first, second = api_login(ALICE), api_login(ALICE)
    code = demo_code(first)
    # A request that fails after claiming the code gives it back: the first
    # session's access token, superseded by a refresh, may not step up (SA003).
    refreshed = call("POST", REFRESH, headers={**CSRF, "Cookie": f"sa_refresh={refresh_cookie_of(first)}"})
    assert api_reauthenticate(first, code=code).status == 401
    first = refreshed

    # Two requests with the same code at once: the first waits inside
    # session_reauthenticate (the test holds its session's row lock) while
    # the second comes in. Only one of them may use the code.
    answers = {}
    with session_row_locked(first.json()["session_id"]):
        waiting = threading.Thread(target=lambda: answers.update(first=api_reauthenticate(first, code=code)))
        waiting.start()
        wait_until(lambda: calls_running("session_reauthenticate", waiting_for_a_lock=True) == 1)
        answers["second"] = api_reauthenticate(second, code=code)
    waiting.join(timeout=15)
    assert (answers["second"].status, answers["second"].json()) == (
        400,
        {"error": "invalid_grant", "error_description": "wrong password or code"},
    )
    assert answers["first"].status == 200
    assert validate_level(answers["first"].json()["access_token"]) == 2


@contextmanager
def server_with_the_defaults():
    """Another server on the same database, with none of the demo's settings
    (SPA_*): a Secure cookie, no TOTP code in a challenge, 3 s statement timeout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPA_", "PG"))}
    db = conninfo_to_dict(APP_DSN)
    env.update(PGHOST=db["host"], PGPORT=str(db["port"]), PGUSER=db["user"], PGDATABASE=db["dbname"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = APP_LOG.with_name("app-defaults.log")
    with open(log, "ab") as out:
        server = subprocess.Popen(["node", str(SPA_DIR / "server.js"), "--port", str(port)], env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: server.poll() is not None or b"listening" in log.read_bytes())
        assert server.poll() is None, log.read_text()
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_the_defaults_make_the_cookie_secure_and_keep_the_code_to_the_demo():
    with server_with_the_defaults() as port:
        login = api_login(ALICE, host=f"127.0.0.1:{port}", port=port)  # plain http on loopback, all the same
        (cookie,) = login.headers.get_all("Set-Cookie")
        assert cookie.startswith("__Secure-sa_refresh=pgsa_rt_")
        assert f"; Path={COOKIE_PATH};" in cookie and "; Secure;" in cookie
        assert step_up_challenge(login, port).json() == {"error": "insufficient_user_authentication"}  # no demo_code
        cookie_header = {**CSRF, "Cookie": f"__Secure-sa_refresh={refresh_cookie_of(login)}"}
        assert call("POST", REFRESH, headers=cookie_header, port=port).status == 200


def test_a_token_the_standby_has_not_replayed_answers_503_not_401():
    """lib/api.js with session_validate answering `not_replayed`, as on a hot
    standby (this example has none: the database call is stubbed)."""
    script = """
      const sessions = require('./lib/sessions');
      sessions.validate = async () => ({ status: 'not_replayed' });
      const { ROUTES } = require('./lib/api');
      ROUTES['/api/me'].GET({ headers: { authorization: 'Bearer pgsa_at_x' } }).then(
        () => console.log(JSON.stringify({ status: 200 })),
        (e) => console.log(JSON.stringify({ status: e.status, body: e.body, headers: e.headers })),
      );
    """
    out = subprocess.run(["node", "-e", script], cwd=SPA_DIR, capture_output=True, text=True, timeout=30, check=True)
    answer = json.loads(out.stdout)
    assert answer["status"] == 503 and answer["body"]["error"] == "not_replayed"
    assert answer["headers"]["Retry-After"] == "1"


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
        ("refresh, no cookie", "POST", REFRESH, CSRF, None, 400, "invalid_request"),
        ("refresh, garbage cookie", "POST", REFRESH, {**CSRF, "Cookie": "sa_refresh=%00<script>"}, None, 400, "invalid_grant"),
        ("refresh, no CSRF header", "POST", REFRESH, {"Cookie": f"sa_refresh={refresh_token}"}, None, 403, "csrf"),
        ("refresh, an access token", "POST", REFRESH, {**CSRF, "Cookie": f"sa_refresh={login.json()['access_token']}"}, None, 400, "invalid_grant"),
        ("login, wrong password", "POST", "/api/auth/login", json_post, json.dumps({"email": ALICE[0], "password": "no"}), 400, "invalid_grant"),
        ("login, unknown user", "POST", "/api/auth/login", json_post, json.dumps({"email": "x@example.com", "password": "no"}), 400, "invalid_grant"),
        ("logout, no token at all", "POST", LOGOUT, CSRF, None, 401, "unauthorized"),
        ("logout, no CSRF header", "POST", LOGOUT, {"Cookie": f"sa_refresh={refresh_token}"}, None, 403, "csrf"),
        ("reauthenticate, wrong password", "POST", REAUTHENTICATE, {**json_post, **bearer(login)}, '{"password": "no"}', 400, "invalid_grant"),
        ("unknown path", "GET", "/api/nothing", {}, None, 404, "not_found"),
        ("wrong method", "GET", REFRESH, {}, None, 405, "method_not_allowed"),
    ]
    for what, method, path, headers, body, status, error in cases:
        answer = call(method, path, body, headers)
        assert (answer.status, answer.error) == (status, error), what
        assert answer.headers["Content-Type"] == "application/json; charset=utf-8", what
        assert not STACK_TRACE.search(answer.text), what
        # Every 401 names its scheme (RFC 9110 section 15.5.2), and only
        # bearer tokens get one; a refused cookie or password is a 400.
        challenge = answer.headers["WWW-Authenticate"]
        assert (challenge is not None) == (status == 401 or (error == "invalid_request" and path == "/api/me")), what
        if status == 401:
            assert challenge.startswith('Bearer realm="pg_session_auth spa example"'), what
            assert ('error="invalid_token"' in challenge) == (error == "invalid_token"), what
        if error == "invalid_grant" and path == REFRESH:
            assert answer.json()["error_description"] == "invalid", what
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


def test_a_database_that_is_down_answers_503_and_the_page_keeps_its_tokens(device):
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
    defaults_log = APP_LOG.with_name("app-defaults.log").read_text(errors="replace")
    for name, text in (("server log", server_log), ("app log", app_log), ("defaults app log", defaults_log)):
        leaked = [t for t in SEEN_TOKENS if t in text]
        assert not leaked, f"{len(leaked)} tokens in the {name}"
        assert "pgsa_at_" not in text and "pgsa_rt_" not in text, name
    # Bad input and the outage were answered, not crashed on: no stack trace.
    assert not re.search(r"^\s+at ", app_log, re.M)
