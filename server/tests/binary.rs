//! The real `tidings` binary: startup, token minting, SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Client, Ended, SECRET, TempDir, WAIT};
use futures_util::{SinkExt, StreamExt};
use tidings_protocol::ServerMessage;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_tidings");

/// A `tidings serve` child process and the address it reported.
struct Running {
    child: Child,
    addr: String,
    lines: mpsc::Receiver<String>,
    /// What it logged up to "listening on".
    startup: Vec<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `tidings serve` on a free port (memory store unless `args` choose one).
fn serve(args: &[&str]) -> Running {
    launch(Command::new(BIN), args)
}

/// [`serve`] in a process that may open at most `files` files (`ulimit -n`).
fn serve_with_open_files(files: u32, args: &[&str]) -> Running {
    let mut shell = Command::new("sh");
    shell.args([
        "-c",
        &format!("ulimit -n {files} && exec \"$0\" \"$@\""),
        BIN,
    ]);
    launch(shell, args)
}

fn launch(mut command: Command, args: &[&str]) -> Running {
    let store: &[&str] = if args.contains(&"--store") {
        &[]
    } else {
        &["--store", "memory"]
    };
    let mut child = command
        .arg("serve")
        .args(["--bind", "127.0.0.1:0"])
        .args(store)
        .args(args)
        .env_remove("TIDINGS_JWT_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tidings");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut running = Running {
        child,
        addr: String::new(),
        lines,
        startup: Vec::new(),
    };
    let line = running.wait_for_line("listening on");
    running.addr = line
        .rsplit("listening on ")
        .next()
        .expect("address")
        .trim()
        .to_owned();
    running
}

impl Running {
    fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => self.startup.push(line),
                Err(e) => panic!("no line containing {needle:?}: {e}"),
            }
        }
    }

    fn url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }
}

