//! The service's layers, as Cargo and its sources must keep them:
//! `core` (pure types and logic) ← `store` (Redis) ← `check` (the request
//! path) ← `control` (admin API, connect page, HTTP side) ← `latchkey` (the
//! binary), each a crate under `authz-service/`.
//!
//! Cargo already refuses a crate that uses one it does not depend on; what
//! it cannot refuse is a dependency written into the wrong `Cargo.toml`, an
//! import cycle between the modules of one crate, or a file grown too big
//! to read. These tests do, and fail naming the line to change.
//!
//! A module's references are every `crate::name` and `super::name` path in
//! its source (use trees included; comments and string literals are not
//! code). Unit-test modules count too.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The service's crates, lowest first: each may depend on those before it.
const LAYERS: &[(&str, &str)] = &[
    ("core", "latchkey-core"),
    ("store", "latchkey-store"),
    ("check", "latchkey-check"),
    ("control", "latchkey-control"),
    ("latchkey", "latchkey"),
];

/// Crates a layer must not reach at all, not even through another crate
/// (`cargo tree`): core is pure, and the request path serves no HTTP of its
/// own.
const FORBIDDEN_CRATES: &[(&str, &[&str])] = &[
    (
        "latchkey-core",
        &[
            "tokio", "redis", "axum", "tonic", "reqwest", "hyper", "moka",
        ],
    ),
    ("latchkey-store", &["axum", "tonic"]),
    ("latchkey-check", &["axum", "latchkey-control"]),
];

/// Lines of code (before `#[cfg(test)] mod tests`) a source file may hold.
const MAX_NON_TEST_LINES: usize = 800;

fn service_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where one module refers to another: the first place, for the message.
#[derive(Debug, Clone)]
struct Site {
    file: String,
    line: usize,
    text: String,
}

impl std::fmt::Display for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.text.trim())
    }
}

/// `text` with comments, string, byte-string and char literals replaced by
/// spaces (newlines kept), so a path inside one is not read as code.
fn blank_comments_and_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, cs: &[char]| {
        for &c in cs {
            out.push(if c == '\n' { '\n' } else { ' ' });
        }
    };
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            let end = chars[i..]
                .iter()
                .position(|&c| c == '\n')
                .map_or(chars.len(), |p| i + p);
            blank(&mut out, &chars[i..end]);
            i = end;
        } else if c == '/' && next == Some('*') {
            let (mut depth, mut j) = (0usize, i);
            while j < chars.len() {
                if chars[j] == '/' && chars.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if chars[j] == '*' && chars.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, &chars[i..j]);
            i = j;
        } else if c == 'r'
            && (i == 0 || !is_ident(chars[i - 1]) || chars[i - 1] == 'b')
            && matches!(next, Some('"') | Some('#'))
        {
            // A raw string r"…" or r#"…"#, if that is what follows.
            let hashes = chars[i + 1..].iter().take_while(|&&c| c == '#').count();
            if chars.get(i + 1 + hashes) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let mut j = i + 2 + hashes;
            while j < chars.len() {
                if chars[j] == '"' && chars[j + 1..].iter().take(hashes).all(|&c| c == '#') {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            blank(&mut out, &chars[i..j.min(chars.len())]);
            i = j;
        } else if c == '"' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(chars.len());
            blank(&mut out, &chars[i..end]);
            i = end;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}'), else a lifetime or label.
            let len = if next == Some('\\') {
                chars[i + 2..]
                    .iter()
                    .position(|&c| c == '\'')
                    .map(|p| p + 3)
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(3)
            } else {
                None
            };
            match len {
                Some(len) => {
                    blank(&mut out, &chars[i..i + len]);
                    i += len;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The names `prefix` reaches in `code`: `prefix::a::…` gives `a`, and
/// `prefix::{a::…, b}` gives `a` and `b`; each with its byte offset.
fn references(code: &str, prefix: &str) -> Vec<(String, usize)> {
    let bytes = code.as_bytes();
    let ident = |from: usize| -> Option<String> {
        let s: String = code[from..]
            .chars()
            .skip_while(|c| c.is_whitespace())
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        (!s.is_empty()).then_some(s)
    };
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(p) = code[from..].find(prefix) {
        let at = from + p;
        from = at + prefix.len();
        if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
            continue;
        }
        let rest = code[from..].trim_start();
        let Some(rest) = rest.strip_prefix("::") else {
            continue;
        };
        let after = code.len() - rest.len();
        let rest_trim = rest.trim_start();
        if let Some(tree) = rest_trim.strip_prefix('{') {
            // Top-level items of the use tree.
            let open = code.len() - tree.len();
            let mut depth = 1;
            let mut item_start = open;
            for (k, ch) in code[open..].char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' | ',' if depth == 1 => {
                        if let Some(name) = ident(item_start) {
                            out.push((name, item_start));
                        }
                        item_start = open + k + 1;
                        if ch == '}' {
                            break;
                        }
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
        } else if let Some(name) = ident(after) {
            out.push((name, after));
        }
    }
    out
}

struct Module {
    /// Source with comments and literals blanked (same lines and columns).
    code: String,
    /// The same, cut before `#[cfg(test)]`'s `mod tests`.
    non_test_len: usize,
    /// Original lines, for messages.
    lines: Vec<String>,
    /// The file, from the crate's folder.
    file: String,
}

/// Every module of a crate's `src/`, by path (`connect`, `connect::session`);
/// the crate root (`lib.rs`, `main.rs`) is `""`.
fn modules(krate: &str) -> BTreeMap<String, Module> {
    let root = service_dir().join(krate).join("src");
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src/") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&root).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).expect("read module");
            let code = blank_comments_and_literals(&text);
            let non_test_len = code.find("#[cfg(test)]\nmod tests").unwrap_or(code.len());
            out.insert(
                parts.join("::"),
                Module {
                    code,
                    non_test_len,
                    lines: text.lines().map(str::to_string).collect(),
                    file: format!(
                        "{krate}/src/{}",
                        path.strip_prefix(&root).unwrap().display()
                    ),
                },
            );
        }
    }
    out
}

