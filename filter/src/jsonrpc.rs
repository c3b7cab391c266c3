//! JSON-RPC 2.0 error objects: the codes Latchkey uses and the one function
//! that renders an error body. Every local reply of the filter (and the
//! service's denials) carries such a body, with the request's `id` when it
//! is known and `null` otherwise.
//!
//! Also the one comparison of JSON-RPC ids ([`same_id`]): ids match by what
//! they mean, not how they are spelled.

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

/// The largest integer every JSON implementation reads exactly (2^53 − 1,
/// I-JSON, RFC 7493 §2.2): a JavaScript upstream reads `9007199254740993`
/// as `9007199254740992`, so beyond it two parties may disagree on an id.
pub const MAX_EXACT_ID: f64 = 9_007_199_254_740_991.0;

/// A JSON-RPC id by meaning: a string (compared exactly, so `"4"` is not
/// `4`) or an integer (so `4`, `4.0`, `4e0` and `40e-1` are one id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdKey {
    Text(String),
    Integer(i64),
}

impl IdKey {
    /// `None` for what is not an id every party reads alike: `null`, an
    /// object, a fractional number, or an integer beyond ±[`MAX_EXACT_ID`]
    /// (the filter refuses such request ids, so they never need matching).
    pub fn of(id: &Value) -> Option<IdKey> {
        match id {
            Value::String(s) => Some(IdKey::Text(s.clone())),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    return (i.unsigned_abs() <= MAX_EXACT_ID as u64).then_some(IdKey::Integer(i));
                }
                let f = n.as_f64()?;
                (f.fract() == 0.0 && f.abs() <= MAX_EXACT_ID).then_some(IdKey::Integer(f as i64))
            }
            _ => None,
        }
    }
}

/// Whether two JSON-RPC ids name the same request. Ids that are not
/// comparable ([`IdKey::of`] is `None`) match nothing, not even themselves.
pub fn same_id(a: &Value, b: &Value) -> bool {
    matches!((IdKey::of(a), IdKey::of(b)), (Some(x), Some(y)) if x == y)
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

    #[test]
    fn ids_match_by_meaning_not_spelling() {
        let parse = |t: &str| serde_json::from_str::<Value>(t).unwrap();
        for spelling in ["4", "4.0", "4e0", "40e-1", "0.4e1", "4.000"] {
            assert!(same_id(&parse(spelling), &json!(4)), "{spelling}");
        }
        assert!(same_id(&parse("-0"), &json!(0)));
        assert!(same_id(&json!("a"), &json!("a")));
        assert!(!same_id(&json!("4"), &json!(4)), "a string is not a number");
        assert!(!same_id(&json!("A"), &json!("a")));
        assert!(
            !same_id(&json!(4.5), &json!(4.5)),
            "fractional ids match nothing"
        );
        assert!(!same_id(&Value::Null, &Value::Null));
        // Beyond 2^53 - 1 readers disagree: such ids match nothing.
        assert!(same_id(&parse("123456789"), &parse("123456789.0")));
        assert!(IdKey::of(&parse("9007199254740991")).is_some());
        assert!(IdKey::of(&parse("9007199254740992")).is_none());
        assert!(IdKey::of(&parse("18446744073709551617")).is_none());
        assert!(IdKey::of(&parse("-9007199254740992")).is_none());
    }
}
