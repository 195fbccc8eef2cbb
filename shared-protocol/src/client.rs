//! Messages a client sends to the server.
//!
//! The first four (`subscribe`, `unsubscribe`, `publish`, `ping`) are the original template's
//! and accept exactly what its clients send: `topics` may be omitted (treated as empty) and
//! `publish.data` may be omitted (treated as `null`). Every other field is optional.

use serde::{Deserialize, Serialize};

use crate::{Json, TopicMap};

/// Any message a client may send, tagged by `"type"`.
///
/// Decode with [`ClientMessage::decode`] (see [`crate::decode`] for why not `serde_json::from_str`);
/// encode with `serde_json::to_string`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Start receiving `message`s for these topics.
    Subscribe(Subscribe),
    /// Stop receiving `message`s for these topics.
    Unsubscribe(Unsubscribe),
    /// Send `data` to every other subscriber of `topic`.
    Publish(Publish),
    /// Ask for a `pong`.
    Ping(Ping),
    /// Replace the connection's token before it expires, keeping every subscription.
    Auth(Auth),
    /// Fetch stored messages of a durable topic.
    History(History),
    /// Append events to an event stream, optionally only at an expected version.
    Append(Append),
    /// Read an event stream's events (and latest snapshot) from a version.
    Read(Read),
    /// Ask who is on a presence topic (the server answers `presence`).
    Presence(PresenceQuery),
    /// Ask how many clients and users are on a presence topic (`presence_stats`).
    PresenceStats(PresenceQuery),
}

/// A topic's position in its history: where a subscriber got to.
///
/// `epoch` names one continuous history of the topic; if the server's epoch for the topic
/// differs, the history the offset refers to is gone and recovery cannot be complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The last offset the client has seen (0 = nothing yet); at most [`crate::MAX_POSITION`].
    #[serde(deserialize_with = "crate::decode::position")]
    pub offset: u64,
    /// The epoch that offset belongs to, if the client knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

/// `subscribe`: template field `topics`, plus optional recovery positions.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Subscribe {
    /// Topics to add. The template's clients may omit it.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Per topic, the last position seen: the server first sends what was missed since then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<TopicMap<Position>>,
    /// Client-chosen id echoed in the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// `unsubscribe`: template field `topics`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Unsubscribe {
    /// Topics to remove. The template's clients may omit it.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Client-chosen id echoed in the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// `publish`: template fields `topic` and `data`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Publish {
    /// The topic to publish to.
    pub topic: String,
    /// Any JSON value, passed through to subscribers byte for byte.
    #[serde(default = "crate::json_null")]
    pub data: Json,
    /// Idempotency key: a retry with the same id is acknowledged, not published twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// When present, the server acknowledges the publish with `published`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// `ping`: the template sends it bare.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ping {
    /// Client-chosen id echoed in the `pong`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// `auth`: a fresh token for the same identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Auth {
    /// The new JWT.
    pub token: String,
    /// Client-chosen id echoed in the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// `history`: stored messages after an offset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct History {
    /// The durable topic to read.
    pub topic: String,
    /// Return messages with offsets greater than this (default 0: from the start).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::decode::opt_position"
    )]
    pub since: Option<u64>,
    /// At most this many messages (the server caps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Client-chosen id echoed in the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// `presence` / `presence_stats`: who is on a topic, or how many. Needs the same permission as
/// subscribing to the topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresenceQuery {
    /// A topic the server keeps presence for (`--presence-topic`).
    pub topic: String,
    /// Client-chosen id echoed in the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// One event to append: its type and payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewEvent {
    /// The event's type, e.g. `"order_created"`.
    pub r#type: String,
    /// The event's payload.
    #[serde(default = "crate::json_null")]
    pub data: Json,
}

impl NewEvent {
    /// The event as a stream stores it, and as its subscribers receive it in `message.data`:
    /// `{"type": <type>, "data": <data>}`. [`crate::server::StoredEvent::from_stored`] reads it
    /// back.
    ///
    /// # Errors
    /// Only if serialization fails, which it cannot for a string and raw JSON.
    pub fn to_stored(&self) -> Result<Json, serde_json::Error> {
        #[derive(Serialize)]
        struct Envelope<'a> {
            r#type: &'a str,
            data: &'a Json,
        }
        Json::to_json(&Envelope {
            r#type: &self.r#type,
            data: &self.data,
        })
    }
}

/// `append`: add events to a stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Append {
    /// The stream (a durable topic) to append to.
    pub stream: String,
    /// Absent: append at any version. 0: the stream must not exist yet. n: its version must be n.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::decode::opt_position"
    )]
    pub expected_version: Option<u64>,
    /// The events, appended atomically and in order.
    pub events: Vec<NewEvent>,
    /// Client-chosen id echoed in the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// `read`: a stream's events from a version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Read {
    /// The stream to read.
    pub stream: String,
    /// Return events with versions greater than this (default 0: all, starting from the
    /// latest snapshot where the server has one).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::decode::opt_position"
    )]
    pub from_version: Option<u64>,
    /// Client-chosen id echoed in the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

impl ClientMessage {
    /// The wire name of this message's type.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Subscribe(_) => "subscribe",
            ClientMessage::Unsubscribe(_) => "unsubscribe",
            ClientMessage::Publish(_) => "publish",
            ClientMessage::Ping(_) => "ping",
            ClientMessage::Auth(_) => "auth",
            ClientMessage::History(_) => "history",
            ClientMessage::Append(_) => "append",
            ClientMessage::Read(_) => "read",
            ClientMessage::Presence(_) => "presence",
            ClientMessage::PresenceStats(_) => "presence_stats",
        }
    }

    /// The request's `ref`, if it carried one.
    pub fn request_ref(&self) -> Option<&str> {
        match self {
            ClientMessage::Subscribe(m) => m.r#ref.as_deref(),
            ClientMessage::Unsubscribe(m) => m.r#ref.as_deref(),
            ClientMessage::Publish(m) => m.r#ref.as_deref(),
            ClientMessage::Ping(m) => m.r#ref.as_deref(),
            ClientMessage::Auth(m) => m.r#ref.as_deref(),
            ClientMessage::History(m) => m.r#ref.as_deref(),
            ClientMessage::Append(m) => m.r#ref.as_deref(),
            ClientMessage::Read(m) => m.r#ref.as_deref(),
            ClientMessage::Presence(m) | ClientMessage::PresenceStats(m) => m.r#ref.as_deref(),
        }
    }

    /// Decode one text frame. See [`crate::decode`].
    pub fn decode(text: &str) -> Result<ClientMessage, crate::DecodeError> {
        use crate::decode::{body, peek_type};
        let kind = peek_type(text)?;
        Ok(match kind.as_ref() {
            "subscribe" => ClientMessage::Subscribe(body(&kind, text)?),
            "unsubscribe" => ClientMessage::Unsubscribe(body(&kind, text)?),
            "publish" => ClientMessage::Publish(body(&kind, text)?),
            "ping" => ClientMessage::Ping(body(&kind, text)?),
            "auth" => ClientMessage::Auth(body(&kind, text)?),
            "history" => ClientMessage::History(body(&kind, text)?),
            "append" => ClientMessage::Append(body(&kind, text)?),
            "read" => ClientMessage::Read(body(&kind, text)?),
            "presence" => ClientMessage::Presence(body(&kind, text)?),
            "presence_stats" => ClientMessage::PresenceStats(body(&kind, text)?),
            _ => return Err(crate::DecodeError::UnknownType(kind.into_owned())),
        })
    }
}
