// Overview: traffic, errors, latency, overhead, tokens and open streams over the last hour
// (this instance's timeline, 10 s steps), and the anomalies raised now.
import { h, fill, num, ms, pct, duration, time, table, chart, stat } from './lib.js';

export default {
  title: 'Overview',
  live: true,
  mount(el, { api }) {
    const stats = h('section', { class: 'stats', 'aria-label': 'Now' });
    const charts = h('section', { class: 'charts' });
    const anomalies = h('section', {}, h('h2', {}, 'Active anomalies'), h('div', { id: 'anomalies' }));
    const about = h('p', { class: 'muted', id: 'overview-about' });
    el.append(about, stats, charts, anomalies);
    let plots = null;

    return {
      async refresh() {
        const [tl, perf, health] = await Promise.all([
          api('GET', '/api/timeline'), api('GET', '/performance'), api('GET', '/health'),
        ]);
        const p = tl.points;
        const xs = p.map((x) => x.t);
        const col = (f) => p.map((x) => (x.calls === 0 && f.needsCalls ? null : f(x)));
        const rate = (x) => x.calls / tl.step_seconds;
        const errRate = Object.assign((x) => (x.calls ? x.errors / x.calls : null), { needsCalls: true });
        const lat = (k) => Object.assign((x) => x[k], { needsCalls: true });
        const data = {
          calls: [xs, col(rate), col((x) => x.errors / tl.step_seconds)],
          errors: [xs, col(errRate)],
          latency: [xs, col(lat('p50_ms')), col(lat('p95_ms'))],
          overhead: [xs, col(lat('overhead_p50_ms')), col(lat('overhead_p95_ms'))],
          tokens: [xs, col((x) => (x.tokens * 60) / tl.step_seconds)],
          open: [xs, col((x) => x.in_flight), col((x) => x.streams), col((x) => x.live_sessions)],
        };
        if (!plots) {
          const hour = () => { const now = Date.now() / 1000; return [now - 3600, now]; };
          const o = (extra = {}) => ({ x: hour, ...extra });
          plots = {
            calls: chart(charts, 'Calls per second', [{ label: 'calls/s' }, { label: 'errors/s' }], data.calls, o()),
            errors: chart(charts, 'Error rate', [{ label: 'error rate' }], data.errors, o({ format: pct })),
            latency: chart(charts, 'Latency', [{ label: 'p50' }, { label: 'p95' }], data.latency, o({ format: ms })),
            overhead: chart(charts, 'Gateway overhead', [{ label: 'p50' }, { label: 'p95' }], data.overhead, o({ format: ms })),
            tokens: chart(charts, 'Tokens per minute', [{ label: 'tokens/min' }], data.tokens, o()),
            open: chart(charts, 'Open calls', [{ label: 'in flight' }, { label: 'streams' }, { label: 'Live sessions' }], data.open, o()),
          };
        } else {
          for (const [k, d] of Object.entries(data)) plots[k].update(d);
        }
        const m = perf.overall['1m'];
        const last = p[p.length - 1] || {};
        fill(stats,
          stat('Calls per second', num(m.requests_per_second), `${num(m.requests)} in the last minute`),
          stat('Error rate', pct(m.error_rate), `${num(m.errors)} failed`),
          stat('Latency p50 / p95', `${ms(m.latency_ms.p50)} / ${ms(m.latency_ms.p95)}`),
          stat('Gateway overhead p50', ms(m.overhead_ms.p50), `p95 ${ms(m.overhead_ms.p95)}`),
          stat('Tokens per minute', num(p.slice(-6).reduce((a, x) => a + x.tokens, 0)), 'last 60 s'),
          stat('In flight', num(last.in_flight ?? 0), `${num(last.streams ?? 0)} streams · ${num(last.live_sessions ?? 0)} Live`));
        fill(about,
          `Version ${health.version}, up ${duration(health.uptime_seconds)}, config generation ${health.config_generation}, `,
          `${health.keys.enabled} of ${health.keys.configured} keys enabled. Charts: this instance, last hour, ${tl.step_seconds} s steps.`);
        const active = (perf.anomalies?.active || []);
        fill(document.getElementById('anomalies'), table([
          { label: 'Key', value: (a) => a.key_id },
          { label: 'Model', value: (a) => a.model },
          { label: 'Signal', value: (a) => a.signal },
          { label: 'Since', value: (a) => time(a.since_unix_ms) },
          { label: 'Value / baseline', num: true, value: (a) => `${num(a.value)} / ${num(a.baseline)}` },
        ], active, 'No anomaly is raised.'));
      },
      unmount() {
        if (plots) for (const p of Object.values(plots)) p.destroy();
      },
    };
  },
};
