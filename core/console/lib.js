// Small helpers shared by every page: elements built from text (never from HTML strings, so
// nothing the gateway relays can become markup), number and time formats, tables, charts,
// dialogs and downloads.

/** An element: h('button', {class: 'x', onclick: f}, 'text', child, ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const nf = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });

/** 12,345 / 1.2 k / 3.4 M with an optional unit. */
export function num(v, unit = '') {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  const a = Math.abs(v);
  let s;
  if (a >= 1e9) s = nf.format(v / 1e9) + ' G';
  else if (a >= 1e6) s = nf.format(v / 1e6) + ' M';
  else if (a >= 1e4) s = nf.format(v / 1e3) + ' k';
  else s = nf.format(v);
  return unit ? `${s} ${unit}`.replace('  ', ' ') : s;
}

/** Milliseconds, with µs below 1 ms. */
export function ms(v) {
  if (v === null || v === undefined) return '–';
  if (v < 1) return `${nf.format(v * 1000)} µs`;
  if (v >= 10000) return `${nf.format(v / 1000)} s`;
  return `${nf.format(v)} ms`;
}

export function pct(v) {
  return v === null || v === undefined ? '–' : `${nf.format(v * 100)} %`;
}

/** 95 s -> "1 min 35 s". */
export function duration(s) {
  if (s === null || s === undefined) return '–';
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

/** A time in the browser's zone; UTC on hover. Accepts unix seconds, ms or a date string. */
export function time(v) {
  if (v === null || v === undefined || v === '') return h('span', {}, '–');
  let d;
  if (typeof v === 'number') d = new Date(v > 1e12 ? v : v * 1000);
  else d = new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(v) ? v : v.replace(' ', 'T') + 'Z');
  if (Number.isNaN(d.getTime())) return h('span', {}, String(v));
  return h('time', { datetime: d.toISOString(), title: d.toISOString().replace('.000Z', 'Z') + ' (UTC)' },
    d.toLocaleString());
}

/**
 * A table. `cols`: [{label, value: row => text|Node, class?, num?}]. Rows may be empty.
 */
export function table(cols, rows, empty = 'Nothing to show.') {
  const head = h('tr', {}, cols.map((c) => h('th', { scope: 'col', class: c.num ? 'num' : '' }, c.label)));
  const body = rows.length
    ? rows.map((r) => h('tr', {}, cols.map((c) => h('td', { class: c.num ? 'num' : c.class || '' }, c.value(r)))))
    : [h('tr', {}, h('td', { colspan: cols.length, class: 'empty' }, empty))];
  return h('div', { class: 'table-wrap' }, h('table', {}, h('thead', {}, head), h('tbody', {}, body)));
}

/** A horizontal bar of used/limit, labelled. */
export function bar(label, used, limit) {
  const share = limit ? Math.min(1, used / limit) : 0;
  const fillEl = h('span', { class: 'bar-fill' + (share >= 0.9 ? ' hot' : share >= 0.7 ? ' warm' : '') });
  fillEl.style.width = `${Math.round(share * 100)}%`;
  return h('div', { class: 'bar', title: `${label}: ${used} of ${limit ?? 'no limit set'}` },
    h('span', { class: 'bar-label' }, `${label} ${num(used)}${limit ? ' / ' + num(limit) : ' (no limit set)'}`),
    limit ? h('span', { class: 'bar-track' }, fillEl) : null);
}

/** A badge for a state word. */
export function badge(text, kind) {
  return h('span', { class: `badge ${kind || text}` }, text);
}

const palette = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2'];

/**
 * A time-series chart (uPlot, canvas). `series`: [{label, unit}]; `data`: [xs, ys1, ys2...]
 * with xs in unix seconds. `opts.x`: a function giving the [from, to] the x axis spans (default:
 * the data's). The y axis starts at 0. Returns {update(data), destroy()}; sized to its container.
 */
