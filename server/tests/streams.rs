//! Event sourcing for Rust users: the template's Order example through the durable
//! repository, snapshots, and optimistic concurrency.

mod common;

use common::*;
use tidings_protocol::order::{Item, Money, Order, OrderStatus};
use tidings_protocol::{Aggregate, ServerMessage};
use tidings_server::{Repository, RepositoryError, Tidings};

fn repo(tidings: &Tidings, every: u64) -> Repository<Order> {
    Repository::new(tidings.store().clone(), every)
}

#[tokio::test]
async fn the_templates_order_example_runs_durably() {
    let dir = TempDir::new("order");
    let tidings = Tidings::new(sqlite_config(&dir)).expect("config");
    let orders = repo(&tidings, 10);

    let mut order = orders.load("order-123").await.expect("load");
    assert_eq!(order.version, 0);
    let events = order
        .state
        .create(
            "customer-456",
            vec![
                Item::new("item-1", "Widget", Money::from_cents(10_00), 2),
                Item::new("item-2", "Gadget", Money::from_cents(25_00), 1),
            ],
        )
        .expect("create");
    orders
        .save("order-123", &mut order, events)
        .await
        .expect("save");

    let mut loaded = orders.load("order-123").await.expect("load");
    assert_eq!(loaded.state.status, OrderStatus::Created);
    assert_eq!(loaded.state.total, Money::from_cents(45_00));

    let mut events = loaded
        .state
        .add_item(Item::new("item-3", "Tool", Money::from_cents(15_00), 1))
        .expect("add");
    let after_add = loaded.state.clone().fold(events.iter());
    events.extend(after_add.confirm().expect("confirm"));
    orders
        .save("order-123", &mut loaded, events)
        .await
        .expect("save");
    let ship = loaded.state.ship("TRACK-123456").expect("ship");
    orders
        .save("order-123", &mut loaded, ship)
        .await
        .expect("save");

    let final_state = orders.load("order-123").await.expect("load");
    assert_eq!(final_state.version, 4);
    assert_eq!(final_state.state.status, OrderStatus::Shipped);
    assert_eq!(final_state.state.total, Money::from_cents(60_00));
    assert_eq!(final_state, loaded, "what was saved is what loads");
}

#[tokio::test]
async fn snapshot_plus_replay_equals_full_replay() {
    let dir = TempDir::new("snapshots");
    let tidings = Tidings::new(sqlite_config(&dir)).expect("config");
    let with_snapshots = repo(&tidings, 3);
    let without = repo(&tidings, 0);

    let mut order = with_snapshots.load("o").await.expect("load");
    let create = order.state.create("c", vec![]).expect("create");
    with_snapshots
        .save("o", &mut order, create)
        .await
        .expect("save");
    for i in 0..10 {
        let add = order
            .state
            .add_item(Item::new(
                format!("i{i}"),
                "Thing",
                Money::from_cents(1_99 + i),
                1 + i as u32,
            ))
            .expect("add");
        with_snapshots
            .save("o", &mut order, add)
            .await
            .expect("save");
    }
    let remove = order.state.remove_item("i4").expect("remove");
    with_snapshots
        .save("o", &mut order, remove)
        .await
        .expect("save");

    let snapshot = tidings
        .store()
        .snapshot("o")
        .await
        .expect("snapshot")
        .expect("one was saved");
    assert_eq!(snapshot.0, 12, "the last multiple of 3 crossed");
    let from_snapshot = with_snapshots.load("o").await.expect("load");
    let full_replay = without.load("o").await.expect("load");
    // `without` also reads the snapshot; fold the raw events by hand for the real baseline.
    let rows = tidings.store().read("o", 0, 100).await.expect("read").rows;
    let mut baseline = tidings_protocol::aggregate::Versioned::<Order>::default();
    for row in rows {
        let event: serde_json::Value = serde_json::from_str(row.data.get()).expect("json");
        let data = tidings_protocol::Json::to_json(&event["data"]).expect("raw");
        baseline.version = row.offset;
        baseline
            .state
            .apply_wire(event["type"].as_str().expect("type"), &data)
            .expect("apply");
    }
    assert_eq!(from_snapshot, baseline);
    assert_eq!(full_replay, baseline);
    assert_eq!(baseline.version, 12);
}

#[tokio::test]
async fn two_writers_at_the_same_version_one_wins_one_conflicts() {
    let tidings = Tidings::new(config()).expect("config");
    let orders = repo(&tidings, 10);
    let mut seed = orders.load("race").await.expect("load");
    let create = seed.state.create("c", vec![]).expect("create");
    orders.save("race", &mut seed, create).await.expect("save");

    let mut a = orders.load("race").await.expect("load");
    let mut b = orders.load("race").await.expect("load");
    let add_a = a
        .state
        .add_item(Item::new("a", "A", Money::from_cents(100), 1))
        .expect("a");
    let add_b = b
        .state
        .add_item(Item::new("b", "B", Money::from_cents(200), 1))
        .expect("b");
    let (ra, rb) = tokio::join!(
        orders.save("race", &mut a, add_a),
        orders.save("race", &mut b, add_b)
    );
    let results = [ra, rb];
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(results.iter().any(|r| matches!(
        r,
        Err(RepositoryError::Conflict {
            expected: 1,
            current: 2
        })
    )));
    let winner = orders.load("race").await.expect("load");
    assert_eq!(winner.version, 2);
    assert_eq!(winner.state.items.len(), 1);
}

#[tokio::test]
async fn a_browser_style_read_returns_the_snapshot_and_the_events_after_it() {
    let dir = TempDir::new("read");
    let tidings = Tidings::new(sqlite_config(&dir)).expect("config");
    let orders = repo(&tidings, 2);
    let mut order = orders.load("o-9").await.expect("load");
    let create = order.state.create("c", vec![]).expect("create");
    orders.save("o-9", &mut order, create).await.expect("save");
    for i in 0..2 {
        let add = order
            .state
            .add_item(Item::new(format!("x{i}"), "X", Money::from_cents(5), 1))
            .expect("add");
        orders.save("o-9", &mut order, add).await.expect("save");
    }
    let server = start_with(tidings.clone(), tidings.router()).await;
    let mut c = server.connect("reader").await;
    let reply = c
        .request(r#"{"type":"read","stream":"o-9","ref":"r"}"#)
        .await;
    let ServerMessage::Events(events) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(events.version, 3);
    let snapshot = events.snapshot.expect("snapshot at version 2");
    assert_eq!(snapshot.version, 2);
    assert_eq!(
        events.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [3]
    );
    let mut state =
        tidings_protocol::aggregate::Versioned::<Order>::from_snapshot(&snapshot).expect("state");
    for e in &events.events {
        state.apply_stored(e).expect("apply");
    }
    assert_eq!(state, order, "the browser can fold to the same state");
}
