//! Scenario tests of the whole core: inputs in, actions out, with a hand-driven clock.

use serde_json::{Value, json};

use super::*;

/// A shell stand-in: owns the clock and records actions.
struct Shell {
    core: Core,
    now: u64,
    unix_ms: u64,
    random: f64,
    socket: Option<SocketId>,
    timer: Option<u64>,
    state: ConnectionState,
    /// Every frame sent, for the simulated server.
    outgoing: Vec<Value>,
    /// Leave [`Action::ScheduleFlush`] unanswered (to see several calls coalesce); by default
    /// the flush runs right after the call that scheduled it, as the microtask would.
    hold_flush: bool,
    /// A flush was scheduled and not run yet.
    flush_due: bool,
}

impl Shell {
    fn new(config: Config) -> Self {
        Shell {
            core: Core::new(config).expect("valid config"),
            now: 1_000,
            unix_ms: 1_800_000_000_000,
            random: 0.5,
            socket: None,
            timer: None,
            state: ConnectionState::Connecting,
            outgoing: Vec::new(),
            hold_flush: false,
            flush_due: false,
        }
    }

    fn with_token() -> Self {
        let mut c = Config::new(vec!["ws://h/ws".into()], "inst");
        c.token = Some("tok".into());
        Shell::new(c)
    }

    fn ctx(&self) -> Ctx {
        Ctx {
            now: self.now,
            unix_ms: self.unix_ms,
            random: self.random,
        }
    }

    fn drain(&mut self) -> Vec<Action> {
        let mut out = self.drain_only();
        if self.flush_due && !self.hold_flush {
            out.extend(self.run_flush());
        }
        out
    }

    /// Run the scheduled flush (the shell's microtask).
    fn run_flush(&mut self) -> Vec<Action> {
        self.flush_due = false;
        let ctx = self.ctx();
        self.core.handle(ctx, Input::Flush);
        self.drain_only()
    }

    fn drain_only(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        while let Some(a) = self.core.poll_action() {
            match &a {
                Action::ScheduleFlush => self.flush_due = true,
                Action::OpenSocket { socket, .. } => self.socket = Some(*socket),
                Action::ArmTimer { at } => self.timer = Some(*at),
                Action::CancelTimer => self.timer = None,
                Action::StateChanged(s) => self.state = *s,
                Action::Send { frame, .. } => {
                    if let Ok(v) = serde_json::from_str(frame) {
                        self.outgoing.push(v);
                    }
                }
                _ => {}
            }
            out.push(a);
        }
        out
    }

    fn input(&mut self, input: Input) -> Vec<Action> {
        let ctx = self.ctx();
        self.core.handle(ctx, input);
        self.drain()
    }

    fn socket(&self) -> SocketId {
        self.socket.expect("a socket was opened")
    }

    fn frame(&mut self, v: Value) -> Vec<Action> {
        let socket = self.socket();
        self.input(Input::Frame {
            socket,
            text: v.to_string(),
        })
    }

    fn open_and_handshake(&mut self) -> Vec<Action> {
        let socket = self.socket();
        let mut out = self.input(Input::SocketOpened(socket));
        out.extend(self.frame(
            json!({"type":"connected","client_id":"c1","timestamp":"t","heartbeat_ms":25000}),
        ));
        out
    }

    fn connect(&mut self) -> Vec<Action> {
        let mut out = self.input(Input::Start);
        out.extend(self.open_and_handshake());
        out
    }

    fn close(&mut self, code: u16) -> Vec<Action> {
        let socket = self.socket();
        self.input(Input::SocketClosed {
            socket,
            code,
            reason: String::new(),
        })
    }

    /// Jump to the armed timer and fire it.
    fn fire(&mut self) -> Vec<Action> {
        let at = self.timer.expect("a timer is armed");
        self.now = self.now.max(at);
        self.timer = None;
        self.input(Input::TimerFired)
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
        self.unix_ms += ms;
    }

    fn subscribe(&mut self, topic: &str, since: Option<Position>) -> (SubId, Vec<Action>) {
        let ctx = self.ctx();
        let id = self.core.subscribe(ctx, topic, since).expect("subscribe");
        (id, self.drain())
    }

    fn publish(&mut self, topic: &str, data: &str) -> (RequestId, Vec<Action>) {
        let ctx = self.ctx();
        let raw = tidings_protocol::Json::parse(data.to_owned()).expect("json");
        let id = self.core.publish(ctx, topic, raw).expect("publish");
        (id, self.drain())
    }
}

fn sent(actions: &[Action]) -> Vec<Value> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { frame, .. } => serde_json::from_str(frame).ok(),
            _ => None,
        })
        .collect()
}

/// The frames of one `type` that were sent.
fn sent_of(actions: &[Action], kind: &str) -> Vec<Value> {
    sent(actions)
        .into_iter()
        .filter(|f| f["type"] == kind)
        .collect()
}

fn delivered(actions: &[Action]) -> Vec<(SubId, Option<u64>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Deliver { sub, message } => Some((*sub, message.offset)),
            _ => None,
        })
        .collect()
}

fn msg(topic: &str, offset: Option<u64>) -> Value {
    let mut v =
        json!({"type":"message","topic":topic,"data":{"n":offset},"from":"c2","timestamp":"t"});
    if let Some(o) = offset {
        v["offset"] = json!(o);
        v["epoch"] = json!("e1");
    }
    v
}

fn rejected(actions: &[Action]) -> Vec<(RequestId, &'static str)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Reject { request, error } => Some((*request, error.code())),
            _ => None,
        })
        .collect()
}

// ---- connecting ---------------------------------------------------------------------------

#[test]
fn config_without_urls_is_refused() {
    let err = Core::new(Config::new(vec![], "i")).expect_err("no urls");
    assert_eq!(err.code(), "INVALID_ARGUMENT");
    assert!(Core::new(Config::new(vec![" ".into()], "i")).is_err());
}

#[test]
fn start_opens_a_socket_with_the_token_and_connects() {
    let mut s = Shell::with_token();
    let out = s.input(Input::Start);
    assert!(matches!(&out[0], Action::OpenSocket { url, .. } if url == "ws://h/ws?token=tok"));
    assert_eq!(s.timer, Some(11_000), "connect timeout armed");
    assert_eq!(s.core.state(), ConnectionState::Connecting);
    let out = s.open_and_handshake();
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::StateChanged(ConnectionState::Connected)))
    );
    assert_eq!(s.state, ConnectionState::Connected);
    // Nothing to restore: no frames sent.
    assert!(sent(&out).is_empty());
    // Starting twice does nothing.
    assert!(
        s.input(Input::Start)
            .iter()
            .all(|a| !matches!(a, Action::OpenSocket { .. }))
    );
}

#[test]
fn token_provider_is_asked_before_every_attempt() {
    let mut c = Config::new(vec!["ws://h/ws".into()], "i");
    c.token_provider = true;
    let mut s = Shell::new(c);
    assert!(matches!(
        s.input(Input::Start).as_slice(),
        [Action::FetchToken, ..]
    ));
    let out = s.input(Input::Token(Err("offline".into())));
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Error(e) if e.code() == "TOKEN_PROVIDER"))
    );
    assert!(matches!(s.core.phase(), Phase::Waiting { .. }));
    let out = s.fire();
    assert!(out.iter().any(|a| matches!(a, Action::FetchToken)));
    // An empty token is a provider failure too.
    s.input(Input::Token(Ok("  ".into())));
    assert!(matches!(s.core.phase(), Phase::Waiting { .. }));
    s.fire();
    let out = s.input(Input::Token(Ok("t2".into())));
    assert!(matches!(&out[0], Action::OpenSocket { url, .. } if url.ends_with("token=t2")));
    s.open_and_handshake();
    assert_eq!(s.state, ConnectionState::Connected);
    // A late answer from an abandoned fetch is ignored.
    assert!(s.input(Input::Token(Ok("late".into()))).is_empty());
}

