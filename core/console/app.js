// The console's shell: the session (an admin token kept in this tab's sessionStorage, never in
// a URL or in storage that outlives the tab), the API client every page uses, login, navigation and the
// connection banner that says when data is stale.
import { h, fill, duration, toast } from './lib.js';
import overview from './overview.js';
import keys from './keys.js';
import usage from './usage.js';
import tokens from './tokens.js';
import config from './config.js';
import sql from './sql.js';
import security from './security.js';

const PAGES = { overview, keys, usage, tokens, config, sql, security };
const REFRESH_MS = 5000;

/** Why the console is on the login page. */
class SessionEnded extends Error {}
/** The gateway could not be reached (network, restart). */
export class Unreachable extends Error {}
/** The admin API answered with an error: `status` and its message. */
export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

const session = {
  get token() { return sessionStorage.getItem('gp.token'); },
  get expires() { return Number(sessionStorage.getItem('gp.expires') || 0); },
  // 'off': the gateway runs without auth on a loopback admin listener.
  get mode() { return sessionStorage.getItem('gp.mode') || 'login'; },
  set(token, expiresIn) {
    sessionStorage.setItem('gp.token', token);
    sessionStorage.setItem('gp.expires', String(Date.now() + expiresIn * 1000));
    sessionStorage.setItem('gp.mode', 'token');
  },
  open() { sessionStorage.removeItem('gp.token'); sessionStorage.setItem('gp.mode', 'off'); },
  clear() { for (const k of ['gp.token', 'gp.expires', 'gp.mode']) sessionStorage.removeItem(k); },
};

/**
 * Calls the admin API. `body` is sent as JSON unless `type` says otherwise; `raw` returns the
 * text. A 401 ends the session (back to login); a failed connection throws Unreachable.
 */
export async function api(method, path, body, { type = 'application/json', raw = false } = {}) {
  const headers = {};
  if (session.token) headers.authorization = `Bearer ${session.token}`;
  let payload;
  if (body !== undefined) {
    headers['content-type'] = type;
    payload = type === 'application/json' ? JSON.stringify(body) : body;
  }
  let res;
  try {
    res = await fetch(path, { method, headers, body: payload, cache: 'no-store', credentials: 'omit' });
  } catch {
    throw new Unreachable('cannot reach the gateway');
  }
  const text = await res.text();
  if (res.status === 401 && session.mode !== 'login') {
    endSession('The gateway refused the session (expired, revoked or signed with an old secret). Log in again.');
    throw new SessionEnded('session ended');
  }
  if (!res.ok) {
    let msg = text;
    try { msg = JSON.parse(text).error.message; } catch { /* not a Google-style body */ }
    throw new ApiError(res.status, msg || `HTTP ${res.status}`);
  }
  if (raw) return { text, headers: res.headers };
  return text ? JSON.parse(text) : {};
}

let current = null; // {name, page, timer}
let expiryTimer = null;
const root = document.getElementById('app');

function endSession(message) {
  session.clear();
  stopPage();
  showLogin(message);
}

/** Logging out revokes the session's token too: a copy of it is worth nothing after. */
async function logOut() {
  try {
    const payload = JSON.parse(atob(session.token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
    if (payload.jti) await api('POST', '/api/tokens/revoke', { jti: payload.jti });
  } catch { /* the token ends with the session here anyway */ }
  endSession('Logged out.');
}

function stopPage() {
  if (!current) return;
  clearInterval(current.timer);
  current.page.unmount?.();
  current = null;
}

async function showLogin(message) {
  clearInterval(expiryTimer);
  const pw = h('input', { type: 'password', autocomplete: 'current-password', required: true, name: 'password' });
  const err = h('p', { class: 'error', role: 'alert', id: 'login-error' }, message || '');
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Log in');
  const form = h('form', { class: 'login', id: 'login-form' },
    h('h1', {}, 'gemini-proxy'), h('p', { class: 'muted' }, 'Operator console'),
    h('label', { for: 'password' }, 'Admin password'), pw, submit, err);
  pw.id = 'password';
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    submit.disabled = true;
    err.textContent = '';
    try {
      const r = await api('POST', '/auth/login', { password: pw.value });
      session.set(r.token, r.expires_in);
      pw.value = '';
      start();
    } catch (x) {
      err.textContent = x instanceof ApiError && x.status === 401 ? 'Wrong password.'
        : x instanceof ApiError && x.status === 429 ? `Locked out: ${x.message}`
        : x instanceof Unreachable ? 'The gateway does not answer. Is it running?'
        : x.message;
      pw.select();
    } finally {
      submit.disabled = false;
    }
  });
  fill(root, h('main', { class: 'login-page' }, form));
  pw.focus();
}

