//! What operators ask of a compiled policy: `explain` (which grant decided,
//! and why) for `latchkey policy check`, and `lint` (rules that can never
//! match, or that a deny hides) for `latchkey policy lint`.

use std::collections::BTreeMap;

use latchkey_filter::uri;
use latchkey_filter::visibility::{ItemKind, Rules, Visibility, pattern_matches};

use crate::principal::Caller;

use super::{Explanation, Facts, Grant, Policy};

impl Policy {
    /// Which grant and pattern make `name` visible or not, for operators.
    pub fn explain(
        &self,
        gateway: &str,
        assignment: &str,
        caller: &Caller,
        kind: ItemKind,
        name: &str,
    ) -> Explanation {
        if !self.is_enforced() {
            return Explanation {
                visible: true,
                reason: "no [policy] is configured: everything is visible".into(),
            };
        }
        if kind == ItemKind::Resource {
            match uri::canonical(name) {
                Err(e) => {
                    return Explanation {
                        visible: false,
                        reason: format!("'{name}' is refused before any grant is read: {e}"),
                    };
                }
                Ok(c) if c != name => {
                    let mut e = self.explain(gateway, assignment, caller, kind, &c);
                    e.reason = format!("judged as its canonical form '{c}': {}", e.reason);
                    return e;
                }
                Ok(_) => {}
            }
        }
        if !Visibility::name_allowed(kind, name) {
            return Explanation {
                visible: false,
                reason: format!(
                    "'{name}' is not a valid {} name (tool names are 1-128 of A-Z a-z 0-9 _ - . /); such names are never visible",
                    kind.noun()
                ),
            };
        }
        let (user, agent) = self.effective(gateway, assignment, caller);
        let who = if caller.headless {
            format!(
                "agent '{}' acting for nobody",
                caller.agent.as_deref().unwrap_or_default()
            )
        } else {
            format!(
                "user '{}' (roles: {})",
                caller.subject,
                self.roles_of(caller).join(", ")
            )
        };
        let mut mine = Self::explain_grants(&user, &who, gateway, assignment, kind, name);
        let unheld = self.unheld_conditions(gateway, assignment, caller);
        if !unheld.is_empty() {
            mine.reason = format!(
                "{} (not applying, as their condition does not hold: {})",
                mine.reason,
                unheld.join("; ")
            );
        }
        let Some(agent) = agent else {
            return mine;
        };
        let who = format!("agent '{}'", caller.agent.as_deref().unwrap_or("(none)"));
        let theirs = Self::explain_grants(&agent, &who, gateway, assignment, kind, name);
        Explanation {
            visible: mine.visible && theirs.visible,
            reason: format!(
                "{}; and for the acting {who}: {}",
                mine.reason, theirs.reason
            ),
        }
    }

    /// The grants naming `caller` on one assignment that do not apply as
    /// their condition does not hold, each with how it evaluated.
    fn unheld_conditions(&self, gateway: &str, assignment: &str, caller: &Caller) -> Vec<String> {
        let Some(a) = self.assignment(gateway, assignment) else {
            return Vec::new();
        };
        let roles = self.roles_of(caller);
        let facts = Facts::of_caller(caller, gateway, assignment);
        a.grants
            .iter()
            .filter(|g| {
                g.any_user
                    || g.users.contains(&caller.subject)
                    || roles.iter().any(|r| g.roles.contains(*r))
                    || caller.agent.as_ref().is_some_and(|x| g.agents.contains(x))
            })
            .filter_map(|g| {
                let c = g.condition.as_ref()?;
                let why = match c.holds(&facts) {
                    Ok(true) => return None,
                    Ok(false) => format!("{} is false", c.source),
                    Err(e) => e,
                };
                Some(format!("grant '{}' (line {}): {why}", g.name, g.line))
            })
            .collect()
    }

