//! The two single-threaded hand-offs between the pump and the application's futures: a
//! one-shot slot (a request's outcome) and a queue (a subscription's messages). The pump fills
//! them and wakes the task; nothing here blocks or spawns.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::Error;

/// A request's outcome, filled once by the pump.
struct Slot<T> {
    value: Option<Result<T, Error>>,
    waker: Option<Waker>,
}

/// A request of the [`Client`](super::Client): resolves with its reply (or why not) once the
/// server answered, the request timed out or the client closed.
///
/// The request is made (or queued while offline) when the method returns, whether or not
/// this future is polled; dropping it only ignores the outcome.
#[must_use = "the request is sent anyway; await it to learn the outcome"]
pub struct Pending<T> {
    slot: Rc<RefCell<Slot<T>>>,
}

/// The pump's end of a [`Pending`].
pub(crate) struct Resolver<T> {
    slot: Rc<RefCell<Slot<T>>>,
}

/// A pending request and the end that settles it.
pub(crate) fn pending<T>() -> (Pending<T>, Resolver<T>) {
    let slot = Rc::new(RefCell::new(Slot {
        value: None,
        waker: None,
    }));
    (Pending { slot: slot.clone() }, Resolver { slot })
}

impl<T> Pending<T> {
    /// A request that failed before anything was sent.
    pub(crate) fn failed(error: Error) -> Self {
        let (p, r) = pending();
        r.settle(Err(error));
        p
    }
}

impl<T> Resolver<T> {
    /// Settle the request and wake whoever awaits it.
    pub(crate) fn settle(self, value: Result<T, Error>) {
        let waker = {
            let mut s = self.slot.borrow_mut();
            s.value = Some(value);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Future for Pending<T> {
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.slot.borrow_mut();
        match s.value.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Items for one consumer, and whether (and why) no more will come.
pub(crate) struct Queue<T> {
    items: VecDeque<T>,
    waker: Option<Waker>,
    done: bool,
    error: Option<Error>,
}

/// A queue shared by the pump (which pushes) and a stream (which pops).
pub(crate) type QueueRef<T> = Rc<RefCell<Queue<T>>>;

/// An empty, open queue.
pub(crate) fn queue<T>() -> QueueRef<T> {
    Rc::new(RefCell::new(Queue {
        items: VecDeque::new(),
        waker: None,
        done: false,
        error: None,
    }))
}

/// Wake `waker` (taken out of a borrow, so the wake never runs inside one).
fn wake(waker: Option<Waker>) {
    if let Some(w) = waker {
        w.wake();
    }
}

/// Push `item` and wake the consumer.
pub(crate) fn push<T>(q: &QueueRef<T>, item: T) {
    let waker = {
        let mut s = q.borrow_mut();
        if s.done {
            return;
        }
        s.items.push_back(item);
        s.waker.take()
    };
    wake(waker);
}

/// No more items will come (`error`: why, if it is a failure); what is queued is still read.
pub(crate) fn finish<T>(q: &QueueRef<T>, error: Option<Error>) {
    let waker = {
        let mut s = q.borrow_mut();
        if !s.done {
            s.done = true;
            s.error = error;
        }
        s.waker.take()
    };
    wake(waker);
}

/// The next item, `None` once finished and drained, or pending (the waker is kept).
pub(crate) fn poll_pop<T>(q: &QueueRef<T>, cx: &Context<'_>) -> Poll<Option<T>> {
    let mut s = q.borrow_mut();
    if let Some(item) = s.items.pop_front() {
        return Poll::Ready(Some(item));
    }
    if s.done {
        return Poll::Ready(None);
    }
    s.waker = Some(cx.waker().clone());
    Poll::Pending
}

/// Why the queue finished, if it failed.
pub(crate) fn error<T>(q: &QueueRef<T>) -> Option<Error> {
    q.borrow().error.clone()
}
