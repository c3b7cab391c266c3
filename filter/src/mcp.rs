//! MCP classification: from the HTTP request headers (and, for POST, the
//! body) to an [`McpMessage`], or a [`RequestError`] saying clearly why the
//! request cannot go upstream.
//!
//! Owns the rules of the Streamable HTTP transport that matter for
//! authorization: which HTTP methods exist (POST a message, GET an SSE
//! stream, DELETE a session), the JSON content type, the JSON-RPC 2.0
//! message shapes (no batches), the names policies are written against
//! (tool, prompt, resource URI), and the 2026-07-28 header mirroring
//! (`Mcp-Method` / `Mcp-Name` must agree with the body).
//!
//! The same code runs in the Wasm filter and in the authorization service
//! (native ext_authz path, where the body arrives in the `CheckRequest`).
//!
//! Every field an attacker chooses and the service later keeps (audit
//! stream, logs, the filter's shared pending list) is bounded here, before
//! any `Check`: see [`limits`] and [`check_bounds`]. A GET or DELETE
//! carries no body; one that declares or sends a body is refused.

use crate::json::parse_strict;
use crate::jsonrpc;
use latchkey_proto::mcp_keys;
use prost_types::value::Kind;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// First protocol revision that mirrors `method` / `params.name|uri` into
/// the `Mcp-Method` / `Mcp-Name` headers (SEP-2243).
pub const HEADER_MIRRORING_VERSION: &str = "2026-07-28";

/// Request header names (lowercase, as Envoy presents them).
pub mod headers {
    pub const PROTOCOL_VERSION: &str = "mcp-protocol-version";
    pub const SESSION_ID: &str = "mcp-session-id";
    pub const MCP_METHOD: &str = "mcp-method";
    pub const MCP_NAME: &str = "mcp-name";
    pub const CONTENT_TYPE: &str = "content-type";
    pub const METHOD: &str = ":method";
}

/// The largest value the gateway accepts for each request field, in bytes.
/// Anything longer is refused before a `Check` is made (HTTP 413, the
/// request's id when it could be read), so no absurd value reaches the
/// service, its logs, the audit stream or upstream. The README's "Limits"
/// table lists the same numbers; change both together.
pub mod limits {
    /// JSON-RPC `method`. The longest MCP method is 36 bytes
    /// (`notifications/resources/list_changed`).
    pub const METHOD: usize = 128;
    /// Tool name (`tools/call`) or prompt name (`prompts/get`). MCP
    /// 2025-11-25 says tool names SHOULD be 1–128 characters; twice that
    /// leaves room for servers that do not follow the SHOULD.
    pub const NAME: usize = 256;
    /// Resource URI (`resources/read|subscribe|unsubscribe`).
    pub const URI: usize = 4096;
    /// A JSON-RPC `id` written as a string.
    pub const STRING_ID: usize = 256;
    /// `MCP-Protocol-Version` header or `initialize`'s `protocolVersion`
    /// (versions are `YYYY-MM-DD`).
    pub const PROTOCOL_VERSION: usize = 32;
    /// `Mcp-Session-Id` header; it must also be visible ASCII
    /// (0x21–0x7E), as the MCP transport specification requires.
    pub const SESSION_ID: usize = 256;
}

/// What kind of MCP traffic a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// POST of a JSON-RPC request (has `method` and `id`).
    Request,
    /// POST of a JSON-RPC notification (has `method`, no `id`).
    Notification,
    /// POST of a JSON-RPC response (has `result` or `error`, and `id`): the
    /// client answering a server-initiated request.
    Response,
    /// GET: the client opens an SSE stream.
    Stream,
    /// DELETE: the client ends its session.
    SessionEnd,
}

