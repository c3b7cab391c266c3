//! The bodies of the service's fuzz targets, one plain function each
//! (`fn(&[u8])`). libFuzzer calls them from `fuzz_targets/<name>.rs`
//! (nightly, `scripts/fuzz`); `authz-service/tests/fuzz_corpus.rs` includes
//! this file and calls them on stable for every file of `corpus/<name>/`.
//!
//! What each asserts for every input:
//!
//! * `context`: a `CheckRequest` is read the same whether the MCP message
//!   comes from the filter's `latchkey.mcp` metadata or (native ext_authz)
//!   from the forwarded body, and attacker-chosen lists stay bounded.
//! * `policy`: for any grants, callers and names, what `decide` hides is
//!   exactly what the filter's copy of the caller's view (`visibility`,
//!   through its protobuf form) hides, and what `explain` tells operators.
//! * `request_state`: a state Latchkey sealed opens to the same claims;
//!   any other string (a changed byte, another caller, another call) is
//!   refused.
//! * `config`: a config `Config::parse` accepts upholds what validation
//!   promises, and compiles to a policy (or a clear error) without panics.

use std::collections::HashMap;

use arbitrary::{Arbitrary, Unstructured};
use latchkey_check::consent::{self, StateClaims, StateError};
use latchkey_check::context::RequestContext;
use latchkey_core::config::{Config, ServerAuth};
use latchkey_core::policy::{Policy, Verdict};
use latchkey_core::principal::Caller;
use latchkey_core::vault::KeyRing;
use latchkey_filter::mcp;
use latchkey_filter::visibility::{ItemKind, Visibility};
use latchkey_proto::auth::attribute_context::{HttpRequest, Peer, Request};
use latchkey_proto::auth::{AttributeContext, CheckRequest};
use latchkey_proto::core::Metadata;
use serde_json::Value;

/// A target: its name (the file in `fuzz_targets/` and the folder in
/// `corpus/`) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("context", context),
    ("policy", policy),
    ("request_state", request_state),
    ("config", config),
];

/// Ids compared by JSON-RPC meaning: strings exactly, numbers by value.
fn same_id(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(Value::String(x)), Some(Value::String(y))) => x == y,
        (Some(Value::Number(x)), Some(Value::Number(y))) => x.as_f64() == y.as_f64(),
        _ => false,
    }
}

// ----------------------------------------------------------------- context

/// Input: header lines (`name: value`), a blank line, the body, as for the
/// filter's `classify` target; `:method`, `:authority` and `:path` fill the
/// `HttpRequest` fields Envoy sets.
pub fn context(data: &[u8]) {
    let (headers, body) = headers_and_body(data);
    let mut http = HttpRequest {
        method: mcp::header(&headers, ":method")
            .unwrap_or("POST")
            .to_owned(),
        path: mcp::header(&headers, ":path").unwrap_or("/mcp").to_owned(),
        raw_body: body.to_vec(),
        ..HttpRequest::default()
    };
    // Envoy hands over a map; the first of a repeated header wins here.
    for (name, value) in headers.iter().rev() {
        http.headers.insert(name.clone(), value.clone());
    }
    let check = |metadata: Option<prost_types::Struct>| CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                principal: "spiffe://corp/ns/agents/sa/bot".into(),
                ..Peer::default()
            }),
            request: Some(Request {
                http: Some(http.clone()),
                ..Request::default()
            }),
            metadata_context: metadata.map(|m| Metadata {
                filter_metadata: HashMap::from([(
                    latchkey_proto::MCP_METADATA_NAMESPACE.to_owned(),
                    m,
                )]),
            }),
            ..AttributeContext::default()
        }),
    };

    // Native ext_authz: the service classifies the forwarded body itself.
    let mut as_sent: Vec<(String, String)> = http
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if mcp::header(&as_sent, ":method").is_none() {
        as_sent.push((":method".into(), http.method.clone()));
    }
    let classified = mcp::classify(&as_sent, body);
    let native = RequestContext::from_check(&check(None));
    match (&classified, &native) {
        (Ok(m), Ok(ctx)) => assert_eq!(ctx.mcp.as_ref(), Some(m)),
        (Err(e), Err(bad)) => {
            assert_eq!(
                (bad.http_status, bad.jsonrpc_code, &bad.message, &bad.id),
                (e.http_status, e.jsonrpc_code, &e.message, &e.id)
            );
        }
        _ => panic!("native context {native:?} but the filter's rules say {classified:?}"),
    }

    // Behind the Wasm filter: the same message as metadata.
    if let Ok(m) = &classified {
        let ctx = RequestContext::from_check(&check(Some(m.to_metadata())))
            .expect("a Check with the filter's metadata is readable");
        let got = ctx.mcp.as_ref().expect("the filter's message is used");
        assert_eq!(
            (got.kind, &got.method, &got.name),
            (m.kind, &m.method, &m.name)
        );
        assert_eq!(
            (&got.protocol_version, &got.session_id),
            (&m.protocol_version, &m.session_id)
        );
        assert!(
            same_id(got.id.as_ref(), m.id.as_ref()),
            "{:?} {:?}",
            got.id,
            m.id
        );
        check_bounds(&ctx);
        let _ = ctx.tool_arguments();
        let _ = ctx.completion_ref();
    }
    if let Ok(ctx) = &native {
        check_bounds(ctx);
        assert_eq!(
            ctx.peer_principal.as_deref(),
            Some("spiffe://corp/ns/agents/sa/bot")
        );
        let _ = ctx.tool_arguments();
        let _ = ctx.completion_ref();
    }
}

