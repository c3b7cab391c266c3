//! What an attacker does and reads in the adversarial scenarios, kept
//! in one place so the scenario of every finding (`tests/e2e/attacker.rs`) and
//! the finding's own detailed test use the same moves: a `CheckRequest`
//! sent straight to the gRPC listener, a token with a made-up `kid`,
//! Redis read the way an operator would read it to see what an attack
//! stored, and two answers compared the way someone probing for hidden
//! names would compare them.

use std::time::Duration;

use anyhow::{Context, Result};
use latchkey_proto::auth::attribute_context::{HttpRequest, Request};
use latchkey_proto::auth::authorization_client::AuthorizationClient;
use latchkey_proto::auth::check_response::HttpResponse;
use latchkey_proto::auth::{AttributeContext, CheckRequest};
use serde_json::{Value, json};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::client::{HttpReply, parse_sse, tools_call};
use crate::pki::ClientCert;
use crate::stack::Stack;

/// The audit stream's key under the stacks' prefix.
pub const AUDIT_STREAM: &str = "latchkey:audit";

/// How the attacker's process talks to the Check listener.
pub enum Caller<'a> {
    /// Plain HTTP/2, no TLS at all.
    Plaintext,
    /// TLS trusting the listener's CA, presenting `cert` (or none).
    Tls(Option<&'a ClientCert>),
}

/// A `tools/call` Check for `/mcp/whoami` with alice's valid token, as
/// Envoy's native ext_authz would send it: allowed, its answer carries the
/// service account's secret.
pub fn whoami_check(stack: &Stack, token: &str) -> CheckRequest {
    let mut http = HttpRequest {
        id: "direct-check".into(),
        method: "POST".into(),
        host: format!("127.0.0.1:{}", stack.envoy_port),
        path: "/mcp/whoami".into(),
        raw_body: tools_call(json!(1), "whoami").into_bytes(),
        ..Default::default()
    };
    for (k, v) in [
        ("authorization", format!("Bearer {token}")),
        ("content-type", "application/json".into()),
        ("accept", "application/json, text/event-stream".into()),
        ("mcp-protocol-version", "2025-11-25".into()),
    ] {
        http.headers.insert(k.into(), v);
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(http),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// Sends `request` to replica 0's gRPC listener as `caller`: the headers
/// an allowed answer sets (where the credential rides), or why there was
/// no answer.
pub async fn direct_check(
    stack: &Stack,
    caller: Caller<'_>,
    request: CheckRequest,
) -> Result<Vec<(String, String)>, String> {
    let port = stack.replicas[0].grpc_port;
    let endpoint = match &caller {
        Caller::Plaintext => Endpoint::from_shared(format!("http://127.0.0.1:{port}")),
        Caller::Tls(_) => Endpoint::from_shared(format!("https://127.0.0.1:{port}")),
    }
    .map_err(|e| e.to_string())?
    .connect_timeout(Duration::from_secs(3))
    .timeout(Duration::from_secs(5));
    let endpoint = match caller {
        Caller::Plaintext => endpoint,
        Caller::Tls(cert) => {
            let pki = stack.grpc_pki.as_ref().expect("an mTLS stack");
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(pki.ca_pem_text()))
                .domain_name("localhost");
            if let Some(c) = cert {
                // One PEM with both: each side takes the section it needs.
                tls = tls.identity(Identity::from_pem(&c.identity_pem, &c.identity_pem));
            }
            endpoint.tls_config(tls).map_err(|e| e.to_string())?
        }
    };
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let reply = AuthorizationClient::new(channel)
        .check(request)
        .await
        .map_err(|s| format!("status {:?}: {}", s.code(), s.message()))?
        .into_inner();
    match reply.http_response {
        Some(HttpResponse::OkResponse(ok)) => Ok(ok
            .headers
            .into_iter()
            .filter_map(|h| h.header)
            .map(|h| (h.key, h.value))
            .collect()),
        other => Err(format!("answered, but not allowed: {other:?}")),
    }
}

/// An integer reply from Redis (`:N`); `$-1` (no such key) is an error.
pub fn redis_int(stack: &Stack, args: &[&str]) -> Result<u64> {
    let reply = stack.redis.command(args)?;
    reply
        .strip_prefix(':')
        .and_then(|r| r.trim_end().parse().ok())
        .with_context(|| format!("{args:?} answered {reply:?}"))
}

/// Entries and bytes of the audit stream, as Redis counts them.
pub fn audit_stream_size(stack: &Stack) -> Result<(u64, u64)> {
    Ok((
        redis_int(stack, &["XLEN", AUDIT_STREAM])?,
        redis_int(stack, &["MEMORY", "USAGE", AUDIT_STREAM, "SAMPLES", "0"])?,
    ))
}

/// A token whose header names a `kid` the identity provider never issued
/// (its signature is junk: it is refused either way). Each one makes the
/// verifier fetch the provider's keys again.
pub fn forged_with_unknown_kid(sub: &str, audience: &str) -> String {
    forged_with_kid(sub, audience, &crate::stack::random_hex())
}

/// A token with junk signature whose header names `kid`, whatever it holds
/// (the JSON header carries any string: CR, LF, kilobytes).
pub fn forged_with_kid(sub: &str, audience: &str, kid: &str) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": kid});
    let claims = serde_json::json!({"iss": "http://nowhere.test", "sub": sub, "aud": audience, "exp": 4_000_000_000u64});
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode([7u8; 256])
    )
}

/// The `field` of every entry of `result.<list>` in `message` (e.g. the
/// tools' names of a `tools/list` answer).
pub fn listed_names(message: &Value, list: &str, field: &str) -> Vec<String> {
    message["result"][list]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t[field].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// What a reply looks like to someone comparing two of them: status,
/// content type, session header, and the messages with `name` replaced
/// (as JSON values: member order and spacing are each serialiser's own,
/// see the README).
pub fn reply_shape(
    reply: &HttpReply,
    name: &str,
) -> Result<(u16, String, Option<String>, Vec<String>)> {
    let content_type = reply.header("content-type").unwrap_or("").to_owned();
    let body = if content_type.starts_with("text/event-stream") {
        // The SSE framing of each message (its `event` type and data). An
        // upstream with an event store also numbers its events and opens
        // the stream with a priming event (an id, empty data), which
        // Latchkey's answer cannot (see the README): those are left out.
        parse_sse(&reply.body)?
            .into_iter()
            .filter(|e| !e.data.trim().is_empty())
            .map(|e| Ok(format!("event={:?} data={}", e.event, e.json()?)))
            .collect::<Result<_>>()?
    } else {
        vec![reply.json()?.to_string()]
    };
    Ok((
        reply.status,
        content_type,
        reply.header("mcp-session-id").map(str::to_owned),
        body.into_iter().map(|b| b.replace(name, "NAME")).collect(),
    ))
}
