// End-to-end test of the demo page (www/) in Debian's Chromium, driven by playwright-core,
// against a real `tidings serve --dev --store sqlite` that this file SIGKILLs and restarts on
// the same port and data dir. Run by scripts/test-e2e, which builds everything, picks the
// port and the temporary directory, and kills the server by PID (server.pid) on exit.
//
// Every wait is an awaited condition with a timeout (page.waitForFunction, or `until` polling
// a condition in Node); nothing sleeps to synchronise. Prints `N passed, M failed` last.
//
// The server runs with `--presence-topic chat` (as scripts/start does): the chat's "who's
// online" lists the topic's subscribers, named by the dev token's `info` claim.
//
// Environment: TIDINGS_BIN (server binary), E2E_DIR (temp dir: data/, shots/, profile/,
// server.log, server.pid), E2E_PORT, WWW_DIR.

import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const BIN = process.env.TIDINGS_BIN;
const DIR = process.env.E2E_DIR;
const PORT = Number(process.env.E2E_PORT);
const WWW = process.env.WWW_DIR;
if (!BIN || !DIR || !PORT || !WWW) {
  console.error("demo.test.mjs: run it with scripts/test-e2e (TIDINGS_BIN, E2E_DIR, E2E_PORT, WWW_DIR)");
  process.exit(2);
}
const BASE = `http://127.0.0.1:${PORT}`;
const DATA = path.join(DIR, "data");
const SHOTS = path.join(DIR, "shots");
const PIDFILE = path.join(DIR, "server.pid");
const LOG = path.join(DIR, "server.log");
fs.mkdirSync(SHOTS, { recursive: true });

const T = { short: 10_000, reconnect: 30_000 }; // timeouts (ms)

// ---- server control ---------------------------------------------------------------------

let server = null;

