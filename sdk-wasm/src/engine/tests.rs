//! The engine driven as the JS drives it: JSON text in, JSON text out, parsed here with
//! serde_json and checked by value.

use serde_json::{Value, json};

use super::Engine;

/// The JS side, reduced to what the tests need: the clock and the current socket.
struct Js {
    engine: Engine,
    now: f64,
    socket: f64,
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn list(text: &str) -> Vec<Value> {
    match parse(text) {
        Value::Array(items) => items,
        other => panic!("not an array: {other}"),
    }
}

impl Js {
    fn new(config: Value) -> Self {
        Js {
            engine: Engine::new(&config.to_string()).expect("a usable config"),
            now: 1_000.0,
            socket: 0.0,
        }
    }

    fn with_token() -> Self {
        Js::new(json!({"urls":["ws://h/ws"],"token":"tok","instanceId":"inst"}))
    }

    fn handle(&mut self, kind: u32, code: u32, text: &str) -> Vec<Value> {
        let out = self.engine.handle(
            self.now,
            1.8e12,
            0.5,
            kind,
            self.socket,
            code,
            text.to_owned(),
        );
        let actions = list(&out);
        for a in &actions {
            if a[0] == "open" {
                self.socket = a[1].as_f64().expect("socket id");
            }
        }
        actions
    }

    fn frame(&mut self, frame: Value) -> Vec<Value> {
        self.handle(5, 0, &frame.to_string())
    }

    /// `[result, actions...]` split.
    fn call(&mut self, op: Value) -> (Value, Vec<Value>) {
        let mut items = list(&self.engine.call(self.now, 1.8e12, 0.5, &op.to_string()));
        assert!(!items.is_empty(), "a result comes first");
        let result = items.remove(0);
        (result, items)
    }

    /// A call that must succeed: its value and actions.
    fn ok(&mut self, op: Value) -> (Value, Vec<Value>) {
        let (result, actions) = self.call(op.clone());
        match result.get("ok") {
            Some(v) => (v.clone(), actions),
            None => panic!("{op} failed: {result}"),
        }
    }

    /// A call that must fail: its error JSON.
    fn err(&mut self, op: Value) -> Value {
        let (result, actions) = self.call(op.clone());
        assert!(actions.is_empty(), "{op}: {actions:?}");
        match result.get("err") {
            Some(e) => e.clone(),
            None => panic!("{op} did not fail: {result}"),
        }
    }

    /// Start, open, `connected`.
    fn connect(&mut self) -> Vec<Value> {
        let mut out = self.handle(0, 0, "");
        out.extend(self.handle(3, 0, ""));
        out.extend(self.frame(
            json!({"type":"connected","client_id":"c1","timestamp":"t","heartbeat_ms":25000}),
        ));
        out
    }

    /// Run the scheduled flush (the JS's microtask).
    fn flush(&mut self) -> Vec<Value> {
        self.handle(10, 0, "")
    }
}

/// The actions called `name`.
fn named<'a>(actions: &'a [Value], name: &str) -> Vec<&'a Value> {
    actions.iter().filter(|a| a[0] == name).collect()
}

/// The one action called `name`.
fn one<'a>(actions: &'a [Value], name: &str) -> &'a Value {
    let found = named(actions, name);
    assert_eq!(found.len(), 1, "one {name} in {actions:?}");
    found[0]
}

/// The frames sent, parsed.
fn sent(actions: &[Value]) -> Vec<Value> {
    named(actions, "send")
        .into_iter()
        .map(|a| parse(a[2].as_str().expect("a frame is a string")))
        .collect()
}

/// The frame of type `kind` that was sent.
fn sent_one(actions: &[Value], kind: &str) -> Value {
    let frames: Vec<_> = sent(actions)
        .into_iter()
        .filter(|f| f["type"] == kind)
        .collect();
    assert_eq!(frames.len(), 1, "one {kind} in {actions:?}");
    frames[0].clone()
}

