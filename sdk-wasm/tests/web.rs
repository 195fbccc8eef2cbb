//! Browser tests: the JS API in headless Chromium against a real `tidings` server.
//!
//! Run by `scripts/test-browser`, which starts the server through
//! `tests/support/harness.mjs` and passes its URLs at compile time:
//! `TIDINGS_TEST_WS` (the WebSocket endpoint) and `TIDINGS_TEST_CONTROL` (token minting and
//! kill/start of the server on the same port and data dir). The server runs the durable SQLite
//! store in a fresh temporary directory; topics named `eph-*` are ephemeral.
//!
//! Synchronisation rule: never sleep and hope. Wait for an observable event (a state, a message,
//! a settled promise) with a timeout, or for a round trip on the same connection (the server
//! answers one connection's frames in order).

#![cfg(target_arch = "wasm32")]

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use js_sys::{Function, Object, Promise, Reflect};
use tidings_sdk::wasm::TidingsClient;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const WS: Option<&str> = option_env!("TIDINGS_TEST_WS");
const CONTROL: Option<&str> = option_env!("TIDINGS_TEST_CONTROL");

fn ws() -> &'static str {
    WS.expect("TIDINGS_TEST_WS is not set: run scripts/test-browser")
}

/// Pause (pacing a publisher only: never used to wait for something to happen).
async fn sleep(ms: i32) {
    let p = Promise::new(&mut |resolve, _| {
        if let Some(w) = web_sys::window() {
            let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
        }
    });
    let _ = JsFuture::from(p).await;
}

async fn control(path: &str) -> String {
    let base = CONTROL.expect("TIDINGS_TEST_CONTROL is not set: run scripts/test-browser");
    let window = web_sys::window().expect("window");
    let resp = JsFuture::from(window.fetch_with_str(&format!("{base}{path}")))
        .await
        .expect("control request");
    let resp: web_sys::Response = resp.unchecked_into();
    assert!(resp.ok(), "control {path}: HTTP {}", resp.status());
    let text = JsFuture::from(resp.text().expect("text"))
        .await
        .expect("body");
    text.as_string().unwrap_or_default()
}

async fn token(sub: &str, ttl_secs: u32) -> String {
    control(&format!("/token?sub={sub}&ttl={ttl_secs}")).await
}

/// Poll `cond` every 20 ms until it holds, or fail after `ms`.
async fn wait_until(what: &str, ms: u32, cond: impl Fn() -> bool) {
    let mut waited = 0;
    while !cond() {
        assert!(waited < ms, "timed out after {ms} ms waiting for {what}");
        sleep(20).await;
        waited += 20;
    }
}

/// Await `p`, failing the test after `ms`.
async fn settle(what: &str, ms: i32, p: Promise) -> Result<JsValue, JsValue> {
    let what = what.to_owned();
    let timeout = Promise::new(&mut |_, reject| {
        let msg = JsValue::from_str(&format!("timed out after {ms} ms waiting for {what}"));
        let f = Closure::once_into_js(move || {
            let _ = reject.call1(&JsValue::NULL, &msg);
        });
        if let Some(w) = web_sys::window() {
            let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(f.unchecked_ref(), ms);
        }
    });
    let race = Promise::race(&js_sys::Array::of2(&p, &timeout));
    let out = JsFuture::from(race).await;
    if let Err(e) = &out
        && e.as_string().is_some_and(|m| m.starts_with("timed out"))
    {
        panic!("{}", e.as_string().unwrap_or_default());
    }
    out
}

async fn ok(what: &str, p: Promise) -> JsValue {
    match settle(what, 20_000, p).await {
        Ok(v) => v,
        Err(e) => panic!("{what} failed: {e:?}"),
    }
}

fn publish(c: &TidingsClient, topic: &str, n: u32) -> Promise {
    Promise::from(JsValue::from(
        c.publish(topic.to_owned(), obj(&[("n", n.into())])),
    ))
}

/// A round trip on `c`'s connection: everything it sent before (a `subscribe`) is processed.
async fn round_trip(c: &TidingsClient, topic: &str) {
    let p = Promise::from(JsValue::from(c.history(
        topic.to_owned(),
        Some(obj(&[("limit", 0.into())]).unchecked_into()),
    )));
    ok("a history round trip", p).await;
}

fn offsets(log: &Rc<RefCell<Vec<JsValue>>>) -> Vec<f64> {
    log.borrow()
        .iter()
        .filter_map(|m| get(m, "offset").as_f64())
        .collect()
}

fn seq(range: std::ops::RangeInclusive<u32>) -> Vec<f64> {
    range.map(f64::from).collect()
}

fn obj(pairs: &[(&str, JsValue)]) -> JsValue {
    let o = Object::new();
    for (k, v) in pairs {
        Reflect::set(&o, &JsValue::from_str(k), v).expect("set");
    }
    o.into()
}

fn get(v: &JsValue, k: &str) -> JsValue {
    Reflect::get(v, &JsValue::from_str(k)).unwrap_or(JsValue::UNDEFINED)
}

fn fast_reconnect() -> JsValue {
    obj(&[
        ("minDelayMs", JsValue::from(100)),
        ("maxDelayMs", JsValue::from(500)),
    ])
}

fn client(token: &str) -> TidingsClient {
    let opts = obj(&[
        ("url", JsValue::from_str(ws())),
        ("token", JsValue::from_str(token)),
        ("reconnect", fast_reconnect()),
    ]);
    TidingsClient::new(opts.unchecked_into()).expect("client")
}

/// A JS function that records its first argument.
fn recorder() -> (Function, Rc<RefCell<Vec<JsValue>>>) {
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    let f = Closure::<dyn FnMut(JsValue)>::new(move |v: JsValue| l.borrow_mut().push(v));
    (f.into_js_value().unchecked_into(), log)
}

fn states(c: &TidingsClient) -> Rc<RefCell<Vec<JsValue>>> {
    let (f, log) = recorder();
    c.on_state_change(f.unchecked_into());
    log
}

fn is_connected(c: &TidingsClient) -> bool {
    JsValue::from(c.state()).as_string().as_deref() == Some("connected")
}

fn state_name(c: &TidingsClient) -> String {
    JsValue::from(c.state()).as_string().unwrap_or_default()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", (js_sys::Math::random() * 1e9) as u64)
}

