//! The crate's layers: every `use` between modules must be an edge ARCHITECTURE.md allows,
//! and the allowed edges must have no cycle. The table is read from ARCHITECTURE.md itself,
//! so the document and the code cannot drift apart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The layer a source file belongs to; `None` for the crate root and the binaries.
fn layer_of(relative: &Path) -> Option<String> {
    let parts: Vec<String> = relative
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    match parts.as_slice() {
        [lib] if lib == "lib" => None,
        [bin, ..] if bin == "bin" => None,
        [backend, cli, ..] if backend == "backend" && cli == "cli" => Some("cli".into()),
        [backend, api, ..] if backend == "backend" && api == "api" => Some("api".into()),
        [first, ..] => Some(first.clone()),
        [] => None,
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without comments and without its test modules (tests may reach
/// anywhere): every `#[cfg(test)]` item that is a `mod`, whether `mod x;` or a `mod x { .. }`
/// block, wherever it is in the file.
fn code_of(source: &str) -> String {
    let mut kept = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("#[cfg(test)]") {
        kept.push_str(&rest[..at]);
        let after = rest[at + "#[cfg(test)]".len()..].trim_start();
        let is_mod = after.starts_with("mod ") || after.starts_with("pub(crate) mod ");
        if !is_mod {
            kept.push_str("#[cfg(test)]");
            rest = &rest[at + "#[cfg(test)]".len()..];
            continue;
        }
        rest = &after[item_end(after)..];
    }
    kept.push_str(rest);
    kept.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where the item at the start of `code` ends: after its `;`, or after the `}` that closes
/// its first `{`, braces inside strings, characters and comments not counted.
fn item_end(code: &str) -> usize {
    let bytes = code.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b';' if depth == 0 => return i + 1,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                i = code[i..].find('\n').map_or(bytes.len(), |n| i + n);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = code[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |n| i + 2 + n + 1);
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            // A character literal ('{', '\'', '\\'), not a lifetime ('a).
            b'\'' if bytes.get(i + 2) == Some(&b'\'') => i += 2,
            b'\'' if bytes.get(i + 1) == Some(&b'\\') => {
                i += 2;
                while i < bytes.len() && bytes[i] != b'\'' {
                    i += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    bytes.len()
}

/// The paths named after each `prefix` (`crate::` or `super::`), one per name in a `{...}`
/// group, as their first two segments.
fn paths_after(code: &str, prefix: &str) -> Vec<(String, Option<String>)> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + prefix.len()..];
        // `super::` inside `super::super::` or an identifier ending in `crate`: not ours.
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(group.len(), |(i, _)| i);
            let mut element = String::new();
            let mut depth = 0;
            for c in group[..end].chars().chain(std::iter::once(',')) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.push(two_segments(element.trim()));
                        element.clear();
                        continue;
                    }
                    _ => {}
                }
                element.push(c);
            }
        } else {
            let path: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            found.push(two_segments(&path));
        }
    }
    found.retain(|(first, _)| !first.is_empty() && first != "self");
    found
}

fn two_segments(path: &str) -> (String, Option<String>) {
    let mut segments = path.split("::").map(|s| {
        s.trim_matches(|c: char| !(c.is_alphanumeric() || c == '_'))
            .to_string()
    });
    let first = segments.next().unwrap_or_default();
    (first, segments.next().filter(|s| !s.is_empty()))
}

/// `pub use module::{A, B};` in lib.rs: which module a root name comes from.
fn root_names(lib: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    // One statement at a time: rustfmt spreads a long one over lines.
    for statement in code_of(lib).split(';') {
        let statement = statement.split_whitespace().collect::<Vec<_>>().join(" ");
        let Some(rest) = statement.rsplit_once("pub use ").map(|(_, rest)| rest) else {
            continue;
        };
        let rest = rest.trim_end_matches(';');
        let Some((module, items)) = rest.split_once("::") else {
            continue;
        };
        for item in items.trim_matches(|c| c == '{' || c == '}').split(',') {
            names.insert(item.trim().to_string(), module.to_string());
        }
    }
    names
}

/// The layer a path names.
fn layer_named(
    (first, second): &(String, Option<String>),
    roots: &BTreeMap<String, String>,
) -> String {
    if first.starts_with(char::is_uppercase) {
        return match roots.get(first) {
            Some(module) => layer_named(&(module.clone(), None), roots),
            None => format!("unknown root name {first}"),
        };
    }
    if first == "backend" && second.as_deref() == Some("cli") {
        return "cli".into();
    }
    if first == "backend" && second.as_deref() == Some("api") {
        return "api".into();
    }
    first.clone()
}

/// Every edge between layers in the sources: (from, to) → the files that make it.
fn edges_in_sources() -> BTreeMap<(String, String), BTreeSet<String>> {
    let src = root().join("src");
    let roots = root_names(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap().to_path_buf();
        let Some(from) = layer_of(&relative) else {
            continue;
        };
        let code = code_of(&std::fs::read_to_string(&file).unwrap());
        let mut targets: Vec<String> = paths_after(&code, "crate::")
            .iter()
            .map(|path| layer_named(path, &roots))
            .collect();
        // `super::` names the parent module's items: a sibling file, or the crate root's.
        let module: Vec<String> = relative
            .with_extension("")
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| p != "mod")
            .collect();
        let parent = &module[..module.len().saturating_sub(1)];
        for (first, second) in paths_after(&code, "super::") {
            if first == "super" {
                continue;
            }
            let full: Vec<String> = parent
                .iter()
                .cloned()
                .chain(std::iter::once(first))
                .chain(second)
                .collect();
            targets.push(layer_named(
                &(full[0].clone(), full.get(1).cloned()),
                &roots,
            ));
        }
        for to in targets {
            if to != from {
                edges
                    .entry((from.clone(), to))
                    .or_default()
                    .insert(relative.display().to_string());
            }
        }
    }
    edges
}

