//! Clients: a real MCP client (the official Rust SDK over Streamable HTTP)
//! and a raw HTTP helper for sending exactly the bytes a scenario needs.

use anyhow::{Context, Result};
use rmcp::RoleClient;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult, Tool};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

pub struct McpClient {
    service: RunningService<RoleClient, ()>,
}

impl McpClient {
    /// Connects and runs `initialize` with `Authorization: Bearer <token>`.
    pub async fn connect(url: &str, token: &str) -> Result<McpClient> {
        let config = StreamableHttpClientTransportConfig::with_uri(url.to_string())
            .auth_header(token.to_string());
        let transport = StreamableHttpClientTransport::from_config(config);
        let service =
            ().serve(transport)
                .await
                .with_context(|| format!("MCP initialize at {url}"))?;
        Ok(McpClient { service })
    }

    pub fn server_protocol_version(&self) -> Option<String> {
        self.service
            .peer_info()
            .map(|i| i.protocol_version.to_string())
    }

    pub async fn list_tools(&self) -> Result<Vec<Tool>> {
        Ok(self.service.list_all_tools().await?)
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
        Ok(self.service.call_tool(params).await?)
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
    let client = reqwest::Client::new();
    let mut req = client.request(method.parse()?, url).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await?;
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
    let mut req = reqwest::Client::new().request(method.parse()?, url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await?;
    Ok((resp.status().as_u16(), resp.headers().clone()))
}

/// POSTs an MCP message the way a Streamable HTTP client does.
pub async fn post_json(
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
    send("POST", url, &headers, body.as_bytes().to_vec()).await
}
