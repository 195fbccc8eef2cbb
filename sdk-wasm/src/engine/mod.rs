//! The JS API's engine: the sans-IO [`Core`] behind a boundary of JSON text and numbers.
//!
//! The JS API (`TidingsClient`, `Subscription`, `EventStream`) is hand-written JavaScript that
//! owns the WebSocket, the one timer, listeners, promises and callbacks; every decision stays
//! in the core. The JS reaches it through [`Engine`] (exported to JS by `crate::js`), whose
//! methods take and return strings and numbers only: no js-sys, web-sys or closures, which is
//! what keeps the wasm small. The boundary (input kinds, call ops, action arrays) is specified
//! in full in docs/sdk.md ("The wasm boundary"); in short:
//!
//! * [`Engine::handle`] feeds one [`Input`] and returns the actions it caused:
//!   `[action, ...]`;
//! * [`Engine::call`] runs one application call given as JSON (`{"op": "publish", ...}`) and
//!   returns `[result, action, ...]`, `result` being `{"ok": value}` or `{"err": error}`;
//! * each action is a JSON array naming what the JS must do (`["send", socket, frame]`,
//!   `["resolve", request, reply]`, ...), written by one function, `write_action`.
//!
//! Event streams (cargo feature `streams`) are folded here too (`streams`): their loads,
//! live events and our own appends become `["fold", handle, ...]` actions.
//!
//! JSON is read with [`Fields`] and written with [`ObjectWriter`] (never serde: this is the
//! browser bundle), and every number read is range-checked.

#[cfg(feature = "streams")]
mod streams;
#[cfg(test)]
mod tests;

use tidings_protocol::json::{self, Fields, Invalid, ObjectWriter, Read, write_str, write_u64};

use crate::core::wire::{self, ToJson};
use crate::core::{Action, Change, Config, Core, Ctx, Input, Reply, SdkError};
use crate::core::{RequestId, SocketId, SubId};

/// The core with its stream folds, driven by JSON text: what the JS API's wasm exports.
///
/// Exists so the whole boundary is plain Rust, unit tested on the host; `crate::js` only
/// forwards to it.
#[derive(Debug)]
pub struct Engine {
    core: Core,
    /// Event streams folded for the JS (handles, their requests and subscriptions).
    #[cfg(feature = "streams")]
    streams: streams::Streams,
}

impl Engine {
    /// An engine that has not started (feed input kind 0, `Start`, once the JS is ready).
    ///
    /// `config`: `{"urls": [..], "token": s|null, "tokenProvider": b, "instanceId": s}` and
    /// optionally `minDelayMs`, `maxDelayMs`, `connectTimeoutMs`, `requestTimeoutMs`,
    /// `outboxCapacity` (defaults: [`Config::new`]).
    ///
    /// # Errors
    /// The error JSON (`{"code", "message"}`): `INVALID_ARGUMENT` for a config of the wrong
    /// shape, or whatever [`Core::new`] refuses (no URL).
    pub fn new(config: &str) -> Result<Engine, String> {
        let config = read_config(config).map_err(|_| error_json(&malformed("config")))?;
        match Core::new(config) {
            Ok(core) => Ok(Engine {
                core,
                #[cfg(feature = "streams")]
                streams: streams::Streams::default(),
            }),
            Err(e) => Err(error_json(&e)),
        }
    }

