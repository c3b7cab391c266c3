//! Reading the authorization service's answer: a gRPC outcome and a
//! `CheckResponse` become either header edits to apply before the request
//! goes upstream ([`Verdict::Allow`]) or a local reply ([`Verdict::Deny`]).
//!
//! Fail closed: anything but a clean OK (transport error, timeout,
//! unreadable response, `error_response`, a denial) keeps the request away
//! from upstream. The inbound `authorization` header is always removed on
//! allow: the client's token never reaches the MCP server.

use crate::jsonrpc;
use crate::visibility::{VISIBILITY_KEY, Visibility};
use latchkey_proto::auth::check_response::HttpResponse;
use latchkey_proto::auth::{CheckResponse, DeniedHttpResponse, OkHttpResponse};
use latchkey_proto::core::HeaderValueOption;
use latchkey_proto::core::header_value_option::HeaderAppendAction;
use prost::Message;
use prost_types::value::Kind;
use serde_json::Value;
use std::collections::HashSet;

/// One change to the request headers, applied in order. A value may be
/// the injected credential: `Debug` shows header names only, so no log
/// line or panic message built from an edit can carry it.
#[derive(Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Remove every value of the header.
    Remove(String),
    /// Replace every value of the header with this one.
    Set(String, String),
    /// Add one more value (a new header line).
    Add(String, String),
}

impl HeaderEdit {
    /// The header this edit changes.
    pub fn name(&self) -> &str {
        match self {
            HeaderEdit::Remove(name) | HeaderEdit::Set(name, _) | HeaderEdit::Add(name, _) => name,
        }
    }
}

impl std::fmt::Debug for HeaderEdit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderEdit::Remove(name) => write!(f, "Remove({name:?})"),
            HeaderEdit::Set(name, _) => write!(f, "Set({name:?}, <redacted>)"),
            HeaderEdit::Add(name, _) => write!(f, "Add({name:?}, <redacted>)"),
        }
    }
}

/// An HTTP response the filter sends itself instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl LocalReply {
    /// A JSON-RPC error reply (`content-type: application/json`).
    pub fn error(status: u16, id: Option<&Value>, code: i64, message: &str) -> LocalReply {
        LocalReply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: jsonrpc::error_body(id, code, message),
        }
    }

    /// 503: the authorization service could not give an answer.
    pub fn unavailable(id: Option<&Value>, detail: &str) -> LocalReply {
        LocalReply::error(
            503,
            id,
            jsonrpc::INTERNAL_ERROR,
            &format!(
                "authorization service unavailable ({detail}); the request was not forwarded, retry later"
            ),
        )
    }
}

/// What to do with the request after `Check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow(Vec<HeaderEdit>),
    Deny(LocalReply),
}

/// Name of a gRPC status code, for messages.
fn grpc_status_name(code: u32) -> &'static str {
    match code {
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        16 => "UNAUTHENTICATED",
        _ => "error",
    }
}

/// A verdict and, for an allowed list request, what the caller may see
/// (`dynamic_metadata.visibility`, see [`Visibility::to_struct`]).
#[derive(Debug, Clone)]
pub struct Checked {
    pub verdict: Verdict,
    pub visibility: Option<Visibility>,
    /// The injected credential the service can refresh (`id@version`).
    pub credential: Option<String>,
    /// Who the allowed request runs as, and on which gateway (the
    /// attribution metadata): a GET stream's owner.
    pub user: Option<String>,
    pub gateway: Option<String>,
    /// The refusal is a URL elicitation to announce once completed.
    pub elicitation: Option<UrlElicitation>,
}

/// A URL elicitation the service answered with (-32042), from
/// `dynamic_metadata.url_elicitation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlElicitation {
    pub id: String,
    pub user: String,
    pub gateway: String,
    pub expires: i64,
}

impl From<Verdict> for Checked {
    fn from(verdict: Verdict) -> Checked {
        Checked {
            verdict,
            visibility: None,
            credential: None,
            user: None,
            gateway: None,
            elicitation: None,
        }
    }
}

