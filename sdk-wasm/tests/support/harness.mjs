// Test harness for the SDK's browser tests (used by scripts/test-browser).
//
// Starts `tidings serve` on a free port with the durable SQLite store in <state dir>/data (topics
// matching `eph-*` stay ephemeral, for the at-most-once tests), and a small HTTP control server (CORS open) that the
// wasm tests call to mint tokens and to kill / restart the server on the same port:
//   GET /token?sub=NAME&ttl=SECONDS[&subscribe=GLOB,GLOB][&publish=GLOB,...]
//                                    -> an HS256 JWT signed with the server's secret (a negative
//                                       ttl gives an expired one; patterns restrict the token)
//   GET /kill                        -> SIGKILL the server, answer once it has exited
//   GET /start                       -> start it again on the same port and data dir, answer once listening
//   GET /spawn?arg=A&arg=B...        -> start another server (memory store, same secret) with these
//                                       extra `tidings serve` arguments on a free port; answers its
//                                       ws URL. Stopped when the harness stops.
// Prints "READY <ws url> <control url>" on stdout. Writes the current server PID to
// <state dir>/server.pid. SIGTERM/SIGINT stop the server and exit.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { createServer } from 'node:http';
import { writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';

const [bin, secret, stateDir] = process.argv.slice(2);
if (!bin || !secret || !stateDir) {
  console.error('usage: harness.mjs <tidings binary> <jwt secret> <state dir>');
  process.exit(2);
}
const pidFile = join(stateDir, 'server.pid');
const dataDir = join(stateDir, 'data');
let server = null;
let port = 0;
/** Extra servers started by /spawn. */
const spawned = [];

function start() {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, ['serve', '--bind', `127.0.0.1:${port}`, '--jwt-secret', secret,
      '--rate-limit', '10000', '--rate-burst', '10000',
      '--store', 'sqlite', '--data-dir', dataDir, '--ephemeral-topic', 'eph-*'], { stdio: ['ignore', 'ignore', 'pipe'] });
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
function token(sub, ttl, patterns = {}) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64({ alg: 'HS256', typ: 'JWT' });
  const body = b64({ sub, iat: now, exp: now + ttl, ...patterns });
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
      const patterns = {};
      for (const claim of ['subscribe', 'publish']) {
        const v = url.searchParams.get(claim);
        if (v !== null) patterns[claim] = v.split(',');
      }
      reply(200, token(url.searchParams.get('sub') || 'tester', Number(url.searchParams.get('ttl') || 3600), patterns));
    } else if (url.pathname === '/spawn') {
      reply(200, await spawnExtra(url.searchParams.getAll('arg')));
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
  return new Promise((resolve, reject) => {
    const child = spawn(bin, ['serve', '--bind', '127.0.0.1:0', '--jwt-secret', secret,
      '--store', 'memory', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    spawned.push(child);
    let buf = '';
    const timer = setTimeout(() => reject(new Error('spawned server did not start:\n' + buf)), 30000);
    child.stderr.on('data', (chunk) => {
      const text = chunk.toString();
      process.stderr.write(text);
      buf += text;
      const m = buf.match(/listening on 127\.0\.0\.1:(\d+)/);
      if (m) { clearTimeout(timer); buf = ''; resolve(`ws://127.0.0.1:${m[1]}/ws`); }
    });
    child.on('exit', (code, signal) => { clearTimeout(timer); reject(new Error(`spawned server exited (${code ?? signal}): ${buf}`)); });
  });
}

async function shutdown() {
  for (const child of spawned) child.kill('SIGKILL');
  await kill();
  rmSync(pidFile, { force: true });
  control.close();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

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
