'use strict';
// Failed re-authentications per session: a stolen access token must not be
// a way to guess the user's password or second-factor code. At most
// MAX_FAILURES wrong answers in a WINDOW_MS window counted from the first
// one; then the session's re-authentication answers 429 with Retry-After
// until the window ends, even for the right answer. In memory: one process
// (an application with several keeps the counts in a shared store).

const MAX_FAILURES = 5;
const WINDOW_MS = 60 * 1000;

const failures = new Map(); // session id -> { count, since }

function current(sessionId, now) {
  const entry = failures.get(sessionId);
  return entry && now - entry.since < WINDOW_MS ? entry : null;
}

/** Seconds until this session may try again, or 0 if it may now. */
function retryAfterSeconds(sessionId, now = Date.now()) {
  const entry = current(sessionId, now);
  if (!entry || entry.count < MAX_FAILURES) return 0;
  return Math.ceil((entry.since + WINDOW_MS - now) / 1000);
}

/** Counts one wrong answer; forgets the windows that ended (the map stays small). */
function recordFailure(sessionId, now = Date.now()) {
  for (const [id, entry] of failures) if (now - entry.since >= WINDOW_MS) failures.delete(id);
  const entry = current(sessionId, now) || { count: 0, since: now };
  entry.count += 1;
  failures.set(sessionId, entry);
}

module.exports = { MAX_FAILURES, retryAfterSeconds, recordFailure };
