//! The crate graph's rules (docs/architecture.md) and the rule that no crate's modules
//! import each other in a cycle, checked on the source tree: both are easy to break by one
//! `use` and hard to see in review.
//!
//! The module graph is read from the text: every `crate::a::b` and `super::…` path (also
//! inside `use …::{…}` groups) outside a file's `#[cfg(test)] mod tests` is an edge to the
//! deepest module of the crate it names. That is what a reader follows too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The names in `[dependencies]` (not dev- or build-dependencies) of a Cargo.toml.
fn normal_dependencies(manifest: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let mut in_deps = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && !line.is_empty() && !line.starts_with('#') {
            let name = line.split(['=', '.']).next().unwrap_or("").trim();
            out.insert(name.to_string());
        }
    }
    out
}

const HOST_NETWORK: [&str; 4] = [
    "wireguard-control",
    "rtnetlink",
    "netlink-packet-route",
    "aya",
];

#[test]
fn bgpctl_and_the_crates_it_uses_link_neither_wireguard_nor_netlink() {
    let ws = workspace();
    let bgpctl = normal_dependencies(&ws.join("bgpctl/Cargo.toml"));
    assert!(
        !bgpctl.contains("gatewan"),
        "bgpctl must not depend on the gatewan crate"
    );
    for krate in ["bgpctl", "mesh", "kit", "tunnel-plan", "proto"] {
        let deps = normal_dependencies(&ws.join(krate).join("Cargo.toml"));
        for bad in HOST_NETWORK {
            assert!(!deps.contains(bad), "{krate} depends on {bad}");
        }
    }
    for used in ["gatewan-mesh", "gatewan-kit", "gatewan-tunnel-plan"] {
        assert!(bgpctl.contains(used), "bgpctl no longer uses {used}");
    }
}

#[test]
fn the_mesh_depends_on_no_other_crate_of_the_workspace_but_the_protocol() {
    let deps = normal_dependencies(&workspace().join("mesh/Cargo.toml"));
    let ours: Vec<_> = deps.iter().filter(|d| d.starts_with("gatewan")).collect();
    assert_eq!(ours, ["gatewan-proto"]);
}

type Module = Vec<String>;

fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<Module, PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, src, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let rel = p.strip_prefix(src).unwrap().with_extension("");
                let mut m: Module = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if matches!(m.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                    m.pop();
                }
                out.insert(m, p);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, src, &mut out);
    out
}

fn ident(s: &str) -> Option<(&str, &str)> {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (end > 0).then(|| (&s[..end], &s[end..]))
}

/// The module paths a `crate::`/`super::` path names, from the text right after `::`:
/// `a::b::C`, `a::{b, c::D}`, `{a, b}`.
fn paths_after(mut s: &str, prefix: Module, out: &mut Vec<Module>) {
    let mut path = prefix;
    loop {
        if let Some(rest) = s.strip_prefix('{') {
            let end = matching_brace(rest);
            for item in split_top(&rest[..end]) {
                paths_after(item.trim(), path.clone(), out);
            }
            return;
        }
        let Some((id, rest)) = ident(s) else { break };
        match id {
            "self" => break,
            "super" => {
                path.pop();
            }
            _ => path.push(id.to_string()),
        }
        match rest.strip_prefix("::") {
            Some(r) => s = r,
            None => break,
        }
    }
    out.push(path);
}

fn matching_brace(s: &str) -> usize {
    let mut depth = 1;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    s.len()
}

fn split_top(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn edges(mods: &BTreeMap<Module, PathBuf>) -> BTreeMap<Module, BTreeSet<Module>> {
    let deepest = |path: &Module| -> Option<Module> {
        (1..=path.len())
            .rev()
            .map(|i| path[..i].to_vec())
            .find(|p| mods.contains_key(p))
    };
    let mut out = BTreeMap::new();
    for (m, file) in mods {
        let text = std::fs::read_to_string(file).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
        let mut named = Vec::new();
        for (prefix, base) in [
            ("crate::", Vec::new()),
            ("super::", m[..m.len().saturating_sub(1)].to_vec()),
        ] {
            for (i, _) in code.match_indices(prefix) {
                let before = code[..i].chars().next_back();
                if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                paths_after(&code[i + prefix.len()..], base.clone(), &mut named);
            }
        }
        let targets: BTreeSet<Module> = named
            .iter()
            .filter_map(deepest)
            .filter(|t| !m.starts_with(t) && t != m)
            .collect();
        out.insert(m.clone(), targets);
    }
    out
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct T<'a> {
        g: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        out: Vec<Vec<Module>>,
    }
    impl<'a> T<'a> {
        fn visit(&mut self, v: &'a Module) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            for w in self.g.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if self.stack.contains(&w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut comp = Vec::new();
                while let Some(w) = self.stack.pop() {
                    comp.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    self.out.push(comp);
                }
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.out
}

#[test]
fn no_crate_has_modules_that_import_each_other_in_a_cycle() {
    let ws = workspace();
    let mut found = Vec::new();
    for krate in [
        "proto",
        "mesh",
        "kit",
        "tunnel-plan",
        "gatewan",
        "bgpctl",
        "routingctl",
        "lab",
        "tests",
    ] {
        let graph = edges(&modules(&ws.join(krate).join("src")));
        assert!(!graph.is_empty(), "no module read in {krate}/src");
        for c in cycles(&graph) {
            let names: Vec<String> = c.iter().map(|m| m.join("::")).collect();
            found.push(format!("{krate}: {}", names.join(" <-> ")));
        }
    }
    assert!(
        found.is_empty(),
        "module import cycles:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_cycle_finder_sees_a_cycle_through_a_use_group() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir(src.join("a")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a; mod b;").unwrap();
    std::fs::write(src.join("a/mod.rs"), "pub mod c;\nuse crate::{b::X};").unwrap();
    std::fs::write(src.join("a/c.rs"), "use super::super::b;").unwrap();
    std::fs::write(
        src.join("b.rs"),
        "use crate::a::c::Y;\n#[cfg(test)]\nmod tests { use crate::a; }",
    )
    .unwrap();
    let graph = edges(&modules(src));
    let found = cycles(&graph);
    assert_eq!(found.len(), 1, "{graph:?}");
    let mut names: Vec<String> = found[0].iter().map(|m| m.join("::")).collect();
    names.sort();
    assert_eq!(names, ["a::c", "b"]);
}