#[test]
fn a_hanging_token_provider_times_out() {
    let mut c = Config::new(vec!["ws://h/ws".into()], "i");
    c.token_provider = true;
    let mut s = Shell::new(c);
    s.input(Input::Start);
    assert_eq!(s.timer, Some(11_000));
    s.fire();
    assert!(matches!(s.core.phase(), Phase::Waiting { .. }));
}

#[test]
fn a_socket_that_never_opens_is_abandoned_and_retried_on_the_next_url() {
    let mut c = Config::new(vec!["ws://a/ws".into(), "ws://b/ws".into()], "i");
    c.token = Some("t".into());
    let mut s = Shell::new(c);
    s.input(Input::Start);
    let first = s.socket();
    let out = s.fire();
    assert!(
        matches!(&out[0], Action::CloseSocket { socket, code: CLIENT_TIMEOUT_CLOSE, .. } if *socket == first)
    );
    let out = s.fire();
    assert!(matches!(&out[0], Action::OpenSocket { url, .. } if url.starts_with("ws://b/ws")));
    // Events of the abandoned socket change nothing.
    let out = s.input(Input::SocketOpened(first));
    assert!(out.is_empty());
    s.input(Input::SocketClosed {
        socket: first,
        code: 1006,
        reason: String::new(),
    });
    assert!(matches!(s.core.phase(), Phase::Opening { .. }));
}

#[test]
fn connected_before_open_or_twice_is_ignored() {
    let mut s = Shell::with_token();
    s.input(Input::Start);
    s.frame(json!({"type":"connected","client_id":"c","timestamp":"t"}));
    assert_eq!(s.core.state(), ConnectionState::Connecting);
    s.open_and_handshake();
    let out = s.frame(json!({"type":"connected","client_id":"c","timestamp":"t"}));
    assert!(sent(&out).is_empty());
}

#[test]
fn dropped_connection_reconnects_with_backoff_and_restores_subscriptions() {
    let mut s = Shell::with_token();
    s.connect();
    let (a, _) = s.subscribe("durable", None);
    let (_b, _) = s.subscribe("ephemeral", None);
    s.frame(json!({"type":"subscribed","topics":["durable","ephemeral"]}));
    s.frame(msg("durable", Some(7)));
    let out = s.close(1006);
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::StateChanged(ConnectionState::Reconnecting)))
    );
    assert_eq!(
        s.timer,
        Some(s.now + 250),
        "full jitter of a 500 ms ceiling at random 0.5"
    );
    s.fire();
    let out = s.open_and_handshake();
    let frames = sent_of(&out, "subscribe");
    assert_eq!(frames.len(), 1, "one subscribe for every topic: {frames:?}");
    assert_eq!(sent(&out).len(), 1, "and nothing else");
    assert_eq!(frames[0]["type"], "subscribe");
    assert_eq!(frames[0]["topics"], json!(["durable", "ephemeral"]));
    assert_eq!(
        frames[0]["since"],
        json!({"durable":{"offset":7,"epoch":"e1"}})
    );
    // Replay then confirmation: the handler sees 8 once.
    s.frame(msg("durable", Some(7)));
    s.frame(msg("durable", Some(8)));
    let r = frames[0]["ref"].as_str().expect("ref").to_owned();
    let out = s.frame(json!({"type":"subscribed","topics":["durable","ephemeral"],"recovered":{"durable":true},"ref":r}));
    assert_eq!(delivered(&out), [(a, Some(8))]);
    assert!(
        out.iter()
            .any(|x| matches!(x, Action::Recovery { sub, recovered: true, .. } if *sub == a))
    );
}

#[test]
fn backoff_grows_across_failed_attempts_and_resets_after_success() {
    let mut s = Shell::with_token();
    s.random = 0.999;
    s.connect();
    let mut delays = Vec::new();
    for _ in 0..4 {
        s.close(1006);
        delays.push(s.timer.expect("retry armed") - s.now);
        s.fire();
    }
    assert_eq!(delays, [499, 999, 1998, 3996]);
    // A connection the server drops at once is no success: the backoff keeps growing.
    s.open_and_handshake();
    s.close(1006);
    assert_eq!(s.timer.expect("retry") - s.now, 7992);
    s.fire();
    // One that lasts is: the next delay starts over.
    s.open_and_handshake();
    s.advance(connection::STABLE_MS);
    s.close(1006);
    assert_eq!(s.timer.expect("retry") - s.now, 499);
}

#[test]
fn close_codes_decide_whether_to_reconnect() {
    for code in [1001, 1006, 1011, 4002, 4003, 4999] {
        let mut s = Shell::with_token();
        s.connect();
        s.close(code);
        assert_eq!(s.state, ConnectionState::Reconnecting, "code {code}");
    }
    let mut s = Shell::with_token();
    s.connect();
    let ctx = s.ctx();
    let h = s.core.history(ctx, "t", None, None).expect("history");
    let out = s.close(1000);
    assert_eq!(s.state, ConnectionState::Closed);
    assert_eq!(rejected(&out), [(h, "CLOSED")]);
    assert_eq!(s.timer, None);
}

#[test]
fn auth_close_without_token_provider_is_final() {
    for code in [1008, 4001] {
        let mut s = Shell::with_token();
        s.connect();
        let (p, _) = s.publish("t", "1");
        let out = s.close(code);
        assert_eq!(s.state, ConnectionState::Closed);
        assert_eq!(rejected(&out), [(p, "UNAUTHORIZED")]);
        assert!(
            out.iter()
                .any(|a| matches!(a, Action::Error(e) if e.code() == "UNAUTHORIZED"))
        );
    }
}

#[test]
fn auth_close_with_token_provider_fetches_a_new_token() {
    for code in [1008, 4001] {
        let mut c = Config::new(vec!["ws://h/ws".into()], "i");
        c.token_provider = true;
        let mut s = Shell::new(c);
        s.input(Input::Start);
        s.input(Input::Token(Ok("old".into())));
        s.open_and_handshake();
        s.close(code);
        assert_eq!(s.state, ConnectionState::Reconnecting);
        let out = s.fire();
        assert!(
            matches!(out.as_slice(), [Action::FetchToken, ..]),
            "code {code}"
        );
    }
}

// ---- publishing ---------------------------------------------------------------------------

