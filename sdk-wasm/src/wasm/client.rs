//! The Rust API's action pump: the core's actions carried out with web-sys.
//!
//! (The JS API has the same pump in JavaScript, `sdk-wasm/js/client.js`, over
//! [`crate::engine::Engine`]; this one serves [`crate::native`].)
//!
//! Re-entrancy rule: the shared state is borrowed only to feed the core or to take what an
//! action needs, never while running a subscriber's sink or a request's settle function. They
//! may therefore subscribe, publish or close from inside.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use super::browser::{self, Listener, Socket, SocketEvent, Timer};
use crate::core::{Action, Config, Core, Ctx, Input, Position, Reply, RequestId, SdkError, SubId};
use tidings_protocol::VecMap;
use tidings_protocol::server::Message;

/// A Rust subscriber's end.
pub(crate) trait Sink {
    /// A message for the subscriber.
    fn message(&self, message: Message);
    /// The server refused the subscription: nothing more will come.
    fn failed(&self, error: SdkError);
}

/// What a Rust caller does with a request's outcome (run by the pump, outside any borrow).
pub(crate) type Settle = Box<dyn FnOnce(&SharedRef, Result<Reply, SdkError>)>;

/// Everything the client owns; shared between the API's values and the browser callbacks
/// (which hold it weakly).
pub(crate) struct Shared {
    pub(crate) core: Core,
    socket: Option<Socket>,
    timer: Option<Timer>,
    listeners: Vec<Listener>,
    pub(crate) handlers: VecMap<SubId, Rc<dyn Sink>>,
    pub(crate) waiters: VecMap<RequestId, Settle>,
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

/// Carry out queued actions until the core has nothing more to say.
pub(crate) fn pump(shared: &SharedRef) {
    loop {
        let action = shared.borrow_mut().core.poll_action();
        let Some(action) = action else { break };
        execute(shared, action);
    }
}

fn execute(shared: &SharedRef, action: Action) {
    let weak = Rc::downgrade(shared);
    match action {
        Action::OpenSocket { socket, url } => {
            let w = weak.clone();
            let report = move |id, event| {
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
        // The Rust API has no token provider: a token the server refuses is final.
        Action::FetchToken => run(shared, |core, ctx| {
            core.handle(ctx, Input::Token(Err("no token provider".into())))
        }),
        Action::Deliver { sub, message } => {
            let sink = shared.borrow().handlers.get(&sub).cloned();
            if let Some(sink) = sink {
                sink.message(message);
            }
        }
        Action::SubscriptionFailed { sub, error } => {
            let removed = shared.borrow_mut().handlers.remove(&sub);
            if let Some(sink) = removed {
                sink.failed(error);
            }
        }
        Action::Resolve { request, reply } => {
            let waiter = shared.borrow_mut().waiters.remove(&request);
            if let Some(settle) = waiter {
                settle(shared, Ok(reply));
            }
        }
        Action::Reject { request, error } => {
            let waiter = shared.borrow_mut().waiters.remove(&request);
            if let Some(settle) = waiter {
                settle(shared, Err(error));
            }
        }
        // Not part of the Rust API: the state is read with `Client::state`, and presence and
        // recovery notices have no Rust surface yet.
        Action::StateChanged(_)
        | Action::Recovery { .. }
        | Action::MemberChanged { .. }
        | Action::PresenceFailed { .. }
        | Action::Error(_) => {}
    }
}

/// A client's shared state, connecting once the current task is done.
///
/// # Errors
/// `INVALID_ARGUMENT` when `config` has no usable URL.
pub(crate) fn start(config: Config) -> Result<SharedRef, SdkError> {
    let core = Core::new(config)?;
    let shared = Rc::new(RefCell::new(Shared {
        core,
        socket: None,
        timer: None,
        listeners: Vec::new(),
        handlers: VecMap::new(),
        waiters: VecMap::new(),
    }));
    let listeners = listen(&Rc::downgrade(&shared));
    shared.borrow_mut().listeners = listeners;
    // Connect once the constructor's task is done, so everything the caller does right after
    // `connect` goes out with the first connection.
    let weak = Rc::downgrade(&shared);
    wasm_bindgen_futures::spawn_local(async move { feed(&weak, Input::Start) });
    Ok(shared)
}

/// A random id for this client instance (publish ids are `<instance>-<n>`).
pub(crate) fn instance_id() -> String {
    let a = (js_sys::Math::random() * 4_294_967_296.0) as u64;
    let b = (js_sys::Math::random() * 4_294_967_296.0) as u64;
    format!("{a:08x}{b:08x}")
}

/// Close for good: the core closes, every browser resource is released, sinks are dropped
/// (ending their streams) and pending requests fail with `CLOSED`.
pub(crate) fn shutdown(shared: &SharedRef) {
    run(shared, |core, _| core.close());
    let (socket, timer, listeners, handlers, waiters) = {
        let mut s = shared.borrow_mut();
        (
            s.socket.take(),
            s.timer.take(),
            std::mem::take(&mut s.listeners),
            std::mem::take(&mut s.handlers),
            std::mem::take(&mut s.waiters),
        )
    };
    // Dropped outside the borrow: their Drop calls into the browser or wakes tasks.
    drop((socket, timer, listeners, handlers));
    for settle in waiters.into_values() {
        settle(shared, Err(SdkError::Closed));
    }
}

/// Subscribe through the core and register the subscriber's sink.
pub(crate) fn subscribe_with(
    shared: &SharedRef,
    topic: &str,
    since: Option<Position>,
    sink: Rc<dyn Sink>,
) -> Result<SubId, SdkError> {
    let id = {
        let mut s = shared.borrow_mut();
        let id = s.core.subscribe(browser::ctx(), topic, since)?;
        s.handlers.insert(id, sink);
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