#[test]
fn start_with_a_token_opens_the_socket_and_arms_the_timer() {
    let mut js = Js::with_token();
    assert_eq!(js.engine.state(), "connecting");
    let out = js.handle(0, 0, "");
    let open = one(&out, "open");
    assert_eq!(open[1], json!(1));
    let url = open[2].as_str().expect("url");
    assert!(
        url.starts_with("ws://h/ws?") && url.contains("token=tok"),
        "{url}"
    );
    assert!(one(&out, "timer")[1].as_f64().expect("at") > 1_000.0);

    let out = js.handle(3, 0, "");
    assert!(
        named(&out, "state").is_empty(),
        "connected only on `connected`"
    );
    let out = js.frame(json!({"type":"connected","client_id":"c1","timestamp":"t"}));
    assert_eq!(one(&out, "state")[1], "connected");
    assert_eq!(js.engine.state(), "connected");
    assert_eq!(js.engine.positions(), "{}");
    assert_eq!(js.engine.members(1), "null");
}

#[test]
fn a_token_provider_is_asked_before_connecting() {
    let mut js =
        Js::new(json!({"urls":["ws://h/ws"],"token":null,"tokenProvider":true,"instanceId":"i"}));
    let out = js.handle(0, 0, "");
    assert_eq!(one(&out, "token"), &json!(["token"]));
    assert!(named(&out, "open").is_empty());
    let out = js.handle(1, 0, "fresh");
    let url = one(&out, "open")[2].as_str().expect("url").to_owned();
    assert!(url.contains("token=fresh"), "{url}");

    // A failed getToken is reported as an error not tied to a request.
    let mut js = Js::new(json!({"urls":["ws://h/ws"],"tokenProvider":true,"instanceId":"i"}));
    js.handle(0, 0, "");
    let out = js.handle(2, 0, "offline");
    let error = &one(&out, "error")[1];
    assert_eq!(error["code"], "TOKEN_PROVIDER");
    assert!(
        error["message"]
            .as_str()
            .expect("message")
            .contains("offline")
    );
}

#[test]
fn bad_configs_are_refused_with_the_error_json() {
    let refused = |config: &str| {
        let e = Engine::new(config).expect_err(config);
        parse(&e)
    };
    for config in [
        "",
        "[]",
        r#"{"urls":"ws://h/ws","instanceId":"i"}"#,
        r#"{"urls":["ws://h/ws"]}"#,
        r#"{"urls":[1],"instanceId":"i"}"#,
        r#"{"urls":["ws://h/ws"],"instanceId":"i","minDelayMs":-1}"#,
        r#"{"urls":["ws://h/ws"],"instanceId":"i","maxDelayMs":1.5}"#,
        r#"{"urls":["ws://h/ws"],"instanceId":"i","requestTimeoutMs":"5"}"#,
        r#"{"urls":["ws://h/ws"],"instanceId":"i","outboxCapacity":18446744073709551616}"#,
        r#"{"urls":["ws://h/ws"],"instanceId":"i","tokenProvider":"yes"}"#,
    ] {
        let e = refused(config);
        assert_eq!(e["code"], "INVALID_ARGUMENT", "{config}");
        assert!(e.get("currentVersion").is_none());
    }
    // The core's own refusal, as it is.
    let e = refused(r#"{"urls":[],"instanceId":"i"}"#);
    assert_eq!(e["code"], "INVALID_ARGUMENT");
    assert_eq!(
        e["message"],
        "invalid argument: `url` or `urls` is required"
    );
    // Every numeric field is optional, and read when given.
    let ok = r#"{"urls":["ws://a/ws","ws://b/ws"],"token":"t","tokenProvider":false,
        "minDelayMs":1,"maxDelayMs":2,"connectTimeoutMs":3,"requestTimeoutMs":4,
        "outboxCapacity":1,"instanceId":"i"}"#;
    assert!(Engine::new(ok).is_ok());
}

