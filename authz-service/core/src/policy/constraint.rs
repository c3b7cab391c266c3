//! Argument constraints of a grant: what a tool call's arguments must be
//! (a value from a list, a number in a range, a string matching a pattern,
//! judged in canonical form for URIs and paths), compiled from `[policy]`.

use std::fmt;

use latchkey_filter::uri::{self, UriError};
use latchkey_filter::visibility::pattern_matches;
use serde_json::Value;

use crate::config::{CanonicalForm, ConstraintConfig};

use super::PolicyError;
use super::condition::{Condition, Facts, Reads};

/// One check on one argument.
#[derive(Debug, Clone)]
pub(super) enum Check {
    Equals(Value),
    OneOf(Vec<Value>),
    /// A glob over the string, judged in the canonical form given.
    Pattern(String, CanonicalForm),
    Range {
        min: Option<f64>,
        max: Option<f64>,
    },
    MaxLength(usize),
    Forbidden,
    /// A CEL condition over the caller and the whole call.
    Condition(Condition),
}

#[derive(Debug, Clone)]
pub(super) struct Constraint {
    pub(super) tool: String,
    pointer: String,
    optional: bool,
    check: Check,
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let arg = &self.pointer;
        match &self.check {
            Check::Equals(v) => write!(f, "argument {arg} must equal {v}"),
            Check::OneOf(vs) => {
                let list: Vec<String> = vs.iter().map(Value::to_string).collect();
                write!(f, "argument {arg} must be one of {}", list.join(", "))
            }
            Check::Pattern(p, CanonicalForm::None) => {
                write!(f, "argument {arg} must be a string matching \"{p}\"")
            }
            Check::Pattern(p, CanonicalForm::Path) => {
                write!(f, "argument {arg} must be a path matching \"{p}\"")
            }
            Check::Pattern(p, CanonicalForm::Uri) => {
                write!(f, "argument {arg} must be a URI matching \"{p}\"")
            }
            Check::Range { min, max } => match (min, max) {
                (Some(lo), Some(hi)) => {
                    write!(f, "argument {arg} must be a number from {lo} to {hi}")
                }
                (Some(lo), None) => write!(f, "argument {arg} must be a number of at least {lo}"),
                (None, Some(hi)) => write!(f, "argument {arg} must be a number of at most {hi}"),
                (None, None) => write!(f, "argument {arg} must be a number"),
            },
            Check::MaxLength(n) => {
                write!(
                    f,
                    "argument {arg} must be at most {n} characters (or items)"
                )
            }
            Check::Forbidden => write!(f, "argument {arg} must not be given"),
            Check::Condition(c) => write!(f, "the call must satisfy {}", c.source),
        }
    }
}

impl Constraint {
    /// `None` when the call `facts` describe satisfies it, else why not.
    pub(super) fn violation(&self, facts: &Facts<'_>) -> Option<String> {
        if let Check::Condition(c) = &self.check {
            return match c.holds(facts) {
                Ok(true) => None,
                Ok(false) => Some(self.to_string()),
                Err(e) => Some(format!("{self} ({e})")),
            };
        }
        let empty = Value::Null;
        let arguments = facts.call.map_or(&empty, |(_, a)| a);
        let value = arguments.pointer(&self.pointer);
        // A path or URI with no single meaning breaks the constraint,
        // whatever the pattern: say why, so the caller can respell it.
        if let (Check::Pattern(_, form), Some(Value::String(s))) = (&self.check, value)
            && let Err(e) = canonical_as(*form, s)
        {
            return Some(format!("{self} (the value cannot be judged: {e})"));
        }
        let ok = match (&self.check, value) {
            (Check::Forbidden, v) => v.is_none(),
            (Check::Condition(_), _) => true,
            (_, None) => self.optional,
            (Check::Equals(want), Some(v)) => v == want,
            (Check::OneOf(set), Some(v)) => set.contains(v),
            (Check::Pattern(p, form), Some(v)) => v
                .as_str()
                .and_then(|s| canonical_as(*form, s).ok())
                .is_some_and(|s| pattern_matches(p, &s)),
            (Check::Range { min, max }, Some(v)) => in_range(v, *min, *max),
            (Check::MaxLength(n), Some(v)) => match v {
                Value::String(s) => s.chars().count() <= *n,
                Value::Array(a) => a.len() <= *n,
                _ => false,
            },
        };
        (!ok).then(|| {
            if value.is_none() && !matches!(self.check, Check::Forbidden) {
                format!("argument {} is required: {self}", self.pointer)
            } else if matches!(self.check, Check::Range { .. })
                && value.and_then(Value::as_f64).is_some_and(|f| f.abs() > EXACT_DOUBLE)
                && value.is_some_and(|v| v.as_i64().is_none() && v.as_u64().is_none())
            {
                format!(
                    "{self} (beyond ±9007199254740992 a number is judged only when written as an integer of at most 64 bits)"
                )
            } else {
                self.to_string()
            }
        })
    }
}

/// The largest magnitude at which every JSON reader agrees on a number
/// that is not written as a 64-bit integer (2^53, as for ids:
/// [`latchkey_filter::jsonrpc::MAX_EXACT_ID`]).
pub(super) const EXACT_DOUBLE: f64 = 9_007_199_254_740_992.0;

