//! The protocol's messages as JSON text and back, without serde: server frames read into
//! [`ServerMessage`], client messages written as frames, and the server's types written as
//! the JSON the JS API hands out.
//!
//! The types are [`tidings_protocol`]'s; only the reading and writing is the SDK's own, with
//! [`super::json`], to keep serde_json out of the browser bundle (see that module). The
//! host tests hold it to the protocol crate's serde forms: every golden fixture reads to what
//! `ServerMessage::decode` reads and every client message writes the bytes `serde_json`
//! writes.
//!
//! Reading follows the protocol crate's rules: a frame is one JSON object; its `"type"` picks
//! the message; fields the SDK does not know are skipped (a newer server's); a field given
//! twice, a missing required field, a mistyped one and a position above
//! [`MAX_POSITION`](tidings_protocol::MAX_POSITION) make the frame unreadable.

use std::collections::BTreeMap;

use tidings_protocol::server::{
    Appended, Authenticated, Connected, Error, Events, Heartbeat, HistoryPage, Member, MemberEvent,
    Message, Pong, PresenceReply, PresenceStats, Published, Refusal, Snapshot, StoredEvent,
    Subscribed, Unsubscribed,
};
use tidings_protocol::{ClientMessage, ErrorCode, Json, Position, ServerMessage};

use tidings_protocol::json::{Invalid, ObjectWriter, Read, Reader, once, read_all, write_str};

/// Read one server frame.
///
/// # Errors
/// [`Invalid`] when the text is not a JSON object, its `type` is missing or unknown, or a
/// field of that type is missing, repeated or of the wrong shape.
pub fn decode(text: &str) -> Read<ServerMessage> {
    let mut kind = None;
    read_all(text, |r| {
        r.object(|r, key| {
            if key == "type" {
                once(&mut kind, r.string()?)
            } else {
                r.value().map(drop)
            }
        })
    })?;
    let kind = kind.ok_or(Invalid)?;
    let mut r = Reader::new(text);
    let message = match kind.as_ref() {
        "connected" => ServerMessage::Connected(connected(&mut r)?),
        "subscribed" => ServerMessage::Subscribed(subscribed(&mut r)?),
        "unsubscribed" => ServerMessage::Unsubscribed(unsubscribed(&mut r)?),
        "message" => ServerMessage::Message(message(&mut r)?),
        "pong" => ServerMessage::Pong(Pong {
            r#ref: ref_only(&mut r)?,
        }),
        "heartbeat" => ServerMessage::Heartbeat(heartbeat(&mut r)?),
        "error" => ServerMessage::Error(error(&mut r)?),
        "published" => ServerMessage::Published(published(&mut r)?),
        "authenticated" => ServerMessage::Authenticated(authenticated(&mut r)?),
        "history" => ServerMessage::History(history(&mut r)?),
        "appended" => ServerMessage::Appended(appended(&mut r)?),
        "events" => ServerMessage::Events(events(&mut r)?),
        "presence" => ServerMessage::Presence(presence(&mut r)?),
        "presence_stats" => ServerMessage::PresenceStats(presence_stats(&mut r)?),
        "join" => ServerMessage::Join(member_event(&mut r)?),
        "leave" => ServerMessage::Leave(member_event(&mut r)?),
        _ => return Err(Invalid),
    };
    r.end()?;
    Ok(message)
}

/// A value that may be `null`, read as absent (as serde reads `Option`).
fn opt<'a, T>(
    r: &mut Reader<'a>,
    read: impl FnOnce(&mut Reader<'a>) -> Read<T>,
) -> Read<Option<T>> {
    if r.null() {
        Ok(None)
    } else {
        read(r).map(Some)
    }
}

/// An optional field: `null` leaves it absent, a second occurrence is refused.
fn opt_field<'a, T>(
    slot: &mut Option<Option<T>>,
    r: &mut Reader<'a>,
    read: impl FnOnce(&mut Reader<'a>) -> Read<T>,
) -> Read<()> {
    let value = opt(r, read)?;
    once(slot, value)
}

fn string(r: &mut Reader<'_>) -> Read<String> {
    r.string().map(|s| s.into_owned())
}

fn raw(r: &mut Reader<'_>) -> Read<Json> {
    raw_json(r.value()?)
}

/// Checked JSON text as the protocol's raw value.
///
/// # Errors
/// [`Invalid`] when `text` is not one JSON value.
pub fn raw_json(text: &str) -> Read<Json> {
    Json::parse(text).map_err(|_| Invalid)
}

fn position_value(r: &mut Reader<'_>) -> Read<u64> {
    let n = r.u64()?;
    if n > tidings_protocol::MAX_POSITION {
        Err(Invalid)
    } else {
        Ok(n)
    }
}

