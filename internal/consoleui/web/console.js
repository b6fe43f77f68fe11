// console.js is the walflow console: it loads the last hour of samples from
// /console/api/history, then asks for the newer ones every sampling interval, and draws
// them. The actions send the admin token as a bearer token; it is kept in this tab's
// sessionStorage only.

import { LineChart } from "/console/chart.js";

const api = "/console/api/";
const $ = (sel) => document.querySelector(sel);

const state = {
  samples: [],
  intervalMs: 2000,
  windowMs: 3600 * 1000,
  token: sessionStorage.getItem("walflow-admin-token") || "",
  admin: false,
  tokenSet: false,
  parkedOf: "",
};

// Formats.
const int = (v) => (v == null ? "–" : Math.round(v).toLocaleString("en-US"));
const rate = (v) => (v == null ? "–" : v >= 100 ? int(v) : (Math.round(v * 10) / 10).toString());
function bytes(v) {
  if (v == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}
function ms(v) {
  if (v == null) return "–";
  const m = v * 1000;
  return m >= 100 ? `${Math.round(m)} ms` : `${(Math.round(m * 10) / 10)} ms`;
}

// request calls the console API, with the admin token when asked to.
async function request(path, { method = "GET", body, admin = false } = {}) {
  const headers = {};
  if (admin && state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(api + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try {
    data = await res.json();
  } catch {
    data = null;
  }
  if (!res.ok) {
    const err = new Error((data && data.error) || `${method} ${path}: HTTP ${res.status}`);
    err.status = res.status;
    throw err;
  }
  return data;
}

function problem(text) {
  const p = $("#problem");
  p.hidden = !text;
  p.textContent = text || "";
}

function say(text, failed) {
  const m = $("#message");
  m.textContent = text;
  m.classList.toggle("failed", !!failed);
}

// Charts.
const charts = {};
function buildCharts() {
  const box = $("#charts");
  charts.events = new LineChart(box, { title: "Events appended per second", format: rate });
  charts.slot = new LineChart(box, { title: "Replication slot (bytes)", format: bytes });
  charts.ledger = new LineChart(box, { title: "Ledger head and tail (position)", format: int, integer: true });
  charts.lag = new LineChart(box, { title: "Consumer lag (events)", format: int, integer: true });
  charts.connections = new LineChart(box, { title: "Realtime connections", format: int, integer: true });
  charts.messages = new LineChart(box, { title: "Realtime messages per second", format: rate });
  charts.latency = new LineChart(box, { title: "Realtime delivery latency", format: ms });
}

function drawCharts() {
  const s = state.samples;
  const times = s.map((x) => Date.parse(x.time));
  const col = (f) => s.map(f);
  charts.events.update(times, [{ name: "events/s", values: col((x) => x.events_per_second) }]);
  charts.slot.update(times, [
    { name: "lag", values: col((x) => (x.slot_measured ? x.slot_lag_bytes : null)) },
    { name: "retained WAL", values: col((x) => (x.slot_measured ? x.retained_wal_bytes : null)) },
  ]);
  charts.ledger.update(times, [
    { name: "head", values: col((x) => x.ledger_head) },
    { name: "tail", values: col((x) => x.ledger_tail) },
  ]);
  const names = [];
  for (const x of s) for (const c of x.consumers) if (!names.includes(`${c.kind} ${c.name}`)) names.push(`${c.kind} ${c.name}`);
  charts.lag.update(times, names.map((n) => ({
    name: n,
    values: col((x) => {
      const c = x.consumers.find((c) => `${c.kind} ${c.name}` === n);
      return c ? c.lag_events : null;
    }),
  })));
  const rt = (f) => col((x) => (x.realtime ? f(x.realtime) : null));
  const hasRealtime = s.some((x) => x.realtime);
  for (const c of [charts.connections, charts.messages, charts.latency]) c.root.hidden = !hasRealtime;
  charts.connections.update(times, [{ name: "connections", values: rt((r) => r.connections) }]);
  charts.messages.update(times, [{ name: "messages/s", values: rt((r) => r.messages_per_second) }]);
  charts.latency.update(times, [
    { name: "p50", values: rt((r) => r.latency_p50_seconds) },
    { name: "p99", values: rt((r) => r.latency_p99_seconds) },
  ]);
}

// setField shows a number: its formatted text, and the raw value in data-raw.
function setField(name, raw, text) {
  const dd = document.querySelector(`[data-field="${name}"]`);
  dd.textContent = text;
  dd.dataset.raw = raw == null ? "" : String(raw);
}

function drawNow() {
  const x = state.samples[state.samples.length - 1];
  if (!x) return;
  setField("events_per_second", x.events_per_second, rate(x.events_per_second));
  setField("events_appended", x.events_appended, int(x.events_appended));
  setField("ledger_head", x.ledger_head, int(x.ledger_head));
  setField("ledger_tail", x.ledger_tail, int(x.ledger_tail));
  setField("slot_lag_bytes", x.slot_measured ? x.slot_lag_bytes : null, x.slot_measured ? bytes(x.slot_lag_bytes) : "not measured");
  setField("retained_wal_bytes", x.slot_measured ? x.retained_wal_bytes : null, x.slot_measured ? bytes(x.retained_wal_bytes) : "not measured");
  for (const e of document.querySelectorAll(".rt")) e.hidden = !x.realtime;
  if (x.realtime) {
    setField("connections", x.realtime.connections, int(x.realtime.connections));
    setField("messages_per_second", x.realtime.messages_per_second, rate(x.realtime.messages_per_second));
  }
  const streaming = $("#streaming");
  streaming.textContent = x.streaming ? "streaming" : "not streaming";
  streaming.className = `pill ${x.streaming ? "ok" : "bad"}`;
  $("#updated").textContent = `sample ${x.seq} at ${new Date(x.time).toLocaleTimeString()}`;
  const alerts = $("#alerts");
  alerts.hidden = !(x.alerts && x.alerts.length);
  alerts.replaceChildren();
  for (const a of x.alerts || []) {
    const p = document.createElement("div");
    p.textContent = a;
    alerts.appendChild(p);
  }
  drawConsumers(x);
}

function button(label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
}

// drawConsumers rebuilds the table only when it changed, so that its buttons stay put
// under the pointer between samples.
let consumersKey = "";
function drawConsumers(x) {
  const key = JSON.stringify([x.consumers, state.admin]);
  if (key === consumersKey) return;
  consumersKey = key;
  const body = $("#consumers tbody");
  body.replaceChildren();
  $("#no-consumers").hidden = x.consumers.length > 0;
  $("#consumers").hidden = x.consumers.length === 0;
  for (const c of x.consumers) {
    const tr = document.createElement("tr");
    tr.dataset.kind = c.kind;
    tr.dataset.name = c.name;
    const cells = [c.kind, c.name, c.state, int(c.position), int(c.lag_events),
      c.kind === "operator" ? `${c.parked_events || 0} events, ${c.parked_ids || 0} ${c.parked_ids === 1 ? "row" : "rows"}` : "–"];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (i === 2) {
        td.className = `state ${c.state}`;
        if (c.error) td.title = c.error;
      }
      if (i === 3) td.dataset.raw = String(c.position);
      if (i === 4) td.dataset.raw = String(c.lag_events);
      tr.appendChild(td);
    });
    const actions = document.createElement("td");
    actions.className = "admin-only";
    if (state.admin && c.kind === "operator") {
      if (c.state === "halted") {
        actions.append(
          button("Restart", () => act(c.name, "restart")),
          button("Skip", () => {
            if (confirm(`Skip the event ${c.name} failed on? Its effect is never applied; backfill the operator afterwards.`)) act(c.name, "skip");
          }),
        );
      }
      if (c.parked_events > 0) actions.append(button("Parked…", () => showParked(c.name)));
    }
    tr.appendChild(actions);
    body.appendChild(tr);
  }
  document.body.classList.toggle("admin", state.admin);
}

async function act(name, action, id) {
  try {
    const res = await request(`operators/${encodeURIComponent(name)}/${action}`, { method: "POST", body: id === undefined ? {} : { id }, admin: true });
    let text = `${action} ${name}: done`;
    if (res.skipped) text += ` (skipped position ${res.skipped})`;
    if (res.discarded) text += ` (discarded positions ${res.discarded.join(", ")})`;
    say(text);
    if (state.parkedOf === name) await showParked(name);
  } catch (err) {
    say(`${action} ${name}: ${err.message}`, true);
  }
}

async function showParked(name) {
  state.parkedOf = name;
  const box = $("#parked");
  $("#parked-op").textContent = name;
  const body = box.querySelector("tbody");
  try {
    const rows = await request(`operators/${encodeURIComponent(name)}/parked`, { admin: true });
    body.replaceChildren();
    for (const r of rows) {
      const tr = document.createElement("tr");
      const shown = r.positions.slice(0, 12).join(", ") + (r.positions.length > 12 ? ` … (${r.positions.length - 12} more)` : "");
      for (const text of [r.id, String(r.count), shown, r.first_error, new Date(r.parked_at).toLocaleString()]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      const td = document.createElement("td");
      td.append(
        button("Retry", () => act(name, "retry", r.id)),
        button("Discard", () => {
          if (confirm(`Discard the ${r.count} parked events of row ${r.id}? Their effect is never applied; backfill the operator afterwards.`)) act(name, "discard", r.id);
        }),
      );
      tr.appendChild(td);
      body.appendChild(tr);
    }
    box.hidden = false;
  } catch (err) {
    say(`parked rows of ${name}: ${err.message}`, true);
  }
}

// History.
function keep(samples) {
  state.samples.push(...samples);
  const last = state.samples[state.samples.length - 1];
  if (last) {
    const from = Date.parse(last.time) - state.windowMs;
    const drop = state.samples.findIndex((x) => Date.parse(x.time) >= from);
    if (drop > 0) state.samples.splice(0, drop);
  }
}

async function poll() {
  const last = state.samples[state.samples.length - 1];
  try {
    const h = await request(`history${last ? `?after=${last.seq}` : ""}`);
    if (last && h.samples.length && h.samples[0].seq <= last.seq) state.samples = [];
    keep(h.samples);
    problem("");
    if (h.samples.length) {
      drawNow();
      drawCharts();
    }
  } catch (err) {
    problem(`Cannot reach walflow: ${err.message}. Retrying.`);
  }
  setTimeout(poll, Math.max(state.intervalMs, 1000));
}

async function checkSession() {
  const s = await request("session", { admin: true });
  state.tokenSet = s.admin_token_set;
  state.admin = s.admin;
  $("#admin-off").hidden = s.admin_token_set;
  $("#admin-form").hidden = !s.admin_token_set;
  $("#admin-lock").hidden = !s.admin;
  if (state.token && !s.admin) say("That admin token is not the one configured.", true);
  const last = state.samples[state.samples.length - 1];
  if (last) drawConsumers(last);
}

async function start() {
  buildCharts();
  $("#admin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    state.token = $("#admin-token").value.trim();
    sessionStorage.setItem("walflow-admin-token", state.token);
    $("#admin-token").value = "";
    say("");
    await checkSession();
    if (state.admin) say("Actions unlocked.");
  });
  $("#admin-lock").addEventListener("click", async () => {
    state.token = "";
    sessionStorage.removeItem("walflow-admin-token");
    $("#parked").hidden = true;
    say("Actions locked.");
    await checkSession();
  });
  try {
    const [config, history] = await Promise.all([request("config"), request("history")]);
    state.intervalMs = history.interval_ms;
    state.windowMs = history.window_seconds * 1000;
    $("#config").textContent = JSON.stringify(config, null, 2);
    $("#slot").textContent = `slot ${config.slot}`;
    keep(history.samples);
    drawNow();
    drawCharts();
    await checkSession();
  } catch (err) {
    problem(`Cannot load the console: ${err.message}`);
  }
  setTimeout(poll, Math.max(state.intervalMs, 1000));
}

start();
