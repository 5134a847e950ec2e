//! The parts of `run` import one another, never `run/mod.rs` (which wires
//! them), and never in a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each part of `run` and the siblings its `use super::…` lines name; an
/// error for a `use` that reaches into `run/mod.rs` itself.
fn imports() -> Result<BTreeMap<String, BTreeSet<String>>, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/run");
    let mut parts = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let Some(name) = path.file_stem().and_then(|n| n.to_str()) else {
            continue;
        };
        if name != "mod" && path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
            parts.insert(name.to_owned(), text);
        }
    }
    let siblings: BTreeSet<String> = parts.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (name, text) in &parts {
        let mut uses = BTreeSet::new();
        for target in super_imports(text) {
            if crate_run_import(&target) || !siblings.contains(&target) {
                return Err(format!(
                    "run/{name}.rs imports `{target}` from run/mod.rs; give it a module of its own"
                ));
            }
            uses.insert(target);
        }
        graph.insert(name.clone(), uses);
    }
    Ok(graph)
}

/// `crate::run::x` names run/mod.rs the long way round.
fn crate_run_import(target: &str) -> bool {
    target.starts_with("crate::run")
}

/// The first path segment after `super::` of each top-level `use` (a `{…}`
/// group gives one per item), and `crate::run…` as written.
fn super_imports(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut statement = String::new();
    for line in text.lines() {
        if statement.is_empty() && !(line.starts_with("use ") || line.starts_with("pub use ")) {
            continue;
        }
        statement.push_str(line.trim());
        if !line.trim_end().ends_with(';') {
            continue;
        }
        let path = statement
            .trim_start_matches("pub ")
            .trim_start_matches("use ")
            .trim_end_matches(';')
            .to_owned();
        statement.clear();
        if path.starts_with("crate::run") {
            found.push(path);
        } else if let Some(rest) = path.strip_prefix("super::") {
            let items = match rest.strip_prefix('{') {
                Some(group) => group.trim_end_matches('}').split(',').collect(),
                None => vec![rest],
            };
            for item in items.iter().map(|item| item.trim()) {
                if let Some(first) = item.split("::").next().filter(|f| !f.is_empty()) {
                    found.push(first.to_owned());
                }
            }
        }
    }
    found
}

/// A circle in `graph`, as the parts along it, if there is one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_owned());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_part_of_run_imports_from_its_mod_rs() {
    if let Err(err) = imports() {
        panic!("{err}");
    }
}

#[test]
fn the_parts_of_run_import_each_other_in_no_circle() {
    let graph = imports().unwrap_or_default();
    assert!(graph.contains_key("agent") && graph.contains_key("executor"));
    assert_eq!(cycle(&graph), None);
}

#[test]
fn the_parser_sees_what_it_must_refuse() {
    let text = "use super::{clock::Clock, Node};\npub use super::books::{\n    Books,\n};\nuse crate::run::Node;\n    use super::*;\n";
    assert_eq!(
        super_imports(text),
        ["clock", "Node", "books", "crate::run::Node"]
    );
    let circle: BTreeMap<String, BTreeSet<String>> = [
        ("a", ["b"].as_slice()),
        ("b", ["c"].as_slice()),
        ("c", ["a"].as_slice()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
    .collect();
    assert_eq!(
        cycle(&circle).map(|c| c.len()),
        Some(4),
        "a → b → c → a is a circle"
    );
}
