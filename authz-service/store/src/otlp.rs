//! Audit events to an OpenTelemetry collector (OTLP over HTTP, JSON), for
//! SIEMs that ingest OpenTelemetry logs. Optional (`[audit.otlp]`); the
//! Redis stream stays the record of truth.
//!
//! Like the tracing subscriber, the exporter is process-wide: `install` it
//! once at start, and every audit event, decision or lifecycle, goes through
//! [`export`] next to its log line (a no-op when none is installed).
//!
//! Each event becomes one log record: the event's JSON as the body and
//! each top-level field as an attribute `latchkey.<field>`, so a collector
//! can route and filter without parsing the body. The SDK's batch
//! processor runs on its own thread with a bounded queue: exporting never
//! waits on the decision path, and a collector that is away costs dropped
//! records (reported by the SDK), not latency.

use std::time::Duration;

use opentelemetry::logs::{AnyValue, LogRecord, Logger, LoggerProvider, Severity};
use opentelemetry_otlp::{LogExporter, Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{SdkLogger, SdkLoggerProvider};
use serde_json::Value;

use latchkey_core::config::OtlpConfig;

#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP audit exporter for {endpoint}: {message}")]
pub struct OtlpError {
    endpoint: String,
    message: String,
}

/// Sends audit events to the collector.
pub struct OtlpAudit {
    provider: SdkLoggerProvider,
    logger: SdkLogger,
}

impl OtlpAudit {
    pub fn start(config: &OtlpConfig, service_instance: &str) -> Result<OtlpAudit, OtlpError> {
        let exporter = LogExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(config.endpoint.clone())
            .with_timeout(Duration::from_millis(config.timeout_ms))
            .with_headers(config.headers.clone())
            .build()
            .map_err(|e| OtlpError {
                endpoint: config.endpoint.clone(),
                message: e.to_string(),
            })?;
        let resource = Resource::builder()
            .with_service_name("latchkey")
            .with_attribute(opentelemetry::KeyValue::new(
                "service.instance.id",
                service_instance.to_owned(),
            ))
            .build();
        let provider = SdkLoggerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let logger = provider.logger("latchkey.audit");
        Ok(OtlpAudit { provider, logger })
    }

    /// Queues one event (its JSON, as stored in the stream).
    pub fn emit(&self, json: &str) {
        let mut record = self.logger.create_log_record();
        record.set_severity_number(Severity::Info);
        record.set_severity_text("INFO");
        record.set_timestamp(std::time::SystemTime::now());
        if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(json) {
            if let Some(Value::String(kind)) = fields.get("event") {
                record.set_event_name(event_name(kind));
            }
            for (k, v) in fields {
                record.add_attribute(format!("latchkey.{k}"), any_value(v));
            }
        }
        record.set_body(AnyValue::String(json.to_owned().into()));
        self.logger.emit(record);
    }

    /// Sends what is queued (at shutdown).
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(error = %e, "OTLP audit export: flush failed");
        }
    }
}

static EXPORTER: std::sync::OnceLock<OtlpAudit> = std::sync::OnceLock::new();

/// Makes `audit` the process's exporter; a second call is refused.
pub fn install(audit: OtlpAudit) -> Result<(), OtlpAudit> {
    EXPORTER.set(audit)
}

/// Queues one audit event (its JSON) for the collector, if one is configured.
pub fn export(json: &str) {
    if let Some(e) = EXPORTER.get() {
        e.emit(json);
    }
}

/// Sends what is queued, before the process exits.
pub fn flush() {
    if let Some(e) = EXPORTER.get() {
        e.flush();
    }
}

/// OpenTelemetry event names are static; ours are a closed set.
fn event_name(kind: &str) -> &'static str {
    match kind {
        "decision" => "latchkey.decision",
        "lifecycle" => "latchkey.lifecycle",
        _ => "latchkey.event",
    }
}

fn any_value(v: Value) -> AnyValue {
    match v {
        Value::String(s) => AnyValue::String(s.into()),
        Value::Bool(b) => AnyValue::Boolean(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AnyValue::Int(i),
            None => AnyValue::Double(n.as_f64().unwrap_or_default()),
        },
        Value::Array(items) => {
            AnyValue::ListAny(Box::new(items.into_iter().map(any_value).collect()))
        }
        Value::Null => AnyValue::String("".into()),
        obj @ Value::Object(_) => AnyValue::String(obj.to_string().into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn json_values_become_typed_attributes() {
        assert_eq!(any_value(serde_json::json!(200)), AnyValue::Int(200));
        assert_eq!(
            any_value(serde_json::json!(["a", "b"])),
            AnyValue::ListAny(Box::new(vec![
                AnyValue::String("a".into()),
                AnyValue::String("b".into())
            ]))
        );
        assert_eq!(any_value(serde_json::json!(true)), AnyValue::Boolean(true));
        assert_eq!(event_name("decision"), "latchkey.decision");
    }

    #[test]
    fn the_config_shows_header_names_not_values() {
        let c = OtlpConfig {
            endpoint: "http://collector:4318/v1/logs".into(),
            headers: HashMap::from([("x-api-key".to_string(), "s3cr3t".to_string())]),
            timeout_ms: 1000,
        };
        let shown = c.to_string();
        assert!(
            shown.contains("x-api-key") && !shown.contains("s3cr3t"),
            "{shown}"
        );
    }
}
