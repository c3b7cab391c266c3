//! The in-band consent answer, end to end through a real Envoy running the
//! Wasm filter: a person with no identity for a per-user server is sent to
//! the connect page in the form their client's MCP version and declared
//! capabilities understand, and a `requestState` that is not theirs, or was
//! changed, is refused.

use anyhow::{Context, Result};
use latchkey_e2e::client::{self, Call2026, HttpReply, assert_jsonrpc_error};
use latchkey_e2e::{McpClient, Stack, StackOptions, eventually, post_json};
use serde_json::{Value, json};

/// Where the connect page is published in these scenarios (the page itself
/// is not needed to check the answers that point at it).
const CONNECT_URL: &str = "https://connect.example.test/latchkey";

fn options() -> StackOptions {
    StackOptions {
        extra_config: Some(format!(
            "[connect]\npublic_url = \"{CONNECT_URL}\"\nclient_id = \"latchkey-connect\"\nconsent_ttl_secs = 600\n"
        )),
        ..StackOptions::default()
    }
}

fn initialize(capabilities: Value) -> String {
    json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":capabilities,
        "clientInfo":{"name":"e2e","version":"1"}}})
    .to_string()
}

/// A 2026-07-28 `tools/call` of `tool` on `whoami-mine`, no arguments.
async fn call_2026(
    stack: &Stack,
    token: &str,
    id: Value,
    tool: &str,
    capabilities: Value,
    request_state: Option<&str>,
) -> Result<HttpReply> {
    client::call_2026(Call2026 {
        url: &stack.url("whoami-mine"),
        token,
        id,
        tool,
        arguments: json!({}),
        capabilities,
        retry: request_state.map(|s| (s, "connect-whoami")),
    })
    .await
}

/// The consent request id in a connect link, after checking the link
/// points at the connect page and says nothing about the person.
fn request_of(link: &str, user: &str) -> String {
    let prefix = format!("{CONNECT_URL}/connect/e2e?request=");
    assert!(link.starts_with(&prefix), "{link}");
    assert!(
        !link.contains(user),
        "the link carries no personal data: {link}"
    );
    let id = &link[prefix.len()..];
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{link}"
    );
    id.to_string()
}

/// The consent request stored for `id`.
fn consent_record(stack: &Stack, id: &str) -> Result<Value> {
    let raw = stack
        .redis
        .get(&format!("latchkey:consent:{id}"))?
        .with_context(|| format!("consent request {id} is not in Redis"))?;
    Ok(serde_json::from_str(&raw)?)
}

