//! Tool calls held for a person's approval, through a real Envoy running
//! the Wasm filter, decided with the `latchkey approval` CLI over the admin
//! API. An approval is for one exact call, once: the same call passes once
//! after it, a changed argument or a second identical call needs a new one.
//! A confirmation is the caller's own; under four eyes the caller cannot
//! approve, an approver with the role can. Every refused call is paired
//! with the upstream's request count read the same way as a passing one.

use anyhow::{Context, Result, bail};
use latchkey_e2e::client::{assert_jsonrpc_error, post_json};
use latchkey_e2e::scrape::scrape_replica;
use latchkey_e2e::{Stack, StackOptions, TokenRequest, eventually};
use serde_json::{Value, json};

const POLICY: &str = r#"
[[policy.grants]]
name = "everyone"
gateway = "e2e"
assignments = ["fast"]
users = ["*"]
tools = { allow = ["tool_0*"] }

[[policy.approvals]]
name = "confirm-big-transfers"
gateway = "e2e"
assignments = ["fast"]
tools = ["tool_05", "secret_tool"]
condition = "arguments.amount > 100"

[[policy.approvals]]
name = "four-eyes-exports"
gateway = "e2e"
assignments = ["fast"]
tools = ["tool_06"]
approver_role = "approvers"
sensitive_arguments = true
"#;

fn call(id: &str, tool: &str, arguments: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": arguments}})
    .to_string()
}

