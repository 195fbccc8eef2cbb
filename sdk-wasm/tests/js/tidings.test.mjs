// Browser tests of the JS API of the `tidings` entry (topics, history, presence), ported one for
// one from sdk-wasm/tests/web.rs: the package imported and initialised exactly as an application
// does it, against the harness's real server. Run by sdk-wasm/scripts/test-js (see run.mjs);
// the synchronisation rule is in helpers.mjs: no sleep waits for anything, every wait has a
// timeout and names what it waited for.
import init, { TidingsClient } from "/pkg/tidings.js";
import {
  WS, FAST_RECONNECT, options, suite, sleep, waitUntil, settle, ok, rejects, roundTrip, control, token,
  tokenWithInfo, spawnServer, startCluster, killServer, states, unique, seq, num, offsets, texts, names,
  nonEmptyString, endsWith, ackedOffsets, people, pair, memberCount, show, assert, assertEq, assertCode,
  throws,
} from "./helpers.mjs";

await init();

const { tests, test } = suite();
export { tests };

const client = (tok) => new TidingsClient(options(tok));
const clientAt = (url, tok) => new TidingsClient(options(tok, url));
const connected = (c, what) => waitUntil(what, 10_000, () => c.state === "connected");
const publish = (c, topic, n) => c.publish(topic, { n });

test("connects, reports state and closes", async () => {
  const c = client(await token("alice", 3600));
  const seen = states(c);
  await connected(c, "alice connected");
  c.close();
  assertEq(names(seen), ["connected", "closed"], "states");
  assertEq(c.state, "closed", "state after close()");
});

test("publish is acknowledged and reaches another client", async () => {
  const topic = unique("chat");
  const a = client(await token("alice", 3600));
  const b = client(await token("bob", 3600));
  const got = [];
  a.subscribe(topic, (m) => got.push(m));
  await connected(a, "a");
  await connected(b, "b");
  await roundTrip(a, topic); // a's subscribe has been processed
  const ack = await ok("publish acknowledged", publish(b, topic, 1));
  assertEq(ack.topic, topic, "ack.topic");
  assertEq(ack.offset, 1, "durable: offset 1");
  assert(nonEmptyString(ack.epoch), () => `ack.epoch is a non-empty string: ${show(ack)}`);
  await waitUntil("a receives the message", 5_000, () => got.length > 0);
  const m = got[0];
  assertEq(m.topic, topic, "message topic");
  assertEq(m.data?.n, 1, "message data.n");
  assert(nonEmptyString(m.from), () => `message from is a non-empty string: ${show(m)}`);
  assertEq(m.offset, 1, "message offset");
  a.close();
  b.close();
});

test("client-side errors have codes and close rejects queued publishes", async () => {
  // Nothing listens on port 9: the client stays offline and queues.
  const c = new TidingsClient({ url: "ws://127.0.0.1:9/ws", token: "x" });
  const bad = await rejects("a publish to an empty topic", 20_000, c.publish("", 1));
  assertCode(bad, "INVALID_ARGUMENT", "empty topic");
  const queued = c.publish("t", 1);
  c.close();
  const closed = await rejects("a queued publish after close()", 20_000, queued);
  assertEq(closed.code, "CLOSED", "queued publish after close()");
  throws("new TidingsClient({}) (no url)", () => new TidingsClient({}));
});

test("token refresh through getToken keeps the subscription", async () => {
  const topic = unique("refresh");
  let calls = 0;
  // Three-second tokens: the SDK refreshes in-band at about 2.4 s.
  const getToken = () => {
    calls += 1;
    return token("carol", 3);
  };
  const a = new TidingsClient({ url: WS, getToken, reconnect: FAST_RECONNECT });
  const seen = states(a);
  const errors = [];
  a.onError((e) => errors.push(e));
  const got = [];
  a.subscribe(topic, (m) => got.push(m));
  await connected(a, "carol connected");
  // Call 1 connects, 2 and 3 refresh; call 4 is only scheduled once refresh 2 was accepted.
  await waitUntil("two accepted refreshes", 20_000, () => calls >= 4);
  assert(errors.length === 0, () => `refresh accepted: ${show(errors)}`);
  assertEq(names(seen), ["connected"], "never dropped the connection");
  // The subscription still works.
  const b = client(await token("dave", 3600));
  await connected(b, "b");
  await ok("ack", publish(b, topic, 7));
  await waitUntil("message after refresh", 5_000, () => got.length > 0);
  a.close();
  b.close();
});

