//! The HTTP API for backends: publish, read history, and append to and read event streams
//! with an API key, without holding a WebSocket or minting a JWT.
//!
//! | route | does |
//! |---|---|
//! | `POST /api/publish` | publish one message (`from` is `"api"`) |
//! | `GET /api/topics/{topic}/history?since&limit` | one page of a durable topic's history |
//! | `POST /api/streams/{stream}/events` | append events, optionally at an expected version |
//! | `GET /api/streams/{stream}?from_version` | one page of a stream's events |
//!
//! Every body, success or error, is the JSON of the protocol message with the same meaning
//! (`published`, `history`, `appended`, `events`, `error`), `type` included, so a backend can
//! reuse the protocol's decoder. Errors go through [`ApiError`], mapped to a status in one place.
//!
//! Names are percent-decoded path segments, and the name may span several segments, so both
//! `/api/topics/chat%2Froom/history` and `/api/topics/chat/room/history` name `chat/room`.
//!
//! Without `api_key` in the config only a catch-all answering 404 is mounted: a server
//! without a key exposes nothing under `/api`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json as JsonResponse, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tidings_protocol::client::{History, PresenceQuery, Read};
use tidings_protocol::server::{Appended, Error as ErrorMessage};
use tidings_protocol::{ErrorCode, Json, NewEvent, ServerMessage};

use crate::config::Config;
use crate::ops::{self, AppendOp, OpError, PublishOp, Routed, Who};
use crate::state::Shared;
use crate::store::{StoreError, reply_channel};
use crate::topic::TopicError;

/// The `from` of every message published or appended through this API, so subscribers can
/// tell backend messages from client (`client_id`) and embedded (`"server"`) ones.
const API_CLIENT: &str = "api";

/// The `/api` routes of one instance, to merge into the server's router.
///
/// Takes the config because both the mounting (no key: nothing but a 404) and the body limit
/// (`max_message_bytes`, the same bound a WebSocket frame has) are fixed at start.
pub(crate) fn routes(config: &Config) -> Router<Arc<Shared>> {
    if config.api_key.is_none() {
        return Router::new().route("/api/{*rest}", any(|| async { ApiError::Disabled }));
    }
    Router::new()
        .route(
            "/api/publish",
            post(publish).fallback(|| async { ApiError::Method("POST") }),
        )
        .route(
            "/api/topics/{*path}",
            get(history).fallback(|| async { ApiError::Method("GET") }),
        )
        .route(
            "/api/streams/{*path}",
            get(read_stream)
                .post(append)
                .fallback(|| async { ApiError::Method("GET, POST") }),
        )
        .route("/api/{*rest}", any(|| async { ApiError::NoEndpoint }))
        .layer(DefaultBodyLimit::max(config.max_message_bytes))
}

// ---------------------------------------------------------------------------------------------
// Handlers

/// `POST /api/publish` body. Unknown fields are refused (as everywhere in this API) so a
/// misspelt field is an error rather than silently ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    /// Topic to publish to.
    topic: String,
    /// Payload, carried byte for byte; omitted means `null`, as on the WebSocket.
    #[serde(default = "tidings_protocol::json_null")]
    data: Json,
    /// Idempotency key: a retry with the same id and payload gets the original offset
    /// (durable topics). Keys of the API are its own: they never match a client's.
    #[serde(default)]
    id: Option<String>,
}

/// `POST /api/publish` reply: the protocol's `published`, plus `queued` for ephemeral topics.
/// `offset` and `epoch` are always present (null on ephemeral topics) so callers need not
/// guess whether a field is missing or the topic is not stored.
#[derive(Serialize)]
struct PublishedBody {
    /// Always `"published"`.
    r#type: &'static str,
    /// The topic published to.
    topic: String,
    /// The stored message's offset; null on an ephemeral topic.
    offset: Option<u64>,
    /// The topic's epoch; null on an ephemeral topic.
    epoch: Option<String>,
    /// Ephemeral topics only: subscribers the message was queued for.
    #[serde(skip_serializing_if = "Option::is_none")]
    queued: Option<usize>,
}

