// edge-asd's page: plain JavaScript and SVG, no library and no network beyond this box.
"use strict";

const MAX_CLIPS = 50;
const SVG = "http://www.w3.org/2000/svg";
const machines = new Map();  // id -> {el, points, alerts, hours, summary, clips}
let retentionHours = 24;
let lostStream = false;

function fmt(v, digits) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits); }
function clock(t) { return new Date(t * 1000).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"}); }
function when(t) { return new Date(t * 1000).toLocaleString([], {dateStyle: "short", timeStyle: "medium"}); }
function duration(s) {
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return d ? `${d} d ${h} h` : h ? `${h} h ${m} min` : `${m} min ${Math.floor(s % 60)} s`;
}
async function getJSON(url) {
  const r = await fetch(url, {credentials: "same-origin", cache: "no-store"});
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  return r.json();
}
function el(tag, attrs, ns) {
  const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function panel(id) {
  const node = document.getElementById("machine-template").content.firstElementChild.cloneNode(true);
  node.id = `machine-${id}`;
  node.dataset.machine = id;
  node.querySelector(".name").textContent = id;
  const m = {el: node, points: [], alerts: [], hours: 6, summary: {}, clips: new Map(), pending: false};
  node.querySelectorAll(".range button").forEach(b => b.addEventListener("click", () => {
    node.querySelectorAll(".range button").forEach(o => o.classList.toggle("on", o === b));
    m.hours = Number(b.dataset.hours);
    draw(m);
  }));
  document.getElementById("machines").appendChild(node);
  machines.set(id, m);
  return m;
}

function showSummary(m, s) {
  Object.assign(m.summary, s);
  const st = m.el.querySelector(".state");
  const state = m.summary.state || "normal";
  st.textContent = state;
  st.className = `state ${state}`;
  st.title = m.summary.detail || "";
  m.el.dataset.state = state;
  m.el.querySelector(".v-score").textContent = fmt(m.summary.score, 3);
  m.el.querySelector(".v-dbfs").textContent = fmt(m.summary.dbfs, 1);
  m.el.querySelector(".v-ptarget").textContent = fmt(m.summary.p_target, 2);
  const drift = m.summary.drift;
  m.el.querySelector(".v-drift").textContent = drift && drift.ks !== undefined ? fmt(drift.ks, 2) : "–";
}

function addScore(m, p) {
  const last = m.points[m.points.length - 1];
  if (last && p.t <= last.t && p.seq === last.seq) return;
  m.points.push(p);
  m.el.dataset.lastSeq = p.seq;
  const cutoff = p.t - retentionHours * 3600;
  while (m.points.length && m.points[0].t < cutoff) m.points.shift();
  showSummary(m, {score: p.score, threshold: p.threshold, dbfs: p.dbfs, p_target: p.p_target});
  schedule(m);
}

function schedule(m) {
  if (m.pending) return;
  m.pending = true;
  requestAnimationFrame(() => { m.pending = false; draw(m); });
}

function draw(m) {
  const svg = m.el.querySelector(".timeline");
  const W = 800, H = 200, pad = 8;
  const last = m.points.length ? m.points[m.points.length - 1].t : 0;
  const t1 = Math.max(Date.now() / 1000, last), t0 = t1 - m.hours * 3600;
  const pts = m.points.filter(p => p.t >= t0);
  svg.replaceChildren();
  svg.dataset.points = pts.length;
  m.el.querySelector(".t0").textContent = clock(t0);
  m.el.querySelector(".t1").textContent = clock(t1);
  if (!pts.length) {
    const t = el("text", {x: W / 2, y: H / 2, "text-anchor": "middle"}, SVG);
    t.textContent = "no scores in this window yet";
    svg.appendChild(t);
    return;
  }
  let lo = Infinity, hi = -Infinity;
  for (const p of pts) { lo = Math.min(lo, p.score, p.threshold); hi = Math.max(hi, p.score, p.threshold); }
  if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
  const span = hi - lo; lo -= 0.08 * span; hi += 0.08 * span;
  const x = t => ((t - t0) / (t1 - t0)) * W;
  const y = v => pad + (1 - (v - lo) / (hi - lo)) * (H - 2 * pad);
  // Alert spans: from each change to "anomalous" until the next change to "normal" (or now).
  let open = null;
  const spans = [];
  for (const a of m.alerts) {
    if (a.state === "anomalous" && open === null) open = a.t;
    else if (a.state === "normal" && open !== null) { spans.push([open, a.t]); open = null; }
  }
  if (open !== null) spans.push([open, t1]);
  for (const [a, b] of spans) {
    if (b < t0) continue;
    svg.appendChild(el("rect", {class: "span", x: x(Math.max(a, t0)), y: 0, width: Math.max(2, x(b) - x(Math.max(a, t0))), height: H}, SVG));
  }
  svg.dataset.spans = spans.filter(([, b]) => b >= t0).length;
  const line = (key, cls) => svg.appendChild(el("polyline", {class: cls, points: pts.map(p => `${x(p.t).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" ")}, SVG));
  line("threshold", "threshold");
  line("score", "score");
  if (pts.length <= 3000) {
    for (const p of pts) if (p.anomalous) svg.appendChild(el("circle", {class: "hit", cx: x(p.t), cy: y(p.score), r: 2.5}, SVG));
  }
  const label = (v, yy) => { const t = el("text", {x: 4, y: yy}, SVG); t.textContent = fmt(v, 2); svg.appendChild(t); };
  label(hi, 14); label(lo, H - 4);
}

function addClip(m, c, front) {
  if (m.clips.has(c.name)) return;
  const list = m.el.querySelector(".clips");
  list.querySelector(".empty")?.remove();
  const li = el("li", {"data-name": c.name});
  const title = el("div");
  title.textContent = `${c.t ? when(c.t) : c.name} · seq ${c.seq ?? "?"}`;
  const audio = el("audio", {controls: "", preload: "metadata", src: c.wav});
  const img = el("img", {src: c.png, alt: `log-mel spectrogram of ${c.name}`, loading: "lazy"});
  li.append(title, audio, img);
  if (front) list.prepend(li); else list.appendChild(li);
  m.clips.set(c.name, li);
  while (m.clips.size > MAX_CLIPS) {
    const oldest = list.lastElementChild;
    m.clips.delete(oldest.dataset.name);
    oldest.remove();
  }
}

async function loadMachine(m, id) {
  const since = Date.now() / 1000 - retentionHours * 3600;
  const [h, c] = await Promise.all([getJSON(`/api/machines/${encodeURIComponent(id)}/scores?since=${since}`),
                                    getJSON(`/api/machines/${encodeURIComponent(id)}/clips`)]);
  m.points = []; m.alerts = h.alerts;
  for (const p of h.scores) addScore(m, p);
  const list = m.el.querySelector(".clips");
  if (!c.clips.length && !m.clips.size) list.replaceChildren(Object.assign(el("li", {class: "empty"}), {textContent: "none saved"}));
  for (const clip of c.clips) addClip(m, clip, false);
  draw(m);
}

function showHealth(h) {
  document.getElementById("h-uptime").textContent = duration(h.uptime_s);
  const b = document.getElementById("h-broker");
  b.textContent = h.connected ? "connected" : "not connected";
  b.className = h.connected ? "dot on" : "dot off";
  document.getElementById("h-outbox").textContent = h.outbox_depth ?? "–";
  document.getElementById("h-memory").textContent = h.rss_mb === null || h.rss_mb === undefined ? "–" : `${fmt(h.rss_mb, 0)} MB`;
  const ms = Object.values(h.machines || {});
  const lat = ms.map(m => m.latency_ms && m.latency_ms.median).filter(v => v !== null && v !== undefined);
  // A heartbeat with no clip in it has no latency: keep showing the last one measured.
  if (lat.length) document.getElementById("h-latency").textContent = `${fmt(Math.max(...lat), 0)} ms`;
  document.getElementById("h-overruns").textContent = ms.length ? ms.reduce((s, m) => s + (m.overruns || 0), 0) : "–";
}

async function loadAll() {
  const info = await getJSON("/api/machines");
  retentionHours = info.history_hours;
  document.getElementById("device").textContent = info.device_id;
  document.title = `edge-asd ${info.device_id}`;
  for (const s of info.machines) {
    const m = machines.get(s.id) || panel(s.id);
    showSummary(m, s);
  }
  await Promise.all(info.machines.map(s => loadMachine(machines.get(s.id), s.id)));
  showHealth(await getJSON("/api/health"));
}

function listen() {
  const live = document.getElementById("live");
  const es = new EventSource("/api/events");
  es.onopen = () => {
    live.className = "dot on";
    // After a lost stream, fetch what was missed rather than leave a gap.
    if (lostStream) { lostStream = false; loadAll().catch(console.error); }
  };
  es.onerror = () => { live.className = "dot off"; lostStream = true; };
  const on = (name, f) => es.addEventListener(name, e => { const d = JSON.parse(e.data); const m = machines.get(d.machine); f(d, m); });
  on("score", (d, m) => m && addScore(m, d));
  on("alert", (d, m) => { if (!m) return; m.alerts.push({t: d.t, state: d.state}); showSummary(m, {alert_state: d.state, state: m.summary.source_state === "failing" || m.summary.source_state === "silent" ? m.summary.source_state : d.state}); schedule(m); });
  on("state", (d, m) => m && showSummary(m, d));
  on("clip", (d, m) => m && addClip(m, d, true));
  es.addEventListener("health", e => showHealth(JSON.parse(e.data)));
}

loadAll().then(listen).catch(err => {
  document.getElementById("machines").textContent = `cannot load: ${err.message}`;
});
