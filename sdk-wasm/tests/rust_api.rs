//! Browser tests of the Rust API (`tidings_sdk::native`) in headless Chromium against the real
//! `tidings` server that `scripts/test-browser` starts (see tests/web.rs for the URLs it
//! passes at compile time).
//!
//! Synchronisation rule: never sleep and hope. Every wait is on a future of the API (an ack,
//! a message, a state), bounded by a deadline that only fails the test.

#![cfg(target_arch = "wasm32")]

use std::future::Future;
use std::pin::pin;
use std::task::Poll;

use js_sys::Promise;
use tidings_protocol::order::{Item, Money, Order, OrderCommand, OrderStatus};
use tidings_sdk::core::ConnectionState;
use tidings_sdk::native::{Client, Options, Versioned};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const WS: Option<&str> = option_env!("TIDINGS_TEST_WS");
const CONTROL: Option<&str> = option_env!("TIDINGS_TEST_CONTROL");

fn ws() -> &'static str {
    WS.expect("TIDINGS_TEST_WS is not set: run scripts/test-browser")
}

async fn token(sub: &str) -> String {
    let base = CONTROL.expect("TIDINGS_TEST_CONTROL is not set: run scripts/test-browser");
    let window = web_sys::window().expect("window");
    let resp = JsFuture::from(window.fetch_with_str(&format!("{base}/token?sub={sub}&ttl=3600")))
        .await
        .expect("control request");
    let resp: web_sys::Response = resp.unchecked_into();
    assert!(resp.ok(), "token: HTTP {}", resp.status());
    let text = JsFuture::from(resp.text().expect("text"))
        .await
        .expect("body");
    text.as_string().unwrap_or_default()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", (js_sys::Math::random() * 1e9) as u64)
}

/// `fut`'s output, or a test failure after 20 s (a deadline, not a synchronisation).
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    let deadline = JsFuture::from(Promise::new(&mut |resolve, _| {
        if let Some(w) = web_sys::window() {
            let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, 20_000);
        }
    }));
    let mut fut = pin!(fut);
    let mut deadline = pin!(deadline);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(v);
        }
        if deadline.as_mut().poll(cx).is_ready() {
            panic!("timed out after 20 s waiting for {what}");
        }
        Poll::Pending
    })
    .await
}

fn client(token: String) -> Client {
    Client::connect(Options::new(ws()).token(token).reconnect_delays(100, 500)).expect("client")
}

#[wasm_bindgen_test]
async fn subscribe_publish_and_history_through_the_rust_api() {
    let topic = unique("rust-chat");
    let a = client(token("alice").await);
    let b = client(token("bob").await);
    let mut sub = a.subscribe(&topic).expect("subscribe");
    assert_eq!(sub.topic(), topic);

    // `a` is still connecting: once connected it sends the subscribe before its outbox, and
    // the server answers one connection's frames in order, so the ack of `a`'s own publish
    // means the subscription is live before `b` publishes. (`a`'s own message is not echoed
    // back to it; its ack moved the topic's position to 1.)
    let own = within("a's ack", a.publish(&topic, &serde_json::json!({"n": 1})))
        .await
        .expect("a's publish");
    assert_eq!(own.topic, topic);
    assert_eq!(own.offset, Some(1), "durable: offset 1");
    assert!(own.epoch.is_some_and(|e| !e.is_empty()));
    assert_eq!(a.state(), ConnectionState::Connected);

    let other = within("b's ack", b.publish(&topic, &serde_json::json!({"n": 2})))
        .await
        .expect("b's publish");
    assert_eq!(other.offset, Some(2));

    // The publisher does not receive its own message (no echo); the other client's arrives.
    let m = within("b's message", sub.next())
        .await
        .expect("b's message");
    assert_eq!((m.offset, m.data.get()), (Some(2), r#"{"n":2}"#));
    assert_eq!(m.topic, topic);
    assert!(!m.from.is_empty());

    let page = within("history", a.history(&topic, None, None))
        .await
        .expect("history");
    let offsets: Vec<_> = page.messages.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, [Some(1), Some(2)]);
    assert_eq!(page.latest, 2);
    let after = within("history since 1", b.history(&topic, Some(1), Some(10)))
        .await
        .expect("history since 1");
    assert_eq!(after.messages.len(), 1);
    assert_eq!(after.messages[0].data.get(), r#"{"n":2}"#);

    // Typed errors with the JS API's codes.
    let empty = a.subscribe("").err().expect("empty topic refused");
    assert_eq!(empty.code(), "INVALID_ARGUMENT");

    a.close();
    assert_eq!(a.state(), ConnectionState::Closed);
    assert!(
        sub.next().await.is_none(),
        "the subscription ends with the client"
    );
    assert!(sub.error().is_none(), "closed, not refused");
    let late = a.publish(&topic, &3).await.expect_err("closed");
    assert_eq!(late.code(), "CLOSED");
    b.close();
}

/// The next state with at least `version`.
async fn state_at(
    what: &str,
    stream: &mut tidings_sdk::native::AggregateStream<Order>,
    version: u64,
) -> Versioned<Order> {
    within(what, async {
        loop {
            let v = stream.next().await.expect("the stream is live");
            if v.version >= version {
                return v;
            }
        }
    })
    .await
}

#[wasm_bindgen_test]
async fn an_order_stream_folds_and_executes_through_the_rust_api() {
    let id = unique("order");
    let a = client(token("alice").await);
    let b = client(token("bob").await);
    let mut sa = a.aggregate::<Order>(&id).expect("a's stream");
    assert_eq!(sa.current().version, 0);
    let loaded = state_at("a loaded", &mut sa, 0).await;
    assert_eq!(loaded.state.status, OrderStatus::Pending);

    // Refused locally with the aggregate's code: nothing is sent.
    let refused = sa
        .execute(&OrderCommand::Confirm {})
        .await
        .expect_err("confirm before create");
    assert_eq!(refused.code(), "INVALID_STATE");
    assert_eq!(
        refused.to_string(),
        "cannot confirm an order that is pending"
    );

    let create = OrderCommand::Create {
        customer_id: "alice".into(),
        items: vec![],
    };
    assert_eq!(
        within("create", sa.execute(&create)).await.expect("create"),
        1
    );
    let add = OrderCommand::AddItem(Item::new("tee", "T-shirt", Money::from_cents(1999), 3));
    assert_eq!(within("add", sa.execute(&add)).await.expect("add"), 2);
    let v2 = state_at("a folded its own appends", &mut sa, 2).await;
    assert_eq!(v2.state.status, OrderStatus::Created);
    assert_eq!(v2.state.items.len(), 1);
    assert_eq!(v2.state.total, Money::from_cents(5997));

    // Another client loads the same stream, confirms it; `a` follows live.
    let mut sb = b.aggregate::<Order>(&id).expect("b's stream");
    let b_loaded = state_at("b loaded", &mut sb, 2).await;
    assert_eq!(b_loaded, v2, "the same fold on both clients");
    assert_eq!(
        within("confirm", sb.execute(&OrderCommand::Confirm {}))
            .await
            .expect("confirm"),
        3
    );
    let v3 = state_at("a follows b's confirm", &mut sa, 3).await;
    assert_eq!(v3.state.status, OrderStatus::Confirmed);
    assert_eq!(sa.current(), v3);
    assert!(sa.error().is_none());

    a.close();
    assert!(sa.next().await.is_none(), "the stream ends with the client");
    b.close();
}
