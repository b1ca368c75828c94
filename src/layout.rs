//! The module structure, held by tests: no module depends on one that
//! depends back on it, and every module is in the crate's module map
//! (`lib.rs`) and in CONTRIBUTING.md's layout, so a newcomer finds it.
//! Compiled for tests only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every module of the crate (a file under `src/` but `lib.rs`), with the
/// modules its source names as `crate::<module>`.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let sources: BTreeMap<String, String> = std::fs::read_dir(&src)
        .expect("src/ is readable")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "rs"))
        .map(|path| {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            (
                name,
                std::fs::read_to_string(&path).expect("a readable source file"),
            )
        })
        .filter(|(name, _)| name != "lib")
        .collect();
    sources
        .iter()
        .map(|(name, source)| {
            let used = source
                .split("crate::")
                .skip(1)
                .map(|rest| {
                    rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .next()
                        .unwrap()
                })
                .filter(|used| used != name && sources.contains_key(*used))
                .map(str::to_string)
                .collect();
            (name.clone(), used)
        })
        .collect()
}

/// A cycle of the graph, as the path that closes it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = path[start..].iter().map(|n| n.to_string()).collect();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if !done.insert(node) {
            return None;
        }
        path.push(node);
        for next in &graph[node] {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_depends_on_one_that_depends_back_on_it() {
    let graph = module_graph();
    assert!(graph.len() > 10, "found the modules: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("module cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> =
        [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")]
            .iter()
            .map(|(from, to)| (from.to_string(), BTreeSet::from([to.to_string()])))
            .collect();
    assert_eq!(find_cycle(&graph).unwrap().join(" -> "), "a -> b -> c -> a");
}

#[test]
fn every_module_is_in_the_module_map_and_the_layout() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    let module_map: String = lib.lines().filter(|l| l.starts_with("//!")).collect();
    let layout = std::fs::read_to_string(root.join("CONTRIBUTING.md")).unwrap();
    for module in module_graph().keys() {
        assert!(
            module_map.contains(&format!("`{module}`")),
            "src/lib.rs's module map does not name `{module}`"
        );
        assert!(
            layout.contains(&format!("src/{module}.rs")),
            "CONTRIBUTING.md's layout does not list src/{module}.rs"
        );
    }
}
