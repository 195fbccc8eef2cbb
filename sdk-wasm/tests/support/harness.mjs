// Test harness for the SDK's browser tests (used by scripts/test-browser).
//
// Starts `tidings serve` on a free port with the durable SQLite store in <state dir>/data (topics
// matching `eph-*` stay ephemeral, for the at-most-once tests; topics matching `presence-*` keep
// presence), and a small HTTP control server (CORS open) that the
// wasm tests call to mint tokens and to kill / restart the server on the same port:
//   GET /token?sub=NAME&ttl=SECONDS[&subscribe=GLOB,GLOB][&publish=GLOB,...][&info=JSON]
//                                    -> an HS256 JWT signed with the server's secret (a negative
//                                       ttl gives an expired one; patterns restrict the token;
//                                       `info` becomes the token's `info` claim, parsed as JSON)
//   GET /kill                        -> SIGKILL the server, answer once it has exited
//   GET /start                       -> start it again on the same port and data dir, answer once listening
//   GET /spawn?arg=A&arg=B...        -> start another server (memory store, same secret) with these
//                                       extra `tidings serve` arguments on a free port; answers its
//                                       ws URL. Stopped when the harness stops.
//   GET /cluster                     -> start a Redis-backed cluster: its own `redis-server` on a
//                                       free port (no persistence) and two `tidings` nodes on it
//                                       (same secret, a key prefix of their own, each on a free
//                                       port), answer once both report /health 200 with
//                                       "<ws url of node 1> <ws url of node 2>". Stopped when the
//                                       harness stops.
//   GET /kill?url=WS_URL             -> SIGKILL the server /spawn or /cluster started at that ws
//                                       URL, answer once it has exited
// Prints "READY <ws url> <control url>" on stdout. Writes the current server PID to
// <state dir>/server.pid, and the PID of every other process it starts (one a line) to
// <state dir>/spawned.pids, so that scripts/test-browser can kill them should the harness die.
// SIGTERM/SIGINT stop every process it started and exit; so does any other exit of node.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { createServer, get as httpGet } from 'node:http';
import { createServer as createTcpServer, connect as tcpConnect } from 'node:net';
import { writeFileSync, appendFileSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';

const [bin, secret, stateDir] = process.argv.slice(2);
if (!bin || !secret || !stateDir) {
  console.error('usage: harness.mjs <tidings binary> <jwt secret> <state dir>');
  process.exit(2);
}
const pidFile = join(stateDir, 'server.pid');
const spawnedPidFile = join(stateDir, 'spawned.pids');
const dataDir = join(stateDir, 'data');
let server = null;
let port = 0;
/** Every other process started (by /spawn and /cluster), running or not. */
const spawned = [];
/** The ws URL of each server started by /spawn or /cluster -> its process. */
const byUrl = new Map();
let clusters = 0;

/** Track a process so that it is killed when the harness exits. */
function track(child) {
  spawned.push(child);
  if (child.pid) appendFileSync(spawnedPidFile, `${child.pid}\n`);
  // A spawn failure (ENOENT, say) is reported as an early exit by its caller, not a crash here.
  child.on('error', (e) => console.error(`harness: ${e}`));
  return child;
}

function start() {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, ['serve', '--bind', `127.0.0.1:${port}`, '--jwt-secret', secret,
      '--rate-limit', '10000', '--rate-burst', '10000',
      '--store', 'sqlite', '--data-dir', dataDir, '--ephemeral-topic', 'eph-*',
      '--presence-topic', 'presence-*'], { stdio: ['ignore', 'ignore', 'pipe'] });
    server = child;
    writeFileSync(pidFile, String(child.pid));
    let buf = '';
    const timer = setTimeout(() => reject(new Error('server did not report its port within 30 s:\n' + buf)), 30000);
    child.stderr.on('data', (chunk) => {
      const text = chunk.toString();
      process.stderr.write(text);
      if (timer) {
        buf += text;
        const m = buf.match(/listening on 127\.0\.0\.1:(\d+)/);
        if (m) { clearTimeout(timer); buf = ''; port = Number(m[1]); resolve(); }
      }
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (server === child) server = null;
      reject(new Error(`server exited early (${code ?? signal})`));
    });
  });
}

