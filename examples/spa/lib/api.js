'use strict';
// The JSON API. Each handler takes the request and returns reply(...) or
// throws an HttpError; server.js writes either.
//
//   POST /api/auth/login              session_issue            (cookie endpoint: CSRF guard)
//   POST /api/auth/refresh            session_refresh          (cookie endpoint: CSRF guard)
//   POST /api/auth/logout             session_revoke           (cookie and bearer: CSRF guard)
//   POST /api/auth/logout-everywhere  session_revoke_user      (bearer)
//   POST /api/auth/reauthenticate     session_reauthenticate   (bearer)
//   GET  /api/me                      session_validate         (bearer)
//   POST /api/account/email           session_require: fresh sign-in, level 2 (bearer)
//
// The access token travels in the Authorization header and the page keeps it
// in memory; the refresh token is a cookie that only the /api/auth/
// endpoints see (refresh and logout use it). Bearer endpoints need no CSRF
// guard: a browser never adds that header by itself.
//
// Every 401 carries a WWW-Authenticate challenge (RFC 9110 section 15.5.2)
// and is about the bearer token; a refused cookie, password or code is a 400
// invalid_grant (RFC 6749 section 5.2), and too many wrong ones a 429.

const { HttpError, invalidGrant, reply, readJsonObject, stringField } = require('./http');
const { bearerToken, missingToken, invalidToken, insufficientUserAuthentication } = require('./bearer');
const attempts = require('./attempts');
const cookies = require('./cookies');
const sessions = require('./sessions');
const users = require('./users');
const log = require('./log');

const MAX_AUTH_AGE = Number(process.env.SPA_MAX_AUTH_AGE || 60); // seconds
if (!(MAX_AUTH_AGE > 0)) throw new Error('SPA_MAX_AUTH_AGE must be a number of seconds');
// Demo only (examples/spa/run and test set it): the step-up challenge's body
// carries the current TOTP code, which would hand the second factor to
// whoever holds an access token. Off unless SPA_DEMO_CODE=1.
const DEMO_CODE = process.env.SPA_DEMO_CODE === '1';
const STEP_UP_LEVEL = 2;
// RFC 9470's acr_values for the extension's auth_level (the NIST assurance levels).
const ACR_FOR_LEVEL = { 2: 'aal2' };

/** A new pair: the access token in the body, the refresh token in its cookie. */
function pairReply(s, extra = {}) {
  return reply(
    200,
    { access_token: s.access_token, expires_at: s.access_expires_at, session_id: s.session_id, ...extra },
    { 'Set-Cookie': cookies.refreshCookie(s.refresh_token, s.refresh_expires_at) },
  );
}

/** The caller's session from its bearer token, or a 401 (RFC 6750). */
async function authenticate(req) {
  const token = bearerToken(req);
  const session = await sessions.validate(token);
  // not_replayed happens on a hot standby only, for a token newer than its
  // replay: never a 401 (the token is fine). An application that validates
  // on replicas asks the primary again; this one has no standby: 503.
  if (session.status === 'not_replayed') throw sessions.notReplayed();
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
  if (!(await users.checkPassword(user, password))) throw invalidGrant('wrong email or password');
  const device = { user_agent: String(req.headers['user-agent'] || '').slice(0, 200), ip: req.socket.remoteAddress };
  const s = await sessions.issue(user.id, device, 1);
  log.info(`login user=${user.id} session=${s.session_id}`);
  return pairReply(s);
}

async function refresh(req) {
  cookies.requirePageRequest(req);
  const token = cookies.refreshTokenOf(req);
  if (token === null) throw new HttpError(400, 'invalid_request', { description: 'no_refresh_cookie' });
  const r = await sessions.refresh(token);
  if (r.status !== 'ok') {
    // The cookie is left as it is: its token is dead server-side whatever
    // happens to it, so every tab of this browser that presents it hears the
    // reason from the extension. (Clearing it on `expired` could even sign
    // out a tab whose late retry lost to another tab that set the next one.)
    log.warn(`refresh refused: ${r.status}`);
    throw invalidGrant(r.status);
  }
  log.info(`refresh session=${r.session_id}`);
  return pairReply(r);
}

