'use strict';
// Demo stand-ins for an application's own user store: two fixed users whose
// passwords are hashed with scrypt at start-up (random salt, 16 MiB, checked
// in constant time; an unknown email costs the same scrypt), and a real
// RFC 6238 TOTP second factor with one fixed demo secret (base32
// JBSWY3DPEHPK3PXP), each code accepted once. The plaintext passwords are
// here because it is a demo; a real application keeps its users, and a TOTP
// secret per user, in its own tables.

const crypto = require('node:crypto');
const { promisify } = require('node:util');

const scryptAsync = promisify(crypto.scrypt);
const SCRYPT = { N: 2 ** 14, r: 8, p: 1 }; // 16 MiB: what makes a stolen hash slow to guess
const KEY_LENGTH = 32;

const DEMO_USERS = [
  // user_id, email, password (demo only)
  ['alice', 'alice@example.com', 'correct horse battery staple'],
  ['bob', 'bob@example.com', 'hunter2 is not a password'],
];
const DEMO_TOTP_SECRET = Buffer.from('Hello!\xde\xad\xbe\xef', 'latin1');

function makeUser([id, email, password]) {
  const salt = crypto.randomBytes(16);
  const hash = crypto.scryptSync(password, salt, KEY_LENGTH, SCRYPT);
  return { id, email, salt, hash, totpSecret: DEMO_TOTP_SECRET, lastTotpStep: -1, pendingTotpSteps: new Set() };
}

const USERS = new Map(DEMO_USERS.map((u) => [u[0], makeUser(u)]));
const DUMMY_SALT = crypto.randomBytes(16);

function byId(id) {
  return USERS.get(id) || null;
}

function byEmail(email) {
  const wanted = email.trim().toLowerCase();
  for (const user of USERS.values()) if (user.email === wanted) return user;
  return null;
}

/** Constant-time password check; an unknown user costs the same scrypt. */
async function checkPassword(user, password) {
  const hash = await scryptAsync(password, user ? user.salt : DUMMY_SALT, KEY_LENGTH, SCRYPT);
  return user !== null && crypto.timingSafeEqual(hash, user.hash);
}

function totp(secret, step) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(step));
  const mac = crypto.createHmac('sha1', secret).update(counter).digest();
  const offset = mac[mac.length - 1] & 0x0f;
  return String((mac.readUInt32BE(offset) & 0x7fffffff) % 1e6).padStart(6, '0');
}

const currentStep = () => Math.floor(Date.now() / 30000);

/**
 * Claims the 30 s step whose code this is (the current one or a neighbour):
 * the step, now pending, or null when the code is wrong, its step was used
 * already or another request holds it. The claim is taken here, before the
 * caller's first await, so that two requests with one code cannot both get
 * past this check. The caller then either confirms it (useTotpStep: the
 * step-up went through) or releases it (releaseTotpStep: it did not, and a
 * call retried after a token race can present the same code again).
 */
function claimTotpStep(user, code) {
  const now = currentStep();
  const given = Buffer.from(code.trim());
  for (const step of [now - 1, now, now + 1]) {
    const expected = Buffer.from(totp(user.totpSecret, step));
    if (given.length === expected.length && crypto.timingSafeEqual(given, expected)) {
      if (step <= user.lastTotpStep || user.pendingTotpSteps.has(step)) return null;
      user.pendingTotpSteps.add(step);
      return step;
    }
  }
  return null;
}

function useTotpStep(user, step) {
  user.pendingTotpSteps.delete(step);
  user.lastTotpStep = Math.max(user.lastTotpStep, step);
}

function releaseTotpStep(user, step) {
  user.pendingTotpSteps.delete(step);
}

/** Demo only: what an authenticator app with the demo secret shows now. */
function demoCode(user) {
  return totp(user.totpSecret, currentStep());
}

/** A plausible email address, lower-cased, or null. */
function cleanEmail(value) {
  const email = value.trim().toLowerCase();
  const ok = email.length >= 3 && email.length <= 254 && email.split('@').length === 2 && !/\s/.test(email);
  return ok ? email : null;
}

/** False when another user has the address already. */
function changeEmail(user, email) {
  for (const other of USERS.values()) if (other !== user && other.email === email) return false;
  user.email = email;
  return true;
}

module.exports = {
  byId,
  byEmail,
  checkPassword,
  claimTotpStep,
  useTotpStep,
  releaseTotpStep,
  demoCode,
  cleanEmail,
  changeEmail,
};
