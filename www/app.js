// Tidings demo page: a live chat on the durable topic `chat` (with who's online) and an
// event-sourced Order stream, over the WebAssembly SDK, plus a network panel that shows what
// the SDK does when the connection goes away. Plain ES modules, no build step.
//
// The Order board has no order logic of its own: `client.stream(id, "order")` folds the stream
// with the Rust `Order` aggregate (shared-protocol/src/order.rs, the server's code, compiled
// into the SDK), and `stream.execute(command)` / `stream.decide(command)` decide commands with it.
//
// The SDK does the hard parts (reconnect with backoff, replay with `since`, offline outbox,
// dedup by offset, token refresh); this file only renders what it reports. `window.__demo`
// exposes the page's state to the end-to-end test (tests/e2e/).

// The build with the built-in aggregates (the package's "tidings/aggregates" entry).
import init, { TidingsClient } from "./pkg/aggregates/tidings.js";
import { installSocketTap, LiveChart } from "./network.js";

// Before the SDK opens its first socket: lets the network panel drop it or play offline.
const tap = installSocketTap();

const params = new URLSearchParams(location.search);
const TOPIC = "chat";
const INITIAL_HISTORY = Math.max(0, Number(params.get("initial") ?? 30)); // messages shown on load
const PAGE = Math.max(1, Number(params.get("page") ?? 30)); // "load earlier" page size
const WS_URL = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
const RECONNECT = {
  minDelayMs: Number(params.get("minDelay") ?? 250),
  maxDelayMs: Number(params.get("maxDelay") ?? 4000),
};

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
};
const time = (iso) => {
  const d = iso ? new Date(iso) : new Date();
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
};

function randomName() {
  const a = ["brisk", "calm", "eager", "lucky", "merry", "quiet", "swift", "witty", "bold", "sunny"];
  const b = ["otter", "heron", "lynx", "panda", "finch", "koala", "raven", "gecko", "bison", "yak"];
  const pick = (xs) => xs[Math.floor(Math.random() * xs.length)];
  return `${pick(a)}-${pick(b)}-${Math.floor(Math.random() * 90 + 10)}`;
}
const shortId = () => Math.random().toString(36).slice(2, 6);

/** Units (a JSON number such as 19.99) to whole cents, for display arithmetic only. */
const toCents = (units) => Math.round(Number(units) * 100);
/** An amount in units as a display string with two decimals, e.g. "59.97". */
function formatMoney(units) {
  const c = toCents(units);
  const abs = Math.abs(c);
  return `${c < 0 ? "-" : ""}${Math.floor(abs / 100)}.${String(abs % 100).padStart(2, "0")}`;
}

/** A small catalogue for the "add item" picker. */
const CATALOGUE = [
  { sku: "mug", name: "Tidings mug", price: 12.5 },
  { sku: "tee", name: "T-shirt", price: 19.99 },
  { sku: "sticker", name: "Sticker pack", price: 3.25 },
  { sku: "hoodie", name: "Hoodie", price: 45.0 },
  { sku: "cap", name: "Cap", price: 15.0 },
];

// ---- page state ---------------------------------------------------------------------------

const app = {
  gen: 0, // bumps when the client is replaced (name change); stale callbacks check it
  name: params.get("name") || sessionStorage.getItem("tidings-demo-name") || randomName(),
  client: null,
  chatSub: null,
  state: "connecting",
  connects: 0, // successful connections; reconnects = connects - 1
  ready: false,
  messages: new Map(), // offset -> {offset, name, text, timestamp, mine}
  received: [], // offsets in the order the SDK's handler delivered them (live + replayed)
  outgoing: [], // own publishes: {key, text, name, status: pending|acked|failed, offset?, error?}
  oldest: null, // lowest offset loaded; earlier ones come from "load earlier"
  recoveries: [],
  errors: [],
  reconnected: false,
  recoveryMark: { received: 0, lastOffset: 0 },
  net: {
    transitions: [], // {from, to, at (ms, performance.now), wall (Date)}
    since: 0, // when the current state began (performance.now)
    peak: 0, // the outbox's largest size since it was last empty
    flush: null, // {size, at}: a reconnect found the outbox non-empty; cleared once it drains
    flushed: null, // {size, ms}: the last flush after a reconnect
    bucket: { msgs: 0, rtts: [] }, // the current second's traffic
    lastRtt: null,
    lastRate: 0,
    probing: false,
  },
  presence: {
    status: "loading", // loading | ok | unsupported | disabled | error
    members: new Map(), // client_id -> {client_id, user, info}
    events: [], // {kind: join|leave, user, name, client_id, at}
    more: false,
    stats: null, // {clients, users} when the member list was cut short
    error: null,
  },
  order: {
    id: params.get("order") || "order-1",
    stream: null,
    state: null, // the Rust Order's serde form, from the SDK
    version: 0,
    log: [],
    loaded: false,
    conflicts: [],
    lastError: null,
    busy: false,
  },
};

// ---- connection ---------------------------------------------------------------------------

