//! The crate's layering, read from `src/`: front ends (app, cli) -> figures and export ->
//! session -> analysis, render, reduce -> model, with the utilities (error, cancel, atomic,
//! guard) under everything. A module imports only from layers below its own; render touches
//! neither the model nor candle; no two sibling modules import each other, directly or through
//! others; and the app's panels share code only through `app::widgets`. A failure names the file
//! and the path that breaks the rule.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules and their layer (a module may import from lower layers only).
const LAYERS: &[(&str, u8)] = &[
    ("error", 0),
    ("cancel", 0),
    ("atomic", 0),
    ("guard", 0),
    ("model", 1),
    ("analysis", 2),
    ("render", 2),
    ("reduce", 2),
    ("session", 3),
    ("figures", 4),
    ("export", 4),
    ("app", 5),
    ("cli", 5),
];

/// Imports within one layer that are part of the design.
const SAME_LAYER: &[(&str, &str)] = &[
    ("cli", "app"),        // `tokenlens gui` starts the app
    ("export", "figures"), // an exported figure is one of the figures
];

/// A module: its path from the crate root (`["render", "svg"]`) and its source.
struct Module {
    path: Vec<String>,
    file: PathBuf,
    source: String,
}

fn modules(src: &Path) -> Vec<Module> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let file = entry.unwrap().path();
            if file.is_dir() {
                stack.push(file);
                continue;
            }
            if file.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = file.strip_prefix(src).unwrap().with_extension("");
            let mut path: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
            if path.last().is_some_and(|l| l == "mod") {
                path.pop();
            }
            if path == ["lib"] || path == ["main"] {
                path.clear();
            }
            let source = strip(&std::fs::read_to_string(&file).unwrap());
            out.push(Module { path, file, source });
        }
    }
    out
}

/// The code without comments, string literals and `#[cfg(test)]` items (test-only imports may
/// reach anywhere).
fn strip(text: &str) -> String {
    without_test_items(&strip_comments_and_strings(text))
}

