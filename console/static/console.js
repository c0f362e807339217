// riverstream console: plain JavaScript, no library. Receives the state through server-sent
// events (/api/events) and draws it: model cards, SVG learning curves, the version timeline and
// history, operations, comparisons, graphs. Actions (only when the console has a token) are
// POSTed as JSON with the token in the X-Riverstream-Token header.
"use strict";

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
  "#17becf", "#bcbd22", "#7f7f7f"];
const SVG = "http://www.w3.org/2000/svg";
const page = {
  actions: false,
  token: "",
  curves: {},        // model -> [[labels, event_time, wall_time, samples, metrics], ...]
  colors: {},        // model -> colour, stable
  throughput: [],    // [time, value] of the last updates
  cards: {},         // model -> {card, info, form}
  last: null,
};

// -- DOM helpers (text only: data never becomes HTML) -----------------------------------------
function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function s(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function colorOf(model) {
  if (!(model in page.colors)) {
    page.colors[model] = COLORS[Object.keys(page.colors).length % COLORS.length];
  }
  return page.colors[model];
}

// -- numbers and times -------------------------------------------------------------------------
function niceTicks(lo, hi, count) {
  const span = hi - lo;
  const raw = span / Math.max(1, count);
  const magnitude = Math.pow(10, Math.floor(Math.log10(raw)));
  const err = raw / magnitude;
  const step = (err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1) * magnitude;
  const values = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    values.push(Number(v.toFixed(12)));
  }
  return { values, step };
}

function fmtTick(value, step) {
  const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  if (decimals === 0) return Math.round(value).toLocaleString("en-US");
  return value.toFixed(Math.min(decimals, 8));
}

function fmtNumber(value, digits = 4) {
  if (value === null || value === undefined || Number.isNaN(value)) return "n/a";
  if (Number.isInteger(value)) return value.toLocaleString("en-US");
  return Number(value).toPrecision(digits);
}

function fmtAge(seconds) {
  if (seconds < 0) seconds = 0;
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} d`;
}

function fmtTime(unix) {
  return new Date(unix * 1000).toLocaleTimeString("en-GB", { hour12: false });
}

function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1048576).toFixed(1)} MB`;
}

