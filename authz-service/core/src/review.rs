//! Access review (`latchkey access review`): for each person and agent
//! Latchkey knows, what they may call where (from the policy, per
//! assignment), through which identity, when that identity was last used
//! and refreshed, and what looks stale. Pure: it reads what the caller
//! loaded (the config with onboarded agents merged in, the vault's
//! records, connections, principals and last-used times) and judges
//! against `now`, so a fixture gives the same answer field by field.
//!
//! Who "a person Latchkey knows" is: an identity's owner, someone with a
//! connection, a deactivated (or reactivated) user, someone a grant names,
//! someone the identity provider provisioned over SCIM, or someone a
//! replica let through. Roles come from the person's token at
//! request time, so a grant by role is listed with the role it needs.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::config::{Config, IdentityScheme};
use crate::identity::{
    Availability, ConnectionRecord, PrincipalKind, PrincipalRecord, Status, VaultRecord,
};

/// What kind of name a last-used time is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Used {
    Identity,
    User,
    Agent,
}

impl Used {
    /// The name's field in the last-used hash.
    pub fn field(self, name: &str) -> String {
        format!("{}:{name}", self.kind())
    }

    fn kind(self) -> &'static str {
        match self {
            Used::Identity => "identity",
            Used::User => "user",
            Used::Agent => "agent",
        }
    }
}

/// Every last-used time written, field (`Used::field`) → Unix seconds.
#[derive(Debug, Default, Clone)]
pub struct LastUsedTimes(pub HashMap<String, i64>);

impl LastUsedTimes {
    pub fn of(&self, kind: Used, name: &str) -> Option<i64> {
        self.0.get(&kind.field(name)).copied()
    }

    fn names(&self, kind: Used) -> impl Iterator<Item = &str> {
        let prefix = format!("{}:", kind.kind());
        self.0
            .keys()
            .filter_map(move |k| k.strip_prefix(prefix.as_str()))
            .collect::<Vec<_>>()
            .into_iter()
    }
}

/// One grant's part in a principal's access: its label, the tool patterns
/// it allows and those it denies.
type Given = (String, Vec<String>, Vec<String>);

/// What the review reads.
pub struct ReviewInput<'a> {
    /// The config with agents onboarded by approval merged in
    /// (`onboarding::merged_with`).
    pub config: &'a Config,
    /// Names of the agents onboarded by approval (the rest of
    /// `config.agents` come from the file).
    pub onboarded: &'a BTreeSet<String>,
    pub identities: &'a [VaultRecord],
    pub connections: &'a [ConnectionRecord],
    pub principals: &'a [PrincipalRecord],
    /// People the identity provider provisioned over SCIM (`userName`s).
    pub provisioned_users: &'a BTreeSet<String>,
    pub last_used: &'a LastUsedTimes,
    pub now: i64,
    /// An identity or connection unused this long is stale.
    pub stale_after_days: u64,
}

