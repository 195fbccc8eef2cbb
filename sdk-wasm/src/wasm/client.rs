//! `TidingsClient` and `Subscription`: the JS API over the core, and the action pump.
//!
//! Re-entrancy rule: the shared state is borrowed only to feed the core or to take what an
//! action needs, never while calling into JS. A handler may therefore call `publish` or
//! `unsubscribe` (even `close`) from inside a callback.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::core::vecmap::VecMap;
use crate::core::wire;
use std::rc::{Rc, Weak};

use js_sys::{Function, Promise};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

use super::browser::{self, Listener, Socket, SocketEvent, Timer};
use super::convert;
use super::types::*;
use crate::core::{
    Action, Change, Config, Core, Ctx, Input, Position, Reply, RequestId, SdkError, SocketId, SubId,
};
use tidings_protocol::server::{Events, Message};

/// An event stream as the pump sees it. It is implemented in `super::stream`, which builds
/// on this module; the trait keeps the dependency one way.
pub(crate) trait Follower {
    /// The initial `read` answered.
    fn loaded(self: Rc<Self>, shared: &SharedRef, events: &Events);
    /// Our `append` of `events` (`{type, data}` objects) was accepted at `version`.
    fn appended(&self, events: &[JsValue], version: u64);
    /// A live message on the stream's topic.
    fn message(&self, message: &Message);
    /// Loading or following failed.
    fn failed(&self, error: &JsValue);
}

/// A Rust subscriber's end (the Rust API in [`crate::native`] builds on this module; the
/// trait keeps the dependency one way).
pub(crate) trait Sink {
    /// A message for the subscriber.
    fn message(&self, message: Message);
    /// The server refused the subscription: nothing more will come.
    fn failed(&self, error: SdkError);
}

/// What a Rust caller does with a request's outcome (run by the pump, outside any borrow).
pub(crate) type Settle = Box<dyn FnOnce(&SharedRef, Result<Reply, SdkError>)>;

/// What receives a subscriber's messages.
#[derive(Clone)]
#[cfg_attr(not(feature = "streams"), allow(dead_code))] // `Stream`: only with streams
pub(crate) enum Receiver {
    /// An application handler.
    Js(Function),
    /// An event stream following its topic.
    Stream(Rc<dyn Follower>),
    /// A subscriber of the Rust API.
    Native(Rc<dyn Sink>),
}

/// Callbacks of one subscription.
pub(crate) struct Handlers {
    pub(crate) receiver: Receiver,
    pub(crate) on_recovery: Vec<Function>,
    pub(crate) on_error: Vec<Function>,
    pub(crate) on_join: Vec<Function>,
    pub(crate) on_leave: Vec<Function>,
}

impl Handlers {
    /// `receiver` and no other callback yet.
    pub(crate) fn new(receiver: Receiver) -> Self {
        Handlers {
            receiver,
            on_recovery: Vec::new(),
            on_error: Vec::new(),
            on_join: Vec::new(),
            on_leave: Vec::new(),
        }
    }
}

/// Who is waiting for a request's reply.
#[cfg_attr(not(feature = "streams"), allow(dead_code))] // `Stream*`: only with streams
pub(crate) enum Waiter {
    /// A promise returned to the application.
    Promise { resolve: Function, reject: Function },
    /// An event stream's initial `read`.
    StreamLoad(Rc<dyn Follower>),
    /// An event stream's `append`: fold the events locally once the server accepted them.
    StreamAppend {
        stream: Rc<dyn Follower>,
        events: Vec<JsValue>,
        resolve: Function,
        reject: Function,
    },
    /// A request of the Rust API.
    Native(Settle),
}

/// Everything the client owns; shared between the JS objects and the browser callbacks
/// (which hold it weakly).
pub(crate) struct Shared {
    pub(crate) core: Core,
    socket: Option<Socket>,
    timer: Option<Timer>,
    listeners: Vec<Listener>,
    state_handlers: Vec<Function>,
    error_handlers: Vec<Function>,
    pub(crate) handlers: VecMap<SubId, Handlers>,
    pub(crate) waiters: VecMap<RequestId, Waiter>,
    get_token: Option<Function>,
    /// sessionStorage key for offsets, when `persistOffsets` is on.
    persist_key: Option<String>,
    /// Offsets loaded from sessionStorage.
    pub(crate) saved: BTreeMap<String, Position>,
    /// An offset moved since the last save.
    dirty: bool,
}

pub(crate) type SharedRef = Rc<RefCell<Shared>>;

