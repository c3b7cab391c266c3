//! Agents as principals, through a real Envoy and a real `latchkey serve`:
//! an agent recognised by its mTLS client certificate (a SPIFFE ID) acting
//! for a user gets the intersection of both grants and is attributed to
//! both; unknown and disabled agents are refused; a token's nested `act`
//! claims reach the audit trail as the delegation chain, and a bot acting
//! for a person uses that person's own credential; an agent acting
//! for nobody may use only shared assignments its own grants allow.

use anyhow::{Context, Result};
use latchkey_e2e::McpClient;
use latchkey_e2e::client::{INITIALIZE, post_json, post_json_with};
use latchkey_e2e::{Stack, StackOptions, TokenRequest, eventually};
use serde_json::{Value, json};

const BOT_SPIFFE: &str = "spiffe://corp.test/ns/agents/sa/ci-bot";

const POLICY: &str = r#"
[[agents]]
name = "ci-bot"
spiffe_ids = ["spiffe://corp.test/ns/agents/sa/ci-bot"]
client_ids = ["ci-bot-client"]

[policy.roles]
engineers = ["eng"]

[[policy.grants]]
name = "everyone"
gateway = "e2e"
assignments = ["fast", "whoami-mine"]
users = ["*"]
tools = { allow = ["tool_0*", "whoami"] }

[[policy.grants]]
name = "engineers"
gateway = "e2e"
assignments = ["fast"]
roles = ["engineers"]
tools = { allow = ["tool_*"] }

[[policy.grants]]
name = "ci-bot"
gateway = "e2e"
assignments = ["fast", "whoami-mine"]
agents = ["ci-bot"]
tools = { allow = ["tool_00", "tool_1*", "whoami"] }
"#;

const TOOLS_LIST: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;

fn tool_names(reply: &Value) -> Result<Vec<String>> {
    Ok(reply["result"]["tools"]
        .as_array()
        .with_context(|| format!("no tools in {reply}"))?
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect())
}

