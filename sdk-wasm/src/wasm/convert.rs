//! Conversions between JS values and the core's types: options, errors, messages, replies.

use js_sys::{Array, Function, JSON, Object, Reflect};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use crate::core::wire::{self, ToJson};
use crate::core::{Config, Position, Reply, SdkError};
use tidings_protocol::NewEvent;
use tidings_protocol::server::Message;

/// Read `obj[key]`, `undefined` when `obj` is not an object.
pub fn get(obj: &JsValue, key: &str) -> JsValue {
    if obj.is_object() {
        Reflect::get(obj, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
    } else {
        JsValue::UNDEFINED
    }
}

fn set(obj: &JsValue, key: &str, value: &JsValue) {
    let _ = Reflect::set(obj, &JsValue::from_str(key), value);
}

fn get_ms(obj: &JsValue, key: &str) -> Option<u64> {
    get(obj, key)
        .as_f64()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| v as u64)
}

/// The parsed `new TidingsClient(options)` argument.
pub struct Options {
    /// Settings for the core.
    pub config: Config,
    /// `getToken`, if given.
    pub get_token: Option<Function>,
    /// `persistOffsets`.
    pub persist: bool,
}

/// Parse the constructor options; errors name the bad option.
pub fn options(value: &JsValue, instance_id: String) -> Result<Options, SdkError> {
    if !value.is_object() {
        return Err(SdkError::InvalidArgument(
            "options must be an object".into(),
        ));
    }
    let mut urls = Vec::new();
    if let Some(url) = get(value, "url").as_string() {
        urls.push(url);
    }
    let list = get(value, "urls");
    if Array::is_array(&list) {
        for u in Array::from(&list).iter() {
            urls.push(
                u.as_string()
                    .ok_or_else(|| SdkError::InvalidArgument("urls must be strings".into()))?,
            );
        }
    }
    let mut config = Config::new(urls, instance_id);
    config.token = get(value, "token").as_string();
    let get_token = get(value, "getToken").dyn_into::<Function>().ok();
    config.token_provider = get_token.is_some();
    let reconnect = get(value, "reconnect");
    if let Some(v) = get_ms(&reconnect, "minDelayMs") {
        config.min_delay_ms = v;
    }
    if let Some(v) = get_ms(&reconnect, "maxDelayMs") {
        config.max_delay_ms = v;
    }
    if let Some(v) = get_ms(value, "requestTimeoutMs") {
        config.request_timeout_ms = v;
    }
    if let Some(v) = get_ms(value, "connectTimeoutMs") {
        config.connect_timeout_ms = v;
    }
    if let Some(v) = get_ms(value, "outboxCapacity") {
        config.outbox_capacity = usize::try_from(v).unwrap_or(usize::MAX);
    }
    Ok(Options {
        config,
        get_token,
        persist: get(value, "persistOffsets").as_bool().unwrap_or(false),
    })
}

/// `subscribe`'s `since`: `"latest"`/absent → none, a number → that offset, `{offset, epoch}`.
pub fn since(value: &JsValue) -> Result<Option<Position>, SdkError> {
    let since = get(value, "since");
    if since.is_undefined() || since.is_null() || since.as_string().as_deref() == Some("latest") {
        return Ok(None);
    }
    if let Some(n) = since.as_f64().filter(|n| n.is_finite() && *n >= 0.0) {
        return Ok(Some(Position {
            offset: n as u64,
            epoch: None,
        }));
    }
    if let Some(n) = get(&since, "offset")
        .as_f64()
        .filter(|n| n.is_finite() && *n >= 0.0)
    {
        return Ok(Some(Position {
            offset: n as u64,
            epoch: get(&since, "epoch").as_string(),
        }));
    }
    Err(SdkError::InvalidArgument(
        "since must be \"latest\", an offset, or {offset, epoch}".into(),
    ))
}

/// A JS value as raw JSON text (`undefined` and functions are refused).
pub fn to_raw_json(value: &JsValue) -> Result<tidings_protocol::Json, SdkError> {
    let text = JSON::stringify(value)
        .ok()
        .and_then(|s| s.as_string())
        .ok_or_else(|| SdkError::InvalidArgument("data must be JSON-serializable".into()))?;
    wire::raw_json(&text).map_err(|_| SdkError::InvalidArgument("data must be JSON".into()))
}