#[test]
fn subscribe_flush_and_deliver() {
    let mut js = Js::with_token();
    js.connect();
    let (sub, out) = js.ok(json!({"op":"subscribe","topic":"chat","since":null}));
    let sub = sub.as_u64().expect("a sub id");
    assert_eq!(
        out,
        [json!(["flush"])],
        "subscribes wait for the task's end"
    );
    let out = js.flush();
    let frame = sent_one(&out, "subscribe");
    assert_eq!(frame["topics"], json!(["chat"]));
    assert!(frame.get("since").is_none());

    js.frame(json!({"type":"subscribed","topics":["chat"],"ref":frame["ref"]}));
    let message = json!({"type":"message","topic":"chat","data":{"text":"hi","n":[1,2]},
        "from":"c2","timestamp":"t1","offset":7,"epoch":"e1"});
    let out = js.frame(message);
    let deliver = one(&out, "deliver");
    assert_eq!(deliver[1], json!(sub));
    assert_eq!(
        deliver[2],
        json!({"topic":"chat","data":{"text":"hi","n":[1,2]},"from":"c2","timestamp":"t1",
            "offset":7,"epoch":"e1"})
    );
    assert_eq!(
        parse(&js.engine.positions()),
        json!({"chat":{"offset":7,"epoch":"e1"}})
    );

    // `since` resumes after a saved position.
    let (_, out) = js.ok(json!({"op":"subscribe","topic":"news",
        "since":{"offset":3,"epoch":"e9"}}));
    assert_eq!(named(&out, "flush").len(), 1);
    let frame = sent_one(&js.flush(), "subscribe");
    assert_eq!(frame["since"], json!({"news":{"offset":3,"epoch":"e9"}}));

    // Unsubscribing the topic's last subscriber unsubscribes it on the server.
    let (v, out) = js.ok(json!({"op":"unsubscribe","sub":sub}));
    assert_eq!(v, Value::Null);
    assert_eq!(sent_one(&out, "unsubscribe")["topics"], json!(["chat"]));
    let out = js.frame(json!({"type":"message","topic":"chat","data":1,"from":"c2",
        "timestamp":"t","offset":8,"epoch":"e1"}));
    assert!(named(&out, "deliver").is_empty());
}

#[test]
fn publish_resolves_with_the_ack_and_rejects_with_the_error_json() {
    let mut js = Js::with_token();
    js.connect();
    let (id, out) = js.ok(json!({"op":"publish","topic":"chat","data":{"text":"hi"}}));
    let frame = sent_one(&out, "publish");
    assert_eq!(frame["data"], json!({"text":"hi"}));
    assert_eq!(frame["id"], "inst-1");
    assert_eq!(frame["ref"], json!(id.to_string()));
    let out = js.frame(json!({"type":"published","ref":frame["ref"],"topic":"chat",
        "offset":43,"epoch":"e1"}));
    assert_eq!(
        one(&out, "resolve"),
        &json!(["resolve", id, {"topic":"chat","offset":43,"epoch":"e1"}])
    );

    // An ephemeral topic: no offset, no epoch (both null).
    let (id, out) = js.ok(json!({"op":"publish","topic":"live","data":null}));
    let frame = sent_one(&out, "publish");
    let out = js.frame(json!({"type":"published","ref":frame["ref"],"topic":"live"}));
    assert_eq!(
        one(&out, "resolve")[2],
        json!({"topic":"live","offset":null,"epoch":null})
    );
    assert_eq!(one(&out, "resolve")[1], id);

    let (id, out) = js.ok(json!({"op":"publish","topic":"secret","data":[1]}));
    let frame = sent_one(&out, "publish");
    let out = js.frame(
        json!({"type":"error","code":"FORBIDDEN","message":"not yours",
        "ref":frame["ref"]}),
    );
    assert_eq!(
        one(&out, "reject"),
        &json!(["reject", id, {"code":"FORBIDDEN","message":"not yours"}])
    );

    // Data JSON.stringify left out.
    let e = js.err(json!({"op":"publish","topic":"chat"}));
    assert_eq!(e["code"], "INVALID_ARGUMENT");
    assert_eq!(
        e["message"],
        "invalid argument: data must be JSON-serializable"
    );
    // The core's checks, as they are.
    let e = js.err(json!({"op":"publish","topic":"","data":1}));
    assert_eq!(e["message"], "invalid argument: topic must not be empty");
}