fn texts(log: &Rc<RefCell<Vec<JsValue>>>) -> Vec<f64> {
    log.borrow()
        .iter()
        .filter_map(|m| get(&get(m, "data"), "n").as_f64())
        .collect()
}

async fn connected(c: &TidingsClient, what: &str) {
    wait_until(what, 10_000, || is_connected(c)).await;
}

#[wasm_bindgen_test]
async fn connects_reports_state_and_closes() {
    let c = client(&token("alice", 3600).await);
    let seen = states(&c);
    connected(&c, "alice connected").await;
    c.close();
    let seen: Vec<String> = seen.borrow().iter().filter_map(|v| v.as_string()).collect();
    assert_eq!(seen, ["connected", "closed"]);
    assert_eq!(state_name(&c), "closed");
}

#[wasm_bindgen_test]
async fn publish_is_acknowledged_and_reaches_another_client() {
    let topic = unique("chat");
    let a = client(&token("alice", 3600).await);
    let b = client(&token("bob", 3600).await);
    let (handler, got) = recorder();
    let _sub = a
        .subscribe(topic.clone(), handler.unchecked_into(), None)
        .expect("subscribe");
    connected(&a, "a").await;
    connected(&b, "b").await;
    round_trip(&a, &topic).await; // a's subscribe has been processed
    let ack = ok("publish acknowledged", publish(&b, &topic, 1)).await;
    assert_eq!(
        get(&ack, "topic").as_string().as_deref(),
        Some(topic.as_str())
    );
    assert_eq!(get(&ack, "offset").as_f64(), Some(1.0), "durable: offset 1");
    assert!(
        get(&ack, "epoch")
            .as_string()
            .is_some_and(|e| !e.is_empty())
    );
    wait_until("a receives the message", 5_000, || !got.borrow().is_empty()).await;
    let m = got.borrow()[0].clone();
    assert_eq!(
        get(&m, "topic").as_string().as_deref(),
        Some(topic.as_str())
    );
    assert_eq!(get(&get(&m, "data"), "n").as_f64(), Some(1.0));
    assert!(get(&m, "from").as_string().is_some_and(|f| !f.is_empty()));
    assert_eq!(get(&m, "offset").as_f64(), Some(1.0));
    a.close();
    b.close();
}

#[wasm_bindgen_test]
async fn client_side_errors_have_codes_and_close_rejects_queued_publishes() {
    // Nothing listens on port 9: the client stays offline and queues.
    let opts = obj(&[
        ("url", JsValue::from_str("ws://127.0.0.1:9/ws")),
        ("token", JsValue::from_str("x")),
    ]);
    let c = TidingsClient::new(opts.unchecked_into()).expect("client");
    let bad = JsFuture::from(Promise::from(JsValue::from(
        c.publish(String::new(), 1.into()),
    )))
    .await;
    let err = bad.expect_err("empty topic");
    assert!(err.is_instance_of::<js_sys::Error>());
    assert_eq!(
        get(&err, "code").as_string().as_deref(),
        Some("INVALID_ARGUMENT")
    );
    let queued = Promise::from(JsValue::from(c.publish("t".into(), 1.into())));
    c.close();
    let err = JsFuture::from(queued).await.expect_err("closed");
    assert_eq!(get(&err, "code").as_string().as_deref(), Some("CLOSED"));
    assert!(
        TidingsClient::new(obj(&[]).unchecked_into()).is_err(),
        "no url"
    );
}

#[wasm_bindgen_test]
async fn token_refresh_through_get_token_keeps_the_subscription() {
    let topic = unique("refresh");
    let calls = Rc::new(Cell::new(0u32));
    let c2 = calls.clone();
    // Three-second tokens: the SDK refreshes in-band at about 2.4 s.
    let get_token = Closure::<dyn FnMut() -> Promise>::new(move || {
        c2.set(c2.get() + 1);
        wasm_bindgen_futures::future_to_promise(async move {
            Ok(JsValue::from_str(&token("carol", 3).await))
        })
    });
    let a = TidingsClient::new(
        obj(&[
            ("url", JsValue::from_str(ws())),
            ("getToken", get_token.into_js_value()),
            ("reconnect", fast_reconnect()),
        ])
        .unchecked_into(),
    )
    .expect("client");
    let seen = states(&a);
    let (errors_cb, errors) = recorder();
    a.on_error(errors_cb.unchecked_into());
    let (handler, got) = recorder();
    let _sub = a
        .subscribe(topic.clone(), handler.unchecked_into(), None)
        .expect("subscribe");
    connected(&a, "carol connected").await;
    // Call 1 connects, 2 and 3 refresh; call 4 is only scheduled once refresh 2 was accepted.
    wait_until("two accepted refreshes", 20_000, || calls.get() >= 4).await;
    assert!(
        errors.borrow().is_empty(),
        "refresh accepted: {:?}",
        errors.borrow()
    );
    let seen: Vec<String> = seen.borrow().iter().filter_map(|v| v.as_string()).collect();
    assert_eq!(seen, ["connected"], "never dropped the connection");
    // The subscription still works.
    let b = client(&token("dave", 3600).await);
    connected(&b, "b").await;
    ok("ack", publish(&b, &topic, 7)).await;
    wait_until("message after refresh", 5_000, || !got.borrow().is_empty()).await;
    a.close();
    b.close();
}

