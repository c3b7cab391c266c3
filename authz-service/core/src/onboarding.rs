//! Agent onboarding by approval: an agent nobody provisioned, calling a
//! gateway with `unknown_agents = "request"`, is refused as on any gateway
//! *and* leaves a request an operator can approve or reject
//! (`latchkey agent requests|approve|reject`). An approved agent is
//! provisioned in Redis beside the config file's `[[agents]]`, with the
//! grants the operator gave it, and every replica compiles it into its
//! policy (`merged_with`).
//!
//! What a request records comes from verified tokens and mTLS peers only
//! (an unauthenticated call is refused before an agent is looked for), and
//! is bounded: [`MAX_REQUESTS`] requests at once, [`MAX_ACTED_FOR`] people
//! per request, ids of at most [`MAX_AGENT_ID_LEN`] bytes.

use serde::{Deserialize, Deserializer, Serialize};

use crate::agents::AgentConfig;
use crate::config::Config;
use crate::config::{GrantConfig, PatternsConfig};
use crate::principal::AgentSource;

/// Requests kept at once (pending, approved or rejected); a new agent
/// beyond them is refused without one.
pub const MAX_REQUESTS: usize = 200;
/// People a request remembers an agent acted for (the first ones seen).
pub const MAX_ACTED_FOR: usize = 20;
/// Longer ids are refused without a request (no IdP issues such client ids).
pub const MAX_AGENT_ID_LEN: usize = 256;

/// Where a request stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    #[default]
    Pending,
    Approved,
    /// Remembered: the agent stays refused, and later calls only count.
    Rejected,
}

impl RequestStatus {
    pub fn name(self) -> &'static str {
        match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Approved => "approved",
            RequestStatus::Rejected => "rejected",
        }
    }
}

/// One unprovisioned agent, as its refused calls showed it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRequest {
    /// The id it presented (client id, SPIFFE ID or actor).
    pub agent: String,
    /// How it was recognised (`AgentSource::name`).
    pub source: String,
    /// Gateways it called.
    #[serde(default, deserialize_with = "list")]
    pub gateways: Vec<String>,
    /// People it acted for (headless calls add nobody).
    #[serde(default, deserialize_with = "list")]
    pub acted_for: Vec<String>,
    pub first_seen: String,
    pub last_seen: String,
    /// Refused calls counted (coalesced per replica, so never more than made).
    pub count: u64,
    #[serde(default)]
    pub status: RequestStatus,
    #[serde(default)]
    pub decided_by: Option<String>,
    #[serde(default)]
    pub decided_at: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Redis scripts encode an empty Lua table as `{}`: read it as no items.
fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrEmpty {
        List(Vec<String>),
        Empty {},
    }
    Ok(match ListOrEmpty::deserialize(d)? {
        ListOrEmpty::List(l) => l,
        ListOrEmpty::Empty {} => Vec::new(),
    })
}

/// One grant an operator gives an agent when approving it: tools on one
/// assignment of one gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentGrant {
    pub gateway: String,
    pub assignment: String,
    /// Tool names or patterns.
    pub tools: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OnboardingError(pub String);

impl AgentGrant {
    /// `GATEWAY/ASSIGNMENT` (every tool) or `GATEWAY/ASSIGNMENT=TOOL,TOOL`
    /// (names or patterns), as the command line takes it.
    pub fn parse(text: &str) -> Result<AgentGrant, OnboardingError> {
        let (place, tools) = match text.split_once('=') {
            Some((place, tools)) => (place, Some(tools)),
            None => (text, None),
        };
        let bad = || {
            OnboardingError(format!(
                "grant '{text}' is not GATEWAY/ASSIGNMENT or GATEWAY/ASSIGNMENT=TOOL,TOOL"
            ))
        };
        let (gateway, assignment) = place.split_once('/').ok_or_else(bad)?;
        let tools: Vec<String> = match tools {
            None => vec!["*".into()],
            Some(t) => t
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect(),
        };
        if gateway.is_empty() || assignment.is_empty() || tools.is_empty() {
            return Err(bad());
        }
        Ok(AgentGrant {
            gateway: gateway.into(),
            assignment: assignment.into(),
            tools,
        })
    }
}

impl std::fmt::Display for AgentGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}={}",
            self.gateway,
            self.assignment,
            self.tools.join(",")
        )
    }
}

/// An agent provisioned by approving its request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnboardedAgent {
    /// Its name in grants and the audit trail: the id it presented.
    pub name: String,
    /// How it is recognised: its SPIFFE ID (`mtls`) or client id.
    pub source: String,
    pub grants: Vec<AgentGrant>,
    pub approved_by: String,
    pub approved_at: String,
}

impl OnboardedAgent {
    /// As `[[agents]]` would provision it: by the peer identity it
    /// presented, or by its client id (an actor is a client id too).
    pub fn agent_config(&self) -> AgentConfig {
        let mtls = self.source == AgentSource::Mtls.name();
        AgentConfig {
            name: self.name.clone(),
            spiffe_ids: if mtls {
                vec![self.name.clone()]
            } else {
                vec![]
            },
            client_ids: Some(if mtls {
                vec![]
            } else {
                vec![self.name.clone()]
            }),
        }
    }

    fn grant_configs(&self) -> impl Iterator<Item = GrantConfig> + '_ {
        self.grants.iter().enumerate().map(|(i, g)| GrantConfig {
            name: toml::Spanned::new(0..0, format!("onboarded '{}' #{}", self.name, i + 1)),
            gateway: g.gateway.clone(),
            assignments: vec![g.assignment.clone()],
            users: vec![],
            roles: vec![],
            agents: vec![self.name.clone()],
            tools: PatternsConfig {
                allow: g.tools.clone(),
                deny: vec![],
            },
            prompts: PatternsConfig::default(),
            resources: PatternsConfig::default(),
            constraints: vec![],
            scopes: Default::default(),
            condition: None,
        })
    }
}