/// The approval request a held call's answer names.
fn held_request(body: &str, id: &str) -> Result<String> {
    let e = assert_jsonrpc_error(body, &json!(id), -32003);
    let message = e["error"]["message"].as_str().unwrap_or_default();
    let tail = message
        .split("latchkey approval approve ")
        .nth(1)
        .with_context(|| format!("the answer says how to approve: {message}"))?;
    Ok(tail.split('`').next().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_call_passes_once_on_its_own_approval_and_any_change_needs_another() -> Result<()> {
    let stack = Stack::start(
        "approvals",
        StackOptions {
            fast_mcp_page_size: Some(100),
            policy: Some(POLICY.to_string()),
            // Requests recorded by one replica are decided through the
            // other and used through either (Envoy spreads the Checks).
            replicas: 2,
            ..Default::default()
        },
    )
    .await?;
    let url = stack.url("fast");
    let upstream = || stack.envoy.upstream_requests("fast");
    let alice = stack
        .token_with(&TokenRequest::new("alice", &stack.gateway_url()))
        .await?;
    let alice_admin = stack.admin_token("alice", &[]).await?;
    let bob_admin = stack.admin_token("bob", &["approvers"]).await?;

    // An attacker's calls record nothing: without a token, with a token
    // for another audience, or naming a tool the policy hides (the rule
    // covers only calls the grants already allow).
    let other_audience = stack
        .token_with(&TokenRequest::new("alice", "https://elsewhere.example/mcp"))
        .await?;
    for (label, token, status) in [
        ("no token", None, 401),
        ("another audience", Some(other_audience.as_str()), 401),
    ] {
        let r = post_json(
            &url,
            token,
            &call("x-1", "tool_05", json!({"amount": 500})),
            &[],
        )
        .await?;
        assert_eq!(r.status, status, "{label}: {}", r.body);
    }
    let r = post_json(
        &url,
        Some(&alice),
        &call("x-2", "secret_tool", json!({"amount": 500})),
        &[],
    )
    .await?;
    assert!(
        !r.body.contains("needs approval"),
        "a hidden tool is not held: {}",
        r.body
    );
    let listed = stack.cli(0, &alice_admin, &["approval", "list", "--all"], None)?;
    assert!(listed.is_empty(), "no request was recorded: {listed:?}");
    assert_eq!(
        stack
            .audit_events()?
            .iter()
            .filter(|e| e["target_kind"] == "approval")
            .count(),
        0,
        "no approval event either"
    );

    // Under the rule's condition, nothing is held.
    let before = upstream()?;
    let r = post_json(
        &url,
        Some(&alice),
        &call("a-0", "tool_05", json!({"amount": 50})),
        &[],
    )
    .await?;
    assert!(r.body.contains("ok tool_05"), "{}", r.body);
    assert_eq!(upstream()?, before + 1);

    // Over it, the call is held: answered with the request's id, nothing upstream.
    let big = call("a-1", "tool_05", json!({"amount": 500, "to": "bob"}));
    let r = post_json(&url, Some(&alice), &big, &[]).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let first = held_request(&r.body, "a-1")?;
    assert_eq!(upstream()?, before + 1, "a held call reaches no upstream");
    // The same call while it waits names the same request.
    let r = post_json(&url, Some(&alice), &big, &[]).await?;
    assert_eq!(held_request(&r.body, "a-1")?, first);

    let listed = stack.cli(0, &alice_admin, &["approval", "list"], None)?;
    let mine = listed
        .iter()
        .find(|a| a["id"] == json!(first))
        .with_context(|| format!("alice sees her request: {listed:?}"))?;
    assert_eq!(mine["status"], "pending");
    assert_eq!(mine["tool"], "tool_05");
    assert_eq!(mine["arguments"], json!({"amount": 500, "to": "bob"}));
    assert_eq!(mine["rule"], "confirm-big-transfers");
    // A confirmation is the person's own: to bob, an approver of other
    // rules, it is as if it did not exist.
    let refused = stack.cli_refused(0, &bob_admin, &["approval", "approve", &first])?;
    assert!(refused.contains("no approval request"), "{refused}");
    let approved = stack.cli(0, &alice_admin, &["approval", "approve", &first], None)?;
    assert_eq!(approved[0]["status"], "approved");

    // A changed argument is another call: held, with a request of its own.
    let changed = call("a-2", "tool_05", json!({"amount": 501, "to": "bob"}));
    let r = post_json(&url, Some(&alice), &changed, &[]).await?;
    assert_ne!(held_request(&r.body, "a-2")?, first);
    assert_eq!(upstream()?, before + 1);
    // The approved call passes, on either replica's answer, once; members
    // in another order are the same call.
    let same = r#"{"jsonrpc":"2.0","id":"a-3","method":"tools/call","params":{"name":"tool_05","arguments":{"to":"bob","amount":500}}}"#;
    let r = post_json(&url, Some(&alice), same, &[]).await?;
    assert!(r.body.contains("ok tool_05"), "{}", r.body);
    assert_eq!(upstream()?, before + 2, "the approved call went upstream");
    let r = post_json(&url, Some(&alice), &big, &[]).await?;
    let again = held_request(&r.body, "a-1")?;
    assert_ne!(again, first, "a second identical call needs a new approval");
    assert_eq!(upstream()?, before + 2);
    let shown = stack.cli(0, &alice_admin, &["approval", "show", &first], None)?;
    assert_eq!(shown[0]["status"], "used");
    let refused = stack.cli_refused(0, &alice_admin, &["approval", "approve", &first])?;
    assert!(refused.contains("already used"), "{refused}");

    // Four eyes: the caller cannot approve their own call, even holding the
    // role; someone without the capability cannot either; bob can.
    let export = call("e-1", "tool_06", json!({"account": "ACCT-778-SENSITIVE"}));
    let r = post_json(&url, Some(&alice), &export, &[]).await?;
    let request = held_request(&r.body, "e-1")?;
    let alice_approver = stack.admin_token("alice", &["approvers"]).await?;
    let refused = stack.cli_refused(0, &alice_approver, &["approval", "approve", &request])?;
    assert!(refused.contains("four eyes"), "{refused}");
    let carol_admin = stack.admin_token("carol", &[]).await?;
    let refused = stack.cli_refused(0, &carol_admin, &["approval", "approve", &request])?;
    assert!(refused.contains("no approval request"), "{refused}");
    let waiting = stack.cli(0, &bob_admin, &["approval", "list"], None)?;
    assert!(
        waiting.iter().any(|a| a["id"] == json!(request)),
        "{waiting:?}"
    );
    assert!(
        !waiting.iter().any(|a| a["id"] == json!(again)),
        "bob does not see alice's confirmation: {waiting:?}"
    );
    stack.cli(1, &bob_admin, &["approval", "approve", &request], None)?;
    let r = post_json(&url, Some(&alice), &export, &[]).await?;
    assert!(r.body.contains("ok tool_06"), "{}", r.body);
    assert_eq!(upstream()?, before + 3);

    // Denied: the call is answered with a failed tool result and the reason.
    let other = call("e-2", "tool_06", json!({"account": "ACCT-779-SENSITIVE"}));
    let r = post_json(&url, Some(&alice), &other, &[]).await?;
    let denied = held_request(&r.body, "e-2")?;
    stack.cli(
        0,
        &bob_admin,
        &["approval", "deny", &denied, "--reason", "not this quarter"],
        None,
    )?;
    let r = post_json(&url, Some(&alice), &other, &[]).await?;
    let v: Value = r.json()?;
    assert_eq!(v["id"], "e-2");
    assert_eq!(v["result"]["isError"], json!(true), "{v}");
    assert!(v.to_string().contains("not this quarter"), "{v}");
    assert!(v.to_string().contains("denied by bob"), "{v}");
    assert_eq!(upstream()?, before + 3, "a denied call reaches no upstream");

    // The audit trail: each step as a lifecycle event, the passing call's
    // decision naming its approval, sensitive arguments never written.
    let events = eventually("the approvals' events in the audit stream", async || {
        let events = stack.audit_events()?;
        let named = events
            .iter()
            .any(|e| e["event"] == "decision" && e["approval"] == json!(first));
        Ok(if named {
            Ok(events)
        } else {
            Err("no decision names the approval yet".to_string())
        })
    })
    .await?;
    let actions: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["target_kind"] == "approval")
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default(),
                e["target"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    for step in [
        ("approval.requested", first.as_str()),
        ("approval.approved", first.as_str()),
        ("approval.used", first.as_str()),
        ("approval.requested", request.as_str()),
        ("approval.approved", request.as_str()),
        ("approval.used", request.as_str()),
        ("approval.denied", denied.as_str()),
    ] {
        assert!(actions.contains(&step), "{step:?} in {actions:?}");
    }
    let all = events.iter().map(Value::to_string).collect::<String>();
    assert!(
        all.contains("\"amount\":500"),
        "arguments of an ordinary rule are audited"
    );
    if all.contains("ACCT-77") {
        bail!("a sensitive argument reached the audit stream");
    }

    // Metrics: each replica counts what it did; together, every step.
    let mut scrapes = Vec::new();
    for n in 0..stack.replicas.len() {
        scrapes.push(scrape_replica(&stack, n).await?);
    }
    let total = |rule: &str, outcome: &str| -> f64 {
        let labels = [format!("rule=\"{rule}\""), format!("outcome=\"{outcome}\"")];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        scrapes
            .iter()
            .map(|s| s.sum("latchkey_approvals_total", &labels))
            .sum()
    };
    for (rule, outcome, want) in [
        ("confirm-big-transfers", "requested", 3.0),
        ("confirm-big-transfers", "approved", 1.0),
        ("confirm-big-transfers", "used", 1.0),
        ("four-eyes-exports", "requested", 2.0),
        ("four-eyes-exports", "approved", 1.0),
        ("four-eyes-exports", "denied", 1.0),
        ("four-eyes-exports", "used", 1.0),
    ] {
        assert_eq!(total(rule, outcome), want, "{rule} {outcome}");
    }
    assert_eq!(
        scrapes[0].value("latchkey_approvals_pending"),
        Some(2.0),
        "the changed call's and the second call's requests still wait"
    );
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

/// A rule may select tools by the annotations a trusted server gives them:
/// fast-mcp's destructive tools are held, its read-only ones pass, without
/// the rule naming any tool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_servers_destructive_tools_are_held_and_its_read_only_ones_pass() -> Result<()> {
    let policy = r#"
[[policy.grants]]
name = "everyone"
gateway = "e2e"
assignments = ["fast"]
users = ["*"]
tools = { allow = ["*"] }

[[policy.approvals]]
name = "destructive"
gateway = "e2e"
assignments = ["fast"]
tools = ["*"]
annotations = { destructiveHint = true }
"#;
    let stack = Stack::start(
        "approvals_annotations",
        StackOptions {
            fast_mcp_page_size: Some(8),
            policy: Some(policy.to_string()),
            ..Default::default()
        },
    )
    .await?;
    let url = stack.url("fast");
    let upstream = || stack.envoy.upstream_requests("fast");
    let alice = stack
        .token_with(&TokenRequest::new("alice", &stack.gateway_url()))
        .await?;
    // The first call reads the tools' annotations upstream (three pages
    // of eight, after initialize): counted before the calls are compared.
    let r = post_json(&url, Some(&alice), &call("n-0", "tool_03", json!({})), &[]).await?;
    assert!(r.body.contains("ok tool_03"), "{}", r.body);
    let before = upstream()?;
    let r = post_json(&url, Some(&alice), &call("n-1", "tool_15", json!({})), &[]).await?;
    let held = held_request(&r.body, "n-1")?;
    assert!(!held.is_empty());
    assert_eq!(upstream()?, before, "the destructive call was held");
    let r = post_json(&url, Some(&alice), &call("n-2", "tool_04", json!({})), &[]).await?;
    assert!(r.body.contains("ok tool_04"), "{}", r.body);
    assert_eq!(upstream()?, before + 1, "the read-only call went through");
    let alice_admin = stack.admin_token("alice", &[]).await?;
    let shown = stack.cli(0, &alice_admin, &["approval", "show", &held], None)?;
    assert_eq!(shown[0]["rule"], "destructive");
    assert_eq!(shown[0]["tool"], "tool_15");
    stack.assert_no_secret_in_logs()?;
    Ok(())
}