/// Whether `v` is a number within `min..=max` as the upstream reads it.
///
/// Python and rmcp read an integer literal exactly (`9007199254740993` is
/// not the double 2^53 it rounds to), so an integer serde_json holds as a
/// 64-bit integer is compared with the bounds exactly. A number serde_json
/// could only hold as a double is judged as that double up to ±2^53, where
/// every reader agrees; beyond, an integer literal of more than 64 bits
/// (which Python reads exactly) cannot be told from the double it rounds to,
/// so it breaks the constraint rather than be judged as another value.
pub(super) fn in_range(v: &Value, min: Option<f64>, max: Option<f64>) -> bool {
    let Value::Number(n) = v else {
        return false;
    };
    if let Some(i) = n.as_i64().map(i128::from).or(n.as_u64().map(i128::from)) {
        // `as` saturates: a bound beyond ±2^127 stays beyond every i128.
        return min.is_none_or(|lo| i >= lo.ceil() as i128)
            && max.is_none_or(|hi| i <= hi.floor() as i128);
    }
    n.as_f64().is_some_and(|f| {
        f.abs() <= EXACT_DOUBLE && min.is_none_or(|lo| f >= lo) && max.is_none_or(|hi| f <= hi)
    })
}

/// `value` as a constraint of `form` judges it.
pub(super) fn canonical_as(
    form: CanonicalForm,
    value: &str,
) -> Result<std::borrow::Cow<'_, str>, UriError> {
    Ok(match form {
        CanonicalForm::None => value.into(),
        CanonicalForm::Path => uri::canonical_path(value)?.into(),
        CanonicalForm::Uri => uri::canonical(value)?.into(),
    })
}

/// The form a `pattern` constraint judges its argument in when the config
/// does not say: a pattern that looks like an absolute path or a URL is
/// one, so `path = "/srv/data/*"` is safe without the operator knowing
/// about `..`; `canonical = "none"` compares the string as sent.
pub(super) fn default_form(pattern: &str) -> CanonicalForm {
    let scheme_end = pattern.find("://").unwrap_or(0);
    let scheme = pattern.get(..scheme_end).unwrap_or_default();
    if pattern.starts_with('/') {
        CanonicalForm::Path
    } else if scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        CanonicalForm::Uri
    } else {
        CanonicalForm::None
    }
}

pub(super) fn compile_constraint(
    c: &ConstraintConfig,
    at: &str,
) -> Result<Constraint, PolicyError> {
    if !(c.argument.is_empty() || c.argument.starts_with('/')) {
        return Err(PolicyError(format!(
            "{at}: constraint argument '{}' is not a JSON Pointer (write it like /repo or /filters/0/schema)",
            c.argument
        )));
    }
    let mut checks = Vec::new();
    if let Some(v) = &c.equals {
        checks.push(Check::Equals(v.clone()));
    }
    if let Some(v) = &c.one_of {
        checks.push(Check::OneOf(v.clone()));
    }
    if let Some(p) = &c.pattern {
        let form = c.canonical.unwrap_or_else(|| default_form(p));
        let problem = match form {
            CanonicalForm::None => None,
            CanonicalForm::Path => uri::path_pattern_problem(p),
            CanonicalForm::Uri => uri::pattern_problem(p),
        };
        if let Some(problem) = problem {
            return Err(PolicyError(format!(
                "{at}: the pattern \"{p}\" on {} judges {} in canonical form, but {problem} (or set canonical = \"none\" to compare the string as sent)",
                c.argument,
                match form {
                    CanonicalForm::Path => "a path",
                    _ => "a URI",
                },
            )));
        }
        checks.push(Check::Pattern(p.clone(), form));
    } else if let Some(form) = c.canonical {
        return Err(PolicyError(format!(
            "{at}: the constraint on {} sets canonical = \"{}\" without a pattern; canonical says how a pattern judges its argument",
            c.argument,
            form.name()
        )));
    }
    if c.min.is_some() || c.max.is_some() {
        if c.min.is_some_and(f64::is_nan) || c.max.is_some_and(f64::is_nan) {
            return Err(PolicyError(format!(
                "{at}: constraint on {} has a bound that is not a number (nan); write a number",
                c.argument
            )));
        }
        if let (Some(lo), Some(hi)) = (c.min, c.max)
            && lo > hi
        {
            return Err(PolicyError(format!(
                "{at}: constraint on {} has min {lo} above max {hi}; no value could pass",
                c.argument
            )));
        }
        checks.push(Check::Range {
            min: c.min,
            max: c.max,
        });
    }
    if let Some(n) = c.max_length {
        checks.push(Check::MaxLength(n));
    }
    if c.forbidden {
        checks.push(Check::Forbidden);
    }
    if let Some(source) = &c.condition {
        checks.push(Check::Condition(Condition::compile(
            source,
            Reads::CallerAndCall,
            &format!("{at}, constraint on tool '{}'", c.tool),
        )?));
    }
    if checks.len() != 1 {
        return Err(PolicyError(format!(
            "{at}: a constraint on {} needs exactly one of equals, one_of, pattern, min/max, max_length, forbidden, condition (found {})",
            c.argument,
            checks.len()
        )));
    }
    Ok(Constraint {
        tool: c.tool.clone(),
        pointer: c.argument.clone(),
        optional: c.optional,
        check: checks.remove(0),
    })
}