impl MessageKind {
    /// The value used in the `latchkey.mcp` metadata `kind` field.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Request => "request",
            MessageKind::Notification => "notification",
            MessageKind::Response => "response",
            MessageKind::Stream => "stream",
            MessageKind::SessionEnd => "session_end",
        }
    }

    /// Inverse of [`MessageKind::as_str`].
    pub fn parse(s: &str) -> Option<MessageKind> {
        Some(match s {
            "request" => MessageKind::Request,
            "notification" => MessageKind::Notification,
            "response" => MessageKind::Response,
            "stream" => MessageKind::Stream,
            "session_end" => MessageKind::SessionEnd,
            _ => return None,
        })
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One classified MCP message: what the authorization service decides on.
#[derive(Debug, Clone, PartialEq)]
pub struct McpMessage {
    pub kind: MessageKind,
    /// JSON-RPC `method` (requests and notifications).
    pub method: Option<String>,
    /// JSON-RPC `id` exactly as sent: a JSON string or number.
    pub id: Option<Value>,
    /// Tool name (`tools/call`), prompt name (`prompts/get`) or resource URI
    /// (`resources/read`, `resources/subscribe`, `resources/unsubscribe`).
    pub name: Option<String>,
    /// `MCP-Protocol-Version` header, else `params.protocolVersion` of
    /// `initialize`.
    pub protocol_version: Option<String>,
    /// `Mcp-Session-Id` header.
    pub session_id: Option<String>,
}

impl McpMessage {
    fn bare(kind: MessageKind) -> McpMessage {
        McpMessage {
            kind,
            method: None,
            id: None,
            name: None,
            protocol_version: None,
            session_id: None,
        }
    }

    /// The `latchkey.mcp` metadata struct (keys from
    /// [`latchkey_proto::mcp_keys`]); absent fields are omitted, `id` is a
    /// string or number value like the JSON it came from.
    pub fn to_metadata(&self) -> prost_types::Struct {
        let mut fields = BTreeMap::new();
        let string = |s: &str| prost_types::Value {
            kind: Some(Kind::StringValue(s.to_owned())),
        };
        fields.insert(mcp_keys::KIND.to_owned(), string(self.kind.as_str()));
        let optional = [
            (mcp_keys::METHOD, &self.method),
            (mcp_keys::NAME, &self.name),
            (mcp_keys::PROTOCOL_VERSION, &self.protocol_version),
            (mcp_keys::SESSION_ID, &self.session_id),
        ];
        for (key, value) in optional {
            if let Some(v) = value {
                fields.insert(key.to_owned(), string(v));
            }
        }
        let id = match &self.id {
            Some(Value::String(s)) => Some(Kind::StringValue(s.clone())),
            Some(Value::Number(n)) => n.as_f64().map(Kind::NumberValue),
            _ => None,
        };
        if let Some(kind) = id {
            fields.insert(
                mcp_keys::ID.to_owned(),
                prost_types::Value { kind: Some(kind) },
            );
        }
        prost_types::Struct { fields }
    }

    /// Reads a `latchkey.mcp` metadata struct back. `None` when `kind` is
    /// missing or unknown. A numeric id travels as a protobuf double: whole
    /// numbers within ±2^53 come back as JSON integers, anything else as a
    /// JSON float (ids beyond 2^53 lose precision on the wire).
    pub fn from_metadata(s: &prost_types::Struct) -> Option<McpMessage> {
        let string = |key: &str| match s.fields.get(key).and_then(|v| v.kind.as_ref()) {
            Some(Kind::StringValue(v)) => Some(v.clone()),
            _ => None,
        };
        let kind = MessageKind::parse(&string(mcp_keys::KIND)?)?;
        let id = match s.fields.get(mcp_keys::ID).and_then(|v| v.kind.as_ref()) {
            Some(Kind::StringValue(v)) => Some(Value::String(v.clone())),
            Some(Kind::NumberValue(f)) => number_from_f64(*f),
            _ => None,
        };
        Some(McpMessage {
            kind,
            method: string(mcp_keys::METHOD),
            id,
            name: string(mcp_keys::NAME),
            protocol_version: string(mcp_keys::PROTOCOL_VERSION),
            session_id: string(mcp_keys::SESSION_ID),
        })
    }
}

const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_992.0; // 2^53

fn number_from_f64(f: f64) -> Option<Value> {
    if f.fract() == 0.0 && f.abs() <= MAX_SAFE_INTEGER {
        // Exact: |f| <= 2^53 is representable as i64.
        #[allow(clippy::cast_possible_truncation)]
        return Some(Value::from(f as i64));
    }
    serde_json::Number::from_f64(f).map(Value::Number)
}

/// Why a request is refused before it reaches the authorization service or
/// upstream: the HTTP status and the JSON-RPC error to answer with. The
/// service refuses with the same shape (its `Deny` carries one).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RequestError {
    pub http_status: u16,
    pub jsonrpc_code: i64,
    pub message: String,
    /// The request's JSON-RPC id, when it could be read.
    pub id: Option<Value>,
}

impl RequestError {
    pub fn new(http_status: u16, jsonrpc_code: i64, message: impl Into<String>) -> RequestError {
        RequestError {
            http_status,
            jsonrpc_code,
            message: message.into(),
            id: None,
        }
    }

    fn with_id(mut self, id: Option<&Value>) -> RequestError {
        self.id = id.cloned();
        self
    }

    /// The JSON-RPC error body for this error.
    pub fn body(&self) -> String {
        jsonrpc::error_body(self.id.as_ref(), self.jsonrpc_code, &self.message)
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.http_status, self.jsonrpc_code, self.message
        )
    }
}

impl std::error::Error for RequestError {}

/// Result of looking at the headers alone.
#[derive(Debug, Clone, PartialEq)]
pub enum Head {
    /// GET or DELETE: nothing more to read.
    Complete(McpMessage),
    /// POST with a JSON content type: the body decides.
    NeedsBody,
}

