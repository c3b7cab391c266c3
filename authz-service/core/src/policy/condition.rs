//! Conditions: CEL expressions over who calls and, where a call is being
//! judged, what it asks for. A grant's `condition` decides whether the
//! grant applies at all; a constraint's, a step-up rule's and an approval
//! rule's decide over one call.
//!
//! CEL is what Envoy, Istio and Kubernetes users already write. Each
//! condition is compiled once, when the policy loads, and refused there if
//! it does not parse, reads an attribute that does not exist where it is
//! written (a grant's condition cannot read the call: lists are trimmed by
//! grants before any call is made), or could cost more than the size of
//! its input: macros that build lists (`map`, `filter`) and macros nested
//! inside another macro's body are refused, so evaluating one costs at
//! most the expression's size times the size of the arguments, which the
//! filter already bounds. A condition that fails to evaluate (a missing
//! claim, a wrong type) is false: it denies.

use std::sync::{Arc, LazyLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::{Context, Env, Program, Value};
use serde_json::Value as Json;

use crate::principal::Caller;

use super::PolicyError;

/// The longest condition accepted, in bytes.
pub const MAX_CONDITION_LEN: usize = 2048;

/// The attributes every condition may read.
pub const CALLER_ATTRIBUTES: &[(&str, &str)] = &[
    (
        "user",
        "the person's `sub` (empty for an agent acting for nobody)",
    ),
    (
        "claims",
        "every claim of the caller's token, e.g. claims.department",
    ),
    ("roles", "the token's groups and roles claim values"),
    ("scopes", "the token's scopes"),
    (
        "agent",
        "the acting agent's provisioned name (empty when none)",
    ),
    (
        "client_id",
        "the OAuth client the token was issued to (empty when none)",
    ),
    ("actors", "the delegation chain (act), current actor first"),
    ("gateway", "the gateway's name"),
    ("assignment", "the server assignment's name"),
    ("now", "the time of the decision, a timestamp"),
];

/// The attributes a condition over one call may read besides.
pub const CALL_ATTRIBUTES: &[(&str, &str)] = &[
    ("tool", "the tool called"),
    ("arguments", "the call's arguments"),
];

/// What an approval rule's condition may read besides: the gate reads a
/// tool's annotations before it asks approval rules, and only for servers
/// trusted to give them honestly.
pub const ANNOTATIONS_ATTRIBUTE: (&str, &str) = (
    "annotations",
    "the tool's annotations as its server lists them (servers with trust_annotations only)",
);

/// Where a condition is written, which says what it may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// A grant's: the caller only.
    Caller,
    /// A constraint's or a step-up rule's: the caller and the call.
    CallerAndCall,
    /// An approval rule's: the caller, the call and the tool's annotations.
    CallerCallAndAnnotations,
}

/// One compiled condition, with its source for explanations.
#[derive(Debug, Clone)]
pub struct Condition {
    pub source: String,
    /// It reads `annotations` (an approval rule's only).
    pub reads_annotations: bool,
    program: Arc<Program>,
}

/// The standard CEL environment, built once (building one costs ~75 µs).
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

impl Condition {
    /// Compiles `source`; `at` names where it is written, for errors.
    pub fn compile(source: &str, reads: Reads, at: &str) -> Result<Condition, PolicyError> {
        let refuse = |why: String| PolicyError(format!("{at}: condition {source:?} {why}"));
        if source.trim().is_empty() {
            return Err(refuse("is empty".into()));
        }
        if source.len() > MAX_CONDITION_LEN {
            return Err(refuse(format!("is longer than {MAX_CONDITION_LEN} bytes")));
        }
        let program = ENV
            .compile(source)
            .map_err(|e| refuse(format!("does not parse: {}", first_line(&e.to_string()))))?;
        let known: Vec<&str> = match reads {
            Reads::Caller => CALLER_ATTRIBUTES.iter().map(|(n, _)| *n).collect(),
            Reads::CallerAndCall => CALLER_ATTRIBUTES
                .iter()
                .chain(CALL_ATTRIBUTES)
                .map(|(n, _)| *n)
                .collect(),
            Reads::CallerCallAndAnnotations => CALLER_ATTRIBUTES
                .iter()
                .chain(CALL_ATTRIBUTES)
                .chain([&ANNOTATIONS_ATTRIBUTE])
                .map(|(n, _)| *n)
                .collect(),
        };
        let walk = Walk::of(program.expression());
        let unknown: Vec<&String> = walk
            .reads
            .iter()
            .filter(|v| !known.contains(&v.as_str()))
            .collect();
        if let Some(first) = unknown.first() {
            let call_only = CALL_ATTRIBUTES.iter().any(|(n, _)| *n == first.as_str());
            return Err(refuse(if call_only && reads == Reads::Caller {
                format!(
                    "reads '{first}', which a grant's condition cannot: a grant decides what lists show before any call. Put it on a constraint (condition = ...) of the tool"
                )
            } else {
                format!(
                    "reads '{first}', which is not an attribute; conditions may read {}",
                    known.join(", ")
                )
            }));
        }
        if let Some(why) = walk.costly {
            return Err(refuse(why.into()));
        }
        Ok(Condition {
            source: source.to_owned(),
            reads_annotations: walk.reads.iter().any(|r| r == ANNOTATIONS_ATTRIBUTE.0),
            program: Arc::new(program),
        })
    }

