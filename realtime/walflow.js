/**
 * walflow.js: the browser client of walflow's realtime gateway (package realtime).
 *
 * A dependency-free ES module, served by the gateway at <mount>/walflow.js. It keeps ONE
 * WebSocket to the gateway, carries any number of channel subscriptions over it, and
 * resumes every one of them after a reconnect, so a page sees each event of its channels
 * once, in ledger order, without a gap.
 *
 *     import { connect } from "/realtime/walflow.js";
 *
 *     const client = connect("/realtime/", { token: async () => (await fetch("/token")).text() });
 *     const sub = client.subscribe("posts/42/comments", {
 *       insert(ev) { addComment(ev.new_record); },
 *       update(ev) { replaceComment(ev.new_record); },
 *       delete(ev) { removeComment(ev.old_record); },
 *       resync() { reloadComments(); },      // events were lost for good: load the state again
 *     });
 *     await sub.ready;                       // subscribed: nothing after this point is missed
 *     reloadComments();                      // so load the state now, not before
 *     ...
 *     sub.unsubscribe();
 *
 * # Connecting
 *
 * connect(url, options) and new Walflow(url, options) are the same. url is where the
 * gateway is mounted ("/realtime/", or an absolute http(s):// or ws(s):// URL); a relative
 * URL is resolved against the page, and http becomes ws, https wss. The client connects
 * at once and reconnects by itself until close() is called. Options:
 *
 *   token           a string, or a function (possibly async) returning one: the token
 *                   provider. It is called before every (re)connection, and, when the token
 *                   is a JWT with an exp claim, refreshBefore ms before exp, to send the
 *                   new token in an auth message. Sent as the access_token parameter.
 *   heartbeat       the gateway's heartbeat interval in ms (GatewayConfig.Heartbeat).
 *                   When nothing arrives for 2.5 times this, the connection is taken for
 *                   dead and replaced. Default 15000.
 *   backoffMin      the first reconnection delay in ms. Default 500.
 *   backoffMax      the longest reconnection delay in ms. Default 30000. Delays double from
 *                   backoffMin up to backoffMax, each with a random half ("jitter"), so
 *                   many pages do not reconnect in step after a restart.
 *   connectTimeout  how long a connection may take to open, in ms. Default 10000.
 *   refreshBefore   how long before a JWT's exp the provider is asked for a new token, in
 *                   ms. Default 30000.
 *   buffer          how many recent events each channel keeps so that a subscription
 *                   joining an already subscribed channel with an older `after` gets them.
 *                   Default 100.
 *   onResync(channel, {position, reason})
 *                   called when a channel's events could not all be delivered (see
 *                   resync below). A "resync" event is dispatched as well.
 *
 * # Subscribing
 *
 * client.subscribe(channel, handlers, {after}) returns a Subscription at once. channel is
 * a table (comments), a row (comments/7) or a scope (posts/42/comments). handlers is an
 * object of optional functions, each called with (event, message):
 *
 *   insert, update, delete, truncate   events of that type
 *   event                              every event (after the typed handler)
 *   resync({channel, position, reason})  events were lost for good: reload your state
 *   error(err)                         the subscription was refused or ended by the gateway
 *
 * or a single function, taken as the event handler. event is the walflow event JSON
 * (type, new_record, old_record, changes, position, ...); message is
 * {channel, position, event}. Handlers run in ledger order; one that throws is reported
 * (reportError) and does not stop delivery.
 *
 * subscription.ready is a Promise of the position P from which delivery is guaranteed:
 * every later event of the channel reaches the handlers. It rejects with a WalflowError
 * (status 400, 401, 403) when the gateway refuses the channel. A subscribe the gateway
 * cannot start yet (status 503: in a cluster, a node whose ledger has not reached the
 * resume position another node sent) is sent again after a backoff (backoffMin doubling
 * up to backoffMax, with jitter), with the same position, until it is subscribed; each
 * such refusal is reported as an "error" event, and ready waits. Load the page's state after
 * ready resolves, not before, and apply events idempotently (by id): an event may describe
 * a change the loaded state already contains, never one it lacks.
 *
 * {after: N} asks for the events after ledger position N (a position remembered from an
 * earlier event, or client.position), replayed from the gateway's ledger. Without it,
 * delivery starts at the ledger head.
 *
 * Several subscriptions to one channel share one gateway subscription. A subscription
 * joining a channel that is already subscribed starts at the channel's current position;
 * with an older `after` it receives the recent events kept in the buffer, or, when they
 * no longer reach back that far, its resync handler is called.
 *
 * subscription.unsubscribe() removes the handlers; client.unsubscribe(channel) removes
 * every subscription of the channel. The gateway subscription ends with the last one.
 *
 * # Loading, then following: client.load
 *
 * client.load(channel, handlers, {limit, signal}) loads the channel's current rows from the
 * gateway's snapshot endpoint (<mount>/snapshot, a page of limit rows at a time, all pages
 * from one database snapshot), calls handlers.snapshot(rows), then subscribes from the
 * snapshot's token: the handlers receive exactly the changes the rows do not contain, with
 * no gap and no duplicate, however busy the table. It returns a Promise of
 * {rows, subscription} once subscribed. Call it for a channel this client has not
 * subscribed yet. On resync (events lost to retention) unsubscribe and load again.
 *
 *     const { subscription } = await client.load("posts/42/comments", {
 *       snapshot(rows) { for (const r of rows) addComment(r); },
 *       insert(ev) { addComment(ev.new_record); },
 *       delete(ev) { removeComment(ev.old_record); },
 *     });
 *
 * Rows are objects like an event's new_record. A load refused by the gateway rejects with a
 * WalflowError carrying status (401, 403, 400); one that finds too many loads in progress
 * (503) or its snapshot expired between pages (410) starts over after a short delay.
 * subscribe(channel, handlers, {snapshot: token}) subscribes from a token you fetched
 * yourself.
 *
 * # Waiting for a row: create, then redirect
 *
 * client.waitFor(channel, type, {timeout, after, exists, signal}) returns a Promise of the
 * first event of type (insert, update, delete, truncate; "*" or null for any) on channel.
 * It subscribes before it waits, so an event arriving after it is called is never missed.
 * For a row that may ALREADY exist when waitFor is called, either pass after (a position
 * from before the change that creates it, e.g. client.position read before the POST that
 * inserts it: the gateway replays from there), or pass exists, an async function called
 * once the subscription is ready (and after a resync): when it returns a truthy value,
 * waitFor resolves with that value instead of an event. It rejects with a WalflowError
 * named "TimeoutError" after timeout ms (default 10000; 0 waits forever), with the
 * subscription's error, or with signal's reason when signal aborts.
 *
 *     const after = client.position;
 *     const { id } = await (await fetch("/api/posts", { method: "POST", body })).json();
 *     await client.waitFor(`post_with_comments_counts/${id}`, "insert", { after });
 *     location.href = `/posts/${id}`;     // the derived row exists now
 *
 * # Reconnection, resume and duplicates
 *
 * After the connection drops (network, gateway restart or shutdown, overflow, or no
 * heartbeat for 2.5 x heartbeat) the client reconnects with exponential backoff and
 * jitter (at once when the browser comes back online), then subscribes every channel
 * again with after = the position of the last event it received on it (or its subscribed
 * position). Events at or below a channel's position are dropped, so nothing is delivered
 * twice. When the gateway cannot resume (the position is older than its retention), it
 * answers resync: the handlers' resync, options.onResync and the "resync" event are
 * called, and delivery goes on from the new position.
 *
 * Close code 4001 (token expired) reconnects at once with a fresh token from the provider.
 * With a fixed string token the client stops instead, with an error: pass a provider.
 *
 * # State and events
 *
 * client.state is "connecting", "open", "reconnecting" (waiting for the next attempt) or
 * "closed". client.position is the highest ledger position the client has seen (0 before
 * the first message). The client is an EventTarget dispatching CustomEvents whose detail
 * is:
 *
 *   state   {state, previous}                     every state change
 *   open    {}                                    connected
 *   close   {code, reason}                        the connection closed
 *   resync  {channel, position, reason}
 *   error   {error, channel}                      a refused request, a failed provider, ...
 *
 * and calls the matching onstate, onopen, onclose, onresync, onerror properties when set.
 * client.close() closes for good and rejects what still waits.
 *
 * @module walflow
 */

