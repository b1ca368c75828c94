// The single-page front end: plain JavaScript, no build step.
//
// The access token lives in this tab's memory only (no localStorage, no
// cookie: a reload forgets it), and travels in the Authorization header.
// The refresh token is an HttpOnly cookie that no script sees and that only
// the /api/auth/ endpoints receive (refresh, logout). When an API call answers 401
// invalid_token (expired; or revoked, because another tab's refresh
// superseded this tab's pair or the session ended), the tab refreshes once,
// whatever number of calls got that 401 at the same moment (a single-flight
// promise), and sends them again. The refresh cookie decides: a new pair, or
// the session is over and the tab shows the login view. Two tabs refreshing
// at the same moment present the same cookie and get the very same pair (the
// extension's refresh_grace), so neither logs the other out. For the same
// reason a refresh that got no answer (the network, a 503) is retried with
// the same cookie, soon enough to fall inside that window: had the lost
// attempt rotated the pair, the retry gets that pair again; presented after
// the window, the superseded cookie would be taken for a stolen one.
(() => {
  'use strict';

  const CSRF = { 'X-CSRF-Guard': '1' }; // the cookie endpoints' guard (lib/cookies.js)
  const MESSAGES = {
    logged_out: 'You are signed out.',
    logged_out_everywhere: 'You are signed out on every device.',
    revoked: 'This session was ended (signed out on another tab or device, or ended because an old sign-in token was used again). Please sign in again.',
    expired: 'Your session expired. Please sign in again.',
    reuse_detected: 'An old sign-in token of this session was used again, so the session was ended on every device that had it. Please sign in again.',
    // The refresh cookie is gone while this tab was signed in: another tab of
    // this browser logged out (which clears the cookie every tab shares).
    no_refresh_cookie: 'You were signed out in another tab.',
    // Logout found no token of this tab that still identifies the session
    // (this tab's are too old, and the cookie is gone): it may be alive.
    logout_unconfirmed: 'This tab could not confirm that you are signed out: its sign-in is too old to identify the session, which may still be active in another tab or on another device. Sign in and use "Log out everywhere" to be sure.',
  };
  // A refresh without an answer is tried again after these delays (ms): both
  // retries land well inside session_auth.refresh_grace (10 s by default)
  // of a rotation the lost attempt may have made, however long (up to the
  // server's query timeout) that attempt waited.
  const REFRESH_RETRY_DELAYS_MS = [300, 2500];

  let accessToken = null; // this tab's, in memory only
  let refreshing = null; // the refresh in flight, shared by every call that needs it
  let signedOut = null; // set once a refresh said the session is over; cleared by a sign-in

  class SignedOut extends Error {
    constructor(reason) {
      super(`signed out: ${reason}`);
      this.reason = reason;
    }
  }
  class Unavailable extends Error {}
  class Cancelled extends Error {}

  const $ = (id) => document.getElementById(id);

  async function jsonOf(response) {
    try {
      return await response.json();
    } catch {
      return {};
    }
  }

  // A network failure (the server is gone) is an outage, not a logout.
  function request(path, init) {
    return fetch(path, init).catch(() => {
      throw new Unavailable();
    });
  }

  /** The parameters of a `WWW-Authenticate: Bearer k="v", k=v` challenge. */
  function challengeOf(response) {
    const params = {};
    const header = response.headers.get('WWW-Authenticate') || '';
    for (const m of header.matchAll(/([a-z_]+)=(?:"([^"]*)"|([^\s,]*))/g)) params[m[1]] = m[2] ?? m[3];
    return params;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  /** One refresh at a time in this tab: concurrent callers share the one in flight. */
  function refreshOnce() {
    if (!refreshing) {
      refreshing = refreshWithRetries().finally(() => {
        refreshing = null;
      });
    }
    return refreshing;
  }

  /** A refresh, tried again (with the same cookie) while it gets no answer. */
  async function refreshWithRetries() {
    for (const delay of REFRESH_RETRY_DELAYS_MS) {
      try {
        return await refreshAttempt();
      } catch (err) {
        if (!(err instanceof Unavailable)) throw err;
        await sleep(delay);
      }
    }
    return refreshAttempt();
  }

  async function refreshAttempt() {
    const r = await request('/api/auth/refresh', { method: 'POST', headers: CSRF });
    const body = await jsonOf(r);
    if (r.status >= 500) throw new Unavailable();
    if (r.ok && body.access_token) {
      accessToken = body.access_token;
      return;
    }
    if (r.ok) throw new Unavailable(); // an answer cut short: as good as none
    // 400 invalid_grant (the extension's word in error_description) or
    // invalid_request (no cookie): the session is over for this browser.
    accessToken = null;
    signedOut = new SignedOut(body.error_description || body.error || 'invalid');
    throw signedOut; // every caller waiting for this refresh ends in the login view
  }

  function send(method, path, body, token) {
    const headers = { Authorization: `Bearer ${token}` };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    return request(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  }

  /**
   * An API call with this tab's access token; on 401 invalid_token, one
   * refresh (only the first call to see its token refused starts it; the
   * others wait for it, or find it done) and the call again.
   */
  async function api(method, path, body) {
    for (let attempt = 1; attempt <= 3; attempt++) {
      if (signedOut) throw signedOut;
      if (!accessToken) await refreshOnce();
      const sent = accessToken;
      const r = await send(method, path, body, sent);
      if (r.status === 503) throw new Unavailable();
      if (r.status !== 401 || challengeOf(r).error !== 'invalid_token') return r;
      await jsonOf(r); // this answer is dropped: read it to the end all the same
      if (accessToken === sent) await refreshOnce();
    }
    throw new SignedOut('invalid');
  }

  // --- views ------------------------------------------------------------------

  function show(view) {
    for (const name of ['loading', 'login', 'app']) $(`view-${name}`).hidden = name !== view;
  }

  function setStatus(text) {
    $('status').textContent = text;
    $('status').hidden = !text;
  }

  function showText(id, text) {
    $(id).textContent = text || '';
    $(id).hidden = !text;
  }

  function showLogin(reason) {
    accessToken = null;
    $('step-up-form').hidden = true;
    showText('message', MESSAGES[reason]);
    show('login');
  }

  async function showHome() {
    const r = await api('GET', '/api/me');
    if (!r.ok) throw new Error(`GET /api/me answered ${r.status}`);
    const me = await r.json();
    $('email').textContent = me.email;
    $('user-id').textContent = me.user_id;
    $('session-id').textContent = me.session_id;
    $('auth-level').textContent = me.auth_level;
    $('access-expires').textContent = new Date(me.expires_at).toLocaleTimeString();
    show('app');
  }

  /** What an action's failure does to the page. */
  function failed(err) {
    if (err instanceof SignedOut) {
      setStatus('');
      showLogin(err.reason);
    } else if (err instanceof Unavailable) {
      setStatus('The service is unavailable right now. You are still signed in: try again in a moment.');
    } else if (!(err instanceof Cancelled)) {
      setStatus('Something went wrong.');
      console.error(err);
    }
  }

  /** An event handler running action: the status line is cleared when it succeeds. */
  const action = (fn) => (event) => {
    if (event && event.type === 'submit') event.preventDefault();
    fn().then(() => setStatus(''), failed);
  };

  // --- actions ------------------------------------------------------------------

  async function logIn() {
    const form = new FormData($('login-form'));
    const r = await request('/api/auth/login', {
      method: 'POST',
      headers: { ...CSRF, 'Content-Type': 'application/json' },
      body: JSON.stringify({ email: form.get('email'), password: form.get('password') }),
    });
    if (r.status === 503) throw new Unavailable();
    const body = await jsonOf(r);
    if (!r.ok) {
      showText('login-error', 'Wrong email or password.');
      return;
    }
    accessToken = body.access_token;
    signedOut = null;
    $('login-form').reset();
    showText('login-error', '');
    await showHome();
  }

  /** This tab is signed out: no call goes out until the next sign-in. */
  function endSession(reason) {
    signedOut = new SignedOut(reason);
    showLogin(reason);
  }

  async function logOut() {
    // The server revokes with this tab's access token (any token of the
    // session, even an expired one) and with the refresh cookie (the current
    // one, whatever this tab missed); a cookie endpoint, hence the guard.
    const headers = { ...CSRF };
    if (accessToken) headers.Authorization = `Bearer ${accessToken}`;
    const r = await request('/api/auth/logout', { method: 'POST', headers });
    await jsonOf(r);
    if (r.status >= 500) throw new Unavailable();
    if (r.status === 409) {
      endSession('logout_unconfirmed');
      return;
    }
    if (!r.ok) throw new Error(`logout answered ${r.status}`);
    endSession('logged_out');
  }

  async function logOutEverywhere() {
    const r = await api('POST', '/api/auth/logout-everywhere');
    if (!r.ok) throw new Error(`logout everywhere answered ${r.status}`);
    endSession('logged_out_everywhere');
  }

  async function burst() {
    $('burst-result').textContent = '…';
    const calls = Array.from({ length: 10 }, (_, i) => api('GET', `/api/me?call=${i}`));
    const results = await Promise.allSettled(calls);
    const ok = results.filter((x) => x.status === 'fulfilled' && x.value.ok).length;
    $('burst-result').textContent = `${ok}/10 ok`;
    const failure = results.find((x) => x.status === 'rejected');
    if (failure) throw failure.reason;
    await showHome();
  }

  /**
   * The sensitive call, behind the step-up: a 401 with an RFC 9470 challenge
   * asks for the password (max_age: the sign-in is too old) or the code
   * (acr_values: a second factor), re-authenticates, and sends it again.
   */
  async function changeEmail() {
    const email = new FormData($('email-form')).get('email');
    showText('email-result', '');
    for (let round = 0; round < 3; round++) {
      const r = await api('POST', '/api/account/email', { email });
      const body = await jsonOf(r);
      if (r.ok) {
        $('email-form').reset();
        showText('email-result', `Your email is now ${body.email}.`);
        await showHome();
        return;
      }
      const challenge = challengeOf(r);
      if (challenge.error !== 'insufficient_user_authentication') {
        showText('email-result', `Not changed: ${body.detail || body.error}.`);
        return;
      }
      await stepUp('max_age' in challenge ? 'password' : 'code', body.demo_code);
    }
  }

  /** Shows the step-up form; resolves once the user re-authenticated. */
  function stepUp(factor, demoCode) {
    const form = $('step-up-form');
    $('step-up-title').textContent =
      factor === 'password' ? 'Enter your password again' : 'Enter your second-factor code';
    $('password-field').hidden = factor !== 'password';
    $('code-field').hidden = factor !== 'code';
    showText('demo-code', demoCode && `Demo only: an authenticator app with the secret JBSWY3DPEHPK3PXP shows ${demoCode} now.`);
    showText('step-up-error', '');
    form.hidden = false;
    form.elements[factor].focus();
    return new Promise((resolve, reject) => {
      form.onsubmit = (event) => {
        event.preventDefault();
        reauthenticate(factor, form.elements[factor].value).then((error) => {
          if (error) {
            showText('step-up-error', error);
            return;
          }
          form.hidden = true;
          form.reset();
          resolve();
        }, (err) => {
          form.hidden = true;
          reject(err);
        });
      };
      $('cancel-step-up').onclick = () => {
        form.hidden = true;
        reject(new Cancelled());
      };
    });
  }

  /** Sends the password or code: null once re-authenticated, else what to tell the user. */
  async function reauthenticate(factor, value) {
    const r = await api('POST', '/api/auth/reauthenticate', { [factor]: value });
    const body = await jsonOf(r);
    if (r.status >= 500) throw new Unavailable();
    if (r.status === 429) return `Too many wrong answers: try again in ${r.headers.get('Retry-After')} s.`;
    if (!r.ok) return factor === 'password' ? 'Wrong password.' : 'Wrong or already used code.';
    // Both tokens rotated: the old pair stopped at once (the cookie too).
    accessToken = body.access_token;
    return null;
  }

  // On load there is no access token in memory: one refresh through the
  // cookie tells whether this browser is signed in.
  async function start() {
    try {
      await refreshOnce();
    } catch (err) {
      if (!(err instanceof SignedOut && err.reason === 'no_refresh_cookie')) throw err;
      showLogin(null); // never signed in here, or signed out: no message
      return;
    }
    await showHome();
  }

  $('login-form').addEventListener('submit', action(logIn));
  $('logout').addEventListener('click', action(logOut));
  $('logout-everywhere').addEventListener('click', action(logOutEverywhere));
  $('burst').addEventListener('click', action(burst));
  $('email-form').addEventListener('submit', action(changeEmail));
  action(start)();
})();
