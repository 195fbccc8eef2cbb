//! HTTP routes: the WebSocket upgrade on `/ws`, `/health` (and the orchestrator probes
//! `/health/live`, `/health/ready`) and `/metrics`.
//!
//! Every refusal happens before the upgrade, with an HTTP status and a JSON body shaped like
//! the protocol's `error` message, so a client never gets a working socket it may not have.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tidings_protocol::{ErrorCode, ServerMessage};

use crate::limits::LimitError;
use crate::state::Shared;
use crate::ws;

/// The router of one server instance.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/ws", get(upgrade))
        .route("/health", get(health))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .merge(crate::api::routes(&shared.ops.config))
        .with_state(shared)
}

/// `?token=` on the upgrade request.
#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The peer's IP, when the server was started with connect info ([`crate::serve`] always
/// is; an app nesting the router may not be, and then per-IP limits do not apply).
struct PeerIp(Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(PeerIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ci| ci.0.ip()),
        ))
    }
}

/// A refusal before the upgrade: the status, and the protocol's `error` message as the body.
fn refuse(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    (status, Json(ServerMessage::error(code, message, None))).into_response()
}

async fn upgrade(
    State(shared): State<Arc<Shared>>,
    PeerIp(ip): PeerIp,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
    upgrade: ws::Upgrade,
) -> Response {
    if shared.shutdown.is_cancelled() {
        shared.ops.metrics.refused("shutting_down");
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "server is shutting down",
        );
    }
    if !origin_allowed(&shared.ops.config.allowed_origins, &headers) {
        shared.ops.metrics.refused("origin");
        return refuse(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "origin not allowed",
        );
    }
    // An empty `?token=` does not hide a token in the `Authorization` header.
    let token = query
        .token
        .filter(|t| !t.is_empty())
        .or_else(|| {
            crate::auth::bearer(&headers)
                .and_then(|t| std::str::from_utf8(t).ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let identity = match shared.ops.auth.verify(&token) {
        Ok(identity) => identity,
        Err(e) => {
            shared.ops.metrics.refused("auth");
            tracing::debug!(error = %e, "refused token");
            return refuse(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                e.to_string(),
            );
        }
    };
    let ip = ip.map(|peer| {
        crate::forwarded::client_ip(&shared.ops.config.trusted_proxies, peer, &headers)
    });
    let permit = match shared.limits.acquire(ip) {
        Ok(permit) => permit,
        Err(e @ LimitError::Total(_)) => {
            shared.ops.metrics.refused("max_connections");
            tracing::warn!("refusing connection: {e}");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                e.to_string(),
            );
        }
        Err(e @ LimitError::PerIp(_)) => {
            shared.ops.metrics.refused("max_connections_per_ip");
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::Unavailable,
                e.to_string(),
            );
        }
    };
    let config = &shared.ops.config;
    let limit = config.max_message_bytes;
    let tracker = shared.sessions.clone();
    upgrade.accept(limit, move |socket| {
        tracker.track_future(ws::run(socket, shared, identity, permit))
    })
}

/// Browsers always send `Origin` on a WebSocket upgrade; other clients usually do not.
/// With an allow-list configured, a browser from another origin is refused.
fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    match headers.get(header::ORIGIN).map(|o| o.to_str()) {
        None => true,
        Some(Ok(origin)) => allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(origin)),
        Some(Err(_)) => false,
    }
}

/// `/health`: the template's fields plus more. 200 `healthy`; 503 `shutting_down`, or
/// `degraded` (with `store_error`) while the store cannot write (disk full, database locked,
/// writer stopped), so a load balancer stops sending clients to a node that would lose them.
async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let shutting_down = shared.shutdown.is_cancelled();
    let store = shared.ops.store.health();
    let status = match (&store, shutting_down) {
        (_, true) => "shutting_down",
        (Err(_), false) => "degraded",
        (Ok(()), false) => "healthy",
    };
    let mut body = json!({
        "status": status,
        "clients": shared.limits.current(),
        "topics": shared.ops.hub.topic_count(),
        "subscriptions": shared.ops.metrics.subscriptions.get(),
        "uptime_seconds": shared.started.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
        "commit": env!("TIDINGS_GIT_COMMIT"),
        "node": shared.node,
        "store": shared.ops.store.kind().as_str(),
        "durable": shared.ops.store.kind() != crate::store::StoreKind::Memory,
        "stored_topics": shared.ops.store.topic_count(),
    });
    if let Err(error) = store {
        body["store_error"] = json!(error);
    }
    let code = if status == "healthy" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// `/health/live`, the liveness probe: 200 while the process serves HTTP at all. An
/// orchestrator restarts the process when this fails; it never fails for a store problem or a
/// shutdown in progress (restarting would not help those).
async fn live() -> Response {
    Json(json!({"status": "live"})).into_response()
}

/// `/health/ready`, the readiness probe: 200 while this node should get new connections; 503
/// while it shuts down or its store cannot write, so a load balancer sends clients elsewhere.
async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    let (status, reason) = if shared.shutdown.is_cancelled() {
        (
            "shutting_down",
            Some("the server is shutting down".to_owned()),
        )
    } else {
        match shared.ops.store.health() {
            Ok(()) => ("ready", None),
            Err(e) => ("degraded", Some(e)),
        }
    };
    let mut body = json!({"status": status});
    if let Some(reason) = reason {
        body["reason"] = json!(reason);
    }
    let code = if status == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.ops.metrics.encode(),
    )
        .into_response()
}
