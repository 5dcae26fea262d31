// Vigil's dashboard: one page, no framework, every figure from the box's own API (the same
// routes curl uses) and live updates from GET /v1/events. Read-only unless an admin token is
// given; the token lives in sessionStorage (this tab only).
"use strict";

const state = {
  // Live readings per "detector/stream": the last CHART_POINTS, oldest first.
  series: new Map(),
  rates: new Map(),
  counters: null,
  view: null,
  // The stream view's alarm records (for the settlements on its chart).
  streamAlarms: [],
};
const CHART_POINTS = 600;

// ---- small helpers -------------------------------------------------------------------

/** An element: h("td", {class: "num"}, "text", child, …). Text is never parsed as HTML. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const svgNS = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(svgNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function time(t) {
  if (t === null || t === undefined) return "–";
  const d = new Date(t * 1000);
  return d.toLocaleString(undefined, { hour12: false });
}
function num(x, digits = 2) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (Number.isInteger(x) && Math.abs(x) < 1e9) return String(x);
  const a = Math.abs(x);
  return a !== 0 && (a >= 1e5 || a < 1e-2) ? x.toExponential(2) : x.toFixed(digits);
}
function route(...parts) { return "#/" + parts.map(encodeURIComponent).join("/"); }

/** A state as text and colour: [label, class]. */
function pill(text, kind) { return h("span", { class: "pill " + kind }, text); }
const ALARM_KIND = {
  unacknowledged: "bad", returned_unacknowledged: "warn", acknowledged: "warn", cleared: "ok",
};
const ALARM_ORDER = { unacknowledged: 0, returned_unacknowledged: 1, acknowledged: 2, cleared: 3 };

function say(text, error = false) {
  const m = document.getElementById("message");
  m.textContent = text;
  m.className = error ? "error" : "info";
  m.hidden = !text;
  if (text && !error) setTimeout(() => { if (m.textContent === text) m.hidden = true; }, 5000);
}

// ---- the API ---------------------------------------------------------------------------

function token() { return sessionStorage.getItem("vigil-token") || ""; }
function headers(extra) {
  const out = Object.assign({}, extra);
  if (token()) out.Authorization = "Bearer " + token();
  return out;
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || "HTTP " + status);
    this.status = status;
    this.code = body && body.code;
  }
}

async function api(path, options = {}) {
  const init = { method: options.method || "GET", headers: headers(options.body ? { "Content-Type": "application/json" } : {}) };
  if (options.body !== undefined) init.body = JSON.stringify(options.body);
  const r = await fetch(path, init);
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = text; }
  if (!r.ok) {
    const err = new ApiError(r.status, body);
    if (r.status === 401 || r.status === 403) {
      askToken(init.method === "GET"
        ? "This box needs a token to show this (the read or admin token)."
        : "This action needs the admin token.");
    }
    throw err;
  }
  return body;
}

/** Runs an action; says what happened, asks for the admin token when refused. */
async function act(what, fn) {
  try {
    await fn();
    say(what + ": done");
    await render();
  } catch (e) {
    say(what + " failed: " + e.message + (e.code ? " (" + e.code + ")" : ""), true);
  }
}

function askToken(why) {
  const form = document.getElementById("token-form");
  document.getElementById("token-why").textContent = why;
  form.hidden = false;
  document.getElementById("token-input").focus();
}

// ---- live events -----------------------------------------------------------------------

function setLive(on) {
  const el = document.getElementById("live");
  el.textContent = on ? "live" : "offline";
  el.className = "pill " + (on ? "ok" : "off");
}

/** Reads GET /v1/events (fetch, so the token goes in a header), reconnecting with backoff. */
async function listen() {
  let delay = 500;
  for (;;) {
    try {
      const r = await fetch("/v1/events", { headers: headers({ Accept: "text/event-stream" }) });
      if (r.status === 401 || r.status === 403) {
        askToken("This box needs a token to show live updates (the read or admin token).");
        throw new Error("refused");
      }
      if (!r.ok || !r.body) throw new Error("HTTP " + r.status);
      setLive(true);
      delay = 500;
      refreshSoon();
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n/g, "\n");
        let at;
        while ((at = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, at);
          buffer = buffer.slice(at + 2);
          const event = parseEvent(block);
          if (event) onEvent(event.name, event.data);
        }
      }
    } catch (_) { /* reconnect below */ }
    setLive(false);
    await sleep(delay);
    delay = Math.min(delay * 2, 15000);
  }
}

