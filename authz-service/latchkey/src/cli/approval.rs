//! `latchkey approval`: tool calls held for approval, for approvers who
//! live in a terminal. Calls to the admin API (`ListApprovals`,
//! `GetApproval`, `DecideApproval`); what a person may see and decide is
//! the service's to say.

use anyhow::Result;
use clap::Subcommand;
use latchkey_proto::admin as pb;
use serde_json::{Value, json};

use super::admin::{AdminArgs, IntoAnswer, Session, refused};

#[derive(Subcommand, Debug)]
pub enum ApprovalCommand {
    /// Calls waiting for a decision you may make, and your own.
    List {
        /// Also decided ones, until they expire.
        #[arg(long)]
        all: bool,
    },
    /// One request: the call in full, who asked, and who may decide.
    Show { id: String },
    /// Let the call through, once.
    Approve {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Refuse the call; the reason is told to the caller.
    Deny {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

fn approval_json(a: &pb::Approval) -> Value {
    let arguments: Value = serde_json::from_str(&a.arguments_json).unwrap_or(Value::Null);
    json!({
        "id": a.id, "rule": a.rule, "status": a.status,
        "user": a.user, "agent": (!a.agent.is_empty()).then_some(&a.agent),
        "actors": a.actors,
        "gateway": a.gateway, "assignment": a.assignment, "server": a.server,
        "tool": a.tool, "arguments": arguments,
        "approver_role": (!a.approver_role.is_empty()).then_some(&a.approver_role),
        "requested_at": a.requested_at, "expires_at": a.expires_at,
        "approver": (!a.approver.is_empty()).then_some(&a.approver),
        "reason": (!a.reason.is_empty()).then_some(&a.reason),
    })
}

/// One request as a person reads it: everything that will run.
fn approval_text(a: &pb::Approval) -> String {
    let by = if a.agent.is_empty() {
        String::new()
    } else {
        format!(" by agent '{}'", a.agent)
    };
    let who = if a.approver_role.is_empty() {
        format!("'{}' confirms", a.user)
    } else {
        format!("role '{}', not '{}'", a.approver_role, a.user)
    };
    let arguments = serde_json::from_str::<Value>(&a.arguments_json)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| a.arguments_json.clone());
    let mut text = format!(
        "{}  {}\n  {} on {}/{} (server {}) for '{}'{by}\n  rule '{}', approver: {who}\n  asked {}, expires {}\n  arguments: {}",
        a.id,
        a.status,
        a.tool,
        a.gateway,
        a.assignment,
        a.server,
        a.user,
        a.rule,
        a.requested_at,
        a.expires_at,
        arguments.replace('\n', "\n  ")
    );
    if !a.approver.is_empty() {
        text.push_str(&format!("\n  decided by {}", a.approver));
        if !a.reason.is_empty() {
            text.push_str(&format!(": {}", a.reason));
        }
    }
    text
}

pub async fn run(args: &AdminArgs, command: ApprovalCommand) -> Result<()> {
    let mut s = Session::open(args).await?;
    let answer = match command {
        ApprovalCommand::List { all } => {
            let r = s
                .client
                .list_approvals(s.request(pb::ListApprovalsRequest { all }))
                .await
                .map_err(refused)?
                .into_answer();
            if r.approvals.is_empty() && !s.json() {
                println!("no approval requests");
            }
            for a in &r.approvals {
                s.print(approval_json(a), |_| approval_text(a));
            }
            return Ok(());
        }
        ApprovalCommand::Show { id } => s
            .client
            .get_approval(s.request(pb::GetApprovalRequest { id }))
            .await
            .map_err(refused)?
            .into_answer(),
        ApprovalCommand::Approve { id, reason } => s
            .client
            .decide_approval(s.request(pb::DecideApprovalRequest {
                id,
                approve: true,
                reason,
            }))
            .await
            .map_err(refused)?
            .into_answer(),
        ApprovalCommand::Deny { id, reason } => s
            .client
            .decide_approval(s.request(pb::DecideApprovalRequest {
                id,
                approve: false,
                reason,
            }))
            .await
            .map_err(refused)?
            .into_answer(),
    };
    s.print(approval_json(&answer), |_| approval_text(&answer));
    Ok(())
}