/// Publish one message: committed then fanned out on a durable topic, fanned out only on an
/// ephemeral one.
async fn publish(
    _: Authorized,
    State(shared): State<Arc<Shared>>,
    JsonBody(body): JsonBody<PublishBody>,
) -> Result<JsonResponse<PublishedBody>, ApiError> {
    let topic = body.topic.clone();
    let (reply, committed) = reply_channel();
    let op = PublishOp {
        topic: body.topic,
        data: body.data,
        from: API_CLIENT.to_owned(),
        origin: None,
        id: body.id,
        started: Instant::now(),
    };
    match ops::publish(&shared.ops, Who::Trusted, op, Some(reply)).await? {
        Routed::Ephemeral { queued } => Ok(JsonResponse(PublishedBody {
            r#type: "published",
            topic,
            offset: None,
            epoch: None,
            queued: Some(queued),
        })),
        Routed::Durable => {
            let committed = committed.await.map_err(|_| StoreError::Closed)??;
            Ok(JsonResponse(PublishedBody {
                r#type: "published",
                topic: committed.topic,
                offset: Some(committed.offset),
                epoch: Some(committed.epoch),
                queued: None,
            }))
        }
    }
}

/// Query of `GET /api/topics/{topic}/history`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    /// Messages with offsets greater than this (default 0: from the oldest stored).
    #[serde(default, deserialize_with = "tidings_protocol::decode::opt_position")]
    since: Option<u64>,
    /// At most this many messages (capped by `history_limit`).
    limit: Option<u32>,
}

/// `GET /api/topics/{topic}/history` (one page of a durable topic's history: the protocol's
/// `history` message) or `GET /api/topics/{topic}/presence` (its members: the protocol's
/// `presence` message, at most `presence_max_members`; 404 `PRESENCE_DISABLED` for a topic
/// without presence).
async fn history(
    _: Authorized,
    State(shared): State<Arc<Shared>>,
    Checked(Path(path)): Checked<Path<String>>,
    Checked(Query(query)): Checked<Query<HistoryQuery>>,
) -> Result<JsonResponse<ServerMessage>, ApiError> {
    if let Some(topic) = path.strip_suffix("/presence") {
        let query = PresenceQuery {
            topic: topic.to_owned(),
            r#ref: None,
        };
        return Ok(JsonResponse(
            ops::presence::query(&shared.ops, Who::Trusted, query, false).await?,
        ));
    }
    let topic = path.strip_suffix("/history").ok_or(ApiError::NoEndpoint)?;
    let request = History {
        topic: topic.to_owned(),
        since: query.since,
        limit: query.limit,
        r#ref: None,
    };
    Ok(JsonResponse(
        ops::history(&shared.ops, Who::Trusted, request).await?,
    ))
}

/// `POST /api/streams/{stream}/events` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppendBody {
    /// Absent: append at any version; 0: the stream must not exist yet; n: it must be at n.
    #[serde(default, deserialize_with = "tidings_protocol::decode::opt_position")]
    expected_version: Option<u64>,
    /// The events, appended atomically and in order.
    events: Vec<NewEvent>,
}

/// Append events to a stream: 201 with the protocol's `appended`, or 409 on a version conflict.
async fn append(
    _: Authorized,
    State(shared): State<Arc<Shared>>,
    Checked(Path(path)): Checked<Path<String>>,
    JsonBody(body): JsonBody<AppendBody>,
) -> Result<(StatusCode, JsonResponse<ServerMessage>), ApiError> {
    let stream = path.strip_suffix("/events").ok_or(ApiError::NoEndpoint)?;
    let (reply, committed) = reply_channel();
    let op = AppendOp {
        stream: stream.to_owned(),
        expected: body.expected_version,
        events: body.events,
        from: API_CLIENT.to_owned(),
    };
    ops::append(&shared.ops, Who::Trusted, op, Some(reply)).await?;
    let committed = committed.await.map_err(|_| StoreError::Closed)??;
    let appended = ServerMessage::Appended(Appended {
        r#ref: None,
        stream: committed.topic,
        version: committed.offset,
    });
    Ok((StatusCode::CREATED, JsonResponse(appended)))
}

