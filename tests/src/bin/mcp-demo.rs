//! `mcp-demo`: what `scripts/start` runs to show the local stack working. A
//! real MCP client (official Rust SDK) goes through Envoy and Latchkey the way
//! any agent would, and each step prints what it saw. Secrets are never
//! printed: the credential the upstream received is compared, not shown.
//!
//! Usage: `mcp-demo --gateway <url> --idp <issuer> --expect-credential-file <file>`

use anyhow::{Context, Result, bail};
use latchkey_e2e::{Idp, McpClient, TokenRequest, post_json};
use serde_json::json;

struct Args {
    gateway: String,
    idp: String,
    expect_file: String,
}

fn args() -> Result<Args> {
    let mut gateway = None;
    let mut idp = None;
    let mut expect_file = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--gateway" => gateway = Some(value),
            "--idp" => idp = Some(value),
            "--expect-credential-file" => expect_file = Some(value),
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(Args {
        gateway: gateway.context("--gateway is required")?,
        idp: idp.context("--idp is required")?,
        expect_file: expect_file.context("--expect-credential-file is required")?,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = args()?;
    let whoami = format!("{}/whoami", a.gateway);
    let everything = format!("{}/everything", a.gateway);
    let step = |s: &str| println!("\n▶ {s}");

    step("A client without a token is told where to get one");
    let r = post_json(
        &whoami,
        None,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        &[],
    )
    .await?;
    println!(
        "  HTTP {}  WWW-Authenticate: {}",
        r.status,
        r.header("www-authenticate").unwrap_or("-")
    );
    let md_url = r
        .header("www-authenticate")
        .and_then(|h| h.split("resource_metadata=\"").nth(1))
        .and_then(|s| s.split('"').next())
        .context("no resource_metadata in the challenge")?
        .to_string();
    let md: serde_json::Value = reqwest::get(&md_url).await?.json().await?;
    println!(
        "  {md_url} → authorization_servers = {}",
        md["authorization_servers"]
    );
    if r.status != 401 {
        bail!("expected 401 without a token");
    }

    step("It gets a token from the identity provider (client credentials, aud = the gateway)");
    let idp = Idp::at(&a.idp);
    let token = idp.token(&TokenRequest::new("alice", &a.gateway)).await?;
    println!(
        "  token for sub=alice, client_id=e2e-agent ({} chars)",
        token.len()
    );

    step(&format!(
        "MCP client → {whoami}: initialize, tools/list, tools/call whoami"
    ));
    let client = McpClient::connect(&whoami, &token).await?;
    let tools = client.list_tools().await?;
    println!(
        "  tools: {}",
        tools
            .iter()
            .map(|t| t.name.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let seen = McpClient::text(&client.call_tool("whoami", json!({})).await?);
    client.close().await?;
    let expected = std::fs::read_to_string(&a.expect_file)
        .with_context(|| format!("reading {}", a.expect_file))?;
    let is_service_account = seen == format!("Bearer {}", expected.trim());
    let has_client_token = seen.contains(&token);
    println!(
        "  upstream received the gateway's service-account credential: {}",
        yes(is_service_account)
    );
    println!(
        "  upstream received the client's token:                      {}",
        yes(has_client_token)
    );
    if !is_service_account || has_client_token {
        bail!("the upstream did not receive the service-account credential");
    }

    step(&format!(
        "MCP client → {everything}: server-everything through the same gateway"
    ));
    let client = McpClient::connect(&everything, &token).await?;
    let tools = client.list_tools().await?;
    println!("  {} tools listed", tools.len());
    let echoed = McpClient::text(
        &client
            .call_tool("echo", json!({"message": "hello through Latchkey"}))
            .await?,
    );
    println!("  echo → {echoed}");
    client.close().await?;

    step("Bad input never reaches the upstream");
    let r = post_json(&whoami, Some(&token), "[]", &[]).await?;
    println!("  batch → HTTP {} {}", r.status, r.body);
    println!("\nThe local stack works.");
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