fn metadata_string(response: &CheckResponse, key: &str) -> Option<String> {
    match &response.dynamic_metadata.as_ref()?.fields.get(key)?.kind {
        Some(Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn url_elicitation(response: &CheckResponse) -> Option<UrlElicitation> {
    use crate::completion as c;
    let field = response
        .dynamic_metadata
        .as_ref()?
        .fields
        .get(c::ELICITATION_KEY)?;
    let Some(Kind::StructValue(s)) = &field.kind else {
        return None;
    };
    let text = |key: &str| match s.fields.get(key).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(v)) if !v.is_empty() => Some(v.clone()),
        _ => None,
    };
    let expires = match s.fields.get(c::EXPIRES).and_then(|v| v.kind.as_ref()) {
        Some(Kind::NumberValue(n)) if n.is_finite() => *n as i64,
        _ => return None,
    };
    Some(UrlElicitation {
        id: text(c::ID)?,
        user: text(c::USER)?,
        gateway: text(c::GATEWAY)?,
        expires,
    })
}

/// The caller's view sent along with an allow, if any.
fn visibility(response: &CheckResponse) -> Option<Visibility> {
    let field = response
        .dynamic_metadata
        .as_ref()?
        .fields
        .get(VISIBILITY_KEY)?;
    match &field.kind {
        Some(Kind::StructValue(s)) => Some(Visibility::from_struct(s)),
        // Present but unreadable: an empty view (fail closed).
        _ => Some(Visibility::default()),
    }
}

/// Decides from the host's outcome of the gRPC call: `grpc_status` is the
/// call's status (0 = OK, 4 = deadline exceeded, 14 = unavailable, ...) and
/// `body` the serialized `CheckResponse` when it is OK (`None` when the host
/// could not hand it over, which fails closed; an empty message is a default
/// `CheckResponse`, i.e. OK, as in Envoy).
pub fn decide_grpc(
    grpc_status: u32,
    body: Option<&[u8]>,
    request_headers: &[(String, String)],
    id: Option<&Value>,
) -> Checked {
    if grpc_status != 0 {
        let detail = match grpc_status {
            4 => "no answer within the timeout".to_owned(),
            // Envoy reports both a refused connection and a call that ran
            // past its timeout as UNAVAILABLE.
            14 => "unreachable or no answer within the timeout".to_owned(),
            code => format!("gRPC status {code} {}", grpc_status_name(code)),
        };
        return Verdict::Deny(LocalReply::unavailable(id, &detail)).into();
    }
    let Some(body) = body else {
        return Verdict::Deny(LocalReply::unavailable(id, "no response body")).into();
    };
    match CheckResponse::decode(body) {
        Ok(response) => Checked {
            verdict: decide(&response, request_headers, id),
            visibility: visibility(&response),
            credential: metadata_string(&response, crate::stale::CREDENTIAL_KEY),
            user: metadata_string(&response, "user"),
            gateway: metadata_string(&response, "gateway"),
            elicitation: url_elicitation(&response),
        },
        Err(_) => Verdict::Deny(LocalReply::unavailable(id, "unreadable response")).into(),
    }
}

/// Decides from a `CheckResponse`.
///
/// * `denied_response` denies and `error_response` fails, whatever the
///   status says (a contradictory answer never lets a request through).
/// * status OK (or absent, as in Envoy) with `ok_response` or no HTTP
///   response allows.
/// * any other status: PERMISSION_DENIED → 403, UNAUTHENTICATED → 401 (both
///   clear denials without a body), anything else → 503.
pub fn decide(
    response: &CheckResponse,
    request_headers: &[(String, String)],
    id: Option<&Value>,
) -> Verdict {
    let code = response.status.as_ref().map_or(0, |s| s.code);
    match (&response.http_response, code) {
        (Some(HttpResponse::ErrorResponse(e)), _) => Verdict::Deny(error_reply(e, id)),
        (Some(HttpResponse::DeniedResponse(d)), _) => Verdict::Deny(denied_reply(d, id)),
        (Some(HttpResponse::OkResponse(ok)), 0) => Verdict::Allow(allow_edits(ok, request_headers)),
        (None, 0) => Verdict::Allow(allow_edits(&OkHttpResponse::default(), request_headers)),
        (_, 7) => Verdict::Deny(LocalReply::error(
            403,
            id,
            jsonrpc::FORBIDDEN,
            "access denied by the authorization service",
        )),
        (_, 16) => Verdict::Deny(LocalReply::error(
            401,
            id,
            jsonrpc::UNAUTHORIZED,
            "authentication required",
        )),
        (_, c) => Verdict::Deny(LocalReply::unavailable(
            id,
            &format!(
                "gRPC status {c} {}",
                grpc_status_name(u32::try_from(c).unwrap_or(2))
            ),
        )),
    }
}

/// A header name is a lowercase HTTP token; pseudo headers and `host` are
/// never edited (the routing decision is Envoy's, not the service's).
fn editable_name(raw: &str) -> Option<String> {
    let name = raw.trim().to_ascii_lowercase();
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    (token && name != "host").then_some(name)
}

/// A header value without control characters (no CR/LF injection).
fn header_value(raw: &str) -> Option<&str> {
    (!raw.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)).then_some(raw)
}

