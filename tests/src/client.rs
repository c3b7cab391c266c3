//! Clients: a real MCP client (the official Rust SDK over Streamable HTTP,
//! with a bearer token) and raw HTTP helpers for sending exactly the bytes a
//! scenario needs and reading status, headers and body, SSE included.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use rmcp::RoleClient;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult, Tool};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

/// One HTTP client for every raw exchange: building a client loads the TLS
/// root store, which costs milliseconds in a debug build. Idle connections
/// are not kept, so each exchange still opens its own connection (scenarios
/// restart Envoy on the same port and must not meet a stale one).
fn http() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("an HTTP client")
        })
        .clone()
}

/// A 2025-11-25 `initialize` request with id 1, for raw exchanges.
pub const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"e2e","version":"1"}}}"#;

/// A `tools/call` request of `tool` with no arguments.
pub fn tools_call(id: serde_json::Value, tool: &str) -> String {
    serde_json::json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":{}}})
        .to_string()
}

/// Asserts `body` is a JSON-RPC error with `id` and `code` and a message a
/// person can act on; returns it parsed.
pub fn assert_jsonrpc_error(body: &str, id: &serde_json::Value, code: i64) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON-RPC: {body}"));
    assert_eq!(v["jsonrpc"], "2.0", "{body}");
    assert_eq!(&v["id"], id, "error must carry the request id: {body}");
    assert_eq!(v["error"]["code"], code, "{body}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.len() > 10, "message should say what to do: {body}");
    v
}

/// The bound on one MCP exchange and on one raw HTTP exchange.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A connected, initialized MCP client session.
pub struct McpClient {
    service: RunningService<RoleClient, ()>,
}

impl McpClient {
    /// Connects and runs `initialize` with `Authorization: Bearer <token>`
    /// (rmcp adds the `Bearer ` prefix itself). Bounded to 30 s.
    pub async fn connect(url: &str, token: &str) -> Result<McpClient> {
        let config = StreamableHttpClientTransportConfig::with_uri(url.to_string())
            .auth_header(token.to_string());
        let transport = StreamableHttpClientTransport::from_config(config);
        let service = tokio::time::timeout(CALL_TIMEOUT, ().serve(transport))
            .await
            .with_context(|| format!("MCP initialize at {url}: no answer in {CALL_TIMEOUT:?}"))?
            .with_context(|| format!("MCP initialize at {url}"))?;
        Ok(McpClient { service })
    }

    pub fn server_protocol_version(&self) -> Option<String> {
        self.service
            .peer_info()
            .map(|i| i.protocol_version.to_string())
    }

    /// `tools/list`, following pagination.
    pub async fn list_tools(&self) -> Result<Vec<Tool>> {
        tokio::time::timeout(CALL_TIMEOUT, self.service.list_all_tools())
            .await
            .context("tools/list: no answer in time")?
            .context("tools/list")
    }

    pub async fn call_tool(
        &self,
        name: &str,
        arguments: serde_json::Value,
    ) -> Result<CallToolResult> {
        let mut params = CallToolRequestParams::new(name.to_string());
        if let serde_json::Value::Object(map) = arguments {
            params = params.with_arguments(map);
        }
        tokio::time::timeout(CALL_TIMEOUT, self.service.call_tool(params))
            .await
            .with_context(|| format!("tools/call {name}: no answer in time"))?
            .with_context(|| format!("tools/call {name}"))
    }

    /// The text of the first text content block of a tool result.
    pub fn text(result: &CallToolResult) -> String {
        serde_json::to_value(result)
            .ok()
            .and_then(|v| v["content"][0]["text"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    pub async fn close(self) -> Result<()> {
        let _ = self.service.cancel().await;
        Ok(())
    }
}

/// What came back from a raw HTTP exchange.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {}", self.body))
    }

    /// The JSON of each `data:` line of an SSE body, or the body itself when JSON.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        if self
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream"))
        {
            self.body
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter_map(|d| serde_json::from_str(d.trim()).ok())
                .collect()
        } else {
            serde_json::from_str(&self.body).into_iter().collect()
        }
    }
}

/// Sends one HTTP request with the given method, headers and body.
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<HttpReply> {
    send_with(&http(), method, url, headers, body).await
}

