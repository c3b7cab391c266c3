//! Tool-level policy: which tools, prompts and resources of a server
//! assignment a caller may see and call, and with which arguments.
//!
//! `[policy]` is compiled once per load into per-assignment grants with
//! their patterns already built (see `latchkey_filter::visibility`, which
//! the filter uses to trim lists, so lists and calls always agree). A
//! decision is a few set lookups and glob matches: no I/O, no allocation on
//! the allowed path beyond the list of grants that apply.
//!
//! Semantics: a grant applies to a caller named in its `users` (or `"*"`)
//! or holding one of its `roles`. Something is visible when an applying
//! grant allows it and none denies it (deny wins, default deny). A tool
//! call must also satisfy the argument constraints of at least one
//! applying grant that allows the tool. Grants may instead name `agents`:
//! on an assignment that has any, the acting agent (the token's client) is
//! judged the same way by its own grants, and the caller gets the
//! intersection, so an agent never gains more than the person it acts for.
//!
//! Policy judges what the upstream will act on: a resource URI, and a
//! `pattern` constraint's argument when it is a URI or a path, is matched
//! in its canonical form (`latchkey_filter::uri`), and one with no
//! unambiguous canonical form is refused ([`Verdict::Ambiguous`]) or
//! breaks the constraint. Patterns must be written in canonical form; a
//! policy whose patterns are not is refused at load with the spelling to
//! use.

use std::collections::{HashMap, HashSet};

use latchkey_filter::uri::{self, UriError};
use latchkey_filter::visibility::{ItemKind, Rules, Visibility, pattern_matches};
use serde_json::Value;

use crate::agents::AgentDirectory;
use crate::config::{Config, GrantConfig, HiddenAnswers, PatternsConfig};
use crate::principal::Caller;

mod approval;
mod condition;
mod constraint;
mod explain;
mod rules;
mod step_up;

use self::approval::ApprovalRule;
pub use self::approval::{ApprovalNeed, MAX_APPROVAL_TTL_SECS};
pub use self::condition::{CALL_ATTRIBUTES, CALLER_ATTRIBUTES, Condition, Facts, Reads};
use self::constraint::{Constraint, compile_constraint};
use self::rules::{PerAssignment, rules_of};
pub use self::step_up::StepUp;
use self::step_up::StepUpRule;

/// A policy that cannot be used; names the line of the grant at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

/// One compiled `[[policy.grants]]` entry, for one assignment.
#[derive(Debug)]
struct Grant {
    name: String,
    line: usize,
    any_user: bool,
    users: HashSet<String>,
    agents: HashSet<String>,
    roles: HashSet<String>,
    tools: Rules,
    prompts: Rules,
    resources: Rules,
    constraints: Vec<Constraint>,
    /// Tool pattern → scopes a call to a matching tool needs.
    scopes: Vec<(String, Vec<String>)>,
    /// The grant applies only while this holds for the caller.
    condition: Option<Condition>,
}

impl Grant {
    /// Whether the grant applies to the caller `facts` describe: a
    /// condition that fails to evaluate does not hold.
    fn holds(&self, facts: &Facts<'_>) -> bool {
        self.condition
            .as_ref()
            .is_none_or(|c| c.holds(facts).unwrap_or(false))
    }

    /// Every scope a call to `tool` needs under this grant, sorted.
    fn scopes_for(&self, tool: &str) -> Vec<String> {
        let mut all: Vec<String> = self
            .scopes
            .iter()
            .filter(|(p, _)| pattern_matches(p, tool))
            .flat_map(|(_, s)| s.iter().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    fn rules(&self, kind: ItemKind) -> &Rules {
        match kind {
            ItemKind::Tool => &self.tools,
            ItemKind::Prompt => &self.prompts,
            ItemKind::Resource => &self.resources,
        }
    }
}

/// The grants of one assignment, indexed by who they name, so finding the
/// ones that apply costs a lookup per role rather than a scan.
#[derive(Debug, Default)]
struct AssignmentGrants {
    grants: Vec<Grant>,
    everyone: Vec<usize>,
    by_user: HashMap<String, Vec<usize>>,
    by_role: HashMap<String, Vec<usize>>,
    by_agent: HashMap<String, Vec<usize>>,
}

impl AssignmentGrants {
    fn push(&mut self, grant: Grant) {
        let at = self.grants.len();
        if grant.any_user {
            self.everyone.push(at);
        }
        for u in &grant.users {
            self.by_user.entry(u.clone()).or_default().push(at);
        }
        for r in &grant.roles {
            self.by_role.entry(r.clone()).or_default().push(at);
        }
        for a in &grant.agents {
            self.by_agent.entry(a.clone()).or_default().push(at);
        }
        self.grants.push(grant);
    }
}

/// What the policy says about one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Go ahead.
    Allowed,
    /// The caller may not see the tool, prompt or resource named: answer
    /// as if it did not exist.
    Hidden { kind: ItemKind, name: String },
    /// A visible tool called with arguments that break a constraint.
    Violation { tool: String, message: String },
    /// A visible tool whose grants need token scopes the caller's token
    /// lacks: `scopes` are what a new token should carry for this call.
    InsufficientScope { tool: String, scopes: Vec<String> },
    /// A step-up rule needs a stronger (`acr_values`) or more recent
    /// (`max_age`) sign-in than the token shows (RFC 9470).
    StepUp(StepUp),
    /// A resource URI with no unambiguous canonical form: policy cannot
    /// know what the upstream would act on, so it is refused whatever the
    /// grants say (`problem` names the ambiguous part).
    Ambiguous {
        kind: ItemKind,
        name: String,
        problem: UriError,
    },
}

/// Why the grants that allow a tool do not cover one call of it.
enum Shortfall {
    Violation(String),
    Scopes(Vec<String>),
}

/// Why a name is or is not visible, for `latchkey policy check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub visible: bool,
    pub reason: String,
}

/// The compiled policy of a whole config.
#[derive(Debug)]
pub struct Policy {
    /// `None`: no `[policy]`, everything is visible.
    /// gateway → assignment → grants.
    grants: Option<HashMap<String, HashMap<String, AssignmentGrants>>>,
    /// Claim value → role names it gives.
    roles_by_claim: HashMap<String, Vec<String>>,
    /// gateway → assignment → step-up rules.
    step_up: PerAssignment<StepUpRule>,
    /// gateway → assignment → approval rules.
    approvals: PerAssignment<ApprovalRule>,
    pub hidden: HiddenAnswers,
    /// The provisioned agents (`[[agents]]`), reloaded with the grants.
    pub agents: AgentDirectory,
}

/// Whether `v` can stand in a `WWW-Authenticate` parameter as one scope
/// or acr value: RFC 6749's scope-token characters.
fn is_challenge_token(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

/// 1-based line of a byte offset in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |t| t.bytes().filter(|b| *b == b'\n').count())
        + 1
}

fn compile_patterns(p: &PatternsConfig) -> Rules {
    Rules::new(&p.allow, &p.deny)
}

impl Policy {
    /// No policy: every caller sees everything.
    pub fn unrestricted() -> Policy {
        Policy {
            grants: None,
            roles_by_claim: HashMap::new(),
            step_up: HashMap::new(),
            approvals: HashMap::new(),
            hidden: HiddenAnswers::default(),
            agents: AgentDirectory::default(),
        }
    }

