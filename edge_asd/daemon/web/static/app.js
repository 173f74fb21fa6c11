// edge-asd's page: plain JavaScript and SVG, no library and no network beyond this box.
"use strict";

const MAX_CLIPS = 50;
const SVG = "http://www.w3.org/2000/svg";
const machines = new Map();  // id -> {el, points, alerts, hours, summary, clips}
let retentionHours = 24;
let lostStream = false;
let melHz = null;  // the spectrograms' band edges in Hz, bottom to top (from /api/machines)

function fmt(v, digits) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits); }
function clock(t, secs) {
  return new Date(t * 1000).toLocaleTimeString([], secs ? {hour: "2-digit", minute: "2-digit", second: "2-digit"}
                                                         : {hour: "2-digit", minute: "2-digit"});
}
function when(t) { return new Date(t * 1000).toLocaleString([], {dateStyle: "short", timeStyle: "medium"}); }
function duration(s) {
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return d ? `${d} d ${h} h` : h ? `${h} h ${m} min` : `${m} min ${Math.floor(s % 60)} s`;
}
function hz(v) { return v >= 1000 ? `${(v / 1000).toFixed(v >= 10000 ? 0 : 1)} kHz` : `${Math.round(v)} Hz`; }
function bandText(b) { return `${hz(b.lo_hz)}–${hz(b.hi_hz)} ${b.z > 0 ? "louder" : "quieter"} (z ${b.z > 0 ? "+" : ""}${fmt(b.z, 1)})`; }
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
function text(tag, attrs, content, ns) { const e = el(tag, attrs, ns); e.textContent = content; return e; }
const api = id => `/api/machines/${encodeURIComponent(id)}`;

function panel(id) {
  const node = document.getElementById("machine-template").content.firstElementChild.cloneNode(true);
  node.id = `machine-${id}`;
  node.dataset.machine = id;
  node.querySelector(".name").textContent = id;
  const m = {id, el: node, points: [], alerts: [], hours: 0, summary: {}, clips: new Map(), pending: false};
  node.querySelectorAll(".range button").forEach(b => b.addEventListener("click", () => {
    node.querySelectorAll(".range button").forEach(o => o.classList.toggle("on", o === b));
    m.hours = Number(b.dataset.hours);
    draw(m);
  }));
  document.getElementById("machines").appendChild(node);
  machines.set(id, m);
  return m;
}

// --- the state badge and the latest clip -------------------------------------------------------
function badge(s) {
  const state = s.state || "normal";
  // The debouncer is counting: say so, rather than "normal" beside a score over the threshold.
  if (state === "normal" && s.anomalous && s.pending) return [`above threshold, alert after ${s.pending} more clip${s.pending > 1 ? "s" : ""}`, "counting"];
  if (state === "anomalous" && s.anomalous === false && s.pending) return [`anomalous; below threshold, clears after ${s.pending} more clip${s.pending > 1 ? "s" : ""}`, "anomalous"];
  return [state, state];
}

function showSummary(m, s) {
  Object.assign(m.summary, s);
  const st = m.el.querySelector(".state");
  const [label, cls] = badge(m.summary);
  st.textContent = label;
  st.className = `state ${cls}`;
  st.title = m.summary.detail || "";
  m.el.dataset.state = m.summary.state || "normal";
  m.el.querySelector(".v-ratio").textContent = fmt(m.summary.ratio, 2);
  m.el.querySelector(".v-score").textContent = fmt(m.summary.score, 3);
  m.el.querySelector(".v-dbfs").textContent = fmt(m.summary.dbfs, 1);
  m.el.querySelector(".v-ptarget").textContent = fmt(m.summary.p_target, 2);
  const drift = m.summary.drift;
  m.el.querySelector(".v-drift").textContent = drift && drift.ks !== undefined ? fmt(drift.ks, 2) : "–";
  m.el.querySelector(".nobands").hidden = m.summary.band_evidence !== false;
  const bands = m.summary.bands;
  m.el.querySelector(".v-bands").textContent = bands && bands.length ? `last clip: ${bands.map(bandText).join(", ")}` : "";
}

function addScore(m, p) {
  const last = m.points[m.points.length - 1];
  if (last && p.t <= last.t && p.seq === last.seq) return;
  m.points.push(p);
  m.el.dataset.lastSeq = p.seq;
  const cutoff = p.t - retentionHours * 3600;
  while (m.points.length && m.points[0].t < cutoff) m.points.shift();
  showSummary(m, {score: p.score, threshold: p.threshold, dbfs: p.dbfs, p_target: p.p_target, ratio: p.ratio,
                  bands: p.bands, anomalous: p.anomalous, pending: p.pending});
  schedule(m);
}

