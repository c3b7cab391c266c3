//! Turns a `Decision` into the Envoy `CheckResponse`: on allow, the headers to
//! set and remove; on deny, the status, `WWW-Authenticate` and a JSON-RPC
//! error body carrying the request's id. Both Envoy's native ext_authz filter
//! and the Latchkey Wasm filter apply these fields as they are.

use latchkey_filter::jsonrpc;
use latchkey_filter::stale::CREDENTIAL_KEY;
use latchkey_filter::visibility::VISIBILITY_KEY;
use latchkey_proto::auth::{CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response};
use latchkey_proto::core::header_value_option::HeaderAppendAction;
use latchkey_proto::core::{HeaderValue, HeaderValueOption};
use latchkey_proto::envoy::r#type::v3::HttpStatus;
use latchkey_proto::google::rpc::Status;
use prost_types::{Struct, Value, value::Kind};

use crate::context::BadRequest;
use crate::decision::{Allow, Decision, Deny, PendingElicitation};

/// google.rpc.Code values Envoy reads from `CheckResponse.status`.
mod grpc_code {
    pub const OK: i32 = 0;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
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
    let code = match d.http_status {
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
                    code: i32::from(d.http_status),
                }),
                headers,
                body: d.body.clone().unwrap_or_else(|| {
                    jsonrpc::error_body(d.id.as_ref(), d.jsonrpc_code, &d.message)
                }),
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

pub fn bad_request(b: &BadRequest) -> CheckResponse {
    deny(&Deny {
        http_status: b.http_status,
        jsonrpc_code: b.jsonrpc_code,
        message: b.message.clone(),
        id: b.id.clone(),
        www_authenticate: None,
        reason: "bad_request",
        body: None,
        attribution: None,
        elicitation: None,
    })
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
    use latchkey_filter::decision::{UrlElicitation, decide_grpc};
    use prost::Message;

    #[test]
    fn a_url_elicitation_answer_tells_the_filter_what_to_announce() {
        let deny = Deny {
            http_status: 200,
            jsonrpc_code: -32042,
            message: "connect".into(),
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
}
