// Keys: every pooled key by id (never its secret), its state and why, usage against the limits
// configured for its project, the weight in force; operator actions; weight presets.
import { h, fill, num, ms, duration, table, bar, badge, confirmDialog, toast, field } from './lib.js';
import { ApiError } from './app.js';

function cooldowns(k) {
  if (k.dead_reason) return h('span', {}, `disabled: ${k.dead_reason}`);
  if (!k.cooldowns.length && k.breaker === 'closed') return h('span', { class: 'muted' }, '–');
  return h('ul', { class: 'plain' },
    k.breaker !== 'closed' ? h('li', {}, `breaker ${k.breaker}`,
      k.breaker_open_remaining_s ? ` (${duration(k.breaker_open_remaining_s)} left)` : '') : null,
    k.cooldowns.map((c) => h('li', { title: `until ${new Date(c.until * 1000).toISOString()}` },
      `${c.model} (${c.scope}): ${c.reason}`, c.quota_id ? ` [${c.quota_id}]` : '', ` · ${duration(c.remaining_s)} left`)));
}

function usage(k) {
  if (!k.usage || !k.usage.length) return h('span', { class: 'muted' }, 'no limits set');
  return h('div', { class: 'usage' }, k.usage.map((u) => h('div', { class: 'usage-model' },
    h('div', { class: 'muted' }, u.model === '*' ? 'other models (default limits)' : u.model),
    ['rpm', 'tpm', 'rpd'].filter((w) => u[w].limit !== null || u[w].used > 0).map((w) => bar(w, u[w].used, u[w].limit)))));
}

export default {
  title: 'Keys',
  live: true,
  mount(el, { api, refresh }) {
    const list = h('section', { id: 'keys-table' });
    const presets = h('section', { id: 'presets' });
    const addForm = addKeyForm(api, refresh);
    el.append(list, h('h2', {}, 'Weight presets'), presets, h('h2', {}, 'Add a key'), addForm);

    async function act(id, action) {
      const verbs = { disable: 'Disable', enable: 'Enable', reset: 'Reset', probe: 'Probe', remove: 'Remove' };
      const what = {
        disable: 'New calls stop using this key, on every instance, until it is enabled.',
        enable: 'The key takes calls again.',
        reset: 'Its cooldowns, breaker and error counts are cleared.',
        probe: 'One small call is sent upstream with this key to check it (it counts against its quota).',
        remove: 'The key leaves the pool (calls in flight finish). A key from the config file comes back only by editing the file.',
      };
      if (!(await confirmDialog(`${verbs[action]} key ${id}?`, h('p', {}, what[action])))) return;
      try {
        const r = action === 'remove'
          ? await api('DELETE', `/api/keys/${encodeURIComponent(id)}`)
          : await api('POST', `/api/keys/${encodeURIComponent(id)}/${action}`, {});
        const detail = action === 'probe' ? `: upstream ${r.probe.status || 'unreachable'}, ${r.probe.verdict}${r.probe.revived ? ', alive again' : ''}`
          : r.key ? `: now ${r.key.state}` : '';
        toast('ok', `${verbs[action]} ${id}${detail}`);
      } catch (x) {
        toast('error', `${verbs[action]} ${id} failed: ${x.message}`);
      }
      refresh();
    }

    return {
      async refresh() {
        const [k, p] = await Promise.all([api('GET', '/api/keys'), api('GET', '/api/weights/presets')]);
        const button = (id, a, label, cls) => h('button', { type: 'button', class: cls || '', 'data-key': id, 'data-action': a, onclick: () => act(id, a) }, label);
        fill(list, table([
          { label: 'Key', value: (k) => h('span', { title: `fingerprint ${k.fingerprint}` }, k.id) },
          { label: 'Project', value: (k) => k.project },
          { label: 'State', value: (k) => badge(k.state) },
          { label: 'Cooldown / breaker', value: cooldowns },
          { label: 'In flight', num: true, value: (k) => num(k.in_flight) },
          { label: 'Latency', num: true, value: (k) => (k.requests ? ms(k.latency_ewma_ms) : '–') },
          { label: 'Calls (ok)', num: true, value: (k) => `${num(k.requests)} (${num(k.successes)})` },
          { label: 'Project usage now', value: usage },
          { label: 'Weight', num: true, value: (k) => num(k.weight) },
          { label: 'Actions', value: (k) => h('div', { class: 'actions' },
            k.state === 'disabled' ? button(k.id, 'enable', 'Enable') : button(k.id, 'disable', 'Disable', 'danger'),
            button(k.id, 'probe', 'Probe'), button(k.id, 'reset', 'Reset'), button(k.id, 'remove', 'Remove', 'danger')) },
        ], k.keys, 'No keys are configured.'));
        renderPresets(presets, p, api, refresh);
      },
    };
  },
};