function schedule(m) {
  if (m.pending) return;
  m.pending = true;
  requestAnimationFrame(() => { m.pending = false; draw(m); });
}

// --- the chart -----------------------------------------------------------------------------------
function niceStep(span, n) {
  const raw = span / Math.max(1, n), p = Math.pow(10, Math.floor(Math.log10(raw)));
  return [1, 2, 2.5, 5, 10].map(k => k * p).find(s => s >= raw) || 10 * p;
}
const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];

function alertSpans(m, t1) {
  // From each change to "anomalous" until the next change to "normal" (or now).
  let open = null;
  const spans = [];
  for (const a of m.alerts) {
    if (a.state === "anomalous" && open === null) open = a.t;
    else if (a.state === "normal" && open !== null) { spans.push([open, a.t]); open = null; }
  }
  if (open !== null) spans.push([open, t1]);
  return spans;
}

function draw(m) {
  const svg = m.el.querySelector(".timeline");
  // Drawn in the SVG's own pixels (no stretching): text and lines keep their size on any screen.
  const W = Math.max(200, Math.round(svg.getBoundingClientRect().width) || 800), H = 220;
  const L = 44, R = 10, T = 10, B = 26, pw = W - L - R, ph = H - T - B;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const last = m.points.length ? m.points[m.points.length - 1].t : 0;
  let t0, t1;
  if (m.hours > 0) { t1 = Math.max(Date.now() / 1000, last); t0 = t1 - m.hours * 3600; }
  else if (m.points.length) {  // fit: the data's own span
    t0 = m.points[0].t; t1 = last;
    if (t1 - t0 < 60) { const c = (t0 + t1) / 2; t0 = c - 30; t1 = c + 30; }
  } else { t1 = Date.now() / 1000; t0 = t1 - 3600; }
  const pts = m.points.filter(p => p.t >= t0 && p.t <= t1);
  svg.dataset.points = pts.length;
  // The ratio scale where the bundle gives one: 0 the median normal, 1 the threshold, on every machine.
  const onRatio = pts.length > 0 && pts.every(p => p.ratio !== null && p.ratio !== undefined);
  svg.dataset.scale = onRatio ? "ratio" : "score";
  const val = p => onRatio ? p.ratio : p.score, thr = p => onRatio ? 1 : p.threshold;
  let lo = onRatio ? 0 : Infinity, hi = onRatio ? 1.2 : -Infinity;
  for (const p of pts) { lo = Math.min(lo, val(p), thr(p)); hi = Math.max(hi, val(p), thr(p)); }
  if (!pts.length) { lo = 0; hi = 1.2; }
  if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
  const span = hi - lo; lo -= 0.05 * span; hi += 0.05 * span;
  const x = t => L + ((t - t0) / (t1 - t0)) * pw;
  const y = v => T + (1 - (v - lo) / (hi - lo)) * ph;
  const add = (tag, attrs, content) => svg.appendChild(content === undefined ? el(tag, attrs, SVG) : text(tag, attrs, content, SVG));
  // grid and ticks
  const ys = niceStep(hi - lo, 5);
  for (let v = Math.ceil(lo / ys) * ys; v <= hi; v += ys) {
    add("line", {class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v)});
    add("text", {class: "tick-y", x: L - 4, y: y(v) + 4, "text-anchor": "end"}, fmt(v, ys < 0.1 ? 2 : ys < 1 ? 1 : 0));
  }
  const ts = TIME_STEPS.find(s => (t1 - t0) / s <= pw / 80) || 86400;
  const tz = new Date().getTimezoneOffset() * 60;  // ticks on the local clock's round times
  for (let t = Math.ceil((t0 - tz) / ts) * ts + tz; t <= t1; t += ts) {
    add("line", {class: "grid", x1: x(t), x2: x(t), y1: T, y2: T + ph});
    // a label at either edge is anchored inward, so that none is cut off
    const anchor = x(t) > W - R - 36 ? "end" : x(t) < L + 36 ? "start" : "middle";
    add("text", {class: "tick-x", x: x(t), y: H - 8, "text-anchor": anchor}, clock(t, ts < 60));
  }
  add("text", {class: "axis-title", x: L + 4, y: T + 12}, onRatio ? "ratio (0 typical normal, 1 threshold)" : "score");
  const spans = alertSpans(m, t1).filter(([, b]) => b >= t0);
  for (const [a, b] of spans) {
    const xa = x(Math.max(a, t0));
    add("rect", {class: "span", x: xa, y: T, width: Math.max(2, x(Math.min(b, t1)) - xa), height: ph});
  }
  svg.dataset.spans = spans.length;
  if (onRatio || !pts.length) add("line", {class: "threshold", x1: L, x2: W - R, y1: y(1), y2: y(1)});
  else add("polyline", {class: "threshold", points: pts.map(p => `${x(p.t).toFixed(1)},${y(p.threshold).toFixed(1)}`).join(" ")});
  const thY = y(pts.length ? thr(pts[pts.length - 1]) : 1);
  add("text", {class: "th-label", x: W - R - 4, y: thY - 4, "text-anchor": "end"}, "threshold");
  if (!pts.length) {
    add("text", {x: L + pw / 2, y: T + ph / 2, "text-anchor": "middle"}, "no scores in this window yet");
    return;
  }
  add("polyline", {class: "score", points: pts.map(p => `${x(p.t).toFixed(1)},${y(val(p)).toFixed(1)}`).join(" ")});
  if (pts.length <= 3000) {
    for (const p of pts) if (p.anomalous) add("circle", {class: "hit", cx: x(p.t), cy: y(val(p)), r: 2.5});
  }
}