/** One Server-Sent Event block: {name, data} (data parsed as JSON), or null for a comment. */
function parseEvent(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  try { return { name, data: JSON.parse(data.join("\n")) }; } catch (_) { return null; }
}

function onEvent(name, data) {
  if (name === "hello") {
    document.getElementById("box").textContent = "box " + data.box;
  } else if (name === "observations") {
    for (const o of data.observations || []) addPoint(data.detector, o);
    if (state.view && state.view.kind === "stream") drawChart();
  } else if (name === "alarms" || name === "models" || name === "lagged") {
    refreshSoon();
  }
}

function addPoint(detector, o) {
  const key = detector + "/" + o.stream;
  let list = state.series.get(key);
  if (!list) { list = []; state.series.set(key, list); }
  if (list.length && list[list.length - 1].id >= o.id) return;
  list.push(o);
  if (list.length > CHART_POINTS) list.splice(0, list.length - CHART_POINTS);
}

let refreshTimer = null;
function refreshSoon() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => { refreshTimer = null; render(); }, 150);
}

// ---- readings per second from /metrics ---------------------------------------------------

async function pollRates() {
  for (;;) {
    try {
      const r = await fetch("/metrics", { headers: headers() });
      if (r.ok) {
        const now = Date.now() / 1000;
        const counts = new Map();
        for (const line of (await r.text()).split("\n")) {
          const m = /^vigil_observations_total\{detector="((?:[^"\\]|\\.)*)"\} ([0-9.e+]+)$/.exec(line);
          if (m) counts.set(m[1].replace(/\\(.)/g, "$1"), Number(m[2]));
        }
        if (state.counters) {
          const dt = now - state.counters.at;
          for (const [d, c] of counts) {
            const before = state.counters.counts.get(d) || 0;
            state.rates.set(d, Math.max(0, (c - before) / dt));
          }
        }
        state.counters = { at: now, counts };
        if (state.view && state.view.kind === "overview") drawRates();
      }
    } catch (_) { /* next time */ }
    await sleep(5000);
  }
}

function drawRates() {
  for (const el of document.querySelectorAll("[data-rate]")) {
    const r = state.rates.get(el.dataset.rate);
    el.textContent = r === undefined ? "–" : num(r, 1);
  }
}

// ---- views -------------------------------------------------------------------------------

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "stream" && parts.length >= 3) return { kind: "stream", detector: parts[1], stream: parts.slice(2).join("/") };
  if (parts[0] === "alarms") return { kind: "alarms" };
  if (parts[0] === "models") return { kind: "models", detector: parts[1] };
  if (parts[0] === "runs") return { kind: "runs", detector: parts[1] };
  return { kind: "overview" };
}

let rendering = Promise.resolve();
function render() {
  rendering = rendering.then(renderNow, renderNow);
  return rendering;
}

