//! `latchkey agent`: disable and enable agents, and onboard the ones
//! nobody provisioned (`requests`, `approve`, `reject`), over the admin API
//! (`agents:manage`).

use anyhow::Result;
use clap::Subcommand;
use latchkey_proto::admin as pb;
use serde_json::{Value, json};

use super::admin::{
    AdminArgs, IntoAnswer, Session, principal_json, principal_line, refused, status,
};

#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// The agent's requests are refused until enabled again.
    Disable {
        /// The agent's name in `[[agents]]` (for an unknown agent let
        /// through by `unknown_agents = "allow"`, the id it presents).
        agent: String,
    },
    /// The agent's requests are decided as before it was disabled.
    Enable {
        /// As for `disable`.
        agent: String,
    },
    /// Agents nobody provisioned that gateways with `unknown_agents =
    /// "request"` refused: who they acted for, how often, and what was
    /// decided.
    Requests {
        /// Also the approved and rejected ones.
        #[arg(long)]
        all: bool,
    },
    /// Provision the agent of a request, on every replica, with grants.
    Approve {
        /// The id the agent presented, as `agent requests` lists it.
        agent: String,
        /// GATEWAY/ASSIGNMENT (every tool) or GATEWAY/ASSIGNMENT=TOOL,TOOL
        /// (names or patterns); repeat for more. Without any, the agent
        /// sees only what grants already naming it allow (or, on
        /// assignments where no grant names agents, what its person sees).
        #[arg(long = "grant", alias = "grants")]
        grants: Vec<String>,
    },
    /// Refuse the agent for good; its request is kept so it is not asked again.
    Reject {
        agent: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

fn request_json(r: &pb::AgentRequest) -> Value {
    let some = |s: &String| (!s.is_empty()).then(|| s.clone());
    json!({
        "agent": r.agent, "source": r.source, "status": r.status,
        "gateways": r.gateways, "acted_for": r.acted_for, "count": r.count,
        "first_seen": r.first_seen, "last_seen": r.last_seen,
        "decided_by": some(&r.decided_by), "decided_at": some(&r.decided_at),
        "reason": some(&r.reason), "grants": r.grants,
    })
}

fn request_line(v: &Value) -> String {
    let list = |k: &str| {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    let mut line = format!(
        "{}\t{}\tby {}\t{} calls\tgateways {}\tfor {}\tlast seen {}",
        v["agent"].as_str().unwrap_or(""),
        v["status"].as_str().unwrap_or(""),
        v["source"].as_str().unwrap_or(""),
        v["count"],
        list("gateways"),
        match list("acted_for") {
            people if people.is_empty() => "nobody (headless)".to_string(),
            people => people,
        },
        v["last_seen"].as_str().unwrap_or(""),
    );
    if let Some(by) = v["decided_by"].as_str() {
        line.push_str(&format!("\tdecided by {by}"));
    }
    if !list("grants").is_empty() {
        line.push_str(&format!("\tgrants {}", list("grants")));
    }
    if let Some(reason) = v["reason"].as_str() {
        line.push_str(&format!("\treason: {reason}"));
    }
    line
}

pub async fn run(args: &AdminArgs, command: AgentCommand) -> Result<()> {
    let mut s = Session::open(args).await?;
    let (id, enabled) = match command {
        AgentCommand::Disable { agent } => (agent, false),
        AgentCommand::Enable { agent } => (agent, true),
        AgentCommand::Requests { all } => {
            let r = s
                .client
                .list_agent_requests(s.request(pb::ListAgentRequestsRequest {}))
                .await
                .map_err(refused)?
                .into_answer();
            let shown: Vec<&pb::AgentRequest> = r
                .requests
                .iter()
                .filter(|r| all || r.status == "pending")
                .collect();
            if shown.is_empty() && !s.json() {
                println!("no agent is waiting to be onboarded");
            }
            for r in shown {
                s.print(request_json(r), request_line);
            }
            return Ok(());
        }
        AgentCommand::Approve { agent, grants } => {
            return decide(&mut s, agent, true, grants, String::new()).await;
        }
        AgentCommand::Reject { agent, reason } => {
            return decide(&mut s, agent, false, vec![], reason).await;
        }
    };
    let r = s
        .client
        .set_agent_status(s.request(pb::SetPrincipalStatusRequest {
            id,
            status: status(enabled) as i32,
        }))
        .await
        .map_err(refused)?
        .into_answer();
    s.print(principal_json(&r), principal_line);
    Ok(())
}

async fn decide(
    s: &mut Session,
    agent: String,
    approve: bool,
    grants: Vec<String>,
    reason: String,
) -> Result<()> {
    let r = s
        .client
        .decide_agent_request(s.request(pb::DecideAgentRequestRequest {
            agent,
            approve,
            grants,
            reason,
        }))
        .await
        .map_err(refused)?
        .into_answer();
    s.print(request_json(&r), request_line);
    Ok(())
}
