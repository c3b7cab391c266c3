//! Agent onboarding by approval, end to end: Envoy with the Wasm filter in
//! front of two `latchkey serve` replicas sharing Redis; gateway `e2e` has
//! `unknown_agents = "request"`. An agent nobody provisioned is refused and
//! leaves one request; an operator approves it with the CLI and its next
//! call passes through both replicas, with the grants the approval gave.
//! A rejected agent stays refused and its request remembers why.

use anyhow::{Context, Result, ensure};
use latchkey_e2e::client::post_json;
use latchkey_e2e::{Stack, StackOptions, TokenRequest, eventually};
use serde_json::{Value, json};

/// People may call everything; an agent only what grants naming it allow
/// (none yet: the approval gives them).
const POLICY: &str = r#"
[policy]
[[policy.grants]]
name = "people"
gateway = "e2e"
assignments = ["fast"]
users = ["*"]
tools = { allow = ["*"] }

[[policy.grants]]
name = "the-stack-agent"
gateway = "e2e"
assignments = ["fast"]
agents = ["e2e-agent"]
tools = { allow = ["*"] }
"#;

const TOOLS_LIST: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;

fn call(tool: &str) -> String {
    json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
           "params": {"name": tool, "arguments": {}}})
    .to_string()
}

fn tool_names(reply: &Value) -> Vec<String> {
    reply["result"]["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .filter_map(|t| t["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The onboarding requests `token` may list (`--all`), by agent.
fn requests(stack: &Stack, token: &str) -> Result<Vec<Value>> {
    stack.cli(0, token, &["agent", "requests", "--all"], None)
}

fn request_of<'a>(listed: &'a [Value], agent: &str) -> Option<&'a Value> {
    listed.iter().find(|r| r["agent"] == agent)
}

