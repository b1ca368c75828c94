'use strict';
// The JSON API. Each handler takes the request and returns reply(...) or
// throws an HttpError; server.js writes either.
//
//   POST /api/auth/login              session_issue            (cookie endpoint: CSRF guard)
//   POST /api/auth/refresh            session_refresh          (cookie endpoint: CSRF guard)
//   POST /api/auth/logout             session_revoke           (bearer)
//   POST /api/auth/logout-everywhere  session_revoke_user      (bearer)
//   POST /api/auth/reauthenticate     session_reauthenticate   (bearer)
//   GET  /api/me                      session_validate         (bearer)
//   POST /api/account/email           session_require: fresh sign-in, level 2 (bearer)
//
// The access token travels in the Authorization header and the page keeps it
// in memory; the refresh token is a cookie that only the refresh endpoint
// sees. Bearer endpoints need no CSRF guard: a browser never adds that
// header by itself.

const { HttpError, reply, readJsonObject, stringField } = require('./http');
const { bearerToken, invalidToken, insufficientUserAuthentication } = require('./bearer');
const cookies = require('./cookies');
const sessions = require('./sessions');
const users = require('./users');
const log = require('./log');

const MAX_AUTH_AGE = Number(process.env.SPA_MAX_AUTH_AGE || 60); // seconds
if (!(MAX_AUTH_AGE > 0)) throw new Error('SPA_MAX_AUTH_AGE must be a number of seconds');
const STEP_UP_LEVEL = 2;
// RFC 9470's acr_values for the extension's auth_level (the NIST assurance levels).
const ACR_FOR_LEVEL = { 2: 'aal2' };

/** A new pair: the access token in the body, the refresh token in its cookie. */
function pairReply(req, s, extra = {}) {
  return reply(
    200,
    { access_token: s.access_token, expires_at: s.access_expires_at, session_id: s.session_id, ...extra },
    { 'Set-Cookie': cookies.refreshCookie(req, s.refresh_token, s.refresh_expires_at) },
  );
}

/** The caller's session from its bearer token, or a 401 (RFC 6750). */
async function authenticate(req) {
  const token = bearerToken(req);
  const session = await sessions.validate(token);
  // not_replayed happens on a hot standby only: an app that validates there
  // asks the primary for that token; this one has a primary only.
  if (session.status !== 'ok') throw invalidToken(session.status);
  const user = users.byId(session.user_id);
  if (user === null) {
    // A session of a user the application no longer has.
    await sessions.revoke(token);
    throw invalidToken('revoked');
  }
  return { token, session, user };
}

async function login(req) {
  cookies.requirePageRequest(req);
  const body = await readJsonObject(req);
  const email = stringField(body, 'email');
  const password = stringField(body, 'password', 1024);
  const user = users.byEmail(email);
  if (!(await users.checkPassword(user, password))) {
    throw new HttpError(401, 'invalid_credentials', { detail: 'wrong email or password' });
  }
  const device = { user_agent: String(req.headers['user-agent'] || '').slice(0, 200), ip: req.socket.remoteAddress };
  const s = await sessions.issue(user.id, device, 1);
  log.info(`login user=${user.id} session=${s.session_id}`);
  return pairReply(req, s);
}

async function refresh(req) {
  cookies.requirePageRequest(req);
  const token = cookies.refreshTokenOf(req);
  if (token === null) throw new HttpError(401, 'no_refresh_cookie', { detail: 'sign in' });
  const r = await sessions.refresh(token);
  if (r.status !== 'ok') {
    // The cookie is left as it is: its token is dead server-side whatever
    // happens to it, so every tab of this browser that presents it hears the
    // reason from the extension. (Clearing it on `expired` could even sign
    // out a tab whose late retry lost to another tab that set the next one.)
    log.warn(`refresh refused: ${r.status}`);
    throw new HttpError(401, r.status);
  }
  log.info(`refresh session=${r.session_id}`);
  return pairReply(req, r);
}