/** Decides between the login page and the console (auth off on loopback needs no login). */
async function boot() {
  if (session.mode === 'token' && session.token && session.expires > Date.now()) return start();
  session.clear();
  try {
    await api('GET', '/api/keys');
    session.open();
    return start();
  } catch (x) {
    if (x instanceof Unreachable) return showLogin('The gateway does not answer. Is it running?');
    return showLogin();
  }
}

function start() {
  if (!location.hash) history.replaceState(null, '', '#/overview');
  renderShell();
  route();
  clearInterval(expiryTimer);
  if (session.mode === 'token') {
    expiryTimer = setInterval(() => {
      const left = (session.expires - Date.now()) / 1000;
      const el = document.getElementById('session-left');
      if (el) el.textContent = `session ends in ${duration(left)}`;
      if (left <= 0) endSession('Your session ended (the token expired). Log in again.');
    }, 1000);
  }
}

function renderShell() {
  const nav = h('nav', { 'aria-label': 'Pages' }, Object.entries(PAGES).map(([name, p]) =>
    h('a', { href: `#/${name}`, id: `nav-${name}` }, p.title)));
  const logout = session.mode === 'off'
    ? h('button', { type: 'button', class: 'link', onclick: () => location.reload() }, 'Reload')
    : h('button', { type: 'button', class: 'link', onclick: logOut }, 'Log out');
  const side = h('div', { class: 'session' },
    session.mode === 'off'
      ? h('span', { class: 'warn', title: 'auth.enabled is false: the admin API answers anyone on this loopback listener' }, 'auth off')
      : h('span', { id: 'session-left', class: 'muted' }),
    logout);
  fill(root,
    h('header', { class: 'top' }, h('a', { class: 'brand', href: '#/overview' }, 'gemini-proxy'), nav, side),
    h('div', { id: 'banner', role: 'alert', hidden: true }),
    h('main', { id: 'page' }));
}

/** Shown while the gateway does not answer; the page is marked stale until it does. */
export function connection(ok, why) {
  const b = document.getElementById('banner');
  const page = document.getElementById('page');
  if (!b || !page) return;
  if (ok) {
    if (!b.hidden) toast('ok', 'The gateway answers again.');
    b.hidden = true;
    page.classList.remove('stale');
    return;
  }
  if (b.hidden) b.dataset.since = new Date().toLocaleTimeString();
  b.hidden = false;
  b.textContent = `${why} (since ${b.dataset.since}); retrying every ${REFRESH_MS / 1000} s. What you see is not live.`;
  page.classList.add('stale');
}

/** Runs a page's refresh and reports what happened to the banner. */
async function refresh() {
  if (!current) return;
  const name = current.name;
  try {
    await current.page.refresh?.();
    if (current && current.name === name) connection(true);
  } catch (x) {
    if (x instanceof SessionEnded) return;
    if (x instanceof Unreachable) connection(false, 'The gateway does not answer');
    else if (x instanceof ApiError && x.status >= 500) connection(false, `The admin API failed: ${x.message}`);
    else connection(false, x.message);
  }
}

function route() {
  const name = (location.hash.match(/^#\/([a-z]+)/) || [])[1];
  const Page = PAGES[name] || PAGES.overview;
  stopPage();
  for (const a of document.querySelectorAll('nav a')) a.setAttribute('aria-current', a.id === `nav-${name}` ? 'page' : 'false');
  const el = document.getElementById('page');
  if (!el) return;
  fill(el, h('h1', {}, Page.title));
  const page = Page.mount(el, { api, refresh: () => refresh() });
  current = { name, page, timer: Page.live ? setInterval(refresh, REFRESH_MS) : null };
  document.title = `${Page.title} · gemini-proxy`;
  refresh();
}

window.addEventListener('hashchange', () => { if (document.getElementById('page')) route(); });
window.addEventListener('unhandledrejection', (e) => {
  if (e.reason instanceof SessionEnded) e.preventDefault();
});
boot();