test("SIGKILL during a stream of publishes loses nothing and duplicates nothing", async () => {
  const N = 60;
  const topic = unique("durable");
  // A listens (default `since`: latest). B publishes 1..N without waiting for acks while the
  // server is SIGKILLed and restarted on the same port and data dir; B gets its token from
  // `getToken`, so the reconnect also proves it is called again.
  const a = client(await token("alice", 3600));
  const aStates = states(a);
  const got = [];
  const recoveries = [];
  const sub = a.subscribe(topic, (m) => got.push(m));
  sub.onRecovery((r) => recoveries.push(r));
  let tokenCalls = 0;
  const getToken = () => {
    tokenCalls += 1;
    return token("bob", 3600);
  };
  const b = new TidingsClient({ url: WS, getToken, reconnect: FAST_RECONNECT });
  await connected(a, "a");
  await connected(b, "b");
  await roundTrip(a, topic);

  let phase = 0; // 0: running, 1: server killed, 2: server restarted.
  let issued = 0;
  const acks = [];
  const publisher = (async () => {
    for (let n = 1; n <= N; n++) {
      acks.push(publish(b, topic, n));
      issued = n;
      // Hold at fixed points so that, whatever the timing, some publishes are in flight at
      // the kill and some are made while the server is down.
      if (n === 25) await waitUntil("the kill", 20_000, () => phase >= 1);
      else if (n === 40) await waitUntil("the restart", 20_000, () => phase >= 2);
      await sleep(5); // pacing: a stream, not a burst
    }
  })();
  publisher.catch(() => {}); // settled below
  await waitUntil("a has 10 messages", 10_000, () => got.length >= 10);
  await control("/kill");
  phase = 1;
  await waitUntil("a notices", 10_000, () => a.state === "reconnecting");
  await waitUntil("15 publishes while down", 10_000, () => issued >= 40);
  await control("/start");
  phase = 2;
  await ok("all publishes issued", publisher, 20_000);

  const acked = [];
  for (const p of acks) acked.push(num((await ok("publish ack", p)).offset));
  assertEq(acked, seq(1, N), "each publish stored once, in order");
  // A sentinel after everything: once A has it, nothing older can still be on its way.
  await ok("sentinel ack", publish(b, topic, N + 1));
  await waitUntil("a has every message", 20_000, () => got.length > N);
  assertEq(offsets(got), seq(1, N + 1), "offsets once each, in order");
  assertEq(texts(got), seq(1, N + 1), "payloads once each, in order");
  assert(recoveries.length > 0, "onRecovery after the reconnect");
  assert(recoveries.every((r) => r.recovered === true), () => `recovered: true: ${show(recoveries)}`);
  assert(tokenCalls >= 2, () => `getToken called again for the reconnect (called ${tokenCalls} times)`);
  assert(endsWith(names(aStates), ["reconnecting", "connected"]), () => show(names(aStates)));
  a.close();
  b.close();
});

test("publishes made while disconnected are delivered once after reconnect", async () => {
  const topic = unique("offline");
  const a = client(await token("alice", 3600));
  const b = client(await token("bob", 3600));
  const got = [];
  const recoveries = [];
  // Nothing has been published yet, so A has no offset: the SDK's baseline lets it resume.
  const sub = a.subscribe(topic, (m) => got.push(m));
  sub.onRecovery((r) => recoveries.push(r));
  await connected(a, "a");
  await connected(b, "b");
  await roundTrip(a, topic);

  await control("/kill");
  await waitUntil("a offline", 10_000, () => a.state !== "connected");
  await waitUntil("b offline", 10_000, () => b.state !== "connected");
  const pending = seq(1, 5).map((n) => publish(b, topic, n));
  await control("/start");
  const acked = [];
  for (const p of pending) {
    const ack = await ok("queued publish", p);
    assert(nonEmptyString(ack.epoch), () => `ack.epoch is a non-empty string: ${show(ack)}`);
    acked.push(num(ack.offset));
  }
  assertEq(acked, seq(1, 5), "promises resolve with offsets");
  await connected(a, "a back");
  await ok("sentinel", publish(b, topic, 6));
  await waitUntil("a has all six", 20_000, () => got.length >= 6);
  assertEq(offsets(got), seq(1, 6), "offsets");
  assertEq(texts(got), seq(1, 6), "each once, in order");
  assert(recoveries.every((r) => r.recovered === true), () => show(recoveries));
  a.close();
  b.close();
});

