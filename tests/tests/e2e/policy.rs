//! Tool-level policy through a real Envoy running the Wasm filter, against
//! real upstreams: `@modelcontextprotocol/server-everything` (answers over
//! SSE, with sessions) and `fast-mcp` (stateless, `application/json`, a
//! paged tool list). Users get roles from their token's `groups` claim.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use latchkey_e2e::client::{INITIALIZE, McpClient, post_json};
use latchkey_e2e::{Stack, StackOptions, TokenRequest, eventually};
use serde_json::{Value, json};

const POLICY: &str = r#"
[policy.roles]
engineers = ["eng"]

# server-everything (TypeScript SDK) answers an unknown tool with a failed
# tool result and unknown prompts/resources with these errors: answer hidden
# ones the same way, so a caller cannot tell hidden from absent.
[policy.hidden.tool]
style = "tool_result"
message = "MCP error -32602: Tool {name} not found"
[policy.hidden.prompt]
message = "MCP error -32602: Prompt {name} not found"
[policy.hidden.resource]
code = -32602
message = "MCP error -32602: Resource {name} not found"

[[policy.grants]]
name = "everyone-basic"
gateway = "e2e"
assignments = ["everything", "fast"]
users = ["*"]
tools = { allow = ["echo", "get-sum", "no-such-*", "tool_0?"], deny = ["tool_05"] }
prompts = { allow = ["simple-prompt"] }
resources = { allow = ["demo://resource/static/document/*"] }

[[policy.grants.constraints]]
tool = "get-sum"
argument = "/a"
max = 100

[[policy.grants]]
name = "engineers-all"
gateway = "e2e"
assignments = ["everything", "fast"]
roles = ["engineers"]
tools = { allow = ["*"], deny = ["get-env"] }
prompts = { allow = ["*"] }
resources = { allow = ["*"] }
"#;

async fn token_with_groups(stack: &Stack, sub: &str, groups: &[&str]) -> Result<String> {
    stack
        .token_with(&TokenRequest::new(sub, &stack.gateway_url()).claim("groups", json!(groups)))
        .await
}

fn names(list: &[Value], field: &str) -> Vec<String> {
    list.iter()
        .filter_map(|t| t[field].as_str().map(str::to_string))
        .collect()
}

/// A session with server-everything through the gateway: initialize,
/// initialized; returns the headers later requests carry.
async fn everything_session(stack: &Stack, token: &str) -> Result<Vec<(String, String)>> {
    let reply = post_json(&stack.url("everything"), Some(token), INITIALIZE, &[]).await?;
    if reply.status != 200 {
        bail!("initialize: {} {}", reply.status, reply.body);
    }
    let session = reply
        .header("mcp-session-id")
        .context("no session id")?
        .to_string();
    let headers = vec![
        ("mcp-session-id".to_string(), session),
        ("mcp-protocol-version".to_string(), "2025-11-25".to_string()),
    ];
    let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string();
    let r = post_json(
        &stack.url("everything"),
        Some(token),
        &note,
        &pairs(&headers),
    )
    .await?;
    assert_eq!(r.status, 202, "{}", r.body);
    Ok(headers)
}