/// Feed the core through `f`, then carry out every action it queued.
pub(crate) fn run<T>(shared: &SharedRef, f: impl FnOnce(&mut Core, Ctx) -> T) -> T {
    let out = {
        let mut s = shared.borrow_mut();
        f(&mut s.core, browser::ctx())
    };
    pump(shared);
    out
}

fn feed(weak: &Weak<RefCell<Shared>>, input: Input) {
    if let Some(shared) = weak.upgrade() {
        run(&shared, |core, ctx| core.handle(ctx, input));
    }
}

/// Call a JS callback; if it throws, log it and go on (one bad handler must not stop the
/// pump).
pub(crate) fn call1(f: &Function, arg: &JsValue) {
    if let Err(e) = f.call1(&JsValue::NULL, arg) {
        web_sys::console::error_2(&JsValue::from_str("tidings: a callback threw"), &e);
    }
}

/// Carry out queued actions until the core has nothing more to say.
pub(crate) fn pump(shared: &SharedRef) {
    loop {
        let action = shared.borrow_mut().core.poll_action();
        let Some(action) = action else { break };
        execute(shared, action);
    }
    let save = {
        let mut s = shared.borrow_mut();
        if s.dirty {
            s.dirty = false;
            s.persist_key.clone().map(|k| (k, s.core.positions()))
        } else {
            None
        }
    };
    if let (Some((key, positions)), Some(storage)) = (save, browser::session_storage()) {
        let _ = storage.set_item(&key, &wire::positions_to_json(&positions));
    }
}