    /// Compiles `config.policy`, checking that every grant names a gateway
    /// and assignments that exist. `text` is the config file's text, for
    /// line numbers in errors.
    pub fn compile(config: &Config, text: &str) -> Result<Policy, PolicyError> {
        let agents = AgentDirectory::compile(&config.agents).map_err(|e| PolicyError(e.0))?;
        let Some(pc) = &config.policy else {
            return Ok(Policy {
                agents,
                ..Policy::unrestricted()
            });
        };
        let mut roles_by_claim: HashMap<String, Vec<String>> = HashMap::new();
        for (role, values) in &pc.roles {
            for v in values {
                roles_by_claim
                    .entry(v.clone())
                    .or_default()
                    .push(role.clone());
            }
        }
        let mut grants: HashMap<String, HashMap<String, AssignmentGrants>> = HashMap::new();
        let mut seen = HashSet::new();
        for g in &pc.grants {
            let line = line_of(text, g.name.span().start);
            let name = g.name.get_ref().clone();
            let at = format!("[[policy.grants]] '{name}' (line {line})");
            if !seen.insert(name.clone()) {
                return Err(PolicyError(format!(
                    "{at}: another grant has the same name"
                )));
            }
            Self::check_grant(config, g, &at)?;
            let constraints = g
                .constraints
                .iter()
                .map(|c| compile_constraint(c, &at))
                .collect::<Result<Vec<_>, _>>()?;
            let condition = g
                .condition
                .as_deref()
                .map(|c| Condition::compile(c, Reads::Caller, &at))
                .transpose()?;
            let scopes: Vec<(String, Vec<String>)> = g
                .scopes
                .iter()
                .map(|(p, s)| (p.clone(), s.clone()))
                .collect();
            for assignment in &g.assignments {
                grants
                    .entry(g.gateway.clone())
                    .or_default()
                    .entry(assignment.clone())
                    .or_default()
                    .push(Grant {
                        name: name.clone(),
                        line,
                        any_user: g.users.iter().any(|u| u == "*"),
                        users: g.users.iter().filter(|u| *u != "*").cloned().collect(),
                        agents: g.agents.iter().cloned().collect(),
                        roles: g.roles.iter().cloned().collect(),
                        tools: compile_patterns(&g.tools),
                        prompts: compile_patterns(&g.prompts),
                        resources: compile_patterns(&g.resources),
                        constraints: constraints.clone(),
                        scopes: scopes.clone(),
                        condition: condition.clone(),
                    });
            }
        }
        let step_up = step_up::compile(config, text, &pc.step_up, &mut seen)?;
        let approvals = approval::compile(config, text, &pc.approvals, &mut seen)?;
        Ok(Policy {
            grants: Some(grants),
            roles_by_claim,
            step_up,
            approvals,
            hidden: pc.hidden.clone(),
            agents,
        })
    }

    fn check_grant(config: &Config, g: &GrantConfig, at: &str) -> Result<(), PolicyError> {
        let Some(gateway) = config.gateway(&g.gateway) else {
            return Err(PolicyError(format!(
                "{at}: unknown gateway '{}' (declared gateways: {})",
                g.gateway,
                config
                    .gateways
                    .iter()
                    .map(|g| g.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        if g.assignments.is_empty() {
            return Err(PolicyError(format!(
                "{at}: names no assignments; list the server assignments it covers"
            )));
        }
        for a in &g.assignments {
            if !gateway.assignments.iter().any(|x| x.name == *a) {
                return Err(PolicyError(format!(
                    "{at}: gateway '{}' has no assignment '{a}'",
                    g.gateway
                )));
            }
        }
        let people = !(g.users.is_empty() && g.roles.is_empty());
        if !people && g.agents.is_empty() {
            return Err(PolicyError(format!(
                "{at}: grants nobody; give it users (\"*\" for everyone), roles or agents"
            )));
        }
        if people && !g.agents.is_empty() {
            return Err(PolicyError(format!(
                "{at}: names both people (users/roles) and agents; write one grant for each, as an agent gets the intersection of its grants and its user's"
            )));
        }
        for (kind, p) in [
            ("tools", &g.tools),
            ("prompts", &g.prompts),
            ("resources", &g.resources),
        ] {
            if let Some(bad) = p.allow.iter().chain(&p.deny).find(|s| s.is_empty()) {
                return Err(PolicyError(format!(
                    "{at}: {kind} has an empty pattern {bad:?}; it would match nothing"
                )));
            }
        }
        // Resource URIs are matched in canonical form only.
        for p in g.resources.allow.iter().chain(&g.resources.deny) {
            if let Some(problem) = uri::pattern_problem(p) {
                return Err(PolicyError(format!(
                    "{at}: resources pattern \"{p}\" is matched against canonical URIs, but {problem}"
                )));
            }
        }
        for (p, scopes) in &g.scopes {
            if !g
                .tools
                .allow
                .iter()
                .any(|a| pattern_matches(a, p) || pattern_matches(p, a))
            {
                return Err(PolicyError(format!(
                    "{at}: scopes names tool '{p}', which this grant does not allow"
                )));
            }
            if scopes.is_empty() {
                return Err(PolicyError(format!(
                    "{at}: scopes for '{p}' is an empty list; name the scopes a call needs"
                )));
            }
            if let Some(bad) = scopes.iter().find(|s| !is_challenge_token(s)) {
                return Err(PolicyError(format!(
                    "{at}: scope {bad:?} is not a valid OAuth scope (RFC 6749: no spaces, quotes or backslashes)"
                )));
            }
        }
        for c in &g.constraints {
            if !g
                .tools
                .allow
                .iter()
                .any(|p| pattern_matches(p, &c.tool) || pattern_matches(&c.tool, p) || p == &c.tool)
            {
                return Err(PolicyError(format!(
                    "{at}: a constraint names tool '{}', which this grant does not allow",
                    c.tool
                )));
            }
        }
        Ok(())
    }

    /// Whether a `[policy]` is in force.
    pub fn is_enforced(&self) -> bool {
        self.grants.is_some()
    }

    /// The caller's roles: claim values and the roles mapped from them.
    fn roles_of<'a>(&'a self, caller: &'a Caller) -> Vec<&'a str> {
        let mut roles: Vec<&str> = caller.roles.iter().map(String::as_str).collect();
        for v in &caller.roles {
            if let Some(mapped) = self.roles_by_claim.get(v) {
                roles.extend(mapped.iter().map(String::as_str));
            }
        }
        roles
    }

    fn assignment(&self, gateway: &str, assignment: &str) -> Option<&AssignmentGrants> {
        self.grants.as_ref()?.get(gateway)?.get(assignment)
    }

    /// The grants of one assignment that apply to `caller`, in config order.
    fn applying<'a>(
        &'a self,
        gateway: &str,
        assignment: &str,
        caller: &'a Caller,
    ) -> Vec<&'a Grant> {
        let Some(a) = self.assignment(gateway, assignment) else {
            return Vec::new();
        };
        let mut at: Vec<usize> = a.everyone.clone();
        if let Some(v) = a.by_user.get(&caller.subject) {
            at.extend_from_slice(v);
        }
        for v in &caller.roles {
            if let Some(v) = a.by_role.get(v) {
                at.extend_from_slice(v);
            }
            for mapped in self.roles_by_claim.get(v).into_iter().flatten() {
                if let Some(v) = a.by_role.get(mapped) {
                    at.extend_from_slice(v);
                }
            }
        }
        at.sort_unstable();
        at.dedup();
        let facts = Facts::of_caller(caller, gateway, assignment);
        at.into_iter()
            .filter_map(|i| a.grants.get(i))
            .filter(|g| g.holds(&facts))
            .collect()
    }

    /// The acting agent's grants on one assignment: `None` when no agent
    /// acts or no grant there names agents (the agent is not restricted
    /// beyond its user), else those naming this agent (none: it sees
    /// nothing).
    fn applying_agent<'a>(
        &'a self,
        gateway: &str,
        assignment: &str,
        caller: &Caller,
    ) -> Option<Vec<&'a Grant>> {
        let a = self.assignment(gateway, assignment)?;
        let agent = caller.agent.as_ref()?;
        if a.by_agent.is_empty() {
            return None;
        }
        let at = a.by_agent.get(agent).map_or(&[][..], Vec::as_slice);
        let facts = Facts::of_caller(caller, gateway, assignment);
        Some(
            at.iter()
                .filter_map(|i| a.grants.get(*i))
                .filter(|g| g.holds(&facts))
                .collect(),
        )
    }

    /// The grants that decide for `caller`, and the agent's on top of them
    /// (the intersection). An agent acting for nobody has no user whose
    /// grants could apply: its own are the only ones, and it needs some.
    fn effective<'a>(
        &'a self,
        gateway: &str,
        assignment: &str,
        caller: &'a Caller,
    ) -> (Vec<&'a Grant>, Option<Vec<&'a Grant>>) {
        if caller.headless {
            let own = self
                .applying_agent(gateway, assignment, caller)
                .unwrap_or_default();
            return (own, None);
        }
        (
            self.applying(gateway, assignment, caller),
            self.applying_agent(gateway, assignment, caller),
        )
    }

