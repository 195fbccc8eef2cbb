// Helpers of the JS API browser tests (the *.test.mjs files next to this one). They run in the
// test page (page.html), which run.mjs opens with `?ws=<server ws url>&control=<harness url>`.
//
// Synchronisation rule: never sleep to wait for something to happen. Wait for an observable
// event (a state, a message, a settled promise) with `waitUntil` / `settle` and a timeout, or for
// a round trip on the same connection (`roundTrip`: the server answers one connection's frames
// in order). `sleep` only paces a publisher. Every wait fails with a message naming what it
// waited for.

const params = new URLSearchParams(location.search);
/** The WebSocket endpoint of the harness's server (SQLite store; `eph-*` ephemeral, `presence-*` presence). */
export const WS = params.get("ws");
/** The harness's control server: `/token`, `/kill`, `/start`, `/spawn`, `/cluster`, `/kill?url=`. */
export const CONTROL = params.get("control");
if (!WS || !CONTROL) throw new Error("page opened without ?ws=…&control=…: run sdk-wasm/scripts/test-js");

export const FAST_RECONNECT = { minDelayMs: 100, maxDelayMs: 500 };

/** Client options as the tests use them: `url` (the harness's server by default), a fixed token, fast reconnects. */
export const options = (token, url = WS) => ({ url, token, reconnect: FAST_RECONNECT });

/** A list of tests: `test(name, async () => …)` adds one; a test file exports `tests`. */
export function suite() {
  const tests = [];
  return { tests, test: (name, fn) => tests.push({ name, fn }) };
}

// ---- waiting --------------------------------------------------------------------------------

/** Pause (pacing a publisher only: never used to wait for something to happen). */
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Poll `cond` every 20 ms until it holds, or fail after `ms`. */
export async function waitUntil(what, ms, cond) {
  const deadline = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20); // the poll interval of a condition
  }
}

