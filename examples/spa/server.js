#!/usr/bin/env node
'use strict';
// A JSON API and a single-page front end on pg_session_auth, on Node's own
// http server and node-postgres (lib/api.js lists the endpoints). Every
// answer is JSON or one of the page's three files; bad input gets a clean
// 4xx, a database that cannot be reached a 503, and an unexpected error a
// 500 with no detail: no answer ever carries a stack trace, and no log line
// a token.
//
//   node server.js [--host 127.0.0.1] [--port 8000]
//
// Environment: PGHOST, PGPORT, PGUSER, PGDATABASE (the app's database role),
// SPA_MAX_AUTH_AGE (seconds a sign-in stays fresh enough for the sensitive
// endpoint; 60), SPA_STATEMENT_TIMEOUT_MS (the server-side timeout of every
// database call; 3000), SPA_COOKIE_SECURE (1, the default: the refresh
// cookie is Secure; 0 for plain http), SPA_DEMO_CODE (1: the step-up
// challenge shows the current TOTP code; off by default). examples/spa/run
// starts it with a throwaway cluster, plain http and the demo code.

const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { HttpError, sendJson, sendStatic } = require('./lib/http');
const { ROUTES } = require('./lib/api');
const sessions = require('./lib/sessions');
const log = require('./lib/log');

const PUBLIC = path.join(__dirname, 'public');
const STATIC = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/style.css': { file: 'style.css', type: 'text/css; charset=utf-8' },
};
for (const entry of Object.values(STATIC)) entry.content = fs.readFileSync(path.join(PUBLIC, entry.file));

function parseArgs(argv) {
  const args = { host: '127.0.0.1', port: 8000 };
  for (let i = 0; i < argv.length; i += 2) {
    const [name, value] = [argv[i], argv[i + 1]];
    if (name === '--host' && value) args.host = value;
    else if (name === '--port' && /^\d+$/.test(value || '')) args.port = Number(value);
    else throw new Error('usage: node server.js [--host 127.0.0.1] [--port 8000]');
  }
  return args;
}

/** The handler for the request, or an HttpError (404, 405). */
function route(method, pathname) {
  const methods = ROUTES[pathname] || (STATIC[pathname] && { GET: 'static' });
  if (!methods) throw new HttpError(404, 'not_found');
  const handler = methods[method];
  if (!handler) throw new HttpError(405, 'method_not_allowed', { headers: { Allow: Object.keys(methods).join(', ') } });
  return handler;
}

/** The answer for anything a handler threw: an HttpError as it is, else mapped or a bare 500. */
function errorAnswer(err, name) {
  if (err instanceof HttpError) return err;
  const mapped = sessions.httpErrorFor(err);
  if (mapped) return mapped;
  // A bug: the stack goes to the operator's log (it holds no token: tokens
  // are bind parameters and never part of a message), never to the client.
  log.error(`${name} failed: ${sessions.describe(err)}\n${err.stack}`);
  return new HttpError(500, 'internal_error');
}

async function handle(req, res) {
  // The log names the route, not req.url, whose query string could carry anything.
  const pathname = req.url.split('?')[0];
  let name = '(no route)';
  let status;
  try {
    const handler = route(req.method, pathname);
    name = pathname;
    if (handler === 'static') {
      sendStatic(res, STATIC[pathname]);
      status = 200;
    } else {
      const answer = await handler(req);
      sendJson(res, answer.status, answer.body, answer.headers);
      status = answer.status;
    }
  } catch (err) {
    const answer = errorAnswer(err, name);
    if (!res.headersSent) sendJson(res, answer.status, answer.body, answer.headers);
    status = answer.status;
  }
  log.info(`${req.method} ${name} ${status}`);
}

// What Node's parser refuses before any handler runs (a malformed request
// line or header, headers over maxHeaderSize, a timeout): a short JSON
// answer on the raw socket, then close.
function onClientError(err, socket) {
  const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
  log.warn(`refused a malformed request: ${err.code || 'no code'} (${status})`);
  if (!socket.writable || err.code === 'ECONNRESET') {
    socket.destroy();
    return;
  }
  const body = JSON.stringify({ error: http.STATUS_CODES[status].toLowerCase().replace(/ /g, '_') });
  socket.end(
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Type: application/json\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}

function main() {
  const { host, port } = parseArgs(process.argv.slice(2));
  const options = { maxHeaderSize: 8192, requestTimeout: 15000, headersTimeout: 10000 };
  const server = http.createServer(options, (req, res) =>
    handle(req, res).catch((err) => {
      // Only writing the answer itself can fail here (the client went away).
      log.warn(`could not answer: ${err.code || err.message}`);
      res.destroy();
    }),
  );
  server.on('clientError', onClientError);
  server.listen(port, host, () => log.info(`listening on http://${host}:${port}`));
  const stop = () => {
    log.info('stopping');
    server.close();
    server.closeAllConnections();
    sessions.close().finally(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
