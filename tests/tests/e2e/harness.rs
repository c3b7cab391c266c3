//! Proves the harness itself with the real parts and neither Envoy nor
//! Latchkey: Redis answers PING, the identity provider issues the tokens the
//! scenarios need (overrides of sub/aud/exp/iss/scope/client take effect)
//! and serves its JWKS, and a real rmcp client talks directly to both
//! upstream MCP servers. Every process is stopped at the end, so running the
//! test again passes too.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use latchkey_e2e::{
    AuthEcho, Everything, Idp, McpClient, Redis, TokenRequest, jwt_claims, jwt_header, post_json,
    scenario_dir, secrets_scan, tamper_signature,
};
use serde_json::{Value, json};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_starts_real_peers_and_talks_to_them() -> Result<()> {
    let dir = scenario_dir("harness")?;

    // Redis, our own, on a free port.
    let redis = Redis::start(&dir)?;
    redis.ping()?;
    ensure!(redis.command(&["SET", "k", "v"])?.starts_with("+OK"));
    ensure!(redis.command(&["GET", "k"])? == "$1\r\nv\r\n");

    // The identity provider: tokens shaped by the request, and its JWKS.
    let idp = Idp::start(&dir)?;
    let aud = "http://127.0.0.1:1/mcp";
    let token = idp
        .token(
            &TokenRequest::new("alice", aud)
                .client("agent-7")
                .scope("tools:read tools:call"),
        )
        .await?;
    let claims = jwt_claims(&token)?;
    assert_eq!(claims["sub"], "alice", "{claims}");
    assert_eq!(claims["aud"], aud, "{claims}");
    assert_eq!(claims["iss"], idp.issuer(), "{claims}");
    assert_eq!(claims["client_id"], "agent-7", "{claims}");
    assert_eq!(claims["azp"], "agent-7", "{claims}");
    assert_eq!(claims["scope"], "tools:read tools:call", "{claims}");
    let exp = claims["exp"].as_i64().context("exp")?;
    assert!(
        (exp - (now() + 600)).abs() <= 5,
        "exp = now + 600: {claims}"
    );

    let header = jwt_header(&token)?;
    assert_eq!(header["alg"], "RS256", "{header}");
    let jwks = idp.jwks().await?;
    let keys = jwks["keys"].as_array().context("jwks keys")?;
    assert!(
        keys.iter()
            .any(|k| k["kid"] == header["kid"] && k["kty"] == "RSA"),
        "the token's kid is in the JWKS: {jwks}"
    );
    assert!(
        keys.iter().all(|k| k.get("d").is_none()),
        "JWKS must not carry private key parts"
    );
    let discovery: Value = reqwest::get(idp.discovery_url()).await?.json().await?;
    assert_eq!(discovery["issuer"], idp.issuer());
    assert_eq!(discovery["jwks_uri"], idp.jwks_uri());

    let expired = idp
        .token(&TokenRequest::new("alice", aud).expired(120))
        .await?;
    let c = jwt_claims(&expired)?;
    let exp = c["exp"].as_i64().context("exp")?;
    assert!(exp < now() - 100, "expired: {c}");
    assert!(
        c["iat"].as_i64() < Some(exp),
        "issued before it expired: {c}"
    );

    let other_aud = idp
        .token(&TokenRequest::new("alice", "http://elsewhere.example/mcp"))
        .await?;
    assert_eq!(
        jwt_claims(&other_aud)?["aud"],
        "http://elsewhere.example/mcp"
    );

    let other_iss = idp
        .token(&TokenRequest::new("alice", aud).issuer("http://evil.example"))
        .await?;
    assert_eq!(jwt_claims(&other_iss)?["iss"], "http://evil.example");

    let forged = tamper_signature(&token);
    assert_ne!(forged, token);
    assert_eq!(
        forged.rsplit_once('.').map(|p| p.0),
        token.rsplit_once('.').map(|p| p.0),
        "only the signature differs"
    );

    // server-everything, directly, with a real MCP client.
    let everything = Everything::start(&dir)?;
    let client = McpClient::connect(&everything.url(), &token).await?;
    let tools = client.list_tools().await?;
    assert!(tools.iter().any(|t| t.name == "echo"), "{tools:?}");
    let result = client
        .call_tool("echo", json!({"message": "hello harness"}))
        .await?;
    assert_eq!(McpClient::text(&result), "Echo: hello harness");
    client.close().await?;

    // auth-echo (rmcp server): whoami reports the bearer token it got.
    let echo = AuthEcho::start_bin(&dir, env!("CARGO_BIN_EXE_auth-echo"))?;
    let client = McpClient::connect(&echo.url(), &token).await?;
    let tools = client.list_tools().await?;
    assert!(tools.iter().any(|t| t.name == "whoami"), "{tools:?}");
    let result = client.call_tool("whoami", json!({})).await?;
    assert_eq!(McpClient::text(&result), format!("Bearer {token}"));
    client.close().await?;

    let seen = echo.seen().await?;
    let auths = echo.seen_authorizations().await?;
    assert!(auths.len() >= 3, "initialize, list, call at least: {seen}");
    assert!(
        auths.iter().all(|a| *a == format!("Bearer {token}")),
        "{seen}"
    );
    let names = seen["header_names"].as_array().context("header_names")?;
    assert!(names.contains(&json!("authorization")), "{seen}");
    assert!(names.contains(&json!("mcp-session-id")), "{seen}");
    assert_eq!(
        echo.requests().await?,
        seen["requests"].as_u64().unwrap_or(0)
    );

    // Raw HTTP: without a token whoami says "none" (JSON or SSE answer).
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
    let reply = post_json(&echo.url(), None, init, &[]).await?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let session = reply
        .header("mcp-session-id")
        .context("initialize answered without mcp-session-id")?
        .to_string();
    let messages = reply.messages();
    assert_eq!(
        messages.first().map(|m| &m["id"]),
        Some(&json!(1)),
        "{}",
        reply.body
    );
    let extra = [("mcp-session-id", session.as_str())];
    let reply = post_json(
        &echo.url(),
        None,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        &extra,
    )
    .await?;
    assert!(reply.status < 300, "{} {}", reply.status, reply.body);
    let call = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#;
    let reply = post_json(&echo.url(), None, call, &extra).await?;
    let messages = reply.messages();
    let answer = messages
        .iter()
        .find(|m| m["id"] == 2)
        .with_context(|| format!("no answer to id 2: {}", reply.body))?;
    assert_eq!(answer["result"]["content"][0]["text"], "none", "{answer}");

    // Nothing logged the token (the harness' own processes).
    let files = secrets_scan(&dir, &[token.as_str(), expired.as_str()])?;
    assert!(
        files >= 4,
        "redis, idp, everything and auth-echo logs: {files}"
    );

    // Everything stops on drop; the ports are free again.
    let ports = [redis.port, idp.port, everything.port, echo.port];
    drop((redis, idp, everything, echo));
    for port in ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still answers after drop"
        );
    }
    Ok(())
}

#[test]
fn secrets_scan_names_file_and_line() -> Result<()> {
    let dir = scenario_dir("harness_secrets_scan")?;
    std::fs::create_dir_all(dir.join("nested"))?;
    std::fs::write(dir.join("a.log"), "fine\nthe token is s3cr3t-value\n")?;
    std::fs::write(dir.join("nested/b.log"), "s3cr3t-value at the start\n")?;
    std::fs::write(dir.join("c.txt"), "s3cr3t-value in a non-log file\n")?;
    let err = secrets_scan(&dir, &["s3cr3t-value", "absent"])
        .expect_err("the secret is in two logs")
        .to_string();
    assert!(err.contains("a.log:2:"), "{err}");
    assert!(err.contains("b.log:1:"), "{err}");
    assert!(!err.contains("c.txt"), "{err}");
    assert!(
        !err.contains("s3cr3t-value"),
        "the report must not repeat the secret: {err}"
    );
    assert_eq!(secrets_scan(&dir, &["absent"])?, 2);
    Ok(())
}