function renderPresets(el, p, api, refresh) {
  const names = Object.keys(p.presets || {});
  const select = h('select', { id: 'preset-select' },
    h('option', { value: 'none' }, '(none: configured weights)'),
    names.map((n) => h('option', { value: n, selected: n === p.in_force }, n)));
  const apply = h('button', { type: 'button', onclick: async () => {
    const name = select.value;
    if (!(await confirmDialog(`Apply preset ${name}?`, h('p', {}, 'Weights change on every instance at once; the schedule still switches presets when its windows begin.')))) return;
    try {
      const r = await api('POST', '/api/weights/apply', { preset_name: name });
      toast('ok', `Preset in force: ${r.in_force ?? 'none'}`);
    } catch (x) { toast('error', `Applying ${name} failed: ${x.message}`); }
    refresh();
  } }, 'Apply');
  fill(el,
    h('p', {}, 'In force: ', h('strong', {}, p.in_force ?? 'none'), ` (${p.source})`, p.default ? ` · default ${p.default}` : ''),
    names.length ? h('div', { class: 'inline' }, field('Preset', select), apply) : h('p', { class: 'muted' }, 'No presets are configured.'),
    (p.schedule || []).length ? table([
      { label: 'Preset', value: (w) => w.preset },
      { label: 'From', value: (w) => w.from },
      { label: 'To', value: (w) => w.to },
      { label: 'Zone', value: (w) => w.tz },
    ], p.schedule) : null);
}

function addKeyForm(api, refresh) {
  const id = h('input', { required: true, pattern: '[A-Za-z0-9._\\-]{1,128}', autocomplete: 'off', id: 'add-key-id' });
  const secret = h('input', { type: 'password', required: true, autocomplete: 'off', id: 'add-key-secret' });
  const project = h('input', { autocomplete: 'off', id: 'add-key-project' });
  const weight = h('input', { type: 'number', min: '0', value: '1', id: 'add-key-weight' });
  const out = h('p', { role: 'status' });
  const form = h('form', { class: 'grid-form', id: 'add-key' },
    field('Id', id, 'shown everywhere; letters, digits, . _ -'),
    field('Key', secret, 'sent once to the gateway; never shown again'),
    field('Project', project, 'Google project (quota is per project)'),
    field('Weight', weight),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Add key')), out);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (!(await confirmDialog(`Add key ${id.value}?`, h('p', {}, 'It joins the pool at once (on every instance of a cluster).')))) return;
    const body = { id: id.value, key: secret.value, weight: Number(weight.value || 1) };
    if (project.value) body.project = project.value;
    try {
      await api('POST', '/api/keys', body);
      out.textContent = `Key ${id.value} added.`;
      toast('ok', `Key ${id.value} added`);
      form.reset();
    } catch (x) {
      out.textContent = x instanceof ApiError ? `Not added: ${x.message}` : x.message;
    } finally {
      secret.value = '';
    }
    refresh();
  });
  return form;
}
