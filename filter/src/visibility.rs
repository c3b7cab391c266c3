//! What a caller may see: allow and deny patterns over tool names, prompt
//! names and resource URIs. The service builds one from policy and sends it
//! with an allowed list request; the filter trims the list with it. The
//! service judges calls with the same matcher, so a name is listed exactly
//! when calling it is allowed.
//!
//! Matching rules, chosen so that a pattern can never be dodged:
//! * `*` matches any run of characters (including none), `?` one character;
//! * an allow matches exactly (names are case-sensitive in MCP), a deny
//!   matches ignoring case (a deny on `delete_*` also hides `Delete_repo`,
//!   in case the upstream is lenient);
//! * deny wins over allow, and nothing is visible unless allowed;
//! * a tool name outside SEP-986's characters (ASCII letters, digits, `_`
//!   `-` `.` `/`, 1 to 128 of them) is never visible, so look-alike names
//!   (Cyrillic `е` for `e`, zero-width spaces) cannot slip past a deny;
//! * an empty name or URI is never visible;
//! * a resource URI is judged in its canonical form ([`crate::uri`]), the
//!   one the upstream acts on, so `a/../secret` is judged as `secret`; a
//!   URI with no unambiguous canonical form is never visible. Resource
//!   patterns are written in canonical form (checked when policy loads).

use std::collections::{BTreeMap, HashSet};

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use wildmatch::WildMatch;

/// The field of `CheckResponse.dynamic_metadata` that carries a [`Visibility`].
pub const VISIBILITY_KEY: &str = "visibility";

/// The field of a visibility struct holding the acting agent's own view.
const AGENT_KEY: &str = "agent";

/// The field of a visibility struct holding the views of a union.
const ANY_OF_KEY: &str = "any_of";

/// The kinds of things a policy rules over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemKind {
    Tool,
    Prompt,
    /// Resources by URI; also rules resource templates by their URI template.
    Resource,
}

impl ItemKind {
    pub const ALL: [ItemKind; 3] = [ItemKind::Tool, ItemKind::Prompt, ItemKind::Resource];

    /// Key in the visibility struct and in policy config.
    pub fn key(self) -> &'static str {
        match self {
            ItemKind::Tool => "tools",
            ItemKind::Prompt => "prompts",
            ItemKind::Resource => "resources",
        }
    }

    /// The singular, for messages.
    pub fn noun(self) -> &'static str {
        match self {
            ItemKind::Tool => "tool",
            ItemKind::Prompt => "prompt",
            ItemKind::Resource => "resource",
        }
    }

    /// The kind a method that names one item acts on.
    pub fn of_method(method: &str) -> Option<ItemKind> {
        match method {
            "tools/call" => Some(ItemKind::Tool),
            "prompts/get" => Some(ItemKind::Prompt),
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                Some(ItemKind::Resource)
            }
            _ => None,
        }
    }
}

/// A list method whose result the filter trims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListShape {
    pub kind: ItemKind,
    /// The array in the result (`tools`, `resourceTemplates`, ...).
    pub field: &'static str,
    /// The member of each entry that is matched (`name`, `uri`, ...).
    pub name_field: &'static str,
}

impl ListShape {
    /// Every list: a result carrying one of these fields is a list,
    /// whatever request it answers.
    pub const ALL: [ListShape; 4] = [
        ListShape::new(ItemKind::Tool, "tools", "name"),
        ListShape::new(ItemKind::Prompt, "prompts", "name"),
        ListShape::new(ItemKind::Resource, "resources", "uri"),
        ListShape::new(ItemKind::Resource, "resourceTemplates", "uriTemplate"),
    ];

    const fn new(kind: ItemKind, field: &'static str, name_field: &'static str) -> ListShape {
        ListShape {
            kind,
            field,
            name_field,
        }
    }

    /// The list whose result carries `field`, if any.
    pub fn of_field(field: &str) -> Option<ListShape> {
        ListShape::ALL.into_iter().find(|s| s.field == field)
    }

    pub fn of_method(method: &str) -> Option<ListShape> {
        let (kind, field, name_field) = match method {
            "tools/list" => (ItemKind::Tool, "tools", "name"),
            "prompts/list" => (ItemKind::Prompt, "prompts", "name"),
            "resources/list" => (ItemKind::Resource, "resources", "uri"),
            "resources/templates/list" => (ItemKind::Resource, "resourceTemplates", "uriTemplate"),
            _ => return None,
        };
        Some(ListShape {
            kind,
            field,
            name_field,
        })
    }
}