const DEFAULTS = {
  heartbeat: 15000,
  backoffMin: 500,
  backoffMax: 30000,
  connectTimeout: 10000,
  refreshBefore: 30000,
  buffer: 100,
};

const CLOSE_TOKEN_EXPIRED = 4001;
const TYPES = ["insert", "update", "delete", "truncate"];

/**
 * An error of the client or the gateway. status is the gateway's HTTP-like status of a
 * refused request (400, 401, 403, 503), code a WebSocket close code, channel the channel it
 * concerns, reason the gateway's reason.
 */
export class WalflowError extends Error {
  constructor(message, { name, status, code, channel, reason, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = name || "WalflowError";
    this.status = status;
    this.code = code;
    this.channel = channel;
    this.reason = reason;
  }
}

/** connect(url, options) is new Walflow(url, options). */
export function connect(url, options) {
  return new Walflow(url, options);
}

/** A client of the gateway over one WebSocket. See the module documentation. */
export class Walflow extends EventTarget {
  constructor(url, options = {}) {
    super();
    this.options = { ...DEFAULTS };
    for (const [k, v] of Object.entries(options)) if (v !== undefined) this.options[k] = v;
    this.url = wsURL(url);
    this.state = "connecting";
    this.position = 0;
    this.onstate = this.onopen = this.onclose = this.onresync = this.onerror = null;

    const token = this.options.token;
    this._provider = typeof token === "function" ? token : null;
    this._token = typeof token === "string" ? token : null;
    this._channels = new Map(); // name given to subscribe -> channel record
    this._canonical = new Map(); // the gateway's spelling -> channel record
    this._refs = new Map(); // ref -> {kind, ch | token | resolve}
    this._nextRef = 1;
    this._attempt = 0;
    this._gen = 0; // the connection attempt; a late callback of an older one is ignored
    this._ws = null;
    this._closed = false;
    this._timers = { reconnect: 0, watchdog: 0, refresh: 0 };
    this._onOnline = () => {
      if (this.state === "reconnecting") this._connect();
    };
    globalThis.addEventListener?.("online", this._onOnline);
    this._connect();
  }

