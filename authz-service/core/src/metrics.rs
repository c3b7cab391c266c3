//! Prometheus metrics of `latchkey serve`, served at `GET /metrics` on the
//! HTTP side in the Prometheus text format (0.0.4). This module owns the
//! metric names, their labels and the rendering.
//!
//! Decisions are counted from the very `DecisionEvent` the audit trail gets
//! (`record_decision`, called beside `AuditWriter::record`), so the metrics
//! and the audit trail cannot disagree. What other modules count (cache
//! lookups, audit writes, policy reloads) stays with them as plain atomics,
//! `Lookups` for the caches, and is read when scraped (`Readings`).
//!
//! Recording takes no lock but the label family's read lock (a write lock
//! only the first time a label set is seen) and the histogram's short
//! mutex: nothing that waits on I/O. Label values are config names and
//! fixed strings, never a user, token or request value.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::audit::DecisionEvent;

/// The `Content-Type` of `GET /metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the decision latency buckets, in seconds: a cached
/// decision takes tens of µs, one that goes to Redis or the identity
/// provider milliseconds, and 100 ms is already an outage.
const LATENCY_BUCKETS: [f64; 13] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    gateway: String,
    server: String,
    assignment: String,
    decision: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    gateway: String,
    decision: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApprovalLabels {
    /// A `[[policy.approvals]]` name: bounded by the config.
    rule: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefreshLabels {
    server: String,
    result: &'static str,
}

/// How a token refresh ended, as `latchkey_token_refreshes_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshResult {
    /// A new access token; the provider kept the refresh token.
    Refreshed,
    /// A new access token and a new refresh token in its place.
    Rotated,
    /// The provider no longer accepts the refresh token: consent needed.
    InvalidGrant,
    /// The provider could not be asked, or another replica's refresh did
    /// not finish in time.
    Unavailable,
    /// Another replica refreshed; this one used its result.
    Waited,
    /// A token exchange (`[servers.exchange]`) gave a new token.
    Exchanged,
    /// The identity provider (or the server's authorization server)
    /// refused a token exchange.
    ExchangeRefused,
}

impl RefreshResult {
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshResult::Refreshed => "refreshed",
            RefreshResult::Rotated => "rotated",
            RefreshResult::InvalidGrant => "invalid_grant",
            RefreshResult::Unavailable => "unavailable",
            RefreshResult::Waited => "waited",
            RefreshResult::Exchanged => "exchanged",
            RefreshResult::ExchangeRefused => "exchange_refused",
        }
    }
}

