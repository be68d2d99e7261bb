// Tokens: issue a gateway token (shown once, with a copy button) and revoke one by its jti.
// Issued and revoked tokens are listed from the audit trail when auditing is on.
import { h, fill, table, time, toast, field, confirmDialog } from './lib.js';
import { ApiError } from './app.js';

const list = (s) => s.split(',').map((x) => x.trim()).filter(Boolean);
const int = (v) => (v === '' ? undefined : Number(v));

export default {
  title: 'Tokens',
  live: false,
  mount(el, { api }) {
    const sub = h('input', { required: true, autocomplete: 'off', id: 'token-sub' });
    const role = h('select', { id: 'token-role' }, h('option', { value: 'user' }, 'user'), h('option', { value: 'admin' }, 'admin'));
    const models = h('input', { placeholder: 'gemini-2.5-flash*, gemini-2.5-pro', id: 'token-models', autocomplete: 'off' });
    const ttl = h('input', { value: '30d', id: 'token-ttl', autocomplete: 'off' });
    const tenant = h('input', { id: 'token-tenant', autocomplete: 'off' });
    const rpm = h('input', { type: 'number', min: '1', id: 'token-rpm' });
    const tpm = h('input', { type: 'number', min: '1', id: 'token-tpm' });
    const streams = h('input', { type: 'number', min: '1', id: 'token-streams' });
    const issued = h('div', { id: 'token-issued', 'aria-live': 'polite' });
    const form = h('form', { class: 'grid-form', id: 'issue-token' },
      field('Subject', sub, 'who the token is for (user id)'), field('Role', role),
      field('Models', models, 'comma-separated patterns; empty: any model'),
      field('Lifetime', ttl, 'e.g. 1h, 30d (capped by auth.max_token_ttl)'),
      field('Tenant', tenant, 'resources are shared within a tenant; empty: the subject'),
      field('Requests per minute', rpm), field('Tokens per minute', tpm), field('Concurrent streams', streams),
      h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Issue token')));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const body = { sub: sub.value, role: role.value, ttl: ttl.value, models: list(models.value) };
      if (tenant.value) body.tenant = tenant.value;
      const limits = { rpm: int(rpm.value), tpm: int(tpm.value), concurrent_streams: int(streams.value) };
      if (Object.values(limits).some((v) => v !== undefined)) body.limits = limits;
      try {
        const r = await api('POST', '/api/tokens', body);
        showOnce(issued, r);
        form.reset();
        ttl.value = '30d';
      } catch (x) {
        fill(issued, h('p', { class: 'error', role: 'alert' }, x instanceof ApiError ? `Not issued: ${x.message}` : x.message));
      }
    });

    const jti = h('input', { required: true, autocomplete: 'off', id: 'revoke-jti' });
    const revoke = h('form', { class: 'inline', id: 'revoke-token' }, field('Token id (jti)', jti),
      h('button', { type: 'submit', class: 'danger' }, 'Revoke'));
    revoke.addEventListener('submit', async (e) => {
      e.preventDefault();
      if (!(await confirmDialog(`Revoke token ${jti.value}?`, h('p', {}, 'Calls with it are refused from now on, on every instance.')))) return;
      try {
        await api('POST', '/api/tokens/revoke', { jti: jti.value });
        toast('ok', `Token ${jti.value} revoked`);
        revoke.reset();
        recent();
      } catch (x) { toast('error', `Revoking failed: ${x.message}`); }
    });

    const history = h('section', { id: 'token-history' });
    el.append(h('h2', {}, 'Issue a token'), form, issued, h('h2', {}, 'Revoke a token'), revoke,
      h('h2', {}, 'Recently issued and revoked'), history);

    async function recent() {
      try {
        const r = await api('POST', '/api/sql', {
          sql: "SELECT ts, action, result, detail FROM security_events WHERE event_type = 'AdminAction' AND action IN ('token issued', 'token revoked') ORDER BY ts DESC LIMIT 20",
          max_rows: 20,
        });
        fill(history, table([
          { label: 'When', value: (x) => time(x[0]) },
          { label: 'What', value: (x) => x[1] },
          { label: 'Result', value: (x) => x[2] },
          { label: 'Detail', value: (x) => x[3] ?? '' },
        ], r.rows, 'None yet.'));
      } catch (x) {
        fill(history, h('p', { class: 'muted' }, x instanceof ApiError && x.status === 404 ? 'Auditing is off: no history.' : `History unavailable: ${x.message}`));
      }
    }
    return { refresh: recent };
  },
};

/** The new token, once: it is not kept by the console or the gateway. */
function showOnce(el, r) {
  const box = h('textarea', { readonly: true, rows: 4, id: 'token-value', 'aria-label': 'New token' });
  box.value = r.token;
  const copy = h('button', { type: 'button', onclick: async () => {
    try { await navigator.clipboard.writeText(box.value); toast('ok', 'Token copied'); } catch {
      box.select(); toast('info', 'Select and copy the token (the clipboard is not available here)');
    }
  } }, 'Copy');
  const hide = h('button', { type: 'button', onclick: () => fill(el) }, 'Done, hide it');
  fill(el, h('div', { class: 'once' },
    h('p', {}, h('strong', {}, 'Copy this token now: it is shown only once.'), ` jti ${r.jti}, valid ${r.expires_in} s.`),
    box, h('div', { class: 'actions' }, copy, hide)));
  box.focus();
  box.select();
}
