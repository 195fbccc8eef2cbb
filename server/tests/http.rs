//! The HTTP layer cannot be held open: header-read and idle timeouts, a cap on HTTP
//! connections per client IP, and client IPs taken from proxy headers only from trusted
//! proxies. Clients bind to other loopback addresses (127.0.0.2, ...) to be other IPs.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tidings_server::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A TCP connection to `server` from `from` (a loopback address).
async fn tcp_from(from: [u8; 4], server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("bind a loopback address");
    socket.connect(server).await.expect("connect")
}

/// Everything the server sends until it closes the connection (or `WAIT` passes: panic).
async fn read_to_close(tcp: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("the server closes the connection in time")
            .unwrap_or(0);
        if n == 0 {
            return String::from_utf8_lossy(&out).into_owned();
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// `GET path` on a fresh connection from `from`; returns the whole response.
async fn get_from(from: [u8; 4], server: SocketAddr, path: &str) -> String {
    let mut tcp = tcp_from(from, server).await;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    read_to_close(&mut tcp).await
}

#[tokio::test]
async fn connections_that_never_finish_a_request_are_closed() {
    let server = start(Config {
        http_header_timeout: Duration::from_millis(500),
        ..config()
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(tcp_from([127, 0, 0, 1], server.addr).await);
    }
    let mut partial = Vec::new();
    for _ in 0..50 {
        let mut tcp = tcp_from([127, 0, 0, 1], server.addr).await;
        tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        partial.push(tcp);
    }
    for tcp in silent.iter_mut().chain(partial.iter_mut()) {
        let answer = read_to_close(tcp).await;
        assert!(!answer.contains("200 OK"), "{answer}");
    }
    // A keep-alive connection that goes quiet after a request is closed too.
    let mut tcp = tcp_from([127, 0, 0, 1], server.addr).await;
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    assert!(read_to_close(&mut tcp).await.starts_with("HTTP/1.1 200 OK"));
}

#[tokio::test]
async fn a_stalled_request_body_is_closed_by_the_idle_timeout() {
    let server = start(Config {
        http_idle_timeout: Duration::from_millis(400),
        api_key: Some("k".into()),
        ..config()
    })
    .await;
    let mut tcp = tcp_from([127, 0, 0, 1], server.addr).await;
    tcp.write_all(
        b"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n\
          Content-Length: 100\r\n\r\n{\"topic\":",
    )
    .await
    .expect("write");
    let answer = read_to_close(&mut tcp).await;
    assert!(!answer.contains("200 OK"), "{answer}");
}

#[tokio::test]
async fn http_connections_are_capped_per_ip_and_others_are_served() {
    let server = start(Config {
        max_http_connections_per_ip: 100,
        http_header_timeout: Duration::from_secs(3),
        ..config()
    })
    .await;
    // 300 idle connections from one IP: 100 are held (until the header timeout), the rest
    // are answered 429 and closed at once.
    let mut conns = Vec::new();
    for _ in 0..300 {
        conns.push(tcp_from([127, 0, 0, 1], server.addr).await);
    }
    // Meanwhile another client is served.
    let health = get_from([127, 0, 0, 2], server.addr, "/health").await;
    assert!(health.starts_with("HTTP/1.1 200 OK"), "{health}");
    let mut refused = 0;
    for tcp in &mut conns {
        let answer = read_to_close(tcp).await;
        if answer.starts_with("HTTP/1.1 429") {
            assert!(answer.contains("UNAVAILABLE"), "{answer}");
            refused += 1;
        } else {
            assert_eq!(answer, "", "a held connection is closed without an answer");
        }
    }
    assert_eq!(refused, 200);
    let metrics = get_from([127, 0, 0, 2], server.addr, "/metrics").await;
    assert!(
        metrics.contains("connections_refused_total{reason=\"max_http_connections_per_ip\"} 200"),
        "{metrics}"
    );
    // The held ones were closed by the header timeout: the first IP is served again.
    let health = get_from([127, 0, 0, 1], server.addr, "/health").await;
    assert!(health.starts_with("HTTP/1.1 200 OK"), "{health}");
}

#[tokio::test]
async fn websockets_stop_counting_as_http_connections_once_upgraded() {
    let server = start(Config {
        max_http_connections_per_ip: 2,
        ..config()
    })
    .await;
    let mut clients = Vec::new();
    for i in 0..10 {
        clients.push(server.connect(&format!("u{i}")).await);
    }
    let health = get_from([127, 0, 0, 1], server.addr, "/health").await;
    assert!(health.starts_with("HTTP/1.1 200 OK"), "{health}");
    assert!(health.contains("\"clients\":10"), "{health}");
}

/// A WebSocket handshake from `from` with extra headers; the HTTP status it got.
async fn handshake_from(
    from: [u8; 4],
    server: &TestServer,
    user: &str,
    headers: &[(&'static str, &str)],
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, u16> {
    let tcp = tcp_from(from, server.addr).await;
    let mut request = server
        .ws_url(&token(user))
        .into_client_request()
        .expect("request");
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(*name, value.parse().expect("header"));
    }
    match tokio_tungstenite::client_async(request, tcp).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("handshake failed: {e}"),
    }
}

#[tokio::test]
async fn forwarded_client_ips_are_believed_only_from_trusted_proxies() {
    let server = start(Config {
        max_connections_per_ip: 1,
        trusted_proxies: vec![tidings_server::config::parse_cidr("127.0.0.1").expect("cidr")],
        ..config()
    })
    .await;
    let proxy = [127, 0, 0, 1];
    let _a = handshake_from(proxy, &server, "a", &[("x-forwarded-for", "198.51.100.1")])
        .await
        .expect("first client behind the proxy");
    let _b = handshake_from(proxy, &server, "b", &[("forwarded", "for=198.51.100.2")])
        .await
        .expect("another client behind the same proxy");
    assert_eq!(
        handshake_from(
            proxy,
            &server,
            "c",
            &[("x-forwarded-for", "6.6.6.6, 198.51.100.1")]
        )
        .await
        .err(),
        Some(429),
        "the same client again, whatever it prepends"
    );
    // Not a trusted proxy: its headers are ignored and its own IP counts.
    let untrusted = [127, 0, 0, 3];
    let _d = handshake_from(
        untrusted,
        &server,
        "d",
        &[("x-forwarded-for", "198.51.100.7")],
    )
    .await
    .expect("first from 127.0.0.3");
    assert_eq!(
        handshake_from(
            untrusted,
            &server,
            "e",
            &[("x-forwarded-for", "198.51.100.8")]
        )
        .await
        .err(),
        Some(429)
    );
}
