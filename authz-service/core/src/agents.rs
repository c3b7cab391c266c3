//! Which agent is behind a request, and for whom it acts.
//!
//! Agents are principals operators provision (`[[agents]]` in the config,
//! reloaded with the policy). One is recognised from, in order: the mTLS
//! peer's identity (a SPIFFE ID, as Istio issues), the token's
//! `client_id`/`azp`, or the current actor of an RFC 8693 `act` claim. The
//! first of these a request carries decides; it is not looked up further
//! down the list, so a workload cannot borrow another agent's client id.
//!
//! An agent whose token's subject is the agent itself (a client-credentials
//! token) acts for nobody: it is *headless*, and only its own grants apply.
//! Otherwise the token's subject is the user it acts for.

use std::collections::HashMap;

use serde::Deserialize;

use crate::principal::{AgentSource, Caller};

/// `[[agents]]`: one provisioned agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The name grants, the audit trail and `latchkey agent` use.
    pub name: String,
    /// mTLS peer identities (URI SANs, e.g. `spiffe://corp/ns/agents/sa/bot`).
    #[serde(default)]
    pub spiffe_ids: Vec<String>,
    /// OAuth client ids its tokens carry (`client_id`/`azp`, or `act.sub`).
    /// Default: the agent's name.
    pub client_ids: Option<Vec<String>>,
}

/// How a gateway treats a request from an agent nobody provisioned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownAgents {
    /// Refused (403) with a message naming the agent.
    #[default]
    Deny,
    /// Let through under the raw id it presented (grants may name that id).
    Allow,
    /// Refused as by `Deny`, and recorded as a request an operator can
    /// approve (`onboarding`).
    Request,
}

/// The agent behind one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActingAgent {
    /// The provisioned name; for an unknown agent, the id it presented.
    pub name: String,
    pub source: AgentSource,
    pub provisioned: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AgentConfigError(pub String);

/// Every provisioned agent, indexed by what identifies it.
#[derive(Debug, Default)]
pub struct AgentDirectory {
    by_spiffe: HashMap<String, String>,
    by_client: HashMap<String, String>,
    names: Vec<String>,
}

impl AgentDirectory {
    pub fn compile(agents: &[AgentConfig]) -> Result<AgentDirectory, AgentConfigError> {
        let mut d = AgentDirectory::default();
        for a in agents {
            if a.name.trim().is_empty() {
                return Err(AgentConfigError(
                    "[[agents]]: an agent has an empty name".into(),
                ));
            }
            if d.names.contains(&a.name) {
                return Err(AgentConfigError(format!(
                    "[[agents]] '{}' is listed twice",
                    a.name
                )));
            }
            d.names.push(a.name.clone());
            for s in &a.spiffe_ids {
                if let Some(other) = d.by_spiffe.insert(s.clone(), a.name.clone()) {
                    return Err(AgentConfigError(format!(
                        "[[agents]] '{}' and '{other}' both claim peer identity '{s}'",
                        a.name
                    )));
                }
            }
            let clients = a.client_ids.clone().unwrap_or_else(|| vec![a.name.clone()]);
            for c in clients {
                if let Some(other) = d.by_client.insert(c.clone(), a.name.clone()) {
                    return Err(AgentConfigError(format!(
                        "[[agents]] '{}' and '{other}' both claim client id '{c}'",
                        a.name
                    )));
                }
            }
        }
        Ok(d)
    }