/// `config` with the onboarded agents added to its `[[agents]]` and their
/// grants to its `[policy]`; the names of those left out, because the
/// config file provisions the same name or id (the file wins: an operator
/// who writes an agent down takes it over).
///
/// Without a `[policy]` every caller may call everything: an onboarded
/// agent is then provisioned and its grants are not added (a first grant
/// would otherwise restrict everyone else).
pub fn merged_with(config: &Config, onboarded: &[OnboardedAgent]) -> (Config, Vec<String>) {
    let mut merged = config.clone();
    let mut skipped = Vec::new();
    for agent in onboarded {
        let taken = config.agents.iter().any(|a| {
            a.name == agent.name
                || a.spiffe_ids.contains(&agent.name)
                || a.client_ids
                    .as_ref()
                    .map_or(a.name == agent.name, |c| c.contains(&agent.name))
        });
        if taken {
            skipped.push(agent.name.clone());
            continue;
        }
        merged.agents.push(agent.agent_config());
        if let Some(policy) = merged.policy.as_mut() {
            policy.grants.extend(agent.grant_configs());
        }
    }
    (merged, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    fn onboarded(name: &str, source: &str, grants: &[&str]) -> OnboardedAgent {
        OnboardedAgent {
            name: name.into(),
            source: source.into(),
            grants: grants
                .iter()
                .map(|g| AgentGrant::parse(g).unwrap())
                .collect(),
            approved_by: "ops".into(),
            approved_at: "2026-12-07T00:00:00Z".into(),
        }
    }

    #[test]
    fn a_grant_is_gateway_slash_assignment_with_every_tool_unless_named() {
        let all = AgentGrant::parse("e2e/fast").unwrap();
        assert_eq!(
            (all.gateway.as_str(), all.assignment.as_str(), all.tools),
            ("e2e", "fast", vec!["*".to_string()])
        );
        let some = AgentGrant::parse("e2e/fast=tool_00, tool_1*").unwrap();
        assert_eq!(some.tools, ["tool_00", "tool_1*"]);
        assert_eq!(some.to_string(), "e2e/fast=tool_00,tool_1*");
        for bad in ["e2e", "/fast", "e2e/", "e2e/fast=", "e2e/fast=,"] {
            let e = AgentGrant::parse(bad).unwrap_err();
            assert!(e.0.contains("GATEWAY/ASSIGNMENT"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_request_written_by_a_script_reads_an_empty_table_as_no_items() {
        let r: AgentRequest = serde_json::from_str(
            r#"{"agent":"bot","source":"client_id","gateways":{},"acted_for":{},
                "first_seen":"a","last_seen":"b","count":3,"status":"rejected"}"#,
        )
        .unwrap();
        assert!(r.gateways.is_empty() && r.acted_for.is_empty());
        assert_eq!((r.count, r.status), (3, RequestStatus::Rejected));
        let r: AgentRequest = serde_json::from_str(
            r#"{"agent":"bot","source":"mtls","gateways":["e2e"],"acted_for":["alice"],
                "first_seen":"a","last_seen":"b","count":1}"#,
        )
        .unwrap();
        assert_eq!(
            (r.gateways, r.acted_for),
            (vec!["e2e".into()], vec!["alice".into()])
        );
        assert_eq!(r.status, RequestStatus::Pending);
    }

    const CONFIG: &str = concat!(
        include_str!("../../testdata/gateway.toml"),
        r#"
[[gateways.assignments]]
name = "gh"
server = "gh"
scheme = "shared"
identity = "gh-sa"

[[agents]]
name = "ci-bot"
client_ids = ["ci-bot-client"]

[policy]
[[policy.grants]]
name = "everyone"
gateway = "g"
assignments = ["gh"]
users = ["*"]
tools = { allow = ["*"] }
"#
    );

    #[test]
    fn an_onboarded_agent_is_provisioned_with_its_grants_and_the_file_wins_on_a_clash() {
        let config = Config::parse(CONFIG).unwrap();
        let (merged, skipped) = merged_with(
            &config,
            &[
                onboarded("new-bot", "client_id", &["g/gh=search_*"]),
                onboarded("spiffe://corp/sa/x", "mtls", &[]),
                onboarded("ci-bot-client", "client_id", &["g/gh"]),
            ],
        );
        assert_eq!(skipped, ["ci-bot-client"]);
        let names: Vec<&str> = merged.agents.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["ci-bot", "new-bot", "spiffe://corp/sa/x"]);
        assert_eq!(merged.agents[2].spiffe_ids, ["spiffe://corp/sa/x"]);
        let grants = &merged.policy.as_ref().unwrap().grants;
        assert_eq!(grants.len(), 2);
        assert_eq!(grants[1].agents, ["new-bot"]);
        assert_eq!(grants[1].tools.allow, ["search_*"]);
        Policy::compile(&merged, CONFIG).expect("the merged config compiles");

        // Without a [policy], provisioned only: no grant to restrict anyone.
        let open = Config::parse(CONFIG.split("[policy]").next().unwrap()).unwrap();
        let (merged, _) = merged_with(&open, &[onboarded("new-bot", "client_id", &["g/gh"])]);
        assert!(merged.policy.is_none());
        assert_eq!(merged.agents.len(), 2);
    }

    #[test]
    fn a_grant_naming_an_assignment_that_does_not_exist_does_not_compile() {
        let config = Config::parse(CONFIG).unwrap();
        let (merged, _) = merged_with(&config, &[onboarded("new-bot", "client_id", &["g/nope"])]);
        let e = Policy::compile(&merged, CONFIG).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }
}
