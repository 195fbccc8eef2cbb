//! The wasm export of [`engine::Engine`] for the hand-written JavaScript API: one class,
//! `Engine`, whose methods take and return strings and numbers only. A thin forwarding
//! wrapper; everything is in [`crate::engine`].

use wasm_bindgen::prelude::*;

use crate::engine;

/// The client's engine (see [`engine::Engine`]): inputs and calls in, actions out, as JSON.
#[wasm_bindgen(js_name = Engine)]
pub struct Engine(engine::Engine);

#[wasm_bindgen(js_class = Engine)]
impl Engine {
    /// An engine for `config` (JSON). Throws the error JSON (a string) when it is unusable.
    #[wasm_bindgen(constructor)]
    pub fn new(config: &str) -> Result<Engine, String> {
        engine::Engine::new(config).map(Engine)
    }

    /// Feed one input (`kind` 0–10); returns the actions JSON array.
    #[allow(clippy::too_many_arguments)] // the boundary's fixed signature
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
        self.0
            .handle(now, unix_ms, random, kind, socket, code, text)
    }

    /// Run one application call (`op`: JSON); returns `[result, action, ...]`.
    pub fn call(&mut self, now: f64, unix_ms: f64, random: f64, op: &str) -> String {
        self.0.call(now, unix_ms, random, op)
    }

    /// The connection state's name (`connecting`, `connected`, `reconnecting`, `closed`).
    pub fn state(&self) -> String {
        self.0.state()
    }

    /// The members of subscriber `sub`'s presence topic (JSON array), or `null`.
    pub fn members(&self, sub: u32) -> String {
        self.0.members(sub)
    }

    /// Every topic's last delivered position (JSON object).
    pub fn positions(&self) -> String {
        self.0.positions()
    }
}