function kill() {
  return new Promise((resolve) => {
    const child = server;
    if (!child) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGKILL');
  });
}

const b64 = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');
function token(sub, ttl, claims = {}) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64({ alg: 'HS256', typ: 'JWT' });
  const body = b64({ sub, iat: now, exp: now + ttl, ...claims });
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

const control = createServer(async (req, res) => {
  const url = new URL(req.url, 'http://x');
  const reply = (status, text) => {
    res.writeHead(status, { 'content-type': 'text/plain', 'access-control-allow-origin': '*' });
    res.end(text);
  };
  try {
    if (url.pathname === '/token') {
      const claims = {};
      for (const claim of ['subscribe', 'publish']) {
        const v = url.searchParams.get(claim);
        if (v !== null) claims[claim] = v.split(',');
      }
      const info = url.searchParams.get('info');
      if (info !== null) {
        try { claims.info = JSON.parse(info); } catch (e) { return reply(400, `info is not JSON: ${e}`); }
      }
      reply(200, token(url.searchParams.get('sub') || 'tester', Number(url.searchParams.get('ttl') || 3600), claims));
    } else if (url.pathname === '/spawn') {
      reply(200, await spawnExtra(url.searchParams.getAll('arg')));
    } else if (url.pathname === '/cluster') {
      reply(200, (await startCluster()).join(' '));
    } else if (url.pathname === '/kill' && url.searchParams.has('url')) {
      const child = byUrl.get(url.searchParams.get('url'));
      if (!child) return reply(404, 'no server at that url');
      await killChild(child); reply(200, 'killed');
    } else if (url.pathname === '/kill') {
      await kill(); reply(200, 'killed');
    } else if (url.pathname === '/start') {
      if (!server) await start();
      reply(200, 'started');
    } else {
      reply(404, 'unknown');
    }
  } catch (e) {
    reply(500, String(e));
  }
});

/** Start another server with `args` on a free port; resolves with its ws URL. */
function spawnExtra(args) {
  return spawnServer(['--store', 'memory', ...args]);
}

/** `tidings serve` on a free port with the harness's secret and `args`; resolves with its ws URL. */
function spawnServer(args) {
  return new Promise((resolve, reject) => {
    const child = track(spawn(bin, ['serve', '--bind', '127.0.0.1:0', '--jwt-secret', secret,
      ...args], { stdio: ['ignore', 'ignore', 'pipe'] }));
    let buf = '';
    const timer = setTimeout(() => reject(new Error('spawned server did not start:\n' + buf)), 30000);
    child.stderr.on('data', (chunk) => {
      const text = chunk.toString();
      process.stderr.write(text);
      buf += text;
      const m = buf.match(/listening on 127\.0\.0\.1:(\d+)/);
      if (m) {
        clearTimeout(timer);
        buf = '';
        const ws = `ws://127.0.0.1:${m[1]}/ws`;
        byUrl.set(ws, child);
        resolve(ws);
      }
    });
    child.on('exit', (code, signal) => { clearTimeout(timer); reject(new Error(`spawned server exited (${code ?? signal}): ${buf}`)); });
  });
}

/** SIGKILL `child` (if it still runs); resolves once it has exited. */
function killChild(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGKILL');
  });
}

