//! `EventStream`: an event-sourced stream folded into state, by the application's reducer or
//! by a built-in Rust aggregate (`client.stream(id, "order")`, the server's own fold).
//!
//! Loading is `read` (snapshot, then events after it), then a subscription to the stream's
//! topic with `since` = the loaded version. Which event to apply and where to follow from is
//! decided by [`StreamFold`] (plain Rust, tested on the host); for a built-in aggregate the
//! fold and the commands are decided by the core's [`Model`] too. This file only converts
//! values and calls the reducer and the application's handlers.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use js_sys::{Function, Promise};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use super::client::{self, Follower, Handlers, Receiver, SharedRef, TidingsClient, Waiter, call1};
use super::convert;
use super::types::*;
use crate::core::aggregates::{self, Applied, Model};
use crate::core::streams::StreamFold;
use crate::core::{NewEvent, Position, SdkError, SubId};
use tidings_protocol::server::{Events, Message, StoredEvent};

/// Who folds the stream.
enum Folder {
    /// The application's reducer; the version bookkeeping is ours.
    Reducer { reducer: Function, fold: StreamFold },
    /// A built-in aggregate in the core: the fold, its versions and its commands.
    Model(Box<dyn Model>),
}

/// The folded state of one stream.
pub(crate) struct StreamState {
    id: String,
    folder: Folder,
    /// The state as the application sees it (for a model: its serde form, rebuilt on change).
    state: JsValue,
    on_change: Vec<Function>,
    on_error: Vec<Function>,
    on_event: Vec<Function>,
    sub: Option<SubId>,
}

impl StreamState {
    fn version(&self) -> u64 {
        match &self.folder {
            Folder::Reducer { fold, .. } => fold.version(),
            Folder::Model(m) => m.version(),
        }
    }

    fn resume_after(&self) -> u64 {
        match &self.folder {
            Folder::Reducer { fold, .. } => fold.resume_after(),
            Folder::Model(m) => m.resume_after(),
        }
    }

    /// A model's state as a plain JS value.
    fn refresh(&mut self) {
        if let Folder::Model(m) = &self.folder {
            self.state = js_sys::JSON::parse(&m.state_json()).unwrap_or(JsValue::NULL);
        }
    }
}

/// The stream's state, shared by the `EventStream` object and the pump.
type Cell = RefCell<StreamState>;

#[wasm_bindgen]
impl TidingsClient {
    /// Load event stream `id` (snapshot + events), then follow it live. `folder` is either a
    /// reducer `(state, event) => state` folding from `initial`, or the name of a built-in
    /// aggregate (`"order"`), which folds with the server's Rust code and adds `execute`.
    ///
    /// # Errors
    /// Throws `{code: "INVALID_ARGUMENT"}` for an unknown aggregate name,
    /// `{code: "INVALID_REQUEST"}` for an invalid stream id and `{code: "CLOSED"}` after
    /// `close()`.
    pub fn stream(
        &self,
        id: String,
        folder: StreamFolder,
        initial: Option<JsValue>,
    ) -> Result<EventStream, JsValue> {
        let folder: JsValue = folder.into();
        let (folder, state) = if let Some(name) = folder.as_string() {
            let model = aggregates::builtin(&name).ok_or_else(|| {
                convert::error(&SdkError::InvalidArgument(aggregates::unknown(&name)))
            })?;
            (Folder::Model(model), JsValue::NULL)
        } else if let Some(reducer) = folder.dyn_ref::<Function>() {
            (
                Folder::Reducer {
                    reducer: reducer.clone(),
                    fold: StreamFold::new(),
                },
                initial.unwrap_or(JsValue::UNDEFINED),
            )
        } else {
            return Err(convert::error(&SdkError::InvalidArgument(
                "stream needs a reducer function or a built-in aggregate's name".into(),
            )));
        };
        open(&self.shared, id, folder, state)
    }
}

