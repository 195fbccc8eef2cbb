// The app a web developer writes: import the package by its npm name, initialise the wasm,
// connect. The build only has to bundle this (and emit the .wasm as an asset).
import init, { TidingsClient } from "tidings";

const out = document.getElementById("out");
await init();
const params = new URLSearchParams(location.search);
const client = new TidingsClient({
  url: params.get("url") ?? "ws://127.0.0.1:8000/ws",
  token: params.get("token") ?? "dev",
});
out.textContent = `state: ${client.state}`;
client.onStateChange((state) => (out.textContent = `state: ${state}`));
const sub = client.subscribe("demo", (msg) => {
  out.textContent += `\n${msg.offset ?? "-"}: ${JSON.stringify(msg.data)}`;
});
sub.onRecovery(({ recovered }) => console.log("recovered", recovered));
window.tidings = client;
