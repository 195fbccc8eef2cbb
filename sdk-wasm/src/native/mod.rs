//! The Rust API: the same client as `TidingsClient`, for Rust web frontends (Leptos, Yew,
//! Dioxus, plain `wasm-bindgen`) compiled to `wasm32-unknown-unknown`.
//!
//! [`Client`] drives the same sans-IO [`core`](crate::core) as the JS API, through a web-sys
//! pump of its own (`crate::wasm`: one WebSocket, one timer, the `online`/`visibilitychange`
//! listeners), so reconnects, replay after a reconnect, dedup, the publish outbox and request
//! timeouts behave exactly as they do for JavaScript. What differs is only the surface: futures instead of promises,
//! [`Stream`](futures_core::Stream)s instead of callbacks, typed values instead of JS objects.
//!
//! ```ignore
//! use tidings_sdk::native::{Client, Options};
//! use tidings_protocol::order::{Order, OrderCommand};
//!
//! let client = Client::connect(Options::new("wss://example.com/ws").token(token))?;
//! let mut chat = client.subscribe("chat")?;
//! client.publish("chat", &serde_json::json!({"text": "hi"})).await?;
//! while let Some(message) = chat.next().await {
//!     log(message.data.get());
//! }
//! let mut order = client.aggregate::<Order>("order-17")?;
//! order.execute(&OrderCommand::Confirm {}).await?;
//! let latest = order.next().await; // Some(Versioned { version, state })
//! ```
//!
//! Everything here is single-threaded (`Rc`, not `Send`), as the browser is: spawn with
//! `wasm_bindgen_futures::spawn_local`. The architecture invariant of the crate holds: no rule
//! lives here; this module only turns the core's replies into typed values and wakes tasks.

mod aggregate;
mod cell;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll};

use serde::Serialize;
use tidings_protocol::server::{HistoryPage, Message};

use crate::core::{
    Config, ConnectionState, Core, Ctx, Position, Reply, RequestId, SdkError, SubId,
};
use crate::wasm::browser;
use crate::wasm::client::{self as pump, Shared, SharedRef, Sink};

pub use aggregate::AggregateStream;
pub use cell::Pending;
pub use tidings_protocol::aggregate::{Aggregate, Decide, Versioned};

/// Why a call of the Rust API failed.
///
/// Exists so callers can match on the kind of failure; [`Error::code`] gives the same
/// stable code the JS API puts on its errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The SDK or the server refused or failed the call: a server code (`FORBIDDEN`,
    /// `VERSION_CONFLICT`, ...), a timeout, a closed client, a full outbox, an aggregate's
    /// refusal of a command.
    #[error(transparent)]
    Sdk(#[from] SdkError),
    /// The value to publish could not be encoded as JSON.
    #[error("cannot encode the data as JSON: {0}")]
    Encode(String),
    /// The server answered a request with a reply of another kind (a server bug).
    #[error("unexpected reply to {0}")]
    UnexpectedReply(&'static str),
}

impl Error {
    /// The stable code, e.g. `"TIMEOUT"`, `"VERSION_CONFLICT"` or an aggregate's
    /// `"INVALID_STATE"`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Sdk(e) => e.code(),
            Error::Encode(_) => "INVALID_ARGUMENT",
            Error::UnexpectedReply(_) => "UNEXPECTED_REPLY",
        }
    }
}

/// How to connect: the server's URL(s), the token and the main tunables of [`Config`].
///
/// Exists as a builder so new settings never break callers.
#[derive(Debug, Clone)]
pub struct Options {
    config: Config,
}

impl Options {
    /// Connect to `url` (`wss://host/ws`) with the defaults of [`Config::new`].
    pub fn new(url: impl Into<String>) -> Self {
        Options {
            config: Config::new(vec![url.into()], pump::instance_id()),
        }
    }

    /// Another endpoint (a node of the same cluster), tried in turn after failed attempts.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.config.urls.push(url.into());
        self
    }

    /// The token sent when connecting (a JWT signed with the server's secret).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.config.token = Some(token.into());
        self
    }

    /// Reconnect delays: the first ceiling and the largest (ms).
    pub fn reconnect_delays(mut self, min_ms: u64, max_ms: u64) -> Self {
        self.config.min_delay_ms = min_ms;
        self.config.max_delay_ms = max_ms.max(min_ms);
        self
    }

    /// Fail a request that has no reply this long after it was sent (ms).
    pub fn request_timeout(mut self, ms: u64) -> Self {
        self.config.request_timeout_ms = ms;
        self
    }

    /// Give up on a connection attempt (token, socket, `connected`) after this long (ms).
    pub fn connect_timeout(mut self, ms: u64) -> Self {
        self.config.connect_timeout_ms = ms;
        self
    }

    /// Most publishes waiting for an acknowledgement; beyond it `publish` fails with
    /// `OUTBOX_FULL`.
    pub fn outbox_capacity(mut self, publishes: usize) -> Self {
        self.config.outbox_capacity = publishes;
        self
    }
}