/// The table between `<!-- layers -->` and `<!-- /layers -->` in ARCHITECTURE.md:
/// `| layer | may use |` rows with names in backticks.
fn allowed_edges() -> BTreeMap<String, BTreeSet<String>> {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let start = doc
        .find("<!-- layers -->")
        .expect("ARCHITECTURE.md has a layers table");
    let end = doc
        .find("<!-- /layers -->")
        .expect("the layers table is closed");
    let mut allowed = BTreeMap::new();
    for row in doc[start..end].lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.trim_matches('|').split('|').collect();
        if cells.len() != 2 || !cells[0].contains('`') {
            continue;
        }
        let names = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect()
        };
        let layer = names(cells[0]).remove(0);
        allowed.insert(layer, names(cells[1]).into_iter().collect());
    }
    allowed
}

#[test]
fn every_use_between_modules_is_an_allowed_edge() {
    let allowed = allowed_edges();
    let mut broken = Vec::new();
    for ((from, to), files) in edges_in_sources() {
        let ok = allowed.get(&from).is_some_and(|uses| uses.contains(&to));
        if !ok {
            broken.push(format!("{from} -> {to} (in {files:?})"));
        }
    }
    assert!(
        broken.is_empty(),
        "uses that ARCHITECTURE.md's layers table does not allow:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_allowed_layers_have_no_cycle() {
    let allowed = allowed_edges();
    assert!(allowed.len() >= 15, "the table was read: {allowed:?}");
    // Peel off layers that use nothing left; what cannot be peeled is on a cycle.
    let mut left = allowed.clone();
    while let Some(free) = left
        .iter()
        .find(|(_, uses)| uses.iter().all(|u| !left.contains_key(u)))
        .map(|(layer, _)| layer.clone())
    {
        left.remove(&free);
    }
    assert!(left.is_empty(), "layers on a cycle: {:?}", left.keys());
    for (layer, uses) in &allowed {
        for used in uses {
            assert!(
                allowed.contains_key(used),
                "{layer} may use {used}, which is not a layer of the table"
            );
        }
    }
}

#[test]
fn the_parser_sees_the_edges_it_must() {
    // A check of the checker: edges that exist today, in each form it parses.
    let edges = edges_in_sources();
    for (from, to) in [
        ("engine", "session"), // crate::session::Inner
        ("engine", "backend"), // crate::backend::{Checkout, Conn, ..}
        ("iter", "failed"),    // crate::{Cancel, Failed, Session} through lib.rs
        ("session", "cli"),    // crate::backend::cli::CliBackend in src/session/mod.rs
        ("conversation", "engine"),
    ] {
        assert!(
            edges.contains_key(&(from.to_string(), to.to_string())),
            "{from} -> {to} not seen: {:?}",
            edges.keys()
        );
    }
    assert!(!edges.contains_key(&("session".into(), "engine".into())));
    assert!(!edges.contains_key(&("engine".into(), "cli".into())));
}

#[test]
fn the_checker_skips_only_test_modules() {
    let code = code_of(
        "use crate::a;\n#[cfg(test)]\nmod t;\nuse crate::b;\n#[cfg(test)]\nmod tests {\n    fn f() {\n        let _ = '{';\n        let _ = \"}\";\n        crate::c::x();\n    }\n}\n#[cfg(test)]\nfn helper() {}\nuse crate::d;\n",
    );
    let seen: Vec<String> = paths_after(&code, "crate::")
        .into_iter()
        .map(|(first, _)| first)
        .collect();
    assert_eq!(seen, ["a", "b", "d"], "{code}");
}

#[test]
fn every_allowed_edge_is_used() {
    // An edge nobody uses is a door left open: the table says only what the code does.
    let used = edges_in_sources();
    let mut unused = Vec::new();
    for (from, uses) in allowed_edges() {
        for to in uses {
            if !used.contains_key(&(from.clone(), to.clone())) {
                unused.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(
        unused.is_empty(),
        "ARCHITECTURE.md allows edges no file uses; drop them:\n{}",
        unused.join("\n")
    );
}

#[test]
fn only_the_scheduler_puts_items_on_the_session_threads() {
    // One scheduler: items reach the session's threads through src/engine/schedule.rs
    // only, so every way of running items (and a backend that answers many at once) has
    // one place to change.
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let allowed = |relative: &Path| {
        relative.starts_with("session") || relative == Path::new("engine/schedule.rs")
    };
    let offenders: Vec<String> = files
        .iter()
        .filter(|file| !allowed(file.strip_prefix(&src).unwrap()))
        .filter(|file| code_of(&std::fs::read_to_string(file).unwrap()).contains(".threads()"))
        .map(|file| file.display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "not through the scheduler: {offenders:?}"
    );
}

#[test]
fn no_file_outside_the_cli_backend_names_a_cli_type() {
    // The seam holds: above it, a turn is a `Conn`, not a process. The session builds the
    // backend (src/session/ names `backend::cli`), nothing else does.
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let cli_types = [
        "CliProcess",
        "PooledConn",
        "KillSwitch",
        "Launch",
        "Pool::",
        "backend::cli",
    ];
    let mut offenders = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        if relative.starts_with("backend/cli") || relative.starts_with("session") {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        for name in cli_types {
            if code.contains(name) {
                offenders.push(format!("{} names {name}", relative.display()));
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:?}");
}
