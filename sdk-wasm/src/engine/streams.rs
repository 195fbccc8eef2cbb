//! Event streams in the engine (cargo feature `streams`): each stream the JS opened, by
//! handle, folded by a JS reducer (the versions kept here with [`StreamFold`], the state in
//! JS) or by a built-in aggregate ([`Model`]: state and versions here).
//!
//! As the wasm-bindgen `EventStream` did: a stream loads with `read` (the engine keeps the
//! reply for itself), then follows its topic with `since` = the folded version; live messages
//! fold when they are the next version; our own append, once accepted, folds its events at
//! once when nothing else was appended in between. Each fold is written as
//! `["fold", handle, {"version", "state"?, "events": [...]}]`, before the append's `resolve`.
//! The stream's own subscription never reaches the JS as `deliver`, `recovery` or
//! `subFailed`; a failed load or subscription is `["streamFailed", handle, error]`.
//!
//! A reducer stream's events are marked applied here when they are written to the JS: a
//! reducer that throws in JS skips that event, but it still counts as a version (the stream
//! does not stall on it, as a model stream does not on an event it cannot read).

use tidings_protocol::aggregate::EventError;
use tidings_protocol::json::{Fields, Invalid, ObjectWriter, Read, write_str, write_u64};
use tidings_protocol::server::{Events, Message, StoredEvent};

use super::{arg, head, id_u32, null, number, request, write_error};
use crate::core::aggregates::{self, Applied, Model};
use crate::core::streams::StreamFold;
use crate::core::{Action, Core, Ctx, NewEvent, Position, Reply, RequestId, SdkError, SubId};
use tidings_protocol::VecMap;

/// Who folds a stream.
enum Folder {
    /// The JS reducer: only the version bookkeeping is here.
    Reducer(StreamFold),
    /// A built-in aggregate: the state, its versions and its commands.
    Model(Box<dyn Model>),
}

impl std::fmt::Debug for Folder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Folder::Reducer(_) => "Reducer",
            Folder::Model(_) => "Model",
        })
    }
}

/// One stream the JS opened.
#[derive(Debug)]
struct Stream {
    /// The stream's id (and its topic).
    id: String,
    folder: Folder,
    /// The subscription following its topic, once loaded.
    sub: Option<SubId>,
}

impl Stream {
    /// The version of the last folded event.
    fn version(&self) -> u64 {
        match &self.folder {
            Folder::Reducer(fold) => fold.version(),
            Folder::Model(m) => m.version(),
        }
    }

    /// A model's state JSON (`None` for a reducer stream: its state lives in JS).
    fn model_state(&self) -> Option<String> {
        match &self.folder {
            Folder::Reducer(_) => None,
            Folder::Model(m) => Some(m.state_json()),
        }
    }

    /// Fold one event: whether the version advanced. An event a model cannot read advances
    /// it too, with a `warn` action.
    fn apply(&mut self, event: &StoredEvent, out: &mut String) -> bool {
        match &mut self.folder {
            Folder::Reducer(fold) => {
                let next = fold.is_next(event.version);
                fold.applied(event.version);
                next
            }
            Folder::Model(m) => match m.apply(event) {
                Applied::Skipped => false,
                Applied::Folded => true,
                Applied::Unreadable(e) => {
                    warn(out, event.version, &e);
                    true
                }
            },
        }
    }
}

/// What a request of a stream is for.
#[derive(Debug)]
enum Pending {
    /// The initial `read` of this stream.
    Load(u32),
    /// An append of these events to this stream.
    Append(u32, Vec<NewEvent>),
}

/// The streams the JS opened, their requests and their subscriptions.
#[derive(Debug, Default)]
pub(super) struct Streams {
    /// The last handle given out.
    last: u32,
    streams: VecMap<u32, Stream>,
    requests: VecMap<RequestId, Pending>,
    subs: VecMap<SubId, u32>,
}