async function fetchToken(name) {
  const res = await fetch(`/dev/token?sub=${encodeURIComponent(name)}`, { cache: "no-store" });
  if (!res.ok) throw new Error(`GET /dev/token: HTTP ${res.status}`);
  const body = await res.json();
  return body.token;
}

function onState(gen, state) {
  if (gen !== app.gen) return;
  const prev = app.state;
  app.state = state;
  recordTransition(prev, state);
  if (state === "connected") {
    app.connects += 1;
    if (app.connects > 1) app.reconnected = true; // the next recovery is this reconnect's
    const queued = outboxSize();
    if (queued > 0) app.net.flush = { size: queued, at: performance.now() };
    // The SDK reads the roster again by itself and reports the differences; this page reads
    // it too (one request), for its own list when the SDK has no `members()`.
    if (app.connects > 1 && app.ready && app.presence.status !== "unsupported") loadPresence(gen);
  }
  if (prev === "connected" && state !== "connected") markRecovery();
  renderConnection();
  renderChat(); // pending pills say "queued offline" or "sending…"
  renderNetwork();
  renderPresence(); // the list is "last known" while disconnected
}

function recordTransition(from, to) {
  const now = performance.now();
  const n = app.net;
  n.transitions.push({ from, to, at: now, wall: new Date(), stayed: from ? now - n.since : null });
  if (n.transitions.length > 50) n.transitions.shift();
  n.since = now;
}

/** Publishes the SDK holds without an ack (all of this page's publishes go through publish()). */
const outboxSize = () => app.outgoing.filter((o) => o.status === "pending").length;

/** Remember where the chat was, to count what a recovery replays. */
function markRecovery() {
  app.recoveryMark = { received: app.received.length, lastOffset: lastKnownOffset() };
}
/** The highest chat offset this page knows of: received, or our own acknowledged publish. */
function lastKnownOffset() {
  let last = 0;
  for (const o of app.received) if (o != null && o > last) last = o;
  for (const o of app.outgoing) if (o.offset != null && o.offset > last) last = o.offset;
  return last;
}

function onChatMessage(gen, msg) {
  if (gen !== app.gen) return;
  app.net.bucket.msgs += 1;
  app.received.push(msg.offset ?? null);
  addMessage(msg, false);
  scheduleRender();
}

function addMessage(msg, fromHistory) {
  if (msg.offset == null) return;
  if (app.messages.has(msg.offset)) return;
  const data = msg.data && typeof msg.data === "object" ? msg.data : { text: String(msg.data) };
  app.messages.set(msg.offset, {
    offset: msg.offset,
    name: data.name ?? msg.from,
    text: data.text ?? JSON.stringify(msg.data),
    timestamp: msg.timestamp,
    mine: false,
    fromHistory,
  });
  if (app.oldest == null || msg.offset < app.oldest) app.oldest = msg.offset;
}

async function onRecovery(gen, info) {
  if (gen !== app.gen) return;
  const mark = app.recoveryMark;
  const kind = app.reconnected ? "reconnect" : "gap";
  app.reconnected = false;
  const r = {
    topic: info.topic, recovered: info.recovered, kind, replayed: 0, after: mark.lastOffset,
    first: null, last: null, settled: false, at: new Date().toISOString(),
  };
  // Messages delivered since the disconnect (or the previous recovery), not counting our own
  // publishes coming back (the server does not echo them live; a replay includes them).
  const count = () => {
    const mine = new Set(app.outgoing.map((o) => o.offset).filter((o) => o != null));
    const since = app.received.slice(mark.received).filter((o) => !mine.has(o));
    const offsets = since.filter((o) => o != null);
    Object.assign(r, {
      replayed: since.length,
      first: offsets.length ? Math.min(...offsets) : null,
      last: offsets.length ? Math.max(...offsets) : null,
    });
  };
  count();
  app.recoveries.push(r);
  renderNetwork();
  if (!info.recovered) {
    notice("warn", `Part of “${info.topic}” could not be replayed (trimmed or reset on the server). Reloading recent history.`);
    loadLatest(app.gen).catch((e) => notice("bad", `History failed: ${e.message}`));
  }
  // The server may confirm the subscription before it sends the replay: after one round trip
  // on this connection (answered in order) every replayed message has been handled.
  try {
    await app.client.history(TOPIC, { limit: 0 });
  } catch { /* dropped again: count what arrived */ }
  if (gen !== app.gen) return;
  count();
  r.settled = true;
  if (app.recoveryMark === mark) markRecovery();
  renderNetwork();
  if (info.recovered && kind === "reconnect") {
    const n = `${r.replayed} missed message${r.replayed === 1 ? "" : "s"}`;
    notice("ok", `Reconnected — “${info.topic}” recovered after #${r.after}: ${n} replayed, nothing lost.`);
  } // a repaired gap on a live connection is routine: recorded, not announced
}