/// Query of `GET /api/streams/{stream}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadQuery {
    /// Events with versions greater than this (default 0: all, from the latest snapshot).
    #[serde(default, deserialize_with = "tidings_protocol::decode::opt_position")]
    from_version: Option<u64>,
}

/// One page of a stream's events: the protocol's `events` message; 404 if it was never written.
async fn read_stream(
    _: Authorized,
    State(shared): State<Arc<Shared>>,
    Checked(Path(stream)): Checked<Path<String>>,
    Checked(Query(query)): Checked<Query<ReadQuery>>,
) -> Result<JsonResponse<ServerMessage>, ApiError> {
    let request = Read {
        stream,
        from_version: query.from_version,
        r#ref: None,
    };
    // Checked (name, ephemeral) before asking whether it exists: a 400 is more useful.
    let reply = ops::read(&shared.ops, Who::Trusted, request).await?;
    match &reply {
        ServerMessage::Events(e) if e.version == 0 && e.events.is_empty() => {
            Err(ApiError::NoStream(e.stream.clone()))
        }
        _ => Ok(JsonResponse(reply)),
    }
}

// ---------------------------------------------------------------------------------------------
// Extractors

/// Proof that the request carried the configured API key. Every handler takes it as its first
/// argument, so the key is checked before the path, query or body is even looked at.
struct Authorized;

impl FromRequestParts<Arc<Shared>> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Self, ApiError> {
        let expected = shared
            .ops
            .config
            .api_key
            .as_deref()
            .ok_or(ApiError::Disabled)?;
        let given = presented_key(&parts.headers).ok_or(ApiError::MissingKey)?;
        if keys_match(given, expected.as_bytes()) {
            Ok(Authorized)
        } else {
            tracing::debug!("API request with a wrong key");
            Err(ApiError::WrongKey)
        }
    }
}

/// The key the request presents: `X-Api-Key`, else `Authorization: Bearer` (scheme in any
/// case). Raw bytes, so a key that is not valid UTF-8 is simply wrong, not an extraction error.
fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(key) = headers.get("x-api-key") {
        return Some(key.as_bytes().trim_ascii());
    }
    crate::auth::bearer(headers)
}

/// Compare in time that depends only on the expected key's length, so response timing does
/// not reveal how many leading bytes of a guess were right.
fn keys_match(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = given.len() ^ expected.len();
    for (i, e) in expected.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(0);
        diff |= usize::from(std::hint::black_box(g ^ e));
    }
    diff == 0
}

/// Any parts extractor whose rejection becomes an [`ApiError`] (path and query), so a bad
/// path or query string gets the API's JSON error instead of axum's plain text.
struct Checked<E>(E);

impl<E> FromRequestParts<Arc<Shared>> for Checked<E>
where
    E: FromRequestParts<Arc<Shared>>,
    ApiError: From<E::Rejection>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Self, ApiError> {
        Ok(Checked(E::from_request_parts(parts, shared).await?))
    }
}

/// A JSON request body. Unlike `axum::Json` it does not insist on a `Content-Type` (backends
/// calling with `curl -d` often send none), and its failures become [`ApiError`]s. The body
/// limit is the router's `DefaultBodyLimit`.
struct JsonBody<T>(T);

impl<T: DeserializeOwned> FromRequest<Arc<Shared>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, shared: &Arc<Shared>) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(request, shared)
            .await
            .map_err(|e| ApiError::body(e, shared.ops.config.max_message_bytes))?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Why an API request failed. [`IntoResponse`] below is the one place that picks each