/// Whether `name` is a tool name per SEP-986.
pub fn valid_tool_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./".contains(&b))
}

/// One compiled list of patterns: names without wildcards in a set (one
/// hash lookup however many there are), the rest as globs.
#[derive(Debug, Clone, Default)]
struct PatternSet {
    sources: Vec<String>,
    exact: HashSet<String>,
    globs: Vec<WildMatch>,
    ignore_case: bool,
}

fn has_wildcard(p: &str) -> bool {
    p.contains(['*', '?'])
}

impl PatternSet {
    fn new(patterns: &[String], ignore_case: bool) -> PatternSet {
        let mut set = PatternSet {
            sources: patterns.to_vec(),
            ignore_case,
            ..PatternSet::default()
        };
        for p in patterns {
            if has_wildcard(p) {
                set.globs.push(if ignore_case {
                    WildMatch::new_case_insensitive(p)
                } else {
                    WildMatch::new(p)
                });
            } else if ignore_case {
                set.exact.insert(p.to_lowercase());
            } else {
                set.exact.insert(p.clone());
            }
        }
        set
    }

    fn matches(&self, name: &str) -> bool {
        let exact = if self.ignore_case {
            !self.exact.is_empty() && self.exact.contains(&name.to_lowercase())
        } else {
            self.exact.contains(name)
        };
        exact || self.globs.iter().any(|g| g.matches(name))
    }
}

/// Allow and deny patterns for one kind.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    allow: PatternSet,
    deny: PatternSet,
}

impl Rules {
    pub fn new(allow: &[String], deny: &[String]) -> Rules {
        Rules {
            allow: PatternSet::new(allow, false),
            deny: PatternSet::new(deny, true),
        }
    }

    /// Every name (still subject to the name rules).
    pub fn everything() -> Rules {
        Rules::new(&["*".to_owned()], &[])
    }

    pub fn allow_patterns(&self) -> &[String] {
        &self.allow.sources
    }

    pub fn deny_patterns(&self) -> &[String] {
        &self.deny.sources
    }

    pub fn allows(&self, name: &str) -> bool {
        self.allow.matches(name)
    }

    pub fn denies(&self, name: &str) -> bool {
        self.deny.matches(name)
    }
}

/// Whether a pattern (as written in policy) matches `name`: the allow
/// semantics. Used by tools that explain or lint policy.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    if has_wildcard(pattern) {
        WildMatch::new(pattern).matches(name)
    } else {
        pattern == name
    }
}

/// The caller's view of one server assignment. When an agent acts for the
/// user, `agent` is the agent's own view: a name must be in both. A union
/// (`any_of`, see [`Visibility::union`]) sees what any of its views sees.
#[derive(Debug, Clone, Default)]
pub struct Visibility {
    tools: Rules,
    prompts: Rules,
    resources: Rules,
    agent: Option<Box<Visibility>>,
    any_of: Vec<Visibility>,
}

impl Visibility {
    /// Sees everything: the view when no policy is configured.
    pub fn everything() -> Visibility {
        Visibility {
            tools: Rules::everything(),
            prompts: Rules::everything(),
            resources: Rules::everything(),
            agent: None,
            any_of: Vec::new(),
        }
    }

    pub fn new(tools: Rules, prompts: Rules, resources: Rules) -> Visibility {
        Visibility {
            tools,
            prompts,
            resources,
            agent: None,
            any_of: Vec::new(),
        }
    }

    /// What any of `views` sees: the view of a combined endpoint, whose
    /// list shows every name one of its assignments shows. Each view keeps
    /// its own agent narrowing. No views: nothing is visible.
    pub fn union(views: Vec<Visibility>) -> Visibility {
        let mut views = views;
        if views.len() == 1 {
            return views.remove(0);
        }
        Visibility {
            any_of: views,
            ..Visibility::default()
        }
    }

    /// This view narrowed to what `agent` may also see (the intersection).
    pub fn and_agent(mut self, agent: Visibility) -> Visibility {
        self.agent = Some(Box::new(agent));
        self
    }

    pub fn rules(&self, kind: ItemKind) -> &Rules {
        match kind {
            ItemKind::Tool => &self.tools,
            ItemKind::Prompt => &self.prompts,
            ItemKind::Resource => &self.resources,
        }
    }