    /// Whether the condition holds for `facts`; a condition that cannot be
    /// evaluated, or is not a boolean, does not hold (the error says why).
    pub fn holds(&self, facts: &Facts<'_>) -> Result<bool, String> {
        let mut ctx = Context::with_env(ENV.clone());
        facts.bind(&mut ctx);
        match self.program.execute(&ctx) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!(
                "condition {:?} gave {other:?}, not true or false",
                self.source
            )),
            Err(e) => Err(format!("condition {:?} failed: {e}", self.source)),
        }
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// What a walk over a compiled condition found: the attributes it reads
/// (not the variables its macros bind), and why it could cost more than
/// its input's size, if it could.
#[derive(Default)]
struct Walk {
    reads: Vec<String>,
    costly: Option<&'static str>,
}

impl Walk {
    fn of(e: &IdedExpr) -> Walk {
        let mut w = Walk::default();
        w.visit(e, false, &mut Vec::new());
        w.reads.sort();
        w.reads.dedup();
        w
    }

    fn visit(&mut self, e: &IdedExpr, in_loop: bool, bound: &mut Vec<String>) {
        match &e.expr {
            Expr::Ident(name) => {
                if !bound.contains(name) {
                    self.reads.push(name.clone());
                }
            }
            Expr::Comprehension(c) => {
                // A comprehension building a list (`map`, `filter`) copies
                // the list so far at each step; one inside another's body
                // multiplies their inputs.
                if in_loop {
                    self.costly.get_or_insert(
                        "nests a macro inside another's body; its cost would grow with the square of the input",
                    );
                }
                if matches!(c.accu_init.expr, Expr::List(_) | Expr::Map(_)) {
                    self.costly.get_or_insert(
                        "uses map() or filter(), which are not accepted in conditions; use all(), exists() or exists_one()",
                    );
                }
                self.visit(&c.iter_range, in_loop, bound);
                let before = bound.len();
                bound.push(c.iter_var.clone());
                bound.extend(c.iter_var2.clone());
                bound.push(c.accu_var.clone());
                self.visit(&c.accu_init, in_loop, bound);
                for body in [&c.loop_cond, &c.loop_step, &c.result] {
                    self.visit(body, true, bound);
                }
                bound.truncate(before);
            }
            Expr::Call(c) => {
                if let Some(t) = &c.target {
                    self.visit(t, in_loop, bound);
                }
                for a in &c.args {
                    self.visit(a, in_loop, bound);
                }
            }
            Expr::Select(s) => self.visit(&s.operand, in_loop, bound),
            Expr::List(l) => {
                for x in &l.elements {
                    self.visit(x, in_loop, bound);
                }
            }
            Expr::Map(m) => self.entries(&m.entries, in_loop, bound),
            Expr::Struct(s) => self.entries(&s.entries, in_loop, bound),
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }

    fn entries(
        &mut self,
        entries: &[cel::common::ast::IdedEntryExpr],
        in_loop: bool,
        bound: &mut Vec<String>,
    ) {
        for x in entries {
            match &x.expr {
                EntryExpr::MapEntry(m) => {
                    self.visit(&m.key, in_loop, bound);
                    self.visit(&m.value, in_loop, bound);
                }
                EntryExpr::StructField(f) => self.visit(&f.value, in_loop, bound),
            }
        }
    }
}

/// What a condition is evaluated over.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub caller: &'a Caller,
    pub gateway: &'a str,
    pub assignment: &'a str,
    /// The tool and its arguments, when a call is judged.
    pub call: Option<(&'a str, &'a Json)>,
    /// The tool's annotations, when an approval rule reads them.
    pub annotations: Option<&'a Json>,
    /// Unix seconds.
    pub now: i64,
}

