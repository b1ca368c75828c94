'use strict';
// pg_session_auth through node-postgres: one function per session_* call,
// every token a bind parameter ($1: the SQL text the server sees, and may
// log, never holds one), and httpErrorFor, which turns what the database
// raised into the HTTP answer of an API (the table in the README).
//
// The connection comes from the standard PG* variables (PGHOST, PGPORT,
// PGUSER, PGDATABASE), as a LOGIN role whose only privilege is
// `GRANT session_auth_client`. Its role settings (ALTER ROLE ... SET
// session_auth.access_ttl) apply when a connection starts: the DBA's policy.

const { Pool, DatabaseError } = require('pg');
const { HttpError } = require('./http');
const { invalidToken } = require('./bearer');
const log = require('./log');

// Two timeouts, the server's the shorter. A call that runs too long is
// cancelled by the server (statement_timeout: rolled back, so a refresh that
// took too long did not rotate anything) and answered 57014 well before
// node-postgres stops waiting (query_timeout, client side only: the
// statement would go on, and could commit a rotation nobody sees). Only an
// answer lost after the commit remains, which the page retries inside the
// grace window (README, "Bad input and outages").
const STATEMENT_TIMEOUT_MS = Number(process.env.SPA_STATEMENT_TIMEOUT_MS || 3000);
if (!(STATEMENT_TIMEOUT_MS > 0)) throw new Error('SPA_STATEMENT_TIMEOUT_MS must be a number of milliseconds');
const QUERY_TIMEOUT_MS = STATEMENT_TIMEOUT_MS + 2000;

const pool = new Pool({
  max: 8,
  connectionTimeoutMillis: 2000, // a database that is down: 503 within 2 s, not a hung request
  statement_timeout: STATEMENT_TIMEOUT_MS,
  query_timeout: QUERY_TIMEOUT_MS,
  idleTimeoutMillis: 30000,
  application_name: 'pg_session_auth spa example',
});
// A pooled connection the server closed (a restart, a shutdown): the pool
// drops it and opens another on the next request. Without a listener, the
// 'error' event would end the process.
pool.on('error', (err) => log.warn(`a pooled database connection was closed: ${describe(err)}`));

function unavailable(detail) {
  return new HttpError(503, 'database_unavailable', { detail, headers: { 'Retry-After': '5' } });
}

/**
 * A token a hot standby has not replayed yet (`not_replayed`, SA006): not
 * the client's fault and no reason to sign anyone out. An application that
 * validates on replicas asks the primary again; this one has a primary
 * only, where it never happens, so it answers 503: retry shortly.
 */
function notReplayed() {
  return new HttpError(503, 'not_replayed', {
    detail: 'the database has not caught up with this token yet: retry',
    headers: { 'Retry-After': '1' },
  });
}

async function row(sql, params) {
  let result;
  try {
    result = await pool.query(sql, params);
  } catch (err) {
    if (err instanceof DatabaseError) throw err; // the server answered: httpErrorFor
    // The server never answered (refused, socket gone, connection lost,
    // timeout). Not the client's fault, and not a logout: 503, retry later.
    log.warn(`database unreachable: ${describe(err)}`);
    throw unavailable('the database cannot be reached');
  }
  return result.rows[0];
}

const PAIR = 'session_id, access_token, access_expires_at, refresh_token, refresh_expires_at';

const issue = (userId, data, authLevel) =>
  row(`SELECT ${PAIR} FROM session_issue($1, $2::jsonb, $3)`, [userId, data, authLevel]);

const validate = (token) =>
  row(
    'SELECT status, session_id, user_id, auth_level, authenticated_at, expires_at FROM session_validate($1)',
    [token],
  );

const refresh = (token) => row(`SELECT status, ${PAIR} FROM session_refresh($1)`, [token]);

const revoke = async (token) => (await row('SELECT session_revoke($1) AS revoked', [token])).revoked;

const revokeUser = async (userId) =>
  (await row('SELECT session_revoke_user($1) AS sessions', [userId])).sessions;

/** session_require: the row, or it raises (SA005: reauthenticate; SA001-SA003: the token). */
const requireSession = (token, { maxAuthAgeSeconds = null, minAuthLevel = null } = {}) =>
  row(
    'SELECT session_id, user_id, auth_level' +
      ' FROM session_require($1, max_auth_age => $2::interval, min_auth_level => $3::int)',
    [token, maxAuthAgeSeconds === null ? null : `${maxAuthAgeSeconds} seconds`, minAuthLevel],
  );

const reauthenticate = (token, authLevel = null) =>
  row(`SELECT ${PAIR} FROM session_reauthenticate($1, $2::int)`, [token, authLevel]);

const close = () => pool.end();

/** The SQLSTATE of an error the server raised, or null (no answer from the server at all). */
function sqlstate(err) {
  return err instanceof DatabaseError ? err.code : null;
}

function describe(err) {
  const code = sqlstate(err) || err.code || 'no code';
  return `${code}: ${err.message}`;
}

const TOKEN_ERRORS = { SA001: 'invalid', SA002: 'expired', SA003: 'revoked' };

/**
 * The HTTP answer for an error the database raised in a session_* call, or
 * null for one an API cannot explain to its client (a bug: the caller
 * answers 500). SA005 is the caller's to turn into its step-up challenge.
 */
function httpErrorFor(err) {
  const code = sqlstate(err);
  if (code === null) return null;
  if (TOKEN_ERRORS[code]) return invalidToken(TOKEN_ERRORS[code]);
  if (code === 'SA006') return notReplayed();
  // Shutting down or starting up (57P01-57P03), connection failures (08),
  // too many connections (53300).
  if (code.startsWith('57P') || code.startsWith('08') || code === '53300') {
    return unavailable('the database is not accepting requests');
  }
  // statement_timeout (57014) or lock_timeout (55P03): the call was
  // cancelled and rolled back, nothing changed; the client may retry.
  if (code === '57014' || code === '55P03') return unavailable('the database did not answer in time');
  // A bad argument (the message names it, never a token).
  if (code === '22023' || code === '22004') return new HttpError(400, 'invalid_request', { detail: err.message });
  return null;
}

module.exports = {
  issue,
  validate,
  refresh,
  revoke,
  revokeUser,
  requireSession,
  reauthenticate,
  close,
  sqlstate,
  describe,
  httpErrorFor,
  notReplayed,
};