  /** Loads channel's rows, then follows it; see the module documentation. */
  async load(channel, handlers = {}, { limit, signal } = {}) {
    if (typeof handlers === "function") handlers = { event: handlers };
    const busy = () => {
      if (this._channels.has(channel)) {
        throw new TypeError(`walflow: load ${channel}: the channel is subscribed already on this client; load it before subscribing to it, or unsubscribe first`);
      }
    };
    busy();
    const rows = [];
    let cursor = null;
    let token = null;
    for (let retries = 0; ; ) {
      const u = new URL(this.url);
      u.protocol = u.protocol === "wss:" ? "https:" : "http:";
      if (!u.pathname.endsWith("/")) u.pathname += "/";
      u.pathname += "snapshot";
      u.search = "";
      u.searchParams.set("channel", channel);
      if (limit != null) u.searchParams.set("limit", String(limit));
      if (cursor) u.searchParams.set("cursor", cursor);
      if (this._provider && !this._token) this._token = await this._provider();
      const headers = this._token ? { Authorization: `Bearer ${this._token}` } : {};
      const res = await fetch(u, { headers, signal, cache: "no-store" });
      if ((res.status === 503 || res.status === 410) && retries < 20) {
        // Too many loads in progress, or the snapshot expired between pages: start over.
        retries++;
        await new Promise((r) => setTimeout(r, 100 * Math.min(retries, 10) * (0.5 + Math.random())));
        rows.length = 0;
        cursor = token = null;
        continue;
      }
      if (!res.ok) {
        const reason = (await res.text()).trim();
        throw new WalflowError(`walflow: load ${channel}: ${reason || `HTTP ${res.status}`}`, { channel, status: res.status, reason });
      }
      const page = await res.json();
      for (const r of page.rows ?? []) rows.push(r);
      token = page.token;
      if (!page.next) break;
      cursor = page.next;
    }
    busy();
    if (typeof handlers.snapshot === "function") handlers.snapshot(rows);
    const subscription = this.subscribe(channel, handlers, { snapshot: token });
    await subscription.ready;
    return { rows, subscription };
  }