// -- a line chart in SVG -----------------------------------------------------------------------
function lineChart(series, { xLabel, yLabel, width = 620, height = 260 }) {
  const m = { l: 64, r: 14, t: 10, b: 38 };
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img" });
  const xs = [], ys = [];
  for (const one of series) {
    for (const [x, y] of one.points) {
      if (Number.isFinite(x) && Number.isFinite(y)) { xs.push(x); ys.push(y); }
    }
  }
  if (!xs.length) {
    svg.append(s("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "no points yet"));
    return svg;
  }
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { const pad = Math.abs(y0) * 0.01 || 1e-3; y0 -= pad; y1 += pad; }
  const pad = (y1 - y0) * 0.05;
  y0 -= pad; y1 += pad;
  const X = (x) => m.l + ((x - x0) / (x1 - x0)) * (width - m.l - m.r);
  const Y = (y) => height - m.b - ((y - y0) / (y1 - y0)) * (height - m.t - m.b);
  const xt = niceTicks(x0, x1, 6), yt = niceTicks(y0, y1, 5);
  for (const v of yt.values) {
    svg.append(s("line", { class: "grid", x1: m.l, x2: width - m.r, y1: Y(v), y2: Y(v) }));
    svg.append(s("text", { x: m.l - 6, y: Y(v) + 4, "text-anchor": "end" }, fmtTick(v, yt.step)));
  }
  for (const v of xt.values) {
    svg.append(s("line", { class: "grid", x1: X(v), x2: X(v), y1: m.t, y2: height - m.b }));
    svg.append(s("text", { x: X(v), y: height - m.b + 15, "text-anchor": "middle" },
      fmtTick(v, xt.step)));
  }
  svg.append(s("line", { class: "axis", x1: m.l, x2: width - m.r, y1: height - m.b, y2: height - m.b }));
  svg.append(s("line", { class: "axis", x1: m.l, x2: m.l, y1: m.t, y2: height - m.b }));
  svg.append(s("text", { x: (m.l + width - m.r) / 2, y: height - 4, "text-anchor": "middle" }, xLabel));
  svg.append(s("text", { x: 12, y: (m.t + height - m.b) / 2, "text-anchor": "middle",
    transform: `rotate(-90 12 ${(m.t + height - m.b) / 2})` }, yLabel));
  for (const one of series) {
    const pts = one.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    const line = s("polyline", {
      class: "series", stroke: one.color,
      points: pts.map(([x, y]) => `${X(x).toFixed(1)},${Y(y).toFixed(1)}`).join(" "),
      "data-model": one.name, "data-points": pts.length,
    });
    line.append(s("title", {}, `${one.name}: ${pts.length} points`));
    svg.append(line);
  }
  return svg;
}

// -- sections ----------------------------------------------------------------------------------
function renderModels(models, now) {
  const box = document.getElementById("models");
  if (!models.length) return;
  const seen = new Set();
  for (const model of models) {
    seen.add(model.name);
    let entry = page.cards[model.name];
    if (!entry) {
      const info = h("div", { class: "info" });
      const card = h("article", { class: "card model", "data-model": model.name }, info);
      entry = page.cards[model.name] = { card, info, form: null };
      box.querySelector("p.muted")?.remove();
      box.append(card);
    }
    entry.info.replaceChildren(...modelInfo(model, now));
    if (page.actions) {
      if (!entry.form) { entry.form = actionForm(model.name); entry.card.append(entry.form.node); }
      entry.form.update(model);
    }
  }
  for (const [name, entry] of Object.entries(page.cards)) {
    if (!seen.has(name)) { entry.card.remove(); delete page.cards[name]; }
  }
}

function modelInfo(model, now) {
  const title = h("h3", {}, h("span", { class: "swatch", style: null }), model.name);
  title.firstChild.style.background = colorOf(model.name);
  if (model.error) return [title, h("p", { class: "muted" }, model.error)];
  const served = model.served;
  title.append(h("span", { class: "badge", "data-serving": model.serving ?? "" },
    model.serving ? `serving v${model.serving}` : "nothing served"));
  if (model.promoted) title.append(h("span", { class: "badge promoted" }, `promoted v${model.promoted}`));
  if (model.pinned) title.append(h("span", { class: "badge pinned" }, `pinned v${model.pinned}`));
  const facts = h("dl", { class: "facts" });
  const add = (label, value) => facts.append(h("dt", {}, label), h("dd", {}, value));
  if (served) {
    add("model", `${served.spec} (${served.kind})`);
    add("age", `${fmtAge(now - served.created_at)} (v${served.version})`);
    add("samples", fmtNumber(served.samples));
    for (const [name, value] of Object.entries(served.metrics)) add(name, fmtNumber(value));
    add("size", fmtBytes(served.size));
  }
  add("latest", model.latest ? `v${model.latest} (${model.versions.length} versions kept)` : "none");
  return [title, facts];
}

function actionForm(name) {
  const version = h("select", { "aria-label": "version", "data-role": "version" });
  const reason = h("input", { type: "text", placeholder: "reason (required for a rollback)",
    "aria-label": "reason", "data-role": "reason" });
  const resume = h("select", { "aria-label": "resume", "data-role": "resume" },
    h("option", { value: "skip" }, "resume: skip"), h("option", { value: "replay" }, "resume: replay"));
  const button = (label, action, extra) =>
    h("button", { type: "button", "data-action": action, class: extra || null,
      onclick: () => runAction(name, action, { version, reason, resume }) }, label);
  const node = h("div", { class: "actions" }, version,
    button("Promote", "promote"), button("Pin", "pin"), button("Unpin", "unpin"),
    resume, button("Roll back", "rollback", "danger"), reason);
  return {
    node,
    update(model) {
      const wanted = model.versions.map((v) => String(v.version));
      const current = [...version.options].map((o) => o.value);
      if (wanted.join() !== current.join()) {
        const chosen = version.value;
        version.replaceChildren(...model.versions.map((v) => h("option", { value: v.version },
          `v${v.version}${v.serving ? " (serving)" : ""} · ${fmtNumber(v.samples)} samples`)));
        if (wanted.includes(chosen)) version.value = chosen;
      }
      for (const b of node.querySelectorAll("button")) b.disabled = !page.token;
    },
  };
}

async function runAction(name, action, { version, reason, resume }) {
  const body = { reason: reason.value };
  if (action === "promote" || action === "pin") body.version = Number(version.value);
  if (action === "rollback") { body.to = Number(version.value); body.resume = resume.value; }
  let response, data = {};
  try {
    response = await fetch(`/api/models/${encodeURIComponent(name)}/${action}`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Riverstream-Token": page.token },
      body: JSON.stringify(body),
    });
    data = await response.json();
  } catch (error) {
    toast(`${name}: ${action} failed: ${error}`, true);
    return;
  }
  if (response.ok) toast(`${name}: ${action} done; serving v${data.serving}`, false);
  else toast(`${name}: ${action} refused: ${JSON.stringify(data.detail)}`, true);
}

function toast(text, bad) {
  const node = document.getElementById("toast");
  node.textContent = text;
  node.className = bad ? "toast bad" : "toast";
  node.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { node.hidden = true; }, 6000);
}