/// The parent of a module path (`a::b` → `a`, `a` → `""`).
fn parent(path: &str) -> &str {
    path.rsplit_once("::").map_or("", |(p, _)| p)
}

/// Module → (sibling it refers to → first place it does). Only siblings:
/// a module and the folder it lives in refer to each other by design (the
/// folder declares it; it uses the folder's shared items).
fn graph(modules: &BTreeMap<String, Module>) -> BTreeMap<String, BTreeMap<String, Site>> {
    let mut g = BTreeMap::new();
    for (name, m) in modules {
        let here = parent(name);
        let mut targets: Vec<(String, usize)> = references(&m.code, "crate");
        // `super::x` from `a::b` is `a::x`; from a top-level module, `x` at the root.
        for (first, at) in references(&m.code, "super") {
            let target = if here.is_empty() {
                first
            } else {
                format!("{here}::{first}")
            };
            targets.push((target, at));
        }
        let mut edges: BTreeMap<String, Site> = BTreeMap::new();
        for (to, offset) in targets {
            if &to == name || !modules.contains_key(&to) || parent(&to) != here {
                continue;
            }
            let line = m.code[..offset].matches('\n').count();
            edges.entry(to).or_insert_with(|| Site {
                file: m.file.clone(),
                line: line + 1,
                text: m.lines.get(line).cloned().unwrap_or_default(),
            });
        }
        g.insert(name.clone(), edges);
    }
    g
}

