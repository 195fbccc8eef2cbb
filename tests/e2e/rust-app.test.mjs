// The Rust example app (sdk-wasm/examples/rust_app: a frontend written in Rust on the SDK's
// Rust API) in headless Chromium against a real server: two pages of it share one chat and one
// order. Run by scripts/test-rust-app, which builds the app and starts the server.
// Usage: node tests/e2e/rust-app.test.mjs http://127.0.0.1:PORT
import { chromium } from "playwright-core";

const base = process.argv[2];
if (!base) throw new Error("usage: rust-app.test.mjs http://HOST:PORT");
const ws = base.replace(/^http/, "ws") + "/ws";
const WAIT = 20_000;

async function token(sub) {
  const res = await fetch(`${base}/dev/token?sub=${encodeURIComponent(sub)}`);
  if (!res.ok) throw new Error(`GET /dev/token: HTTP ${res.status}`);
  return (await res.json()).token;
}

/** Wait until the list `id` of `page` has a line matching `re`; returns the lines. */
async function line(page, id, re, what) {
  try {
    await page.waitForFunction(
      ([id, source]) => [...document.querySelectorAll(`#${id} li`)]
        .some((li) => new RegExp(source).test(li.textContent)),
      [id, re.source],
      { timeout: WAIT },
    );
  } catch (e) {
    const lines = await page.$$eval(`#${id} li`, (lis) => lis.map((li) => li.textContent));
    throw new Error(`${what}: no line /${re.source}/ in #${id} within ${WAIT} ms; saw ${JSON.stringify(lines)}`);
  }
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
});
let failed = 0;
const check = async (name, f) => {
  try {
    await f();
    console.log(`ok   ${name}`);
  } catch (e) {
    failed += 1;
    console.log(`FAIL ${name}\n     ${e.message}`);
  }
};
try {
  const open = async (sub) => {
    const page = await browser.newPage();
    page.on("pageerror", (e) => console.log(`[${sub}] page error: ${e.message}`));
    await page.goto(`${base}/?url=${encodeURIComponent(ws)}&token=${await token(sub)}`);
    return page;
  };
  const first = await open("rust-one");
  await check("the Rust app publishes through the Rust API and gets its ack", () =>
    line(first, "log", /^published at offset Some\(1\)$/, "first page"));
  await check("it creates the order with the Rust aggregate and follows it", () =>
    line(first, "orders", /^order-demo v1: /, "first page"));
  const second = await open("rust-two");
  await check("a second page reads the first one's message from history", () =>
    line(second, "log", /^\(stored\) .*hello from Rust/, "second page"));
  await check("the first page receives the second one's message live", () =>
    line(first, "log", /-\d+: .*hello from Rust/, "first page"));
  await check("the second page loads the order the first one created", () =>
    line(second, "orders", /^order-demo v1: /, "second page"));
} finally {
  await browser.close();
}
console.log(failed ? `${failed} failed` : "all passed");
process.exit(failed ? 1 : 0);
