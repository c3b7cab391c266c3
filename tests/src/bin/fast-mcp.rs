//! `fast-mcp`: the upstream of the load benchmark. A minimal, stateless MCP
//! server over Streamable HTTP that answers every request with one
//! `application/json` body (no SSE, no session), so the upstream is never
//! what a benchmark measures:
//! * `initialize` → the protocol version asked for, a `tools` capability;
//! * `tools/list` → 20 fixed tools (`tool_00` … `tool_19`), all at once
//!   or, with `--page-size N`, N per page with `nextCursor`; the first ten
//!   annotated read-only, the rest destructive;
//! * `tools/call` → an echo: one text block naming the tool, and the call's
//!   `arguments` back as `structuredContent.echo`; a name it does not have
//!   gets the failed tool result the TypeScript SDK answers
//!   (`MCP error -32602: Tool <name> not found`);
//! * notifications → 202 with no body; anything else → JSON-RPC -32601.
//!
//! So that a benchmark can check credential injection without logging a
//! secret, a `tools/call` answer also says what `Authorization` header
//! reached it (`structuredContent.credential`): `"expected"` when it equals
//! `FAST_MCP_EXPECT_AUTHORIZATION` (read from the environment, never a
//! flag), `"other"`, or `"none"`; and the SHA-256 of that header's value, in
//! hex (`structuredContent.credential_sha256`, absent without one), so a
//! test can tell exactly which of several credentials arrived ("other" is
//! also true of the client's own token) without the upstream echoing one.
//!
//! Usage: `fast-mcp --port <port> [--page-size N]` (serves `/mcp` on 127.0.0.1).

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

const TOOLS: usize = 20;

/// One page of the tool list: from `cursor` (an index, as text), `page`
/// tools at most (all when `None`).
fn tools(cursor: Option<&str>, page: Option<usize>) -> Value {
    let start = cursor
        .and_then(|c| c.parse::<usize>().ok())
        .unwrap_or(0)
        .min(TOOLS);
    let end = page.map_or(TOOLS, |p| (start + p.max(1)).min(TOOLS));
    let tools: Vec<Value> = (start..end)
        .map(|i| {
            // The first half read, the second half destroy: for approval
            // rules that select tools by their annotations.
            let destructive = i >= TOOLS / 2;
            json!({
                "name": format!("tool_{i:02}"),
                "description": format!("Benchmark tool number {i}"),
                "inputSchema": {
                    "type": "object",
                    "properties": { "text": { "type": "string" } }
                },
                "annotations": { "readOnlyHint": !destructive, "destructiveHint": destructive }
            })
        })
        .collect();
    if end < TOOLS {
        json!({ "tools": tools, "nextCursor": end.to_string() })
    } else {
        json!({ "tools": tools })
    }
}

/// What `Authorization` header reached the upstream, compared with the one
/// the benchmark expects to be injected.
fn credential_seen(headers: &HeaderMap, expected: Option<&str>) -> &'static str {
    match headers.get(header::AUTHORIZATION) {
        None => "none",
        Some(v) if expected.is_some_and(|e| v.as_bytes() == e.as_bytes()) => "expected",
        Some(_) => "other",
    }
}

/// The hex SHA-256 of the `Authorization` value that reached the upstream.
fn credential_digest(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?;
    Some(latchkey_e2e::sha256_hex(&String::from_utf8_lossy(
        value.as_bytes(),
    )))
}

fn answer(body: &[u8], credential: &str, digest: Option<&str>, page: Option<usize>) -> Response {
    let Ok(message) = serde_json::from_slice::<Value>(body) else {
        return json_reply(
            StatusCode::BAD_REQUEST,
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "parse error"}}),
        );
    };
    let Some(id) = message.get("id").cloned() else {
        return StatusCode::ACCEPTED.into_response();
    };
    let method = message["method"].as_str().unwrap_or("");
    let result = match method {
        "initialize" => json!({
            "protocolVersion": message["params"]["protocolVersion"].as_str().unwrap_or("2025-11-25"),
            "capabilities": { "tools": { "listChanged": false } },
            "serverInfo": { "name": "fast-mcp", "version": "1" }
        }),
        "tools/list" => tools(message["params"]["cursor"].as_str(), page),
        "tools/call" => {
            let name = message["params"]["name"].as_str().unwrap_or("");
            let known = name
                .strip_prefix("tool_")
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n < TOOLS && name.len() == 7);
            if !known {
                let text = format!("MCP error -32602: Tool {name} not found");
                return json_reply(
                    StatusCode::OK,
                    json!({"jsonrpc": "2.0", "id": id, "result": {
                        "content": [{ "type": "text", "text": text }], "isError": true}}),
                );
            }
            json!({
                "content": [{ "type": "text", "text": format!("ok {name}") }],
                "structuredContent": {
                    "echo": message["params"]["arguments"],
                    "credential": credential,
                    "credential_sha256": digest,
                },
                "isError": false
            })
        }
        "ping" => json!({}),
        _ => {
            return json_reply(
                StatusCode::OK,
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": format!("method not found: {method}")}}),
            );
        }
    };
    json_reply(
        StatusCode::OK,
        json!({"jsonrpc": "2.0", "id": id, "result": result}),
    )
}

