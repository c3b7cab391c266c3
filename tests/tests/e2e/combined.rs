//! A combined endpoint, through a real Envoy running the Wasm filter: one
//! server (`fast-mcp`) assigned twice on a gateway — shared with a service
//! account for some tools, per user for others — and published once more
//! as `[[gateways.combined]]`. The caller's list is the union of what the
//! two assignments show; each call goes out with the credential of the
//! assignment that shows its tool; a tool neither shows is unknown and never
//! reaches the upstream; a person without an identity of their own still
//! lists and calls the shared tools, and is asked to connect for the others.

use anyhow::{Context, Result};
use latchkey_e2e::client::{INITIALIZE, post_json};
use latchkey_e2e::{Stack, StackOptions, eventually, sha256_hex};
use serde_json::{Value, json};

/// Where consent links point (the page itself is not needed here).
const CONNECT_URL: &str = "https://connect.example.test/latchkey";

/// The same server as `fast` (shared, `fast-sa`), per user, and combined
/// both ways round.
const GATEWAY: &str = r#"
[[gateways.assignments]]
name = "fast-mine"
server = "fast"
scheme = "per_user"

[[gateways.combined]]
name = "fast-all"
assignments = ["fast", "fast-mine"]

[[gateways.combined]]
name = "fast-mine-first"
assignments = ["fast-mine", "fast"]
"#;

const POLICY: &str = r#"
[[policy.grants]]
name = "shared-reads"
gateway = "e2e"
assignments = ["fast"]
users = ["*"]
tools = { allow = ["tool_00", "tool_01", "tool_02"] }

[[policy.grants]]
name = "own-writes"
gateway = "e2e"
assignments = ["fast-mine"]
users = ["*"]
tools = { allow = ["tool_10", "tool_11"] }
"#;

const TOOLS_LIST: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;

fn call(tool: &str) -> String {
    json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
           "params": {"name": tool, "arguments": {"n": 1}}})
    .to_string()
}

fn tool_names(reply: &Value) -> Result<Vec<String>> {
    Ok(reply["result"]["tools"]
        .as_array()
        .with_context(|| format!("no tools in {reply}"))?
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect())
}

/// Which credential reached fast-mcp: "expected" is the shared one.
fn credential_seen(reply: &Value) -> &str {
    reply["result"]["structuredContent"]["credential"]
        .as_str()
        .unwrap_or("<none>")
}