test("history returns stored messages", async () => {
  const topic = unique("history");
  const a = client(await token("alice", 3600));
  for (let n = 1; n <= 5; n++) await ok("publish", publish(a, topic, n));
  const page = (since, limit) => a.history(topic, { since, limit });
  const all = await ok("history", page(0, 50));
  assertEq(all.latest, 5, "latest");
  assert(nonEmptyString(all.epoch), () => `epoch is a non-empty string: ${show(all)}`);
  assertEq([texts(all.messages), offsets(all.messages)], [seq(1, 5), seq(1, 5)], "[data.n, offsets]");
  const middle = await ok("history page", page(2, 2));
  assertEq(offsets(middle.messages), [3, 4], "page since 2, limit 2");
  // Ephemeral topics store nothing: a typed error.
  const err = await rejects("ephemeral history", 20_000, a.history(unique("eph")));
  assertCode(err, "UNAVAILABLE", "ephemeral topic has no history");
  a.close();
});

test("ephemeral topics deliver live without offsets", async () => {
  const topic = unique("eph");
  const a = client(await token("alice", 3600));
  const b = client(await token("bob", 3600));
  const got = [];
  const errors = [];
  const sub = a.subscribe(topic, (m) => got.push(m));
  sub.onError((e) => errors.push(e));
  await connected(a, "a");
  await connected(b, "b");
  // The baseline request for an ephemeral topic fails quietly; publish a round trip after it.
  await settle("round trip", 20_000, a.history(topic));
  const ack = await ok("ack", publish(b, topic, 1));
  assert(ack.offset === null, () => `no offset on an ephemeral topic: ${show(ack)}`);
  await waitUntil("a receives it", 10_000, () => got.length > 0);
  assert(got[0].offset === undefined || got[0].offset === null, () => `no offset on the message: ${show(got[0])}`);
  assert(errors.length === 0, () => `the subscription itself is fine: ${show(errors)}`);
  a.close();
  b.close();
});

// ---- SDK hardening: a bad request fails alone, every call settles, dead credentials stop ----

test("an oversize publish fails alone and the next one is acknowledged", async () => {
  const url = await spawnServer(["--max-message-bytes", "65536"]);
  const c = clientAt(url, await token("big", 3600));
  const seen = states(c);
  await connected(c, "connected");
  const err = await rejects("the oversize publish", 10_000, c.publish("t", "x".repeat(128 * 1024)));
  assertEq(err.code, "MESSAGE_TOO_LARGE", "the oversize publish: code");
  const ack = await ok("the small publish", publish(c, "t", 1));
  assertEq(ack.offset, 1, "the small publish: offset");
  assertEq(names(seen), ["connected"], "the connection never dropped");
  c.close();
});

test("a refused topic fails alone and its batch mates live", async () => {
  const okTopic = `ok.${unique("a")}`;
  const secret = `secret.${unique("b")}`;
  const limited = await control("/token?sub=limited&ttl=3600&subscribe=ok.*");
  const c = client(limited);
  // Both before the socket opens: they go out in one subscribe.
  const got = [];
  c.subscribe(okTopic, (m) => got.push(m));
  const refused = c.subscribe(secret, () => {});
  const errors = [];
  refused.onError((e) => errors.push(e));
  await connected(c, "connected");
  await waitUntil("secret.b reports FORBIDDEN", 10_000, () => errors.length > 0);
  assertEq(errors[0].code, "FORBIDDEN", "the refused topic's error code");
  const p = client(await token("publisher", 3600));
  await connected(p, "publisher");
  await ok("publish to ok.a", publish(p, okTopic, 7));
  await waitUntil("ok.a still receives", 10_000, () => got.length > 0);
  assertEq(texts(got), [7], "ok.a's messages");
  c.close();
  p.close();
});

