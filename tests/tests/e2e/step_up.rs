//! High-risk calls through a real Envoy running the Wasm filter, with
//! tokens from the real identity provider: a grant that needs token scopes
//! for a tool (403 `insufficient_scope` naming them, the MCP step-up
//! authorization challenge), a step-up rule that needs a multi-factor and
//! recent sign-in (401 `insufficient_user_authentication`, RFC 9470), and
//! CEL conditions over the token's claims and the call's arguments. Every
//! refusal is paired with the same call by a token that meets it, and the
//! upstream's request count is read both times.

use anyhow::{Context, Result};
use latchkey_e2e::client::{assert_jsonrpc_error, post_json};
use latchkey_e2e::{Stack, StackOptions, TokenRequest};
use serde_json::{Value, json};

const POLICY: &str = r#"
[[policy.grants]]
name = "acme-staff"
gateway = "e2e"
assignments = ["fast"]
users = ["*"]
tools = { allow = ["tool_0*"] }
scopes = { "tool_01" = ["tools:write"] }
condition = "claims.tenant == 'acme'"

[[policy.grants.constraints]]
tool = "tool_02"
condition = "arguments.amount <= 1000 || 'treasury' in roles"

[[policy.step_up]]
name = "mfa-for-tool-03"
gateway = "e2e"
assignments = ["fast"]
tools = ["tool_03"]
acr_values = ["mfa"]
max_age_secs = 300
"#;

async fn stack(name: &str) -> Result<Stack> {
    Stack::start(
        name,
        StackOptions {
            fast_mcp_page_size: Some(100),
            policy: Some(POLICY.to_string()),
            ..Default::default()
        },
    )
    .await
}