function mergeCurves(update) {
  for (const [model, change] of Object.entries(update || {})) {
    const points = change.reset ? [] : (page.curves[model] || []);
    page.curves[model] = points.concat(change.points);
  }
}

function renderCurves(models, traceEvery) {
  const box = document.getElementById("curves");
  const names = models.map((m) => m.name).filter((n) => (page.curves[n] || []).length);
  const note = document.getElementById("curves-note");
  if (!names.length) {
    note.textContent = traceEvery ? "" : "(tracing is off: RIVERSTREAM_TRACE_EVERY_LABELS=0)";
    return;
  }
  const sample = page.curves[names[0]];  // the learner's spacing, whatever this console's setting
  const every = sample.length > 1 ? sample[sample.length - 1][0] - sample[sample.length - 2][0] : null;
  note.textContent = every ? `(a point every ${every} labels, written with each snapshot)` : "";
  const metrics = [...new Set(names.flatMap((n) => {
    const pts = page.curves[n];
    return Object.keys(pts[pts.length - 1][4]);
  }))].sort();
  const boxes = [];
  for (const metric of metrics) {
    const series = names.filter((n) => page.curves[n].some((p) => metric in p[4])).map((n) => ({
      name: n, color: colorOf(n),
      points: page.curves[n].filter((p) => p[4][metric] !== null && metric in p[4])
        .map((p) => [p[0], p[4][metric]]),
    }));
    const legend = h("div", { class: "legend" }, series.map((one) => {
      const last = one.points.length ? one.points[one.points.length - 1][1] : null;
      const swatch = h("span", { class: "swatch" });
      swatch.style.background = one.color;
      return h("span", { "data-legend": one.name }, swatch,
        `${one.name}: ${fmtNumber(last)} (${one.points.length} points)`);
    }));
    boxes.push(h("div", { class: "chart-box", "data-metric": metric }, h("h3", {}, metric),
      lineChart(series, { xLabel: "labels learned", yLabel: metric }), legend));
  }
  box.replaceChildren(...boxes);
}

