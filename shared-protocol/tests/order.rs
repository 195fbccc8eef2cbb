//! The template's Order aggregate: its example flow, its exact JSON, folding, snapshots,
//! command validation and forward compatibility with unknown event types.

use serde_json::json;
use tidings_protocol::order::{Item, Money, Order, OrderError, OrderEvent, OrderStatus};
use tidings_protocol::server::StoredEvent;
use tidings_protocol::{Aggregate, ClientMessage, EventError, Json, NewEvent, Versioned};

fn raw(json: &str) -> Json {
    Json::parse(json).expect("valid JSON")
}

/// Run a command and apply its events, as a repository does after a successful append.
fn run(
    order: &mut Order,
    log: &mut Vec<OrderEvent>,
    command: impl FnOnce(&Order) -> Result<Vec<OrderEvent>, OrderError>,
) {
    let events = command(order).expect("command accepted");
    for event in &events {
        order.apply(event);
    }
    log.extend(events);
}

fn widget() -> Item {
    Item::new("item-1", "Widget", Money::from_cents(10_00), 2)
}

fn gadget() -> Item {
    Item::new("item-2", "Gadget", Money::from_cents(25_00), 1)
}

fn tool() -> Item {
    Item::new("item-3", "Tool", Money::from_cents(15_00), 1)
}

/// The template's `example_usage`, plus a removal and awkward prices, as one event log.
fn long_history() -> Vec<OrderEvent> {
    let mut order = Order::default();
    let mut log = Vec::new();
    run(&mut order, &mut log, |o| {
        o.create("customer-456", vec![widget(), gadget()])
    });
    run(&mut order, &mut log, |o| o.add_item(tool()));
    for (i, cents) in [19_99, 7, 10, 20, 33_33].into_iter().enumerate() {
        let item = Item::new(format!("extra-{i}"), "Extra", Money::from_cents(cents), 3);
        run(&mut order, &mut log, |o| o.add_item(item));
    }
    run(&mut order, &mut log, |o| o.remove_item("item-2"));
    run(&mut order, &mut log, |o| o.remove_item("extra-2"));
    run(&mut order, &mut log, Order::confirm);
    run(&mut order, &mut log, |o| o.ship("TRACK-123456"));
    log
}

#[test]
fn template_example_usage() {
    let mut order = Order::default();
    let mut log = Vec::new();

    run(&mut order, &mut log, |o| {
        o.create("customer-456", vec![widget(), gadget()])
    });
    assert_eq!(order.status, OrderStatus::Created);
    assert_eq!(order.total, Money::from_cents(45_00));
    assert_eq!(order.total.to_string(), "45.00");

    run(&mut order, &mut log, |o| o.add_item(tool()));
    run(&mut order, &mut log, Order::confirm);
    assert_eq!(order.total, Money::from_cents(60_00));
    assert_eq!(order.status, OrderStatus::Confirmed);

    run(&mut order, &mut log, |o| o.ship("TRACK-123456"));
    assert_eq!(order.status, OrderStatus::Shipped);
    assert_eq!(order.customer_id.as_deref(), Some("customer-456"));
    assert_eq!(log.len(), 4);

    // The state serializes as the template's get_state().
    assert_eq!(
        serde_json::to_value(&order).expect("encode"),
        json!({
            "customer_id": "customer-456",
            "items": [
                {"id": "item-1", "name": "Widget", "price": 10.00, "quantity": 2},
                {"id": "item-2", "name": "Gadget", "price": 25.00, "quantity": 1},
                {"id": "item-3", "name": "Tool", "price": 15.00, "quantity": 1}
            ],
            "total": 60.0,
            "status": "shipped"
        })
    );
}

