//! JSON-RPC 2.0 error objects: the codes Latchkey uses and the one function
//! that renders an error body. Every local reply of the filter (and the
//! service's denials) carries such a body, with the request's `id` when it
//! is known and `null` otherwise.

use serde_json::{Map, Value};

/// Invalid JSON was received.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON sent is not a valid JSON-RPC 2.0 request (also used for batches,
/// unsupported HTTP methods, content types and oversized bodies).
pub const INVALID_REQUEST: i64 = -32600;
/// The method does not exist / is not available.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Invalid method parameters (e.g. `tools/call` without `params.name`).
pub const INVALID_PARAMS: i64 = -32602;
/// Internal error; the filter uses it when the authorization service cannot
/// be reached or answers with an error.
pub const INTERNAL_ERROR: i64 = -32603;
/// MCP 2026-07-28: the `Mcp-Method` / `Mcp-Name` headers do not match the
/// body (or a required one is missing).
pub const HEADER_MISMATCH: i64 = -32020;
/// Latchkey: the caller is not authenticated.
pub const UNAUTHORIZED: i64 = -32001;
/// Latchkey: the caller may not do this.
pub const FORBIDDEN: i64 = -32003;

/// Renders `{"jsonrpc":"2.0","id":<id or null>,"error":{"code":..,"message":..}}`.
///
/// `id` should be the request's JSON-RPC id exactly as the client sent it (a
/// string or a number); `None` renders `null`.
pub fn error_body(id: Option<&Value>, code: i64, message: &str) -> String {
    let mut error = Map::new();
    error.insert("code".into(), Value::from(code));
    error.insert("message".into(), Value::from(message));
    let mut obj = Map::new();
    obj.insert("jsonrpc".into(), Value::from("2.0"));
    obj.insert("id".into(), id.cloned().unwrap_or(Value::Null));
    obj.insert("error".into(), Value::Object(error));
    Value::Object(obj).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_id_code_and_message() {
        let v: Value =
            serde_json::from_str(&error_body(Some(&json!(7)), PARSE_ERROR, "bad \"json\""))
                .unwrap();
        assert_eq!(
            v,
            json!({"jsonrpc":"2.0","id":7,"error":{"code":-32700,"message":"bad \"json\""}})
        );
        let v: Value =
            serde_json::from_str(&error_body(Some(&json!("a-1")), HEADER_MISMATCH, "m")).unwrap();
        assert_eq!(v["id"], json!("a-1"));
        assert_eq!(v["error"]["code"], json!(-32020));
    }

    #[test]
    fn missing_id_is_null() {
        let v: Value = serde_json::from_str(&error_body(None, INTERNAL_ERROR, "x")).unwrap();
        assert_eq!(v["id"], Value::Null);
        assert!(v.as_object().unwrap().contains_key("id"));
    }
}
