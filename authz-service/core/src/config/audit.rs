//! `[audit]`: the audit stream's bounds and the optional OTLP export.

use std::collections::HashMap;

use serde::Deserialize;

/// The audit trail (a Redis stream) and its bound.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Approximate maximum number of events the stream keeps.
    #[serde(default = "default_audit_max_len")]
    pub stream_max_len: usize,
    /// Events older than this many seconds are trimmed each time decision
    /// events are written. None: no age bound.
    #[serde(default)]
    pub stream_max_age_secs: Option<u64>,
    /// Decision events held in memory while Redis is slow or away; past
    /// that they are dropped from the stream (counted, logged as errors;
    /// still in the decision log).
    #[serde(default = "default_audit_queue")]
    pub queue_events: usize,
    /// Also export events to an OpenTelemetry collector.
    pub otlp: Option<OtlpConfig>,
}

fn default_audit_max_len() -> usize {
    1_000_000
}

fn default_audit_queue() -> usize {
    100_000
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            stream_max_len: default_audit_max_len(),
            stream_max_age_secs: None,
            queue_events: default_audit_queue(),
            otlp: None,
        }
    }
}

/// `[audit.otlp]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's OTLP/HTTP logs endpoint, e.g.
    /// `http://otel-collector:4318/v1/logs`.
    pub endpoint: String,
    /// Extra request headers (an API key for a hosted collector, say).
    /// Never logged.
    #[serde(default)]
    pub headers: HashMap<String, String>,
    #[serde(default = "default_otlp_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_otlp_timeout_ms() -> u64 {
    5000
}

impl std::fmt::Debug for OtlpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for OtlpConfig {
    /// The endpoint and header names only: header values may be secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.headers.keys().map(String::as_str).collect();
        names.sort_unstable();
        write!(f, "{} (headers: {})", self.endpoint, names.join(", "))
    }
}