fn check_bounds(ctx: &RequestContext) {
    assert!(ctx.rejected_credentials.len() <= 32);
    for c in &ctx.rejected_credentials {
        assert!(!c.is_empty() && !c.contains(',') && c.trim() == c, "{c:?}");
    }
}

/// The headers and body of a `context` input.
fn headers_and_body(data: &[u8]) -> (Vec<(String, String)>, &[u8]) {
    let Some(at) = data.windows(2).position(|w| w == b"\n\n") else {
        return (
            vec![
                (":method".into(), "POST".into()),
                ("content-type".into(), "application/json".into()),
            ],
            data,
        );
    };
    let headers = String::from_utf8_lossy(&data[..at])
        .lines()
        .map(|line| match line.get(1..).and_then(|l| l.split_once(':')) {
            // A leading ':' belongs to the name (`:method`).
            Some((name, value)) => (
                format!("{}{name}", &line[..1]),
                value.trim_start_matches(' ').to_owned(),
            ),
            None => (line.to_owned(), String::new()),
        })
        .collect();
    (headers, &data[at + 2..])
}

// ------------------------------------------------------------------ policy

/// Names, patterns, roles and agents the generated policies draw from:
/// globs, case variants, URIs and names no tool may have.
const NAMES: &[&str] = &[
    "*",
    "get_*",
    "get_issue",
    "GET_ISSUE",
    "get_secret*",
    "get_secret_key",
    "create_issue",
    "delete_*",
    "delete_repo",
    "?",
    "a",
    "review",
    "file:///*",
    "file:///etc/passwd",
    "demo://resource/*",
    "bad name",
];
const PRINCIPALS: &[&str] = &["*", "alice", "bob", "eng", "platform", "engineers", "bot"];

fn pick<'a>(list: &[&'a str], i: u8) -> &'a str {
    list[usize::from(i) % list.len()]
}

fn toml_list(list: &[&str], picks: &[u8]) -> String {
    let items: Vec<String> = picks
        .iter()
        .take(4)
        .map(|i| Value::from(pick(list, *i)).to_string())
        .collect();
    format!("[{}]", items.join(", "))
}

#[derive(Debug, Arbitrary)]
struct PolicyCase {
    /// `[policy.roles]`: role → claim values.
    roles: Vec<(u8, Vec<u8>)>,
    grants: Vec<GrantCase>,
    callers: Vec<CallerCase>,
    probes: Vec<(u8, u8)>,
}

#[derive(Debug, Arbitrary)]
struct GrantCase {
    /// Which of the two assignments.
    second: bool,
    users: Vec<u8>,
    roles: Vec<u8>,
    /// Agents instead of people.
    agents: Option<Vec<u8>>,
    patterns: [(Vec<u8>, Vec<u8>); 3],
    /// A constraint on a tool pattern: `max_length = 2` on `/x`.
    constraint: Option<u8>,
}

#[derive(Debug, Arbitrary)]
struct CallerCase {
    subject: u8,
    roles: Vec<u8>,
    agent: Option<u8>,
    headless: bool,
    /// `arguments.x` of a tool call, as a string of this length.
    x_len: Option<u8>,
}

const POLICY_BASE: &str = concat!(
    include_str!("../../testdata/gateway.toml"),
    r#"
[[gateways.assignments]]
name = "gh"
server = "gh"
scheme = "per_user"
[[gateways.assignments]]
name = "ro"
server = "gh"
scheme = "shared"
identity = "svc"
[[agents]]
name = "bot"
"#
);

