//! The approval gate: after a tool call is allowed and its credential
//! found, a call an `[[policy.approvals]]` rule covers goes upstream only
//! on an approval of that very call, which it then uses up.
//!
//! The first such call records a request (in Redis, shared by every
//! replica, bounded per person) and is answered in band the way consent
//! is (`consent::in_band`): with a `[connect]` page, a link to the approval
//! page, as a 2026-07-28 `InputRequiredResult` URL elicitation with a
//! signed `requestState`, a 2025-11-25 -32042 (its completion announced on
//! the session's GET stream once decided) or a JSON-RPC error carrying the
//! link; without one, a JSON-RPC error naming `latchkey approval approve
//! <id>`. The same call again while it waits gets the same answer; once
//! approved, it passes once; once denied, it is answered with a failed tool
//! result naming the reason, until the request expires. A change in
//! anything about the call (an argument, the tool, the agent) is another
//! call.

use std::time::Duration;

use latchkey_core::approval::{
    ApprovalRecord, ApprovalStatus, Call, MAX_APPROVAL_ARGUMENTS_BYTES, call_digest, canonical_json,
};
use latchkey_core::config::ConnectConfig;
use latchkey_core::identity::now_rfc3339;
use latchkey_core::metrics::Metrics;
use latchkey_core::policy::{ApprovalNeed, Policy};
use latchkey_filter::jsonrpc;
use latchkey_filter::mcp::RequestError;
use latchkey_store::approvals::{Created, TransitionError};
use latchkey_store::credentials::Credentials;
use latchkey_store::store::Store;
use serde_json::Value;
use url::Url;

use crate::consent::{self, InBand};
use crate::context::RequestContext;
use crate::decide::{Allow, Attribution, Decision, Deny, forbidden, tool_error_body};
use crate::upstream_tools::ToolAnnotations;

/// The reason a held call is refused with, in the audit trail and metrics.
pub const APPROVAL_NEEDED: &str = "approval_needed";

/// Lets `decision` through unchanged unless it allows a tool call an
/// approval rule covers; then the call passes only on its approval.
/// What the gate reads and writes besides the decision.
pub struct Gate<'a> {
    pub credentials: &'a Credentials,
    pub metrics: &'a Metrics,
    /// Where the approval page is, if there is one.
    pub connect: Option<&'a ConnectConfig>,
    /// Trusted servers' tool annotations, for rules that select by them.
    pub annotations: &'a ToolAnnotations,
}