/** Await `promise`: `{ok: true, value}` or `{ok: false, error}`; fails the test after `ms`. */
export async function settle(what, ms, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  const outcome = Promise.resolve(promise).then(
    (value) => ({ ok: true, value }),
    (error) => ({ ok: false, error }),
  );
  try {
    return await Promise.race([outcome, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** The value `promise` resolves with (within `ms`, 20 s by default); a rejection fails the test. */
export async function ok(what, promise, ms = 20_000) {
  const r = await settle(what, ms, promise);
  if (!r.ok) throw new Error(`${what} failed: ${show(r.error)}`);
  return r.value;
}

/** The error `promise` rejects with (within `ms`); resolving fails the test. */
export async function rejects(what, ms, promise) {
  const r = await settle(what, ms, promise);
  if (r.ok) throw new Error(`${what}: expected a rejection, it resolved with ${show(r.value)}`);
  return r.error;
}

/** A round trip on `c`'s connection: everything it sent before (a `subscribe`) is processed. */
export async function roundTrip(c, topic) {
  await ok("a history round trip", c.history(topic, { limit: 0 }));
}

// ---- the harness ----------------------------------------------------------------------------

/** GET `CONTROL + path`; its body. */
export async function control(path) {
  const res = await fetch(`${CONTROL}${path}`);
  const text = await res.text();
  if (!res.ok) throw new Error(`control ${path}: HTTP ${res.status}: ${text}`);
  return text;
}

/** A token for `sub` valid `ttl` seconds (0: already expired). */
export const token = (sub, ttl) => control(`/token?sub=${sub}&ttl=${ttl}`);

/** A token whose `info` claim is the JSON `info`. */
export const tokenWithInfo = (sub, info) =>
  control(`/token?sub=${sub}&ttl=3600&info=${encodeURIComponent(info)}`);

/** Another server (memory store) with these extra `tidings serve` arguments; its ws URL. */
export const spawnServer = (args) => control(`/spawn?${args.map((a) => `arg=${encodeURIComponent(a)}`).join("&")}`);

/** A fresh Redis and two `tidings` nodes on it (the harness's `/cluster`): their ws URLs. */
export async function startCluster() {
  const urls = await control("/cluster");
  const [a, b] = urls.split(/\s+/).filter(Boolean);
  if (!a || !b) throw new Error(`/cluster answered ${show(urls)}`);
  return [a, b];
}

/** SIGKILL the server the harness started at `url`; returns once it has exited. */
export const killServer = (url) => control(`/kill?url=${encodeURIComponent(url)}`);

// ---- recording and reading ------------------------------------------------------------------

/** Every state `c` reports to `onStateChange`, in order. */
export function states(c) {
  const seen = [];
  c.onStateChange((s) => seen.push(s));
  return seen;
}

export const unique = (prefix) => `${prefix}-${Math.floor(Math.random() * 1e9)}`;
const isNumber = (v) => typeof v === "number";
const isString = (v) => typeof v === "string";
/** The numbers `from..=to`. */
export const seq = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
/** A number, or -1 when `v` is not one (the Rust tests' `as_f64().unwrap_or(-1.0)`). */
export const num = (v) => (isNumber(v) ? v : -1);
/** The `offset`s of logged messages (those that have a number). */
export const offsets = (log) => Array.from(log).map((m) => m?.offset).filter(isNumber);
/** The `data.n` of logged messages (those that have a number). */
export const texts = (log) => Array.from(log).map((m) => m?.data?.n).filter(isNumber);
/** The strings of a log (states). */
export const names = (log) => Array.from(log).filter(isString);
export const nonEmptyString = (v) => isString(v) && v !== "";
export const endsWith = (list, tail) => same(list.slice(Math.max(0, list.length - tail.length)), tail);

/** The offsets the publish acknowledgements `acks` resolve with, in order. */
export async function ackedOffsets(what, acks) {
  const out = [];
  for (const p of acks) out.push(num((await ok(what, p)).offset));
  return out;
}

/** `[user, info.name]` of each member in a list of members or member events, sorted. */
export function people(list) {
  if (list == null) throw new Error(`expected a list of members, got ${show(list)}`);
  const str = (v) => (isString(v) ? v : "");
  return Array.from(list)
    .map((m) => [str(m?.user), str(m?.info?.name)])
    .sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0));
}
export const pair = (user, name) => [user, name];

/** How many members `sub.members()` lists (null while it is `null`). */
export function memberCount(sub) {
  const list = sub.members();
  return list === null ? null : Array.from(list).length;
}

// ---- assertions -----------------------------------------------------------------------------

/** A readable form of any value; errors show their name, message and own fields (`code`, …). */
export function show(v) {
  if (v === undefined) return "undefined";
  try {
    return JSON.stringify(v, (_, x) =>
      x instanceof Error ? { error: x.name, message: x.message, ...x } : x === undefined ? "undefined" : x);
  } catch {
    return String(v);
  }
}

/** Structural equality of JSON-like values (numbers, strings, booleans, null, arrays, objects). */
function same(a, b) {
  if (Object.is(a, b)) return true;
  if (typeof a !== typeof b || a === null || b === null || typeof a !== "object") return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  return ka.length === kb.length && ka.every((k) => Object.hasOwn(b, k) && same(a[k], b[k]));
}

const text = (msg) => (typeof msg === "function" ? msg() : msg);

export function assert(cond, msg) {
  if (!cond) throw new Error(`assertion failed: ${text(msg)}`);
}

export function assertEq(actual, expected, msg = "") {
  if (!same(actual, expected)) {
    const what = text(msg);
    throw new Error(`${what ? `${what}: ` : ""}expected ${show(expected)}, got ${show(actual)}`);
  }
}

/** `err` is an `Error` whose `code` is `code`. */
export function assertCode(err, code, what = "error") {
  assert(err instanceof Error, () => `${what}: an Error, not ${show(err)}`);
  assertEq(err.code, code, `${what}: code`);
}

/** The error `f()` throws; not throwing fails the test. */
export function throws(what, f) {
  try {
    f();
  } catch (e) {
    return e;
  }
  throw new Error(`${what}: expected it to throw, it did not`);
}
