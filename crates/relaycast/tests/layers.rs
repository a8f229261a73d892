//! The layering rule, checked over the code's own `crate::` paths: a module
//! of the `relaycast` crate may use only modules of a lower layer (the order
//! of `src/lib.rs`, data flow first), never one beside or above it; and
//! `relaycast-media` depends on no other crate of the workspace. Between
//! crates Cargo enforces the direction itself; inside this crate nothing
//! would, so this test does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layers, lowest first. A module may use the modules of lower layers.
const LAYERS: &[&[&str]] = &[
    // wire facts: codes, control messages
    &["proto"],
    // the one error type and its mapping to every wire's codes
    &["error"],
    // the core: streams, cursors, lag policy, the figures it counts
    &["fanout"],
    // what the app layer is made of
    &["tls", "limits"],
    &["auth", "quic", "metrics"],
    &["config"],
    // the app layer: shared state, peer, error responses; logging
    &["app", "logging"],
    // adapters
    &["ingest", "egress"],
    // what assembles them
    &["cascade", "player"],
    &["server"],
    // the command-line clients
    &["client"],
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        panic!("reading {}", dir.display());
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without comments and without its `#[cfg(test)]`
/// module (tests may reach anywhere).
fn code_of(text: &str) -> String {
    let cut = text.find("#[cfg(test)]").unwrap_or(text.len());
    text[..cut]
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every top-level module named after `crate::` (`crate::a::…`,
/// `crate::{a, b::…}`), and `Error` as the `error` module.
fn used_modules(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                out.push(head(item.trim()));
            }
        } else {
            out.push(head(rest));
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

fn head(path: &str) -> String {
    let name: String = path
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if name == "Error" {
        "error".into()
    } else {
        name
    }
}

#[test]
fn no_module_uses_a_layer_beside_or_above_it() {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap_or(f);
        let first = rel
            .components()
            .next()
            .map(|c| {
                c.as_os_str()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_string()
            })
            .unwrap_or_default();
        if first == "lib" || first == "main" {
            continue; // the map and the binary sit above everything
        }
        let Some(own) = rank(&first) else {
            wrong.push(format!(
                "{}: module `{first}` is in no layer: add it to LAYERS",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for used in used_modules(&code_of(&text)) {
            if used == first || used == "media" {
                continue; // itself; `media` is the crate below (relaycast-media)
            }
            *seen.entry(format!("{first} -> {used}")).or_default() += 1;
            match rank(&used) {
                Some(r) if r < own => {}
                Some(r) => wrong.push(format!(
                    "{}: `{first}` (layer {own}) uses `crate::{used}` (layer {r})",
                    rel.display()
                )),
                None => wrong.push(format!("{}: `crate::{used}` is in no layer", rel.display())),
            }
        }
    }
    assert!(
        seen.len() > 20,
        "the scan found too few imports to be reading the code: {seen:?}"
    );
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_scan_sees_upward_imports() {
    // The checker itself: a use of a higher layer is reported.
    let code = code_of(
        "use crate::server::AppState;\nuse crate::{fanout::Registry, Error};\n// crate::cascade\n",
    );
    assert_eq!(used_modules(&code), ["server", "fanout", "error"]);
    assert!(rank("server") > rank("ingest"));
}

/// The workspace crates (`relaycast…`) a manifest's `[dependencies]` names.
fn workspace_deps(manifest: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(manifest);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let deps = text
        .split("[dependencies]")
        .nth(1)
        .unwrap_or_else(|| panic!("{manifest} has a [dependencies] table"));
    let deps = deps.split("\n[").next().unwrap_or("");
    deps.lines()
        .map(str::trim_start)
        .filter(|line| line.starts_with("relaycast"))
        .map(|line| line.split([' ', '=']).next().unwrap_or(line).to_string())
        .collect()
}

#[test]
fn the_media_crate_depends_on_no_workspace_crate() {
    let deps = workspace_deps("../relaycast-media/Cargo.toml");
    assert!(
        deps.is_empty(),
        "relaycast-media must not depend on a workspace crate: {deps:?}"
    );
}

#[test]
fn the_media_fuzz_targets_depend_on_the_media_crate_alone() {
    let deps = workspace_deps("../../fuzz/media/Cargo.toml");
    assert_eq!(deps, ["relaycast-media"], "fuzz/media/Cargo.toml");
}
