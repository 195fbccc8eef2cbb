//! Test harness: a real server on 127.0.0.1:0 and real WebSocket clients.
#![allow(dead_code, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tidings_protocol::ServerMessage;
use tidings_server::{Config, Tidings, TokenSpec};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret-0123456789abcdef-0123456789";
/// Upper bound for any single wait in the tests.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub addr: SocketAddr,
    pub tidings: Tidings,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<bool>>,
}

/// A server on the in-memory store (durable-topic semantics, nothing on disk).
pub fn config() -> Config {
    Config {
        jwt_secret: Some(SECRET.into()),
        store: tidings_server::StoreKind::Memory,
        ..Config::default()
    }
}

/// A server on SQLite in a fresh temporary directory (removed when the guard drops).
pub fn sqlite_config(dir: &TempDir) -> Config {
    Config {
        store: tidings_server::StoreKind::Sqlite,
        data_dir: dir.0.clone(),
        ..config()
    }
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("tidings-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub async fn start(config: Config) -> TestServer {
    let tidings = Tidings::new(config).expect("config");
    start_with(tidings.clone(), tidings.router()).await
}

pub async fn start_with(tidings: Tidings, app: axum::Router) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let t = tidings.clone();
    let task = tokio::spawn(async move {
        tidings_server::serve(listener, app, &t, async {
            let _ = stopped.await;
        })
        .await
    });
    TestServer {
        addr,
        tidings,
        stop: Some(stop),
        task,
    }
}

impl TestServer {
    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }

    pub async fn connect(&self, user: &str) -> Client {
        Client::connect(&self.ws_url(&token(user))).await
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::get(format!("http://{}{path}", self.addr))
            .await
            .expect("http get")
    }

    pub async fn health(&self) -> serde_json::Value {
        self.get("/health").await.json().await.expect("health json")
    }

    /// Poll `/health` until `clients` equals `n` (sessions end asynchronously after a close).
    pub async fn wait_for_clients(&self, n: u64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let clients = self.health().await["clients"].as_u64();
            if clients == Some(n) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "clients stayed at {clients:?}, wanted {n}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(mut self) -> bool {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("server stopped in time")
            .expect("server task")
            .expect("serve")
    }
}

pub fn token(user: &str) -> String {
    token_with(TokenSpec {
        info: None,
        sub: user.into(),
        ttl: Some(Duration::from_secs(3600)),
        ..TokenSpec::default()
    })
}

pub fn token_with(spec: TokenSpec) -> String {
    tidings_server::mint_token(SECRET, &spec).expect("mint")
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub client_id: String,
}

/// How a connection ended, as seen by the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Close(u16),
    Dropped,
}

impl Client {
    /// Connect and read the `connected` frame.
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        let mut client = Client {
            ws,
            client_id: String::new(),
        };
        match client.recv().await {
            ServerMessage::Connected(c) => client.client_id = c.client_id,
            other => panic!("first frame was {other:?}"),
        }
        client
    }

    /// Connect over a socket with a tiny receive buffer, so that a client which does not read
    /// cannot have the kernel absorb the stream for it; reads the `connected` frame.
    pub async fn connect_small_buffer(server: &TestServer, user: &str) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("rcvbuf");
        let stream = socket.connect(server.addr).await.expect("tcp connect");
        let (ws, _) = tokio_tungstenite::client_async(
            server.ws_url(&token(user)),
            MaybeTlsStream::Plain(stream),
        )
        .await
        .expect("handshake");
        let mut client = Client {
            ws,
            client_id: String::new(),
        };
        match client.recv().await {
            ServerMessage::Connected(c) => client.client_id = c.client_id,
            other => panic!("first frame was {other:?}"),
        }
        client
    }

    /// Try a handshake that should be refused; returns the HTTP status.
    pub async fn refused(request: impl IntoClientRequest + Unpin) -> u16 {
        match tokio_tungstenite::connect_async(request).await {
            Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
            Err(e) => panic!("expected an HTTP refusal, got {e}"),
            Ok(_) => panic!("expected an HTTP refusal, got a connection"),
        }
    }

    pub async fn send(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// The next protocol message, skipping heartbeats.
    pub async fn recv(&mut self) -> ServerMessage {
        loop {
            let msg = self.recv_any().await;
            if !matches!(msg, ServerMessage::Heartbeat(_)) {
                return msg;
            }
        }
    }

    /// The next protocol message, heartbeats included.
    pub async fn recv_any(&mut self) -> ServerMessage {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("stream open")
                .expect("frame");
            match frame {
                Message::Text(t) => {
                    return ServerMessage::decode(t.as_str())
                        .unwrap_or_else(|e| panic!("undecodable {t}: {e}"));
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Send a request and return the reply.
    pub async fn request(&mut self, text: &str) -> ServerMessage {
        self.send(text).await;
        self.recv().await
    }

    /// Read until the server closes; returns the close code. Text frames before it are skipped.
    pub async fn closed(&mut self) -> Ended {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("close in time");
            match frame {
                Some(Ok(Message::Close(Some(f)))) => return Ended::Close(u16::from(f.code)),
                Some(Ok(Message::Close(None))) => return Ended::Close(WsCloseCode::Status.into()),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ended::Dropped,
            }
        }
    }

    pub async fn subscribe(&mut self, topics: &[&str]) {
        let text = serde_json::json!({"type": "subscribe", "topics": topics}).to_string();
        match self.request(&text).await {
            ServerMessage::Subscribed(_) => {}
            other => panic!("subscribe got {other:?}"),
        }
    }
}

pub fn error_code(msg: &ServerMessage) -> Option<tidings_protocol::ErrorCode> {
    match msg {
        ServerMessage::Error(e) => Some(e.code),
        _ => None,
    }
}
