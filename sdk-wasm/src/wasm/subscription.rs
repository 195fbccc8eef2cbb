//! `Subscription`: one `subscribe` call of the application, and `TidingsClient.subscribe`
//! that makes it.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use super::client::{Handlers, Receiver, Shared, TidingsClient, run, subscribe_with};
use super::convert;
use super::types::*;
use crate::core::{Change, SubId};

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
        let handlers = Handlers::new(Receiver::Js(handler.unchecked_into()));
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

    /// Call `handler(error)` if the server refuses the subscription, or (with `onJoin` /
    /// `onLeave`) the presence read of its topic (`PRESENCE_DISABLED`, `FORBIDDEN`: the
    /// subscription itself lives on).
    #[wasm_bindgen(js_name = onError)]
    pub fn on_error(&self, handler: ErrorHandler) {
        if let Some(shared) = self.shared.upgrade()
            && let Some(h) = shared.borrow_mut().handlers.get_mut(&self.id)
        {
            h.on_error.push(handler.unchecked_into());
        }
    }

    /// Call `handler({topic, client_id, user, info})` when another connection subscribes to
    /// this presence topic, including ones that arrived while this client was reconnecting.
    #[wasm_bindgen(js_name = onJoin)]
    pub fn on_join(&self, handler: MemberHandler) {
        self.watch(handler, Change::Join);
    }

    /// Call `handler({topic, client_id, user, info})` when another connection leaves this
    /// presence topic (unsubscribed or disconnected), including while this client was away.
    #[wasm_bindgen(js_name = onLeave)]
    pub fn on_leave(&self, handler: MemberHandler) {
        self.watch(handler, Change::Leave);
    }

    /// The topic's members as the SDK knows them (`{client_id, user, info}`, this client's own
    /// connection included), kept current by joins and leaves; `null` before an `onJoin` /
    /// `onLeave` handler is attached and its first presence read is answered.
    pub fn members(&self) -> MembersList {
        let members = self
            .shared
            .upgrade()
            .and_then(|shared| shared.borrow().core.members(self.id));
        members
            .map_or(JsValue::NULL, |m| convert::to_js(&m))
            .unchecked_into()
    }
}

impl Subscription {
    /// Register a join or leave handler; the first one starts tracking the topic's members.
    fn watch(&self, handler: MemberHandler, change: Change) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        {
            let mut s = shared.borrow_mut();
            let Some(h) = s.handlers.get_mut(&self.id) else {
                return;
            };
            match change {
                Change::Join => h.on_join.push(handler.unchecked_into()),
                Change::Leave => h.on_leave.push(handler.unchecked_into()),
            }
        }
        run(&shared, |core, ctx| core.watch_presence(ctx, self.id));
    }
}