/// Where `refresh` counts its refreshes; a clone counts into the same
/// family. Failures are also kept, by server and result, until the alert
/// webhook takes them (bounded: configured servers × three results).
#[derive(Debug, Clone, Default)]
pub struct RefreshCounter(
    Family<RefreshLabels, Counter>,
    std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<(String, &'static str), u64>>>,
);

impl RefreshCounter {
    pub fn count(&self, server: &str, result: RefreshResult) {
        self.0
            .get_or_create(&RefreshLabels {
                server: server.to_string(),
                result: result.as_str(),
            })
            .inc();
        if matches!(
            result,
            RefreshResult::InvalidGrant
                | RefreshResult::Unavailable
                | RefreshResult::ExchangeRefused
        ) {
            *self
                .1
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry((server.to_string(), result.as_str()))
                .or_default() += 1;
        }
    }

    /// The failed renewals since the last call, by server and result.
    pub fn take_failures(&self) -> Vec<(String, &'static str, u64)> {
        std::mem::take(&mut *self.1.lock().unwrap_or_else(|e| e.into_inner()))
            .into_iter()
            .map(|((server, result), n)| (server, result, n))
            .collect()
    }
}

type LatencyFamily = Family<LatencyLabels, Histogram, fn() -> Histogram>;

/// What the decision path records.
#[derive(Debug)]
pub struct Metrics {
    decisions: Family<DecisionLabels, Counter>,
    latency: LatencyFamily,
    refreshes: RefreshCounter,
    settles: Family<ResultLabels, Counter>,
    approvals: Family<ApprovalLabels, Counter>,
    alert_deliveries: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            decisions: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS)),
            refreshes: RefreshCounter::default(),
            settles: Family::default(),
            approvals: Family::default(),
            alert_deliveries: Family::default(),
        }
    }

    /// Counts one batch for the alert webhook by how it ended: `delivered`,
    /// `failed` (every attempt refused or unanswered) or `dropped` (too
    /// many waiting, or refusals beyond a batch's bound).
    pub fn count_alert_delivery(&self, result: &'static str) {
        self.alert_deliveries
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts one step of an approval request under `rule`: `requested`,
    /// `approved`, `denied` or `used`, on the replica that took it.
    pub fn count_approval(&self, rule: &str, outcome: &'static str) {
        self.approvals
            .get_or_create(&ApprovalLabels {
                rule: rule.to_string(),
                outcome,
            })
            .inc();
    }

    /// Counts how waiting for the replicas after a change ended (`latchkey_store::propagation`).
    pub fn count_settle(&self, result: &'static str) {
        self.settles.get_or_create(&ResultLabels { result }).inc();
    }

    /// The counter of token refreshes, for `refresh::Refresher`.
    pub fn refreshes(&self) -> RefreshCounter {
        self.refreshes.clone()
    }

    /// Counts one decision and its latency, from the event the audit trail
    /// gets. A request too malformed to route has no gateway, server or
    /// assignment: those labels are then empty.
    pub fn record_decision(&self, e: &DecisionEvent) {
        let gateway = e.gateway.clone().unwrap_or_default();
        self.latency
            .get_or_create(&LatencyLabels {
                gateway: gateway.clone(),
                decision: e.decision,
            })
            .observe(e.latency_us as f64 / 1e6);
        self.decisions
            .get_or_create(&DecisionLabels {
                gateway,
                server: e.server.clone().unwrap_or_default(),
                assignment: e.assignment.clone().unwrap_or_default(),
                decision: e.decision,
                reason: e.reason,
            })
            .inc();
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self, r: &Readings) -> String {
        let mut registry = Registry::with_prefix("latchkey");
        registry.register(
            "decisions",
            "Authorization decisions by gateway, server, assignment, decision (allow or deny) and reason",
            self.decisions.clone(),
        );
        registry.register_with_unit(
            "decision_duration",
            "Time to decide one Check, from request in to decision made",
            Unit::Seconds,
            self.latency.clone(),
        );
        registry.register(
            "token_refreshes",
            "OAuth token refreshes by server and result: refreshed, rotated (new refresh token), invalid_grant (consent needed), unavailable (provider down or another replica too slow), waited (another replica refreshed)",
            self.refreshes.0.clone(),
        );
        registry.register(
            "changes_settled",
            "Admin and connect-page changes by how waiting for every replica to apply them ended: everywhere, unconfirmed (a replica did not confirm within 2 s) or unknown (Redis did not answer)",
            self.settles.clone(),
        );
        registry.register(
            "approvals",
            "Tool calls held for approval, by rule and outcome: requested (a call was held), approved, denied, used (an approved call went upstream)",
            self.approvals.clone(),
        );
        registry.register(
            "alert_deliveries",
            "Batches of refusals for the [alerts] webhook by result: delivered, failed (every attempt refused or unanswered), dropped (the sender was behind)",
            self.alert_deliveries.clone(),
        );
        if let Some(pending) = r.approvals_pending {
            registry.register(
                "approvals_pending",
                "Approval requests waiting for a decision, across every replica (read from Redis at scrape time)",
                ConstGauge::new(i64::try_from(pending).unwrap_or(i64::MAX)),
            );
        }
        let hits = Family::<CacheLabels, Counter>::default();
        let misses = Family::<CacheLabels, Counter>::default();
        for (cache, counts) in [
            ("credential", r.credential_cache),
            ("verified_token", r.token_cache),
        ] {
            let labels = CacheLabels { cache };
            hits.get_or_create(&labels).inc_by(counts.hits);
            misses.get_or_create(&labels).inc_by(counts.misses);
        }
        registry.register(
            "cache_hits",
            "Lookups answered from this replica's memory: cache=\"credential\" (users, agents, connections, identities) or \"verified_token\"",
            hits,
        );
        registry.register(
            "cache_misses",
            "Lookups that had to load: from Redis (credential) or by checking the token's signature (verified_token)",
            misses,
        );
        registry.register(
            "audit_backlog_events",
            "Decision events queued for the Redis audit stream, not yet written",
            ConstGauge::new(i64::try_from(r.audit_backlog).unwrap_or(i64::MAX)),
        );
        registry.register(
            "audit_events_written",
            "Decision events this replica wrote to the Redis audit stream",
            ConstCounter::new(r.audit_written),
        );
        registry.register(
            "audit_events_dropped",
            "Decision events lost from the Redis audit stream because the queue was full (they are still in the log)",
            ConstCounter::new(r.audit_dropped),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        reloads
            .get_or_create(&ResultLabels { result: "ok" })
            .inc_by(r.policy_reloads_ok);
        reloads
            .get_or_create(&ResultLabels { result: "refused" })
            .inc_by(r.policy_reloads_refused);
        registry.register(
            "policy_reloads",
            "Changes of the config file seen: result=\"ok\" (new policy in force) or \"refused\" (the previous one stays)",
            reloads,
        );
        let mut text = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
        text
    }
}

/// Hits and misses of one cache, counted where the lookup happens.
#[derive(Debug, Default)]
pub struct Lookups {
    hits: AtomicU64,
    misses: AtomicU64,
}

/// A reading of `Lookups`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LookupCounts {
    pub hits: u64,
    pub misses: u64,
}

