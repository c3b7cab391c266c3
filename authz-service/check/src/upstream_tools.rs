//! What an upstream MCP server says of its tools: its `tools/list`, read
//! over Streamable HTTP (JSON or SSE answers, following cursors), and the
//! annotations of each tool, kept a few minutes per server.
//!
//! `policy lint --probe` lists with no credential; an approval rule over
//! annotations (`[[policy.approvals]] annotations`, only for servers the
//! config trusts to annotate honestly) reads them with the credential the
//! call is about to carry, once per server per [`ANNOTATIONS_TTL`]. A list
//! that cannot be read leaves the annotations unknown, and an approval rule
//! then holds the call (see `approval`): a rule only ever asks for more.
//! Every answer is bounded before it is read.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

/// The most pages of a list read, and bytes in all its answers together:
/// an upstream is hostile until checked, and what it lists is kept.
const MAX_PAGES: usize = 100;
const MAX_LIST_BYTES: usize = 4 * 1024 * 1024;
/// How long a server's annotations are kept.
pub const ANNOTATIONS_TTL: Duration = Duration::from_secs(300);

/// The JSON-RPC messages of a response body: one JSON object, or the
/// `data:` of each SSE event.
pub fn messages(content_type: &str, body: &str) -> Vec<Value> {
    if content_type.starts_with("text/event-stream") {
        let mut out = Vec::new();
        for event in body.split("\n\n") {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if let Ok(v) = serde_json::from_str(&data.join("\n")) {
                out.push(v);
            }
        }
        out
    } else {
        serde_json::from_str(body).into_iter().collect()
    }
}

/// Lists an upstream's tools (each as the server wrote it), sending
/// `credential` (a header name and value) when given. The error says what
/// failed, never the credential.
pub async fn list_tools(
    client: &reqwest::Client,
    url: &str,
    credential: Option<(&str, &str)>,
    client_name: &str,
) -> Result<Vec<Value>, String> {
    let mut session: Option<String> = None;
    let mut read = 0usize;
    let mut post = async |body: Value| -> Result<Vec<Value>, String> {
        let mut req = client
            .post(url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25");
        if let Some((name, value)) = credential {
            req = req.header(name, value);
        }
        if let Some(s) = &session {
            req = req.header("mcp-session-id", s);
        }
        let mut resp = req
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| format!("POST {url}: {}", e.without_url()))?;
        let status = resp.status();
        if let Some(s) = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
        {
            session = Some(s.to_owned());
        }
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("reading {url}: {}", e.without_url()))?
        {
            read += chunk.len();
            if read > MAX_LIST_BYTES {
                return Err(format!(
                    "{url} answered more than {MAX_LIST_BYTES} bytes in all while listing its tools"
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(format!("{url} answered HTTP {status}"));
        }
        Ok(messages(&content_type, &String::from_utf8_lossy(&bytes)))
    };
    post(
        json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},
        "clientInfo":{"name":client_name,"version":env!("CARGO_PKG_VERSION")}}}),
    )
    .await?;
    post(json!({"jsonrpc":"2.0","method":"notifications/initialized"})).await?;
    let mut tools = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0..MAX_PAGES {
        let params = cursor.as_ref().map_or(json!({}), |c| json!({"cursor": c}));
        let answers =
            post(json!({"jsonrpc":"2.0","id":page + 2,"method":"tools/list","params":params}))
                .await?;
        let result = answers
            .iter()
            .find_map(|m| m.get("result"))
            .ok_or_else(|| format!("{url} gave no tools/list result"))?;
        tools.extend(result["tools"].as_array().into_iter().flatten().cloned());
        cursor = result["nextCursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    Ok(tools)
}

/// Each tool's `annotations`, by name.
pub type Annotations = HashMap<String, Value>;

/// The annotations of each trusted server's tools, kept for
/// [`ANNOTATIONS_TTL`]; a list that failed is not kept.
#[derive(Clone)]
pub struct ToolAnnotations {
    http: reqwest::Client,
    by_server: moka::future::Cache<String, Arc<Annotations>>,
}

impl Default for ToolAnnotations {
    fn default() -> Self {
        ToolAnnotations {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            by_server: moka::future::Cache::builder()
                .max_capacity(1024)
                .time_to_live(ANNOTATIONS_TTL)
                .build(),
        }
    }
}

impl ToolAnnotations {
    /// `tool`'s annotations on `server` (at `url`), listing its tools with
    /// `credential` when they are not known; `None` when they cannot be
    /// read (the list failed) — the caller treats that as unknown.
    pub async fn of(
        &self,
        server: &str,
        url: &str,
        credential: Option<(&str, &str)>,
        tool: &str,
    ) -> Option<Value> {
        let listed = self
            .by_server
            .try_get_with(server.to_owned(), async {
                let tools = list_tools(&self.http, url, credential, "latchkey").await?;
                let mut by_name = Annotations::new();
                for t in tools {
                    if let Some(name) = t["name"].as_str() {
                        by_name.insert(
                            name.to_owned(),
                            t.get("annotations").cloned().unwrap_or(json!({})),
                        );
                    }
                }
                Ok::<_, String>(Arc::new(by_name))
            })
            .await;
        match listed {
            Ok(by_name) => Some(by_name.get(tool).cloned().unwrap_or(json!({}))),
            Err(e) => {
                tracing::warn!(server, error = %e, "could not read the server's tool annotations");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_and_json_bodies_give_their_messages() {
        let sse = "event: message\ndata: {\"id\":1}\n\ndata: {\"id\":\ndata: 2}\n\n";
        assert_eq!(
            messages("text/event-stream", sse),
            vec![json!({"id":1}), json!({"id":2})]
        );
        assert_eq!(
            messages("application/json", "{\"id\":3}"),
            vec![json!({"id":3})]
        );
        assert!(messages("application/json", "nope").is_empty());
    }
}
