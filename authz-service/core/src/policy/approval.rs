//! Approval rules (`[[policy.approvals]]`): calls that go upstream only
//! once a person approved that very call. Like a step-up rule, a rule
//! gives nothing; it only holds back a call the grants already allow. The
//! first rule covering a call decides who approves it.

use std::collections::HashSet;

use latchkey_filter::visibility::pattern_matches;

use crate::config::{ApprovalConfig, Config};

use super::PolicyError;
use super::condition::{Condition, Facts, Reads};
use super::rules::{PerAssignment, file_rule, rule_target};

/// What a covered call needs: whose approval, for how long, and whether
/// its arguments may be written to the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalNeed {
    pub rule: String,
    /// `None`: the person the call is for confirms it; else anyone with
    /// this role but the caller.
    pub approver_role: Option<String>,
    pub ttl_secs: u64,
    pub sensitive_arguments: bool,
}

/// One compiled rule, for one assignment.
#[derive(Debug, Clone)]
pub(super) struct ApprovalRule {
    need: ApprovalNeed,
    pub(super) tools: Vec<String>,
    pub(super) condition: Option<Condition>,
    /// Hint → the value the tool's annotations must give it.
    pub(super) annotations: Vec<(String, bool)>,
}

/// The tool annotation hints of MCP and the value each has when a tool
/// does not give it (the spec's defaults).
pub const ANNOTATION_HINTS: [(&str, bool); 4] = [
    ("readOnlyHint", false),
    ("destructiveHint", true),
    ("idempotentHint", false),
    ("openWorldHint", true),
];

impl ApprovalRule {
    /// Whether the tool's annotations must be read before this rule can
    /// say whether it covers a call.
    pub(super) fn reads_annotations(&self) -> bool {
        !self.annotations.is_empty() || self.condition.as_ref().is_some_and(|c| c.reads_annotations)
    }

    /// Whether this rule covers the call `facts` describe, the tool having
    /// `annotations` (`None`: they could not be read). A condition that
    /// fails to evaluate, or annotations that are unknown, keep the call
    /// covered: a rule only holds back.
    pub(super) fn covers(
        &self,
        facts: &Facts<'_>,
        tool: &str,
        annotations: Option<&serde_json::Value>,
    ) -> Option<&ApprovalNeed> {
        if !self.tools.iter().any(|p| pattern_matches(p, tool)) {
            return None;
        }
        if let Some(given) = annotations {
            let has = |hint: &str, want: bool| {
                let default = ANNOTATION_HINTS
                    .iter()
                    .find(|(h, _)| *h == hint)
                    .is_some_and(|(_, d)| *d);
                given
                    .get(hint)
                    .and_then(serde_json::Value::as_bool)
                    .unwrap_or(default)
                    == want
            };
            if !self.annotations.iter().all(|(h, want)| has(h, *want)) {
                return None;
            }
        }
        match &self.condition {
            Some(c) if c.holds(facts) == Ok(false) => None,
            _ => Some(&self.need),
        }
    }
}

/// The longest an approval may wait or stay usable: a day.
pub const MAX_APPROVAL_TTL_SECS: u64 = 24 * 3600;

/// Compiles every rule, by gateway and assignment; `seen` holds the names
/// of grants and rules so far (names are unique among all of them).
pub(super) fn compile(
    config: &Config,
    text: &str,
    rules: &[ApprovalConfig],
    seen: &mut HashSet<String>,
) -> Result<PerAssignment<ApprovalRule>, PolicyError> {
    let mut out = PerAssignment::new();
    for r in rules {
        let (at, gateway) = rule_target(
            config,
            "approvals",
            &r.name,
            text,
            (&r.gateway, &r.assignments, &r.tools),
            seen,
        )?;
        let name = r.name.get_ref().clone();
        if r.ttl_secs == 0 || r.ttl_secs > MAX_APPROVAL_TTL_SECS {
            return Err(PolicyError(format!(
                "{at}: ttl_secs must be from 1 to {MAX_APPROVAL_TTL_SECS} (a day)"
            )));
        }
        if r.approver_role.as_deref() == Some("") {
            return Err(PolicyError(format!(
                "{at}: approver_role is empty; name a role, or leave it out for the person the call is for"
            )));
        }
        let condition = r
            .condition
            .as_deref()
            .map(|c| Condition::compile(c, Reads::CallerCallAndAnnotations, &at))
            .transpose()?;
        if let Some(bad) = r
            .annotations
            .keys()
            .find(|h| !ANNOTATION_HINTS.iter().any(|(known, _)| known == h))
        {
            return Err(PolicyError(format!(
                "{at}: '{bad}' is not a tool annotation hint; use {}",
                ANNOTATION_HINTS.map(|(h, _)| h).join(", ")
            )));
        }
        if !r.annotations.is_empty() || condition.as_ref().is_some_and(|c| c.reads_annotations) {
            for a in &r.assignments {
                let server = gateway
                    .assignments
                    .iter()
                    .find(|x| x.name == *a)
                    .and_then(|x| config.server(&x.server));
                if let Some(s) = server.filter(|s| !s.trust_annotations) {
                    return Err(PolicyError(format!(
                        "{at}: selects tools by annotations on assignment '{a}', but server '{}' is not trusted to annotate honestly (a server could call a destructive tool read-only); set trust_annotations = true on it, or name the tools",
                        s.name
                    )));
                }
            }
        }
        let rule = ApprovalRule {
            need: ApprovalNeed {
                rule: name,
                approver_role: r.approver_role.clone(),
                ttl_secs: r.ttl_secs,
                sensitive_arguments: r.sensitive_arguments,
            },
            tools: r.tools.clone(),
            condition,
            annotations: r.annotations.iter().map(|(h, v)| (h.clone(), *v)).collect(),
        };
        file_rule(&mut out, &r.gateway, &r.assignments, rule);
    }
    Ok(out)
}