/// The decision event for the request whose `x-request-id` is `id`.
async fn decision_for(stack: &Stack, id: &str) -> Result<Value> {
    eventually(&format!("the decision event of request {id}"), async || {
        Ok(stack
            .audit_events()?
            .into_iter()
            .find(|e| e["event"] == "decision" && e["request_id"] == id)
            .ok_or_else(|| "absent".to_string()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mtls_agent_gets_the_intersection_and_is_attributed_to_both() -> Result<()> {
    let stack = Stack::start(
        "agents_mtls",
        StackOptions {
            mtls: true,
            fast_mcp_page_size: Some(100),
            policy: Some(POLICY.to_string()),
            ..Default::default()
        },
    )
    .await?;
    let pki = stack.pki.as_ref().context("mTLS stack")?;
    let bot = pki.http_client(Some(&pki.client(BOT_SPIFFE)?))?;
    let url = stack.url("fast");
    let alice = stack.token("alice").await?;
    let erin = stack
        .token_with(
            &TokenRequest::new("erin", &stack.gateway_url()).claim("groups", json!(["eng"])),
        )
        .await?;

    // The bot for alice: alice's tool_0* ∩ the bot's {tool_00, tool_1*}.
    let r = post_json_with(
        &bot,
        &url,
        Some(&alice),
        TOOLS_LIST,
        &[("x-request-id", "bot-for-alice")],
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(tool_names(&r.json()?)?, ["tool_00"]);
    // The bot for erin, who may use every tool: still only the bot's share.
    let r = post_json_with(&bot, &url, Some(&erin), TOOLS_LIST, &[]).await?;
    let mut want = vec!["tool_00".to_string()];
    want.extend((10..20).map(|i| format!("tool_{i}")));
    assert_eq!(tool_names(&r.json()?)?, want);
    // A call outside the intersection is refused like an unknown tool.
    let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                      "params": {"name": "tool_05", "arguments": {}}});
    let r = post_json_with(&bot, &url, Some(&alice), &call.to_string(), &[]).await?;
    assert_eq!(
        r.json()?["error"]["message"],
        "Unknown tool: tool_05",
        "{}",
        r.body
    );

    // Attributed to both: the person and the agent, and how it was known.
    let e = decision_for(&stack, "bot-for-alice").await?;
    assert_eq!(
        (&e["user"], &e["agent"], &e["agent_source"], &e["decision"]),
        (
            &json!("alice"),
            &json!("ci-bot"),
            &json!("mtls"),
            &json!("allow")
        )
    );

    // A workload with a certificate from the CA but no agent provisioned
    // for its SPIFFE ID is refused, and told why.
    let stranger = pki.http_client(Some(
        &pki.client("spiffe://corp.test/ns/agents/sa/stranger")?,
    ))?;
    let r = post_json_with(
        &stranger,
        &url,
        Some(&alice),
        INITIALIZE,
        &[("x-request-id", "stranger")],
    )
    .await?;
    assert_eq!(r.status, 403, "{}", r.body);
    let v = r.json()?;
    assert_eq!(v["id"], 1);
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("spiffe://corp.test/ns/agents/sa/stranger")
            && message.contains("[[agents]]"),
        "{message}"
    );
    let e = decision_for(&stack, "stranger").await?;
    assert_eq!(
        (&e["reason"], &e["status"]),
        (&json!("unknown_agent"), &json!(403))
    );
    // No certificate, or one from another CA: the TLS handshake fails.
    let anonymous = pki.http_client(None)?;
    assert!(
        post_json_with(&anonymous, &url, Some(&alice), INITIALIZE, &[])
            .await
            .is_err()
    );
    let rogue = pki.http_client(Some(&pki.untrusted_client(BOT_SPIFFE)?))?;
    assert!(
        post_json_with(&rogue, &url, Some(&alice), INITIALIZE, &[])
            .await
            .is_err()
    );

    // Disabled by an operator: refused on the next request.
    let ops = stack.admin_token("ops", &["platform-admins"]).await?;
    stack.cli(0, &ops, &["agent", "disable", "ci-bot"], None)?;
    let r = post_json_with(&bot, &url, Some(&alice), INITIALIZE, &[]).await?;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("agent 'ci-bot' is disabled"), "{}", r.body);
    stack.cli(0, &ops, &["agent", "enable", "ci-bot"], None)?;
    let r = post_json_with(&bot, &url, Some(&alice), INITIALIZE, &[]).await?;
    assert_eq!(r.status, 200, "{}", r.body);

    stack.assert_no_secret_in_logs()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegation_chains_unknown_clients_and_agents_acting_for_nobody() -> Result<()> {
    let stack = Stack::start(
        "agents_tokens",
        StackOptions {
            fast_mcp_page_size: Some(100),
            policy: Some(POLICY.to_string()),
            ..Default::default()
        },
    )
    .await?;
    let aud = stack.gateway_url();
    let fast = stack.url("fast");

    // A token exchanged twice: the bot acts for alice, through a planner
    // that a chat front end called. The chain is in the audit event.
    let chained = stack
        .token_with(
            &TokenRequest::new("alice", &aud)
                .client("ci-bot-client")
                .claim(
                    "act",
                    json!({"sub": "ci-bot-client",
                           "act": {"sub": "planner", "act": {"sub": "chat-ui"}}}),
                ),
        )
        .await?;
    let r = post_json(
        &fast,
        Some(&chained),
        TOOLS_LIST,
        &[("x-request-id", "chained")],
    )
    .await?;
    assert_eq!(tool_names(&r.json()?)?, ["tool_00"], "{}", r.body);
    let e = decision_for(&stack, "chained").await?;
    assert_eq!(e["user"], "alice");
    assert_eq!(e["agent"], "ci-bot");
    assert_eq!(e["agent_source"], "client_id");
    assert_eq!(
        e["delegation"],
        json!(["ci-bot-client", "planner", "chat-ui"])
    );

    // The same token on a per-user assignment: the upstream gets alice's
    // own credential (the bot acts as her), and the call is attributed to both.
    let secret = stack
        .connect_own_identity("alice", "whoami", "alice-whoami")
        .await?;
    let client = McpClient::connect(&stack.url("whoami-mine"), &chained).await?;
    let result = client.call_tool("whoami", json!({})).await?;
    assert_eq!(McpClient::text(&result), format!("Bearer {secret}"));
    client.close().await?;
    let last = stack
        .audit_events()?
        .into_iter()
        .rev()
        .find(|e| e["event"] == "decision" && e["name"] == "whoami")
        .context("the whoami call's decision")?;
    assert_eq!(
        (
            &last["user"],
            &last["agent"],
            &last["identity"],
            &last["scheme"]
        ),
        (
            &json!("alice"),
            &json!("ci-bot"),
            &json!("alice-whoami"),
            &json!("per_user")
        )
    );

    // A client nobody provisioned: refused, named in the message.
    let unknown = stack
        .token_with(&TokenRequest::new("alice", &aud).client("shadow-agent"))
        .await?;
    let r = post_json(&fast, Some(&unknown), INITIALIZE, &[]).await?;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body.contains("agent 'shadow-agent'") && r.body.contains("not provisioned"),
        "{}",
        r.body
    );

    // The bot on its own (client credentials: the subject is the bot):
    // its own grants only on a shared assignment...
    let headless = stack
        .token_with(&TokenRequest::new("ci-bot-client", &aud).client("ci-bot-client"))
        .await?;
    let r = post_json(
        &fast,
        Some(&headless),
        TOOLS_LIST,
        &[("x-request-id", "headless")],
    )
    .await?;
    let mut want = vec!["tool_00".to_string()];
    want.extend((10..20).map(|i| format!("tool_{i}")));
    assert_eq!(tool_names(&r.json()?)?, want, "{}", r.body);
    let e = decision_for(&stack, "headless").await?;
    assert_eq!((&e["agent"], e.get("user")), (&json!("ci-bot"), None));
    // ...and no per-user assignment: there is no person whose identity to use.
    let r = post_json(&stack.url("whoami-mine"), Some(&headless), INITIALIZE, &[]).await?;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("acts for nobody"), "{}", r.body);

    stack.assert_no_secret_in_logs()?;
    let events = serde_json::to_string(&stack.audit_events()?)?;
    for t in [&chained, &unknown, &headless] {
        assert!(
            !events.contains(t.as_str()),
            "a token reached the audit stream"
        );
    }
    Ok(())
}

/// `[[agents]]` is reloaded with `[policy]`: an agent provisioned in the
/// config file while the service runs is recognised without a restart, and
/// refused again once it leaves the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_added_to_or_removed_from_the_config_file_apply_without_restart() -> Result<()> {
    let stack = Stack::start("agents_reload", StackOptions::default()).await?;
    let token = stack
        .token_with(&TokenRequest::new("alice", &stack.gateway_url()).client("late-bot"))
        .await?;
    let url = stack.url("whoami");
    let status = async || -> Result<u16> {
        Ok(post_json(&url, Some(&token), INITIALIZE, &[]).await?.status)
    };
    let pid = stack.latchkey().and_then(|p| p.pid());
    let r = post_json(&url, Some(&token), INITIALIZE, &[]).await?;
    assert_eq!(r.status, 403, "an agent not provisioned: {}", r.body);
    assert!(r.body.contains("late-bot"), "{}", r.body);

    stack.set_policy(Some("[[agents]]\nname = \"late-bot\"\n"))?;
    eventually("late-bot is recognised", async || {
        Ok(match status().await? {
            200 => Ok(()),
            s => Err(format!("status {s}")),
        })
    })
    .await?;
    stack.set_policy(None)?;
    eventually("late-bot is refused again", async || {
        Ok(match status().await? {
            403 => Ok(()),
            s => Err(format!("status {s}")),
        })
    })
    .await?;
    assert_eq!(stack.latchkey().and_then(|p| p.pid()), pid, "no restart");
    Ok(())
}