fn execute(shared: &SharedRef, action: Action) {
    let weak = Rc::downgrade(shared);
    match action {
        Action::OpenSocket { socket, url } => {
            let w = weak.clone();
            let report = move |id: SocketId, event: SocketEvent| {
                let input = match event {
                    SocketEvent::Opened => Input::SocketOpened(id),
                    SocketEvent::Text(text) => Input::Frame { socket: id, text },
                    SocketEvent::Closed(code, reason) => Input::SocketClosed {
                        socket: id,
                        code,
                        reason,
                    },
                };
                feed(&w, input);
            };
            match Socket::open(socket, &url, report) {
                Ok(ws) => shared.borrow_mut().socket = Some(ws),
                Err(_) => {
                    // A malformed URL: treat it as a failed attempt (the core backs off).
                    shared.borrow_mut().socket = None;
                    run(shared, |core, ctx| {
                        core.handle(
                            ctx,
                            Input::SocketClosed {
                                socket,
                                code: 1006,
                                reason: "could not create WebSocket".into(),
                            },
                        )
                    });
                }
            }
        }
        Action::CloseSocket {
            socket,
            code,
            reason,
        } => {
            let old = {
                let mut s = shared.borrow_mut();
                if s.socket.as_ref().is_some_and(|x| x.id == socket) {
                    s.socket.take()
                } else {
                    None
                }
            };
            if let Some(old) = old {
                old.close(code, &reason);
            }
        }
        Action::Send { socket, frame } => {
            let s = shared.borrow();
            if let Some(ws) = s.socket.as_ref().filter(|x| x.id == socket) {
                ws.send(&frame);
            }
        }
        Action::ArmTimer { at } => {
            let delay = at.saturating_sub(browser::ctx().now);
            let w = weak.clone();
            let timer = Timer::arm(delay, move || feed(&w, Input::TimerFired));
            shared.borrow_mut().timer = timer;
        }
        Action::CancelTimer => shared.borrow_mut().timer = None,
        Action::ScheduleFlush => {
            // A microtask: it runs once the current task (the app's loop of subscribe calls)
            // is done, before any timer or socket event.
            let w = weak.clone();
            wasm_bindgen_futures::spawn_local(async move { feed(&w, Input::Flush) });
        }
        Action::FetchToken => fetch_token(shared, weak),
        Action::StateChanged(state) => {
            let handlers = shared.borrow().state_handlers.clone();
            let name = JsValue::from_str(state.as_str());
            for h in handlers {
                call1(&h, &name);
            }
        }
        Action::Deliver { sub, message } => {
            let receiver = {
                let mut s = shared.borrow_mut();
                if message.offset.is_some() && s.persist_key.is_some() {
                    s.dirty = true;
                }
                s.handlers.get(&sub).map(|h| h.receiver.clone())
            };
            match receiver {
                Some(Receiver::Js(f)) => call1(&f, &convert::message(&message)),
                Some(Receiver::Stream(st)) => st.message(&message),
                Some(Receiver::Native(sink)) => sink.message(message),
                None => {}
            }
        }
        Action::Recovery {
            sub,
            topic,
            recovered,
        } => {
            let cbs = shared
                .borrow()
                .handlers
                .get(&sub)
                .map(|h| h.on_recovery.clone())
                .unwrap_or_default();
            let info = convert::recovery(&topic, recovered);
            for cb in cbs {
                call1(&cb, &info);
            }
        }
        Action::MemberChanged { sub, change, event } => {
            let cbs = shared
                .borrow()
                .handlers
                .get(&sub)
                .map(|h| match change {
                    Change::Join => h.on_join.clone(),
                    Change::Leave => h.on_leave.clone(),
                })
                .unwrap_or_default();
            let info = convert::to_js(&event);
            for cb in cbs {
                call1(&cb, &info);
            }
        }
        Action::PresenceFailed { sub, error } => {
            // The subscription lives on: only its error handlers hear about it.
            let cbs = shared
                .borrow()
                .handlers
                .get(&sub)
                .map(|h| h.on_error.clone())
                .unwrap_or_default();
            let err = convert::error(&error);
            for cb in cbs {
                call1(&cb, &err);
            }
        }
        Action::SubscriptionFailed { sub, error } => {
            let removed = shared.borrow_mut().handlers.remove(&sub);
            if let Some(h) = removed {
                let err = convert::error(&error);
                match &h.receiver {
                    Receiver::Stream(st) => st.failed(&err),
                    Receiver::Native(sink) => sink.failed(error),
                    Receiver::Js(_) => {}
                }
                for cb in h.on_error {
                    call1(&cb, &err);
                }
            }
        }
        Action::Resolve { request, reply } => {
            let waiter = shared.borrow_mut().waiters.remove(&request);
            match waiter {
                Some(Waiter::Promise { resolve, .. }) => call1(&resolve, &convert::reply(&reply)),
                Some(Waiter::StreamLoad(st)) => {
                    if let Reply::Events(events) = &reply {
                        st.loaded(shared, events);
                    }
                }
                Some(Waiter::StreamAppend {
                    stream: st,
                    events,
                    resolve,
                    ..
                }) => {
                    if let Reply::Appended { version, .. } = &reply {
                        st.appended(&events, *version);
                    }
                    call1(&resolve, &convert::reply(&reply));
                }
                Some(Waiter::Native(settle)) => settle(shared, Ok(reply)),
                None => {}
            }
        }
        Action::Reject { request, error } => {
            let waiter = shared.borrow_mut().waiters.remove(&request);
            match waiter {
                Some(Waiter::Promise { reject, .. } | Waiter::StreamAppend { reject, .. }) => {
                    call1(&reject, &convert::error(&error))
                }
                Some(Waiter::StreamLoad(st)) => st.failed(&convert::error(&error)),
                Some(Waiter::Native(settle)) => settle(shared, Err(error)),
                None => {}
            }
        }
        Action::Error(error) => {
            let handlers = shared.borrow().error_handlers.clone();
            let err = convert::error(&error);
            for h in handlers {
                call1(&h, &err);
            }
        }
    }
}

fn fetch_token(shared: &SharedRef, weak: Weak<RefCell<Shared>>) {
    let get_token = shared.borrow().get_token.clone();
    let Some(get_token) = get_token else {
        run(shared, |core, ctx| {
            core.handle(ctx, Input::Token(Err("no getToken".into())))
        });
        return;
    };
    match get_token.call0(&JsValue::NULL) {
        Ok(v) if v.is_string() => {
            let token = v.as_string().unwrap_or_default();
            run(shared, |core, ctx| {
                core.handle(ctx, Input::Token(Ok(token)))
            });
        }
        Ok(v) => {
            let promise = Promise::resolve(&v);
            wasm_bindgen_futures::spawn_local(async move {
                let result = match JsFuture::from(promise).await {
                    Ok(t) => t
                        .as_string()
                        .ok_or_else(|| "getToken must resolve to a string".to_owned()),
                    Err(e) => Err(describe(&e)),
                };
                feed(&weak, Input::Token(result));
            });
        }
        Err(e) => {
            let msg = describe(&e);
            run(shared, |core, ctx| core.handle(ctx, Input::Token(Err(msg))));
        }
    }
}

fn describe(e: &JsValue) -> String {
    e.dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| "getToken failed".into())
}