#[test]
fn publish_is_sent_with_id_and_ref_and_resolves_on_ack() {
    let mut s = Shell::with_token();
    s.connect();
    let (p, out) = s.publish("chat", r#"{"text":"hi"}"#);
    let f = &sent(&out)[0];
    assert_eq!(f["type"], "publish");
    assert_eq!(f["data"], json!({"text":"hi"}));
    assert_eq!(f["id"], "inst-1");
    assert_eq!(f["ref"], p.wire_ref());
    let out = s.frame(json!({"type":"published","ref":p.wire_ref(),"topic":"chat"}));
    assert!(
        matches!(out.as_slice(), [Action::Resolve { request, reply: Reply::Published { offset: None, .. } }, ..] if *request == p)
    );
    assert_eq!(s.core.unacknowledged(), 0);
    // A duplicate ack settles nothing.
    let out = s.frame(
        json!({"type":"published","ref":p.wire_ref(),"topic":"chat","offset":3,"epoch":"e"}),
    );
    assert!(!out.iter().any(|a| matches!(a, Action::Resolve { .. })));
}

#[test]
fn offline_publishes_wait_and_go_out_in_order_after_connecting() {
    let mut s = Shell::with_token();
    let (p1, out) = s.publish("t", "1");
    assert!(sent(&out).is_empty());
    let (p2, _) = s.publish("t", "2");
    let out = s.connect();
    let frames = sent(&out);
    assert_eq!(
        frames.iter().map(|f| f["data"].clone()).collect::<Vec<_>>(),
        [json!(1), json!(2)]
    );
    assert_eq!(frames[0]["ref"], p1.wire_ref());
    assert_eq!(frames[1]["ref"], p2.wire_ref());
}

#[test]
fn unacknowledged_publishes_are_resent_with_the_same_id_after_reconnect() {
    let mut s = Shell::with_token();
    s.connect();
    let (p, out) = s.publish("t", "1");
    let first = sent(&out)[0].clone();
    s.close(1006);
    s.fire();
    let out = s.open_and_handshake();
    let again = sent(&out);
    assert_eq!(again, std::slice::from_ref(&first), "same frame, same id");
    let out =
        s.frame(json!({"type":"published","ref":first["ref"],"topic":"t","offset":1,"epoch":"e"}));
    assert!(out.iter().any(|a| matches!(a, Action::Resolve { request, reply: Reply::Published { offset: Some(1), .. } } if *request == p)));
}

#[test]
fn outbox_is_bounded() {
    let mut c = Config::new(vec!["ws://h/ws".into()], "i");
    c.outbox_capacity = 2;
    let mut s = Shell::new(c);
    s.publish("t", "1");
    s.publish("t", "2");
    let ctx = s.ctx();
    let raw = tidings_protocol::Json::parse("3").expect("json");
    let err = s.core.publish(ctx, "t", raw).expect_err("full");
    assert_eq!(err.code(), "OUTBOX_FULL");
}

#[test]
fn publish_errors_and_timeouts_reject_and_are_not_resent() {
    let mut s = Shell::with_token();
    s.connect();
    let (p, _) = s.publish("t", "1");
    let out = s.frame(json!({"type":"error","code":"FORBIDDEN","message":"no","ref":p.wire_ref()}));
    assert_eq!(rejected(&out), [(p, "FORBIDDEN")]);
    let (q, _) = s.publish("t", "2");
    // Keep the socket alive with heartbeats until the request times out.
    for _ in 0..3 {
        s.advance(10_000);
        s.frame(json!({"type":"heartbeat"}));
    }
    let out = s.fire();
    assert_eq!(rejected(&out), [(q, "TIMEOUT")]);
    assert_eq!(s.core.unacknowledged(), 0);
    s.close(1006);
    s.fire();
    let out = s.open_and_handshake();
    assert!(sent(&out).is_empty(), "nothing left to resend");
}

#[test]
fn empty_topics_are_refused() {
    let mut s = Shell::with_token();
    let ctx = s.ctx();
    let raw = tidings_protocol::Json::parse("1").expect("json");
    assert_eq!(
        s.core.publish(ctx, "", raw).map_err(|e| e.code()),
        Err("INVALID_ARGUMENT")
    );
    assert!(s.core.subscribe(ctx, "", None).is_err());
    assert!(s.core.history(ctx, "", None, None).is_err());
    assert!(s.core.read(ctx, "", None).is_err());
    assert!(s.core.append(ctx, "s", None, vec![]).is_err());
}

// ---- requests -----------------------------------------------------------------------------

#[test]
fn history_append_read_round_trips() {
    let mut s = Shell::with_token();
    s.connect();
    let ctx = s.ctx();
    let h = s
        .core
        .history(ctx, "chat", Some(10), Some(50))
        .expect("history");
    let ev = NewEvent {
        r#type: "order_created".into(),
        data: tidings_protocol::Json::parse("{}").expect("json"),
    };
    let a = s
        .core
        .append(ctx, "order-1", Some(0), vec![ev])
        .expect("append");
    let r = s.core.read(ctx, "order-1", None).expect("read");
    let frames = sent(&s.drain());
    assert_eq!(
        frames[0],
        json!({"type":"history","topic":"chat","since":10,"limit":50,"ref":h.wire_ref()})
    );
    assert_eq!(frames[1]["expected_version"], 0);
    assert_eq!(
        frames[2],
        json!({"type":"read","stream":"order-1","ref":r.wire_ref()})
    );

    let out = s.frame(json!({"type":"history","ref":h.wire_ref(),"topic":"chat","epoch":"e","messages":[],"latest":0}));
    assert!(matches!(&out[0], Action::Resolve { reply: Reply::History(p), .. } if p.latest == 0));
    let out = s.frame(json!({"type":"error","code":"VERSION_CONFLICT","message":"at 5","ref":a.wire_ref(),"current_version":5}));
    assert!(
        matches!(&out[0], Action::Reject { request, error } if *request == a && error.code() == "VERSION_CONFLICT" && error.current_version() == Some(5))
    );
    let out = s.frame(
        json!({"type":"events","ref":r.wire_ref(),"stream":"order-1","version":0,"events":[]}),
    );
    assert!(matches!(&out[0], Action::Resolve { reply: Reply::Events(e), .. } if e.version == 0));
}

#[test]
fn appended_resolves_with_the_version() {
    let mut s = Shell::with_token();
    s.connect();
    let ctx = s.ctx();
    let ev = NewEvent {
        r#type: "x".into(),
        data: tidings_protocol::json_null(),
    };
    let a = s.core.append(ctx, "s", None, vec![ev]).expect("append");
    s.drain();
    let out = s.frame(json!({"type":"appended","ref":a.wire_ref(),"stream":"s","version":4}));
    assert!(matches!(
        &out[0],
        Action::Resolve {
            reply: Reply::Appended { version: 4, .. },
            ..
        }
    ));
}

#[test]
fn replies_of_the_wrong_kind_are_ignored() {
    let mut s = Shell::with_token();
    s.connect();
    let ctx = s.ctx();
    let h = s.core.history(ctx, "chat", None, None).expect("history");
    let out = s.frame(json!({"type":"appended","ref":h.wire_ref(),"stream":"s","version":4}));
    assert!(out.iter().all(|a| !matches!(a, Action::Resolve { .. })));
}

#[test]
fn requests_in_flight_fail_on_disconnect_and_offline_ones_wait() {
    let mut s = Shell::with_token();
    s.connect();
    let ctx = s.ctx();
    let h = s.core.history(ctx, "t", None, None).expect("history");
    let out = s.close(1006);
    assert_eq!(rejected(&out), [(h, "DISCONNECTED")]);
    let ctx = s.ctx();
    let q = s.core.read(ctx, "s", None).expect("read");
    s.fire();
    let out = s.open_and_handshake();
    assert_eq!(sent(&out)[0]["ref"], q.wire_ref());
}

// ---- subscriptions ------------------------------------------------------------------------

#[test]
fn subscribe_delivers_dedups_and_recovers_gaps() {
    let mut s = Shell::with_token();
    s.connect();
    let (a, out) = s.subscribe("t", None);
    let f = &sent_of(&out, "subscribe")[0];
    assert_eq!(f["topics"], json!(["t"]));
    assert!(f.get("since").is_none());
    let (b, out) = s.subscribe("t", None);
    assert!(
        sent(&out).is_empty(),
        "second subscriber shares the server subscription"
    );
    s.frame(json!({"type":"subscribed","topics":["t"],"ref":f["ref"]}));
    assert_eq!(
        delivered(&s.frame(msg("t", Some(1)))),
        [(a, Some(1)), (b, Some(1))]
    );
    assert!(delivered(&s.frame(msg("t", Some(1)))).is_empty());
    let out = s.frame(msg("t", Some(3)));
    assert!(delivered(&out).is_empty());
    let f = &sent(&out)[0];
    assert_eq!(f["since"], json!({"t":{"offset":1,"epoch":"e1"}}));
    s.frame(msg("t", Some(2)));
    s.frame(msg("t", Some(3)));
    let out =
        s.frame(json!({"type":"subscribed","topics":["t"],"recovered":{"t":true},"ref":f["ref"]}));
    assert_eq!(
        delivered(&out),
        [(a, Some(2)), (b, Some(2)), (a, Some(3)), (b, Some(3))]
    );
    assert_eq!(s.core.positions()["t"].offset, 3);
}

#[test]
fn a_new_topic_learns_its_baseline_so_a_reconnect_replays_what_came_meanwhile() {
    let mut s = Shell::with_token();
    s.connect();
    let (a, out) = s.subscribe("t", None);
    let frames = sent(&out);
    assert_eq!(
        frames.len(),
        1,
        "one subscribe, no other request: {frames:?}"
    );
    assert_eq!(frames[0]["type"], "subscribe");
    assert!(frames[0].get("since").is_none());
    // The server says where the subscription started.
    s.frame(json!({"type":"subscribed","topics":["t"],"positions":{"t":{"offset":5,"epoch":"e1"}},"ref":frames[0]["ref"]}));
    // Nothing arrives; the connection drops and messages 6 and 7 are published meanwhile.
    s.close(1006);
    s.fire();
    let out = s.open_and_handshake();
    let f = &sent_of(&out, "subscribe")[0];
    assert_eq!(f["since"], json!({"t":{"offset":5,"epoch":"e1"}}));
    s.frame(msg("t", Some(6)));
    s.frame(msg("t", Some(7)));
    let out =
        s.frame(json!({"type":"subscribed","topics":["t"],"recovered":{"t":true},"ref":f["ref"]}));
    assert_eq!(delivered(&out), [(a, Some(6)), (a, Some(7))]);
}

#[test]
fn a_baseline_never_overrides_a_delivered_position() {
    let mut s = Shell::with_token();
    s.connect();
    let (_, out) = s.subscribe("t", None);
    let f = &sent_of(&out, "subscribe")[0];
    // A live message may come before the reply (the server queues it first).
    s.frame(msg("t", Some(9)));
    s.frame(json!({"type":"subscribed","topics":["t"],"positions":{"t":{"offset":8,"epoch":"e1"}},"ref":f["ref"]}));
    assert_eq!(s.core.positions()["t"].offset, 9);
    // An ephemeral topic has no position.
    let (_, out) = s.subscribe("eph", None);
    let f = &sent_of(&out, "subscribe")[0];
    s.frame(json!({"type":"subscribed","topics":["t","eph"],"ref":f["ref"]}));
    assert!(!s.core.positions().contains_key("eph"));
}

#[test]
fn subscribe_with_since_asks_for_a_replay() {
    let mut s = Shell::with_token();
    s.connect();
    let since = Position {
        offset: 41,
        epoch: Some("e1".into()),
    };
    let (a, out) = s.subscribe("chat", Some(since));
    let f = &sent(&out)[0];
    assert_eq!(f["since"], json!({"chat":{"offset":41,"epoch":"e1"}}));
    let out = s.frame(
        json!({"type":"subscribed","topics":["chat"],"recovered":{"chat":false},"ref":f["ref"]}),
    );
    assert!(
        matches!(out.as_slice(), [Action::Recovery { sub, recovered: false, .. }] if *sub == a)
    );
}

#[test]
fn subscribed_without_ref_settles_listed_topics() {
    let mut s = Shell::with_token();
    s.connect();
    s.subscribe(
        "t",
        Some(Position {
            offset: 0,
            epoch: None,
        }),
    );
    let out = s.frame(json!({"type":"subscribed","topics":["t"]}));
    assert!(matches!(
        out.as_slice(),
        [Action::Recovery {
            recovered: true,
            ..
        }]
    ));
}

#[test]
fn refused_subscription_is_reported() {
    let mut s = Shell::with_token();
    s.connect();
    let (a, out) = s.subscribe("secret", None);
    let r = sent_of(&out, "subscribe")[0]["ref"].clone();
    let out = s.frame(json!({"type":"error","code":"FORBIDDEN","message":"no","ref":r}));
    assert!(
        matches!(&out[0], Action::SubscriptionFailed { sub, error } if *sub == a && error.code() == "FORBIDDEN")
    );
    assert_eq!(s.core.topic_of(a), None);
}

#[test]
fn unsubscribing_the_last_subscriber_unsubscribes_on_the_server() {
    let mut s = Shell::with_token();
    s.connect();
    let (a, _) = s.subscribe("t", None);
    let (b, _) = s.subscribe("t", None);
    let ctx = s.ctx();
    s.core.unsubscribe(ctx, a);
    assert!(sent(&s.drain()).is_empty());
    s.core.unsubscribe(ctx, b);
    let f = sent(&s.drain());
    assert_eq!(f[0]["type"], "unsubscribe");
    assert_eq!(f[0]["topics"], json!(["t"]));
    s.frame(json!({"type":"unsubscribed","topics":[],"ref":f[0]["ref"]}));
    assert!(
        delivered(&s.frame(msg("t", None))).is_empty(),
        "late messages are dropped"
    );
    // Offline unsubscribe sends nothing.
    let (c, _) = s.subscribe("u", None);
    s.close(1006);
    let ctx = s.ctx();
    s.core.unsubscribe(ctx, c);
    assert!(sent(&s.drain()).is_empty());
}

// ---- liveness -----------------------------------------------------------------------------

#[test]
fn a_silent_socket_is_probed_then_replaced() {
    let mut s = Shell::with_token();
    s.connect(); // heartbeat_ms 25000: keepalive 25 s, probe after 37.5 s of silence
    let out = s.fire();
    assert_eq!(sent(&out), [json!({"type":"ping"})], "keepalive at 25 s");
    let out = s.fire();
    assert_eq!(s.now, 1_000 + 37_500);
    assert_eq!(sent(&out), [json!({"type":"ping"})], "probe");
    let socket = s.socket();
    let out = s.fire();
    assert!(
        matches!(&out[0], Action::CloseSocket { socket: x, code: CLIENT_TIMEOUT_CLOSE, .. } if *x == socket)
    );
    assert_eq!(s.state, ConnectionState::Reconnecting);
}

#[test]
fn heartbeats_keep_the_connection() {
    let mut s = Shell::with_token();
    s.connect();
    for _ in 0..20 {
        s.advance(25_000);
        s.frame(json!({"type":"heartbeat"}));
        let at = s.timer.expect("armed");
        if at <= s.now {
            s.fire();
        }
    }
    assert_eq!(s.state, ConnectionState::Connected);
}

#[test]
fn a_throttled_timer_firing_late_does_not_kill_the_connection() {
    let mut s = Shell::with_token();
    s.connect();
    s.fire(); // keepalive
    s.fire(); // probe sent at 38.5 s, deadline 48.5 s
    s.now += 60_000; // background tab: the timer runs a minute late
    s.timer = None;
    let out = s.input(Input::TimerFired);
    assert_eq!(sent(&out), [json!({"type":"ping"})]);
    assert_eq!(s.state, ConnectionState::Connected);
    s.frame(json!({"type":"pong"}));
    assert_eq!(s.state, ConnectionState::Connected);
}

#[test]
fn visibility_and_network_events_probe_or_retry() {
    let mut s = Shell::with_token();
    s.connect();
    assert_eq!(sent(&s.input(Input::Visible)), [json!({"type":"ping"})]);
    assert!(
        sent(&s.input(Input::Offline)).is_empty(),
        "probe already outstanding"
    );
    s.close(1006);
    // Offline: no retry timer at all (liveness and requests are idle).
    s.input(Input::Offline);
    assert_eq!(s.timer, None);
    assert!(
        s.input(Input::Visible).is_empty(),
        "visible while offline waits"
    );
    let out = s.input(Input::Online);
    assert!(
        out.iter().any(|a| matches!(a, Action::OpenSocket { .. })),
        "online retries at once"
    );
    s.open_and_handshake();
    s.close(1006);
    let out = s.input(Input::Visible);
    assert!(
        out.iter().any(|a| matches!(a, Action::OpenSocket { .. })),
        "visible retries at once"
    );
}

// ---- tokens -------------------------------------------------------------------------------

fn jwt(exp: u64) -> String {
    fn b64(s: &str) -> String {
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let b = s.as_bytes();
        let mut out = String::new();
        for chunk in b.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, x)| acc | (u32::from(*x) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            }
        }
        out
    }
    format!(
        "{}.{}.sig",
        b64(r#"{"alg":"HS256"}"#),
        b64(&format!(r#"{{"sub":"a","exp":{exp}}}"#))
    )
}

#[test]
fn tokens_are_refreshed_in_band_before_expiry_without_touching_subscriptions() {
    let mut c = Config::new(vec!["ws://h/ws".into()], "i");
    c.token_provider = true;
    let mut s = Shell::new(c);
    let exp = s.unix_ms / 1000 + 10; // ten seconds left: refresh at 8 s
    s.input(Input::Start);
    s.input(Input::Token(Ok(jwt(exp))));
    s.open_and_handshake();
    s.subscribe("t", None);
    assert_eq!(s.timer, Some(s.now + 8_000));
    s.unix_ms += 8_000;
    let out = s.fire();
    assert!(out.iter().any(|a| matches!(a, Action::FetchToken)));
    let out = s.input(Input::Token(Ok("fresh".into())));
    let f = &sent(&out)[0];
    assert_eq!(f["type"], "auth");
    assert_eq!(f["token"], "fresh");
    let out = s.frame(json!({"type":"authenticated","ref":f["ref"],"user":"a","expires_at": s.unix_ms / 1000 + 100}));
    assert!(sent(&out).is_empty(), "no resubscribe");
    assert!(!out.iter().any(|a| matches!(a, Action::StateChanged(_))));
    assert_eq!(
        s.core.refresh_at,
        Some(s.now + 80_000),
        "next refresh from expires_at"
    );
}

#[test]
fn a_failed_refresh_is_retried() {
    let mut c = Config::new(vec!["ws://h/ws".into()], "i");
    c.token_provider = true;
    let mut s = Shell::new(c);
    let exp = s.unix_ms / 1000 + 10;
    s.input(Input::Start);
    s.input(Input::Token(Ok(jwt(exp))));
    s.open_and_handshake();
    s.fire();
    let out = s.input(Input::Token(Err("nope".into())));
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Error(e) if e.code() == "TOKEN_PROVIDER"))
    );
    assert_eq!(s.timer, Some(s.now + 1_000));
    s.fire();
    let out = s.input(Input::Token(Ok("fresh".into())));
    let r = sent(&out)[0]["ref"].clone();
    let out = s.frame(json!({"type":"error","code":"UNAUTHORIZED","message":"bad","ref":r}));
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Error(e) if e.code() == "UNAUTHORIZED"))
    );
    assert_eq!(s.state, ConnectionState::Connected);
}

