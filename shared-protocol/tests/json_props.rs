//! Property tests of the small JSON reader (`tidings_protocol::json`), which the browser SDK
//! runs on every frame the network hands it: serde_json is the oracle. On any text, near-JSON
//! or not, the reader accepts exactly what serde_json's raw-value reader accepts and never
//! panics; on any JSON value it keeps the exact text and reads strings and integers as serde
//! does.
#![cfg(not(target_arch = "wasm32"))]

use proptest::prelude::*;
use serde_json::Value;
use tidings_protocol::Json;
use tidings_protocol::RawValue;
use tidings_protocol::json::{Fields, Reader, read_all};

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
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::btree_map(".{0,6}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Text made of JSON's own characters (and a few others), so that most of it is almost JSON:
/// where parsers tend to disagree.
fn near_json() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        Just("{"),
        Just("}"),
        Just("["),
        Just("]"),
        Just(","),
        Just(":"),
        Just("\""),
        Just("\\"),
        Just("\\u"),
        Just("\\ud83d"),
        Just("\\ude00"),
        Just("\\n"),
        Just("0"),
        Just("1"),
        Just("9"),
        Just("-"),
        Just("+"),
        Just("."),
        Just("e"),
        Just("E"),
        Just("true"),
        Just("false"),
        Just("null"),
        Just(" "),
        Just("\n"),
        Just("\t"),
        Just("a"),
        Just("é"),
        Just("\u{1}"),
        Just("\"k\":"),
        Just("1e400"),
        Just("00"),
    ];
    prop::collection::vec(pieces, 0..24).prop_map(|p| p.concat())
}

/// serde_json's verdict on `text` as one JSON value (its raw-value reader checks syntax
/// without building strings, as ours does when it skips a value).
fn serde_accepts(text: &str) -> bool {
    serde_json::from_str::<Box<RawValue>>(text).is_ok()
}

fn ours_accepts(text: &str) -> bool {
    read_all(text, |r| r.value().map(drop)).is_ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn near_json_is_accepted_exactly_when_serde_json_accepts_it(text in near_json()) {
        prop_assert_eq!(ours_accepts(&text), serde_accepts(&text), "{:?}", text);
    }

    #[test]
    fn valid_json_with_one_edit_is_accepted_exactly_when_serde_json_accepts_it(
        value in any_json(),
        at in any::<prop::sample::Index>(),
        cut in 0usize..3,
        insert in near_json(),
    ) {
        let text = serde_json::to_string(&value).expect("json");
        let chars: Vec<char> = text.chars().collect();
        let i = at.index(chars.len() + 1);
        let end = (i + cut).min(chars.len());
        let edited: String = chars[..i]
            .iter()
            .chain(insert.chars().collect::<Vec<_>>().iter())
            .chain(chars[end..].iter())
            .collect();
        prop_assert_eq!(ours_accepts(&edited), serde_accepts(&edited), "{:?}", edited);
    }

    #[test]
    fn arbitrary_text_never_panics_and_agrees(text in ".{0,40}") {
        prop_assert_eq!(ours_accepts(&text), serde_accepts(&text), "{:?}", text);
        let _ = Fields::of(&text);
    }

    #[test]
    fn any_value_is_kept_exactly_and_reads_as_serde_reads_it(value in any_json()) {
        for text in [serde_json::to_string(&value).expect("json"),
                     serde_json::to_string_pretty(&value).expect("json")] {
            let span = read_all(&text, |r| r.value());
            prop_assert_eq!(span, Ok(text.as_str()));
            let parsed = Json::parse(text.as_str()).expect("valid");
            prop_assert_eq!(parsed.get(), text.trim());
            match &value {
                Value::String(s) => {
                    prop_assert_eq!(read_all(&text, Reader::string).map(|c| c.into_owned()),
                                    Ok(s.clone()));
                }
                Value::Number(n) => {
                    let ours = read_all(&text, Reader::u64).ok();
                    prop_assert_eq!(ours, serde_json::from_str::<u64>(&text).ok());
                    prop_assert_eq!(ours, n.as_u64().filter(|_| !text.contains(['.', 'e', 'E'])));
                }
                Value::Object(map) => {
                    let fields = Fields::of(&text).expect("object");
                    prop_assert_eq!(fields.iter().count(), map.len());
                    for (k, v) in map {
                        let raw = fields.get(k).expect("once").expect("present");
                        // Both sides through serde's float reading, which is not exact.
                        let alone = serde_json::to_string(v).expect("json");
                        prop_assert_eq!(
                            serde_json::from_str::<Value>(raw).expect("json"),
                            serde_json::from_str::<Value>(&alone).expect("json")
                        );
                    }
                }
                _ => {}
            }
        }
    }
}