/// The shortest cycle through `start`, as the modules in order.
fn shortest_cycle(
    g: &BTreeMap<String, BTreeMap<String, Site>>,
    start: &str,
) -> Option<Vec<String>> {
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for w in g[v].keys() {
            if w == start {
                let mut path = vec![v.to_string()];
                let mut at = v;
                while at != start {
                    at = parent[at];
                    path.push(at.to_string());
                }
                path.reverse();
                return Some(path);
            }
            if !parent.contains_key(w.as_str()) {
                parent.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    None
}

/// The modules `from` reaches, itself excluded unless it is on a cycle.
fn reach<'a>(g: &'a BTreeMap<String, BTreeMap<String, Site>>, from: &'a str) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([from]);
    while let Some(v) = queue.pop_front() {
        for w in g[v].keys() {
            if seen.insert(w.as_str()) {
                queue.push_back(w);
            }
        }
    }
    seen
}

#[test]
fn no_modules_of_one_crate_import_each_other_in_a_cycle() {
    let mut found = String::new();
    for (krate, _) in LAYERS {
        let g = graph(&modules(krate));
        let reaches: BTreeMap<&str, BTreeSet<&str>> =
            g.keys().map(|m| (m.as_str(), reach(&g, m))).collect();
        let mut placed = BTreeSet::new();
        for m in g.keys() {
            if placed.contains(m.as_str()) || !reaches[m.as_str()].contains(m.as_str()) {
                continue;
            }
            // The strongly connected component of `m`: all it reaches that reach it.
            let component: Vec<&str> = reaches[m.as_str()]
                .iter()
                .copied()
                .filter(|w| reaches[w].contains(m.as_str()))
                .collect();
            placed.extend(component.iter().copied());
            found += &format!(
                "{krate}: {} modules import each other: {}\n",
                component.len(),
                component.join(", ")
            );
            let cycle = shortest_cycle(&g, m).expect("on a cycle");
            for (k, from) in cycle.iter().enumerate() {
                let to = &cycle[(k + 1) % cycle.len()];
                found += &format!("    {from} → {to}: {}\n", g[from][to]);
            }
        }
    }
    assert!(
        found.is_empty(),
        "modules import each other in a cycle; remove one edge of each cycle below (move \
         the piece both need into the lower module, or into a new one both use):\n{found}"
    );
}

/// `[dependencies]` of a crate's manifest (not dev- or build-).
fn dependencies(krate: &str) -> Vec<String> {
    let path = service_dir().join(krate).join("Cargo.toml");
    let text = std::fs::read_to_string(&path).expect("read Cargo.toml");
    let manifest: toml::Table = text.parse().expect("Cargo.toml parses");
    manifest
        .get("dependencies")
        .and_then(toml::Value::as_table)
        .map(|deps| deps.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn each_crate_depends_only_on_the_layers_below_it() {
    let mut wrong = Vec::new();
    for (rank, (krate, package)) in LAYERS.iter().enumerate() {
        for dep in dependencies(krate) {
            if let Some(to) = LAYERS.iter().position(|(_, p)| *p == dep)
                && to >= rank
            {
                wrong.push(format!(
                    "  {package} depends on {dep} ({krate}/Cargo.toml), a layer at or above its own\n"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "a layer may depend only on lower ones (core ← store ← check ← control ← latchkey):\n{}",
        wrong.concat()
    );
}

#[test]
fn lower_layers_reach_no_crate_of_a_higher_one_even_indirectly() {
    // `cargo tree` resolves features as building that crate alone would:
    // axum through tonic's `router` feature counts as much as axum itself.
    let mut wrong = Vec::new();
    for (package, forbidden) in FORBIDDEN_CRATES {
        let out = Command::new(env!("CARGO"))
            .args([
                "tree",
                "--offline",
                "--locked",
                "-e",
                "normal",
                "--prefix",
                "none",
            ])
            .args(["--format", "{p}", "-p", package])
            .current_dir(service_dir())
            .output()
            .expect("run cargo tree");
        assert!(
            out.status.success(),
            "cargo tree -p {package} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tree = String::from_utf8_lossy(&out.stdout);
        let names: BTreeSet<&str> = tree
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(
            names.contains(package),
            "cargo tree -p {package} lists {package}"
        );
        for krate in *forbidden {
            if names.contains(krate) {
                wrong.push(format!(
                    "  {package} reaches {krate} (see `cargo tree -p {package} -i {krate}`)\n"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "these crates belong to a higher layer (core is pure; the request path has no \
         HTTP server and no control plane):\n{}",
        wrong.concat()
    );
}

#[test]
fn no_source_file_holds_more_than_800_lines_of_non_test_code() {
    let mut big = Vec::new();
    for (krate, _) in LAYERS {
        for m in modules(krate).values() {
            let lines = m.code[..m.non_test_len].lines().count();
            if lines > MAX_NON_TEST_LINES {
                big.push(format!("  {}: {lines} lines\n", m.file));
            }
        }
    }
    assert!(
        big.is_empty(),
        "split these files by what they do (a folder of modules), so each can be read \
         in one sitting:\n{}",
        big.concat()
    );
}

/// The reader itself: what it must see and what it must not.
#[test]
fn references_are_read_from_paths_and_use_trees_only() {
    let code = blank_comments_and_literals(
        "use crate::{a::X, b, c::{d, e}};\n\
         // crate::f in a comment\n\
         let s = \"crate::g\"; let r = r#\"crate::h\"#; let q = '\"';\n\
         let x = crate::i::y(); fn f<'a>(v: &'a str) {}\n\
         /* crate::j /* nested */ crate::k */ mycrate::l; crate :: m;",
    );
    let names: Vec<String> = references(&code, "crate")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["a", "b", "c", "i", "m"]);
}