async function connect(name) {
  const gen = ++app.gen;
  if (app.order.stream) {
    try { app.order.stream.close(); app.order.stream.free(); } catch { /* already gone */ }
    app.order.stream = null;
  }
  if (app.client) {
    try { app.client.close(); app.client.free(); } catch { /* already gone */ }
  }
  Object.assign(app, {
    name, state: "connecting", connects: 0, ready: false, messages: new Map(), received: [],
    outgoing: [], oldest: null, recoveries: [], reconnected: false,
    recoveryMark: { received: 0, lastOffset: 0 },
  });
  Object.assign(app.net, { transitions: [], peak: 0, flush: null, flushed: null, probing: false });
  recordTransition(null, "connecting");
  Object.assign(app.presence, { status: "loading", members: new Map(), events: [], more: false, stats: null, error: null });
  sessionStorage.setItem("tidings-demo-name", name);
  $("name-input").value = name;
  renderConnection();
  renderChat();

  const client = new TidingsClient({
    url: WS_URL,
    getToken: () => fetchToken(name),
    reconnect: RECONNECT,
  });
  app.client = client;
  client.onStateChange((s) => onState(gen, s));
  client.onError((e) => {
    if (gen !== app.gen) return;
    app.errors.push({ code: e.code, message: e.message });
    // A failing token fetch while the server is down is expected: the badge says reconnecting.
    if (e.code !== "TOKEN_PROVIDER") notice("bad", `${e.code}: ${e.message}`);
  });
  app.chatSub = client.subscribe(TOPIC, (m) => onChatMessage(gen, m));
  app.chatSub.onRecovery((info) => onRecovery(gen, info));
  app.chatSub.onError((e) => {
    if (gen !== app.gen) return;
    // With join/leave handlers, a refused presence read lands here too; the chat lives on.
    if (e.code === "PRESENCE_DISABLED") {
      Object.assign(app.presence, { status: "disabled", error: { code: e.code, message: e.message } });
      renderPresence();
    } else {
      notice("bad", `Chat subscription refused: ${e.code}`);
    }
  });
  // Who's online: the members of `chat` are its subscribers. After a reconnect the SDK reads
  // the list again and reports the differences as joins and leaves.
  if (typeof app.chatSub.onJoin === "function") {
    app.chatSub.onJoin((m) => onPresence(gen, "join", m));
    app.chatSub.onLeave((m) => onPresence(gen, "leave", m));
  }
  openOrder(app.order.id);
  renderNetwork();
  renderPresence();
  await loadLatest(gen);
  if (gen === app.gen) {
    app.ready = true;
    renderChat();
  }
  await loadPresence(gen);
}

// ---- who's online -------------------------------------------------------------------------

const displayName = (m) => (m.info && typeof m.info === "object" && typeof m.info.name === "string" && m.info.name)
  || m.user;

/** Who is on the chat: the SDK's roster (`sub.members()`, this tab's current connection
 *  included, kept by joins, leaves and the re-read after a reconnect) when this SDK build has
 *  it and has read it, else this page's copy (a presence read plus the joins and leaves). */
function presenceMembers() {
  const roster = typeof app.chatSub?.members === "function" ? app.chatSub.members() : null;
  return roster ?? [...app.presence.members.values()];
}

/** The current members. Asked after the subscription is in place (loadLatest's replies came
 *  back, and the server answers a connection's frames in order), so the list includes this
 *  tab, and every join or leave after it arrives as an event. */
async function loadPresence(gen) {
  const p = app.presence;
  if (typeof app.client.presence !== "function") {
    p.status = "unsupported";
    renderPresence();
    return;
  }
  try {
    const res = await app.client.presence(TOPIC);
    if (gen !== app.gen) return;
    p.members = new Map(res.members.map((m) => [m.client_id, m]));
    p.more = !!res.more;
    p.status = "ok";
    p.stats = p.more ? await app.client.presenceStats(TOPIC) : null;
  } catch (e) {
    if (gen !== app.gen) return;
    // Dropped mid-read: the next connection reads again; keep what is shown.
    if (p.status === "ok" && ["DISCONNECTED", "CLOSED", "TIMEOUT"].includes(e.code)) return;
    p.status = e.code === "PRESENCE_DISABLED" ? "disabled" : "error";
    p.error = { code: e.code, message: e.message };
  }
  if (gen === app.gen) renderPresence();
}

function onPresence(gen, kind, m) {
  if (gen !== app.gen || m.topic !== TOPIC) return;
  const p = app.presence;
  if (kind === "join") p.members.set(m.client_id, { client_id: m.client_id, user: m.user, info: m.info });
  else p.members.delete(m.client_id);
  if (p.stats) p.stats = { ...p.stats, clients: Math.max(0, p.stats.clients + (kind === "join" ? 1 : -1)) };
  p.events.push({ kind, user: m.user, name: displayName(m), client_id: m.client_id, at: new Date() });
  if (p.events.length > 30) p.events.shift();
  renderPresence();
}

/** The last INITIAL_HISTORY stored messages. Answered after the subscription is in place
 *  (the server answers one connection's requests in order), so nothing falls in between. */
