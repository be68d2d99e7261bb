// SQL: read-only queries over the audit database (the same API and guard as POST /api/sql),
// a schema browser, the result as a table, CSV download.
import { h, fill, num, ms, toast, download } from './lib.js';
import { resultTable } from './usage.js';
import { ApiError } from './app.js';

const EXAMPLE = 'SELECT day, user_id, model, requests, total_tokens\nFROM usage_by_user_model_day\nORDER BY day DESC\nLIMIT 50';

export default {
  title: 'SQL',
  live: false,
  mount(el, { api }) {
    const schema = h('nav', { class: 'schema', id: 'sql-schema', 'aria-label': 'Tables and views' });
    const box = h('textarea', { id: 'sql-text', rows: 8, spellcheck: false, 'aria-label': 'SQL query' });
    box.value = sessionStorage.getItem('gp.sql') || EXAMPLE;
    const run = h('button', { type: 'submit', class: 'primary', id: 'sql-run' }, 'Run (Ctrl+Enter)');
    const csv = h('button', { type: 'button', id: 'sql-csv' }, 'Download CSV');
    const out = h('section', { id: 'sql-out', 'aria-live': 'polite' });
    const form = h('form', { class: 'sql-form' }, box, h('div', { class: 'actions' }, run, csv));
    el.append(h('p', { class: 'muted' }, 'One read-only statement (SELECT, WITH, EXPLAIN, DESCRIBE, SUMMARIZE), with the gateway\'s row and time caps. Every query is audited.'),
      h('div', { class: 'sql-layout' }, schema, h('div', {}, form, out)));

    async function execute() {
      sessionStorage.setItem('gp.sql', box.value);
      fill(out, h('p', { class: 'muted' }, 'Running…'));
      try {
        const r = await api('POST', '/api/sql', { sql: box.value });
        fill(out, h('p', { class: 'muted', id: 'sql-summary' }, `${num(r.row_count)} rows${r.truncated ? ' (truncated at the cap)' : ''} in ${ms(r.elapsed_ms)}`),
          resultTable(r, 'The query returned no rows.'));
      } catch (x) {
        fill(out, h('p', { class: 'error', role: 'alert', id: 'sql-error' }, x instanceof ApiError ? x.message : `Query failed: ${x.message}`));
      }
    }
    form.addEventListener('submit', (e) => { e.preventDefault(); execute(); });
    box.addEventListener('keydown', (e) => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); execute(); } });
    csv.addEventListener('click', async () => {
      try {
        const r = await api('POST', '/api/sql', { sql: box.value, format: 'csv' }, { raw: true });
        download('query.csv', r.text);
      } catch (x) { toast('error', `Download failed: ${x.message}`); }
    });

    function insert(text) {
      const [a, b] = [box.selectionStart, box.selectionEnd];
      box.setRangeText(text, a, b, 'end');
      box.focus();
    }
    return {
      async refresh() {
        const s = await api('GET', '/api/sql/schema');
        fill(schema, h('h2', {}, 'Schema'), Object.entries(s.relations).map(([name, cols]) => h('details', {},
          h('summary', {}, h('button', { type: 'button', class: 'link', onclick: () => insert(name) }, name)),
          h('ul', { class: 'plain' }, cols.map((c) => h('li', {}, h('button', { type: 'button', class: 'link', onclick: () => insert(c.name) }, c.name), ' ', h('span', { class: 'muted' }, c.type)))))));
      },
    };
  },
};
