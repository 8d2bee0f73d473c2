// tideflow dashboard: plain JavaScript, no build step. Receives the run's state by
// server-sent events (/api/events) and draws cards, a throughput chart, the dataflow graph,
// the steps table, the job's panels and its live tables.
"use strict";
const SVGNS = "http://www.w3.org/2000/svg";
const $ = (sel) => document.querySelector(sel);
const ISO = /^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d(\.\d{1,3})?)\d*(\+00:00|Z)?$/;
const fmt = (v) => (v === null || v === undefined) ? "n/a"
  : (typeof v === "number" ? (Number.isInteger(v) ? v.toLocaleString("en-US")
    : v.toLocaleString("en-US", {maximumFractionDigits: 2}))
    : String(v).replace(ISO, (m, d, t, f, z) => `${d} ${t}${z ? " UTC" : ""}`));
const pct = (v) => (v === null || v === undefined) ? "n/a" : `${(100 * v).toFixed(v < 0.1 ? 1 : 0)}%`;
const ms = (v) => (v === null || v === undefined) ? "n/a" : `${(1000 * v).toFixed(v < 0.01 ? 2 : 1)} ms`;
const cls = (v) => (v === null || v === undefined) ? "na" : (typeof v === "number" ? "num" : "");

function el(tag, attrs = {}, text) {
  const ns = ["svg", "g", "rect", "text", "path", "line", "polyline", "defs", "marker", "circle"].includes(tag);
  const e = ns ? document.createElementNS(SVGNS, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function fillTable(table, columns, rows) {
  table.replaceChildren();
  const head = el("thead"); const tr = el("tr");
  for (const c of columns) tr.appendChild(el("th", {}, c));
  head.appendChild(tr); table.appendChild(head);
  const body = el("tbody");
  for (const r of rows) {
    const row = el("tr");
    for (const v of r) row.appendChild(el("td", {class: cls(v)}, fmt(v)));
    body.appendChild(row);
  }
  table.appendChild(body);
}

// -- charts (SVG, drawn here) ----------------------------------------------------------------
function lineChart(svg, xs, series, opts = {}) {
  svg.replaceChildren();
  const w = svg.clientWidth || 600, h = svg.clientHeight || 180, l = 56, b = 20, t = 8, r = 10;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const all = series.flatMap((s) => s.values).filter((v) => v !== null && isFinite(v));
  if (xs.length < 2 || all.length === 0) {
    svg.appendChild(el("text", {x: l, y: h / 2, class: "axis"}, "waiting for data…"));
    return;
  }
  const ymax = Math.max(...all, opts.digits ? 0.001 : 1) * 1.1, ymin = Math.min(0, ...all);
  const xmin = Math.min(...xs), xmax = Math.max(...xs), xspan = (xmax - xmin) || 1;
  const X = (x) => l + (w - l - r) * (x - xmin) / xspan;
  const Y = (y) => t + (h - t - b) * (1 - (y - ymin) / (ymax - ymin));
  for (let i = 0; i <= 4; i++) {
    const v = ymin + (ymax - ymin) * i / 4;
    svg.appendChild(el("line", {x1: l, x2: w - r, y1: Y(v), y2: Y(v), stroke: "#eceff3"}));
    const label = opts.digits ? v.toFixed(opts.digits) : fmt(Math.round(v));
    svg.appendChild(el("text", {x: l - 4, y: Y(v) + 3, "text-anchor": "end", class: "axis"}, label));
  }
  svg.appendChild(el("text", {x: l, y: h - 4, class: "axis"}, opts.xfmt ? opts.xfmt(xmin) : fmt(xmin)));
  svg.appendChild(el("text", {x: w - r, y: h - 4, "text-anchor": "end", class: "axis"}, opts.xfmt ? opts.xfmt(xmax) : fmt(xmax)));
  const colors = ["#1769aa", "#c0392b", "#23845b", "#b9770e"];
  series.forEach((s, i) => {
    const pts = xs.map((x, j) => s.values[j] === null ? null : `${X(x).toFixed(1)},${Y(s.values[j]).toFixed(1)}`).filter(Boolean);
    svg.appendChild(el("polyline", {points: pts.join(" "), fill: "none", stroke: colors[i % 4], "stroke-width": 2}));
    svg.appendChild(el("text", {x: l + 8 + 110 * i, y: t + 10, class: "axis", fill: colors[i % 4]}, s.name));
  });
}

function barChart(svg, labels, values) {
  svg.replaceChildren();
  const w = svg.clientWidth || 400, h = svg.clientHeight || 180, l = 110, r = 60;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  if (!labels.length) { svg.appendChild(el("text", {x: 10, y: h / 2, class: "axis"}, "waiting for data…")); return; }
  const max = Math.max(...values, 1), bh = Math.min(28, (h - 10) / labels.length - 6);
  labels.forEach((lab, i) => {
    const y = 5 + i * (bh + 6), bw = (w - l - r) * values[i] / max;
    svg.appendChild(el("text", {x: l - 6, y: y + bh / 2 + 4, "text-anchor": "end", class: "axis"}, String(lab)));
    svg.appendChild(el("rect", {x: l, y, width: Math.max(bw, 1), height: bh, fill: "#1769aa"}));
    svg.appendChild(el("text", {x: l + bw + 4, y: y + bh / 2 + 4, class: "axis"}, fmt(values[i])));
  });
}

// -- dataflow graph --------------------------------------------------------------------------
function drawGraph(steps) {
  const svg = $("#graph");
  const depth = {};
  const byId = Object.fromEntries(steps.map((s) => [s.id, s]));
  const d = (id, seen = new Set()) => {
    if (depth[id] !== undefined) return depth[id];
    if (seen.has(id)) return 0;
    seen.add(id);
    const ins = (byId[id]?.inputs || []).map((p) => p[0]);
    return (depth[id] = ins.length ? 1 + Math.max(...ins.map((i) => d(i, seen))) : 0);
  };
  steps.forEach((s) => d(s.id));
  const cols = {};
  steps.forEach((s) => (cols[depth[s.id]] ||= []).push(s));
  const bw = 190, bh = 46, gx = 40, gy = 12;
  const ncol = Object.keys(cols).length, nrow = Math.max(...Object.values(cols).map((c) => c.length));
  const W = ncol * (bw + gx), H = nrow * (bh + gy) + 10;
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.style.height = Math.min(H, 480) + "px";
  const defs = el("defs"), m = el("marker", {id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 6, markerHeight: 6, orient: "auto"});
  m.appendChild(el("path", {d: "M0,0 L10,5 L0,10 z", fill: "#9aa5b1"})); defs.appendChild(m); svg.appendChild(defs);
  const pos = {};
  for (const [c, list] of Object.entries(cols)) list.forEach((s, i) => (pos[s.id] = {x: c * (bw + gx) + 5, y: i * (bh + gy) + 5}));
  for (const s of steps) for (const [src] of s.inputs) {
    if (!pos[src]) continue;
    const a = pos[src], b = pos[s.id];
    svg.appendChild(el("path", {class: "edge", d: `M${a.x + bw},${a.y + bh / 2} C${a.x + bw + gx / 2},${a.y + bh / 2} ${b.x - gx / 2},${b.y + bh / 2} ${b.x},${b.y + bh / 2}`}));
  }
  for (const s of steps) {
    const p = pos[s.id], g = el("g", {class: `node ${s.kind}`, transform: `translate(${p.x},${p.y})`});
    g.appendChild(el("rect", {width: bw, height: bh}));
    g.appendChild(el("text", {x: 6, y: 15}, s.id.length > 28 ? "…" + s.id.slice(-27) : s.id));
    g.appendChild(el("text", {x: 6, y: 29, class: "small"}, `${s.kind} · in ${fmt(s.rows_in)} · out ${fmt(s.rows_out)}`));
    g.appendChild(el("text", {x: 6, y: 41, class: "small"}, `${fmt(Math.round(s.rate_out))}/s` + (s.dead ? ` · dead ${fmt(s.dead)}` : "")));
    svg.appendChild(g);
  }
}

// -- state -> page ---------------------------------------------------------------------------
let graphKey = "";
function render(s) {
  $("#flow").textContent = s.flow || "…";
  const st = $("#status"); st.textContent = s.status; st.className = "status " + s.status;
  $("#elapsed").textContent = `${fmt(Math.round(s.elapsed))} s`;
  $("#workers").textContent = s.workers;
  $("#records-in").textContent = fmt(s.totals.records_in);
  $("#rate-in").textContent = fmt(Math.round(s.totals.rate_in));
  $("#records-out").textContent = fmt(s.totals.records_out);
  $("#dead-letters").textContent = fmt(s.totals.dead_letters);
  $("#late").textContent = fmt(s.totals.late);
  $("#latency").textContent = ms(s.totals.latency_p99_s);
  $("#backpressure").textContent = pct(s.totals.backpressure);
  renderCheckpoints(s.checkpoint);
  latencyHistory.push([s.elapsed, s.totals.latency_p50_s, s.totals.latency_p99_s]);
  while (latencyHistory.length > 240) latencyHistory.shift();
  const lh = latencyHistory.filter((p) => p[2] !== null);
  lineChart($("#latency-chart"), lh.map((p) => p[0]), [
    {name: "p50", values: lh.map((p) => p[1] === null ? null : 1000 * p[1])},
    {name: "p99", values: lh.map((p) => 1000 * p[2])}], {xfmt: (x) => `${Math.round(x)} s`, digits: 1});
  renderModels(s.models || []);
  // throughput from the counter history: [t, records_in, dead]
  const h = s.history, xs = [], rate = [];
  for (let i = 1; i < h.length; i++) {
    const dt = h[i][0] - h[i - 1][0];
    if (dt <= 0) continue;
    xs.push(h[i][0]); rate.push((h[i][1] - h[i - 1][1]) / dt);
  }
  lineChart($("#throughput"), xs, [{name: "records in /s", values: rate}], {xfmt: (x) => `${Math.round(x)} s`});
  const key = s.steps.map((x) => x.id).join(",");
  drawGraph(s.steps); graphKey = key;
  const tb = $("#steps tbody"); tb.replaceChildren();
  for (const x of s.steps) {
    const tr = el("tr");
    for (const v of [x.id, x.kind, x.rows_in, x.rows_out, Math.round(x.rate_in), Math.round(x.rate_out), x.dead])
      tr.appendChild(el("td", {class: cls(v)}, fmt(v)));
    tr.appendChild(el("td", {class: cls(x.busy)}, pct(x.busy)));
    tr.appendChild(el("td", {class: cls(x.latency_p50_s)}, ms(x.latency_p50_s)));
    tr.appendChild(el("td", {class: cls(x.latency_p99_s)}, ms(x.latency_p99_s)));
    for (const v of [x.watermark_lag_s, x.late]) tr.appendChild(el("td", {class: cls(v)}, fmt(v)));
    tr.appendChild(el("td", {class: cls(x.backpressure)}, pct(x.backpressure)));
    tr.appendChild(el("td", {class: cls(x.state_table)}, x.state_table || ""));
    tb.appendChild(tr);
  }
  $("#state-names").textContent = s.steps.filter((x) => x.state_table).map((x) => x.state_table).join(", ") || "none";
  renderPanels(s.panels || []);
  renderTables(s.tables);
}

const latencyHistory = [];

function renderCheckpoints(c) {
  if (!c) { $("#checkpoint").textContent = "n/a"; return; }
  $("#checkpoint").textContent = `#${c.id} ${c.status}`;
  $("#checkpoint-detail").textContent = `${c.seconds.toFixed(3)} s · ${fmt(Math.round(c.age_s))} s ago · ${c.written} written, ${c.failed} failed`;
  $("#checkpoint-hint").textContent = `last ${c.recent.length} checkpoints`;
  lineChart($("#checkpoint-chart"), c.recent.map((r) => r[0]), [{name: "seconds", values: c.recent.map((r) => r[1])}],
    {xfmt: (x) => `#${x}`, digits: 3});
}

function renderModels(models) {
  const box = $("#models");
  box.hidden = models.length === 0;
  if (!models.length) return;
  const tb = $("#model-table tbody"); tb.replaceChildren();
  for (const m of models) {
    const tr = el("tr");
    for (const v of [m.id, m.mode, m.model, m.records, Math.round(m.rate), m.metric, m.value])
      tr.appendChild(el("td", {class: cls(v)}, fmt(v)));
    tb.appendChild(tr);
  }
  const charts = $("#model-charts");
  const withMetric = models.filter((m) => m.history.length);
  while (charts.children.length > withMetric.length) charts.lastChild.remove();
  withMetric.forEach((m, i) => {
    let div = charts.children[i];
    if (!div) {
      div = el("div", {class: "panel model-panel"});
      div.appendChild(el("h2")); div.appendChild(el("svg", {class: "chart"}));
      charts.appendChild(div);
    }
    div.firstChild.textContent = `${m.metric} of ${m.id}`;
    lineChart(div.children[1], m.history.map((p) => p[0]), [{name: m.metric, values: m.history.map((p) => p[1])}],
      {xfmt: (x) => `${Math.round(x)} s`, digits: 3});
  });
}

function renderPanels(panels) {
  const box = $("#panels");
  while (box.children.length > panels.length) box.lastChild.remove();
  panels.forEach((p, i) => {
    let div = box.children[i];
    if (!div) {
      div = el("div", {class: `panel ${p.kind}-panel`, id: `panel-${i}`});
      div.appendChild(el("h2", {}, p.title));
      div.appendChild(p.kind === "table" ? el("div", {class: "tablewrap"}) : el("svg", {class: "chart"}));
      div.appendChild(el("div", {class: "err"}));
      box.appendChild(div);
    }
    div.lastChild.textContent = p.error || "";
    const body = div.children[1];
    if (p.kind === "table") {
      let t = body.firstChild; if (!t) { t = el("table"); body.appendChild(t); }
      fillTable(t, p.columns, p.rows);
      return;
    }
    const xi = p.columns.indexOf(p.x), yis = p.y.map((c) => p.columns.indexOf(c));
    if (xi < 0 || yis.some((j) => j < 0)) { lineChart(body, [], []); return; }
    if (p.kind === "bar") barChart(body, p.rows.map((r) => r[xi]), p.rows.map((r) => r[yis[0]]));
    else {
      const xs = p.rows.map((r) => typeof r[xi] === "string" ? Date.parse(r[xi]) / 1000 : r[xi]);
      const xfmt = typeof p.rows[0]?.[xi] === "string" ? (x) => new Date(x * 1000).toISOString().slice(11, 16) : undefined;
      lineChart(body, xs, p.y.map((c, k) => ({name: c, values: p.rows.map((r) => r[yis[k]])})), {xfmt});
    }
  });
}

function renderTables(tables) {
  const box = $("#tables");
  $("#table-names").textContent = Object.keys(tables).join(", ") || "none yet";
  for (const [name, t] of Object.entries(tables)) {
    let div = $(`#live-${name}`);
    if (!div) {
      div = el("div", {class: "panel", id: `live-${name}`});
      div.appendChild(el("h2", {}, `Live table: ${name}`));
      div.appendChild(el("p", {class: "hint"}));
      const wrap = el("div", {class: "tablewrap"}); wrap.appendChild(el("table", {id: `table-${name}`}));
      div.appendChild(wrap); box.appendChild(div);
    }
    div.querySelector(".hint").textContent = `${fmt(t.total)} rows published; ${fmt(t.kept)} kept` + (t.key ? ` (latest per ${t.key.join(", ")})` : " (latest)") + `; newest first`;
    fillTable($(`#table-${name}`), t.columns, t.rows);
  }
}

// -- SQL -------------------------------------------------------------------------------------
async function runSql() {
  const info = $("#sql-info"), out = $("#sql-result");
  info.textContent = "running…"; info.className = "";
  const resp = await fetch("/api/sql", {method: "POST", body: $("#sql-text").value, headers: {"Content-Type": "text/plain"}});
  const data = await resp.json();
  if (!resp.ok) { info.textContent = data.error; info.className = "err"; out.replaceChildren(); return; }
  info.textContent = `${data.rows.length} rows${data.truncated ? " (truncated)" : ""} in ${(data.seconds * 1000).toFixed(1)} ms`;
  const t = el("table", {id: "sql-table"}); fillTable(t, data.columns, data.rows);
  const wrap = el("div", {class: "tablewrap"}); wrap.appendChild(t); out.replaceChildren(wrap);
}
$("#sql-run").addEventListener("click", runSql);

// -- live updates ----------------------------------------------------------------------------
function connect() {
  const es = new EventSource("/api/events");
  es.onmessage = (ev) => { try { render(JSON.parse(ev.data)); } catch (e) { console.error(e); } };
  es.onerror = () => { const st = $("#status"); if (st.textContent === "running") { st.textContent = "reconnecting"; st.className = "status waiting"; } };
}
connect();
