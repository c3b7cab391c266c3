//! Agent onboarding in Redis: each unprovisioned agent's request under
//! `agent_request:<id>` with an index of them all (bounded, so no agent can
//! fill Redis), and each approved agent under `agent_onboarded:<name>`
//! with its own index. A sighting is one script (the record, the index and,
//! for a new request, its `agent.requested` event together); approving
//! writes the onboarded agent through `Store::mutate`, whose notification
//! on the invalidation channel makes every replica compile it into its
//! policy before it confirms the change settled.

use std::sync::LazyLock;

use latchkey_core::audit::LifecycleEvent;
use latchkey_core::onboarding::{
    AgentGrant, AgentRequest, MAX_ACTED_FOR, MAX_REQUESTS, OnboardedAgent, RequestStatus,
};
use serde_json::json;

use crate::store::{Mutation, Store, StoreError, parse};

/// KEYS: record, index, audit stream. ARGV: agent, source, gateway, user
/// (`""`: headless), calls seen, now (RFC 3339), max requests, max people,
/// the `agent.requested` event, stream max length.
/// Returns 1 when the request was created, 0 when counted, -1 when the
/// index is full (nothing written).
const SIGHTED: &str = r#"
local raw = redis.call('GET', KEYS[1])
local r
local created = 0
if raw then
  r = cjson.decode(raw)
else
  if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[7]) then return -1 end
  r = {agent = ARGV[1], source = ARGV[2], gateways = {}, acted_for = {},
       first_seen = ARGV[6], count = 0, status = 'pending'}
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[10], '*', 'event', ARGV[9])
  created = 1
end
local function add(list, value, max)
  for _, x in ipairs(list) do if x == value then return end end
  if #list < max then table.insert(list, value) end
end
if type(r.gateways) ~= 'table' then r.gateways = {} end
if type(r.acted_for) ~= 'table' then r.acted_for = {} end
add(r.gateways, ARGV[3], 64)
if ARGV[4] ~= '' then add(r.acted_for, ARGV[4], tonumber(ARGV[8])) end
r.last_seen = ARGV[6]
r.count = math.min((tonumber(r.count) or 0) + tonumber(ARGV[5]), 1e12)
redis.call('SET', KEYS[1], cjson.encode(r))
return created
"#;

static SIGHTED_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SIGHTED));

/// One or more refused calls of an unprovisioned agent, as a replica saw
/// them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sighting {
    pub agent: String,
    /// `AgentSource::name`.
    pub source: &'static str,
    pub gateway: String,
    /// The person it acted for; `None` when headless.
    pub user: Option<String>,
}

/// What recording a sighting did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sighted {
    Created,
    Counted,
    /// [`MAX_REQUESTS`] requests exist: nothing recorded.
    Full,
}

