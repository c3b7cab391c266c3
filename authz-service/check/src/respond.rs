//! Turns a `Decision` into the Envoy `CheckResponse`: on allow, the headers to
//! set and remove; on deny, the status, `WWW-Authenticate` and a JSON-RPC
//! error body carrying the request's id. Both Envoy's native ext_authz filter
//! and the Latchkey Wasm filter apply these fields as they are.

use latchkey_filter::mcp::RequestError;
use latchkey_filter::stale::CREDENTIAL_KEY;
use latchkey_filter::visibility::VISIBILITY_KEY;
use latchkey_proto::auth::{CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response};
use latchkey_proto::core::header_value_option::HeaderAppendAction;
use latchkey_proto::core::{HeaderValue, HeaderValueOption};
use latchkey_proto::envoy::r#type::v3::HttpStatus;
use latchkey_proto::google::rpc::Status;
use prost_types::{Struct, Value, value::Kind};

use crate::decide::{Allow, Decision, Deny, PendingElicitation};

/// google.rpc.Code values Envoy reads from `CheckResponse.status`.
mod grpc_code {
    pub const OK: i32 = 0;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// Cookies named so are Latchkey's own (the connect page's session and
/// flows, with or without the `__Host-` prefix).
const LATCHKEY_COOKIES: [&str; 2] = ["latchkey_", "__Host-latchkey_"];

/// `cookie` without Latchkey's own cookies, when it had any: `Some("")`
/// when none is left. `None`: nothing to change.
pub fn cookie_for_upstream(cookie: &str) -> Option<String> {
    let name = |pair: &str| pair.split('=').next().unwrap_or_default().trim().to_owned();
    let ours = |pair: &&str| LATCHKEY_COOKIES.iter().any(|p| name(pair).starts_with(p));
    // Envoy joins repeated headers with `,`; browsers separate with `;`.
    let pairs: Vec<&str> = cookie
        .split([';', ','])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if !pairs.iter().any(ours) {
        return None;
    }
    Some(
        pairs
            .into_iter()
            .filter(|p| !ours(p))
            .collect::<Vec<_>>()
            .join("; "),
    )
}

/// An allowed request goes upstream without the connect page's cookies: a
/// browser-based client on the gateway's host sends them with every
/// request (`Path=/`), and an upstream holding one could act on the
/// person's connect page. The client's other cookies go on as they were.
pub fn keep_latchkey_cookies_home(response: &mut CheckResponse, cookie: Option<&str>) {
    let Some(kept) = cookie.and_then(cookie_for_upstream) else {
        return;
    };
    let Some(check_response::HttpResponse::OkResponse(ok)) = response.http_response.as_mut() else {
        return;
    };
    if kept.is_empty() {
        ok.headers_to_remove.push("cookie".to_string());
    } else {
        ok.headers.push(header(
            "cookie",
            &kept,
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        ));
    }
}

pub fn to_check_response(decision: &Decision) -> CheckResponse {
    match decision {
        Decision::Allow(a) => allow(a),
        Decision::Deny(d) => deny(d),
    }
}

fn allow(a: &Allow) -> CheckResponse {
    let mut headers = Vec::new();
    // The client's token never goes upstream. When the credential rides in
    // `authorization` itself, overwriting it is the removal; listing it in
    // headers_to_remove as well would drop the credential we just set.
    // Nor does the filter's report of refused credentials (meant for Check).
    let mut headers_to_remove = vec![
        "authorization".to_string(),
        latchkey_filter::stale::REJECTED_HEADER.to_string(),
    ];
    // Nor does an ID token the caller sent to be exchanged (on any route:
    // `drop_request_headers`).
    if let Some(h) = &a.inject {
        headers_to_remove.retain(|r| *r != h.name);
        headers.push(header(
            &h.name,
            h.value.expose(),
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        ));
    }
    CheckResponse {
        status: Some(Status {
            code: grpc_code::OK,
            ..Default::default()
        }),
        http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
            headers,
            headers_to_remove,
            ..Default::default()
        })),
        dynamic_metadata: Some(attribution(a)),
    }
}

