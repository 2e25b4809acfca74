//! The module layout stays the way `lib.rs` documents it: no import cycle between source files,
//! no core module that knows an adapter, and a `main.rs` that only dispatches.
//!
//! Read from the source text: a file depends on another when it names it by path (`crate::x::y`,
//! `super::y`, `lstm_forecast::x`, or a child module `y::` from its parent). Comments and test
//! modules are left out, so a doc link or a test helper does not count.

use crate::common;

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

/// The store-facing modules an adapter must reach through the service, never directly: an
/// adapter that reads the registry or the forecast log has taken a decision that belongs to the
/// service, and the other adapters would have to take it again.
const BEHIND_THE_SERVICE: [&str; 4] = ["objects", "registry", "source", "monitor::store"];

#[test]
fn the_http_and_lambda_adapters_reach_stores_only_through_the_service() {
    let edges = dependencies(&modules());
    for (module, deps) in &edges {
        if module != "http" && module != "lambda" && !module.starts_with("lambda::") {
            continue;
        }
        let direct: Vec<&String> = deps
            .iter()
            .filter(|d| BEHIND_THE_SERVICE.contains(&d.as_str()))
            .collect();
        assert!(
            direct.is_empty(),
            "adapter {module} imports {direct:?}: go through crate::service"
        );
    }
    assert!(edges["lambda"].contains("service::batch"), "{edges:?}");
}

/// Functions allowed past the length limit: declarative tables, which read best whole.
const LONG_TABLES: [&str; 0] = [];

/// Most lines a function in `src/` may span.
const MAX_FUNCTION_LINES: usize = 100;

/// `source` with comments and string and character literals blanked (newlines kept), so their
/// braces do not count; one pass, since `//` may sit in a string and `"` in a comment.
fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let blank = |span: &[char]| -> String {
        span.iter()
            .map(|&c| if c == '\n' { '\n' } else { ' ' })
            .collect()
    };
    let find = |from: usize, needle: &str| -> usize {
        let needle: Vec<char> = needle.chars().collect();
        (from..chars.len())
            .find(|&k| chars[k..].starts_with(&needle))
            .map_or(chars.len(), |k| k + needle.len())
    };
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let raw_hashes = (c == 'r'
            && !chars
                .get(i.wrapping_sub(1))
                .is_some_and(|p| p.is_alphanumeric()))
        .then(|| chars[i + 1..].iter().take_while(|&&h| h == '#').count())
        .filter(|&n| chars.get(i + 1 + n) == Some(&'"'));
        let end = if c == '/' && next == Some('/') {
            find(i, "\n") - 1
        } else if c == '/' && next == Some('*') {
            find(i + 2, "*/")
        } else if let Some(hashes) = raw_hashes {
            let closing: String = std::iter::once('"')
                .chain((0..hashes).map(|_| '#'))
                .collect();
            find(i + 2 + hashes, &closing)
        } else if c == '"' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            (j + 1).min(chars.len())
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            i + 3
        } else {
            out.push(c);
            i += 1;
            continue;
        };
        out.push_str(&blank(&chars[i..end]));
        i = end;
    }
    out
}

/// Every source file's code before its test module, comments and literals blanked.
fn code_of_each_file() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let source = std::fs::read_to_string(&path).unwrap();
                let code = match source.find("#[cfg(test)]\nmod tests") {
                    Some(at) => &source[..at],
                    None => &source,
                };
                out.insert(path.display().to_string(), code_only(code));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&repo_path("src"), &mut out);
    out
}

/// `(lines, name)` of every function in `code` (comments and tests already left out).
fn function_lengths(code: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut found = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let Some(at) = line.find("fn ") else { continue };
        let before = line[..at].trim();
        let is_item = before.is_empty()
            || before.split_whitespace().all(|word| {
                [
                    "pub",
                    "pub(crate)",
                    "pub(super)",
                    "async",
                    "const",
                    "unsafe",
                ]
                .contains(&word)
            });
        if !is_item {
            continue;
        }
        let name: String = line[at + 3..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let mut depth = 0i64;
        let mut opened = false;
        for (offset, body_line) in lines[start..].iter().enumerate() {
            for c in body_line.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if opened && depth <= 0 {
                found.push((offset + 1, name.clone()));
                break;
            }
            if !opened && body_line.trim_end().ends_with(';') {
                break;
            }
        }
    }
    found
}

#[test]
fn no_function_in_src_runs_over_a_hundred_lines() {
    let mut long = Vec::new();
    let mut counted = 0;
    for (file, code) in code_of_each_file() {
        for (lines, name) in function_lengths(&code) {
            counted += 1;
            if lines > MAX_FUNCTION_LINES && !LONG_TABLES.contains(&name.as_str()) {
                long.push(format!("{file}: {name} ({lines} lines)"));
            }
        }
    }
    assert!(counted > 500, "the reader found the functions: {counted}");
    assert!(
        long.is_empty(),
        "functions over {MAX_FUNCTION_LINES} lines: {long:?}"
    );
}

#[test]
fn the_length_reader_skips_braces_in_literals_and_sees_a_long_function() {
    let body = "    let x = 1;\n".repeat(120);
    let code = format!(
        "pub fn short() -> char {{ '{{' }}\nfn long() {{\n    let s = \"}}// {{\"; // }}\"\n{body}}}\n"
    );
    let lengths = function_lengths(&code_only(&code));
    assert_eq!(lengths[0], (1, "short".to_string()), "{lengths:?}");
    assert_eq!(lengths[1], (123, "long".to_string()), "{lengths:?}");
}

#[test]
fn the_integration_tests_are_one_binary_whose_helpers_are_all_used() {
    let top_level: Vec<String> = std::fs::read_dir(repo_path("tests"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "rs"))
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        top_level.is_empty(),
        "test binaries besides tests/it: {top_level:?}"
    );
    for entry in std::fs::read_dir(repo_path("tests/it/common")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("#![allow(dead_code)]"),
            "{} hides every unused helper at once",
            path.display()
        );
    }
}
