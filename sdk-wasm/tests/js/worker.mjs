// A module worker that uses the `tidings` entry where there is no `window`, `document` or
// sessionStorage (the page's test "the client works in a web worker" starts it). Sent
// {url, token, topic}, it connects (with persistOffsets on), subscribes, makes a round trip
// (its subscribe is then processed) and posts `{ready}`; on the first message of the topic it
// publishes `{from: "worker"}` and posts `{message, ack, state}`, then closes. Any failure is
// posted as `{error}`.
import init, { TidingsClient } from "/pkg/tidings.js";

self.onmessage = async ({ data: { url, token, topic } }) => {
  try {
    await init();
    const client = new TidingsClient({ url, token, persistOffsets: true });
    const received = new Promise((resolve) => client.subscribe(topic, resolve));
    await client.history(topic, { limit: 0 });
    self.postMessage({ ready: true });
    const message = await received;
    const ack = await client.publish(topic, { from: "worker" });
    const state = client.state;
    client.close();
    self.postMessage({ message, ack, state });
  } catch (e) {
    self.postMessage({ error: `${e?.code ?? ""} ${e?.message ?? e}` });
  }
};