    /// What keeps every grant that allows `tool` from covering this call:
    /// `None` when one of them does (its constraints hold and the token
    /// has its scopes). A missing scope is reported before a broken
    /// constraint, as a new token can mend it.
    fn shortfall(grants: &[&Grant], tool: &str, facts: &Facts<'_>) -> Option<Shortfall> {
        let mut violation = None;
        let mut scopes = None;
        for g in grants.iter().filter(|g| g.tools.allows(tool)) {
            let broken = g
                .constraints
                .iter()
                .filter(|c| pattern_matches(&c.tool, tool))
                .find_map(|c| c.violation(facts));
            if let Some(m) = broken {
                violation.get_or_insert(m);
                continue;
            }
            let needed = g.scopes_for(tool);
            if needed.iter().all(|s| facts.caller.scopes.contains(s)) {
                return None;
            }
            scopes.get_or_insert(needed);
        }
        Some(match scopes {
            Some(s) => Shortfall::Scopes(s),
            None => Shortfall::Violation(violation.unwrap_or_default()),
        })
    }

    fn permits(grants: &[&Grant], kind: ItemKind, name: &str) -> bool {
        Visibility::name_allowed(kind, name)
            && grants.iter().any(|g| g.rules(kind).allows(name))
            && !grants.iter().any(|g| g.rules(kind).denies(name))
    }

    /// Decides a request naming `name` of `kind` (`tools/call`,
    /// `prompts/get`, `resources/*`); `arguments` are the tool call's.
    pub fn decide(
        &self,
        gateway: &str,
        assignment: &str,
        caller: &Caller,
        kind: ItemKind,
        name: &str,
        arguments: Option<&Value>,
    ) -> Verdict {
        if !self.is_enforced() {
            return Verdict::Allowed;
        }
        let canonical;
        let judged = if kind == ItemKind::Resource {
            match uri::canonical(name) {
                Ok(c) => {
                    canonical = c;
                    canonical.as_str()
                }
                Err(problem) => {
                    return Verdict::Ambiguous {
                        kind,
                        name: name.to_owned(),
                        problem,
                    };
                }
            }
        } else {
            name
        };
        let (grants, agent) = self.effective(gateway, assignment, caller);
        if !Self::permits(&grants, kind, judged)
            || agent
                .as_ref()
                .is_some_and(|a| !Self::permits(a, kind, judged))
        {
            // Named as the upstream would name it in its "not found" (it
            // parses the URI first), so hidden and absent read alike.
            return Verdict::Hidden {
                kind,
                name: judged.to_owned(),
            };
        }
        if kind != ItemKind::Tool {
            return Verdict::Allowed;
        }
        let empty = Value::Object(serde_json::Map::new());
        let facts = Facts {
            call: Some((name, arguments.unwrap_or(&empty))),
            ..Facts::of_caller(caller, gateway, assignment)
        };
        let mine = Self::shortfall(&grants, name, &facts);
        let theirs = agent
            .as_ref()
            .and_then(|a| Self::shortfall(a, name, &facts));
        let tool = name.to_owned();
        match (mine, theirs) {
            (Some(Shortfall::Violation(message)), _) => {
                return Verdict::Violation { tool, message };
            }
            (_, Some(Shortfall::Violation(m))) => {
                return Verdict::Violation {
                    tool,
                    message: format!("{m} (a constraint on the agent)"),
                };
            }
            (Some(Shortfall::Scopes(mut a)), b) => {
                if let Some(Shortfall::Scopes(b)) = b {
                    a.extend(b);
                    a.sort();
                    a.dedup();
                }
                return Verdict::InsufficientScope { tool, scopes: a };
            }
            (None, Some(Shortfall::Scopes(scopes))) => {
                return Verdict::InsufficientScope { tool, scopes };
            }
            (None, None) => {}
        }
        rules_of(&self.step_up, gateway, assignment)
            .iter()
            .find_map(|r| r.unmet(&facts, name))
            .map_or(Verdict::Allowed, Verdict::StepUp)
    }

    /// Whether a tool call must have its arguments read: some applying
    /// grant has a constraint on it. Lets the common path skip parsing.
    pub fn needs_arguments(&self, gateway: &str, assignment: &str, tool: &str) -> bool {
        let constrained = self.assignment(gateway, assignment).is_some_and(|a| {
            a.grants
                .iter()
                .any(|g| g.constraints.iter().any(|c| pattern_matches(&c.tool, tool)))
        });
        constrained
            || self.may_need_approval(gateway, assignment, tool)
            || rules_of(&self.step_up, gateway, assignment)
                .iter()
                .any(|r| r.condition.is_some() && r.tools.iter().any(|p| pattern_matches(p, tool)))
    }

    /// What `caller` may see on one assignment, as the filter gets it:
    /// every applying grant's allows and denies, merged (deny wins across
    /// grants, as in [`Policy::decide`]). `None` when no policy is in force.
    pub fn visibility(
        &self,
        gateway: &str,
        assignment: &str,
        caller: &Caller,
    ) -> Option<Visibility> {
        if !self.is_enforced() {
            return None;
        }
        let (grants, agent) = self.effective(gateway, assignment, caller);
        let view = Self::merged_view(&grants);
        Some(match agent {
            Some(agent) => view.and_agent(Self::merged_view(&agent)),
            None => view,
        })
    }

    /// Every grant's allows and denies, merged.
    fn merged_view(grants: &[&Grant]) -> Visibility {
        let merged = |kind: ItemKind| {
            let mut allow = Vec::new();
            let mut deny = Vec::new();
            for g in grants {
                allow.extend_from_slice(g.rules(kind).allow_patterns());
                deny.extend_from_slice(g.rules(kind).deny_patterns());
            }
            allow.sort();
            allow.dedup();
            deny.sort();
            deny.dedup();
            Rules::new(&allow, &deny)
        };
        Visibility::new(
            merged(ItemKind::Tool),
            merged(ItemKind::Prompt),
            merged(ItemKind::Resource),
        )
    }