// ---- closing ------------------------------------------------------------------------------

#[test]
fn close_settles_everything_and_stays_closed() {
    let mut s = Shell::with_token();
    s.connect();
    let (p, _) = s.publish("t", "1");
    let ctx = s.ctx();
    let r = s.core.read(ctx, "s", None).expect("read");
    s.drain();
    s.core.close();
    let out = s.drain();
    assert!(matches!(&out[0], Action::CloseSocket { code: 1000, .. }));
    assert_eq!(rejected(&out), [(p, "CLOSED"), (r, "CLOSED")]);
    assert_eq!(s.state, ConnectionState::Closed);
    assert_eq!(s.timer, None);
    let ctx = s.ctx();
    assert!(s.core.subscribe(ctx, "t", None).is_err());
    assert!(s.core.history(ctx, "t", None, None).is_err());
    s.core.close();
    assert!(s.drain().is_empty());
    assert!(s.input(Input::Online).is_empty());
    assert!(s.input(Input::TimerFired).is_empty());
}

#[test]
fn garbage_unknown_and_unrouted_frames_are_harmless() {
    let mut s = Shell::with_token();
    s.connect();
    let socket = s.socket();
    for text in [
        "",
        "not json",
        "[]",
        r#"{"type":42}"#,
        r#"{"type":"from_the_future"}"#,
        r#"{"type":"message"}"#,
    ] {
        let out = s.input(Input::Frame {
            socket,
            text: text.into(),
        });
        assert!(out.is_empty(), "{text}");
    }
    let out = s.frame(json!({"type":"error","code":"RATE_LIMITED","message":"slow down"}));
    assert!(matches!(out.as_slice(), [Action::Error(e)] if e.code() == "RATE_LIMITED"));
    let out = s.frame(json!({"type":"error","code":"SOMETHING_NEW","message":"?","ref":"nope"}));
    assert!(matches!(out.as_slice(), [Action::Error(e)] if e.code() == "UNKNOWN"));
}

