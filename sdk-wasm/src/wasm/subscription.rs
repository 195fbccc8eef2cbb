//! `Subscription`: one `subscribe` call of the application, and `TidingsClient.subscribe`
//! that makes it.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use super::client::{Handlers, Receiver, Shared, TidingsClient, run, subscribe_with};
use super::convert;
use super::types::*;
use crate::core::SubId;

#[wasm_bindgen]
impl TidingsClient {
    /// Call `handler(message)` for every message on `topic`. `options.since` resumes after a
    /// saved position (replaying what was missed).
    pub fn subscribe(
        &self,
        topic: String,
        handler: MessageHandler,
        options: Option<SubscribeOptionsArg>,
    ) -> Result<Subscription, JsValue> {
        let options: JsValue = options.map_or(JsValue::UNDEFINED, Into::into);
        let explicit = convert::since(&options).map_err(|e| convert::error(&e))?;
        let since = explicit.or_else(|| self.shared.borrow().saved.get(&topic).cloned());
        let handlers = Handlers {
            receiver: Receiver::Js(handler.unchecked_into()),
            on_recovery: Vec::new(),
            on_error: Vec::new(),
        };
        let id = subscribe_with(&self.shared, &topic, since, handlers)
            .map_err(|e| convert::error(&e))?;
        Ok(Subscription {
            shared: Rc::downgrade(&self.shared),
            id,
            topic,
        })
    }
}

/// One `subscribe` call: stop it with `unsubscribe()`.
#[wasm_bindgen]
pub struct Subscription {
    shared: Weak<RefCell<Shared>>,
    id: SubId,
    topic: String,
}

#[wasm_bindgen]
impl Subscription {
    /// The subscribed topic.
    #[wasm_bindgen(getter)]
    pub fn topic(&self) -> String {
        self.topic.clone()
    }

    /// Stop receiving messages (the topic is unsubscribed when no one else listens).
    pub fn unsubscribe(&self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.borrow_mut().handlers.remove(&self.id);
            run(&shared, |core, ctx| core.unsubscribe(ctx, self.id));
        }
    }

    /// Call `handler({topic, recovered})` after each recovery (reconnect or gap repair).
    /// `recovered: false` means some messages could not be replayed.
    #[wasm_bindgen(js_name = onRecovery)]
    pub fn on_recovery(&self, handler: RecoveryHandler) {
        if let Some(shared) = self.shared.upgrade()
            && let Some(h) = shared.borrow_mut().handlers.get_mut(&self.id)
        {
            h.on_recovery.push(handler.unchecked_into());
        }
    }

    /// Call `handler(error)` if the server refuses the subscription.
    #[wasm_bindgen(js_name = onError)]
    pub fn on_error(&self, handler: ErrorHandler) {
        if let Some(shared) = self.shared.upgrade()
            && let Some(h) = shared.borrow_mut().handlers.get_mut(&self.id)
        {
            h.on_error.push(handler.unchecked_into());
        }
    }
}