    /// Every tool name or pattern the policy names for one assignment, for
    /// comparing with what the upstream lists.
    pub fn tool_names(&self, gateway: &str, assignment: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .assignment(gateway, assignment)
            .into_iter()
            .flat_map(|a| &a.grants)
            .flat_map(|g| {
                g.tools
                    .allow_patterns()
                    .iter()
                    .chain(g.tools.deny_patterns())
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConstraintConfig;
    use serde_json::json;

    /// A constraint's verdict on a call with `arguments` by nobody in particular.
    fn judge(c: &Constraint, arguments: &Value) -> Option<String> {
        let caller = Caller::default();
        c.violation(&Facts {
            caller: &caller,
            gateway: "g",
            assignment: "gh",
            call: Some(("t", arguments)),
            annotations: None,
            now: 0,
        })
    }

    const BASE: &str = concat!(
        include_str!("../../../testdata/gateway.toml"),
        r#"
[[gateways.assignments]]
name = "gh"
server = "gh"
scheme = "per_user"
"#
    );

    fn policy(extra: &str) -> Result<Policy, PolicyError> {
        let text = format!("{BASE}{extra}");
        let config = Config::parse(&text).map_err(|e| PolicyError(e.to_string()))?;
        Policy::compile(&config, &text)
    }

    fn caller(sub: &str, roles: &[&str]) -> Caller {
        Caller {
            subject: sub.into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            ..Caller::default()
        }
    }

    const GRANTS: &str = r#"
[policy.roles]
engineers = ["eng", "platform"]
[[policy.grants]]
name = "everyone-reads"
gateway = "g"
assignments = ["gh"]
users = ["*"]
tools = { allow = ["get_*", "list_*"], deny = ["get_secret*"] }
[[policy.grants]]
name = "engineers-write"
gateway = "g"
assignments = ["gh"]
roles = ["engineers"]
tools = { allow = ["create_issue", "delete_*"] }
prompts = { allow = ["review"] }
[[policy.grants.constraints]]
tool = "create_issue"
argument = "/repo"
pattern = "acme/*"
[[policy.grants.constraints]]
tool = "create_issue"
argument = "/labels"
max_length = 3
optional = true
[[policy.grants]]
name = "no-deletes"
gateway = "g"
assignments = ["gh"]
users = ["*"]
tools = { deny = ["delete_repo"] }
"#;

    fn tool(p: &Policy, who: &Caller, name: &str, args: Value) -> Verdict {
        p.decide("g", "gh", who, ItemKind::Tool, name, Some(&args))
    }

    #[test]
    fn roles_from_claims_and_mapping_union_with_user_grants() {
        let p = policy(GRANTS).unwrap();
        let bob = caller("bob", &[]);
        let eve = caller("eve", &["eng"]);
        assert_eq!(tool(&p, &bob, "get_issue", json!({})), Verdict::Allowed);
        assert!(matches!(
            tool(&p, &bob, "create_issue", json!({"repo":"acme/x"})),
            Verdict::Hidden { .. }
        ));
        assert_eq!(
            tool(&p, &eve, "create_issue", json!({"repo":"acme/x"})),
            Verdict::Allowed
        );
        assert!(matches!(
            tool(&p, &bob, "get_secret_key", json!({})),
            Verdict::Hidden { .. }
        ));
        // Deny in another grant wins.
        assert!(matches!(
            tool(&p, &eve, "delete_repo", json!({})),
            Verdict::Hidden { .. }
        ));
        assert_eq!(tool(&p, &eve, "delete_branch", json!({})), Verdict::Allowed);
        // Direct claim value as role works too.
        let direct = Policy::compile(
            &Config::parse(&format!(
                "{BASE}{}",
                GRANTS.replace("roles = [\"engineers\"]", "roles = [\"eng\"]")
            ))
            .unwrap(),
            "",
        )
        .unwrap();
        assert_eq!(
            tool(&direct, &eve, "create_issue", json!({"repo":"acme/x"})),
            Verdict::Allowed
        );
        // Other assignments and prompts.
        assert!(matches!(
            p.decide("g", "other", &eve, ItemKind::Tool, "get_issue", None),
            Verdict::Hidden { .. }
        ));
        assert_eq!(
            p.decide("g", "gh", &eve, ItemKind::Prompt, "review", None),
            Verdict::Allowed
        );
        assert!(matches!(
            p.decide("g", "gh", &bob, ItemKind::Prompt, "review", None),
            Verdict::Hidden { .. }
        ));
    }

    const AGENT_GRANTS: &str = r#"
[[policy.grants]]
name = "ci-bot"
gateway = "g"
assignments = ["gh"]
agents = ["ci-bot"]
tools = { allow = ["get_*", "create_issue"], deny = ["get_secret*"] }
[[policy.grants.constraints]]
tool = "create_issue"
argument = "/title"
max_length = 10
"#;

    fn acting(sub: &str, roles: &[&str], agent: &str) -> Caller {
        Caller {
            client_id: Some(agent.into()),
            agent: Some(agent.into()),
            ..caller(sub, roles)
        }
    }

    #[test]
    fn an_agent_acting_for_nobody_has_only_its_own_grants() {
        let p = policy(&format!("{GRANTS}{AGENT_GRANTS}")).unwrap();
        let headless = Caller {
            headless: true,
            ..acting("ci-bot", &["eng"], "ci-bot")
        };
        // Its own grant allows create_issue; a role claim in its token adds nothing.
        assert_eq!(
            tool(&p, &headless, "create_issue", json!({"title": "t"})),
            Verdict::Allowed
        );
        assert!(matches!(
            tool(&p, &headless, "delete_branch", json!({})),
            Verdict::Hidden { .. }
        ));
        // "users = ['*']" is for people: an agent without grants sees nothing.
        let nobody = Caller {
            headless: true,
            ..acting("other", &[], "other")
        };
        assert!(matches!(
            tool(&p, &nobody, "get_issue", json!({})),
            Verdict::Hidden { .. }
        ));
        let e = p.explain("g", "gh", &nobody, ItemKind::Tool, "get_issue");
        assert!(
            !e.visible && e.reason.contains("acting for nobody"),
            "{}",
            e.reason
        );
    }

    #[test]
    fn an_agent_gets_the_intersection_of_its_grants_and_its_users() {
        let p = policy(&format!("{GRANTS}{AGENT_GRANTS}")).unwrap();
        let bot_for_bob = acting("bob", &[], "ci-bot");
        let bot_for_eve = acting("eve", &["eng"], "ci-bot");
        // Bob may get_issue, and so may the bot: allowed.
        assert_eq!(
            tool(&p, &bot_for_bob, "get_issue", json!({})),
            Verdict::Allowed
        );
        // The bot may create_issue, bob may not: hidden.
        assert!(matches!(
            tool(
                &p,
                &bot_for_bob,
                "create_issue",
                json!({"repo":"acme/a","title":"t"})
            ),
            Verdict::Hidden { .. }
        ));
        // Eve may create_issue and so may the bot; both sides' constraints hold.
        assert_eq!(
            tool(
                &p,
                &bot_for_eve,
                "create_issue",
                json!({"repo":"acme/a","title":"short"})
            ),
            Verdict::Allowed
        );
        let Verdict::Violation { message, .. } = tool(
            &p,
            &bot_for_eve,
            "create_issue",
            json!({"repo":"acme/a","title":"much too long"}),
        ) else {
            panic!()
        };
        assert!(
            message.contains("/title") && message.contains("agent"),
            "{message}"
        );
        // Eve may delete_branch; the bot has no grant for it.
        assert!(matches!(
            tool(&p, &bot_for_eve, "delete_branch", json!({})),
            Verdict::Hidden { .. }
        ));
        assert_eq!(
            tool(&p, &caller("eve", &["eng"]), "delete_branch", json!({})),
            Verdict::Allowed
        );
        // Another agent on an assignment with agent grants sees nothing.
        assert!(matches!(
            tool(
                &p,
                &acting("eve", &["eng"], "other"),
                "get_issue",
                json!({})
            ),
            Verdict::Hidden { .. }
        ));
        // The merged view for lists agrees.
        let v = p.visibility("g", "gh", &bot_for_eve).unwrap();
        assert!(
            v.permits(ItemKind::Tool, "get_issue") && v.permits(ItemKind::Tool, "create_issue")
        );
        assert!(!v.permits(ItemKind::Tool, "delete_branch"));
        let e = p.explain("g", "gh", &bot_for_eve, ItemKind::Tool, "delete_branch");
        assert!(
            !e.visible && e.reason.contains("agent 'ci-bot'"),
            "{}",
            e.reason
        );
        // Without agent grants on the assignment, agents are not restricted.
        let open = policy(GRANTS).unwrap();
        assert_eq!(
            tool(
                &open,
                &acting("eve", &["eng"], "any"),
                "delete_branch",
                json!({})
            ),
            Verdict::Allowed
        );
        // A grant cannot name both people and agents.
        let e = policy(&AGENT_GRANTS.replace(
            "agents = [\"ci-bot\"]",
            "agents = [\"ci-bot\"]\nusers = [\"bob\"]",
        ))
        .unwrap_err()
        .0;
        assert!(e.contains("both people"), "{e}");
    }

    #[test]
    fn constraints_name_what_was_broken() {
        let p = policy(GRANTS).unwrap();
        let eve = caller("eve", &["platform"]);
        let Verdict::Violation { message, .. } =
            tool(&p, &eve, "create_issue", json!({"repo":"evil/x"}))
        else {
            panic!()
        };
        assert_eq!(
            message,
            "argument /repo must be a string matching \"acme/*\""
        );
        let Verdict::Violation { message, .. } = tool(&p, &eve, "create_issue", json!({})) else {
            panic!()
        };
        assert!(
            message.starts_with("argument /repo is required"),
            "{message}"
        );
        let Verdict::Violation { message, .. } = tool(
            &p,
            &eve,
            "create_issue",
            json!({"repo":"acme/x","labels":["a","b","c","d"]}),
        ) else {
            panic!()
        };
        assert!(message.contains("/labels must be at most 3"), "{message}");
        assert_eq!(
            tool(
                &p,
                &eve,
                "create_issue",
                json!({"repo":"acme/x","labels":["a"]})
            ),
            Verdict::Allowed
        );
        assert!(p.needs_arguments("g", "gh", "create_issue"));
        assert!(!p.needs_arguments("g", "gh", "get_issue"));
    }

    #[test]
    fn each_constraint_kind() {
        let c = |toml: &str| {
            let cc: ConstraintConfig = toml::from_str(&format!("tool = \"t\"\n{toml}")).unwrap();
            compile_constraint(&cc, "here").unwrap()
        };
        let eq = c("argument = \"/schema\"\nequals = \"analytics\"");
        assert!(judge(&eq, &json!({"schema":"analytics"})).is_none());
        assert!(judge(&eq, &json!({"schema":"public"})).is_some());
        let one = c("argument = \"/env\"\none_of = [\"dev\", \"test\"]");
        assert!(judge(&one, &json!({"env":"test"})).is_none());
        assert!(
            judge(&one, &json!({"env":"prod"}))
                .unwrap()
                .contains("\"dev\", \"test\"")
        );
        let range = c("argument = \"/n\"\nmin = 1\nmax = 10");
        assert!(judge(&range, &json!({"n": 10})).is_none());
        assert!(judge(&range, &json!({"n": 10.5})).is_some());
        assert!(
            judge(&range, &json!({"n": "5"})).is_some(),
            "a string is not a number"
        );
        let len = c("argument = \"/q\"\nmax_length = 3");
        assert!(
            judge(&len, &json!({"q":"héé"})).is_none(),
            "characters, not bytes"
        );
        assert!(judge(&len, &json!({"q":"four"})).is_some());
        assert!(judge(&len, &json!({"q": 5})).is_some());
        let forbidden = c("argument = \"/force\"\nforbidden = true");
        assert!(judge(&forbidden, &json!({})).is_none());
        assert!(judge(&forbidden, &json!({"force": false})).is_some());
        let nested = c("argument = \"/filters/0/schema\"\nequals = \"a\"");
        assert!(judge(&nested, &json!({"filters":[{"schema":"a"}]})).is_none());
        let pattern = c("argument = \"/repo\"\npattern = \"acme/*\"");
        assert!(judge(&pattern, &json!({"repo": ["acme/x"]})).is_some());
        assert!(judge(&pattern, &json!({"repo": "ACME/x"})).is_some());
    }

    #[test]
    fn a_range_judges_a_number_as_the_upstream_reads_it() {
        let c = |toml: &str| {
            let cc: ConstraintConfig = toml::from_str(&format!("tool = \"t\"\n{toml}")).unwrap();
            compile_constraint(&cc, "here").unwrap()
        };
        let parse =
            |text: &str| -> Value { serde_json::from_str(&format!("{{\"n\":{text}}}")).unwrap() };
        // Python and rmcp read 2^53 + 1 exactly; as a double it would be
        // 2^53 and pass max = 2^53.
        let big = c("argument = \"/n\"\nmin = 0\nmax = 9007199254740992");
        assert!(judge(&big, &parse("9007199254740992")).is_none());
        assert!(judge(&big, &parse("9007199254740993")).is_some());
        assert!(judge(&big, &parse("18446744073709551615")).is_some());
        // Beyond 64 bits an integer literal reaches us as a double that
        // may have rounded down: it cannot be judged exactly.
        let unbounded = c("argument = \"/n\"\nmin = 0");
        let e = judge(&unbounded, &parse("100000000000000000000001")).unwrap();
        assert!(e.contains("at most 64 bits"), "{e}");
        assert!(judge(&unbounded, &parse("18446744073709551615")).is_none());
        // Spellings every reader reads alike are judged by value.
        let small = c("argument = \"/n\"\nmin = 0\nmax = 100");
        for ok in [
            "100",
            "1e2",
            "100.0",
            "1E+2",
            "-0",
            "0.0",
            "100.0000000000000001",
        ] {
            assert!(judge(&small, &parse(ok)).is_none(), "{ok}");
        }
        for bad in [
            "101",
            "-1",
            "100.00000000000003",
            "1e3",
            "-1e-300",
            "\"50\"",
        ] {
            assert!(judge(&small, &parse(bad)).is_some(), "{bad}");
        }
        // Bounds that are not whole numbers still compare exactly.
        let frac = c("argument = \"/n\"\nmin = -0.5\nmax = 2.5");
        for (v, ok) in [
            ("0", true),
            ("2", true),
            ("3", false),
            ("-1", false),
            ("2.5", true),
        ] {
            assert_eq!(judge(&frac, &parse(v)).is_none(), ok, "{v}");
        }
        let nan: ConstraintConfig =
            toml::from_str("tool = \"t\"\nargument = \"/n\"\nmax = nan").unwrap();
        assert!(compile_constraint(&nan, "here").is_err());
    }

    const RESOURCES: &str = r#"
[[policy.grants]]
name = "docs"
gateway = "g"
assignments = ["gh"]
users = ["*"]
resources = { allow = ["demo://r/static/*"], deny = ["*/static/secret*"] }
"#;

    #[test]
    fn resources_are_decided_by_canonical_uri_and_agree_with_the_list() {
        let p = policy(RESOURCES).unwrap();
        let bob = caller("bob", &[]);
        let v = p.visibility("g", "gh", &bob).unwrap();
        let decide = |uri: &str| p.decide("g", "gh", &bob, ItemKind::Resource, uri, None);
        for (uri, visible) in [
            ("demo://r/static/a.md", true),
            ("DEMO://R/static/x/../a.md", true),
            ("demo://r/static/../dynamic/1", false),
            ("demo://r/static/./secret.md", false),
            ("demo://r/static/%73ecret.md", false),
            ("demo://r/static/a/../../static/SECRET", false),
        ] {
            let verdict = decide(uri);
            assert_eq!(verdict == Verdict::Allowed, visible, "{uri}: {verdict:?}");
            assert_eq!(v.permits(ItemKind::Resource, uri), visible, "{uri}");
        }
        // Hidden names what the upstream would have looked up.
        assert_eq!(
            decide("demo://r/static/../dynamic/1"),
            Verdict::Hidden {
                kind: ItemKind::Resource,
                name: "demo://r/dynamic/1".into()
            }
        );
        // No single meaning: refused, naming why; never listed either.
        for uri in [
            "demo://r/static/%2e%2e/dynamic/1",
            "demo://r/static/a%2Fb",
            "demo://r/static//a.md",
            "demo://r/static/a\\b",
        ] {
            assert!(
                matches!(decide(uri), Verdict::Ambiguous { .. }),
                "{uri}: {:?}",
                decide(uri)
            );
            assert!(!v.permits(ItemKind::Resource, uri), "{uri}");
        }
        let e = p.explain("g", "gh", &bob, ItemKind::Resource, "demo://r/static/../x");
        assert!(
            !e.visible && e.reason.contains("canonical form 'demo://r/x'"),
            "{e:?}"
        );
        // Tools are names, not URIs: no canonical form applies.
        assert!(matches!(
            p.decide("g", "gh", &bob, ItemKind::Tool, "a/../b", None),
            Verdict::Hidden { .. }
        ));
    }

    #[test]
    fn resource_patterns_must_be_canonical() {
        for (pattern, says) in [
            ("DEMO://r/*", "write \"demo://r/*\""),
            ("demo://r/a/../b/*", "write \"demo://r/b/*\""),
            ("demo://r/%7e*", "write \"demo://r/~*\""),
            ("demo://r/%2e%2e/*", "no URI can match it"),
        ] {
            let e = policy(&RESOURCES.replace("demo://r/static/*", pattern))
                .unwrap_err()
                .0;
            assert!(
                e.contains("'docs' (line") && e.contains(says),
                "{pattern}: {e}"
            );
        }
        assert!(policy(&RESOURCES.replace("*/static/secret*", "*/static/./x")).is_err());
        assert!(policy(&RESOURCES.replace("demo://r/static/*", "https://*.example.com/*")).is_ok());
    }

    #[test]
    fn path_and_uri_constraints_judge_the_canonical_argument() {
        let c = |toml: &str| {
            let cc: ConstraintConfig = toml::from_str(&format!("tool = \"t\"\n{toml}")).unwrap();
            compile_constraint(&cc, "here")
        };
        // A pattern that looks like a path is judged as one by default.
        let path = c("argument = \"/path\"\npattern = \"/srv/data/*\"").unwrap();
        assert!(judge(&path, &json!({"path": "/srv/data/a.txt"})).is_none());
        assert!(judge(&path, &json!({"path": "/srv//data/./a.txt"})).is_none());
        for bad in [
            "/srv/data/../../etc/passwd",
            "/srv/data/x/../../../etc",
            "/srv/data/%2e%2e/x",
            "/srv/data\\..\\x",
            "/srv/data/x\u{0}",
        ] {
            let m = judge(&path, &json!({ "path": bad })).unwrap_or_default();
            assert!(m.contains("must be a path matching"), "{bad}: {m}");
        }
        assert!(
            judge(&path, &json!({"path": "/srv/data/../x"}))
                .unwrap()
                .contains("'..' segment")
        );
        let url = c("argument = \"/url\"\npattern = \"https://api.example.com/v1/*\"").unwrap();
        assert!(judge(&url, &json!({"url": "HTTPS://API.example.com:443/v1/x"})).is_none());
        for bad in [
            "https://api.example.com/v1/../admin",
            "https://api.example.com/v1/%2e%2e/admin",
            "https://api.example.com@evil.example/v1/x",
            "https://api.example.com/v1\\..\\admin",
        ] {
            assert!(judge(&url, &json!({ "url": bad })).is_some(), "{bad}");
        }
        // Said explicitly, and opted out of.
        let uri = c("argument = \"/u\"\npattern = \"demo://r/a/*\"\ncanonical = \"uri\"").unwrap();
        assert!(judge(&uri, &json!({"u": "demo://r/a/../../x"})).is_some());
        let raw = c("argument = \"/p\"\npattern = \"/a/*\"\ncanonical = \"none\"").unwrap();
        assert!(judge(&raw, &json!({"p": "/a/../b"})).is_none());
        let plain = c("argument = \"/repo\"\npattern = \"acme/*\"").unwrap();
        assert!(judge(&plain, &json!({"repo": "acme/../x"})).is_none());
        // Refused at load: a pattern not in its canonical form, canonical
        // without a pattern, an unknown form.
        let e = c("argument = \"/p\"\npattern = \"/srv/./data/*\"")
            .unwrap_err()
            .0;
        assert!(e.contains("write \"/srv/data/*\""), "{e}");
        let e = c("argument = \"/p\"\nmax_length = 3\ncanonical = \"path\"")
            .unwrap_err()
            .0;
        assert!(e.contains("without a pattern"), "{e}");
        let e = toml::from_str::<ConstraintConfig>(
            "tool = \"t\"\nargument = \"/p\"\npattern = \"x\"\ncanonical = \"file\"",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("uri") && e.contains("path"), "{e}");
    }

    #[test]
    fn bad_grants_are_refused_with_their_line() {
        // The line of the grant's `name` in the whole file, fixture included.
        let line = format!("{BASE}{GRANTS}")
            .lines()
            .position(|l| l == "name = \"engineers-write\"")
            .unwrap()
            + 1;
        let e = policy(&GRANTS.replace(
            "assignments = [\"gh\"]\nroles",
            "assignments = [\"nope\"]\nroles",
        ))
        .unwrap_err()
        .0;
        assert!(
            e.contains("'engineers-write'")
                && e.contains(&format!("(line {line})"))
                && e.contains("no assignment 'nope'"),
            "{e}"
        );
        let e =
            policy("[[policy.grants]]\nname = \"x\"\ngateway = \"g\"\nassignments = [\"gh\"]\n")
                .unwrap_err()
                .0;
        assert!(e.contains("grants nobody"), "{e}");
        let e = policy("[[policy.grants]]\nname = \"x\"\ngateway = \"h\"\nassignments = [\"gh\"]\nusers=[\"*\"]\n").unwrap_err().0;
        assert!(e.contains("unknown gateway 'h'"), "{e}");
        let e = policy(&GRANTS.replace("pattern = \"acme/*\"", "pattern = \"acme/*\"\nequals = 1"))
            .unwrap_err()
            .0;
        assert!(e.contains("exactly one of"), "{e}");
        let e = policy(&GRANTS.replace("argument = \"/repo\"", "argument = \"repo\""))
            .unwrap_err()
            .0;
        assert!(e.contains("JSON Pointer"), "{e}");
        let e = policy(&GRANTS.replace(
            "tool = \"create_issue\"\nargument = \"/labels\"",
            "tool = \"merge\"\nargument = \"/labels\"",
        ))
        .unwrap_err()
        .0;
        assert!(
            e.contains("names tool 'merge', which this grant does not allow"),
            "{e}"
        );
    }

    #[test]
    fn no_policy_is_unrestricted_and_empty_policy_denies() {
        let p = policy("").unwrap();
        assert!(!p.is_enforced());
        assert_eq!(
            tool(&p, &caller("a", &[]), "anything", json!({})),
            Verdict::Allowed
        );
        assert!(p.visibility("g", "gh", &caller("a", &[])).is_none());
        let p = policy("[policy]\n").unwrap();
        assert!(matches!(
            tool(&p, &caller("a", &[]), "anything", json!({})),
            Verdict::Hidden { .. }
        ));
    }

    #[test]
    fn visibility_agrees_with_decide() {
        let p = policy(GRANTS).unwrap();
        for who in [caller("bob", &[]), caller("eve", &["eng"])] {
            let v = p.visibility("g", "gh", &who).unwrap();
            for name in [
                "get_issue",
                "get_secret",
                "GET_SECRET",
                "create_issue",
                "delete_repo",
                "delete_x",
                "list_a",
                "other",
                "g\u{0435}t_issue",
            ] {
                let decided = !matches!(
                    p.decide(
                        "g",
                        "gh",
                        &who,
                        ItemKind::Tool,
                        name,
                        Some(&json!({"repo":"acme/a"}))
                    ),
                    Verdict::Hidden { .. }
                );
                assert_eq!(
                    v.permits(ItemKind::Tool, name),
                    decided,
                    "{} {name}",
                    who.subject
                );
            }
        }
    }

    #[test]
    fn explain_and_lint_name_the_rule() {
        let p = policy(GRANTS).unwrap();
        let eve = caller("eve", &["eng"]);
        let e = p.explain("g", "gh", &eve, ItemKind::Tool, "delete_repo");
        assert!(!e.visible);
        assert!(
            e.reason.contains("grant 'no-deletes'") && e.reason.contains("deny \"delete_repo\""),
            "{}",
            e.reason
        );
        let e = p.explain("g", "gh", &eve, ItemKind::Tool, "get_issue");
        assert!(
            e.visible && e.reason.contains("allow \"get_*\""),
            "{}",
            e.reason
        );
        let e = p.explain("g", "gh", &caller("bob", &[]), ItemKind::Prompt, "review");
        assert!(
            !e.visible && e.reason.contains("no allow pattern"),
            "{}",
            e.reason
        );
        let lint = p.lint();
        // A deny of one name under an allowed prefix is normal, not a finding.
        assert!(
            !lint.iter().any(|l| l.contains("allow \"delete_*\"")),
            "{lint:?}"
        );
        let p = policy(&GRANTS.replace(
            "deny = [\"get_secret*\"]",
            "deny = [\"get_*\", \"bad name\"]",
        ))
        .unwrap();
        let lint = p.lint();
        assert!(
            lint.iter()
                .any(|l| l.contains("allow \"get_*\" is hidden by deny \"get_*\"")),
            "{lint:?}"
        );
        assert!(
            lint.iter()
                .any(|l| l.contains("\"bad name\" has characters")),
            "{lint:?}"
        );
    }

    #[test]
    fn lint_names_grants_to_agents_nobody_provisioned() {
        let without = policy(&format!("{GRANTS}{AGENT_GRANTS}")).unwrap();
        assert!(
            without
                .lint()
                .iter()
                .any(|l| l.contains("names agent 'ci-bot', which is not in [[agents]]")),
            "{:?}",
            without.lint()
        );
        let with = policy(&format!(
            "{GRANTS}{AGENT_GRANTS}\n[[agents]]\nname = \"ci-bot\"\n"
        ))
        .unwrap();
        assert!(
            !with.lint().iter().any(|l| l.contains("names agent")),
            "{:?}",
            with.lint()
        );
    }

    const SCOPED: &str = r#"
[[policy.grants]]
name = "writers"
gateway = "g"
assignments = ["gh"]
users = ["*"]
tools = { allow = ["get_*", "create_*", "delete_*"] }
scopes = { "create_*" = ["issues:write"], "delete_*" = ["issues:write", "issues:admin"] }
[[policy.grants]]
name = "ci-bot"
gateway = "g"
assignments = ["gh"]
agents = ["ci-bot"]
tools = { allow = ["*"] }
scopes = { "create_issue" = ["bot:act"] }
[[policy.step_up]]
name = "mfa-to-delete"
gateway = "g"
assignments = ["gh"]
tools = ["delete_*"]
acr_values = ["mfa", "phr"]
max_age_secs = 300
"#;

    fn with_token(mut c: Caller, scopes: &[&str], acr: Option<&str>, signed_in_ago: i64) -> Caller {
        c.scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
        c.acr = acr.map(str::to_owned);
        c.auth_time = Some((crate::unix_now() - signed_in_ago) as u64);
        c
    }

    #[test]
    fn a_tool_whose_grant_needs_scopes_is_listed_but_called_only_with_them() {
        let p = policy(SCOPED).unwrap();
        let bob = with_token(caller("bob", &[]), &["openid"], None, 0);
        assert_eq!(tool(&p, &bob, "get_issue", json!({})), Verdict::Allowed);
        assert_eq!(
            tool(&p, &bob, "create_issue", json!({})),
            Verdict::InsufficientScope {
                tool: "create_issue".into(),
                scopes: vec!["issues:write".into()]
            }
        );
        let writer = with_token(caller("bob", &[]), &["issues:write"], None, 0);
        assert_eq!(
            tool(&p, &writer, "create_issue", json!({})),
            Verdict::Allowed
        );
        // Lists are not trimmed by scopes: the tool stays visible.
        let view = p.visibility("g", "gh", &bob).unwrap();
        assert!(view.permits(ItemKind::Tool, "create_issue"));
        // An agent's grant adds its own scopes to what the person needs.
        let agent = with_token(acting("bob", &[], "ci-bot"), &[], None, 0);
        assert_eq!(
            tool(&p, &agent, "create_issue", json!({})),
            Verdict::InsufficientScope {
                tool: "create_issue".into(),
                scopes: vec!["bot:act".into(), "issues:write".into()]
            }
        );
        let agent = with_token(
            acting("bob", &[], "ci-bot"),
            &["issues:write", "bot:act"],
            None,
            0,
        );
        assert_eq!(
            tool(&p, &agent, "create_issue", json!({})),
            Verdict::Allowed
        );
        assert_eq!(
            p.scopes_supported("g"),
            ["bot:act", "issues:admin", "issues:write"]
        );
    }

    #[test]
    fn a_step_up_rule_needs_the_named_sign_in_and_a_recent_one() {
        let p = policy(SCOPED).unwrap();
        let scopes = ["issues:write", "issues:admin"];
        let weak = with_token(caller("bob", &[]), &scopes, Some("pwd"), 10);
        let Verdict::StepUp(s) = tool(&p, &weak, "delete_issue", json!({})) else {
            panic!("a password sign-in is not enough");
        };
        assert_eq!(s.rule, "mfa-to-delete");
        assert_eq!(s.acr_values, ["mfa", "phr"]);
        assert_eq!(s.max_age, Some(300));
        assert!(s.problem.contains("'pwd'"), "{}", s.problem);
        let stale = with_token(caller("bob", &[]), &scopes, Some("mfa"), 3600);
        let Verdict::StepUp(s) = tool(&p, &stale, "delete_issue", json!({})) else {
            panic!("an hour-old sign-in is too old");
        };
        assert!(s.problem.contains("within 300 s"), "{}", s.problem);
        let fresh = with_token(caller("bob", &[]), &scopes, Some("phr"), 10);
        assert_eq!(
            tool(&p, &fresh, "delete_issue", json!({})),
            Verdict::Allowed
        );
        // Missing scopes are told first: a new token mends both at once.
        let neither = with_token(caller("bob", &[]), &[], Some("pwd"), 10);
        assert!(matches!(
            tool(&p, &neither, "delete_issue", json!({})),
            Verdict::InsufficientScope { .. }
        ));
        // Other tools are not covered by the rule.
        assert_eq!(tool(&p, &weak, "get_issue", json!({})), Verdict::Allowed);
        assert_eq!(p.acr_values_supported("g"), ["mfa", "phr"]);
    }

    const CONDITIONAL: &str = r#"
[[policy.grants]]
name = "finance-pays"
gateway = "g"
assignments = ["gh"]
users = ["*"]
tools = { allow = ["pay"] }
condition = "claims.department == 'finance' && size(actors) <= 1"
[[policy.grants.constraints]]
tool = "pay"
condition = "arguments.amount <= 1000 || 'treasury' in roles"
[[policy.step_up]]
name = "fresh-for-agents"
gateway = "g"
assignments = ["gh"]
tools = ["pay"]
max_age_secs = 60
condition = "agent != '' && arguments.amount > 100"
"#;

    fn in_department(c: Caller, dept: &str) -> Caller {
        Caller {
            claims: std::sync::Arc::new(
                json!({ "department": dept })
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ),
            ..c
        }
    }

    #[test]
    fn conditions_decide_whether_a_grant_applies_and_whether_a_call_passes() {
        let p = policy(CONDITIONAL).unwrap();
        let fin = in_department(caller("fay", &[]), "finance");
        let eng = in_department(caller("eve", &[]), "engineering");
        assert_eq!(
            tool(&p, &fin, "pay", json!({"amount": 1000})),
            Verdict::Allowed
        );
        assert!(matches!(
            tool(&p, &eng, "pay", json!({"amount": 5})),
            Verdict::Hidden { .. }
        ));
        // The grant's condition trims lists too.
        assert!(
            p.visibility("g", "gh", &fin)
                .unwrap()
                .permits(ItemKind::Tool, "pay")
        );
        assert!(
            !p.visibility("g", "gh", &eng)
                .unwrap()
                .permits(ItemKind::Tool, "pay")
        );
        // A claim missing from the token: the condition fails, the grant does not apply.
        assert!(matches!(
            tool(&p, &caller("nobody", &[]), "pay", json!({"amount": 5})),
            Verdict::Hidden { .. }
        ));
        let Verdict::Violation { message, .. } = tool(&p, &fin, "pay", json!({"amount": 1000.5}))
        else {
            panic!("over the limit");
        };
        assert!(message.contains("arguments.amount <= 1000"), "{message}");
        let treasurer = in_department(caller("tom", &["treasury"]), "finance");
        assert_eq!(
            tool(&p, &treasurer, "pay", json!({"amount": 5000})),
            Verdict::Allowed
        );
        assert!(p.needs_arguments("g", "gh", "pay"));
        // The step-up rule covers agents paying more than 100 only.
        let agent = Caller {
            auth_time: Some((crate::unix_now() - 3600) as u64),
            ..in_department(acting("fay", &[], "copilot"), "finance")
        };
        assert_eq!(
            tool(&p, &agent, "pay", json!({"amount": 50})),
            Verdict::Allowed
        );
        assert!(matches!(
            tool(&p, &agent, "pay", json!({"amount": 500})),
            Verdict::StepUp(_)
        ));
        // policy check says why a grant did not apply.
        let e = p.explain("g", "gh", &eng, ItemKind::Tool, "pay");
        assert!(!e.visible);
        assert!(
            e.reason.contains("grant 'finance-pays'") && e.reason.contains("is false"),
            "{}",
            e.reason
        );
    }

    #[test]
    fn scopes_step_up_rules_and_conditions_that_cannot_work_are_refused_at_load() {
        let refused = |extra: &str| policy(extra).unwrap_err().0;
        let e =
            refused(&SCOPED.replace(r#""create_*" = ["issues:write"]"#, r#""merge_*" = ["x"]"#));
        assert!(e.contains("scopes names tool 'merge_*'"), "{e}");
        let e = refused(&SCOPED.replace(r#"["bot:act"]"#, r#"["bot act"]"#));
        assert!(e.contains("not a valid OAuth scope"), "{e}");
        let e = refused(&SCOPED.replace("acr_values = [\"mfa\", \"phr\"]\nmax_age_secs = 300", ""));
        assert!(e.contains("asks for nothing"), "{e}");
        let e = refused(&SCOPED.replace(
            "tools = [\"delete_*\"]",
            "tools = [\"delete_*\"]\nassignments2 = 1",
        ));
        assert!(e.contains("assignments2"), "{e}");
        let e = refused(&CONDITIONAL.replace("size(actors) <= 1", "arguments.amount < 5"));
        assert!(e.contains("a grant's condition cannot"), "{e}");
        let e = refused(&CONDITIONAL.replace("agent != ''", "agnet != ''"));
        assert!(
            e.contains("[[policy.step_up]] 'fresh-for-agents'") && e.contains("'agnet'"),
            "{e}"
        );
    }

    #[test]
    fn approval_rules_select_by_annotations_only_on_servers_trusted_to_give_them() {
        let rule = r#"
[[policy.grants]]
name = "all"
gateway = "g"
assignments = ["gh"]
users = ["*"]
tools = { allow = ["*"] }
[[policy.approvals]]
name = "destructive"
gateway = "g"
assignments = ["gh"]
tools = ["*"]
annotations = { destructiveHint = true }
"#;
        let e = policy(rule).unwrap_err().0;
        assert!(e.contains("not trusted to annotate honestly"), "{e}");
        let trusted = |extra: &str| {
            let text = format!(
                "{}{extra}",
                BASE.replace(
                    "name = \"gh\"\nurl",
                    "name = \"gh\"\ntrust_annotations = true\nurl"
                )
            );
            let config = Config::parse(&text).map_err(|e| PolicyError(e.to_string()))?;
            Policy::compile(&config, &text)
        };
        let e = trusted(&rule.replace("destructiveHint", "dangerHint"))
            .unwrap_err()
            .0;
        assert!(
            e.contains("'dangerHint' is not a tool annotation hint"),
            "{e}"
        );
        let p = trusted(rule).unwrap();
        let who = caller("alice", &[]);
        let args = json!({});
        let covered = |annotations: Option<Value>| {
            p.approval_for("g", "gh", &who, "drop_table", &args, annotations.as_ref())
                .map(|n| n.rule.clone())
        };
        assert_eq!(
            covered(Some(json!({"destructiveHint": true}))),
            Some("destructive".into())
        );
        assert_eq!(
            covered(Some(
                json!({"readOnlyHint": true, "destructiveHint": false})
            )),
            None
        );
        // A tool that says nothing is destructive by the spec's default.
        assert_eq!(covered(Some(json!({}))), Some("destructive".into()));
        // Annotations that could not be read hold the call.
        assert_eq!(covered(None), Some("destructive".into()));
        assert!(p.approval_reads_annotations("g", "gh", "drop_table"));

        // A condition may read them too, on a trusted server only; a
        // constraint's cannot (it is judged before any are read).
        let by_condition = r#"
[[policy.grants]]
name = "all"
gateway = "g"
assignments = ["gh"]
users = ["*"]
tools = { allow = ["*"] }
[[policy.approvals]]
name = "open-world-spend"
gateway = "g"
assignments = ["gh"]
tools = ["*"]
condition = "annotations.openWorldHint == true && arguments.amount > 5"
"#;
        let e = policy(by_condition).unwrap_err().0;
        assert!(e.contains("not trusted to annotate honestly"), "{e}");
        let p = trusted(by_condition).unwrap();
        let spend = json!({"amount": 10});
        let open = json!({"openWorldHint": true});
        let closed = json!({"openWorldHint": false});
        let need = |args: &Value, a: Option<&Value>| {
            p.approval_for("g", "gh", &who, "pay", args, a).is_some()
        };
        assert!(need(&spend, Some(&open)));
        assert!(!need(&spend, Some(&closed)));
        assert!(!need(&json!({"amount": 1}), Some(&open)));
        assert!(need(&spend, None), "unknown annotations hold the call");
        let step_up = r#"
[[policy.grants]]
name = "all"
gateway = "g"
assignments = ["gh"]
users = ["*"]
tools = { allow = ["*"] }
[[policy.step_up]]
name = "s"
gateway = "g"
assignments = ["gh"]
tools = ["*"]
acr_values = ["mfa"]
condition = "annotations.openWorldHint == true"
"#;
        let e = trusted(step_up).unwrap_err().0;
        assert!(
            e.contains("'annotations', which is not an attribute"),
            "{e}"
        );
    }
}
