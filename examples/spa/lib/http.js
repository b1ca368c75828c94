'use strict';
// HTTP plumbing for the API: HttpError (the one way a handler answers 4xx or
// 5xx), JSON answers with the security headers, and request bodies that are
// bounded, JSON and an object, or a clean 4xx.

const MAX_BODY_BYTES = 4096; // a login or an email change is far smaller

const SECURITY_HEADERS = {
  'Cache-Control': 'no-store',
  // Scripts and styles from this origin only (no inline code), fetches to it.
  'Content-Security-Policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; " +
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
  'Referrer-Policy': 'same-origin',
  'X-Content-Type-Options': 'nosniff',
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Resource-Policy': 'same-origin',
};

/**
 * An answer other than 2xx: status, a JSON body {error, error_description?,
 * detail?}, headers. error_description is the OAuth 2.0 field (RFC 6749
 * section 5.2) of the answers that follow it (invalidGrant); detail is
 * this API's own.
 */
class HttpError extends Error {
  constructor(status, error, { description, detail, headers = {} } = {}) {
    super(error);
    this.status = status;
    this.body = { error };
    if (description !== undefined) this.body.error_description = description;
    if (detail !== undefined) this.body.detail = detail;
    this.headers = headers;
  }
}

/**
 * A credential that is not good (a refresh token the extension refused, a
 * wrong password or code): 400 invalid_grant, as OAuth 2.0 answers for a
 * dead refresh token or wrong resource owner credentials (RFC 6749 section
 * 5.2). Not a 401: that status means "this request's bearer token", and
 * every 401 of this API carries its WWW-Authenticate challenge (RFC 9110
 * section 15.5.2), which a cookie or a password has no scheme for.
 */
function invalidGrant(description) {
  return new HttpError(400, 'invalid_grant', { description });
}

/** A handler's successful answer: the status, a JSON body, extra headers. */
function reply(status, body, headers = {}) {
  return { status, body, headers };
}

function sendJson(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    ...SECURITY_HEADERS,
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

function sendStatic(res, { type, content }) {
  res.writeHead(200, { ...SECURITY_HEADERS, 'Content-Type': type, 'Content-Length': content.length });
  res.end(content);
}

// A body we stop reading: the answer closes the connection, so the rest of it
// is never read into memory.
function tooLarge() {
  return new HttpError(413, 'body_too_large', {
    detail: `at most ${MAX_BODY_BYTES} bytes`,
    headers: { Connection: 'close' },
  });
}

function readBody(req) {
  const declared = Number(req.headers['content-length']);
  if (declared > MAX_BODY_BYTES) return Promise.reject(tooLarge());
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    const onData = (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        req.off('data', onData);
        req.resume(); // drain, not keep, until the answer closes the connection
        reject(tooLarge());
      } else {
        chunks.push(chunk);
      }
    };
    req.on('data', onData);
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', () => reject(new HttpError(400, 'bad_request', { headers: { Connection: 'close' } })));
  });
}

/** The request's body as a JSON object, or an HttpError (415, 413, 400). */
async function readJsonObject(req) {
  const type = (req.headers['content-type'] || '').split(';')[0].trim().toLowerCase();
  if (type !== 'application/json') {
    throw new HttpError(415, 'unsupported_media_type', { detail: 'send application/json' });
  }
  const raw = await readBody(req);
  let value;
  try {
    value = JSON.parse(raw.toString('utf8'));
  } catch {
    throw new HttpError(400, 'invalid_json');
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new HttpError(400, 'invalid_json', { detail: 'expected a JSON object' });
  }
  return value;
}

/** body[name] as a string of at most maxLength characters, or a 400. */
function stringField(body, name, maxLength = 256) {
  const value = body[name];
  if (typeof value !== 'string' || value.length === 0 || value.length > maxLength) {
    throw new HttpError(400, 'invalid_request', { detail: `${name}: a string of 1 to ${maxLength} characters` });
  }
  return value;
}

module.exports = { HttpError, invalidGrant, reply, sendJson, sendStatic, readJsonObject, stringField };
