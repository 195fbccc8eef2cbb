// The JS API of the `tidings` package: `TidingsClient`, `Subscription`, `EventStream`.
//
// This file is the browser shell. It owns the WebSocket, the one timer, the `online`/`offline`
// and `visibilitychange` listeners, sessionStorage, promises and the application's callbacks.
// Every decision is made by the Rust sans-IO core in the wasm (`Engine`, sdk-wasm/src/engine),
// reached through JSON text: the shell feeds it what happened (`handle`) and what the
// application asked for (`call`), and carries out the actions it answers with, in order.
//
// Re-entrancy rule: actions go through one FIFO queue. A callback may call back into the client
// (publish from a message handler, even close()); the actions of that call are queued behind the
// ones still waiting, exactly as if the core had queued them all, so a stale timer or state
// never overtakes a newer one.
import { Engine } from "./engine.js";

// Input kinds of Engine.handle (sdk-wasm/src/engine: `handle`).
const START = 0, TOKEN_OK = 1, TOKEN_ERR = 2, OPENED = 3, CLOSED = 4, FRAME = 5, TIMER = 6,
  ONLINE = 7, OFFLINE = 8, VISIBLE = 9, FLUSH = 10;
const MAX_DELAY = 2147483647; // setTimeout's largest delay (ms)

/** An `Error` with the SDK's `code` (and `currentVersion` for VERSION_CONFLICT). */
function toError(e) {
  const err = new Error(e.message);
  err.code = e.code;
  if (e.currentVersion != null) err.currentVersion = e.currentVersion;
  return err;
}

function invalid(message) {
  return toError({ code: "INVALID_ARGUMENT", message: "invalid argument: " + message });
}

/** Call an application callback; if it throws, log it and go on. */
function call(f, ...args) {
  try {
    f(...args);
  } catch (e) {
    console.error("tidings: a callback threw", e);
  }
}

/** A count or time the application passed: a finite number >= 0, whole, at most 2^53 - 1. */
function whole(v) {
  return Math.min(Math.floor(Math.max(v, 0)) || 0, Number.MAX_SAFE_INTEGER);
}

function ms(obj, key, into, name) {
  const v = obj && obj[key];
  if (typeof v === "number" && v >= 0 && v === v) into[name] = whole(v);
}

/** `since` of subscribe: "latest" (or absent), an offset, or `{offset, epoch}`. */
function since(options) {
  const s = options == null ? undefined : options.since;
  if (s == null || s === "latest") return null;
  if (typeof s === "number" && s >= 0) return { offset: whole(s), epoch: null };
  if (s && typeof s.offset === "number" && s.offset >= 0) {
    return { offset: whole(s.offset), epoch: typeof s.epoch === "string" ? s.epoch : null };
  }
  throw invalid('since must be "latest", an offset, or {offset, epoch}');
}

/** JSON text of an application value, or throws INVALID_ARGUMENT. */
function json(value, what) {
  let text;
  try {
    text = JSON.stringify(value);
  } catch (_) {
    text = undefined;
  }
  if (text === undefined) throw invalid(what + " must be JSON-serializable");
  return text;
}

/** Positions saved by `persistOffsets`, keeping only well-formed entries. */
function loadSaved(key) {
  const saved = new Map();
  try {
    const all = JSON.parse(sessionStorage.getItem(key) || "{}");
    for (const topic of Object.keys(all)) {
      const p = all[topic];
      if (p && Number.isSafeInteger(p.offset) && p.offset >= 0) {
        saved.set(topic, { offset: p.offset, epoch: typeof p.epoch === "string" ? p.epoch : null });
      }
    }
  } catch (_) {
    // No storage, or not ours: start from "latest".
  }
  return saved;
}

/**
 * A Tidings connection: subscribe, publish, history, presence and event streams, with
 * reconnects, replay and an offline queue handled for you.
 */
export class TidingsClient {
  #engine;
  #queue = [];
  #pumping = false;
  #socket = null; // { id, ws }
  #timer = null;
  #listeners = [];
  #stateHandlers = [];
  #errorHandlers = [];
  #subs = new Map(); // sub id -> { handler, onRecovery, onError, onJoin, onLeave }
  #waiters = new Map(); // request id -> { resolve, reject }
  #streams = new Map(); // stream handle -> EventStream
  #getToken = null;
  #persistKey = null;
  #saved = new Map();
  #dirty = false;

