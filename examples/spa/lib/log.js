'use strict';
// The app's log: one line per event on stdout. Callers pass what they want
// logged, and never a token, a header or a request body: a line names the
// route (not the raw URL, whose query string could carry anything), ids and
// status words.

function line(level, message) {
  process.stdout.write(`${new Date().toISOString()} ${level} ${message}\n`);
}

module.exports = {
  info: (message) => line('INFO', message),
  warn: (message) => line('WARN', message),
  error: (message) => line('ERROR', message),
};