    /// Whether `name` can be visible at all, whatever the patterns say.
    pub fn name_allowed(kind: ItemKind, name: &str) -> bool {
        !name.is_empty() && (kind != ItemKind::Tool || valid_tool_name(name))
    }

    /// Whether the caller may see (and so call, get or read) `name`.
    pub fn permits(&self, kind: ItemKind, name: &str) -> bool {
        if kind == ItemKind::Resource {
            return crate::uri::canonical(name).is_ok_and(|c| self.permits_as_is(kind, &c));
        }
        self.permits_as_is(kind, name)
    }

    /// [`Visibility::permits`] for a name already in canonical form.
    fn permits_as_is(&self, kind: ItemKind, name: &str) -> bool {
        if !Visibility::name_allowed(kind, name) {
            return false;
        }
        if !self.any_of.is_empty() {
            return self.any_of.iter().any(|v| v.permits_as_is(kind, name));
        }
        let rules = self.rules(kind);
        rules.allows(name)
            && !rules.denies(name)
            && self
                .agent
                .as_ref()
                .is_none_or(|a| a.permits_as_is(kind, name))
    }

    /// As a protobuf struct, for `CheckResponse.dynamic_metadata`:
    /// `{tools: {allow: [...], deny: [...]}, prompts: ..., resources: ...}`.
    pub fn to_struct(&self) -> Struct {
        let list = |patterns: &[String]| Value {
            kind: Some(Kind::ListValue(ListValue {
                values: patterns
                    .iter()
                    .map(|p| Value {
                        kind: Some(Kind::StringValue(p.clone())),
                    })
                    .collect(),
            })),
        };
        let mut fields = BTreeMap::new();
        for kind in ItemKind::ALL {
            let rules = self.rules(kind);
            let mut inner = BTreeMap::new();
            inner.insert("allow".to_owned(), list(rules.allow_patterns()));
            inner.insert("deny".to_owned(), list(rules.deny_patterns()));
            fields.insert(
                kind.key().to_owned(),
                Value {
                    kind: Some(Kind::StructValue(Struct { fields: inner })),
                },
            );
        }
        if let Some(agent) = &self.agent {
            fields.insert(
                AGENT_KEY.to_owned(),
                Value {
                    kind: Some(Kind::StructValue(agent.to_struct())),
                },
            );
        }
        if !self.any_of.is_empty() {
            let views = self
                .any_of
                .iter()
                .map(|v| Value {
                    kind: Some(Kind::StructValue(v.to_struct())),
                })
                .collect();
            fields.insert(
                ANY_OF_KEY.to_owned(),
                Value {
                    kind: Some(Kind::ListValue(ListValue { values: views })),
                },
            );
        }
        Struct { fields }
    }