async function renderNow() {
  const view = parseRoute();
  const changed = !state.view || JSON.stringify(view) !== JSON.stringify(state.view);
  state.view = view;
  for (const a of document.querySelectorAll("nav a")) {
    const target = a.getAttribute("href").slice(2).split("/")[0] || "";
    const here = view.kind === "overview" ? "" : view.kind === "stream" ? "" : view.kind;
    if (target === here) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  const main = document.getElementById("view");
  let content;
  try {
    if (view.kind === "stream") content = await streamView(view);
    else if (view.kind === "alarms") content = await alarmsView();
    else if (view.kind === "models") content = await modelsView(view);
    else if (view.kind === "runs") content = await runsView(view);
    else content = await overview();
  } catch (e) {
    content = h("div", {}, h("h1", {}, "Cannot load this view"), h("p", {}, e.message));
  }
  // Keep the reader's place, focus and what they were typing when only the figures changed.
  const focused = document.activeElement && document.activeElement.id;
  const typed = changed ? [] : [...main.querySelectorAll("input[id]")].map((i) => [i.id, i.value]);
  main.replaceChildren(content);
  for (const [id, value] of typed) {
    const input = document.getElementById(id);
    if (input) input.value = value;
  }
  if (view.kind === "stream") drawChart();
  if (view.kind === "overview") drawRates();
  if (changed) main.focus();
  else if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
}

async function overview() {
  const [list, alarms, ready] = await Promise.all([
    api("/v1/detectors"), api("/v1/alarms?state=active&limit=1000"), api("/readyz").catch((e) => ({ status: e.status === 503 ? "not_ready" : "unknown", log: { state: "failing", cause: e.message } })),
  ]);
  const streams = await Promise.all(list.detectors.map((d) =>
    api("/v1/detectors/" + encodeURIComponent(d.name) + "/streams").catch(() => ({ streams: [] }))));
  const active = alarms.alarms;
  const log = ready.log || {};
  const logKind = log.state === "ok" ? "ok" : log.state === "low_space" ? "warn" : "bad";
  const totalStreams = streams.reduce((n, s) => n + s.streams.length, 0);
  const cards = h("div", { class: "cards" },
    h("div", { class: "card" }, h("div", { class: "muted" }, "Detectors"), h("div", { class: "big" }, list.detectors.length)),
    h("div", { class: "card" }, h("div", { class: "muted" }, "Streams"), h("div", { class: "big" }, totalStreams)),
    h("div", { class: "card" }, h("div", { class: "muted" }, "Streams in alarm"), h("div", { class: "big", id: "in-alarm" }, active.filter((a) => a.active).length)),
    h("div", { class: "card" }, h("div", { class: "muted" }, "Box"), h("div", {}, pill(ready.status, ready.status === "ready" ? "ok" : ready.status === "degraded" ? "warn" : "bad"))),
    h("div", { class: "card" }, h("div", { class: "muted" }, "Log and disk"),
      h("div", {}, pill(log.state || "unknown", logKind)),
      log.free_bytes !== undefined ? h("div", { class: "muted" }, (log.free_bytes / 2 ** 20).toFixed(0) + " MiB free") : null,
      log.cause ? h("div", { class: "muted" }, log.cause) : null),
    ready.uplink ? h("div", { class: "card" }, h("div", { class: "muted" }, "MQTT uplink"),
      h("div", {}, pill(ready.uplink.state, ready.uplink.state === "connected" ? "ok" : "warn")),
      h("div", { class: "muted" }, ready.uplink.outbox_messages + " queued")) : null);

  const alarmRows = active.length ? alarmTable(active, false) : h("p", { class: "muted", id: "no-alarms" }, "No stream is in alarm.");
  const detectorRows = list.detectors.map((d, i) => {
    const theirs = streams[i].streams;
    const warming = theirs.filter((s) => s.status === "warming_up").length;
    const scoring = theirs.filter((s) => s.status === "scoring").length;
    const alarmed = theirs.filter((s) => s.alarm).length;
    return h("tr", {},
      h("td", {}, h("a", { href: route("models", d.name) }, d.name)),
      h("td", {}, d.serving.kind === "statistical" ? "statistical (" + (d.serving.detector || "") + ")" : d.serving.version),
      h("td", {}, pill(d.state, d.state === "ok" ? "ok" : "warn"), d.degraded_reason ? h("div", { class: "muted" }, d.degraded_reason) : null),
      h("td", { class: "num" }, scoring), h("td", { class: "num" }, warming),
      h("td", { class: "num" }, alarmed ? pill(alarmed + " in alarm", "bad") : "0"),
      h("td", { class: "num", "data-rate": d.name }, "–"));
  });
  const streamRows = [];
  list.detectors.forEach((d, i) => {
    for (const st of streams[i].streams) {
      const status = st.status === "warming_up" && st.warming_up
        ? "warming up " + st.warming_up.have + "/" + st.warming_up.need : st.status.replace("_", " ");
      streamRows.push(h("tr", {},
        h("td", {}, d.name),
        h("td", {}, h("a", { href: route("stream", d.name, st.stream) }, st.stream)),
        h("td", {}, status),
        h("td", {}, st.alarm ? pill("in alarm", "bad") : pill("normal", "ok")),
        h("td", { class: "num" }, st.readings),
        h("td", {}, time(st.last_seen))));
    }
  });
  return h("div", {},
    h("h1", {}, "Overview"), cards,
    h("h2", {}, "Active alarms"), alarmRows,
    h("h2", {}, "Detectors"),
    list.detectors.length ? h("table", {},
      h("thead", {}, h("tr", {}, ["Detector", "Serving", "State", "Streams scoring", "Warming up", "In alarm", "Readings/s"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, detectorRows)) : h("p", { class: "muted" }, "No detector yet: PUT /v1/detectors/{name} or vigil detectors put."),
    h("h2", {}, "Streams"),
    streamRows.length ? h("table", {},
      h("thead", {}, h("tr", {}, ["Detector", "Stream", "Status", "Alarm", "Readings", "Last seen"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, streamRows)) : h("p", { class: "muted" }, "No readings yet."));
}

function alarmTable(alarms, withActions) {
  const sorted = [...alarms].sort((a, b) => (ALARM_ORDER[a.state] - ALARM_ORDER[b.state]) || b.id - a.id);
  return h("table", { class: "alarms" },
    h("thead", {}, h("tr", {}, ["Alarm", "Detector", "Stream", "State", "Raised", "Peak score", "Mostly", withActions ? "Actions" : null]
      .filter(Boolean).map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, sorted.map((a) => h("tr", { "data-alarm": a.id },
      h("td", { class: "num" }, a.id),
      h("td", {}, a.detector),
      h("td", {}, h("a", { href: route("stream", a.detector, a.stream) }, a.stream)),
      h("td", {}, pill(a.state.replace(/_/g, " "), ALARM_KIND[a.state] || "warn"),
        a.active ? h("div", { class: "muted" }, "up") : h("div", { class: "muted" }, "ended: " + (a.ended_by || "")),
        a.shelved_now ? h("div", { class: "muted" }, "shelved until " + time(a.shelved.until)) : null,
        a.acknowledged ? h("div", { class: "muted" }, "ack by " + a.acknowledged.by + (a.acknowledged.note ? ": " + a.acknowledged.note : "")) : null),
      h("td", {}, time(a.raised_at)),
      h("td", { class: "num" }, num(a.peak_score)),
      h("td", {}, a.contributions.map((c) => c.feature + " " + Math.round(c.share * 100) + " %").join(", ")),
      withActions ? h("td", {}, alarmActions(a)) : null))));
}

function alarmActions(a) {
  const note = h("input", { type: "text", id: "note-" + a.id, "aria-label": "Note for alarm " + a.id, placeholder: "note", size: 12 });
  const minutes = h("input", { type: "number", id: "minutes-" + a.id, min: 1, max: 10080, value: 60, "aria-label": "Shelve alarm " + a.id + " for minutes", class: "minutes" });
  const body = () => (note.value ? { note: note.value } : {});
  const post = (path, extra) => api("/v1/alarms/" + a.id + "/" + path, { method: "POST", body: Object.assign(body(), extra || {}) });
  const label = (verdict) => api("/v1/detectors/" + encodeURIComponent(a.detector) + "/feedback",
    { method: "POST", body: { labels: [{ id: a.id, label: verdict }] } });
  return h("div", { class: "actions" }, note,
    h("button", { type: "button", id: "ack-" + a.id, disabled: !!a.acknowledged, onclick: () => act("Acknowledge alarm " + a.id, () => post("ack")) }, "Acknowledge"),
    a.shelved_now
      ? h("button", { type: "button", id: "unshelve-" + a.id, onclick: () => act("Unshelve alarm " + a.id, () => post("unshelve")) }, "Unshelve")
      : [minutes, h("button", { type: "button", id: "shelve-" + a.id, onclick: () => act("Shelve alarm " + a.id, () => post("shelve", { minutes: Number(minutes.value) })) }, "Shelve (min)")],
    h("button", { type: "button", id: "normal-" + a.id, onclick: () => act("Label alarm " + a.id + " normal", () => label("normal")) }, "Label normal"),
    h("button", { type: "button", id: "anomaly-" + a.id, onclick: () => act("Label alarm " + a.id + " anomaly", () => label("anomaly")) }, "Label anomaly"));
}

async function alarmsView() {
  const page = await api("/v1/alarms?limit=1000&since=" + (Date.now() / 1000 - 30 * 86400).toFixed(0));
  return h("div", {},
    h("h1", {}, "Alarms"),
    h("p", { class: "muted" }, "ISA-18.2 states, unacknowledged first; the last 30 days. Actions need the admin token."),
    page.alarms.length ? alarmTable(page.alarms, true) : h("p", { class: "muted" }, "No alarm in the last 30 days."));
}

async function detectorPicker(kind, current) {
  const list = await api("/v1/detectors");
  const name = current || (list.detectors[0] && list.detectors[0].name);
  const select = h("select", { id: "detector-pick", "aria-label": "Detector", onchange: (e) => { location.hash = route(kind, e.target.value); } },
    list.detectors.map((d) => h("option", { value: d.name, selected: d.name === name }, d.name)));
  return { name, select, detector: list.detectors.find((d) => d.name === name) };
}

async function modelsView(view) {
  const pick = await detectorPicker("models", view.detector);
  if (!pick.name) return h("div", {}, h("h1", {}, "Models"), h("p", { class: "muted" }, "No detector yet."));
  const versions = await api("/v1/detectors/" + encodeURIComponent(pick.name) + "/versions");
  const d = pick.detector;
  const rows = versions.versions.slice().reverse().map((v) => h("tr", { "data-version": v.version },
    h("td", {}, v.version, v.serving ? [" ", pill("serving", "ok")] : null, v.active && !v.serving ? [" ", pill("active", "warn")] : null),
    h("td", {}, v.created_at || "–"), h("td", {}, v.parent || "–"),
    h("td", {}, pill(v.verification.state, v.verification.state === "verified" ? "ok" : "bad"), v.verification.reason ? h("div", { class: "muted" }, v.verification.reason) : null),
    h("td", {}, v.signer || "–", v.signature ? h("div", {}, pill(v.signature.state, v.signature.state === "trusted" ? "ok" : "warn")) : null),
    h("td", {}, h("code", { title: v.manifest_blake3 || "" }, (v.manifest_blake3 || "–").slice(0, 12))),
    h("td", {}, figures(v.training), figures(v.evaluation)),
    h("td", {}, v.serving ? "–" : h("button", {
      type: "button", id: "activate-" + v.version, disabled: v.verification.state !== "verified",
      onclick: () => {
        if (!confirm("Serve " + pick.name + "@" + v.version + " now?")) return;
        act("Activate " + v.version, () => api("/v1/detectors/" + encodeURIComponent(pick.name) + "/activate", { method: "POST", body: { version: v.version } }));
      },
    }, "Activate"))));
  return h("div", {},
    h("h1", {}, "Models"),
    h("div", { class: "actions" }, h("label", { for: "detector-pick" }, "Detector "), pick.select,
      h("span", { class: "muted" }, " serving: " + (d.serving.kind === "statistical" ? "statistical" : d.serving.version) + " · state: " + d.state)),
    rows.length ? h("table", {},
      h("thead", {}, h("tr", {}, ["Version", "Created", "Parent", "Verification", "Signer", "Digest", "Training / evaluation", "Roll back or forward"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows)) : h("p", { class: "muted" }, "No model version published: the statistical detector serves."));
}

function figures(obj) {
  if (!obj || typeof obj !== "object" || !Object.keys(obj).length) return null;
  const items = Object.entries(obj).filter(([, v]) => typeof v !== "object" || v === null)
    .map(([k, v]) => k + " " + (typeof v === "number" ? num(v, 3) : v));
  return h("div", { class: "muted" }, items.slice(0, 6).join(" · "));
}

async function runsView(view) {
  const pick = await detectorPicker("runs", view.detector);
  if (!pick.name) return h("div", {}, h("h1", {}, "Training runs"), h("p", { class: "muted" }, "No detector yet."));
  const runs = await api("/v1/detectors/" + encodeURIComponent(pick.name) + "/training-runs");
  const kind = { promoted: "ok", rejected: "warn", skipped: "warn", failed: "bad" };
  return h("div", {},
    h("h1", {}, "Training runs"),
    h("div", { class: "actions" }, h("label", { for: "detector-pick" }, "Detector "), pick.select,
      runs.running ? pill("a run is in progress", "warn") : null,
      h("button", { type: "button", id: "train", disabled: runs.running, onclick: () => act("Start a training run", () => api("/v1/detectors/" + encodeURIComponent(pick.name) + "/train", { method: "POST" })) }, "Start a run")),
    runs.runs.length ? h("table", {},
      h("thead", {}, h("tr", {}, ["Trigger", "Started", "Ended", "Samples", "Figures", "Decision", "Reason", "Version"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, runs.runs.slice().reverse().map((r) => h("tr", {},
        h("td", {}, r.trigger), h("td", {}, time(r.started)), h("td", {}, time(r.ended)),
        h("td", { class: "num" }, r.samples + (r.anomalous_samples ? " (" + r.anomalous_samples + " anomalous)" : "")),
        h("td", {}, figures(r.figures)),
        h("td", {}, pill(r.decision, kind[r.decision] || "warn")),
        h("td", {}, r.reason || ""), h("td", {}, r.version || "–"))))) : h("p", { class: "muted" }, "No training run yet."));
}

async function streamView(view) {
  const base = "/v1/detectors/" + encodeURIComponent(view.detector);
  const since = (Date.now() / 1000 - 600).toFixed(3);
  const q = "stream=" + encodeURIComponent(view.stream);
  let page = await api(base + "/observations?" + q + "&limit=5000&since=" + since);
  if (page.next_after_id !== null) {
    page = await api(base + "/observations?" + q + "&limit=5000&since=" + (Date.now() / 1000 - 30).toFixed(3));
  }
  const alarms = await api("/v1/alarms?limit=1000&detector=" + encodeURIComponent(view.detector) + "&stream=" + encodeURIComponent(view.stream));
  const key = view.detector + "/" + view.stream;
  // The log's readings, with what arrived live since.
  const live = (state.series.get(key) || []).filter((o) => !page.observations.length || o.id > page.observations[page.observations.length - 1].id);
  const points = page.observations.concat(live).slice(-CHART_POINTS);
  state.series.set(key, points);
  state.streamAlarms = alarms.alarms;
  const latest = alarms.alarms[alarms.alarms.length - 1];
  let peak = null;
  if (latest) {
    const at = await api(base + "/observations?" + q + "&limit=1&after_id=" + (latest.peak_observation - 1));
    peak = at.observations[0] && at.observations[0].id === latest.peak_observation ? at.observations[0] : null;
  }
  const features = page.features;
  const last = points.slice(-15).reverse();
  return h("div", {},
    h("h1", {}, view.detector + " · " + view.stream),
    h("div", { class: "legend" },
      h("span", {}, h("span", { class: "swatch score" }), "score"),
      h("span", {}, h("span", { class: "swatch threshold" }), "threshold"),
      h("span", {}, h("span", { class: "swatch alarm" }), "alarm"),
      h("span", {}, h("span", { class: "swatch cp" }), "changepoint"),
      h("span", {}, h("span", { class: "swatch settled" }), "settled")),
    h("figure", { class: "chart", id: "chart", "aria-label": "Score against threshold over the last readings of " + view.stream }),
    h("p", { class: "muted", id: "chart-summary" }),
    h("h2", {}, "At the last alarm's peak"),
    latest ? h("div", {},
      h("p", {}, "Alarm ", h("a", { href: "#/alarms" }, String(latest.id)), " — ", pill(latest.state.replace(/_/g, " "), ALARM_KIND[latest.state] || "warn"),
        " raised " + time(latest.raised_at) + ", peak score " + num(latest.peak_score) + " at reading " + latest.peak_observation),
      h("table", {}, h("thead", {}, h("tr", {}, ["Feature", "Share of the score", "Reading at the peak"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, latest.contributions.map((c) => h("tr", {},
          h("td", {}, c.feature), h("td", { class: "num" }, Math.round(c.share * 100) + " %"),
          h("td", { class: "num" }, peak ? num(peak.features[features.indexOf(c.feature)], 3) : "–"))))))
      : h("p", { class: "muted" }, "This stream has not raised an alarm."),
    h("h2", {}, "Last readings"),
    h("table", {}, h("thead", {}, h("tr", {}, ["Id", "Received", "Score", "Threshold", "Anomaly", "Alarm"].concat(features).map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, last.map((o) => h("tr", {},
        h("td", { class: "num" }, o.id), h("td", {}, time(o.received_at)),
        h("td", { class: "num" }, num(o.score)), h("td", { class: "num" }, num(o.threshold)),
        h("td", {}, o.anomaly ? "yes" : "no"), h("td", {}, o.alarm ? pill("alarm", "bad") : "no"),
        (o.features || []).map((v) => h("td", { class: "num" }, num(v, 3))))))));
}

/** The score chart of the stream in view: score and threshold lines, alarm periods shaded,
 *  changepoints and settlements marked. */
function drawChart() {
  const view = state.view;
  const figure = document.getElementById("chart");
  if (!figure || view.kind !== "stream") return;
  const points = (state.series.get(view.detector + "/" + view.stream) || []).filter((o) => o.score !== null && o.score !== undefined);
  const W = 1000, H = 260, L = 56, R = 8, T = 10, B = 22;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-labelledby": "chart-summary", preserveAspectRatio: "none" });
  if (points.length < 2) {
    svg.append(s("text", { x: L, y: H / 2 }, "Waiting for scored readings…"));
    figure.replaceChildren(svg);
    document.getElementById("chart-summary").textContent = "No scored reading yet.";
    return;
  }
  const values = points.flatMap((o) => [o.score, o.threshold]).filter((v) => v !== null && v !== undefined && v > 0);
  // Scores span orders of magnitude during a fault: a log scale keeps the threshold readable.
  const lo = Math.max(Math.min(...values), 1e-6), hi = Math.max(...values, lo * 10);
  const y = (v) => {
    const c = Math.max(v, lo);
    return T + (H - T - B) * (1 - (Math.log10(c) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo)));
  };
  const x = (i) => L + (W - L - R) * (i / (points.length - 1));
  // Alarm periods.
  let start = null;
  points.forEach((o, i) => {
    if (o.alarm && start === null) start = i;
    if ((!o.alarm || i === points.length - 1) && start !== null) {
      const end = o.alarm ? i : i - 1;
      svg.append(s("rect", { class: "alarm", x: x(start), y: T, width: Math.max(x(end) - x(start), 2), height: H - T - B }));
      start = null;
    }
  });
  const settledAt = new Set((state.streamAlarms || []).filter((a) => a.ended_by === "settled").map((a) => a.ended_observation));
  points.forEach((o, i) => {
    if (o.changepoint) svg.append(s("line", { class: "cp", x1: x(i), x2: x(i), y1: T, y2: H - B }));
    if (settledAt.has(o.id)) svg.append(s("line", { class: "settled", x1: x(i), x2: x(i), y1: T, y2: H - B }));
  });
  const line = (key, cls) => {
    const d = points.map((o, i) => (o[key] === null || o[key] === undefined ? null : `${x(i).toFixed(1)},${y(o[key]).toFixed(1)}`)).filter(Boolean);
    if (d.length > 1) svg.append(s("polyline", { class: cls, points: d.join(" ") }));
  };
  line("threshold", "threshold");
  line("score", "score");
  for (const v of [lo, Math.sqrt(lo * hi), hi]) svg.append(s("text", { x: 2, y: y(v) + 4 }, num(v)));
  svg.append(s("text", { x: L, y: H - 6 }, time(points[0].received_at)));
  svg.append(s("text", { x: W - R - 150, y: H - 6 }, time(points[points.length - 1].received_at)));
  figure.replaceChildren(svg);
  const alarmed = points.filter((o) => o.alarm).length;
  const lastPoint = points[points.length - 1];
  document.getElementById("chart-summary").textContent =
    `${points.length} readings; the last scored ${num(lastPoint.score)} against ${num(lastPoint.threshold)}` +
    (lastPoint.alarm ? ", in alarm" : ", not in alarm") + `; ${alarmed} of them in alarm.`;
}

// ---- start -------------------------------------------------------------------------------

function start() {
  document.getElementById("token-button").addEventListener("click", () => askToken("Give a token: read to look, admin to act."));
  document.getElementById("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem("vigil-token", document.getElementById("token-input").value.trim());
    document.getElementById("token-input").value = "";
    document.getElementById("token-form").hidden = true;
    say("Token set for this tab.");
    render();
  });
  document.getElementById("token-clear").addEventListener("click", () => {
    sessionStorage.removeItem("vigil-token");
    document.getElementById("token-form").hidden = true;
    say("Token forgotten.");
  });
  document.getElementById("token-cancel").addEventListener("click", () => { document.getElementById("token-form").hidden = true; });
  window.addEventListener("hashchange", render);
  render();
  listen();
  pollRates();
  // Views without live events for what they show (stream states, readings) refresh slowly.
  setInterval(() => { if (state.view && state.view.kind === "overview") refreshSoon(); }, 10000);
}

start();