/// An allowed request goes upstream without the headers in `names` (the
/// ID-token headers `[servers.exchange]` reads, on every route: a client
/// configured to send its ID token sends it everywhere, and a server
/// without exchange must not receive it either). A header the answer sets
/// (the credential) is kept.
pub fn drop_request_headers(response: &mut CheckResponse, names: &[&str]) {
    let Some(check_response::HttpResponse::OkResponse(ok)) = response.http_response.as_mut() else {
        return;
    };
    for name in names {
        let name = name.to_ascii_lowercase();
        let set_here = ok.headers.iter().any(|h| {
            h.header
                .as_ref()
                .is_some_and(|h| h.key.eq_ignore_ascii_case(&name))
        });
        if !set_here && !ok.headers_to_remove.contains(&name) {
            ok.headers_to_remove.push(name);
        }
    }
}

/// Who the request ran as, for Envoy's access log and later filters. No secrets.
fn attribution(a: &Allow) -> Struct {
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("user".to_string(), s(&a.caller.subject));
    if let Some(agent) = &a.caller.agent {
        fields.insert("agent".to_string(), s(agent));
    }
    if let Some(c) = &a.caller.client_id {
        fields.insert("client_id".to_string(), s(c));
    }
    fields.insert("gateway".to_string(), s(&a.route.gateway.name));
    fields.insert("assignment".to_string(), s(&a.route.assignment.name));
    fields.insert("server".to_string(), s(&a.route.server.name));
    if let Some(i) = &a.identity {
        fields.insert("identity".to_string(), s(i));
        if a.refreshable
            && let Some(v) = a.identity_version
        {
            fields.insert(CREDENTIAL_KEY.to_string(), s(&format!("{i}@{v}")));
        }
    }
    if let Some(v) = &a.visibility {
        fields.insert(
            VISIBILITY_KEY.to_string(),
            Value {
                kind: Some(Kind::StructValue(v.to_struct())),
            },
        );
    }
    Struct {
        fields: fields.into_iter().collect(),
    }
}

fn deny(d: &Deny) -> CheckResponse {
    let mut headers = vec![header(
        "content-type",
        "application/json",
        HeaderAppendAction::OverwriteIfExistsOrAdd,
    )];
    if let Some(w) = &d.www_authenticate {
        headers.push(header(
            "www-authenticate",
            w,
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        ));
    }
    let code = match d.refusal.http_status {
        401 => grpc_code::UNAUTHENTICATED,
        500..=599 => grpc_code::UNAVAILABLE,
        _ => grpc_code::PERMISSION_DENIED,
    };
    CheckResponse {
        status: Some(Status {
            code,
            message: d.reason.to_string(),
            ..Default::default()
        }),
        http_response: Some(check_response::HttpResponse::DeniedResponse(
            DeniedHttpResponse {
                status: Some(HttpStatus {
                    code: i32::from(d.refusal.http_status),
                }),
                headers,
                body: d.body.clone().unwrap_or_else(|| d.refusal.body()),
            },
        )),
        dynamic_metadata: d.elicitation.as_ref().map(url_elicitation),
    }
}

/// What the Wasm filter remembers of a URL elicitation answer, to announce
/// its completion on the session's GET stream. No secrets: the id is not a
/// credential.
fn url_elicitation(e: &PendingElicitation) -> Struct {
    use latchkey_filter::completion as c;
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    let fields = [
        (c::ID, s(&e.id)),
        (c::USER, s(&e.user)),
        (c::GATEWAY, s(&e.gateway)),
        (
            c::EXPIRES,
            Value {
                kind: Some(Kind::NumberValue(e.expires as f64)),
            },
        ),
    ];
    let inner = Struct {
        fields: fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    };
    Struct {
        fields: [(
            c::ELICITATION_KEY.to_string(),
            Value {
                kind: Some(Kind::StructValue(inner)),
            },
        )]
        .into_iter()
        .collect(),
    }
}