  /**
   * Connect with `options` (`url` or `urls`, `token` or `getToken`, `reconnect`,
   * `persistOffsets`, `requestTimeoutMs`, `connectTimeoutMs`, `outboxCapacity`). Connecting
   * starts once the current task is done; watch `onStateChange`.
   */
  constructor(options) {
    if (options === null || typeof options !== "object") throw invalid("options must be an object");
    const urls = [];
    if (typeof options.url === "string") urls.push(options.url);
    if (Array.isArray(options.urls)) {
      for (const u of options.urls) {
        if (typeof u !== "string") throw invalid("urls must be strings");
        urls.push(u);
      }
    }
    const getToken = typeof options.getToken === "function" ? options.getToken : null;
    const config = {
      urls,
      token: typeof options.token === "string" ? options.token : null,
      tokenProvider: getToken !== null,
      instanceId: Math.floor(Math.random() * 4294967296).toString(16).padStart(8, "0") +
        Math.floor(Math.random() * 4294967296).toString(16).padStart(8, "0"),
    };
    ms(options.reconnect, "minDelayMs", config, "minDelayMs");
    ms(options.reconnect, "maxDelayMs", config, "maxDelayMs");
    ms(options, "requestTimeoutMs", config, "requestTimeoutMs");
    ms(options, "connectTimeoutMs", config, "connectTimeoutMs");
    ms(options, "outboxCapacity", config, "outboxCapacity");
    try {
      this.#engine = new Engine(JSON.stringify(config));
    } catch (e) {
      throw typeof e === "string" ? toError(JSON.parse(e)) : e;
    }
    this.#getToken = getToken;
    if (options.persistOffsets === true) {
      this.#persistKey = "tidings:offsets:" + urls.join(",");
      this.#saved = loadSaved(this.#persistKey);
    }
    // A page, or a worker (no `window`, no `document`): listen to what the global scope has.
    this.#listen(globalThis, "online", () => this.#feed(ONLINE));
    this.#listen(globalThis, "offline", () => this.#feed(OFFLINE));
    if (typeof document !== "undefined") {
      this.#listen(document, "visibilitychange", () => {
        if (document.visibilityState === "visible") this.#feed(VISIBLE);
      });
    }
    // Connect once the constructor's task is done, so handlers registered right after `new`
    // (onStateChange, onError) hear everything, even a token refused at once.
    Promise.resolve().then(() => this.#feed(START));
  }

  /** The connection state: "connecting" | "connected" | "reconnecting" | "closed". */
  get state() {
    return this.#engine ? this.#engine.state() : "closed";
  }

  /** Call `handler(state)` on every state change. */
  onStateChange(handler) {
    this.#stateHandlers.push(handler);
  }

  /** Call `handler(error)` for errors not tied to a request (RATE_LIMITED, UNAUTHORIZED, …). */
  onError(handler) {
    this.#errorHandlers.push(handler);
  }

  /**
   * Receive `topic`'s messages: `handler({topic, data, from, timestamp, offset?, epoch?})`.
   * `options.since`: "latest" (default), an offset (0: everything stored), or `{offset, epoch}`.
   */
  subscribe(topic, handler, options) {
    let from = since(options);
    topic = String(topic);
    if (from === null) from = this.#saved.get(topic) || null;
    const sub = this.#call({ op: "subscribe", topic, since: from }, (id) => {
      this.#subs.set(id, { handler, onRecovery: [], onError: [], onJoin: [], onLeave: [] });
    });
    return new Subscription(this, sub, topic);
  }

  /**
   * Publish `data` (any JSON value) to `topic`: resolves with `{topic, offset, epoch}` once the
   * server acknowledged it; queued while offline (retries carry the same id).
   */
  publish(topic, data) {
    return this.#promise(() =>
      '{"op":"publish","topic":' + JSON.stringify(String(topic)) + ',"data":' + json(data, "data") + "}");
  }

  /** Stored messages of a durable topic after offset `since` (at most `limit`). */
  history(topic, options) {
    const o = options || {};
    const op = { op: "history", topic: String(topic), since: null, limit: null };
    if (typeof o.since === "number") op.since = whole(o.since);
    if (typeof o.limit === "number") op.limit = Math.min(whole(o.limit), 4294967295);
    return this.#promise(() => op);
  }

  /** Who is on presence topic `topic`: `{topic, members, more}`. */
  presence(topic) {
    return this.#promise(() => ({ op: "presence", topic: String(topic) }));
  }

  /** How many are on presence topic `topic`: `{topic, clients, users}`. */
  presenceStats(topic) {
    return this.#promise(() => ({ op: "presenceStats", topic: String(topic) }));
  }

  /**
   * An event stream folded into state: by `reducer(state, event)` from `initial`, or by the
   * built-in Rust aggregate named `folder` (`"order"`, the `tidings/aggregates` entry).
   */
  stream(id, folder, initial) {
    const model = typeof folder === "string" ? folder : null;
    if (model === null && typeof folder !== "function") {
      throw invalid("stream needs a reducer function or a built-in aggregate's name");
    }
    let stream = null;
    const handle = this.#call({ op: "stream", id: String(id), model }, (h) => {
      stream = new EventStream(this, h, model === null ? folder : null, model === null ? initial : null);
      this.#streams.set(h, stream);
    });
    if (model !== null) stream._set(this.#call({ op: "streamState", stream: handle }));
    return stream;
  }

  /** Close for good: pending requests reject with CLOSED; no timer, listener or socket is left. */
  close() {
    if (!this.#engine) return;
    this.#call({ op: "close" });
    // Called from a callback, the pump is still running: carry out what the close queued (the
    // "closed" state) now, as the core would; nothing queued after it may run.
    while (this.#queue.length > 0) this.#execute(this.#queue.shift());
    const waiters = [...this.#waiters.values()];
    this.#subs.clear();
    this.#streams.clear();
    this.#waiters.clear();
    this.#stateHandlers = [];
    this.#errorHandlers = [];
    this.#dropSocket();
    clearTimeout(this.#timer);
    for (const [target, event, f] of this.#listeners) target.removeEventListener(event, f);
    this.#listeners = [];
    this.#engine.free();
    this.#engine = null;
    const err = toError({ code: "CLOSED", message: "the client is closed" });
    for (const w of waiters) call(w.reject, err);
  }

  /** The same as `close()`. */
  free() {
    this.close();
  }

  [Symbol.dispose]() {
    this.close();
  }

  // ---- used by Subscription and EventStream ----

  /** An application call whose result the caller needs; throws the engine's refusal. */
  _call(op) {
    return this.#call(op);
  }

  /** An application call that answers with a request id: a promise of its reply. */
  _promise(op) {
    return this.#promise(() => op);
  }

  _forget(sub) {
    this.#subs.delete(sub);
  }

  _handlers(sub) {
    return this.#subs.get(sub);
  }

  _members(sub) {
    return this.#engine ? JSON.parse(this.#engine.members(sub)) : null;
  }

  // ---- the pump ----

  #listen(target, event, f) {
    if (typeof target.addEventListener !== "function") return;
    target.addEventListener(event, f);
    this.#listeners.push([target, event, f]);
  }

  #ctx() {
    return [performance.now(), Date.now(), Math.random()];
  }

  /** Feed one input, then carry out the actions. */
  #feed(kind, socket = 0, code = 0, text = "") {
    if (!this.#engine) return;
    const [now, unix, random] = this.#ctx();
    this.#run(JSON.parse(this.#engine.handle(now, unix, random, kind, socket, code, text)));
  }

  /**
   * One application call: returns its `ok` value (or throws its refusal) after queueing its
   * actions; `before(value)` runs before they are carried out (to register a handler).
   */
  #call(op, before) {
    if (!this.#engine) throw toError({ code: "CLOSED", message: "the client is closed" });
    const [now, unix, random] = this.#ctx();
    const text = typeof op === "string" ? op : JSON.stringify(op);
    const [result, ...actions] = JSON.parse(this.#engine.call(now, unix, random, text));
    if ("ok" in result && before) before(result.ok);
    this.#run(actions);
    if ("err" in result) throw toError(result.err);
    return result.ok;
  }

  /** A promise settled by the reply to the request `op()` makes (or its refusal). */
  #promise(op) {
    return new Promise((resolve, reject) => {
      try {
        this.#call(op(), (id) => this.#waiters.set(id, { resolve, reject }));
      } catch (e) {
        reject(e);
      }
    });
  }

  #run(actions) {
    this.#queue.push(...actions);
    if (this.#pumping) return;
    this.#pumping = true;
    try {
      while (this.#queue.length > 0) this.#execute(this.#queue.shift());
    } finally {
      this.#pumping = false;
    }
    if (this.#dirty && this.#engine) {
      this.#dirty = false;
      try {
        sessionStorage.setItem(this.#persistKey, this.#engine.positions());
      } catch (_) {
        // Storage full or denied: offsets are simply not kept across a reload.
      }
    }
  }

  #dropSocket() {
    const s = this.#socket;
    this.#socket = null;
    if (s) {
      s.ws.onopen = s.ws.onmessage = s.ws.onclose = null;
      try {
        s.ws.close();
      } catch (_) {
        // Already closing.
      }
    }
  }

  #execute(a) {
    const sub = this.#subs.get(a[1]);
    switch (a[0]) {
      case "open": {
        this.#dropSocket();
        const id = a[1];
        let ws;
        try {
          ws = new WebSocket(a[2]);
        } catch (_) {
          // A malformed URL: a failed attempt (the core backs off).
          this.#feed(CLOSED, id, 1006, "could not create WebSocket");
          break;
        }
        ws.onopen = () => this.#feed(OPENED, id);
        // Binary frames are not part of the protocol; ignore them.
        ws.onmessage = (e) => typeof e.data === "string" && this.#feed(FRAME, id, 0, e.data);
        ws.onclose = (e) => this.#feed(CLOSED, id, e.code, e.reason);
        this.#socket = { id, ws };
        break;
      }
      case "close":
        if (this.#socket && this.#socket.id === a[1]) {
          try {
            this.#socket.ws.close(a[2], a[3]);
          } catch (_) {
            // Not a code scripts may send: the drop below closes it plainly.
          }
          this.#dropSocket();
        }
        break;
      case "send":
        if (this.#socket && this.#socket.id === a[1]) {
          try {
            this.#socket.ws.send(a[2]);
          } catch (_) {
            // Not open yet or already closing: the core's timers notice.
          }
        }
        break;
      case "timer":
        clearTimeout(this.#timer);
        this.#timer = setTimeout(() => this.#feed(TIMER),
          Math.min(Math.max(a[1] - performance.now(), 0), MAX_DELAY));
        break;
      case "cancel":
        clearTimeout(this.#timer);
        this.#timer = null;
        break;
      case "flush":
        // A microtask: once the current task (the app's loop of subscribe calls) is done.
        Promise.resolve().then(() => this.#feed(FLUSH));
        break;
      case "token":
        this.#fetchToken();
        break;
      case "state":
        for (const h of this.#stateHandlers) call(h, a[1]);
        break;
      case "deliver":
        if (a[2].offset != null && this.#persistKey) this.#dirty = true;
        if (sub) call(sub.handler, a[2]);
        break;
      case "recovery":
        if (sub) for (const h of sub.onRecovery) call(h, a[2]);
        break;
      case "join":
      case "leave":
        if (sub) for (const h of a[0] === "join" ? sub.onJoin : sub.onLeave) call(h, a[2]);
        break;
      case "presenceFailed":
        if (sub) for (const h of sub.onError) call(h, toError(a[2]));
        break;
      case "subFailed":
        this.#subs.delete(a[1]);
        if (sub) for (const h of sub.onError) call(h, toError(a[2]));
        break;
      case "resolve":
      case "reject": {
        const w = this.#waiters.get(a[1]);
        this.#waiters.delete(a[1]);
        if (w) a[0] === "resolve" ? call(w.resolve, a[2]) : call(w.reject, toError(a[2]));
        break;
      }
      case "error":
        for (const h of this.#errorHandlers) call(h, toError(a[1]));
        break;
      case "fold": {
        const st = this.#streams.get(a[1]);
        if (st) st._fold(a[2]);
        break;
      }
      case "streamFailed": {
        const st = this.#streams.get(a[1]);
        if (st) st._failed(toError(a[2]));
        break;
      }
      case "warn":
        console.warn("tidings: event skipped", a[1]);
        break;
    }
  }

  #fetchToken() {
    const f = this.#getToken;
    const describe = (e) => (e instanceof Error ? e.message : typeof e === "string" ? e : "getToken failed");
    if (!f) return this.#feed(TOKEN_ERR, 0, 0, "no getToken");
    let v;
    try {
      v = f();
    } catch (e) {
      return this.#feed(TOKEN_ERR, 0, 0, describe(e));
    }
    if (typeof v === "string") return this.#feed(TOKEN_OK, 0, 0, v);
    Promise.resolve(v).then(
      (t) => typeof t === "string"
        ? this.#feed(TOKEN_OK, 0, 0, t)
        : this.#feed(TOKEN_ERR, 0, 0, "getToken must resolve to a string"),
      (e) => this.#feed(TOKEN_ERR, 0, 0, describe(e)));
  }
}

/** One `subscribe` call of the application. */
export class Subscription {
  #client;
  #id;
  #topic;

  constructor(client, id, topic) {
    this.#client = client;
    this.#id = id;
    this.#topic = topic;
  }

  /** The subscribed topic. */
  get topic() {
    return this.#topic;
  }

  /** Stop receiving; the server subscription ends once no other subscriber wants the topic. */
  unsubscribe() {
    this.#client._forget(this.#id);
    try {
      this.#client._call({ op: "unsubscribe", sub: this.#id });
    } catch (_) {
      // Closed: nothing to undo.
    }
  }

  /** `handler({topic, recovered})` after each reconnect or gap repair that used `since`. */
  onRecovery(handler) {
    this.#on("onRecovery", handler);
  }

  /** `handler(error)` if the server refuses the topic (or its presence). */
  onError(handler) {
    this.#on("onError", handler);
  }

  /** `handler({topic, client_id, user, info})` when another connection joins the topic. */
  onJoin(handler) {
    this.#watch("onJoin", handler);
  }

  /** `handler({topic, client_id, user, info})` when a connection leaves the topic. */
  onLeave(handler) {
    this.#watch("onLeave", handler);
  }

  /** The topic's members as this client knows them; null until the first presence read. */
  members() {
    return this.#client._members(this.#id);
  }

  /** Nothing to release (kept for the API of earlier versions). */
  free() {}

  [Symbol.dispose]() {}

  #on(list, handler) {
    const h = this.#client._handlers(this.#id);
    if (h) h[list].push(handler);
  }

  #watch(list, handler) {
    const h = this.#client._handlers(this.#id);
    if (!h) return;
    h[list].push(handler);
    this.#client._call({ op: "watch", sub: this.#id });
  }
}

/** An event-sourced stream folded into state (by a reducer or a built-in Rust aggregate). */
export class EventStream {
  #client;
  #handle;
  #reducer;
  #state;
  #version = 0;
  #loaded = false;
  #onChange = [];
  #onError = [];
  #onEvent = [];

  constructor(client, handle, reducer, initial) {
    this.#client = client;
    this.#handle = handle;
    this.#reducer = reducer;
    this.#state = initial === null ? undefined : initial;
  }

  /** The folded state. */
  get state() {
    return this.#state;
  }

  /** The version of the last folded event (0: none). */
  get version() {
    return this.#version;
  }

  /** `handler(state, version)` after each change (and once loaded). */
  onChange(handler) {
    this.#onChange.push(handler);
  }

  /** `handler(error)` if loading or following the stream fails. */
  onError(handler) {
    this.#onError.push(handler);
  }

  /** `handler(event)` for each folded event `{version, type, data, timestamp?}`, once, in order. */
  onEvent(handler) {
    this.#onEvent.push(handler);
  }

  /** Append `events` (`[{type, data}]`) at the folded version: `{stream, version}`. */
  append(events) {
    let text;
    try {
      text = json(events, "events");
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#client._promise('{"op":"append","stream":' + this.#handle + ',"events":' + text + "}");
  }

  /** The events the aggregate decides for `command`, without appending; throws its refusal. */
  decide(command) {
    return this.#client._call('{"op":"decide","stream":' + this.#handle + ',"command":' +
      json(command, "command") + "}");
  }

  /** Decide `command` and append its events at the folded version: `{stream, version}`. */
  execute(command) {
    let text;
    try {
      text = json(command, "command");
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#client._promise('{"op":"execute","stream":' + this.#handle + ',"command":' + text + "}");
  }

  /** Stop following the stream. */
  close() {
    try {
      this.#client._call({ op: "streamClose", stream: this.#handle });
    } catch (_) {
      // Closed client: nothing to undo.
    }
  }

  /** Nothing to release (kept for the API of earlier versions). */
  free() {}

  [Symbol.dispose]() {}

  _set(state) {
    this.#state = state;
  }

  _fold(f) {
    const first = !this.#loaded;
    this.#loaded = true;
    if ("state" in f) this.#state = f.state;
    let changed = first || "state" in f;
    for (const event of f.events) {
      if (this.#reducer) {
        try {
          this.#state = this.#reducer(this.#state, event);
        } catch (e) {
          console.error("tidings: reducer threw", e);
          continue;
        }
      }
      changed = true;
      for (const h of this.#onEvent) call(h, event);
    }
    this.#version = f.version;
    if (changed) for (const h of this.#onChange) call(h, this.#state, this.#version);
  }

  _failed(err) {
    for (const h of this.#onError) call(h, err);
  }
}
