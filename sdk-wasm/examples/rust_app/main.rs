//! A Rust web frontend on the Rust API (`tidings_sdk::native`), with no JS glue of its own: a
//! chat log (history, then live messages, and a "hello" it publishes) and an order followed
//! through the `Order` aggregate, rendered into the page with web-sys. A Leptos, Yew or Dioxus
//! app does the same from its components (a `Stream` feeds a signal).
//!
//! Build and serve (`scripts/test-rust-app` does this and runs it in headless Chromium against a
//! `tidings serve --dev` that serves the page):
//!
//! ```text
//! cargo build -p tidings-sdk --example rust_app --target wasm32-unknown-unknown
//! wasm-bindgen --target web --out-dir sdk-wasm/examples/rust_app/pkg \
//!     target/wasm32-unknown-unknown/debug/examples/rust_app.wasm
//! tidings serve --dev --static-dir sdk-wasm/examples/rust_app   # prints a dev token
//! # open http://127.0.0.1:8000/?url=ws://127.0.0.1:8000/ws&token=...
//! ```

#[cfg(target_arch = "wasm32")]
mod app {
    use futures_core::Stream;
    use std::pin::Pin;
    use tidings_protocol::order::{Order, OrderCommand};
    use tidings_sdk::native::{Client, Options};

    /// Append a line to the list with id `list`.
    fn show(list: &str, text: &str) {
        let Some(doc) = web_sys::window().and_then(|w| w.document()) else {
            return;
        };
        if let (Some(ul), Ok(li)) = (doc.get_element_by_id(list), doc.create_element("li")) {
            li.set_text_content(Some(text));
            let _ = ul.append_child(&li);
        }
    }

    /// `name` from the page's query string.
    fn param(name: &str) -> Option<String> {
        let search = web_sys::window()?.location().search().ok()?;
        web_sys::UrlSearchParams::new_with_str(&search)
            .ok()?
            .get(name)
    }

    /// Any `Stream`'s next item (what `StreamExt::next` does, without futures-util).
    async fn next<S: Stream + Unpin>(s: &mut S) -> Option<S::Item> {
        std::future::poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
    }

    pub async fn run() {
        let url = param("url").unwrap_or_else(|| "ws://localhost:8080/ws".into());
        let mut options = Options::new(url);
        if let Some(token) = param("token") {
            options = options.token(token);
        }
        let client = match Client::connect(options) {
            Ok(c) => c,
            Err(e) => return show("log", &format!("cannot connect: {e}")),
        };

        // The chat: what is stored, then everything live (replayed across reconnects).
        let mut chat = match client.subscribe("chat") {
            Ok(s) => s,
            Err(e) => return show("log", &format!("subscribe failed ({}): {e}", e.code())),
        };
        match client.history("chat", None, Some(20)).await {
            Ok(page) => {
                for m in page.messages {
                    show("log", &format!("(stored) {}", m.data.get()));
                }
            }
            Err(e) => show("log", &format!("history failed ({}): {e}", e.code())),
        }
        match client
            .publish("chat", &serde_json::json!({"text": "hello from Rust"}))
            .await
        {
            Ok(ack) => show("log", &format!("published at offset {:?}", ack.offset)),
            Err(e) => show("log", &format!("publish failed ({}): {e}", e.code())),
        }

        // An order, folded by the same Rust code the server uses.
        let orders = client.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let Ok(mut order) = orders.aggregate::<Order>("order-demo") else {
                return;
            };
            let Some(loaded) = next(&mut order).await else {
                return;
            };
            if loaded.version == 0 {
                // A new order: create it (decided here by the same code the server runs).
                let create = OrderCommand::Create {
                    customer_id: "demo".into(),
                    items: vec![],
                };
                if let Err(e) = order.execute(&create).await {
                    show("orders", &format!("create refused ({}): {e}", e.code()));
                }
            } else {
                show(
                    "orders",
                    &format!("order-demo v{}: {:?}", loaded.version, loaded.state.status),
                );
            }
            while let Some(v) = next(&mut order).await {
                show(
                    "orders",
                    &format!("order-demo v{}: {:?}", v.version, v.state.status),
                );
            }
        });

        while let Some(m) = next(&mut chat).await {
            show("log", &format!("{}: {}", m.from, m.data.get()));
        }
        if let Some(e) = chat.error() {
            show("log", &format!("subscription ended ({}): {e}", e.code()));
        }
    }
}

#[cfg(target_arch = "wasm32")]
fn main() {
    wasm_bindgen_futures::spawn_local(app::run());
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    eprintln!(
        "build for the browser: cargo build --example rust_app --target wasm32-unknown-unknown"
    );
}
