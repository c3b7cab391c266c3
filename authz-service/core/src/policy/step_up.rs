//! Step-up rules (`[[policy.step_up]]`, RFC 9470): calls that need a
//! stronger or more recent sign-in than the caller's token shows. Unlike a
//! grant, a rule gives nothing; every rule covering a call must be met, and
//! one that is not is answered with a challenge saying which `acr_values`
//! or `max_age` would do, so the client can have the person sign in again.

use std::collections::HashSet;

use latchkey_filter::visibility::pattern_matches;

use crate::config::{Config, StepUpConfig};

use super::condition::{Condition, Facts, Reads};
use super::rules::{PerAssignment, file_rule, rule_target};
use super::{PolicyError, is_challenge_token};

/// What a step-up rule asks of the token, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUp {
    pub rule: String,
    pub acr_values: Vec<String>,
    pub max_age: Option<u64>,
    /// What the token lacks, for a person to read.
    pub problem: String,
}

/// One compiled `[[policy.step_up]]` rule, for one assignment.
#[derive(Debug, Clone)]
pub(super) struct StepUpRule {
    name: String,
    pub(super) tools: Vec<String>,
    pub(super) acr_values: Vec<String>,
    max_age: Option<u64>,
    pub(super) condition: Option<Condition>,
}

impl StepUpRule {
    /// What the caller's token lacks for a call this rule covers; `None`
    /// when the rule does not cover the call or the token meets it.
    pub(super) fn unmet(&self, facts: &Facts<'_>, tool: &str) -> Option<StepUp> {
        if !self.tools.iter().any(|p| pattern_matches(p, tool)) {
            return None;
        }
        // A condition that fails to evaluate keeps the requirement: a
        // rule only ever asks for more.
        if let Some(c) = &self.condition
            && c.holds(facts) == Ok(false)
        {
            return None;
        }
        let caller = facts.caller;
        let mut problems = Vec::new();
        if !self.acr_values.is_empty()
            && !caller
                .acr
                .as_ref()
                .is_some_and(|a| self.acr_values.contains(a))
        {
            problems.push(match &caller.acr {
                Some(a) => format!(
                    "the sign-in was '{a}', and this call needs {}",
                    self.acr_values.join(" or ")
                ),
                None => format!(
                    "the token does not say how the person signed in (acr), and this call needs {}",
                    self.acr_values.join(" or ")
                ),
            });
        }
        if let Some(max) = self.max_age {
            match caller.auth_time {
                Some(t) if facts.now.saturating_sub(t as i64) <= max as i64 => {}
                Some(t) => problems.push(format!(
                    "the sign-in was {} s ago, and this call needs one within {max} s",
                    facts.now.saturating_sub(t as i64)
                )),
                None => problems.push(format!(
                    "the token does not say when the person signed in (auth_time), and this call needs a sign-in within {max} s"
                )),
            }
        }
        (!problems.is_empty()).then(|| StepUp {
            rule: self.name.clone(),
            acr_values: self.acr_values.clone(),
            max_age: self.max_age,
            problem: problems.join("; "),
        })
    }
}

/// Compiles every rule, by gateway and assignment; `seen` holds the names
/// of grants and rules so far (a rule's name must be unique among both).
pub(super) fn compile(
    config: &Config,
    text: &str,
    rules: &[StepUpConfig],
    seen: &mut HashSet<String>,
) -> Result<PerAssignment<StepUpRule>, PolicyError> {
    let mut step_up = PerAssignment::new();
    for r in rules {
        let (at, _) = rule_target(
            config,
            "step_up",
            &r.name,
            text,
            (&r.gateway, &r.assignments, &r.tools),
            seen,
        )?;
        let name = r.name.get_ref().clone();
        check(r, &at)?;
        let condition = r
            .condition
            .as_deref()
            .map(|c| Condition::compile(c, Reads::CallerAndCall, &at))
            .transpose()?;
        let rule = StepUpRule {
            name,
            tools: r.tools.clone(),
            acr_values: r.acr_values.clone(),
            max_age: r.max_age_secs,
            condition,
        };
        file_rule(&mut step_up, &r.gateway, &r.assignments, rule);
    }
    Ok(step_up)
}

fn check(r: &StepUpConfig, at: &str) -> Result<(), PolicyError> {
    if r.acr_values.is_empty() && r.max_age_secs.is_none() {
        return Err(PolicyError(format!(
            "{at}: asks for nothing; set acr_values, max_age_secs or both"
        )));
    }
    if let Some(bad) = r.acr_values.iter().find(|v| !is_challenge_token(v)) {
        return Err(PolicyError(format!(
            "{at}: acr value {bad:?} cannot be sent in a challenge (no spaces, quotes or backslashes)"
        )));
    }
    Ok(())
}