/// A request refused before any decision because it is malformed.
pub fn bad_request(refusal: &RequestError) -> CheckResponse {
    deny(&Deny {
        refusal: refusal.clone(),
        reason: "bad_request",
        ..Deny::default()
    })
}

/// How the upstream would have answered this request, for an answer that
/// stands in for the upstream's (a call to a hidden name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamFraming {
    /// Answer as one SSE event (`text/event-stream`).
    pub sse: bool,
    /// The request's `Mcp-Session-Id`, which the upstream echoes.
    pub session_id: Option<String>,
}

impl UpstreamFraming {
    /// SSE when the upstream answers that way (`responses = "sse"`) and the
    /// client accepts it (an `Accept` naming `text/event-stream` or `*/*`).
    pub fn new(sse_server: bool, accept: Option<&str>, session_id: Option<&str>) -> Self {
        let accepts_sse = accept.is_some_and(|a| {
            a.split(',').any(|t| {
                let t = t.split(';').next().unwrap_or("").trim();
                t.eq_ignore_ascii_case("text/event-stream") || t == "*/*"
            })
        });
        UpstreamFraming {
            sse: sse_server && accepts_sse,
            session_id: session_id.map(str::to_owned),
        }
    }
}

/// Frames a denial's answer as the upstream frames its own: as an SSE
/// event when it streams, with the session id it echoes. The JSON-RPC body
/// is unchanged. What still differs from an upstream answer (Envoy's and
/// the upstream's own headers, an SSE event id) is documented in the README.
pub fn frame_like_upstream(response: &mut CheckResponse, framing: &UpstreamFraming) {
    let Some(check_response::HttpResponse::DeniedResponse(denied)) = &mut response.http_response
    else {
        return;
    };
    if framing.sse {
        denied.body = format!("event: message\ndata: {}\n\n", denied.body);
        denied.headers.retain(|h| {
            h.header
                .as_ref()
                .is_none_or(|h| !h.key.eq_ignore_ascii_case("content-type"))
        });
        denied.headers.push(header(
            "content-type",
            "text/event-stream",
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        ));
    }
    if let Some(session) = &framing.session_id {
        denied.headers.push(header(
            "mcp-session-id",
            session,
            HeaderAppendAction::OverwriteIfExistsOrAdd,
        ));
    }
}