test("two hundred subscribes in a loop all live", async () => {
  // The server's default rate limit (100/s, burst 200) and room for 300 subscriptions.
  const url = await spawnServer(["--max-subscriptions", "300"]);
  const c = clientAt(url, await token("many", 3600));
  await connected(c, "connected");
  const prefix = unique("many");
  const got = [];
  const handler = (m) => got.push(m);
  const subs = [];
  for (let i = 0; i < 200; i++) subs.push(c.subscribe(`${prefix}-${i}`, handler));
  const errors = [];
  c.onError((e) => errors.push(e));
  await roundTrip(c, `${prefix}-0`);
  // One message to each topic, from another client; every subscription gets its own.
  const p = clientAt(url, await token("feeder", 3600));
  await connected(p, "feeder");
  const acks = [];
  for (let i = 0; i < 200; i++) acks.push(publish(p, `${prefix}-${i}`, i));
  for (const [i, ack] of acks.entries()) await ok(`publish ${i}`, ack);
  await waitUntil("all 200 subscriptions receive", 20_000, () => got.length >= 200);
  const seen = texts(got).sort((x, y) => x - y);
  assertEq(seen, seq(0, 199), "each topic's message, once");
  assert(errors.length === 0, () => show(errors));
  c.close();
  p.close();
});

test("an expired fixed token closes with UNAUTHORIZED and stops", async () => {
  const expired = await token("late", 0);
  const c = client(expired);
  const seen = states(c);
  const errors = [];
  c.onError((e) => errors.push(e));
  await waitUntil("closed", 10_000, () => c.state === "closed");
  assertEq(names(seen), ["closed"], "no reconnect loop");
  assertEq(errors.length, 1, () => `one error: ${show(errors)}`);
  assertEq(errors[0].code, "UNAUTHORIZED", "the error's code");
  const err = await rejects("a publish on a closed client", 5_000, c.publish("t", 1));
  assertEq(err.code, "CLOSED", "a publish on a closed client: code");
});

// ---- Scaling out: several nodes on one Redis behave as one server ----

test("a node killed with SIGKILL sends its urls client to another node that recovers all", async () => {
  const N = 20;
  const M = 20;
  const [nodeA, nodeB] = await startCluster();
  const topic = unique("cluster");
  // A knows both nodes and starts on the first; P publishes on the second only.
  const a = new TidingsClient({ urls: [nodeA, nodeB], token: await token("alice", 3600), reconnect: FAST_RECONNECT });
  const aStates = states(a);
  const aErrors = [];
  a.onError((e) => aErrors.push(e));
  const got = [];
  const recoveries = [];
  const sub = a.subscribe(topic, (m) => got.push(m));
  sub.onRecovery((r) => recoveries.push(r));
  const subErrors = [];
  sub.onError((e) => subErrors.push(e));
  const p = clientAt(nodeB, await token("bob", 3600));
  await connected(a, "a connected (node A)");
  await connected(p, "publisher connected (node B)");
  await roundTrip(a, topic); // a's subscribe has been processed on node A

  // N messages published on node B reach A's subscriber on node A, through Redis.
  const first = seq(1, N).map((n) => publish(p, topic, n));
  assertEq(await ackedOffsets("publish on node B", first), seq(1, N), "the cluster numbers the topic once");
  await waitUntil("a receives the first N across nodes", 10_000, () => got.length >= N);
  assertEq(offsets(got), seq(1, N), "the first N offsets");

  // Node A dies without a goodbye. In this same task (before A's reconnect can even begin),
  // M more go out on node B.
  await killServer(nodeA);
  const second = seq(N + 1, N + M).map((n) => publish(p, topic, n));
  await waitUntil("a notices node A is gone", 10_000, () => names(aStates).includes("reconnecting"));
  assertEq(await ackedOffsets("publish on node B while a reconnects", second), seq(N + 1, N + M),
    "offsets of the publishes made while a reconnects");
  console.log(`cluster test: all ${M} acks in while a was ${show(a.state)}`);
  const report = () =>
    `states ${show(names(aStates))}, offsets ${show(offsets(got))}, recoveries ${show(recoveries.map((r) => r.recovered))}, ` +
    `errors ${show(aErrors)}, subscription errors ${show(subErrors)}`;
  // Node A refuses connections now: A can only be connected again on node B.
  await waitUntil("a reconnected (to node B)", 20_000, () => a.state === "connected");
  await waitUntil("a has all N+M", 20_000, () => got.length >= N + M);
  // A round trip on A's (new) connection: anything else on its way has arrived.
  await roundTrip(a, topic);
  assertEq(offsets(got), seq(1, N + M), () => `offsets once each, in order: ${report()}`);
  assertEq(texts(got), seq(1, N + M), () => `payloads once each, in order: ${report()}`);
  assert(endsWith(names(aStates), ["reconnecting", "connected"]), report);
  assert(recoveries.length > 0, () => `onRecovery after the reconnect: ${report()}`);
  assert(recoveries.every((r) => r.recovered === true), () => `recovered: true: ${report()}`);
  assert(aErrors.length === 0 && subErrors.length === 0, report);
  a.close();
  p.close();
});