#[test]
fn requests_resolve_with_the_shapes_of_the_js_api() {
    let mut js = Js::with_token();
    js.connect();
    let (id, out) = js.ok(json!({"op":"history","topic":"chat","since":3,"limit":2}));
    let frame = sent_one(&out, "history");
    assert_eq!(
        (frame["since"].clone(), frame["limit"].clone()),
        (json!(3), json!(2))
    );
    let out = js.frame(
        json!({"type":"history","ref":frame["ref"],"topic":"chat","epoch":"e",
        "messages":[{"type":"message","topic":"chat","data":1,"from":"u","timestamp":"t",
        "offset":4,"epoch":"e"}],"latest":9}),
    );
    assert_eq!(
        one(&out, "resolve"),
        &json!(["resolve", id, {"topic":"chat","epoch":"e","messages":[{"topic":"chat",
            "data":1,"from":"u","timestamp":"t","offset":4,"epoch":"e"}],"latest":9,
            "more":false}])
    );

    let (id, out) = js.ok(json!({"op":"presence","topic":"room"}));
    let frame = sent_one(&out, "presence");
    let out = js.frame(json!({"type":"presence","ref":frame["ref"],"topic":"room",
        "members":[{"client_id":"c","user":"u","info":{"a":1}}],"more":true}));
    assert_eq!(
        one(&out, "resolve"),
        &json!(["resolve", id, {"topic":"room",
            "members":[{"client_id":"c","user":"u","info":{"a":1}}],"more":true}])
    );

    let (id, out) = js.ok(json!({"op":"presenceStats","topic":"room"}));
    let frame = sent_one(&out, "presence_stats");
    let out = js.frame(
        json!({"type":"presence_stats","ref":frame["ref"],"topic":"room",
        "clients":3,"users":2}),
    );
    assert_eq!(
        one(&out, "resolve"),
        &json!(["resolve", id, {"topic":"room","clients":3,"users":2}])
    );
}

#[test]
fn watching_presence_reports_joins_and_members() {
    let mut js = Js::with_token();
    js.connect();
    let (sub, _) = js.ok(json!({"op":"subscribe","topic":"room","since":null}));
    let frame = sent_one(&js.flush(), "subscribe");
    js.frame(json!({"type":"subscribed","topics":["room"],"ref":frame["ref"]}));
    let (v, out) = js.ok(json!({"op":"watch","sub":sub}));
    assert_eq!(v, Value::Null);
    let read = sent_one(&out, "presence");
    js.frame(json!({"type":"presence","ref":read["ref"],"topic":"room",
        "members":[{"client_id":"c1","user":"me"}]}));
    assert_eq!(
        parse(
            &js.engine
                .members(u32::try_from(sub.as_u64().expect("id")).expect("u32"))
        ),
        json!([{"client_id":"c1","user":"me","info":null}])
    );
    let out = js.frame(json!({"type":"join","topic":"room","client_id":"c2","user":"you"}));
    assert_eq!(
        one(&out, "join"),
        &json!(["join", sub, {"topic":"room","client_id":"c2","user":"you","info":null}])
    );
}

#[test]
fn malformed_calls_are_invalid_argument() {
    let mut js = Js::with_token();
    js.connect();
    for op in [
        json!("subscribe"),
        json!({"op":"teleport"}),
        json!({"topic":"t"}),
        json!({"op":"subscribe"}),
        json!({"op":"subscribe","topic":"t","since":5}),
        json!({"op":"subscribe","topic":"t","since":{"offset":9_007_199_254_740_992_u64}}),
        json!({"op":"unsubscribe","sub":4_294_967_296_u64}),
        json!({"op":"unsubscribe","sub":-1}),
        json!({"op":"watch","sub":"1"}),
        json!({"op":"history","topic":"t","limit":4_294_967_296_u64}),
        json!({"op":"history","topic":"t","since":1.5}),
        json!({"op":"presence","topic":7}),
    ] {
        let e = js.err(op.clone());
        assert_eq!(e["code"], "INVALID_ARGUMENT", "{op}");
    }
    let out = js.engine.call(1.0, 1.0, 0.5, "{not json");
    assert_eq!(
        list(&out),
        [json!({"err":{"code":"INVALID_ARGUMENT","message":"invalid argument: malformed call"}})]
    );
    // Unknown input kinds are ignored.
    assert_eq!(
        js.engine.handle(1.0, 1.0, 0.5, 99, 1.0, 0, String::new()),
        "[]"
    );
}