impl PolicyCase {
    fn config_text(&self) -> String {
        let mut text = POLICY_BASE.to_owned();
        text.push_str("[policy.roles]\n");
        let mut seen = Vec::new();
        for (role, values) in self.roles.iter().take(3) {
            let role = pick(PRINCIPALS, *role);
            if seen.contains(&role) {
                continue;
            }
            seen.push(role);
            text.push_str(&format!(
                "{} = {}\n",
                Value::from(role),
                toml_list(PRINCIPALS, values)
            ));
        }
        for (n, g) in self.grants.iter().take(6).enumerate() {
            text.push_str(&format!(
                "[[policy.grants]]\nname = \"g{n}\"\ngateway = \"g\"\nassignments = [\"{}\"]\n",
                if g.second { "ro" } else { "gh" }
            ));
            match &g.agents {
                Some(agents) => text.push_str(&format!(
                    "agents = {}\n",
                    toml_list(&["bot", "other"], agents)
                )),
                None => text.push_str(&format!(
                    "users = {}\nroles = {}\n",
                    toml_list(PRINCIPALS, &g.users),
                    toml_list(PRINCIPALS, &g.roles)
                )),
            }
            for (kind, (allow, deny)) in ["tools", "prompts", "resources"].iter().zip(&g.patterns) {
                text.push_str(&format!(
                    "{kind} = {{ allow = {}, deny = {} }}\n",
                    toml_list(NAMES, allow),
                    toml_list(NAMES, deny)
                ));
            }
            if let Some(tool) = g.constraint {
                text.push_str(&format!(
                    "[[policy.grants.constraints]]\ntool = {}\nargument = \"/x\"\nmax_length = 2\noptional = true\n",
                    Value::from(pick(NAMES, tool))
                ));
            }
        }
        text
    }
}

impl CallerCase {
    fn caller(&self) -> Caller {
        Caller {
            subject: pick(PRINCIPALS, self.subject).to_owned(),
            roles: self
                .roles
                .iter()
                .take(3)
                .map(|r| pick(PRINCIPALS, *r).to_owned())
                .collect(),
            agent: self.agent.map(|a| pick(&["bot", "other"], a).to_owned()),
            headless: self.headless && self.agent.is_some(),
            ..Caller::default()
        }
    }
}

/// Structure-aware: `arbitrary` builds grants, callers and names.
pub fn policy(data: &[u8]) {
    let Ok(case) = PolicyCase::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let text = case.config_text();
    let config = Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let policy = match Policy::compile(&config, &text) {
        Ok(p) => p,
        // Refusing a policy is fine as long as it says why.
        Err(e) => {
            assert!(!e.0.is_empty());
            return;
        }
    };
    assert!(policy.is_enforced());
    let _ = policy.lint();
    for c in case.callers.iter().take(4) {
        let caller = c.caller();
        for assignment in ["gh", "ro", "none"] {
            let view = policy
                .visibility("g", assignment, &caller)
                .expect("a [policy] is in force");
            // What the filter trims lists with: the protobuf form.
            let filters_view = Visibility::from_struct(&view.to_struct());
            for (kind, name) in case.probes.iter().take(8) {
                let kind = ItemKind::ALL[usize::from(*kind) % 3];
                let name = pick(NAMES, *name);
                let arguments = c
                    .x_len
                    .map(|n| serde_json::json!({ "x": "x".repeat(usize::from(n % 5)) }));
                let verdict =
                    policy.decide("g", assignment, &caller, kind, name, arguments.as_ref());
                // A resource URI with no canonical form is refused as
                // ambiguous, and no list ever shows it: not visible either.
                let hidden = matches!(verdict, Verdict::Hidden { .. } | Verdict::Ambiguous { .. });
                let at = format!("{kind:?} {name:?} on {assignment} for {caller:?}\n{text}");
                assert_eq!(
                    !hidden,
                    view.permits(kind, name),
                    "decide and visibility disagree: {at}"
                );
                assert_eq!(
                    !hidden,
                    filters_view.permits(kind, name),
                    "the filter's view disagrees: {at}"
                );
                assert_eq!(
                    !hidden,
                    policy.explain("g", assignment, &caller, kind, name).visible,
                    "explain disagrees: {at}"
                );
                if let Verdict::Violation { tool, .. } = &verdict {
                    assert_eq!((kind, tool.as_str()), (ItemKind::Tool, name));
                }
            }
        }
    }
}

// ----------------------------------------------------------- requestState

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=,k2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

