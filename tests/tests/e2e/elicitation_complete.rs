//! `notifications/elicitation/complete`, end to end: a real MCP client (the
//! official TypeScript SDK, declaring URL-mode elicitation) through a real
//! Envoy running the Wasm filter, on a combined endpoint whose session runs
//! on a shared credential while the tool needs the caller's own. The call
//! is answered -32042; the person opens the link in Chromium, signs in and
//! picks the identity she already has; the client then hears that she is
//! done on its session's GET stream (the only stream a gateway can reach it
//! by) and its retry goes out with her own credential.

use std::time::Duration;

use anyhow::{Context, Result};
use latchkey_e2e::sdk_client::SdkClient;
use latchkey_e2e::stack::LATCHKEY_HTTP;
use latchkey_e2e::{Browser, Stack, StackOptions, eventually};
use serde_json::json;

/// `whoami` (shared, the service account) and `whoami-mine` (per user) are
/// the same `auth-echo` server; published together at `whoami-all`.
const CONFIG: &str = r#"
[[gateways.combined]]
name = "whoami-all"
assignments = ["whoami", "whoami-mine"]

[connect]
public_url = "@LATCHKEY_HTTP@"
client_id = "latchkey-connect"
consent_ttl_secs = 600
"#;

/// The shared assignment carries the session and shows no tool; the
/// per-user one shows `whoami`.
const POLICY: &str = r#"
[[policy.grants]]
name = "session"
gateway = "e2e"
assignments = ["whoami"]
users = ["*"]
tools = { allow = ["no-such-tool"] }

[[policy.grants]]
name = "own"
gateway = "e2e"
assignments = ["whoami-mine"]
users = ["*"]
tools = { allow = ["whoami"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_hears_that_the_person_is_done_and_its_retry_goes_through() -> Result<()> {
    assert!(CONFIG.contains(LATCHKEY_HTTP));
    let stack = Stack::start(
        "elicitation_complete",
        StackOptions {
            extra_config: Some(CONFIG.to_string()),
            policy: Some(POLICY.to_string()),
            // The notification rides on the upstream's next bytes on the stream.
            echo_keep_alive: Some(Duration::from_millis(500)),
            // The GET stream and the call may land on different workers'
            // VMs: what one remembers, the other must see.
            envoy_workers: 4,
            ..StackOptions::default()
        },
    )
    .await?;
    let alice = stack.token("alice").await?;

    // Alice already has an identity of her own for the server (not yet on
    // her connection).
    let pat = stack
        .create_own_identity("alice", "whoami", "whoami-alice")
        .await?;

    let mut client = SdkClient::typescript_url_elicitation(
        &stack.url("whoami-all"),
        &alice,
        "whoami",
        Duration::from_secs(30),
    )?;
    let connected = client.expect("connected", Duration::from_secs(20)).await?;
    assert_eq!(connected["protocol_version"], "2025-11-25");

    let asked = client
        .expect("elicitation", Duration::from_secs(20))
        .await?;
    let id = asked["id"]
        .as_str()
        .context("an elicitationId")?
        .to_string();
    let link = asked["url"].as_str().context("a url")?.to_string();
    let page = format!("{}/connect/e2e?request=", stack.replicas[0].http_url());
    assert_eq!(
        link,
        format!("{page}{id}"),
        "the link names the elicitation"
    );

    let browser = Browser::new("elicitation_complete")?;
    browser
        .run(json!({"steps": [
            {"goto": link},
            {"fill": "#username", "value": "alice"},
            {"click": "#sign-in"},
            {"expect_text": "Your client needs an identity for whoami"},
            {"select": "#identity-whoami", "value": "whoami-alice"},
            {"click": "#use-whoami"},
            {"expect_text": "You're connected"},
            {"screenshot": "connected"},
        ]}))
        .await?;

    let done = client.expect("completed", Duration::from_secs(30)).await?;
    assert_eq!(done["id"], id.as_str());
    let result = client.expect("result", Duration::from_secs(20)).await?;
    assert_eq!(
        result["text"],
        format!("Bearer {pat}"),
        "the retry went out with alice's own credential"
    );
    client.finish().await?;

    // The audit trail has the consent answer and the retry allowed with
    // her identity.
    eventually(
        "the consent answer and the allowed retry in the audit trail",
        async || {
            let events = stack.audit_events()?;
            let decided = |decision: &str, check: &dyn Fn(&serde_json::Value) -> bool| {
                events
                    .iter()
                    .any(|e| e["event"] == "decision" && e["decision"] == decision && check(e))
            };
            let asked = decided("deny", &|e| e["reason"] == "consent_needed");
            let retried = decided("allow", &|e| e["identity"] == "whoami-alice");
            Ok((asked && retried)
                .then_some(())
                .ok_or_else(|| format!("consent answer: {asked}, allowed retry: {retried}")))
        },
    )
    .await?;
    stack.assert_no_secret_in_logs()?;
    Ok(())
}
