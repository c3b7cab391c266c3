//! What a caller can learn that the policy hides, tried as an attacker
//! would, through a real Envoy running the Wasm filter against real
//! upstreams: `@modelcontextprotocol/server-everything` (SSE, sessions, an
//! event store that replays on `Last-Event-ID`), `fast-mcp` (stateless,
//! `application/json`) and `auth-echo` (switched to play an upstream that
//! answers with its own authentication challenge).
//!
//! * A list reaches a caller only trimmed to their view, whatever the
//!   request id's spelling and whichever stream carries it (a GET resumed
//!   with `Last-Event-ID` replays earlier answers).
//! * A call to a hidden name is answered as a call to an absent one:
//!   status, content type, `mcp-session-id` and body (modulo the name).
//! * An upstream's 401/403 and its `WWW-Authenticate` never reach the
//!   client; Latchkey's own 401 still carries its challenge.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use latchkey_e2e::attacker::{listed_names as names, reply_shape as shape};
use latchkey_e2e::client::{HttpReply, INITIALIZE, open_sse, parse_sse, post_json, tools_call};
use latchkey_e2e::{Stack, StackOptions};
use serde_json::{Value, json};

const POLICY: &str = r#"
# What the upstreams answer for names they do not have (server-everything:
# TypeScript SDK; fast-mcp mimics its unknown-tool answer).
[policy.hidden.tool]
style = "tool_result"
message = "MCP error -32602: Tool {name} not found"
[policy.hidden.prompt]
message = "MCP error -32602: Prompt {name} not found"
[policy.hidden.resource]
code = -32602
message = "MCP error -32602: Resource {name} not found"

[[policy.grants]]
name = "everyone"
gateway = "e2e"
assignments = ["everything", "fast"]
users = ["*"]
tools = { allow = ["echo", "get-sum", "no-such-*", "tool_0?"], deny = ["tool_05"] }
prompts = { allow = ["simple-prompt", "no-such-*"] }
resources = { allow = ["demo://resource/static/document/*", "demo://no-such/*"] }
"#;

/// Initializes a session with server-everything; returns its id and the
/// SSE event id of the `initialize` answer (the event store's first).
async fn session(stack: &Stack, token: &str) -> Result<(String, String)> {
    let reply = post_json(&stack.url("everything"), Some(token), INITIALIZE, &[]).await?;
    if reply.status != 200 {
        bail!("initialize: {} {}", reply.status, reply.body);
    }
    let session = reply
        .header("mcp-session-id")
        .context("no session id")?
        .to_owned();
    let first_event = parse_sse(&reply.body)?
        .into_iter()
        .find_map(|e| e.id)
        .context("server-everything numbers its events")?;
    let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string();
    let r = post_json(&stack.url("everything"), Some(token), &note, &on(&session)).await?;
    assert_eq!(r.status, 202, "{}", r.body);
    Ok((session, first_event))
}

fn on(session: &str) -> [(&str, &str); 2] {
    [
        ("mcp-session-id", session),
        ("mcp-protocol-version", "2025-11-25"),
    ]
}