#[test]
fn odd_clock_and_dice_read_as_zero() {
    let mut js = Js::with_token();
    js.now = f64::NAN;
    let out = js
        .engine
        .handle(f64::NAN, -5.0, 7.0, 0, 0.0, 0, String::new());
    assert_eq!(named(&list(&out), "open").len(), 1);
}

#[test]
fn close_closes_the_socket_and_fails_pending_requests() {
    let mut js = Js::with_token();
    js.connect();
    let (id, _) = js.ok(json!({"op":"publish","topic":"chat","data":1}));
    let (v, out) = js.ok(json!({"op":"close"}));
    assert_eq!(v, Value::Null);
    assert_eq!(
        one(&out, "close"),
        &json!(["close", 1, 1000, "client closed"])
    );
    assert_eq!(one(&out, "state")[1], "closed");
    assert_eq!(named(&out, "cancel").len(), 1);
    let reject = one(&out, "reject");
    assert_eq!((&reject[1], &reject[2]["code"]), (&id, &json!("CLOSED")));
    assert_eq!(js.engine.state(), "closed");
    assert_eq!(
        js.err(json!({"op":"publish","topic":"t","data":1}))["code"],
        "CLOSED"
    );
    let (_, out) = js.ok(json!({"op":"close"}));
    assert!(out.is_empty(), "closing twice does nothing: {out:?}");
}

#[test]
fn a_closed_socket_reconnects() {
    let mut js = Js::with_token();
    js.connect();
    let out = js.handle(4, 1006, "gone");
    assert_eq!(one(&out, "state")[1], "reconnecting");
    assert!(named(&out, "timer").len() == 1, "{out:?}");
}

#[cfg(not(feature = "streams"))]
#[test]
fn streams_are_not_in_this_build() {
    let mut js = Js::with_token();
    let e = js.err(json!({"op":"stream","id":"s","model":null}));
    assert_eq!(e["code"], "INVALID_ARGUMENT");
    assert_eq!(
        e["message"],
        "invalid argument: event streams are not in this build: import them from \
         \"tidings/streams\" (reducers) or \"tidings/aggregates\" (reducers and built-in \
         aggregates)"
    );
    assert_eq!(
        js.err(json!({"op":"append","stream":1,"events":[]}))["code"],
        "INVALID_ARGUMENT"
    );
}

#[cfg(feature = "streams")]
mod streams {
    use super::*;

    /// Where an action sits in `actions`.
    fn position(actions: &[Value], name: &str) -> usize {
        actions
            .iter()
            .position(|a| a[0] == name)
            .unwrap_or_else(|| panic!("no {name} in {actions:?}"))
    }

    /// Open stream `id` folded by `model` (null: a reducer) and answer its `read` with
    /// `events`; returns the handle and the actions of the reply.
    fn open(js: &mut Js, id: &str, model: Value, events: Value) -> (u64, Vec<Value>) {
        let (h, out) = js.ok(json!({"op":"stream","id":id,"model":model}));
        let read = sent_one(&out, "read");
        assert_eq!(read["stream"], id);
        let mut reply = events;
        reply["type"] = json!("events");
        reply["ref"] = read["ref"].clone();
        reply["stream"] = json!(id);
        let out = js.frame(reply);
        assert!(
            named(&out, "resolve").is_empty(),
            "the load is the engine's own"
        );
        (h.as_u64().expect("a handle"), out)
    }