/// Removes each `#[cfg(test)]` item: through its `;`, or through the brace that closes its body.
fn without_test_items(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let end = match item.find(['{', ';']) {
            Some(i) if item.as_bytes()[i] == b';' => i + 1,
            Some(i) => {
                let mut depth = 0usize;
                let close = item[i..].char_indices().find(|&(_, c)| {
                    depth = match c {
                        '{' => depth + 1,
                        '}' => depth - 1,
                        _ => depth,
                    };
                    depth == 0
                });
                close.map_or(item.len(), |(j, _)| i + j + 1)
            }
            None => item.len(),
        };
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

fn strip_comments_and_strings(text: &str) -> String {
    let (mut out, mut chars) = (String::new(), text.chars().peekable());
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                let mut prev = ' ';
                for c in chars.by_ref() {
                    if prev == '*' && c == '/' {
                        break;
                    }
                    prev = c;
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if c == '"' && !escaped {
                        break;
                    }
                    escaped = c == '\\' && !escaped;
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

fn ident(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// Every module path named in `source` through `crate::`, `tokenlens::` or `super::` (the
/// first segment of each item of a `{...}` group too), as absolute segment lists.
fn referenced(module: &[String], source: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for head in ["crate::", "tokenlens::", "super::"] {
        let mut from = 0;
        while let Some(found) = source[from..].find(head) {
            let at = from + found;
            from = at + head.len();
            let before = source[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue; // `super::super::x` is read from its first `super`
            }
            let mut base: Vec<String> = match head {
                "super::" => module[..module.len().saturating_sub(1)].to_vec(),
                _ => Vec::new(),
            };
            let mut rest = &source[from..];
            while let Some(r) = rest.strip_prefix("super::") {
                base.pop();
                rest = r;
            }
            let mut path = base;
            loop {
                let name = ident(rest);
                if !name.is_empty() {
                    path.push(name.to_string());
                    rest = &rest[name.len()..];
                    match rest.strip_prefix("::") {
                        Some(r) => rest = r,
                        None => break,
                    }
                } else if let Some(group) = rest.strip_prefix('{') {
                    let mut depth = 0;
                    let mut item_start = true;
                    for (i, c) in group.char_indices() {
                        match c {
                            '{' => depth += 1,
                            '}' if depth == 0 => break,
                            '}' => depth -= 1,
                            ',' if depth == 0 => item_start = true,
                            c if item_start && (c.is_alphanumeric() || c == '_') && depth == 0 => {
                                item_start = false;
                                let mut item = path.clone();
                                item.push(ident(&group[i..]).to_string());
                                out.push(item);
                            }
                            _ => {}
                        }
                    }
                    break;
                } else {
                    break;
                }
            }
            out.push(path);
        }
    }
    out
}

/// The deepest module `path` lies in.
fn resolve<'a>(known: &'a BTreeSet<Vec<String>>, path: &[String]) -> Option<&'a Vec<String>> {
    (0..=path.len()).rev().find_map(|k| known.get(&path[..k]))
}

fn layer(top: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == top).map(|&(_, l)| l)
}

/// Module path -> the module paths it imports.
type Edges = BTreeMap<Vec<String>, BTreeSet<Vec<String>>>;

/// Every module, and what each imports (itself and the crate root left out).
fn graph() -> (Vec<Module>, Edges) {
    let mods = modules(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let known: BTreeSet<Vec<String>> = mods.iter().map(|m| m.path.clone()).collect();
    let mut edges = BTreeMap::new();
    for m in &mods {
        let targets: BTreeSet<Vec<String>> = referenced(&m.path, &m.source)
            .iter()
            .filter_map(|p| resolve(&known, p))
            .filter(|t| !t.is_empty() && **t != m.path)
            .cloned()
            .collect();
        edges.insert(m.path.clone(), targets);
    }
    (mods, edges)
}

#[test]
fn every_top_level_module_has_a_layer() {
    let (mods, _) = graph();
    let unknown: BTreeSet<&str> =
        mods.iter().filter_map(|m| m.path.first()).map(String::as_str).filter(|t| layer(t).is_none()).collect();
    assert!(unknown.is_empty(), "modules without a layer in tests/layering.rs: {unknown:?}");
}

#[test]
fn modules_import_only_from_lower_layers() {
    let (mods, edges) = graph();
    let mut broken = Vec::new();
    for m in &mods {
        let Some(from) = m.path.first() else { continue };
        for to in &edges[&m.path] {
            let to_top = &to[0];
            if to_top == from || SAME_LAYER.contains(&(from.as_str(), to_top.as_str())) {
                continue;
            }
            let (Some(a), Some(b)) = (layer(from), layer(to_top)) else { continue };
            if b >= a {
                broken.push(format!("{} imports {}", m.file.display(), to.join("::")));
            }
        }
    }
    assert!(broken.is_empty(), "imports against the layering:\n{}", broken.join("\n"));
}

#[test]
fn render_touches_neither_the_model_nor_candle() {
    let (mods, edges) = graph();
    let mut broken = Vec::new();
    for m in mods.iter().filter(|m| m.path.first().is_some_and(|t| t == "render")) {
        if m.source.contains("candle_") {
            broken.push(format!("{} uses candle", m.file.display()));
        }
        for to in edges[&m.path].iter().filter(|t| layer(&t[0]).is_some_and(|l| l > 0) && t[0] != "render") {
            broken.push(format!("{} imports {}", m.file.display(), to.join("::")));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// A parent and its children share items both ways by Rust's design (`mod.rs` re-exports, a
/// child reads its parent's types); between any other two modules an import cycle is a knot.
#[test]
fn no_import_cycles_between_modules() {
    let (_, edges) = graph();
    let related = |a: &[String], b: &[String]| a.starts_with(b) || b.starts_with(a);
    let next: BTreeMap<&Vec<String>, Vec<&Vec<String>>> =
        edges.iter().map(|(a, bs)| (a, bs.iter().filter(|b| !related(a, b)).collect())).collect();
    let mut cycles = Vec::new();
    for start in next.keys() {
        // A path back to `start` through modules that sort after it reports each cycle once.
        let mut stack = vec![(*start, vec![*start])];
        let mut seen = BTreeSet::new();
        while let Some((at, trail)) = stack.pop() {
            for &to in next.get(at).into_iter().flatten() {
                if to == *start {
                    let names: Vec<String> = trail.iter().map(|m| m.join("::")).collect();
                    cycles.push(format!("{} -> {}", names.join(" -> "), start.join("::")));
                } else if to > *start && seen.insert(to) {
                    let mut t = trail.clone();
                    t.push(to);
                    stack.push((to, t));
                }
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

/// The app's modules that are not panels: VLM mode's state (with its part of the left panel,
/// which `controls` calls), the worker, textures, file dialogs, the export options' window, and
/// the widgets the panels share. Every other module of `app` draws a panel.
const APP_NOT_PANELS: &[&str] = &["widgets", "vlm", "worker", "textures", "file_dialog", "export_options"];

/// Only the app itself (`app/mod.rs`) lays out the panels: no other module of the app imports a
/// panel, so panels share code only through `app::widgets` (the `controls` <-> `vlm` knot was
/// two modules sharing code directly).
#[test]
fn app_panels_share_only_widgets() {
    let (mods, edges) = graph();
    let in_app = |p: &[String]| p.len() >= 2 && p[0] == "app";
    let panel = |p: &[String]| in_app(p) && !APP_NOT_PANELS.contains(&p[1].as_str());
    let mut broken = Vec::new();
    for m in mods.iter().filter(|m| in_app(&m.path)) {
        for to in edges[&m.path].iter().filter(|to| panel(to) && to[1] != m.path[1]) {
            broken.push(format!("{} imports the panel {}", m.file.display(), to.join("::")));
        }
    }
    assert!(broken.is_empty(), "panels share code through app::widgets only:\n{}", broken.join("\n"));
}

/// The reader itself: it must see the imports the rules are about.
#[test]
fn the_reader_resolves_paths_and_groups() {
    let module: Vec<String> = vec!["app".into(), "vlm".into()];
    let found = referenced(
        &module,
        &strip(
            "use super::controls::{params_ui, x};\n// crate::no\nlet a = \"crate::no\"; use crate::{model::Model, reduce};",
        ),
    );
    let found: Vec<String> = found.iter().map(|p| p.join("::")).collect();
    assert!(found.contains(&"app::controls::params_ui".to_string()), "{found:?}");
    assert!(found.contains(&"model".to_string()), "{found:?}");
    assert!(found.contains(&"reduce".to_string()), "{found:?}");
    assert!(!found.iter().any(|p| p.contains("no")), "{found:?}");

    // A test-only item is skipped, and the code after it is still read.
    let code = strip(
        "#[cfg(test)]\nuse crate::app::hidden;\n#[cfg(test)]\nmod tests { fn f() { if x { crate::cli::y(); } } }\nuse crate::render::scene;",
    );
    let found: Vec<String> = referenced(&module, &code).iter().map(|p| p.join("::")).collect();
    assert_eq!(found, ["render::scene"], "{code}");
}
