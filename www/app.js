// Tidings demo page: a live chat on the durable topic `chat` and an event-sourced Order
// stream, over the WebAssembly SDK. Plain ES modules, no build step.
//
// The SDK does the hard parts (reconnect with backoff, replay with `since`, offline outbox,
// dedup by offset, token refresh); this file only renders what it reports. `window.__demo`
// exposes the page's state to the end-to-end test (tests/e2e/).

import init, { TidingsClient } from "./pkg/tidings.js";
import {
  initialOrder, reduceOrder, commands, allowed, formatMoney, toCents, CATALOGUE,
} from "./order.js";

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
  order: {
    id: params.get("order") || "order-1",
    stream: null,
    state: initialOrder(),
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
  if (state === "connected") {
    app.connects += 1;
    if (app.connects > 1) app.reconnected = true; // the next recovery is this reconnect's
  }
  if (prev === "connected" && state !== "connected") markRecovery();
  renderConnection();
  renderChat(); // pending pills say "queued offline" or "sending…"
}

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

function onRecovery(gen, info) {
  if (gen !== app.gen) return;
  // Messages delivered since the disconnect (or the previous recovery), not counting our own
  // publishes coming back (the server does not echo them live; a replay includes them).
  const mine = new Set(app.outgoing.map((o) => o.offset).filter((o) => o != null));
  const since = app.received.slice(app.recoveryMark.received);
  const replayed = since.filter((o) => !mine.has(o)).length;
  const kind = app.reconnected ? "reconnect" : "gap";
  const r = { topic: info.topic, recovered: info.recovered, kind, replayed, after: app.recoveryMark.lastOffset, at: new Date().toISOString() };
  app.reconnected = false;
  markRecovery();
  app.recoveries.push(r);
  if (!info.recovered) {
    notice("warn", `Part of “${info.topic}” could not be replayed (trimmed or reset on the server). Reloading recent history.`);
    loadLatest(app.gen).catch((e) => notice("bad", `History failed: ${e.message}`));
  } else if (kind === "reconnect") {
    const n = `${replayed} missed message${replayed === 1 ? "" : "s"}`;
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
  app.chatSub.onError((e) => gen === app.gen && notice("bad", `Chat subscription refused: ${e.code}`));
  openOrder(app.order.id);
  await loadLatest(gen);
  if (gen === app.gen) {
    app.ready = true;
    renderChat();
  }
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
  scheduleRender();
  const p = app.client.publish(TOPIC, { text, name: app.name }).then(
    (ack) => {
      if (gen !== app.gen) return ack;
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
  Object.assign(o, { id, stream: null, state: initialOrder(), version: 0, log: [], loaded: false, conflicts: [], lastError: null });
  $("order-id").value = id;
  const gen = app.gen;
  const log = [];
  o.log = log;
  // The SDK calls the reducer once per event, in version order, exactly once: the log is kept
  // beside the fold.
  const stream = app.client.stream(id, (state, event) => {
    log.push({ version: event.version, type: event.type, data: event.data, timestamp: event.timestamp });
    return reduceOrder(state, event);
  }, initialOrder());
  o.stream = stream;
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

/** Run a command against the folded state and append its events at the stream's version. */
async function orderCommand(name, args = {}) {
  const o = app.order;
  const stream = o.stream;
  o.lastError = null;
  const seenVersion = stream.version;
  let events;
  try {
    events = commands[name](stream.state, args);
  } catch (e) {
    o.lastError = { code: e.code ?? "ORDER_REFUSED", message: e.message };
    renderOrder();
    return { ok: false, code: o.lastError.code, message: e.message };
  }
  o.busy = true;
  renderOrder();
  try {
    const res = await stream.append(events);
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
  const s = o.state ?? initialOrder();
  $("order-version").textContent = o.loaded ? `version ${o.version}` : "loading…";
  const badge = $("order-status");
  badge.textContent = s.status;
  badge.dataset.status = s.status;
  $("order-customer").textContent = s.customer_id ?? "—";
  $("order-total").textContent = formatMoney(s.total ?? 0);
  $("order-extra").textContent = s.status === "shipped" ? `Tracking number ${s.tracking_number ?? "?"}`
    : s.status === "cancelled" ? `Cancelled: ${s.cancel_reason ?? ""}` : "";

  const can = allowed(s);
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
        type: "button", class: "secondary", text: "Remove", disabled: !can.remove_item || o.busy,
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
  try {
    await init();
  } catch (e) {
    notice("bad", `Could not load the SDK (./pkg/tidings.js): ${e.message}. Run scripts/start.`);
    return;
  }
  await connect(app.name);
}

main().catch((e) => notice("bad", `Startup failed: ${e.code ?? ""} ${e.message}`));