fn lifecycle(stack: &Stack, action: &str, target: &str) -> Result<Vec<Value>> {
    Ok(stack
        .audit_events()?
        .into_iter()
        .filter(|e| e["event"] == "lifecycle" && e["action"] == action && e["target"] == target)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_agent_asks_once_is_approved_with_the_cli_and_its_next_call_passes_on_both_replicas()
-> Result<()> {
    let stack = Stack::start(
        "onboarding",
        StackOptions {
            replicas: 2,
            fast_mcp_page_size: Some(100),
            policy: Some(POLICY.into()),
            unknown_agents: Some("request"),
            ..Default::default()
        },
    )
    .await?;
    let aud = stack.gateway_url();
    let fast = stack.url("fast");
    let ops = stack.admin_token("ops", &["platform-admins"]).await?;
    let alice_admin = stack.admin_token("alice", &[]).await?;
    let bot_for = async |user: &str| {
        stack
            .token_with(&TokenRequest::new(user, &aud).client("new-bot"))
            .await
    };
    let (alice_bot, bob_bot) = (bot_for("alice").await?, bot_for("bob").await?);

    // Refused, saying what happens next; three calls for two people.
    for token in [&alice_bot, &alice_bot, &bob_bot] {
        let r = post_json(&fast, Some(token), TOOLS_LIST, &[]).await?;
        ensure!(r.status == 403, "{} {}", r.status, r.body);
        ensure!(
            r.body.contains("latchkey agent approve new-bot"),
            "{}",
            r.body
        );
    }
    // Calls that prove nothing create nothing: no token, a forged one.
    for token in [None, Some("not-a-token")] {
        let r = post_json(&fast, token, TOOLS_LIST, &[]).await?;
        ensure!(r.status == 401, "{} {}", r.status, r.body);
    }

    // One request, counting every refused call and both people.
    let listed = eventually("new-bot's request counts its three calls", async || {
        let listed = requests(&stack, &ops)?;
        Ok(match request_of(&listed, "new-bot") {
            Some(r) if r["count"] == 3 => Ok(listed),
            other => Err(format!("{other:?}")),
        })
    })
    .await?;
    ensure!(listed.len() == 1, "only new-bot asked: {listed:?}");
    let mut r = listed[0].clone();
    // The people in the order their sightings were written (one batch may
    // carry both): compared as a set.
    if let Some(people) = r["acted_for"].as_array_mut() {
        people.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    }
    ensure!(
        (&r["status"], &r["source"], &r["gateways"], &r["acted_for"])
            == (
                &json!("pending"),
                &json!("client_id"),
                &json!(["e2e"]),
                &json!(["alice", "bob"])
            ),
        "{r}"
    );
    ensure!(
        lifecycle(&stack, "agent.requested", "new-bot")?.len() == 1,
        "one agent.requested event"
    );

    // Listing and deciding need agents:manage.
    let refused = stack.cli_refused(0, &alice_admin, &["agent", "requests"])?;
    ensure!(refused.contains("agents:manage"), "{refused}");
    let refused = stack.cli_refused(0, &alice_admin, &["agent", "approve", "new-bot"])?;
    ensure!(refused.contains("agents:manage"), "{refused}");

    // A grant the policy cannot compile is refused before anything is written.
    let refused = stack.cli_refused(
        1,
        &ops,
        &[
            "agent",
            "approve",
            "new-bot",
            "--grant",
            "e2e/no-such-assignment",
        ],
    )?;
    ensure!(refused.contains("no-such-assignment"), "{refused}");
    let r = post_json(&fast, Some(&alice_bot), TOOLS_LIST, &[]).await?;
    ensure!(r.status == 403, "still refused: {}", r.body);

    // Approved on replica 1, with the tools it needs; the CLI returns once
    // both replicas compiled it in.
    let (approved, warnings) = stack.cli_with_stderr(
        1,
        &ops,
        &["agent", "approve", "new-bot", "--grant", "e2e/fast=tool_0*"],
        None,
    )?;
    ensure!(warnings.is_empty(), "settled everywhere: {warnings}");
    ensure!(
        approved[0]["status"] == "approved" && approved[0]["grants"] == json!(["e2e/fast=tool_0*"]),
        "{approved:?}"
    );
    let before = (
        stack.decided(0, "fast", "tools/list"),
        stack.decided(1, "fast", "tools/list"),
    );
    for _ in 0..4 {
        let r = post_json(&fast, Some(&alice_bot), TOOLS_LIST, &[]).await?;
        ensure!(r.status == 200, "{} {}", r.status, r.body);
        let names = tool_names(&r.json()?);
        ensure!(
            names.len() == 10 && names.iter().all(|n| n.starts_with("tool_0")),
            "the approval's grant: {names:?}"
        );
    }
    ensure!(
        stack.decided(0, "fast", "tools/list") > before.0
            && stack.decided(1, "fast", "tools/list") > before.1,
        "both replicas decided new-bot's calls"
    );
    let r = post_json(&fast, Some(&bob_bot), &call("tool_01"), &[]).await?;
    ensure!(r.status == 200, "{} {}", r.status, r.body);
    ensure!(r.json()?["result"].is_object(), "tool_01 ran: {}", r.body);
    let r = post_json(&fast, Some(&bob_bot), &call("tool_10"), &[]).await?;
    ensure!(
        r.json()?["error"]["message"] == "Unknown tool: tool_10",
        "outside its grant, answered as hidden: {}",
        r.body
    );
    let approve = lifecycle(&stack, "agent.approve", "new-bot")?;
    ensure!(
        approve.len() == 1 && approve[0]["actor"] == "ops",
        "{approve:?}"
    );

    // A replica started after the approval compiles it in before it is ready.
    let mut stack = stack;
    stack.restart_replica(0)?;
    for _ in 0..2 {
        let r = post_json(&fast, Some(&alice_bot), &call("tool_02"), &[]).await?;
        ensure!(r.status == 200, "after a restart: {} {}", r.status, r.body);
    }

    // Another agent, rejected: it stays refused, still counted, the
    // reason kept; deciding again is refused.
    let shady = stack
        .token_with(&TokenRequest::new("alice", &aud).client("shady-bot"))
        .await?;
    let r = post_json(&fast, Some(&shady), TOOLS_LIST, &[]).await?;
    ensure!(r.status == 403, "{}", r.body);
    eventually("shady-bot's request", async || {
        Ok(request_of(&requests(&stack, &ops)?, "shady-bot")
            .map(|_| ())
            .ok_or_else(|| "absent".to_string()))
    })
    .await?;
    let rejected = stack.cli(
        0,
        &ops,
        &[
            "agent",
            "reject",
            "shady-bot",
            "--reason",
            "not one of ours",
        ],
        None,
    )?;
    ensure!(rejected[0]["status"] == "rejected", "{rejected:?}");
    let again = stack.cli_refused(0, &ops, &["agent", "reject", "shady-bot"])?;
    ensure!(again.contains("already rejected"), "{again}");
    let r = post_json(&fast, Some(&shady), TOOLS_LIST, &[]).await?;
    ensure!(r.status == 403, "{}", r.body);
    eventually("the refused call after rejection is counted", async || {
        let listed = requests(&stack, &ops)?;
        let r = request_of(&listed, "shady-bot").context("shady-bot")?;
        Ok(if r["count"] == 2 {
            Ok(r.clone())
        } else {
            Err(r.to_string())
        })
    })
    .await
    .and_then(|r| {
        ensure!(
            r["status"] == "rejected"
                && r["reason"] == "not one of ours"
                && r["decided_by"] == "ops",
            "{r}"
        );
        Ok(())
    })?;
    ensure!(lifecycle(&stack, "agent.reject", "shady-bot")?.len() == 1);
    // The pending list (without --all) holds neither decided request.
    let pending = stack.cli(0, &ops, &["agent", "requests"], None)?;
    ensure!(pending.is_empty(), "{pending:?}");
    stack.assert_no_secret_in_logs()?;
    Ok(())
}
