//! The protocol's golden server fixtures, fed through the SDK core: every frame the server may
//! send is decoded and routed to the right place.

use std::path::PathBuf;

use serde_json::Value;
use tidings_sdk::core::{Action, Change, Config, Core, Ctx, Input, Reply, SocketId};

const CTX: Ctx = Ctx {
    now: 1_000,
    unix_ms: 1_800_000_000_000,
    random: 0.5,
};

fn fixture(name: &str) -> Value {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "shared-protocol",
        "fixtures",
        "server",
        name,
    ]
    .iter()
    .collect();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn drain(core: &mut Core) -> Vec<Action> {
    let mut out: Vec<Action> = std::iter::from_fn(|| core.poll_action()).collect();
    // The shell runs a scheduled flush as a microtask, right after the call.
    if out.iter().any(|a| matches!(a, Action::ScheduleFlush)) {
        core.handle(CTX, Input::Flush);
        out.extend(std::iter::from_fn(|| core.poll_action()));
    }
    out
}

/// The `ref` of the first frame sent among `actions`.
fn first_ref(actions: &[Action]) -> String {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Send { frame, .. } => serde_json::from_str::<Value>(frame).ok(),
            _ => None,
        })
        .expect("a frame was sent")["ref"]
        .as_str()
        .expect("ref")
        .to_owned()
}

/// A core connected through the given `connected` fixture.
fn connected(hello: &str) -> (Core, SocketId) {
    let mut config = Config::new(vec!["ws://127.0.0.1/ws".into()], "fx");
    config.token = Some("t".into());
    let mut core = Core::new(config).expect("config");
    core.handle(CTX, Input::Start);
    let socket = drain(&mut core)
        .into_iter()
        .find_map(|a| match a {
            Action::OpenSocket { socket, .. } => Some(socket),
            _ => None,
        })
        .expect("open");
    core.handle(CTX, Input::SocketOpened(socket));
    feed(&mut core, socket, &fixture(hello));
    assert_eq!(core.state().as_str(), "connected", "{hello}");
    drain(&mut core);
    (core, socket)
}

fn feed(core: &mut Core, socket: SocketId, frame: &Value) -> Vec<Action> {
    core.handle(
        CTX,
        Input::Frame {
            socket,
            text: frame.to_string(),
        },
    );
    drain(core)
}

/// The fixture with its `ref` replaced by the one our request carries.
fn with_ref(name: &str, wire_ref: String) -> Value {
    let mut v = fixture(name);
    v["ref"] = Value::String(wire_ref);
    v
}

#[test]
fn every_server_fixture_decodes() {
    let dir: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "shared-protocol",
        "fixtures",
        "server",
    ]
    .iter()
    .collect();
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fixtures dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        tidings_protocol::ServerMessage::decode(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        n += 1;
    }
    assert!(n >= 18, "found only {n} fixtures");
}

#[test]
fn both_connected_fixtures_complete_the_handshake() {
    connected("connected.json");
    connected("connected_template.json");
}

#[test]
fn messages_are_delivered_ephemeral_and_durable() {
    let (mut core, socket) = connected("connected.json");
    let sub = core.subscribe(CTX, "chat", None).expect("subscribe");
    drain(&mut core);
    feed(&mut core, socket, &fixture("subscribed.json"));
    let out = feed(&mut core, socket, &fixture("message.json"));
    assert!(
        matches!(out.as_slice(), [Action::Deliver { sub: s, message }] if *s == sub && message.offset.is_none())
    );
    let out = feed(&mut core, socket, &fixture("message_durable.json"));
    assert!(
        matches!(out.as_slice(), [Action::Deliver { message, .. }] if message.offset == Some(42))
    );
    assert_eq!(
        core.positions()
            .get("chat")
            .and_then(|p| p.epoch.clone())
            .as_deref(),
        Some("e1a2b3")
    );
    // The same durable message again is a duplicate.
    assert!(feed(&mut core, socket, &fixture("message_durable.json")).is_empty());
    for quiet in [
        "heartbeat.json",
        "heartbeat_template.json",
        "pong.json",
        "pong_ref.json",
        "unsubscribed.json",
    ] {
        let out = feed(&mut core, socket, &fixture(quiet));
        assert!(
            out.iter().all(|a| matches!(a, Action::ArmTimer { .. })),
            "{quiet}: {out:?}"
        );
    }
}

#[test]
fn recovered_subscription_is_reported() {
    let (mut core, socket) = connected("connected.json");
    let since = tidings_protocol::Position {
        offset: 41,
        epoch: Some("e1a2b3".into()),
    };
    core.subscribe(CTX, "chat", Some(since)).expect("subscribe");
    let r = first_ref(&drain(&mut core));
    let out = feed(&mut core, socket, &with_ref("subscribed_recovered.json", r));
    assert!(out.iter().any(|a| matches!(
        a,
        Action::Recovery {
            recovered: true,
            ..
        }
    )));
}