  /** Subscribes to channel; see the module documentation. */
  subscribe(channel, handlers = {}, { after, snapshot } = {}) {
    if (typeof channel !== "string" || channel === "") {
      throw new TypeError(`walflow: subscribe: channel ${JSON.stringify(channel)} is not a channel name like comments, comments/7 or posts/42/comments`);
    }
    if (typeof handlers === "function") handlers = { event: handlers };
    if (after != null && !(Number.isSafeInteger(after) && after >= 0)) {
      throw new TypeError(`walflow: subscribe ${channel}: after ${after} is not a ledger position`);
    }
    const sub = new Subscription(this, channel, handlers, after);
    if (this._closed) {
      sub._fail(new WalflowError(`walflow: subscribe ${channel}: the client is closed`, { channel }));
      return sub;
    }
    let ch = this._channels.get(channel);
    if (ch && snapshot != null) {
      throw new TypeError(`walflow: subscribe ${channel}: a snapshot token needs a channel not subscribed yet on this client`);
    }
    if (!ch) {
      ch = {
        name: channel, canonical: null, state: "pending", position: null, after, snapshot,
        subs: new Set(), recent: [], coveredFrom: 0, retried: false, busy: 0, timer: 0,
      };
      this._channels.set(channel, ch);
      ch.subs.add(sub);
      this._sendSubscribe(ch);
    } else {
      ch.subs.add(sub);
      if (ch.state === "active") this._attach(ch, sub);
    }
    return sub;
  }

  /**
   * Ends every subscription of channel. The Promise resolves when the gateway confirms,
   * or at once when not connected.
   */
  unsubscribe(channel) {
    const ch = this._channels.get(channel);
    if (!ch) return Promise.resolve();
    for (const sub of ch.subs) sub._end();
    return this._drop(ch);
  }

  /** Waits for an event of type on channel; see the module documentation. */
  waitFor(channel, type, { timeout = 10000, after, exists, signal } = {}) {
    return new Promise((resolve, reject) => {
      if (type != null && type !== "*" && !TYPES.includes(type)) {
        reject(new TypeError(`walflow: waitFor: type ${JSON.stringify(type)} is not one of ${TYPES.join(", ")} or "*"`));
        return;
      }
      if (signal?.aborted) {
        reject(signal.reason);
        return;
      }
      let done = false;
      let timer = 0;
      let sub = null;
      const finish = (err, value) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        sub?.unsubscribe();
        if (err) reject(err);
        else resolve(value);
      };
      const onAbort = () => finish(signal.reason);
      const check = async () => {
        if (!exists || done) return;
        try {
          const v = await exists();
          if (v) finish(null, v);
        } catch (err) {
          finish(err);
        }
      };
      signal?.addEventListener("abort", onAbort);
      if (timeout > 0 && Number.isFinite(timeout)) {
        timer = setTimeout(() => finish(new WalflowError(
          `walflow: waitFor: no ${type && type !== "*" ? type : "event"} on ${channel} within ${timeout} ms`,
          { name: "TimeoutError", channel })), timeout);
      }
      sub = this.subscribe(channel, {
        event(ev) {
          if (type == null || type === "*" || ev.type === type) finish(null, ev);
        },
        resync: check,
        error: (err) => finish(err),
      }, { after });
      sub.ready.then(check, (err) => finish(err));
    });
  }