/// Name and value of a `HeaderValueOption` (`value`, else UTF-8
/// `raw_value`), or `None` if unusable.
fn option_pair(option: &HeaderValueOption) -> Option<(String, String)> {
    let header = option.header.as_ref()?;
    let name = editable_name(&header.key)?;
    let value = if header.value.is_empty() {
        std::str::from_utf8(&header.raw_value).ok()?
    } else {
        &header.value
    };
    let value = header_value(value)?;
    if value.is_empty() && !option.keep_empty_value {
        return None;
    }
    Some((name, value.to_owned()))
}

/// The effective append action. The deprecated `append` flag wins when it is
/// set (true = append, false = overwrite), as in Envoy; otherwise
/// `append_action`. An unknown action value overwrites.
fn append_action(option: &HeaderValueOption) -> HeaderAppendAction {
    match option.append {
        Some(true) => HeaderAppendAction::AppendIfExistsOrAdd,
        Some(false) => HeaderAppendAction::OverwriteIfExistsOrAdd,
        None => HeaderAppendAction::try_from(option.append_action)
            .unwrap_or(HeaderAppendAction::OverwriteIfExistsOrAdd),
    }
}

/// The edits for an allowed request, in order: remove `authorization`,
/// remove `headers_to_remove`, then apply `headers` with their append
/// actions (evaluated against the headers as edited so far).
pub fn allow_edits(ok: &OkHttpResponse, request_headers: &[(String, String)]) -> Vec<HeaderEdit> {
    let mut present: HashSet<String> = request_headers
        .iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .collect();
    let mut edits = vec![HeaderEdit::Remove("authorization".into())];
    present.remove("authorization");
    for raw in &ok.headers_to_remove {
        if let Some(name) = editable_name(raw) {
            present.remove(&name);
            edits.push(HeaderEdit::Remove(name));
        }
    }
    for option in &ok.headers {
        let Some((name, value)) = option_pair(option) else {
            continue;
        };
        let exists = present.contains(&name);
        let edit = match append_action(option) {
            HeaderAppendAction::AppendIfExistsOrAdd => Some(HeaderEdit::Add(name.clone(), value)),
            HeaderAppendAction::AddIfAbsent => {
                (!exists).then(|| HeaderEdit::Add(name.clone(), value))
            }
            HeaderAppendAction::OverwriteIfExistsOrAdd => {
                Some(HeaderEdit::Set(name.clone(), value))
            }
            HeaderAppendAction::OverwriteIfExists => {
                exists.then(|| HeaderEdit::Set(name.clone(), value))
            }
        };
        if let Some(edit) = edit {
            present.insert(name);
            edits.push(edit);
        }
    }
    edits
}

/// Response headers of a local reply from the service's header options:
/// appends add a line, everything else replaces an earlier value.
fn reply_headers(options: &[HeaderValueOption]) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = Vec::new();
    for option in options {
        let Some((name, value)) = option_pair(option) else {
            continue;
        };
        let exists = headers.iter().any(|(k, _)| *k == name);
        match append_action(option) {
            HeaderAppendAction::AppendIfExistsOrAdd => headers.push((name, value)),
            HeaderAppendAction::AddIfAbsent if exists => {}
            HeaderAppendAction::OverwriteIfExists if !exists => {}
            _ => {
                headers.retain(|(k, _)| *k != name);
                headers.push((name, value));
            }
        }
    }
    if !headers.iter().any(|(k, _)| k == "content-type") {
        headers.push(("content-type".into(), "application/json".into()));
    }
    headers
}