impl Streams {
    /// A stream call (`stream`, `append`, `decide`, `execute`, `streamClose`,
    /// `streamState`), as [`super::Engine::call`] reads them.
    pub(super) fn op(
        &mut self,
        core: &mut Core,
        ctx: Ctx,
        name: &str,
        f: &Fields<'_>,
    ) -> Read<Result<String, SdkError>> {
        Ok(match name {
            "stream" => {
                let id = f.string("id")?;
                let folder = match f.opt_string("model")? {
                    None => Folder::Reducer(StreamFold::new()),
                    Some(name) => match aggregates::builtin(&name) {
                        Some(m) => Folder::Model(m),
                        None => {
                            return Ok(Err(SdkError::InvalidArgument(aggregates::unknown(&name))));
                        }
                    },
                };
                core.read(ctx, &id, None).map(|req| {
                    self.last = self.last.wrapping_add(1);
                    let h = self.last;
                    self.requests.insert(req, Pending::Load(h));
                    let sub = None;
                    self.streams.insert(h, Stream { id, folder, sub });
                    number(u64::from(h))
                })
            }
            "append" => {
                let h = handle(f)?;
                new_events(f)
                    .and_then(|events| self.append(core, ctx, h, events))
                    .map(request)
            }
            "decide" => {
                let h = handle(f)?;
                let command = f.req("command")?;
                self.decide(h, command).map(|events| {
                    let mut out = String::from("[");
                    for (i, e) in events.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let mut o = ObjectWriter::new(&mut out);
                        o.str("type", &e.r#type);
                        o.raw("data", e.data.get());
                        o.end();
                    }
                    out.push(']');
                    out
                })
            }
            "execute" => {
                let h = handle(f)?;
                let command = f.req("command")?;
                self.decide(h, command)
                    .and_then(|events| self.append(core, ctx, h, events))
                    .map(request)
            }
            "streamClose" => {
                if let Some(stream) = self.streams.remove(&handle(f)?)
                    && let Some(sub) = stream.sub
                {
                    self.subs.remove(&sub);
                    core.unsubscribe(ctx, sub);
                }
                Ok(null())
            }
            "streamState" => self
                .streams
                .get(&handle(f)?)
                .ok_or_else(unknown_stream)
                .map(|s| s.model_state().unwrap_or_else(null)),
            _ => return Err(Invalid),
        })
    }

    /// Append `events` to stream `h` at its folded version.
    fn append(
        &mut self,
        core: &mut Core,
        ctx: Ctx,
        h: u32,
        events: Vec<NewEvent>,
    ) -> Result<RequestId, SdkError> {
        let s = self.streams.get(&h).ok_or_else(unknown_stream)?;
        let req = core.append(ctx, &s.id, Some(s.version()), events.clone())?;
        self.requests.insert(req, Pending::Append(h, events));
        Ok(req)
    }

    /// A model stream's events for `command` (JSON text).
    fn decide(&self, h: u32, command: &str) -> Result<Vec<NewEvent>, SdkError> {
        match &self.streams.get(&h).ok_or_else(unknown_stream)?.folder {
            Folder::Model(m) => m.decide(command),
            Folder::Reducer(_) => Err(SdkError::InvalidArgument(
                "decide and execute need a built-in aggregate: client.stream(id, \"order\")".into(),
            )),
        }
    }

    /// Take the actions that belong to a stream (its load's reply, its subscription's
    /// messages, recoveries and refusal), writing what they mean for the JS to `out`; an
    /// append's `resolve` gets its fold written first and is handed back. Every other action
    /// is handed back as it is.
    pub(super) fn take(
        &mut self,
        core: &mut Core,
        ctx: Ctx,
        action: Action,
        out: &mut String,
    ) -> Option<Action> {
        let taken = match &action {
            Action::Resolve { request, reply } => match self.requests.remove(request) {
                Some(Pending::Load(h)) => {
                    if let Reply::Events(events) = reply {
                        self.loaded(core, ctx, h, events, out);
                    }
                    true
                }
                Some(Pending::Append(h, events)) => {
                    if let Reply::Appended { version, .. } = reply {
                        self.appended(h, &events, *version, out);
                    }
                    false
                }
                None => false,
            },
            Action::Reject { request, error } => match self.requests.remove(request) {
                Some(Pending::Load(h)) => {
                    if self.streams.contains_key(&h) {
                        failed(out, h, error);
                    }
                    true
                }
                _ => false,
            },
            Action::Deliver { sub, message } => match self.subs.get(sub) {
                Some(&h) => {
                    self.message(h, message, out);
                    true
                }
                None => false,
            },
            Action::Recovery { sub, .. } => self.subs.contains_key(sub),
            Action::SubscriptionFailed { sub, error } => match self.subs.remove(sub) {
                Some(h) => {
                    if let Some(s) = self.streams.get_mut(&h) {
                        s.sub = None;
                    }
                    failed(out, h, error);
                    true
                }
                None => false,
            },
            _ => false,
        };
        (!taken).then_some(action)
    }

    /// The initial `read` of stream `h` answered: fold it, then follow the stream's topic
    /// from the folded version.
    fn loaded(&mut self, core: &mut Core, ctx: Ctx, h: u32, events: &Events, out: &mut String) {
        let Some(s) = self.streams.get_mut(&h) else {
            return;
        };
        let mut folded = String::new();
        let mut snapshot = None;
        match &mut s.folder {
            Folder::Reducer(fold) => {
                let plan = fold.load(events);
                if let (Some(version), Some(snap)) = (plan.snapshot, &events.snapshot) {
                    fold.restored(version);
                    snapshot = Some(snap.state.get());
                }
                for i in plan.apply {
                    if let Some(e) = events.events.get(i) {
                        fold.applied(e.version);
                        event(&mut folded, e, true);
                    }
                }
                fold.loaded(events);
            }
            Folder::Model(m) => match m.load(events) {
                Ok(done) => {
                    for (i, applied) in done {
                        if let Some(e) = events.events.get(i) {
                            if let Applied::Unreadable(err) = &applied {
                                warn(out, e.version, err);
                            }
                            event(&mut folded, e, true);
                        }
                    }
                }
                Err(e) => return failed(out, h, &e),
            },
        }
        let state = s.model_state();
        fold(out, h, s.version(), state.as_deref().or(snapshot), &folded);
        let since = Position {
            offset: s.version(),
            epoch: None,
        };
        match core.subscribe(ctx, &s.id, Some(since)) {
            Ok(sub) => {
                s.sub = Some(sub);
                self.subs.insert(sub, h);
            }
            Err(e) => failed(out, h, &e),
        }
    }