/// All values of a header, matched case-insensitively.
pub fn header_values<'a>(
    headers: &'a [(String, String)],
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The first value of a header, if any.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn non_empty_header(headers: &[(String, String)], name: &str) -> Option<String> {
    header(headers, name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// `application/json`, parameters (e.g. `; charset=utf-8`) allowed.
pub fn is_json_content_type(value: &str) -> bool {
    let media_type = value.split(';').next().unwrap_or_default().trim();
    media_type.eq_ignore_ascii_case("application/json")
}

/// Classifies what the headers alone can tell: the HTTP method (`:method`;
/// absent means POST) and, for POST, the content type.
pub fn inspect_headers(headers: &[(String, String)]) -> Result<Head, RequestError> {
    let method = header(headers, headers::METHOD).unwrap_or("POST");
    let kind = match method {
        "POST" => {
            let content_type = header(headers, headers::CONTENT_TYPE).unwrap_or_default();
            if !is_json_content_type(content_type) {
                let shown = if content_type.is_empty() {
                    "no content type".to_owned()
                } else {
                    format!("content type \"{content_type}\"")
                };
                return Err(RequestError::new(
                    415,
                    jsonrpc::INVALID_REQUEST,
                    format!(
                        "MCP messages must be sent with Content-Type: application/json; got {shown}"
                    ),
                ));
            }
            return Ok(Head::NeedsBody);
        }
        "GET" => MessageKind::Stream,
        "DELETE" => MessageKind::SessionEnd,
        other => {
            return Err(RequestError::new(
                405,
                jsonrpc::INVALID_REQUEST,
                format!(
                    "HTTP method {other} is not supported by the MCP endpoint; use POST to send a message, GET to open an event stream or DELETE to end a session"
                ),
            ));
        }
    };
    if declares_body(headers) {
        return Err(body_not_allowed(method));
    }
    let mut message = McpMessage::bare(kind);
    message.protocol_version = non_empty_header(headers, headers::PROTOCOL_VERSION);
    message.session_id = non_empty_header(headers, headers::SESSION_ID);
    check_bounds(&message)?;
    Ok(Head::Complete(message))
}

/// Whether the headers announce a request body: a `Content-Length` other
/// than 0 (an unreadable one counts) or any `Transfer-Encoding`.
fn declares_body(headers: &[(String, String)]) -> bool {
    let length = header_values(headers, "content-length").any(|v| v.trim() != "0");
    length || header(headers, "transfer-encoding").is_some()
}

/// A GET or DELETE that carries a body: nothing in MCP reads it, and it
/// would reach the upstream unchecked, so it is refused.
pub fn body_not_allowed(method: &str) -> RequestError {
    RequestError::new(
        400,
        jsonrpc::INVALID_REQUEST,
        format!(
            "an HTTP {method} to an MCP endpoint must not carry a body; send JSON-RPC messages with POST"
        ),
    )
}

/// Checks every attacker-chosen field of a classified message against
/// [`limits`]: lengths (413) and the session id's characters (400). Run by
/// [`classify`] and [`inspect_headers`]; the service runs it again on the
/// message the filter's metadata carries.
pub fn check_bounds(message: &McpMessage) -> Result<(), RequestError> {
    if let Some(method) = &message.method {
        too_long("the JSON-RPC method", method, limits::METHOD)?;
    }
    if let Some(Value::String(id)) = &message.id {
        too_long("a JSON-RPC id written as a string", id, limits::STRING_ID)?;
    }
    if let (Some(name), Some(method)) = (&message.name, &message.method) {
        let (what, limit) = match name_param(method) {
            Some("uri") => ("the resource URI", limits::URI),
            _ if method == "prompts/get" => ("the prompt name", limits::NAME),
            _ => ("the tool name", limits::NAME),
        };
        too_long(what, name, limit)?;
    }
    if let Some(version) = &message.protocol_version {
        too_long(
            "the MCP protocol version",
            version,
            limits::PROTOCOL_VERSION,
        )?;
    }
    if let Some(session) = &message.session_id {
        check_session_id(session)?;
    }
    Ok(())
}

/// An `Mcp-Session-Id`: 1 to [`limits::SESSION_ID`] bytes of visible
/// ASCII (0x21–0x7E). The value itself is never echoed.
pub fn check_session_id(session: &str) -> Result<(), RequestError> {
    too_long("the Mcp-Session-Id header", session, limits::SESSION_ID)?;
    if session.is_empty() || !session.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(invalid(
            "the Mcp-Session-Id header must be visible ASCII (0x21 to 0x7E: no spaces or control characters); use the session id the server returned",
        ));
    }
    Ok(())
}

fn too_long(what: &str, value: &str, limit: usize) -> Result<(), RequestError> {
    if value.len() <= limit {
        return Ok(());
    }
    Err(RequestError::new(
        413,
        jsonrpc::INVALID_REQUEST,
        format!(
            "{what} is {} bytes long; this gateway accepts at most {limit} bytes",
            value.len()
        ),
    ))
}

/// Where the policy-relevant name of a method lives in `params`, if the
/// method carries one.
pub fn name_param(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => Some("uri"),
        _ => None,
    }
}

fn invalid(message: impl Into<String>) -> RequestError {
    RequestError::new(400, jsonrpc::INVALID_REQUEST, message)
}

fn mismatch(message: impl Into<String>) -> RequestError {
    RequestError::new(400, jsonrpc::HEADER_MISMATCH, message)
}

/// A valid JSON-RPC id: a string, or an integer every JSON reader reads
/// alike (MCP ids are strings or integers). A fractional number or one
/// beyond ±(2^53 − 1) is refused: the upstream might read another value
/// than the gateway, and a response could not be matched to its request
/// ([`jsonrpc::same_id`]).
fn read_id(obj: &Map<String, Value>) -> Result<Option<&Value>, RequestError> {
    match obj.get("id") {
        None => Ok(None),
        Some(v @ Value::String(_)) => Ok(Some(v)),
        Some(v @ Value::Number(_)) if jsonrpc::IdKey::of(v).is_some() => Ok(Some(v)),
        Some(Value::Number(_)) => Err(invalid(
            "\"id\" must be a string or an integer between -9007199254740991 and 9007199254740991",
        )),
        Some(Value::Null) => Ok(None),
        Some(_) => Err(invalid("\"id\" must be a string or a number")),
    }
}

/// Classifies a POST: parses the body as exactly one JSON-RPC 2.0 message
/// and checks the mirrored headers. Content type and size are the caller's
/// business ([`inspect_headers`], the filter's body limit).
pub fn classify_body(
    headers: &[(String, String)],
    body: &[u8],
) -> Result<McpMessage, RequestError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(RequestError::new(
            400,
            jsonrpc::PARSE_ERROR,
            "request body is empty; expected one JSON-RPC message",
        ));
    }
    let value = parse_strict(body).map_err(|e| {
        RequestError::new(
            400,
            jsonrpc::PARSE_ERROR,
            format!("request body is not valid JSON: {e}"),
        )
    })?;
    let obj = match value {
        Value::Object(obj) => obj,
        Value::Array(_) => {
            return Err(invalid(
                "JSON-RPC batches are not supported by MCP; send one JSON-RPC message per HTTP request",
            ));
        }
        _ => return Err(invalid("a JSON-RPC message must be a JSON object")),
    };
    let id = read_id(&obj)?;
    // An over-long string id is not echoed back: the error carries null.
    if let Some(Value::String(s)) = id {
        too_long("a JSON-RPC id written as a string", s, limits::STRING_ID)?;
    }
    let message = classify_object(&obj, id, headers).map_err(|e| e.with_id(id))?;
    check_mirrored_headers(headers, &message).map_err(|e| e.with_id(id))?;
    Ok(message)
}

