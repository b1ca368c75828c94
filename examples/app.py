"""A small Flask application on top of pg_session_auth.

It uses only the extension's public functions, always with the tokens as
bind parameters (psycopg 3 sends `%s` as `$1`, so the SQL text the server
sees and may log never contains a token):

    login                  session_issue
    every protected page   session_validate, and on `expired` a silent
                           session_refresh that rotates both cookies
    log out                session_revoke
    log out everywhere     session_revoke_user
    devices page           session_list, session_revoke_id
    change email           session_require (fresh login, level 2), and
                           session_reauthenticate after the password or the
                           second factor

It connects as a LOGIN role whose only privilege is membership in
`session_auth_client` (see examples/run). The users are a fixed demo table in
this file, with scrypt password hashes made at start-up; the second factor is
a real RFC 6238 TOTP with a fixed demo secret, and the page shows the current
code because nobody running the demo has the authenticator app. Both are
demo stand-ins: a real application keeps its users in its own tables and its
TOTP secrets per user, never on a page.

    python app.py [--host 127.0.0.1] [--port 8000]

Environment: EXAMPLE_DATABASE_URL (libpq connection string of the app role),
EXAMPLE_MAX_AUTH_AGE (seconds a login stays fresh enough to change the
email; 60).
"""

import argparse
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import struct
import threading
import time
from dataclasses import dataclass
from datetime import timedelta, timezone
from functools import wraps
from urllib.parse import urlsplit

import psycopg
from flask import Flask, abort, g, redirect, render_template, request, url_for
from psycopg.rows import namedtuple_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

DATABASE_URL = os.environ.get(
    "EXAMPLE_DATABASE_URL",
    "host=/tmp/pg_session_auth_example port=5432 dbname=postgres user=example_app",
)
MAX_AUTH_AGE = timedelta(seconds=float(os.environ.get("EXAMPLE_MAX_AUTH_AGE", "60")))
STEP_UP_LEVEL = 2
REFRESH_PATH = "/auth/refresh"

log = logging.getLogger("example")
app = Flask(__name__)


# --- database ---------------------------------------------------------------

# Role settings (ALTER ROLE ... SET session_auth.access_ttl) apply when a
# connection starts, so the pool's connections carry the DBA's policy.
_pool = None
_pool_lock = threading.Lock()


def pool():
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ConnectionPool(
                DATABASE_URL,
                min_size=1,
                max_size=8,
                kwargs={"autocommit": True, "row_factory": namedtuple_row},
                check=ConnectionPool.check_connection,
                open=True,
            )
    return _pool


def sql_one(query, params=()):
    """One row of a query; every value (tokens above all) is a bind parameter."""
    with pool().connection() as conn:
        return conn.execute(query, params).fetchone()


def sql_all(query, params=()):
    with pool().connection() as conn:
        return conn.execute(query, params).fetchall()


# --- demo users: scrypt password hashes, TOTP second factor -------------------

DEMO_USERS = [
    # user_id, email, password (demo only: a real app never has these in code)
    ("alice", "alice@example.com", "correct horse battery staple"),
    ("bob", "bob@example.com", "hunter2 is not a password"),
]
# RFC 6238 demo secret, the same for every demo user (base32 JBSWY3DPEHPK3PXP).
DEMO_TOTP_SECRET = b"Hello!\xde\xad\xbe\xef"


@dataclass
class User:
    user_id: str
    email: str
    salt: bytes
    password_hash: bytes
    totp_secret: bytes
    last_totp_step: int = -1


def scrypt(password, salt):
    # 16 MiB, about 50 ms: the cost is what makes a stolen hash slow to guess.
    return hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)


def _make_user(user_id, email, password):
    salt = secrets.token_bytes(16)
    return User(user_id, email, salt, scrypt(password, salt), DEMO_TOTP_SECRET)


USERS = {u: _make_user(u, e, p) for u, e, p in DEMO_USERS}
_users_lock = threading.Lock()
_DUMMY_SALT = secrets.token_bytes(16)


def user_by_email(email):
    email = email.strip().lower()
    with _users_lock:
        return next((u for u in USERS.values() if u.email == email), None)


def check_password(user, password):
    """Constant-time check; an unknown user costs the same scrypt."""
    if user is None:
        scrypt(password, _DUMMY_SALT)
        return False
    return hmac.compare_digest(scrypt(password, user.salt), user.password_hash)


