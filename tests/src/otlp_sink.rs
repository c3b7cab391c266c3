//! An OTLP/HTTP (JSON) logs receiver for the audit-export scenario.
//!
//! Why not a real collector: no OpenTelemetry Collector build can be
//! installed on these machines (it is not on PyPI, npm or Debian's
//! archive here). This receiver accepts what the collector's `otlphttp`
//! receiver accepts on `/v1/logs` with `content-type: application/json`
//! and keeps every log record and the request headers, so a scenario can
//! check what a SIEM behind a collector would get.

use std::sync::{Arc, Mutex};

use anyhow::Result;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;

#[derive(Default)]
struct Received {
    records: Vec<Value>,
    headers: Vec<HeaderMap>,
}

pub struct OtlpSink {
    pub port: u16,
    received: Arc<Mutex<Received>>,
}

impl OtlpSink {
    /// Listens on a free loopback port, on the calling runtime.
    pub async fn start() -> Result<OtlpSink> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let received = Arc::new(Mutex::new(Received::default()));
        let app = Router::new()
            .route("/v1/logs", post(accept))
            .with_state(received.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(OtlpSink { port, received })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/v1/logs", self.port)
    }

    /// Every log record received so far (OTLP JSON `logRecords` items).
    pub fn records(&self) -> Vec<Value> {
        self.received
            .lock()
            .map(|r| r.records.clone())
            .unwrap_or_default()
    }

    /// The headers of every export request so far.
    pub fn headers(&self) -> Vec<HeaderMap> {
        self.received
            .lock()
            .map(|r| r.headers.clone())
            .unwrap_or_default()
    }
}

async fn accept(
    State(received): State<Arc<Mutex<Received>>>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let Ok(v) = serde_json::from_str::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut r = received.lock().expect("sink lock");
    r.headers.push(headers);
    for rl in v["resourceLogs"].as_array().into_iter().flatten() {
        for sl in rl["scopeLogs"].as_array().into_iter().flatten() {
            r.records
                .extend(sl["logRecords"].as_array().into_iter().flatten().cloned());
        }
    }
    StatusCode::OK
}

/// The value of attribute `key` of an OTLP JSON log record, as plain JSON.
pub fn attribute(record: &Value, key: &str) -> Option<Value> {
    let a = record["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?;
    Some(plain(&a["value"]))
}

/// An OTLP JSON `AnyValue` as plain JSON.
fn plain(v: &Value) -> Value {
    if let Some(s) = v.get("stringValue") {
        return s.clone();
    }
    if let Some(i) = v.get("intValue") {
        // OTLP JSON writes 64-bit integers as strings or numbers.
        return match i {
            Value::String(s) => s.parse::<i64>().map(Value::from).unwrap_or(Value::Null),
            other => other.clone(),
        };
    }
    if let Some(b) = v.get("boolValue") {
        return b.clone();
    }
    if let Some(items) = v.get("arrayValue").and_then(|a| a["values"].as_array()) {
        return Value::Array(items.iter().map(plain).collect());
    }
    Value::Null
}