// ---- presence -----------------------------------------------------------------------------

impl Shell {
    /// Open the socket and say `connected` as connection `client_id`.
    fn handshake_as(&mut self, client_id: &str) -> Vec<Action> {
        let socket = self.socket();
        let mut out = self.input(Input::SocketOpened(socket));
        out.extend(self.frame(
            json!({"type":"connected","client_id":client_id,"timestamp":"t","heartbeat_ms":25000}),
        ));
        out
    }

    fn watch(&mut self, sub: SubId) -> Vec<Action> {
        let ctx = self.ctx();
        self.core.watch_presence(ctx, sub);
        self.drain()
    }
}

/// `(sub, "+client_id")` for each join reported, `(sub, "-client_id")` for each leave.
fn member_changes(actions: &[Action]) -> Vec<(SubId, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::MemberChanged { sub, change, event } => {
                let sign = if *change == Change::Join { "+" } else { "-" };
                Some((*sub, format!("{sign}{}", event.client_id)))
            }
            _ => None,
        })
        .collect()
}

fn member(client_id: &str, user: &str) -> Value {
    json!({"client_id":client_id,"user":user,"info":{"name":user}})
}

fn join(topic: &str, client_id: &str, user: &str) -> Value {
    json!({"type":"join","topic":topic,"client_id":client_id,"user":user,"info":{"name":user}})
}

fn leave(topic: &str, client_id: &str, user: &str) -> Value {
    json!({"type":"leave","topic":topic,"client_id":client_id,"user":user,"info":null})
}

fn member_ids(s: &Shell, sub: SubId) -> Option<Vec<String>> {
    s.core
        .members(sub)
        .map(|m| m.into_iter().map(|m| m.client_id).collect())
}

