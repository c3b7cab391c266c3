//! `GET /metrics` on the HTTP side of a real `latchkey serve`, behind a real
//! Envoy running the Wasm filter: decisions are counted exactly, once each,
//! with their gateway, server and reason; the latency histogram counts every
//! one; the caches and the audit writer show their work; a policy reload is
//! counted, taken or refused; and no token ever appears.

use anyhow::{Context, Result, bail, ensure};
use latchkey_e2e::attacker::forged_with_unknown_kid;
use latchkey_e2e::client::{INITIALIZE, post_json};
use latchkey_e2e::scrape::{Scrape, scrape, scrape_until};
use latchkey_e2e::{Stack, StackOptions, TokenRequest};

const ALLOWED: u64 = 20;
const DENIED: u64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_decision_cache_lookup_audit_write_and_reload() -> Result<()> {
    let stack = Stack::start(
        "metrics",
        StackOptions {
            fast_mcp_page_size: Some(100),
            ..Default::default()
        },
    )
    .await?;
    let token = stack
        .token_with(&TokenRequest::new("alice", &stack.gateway_url()).client("e2e-agent"))
        .await?;
    let stranger = stack
        .token_with(
            &TokenRequest::new("mallory", "https://elsewhere.example/mcp").client("e2e-agent"),
        )
        .await?;
    let url = stack.url("fast");

    // Nothing decided yet: no decision series, the readings all there.
    let before = scrape(&stack).await?;
    ensure!(
        before.sum("latchkey_decisions_total", &[]) == 0.0,
        "{}",
        before.text
    );
    ensure!(
        before.value("latchkey_audit_backlog_events").is_some(),
        "{}",
        before.text
    );

    for _ in 0..ALLOWED {
        let r = post_json(&url, Some(&token), INITIALIZE, &[]).await?;
        ensure!(r.status == 200, "allowed: {} {}", r.status, r.body);
    }
    for _ in 0..DENIED {
        let r = post_json(&url, Some(&stranger), INITIALIZE, &[]).await?;
        ensure!(r.status == 401, "denied: {} {}", r.status, r.body);
    }

    // The audit writer is asynchronous: wait until it wrote every decision.
    let total = (ALLOWED + DENIED) as f64;
    let m = scrape_until(&stack, |s| {
        s.value("latchkey_audit_events_written_total") == Some(total)
    })
    .await?;
    let t = &m.text;

    let fast = ["gateway=\"e2e\"", "server=\"fast\""];
    assert_eq!(
        m.value(
            "latchkey_decisions_total{gateway=\"e2e\",server=\"fast\",assignment=\"fast\",decision=\"allow\",reason=\"allowed\"}"
        ),
        Some(ALLOWED as f64),
        "{t}"
    );
    assert_eq!(
        m.value(
            "latchkey_decisions_total{gateway=\"e2e\",server=\"fast\",assignment=\"fast\",decision=\"deny\",reason=\"unauthenticated\"}"
        ),
        Some(DENIED as f64),
        "{t}"
    );
    assert_eq!(
        m.sum("latchkey_decisions_total", &fast),
        total,
        "no other series for this server: {t}"
    );
    assert_eq!(
        m.sum("latchkey_decisions_total", &[]),
        total,
        "no decision counted twice or elsewhere: {t}"
    );

    // The histogram saw every decision, once.
    assert_eq!(
        m.value("latchkey_decision_duration_seconds_count{gateway=\"e2e\",decision=\"allow\"}"),
        Some(ALLOWED as f64),
        "{t}"
    );
    assert_eq!(
        m.sum(
            "latchkey_decision_duration_seconds_count",
            &["gateway=\"e2e\""]
        ),
        total,
        "{t}"
    );
    assert_eq!(
        m.value(
            "latchkey_decision_duration_seconds_bucket{gateway=\"e2e\",decision=\"allow\",le=\"+Inf\"}"
        ),
        Some(ALLOWED as f64),
        "{t}"
    );
    let sum = m
        .value("latchkey_decision_duration_seconds_sum{gateway=\"e2e\",decision=\"allow\"}")
        .context("latency sum")?;
    ensure!(sum > 0.0 && sum < ALLOWED as f64, "latency sum {sum}s");

    // The caches: the first allowed request loaded, the next ones were
    // served from memory. A token for another audience is checked each time.
    let hits = |cache: &str| m.value(&format!("latchkey_cache_hits_total{{cache=\"{cache}\"}}"));
    let misses =
        |cache: &str| m.value(&format!("latchkey_cache_misses_total{{cache=\"{cache}\"}}"));
    let (token_hits, token_misses) = (
        hits("verified_token").context("token hits")?,
        misses("verified_token").context("token misses")?,
    );
    assert_eq!(
        (token_hits, token_misses),
        ((ALLOWED - 1) as f64, (1 + DENIED) as f64),
        "{t}"
    );
    let (credential_hits, credential_misses) = (
        hits("credential").context("credential hits")?,
        misses("credential").context("credential misses")?,
    );
    ensure!(
        credential_misses >= 1.0 && credential_hits >= (ALLOWED - 1) as f64,
        "credential cache: {credential_hits} hits, {credential_misses} misses\n{t}"
    );

    // The audit writer caught up: nothing waiting, nothing lost.
    assert_eq!(m.value("latchkey_audit_backlog_events"), Some(0.0), "{t}");
    assert_eq!(
        m.value("latchkey_audit_events_dropped_total"),
        Some(0.0),
        "{t}"
    );

    // No token, and no user: only config names and fixed words are labels.
    for secret in [&token, &stranger] {
        ensure!(!t.contains(secret.as_str()), "a token in /metrics");
        if let Some(signature) = secret.rsplit('.').next() {
            ensure!(!t.contains(signature), "a token signature in /metrics");
        }
    }
    ensure!(
        !t.contains("alice") && !t.contains("mallory"),
        "a user in /metrics:\n{t}"
    );

    // A config file that does not parse is refused; putting the good one
    // back is a reload taken.
    let reloads = |s: &Scrape, result: &str| {
        s.value(&format!(
            "latchkey_policy_reloads_total{{result=\"{result}\"}}"
        ))
    };
    assert_eq!(
        (reloads(&m, "ok"), reloads(&m, "refused")),
        (Some(0.0), Some(0.0))
    );
    stack.set_policy(Some("[policy\n"))?;
    let m = scrape_until(&stack, |s| reloads(s, "refused") == Some(1.0)).await?;
    assert_eq!(reloads(&m, "refused"), Some(1.0), "{}", m.text);
    stack.set_policy(None)?;
    let m = scrape_until(&stack, |s| reloads(s, "ok") == Some(1.0)).await?;
    assert_eq!(
        (reloads(&m, "ok"), reloads(&m, "refused")),
        (Some(1.0), Some(1.0)),
        "{}",
        m.text
    );
    let r = post_json(&url, Some(&token), INITIALIZE, &[]).await?;
    if r.status != 200 {
        bail!("after the reload: {} {}", r.status, r.body);
    }

    stack.assert_no_secret_in_logs()?;
    Ok(())
}

