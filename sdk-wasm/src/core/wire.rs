//! The protocol's messages as JSON text and back, without serde: server frames read into
//! [`ServerMessage`], client messages written as frames, and the server's types written as
//! the JSON the JS API hands out.
//!
//! The types are [`tidings_protocol`]'s; only the reading and writing is the SDK's own, with
//! [`tidings_protocol::json`], to keep serde_json out of the browser bundle (see that module). The
//! host tests hold it to the protocol crate's serde forms: every golden fixture reads to what
//! `ServerMessage::decode` reads and every client message writes the bytes `serde_json`
//! writes.
//!
//! Reading follows the protocol crate's rules: a frame is one JSON object; its `"type"` picks
//! the message; fields the SDK does not know are skipped (a newer server's); a field given
//! twice, a missing required field, a mistyped one and a position above
//! [`MAX_POSITION`](tidings_protocol::MAX_POSITION) make the frame unreadable.

use tidings_protocol::server::{
    Appended, Authenticated, Connected, Error, Events, Heartbeat, HistoryPage, Member, MemberEvent,
    Message, Pong, PresenceReply, PresenceStats, Published, Refusal, Snapshot, StoredEvent,
    Subscribed, Unsubscribed,
};
use tidings_protocol::{ClientMessage, Json, Position, ServerMessage, TopicMap};

use tidings_protocol::json::{self, Fields, Invalid, ObjectWriter, Read, Reader, write_str};

/// Read one server frame.
///
/// # Errors
/// [`Invalid`] when the text is not a JSON object, its `type` is missing or unknown, or a
/// field of that type is missing, repeated or of the wrong shape.
pub fn decode(text: &str) -> Read<ServerMessage> {
    let f = Fields::of(text)?;
    // As the protocol's envelope: a repeated `ref` makes any frame unreadable.
    f.get("ref")?;
    Ok(match f.string("type")?.as_str() {
        "connected" => ServerMessage::Connected(Connected {
            client_id: f.string("client_id")?,
            timestamp: f.string("timestamp")?,
            protocol: f
                .opt_u64("protocol")?
                .map(u32::try_from)
                .transpose()
                .map_err(|_| Invalid)?,
            heartbeat_ms: f.opt_u64("heartbeat_ms")?,
            user: f.opt_string("user")?,
            max_message_bytes: f.opt_u64("max_message_bytes")?,
        }),
        "subscribed" => ServerMessage::Subscribed(Subscribed {
            topics: f.list("topics", json::string)?,
            recovered: f.opt_map("recovered", |v| json::read_all(v, Reader::bool))?,
            positions: f.opt_map("positions", position)?,
            refused: f.opt_map("refused", |v| {
                let f = Fields::of(v)?;
                Ok(Refusal {
                    code: f.code("code")?,
                    message: f.string("message")?,
                })
            })?,
            r#ref: f.opt_string("ref")?,
        }),
        "unsubscribed" => ServerMessage::Unsubscribed(Unsubscribed {
            topics: f.list("topics", json::string)?,
            r#ref: f.opt_string("ref")?,
        }),
        "message" => ServerMessage::Message(message(&f)?),
        "pong" => ServerMessage::Pong(Pong {
            r#ref: f.opt_string("ref")?,
        }),
        "heartbeat" => ServerMessage::Heartbeat(Heartbeat {
            timestamp: f.opt_string("timestamp")?,
        }),
        "error" => ServerMessage::Error(Error {
            code: f.code("code")?,
            message: f.string("message")?,
            r#ref: f.opt_string("ref")?,
            current_version: f.opt_u64("current_version")?,
        }),
        "published" => ServerMessage::Published(Published {
            r#ref: f.opt_string("ref")?,
            topic: f.string("topic")?,
            offset: f.opt_u64("offset")?,
            epoch: f.opt_string("epoch")?,
        }),
        "authenticated" => ServerMessage::Authenticated(Authenticated {
            r#ref: f.opt_string("ref")?,
            user: f.string("user")?,
            expires_at: f.opt_u64("expires_at")?,
        }),
        "history" => ServerMessage::History(HistoryPage {
            r#ref: f.opt_string("ref")?,
            topic: f.string("topic")?,
            epoch: f.string("epoch")?,
            messages: f.list("messages", |v| message(&Fields::of(v)?))?,
            latest: f.u64("latest")?,
            more: f.flag("more")?,
        }),
        "appended" => ServerMessage::Appended(Appended {
            r#ref: f.opt_string("ref")?,
            stream: f.string("stream")?,
            version: f.u64("version")?,
        }),
        "events" => ServerMessage::Events(Events {
            r#ref: f.opt_string("ref")?,
            stream: f.string("stream")?,
            version: f.u64("version")?,
            snapshot: match f.get("snapshot")? {
                Some(v) if v != "null" => {
                    let s = Fields::of(v)?;
                    Some(Snapshot {
                        version: s.u64("version")?,
                        state: s.raw("state")?,
                    })
                }
                _ => None,
            },
            events: f.list("events", |v| {
                let e = Fields::of(v)?;
                Ok(StoredEvent {
                    version: e.u64("version")?,
                    r#type: e.string("type")?,
                    data: e.raw("data")?,
                    timestamp: e.string("timestamp")?,
                })
            })?,
            more: f.flag("more")?,
        }),
        "presence" => ServerMessage::Presence(PresenceReply {
            r#ref: f.opt_string("ref")?,
            topic: f.string("topic")?,
            members: f.list("members", |v| {
                let m = Fields::of(v)?;
                Ok(Member {
                    client_id: m.string("client_id")?,
                    user: m.string("user")?,
                    info: m.opt_raw("info")?,
                })
            })?,
            more: f.flag("more")?,
        }),
        "presence_stats" => ServerMessage::PresenceStats(PresenceStats {
            r#ref: f.opt_string("ref")?,
            topic: f.string("topic")?,
            clients: f.u64("clients")?,
            users: f.u64("users")?,
        }),
        "join" => ServerMessage::Join(member_event(&f)?),
        "leave" => ServerMessage::Leave(member_event(&f)?),
        _ => return Err(Invalid),
    })
}

