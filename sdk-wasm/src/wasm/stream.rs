//! `EventStream`: an event-sourced stream folded into state with the application's reducer.
//!
//! Loading is `read` (snapshot, then events after it), then a subscription to the stream's
//! topic with `since` = the loaded version. Which event to apply and where to follow from is
//! decided by [`StreamFold`] (plain Rust, tested on the host); this file only calls the
//! reducer and the application's handlers.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use js_sys::{Function, Promise};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use super::client::{self, Follower, Handlers, Receiver, SharedRef, TidingsClient, Waiter, call1};
use super::convert;
use super::types::*;
use crate::core::streams::StreamFold;
use crate::core::{Position, SdkError, SubId};
use tidings_protocol::server::{Events, Message};

/// The folded state of one stream.
pub(crate) struct StreamState {
    id: String,
    reducer: Function,
    state: JsValue,
    fold: StreamFold,
    on_change: Vec<Function>,
    on_error: Vec<Function>,
    sub: Option<SubId>,
}

/// The stream's state, shared by the `EventStream` object and the pump.
type Cell = RefCell<StreamState>;

#[wasm_bindgen]
impl TidingsClient {
    /// Load event stream `id` (snapshot + events folded with `reducer` from `initial`), then
    /// follow it live.
    ///
    /// # Errors
    /// Throws `{code: "INVALID_REQUEST"}` for an invalid stream id and `{code: "CLOSED"}` after
    /// `close()`.
    pub fn stream(
        &self,
        id: String,
        reducer: Reducer,
        initial: JsValue,
    ) -> Result<EventStream, JsValue> {
        open(&self.shared, id, reducer.unchecked_into(), initial)
    }
}

/// Open a stream: read it, then follow it.
fn open(
    shared: &SharedRef,
    id: String,
    reducer: Function,
    initial: JsValue,
) -> Result<EventStream, JsValue> {
    let st = Rc::new(RefCell::new(StreamState {
        id: id.clone(),
        reducer,
        state: initial,
        fold: StreamFold::new(),
        on_change: Vec::new(),
        on_error: Vec::new(),
        sub: None,
    }));
    {
        let mut s = shared.borrow_mut();
        let ctx = super::browser::ctx();
        let req = s
            .core
            .read(ctx, &id, None)
            .map_err(|e| convert::error(&e))?;
        s.waiters.insert(req, Waiter::StreamLoad(st.clone()));
    }
    client::pump(shared);
    Ok(EventStream {
        shared: Rc::downgrade(shared),
        state: st,
    })
}

/// Apply one event (`{version, type, data, timestamp}`) with the reducer, outside any borrow.
/// Returns whether the state changed.
fn apply(st: &Cell, version: u64, event: &JsValue) -> bool {
    let (reducer, state) = {
        let s = st.borrow();
        if !s.fold.is_next(version) {
            return false;
        }
        (s.reducer.clone(), s.state.clone())
    };
    match reducer.call2(&JsValue::NULL, &state, event) {
        Ok(next) => {
            let mut s = st.borrow_mut();
            s.state = next;
            s.fold.applied(version);
            true
        }
        Err(e) => {
            web_sys::console::error_2(&JsValue::from_str("tidings: reducer threw"), &e);
            false
        }
    }
}

fn notify(st: &Cell) {
    let (cbs, state, version) = {
        let s = st.borrow();
        (s.on_change.clone(), s.state.clone(), s.fold.version())
    };
    for cb in cbs {
        let _ = cb.call2(&JsValue::NULL, &state, &JsValue::from_f64(version as f64));
    }
}

/// A live message as an event: its offset is the event's version and its data the event
/// `{type, data}`.
fn event_of(version: u64, message: &Message) -> JsValue {
    let data = convert::message(message);
    let payload = convert::get(&data, "data");
    let event = js_sys::Object::new();
    let set = |k: &str, v: &JsValue| {
        let _ = js_sys::Reflect::set(&event, &k.into(), v);
    };
    set("version", &JsValue::from_f64(version as f64));
    set("type", &convert::get(&payload, "type"));
    set("data", &convert::get(&payload, "data"));
    set("timestamp", &JsValue::from_str(&message.timestamp));
    event.into()
}

impl Follower for Cell {
    /// Fold the snapshot and events, then subscribe from the folded version.
    fn loaded(self: Rc<Self>, shared: &SharedRef, events: &Events) {
        let plan = self.borrow().fold.load(events);
        if let (Some(version), Some(snap)) = (plan.snapshot, &events.snapshot) {
            let mut s = self.borrow_mut();
            s.state = convert::to_js(&snap.state);
            s.fold.restored(version);
        }
        for i in plan.apply {
            if let Some(e) = events.events.get(i) {
                apply(&self, e.version, &convert::to_js(e));
            }
        }
        self.borrow_mut().fold.loaded(events);
        notify(&self);
        let (id, version) = {
            let s = self.borrow();
            (s.id.clone(), s.fold.resume_after())
        };
        let handlers = Handlers::new(Receiver::Stream(self.clone()));
        let since = Some(Position {
            offset: version,
            epoch: None,
        });
        match client::subscribe_with(shared, &id, since, handlers) {
            Ok(sub) => self.borrow_mut().sub = Some(sub),
            Err(e) => self.failed(&convert::error(&e)),
        }
    }