async function loadLatest(gen) {
  const head = await app.client.history(TOPIC, { limit: 0 });
  if (gen !== app.gen) return;
  const since = Math.max(0, head.latest - INITIAL_HISTORY);
  if (head.latest > since) {
    const page = await app.client.history(TOPIC, { since, limit: INITIAL_HISTORY });
    if (gen !== app.gen) return;
    for (const m of page.messages) addMessage(m, true);
  }
  app.oldest = Math.min(app.oldest ?? since + 1, since + 1);
  scheduleRender();
}

async function loadEarlier() {
  const gen = app.gen;
  const before = (app.oldest ?? 1) - 1; // highest offset not loaded yet
  if (before <= 0) return 0;
  const since = Math.max(0, before - PAGE);
  const page = await app.client.history(TOPIC, { since, limit: before - since });
  if (gen !== app.gen) return 0;
  for (const m of page.messages) addMessage(m, true);
  app.oldest = since + 1;
  renderChat();
  return page.messages.length;
}

function publish(text) {
  const entry = { key: `local-${shortId()}${Date.now()}`, text, name: app.name, status: "pending", at: new Date().toISOString() };
  app.outgoing.push(entry);
  const gen = app.gen;
  // A round-trip sample only when sent on a live connection and acked on the same one (an ack
  // for a queued publish measures the outage, not the network).
  const sent = { at: performance.now(), conn: app.state === "connected" ? app.connects : -1 };
  scheduleRender();
  const p = app.client.publish(TOPIC, { text, name: app.name }).then(
    (ack) => {
      if (gen !== app.gen) return ack;
      if (sent.conn === app.connects && app.state === "connected") rttSample(performance.now() - sent.at);
      app.net.bucket.msgs += 1; // our own messages are not echoed back live
      entry.status = "acked";
      entry.offset = ack.offset;
      if (ack.offset != null && !app.messages.has(ack.offset)) {
        app.messages.set(ack.offset, {
          offset: ack.offset, name: app.name, text, timestamp: entry.at, mine: true,
        });
      } else if (ack.offset != null) {
        app.messages.get(ack.offset).mine = true;
      }
      scheduleRender();
      return ack;
    },
    (err) => {
      if (gen === app.gen) {
        entry.status = "failed";
        entry.error = `${err.code}: ${err.message}`;
        scheduleRender();
      }
      throw err;
    },
  );
  p.catch(() => {}); // the UI shows the failure; callers may still await it
  return p;
}

// ---- order stream -------------------------------------------------------------------------

function openOrder(id) {
  const o = app.order;
  if (o.stream) {
    try { o.stream.close(); o.stream.free(); } catch { /* gone */ }
  }
  Object.assign(o, { id, stream: null, state: null, version: 0, log: [], loaded: false, conflicts: [], lastError: null });
  $("order-id").value = id;
  const gen = app.gen;
  const log = [];
  o.log = log;
  // Folded by the Rust Order aggregate inside the SDK. `onEvent` sees each folded event once,
  // in version order: the log is kept beside the fold.
  const stream = app.client.stream(id, "order");
  stream.onEvent((event) => {
    log.push({ version: event.version, type: event.type, data: event.data, timestamp: event.timestamp });
  });
  o.stream = stream;
  o.state = stream.state; // the aggregate's default state until the stream is loaded
  stream.onChange((state, version) => {
    if (gen !== app.gen || o.stream !== stream) return;
    if (o.loaded && version !== o.version) o.lastError = null; // the order moved on
    o.state = state;
    o.version = version;
    o.loaded = true;
    renderOrder();
  });
  stream.onError((e) => {
    if (gen !== app.gen || o.stream !== stream) return;
    o.lastError = { code: e.code, message: e.message };
    renderOrder();
  });
  renderOrder();
}

const COMMAND_LABEL = {
  create: "Create order", add_item: "Add item", remove_item: "Remove item",
  confirm: "Confirm", ship: "Ship", cancel: "Cancel order",
};

/** Run a command: the SDK decides it with the Rust aggregate on the folded state (a refusal
 *  rejects with its code, nothing sent) and appends its events at the stream's version. A
 *  VERSION_CONFLICT is not retried: the board catches up by itself and the user decides again. */
async function orderCommand(name, args = {}) {
  const o = app.order;
  const stream = o.stream;
  o.lastError = null;
  const seenVersion = stream.version;
  o.busy = true;
  renderOrder();
  try {
    const res = await stream.execute({ ...args, type: name });
    return { ok: true, version: res.version };
  } catch (e) {
    if (o.stream !== stream) return { ok: false, code: e.code, message: e.message };
    if (e.code === "VERSION_CONFLICT") {
      o.conflicts.push({
        command: name, yourVersion: seenVersion, currentVersion: e.currentVersion,
        at: new Date().toISOString(),
      });
    } else {
      o.lastError = { code: e.code, message: e.message };
    }
    return { ok: false, code: e.code, message: e.message, currentVersion: e.currentVersion };
  } finally {
    o.busy = false;
    renderOrder();
  }
}

/** Whether the aggregate would accept `command` now (a dry run of its decision: the rules
 *  live in Rust, not here). */
function accepts(command) {
  const stream = app.order.stream;
  if (!stream) return false;
  try {
    stream.decide(command);
    return true;
  } catch {
    return false;
  }
}