fn reply_status(d: &DeniedHttpResponse, default: u16) -> u16 {
    d.status
        .as_ref()
        .and_then(|s| u16::try_from(s.code).ok())
        .filter(|c| (200..=599).contains(c))
        .unwrap_or(default)
}

fn denied_reply(d: &DeniedHttpResponse, id: Option<&Value>) -> LocalReply {
    let status = reply_status(d, 403);
    let body = if d.body.is_empty() {
        let (code, message) = match status {
            401 => (jsonrpc::UNAUTHORIZED, "authentication required".to_owned()),
            403 => (
                jsonrpc::FORBIDDEN,
                "access denied by the authorization service".to_owned(),
            ),
            s => (
                jsonrpc::INVALID_REQUEST,
                format!("request denied by the authorization service (HTTP {s})"),
            ),
        };
        jsonrpc::error_body(id, code, &message)
    } else {
        d.body.clone()
    };
    LocalReply {
        status,
        headers: reply_headers(&d.headers),
        body,
    }
}

fn error_reply(e: &DeniedHttpResponse, id: Option<&Value>) -> LocalReply {
    let fallback = LocalReply::unavailable(id, "the service reported an error");
    LocalReply {
        status: reply_status(e, 503),
        headers: reply_headers(&e.headers),
        body: if e.body.is_empty() {
            fallback.body
        } else {
            e.body.clone()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_proto::core::HeaderValue;
    use latchkey_proto::envoy::r#type::v3::HttpStatus;
    use latchkey_proto::google::rpc::Status;
    use serde_json::json;

    fn hvo(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(HeaderValue {
                key: key.into(),
                value: value.into(),
                raw_value: vec![],
            }),
            append: None,
            append_action: action as i32,
            keep_empty_value: false,
        }
    }

    fn req_headers() -> Vec<(String, String)> {
        [
            (":method", "POST"),
            ("authorization", "Bearer client-token"),
            ("x-existing", "old"),
            ("x-drop", "1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn ok(headers: Vec<HeaderValueOption>, remove: Vec<&str>) -> CheckResponse {
        CheckResponse {
            status: Some(Status::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers,
                headers_to_remove: remove.into_iter().map(String::from).collect(),
                ..OkHttpResponse::default()
            })),
            dynamic_metadata: None,
        }
    }

    fn allow(resp: &CheckResponse) -> Vec<HeaderEdit> {
        match decide(resp, &req_headers(), None) {
            Verdict::Allow(edits) => edits,
            Verdict::Deny(r) => panic!("denied: {r:?}"),
        }
    }

    fn deny(resp: &CheckResponse, id: Option<&Value>) -> LocalReply {
        match decide(resp, &req_headers(), id) {
            Verdict::Deny(r) => r,
            Verdict::Allow(e) => panic!("allowed: {e:?}"),
        }
    }

    fn set(k: &str, v: &str) -> HeaderEdit {
        HeaderEdit::Set(k.into(), v.into())
    }
    fn add(k: &str, v: &str) -> HeaderEdit {
        HeaderEdit::Add(k.into(), v.into())
    }
    fn rm(k: &str) -> HeaderEdit {
        HeaderEdit::Remove(k.into())
    }

    #[test]
    fn authorization_always_removed_first() {
        assert_eq!(allow(&ok(vec![], vec![])), vec![rm("authorization")]);
        let no_http = CheckResponse {
            status: Some(Status::default()),
            ..CheckResponse::default()
        };
        assert_eq!(allow(&no_http), vec![rm("authorization")]);
        // Absent status counts as OK (Envoy semantics).
        assert_eq!(allow(&CheckResponse::default()), vec![rm("authorization")]);
        // The credential header set afterwards is the service's, not the client's.
        let edits = allow(&ok(
            vec![hvo(
                "Authorization",
                "Bearer downstream",
                HeaderAppendAction::OverwriteIfExistsOrAdd,
            )],
            vec![],
        ));
        assert_eq!(
            edits,
            vec![
                rm("authorization"),
                set("authorization", "Bearer downstream")
            ]
        );
    }

    #[test]
    fn removes_then_applies_each_append_action() {
        use HeaderAppendAction::*;
        let edits = allow(&ok(
            vec![
                hvo("x-existing", "v1", OverwriteIfExistsOrAdd),
                hvo("x-new", "v2", OverwriteIfExistsOrAdd),
                hvo("x-existing", "v3", AddIfAbsent),
                hvo("x-absent", "v4", AddIfAbsent),
                hvo("x-existing", "v5", AppendIfExistsOrAdd),
                hvo("x-fresh", "v6", AppendIfExistsOrAdd),
                hvo("x-existing", "v7", OverwriteIfExists),
                hvo("x-nowhere", "v8", OverwriteIfExists),
                hvo("x-drop", "v9", OverwriteIfExists),
                hvo("x-drop", "v10", AddIfAbsent),
            ],
            vec!["X-Drop"],
        ));
        assert_eq!(
            edits,
            vec![
                rm("authorization"),
                rm("x-drop"),
                set("x-existing", "v1"),
                set("x-new", "v2"),
                add("x-absent", "v4"),
                add("x-existing", "v5"),
                add("x-fresh", "v6"),
                set("x-existing", "v7"),
                add("x-drop", "v10"),
            ]
        );
    }

    #[test]
    fn legacy_append_flag_and_unusable_headers() {
        let mut appended = hvo("x-existing", "a", HeaderAppendAction::OverwriteIfExists);
        appended.append = Some(true);
        let mut overwritten = hvo("x-existing", "b", HeaderAppendAction::AppendIfExistsOrAdd);
        overwritten.append = Some(false);
        let mut raw = hvo("x-raw", "", HeaderAppendAction::OverwriteIfExistsOrAdd);
        raw.header.as_mut().unwrap().raw_value = b"rawval".to_vec();
        let mut kept_empty = hvo("x-empty", "", HeaderAppendAction::OverwriteIfExistsOrAdd);
        kept_empty.keep_empty_value = true;
        let edits = allow(&ok(
            vec![
                appended,
                overwritten,
                raw,
                kept_empty,
                hvo(
                    "x-dropped-empty",
                    "",
                    HeaderAppendAction::OverwriteIfExistsOrAdd,
                ),
                hvo(
                    ":path",
                    "/admin",
                    HeaderAppendAction::OverwriteIfExistsOrAdd,
                ),
                hvo("host", "evil", HeaderAppendAction::OverwriteIfExistsOrAdd),
                hvo("bad name", "x", HeaderAppendAction::OverwriteIfExistsOrAdd),
                hvo(
                    "x-inject",
                    "a\r\nb: c",
                    HeaderAppendAction::OverwriteIfExistsOrAdd,
                ),
            ],
            vec![":authority", "host"],
        ));
        assert_eq!(
            edits,
            vec![
                rm("authorization"),
                add("x-existing", "a"),
                set("x-existing", "b"),
                set("x-raw", "rawval"),
                set("x-empty", ""),
            ]
        );
    }

    #[test]
    fn denied_uses_service_status_headers_and_body() {
        let body = jsonrpc::error_body(Some(&json!(5)), jsonrpc::UNAUTHORIZED, "log in");
        let resp = CheckResponse {
            status: Some(Status {
                code: 16,
                ..Status::default()
            }),
            http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: Some(HttpStatus { code: 401 }),
                headers: vec![
                    hvo(
                        "WWW-Authenticate",
                        "Bearer resource_metadata=\"https://gw/.well-known/oauth-protected-resource\"",
                        HeaderAppendAction::OverwriteIfExistsOrAdd,
                    ),
                    hvo(
                        "content-type",
                        "application/json; charset=utf-8",
                        HeaderAppendAction::OverwriteIfExistsOrAdd,
                    ),
                ],
                body: body.clone(),
            })),
            dynamic_metadata: None,
        };
        let r = deny(&resp, Some(&json!(5)));
        assert_eq!(r.status, 401);
        assert_eq!(r.body, body);
        assert_eq!(
            r.headers,
            vec![
                (
                    "www-authenticate".to_string(),
                    "Bearer resource_metadata=\"https://gw/.well-known/oauth-protected-resource\""
                        .to_string()
                ),
                (
                    "content-type".to_string(),
                    "application/json; charset=utf-8".to_string()
                ),
            ]
        );
    }

    #[test]
    fn denied_without_body_or_status_builds_jsonrpc_403() {
        let resp = CheckResponse {
            status: Some(Status {
                code: 7,
                ..Status::default()
            }),
            http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse::default())),
            dynamic_metadata: None,
        };
        let r = deny(&resp, Some(&json!("req-9")));
        assert_eq!(r.status, 403);
        assert_eq!(
            r.headers,
            vec![("content-type".to_string(), "application/json".to_string())]
        );
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["id"], json!("req-9"));
        assert_eq!(v["error"]["code"], json!(jsonrpc::FORBIDDEN));
        // Even with an OK status, a denied_response denies.
        let contradictory = CheckResponse {
            status: Some(Status::default()),
            ..resp
        };
        assert_eq!(deny(&contradictory, None).status, 403);
    }

    #[test]
    fn error_response_and_bad_status_fail_closed() {
        let resp = CheckResponse {
            status: Some(Status {
                code: 14,
                ..Status::default()
            }),
            http_response: Some(HttpResponse::ErrorResponse(DeniedHttpResponse::default())),
            dynamic_metadata: None,
        };
        let r = deny(&resp, Some(&json!(1)));
        assert_eq!(r.status, 503);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["error"]["code"], json!(-32603));
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("authorization service unavailable")
        );
        assert_eq!(v["id"], json!(1));

        let with_status = CheckResponse {
            http_response: Some(HttpResponse::ErrorResponse(DeniedHttpResponse {
                status: Some(HttpStatus { code: 502 }),
                ..DeniedHttpResponse::default()
            })),
            ..resp.clone()
        };
        assert_eq!(deny(&with_status, None).status, 502);

        // Non-OK status with an ok_response or nothing: never allowed.
        for (code, status) in [(14, 503), (13, 503), (2, 503), (7, 403), (16, 401)] {
            let r = deny(
                &CheckResponse {
                    status: Some(Status {
                        code,
                        ..Status::default()
                    }),
                    ..ok(vec![], vec![])
                },
                None,
            );
            assert_eq!(r.status, status, "code {code}");
            let r = deny(
                &CheckResponse {
                    status: Some(Status {
                        code,
                        ..Status::default()
                    }),
                    ..CheckResponse::default()
                },
                None,
            );
            assert_eq!(r.status, status, "code {code}");
        }
    }

    #[test]
    fn grpc_failures_timeouts_and_garbage_are_503() {
        let id = json!(77);
        for (status, needle) in [
            (4, "timeout"),
            (14, "unreachable"),
            (13, "INTERNAL"),
            (99, "gRPC status 99"),
        ] {
            let Verdict::Deny(r) = decide_grpc(status, None, &req_headers(), Some(&id)).verdict
            else {
                panic!("allowed on grpc status {status}");
            };
            assert_eq!(r.status, 503);
            let v: Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(v["id"], id);
            assert!(v["error"]["message"].as_str().unwrap().contains(needle));
        }
        let Verdict::Deny(r) = decide_grpc(0, Some(b"\xff\xff\xff"), &req_headers(), None).verdict
        else {
            panic!("allowed garbage");
        };
        assert_eq!(r.status, 503);
        let bytes = ok(vec![], vec![]).encode_to_vec();
        assert_eq!(
            decide_grpc(0, Some(&bytes), &req_headers(), None).verdict,
            Verdict::Allow(vec![rm("authorization")])
        );
        // An empty OK message is a default CheckResponse: allowed, as Envoy
        // would (status absent = OK). A body the host could not read is not.
        assert!(matches!(
            decide_grpc(0, Some(b""), &req_headers(), None).verdict,
            Verdict::Allow(_)
        ));
        assert!(matches!(
            decide_grpc(0, None, &req_headers(), None).verdict,
            Verdict::Deny(LocalReply { status: 503, .. })
        ));
    }

    #[test]
    fn a_header_edit_prints_its_name_never_its_value() {
        let edits = vec![
            HeaderEdit::Set("authorization".into(), "Bearer upstream-secret".into()),
            HeaderEdit::Add("x-api-key".into(), "key-secret".into()),
            HeaderEdit::Remove("cookie".into()),
        ];
        let shown = format!(
            "{edits:?} {:?}",
            crate::flow::Action::Continue(edits.clone())
        );
        assert!(!shown.contains("secret"), "{shown}");
        for name in ["authorization", "x-api-key", "cookie"] {
            assert!(shown.contains(name), "{shown}");
        }
        assert_eq!(edits[0].name(), "authorization");
    }
}
