"""The example app in a real browser: headless Debian Chromium, driven by
Playwright, against the app and the cluster that examples/test started
(the `browser` and `device` fixtures are in examples/conftest.py).

examples/test sets the environment: EXAMPLE_URL (the app on loopback),
EXAMPLE_APP_DSN / EXAMPLE_SUPERUSER_DSN (the cluster), EXAMPLE_SERVER_LOG,
and the short timings the cluster and the app were started with
(EXAMPLE_ACCESS_TTL, EXAMPLE_REFRESH_GRACE, EXAMPLE_MAX_AUTH_AGE, seconds).
"""

import hashlib
import hmac
import http.client
import os
import re
import struct
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import psycopg
import pytest

URL = os.environ.get("EXAMPLE_URL")
if not URL:
    pytest.skip("EXAMPLE_URL is not set: run examples/test", allow_module_level=True)

APP_DSN = os.environ["EXAMPLE_APP_DSN"]
SUPERUSER_DSN = os.environ["EXAMPLE_SUPERUSER_DSN"]
SERVER_LOG = Path(os.environ["EXAMPLE_SERVER_LOG"])
ACCESS_TTL = float(os.environ["EXAMPLE_ACCESS_TTL"])
REFRESH_GRACE = float(os.environ["EXAMPLE_REFRESH_GRACE"])
MAX_AUTH_AGE = float(os.environ["EXAMPLE_MAX_AUTH_AGE"])

ALICE = ("alice@example.com", "correct horse battery staple")
BOB = ("bob@example.com", "hunter2 is not a password")
DEMO_TOTP_SECRET = b"Hello!\xde\xad\xbe\xef"  # base32 JBSWY3DPEHPK3PXP, as in the README

# Every token a test saw, to look for in the server log at the end.
SEEN_TOKENS = set()


# --- the database -----------------------------------------------------------------