/** Which commands the folded state allows: for enabling buttons. */
function allowed() {
  return {
    create: accepts({ type: "create", customer_id: app.name }),
    add_item: accepts({ type: "add_item", id: "\u0000probe", name: "probe", price: 0, quantity: 1 }),
    remove_item: (id) => accepts({ type: "remove_item", item_id: id }),
    confirm: accepts({ type: "confirm" }),
    ship: accepts({ type: "ship", tracking_number: "probe" }),
    cancel: accepts({ type: "cancel", reason: "probe" }),
  };
}

/** What the last event of `type` in the log carried (the aggregate's state keeps no tracking
 *  number or reason). */
function lastEventData(type) {
  for (let i = app.order.log.length - 1; i >= 0; i -= 1) {
    if (app.order.log[i].type === type) return app.order.log[i].data ?? {};
  }
  return {};
}

function itemFromPicker() {
  const p = CATALOGUE.find((c) => c.sku === $("add-sku").value) ?? CATALOGUE[0];
  const quantity = Math.max(1, Math.min(99, parseInt($("add-qty").value, 10) || 1));
  return { id: `${p.sku}-${shortId()}`, name: p.name, price: p.price, quantity };
}

// ---- rendering ----------------------------------------------------------------------------

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  queueMicrotask(() => {
    renderQueued = false;
    renderChat();
    renderNetwork();
  });
}

function renderConnection() {
  const box = $("conn");
  box.dataset.state = app.state;
  $("conn-state").textContent = app.state;
  const n = Math.max(0, app.connects - 1);
  $("conn-reconnects").textContent = `${n} reconnect${n === 1 ? "" : "s"}`;
  box.title = `Signed in as ${app.name}`;
}

function renderChat() {
  const list = $("messages");
  const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 60;
  const offsets = [...app.messages.keys()].sort((a, b) => a - b);
  const items = [];
  for (const off of offsets) {
    const m = app.messages.get(off);
    const mine = m.mine || app.outgoing.some((o) => o.offset === off);
    items.push(el("li", { class: `msg${mine ? " mine" : ""}`, "data-offset": String(off), "data-status": mine ? "acked" : "received" },
      el("span", { class: "who", text: mine ? `${m.name} (you)` : m.name }),
      el("span", {}),
      el("span", { class: "meta" },
        el("time", { text: time(m.timestamp) }),
        el("span", { class: `pill ${mine ? "acked" : "offset"}`, text: `#${off}`, title: mine ? `acknowledged at offset ${off}` : `offset ${off}` })),
      el("span", { class: "text", text: m.text })));
  }
  for (const o of app.outgoing) {
    if (o.status === "acked") continue;
    const waiting = app.state === "connected" ? "sending…" : "queued offline";
    items.push(el("li", { class: "msg mine", "data-status": o.status },
      el("span", { class: "who", text: `${o.name} (you)` }),
      el("span", {}),
      el("span", { class: "meta" },
        el("span", { text: o.status === "failed" ? o.error : waiting }),
        el("span", { class: `pill ${o.status}`, text: o.status === "failed" ? "failed" : "pending" })),
      el("span", { class: "text", text: o.text })));
  }
  if (items.length === 0) items.push(el("li", { class: "muted small", text: app.ready ? "No messages yet. Say hi!" : "Loading…" }));
  list.replaceChildren(...items);
  if (nearBottom) list.scrollTop = list.scrollHeight;

  const pending = app.outgoing.filter((o) => o.status === "pending").length;
  $("chat-count").textContent = `${offsets.length} message${offsets.length === 1 ? "" : "s"}${pending ? ` · ${pending} pending` : ""}`;
  const more = (app.oldest ?? 1) > 1;
  $("load-history").disabled = !more || !app.ready;
  $("history-note").textContent = app.ready
    ? (more ? `showing from #${app.oldest}` : "all history loaded")
    : "";
}