def totp(secret, step):
    mac = hmac.new(secret, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    return "%06d" % ((struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF) % 10**6)


def check_totp(user, code):
    """Accepts the code of the current 30 s step or a neighbour, once."""
    now = int(time.time()) // 30
    for step in (now - 1, now, now + 1):
        if hmac.compare_digest(totp(user.totp_secret, step), code.strip()):
            with _users_lock:
                if step <= user.last_totp_step:
                    return False  # replayed code
                user.last_totp_step = step
            return True
    return False


# --- cookies ----------------------------------------------------------------

LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def loopback_address(address):
    """Whether a peer's address is this machine's loopback (127/8, ::1, or
    127/8 mapped into IPv6 by a dual-stack socket)."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def plain_local_http():
    """Secure cookies everywhere but plain http on this machine's loopback:
    the connection comes from a loopback address (a peer cannot choose
    that) and the request names a loopback host. The Host header alone
    decides nothing, since every client sets its own; and a proxy on this
    machine that passes the public host name on gets Secure cookies."""
    return (
        request.scheme == "http"
        and loopback_address(request.remote_addr)
        and urlsplit("//" + request.host).hostname in LOOPBACK
    )


def cookie_names():
    # With Secure on, the prefixes make the browser enforce it: __Host- also
    # pins the access cookie to this host and Path=/.
    if plain_local_http():
        return "sa_access", "sa_refresh"
    return "__Host-sa_access", "__Secure-sa_refresh"


def set_session_cookies(resp, access_token, refresh_token, refresh_expires_at):
    access_name, refresh_name = cookie_names()
    common = dict(httponly=True, secure=not plain_local_http(), samesite="Strict")
    # Both cookies live as long as the session can (its refresh deadline):
    # an access cookie past its token's TTL is still sent, the server answers
    # `expired`, and the app refreshes instead of showing the login page.
    resp.set_cookie(access_name, access_token, expires=refresh_expires_at, path="/", **common)
    # The refresh token goes only to the refresh endpoint.
    resp.set_cookie(
        refresh_name, refresh_token, expires=refresh_expires_at, path=REFRESH_PATH, **common
    )
    return resp


def clear_session_cookies(resp):
    access_name, refresh_name = cookie_names()
    common = dict(httponly=True, secure=not plain_local_http(), samesite="Strict")
    resp.delete_cookie(access_name, path="/", **common)
    resp.delete_cookie(refresh_name, path=REFRESH_PATH, **common)
    return resp


def access_cookie():
    return request.cookies.get(cookie_names()[0])


def refresh_cookie():
    return request.cookies.get(cookie_names()[1])


# --- requests -----------------------------------------------------------------


def safe_next(target):
    """A local path to go back to, never another site (browsers drop tabs and
    newlines from URLs and read a backslash as a slash: refuse them all)."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith("//")
        or any(c == "\\" or ord(c) < 0x21 or ord(c) == 0x7F for c in target)
    ):
        return url_for("home")
    return target


def here():
    return request.full_path.rstrip("?")


def to_login(reason=None):
    """Ends the browser's session: cookies cleared, off to the login page."""
    params = {"reason": reason} if reason else {}
    if request.method == "GET" and request.endpoint not in ("login", "refresh"):
        params["next"] = here()
    resp = redirect(url_for("login", **params), 303)
    # Clear the cookies this request carried (never on a request that came
    # without them, such as a cross-site one: the browser may still hold them).
    if access_cookie() or refresh_cookie():
        clear_session_cookies(resp)
    resp.ends_session = True
    return resp


def to_refresh(target=None):
    """The silent refresh: the refresh cookie is only sent to REFRESH_PATH, so
    go there and come back. A POST goes with 307, which makes the browser
    send the same form again to the refresh endpoint and then back here."""
    code = 307 if request.method == "POST" else 303
    return redirect(url_for("refresh", next=target or here()), code)


@app.before_request
def same_origin_posts_only():
    # SameSite=Strict already keeps the cookies off cross-site requests; this
    # also stops cross-site form posts to the login form (login CSRF).
    if request.method == "POST":
        origin = request.headers.get("Origin")
        if origin is not None and origin != request.host_url.rstrip("/"):
            abort(403)


@app.after_request
def security_headers(resp):
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    )
    resp.headers["Referrer-Policy"] = "same-origin"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