/// Open a stream: read it, then follow it.
fn open(
    shared: &SharedRef,
    id: String,
    folder: Folder,
    state: JsValue,
) -> Result<EventStream, JsValue> {
    let mut st = StreamState {
        id: id.clone(),
        folder,
        state,
        on_change: Vec::new(),
        on_error: Vec::new(),
        on_event: Vec::new(),
        sub: None,
    };
    st.refresh();
    let st = Rc::new(RefCell::new(st));
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

/// Fold one event: `event` (`{version, type, data, timestamp}`) for the reducer and the
/// `onEvent` handlers, `stored` the same event for a model. Returns whether the version
/// advanced. The reducer and handlers run outside any borrow.
fn apply(st: &Cell, version: u64, event: &JsValue, stored: impl FnOnce() -> StoredEvent) -> bool {
    let reducer = {
        let mut guard = st.borrow_mut();
        let s = &mut *guard;
        match &mut s.folder {
            Folder::Reducer { reducer, fold } => {
                if !fold.is_next(version) {
                    return false;
                }
                Some((reducer.clone(), s.state.clone()))
            }
            Folder::Model(m) => {
                match m.apply(&stored()) {
                    Applied::Skipped => return false,
                    Applied::Folded => {}
                    Applied::Unreadable(e) => web_sys::console::warn_2(
                        &JsValue::from_str("tidings: event skipped"),
                        &JsValue::from_str(&e.to_string()),
                    ),
                }
                s.refresh();
                None
            }
        }
    };
    if let Some((reducer, state)) = reducer {
        match reducer.call2(&JsValue::NULL, &state, event) {
            Ok(next) => {
                let mut s = st.borrow_mut();
                s.state = next;
                if let Folder::Reducer { fold, .. } = &mut s.folder {
                    fold.applied(version);
                }
            }
            Err(e) => {
                web_sys::console::error_2(&JsValue::from_str("tidings: reducer threw"), &e);
                return false;
            }
        }
    }
    let cbs = st.borrow().on_event.clone();
    for cb in cbs {
        call1(&cb, event);
    }
    true
}

fn notify(st: &Cell) {
    let (cbs, state, version) = {
        let s = st.borrow();
        (s.on_change.clone(), s.state.clone(), s.version())
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

/// One of our appended `{type, data}` objects back as the event that was sent.
fn new_event(e: &JsValue) -> NewEvent {
    let data = convert::get(e, "data");
    NewEvent {
        r#type: convert::get(e, "type").as_string().unwrap_or_default(),
        data: if data.is_undefined() {
            tidings_protocol::json_null()
        } else {
            convert::to_raw_json(&data).unwrap_or_else(|_| tidings_protocol::json_null())
        },
    }
}

impl Follower for Cell {
    /// Fold the snapshot and events, then subscribe from the folded version.
    fn loaded(self: Rc<Self>, shared: &SharedRef, events: &Events) {
        /// What the first step (under the borrow) left to do.
        enum Next {
            /// Call the reducer for these events (indexes into `events.events`).
            Reduce(Vec<usize>),
            /// The model folded these; tell the handlers.
            Folded(Result<Vec<(usize, Applied)>, SdkError>),
        }
        let next = {
            let mut guard = self.borrow_mut();
            let s = &mut *guard;
            match &mut s.folder {
                Folder::Reducer { fold, .. } => {
                    let plan = fold.load(events);
                    if let (Some(version), Some(snap)) = (plan.snapshot, &events.snapshot) {
                        fold.restored(version);
                        s.state = convert::to_js(&snap.state);
                    }
                    Next::Reduce(plan.apply)
                }
                Folder::Model(m) => {
                    let folded = m.load(events);
                    s.refresh();
                    Next::Folded(folded)
                }
            }
        };
        match next {
            Next::Reduce(apply_indexes) => {
                for i in apply_indexes {
                    if let Some(e) = events.events.get(i) {
                        apply(&self, e.version, &convert::to_js(e), || e.clone());
                    }
                }
                if let Folder::Reducer { fold, .. } = &mut self.borrow_mut().folder {
                    fold.loaded(events);
                }
            }
            Next::Folded(Ok(folded)) => {
                let cbs = self.borrow().on_event.clone();
                for (i, applied) in folded {
                    if let (Some(e), Applied::Unreadable(err)) = (events.events.get(i), &applied) {
                        web_sys::console::warn_2(
                            &JsValue::from_str(&format!("tidings: event {} skipped", e.version)),
                            &JsValue::from_str(&err.to_string()),
                        );
                    }
                    if let Some(e) = events.events.get(i) {
                        let event = convert::to_js(e);
                        for cb in &cbs {
                            call1(cb, &event);
                        }
                    }
                }
            }
            Next::Folded(Err(e)) => {
                self.failed(&convert::error(&e));
                return;
            }
        }
        notify(&self);
        let (id, version) = {
            let s = self.borrow();
            (s.id.clone(), s.resume_after())
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
        let count = events.len() as u64;
        let versions = match &self.borrow().folder {
            Folder::Reducer { fold, .. } => fold.appended(count, version),
            Folder::Model(m) => m.appended(count, version),
        };
        let Some(versions) = versions else {
            return;
        };
        let mut changed = false;
        for (v, e) in versions.zip(events) {
            let _ = js_sys::Reflect::set(e, &"version".into(), &JsValue::from_f64(v as f64));
            changed |= apply(self, v, e, || aggregates::appended_event(v, &new_event(e)));
        }
        if changed {
            notify(self);
        }
    }

    fn message(&self, message: &Message) {
        let Some(version) = message.offset else {
            return;
        };
        if self.borrow().version().saturating_add(1) != version {
            return;
        }
        let event = event_of(version, message);
        if apply(self, version, &event, || {
            aggregates::stored_event(version, message)
        }) {
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
        self.state.borrow().version() as f64
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

    /// Call `handler(event)` for every event folded (`{version, type, data, timestamp}`),
    /// once each, in version order: replayed, live, and our own appends.
    #[wasm_bindgen(js_name = onEvent)]
    pub fn on_event(&self, handler: EventHandler) {
        self.state
            .borrow_mut()
            .on_event
            .push(handler.unchecked_into());
    }

    /// A built-in aggregate's decision on `command` against the current state, without
    /// appending: the events it would append.
    ///
    /// # Errors
    /// Throws the aggregate's refusal (`code`, e.g. `"INVALID_STATE"`), `INVALID_ARGUMENT` for
    /// a command that does not decode or a stream folded by a reducer.
    pub fn decide(&self, command: AggregateCommand) -> Result<DecidedEvents, JsValue> {
        let events = self
            .decided(&command.into())
            .map_err(|e| convert::error(&e))?;
        Ok(events
            .iter()
            .map(js_event)
            .collect::<js_sys::Array>()
            .unchecked_into())
    }

    /// Decide `command` with the built-in aggregate, then append its events at the folded
    /// version. A refused command rejects with the aggregate's code and sends nothing; a
    /// stale version rejects with `VERSION_CONFLICT` (and `currentVersion`), not retried: the
    /// stream folds the newer events as they arrive and the application decides again.
    pub fn execute(&self, command: AggregateCommand) -> AppendPromise {
        match self.decided(&command.into()) {
            Ok(events) => {
                let js_events = events.iter().map(js_event).collect();
                self.send(Ok(events), js_events)
            }
            Err(e) => Promise::reject(&convert::error(&e)).unchecked_into(),
        }
    }

    /// Append `events` at the known version. Rejects with `code: "VERSION_CONFLICT"` (and
    /// `currentVersion`) if someone else appended first.
    pub fn append(&self, events: NewEvents) -> AppendPromise {
        let events: JsValue = events.into();
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
        self.send(parsed, js_events)
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

/// An event to append as the `{type, data}` object `onEvent` and reducers see.
fn js_event(e: &NewEvent) -> JsValue {
    let o = js_sys::Object::new();
    let _ = js_sys::Reflect::set(&o, &"type".into(), &JsValue::from_str(&e.r#type));
    let _ = js_sys::Reflect::set(&o, &"data".into(), &convert::to_js(&e.data));
    o.into()
}

impl EventStream {
    /// The built-in aggregate's events for `command` (a JS value), decided in the core.
    fn decided(&self, command: &JsValue) -> Result<Vec<NewEvent>, SdkError> {
        let text = convert::to_raw_json(command)?;
        match &self.state.borrow().folder {
            Folder::Model(m) => m.decide(text.get()),
            Folder::Reducer { .. } => Err(SdkError::InvalidArgument(
                "decide and execute need a built-in aggregate: client.stream(id, \"order\")".into(),
            )),
        }
    }

    /// Append `parsed` at the folded version; `js_events` are folded locally on success.
    fn send(
        &self,
        parsed: Result<Vec<NewEvent>, SdkError>,
        js_events: Vec<JsValue>,
    ) -> AppendPromise {
        let Some(shared) = self.shared.upgrade() else {
            return Promise::reject(&convert::error(&SdkError::Closed)).unchecked_into();
        };
        let (id, version) = {
            let s = self.state.borrow();
            (s.id.clone(), s.version())
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
}