function renderOrder() {
  const o = app.order;
  const s = o.state ?? { customer_id: null, items: [], total: 0, status: "pending" };
  $("order-version").textContent = o.loaded ? `version ${o.version}` : "loading…";
  const badge = $("order-status");
  badge.textContent = s.status;
  badge.dataset.status = s.status;
  $("order-customer").textContent = s.customer_id ?? "—";
  $("order-total").textContent = formatMoney(s.total ?? 0);
  $("order-extra").textContent = s.status === "shipped" ? `Tracking number ${lastEventData("order_shipped").tracking_number ?? "?"}`
    : s.status === "cancelled" ? `Cancelled: ${lastEventData("order_cancelled").reason ?? ""}` : "";

  const can = allowed();
  const body = $("order-items");
  if (s.items.length === 0) {
    body.replaceChildren(el("tr", { class: "empty" }, el("td", { colSpan: 5, text: "No items" })));
  } else {
    body.replaceChildren(...s.items.map((i) => el("tr", { "data-item": i.id },
      el("td", { text: i.name, title: i.id }),
      el("td", { class: "num", text: String(i.quantity) }),
      el("td", { class: "num", text: formatMoney(i.price) }),
      el("td", { class: "num", text: formatMoney((toCents(i.price) * i.quantity) / 100) }),
      el("td", { class: "num" }, el("button", {
        type: "button", class: "secondary", text: "Remove", disabled: !can.remove_item(i.id) || o.busy,
        ariaLabel: `Remove ${i.name}`, onclick: () => orderCommand("remove_item", { item_id: i.id }),
      })))));
  }
  const ready = o.loaded && !o.busy;
  $("cmd-create").disabled = !ready || !can.create;
  $("cmd-add").disabled = !ready || !can.add_item;
  $("cmd-confirm").disabled = !ready || !can.confirm;
  $("cmd-ship").disabled = !ready || !can.ship;
  $("cmd-cancel").disabled = !ready || !can.cancel;

  const c = o.conflicts[o.conflicts.length - 1];
  const box = $("conflict");
  if (c && !c.dismissed) {
    box.hidden = false;
    box.replaceChildren(
      el("div", {}, el("strong", { text: "VERSION_CONFLICT" }),
        ` — “${COMMAND_LABEL[c.command] ?? c.command}” was not applied: another tab wrote version ${c.currentVersion} while this tab was at version ${c.yourVersion}. The board catches up with the latest state by itself; check it and try again.`),
      el("div", { class: "actions" }, el("button", { type: "button", class: "secondary", text: "Dismiss", onclick: () => { c.dismissed = true; renderOrder(); } })));
  } else {
    box.hidden = true;
  }
  const err = $("order-error");
  if (o.lastError) {
    err.hidden = false;
    err.textContent = `${o.lastError.code}: ${o.lastError.message}`;
  } else {
    err.hidden = true;
  }

  const log = $("order-log");
  if (o.log.length === 0) {
    log.replaceChildren(el("li", {}, el("span", { class: "empty", text: o.loaded ? "No events yet — create the order." : "Loading…" })));
  } else {
    log.replaceChildren(...[...o.log].reverse().map((e) => el("li", { "data-version": String(e.version) },
      el("span", { class: "v", text: `v${e.version}` }),
      el("span", { class: "type", text: e.type }),
      el("span", { class: "data", text: JSON.stringify(e.data) }))));
  }
}

const clock = (d) => `${d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false })}.${String(d.getMilliseconds()).padStart(3, "0")}`;
const secs = (ms) => (ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`);
const plural = (n, one, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

function renderNetwork() {
  const n = app.net;
  // The state machine: the current node lit, each node with how often it was entered.
  for (const li of $("machine").children) {
    const node = li.dataset.node;
    const entered = n.transitions.filter((t) => t.to === node).length;
    li.classList.toggle("active", node === app.state);
    li.dataset.count = entered ? `×${entered}` : "";
  }
  $("transitions").replaceChildren(...n.transitions.slice(-8).reverse().map((t) => el("li", { "data-to": t.to },
    el("time", { text: clock(t.wall) }),
    el("span", { class: "arrow" }, t.from ? `${t.from} → ` : "new client → ", el("strong", { text: t.to })),
    el("span", { class: "muted", text: t.stayed != null ? `after ${secs(t.stayed)}` : "" }))));

  // Outbox: fills while offline, drains after the reconnect.
  const size = outboxSize();
  if (size === 0) {
    if (n.flush) n.flushed = { size: n.flush.size, ms: performance.now() - n.flush.at };
    n.flush = null;
    n.peak = 0;
  }
  n.peak = Math.max(n.peak, size);
  $("outbox-count").textContent = String(size);
  $("outbox-plural").textContent = size === 1 ? "" : "es";
  $("network").dataset.outbox = String(size);
  const bar = $("outbox-bar");
  bar.style.width = `${n.peak ? (100 * size) / n.peak : 0}%`;
  bar.dataset.state = app.state === "connected" ? "flushing" : "filling";
  let note;
  if (size > 0 && app.state !== "connected") note = `Filling: ${plural(size, "publish", "publishes")} queued while ${app.state}; sent once the connection is back.`;
  else if (size > 0) note = `Flushing: ${size} of ${n.peak} waiting for the server's ack.`;
  else if (n.flushed) note = `Flushed: ${plural(n.flushed.size, "queued publish", "queued publishes")} acknowledged ${secs(n.flushed.ms)} after reconnecting.`;
  else note = "Empty: every publish is acknowledged.";
  $("outbox-note").textContent = note;

  // Recovery: what the last reconnect replayed.
  const last = app.recoveries[app.recoveries.length - 1];
  const describe = (r) => {
    const range = r.first != null ? (r.first === r.last ? ` (#${r.first})` : ` (#${r.first}–#${r.last})`) : "";
    return `${plural(r.replayed, "message")} replayed after #${r.after}${range}`;
  };
  const lastBox = $("recovery-last");
  if (last) {
    lastBox.className = `small recovery ${last.recovered ? "ok" : "bad"}`;
    lastBox.replaceChildren(
      el("code", { text: `recovered: ${last.recovered}` }), " · ", describe(last), ` · ${last.kind}`);
  } else {
    lastBox.className = "small muted";
    lastBox.textContent = "No reconnect yet: drop the connection to see the replay.";
  }
  $("recovery-list").replaceChildren(...app.recoveries.slice(-5, -1).reverse().map((r) => el("li", { class: r.recovered ? "ok" : "bad" },
    el("time", { text: clock(new Date(r.at)) }), ` recovered: ${r.recovered} · ${describe(r)}`)));

  const offline = tap.offline;
  const btn = $("net-offline");
  btn.textContent = offline ? "Back online" : "Go offline";
  btn.setAttribute("aria-pressed", String(offline));
  $("net-drop").disabled = offline || app.state !== "connected";
  $("network").dataset.offline = String(offline);
}

