//! The WebSocket layer by the letter of RFC 6455: the close handshake is completed (§5.5.1,
//! §7.1), and protocol faults are answered with the close code §7.4.1 gives them, as a close
//! frame that actually reaches the client.

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
