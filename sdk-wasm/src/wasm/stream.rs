//! `EventStream`: an event-sourced stream folded into state with the application's reducer.
//!
//! Loading is `read` (snapshot, then events after it), then a subscription to the stream's
//! topic with `since` = the loaded version, so no event between the read and the live feed is
//! missed or applied twice: every event is applied only if its version is the next one.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use js_sys::{Function, Promise};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use super::client::{self, Handlers, Receiver, SharedRef, Waiter, call1_public as call1};
use super::convert;
use super::types::*;
use crate::core::{Position, SdkError, SubId};
use tidings_protocol::server::{Events, Message};

/// The folded state of one stream.
pub(crate) struct StreamState {
    id: String,
    reducer: Function,
    state: JsValue,
    version: u64,
    on_change: Vec<Function>,
    on_error: Vec<Function>,
    sub: Option<SubId>,
}

/// Open a stream: read it, then follow it.
pub(crate) fn open(
    shared: &SharedRef,
    id: String,
    reducer: Function,
    initial: JsValue,
) -> Result<EventStream, JsValue> {
    let st = Rc::new(RefCell::new(StreamState {
        id: id.clone(),
        reducer,
        state: initial,
        version: 0,
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
fn apply(st: &Rc<RefCell<StreamState>>, version: u64, event: &JsValue) {
    let (reducer, state) = {
        let s = st.borrow();
        if version != s.version + 1 {
            return;
        }
        (s.reducer.clone(), s.state.clone())
    };
    match reducer.call2(&JsValue::NULL, &state, event) {
        Ok(next) => {
            let mut s = st.borrow_mut();
            s.state = next;
            s.version = version;
        }
        Err(e) => web_sys::console::error_2(&JsValue::from_str("tidings: reducer threw"), &e),
    }
}

fn notify(st: &Rc<RefCell<StreamState>>) {
    let (cbs, state, version) = {
        let s = st.borrow();
        (s.on_change.clone(), s.state.clone(), s.version)
    };
    for cb in cbs {
        let _ = cb.call2(&JsValue::NULL, &state, &JsValue::from_f64(version as f64));
    }
}

/// The initial `read` answered: fold, then subscribe from the loaded version.
pub(crate) fn on_loaded(shared: &SharedRef, st: &Rc<RefCell<StreamState>>, events: &Events) {
    if let Some(snap) = &events.snapshot {
        let mut s = st.borrow_mut();
        s.state = convert::to_js(&snap.state);
        s.version = snap.version;
    }
    for e in &events.events {
        apply(st, e.version, &convert::to_js(e));
    }
    {
        // Trust the server's version even if it listed no events (an empty stream).
        let mut s = st.borrow_mut();
        if events.events.is_empty() && events.snapshot.is_none() {
            s.version = events.version;
        }
    }
    notify(st);
    let (id, version) = {
        let s = st.borrow();
        (s.id.clone(), s.version)
    };
    let handlers = Handlers {
        receiver: Receiver::Stream(st.clone()),
        on_recovery: Vec::new(),
        on_error: Vec::new(),
    };
    let since = Some(Position {
        offset: version,
        epoch: None,
    });
    match client::subscribe_with(shared, &id, since, handlers) {
        Ok(sub) => st.borrow_mut().sub = Some(sub),
        Err(e) => on_error(st, &convert::error(&e)),
    }
}

/// A live message on the stream's topic: its offset is the event's version and its data is
/// the event `{type, data}`.
pub(crate) fn on_message(st: &Rc<RefCell<StreamState>>, message: &Message) {
    let Some(version) = message.offset else {
        return;
    };
    let data = convert::message(message);
    let payload = convert::get(&data, "data");
    let event = js_sys::Object::new();
    let _ = js_sys::Reflect::set(
        &event,
        &"version".into(),
        &JsValue::from_f64(version as f64),
    );
    let _ = js_sys::Reflect::set(&event, &"type".into(), &convert::get(&payload, "type"));
    let _ = js_sys::Reflect::set(&event, &"data".into(), &convert::get(&payload, "data"));
    let _ = js_sys::Reflect::set(
        &event,
        &"timestamp".into(),
        &JsValue::from_str(&message.timestamp),
    );
    let before = st.borrow().version;
    apply(st, version, &event.into());
    if st.borrow().version != before {
        notify(st);
    }
}

/// Our `append` was accepted at `version`: fold the events now if nothing else came between.
pub(crate) fn on_appended(st: &Rc<RefCell<StreamState>>, events: &[JsValue], version: u64) {
    let n = events.len() as u64;
    if st.borrow().version + n != version {
        return; // others appended in between; the live feed brings everything in order
    }
    let first = version + 1 - n;
    for (i, e) in events.iter().enumerate() {
        let v = first + i as u64;
        let _ = js_sys::Reflect::set(e, &"version".into(), &JsValue::from_f64(v as f64));
        apply(st, v, e);
    }
    notify(st);
}

/// Loading or following failed.
pub(crate) fn on_error(st: &Rc<RefCell<StreamState>>, err: &JsValue) {
    let cbs = st.borrow().on_error.clone();
    for cb in cbs {
        call1(&cb, err);
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
        self.state.borrow().version as f64
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
            (s.id.clone(), s.version)
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
