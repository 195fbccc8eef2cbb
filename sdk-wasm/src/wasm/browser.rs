//! Browser resources with drop = cancel: a WebSocket with its handlers, the one timer, event
//! listeners, and the clock/dice/storage the core needs as inputs.
//!
//! Every closure handed to the browser captures only a `Weak` reference to the client, and is
//! owned by a value here whose `Drop` unhooks it, so a closed or freed client leaves no timers,
//! listeners or sockets behind.

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{CloseEvent, Event, EventTarget, MessageEvent, WebSocket};

use crate::core::{Ctx, SocketId};

/// The inputs the core needs with every call: monotonic time, wall time, a random number.
pub fn ctx() -> Ctx {
    let unix_ms = js_sys::Date::now();
    let now = web_sys::window()
        .and_then(|w| w.performance())
        .map_or(unix_ms, |p| p.now());
    Ctx {
        now: now.max(0.0) as u64,
        unix_ms: unix_ms.max(0.0) as u64,
        random: js_sys::Math::random(),
    }
}

/// An open (or opening) WebSocket and the closures that report its events.
///
/// Exists so a socket is closed and unhooked whenever it is replaced or the client goes away.
pub struct Socket {
    /// Which socket this is, for the core.
    pub id: SocketId,
    ws: WebSocket,
    _on_open: Closure<dyn FnMut(Event)>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
}

/// What a socket reports.
pub enum SocketEvent {
    /// `open`.
    Opened,
    /// A text frame.
    Text(String),
    /// `close` with its code and reason.
    Closed(u16, String),
}

impl Socket {
    /// Open a socket to `url`, reporting its events to `report`.
    pub fn open(
        id: SocketId,
        url: &str,
        report: impl Fn(SocketId, SocketEvent) + Clone + 'static,
    ) -> Result<Socket, JsValue> {
        let ws = WebSocket::new(url)?;
        let r = report.clone();
        let on_open = Closure::<dyn FnMut(Event)>::new(move |_| r(id, SocketEvent::Opened));
        let r = report.clone();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
            // Binary frames are not part of the protocol; ignore them.
            if let Some(text) = e.data().as_string() {
                r(id, SocketEvent::Text(text));
            }
        });
        let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |e: CloseEvent| {
            report(id, SocketEvent::Closed(e.code(), e.reason()));
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        Ok(Socket {
            id,
            ws,
            _on_open: on_open,
            _on_message: on_message,
            _on_close: on_close,
        })
    }

    /// Send a text frame; a socket that is not open drops it (the core resends what matters).
    pub fn send(&self, frame: &str) {
        let _ = self.ws.send_with_str(frame);
    }

    /// Close with a code and reason (then drop it).
    pub fn close(&self, code: u16, reason: &str) {
        let _ = self.ws.close_with_code_and_reason(code, reason);
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        let _ = self.ws.close();
    }
}

/// The client's single timer.
///
/// Exists so re-arming always cancels the previous `setTimeout` and dropping cancels it.
pub struct Timer {
    handle: i32,
    _callback: Closure<dyn FnMut()>,
}

impl Timer {
    /// Call `fire` after `delay_ms`.
    pub fn arm(delay_ms: u64, fire: impl FnMut() + 'static) -> Option<Timer> {
        let window = web_sys::window()?;
        let callback = Closure::<dyn FnMut()>::new(fire);
        let delay = i32::try_from(delay_ms).unwrap_or(i32::MAX);
        let handle = window
            .set_timeout_with_callback_and_timeout_and_arguments_0(
                callback.as_ref().unchecked_ref(),
                delay,
            )
            .ok()?;
        Some(Timer {
            handle,
            _callback: callback,
        })
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some(w) = web_sys::window() {
            w.clear_timeout_with_handle(self.handle);
        }
    }
}

/// A DOM event listener that removes itself when dropped.
pub struct Listener {
    target: EventTarget,
    event: &'static str,
    callback: Closure<dyn FnMut(Event)>,
}

impl Listener {
    /// Listen to `event` on `target`.
    pub fn new(
        target: EventTarget,
        event: &'static str,
        f: impl FnMut(Event) + 'static,
    ) -> Option<Listener> {
        let callback = Closure::<dyn FnMut(Event)>::new(f);
        target
            .add_event_listener_with_callback(event, callback.as_ref().unchecked_ref())
            .ok()?;
        Some(Listener {
            target,
            event,
            callback,
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.target.remove_event_listener_with_callback(
            self.event,
            self.callback.as_ref().unchecked_ref(),
        );
    }
}

/// Whether the page is visible now.
pub fn page_visible() -> bool {
    web_sys::window()
        .and_then(|w| w.document())
        .is_none_or(|d| d.visibility_state() == web_sys::VisibilityState::Visible)
}
