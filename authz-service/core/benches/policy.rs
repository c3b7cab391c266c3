//! The cost of a policy decision against a policy of 1 000 rules: 250
//! grants on one assignment, each to one of 50 roles, with two allows, one
//! deny and one argument constraint (1 000 patterns and constraints in
//! all). The caller holds 3 roles, so 15 grants apply.
//! * `policy_decide_visible`: a `tools/call` of a visible tool whose grant
//!   has no constraint on it;
//! * `policy_decide_constrained`: a visible tool with a constraint checked;
//! * `policy_decide_hidden`: a tool no grant allows;
//! * `policy_visibility`: building the caller's view for a list request.

use criterion::{Criterion, criterion_group, criterion_main};
use latchkey_core::config::Config;
use latchkey_core::policy::Policy;
use latchkey_core::principal::Caller;
use latchkey_filter::visibility::ItemKind;
use serde_json::json;
use std::fmt::Write;
use std::hint::black_box;

const GRANTS: usize = 250;
const ROLES: usize = 50;

fn config_text() -> String {
    let mut t = String::from(concat!(
        include_str!("../../testdata/gateway.toml"),
        r#"
[[gateways.assignments]]
name = "gh"
server = "gh"
scheme = "shared"
identity = "gh-sa"
"#
    ));
    for i in 0..GRANTS {
        let _ = write!(
            t,
            r#"
[[policy.grants]]
name = "grant-{i}"
gateway = "g"
assignments = ["gh"]
roles = ["role-{r}"]
tools = {{ allow = ["tool_{i}", "ns{i}_*"], deny = ["ns{i}_admin*"] }}
[[policy.grants.constraints]]
tool = "tool_{i}"
argument = "/repo"
pattern = "org{i}/*"
"#,
            r = i % ROLES
        );
    }
    t
}

fn bench(c: &mut Criterion) {
    let text = config_text();
    let config = Config::parse(&text).expect("config");
    let policy = Policy::compile(&config, &text).expect("policy");
    // Roles 7, 8 and 9: grants 7, 8, 9, 57, 58, 59, ... apply.
    let caller = Caller {
        subject: "alice".into(),
        roles: vec!["role-7".into(), "role-8".into(), "role-9".into()],
        ..Caller::default()
    };
    let args = json!({"repo": "org207/api", "title": "x"});
    let decide = |name: &str| policy.decide("g", "gh", &caller, ItemKind::Tool, name, Some(&args));
    assert_eq!(
        decide("ns208_list"),
        latchkey_core::policy::Verdict::Allowed
    );
    assert_eq!(decide("tool_207"), latchkey_core::policy::Verdict::Allowed);
    assert!(matches!(
        decide("tool_3"),
        latchkey_core::policy::Verdict::Hidden { .. }
    ));
    c.bench_function("policy_decide_visible", |b| {
        b.iter(|| black_box(decide(black_box("ns208_list"))))
    });
    c.bench_function("policy_decide_constrained", |b| {
        b.iter(|| black_box(decide(black_box("tool_207"))))
    });
    c.bench_function("policy_decide_hidden", |b| {
        b.iter(|| black_box(decide(black_box("tool_3"))))
    });
    c.bench_function("policy_visibility", |b| {
        b.iter(|| black_box(policy.visibility("g", "gh", black_box(&caller))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
