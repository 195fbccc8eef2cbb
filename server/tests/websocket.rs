//! The WebSocket layer by the letter of RFC 6455: the opening handshake (§4.2), the frame
//! rules (§5), the close handshake completed (§5.5.1, §7.1), and protocol faults answered
//! with the close code §7.4.1 gives them, as a close frame that actually reaches the client.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

/// Read until the server's close frame; returns its code (panics if the TCP connection just
/// drops, which a browser reports as `wasClean = false`).
async fn close_code(c: &mut Client) -> u16 {
    loop {
        let frame = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("a close frame in time");
        match frame {
            Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
            Some(Ok(Message::Close(None))) => panic!("a close frame without a code"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("no close frame, the connection failed: {e}"),
            None => panic!("no close frame, the connection just ended"),
        }
    }
}

#[tokio::test]
async fn a_client_close_is_echoed() {
    let server = start(config()).await;
    let mut c = server.connect("alice").await;
    c.ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .expect("send close");
    assert_eq!(close_code(&mut c).await, 1000);
    // The server then closes the TCP connection.
    let end = tokio::time::timeout(WAIT, c.ws.next()).await.expect("end");
    assert!(matches!(end, None | Some(Err(_))), "{end:?}");
    server.wait_for_clients(0).await;
    // Other codes a client may send are echoed as they are.
    let mut c = server.connect("alice").await;
    c.ws.close(Some(CloseFrame {
        code: CloseCode::Library(4100),
        reason: "".into(),
    }))
    .await
    .expect("send close");
    assert_eq!(close_code(&mut c).await, 4100);
}

#[tokio::test]
async fn close_codes_that_may_not_be_sent_get_1002() {
    let server = start(config()).await;
    // 1005, 1006 and 1015 are reserved for reports, never for the wire; 999 and 5000 are
    // outside every range; 1016 to 2999 are unassigned.
    for code in [999u16, 1005, 1006, 1015, 1016, 2999, 5000] {
        let mut c = server.connect("alice").await;
        let frame = Frame::close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        }));
        c.ws.send(Message::Frame(frame)).await.expect("send close");
        assert_eq!(close_code(&mut c).await, 1002, "close code {code}");
    }
    // A close frame with a one-byte body is malformed.
    let mut c = server.connect("alice").await;
    let header = FrameHeader {
        opcode: OpCode::Control(Control::Close),
        ..FrameHeader::default()
    };
    let frame = Frame::from_payload(header, vec![3u8].into());
    c.ws.send(Message::Frame(frame)).await.expect("send");
    assert_eq!(close_code(&mut c).await, 1002);
}

#[tokio::test]
async fn text_that_is_not_utf8_gets_1007() {
    let server = start(config()).await;
    let mut c = server.connect("alice").await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    c.ws.send(Message::Frame(frame)).await.expect("send");
    assert_eq!(close_code(&mut c).await, 1007);
    server.wait_for_clients(0).await;
}

#[tokio::test]
async fn protocol_violations_get_1002_and_others_are_unaffected() {
    let server = start(config()).await;
    let mut bystander = server.connect("bob").await;
    bystander.subscribe(&["t"]).await;
    // Reserved bits without an extension that defines them (§5.2).
    let mut c = server.connect("alice").await;
    let mut frame = Frame::message("{}", OpCode::Data(Data::Text), true);
    frame.header_mut().rsv1 = true;
    c.ws.send(Message::Frame(frame)).await.expect("send");
    assert_eq!(close_code(&mut c).await, 1002);
    // A continuation frame with nothing to continue (§5.4).
    let mut c = server.connect("alice").await;
    let frame = Frame::message("x", OpCode::Data(Data::Continue), true);
    c.ws.send(Message::Frame(frame)).await.expect("send");
    assert_eq!(close_code(&mut c).await, 1002);
    // The server and its other clients carry on.
    let mut publisher = server.connect("carol").await;
    publisher
        .send(r#"{"type":"publish","topic":"t","data":1}"#)
        .await;
    assert!(matches!(
        bystander.recv().await,
        tidings_protocol::ServerMessage::Message(_)
    ));
}

/// Send `request` on a fresh TCP connection and read the response head (up to the blank
/// line), lowercased.
async fn raw_handshake(
    server: &TestServer,
    request: impl AsRef<[u8]>,
) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    tcp.write_all(request.as_ref()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut byte))
            .await
            .expect("a response in time")
            .expect("read");
        assert_eq!(
            n,
            1,
            "the response ended early: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    (tcp, String::from_utf8_lossy(&head).to_lowercase())
}

