//! The module layout stays the way `lib.rs` documents it: no import cycle between source files,
//! no core module that knows an adapter, and a `main.rs` that only dispatches.
//!
//! Read from the source text: a file depends on another when it names it by path (`crate::x::y`,
//! `super::y`, `lstm_forecast::x`, or a child module `y::` from its parent). Comments and test
//! modules are left out, so a doc link or a test helper does not count.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::repo_path;

/// Modules that adapt the core to a transport; nothing in the core may depend on them.
const ADAPTERS: [&str; 3] = ["http", "lambda", "cli"];

/// `src/a/b.rs` -> `a::b`, `src/a/mod.rs` -> `a`; the crate roots are left out.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(root).unwrap().with_extension("");
            let mut parts: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            let name = parts.join("::");
            if name == "lib" || name == "main" {
                continue;
            }
            out.insert(
                name,
                without_comments_and_tests(&std::fs::read_to_string(&path).unwrap()),
            );
        }
    }
    let mut out = BTreeMap::new();
    let root = repo_path("src");
    walk(&root, &root, &mut out);
    out
}

fn without_comments_and_tests(source: &str) -> String {
    let code = match source.find("#[cfg(test)]\nmod tests") {
        Some(at) => &source[..at],
        None => source,
    };
    code.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The longest module named by the start of `path` (`a::b::Type` -> `a::b` if it exists).
fn resolve(path: &[&str], modules: &BTreeMap<String, String>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|candidate| modules.contains_key(candidate))
}

/// Identifier paths following `prefix` in `code` (`crate::a::b::{C, d}` -> `a::b` then, for a brace
/// group, each item's first segment too).
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    let mut found = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let head: Vec<&str> = rest[..end].split("::").filter(|s| !s.is_empty()).collect();
        if rest[end..].starts_with('{') {
            let group = &rest[end + 1..rest[end..].find('}').map_or(rest.len(), |e| end + e)];
            for item in group.split(',') {
                let first = item.trim().split("::").next().unwrap_or("").trim();
                if !first.is_empty() {
                    found.push(head.iter().copied().chain([first]).collect());
                }
            }
        }
        found.push(head);
    }
    found
}

fn dependencies(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges = BTreeMap::new();
    for (name, code) in modules {
        let segments: Vec<&str> = name.split("::").collect();
        let parent = &segments[..segments.len() - 1];
        let mut deps = BTreeSet::new();
        for path in paths_after(code, "crate::")
            .into_iter()
            .chain(paths_after(code, "lstm_forecast::"))
        {
            deps.extend(resolve(&path, modules));
        }
        for path in paths_after(code, "super::") {
            let full: Vec<&str> = parent.iter().copied().chain(path).collect();
            deps.extend(resolve(&full, modules).or_else(|| Some(parent.join("::"))));
        }
        for child in modules.keys() {
            if let Some(own) = child.strip_prefix(&format!("{name}::")) {
                if !own.contains("::") && !paths_after(code, &format!("{own}::")).is_empty() {
                    deps.insert(child.clone());
                }
            }
        }
        deps.remove(name);
        deps.remove("");
        edges.insert(name.clone(), deps);
    }
    edges
}

fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

#[test]
fn no_source_file_imports_another_that_imports_it_back() {
    let edges = dependencies(&modules());
    assert!(edges.len() > 30, "the reader found the modules: {edges:?}");
    assert!(
        edges["service"].contains("infer") && edges["http"].contains("service"),
        "the reader sees imports: {edges:?}"
    );
    assert_eq!(find_cycle(&edges), None, "an import cycle");
}

#[test]
fn no_core_module_depends_on_an_adapter() {
    let is_adapter = |m: &str| ADAPTERS.contains(&m.split("::").next().unwrap());
    for (module, deps) in dependencies(&modules()) {
        if is_adapter(&module) {
            continue;
        }
        let adapters: Vec<&String> = deps.iter().filter(|d| is_adapter(d)).collect();
        assert!(
            adapters.is_empty(),
            "core module {module} depends on adapters {adapters:?}"
        );
    }
}

#[test]
fn the_reader_would_see_a_cycle_and_an_adapter_import() {
    let mut modules = BTreeMap::new();
    modules.insert("a".to_string(), "use crate::b::Thing;".to_string());
    modules.insert("b".to_string(), "use super::{a::Other};".to_string());
    modules.insert(
        "c".to_string(),
        "fn f() { crate::http::router(); }".to_string(),
    );
    modules.insert("http".to_string(), String::new());
    let edges = dependencies(&modules);
    assert!(find_cycle(&edges).is_some(), "{edges:?}");
    assert!(edges["c"].contains("http"), "{edges:?}");
}

#[test]
fn main_rs_only_parses_and_dispatches() {
    let lines = std::fs::read_to_string(repo_path("src/main.rs"))
        .unwrap()
        .lines()
        .count();
    assert!(lines <= 300, "src/main.rs has {lines} lines");
}