fn classify_object(
    obj: &Map<String, Value>,
    id: Option<&Value>,
    headers: &[(String, String)],
) -> Result<McpMessage, RequestError> {
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid(
            "not a JSON-RPC 2.0 message: \"jsonrpc\" must be \"2.0\"",
        ));
    }
    let null_id = matches!(obj.get("id"), Some(Value::Null));
    let has_result = obj.contains_key("result");
    let has_error = obj.contains_key("error");

    let mut message = match obj.get("method") {
        Some(method) => {
            let Some(method) = method.as_str().filter(|m| !m.is_empty()) else {
                return Err(invalid("\"method\" must be a non-empty string"));
            };
            // Before any message below repeats it.
            too_long("the JSON-RPC method", method, limits::METHOD)?;
            if has_result || has_error {
                return Err(invalid(
                    "a JSON-RPC message cannot carry both \"method\" and \"result\"/\"error\"",
                ));
            }
            if null_id {
                return Err(invalid(
                    "a request \"id\" must be a string or a number, not null",
                ));
            }
            let kind = if id.is_some() {
                MessageKind::Request
            } else {
                MessageKind::Notification
            };
            let params = obj.get("params");
            if !matches!(params, None | Some(Value::Object(_) | Value::Array(_))) {
                return Err(invalid("\"params\" must be an object"));
            }
            let mut message = McpMessage::bare(kind);
            message.method = Some(method.to_owned());
            message.name = read_name(method, params)?;
            if method == "initialize" {
                message.protocol_version = params
                    .and_then(|p| p.get("protocolVersion"))
                    .and_then(Value::as_str)
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned);
            }
            message
        }
        None => {
            if has_result == has_error {
                return Err(invalid(if has_result {
                    "a JSON-RPC response must carry either \"result\" or \"error\", not both"
                } else {
                    "not a JSON-RPC message: expected \"method\" (request or notification) or \"result\"/\"error\" (response)"
                }));
            }
            if id.is_none() && !(null_id && has_error) {
                return Err(invalid(
                    "a JSON-RPC response must carry the \"id\" of the request it answers",
                ));
            }
            McpMessage::bare(MessageKind::Response)
        }
    };
    message.id = id.cloned();
    if let Some(v) = non_empty_header(headers, headers::PROTOCOL_VERSION) {
        message.protocol_version = Some(v);
    }
    message.session_id = non_empty_header(headers, headers::SESSION_ID);
    check_bounds(&message)?;
    Ok(message)
}

fn read_name(method: &str, params: Option<&Value>) -> Result<Option<String>, RequestError> {
    let Some(key) = name_param(method) else {
        return Ok(None);
    };
    let name = params
        .and_then(|p| p.get(key))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    match name {
        Some(n) => Ok(Some(n.to_owned())),
        None => Err(RequestError::new(
            400,
            jsonrpc::INVALID_PARAMS,
            format!("{method} needs params.{key} as a non-empty string"),
        )),
    }
}

/// Whether a protocol version mirrors the body into `Mcp-Method`/`Mcp-Name`.
/// Versions are `YYYY-MM-DD`, so later revisions compare greater.
pub fn requires_header_mirroring(version: &str) -> bool {
    let looks_like_date = version.len() == 10
        && version.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    looks_like_date && version >= HEADER_MIRRORING_VERSION
}

/// SEP-2243 rules, as enforced here:
///
/// * On protocol 2026-07-28 (and later), a request or notification MUST
///   carry `Mcp-Method`, and `Mcp-Name` whenever its method carries a name
///   (`tools/call`, `prompts/get`, `resources/read|subscribe|unsubscribe`);
///   a missing required header is rejected like a mismatch (400, -32020), as
///   the specification lists it among the failures a server MUST reject.
/// * On any version, a mirrored header that is present must equal the body
///   (`Mcp-Name` after `=?base64?…?=` decoding); intermediaries may route on
///   it, so a lie is rejected even where the header is optional.
/// * `Mcp-Name` on a method without a name, either header on a response, or
///   either header sent twice is rejected: there is nothing it could mirror.
fn check_mirrored_headers(
    headers: &[(String, String)],
    message: &McpMessage,
) -> Result<(), RequestError> {
    let methods: Vec<&str> = header_values(headers, headers::MCP_METHOD).collect();
    let names: Vec<&str> = header_values(headers, headers::MCP_NAME).collect();
    if methods.len() > 1 {
        return Err(mismatch("the Mcp-Method header must be sent once"));
    }
    if names.len() > 1 {
        return Err(mismatch("the Mcp-Name header must be sent once"));
    }
    let Some(method) = message.method.as_deref() else {
        if !methods.is_empty() || !names.is_empty() {
            return Err(mismatch(
                "a JSON-RPC response has no method or name: do not send Mcp-Method or Mcp-Name with it",
            ));
        }
        return Ok(());
    };
    // The `initialize` handshake may omit the mirrored headers (the version is
    // not negotiated yet; the official SDKs send none there), but a header
    // that is sent must still agree with the body.
    let required = method != "initialize"
        && message
            .protocol_version
            .as_deref()
            .is_some_and(requires_header_mirroring);
    let version = message.protocol_version.as_deref().unwrap_or_default();

    match methods.first().map(|m| m.trim_matches([' ', '\t'])) {
        None if required => {
            return Err(mismatch(format!(
                "the Mcp-Method header is required by MCP {version}; set it to the body's method \"{method}\""
            )));
        }
        Some(h) if h != method => {
            return Err(mismatch(format!(
                "the Mcp-Method header \"{h}\" does not match the body's method \"{method}\""
            )));
        }
        _ => {}
    }

    match (names.first(), message.name.as_deref()) {
        (None, Some(name)) if required => Err(mismatch(format!(
            "the Mcp-Name header is required by MCP {version} for {method}; set it to \"{name}\""
        ))),
        (Some(raw), Some(name)) => {
            let decoded = decode_header_value(raw)
                .ok_or_else(|| mismatch("the Mcp-Name header is not a valid =?base64?…?= value"))?;
            if decoded == name {
                Ok(())
            } else {
                Err(mismatch(format!(
                    "the Mcp-Name header \"{raw}\" does not match the body's name \"{name}\""
                )))
            }
        }
        (Some(_), None) => Err(mismatch(format!(
            "the Mcp-Name header was sent but {method} carries no name"
        ))),
        _ => Ok(()),
    }
}