function renderTimeline(models, now) {
  const entries = models.flatMap((m) => (m.history || []).map((e) => ({ ...e, model: m.name })));
  const created = models.flatMap((m) => (m.versions || []).map((v) => ({ model: m.name, ...v })));
  const times = entries.map((e) => e.time).concat(created.map((v) => v.created_at));
  const box = document.getElementById("timeline");
  if (!times.length) { box.replaceChildren(h("p", { class: "muted" }, "No version yet.")); }
  else {
    const width = 1100, row = 34, m = { l: 90, r: 20, t: 8, b: 26 };
    const height = m.t + m.b + row * models.length;
    const t0 = Math.min(...times), t1 = Math.max(now, ...times);
    const X = (t) => m.l + ((t - t0) / Math.max(1, t1 - t0)) * (width - m.l - m.r);
    const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img" });
    models.forEach((model, i) => {
      const y = m.t + row * i + row / 2;
      svg.append(s("text", { x: m.l - 8, y: y + 4, "text-anchor": "end" }, model.name));
      svg.append(s("line", { class: "grid", x1: m.l, x2: width - m.r, y1: y, y2: y }));
      for (const v of created.filter((c) => c.model === model.name)) {
        const tick = s("line", { x1: X(v.created_at), x2: X(v.created_at), y1: y - 5, y2: y + 5,
          stroke: colorOf(model.name), "stroke-width": 1 });
        tick.append(s("title", {}, `v${v.version} written ${fmtTime(v.created_at)}`));
        svg.append(tick);
      }
      let lastLabel = -Infinity;  // labels of marks closer than 26 px are left to the tooltips
      for (const e of entries.filter((x) => x.model === model.name).sort((a, b) => a.time - b.time)) {
        const mark = marker(e, X(e.time), y);
        mark.append(s("title", {}, `${e.action} ${e.from ?? "-"} → ${e.to ?? "-"} by ${e.by}: ${e.reason}`));
        svg.append(mark);
        if (X(e.time) - lastLabel >= 26 || e.action === "rollback") {
          svg.append(s("text", { x: X(e.time), y: y - 9, "text-anchor": "middle" }, `v${e.to ?? "-"}`));
          lastLabel = X(e.time);
        }
      }
    });
    const ticks = niceTicks(0, Math.max(1, t1 - t0), 6);
    const label = (t) => ticks.step < 1 ? `${fmtTime(t)}.${Math.floor((t % 1) * 10)}` : fmtTime(t);
    for (const v of ticks.values) {
      svg.append(s("text", { x: X(t0 + v), y: height - 6, "text-anchor": "middle" }, label(t0 + v)));
    }
    box.replaceChildren(svg);
  }
  const body = document.querySelector("#history tbody");
  entries.sort((a, b) => b.time - a.time);
  body.replaceChildren(...entries.slice(0, 60).map((e) => h("tr",
    { "data-action": e.action, "data-model": e.model },
    h("td", {}, fmtTime(e.time)), h("td", {}, e.model), h("td", {}, e.action),
    h("td", {}, `${e.from ?? "-"} → ${e.to ?? "-"}`), h("td", {}, e.by),
    h("td", { "data-role": "reason" }, e.reason || ""), h("td", {}, e.resume || ""))));
}

function marker(entry, x, y) {
  const action = entry.action;
  if (action === "rollback") {
    return s("path", { d: `M${x} ${y - 7}L${x + 7} ${y}L${x} ${y + 7}L${x - 7} ${y}Z`, fill: "#c62828",
      "data-action": action });
  }
  if (action === "pin" || action === "unpin") {
    return s("rect", { x: x - 5, y: y - 5, width: 10, height: 10,
      fill: action === "pin" ? "#b07800" : "#9aa4b5", "data-action": action });
  }
  const fill = action === "promote" ? "#2e7d32" : action === "auto-promote" ? "#8fc79a" : "#9aa4b5";
  return s("circle", { cx: x, cy: y, r: 5, fill, "data-action": action });
}