#[test]
fn presence_and_presence_stats_resolve_and_settle_like_history() {
    let mut s = Shell::with_token();
    // Made offline: sent once connected.
    let ctx = s.ctx();
    let p = s.core.presence(ctx, "room").expect("presence");
    let st = s.core.presence_stats(ctx, "room").expect("stats");
    assert!(sent(&s.drain()).is_empty());
    let frames = sent(&s.connect());
    assert_eq!(
        frames,
        [
            json!({"type":"presence","topic":"room","ref":p.wire_ref()}),
            json!({"type":"presence_stats","topic":"room","ref":st.wire_ref()}),
        ]
    );
    let out = s.frame(json!({"type":"presence","ref":p.wire_ref(),"topic":"room","members":[member("c2","bob")],"more":true}));
    assert!(
        matches!(&out[0], Action::Resolve { request, reply: Reply::Presence(r) }
        if *request == p && r.more && r.members[0].user == "bob" && r.members[0].info.get() == r#"{"name":"bob"}"#)
    );
    let out = s.frame(
        json!({"type":"presence_stats","ref":st.wire_ref(),"topic":"room","clients":3,"users":2}),
    );
    assert!(
        matches!(&out[0], Action::Resolve { request, reply: Reply::PresenceStats(r) }
        if *request == st && r.clients == 3 && r.users == 2)
    );
    // A topic without presence; requests in flight when the socket drops.
    let ctx = s.ctx();
    let off = s.core.presence(ctx, "plain").expect("presence");
    let out = s.frame(
        json!({"type":"error","code":"PRESENCE_DISABLED","message":"no","ref":off.wire_ref()}),
    );
    assert_eq!(rejected(&out), [(off, "PRESENCE_DISABLED")]);
    let ctx = s.ctx();
    let q = s.core.presence(ctx, "room").expect("presence");
    let ctx = s.ctx();
    let q2 = s.core.presence_stats(ctx, "room").expect("stats");
    let out = s.close(1006);
    assert_eq!(rejected(&out), [(q, "DISCONNECTED"), (q2, "DISCONNECTED")]);
    let ctx = s.ctx();
    assert_eq!(
        s.core.presence(ctx, "").map_err(|e| e.code()).err(),
        Some("INVALID_ARGUMENT")
    );
}

#[test]
fn a_watched_topic_is_read_once_active_and_joins_and_leaves_are_reported() {
    let mut s = Shell::with_token();
    s.connect();
    let (a, out) = s.subscribe("room", None);
    let r = sent_of(&out, "subscribe")[0]["ref"].clone();
    // Watching before the server confirmed the subscription: the read waits for it.
    assert!(sent(&s.watch(a)).is_empty());
    assert_eq!(member_ids(&s, a), None);
    let out = s.frame(json!({"type":"subscribed","topics":["room"],"ref":r}));
    let reads = sent_of(&out, "presence");
    assert_eq!(reads.len(), 1, "{out:?}");
    assert_eq!(reads[0]["topic"], "room");
    let out = s.frame(json!({"type":"presence","ref":reads[0]["ref"],"topic":"room","members":[member("c1","alice"),member("c2","bob")]}));
    assert!(member_changes(&out).is_empty(), "the baseline is silent");
    assert_eq!(member_ids(&s, a), Some(vec!["c1".into(), "c2".into()]));
    // A second subscriber of the topic watches too: no second read, it shares the roster.
    let (b, _) = s.subscribe("room", None);
    assert!(sent(&s.watch(b)).is_empty());
    assert_eq!(member_ids(&s, b), member_ids(&s, a));
    let out = s.frame(join("room", "c3", "carol"));
    assert_eq!(member_changes(&out), [(a, "+c3".into()), (b, "+c3".into())]);
    let Some(Action::MemberChanged { event, .. }) = out.first() else {
        panic!("{out:?}")
    };
    assert_eq!(
        (event.topic.as_str(), event.user.as_str(), event.info.get()),
        ("room", "carol", r#"{"name":"carol"}"#)
    );
    assert!(member_changes(&s.frame(join("room", "c3", "carol"))).is_empty());
    let out = s.frame(leave("room", "c2", "bob"));
    assert_eq!(member_changes(&out), [(a, "-c2".into()), (b, "-c2".into())]);
    // Joins of topics nobody watches (or that are not subscribed) are ignored.
    assert!(s.frame(join("elsewhere", "c9", "zed")).is_empty());
    // b leaves: a still hears; then a leaves too, and the topic's roster is gone.
    let ctx = s.ctx();
    s.core.unsubscribe(ctx, b);
    s.drain();
    assert_eq!(
        member_changes(&s.frame(leave("room", "c3", "carol"))),
        [(a, "-c3".into())]
    );
    let ctx = s.ctx();
    s.core.unsubscribe(ctx, a);
    s.drain();
    assert_eq!(member_ids(&s, a), None);
    assert!(s.frame(join("room", "c4", "dave")).is_empty());
}

#[test]
fn watching_an_active_subscription_reads_at_once_and_the_reconnect_reports_the_difference() {
    let mut s = Shell::with_token();
    s.connect(); // as c1
    let (a, out) = s.subscribe("room", None);
    let r = sent_of(&out, "subscribe")[0]["ref"].clone();
    let out = s.frame(json!({"type":"subscribed","topics":["room"],"ref":r}));
    assert!(sent_of(&out, "presence").is_empty(), "nobody watches yet");
    let reads = sent_of(&s.watch(a), "presence");
    assert_eq!(reads.len(), 1);
    s.frame(
        json!({"type":"presence","ref":reads[0]["ref"],"topic":"room",
        "members":[member("c1","alice"),member("c2","bob"),member("c3","carol")]}),
    );

    // The connection drops. Meanwhile carol leaves, dave arrives, bob's tab reconnects as c5.
    s.close(1006);
    assert_eq!(
        member_ids(&s, a).map(|m| m.len()),
        Some(3),
        "kept while away"
    );
    s.fire();
    let out = s.handshake_as("c4");
    let subscribe = sent_of(&out, "subscribe");
    assert!(
        sent_of(&out, "presence").is_empty(),
        "not before the subscription is back"
    );
    let out = s.frame(json!({"type":"subscribed","topics":["room"],"ref":subscribe[0]["ref"]}));
    let reads = sent_of(&out, "presence");
    assert_eq!(reads.len(), 1, "read again once re-established");
    // Live while the read is in flight: erin arrives (after the server's snapshot).
    assert_eq!(
        member_changes(&s.frame(join("room", "c6", "erin"))),
        [(a, "+c6".into())]
    );
    let out = s.frame(json!({"type":"presence","ref":reads[0]["ref"],"topic":"room",
        "members":[member("c2","bob"),member("c4","alice"),member("c5","bob"),member("c7","dave")]}));
    assert_eq!(
        member_changes(&out),
        [(a, "-c3".into()), (a, "+c5".into()), (a, "+c7".into()),],
        "c2 (bob's old tab) is still listed by the server, c1/c4 are us, c6 was already reported"
    );
    assert_eq!(
        member_ids(&s, a),
        Some(vec![
            "c2".into(),
            "c4".into(),
            "c5".into(),
            "c6".into(),
            "c7".into()
        ])
    );
    // The server notices bob's old tab: a live leave.
    assert_eq!(
        member_changes(&s.frame(leave("room", "c2", "bob"))),
        [(a, "-c2".into())]
    );
}

#[test]
fn a_refused_presence_read_tells_the_watchers_and_the_subscription_lives_on() {
    let mut s = Shell::with_token();
    s.connect();
    let (a, out) = s.subscribe("plain", None);
    let r = sent_of(&out, "subscribe")[0]["ref"].clone();
    s.frame(json!({"type":"subscribed","topics":["plain"],"ref":r}));
    let reads = sent_of(&s.watch(a), "presence");
    let out = s.frame(json!({"type":"error","code":"PRESENCE_DISABLED","message":"no presence","ref":reads[0]["ref"]}));
    assert!(
        matches!(out.as_slice(), [Action::PresenceFailed { sub, error }] if *sub == a && error.code() == "PRESENCE_DISABLED"),
        "{out:?}"
    );
    assert_eq!(member_ids(&s, a), None);
    assert_eq!(delivered(&s.frame(msg("plain", None))), [(a, None)]);
    // Not read again after a reconnect.
    s.close(1006);
    s.fire();
    let out = s.open_and_handshake();
    let r = sent_of(&out, "subscribe")[0]["ref"].clone();
    let out = s.frame(json!({"type":"subscribed","topics":["plain"],"ref":r}));
    assert!(sent_of(&out, "presence").is_empty());
}

#[test]
fn a_lost_or_rate_limited_presence_read_is_sent_again_and_a_refused_topic_stops_watching() {
    let mut s = Shell::with_token();
    s.connect();
    let (a, out) = s.subscribe("room", None);
    let r = sent_of(&out, "subscribe")[0]["ref"].clone();
    s.frame(json!({"type":"subscribed","topics":["room"],"ref":r}));
    let first = sent_of(&s.watch(a), "presence");
    // No answer within the request timeout: asked again.
    s.advance(30_000);
    let out = s.input(Input::TimerFired);
    let again = sent_of(&out, "presence");
    assert_eq!(again.len(), 1, "{out:?}");
    assert_ne!(again[0]["ref"], first[0]["ref"]);
    // A late answer to the first one is not taken for the roster.
    s.frame(json!({"type":"presence","ref":first[0]["ref"],"topic":"room","members":[member("c9","x")]}));
    assert_eq!(member_ids(&s, a), None);
    // RATE_LIMITED: the same read again after a delay.
    let out = s.frame(
        json!({"type":"error","code":"RATE_LIMITED","message":"slow","ref":again[0]["ref"]}),
    );
    assert!(
        out.iter()
            .all(|x| !matches!(x, Action::PresenceFailed { .. } | Action::Error(_)))
    );
    let out = s.fire();
    assert_eq!(sent_of(&out, "presence"), again);
    s.frame(json!({"type":"presence","ref":again[0]["ref"],"topic":"room","members":[member("c1","alice")]}));
    assert_eq!(member_ids(&s, a), Some(vec!["c1".into()]));
    // A subscription refused after a reconnect (the token lost the topic) ends the watching.
    s.close(1006);
    s.fire();
    let out = s.open_and_handshake();
    let r = sent_of(&out, "subscribe")[0]["ref"].clone();
    let out = s.frame(json!({"type":"error","code":"FORBIDDEN","message":"no","ref":r}));
    assert!(sent_of(&out, "presence").is_empty());
    assert_eq!(member_ids(&s, a), None);
    assert!(s.frame(join("room", "c2", "bob")).is_empty());
}

// ---- a long run against a simulated durable server ----------------------------------------

/// A tiny xorshift generator: the test's dice, not the core's.
struct Dice(u64);
impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

#[test]
fn exactly_once_in_order_through_drops_losses_and_duplicates() {
    for seed in 1..=20u64 {
        let mut dice = Dice(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut s = Shell::with_token();
        s.connect();
        let (sub, _) = s.subscribe(
            "t",
            Some(Position {
                offset: 0,
                epoch: None,
            }),
        );
        let mut subscribed = true; // server-side subscription on the current socket
        s.frame(json!({"type":"subscribed","topics":["t"]}));
        s.outgoing.clear();
        let mut log = 0u64; // offsets 1..=log exist on the server
        let mut got = Vec::new();
        for _ in 0..400 {
            // The server appends a message and (usually) sends it live.
            log += 1;
            if s.core.state() == ConnectionState::Connected && subscribed {
                if !dice.chance(5) {
                    got.extend(delivered(&s.frame(msg("t", Some(log)))));
                }
                if dice.chance(5) {
                    got.extend(delivered(&s.frame(msg("t", Some(log)))));
                }
            }
            // Sometimes the socket drops.
            if s.core.state() == ConnectionState::Connected && dice.chance(4) {
                s.close(1006);
                subscribed = false;
            }
            if s.core.state() != ConnectionState::Connected {
                if dice.chance(50) {
                    s.fire();
                    if s.socket.is_some() && matches!(s.core.phase(), Phase::Opening { .. }) {
                        s.open_and_handshake();
                    }
                }
                continue;
            }
            // Serve any subscribe the client sent: replay after `since`, then confirm.
            for a in s.drain_pending_frames() {
                if a["type"] == "subscribe" {
                    let from = a["since"]["t"]["offset"].as_u64().unwrap_or(log);
                    for o in (from + 1)..=log {
                        got.extend(delivered(&s.frame(msg("t", Some(o)))));
                    }
                    let out = s.frame(json!({"type":"subscribed","topics":["t"],"recovered":{"t":true},"ref":a["ref"]}));
                    got.extend(delivered(&out));
                    subscribed = true;
                }
            }
        }
        let offsets: Vec<u64> = got
            .iter()
            .filter(|(x, _)| *x == sub)
            .filter_map(|(_, o)| *o)
            .collect();
        let expected: Vec<u64> = (1..=offsets.len() as u64).collect();
        assert_eq!(
            offsets, expected,
            "seed {seed}: in order, no gaps, no duplicates"
        );
        assert!(
            offsets.len() as u64 + 5 >= log / 2,
            "seed {seed}: made progress ({} of {log})",
            offsets.len()
        );
    }
}

impl Shell {
    /// Frames the core sent since the last drain (the simulation needs them after
    /// reconnects and gap detection).
    fn drain_pending_frames(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.outgoing)
    }
}

// ---- SDK hardening: a bad request fails alone, every call settles, dead credentials stop ----

fn connected_with_limit(s: &mut Shell, limit: u64) {
    s.input(Input::Start);
    let socket = s.socket();
    s.input(Input::SocketOpened(socket));
    s.frame(json!({"type":"connected","client_id":"c1","timestamp":"t","heartbeat_ms":25000,"max_message_bytes":limit}));
}

fn raw(text: &str) -> Json {
    tidings_protocol::Json::parse(text.to_owned()).expect("json")
}

#[test]
fn a_publish_over_the_servers_limit_fails_alone_before_it_is_sent() {
    let mut s = Shell::with_token();
    connected_with_limit(&mut s, 200);
    let big = format!("\"{}\"", "x".repeat(300));
    let ctx = s.ctx();
    let err = s.core.publish(ctx, "t", raw(&big)).expect_err("too large");
    assert_eq!(err.code(), "MESSAGE_TOO_LARGE");
    assert!(err.to_string().contains("200"), "{err}");
    assert!(sent(&s.drain()).is_empty(), "nothing was sent");
    let (small, out) = s.publish("t", "1");
    assert_eq!(sent_of(&out, "publish").len(), 1);
    assert_eq!(s.core.unacknowledged(), 1);
    let ctx = s.ctx();
    let err = s
        .core
        .append(
            ctx,
            "st",
            None,
            vec![NewEvent {
                r#type: "e".into(),
                data: raw(&big),
            }],
        )
        .expect_err("too large");
    assert_eq!(err.code(), "MESSAGE_TOO_LARGE");
    let _ = small;
}

#[test]
fn an_oversize_publish_queued_offline_is_rejected_when_the_limit_is_learned() {
    let mut s = Shell::with_token();
    let big = format!("\"{}\"", "x".repeat(300));
    let (b, _) = s.publish("t", &big);
    let (ok, _) = s.publish("t", "1");
    s.input(Input::Start);
    let socket = s.socket();
    s.input(Input::SocketOpened(socket));
    let out = s.frame(
        json!({"type":"connected","client_id":"c1","timestamp":"t","max_message_bytes":200}),
    );
    assert_eq!(rejected(&out), [(b, "MESSAGE_TOO_LARGE")]);
    let frames = sent_of(&out, "publish");
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0]["ref"], ok.wire_ref());
}