async function logout(req) {
  // session_revoke takes any token of the session, even an expired one.
  const revoked = await sessions.revoke(bearerToken(req));
  log.info(`logout revoked=${revoked}`);
  return reply(200, { revoked }, { 'Set-Cookie': cookies.clearedRefreshCookie(req) });
}

async function logoutEverywhere(req) {
  const { session } = await authenticate(req);
  const n = await sessions.revokeUser(session.user_id);
  log.info(`logout everywhere user=${session.user_id} sessions=${n}`);
  return reply(200, { sessions: n }, { 'Set-Cookie': cookies.clearedRefreshCookie(req) });
}

async function me(req) {
  const { session, user } = await authenticate(req);
  return reply(200, {
    user_id: user.id,
    email: user.email,
    session_id: session.session_id,
    auth_level: session.auth_level,
    authenticated_at: session.authenticated_at,
    expires_at: session.expires_at,
  });
}

/** True when session_require passes with these conditions, false on SA005. */
async function meets(token, conditions) {
  try {
    await sessions.requireSession(token, conditions);
    return true;
  } catch (err) {
    if (sessions.sqlstate(err) === 'SA005') return false;
    throw err;
  }
}

/**
 * The step-up gate of a sensitive action: nothing when the sign-in is fresh
 * and strong enough, else the RFC 9470 challenge naming what is missing. The
 * two conditions are asked separately, so that the challenge names both
 * when both fail (one session_require call raises for the first only).
 */
async function requireStepUp(token, user) {
  const fresh = await meets(token, { maxAuthAgeSeconds: MAX_AUTH_AGE });
  const strong = await meets(token, { minAuthLevel: STEP_UP_LEVEL });
  if (fresh && strong) return;
  const missing = {};
  if (!fresh) missing.maxAge = MAX_AUTH_AGE;
  if (!strong) missing.acrValues = ACR_FOR_LEVEL[STEP_UP_LEVEL];
  // Demo only: the code the demo's authenticator app would show now.
  throw insufficientUserAuthentication(missing, strong ? {} : { demo_code: users.demoCode(user) });
}

async function changeEmail(req) {
  const { token, user } = await authenticate(req);
  const email = users.cleanEmail(stringField(await readJsonObject(req), 'email'));
  if (email === null) throw new HttpError(400, 'invalid_request', { detail: 'not an email address' });
  await requireStepUp(token, user);
  if (!users.changeEmail(user, email)) throw new HttpError(409, 'email_taken');
  log.info(`email changed user=${user.id}`);
  return reply(200, { email });
}

/**
 * The user proved it again: {password} (a fresh sign-in) or {code} (the
 * second factor, level 2). Rotates the pair at once; the page retries the
 * sensitive call with the new access token.
 */
async function reauthenticate(req) {
  const { token, user } = await authenticate(req);
  const body = await readJsonObject(req);
  let ok;
  let step = null;
  if (body.password !== undefined) {
    ok = await users.checkPassword(user, stringField(body, 'password', 1024));
  } else {
    step = users.totpStep(user, stringField(body, 'code', 16));
    ok = step !== null;
  }
  if (!ok) throw new HttpError(401, 'invalid_credentials', { detail: 'wrong password or code' });
  // SA003 here: the token was superseded by another tab's refresh in the
  // meantime (only the current pair may step up): the page refreshes and
  // retries, with the same code, which is marked used only below.
  const level = step === null ? null : STEP_UP_LEVEL;
  const s = await sessions.reauthenticate(token, level);
  if (step !== null) users.useTotpStep(user, step);
  log.info(`reauthenticated session=${s.session_id} level=${level || 'same'}`);
  return pairReply(req, s);
}

const ROUTES = {
  '/api/auth/login': { POST: login },
  [cookies.REFRESH_PATH]: { POST: refresh },
  '/api/auth/logout': { POST: logout },
  '/api/auth/logout-everywhere': { POST: logoutEverywhere },
  '/api/auth/reauthenticate': { POST: reauthenticate },
  '/api/me': { GET: me },
  '/api/account/email': { POST: changeEmail },
};

module.exports = { ROUTES };