/**
 * Logout with every token the request has: the tab's access token, which
 * may be stale (another tab's refreshes superseded it, and once its
 * blacklist entry is purged it identifies nothing), and the refresh cookie,
 * which every tab shares and holds the current refresh token.
 * session_revoke takes either kind, even an expired one. When neither
 * revoked anything, the session is over already if the access token says
 * `revoked` or `expired` (a live session's token would have revoked it);
 * otherwise nothing here can tell, and the answer says so instead of
 * "signed out".
 */
async function logout(req) {
  cookies.requirePageRequest(req);
  const access = req.headers.authorization === undefined ? null : bearerToken(req);
  const refreshToken = cookies.refreshTokenOf(req);
  if (access === null && refreshToken === null) throw missingToken();
  let revoked = false;
  for (const token of [access, refreshToken]) {
    if (token !== null && (await sessions.revoke(token))) revoked = true;
  }
  const cleared = { 'Set-Cookie': cookies.clearedRefreshCookie() };
  if (revoked || (access !== null && (await sessionIsOver(access)))) {
    log.info(`logout revoked=${revoked}`);
    return reply(200, { revoked }, cleared);
  }
  log.warn('logout: no token of the request identifies its session');
  throw new HttpError(409, 'logout_unconfirmed', {
    detail: 'no token of this request identifies a live session: if it is still signed in elsewhere, log out there',
    headers: cleared,
  });
}

/** True when an access token that revoked nothing belongs to a session that ended. */
async function sessionIsOver(access) {
  const { status } = await sessions.validate(access);
  return status === 'revoked' || status === 'expired';
}

async function logoutEverywhere(req) {
  const { session } = await authenticate(req);
  const n = await sessions.revokeUser(session.user_id);
  log.info(`logout everywhere user=${session.user_id} sessions=${n}`);
  return reply(200, { sessions: n }, { 'Set-Cookie': cookies.clearedRefreshCookie() });
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
  // Demo only (SPA_DEMO_CODE=1): the code the demo's authenticator app would show now.
  throw insufficientUserAuthentication(missing, DEMO_CODE && !strong ? { demo_code: users.demoCode(user) } : {});
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
 * sensitive call with the new access token. At most attempts.MAX_FAILURES
 * wrong answers a minute per session, then 429.
 */
async function reauthenticate(req) {
  const { token, session, user } = await authenticate(req);
  const body = await readJsonObject(req);
  const wait = attempts.retryAfterSeconds(session.session_id);
  if (wait > 0) {
    const headers = { 'Retry-After': String(wait) };
    throw new HttpError(429, 'too_many_attempts', { detail: 'too many wrong answers', headers });
  }
  if (body.password !== undefined) {
    if (!(await users.checkPassword(user, stringField(body, 'password', 1024)))) throw wrongAnswer(session);
    return stepUp(token, null);
  }
  const step = users.claimTotpStep(user, stringField(body, 'code', 16));
  if (step === null) throw wrongAnswer(session);
  // SA003 here: the token was superseded by another tab's refresh in the
  // meantime (only the current pair may step up): the page refreshes and
  // retries, with the same code, which the failure released.
  let answer;
  try {
    answer = await stepUp(token, STEP_UP_LEVEL);
  } catch (err) {
    users.releaseTotpStep(user, step);
    throw err;
  }
  users.useTotpStep(user, step);
  return answer;
}

function wrongAnswer(session) {
  attempts.recordFailure(session.session_id);
  return invalidGrant('wrong password or code');
}

async function stepUp(token, level) {
  const s = await sessions.reauthenticate(token, level);
  log.info(`reauthenticated session=${s.session_id} level=${level || 'same'}`);
  return pairReply(s);
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