    /// Fold our accepted events now if nothing else was appended in between; otherwise the
    /// live feed brings every event in order.
    fn appended(&self, events: &[JsValue], version: u64) {
        let Some(versions) = self.borrow().fold.appended(events.len() as u64, version) else {
            return;
        };
        let mut changed = false;
        for (v, e) in versions.zip(events) {
            let _ = js_sys::Reflect::set(e, &"version".into(), &JsValue::from_f64(v as f64));
            changed |= apply(self, v, e);
        }
        if changed {
            notify(self);
        }
    }

    fn message(&self, message: &Message) {
        let Some(version) = message.offset else {
            return;
        };
        if !self.borrow().fold.is_next(version) {
            return;
        }
        if apply(self, version, &event_of(version, message)) {
            notify(self);
        }
    }

    fn failed(&self, err: &JsValue) {
        let cbs = self.borrow().on_error.clone();
        for cb in cbs {
            call1(&cb, err);
        }
    }
}

/// A live, folded event stream: `state`, `version`, `onChange`, `append`.
#[wasm_bindgen]
pub struct EventStream {
    shared: Weak<RefCell<client::Shared>>,
    state: Rc<RefCell<StreamState>>,
}

#[wasm_bindgen]
impl EventStream {
    /// The state folded so far.
    #[wasm_bindgen(getter)]
    pub fn state(&self) -> JsValue {
        self.state.borrow().state.clone()
    }

    /// The version of the last applied event.
    #[wasm_bindgen(getter)]
    pub fn version(&self) -> f64 {
        self.state.borrow().fold.version() as f64
    }

    /// Call `handler(state, version)` after every change.
    #[wasm_bindgen(js_name = onChange)]
    pub fn on_change(&self, handler: ChangeHandler) {
        self.state
            .borrow_mut()
            .on_change
            .push(handler.unchecked_into());
    }

    /// Call `handler(error)` if loading or following fails.
    #[wasm_bindgen(js_name = onError)]
    pub fn on_error(&self, handler: ErrorHandler) {
        self.state
            .borrow_mut()
            .on_error
            .push(handler.unchecked_into());
    }

    /// Append `events` at the known version. Rejects with `code: "VERSION_CONFLICT"` (and
    /// `currentVersion`) if someone else appended first.
    pub fn append(&self, events: NewEvents) -> AppendPromise {
        let events: JsValue = events.into();
        let Some(shared) = self.shared.upgrade() else {
            return Promise::reject(&convert::error(&SdkError::Closed)).unchecked_into();
        };
        let parsed = convert::new_events(&events);
        let js_events: Vec<JsValue> = if js_sys::Array::is_array(&events) {
            js_sys::Array::from(&events)
                .iter()
                .map(|e| {
                    let copy = js_sys::Object::new();
                    let _ = js_sys::Reflect::set(&copy, &"type".into(), &convert::get(&e, "type"));
                    let _ = js_sys::Reflect::set(&copy, &"data".into(), &convert::get(&e, "data"));
                    copy.into()
                })
                .collect()
        } else {
            Vec::new()
        };
        let (id, version) = {
            let s = self.state.borrow();
            (s.id.clone(), s.fold.version())
        };
        let mut slots = None;
        let promise = Promise::new(&mut |resolve, reject| slots = Some((resolve, reject)));
        let Some((resolve, reject)) = slots else {
            return promise.unchecked_into();
        };
        let result = {
            let mut s = shared.borrow_mut();
            let ctx = super::browser::ctx();
            let r = parsed.and_then(|evs| s.core.append(ctx, &id, Some(version), evs));
            if let Ok(req) = r {
                s.waiters.insert(
                    req,
                    Waiter::StreamAppend {
                        stream: self.state.clone(),
                        events: js_events,
                        resolve,
                        reject: reject.clone(),
                    },
                );
            }
            r
        };
        if let Err(e) = result {
            call1(&reject, &convert::error(&e));
        }
        client::pump(&shared);
        promise.unchecked_into()
    }

    /// Stop following the stream.
    pub fn close(&self) {
        let sub = self.state.borrow_mut().sub.take();
        if let (Some(sub), Some(shared)) = (sub, self.shared.upgrade()) {
            shared.borrow_mut().handlers.remove(&sub);
            client::run(&shared, |core, ctx| core.unsubscribe(ctx, sub));
        }
    }
}