  /** Closes the connection for good; whatever still waits is rejected. */
  close() {
    if (this._closed) return;
    this._closed = true;
    globalThis.removeEventListener?.("online", this._onOnline);
    this._clearTimers();
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      detach(ws);
      try {
        ws.close(1000, "closed by the page");
      } catch {
        // already closed
      }
    }
    const err = new WalflowError("walflow: the client was closed");
    for (const ch of [...this._channels.values()]) {
      for (const sub of ch.subs) sub._fail(err);
    }
    this._channels.clear();
    this._canonical.clear();
    this._settleRefs();
    this._setState("closed");
  }

  // --- connection ---

  async _connect() {
    if (this._closed) return;
    clearTimeout(this._timers.reconnect);
    const gen = ++this._gen;
    this._setState("connecting");
    if (this._provider) {
      try {
        this._token = await this._provider();
      } catch (err) {
        if (gen !== this._gen || this._closed) return;
        this._emitError(new WalflowError(`walflow: the token provider failed (${err?.message ?? err}); retrying`, { cause: err }));
        this._scheduleReconnect();
        return;
      }
      if (gen !== this._gen || this._closed) return;
    }
    const u = new URL(this.url);
    if (this._token) u.searchParams.set("access_token", this._token);
    let ws;
    try {
      ws = new WebSocket(u);
    } catch (err) {
      // A malformed URL: retrying cannot help.
      this._emitError(new WalflowError(`walflow: cannot open a WebSocket to ${this.url}: ${err.message}; pass the gateway's mount, like "/realtime/"`, { cause: err }));
      this.close();
      return;
    }
    this._ws = ws;
    this._arm(this.options.connectTimeout);
    ws.onopen = () => ws === this._ws && this._onOpen();
    ws.onmessage = (e) => ws === this._ws && this._onMessage(e.data);
    ws.onclose = (e) => ws === this._ws && this._onClose(e.code, e.reason);
    ws.onerror = () => {}; // a close event follows, with the code
  }

  _onOpen() {
    this._arm(this.options.heartbeat * 2.5);
    this._refs.clear();
    this._setState("open");
    this._emit("open", {});
    for (const ch of this._channels.values()) {
      ch.state = "pending";
      this._sendSubscribe(ch);
    }
    this._scheduleRefresh();
  }

  _onClose(code, reason) {
    const ws = this._ws;
    this._ws = null;
    if (ws) detach(ws);
    this._clearTimers();
    for (const ch of this._channels.values()) ch.state = "pending";
    this._settleRefs();
    this._emit("close", { code, reason });
    if (this._closed) return;
    if (code === CLOSE_TOKEN_EXPIRED) {
      if (!this._provider) {
        this._emitError(new WalflowError("walflow: the token expired and cannot be renewed; pass a token provider, connect(url, {token: async () => fetchToken()})", { code, reason }));
        this.close();
        return;
      }
      if (this._attempt === 0) {
        this._attempt = 1;
        this._connect(); // at once, with a fresh token
        return;
      }
    }
    this._scheduleReconnect();
  }

  /** Drops the current connection without waiting for its close handshake, and reconnects. */
  _reconnectNow(reason) {
    const ws = this._ws;
    if (!ws) return;
    detach(ws);
    try {
      ws.close(4000, reason);
    } catch {
      // already closed
    }
    this._onClose(1006, reason);
  }

  /** The delay before retry number attempt (0, 1, ...): exponential, with jitter. */
  _backoff(attempt) {
    const { backoffMin, backoffMax } = this.options;
    const cap = Math.min(backoffMax, backoffMin * 2 ** Math.min(attempt, 30));
    return Math.round(cap / 2 + (Math.random() * cap) / 2);
  }

  _scheduleReconnect() {
    const delay = this._backoff(this._attempt);
    this._attempt++;
    this._setState("reconnecting", { delay });
    clearTimeout(this._timers.reconnect);
    this._timers.reconnect = setTimeout(() => this._connect(), delay);
  }

  /** (Re)starts the watchdog: without a message for ms, the connection is replaced. */
  _arm(ms) {
    clearTimeout(this._timers.watchdog);
    this._timers.watchdog = setTimeout(() => this._reconnectNow("no message from the gateway"), ms);
  }

  _clearTimers() {
    for (const k of Object.keys(this._timers)) clearTimeout(this._timers[k]);
  }

  _send(msg) {
    const ws = this._ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(msg));
    return true;
  }

  _ref(entry) {
    const ref = String(this._nextRef++);
    this._refs.set(ref, entry);
    return ref;
  }

  /** Resolves the unsubscribes still waiting for an answer: the connection is gone. */
  _settleRefs() {
    for (const r of this._refs.values()) if (r.kind === "unsubscribe") r.resolve();
    this._refs.clear();
  }

  // --- tokens ---

  _scheduleRefresh() {
    clearTimeout(this._timers.refresh);
    const exp = this._provider && tokenExpiry(this._token);
    if (!exp) return;
    const delay = Math.max(1000, exp - Date.now() - this.options.refreshBefore);
    this._timers.refresh = setTimeout(() => this._refresh(), delay);
  }

  /** Gets a new token from the provider and sends it in an auth message. */
  async _refresh() {
    const ws = this._ws;
    let token;
    try {
      token = await this._provider();
    } catch (err) {
      this._emitError(new WalflowError(`walflow: the token provider failed (${err?.message ?? err}); the connection ends when the token expires, and reconnects`, { cause: err }));
      return;
    }
    if (ws !== this._ws || !token) return;
    this._token = token;
    this._send({ type: "auth", token, ref: this._ref({ kind: "auth" }) });
  }

  // --- messages ---

  _onMessage(data) {
    let m;
    try {
      m = JSON.parse(data);
    } catch {
      this._emitError(new WalflowError(`walflow: the gateway sent a message that is not JSON: ${String(data).slice(0, 100)}`));
      return;
    }
    this._attempt = 0;
    this._arm(this.options.heartbeat * 2.5);
    if (Number.isSafeInteger(m.position) && m.position > this.position && m.type !== "error") {
      this.position = m.position;
    }
    switch (m.type) {
      case "event": return this._onEvent(m);
      case "subscribed": return this._onSubscribed(m, false);
      case "resync": return this._onSubscribed(m, true);
      case "unsubscribed": return this._onUnsubscribed(m);
      case "authorized": {
        const r = this._take(m.ref);
        if (r?.kind === "auth") this._scheduleRefresh();
        return;
      }
      case "error": return this._onError(m);
      default: return; // heartbeat, and types of later versions
    }
  }

  _take(ref) {
    if (ref == null) return undefined;
    const r = this._refs.get(ref);
    this._refs.delete(ref);
    return r;
  }

  _lookup(name) {
    return this._canonical.get(name) ?? this._channels.get(name);
  }

  _sendSubscribe(ch) {
    const after = ch.position ?? ch.after;
    const msg = { type: "subscribe", channel: ch.name, ref: this._ref({ kind: "subscribe", ch }) };
    if (after != null) msg.after = after;
    // Kept on every resubscription: the gateway still filters by the snapshot's visibility.
    if (ch.snapshot != null) msg.snapshot = ch.snapshot;
    if (!this._send(msg)) this._refs.delete(msg.ref); // sent again on open
  }

  _onSubscribed(m, resync) {
    const r = this._take(m.ref);
    let ch = r?.kind === "subscribe" ? r.ch : null;
    // A resync without ref: retention overtook a live subscription, which goes on from P.
    if (!ch && resync && !m.ref) ch = this._lookup(m.channel);
    if (!ch || this._channels.get(ch.name) !== ch) return; // unsubscribed meanwhile
    const P = m.position;
    const resumed = ch.position != null;
    // A resumed channel must continue where it was: a later P is a gap.
    const gap = resync || (resumed && P > ch.position);
    ch.state = "active";
    ch.retried = false;
    ch.busy = 0;
    ch.canonical = m.channel;
    this._canonical.set(m.channel, ch);
    if (gap || !resumed) {
      ch.position = P;
      ch.recent = [];
      ch.coveredFrom = P;
    }
    for (const sub of ch.subs) {
      if (!sub._attached) this._attach(ch, sub);
    }
    if (gap) {
      const info = { channel: ch.name, position: P, reason: m.reason || "the gateway could not resume this channel" };
      for (const sub of [...ch.subs]) sub._call("resync", info);
      try {
        this.options.onResync?.(ch.name, info);
      } catch (err) {
        report(err);
      }
      this._emit("resync", info);
    }
  }

  /** Starts delivery to sub on the active channel ch. */
  _attach(ch, sub) {
    sub._attached = true;
    const want = sub._want;
    if (want == null || want >= ch.position) {
      sub.position = want == null ? ch.position : want;
      sub._resolve(ch.position);
      return;
    }
    sub.position = want;
    sub._resolve(ch.position);
    if (want >= ch.coveredFrom) {
      for (const m of ch.recent) sub._deliver(m);
    } else {
      sub.position = ch.position;
      sub._call("resync", { channel: ch.name, position: ch.position, reason: "the channel's recent events no longer reach back to after" });
    }
  }

  _onEvent(m) {
    const ch = this._lookup(m.channel);
    if (!ch || ch.state !== "active") return; // from a subscription ended meanwhile
    if (!(m.position > ch.position)) return; // already delivered before a reconnect
    ch.position = m.position;
    ch.recent.push(m);
    if (ch.recent.length > this.options.buffer) ch.coveredFrom = ch.recent.shift().position;
    for (const sub of [...ch.subs]) sub._deliver(m);
  }

  _onUnsubscribed(m) {
    const r = this._take(m.ref);
    if (r?.kind === "unsubscribe") {
      r.resolve();
      return;
    }
    // Not asked for: the gateway ended it (a new token no longer allows the channel).
    const ch = this._lookup(m.channel);
    if (!ch) return;
    const err = new WalflowError(`walflow: the gateway ended the subscription to ${ch.name}: ${m.reason || "no reason given"}`, { channel: ch.name, reason: m.reason });
    this._forget(ch);
    for (const sub of ch.subs) sub._fail(err);
    this._emitError(err, ch.name);
  }

  _onError(m) {
    const r = this._take(m.ref);
    if (r?.kind === "subscribe") {
      const ch = r.ch;
      if (this._channels.get(ch.name) !== ch) return;
      if (m.status === 401 && this._provider && !ch.retried) {
        // The token may have expired since it was fetched: renew it, then try once more.
        ch.retried = true;
        const ws = this._ws;
        this._refresh().then(() => {
          // After a reconnection the channel was subscribed again on open already.
          if (ws === this._ws && this._channels.get(ch.name) === ch && ch.state === "pending") this._sendSubscribe(ch);
        });
        return;
      }
      if (m.status === 503) {
        // The gateway cannot start it yet: its ledger has not reached the resume position
        // (a node of a cluster behind the one the position came from). Same position, later.
        const ws = this._ws;
        clearTimeout(ch.timer);
        ch.timer = setTimeout(() => {
          // After a reconnection the channel was subscribed again on open already.
          if (ws === this._ws && this._channels.get(ch.name) === ch && ch.state === "pending") this._sendSubscribe(ch);
        }, this._backoff(ch.busy++));
        this._emitError(new WalflowError(`walflow: subscribe ${ch.name}: ${m.reason || "not now"} (status 503); retrying`, { status: 503, channel: ch.name, reason: m.reason }), ch.name);
        return;
      }
      const err = new WalflowError(`walflow: subscribe ${ch.name}: ${m.reason || "refused"} (status ${m.status})`, { status: m.status, channel: ch.name, reason: m.reason });
      this._forget(ch);
      for (const sub of ch.subs) sub._fail(err);
      this._emitError(err, ch.name);
      return;
    }
    if (r?.kind === "unsubscribe") {
      r.resolve(); // not subscribed there (any more): that is what was asked
      return;
    }
    const what = r?.kind === "auth" ? "auth" : "request";
    this._emitError(new WalflowError(`walflow: ${what} refused: ${m.reason || "no reason given"} (status ${m.status})`, { status: m.status, channel: m.channel, reason: m.reason }), m.channel);
  }

  // --- channels ---

  _removeSub(sub) {
    const ch = this._channels.get(sub.channel);
    if (!ch || !ch.subs.has(sub)) return;
    ch.subs.delete(sub);
    if (ch.subs.size === 0) this._drop(ch);
  }

  /** Forgets ch and ends its gateway subscription. */
  _drop(ch) {
    const wasSent = this._ws?.readyState === WebSocket.OPEN;
    this._forget(ch);
    if (!wasSent) return Promise.resolve();
    return new Promise((resolve) => {
      const ref = this._ref({ kind: "unsubscribe", resolve });
      if (!this._send({ type: "unsubscribe", channel: ch.canonical ?? ch.name, ref })) {
        this._refs.delete(ref);
        resolve();
      }
    });
  }

  _forget(ch) {
    clearTimeout(ch.timer);
    if (this._channels.get(ch.name) === ch) this._channels.delete(ch.name);
    if (ch.canonical && this._canonical.get(ch.canonical) === ch) this._canonical.delete(ch.canonical);
  }

  // --- events ---

  _setState(state, extra = {}) {
    const previous = this.state;
    if (state === previous) return;
    this.state = state;
    this._emit("state", { state, previous, ...extra });
  }

  _emitError(error, channel) {
    this._emit("error", { error, channel });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
    const f = this["on" + type];
    if (typeof f === "function") {
      try {
        f.call(this, detail);
      } catch (err) {
        report(err);
      }
    }
  }
}