function renderOps(ops, now) {
  if (!ops) return;
  if (ops.throughput !== null && ops.throughput !== undefined) {
    page.throughput.push([now, ops.throughput]);
    page.throughput = page.throughput.slice(-120);
  }
  const card = (title, value, detail, extra) => h("div", { class: "card", "data-ops": title },
    h("h3", {}, title), h("div", { class: "big" }, value), detail ? h("div", { class: "muted" }, detail) : null,
    extra || null);
  const unknown = "n/a";
  const spark = page.throughput.length > 1 ? lineChart(
    [{ name: "throughput", color: "#1f5fbf", points: page.throughput.map(([t, v]) => [t - now, v]) }],
    { xLabel: "seconds ago", yLabel: ops.throughput_unit, width: 360, height: 150 }) : null;
  const dead = ops.dead_letters;
  const drift = ops.drift;
  const sum = (o) => Object.values(o).reduce((a, b) => a + b, 0);
  document.getElementById("ops").replaceChildren(
    card("Throughput", ops.throughput === null ? unknown : `${fmtNumber(ops.throughput, 3)} ${ops.throughput_unit}`,
      ops.consumed !== null ? `${fmtNumber(ops.consumed)} events read` : null, spark),
    card("Consumer lag", ops.lag === null ? unknown : `${fmtNumber(ops.lag)} messages`,
      ops.watermark_delay !== null && ops.watermark_delay !== undefined
        ? `watermark ${fmtNumber(ops.watermark_delay, 3)} behind` : null),
    card("Dead letters", dead ? fmtNumber(sum(dead)) : unknown,
      dead ? Object.entries(dead).map(([k, v]) => `${k}: ${fmtNumber(v)}`).join(", ") || "none" : null),
    card("Drift detections", drift ? fmtNumber(sum(drift)) : unknown,
      drift ? Object.entries(drift).map(([k, v]) => `${k}: ${fmtNumber(v)}`).join(", ") || "none" : null),
    card("Learner", ops.learner_up === null ? unknown : ops.learner_up ? "up" : "down",
      ops.redis_up === null || ops.redis_up === undefined ? null : `Redis ${ops.redis_up ? "up" : "down"} for the learner`),
  );
  document.getElementById("ops-source").textContent = `Source: ${ops.source}.`;
}

function renderComparisons(rows) {
  document.getElementById("comparisons-section").hidden = !rows.length;
  document.querySelector("#comparisons tbody").replaceChildren(...rows.map((c) => h("tr", {},
    h("td", {}, c.champion), h("td", {}, c.challenger), h("td", {}, fmtNumber(c.n)),
    h("td", {}, fmtNumber(c.loss_a)), h("td", {}, fmtNumber(c.loss_b)),
    h("td", {}, `${fmtNumber(c.difference)} [${fmtNumber(c.lower)}, ${fmtNumber(c.upper)}]`),
    h("td", {}, c.decision), h("td", {}, `v${c.version}`))));
}

function renderGraphs(graphs) {
  document.getElementById("graphs-none").hidden = graphs.length > 0;
  document.querySelector("#graphs tbody").replaceChildren(...graphs.map((g) => h("tr",
    { "data-graph": g.name }, h("td", {}, g.name), h("td", {}, g.promoted ? `v${g.promoted}` : "not served"),
    h("td", {}, g.versions), h("td", {}, g.models.join(", ")))));
}

function setStatus(text, live) {
  const node = document.getElementById("status");
  node.textContent = text;
  node.className = live ? "status live" : "status down";
}

function apply(data) {
  page.last = data;
  if (data.actions !== page.actions) {
    page.actions = data.actions;
    document.getElementById("token-bar").hidden = !page.actions;
  }
  document.getElementById("prefix").textContent = `prefix ${data.prefix}`;
  document.getElementById("mode").textContent = page.actions ? "actions enabled" : "read-only";
  mergeCurves(data.curves);
  renderModels(data.models, data.time);
  renderCurves(data.models, data.trace_every);
  renderTimeline(data.models, data.time);
  renderOps(data.ops, data.time);
  renderComparisons(data.comparisons || []);
  renderGraphs(data.graphs || []);
  setStatus(`live · updated ${fmtTime(data.time)}`, true);
}

function connect() {
  const events = new EventSource("/api/events");
  events.addEventListener("state", (event) => apply(JSON.parse(event.data)));
  events.addEventListener("outage", (event) =>
    setStatus(`Redis unreachable: ${JSON.parse(event.data).detail}`, false));
  events.addEventListener("error", () => setStatus("reconnecting…", false));
}

document.getElementById("token").addEventListener("input", (event) => {
  page.token = event.target.value;
  for (const b of document.querySelectorAll(".actions button")) b.disabled = !page.token;
});
connect();