    fn explain_grants(
        grants: &[&Grant],
        who: &str,
        gateway: &str,
        assignment: &str,
        kind: ItemKind,
        name: &str,
    ) -> Explanation {
        if grants.is_empty() {
            return Explanation {
                visible: false,
                reason: format!(
                    "no grant on {gateway}/{assignment} applies to {who}; nothing is visible by default"
                ),
            };
        }
        for g in grants {
            if let Some(p) = g
                .rules(kind)
                .deny_patterns()
                .iter()
                .find(|p| Rules::new(&[], std::slice::from_ref(*p)).denies(name))
            {
                return Explanation {
                    visible: false,
                    reason: format!(
                        "denied by grant '{}' (line {}): {} deny \"{p}\"",
                        g.name,
                        g.line,
                        kind.key()
                    ),
                };
            }
        }
        for g in grants {
            if let Some(p) = g
                .rules(kind)
                .allow_patterns()
                .iter()
                .find(|p| pattern_matches(p, name))
            {
                return Explanation {
                    visible: true,
                    reason: format!(
                        "allowed by grant '{}' (line {}): {} allow \"{p}\"",
                        g.name,
                        g.line,
                        kind.key()
                    ),
                };
            }
        }
        let names: Vec<&str> = grants.iter().map(|g| g.name.as_str()).collect();
        Explanation {
            visible: false,
            reason: format!(
                "no allow pattern matches in the grants that apply ({}); nothing is visible by default",
                names.join(", ")
            ),
        }
    }

    /// Findings for `latchkey policy lint`: patterns that can never match,
    /// allows hidden by a deny, and grants to agents nobody provisioned.
    pub fn lint(&self) -> Vec<String> {
        let Some(all) = &self.grants else {
            return vec!["no [policy]: every authenticated caller sees every tool".into()];
        };
        let mut findings = BTreeMap::new();
        let each = all
            .iter()
            .flat_map(|(g, m)| m.iter().map(move |(a, grants)| (g, a, &grants.grants)));
        for (gateway, assignment, grants) in each {
            for g in grants {
                let at = format!(
                    "grant '{}' (line {}) on {gateway}/{assignment}",
                    g.name, g.line
                );
                for p in g
                    .tools
                    .allow_patterns()
                    .iter()
                    .chain(g.tools.deny_patterns())
                {
                    let literal = p.replace(['*', '?'], "");
                    if !literal.is_empty()
                        && !literal
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"_-./".contains(&b))
                    {
                        findings.insert(
                            format!("{at}: tools pattern \"{p}\" has characters no valid tool name has; it can never match"),
                            (),
                        );
                    }
                }
                let mut unknown: Vec<&String> = g
                    .agents
                    .iter()
                    .filter(|a| !self.agents.is_provisioned(a))
                    .collect();
                unknown.sort();
                for agent in unknown {
                    findings.insert(
                        format!("{at}: names agent '{agent}', which is not in [[agents]]; unless its gateway has unknown_agents = \"allow\", the grant never applies"),
                        (),
                    );
                }
                for kind in ItemKind::ALL {
                    for allow in g.rules(kind).allow_patterns() {
                        for other in grants.iter() {
                            for deny in other.rules(kind).deny_patterns() {
                                let covered = deny == "*"
                                    || (!allow.contains(['*', '?'])
                                        && Rules::new(&[], std::slice::from_ref(deny))
                                            .denies(allow))
                                    || (allow.ends_with('*')
                                        && deny.ends_with('*')
                                        && allow.to_lowercase().starts_with(
                                            deny.trim_end_matches('*').to_lowercase().as_str(),
                                        ));
                                if covered {
                                    findings.insert(
                                        format!(
                                            "{at}: {} allow \"{allow}\" is hidden by deny \"{deny}\" in grant '{}' (line {}); deny wins",
                                            kind.key(),
                                            other.name,
                                            other.line
                                        ),
                                        (),
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        findings.into_keys().collect()
    }
}
