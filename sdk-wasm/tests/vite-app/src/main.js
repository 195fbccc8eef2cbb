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

// "tidings" is the build without the built-in Rust aggregates, and says where they are ...
let lean;
try {
  client.stream("order-1", "order");
  lean = "lean: stream(id, \"order\") did not throw";
} catch (e) {
  lean = e.code === "INVALID_ARGUMENT" && e.message.includes("tidings/aggregates")
    ? "lean: ok"
    : `lean: ${e.code}: ${e.message}`;
}
// ... "tidings/aggregates" (its own wasm, loaded only by an app that imports it) has them.
let full;
try {
  const aggregates = await import("tidings/aggregates");
  await aggregates.default();
  const stream = new aggregates.TidingsClient(options).stream("order-1", "order");
  full = `aggregates: ok (version ${stream.version})`;
} catch (e) {
  full = `aggregates: ${e.code ?? ""} ${e.message}`;
}
entries.textContent = `${lean}\n${full}`;
