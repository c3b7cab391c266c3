//! The module graph of `authz-service/src` has no cycle, and no module
//! uses one of a higher layer: the plan for splitting this crate into
//! layered crates (`core` ← `store` ← `check` ← `control` ← the `latchkey`
//! binary), kept true before any file moves so that the split is file
//! moves only.
//!
//! A module's references are every `crate::name` path in its source (use
//! trees included; comments and string literals are not code), and, for
//! `main.rs`, every `latchkey_authz::name`. Unit-test modules count too:
//! after the split a test of `core` cannot import `check` either.
//!
//! When this fails, the message names the edge to remove and where it is.
//! A new module must be given a layer in [`LAYERS`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

/// Every module of `src/`, by layer, lowest first. A module may use its own
/// layer's modules (without a cycle) and those of lower layers only.
const LAYERS: &[(&str, &[&str])] = &[
    (
        // Pure types and logic: the config model, who calls (principal,
        // agents), identities and the vault's ciphers, routing,
        // capabilities, policy, audit event types, the metrics registry,
        // random ids and digests in hex.
        "core",
        &[
            "agents",
            "audit",
            "capability",
            "config",
            "hex",
            "identity",
            "metrics",
            "policy",
            "principal",
            "routing",
            "vault",
        ],
    ),
    (
        // Redis and what is kept in it or next to it.
        "store",
        &[
            "audit_read",
            "audit_writer",
            "cache",
            "credentials",
            "otlp",
            "redis_backend",
            "settle",
            "store",
        ],
    ),
    (
        // The request path: parse → context → decide → answer.
        "check",
        &[
            "authn",
            "check",
            "consent",
            "context",
            "decision",
            "elicitation",
            "native",
            "oauth",
            "refresh",
            "reload",
            "respond",
        ],
    ),
    (
        // The admin API, the connect page and the HTTP side.
        "control",
        &["admin", "connect", "connect_page", "http", "state"],
    ),
    (
        // `latchkey`: serve and the operator's command line.
        "binary",
        &[
            "admin_client",
            "envoy_config",
            "grpc_tls",
            "istio",
            "main",
            "policy_tool",
        ],
    ),
];

/// External crates a layer must not name outside its unit tests.
const FORBIDDEN_CRATES: &[(&str, &[&str])] = &[
    (
        "core",
        &[
            "tokio", "redis", "axum", "tonic", "reqwest", "hyper", "moka",
        ],
    ),
    ("store", &["axum"]),
    ("check", &["axum"]),
];

/// Where one module refers to another: the first place, for the message.
#[derive(Debug, Clone)]
struct Site {
    file: String,
    line: usize,
    text: String,
}

impl std::fmt::Display for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "src/{}:{}: {}", self.file, self.line, self.text.trim())
    }
}

struct Module {
    /// Source with comments and literals blanked (same lines and columns).
    code: String,
    /// The same, cut before `#[cfg(test)]`'s `mod tests`.
    non_test_len: usize,
    /// Original lines, for messages.
    lines: Vec<String>,
}

fn modules() -> BTreeMap<String, Module> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("read src/") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        // The crate root only declares the modules.
        if name == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read module");
        let code = blank_comments_and_literals(&text);
        let non_test_len = code.find("#[cfg(test)]\nmod tests").unwrap_or(code.len());
        out.insert(
            name,
            Module {
                code,
                non_test_len,
                lines: text.lines().map(str::to_string).collect(),
            },
        );
    }
    out
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

