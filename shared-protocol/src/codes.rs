//! Stable error codes and WebSocket close codes.
//!
//! Codes are part of the protocol: clients branch on them, so a code never changes meaning.
//! New codes may be added; decoders map codes they do not know to [`ErrorCode::Unknown`].

use serde::{Deserialize, Serialize};

/// The `code` of an `error` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The connection sent more messages than its rate limit allows; the message was dropped.
    RateLimited,
    /// The frame was valid JSON with a `type` this server does not know.
    InvalidMessageType,
    /// The frame was not a JSON object of a known shape (bad JSON, binary frame, wrong field type).
    InvalidMessage,
    /// A topic or stream name is empty, too long or contains control characters.
    InvalidTopic,
    /// The token does not allow this operation on this topic.
    Forbidden,
    /// The frame is larger than the server's frame limit.
    MessageTooLarge,
    /// An `append` carried an `expected_version` that is not the stream's current version.
    VersionConflict,
    /// The connection already has as many subscriptions as the server allows.
    TooManySubscriptions,
    /// A token given to `auth` was refused (bad signature, expired, other identity).
    Unauthorized,
    /// The feature or resource is not available on this server right now.
    Unavailable,
    /// The resource (a stream, an endpoint of the HTTP API) does not exist.
    NotFound,
    /// A bug or an internal failure; the request may be retried.
    Internal,
    /// A publish reused an idempotency key (`id`) of the same publisher within the dedup
    /// window with a different payload: it is refused, never answered with the other
    /// message's offset.
    IdempotencyConflict,
    /// `presence` or `presence_stats` on a topic the server keeps no presence for (it is not
    /// matched by any `--presence-topic` pattern).
    PresenceDisabled,
    /// A code this build does not know (sent by a newer server).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Every code a server may send, for documentation and metrics pre-registration.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::RateLimited,
        ErrorCode::InvalidMessageType,
        ErrorCode::InvalidMessage,
        ErrorCode::InvalidTopic,
        ErrorCode::Forbidden,
        ErrorCode::MessageTooLarge,
        ErrorCode::VersionConflict,
        ErrorCode::TooManySubscriptions,
        ErrorCode::Unauthorized,
        ErrorCode::Unavailable,
        ErrorCode::NotFound,
        ErrorCode::Internal,
        ErrorCode::IdempotencyConflict,
        ErrorCode::PresenceDisabled,
    ];

    /// The code as it appears on the wire, e.g. `"RATE_LIMITED"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::InvalidMessageType => "INVALID_MESSAGE_TYPE",
            ErrorCode::InvalidMessage => "INVALID_MESSAGE",
            ErrorCode::InvalidTopic => "INVALID_TOPIC",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::MessageTooLarge => "MESSAGE_TOO_LARGE",
            ErrorCode::VersionConflict => "VERSION_CONFLICT",
            ErrorCode::TooManySubscriptions => "TOO_MANY_SUBSCRIPTIONS",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::IdempotencyConflict => "IDEMPOTENCY_CONFLICT",
            ErrorCode::PresenceDisabled => "PRESENCE_DISABLED",
            ErrorCode::Unknown => "UNKNOWN",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the server closed a WebSocket, as the close frame's status code.
///
/// Standard codes (1xxx) keep their RFC 6455 meaning; 4xxx codes are Tidings' own.
/// Clients reconnect after every code except [`CloseCode::PolicyViolation`] (fix the token first)
/// and [`CloseCode::Normal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCode {
    /// 1000: the session ended normally.
    Normal,
    /// 1001: the server is shutting down; reconnect (to another node if there is one).
    GoingAway,
    /// 1002: the peer broke the WebSocket protocol (RFC 6455 §7.4.1), e.g. an unmasked
    /// frame, reserved bits set, or a close frame with a code that may not be sent.
    ProtocolError,
    /// 1007: a text frame was not valid UTF-8 (RFC 6455 §8.1).
    InvalidPayload,
    /// 1008: authentication failed or the token is not acceptable; do not retry with it.
    PolicyViolation,
    /// 1009: a frame exceeded the server's frame limit.
    MessageTooBig,
    /// 1011: the server hit an internal error in this session.
    InternalError,
    /// 4001: the token expired and was not refreshed with `auth`; reconnect with a fresh token.
    TokenExpired,
    /// 4002: the client did not read fast enough and its outbound queue overflowed;
    /// reconnect and recover missed messages with `since`.
    SlowConsumer,
    /// 4003: nothing was heard from the client (not even a pong) within the liveness timeout.
    HeartbeatTimeout,
}

impl CloseCode {
    /// The numeric status code sent in the close frame.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::InvalidPayload => 1007,
            CloseCode::PolicyViolation => 1008,
            CloseCode::MessageTooBig => 1009,
            CloseCode::InternalError => 1011,
            CloseCode::TokenExpired => 4001,
            CloseCode::SlowConsumer => 4002,
            CloseCode::HeartbeatTimeout => 4003,
        }
    }

    /// The code for a numeric status, if it is one of ours.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        Some(match code {
            1000 => CloseCode::Normal,
            1001 => CloseCode::GoingAway,
            1002 => CloseCode::ProtocolError,
            1007 => CloseCode::InvalidPayload,
            1008 => CloseCode::PolicyViolation,
            1009 => CloseCode::MessageTooBig,
            1011 => CloseCode::InternalError,
            4001 => CloseCode::TokenExpired,
            4002 => CloseCode::SlowConsumer,
            4003 => CloseCode::HeartbeatTimeout,
            _ => return None,
        })
    }

    /// A short reason, sent as the close frame's reason text.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "bye",
            CloseCode::GoingAway => "server shutting down",
            CloseCode::ProtocolError => "protocol error",
            CloseCode::InvalidPayload => "invalid UTF-8 in a text frame",
            CloseCode::PolicyViolation => "authentication failed",
            CloseCode::MessageTooBig => "frame too large",
            CloseCode::InternalError => "internal error",
            CloseCode::TokenExpired => "token expired",
            CloseCode::SlowConsumer => "slow consumer",
            CloseCode::HeartbeatTimeout => "heartbeat timeout",
        }
    }

    /// Whether a client should reconnect after this close.
    pub fn should_reconnect(self) -> bool {
        !matches!(self, CloseCode::Normal | CloseCode::PolicyViolation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip_through_their_wire_names() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).expect("serialize");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, code);
        }
        let unknown: ErrorCode = serde_json::from_str("\"SOMETHING_NEW\"").expect("unknown");
        assert_eq!(unknown, ErrorCode::Unknown);
    }

    #[test]
    fn close_codes_round_trip() {
        for code in [1000, 1001, 1002, 1007, 1008, 1009, 1011, 4001, 4002, 4003] {
            let c = CloseCode::from_code(code).expect("known code");
            assert_eq!(c.code(), code);
        }
        assert_eq!(CloseCode::from_code(1234), None);
        assert!(!CloseCode::PolicyViolation.should_reconnect());
        assert!(CloseCode::SlowConsumer.should_reconnect());
    }
}
