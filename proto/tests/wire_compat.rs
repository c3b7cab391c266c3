//! Latchkey's `.proto` subset must be byte-compatible with Envoy's own
//! ext_authz v3 API: messages encoded with one side decode with the other
//! without losing a field Latchkey uses. `envoy-types` carries the full
//! upstream definitions.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3 as up_core;
use envoy_types::pb::envoy::service::auth::v3 as up_auth;
use envoy_types::pb::envoy::r#type::v3 as up_type;
use latchkey_proto::auth as lk_auth;
use latchkey_proto::core as lk_core;
use prost::Message;
use prost_types::{Struct, Value, value::Kind};

fn mcp_struct() -> Struct {
    let mut fields = std::collections::BTreeMap::new();
    fields.insert(
        "method".to_string(),
        Value {
            kind: Some(Kind::StringValue("tools/call".into())),
        },
    );
    fields.insert(
        "id".to_string(),
        Value {
            kind: Some(Kind::NumberValue(7.0)),
        },
    );
    Struct {
        fields: fields.into_iter().collect(),
    }
}

fn latchkey_check_request() -> lk_auth::CheckRequest {
    let mut headers = HashMap::new();
    headers.insert("authorization".to_string(), "Bearer abc".to_string());
    headers.insert("mcp-protocol-version".to_string(), "2025-11-25".to_string());
    let mut filter_metadata = HashMap::new();
    filter_metadata.insert(
        latchkey_proto::MCP_METADATA_NAMESPACE.to_string(),
        mcp_struct(),
    );
    lk_auth::CheckRequest {
        attributes: Some(lk_auth::AttributeContext {
            source: Some(lk_auth::attribute_context::Peer {
                address: Some(lk_core::Address {
                    address: Some(lk_core::address::Address::SocketAddress(
                        lk_core::SocketAddress {
                            address: "10.0.0.1".into(),
                            port_specifier: Some(
                                lk_core::socket_address::PortSpecifier::PortValue(4242),
                            ),
                            ..Default::default()
                        },
                    )),
                }),
                principal: "spiffe://example.org/ns/agents/sa/bot".into(),
                ..Default::default()
            }),
            request: Some(lk_auth::attribute_context::Request {
                time: None,
                http: Some(lk_auth::attribute_context::HttpRequest {
                    id: "req-1".into(),
                    method: "POST".into(),
                    headers,
                    path: "/mcp/everything".into(),
                    host: "gw.example:10000".into(),
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    raw_body: br#"{"jsonrpc":"2.0","id":7,"method":"tools/call"}"#.to_vec(),
                    ..Default::default()
                }),
            }),
            metadata_context: Some(lk_core::Metadata { filter_metadata }),
            ..Default::default()
        }),
    }
}

#[test]
fn check_request_reads_as_upstream_and_back() {
    let ours = latchkey_check_request();
    let theirs = up_auth::CheckRequest::decode(ours.encode_to_vec().as_slice()).unwrap();
    let attrs = theirs.attributes.as_ref().unwrap();
    let http = attrs.request.as_ref().unwrap().http.as_ref().unwrap();
    assert_eq!(http.method, "POST");
    assert_eq!(http.path, "/mcp/everything");
    assert_eq!(http.host, "gw.example:10000");
    assert_eq!(http.headers["authorization"], "Bearer abc");
    assert_eq!(
        http.raw_body,
        ours.attributes
            .as_ref()
            .unwrap()
            .request
            .as_ref()
            .unwrap()
            .http
            .as_ref()
            .unwrap()
            .raw_body
    );
    let source = attrs.source.as_ref().unwrap();
    assert_eq!(source.principal, "spiffe://example.org/ns/agents/sa/bot");
    match source.address.as_ref().unwrap().address.as_ref().unwrap() {
        up_core::address::Address::SocketAddress(sa) => {
            assert_eq!(sa.address, "10.0.0.1");
            assert_eq!(
                sa.port_specifier,
                Some(up_core::socket_address::PortSpecifier::PortValue(4242))
            );
        }
        other => panic!("unexpected address {other:?}"),
    }
    let md = &attrs.metadata_context.as_ref().unwrap().filter_metadata["latchkey.mcp"];
    let method = format!("{:?}", md.fields["method"].kind);
    assert!(method.contains("tools/call"), "{method}");

    let back = lk_auth::CheckRequest::decode(theirs.encode_to_vec().as_slice()).unwrap();
    assert_eq!(back, ours);
}

