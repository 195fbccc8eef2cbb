//! [`AggregateStream`]: an event stream folded by a Rust [`Aggregate`] — the core's
//! [`AggregateFold`], the fold the JS API's built-in aggregates use — as a watch of
//! [`Versioned<A>`].
//!
//! Loading is `read`, then a subscription to the stream's topic from the loaded version, as
//! for `client.stream(id, "order")`; which event is next is the core's decision.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};

use tidings_protocol::NewEvent;
use tidings_protocol::server::Message;

use super::{Error, Pending, request};
use crate::core::aggregates::{self, AggregateFold, Applied};
use crate::core::{Position, Reply, SdkError, SubId};
use crate::wasm::browser;
use crate::wasm::client::{self as pump, Settle, Shared, SharedRef, Sink};
use tidings_protocol::aggregate::{Aggregate, Decide, Versioned};

/// The fold and who watches it.
struct Folded<A> {
    id: String,
    fold: AggregateFold<A>,
    /// The state changed since the consumer last took it.
    changed: bool,
    waker: Option<Waker>,
    /// Loading or following ended (failed, closed, or the stream was dropped).
    done: bool,
    error: Option<Error>,
    /// The subscription following the stream, once loaded.
    sub: Option<SubId>,
}

type FoldRef<A> = Rc<RefCell<Folded<A>>>;

/// Mark a change (or the end, with `error`) and wake the consumer outside the borrow.
fn touch<A>(cell: &FoldRef<A>, end: Option<Option<Error>>) {
    let waker = {
        let mut f = cell.borrow_mut();
        match end {
            Some(error) if !f.done => {
                f.done = true;
                f.error = error;
            }
            Some(_) => {}
            None => f.changed = true,
        }
        f.waker.take()
    };
    if let Some(w) = waker {
        w.wake();
    }
}

/// Report an event this build cannot read (the version still advanced).
fn warn(applied: &Applied, version: u64) {
    if let Applied::Unreadable(e) = applied {
        web_sys::console::warn_1(&format!("tidings: event {version} skipped: {e}").into());
    }
}

/// Read stream `id`, fold it, then follow it.
pub(super) fn open<A: Aggregate + 'static>(
    shared: &SharedRef,
    id: &str,
) -> Result<AggregateStream<A>, Error> {
    let cell: FoldRef<A> = Rc::new(RefCell::new(Folded {
        id: id.to_owned(),
        fold: AggregateFold::new(),
        changed: false,
        waker: None,
        done: false,
        error: None,
        sub: None,
    }));
    let c = cell.clone();
    let settle: Settle = Box::new(move |shared, result| match result {
        Ok(Reply::Events(events)) => loaded(shared, &c, &events),
        Ok(_) => touch(&c, Some(Some(Error::UnexpectedReply("read")))),
        Err(e) => touch(&c, Some(Some(e.into()))),
    });
    let made = {
        let mut s = shared.borrow_mut();
        let made = s.core.read(browser::ctx(), id, None);
        if let Ok(req) = made {
            s.waiters.insert(req, settle);
        }
        made
    };
    pump::pump(shared);
    made?;
    Ok(AggregateStream {
        shared: Rc::downgrade(shared),
        cell,
    })
}

/// Fold the `read` reply, then subscribe from the folded version.
fn loaded<A: Aggregate + 'static>(
    shared: &SharedRef,
    cell: &FoldRef<A>,
    events: &tidings_protocol::server::Events,
) {
    let (folded, id, since) = {
        let mut f = cell.borrow_mut();
        if f.done {
            return;
        }
        let folded = f.fold.load(events);
        (folded, f.id.clone(), f.fold.resume_after())
    };
    let done = match folded {
        Ok(done) => done,
        Err(e) => return touch(cell, Some(Some(e.into()))),
    };
    for (i, applied) in &done {
        if let Some(e) = events.events.get(*i) {
            warn(applied, e.version);
        }
    }
    // Subscribe before waking the consumer: the subscribe's flush is queued first, so it
    // reaches the server before any append the application makes on seeing the state.
    let sink = Rc::new(FoldSink(cell.clone()));
    let since = Some(Position {
        offset: since,
        epoch: None,
    });
    match pump::subscribe_with(shared, &id, since, sink) {
        Ok(sub) => {
            cell.borrow_mut().sub = Some(sub);
            touch(cell, None);
        }
        Err(e) => touch(cell, Some(Some(e.into()))),
    }
}

/// The stream's subscription in the pump: live events are folded in version order.
struct FoldSink<A>(FoldRef<A>);

impl<A: Aggregate> Sink for FoldSink<A> {
    fn message(&self, message: Message) {
        let Some(version) = message.offset else {
            return;
        };
        let applied = {
            let mut f = self.0.borrow_mut();
            f.fold.apply(&aggregates::stored_event(version, &message))
        };
        warn(&applied, version);
        if applied.advanced() {
            touch(&self.0, None);
        }
    }