/// A publish the server acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The topic.
    pub topic: String,
    /// The message's offset (durable topics only).
    pub offset: Option<u64>,
    /// The topic's epoch (durable topics only).
    pub epoch: Option<String>,
}

/// Closes the connection when the last [`Client`] clone goes away.
struct Owner {
    shared: SharedRef,
}

impl Drop for Owner {
    fn drop(&mut self) {
        pump::shutdown(&self.shared);
    }
}

/// A Tidings connection for Rust code in the browser: subscribe, publish, history and
/// aggregate streams, with reconnects, replay and an offline queue handled by the SDK's core.
///
/// Cheap to clone (all clones are one connection); the connection closes with [`Client::close`]
/// or when the last clone is dropped. Streams and requests made from it then end: streams
/// return `None`, pending requests fail with code `CLOSED`.
#[derive(Clone)]
pub struct Client {
    owner: Rc<Owner>,
}

impl Client {
    /// Start connecting with `options`; connecting begins once the current task yields, and
    /// reconnects are automatic. Calls made before the connection is up are queued.
    ///
    /// # Errors
    /// [`SdkError::InvalidArgument`] (code `INVALID_ARGUMENT`) when no URL is usable.
    pub fn connect(options: Options) -> Result<Client, Error> {
        let shared = pump::start(options.config)?;
        Ok(Client {
            owner: Rc::new(Owner { shared }),
        })
    }

    fn shared(&self) -> &SharedRef {
        &self.owner.shared
    }

    /// The connection state now.
    pub fn state(&self) -> ConnectionState {
        self.shared().borrow().core.state()
    }

    /// Every topic's last delivered position: pass one to [`Client::subscribe_since`] (after a
    /// page reload, say) to replay what was missed.
    pub fn positions(&self) -> BTreeMap<String, Position> {
        self.shared()
            .borrow()
            .core
            .positions()
            .into_iter()
            .collect()
    }

    /// The messages of `topic` from now on, in offset order, each once: after a reconnect the
    /// SDK replays what was missed and drops what was already delivered.
    ///
    /// Dropping the [`Subscription`] unsubscribes (the topic is unsubscribed on the server
    /// when no other subscriber of this client listens to it).
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` for an empty topic, `CLOSED` after [`Client::close`]. A refusal by
    /// the server (`FORBIDDEN`, `INVALID_TOPIC`) ends the stream; see
    /// [`Subscription::error`].
    pub fn subscribe(&self, topic: &str) -> Result<Subscription, Error> {
        self.subscribe_at(topic, None)
    }

    /// Like [`Client::subscribe`], resuming after `since`: the messages stored after it are
    /// replayed first (when the topic is new to this client).
    ///
    /// # Errors
    /// As [`Client::subscribe`].
    pub fn subscribe_since(&self, topic: &str, since: Position) -> Result<Subscription, Error> {
        self.subscribe_at(topic, Some(since))
    }

    fn subscribe_at(&self, topic: &str, since: Option<Position>) -> Result<Subscription, Error> {
        let queue = cell::queue();
        let sink = Rc::new(QueueSink(queue.clone()));
        let id = pump::subscribe_with(self.shared(), topic, since, sink)?;
        Ok(Subscription {
            shared: Rc::downgrade(self.shared()),
            id,
            topic: topic.to_owned(),
            queue,
        })
    }

    /// Publish `data` (anything serde serializes to JSON) to `topic`. Resolves once the server
    /// acknowledged it; while offline it waits in the outbox and is sent after reconnecting
    /// (retries carry the same id, so it is published once). The publish is made when this
    /// method returns: publishes reach the server in call order.
    ///
    /// # Errors
    /// [`Error::Encode`] when `data` does not serialize; `OUTBOX_FULL`, `MESSAGE_TOO_LARGE`,
    /// `CLOSED`, `TIMEOUT`, or the server's refusal (`FORBIDDEN`, `RATE_LIMITED`, ...).
    pub fn publish<T: Serialize + ?Sized>(&self, topic: &str, data: &T) -> Pending<Ack> {
        let raw = match tidings_protocol::Json::to_json(data) {
            Ok(raw) => raw,
            Err(e) => return Pending::failed(Error::Encode(e.to_string())),
        };
        request(
            self.shared(),
            |core, ctx| core.publish(ctx, topic, raw),
            |_, reply| match reply {
                Reply::Published {
                    topic,
                    offset,
                    epoch,
                } => Ok(Ack {
                    topic,
                    offset,
                    epoch,
                }),
                _ => Err(Error::UnexpectedReply("publish")),
            },
        )
    }

    /// Stored messages of durable topic `topic` after offset `since` (from the first stored
    /// one when `None`), at most `limit` (the server's limit when `None`). `more` in the page
    /// says later messages exist: ask again from the last offset.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT`, `CLOSED`, `TIMEOUT`, or the server's refusal (`FORBIDDEN`,
    /// `NOT_DURABLE` for an ephemeral topic, ...).
    pub fn history(
        &self,
        topic: &str,
        since: Option<u64>,
        limit: Option<u32>,
    ) -> Pending<HistoryPage> {
        request(
            self.shared(),
            |core, ctx| core.history(ctx, topic, since, limit),
            |_, reply| match reply {
                Reply::History(page) => Ok(page),
                _ => Err(Error::UnexpectedReply("history")),
            },
        )
    }