fn json_reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

#[derive(Clone)]
struct Settings {
    expected: Option<std::sync::Arc<str>>,
    page: Option<usize>,
}

async fn mcp(State(settings): State<Settings>, headers: HeaderMap, body: Bytes) -> Response {
    answer(
        &body,
        credential_seen(&headers, settings.expected.as_deref()),
        credential_digest(&headers).as_deref(),
        settings.page,
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut port = None;
    let mut page = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse::<u16>().ok()),
            "--page-size" => page = args.next().and_then(|p| p.parse::<usize>().ok()),
            other => {
                anyhow::bail!("unknown flag {other}; usage: fast-mcp --port <port> [--page-size N]")
            }
        }
    }
    let port = port.context("--port <port> is required")?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{port}"))?;
    let expected: Option<std::sync::Arc<str>> = std::env::var("FAST_MCP_EXPECT_AUTHORIZATION")
        .ok()
        .filter(|v| !v.is_empty())
        .map(Into::into);
    println!("FAST_MCP_READY http://127.0.0.1:{port}/mcp");
    let app = Router::new()
        .route("/mcp", post(mcp))
        .with_state(Settings { expected, page });
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(r: Response) -> Value {
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn answers_the_methods_the_benchmark_sends() {
        let r = answer(
            br#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#,
            "none",
            None,
            None,
        );
        let v = body_of(r).await;
        assert_eq!(v["id"], 7);
        assert_eq!(v["result"]["tools"].as_array().unwrap().len(), TOOLS);
        let v = body_of(answer(
            br#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"tool_03","arguments":{"text":"hi"}}}"#,
            "expected",
            Some("d1g3st"),
            None,
        ))
        .await;
        assert_eq!(v["result"]["content"][0]["text"], "ok tool_03");
        assert_eq!(v["result"]["structuredContent"]["echo"]["text"], "hi");
        assert_eq!(v["result"]["structuredContent"]["credential"], "expected");
        assert_eq!(
            v["result"]["structuredContent"]["credential_sha256"],
            "d1g3st"
        );
        let r = answer(
            br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            "none",
            None,
            None,
        );
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let v = body_of(answer(
            br#"{"jsonrpc":"2.0","id":1,"method":"nope"}"#,
            "none",
            None,
            None,
        ))
        .await;
        assert_eq!(v["error"]["code"], -32601);
    }

    #[tokio::test]
    async fn pages_the_tool_list_when_asked() {
        let list = |cursor: &str| {
            let body = if cursor.is_empty() {
                json!({"jsonrpc":"2.0","id":1,"method":"tools/list"})
            } else {
                json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":cursor}})
            };
            answer(body.to_string().as_bytes(), "none", None, Some(8))
        };
        let v = body_of(list("")).await;
        assert_eq!(v["result"]["tools"].as_array().unwrap().len(), 8);
        assert_eq!(v["result"]["nextCursor"], "8");
        let v = body_of(list("16")).await;
        assert_eq!(v["result"]["tools"][0]["name"], "tool_16");
        assert_eq!(v["result"]["tools"].as_array().unwrap().len(), 4);
        assert!(v["result"].get("nextCursor").is_none());
    }

    #[test]
    fn reports_which_credential_arrived() {
        let mut h = HeaderMap::new();
        assert_eq!(credential_seen(&h, Some("Bearer s")), "none");
        h.insert(header::AUTHORIZATION, "Bearer s".parse().unwrap());
        assert_eq!(credential_seen(&h, Some("Bearer s")), "expected");
        assert_eq!(credential_seen(&h, Some("Bearer t")), "other");
        assert_eq!(credential_seen(&h, None), "other");
        assert_eq!(
            credential_digest(&h).as_deref(),
            Some("5a6ae6dfeb3b5e48eda330849e2c267cf31a70f8d673ce8eb56db64571e2b74e"),
            "SHA-256 of `Bearer s`"
        );
        assert_eq!(credential_digest(&HeaderMap::new()), None);
    }
}
