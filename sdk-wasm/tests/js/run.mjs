// Browser tests of the SDK's JS API, in JavaScript: the built npm package `tidings` (the web
// target that scripts/build-sdk writes to sdk-wasm/pkg) driven in Debian's headless Chromium
// exactly as an application uses it (`import init, { TidingsClient } from "<pkg>/tidings.js";
// await init();`), against a real `tidings` server. They are the port of sdk-wasm/tests/web.rs,
// one test for each of its tests, with the same assertions, and the safety net of a JS
// re-implementation of the JS API.
//
// Run: sdk-wasm/scripts/test-js [PKG_DIR]   (TEST_FILTER=substring runs only matching tests)
// The script starts sdk-wasm/tests/support/harness.mjs (the server, SIGKILLed and restarted on
// the same port and data dir on request, token minting, extra servers) and runs
//   node run.mjs <PKG_DIR> <ws url> <control url>
// This file serves PKG_DIR under /pkg/ and this directory under / on 127.0.0.1 (a free port),
// and for each test opens a fresh page (its own browser context: nothing of an earlier test, a
// client or a timer, lives on) at page.html?file=<test file>&ws=…&control=…, which imports the
// test file; the test file imports its package entry and calls init(). Test files:
//   tidings.test.mjs     the `tidings` entry (/pkg/tidings.js): topics, history, presence
//   streams.test.mjs     the `tidings/streams` entry (/pkg/streams/tidings.js): stream(id, reducer)
//   aggregates.test.mjs  the `tidings/aggregates` entry (/pkg/aggregates/tidings.js): stream(id, "order")
// The tests run one after another (they share one server that some of them SIGKILL and
// restart); each has TEST_TIMEOUT_MS (60 s) to settle, or fails. After a failed test the
// server is started again if it is down, so that one failure does not fail the rest.
// Prints one line per test, then `N passed, M failed`; exits 1 on any failure or if no test ran.
//
// Synchronisation rule (helpers.mjs): never sleep to wait for something to happen; wait for an
// observable event (a state, a message, a settled promise) with a timeout, or for a round trip
// on the same connection (`history(topic, {limit: 0})`). Every wait names what it waited for.

import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { dirname, extname, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const [pkgArg, WS, CONTROL] = process.argv.slice(2);
if (!pkgArg || !WS || !CONTROL) {
  console.error("usage: node run.mjs <PKG_DIR> <ws url> <control url> (run it with sdk-wasm/scripts/test-js)");
  process.exit(2);
}
const PKG = resolve(pkgArg);
const HERE = dirname(fileURLToPath(import.meta.url));
const FILES = ["tidings.test.mjs", "streams.test.mjs", "aggregates.test.mjs"];
const TIMEOUT = Number(process.env.TEST_TIMEOUT_MS || 60_000);
const LOAD_TIMEOUT = 30_000;
const VERBOSE = process.env.TEST_VERBOSE === "1";
// Matched ignoring case, spaces, `_`, `-` and commas: a Rust test name of web.rs selects its port too.
const norm = (s) => s.toLowerCase().replace(/[\s_,-]+/g, "");
const FILTER = norm(process.env.TEST_FILTER ?? "");

for (const entry of ["", "streams/", "aggregates/"]) {
  for (const f of ["tidings.js", "tidings_bg.wasm"]) {
    if (!existsSync(resolve(PKG, entry, f))) {
      console.error(`test-js: ${resolve(PKG, entry, f)} is missing: not a package built by scripts/build-sdk`);
      process.exit(2);
    }
  }
}

// ---- static files: PKG_DIR under /pkg/, this directory under / ----------------------------

const TYPES = {
  ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8", ".wasm": "application/wasm", ".json": "application/json",
};
const http = createServer(async (req, res) => {
  let path;
  try {
    path = decodeURIComponent(new URL(req.url, "http://x").pathname);
  } catch {
    res.writeHead(400).end();
    return;
  }
  const [root, rel] = path.startsWith("/pkg/") ? [PKG, path.slice(5)] : [HERE, path.slice(1)];
  const file = resolve(root, rel);
  if (!file.startsWith(root + sep) || file.startsWith(resolve(HERE, "node_modules") + sep)) {
    res.writeHead(403).end();
    return;
  }
  try {
    const body = await readFile(file);
    res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream", "cache-control": "no-store" });
    res.end(body);
  } catch {
    res.writeHead(404).end();
  }
});
await new Promise((ok) => http.listen(0, "127.0.0.1", ok));
const BASE = `http://127.0.0.1:${http.address().port}`;
const pageUrl = (file) =>
  `${BASE}/page.html?file=${encodeURIComponent(file)}&ws=${encodeURIComponent(WS)}&control=${encodeURIComponent(CONTROL)}`;

// ---- the browser --------------------------------------------------------------------------

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
});

/** A page of `context` with `file` loaded; `log` collects its console and errors. */
async function openSuite(context, file, log) {
  const page = await context.newPage();
  page.on("console", (m) => log.push(`console.${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => log.push(`page error: ${e.message}`));
  await page.goto(pageUrl(file));
  try {
    await page.waitForFunction(() => window.__suite, null, { timeout: LOAD_TIMEOUT, polling: 50 });
  } catch {
    throw new Error(`timed out after ${LOAD_TIMEOUT} ms waiting for ${file} to load`);
  }
  const loadError = await page.evaluate(() => window.__suite.loadError ?? null);
  if (loadError) throw new Error(`could not load ${loadError}`);
  return page;
}

/** `promise`, or a rejection naming `what` after `ms`. */
function within(ms, what, promise) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

let passed = 0;
let failed = 0;
const started = Date.now();
const secs = (ms) => `${(ms / 1000).toFixed(1)} s`;

function report(ok, label, ms, error, log) {
  if (ok) passed++; else failed++;
  console.log(`${ok ? "ok  " : "FAIL"} ${label} (${secs(ms)})${ok ? "" : `: ${error}`}`);
  if (!ok || VERBOSE) for (const line of log) console.log(`       | ${line}`);
}

// Each file's tests, in the file's order (listed by loading the file once).
const plan = [];
for (const file of FILES) {
  const log = [];
  const context = await browser.newContext();
  try {
    const page = await openSuite(context, file, log);
    const names = await page.evaluate(() => window.__suite.names);
    for (const name of names) if (!FILTER || norm(name).includes(FILTER)) plan.push({ file, name });
  } catch (e) {
    report(false, file, 0, e.message, log);
  } finally {
    await context.close().catch(() => {});
  }
}

for (const { file, name } of plan) {
  const log = [];
  const t0 = Date.now();
  // A fresh context per test: its own window (never a throttled background tab) and storage.
  const context = await browser.newContext();
  let result;
  try {
    result = await within(TIMEOUT, "the test did not settle", (async () => {
      const page = await openSuite(context, file, log);
      return page.evaluate((n) => window.__suite.run(n), name);
    })());
  } catch (e) {
    result = { ok: false, error: e.message };
  }
  await context.close().catch(() => {}); // closes its sockets and stops whatever still runs
  report(result.ok, name, Date.now() - t0, result.error, log);
  if (!result.ok) {
    // A test that failed between a /kill and its /start leaves the server down.
    await fetch(`${CONTROL}/start`).catch((e) => console.log(`       | could not restart the server: ${e.message}`));
  }
}

await browser.close();
http.close();
if (passed + failed === 0) console.log(FILTER ? `no test matches TEST_FILTER=${process.env.TEST_FILTER}` : "no test ran");
console.log(`wall time ${secs(Date.now() - started)}`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 && passed > 0 ? 0 : 1);