def login_required(view):
    """Validates the access token; `expired` is silently refreshed, anything
    else (no cookie, invalid, revoked) goes to the login page."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        token = access_cookie()
        if not token:
            if request.method == "GET" and request.headers.get("Sec-Fetch-Site") == "cross-site":
                # A link from another site: SameSite=Strict cookies stay home.
                # Load the page again from here, a same-site navigation that
                # carries them (and lands on the login page if there are none).
                return render_template("continue.html", target=here())
            return to_login()
        row = sql_one(
            "SELECT status, session_id, user_id, data, auth_level, authenticated_at, expires_at"
            " FROM session_validate(%s)",
            (token,),
        )
        if row.status == "expired":
            return to_refresh()
        if row.status != "ok":
            return to_login(row.status)
        g.token = token
        g.session = row
        g.user = USERS.get(row.user_id)
        if g.user is None:  # a session of a user that no longer exists
            sql_one("SELECT session_revoke(%s)", (token,))
            return to_login("revoked")
        return view(*args, **kwargs)

    return wrapper


def raised_by_require(exc):
    """The response for a session_require/session_reauthenticate error that
    is not SA005: the token expired in between (refresh) or is gone."""
    if exc.sqlstate == "SA002":
        return to_refresh()
    if exc.sqlstate in ("SA001", "SA003"):
        return to_login("revoked" if exc.sqlstate == "SA003" else None)
    raise exc


# --- pages ----------------------------------------------------------------------

LOGIN_MESSAGES = {
    "logged_out": "You are signed out.",
    "logged_out_everywhere": "You are signed out on every device.",
    "revoked": "This session was signed out. Please sign in again.",
    "expired": "Your session expired. Please sign in again.",
    "reuse_detected": "An old sign-in token of this session was used again, so the "
    "session was ended on every device that had it. Please sign in again.",
}


@app.route("/login", methods=["GET", "POST"])
def login():
    message = LOGIN_MESSAGES.get(request.args.get("reason"))
    nxt = safe_next(request.values.get("next"))
    if request.method == "GET":
        return render_template("login.html", message=message, next=nxt)

    email = request.form.get("email", "")
    user = user_by_email(email)
    if not check_password(user, request.form.get("password", "")):
        return render_template("login.html", error="Wrong email or password.", email=email, next=nxt), 401

    # A new login on this browser replaces the session it had, if any.
    old = access_cookie()
    if old:
        sql_one("SELECT session_revoke(%s)", (old,))
    device = {"user_agent": request.user_agent.string[:200], "ip": request.remote_addr}
    s = sql_one(
        "SELECT session_id, access_token, refresh_token, refresh_expires_at"
        " FROM session_issue(%s, %s, 1)",
        (user.user_id, Jsonb(device)),
    )
    log.info("login user=%s session=%s", user.user_id, s.session_id)
    return set_session_cookies(redirect(nxt, 303), s.access_token, s.refresh_token, s.refresh_expires_at)


@app.route(REFRESH_PATH, methods=["GET", "POST"], endpoint="refresh")
def refresh():
    token = refresh_cookie()
    if not token:
        return to_login()
    r = sql_one(
        "SELECT status, session_id, access_token, refresh_token, refresh_expires_at"
        " FROM session_refresh(%s)",
        (token,),
    )
    if r.status != "ok":
        # invalid, expired, revoked, or reuse_detected (the extension has
        # already revoked the whole session and announced it).
        log.warning("refresh refused: %s", r.status)
        return to_login(r.status)
    log.info("refreshed session=%s", r.session_id)
    code = 307 if request.method == "POST" else 303
    resp = redirect(safe_next(request.args.get("next")), code)
    return set_session_cookies(resp, r.access_token, r.refresh_token, r.refresh_expires_at)


@app.route("/")
@login_required
def home():
    return render_template("home.html")


@app.post("/logout")
def logout():
    # session_revoke takes any token of the session, even an expired one.
    token = access_cookie()
    if token:
        sql_one("SELECT session_revoke(%s)", (token,))
    return to_login("logged_out")


@app.post("/logout/everywhere")
@login_required
def logout_everywhere():
    n = sql_one("SELECT session_revoke_user(%s) AS n", (g.session.user_id,)).n
    log.info("logout everywhere user=%s sessions=%s", g.session.user_id, n)
    return to_login("logged_out_everywhere")


@app.get("/devices")
@login_required
def devices():
    rows = sql_all(
        "SELECT session_id, created_at, authenticated_at, last_refreshed_at, expires_at,"
        " auth_level, data FROM session_list(%s)",
        (g.session.user_id,),
    )
    return render_template("devices.html", devices=rows)


@app.post("/devices/<uuid:session_id>/revoke")
@login_required
def revoke_device(session_id):
    # session_revoke_id takes any id: make sure it is one of this user's.
    mine = {r.session_id for r in sql_all("SELECT session_id FROM session_list(%s)", (g.session.user_id,))}
    if session_id not in mine:
        abort(404)
    sql_one("SELECT session_revoke_id(%s)", (session_id,))
    if session_id == g.session.session_id:
        return to_login("logged_out")
    return redirect(url_for("devices"), 303)


@app.get("/account")
@login_required
def account():
    return render_template("account.html", changed=request.args.get("changed"), max_auth_age=MAX_AUTH_AGE)


def factor_needed(token):
    """None if this session may change the email now, else the factor to ask
    for: 'password' when the login is older than MAX_AUTH_AGE (asked first, so
    a code alone never stands in for it), then 'code' below level 2."""
    with pool().connection() as conn:
        try:
            conn.execute(
                "SELECT session_id FROM session_require(%s, max_auth_age => %s, min_auth_level => %s)",
                (token, MAX_AUTH_AGE, STEP_UP_LEVEL),
            )
            return None
        except psycopg.Error as e:
            if e.sqlstate != "SA005":
                raise
            # The HINT says which condition failed (the level is checked first).
            if not (e.diag.message_hint or "").startswith("min_auth_level"):
                return "password"
        try:
            conn.execute("SELECT session_id FROM session_require(%s, max_auth_age => %s)", (token, MAX_AUTH_AGE))
            return "code"
        except psycopg.Error as e:
            if e.sqlstate != "SA005":
                raise
            return "password"


def change_email_or_ask(token, new_email):
    """The sensitive action, behind session_require."""
    try:
        factor = factor_needed(token)
    except psycopg.Error as e:
        return raised_by_require(e)
    if factor:
        return render_template("confirm.html", factor=factor, email=new_email, code_hint=demo_code_hint(factor))
    with _users_lock:
        taken = any(u.email == new_email for u in USERS.values() if u is not g.user)
        if not taken:
            g.user.email = new_email
    if taken:
        return render_template("account.html", error="That email is taken.", max_auth_age=MAX_AUTH_AGE), 409
    log.info("email changed user=%s", g.user.user_id)
    return redirect(url_for("account", changed=1), 303)


def demo_code_hint(factor):
    # Demo only: shows what an authenticator app with the demo secret shows.
    return totp(DEMO_TOTP_SECRET, int(time.time()) // 30) if factor == "code" else None


def clean_email(value):
    email = (value or "").strip().lower()
    if not (3 <= len(email) <= 254) or email.count("@") != 1 or any(c.isspace() for c in email):
        return None
    return email


@app.post("/account/email")
@login_required
def change_email():
    new_email = clean_email(request.form.get("email"))
    if not new_email:
        return render_template("account.html", error="That is not an email address.", max_auth_age=MAX_AUTH_AGE), 400
    return change_email_or_ask(g.token, new_email)


@app.post("/account/confirm")
@login_required
def confirm():
    """The user re-entered the password or the code: reauthenticate, then
    retry the change with the new token (which may ask for the next factor)."""
    new_email = clean_email(request.form.get("email"))
    factor = request.form.get("factor")
    if not new_email or factor not in ("password", "code"):
        abort(400)
    if factor == "password":
        ok, level = check_password(g.user, request.form.get("password", "")), None
    else:
        ok, level = check_totp(g.user, request.form.get("code", "")), STEP_UP_LEVEL
    if not ok:
        error = "Wrong password." if factor == "password" else "Wrong or already used code."
        return (
            render_template("confirm.html", factor=factor, email=new_email, error=error, code_hint=demo_code_hint(factor)),
            401,
        )
    try:
        s = sql_one(
            "SELECT session_id, access_token, refresh_token, refresh_expires_at"
            " FROM session_reauthenticate(%s, %s)",
            (g.token, level),
        )
    except psycopg.Error as e:
        return raised_by_require(e)
    log.info("reauthenticated session=%s factor=%s", s.session_id, factor)
    # The old pair stopped working at once: from here on, only the new token.
    resp = app.make_response(change_email_or_ask(s.access_token, new_email))
    if getattr(resp, "ends_session", False):
        return resp
    return set_session_cookies(resp, s.access_token, s.refresh_token, s.refresh_expires_at)


@app.template_filter("when")
def when(ts):
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else ""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    pool().wait(timeout=10)
    # Werkzeug's server is enough for a demo on loopback; use a WSGI server
    # (gunicorn, uwsgi) behind TLS for anything else.
    app.run(host=args.host, port=args.port, threaded=True, use_reloader=False)


if __name__ == "__main__":
    main()