/// Checks that exactly `Authorization: Bearer <secret>` reached fast-mcp
/// (it reports the header's SHA-256): "not the service account" alone is
/// also true of the client's own token passed through.
fn assert_credential_reached(reply: &Value, secret: &str, what: &str) {
    assert_eq!(
        reply["result"]["structuredContent"]["credential_sha256"],
        json!(sha256_hex(&format!("Bearer {secret}"))),
        "{what} reached the upstream: {reply}"
    );
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

/// POSTs `body` to `endpoint` as `token`, tagged `request_id`; the reply
/// as JSON and the decision the service recorded for it.
async fn exchange(
    stack: &Stack,
    endpoint: &str,
    token: &str,
    body: &str,
    request_id: &str,
) -> Result<(u16, Value, Value)> {
    let r = post_json(
        &stack.url(endpoint),
        Some(token),
        body,
        &[("x-request-id", request_id)],
    )
    .await?;
    let reply = r
        .json()
        .with_context(|| format!("{request_id}: not JSON: {}", r.body))?;
    Ok((r.status, reply, decision_for(stack, request_id).await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_combined_endpoint_lists_the_union_and_calls_with_each_tools_credential() -> Result<()> {
    let stack = Stack::start(
        "combined",
        StackOptions {
            fast_mcp_page_size: Some(100),
            extra_config: Some(format!(
                "{GATEWAY}\n[connect]\npublic_url = \"{CONNECT_URL}\"\nclient_id = \"latchkey-connect\"\n"
            )),
            policy: Some(POLICY.to_string()),
            ..Default::default()
        },
    )
    .await?;
    let alice = stack.token("alice").await?;
    let bob = stack.token("bob").await?;

    // alice connects an identity of her own for fast.
    let alices_secret = stack
        .connect_own_identity("alice", "fast", "alice-fast")
        .await?;

    // Her list is the union of both assignments' views, and nothing else.
    let union = ["tool_00", "tool_01", "tool_02", "tool_10", "tool_11"];
    let (status, reply, e) = exchange(&stack, "fast-all", &alice, TOOLS_LIST, "a-list").await?;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(tool_names(&reply)?, union);
    assert_eq!(
        (&e["assignment"], &e["scheme"], &e["identity"]),
        (&json!("fast"), &json!("shared"), &json!("fast-sa")),
        "the list went out with the first usable credential: {e}"
    );
    // Each assignment on its own still shows only its share.
    let r = post_json(&stack.url("fast"), Some(&alice), TOOLS_LIST, &[]).await?;
    assert_eq!(tool_names(&r.json()?)?, ["tool_00", "tool_01", "tool_02"]);
    let r = post_json(&stack.url("fast-mine"), Some(&alice), TOOLS_LIST, &[]).await?;
    assert_eq!(tool_names(&r.json()?)?, ["tool_10", "tool_11"]);

    // A shared tool goes out with the service account's credential...
    let (status, reply, e) =
        exchange(&stack, "fast-all", &alice, &call("tool_01"), "a-shared").await?;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(credential_seen(&reply), "expected", "{reply}");
    assert_eq!(
        reply["result"]["structuredContent"]["echo"],
        json!({"n": 1})
    );
    assert_eq!(
        (
            &e["assignment"],
            &e["scheme"],
            &e["identity"],
            &e["decision"]
        ),
        (
            &json!("fast"),
            &json!("shared"),
            &json!("fast-sa"),
            &json!("allow")
        )
    );
    // ...a per-user tool with alice's own.
    let (status, reply, e) =
        exchange(&stack, "fast-all", &alice, &call("tool_10"), "a-own").await?;
    assert_eq!(status, 200, "{reply}");
    assert_credential_reached(&reply, &alices_secret, "alice's own credential");
    assert_eq!(
        (&e["assignment"], &e["scheme"], &e["identity"], &e["user"]),
        (
            &json!("fast-mine"),
            &json!("per_user"),
            &json!("alice-fast"),
            &json!("alice")
        )
    );

    // A tool neither assignment shows is unknown, and never reaches fast.
    let before = stack.envoy.upstream_requests("fast")?;
    let (status, reply, e) =
        exchange(&stack, "fast-all", &alice, &call("tool_05"), "a-hidden").await?;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["error"]["message"], "Unknown tool: tool_05",
        "{reply}"
    );
    assert_eq!(reply["id"], 9);
    assert_eq!(
        (&e["reason"], &e["assignment"]),
        (&json!("hidden_by_policy"), &json!("fast-all"))
    );
    assert_eq!(
        stack.envoy.upstream_requests("fast")?,
        before,
        "a hidden call reached upstream"
    );

    // bob has no identity of his own: he still initializes, lists the union
    // and calls the shared tools, all with the shared credential.
    let (status, reply, e) = exchange(&stack, "fast-all", &bob, INITIALIZE, "b-init").await?;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["result"]["serverInfo"]["name"], "fast-mcp");
    assert_eq!(e["assignment"], "fast");
    let (_, reply, _) = exchange(&stack, "fast-all", &bob, TOOLS_LIST, "b-list").await?;
    assert_eq!(tool_names(&reply)?, union);
    let (_, reply, e) = exchange(&stack, "fast-all", &bob, &call("tool_02"), "b-shared").await?;
    assert_eq!(credential_seen(&reply), "expected", "{reply}");
    assert_eq!(
        (&e["user"], &e["identity"]),
        (&json!("bob"), &json!("fast-sa"))
    );
    assert!(
        stack.envoy.upstream_requests("fast")? > before,
        "bob's shared calls reached upstream"
    );
    // A per-user tool: the consent answer, for the per-user assignment.
    let before = stack.envoy.upstream_requests("fast")?;
    let (status, reply, e) = exchange(&stack, "fast-all", &bob, &call("tool_11"), "b-own").await?;
    assert_eq!(status, 200, "{reply}");
    assert!(reply.get("result").is_none(), "{reply}");
    assert!(
        reply.to_string().contains(CONNECT_URL),
        "a link to the connect page: {reply}"
    );
    assert_eq!(
        (&e["reason"], &e["assignment"], &e["decision"]),
        (
            &json!("consent_needed"),
            &json!("fast-mine"),
            &json!("deny")
        )
    );
    assert_eq!(
        stack.envoy.upstream_requests("fast")?,
        before,
        "no credential, no upstream call"
    );

    // Per-user first: alice's own credential serves what names nothing;
    // bob, who has none, falls back to the shared one instead of being
    // asked to connect, and sees the same union.
    let (_, reply, e) =
        exchange(&stack, "fast-mine-first", &alice, TOOLS_LIST, "a-mine-list").await?;
    assert_eq!(tool_names(&reply)?, union);
    assert_eq!(
        (&e["assignment"], &e["identity"]),
        (&json!("fast-mine"), &json!("alice-fast"))
    );
    let (status, reply, e) =
        exchange(&stack, "fast-mine-first", &bob, TOOLS_LIST, "b-mine-list").await?;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(tool_names(&reply)?, union);
    assert_eq!(
        (&e["assignment"], &e["identity"]),
        (&json!("fast"), &json!("fast-sa"))
    );
    let (_, reply, e) = exchange(
        &stack,
        "fast-mine-first",
        &bob,
        &call("tool_00"),
        "b-mine-shared",
    )
    .await?;
    assert_eq!(credential_seen(&reply), "expected", "{reply}");
    assert_eq!(e["assignment"], "fast");
    assert!(
        stack.envoy.upstream_requests("fast")? > before,
        "the calls with a credential reached upstream"
    );

    stack.assert_no_secret_in_logs()?;
    Ok(())
}