/// A promise settled by the core's answer to the request `f` makes.
pub(crate) fn request_promise(
    shared: &SharedRef,
    f: impl FnOnce(&mut Core, Ctx) -> Result<RequestId, SdkError>,
) -> Promise {
    let result = f(&mut shared.borrow_mut().core, browser::ctx());
    promise_for(shared, result)
}

/// The promise of a request the core took (or refused): the part of [`request_promise`]
/// that is the same for every request, kept out of line so each exported method carries only
/// its own call.
#[inline(never)]
fn promise_for(shared: &SharedRef, result: Result<RequestId, SdkError>) -> Promise {
    let mut slots = None;
    let promise = Promise::new(&mut |resolve, reject| slots = Some((resolve, reject)));
    let Some((resolve, reject)) = slots else {
        return promise;
    };
    match result {
        Ok(id) => {
            shared
                .borrow_mut()
                .waiters
                .insert(id, Waiter::Promise { resolve, reject });
        }
        Err(e) => call1(&reject, &convert::error(&e)),
    }
    pump(shared);
    promise
}

/// A client's shared state, connecting once the current task is done: used by
/// `TidingsClient::new` and by the Rust API's `Client::connect`.
///
/// # Errors
/// `INVALID_ARGUMENT` when `config` has no usable URL.
pub(crate) fn start(
    config: Config,
    get_token: Option<Function>,
    persist_key: Option<String>,
    saved: BTreeMap<String, Position>,
) -> Result<SharedRef, SdkError> {
    let core = Core::new(config)?;
    let shared = Rc::new(RefCell::new(Shared {
        core,
        socket: None,
        timer: None,
        listeners: Vec::new(),
        state_handlers: Vec::new(),
        error_handlers: Vec::new(),
        handlers: VecMap::new(),
        waiters: VecMap::new(),
        get_token,
        persist_key,
        saved,
        dirty: false,
    }));
    let listeners = listen(&Rc::downgrade(&shared));
    shared.borrow_mut().listeners = listeners;
    // Connect once the constructor's task is done, so handlers the application registers
    // right after `new` (onStateChange, onError) hear everything, even a token that is
    // refused at once.
    let weak = Rc::downgrade(&shared);
    wasm_bindgen_futures::spawn_local(async move { feed(&weak, Input::Start) });
    Ok(shared)
}

pub(crate) fn instance_id() -> String {
    let a = (js_sys::Math::random() * 4_294_967_296.0) as u64;
    let b = (js_sys::Math::random() * 4_294_967_296.0) as u64;
    format!("{a:08x}{b:08x}")
}

/// A Tidings connection: subscribe, publish, history and event streams, with reconnects,
/// replay and an offline queue handled for you.
#[wasm_bindgen]
pub struct TidingsClient {
    pub(crate) shared: SharedRef,
}

#[wasm_bindgen]
impl TidingsClient {
    /// Connect with `options` (`url` or `urls`, `token` or `getToken`, `reconnect`,
    /// `persistOffsets`). Connecting starts at once; watch `onStateChange`.
    #[wasm_bindgen(constructor)]
    pub fn new(options: TidingsOptions) -> Result<TidingsClient, JsValue> {
        let options: JsValue = options.into();
        let opts = convert::options(&options, instance_id()).map_err(|e| convert::error(&e))?;
        let persist_key = opts
            .persist
            .then(|| format!("tidings:offsets:{}", opts.config.urls.join(",")));
        let saved = persist_key
            .as_deref()
            .and_then(|k| browser::session_storage()?.get_item(k).ok().flatten())
            .and_then(|text| wire::positions_from_json(&text).ok())
            .unwrap_or_default();
        let shared = start(opts.config, opts.get_token, persist_key, saved)
            .map_err(|e| convert::error(&e))?;
        Ok(TidingsClient { shared })
    }

    /// The connection state: connecting | connected | reconnecting | closed.
    #[wasm_bindgen(getter)]
    pub fn state(&self) -> StateName {
        JsValue::from_str(self.shared.borrow().core.state().as_str()).unchecked_into()
    }

    /// Call `handler(state)` on every state change.
    #[wasm_bindgen(js_name = onStateChange)]
    pub fn on_state_change(&self, handler: StateHandler) {
        self.shared
            .borrow_mut()
            .state_handlers
            .push(handler.unchecked_into());
    }

    /// Call `handler(error)` for errors not tied to a request (rate limited, token refused,
    /// `getToken` failed).
    #[wasm_bindgen(js_name = onError)]
    pub fn on_error(&self, handler: ErrorHandler) {
        self.shared
            .borrow_mut()
            .error_handlers
            .push(handler.unchecked_into());
    }