fn strings(r: &mut Reader<'_>) -> Read<Vec<String>> {
    let mut out = Vec::new();
    r.array(|r| {
        out.push(string(r)?);
        Ok(())
    })?;
    Ok(out)
}

fn map<'a, T>(
    r: &mut Reader<'a>,
    mut read: impl FnMut(&mut Reader<'a>) -> Read<T>,
) -> Read<BTreeMap<String, T>> {
    let mut out = BTreeMap::new();
    r.object(|r, key| {
        let value = read(r)?;
        if out.insert(key.to_owned(), value).is_some() {
            return Err(Invalid);
        }
        Ok(())
    })?;
    Ok(out)
}

fn list<'a, T>(
    r: &mut Reader<'a>,
    mut read: impl FnMut(&mut Reader<'a>) -> Read<T>,
) -> Read<Vec<T>> {
    let mut out = Vec::new();
    r.array(|r| {
        out.push(read(r)?);
        Ok(())
    })?;
    Ok(out)
}

fn code(r: &mut Reader<'_>) -> Read<ErrorCode> {
    let name = r.string()?;
    Ok(ErrorCode::ALL
        .into_iter()
        .find(|c| c.as_str() == name)
        .unwrap_or(ErrorCode::Unknown))
}

fn required<T>(slot: Option<T>) -> Read<T> {
    slot.ok_or(Invalid)
}

fn position(r: &mut Reader<'_>) -> Read<Position> {
    let (mut offset, mut epoch) = (None, None);
    r.object(|r, key| match key {
        "offset" => once(&mut offset, position_value(r)?),
        "epoch" => opt_field(&mut epoch, r, string),
        _ => r.value().map(drop),
    })?;
    Ok(Position {
        offset: required(offset)?,
        epoch: epoch.flatten(),
    })
}

fn connected(r: &mut Reader<'_>) -> Read<Connected> {
    let (mut client_id, mut timestamp) = (None, None);
    let (mut protocol, mut heartbeat_ms, mut user, mut max) = (None, None, None, None);
    r.object(|r, key| match key {
        "client_id" => once(&mut client_id, string(r)?),
        "timestamp" => once(&mut timestamp, string(r)?),
        "protocol" => opt_field(&mut protocol, r, |r| {
            u32::try_from(r.u64()?).map_err(|_| Invalid)
        }),
        "heartbeat_ms" => opt_field(&mut heartbeat_ms, r, Reader::u64),
        "user" => opt_field(&mut user, r, string),
        "max_message_bytes" => opt_field(&mut max, r, Reader::u64),
        _ => r.value().map(drop),
    })?;
    Ok(Connected {
        client_id: required(client_id)?,
        timestamp: required(timestamp)?,
        protocol: protocol.flatten(),
        heartbeat_ms: heartbeat_ms.flatten(),
        user: user.flatten(),
        max_message_bytes: max.flatten(),
    })
}