def app_sql(query, params=()):
    with psycopg.connect(APP_DSN, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def superuser_sql(query, params=()):
    with psycopg.connect(SUPERUSER_DSN, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


# --- helpers ----------------------------------------------------------------------


def expect():
    from playwright.sync_api import expect as pw_expect

    return pw_expect


def at(path):
    """The exact URL of a path of the app, for to_have_url."""
    return re.compile("^" + re.escape(URL + path) + "$")


def path_of(page):
    parts = urlsplit(page.url)
    return parts.path + ("?" + parts.query if parts.query else "")


def log_in(page, who, landing="/"):
    email, password = who
    page.goto(URL + landing)
    expect()(page).to_have_url(at("/login?next=" + landing))
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.click("#sign-in")
    expect()(page).to_have_url(at(landing))


def cookies(ctx):
    found = {c["name"]: c for c in ctx.cookies()}
    for c in found.values():
        SEEN_TOKENS.add(c["value"])
    return found


def session_id_of(page):
    return page.text_content("#session-id").strip()


def validate_status(token):
    return app_sql("SELECT status FROM session_validate(%s)", (token,))[0][0]


def sign_out_everywhere(user_id):
    app_sql("SELECT session_revoke_user(%s)", (user_id,))


def totp(step):
    mac = hmac.new(DEMO_TOTP_SECRET, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    return "%06d" % ((struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF) % 10**6)


def count_refreshes(page):
    """A list that collects every response of the refresh endpoint."""
    seen = []
    page.on("response", lambda r: seen.append(r.url) if "/auth/refresh" in r.url else None)
    return seen


# --- tests --------------------------------------------------------------------------


def test_app_role_is_a_login_role_with_only_the_client_grant():
    role = superuser_sql(
        "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication"
        " FROM pg_roles WHERE rolname = 'example_app'"
    )
    assert role == [(True, False, False, False, False, False)]
    member_of = superuser_sql(
        "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid"
        " WHERE m.member = 'example_app'::regrole"
    )
    assert member_of == [("session_auth_client",)]
    # No privilege granted to the role itself (in any ACL), and it owns nothing.
    for catalog, acl in (("pg_class", "relacl"), ("pg_proc", "proacl"), ("pg_namespace", "nspacl"),
                         ("pg_database", "datacl")):
        grants = superuser_sql(
            f"SELECT count(*) FROM {catalog}, aclexplode({acl}) a WHERE a.grantee = 'example_app'::regrole"
        )
        assert grants == [(0,)], catalog
    assert superuser_sql("SELECT count(*) FROM pg_class WHERE relowner = 'example_app'::regrole") == [(0,)]
    assert superuser_sql("SELECT count(*) FROM pg_proc WHERE proowner = 'example_app'::regrole") == [(0,)]

    with psycopg.connect(APP_DSN, autocommit=True) as conn:
        assert conn.execute("SELECT current_user, session_user").fetchone() == ("example_app", "example_app")
        # It can call the functions...
        assert conn.execute("SELECT status FROM session_validate(%s)", ("nope",)).fetchone() == ("invalid",)
        # ...but reads no table and cannot loosen the DBA's policy for it.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM session_auth.sessions")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET session_auth.access_ttl = '1h'")
        ttl = conn.execute("SELECT current_setting('session_auth.access_ttl')").fetchone()[0]
        assert ttl == f"{ACCESS_TTL:g}s"


def test_cookies_are_secure_except_on_plain_local_http():
    def login_cookies(host):
        parts = urlsplit(URL)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        email, password = BOB
        conn.request(
            "POST",
            "/login",
            body=urlencode({"email": email, "password": password}),
            headers={"Host": host, "Content-Type": "application/x-www-form-urlencoded"},
        )
        resp = conn.getresponse()
        assert resp.status == 303
        found = resp.headers.get_all("Set-Cookie")
        conn.close()
        for c in found:
            SEEN_TOKENS.add(c.split(";")[0].split("=", 1)[1])
        return sorted(found)

    port = urlsplit(URL).port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        access, refresh = login_cookies(host)
        assert access.startswith("sa_access=pgsa_at_") and refresh.startswith("sa_refresh=pgsa_rt_")
        assert "Secure" not in access and "Secure" not in refresh
    # Any other host name: Secure, with the __Host- / __Secure- prefixes.
    access, refresh = login_cookies(f"app.example.test:{port}")
    assert access.startswith("__Host-sa_access=pgsa_at_")
    assert refresh.startswith("__Secure-sa_refresh=pgsa_rt_")
    for c in (access, refresh):
        assert "; Secure" in c and "; HttpOnly" in c and "; SameSite=Strict" in c
    assert "; Path=/;" in access + ";" and "; Path=/auth/refresh" in refresh


def test_a_host_header_from_afar_does_not_turn_secure_off():
    """A client elsewhere that names localhost in its Host header still gets
    Secure cookies: only a loopback peer can have plain local http."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from app import app, cookie_names, plain_local_http

    for peer, plain in (("203.0.113.9", False), ("127.0.0.1", True), ("::ffff:127.0.0.1", True)):
        with app.test_request_context(base_url="http://localhost:8000/", environ_base={"REMOTE_ADDR": peer}):
            assert plain_local_http() is plain, peer
            assert cookie_names()[0] == ("sa_access" if plain else "__Host-sa_access"), peer


def test_login_reload_silent_refresh_tabs_and_logout_everywhere(device):
    sign_out_everywhere("alice")  # a clean slate: no session of alice from another test
    laptop = device("laptop")
    tab1 = laptop.new_page()
    refreshes = count_refreshes(tab1)

    # Not signed in: the protected page sends us to the login page.
    log_in(tab1, ALICE)
    expect()(tab1.locator("#email")).to_have_text(ALICE[0])
    sid = session_id_of(tab1)

    jar = cookies(laptop)
    access, refresh = jar["sa_access"], jar["sa_refresh"]
    assert access["value"].startswith("pgsa_at_") and refresh["value"].startswith("pgsa_rt_")
    for c in (access, refresh):
        assert c["httpOnly"] and c["sameSite"] == "Strict"
        assert not c["secure"]  # plain http on 127.0.0.1 only
    assert access["path"] == "/" and refresh["path"] == "/auth/refresh"
    assert tab1.evaluate("document.cookie") == ""  # HttpOnly: no script sees them

    # Reload: still signed in, same session.
    tab1.reload()
    assert path_of(tab1) == "/" and session_id_of(tab1) == sid

    # Let the access token expire; the next page view refreshes silently.
    time.sleep(ACCESS_TTL + 0.5)
    assert validate_status(access["value"]) == "expired"
    before = len(refreshes)
    tab1.reload()
    assert path_of(tab1) == "/" and session_id_of(tab1) == sid
    assert len(refreshes) > before, "the expired access token was not refreshed"
    jar = cookies(laptop)
    assert jar["sa_access"]["value"] != access["value"]
    assert jar["sa_refresh"]["value"] != refresh["value"]
    assert jar["sa_refresh"]["path"] == "/auth/refresh"
    assert validate_status(jar["sa_access"]["value"]) == "ok"

    # A second tab shares the cookies: signed in, same session.
    tab2 = laptop.new_page()
    tab2.goto(URL + "/")
    assert path_of(tab2) == "/" and session_id_of(tab2) == sid

    # Another device of the same user.
    phone = device("phone").new_page()
    log_in(phone, ALICE)
    assert session_id_of(phone) != sid
    assert len(app_sql("SELECT session_id FROM session_list(%s)", ("alice",))) == 2

    # Log out everywhere from tab 1.
    last_access = cookies(laptop)["sa_access"]["value"]
    tab1.click("#logout-everywhere")
    expect()(tab1).to_have_url(at("/login?reason=logged_out_everywhere"))
    expect()(tab1.locator("#message")).to_contain_text("signed out on every device")
    assert app_sql("SELECT session_id FROM session_list(%s)", ("alice",)) == []
    assert validate_status(last_access) == "revoked"

    # The other tab is bounced to the login page on reload...
    tab2.reload()
    expect()(tab2).to_have_url(at("/login?next=/"))
    assert cookies(laptop) == {}
    # ...and so is the other device, whose cookies are still there: the server refuses them.
    assert "sa_access" in cookies(phone.context)
    phone.reload()
    expect()(phone).to_have_url(at("/login?reason=revoked&next=/"))
    expect()(phone.locator("#message")).to_contain_text("signed out")


def test_link_from_another_site_keeps_the_user_signed_in(device):
    # SameSite=Strict cookies are not sent on a navigation from another site;
    # the app answers with a same-site reload instead of the login page, and
    # keeps the cookies.
    ctx = device("laptop")
    page = ctx.new_page()
    log_in(page, ALICE)
    sid = session_id_of(page)
    ctx.route(
        "http://elsewhere.test/**",
        lambda route: route.fulfill(
            content_type="text/html", body=f'<a id="go" href="{URL}/devices">your devices</a>'
        ),
    )
    page.goto("http://elsewhere.test/")
    loads = []
    page.on("request", lambda r: loads.append(r.url) if r.url == URL + "/devices" else None)
    page.click("#go")
    expect()(page).to_have_url(at("/devices"))
    expect()(page.locator("tr.device")).to_have_count(1)
    assert len(loads) == 2  # the cross-site one without cookies, then the same-site reload
    expect()(page.locator("tr.device:has(.this-device)")).to_have_attribute("data-session-id", sid)
    assert "sa_access" in cookies(ctx)


def test_change_email_needs_a_fresh_login_and_a_step_up(device):
    page = device("laptop").new_page()
    log_in(page, BOB, landing="/account")
    expect()(page.locator("#email")).to_have_text(BOB[0])
    # Alice signs in now too, and comes back once her sign-in is stale.
    alice = device("alice's laptop").new_page()
    log_in(alice, ALICE, landing="/account")

    def submit_new_email(email):
        page.goto(URL + "/account")
        page.fill("input[name=email]", email)
        page.click("#change-email")

    # Fresh login but level 1: the step-up demands the second-factor code.
    submit_new_email("bob2@example.com")
    expect()(page.locator("#confirm-code")).to_be_visible()
    step = int(time.time()) // 30
    valid = {totp(s) for s in (step - 1, step, step + 1)}
    wrong = next(c for c in ("000000", "111111", "222222", "333333") if c not in valid)
    page.fill("input[name=code]", wrong)
    page.click("#confirm")
    expect()(page.locator("#error")).to_contain_text("Wrong or already used code")
    expect()(page.locator("#confirm-code")).to_be_visible()

    refreshes = count_refreshes(page)
    before = cookies(page.context)["sa_access"]["value"]
    page.fill("input[name=code]", totp(int(time.time()) // 30))
    page.click("#confirm")
    expect()(page).to_have_url(at("/account?changed=1"))
    expect()(page.locator("#email")).to_have_text("bob2@example.com")
    # session_reauthenticate rotated the pair, and the old one stopped at once
    # (unless a silent refresh came first: then `before` was rotated anyway).
    after = cookies(page.context)["sa_access"]["value"]
    assert after != before
    if not refreshes:
        assert validate_status(before) == "revoked"
    page.goto(URL + "/")
    expect()(page.locator("#auth-level")).to_have_text("2")

    # Fresh and at level 2: the next change goes straight through.
    submit_new_email("bob3@example.com")
    expect()(page).to_have_url(at("/account?changed=1"))
    expect()(page.locator("#email")).to_have_text("bob3@example.com")

    # Once the login is older than max_auth_age, the password is asked again.
    # The form is submitted with an expired access token too: the POST goes
    # through the refresh endpoint (307, the form re-sent) and comes back.
    page.goto(URL + "/account")
    time.sleep(MAX_AUTH_AGE + 0.5)
    refreshes = count_refreshes(page)
    page.fill("input[name=email]", "bob4@example.com")
    page.click("#change-email")
    expect()(page.locator("#confirm-password")).to_be_visible()
    assert refreshes, "the expired access token was not refreshed on the way"
    expect()(page.locator("text=New email:")).to_contain_text("bob4@example.com")
    page.fill("input[name=password]", "not the password")
    page.click("#confirm")
    expect()(page.locator("#error")).to_contain_text("Wrong password")
    page.fill("input[name=password]", BOB[1])
    page.click("#confirm")
    expect()(page).to_have_url(at("/account?changed=1"))
    expect()(page.locator("#email")).to_have_text("bob4@example.com")
    assert bob_events() >= 2

    # Stale and at level 1: the password first (a code alone never stands in
    # for it), then the code.
    alice.goto(URL + "/account")
    alice.fill("input[name=email]", "alice2@example.com")
    alice.click("#change-email")
    expect()(alice.locator("#confirm-password")).to_be_visible()
    alice.fill("input[name=password]", ALICE[1])
    alice.click("#confirm")
    expect()(alice.locator("#confirm-code")).to_be_visible()
    alice.fill("input[name=code]", totp(int(time.time()) // 30))
    alice.click("#confirm")
    expect()(alice).to_have_url(at("/account?changed=1"))
    expect()(alice.locator("#email")).to_have_text("alice2@example.com")
    alice.fill("input[name=email]", ALICE[0])  # and back, straight through
    alice.click("#change-email")
    expect()(alice).to_have_url(at("/account?changed=1"))
    expect()(alice.locator("#email")).to_have_text(ALICE[0])

    # The new address is the login from now on.
    page.click("#logout")
    expect()(page).to_have_url(at("/login?reason=logged_out"))
    page.fill("input[name=email]", BOB[0])
    page.fill("input[name=password]", BOB[1])
    page.click("#sign-in")
    expect()(page.locator("#error")).to_contain_text("Wrong email or password")
    log_in(page, ("bob4@example.com", BOB[1]))


def bob_events():
    return superuser_sql(
        "SELECT count(*) FROM session_auth.events WHERE user_id = 'bob' AND event = 'reauthenticated'"
    )[0][0]


def test_devices_page_signs_out_another_device_and_logout(device):
    sign_out_everywhere("alice")
    laptop = device("laptop").new_page()
    phone = device("phone").new_page()
    log_in(laptop, ALICE)
    log_in(phone, ALICE)
    phone_sid = session_id_of(phone)

    laptop.goto(URL + "/devices")
    rows = laptop.locator("tr.device")
    expect()(rows).to_have_count(2)
    expect()(laptop.locator("tr.device:has(.this-device) .device-name")).to_contain_text("example-test laptop")
    phone_row = laptop.locator(f'tr.device[data-session-id="{phone_sid}"]')
    expect()(phone_row.locator(".device-name")).to_contain_text("example-test phone")

    phone_row.locator(".sign-out-device").click()
    expect()(laptop).to_have_url(at("/devices"))
    expect()(rows).to_have_count(1)
    phone.reload()
    expect()(phone).to_have_url(at("/login?reason=revoked&next=/"))

    # Someone else's session id is not this user's to sign out.
    bob_sid, bob_token = app_sql("SELECT session_id, access_token FROM session_issue('bob')")[0]
    SEEN_TOKENS.add(bob_token)
    # (Redirects are followed: an expired access token is refreshed on the way.)
    resp = laptop.request.post(URL + f"/devices/{bob_sid}/revoke")
    assert resp.status == 404
    assert validate_status(bob_token) == "ok"

    # Plain logout revokes the session server-side too.
    token = cookies(laptop.context)["sa_access"]["value"]
    laptop.click("#logout")
    expect()(laptop).to_have_url(at("/login?reason=logged_out"))
    assert validate_status(token) == "revoked"
    laptop.goto(URL + "/")
    expect()(laptop).to_have_url(at("/login?next=/"))


def test_replayed_refresh_token_ends_the_session(device):
    victim = device("victim").new_page()
    log_in(victim, ALICE)
    sid = session_id_of(victim)
    stolen = cookies(victim.context)["sa_refresh"]["value"]

    time.sleep(ACCESS_TTL + 0.5)
    victim.reload()  # silent refresh: `stolen` is superseded
    assert session_id_of(victim) == sid
    assert cookies(victim.context)["sa_refresh"]["value"] != stolen
    time.sleep(REFRESH_GRACE + 0.5)  # past the retry window

    attacker = device("attacker")
    host = urlsplit(URL).hostname
    attacker.add_cookies([{"name": "sa_refresh", "value": stolen, "domain": host, "path": "/auth/refresh"}])
    page = attacker.new_page()
    page.goto(URL + "/auth/refresh?next=/")
    expect()(page).to_have_url(at("/login?reason=reuse_detected"))
    expect()(page.locator("#message")).to_contain_text("used again")

    victim.reload()
    expect()(victim).to_have_url(at("/login?reason=revoked&next=/"))
    assert superuser_sql(
        "SELECT count(*) FROM session_auth.events WHERE session_id = %s AND event = 'reuse_detected'", (sid,)
    ) == [(1,)]


def test_tokens_travel_as_bind_parameters_only(browser):  # after the browser tests
    # The cluster logs every statement (log_statement = 'all') but no bind
    # parameter value (log_parameter_max_length = 0): the app's SQL text is
    # there, and no token any test saw.
    text = SERVER_LOG.read_text(errors="replace")
    assert "session_validate($1)" in text and "session_refresh($1)" in text
    assert len(SEEN_TOKENS) > 10
    for token in SEEN_TOKENS:
        assert token not in text
    assert "pgsa_at_" not in text and "pgsa_rt_" not in text
