//! Real processes for the cluster tests: `redis-server` instances on free ports and `tidings`
//! nodes pointing at them. Every process is killed (SIGKILL) and reaped on drop; every wait has
//! a deadline.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::common::{Client, SECRET, TempDir, WAIT, token};

const BIN: &str = env!("CARGO_BIN_EXE_tidings");

/// The Debian package's server; `REDIS_SERVER` may name another binary.
const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// Upper bound for waits that involve a reconnect with backoff (a node noticing that Redis is
/// gone or back, a restarted Redis loading its append-only file).
pub const RECOVERY: Duration = Duration::from_secs(30);

/// A free TCP port on 127.0.0.1: bind port 0, read the port, release it.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// A key prefix of its own for one test, so that tests could share one Redis.
pub fn prefix(test: &str) -> String {
    format!("tidings-test-{test}-{}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

/// One `redis-server` process on a fixed port, restartable on the same port and directory.
pub struct Redis {
    port: u16,
    dir: TempDir,
    persistent: bool,
    child: Option<Child>,
    /// How many times it was started (names the log file of each run).
    runs: u32,
    /// Serve TLS only, with the certificate and key in `dir` (see [`Redis::start_tls`]).
    tls: bool,
}

impl Redis {
    /// Redis without persistence: a restart loses everything.
    pub fn start() -> Redis {
        Redis::launch(false)
    }

    /// Redis with an append-only file fsynced on every write: a restart keeps everything it
    /// acknowledged.
    pub fn start_persistent() -> Redis {
        Redis::launch(true)
    }

    fn launch(persistent: bool) -> Redis {
        let mut redis = Redis {
            port: free_port(),
            dir: TempDir::new("redis"),
            persistent,
            child: None,
            runs: 0,
            tls: false,
        };
        redis.spawn();
        redis
    }

    /// Redis serving only TLS, with a certificate for 127.0.0.1 signed by a throwaway CA (made
    /// with the `openssl` command); returns it and the CA file a client must trust.
    pub fn start_tls() -> (Redis, std::path::PathBuf) {
        let dir = TempDir::new("redis-tls");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir.0)
                .output()
                .expect("the TLS test needs the openssl command");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        std::fs::write(dir.0.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").expect("ext");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=Tidings test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ]);
        let ca = dir.0.join("ca.pem");
        let mut redis = Redis {
            port: free_port(),
            dir,
            persistent: false,
            child: None,
            runs: 0,
            tls: true,
        };
        redis.spawn();
        (redis, ca)
    }

    fn binary() -> String {
        let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| REDIS_SERVER.to_owned());
        assert!(
            std::path::Path::new(&binary).exists(),
            "{binary} not found: the cluster tests need a real Redis \
             (Debian: `apt-get install redis-server`; or set REDIS_SERVER to its path)"
        );
        binary
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "redis is already running");
        self.runs += 1;
        let log = self.dir.0.join(format!("redis-{}.log", self.runs));
        let log = std::fs::File::create(&log).expect("redis log file");
        let mut cmd = Command::new(Redis::binary());
        if self.tls {
            cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                .args([
                    "--tls-cert-file",
                    "server.pem",
                    "--tls-key-file",
                    "server.key",
                ])
                .args(["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"])
                .current_dir(&self.dir.0);
        } else {
            cmd.args(["--port", &self.port.to_string()]);
        }
        cmd.args(["--bind", "127.0.0.1"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir.0)
            .args(["--save", ""]);
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", Redis::binary()));
        self.child = Some(child);
        self.wait_ready();
    }

    /// Poll with `PING` until it answers `+PONG` (not `-LOADING`), within a deadline.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + RECOVERY;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().expect("try_wait redis")
            {
                panic!("redis-server exited with {status}:\n{}", self.log());
            }
            if self.tls {
                // No plain-text PING on a TLS port: Redis logs when it serves.
                if self.log().contains("Ready to accept connections") {
                    return;
                }
            } else if let Ok(reply) = self.ping()
                && reply.starts_with("+PONG")
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis on port {} did not answer PING within {RECOVERY:?}:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ping(&self) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.set_write_timeout(Some(Duration::from_secs(1)))?;
        stream.write_all(b"PING\r\n")?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line)?;
        Ok(line)
    }

    /// The log of the current (or last) run.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join(format!("redis-{}.log", self.runs)))
            .unwrap_or_default()
    }

    /// `redis://127.0.0.1:PORT`, as a node takes it.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// SIGKILL (no shutdown save), then reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill (if running) and start again on the same port and directory; returns when it
    /// answers PING.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Run one command over a fresh connection and return the reply.
    pub fn command(&self, args: &[&str]) -> Resp {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        stream
            .set_read_timeout(Some(WAIT))
            .expect("redis read timeout");
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        stream.write_all(&request).expect("write to redis");
        read_resp(&mut BufReader::new(stream)).expect("read a RESP reply")
    }

    /// Every key whose name starts with `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let pattern = format!("{prefix}*");
        match self.command(&["KEYS", &pattern]) {
            Resp::Array(Some(items)) => items
                .into_iter()
                .map(|item| match item {
                    Resp::Bulk(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
                    other => panic!("KEYS item {other:?}"),
                })
                .collect(),
            other => panic!("KEYS replied {other:?}"),
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A RESP2 reply (the payloads of the scalar variants are read through `Debug` in failures).
#[derive(Debug)]
#[allow(dead_code)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

fn read_resp(r: &mut impl BufRead) -> std::io::Result<Resp> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end_matches("\r\n");
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let (kind, rest) = line.split_at_checked(1).ok_or_else(|| bad("empty reply"))?;
    let number = || rest.parse::<i64>().map_err(|_| bad(line));
    Ok(match kind {
        "+" => Resp::Simple(rest.to_owned()),
        "-" => Resp::Error(rest.to_owned()),
        ":" => Resp::Int(number()?),
        "$" => match usize::try_from(number()?) {
            Err(_) => Resp::Bulk(None),
            Ok(len) => {
                let mut bytes = vec![0; len + 2];
                r.read_exact(&mut bytes)?;
                bytes.truncate(len);
                Resp::Bulk(Some(bytes))
            }
        },
        "*" => match usize::try_from(number()?) {
            Err(_) => Resp::Array(None),
            Ok(n) => Resp::Array(Some(
                (0..n)
                    .map(|_| read_resp(r))
                    .collect::<std::io::Result<_>>()?,
            )),
        },
        _ => return Err(bad(line)),
    })
}

// ---------------------------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------------------------

/// A `tidings serve` process on a Redis store, on a free port.
pub struct Node {
    child: Option<Child>,
    /// `127.0.0.1:PORT`, as it logged it.
    pub addr: String,
    log: Arc<Mutex<Vec<String>>>,
    /// The TOML file it was started with, if any.
    _config: Option<TempDir>,
}

/// How a node is told its Redis URLs.
#[derive(Debug, Clone, Copy)]
pub enum UrlsVia {
    /// `--redis-url` once per URL.
    Flags,
    /// `TIDINGS_REDIS_URL`, comma-separated.
    Env,
    /// `redis_url = [...]` in a `--config` TOML file.
    Toml,
}

impl Node {
    /// Start a node on these Redis URLs (shards, in this order) with this key prefix; returns
    /// once it listens and `/health` says 200 (it reached Redis).
    pub async fn start(redis_urls: &[String], prefix: &str) -> Node {
        Node::start_via(redis_urls, prefix, UrlsVia::Flags).await
    }

    /// [`Node::start`], giving the URLs through flags, the environment or a TOML file.
    pub async fn start_via(redis_urls: &[String], prefix: &str, via: UrlsVia) -> Node {
        Node::launch(redis_urls, prefix, via, &[]).await
    }

    /// [`Node::start`] with extra environment variables.
    pub async fn start_with_env(redis_urls: &[String], prefix: &str, env: &[(&str, &str)]) -> Node {
        Node::launch(redis_urls, prefix, UrlsVia::Flags, env).await
    }

    async fn launch(
        redis_urls: &[String],
        prefix: &str,
        via: UrlsVia,
        env: &[(&str, &str)],
    ) -> Node {
        let mut cmd = Command::new(BIN);
        cmd.envs(env.iter().copied());
        cmd.arg("serve")
            .args(["--bind", "127.0.0.1:0"])
            .args(["--jwt-secret", SECRET])
            .args(["--redis-prefix", prefix])
            .args(["--ephemeral-topic", "live.*"])
            .args(["--presence-topic", "presence.*", "--presence-ttl", "2s"])
            // The tests pipeline thousands of frames on one connection.
            .args(["--rate-limit", "1000000", "--rate-burst", "1000000"]);
        for var in [
            "TIDINGS_CONFIG",
            "TIDINGS_JWT_SECRET",
            "TIDINGS_STORE",
            "TIDINGS_REDIS_URL",
            "TIDINGS_REDIS_PREFIX",
        ] {
            cmd.env_remove(var);
        }
        let mut config = None;
        match via {
            UrlsVia::Flags => {
                for url in redis_urls {
                    cmd.args(["--redis-url", url]);
                }
            }
            UrlsVia::Env => {
                cmd.env("TIDINGS_REDIS_URL", redis_urls.join(","));
            }
            UrlsVia::Toml => {
                let dir = TempDir::new("node-config");
                let file = dir.0.join("tidings.toml");
                let list: Vec<String> = redis_urls.iter().map(|u| format!("{u:?}")).collect();
                std::fs::write(&file, format!("redis_url = [{}]\n", list.join(", ")))
                    .expect("write the TOML file");
                cmd.arg("--config").arg(&file);
                config = Some(dir);
            }
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tidings");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::channel::<String>();
        let keep = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                keep.lock().expect("log lock").push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut node = Node {
            child: Some(child),
            addr: String::new(),
            log,
            _config: config,
        };
        let deadline = Instant::now() + WAIT;
        let line = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains("listening on ") => break line,
                Ok(_) => continue,
                Err(e) => panic!(
                    "tidings did not log \"listening on\" ({e}):\n{}",
                    node.log()
                ),
            }
        };
        node.addr = line
            .rsplit("listening on ")
            .next()
            .expect("address")
            .trim()
            .to_owned();
        let (status, body) = node.wait_health(200, RECOVERY).await;
        assert_eq!(
            body["store"], "redis",
            "a node started with --redis-url stores in Redis: {status} {body}"
        );
        node
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// SIGKILL, then reap: no shutdown, no goodbye to its clients.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `ws://ADDR/ws?token=...` for `user`.
    pub fn url(&self, user: &str) -> String {
        format!("ws://{}/ws?token={}", self.addr, token(user))
    }

    /// A WebSocket client of `user` on this node (after its `connected` frame).
    pub async fn connect(&self, user: &str) -> Client {
        Client::connect(&self.url(user)).await
    }

    /// `GET /health`: the status code and the JSON body.
    pub async fn health(&self) -> (u16, serde_json::Value) {
        let response =
            tokio::time::timeout(WAIT, reqwest::get(format!("http://{}/health", self.addr)))
                .await
                .expect("/health answered in time")
                .expect("GET /health");
        let status = response.status().as_u16();
        let body = response.json().await.expect("/health is JSON");
        (status, body)
    }

    /// Poll `/health` until it answers `status`, within `within`; returns the answer.
    pub async fn wait_health(&self, status: u16, within: Duration) -> (u16, serde_json::Value) {
        let started = Instant::now();
        loop {
            let (got, body) = self.health().await;
            if got == status {
                return (got, body);
            }
            assert!(
                started.elapsed() < within,
                "/health of {} stayed {got} {body} for {within:?}, wanted {status}\n{}",
                self.addr,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}