    #[test]
    fn a_reducer_stream_loads_follows_and_folds_its_own_appends() {
        let mut js = Js::with_token();
        js.connect();
        let (h, out) = open(
            &mut js,
            "cart-1",
            Value::Null,
            json!({"version":12,"snapshot":{"version":10,"state":{"items":2}},"events":[
                {"version":11,"type":"added","data":{"sku":"a"},"timestamp":"t11"},
                {"version":12,"type":"removed","data":{"sku":"b"},"timestamp":"t12"}]}),
        );
        assert_eq!(
            one(&out, "fold"),
            &json!(["fold", h, {"version":12,"state":{"items":2},"events":[
                {"version":11,"type":"added","data":{"sku":"a"},"timestamp":"t11"},
                {"version":12,"type":"removed","data":{"sku":"b"},"timestamp":"t12"}]}])
        );
        // Then it follows its topic from the folded version.
        assert!(position(&out, "fold") < position(&out, "flush"));
        let sub = sent_one(&js.flush(), "subscribe");
        assert_eq!(sub["since"], json!({"cart-1":{"offset":12}}));
        let out = js.frame(json!({"type":"subscribed","topics":["cart-1"],
            "recovered":{"cart-1":true},"ref":sub["ref"]}));
        assert!(
            named(&out, "recovery").is_empty(),
            "the stream's own: {out:?}"
        );

        // A live event: folded, never delivered; without a state (the reducer's is in JS).
        let live = |v: u64| {
            json!({"type":"message","topic":"cart-1","from":"c2","timestamp":"tl",
                "offset":v,"epoch":"e","data":{"type":"added","data":{"sku":"c"}}})
        };
        let out = js.frame(live(13));
        assert!(named(&out, "deliver").is_empty());
        assert_eq!(
            one(&out, "fold"),
            &json!(["fold", h, {"version":13,"events":[
                {"version":13,"type":"added","data":{"sku":"c"},"timestamp":"tl"}]}])
        );
        // A repeat is not folded again.
        assert!(js.frame(live(13)).is_empty());

        // Our append: expected version = the folded one; the fold comes before the resolve.
        let (id, out) = js.ok(json!({"op":"append","stream":h,"events":[
            {"type":"added","data":{"sku":"d"}},{"type":"checked_out"}]}));
        let append = sent_one(&out, "append");
        assert_eq!(append["expected_version"], 13);
        assert_eq!(
            append["events"],
            json!([{"type":"added","data":{"sku":"d"}},{"type":"checked_out","data":null}])
        );
        let out = js.frame(
            json!({"type":"appended","ref":append["ref"],"stream":"cart-1",
            "version":15}),
        );
        assert_eq!(
            one(&out, "fold"),
            &json!(["fold", h, {"version":15,"events":[
                {"version":14,"type":"added","data":{"sku":"d"}},
                {"version":15,"type":"checked_out","data":null}]}])
        );
        assert_eq!(
            one(&out, "resolve"),
            &json!(["resolve", id, {"stream":"cart-1","version":15}])
        );
        assert!(position(&out, "fold") < position(&out, "resolve"));
        // The live feed then brings those events again: already folded.
        assert!(js.frame(live(14)).is_empty());

        // Someone else appended first: VERSION_CONFLICT with the stream's version.
        let (id, out) = js.ok(json!({"op":"append","stream":h,"events":[{"type":"x"}]}));
        let append = sent_one(&out, "append");
        assert_eq!(append["expected_version"], 15);
        let out = js.frame(json!({"type":"error","code":"VERSION_CONFLICT",
            "message":"expected version 15, stream is at 16","ref":append["ref"],
            "current_version":16}));
        assert_eq!(
            one(&out, "reject"),
            &json!(["reject", id, {"code":"VERSION_CONFLICT",
                "message":"expected version 15, stream is at 16","currentVersion":16}])
        );
        assert!(named(&out, "fold").is_empty());

        // A reducer stream has no state here and decides nothing.
        assert_eq!(js.ok(json!({"op":"streamState","stream":h})).0, Value::Null);
        let e = js.err(json!({"op":"decide","stream":h,"command":{"type":"confirm"}}));
        assert_eq!(
            e["message"],
            "invalid argument: decide and execute need a built-in aggregate: \
             client.stream(id, \"order\")"
        );

        // Bad events, as the wasm-bindgen API refused them.
        let e = js.err(json!({"op":"append","stream":h,"events":{"type":"x"}}));
        assert_eq!(
            e["message"],
            "invalid argument: events must be an array of {type, data}"
        );
        let e = js.err(json!({"op":"append","stream":h,"events":[{"data":1}]}));
        assert_eq!(
            e["message"],
            "invalid argument: every event needs a string type"
        );
        let e = js.err(json!({"op":"append","stream":h,"events":[]}));
        assert_eq!(e["message"], "invalid argument: no events to append");

        // Closing unsubscribes its topic and forgets the handle.
        let (v, out) = js.ok(json!({"op":"streamClose","stream":h}));
        assert_eq!(v, Value::Null);
        assert_eq!(sent_one(&out, "unsubscribe")["topics"], json!(["cart-1"]));
        assert!(js.frame(live(16)).is_empty());
        let e = js.err(json!({"op":"streamState","stream":h}));
        assert_eq!(e["code"], "INVALID_ARGUMENT");
        assert_eq!(js.ok(json!({"op":"streamClose","stream":h})).0, Value::Null);
    }

