//! The server's modules form layers that point one way (ARCHITECTURE.md, "Layers"): a module
//! may name (`crate::x`) only modules of a lower layer. This test reads every source file of
//! the library and fails on an edge that points sideways or up, so the picture cannot drift.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each module of the library and its layer (lower = closer to the protocol).
const LAYERS: &[(&str, u8)] = &[
    // Leaves: know nothing of the rest.
    ("clock", 0),
    ("metrics", 0),
    ("limits", 0),
    ("retention", 0),
    ("forwarded", 0),
    ("topic", 0),
    ("presence", 0),
    ("wire", 0),
    ("stream", 0),
    ("config", 1),
    ("auth", 2),
    // The durable log and the fan-out: never each other.
    ("store", 3),
    ("hub", 3),
    // Every operation, once.
    ("ops", 4),
    ("state", 5),
    // Transports.
    ("ws", 6),
    ("api", 6),
    ("repository", 6),
    // Serving.
    ("http", 7),
    ("listener", 7),
    ("lib", 8),
];

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/ws/writer.rs` → `ws`, `src/lib.rs` → `lib`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("a component");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_owned()
}

/// Every `crate::name` the text mentions.
fn crate_refs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // `use crate::{a, b}` names several.
        if name.is_empty() && after.starts_with('{') {
            let end = after.find('}').unwrap_or(after.len());
            for part in after[1..end].split(',') {
                let part: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !part.is_empty() {
                    out.push(part);
                }
            }
        } else if !name.is_empty() {
            out.push(name);
        }
        rest = after;
    }
    out
}

#[test]
fn modules_only_use_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut violations = Vec::new();
    let mut seen = 0;
    for file in all {
        let module = module_of(&src, &file);
        if module == "bin" {
            continue; // the binary uses the library's public API only
        }
        let Some(&own) = layer.get(module.as_str()) else {
            violations.push(format!(
                "{}: module `{module}` has no layer",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read");
        // Code only: a doc comment may point anywhere.
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for used in crate_refs(&code) {
            seen += 1;
            if used == module {
                continue;
            }
            match layer.get(used.as_str()) {
                Some(&theirs) if theirs < own => {}
                Some(&theirs) => violations.push(format!(
                    "{}: `{module}` (layer {own}) uses `{used}` (layer {theirs})",
                    file.display()
                )),
                // Items re-exported at the crate root are the root's business.
                None => violations.push(format!(
                    "{}: `{module}` uses `crate::{used}`, which is no module",
                    file.display()
                )),
            }
        }
    }
    assert!(
        seen > 50,
        "the scan found only {seen} uses: is it reading the right files?"
    );
    assert!(
        violations.is_empty(),
        "layering violations:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_scanner_reads_both_forms_of_use() {
    assert_eq!(
        crate_refs(
            "use crate::store::Store;\nuse crate::{clock, hub::Hub};\nlet x = crate::ops::publish;"
        ),
        ["store", "clock", "hub", "ops"]
    );
}
