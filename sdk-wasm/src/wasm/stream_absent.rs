//! `TidingsClient.stream` in a build without event streams (the package's `tidings` entry):
//! it throws, naming the entries that have them, instead of being `undefined`.

use wasm_bindgen::prelude::*;

use super::client::TidingsClient;
use super::convert;
use crate::core::SdkError;

#[wasm_bindgen]
impl TidingsClient {
    /// Event streams are not in this build.
    ///
    /// # Errors
    /// Always throws `{code: "INVALID_ARGUMENT"}`: import `tidings/streams` (reducers) or
    /// `tidings/aggregates` (reducers and the built-in Rust aggregates).
    pub fn stream(&self, _id: String, _folder: JsValue, _initial: JsValue) -> Result<(), JsValue> {
        Err(convert::error(&SdkError::InvalidArgument(
            "event streams are not in this build: import them from \"tidings/streams\" \
             (reducers) or \"tidings/aggregates\" (reducers and built-in aggregates)"
                .into(),
        )))
    }
}
