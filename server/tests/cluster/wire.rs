//! Client-side helpers over `common::Client` for the cluster tests: reads that report a closed
//! connection instead of panicking, pipelined publishes, paged `history` and `read`, and a
//! subscriber that checks every offset it is given and resumes with `since`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tidings_protocol::server::{Events, Message, StoredEvent, Subscribed};
use tidings_protocol::{ErrorCode, ServerMessage};
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::common::{Client, Ended, WAIT};

/// What the next read on a connection gave.
#[derive(Debug)]
pub enum Next {
    /// A protocol message (heartbeats are skipped).
    Msg(ServerMessage),
    /// The connection ended.
    Ended(Ended),
    /// Nothing within the time given.
    Silent,
}

/// The next protocol message within `within`, or how the connection ended.
pub async fn next(c: &mut Client, within: Duration) -> Next {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let frame = match tokio::time::timeout_at(deadline, c.ws.next()).await {
            Err(_) => return Next::Silent,
            Ok(frame) => frame,
        };
        match frame {
            Some(Ok(Frame::Text(t))) => {
                let msg = ServerMessage::decode(t.as_str())
                    .unwrap_or_else(|e| panic!("undecodable {t}: {e}"));
                if !matches!(msg, ServerMessage::Heartbeat(_)) {
                    return Next::Msg(msg);
                }
            }
            Some(Ok(Frame::Close(f))) => {
                return Next::Ended(Ended::Close(f.map_or(1005, |f| u16::from(f.code))));
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Next::Ended(Ended::Dropped),
        }
    }
}