#[derive(Debug, Arbitrary)]
struct StateCase {
    cid: String,
    sub: String,
    gw: String,
    asg: String,
    m: String,
    n: Option<String>,
    exp: i64,
    now: i64,
    second_key: bool,
    /// Byte edits to the sealed state.
    edits: Vec<(u16, u8)>,
    /// A field of the expected call changed (0: none).
    other: u8,
    /// Tried as a state as it is.
    raw: String,
}

/// Structure-aware: claims, clock and edits from `arbitrary`.
pub fn request_state(data: &[u8]) {
    let Ok(case) = StateCase::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let keys = KeyRing::parse(KEYS, None).expect("the test keys parse");
    let claims = StateClaims {
        cid: case.cid,
        sub: case.sub,
        gw: case.gw,
        asg: case.asg,
        m: case.m,
        n: case.n,
        exp: case.exp,
    };
    let kid = if case.second_key { "k2" } else { "k1" };
    let state = consent::seal_state(&keys, kid, &claims).expect("sealing works");
    assert!(state.starts_with(latchkey_filter::round_trip::REQUEST_STATE_PREFIX));
    assert!(consent::may_carry_request_state(state.as_bytes()));

    // Sealed → opens to the same claims, unless expired.
    let opened = consent::open_state(&keys, &state, case.now, &claims);
    if claims.exp < case.now {
        assert_eq!(opened, Err(StateError::Expired));
    } else {
        assert_eq!(opened.as_ref(), Ok(&claims));
    }
    // What travels in a message body comes back out of it.
    let message = serde_json::json!({"params": {"requestState": state}});
    assert_eq!(
        consent::latchkey_request_state(&message),
        Some(state.as_str())
    );

    // Issued for another caller or call: refused, whatever the clock says.
    let mut expected = claims.clone();
    match case.other % 6 {
        1 => expected.sub.push('x'),
        2 => expected.gw.push('x'),
        3 => expected.asg.push('x'),
        4 => expected.m.push('x'),
        5 => expected.n = Some(format!("{}x", expected.n.clone().unwrap_or_default())),
        _ => {}
    }
    if expected != claims {
        let now = claims.exp.saturating_sub(1);
        assert!(consent::open_state(&keys, &state, now, &expected).is_err());
    }

    // Changed bytes: never accepted (no second spelling of a state).
    let mut edited = state.clone().into_bytes();
    for (at, byte) in case.edits.iter().take(4) {
        if !edited.is_empty() {
            let at = usize::from(*at) % edited.len();
            edited[at] = *byte;
        }
    }
    if let Ok(edited) = String::from_utf8(edited)
        && edited != state
    {
        let now = claims.exp.saturating_sub(1);
        let result = consent::open_state(&keys, &edited, now, &claims);
        assert!(result.is_err(), "an edited state opened: {edited}");
    }

    // Any string: refused unless it is a state these keys sealed.
    for raw in [case.raw.clone(), format!("lk1.{}", case.raw)] {
        if let Ok(c) = consent::open_state(&keys, &raw, i64::MIN, &claims) {
            assert_eq!(c, claims);
        }
    }
}

// ------------------------------------------------------------------ config

/// Input: a config file's text.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::parse(text) else {
        return;
    };
    // What validation promises about every accepted config.
    assert!(config.vault.key_file.is_some() || config.vault.key_env.is_some());
    let mut servers: Vec<&str> = config.servers.iter().map(|s| s.name.as_str()).collect();
    servers.sort_unstable();
    let count = servers.len();
    servers.dedup();
    assert_eq!(servers.len(), count, "a server is declared twice");
    for s in &config.servers {
        if let ServerAuth::StaticHeader { header, .. } = &s.auth {
            assert!(!header.is_empty());
        }
    }
    let mut gateways = Vec::new();
    for g in &config.gateways {
        assert!(!g.name.is_empty() && !g.name.contains(':'), "{:?}", g.name);
        assert!(!gateways.contains(&g.name.as_str()), "gateway twice");
        gateways.push(g.name.as_str());
        assert!(g.public_url.host_str().is_some());
        let mut names = Vec::new();
        for a in &g.assignments {
            assert!(!a.name.is_empty() && !a.name.contains('/'), "{:?}", a.name);
            assert!(!names.contains(&a.name.as_str()), "assignment twice");
            names.push(a.name.as_str());
            assert!(config.server(&a.server).is_some());
            assert!(g.assignment(&a.name).is_some());
        }
        let _ = g.base_path();
        let _ = g.authority();
        let _ = g.resource_metadata_url();
    }
    match Policy::compile(&config, text) {
        Ok(policy) => {
            let _ = policy.lint();
        }
        Err(e) => assert!(!e.0.is_empty()),
    }
}
