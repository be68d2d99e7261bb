// Config: the running config (secrets redacted), an editor that validates before it applies
// (errors with their field path), the diff against what runs, history and rollback.
import { h, fill, table, time, toast, confirmDialog, diffView } from './lib.js';
import { ApiError } from './app.js';

export default {
  title: 'Config',
  live: false,
  mount(el, { api }) {
    const meta = h('p', { class: 'muted', id: 'config-meta' });
    const editor = h('textarea', { id: 'config-editor', spellcheck: false, rows: 20, 'aria-label': 'Config (YAML)' });
    const validate = h('button', { type: 'button', id: 'config-validate' }, 'Validate');
    const apply = h('button', { type: 'button', class: 'primary', id: 'config-apply', disabled: true }, 'Apply…');
    const revert = h('button', { type: 'button', id: 'config-revert' }, 'Discard edits');
    const result = h('div', { id: 'config-result', role: 'status', 'aria-live': 'polite' });
    const history = h('section', { id: 'config-history' });
    el.append(meta, h('p', {}, 'Secrets show as ', h('code', {}, '<redacted>'),
      ': leave them so and the gateway keeps the secret it has. The server, metrics, auth and cluster sections, upstream URL and program files can only be changed in the file.'),
    editor, h('div', { class: 'actions' }, validate, apply, revert), result, h('h2', {}, 'History'), history);

    let running = '';
    let checked = null; // the text the last successful validation was for

    async function load() {
      const c = await api('GET', '/api/config');
      running = c.yaml;
      if (!editor.dataset.dirty) editor.value = running;
      fill(meta, `Version ${c.version ?? '–'}${c.file ? ` of ${c.file}` : ''}.`);
      const hv = await api('GET', '/api/config/history');
      const versions = [...hv.versions].reverse();
      fill(history, table([
        { label: 'Version', num: true, value: (v) => String(v.version) },
        { label: 'When', value: (v) => time(v.at) },
        { label: 'Source', value: (v) => v.source },
        { label: 'By', value: (v) => v.by ?? '–' },
        { label: 'Changed', value: (v) => (v.changed.length ? v.changed.join(', ') : '–') },
        { label: '', value: (v) => (v.version === c.version ? h('span', { class: 'muted' }, 'running')
          : h('button', { type: 'button', 'data-version': v.version, onclick: () => rollback(v) }, 'Roll back to this')) },
      ], versions, 'No versions kept.'));
    }

    async function rollback(v) {
      if (!(await confirmDialog(`Roll back to version ${v.version}?`, h('p', {}, `It was applied ${new Date(v.at * 1000).toLocaleString()} by ${v.by ?? 'the file'}.`)))) return;
      try {
        const r = await api('POST', '/api/config/rollback', { version: v.version });
        toast('ok', r.applied ? `Rolled back: generation ${r.config_generation}` : 'Nothing changed');
        delete editor.dataset.dirty;
        await load();
      } catch (x) { toast('error', `Rollback failed: ${x.message}`); }
    }

    function invalid(message) {
      fill(result, h('div', { class: 'error', role: 'alert', id: 'config-error' }, h('strong', {}, 'Not valid: '), message));
      result.scrollIntoView({ block: 'nearest' });
    }

    validate.addEventListener('click', async () => {
      apply.disabled = true;
      checked = null;
      try {
        const r = await api('POST', '/api/config/validate', editor.value, { type: 'application/yaml' });
        checked = editor.value;
        apply.disabled = !r.changed.length;
        fill(result, h('div', { class: 'ok' },
          h('p', {}, r.changed.length ? `Valid. Fields that would change: ${r.changed.join(', ')}` : 'Valid, and the same as what runs.'),
          diffView(running, editor.value)));
      } catch (x) {
        if (x instanceof ApiError && x.status === 400) invalid(x.message);
        else toast('error', `Validation failed: ${x.message}`);
      }
    });

    apply.addEventListener('click', async () => {
      if (checked !== editor.value) { apply.disabled = true; toast('info', 'Validate the edited text first'); return; }
      if (!(await confirmDialog('Apply this config?', h('p', {}, 'Every instance reading this file reloads it. The change:'), diffView(running, editor.value)))) return;
      try {
        const r = await api('PUT', '/api/config', editor.value, { type: 'application/yaml' });
        toast('ok', r.applied ? `Applied: generation ${r.config_generation}` : 'Nothing changed');
        delete editor.dataset.dirty;
        fill(result);
        apply.disabled = true;
        await load();
      } catch (x) {
        if (x instanceof ApiError && x.status === 400) invalid(x.message);
        else toast('error', `Apply failed: ${x.message}`);
      }
    });

    revert.addEventListener('click', () => { delete editor.dataset.dirty; editor.value = running; fill(result); apply.disabled = true; });
    editor.addEventListener('input', () => { editor.dataset.dirty = '1'; apply.disabled = true; });
    return { refresh: load };
  },
};
