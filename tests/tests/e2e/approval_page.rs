//! Approvals as people and real clients live them: the official TypeScript
//! and Python MCP SDKs as the agents whose calls are held, headless
//! Chromium as the person who approves or denies on the approval page
//! (signed in with the organisation's identity provider, as on the connect
//! page), through a real Envoy running the Wasm filter and two replicas.

use std::time::Duration;

use anyhow::{Context, Result};
use latchkey_e2e::client::{self, Call2026, assert_jsonrpc_error, post_json};
use latchkey_e2e::sdk_client::SdkClient;
use latchkey_e2e::stack::LATCHKEY_HTTP;
use latchkey_e2e::{Browser, Stack, StackOptions, TokenRequest, eventually};
use serde_json::{Value, json};

const CONFIG: &str = r#"
[connect]
public_url = "@LATCHKEY_HTTP@"
client_id = "latchkey-connect"
"#;

const POLICY: &str = r#"
[[policy.grants]]
name = "everyone"
gateway = "e2e"
assignments = ["whoami", "fast"]
users = ["*"]
tools = { allow = ["whoami", "tool_0*"] }

[[policy.approvals]]
name = "confirm-whoami"
gateway = "e2e"
assignments = ["whoami"]
tools = ["whoami"]

[[policy.approvals]]
name = "four-eyes-exports"
gateway = "e2e"
assignments = ["fast"]
tools = ["tool_06"]
approver_role = "approvers"

[[policy.approvals]]
name = "quick-expiry"
gateway = "e2e"
assignments = ["fast"]
tools = ["tool_07"]
ttl_secs = 2
"#;

async fn stack(name: &str) -> Result<Stack> {
    Stack::start(
        name,
        StackOptions {
            extra_config: Some(CONFIG.to_string()),
            policy: Some(POLICY.to_string()),
            fast_mcp_page_size: Some(100),
            replicas: 2,
            // The completion rides on the upstream's next bytes on the GET stream.
            echo_keep_alive: Some(Duration::from_millis(500)),
            envoy_workers: 2,
            ..StackOptions::default()
        },
    )
    .await
}

/// Whether `link` is the approval page (of request `id`) on one of the
/// replicas (each one's `[connect] public_url` is its own HTTP side, and
/// the replica that decided the call wrote the link).
fn is_approval_page(stack: &Stack, link: &str, id: Option<&str>) -> bool {
    stack.replicas.iter().any(|r| {
        let page = format!("{}/connect/e2e/approval?id=", r.http_url());
        link.strip_prefix(&page)
            .is_some_and(|rest| id.is_none_or(|id| rest == id) && rest.len() == 32)
    })
}

/// Opens `link` in `who`'s own cookie jar and signs in there.
fn open_as(who: &str, link: &str) -> Vec<Value> {
    vec![
        json!({"context": who}),
        json!({"goto": link}),
        json!({"fill": "#username", "value": who}),
        json!({"click": "#sign-in"}),
    ]
}

