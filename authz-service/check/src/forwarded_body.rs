//! The MCP context when Envoy's native ext_authz filter is in front instead of
//! the Latchkey filter: the message is classified from the forwarded headers
//! and body (`with_request_body`) with the same code the filter runs.

use latchkey_filter::mcp::{self, McpMessage, RequestError};
use latchkey_proto::auth::attribute_context::HttpRequest;

/// The message Envoy forwarded; the error is the filter's own refusal,
/// which `context` answers with as it is (this module knows nothing of
/// `context`). A Check without a method (no Envoy sends one) is judged by
/// the same rules as any other method the endpoint does not serve:
/// refused, never read as a request without a message.
pub fn mcp_from_http(http: &HttpRequest) -> Result<Option<McpMessage>, RequestError> {
    let mut headers: Vec<(String, String)> = http
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if mcp::header(&headers, ":method").is_none() {
        headers.push((":method".into(), http.method.clone()));
    }
    let body = if http.raw_body.is_empty() {
        http.body.as_bytes()
    } else {
        http.raw_body.as_slice()
    };
    mcp::classify(&headers, body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(method: &str, body: &str) -> HttpRequest {
        let mut h = HttpRequest {
            method: method.into(),
            raw_body: body.as_bytes().to_vec(),
            ..Default::default()
        };
        h.headers
            .insert("content-type".into(), "application/json".into());
        h
    }

    #[test]
    fn classifies_forwarded_body() {
        let m = mcp_from_http(&http(
            "POST",
            r#"{"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"name":"echo"}}"#,
        ))
        .unwrap()
        .unwrap();
        assert_eq!(m.method.as_deref(), Some("tools/call"));
        assert_eq!(m.name.as_deref(), Some("echo"));
        assert_eq!(m.id, Some(serde_json::json!("x")));
    }

    #[test]
    fn malformed_body_is_a_bad_request() {
        let e = mcp_from_http(&http("POST", "{nope")).unwrap_err();
        assert_eq!((e.http_status, e.jsonrpc_code), (400, -32700));
        let e = mcp_from_http(&http("POST", "[]")).unwrap_err();
        assert_eq!(e.jsonrpc_code, -32600);
    }

    #[test]
    fn get_or_delete_with_a_body_is_a_bad_request() {
        for method in ["GET", "DELETE"] {
            let e = mcp_from_http(&http(method, "{}")).unwrap_err();
            assert_eq!(e.http_status, 400, "{method}");
        }
    }

    #[test]
    fn get_needs_no_body() {
        let m = mcp_from_http(&http("GET", "")).unwrap().unwrap();
        assert_eq!(m.kind, mcp::MessageKind::Stream);
    }
}