/** One set of handlers on a channel, returned by Walflow.subscribe. */
export class Subscription {
  constructor(client, channel, handlers, after) {
    /** The channel as given to subscribe. */
    this.channel = channel;
    /** The position of the last event delivered (or the subscribed position). */
    this.position = null;
    /** Whether the subscription ended (unsubscribed, refused or ended by the gateway). */
    this.closed = false;
    this._client = client;
    this._handlers = handlers;
    this._want = after;
    this._attached = false;
    /** Resolves with the position delivery is guaranteed from; rejects when refused. */
    this.ready = new Promise((resolve, reject) => {
      this._res = resolve;
      this._rej = reject;
    });
    // The rejection reaches the error handler and the client's error event as well: do not
    // report it as unhandled when the page only listens there.
    this.ready.catch(() => {});
  }

  /** Removes this subscription's handlers; the last one ends the channel's subscription. */
  unsubscribe() {
    if (this.closed) return;
    this._end();
    this._client._removeSub(this);
  }

  _resolve(position) {
    this._res(position);
  }

  _deliver(m) {
    if (this.closed || !(m.position > this.position)) return;
    this.position = m.position;
    const ev = m.event;
    const typed = this._handlers[ev?.type];
    if (typeof typed === "function" && TYPES.includes(ev.type)) this._invoke(typed, ev, m);
    if (typeof this._handlers.event === "function") this._invoke(this._handlers.event, ev, m);
  }