    /// Feed one input; returns the actions JSON array.
    ///
    /// `kind`: 0 Start, 1 Token(Ok(text)), 2 Token(Err(text)), 3 SocketOpened(socket),
    /// 4 SocketClosed{socket, code, reason: text}, 5 Frame{socket, text}, 6 TimerFired,
    /// 7 Online, 8 Offline, 9 Visible, 10 Flush; any other kind is ignored (`[]`). `socket`,
    /// `code` and `text` are only read by the kinds that have them. `now` (monotonic ms),
    /// `unix_ms` and `random` are the clock and dice ([`Ctx`]).
    #[allow(clippy::too_many_arguments)] // the boundary's fixed signature: numbers, one string
    pub fn handle(
        &mut self,
        now: f64,
        unix_ms: f64,
        random: f64,
        kind: u32,
        socket: f64,
        code: u32,
        text: String,
    ) -> String {
        let ctx = ctx(now, unix_ms, random);
        let socket = SocketId(socket as u64);
        let input = match kind {
            0 => Input::Start,
            1 => Input::Token(Ok(text)),
            2 => Input::Token(Err(text)),
            3 => Input::SocketOpened(socket),
            4 => Input::SocketClosed {
                socket,
                // Close codes are u16; anything else reads as an abnormal closure.
                code: u16::try_from(code).unwrap_or(1006),
                reason: text,
            },
            5 => Input::Frame { socket, text },
            6 => Input::TimerFired,
            7 => Input::Online,
            8 => Input::Offline,
            9 => Input::Visible,
            10 => Input::Flush,
            _ => return "[]".to_owned(),
        };
        self.core.handle(ctx, input);
        let mut out = String::from("[");
        self.drain(ctx, &mut out);
        out
    }

    /// Run one application call, `op` a JSON object (`{"op": "subscribe", ...}`); returns
    /// `[result, action, ...]`: `result` is `{"ok": value}` or `{"err": error}` (a malformed
    /// `op` is `INVALID_ARGUMENT`), then every action the call queued, in order.
    pub fn call(&mut self, now: f64, unix_ms: f64, random: f64, op: &str) -> String {
        let ctx = ctx(now, unix_ms, random);
        let result = Fields::of(op)
            .and_then(|f| self.op(ctx, &f))
            .unwrap_or_else(|Invalid| Err(malformed("call")));
        let mut out = String::from("[");
        match result {
            Ok(value) => {
                out.push_str("{\"ok\":");
                out.push_str(&value);
            }
            Err(e) => {
                out.push_str("{\"err\":");
                write_error(&mut out, &e);
            }
        }
        out.push('}');
        self.drain(ctx, &mut out);
        out
    }

    /// The connection state's name: `connecting`, `connected`, `reconnecting` or `closed`
    /// (the bare name, not JSON).
    pub fn state(&self) -> String {
        self.core.state().as_str().to_owned()
    }

    /// The members of `sub`'s presence topic as a JSON array of `{client_id, user, info}`, or
    /// `null` when it does not watch presence or the first read is not answered yet.
    pub fn members(&self, sub: u32) -> String {
        match self.core.members(SubId(sub)) {
            Some(members) => members.to_json(),
            None => "null".to_owned(),
        }
    }

    /// Every topic's last delivered position, `{topic: {offset, epoch?}}` (what the JS saves
    /// in sessionStorage for `persistOffsets`).
    pub fn positions(&self) -> String {
        wire::positions_to_json(&self.core.positions())
    }

    /// One call, read from `f`. `Err`: the call is malformed; `Ok(Err)`: the core (or a fold)
    /// refused it; `Ok(Ok(value))`: the result's JSON text.
    fn op(&mut self, ctx: Ctx, f: &Fields<'_>) -> Read<Result<String, SdkError>> {
        let core = &mut self.core;
        Ok(match f.string("op")?.as_str() {
            "subscribe" => {
                let topic = f.string("topic")?;
                let since = f.opt("since")?.map(wire::position).transpose()?;
                core.subscribe(ctx, &topic, since)
                    .map(|sub| number(u64::from(sub.0)))
            }
            "unsubscribe" => {
                core.unsubscribe(ctx, sub_id(f)?);
                Ok(null())
            }
            "watch" => {
                core.watch_presence(ctx, sub_id(f)?);
                Ok(null())
            }
            "publish" => {
                let topic = f.string("topic")?;
                match f.get("data")? {
                    Some(data) => core.publish(ctx, &topic, json::raw(data)?).map(request),
                    // JSON.stringify leaves `undefined` (and functions) out.
                    None => Err(SdkError::InvalidArgument(
                        "data must be JSON-serializable".into(),
                    )),
                }
            }
            "history" => {
                let topic = f.string("topic")?;
                let since = f.opt_u64("since")?;
                let limit = match f.opt_u64("limit")? {
                    Some(n) => Some(u32::try_from(n).map_err(|_| Invalid)?),
                    None => None,
                };
                core.history(ctx, &topic, since, limit).map(request)
            }
            "presence" => core.presence(ctx, &f.string("topic")?).map(request),
            "presenceStats" => core.presence_stats(ctx, &f.string("topic")?).map(request),
            "close" => {
                core.close();
                Ok(null())
            }
            #[cfg(feature = "streams")]
            name => return self.streams.op(&mut self.core, ctx, name, f),
            #[cfg(not(feature = "streams"))]
            "stream" => Err(SdkError::InvalidArgument(
                "event streams are not in this build: import them from \"tidings/streams\" \
                 (reducers) or \"tidings/aggregates\" (reducers and built-in aggregates)"
                    .into(),
            )),
            #[cfg(not(feature = "streams"))]
            _ => return Err(Invalid),
        })
    }