// --- alerts --------------------------------------------------------------------------------------
function showAlerts(m, events) {
  const list = m.el.querySelector(".alerts");
  if (!events.length) { list.replaceChildren(text("li", {class: "empty"}, "none in the history")); return; }
  list.replaceChildren(...events.map(e => {
    const li = el("li", {class: e.cleared === null ? "open" : "cleared", "data-raised": e.raised, "data-cleared": e.cleared ?? ""});
    const head = text("div", {class: "when"}, e.cleared === null
      ? `raised ${when(e.raised)} · ongoing for ${duration(e.duration_s)}`
      : `raised ${when(e.raised)} · cleared ${clock(e.cleared, true)} · ${duration(e.duration_s)}`);
    const facts = text("div", {}, [
      e.peak_ratio !== null ? `peak ratio ${fmt(e.peak_ratio, 2)}` : e.peak_score !== null ? `peak score ${fmt(e.peak_score, 3)}` : null,
      `${e.anomalous_clips} clip${e.anomalous_clips === 1 ? "" : "s"} above threshold`,
      e.bands.length ? `bands: ${e.bands.map(bandText).join(", ")}` : null,
    ].filter(Boolean).join(" · "));
    li.append(head, facts);
    if (e.clips.length) {
      const links = el("div", {class: "links"});
      for (const name of e.clips.slice(0, 12)) {
        const a = text("a", {class: "cliplink", href: `#clip-${name}`}, clock(clipTime(name), true));
        links.appendChild(a);
      }
      li.appendChild(links);
    }
    return li;
  }));
}
function clipTime(name) {
  const s = name.slice(0, 19);  // 20260304T050607.890
  return Date.UTC(+s.slice(0, 4), +s.slice(4, 6) - 1, +s.slice(6, 8), +s.slice(9, 11), +s.slice(11, 13), +s.slice(13, 15)) / 1000;
}
async function loadAlerts(m) {
  const since = Date.now() / 1000 - retentionHours * 3600;
  showAlerts(m, (await getJSON(`${api(m.id)}/alerts?since=${since}`)).alerts);
}

// --- evidence clips: now against the nearest normal ------------------------------------------------
function hzFrac(v) {
  // The spectrogram's rows are mel bands: interpolate in the band-edge table the server sent.
  if (!melHz) return null;
  const n = melHz.length - 1;
  if (v <= melHz[0]) return 0;
  if (v >= melHz[n]) return 1;
  let i = 0;
  while (melHz[i + 1] < v) i++;
  return (i + (v - melHz[i]) / (melHz[i + 1] - melHz[i])) / n;
}

function spectrogram(src, alt, seconds, fullSeconds, bands) {
  const box = el("div", {class: "spec"});
  const img = el("img", {src, alt, loading: "lazy"});
  // One time scale for both: a 5 s reference is half as wide as a 10 s clip.
  img.style.width = `${(100 * seconds / fullSeconds).toFixed(2)}%`;
  box.appendChild(img);
  for (const f of [100, 500, 1000, 2000, 4000, 8000]) {
    const fr = hzFrac(f);
    if (fr === null || fr <= 0 || fr >= 1) continue;
    const t = text("span", {class: "hz"}, hz(f));
    t.style.bottom = `${(100 * fr).toFixed(1)}%`;
    box.appendChild(t);
  }
  const step = fullSeconds > 6 ? 2 : 1;
  for (let s = 0; s <= seconds + 1e-6; s += step) {
    const t = text("span", {class: "sec"}, `${s}`);
    t.style.left = `${(100 * s / fullSeconds).toFixed(2)}%`;
    box.appendChild(t);
  }
  box.appendChild(text("span", {class: "unit"}, "s"));
  for (const b of bands || []) {
    const a = hzFrac(b.lo_hz), z = hzFrac(b.hi_hz);
    if (a === null) continue;
    const mark = el("div", {class: `band ${b.z > 0 ? "up" : "down"}`, title: bandText(b)});
    mark.style.bottom = `${(100 * a).toFixed(1)}%`;
    mark.style.height = `${(100 * Math.max(z - a, 0.01)).toFixed(1)}%`;
    mark.appendChild(text("span", {}, `${b.z > 0 ? "+" : ""}${fmt(b.z, 0)}`));
    box.appendChild(mark);
  }
  return box;
}