#[wasm_bindgen_test]
async fn sigkill_during_a_stream_of_publishes_loses_nothing_and_duplicates_nothing() {
    const N: u32 = 60;
    let topic = unique("durable");
    // A listens (default `since`: latest). B publishes 1..N without waiting for acks while the
    // server is SIGKILLed and restarted on the same port and data dir; B gets its token from
    // `getToken`, so the reconnect also proves it is called again.
    let a = client(&token("alice", 3600).await);
    let a_states = states(&a);
    let (handler, got) = recorder();
    let (on_recovery, recoveries) = recorder();
    let sub = a
        .subscribe(topic.clone(), handler.unchecked_into(), None)
        .expect("subscribe");
    sub.on_recovery(on_recovery.unchecked_into());
    let token_calls = Rc::new(Cell::new(0u32));
    let calls = token_calls.clone();
    let get_token = Closure::<dyn FnMut() -> Promise>::new(move || {
        calls.set(calls.get() + 1);
        wasm_bindgen_futures::future_to_promise(async {
            Ok(JsValue::from_str(&token("bob", 3600).await))
        })
    });
    let b = Rc::new(
        TidingsClient::new(
            obj(&[
                ("url", JsValue::from_str(ws())),
                ("getToken", get_token.into_js_value()),
                ("reconnect", fast_reconnect()),
            ])
            .unchecked_into(),
        )
        .expect("client b"),
    );
    connected(&a, "a").await;
    connected(&b, "b").await;
    round_trip(&a, &topic).await;

    // 0: running, 1: server killed, 2: server restarted.
    let phase = Rc::new(Cell::new(0u8));
    let issued = Rc::new(Cell::new(0u32));
    let acks: Rc<RefCell<Vec<Promise>>> = Rc::default();
    let done = Rc::new(Cell::new(false));
    {
        let (b, topic, phase, issued, acks, done) = (
            b.clone(),
            topic.clone(),
            phase.clone(),
            issued.clone(),
            acks.clone(),
            done.clone(),
        );
        wasm_bindgen_futures::spawn_local(async move {
            for n in 1..=N {
                acks.borrow_mut().push(publish(&b, &topic, n));
                issued.set(n);
                // Hold at fixed points so that, whatever the timing, some publishes are in
                // flight at the kill and some are made while the server is down.
                if n == 25 {
                    wait_until("the kill", 20_000, || phase.get() >= 1).await;
                } else if n == 40 {
                    wait_until("the restart", 20_000, || phase.get() >= 2).await;
                }
                sleep(5).await; // pacing: a stream, not a burst
            }
            done.set(true);
        });
    }
    wait_until("a has 10 messages", 10_000, || got.borrow().len() >= 10).await;
    control("/kill").await;
    phase.set(1);
    wait_until("a notices", 10_000, || state_name(&a) == "reconnecting").await;
    wait_until("15 publishes while down", 10_000, || issued.get() >= 40).await;
    control("/start").await;
    phase.set(2);
    wait_until("all publishes issued", 20_000, || done.get()).await;

    let acks: Vec<Promise> = acks.borrow().clone();
    let mut acked = Vec::new();
    for p in acks {
        acked.push(
            get(&ok("publish ack", p).await, "offset")
                .as_f64()
                .unwrap_or(-1.0),
        );
    }
    assert_eq!(acked, seq(1..=N), "each publish stored once, in order");
    // A sentinel after everything: once A has it, nothing older can still be on its way.
    ok("sentinel ack", publish(&b, &topic, N + 1)).await;
    wait_until("a has every message", 20_000, || {
        got.borrow().len() > N as usize
    })
    .await;
    assert_eq!(offsets(&got), seq(1..=N + 1), "offsets once each, in order");
    assert_eq!(texts(&got), seq(1..=N + 1), "payloads once each, in order");
    let recoveries = recoveries.borrow();
    assert!(!recoveries.is_empty(), "onRecovery after the reconnect");
    assert!(
        recoveries
            .iter()
            .all(|r| get(r, "recovered").as_bool() == Some(true)),
        "recovered: true"
    );
    assert!(
        token_calls.get() >= 2,
        "getToken called again for the reconnect"
    );
    let a_states: Vec<String> = a_states
        .borrow()
        .iter()
        .filter_map(|v| v.as_string())
        .collect();
    assert!(
        a_states.ends_with(&["reconnecting".into(), "connected".into()]),
        "{a_states:?}"
    );
    a.close();
    b.close();
}

#[wasm_bindgen_test]
async fn publishes_made_while_disconnected_are_delivered_once_after_reconnect() {
    let topic = unique("offline");
    let a = client(&token("alice", 3600).await);
    let b = client(&token("bob", 3600).await);
    let (handler, got) = recorder();
    let (on_recovery, recoveries) = recorder();
    // Nothing has been published yet, so A has no offset: the SDK's baseline lets it resume.
    let sub = a
        .subscribe(topic.clone(), handler.unchecked_into(), None)
        .expect("subscribe");
    sub.on_recovery(on_recovery.unchecked_into());
    connected(&a, "a").await;
    connected(&b, "b").await;
    round_trip(&a, &topic).await;

    control("/kill").await;
    wait_until("a offline", 10_000, || !is_connected(&a)).await;
    wait_until("b offline", 10_000, || !is_connected(&b)).await;
    let pending: Vec<Promise> = (1..=5).map(|n| publish(&b, &topic, n)).collect();
    control("/start").await;
    let mut acked = Vec::new();
    for p in pending {
        let ack = ok("queued publish", p).await;
        assert!(
            get(&ack, "epoch")
                .as_string()
                .is_some_and(|e| !e.is_empty())
        );
        acked.push(get(&ack, "offset").as_f64().unwrap_or(-1.0));
    }
    assert_eq!(acked, seq(1..=5), "promises resolve with offsets");
    connected(&a, "a back").await;
    ok("sentinel", publish(&b, &topic, 6)).await;
    wait_until("a has all six", 20_000, || got.borrow().len() >= 6).await;
    assert_eq!(offsets(&got), seq(1..=6));
    assert_eq!(texts(&got), seq(1..=6), "each once, in order");
    assert!(
        recoveries
            .borrow()
            .iter()
            .all(|r| get(r, "recovered").as_bool() == Some(true)),
        "{:?}",
        recoveries.borrow()
    );
    a.close();
    b.close();
}