fn subscribed(r: &mut Reader<'_>) -> Read<Subscribed> {
    let (mut topics, mut recovered, mut positions, mut refused, mut r#ref) =
        (None, None, None, None, None);
    r.object(|r, key| match key {
        "topics" => once(&mut topics, strings(r)?),
        "recovered" => opt_field(&mut recovered, r, |r| map(r, Reader::bool)),
        "positions" => opt_field(&mut positions, r, |r| map(r, position)),
        "refused" => opt_field(&mut refused, r, |r| map(r, refusal)),
        "ref" => opt_field(&mut r#ref, r, string),
        _ => r.value().map(drop),
    })?;
    Ok(Subscribed {
        topics: required(topics)?,
        recovered: recovered.flatten(),
        positions: positions.flatten(),
        refused: refused.flatten(),
        r#ref: r#ref.flatten(),
    })
}

fn refusal(r: &mut Reader<'_>) -> Read<Refusal> {
    let (mut c, mut message) = (None, None);
    r.object(|r, key| match key {
        "code" => once(&mut c, code(r)?),
        "message" => once(&mut message, string(r)?),
        _ => r.value().map(drop),
    })?;
    Ok(Refusal {
        code: required(c)?,
        message: required(message)?,
    })
}

fn unsubscribed(r: &mut Reader<'_>) -> Read<Unsubscribed> {
    let (mut topics, mut r#ref) = (None, None);
    r.object(|r, key| match key {
        "topics" => once(&mut topics, strings(r)?),
        "ref" => opt_field(&mut r#ref, r, string),
        _ => r.value().map(drop),
    })?;
    Ok(Unsubscribed {
        topics: required(topics)?,
        r#ref: r#ref.flatten(),
    })
}

/// A `message` object (a frame, or an element of a history page).
fn message(r: &mut Reader<'_>) -> Read<Message> {
    let (mut topic, mut data, mut from, mut timestamp, mut offset, mut epoch) =
        (None, None, None, None, None, None);
    r.object(|r, key| match key {
        "topic" => once(&mut topic, string(r)?),
        "data" => once(&mut data, raw(r)?),
        "from" => once(&mut from, string(r)?),
        "timestamp" => once(&mut timestamp, string(r)?),
        "offset" => opt_field(&mut offset, r, Reader::u64),
        "epoch" => opt_field(&mut epoch, r, string),
        _ => r.value().map(drop),
    })?;
    Ok(Message {
        topic: required(topic)?,
        data: required(data)?,
        from: required(from)?,
        timestamp: required(timestamp)?,
        offset: offset.flatten(),
        epoch: epoch.flatten(),
    })
}

/// A message with only an optional `ref` (`pong`).
fn ref_only(r: &mut Reader<'_>) -> Read<Option<String>> {
    let mut r#ref = None;
    r.object(|r, key| match key {
        "ref" => opt_field(&mut r#ref, r, string),
        _ => r.value().map(drop),
    })?;
    Ok(r#ref.flatten())
}

fn heartbeat(r: &mut Reader<'_>) -> Read<Heartbeat> {
    let mut timestamp = None;
    r.object(|r, key| match key {
        "timestamp" => opt_field(&mut timestamp, r, string),
        _ => r.value().map(drop),
    })?;
    Ok(Heartbeat {
        timestamp: timestamp.flatten(),
    })
}

fn error(r: &mut Reader<'_>) -> Read<Error> {
    let (mut c, mut message, mut r#ref, mut current) = (None, None, None, None);
    r.object(|r, key| match key {
        "code" => once(&mut c, code(r)?),
        "message" => once(&mut message, string(r)?),
        "ref" => opt_field(&mut r#ref, r, string),
        "current_version" => opt_field(&mut current, r, Reader::u64),
        _ => r.value().map(drop),
    })?;
    Ok(Error {
        code: required(c)?,
        message: required(message)?,
        r#ref: r#ref.flatten(),
        current_version: current.flatten(),
    })
}

fn published(r: &mut Reader<'_>) -> Read<Published> {
    let (mut r#ref, mut topic, mut offset, mut epoch) = (None, None, None, None);
    r.object(|r, key| match key {
        "ref" => opt_field(&mut r#ref, r, string),
        "topic" => once(&mut topic, string(r)?),
        "offset" => opt_field(&mut offset, r, Reader::u64),
        "epoch" => opt_field(&mut epoch, r, string),
        _ => r.value().map(drop),
    })?;
    Ok(Published {
        r#ref: r#ref.flatten(),
        topic: required(topic)?,
        offset: offset.flatten(),
        epoch: epoch.flatten(),
    })
}

fn authenticated(r: &mut Reader<'_>) -> Read<Authenticated> {
    let (mut r#ref, mut user, mut expires_at) = (None, None, None);
    r.object(|r, key| match key {
        "ref" => opt_field(&mut r#ref, r, string),
        "user" => once(&mut user, string(r)?),
        "expires_at" => opt_field(&mut expires_at, r, Reader::u64),
        _ => r.value().map(drop),
    })?;
    Ok(Authenticated {
        r#ref: r#ref.flatten(),
        user: required(user)?,
        expires_at: expires_at.flatten(),
    })
}

fn history(r: &mut Reader<'_>) -> Read<HistoryPage> {
    let (mut r#ref, mut topic, mut epoch, mut messages, mut latest, mut more) =
        (None, None, None, None, None, None);
    r.object(|r, key| match key {
        "ref" => opt_field(&mut r#ref, r, string),
        "topic" => once(&mut topic, string(r)?),
        "epoch" => once(&mut epoch, string(r)?),
        "messages" => once(&mut messages, list(r, message)?),
        "latest" => once(&mut latest, r.u64()?),
        "more" => once(&mut more, r.bool()?),
        _ => r.value().map(drop),
    })?;
    Ok(HistoryPage {
        r#ref: r#ref.flatten(),
        topic: required(topic)?,
        epoch: required(epoch)?,
        messages: required(messages)?,
        latest: required(latest)?,
        more: more.unwrap_or(false),
    })
}

fn member(r: &mut Reader<'_>) -> Read<Member> {
    let (mut client_id, mut user, mut info) = (None, None, None);
    r.object(|r, key| match key {
        "client_id" => once(&mut client_id, string(r)?),
        "user" => once(&mut user, string(r)?),
        "info" => once(&mut info, raw(r)?),
        _ => r.value().map(drop),
    })?;
    Ok(Member {
        client_id: required(client_id)?,
        user: required(user)?,
        info: info.unwrap_or_default(),
    })
}

fn presence(r: &mut Reader<'_>) -> Read<PresenceReply> {
    let (mut r#ref, mut topic, mut members, mut more) = (None, None, None, None);
    r.object(|r, key| match key {
        "ref" => opt_field(&mut r#ref, r, string),
        "topic" => once(&mut topic, string(r)?),
        "members" => once(&mut members, list(r, member)?),
        "more" => once(&mut more, r.bool()?),
        _ => r.value().map(drop),
    })?;
    Ok(PresenceReply {
        r#ref: r#ref.flatten(),
        topic: required(topic)?,
        members: required(members)?,
        more: more.unwrap_or(false),
    })
}

fn presence_stats(r: &mut Reader<'_>) -> Read<PresenceStats> {
    let (mut r#ref, mut topic, mut clients, mut users) = (None, None, None, None);
    r.object(|r, key| match key {
        "ref" => opt_field(&mut r#ref, r, string),
        "topic" => once(&mut topic, string(r)?),
        "clients" => once(&mut clients, r.u64()?),
        "users" => once(&mut users, r.u64()?),
        _ => r.value().map(drop),
    })?;
    Ok(PresenceStats {
        r#ref: r#ref.flatten(),
        topic: required(topic)?,
        clients: required(clients)?,
        users: required(users)?,
    })
}

fn member_event(r: &mut Reader<'_>) -> Read<MemberEvent> {
    let (mut topic, mut client_id, mut user, mut info) = (None, None, None, None);
    r.object(|r, key| match key {
        "topic" => once(&mut topic, string(r)?),
        "client_id" => once(&mut client_id, string(r)?),
        "user" => once(&mut user, string(r)?),
        "info" => once(&mut info, raw(r)?),
        _ => r.value().map(drop),
    })?;
    Ok(MemberEvent {
        topic: required(topic)?,
        client_id: required(client_id)?,
        user: required(user)?,
        info: info.unwrap_or_default(),
    })
}

fn appended(r: &mut Reader<'_>) -> Read<Appended> {
    let (mut r#ref, mut stream, mut version) = (None, None, None);
    r.object(|r, key| match key {
        "ref" => opt_field(&mut r#ref, r, string),
        "stream" => once(&mut stream, string(r)?),
        "version" => once(&mut version, r.u64()?),
        _ => r.value().map(drop),
    })?;
    Ok(Appended {
        r#ref: r#ref.flatten(),
        stream: required(stream)?,
        version: required(version)?,
    })
}

fn stored_event(r: &mut Reader<'_>) -> Read<StoredEvent> {
    let (mut version, mut kind, mut data, mut timestamp) = (None, None, None, None);
    r.object(|r, key| match key {
        "version" => once(&mut version, r.u64()?),
        "type" => once(&mut kind, string(r)?),
        "data" => once(&mut data, raw(r)?),
        "timestamp" => once(&mut timestamp, string(r)?),
        _ => r.value().map(drop),
    })?;
    Ok(StoredEvent {
        version: required(version)?,
        r#type: required(kind)?,
        data: required(data)?,
        timestamp: required(timestamp)?,
    })
}

fn snapshot(r: &mut Reader<'_>) -> Read<Snapshot> {
    let (mut version, mut state) = (None, None);
    r.object(|r, key| match key {
        "version" => once(&mut version, r.u64()?),
        "state" => once(&mut state, raw(r)?),
        _ => r.value().map(drop),
    })?;
    Ok(Snapshot {
        version: required(version)?,
        state: required(state)?,
    })
}

fn events(r: &mut Reader<'_>) -> Read<Events> {
    let (mut r#ref, mut stream, mut version, mut snap, mut events, mut more) =
        (None, None, None, None, None, None);
    r.object(|r, key| match key {
        "ref" => opt_field(&mut r#ref, r, string),
        "stream" => once(&mut stream, string(r)?),
        "version" => once(&mut version, r.u64()?),
        "snapshot" => opt_field(&mut snap, r, snapshot),
        "events" => once(&mut events, list(r, stored_event)?),
        "more" => once(&mut more, r.bool()?),
        _ => r.value().map(drop),
    })?;
    Ok(Events {
        r#ref: r#ref.flatten(),
        stream: required(stream)?,
        version: required(version)?,
        snapshot: snap.flatten(),
        events: required(events)?,
        more: more.unwrap_or(false),
    })
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
pub fn positions_to_json(positions: &BTreeMap<String, Position>) -> String {
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
pub fn positions_from_json(text: &str) -> Read<BTreeMap<String, Position>> {
    read_all(text, |r| map(r, position))
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
            r#"{"type":"pong"} {}"#,
            r#"["pong"]"#,
            r#"{"type":"pong""#,
            "",
        ];
        for text in frames {
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
        let mut p = BTreeMap::new();
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