/** A free TCP port on 127.0.0.1 (bound to port 0, then released). */
function freePort() {
  return new Promise((resolve, reject) => {
    const s = createTcpServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

/** Poll `attempt` (resolves true when ready) every 50 ms until it holds, or fail after `ms`
 *  or as soon as `failed()` names a reason. */
async function poll(what, ms, attempt, failed = () => null) {
  const deadline = Date.now() + ms;
  for (;;) {
    const why = failed();
    if (why) throw new Error(`${what}: ${why}`);
    if (await attempt().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`${what}: not ready within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** One `PING` to Redis on `redisPort`: true on `+PONG` (not `-LOADING`). */
function redisPing(redisPort) {
  return new Promise((resolve) => {
    const sock = tcpConnect(redisPort, '127.0.0.1');
    let buf = '';
    const done = (ok) => { sock.destroy(); resolve(ok); };
    sock.setTimeout(1000, () => done(false));
    sock.on('error', () => done(false));
    sock.on('connect', () => sock.write('PING\r\n'));
    sock.on('data', (d) => { buf += d; if (buf.includes('\r\n')) done(buf.startsWith('+PONG')); });
  });
}

/** `GET http://HOST/health` of a node at `ws`: true on 200 with the Redis store. */
function redisHealthy(ws) {
  return new Promise((resolve) => {
    const req = httpGet(ws.replace(/^ws:/, 'http:').replace(/\/ws$/, '/health'), (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve(res.statusCode === 200 && /"store"\s*:\s*"redis"/.test(body)));
    });
    req.setTimeout(1000, () => req.destroy());
    req.on('error', () => resolve(false));
  });
}

/** A fresh Redis and two nodes on it; resolves with the nodes' ws URLs. */
async function startCluster() {
  const n = ++clusters;
  const dir = join(stateDir, `redis-${n}`);
  mkdirSync(dir, { recursive: true });
  const redisPort = await freePort();
  const redis = track(spawn('/usr/bin/redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1',
    '--daemonize', 'no', '--dir', dir, '--logfile', join(dir, 'redis.log'),
    '--save', '', '--appendonly', 'no'], { stdio: ['ignore', 'ignore', 'inherit'] }));
  let redisExit = null;
  redis.on('exit', (code, signal) => { redisExit = `redis-server exited (${code ?? signal})`; });
  redis.on('error', (e) => { redisExit = `redis-server did not start (${e})`; });
  await poll(`redis-server on port ${redisPort} (log: ${join(dir, 'redis.log')})`, 30000,
    () => redisPing(redisPort), () => redisExit);
  const args = ['--redis-url', `redis://127.0.0.1:${redisPort}`,
    '--redis-prefix', `tidings-browser-${process.pid}-${n}`,
    '--rate-limit', '10000', '--rate-burst', '10000', '--ephemeral-topic', 'eph-*'];
  const nodes = await Promise.all([spawnServer(args), spawnServer(args)]);
  for (const ws of nodes) {
    const child = byUrl.get(ws);
    await poll(`node ${ws} /health`, 30000, () => redisHealthy(ws),
      () => (child.exitCode ?? child.signalCode) !== null ? 'the node exited' : null);
  }
  return nodes;
}

/** Kill every process still running, synchronously (also from the 'exit' event). */
function killAll() {
  for (const child of spawned) {
    if (child.exitCode === null && child.signalCode === null) {
      try { child.kill('SIGKILL'); } catch { /* already gone */ }
    }
  }
  if (server) {
    try { server.kill('SIGKILL'); } catch { /* already gone */ }
  }
}

async function shutdown() {
  await Promise.all(spawned.map(killChild));
  await kill();
  rmSync(pidFile, { force: true });
  rmSync(spawnedPidFile, { force: true });
  control.close();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
process.on('SIGHUP', shutdown);
// Any other way out (an uncaught error, process.exit): nothing may outlive the harness.
process.on('exit', killAll);

try {
  await start();
} catch (e) {
  console.error(String(e));
  process.exit(1);
}
control.listen(0, '127.0.0.1', () => {
  const c = control.address().port;
  console.log(`READY ws://127.0.0.1:${port}/ws http://127.0.0.1:${c}`);
});