#[wasm_bindgen_test]
async fn history_returns_stored_messages() {
    let topic = unique("history");
    let a = client(&token("alice", 3600).await);
    for n in 1..=5 {
        ok("publish", publish(&a, &topic, n)).await;
    }
    let page = |since: u32, limit: u32| {
        Promise::from(JsValue::from(a.history(
            topic.clone(),
            Some(obj(&[("since", since.into()), ("limit", limit.into())]).unchecked_into()),
        )))
    };
    let all = ok("history", page(0, 50)).await;
    assert_eq!(get(&all, "latest").as_f64(), Some(5.0));
    assert!(
        get(&all, "epoch")
            .as_string()
            .is_some_and(|e| !e.is_empty())
    );
    let messages = js_sys::Array::from(&get(&all, "messages"));
    let n: Vec<f64> = messages
        .iter()
        .filter_map(|m| get(&get(&m, "data"), "n").as_f64())
        .collect();
    let o: Vec<f64> = messages
        .iter()
        .filter_map(|m| get(&m, "offset").as_f64())
        .collect();
    assert_eq!((n, o), (seq(1..=5), seq(1..=5)));
    let middle = js_sys::Array::from(&get(&ok("history page", page(2, 2)).await, "messages"));
    let o: Vec<f64> = middle
        .iter()
        .filter_map(|m| get(&m, "offset").as_f64())
        .collect();
    assert_eq!(o, [3.0, 4.0]);
    // Ephemeral topics store nothing: a typed error.
    let err = settle(
        "ephemeral history",
        20_000,
        Promise::from(JsValue::from(a.history(unique("eph"), None))),
    )
    .await
    .expect_err("ephemeral topic has no history");
    assert!(err.is_instance_of::<js_sys::Error>());
    assert_eq!(
        get(&err, "code").as_string().as_deref(),
        Some("UNAVAILABLE")
    );
    a.close();
}

fn counter() -> JsValue {
    Function::new_with_args(
        "s, e",
        "return { count: s.count + 1, sum: s.sum + e.data.n, types: s.types.concat([e.type]), version: e.version };",
    )
    .into()
}

fn tally() -> JsValue {
    obj(&[
        ("count", 0.into()),
        ("sum", 0.into()),
        ("types", js_sys::Array::new().into()),
    ])
}

fn event(kind: &str, n: u32) -> JsValue {
    obj(&[
        ("type", JsValue::from_str(kind)),
        ("data", obj(&[("n", n.into())])),
    ])
}

fn events(list: &[JsValue]) -> JsValue {
    list.iter().collect::<js_sys::Array>().into()
}

#[wasm_bindgen_test]
async fn streams_replay_follow_live_appends_and_report_version_conflicts() {
    let id = unique("order");
    let writer = client(&token("writer", 3600).await);
    let reader = client(&token("reader", 3600).await);
    // The writer appends three events to a new stream.
    let w = writer
        .stream(id.clone(), counter().unchecked_into(), Some(tally()))
        .expect("writer stream");
    let (on_change, w_changes) = recorder();
    w.on_change(on_change.unchecked_into());
    wait_until("writer stream loaded", 10_000, || {
        !w_changes.borrow().is_empty()
    })
    .await;
    let ack = ok(
        "append 1..3",
        Promise::from(JsValue::from(
            w.append(
                events(&[
                    event("created", 1),
                    event("item_added", 2),
                    event("item_added", 3),
                ])
                .unchecked_into(),
            ),
        )),
    )
    .await;
    assert_eq!(get(&ack, "version").as_f64(), Some(3.0));
    assert_eq!(w.version(), 3.0);

    // The reader replays them...
    let r = reader
        .stream(id.clone(), counter().unchecked_into(), Some(tally()))
        .expect("reader stream");
    wait_until("reader replayed 3 events", 10_000, || r.version() == 3.0).await;
    let st = r.state();
    assert_eq!(get(&st, "count").as_f64(), Some(3.0));
    assert_eq!(get(&st, "sum").as_f64(), Some(6.0));
    // ...and follows live appends from the other client.
    ok(
        "append 4",
        Promise::from(JsValue::from(
            w.append(events(&[event("confirmed", 4)]).unchecked_into()),
        )),
    )
    .await;
    wait_until("reader follows live", 10_000, || r.version() == 4.0).await;
    let st = r.state();
    assert_eq!(get(&st, "sum").as_f64(), Some(10.0));
    let types: Vec<String> = js_sys::Array::from(&get(&st, "types"))
        .iter()
        .filter_map(|t| t.as_string())
        .collect();
    assert_eq!(types, ["created", "item_added", "item_added", "confirmed"]);

    // Two appends made at once both claim version 4: the second is stale.
    let first = Promise::from(JsValue::from(
        r.append(events(&[event("shipped", 5)]).unchecked_into()),
    ));
    let stale = Promise::from(JsValue::from(
        r.append(events(&[event("cancelled", 6)]).unchecked_into()),
    ));
    assert_eq!(
        get(&ok("first append", first).await, "version").as_f64(),
        Some(5.0)
    );
    let err = settle("stale append", 20_000, stale)
        .await
        .expect_err("stale version is refused");
    assert!(err.is_instance_of::<js_sys::Error>());
    assert_eq!(
        get(&err, "code").as_string().as_deref(),
        Some("VERSION_CONFLICT")
    );
    assert_eq!(get(&err, "currentVersion").as_f64(), Some(5.0));
    wait_until("writer follows too", 10_000, || w.version() == 5.0).await;
    assert_eq!(
        get(&w.state(), "sum").as_f64(),
        Some(15.0),
        "the refused event was not applied"
    );
    assert_eq!(get(&r.state(), "sum").as_f64(), Some(15.0));
    writer.close();
    reader.close();
}

/// A command or value from its JSON text.
fn json(text: &str) -> JsValue {
    js_sys::JSON::parse(text).expect("JSON")
}

