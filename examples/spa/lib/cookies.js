'use strict';
// The refresh token's cookie, and the guard of the endpoints that a cookie
// authenticates (login, refresh): the browser sends a cookie by itself, so
// these endpoints must tell the page's own requests from a forged one.
//
// The cookie is HttpOnly (no script reads it: an XSS cannot steal it),
// SameSite=Strict (no other site's request carries it) and scoped to the
// refresh path (no other request carries it either). It is Secure, and named
// __Secure-sa_refresh (a prefix the browser enforces), everywhere but on
// plain http to this machine's loopback, where a browser would drop a Secure
// cookie set over http: that is the demo's case only.

const { HttpError } = require('./http');

const REFRESH_PATH = '/api/auth/refresh';
const CSRF_HEADER = 'x-csrf-guard';
const LOOPBACK = new Set(['localhost', '127.0.0.1', '[::1]']);

function hostName(req) {
  try {
    return new URL(`http://${req.headers.host}`).hostname;
  } catch {
    return null;
  }
}

// This server speaks plain http (TLS ends in front of it); any Host but a
// loopback one is reached through such a proxy, over https.
function plainLoopback(req) {
  return LOOPBACK.has(hostName(req));
}

function refreshCookieName(req) {
  return plainLoopback(req) ? 'sa_refresh' : '__Secure-sa_refresh';
}

function attributes(req) {
  const secure = plainLoopback(req) ? '' : '; Secure';
  return `Path=${REFRESH_PATH}; HttpOnly${secure}; SameSite=Strict`;
}

/** Set-Cookie for a refresh token that lives until the session's refresh deadline. */
function refreshCookie(req, token, expiresAt) {
  return `${refreshCookieName(req)}=${token}; Expires=${expiresAt.toUTCString()}; ${attributes(req)}`;
}

/** Set-Cookie that removes the refresh cookie. */
function clearedRefreshCookie(req) {
  return `${refreshCookieName(req)}=; Max-Age=0; ${attributes(req)}`;
}

/** The refresh cookie's value, or null without one. Any value goes to the
 * extension as it is: it answers `invalid` for anything it did not issue. */
function refreshTokenOf(req) {
  const name = refreshCookieName(req);
  for (const pair of (req.headers.cookie || '').split(';')) {
    const eq = pair.indexOf('=');
    if (eq > 0 && pair.slice(0, eq).trim() === name) {
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