/// A token of `sub` at tenant acme, with what `more` adds.
async fn token(
    stack: &Stack,
    sub: &str,
    more: impl FnOnce(TokenRequest) -> TokenRequest,
) -> Result<String> {
    let req = TokenRequest::new(sub, &stack.gateway_url()).claim("tenant", json!("acme"));
    stack.token_with(&more(req)).await
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn call(id: &str, tool: &str, arguments: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": arguments}})
    .to_string()
}

/// The `name="value"` parameter of a `WWW-Authenticate` challenge.
fn param<'a>(challenge: &'a str, name: &str) -> Option<&'a str> {
    let start = challenge.find(&format!("{name}=\""))? + name.len() + 2;
    let len = challenge.get(start..)?.find('"')?;
    challenge.get(start..start + len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_needing_a_scope_or_a_stronger_sign_in_is_challenged_and_passes_once_the_token_has_it()
-> Result<()> {
    let stack = stack("step_up_challenges").await?;
    let url = stack.url("fast");
    let upstream = || stack.envoy.upstream_requests("fast");

    // tool_01 needs the scope tools:write: still listed without it.
    let plain = token(&stack, "alice", |r| r.scope("openid")).await?;
    let list = post_json(
        &url,
        Some(&plain),
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        &[],
    )
    .await?;
    assert_eq!(list.status, 200, "{}", list.body);
    let listed = list.json()?["result"]["tools"].to_string();
    assert!(listed.contains("\"tool_01\""), "{listed}");

    let before = upstream()?;
    let r = post_json(&url, Some(&plain), &call("s-1", "tool_01", json!({})), &[]).await?;
    assert_eq!(r.status, 403, "{}", r.body);
    let challenge = r.header("www-authenticate").unwrap_or_default().to_string();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert_eq!(
        param(&challenge, "error"),
        Some("insufficient_scope"),
        "{challenge}"
    );
    assert_eq!(
        param(&challenge, "scope"),
        Some("tools:write"),
        "{challenge}"
    );
    let metadata = param(&challenge, "resource_metadata")
        .context("the challenge points at the metadata")?
        .to_string();
    let e = assert_jsonrpc_error(&r.body, &json!("s-1"), -32003);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("tools:write"),
        "{}",
        r.body
    );
    assert_eq!(upstream()?, before, "a refused call reaches no upstream");
    // The metadata lists what the gateway can ask of a token.
    let md: Value = reqwest::get(&metadata)
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(md["scopes_supported"], json!(["tools:write"]), "{md}");
    assert_eq!(md["acr_values_supported"], json!(["mfa"]), "{md}");

    let writer = token(&stack, "alice", |r| r.scope("openid tools:write")).await?;
    let r = post_json(&url, Some(&writer), &call("s-2", "tool_01", json!({})), &[]).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("ok tool_01"), "{}", r.body);
    assert_eq!(
        upstream()?,
        before + 1,
        "the same call with the scope went upstream"
    );

    // tool_03 needs a multi-factor sign-in within 300 s.
    let cases = [
        ("a password sign-in", Some("pwd"), Some(now() - 10), "'pwd'"),
        ("no acr at all", None, Some(now() - 10), "(acr)"),
        (
            "an hour-old multi-factor sign-in",
            Some("mfa"),
            Some(now() - 3600),
            "within 300 s",
        ),
        ("no auth_time", Some("mfa"), None, "(auth_time)"),
    ];
    for (i, (label, acr, auth_time, says)) in cases.into_iter().enumerate() {
        let t = token(&stack, "alice", |mut r| {
            if let Some(a) = acr {
                r = r.claim("acr", json!(a));
            }
            if let Some(t) = auth_time {
                r = r.claim("auth_time", json!(t));
            }
            r
        })
        .await?;
        let id = format!("u-{i}");
        let r = post_json(&url, Some(&t), &call(&id, "tool_03", json!({})), &[]).await?;
        assert_eq!(r.status, 401, "{label}: {}", r.body);
        let challenge = r.header("www-authenticate").unwrap_or_default().to_string();
        assert_eq!(
            param(&challenge, "error"),
            Some("insufficient_user_authentication"),
            "{label}: {challenge}"
        );
        assert_eq!(
            param(&challenge, "acr_values"),
            Some("mfa"),
            "{label}: {challenge}"
        );
        assert_eq!(
            param(&challenge, "max_age"),
            Some("300"),
            "{label}: {challenge}"
        );
        assert_eq!(
            param(&challenge, "resource_metadata"),
            Some(metadata.as_str())
        );
        let e = assert_jsonrpc_error(&r.body, &json!(id), -32001);
        let message = e["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{label}: {message}");
        assert!(message.contains("mfa-for-tool-03"), "{label}: {message}");
    }
    assert_eq!(
        upstream()?,
        before + 1,
        "no refused call reached the upstream"
    );
    let strong = token(&stack, "alice", |r| {
        r.claim("acr", json!("mfa"))
            .claim("auth_time", json!(now() - 10))
    })
    .await?;
    let r = post_json(
        &url,
        Some(&strong),
        &call("u-ok", "tool_03", json!({})),
        &[],
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("ok tool_03"), "{}", r.body);
    assert_eq!(upstream()?, before + 2);
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_over_claims_and_arguments_decide_who_sees_a_tool_and_which_calls_pass()
-> Result<()> {
    let stack = stack("step_up_conditions").await?;
    let url = stack.url("fast");
    let upstream = || stack.envoy.upstream_requests("fast");
    let list = |t: String| {
        let url = url.clone();
        async move {
            let r = post_json(
                &url,
                Some(&t),
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
                &[],
            )
            .await?;
            anyhow::ensure!(r.status == 200, "{}", r.body);
            let tools = r.json()?["result"]["tools"].clone();
            Ok::<usize, anyhow::Error>(tools.as_array().map_or(0, Vec::len))
        }
    };

    // The grant applies to tenant acme only: another tenant sees nothing
    // and a call is answered as for a tool that does not exist.
    let acme = token(&stack, "alice", |r| r).await?;
    let other = stack
        .token_with(
            &TokenRequest::new("oscar", &stack.gateway_url()).claim("tenant", json!("globex")),
        )
        .await?;
    assert_eq!(list(acme.clone()).await?, 10, "tool_00..tool_09 for acme");
    assert_eq!(list(other.clone()).await?, 0, "nothing for another tenant");
    let before = upstream()?;
    let r = post_json(&url, Some(&other), &call("c-1", "tool_00", json!({})), &[]).await?;
    assert_jsonrpc_error(&r.body, &json!("c-1"), -32602);
    assert_eq!(upstream()?, before, "the hidden call reached no upstream");
    let r = post_json(&url, Some(&acme), &call("c-2", "tool_00", json!({})), &[]).await?;
    assert!(r.body.contains("ok tool_00"), "{}", r.body);
    assert_eq!(upstream()?, before + 1, "the same call by acme did");

    // tool_02: at most 1000, judged by value, unless the caller is in treasury.
    let over = call("c-3", "tool_02", json!({"amount": 1.0005e3}));
    let r = post_json(&url, Some(&acme), &over, &[]).await?;
    assert_eq!(r.status, 200, "a refused call is a failed tool result");
    let v = r.json()?;
    assert_eq!(v["result"]["isError"], json!(true), "{v}");
    assert!(v.to_string().contains("arguments.amount <= 1000"), "{v}");
    assert_eq!(
        upstream()?,
        before + 1,
        "nothing over the limit went upstream"
    );
    let within = call("c-4", "tool_02", json!({"amount": 1e3}));
    let r = post_json(&url, Some(&acme), &within, &[]).await?;
    assert!(r.body.contains("ok tool_02"), "{}", r.body);
    assert_eq!(upstream()?, before + 2);
    let treasurer = token(&stack, "tom", |r| r.claim("groups", json!(["treasury"]))).await?;
    let r = post_json(&url, Some(&treasurer), &over, &[]).await?;
    assert!(r.body.contains("ok tool_02"), "{}", r.body);
    assert_eq!(upstream()?, before + 3);
    stack.assert_no_secret_in_logs()?;
    Ok(())
}