/// [`send`] through a given client (one with a client certificate, say).
pub async fn send_with(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<HttpReply> {
    let mut req = client
        .request(method.parse()?, url)
        .timeout(CALL_TIMEOUT)
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .text()
        .await
        .with_context(|| format!("{method} {url}: reading the body"))?;
    Ok(HttpReply {
        status,
        headers,
        body,
    })
}

/// Sends a request and returns once the response headers arrived, without
/// reading the body (for streams that stay open, like a GET SSE stream).
pub async fn open(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, reqwest::header::HeaderMap)> {
    let mut req = http().request(method.parse()?, url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(CALL_TIMEOUT, req.send())
        .await
        .with_context(|| format!("{method} {url}: no response headers in {CALL_TIMEOUT:?}"))?
        .with_context(|| format!("{method} {url}"))?;
    Ok((resp.status().as_u16(), resp.headers().clone()))
}

/// POSTs an MCP message the way a Streamable HTTP client does.
pub async fn post_json(
    url: &str,
    token: Option<&str>,
    body: &str,
    extra: &[(&str, &str)],
) -> Result<HttpReply> {
    post_json_with(&http(), url, token, body, extra).await
}

/// A 2026-07-28 `tools/call` of `tool` with `arguments` at `url`:
/// capabilities ride in the request's `_meta`, method and name are
/// mirrored into headers; a retry carries `request_state` and accepts the
/// input request `input_key` (what an `InputRequiredResult` named).
pub struct Call2026<'a> {
    pub url: &'a str,
    pub token: &'a str,
    pub id: serde_json::Value,
    pub tool: &'a str,
    pub arguments: serde_json::Value,
    pub capabilities: serde_json::Value,
    pub retry: Option<(&'a str, &'a str)>,
}

pub async fn call_2026(c: Call2026<'_>) -> Result<HttpReply> {
    let mut params = serde_json::json!({"name": c.tool, "arguments": c.arguments, "_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "e2e", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": c.capabilities,
    }});
    if let Some((state, input_key)) = c.retry {
        params["requestState"] = serde_json::json!(state);
        params["inputResponses"] = serde_json::json!({ input_key: {"action": "accept"} });
    }
    let body = serde_json::json!({"jsonrpc":"2.0","id":c.id,"method":"tools/call","params":params})
        .to_string();
    post_json(
        c.url,
        Some(c.token),
        &body,
        &[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", c.tool),
        ],
    )
    .await
}

/// [`post_json`] through a given client.
pub async fn post_json_with(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: &str,
    extra: &[(&str, &str)],
) -> Result<HttpReply> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    headers.extend_from_slice(extra);
    send_with(client, "POST", url, &headers, body.as_bytes().to_vec()).await
}

/// A response whose body is read incrementally as Server-Sent Events, for
/// streams that stay open (a GET SSE stream, a long tool call).
pub struct SseReply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    body: Option<reqwest::Response>,
    buffer: String,
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.data)
            .with_context(|| format!("SSE data not JSON: {}", self.data))
    }
}

impl SseReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The next event; `None` once the stream ended. Fails after `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Result<Option<SseEvent>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(event) = self.take_event() {
                return Ok(Some(event));
            }
            let Some(body) = self.body.as_mut() else {
                return Ok(None);
            };
            let chunk = tokio::time::timeout_at(deadline, body.chunk())
                .await
                .with_context(|| format!("no complete SSE event within {timeout:?}"))??;
            match chunk {
                Some(bytes) => self
                    .buffer
                    .push_str(&String::from_utf8_lossy(&bytes).replace("\r\n", "\n")),
                None => {
                    self.body = None;
                    // A final event without its blank line still counts.
                    if !self.buffer.trim().is_empty() {
                        self.buffer.push_str("\n\n");
                    }
                }
            }
        }
    }

    /// The next event's `data` as JSON (a JSON-RPC message).
    pub async fn next_message(&mut self, timeout: Duration) -> Result<Option<serde_json::Value>> {
        loop {
            match self.next_event(timeout).await? {
                None => return Ok(None),
                // Priming events (an id and empty data) carry no message.
                Some(e) if e.data.is_empty() => continue,
                Some(e) => return e.json().map(Some),
            }
        }
    }

    fn take_event(&mut self) -> Option<SseEvent> {
        let end = self.buffer.find("\n\n")?;
        let block: String = self.buffer.drain(..end + 2).collect();
        let mut event = SseEvent::default();
        let mut data = Vec::new();
        for line in block.lines() {
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "data" => data.push(value.to_string()),
                "event" => event.event = Some(value.to_string()),
                "id" => event.id = Some(value.to_string()),
                _ => {}
            }
        }
        event.data = data.join("\n");
        Some(event)
    }
}

/// Sends a request and returns once the response headers arrived, with the
/// body left to read event by event ([`SseReply::next_event`]).
pub async fn open_sse(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<SseReply> {
    let mut req = http().request(method.parse()?, url).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(CALL_TIMEOUT, req.send())
        .await
        .with_context(|| format!("{method} {url}: no response headers in {CALL_TIMEOUT:?}"))?
        .with_context(|| format!("{method} {url}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    Ok(SseReply {
        status,
        headers,
        body: Some(resp),
        buffer: String::new(),
    })
}

/// Reads a whole (finite) SSE body into its events.
pub fn parse_sse(body: &str) -> Result<Vec<SseEvent>> {
    let mut reply = SseReply {
        status: 0,
        headers: Default::default(),
        body: None,
        buffer: format!("{}\n\n", body.replace("\r\n", "\n")),
    };
    let mut events = Vec::new();
    while let Some(e) = reply.take_event() {
        if !(e.data.is_empty() && e.event.is_none() && e.id.is_none()) {
            events.push(e);
        }
    }
    if events.is_empty() && !body.trim().is_empty() {
        bail!("no SSE events in: {body}");
    }
    Ok(events)
}
