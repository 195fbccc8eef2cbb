//! The SDK's layers (ARCHITECTURE.md, "SDK"): the sans-IO `core` never names a shell; the JS
//! API's engine (`engine/`, `js.rs`) is plain Rust over the core; the Rust API's browser shell
//! (`wasm/`) does not import the Rust API (`native/`) that builds on it. This test reads the
//! sources and fails on an edge that points the wrong way.

use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code, without `//` comments (doc links may name anything).
fn code(path: &Path) -> String {
    std::fs::read_to_string(path)
        .expect("read source")
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_core_never_names_the_browser_shell() {
    let mut files = Vec::new();
    rs_files(&src().join("core"), &mut files);
    assert!(files.len() > 5, "found the core's files");
    let offenders: Vec<_> = files
        .iter()
        .filter(|f| {
            let text = code(f);
            [
                "crate::wasm",
                "crate::native",
                "wasm_bindgen",
                "js_sys",
                "web_sys",
            ]
            .iter()
            .any(|name| text.contains(name))
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "core files naming the shell: {offenders:?}"
    );
}

#[test]
fn the_pump_does_not_import_what_builds_on_it() {
    let mut files = Vec::new();
    rs_files(&src().join("wasm"), &mut files);
    assert!(files.len() >= 2, "found the shell's files");
    for f in &files {
        // The Rust API builds on the pump (through `Sink` and `Settle`), and the JS API's
        // engine is another shell's.
        for name in ["crate::native", "crate::engine"] {
            assert!(!code(f).contains(name), "{} names {name}", f.display());
        }
    }
}

/// The JS API's engine (`engine/`) is plain Rust like the core, and its wasm export
/// (`js.rs`) is wasm-bindgen only: no js-sys, no web-sys, no JsValue (strings and numbers
/// cross the boundary), and neither names the wasm-bindgen shell (`wasm/`) or the Rust API.
#[test]
fn the_engine_is_plain_rust_and_its_export_only_forwards() {
    let mut files = Vec::new();
    rs_files(&src().join("engine"), &mut files);
    assert!(files.len() >= 2, "found the engine's files");
    for f in &files {
        let text = code(f);
        for name in [
            "crate::wasm",
            "crate::native",
            "wasm_bindgen",
            "js_sys",
            "web_sys",
        ] {
            assert!(!text.contains(name), "{} names {name}", f.display());
        }
    }
    let text = code(&src().join("js.rs"));
    for name in [
        "crate::wasm",
        "crate::native",
        "js_sys",
        "web_sys",
        "JsValue",
    ] {
        assert!(!text.contains(name), "js.rs names {name}");
    }
}

/// The browser build reads and writes JSON with the protocol's small reader and writer
/// (`core/wire.rs`), never serde_json, whose reader, errors and float formatting were half the
/// wasm (docs/sdk.md, "Size"). The JS entries are the core, the engine (`engine/`) and its
/// export (`js.rs`); only the built-in aggregates (their own cargo feature and package entry)
/// and tests use serde. The Rust API (`native/`, `wasm/`) is not part of the JS entries.
#[test]
fn the_browser_build_does_not_use_serde_json() {
    let mut files = Vec::new();
    rs_files(&src().join("core"), &mut files);
    rs_files(&src().join("engine"), &mut files);
    files.push(src().join("js.rs"));
    let offenders: Vec<_> = files
        .iter()
        .filter(|f| {
            !f.ends_with("core/aggregates.rs")
                && !f.ends_with("core/tests.rs")
                && !f.ends_with("engine/tests.rs")
        })
        .filter(|f| {
            let text = code(f);
            let shipped = text.split("#[cfg(test)]").next().unwrap_or_default();
            shipped.contains("serde_json") || shipped.contains("serde::")
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "browser code using serde: {offenders:?}"
    );
}
