'use strict';
// The refresh token's cookie, and the guard of the endpoints that a cookie
// authenticates (login, refresh, logout): the browser sends a cookie by
// itself, so these endpoints must tell the page's own requests from a
// forged one.
//
// The cookie is HttpOnly (no script reads it: an XSS cannot steal it),
// SameSite=Strict (no other site's request carries it) and scoped to
// /api/auth/ (the refresh and logout endpoints need it; /api/me and every
// other request never carry it). It is Secure, and named
// __Secure-sa_refresh (a prefix the browser enforces), unless the
// configuration says this server is reached over plain http:
// SPA_COOKIE_SECURE=0, which examples/spa/run and examples/spa/test set for
// http://127.0.0.1 (a browser would drop a Secure cookie set over http).
// The request's Host header decides nothing: a client chooses it.

const { HttpError } = require('./http');

const REFRESH_PATH = '/api/auth/refresh';
const COOKIE_PATH = '/api/auth/';
const CSRF_HEADER = 'x-csrf-guard';

function secureFromEnvironment(value = '1') {
  if (value !== '0' && value !== '1') throw new Error('SPA_COOKIE_SECURE must be 1 (the default) or 0 (plain http)');
  return value === '1';
}

const SECURE = secureFromEnvironment(process.env.SPA_COOKIE_SECURE);
const COOKIE_NAME = SECURE ? '__Secure-sa_refresh' : 'sa_refresh';
const ATTRIBUTES = `Path=${COOKIE_PATH}; HttpOnly${SECURE ? '; Secure' : ''}; SameSite=Strict`;

/** Set-Cookie for a refresh token that lives until the session's refresh deadline. */
function refreshCookie(token, expiresAt) {
  return `${COOKIE_NAME}=${token}; Expires=${expiresAt.toUTCString()}; ${ATTRIBUTES}`;
}

/** Set-Cookie that removes the refresh cookie. */
function clearedRefreshCookie() {
  return `${COOKIE_NAME}=; Max-Age=0; ${ATTRIBUTES}`;
}

/** The refresh cookie's value, or null without one. Any value goes to the
 * extension as it is: it answers `invalid` for anything it did not issue. */
function refreshTokenOf(req) {
  for (const pair of (req.headers.cookie || '').split(';')) {
    const eq = pair.indexOf('=');
    if (eq > 0 && pair.slice(0, eq).trim() === COOKIE_NAME) {
      return pair.slice(eq + 1).trim() || null;
    }
  }
  return null;
}

/**
 * Refuses a request to a cookie-authenticated endpoint that the page did not
 * make itself: it must carry the custom header (which another site's page
 * cannot add without a CORS preflight, and this server answers none), and
 * what the browser says about its origin must be this origin.
 */
function requirePageRequest(req) {
  if (req.headers[CSRF_HEADER] !== '1') {
    throw new HttpError(403, 'csrf', { detail: 'the X-CSRF-Guard: 1 header is missing' });
  }
  const site = req.headers['sec-fetch-site'];
  if (site !== undefined && site !== 'same-origin') {
    throw new HttpError(403, 'csrf', { detail: 'not a same-origin request' });
  }
  const origin = req.headers.origin;
  if (origin !== undefined && !sameHost(origin, req.headers.host)) {
    throw new HttpError(403, 'csrf', { detail: 'a foreign Origin' });
  }
}

function sameHost(origin, host) {
  try {
    return new URL(origin).host === host;
  } catch {
    return false;
  }
}

module.exports = { REFRESH_PATH, refreshCookie, clearedRefreshCookie, refreshTokenOf, requirePageRequest };
