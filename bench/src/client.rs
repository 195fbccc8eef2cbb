//! The client side of the template-compatible protocol: where to connect, tokens, the
//! handshake, the frames the bench sends and the minimal envelope it reads back.
//!
//! Parsing is deliberately minimal (borrowed `&str`, unknown fields skipped) so the load
//! generator spends as little CPU per frame as it can: it shares the machine with the server.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// tungstenite's buffer and size settings.
pub type WsConfig = WebSocketConfig;

/// One open WebSocket connection.
pub type Ws = WebSocketStream<TcpStream>;

/// The server under test: a loopback address and the WebSocket path.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where to connect (always in 127.0.0.0/8 or `::1`).
    pub addr: SocketAddr,
    /// The path of the WebSocket endpoint, e.g. `/ws`.
    pub path: String,
    /// HS256 secret the tokens are signed with.
    pub secret: String,
}

impl Target {
    /// Parses `ws://HOST:PORT/PATH` and refuses any host that is not loopback: this tool
    /// only ever loads servers on this machine.
    pub fn parse(url: &str, secret: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("ws://")
            .with_context(|| format!("{url}: only ws:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/ws"),
        };
        let (host, port) = authority
            .rsplit_once(':')
            .with_context(|| format!("{url}: the port is required (ws://127.0.0.1:PORT/ws)"))?;
        let port: u16 = port
            .parse()
            .with_context(|| format!("{url}: bad port {port:?}"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host.parse()
                .with_context(|| format!("{url}: host must be an IP address or localhost"))?
        };
        if !ip.is_loopback() {
            bail!("{url}: refusing a non-loopback target; only 127.0.0.0/8 and ::1 may be loaded");
        }
        if path.contains('?') {
            bail!("{url}: no query string please; the token is added by the bench");
        }
        Ok(Target {
            addr: SocketAddr::new(ip, port),
            path: path.to_string(),
            secret: secret.to_string(),
        })
    }

    /// The URL with a fresh token for `user`.
    pub fn url_for(&self, user: &str) -> Result<String> {
        Ok(format!(
            "ws://{}{}?token={}",
            self.addr,
            self.path,
            mint_token(&self.secret, user)?
        ))
    }
}

/// JWT claims: the template keys clients by `user_id`, Tidings reads `sub`; set both.
#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    user_id: &'a str,
    exp: u64,
}

/// An HS256 token for `user`, valid for a day.
pub fn mint_token(secret: &str, user: &str) -> Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("system clock before 1970")?
        .as_secs();
    let claims = Claims {
        sub: user,
        user_id: user,
        exp: now + 24 * 3600,
    };
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())
        .context("building the HS256 key")?;
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).context("signing a token")
}

/// The source addresses to spread connections over: `n` of them, `127.0.0.2` upward, so
/// each gets its own ephemeral-port range. `n <= 1` means "let the kernel choose".
pub fn source_ips(target: &Target, n: usize) -> Vec<Option<IpAddr>> {
    if n <= 1 || !target.addr.is_ipv4() {
        return vec![None];
    }
    (0..n.min(250))
        .map(|i| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8))))
        .collect()
}

/// How a connection is opened.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions {
    /// Bind to this local address (port chosen by the kernel) before connecting.
    pub source: Option<IpAddr>,
    /// Give up after this long (TCP connect, upgrade and the `connected` frame together).
    pub timeout: Duration,
    /// tungstenite's buffers; small ones for thousands of idle connections.
    pub config: Option<WebSocketConfig>,
}

/// Opens a WebSocket as `user` and waits for the server's `connected` frame.
pub async fn connect(target: &Target, user: &str, opts: ConnectOptions) -> Result<Ws> {
    let url = target.url_for(user)?;
    tokio::time::timeout(opts.timeout, async {
        let socket = if target.addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .context("socket")?;
        if let Some(ip) = opts.source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("bind {ip}"))?;
        }
        let stream = socket.connect(target.addr).await.context("connect")?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        let (mut ws, _response) =
            tokio_tungstenite::client_async_with_config(url, stream, opts.config)
                .await
                .context("upgrade")?;
        await_type(&mut ws, "connected").await?;
        Ok(ws)
    })
    .await
    .with_context(|| format!("timed out after {:?}", opts.timeout))?
}

