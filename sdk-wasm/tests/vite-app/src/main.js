// The app a web developer writes: import the package by its npm name, initialise the wasm,
// connect. The build only has to bundle this (and emit the .wasm as an asset).
import init, { TidingsClient } from "tidings";

const out = document.getElementById("out");
const entries = document.getElementById("entries");
await init();
const params = new URLSearchParams(location.search);
const options = {
  url: params.get("url") ?? "ws://127.0.0.1:8000/ws",
  token: params.get("token") ?? "dev",
};
const client = new TidingsClient(options);
out.textContent = `state: ${client.state}`;
client.onStateChange((state) => (out.textContent = `state: ${state}`));
const sub = client.subscribe("demo", (msg) => {
  out.textContent += `\n${msg.offset ?? "-"}: ${JSON.stringify(msg.data)}`;
});
sub.onRecovery(({ recovered }) => console.log("recovered", recovered));
window.tidings = client;

// "tidings" is the build without event streams, and says where they are ...
let lean;
try {
  client.stream("order-1", (state) => state, 0);
  lean = "lean: stream(id, reducer) did not throw";
} catch (e) {
  lean = e.code === "INVALID_ARGUMENT" && e.message.includes("tidings/streams")
    ? "lean: ok"
    : `lean: ${e.code}: ${e.message}`;
}
// ... "tidings/streams" (its own wasm, loaded only by an app that imports it) folds streams
// with JS reducers, and names the entry with the built-in aggregates ...
let streams;
try {
  const entry = await import("tidings/streams");
  await entry.default();
  const c = new entry.TidingsClient(options);
  const stream = c.stream("counter-1", (n) => n + 1, 0);
  try {
    c.stream("order-1", "order");
    streams = "streams: stream(id, \"order\") did not throw";
  } catch (e) {
    streams = e.code === "INVALID_ARGUMENT" && e.message.includes("tidings/aggregates")
      ? `streams: ok (state ${stream.state})`
      : `streams: ${e.code}: ${e.message}`;
  }
} catch (e) {
  streams = `streams: ${e.code ?? ""} ${e.message}`;
}
// ... and "tidings/aggregates" has those too.
let full;
try {
  const aggregates = await import("tidings/aggregates");
  await aggregates.default();
  const stream = new aggregates.TidingsClient(options).stream("order-1", "order");
  full = `aggregates: ok (version ${stream.version})`;
} catch (e) {
  full = `aggregates: ${e.code ?? ""} ${e.message}`;
}
entries.textContent = `${lean}\n${streams}\n${full}`;