fn mint(sub: &str) -> String {
    let out = Command::new(BIN)
        .args(["token", "--sub", sub, "--ttl", "1h", "--jwt-secret", SECRET])
        .output()
        .expect("run tidings token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned()
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits_zero_within_the_deadline() {
    let mut server = serve(&["--jwt-secret", SECRET, "--shutdown-timeout", "5s"]);
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut c = Client::connect(&server.url(&mint(&format!("u{i}")))).await;
        c.subscribe(&["news"]).await;
        clients.push(c);
    }
    let started = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    for c in &mut clients {
        assert_eq!(c.closed().await, Ended::Close(1001));
    }
    let exit = loop {
        if let Some(status) = server.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "did not exit within the deadline"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "exit status {exit:?}");
    server.wait_for_line("shut down cleanly");
}

#[test]
fn serve_refuses_to_start_without_a_secret() {
    let out = Command::new(BIN)
        .args(["serve", "--bind", "127.0.0.1:0", "--store", "memory"])
        .env_remove("TIDINGS_JWT_SECRET")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no JWT key configured"), "{stderr}");
}

#[tokio::test]
async fn dev_mode_logs_a_working_token_and_env_vars_configure() {
    let site = TempDir::new("site");
    std::fs::write(site.0.join("index.html"), "<h1>demo</h1>").expect("write");
    let mut server = {
        let mut child = Command::new(BIN)
            .args(["serve", "--dev"])
            .env("TIDINGS_BIND", "127.0.0.1:0")
            .env("TIDINGS_STATIC_DIR", &site.0)
            .env("TIDINGS_STORE", "memory")
            .env("TIDINGS_RATE_LIMIT", "1")
            .env("TIDINGS_RATE_BURST", "1")
            .env_remove("TIDINGS_JWT_SECRET")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Running {
            child,
            addr: String::new(),
            lines,
            startup: Vec::new(),
        }
    };
    let line = server.wait_for_line("dev token");
    let url = line.split_whitespace().last().expect("url").to_owned();
    assert!(url.starts_with("ws://127.0.0.1:"), "{line}");
    let mut c = Client::connect(&url).await;
    // TIDINGS_RATE_BURST=1 took effect: the second request in a row is rate limited.
    assert!(matches!(
        c.request(r#"{"type":"ping"}"#).await,
        tidings_protocol::ServerMessage::Pong(_)
    ));
    let reply = c.request(r#"{"type":"ping"}"#).await;
    assert_eq!(
        common::error_code(&reply),
        Some(tidings_protocol::ErrorCode::RateLimited)
    );

    // --dev mints tokens for the demo page, and --static-dir serves it.
    let base = url
        .split("/ws")
        .next()
        .expect("base")
        .replace("ws://", "http://");
    let minted: serde_json::Value = reqwest::get(format!("{base}/dev/token?sub=alice"))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let token = minted["token"].as_str().expect("token");
    let ws = url.split("?token=").next().expect("ws url");
    let alice = Client::connect(&format!("{ws}?token={token}")).await;
    assert!(!alice.client_id.is_empty());
    let page = reqwest::get(format!("{base}/"))
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert_eq!(page, "<h1>demo</h1>");
}

#[tokio::test]
async fn dev_tokens_do_not_exist_outside_dev_mode() {
    let server = serve(&["--jwt-secret", SECRET]);
    let status = reqwest::get(format!("http://{}/dev/token?sub=x", server.addr))
        .await
        .expect("get")
        .status();
    assert_eq!(status, 404);
}

#[test]
fn help_documents_every_option_with_its_default() {
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .expect("run");
    let help = String::from_utf8(out.stdout).expect("utf8");
    for flag in [
        "--bind",
        "--jwt-secret",
        "--rate-limit",
        "--rate-burst",
        "--max-connections",
        "--heartbeat-interval",
        "--shutdown-timeout",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    for env in [
        "TIDINGS_BIND",
        "TIDINGS_JWT_SECRET",
        "TIDINGS_RATE_LIMIT",
        "TIDINGS_RATE_BURST",
    ] {
        assert!(help.contains(env), "--help lacks {env}");
    }
    assert!(help.contains("[default: 127.0.0.1:8000]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing_that_was_acknowledged() {
    const TOTAL: usize = 10_000;
    let dir = TempDir::new("crash");
    let data_dir = dir.0.to_str().expect("utf8 path").to_owned();
    let args = [
        "--jwt-secret",
        SECRET,
        "--store",
        "sqlite",
        "--data-dir",
        &data_dir,
        "--rate-limit",
        "1000000",
        "--rate-burst",
        "1000000",
    ];
    let mut server = serve(&args);
    let client = Client::connect(&server.url(&mint("producer"))).await;
    let (mut sink, mut stream) = client.ws.split();
    tokio::spawn(async move {
        for i in 0..TOTAL {
            let frame =
                format!(r#"{{"type":"publish","topic":"ledger","data":{{"i":{i}}},"ref":"{i}"}}"#);
            if sink.send(Message::Text(frame.into())).await.is_err() {
                break;
            }
        }
    });
    // Collect acknowledgements; kill -9 the server once a few thousand are in.
    let mut acked: Vec<(usize, u64, String)> = Vec::new();
    let mut killed = false;
    loop {
        let frame = match tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("frames keep coming")
        {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break,
        };
        if let Ok(ServerMessage::Published(p)) = ServerMessage::decode(frame.as_str()) {
            let i: usize = p
                .r#ref
                .as_deref()
                .and_then(|r| r.parse().ok())
                .expect("ref");
            acked.push((i, p.offset.expect("offset"), p.epoch.expect("epoch")));
        }
        if !killed && acked.len() >= 3_000 {
            server.child.kill().expect("kill -9");
            killed = true;
        }
    }
    assert!(
        killed && acked.len() >= 3_000 && acked.len() < TOTAL,
        "killed mid-stream: {} acks",
        acked.len()
    );
    let _ = server.child.wait();

    // Restart on the same data directory.
    let server = serve(&args);
    let mut reader = Client::connect(&server.url(&mint("auditor"))).await;
    let mut stored: Vec<(u64, u64)> = Vec::new();
    let mut epoch: String;
    loop {
        let since = stored.last().map_or(0, |(o, _)| *o);
        let reply = reader
            .request(&format!(
                r#"{{"type":"history","topic":"ledger","since":{since},"limit":1000}}"#
            ))
            .await;
        let ServerMessage::History(page) = reply else {
            panic!("{reply:?}")
        };
        epoch = page.epoch.clone();
        if page.messages.is_empty() {
            break;
        }
        for m in page.messages {
            let v: serde_json::Value = serde_json::from_str(m.data.get()).expect("json");
            stored.push((m.offset.expect("offset"), v["i"].as_u64().expect("i")));
        }
    }
    let offsets: Vec<u64> = stored.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "contiguous offsets"
    );
    for (i, offset, ack_epoch) in &acked {
        assert_eq!(ack_epoch, &epoch, "the epoch survived the crash");
        let entry = stored
            .get(*offset as usize - 1)
            .expect("every acknowledged offset is stored");
        assert_eq!(
            entry,
            &(*offset, *i as u64),
            "acknowledged message {i} is intact"
        );
    }

    // A subscriber resuming from its last acknowledged offset gets exactly the rest.
    let (_, last_acked, _) = acked
        .iter()
        .max_by_key(|(_, o, _)| *o)
        .expect("acks")
        .clone();
    let mut resumer = Client::connect(&server.url(&mint("resumer"))).await;
    resumer
        .send(&format!(
            r#"{{"type":"subscribe","topics":["ledger"],"since":{{"ledger":{{"offset":{last_acked},"epoch":"{epoch}"}}}}}}"#
        ))
        .await;
    let mut rest = Vec::new();
    while (rest.len() as u64) < stored.len() as u64 - last_acked {
        match resumer.recv().await {
            ServerMessage::Message(m) => rest.push(m.offset.expect("offset")),
            ServerMessage::Subscribed(s) => {
                assert_eq!(
                    s.recovered.and_then(|r| r.get("ledger").copied()),
                    Some(true)
                )
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        rest,
        (last_acked + 1..=stored.len() as u64).collect::<Vec<_>>()
    );
}

/// Run `tidings serve` with `args` and env `TIDINGS_*` pairs; it must refuse to start.
/// Returns its stderr.
fn refused_to_start(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--bind", "127.0.0.1:0", "--store", "memory"])
        .args(args)
        .env_remove("TIDINGS_JWT_SECRET")
        .stdout(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "started with {args:?} {env:?}: {stderr}"
    );
    stderr
}

/// Flags, environment, and a phrase the refusal must contain.
type Refusal = (
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[test]
fn configuration_that_cannot_work_is_refused_at_start() {
    let cases: [Refusal; 6] = [
        (
            &["--jwt-secret", SECRET, "--dedup-window", "60y"],
            &[],
            "dedup_window",
        ),
        (
            &["--jwt-secret", SECRET, "--retention-max-age", "100y"],
            &[],
            "retention_max_age",
        ),
        (
            &["--jwt-secret", SECRET, "--heartbeat-interval", "1000y"],
            &[],
            "heartbeat_interval",
        ),
        (
            &["--jwt-secret", SECRET, "--queue-capacity", "0"],
            &[],
            "queue_capacity",
        ),
        (&[], &[("TIDINGS_JWT_SECRET", "a")], "openssl rand -hex 32"),
        (
            &["--jwt-secret", "short-but-not-32-bytes"],
            &[],
            "at least 32",
        ),
    ];
    for (args, env, expected) in cases {
        let stderr = refused_to_start(args, env);
        assert!(stderr.contains(expected), "{args:?} {env:?}: {stderr}");
    }
}

#[tokio::test]
async fn dev_mode_never_signs_with_a_real_secret() {
    let mut server = {
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--dev",
                "--store",
                "memory",
                "--bind",
                "127.0.0.1:0",
            ])
            .args(["--jwt-secret", SECRET])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Running {
            child,
            addr: String::new(),
            lines,
            startup: Vec::new(),
        }
    };
    server.wait_for_line("ignoring the configured JWT keys");
    let line = server.wait_for_line("dev token");
    let url = line.split_whitespace().last().expect("url").to_owned();
    let base = url
        .split("/ws")
        .next()
        .expect("base")
        .replace("ws://", "http://");
    let minted: serde_json::Value = reqwest::get(format!("{base}/dev/token?sub=admin"))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let token = minted["token"].as_str().expect("token");
    // The minted token is not signed with the real secret...
    let real = tidings_server::Tidings::new(tidings_server::Config {
        jwt_secret: Some(SECRET.into()),
        store: tidings_server::StoreKind::Memory,
        ..tidings_server::Config::default()
    })
    .expect("a server with the real secret");
    let app = real.router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = tidings_server::serve(listener, app, &real, std::future::pending()).await;
    });
    assert_eq!(
        Client::refused(format!("ws://{addr}/ws?token={token}")).await,
        401,
        "a dev token must not open a server that uses the real secret"
    );
    // ...and tokens signed with the real secret do not open the dev server.
    let ws = url.split("?token=").next().expect("ws url");
    assert_eq!(
        Client::refused(format!("{ws}?token={}", mint("admin"))).await,
        401
    );
}

#[test]
fn version_names_the_commit() {
    let out = Command::new(BIN).arg("--version").output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.starts_with(&format!("tidings {} (", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
}

#[test]
fn check_config_validates_what_serve_would_run_and_redacts_secrets() {
    let dir = TempDir::new("check-config");
    let file = dir.0.join("tidings.toml");
    std::fs::write(
        &file,
        "rate_limit = 7\nbind = \"127.0.0.1:9100\"\n[[retention]]\npattern = \"chat.*\"\nmax_messages = 10\n",
    )
    .expect("write");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        cmd.arg("check-config")
            .args(args)
            .env_remove("TIDINGS_JWT_SECRET")
            .env_remove("TIDINGS_API_KEY");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run")
    };
    let config = file.to_str().expect("utf8");
    // File, then environment, then flags.
    let out = run(
        &[
            "--config",
            config,
            "--rate-burst",
            "9",
            "--api-key",
            "the-api-key",
        ],
        &[("TIDINGS_JWT_SECRET", SECRET), ("TIDINGS_RATE_LIMIT", "8")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "rate_limit = 8",
        "rate_burst = 9",
        "bind = \"127.0.0.1:9100\"",
        "pattern = \"chat.*\"",
    ] {
        assert!(stdout.contains(line), "{line} missing from:\n{stdout}");
    }
    assert!(
        !stdout.contains(SECRET) && !stdout.contains("the-api-key"),
        "{stdout}"
    );
    assert!(stdout.contains("<redacted"), "{stdout}");
    // A bad value: non-zero, with the reason.
    let out = run(
        &["--config", config, "--dedup-window", "60y"],
        &[("TIDINGS_JWT_SECRET", SECRET)],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("dedup_window"));
    std::fs::write(&file, "rate_limt = 5\n").expect("write");
    let out = run(&["--config", config], &[("TIDINGS_JWT_SECRET", SECRET)]);
    assert!(!out.status.success(), "a misspelt key is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_copies_a_running_store_and_the_copy_restores() {
    let live = TempDir::new("backup-live");
    let copy = TempDir::new("backup-copy");
    let restored = TempDir::new("backup-restored");
    let data_dir = live.0.to_str().expect("utf8").to_owned();
    let server = serve(&[
        "--jwt-secret",
        SECRET,
        "--store",
        "sqlite",
        "--data-dir",
        &data_dir,
    ]);
    let mut c = Client::connect(&server.url(&mint("writer"))).await;
    let mut epoch = String::new();
    for i in 1..=50u64 {
        let reply = c
            .request(&format!(
                r#"{{"type":"publish","topic":"ledger","data":{i},"ref":"{i}"}}"#
            ))
            .await;
        let ServerMessage::Published(p) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(p.offset, Some(i));
        epoch = p.epoch.expect("epoch");
    }
    // The copy is taken while the server runs.
    let dest = copy.0.join("tidings-backup.db");
    let out = Command::new(BIN)
        .args([
            "backup",
            dest.to_str().expect("utf8"),
            "--store",
            "sqlite",
            "--data-dir",
        ])
        .arg(&data_dir)
        .output()
        .expect("run backup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("integrity check: ok"));
    // Writes after the copy are not in it; the server is unaffected.
    let reply = c
        .request(r#"{"type":"publish","topic":"ledger","data":51,"ref":"51"}"#)
        .await;
    assert!(matches!(reply, ServerMessage::Published(_)), "{reply:?}");
    let again = Command::new(BIN)
        .args(["backup", dest.to_str().expect("utf8"), "--data-dir"])
        .arg(&data_dir)
        .output()
        .expect("run");
    assert!(
        !again.status.success(),
        "an existing copy is not replaced without --force"
    );
    drop(c);
    drop(server);
    // Restore: the copy becomes a data dir's tidings.db, and the history resumes from it.
    std::fs::copy(&dest, restored.0.join("tidings.db")).expect("restore");
    let restored_dir = restored.0.to_str().expect("utf8").to_owned();
    let server = serve(&[
        "--jwt-secret",
        SECRET,
        "--store",
        "sqlite",
        "--data-dir",
        &restored_dir,
    ]);
    let mut c = Client::connect(&server.url(&mint("reader"))).await;
    let reply = c.request(r#"{"type":"history","topic":"ledger"}"#).await;
    let ServerMessage::History(page) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!((page.latest, page.messages.len()), (50, 50));
    assert_eq!(page.epoch, epoch, "the same history");
    let reply = c
        .request(r#"{"type":"publish","topic":"ledger","data":"next","ref":"n"}"#)
        .await;
    let ServerMessage::Published(p) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(
        (p.offset, p.epoch.as_deref()),
        (Some(51), Some(epoch.as_str()))
    );
}

#[tokio::test]
async fn orchestrator_probes_answer() {
    let server = serve(&["--jwt-secret", SECRET]);
    for (path, status) in [("/health/live", "live"), ("/health/ready", "ready")] {
        let response = reqwest::get(format!("http://{}{path}", server.addr))
            .await
            .expect("get");
        assert_eq!(response.status(), 200, "{path}");
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(body["status"], status);
    }
    let health: serde_json::Value = reqwest::get(format!("http://{}/health", server.addr))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        health["status"], "healthy",
        "the template's /health is unchanged"
    );
    assert!(health["commit"].as_str().is_some());
}

#[tokio::test]
async fn connections_past_the_open_file_limit_get_a_503_not_a_failed_accept() {
    // 200 open files: the server keeps max(64, 200/32) for itself and holds 136 WebSockets.
    let server = serve_with_open_files(
        200,
        &["--jwt-secret", SECRET, "--max-connections", "100000"],
    );
    assert!(
        server
            .startup
            .iter()
            .any(|l| l.contains("holding at most 136 connections")),
        "{:?}",
        server.startup
    );
    let token = mint("many");
    let mut held = Vec::new();
    for i in 0..136 {
        let (ws, _) =
            tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(server.url(&token)))
                .await
                .expect("connect in time")
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        held.push(ws);
    }
    // One more is refused with a clear HTTP status while the server keeps serving.
    assert_eq!(Client::refused(server.url(&token)).await, 503);
    // Closed connections free their slots: a new one gets in once the server saw them go.
    for mut ws in held.drain(100..) {
        ws.close(None).await.expect("close");
    }
    let deadline = Instant::now() + WAIT;
    let mut again = loop {
        match tokio_tungstenite::connect_async(server.url(&token)).await {
            Ok((ws, _)) => break ws,
            Err(e) => {
                assert!(Instant::now() < deadline, "no room after closing 36: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    again
        .send(Message::Text(r#"{"type":"ping","ref":"p"}"#.into()))
        .await
        .expect("send");
    loop {
        let frame = tokio::time::timeout(WAIT, again.next())
            .await
            .expect("a reply in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = frame
            && matches!(
                ServerMessage::decode(t.as_str()),
                Ok(ServerMessage::Pong(_))
            )
        {
            break;
        }
    }
}