/// A `message` object (a frame, or an element of a history page).
fn message(f: &Fields<'_>) -> Read<Message> {
    Ok(Message {
        topic: f.string("topic")?,
        data: f.raw("data")?,
        from: f.string("from")?,
        timestamp: f.string("timestamp")?,
        offset: f.opt_u64("offset")?,
        epoch: f.opt_string("epoch")?,
    })
}

fn member_event(f: &Fields<'_>) -> Read<MemberEvent> {
    Ok(MemberEvent {
        topic: f.string("topic")?,
        client_id: f.string("client_id")?,
        user: f.string("user")?,
        info: f.opt_raw("info")?,
    })
}

/// A `{offset, epoch?}` position (`epoch` may be `null`), its offset at most
/// [`MAX_POSITION`](tidings_protocol::MAX_POSITION): as frames, saved positions and the JS
/// API's `since` carry it.
///
/// # Errors
/// [`Invalid`] for another shape or a larger offset.
pub fn position(text: &str) -> Read<Position> {
    let f = Fields::of(text)?;
    let offset = f.u64("offset")?;
    if offset > tidings_protocol::MAX_POSITION {
        return Err(Invalid);
    }
    Ok(Position {
        offset,
        epoch: f.opt_string("epoch")?,
    })
}

/// Checked JSON text as the protocol's raw value.
///
/// # Errors
/// [`Invalid`] when `text` is not one JSON value.
pub fn raw_json(text: &str) -> Read<Json> {
    json::raw(text)
}