impl Lookups {
    pub fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    pub fn counts(&self) -> LookupCounts {
        LookupCounts {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

/// Values other modules keep, read at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Readings {
    pub credential_cache: LookupCounts,
    pub token_cache: LookupCounts,
    pub audit_backlog: usize,
    pub audit_written: u64,
    pub audit_dropped: u64,
    pub policy_reloads_ok: u64,
    pub policy_reloads_refused: u64,
    /// Waiting approval requests (none when Redis did not answer).
    pub approvals_pending: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(
        gateway: Option<&str>,
        server: Option<&str>,
        decision: &'static str,
        reason: &'static str,
        latency_us: u64,
    ) -> DecisionEvent {
        DecisionEvent {
            event: "decision",
            gateway: gateway.map(str::to_string),
            server: server.map(str::to_string),
            assignment: server.map(|s| format!("{s}-a")),
            user: Some("alice".into()),
            decision,
            reason,
            latency_us,
            ..DecisionEvent::default()
        }
    }

    /// The value of the one sample line that starts with `prefix` (name and
    /// labels), failing if there is none or more than one.
    fn sample(text: &str, prefix: &str) -> f64 {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
            .collect();
        assert_eq!(lines.len(), 1, "{prefix} in:\n{text}");
        lines[0][prefix.len()..].trim().parse().unwrap()
    }

    #[test]
    fn decisions_are_counted_by_their_labels() {
        let m = Metrics::new();
        for _ in 0..3 {
            m.record_decision(&decision(Some("corp"), Some("crm"), "allow", "allowed", 40));
        }
        m.record_decision(&decision(
            Some("corp"),
            Some("crm"),
            "deny",
            "unauthenticated",
            30,
        ));
        m.record_decision(&decision(
            Some("corp"),
            Some("github"),
            "allow",
            "allowed",
            2_000,
        ));
        let text = m.render(&Readings::default());
        let counter = |server: &str, decision: &str, reason: &str| {
            sample(
                &text,
                &format!(
                    "latchkey_decisions_total{{gateway=\"corp\",server=\"{server}\",assignment=\"{server}-a\",decision=\"{decision}\",reason=\"{reason}\"}}"
                ),
            )
        };
        assert_eq!(counter("crm", "allow", "allowed"), 3.0);
        assert_eq!(counter("crm", "deny", "unauthenticated"), 1.0);
        assert_eq!(counter("github", "allow", "allowed"), 1.0);
        assert!(text.contains("# TYPE latchkey_decisions_total counter\n"));
        // No user ever becomes a label.
        assert!(!text.contains("alice"), "{text}");
    }

    #[test]
    fn a_request_without_gateway_is_counted_with_empty_labels() {
        let m = Metrics::new();
        m.record_decision(&decision(None, None, "deny", "bad_request", 5));
        let text = m.render(&Readings::default());
        assert_eq!(
            sample(
                &text,
                "latchkey_decisions_total{gateway=\"\",server=\"\",assignment=\"\",decision=\"deny\",reason=\"bad_request\"}"
            ),
            1.0
        );
        assert_eq!(
            sample(
                &text,
                "latchkey_decision_duration_seconds_count{gateway=\"\",decision=\"deny\"}"
            ),
            1.0
        );
    }

    #[test]
    fn latency_is_observed_in_seconds_per_gateway_and_decision() {
        let m = Metrics::new();
        m.record_decision(&decision(Some("corp"), Some("crm"), "allow", "allowed", 40));
        m.record_decision(&decision(
            Some("corp"),
            Some("crm"),
            "allow",
            "allowed",
            3_000,
        ));
        m.record_decision(&decision(
            Some("corp"),
            Some("crm"),
            "deny",
            "hidden_by_policy",
            20,
        ));
        let text = m.render(&Readings::default());
        assert!(text.contains("# TYPE latchkey_decision_duration_seconds histogram\n"));
        let allow = "{gateway=\"corp\",decision=\"allow\"";
        assert_eq!(
            sample(
                &text,
                &format!("latchkey_decision_duration_seconds_count{allow}}}")
            ),
            2.0
        );
        let sum = sample(
            &text,
            &format!("latchkey_decision_duration_seconds_sum{allow}}}"),
        );
        assert!((sum - 0.00304).abs() < 1e-9, "{sum}");
        let bucket = |le: &str| {
            sample(
                &text,
                &format!("latchkey_decision_duration_seconds_bucket{allow},le=\"{le}\"}}"),
            )
        };
        assert_eq!(bucket("2.5e-05"), 0.0);
        assert_eq!(bucket("5e-05"), 1.0);
        assert_eq!(bucket("0.0025"), 1.0);
        assert_eq!(bucket("0.005"), 2.0);
        assert_eq!(bucket("+Inf"), 2.0);
        assert_eq!(
            sample(
                &text,
                "latchkey_decision_duration_seconds_count{gateway=\"corp\",decision=\"deny\"}"
            ),
            1.0
        );
    }

    #[test]
    fn token_refreshes_are_counted_by_server_and_result() {
        let m = Metrics::new();
        let counter = m.refreshes();
        counter.count("github", RefreshResult::Rotated);
        counter.count("github", RefreshResult::Rotated);
        m.refreshes().count("github", RefreshResult::InvalidGrant);
        counter.count("jira", RefreshResult::Waited);
        let text = m.render(&Readings::default());
        let line = |server: &str, result: &str| {
            sample(
                &text,
                &format!(
                    "latchkey_token_refreshes_total{{server=\"{server}\",result=\"{result}\"}}"
                ),
            )
        };
        assert_eq!(line("github", "rotated"), 2.0);
        assert_eq!(line("github", "invalid_grant"), 1.0);
        assert_eq!(line("jira", "waited"), 1.0);
        assert!(text.contains("# TYPE latchkey_token_refreshes_total counter\n"));
    }

    #[test]
    fn readings_are_rendered_as_counters_and_a_gauge() {
        let lookups = Lookups::default();
        for _ in 0..7 {
            lookups.hit();
        }
        lookups.miss();
        let r = Readings {
            credential_cache: lookups.counts(),
            token_cache: LookupCounts { hits: 5, misses: 2 },
            audit_backlog: 12,
            audit_written: 340,
            audit_dropped: 1,
            policy_reloads_ok: 2,
            policy_reloads_refused: 1,
            approvals_pending: Some(3),
        };
        let metrics = Metrics::new();
        metrics.count_approval("big-payments", "requested");
        metrics.count_approval("big-payments", "requested");
        metrics.count_approval("big-payments", "used");
        let text = metrics.render(&r);
        for (line, value) in [
            ("latchkey_cache_hits_total{cache=\"credential\"}", 7.0),
            ("latchkey_cache_misses_total{cache=\"credential\"}", 1.0),
            ("latchkey_cache_hits_total{cache=\"verified_token\"}", 5.0),
            ("latchkey_cache_misses_total{cache=\"verified_token\"}", 2.0),
            ("latchkey_audit_backlog_events", 12.0),
            ("latchkey_audit_events_written_total", 340.0),
            ("latchkey_audit_events_dropped_total", 1.0),
            ("latchkey_policy_reloads_total{result=\"ok\"}", 2.0),
            ("latchkey_policy_reloads_total{result=\"refused\"}", 1.0),
            ("latchkey_approvals_pending", 3.0),
            (
                "latchkey_approvals_total{rule=\"big-payments\",outcome=\"requested\"}",
                2.0,
            ),
            (
                "latchkey_approvals_total{rule=\"big-payments\",outcome=\"used\"}",
                1.0,
            ),
        ] {
            assert_eq!(sample(&text, line), value, "{line}");
        }
        for kind in [
            "# TYPE latchkey_audit_backlog_events gauge",
            "# TYPE latchkey_audit_events_written_total counter",
            "# TYPE latchkey_cache_hits_total counter",
            "# TYPE latchkey_policy_reloads_total counter",
        ] {
            assert!(text.contains(kind), "{kind} in:\n{text}");
        }
    }

    #[test]
    fn before_any_decision_only_the_readings_are_shown() {
        let m = Metrics::new();
        let text = m.render(&Readings::default());
        for name in [
            "latchkey_cache_hits_total",
            "latchkey_cache_misses_total",
            "latchkey_audit_backlog_events",
            "latchkey_audit_events_written_total",
            "latchkey_audit_events_dropped_total",
            "latchkey_policy_reloads_total",
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}:\n{text}");
        }
        // A family without a sample is left out until its first decision.
        assert!(!text.contains("latchkey_decision"), "{text}");
        m.record_decision(&decision(Some("corp"), Some("crm"), "allow", "allowed", 40));
        let text = m.render(&Readings::default());
        for name in [
            "latchkey_decisions_total",
            "latchkey_decision_duration_seconds",
        ] {
            assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}:\n{text}");
        }
    }
}