// ---- Presence: who is on a topic, joins and leaves, and no drift across a reconnect ----

test("presence lists members, reports joins and leaves and counts them", async () => {
  const topic = unique("presence-room");
  const alice = client(await tokenWithInfo("alice", `{"name":"Alice"}`));
  const sub = alice.subscribe(topic, () => {});
  const joins = [];
  const leaves = [];
  const errors = [];
  sub.onJoin((m) => joins.push(m));
  sub.onLeave((m) => leaves.push(m));
  sub.onError((e) => errors.push(e));
  assert(memberCount(sub) === null, "nothing known before the first read");
  await connected(alice, "alice");
  // Her first presence read is answered once her subscription is active: she is listed.
  await waitUntil("alice's first presence read", 10_000, () => memberCount(sub) === 1);

  const bob = client(await tokenWithInfo("bob", `{"name":"Bob"}`));
  const bobJoins = [];
  const bobSub = bob.subscribe(topic, () => {});
  bobSub.onJoin((m) => bobJoins.push(m));
  await connected(bob, "bob");
  await waitUntil("alice hears bob join", 10_000, () => joins.length > 0);
  const join = joins[0];
  assertEq(join.topic, topic, "the join's topic");
  assertEq(people(joins), [pair("bob", "Bob")], "joins");
  const bobId = typeof join.client_id === "string" ? join.client_id : "";
  assert(bobId !== "", () => `the join has a client_id: ${show(join)}`);

  const page = await ok("presence", alice.presence(topic));
  assertEq(page.topic, topic, "presence: topic");
  assertEq(people(page.members), [pair("alice", "Alice"), pair("bob", "Bob")], "presence: members");
  assertEq(page.more, false, "presence: more");
  const stats = await ok("presenceStats", alice.presenceStats(topic));
  assertEq(stats.clients, 2, "presenceStats: clients");
  assertEq(stats.users, 2, "presenceStats: users");
  assertEq(people(sub.members()), [pair("alice", "Alice"), pair("bob", "Bob")], "the SDK's view agrees");

  // Bob closes cleanly: alice hears it promptly.
  bob.close();
  await waitUntil("alice hears bob leave", 2_000, () => leaves.length > 0);
  assertEq(people(leaves), [pair("bob", "Bob")], "leaves");
  assertEq(leaves[0].client_id, bobId, "the leave's client_id is bob's");
  assertEq(people(sub.members()), [pair("alice", "Alice")], "members after bob left");
  assertEq(joins.length, 1, "alice never hears her own join");
  assert(bobJoins.length === 0, () => `nor bob his: ${show(bobJoins)}`);
  assert(errors.length === 0, () => show(errors));

  // A topic without presence: the requests reject, and a watching subscriber hears why.
  const plain = unique("plain");
  for (const [what, p] of [["presence", alice.presence(plain)], ["presenceStats", alice.presenceStats(plain)]]) {
    const err = await rejects(what, 20_000, p);
    assertCode(err, "PRESENCE_DISABLED", what);
  }
  const plainSub = alice.subscribe(plain, () => {});
  const plainErrors = [];
  plainSub.onError((e) => plainErrors.push(e));
  plainSub.onJoin(() => {});
  await waitUntil("onError for the presence read", 10_000, () => plainErrors.length > 0);
  assertEq(plainErrors[0].code, "PRESENCE_DISABLED", "the watching subscription's error code");
  assert(memberCount(plainSub) === null, () => `members() is null: ${show(plainSub.members())}`);
  alice.close();
});