fn pairs(h: &[(String, String)]) -> Vec<(&str, &str)> {
    h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// One request on a session; the single JSON-RPC answer (SSE or JSON).
async fn exchange(
    stack: &Stack,
    token: &str,
    session: &[(String, String)],
    body: Value,
) -> Result<(u16, String, Value)> {
    let reply = post_json(
        &stack.url("everything"),
        Some(token),
        &body.to_string(),
        &pairs(session),
    )
    .await?;
    let content_type = reply.header("content-type").unwrap_or("").to_string();
    let messages = reply.messages();
    let answer = messages
        .into_iter()
        .find(|m| m.get("id") == body.get("id"))
        .with_context(|| format!("no answer to {body}: {} {}", reply.status, reply.body))?;
    Ok((reply.status, content_type, answer))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_see_and_call_only_what_their_grants_allow() -> Result<()> {
    let stack = Stack::start(
        "policy_visibility",
        StackOptions {
            everything: true,
            fast_mcp_page_size: Some(8),
            policy: Some(POLICY.to_string()),
            ..Default::default()
        },
    )
    .await?;
    let alice = token_with_groups(&stack, "alice", &[]).await?;
    let erin = token_with_groups(&stack, "erin", &["eng"]).await?;

    // What the upstream itself lists (it needs no credential).
    let everything_url = stack.everything.as_ref().context("everything")?.url();
    let direct = McpClient::connect(&everything_url, "unused").await?;
    let all_tools: Vec<String> = direct
        .list_tools()
        .await?
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    direct.close().await?;
    assert!(all_tools.len() > 5 && all_tools.contains(&"get-env".to_string()));

    // A real MCP client: each user sees their own list.
    let client = McpClient::connect(&stack.url("everything"), &alice).await?;
    let seen: Vec<String> = client
        .list_tools()
        .await?
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert_eq!(seen, ["echo", "get-sum"], "alice: everyone-basic only");
    let result = client.call_tool("echo", json!({"message": "hi"})).await?;
    assert!(McpClient::text(&result).contains("hi"), "{result:?}");
    client.close().await?;
    let client = McpClient::connect(&stack.url("everything"), &erin).await?;
    let seen: Vec<String> = client
        .list_tools()
        .await?
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    let expected: Vec<String> = all_tools
        .iter()
        .filter(|t| *t != "get-env")
        .cloned()
        .collect();
    assert_eq!(seen, expected, "erin: everything but get-env");
    client.close().await?;

    // The same over raw SSE: the list answer is an event stream, trimmed.
    let session = everything_session(&stack, &alice).await?;
    let (status, content_type, answer) = exchange(
        &stack,
        &alice,
        &session,
        json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}),
    )
    .await?;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    assert_eq!(
        names(answer["result"]["tools"].as_array().unwrap(), "name"),
        ["echo", "get-sum"]
    );

    // A hidden tool gets exactly what the upstream answers for a tool that
    // does not exist (that one is allowed, so the upstream answers it), and
    // the hidden call never reaches the upstream.
    let before = stack.envoy.upstream_requests("everything")?;
    let (status, _, hidden) = exchange(
        &stack,
        &alice,
        &session,
        json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"get-env","arguments":{}}}),
    )
    .await?;
    assert_eq!(status, 200);
    assert_eq!(
        stack.envoy.upstream_requests("everything")?,
        before,
        "hidden call reached upstream"
    );
    let (_, _, absent) = exchange(
        &stack,
        &alice,
        &session,
        json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"no-such-tool","arguments":{}}}),
    )
    .await?;
    assert!(
        stack.envoy.upstream_requests("everything")? > before,
        "allowed call went upstream"
    );
    assert_eq!(
        hidden.to_string().replace("get-env", "NAME"),
        absent.to_string().replace("no-such-tool", "NAME"),
        "hidden and absent tools must be indistinguishable"
    );
    assert_eq!(hidden["result"]["isError"], true, "{hidden}");

    // An argument constraint: a failed tool result naming it; upstream not
    // called. Within the constraint, the call goes through.
    let before = stack.envoy.upstream_requests("everything")?;
    let (_, _, refused) = exchange(
        &stack,
        &alice,
        &session,
        json!({"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"get-sum","arguments":{"a":1000,"b":1}}}),
    )
    .await?;
    assert_eq!(refused["result"]["isError"], true, "{refused}");
    let text = refused["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or("");
    assert!(
        text.contains("argument /a must be a number of at most 100"),
        "{text}"
    );
    assert_eq!(stack.envoy.upstream_requests("everything")?, before);
    let (_, _, summed) = exchange(
        &stack,
        &alice,
        &session,
        json!({"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"get-sum","arguments":{"a":40,"b":2}}}),
    )
    .await?;
    assert!(
        summed["result"]["isError"] != true && summed.to_string().contains("42"),
        "{summed}"
    );
    assert!(
        stack.envoy.upstream_requests("everything")? > before,
        "the call within the constraint went upstream"
    );
    // Erin's role grants get-sum without the constraint.
    let erin_session = everything_session(&stack, &erin).await?;
    let (_, _, summed) = exchange(
        &stack,
        &erin,
        &erin_session,
        json!({"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"get-sum","arguments":{"a":1000,"b":1}}}),
    )
    .await?;
    assert!(summed.to_string().contains("1001"), "{summed}");

    // Prompts and resources follow the same rules, hidden like absent ones.
    let (_, _, hidden) = exchange(
        &stack,
        &alice,
        &session,
        json!({"jsonrpc":"2.0","id":7,"method":"prompts/get","params":{"name":"args-prompt","arguments":{"city":"x"}}}),
    )
    .await?;
    let (_, _, absent) = exchange(
        &stack,
        &erin,
        &erin_session,
        json!({"jsonrpc":"2.0","id":7,"method":"prompts/get","params":{"name":"no-such-prompt","arguments":{"city":"x"}}}),
    )
    .await?;
    assert_eq!(
        hidden.to_string().replace("args-prompt", "NAME"),
        absent.to_string().replace("no-such-prompt", "NAME")
    );
    // Completing a hidden prompt's argument reveals nothing either.
    let complete = |id: u32, prompt: &str| {
        json!({"jsonrpc":"2.0","id":id,"method":"completion/complete","params":{
            "ref":{"type":"ref/prompt","name":prompt},"argument":{"name":"department","value":"E"}}})
    };
    let before = stack.envoy.upstream_requests("everything")?;
    let (_, _, hidden) =
        exchange(&stack, &alice, &session, complete(12, "completable-prompt")).await?;
    assert_eq!(stack.envoy.upstream_requests("everything")?, before);
    let (_, _, absent) =
        exchange(&stack, &erin, &erin_session, complete(12, "no-such-prompt")).await?;
    assert_eq!(
        hidden.to_string().replace("completable-prompt", "NAME"),
        absent.to_string().replace("no-such-prompt", "NAME")
    );
    let before = stack.envoy.upstream_requests("everything")?;
    let (_, _, completed) = exchange(
        &stack,
        &erin,
        &erin_session,
        complete(13, "completable-prompt"),
    )
    .await?;
    assert!(
        stack.envoy.upstream_requests("everything")? > before,
        "the granted completion went upstream"
    );
    assert!(
        completed["result"]["completion"]["values"].is_array(),
        "{completed}"
    );
    let (_, _, prompts) = exchange(
        &stack,
        &alice,
        &session,
        json!({"jsonrpc":"2.0","id":8,"method":"prompts/list"}),
    )
    .await?;
    assert_eq!(
        names(prompts["result"]["prompts"].as_array().unwrap(), "name"),
        ["simple-prompt"]
    );
    let (_, _, resources) = exchange(
        &stack,
        &alice,
        &session,
        json!({"jsonrpc":"2.0","id":9,"method":"resources/list"}),
    )
    .await?;
    let uris = names(resources["result"]["resources"].as_array().unwrap(), "uri");
    assert!(!uris.is_empty());
    assert!(
        uris.iter()
            .all(|u| u.starts_with("demo://resource/static/document/")),
        "{uris:?}"
    );
    let (_, _, templates) = exchange(
        &stack,
        &alice,
        &session,
        json!({"jsonrpc":"2.0","id":10,"method":"resources/templates/list"}),
    )
    .await?;
    assert_eq!(
        templates["result"]["resourceTemplates"],
        json!([]),
        "{templates}"
    );
    let (_, _, templates) = exchange(
        &stack,
        &erin,
        &erin_session,
        json!({"jsonrpc":"2.0","id":10,"method":"resources/templates/list"}),
    )
    .await?;
    assert!(
        !templates["result"]["resourceTemplates"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let before = stack.envoy.upstream_requests("everything")?;
    let (_, _, hidden) = exchange(
        &stack,
        &alice,
        &session,
        json!({"jsonrpc":"2.0","id":11,"method":"resources/read","params":{"uri":"demo://resource/dynamic/text/1"}}),
    )
    .await?;
    assert_eq!(stack.envoy.upstream_requests("everything")?, before);
    assert_eq!(hidden["error"]["code"], -32602, "{hidden}");
    let (_, _, shown) = exchange(
        &stack,
        &alice,
        &session,
        json!({"jsonrpc":"2.0","id":14,"method":"resources/read","params":{"uri":uris[0]}}),
    )
    .await?;
    assert!(shown["result"]["contents"].is_array(), "{shown}");
    assert!(
        stack.envoy.upstream_requests("everything")? > before,
        "a resource alice may read went upstream"
    );

    // fast-mcp answers application/json and pages its list by 8: the
    // trimmed pages keep their cursors, so paging still reaches the end.
    let pages = |token: String| {
        let url = stack.url("fast");
        async move {
            let mut page_names = Vec::new();
            let mut cursor: Option<String> = None;
            for page in 0..4 {
                let params = match &cursor {
                    Some(c) => json!({"cursor": c}),
                    None => json!({}),
                };
                let body = json!({"jsonrpc":"2.0","id":page,"method":"tools/list","params":params});
                let reply = post_json(&url, Some(&token), &body.to_string(), &[]).await?;
                assert_eq!(reply.status, 200, "{}", reply.body);
                let content_type = reply.header("content-type").unwrap_or("");
                assert!(
                    content_type.starts_with("application/json"),
                    "{content_type}"
                );
                let v = reply.json()?;
                page_names.push(names(v["result"]["tools"].as_array().unwrap(), "name"));
                cursor = v["result"]["nextCursor"].as_str().map(str::to_string);
                if cursor.is_none() {
                    break;
                }
            }
            anyhow::Ok(page_names)
        }
    };
    let tools = |range: std::ops::Range<usize>| -> Vec<String> {
        range
            .filter(|i| *i != 5)
            .map(|i| format!("tool_{i:02}"))
            .collect()
    };
    assert_eq!(
        pages(alice.clone()).await?,
        vec![tools(0..8), tools(8..10), vec![]]
    );
    // Erin's role allows every tool, but everyone-basic's deny of tool_05
    // applies to her too: deny wins.
    assert_eq!(
        pages(erin.clone()).await?,
        vec![tools(0..8), tools(8..16), tools(16..20)]
    );

    // On 2026-07-28 a list cut for one caller is marked private.
    let reply = post_json(
        &stack.url("fast"),
        Some(&alice),
        &json!({"jsonrpc":"2.0","id":"p","method":"tools/list"}).to_string(),
        &[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/list"),
        ],
    )
    .await?;
    let v = reply.json()?;
    assert_eq!(v["result"]["cacheScope"], "private", "{v}");
    assert_eq!(v["result"]["tools"].as_array().unwrap().len(), 7);

    operator_tools_explain_and_lint(&stack)?;
    let scanned = stack.assert_no_secret_in_logs()?;
    assert!(scanned > 0);
    Ok(())
}

/// `latchkey policy check` names the deciding rule; `policy lint --probe`
/// finds a deny hiding an allow and a pattern no upstream tool matches.
fn operator_tools_explain_and_lint(stack: &Stack) -> Result<()> {
    let bin = latchkey_e2e::paths::latchkey_bin()?;
    let check = |args: &[&str]| -> Result<Value> {
        let out = std::process::Command::new(&bin)
            .args(["policy", "check", "--json", "--config"])
            .arg(&stack.config_path)
            .args(["--gateway", "e2e"])
            .args(args)
            .output()?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let v = check(&[
        "--user",
        "alice",
        "--server",
        "everything",
        "--tool",
        "get-env",
    ])?;
    assert_eq!(v["decision"], "hidden");
    assert!(
        v["reason"].as_str().unwrap().contains("no allow pattern"),
        "{v}"
    );
    let v = check(&[
        "--user",
        "erin",
        "--role",
        "eng",
        "--server",
        "everything",
        "--tool",
        "get-env",
    ])?;
    assert_eq!(v["decision"], "hidden");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("grant 'engineers-all' (line"),
        "{v}"
    );
    let v = check(&["--user", "alice", "--server", "fast", "--tool", "tool_03"])?;
    assert_eq!(v["decision"], "allowed");
    assert!(
        v["reason"].as_str().unwrap().contains("allow \"tool_0?\""),
        "{v}"
    );
    let v = check(&[
        "--user",
        "alice",
        "--server",
        "everything",
        "--tool",
        "get-sum",
        "--args",
        r#"{"a":500,"b":1}"#,
    ])?;
    assert_eq!(v["decision"], "refused");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("/a must be a number of at most 100"),
        "{v}"
    );
    let v = check(&[
        "--user",
        "alice",
        "--server",
        "everything",
        "--resource",
        "demo://resource/static/document/a.md",
    ])?;
    assert_eq!(v["decision"], "allowed");

    let out = std::process::Command::new(&bin)
        .args(["policy", "lint", "--probe", "--config"])
        .arg(&stack.config_path)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "findings exit 1: {text}");
    assert!(
        text.contains(
            "e2e/everything: tools pattern \"no-such-*\" matches no tool server 'everything' lists"
        ),
        "{text}"
    );
    assert!(
        text.contains("e2e/fast: tools pattern \"echo\" matches no tool"),
        "{text}"
    );
    assert!(
        !text.contains("e2e/everything: tools pattern \"echo\""),
        "{text}"
    );
    assert!(
        !text.contains("e2e/fast: tools pattern \"tool_0?\""),
        "{text}"
    );
    Ok(())
}

const ONLY_TOOL_00: &str = r#"
[[policy.grants]]
name = "narrow"
gateway = "e2e"
assignments = ["fast"]
users = ["*"]
tools = { allow = ["tool_00"] }
"#;

async fn fast_tools(stack: &Stack, token: &str) -> Result<Vec<String>> {
    let reply = post_json(
        &stack.url("fast"),
        Some(token),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        &[],
    )
    .await?;
    let v = reply.json()?;
    Ok(names(
        v["result"]["tools"].as_array().context("tools")?,
        "name",
    ))
}

async fn wait_for_tools(stack: &Stack, token: &str, want: usize) -> Result<()> {
    eventually("policy not applied", async || {
        let seen = fast_tools(stack, token).await?;
        Ok(if seen.len() == want {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_changes_apply_without_restart_and_broken_files_are_refused() -> Result<()> {
    let stack = Stack::start(
        "policy_reload",
        StackOptions {
            fast_mcp_page_size: Some(100),
            policy: Some(ONLY_TOOL_00.to_string()),
            ..Default::default()
        },
    )
    .await?;
    let alice = stack.token("alice").await?;
    assert_eq!(fast_tools(&stack, &alice).await?, ["tool_00"]);
    let pid = stack.latchkey().and_then(|p| p.pid());

    // Traffic keeps flowing while the file changes: every call is answered
    // 200 (allowed or hidden), none fails.
    let url = stack.url("fast");
    let traffic = {
        let alice = alice.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..60 {
                let body = json!({"jsonrpc":"2.0","id":i,"method":"tools/call","params":{"name":"tool_03","arguments":{}}});
                let r = post_json(&url, Some(&alice), &body.to_string(), &[]).await;
                statuses.push(r.map(|r| r.status).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            statuses
        })
    };
    stack.set_policy(Some(
        &ONLY_TOOL_00.replace("[\"tool_00\"]", "[\"tool_0*\"]"),
    ))?;
    wait_for_tools(&stack, &alice, 10).await?;
    let statuses = traffic.await?;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(stack.latchkey().and_then(|p| p.pid()), pid, "no restart");

    // A file with a policy that names a missing assignment is refused, with
    // the line; the policy in force stays.
    let broken = ONLY_TOOL_00.replace("[\"fast\"]", "[\"fsat\"]");
    stack.set_policy(Some(&broken))?;
    let log = wait_for_log(&stack, "policy reload refused", 1).await?;
    assert!(
        log.contains("gateway 'e2e' has no assignment 'fsat'") && log.contains("'narrow' (line"),
        "{log}"
    );
    assert_eq!(fast_tools(&stack, &alice).await?.len(), 10);
    // So is a file that is not TOML.
    stack.set_policy(Some("[[policy.grants]\nname = 1"))?;
    let log = wait_for_log(&stack, "policy reload refused", 2).await?;
    assert!(log.contains("line"), "{log}");
    assert_eq!(fast_tools(&stack, &alice).await?.len(), 10);

    // Removing [policy] lifts the restriction (with a warning at start).
    stack.set_policy(None)?;
    wait_for_tools(&stack, &alice, 20).await?;
    Ok(())
}

/// Waits until `needle` appears `count` times in the service log; returns
/// the last line with it.
async fn wait_for_log(stack: &Stack, needle: &str, count: usize) -> Result<String> {
    let what = format!("'{needle}' x{count} in the log");
    eventually(&what, async || {
        let text = stack.latchkey().context("latchkey")?.log_text();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(needle)).collect();
        Ok(match lines.last() {
            Some(last) if lines.len() >= count => Ok(last.to_string()),
            _ => Err(format!("{} times", lines.len())),
        })
    })
    .await
}

/// Behind Envoy's native ext_authz (as under Istio's CUSTOM action) the
/// same decisions hold for calls: a hidden tool is answered by the service,
/// with the request's id, and never reaches the upstream. (Trimming lists
/// needs the Latchkey filter: native ext_authz cannot rewrite a response.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_ext_authz_enforces_the_same_policy_on_calls() -> Result<()> {
    let stack = Stack::start(
        "policy_native",
        StackOptions {
            mode: latchkey_e2e::stack::AuthzMode::Native,
            fast_mcp_page_size: Some(100),
            policy: Some(ONLY_TOOL_00.to_string()),
            ..Default::default()
        },
    )
    .await?;
    let alice = stack.token("alice").await?;
    let call = |tool: &str| {
        json!({"jsonrpc":"2.0","id":"n-1","method":"tools/call","params":{"name":tool,"arguments":{}}})
            .to_string()
    };
    let before = stack.envoy.upstream_requests("fast")?;
    let reply = post_json(&stack.url("fast"), Some(&alice), &call("tool_03"), &[]).await?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let v = reply.json()?;
    assert_eq!(v["id"], "n-1");
    assert_eq!(v["error"]["code"], -32602);
    assert_eq!(v["error"]["message"], "Unknown tool: tool_03");
    assert_eq!(stack.envoy.upstream_requests("fast")?, before);
    let reply = post_json(&stack.url("fast"), Some(&alice), &call("tool_00"), &[]).await?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()?["result"]["content"][0]["text"], "ok tool_00");
    assert_eq!(
        stack.envoy.upstream_requests("fast")?,
        before + 1,
        "the granted call went upstream"
    );
    Ok(())
}

const WITH_AGENTS: &str = r#"
[policy.roles]
engineers = ["eng"]

[[policy.grants]]
name = "everyone"
gateway = "e2e"
assignments = ["fast"]
users = ["*"]
tools = { allow = ["tool_0*"] }

[[policy.grants]]
name = "engineers"
gateway = "e2e"
assignments = ["fast"]
roles = ["engineers"]
tools = { allow = ["tool_*"] }

[[policy.grants]]
name = "ci-bot"
gateway = "e2e"
assignments = ["fast"]
agents = ["ci-bot"]
tools = { allow = ["tool_00", "tool_1*"] }

[[agents]]
name = "ci-bot"
[[agents]]
name = "other-agent"
"#;

/// An agent (the token's client) with grants of its own gets the
/// intersection of them and its user's, whoever it acts for; an agent with
/// no grant on an assignment that has agent grants sees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_sees_the_intersection_of_its_grants_and_its_users() -> Result<()> {
    let stack = Stack::start(
        "policy_agents",
        StackOptions {
            fast_mcp_page_size: Some(100),
            policy: Some(WITH_AGENTS.to_string()),
            ..Default::default()
        },
    )
    .await?;
    let token = |sub: &str, groups: &[&str], agent: &str| {
        TokenRequest::new(sub, &stack.gateway_url())
            .client(agent)
            .claim("groups", json!(groups))
    };
    let alice_via_bot = stack.token_with(&token("alice", &[], "ci-bot")).await?;
    let erin_via_bot = stack.token_with(&token("erin", &["eng"], "ci-bot")).await?;
    let erin_via_other = stack
        .token_with(&token("erin", &["eng"], "other-agent"))
        .await?;

    assert_eq!(fast_tools(&stack, &alice_via_bot).await?, ["tool_00"]);
    let erin: Vec<String> = fast_tools(&stack, &erin_via_bot).await?;
    let mut want = vec!["tool_00".to_string()];
    want.extend((10..20).map(|i| format!("tool_{i}")));
    assert_eq!(
        erin, want,
        "the bot never gains more than erin, nor erin's all"
    );
    assert!(fast_tools(&stack, &erin_via_other).await?.is_empty());

    // Calls follow: alice may call tool_05, the bot may not.
    let before = stack.envoy.upstream_requests("fast")?;
    let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"tool_05","arguments":{}}});
    let reply = post_json(
        &stack.url("fast"),
        Some(&alice_via_bot),
        &body.to_string(),
        &[],
    )
    .await?;
    assert_eq!(reply.json()?["error"]["message"], "Unknown tool: tool_05");
    assert_eq!(stack.envoy.upstream_requests("fast")?, before);
    let body = json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"tool_00","arguments":{}}});
    let reply = post_json(
        &stack.url("fast"),
        Some(&alice_via_bot),
        &body.to_string(),
        &[],
    )
    .await?;
    assert_eq!(reply.json()?["result"]["content"][0]["text"], "ok tool_00");
    assert_eq!(
        stack.envoy.upstream_requests("fast")?,
        before + 1,
        "the call both grant went upstream"
    );

    let out = std::process::Command::new(latchkey_e2e::paths::latchkey_bin()?)
        .args(["policy", "check", "--config"])
        .arg(&stack.config_path)
        .args([
            "--user",
            "alice",
            "--agent",
            "ci-bot",
            "--gateway",
            "e2e",
            "--server",
            "fast",
            "--tool",
            "tool_05",
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("hidden: allowed by grant 'everyone'")
            && text.contains("for the acting agent 'ci-bot': no allow pattern matches"),
        "{text}"
    );
    Ok(())
}