#[test]
fn events_have_the_template_json() {
    let cases = [
        (
            OrderEvent::OrderCreated {
                customer_id: "customer-456".into(),
                items: vec![widget(), gadget()],
                total: Money::from_cents(45_00),
            },
            json!({"type": "order_created", "data": {
                "customer_id": "customer-456",
                "items": [
                    {"id": "item-1", "name": "Widget", "price": 10.00, "quantity": 2},
                    {"id": "item-2", "name": "Gadget", "price": 25.00, "quantity": 1}
                ],
                "total": 45.0
            }}),
        ),
        (
            OrderEvent::ItemAdded(tool()),
            json!({"type": "item_added", "data":
                {"id": "item-3", "name": "Tool", "price": 15.00, "quantity": 1}}),
        ),
        (
            OrderEvent::ItemRemoved {
                item_id: "item-2".into(),
            },
            json!({"type": "item_removed", "data": {"item_id": "item-2"}}),
        ),
        (
            OrderEvent::OrderConfirmed {},
            json!({"type": "order_confirmed", "data": {}}),
        ),
        (
            OrderEvent::OrderShipped {
                tracking_number: "TRACK-123456".into(),
            },
            json!({"type": "order_shipped", "data": {"tracking_number": "TRACK-123456"}}),
        ),
        (
            OrderEvent::OrderCancelled {
                reason: "changed my mind".into(),
            },
            json!({"type": "order_cancelled", "data": {"reason": "changed my mind"}}),
        ),
    ];
    assert_eq!(cases.len(), Order::EVENT_TYPES.len());
    for (event, expected) in cases {
        assert_eq!(serde_json::to_value(&event).expect("encode"), expected);
        let decoded: OrderEvent = serde_json::from_value(expected.clone()).expect("decode");
        assert_eq!(decoded, event);
        let kind = expected["type"].as_str().expect("type");
        assert!(Order::EVENT_TYPES.contains(&kind), "{kind} not listed");
    }
}

#[test]
fn template_written_json_decodes() {
    // Exactly what the Python template stored: float prices, integer quantities.
    let data = raw(r#"{"customer_id": "customer-456", "items": [
            {"id": "item-1", "name": "Widget", "price": 10.00, "quantity": 2},
            {"id": "item-2", "name": "Gadget", "price": 25.00, "quantity": 1}],
            "total": 45.0}"#);
    let event = Order::from_wire("order_created", &data).expect("decode");
    let order = Order::default().fold([&event]);
    assert_eq!(order.total, Money::from_cents(45_00));
    assert_eq!(order.items, vec![widget(), gadget()]);

    // The template's initial state had `"total": 0` (an integer) and status "pending".
    let state: Order = serde_json::from_str(
        r#"{"customer_id": null, "items": [], "total": 0, "status": "pending"}"#,
    )
    .expect("decode state");
    assert_eq!(state, Order::default());
}

