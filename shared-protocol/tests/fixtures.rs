//! Golden fixtures: every message kind, as JSON files beside this crate.
//!
//! The same files are read by the server's and the SDK's tests, so all three agree on the wire.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tidings_protocol::{ClientMessage, DecodeError, ErrorCode, ServerMessage};

fn fixtures(dir: &str) -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(dir);
    let mut out: Vec<_> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("read {}: {e}", root.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read fixture");
            (p, text.trim_end().to_owned())
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no fixtures in {}", root.display());
    out
}

fn value(text: &str) -> Value {
    serde_json::from_str(text).expect("fixture is JSON")
}

#[test]
fn client_fixtures_round_trip_and_cover_every_kind() {
    let mut kinds = BTreeSet::new();
    for (path, text) in fixtures("client") {
        let msg =
            ClientMessage::decode(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        kinds.insert(msg.kind());
        let again = serde_json::to_string(&msg).expect("encode");
        assert_eq!(
            value(&again),
            value(&text),
            "{} did not round-trip",
            path.display()
        );
    }
    let all = [
        "subscribe",
        "unsubscribe",
        "publish",
        "ping",
        "auth",
        "history",
        "append",
        "read",
        "presence",
        "presence_stats",
    ];
    assert_eq!(
        kinds,
        all.into_iter().collect(),
        "a client message kind has no fixture"
    );
}

#[test]
fn server_fixtures_round_trip_and_cover_every_kind() {
    let mut kinds = BTreeSet::new();
    for (path, text) in fixtures("server") {
        let msg =
            ServerMessage::decode(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        kinds.insert(msg.kind());
        assert_eq!(
            value(&msg.encode()),
            value(&text),
            "{} did not round-trip",
            path.display()
        );
    }
    let all = [
        "connected",
        "subscribed",
        "unsubscribed",
        "message",
        "pong",
        "heartbeat",
        "error",
        "published",
        "authenticated",
        "history",
        "appended",
        "events",
        "presence",
        "presence_stats",
        "join",
        "leave",
    ];
    assert_eq!(
        kinds,
        all.into_iter().collect(),
        "a server message kind has no fixture"
    );
}

#[test]
fn template_client_frames_decode_with_defaults() {
    for (path, text) in fixtures("template") {
        let msg =
            ClientMessage::decode(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match msg {
            ClientMessage::Subscribe(s) if path.ends_with("subscribe_no_topics.json") => {
                assert!(s.topics.is_empty())
            }
            ClientMessage::Publish(p) if path.ends_with("publish_no_data.json") => {
                assert_eq!(p.data.get(), "null")
            }
            _ => {}
        }
    }
}

#[test]
fn payloads_pass_through_byte_for_byte() {
    let text =
        r#"{"type":"publish","topic":"t","data":{"n":1.50,"big":123456789012345678901234567890}}"#;
    let ClientMessage::Publish(p) = ClientMessage::decode(text).expect("decode") else {
        panic!("not a publish")
    };
    assert_eq!(
        p.data.get(),
        r#"{"n":1.50,"big":123456789012345678901234567890}"#
    );
}

#[test]
fn decode_errors_are_precise() {
    let cases: [(&str, ErrorCode); 10] = [
        ("not json", ErrorCode::InvalidMessage),
        ("[1,2]", ErrorCode::InvalidMessage),
        ("\"publish\"", ErrorCode::InvalidMessage),
        // An object without a string `type` is an unknown type, as the template answers.
        (r#"{"topic":"x"}"#, ErrorCode::InvalidMessageType),
        (r#"{"type":42}"#, ErrorCode::InvalidMessageType),
        (r#"{"type":null,"ref":"r"}"#, ErrorCode::InvalidMessageType),
        (
            r#"{"type":"history","topic":"t","since":9007199254740992}"#,
            ErrorCode::InvalidMessage,
        ),
        (r#"{"type":"teleport"}"#, ErrorCode::InvalidMessageType),
        (r#"{"type":"publish","data":1}"#, ErrorCode::InvalidMessage),
        (
            r#"{"type":"subscribe","topics":"chat"}"#,
            ErrorCode::InvalidMessage,
        ),
    ];
    for (text, code) in cases {
        let err = ClientMessage::decode(text).expect_err(text);
        assert_eq!(err.code(), code, "{text}: {err}");
    }
    assert!(matches!(
        ClientMessage::decode(r#"{"type":"teleport"}"#),
        Err(DecodeError::UnknownType(t)) if t == "teleport"
    ));
}

#[test]
fn positions_are_range_checked_where_they_are_read() {
    let max = tidings_protocol::MAX_POSITION;
    let fields = [
        r#"{"type":"history","topic":"t","since":N}"#,
        r#"{"type":"read","stream":"s","from_version":N}"#,
        r#"{"type":"append","stream":"s","expected_version":N,"events":[{"type":"x"}]}"#,
        r#"{"type":"subscribe","topics":["t"],"since":{"t":{"offset":N}}}"#,
    ];
    for template in fields {
        let ok = template.replace('N', &max.to_string());
        assert!(ClientMessage::decode(&ok).is_ok(), "{ok}");
        for bad in [max + 1, u64::MAX] {
            let text = template.replace('N', &bad.to_string());
            let err = ClientMessage::decode(&text).expect_err(&text);
            assert_eq!(err.code(), ErrorCode::InvalidMessage, "{text}");
            assert!(err.to_string().contains("out of range"), "{err}");
        }
        for bad in ["-1", "1.5", "\"7\"", "18446744073709551616"] {
            let text = template.replace('N', bad);
            assert_eq!(
                ClientMessage::decode(&text).expect_err(&text).code(),
                ErrorCode::InvalidMessage,
                "{text}"
            );
        }
    }
}
