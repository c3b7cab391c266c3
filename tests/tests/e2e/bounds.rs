//! Attacker-sized input through a real Envoy (the Wasm filter, and Envoy's
//! native ext_authz), a real `latchkey serve` and a real Redis: a field
//! over its documented limit is refused before any `Check` with the
//! request's id, so nothing reaches the upstream, the service or the audit
//! stream; a long value that is allowed is audited cut to a bounded size
//! with a marker and a digest; a GET or DELETE carrying a body is refused.
//! Each absence is read from the same counter as a positive control.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use latchkey_core::audit::{FIELD_MAX, MAX_EVENT_BYTES, bound};
use latchkey_e2e::attacker::audit_stream_size;
use latchkey_e2e::client::{assert_jsonrpc_error, send, tools_call};
use latchkey_e2e::stack::AuthzMode;
use latchkey_e2e::{Stack, StackOptions, post_json};
use latchkey_filter::mcp::limits;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// gRPC calls Envoy made to the authorization service (Checks).
const CHECKS: &str = "cluster.latchkey_authz.upstream_rq_total";
/// Requests Envoy sent to the `whoami` upstream.
const UPSTREAM: &str = "cluster.server_whoami.upstream_rq_total";

/// An Envoy counter that must exist: a missing one is a failure, not 0
/// (`Envoy::stat` fails on a counter Envoy does not report).
fn stat(stack: &Stack, name: &str) -> Result<u64> {
    stack.envoy.stat(name)
}