fn upgrade_request(token: &str, method: &str, headers: &[&str]) -> String {
    let mut request = format!("{method} /ws?token={token} HTTP/1.1\r\nhost: localhost\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request
}

const KEY: &str = "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==";
const VERSION: &str = "sec-websocket-version: 13";
const UPGRADE: &str = "upgrade: websocket";
const CONNECTION: &str = "connection: keep-alive, Upgrade";

#[tokio::test]
async fn the_opening_handshake_follows_rfc_6455() {
    let server = start(config()).await;
    let t = token("alice");
    // The RFC's own example key gets the RFC's accept value (§1.3), and the switch happens.
    let (_tcp, head) = raw_handshake(
        &server,
        &upgrade_request(&t, "GET", &[CONNECTION, UPGRADE, VERSION, KEY]),
    )
    .await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    assert!(head.contains("upgrade: websocket"), "{head}");
    // Another version: 426 naming the one there is (§4.4).
    let (_tcp, head) = raw_handshake(
        &server,
        &upgrade_request(
            &t,
            "GET",
            &[CONNECTION, UPGRADE, "sec-websocket-version: 8", KEY],
        ),
    )
    .await;
    assert!(head.starts_with("http/1.1 426"), "{head}");
    assert!(head.contains("sec-websocket-version: 13"), "{head}");
    // A key that is not 16 bytes of base64, or none (§4.2.1): 400.
    for key in ["sec-websocket-key: c2hvcnQ=", "sec-websocket-key: %%%"] {
        let (_tcp, head) = raw_handshake(
            &server,
            &upgrade_request(&t, "GET", &[CONNECTION, UPGRADE, VERSION, key]),
        )
        .await;
        assert!(head.starts_with("http/1.1 400"), "{key}: {head}");
    }
    let (_tcp, head) = raw_handshake(
        &server,
        &upgrade_request(&t, "GET", &[CONNECTION, UPGRADE, VERSION]),
    )
    .await;
    assert!(head.starts_with("http/1.1 400"), "{head}");
    // Not an upgrade at all: 400; not a GET: 405 with Allow (RFC 9110 §15.5.6).
    let (_tcp, head) = raw_handshake(&server, &upgrade_request(&t, "GET", &[VERSION, KEY])).await;
    assert!(head.starts_with("http/1.1 400"), "{head}");
    let (_tcp, head) = raw_handshake(
        &server,
        &upgrade_request(
            &t,
            "POST",
            &[CONNECTION, UPGRADE, VERSION, KEY, "content-length: 0"],
        ),
    )
    .await;
    assert!(head.starts_with("http/1.1 405"), "{head}");
    assert!(head.contains("allow: get"), "{head}");
    // HTTP/1.0 cannot upgrade (§4.2.1: "HTTP/1.1 or higher").
    let old = upgrade_request(&t, "GET", &[CONNECTION, UPGRADE, VERSION, KEY])
        .replacen("HTTP/1.1", "HTTP/1.0", 1);
    let (_tcp, head) = raw_handshake(&server, &old).await;
    assert!(head.contains(" 400 "), "{head}");
    // The server keeps serving.
    let mut c = server.connect("alice").await;
    c.subscribe(&["t"]).await;
}

#[tokio::test]
async fn an_unmasked_client_frame_gets_1002() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start(config()).await;
    let (mut tcp, head) = raw_handshake(
        &server,
        &upgrade_request(&token("alice"), "GET", &[CONNECTION, UPGRADE, VERSION, KEY]),
    )
    .await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // §5.1: a server must close on an unmasked frame.
    tcp.write_all(b"\x81\x02{}").await.expect("write");
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut got))
        .await
        .expect("closed in time")
        .expect("read");
    // The `connected` frame, then a close frame with 1002.
    let close = got
        .windows(4)
        .position(|w| w[0] == 0x88 && w[2..4] == 1002u16.to_be_bytes())
        .expect("a close frame with 1002");
    assert_eq!(got[0], 0x81, "the connected frame comes first");
    assert!(close > 0);
}

#[tokio::test]
async fn pings_get_their_data_back_and_fragments_make_one_message() {
    let server = start(config()).await;
    let mut c = server.connect("alice").await;
    c.ws.send(Message::Ping(b"still there?".to_vec().into()))
        .await
        .expect("ping");
    loop {
        match tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("pong in time")
        {
            Some(Ok(Message::Pong(data))) => {
                assert_eq!(&data[..], b"still there?");
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    }
    // A publish in three fragments with a ping between them (§5.4) is one message.
    let text = r#"{"type":"publish","topic":"frag","data":{"n":1},"ref":"r1"}"#;
    let (a, rest) = text.split_at(10);
    let (b, z) = rest.split_at(20);
    let frames = [
        Frame::message(a.to_owned(), OpCode::Data(Data::Text), false),
        Frame::ping(b"mid".to_vec()),
        Frame::message(b.to_owned(), OpCode::Data(Data::Continue), false),
        Frame::message(z.to_owned(), OpCode::Data(Data::Continue), true),
    ];
    for frame in frames {
        c.ws.send(Message::Frame(frame)).await.expect("send");
    }
    match c.recv().await {
        tidings_protocol::ServerMessage::Published(p) => {
            assert_eq!((p.r#ref.as_deref(), p.topic.as_str()), (Some("r1"), "frag"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_message_limit_counts_every_fragment() {
    let mut cfg = config();
    cfg.max_message_bytes = 1024;
    let server = start(cfg).await;
    let mut c = server.connect("alice").await;
    // Two fragments of 600 bytes: each under the limit, the message over it.
    let part = "x".repeat(600);
    c.ws.send(Message::Frame(Frame::message(
        part.clone(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .expect("send");
    c.ws.send(Message::Frame(Frame::message(
        part,
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .expect("send");
    assert_eq!(close_code(&mut c).await, 1009);
}

#[tokio::test]
async fn frames_sent_with_the_handshake_are_read() {
    use tokio::io::AsyncReadExt;
    let server = start(config()).await;
    // The request and a masked ping ("hi") in one write: hyper reads both, and the bytes
    // past the request reach the WebSocket.
    let mut request =
        upgrade_request(&token("alice"), "GET", &[CONNECTION, UPGRADE, VERSION, KEY]).into_bytes();
    let mask = [1u8, 2, 3, 4];
    request.extend_from_slice(&[0x89, 0x82]);
    request.extend_from_slice(&mask);
    request.extend(b"hi".iter().zip(mask).map(|(b, m)| b ^ m));
    let (mut tcp, head) = raw_handshake(&server, &request).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // `connected` (a text frame), then the pong with the ping's data.
    let mut got = Vec::new();
    let mut chunk = [0u8; 512];
    while !got.windows(4).any(|w| w == b"\x8a\x02hi") {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("the pong in time")
            .expect("read");
        assert!(n > 0, "the connection ended: {got:?}");
        got.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(got[0], 0x81, "the connected frame comes first");
}
