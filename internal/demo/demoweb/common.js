// Shared by the demo's pages: the one connection to the gateway, the JSON API, small DOM
// helpers. Plain ES modules, no framework and no build step.
import { connect } from "/realtime/walflow.js";

/** The page's connection to the gateway, also window.walflow for the console and tests. */
export const client = connect("/realtime/");
globalThis.walflow = client;
client.addEventListener("error", (e) => console.warn(e.detail.error.message));

const STATES = { connecting: "connecting…", open: "live", reconnecting: "reconnecting…", closed: "offline" };

/** Shows the connection's state in #state. */
export function showState() {
  const el = document.getElementById("state");
  const show = () => {
    el.dataset.state = client.state;
    el.textContent = STATES[client.state] ?? client.state;
  };
  client.addEventListener("state", show);
  show();
}

/** Calls the demo's JSON API; a failure throws an Error with status and the answer's data. */
export async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const data = res.status === 204 ? null : await res.json().catch(() => null);
  if (!res.ok) {
    const err = new Error(data?.error ?? `${method} ${path}: HTTP ${res.status}`);
    err.status = res.status;
    err.data = data;
    throw err;
  }
  return data;
}

/**
 * Keeps a view live: apply(ev) applies an event; load() loads a snapshot with loadFn and
 * then applies again the events that arrived while it loaded, which may be newer than the
 * snapshot. Applying an event twice must be harmless (rows are replaced by id).
 */
export function live(loadFn, applyFn) {
  let replay = null;
  return {
    apply(ev) {
      replay?.push(ev);
      applyFn(ev);
    },
    async load() {
      replay = [];
      try {
        await loadFn();
      } finally {
        const again = replay ?? [];
        replay = null;
        for (const ev of again) applyFn(ev);
      }
    },
  };
}

/** Briefly highlights el. */
export function flash(el) {
  el.classList.remove("flash");
  void el.offsetWidth; // restart the animation
  el.classList.add("flash");
}

export function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}
