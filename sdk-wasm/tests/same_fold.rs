//! The same aggregate folds on the server and in the browser: a real server (in process, memory
//! store) writes an Order stream through its `Repository` (with snapshots), the SDK's fold
//! loads the `read` reply the server really sends (`GET /api/streams/{id}`, the same
//! `ops::read` as the WebSocket `read`) and follows the rest event by event, and both reach
//! the same `Versioned<Order>`, from a snapshot and from the beginning.
#![cfg(not(target_arch = "wasm32"))]
#![allow(missing_docs)]

use tidings_protocol::order::{Item, Money, Order, OrderCommand};
use tidings_protocol::server::{Events, StoredEvent};
use tidings_protocol::{Json, NewEvent, ServerMessage, Versioned};
use tidings_sdk::core::aggregates::{AggregateFold, Applied, Model, appended_event};
use tidings_server::{Config, Repository, StoreKind, Tidings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "same-fold-api-key";

struct Server {
    tidings: Tidings,
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    async fn start() -> Server {
        let config = Config {
            store: StoreKind::Memory,
            api_key: Some(KEY.into()),
            jwt_secret: Some("same-fold-secret-0123456789abcdef-0123456789".into()),
            ..Config::default()
        };
        let tidings = Tidings::new(config).expect("config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let t = tidings.clone();
        tokio::spawn(async move {
            let signal = async move {
                let _ = stopped.await;
            };
            tidings_server::serve(listener, t.router(), &t, signal).await
        });
        Server {
            tidings,
            addr,
            stop: Some(stop),
        }
    }

    /// The server's `read` reply for `stream` from version 0: what `client.stream()` loads.
    async fn read(&self, stream: &str) -> Events {
        let mut socket = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let request = format!(
            "GET /api/streams/{stream} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        socket.write_all(request.as_bytes()).await.expect("request");
        let mut response = String::new();
        socket
            .read_to_string(&mut response)
            .await
            .expect("response");
        let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}\n\n{body}");
        match ServerMessage::decode(body) {
            Ok(ServerMessage::Events(events)) => events,
            other => panic!("not an events reply: {other:?}\n{body}"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn item(id: &str, price_cents: i64, quantity: u32) -> Item {
    Item::new(
        id,
        format!("item {id}"),
        Money::from_cents(price_cents),
        quantity,
    )
}

/// A history with awkward prices, a removal, and enough saves to cross snapshot boundaries.
fn commands() -> Vec<OrderCommand> {
    let mut commands = vec![OrderCommand::Create {
        customer_id: "alice".into(),
        items: vec![item("a", 19_99, 3)],
    }];
    for (i, cents) in [7, 12_50, 3_25, 45_00, 19_99, 1].into_iter().enumerate() {
        commands.push(OrderCommand::AddItem(item(&format!("x{i}"), cents, 2)));
    }
    commands.push(OrderCommand::RemoveItem {
        item_id: "x2".into(),
    });
    commands.push(OrderCommand::Confirm {});
    commands.push(OrderCommand::Ship {
        tracking_number: "TRK-1".into(),
    });
    commands
}

fn sdk_load(events: &Events) -> AggregateFold<Order> {
    let mut fold = AggregateFold::<Order>::new();
    let done = fold.load(events).expect("load");
    assert!(done.iter().all(|(_, a)| a.advanced()));
    fold
}

#[tokio::test(flavor = "current_thread")]
async fn the_sdk_folds_a_stream_as_the_servers_repository_does() {
    let server = Server::start().await;
    let store = server.tidings.store().clone();
    let snapshotting = Repository::<Order>::new(store.clone(), 3);
    let plain = Repository::<Order>::new(store.clone(), 0);

    // The server decides and saves, one command per save, on two streams: one snapshotted
    // every 3 events, one never.
    for id in ["order-snap", "order-plain"] {
        let repo = if id == "order-snap" {
            &snapshotting
        } else {
            &plain
        };
        let mut current = repo.load(id).await.expect("load");
        for command in commands() {
            let events = current.state.handle(&command).expect("accepted");
            repo.save(id, &mut current, events).await.expect("save");
        }
    }
    // An event from a newer writer: both sides skip it and count its version.
    store
        .append(
            "order-snap",
            Some(10),
            vec![NewEvent {
                r#type: "gift_wrapped".into(),
                data: Json::parse(r#"{"paper":"red"}"#).expect("json"),
            }],
            "newer-app",
        )
        .await
        .expect("append");

    for id in ["order-snap", "order-plain"] {
        let server_side: Versioned<Order> = snapshotting.load(id).await.expect("load");
        let read = server.read(id).await;
        if id == "order-snap" {
            let snapshot = read
                .snapshot
                .as_ref()
                .expect("the read starts from a snapshot");
            assert_eq!(snapshot.version, 9, "the last multiple of 3 saved");
            assert_eq!(read.events.len(), 2);
        } else {
            assert!(read.snapshot.is_none());
        }
        let sdk = sdk_load(&read);
        assert_eq!(
            sdk.current(),
            &server_side,
            "{id}: the SDK's fold of the read"
        );
        assert_eq!(sdk.resume_after(), server_side.version);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&sdk.state_json()).expect("json"),
            serde_json::to_value(&server_side.state).expect("json"),
            "{id}: the state the application sees is the aggregate's serde form"
        );
    }

    // Following live from an older load reaches the same state: load the snapshotted stream's
    // beginning (as an empty stream would), then fold every event as the live feed brings it.
    let full = server.read("order-plain").await;
    let mut live = AggregateFold::<Order>::new();
    for event in &full.events {
        assert!(matches!(live.apply(event), Applied::Folded));
    }
    assert_eq!(
        live.current(),
        &plain.load("order-plain").await.expect("load")
    );

    // A command the SDK decides is appended at its folded version and the server's
    // repository folds it to the same state as the SDK's own fold of its append.
    let sdk = sdk_load(&server.read("order-plain").await);
    let refused = sdk
        .decide(r#"{"type":"cancel","reason":"too late"}"#)
        .expect_err("shipped is final");
    assert_eq!(refused.code(), "INVALID_STATE");

    let id = "order-new";
    let mut sdk = sdk_load(&server.read_or_empty(id).await);
    for command in [
        r#"{"type":"create","customer_id":"bob","items":[]}"#,
        r#"{"type":"add_item","id":"tee","name":"T-shirt","price":19.99,"quantity":3}"#,
        r#"{"type":"add_item","id":"mug","name":"Mug","price":12.5,"quantity":2}"#,
        r#"{"type":"remove_item","item_id":"mug"}"#,
    ] {
        let events = sdk.decide(command).expect("accepted");
        let before = sdk.version();
        let committed = store
            .append(id, Some(before), events.clone(), "browser")
            .await
            .expect("append");
        let versions = sdk
            .appended(events.len() as u64, committed.offset)
            .expect("nothing came between");
        for (v, e) in versions.zip(&events) {
            let stored: StoredEvent = appended_event(v, e);
            assert!(matches!(sdk.apply(&stored), Applied::Folded));
        }
    }
    let server_side = plain.load(id).await.expect("load");
    assert_eq!(sdk.current(), &server_side);
    assert_eq!(server_side.state.total, Money::from_cents(59_97));
}

impl Server {
    /// As [`Server::read`], for a stream that may not exist yet (the HTTP API answers 404 where
    /// the WebSocket `read` answers an empty page at version 0).
    async fn read_or_empty(&self, stream: &str) -> Events {
        if self
            .tidings
            .store()
            .head(stream)
            .await
            .expect("head")
            .is_some()
        {
            return self.read(stream).await;
        }
        Events {
            r#ref: None,
            stream: stream.into(),
            version: 0,
            snapshot: None,
            events: Vec::new(),
            more: false,
        }
    }
}
