//! Messages the server sends to a client.
//!
//! The template's messages (`connected`, `subscribed`, `unsubscribed`, `message`, `pong`,
//! `heartbeat`, `error`) keep their fields; additions are optional so that a decoder of
//! this crate also reads a template server's frames.

use serde::{Deserialize, Serialize};

use crate::{ErrorCode, Json, Position, TopicMap};

/// Any message the server may send, tagged by `"type"`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The first frame of every connection.
    Connected(Connected),
    /// Reply to `subscribe`.
    Subscribed(Subscribed),
    /// Reply to `unsubscribe`.
    Unsubscribed(Unsubscribed),
    /// A message published to a subscribed topic.
    Message(Message),
    /// Reply to `ping`.
    Pong(Pong),
    /// Sent on an interval so clients (and proxies) see a live connection.
    Heartbeat(Heartbeat),
    /// A request failed; the connection stays open.
    Error(Error),
    /// Acknowledges a `publish` that carried a `ref`.
    Published(Published),
    /// Reply to `auth`: the new token is in force.
    Authenticated(Authenticated),
    /// Reply to `history`.
    History(HistoryPage),
    /// Reply to `append`.
    Appended(Appended),
    /// Reply to `read`.
    Events(Events),
    /// Reply to `presence`: who is on the topic.
    Presence(PresenceReply),
    /// Reply to `presence_stats`: how many clients and users are on the topic.
    PresenceStats(PresenceStats),
    /// A member arrived on a presence topic this connection subscribes to.
    Join(MemberEvent),
    /// A member left a presence topic this connection subscribes to (unsubscribed,
    /// disconnected, or its node stopped answering for the presence TTL).
    Leave(MemberEvent),
}

/// `connected`: template fields `client_id` and `timestamp`, plus session facts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Connected {
    /// Unique per connection (two tabs of one user get two ids).
    pub client_id: String,
    /// Server time, RFC 3339.
    pub timestamp: String,
    /// Protocol revision ([`crate::PROTOCOL_VERSION`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
    /// The server's heartbeat interval in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_ms: Option<u64>,
    /// The authenticated identity (`sub` or `user_id` claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The largest frame the server reads, in bytes: a larger one closes the connection with
    /// 1009, so a client checks its requests against it before sending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<u64>,
}

/// `subscribed`: template field `topics` (every topic the connection is now subscribed to).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Subscribed {
    /// All current subscriptions of the connection, as the template reports them.
    pub topics: Vec<String>,
    /// For topics subscribed with `since`: whether every missed message was replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<TopicMap<bool>>,
    /// For the durable topics of this request: the position delivery starts after (the
    /// client's `since`, or the topic's latest offset when it gave none). A client that
    /// reconnects resumes from there, so nothing published in between is missed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positions: Option<TopicMap<Position>>,
    /// Topics of this request that were not subscribed, each with why; the others were. A
    /// request for one topic that is refused gets an `error` instead, as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<TopicMap<Refusal>>,
    /// Echo of the request's `ref`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// Why one topic of a `subscribe` was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The code an `error` for this topic alone would carry (`FORBIDDEN`, `INVALID_TOPIC`,
    /// `TOO_MANY_SUBSCRIPTIONS`).
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}

/// `unsubscribed`: template field `topics` (the subscriptions that remain).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Unsubscribed {
    /// All remaining subscriptions of the connection, as the template reports them.
    pub topics: Vec<String>,
    /// Echo of the request's `ref`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// `message`: template fields `topic`, `data`, `from`, `timestamp`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    /// The topic it was published to.
    pub topic: String,
    /// The publisher's payload, unchanged.
    pub data: Json,
    /// The publisher's `client_id` (or `"server"` for messages published by a backend).
    pub from: String,
    /// When the server accepted it, RFC 3339.
    pub timestamp: String,
    /// Position in the topic's history (durable topics only): starts at 1, no gaps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The history the offset belongs to (durable topics only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

impl Message {
    /// A message of a durable topic, as live fan-out, replay, catch-up and `history` all send
    /// it: the one place its shape is decided.
    pub fn stored(
        topic: &str,
        data: Json,
        from: &str,
        timestamp: &str,
        offset: u64,
        epoch: &str,
    ) -> Message {
        Message {
            topic: topic.to_owned(),
            data,
            from: from.to_owned(),
            timestamp: timestamp.to_owned(),
            offset: Some(offset),
            epoch: Some(epoch.to_owned()),
        }
    }