pub async fn gate(
    g: &Gate<'_>,
    policy: &Policy,
    ctx: &RequestContext,
    decision: Decision,
) -> Decision {
    let Gate {
        credentials,
        metrics,
        connect,
        annotations,
    } = *g;
    let store = &credentials.store;
    let Decision::Allow(allow) = decision else {
        return decision;
    };
    let Some(mcp) = ctx.mcp.as_ref() else {
        return Decision::Allow(allow);
    };
    let (Some("tools/call"), Some(tool)) = (mcp.method.as_deref(), mcp.name.as_deref()) else {
        return Decision::Allow(allow);
    };
    // The common call is covered by no rule: no parse of its arguments.
    let route = &allow.route;
    if !policy.may_need_approval(&route.gateway.name, &route.assignment.name, tool) {
        return Decision::Allow(allow);
    }
    let empty = Value::Object(serde_json::Map::new());
    let arguments = ctx.tool_arguments().unwrap_or(&empty);
    let (gateway, assignment) = (&allow.route.gateway.name, &allow.route.assignment.name);
    // Read only for a rule that selects by them, with the credential the
    // call is about to carry.
    let annotated = if policy.approval_reads_annotations(gateway, assignment, tool) {
        let credential = allow
            .inject
            .as_ref()
            .map(|h| (h.name.as_str(), h.value.expose()));
        let server = &allow.route.server;
        annotations
            .of(&server.name, server.url.as_str(), credential, tool)
            .await
    } else {
        None
    };
    let Some(need) = policy.approval_for(
        gateway,
        assignment,
        &allow.caller,
        tool,
        arguments,
        annotated.as_ref(),
    ) else {
        return Decision::Allow(allow);
    };
    let need = need.clone();
    let id = mcp.id.clone();
    // A held call's answer, attributed and carrying the request's id.
    let attributed = |deny: Deny| Deny {
        attribution: Some(Attribution::of(&allow.route, Some(&allow.caller))),
        refusal: RequestError {
            id: id.clone(),
            ..deny.refusal
        },
        ..deny
    };
    let held = |deny: Deny| Decision::Deny(attributed(deny));
    if allow.caller.headless && need.approver_role.is_none() {
        return held(forbidden(
            APPROVAL_NEEDED,
            format!(
                "tool '{tool}' needs a person's confirmation (rule '{}'), and this agent acts for nobody; an operator gives the rule an approver_role",
                need.rule
            ),
        ));
    }
    let mut canonical = String::new();
    canonical_json(arguments, &mut canonical);
    if canonical.len() > MAX_APPROVAL_ARGUMENTS_BYTES {
        return held(forbidden(
            APPROVAL_NEEDED,
            format!(
                "tool '{tool}' needs approval (rule '{}'), and its arguments are over {} KiB, too large to be shown to an approver; call it with smaller arguments",
                need.rule,
                MAX_APPROVAL_ARGUMENTS_BYTES / 1024
            ),
        ));
    }
    let user = allow.caller.subject.clone();
    let digest = call_digest(&Call {
        user: &user,
        agent: allow.caller.agent.as_deref(),
        gateway,
        assignment,
        tool,
        arguments,
    });
    match settle(store, &allow, &need, tool, &digest, arguments).await {
        Ok(Settled::Pass(approval)) => {
            metrics.count_approval(&need.rule, "used");
            Decision::Allow(Allow {
                approval: Some(approval),
                ..allow
            })
        }
        Ok(Settled::Held(record)) => {
            if record.fresh {
                metrics.count_approval(&need.rule, "requested");
            }
            let record = record.record;
            let deny = attributed(answer(&record, id.as_ref(), connect));
            match (record.status, connect) {
                (ApprovalStatus::Pending, Some(connect)) => {
                    let link = approval_link(&connect.public_url, &record.gateway, &record.id);
                    let remembered = consent::remembers_url_elicitation(
                        credentials,
                        &record.gateway,
                        &record.user,
                        record.agent.as_deref(),
                    )
                    .await;
                    let expires = time::OffsetDateTime::parse(
                        &record.expires_at,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
                    let ask = InBand {
                        request: &record.id,
                        user: &record.user,
                        gateway: &record.gateway,
                        assignment: &record.assignment,
                        key: format!("approve-{}", record.tool),
                        link: &link,
                        text: deny.refusal.message.clone(),
                        expires,
                        form: consent::answer_form_for(ctx, remembered),
                    };
                    Decision::Deny(consent::in_band(credentials, ctx, deny, ask).await)
                }
                _ => Decision::Deny(deny),
            }
        }
        Err(deny) => held(deny),
    }
}

enum Settled {
    /// The call's approval, now used.
    Pass(String),
    /// The request the call waits on, or that was denied.
    Held(Box<Held>),
}

struct Held {
    record: ApprovalRecord,
    /// Recorded for this very call.
    fresh: bool,
}

/// Finds the request covering the call, uses it if approved, or records a
/// new one. Fails closed: when Redis cannot say, nothing passes.
async fn settle(
    store: &Store,
    allow: &Allow,
    need: &ApprovalNeed,
    tool: &str,
    digest: &str,
    arguments: &Value,
) -> Result<Settled, Deny> {
    let unavailable = |e: &dyn std::fmt::Display| {
        Deny::unavailable(
            "approval_unavailable",
            format!(
                "tool '{tool}' needs approval, and approvals cannot be read right now ({e}); retry shortly"
            ),
        )
    };
    // Twice at most: a request found approved may be used by a racing
    // call first; then this call needs a request of its own.
    for _ in 0..2 {
        let found = store
            .approval_for_call(digest)
            .await
            .map_err(|e| unavailable(&e))?;
        match found {
            Some(r) if r.status == ApprovalStatus::Approved => {
                let used = store
                    .transition_approval(&r.id, "approval.used", &allow.caller.subject, |now| {
                        match now.status {
                            ApprovalStatus::Approved => Ok(ApprovalRecord {
                                status: ApprovalStatus::Used,
                                ..now.clone()
                            }),
                            s => Err(format!("it is {}", s.as_str())),
                        }
                    })
                    .await;
                match used {
                    Ok(r) => return Ok(Settled::Pass(r.id)),
                    Err(TransitionError::Store(e)) => return Err(unavailable(&e)),
                    // Used or expired in between: ask anew.
                    Err(_) => {}
                }
            }
            Some(r) if r.status != ApprovalStatus::Used => {
                return Ok(Settled::Held(Box::new(Held {
                    record: r,
                    fresh: false,
                })));
            }
            _ => {}
        }
        let ttl = Duration::from_secs(need.ttl_secs);
        let expires = time::OffsetDateTime::now_utc() + ttl;
        let caller = &allow.caller;
        let record = ApprovalRecord {
            id: latchkey_core::hex::random(16),
            digest: digest.to_owned(),
            rule: need.rule.clone(),
            approver_role: need.approver_role.clone(),
            user: caller.subject.clone(),
            agent: caller.agent.clone(),
            actors: caller.actors.clone(),
            gateway: allow.route.gateway.name.clone(),
            assignment: allow.route.assignment.name.clone(),
            server: allow.route.server.name.clone(),
            tool: tool.to_owned(),
            arguments: arguments.clone(),
            sensitive_arguments: need.sensitive_arguments,
            requested_at: now_rfc3339(),
            expires_at: expires
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            status: ApprovalStatus::Pending,
            approver: None,
            reason: None,
            decided_at: None,
        };
        let actor = caller.agent.as_deref().unwrap_or(&caller.subject);
        match store.create_approval(&record, ttl, actor).await {
            Ok(Created::New) => {
                return Ok(Settled::Held(Box::new(Held {
                    record,
                    fresh: true,
                })));
            }
            Ok(Created::TooMany) => {
                return Err(forbidden(
                    APPROVAL_NEEDED,
                    format!(
                        "tool '{tool}' needs approval, and '{}' already has {} requests waiting; wait for them to be decided or to expire",
                        caller.subject,
                        latchkey_core::approval::MAX_PENDING_PER_USER
                    ),
                ));
            }
            // Another replica recorded one for this call in between.
            Ok(Created::Existing(_)) => continue,
            Err(e) => return Err(unavailable(&e)),
        }
    }
    Err(unavailable(&"the request changed while it was read"))
}

/// The approval page of request `id`: it names the gateway and the
/// request, nothing about the call or the person.
pub fn approval_link(public_url: &Url, gateway: &str, id: &str) -> Url {
    let mut url = public_url.clone();
    let path = format!(
        "{}/connect/{gateway}/approval",
        url.path().trim_end_matches('/')
    );
    url.set_path(&path);
    url.query_pairs_mut().clear().append_pair("id", id);
    url
}

/// What a held call is answered: a JSON-RPC error saying who approves and
/// how (where, with a connect page), while it waits; a failed tool result
/// naming the reason, once denied.
fn answer(record: &ApprovalRecord, id: Option<&Value>, connect: Option<&ConnectConfig>) -> Deny {
    if record.status == ApprovalStatus::Denied {
        let text = format!(
            "The call to '{}' was denied by {}{}. Do not retry it as it is.",
            record.tool,
            record.approver.as_deref().unwrap_or("an approver"),
            record
                .reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
        return Deny {
            refusal: RequestError {
                http_status: 200,
                jsonrpc_code: 0,
                message: text.clone(),
                id: id.cloned(),
            },
            reason: "approval_denied",
            body: Some(tool_error_body(id, &text)),
            ..Deny::default()
        };
    }
    let who = match &record.approver_role {
        None => format!("'{}' (the person it is for) confirms it", record.user),
        Some(role) => format!(
            "someone with the role '{role}' other than '{}' approves it",
            record.user
        ),
    };
    let how = match connect {
        Some(c) => format!(
            "at {} (or with `latchkey approval approve {}`)",
            approval_link(&c.public_url, &record.gateway, &record.id),
            record.id
        ),
        None => format!("with `latchkey approval approve {}`", record.id),
    };
    let text = format!(
        "The call to '{}' needs approval (rule '{}'): it goes through once {who} {how}. Then make the same call again, with the same arguments, before {}.",
        record.tool, record.rule, record.expires_at
    );
    Deny {
        refusal: RequestError {
            http_status: 200,
            jsonrpc_code: jsonrpc::FORBIDDEN,
            message: text,
            id: id.cloned(),
        },
        reason: APPROVAL_NEEDED,
        ..Deny::default()
    }
}
