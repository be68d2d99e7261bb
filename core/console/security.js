// Security: the startup check (score, findings with CWE ids and how to fix them) and recent
// security events from the audit trail.
import { h, fill, table, time, badge } from './lib.js';
import { ApiError } from './app.js';

export default {
  title: 'Security',
  live: true,
  mount(el, { api }) {
    const summary = h('section', { id: 'security-summary' });
    const findings = h('section', { id: 'security-findings' });
    const events = h('section', { id: 'security-events' });
    el.append(summary, h('h2', {}, 'Findings'), findings, h('h2', {}, 'Recent security events'), events);
    return {
      async refresh() {
        const s = await api('GET', '/api/security');
        fill(summary, h('p', { class: 'score' }, 'Score ', h('strong', { id: 'security-score' }, `${s.score} / 100`),
          ` · production mode (server.mode: production) ${s.blocks_production ? `would refuse this config (needs ${s.min_score} and no critical finding)` : 'accepts this config'}`));
        fill(findings, table([
          { label: 'Severity', value: (f) => badge(f.severity, `sev-${f.severity}`) },
          { label: 'CWE', value: (f) => f.cwe ?? '–' },
          { label: 'Finding', value: (f) => h('div', {}, h('strong', {}, f.id), h('div', {}, f.title)) },
          { label: 'Fix', value: (f) => f.fix },
        ], s.findings || [], 'No findings.'));
        try {
          const r = await api('POST', '/api/sql', {
            sql: "SELECT ts, event_type, action, result, source_ip FROM security_events WHERE event_type <> 'ConfigChange' ORDER BY ts DESC LIMIT 30",
            max_rows: 30,
          });
          fill(events, table([
            { label: 'When', value: (x) => time(x[0]) },
            { label: 'Type', value: (x) => x[1] },
            { label: 'Action', value: (x) => x[2] },
            { label: 'Result', value: (x) => x[3] },
            { label: 'Source', value: (x) => x[4] ?? '–' },
          ], r.rows, 'No security events.'));
        } catch (x) {
          if (!(x instanceof ApiError)) throw x;
          fill(events, h('p', { class: 'muted' }, x.status === 404 ? 'Auditing is off: no events.' : `Events unavailable: ${x.message}`));
        }
      },
    };
  },
};