    pub fn is_provisioned(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// The agent behind a request from `peer` (the mTLS peer principal,
    /// if any) with a token that verified as `caller`; `None` when a person
    /// calls directly (no peer identity, no client, no actor).
    pub fn recognise(&self, peer: Option<&str>, caller: &Caller) -> Option<ActingAgent> {
        let (presented, source, table) = if let Some(p) = peer.filter(|p| !p.is_empty()) {
            (p, AgentSource::Mtls, &self.by_spiffe)
        } else if let Some(c) = caller.client_id.as_deref() {
            (c, AgentSource::ClientId, &self.by_client)
        } else if let Some(a) = caller.actors.first() {
            (a.as_str(), AgentSource::Actor, &self.by_client)
        } else {
            return None;
        };
        Some(match table.get(presented) {
            Some(name) => ActingAgent {
                name: name.clone(),
                source,
                provisioned: true,
            },
            None => ActingAgent {
                name: presented.to_owned(),
                source,
                provisioned: false,
            },
        })
    }

    /// Whether the token's subject is the agent itself (it acts for nobody).
    pub fn is_headless(&self, agent: &ActingAgent, caller: &Caller) -> bool {
        caller.subject == agent.name
            || self.by_client.get(&caller.subject) == Some(&agent.name)
            || caller.client_id.as_deref() == Some(caller.subject.as_str())
    }

    /// Attaches the agent behind the request to `caller`; `Err` names an
    /// unknown agent that a gateway with `unknown_agents = "deny"` (or
    /// `"request"`) refuses
    /// (still attached, so the refusal is attributed).
    pub fn attribute(
        &self,
        peer: Option<&str>,
        caller: &mut Caller,
        unknown: UnknownAgents,
    ) -> Result<(), ActingAgent> {
        let Some(agent) = self.recognise(peer, caller) else {
            return Ok(());
        };
        caller.headless = self.is_headless(&agent, caller);
        caller.agent = Some(agent.name.clone());
        caller.agent_source = Some(agent.source);
        if !agent.provisioned && unknown != UnknownAgents::Allow {
            return Err(agent);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory() -> AgentDirectory {
        AgentDirectory::compile(&[
            AgentConfig {
                name: "ci-bot".into(),
                spiffe_ids: vec!["spiffe://corp/ns/agents/sa/ci-bot".into()],
                client_ids: Some(vec!["ci-bot-client".into()]),
            },
            AgentConfig {
                name: "helper".into(),
                spiffe_ids: vec![],
                client_ids: None,
            },
        ])
        .expect("valid")
    }

    fn token(sub: &str, client: Option<&str>, actors: &[&str]) -> Caller {
        Caller {
            subject: sub.into(),
            client_id: client.map(str::to_owned),
            actors: actors.iter().map(|a| (*a).to_owned()).collect(),
            ..Caller::default()
        }
    }

    #[test]
    fn the_peer_identity_comes_first_then_the_client_then_the_actor() {
        let d = directory();
        let a = d
            .recognise(
                Some("spiffe://corp/ns/agents/sa/ci-bot"),
                &token("alice", Some("helper"), &[]),
            )
            .expect("an agent");
        assert_eq!((a.name.as_str(), a.source), ("ci-bot", AgentSource::Mtls));
        let a = d
            .recognise(None, &token("alice", Some("ci-bot-client"), &["helper"]))
            .expect("an agent");
        assert_eq!(
            (a.name.as_str(), a.source),
            ("ci-bot", AgentSource::ClientId)
        );
        let a = d
            .recognise(None, &token("alice", None, &["helper", "ci-bot-client"]))
            .expect("an agent");
        assert_eq!((a.name.as_str(), a.source), ("helper", AgentSource::Actor));
        assert_eq!(d.recognise(None, &token("alice", None, &[])), None);
    }

    #[test]
    fn an_unprovisioned_peer_is_unknown_even_if_its_token_names_a_known_client() {
        let d = directory();
        let a = d
            .recognise(
                Some("spiffe://corp/ns/x/sa/stranger"),
                &token("alice", Some("helper"), &[]),
            )
            .expect("an agent");
        assert!(!a.provisioned);
        assert_eq!(a.name, "spiffe://corp/ns/x/sa/stranger");
        let mut refused = token("alice", Some("helper"), &[]);
        let peer = Some("spiffe://corp/ns/x/sa/stranger");
        assert!(
            d.attribute(peer, &mut refused, UnknownAgents::Deny)
                .is_err()
        );
        assert_eq!(refused.agent.as_deref(), peer);
        let mut allowed = token("alice", Some("someone"), &[]);
        d.attribute(None, &mut allowed, UnknownAgents::Allow)
            .expect("allowed");
        assert_eq!(allowed.agent.as_deref(), Some("someone"));
    }

    #[test]
    fn a_client_credentials_token_acts_for_nobody() {
        let d = directory();
        let attributed = |peer: Option<&str>, mut caller: Caller| {
            d.attribute(peer, &mut caller, UnknownAgents::Deny)
                .expect("known");
            caller
        };
        let headless = attributed(None, token("ci-bot-client", Some("ci-bot-client"), &[]));
        assert!(headless.headless);
        let for_alice = attributed(None, token("alice", Some("ci-bot-client"), &[]));
        assert!(!for_alice.headless);
        assert_eq!(for_alice.agent.as_deref(), Some("ci-bot"));
        let by_mtls = attributed(
            Some("spiffe://corp/ns/agents/sa/ci-bot"),
            token("ci-bot", None, &[]),
        );
        assert!(by_mtls.headless);
    }

    #[test]
    fn conflicting_provisioning_is_refused_with_both_names() {
        let twice = AgentDirectory::compile(&[
            AgentConfig {
                name: "a".into(),
                spiffe_ids: vec![],
                client_ids: Some(vec!["shared".into()]),
            },
            AgentConfig {
                name: "b".into(),
                spiffe_ids: vec![],
                client_ids: Some(vec!["shared".into()]),
            },
        ])
        .expect_err("conflict");
        assert!(twice.0.contains("'b' and 'a'") && twice.0.contains("shared"));
    }
}