#[test]
fn events_round_trip_through_the_wire() {
    for event in long_history() {
        let new_event = Order::to_new_event(&event).expect("to wire");
        // Through a whole `append` frame and back, as the server would see it.
        let frame = json!({"type": "append", "stream": "order-123", "events": [new_event]});
        let ClientMessage::Append(append) =
            ClientMessage::decode(&frame.to_string()).expect("decode frame")
        else {
            panic!("not an append");
        };
        let NewEvent { r#type, data } = &append.events[0];
        assert_eq!(Order::from_wire(r#type, data).expect("from wire"), event);
    }
}

#[test]
fn fold_equals_applying_one_by_one() {
    let log = long_history();
    let mut one_by_one = Order::default();
    for event in &log {
        one_by_one.apply(event);
    }
    let folded = Order::default().fold(&log);
    assert_eq!(folded, one_by_one);
    // 10x2 + 15 + 3x(19.99 + 0.07 + 0.20 + 33.33); Gadget and the 0.10 line removed.
    assert_eq!(
        folded.total,
        Money::from_cents(20_00 + 15_00 + 3 * (19_99 + 7 + 20 + 33_33))
    );
    assert_eq!(folded.total.to_string(), "195.77");
    assert_eq!(folded.status, OrderStatus::Shipped);
}

#[test]
fn snapshot_then_fold_rest_equals_full_fold() {
    let log = long_history();
    let full = Order::default().fold(&log);
    for n in 0..=log.len() {
        let at_n = Versioned {
            version: n as u64,
            state: Order::default().fold(&log[..n]),
        };
        // As a plain JSON document ...
        let text = serde_json::to_string(&at_n).expect("encode");
        let restored: Versioned<Order> = serde_json::from_str(&text).expect("decode");
        assert_eq!(restored, at_n, "snapshot after {n} events");
        assert_eq!(restored.state.fold(&log[n..]), full, "after {n} events");
        // ... and as the wire's Snapshot.
        let snapshot = at_n.to_snapshot().expect("to snapshot");
        let wire = serde_json::to_string(&snapshot).expect("encode snapshot");
        let snapshot = serde_json::from_str(&wire).expect("decode snapshot");
        let restored = Versioned::<Order>::from_snapshot(&snapshot).expect("from snapshot");
        assert_eq!(restored, at_n);
    }
}

#[test]
fn stored_events_advance_the_version() {
    let log = long_history();
    let stored: Vec<StoredEvent> = log
        .iter()
        .enumerate()
        .map(|(i, event)| {
            let NewEvent { r#type, data } = Order::to_new_event(event).expect("to wire");
            StoredEvent {
                version: i as u64 + 1,
                r#type,
                data,
                timestamp: "2024-01-01T00:00:00Z".into(),
            }
        })
        .collect();

    let mut order = Versioned::<Order>::default();
    assert_eq!(order.version, 0);
    for event in &stored {
        order.apply_stored(event).expect("in order");
    }
    assert_eq!(order.version, log.len() as u64);
    assert_eq!(order.state, Order::default().fold(&log));

    // A replayed (duplicate) or skipped-ahead event changes nothing.
    let before = order.clone();
    for version in [order.version, order.version + 2] {
        let event = StoredEvent {
            version,
            ..stored[1].clone()
        };
        let err = order.apply_stored(&event).expect_err("out of order");
        assert!(matches!(err, EventError::OutOfOrder { expected, found }
            if expected == before.version + 1 && found == version));
        assert_eq!(order, before);
    }
}

#[test]
fn unknown_event_type_is_skipped_and_reported() {
    let mut order = Order::default().fold(&long_history()[..2]);
    let before = order.clone();

    let err = order
        .apply_wire("order_refunded", &raw(r#"{"amount": 10.0}"#))
        .expect_err("unknown type");
    assert!(matches!(&err, EventError::UnknownType(t) if t == "order_refunded"));
    assert_eq!(order, before);

    // A known type with the wrong shape is a different error: not a newer writer but bad data.
    for (kind, data) in [
        ("item_removed", r#"{"id": "item-1"}"#),
        (
            "item_added",
            r#"{"id": "x", "name": "X", "price": 0.005, "quantity": 1}"#,
        ),
        (
            "item_added",
            r#"{"id": "x", "name": "X", "price": 1.0, "quantity": -1}"#,
        ),
        ("order_confirmed", "null"),
    ] {
        let err = order.apply_wire(kind, &raw(data)).expect_err("bad data");
        assert!(
            matches!(&err, EventError::InvalidData { event_type, .. } if event_type == kind),
            "{kind} {data}: {err}"
        );
        assert_eq!(order, before);
    }

    // Through Versioned, the unknown event still takes its place in the stream.
    let mut versioned = Versioned {
        version: 2,
        state: before.clone(),
    };
    let stored = StoredEvent {
        version: 3,
        r#type: "order_refunded".into(),
        data: raw("{}"),
        timestamp: "2024-01-01T00:00:00Z".into(),
    };
    let err = versioned.apply_stored(&stored).expect_err("reported");
    assert!(matches!(err, EventError::UnknownType(_)));
    assert_eq!(versioned.version, 3);
    assert_eq!(versioned.state, before);
}

#[test]
fn invalid_transitions_are_refused() {
    fn transition(command: &'static str, status: OrderStatus) -> OrderError {
        OrderError::InvalidTransition { command, status }
    }

    let pending = Order::default();
    let created = pending
        .clone()
        .fold(&pending.create("c", vec![widget()]).expect("create"));
    let confirmed = created.clone().fold(&created.confirm().expect("confirm"));
    let shipped = confirmed
        .clone()
        .fold(&confirmed.ship("T-1").expect("ship"));
    let cancelled = created.clone().fold(&created.cancel("no").expect("cancel"));

    assert_eq!(
        created.create("c", vec![]),
        Err(transition("create", OrderStatus::Created))
    );
    assert_eq!(
        pending.add_item(tool()),
        Err(transition("add_item", OrderStatus::Pending))
    );
    assert_eq!(
        pending.confirm(),
        Err(transition("confirm", OrderStatus::Pending))
    );
    assert_eq!(
        created.ship("T-1"),
        Err(transition("ship", OrderStatus::Created))
    );
    assert_eq!(
        confirmed.add_item(tool()),
        Err(transition("add_item", OrderStatus::Confirmed))
    );
    assert_eq!(
        confirmed.confirm(),
        Err(transition("confirm", OrderStatus::Confirmed))
    );
    assert_eq!(
        shipped.add_item(tool()),
        Err(transition("add_item", OrderStatus::Shipped))
    );
    assert_eq!(
        shipped.cancel("late"),
        Err(transition("cancel", OrderStatus::Shipped))
    );
    assert_eq!(
        cancelled.add_item(tool()),
        Err(transition("add_item", OrderStatus::Cancelled))
    );
    assert_eq!(
        cancelled.remove_item("item-1"),
        Err(transition("remove_item", OrderStatus::Cancelled))
    );
    assert_eq!(
        cancelled.ship("T-1"),
        Err(transition("ship", OrderStatus::Cancelled))
    );
    assert_eq!(
        cancelled.cancel("again"),
        Err(transition("cancel", OrderStatus::Cancelled))
    );

    assert_eq!(
        created.remove_item("nope"),
        Err(OrderError::UnknownItem("nope".into()))
    );
    assert_eq!(
        created.add_item(widget()),
        Err(OrderError::DuplicateItem("item-1".into()))
    );
    assert_eq!(
        pending.create("c", vec![widget(), widget()]),
        Err(OrderError::DuplicateItem("item-1".into()))
    );
    let emptied = created
        .clone()
        .fold(&created.remove_item("item-1").expect("remove"));
    assert_eq!(emptied.total, Money::ZERO);
    assert_eq!(emptied.confirm(), Err(OrderError::EmptyOrder));

    for (item, reason) in [
        (
            Item::new("", "X", Money::from_cents(1), 1),
            "id must not be empty",
        ),
        (
            Item::new("x", "X", Money::from_cents(1), 0),
            "quantity must be at least 1",
        ),
        (
            Item::new("x", "X", Money::from_cents(-1), 1),
            "price must not be negative",
        ),
        (Item::new("x", "X", Money::MAX, 2), "amount too large"),
    ] {
        let item_id = item.id.clone();
        assert_eq!(
            created.add_item(item),
            Err(OrderError::InvalidItem { item_id, reason })
        );
    }
    let err = created.ship("T-1").expect_err("refused");
    assert_eq!(err.to_string(), "cannot ship an order that is created");
}

#[test]
fn money_is_whole_cents_on_a_float_wire() {
    for (text, cents) in [
        ("10.00", 10_00),
        ("10", 10_00),
        ("0.07", 7),
        ("-0.07", -7),
        ("19.99", 19_99),
    ] {
        let money: Money = serde_json::from_str(text).expect(text);
        assert_eq!(money.cents(), cents, "{text}");
    }
    for text in ["0.005", "1.001", "1e300", "\"1.00\"", "null"] {
        assert!(
            serde_json::from_str::<Money>(text).is_err(),
            "{text} accepted"
        );
    }
    assert_eq!(Money::from_cents(-7).to_string(), "-0.07");
    assert_eq!(Money::from_cents(i64::MAX), Money::MAX);

    // Every amount survives a JSON round trip exactly, including awkward sums and the limit.
    let mut cents: i64 = 1;
    let mut samples = vec![0, Money::MAX.cents(), -Money::MAX.cents()];
    for _ in 0..20_000 {
        cents = cents
            .wrapping_mul(6_364_136_223_846_793)
            .wrapping_add(1_442_695_040_888_963)
            .rem_euclid(Money::MAX.cents());
        samples.extend([cents, cents % 1_000_000, -(cents % 100_000_000)]);
    }
    for cents in samples {
        let money = Money::from_cents(cents);
        let text = serde_json::to_string(&money).expect("encode");
        let back: Money = serde_json::from_str(&text).expect(&text);
        assert_eq!(back, money, "{text}");
    }
}

#[test]
fn commands_as_data_decode_from_their_json() {
    use tidings_protocol::order::OrderCommand;
    let cases = [
        (
            json!({"type": "create", "customer_id": "c-1", "items": [
                {"id": "item-1", "name": "Widget", "price": 10.0, "quantity": 2}]}),
            OrderCommand::Create {
                customer_id: "c-1".into(),
                items: vec![widget()],
            },
        ),
        (
            json!({"type": "create", "customer_id": "c-1"}),
            OrderCommand::Create {
                customer_id: "c-1".into(),
                items: vec![],
            },
        ),
        (
            json!({"type": "add_item", "id": "item-2", "name": "Gadget", "price": 25, "quantity": 1}),
            OrderCommand::AddItem(gadget()),
        ),
        (
            json!({"type": "remove_item", "item_id": "item-2"}),
            OrderCommand::RemoveItem {
                item_id: "item-2".into(),
            },
        ),
        (json!({"type": "confirm"}), OrderCommand::Confirm {}),
        (
            json!({"type": "ship", "tracking_number": "T-1"}),
            OrderCommand::Ship {
                tracking_number: "T-1".into(),
            },
        ),
        (
            json!({"type": "cancel", "reason": "changed my mind"}),
            OrderCommand::Cancel {
                reason: "changed my mind".into(),
            },
        ),
    ];
    for (wire, command) in cases {
        let decoded: OrderCommand = serde_json::from_value(wire.clone()).expect("decodes");
        assert_eq!(decoded, command, "{wire}");
        let again: OrderCommand =
            serde_json::from_value(serde_json::to_value(&command).expect("encodes"))
                .expect("round trip");
        assert_eq!(again, command);
    }
    for bad in [
        json!({"type": "teleport"}),
        json!({"type": "ship"}),
        json!({"customer_id": "c"}),
        json!({"type": "add_item", "id": "x", "name": "y", "price": 0.001, "quantity": 1}),
    ] {
        assert!(
            serde_json::from_value::<OrderCommand>(bad.clone()).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn handle_decides_like_the_command_methods_with_stable_codes() {
    use tidings_protocol::order::OrderCommand;
    use tidings_protocol::{CommandError, Decide};

    fn decide<A: Decide>(state: &A, command: &A::Command) -> Result<Vec<A::Event>, &'static str> {
        state.handle(command).map_err(|e| CommandError::code(&e))
    }
    let mut order = Order::default();
    let create = OrderCommand::Create {
        customer_id: "c-1".into(),
        items: vec![widget()],
    };
    assert_eq!(
        order.handle(&create),
        order.create("c-1", vec![widget()]),
        "same events as the method"
    );
    assert_eq!(
        decide(&order, &OrderCommand::Confirm {}),
        Err("INVALID_STATE")
    );
    let created = order.handle(&create).expect("create");
    order = order.fold(created.iter());
    assert_eq!(decide(&order, &create), Err("INVALID_STATE"));
    assert_eq!(
        decide(&order, &OrderCommand::AddItem(widget())),
        Err("DUPLICATE_ITEM")
    );
    assert_eq!(
        decide(
            &order,
            &OrderCommand::RemoveItem {
                item_id: "nope".into()
            }
        ),
        Err("UNKNOWN_ITEM")
    );
    assert_eq!(
        decide(
            &order,
            &OrderCommand::AddItem(Item::new("z", "Zero", Money::from_cents(1), 0))
        ),
        Err("INVALID_ITEM")
    );
    let emptied = order.clone().fold(
        order
            .handle(&OrderCommand::RemoveItem {
                item_id: "item-1".into(),
            })
            .expect("remove")
            .iter(),
    );
    assert_eq!(
        decide(&emptied, &OrderCommand::Confirm {}),
        Err("EMPTY_ORDER")
    );
    let confirmed = order.clone().fold(
        order
            .handle(&OrderCommand::Confirm {})
            .expect("confirm")
            .iter(),
    );
    let shipped = confirmed.clone().fold(
        confirmed
            .handle(&OrderCommand::Ship {
                tracking_number: "T-1".into(),
            })
            .expect("ship")
            .iter(),
    );
    assert_eq!(shipped.status, OrderStatus::Shipped);
    let refused = shipped
        .handle(&OrderCommand::Cancel {
            reason: "too late".into(),
        })
        .expect_err("shipped is final");
    assert_eq!(
        (refused.code(), refused.to_string().as_str()),
        ("INVALID_STATE", "cannot cancel an order that is shipped")
    );
}