/// Why an onboarding decision was not made.
#[derive(Debug, thiserror::Error)]
pub enum DecisionError {
    #[error(
        "no onboarding request for agent '{0}' (`latchkey agent requests` lists them; an agent has one after its first refused call to a gateway with unknown_agents = \"request\")"
    )]
    NotFound(String),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    pub fn agent_request_key(&self, agent: &str) -> String {
        format!("{}:agent_request:{agent}", self.prefix)
    }
    fn agent_requests_index(&self) -> String {
        format!("{}:agent_requests", self.prefix)
    }
    /// Keys of onboarded agents start with this: a change to one of them
    /// means the policy must be compiled again.
    pub fn onboarded_agent_prefix(&self) -> String {
        format!("{}:agent_onboarded:", self.prefix)
    }
    fn onboarded_agents_index(&self) -> String {
        format!("{}:agents_onboarded", self.prefix)
    }

    /// Counts `calls` refused calls of an unprovisioned agent, creating its
    /// request (with its `agent.requested` event) the first time.
    pub async fn record_sighting(
        &self,
        sighting: &Sighting,
        calls: u64,
    ) -> Result<Sighted, StoreError> {
        let event = LifecycleEvent::new(
            "agent.requested",
            "latchkey",
            "agent",
            &sighting.agent,
            None,
            Some(json!({
                "source": sighting.source,
                "gateway": sighting.gateway,
                "user": sighting.user,
            })),
        );
        let mut conn = self.redis.clone();
        let answer: i64 = SIGHTED_SCRIPT
            .key(self.agent_request_key(&sighting.agent))
            .key(self.agent_requests_index())
            .key(self.audit_stream())
            .arg(&sighting.agent)
            .arg(sighting.source)
            .arg(&sighting.gateway)
            .arg(sighting.user.as_deref().unwrap_or(""))
            .arg(calls)
            .arg(latchkey_core::identity::now_rfc3339())
            .arg(MAX_REQUESTS)
            .arg(MAX_ACTED_FOR)
            .arg(event.to_json())
            .arg(self.audit_max_len)
            .invoke_async(&mut conn)
            .await?;
        Ok(match answer {
            1 => {
                crate::store::log_lifecycle(&event);
                Sighted::Created
            }
            0 => Sighted::Counted,
            _ => Sighted::Full,
        })
    }

    /// Every request, oldest first.
    pub async fn agent_requests(&self) -> Result<Vec<AgentRequest>, StoreError> {
        let agents = self.members(&self.agent_requests_index()).await?;
        let keys: Vec<String> = agents.iter().map(|a| self.agent_request_key(a)).collect();
        let mut found: Vec<AgentRequest> = self.get_many(&keys).await?;
        found.sort_by(|a, b| a.first_seen.cmp(&b.first_seen));
        Ok(found)
    }

    /// Every agent provisioned by approval, by name.
    pub async fn onboarded_agents(&self) -> Result<Vec<OnboardedAgent>, StoreError> {
        let names = self.members(&self.onboarded_agents_index()).await?;
        let prefix = self.onboarded_agent_prefix();
        let keys: Vec<String> = names.iter().map(|n| format!("{prefix}{n}")).collect();
        let mut found: Vec<OnboardedAgent> = self.get_many(&keys).await?;
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    /// Provisions the agent of a pending or rejected request with
    /// `grants` (its `agent.approve` event written with it), then marks the
    /// request approved. The caller has checked the grants compile.
    pub async fn approve_agent(
        &self,
        agent: &str,
        grants: Vec<AgentGrant>,
        actor: &str,
    ) -> Result<(OnboardedAgent, AgentRequest), DecisionError> {
        let request = self.pending_request(agent, "approve").await?;
        let onboarded = OnboardedAgent {
            name: request.agent.clone(),
            source: request.source.clone(),
            grants,
            approved_by: actor.to_string(),
            approved_at: latchkey_core::identity::now_rfc3339(),
        };
        let key = format!("{}{agent}", self.onboarded_agent_prefix());
        let written = onboarded.clone();
        self.mutate(
            &key,
            &[self.onboarded_agents_index()],
            agent,
            |_: Option<OnboardedAgent>| {
                Ok::<_, StoreError>(Mutation {
                    event: LifecycleEvent::new(
                        "agent.approve",
                        actor,
                        "agent",
                        agent,
                        Some(json!({"request": request.status.name(), "count": request.count})),
                        Some(serde_json::to_value(&written).unwrap_or_default()),
                    ),
                    new: Some(written.clone()),
                })
            },
        )
        .await?;
        let decided = self
            .decide_request(agent, RequestStatus::Approved, actor, None)
            .await?;
        Ok((onboarded, decided))
    }

    /// Rejects a pending request: the agent stays refused, its request is
    /// kept (and counted) so nobody asks again, with an `agent.reject` event.
    pub async fn reject_agent(
        &self,
        agent: &str,
        reason: &str,
        actor: &str,
    ) -> Result<AgentRequest, DecisionError> {
        let request = self.pending_request(agent, "reject").await?;
        if request.status == RequestStatus::Rejected {
            return Err(DecisionError::Refused(format!(
                "agent '{agent}' was already rejected by {}",
                request.decided_by.as_deref().unwrap_or("someone")
            )));
        }
        let key = self.agent_request_key(agent);
        let reason = reason.to_string();
        let decided = self
            .mutate(
                &key,
                &[self.agent_requests_index()],
                agent,
                |current: Option<AgentRequest>| {
                    let current = current.ok_or_else(|| DecisionError::NotFound(agent.into()))?;
                    let mut new = current.clone();
                    new.status = RequestStatus::Rejected;
                    new.decided_by = Some(actor.to_string());
                    new.decided_at = Some(latchkey_core::identity::now_rfc3339());
                    new.reason = Some(reason.clone()).filter(|r| !r.is_empty());
                    Ok::<_, DecisionError>(Mutation {
                        event: LifecycleEvent::new(
                            "agent.reject",
                            actor,
                            "agent",
                            agent,
                            Some(json!({"status": current.status.name()})),
                            Some(json!({"status": "rejected", "reason": new.reason})),
                        ),
                        new: Some(new),
                    })
                },
            )
            .await?;
        decided.ok_or_else(|| DecisionError::NotFound(agent.into()))
    }

    /// The request for `agent`, if it may still be decided (`verb` names
    /// the decision in the refusal).
    async fn pending_request(
        &self,
        agent: &str,
        verb: &str,
    ) -> Result<AgentRequest, DecisionError> {
        let key = self.agent_request_key(agent);
        let Some(raw) = self.get_raw(&key).await? else {
            return Err(DecisionError::NotFound(agent.into()));
        };
        let request: AgentRequest = parse(&key, &raw)?;
        if request.status == RequestStatus::Approved {
            return Err(DecisionError::Refused(format!(
                "agent '{agent}' was already approved by {}; nothing to {verb} (`latchkey agent disable {agent}` refuses it)",
                request.decided_by.as_deref().unwrap_or("someone")
            )));
        }
        Ok(request)
    }

    /// Marks a request decided without an event of its own (the decision's
    /// event was written with what it changed); retried if a sighting
    /// counted in between.
    async fn decide_request(
        &self,
        agent: &str,
        status: RequestStatus,
        actor: &str,
        reason: Option<String>,
    ) -> Result<AgentRequest, DecisionError> {
        let key = self.agent_request_key(agent);
        for _ in 0..16 {
            let Some(raw) = self.get_raw(&key).await? else {
                return Err(DecisionError::NotFound(agent.into()));
            };
            let mut request: AgentRequest = parse(&key, &raw)?;
            request.status = status;
            request.decided_by = Some(actor.to_string());
            request.decided_at = Some(latchkey_core::identity::now_rfc3339());
            request.reason = reason.clone();
            let new = serde_json::to_string(&request).unwrap_or_default();
            if self.replace_if_unchanged(&key, &raw, &new).await? {
                return Ok(request);
            }
        }
        Err(StoreError::Contended(key).into())
    }
}