test("after a reconnect presence reports what changed meanwhile", async () => {
  const topic = unique("presence-reconnect");
  const alice = client(await tokenWithInfo("alice", `{"name":"Alice"}`));
  const aliceStates = states(alice);
  const sub = alice.subscribe(topic, () => {});
  const joins = [];
  const leaves = [];
  sub.onJoin((m) => joins.push(m));
  sub.onLeave((m) => leaves.push(m));
  await connected(alice, "alice");
  await waitUntil("alice's first presence read", 10_000, () => memberCount(sub) === 1);
  const bob = client(await tokenWithInfo("bob", `{"name":"Bob"}`));
  bob.subscribe(topic, () => {});
  await waitUntil("alice hears bob join", 10_000, () => joins.length > 0);

  // The server dies. While it is down bob goes away for good and carol starts; she is on
  // the topic when the server is back. Nobody will ever send alice a `leave` for bob: the
  // new server never knew him. Only the SDK's re-read can tell.
  await control("/kill");
  await waitUntil("alice offline", 10_000, () => alice.state !== "connected");
  bob.close();
  const carol = client(await tokenWithInfo("carol", `{"name":"Carol"}`));
  carol.subscribe(topic, () => {});
  await control("/start");
  await connected(alice, "alice back");
  await connected(carol, "carol");
  await waitUntil("alice hears bob leave and carol join", 10_000, () => leaves.length > 0 && joins.length >= 2);
  // Both have arrived; a presence round trip on alice's connection lets anything still on
  // its way arrive too, before checking nothing was reported twice.
  const page = await ok("presence", alice.presence(topic));
  assertEq(people(page.members), [pair("alice", "Alice"), pair("carol", "Carol")], "presence: members");
  assertEq(people(leaves), [pair("bob", "Bob")], "leaves");
  assertEq(people(joins), [pair("bob", "Bob"), pair("carol", "Carol")], "each once; never alice's own new connection");
  assertEq(people(sub.members()), [pair("alice", "Alice"), pair("carol", "Carol")], "the SDK's view has not drifted");
  assert(endsWith(names(aliceStates), ["reconnecting", "connected"]), () => show(names(aliceStates)));
  alice.close();
  carol.close();
});

test("the client works in a web worker (no window, document or sessionStorage)", async () => {
  const topic = unique("worker");
  const page = client(await token("paula", 3600));
  const got = [];
  page.subscribe(topic, (m) => got.push(m));
  await connected(page, "the page's client");
  await roundTrip(page, topic);
  const worker = new Worker(new URL("./worker.mjs", import.meta.url), { type: "module" });
  try {
    const reports = [];
    worker.onmessage = (e) => reports.push(e.data);
    worker.onerror = (e) => reports.push({ error: `the worker failed: ${e.message}` });
    const failed = () => reports.find((r) => r.error !== undefined);
    worker.postMessage({ url: WS, token: await token("wendy", 3600), topic });
    await waitUntil("the worker subscribed", 20_000, () => reports.length > 0);
    assert(!failed(), () => `the worker: ${failed().error}`);
    await ok("the page's publish acknowledged", publish(page, topic, 1));
    await waitUntil("the worker's report", 20_000, () => reports.length > 1);
    assert(!failed(), () => `the worker: ${failed().error}`);
    const out = reports[1];
    assertEq(out.message.data?.n, 1, "the page's message, received in the worker");
    assertEq(out.message.offset, 1, "its offset");
    assertEq(out.ack.offset, 2, "the worker's publish acknowledged at offset 2");
    assertEq(out.state, "connected", "the worker's state before close()");
    // A publisher does not receive its own message: the page's first is the worker's.
    await waitUntil("the page receives the worker's message", 5_000, () => got.length > 0);
    assertEq(got[0].data?.from, "worker", "the worker's message, received in the page");
    assertEq(got[0].offset, 2, "its offset");
  } finally {
    worker.terminate();
    page.close();
  }
});