/// Connect, retrying refused or failed handshakes until `within` has passed.
pub async fn connect_retry(url: &str, within: Duration) -> Client {
    let started = Instant::now();
    loop {
        let attempt = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await;
        let failure = match attempt {
            Ok(Ok((ws, _))) => {
                let mut client = Client {
                    ws,
                    client_id: String::new(),
                };
                match next(&mut client, WAIT).await {
                    Next::Msg(ServerMessage::Connected(c)) => {
                        client.client_id = c.client_id;
                        return client;
                    }
                    Next::Msg(other) => panic!("first frame was {other:?}"),
                    other => format!("no connected frame: {other:?}"),
                }
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "handshake timed out".to_owned(),
        };
        assert!(
            started.elapsed() < within,
            "could not connect to {url} within {within:?}: {failure}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// JSON-quote a string.
pub fn q(s: &str) -> String {
    serde_json::to_string(s).expect("string to JSON")
}

/// A payload that is valid JSON but not in serde's compact form (a space, non-ASCII), so that
/// "carried byte for byte" is actually checked.
pub fn payload(tag: &str, i: usize) -> String {
    format!(r#"{{"tag":{}, "i":{i},"s":"ü ✓"}}"#, q(tag))
}

/// A `publish` frame with a `ref` (and an idempotency `id` if given).
pub fn publish_frame(topic: &str, data: &str, r#ref: &str, id: Option<&str>) -> String {
    let id = id.map_or(String::new(), |id| format!(r#","id":{}"#, q(id)));
    format!(
        r#"{{"type":"publish","topic":{},"data":{data},"ref":{}{id}}}"#,
        q(topic),
        q(r#ref)
    )
}

/// What a `published` ack said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub offset: u64,
    pub epoch: String,
}

fn ack_of(msg: &ServerMessage) -> Option<(String, Ack)> {
    match msg {
        ServerMessage::Published(p) => Some((
            p.r#ref.clone().expect("published carries the ref"),
            Ack {
                offset: p
                    .offset
                    .expect("a durable publish is acked with its offset"),
                epoch: p
                    .epoch
                    .clone()
                    .expect("a durable publish is acked with its epoch"),
            },
        )),
        _ => None,
    }
}

/// Publish one message with a `ref` and return its ack; any other reply fails the test.
pub async fn publish(c: &mut Client, topic: &str, data: &str, r#ref: &str) -> Ack {
    publish_id(c, topic, data, r#ref, None).await
}

/// [`publish`] with an idempotency `id`.
pub async fn publish_id(
    c: &mut Client,
    topic: &str,
    data: &str,
    r#ref: &str,
    id: Option<&str>,
) -> Ack {
    c.send(&publish_frame(topic, data, r#ref, id)).await;
    loop {
        match next(c, WAIT).await {
            Next::Msg(msg) => match ack_of(&msg) {
                Some((got, ack)) if got == r#ref => return ack,
                _ if matches!(msg, ServerMessage::Message(_)) => continue,
                _ => panic!("publish {ref} to {topic} got {msg:?}"),
            },
            other => panic!("publish {ref} to {topic}: no ack, {other:?}"),
        }
    }
}

/// Send every frame (each a publish with a distinct `ref`) without waiting, while reading
/// the acks; returns them by ref. Any error reply fails the test.
pub async fn publish_pipelined(
    client: Client,
    frames: Vec<(String, String)>,
) -> BTreeMap<String, Ack> {
    let total = frames.len();
    let (mut sink, mut stream) = client.ws.split();
    let sender = tokio::spawn(async move {
        for (_, frame) in frames {
            sink.send(Frame::Text(frame.into()))
                .await
                .expect("send publish");
        }
        sink
    });
    let mut acks = BTreeMap::new();
    while acks.len() < total {
        let frame = tokio::time::timeout(WAIT, stream.next())
            .await
            .unwrap_or_else(|_| panic!("acks stalled at {} of {total}", acks.len()))
            .expect("connection open while acks are due")
            .expect("frame");
        let Frame::Text(text) = frame else { continue };
        let msg = ServerMessage::decode(text.as_str()).expect("decodable frame");
        match ack_of(&msg) {
            Some((r, ack)) => {
                assert!(acks.insert(r.clone(), ack).is_none(), "ref {r} acked twice");
            }
            None if matches!(msg, ServerMessage::Heartbeat(_)) => {}
            None => panic!("pipelined publish got {msg:?}"),
        }
    }
    let _sink = tokio::time::timeout(WAIT, sender)
        .await
        .expect("sender done")
        .expect("sender task");
    acks
}

/// A topic's whole history, paged with `limit` and the `more` flag.
pub struct History {
    pub epoch: String,
    pub latest: u64,
    pub messages: Vec<Message>,
    /// How many pages it took.
    pub pages: usize,
}

impl History {
    /// The offsets, in the order given.
    pub fn offsets(&self) -> Vec<u64> {
        self.messages
            .iter()
            .map(|m| m.offset.expect("stored messages have offsets"))
            .collect()
    }

    /// Each message as its JSON encoding (for comparing what two nodes serve).
    pub fn encoded(&self) -> Vec<String> {
        self.messages
            .iter()
            .map(|m| serde_json::to_string(m).expect("encode message"))
            .collect()
    }
}

/// Page through `topic`'s history from offset 0, `limit` messages a page.
pub async fn history_all(c: &mut Client, topic: &str, limit: u32) -> History {
    let mut history = History {
        epoch: String::new(),
        latest: 0,
        messages: Vec::new(),
        pages: 0,
    };
    let mut since = 0;
    loop {
        history.pages += 1;
        assert!(history.pages < 100_000, "history of {topic} never ended");
        let r#ref = format!("h{}", history.pages);
        let frame = json!({"type": "history", "topic": topic, "since": since, "limit": limit, "ref": r#ref});
        let reply = c.request(&frame.to_string()).await;
        let ServerMessage::History(page) = reply else {
            panic!("history of {topic} since {since} got {reply:?}")
        };
        assert_eq!(page.r#ref.as_deref(), Some(r#ref.as_str()));
        if history.pages > 1 {
            assert_eq!(page.epoch, history.epoch, "the epoch changed while paging");
        }
        history.epoch = page.epoch;
        history.latest = page.latest;
        if let Some(last) = page.messages.last() {
            since = last.offset.expect("offset");
        }
        let empty = page.messages.is_empty();
        history.messages.extend(page.messages);
        if !page.more {
            return history;
        }
        assert!(!empty, "an empty page said more: true");
    }
}

/// A stream's whole event list, paged with `from_version` and the `more` flag.
pub async fn read_all(c: &mut Client, stream: &str) -> (u64, Vec<StoredEvent>) {
    let mut events = Vec::new();
    let mut from = 0;
    let mut version;
    for page in 0.. {
        assert!(page < 100_000, "read of {stream} never ended");
        let frame = json!({"type": "read", "stream": stream, "from_version": from, "ref": "read"});
        let reply = c.request(&frame.to_string()).await;
        let ServerMessage::Events(Events {
            version: v,
            events: got,
            more,
            snapshot,
            ..
        }) = reply
        else {
            panic!("read of {stream} from {from} got {reply:?}")
        };
        assert!(snapshot.is_none(), "nobody wrote a snapshot");
        version = v;
        if let Some(last) = got.last() {
            from = last.version;
        }
        events.extend(got);
        if !more {
            return (version, events);
        }
    }
    unreachable!()
}

/// Send a `ping` and read until its `pong`: any message before it is a message too many.
pub async fn expect_quiet(c: &mut Client, what: &str) {
    c.send(r#"{"type":"ping","ref":"quiet"}"#).await;
    match next(c, WAIT).await {
        Next::Msg(ServerMessage::Pong(_)) => {}
        Next::Msg(ServerMessage::Message(m)) => {
            panic!("{what}: an extra message after the expected ones: {m:?}")
        }
        other => panic!("{what}: waiting for pong, got {other:?}"),
    }
}

/// The error code of a reply, if it is an error.
pub fn code(msg: &ServerMessage) -> Option<ErrorCode> {
    crate::common::error_code(msg)
}

/// A subscriber to one durable topic that checks that offsets arrive in order, each once, and
/// can resume on another connection with `since` = the last message it got.
pub struct Follower {
    pub topic: String,
    pub client: Client,
    /// Every message received, across connections, in arrival order.
    pub received: Vec<Message>,
    /// `subscribed.recovered[topic]` of every resume.
    pub resumes: Vec<Option<bool>>,
    /// Set when the connection ended; a resume clears it.
    pub ended: Option<Ended>,
}

impl Follower {
    /// Connect to `url` and subscribe to `topic` (without `since`), waiting for `subscribed`.
    pub async fn subscribe(url: &str, topic: &str) -> Follower {
        let mut client = Client::connect(url).await;
        client.subscribe(&[topic]).await;
        Follower {
            topic: topic.to_owned(),
            client,
            received: Vec::new(),
            resumes: Vec::new(),
            ended: None,
        }
    }

    /// The last offset and epoch received.
    pub fn last(&self) -> Option<(u64, String)> {
        self.received.last().map(|m| {
            (
                m.offset.expect("durable messages carry an offset"),
                m.epoch.clone().expect("durable messages carry an epoch"),
            )
        })
    }

    pub fn offsets(&self) -> Vec<u64> {
        self.received
            .iter()
            .map(|m| m.offset.expect("offset"))
            .collect()
    }

    /// Take one message: it must be the one after the last (no duplicate, no gap, same epoch).
    fn accept(&mut self, m: Message) {
        assert_eq!(m.topic, self.topic, "a message of another topic");
        let offset = m.offset.expect("durable messages carry an offset");
        if let Some((last, epoch)) = self.last() {
            assert!(
                offset > last,
                "duplicate: offset {offset} arrived after {last} on {}",
                self.topic
            );
            assert_eq!(offset, last + 1, "gap: offset {offset} after {last}");
            assert_eq!(
                m.epoch.as_deref(),
                Some(epoch.as_str()),
                "the epoch changed"
            );
        }
        self.received.push(m);
    }

    /// Read until the message at `upto` has arrived, within `within`. If the connection ends,
    /// resume on `resume_url` (with `since`), or fail when there is none.
    pub async fn follow_until(&mut self, upto: u64, within: Duration, resume_url: Option<&str>) {
        let deadline = Instant::now() + within;
        while self.last().map_or(0, |(o, _)| o) < upto {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{}: only up to {:?} of {upto} within {within:?}",
                self.topic,
                self.last()
            );
            match next(&mut self.client, left.min(WAIT)).await {
                Next::Msg(ServerMessage::Message(m)) => self.accept(m),
                Next::Msg(other) => panic!("{}: unexpected {other:?}", self.topic),
                Next::Silent => {}
                Next::Ended(how) => match resume_url {
                    Some(url) => {
                        eprintln!("{}: connection ended ({how:?}), resuming", self.topic);
                        let recovered = self.resume(url, left).await;
                        assert_eq!(
                            recovered,
                            Some(true),
                            "resume of {} with since = {:?}",
                            self.topic,
                            self.last()
                        );
                    }
                    None => panic!(
                        "{}: connection ended ({how:?}) at {:?} of {upto}",
                        self.topic,
                        self.last()
                    ),
                },
            }
        }
    }

    /// Read whatever was sent until the connection ends (the node died).
    pub async fn drain_until_ended(&mut self) {
        loop {
            match next(&mut self.client, WAIT).await {
                Next::Msg(ServerMessage::Message(m)) => self.accept(m),
                Next::Msg(_) => {}
                Next::Ended(how) => {
                    self.ended = Some(how);
                    return;
                }
                Next::Silent => panic!("{}: the dead node's connection stayed open", self.topic),
            }
        }
    }

    /// Connect to `url` and subscribe with `since` = the last message received; returns
    /// `subscribed.recovered[topic]`. Messages replayed before `subscribed` are taken too.
    pub async fn resume(&mut self, url: &str, within: Duration) -> Option<bool> {
        self.client = connect_retry(url, within).await;
        self.ended = None;
        let subscribed = self.subscribe_since().await;
        let recovered = subscribed
            .recovered
            .as_ref()
            .and_then(|r| r.get(&self.topic).copied());
        self.resumes.push(recovered);
        recovered
    }

    async fn subscribe_since(&mut self) -> Subscribed {
        let (offset, epoch) = self.last().expect("something received before resuming");
        let frame = json!({
            "type": "subscribe",
            "topics": [self.topic],
            "since": {self.topic.clone(): {"offset": offset, "epoch": epoch}},
            "ref": "resume",
        });
        self.client.send(&frame.to_string()).await;
        loop {
            match next(&mut self.client, WAIT).await {
                Next::Msg(ServerMessage::Subscribed(s)) => return s,
                Next::Msg(ServerMessage::Message(m)) => self.accept(m),
                other => panic!("{}: resubscribe got {other:?}", self.topic),
            }
        }
    }
}
