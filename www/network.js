// The network panel's two helpers: a tap on the page's WebSockets (so the demo can drop the
// SDK's connection or play "offline"), and a small canvas chart. No dependency.

/**
 * Wrap `window.WebSocket` so the page can reach the socket the SDK opens. The SDK's glue runs
 * `new WebSocket(url)` at call time, so a subclass installed before the first connection sees
 * every socket; instances are still real WebSockets.
 *
 * - `drop()` closes the open socket(s) with code 4000: for the SDK an unexpected close (not
 *   1000), so it reconnects with backoff and replays what it missed.
 * - `offline = true` fires the browser's `offline` event (the SDK stops retrying), drops the
 *   socket and fails any socket opened meanwhile (close before open: code 1006, as a real
 *   network failure looks); `offline = false` fires `online` (the SDK retries at once).
 */
export function installSocketTap() {
  const Real = window.WebSocket;
  const open = new Set();
  let offline = false;
  class TappedWebSocket extends Real {
    constructor(url, protocols) {
      super(url, protocols);
      if (offline) {
        this.close(); // still connecting: the attempt fails with 1006
        return;
      }
      open.add(this);
      this.addEventListener("close", () => open.delete(this));
    }
  }
  window.WebSocket = TappedWebSocket;
  const drop = (reason) => {
    let n = 0;
    for (const ws of open) {
      if (ws.readyState === Real.CONNECTING || ws.readyState === Real.OPEN) {
        ws.close(4000, reason);
        n += 1;
      }
      open.delete(ws);
    }
    return n;
  };
  return {
    get offline() { return offline; },
    get sockets() { return open.size; },
    drop: () => drop("dropped by the demo page"),
    setOffline(value) {
      if (value === offline) return;
      offline = value;
      if (value) {
        window.dispatchEvent(new Event("offline"));
        drop("the demo page went offline");
      } else {
        window.dispatchEvent(new Event("online"));
      }
    },
  };
}

/**
 * A two-series chart of the last `seconds` seconds: bars of messages per second (left axis)
 * and a line of the round-trip time in ms (right axis; gaps where there was no sample).
 * Colours come from the canvas's CSS custom properties (--rate, --rtt, --grid, --text).
 */
export class LiveChart {
  constructor(canvas, seconds = 60) {
    this.canvas = canvas;
    this.seconds = seconds;
    this.points = []; // {rate, rtt (null: no sample), state: shaded unless connected}, oldest first
    new ResizeObserver(() => this.draw()).observe(canvas);
  }

  push(point) {
    this.points.push(point);
    if (this.points.length > this.seconds) this.points.shift();
    this.draw();
  }

  draw() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth;
    const h = c.clientHeight;
    if (!w || !h) return;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
    }
    const css = getComputedStyle(c);
    const color = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    g.font = "11px system-ui, sans-serif";

    const pad = { l: 30, r: 40, t: 8, b: 16 };
    const pw = w - pad.l - pad.r;
    const ph = h - pad.t - pad.b;
    const pts = this.points;
    const maxRate = niceCeil(Math.max(4, ...pts.map((p) => p.rate)));
    const rtts = pts.map((p) => p.rtt).filter((v) => v != null);
    const maxRtt = niceCeil(Math.max(10, ...rtts));
    const slot = pw / this.seconds;
    const x0 = pad.l + pw - pts.length * slot; // newest at the right edge

    // Seconds spent disconnected, shaded.
    g.fillStyle = color("--down", "rgba(200,120,0,0.10)");
    pts.forEach((p, i) => {
      if (p.state && p.state !== "connected") g.fillRect(x0 + i * slot, pad.t, slot + 0.5, ph);
    });

    // Grid and axes.
    g.strokeStyle = color("--grid", "#e3e7ec");
    g.fillStyle = color("--text", "#56606e");
    g.lineWidth = 1;
    g.textBaseline = "middle";
    for (let k = 0; k <= 2; k++) {
      const y = Math.round(pad.t + ph - (ph * k) / 2) + 0.5;
      g.beginPath();
      g.moveTo(pad.l, y);
      g.lineTo(pad.l + pw, y);
      g.stroke();
      g.textAlign = "right";
      g.fillText(String((maxRate * k) / 2), pad.l - 5, y);
      g.textAlign = "left";
      g.fillText(`${(maxRtt * k) / 2}ms`, pad.l + pw + 5, y);
    }
    g.textAlign = "left";
    g.textBaseline = "alphabetic";
    g.fillText(`-${this.seconds}s`, pad.l, h - 3);
    g.textAlign = "right";
    g.fillText("now", pad.l + pw, h - 3);

    // Messages per second: bars.
    g.fillStyle = color("--rate", "#1f5fbf");
    pts.forEach((p, i) => {
      if (!p.rate) return;
      const bh = (p.rate / maxRate) * ph;
      g.fillRect(x0 + i * slot + 1, pad.t + ph - bh, Math.max(1, slot - 2), bh);
    });

    // Round trip: a line, broken where a second had no sample.
    g.strokeStyle = color("--rtt", "#c2410c");
    g.fillStyle = g.strokeStyle;
    g.lineWidth = 2;
    g.lineJoin = "round";
    let drawing = false;
    g.beginPath();
    pts.forEach((p, i) => {
      if (p.rtt == null) {
        drawing = false;
        return;
      }
      const x = x0 + i * slot + slot / 2;
      const y = pad.t + ph - (Math.min(p.rtt, maxRtt) / maxRtt) * ph;
      if (drawing) g.lineTo(x, y);
      else g.moveTo(x, y);
      drawing = true;
    });
    g.stroke();
    pts.forEach((p, i) => { // dots, so a lone sample shows
      if (p.rtt == null) return;
      const x = x0 + i * slot + slot / 2;
      const y = pad.t + ph - (Math.min(p.rtt, maxRtt) / maxRtt) * ph;
      g.beginPath();
      g.arc(x, y, 2, 0, Math.PI * 2);
      g.fill();
    });
  }
}

/** 1, 2, 5 × 10^n at or above `v`. */
function niceCeil(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}