/// A 2025-11-25 client (TypeScript SDK) is answered -32042 with the
/// approval page's link; the person approves there; the client hears that
/// on its session's GET stream and its retry goes through, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_client_waits_for_the_persons_confirmation_and_hears_when_it_is_given()
-> Result<()> {
    assert!(CONFIG.contains(LATCHKEY_HTTP));
    let stack = stack("approval_page_typescript").await?;
    let alice = stack.token("alice").await?;
    let mut client = SdkClient::typescript_url_elicitation(
        &stack.url("whoami"),
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
    assert!(
        is_approval_page(&stack, &link, Some(&id)),
        "the link names the request: {link}"
    );

    let mut steps = open_as("alice", &link);
    steps.extend([
        json!({"expect_text": "Approve a call to whoami?"}),
        json!({"read_text": "#tool"}),
        json!({"read_text": "#user"}),
        json!({"read_text": "#rule"}),
        json!({"screenshot": "approval-page"}),
        json!({"click": "#approve"}),
        json!({"expect_text": "Approved"}),
        json!({"screenshot": "approved"}),
    ]);
    let done = Browser::new("approval_page_typescript")?
        .run(json!({ "steps": steps }))
        .await?;
    let texts: Vec<&str> = done.iter().filter_map(|s| s.text.as_deref()).collect();
    assert_eq!(
        texts,
        ["whoami", "alice", "confirm-whoami"],
        "the page shows the call"
    );

    let completed = client.expect("completed", Duration::from_secs(30)).await?;
    assert_eq!(completed["id"], id.as_str());
    let result = client.expect("result", Duration::from_secs(20)).await?;
    assert_eq!(
        result["text"],
        format!("Bearer {}", stack.whoami_secret),
        "the retry went upstream with the assignment's credential"
    );
    client.finish().await?;
    // The SDK's own requests (its GET stream, reopened at will) reach the
    // upstream too, so the calls are counted by their decisions: one held,
    // one let through on the approval.
    eventually("the two calls' decisions", async || {
        let events = stack.audit_events()?;
        let calls: Vec<&Value> = events
            .iter()
            .filter(|e| e["event"] == "decision" && e["name"] == "whoami")
            .collect();
        let held = calls
            .iter()
            .filter(|e| e["reason"] == "approval_needed")
            .count();
        let passed: Vec<&&Value> = calls.iter().filter(|e| e["decision"] == "allow").collect();
        Ok(match (held, passed.as_slice()) {
            (1, [one]) if one["approval"] == json!(id) => Ok(()),
            other => Err(format!("(held, allowed): {other:?}")),
        })
    })
    .await?;
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

/// Four eyes through the page: the Python SDK's call is held; the caller,
/// though she holds the approver role, is shown that someone else must
/// approve; bob approves; the retry passes and a third call is held anew.
/// A denial on the page reaches a raw client as a failed tool result with
/// the reason; an expired request is recorded as such and the call asks anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_eyes_on_the_page_the_python_client_passes_once_and_a_denial_or_expiry_is_told()
-> Result<()> {
    let stack = stack("approval_page_four_eyes").await?;
    for who in ["alice", "bob"] {
        stack
            .idp
            .set_user_claims(who, json!({"groups": ["approvers"]}))
            .await?;
    }
    let alice = stack
        .token_with(&TokenRequest::new("alice", &stack.gateway_url()))
        .await?;
    let go = stack.dir.join("approval-decided");
    let arguments = json!({"account": "ACME-7", "format": "csv"});
    let mut client =
        SdkClient::python_approval(&stack.url("fast"), &alice, "tool_06", &arguments, &go)?;
    client.expect("connected", Duration::from_secs(30)).await?;
    let held = client.expect("held", Duration::from_secs(20)).await?;
    let link = held["url"]
        .as_str()
        .context("the held call's link")?
        .to_string();
    assert!(is_approval_page(&stack, &link, None), "{held}");

    let mut steps = open_as("alice", &link);
    steps.extend([
        json!({"expect_text": "four eyes"}),
        json!({"screenshot": "caller-cannot-approve"}),
    ]);
    steps.extend(open_as("bob", &link));
    steps.extend([
        json!({"expect_text": "Approve a call to tool_06?"}),
        json!({"read_text": "#arguments"}),
        json!({"fill": "#reason", "value": "quarterly export"}),
        json!({"screenshot": "approver-sees-the-call"}),
        json!({"click": "#approve"}),
        json!({"expect_text": "Approved"}),
    ]);
    let done = Browser::new("approval_page_four_eyes")?
        .run(json!({ "steps": steps }))
        .await?;
    let shown: Value = done
        .iter()
        .find_map(|s| s.text.as_deref())
        .context("the arguments were read")
        .and_then(|t| serde_json::from_str(t).context("the page shows the arguments as JSON"))?;
    assert_eq!(shown, arguments, "the approver saw the arguments in full");
    std::fs::write(&go, "")?;
    let result = client.expect("result", Duration::from_secs(20)).await?;
    assert_eq!(result["text"], "ok tool_06", "{result}");
    assert_eq!(result["is_error"], false);
    let again = client.expect("held_again", Duration::from_secs(20)).await?;
    assert_ne!(
        again["url"], held["url"],
        "a second call needs a new approval"
    );
    client.finish().await?;
    // The SDK's own requests (initialize, its GET stream) reach the
    // upstream too, so calls are counted by their decisions: of the three
    // identical calls, exactly one was let through.
    eventually("the three calls' decisions", async || {
        let events = stack.audit_events()?;
        let calls = |decision: &str| {
            events
                .iter()
                .filter(|e| {
                    e["event"] == "decision" && e["name"] == "tool_06" && e["decision"] == decision
                })
                .count()
        };
        Ok(match (calls("allow"), calls("deny")) {
            (1, 2) => Ok(()),
            other => Err(format!("(allowed, held): {other:?}")),
        })
    })
    .await?;
    let upstream = || stack.envoy.upstream_requests("fast");
    let before = upstream()?;

    // A denial, given on the page, reaches a raw client with the reason.
    let call = r#"{"jsonrpc":"2.0","id":"d-1","method":"tools/call","params":{"name":"tool_06","arguments":{"account":"GLOBEX"}}}"#;
    let r = post_json(&stack.url("fast"), Some(&alice), call, &[]).await?;
    let e = assert_jsonrpc_error(&r.body, &json!("d-1"), -32003);
    let message = e["error"]["message"].as_str().unwrap_or_default();
    let link = message
        .split_whitespace()
        .find(|w| w.starts_with("http"))
        .context("the link is in the message")?
        .to_string();
    let mut steps = open_as("bob", &link);
    steps.extend([
        json!({"fill": "#reason", "value": "not for this customer"}),
        json!({"click": "#deny"}),
        json!({"expect_text": "Denied"}),
    ]);
    Browser::new("approval_page_deny")?
        .run(json!({ "steps": steps }))
        .await?;
    let r = post_json(&stack.url("fast"), Some(&alice), call, &[]).await?;
    let v = r.json()?;
    assert_eq!(v["result"]["isError"], json!(true), "{v}");
    assert!(v.to_string().contains("not for this customer"), "{v}");
    assert_eq!(upstream()?, before, "the denied call reached no upstream");

    // 2026-07-28: an InputRequiredResult naming the page, with a
    // requestState; once bob approves (here with the CLI), the retry that
    // carries the state goes through.
    let url_mode = json!({"elicitation": {"url": {}}});
    let arguments = json!({"account": "INITECH"});
    let url_2026 = stack.url("fast");
    let ask = |id: Value| Call2026 {
        url: &url_2026,
        token: &alice,
        id,
        tool: "tool_06",
        arguments: arguments.clone(),
        capabilities: url_mode.clone(),
        retry: None,
    };
    let r = client::call_2026(ask(json!(26))).await?;
    let v = r.json()?;
    assert_eq!(v["result"]["resultType"], "input_required", "{v}");
    let request = &v["result"]["inputRequests"]["approve-tool_06"];
    assert_eq!(request["params"]["mode"], "url", "{v}");
    let link = request["params"]["url"].as_str().context("a link")?;
    assert!(is_approval_page(&stack, link, None), "{link}");
    let id = link.rsplit('=').next().unwrap_or_default().to_string();
    let state = v["result"]["requestState"]
        .as_str()
        .context("a requestState")?
        .to_string();
    assert_eq!(upstream()?, before, "held");
    let bob_admin = stack.admin_token("bob", &["approvers"]).await?;
    stack.cli(1, &bob_admin, &["approval", "approve", &id], None)?;
    let r = client::call_2026(Call2026 {
        retry: Some((&state, "approve-tool_06")),
        ..ask(json!(27))
    })
    .await?;
    assert!(r.body.contains("ok tool_06"), "{}", r.body);
    assert_eq!(
        upstream()?,
        before + 1,
        "the retry with the state went through"
    );
    let before = upstream()?;

    // Expiry: a request nobody decided in time is gone, recorded as
    // expired when the person asks again, and the call asks anew.
    let call = r#"{"jsonrpc":"2.0","id":"x-1","method":"tools/call","params":{"name":"tool_07","arguments":{}}}"#;
    let r = post_json(&stack.url("fast"), Some(&alice), call, &[]).await?;
    let first =
        assert_jsonrpc_error(&r.body, &json!("x-1"), -32003)["error"]["message"].to_string();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = post_json(&stack.url("fast"), Some(&alice), call, &[]).await?;
    let second =
        assert_jsonrpc_error(&r.body, &json!("x-1"), -32003)["error"]["message"].to_string();
    assert_ne!(first, second, "an expired request is not reused");
    eventually("the expiry in the audit trail", async || {
        let events = stack.audit_events()?;
        let expired = events.iter().any(|e| {
            e["action"] == "approval.expired" && first.contains(e["target"].as_str().unwrap_or("-"))
        });
        Ok(expired.then_some(()).ok_or("not yet".to_string()))
    })
    .await?;
    assert_eq!(upstream()?, before, "nothing held reached the upstream");
    stack.assert_no_secret_in_logs()?;
    Ok(())
}