    /// Publish `data` (any JSON value) to `topic`. Resolves with `{topic, offset, epoch}` once
    /// the server acknowledged it; while offline the publish is queued and sent after
    /// reconnecting (retries carry the same id, so it is published once).
    pub fn publish(&self, topic: String, data: JsValue) -> PublishPromise {
        let raw = convert::to_raw_json(&data);
        request_promise(&self.shared, |core, ctx| core.publish(ctx, &topic, raw?)).unchecked_into()
    }

    /// Stored messages of a durable topic after offset `since` (at most `limit`).
    pub fn history(&self, topic: String, options: Option<HistoryOptionsArg>) -> HistoryPromise {
        let options: JsValue = options.map_or(JsValue::UNDEFINED, Into::into);
        let since = convert::get(&options, "since")
            .as_f64()
            .map(|v| v.max(0.0) as u64);
        let limit = convert::get(&options, "limit")
            .as_f64()
            .map(|v| v.clamp(0.0, f64::from(u32::MAX)) as u32);
        request_promise(&self.shared, |core, ctx| {
            core.history(ctx, &topic, since, limit)
        })
        .unchecked_into()
    }

    /// Who is on presence topic `topic`: resolves with `{topic, members, more}` (`members`:
    /// `{client_id, user, info}`; `more`: the topic has more members than one reply carries).
    /// Rejects with code "PRESENCE_DISABLED" when the server keeps no presence for the topic.
    pub fn presence(&self, topic: String) -> PresencePromise {
        request_promise(&self.shared, |core, ctx| core.presence(ctx, &topic)).unchecked_into()
    }

    /// How many are on presence topic `topic`: resolves with `{topic, clients, users}`.
    #[wasm_bindgen(js_name = presenceStats)]
    pub fn presence_stats(&self, topic: String) -> PresenceStatsPromise {
        request_promise(&self.shared, |core, ctx| core.presence_stats(ctx, &topic)).unchecked_into()
    }

    /// Close the connection for good: pending requests fail with code "CLOSED", and no
    /// timer, listener or socket is left behind.
    pub fn close(&self) {
        shutdown(&self.shared);
    }
}

impl Drop for TidingsClient {
    fn drop(&mut self) {
        shutdown(&self.shared);
    }
}

/// Close for good: the core closes, every browser resource is released, handlers are dropped
/// and pending requests fail with `CLOSED`.
pub(crate) fn shutdown(shared: &SharedRef) {
    run(shared, |core, _| core.close());
    let (socket, timer, listeners, waiters) = {
        let mut s = shared.borrow_mut();
        s.handlers.clear();
        s.state_handlers.clear();
        s.error_handlers.clear();
        (
            s.socket.take(),
            s.timer.take(),
            std::mem::take(&mut s.listeners),
            std::mem::take(&mut s.waiters),
        )
    };
    // Dropped outside the borrow: their Drop calls into the browser.
    drop((socket, timer, listeners));
    let err = convert::error(&SdkError::Closed);
    for w in waiters.into_values() {
        match w {
            Waiter::Promise { reject, .. } | Waiter::StreamAppend { reject, .. } => {
                call1(&reject, &err)
            }
            Waiter::Native(settle) => settle(shared, Err(SdkError::Closed)),
            Waiter::StreamLoad(_) => {}
        }
    }
}

/// Subscribe through the core and register the callbacks.
pub(crate) fn subscribe_with(
    shared: &SharedRef,
    topic: &str,
    since: Option<Position>,
    handlers: Handlers,
) -> Result<SubId, SdkError> {
    let id = {
        let mut s = shared.borrow_mut();
        let id = s.core.subscribe(browser::ctx(), topic, since)?;
        s.handlers.insert(id, handlers);
        id
    };
    pump(shared);
    Ok(id)
}

fn listen(weak: &Weak<RefCell<Shared>>) -> Vec<Listener> {
    let mut out = Vec::new();
    let Some(window) = web_sys::window() else {
        return out;
    };
    let w = weak.clone();
    out.extend(Listener::new(window.clone().into(), "online", move |_| {
        feed(&w, Input::Online)
    }));
    let w = weak.clone();
    out.extend(Listener::new(window.clone().into(), "offline", move |_| {
        feed(&w, Input::Offline)
    }));
    if let Some(document) = window.document() {
        let w = weak.clone();
        out.extend(Listener::new(
            document.into(),
            "visibilitychange",
            move |_| {
                if browser::page_visible() {
                    feed(&w, Input::Visible);
                }
            },
        ));
    }
    out
}