/// Decodes an MCP header value: `=?base64?<standard base64 of UTF-8>?=` or
/// a plain value (surrounding spaces/tabs are not part of it). `None` when
/// the sentinel form is malformed.
pub fn decode_header_value(raw: &str) -> Option<String> {
    let raw = raw.trim_matches([' ', '\t']);
    match raw
        .strip_prefix("=?base64?")
        .and_then(|rest| rest.strip_suffix("?="))
    {
        Some(encoded) => String::from_utf8(base64_decode(encoded)?).ok(),
        None => Some(raw.to_owned()),
    }
}

/// Standard-alphabet base64 (RFC 4648 §4), padding optional.
fn base64_decode(input: &str) -> Option<Vec<u8>> {
    let trimmed = input.trim_end_matches('=');
    if input.len() - trimmed.len() > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for b in trimmed.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    // A lone 6-bit group cannot encode a byte; leftover bits must be zero.
    if bits >= 6 || (acc & ((1 << bits) - 1)) != 0 {
        return None;
    }
    Some(out)
}

/// Classifies a request from its headers and (for POST) body. Runs the same
/// rules as the filter except the body size limit.
pub fn classify(headers: &[(String, String)], body: &[u8]) -> Result<McpMessage, RequestError> {
    match inspect_headers(headers)? {
        Head::Complete(_) if !body.is_empty() => Err(body_not_allowed(
            header(headers, headers::METHOD).unwrap_or("GET"),
        )),
        Head::Complete(message) => Ok(message),
        Head::NeedsBody => classify_body(headers, body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn post(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v = h(&[(":method", "POST"), ("content-type", "application/json")]);
        v.extend(h(extra));
        v
    }

    fn err(headers: &[(String, String)], body: &str) -> RequestError {
        classify(headers, body.as_bytes()).unwrap_err()
    }

    fn call(method: &str, params: Value) -> String {
        json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}).to_string()
    }

    #[test]
    fn every_attacker_chosen_field_over_its_limit_is_refused_413_with_the_id() {
        let long = |n: usize| "a".repeat(n);
        let cases = [
            call("tools/call", json!({"name": long(limits::NAME + 1)})),
            call("prompts/get", json!({"name": long(limits::NAME + 1)})),
            call("resources/read", json!({"uri": long(limits::URI + 1)})),
            call("resources/subscribe", json!({"uri": long(limits::URI + 1)})),
            call(&long(limits::METHOD + 1), json!({})),
            call(
                "initialize",
                json!({"protocolVersion": long(limits::PROTOCOL_VERSION + 1)}),
            ),
        ];
        for body in &cases {
            let e = err(&post(&[]), body);
            assert_eq!((e.http_status, e.id.clone()), (413, Some(json!(7))), "{e}");
            assert!(e.message.contains("at most"), "{e}");
            assert!(e.message.len() < 200, "the value is not echoed: {e}");
        }
        // The same fields at their limits pass.
        for body in [
            call("tools/call", json!({"name": long(limits::NAME)})),
            call("resources/read", json!({"uri": long(limits::URI)})),
        ] {
            classify(&post(&[]), body.as_bytes()).unwrap();
        }
    }

    #[test]
    fn an_over_long_string_id_is_refused_without_echoing_it() {
        let body =
            json!({"jsonrpc": "2.0", "id": "i".repeat(limits::STRING_ID + 1), "method": "ping"});
        let e = err(&post(&[]), &body.to_string());
        assert_eq!((e.http_status, e.id), (413, None));
        let ok = json!({"jsonrpc": "2.0", "id": "i".repeat(limits::STRING_ID), "method": "ping"});
        classify(&post(&[]), ok.to_string().as_bytes()).unwrap();
    }

    #[test]
    fn session_ids_must_be_short_visible_ascii_on_every_http_method() {
        let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        let long = "s".repeat(limits::SESSION_ID + 1);
        for (session, status) in [
            ("a b", 400),
            ("a\u{1}b", 400),
            ("caf\u{e9}", 400),
            ("a\tb", 400),
            (long.as_str(), 413),
        ] {
            let e = err(&post(&[("mcp-session-id", session)]), ping);
            assert_eq!(
                (e.http_status, e.id.clone()),
                (status, Some(json!(1))),
                "{session:?}"
            );
            for method in ["GET", "DELETE"] {
                let e = inspect_headers(&h(&[(":method", method), ("mcp-session-id", session)]))
                    .unwrap_err();
                assert_eq!(e.http_status, status, "{method} {session:?}");
            }
        }
        let fine = "!~0123-abcXYZ".to_owned() + &"x".repeat(limits::SESSION_ID - 13);
        let m = classify(&post(&[("mcp-session-id", &fine)]), ping.as_bytes()).unwrap();
        assert_eq!(m.session_id.as_deref(), Some(fine.as_str()));
    }

    #[test]
    fn get_and_delete_with_a_body_are_refused() {
        for method in ["GET", "DELETE"] {
            for extra in [("content-length", "5"), ("transfer-encoding", "chunked")] {
                let e = inspect_headers(&h(&[(":method", method), extra])).unwrap_err();
                assert_eq!(e.http_status, 400, "{method} {extra:?}");
                assert!(e.message.contains("must not carry a body"), "{e}");
            }
            // Announced by nothing but sent anyway (native ext_authz sees it).
            let e = classify(&h(&[(":method", method)]), b"{}").unwrap_err();
            assert_eq!(e.http_status, 400);
            // The control: no body, or an explicit empty one.
            classify(&h(&[(":method", method)]), b"").unwrap();
            classify(&h(&[(":method", method), ("content-length", "0")]), b"").unwrap();
        }
    }

    #[test]
    fn tools_call_request_with_numeric_id() {
        let m = classify(
            &post(&[("mcp-session-id", "s-1"), ("mcp-protocol-version", "2025-11-25")]),
            br#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"get_weather","arguments":{"city":"Paris"}}}"#,
        )
        .unwrap();
        assert_eq!(m.kind, MessageKind::Request);
        assert_eq!(m.method.as_deref(), Some("tools/call"));
        assert_eq!(m.id, Some(json!(42)));
        assert_eq!(m.name.as_deref(), Some("get_weather"));
        assert_eq!(m.protocol_version.as_deref(), Some("2025-11-25"));
        assert_eq!(m.session_id.as_deref(), Some("s-1"));
    }

    #[test]
    fn string_id_and_names_of_prompts_and_resources() {
        let m = classify(
            &post(&[]),
            br#"{"jsonrpc":"2.0","id":"abc","method":"prompts/get","params":{"name":"greet"}}"#,
        )
        .unwrap();
        assert_eq!(m.id, Some(json!("abc")));
        assert_eq!(m.name.as_deref(), Some("greet"));
        for method in [
            "resources/read",
            "resources/subscribe",
            "resources/unsubscribe",
        ] {
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{{"uri":"file:///a.txt"}}}}"#
            );
            let m = classify(&post(&[]), body.as_bytes()).unwrap();
            assert_eq!(m.name.as_deref(), Some("file:///a.txt"), "{method}");
        }
        let m = classify(
            &post(&[]),
            br#"{"jsonrpc":"2.0","id":1.0,"method":"tools/list"}"#,
        )
        .unwrap();
        assert_eq!(m.name, None);
        assert_eq!(m.id, Some(json!(1.0)), "kept as the client spelled it");
    }

    #[test]
    fn ids_no_reader_agrees_on_are_refused() {
        for id in ["1.5", "9007199254740992", "18446744073709551617", "-1e300"] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#);
            let e = err(&post(&[]), &body);
            assert_eq!(e.http_status, 400, "{id}");
            assert_eq!(e.jsonrpc_code, jsonrpc::INVALID_REQUEST, "{id}");
            assert!(e.message.contains("integer"), "{id}: {}", e.message);
        }
    }

    #[test]
    fn notification_and_response() {
        let m = classify(
            &post(&[]),
            br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        )
        .unwrap();
        assert_eq!(m.kind, MessageKind::Notification);
        assert_eq!(m.id, None);
        assert_eq!(m.method.as_deref(), Some("notifications/initialized"));

        let m = classify(&post(&[]), br#"{"jsonrpc":"2.0","id":"srv-1","result":{}}"#).unwrap();
        assert_eq!(m.kind, MessageKind::Response);
        assert_eq!(m.method, None);
        assert_eq!(m.id, Some(json!("srv-1")));

        let m = classify(
            &post(&[]),
            br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}"#,
        )
        .unwrap();
        assert_eq!(m.kind, MessageKind::Response);
        assert_eq!(m.id, None);
    }

    #[test]
    fn initialize_protocol_version_from_params_unless_header() {
        let body = br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{}}}"#;
        let m = classify(&post(&[]), body).unwrap();
        assert_eq!(m.protocol_version.as_deref(), Some("2025-11-25"));
        let m = classify(&post(&[("MCP-Protocol-Version", "2025-06-18")]), body).unwrap();
        assert_eq!(m.protocol_version.as_deref(), Some("2025-06-18"));
    }

    #[test]
    fn malformed_json_is_parse_error() {
        for body in [
            "{",
            "",
            "  ",
            "{\"jsonrpc\":\"2.0\",}",
            "nul",
            "{\"a\":1} trailing",
        ] {
            let e = err(&post(&[]), body);
            assert_eq!((e.http_status, e.jsonrpc_code), (400, -32700), "{body:?}");
            assert_eq!(e.id, None);
        }
        let e = err(
            &post(&[]),
            r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"x"}"#,
        );
        assert_eq!(e.jsonrpc_code, -32700);
        assert!(e.message.contains("duplicate key"));
    }

    #[test]
    fn batch_is_rejected_clearly() {
        let e = err(
            &post(&[]),
            r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]"#,
        );
        assert_eq!((e.http_status, e.jsonrpc_code), (400, -32600));
        assert!(e.message.contains("batches are not supported by MCP"));
    }

    #[test]
    fn not_json_rpc_is_invalid_request() {
        for body in [
            r#""hello""#,
            "42",
            r#"{"id":1,"method":"tools/list"}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"tools/list"}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":5}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":""}"#,
            r#"{"jsonrpc":"2.0","id":{"a":1},"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#,
            r#"{"jsonrpc":"2.0","result":{}}"#,
            r#"{"jsonrpc":"2.0","id":null,"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":"s"}"#,
        ] {
            let e = err(&post(&[]), body);
            assert_eq!((e.http_status, e.jsonrpc_code), (400, -32600), "{body}");
        }
        // The id is echoed when it was readable.
        let e = err(&post(&[]), r#"{"jsonrpc":"1.0","id":"q","method":"x"}"#);
        assert_eq!(e.id, Some(json!("q")));
    }

    #[test]
    fn missing_name_is_invalid_params_with_id() {
        let e = err(
            &post(&[]),
            r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"arguments":{}}}"#,
        );
        assert_eq!((e.http_status, e.jsonrpc_code), (400, -32602));
        assert_eq!(e.id, Some(json!(9)));
        assert!(e.message.contains("params.name"));
        let e = err(
            &post(&[]),
            r#"{"jsonrpc":"2.0","id":9,"method":"resources/read","params":{"uri":3}}"#,
        );
        assert!(e.message.contains("params.uri"));
    }

    #[test]
    fn content_type_and_http_method() {
        for ct in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON;charset=UTF-8",
        ] {
            let headers = h(&[(":method", "POST"), ("content-type", ct)]);
            assert_eq!(inspect_headers(&headers).unwrap(), Head::NeedsBody, "{ct}");
        }
        for ct in [
            "text/plain",
            "application/json-seq",
            "application/jsonx",
            "multipart/form-data",
        ] {
            let e = err(&h(&[(":method", "POST"), ("content-type", ct)]), "{}");
            assert_eq!((e.http_status, e.jsonrpc_code), (415, -32600), "{ct}");
        }
        let e = err(&h(&[(":method", "POST")]), "{}");
        assert_eq!(e.http_status, 415);
        assert!(e.message.contains("no content type"));
        for m in ["PUT", "PATCH", "OPTIONS", "HEAD"] {
            let e = err(&h(&[(":method", m)]), "");
            assert_eq!(e.http_status, 405, "{m}");
            assert!(e.message.contains(m));
        }
    }

    #[test]
    fn get_and_delete_need_no_body() {
        let g = classify(
            &h(&[
                (":method", "GET"),
                ("mcp-session-id", "sess"),
                ("mcp-protocol-version", "2025-11-25"),
            ]),
            b"",
        )
        .unwrap();
        assert_eq!(g.kind, MessageKind::Stream);
        assert_eq!(g.session_id.as_deref(), Some("sess"));
        assert_eq!(g.protocol_version.as_deref(), Some("2025-11-25"));
        assert_eq!(g.method, None);
        let d = classify(&h(&[(":method", "DELETE")]), b"").unwrap();
        assert_eq!(d.kind, MessageKind::SessionEnd);
        assert_eq!(d.session_id, None);
    }

    const CALL: &str =
        r#"{"jsonrpc":"2.0","id":"c1","method":"tools/call","params":{"name":"get_weather"}}"#;
    const V2026: (&str, &str) = ("mcp-protocol-version", "2026-07-28");

    #[test]
    fn header_mirroring_2026_accepts_matching_headers() {
        let m = classify(
            &post(&[
                V2026,
                ("Mcp-Method", "tools/call"),
                ("Mcp-Name", "get_weather"),
            ]),
            CALL.as_bytes(),
        )
        .unwrap();
        assert_eq!(m.name.as_deref(), Some("get_weather"));
        // Base64 sentinel form of a non-ASCII name.
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"météo"}}"#;
        let m = classify(
            &post(&[
                V2026,
                ("mcp-method", "tools/call"),
                ("mcp-name", "=?base64?bcOpdMOpbw==?="),
            ]),
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(m.name.as_deref(), Some("météo"));
        // A method without a name needs only Mcp-Method.
        classify(
            &post(&[V2026, ("mcp-method", "tools/list")]),
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        )
        .unwrap();
        // Notifications mirror their method too.
        classify(
            &post(&[V2026, ("mcp-method", "notifications/cancelled")]),
            br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#,
        )
        .unwrap();
    }

    #[test]
    fn header_mirroring_2026_rejects_mismatch_and_missing() {
        let cases: Vec<(Vec<(String, String)>, &str)> = vec![
            (
                post(&[
                    V2026,
                    ("mcp-method", "tools/list"),
                    ("mcp-name", "get_weather"),
                ]),
                "does not match the body's method",
            ),
            (
                post(&[
                    V2026,
                    ("mcp-method", "tools/call"),
                    ("mcp-name", "delete_all"),
                ]),
                "does not match the body's name",
            ),
            (
                post(&[V2026, ("mcp-name", "get_weather")]),
                "Mcp-Method header is required",
            ),
            (
                post(&[V2026, ("mcp-method", "tools/call")]),
                "Mcp-Name header is required",
            ),
            (
                post(&[
                    V2026,
                    ("mcp-method", "tools/call"),
                    ("mcp-name", "=?base64?!!?="),
                ]),
                "not a valid",
            ),
            (
                post(&[
                    V2026,
                    ("mcp-method", "tools/call"),
                    ("mcp-method", "tools/call"),
                    ("mcp-name", "get_weather"),
                ]),
                "sent once",
            ),
        ];
        for (headers, needle) in cases {
            let e = err(&headers, CALL);
            assert_eq!((e.http_status, e.jsonrpc_code), (400, -32020), "{needle}");
            assert_eq!(e.id, Some(json!("c1")));
            assert!(e.message.contains(needle), "{} vs {needle}", e.message);
        }
    }

    #[test]
    fn header_mirroring_2026_initialize_may_omit_but_not_contradict() {
        const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2026-07-28"}}"#;
        let v = ("mcp-protocol-version", "2026-07-28");
        let m = classify(&post(&[v]), INIT.as_bytes()).unwrap();
        assert_eq!(m.method.as_deref(), Some("initialize"));
        classify(&post(&[v, ("mcp-method", "initialize")]), INIT.as_bytes()).unwrap();
        let e = err(&post(&[v, ("mcp-method", "tools/list")]), INIT);
        assert_eq!((e.http_status, e.jsonrpc_code), (400, -32020));
    }

    #[test]
    fn header_mirroring_before_2026() {
        // Not required on older versions...
        classify(
            &post(&[("mcp-protocol-version", "2025-11-25")]),
            CALL.as_bytes(),
        )
        .unwrap();
        classify(&post(&[]), CALL.as_bytes()).unwrap();
        // ...but a header that is present must not lie.
        let e = err(
            &post(&[
                ("mcp-protocol-version", "2025-11-25"),
                ("mcp-name", "other"),
            ]),
            CALL,
        );
        assert_eq!(e.jsonrpc_code, -32020);
        // A name header on a nameless method, or headers on a response.
        let e = err(
            &post(&[("mcp-method", "tools/list"), ("mcp-name", "x")]),
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        );
        assert!(e.message.contains("carries no name"));
        let e = err(
            &post(&[V2026, ("mcp-method", "tools/call")]),
            r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
        );
        assert_eq!(e.jsonrpc_code, -32020);
        // A response on 2026-07-28 needs no mirrored headers.
        classify(&post(&[V2026]), br#"{"jsonrpc":"2.0","id":1,"result":{}}"#).unwrap();
    }

    #[test]
    fn protocol_version_comparison() {
        assert!(requires_header_mirroring("2026-07-28"));
        assert!(requires_header_mirroring("2027-01-01"));
        assert!(!requires_header_mirroring("2025-11-25"));
        assert!(!requires_header_mirroring("DRAFT-2026-v1"));
        assert!(!requires_header_mirroring("9999"));
    }

    #[test]
    fn base64_sentinel() {
        assert_eq!(decode_header_value("plain").as_deref(), Some("plain"));
        assert_eq!(
            decode_header_value("=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?=").as_deref(),
            Some("=?base64?literal?=")
        );
        assert_eq!(
            decode_header_value("=?base64?IGxlYWRpbmc?=").as_deref(),
            Some(" leading")
        );
        assert_eq!(decode_header_value("=?base64?A?="), None);
        assert_eq!(decode_header_value("=?base64?QR==?="), None);
        assert_eq!(decode_header_value("=?base64?//79?="), None); // not UTF-8
        assert_eq!(base64_decode("").as_deref(), Some(&b""[..]));
        assert_eq!(base64_decode("Zm9vYmFy").as_deref(), Some(&b"foobar"[..]));
        assert_eq!(base64_decode("Zm9vYg==").as_deref(), Some(&b"foob"[..]));
        assert_eq!(base64_decode("Zm9vYg===").as_deref(), None);
    }

    #[test]
    fn metadata_round_trip() {
        let full = McpMessage {
            kind: MessageKind::Request,
            method: Some("tools/call".into()),
            id: Some(json!(17)),
            name: Some("get_weather".into()),
            protocol_version: Some("2026-07-28".into()),
            session_id: Some("s".into()),
        };
        let s = full.to_metadata();
        assert_eq!(s.fields.len(), 6);
        assert_eq!(s.fields[mcp_keys::ID].kind, Some(Kind::NumberValue(17.0)));
        assert_eq!(McpMessage::from_metadata(&s), Some(full.clone()));

        let string_id = McpMessage {
            id: Some(json!("x-1")),
            ..full.clone()
        };
        assert_eq!(
            McpMessage::from_metadata(&string_id.to_metadata()),
            Some(string_id)
        );
        let float_id = McpMessage {
            id: Some(json!(-2.5)),
            ..full.clone()
        };
        assert_eq!(
            McpMessage::from_metadata(&float_id.to_metadata()),
            Some(float_id)
        );
        let negative = McpMessage {
            id: Some(json!(-3)),
            ..full
        };
        assert_eq!(
            McpMessage::from_metadata(&negative.to_metadata()),
            Some(negative)
        );

        for kind in [
            MessageKind::Notification,
            MessageKind::Response,
            MessageKind::Stream,
            MessageKind::SessionEnd,
        ] {
            let m = McpMessage::bare(kind);
            let s = m.to_metadata();
            assert_eq!(s.fields.len(), 1, "absent fields are omitted");
            assert_eq!(McpMessage::from_metadata(&s), Some(m));
        }
        assert_eq!(
            McpMessage::from_metadata(&prost_types::Struct::default()),
            None
        );
        let mut bad = McpMessage::bare(MessageKind::Stream).to_metadata();
        bad.fields.insert(
            mcp_keys::KIND.into(),
            prost_types::Value {
                kind: Some(Kind::StringValue("bogus".into())),
            },
        );
        assert_eq!(McpMessage::from_metadata(&bad), None);
    }
}