#[test]
fn check_response_ok_reads_as_upstream_and_back() {
    use lk_core::header_value_option::HeaderAppendAction;
    let ours = lk_auth::CheckResponse {
        status: Some(latchkey_proto::google::rpc::Status {
            code: 0,
            ..Default::default()
        }),
        http_response: Some(lk_auth::check_response::HttpResponse::OkResponse(
            lk_auth::OkHttpResponse {
                headers: vec![lk_core::HeaderValueOption {
                    header: Some(lk_core::HeaderValue {
                        key: "authorization".into(),
                        value: "Bearer service-account".into(),
                        ..Default::default()
                    }),
                    append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                    ..Default::default()
                }],
                headers_to_remove: vec!["x-api-key".into()],
                ..Default::default()
            },
        )),
        dynamic_metadata: Some(mcp_struct()),
    };
    let theirs = up_auth::CheckResponse::decode(ours.encode_to_vec().as_slice()).unwrap();
    assert_eq!(theirs.status.as_ref().unwrap().code, 0);
    match theirs.http_response.as_ref().unwrap() {
        up_auth::check_response::HttpResponse::OkResponse(ok) => {
            let h = &ok.headers[0];
            assert_eq!(h.header.as_ref().unwrap().key, "authorization");
            assert_eq!(h.header.as_ref().unwrap().value, "Bearer service-account");
            assert_eq!(
                h.append_action,
                up_core::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32
            );
            assert_eq!(ok.headers_to_remove, vec!["x-api-key".to_string()]);
        }
        other => panic!("expected ok_response, got {other:?}"),
    }
    assert_eq!(theirs.dynamic_metadata.as_ref().unwrap().fields.len(), 2);
    let back = lk_auth::CheckResponse::decode(theirs.encode_to_vec().as_slice()).unwrap();
    assert_eq!(back, ours);
}

#[test]
fn check_response_denied_reads_as_upstream_and_back() {
    let ours = lk_auth::CheckResponse {
        status: Some(latchkey_proto::google::rpc::Status { code: 16, message: "unauthenticated".into(), details: vec![] }),
        http_response: Some(lk_auth::check_response::HttpResponse::DeniedResponse(lk_auth::DeniedHttpResponse {
            status: Some(latchkey_proto::envoy::r#type::v3::HttpStatus { code: 401 }),
            headers: vec![lk_core::HeaderValueOption {
                header: Some(lk_core::HeaderValue {
                    key: "www-authenticate".into(),
                    value: "Bearer resource_metadata=\"https://gw/.well-known/oauth-protected-resource\"".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            body: r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32001,"message":"no token"}}"#.into(),
        })),
        dynamic_metadata: None,
    };
    let theirs = up_auth::CheckResponse::decode(ours.encode_to_vec().as_slice()).unwrap();
    assert_eq!(theirs.status.as_ref().unwrap().code, 16);
    match theirs.http_response.as_ref().unwrap() {
        up_auth::check_response::HttpResponse::DeniedResponse(d) => {
            assert_eq!(
                d.status.as_ref().unwrap().code,
                up_type::StatusCode::Unauthorized as i32
            );
            assert_eq!(
                d.headers[0].header.as_ref().unwrap().key,
                "www-authenticate"
            );
            assert!(d.body.contains("\"id\":1"));
        }
        other => panic!("expected denied_response, got {other:?}"),
    }
    let back = lk_auth::CheckResponse::decode(theirs.encode_to_vec().as_slice()).unwrap();
    assert_eq!(back, ours);

    // And the other direction: an upstream-built error_response reads here.
    let upstream = up_auth::CheckResponse {
        http_response: Some(up_auth::check_response::HttpResponse::ErrorResponse(
            up_auth::DeniedHttpResponse {
                status: Some(up_type::HttpStatus { code: 503 }),
                body: "down".into(),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let ours = lk_auth::CheckResponse::decode(upstream.encode_to_vec().as_slice()).unwrap();
    match ours.http_response.unwrap() {
        lk_auth::check_response::HttpResponse::ErrorResponse(d) => {
            assert_eq!(d.status.unwrap().code, 503);
            assert_eq!(d.body, "down");
        }
        other => panic!("expected error_response, got {other:?}"),
    }
}

#[test]
fn grpc_service_for_dispatch_reads_as_upstream() {
    let ours = lk_core::GrpcService {
        target_specifier: Some(lk_core::grpc_service::TargetSpecifier::EnvoyGrpc(
            lk_core::grpc_service::EnvoyGrpc {
                cluster_name: "outbound|9191||latchkey.latchkey-system.svc.cluster.local".into(),
                authority: "latchkey.latchkey-system.svc.cluster.local".into(),
            },
        )),
        timeout: Some(prost_types::Duration {
            seconds: 2,
            nanos: 0,
        }),
        initial_metadata: vec![],
    };
    let theirs = up_core::GrpcService::decode(ours.encode_to_vec().as_slice()).unwrap();
    match theirs.target_specifier.unwrap() {
        up_core::grpc_service::TargetSpecifier::EnvoyGrpc(g) => {
            assert_eq!(
                g.cluster_name,
                "outbound|9191||latchkey.latchkey-system.svc.cluster.local"
            );
            assert_eq!(g.authority, "latchkey.latchkey-system.svc.cluster.local");
        }
        other => panic!("expected envoy_grpc, got {other:?}"),
    }
    assert_eq!(theirs.timeout.unwrap().seconds, 2);
}
