'use strict';
// The access token in the Authorization header (RFC 6750), and the
// WWW-Authenticate challenges of a 401: RFC 6750's invalid_request and
// invalid_token, RFC 9470's insufficient_user_authentication (step-up).

const { HttpError } = require('./http');

const REALM = 'pg_session_auth spa example';
// RFC 6750 section 2.1: credentials = "Bearer" 1*SP b64token
const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;
// The extension's tokens have 78 characters; anything much longer is not
// one of them, and is answered without a database round trip.
const MAX_TOKEN_LENGTH = 256;

/** The WWW-Authenticate value: Bearer realm="...", then the given params. */
function challenge(params = {}) {
  const parts = [`realm="${REALM}"`];
  for (const [name, value] of Object.entries(params)) {
    // max_age is a number (RFC 9470); every other value is a quoted string.
    parts.push(typeof value === 'number' ? `${name}=${value}` : `${name}="${value}"`);
  }
  return `Bearer ${parts.join(', ')}`;
}

/** No credentials (or another scheme): a 401 with no error code (RFC 6750 section 3.1). */
function missingToken() {
  return new HttpError(401, 'unauthorized', {
    detail: 'send Authorization: Bearer <access token>',
    headers: { 'WWW-Authenticate': challenge() },
  });
}

/** A token that is not ok: status is the extension's word (invalid, expired, revoked). */
function invalidToken(status) {
  return new HttpError(401, 'invalid_token', {
    detail: status,
    headers: { 'WWW-Authenticate': challenge({ error: 'invalid_token', error_description: status }) },
  });
}

/** RFC 9470: a fresher login (maxAge, seconds) and/or a stronger one (acrValues). */
function insufficientUserAuthentication({ maxAge, acrValues }, body = {}) {
  const params = { error: 'insufficient_user_authentication' };
  if (maxAge !== undefined) params.max_age = maxAge;
  if (acrValues !== undefined) params.acr_values = acrValues;
  params.error_description = maxAge !== undefined ? 'a more recent sign-in is required' : 'a second factor is required';
  const error = new HttpError(401, 'insufficient_user_authentication', {
    headers: { 'WWW-Authenticate': challenge(params) },
  });
  Object.assign(error.body, body);
  return error;
}

/**
 * The bearer token of the request, or an HttpError: 401 without an error
 * code when there is none, 400 invalid_request when the header is not
 * `Bearer <b64token>`, 401 invalid_token when it is far too long to be ours.
 */
function bearerToken(req) {
  const header = req.headers.authorization;
  if (header === undefined) throw missingToken();
  const space = header.indexOf(' ');
  const scheme = space < 0 ? header : header.slice(0, space);
  if (scheme.toLowerCase() !== 'bearer') throw missingToken();
  const token = space < 0 ? '' : header.slice(space + 1).replace(/^ +/, '');
  if (!B64TOKEN.test(token)) {
    throw new HttpError(400, 'invalid_request', {
      detail: 'the Authorization header is not "Bearer <token>"',
      headers: { 'WWW-Authenticate': challenge({ error: 'invalid_request' }) },
    });
  }
  if (token.length > MAX_TOKEN_LENGTH) throw invalidToken('invalid');
  return token;
}

module.exports = { bearerToken, missingToken, invalidToken, insufficientUserAuthentication };