/// Which principals to show (all when empty); findings are always whole.
#[derive(Debug, Default, Clone)]
pub struct ReviewFilter {
    pub user: Option<String>,
    pub agent: Option<String>,
    pub gateway: Option<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Review {
    pub principals: Vec<PrincipalReview>,
    pub findings: Vec<Finding>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct PrincipalReview {
    /// `user` or `agent`.
    pub kind: &'static str,
    pub name: String,
    pub status: &'static str,
    /// Agents: `config`, `onboarded`, or `unprovisioned` (only named).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'static str>,
    pub last_used: Option<String>,
    pub access: Vec<AccessRow>,
    /// A person's own identities.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<IdentityRow>,
}

/// What one principal may call on one assignment.
#[derive(Debug, Serialize, PartialEq)]
pub struct AccessRow {
    pub gateway: String,
    pub assignment: String,
    pub server: String,
    pub scheme: &'static str,
    /// Grant names; a grant by role says which (`name (role R)`).
    pub grants: Vec<String>,
    /// Tool patterns allowed and denied by those grants.
    pub tools: Vec<String>,
    pub tools_denied: Vec<String>,
    /// The identity calls go upstream with (for a person on a per-user
    /// server, the one their connection names; `None`: none chosen).
    pub identity: Option<String>,
    pub identity_status: Option<&'static str>,
    pub identity_last_used: Option<String>,
    /// When the identity's secret last changed (an OAuth refresh included).
    pub identity_refreshed: Option<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct IdentityRow {
    pub id: String,
    pub server: String,
    pub availability: &'static str,
    pub status: &'static str,
    pub last_used: Option<String>,
    pub refreshed: String,
    pub expires_at: Option<String>,
}

/// Something that looks stale or wrong, with the command that acts on it.
#[derive(Debug, Serialize, PartialEq)]
pub struct Finding {
    /// `unused_identity`, `unused_connection`, `disabled_with_grants`,
    /// `identity_of_deactivated_user`, `grant_names_unknown_agent`.
    pub kind: &'static str,
    pub subject: String,
    pub detail: String,
    pub fix: Option<String>,
}

pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn unix_of(rfc: &str) -> Option<i64> {
    time::OffsetDateTime::parse(rfc, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Enabled => "enabled",
        Status::Disabled => "disabled",
    }
}

impl ReviewInput<'_> {
    fn status(&self, kind: PrincipalKind, name: &str) -> Status {
        self.principals
            .iter()
            .find(|p| p.kind == kind && p.id == name)
            .map(|p| p.status)
            .unwrap_or_default()
    }

    fn identity(&self, id: &str) -> Option<&VaultRecord> {
        self.identities.iter().find(|r| r.id == id)
    }

    fn used(&self, kind: Used, name: &str) -> Option<String> {
        self.last_used.of(kind, name).map(rfc3339)
    }

    fn stale_secs(&self) -> i64 {
        i64::try_from(self.stale_after_days.saturating_mul(86_400)).unwrap_or(i64::MAX)
    }

    /// Not let through for the stale period: last used before it, or never
    /// since `since` (its creation) when that is before it.
    fn unused(&self, kind: Used, name: &str, since: &str) -> bool {
        let cutoff = self.now.saturating_sub(self.stale_secs());
        match self.last_used.of(kind, name) {
            Some(at) => at < cutoff,
            None => unix_of(since).is_some_and(|c| c < cutoff),
        }
    }

    fn users(&self) -> BTreeSet<String> {
        let mut users = BTreeSet::new();
        users.extend(
            self.identities
                .iter()
                .filter(|r| r.availability == Availability::Private)
                .map(|r| r.owner.clone()),
        );
        users.extend(self.connections.iter().map(|c| c.user.clone()));
        users.extend(
            self.principals
                .iter()
                .filter(|p| p.kind == PrincipalKind::User)
                .map(|p| p.id.clone()),
        );
        if let Some(policy) = &self.config.policy {
            for g in &policy.grants {
                users.extend(g.users.iter().filter(|u| *u != "*").cloned());
            }
        }
        users.extend(self.last_used.names(Used::User).map(str::to_owned));
        users.extend(self.provisioned_users.iter().cloned());
        users
    }

    fn agents(&self) -> BTreeSet<String> {
        let mut agents: BTreeSet<String> =
            self.config.agents.iter().map(|a| a.name.clone()).collect();
        agents.extend(
            self.principals
                .iter()
                .filter(|p| p.kind == PrincipalKind::Agent)
                .map(|p| p.id.clone()),
        );
        if let Some(policy) = &self.config.policy {
            for g in &policy.grants {
                agents.extend(g.agents.iter().cloned());
            }
        }
        agents.extend(self.last_used.names(Used::Agent).map(str::to_owned));
        agents
    }

    /// The grants that give `name` something, by (gateway, assignment).
    fn grants_of(&self, kind: PrincipalKind, name: &str) -> BTreeMap<(String, String), Vec<Given>> {
        let mut out: BTreeMap<(String, String), Vec<_>> = BTreeMap::new();
        let Some(policy) = &self.config.policy else {
            // No policy: every authenticated caller may call everything.
            for gw in &self.config.gateways {
                for a in &gw.assignments {
                    out.entry((gw.name.clone(), a.name.clone()))
                        .or_default()
                        .push(("(no [policy]: everyone)".into(), vec!["*".into()], vec![]));
                }
            }
            return out;
        };
        for g in &policy.grants {
            let label = match kind {
                PrincipalKind::User if g.users.iter().any(|u| u == name || u == "*") => {
                    Some(g.name.get_ref().clone())
                }
                PrincipalKind::User if !g.roles.is_empty() => Some(format!(
                    "{} (role {})",
                    g.name.get_ref(),
                    g.roles.join(" or ")
                )),
                PrincipalKind::Agent if g.agents.iter().any(|a| a == name) => {
                    Some(g.name.get_ref().clone())
                }
                _ => None,
            };
            let Some(label) = label else { continue };
            for assignment in &g.assignments {
                out.entry((g.gateway.clone(), assignment.clone()))
                    .or_default()
                    .push((label.clone(), g.tools.allow.clone(), g.tools.deny.clone()));
            }
        }
        out
    }

    fn access(&self, kind: PrincipalKind, name: &str, filter: &ReviewFilter) -> Vec<AccessRow> {
        let mut rows = Vec::new();
        for ((gateway, assignment), grants) in self.grants_of(kind, name) {
            if filter.gateway.as_ref().is_some_and(|g| *g != gateway) {
                continue;
            }
            let Some(a) = self
                .config
                .gateways
                .iter()
                .find(|g| g.name == gateway)
                .and_then(|g| g.assignments.iter().find(|a| a.name == assignment))
            else {
                continue;
            };
            let exchange = self
                .config
                .servers
                .iter()
                .any(|s| s.name == a.server && s.exchange.is_some());
            let identity = match (&a.scheme, kind) {
                (IdentityScheme::Shared { identity }, _) => Some(identity.clone()),
                (IdentityScheme::PerUser, PrincipalKind::User) if !exchange => self
                    .connections
                    .iter()
                    .find(|c| c.user == name && c.gateway == gateway)
                    .and_then(|c| c.identities.get(&a.server).cloned()),
                _ => None,
            };
            let record = identity.as_deref().and_then(|id| self.identity(id));
            let mut tools: Vec<String> = grants.iter().flat_map(|g| g.1.clone()).collect();
            let mut denied: Vec<String> = grants.iter().flat_map(|g| g.2.clone()).collect();
            tools.sort();
            tools.dedup();
            denied.sort();
            denied.dedup();
            rows.push(AccessRow {
                gateway,
                assignment,
                server: a.server.clone(),
                scheme: if exchange && a.scheme == IdentityScheme::PerUser {
                    "per_user (token exchange)"
                } else {
                    a.scheme.name()
                },
                grants: grants.into_iter().map(|g| g.0).collect(),
                tools,
                tools_denied: denied,
                identity_status: record.map(|r| status_name(r.status)),
                identity_last_used: identity
                    .as_deref()
                    .and_then(|i| self.used(Used::Identity, i)),
                identity_refreshed: record.map(|r| r.updated_at.clone()),
                identity,
            });
        }
        rows
    }

    fn findings(&self) -> Vec<Finding> {
        let mut findings = Vec::new();
        let days = self.stale_after_days;
        for r in self.identities.iter().filter(|r| r.exchanged.is_none()) {
            if r.status == Status::Enabled && self.unused(Used::Identity, &r.id, &r.created_at) {
                findings.push(Finding {
                    kind: "unused_identity",
                    subject: r.id.clone(),
                    detail: format!(
                        "identity '{}' ({} of '{}', server '{}') was not used for {days} days",
                        r.id,
                        match r.availability {
                            Availability::Private => "private",
                            Availability::Global => "global",
                        },
                        r.owner,
                        r.server
                    ),
                    fix: Some(format!("latchkey identity disable {}", r.id)),
                });
            }
            if r.availability == Availability::Private
                && self.status(PrincipalKind::User, &r.owner) == Status::Disabled
            {
                findings.push(Finding {
                    kind: "identity_of_deactivated_user",
                    subject: r.id.clone(),
                    detail: format!(
                        "private identity '{}' belongs to '{}', who is deactivated",
                        r.id, r.owner
                    ),
                    fix: Some(format!("latchkey identity delete {}", r.id)),
                });
            }
        }
        for c in self.connections {
            let unused = c.identities.values().all(|id| {
                let created = self.identity(id).map_or("", |r| r.created_at.as_str());
                self.unused(Used::Identity, id, created)
            });
            if c.status == Status::Enabled && !c.identities.is_empty() && unused {
                findings.push(Finding {
                    kind: "unused_connection",
                    subject: format!("{}@{}", c.user, c.gateway),
                    detail: format!(
                        "'{}' on gateway '{}': none of the connection's identities was used for {days} days",
                        c.user, c.gateway
                    ),
                    fix: Some(format!(
                        "latchkey connection disable --gateway {} --user {}",
                        c.gateway, c.user
                    )),
                });
            }
        }
        if let Some(policy) = &self.config.policy {
            let provisioned: BTreeSet<&str> =
                self.config.agents.iter().map(|a| a.name.as_str()).collect();
            let open_gateways: BTreeSet<&str> = self
                .config
                .gateways
                .iter()
                .filter(|g| g.unknown_agents == crate::agents::UnknownAgents::Allow)
                .map(|g| g.name.as_str())
                .collect();
            for g in &policy.grants {
                for user in g
                    .users
                    .iter()
                    .filter(|u| self.status(PrincipalKind::User, u) == Status::Disabled)
                {
                    findings.push(Finding {
                        kind: "disabled_with_grants",
                        subject: user.clone(),
                        detail: format!(
                            "user '{user}' is deactivated and grant '{}' still names them",
                            g.name.get_ref()
                        ),
                        fix: None,
                    });
                }
                for agent in &g.agents {
                    if self.status(PrincipalKind::Agent, agent) == Status::Disabled {
                        findings.push(Finding {
                            kind: "disabled_with_grants",
                            subject: agent.clone(),
                            detail: format!(
                                "agent '{agent}' is disabled and grant '{}' still names it",
                                g.name.get_ref()
                            ),
                            fix: None,
                        });
                    }
                    if !provisioned.contains(agent.as_str())
                        && !open_gateways.contains(g.gateway.as_str())
                    {
                        findings.push(Finding {
                            kind: "grant_names_unknown_agent",
                            subject: agent.clone(),
                            detail: format!(
                                "grant '{}' names agent '{agent}', which is neither in [[agents]] nor onboarded, on gateway '{}' that refuses unknown agents",
                                g.name.get_ref(),
                                g.gateway
                            ),
                            fix: Some(format!("latchkey agent requests --all  # or add '{agent}' under [[agents]]")),
                        });
                    }
                }
            }
        }
        findings
    }
}

/// The review of everyone (or those `filter` names).
pub fn review(input: &ReviewInput<'_>, filter: &ReviewFilter) -> Review {
    let mut principals = Vec::new();
    if filter.agent.is_none() {
        for user in input.users() {
            if filter.user.as_ref().is_some_and(|u| *u != user) {
                continue;
            }
            let identities = input
                .identities
                .iter()
                .filter(|r| r.owner == user && r.availability == Availability::Private)
                .map(|r| IdentityRow {
                    id: r.id.clone(),
                    server: r.server.clone(),
                    availability: "private",
                    status: status_name(r.status),
                    last_used: input.used(Used::Identity, &r.id),
                    refreshed: r.updated_at.clone(),
                    expires_at: r.expires_at.clone(),
                })
                .collect();
            principals.push(PrincipalReview {
                kind: "user",
                status: status_name(input.status(PrincipalKind::User, &user)),
                source: None,
                last_used: input.used(Used::User, &user),
                access: input.access(PrincipalKind::User, &user, filter),
                identities,
                name: user,
            });
        }
    }
    if filter.user.is_none() {
        for agent in input.agents() {
            if filter.agent.as_ref().is_some_and(|a| *a != agent) {
                continue;
            }
            let source = if input.onboarded.contains(&agent) {
                "onboarded"
            } else if input.config.agents.iter().any(|a| a.name == agent) {
                "config"
            } else {
                "unprovisioned"
            };
            principals.push(PrincipalReview {
                kind: "agent",
                status: status_name(input.status(PrincipalKind::Agent, &agent)),
                source: Some(source),
                last_used: input.used(Used::Agent, &agent),
                access: input.access(PrincipalKind::Agent, &agent, filter),
                identities: Vec::new(),
                name: agent,
            });
        }
    }
    Review {
        principals,
        findings: input.findings(),
    }
}

/// The CSV form: one line per principal and assignment (a principal with
/// no access still gets one line), then nothing else: findings are
/// printed apart.
pub fn to_csv(review: &Review) -> String {
    let mut out = String::from(
        "kind,name,status,last_used,gateway,assignment,server,scheme,grants,tools,tools_denied,identity,identity_status,identity_last_used,identity_refreshed\n",
    );
    let field = |s: &str| {
        // Names come from tokens and the IdP: one a spreadsheet would read
        // as a formula is written as text.
        let s = if s.starts_with(['=', '+', '-', '@']) {
            std::borrow::Cow::Owned(format!("'{s}"))
        } else {
            std::borrow::Cow::Borrowed(s)
        };
        let s = s.as_ref();
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    for p in &review.principals {
        let head = [
            p.kind.to_string(),
            p.name.clone(),
            p.status.to_string(),
            p.last_used.clone().unwrap_or_default(),
        ];
        let rows: Vec<Vec<String>> = if p.access.is_empty() {
            vec![vec![String::new(); 11]]
        } else {
            p.access
                .iter()
                .map(|a| {
                    vec![
                        a.gateway.clone(),
                        a.assignment.clone(),
                        a.server.clone(),
                        a.scheme.to_string(),
                        a.grants.join(";"),
                        a.tools.join(";"),
                        a.tools_denied.join(";"),
                        a.identity.clone().unwrap_or_default(),
                        a.identity_status.unwrap_or_default().to_string(),
                        a.identity_last_used.clone().unwrap_or_default(),
                        a.identity_refreshed.clone().unwrap_or_default(),
                    ]
                })
                .collect()
        };
        for row in rows {
            let line: Vec<String> = head.iter().chain(row.iter()).map(|s| field(s)).collect();
            out.push_str(&line.join(","));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DAY: i64 = 86_400;
    /// 2026-12-07T00:00:00Z.
    const NOW: i64 = 1_796_601_600;

    const CONFIG: &str = concat!(
        include_str!("../../testdata/gateway.toml"),
        r#"
[[servers]]
name = "crm"
url = "http://127.0.0.1:2/mcp"

[[gateways.assignments]]
name = "gh"
server = "gh"
scheme = "shared"
identity = "gh-sa"

[[gateways.assignments]]
name = "crm"
server = "crm"
scheme = "per_user"

[[agents]]
name = "ci-bot"

[policy]
[[policy.grants]]
name = "everyone-gh"
gateway = "g"
assignments = ["gh"]
users = ["*"]
tools = { allow = ["search_*"], deny = ["search_admin"] }

[[policy.grants]]
name = "alice-crm"
gateway = "g"
assignments = ["crm"]
users = ["alice", "carol"]
tools = { allow = ["*"] }

[[policy.grants]]
name = "finance-crm"
gateway = "g"
assignments = ["crm"]
roles = ["finance"]
tools = { allow = ["invoice_*"] }

[[policy.grants]]
name = "bots"
gateway = "g"
assignments = ["gh"]
agents = ["ci-bot", "ghost-bot"]
tools = { allow = ["search_code"] }
"#
    );

    fn identity(id: &str, owner: &str, server: &str, private: bool, created: i64) -> VaultRecord {
        serde_json::from_value(json!({
            "id": id, "server": server, "owner": owner,
            "availability": if private { "private" } else { "global" },
            "status": "enabled", "kind": "static", "version": 1,
            "created_by": owner, "created_at": rfc3339(created),
            "updated_by": owner, "updated_at": rfc3339(created + DAY),
            "sealed": {"key_id": "k", "nonce": "n", "ciphertext": "c"},
        }))
        .expect("a record")
    }

    fn fixture() -> (
        Config,
        Vec<VaultRecord>,
        Vec<ConnectionRecord>,
        Vec<PrincipalRecord>,
        LastUsedTimes,
    ) {
        let config = Config::parse(CONFIG).expect("config");
        let identities = vec![
            identity("gh-sa", "ops", "gh", false, NOW - 100 * DAY),
            identity("alice-crm", "alice", "crm", true, NOW - 90 * DAY),
            identity("carol-crm", "carol", "crm", true, NOW - 10 * DAY),
        ];
        let connections = vec![
            ConnectionRecord {
                user: "alice".into(),
                gateway: "g".into(),
                status: Status::Enabled,
                identities: [("crm".to_string(), "alice-crm".to_string())].into(),
                updated_by: "alice".into(),
                updated_at: rfc3339(NOW - 90 * DAY),
            },
            ConnectionRecord {
                user: "carol".into(),
                gateway: "g".into(),
                status: Status::Enabled,
                identities: [("crm".to_string(), "carol-crm".to_string())].into(),
                updated_by: "carol".into(),
                updated_at: rfc3339(NOW - 10 * DAY),
            },
        ];
        let principals = vec![
            PrincipalRecord {
                id: "carol".into(),
                kind: PrincipalKind::User,
                status: Status::Disabled,
                updated_by: "ops".into(),
                updated_at: rfc3339(NOW - DAY),
                scim_groups: None,
            },
            PrincipalRecord {
                id: "ci-bot".into(),
                kind: PrincipalKind::Agent,
                status: Status::Disabled,
                updated_by: "ops".into(),
                updated_at: rfc3339(NOW - DAY),
                scim_groups: None,
            },
        ];
        let last_used = LastUsedTimes(
            [
                (Used::Identity.field("gh-sa"), NOW - 2 * DAY),
                (Used::Identity.field("alice-crm"), NOW - 45 * DAY),
                (Used::User.field("alice"), NOW - 2 * DAY),
                (Used::User.field("dave"), NOW - 3 * DAY),
                (Used::Agent.field("ci-bot"), NOW - 5 * DAY),
            ]
            .into(),
        );
        (config, identities, connections, principals, last_used)
    }

    fn run(filter: &ReviewFilter) -> Review {
        let (config, identities, connections, principals, last_used) = fixture();
        review(
            &ReviewInput {
                config: &config,
                onboarded: &BTreeSet::new(),
                identities: &identities,
                connections: &connections,
                principals: &principals,
                provisioned_users: &["erin".to_string()].into(),
                last_used: &last_used,
                now: NOW,
                stale_after_days: 30,
            },
            filter,
        )
    }

    #[test]
    fn a_person_gets_what_the_grants_give_per_assignment_through_which_identity() {
        let r = run(&ReviewFilter {
            user: Some("alice".into()),
            ..Default::default()
        });
        assert_eq!(r.principals.len(), 1);
        let alice = &r.principals[0];
        assert_eq!(
            (alice.kind, alice.name.as_str(), alice.status, alice.source),
            ("user", "alice", "enabled", None)
        );
        assert_eq!(
            alice.last_used.as_deref(),
            Some(rfc3339(NOW - 2 * DAY).as_str())
        );
        assert_eq!(
            alice.access,
            vec![
                AccessRow {
                    gateway: "g".into(),
                    assignment: "crm".into(),
                    server: "crm".into(),
                    scheme: "per_user",
                    grants: vec!["alice-crm".into(), "finance-crm (role finance)".into()],
                    tools: vec!["*".into(), "invoice_*".into()],
                    tools_denied: vec![],
                    identity: Some("alice-crm".into()),
                    identity_status: Some("enabled"),
                    identity_last_used: Some(rfc3339(NOW - 45 * DAY)),
                    identity_refreshed: Some(rfc3339(NOW - 89 * DAY)),
                },
                AccessRow {
                    gateway: "g".into(),
                    assignment: "gh".into(),
                    server: "gh".into(),
                    scheme: "shared",
                    grants: vec!["everyone-gh".into()],
                    tools: vec!["search_*".into()],
                    tools_denied: vec!["search_admin".into()],
                    identity: Some("gh-sa".into()),
                    identity_status: Some("enabled"),
                    identity_last_used: Some(rfc3339(NOW - 2 * DAY)),
                    identity_refreshed: Some(rfc3339(NOW - 99 * DAY)),
                },
            ]
        );
        assert_eq!(
            alice.identities,
            vec![IdentityRow {
                id: "alice-crm".into(),
                server: "crm".into(),
                availability: "private",
                status: "enabled",
                last_used: Some(rfc3339(NOW - 45 * DAY)),
                refreshed: rfc3339(NOW - 89 * DAY),
                expires_at: None,
            }]
        );
    }

    #[test]
    fn everyone_known_is_listed_people_first_then_agents_with_their_source() {
        let r = run(&ReviewFilter::default());
        let names: Vec<(&str, &str, &str)> = r
            .principals
            .iter()
            .map(|p| (p.kind, p.name.as_str(), p.status))
            .collect();
        assert_eq!(
            names,
            [
                ("user", "alice", "enabled"),
                ("user", "carol", "disabled"),
                ("user", "dave", "enabled"),
                ("user", "erin", "enabled"),
                ("agent", "ci-bot", "disabled"),
                ("agent", "ghost-bot", "enabled"),
            ]
        );
        let ghost = &r.principals[5];
        assert_eq!(ghost.source, Some("unprovisioned"));
        assert_eq!(r.principals[4].source, Some("config"));
        assert_eq!(r.principals[4].access[0].grants, ["bots"]);
        assert_eq!(r.principals[4].access[0].tools, ["search_code"]);
        // A gateway filter keeps the principals, drops other gateways' rows.
        let none = run(&ReviewFilter {
            gateway: Some("other".into()),
            ..Default::default()
        });
        assert!(none.principals.iter().all(|p| p.access.is_empty()));
    }

    #[test]
    fn what_looks_stale_is_found_with_the_command_that_acts_on_it() {
        let r = run(&ReviewFilter::default());
        let found: Vec<(&str, &str)> = r
            .findings
            .iter()
            .map(|f| (f.kind, f.subject.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                // Used 45 days ago (the bound is 30).
                ("unused_identity", "alice-crm"),
                ("identity_of_deactivated_user", "carol-crm"),
                ("unused_connection", "alice@g"),
                ("disabled_with_grants", "carol"),
                ("disabled_with_grants", "ci-bot"),
                ("grant_names_unknown_agent", "ghost-bot"),
            ]
        );
        // gh-sa (used 2 days ago) and carol-crm (created 10 days ago,
        // never used) are not stale; carol's connection neither.
        let unused = &r.findings[0];
        assert_eq!(
            unused.fix.as_deref(),
            Some("latchkey identity disable alice-crm")
        );
        assert!(
            unused.detail.contains("private of 'alice'"),
            "{}",
            unused.detail
        );
    }

    #[test]
    fn the_csv_has_a_line_per_principal_and_assignment_and_quotes_what_needs_it() {
        let r = run(&ReviewFilter {
            user: Some("alice".into()),
            ..Default::default()
        });
        let csv = to_csv(&r);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3, "{csv}");
        assert!(lines[0].starts_with("kind,name,status,last_used,gateway"));
        assert!(
            lines[1].starts_with("user,alice,enabled,")
                && lines[1].contains(",g,crm,crm,per_user,alice-crm;finance-crm (role finance),*;invoice_*,,alice-crm,enabled,"),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains(",g,gh,gh,shared,everyone-gh,search_*,search_admin,gh-sa,"));
        let quoted = to_csv(&Review {
            principals: vec![PrincipalReview {
                kind: "user",
                name: "o'neil, \"jr\"".into(),
                status: "enabled",
                source: None,
                last_used: None,
                access: vec![],
                identities: vec![],
            }],
            findings: vec![],
        });
        assert!(
            quoted
                .lines()
                .nth(1)
                .unwrap()
                .starts_with("user,\"o'neil, \"\"jr\"\"\",enabled,")
        );
        let formula = to_csv(&Review {
            principals: vec![PrincipalReview {
                kind: "user",
                name: "=HYPERLINK(\"x\")".into(),
                status: "enabled",
                source: None,
                last_used: None,
                access: vec![],
                identities: vec![],
            }],
            findings: vec![],
        });
        assert!(
            formula
                .lines()
                .nth(1)
                .unwrap()
                .starts_with("user,\"'=HYPERLINK(\"\"x\"\")\",enabled,"),
            "{formula}"
        );
    }
}
