//! The decision audit trail through a real Envoy running the Wasm filter,
//! a real `latchkey serve` and a real Redis: every decision is one event in
//! the Redis stream, none is lost or doubled when Redis stops for a while,
//! and no event carries a token.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures_util::StreamExt;
use latchkey_e2e::client::{INITIALIZE, post_json};
use latchkey_e2e::otlp_sink::{self, OtlpSink};
use latchkey_e2e::{Stack, StackOptions, TokenRequest};
use serde_json::{Value, json};

const DECISIONS: usize = 10_000;
/// When Redis is paused, and for how long.
const PAUSE_AFTER: usize = 3_000;
const PAUSE: Duration = Duration::from_secs(3);

fn decision_events(stack: &Stack) -> Result<Vec<Value>> {
    Ok(stack
        .audit_events()?
        .into_iter()
        .filter(|e| e["event"] == "decision")
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_is_one_event_even_when_redis_pauses() -> Result<()> {
    let stack = Stack::start(
        "audit_decisions",
        StackOptions {
            fast_mcp_page_size: Some(100),
            ..Default::default()
        },
    )
    .await?;
    let token = stack
        .token_with(&TokenRequest::new("alice", &stack.gateway_url()).client("audit-agent"))
        .await?;
    let url = stack.url("fast");

    // One denied decision too: a token for another audience.
    let stranger = stack
        .token_with(&TokenRequest::new(
            "mallory",
            "https://elsewhere.example/mcp",
        ))
        .await?;
    let denied = post_json(&url, Some(&stranger), INITIALIZE, &[]).await?;
    assert_eq!(denied.status, 401, "{}", denied.body);

    let sent = Arc::new(AtomicUsize::new(0));
    let requests = futures_util::stream::iter(0..DECISIONS)
        .map(|_| {
            let (url, token, sent) = (url.clone(), token.clone(), sent.clone());
            async move {
                let r = post_json(&url, Some(&token), INITIALIZE, &[]).await;
                sent.fetch_add(1, Ordering::Relaxed);
                r.map(|r| r.status)
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>();
    let pauser = {
        let sent = sent.clone();
        let redis = &stack.redis;
        async move {
            while sent.load(Ordering::Relaxed) < PAUSE_AFTER {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            redis.process.pause(true);
            tokio::time::sleep(PAUSE).await;
            redis.process.pause(false);
        }
    };
    let (statuses, ()) = tokio::join!(requests, pauser);
    for s in &statuses {
        match s {
            Ok(200) => {}
            other => bail!("a request failed: {other:?}"),
        }
    }

    // Every decision arrives, once: 10 000 allowed and the one denied.
    let deadline = Instant::now() + Duration::from_secs(60);
    let events = loop {
        let events = decision_events(&stack)?;
        if events.len() > DECISIONS || Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    ensure!(
        events.len() == DECISIONS + 1,
        "expected {} decision events, found {}",
        DECISIONS + 1,
        events.len()
    );
    let ids: HashSet<&str> = events
        .iter()
        .filter_map(|e| e["request_id"].as_str())
        .collect();
    assert_eq!(ids.len(), DECISIONS + 1, "every request id once");
    let allowed: Vec<&Value> = events.iter().filter(|e| e["decision"] == "allow").collect();
    assert_eq!(allowed.len(), DECISIONS);
    let e = allowed[0];
    assert_eq!(e["gateway"], "e2e");
    assert_eq!(e["assignment"], "fast");
    assert_eq!(e["server"], "fast");
    assert_eq!(e["scheme"], "shared");
    assert_eq!(e["user"], "alice");
    assert_eq!(e["agent"], "audit-agent");
    assert_eq!(e["identity"], "fast-sa");
    assert_eq!(e["method"], "initialize");
    assert_eq!(e["status"], 200);
    assert!(e["identity_version"].as_u64().is_some() && e["latency_us"].as_u64().is_some());
    let deny = events
        .iter()
        .find(|e| e["decision"] == "deny")
        .expect("the denied decision");
    assert_eq!(
        (&deny["reason"], &deny["status"], &deny["assignment"]),
        (&json!("unauthenticated"), &json!(401), &json!("fast"))
    );

    // Redis really was away: the writer had to retry.
    let log = stack.latchkey().expect("latchkey").log_text();
    assert!(
        log.contains("audit stream unavailable; retrying"),
        "the pause did not reach the audit writer"
    );
    // No token in any event, and no secret in any log.
    let text = serde_json::to_string(&events)?;
    assert!(!text.contains(&token) && !text.contains(&stranger));
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

/// With `stream_max_age_secs`, events older than the bound leave the stream
/// when new ones are written; the new ones stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_keeps_only_events_younger_than_its_age_bound() -> Result<()> {
    let stack = Stack::start(
        "audit_age",
        StackOptions {
            fast_mcp_page_size: Some(100),
            extra_config: Some("[audit]\nstream_max_age_secs = 2".into()),
            ..Default::default()
        },
    )
    .await?;
    let token = stack.token("alice").await?;
    let url = stack.url("fast");
    let send = |id: &'static str| {
        let (url, token) = (url.clone(), token.clone());
        async move {
            let r = post_json(&url, Some(&token), INITIALIZE, &[("x-request-id", id)]).await?;
            ensure!(r.status == 200, "{}", r.body);
            Ok::<_, anyhow::Error>(())
        }
    };
    let ids = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .filter_map(|e| e["request_id"].as_str().map(str::to_owned))
            .collect()
    };
    send("old-1").await?;
    send("old-2").await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while ids(&decision_events(&stack)?).len() < 2 {
        ensure!(Instant::now() < deadline, "the first events never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    send("new").await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = stack.audit_events()?;
        let seen = ids(&all);
        if seen == ["new"] {
            // The lifecycle events of the stack's set-up are older too.
            ensure!(all.len() == 1, "older events stayed: {all:?}");
            break;
        }
        ensure!(Instant::now() < deadline, "stream still holds {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// With `[audit.otlp]`, every audit event, decisions and changes alike,
/// also reaches an OpenTelemetry collector as a log record whose body is
/// the event as stored and whose attributes are its fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_events_are_exported_over_otlp() -> Result<()> {
    let sink = OtlpSink::start().await?;
    let api_key = format!("otlp-key-{}", std::process::id());
    let stack = Stack::start(
        "audit_otlp",
        StackOptions {
            fast_mcp_page_size: Some(100),
            extra_config: Some(format!(
                "[audit.otlp]\nendpoint = \"{}\"\nheaders = {{ \"x-api-key\" = \"{api_key}\" }}",
                sink.endpoint()
            )),
            ..Default::default()
        },
    )
    .await?;
    stack.remember_secret(&api_key);
    let token = stack.token("alice").await?;
    const ALLOWED: usize = 20;
    for _ in 0..ALLOWED {
        let r = post_json(&stack.url("fast"), Some(&token), INITIALIZE, &[]).await?;
        ensure!(r.status == 200, "{}", r.body);
    }
    let ops = stack.admin_token("ops", &["platform-admins"]).await?;
    stack.cli(0, &ops, &["agent", "disable", "other"], None)?;

    let of_kind = |kind: &str| -> Vec<Value> {
        sink.records()
            .into_iter()
            .filter(|r| otlp_sink::attribute(r, "latchkey.event") == Some(json!(kind)))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while of_kind("decision").len() < ALLOWED || of_kind("lifecycle").is_empty() {
        ensure!(
            Instant::now() < deadline,
            "the collector got {} decision and {} lifecycle records",
            of_kind("decision").len(),
            of_kind("lifecycle").len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let decisions = of_kind("decision");
    assert_eq!(decisions.len(), ALLOWED, "one record per decision");
    // The body is the event exactly as the Redis stream holds it.
    let stored = decision_events(&stack)?;
    for r in &decisions {
        let body: Value = serde_json::from_str(r["body"]["stringValue"].as_str().unwrap_or(""))?;
        assert!(stored.contains(&body), "not in the stream: {body}");
        let attr = |k: &str| otlp_sink::attribute(r, &format!("latchkey.{k}"));
        assert_eq!(attr("user"), Some(json!("alice")));
        assert_eq!(attr("agent"), Some(json!("e2e-agent")));
        assert_eq!(attr("decision"), Some(json!("allow")));
        assert_eq!(attr("status"), Some(json!(200)));
        assert_eq!(attr("request_id"), Some(body["request_id"].clone()));
    }
    let change = &of_kind("lifecycle")[0];
    assert_eq!(
        otlp_sink::attribute(change, "latchkey.action"),
        Some(json!("agent.disable"))
    );
    // The configured header reached the collector; it is in no log.
    assert!(
        sink.headers()
            .iter()
            .all(|h| h.get("x-api-key").is_some_and(|v| v == api_key.as_str()))
    );
    let exported = serde_json::to_string(&sink.records())?;
    assert!(!exported.contains(&token) && !exported.contains(&ops));
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

/// `latchkey_audit_events_dropped_total` on replica 0's `/metrics`; a
/// missing series is an error, not 0.
fn dropped(stack: &Stack) -> Result<u64> {
    let url = format!("{}/metrics", stack.replicas[0].http_url());
    let (status, text) = latchkey_e2e::http_get(&url).with_context(|| format!("GET {url}"))?;
    ensure!(status == 200, "GET {url}: {status}");
    text.lines()
        .find_map(|l| l.strip_prefix("latchkey_audit_events_dropped_total "))
        .with_context(|| format!("no latchkey_audit_events_dropped_total in {url}"))?
        .trim()
        .parse::<f64>()
        .map(|v| v as u64)
        .context("latchkey_audit_events_dropped_total is not a number")
}

/// The queue in front of the stream is bounded (`[audit] queue_events`):
/// while Redis hangs, decisions go on (from cached credentials), the events
/// past the bound are dropped from the stream, and each one is counted on
/// `/metrics` and logged once as an error; every other event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_audit_queue_drops_events_and_counts_each_one() -> Result<()> {
    const QUEUE: usize = 4;
    const DURING: usize = 30;
    let stack = Stack::start(
        "audit_queue_full",
        StackOptions {
            fast_mcp_page_size: Some(100),
            extra_config: Some(format!("[audit]\nqueue_events = {QUEUE}")),
            ..Default::default()
        },
    )
    .await?;
    let token = stack.token("alice").await?;
    let url = stack.url("fast");
    let send = async |id: String| -> Result<()> {
        let r = post_json(
            &url,
            Some(&token),
            INITIALIZE,
            &[("x-request-id", id.as_str())],
        )
        .await?;
        ensure!(r.status == 200, "{id}: {} {}", r.status, r.body);
        Ok(())
    };
    // Warm: the credential and the token are cached, and the stream has
    // the first decision (the positive control: the count reads 0).
    send("warm".into()).await?;
    latchkey_e2e::eventually("the warm-up decision in the stream", async || {
        let n = decision_events(&stack)?.len();
        Ok(if n == 1 {
            Ok(())
        } else {
            Err(format!("{n} decisions"))
        })
    })
    .await?;
    ensure!(dropped(&stack)? == 0, "nothing dropped yet");

    stack.redis.process.pause(true);
    let mut result = Ok(());
    for i in 0..DURING {
        result = send(format!("during-{i}")).await;
        if result.is_err() {
            break;
        }
    }
    stack.redis.process.pause(false);
    result?;

    // Some were dropped; at least a queue's worth was kept.
    let lost = dropped(&stack)?;
    ensure!(
        lost >= 1 && lost <= (DURING - QUEUE) as u64,
        "dropped {lost} of {DURING} with a queue of {QUEUE}"
    );
    let events = latchkey_e2e::eventually("the queued decisions in the stream", async || {
        let events = decision_events(&stack)?;
        Ok(if events.len() as u64 + lost == 1 + DURING as u64 {
            Ok(events)
        } else {
            Err(format!("{} decisions, {lost} dropped", events.len()))
        })
    })
    .await?;
    ensure!(events.iter().all(|e| e["decision"] == "allow"));
    let log = stack.latchkey().context("latchkey")?.log_text();
    ensure!(
        log.matches("audit queue full").count() == 1,
        "one error line for the drops"
    );
    stack.assert_no_secret_in_logs()?;
    Ok(())
}