export function chart(container, title, series, data, opts = {}) {
  const box = h('figure', { class: 'chart' }, h('figcaption', {}, title));
  const plot = h('div', { class: 'plot' });
  box.append(plot);
  container.append(box);
  const width = () => Math.max(240, plot.clientWidth || container.clientWidth || 320);
  const fmt = opts.format || ((v) => num(v));
  const u = new window.uPlot({
    width: width(),
    height: opts.height || 180,
    scales: {
      x: { time: opts.time !== false, range: opts.x ? () => opts.x() : undefined },
      y: { range: (_, min, max) => [0, max > 0 ? max * 1.15 : 1] },
    },
    axes: [{}, { values: (_, ticks) => ticks.map(fmt), size: 72 }],
    series: [{}, ...series.map((s, i) => ({
      label: s.label,
      stroke: s.color || palette[i % palette.length],
      width: 1.5,
      value: (_, v) => (v === null || v === undefined ? '–' : fmt(v)),
      points: { show: data[0].length < 40 },
      spanGaps: false,
    }))],
    legend: { live: true },
  }, data, plot);
  const ro = new ResizeObserver(() => u.setSize({ width: width(), height: opts.height || 180 }));
  ro.observe(plot);
  return {
    update(d) { u.setData(d); },
    destroy() { ro.disconnect(); u.destroy(); box.remove(); },
  };
}

/** Asks for confirmation in a modal dialog; resolves true or false. */
export function confirmDialog(title, ...body) {
  return new Promise((resolve) => {
    const ok = h('button', { class: 'danger', value: 'ok' }, 'Confirm');
    const cancel = h('button', { value: 'cancel', type: 'button' }, 'Cancel');
    const form = h('form', { method: 'dialog' }, h('h2', {}, title), h('div', { class: 'dialog-body' }, body),
      h('div', { class: 'actions' }, cancel, ok));
    const dlg = h('dialog', { class: 'confirm' }, form);
    cancel.addEventListener('click', () => dlg.close('cancel'));
    dlg.addEventListener('close', () => { resolve(dlg.returnValue === 'ok'); dlg.remove(); });
    document.body.append(dlg);
    dlg.showModal();
    cancel.focus();
  });
}

/** A short message at the top of the page: kind is ok, error or info. */
export function toast(kind, text) {
  let box = document.getElementById('toasts');
  if (!box) {
    box = h('div', { id: 'toasts', role: 'status', 'aria-live': 'polite' });
    document.body.append(box);
  }
  const t = h('div', { class: `toast ${kind}` }, text);
  box.append(t);
  setTimeout(() => t.remove(), kind === 'error' ? 9000 : 4000);
}

/** Offers `text` as a file download. */
export function download(name, text, type = 'text/csv') {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h('a', { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/**
 * Line diff of two texts (longest common subsequence): [{op: ' '|'-'|'+', line}]. Large texts
 * fall back to a plain before/after listing rather than stalling the page.
 */
export function diffLines(a, b) {
  const x = a.split('\n');
  const y = b.split('\n');
  if (x.length * y.length > 4e6) {
    return [...x.map((line) => ({ op: '-', line })), ...y.map((line) => ({ op: '+', line }))];
  }
  const n = x.length, m = y.length;
  const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = x[i] === y[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = [];
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (x[i] === y[j]) { out.push({ op: ' ', line: x[i] }); i++; j++; }
    else if (lcs[i + 1][j] >= lcs[i][j + 1]) out.push({ op: '-', line: x[i++] });
    else out.push({ op: '+', line: y[j++] });
  }
  while (i < n) out.push({ op: '-', line: x[i++] });
  while (j < m) out.push({ op: '+', line: y[j++] });
  return out;
}

/** A diff as a <pre>: changed lines with two lines of context, the rest folded. */
export function diffView(a, b) {
  const d = diffLines(a, b);
  const keep = d.map((e, k) => e.op !== ' ' || d.slice(Math.max(0, k - 2), k + 3).some((f) => f.op !== ' '));
  const pre = h('pre', { class: 'diff' });
  let folded = false;
  d.forEach((e, k) => {
    if (!keep[k]) {
      if (!folded) pre.append(h('span', { class: 'fold' }, '…\n'));
      folded = true;
      return;
    }
    folded = false;
    pre.append(h('span', { class: e.op === '+' ? 'add' : e.op === '-' ? 'del' : '' }, `${e.op} ${e.line}\n`));
  });
  if (!d.some((e) => e.op !== ' ')) pre.replaceChildren('No change.');
  return pre;
}

/** A labelled form field. */
export function field(label, input, hint) {
  const id = input.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  input.id = id;
  return h('div', { class: 'field' }, h('label', { for: id }, label), input, hint ? h('small', {}, hint) : null);
}

/** A small card with a big number. */
export function stat(label, value, sub) {
  return h('div', { class: 'stat' }, h('div', { class: 'stat-label' }, label), h('div', { class: 'stat-value' }, value),
    sub ? h('div', { class: 'stat-sub' }, sub) : null);
}