/// `[listen] metrics`: the scraper's own port serves `/metrics`, and the
/// HTTP side — which browsers reach for the connect page — no longer does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_listener_takes_metrics_off_the_http_side() -> Result<()> {
    let stack = Stack::start(
        "metrics_listener",
        StackOptions {
            metrics_listener: true,
            ..StackOptions::default()
        },
    )
    .await?;
    let token = stack.token("alice").await?;
    let r = post_json(&stack.url("whoami"), Some(&token), INITIALIZE, &[]).await?;
    ensure!(r.status == 200, "{} {}", r.status, r.body);

    let replica = &stack.replicas[0];
    let port = replica.metrics_port.context("no metrics port")?;
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let text = latchkey_e2e::eventually("the decision is counted", async || {
        let (status, text) = latchkey_e2e::http_get(&metrics).context("GET /metrics")?;
        Ok(
            if status == 200 && text.contains("latchkey_decisions_total{") {
                Ok(text)
            } else {
                Err(format!("{status}: {text}"))
            },
        )
    })
    .await?;
    ensure!(text.contains("decision=\"allow\""), "{text}");
    let (status, _) = latchkey_e2e::http_get(&format!("{}/metrics", replica.http_url()))
        .context("GET /metrics on the HTTP side")?;
    ensure!(
        status == 404,
        "the HTTP side still answers /metrics: {status}"
    );
    let (status, _) =
        latchkey_e2e::http_get(&format!("{}/readyz", replica.http_url())).context("GET /readyz")?;
    ensure!(status == 200, "health stays on the HTTP side: {status}");
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

/// Finding: a stream of tokens with made-up `kid`s refetched the keys and
/// emptied everyone's verified-token cache each time, so every caller paid
/// a signature check again. Now only a key that left (or changed) does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_with_unknown_kids_leave_everyone_elses_verified_token_remembered() -> Result<()> {
    let stack = Stack::start("metrics_unknown_kid", StackOptions::default()).await?;
    let url = stack.url("whoami");
    let alice = stack.token("alice").await?;
    let call = async |token: &str| -> Result<u16> {
        Ok(post_json(&url, Some(token), INITIALIZE, &[]).await?.status)
    };
    let lookups = async || -> Result<(f64, f64)> {
        let s = scrape(&stack).await?;
        Ok((
            s.value("latchkey_cache_hits_total{cache=\"verified_token\"}")
                .with_context(|| format!("no verified_token hits series:\n{}", s.text))?,
            s.value("latchkey_cache_misses_total{cache=\"verified_token\"}")
                .with_context(|| format!("no verified_token misses series:\n{}", s.text))?,
        ))
    };

    ensure!(call(&alice).await? == 200, "alice's first call");
    let (hits, misses) = lookups().await?;
    for _ in 0..3 {
        let forged = forged_with_unknown_kid("mallory", &stack.gateway_url());
        ensure!(
            call(&forged).await? == 401,
            "a forged token was not refused"
        );
    }
    let (_, after_forged) = lookups().await?;
    ensure!(
        after_forged == misses + 3.0,
        "each forged token is a lookup that misses: {misses} → {after_forged}"
    );

    // Alice again: answered from memory, as before the forged tokens.
    ensure!(call(&alice).await? == 200, "alice's second call");
    let (hits_now, misses_now) = lookups().await?;
    ensure!(
        (hits_now, misses_now) == (hits + 1.0, after_forged),
        "alice's token was forgotten: hits {hits} → {hits_now}, misses {after_forged} → {misses_now}"
    );

    // Control, read the same way: a token the verifier has not seen yet is a miss.
    let fresh = stack
        .token_with(
            &TokenRequest::new("alice", &stack.gateway_url()).claim("n", serde_json::json!(1)),
        )
        .await?;
    ensure!(call(&fresh).await? == 200, "alice's fresh token");
    let (hits_last, misses_last) = lookups().await?;
    ensure!(
        (hits_last, misses_last) == (hits_now, misses_now + 1.0),
        "a new token: hits {hits_now} → {hits_last}, misses {misses_now} → {misses_last}"
    );
    stack.assert_no_secret_in_logs()?;
    Ok(())
}
