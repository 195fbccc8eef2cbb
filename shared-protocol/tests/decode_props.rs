//! Property tests of the frame decoder: whatever a client sends, decoding never panics and
//! fails with exactly the documented error (docs/protocol.md, "Error codes"), echoing the
//! frame's `ref` whenever it can be read. An independent oracle (a plain `serde_json::Value`
//! parse) says what each input should get.
#![cfg(not(target_arch = "wasm32"))]

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use tidings_protocol::decode::envelope;
use tidings_protocol::{ClientMessage, DecodeError, ErrorCode, MAX_POSITION};

const KNOWN: [&str; 8] = [
    "subscribe",
    "unsubscribe",
    "publish",
    "ping",
    "auth",
    "history",
    "append",
    "read",
];

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Values that sit on the edges of what a field accepts.
fn edge_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(0)),
        Just(json!(MAX_POSITION)),
        Just(json!(MAX_POSITION + 1)),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!(1.5)),
        Just(json!("")),
        Just(json!("chat")),
        Just(json!(["chat", "news"])),
        Just(json!([""])),
        Just(json!({"chat": {"offset": 3, "epoch": "e"}})),
        Just(json!({"chat": {"offset": u64::MAX}})),
        Just(json!([{"type": "x", "data": {}}])),
        Just(json!([{"data": 1}])),
        any_json(),
    ]
}

/// Near-valid messages: a known (or almost known) type with plausible and edge fields.
fn near_valid() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        prop::sample::select(KNOWN.to_vec()).prop_map(Value::from),
        Just(json!("Publish")),
        Just(json!("publish ")),
        Just(json!(7)),
        Just(Value::Null),
    ];
    let field = prop::sample::select(vec![
        "topic",
        "topics",
        "data",
        "ref",
        "id",
        "since",
        "limit",
        "stream",
        "events",
        "expected_version",
        "from_version",
        "token",
    ]);
    (
        prop::option::of(kind),
        prop::collection::btree_map(field, edge_value(), 0..6),
    )
        .prop_map(|(kind, fields)| {
            let mut object: Map<String, Value> =
                fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            if let Some(kind) = kind {
                object.insert("type".into(), kind);
            }
            Value::Object(object)
        })
}

/// What the decoder must answer for `text`, by a route independent of it.
fn oracle(text: &str) -> Result<(), ErrorCode> {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return Err(ErrorCode::InvalidMessage);
    };
    let Some(object) = value.as_object() else {
        return Err(ErrorCode::InvalidMessage);
    };
    match object.get("type").and_then(Value::as_str) {
        Some(kind) if KNOWN.contains(&kind) => Ok(()),
        _ => Err(ErrorCode::InvalidMessageType),
    }
}

fn check(text: &str) -> Result<(), TestCaseError> {
    let decoded = ClientMessage::decode(text);
    match (oracle(text), &decoded) {
        // A known type: it decodes, or its fields are wrong (INVALID_MESSAGE).
        (Ok(()), Ok(_)) => {}
        (Ok(()), Err(e)) => prop_assert_eq!(e.code(), ErrorCode::InvalidMessage, "{}", text),
        (Err(code), Err(e)) => prop_assert_eq!(e.code(), code, "{}: {}", text, e),
        (Err(code), Ok(m)) => {
            prop_assert!(false, "{} decoded as {:?}, expected {:?}", text, m, code)
        }
    }
    if let (Ok(Value::Object(object)), Err(_)) = (serde_json::from_str::<Value>(text), &decoded) {
        // The ref of an object that failed to decode is still readable for the error reply.
        let expected = object.get("ref").and_then(Value::as_str);
        let read = envelope(text)
            .ok()
            .and_then(|e| e.r#ref.map(|r| r.into_owned()));
        prop_assert_eq!(read.as_deref(), expected, "{}", text);
    }
    // Positions are never accepted out of range.
    if let Ok(msg) = &decoded {
        let positions: Vec<u64> = match msg {
            ClientMessage::History(h) => h.since.into_iter().collect(),
            ClientMessage::Read(r) => r.from_version.into_iter().collect(),
            ClientMessage::Append(a) => a.expected_version.into_iter().collect(),
            ClientMessage::Subscribe(s) => s
                .since
                .iter()
                .flat_map(|m| m.values().map(|p| p.offset))
                .collect(),
            _ => Vec::new(),
        };
        prop_assert!(positions.iter().all(|p| *p <= MAX_POSITION), "{}", text);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_and_get_the_documented_error(
        bytes in prop::collection::vec(any::<u8>(), 0..128)
    ) {
        let text = String::from_utf8_lossy(&bytes);
        check(&text)?;
    }

    #[test]
    fn arbitrary_json_gets_the_documented_error(value in any_json()) {
        check(&value.to_string())?;
    }

    #[test]
    fn near_valid_messages_decode_or_get_the_documented_error(value in near_valid()) {
        check(&value.to_string())?;
    }
}

#[test]
fn a_repeated_type_or_ref_is_malformed() {
    for text in [
        r#"{"type":"ping","type":"ping"}"#,
        r#"{"type":"ping","ref":"a","ref":"b"}"#,
    ] {
        assert!(
            matches!(ClientMessage::decode(text), Err(DecodeError::Malformed(_))),
            "{text}"
        );
    }
}