impl<'a> Facts<'a> {
    /// The caller alone, now (a grant's condition reads no call).
    pub fn of_caller(caller: &'a Caller, gateway: &'a str, assignment: &'a str) -> Facts<'a> {
        Facts {
            caller,
            gateway,
            assignment,
            call: None,
            annotations: None,
            now: crate::unix_now(),
        }
    }

    fn bind(&self, ctx: &mut Context<'_, '_>) {
        let c = self.caller;
        let text = |s: Option<&str>| Value::from(s.unwrap_or_default().to_owned());
        let list = |v: &[String]| Value::from(v.to_vec());
        let user = (!c.headless).then_some(c.subject.as_str());
        ctx.add_variable_from_value("user", text(user));
        ctx.add_variable_from_value("claims", json(&Json::Object((*c.claims).clone())));
        ctx.add_variable_from_value("roles", list(&c.roles));
        ctx.add_variable_from_value("scopes", list(&c.scopes));
        ctx.add_variable_from_value("agent", text(c.agent.as_deref()));
        ctx.add_variable_from_value("client_id", text(c.client_id.as_deref()));
        ctx.add_variable_from_value("actors", list(&c.actors));
        ctx.add_variable_from_value("gateway", text(Some(self.gateway)));
        ctx.add_variable_from_value("assignment", text(Some(self.assignment)));
        let now = chrono::DateTime::from_timestamp(self.now, 0).unwrap_or_default();
        ctx.add_variable_from_value("now", Value::Timestamp(now.into()));
        if let Some((tool, arguments)) = self.call {
            ctx.add_variable_from_value("tool", text(Some(tool)));
            ctx.add_variable_from_value("arguments", json(arguments));
        }
        if let Some(annotations) = self.annotations {
            ctx.add_variable_from_value("annotations", json(annotations));
        }
    }
}

/// A JSON value as CEL reads it (numbers by value: integers as int or
/// uint, others as double).
fn json(v: &Json) -> Value {
    cel::to_value(v).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn caller() -> Caller {
        Caller {
            subject: "alice".into(),
            roles: vec!["eng".into()],
            scopes: vec!["files:read".into()],
            actors: vec!["copilot".into()],
            agent: Some("copilot".into()),
            claims: Arc::new(
                json!({"department": "finance", "tenant": "acme"})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ),
            ..Caller::default()
        }
    }

    fn holds(source: &str, reads: Reads, call: Option<(&str, &Json)>) -> Result<bool, String> {
        let c = caller();
        let cond = Condition::compile(source, reads, "test").map_err(|e| e.0)?;
        cond.holds(&Facts {
            caller: &c,
            gateway: "g",
            assignment: "files",
            call,
            annotations: None,
            // 2026-12-07 14:00:00 UTC
            now: 1_796_652_000,
        })
    }

    #[test]
    fn conditions_read_claims_the_agent_the_chain_and_the_time() {
        assert_eq!(
            holds(
                "claims.department == 'finance' && agent == 'copilot' && size(actors) <= 1",
                Reads::Caller,
                None
            ),
            Ok(true)
        );
        assert_eq!(
            holds(
                "'files:read' in scopes && user == 'alice'",
                Reads::Caller,
                None
            ),
            Ok(true)
        );
        assert_eq!(
            holds(
                "now.getHours() >= 9 && now.getHours() < 17",
                Reads::Caller,
                None
            ),
            Ok(true)
        );
        assert_eq!(
            holds("claims.tenant != 'acme'", Reads::Caller, None),
            Ok(false)
        );
    }

    #[test]
    fn a_condition_over_a_call_reads_numbers_by_value() {
        let args = json!({"amount": 1000.0, "to": "bob"});
        let call = Some(("transfer", &args));
        assert_eq!(
            holds("arguments.amount <= 1000", Reads::CallerAndCall, call),
            Ok(true)
        );
        let args = json!({"amount": 1e3});
        assert_eq!(
            holds(
                "arguments.amount > 999.5",
                Reads::CallerAndCall,
                Some(("transfer", &args))
            ),
            Ok(true)
        );
        assert_eq!(
            holds("tool == 'transfer'", Reads::CallerAndCall, call),
            Ok(true)
        );
    }

    #[test]
    fn a_condition_that_cannot_be_evaluated_does_not_hold() {
        let e = holds("claims.clearance == 'secret'", Reads::Caller, None).unwrap_err();
        assert!(e.contains("clearance"), "{e}");
        let e = holds("claims.department", Reads::Caller, None).unwrap_err();
        assert!(e.contains("not true or false"), "{e}");
    }

    #[test]
    fn conditions_that_could_never_work_or_cost_too_much_are_refused_at_load() {
        let refused = |s: &str, reads| Condition::compile(s, reads, "grant 'x'").unwrap_err().0;
        assert!(refused("claims.department ==", Reads::Caller).contains("does not parse"));
        assert!(
            refused("departmnt == 'x'", Reads::Caller)
                .contains("'departmnt', which is not an attribute")
        );
        let e = refused("arguments.amount < 5", Reads::Caller);
        assert!(e.contains("a grant's condition cannot"), "{e}");
        assert!(
            refused(
                "arguments.items.map(x, x * 2).size() > 0",
                Reads::CallerAndCall
            )
            .contains("map()")
        );
        let e = refused(
            "arguments.a.all(x, arguments.b.exists(y, x == y))",
            Reads::CallerAndCall,
        );
        assert!(e.contains("square"), "{e}");
        assert!(refused(&"x".repeat(MAX_CONDITION_LEN + 1), Reads::Caller).contains("longer"));
        assert!(refused(" ", Reads::Caller).contains("empty"));
        // Chained (not nested) macros are linear and accepted.
        assert!(
            Condition::compile(
                "arguments.a.all(x, x > 0) && arguments.b.exists(y, y == 'z')",
                Reads::CallerAndCall,
                "t"
            )
            .is_ok()
        );
    }
}
