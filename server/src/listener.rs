//! Serving HTTP on a TCP listener: the accept loop, the cap on HTTP connections per client IP,
//! the header-read and idle timeouts, and the drain of HTTP connections on shutdown.
//!
//! `axum::serve` installs no hyper timer, so a client that connects and sends nothing (or
//! never finishes its headers) would hold a socket forever. Here every connection is served
//! by hyper's HTTP/1 server with a timer: `http_header_timeout` bounds the wait for a
//! request's headers (on a new connection and between keep-alive requests), and
//! `http_idle_timeout` closes a connection on which no byte moves either way (a stalled
//! body, a response nobody reads). Connections that are not WebSockets are also capped per
//! client IP (`max_http_connections_per_ip`); the excess gets a 429 and is closed at once.
//! A connection stops counting the moment it becomes a WebSocket: from then on the session's
//! own limits, heartbeats and timeouts apply.

use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tidings_protocol::{ErrorCode, ServerMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::state::Shared;
use crate::stream::Counted;

/// Accept and serve connections until shutdown begins, then wait for the HTTP connections
/// still open to finish (idle keep-alive connections are closed at once).
///
/// # Errors
/// Never for one bad connection; only if the listener itself fails for good.
pub async fn run(listener: TcpListener, app: Router, shared: Arc<Shared>) -> io::Result<()> {
    let config = &shared.ops.config;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.http_header_timeout)
        .keep_alive(true);
    let idle_timeout = config.http_idle_timeout;
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                accept_failed(e).await;
                continue;
            }
        };
        // Small frames must not wait for Nagle's algorithm: without TCP_NODELAY a lone
        // message can sit up to ~40 ms behind a delayed ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
        let ip = peer.ip();
        let permit = if crate::forwarded::is_trusted(&config.trusted_proxies, ip) {
            None
        } else {
            match shared.http_connections.acquire(Some(ip)) {
                Ok(permit) => Some(permit),
                Err(e) => {
                    shared.ops.metrics.refused("max_http_connections_per_ip");
                    tracing::debug!(%ip, "refusing HTTP connection: {e}");
                    tokio::spawn(refuse(tcp, e.to_string()));
                    continue;
                }
            }
        };
        let activity = Arc::new(AtomicU64::new(0));
        let io = TokioIo::new(Counted::new(tcp, Arc::clone(&activity)));
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let mut app = app.clone();
            async move { app.call(request).await }
        });
        let conn = http.serve_connection(io, service).with_upgrades();
        let shutdown = shared.shutdown.clone();
        connections.spawn(async move {
            // Held until the connection ends or is handed over as a WebSocket (the
            // connection future completes at the upgrade).
            let _permit = permit;
            let mut conn = pin!(conn);
            let mut idle = pin!(idle(&activity, idle_timeout));
            tokio::select! {
                result = conn.as_mut() => return ended(peer, result),
                () = idle.as_mut() => return tracing::debug!(%peer, "closing an idle HTTP connection"),
                () = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
            }
            // Shutting down: an idle keep-alive connection closes now, a request in progress
            // finishes first.
            tokio::select! {
                result = conn => ended(peer, result),
                () = idle => {}
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

fn ended(peer: std::net::SocketAddr, result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        tracing::debug!(%peer, "HTTP connection ended: {e}");
    }
}

/// An accept error: a failed connection is skipped; running out of file descriptors or
/// memory is logged and waited out, so the server keeps serving the connections it has.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!("accept failed: {e}; pausing new connections for a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Answer a connection over the per-IP cap with a 429 and close it, without waiting on the
/// client for more than a second either way.
async fn refuse(mut tcp: TcpStream, reason: String) {
    let body = ServerMessage::error(ErrorCode::Unavailable, reason, None).encode();
    let response = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let grace = Duration::from_secs(1);
    if tokio::time::timeout(grace, tcp.write_all(response.as_bytes()))
        .await
        .is_err()
    {
        return;
    }
    let _ = tcp.shutdown().await;
    // Read what the client sent before closing, so the close is a FIN, not a reset that
    // could destroy the response before the client reads it.
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(grace, async {
        let mut total = 0usize;
        while let Ok(n) = tcp.read(&mut sink).await {
            total += n;
            if n == 0 || total > 64 * 1024 {
                break;
            }
        }
    })
    .await;
}

/// Resolves once no byte has moved on the connection for `timeout` (checked every half
/// timeout, so it fires between 1 and 1.5 timeouts after the last byte).
async fn idle(activity: &AtomicU64, timeout: Duration) {
    let step = timeout / 2;
    let mut last = activity.load(Ordering::Relaxed);
    let mut quiet = Duration::ZERO;
    loop {
        tokio::time::sleep(step).await;
        let now = activity.load(Ordering::Relaxed);
        if now == last {
            quiet += step;
            if quiet >= timeout {
                return;
            }
        } else {
            last = now;
            quiet = Duration::ZERO;
        }
    }
}
