// Browser tests of the JS API of the `tidings/aggregates` entry (event streams folded by the
// built-in Rust `Order` aggregate: `stream(id, "order")`, `decide`, `execute`), ported from
// sdk-wasm/tests/web.rs. Imports the `aggregates/` entry, as an application that uses the
// built-in aggregates does. Run by sdk-wasm/scripts/test-js; the synchronisation rule is in
// helpers.mjs.
import init, { TidingsClient } from "/pkg/aggregates/tidings.js";
import { options, suite, waitUntil, ok, rejects, token, unique, show, assertEq, throws } from "./helpers.mjs";

await init();

const { tests, test } = suite();
export { tests };

const client = (tok) => new TidingsClient(options(tok));

test("a builtin aggregate folds, decides, executes and reports conflicts", async () => {
  const id = unique("order");
  const a = client(await token("alice", 3600));
  const b = client(await token("bob", 3600));
  const sa = a.stream(id, "order");
  assertEq(sa.state?.status, "pending", "the aggregate's default state before the load");
  const changes = [];
  sa.onChange((state) => changes.push(state));
  await waitUntil("a loaded", 10_000, () => changes.length > 0);

  // Refused locally with the aggregate's code: nothing is sent.
  const refused = await rejects("confirm before create", 20_000, sa.execute({ type: "confirm" }));
  assertEq(refused.code, "INVALID_STATE", "refused: code");
  assertEq(refused.message, "cannot confirm an order that is pending", "refused: message");
  for (const [command, version] of [
    [{ type: "create", customer_id: "alice" }, 1],
    [{ type: "add_item", id: "tee", name: "T-shirt", price: 19.99, quantity: 3 }, 2],
  ]) {
    const ack = await ok(show(command), sa.execute(command));
    assertEq(ack.version, version, `${show(command)}: version`);
  }
  assertEq(sa.version, 2, "our own appends fold at once");
  assertEq(sa.state.total, 59.97, "a's total");

  // Another client replays the stream with the same Rust fold, every event once.
  const sb = b.stream(id, "order");
  const seen = [];
  sb.onEvent((e) => seen.push(e));
  await waitUntil("b replayed", 10_000, () => sb.version === 2);
  const st = sb.state;
  assertEq(st.status, "created", "b's status");
  assertEq(st.customer_id, "alice", "b's customer_id");
  assertEq(st.total, 59.97, "b's total");
  assertEq(seen.map((e) => e?.type).filter((t) => typeof t === "string"), ["order_created", "item_added"], "b's events");

  // Two commands decided at version 2: the first wins, the second is stale and not retried.
  const first = sb.execute({ type: "add_item", id: "mug", name: "Mug", price: 12.5, quantity: 2 });
  const stale = sb.execute({ type: "add_item", id: "cap", name: "Cap", price: 15, quantity: 1 });
  assertEq((await ok("first", first)).version, 3, "first: version");
  const err = await rejects("stale", 20_000, stale);
  assertEq(err.code, "VERSION_CONFLICT", "stale: code");
  assertEq(err.currentVersion, 3, "stale: currentVersion");
  await waitUntil("a follows live", 10_000, () => sa.version === 3);
  assertEq(sa.state.total, 84.97, "a's total after b's command");
  assertEq(Array.from(sb.state.items).length, 2, "the stale command's item was not applied");

  // `decide` answers without appending.
  const decided = Array.from(sa.decide({ type: "cancel", reason: "changed my mind" }));
  assertEq(decided[0]?.type, "order_cancelled", "decided event");
  assertEq(sa.version, 3, "decide appended nothing");
  const unknown = throws("stream(id, \"invoice\") (no such aggregate)", () => a.stream(unique("x"), "invoice"));
  assertEq(unknown?.code, "INVALID_ARGUMENT", "unknown aggregate: code");
  a.close();
  b.close();
});