/// A client message as its frame: the bytes `serde_json` writes for it (same field order,
/// absent options left out).
pub fn encode(message: &ClientMessage) -> String {
    let mut out = String::new();
    let mut o = ObjectWriter::new(&mut out);
    o.str("type", message.kind());
    match message {
        ClientMessage::Subscribe(m) => {
            strings_field(&mut o, "topics", &m.topics);
            if let Some(since) = &m.since {
                let out = o.key("since");
                out.push('{');
                for (i, (topic, p)) in since.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_str(out, topic);
                    out.push(':');
                    let mut po = ObjectWriter::new(out);
                    po.u64("offset", p.offset);
                    po.opt_str("epoch", p.epoch.as_deref());
                    po.end();
                }
                out.push('}');
            }
            o.opt_str("ref", m.r#ref.as_deref());
        }
        ClientMessage::Unsubscribe(m) => {
            strings_field(&mut o, "topics", &m.topics);
            o.opt_str("ref", m.r#ref.as_deref());
        }
        ClientMessage::Publish(m) => {
            o.str("topic", &m.topic);
            o.raw("data", m.data.get());
            o.opt_str("id", m.id.as_deref());
            o.opt_str("ref", m.r#ref.as_deref());
        }
        ClientMessage::Ping(m) => o.opt_str("ref", m.r#ref.as_deref()),
        ClientMessage::Auth(m) => {
            o.str("token", &m.token);
            o.opt_str("ref", m.r#ref.as_deref());
        }
        ClientMessage::History(m) => {
            o.str("topic", &m.topic);
            o.opt_u64("since", m.since);
            o.opt_u64("limit", m.limit.map(u64::from));
            o.opt_str("ref", m.r#ref.as_deref());
        }
        ClientMessage::Append(m) => {
            o.str("stream", &m.stream);
            o.opt_u64("expected_version", m.expected_version);
            let out = o.key("events");
            out.push('[');
            for (i, e) in m.events.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let mut eo = ObjectWriter::new(out);
                eo.str("type", &e.r#type);
                eo.raw("data", e.data.get());
                eo.end();
            }
            out.push(']');
            o.opt_str("ref", m.r#ref.as_deref());
        }
        ClientMessage::Read(m) => {
            o.str("stream", &m.stream);
            o.opt_u64("from_version", m.from_version);
            o.opt_str("ref", m.r#ref.as_deref());
        }
        ClientMessage::Presence(m) | ClientMessage::PresenceStats(m) => {
            o.str("topic", &m.topic);
            o.opt_str("ref", m.r#ref.as_deref());
        }
    }
    o.end();
    out
}

fn strings_field(o: &mut ObjectWriter<'_>, key: &str, items: &[String]) {
    let out = o.key(key);
    out.push('[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(out, s);
    }
    out.push(']');
}

/// Appends the JSON the JS API hands out for the server's types: the protocol's serde form
/// (field names as on the wire, absent options left out), written without serde.
pub trait ToJson {
    /// Append this value's JSON to `out`.
    fn write_json(&self, out: &mut String);

    /// This value's JSON.
    fn to_json(&self) -> String {
        let mut out = String::new();
        self.write_json(&mut out);
        out
    }
}

impl ToJson for Message {
    fn write_json(&self, out: &mut String) {
        let mut o = ObjectWriter::new(out);
        o.str("topic", &self.topic);
        o.raw("data", self.data.get());
        o.str("from", &self.from);
        o.str("timestamp", &self.timestamp);
        o.opt_u64("offset", self.offset);
        o.opt_str("epoch", self.epoch.as_deref());
        o.end();
    }
}

impl ToJson for Member {
    fn write_json(&self, out: &mut String) {
        let mut o = ObjectWriter::new(out);
        o.str("client_id", &self.client_id);
        o.str("user", &self.user);
        o.raw("info", self.info.get());
        o.end();
    }
}

impl ToJson for MemberEvent {
    fn write_json(&self, out: &mut String) {
        let mut o = ObjectWriter::new(out);
        o.str("topic", &self.topic);
        o.str("client_id", &self.client_id);
        o.str("user", &self.user);
        o.raw("info", self.info.get());
        o.end();
    }
}

impl ToJson for StoredEvent {
    fn write_json(&self, out: &mut String) {
        let mut o = ObjectWriter::new(out);
        o.u64("version", self.version);
        o.str("type", &self.r#type);
        o.raw("data", self.data.get());
        o.str("timestamp", &self.timestamp);
        o.end();
    }
}

impl ToJson for Events {
    fn write_json(&self, out: &mut String) {
        let mut o = ObjectWriter::new(out);
        o.opt_str("ref", self.r#ref.as_deref());
        o.str("stream", &self.stream);
        o.u64("version", self.version);
        if let Some(s) = &self.snapshot {
            let out = o.key("snapshot");
            let mut so = ObjectWriter::new(out);
            so.u64("version", s.version);
            so.raw("state", s.state.get());
            so.end();
        }
        self.events.write_json(o.key("events"));
        if self.more {
            o.raw("more", "true");
        }
        o.end();
    }
}

impl ToJson for Json {
    fn write_json(&self, out: &mut String) {
        out.push_str(self.get());
    }
}

impl<T: ToJson> ToJson for [T] {
    fn write_json(&self, out: &mut String) {
        out.push('[');
        for (i, item) in self.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            item.write_json(out);
        }
        out.push(']');
    }
}

impl<T: ToJson> ToJson for Vec<T> {
    fn write_json(&self, out: &mut String) {
        self.as_slice().write_json(out);
    }
}

/// Saved positions (`{topic: {offset, epoch?}}`), as the browser keeps them across reloads.
pub fn positions_to_json(positions: &TopicMap<Position>) -> String {
    let mut out = String::new();
    let mut o = ObjectWriter::new(&mut out);
    for (topic, p) in positions {
        let out = o.key(topic);
        let mut po = ObjectWriter::new(out);
        po.u64("offset", p.offset);
        po.opt_str("epoch", p.epoch.as_deref());
        po.end();
    }
    o.end();
    out
}

/// Read positions saved by [`positions_to_json`].
///
/// # Errors
/// [`Invalid`] when `text` is not such an object.
pub fn positions_from_json(text: &str) -> Read<TopicMap<Position>> {
    json::map(text, position)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn fixtures(dir: &str) -> Vec<(String, String)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared-protocol/fixtures")
            .join(dir);
        let mut out: Vec<_> = std::fs::read_dir(&root)
            .expect("fixtures")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .map(|p| {
                let text = std::fs::read_to_string(&p).expect("read");
                (p.display().to_string(), text)
            })
            .collect();
        out.sort();
        assert!(!out.is_empty());
        out
    }

    fn same(ours: &ServerMessage, theirs: &ServerMessage) -> bool {
        serde_json::to_string(ours).expect("json") == serde_json::to_string(theirs).expect("json")
    }

    #[test]
    fn every_server_fixture_reads_as_serde_reads_it() {
        let mut kinds = std::collections::BTreeSet::new();
        for dir in ["server", "template"] {
            for (path, text) in fixtures(dir) {
                let theirs = ServerMessage::decode(&text);
                let ours = decode(&text);
                match (&ours, &theirs) {
                    (Ok(a), Ok(b)) => {
                        assert!(same(a, b), "{path}: {a:?} != {b:?}");
                        kinds.insert(a.kind());
                    }
                    (Err(_), Err(_)) => {}
                    _ => panic!("{path}: ours {ours:?}, serde {theirs:?}"),
                }
            }
        }
        assert_eq!(kinds.len(), 16, "every server message kind: {kinds:?}");
    }

    #[test]
    fn odd_frames_read_as_serde_reads_them() {
        let frames = [
            // Unknown fields are skipped, nulls are absent options, order does not matter.
            r#"{"topic":"t","extra":{"a":[1,2]},"type":"message","data":{"x":1},"from":"u","timestamp":"now","offset":null}"#,
            r#"{"type":"published","topic":"t","offset":3,"epoch":"e","ref":"r1"}"#,
            r#"{"type":"error","code":"SOMETHING_NEW","message":"m"}"#,
            r#"{"type":"subscribed","topics":["a"],"positions":{"a":{"offset":9007199254740991}},"recovered":{"a":true},"refused":{"b":{"code":"FORBIDDEN","message":"no"}}}"#,
            r#"{"type":"join","topic":"t","client_id":"c","user":"u"}"#,
            r#"{"type":"events","stream":"s","version":2,"snapshot":{"version":1,"state":{}},"events":[{"version":2,"type":"x","data":null,"timestamp":"t"}],"more":true}"#,
            r#"{"type":"history","topic":"t","epoch":"e","messages":[],"latest":0}"#,
            r#" {"type":"pong"} "#,
            r#"{"type":"connected","client_id":"c","timestamp":"t","protocol":1,"heartbeat_ms":30000,"user":"u","max_message_bytes":65536}"#,
            r#"{"type":"presence_stats","topic":"t","clients":2,"users":1}"#,
            // Unreadable: each one is refused by both.
            r#"{"type":"subscribed","topics":["a"],"positions":{"a":{"offset":9007199254740992}}}"#,
            r#"{"type":"message","topic":"t","data":1,"from":"u"}"#,
            r#"{"type":"message","topic":"t","topic":"u","data":1,"from":"u","timestamp":"t"}"#,
            r#"{"type":"appended","stream":"s","version":-1}"#,
            r#"{"type":"appended","stream":"s","version":1.5}"#,
            r#"{"type":"connected","client_id":"c","timestamp":"t","protocol":4294967296}"#,
            r#"{"type":"nope"}"#,
            r#"{"type":7}"#,
            r#"{"type":"pong","type":"pong"}"#,
            r#"{"type":"heartbeat","ref":"a","ref":"b"}"#,
            r#"{"type":"presence","topic":"t","members":[{"client_id":"c","user":"u","user":"v"}]}"#,
            r#"{"type":"subscribed","topics":[],"recovered":{"a":true,"a":false}}"#,
            r#"{"type":"pong"} {}"#,
            r#"["pong"]"#,
            r#"{"type":"pong""#,
            "",
        ];
        // A payload nested deeper than serde_json's recursion limit: the server stores it
        // (raw values have no depth limit), so the browser must read it too.
        let deep = format!(
            r#"{{"type":"message","topic":"t","data":{}1{},"from":"u","timestamp":"t","offset":1}}"#,
            "[".repeat(5000),
            "]".repeat(5000)
        );
        assert!(decode(&deep).is_ok(), "a deep payload");
        for text in frames.into_iter().chain([deep.as_str()]) {
            match (decode(text), ServerMessage::decode(text)) {
                (Ok(a), Ok(b)) => assert!(same(&a, &b), "{text}"),
                (Err(_), Err(_)) => {}
                (a, b) => panic!("{text}: ours {a:?}, serde {b:?}"),
            }
        }
    }

    #[test]
    fn every_client_fixture_writes_the_bytes_serde_json_writes() {
        let mut kinds = std::collections::BTreeSet::new();
        for (path, text) in fixtures("client") {
            let message = ClientMessage::decode(&text).expect(&path);
            kinds.insert(message.kind());
            assert_eq!(
                encode(&message),
                serde_json::to_string(&message).expect("json"),
                "{path}"
            );
        }
        assert_eq!(kinds.len(), 10, "every client message kind: {kinds:?}");
    }

    #[test]
    fn server_types_write_the_json_serde_json_writes() {
        for (path, text) in fixtures("server") {
            let theirs = |v: &dyn erased::Ser| v.json();
            match ServerMessage::decode(&text).expect(&path) {
                ServerMessage::Message(m) => assert_eq!(m.to_json(), theirs(&m), "{path}"),
                ServerMessage::History(h) => {
                    assert_eq!(h.messages.to_json(), theirs(&h.messages), "{path}");
                }
                ServerMessage::Events(e) => {
                    assert_eq!(e.to_json(), theirs(&e), "{path}");
                    assert_eq!(e.events.to_json(), theirs(&e.events), "{path}");
                }
                ServerMessage::Presence(p) => {
                    assert_eq!(p.members.to_json(), theirs(&p.members), "{path}");
                }
                ServerMessage::Join(e) | ServerMessage::Leave(e) => {
                    assert_eq!(e.to_json(), theirs(&e), "{path}");
                }
                _ => {}
            }
        }
    }

    /// `serde_json::to_string` behind a trait object, for the comparisons above.
    mod erased {
        pub trait Ser {
            fn json(&self) -> String;
        }
        impl<T: serde::Serialize> Ser for T {
            fn json(&self) -> String {
                serde_json::to_string(self).expect("json")
            }
        }
    }

    #[test]
    fn positions_round_trip() {
        let mut p = TopicMap::new();
        p.insert(
            "a\"b".to_owned(),
            Position {
                offset: 7,
                epoch: Some("e1".into()),
            },
        );
        p.insert(
            "c".to_owned(),
            Position {
                offset: 0,
                epoch: None,
            },
        );
        let text = positions_to_json(&p);
        assert_eq!(text, serde_json::to_string(&p).expect("json"));
        assert_eq!(positions_from_json(&text), Ok(p));
        assert_eq!(positions_from_json("[1]"), Err(Invalid));
    }
}
