//! The errors SDK calls fail with.

use tidings_protocol::ErrorCode;

/// Why an SDK call (a publish, a request, a subscription) failed.
///
/// Exists so every failure carries a stable, machine-readable code: the wasm layer turns it
/// into a JS `Error` whose `code` property is [`SdkError::code`], and applications branch on
/// that code, never on the message text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdkError {
    /// The server answered the request with an `error`.
    #[error("{message}")]
    Server {
        /// The server's code, e.g. `VERSION_CONFLICT`.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
        /// With `VERSION_CONFLICT`: the stream's actual version.
        current_version: Option<u64>,
    },
    /// No reply within the request timeout.
    #[error("no reply within {0} ms")]
    Timeout(u64),
    /// The socket closed after the request was sent and the request cannot be safely retried.
    #[error("the connection was lost before the server replied")]
    Disconnected,
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// Too many publishes are waiting for an acknowledgement.
    #[error("the outbox is full ({0} publishes waiting for an acknowledgement)")]
    OutboxFull(usize),
    /// The call's arguments were unusable (empty topic, data that is not JSON, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The server refused the credentials and there is no way to get new ones.
    #[error("authentication failed: {0}")]
    Unauthorized(String),
    /// `getToken` failed or returned something that is not a token.
    #[error("getToken failed: {0}")]
    TokenProvider(String),
    /// The request is larger than the server accepts (its `max_message_bytes`, announced in
    /// `connected`, or learned from a 1009 close); it was not sent (again).
    #[error("the request is {bytes} bytes, larger than the server accepts{}", limit.map(|l| format!(" ({l} bytes)")).unwrap_or_default())]
    TooLarge {
        /// The encoded request's size.
        bytes: usize,
        /// The server's limit, when known.
        limit: Option<usize>,
    },
    /// A built-in aggregate refused a command (`code` is the aggregate's, e.g.
    /// `INVALID_STATE`), or could not read its stream (`INVALID_SNAPSHOT`). Decided locally:
    /// nothing was sent.
    #[error("{message}")]
    Aggregate {
        /// The aggregate's stable code.
        code: &'static str,
        /// Why, for people.
        message: String,
    },
}

impl SdkError {
    /// The stable code, e.g. `"TIMEOUT"` or a server code like `"VERSION_CONFLICT"`.
    pub fn code(&self) -> &'static str {
        match self {
            SdkError::Server { code, .. } => code.as_str(),
            SdkError::Timeout(_) => "TIMEOUT",
            SdkError::Disconnected => "DISCONNECTED",
            SdkError::Closed => "CLOSED",
            SdkError::OutboxFull(_) => "OUTBOX_FULL",
            SdkError::InvalidArgument(_) => "INVALID_ARGUMENT",
            SdkError::Unauthorized(_) => "UNAUTHORIZED",
            SdkError::TokenProvider(_) => "TOKEN_PROVIDER",
            SdkError::TooLarge { .. } => "MESSAGE_TOO_LARGE",
            SdkError::Aggregate { code, .. } => code,
        }
    }

    /// With `VERSION_CONFLICT`: the stream's actual version.
    pub fn current_version(&self) -> Option<u64> {
        match self {
            SdkError::Server {
                current_version, ..
            } => *current_version,
            _ => None,
        }
    }
}

impl From<tidings_protocol::server::Error> for SdkError {
    fn from(e: tidings_protocol::server::Error) -> Self {
        SdkError::Server {
            code: e.code,
            message: e.message,
            current_version: e.current_version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_strings() {
        let cases = [
            (SdkError::Timeout(5), "TIMEOUT"),
            (SdkError::Disconnected, "DISCONNECTED"),
            (SdkError::Closed, "CLOSED"),
            (SdkError::OutboxFull(3), "OUTBOX_FULL"),
            (SdkError::InvalidArgument("x".into()), "INVALID_ARGUMENT"),
            (SdkError::Unauthorized("x".into()), "UNAUTHORIZED"),
            (SdkError::TokenProvider("x".into()), "TOKEN_PROVIDER"),
            (
                SdkError::TooLarge {
                    bytes: 9,
                    limit: Some(8),
                },
                "MESSAGE_TOO_LARGE",
            ),
            (
                SdkError::Aggregate {
                    code: "INVALID_STATE",
                    message: "cannot ship an order that is created".into(),
                },
                "INVALID_STATE",
            ),
        ];
        for (e, code) in cases {
            assert_eq!(e.code(), code);
            assert_eq!(e.current_version(), None);
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn server_errors_keep_code_message_and_version() {
        let wire = tidings_protocol::server::Error {
            code: ErrorCode::VersionConflict,
            message: "expected 3, at 5".into(),
            r#ref: Some("1".into()),
            current_version: Some(5),
        };
        let e = SdkError::from(wire);
        assert_eq!(e.code(), "VERSION_CONFLICT");
        assert_eq!(e.current_version(), Some(5));
        assert_eq!(e.to_string(), "expected 3, at 5");
    }
}
