//! The Prometheus alerting rules shipped in `envoy/prometheus/`: valid
//! for Prometheus (`promtool check rules`), firing and staying quiet as
//! their tests say (`promtool test rules`, a series over each bound and
//! one under it), and naming only series and labels `latchkey serve`
//! exports, read from the metrics registry itself (a renamed metric or
//! label would leave a rule that never fires, which no test of the rule
//! alone can see).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use latchkey_core::audit::DecisionEvent;
use latchkey_core::metrics::{Metrics, Readings, RefreshResult};

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../envoy/prometheus")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(rules_dir())
        .output()
        .unwrap_or_else(|e| {
            panic!("running promtool: {e}; run scripts/setup (installs Debian's prometheus)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_alerting_rules_are_valid_and_fire_exactly_as_their_tests_say() {
    let checked = promtool(&["check", "rules", "latchkey-alerts.yml"]);
    assert!(checked.contains("SUCCESS: 7 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "latchkey-alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Every `latchkey_*` series of the registry, each with its label names.
fn exported() -> Vec<(String, BTreeSet<String>)> {
    let metrics = Metrics::new();
    metrics.record_decision(&DecisionEvent {
        gateway: Some("g".into()),
        server: Some("s".into()),
        assignment: Some("a".into()),
        decision: "deny",
        reason: "hidden_by_policy",
        ..DecisionEvent::default()
    });
    metrics.refreshes().count("s", RefreshResult::InvalidGrant);
    metrics.count_approval("r", "requested");
    let text = metrics.render(&Readings {
        approvals_pending: Some(0),
        ..Readings::default()
    });
    text.lines()
        .filter(|l| l.starts_with("latchkey_"))
        .map(|l| {
            let series = l.split(' ').next().unwrap_or_default();
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let labels = labels
                .trim_end_matches('}')
                .split(',')
                .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_string()))
                .collect();
            (name.to_string(), labels)
        })
        .collect()
}

/// The label names an expression uses: in `by (…)` and in `{…}` selectors.
fn labels_named(expr: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for (open, close, by) in [("by (", ')', true), ("{", '}', false)] {
        for part in expr.split(open).skip(1) {
            let inside = part.split(close).next().unwrap_or_default();
            for item in inside.split(',') {
                let name = if by {
                    item.trim()
                } else {
                    item.split(['=', '!']).next().unwrap_or_default().trim()
                };
                if !name.is_empty() {
                    out.push(name);
                }
            }
        }
    }
    out
}

#[test]
fn the_label_reader_finds_grouping_and_selector_labels() {
    assert_eq!(
        labels_named(r#"sum by (gateway, reason) (increase(x{reason=~"a|b",server!="c"}[5m]))"#),
        ["gateway", "reason", "reason", "server"]
    );
}

#[test]
fn the_rules_name_only_series_and_labels_latchkey_exports() {
    let rules = std::fs::read_to_string(rules_dir().join("latchkey-alerts.yml")).unwrap();
    let exported = exported();
    for line in rules
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:"))
    {
        let names: Vec<&str> = line
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("latchkey_"))
            .collect();
        assert!(!names.is_empty(), "a rule over no Latchkey series: {line}");
        for name in names {
            let labels = exported
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, l)| l)
                .unwrap_or_else(|| panic!("{name} is not exported (in: {line})"));
            let used = labels_named(line);
            for label in used {
                assert!(
                    labels.contains(label),
                    "{name} has no label '{label}' (it has {labels:?}; in: {line})"
                );
            }
        }
    }
}