/// failure's status and protocol error code.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    /// No `api_key` is configured.
    #[error("the HTTP API is disabled: no api_key is configured")]
    Disabled,
    /// A path under `/api` that names no endpoint.
    #[error("no such API endpoint")]
    NoEndpoint,
    /// An endpoint called with the wrong method; holds the allowed ones.
    #[error("method not allowed; use {0}")]
    Method(&'static str),
    /// Neither `Authorization: Bearer` nor `X-Api-Key` was sent.
    #[error("missing API key: send `Authorization: Bearer KEY` or `X-Api-Key: KEY`")]
    MissingKey,
    /// A key was sent but it is not the configured one.
    #[error("wrong API key")]
    WrongKey,
    /// The body, path or query is malformed (bad JSON, missing or unknown field, ...).
    #[error("{0}")]
    BadRequest(String),
    /// The body is larger than `max_message_bytes`.
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    /// The topic or stream name breaks the naming rules.
    #[error("{error}: {name:?}")]
    InvalidName {
        /// The name as decoded from the request.
        name: String,
        /// Which rule it breaks.
        error: TopicError,
    },
    /// History or a stream was asked of a topic the config marks ephemeral (never stored).
    #[error("{0:?} is ephemeral: nothing is stored")]
    Ephemeral(String),
    /// A stream that has never been written.
    #[error("stream {0:?} does not exist")]
    NoStream(String),
    /// Presence asked of a topic that keeps none.
    #[error("no presence is kept for {0:?} (see --presence-topic)")]
    PresenceDisabled(String),
    /// The store refused or failed (version conflict, backend failure, shutting down).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    /// A body that could not be read: too large (413) or broken off (400).
    fn body(rejection: BytesRejection, limit: usize) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(limit)
        } else {
            ApiError::BadRequest(rejection.body_text())
        }
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::InvalidName { name, error } => ApiError::InvalidName { name, error },
            OpError::Ephemeral(name) => ApiError::Ephemeral(name),
            OpError::Invalid(message) => ApiError::BadRequest(message),
            // The API is trusted: nothing is forbidden to it.
            OpError::Forbidden { .. } => ApiError::BadRequest(e.to_string()),
            OpError::PresenceDisabled(topic) => ApiError::PresenceDisabled(topic),
            OpError::Store(e) => ApiError::Store(e),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        use ApiError as E;
        let (status, code) = match &self {
            E::Disabled | E::NoEndpoint | E::NoStream(_) => {
                (StatusCode::NOT_FOUND, ErrorCode::NotFound)
            }
            E::Method(_) => (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::InvalidMessage),
            E::MissingKey | E::WrongKey => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            E::BadRequest(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidMessage),
            E::InvalidName { .. } => (StatusCode::BAD_REQUEST, ErrorCode::InvalidTopic),
            E::Ephemeral(_) => (StatusCode::BAD_REQUEST, ErrorCode::Unavailable),
            E::PresenceDisabled(_) => (StatusCode::NOT_FOUND, ErrorCode::PresenceDisabled),
            E::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::MessageTooLarge),
            E::Store(StoreError::Conflict { .. }) => {
                (StatusCode::CONFLICT, ErrorCode::VersionConflict)
            }
            E::Store(StoreError::IdempotencyConflict { .. }) => {
                (StatusCode::CONFLICT, ErrorCode::IdempotencyConflict)
            }
            E::Store(StoreError::Closed) => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
            }
            E::Store(StoreError::Backend(_)) => {
                (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal)
            }
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "API request failed");
        } else {
            tracing::debug!(error = %self, status = status.as_u16(), "API request refused");
        }
        let current_version = match &self {
            E::Store(StoreError::Conflict { current, .. }) => Some(*current),
            _ => None,
        };
        let body = ServerMessage::Error(ErrorMessage {
            code,
            message: self.to_string(),
            r#ref: None,
            current_version,
        });
        let mut response = (status, JsonResponse(body)).into_response();
        let headers = response.headers_mut();
        match self {
            E::MissingKey | E::WrongKey => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            E::Method(allowed) => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allowed));
            }
            _ => {}
        }
        response
    }
}