    /// A live message on stream `h`'s topic: folded when it is the next version.
    fn message(&mut self, h: u32, message: &Message, out: &mut String) {
        let (Some(s), Some(version)) = (self.streams.get_mut(&h), message.offset) else {
            return;
        };
        if s.version().checked_add(1) != Some(version) {
            return;
        }
        let e = aggregates::stored_event(version, message);
        if s.apply(&e, out) {
            let mut folded = String::new();
            event(&mut folded, &e, true);
            let state = s.model_state();
            fold(out, h, s.version(), state.as_deref(), &folded);
        }
    }

    /// Our append of `events` to stream `h` was accepted, the stream now at `version`: fold
    /// them now if nothing else was appended in between (otherwise the live feed brings
    /// every event in order).
    fn appended(&mut self, h: u32, events: &[NewEvent], version: u64, out: &mut String) {
        let Some(s) = self.streams.get_mut(&h) else {
            return;
        };
        let count = events.len() as u64;
        let versions = match &s.folder {
            Folder::Reducer(fold) => fold.appended(count, version),
            Folder::Model(m) => m.appended(count, version),
        };
        let Some(versions) = versions else {
            return;
        };
        let mut folded = String::new();
        for (v, e) in versions.zip(events) {
            let stored = aggregates::appended_event(v, e);
            if s.apply(&stored, out) {
                event(&mut folded, &stored, false);
            }
        }
        if !folded.is_empty() {
            let state = s.model_state();
            fold(out, h, s.version(), state.as_deref(), &folded);
        }
    }
}

/// The `stream` member: a stream handle.
fn handle(f: &Fields<'_>) -> Read<u32> {
    id_u32(f, "stream")
}

/// No stream has this handle (never opened, or closed).
fn unknown_stream() -> SdkError {
    SdkError::InvalidArgument("no such stream (closed?)".into())
}

/// `append`'s `events`: an array of `{type, data?}` (a missing `data` is `null`), refused as
/// the wasm-bindgen API refused them.
fn new_events(f: &Fields<'_>) -> Result<Vec<NewEvent>, SdkError> {
    let items = f
        .list("events", Ok)
        .map_err(|_| SdkError::InvalidArgument("events must be an array of {type, data}".into()))?;
    let mut events = Vec::with_capacity(items.len());
    for text in items {
        let read = || -> Read<NewEvent> {
            let e = Fields::of(text)?;
            Ok(NewEvent {
                r#type: e.string("type")?,
                data: e.opt_raw("data")?,
            })
        };
        events
            .push(read().map_err(|_| {
                SdkError::InvalidArgument("every event needs a string type".into())
            })?);
    }
    Ok(events)
}

/// Append one folded event to `folded` (a comma-separated list): `{version, type, data,
/// timestamp?}` (our own appends have no timestamp: it is the server's).
fn event(folded: &mut String, e: &StoredEvent, timestamp: bool) {
    if !folded.is_empty() {
        folded.push(',');
    }
    let mut o = ObjectWriter::new(folded);
    o.u64("version", e.version);
    o.str("type", &e.r#type);
    o.raw("data", e.data.get());
    if timestamp {
        o.str("timestamp", &e.timestamp);
    }
    o.end();
}

/// `["fold", h, {"version", "state"?, "events": [folded]}]`.
fn fold(out: &mut String, h: u32, version: u64, state: Option<&str>, folded: &str) {
    head(out, "fold");
    write_u64(arg(out), u64::from(h));
    let mut o = ObjectWriter::new(arg(out));
    o.u64("version", version);
    if let Some(state) = state {
        o.raw("state", state);
    }
    let events = o.key("events");
    events.push('[');
    events.push_str(folded);
    events.push(']');
    o.end();
    out.push(']');
}

/// `["streamFailed", h, error]`.
fn failed(out: &mut String, h: u32, error: &SdkError) {
    head(out, "streamFailed");
    write_u64(arg(out), u64::from(h));
    write_error(arg(out), error);
    out.push(']');
}

/// `["warn", "event <version> skipped: <why>"]`.
fn warn(out: &mut String, version: u64, error: &EventError) {
    let mut text = String::from("event ");
    write_u64(&mut text, version);
    text.push_str(" skipped: ");
    text.push_str(&error.to_string());
    head(out, "warn");
    write_str(arg(out), &text);
    out.push(']');
}
