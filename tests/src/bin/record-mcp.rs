//! `record-mcp`: an upstream MCP server on the official Rust SDK (rmcp,
//! Streamable HTTP at `/mcp`) that records what the SDK parsed of every
//! request it handles, so the differential tests can compare it with what
//! the gateway's policy judged (`tests/tests/differential.rs`; its Python
//! twin is `tests/peers/record_server.py`).
//!
//! * `tools/call`: records the tool name and the `arguments` as rmcp
//!   deserialised them (`{"method", "name", "arguments", "id"}`), for every
//!   name, known or not; then the tool deserialises its own typed
//!   arguments, as rmcp's `Parameters<T>` would, and records what it acted
//!   on (`{"tool", "acted"}`):
//!   `echo { text: String }`, `count { n: i64 }`, `measure { x: f64 }`,
//!   `quota { n: i64 }`, `delete { target: String }` (a tool the policy
//!   hides).
//! * `prompts/get`: records the prompt name (`greet` exists).
//! * `resources/read`: records the URI; the template `rec://item/{id}`
//!   answers any URI with one text content naming it.
//! * `GET /seen`: `{"requests": n, "calls": [...]}` (n counts requests to
//!   `/mcp`, whatever rmcp then does with them).
//!
//! Usage: `record-mcp --port <port>`; prints `RECORD_MCP_READY` once bound.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{Json, Response};
use axum::routing::get;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, GetPromptRequestParams,
    GetPromptResponse, ListPromptsResult, ListResourceTemplatesResult, ListToolsResult,
    NumberOrString, PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse,
    ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

#[derive(Default)]
struct Seen {
    requests: u64,
    calls: Vec<Value>,
}

type SharedSeen = Arc<Mutex<Seen>>;

#[derive(Clone)]
struct Record(SharedSeen);

impl Record {
    fn push(&self, call: Value) {
        if let Ok(mut s) = self.0.lock() {
            s.calls.push(call);
        }
    }
}

fn id_json(id: &NumberOrString) -> Value {
    match id {
        NumberOrString::Number(n) => json!(n),
        NumberOrString::String(s) => json!(&**s),
    }
}

/// An rmcp model value from its JSON, for the few fixed answers: the
/// shape is the protocol's, whatever constructors this rmcp version has.
fn model<T: DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("a fixed, valid MCP value")
}

#[derive(serde::Deserialize, serde::Serialize)]
struct Echo {
    text: String,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct Count {
    n: i64,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct Measure {
    x: f64,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct Delete {
    target: String,
}

/// Deserialises a tool's typed arguments from what rmcp parsed, records
/// what the tool acted on and answers with it; a type mismatch is the
/// tool's error, as `Parameters<T>` would answer.
fn act<T: DeserializeOwned + serde::Serialize>(
    record: &Record,
    tool: &str,
    arguments: &Value,
) -> CallToolResult {
    match serde_json::from_value::<T>(arguments.clone()) {
        Ok(typed) => {
            let acted = serde_json::to_value(&typed).unwrap_or(Value::Null);
            record.push(json!({"tool": tool, "acted": acted}));
            CallToolResult::structured(json!({"tool": tool, "acted": acted}))
        }
        Err(e) => CallToolResult::error(vec![model(json!({
            "type": "text",
            "text": format!("invalid arguments for {tool}: {e}")
        }))]),
    }
}

impl ServerHandler for Record {
    fn get_info(&self) -> ServerConfig {
        model(json!({
            "protocolVersion": "2025-11-25",
            "capabilities": {"tools": {}, "prompts": {}, "resources": {}},
            "serverInfo": {"name": "record-mcp", "version": "1"}
        }))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let tool = |name: &str, arg: &str, kind: &str| {
            json!({"name": name, "inputSchema": {"type": "object",
                "properties": {arg: {"type": kind}}, "required": [arg]}})
        };
        Ok(model(json!({"tools": [
            tool("echo", "text", "string"),
            tool("count", "n", "integer"),
            tool("quota", "n", "integer"),
            tool("measure", "x", "number"),
            tool("delete", "target", "string"),
        ]})))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let arguments = request.arguments.map(Value::Object).unwrap_or(Value::Null);
        self.push(json!({
            "method": "tools/call",
            "name": &*request.name,
            "arguments": &arguments,
            "id": id_json(&context.id),
        }));
        let result = match &*request.name {
            "echo" => act::<Echo>(self, "echo", &arguments),
            "count" | "quota" => act::<Count>(self, &request.name, &arguments),
            "measure" => act::<Measure>(self, "measure", &arguments),
            "delete" => act::<Delete>(self, "delete", &arguments),
            other => {
                return Err(McpError::invalid_params(
                    format!("Tool {other} not found"),
                    None,
                ));
            }
        };
        Ok(result.into())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        Ok(model(json!({"prompts": [{"name": "greet"}]})))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        self.push(json!({
            "method": "prompts/get",
            "name": &request.name,
            "id": id_json(&context.id),
        }));
        if request.name != "greet" {
            return Err(McpError::invalid_params(
                format!("Prompt {} not found", request.name),
                None,
            ));
        }
        let result: rmcp::model::GetPromptResult = model(json!({"messages": [
            {"role": "user", "content": {"type": "text", "text": "Hello"}}
        ]}));
        Ok(result.into())
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(model(json!({"resourceTemplates": [
            {"uriTemplate": "rec://item/{id}", "name": "item"}
        ]})))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        self.push(json!({
            "method": "resources/read",
            "uri": &request.uri,
            "id": id_json(&context.id),
        }));
        let result: rmcp::model::ReadResourceResult = model(json!({"contents": [
            {"uri": &request.uri, "text": format!("item at {}", request.uri)}
        ]}));
        Ok(result.into())
    }
}

async fn count_requests(State(seen): State<SharedSeen>, request: Request, next: Next) -> Response {
    if request.uri().path().starts_with("/mcp")
        && let Ok(mut s) = seen.lock()
    {
        s.requests += 1;
    }
    next.run(request).await
}

async fn seen(State(seen): State<SharedSeen>) -> Json<Value> {
    let s = seen
        .lock()
        .map(|s| json!({"requests": s.requests, "calls": s.calls}));
    Json(s.unwrap_or_else(|_| json!({"error": "poisoned"})))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    const USAGE: &str = "usage: record-mcp --port <port>";
    let mut args = std::env::args().skip(1);
    let port: u16 = match (args.next().as_deref(), args.next()) {
        (Some("--port"), Some(p)) => p.parse()?,
        _ => anyhow::bail!(USAGE),
    };
    let seen_state: SharedSeen = Arc::default();
    let handler = Record(seen_state.clone());
    let mcp = StreamableHttpService::new(
        move || Ok(handler.clone()),
        Arc::new(LocalSessionManager::default()),
        // Behind Envoy the Host is whatever the route sets; this is a test peer.
        StreamableHttpServerConfig::default().disable_allowed_hosts(),
    );
    let app = Router::new()
        .nest_service("/mcp", mcp)
        .route("/seen", get(seen))
        .layer(middleware::from_fn_with_state(
            seen_state.clone(),
            count_requests,
        ))
        .with_state(seen_state);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("RECORD_MCP_READY http://127.0.0.1:{port}/mcp");
    axum::serve(listener, app).await?;
    Ok(())
}