    /// Reads [`Visibility::to_struct`] back. A kind that is missing or not a
    /// struct of string lists sees nothing (fail closed).
    pub fn from_struct(s: &Struct) -> Visibility {
        let strings = |v: Option<&Value>| -> Vec<String> {
            match v.and_then(|v| v.kind.as_ref()) {
                Some(Kind::ListValue(l)) => l
                    .values
                    .iter()
                    .filter_map(|v| match &v.kind {
                        Some(Kind::StringValue(s)) => Some(s.clone()),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            }
        };
        let rules = |kind: ItemKind| match s.fields.get(kind.key()).and_then(|v| v.kind.as_ref()) {
            Some(Kind::StructValue(inner)) => Rules::new(
                &strings(inner.fields.get("allow")),
                &strings(inner.fields.get("deny")),
            ),
            _ => Rules::default(),
        };
        let agent = match s.fields.get(AGENT_KEY).map(|v| &v.kind) {
            None => None,
            Some(Some(Kind::StructValue(inner))) => Some(Box::new(Visibility::from_struct(inner))),
            // Present but unreadable: the agent sees nothing.
            Some(_) => Some(Box::default()),
        };
        // A union's own rules are empty; an unreadable member sees nothing.
        let any_of = match s.fields.get(ANY_OF_KEY).and_then(|v| v.kind.as_ref()) {
            Some(Kind::ListValue(l)) => l
                .values
                .iter()
                .map(|v| match &v.kind {
                    Some(Kind::StructValue(inner)) => Visibility::from_struct(inner),
                    _ => Visibility::default(),
                })
                .collect(),
            _ => Vec::new(),
        };
        Visibility {
            tools: rules(ItemKind::Tool),
            prompts: rules(ItemKind::Prompt),
            resources: rules(ItemKind::Resource),
            agent,
            any_of,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn tools(allow: &[&str], deny: &[&str]) -> Visibility {
        Visibility::new(
            Rules::new(&strings(allow), &strings(deny)),
            Rules::default(),
            Rules::default(),
        )
    }

    #[test]
    fn default_is_deny_and_deny_wins() {
        let v = tools(&["get-*", "echo"], &["get-env"]);
        assert!(v.permits(ItemKind::Tool, "echo"));
        assert!(v.permits(ItemKind::Tool, "get-sum"));
        assert!(!v.permits(ItemKind::Tool, "get-env"));
        assert!(!v.permits(ItemKind::Tool, "add"));
        assert!(
            !v.permits(ItemKind::Prompt, "echo"),
            "no prompt rules: none"
        );
        assert!(!Visibility::default().permits(ItemKind::Tool, "echo"));
    }

    #[test]
    fn allow_is_case_sensitive_deny_is_not() {
        let v = tools(&["*"], &["delete_*"]);
        assert!(!v.permits(ItemKind::Tool, "Delete_repo"));
        assert!(!v.permits(ItemKind::Tool, "DELETE_REPO"));
        let v = tools(&["echo"], &[]);
        assert!(!v.permits(ItemKind::Tool, "Echo"));
        let v = tools(&["*"], &["Get-Env"]);
        assert!(!v.permits(ItemKind::Tool, "get-env"));
    }

    #[test]
    fn look_alikes_separators_and_empty_names_are_never_visible() {
        let v = tools(&["*"], &["delete_*"]);
        // Cyrillic е (U+0435) instead of e.
        assert!(!v.permits(ItemKind::Tool, "d\u{0435}lete_repo"));
        assert!(!v.permits(ItemKind::Tool, "delete\u{200b}_repo"));
        assert!(!v.permits(ItemKind::Tool, "echo tool"));
        assert!(!v.permits(ItemKind::Tool, ""));
        assert!(!v.permits(ItemKind::Tool, &"a".repeat(129)));
        assert!(v.permits(ItemKind::Tool, "admin.tools/list"));
        // A separator is a character like any other: `get_*` is not `get-*`.
        let v = tools(&["get_*"], &[]);
        assert!(!v.permits(ItemKind::Tool, "get-sum"));
        assert!(v.permits(ItemKind::Tool, "get_sum"));
    }

    #[test]
    fn question_mark_is_one_character_and_star_may_be_empty() {
        let v = tools(&["tool-?", "x*"], &[]);
        assert!(v.permits(ItemKind::Tool, "tool-1"));
        assert!(!v.permits(ItemKind::Tool, "tool-12"));
        assert!(!v.permits(ItemKind::Tool, "tool-"));
        assert!(v.permits(ItemKind::Tool, "x"));
    }

    #[test]
    fn resources_match_uris_including_slashes() {
        let v = Visibility::new(
            Rules::default(),
            Rules::default(),
            Rules::new(
                &strings(&["demo://resource/static/*"]),
                &strings(&["*/secret*"]),
            ),
        );
        assert!(v.permits(ItemKind::Resource, "demo://resource/static/document/a.md"));
        assert!(!v.permits(ItemKind::Resource, "demo://resource/static/secret.md"));
        assert!(!v.permits(ItemKind::Resource, "demo://resource/dynamic/1"));
        assert!(!v.permits(ItemKind::Resource, ""));
    }

    #[test]
    fn resources_are_judged_by_their_canonical_uri() {
        let v = Visibility::new(
            Rules::default(),
            Rules::default(),
            Rules::new(
                &strings(&["demo://resource/static/*"]),
                &strings(&["*/static/secret*"]),
            ),
        );
        let u = Visibility::union(vec![v.clone(), Visibility::default()]);
        for view in [&v, &u] {
            assert!(!view.permits(ItemKind::Resource, "demo://resource/static/../dynamic/1"));
            assert!(view.permits(ItemKind::Resource, "DEMO://Resource/static/a/../b"));
            assert!(!view.permits(ItemKind::Resource, "demo://resource/static/./secret.md"));
            assert!(!view.permits(ItemKind::Resource, "demo://resource/static/%73ecret.md"));
            // No single meaning: never visible, even where a glob would match.
            assert!(!view.permits(ItemKind::Resource, "demo://resource/static/%2e%2e/x"));
            assert!(!view.permits(ItemKind::Resource, "demo://resource/static//secret.md"));
        }
    }

    #[test]
    fn struct_round_trip_and_missing_kinds_fail_closed() {
        let v = Visibility::new(
            Rules::new(&strings(&["a*", "b"]), &strings(&["ab"])),
            Rules::everything(),
            Rules::default(),
        );
        let back = Visibility::from_struct(&v.to_struct());
        for name in ["a", "abc", "b", "ab", "c"] {
            assert_eq!(
                back.permits(ItemKind::Tool, name),
                v.permits(ItemKind::Tool, name),
                "{name}"
            );
        }
        assert!(back.permits(ItemKind::Prompt, "anything"));
        assert!(!back.permits(ItemKind::Resource, "x://y"));
        let empty = Visibility::from_struct(&Struct::default());
        assert!(!empty.permits(ItemKind::Tool, "a"));
    }

    #[test]
    fn an_agent_narrows_the_view_and_survives_the_round_trip() {
        let user = tools(&["*"], &["drop_*"]);
        let v = user.and_agent(tools(&["read_*", "drop_table"], &[]));
        assert!(v.permits(ItemKind::Tool, "read_rows"));
        assert!(
            !v.permits(ItemKind::Tool, "write_rows"),
            "user yes, agent no"
        );
        assert!(
            !v.permits(ItemKind::Tool, "drop_table"),
            "agent yes, user no"
        );
        let back = Visibility::from_struct(&v.to_struct());
        for name in ["read_rows", "write_rows", "drop_table"] {
            assert_eq!(
                back.permits(ItemKind::Tool, name),
                v.permits(ItemKind::Tool, name)
            );
        }
        let mut broken = v.to_struct();
        broken.fields.insert(
            AGENT_KEY.into(),
            Value {
                kind: Some(Kind::StringValue("x".into())),
            },
        );
        assert!(!Visibility::from_struct(&broken).permits(ItemKind::Tool, "read_rows"));
    }

    #[test]
    fn a_union_sees_what_any_view_sees_and_survives_the_round_trip() {
        let shared = tools(&["get_*", "list_*"], &["get_secret"]);
        let mine = tools(&["create_*", "get_secret"], &[])
            .and_agent(tools(&["create_issue", "get_secret"], &[]));
        let u = Visibility::union(vec![shared, mine]);
        assert!(u.permits(ItemKind::Tool, "get_repo"), "from the first");
        assert!(u.permits(ItemKind::Tool, "create_issue"), "from the second");
        assert!(
            u.permits(ItemKind::Tool, "get_secret"),
            "a deny in one view does not hide what another shows"
        );
        assert!(
            !u.permits(ItemKind::Tool, "create_repo"),
            "each view keeps its agent narrowing"
        );
        assert!(!u.permits(ItemKind::Tool, "delete_repo"));
        assert!(!u.permits(ItemKind::Tool, "get_r\u{0435}po"));
        assert!(!u.permits(ItemKind::Prompt, "get_repo"));
        let back = Visibility::from_struct(&u.to_struct());
        for name in ["get_repo", "create_issue", "get_secret", "create_repo", "x"] {
            assert_eq!(
                back.permits(ItemKind::Tool, name),
                u.permits(ItemKind::Tool, name),
                "{name}"
            );
        }
        // One view is that view; none sees nothing.
        let one = Visibility::union(vec![tools(&["a"], &[])]);
        assert!(one.permits(ItemKind::Tool, "a"));
        assert!(one.any_of.is_empty());
        assert!(!Visibility::union(Vec::new()).permits(ItemKind::Tool, "a"));
        // An unreadable member sees nothing; the others still count.
        let mut broken = u.to_struct();
        if let Some(Value {
            kind: Some(Kind::ListValue(l)),
        }) = broken.fields.get_mut(ANY_OF_KEY)
        {
            l.values[0] = Value {
                kind: Some(Kind::StringValue("x".into())),
            };
        }
        let back = Visibility::from_struct(&broken);
        assert!(!back.permits(ItemKind::Tool, "get_repo"));
        assert!(back.permits(ItemKind::Tool, "create_issue"));
    }

    #[test]
    fn list_shapes() {
        let s = ListShape::of_method("resources/templates/list").unwrap();
        assert_eq!(
            (s.kind, s.field, s.name_field),
            (ItemKind::Resource, "resourceTemplates", "uriTemplate")
        );
        assert!(ListShape::of_method("tools/call").is_none());
        assert_eq!(
            ItemKind::of_method("resources/subscribe"),
            Some(ItemKind::Resource)
        );
    }
}