async function until(what, cond, timeout = T.short, every = 25) {
  const deadline = Date.now() + timeout;
  for (;;) {
    let last;
    try {
      if (await cond()) return;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${last ? ` (${last.message})` : ""}`);
    }
    await new Promise((r) => setTimeout(r, every)); // poll interval of a condition, not a sync sleep
  }
}

async function startServer() {
  const out = fs.openSync(LOG, "a");
  const child = spawn(BIN, [
    "serve", "--dev", "--static-dir", WWW, "--bind", `127.0.0.1:${PORT}`,
    "--store", "sqlite", "--data-dir", DATA, "--log", "info", "--presence-topic", "chat",
  ], { stdio: ["ignore", out, out] });
  fs.closeSync(out);
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  child.exited = exited;
  let dead = null;
  exited.then((r) => { dead = r; });
  fs.writeFileSync(PIDFILE, String(child.pid));
  server = child;
  await until("the server to answer /health", async () => {
    if (dead) throw new Error(`server exited: ${JSON.stringify(dead)}; see ${LOG}`);
    const res = await fetch(`${BASE}/health`);
    return res.ok;
  }, 20_000, 50);
  return child;
}

async function killServer() {
  const child = server;
  child.kill("SIGKILL");
  const r = await child.exited;
  if (r.signal !== "SIGKILL") throw new Error(`server ended with ${JSON.stringify(r)}, not SIGKILL`);
  server = null;
}

// ---- browser ------------------------------------------------------------------------------

const pageErrors = [];
const pages = {};
let browser;

/** Each page gets its own context (its own window, so none is a throttled background tab). */
async function openPage(label, query, setup) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => pageErrors.push(`${label}: ${e.message}`));
  if (setup) await setup(page);
  await page.goto(`${BASE}/?${query}`);
  pages[label] = page;
  await waitFor(page, `${label} to connect and load`, () => window.__demo?.state === "connected" && window.__demo.ready && window.__demo.order.loaded);
  return page;
}

/** Wait for `fn(arg)` to be truthy in `page` (polled every 50 ms, not by animation frame). */
async function waitFor(page, what, fn, arg, timeout = T.short) {
  try {
    await page.waitForFunction(fn, arg, { timeout, polling: 50 });
  } catch (e) {
    const state = await page.evaluate(() => {
      const d = window.__demo;
      if (!d) return "no __demo";
      return JSON.stringify({
        state: d.state, reconnects: d.reconnects, ready: d.ready, received: d.received,
        presence: { status: d.presence?.status, users: d.presence?.users, events: d.presence?.events },
        net: { transitions: d.net?.transitions, outbox: d.net?.outbox, offline: d.net?.offline },
        outgoing: d.outgoing.filter((o) => o.status !== "acked"), errors: d.errors,
        order: { id: d.order.id, version: d.order.version, state: d.order.state, conflicts: d.order.conflicts, lastError: d.order.lastError },
      });
    }).catch((err) => `unreadable: ${err.message}`);
    throw new Error(`timed out after ${timeout} ms waiting for ${what}; page state: ${state}`);
  }
}

const demo = (page, fn, arg) => page.evaluate(fn, arg);
function assert(cond, message) {
  if (!cond) throw new Error(message);
}
function assertEqual(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`);
}
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

// ---- checks -------------------------------------------------------------------------------

const results = [];
const checks = [];
const check = (name, fn) => checks.push({ name, fn });

const ORDER = "order-e2e";
const texts = range(1, 30).map((i) => `message ${i} from alice`);

check("server starts; pages A (alice) and B (bob) connect and load", async () => {
  await startServer();
  const A = await openPage("A", `name=alice&order=${ORDER}`);
  const B = await openPage("B", `name=bob&order=${ORDER}`);
  assertEqual(await demo(A, () => __demo.name), "alice", "A's name");
  assertEqual(await demo(B, () => document.getElementById("conn-state").textContent), "connected", "B's badge");
  assertEqual(await demo(B, () => document.visibilityState), "visible", "B's visibility");
});

/** The names in `page`'s "who's online" list (DOM), sorted. */
const shownUsers = (page) => demo(page, () => [...document.querySelectorAll("#presence-list li[data-user] .name")].map((n) => n.textContent).sort());
/** Wait until `page` lists exactly `users` (names), in its state and on screen. */
async function waitForUsers(page, label, users, timeout = T.short) {
  await waitFor(page, `${label}'s who's online to be ${users.join(", ")}`, (want) => __demo.presence.status === "ok"
    && JSON.stringify(__demo.presence.users) === JSON.stringify(want)
    && JSON.stringify([...document.querySelectorAll("#presence-list li[data-user] .name")].map((n) => n.textContent).sort()) === JSON.stringify(want),
  [...users].sort(), timeout);
}

check("who's online: A and B list each other, named by the token's info claim", async () => {
  await waitForUsers(pages.A, "A", ["alice", "bob"]);
  await waitForUsers(pages.B, "B", ["alice", "bob"]);
  const members = await demo(pages.A, () => __demo.presence.members);
  assertEqual(members.map((m) => [m.user, m.info?.name]).sort(), [["alice", "alice"], ["bob", "bob"]], "A's members (user, info.name)");
  assert(await demo(pages.A, () => document.querySelector('#presence-list li[data-user="alice"]').textContent.includes("(you)")), "A marks alice as you");
});

check("A sends 20 chat messages, each acknowledged with offsets 1..20", async () => {
  const acks = await demo(pages.A, (ts) => Promise.all(ts.map((t) => __demo.publish(t))), texts.slice(0, 20));
  assertEqual(acks.map((a) => a.offset), range(1, 20), "ack offsets");
  await waitFor(pages.A, "A to show 20 acked messages", () => document.querySelectorAll('#messages li[data-status="acked"]').length === 20);
});

check("B sees the 20 messages live, in offset order, with their offsets", async () => {
  await waitFor(pages.B, "B to receive 20 messages", () => __demo.received.length >= 20);
  assertEqual(await demo(pages.B, () => __demo.received), range(1, 20), "B's delivered offsets");
  const shown = await demo(pages.B, () => [...document.querySelectorAll("#messages li[data-offset]")].map((li) => [Number(li.dataset.offset), li.querySelector(".text").textContent]));
  assertEqual(shown, range(1, 20).map((i) => [i, texts[i - 1]]), "B's rendered messages");
});

check("server SIGKILLed: both pages notice and show reconnecting", async () => {
  await killServer();
  for (const label of ["A", "B"]) {
    await waitFor(pages[label], `${label} to leave "connected"`, () => __demo.state !== "connected"
      && document.getElementById("conn").dataset.state !== "connected");
  }
});

check("A sends 10 more while the server is down: shown as pending", async () => {
  await demo(pages.A, (ts) => { for (const t of ts) __demo.publish(t); }, texts.slice(20));
  await waitFor(pages.A, "A to show 10 pending messages", () => __demo.pending.length === 10
    && document.querySelectorAll('#messages li[data-status="pending"]').length === 10);
  const acked = await demo(pages.A, () => __demo.outgoing.filter((o) => o.status === "acked").length);
  assertEqual(acked, 20, "acked while down");
  assert(server === null, "server should be down");
});

check("server restarted on the same port and data dir: both pages reconnect by themselves", async () => {
  await startServer();
  for (const label of ["A", "B"]) {
    await waitFor(pages[label], `${label} to reconnect`, () => __demo.state === "connected" && __demo.reconnects >= 1, null, T.reconnect);
    const badge = await demo(pages[label], () => document.getElementById("conn-reconnects").textContent);
    assert(/^[1-9]\d* reconnects?$/.test(badge), `${label}'s badge says "${badge}"`);
  }
});

check("after the restart, who's online is read again: A and B still list alice and bob", async () => {
  await waitForUsers(pages.A, "A", ["alice", "bob"], T.reconnect);
  await waitForUsers(pages.B, "B", ["alice", "bob"], T.reconnect);
  assertEqual((await demo(pages.A, () => __demo.presence.members)).length, 2, "A's member count (no stale connection)");
});

check("A's 10 pending messages are acknowledged with offsets 21..30", async () => {
  await waitFor(pages.A, "A's outbox to drain", () => __demo.pending.length === 0
    && document.querySelectorAll('#messages li[data-status="pending"]').length === 0, null, T.reconnect);
  const out = await demo(pages.A, () => __demo.outgoing);
  assertEqual(out.map((o) => o.status), Array(30).fill("acked"), "A's statuses");
  assertEqual(out.map((o) => o.offset), range(1, 30), "A's ack offsets");
  assertEqual(out.map((o) => o.text), texts, "A's texts");
});

check("B has all 30 messages exactly once, in offset order, and a 'recovered' notice", async () => {
  await waitFor(pages.B, "B to receive 30 messages", () => __demo.received.length >= 30, null, T.reconnect);
  assertEqual(await demo(pages.B, () => __demo.received), range(1, 30), "B's delivered offsets (exactly once, in order)");
  assertEqual((await demo(pages.B, () => __demo.messages)).map((m) => [m.offset, m.name, m.text]),
    range(1, 30).map((i) => [i, "alice", texts[i - 1]]), "B's messages");
  await waitFor(pages.B, "B's recovered notice", () => __demo.recoveries.some((r) => r.topic === "chat" && r.recovered && r.kind === "reconnect")
    && [...document.querySelectorAll(".notice.ok")].some((n) => /Reconnected .* recovered after #20/.test(n.textContent)));
  // Nothing more arrives later (a duplicate would show up here): a round trip on B's
  // connection after the replay; the server answers one connection's requests in order.
  await demo(pages.B, () => __demo.roundTrip());
  assertEqual((await demo(pages.B, () => __demo.received)).length, 30, "B's delivery count after a round trip");
});

check("a new page (carol, 10 on load) pages back with 'Load earlier messages'", async () => {
  const C = await openPage("C", `name=carol&initial=10&page=10&order=${ORDER}`);
  await waitForUsers(pages.A, "A", ["alice", "bob", "carol"]);
  await waitFor(pages.A, "A to log carol's join", () => __demo.presence.events.some((e) => e.kind === "join" && e.user === "carol")
    && [...document.querySelectorAll('#presence-events li[data-kind="join"]')].some((li) => /carol joined/.test(li.textContent)));
  const offsets = () => demo(C, () => __demo.messages.map((m) => m.offset));
  assertEqual(await offsets(), range(21, 30), "carol's first view");
  await C.click("#load-history");
  await waitFor(C, "11..30", () => __demo.messages.length === 20);
  assertEqual(await offsets(), range(11, 30), "after one page");
  await C.click("#load-history");
  await waitFor(C, "1..30", () => __demo.messages.length === 30);
  assertEqual(await offsets(), range(1, 30), "after two pages");
  await waitFor(C, "the button to be disabled", () => document.getElementById("load-history").disabled
    && /all history loaded/.test(document.getElementById("history-note").textContent));
});

check("renaming carol to dave fetches a new token; dave's message from the composer reaches B", async () => {
  const C = pages.C;
  await C.fill("#name-input", "dave");
  await C.click('#name-form button[type="submit"]');
  await waitFor(C, "dave to connect", () => __demo.name === "dave" && __demo.state === "connected" && __demo.ready);
  await C.fill("#chat-input", "hi from dave");
  await C.press("#chat-input", "Enter");
  await waitFor(C, "dave's message to be acked", () => __demo.outgoing.some((o) => o.status === "acked" && o.offset === 31));
  await waitFor(pages.B, "B to get #31 from dave", () => __demo.messages.some((m) => m.offset === 31 && m.name === "dave" && m.text === "hi from dave"));
  assertEqual(await demo(pages.B, () => __demo.received), range(1, 31), "B's delivered offsets");
  await waitForUsers(pages.B, "B", ["alice", "bob", "dave"]);
});

check("dave closes his tab: A and B see him leave who's online", async () => {
  await pages.C.context().close();
  delete pages.C;
  for (const label of ["A", "B"]) {
    await waitForUsers(pages[label], label, ["alice", "bob"]);
    await waitFor(pages[label], `${label} to log dave's leave`, () => __demo.presence.events.some((e) => e.kind === "leave" && e.user === "dave")
      && [...document.querySelectorAll('#presence-events li[data-kind="leave"]')].some((li) => /dave left/.test(li.textContent)));
  }
});

check("order board: A creates an order and adds items with the buttons; B sees the folded state live", async () => {
  const A = pages.A;
  const B = pages.B;
  await A.click("#cmd-create");
  await waitFor(A, "A at version 1", () => __demo.order.version === 1 && !document.getElementById("cmd-add").disabled);
  await A.selectOption("#add-sku", "tee");
  await A.fill("#add-qty", "3");
  await A.click("#cmd-add");
  await waitFor(A, "A at version 2", () => __demo.order.version === 2 && !document.getElementById("cmd-add").disabled);
  await A.selectOption("#add-sku", "mug");
  await A.fill("#add-qty", "2");
  await A.click("#cmd-add");
  await waitFor(B, "B at version 3", () => __demo.order.version === 3);
  const view = await demo(B, () => ({
    status: document.getElementById("order-status").textContent,
    customer: document.getElementById("order-customer").textContent,
    total: document.getElementById("order-total").textContent,
    rows: document.querySelectorAll("#order-items tr[data-item]").length,
    log: [...document.querySelectorAll("#order-log li[data-version]")].map((li) => [Number(li.dataset.version), li.querySelector(".type").textContent]),
    state: __demo.order.state,
  }));
  assertEqual(view.status, "created", "B's status");
  assertEqual(view.customer, "alice", "B's customer");
  assertEqual(view.total, "84.97", "B's total (3 x 19.99 + 2 x 12.50)");
  assertEqual(view.rows, 2, "B's item rows");
  assertEqual(view.log, [[3, "item_added"], [2, "item_added"], [1, "order_created"]], "B's event log");
  assertEqual(view.state.items.map((i) => [i.name, i.quantity]), [["T-shirt", 3], ["Tidings mug", 2]], "B's items");
  // Removing an item on B recomputes the total on A.
  await B.click('#order-items tr[data-item^="mug-"] button');
  await waitFor(A, "A at version 4 with the mug removed", () => __demo.order.version === 4
    && document.getElementById("order-total").textContent === "59.97"
    && document.querySelectorAll("#order-items tr[data-item]").length === 1);
});

check("two tabs race: a stale tab's append shows VERSION_CONFLICT, then catches up and retries", async () => {
  // Page D is bob's second tab. Its WebSocket goes through a proxy in this test that can hold
  // back the order stream's live events, so D is deterministically one version behind when it
  // appends: the race two people clicking at once would produce, without the timing luck.
  let hold = false;
  const held = [];
  let deliver = null;
  const D = await openPage("D", `name=bob&order=${ORDER}`, async (page) => {
    await page.routeWebSocket(/\/ws/, (ws) => {
      const upstream = ws.connectToServer();
      ws.onMessage((m) => upstream.send(m));
      deliver = (m) => ws.send(m);
      upstream.onMessage((m) => {
        let frame = null;
        try { frame = JSON.parse(m); } catch { /* not JSON: pass through */ }
        if (hold && frame?.type === "message" && frame.topic === ORDER) held.push(m);
        else ws.send(m);
      });
    });
  });
  await waitFor(D, "D at version 4", () => __demo.order.version === 4);
  // bob now has two tabs: one person, two members.
  await waitFor(pages.A, "A to show bob with 2 tabs", () => __demo.presence.members.filter((m) => m.user === "bob").length === 2
    && /2 tabs/.test(document.querySelector('#presence-list li[data-user="bob"]')?.textContent ?? ""));
  hold = true;
  const r = await demo(pages.A, () => __demo.order.command("add_item", { id: "cap-a", name: "Cap", price: 15, quantity: 1 }));
  assertEqual(r, { ok: true, version: 5 }, "A's append");
  await until("the proxy to hold D's copy of version 5", () => held.length === 1);
  await D.selectOption("#add-sku", "sticker");
  await D.click("#cmd-add");
  await waitFor(D, "D's conflict alert", () => __demo.order.conflicts.length === 1
    && !document.getElementById("conflict").hidden
    && /VERSION_CONFLICT/.test(document.getElementById("conflict").textContent));
  assertEqual(await demo(D, () => __demo.order.conflicts[0]), { command: "add_item", yourVersion: 4, currentVersion: 5 }, "D's conflict");
  assertEqual(await demo(D, () => __demo.order.version), 4, "D's version while held");
  const shot = path.join(SHOTS, "D-conflict.png");
  await D.screenshot({ path: shot, fullPage: true });
  hold = false;
  for (const m of held.splice(0)) deliver(m);
  await waitFor(D, "D to catch up to version 5", () => __demo.order.version === 5
    && __demo.order.state.items.some((i) => i.id === "cap-a"));
  await D.click("#cmd-add");
  await waitFor(D, "D's retry at version 6", () => __demo.order.version === 6);
  for (const label of ["A", "B"]) {
    await waitFor(pages[label], `${label} at version 6`, () => __demo.order.version === 6
      && __demo.order.state.items.length === 3 && __demo.order.log.length === 6);
  }
  assertEqual(await demo(pages.A, () => __demo.order.conflicts.length), 0, "A has no conflict");
});

check("order lifecycle: confirm and ship on A; refused commands are disabled; B follows", async () => {
  const A = pages.A;
  await waitFor(A, "A at version 6", () => __demo.order.version === 6);
  await A.click("#cmd-confirm");
  await waitFor(A, "confirmed", () => __demo.order.state.status === "confirmed" && !document.getElementById("cmd-ship").disabled);
  assert(await demo(A, () => document.getElementById("cmd-add").disabled), "add is disabled once confirmed");
  await A.click("#cmd-ship");
  await waitFor(pages.B, "B sees shipped", () => __demo.order.state.status === "shipped" && __demo.order.version === 8
    && document.getElementById("order-status").textContent === "shipped"
    && /Tracking number TRK-/.test(document.getElementById("order-extra").textContent));
  await waitFor(A, "A at version 8", () => __demo.order.version === 8);
  const refused = await demo(A, () => __demo.order.command("cancel", { reason: "too late" }));
  assertEqual([refused.ok, refused.message], [false, "cannot cancel an order that is shipped"], "cancel after ship");
});

check("network panel: 'Drop connection' shows reconnecting then connected, with the recovery", async () => {
  const B = pages.B;
  const before = await demo(B, () => ({ transitions: __demo.net.transitions.length, recoveries: __demo.recoveries.length }));
  await B.click("#net-drop");
  await waitFor(B, "B's state machine to go connected → reconnecting → connected", (n) => {
    const t = __demo.net.transitions.slice(n).map((x) => x.join(">"));
    const down = t.indexOf("connected>reconnecting");
    return down >= 0 && t.indexOf("reconnecting>connected", down) > down
      && document.querySelector("#machine li.active")?.dataset.node === "connected"
      && /reconnecting → connected/.test(document.querySelector("#transitions li")?.textContent ?? "");
  }, before.transitions, T.reconnect);
  await waitFor(B, "B's recovery after the drop", (n) => __demo.recoveries.length > n && __demo.recoveries[__demo.recoveries.length - 1].settled
    && /recovered: true/.test(document.getElementById("recovery-last").textContent), before.recoveries);
});

check("network panel: offline fills the outbox, back online flushes it; A gets the messages", async () => {
  const B = pages.B;
  const latest = await demo(pages.A, () => __demo.roundTrip());
  await B.click("#net-offline");
  await waitFor(B, "B offline and not connected", () => __demo.net.offline && __demo.state !== "connected"
    && document.getElementById("net-offline").getAttribute("aria-pressed") === "true");
  await demo(B, () => { __demo.publish("offline one"); __demo.publish("offline two"); });
  await waitFor(B, "B's outbox to show 2", () => __demo.net.outbox === 2
    && document.getElementById("outbox-count").textContent === "2" && /Filling/.test(document.getElementById("outbox-note").textContent));
  await B.click("#net-offline");
  await waitFor(B, "B's outbox to flush", () => __demo.state === "connected" && __demo.net.outbox === 0
    && document.getElementById("outbox-count").textContent === "0" && /Flushed: 2 queued publishes/.test(document.getElementById("outbox-note").textContent), null, T.reconnect);
  await waitFor(pages.A, "A to get both", (n) => __demo.messages.filter((m) => m.offset > n && /^offline (one|two)$/.test(m.text)).length === 2, latest);
  assert(await demo(B, () => __demo.net.lastRtt != null && /\d ms$/.test(document.getElementById("rtt-now").textContent)), "B shows a round-trip time");
});

check("screenshots of every page; no uncaught page errors", async () => {
  for (const [label, page] of Object.entries(pages)) {
    await page.screenshot({ path: path.join(SHOTS, `${label}.png`), fullPage: true });
  }
  await pages.A.setViewportSize({ width: 380, height: 800 });
  await pages.A.screenshot({ path: path.join(SHOTS, "A-narrow.png"), fullPage: true });
  const overflow = await demo(pages.A, () => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert(overflow <= 0, `narrow window scrolls sideways by ${overflow}px`);
  assertEqual(pageErrors, [], "page errors");
});

// ---- run ----------------------------------------------------------------------------------

const started = Date.now();
let failed = 0;
try {
  // A fresh profile per run: Playwright creates its user-data-dir under os.tmpdir(), which
  // scripts/test-e2e points into E2E_DIR (removed on exit).
  browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
  });
  for (const [i, c] of checks.entries()) {
    const t0 = Date.now();
    try {
      await c.fn();
      results.push({ ...c, ok: true });
      console.log(`ok ${i + 1} - ${c.name} (${Date.now() - t0} ms)`);
    } catch (e) {
      failed += 1;
      results.push({ ...c, ok: false });
      console.log(`not ok ${i + 1} - ${c.name} (${Date.now() - t0} ms)\n  ${String(e.message).split("\n").join("\n  ")}`);
      for (const [label, page] of Object.entries(pages)) {
        await page.screenshot({ path: path.join(SHOTS, `failure-${label}.png`), fullPage: true }).catch(() => {});
      }
      const skipped = checks.length - i - 1;
      if (skipped) console.log(`# ${skipped} later check(s) not run: they build on this one`);
      try {
        const log = fs.readFileSync(LOG, "utf8").trim().split("\n").slice(-15).join("\n");
        console.log(`# server log (tail):\n${log}`);
      } catch { /* no log */ }
      break;
    }
  }
} finally {
  if (browser) await browser.close().catch(() => {});
  if (server) {
    server.kill("SIGKILL");
    await server.exited;
  }
}
const passed = results.filter((r) => r.ok).length;
console.log(`# screenshots: ${SHOTS}  (${((Date.now() - started) / 1000).toFixed(1)} s)`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 && passed === checks.length ? 0 : 1);