/// Reads frames until one of type `kind` arrives; an `error` frame or a close fails.
pub async fn await_type(ws: &mut Ws, kind: &str) -> Result<()> {
    while let Some(msg) = ws.next().await {
        match msg.context("read")? {
            Message::Text(text) => {
                let env = Envelope::parse(text.as_str())
                    .with_context(|| format!("unparseable frame {:?}", text.as_str()))?;
                if env.kind == kind {
                    return Ok(());
                }
                if env.kind == "error" {
                    bail!("server error while waiting for {kind}: {}", text.as_str());
                }
            }
            Message::Close(frame) => bail!("closed while waiting for {kind}: {frame:?}"),
            _ => {}
        }
    }
    bail!("connection ended while waiting for {kind}")
}

/// The fields of a server frame the bench looks at; everything else is skipped unparsed.
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    /// The frame's `type`.
    #[serde(rename = "type", borrow)]
    pub kind: &'a str,
    /// For `message` frames: the bench's own payload.
    #[serde(default)]
    pub data: Option<BenchData>,
    /// For `error` frames: the stable error code.
    #[serde(default, borrow)]
    pub code: Option<&'a str>,
}

impl<'a> Envelope<'a> {
    /// Parses a text frame.
    pub fn parse(text: &'a str) -> serde_json::Result<Self> {
        serde_json::from_str(text)
    }
}

/// What a subscriber needs to know about one text frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// A `message`; its bench payload if it carries one.
    Message(Option<BenchData>),
    /// An `error` frame.
    Error,
    /// Anything else (`heartbeat`, `subscribed`, ...).
    Other,
    /// Not a JSON object with a `type`.
    Invalid,
}