#[wasm_bindgen_test]
async fn a_builtin_aggregate_folds_decides_executes_and_reports_conflicts() {
    let id = unique("order");
    let a = client(&token("alice", 3600).await);
    let b = client(&token("bob", 3600).await);
    let sa = a
        .stream(
            id.clone(),
            JsValue::from_str("order").unchecked_into(),
            None,
        )
        .expect("a's stream");
    assert_eq!(
        get(&sa.state(), "status").as_string().as_deref(),
        Some("pending"),
        "the aggregate's default state before the load"
    );
    let (on_change, changes) = recorder();
    sa.on_change(on_change.unchecked_into());
    wait_until("a loaded", 10_000, || !changes.borrow().is_empty()).await;

    // Refused locally with the aggregate's code: nothing is sent.
    let refused = settle(
        "confirm before create",
        20_000,
        Promise::from(JsValue::from(
            sa.execute(json(r#"{"type":"confirm"}"#).unchecked_into()),
        )),
    )
    .await
    .expect_err("refused");
    assert_eq!(
        get(&refused, "code").as_string().as_deref(),
        Some("INVALID_STATE")
    );
    assert_eq!(
        get(&refused, "message").as_string().as_deref(),
        Some("cannot confirm an order that is pending")
    );
    for (command, version) in [
        (r#"{"type":"create","customer_id":"alice"}"#, 1.0),
        (
            r#"{"type":"add_item","id":"tee","name":"T-shirt","price":19.99,"quantity":3}"#,
            2.0,
        ),
    ] {
        let ack = ok(
            command,
            Promise::from(JsValue::from(sa.execute(json(command).unchecked_into()))),
        )
        .await;
        assert_eq!(get(&ack, "version").as_f64(), Some(version));
    }
    assert_eq!(sa.version(), 2.0, "our own appends fold at once");
    assert_eq!(get(&sa.state(), "total").as_f64(), Some(59.97));

    // Another client replays the stream with the same Rust fold, every event once.
    let sb = b
        .stream(
            id.clone(),
            JsValue::from_str("order").unchecked_into(),
            None,
        )
        .expect("b's stream");
    let (on_event, seen) = recorder();
    sb.on_event(on_event.unchecked_into());
    wait_until("b replayed", 10_000, || sb.version() == 2.0).await;
    let st = sb.state();
    assert_eq!(get(&st, "status").as_string().as_deref(), Some("created"));
    assert_eq!(
        get(&st, "customer_id").as_string().as_deref(),
        Some("alice")
    );
    assert_eq!(get(&st, "total").as_f64(), Some(59.97));
    let types: Vec<_> = seen
        .borrow()
        .iter()
        .filter_map(|e| get(e, "type").as_string())
        .collect();
    assert_eq!(types, ["order_created", "item_added"]);

    // Two commands decided at version 2: the first wins, the second is stale and not retried.
    let first = Promise::from(JsValue::from(
        sb.execute(
            json(r#"{"type":"add_item","id":"mug","name":"Mug","price":12.5,"quantity":2}"#)
                .unchecked_into(),
        ),
    ));
    let stale = Promise::from(JsValue::from(
        sb.execute(
            json(r#"{"type":"add_item","id":"cap","name":"Cap","price":15,"quantity":1}"#)
                .unchecked_into(),
        ),
    ));
    assert_eq!(
        get(&ok("first", first).await, "version").as_f64(),
        Some(3.0)
    );
    let err = settle("stale", 20_000, stale).await.expect_err("stale");
    assert_eq!(
        get(&err, "code").as_string().as_deref(),
        Some("VERSION_CONFLICT")
    );
    assert_eq!(get(&err, "currentVersion").as_f64(), Some(3.0));
    wait_until("a follows live", 10_000, || sa.version() == 3.0).await;
    assert_eq!(get(&sa.state(), "total").as_f64(), Some(84.97));
    assert_eq!(
        js_sys::Array::from(&get(&sb.state(), "items")).length(),
        2,
        "the stale command's item was not applied"
    );

    // `decide` answers without appending.
    let decided = sa
        .decide(json(r#"{"type":"cancel","reason":"changed my mind"}"#).unchecked_into())
        .expect("decided");
    let decided = js_sys::Array::from(&decided.into());
    assert_eq!(
        get(&decided.get(0), "type").as_string().as_deref(),
        Some("order_cancelled")
    );
    assert_eq!(sa.version(), 3.0);
    let unknown = a
        .stream(
            unique("x"),
            JsValue::from_str("invoice").unchecked_into(),
            None,
        )
        .err()
        .expect("no such aggregate");
    assert_eq!(
        get(&unknown, "code").as_string().as_deref(),
        Some("INVALID_ARGUMENT")
    );
    a.close();
    b.close();
}

#[wasm_bindgen_test]
async fn ephemeral_topics_deliver_live_without_offsets() {
    let topic = unique("eph");
    let a = client(&token("alice", 3600).await);
    let b = client(&token("bob", 3600).await);
    let (handler, got) = recorder();
    let (on_error, errors) = recorder();
    let sub = a
        .subscribe(topic.clone(), handler.unchecked_into(), None)
        .expect("subscribe");
    sub.on_error(on_error.unchecked_into());
    connected(&a, "a").await;
    connected(&b, "b").await;
    // The baseline request for an ephemeral topic fails quietly; publish a round trip after it.
    let _ = settle(
        "round trip",
        20_000,
        Promise::from(JsValue::from(a.history(topic.clone(), None))),
    )
    .await;
    let ack = ok("ack", publish(&b, &topic, 1)).await;
    assert!(
        get(&ack, "offset").is_null(),
        "no offset on an ephemeral topic"
    );
    wait_until("a receives it", 10_000, || !got.borrow().is_empty()).await;
    assert!(
        get(&got.borrow()[0], "offset").is_undefined() || get(&got.borrow()[0], "offset").is_null()
    );
    assert!(
        errors.borrow().is_empty(),
        "the subscription itself is fine"
    );
    a.close();
    b.close();
}

// ---- SDK hardening: a bad request fails alone, every call settles, dead credentials stop ----

/// Another server with these extra `tidings serve` arguments; returns its ws URL.
async fn spawn_server(args: &[&str]) -> String {
    let query: Vec<String> = args.iter().map(|a| format!("arg={a}")).collect();
    control(&format!("/spawn?{}", query.join("&"))).await
}

fn client_at(url: &str, token: &str) -> TidingsClient {
    let opts = obj(&[
        ("url", JsValue::from_str(url)),
        ("token", JsValue::from_str(token)),
        ("reconnect", fast_reconnect()),
    ]);
    TidingsClient::new(opts.unchecked_into()).expect("client")
}

fn names(log: &Rc<RefCell<Vec<JsValue>>>) -> Vec<String> {
    log.borrow().iter().filter_map(JsValue::as_string).collect()
}

#[wasm_bindgen_test]
async fn an_oversize_publish_fails_alone_and_the_next_one_is_acknowledged() {
    let url = spawn_server(&["--max-message-bytes", "65536"]).await;
    let c = client_at(&url, &token("big", 3600).await);
    let seen = states(&c);
    connected(&c, "connected").await;
    let big = JsValue::from_str(&"x".repeat(128 * 1024));
    let err = settle(
        "the oversize publish",
        10_000,
        Promise::from(JsValue::from(c.publish("t".into(), big))),
    )
    .await
    .expect_err("rejected");
    assert_eq!(
        get(&err, "code").as_string().as_deref(),
        Some("MESSAGE_TOO_LARGE")
    );
    let ack = ok("the small publish", publish(&c, "t", 1)).await;
    assert_eq!(get(&ack, "offset").as_f64(), Some(1.0));
    assert_eq!(names(&seen), ["connected"], "the connection never dropped");
    c.close();
}

#[wasm_bindgen_test]
async fn a_refused_topic_fails_alone_and_its_batch_mates_live() {
    let ok_topic = format!("ok.{}", unique("a"));
    let secret = format!("secret.{}", unique("b"));
    let limited = control("/token?sub=limited&ttl=3600&subscribe=ok.*").await;
    let c = client(&limited);
    // Both before the socket opens: they go out in one subscribe.
    let (handler, got) = recorder();
    let _ok = c
        .subscribe(ok_topic.clone(), handler.unchecked_into(), None)
        .expect("subscribe");
    let (nothing, _) = recorder();
    let refused = c
        .subscribe(secret.clone(), nothing.unchecked_into(), None)
        .expect("subscribe");
    let (on_error, errors) = recorder();
    refused.on_error(on_error.unchecked_into());
    connected(&c, "connected").await;
    wait_until("secret.b reports FORBIDDEN", 10_000, || {
        !errors.borrow().is_empty()
    })
    .await;
    assert_eq!(
        get(&errors.borrow()[0], "code").as_string().as_deref(),
        Some("FORBIDDEN")
    );
    let p = client(&token("publisher", 3600).await);
    connected(&p, "publisher").await;
    ok("publish to ok.a", publish(&p, &ok_topic, 7)).await;
    wait_until("ok.a still receives", 10_000, || !got.borrow().is_empty()).await;
    assert_eq!(texts(&got), [7.0]);
    c.close();
    p.close();
}

#[wasm_bindgen_test]
async fn two_hundred_subscribes_in_a_loop_all_live() {
    // The server's default rate limit (100/s, burst 200) and room for 300 subscriptions.
    let url = spawn_server(&["--max-subscriptions", "300"]).await;
    let c = client_at(&url, &token("many", 3600).await);
    connected(&c, "connected").await;
    let prefix = unique("many");
    let (handler, got) = recorder();
    let handler: Function = handler;
    let mut subs = Vec::new();
    for i in 0..200 {
        let topic = format!("{prefix}-{i}");
        subs.push(
            c.subscribe(topic, handler.clone().unchecked_into(), None)
                .expect("subscribe"),
        );
    }
    let (errs, errors) = recorder();
    c.on_error(errs.unchecked_into());
    round_trip(&c, &format!("{prefix}-0")).await;
    // One message to each topic, from another client; every subscription gets its own.
    let p = client_at(&url, &token("feeder", 3600).await);
    connected(&p, "feeder").await;
    let mut acks = Vec::new();
    for i in 0..200 {
        acks.push(publish(&p, &format!("{prefix}-{i}"), i));
    }
    for (i, ack) in acks.into_iter().enumerate() {
        ok(&format!("publish {i}"), ack).await;
    }
    wait_until("all 200 subscriptions receive", 20_000, || {
        got.borrow().len() >= 200
    })
    .await;
    let mut seen = texts(&got);
    seen.sort_by(f64::total_cmp);
    assert_eq!(seen, (0..200).map(f64::from).collect::<Vec<_>>());
    assert!(errors.borrow().is_empty(), "{:?}", errors.borrow());
    drop(subs);
    c.close();
    p.close();
}

#[wasm_bindgen_test]
async fn an_expired_fixed_token_closes_with_unauthorized_and_stops() {
    let expired = token("late", 0).await;
    let c = client(&expired);
    let seen = states(&c);
    let (errs, errors) = recorder();
    c.on_error(errs.unchecked_into());
    wait_until("closed", 10_000, || state_name(&c) == "closed").await;
    assert_eq!(names(&seen), ["closed"], "no reconnect loop");
    assert_eq!(errors.borrow().len(), 1);
    assert_eq!(
        get(&errors.borrow()[0], "code").as_string().as_deref(),
        Some("UNAUTHORIZED")
    );
    let err = settle(
        "a publish on a closed client",
        5_000,
        Promise::from(JsValue::from(c.publish("t".into(), 1.into()))),
    )
    .await
    .expect_err("closed");
    assert_eq!(get(&err, "code").as_string().as_deref(), Some("CLOSED"));
}

// ---- Scaling out: several nodes on one Redis behave as one server ----

/// A fresh Redis and two `tidings` nodes on it (the harness's `/cluster`): their ws URLs.
async fn start_cluster() -> (String, String) {
    let urls = control("/cluster").await;
    let mut it = urls.split_whitespace().map(str::to_owned);
    match (it.next(), it.next()) {
        (Some(a), Some(b)) => (a, b),
        _ => panic!("/cluster answered {urls:?}"),
    }
}

/// SIGKILL the server the harness started at `url`; returns once it has exited.
async fn kill_server(url: &str) {
    let url = String::from(js_sys::encode_uri_component(url));
    control(&format!("/kill?url={url}")).await;
}

async fn acked_offsets(what: &str, acks: Vec<Promise>) -> Vec<f64> {
    let mut offsets = Vec::new();
    for p in acks {
        offsets.push(get(&ok(what, p).await, "offset").as_f64().unwrap_or(-1.0));
    }
    offsets
}

#[wasm_bindgen_test]
async fn a_node_killed_with_sigkill_sends_its_urls_client_to_another_node_that_recovers_all() {
    const N: u32 = 20;
    const M: u32 = 20;
    let (node_a, node_b) = start_cluster().await;
    let topic = unique("cluster");
    // A knows both nodes and starts on the first; P publishes on the second only.
    let urls = js_sys::Array::of2(&JsValue::from_str(&node_a), &JsValue::from_str(&node_b));
    let a = TidingsClient::new(
        obj(&[
            ("urls", urls.into()),
            ("token", JsValue::from_str(&token("alice", 3600).await)),
            ("reconnect", fast_reconnect()),
        ])
        .unchecked_into(),
    )
    .expect("client a");
    let a_states = states(&a);
    let (on_error, a_errors) = recorder();
    a.on_error(on_error.unchecked_into());
    let (handler, got) = recorder();
    let (on_recovery, recoveries) = recorder();
    let sub = a
        .subscribe(topic.clone(), handler.unchecked_into(), None)
        .expect("subscribe");
    sub.on_recovery(on_recovery.unchecked_into());
    let (on_sub_error, sub_errors) = recorder();
    sub.on_error(on_sub_error.unchecked_into());
    let p = client_at(&node_b, &token("bob", 3600).await);
    connected(&a, "a connected (node A)").await;
    connected(&p, "publisher connected (node B)").await;
    round_trip(&a, &topic).await; // a's subscribe has been processed on node A

    // N messages published on node B reach A's subscriber on node A, through Redis.
    let first: Vec<Promise> = (1..=N).map(|n| publish(&p, &topic, n)).collect();
    assert_eq!(
        acked_offsets("publish on node B", first).await,
        seq(1..=N),
        "the cluster numbers the topic once"
    );
    wait_until("a receives the first N across nodes", 10_000, || {
        got.borrow().len() >= N as usize
    })
    .await;
    assert_eq!(offsets(&got), seq(1..=N));

    // Node A dies without a goodbye. In this same task (before A's reconnect can even begin),
    // M more go out on node B.
    kill_server(&node_a).await;
    let second: Vec<Promise> = (N + 1..=N + M).map(|n| publish(&p, &topic, n)).collect();
    wait_until("a notices node A is gone", 10_000, || {
        names(&a_states).iter().any(|s| s == "reconnecting")
    })
    .await;
    assert_eq!(
        acked_offsets("publish on node B while a reconnects", second).await,
        seq(N + 1..=N + M)
    );
    console_log!(
        "cluster test: all {M} acks in while a was {:?}",
        state_name(&a)
    );
    let report = || {
        format!(
            "states {:?}, offsets {:?}, recoveries {:?}, errors {:?}, subscription errors {:?}",
            names(&a_states),
            offsets(&got),
            recoveries
                .borrow()
                .iter()
                .map(|r| get(r, "recovered"))
                .collect::<Vec<_>>(),
            a_errors.borrow(),
            sub_errors.borrow()
        )
    };
    // Node A refuses connections now: A can only be connected again on node B.
    wait_until("a reconnected (to node B)", 20_000, || is_connected(&a)).await;
    wait_until("a has all N+M", 20_000, || {
        got.borrow().len() >= (N + M) as usize
    })
    .await;
    // A round trip on A's (new) connection: anything else on its way has arrived.
    round_trip(&a, &topic).await;
    assert_eq!(
        offsets(&got),
        seq(1..=N + M),
        "offsets once each, in order: {}",
        report()
    );
    assert_eq!(
        texts(&got),
        seq(1..=N + M),
        "payloads once each, in order: {}",
        report()
    );
    assert!(
        names(&a_states).ends_with(&["reconnecting".into(), "connected".into()]),
        "{}",
        report()
    );
    assert!(
        !recoveries.borrow().is_empty(),
        "onRecovery after the reconnect: {}",
        report()
    );
    assert!(
        recoveries
            .borrow()
            .iter()
            .all(|r| get(r, "recovered").as_bool() == Some(true)),
        "recovered: true: {}",
        report()
    );
    assert!(
        a_errors.borrow().is_empty() && sub_errors.borrow().is_empty(),
        "{}",
        report()
    );
    a.close();
    p.close();
}

// ---- Presence: who is on a topic, joins and leaves, and no drift across a reconnect ----

/// A token whose `info` claim is the JSON `info`.
async fn token_with_info(sub: &str, info: &str) -> String {
    let info = String::from(js_sys::encode_uri_component(info));
    control(&format!("/token?sub={sub}&ttl=3600&info={info}")).await
}

/// `(user, info.name)` of each member in a list of members or member events, sorted.
fn people(list: &JsValue) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = js_sys::Array::from(list)
        .iter()
        .map(|m| {
            (
                get(&m, "user").as_string().unwrap_or_default(),
                get(&get(&m, "info"), "name")
                    .as_string()
                    .unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    out
}

fn logged(log: &Rc<RefCell<Vec<JsValue>>>) -> JsValue {
    log.borrow().iter().collect::<js_sys::Array>().into()
}

fn pair(user: &str, name: &str) -> (String, String) {
    (user.to_owned(), name.to_owned())
}

/// How many members `sub.members()` lists (None while it is `null`).
fn member_count(sub: &tidings_sdk::wasm::Subscription) -> Option<u32> {
    let list = JsValue::from(sub.members());
    (!list.is_null()).then(|| js_sys::Array::from(&list).length())
}

#[wasm_bindgen_test]
async fn presence_lists_members_reports_joins_and_leaves_and_counts_them() {
    let topic = unique("presence-room");
    let alice = client(&token_with_info("alice", r#"{"name":"Alice"}"#).await);
    let (nothing, _) = recorder();
    let sub = alice
        .subscribe(topic.clone(), nothing.unchecked_into(), None)
        .expect("subscribe");
    let (on_join, joins) = recorder();
    let (on_leave, leaves) = recorder();
    let (on_error, errors) = recorder();
    sub.on_join(on_join.unchecked_into());
    sub.on_leave(on_leave.unchecked_into());
    sub.on_error(on_error.unchecked_into());
    assert!(
        member_count(&sub).is_none(),
        "nothing known before the first read"
    );
    connected(&alice, "alice").await;
    // Her first presence read is answered once her subscription is active: she is listed.
    wait_until("alice's first presence read", 10_000, || {
        member_count(&sub) == Some(1)
    })
    .await;

    let bob = client(&token_with_info("bob", r#"{"name":"Bob"}"#).await);
    let (nothing, _) = recorder();
    let (bob_join, bob_joins) = recorder();
    let bob_sub = bob
        .subscribe(topic.clone(), nothing.unchecked_into(), None)
        .expect("subscribe");
    bob_sub.on_join(bob_join.unchecked_into());
    connected(&bob, "bob").await;
    wait_until("alice hears bob join", 10_000, || {
        !joins.borrow().is_empty()
    })
    .await;
    let join = joins.borrow()[0].clone();
    assert_eq!(
        get(&join, "topic").as_string().as_deref(),
        Some(topic.as_str())
    );
    assert_eq!(people(&logged(&joins)), [pair("bob", "Bob")]);
    let bob_id = get(&join, "client_id").as_string().unwrap_or_default();
    assert!(!bob_id.is_empty());

    let page = ok(
        "presence",
        Promise::from(JsValue::from(alice.presence(topic.clone()))),
    )
    .await;
    assert_eq!(
        get(&page, "topic").as_string().as_deref(),
        Some(topic.as_str())
    );
    assert_eq!(
        people(&get(&page, "members")),
        [pair("alice", "Alice"), pair("bob", "Bob")]
    );
    assert_eq!(get(&page, "more").as_bool(), Some(false));
    let stats = ok(
        "presenceStats",
        Promise::from(JsValue::from(alice.presence_stats(topic.clone()))),
    )
    .await;
    assert_eq!(get(&stats, "clients").as_f64(), Some(2.0));
    assert_eq!(get(&stats, "users").as_f64(), Some(2.0));
    assert_eq!(
        people(&JsValue::from(sub.members())),
        [pair("alice", "Alice"), pair("bob", "Bob")],
        "the SDK's view agrees"
    );

    // Bob closes cleanly: alice hears it promptly.
    bob.close();
    wait_until("alice hears bob leave", 2_000, || {
        !leaves.borrow().is_empty()
    })
    .await;
    assert_eq!(people(&logged(&leaves)), [pair("bob", "Bob")]);
    assert_eq!(
        get(&leaves.borrow()[0], "client_id").as_string(),
        Some(bob_id)
    );
    assert_eq!(
        people(&JsValue::from(sub.members())),
        [pair("alice", "Alice")]
    );
    assert_eq!(joins.borrow().len(), 1, "alice never hears her own join");
    assert!(
        bob_joins.borrow().is_empty(),
        "nor bob his: {:?}",
        bob_joins.borrow()
    );
    assert!(errors.borrow().is_empty(), "{:?}", errors.borrow());

    // A topic without presence: the requests reject, and a watching subscriber hears why.
    let plain = unique("plain");
    for (what, p) in [
        ("presence", JsValue::from(alice.presence(plain.clone()))),
        (
            "presenceStats",
            JsValue::from(alice.presence_stats(plain.clone())),
        ),
    ] {
        let err = settle(what, 20_000, Promise::from(p))
            .await
            .expect_err("no presence on that topic");
        assert!(err.is_instance_of::<js_sys::Error>());
        assert_eq!(
            get(&err, "code").as_string().as_deref(),
            Some("PRESENCE_DISABLED"),
            "{what}"
        );
    }
    let (nothing, _) = recorder();
    let plain_sub = alice
        .subscribe(plain, nothing.unchecked_into(), None)
        .expect("subscribe");
    let (on_error, plain_errors) = recorder();
    plain_sub.on_error(on_error.unchecked_into());
    let (on_join, _) = recorder();
    plain_sub.on_join(on_join.unchecked_into());
    wait_until("onError for the presence read", 10_000, || {
        !plain_errors.borrow().is_empty()
    })
    .await;
    assert_eq!(
        get(&plain_errors.borrow()[0], "code")
            .as_string()
            .as_deref(),
        Some("PRESENCE_DISABLED")
    );
    assert!(member_count(&plain_sub).is_none());
    alice.close();
}

#[wasm_bindgen_test]
async fn after_a_reconnect_presence_reports_what_changed_meanwhile() {
    let topic = unique("presence-reconnect");
    let alice = client(&token_with_info("alice", r#"{"name":"Alice"}"#).await);
    let alice_states = states(&alice);
    let (nothing, _) = recorder();
    let sub = alice
        .subscribe(topic.clone(), nothing.unchecked_into(), None)
        .expect("subscribe");
    let (on_join, joins) = recorder();
    let (on_leave, leaves) = recorder();
    sub.on_join(on_join.unchecked_into());
    sub.on_leave(on_leave.unchecked_into());
    connected(&alice, "alice").await;
    wait_until("alice's first presence read", 10_000, || {
        member_count(&sub) == Some(1)
    })
    .await;
    let bob = client(&token_with_info("bob", r#"{"name":"Bob"}"#).await);
    let (nothing, _) = recorder();
    let _bob_sub = bob
        .subscribe(topic.clone(), nothing.unchecked_into(), None)
        .expect("subscribe");
    wait_until("alice hears bob join", 10_000, || {
        !joins.borrow().is_empty()
    })
    .await;

    // The server dies. While it is down bob goes away for good and carol starts; she is on
    // the topic when the server is back. Nobody will ever send alice a `leave` for bob: the
    // new server never knew him. Only the SDK's re-read can tell.
    control("/kill").await;
    wait_until("alice offline", 10_000, || !is_connected(&alice)).await;
    bob.close();
    let carol = client(&token_with_info("carol", r#"{"name":"Carol"}"#).await);
    let (nothing, _) = recorder();
    let _carol_sub = carol
        .subscribe(topic.clone(), nothing.unchecked_into(), None)
        .expect("subscribe");
    control("/start").await;
    connected(&alice, "alice back").await;
    connected(&carol, "carol").await;
    wait_until("alice hears bob leave and carol join", 10_000, || {
        !leaves.borrow().is_empty() && joins.borrow().len() >= 2
    })
    .await;
    // Both have arrived; a presence round trip on alice's connection lets anything still on
    // its way arrive too, before checking nothing was reported twice.
    let page = ok(
        "presence",
        Promise::from(JsValue::from(alice.presence(topic.clone()))),
    )
    .await;
    assert_eq!(
        people(&get(&page, "members")),
        [pair("alice", "Alice"), pair("carol", "Carol")]
    );
    assert_eq!(people(&logged(&leaves)), [pair("bob", "Bob")]);
    assert_eq!(
        people(&logged(&joins)),
        [pair("bob", "Bob"), pair("carol", "Carol")],
        "each once; never alice's own new connection"
    );
    assert_eq!(
        people(&JsValue::from(sub.members())),
        [pair("alice", "Alice"), pair("carol", "Carol")],
        "the SDK's view has not drifted"
    );
    assert!(
        names(&alice_states).ends_with(&["reconnecting".into(), "connected".into()]),
        "{:?}",
        names(&alice_states)
    );
    alice.close();
    carol.close();
}