/// Events for `append`: an array of `{type, data}`.
pub fn new_events(value: &JsValue) -> Result<Vec<NewEvent>, SdkError> {
    if !Array::is_array(value) {
        return Err(SdkError::InvalidArgument(
            "events must be an array of {type, data}".into(),
        ));
    }
    Array::from(value)
        .iter()
        .map(|e| {
            let r#type = get(&e, "type").as_string().ok_or_else(|| {
                SdkError::InvalidArgument("every event needs a string type".into())
            })?;
            let data = get(&e, "data");
            let data = if data.is_undefined() {
                tidings_protocol::json_null()
            } else {
                to_raw_json(&data)?
            };
            Ok(NewEvent { r#type, data })
        })
        .collect()
}

/// A protocol value as a plain JS value (via its JSON, so raw payloads stay exact).
pub fn to_js<T: ToJson + ?Sized>(value: &T) -> JsValue {
    JSON::parse(&value.to_json()).unwrap_or(JsValue::NULL)
}

/// A delivered message as `{topic, data, from, timestamp, offset?, epoch?}`.
pub fn message(m: &Message) -> JsValue {
    to_js(m)
}

/// A reply as the value its promise resolves with. Built directly (no `serde_json::Value`:
/// its map and drop glue cost several KB of wasm).
pub fn reply(r: &Reply) -> JsValue {
    match r {
        Reply::Published {
            topic,
            offset,
            epoch,
        } => {
            let o: JsValue = Object::new().into();
            set(&o, "topic", &JsValue::from_str(topic));
            set(
                &o,
                "offset",
                &offset.map_or(JsValue::NULL, |v| JsValue::from_f64(v as f64)),
            );
            set(
                &o,
                "epoch",
                &epoch.as_deref().map_or(JsValue::NULL, JsValue::from_str),
            );
            o
        }
        Reply::History(p) => {
            let o: JsValue = Object::new().into();
            set(&o, "topic", &JsValue::from_str(&p.topic));
            set(&o, "epoch", &JsValue::from_str(&p.epoch));
            set(&o, "messages", &to_js(&p.messages));
            set(&o, "latest", &JsValue::from_f64(p.latest as f64));
            set(&o, "more", &JsValue::from_bool(p.more));
            o
        }
        Reply::Appended { stream, version } => {
            let o: JsValue = Object::new().into();
            set(&o, "stream", &JsValue::from_str(stream));
            set(&o, "version", &JsValue::from_f64(*version as f64));
            o
        }
        Reply::Events(e) => to_js(e),
        Reply::Presence(p) => {
            let o: JsValue = Object::new().into();
            set(&o, "topic", &JsValue::from_str(&p.topic));
            set(&o, "members", &to_js(&p.members));
            set(&o, "more", &JsValue::from_bool(p.more));
            o
        }
        Reply::PresenceStats(p) => {
            let o: JsValue = Object::new().into();
            set(&o, "topic", &JsValue::from_str(&p.topic));
            set(&o, "clients", &JsValue::from_f64(p.clients as f64));
            set(&o, "users", &JsValue::from_f64(p.users as f64));
            o
        }
    }
}

/// An `Error` with `code` (and `currentVersion` for conflicts).
pub fn error(e: &SdkError) -> JsValue {
    let err: JsValue = js_sys::Error::new(&e.to_string()).into();
    set(&err, "code", &JsValue::from_str(e.code()));
    if let Some(v) = e.current_version() {
        set(&err, "currentVersion", &JsValue::from_f64(v as f64));
    }
    err
}

/// `{topic, recovered}` for `onRecovery`.
pub fn recovery(topic: &str, recovered: bool) -> JsValue {
    let o: JsValue = Object::new().into();
    set(&o, "topic", &JsValue::from_str(topic));
    set(&o, "recovered", &JsValue::from_bool(recovered));
    o
}