/// Classifies a frame, taking a fast path for the common case.
///
/// The fast path applies to a frame that starts with `{"type":"message"` and contains the
/// bench payload exactly as the publisher wrote it (`{"p":N,"s":N,"t":N,...`, or
/// `{"p":N,"s":N,"t":N,"i":N,...` when paced): Tidings
/// forwards `data` byte for byte and the template re-serializes it without spaces. Anything
/// else goes through the general (serde) parse, so a server that formats differently is only
/// slower to measure, never mismeasured.
pub fn classify(text: &str) -> Incoming {
    if text.starts_with(r#"{"type":"message""#)
        && let Some(d) = fast_bench_data(text)
    {
        return Incoming::Message(Some(d));
    }
    match Envelope::parse(text) {
        Ok(env) if env.kind == "message" => Incoming::Message(env.data),
        Ok(env) if env.kind == "error" => Incoming::Error,
        Ok(_) => Incoming::Other,
        Err(_) => Incoming::Invalid,
    }
}

/// Finds `{"p":P,"s":S,"t":T` (and `,"i":I` right after, if there) in `text` and reads the
/// numbers.
fn fast_bench_data(text: &str) -> Option<BenchData> {
    let b = text.as_bytes();
    let mut i = text.find(r#"{"p":"#)? + 5;
    let p = read_u64(b, &mut i)?;
    expect(b, &mut i, br#","s":"#)?;
    let s = read_u64(b, &mut i)?;
    expect(b, &mut i, br#","t":"#)?;
    let t = read_u64(b, &mut i)?;
    let intended = if expect(b, &mut i, br#","i":"#).is_some() {
        Some(read_u64(b, &mut i)?)
    } else {
        None
    };
    // The number must end here, not run into an exponent or a fraction.
    matches!(b.get(i), Some(b',' | b'}')).then_some(())?;
    Some(BenchData {
        p: u32::try_from(p).ok()?,
        s,
        t,
        i: intended,
    })
}

/// Reads a run of ASCII digits at `*i` as a `u64`, advancing `*i` past it.
fn read_u64(b: &[u8], i: &mut usize) -> Option<u64> {
    let start = *i;
    let mut v: u64 = 0;
    while let Some(&c) = b.get(*i).filter(|c| c.is_ascii_digit()) {
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        *i += 1;
    }
    (*i > start).then_some(v)
}

/// Skips `lit` at `*i`, or fails.
fn expect(b: &[u8], i: &mut usize, lit: &[u8]) -> Option<()> {
    let end = *i + lit.len();
    (b.get(*i..end)? == lit).then(|| *i = end)
}

/// The payload the bench publishes: who sent it, its sequence number, when, and padding.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct BenchData {
    /// Publisher index.
    pub p: u32,
    /// Sequence number within that publisher, from 0.
    pub s: u64,
    /// When the frame was actually written, nanoseconds since the bench started.
    pub t: u64,
    /// When it was meant to be written (paced runs only: the intended send time on the
    /// `--rate` schedule, which `t` may trail), nanoseconds since the bench started.
    #[serde(default)]
    pub i: Option<u64>,
}

/// `{"type":"subscribe","topics":[topic]}`.
pub fn subscribe_frame(topic: &str) -> String {
    serde_json::json!({"type": "subscribe", "topics": [topic]}).to_string()
}

/// `{"type":"ping"}`.
pub const PING_FRAME: &str = r#"{"type":"ping"}"#;

/// Builds publish frames for one publisher whose `data` is `payload_bytes` long
/// (or as short as the header allows, if that is longer).
#[derive(Debug, Clone)]
pub struct PublishFrames {
    /// `{"type":"publish","topic":"...",` — the part before `id` and `data`.
    prefix: String,
    /// With `Some(tag)`, every frame carries a unique idempotency key `"{tag}-{p}-{seq}"`
    /// (as the SDK sends on every publish).
    id_tag: Option<String>,
    /// Publisher index, written into every payload.
    publisher: u32,
    /// Target length of the serialized `data` value.
    payload_bytes: usize,
    /// Every frame carries `"ref":"{seq}"`, so the server acknowledges it with `published`.
    refs: bool,
}

impl PublishFrames {
    /// Frames for publisher `publisher` on `topic`.
    pub fn new(topic: &str, publisher: u32, payload_bytes: usize) -> Self {
        let topic_json = serde_json::Value::from(topic).to_string();
        PublishFrames {
            prefix: format!(r#"{{"type":"publish","topic":{topic_json},"#),
            id_tag: None,
            publisher,
            payload_bytes,
            refs: false,
        }
    }

    /// Give every frame `"ref":"{seq}"`: the server answers each with `published`.
    pub fn with_refs(mut self) -> Self {
        self.refs = true;
        self
    }

    /// Give every frame a unique `id` starting with `tag`.
    pub fn with_ids(mut self, tag: &str) -> Self {
        self.id_tag = Some(tag.to_owned());
        self
    }

    /// The frame for sequence number `seq` sent at `t_ns`.
    pub fn frame(&self, seq: u64, t_ns: u64) -> String {
        self.frame_with(seq, t_ns, None)
    }

    /// The frame for sequence number `seq` sent at `t_ns` that was due at `intended_ns`
    /// (payload `{"p":P,"s":seq,"t":t_ns,"i":intended_ns,"x":"..."}`).
    pub fn paced_frame(&self, seq: u64, t_ns: u64, intended_ns: u64) -> String {
        self.frame_with(seq, t_ns, Some(intended_ns))
    }

    /// The frame, with an intended send time in the payload if there is one.
    fn frame_with(&self, seq: u64, t_ns: u64, intended_ns: Option<u64>) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(self.prefix.len() + self.payload_bytes + 32);
        out.push_str(&self.prefix);
        if let Some(tag) = &self.id_tag {
            let _ = write!(out, r#""id":"{tag}-{}-{seq}","#, self.publisher);
        }
        if self.refs {
            let _ = write!(out, r#""ref":"{seq}","#);
        }
        out.push_str(r#""data":"#);
        let data_start = out.len();
        let _ = write!(out, r#"{{"p":{},"s":{seq},"t":{t_ns},"#, self.publisher);
        if let Some(i) = intended_ns {
            let _ = write!(out, r#""i":{i},"#);
        }
        out.push_str(r#""x":""#);
        let used = out.len() - data_start + 2; // the closing `"}`
        for _ in used..self.payload_bytes {
            out.push('x');
        }
        out.push_str("\"}}");
        out
    }
}

/// Asks `GET /health` and returns its JSON body, if the server answers in time.
pub async fn health(addr: SocketAddr) -> Option<serde_json::Value> {
    let body = tokio::time::timeout(Duration::from_secs(3), async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::with_capacity(1024);
        s.take(64 * 1024).read_to_end(&mut buf).await.ok()?;
        String::from_utf8(buf).ok()
    })
    .await
    .ok()??;
    let json = &body[body.find("\r\n\r\n")? + 4..];
    serde_json::from_str(json).ok()
}

/// Asks `GET /health` and returns its `clients` field, if the server answers in time.
pub async fn health_clients(addr: SocketAddr) -> Option<u64> {
    health(addr).await?.get("clients")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        let t = Target::parse("ws://127.0.0.1:8001/ws", "s").expect("loopback");
        assert_eq!(t.addr, "127.0.0.1:8001".parse().expect("addr"));
        assert_eq!(t.path, "/ws");
        assert!(Target::parse("ws://localhost:9/", "s").is_ok());
        assert!(Target::parse("ws://127.9.9.9:9", "s").is_ok());
        assert!(Target::parse("ws://[::1]:9/ws", "s").is_ok());
        assert!(Target::parse("ws://10.0.0.1:80/ws", "s").is_err());
        assert!(Target::parse("ws://example.com:80/ws", "s").is_err());
        assert!(Target::parse("wss://127.0.0.1:80/ws", "s").is_err());
        assert!(Target::parse("ws://127.0.0.1/ws", "s").is_err());
    }

    #[test]
    fn publish_frames_with_ids_carry_a_unique_key() {
        let f = PublishFrames::new("t", 3, 100).with_ids("run7");
        let a = f.frame(1, 0);
        let Ok(tidings_protocol::ClientMessage::Publish(p)) =
            tidings_protocol::ClientMessage::decode(&a)
        else {
            panic!("{a}")
        };
        assert_eq!(p.id.as_deref(), Some("run7-3-1"));
        let v: serde_json::Value = serde_json::from_str(&a).expect("json");
        assert_eq!(v["data"].to_string().len(), 100);
        assert_ne!(f.frame(2, 0), a);
    }

    #[test]
    fn publish_frames_with_refs_ask_for_an_ack() {
        let f = PublishFrames::new("t", 0, 80).with_refs().with_ids("r");
        let a = f.frame(42, 7);
        let Ok(tidings_protocol::ClientMessage::Publish(p)) =
            tidings_protocol::ClientMessage::decode(&a)
        else {
            panic!("{a}")
        };
        assert_eq!(p.r#ref.as_deref(), Some("42"));
        assert_eq!(p.id.as_deref(), Some("r-0-42"));
        let v: serde_json::Value = serde_json::from_str(&a).expect("json");
        assert_eq!(v["data"].to_string().len(), 80);
    }

    #[test]
    fn publish_frames_have_the_requested_payload_size_and_decode() {
        let f = PublishFrames::new("t", 3, 100);
        for (seq, t) in [(0, 0), (12345, 987_654_321_000)] {
            let frame = f.frame(seq, t);
            let v: serde_json::Value = serde_json::from_str(&frame).expect("valid JSON");
            assert_eq!(v["data"].to_string().len(), 100, "{frame}");
            assert!(matches!(
                tidings_protocol::ClientMessage::decode(&frame),
                Ok(tidings_protocol::ClientMessage::Publish(_))
            ));
            // What a subscriber gets back parses with the bench's own envelope.
            let delivered = format!(
                r#"{{"type":"message","topic":"t","data":{},"from":"u","timestamp":"x"}}"#,
                v["data"]
            );
            let env = Envelope::parse(&delivered).expect("envelope");
            assert_eq!(env.kind, "message");
            assert_eq!(
                env.data,
                Some(BenchData {
                    p: 3,
                    s: seq,
                    t,
                    i: None
                })
            );
        }
        // Paced: the intended send time rides along, and the size is still the one asked for.
        let frame = f.paced_frame(7, 2_000_500, 2_000_000);
        let v: serde_json::Value = serde_json::from_str(&frame).expect("valid JSON");
        assert_eq!(v["data"].to_string().len(), 100, "{frame}");
        let delivered = format!(r#"{{"type":"message","topic":"t","data":{}}}"#, v["data"]);
        let want = BenchData {
            p: 3,
            s: 7,
            t: 2_000_500,
            i: Some(2_000_000),
        };
        assert_eq!(classify(&delivered), Incoming::Message(Some(want)));
        assert_eq!(
            Envelope::parse(&delivered).expect("envelope").data,
            Some(want)
        );
        // A payload too small for the header is as small as it can be.
        let tiny = PublishFrames::new("t", 0, 1).frame(1, 1);
        assert!(serde_json::from_str::<serde_json::Value>(&tiny).is_ok());
    }

    #[test]
    fn fast_path_agrees_with_the_general_parse() {
        let frames = [
            // Tidings-style (extra fields) and template-style frames.
            r#"{"type":"message","topic":"t","data":{"p":2,"s":41,"t":123456789,"x":"xxxx"},"from":"u","timestamp":1,"offset":9}"#,
            r#"{"type":"message","topic":"t","data":{"p":0,"s":0,"t":1,"x":""},"from":"u","timestamp":"2026-01-01T00:00:00"}"#,
            // Paced: with the intended send time.
            r#"{"type":"message","topic":"t","data":{"p":1,"s":5,"t":1200,"i":1000,"x":"xx"},"from":"u"}"#,
            r#"{"type":"message","data":{"p":1,"s":5,"t":1200,"i":1000}}"#,
            r#"{"type":"message","data":{"p":1,"s":5,"t":1200,"i":1e3}}"#,
            // Spaces: the fast path does not apply, the general parse does.
            r#"{"type": "message", "topic": "t", "data": {"p": 1, "s": 7, "t": 9, "x": ""}}"#,
            // Field order other than the bench's own: general parse.
            r#"{"type":"message","data":{"s":7,"p":1,"t":9}}"#,
            // Numbers that are not plain integers must not be half-read by the fast path.
            r#"{"type":"message","data":{"p":1,"s":7,"t":9.5}}"#,
            r#"{"type":"message","data":"not ours"}"#,
            r#"{"type":"heartbeat"}"#,
            r#"{"type":"error","code":"RATE_LIMITED","message":"x"}"#,
            "not json",
        ];
        for f in frames {
            let general = match Envelope::parse(f) {
                Ok(env) if env.kind == "message" => Incoming::Message(env.data),
                Ok(env) if env.kind == "error" => Incoming::Error,
                Ok(_) => Incoming::Other,
                Err(_) => Incoming::Invalid,
            };
            assert_eq!(classify(f), general, "{f}");
        }
        assert_eq!(
            classify(frames[0]),
            Incoming::Message(Some(BenchData {
                p: 2,
                s: 41,
                t: 123456789,
                i: None
            }))
        );
        assert_eq!(
            classify(frames[2]),
            Incoming::Message(Some(BenchData {
                p: 1,
                s: 5,
                t: 1200,
                i: Some(1000)
            }))
        );
        assert_eq!(read_u64(b"99999999999999999999999", &mut 0), None);
    }

    #[test]
    fn other_frames_decode_as_the_protocol_crate_expects() {
        assert!(tidings_protocol::ClientMessage::decode(&subscribe_frame("a\"b")).is_ok());
        assert!(tidings_protocol::ClientMessage::decode(PING_FRAME).is_ok());
        let err = Envelope::parse(r#"{"type":"error","code":"RATE_LIMITED","message":"x"}"#)
            .expect("error frame");
        assert_eq!((err.kind, err.code), ("error", Some("RATE_LIMITED")));
        let hb = Envelope::parse(r#"{"type":"heartbeat"}"#).expect("heartbeat");
        assert_eq!((hb.kind, hb.data), ("heartbeat", None));
    }

    #[test]
    fn tokens_carry_sub_and_user_id() {
        let token = mint_token("secret", "bench-1").expect("token");
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_required_spec_claims(&["exp", "sub"]);
        let key = jsonwebtoken::DecodingKey::from_secret(b"secret").expect("key");
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &v).expect("valid");
        assert_eq!(data.claims["sub"], "bench-1");
        assert_eq!(data.claims["user_id"], "bench-1");
    }

    #[test]
    fn source_addresses_start_at_127_0_0_2() {
        let t = Target::parse("ws://127.0.0.1:1/ws", "s").expect("target");
        assert_eq!(source_ips(&t, 1), vec![None]);
        let ips = source_ips(&t, 3);
        assert_eq!(ips.len(), 3);
        assert_eq!(ips[0], Some("127.0.0.2".parse().expect("ip")));
        assert_eq!(ips[2], Some("127.0.0.4".parse().expect("ip")));
    }
}