/// The one JSON-RPC message of a reply (SSE or JSON).
fn message(reply: &HttpReply) -> Result<Value> {
    let mut messages = reply.messages();
    if messages.len() != 1 {
        bail!("expected one message: {} {}", reply.status, reply.body);
    }
    Ok(messages.remove(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_reaches_a_caller_only_trimmed_whatever_the_id_spelling_or_the_stream() -> Result<()>
{
    let stack = Stack::start(
        "leaks_lists",
        StackOptions {
            everything: true,
            fast_mcp_page_size: Some(20),
            policy: Some(POLICY.to_owned()),
            ..Default::default()
        },
    )
    .await?;
    let alice = stack.token("alice").await?;
    let fast_visible: Vec<String> = (0..10)
        .filter(|i| *i != 5)
        .map(|i| format!("tool_{i:02}"))
        .collect();

    // The same number written several ways, a string that looks like it,
    // and the plain spelling as the control: each answer is trimmed.
    // server-everything (JavaScript) answers `7.0` as `7`.
    let (sid, first_event) = session(&stack, &alice).await?;
    for id in ["7", "7.0", "7e0", "\"7\""] {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#);
        let reply = post_json(&stack.url("everything"), Some(&alice), &body, &on(&sid)).await?;
        assert!(
            reply
                .header("content-type")
                .is_some_and(|c| c.starts_with("text/event-stream")),
            "{reply:?}"
        );
        let answer = message(&reply)?;
        assert_eq!(
            names(&answer, "tools", "name"),
            ["echo", "get-sum"],
            "everything, id {id}"
        );
        assert!(!reply.body.contains("get-env"), "id {id}: {}", reply.body);
    }

    // fast-mcp echoes the id as it was written.
    for id in ["4", "4.0", "4e0", "40e-1", "\"4\""] {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#);
        let reply = post_json(&stack.url("fast"), Some(&alice), &body, &[]).await?;
        assert_eq!(reply.status, 200, "{id}: {}", reply.body);
        let answer = message(&reply)?;
        assert_eq!(
            names(&answer, "tools", "name"),
            fast_visible,
            "fast, id {id}"
        );
        assert!(!reply.body.contains("tool_15"), "id {id}: {}", reply.body);
    }
    // An id no two readers agree on is refused before anything else.
    for id in ["4.5", "9007199254740993"] {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#);
        let reply = post_json(&stack.url("fast"), Some(&alice), &body, &[]).await?;
        assert_eq!(reply.status, 400, "{id}: {}", reply.body);
        assert_eq!(reply.json()?["error"]["code"], -32600, "{}", reply.body);
    }

    // Resuming the session's stream from its first event replays every
    // later answer, the lists above included: the GET stream carries them
    // trimmed too.
    let token = format!("Bearer {alice}");
    let mut replay = open_sse(
        "GET",
        &stack.url("everything"),
        &[
            ("authorization", token.as_str()),
            ("accept", "text/event-stream"),
            ("mcp-session-id", sid.as_str()),
            ("mcp-protocol-version", "2025-11-25"),
            ("last-event-id", first_event.as_str()),
        ],
        Vec::new(),
    )
    .await?;
    assert_eq!(replay.status, 200);
    let mut replayed_lists = 0;
    while replayed_lists < 4 {
        let Some(event) = replay.next_event(Duration::from_secs(10)).await? else {
            break;
        };
        assert!(!event.data.contains("get-env"), "replayed: {}", event.data);
        if event.data.contains("\"tools\":[") {
            // The positive control: the replay happened, visible names included.
            assert_eq!(names(&event.json()?, "tools", "name"), ["echo", "get-sum"]);
            replayed_lists += 1;
        }
    }
    assert_eq!(replayed_lists, 4, "every earlier list was replayed");
    drop(replay);

    let scanned = stack.assert_no_secret_in_logs()?;
    assert!(scanned > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hidden_name_is_answered_exactly_as_an_absent_one() -> Result<()> {
    let stack = Stack::start(
        "leaks_hidden",
        StackOptions {
            everything: true,
            fast_mcp_page_size: Some(20),
            policy: Some(POLICY.to_owned()),
            ..Default::default()
        },
    )
    .await?;
    let alice = stack.token("alice").await?;
    let (sid, _) = session(&stack, &alice).await?;
    // A missing counter is an error, never 0.
    let upstream = |server: &str| -> Result<u64> { stack.envoy.upstream_requests(server) };

    // (what is called, a hidden name, an absent name the policy allows).
    let cases = [
        ("tools/call", "name", "get-env", "no-such-tool"),
        ("prompts/get", "name", "args-prompt", "no-such-prompt"),
        (
            "resources/read",
            "uri",
            "demo://resource/dynamic/text/1",
            "demo://no-such/text/1",
        ),
    ];
    for (method, field, hidden, absent) in cases {
        let call = |name: &str| {
            json!({"jsonrpc":"2.0","id":3,"method":method,"params":{field:name,"arguments":{}}})
                .to_string()
        };
        let before = upstream("everything")?;
        let hidden_reply = post_json(
            &stack.url("everything"),
            Some(&alice),
            &call(hidden),
            &on(&sid),
        )
        .await?;
        assert_eq!(
            upstream("everything")?,
            before,
            "{hidden} reached the upstream"
        );
        let absent_reply = post_json(
            &stack.url("everything"),
            Some(&alice),
            &call(absent),
            &on(&sid),
        )
        .await?;
        assert!(upstream("everything")? > before, "{absent} went upstream");
        let (hidden_shape, absent_shape) =
            (shape(&hidden_reply, hidden)?, shape(&absent_reply, absent)?);
        assert_eq!(hidden_shape, absent_shape, "{method}: hidden vs absent");
        assert_eq!(hidden_shape.2.as_deref(), Some(sid.as_str()), "{method}");
        assert!(hidden_shape.1.starts_with("text/event-stream"), "{method}");
    }

    // A stateless JSON upstream: JSON, no session header, the same body.
    let before = upstream("fast")?;
    let hidden = post_json(
        &stack.url("fast"),
        Some(&alice),
        &tools_call(json!(9), "tool_05"),
        &[],
    )
    .await?;
    assert_eq!(
        upstream("fast")?,
        before,
        "the hidden call reached fast-mcp"
    );
    let absent = post_json(
        &stack.url("fast"),
        Some(&alice),
        &tools_call(json!(9), "tool_0x"),
        &[],
    )
    .await?;
    assert!(upstream("fast")? > before);
    let (hidden_shape, absent_shape) = (shape(&hidden, "tool_05")?, shape(&absent, "tool_0x")?);
    assert_eq!(hidden_shape, absent_shape, "fast: hidden vs absent");
    assert!(hidden_shape.1.starts_with("application/json"));
    assert_eq!(hidden_shape.2, None);
    // The control: a tool it has answers differently.
    let present = post_json(
        &stack.url("fast"),
        Some(&alice),
        &tools_call(json!(9), "tool_04"),
        &[],
    )
    .await?;
    assert_ne!(shape(&present, "tool_04")?, absent_shape);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_upstream_auth_challenge_reaches_the_client() -> Result<()> {
    let stack = Stack::start("leaks_challenge", StackOptions::default()).await?;
    let alice = stack.token("alice").await?;
    let url = stack.url("whoami");
    let evil = r#"Bearer resource_metadata="http://evil.example/.well-known/oauth-protected-resource", error="invalid_token""#;

    // The positive control: Latchkey's own 401 keeps its challenge.
    let reply = post_json(&url, None, &tools_call(json!(1), "whoami"), &[]).await?;
    assert_eq!(reply.status, 401);
    let own = reply.header("www-authenticate").unwrap_or_default();
    assert!(own.contains("resource_metadata="), "{own}");
    assert!(
        own.contains(&stack.gateway_url().replace("/mcp", "")),
        "{own}"
    );
    // And the call works while the upstream plays along.
    let init = post_json(&url, Some(&alice), INITIALIZE, &[]).await?;
    assert_eq!(init.status, 200, "{}", init.body);
    let sid = init
        .header("mcp-session-id")
        .context("auth-echo keeps sessions")?
        .to_owned();
    let session = on(&sid);
    let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string();
    let r = post_json(&url, Some(&alice), &note, &session).await?;
    assert_eq!(r.status, 202, "{}", r.body);
    let reply = post_json(
        &url,
        Some(&alice),
        &tools_call(json!(1), "whoami"),
        &session,
    )
    .await?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(message(&reply)?["result"].is_object(), "{}", reply.body);

    // A shared credential refused with a 401, and a 403 insufficient_scope,
    // each carrying a challenge that points elsewhere.
    for (status, challenge) in [
        (401, evil.to_owned()),
        (
            403,
            format!(r#"{evil}, error="insufficient_scope", scope="admin""#),
        ),
    ] {
        stack.echo.challenge(status, &challenge).await?;
        let before = stack.echo.requests().await?;
        let reply = post_json(
            &url,
            Some(&alice),
            &tools_call(json!(format!("c{status}")), "whoami"),
            &session,
        )
        .await?;
        assert!(
            stack.echo.requests().await? > before,
            "the upstream itself answered {status}"
        );
        assert_eq!(reply.status, 200, "{status}: {}", reply.body);
        assert_eq!(reply.header("www-authenticate"), None, "{status}");
        assert!(!reply.body.contains("evil"), "{}", reply.body);
        let v = latchkey_e2e::client::assert_jsonrpc_error(
            &reply.body,
            &json!(format!("c{status}")),
            -32603,
        );
        let text = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            text.contains(&format!("HTTP {status}")) && text.contains("operator"),
            "{text}"
        );

        // A GET stream has no id to answer: 502, no challenge either.
        let token = format!("Bearer {alice}");
        let get = latchkey_e2e::client::send(
            "GET",
            &url,
            &[
                ("authorization", token.as_str()),
                ("accept", "text/event-stream"),
                ("mcp-session-id", sid.as_str()),
                ("mcp-protocol-version", "2025-11-25"),
            ],
            Vec::new(),
        )
        .await?;
        assert_eq!(get.status, 502, "{}", get.body);
        assert_eq!(get.header("www-authenticate"), None);
    }

    // A challenge header on a success is dropped; the answer goes through.
    stack.echo.challenge(200, evil).await?;
    let reply = post_json(
        &url,
        Some(&alice),
        &tools_call(json!(2), "whoami"),
        &session,
    )
    .await?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(message(&reply)?["result"].is_object(), "{}", reply.body);
    assert_eq!(reply.header("www-authenticate"), None);

    stack.echo.challenge(0, "").await?;
    let scanned = stack.assert_no_secret_in_logs()?;
    assert!(scanned > 0);
    Ok(())
}

/// The connect page's cookies are Latchkey's (a browser on the gateway's
/// host sends them with every request, `Path=/`); an upstream holding one
/// could act on the person's connect page. They never reach the upstream,
/// through the Wasm filter or native ext_authz; the client's own cookies
/// do (the positive control, read from the same record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_pages_cookies_never_reach_an_upstream() -> Result<()> {
    use latchkey_e2e::stack::AuthzMode;
    for mode in [AuthzMode::Wasm, AuthzMode::Native] {
        let stack = Stack::start(
            &format!("leaks_cookies_{mode:?}").to_lowercase(),
            StackOptions {
                mode,
                ..Default::default()
            },
        )
        .await?;
        let alice = stack.token("alice").await?;
        let session = "0123456789abcdef0123456789abcdef";
        stack.remember_secret(session);
        for cookie in [
            format!("__Host-latchkey_connect={session}; theme=dark; latchkey_flow_0a1b=sealed"),
            format!("latchkey_connect={session}"),
            "lang=en".to_string(),
        ] {
            let before = stack.echo.requests().await?;
            let r = post_json(
                &stack.url("whoami"),
                Some(&alice),
                INITIALIZE,
                &[("cookie", cookie.as_str())],
            )
            .await?;
            assert_eq!(r.status, 200, "{mode:?}: {}", r.body);
            assert!(
                stack.echo.requests().await? > before,
                "{mode:?}: went upstream"
            );
        }
        let names = stack.echo.seen_cookie_names().await?;
        assert_eq!(names, ["lang", "theme"], "{mode:?}");
        let scanned = stack.assert_no_secret_in_logs()?;
        assert!(scanned > 0);
    }
    Ok(())
}
