// Browser tests of the JS API of the `tidings/streams` entry (event streams folded by a JS
// reducer), ported from sdk-wasm/tests/web.rs. Imports the `streams/` entry, as an application
// that folds streams with its own reducer does. Run by sdk-wasm/scripts/test-js; the
// synchronisation rule is in helpers.mjs.
import init, { TidingsClient } from "/pkg/streams/tidings.js";
import { options, suite, waitUntil, ok, rejects, token, unique, assertEq, assertCode } from "./helpers.mjs";

await init();

const { tests, test } = suite();
export { tests };

const client = (tok) => new TidingsClient(options(tok));

/** A reducer: counts events, sums their `data.n`, lists their types. */
const counter = (s, e) => ({ count: s.count + 1, sum: s.sum + e.data.n, types: s.types.concat([e.type]), version: e.version });
const tally = () => ({ count: 0, sum: 0, types: [] });
const event = (type, n) => ({ type, data: { n } });

test("streams replay, follow live appends and report version conflicts", async () => {
  const id = unique("order");
  const writer = client(await token("writer", 3600));
  const reader = client(await token("reader", 3600));
  // The writer appends three events to a new stream.
  const w = writer.stream(id, counter, tally());
  const wChanges = [];
  w.onChange((state) => wChanges.push(state));
  await waitUntil("writer stream loaded", 10_000, () => wChanges.length > 0);
  const ack = await ok("append 1..3", w.append([event("created", 1), event("item_added", 2), event("item_added", 3)]));
  assertEq(ack.version, 3, "append 1..3: version");
  assertEq(w.version, 3, "writer version");

  // The reader replays them...
  const r = reader.stream(id, counter, tally());
  await waitUntil("reader replayed 3 events", 10_000, () => r.version === 3);
  let st = r.state;
  assertEq(st.count, 3, "reader count");
  assertEq(st.sum, 6, "reader sum");
  // ...and follows live appends from the other client.
  await ok("append 4", w.append([event("confirmed", 4)]));
  await waitUntil("reader follows live", 10_000, () => r.version === 4);
  st = r.state;
  assertEq(st.sum, 10, "reader sum after append 4");
  assertEq(Array.from(st.types).filter((t) => typeof t === "string"),
    ["created", "item_added", "item_added", "confirmed"], "reader's event types");

  // Two appends made at once both claim version 4: the second is stale.
  const first = r.append([event("shipped", 5)]);
  const stale = r.append([event("cancelled", 6)]);
  assertEq((await ok("first append", first)).version, 5, "first append: version");
  const err = await rejects("stale append", 20_000, stale);
  assertCode(err, "VERSION_CONFLICT", "stale version is refused");
  assertEq(err.currentVersion, 5, "currentVersion");
  await waitUntil("writer follows too", 10_000, () => w.version === 5);
  assertEq(w.state.sum, 15, "the refused event was not applied");
  assertEq(r.state.sum, 15, "reader sum");
  writer.close();
  reader.close();
});