    /// Write every action the core queued (the streams' own turned into fold actions), then
    /// close the array `out`.
    fn drain(&mut self, ctx: Ctx, out: &mut String) {
        #[cfg(not(feature = "streams"))]
        let _ = ctx;
        while let Some(action) = self.core.poll_action() {
            #[cfg(feature = "streams")]
            let Some(action) = self.streams.take(&mut self.core, ctx, action, out) else {
                continue;
            };
            write_action(out, &action);
        }
        out.push(']');
    }
}

/// The clock and dice as the core takes them: negative or NaN times read as 0, a random
/// number outside `[0, 1)` as 0.
fn ctx(now: f64, unix_ms: f64, random: f64) -> Ctx {
    Ctx {
        now: now as u64,
        unix_ms: unix_ms as u64,
        random: if (0.0..1.0).contains(&random) {
            random
        } else {
            0.0
        },
    }
}

/// The constructor's config JSON as a [`Config`].
fn read_config(text: &str) -> Read<Config> {
    let f = Fields::of(text)?;
    let mut c = Config::new(f.list("urls", json::string)?, f.string("instanceId")?);
    c.token = f.opt_string("token")?;
    c.token_provider = f.flag("tokenProvider")?;
    for (key, slot) in [
        ("minDelayMs", &mut c.min_delay_ms),
        ("maxDelayMs", &mut c.max_delay_ms),
        ("connectTimeoutMs", &mut c.connect_timeout_ms),
        ("requestTimeoutMs", &mut c.request_timeout_ms),
    ] {
        if let Some(v) = f.opt_u64(key)? {
            *slot = v;
        }
    }
    if let Some(v) = f.opt_u64("outboxCapacity")? {
        c.outbox_capacity = usize::try_from(v).map_err(|_| Invalid)?;
    }
    Ok(c)
}

/// A `u32` member `key` (a subscription id or a stream handle).
fn id_u32(f: &Fields<'_>, key: &str) -> Read<u32> {
    u32::try_from(f.u64(key)?).map_err(|_| Invalid)
}

/// The `sub` member as a subscriber.
fn sub_id(f: &Fields<'_>) -> Read<SubId> {
    id_u32(f, "sub").map(SubId)
}

/// The call or config could not be read.
fn malformed(what: &str) -> SdkError {
    let mut m = String::from("malformed ");
    m.push_str(what);
    SdkError::InvalidArgument(m)
}

/// A number as a result value.
fn number(n: u64) -> String {
    let mut out = String::new();
    write_u64(&mut out, n);
    out
}

/// A request id as a result value.
fn request(id: RequestId) -> String {
    number(id.0)
}

/// `null` as a result value.
fn null() -> String {
    "null".to_owned()
}