    /// A message of an ephemeral topic (no offset, no epoch), as the template sends it.
    pub fn live(topic: String, data: Json, from: String, timestamp: String) -> Message {
        Message {
            topic,
            data,
            from,
            timestamp,
            offset: None,
            epoch: None,
        }
    }
}

/// `pong`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Pong {
    /// Echo of the ping's `ref`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// `heartbeat`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Server time, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

/// `error`: template fields `code` and `message`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Error {
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// Echo of the failed request's `ref`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    /// With `VERSION_CONFLICT`: the stream's actual version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
}

/// `published`: the publish was accepted (and, on a durable topic, stored).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Published {
    /// Echo of the publish's `ref`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    /// The topic published to.
    pub topic: String,
    /// The stored message's offset (durable topics only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The topic's epoch (durable topics only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

/// `authenticated`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Authenticated {
    /// Echo of the request's `ref`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    /// The identity (unchanged by a refresh).
    pub user: String,
    /// The new token's expiry, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// `history`: one page of a topic's stored messages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryPage {
    /// Echo of the request's `ref`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    /// The topic.
    pub topic: String,
    /// The topic's current epoch.
    pub epoch: String,
    /// Stored messages in offset order, each shaped like a `message` (with `offset`).
    pub messages: Vec<Message>,
    /// The topic's latest offset (0 when empty).
    pub latest: u64,
    /// True when the page was cut short (by `limit`, the server's history limit or its reply
    /// byte limit) and later messages are stored: ask again with `since` = the last offset.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
}

/// One member of a presence topic: a connection subscribed to it. The same user on two
/// connections (two tabs) is two members.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    /// The member's connection.
    pub client_id: String,
    /// The member's identity (the token's `sub` or `user_id`).
    pub user: String,
    /// The token's optional `info` claim, as it was (any JSON); `null` without one.
    #[serde(default = "crate::json_null")]
    pub info: crate::Json,
}

/// Members are equal when every field is, `info` compared as JSON text.
impl PartialEq for Member {
    fn eq(&self, other: &Self) -> bool {
        self.client_id == other.client_id
            && self.user == other.user
            && self.info.get() == other.info.get()
    }
}

/// `presence`: the members of a topic, at most the server's `presence_max_members`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresenceReply {
    /// Echo of the request's `ref`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    /// The topic.
    pub topic: String,
    /// Members, in no particular order.
    pub members: Vec<Member>,
    /// True when the topic has more members than one reply carries: count them with
    /// `presence_stats`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
}

/// `presence_stats`: how many are on a topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresenceStats {
    /// Echo of the request's `ref`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    /// The topic.
    pub topic: String,
    /// Connections subscribed.
    pub clients: u64,
    /// Distinct users among them.
    pub users: u64,
}

/// `join` / `leave`: a member arrived on or left a presence topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberEvent {
    /// The topic.
    pub topic: String,
    /// The member's connection.
    pub client_id: String,
    /// The member's identity.
    pub user: String,
    /// The token's `info` claim (`null` without one).
    #[serde(default = "crate::json_null")]
    pub info: crate::Json,
}

impl MemberEvent {
    /// The event for `member` on `topic`.
    pub fn new(topic: &str, member: &Member) -> Self {
        MemberEvent {
            topic: topic.to_owned(),
            client_id: member.client_id.clone(),
            user: member.user.clone(),
            info: member.info.clone(),
        }
    }

    /// The member it names.
    pub fn member(&self) -> Member {
        Member {
            client_id: self.client_id.clone(),
            user: self.user.clone(),
            info: self.info.clone(),
        }
    }
}

/// `appended`: the events are stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Appended {
    /// Echo of the request's `ref`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    /// The stream.
    pub stream: String,
    /// The stream's version after the append (the last event's version).
    pub version: u64,
}

/// One stored event of a stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Its version in the stream: starts at 1, no gaps.
    pub version: u64,
    /// The event's type.
    pub r#type: String,
    /// The event's payload.
    pub data: Json,
    /// When it was stored, RFC 3339.
    pub timestamp: String,
}