/// The decision events in the stream, waiting until there are `at_least`.
async fn decisions(stack: &Stack, at_least: usize) -> Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events: Vec<Value> = stack
            .audit_events()?
            .into_iter()
            .filter(|e| e["event"] == "decision")
            .collect();
        if events.len() >= at_least {
            return Ok(events);
        }
        if Instant::now() > deadline {
            bail!("{} decision events, expected {at_least}", events.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One request an attacker sends: a POST body (or `None` for a bodiless
/// request of `method`), extra headers, and the answer it must get.
struct Attack {
    what: &'static str,
    method: &'static str,
    body: Option<String>,
    headers: Vec<(&'static str, String)>,
    status: u16,
    id: Value,
}

fn message(id: Value, method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
}

/// Every attacker-chosen field over its limit, and a session id that is
/// not visible ASCII. `huge` sizes the fields that travel in the body.
fn attacks(huge: usize) -> Vec<Attack> {
    let long = |n: usize| "x".repeat(n);
    let post = |what, body: String, status, id: Value| Attack {
        what,
        method: "POST",
        body: Some(body),
        headers: Vec::new(),
        status,
        id,
    };
    let with_header = |what, name, value: String, status| Attack {
        headers: vec![(name, value)],
        ..post(what, message(json!(9), "ping", json!({})), status, json!(9))
    };
    vec![
        post(
            "tool name",
            tools_call(json!(1), &long(huge)),
            413,
            json!(1),
        ),
        post(
            "prompt name",
            message(json!(2), "prompts/get", json!({"name": long(huge)})),
            413,
            json!(2),
        ),
        post(
            "method",
            message(json!(3), &long(huge), json!({})),
            413,
            json!(3),
        ),
        post(
            "resource URI",
            message(
                json!(4),
                "resources/read",
                json!({"uri": format!("file:///{}", long(limits::URI + huge))}),
            ),
            413,
            json!(4),
        ),
        // An over-long id is not echoed back.
        post(
            "string id",
            message(json!(long(huge)), "ping", json!({})),
            413,
            Value::Null,
        ),
        with_header(
            "protocol version header",
            "mcp-protocol-version",
            long(limits::PROTOCOL_VERSION + 1),
            413,
        ),
        with_header(
            "session id over the maximum",
            "mcp-session-id",
            long(limits::SESSION_ID + 1),
            413,
        ),
        with_header(
            "session id with a space",
            "mcp-session-id",
            "a b".into(),
            400,
        ),
        with_header(
            "session id with a control character",
            "mcp-session-id",
            "a\tb".into(),
            400,
        ),
        Attack {
            what: "GET stream with a long session id",
            method: "GET",
            body: None,
            headers: vec![("mcp-session-id", long(limits::SESSION_ID + 1))],
            status: 413,
            id: Value::Null,
        },
    ]
}

async fn send_attack(url: &str, token: Option<&str>, a: &Attack) -> Result<()> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = vec![("accept", "application/json, text/event-stream")];
    if a.body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    if let Some(b) = &bearer {
        headers.push(("authorization", b));
    }
    headers.extend(a.headers.iter().map(|(k, v)| (*k, v.as_str())));
    let body = a.body.clone().unwrap_or_default().into_bytes();
    let r = send(a.method, url, &headers, body).await?;
    let who = if token.is_some() { "token" } else { "no token" };
    ensure!(
        r.status == a.status,
        "{} ({who}): expected {}, got {}: {}",
        a.what,
        a.status,
        r.status,
        r.body.chars().take(300).collect::<String>()
    );
    let v = assert_jsonrpc_error(&r.body, &a.id, -32600);
    let text = v["error"]["message"].as_str().unwrap_or_default();
    ensure!(
        text.len() < 300,
        "{}: the refusal repeats the value: {text}",
        a.what
    );
    Ok(())
}

/// A GET with a chunked body, written by hand (no client library sends one).
async fn chunked_get(stack: &Stack, path: &str, token: &str) -> Result<u16> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", stack.envoy_port)).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\naccept: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await?;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut reply))
        .await
        .context("no answer to the chunked GET")??;
    let text = String::from_utf8_lossy(&reply);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP answer: {text}"))
}

/// A `tools/call` of `whoami` the gateway lets through: answered by the
/// upstream (which wants a session first), not by Latchkey.
async fn forwarded(url: &str, token: &str, id: u64) -> Result<()> {
    let r = post_json(url, Some(token), &tools_call(json!(id), "whoami"), &[]).await?;
    ensure!(
        r.body.contains("Session ID is required"),
        "the upstream did not answer: {} {}",
        r.status,
        r.body
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_fields_are_refused_before_any_check_and_leave_redis_untouched() -> Result<()> {
    let stack = Stack::start(
        "bounds_refused",
        StackOptions {
            // Room for the 1 MB tool name of the report: the body limit
            // alone does not stop it.
            max_body_bytes: 2 << 20,
            ..Default::default()
        },
    )
    .await?;
    let token = stack.token("alice").await?;
    let url = stack.url("whoami");

    // Positive control first (it also creates the stream): a normal call
    // is checked, forwarded and audited with its full name.
    let (checks, upstream) = (stat(&stack, CHECKS)?, stat(&stack, UPSTREAM)?);
    forwarded(&url, &token, 1).await?;
    assert_eq!(stat(&stack, CHECKS)?, checks + 1);
    assert!(stat(&stack, UPSTREAM)? > upstream);
    let events = decisions(&stack, 1).await?;
    assert_eq!(events.last().unwrap()["name"], "whoami");

    let (checks, upstream) = (stat(&stack, CHECKS)?, stat(&stack, UPSTREAM)?);
    let before = audit_stream_size(&stack)?;
    for a in attacks(1_000_000) {
        for t in [None, Some(token.as_str())] {
            send_attack(&url, t, &a).await?;
        }
    }
    for method in ["GET", "DELETE"] {
        let bearer = format!("Bearer {token}");
        let r = send(
            method,
            &url,
            &[
                ("authorization", bearer.as_str()),
                ("content-type", "application/json"),
            ],
            b"{}".to_vec(),
        )
        .await?;
        assert_eq!(r.status, 400, "{method} with a body: {}", r.body);
        let v = assert_jsonrpc_error(&r.body, &Value::Null, -32600);
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("must not carry a body")
        );
    }
    assert_eq!(chunked_get(&stack, "/mcp/whoami", &token).await?, 400);

    // Nothing was checked, forwarded or written.
    assert_eq!(
        stat(&stack, CHECKS)?,
        checks,
        "a refused request made a Check"
    );
    assert_eq!(
        stat(&stack, UPSTREAM)?,
        upstream,
        "a refused request reached upstream"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(audit_stream_size(&stack)?, before, "the audit stream grew");

    // The same counters move for a good request afterwards, and for a GET
    // with no body (the upstream answers it; the filter let it through).
    forwarded(&url, &token, 2).await?;
    let bearer = format!("Bearer {token}");
    let r = send(
        "GET",
        &url,
        &[("authorization", bearer.as_str())],
        Vec::new(),
    )
    .await?;
    assert!(!r.body.contains("must not carry a body"), "{}", r.body);
    assert_eq!(stat(&stack, CHECKS)?, checks + 2);
    assert!(stat(&stack, UPSTREAM)? >= upstream + 2);
    assert!(audit_stream_size(&stack)?.0 > before.0);
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_allowed_value_is_audited_cut_with_a_marker_and_its_digest() -> Result<()> {
    let stack = Stack::start("bounds_audited", StackOptions::default()).await?;
    let token = stack.token("alice").await?;
    let url = stack.url("whoami");
    let uri = |c: char| format!("file:///{}", c.to_string().repeat(3000));
    let read = |id: u64, uri: &str| message(json!(id), "resources/read", json!({"uri": uri}));

    // Two different long URIs (the upstream may refuse them; the
    // decision is what is audited), and one without a token.
    let (a, b) = (uri('a'), uri('b'));
    post_json(&url, Some(&token), &read(1, &a), &[]).await?;
    post_json(&url, Some(&token), &read(2, &b), &[]).await?;
    let r = post_json(&url, None, &read(3, &a), &[]).await?;
    assert_eq!(r.status, 401, "{}", r.body);

    let events = decisions(&stack, 3).await?;
    let names: Vec<&str> = events.iter().filter_map(|e| e["name"].as_str()).collect();
    assert_eq!(names, [bound(&a), bound(&b), bound(&a)], "{events:#?}");
    assert!(names[0].len() <= FIELD_MAX && names[0].starts_with("file:///aaa"));
    assert!(
        names[0].contains(&format!("[truncated: {} bytes, sha256 ", a.len())),
        "{}",
        names[0]
    );
    assert_ne!(names[0], names[1], "two long values stay distinguishable");
    assert_eq!(events[2]["decision"], "deny");
    for e in &events {
        let size = e.to_string().len();
        assert!(
            size <= 2048,
            "{size} bytes, over 2 KiB (the stream cap is {MAX_EVENT_BYTES}): {e}"
        );
    }

    // The control: a URI within the bound is audited whole.
    let short = "file:///short";
    post_json(&url, Some(&token), &read(4, short), &[]).await?;
    let events = decisions(&stack, 4).await?;
    assert_eq!(events[3]["name"], short);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_ext_authz_refuses_absurd_fields_and_bodies_on_get_and_delete() -> Result<()> {
    let stack = Stack::start(
        "bounds_native",
        StackOptions {
            mode: AuthzMode::Native,
            ..Default::default()
        },
    )
    .await?;
    let token = stack.token("alice").await?;
    let url = stack.url("whoami");

    let upstream = stat(&stack, UPSTREAM)?;
    // Behind native ext_authz the service classifies: every refusal is one
    // small bad_request event, never the value.
    let mut sent = 0;
    for a in attacks(20_000) {
        for t in [None, Some(token.as_str())] {
            send_attack(&url, t, &a).await?;
            sent += 1;
        }
    }
    let bearer = format!("Bearer {token}");
    for method in ["GET", "DELETE"] {
        let r = send(
            method,
            &url,
            &[
                ("authorization", bearer.as_str()),
                ("content-type", "application/json"),
            ],
            b"{}".to_vec(),
        )
        .await?;
        assert_eq!(r.status, 400, "{method} with a body: {}", r.body);
        sent += 1;
    }
    assert_eq!(
        stat(&stack, UPSTREAM)?,
        upstream,
        "a refused request reached upstream"
    );
    let events = decisions(&stack, sent).await?;
    for e in &events {
        assert_eq!(e["reason"], "bad_request", "{e}");
        let text = e.to_string();
        assert!(text.len() <= 1024 && !text.contains("xxxxxxxxxx"), "{text}");
    }

    // The control: the same Envoy forwards a good call and a bodiless GET.
    forwarded(&url, &token, 1).await?;
    let r = send(
        "GET",
        &url,
        &[("authorization", bearer.as_str())],
        Vec::new(),
    )
    .await?;
    assert!(!r.body.contains("must not carry a body"), "{}", r.body);
    assert!(stat(&stack, UPSTREAM)? >= upstream + 2);
    Ok(())
}

/// A token's `kid` is the attacker's: a made-up one is named back only
/// when it is short and plain, never as sent when it is long or carries
/// CR/LF (it would land in the `WWW-Authenticate` header, the JSON-RPC
/// message, the log and the audit event). Both modes; the control is a
/// plain unknown `kid`, named back the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokens_kid_is_named_back_only_when_short_and_plain() -> Result<()> {
    use latchkey_e2e::attacker::forged_with_kid;
    for mode in [AuthzMode::Wasm, AuthzMode::Native] {
        let stack = Stack::start(
            &format!("bounds_kid_{mode:?}").to_lowercase(),
            StackOptions {
                mode,
                ..Default::default()
            },
        )
        .await?;
        let url = stack.url("whoami");
        let ping = message(json!(5), "ping", json!({}));
        let refused = async |kid: &str| -> Result<(String, String)> {
            let token = forged_with_kid("mallory", &stack.gateway_url(), kid);
            let r = post_json(&url, Some(&token), &ping, &[]).await?;
            ensure!(r.status == 401, "{mode:?}: {} {:.300}", r.status, r.body);
            ensure!(
                r.header("x-injected").is_none(),
                "{mode:?}: a header was injected"
            );
            let challenge = r
                .header("www-authenticate")
                .with_context(|| {
                    format!("a 401 carries its challenge: {:?} {}", r.headers, r.body)
                })?
                .to_owned();
            let v = assert_jsonrpc_error(&r.body, &json!(5), -32001);
            Ok((
                challenge,
                v["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ))
        };

        // The control: a plain unknown kid is named, so an operator can
        // tell which key the client used.
        let (challenge, text) = refused("rotated-2026-11").await?;
        ensure!(challenge.contains("rotated-2026-11"), "{challenge}");
        ensure!(text.contains("rotated-2026-11"), "{text}");

        let long = format!("k\r\nx-injected: 1\r\n{}", "a".repeat(8000));
        for kid in [long.as_str(), "k\u{7}bell", &"b".repeat(200)] {
            let (challenge, text) = refused(kid).await?;
            for shown in [&challenge, &text] {
                ensure!(
                    shown.len() < 600
                        && !shown.contains("aaaaaaaaaa")
                        && !shown.contains("bbbbbbbbbb"),
                    "{mode:?}: the kid came back: {shown:.300}"
                );
                ensure!(!shown.chars().any(char::is_control), "{mode:?}: {shown:?}");
            }
            ensure!(text.contains("bytes"), "{mode:?}: {text}");
        }
        let events = stack.audit_events()?;
        let text = serde_json::to_string(&events)?;
        ensure!(
            !text.contains("aaaaaaaaaa"),
            "{mode:?}: the kid was audited"
        );
        let log = stack.latchkey().context("replica 0")?.log_text();
        ensure!(!log.contains("aaaaaaaaaa"), "{mode:?}: the kid was logged");
    }
    Ok(())
}