/// `true` or `false`.
fn boolean(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// The error JSON: `{"code", "message", "currentVersion"?}`.
fn write_error(out: &mut String, e: &SdkError) {
    let mut o = ObjectWriter::new(out);
    o.str("code", e.code());
    o.str("message", &e.to_string());
    o.opt_u64("currentVersion", e.current_version());
    o.end();
}

/// The error JSON as a string (the constructor's error).
fn error_json(e: &SdkError) -> String {
    let mut out = String::new();
    write_error(&mut out, e);
    out
}

/// Open action `name` in the array `out`: a comma unless it is the array's first item, `[`
/// and the name. The caller adds the arguments ([`arg`]) and the closing `]`.
fn head(out: &mut String, name: &str) {
    if out.len() > 1 {
        out.push(',');
    }
    out.push('[');
    write_str(out, name);
}

/// The next argument of an action: a comma, then the caller writes the value to the result.
fn arg(out: &mut String) -> &mut String {
    out.push(',');
    out
}

/// One of the core's actions as its JSON array (the only place they are written).
fn write_action(out: &mut String, action: &Action) {
    match action {
        Action::OpenSocket { socket, url } => {
            head(out, "open");
            write_u64(arg(out), socket.0);
            write_str(arg(out), url);
        }
        Action::CloseSocket {
            socket,
            code,
            reason,
        } => {
            head(out, "close");
            write_u64(arg(out), socket.0);
            write_u64(arg(out), u64::from(*code));
            write_str(arg(out), reason);
        }
        Action::Send { socket, frame } => {
            head(out, "send");
            write_u64(arg(out), socket.0);
            write_str(arg(out), frame);
        }
        Action::ArmTimer { at } => {
            head(out, "timer");
            write_u64(arg(out), *at);
        }
        Action::CancelTimer => head(out, "cancel"),
        Action::ScheduleFlush => head(out, "flush"),
        Action::FetchToken => head(out, "token"),
        Action::StateChanged(state) => {
            head(out, "state");
            write_str(arg(out), state.as_str());
        }
        Action::Deliver { sub, message } => {
            head(out, "deliver");
            write_u64(arg(out), u64::from(sub.0));
            message.write_json(arg(out));
        }
        Action::Recovery {
            sub,
            topic,
            recovered,
        } => {
            head(out, "recovery");
            write_u64(arg(out), u64::from(sub.0));
            let mut o = ObjectWriter::new(arg(out));
            o.str("topic", topic);
            o.raw("recovered", boolean(*recovered));
            o.end();
        }
        Action::SubscriptionFailed { sub, error } | Action::PresenceFailed { sub, error } => {
            let name = match action {
                Action::SubscriptionFailed { .. } => "subFailed",
                _ => "presenceFailed",
            };
            head(out, name);
            write_u64(arg(out), u64::from(sub.0));
            write_error(arg(out), error);
        }
        Action::MemberChanged { sub, change, event } => {
            head(
                out,
                match change {
                    Change::Join => "join",
                    Change::Leave => "leave",
                },
            );
            write_u64(arg(out), u64::from(sub.0));
            event.write_json(arg(out));
        }
        Action::Resolve { request, reply } => {
            head(out, "resolve");
            write_u64(arg(out), request.0);
            write_reply(arg(out), reply);
        }
        Action::Reject { request, error } => {
            head(out, "reject");
            write_u64(arg(out), request.0);
            write_error(arg(out), error);
        }
        Action::Error(error) => {
            head(out, "error");
            write_error(arg(out), error);
        }
    }
    out.push(']');
}

/// A reply as the value its promise resolves with (the shapes the wasm-bindgen API had).
fn write_reply(out: &mut String, reply: &Reply) {
    if let Reply::Events(events) = reply {
        return events.write_json(out);
    }
    let mut o = ObjectWriter::new(out);
    match reply {
        Reply::Published {
            topic,
            offset,
            epoch,
        } => {
            o.str("topic", topic);
            match offset {
                Some(n) => o.u64("offset", *n),
                None => o.raw("offset", "null"),
            }
            match epoch {
                Some(e) => o.str("epoch", e),
                None => o.raw("epoch", "null"),
            }
        }
        Reply::History(page) => {
            o.str("topic", &page.topic);
            o.str("epoch", &page.epoch);
            page.messages.write_json(o.key("messages"));
            o.u64("latest", page.latest);
            o.raw("more", boolean(page.more));
        }
        Reply::Appended { stream, version } => {
            o.str("stream", stream);
            o.u64("version", *version);
        }
        Reply::Presence(p) => {
            o.str("topic", &p.topic);
            p.members.write_json(o.key("members"));
            o.raw("more", boolean(p.more));
        }
        Reply::PresenceStats(p) => {
            o.str("topic", &p.topic);
            o.u64("clients", p.clients);
            o.u64("users", p.users);
        }
        Reply::Events(_) => {}
    }
    o.end();
}