#[test]
fn replies_settle_their_requests() {
    let (mut core, socket) = connected("connected.json");
    let raw = tidings_protocol::Json::parse("1").expect("json");
    let p = core.publish(CTX, "chat", raw).expect("publish");
    let h = core
        .history(CTX, "chat", Some(10), Some(50))
        .expect("history");
    let ev = tidings_protocol::NewEvent {
        r#type: "order_created".into(),
        data: tidings_protocol::json_null(),
    };
    let a = core
        .append(CTX, "order-123", Some(0), vec![ev.clone()])
        .expect("append");
    let c = core
        .append(CTX, "order-123", Some(3), vec![ev])
        .expect("append");
    let r = core.read(CTX, "order-123", Some(0)).expect("read");
    drain(&mut core);

    let out = feed(&mut core, socket, &with_ref("published.json", p.wire_ref()));
    assert!(out.iter().any(|x| matches!(x, Action::Resolve { request, reply: Reply::Published { offset: Some(43), .. } } if *request == p)));
    let out = feed(&mut core, socket, &with_ref("history.json", h.wire_ref()));
    assert!(out.iter().any(|x| matches!(x, Action::Resolve { request, reply: Reply::History(page) } if *request == h && page.messages.len() == 1)));
    let out = feed(&mut core, socket, &with_ref("appended.json", a.wire_ref()));
    assert!(out.iter().any(|x| matches!(x, Action::Resolve { request, reply: Reply::Appended { version: 1, .. } } if *request == a)));
    let out = feed(
        &mut core,
        socket,
        &with_ref("error_conflict.json", c.wire_ref()),
    );
    assert!(out.iter().any(|x| matches!(x, Action::Reject { request, error } if *request == c && error.code() == "VERSION_CONFLICT" && error.current_version() == Some(5))));
    let out = feed(&mut core, socket, &with_ref("events.json", r.wire_ref()));
    assert!(out.iter().any(|x| matches!(x, Action::Resolve { request, reply: Reply::Events(e) } if *request == r && e.events.len() == 2 && e.snapshot.is_some())));
    // Unattributed errors and `authenticated` for nobody are harmless.
    let out = feed(&mut core, socket, &fixture("error.json"));
    assert!(
        out.iter()
            .any(|x| matches!(x, Action::Error(e) if e.code() == "RATE_LIMITED"))
    );
    feed(&mut core, socket, &fixture("authenticated.json"));
    assert_eq!(core.state().as_str(), "connected");
}

#[test]
fn a_partly_refused_subscribe_fails_only_the_refused_topic() {
    let (mut core, socket) = connected("connected.json");
    let ok = core.subscribe(CTX, "ok.a", None).expect("subscribe");
    let secret = core.subscribe(CTX, "secret.b", None).expect("subscribe");
    let r = first_ref(&drain(&mut core));
    let out = feed(&mut core, socket, &with_ref("subscribed_partial.json", r));
    let failed: Vec<_> = out
        .iter()
        .filter_map(|a| match a {
            Action::SubscriptionFailed { sub, error } => Some((*sub, error.code())),
            _ => None,
        })
        .collect();
    assert_eq!(failed, [(secret, "FORBIDDEN")]);
    assert_eq!(core.topic_of(ok), Some("ok.a"));
    assert_eq!(
        core.positions().get("ok.a").map(|p| p.offset),
        Some(41),
        "its start position"
    );
}

#[test]
fn an_idempotency_conflict_and_a_page_with_more_reach_their_requests() {
    let (mut core, socket) = connected("connected.json");
    let raw = tidings_protocol::Json::parse("1").expect("json");
    let p = core.publish(CTX, "chat", raw).expect("publish");
    let h = core.history(CTX, "big", None, None).expect("history");
    drain(&mut core);
    let out = feed(
        &mut core,
        socket,
        &with_ref("error_idempotency.json", p.wire_ref()),
    );
    assert!(out.iter().any(|x| matches!(x, Action::Reject { request, error } if *request == p && error.code() == "IDEMPOTENCY_CONFLICT")));
    let out = feed(
        &mut core,
        socket,
        &with_ref("history_more.json", h.wire_ref()),
    );
    assert!(out.iter().any(|x| matches!(x, Action::Resolve { request, reply: Reply::History(page) } if *request == h && page.more)));
}

#[test]
fn presence_replies_settle_their_requests_and_joins_reach_the_watchers() {
    let (mut core, socket) = connected("connected.json");
    let p = core.presence(CTX, "room.1").expect("presence");
    let s = core.presence_stats(CTX, "room.1").expect("stats");
    drain(&mut core);
    let out = feed(&mut core, socket, &with_ref("presence.json", p.wire_ref()));
    assert!(out.iter().any(
        |x| matches!(x, Action::Resolve { request, reply: Reply::Presence(r) }
        if *request == p && r.members.len() == 2 && !r.more && r.members[1].info.get() == "null")
    ));
    let out = feed(
        &mut core,
        socket,
        &with_ref("presence_stats.json", s.wire_ref()),
    );
    assert!(out.iter().any(
        |x| matches!(x, Action::Resolve { request, reply: Reply::PresenceStats(r) }
        if *request == s && (r.clients, r.users) == (3, 2))
    ));

    // A watching subscriber: its read is answered by a page cut short, then a join and a leave.
    let sub = core.subscribe(CTX, "room.1", None).expect("subscribe");
    let r = first_ref(&drain(&mut core));
    let mut subscribed = fixture("subscribed.json");
    subscribed["topics"] = serde_json::json!(["room.1"]);
    subscribed["ref"] = Value::String(r);
    feed(&mut core, socket, &subscribed);
    core.watch_presence(CTX, sub);
    let read = first_ref(&drain(&mut core));
    let out = feed(&mut core, socket, &with_ref("presence_more.json", read));
    assert!(
        !out.iter()
            .any(|x| matches!(x, Action::MemberChanged { .. }))
    );
    assert_eq!(core.members(sub).map(|m| m.len()), Some(1));
    // alice (a1b2c3-1) is known already: her join is no change; her leave is one.
    let out = feed(&mut core, socket, &fixture("join.json"));
    assert!(
        !out.iter()
            .any(|x| matches!(x, Action::MemberChanged { .. }))
    );
    let out = feed(&mut core, socket, &fixture("leave.json"));
    assert!(out.iter().any(
        |x| matches!(x, Action::MemberChanged { sub: s, change: Change::Leave, event }
        if *s == sub && event.user == "alice" && event.topic == "room.1")
    ));
    assert_eq!(core.members(sub).map(|m| m.len()), Some(0));
}