function renderPresence() {
  const p = app.presence;
  const box = $("presence");
  box.dataset.status = p.status;
  box.classList.toggle("stale", p.status === "ok" && app.state !== "connected");
  const list = $("presence-list");
  const count = $("presence-count");
  if (p.status !== "ok") {
    const text = {
      loading: "Loading…",
      unsupported: "This SDK build has no presence API yet (client.presence).",
      disabled: "Presence is off on this server: start it with --presence-topic chat.",
      error: `Presence failed: ${p.error?.code ?? ""} ${p.error?.message ?? ""}`,
    }[p.status];
    count.textContent = text;
    list.replaceChildren();
  } else {
    // One row per person; a person with two tabs is two members (two connections).
    const people = new Map();
    const members = presenceMembers();
    for (const m of members) {
      const row = people.get(m.user) ?? { user: m.user, name: displayName(m), tabs: 0 };
      row.tabs += 1;
      people.set(m.user, row);
    }
    const rows = [...people.values()].sort((a, b) => (b.user === app.name) - (a.user === app.name) || a.name.localeCompare(b.name));
    const tabs = members.length;
    count.textContent = p.stats
      ? `${plural(p.stats.users, "person", "people")} · ${plural(p.stats.clients, "tab")} (showing ${tabs})`
      : `${plural(rows.length, "person", "people")} · ${plural(tabs, "tab")}${app.state === "connected" ? "" : " · last known"}`;
    list.replaceChildren(...rows.map((r) => el("li", { "data-user": r.user, class: r.user === app.name ? "me" : "" },
      el("span", { class: "dot", ariaHidden: "true" }),
      el("span", { class: "name", text: r.name, title: r.user }),
      r.user === app.name ? el("span", { class: "muted small", text: "(you)" }) : null,
      r.tabs > 1 ? el("span", { class: "pill offset", text: `${r.tabs} tabs` }) : null)));
    if (rows.length === 0) list.replaceChildren(el("li", { class: "muted small", text: "Nobody yet." }));
  }
  // A leave then a join of the same person within seconds is one connection replaced by the
  // next (a dropped connection, a server restart): shown as one "reconnected" line.
  const shown = [];
  for (const e of p.events) {
    const prev = shown[shown.length - 1];
    if (e.kind === "join" && prev?.kind === "leave" && prev.user === e.user && e.at - prev.at < 10_000) {
      shown[shown.length - 1] = { ...e, kind: "rejoin" };
    } else {
      shown.push(e);
    }
  }
  const verb = { join: " joined", leave: " left", rejoin: " reconnected" };
  $("presence-events").replaceChildren(...shown.slice(-6).reverse().map((e) => el("li", { "data-kind": e.kind },
    el("time", { text: time(e.at.toISOString()) }), " ",
    el("strong", { text: e.name }), verb[e.kind])));
  if (p.events.length === 0) $("presence-events").replaceChildren(el("li", { class: "muted", text: "No joins or leaves yet." }));
}

// ---- live traffic -------------------------------------------------------------------------

let chart = null;

function rttSample(ms) {
  app.net.bucket.rtts.push(ms);
}

/** Once a second: close the current second's bucket and draw it. */
function tick() {
  const n = app.net;
  const { msgs, rtts } = n.bucket;
  n.bucket = { msgs: 0, rtts: [] };
  const rtt = rtts.length ? rtts.reduce((a, b) => a + b, 0) / rtts.length : null;
  n.lastRate = msgs;
  if (rtt != null) n.lastRtt = rtt;
  chart?.push({ rate: msgs, rtt, state: app.state });
  $("rate-now").textContent = String(msgs);
  $("rtt-now").textContent = n.lastRtt == null ? "—" : `${n.lastRtt < 10 ? n.lastRtt.toFixed(1) : Math.round(n.lastRtt)} ms`;
}

/** Every 2 s on a live connection: one request/reply (an empty history page), timed. */
async function probe() {
  const n = app.net;
  if (n.probing || app.state !== "connected" || !app.client || document.visibilityState !== "visible") return;
  const gen = app.gen;
  const conn = app.connects;
  n.probing = true;
  const t0 = performance.now();
  try {
    await app.client.history(TOPIC, { limit: 0 });
    if (gen === app.gen && conn === app.connects) rttSample(performance.now() - t0);
  } catch { /* dropped mid-probe: no sample */ } finally {
    if (gen === app.gen) n.probing = false;
  }
}