    fn failed(&self, error: SdkError) {
        touch(&self.0, Some(Some(error.into())));
    }
}

impl<A> Drop for FoldSink<A> {
    fn drop(&mut self) {
        touch(&self.0, Some(None));
    }
}

/// A live aggregate from [`Client::aggregate`](super::Client::aggregate): a
/// [`Stream`](futures_core::Stream) (a watch) of its [`Versioned`] state, yielding the latest
/// state after the load and after changes (intermediate states may be skipped when several
/// events arrive before the consumer looks), ending when following fails or the client
/// closes. Dropping it stops following.
pub struct AggregateStream<A> {
    shared: Weak<RefCell<Shared>>,
    cell: FoldRef<A>,
}

impl<A: Aggregate + 'static> AggregateStream<A> {
    /// The state folded so far, with its version (the default state at version 0 before the
    /// load).
    pub fn current(&self) -> Versioned<A> {
        self.cell.borrow().fold.current().clone()
    }

    /// The latest state once it changed since the last call (the first: once loaded);
    /// `None` once the stream ended.
    pub async fn next(&mut self) -> Option<Versioned<A>> {
        std::future::poll_fn(|cx| self.poll_state(cx)).await
    }

    /// Why the stream ended, if it failed (`INVALID_SNAPSHOT`, `FORBIDDEN`, ...).
    pub fn error(&self) -> Option<Error> {
        self.cell.borrow().error.clone()
    }

    fn poll_state(&self, cx: &Context<'_>) -> Poll<Option<Versioned<A>>> {
        let mut f = self.cell.borrow_mut();
        if f.changed {
            f.changed = false;
            return Poll::Ready(Some(f.fold.current().clone()));
        }
        if f.done {
            return Poll::Ready(None);
        }
        f.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Append `events` at the folded version; resolves with the stream's version after them.
    /// Once accepted they are folded here at once (unless someone else appended in between:
    /// then the live feed brings every event in order).
    ///
    /// # Errors
    /// `VERSION_CONFLICT` (with [`SdkError::current_version`]) when the stream moved on: not
    /// retried, the stream folds the newer events and the application decides again;
    /// `INVALID_ARGUMENT` for no events or one that does not encode; `CLOSED`, `TIMEOUT`, or
    /// the server's refusal.
    pub fn append(&self, events: &[A::Event]) -> Pending<u64> {
        match events
            .iter()
            .map(A::to_new_event)
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(events) => self.send(events),
            Err(e) => Pending::failed(Error::Encode(e.to_string())),
        }
    }

    fn send(&self, events: Vec<NewEvent>) -> Pending<u64> {
        let Some(shared) = self.shared.upgrade() else {
            return Pending::failed(SdkError::Closed.into());
        };
        let (id, version) = {
            let f = self.cell.borrow();
            (f.id.clone(), f.fold.version())
        };
        let cell = self.cell.clone();
        let sent = events.clone();
        request(
            &shared,
            |core, ctx| core.append(ctx, &id, Some(version), events),
            move |_, reply| match reply {
                Reply::Appended { version, .. } => {
                    let versions = cell.borrow().fold.appended(sent.len() as u64, version);
                    if let Some(versions) = versions {
                        let mut advanced = false;
                        for (v, e) in versions.zip(&sent) {
                            let stored = aggregates::appended_event(v, e);
                            advanced |= cell.borrow_mut().fold.apply(&stored).advanced();
                        }
                        if advanced {
                            touch(&cell, None);
                        }
                    }
                    Ok(version)
                }
                _ => Err(Error::UnexpectedReply("append")),
            },
        )
    }
}

impl<A: Decide + 'static> AggregateStream<A> {
    /// Decide `command` on the current state with `A`'s own rules, then append the events it
    /// decided at the folded version; resolves with the stream's version after them.
    ///
    /// # Errors
    /// The aggregate's refusal ([`SdkError::Aggregate`], e.g. code `INVALID_STATE`), decided
    /// here: nothing is sent. Otherwise as [`AggregateStream::append`].
    pub fn execute(&self, command: &A::Command) -> Pending<u64> {
        let decided = self.cell.borrow().fold.decide_command(command);
        match decided {
            Ok(events) => self.send(events),
            Err(e) => Pending::failed(e.into()),
        }
    }
}

impl<A: Aggregate + 'static> futures_core::Stream for AggregateStream<A> {
    type Item = Versioned<A>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Versioned<A>>> {
        self.poll_state(cx)
    }
}

impl<A> Drop for AggregateStream<A> {
    fn drop(&mut self) {
        let sub = {
            let mut f = self.cell.borrow_mut();
            f.done = true;
            f.sub.take()
        };
        if let (Some(sub), Some(shared)) = (sub, self.shared.upgrade()) {
            let handler = shared.borrow_mut().handlers.remove(&sub);
            drop(handler);
            pump::run(&shared, |core, ctx| core.unsubscribe(ctx, sub));
        }
    }
}
