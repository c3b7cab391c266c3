//! The alert webhook (`[alerts]`), end to end: Envoy with the Wasm filter,
//! `latchkey serve`, and a local receiver (`WebhookSink`) standing for the
//! organisation's SIEM. Refusals worth a person's attention arrive grouped
//! by who and where with counts, signed with the configured key, and a
//! delivery the receiver refuses is retried under the same delivery id.
//! Allowed calls, and refusals of other reasons, are not sent.

use anyhow::{Context, Result, ensure};
use latchkey_e2e::client::post_json;
use latchkey_e2e::scrape::scrape_replica;
use latchkey_e2e::stack::random_hex;
use latchkey_e2e::webhook_sink::{Delivery, WebhookSink};
use latchkey_e2e::{Stack, StackOptions, TokenRequest, eventually};
use serde_json::{Value, json};

const KEY_ENV: &str = "LATCHKEY_E2E_ALERT_KEY";

const POLICY: &str = r#"
[policy]
[[policy.grants]]
name = "people"
gateway = "e2e"
assignments = ["fast"]
users = ["*"]
tools = { allow = ["tool_0*"] }
"#;

fn call(tool: &str) -> String {
    json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
           "params": {"name": tool, "arguments": {}}})
    .to_string()
}

/// The refusal groups of every delivery the receiver took (2xx).
fn delivered_groups(deliveries: &[Delivery]) -> Result<Vec<Value>> {
    let mut groups = Vec::new();
    for d in deliveries.iter().filter(|d| d.status == 200) {
        let body: Value = serde_json::from_str(&d.body)?;
        groups.extend(body["refusals"].as_array().cloned().unwrap_or_default());
    }
    Ok(groups)
}

/// The sum of the counts of the groups matching `fields`.
fn counted(groups: &[Value], fields: &[(&str, &str)]) -> u64 {
    groups
        .iter()
        .filter(|g| fields.iter().all(|(k, v)| g[*k] == *v))
        .map(|g| g["count"].as_u64().unwrap_or(0))
        .sum()
}

/// Checks `latchkey-signature` (`t=<unix>,v1=<hex>`) as a receiver would.
fn signed_with(d: &Delivery, key: &str) -> Result<()> {
    let header = d
        .headers
        .get("latchkey-signature")
        .and_then(|v| v.to_str().ok())
        .context("no latchkey-signature")?;
    let (t, v1) = header
        .split_once(",v1=")
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v)))
        .with_context(|| format!("signature '{header}' is not t=…,v1=…"))?;
    let t: i64 = t.parse()?;
    ensure!(
        (latchkey_core::unix_now() - t).abs() < 300,
        "signed at {t}, not now"
    );
    let expected =
        latchkey_core::hex::hmac_sha256(key.as_bytes(), format!("{t}.{}", d.body).as_bytes());
    ensure!(v1 == expected, "the signature does not verify");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_worth_attention_reach_the_webhook_grouped_signed_and_retried() -> Result<()> {
    let sink = WebhookSink::start().await?;
    // The receiver is down for the first attempt.
    sink.answer_next(&[503]);
    let key = format!("alert-key-{}", random_hex());
    let stack = Stack::start(
        "alerts",
        StackOptions {
            fast_mcp_page_size: Some(100),
            policy: Some(POLICY.into()),
            extra_config: Some(format!(
                "[alerts]\nwebhook_url = \"{}\"\nsecret_env = \"{KEY_ENV}\"\nflush_secs = 1\n",
                sink.url()
            )),
            replica_env: vec![(KEY_ENV.into(), key.clone())],
            ..Default::default()
        },
    )
    .await?;
    stack.remember_secret(&key);
    let fast = stack.url("fast");

    // Mallory probes a tool the policy hides from her, five times.
    let mallory = stack.token("mallory").await?;
    for _ in 0..5 {
        let r = post_json(&fast, Some(&mallory), &call("tool_15"), &[]).await?;
        ensure!(
            r.json()?["error"]["message"] == "Unknown tool: tool_15",
            "{}",
            r.body
        );
    }
    // An agent nobody provisioned.
    let rogue = stack
        .token_with(&TokenRequest::new("alice", &stack.gateway_url()).client("rogue-bot"))
        .await?;
    let r = post_json(&fast, Some(&rogue), &call("tool_01"), &[]).await?;
    ensure!(r.status == 403, "{} {}", r.status, r.body);
    // Alice's allowed call, and a refusal of a reason not alerted on (no
    // token at all): neither is sent.
    let alice = stack.token("alice").await?;
    let r = post_json(&fast, Some(&alice), &call("tool_01"), &[]).await?;
    ensure!(
        r.status == 200 && r.json()?["result"].is_object(),
        "{}",
        r.body
    );
    let r = post_json(&fast, None, &call("tool_01"), &[]).await?;
    ensure!(r.status == 401, "{}", r.body);

    let groups = eventually(
        "mallory's five probes and the rogue agent delivered",
        async || {
            let groups = delivered_groups(&sink.deliveries())?;
            let probes = counted(
                &groups,
                &[
                    ("reason", "hidden_by_policy"),
                    ("user", "mallory"),
                    ("name", "tool_15"),
                ],
            );
            let rogue = counted(
                &groups,
                &[("reason", "unknown_agent"), ("agent", "rogue-bot")],
            );
            Ok(if probes == 5 && rogue == 1 {
                Ok(groups)
            } else {
                Err(format!("probes {probes}, rogue {rogue}: {groups:?}"))
            })
        },
    )
    .await?;
    let probe = groups
        .iter()
        .find(|g| g["user"] == "mallory")
        .context("mallory's group")?;
    ensure!(
        probe["gateway"] == "e2e"
            && probe["assignment"] == "fast"
            && probe["request_id"].is_string(),
        "{probe}"
    );
    ensure!(
        groups
            .iter()
            .all(|g| g["user"] != "alice" || g["agent"] == "rogue-bot"),
        "alice's allowed call is not an alert: {groups:?}"
    );
    ensure!(
        groups
            .iter()
            .all(|g| g["reason"] == "hidden_by_policy" || g["reason"] == "unknown_agent"),
        "only the configured reasons: {groups:?}"
    );

    // Every delivery is signed with the key; a wrong key does not verify.
    let deliveries = sink.deliveries();
    for d in &deliveries {
        signed_with(d, &key)?;
        ensure!(signed_with(d, "another-key").is_err());
        ensure!(!d.body.contains(&key), "the key is never in a body");
    }
    // The refused first attempt was retried under the same delivery id.
    let id = |d: &Delivery| {
        d.headers
            .get("latchkey-delivery")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    ensure!(deliveries[0].status == 503, "{:?}", deliveries[0]);
    ensure!(
        deliveries[1].status == 200 && id(&deliveries[1]) == id(&deliveries[0]),
        "the retry carries the same delivery id"
    );

    let metrics = scrape_replica(&stack, 0).await?;
    let delivered = metrics.sum("latchkey_alert_deliveries_total", &["result=\"delivered\""]);
    ensure!(delivered >= 1.0, "deliveries counted: {delivered}");
    ensure!(
        metrics.sum("latchkey_alert_deliveries_total", &["result=\"failed\""]) == 0.0,
        "none given up"
    );
    stack.assert_no_secret_in_logs()?;
    Ok(())
}