function notice(kind, text) {
  const box = $("notices");
  const n = el("div", { class: `notice ${kind}`, "data-kind": kind },
    el("span", { text: `${time()} · ${text}` }),
    el("button", { type: "button", text: "Dismiss", onclick: () => n.remove() }));
  box.append(n);
  while (box.children.length > 3) box.firstElementChild.remove();
}

// ---- wiring -------------------------------------------------------------------------------

function wire() {
  $("name-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const name = $("name-input").value.trim();
    if (name && name !== app.name) connect(name);
  });
  $("chat-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("chat-input");
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    publish(text);
  });
  $("load-history").addEventListener("click", () => {
    loadEarlier().catch((e) => notice("bad", `History failed: ${e.code ?? ""} ${e.message}`));
  });
  $("order-open").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = $("order-id").value.trim();
    if (id) openOrder(id);
  });
  $("order-new").addEventListener("click", () => openOrder(`order-${shortId()}`));
  $("add-sku").replaceChildren(...CATALOGUE.map((c) => el("option", { value: c.sku, text: `${c.name} — ${formatMoney(c.price)}` })));
  $("cmd-create").addEventListener("click", () => orderCommand("create", { customer_id: app.name, items: [] }));
  $("cmd-add").addEventListener("click", () => orderCommand("add_item", itemFromPicker()));
  $("cmd-confirm").addEventListener("click", () => orderCommand("confirm"));
  $("cmd-ship").addEventListener("click", () => orderCommand("ship", { tracking_number: `TRK-${shortId().toUpperCase()}${Math.floor(Math.random() * 9000 + 1000)}` }));
  $("cmd-cancel").addEventListener("click", () => orderCommand("cancel", { reason: $("cancel-reason").value.trim() || "no reason given" }));
  $("net-drop").addEventListener("click", () => {
    if (tap.drop() === 0) notice("warn", "No open connection to drop.");
  });
  $("net-offline").addEventListener("click", () => {
    tap.setOffline(!tap.offline);
    renderNetwork();
  });
  chart = new LiveChart($("chart"));
  setInterval(tick, 1000);
  setInterval(probe, 2000);
}

// The test hook: read-only views of the page's state plus the actions a user can take.
window.__demo = {
  get name() { return app.name; },
  get state() { return app.state; },
  get reconnects() { return Math.max(0, app.connects - 1); },
  get ready() { return app.ready; },
  get messages() {
    return [...app.messages.values()].sort((a, b) => a.offset - b.offset)
      .map(({ offset, name, text, mine }) => ({ offset, name, text, mine: !!mine }));
  },
  get received() { return [...app.received]; },
  get pending() { return app.outgoing.filter((o) => o.status === "pending").map((o) => o.text); },
  get outgoing() { return app.outgoing.map(({ text, status, offset }) => ({ text, status, offset })); },
  get recoveries() { return [...app.recoveries]; },
  get errors() { return [...app.errors]; },
  net: {
    get transitions() { return app.net.transitions.map((t) => [t.from, t.to]); },
    get outbox() { return outboxSize(); },
    get offline() { return tap.offline; },
    get lastRtt() { return app.net.lastRtt; },
    drop: () => tap.drop(),
    setOffline: (v) => { tap.setOffline(v); renderNetwork(); },
  },
  presence: {
    get status() { return app.presence.status; },
    /** Names shown in "who's online", sorted. */
    get users() { return [...new Set(presenceMembers().map(displayName))].sort(); },
    get members() { return presenceMembers().map(({ client_id, user, info }) => ({ client_id, user, info })); },
    get events() { return app.presence.events.map(({ kind, user, name }) => ({ kind, user, name })); },
  },
  publish: (text) => publish(text).then((ack) => ({ offset: ack.offset, epoch: ack.epoch })),
  setName: (name) => connect(name),
  loadEarlier: () => loadEarlier(),
  /** A request/reply on this page's connection: everything the server sent before is handled. */
  roundTrip: () => app.client.history(TOPIC, { limit: 0 }).then((h) => h.latest),
  order: {
    get id() { return app.order.id; },
    get loaded() { return app.order.loaded; },
    get state() { return app.order.state; },
    get version() { return app.order.version; },
    get log() { return app.order.log.map((e) => ({ version: e.version, type: e.type, data: e.data })); },
    get conflicts() { return app.order.conflicts.map(({ command, yourVersion, currentVersion }) => ({ command, yourVersion, currentVersion })); },
    get lastError() { return app.order.lastError; },
    open: (id) => openOrder(id),
    command: (name, args) => orderCommand(name, args),
  },
};

async function main() {
  wire();
  renderConnection();
  renderOrder();
  renderNetwork();
  renderPresence();
  try {
    await init();
  } catch (e) {
    notice("bad", `Could not load the SDK (./pkg/aggregates/tidings.js): ${e.message}. Run scripts/start.`);
    return;
  }
  await connect(app.name);
}

main().catch((e) => notice("bad", `Startup failed: ${e.code ?? ""} ${e.message}`));