    #[test]
    fn an_empty_stream_follows_from_the_servers_version() {
        let mut js = Js::with_token();
        js.connect();
        let (h, out) = open(&mut js, "s", Value::Null, json!({"version":0,"events":[]}));
        assert_eq!(
            one(&out, "fold"),
            &json!(["fold", h, {"version":0,"events":[]}])
        );
        let sub = sent_one(&js.flush(), "subscribe");
        assert_eq!(sub["since"], json!({"s":{"offset":0}}));
        // A plain publish to the stream's topic reads as an event of type "message".
        js.frame(json!({"type":"subscribed","topics":["s"],"ref":sub["ref"]}));
        let out = js.frame(json!({"type":"message","topic":"s","data":"hi","from":"c",
            "timestamp":"t","offset":1,"epoch":"e"}));
        assert_eq!(
            one(&out, "fold")[2]["events"],
            json!([{"version":1,"type":"message","data":"hi","timestamp":"t"}])
        );
    }

    #[test]
    fn a_failed_load_or_subscription_is_stream_failed() {
        let mut js = Js::with_token();
        js.connect();
        let (h, out) = js.ok(json!({"op":"stream","id":"secret","model":null}));
        let read = sent_one(&out, "read");
        let out = js.frame(json!({"type":"error","code":"FORBIDDEN","message":"no",
            "ref":read["ref"]}));
        assert_eq!(
            out,
            [json!(["streamFailed", h, {"code":"FORBIDDEN","message":"no"}])]
        );

        let (h, _) = open(
            &mut js,
            "half",
            Value::Null,
            json!({"version":0,"events":[]}),
        );
        let sub = sent_one(&js.flush(), "subscribe");
        let out = js.frame(json!({"type":"subscribed","topics":[],"ref":sub["ref"],
            "refused":{"half":{"code":"FORBIDDEN","message":"read only"}}}));
        assert_eq!(
            out,
            [json!(["streamFailed", h, {"code":"FORBIDDEN","message":"read only"}])]
        );

        // Closing the client fails a pending load with CLOSED.
        let (h, _) = js.ok(json!({"op":"stream","id":"late","model":null}));
        let (_, out) = js.ok(json!({"op":"close"}));
        assert_eq!(one(&out, "streamFailed")[1], h);
        assert_eq!(one(&out, "streamFailed")[2]["code"], "CLOSED");
        assert!(named(&out, "reject").is_empty());
    }

