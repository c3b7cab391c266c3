//! What step-up and approval rules share (their target checked once, their
//! filing by gateway and assignment), and what the policy says of them and
//! of scopes outside a single decision: whether a call may need approval,
//! whose, whether annotations must be read first, and what the metadata
//! document lists.

use std::collections::{HashMap, HashSet};

use latchkey_filter::visibility::pattern_matches;
use serde_json::Value;

use crate::config::Config;
use crate::principal::Caller;

use super::condition::Facts;
use super::{ApprovalNeed, Policy, PolicyError, line_of};

/// Rules of one kind (step-up, approval), by gateway and assignment.
pub(super) type PerAssignment<T> = HashMap<String, HashMap<String, Vec<T>>>;

/// Files `rule` under each of `assignments` of `gateway`.
pub(super) fn file_rule<T: Clone>(
    map: &mut PerAssignment<T>,
    gateway: &str,
    assignments: &[String],
    rule: T,
) {
    for a in assignments {
        map.entry(gateway.to_owned())
            .or_default()
            .entry(a.clone())
            .or_default()
            .push(rule.clone());
    }
}

/// The rules filed under one assignment, in config order.
pub(super) fn rules_of<'a, T>(
    map: &'a PerAssignment<T>,
    gateway: &str,
    assignment: &str,
) -> &'a [T] {
    map.get(gateway)
        .and_then(|m| m.get(assignment))
        .map_or(&[], Vec::as_slice)
}

/// The checks a step-up or approval rule shares: its name unique among
/// grants and rules (`seen`), its gateway and assignments declared, some
/// tools named. Returns where it is written (for errors) and its gateway.
pub(super) fn rule_target<'c>(
    config: &'c Config,
    kind: &str,
    name: &toml::Spanned<String>,
    text: &str,
    (gateway, assignments, tools): (&str, &[String], &[String]),
    seen: &mut HashSet<String>,
) -> Result<(String, &'c crate::config::Gateway), PolicyError> {
    let at = format!(
        "[[policy.{kind}]] '{}' (line {})",
        name.get_ref(),
        line_of(text, name.span().start)
    );
    if !seen.insert(name.get_ref().clone()) {
        return Err(PolicyError(format!(
            "{at}: a grant or another rule has the same name"
        )));
    }
    let Some(gw) = config.gateway(gateway) else {
        return Err(PolicyError(format!("{at}: unknown gateway '{gateway}'")));
    };
    if assignments.is_empty() || tools.is_empty() {
        return Err(PolicyError(format!(
            "{at}: names no assignments or no tools; list what it covers"
        )));
    }
    if let Some(a) = assignments
        .iter()
        .find(|a| !gw.assignments.iter().any(|x| x.name == **a))
    {
        return Err(PolicyError(format!(
            "{at}: gateway '{gateway}' has no assignment '{a}'"
        )));
    }
    Ok((at, gw))
}

impl Policy {
    /// Whether some approval rule names `tool` (its condition aside): a
    /// pattern match, so calls no rule names skip reading their arguments.
    pub fn may_need_approval(&self, gateway: &str, assignment: &str, tool: &str) -> bool {
        rules_of(&self.approvals, gateway, assignment)
            .iter()
            .any(|r| r.tools.iter().any(|p| pattern_matches(p, tool)))
    }

    /// Whether an allowed tool call must wait for an approval, and whose:
    /// the first `[[policy.approvals]]` rule covering it decides. The
    /// tool's `annotations` are read only by rules that select by them
    /// (`None`: unknown, and such a rule covers the call).
    pub fn approval_for(
        &self,
        gateway: &str,
        assignment: &str,
        caller: &Caller,
        tool: &str,
        arguments: &Value,
        annotations: Option<&Value>,
    ) -> Option<&ApprovalNeed> {
        let rules = rules_of(&self.approvals, gateway, assignment);
        let facts = Facts {
            call: Some((tool, arguments)),
            annotations,
            ..Facts::of_caller(caller, gateway, assignment)
        };
        rules
            .iter()
            .find_map(|r| r.covers(&facts, tool, annotations))
    }

    /// Whether some approval rule that could cover `tool` selects by
    /// annotations (so they must be read before [`Policy::approval_for`]).
    pub fn approval_reads_annotations(&self, gateway: &str, assignment: &str, tool: &str) -> bool {
        rules_of(&self.approvals, gateway, assignment)
            .iter()
            .any(|r| r.reads_annotations() && r.tools.iter().any(|p| pattern_matches(p, tool)))
    }

    /// Whether `caller` holds `role`: a claim value, or a `[policy.roles]`
    /// name one of their claim values gives.
    pub fn has_role(&self, caller: &Caller, role: &str) -> bool {
        self.roles_of(caller).contains(&role)
    }

    /// Every scope a grant on `gateway` can require, for its metadata
    /// document's `scopes_supported`.
    pub fn scopes_supported(&self, gateway: &str) -> Vec<String> {
        let mut all: Vec<String> = self
            .grants
            .iter()
            .flat_map(|g| g.get(gateway))
            .flat_map(|m| m.values())
            .flat_map(|a| &a.grants)
            .flat_map(|g| g.scopes.iter().flat_map(|(_, s)| s.iter().cloned()))
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Every `acr` value a step-up rule on `gateway` can ask for, for its
    /// metadata document's `acr_values_supported`.
    pub fn acr_values_supported(&self, gateway: &str) -> Vec<String> {
        let mut all: Vec<String> = self
            .step_up
            .get(gateway)
            .into_iter()
            .flat_map(|m| m.values())
            .flatten()
            .flat_map(|r| r.acr_values.iter().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }
}