    /// Load event stream `id` (snapshot, then the events after it) folded by aggregate `A` —
    /// the server's own fold — then follow it live. The returned stream yields the state with
    /// its version after the load and after every change; with `A: Decide` it also executes
    /// commands.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` for an empty id, `CLOSED` after [`Client::close`]. Failures while
    /// loading or following (`INVALID_SNAPSHOT`, `FORBIDDEN`) end the stream; see
    /// [`AggregateStream::error`].
    pub fn aggregate<A: Aggregate + 'static>(&self, id: &str) -> Result<AggregateStream<A>, Error> {
        aggregate::open(self.shared(), id)
    }

    /// Close the connection for good (every clone): pending requests fail with `CLOSED` and
    /// every stream ends.
    pub fn close(&self) {
        pump::shutdown(self.shared());
    }
}

/// Make a request through the core and settle the returned future with `convert`ed reply.
fn request<T: 'static>(
    shared: &SharedRef,
    make: impl FnOnce(&mut Core, Ctx) -> Result<RequestId, SdkError>,
    convert: impl FnOnce(&SharedRef, Reply) -> Result<T, Error> + 'static,
) -> Pending<T> {
    let (pending, resolver) = cell::pending();
    let made = {
        let mut s = shared.borrow_mut();
        let made = make(&mut s.core, browser::ctx());
        if let Ok(id) = made {
            s.waiters.insert(
                id,
                Box::new(move |shared: &SharedRef, result: Result<Reply, SdkError>| {
                    resolver.settle(result.map_err(Error::from).and_then(|r| convert(shared, r)));
                }),
            );
        }
        made
    };
    pump::pump(shared);
    match made {
        Ok(_) => pending,
        Err(e) => Pending::failed(e.into()),
    }
}

/// A subscription's end in the pump: messages go to the queue; a refusal or the client's
/// close (which drops the handler) ends it.
struct QueueSink(cell::QueueRef<Message>);

impl Sink for QueueSink {
    fn message(&self, message: Message) {
        cell::push(&self.0, message);
    }

    fn failed(&self, error: SdkError) {
        cell::finish(&self.0, Some(error.into()));
    }
}

impl Drop for QueueSink {
    fn drop(&mut self) {
        cell::finish(&self.0, None);
    }
}

/// The messages of one topic, from [`Client::subscribe`]: a [`Stream`](futures_core::Stream)
/// of [`Message`] (decode `message.data.get()` with serde). Ends when the server refuses the
/// subscription or the client closes. Dropping it unsubscribes.
pub struct Subscription {
    shared: Weak<std::cell::RefCell<Shared>>,
    id: SubId,
    topic: String,
    queue: cell::QueueRef<Message>,
}

impl Subscription {
    /// The subscribed topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The next message; `None` once the subscription ended.
    pub async fn next(&mut self) -> Option<Message> {
        std::future::poll_fn(|cx| cell::poll_pop(&self.queue, cx)).await
    }

    /// Why the stream ended, if the server refused the subscription (e.g. code `FORBIDDEN`).
    pub fn error(&self) -> Option<Error> {
        cell::error(&self.queue)
    }
}

impl futures_core::Stream for Subscription {
    type Item = Message;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        cell::poll_pop(&self.queue, cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            let handler = shared.borrow_mut().handlers.remove(&self.id);
            drop(handler);
            pump::run(&shared, |core, ctx| core.unsubscribe(ctx, self.id));
        }
    }
}