    #[test]
    fn unknown_aggregates_and_handles_are_invalid_argument() {
        let mut js = Js::with_token();
        let e = js.err(json!({"op":"stream","id":"s","model":"invoice"}));
        assert_eq!(e["code"], "INVALID_ARGUMENT");
        assert!(
            e["message"]
                .as_str()
                .expect("message")
                .contains("\"invoice\"")
        );
        let e = js.err(json!({"op":"append","stream":7,"events":[{"type":"x"}]}));
        assert_eq!(e["code"], "INVALID_ARGUMENT");
        let e = js.err(json!({"op":"stream","id":"","model":null}));
        assert_eq!(e["message"], "invalid argument: stream must not be empty");
    }

    #[cfg(feature = "aggregates")]
    #[test]
    fn a_model_stream_decides_and_executes_with_the_aggregate() {
        let mut js = Js::with_token();
        js.connect();
        let (h, out) = open(
            &mut js,
            "order-1",
            json!("order"),
            json!({"version":0,"events":[]}),
        );
        let fold = one(&out, "fold");
        assert_eq!(fold[2]["version"], 0);
        assert_eq!(fold[2]["state"]["status"], "pending");
        assert_eq!(fold[2]["events"], json!([]));
        let sub = sent_one(&js.flush(), "subscribe");
        js.frame(json!({"type":"subscribed","topics":["order-1"],"ref":sub["ref"]}));

        // Execute: decide, then append at the folded version.
        let (id, out) = js.ok(json!({"op":"execute","stream":h,
            "command":{"type":"create","customer_id":"alice"}}));
        let append = sent_one(&out, "append");
        assert_eq!(append["expected_version"], 0);
        assert_eq!(append["events"][0]["type"], "order_created");
        let out = js.frame(
            json!({"type":"appended","ref":append["ref"],"stream":"order-1",
            "version":1}),
        );
        let fold = one(&out, "fold");
        assert_eq!(fold[2]["version"], 1);
        assert_eq!(fold[2]["state"]["status"], "created");
        assert_eq!(fold[2]["events"][0]["type"], "order_created");
        assert!(fold[2]["events"][0].get("timestamp").is_none());
        assert_eq!(one(&out, "resolve")[1], id);
        assert!(position(&out, "fold") < position(&out, "resolve"));

        // Confirming an empty order is refused by the aggregate: nothing is sent.
        let e = js.err(json!({"op":"decide","stream":h,"command":{"type":"confirm"}}));
        assert_eq!(e["code"], "EMPTY_ORDER");
        let e = js.err(json!({"op":"execute","stream":h,"command":{"type":"confirm"}}));
        assert_eq!(e["code"], "EMPTY_ORDER");
        let e = js.err(json!({"op":"decide","stream":h,"command":{"type":"teleport"}}));
        assert_eq!(e["code"], "INVALID_ARGUMENT");

        let (events, out) = js.ok(
            json!({"op":"decide","stream":h,"command":{"type":"add_item",
            "id":"tee","name":"T-shirt","price":19.99,"quantity":3}}),
        );
        assert!(out.is_empty(), "deciding sends nothing");
        assert_eq!(events[0]["type"], "item_added");
        assert_eq!(events[0]["data"]["id"], "tee");

        // Our own event comes back live: already folded.
        let out = js.frame(
            json!({"type":"message","topic":"order-1","from":"c","timestamp":"t",
            "offset":1,"epoch":"e","data":append["events"][0].clone()}),
        );
        assert!(out.is_empty(), "{out:?}");
        // A live event it cannot read advances the version, with a warning.
        let out = js.frame(
            json!({"type":"message","topic":"order-1","from":"c","timestamp":"t",
            "offset":2,"epoch":"e","data":{"type":"gift_wrapped","data":{}}}),
        );
        let warn = one(&out, "warn")[1].as_str().expect("text").to_owned();
        assert!(warn.starts_with("event 2 skipped: "), "{warn}");
        assert_eq!(one(&out, "fold")[2]["version"], 2);

        let (state, _) = js.ok(json!({"op":"streamState","stream":h}));
        assert_eq!(state["status"], "created");
        assert_eq!(state["customer_id"], "alice");
    }
}
