//! The real `tidings` binary: startup, token minting, SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Client, Ended, SECRET, WAIT};

const BIN: &str = env!("CARGO_BIN_EXE_tidings");

/// A `tidings serve` child process and the address it reported.
struct Running {
    child: Child,
    addr: String,
    lines: mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(args: &[&str]) -> Running {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(["--bind", "127.0.0.1:0", "--store", "memory"])
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
                Ok(_) => continue,
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
    let mut server = {
        let mut child = Command::new(BIN)
            .args(["serve", "--dev"])
            .env("TIDINGS_BIND", "127.0.0.1:0")
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