#[test]
fn a_1009_close_rejects_the_request_that_caused_it_and_it_is_not_replayed() {
    // A server that does not announce its limit closes with 1009 on the big frame.
    let mut s = Shell::with_token();
    s.random = 0.999;
    s.connect();
    let big = format!("\"{}\"", "x".repeat(300));
    let (b, _) = s.publish("t", &big);
    let (small, _) = s.publish("t", "1");
    let out = s.close(1009);
    assert_eq!(rejected(&out), [(b, "MESSAGE_TOO_LARGE")]);
    assert_eq!(s.state, ConnectionState::Reconnecting);
    let first = s.timer.expect("retry") - s.now;
    s.fire();
    let out = s.open_and_handshake();
    let frames = sent_of(&out, "publish");
    assert_eq!(
        frames.len(),
        1,
        "only the small publish is resent: {frames:?}"
    );
    assert_eq!(frames[0]["ref"], small.wire_ref());
    // The limit is now known to be below the big frame: a second one fails before sending.
    let ctx = s.ctx();
    assert_eq!(
        s.core
            .publish(ctx, "t", raw(&big))
            .expect_err("known now")
            .code(),
        "MESSAGE_TOO_LARGE"
    );
    // Had the connection died at once again, the backoff would not have started over.
    s.close(1006);
    assert!(
        s.timer.expect("retry") - s.now > first,
        "backoff keeps growing"
    );
}

#[test]
fn subscribes_made_in_one_task_go_out_in_one_frame() {
    let mut s = Shell::with_token();
    s.connect();
    s.hold_flush = true;
    let mut subs = Vec::new();
    for i in 0..200 {
        let (id, out) = s.subscribe(&format!("t{i}"), None);
        assert!(sent(&out).is_empty(), "nothing before the task ends");
        subs.push(id);
    }
    let out = s.run_flush();
    let frames = sent(&out);
    assert_eq!(frames.len(), 1, "one frame for 200 calls");
    assert_eq!(frames[0]["topics"].as_array().map(Vec::len), Some(200));
    let r = frames[0]["ref"].clone();
    let topics = frames[0]["topics"].clone();
    s.frame(json!({"type":"subscribed","topics":topics,"ref":r}));
    for id in subs {
        assert!(s.core.topic_of(id).is_some());
    }
}