  _call(name, arg) {
    if (this.closed) return;
    const f = this._handlers[name];
    if (typeof f === "function") this._invoke(f, arg);
  }

  _invoke(f, ...args) {
    try {
      const r = f.apply(this, args);
      if (r && typeof r.catch === "function") r.catch(report);
    } catch (err) {
      report(err);
    }
  }

  _end() {
    this.closed = true;
    this._rej(new WalflowError(`walflow: unsubscribed from ${this.channel} before it was subscribed`, { name: "AbortError", channel: this.channel }));
  }

  _fail(err) {
    if (this.closed) return;
    this._rej(err); // no effect once ready resolved
    const f = this._handlers.error;
    this.closed = true;
    if (typeof f === "function") this._invoke(f, err);
  }
}

function wsURL(url) {
  const u = new URL(url, globalThis.location?.href);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  return u.href;
}

function detach(ws) {
  ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
}

/** The exp of a JWT in ms since the epoch, or null for anything else. */
function tokenExpiry(token) {
  const parts = typeof token === "string" ? token.split(".") : [];
  if (parts.length !== 3) return null;
  try {
    let b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    b64 += "=".repeat((4 - (b64.length % 4)) % 4);
    const claims = JSON.parse(atob(b64));
    return typeof claims.exp === "number" ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}

function report(err) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(err);
  else setTimeout(() => { throw err; });
}