impl StoredEvent {
    /// An event as read back from its stream: `stored` is what
    /// [`crate::NewEvent::to_stored`] wrote when `event_type` is known; anything else (a plain
    /// publish to the stream) reads as an event of type `"message"` carrying the payload.
    pub fn from_stored(
        version: u64,
        event_type: Option<String>,
        stored: Json,
        timestamp: String,
    ) -> StoredEvent {
        #[derive(Deserialize)]
        struct Envelope {
            data: Json,
        }
        let (r#type, data) = match event_type {
            Some(t) => match serde_json::from_str::<Envelope>(stored.get()) {
                Ok(envelope) => (t, envelope.data),
                Err(_) => (t, stored),
            },
            None => ("message".to_owned(), stored),
        };
        StoredEvent {
            version,
            r#type,
            data,
            timestamp,
        }
    }
}

/// A stream's state folded up to a version, saved so loads need not replay everything.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// The version the state includes.
    pub version: u64,
    /// The folded state.
    pub state: Json,
}

/// `events`: reply to `read`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Events {
    /// Echo of the request's `ref`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    /// The stream.
    pub stream: String,
    /// The stream's current version (0 when it does not exist).
    pub version: u64,
    /// The latest snapshot at or after `from_version`, if any; `events` then follow it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Snapshot>,
    /// Events after the snapshot (or after `from_version`), in version order.
    pub events: Vec<StoredEvent>,
    /// True when the page was cut short (by the server's history limit or its reply byte
    /// limit) and later events are stored: read again with `from_version` = the last version.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
}

impl ServerMessage {
    /// The wire name of this message's type.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMessage::Connected(_) => "connected",
            ServerMessage::Subscribed(_) => "subscribed",
            ServerMessage::Unsubscribed(_) => "unsubscribed",
            ServerMessage::Message(_) => "message",
            ServerMessage::Pong(_) => "pong",
            ServerMessage::Heartbeat(_) => "heartbeat",
            ServerMessage::Error(_) => "error",
            ServerMessage::Published(_) => "published",
            ServerMessage::Authenticated(_) => "authenticated",
            ServerMessage::History(_) => "history",
            ServerMessage::Appended(_) => "appended",
            ServerMessage::Events(_) => "events",
            ServerMessage::Presence(_) => "presence",
            ServerMessage::PresenceStats(_) => "presence_stats",
            ServerMessage::Join(_) => "join",
            ServerMessage::Leave(_) => "leave",
        }
    }

    /// Encode as one JSON text frame.
    pub fn encode(&self) -> String {
        // Serializing these types cannot fail: every map key is a string and every
        // `Json` value is already valid JSON.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"type":"error","code":"INTERNAL","message":"encode failed: {e}"}}"#)
        })
    }

    /// An `error` reply.
    pub fn error(code: ErrorCode, message: impl Into<String>, r#ref: Option<String>) -> Self {
        ServerMessage::Error(Error {
            code,
            message: message.into(),
            r#ref,
            current_version: None,
        })
    }

    /// Decode one text frame. See [`crate::decode`].
    pub fn decode(text: &str) -> Result<ServerMessage, crate::DecodeError> {
        use crate::decode::{body, peek_type};
        let kind = peek_type(text)?;
        Ok(match kind.as_ref() {
            "connected" => ServerMessage::Connected(body(&kind, text)?),
            "subscribed" => ServerMessage::Subscribed(body(&kind, text)?),
            "unsubscribed" => ServerMessage::Unsubscribed(body(&kind, text)?),
            "message" => ServerMessage::Message(body(&kind, text)?),
            "pong" => ServerMessage::Pong(body(&kind, text)?),
            "heartbeat" => ServerMessage::Heartbeat(body(&kind, text)?),
            "error" => ServerMessage::Error(body(&kind, text)?),
            "published" => ServerMessage::Published(body(&kind, text)?),
            "authenticated" => ServerMessage::Authenticated(body(&kind, text)?),
            "history" => ServerMessage::History(body(&kind, text)?),
            "appended" => ServerMessage::Appended(body(&kind, text)?),
            "events" => ServerMessage::Events(body(&kind, text)?),
            "presence" => ServerMessage::Presence(body(&kind, text)?),
            "presence_stats" => ServerMessage::PresenceStats(body(&kind, text)?),
            "join" => ServerMessage::Join(body(&kind, text)?),
            "leave" => ServerMessage::Leave(body(&kind, text)?),
            _ => return Err(crate::DecodeError::UnknownType(kind.into_owned())),
        })
    }
}
