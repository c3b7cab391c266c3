//! The foundation path end to end, with the real parts: an MCP client
//! (official Rust SDK) → Envoy 1.40 loading `latchkey_filter.wasm` →
//! `latchkey serve` (gRPC Check) → upstream MCP servers, with Redis and the
//! identity provider (oauth2-mock-server). Each scenario asserts what the
//! client saw and what the upstream received, then scans every log of the
//! run for the secrets it used.

use std::time::Duration;

use anyhow::Result;
use latchkey_e2e::client::{INITIALIZE as INIT, assert_jsonrpc_error, tools_call as call};
use latchkey_e2e::peers::{TokenRequest, jwt_claims, jwt_header, tamper_signature};
use latchkey_e2e::stack::AuthzMode;
use latchkey_e2e::{McpClient, Stack, StackOptions, post_json};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_token_reaches_upstream_with_service_account_credential() -> Result<()> {
    let stack = Stack::start(
        "valid_token",
        StackOptions {
            everything: true,
            ..Default::default()
        },
    )
    .await?;
    let token = stack.token("alice").await?;

    // The credential-reporting upstream, through a real MCP client.
    let client = McpClient::connect(&stack.url("whoami"), &token).await?;
    let tools = client.list_tools().await?;
    assert!(tools.iter().any(|t| t.name == "whoami"), "{tools:?}");
    let result = client.call_tool("whoami", json!({})).await?;
    assert_eq!(
        McpClient::text(&result),
        format!("Bearer {}", stack.whoami_secret),
        "upstream must receive the service-account credential"
    );
    client.close().await?;

    let seen = stack.echo.seen().await?;
    let auths: Vec<&str> = seen["authorization"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        auths.len() >= 3,
        "initialize, list and call at least: {seen}"
    );
    for a in &auths {
        assert_eq!(*a, format!("Bearer {}", stack.whoami_secret));
        assert!(!a.contains(&token), "client token reached upstream");
    }

    // server-everything: tools list and a call, through the same gateway.
    let client = McpClient::connect(&stack.url("everything"), &token).await?;
    let tools = client.list_tools().await?;
    assert!(tools.iter().any(|t| t.name == "echo"), "{tools:?}");
    let result = client
        .call_tool("echo", json!({"message": "through latchkey"}))
        .await?;
    assert!(
        McpClient::text(&result).contains("through latchkey"),
        "{result:?}"
    );
    client.close().await?;

    // SSE streams through intact: initialize answered as text/event-stream
    // with a session, then a GET stream and a DELETE are authenticated too.
    let reply = post_json(&stack.url("everything"), Some(&token), INIT, &[]).await?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply
            .header("content-type")
            .unwrap_or_default()
            .starts_with("text/event-stream")
    );
    let session = reply
        .header("mcp-session-id")
        .expect("session id")
        .to_string();
    let messages = reply.messages();
    assert_eq!(messages.len(), 1, "{}", reply.body);
    assert_eq!(messages[0]["id"], 1);
    assert!(
        messages[0]["result"]["serverInfo"]["name"].is_string(),
        "{}",
        reply.body
    );

    let session_headers = [
        ("mcp-session-id", session.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string();
    let r = post_json(
        &stack.url("everything"),
        Some(&token),
        &note,
        &session_headers,
    )
    .await?;
    assert_eq!(r.status, 202, "{}", r.body);
    let get_without_token = latchkey_e2e::client::send(
        "GET",
        &stack.url("everything"),
        &[("accept", "text/event-stream"), session_headers[0]],
        vec![],
    )
    .await?;
    assert_eq!(
        get_without_token.status, 401,
        "GET streams are authenticated too"
    );
    let bearer = format!("Bearer {token}");
    let (status, headers) = latchkey_e2e::client::open(
        "GET",
        &stack.url("everything"),
        &[
            ("accept", "text/event-stream"),
            ("authorization", bearer.as_str()),
            session_headers[0],
            session_headers[1],
        ],
    )
    .await?;
    assert_eq!(
        status, 200,
        "an authenticated GET opens the server's SSE stream"
    );
    assert!(
        headers["content-type"]
            .to_str()?
            .starts_with("text/event-stream")
    );
    let delete = latchkey_e2e::client::send(
        "DELETE",
        &stack.url("everything"),
        &[
            ("authorization", bearer.as_str()),
            session_headers[0],
            session_headers[1],
        ],
        vec![],
    )
    .await?;
    assert!(
        delete.status < 300,
        "DELETE with a token ends the session: {} {}",
        delete.status,
        delete.body
    );

    let files = stack.assert_no_secret_in_logs()?;
    assert!(
        files >= 5,
        "expected logs of every process, scanned {files}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_401_pointing_at_metadata_that_resolves() -> Result<()> {
    let mut stack = Stack::start("bad_tokens", StackOptions::default()).await?;
    let aud = stack.gateway_url();
    let expired = stack
        .token_with(&TokenRequest {
            exp_offset: -600,
            ..TokenRequest::new("alice", &aud)
        })
        .await?;
    assert!(jwt_claims(&expired)?["exp"].as_i64().unwrap() < 1_000_000_000_000);
    let wrong_aud = stack
        .token_with(&TokenRequest::new("alice", "http://elsewhere.example/mcp"))
        .await?;
    let wrong_iss = stack
        .token_with(&TokenRequest {
            iss: Some("http://evil.example".into()),
            ..TokenRequest::new("alice", &aud)
        })
        .await?;
    let forged = tamper_signature(&stack.token("alice").await?);
    stack.remember_secret(&forged);

    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, ""),
        ("expired", Some(expired), "expired"),
        ("wrong audience", Some(wrong_aud), "audience"),
        ("wrong issuer", Some(wrong_iss), "issuer"),
        ("bad signature", Some(forged), "signature"),
        ("not a JWT", Some("not-a-jwt".into()), "JWT"),
    ];
    for (i, (label, token, says)) in cases.iter().enumerate() {
        let id = json!(format!("req-{i}"));
        let r = post_json(
            &stack.url("whoami"),
            token.as_deref(),
            &call(id.clone(), "whoami"),
            &[],
        )
        .await?;
        assert_eq!(r.status, 401, "{label}: {}", r.body);
        let challenge = r.header("www-authenticate").unwrap_or_default().to_string();
        let expected_md = format!(
            "http://127.0.0.1:{}/.well-known/oauth-protected-resource/mcp",
            stack.envoy_port
        );
        assert!(challenge.starts_with("Bearer "), "{label}: {challenge}");
        assert!(
            challenge.contains(&format!("resource_metadata=\"{expected_md}\"")),
            "{label}: {challenge}"
        );
        if token.is_some() {
            assert!(
                challenge.contains("error=\"invalid_token\""),
                "{label}: {challenge}"
            );
        }
        let v = assert_jsonrpc_error(&r.body, &id, -32001);
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{label}: {}",
            r.body
        );
        assert_eq!(
            r.header("content-type"),
            Some("application/json"),
            "{label}"
        );

        // The metadata the challenge points at resolves, through Envoy, and names the IdP.
        let md: Value = reqwest::get(&expected_md)
            .await?
            .error_for_status()?
            .json()
            .await?;
        assert_eq!(md["resource"], stack.gateway_url());
        assert_eq!(md["authorization_servers"], json!([stack.idp.issuer()]));
    }
    // And for the assignment path a client was given (RFC 9728 path form).
    let md: Value = reqwest::get(format!(
        "http://127.0.0.1:{}/.well-known/oauth-protected-resource/mcp/whoami",
        stack.envoy_port
    ))
    .await?
    .json()
    .await?;
    assert_eq!(md["resource"], stack.gateway_url());

    assert_eq!(
        stack.echo.requests().await?,
        0,
        "no unauthenticated request may reach upstream"
    );

    // The IdP rotates keys: tokens signed with the new key verify at once
    // (the service re-fetches the JWKS on an unknown kid).
    let idp = stack.idp.process.as_mut().expect("test-owned IdP");
    idp.signal(libc::SIGUSR2);
    idp.wait_for_log("IDP_KEY_ADDED", Duration::from_secs(10))?;
    let mut kids = std::collections::BTreeSet::new();
    for _ in 0..2 {
        let t = stack.token("alice").await?;
        kids.insert(
            jwt_header(&t)?["kid"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        let r = post_json(&stack.url("whoami"), Some(&t), INIT, &[]).await?;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(kids.len(), 2, "tokens from both keys were tried: {kids:?}");
    assert_eq!(
        stack.echo.requests().await?,
        2,
        "the authenticated requests, read the same way, reached upstream"
    );

    // The IdP adds a third key and goes away: a token signed with it cannot
    // be verified (its key cannot be fetched), which is the gateway's
    // failure, not the client's: 503, no challenge, nothing upstream. A
    // token signed with a key fetched before still verifies.
    let idp = stack.idp.process.as_mut().expect("test-owned IdP");
    idp.signal(libc::SIGUSR2);
    idp.wait_for_log_lines("IDP_KEY_ADDED", 2, Duration::from_secs(10))?;
    let mut unseen = None;
    let mut known = None;
    for _ in 0..20 {
        let t = stack.token("alice").await?;
        let kid = jwt_header(&t)?["kid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if kids.contains(&kid) {
            known.get_or_insert(t);
        } else {
            unseen.get_or_insert(t);
        }
        if unseen.is_some() && known.is_some() {
            break;
        }
    }
    let (Some(unseen), Some(known)) = (unseen, known) else {
        anyhow::bail!("the IdP never signed with both its new and an old key");
    };
    if let Some(p) = stack.idp.process.as_mut() {
        p.stop();
    }
    let r = post_json(
        &stack.url("whoami"),
        Some(&unseen),
        &call(json!("k-1"), "whoami"),
        &[],
    )
    .await?;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.header("www-authenticate").is_none(),
        "no challenge: the token may be fine"
    );
    let v = assert_jsonrpc_error(&r.body, &json!("k-1"), -32603);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("signing keys are unavailable"),
        "{}",
        r.body
    );
    assert_eq!(stack.echo.requests().await?, 2, "nothing went upstream");
    let r = post_json(&stack.url("whoami"), Some(&known), INIT, &[]).await?;
    assert_eq!(r.status, 200, "a known key still verifies: {}", r.body);
    assert_eq!(stack.echo.requests().await?, 3);
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_answered_clearly_and_never_forwarded() -> Result<()> {
    let stack = Stack::start(
        "bad_input",
        StackOptions {
            max_body_bytes: 4096,
            ..Default::default()
        },
    )
    .await?;
    let token = stack.token("alice").await?;
    let url = stack.url("whoami");
    let t = Some(token.as_str());

    let r = post_json(&url, t, r#"{"jsonrpc":"2.0","id":5,"method":"#, &[]).await?;
    assert_eq!(r.status, 400);
    assert_jsonrpc_error(&r.body, &Value::Null, -32700);

    let r = post_json(&url, t, r#"{"id":6,"method":"tools/list"}"#, &[]).await?;
    assert_eq!(r.status, 400);
    assert_jsonrpc_error(&r.body, &json!(6), -32600);

    let r = post_json(&url, t, &format!("[{}]", call(json!(7), "whoami")), &[]).await?;
    assert_eq!(r.status, 400);
    let v = assert_jsonrpc_error(&r.body, &Value::Null, -32600);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("batch"),
        "{}",
        r.body
    );

    let big = json!({"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"whoami","arguments":{"pad":"x".repeat(8000)}}}).to_string();
    let r = post_json(&url, t, &big, &[]).await?;
    assert_eq!(r.status, 413, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body)?;
    assert!(
        v["error"]["message"].as_str().unwrap().contains("4096"),
        "{}",
        r.body
    );

    let bearer = format!("Bearer {token}");
    let r = latchkey_e2e::client::send(
        "POST",
        &url,
        &[
            ("content-type", "text/plain"),
            ("authorization", bearer.as_str()),
        ],
        call(json!(9), "whoami").into_bytes(),
    )
    .await?;
    assert_eq!(r.status, 415, "{}", r.body);
    assert_jsonrpc_error(&r.body, &Value::Null, -32600);

    // 2026-07-28 mirrors method and name in headers; they must match the body.
    let r = post_json(
        &url,
        t,
        &call(json!("m-1"), "whoami"),
        &[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "something_else"),
        ],
    )
    .await?;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_jsonrpc_error(&r.body, &json!("m-1"), -32020);

    let r = latchkey_e2e::client::send("PUT", &url, &[("authorization", bearer.as_str())], vec![])
        .await?;
    assert_eq!(r.status, 405, "{}", r.body);

    // Unknown path under the gateway: a JSON-RPC 404, not a bare one.
    let r = post_json(&stack.url("nope"), t, &call(json!(10), "x"), &[]).await?;
    assert_eq!(r.status, 404, "{}", r.body);

    assert_eq!(
        stack.echo.requests().await?,
        0,
        "bad input must never reach upstream"
    );

    // The same gateway still serves a good request afterwards.
    let r = post_json(&url, t, INIT, &[]).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        stack.echo.requests().await?,
        1,
        "the good one went upstream"
    );
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_down_or_slow_fails_closed() -> Result<()> {
    let mut stack = Stack::start(
        "fail_closed",
        StackOptions {
            authz_timeout_ms: 700,
            ..Default::default()
        },
    )
    .await?;
    let token = stack.token("alice").await?;
    let url = stack.url("whoami");

    let ok = post_json(&url, Some(&token), INIT, &[]).await?;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let before = stack.echo.requests().await?;

    // Slow past the filter's timeout: the service is frozen mid-run.
    if let Some(p) = stack.latchkey() {
        p.pause(true);
    }
    let r = post_json(&url, Some(&token), &call(json!(21), "whoami"), &[]).await?;
    if let Some(p) = stack.latchkey() {
        p.pause(false);
    }
    assert_eq!(r.status, 503, "{}", r.body);
    assert_jsonrpc_error(&r.body, &json!(21), -32603);

    // Stopped entirely.
    stack.stop_latchkey();
    let r = post_json(&url, Some(&token), &call(json!("x-22"), "whoami"), &[]).await?;
    assert_eq!(r.status, 503, "{}", r.body);
    let v = assert_jsonrpc_error(&r.body, &json!("x-22"), -32603);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("authorization"),
        "{}",
        r.body
    );
    assert_eq!(
        stack.echo.requests().await?,
        before,
        "nothing passes unchecked"
    );

    // Back again: requests pass again.
    stack.restart_latchkey()?;
    let r = post_json(&url, Some(&token), INIT, &[]).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        stack.echo.requests().await?,
        before + 1,
        "the checked request went upstream"
    );
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_serves_cached_credentials_and_refuses_the_rest() -> Result<()> {
    let mut stack = Stack::start("redis_down", StackOptions::default()).await?;
    let token = stack.token("alice").await?;
    let warm = McpClient::connect(&stack.url("whoami"), &token).await?;
    let before = stack.echo.requests().await?;

    // A Redis that hangs (stopped, not gone: connections stay open and
    // nothing answers) costs at most `[redis] timeout_ms` (500 ms here):
    // Latchkey answers 503 naming the store well before Envoy's Check
    // timeout (2 s), and the cached credential still serves.
    stack.redis.process.pause(true);
    let started = std::time::Instant::now();
    let hung = post_json(
        &stack.url("whoami-late"),
        Some(&token),
        &call(json!(30), "whoami"),
        &[],
    )
    .await;
    let waited = started.elapsed();
    let cached = warm.call_tool("whoami", json!({})).await;
    stack.redis.process.pause(false);
    let r = hung?;
    assert_eq!(r.status, 503, "{}", r.body);
    let v = assert_jsonrpc_error(&r.body, &json!(30), -32603);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Redis"),
        "Latchkey's answer, not Envoy's timeout: {}",
        r.body
    );
    assert!(
        waited < Duration::from_millis(1500),
        "answered within timeout_ms and some slack: {waited:?}"
    );
    assert_eq!(
        McpClient::text(&cached?),
        format!("Bearer {}", stack.whoami_secret)
    );
    let before = before + 1;

    stack.redis.process.stop();
    // Cached: the whoami credential was decrypted a moment ago.
    let result = warm.call_tool("whoami", json!({})).await?;
    assert_eq!(
        McpClient::text(&result),
        format!("Bearer {}", stack.whoami_secret)
    );
    // Never read before: fails closed with a message naming the store.
    let r = post_json(
        &stack.url("whoami-late"),
        Some(&token),
        &call(json!(31), "whoami"),
        &[],
    )
    .await?;
    assert_eq!(r.status, 503, "{}", r.body);
    let v = assert_jsonrpc_error(&r.body, &json!(31), -32603);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("Redis"),
        "{}",
        r.body
    );
    assert_eq!(
        stack.echo.requests().await?,
        before + 1,
        "only the cached call went upstream"
    );
    warm.close().await?;
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_assignment_without_identity_says_consent_is_needed() -> Result<()> {
    let stack = Stack::start("per_user", StackOptions::default()).await?;
    let token = stack.token("bob").await?;
    let r = post_json(
        &stack.url("whoami-mine"),
        Some(&token),
        &call(json!(41), "whoami"),
        &[],
    )
    .await?;
    assert_eq!(r.status, 403, "{}", r.body);
    let v = assert_jsonrpc_error(&r.body, &json!(41), -32003);
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("consent needed") && msg.contains("bob") && msg.contains("whoami"),
        "{msg}"
    );
    assert_eq!(stack.echo.requests().await?, 0);
    // The same user on the shared assignment, read the same way, does.
    let r = post_json(&stack.url("whoami"), Some(&token), INIT, &[]).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(stack.echo.requests().await?, 1);
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_ext_authz_gives_the_same_decisions() -> Result<()> {
    let stack = Stack::start(
        "native",
        StackOptions {
            mode: AuthzMode::Native,
            ..Default::default()
        },
    )
    .await?;
    let token = stack.token("carol").await?;
    let client = McpClient::connect(&stack.url("whoami"), &token).await?;
    let result = client.call_tool("whoami", json!({})).await?;
    assert_eq!(
        McpClient::text(&result),
        format!("Bearer {}", stack.whoami_secret)
    );
    client.close().await?;

    let r = post_json(&stack.url("whoami"), None, &call(json!(51), "whoami"), &[]).await?;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(
        r.header("www-authenticate")
            .unwrap_or_default()
            .contains("resource_metadata=")
    );
    assert_jsonrpc_error(&r.body, &json!(51), -32001);

    let r = post_json(&stack.url("whoami"), Some(&token), "[]", &[]).await?;
    assert_eq!(
        r.status, 400,
        "native path classifies the body too: {}",
        r.body
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

/// The log scan at the level an operator turns on to debug: every replica
/// at `LATCHKEY_LOG=debug`, Envoy at debug (the Wasm filter's and
/// ext_authz's loggers included), through shared and per-user credentials,
/// a forged token and the admin CLI. No log of the run, the peers'
/// included, shows any secret or any 16-character piece of one (of a
/// token: of its signature).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_shows_in_any_log_even_at_debug_level() -> Result<()> {
    let stack = Stack::start(
        "debug_logs",
        StackOptions {
            debug_logs: true,
            ..Default::default()
        },
    )
    .await?;
    let token = stack.token("alice").await?;
    let client = McpClient::connect(&stack.url("whoami"), &token).await?;
    let result = client.call_tool("whoami", json!({})).await?;
    assert_eq!(
        McpClient::text(&result),
        format!("Bearer {}", stack.whoami_secret)
    );
    client.close().await?;

    let secret = stack
        .connect_own_identity("alice", "whoami", "alice-whoami")
        .await?;
    let client = McpClient::connect(&stack.url("whoami-mine"), &token).await?;
    let result = client.call_tool("whoami", json!({})).await?;
    assert_eq!(McpClient::text(&result), format!("Bearer {secret}"));
    client.close().await?;

    let forged = tamper_signature(&stack.token("alice").await?);
    stack.remember_secret(&forged);
    let r = post_json(&stack.url("whoami"), Some(&forged), INIT, &[]).await?;
    assert_eq!(r.status, 401, "{}", r.body);

    // The run did log at debug (else the scan below proves nothing).
    let latchkey_log = stack.latchkey().map(|p| p.log_text()).unwrap_or_default();
    assert!(
        latchkey_log.contains("\"level\":\"DEBUG\""),
        "latchkey logged at debug"
    );
    assert!(
        stack.envoy.process.log_text().contains("[debug][wasm]"),
        "Envoy logged the filter at debug"
    );
    let files = stack.assert_no_secret_in_logs()?;
    assert!(
        files >= 5,
        "expected logs of every process, scanned {files}"
    );
    Ok(())
}