function showClip(m, li, d) {
  const title = li.querySelector(".title");
  title.textContent = [`${d.t ? when(d.t) : d.name} · seq ${d.seq ?? "?"}`,
    d.ratio !== null && d.ratio !== undefined ? `ratio ${fmt(d.ratio, 2)}` : d.score !== null && d.score !== undefined ? `score ${fmt(d.score, 3)}` : null,
    d.bands && d.bands.length ? d.bands.map(bandText).join(", ") : null].filter(Boolean).join(" · ");
  const ref = d.reference;
  const full = Math.max(d.seconds || 10, ref ? ref.seconds : 0);
  const now = el("figure", {class: "now"});
  now.append(text("figcaption", {}, "now"), el("audio", {controls: "", preload: "metadata", src: d.wav}),
             spectrogram(d.png, `log-mel spectrogram of ${d.name}`, d.seconds || full, full, d.bands));
  const pair = el("div", {class: "pair"});
  pair.appendChild(now);
  if (ref) {
    const normal = el("figure", {class: "normal"});
    normal.append(text("figcaption", {}, `normal (reference ${ref.name}, ${ref.domain})`),
                  el("audio", {controls: "", preload: "metadata", src: ref.audio}),
                  spectrogram(ref.png, `log-mel spectrogram of the normal reference ${ref.name}`, ref.seconds, full, d.bands));
    pair.appendChild(normal);
  }
  li.querySelector(".pair")?.remove();
  li.appendChild(pair);
}

function addClip(m, c, front) {
  if (m.clips.has(c.name)) return;
  const list = m.el.querySelector(".clips");
  list.querySelector(".empty")?.remove();
  const li = el("li", {"data-name": c.name, id: `clip-${c.name}`});
  li.appendChild(text("div", {class: "title"}, `${c.t ? when(c.t) : c.name} · seq ${c.seq ?? "?"}`));
  if (front) list.prepend(li); else list.appendChild(li);
  m.clips.set(c.name, li);
  while (m.clips.size > MAX_CLIPS) {
    const oldest = list.lastElementChild;
    m.clips.delete(oldest.dataset.name);
    oldest.remove();
  }
  getJSON(`${api(m.id)}/clips/${encodeURIComponent(c.name)}`).then(d => showClip(m, li, d)).catch(() => showClip(m, li, c));
}

async function loadMachine(m) {
  const since = Date.now() / 1000 - retentionHours * 3600;
  const [h, c] = await Promise.all([getJSON(`${api(m.id)}/scores?since=${since}`), getJSON(`${api(m.id)}/clips`)]);
  m.points = []; m.alerts = h.alerts;
  for (const p of h.scores) addScore(m, p);
  const list = m.el.querySelector(".clips");
  if (!c.clips.length && !m.clips.size) list.replaceChildren(text("li", {class: "empty"}, "none saved"));
  for (const clip of c.clips) addClip(m, clip, false);
  draw(m);
  await loadAlerts(m);
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
  melHz = info.spectrogram ? info.spectrogram.mel_hz : null;
  document.getElementById("device").textContent = info.device_id;
  document.title = `edge-asd ${info.device_id}`;
  for (const s of info.machines) {
    const m = machines.get(s.id) || panel(s.id);
    showSummary(m, s);
  }
  await Promise.all(info.machines.map(s => loadMachine(machines.get(s.id))));
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
  on("alert", (d, m) => {
    if (!m) return;
    m.alerts.push({t: d.t, state: d.state});
    const src = m.summary.source_state;
    showSummary(m, {alert_state: d.state, state: src === "failing" || src === "silent" ? src : d.state});
    schedule(m);
    loadAlerts(m).catch(console.error);
  });
  on("state", (d, m) => m && showSummary(m, d));
  on("clip", (d, m) => m && addClip(m, d, true));
  es.addEventListener("health", e => showHealth(JSON.parse(e.data)));
}

let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => machines.forEach(draw), 100);
});

loadAll().then(listen).catch(err => {
  document.getElementById("machines").textContent = `cannot load: ${err.message}`;
});
