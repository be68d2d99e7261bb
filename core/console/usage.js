// Usage: the audit database's ready views over a chosen range of days, as a chart per day and a
// table, each downloadable as CSV. Queries go through the read-only SQL API.
import { h, fill, num, ms, pct, table, chart, download, field, toast } from './lib.js';

const DAY = /^\d{4}-\d{2}-\d{2}$/;

// Each view: the table's query, and a per-day series for the chart. `{from}`/`{to}` are dates
// checked against DAY before they are put into SQL.
const VIEWS = {
  users: {
    label: 'Usage per user, model and day',
    sql: "SELECT * FROM usage_by_user_model_day WHERE day BETWEEN DATE '{from}' AND DATE '{to}' ORDER BY day DESC, total_tokens DESC",
    chart: "SELECT day, sum(requests) AS requests, sum(total_tokens) AS total_tokens FROM usage_by_user_model_day WHERE day BETWEEN DATE '{from}' AND DATE '{to}' GROUP BY day ORDER BY day",
    series: [{ label: 'requests', col: 1 }, { label: 'total tokens', col: 2 }],
  },
  quota: {
    label: 'Quota per project and day',
    sql: "SELECT * FROM quota_usage_by_project_day WHERE quota_day BETWEEN DATE '{from}' AND DATE '{to}' ORDER BY quota_day DESC, project, model",
    chart: "SELECT quota_day, sum(attempts) AS attempts, sum(upstream_429s) AS upstream_429s FROM quota_usage_by_project_day WHERE quota_day BETWEEN DATE '{from}' AND DATE '{to}' GROUP BY quota_day ORDER BY quota_day",
    series: [{ label: 'upstream attempts', col: 1 }, { label: 'upstream 429s', col: 2 }],
  },
  latency: {
    label: 'Latency by key and model',
    sql: "SELECT * FROM latency_by_key_model WHERE day BETWEEN DATE '{from}' AND DATE '{to}' ORDER BY day DESC, key_id, model",
    chart: "SELECT day, round(quantile_cont(latency_ms, 0.5), 3) AS p50_ms, round(quantile_cont(latency_ms, 0.95), 3) AS p95_ms FROM requests WHERE day BETWEEN DATE '{from}' AND DATE '{to}' GROUP BY day ORDER BY day",
    series: [{ label: 'p50', col: 1 }, { label: 'p95', col: 2 }],
    format: ms,
  },
  errors: {
    label: 'Error rates',
    sql: "SELECT * FROM error_rates WHERE day BETWEEN DATE '{from}' AND DATE '{to}' ORDER BY day DESC, errors DESC",
    chart: "SELECT day, sum(errors) / sum(requests) AS error_rate FROM error_rates WHERE day BETWEEN DATE '{from}' AND DATE '{to}' GROUP BY day ORDER BY day",
    series: [{ label: 'error rate', col: 1 }],
    format: pct,
  },
  top: {
    label: 'Top users',
    sql: "SELECT coalesce(user_id, '(anonymous)') AS user_id, count(*) AS requests, sum(total_tokens) AS total_tokens, count(*) FILTER (WHERE status >= 400) AS failed, min(ts) AS first_seen, max(ts) AS last_seen FROM requests WHERE day BETWEEN DATE '{from}' AND DATE '{to}' GROUP BY ALL ORDER BY total_tokens DESC, requests DESC LIMIT 50",
    chart: "SELECT day, count(DISTINCT user_id) AS users FROM requests WHERE day BETWEEN DATE '{from}' AND DATE '{to}' GROUP BY day ORDER BY day",
    series: [{ label: 'distinct users', col: 1 }],
  },
};

function isoDay(d) { return d.toISOString().slice(0, 10); }

export function sqlFor(template, from, to) {
  if (!DAY.test(from) || !DAY.test(to)) throw new Error('dates are YYYY-MM-DD');
  return template.replaceAll('{from}', from).replaceAll('{to}', to);
}

/** Rows of a query answer as a table; numbers right-aligned. */
export function resultTable(r, empty) {
  const cols = r.columns.map((c, i) => ({
    label: c.name ?? c,
    num: typeof (r.rows[0] || [])[i] === 'number',
    value: (row) => (row[i] === null ? '∅' : typeof row[i] === 'number' ? num(row[i]) : String(row[i])),
  }));
  return table(cols, r.rows, empty);
}

export default {
  title: 'Usage',
  live: false,
  mount(el, { api }) {
    const to = h('input', { type: 'date', id: 'usage-to', value: isoDay(new Date()) });
    const from = h('input', { type: 'date', id: 'usage-from', value: isoDay(new Date(Date.now() - 6 * 86400e3)) });
    const view = h('select', { id: 'usage-view' }, Object.entries(VIEWS).map(([k, v]) => h('option', { value: k }, v.label)));
    const show = h('button', { type: 'submit', class: 'primary' }, 'Show');
    const csv = h('button', { type: 'button', id: 'usage-csv' }, 'Download CSV');
    const form = h('form', { class: 'inline' }, field('View', view), field('From', from), field('To', to), show, csv);
    const out = h('section', { id: 'usage-out' });
    el.append(form, out);
    let plot = null;

    async function load() {
      const v = VIEWS[view.value];
      const q = sqlFor(v.sql, from.value, to.value);
      const [rows, series] = await Promise.all([
        api('POST', '/api/sql', { sql: q, max_rows: 5000 }),
        api('POST', '/api/sql', { sql: sqlFor(v.chart, from.value, to.value), max_rows: 1000 }),
      ]);
      if (plot) plot.destroy();
      fill(out);
      const xs = series.rows.map((r) => Date.parse(`${r[0]}T00:00:00Z`) / 1000);
      const data = [xs, ...v.series.map((s) => series.rows.map((r) => r[s.col]))];
      const span = () => [Date.parse(`${from.value}T00:00:00Z`) / 1000 - 43200, Date.parse(`${to.value}T00:00:00Z`) / 1000 + 43200];
      plot = chart(out, `${v.label}, per day (UTC)`, v.series, data, { format: v.format, x: span });
      out.append(h('p', { class: 'muted' }, `${num(rows.rows.length)} rows${rows.truncated ? ' (truncated)' : ''}`),
        resultTable(rows, 'No calls in this range.'));
    }
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      try { await load(); } catch (x) { toast('error', `Query failed: ${x.message}`); }
    });
    csv.addEventListener('click', async () => {
      try {
        const q = sqlFor(VIEWS[view.value].sql, from.value, to.value);
        const r = await api('POST', '/api/sql', { sql: q, format: 'csv', max_rows: 100000 }, { raw: true });
        download(`${view.value}-${from.value}-${to.value}.csv`, r.text);
      } catch (x) { toast('error', `Download failed: ${x.message}`); }
    });
    return {
      async refresh() { await load(); },
      unmount() { if (plot) plot.destroy(); },
    };
  },
};