/// Module → (module it refers to → first place it does).
fn graph(modules: &BTreeMap<String, Module>) -> BTreeMap<String, BTreeMap<String, Site>> {
    let mut g = BTreeMap::new();
    for (name, m) in modules {
        let mut refs = references(&m.code, "crate");
        if name == "main" {
            refs.extend(references(&m.code, "latchkey_authz"));
        }
        let mut edges: BTreeMap<String, Site> = BTreeMap::new();
        for (to, offset) in refs {
            if &to == name || !modules.contains_key(&to) {
                continue;
            }
            let line = m.code[..offset].matches('\n').count();
            edges.entry(to).or_insert_with(|| Site {
                file: format!("{name}.rs"),
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

fn layer_of() -> BTreeMap<&'static str, (usize, &'static str)> {
    let mut out = BTreeMap::new();
    for (rank, (layer, members)) in LAYERS.iter().enumerate() {
        for m in *members {
            assert!(
                out.insert(*m, (rank, *layer)).is_none(),
                "tests/layers.rs: module `{m}` is in LAYERS twice"
            );
        }
    }
    out
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
fn the_module_graph_has_no_cycle() {
    let g = graph(&modules());
    let layers = layer_of();
    let reaches: BTreeMap<&str, BTreeSet<&str>> =
        g.keys().map(|m| (m.as_str(), reach(&g, m))).collect();
    let mut placed = BTreeSet::new();
    let mut found = String::new();
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
            "{} modules import each other: {}\n",
            component.len(),
            component.join(", ")
        );
        // One shortest cycle through each module not yet shown on one.
        let mut shown: BTreeSet<String> = BTreeSet::new();
        for start in &component {
            if shown.contains(*start) {
                continue;
            }
            let cycle = shortest_cycle(&g, start).expect("on a cycle");
            found += &format!("  {} → {start}\n", cycle.join(" → "));
            for (k, from) in cycle.iter().enumerate() {
                let to = &cycle[(k + 1) % cycle.len()];
                let against = match (layers.get(from.as_str()), layers.get(to.as_str())) {
                    (Some((a, _)), Some((b, _))) if b > a => "  ← against LAYERS: remove this one",
                    _ => "",
                };
                found += &format!("    {from} → {to}: {}{against}\n", g[from][to]);
            }
            shown.extend(cycle.iter().cloned());
        }
    }
    assert!(
        found.is_empty(),
        "the modules of authz-service import each other in a cycle; remove one edge of each \
         cycle below (move the piece both need into the lower module, or into a new one both \
         use):\n{found}"
    );
}

#[test]
fn no_module_uses_one_of_a_higher_layer() {
    let modules = modules();
    let layers = layer_of();
    let unplaced: Vec<&String> = modules
        .keys()
        .filter(|m| !layers.contains_key(m.as_str()))
        .collect();
    assert!(
        unplaced.is_empty(),
        "give these modules a layer in LAYERS (tests/layers.rs): {unplaced:?}"
    );
    let gone: Vec<&&str> = layers
        .keys()
        .filter(|m| !modules.contains_key(**m))
        .collect();
    assert!(
        gone.is_empty(),
        "LAYERS (tests/layers.rs) names modules src/ does not have: {gone:?}"
    );
    let mut wrong = Vec::new();
    for (from, edges) in graph(&modules) {
        let (rank, layer) = layers[from.as_str()];
        for (to, site) in edges {
            let (to_rank, to_layer) = layers[to.as_str()];
            if to_rank > rank {
                wrong.push(format!(
                    "  {layer} module `{from}` uses {to_layer} module `{to}`: {site}\n"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "a lower layer may not use a higher one (core ← store ← check ← control ← binary); \
         remove each edge below, e.g. by moving the piece both need down a layer:\n{}",
        wrong.concat()
    );
}

#[test]
fn lower_layers_name_no_crate_of_a_higher_one() {
    let modules = modules();
    let layers = layer_of();
    let mut wrong = Vec::new();
    for (name, m) in &modules {
        let Some((_, layer)) = layers.get(name.as_str()) else {
            continue;
        };
        let Some((_, crates)) = FORBIDDEN_CRATES.iter().find(|(l, _)| l == layer) else {
            continue;
        };
        let code = &m.code[..m.non_test_len];
        for krate in *crates {
            if let Some((_, offset)) = references(code, krate).first() {
                let line = code[..*offset].matches('\n').count();
                wrong.push(format!(
                    "  {layer} module `{name}` uses `{krate}`: src/{name}.rs:{}: {}\n",
                    line + 1,
                    m.lines[line].trim()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "these crates belong to a higher layer (core is pure; the request path has no axum):\n{}",
        wrong.concat()
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