/// Which replica logged the decision on the request tagged `x-request-id:
/// id` (exactly one must have).
async fn replica_that_decided(stack: &Stack, id: &str) -> Result<usize> {
    let needle = format!("\"request_id\":\"{id}\"");
    eventually(
        &format!("the decision on {id} in one replica's log"),
        async || {
            let found: Vec<usize> = (0..stack.replicas.len())
                .filter(|&n| {
                    stack.replicas[n].process.as_ref().is_some_and(|p| {
                        p.log_text()
                            .lines()
                            .any(|l| l.contains("latchkey::decision") && l.contains(&needle))
                    })
                })
                .collect();
            Ok(match found[..] {
                [n] => Ok(n),
                _ => Err(format!("logged by replicas {found:?}")),
            })
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_2025_11_25_gets_a_url_elicitation_error_when_the_client_declared_url_mode()
-> Result<()> {
    // Two replicas (Envoy alternates between them): the call right after
    // `initialize` is decided by the replica that did not see it.
    let stack = Stack::start(
        "consent_2025",
        StackOptions {
            replicas: 2,
            ..options()
        },
    )
    .await?;
    let alice = stack.token("alice").await?;
    let v = "2025-11-25";

    // Initialization cannot elicit: the link rides in the error message.
    let url_mode = json!({"elicitation": {"form": {}, "url": {}}});
    let r = post_json(
        &stack.url("whoami-mine"),
        Some(&alice),
        &initialize(url_mode),
        &[("x-request-id", "alice-init")],
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let e = assert_jsonrpc_error(&r.body, &json!(1), -32003);
    let message = e["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("Connect your whoami account"), "{message}");
    let link = message
        .split_whitespace()
        .find(|w| w.starts_with(CONNECT_URL))
        .context("a link in the message")?;
    request_of(link, "alice");

    // Later in the session, the declared URL mode gets -32042: from the
    // first call on, on whichever replica decides it (the declaration was
    // stored before `initialize` was answered).
    let call = json!({"jsonrpc":"2.0","id":"c-7","method":"tools/call","params":{"name":"whoami","arguments":{}}}).to_string();
    let r = post_json(
        &stack.url("whoami-mine"),
        Some(&alice),
        &call,
        &[("mcp-protocol-version", v), ("x-request-id", "alice-call")],
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let e = assert_jsonrpc_error(&r.body, &json!("c-7"), -32042);
    assert_ne!(
        replica_that_decided(&stack, "alice-init").await?,
        replica_that_decided(&stack, "alice-call").await?,
        "the call went to the other replica"
    );
    let elicitations = e["error"]["data"]["elicitations"]
        .as_array()
        .context("data.elicitations")?;
    assert_eq!(elicitations.len(), 1, "{e}");
    let el = &elicitations[0];
    assert_eq!(el["mode"], "url");
    let url = el["url"].as_str().context("url")?;
    let id = request_of(url, "alice");
    assert_eq!(
        el["elicitationId"],
        id.as_str(),
        "the elicitation is the consent request"
    );
    assert!(
        el["message"]
            .as_str()
            .unwrap_or_default()
            .contains("whoami"),
        "{el}"
    );
    let record = consent_record(&stack, &id)?;
    assert_eq!(record["user"], "alice");
    assert_eq!(record["gateway"], "e2e");
    assert_eq!(record["server"], "whoami");
    assert_eq!(record["assignment"], "whoami-mine");

    // Bob's client declared form mode only (`elicitation: {}`): the link
    // comes in an error message instead.
    let bob = stack.token("bob").await?;
    post_json(
        &stack.url("whoami-mine"),
        Some(&bob),
        &initialize(json!({"elicitation": {}})),
        &[],
    )
    .await?;
    let r = post_json(
        &stack.url("whoami-mine"),
        Some(&bob),
        &call,
        &[("mcp-protocol-version", v)],
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let e = assert_jsonrpc_error(&r.body, &json!("c-7"), -32003);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(CONNECT_URL),
        "{e}"
    );

    // A notification cannot show a link: refused, and no consent request recorded.
    // RESP array header: `*<count of consent requests>`.
    let consent_requests = || -> Result<String> {
        let reply = stack.redis.command(&["KEYS", "latchkey:consent:*"])?;
        Ok(reply.lines().next().unwrap_or_default().to_string())
    };
    let before = consent_requests()?;
    assert_ne!(before, "*0", "the requests so far were answered with links");
    let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string();
    let r = post_json(
        &stack.url("whoami-mine"),
        Some(&bob),
        &note,
        &[("mcp-protocol-version", v)],
    )
    .await?;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(consent_requests()?, before);

    // Nothing reached the upstream, and the refusals are audited as consent requests.
    assert_eq!(stack.echo.requests().await?, 0);
    let decisions = latchkey_e2e::wait::eventually("decision events", async || {
        let events: Vec<Value> = stack
            .redis
            .stream_json("latchkey:audit", "event")?
            .into_iter()
            .filter(|e| e["event"] == "decision")
            .collect();
        Ok(if events.len() >= 4 {
            Ok(events)
        } else {
            Err(format!("{events:?}"))
        })
    })
    .await?;
    assert!(
        decisions
            .iter()
            .all(|e| e["reason"] == "consent_needed" && e["decision"] == "deny"),
        "{decisions:?}"
    );
    // The positive control, read the same way: once alice has an identity,
    // her call reaches the upstream and the count moves.
    let secret = stack
        .connect_own_identity("alice", "whoami", "alice-whoami")
        .await?;
    let client = McpClient::connect(&stack.url("whoami-mine"), &alice).await?;
    let r = client.call_tool("whoami", json!({})).await?;
    assert_eq!(McpClient::text(&r), format!("Bearer {secret}"));
    client.close().await?;
    assert!(
        stack.echo.requests().await? > 0,
        "alice's call reached the upstream"
    );
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

/// The declaration is stored before `initialize` is answered, not after:
/// with Redis holding every write for 300 ms (reads go on; its
/// `timeout_ms` is 500), the client's first call, sent the moment
/// `initialize` is answered and decided by the other replica, still finds
/// the URL mode it declared. (Stored on a task of its own, the call would
/// read nothing yet and get the link in an error message, -32003.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_call_after_initialize_finds_the_declared_url_mode_on_another_replica_even_while_redis_writes_lag()
-> Result<()> {
    let stack = Stack::start(
        "consent_first_call",
        StackOptions {
            replicas: 2,
            ..options()
        },
    )
    .await?;
    let alice = stack.token("alice").await?;
    let url_mode = json!({"elicitation": {"form": {}, "url": {}}});
    // `initialize` on the shared assignment is allowed (and writes nothing
    // else on its way); the declaration holds for the whole gateway.
    stack.redis.command(&["CLIENT", "PAUSE", "300", "WRITE"])?;
    let r = post_json(
        &stack.url("whoami"),
        Some(&alice),
        &initialize(url_mode),
        &[("x-request-id", "lag-init")],
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("serverInfo"), "{}", r.body);
    let call = json!({"jsonrpc":"2.0","id":"c-1","method":"tools/call","params":{"name":"whoami","arguments":{}}}).to_string();
    let r = post_json(
        &stack.url("whoami-mine"),
        Some(&alice),
        &call,
        &[
            ("mcp-protocol-version", "2025-11-25"),
            ("x-request-id", "lag-call"),
        ],
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_jsonrpc_error(&r.body, &json!("c-1"), -32042);
    assert_ne!(
        replica_that_decided(&stack, "lag-init").await?,
        replica_that_decided(&stack, "lag-call").await?,
        "the call went to the other replica"
    );
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_2026_07_28_gets_an_input_required_result_with_a_request_state_bound_to_the_call()
-> Result<()> {
    let stack = Stack::start("consent_2026", options()).await?;
    let alice = stack.token("alice").await?;
    let url_mode = json!({"elicitation": {"url": {}}});

    let r = call_2026(&stack, &alice, json!(5), "whoami", url_mode.clone(), None).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body)?;
    assert_eq!(v["jsonrpc"], "2.0");
    assert_eq!(v["id"], 5);
    assert!(v.get("error").is_none(), "{v}");
    let result = &v["result"];
    assert_eq!(result["resultType"], "input_required", "{v}");
    let requests = result["inputRequests"]
        .as_object()
        .context("inputRequests")?;
    assert_eq!(requests.len(), 1, "{v}");
    let request = &requests["connect-whoami"];
    assert_eq!(request["method"], "elicitation/create");
    assert_eq!(request["params"]["mode"], "url");
    assert!(
        request["params"].get("elicitationId").is_none(),
        "gone in 2026-07-28: {v}"
    );
    let id = request_of(request["params"]["url"].as_str().context("url")?, "alice");
    assert!(
        request["params"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("whoami")
    );
    assert_eq!(consent_record(&stack, &id)?["user"], "alice");
    let state = result["requestState"]
        .as_str()
        .context("requestState")?
        .to_string();
    assert!(!state.contains("alice"), "the state is opaque: {state}");

    // A retry with the state intact, no identity yet: asked again, not refused.
    let r = call_2026(
        &stack,
        &alice,
        json!(6),
        "whoami",
        url_mode.clone(),
        Some(&state),
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()?["result"]["resultType"],
        "input_required",
        "{}",
        r.body
    );

    // Changed by one character: refused, naming the problem.
    let mut tampered = state.clone().into_bytes();
    let i = tampered.len() / 2;
    tampered[i] = if tampered[i] == b'a' { b'b' } else { b'a' };
    let tampered = String::from_utf8(tampered)?;
    let r = call_2026(
        &stack,
        &alice,
        json!(7),
        "whoami",
        url_mode.clone(),
        Some(&tampered),
    )
    .await?;
    assert_eq!(r.status, 400, "{}", r.body);
    let e = assert_jsonrpc_error(&r.body, &json!(7), -32602);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("requestState"),
        "{e}"
    );

    // Alice's state replayed by bob, or on another tool: refused.
    let bob = stack.token("bob").await?;
    let r = call_2026(
        &stack,
        &bob,
        json!(8),
        "whoami",
        url_mode.clone(),
        Some(&state),
    )
    .await?;
    assert_eq!(r.status, 400, "{}", r.body);
    let e = assert_jsonrpc_error(&r.body, &json!(8), -32602);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("another user"),
        "{e}"
    );
    let r = call_2026(
        &stack,
        &alice,
        json!(9),
        "echo",
        url_mode.clone(),
        Some(&state),
    )
    .await?;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_jsonrpc_error(&r.body, &json!(9), -32602);

    // A client that declares no URL mode is told which capability is missing.
    let r = call_2026(
        &stack,
        &alice,
        json!(10),
        "whoami",
        json!({"elicitation": {}}),
        None,
    )
    .await?;
    assert_eq!(r.status, 400, "{}", r.body);
    let e = assert_jsonrpc_error(&r.body, &json!(10), -32021);
    assert_eq!(
        e["error"]["data"]["requiredCapabilities"],
        json!({"elicitation": {"url": {}}})
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(CONNECT_URL),
        "{e}"
    );

    // Once alice has an identity, the retry with her state goes through.
    stack
        .connect_own_identity("alice", "whoami", "alice-whoami")
        .await?;
    let r = call_2026(&stack, &alice, json!(11), "whoami", url_mode, Some(&state)).await?;
    assert!(
        !r.body.contains("input_required") && !r.body.contains("-32602"),
        "{}",
        r.body
    );
    assert_eq!(
        stack.echo.requests().await?,
        1,
        "the retry reached the upstream"
    );
    let seen = stack.echo.seen().await?;
    assert_eq!(
        seen["round_trip_fields"], 0,
        "the gateway's requestState and inputResponses stay at the gateway: {seen}"
    );
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_connect_page_the_refusal_says_who_can_help() -> Result<()> {
    // No [connect]: there is no page to send anyone to.
    let stack = Stack::start("consent_off", StackOptions::default()).await?;
    let alice = stack.token("alice").await?;
    let call = json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"whoami","arguments":{}}}).to_string();
    let r = post_json(
        &stack.url("whoami-mine"),
        Some(&alice),
        &call,
        &[("mcp-protocol-version", "2025-11-25")],
    )
    .await?;
    assert_eq!(r.status, 403, "{}", r.body);
    let e = assert_jsonrpc_error(&r.body, &json!(3), -32003);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("consent needed"),
        "{e}"
    );
    Ok(())
}