fn header(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            value: value.to_string(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latchkeys_cookies_are_taken_out_and_the_clients_kept() {
        assert_eq!(cookie_for_upstream("theme=dark; lang=en"), None);
        assert_eq!(
            cookie_for_upstream("__Host-latchkey_connect=s; theme=dark; latchkey_flow_ab=f"),
            Some("theme=dark".to_string())
        );
        assert_eq!(
            cookie_for_upstream("latchkey_connect=s"),
            Some(String::new())
        );
        // Joined by Envoy with `,`, spaced oddly, or named in a prefix of ours.
        assert_eq!(
            cookie_for_upstream(" a=1 ,latchkey_connect=s;  b=2"),
            Some("a=1; b=2".to_string())
        );
        assert_eq!(cookie_for_upstream("latchkey=1"), None);
    }

    fn allowed_with(cookie: Option<&str>) -> OkHttpResponse {
        let mut response = CheckResponse {
            http_response: Some(check_response::HttpResponse::OkResponse(
                OkHttpResponse::default(),
            )),
            ..Default::default()
        };
        keep_latchkey_cookies_home(&mut response, cookie);
        match response.http_response {
            Some(check_response::HttpResponse::OkResponse(ok)) => ok,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_allowed_request_goes_upstream_without_latchkeys_cookies() {
        let ok = allowed_with(Some("latchkey_connect=s; theme=dark"));
        assert_eq!(ok.headers.len(), 1);
        let h = ok.headers[0].header.as_ref().unwrap();
        assert_eq!((h.key.as_str(), h.value.as_str()), ("cookie", "theme=dark"));
        let ok = allowed_with(Some("__Host-latchkey_connect=s"));
        assert_eq!(ok.headers_to_remove, ["cookie"]);
        // The control: other cookies, or none, are left alone.
        assert_eq!(allowed_with(Some("theme=dark")), OkHttpResponse::default());
        assert_eq!(allowed_with(None), OkHttpResponse::default());
    }
    use latchkey_filter::decision::{UrlElicitation, decide_grpc};
    use prost::Message;

    #[test]
    fn a_url_elicitation_answer_tells_the_filter_what_to_announce() {
        let deny = Deny {
            refusal: RequestError {
                http_status: 200,
                jsonrpc_code: -32042,
                message: "connect".into(),
                ..Default::default()
            },
            reason: "consent_needed",
            elicitation: Some(PendingElicitation {
                id: "c0ffee".into(),
                user: "alice".into(),
                gateway: "e2e".into(),
                expires: 1_900_000_000,
            }),
            ..Deny::default()
        };
        let bytes = to_check_response(&Decision::Deny(deny.clone())).encode_to_vec();
        let checked = decide_grpc(0, Some(&bytes), &[], None);
        assert_eq!(
            checked.elicitation,
            Some(UrlElicitation {
                id: "c0ffee".into(),
                user: "alice".into(),
                gateway: "e2e".into(),
                expires: 1_900_000_000,
            })
        );
        // Any other refusal carries nothing for the filter.
        let plain = Deny {
            elicitation: None,
            ..deny
        };
        let bytes = to_check_response(&Decision::Deny(plain)).encode_to_vec();
        let checked = decide_grpc(0, Some(&bytes), &[], None);
        assert_eq!(checked.elicitation, None);
        assert!(
            to_check_response(&Decision::Deny(Deny::default()))
                .dynamic_metadata
                .is_none()
        );
    }

    #[test]
    fn a_hidden_answer_is_framed_as_the_upstream_frames_its_own() {
        let deny = Deny {
            refusal: RequestError {
                http_status: 200,
                jsonrpc_code: -32602,
                message: "Unknown tool: x".into(),
                id: Some(serde_json::json!(3)),
            },
            reason: "hidden_by_policy",
            ..Deny::default()
        };
        let framing = UpstreamFraming::new(
            true,
            Some("application/json, text/event-stream"),
            Some("s-1"),
        );
        let mut response = to_check_response(&Decision::Deny(deny.clone()));
        frame_like_upstream(&mut response, &framing);
        let bytes = response.encode_to_vec();
        let checked = decide_grpc(0, Some(&bytes), &[], None);
        let latchkey_filter::decision::Verdict::Deny(reply) = checked.verdict else {
            panic!("denied");
        };
        assert_eq!(reply.status, 200);
        let header = |k: &str| {
            reply
                .headers
                .iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(header("content-type"), ["text/event-stream"]);
        assert_eq!(header("mcp-session-id"), ["s-1"]);
        let data = reply
            .body
            .strip_prefix("event: message\ndata: ")
            .and_then(|b| b.strip_suffix("\n\n"))
            .expect("one SSE event");
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["id"], 3);
        assert_eq!(v["error"]["message"], "Unknown tool: x");
        // A JSON upstream, or a client that takes JSON only: JSON, no session.
        for framing in [
            UpstreamFraming::new(false, Some("text/event-stream"), None),
            UpstreamFraming::new(true, Some("application/json"), None),
        ] {
            let mut response = to_check_response(&Decision::Deny(deny.clone()));
            frame_like_upstream(&mut response, &framing);
            let Some(check_response::HttpResponse::DeniedResponse(d)) = &response.http_response
            else {
                panic!("denied");
            };
            assert!(d.body.starts_with('{'), "{}", d.body);
            assert!(
                !d.headers
                    .iter()
                    .any(|h| h.header.as_ref().unwrap().key == "mcp-session-id")
            );
        }
    }
}