#[test]
fn a_batch_is_answered_per_topic_also_after_a_reconnect() {
    let mut s = Shell::with_token();
    s.connect();
    s.hold_flush = true;
    let (ok_a, _) = s.subscribe("ok.a", None);
    let (ok_b, _) = s.subscribe("ok.b", None);
    let (secret, _) = s.subscribe("secret.b", None);
    let f = &sent(&s.run_flush())[0];
    let out = s.frame(json!({"type":"subscribed","topics":["ok.a","ok.b"],"ref":f["ref"],
        "refused":{"secret.b":{"code":"FORBIDDEN","message":"token may not subscribe to \"secret.b\""}}}));
    let failed: Vec<_> = out
        .iter()
        .filter_map(|a| match a {
            Action::SubscriptionFailed { sub, error } => Some((*sub, error.code())),
            _ => None,
        })
        .collect();
    assert_eq!(failed, [(secret, "FORBIDDEN")]);
    // After a reconnect whose token lost `ok.b`, only ok.b fails.
    s.close(1006);
    s.fire();
    let out = s.open_and_handshake();
    let f = &sent_of(&out, "subscribe")[0];
    assert_eq!(f["topics"], json!(["ok.a", "ok.b"]));
    let out = s.frame(json!({"type":"subscribed","topics":["ok.a"],"ref":f["ref"],
        "refused":{"ok.b":{"code":"FORBIDDEN","message":"no"}}}));
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::SubscriptionFailed { sub, .. } if *sub == ok_b))
    );
    assert_eq!(s.core.topic_of(ok_a), Some("ok.a"));
    assert_eq!(s.core.topic_of(ok_b), None);
}

#[test]
fn rate_limited_subscribes_are_retried_until_answered() {
    let mut s = Shell::with_token();
    s.connect();
    let (a, out) = s.subscribe("t", None);
    let f = &sent(&out)[0];
    let out =
        s.frame(json!({"type":"error","code":"RATE_LIMITED","message":"slow down","ref":f["ref"]}));
    assert!(
        !out.iter()
            .any(|a| matches!(a, Action::SubscriptionFailed { .. } | Action::Error(_))),
        "not a failure: {out:?}"
    );
    let retry = s.timer.expect("a retry is armed") - s.now;
    assert!((500..=1_000).contains(&retry), "{retry}");
    let out = s.fire();
    let f = &sent_of(&out, "subscribe")[0];
    assert_eq!(f["topics"], json!(["t"]));
    // Again: the wait doubles.
    s.frame(json!({"type":"error","code":"RATE_LIMITED","message":"slow down","ref":f["ref"]}));
    let retry = s.timer.expect("a retry is armed") - s.now;
    assert!((1_000..=2_000).contains(&retry), "{retry}");
    let f = &sent_of(&s.fire(), "subscribe")[0];
    s.frame(json!({"type":"subscribed","topics":["t"],"ref":f["ref"]}));
    s.frame(msg("t", Some(1)));
    let out = s.frame(msg("t", Some(2)));
    assert_eq!(delivered(&out), [(a, Some(2))]);
}

#[test]
fn rate_limited_requests_are_retried_then_rejected_with_the_code() {
    let mut s = Shell::with_token();
    s.connect();
    let (p, out) = s.publish("t", "1");
    let id = sent(&out)[0]["id"].clone();
    let ctx = s.ctx();
    let h = s.core.history(ctx, "t", None, None).expect("history");
    s.drain();
    for attempt in 0..RATE_LIMIT_RETRIES {
        s.frame(json!({"type":"error","code":"RATE_LIMITED","message":"slow","ref":p.wire_ref()}));
        let out = s.frame(
            json!({"type":"error","code":"RATE_LIMITED","message":"slow","ref":h.wire_ref()}),
        );
        assert!(rejected(&out).is_empty(), "attempt {attempt}");
        // Both go again at their retry time, the publish with the same id.
        let mut again = Vec::new();
        while again.len() < 2 {
            again.extend(sent(&s.fire()));
        }
        assert!(
            again
                .iter()
                .any(|f| f["type"] == "publish" && f["id"] == id)
        );
        assert!(again.iter().any(|f| f["type"] == "history"));
    }
    let mut out =
        s.frame(json!({"type":"error","code":"RATE_LIMITED","message":"slow","ref":p.wire_ref()}));
    out.extend(
        s.frame(json!({"type":"error","code":"RATE_LIMITED","message":"slow","ref":h.wire_ref()})),
    );
    let mut codes = rejected(&out);
    codes.sort();
    assert_eq!(codes, [(p, "RATE_LIMITED"), (h, "RATE_LIMITED")]);
    assert_eq!(s.core.unacknowledged(), 0);
}

#[test]
fn an_unanswered_subscribe_is_sent_again() {
    let mut s = Shell::with_token();
    s.connect();
    let (_, out) = s.subscribe("t", None);
    let first = sent(&out)[0]["ref"].clone();
    // No reply, but the connection is alive (heartbeats keep coming).
    let mut resent = None;
    for _ in 0..40 {
        s.advance(1_000);
        s.frame(json!({"type":"heartbeat"}));
        if s.timer.is_some_and(|t| t <= s.now) {
            let out = s.fire();
            if let Some(f) = sent_of(&out, "subscribe").first() {
                resent = Some(f.clone());
                break;
            }
        }
    }
    let resent = resent.expect("the subscribe was sent again within the request timeout");
    assert_ne!(resent["ref"], first);
    assert_eq!(resent["topics"], json!(["t"]));
}

#[test]
fn an_expired_fixed_token_closes_with_unauthorized_instead_of_retrying() {
    let now_secs = Shell::with_token().unix_ms / 1000;
    let mut c = Config::new(vec!["ws://h/ws".into()], "inst");
    c.token = Some(jwt(now_secs - 60));
    let mut s = Shell::new(c);
    let out = s.input(Input::Start);
    assert!(
        !out.iter().any(|a| matches!(a, Action::OpenSocket { .. })),
        "{out:?}"
    );
    assert_eq!(s.state, ConnectionState::Closed);
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Error(e) if e.code() == "UNAUTHORIZED"))
    );
    assert_eq!(s.timer, None, "nothing left running");
    // A token that expires while the client waits to reconnect is caught the same way.
    let mut c = Config::new(vec!["ws://h/ws".into()], "inst");
    c.token = Some(jwt(now_secs + 2));
    let mut s = Shell::new(c);
    s.connect();
    s.close(1006);
    s.advance(5_000);
    let out = s.fire();
    assert_eq!(s.state, ConnectionState::Closed, "{out:?}");
}

#[test]
fn an_expired_token_from_get_token_is_asked_for_again() {
    let mut c = Config::new(vec!["ws://h/ws".into()], "inst");
    c.token_provider = true;
    let mut s = Shell::new(c);
    let out = s.input(Input::Start);
    assert!(out.iter().any(|a| matches!(a, Action::FetchToken)));
    let stale = jwt(s.unix_ms / 1000 - 60);
    let out = s.input(Input::Token(Ok(stale)));
    assert!(!out.iter().any(|a| matches!(a, Action::OpenSocket { .. })));
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Error(e) if e.code() == "TOKEN_PROVIDER"))
    );
    assert_eq!(s.state, ConnectionState::Connecting, "still trying");
    let out = s.fire();
    assert!(out.iter().any(|a| matches!(a, Action::FetchToken)));
    let fresh = jwt(s.unix_ms / 1000 + 3600);
    let out = s.input(Input::Token(Ok(fresh)));
    assert!(out.iter().any(|a| matches!(a, Action::OpenSocket { .. })));
}
