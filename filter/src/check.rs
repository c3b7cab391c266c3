//! Building the `envoy.service.auth.v3.Authorization/Check` call: the
//! `CheckRequest` (HTTP attributes, peers, raw body, `latchkey.mcp`
//! metadata) and the serialized `GrpcService` naming the upstream.

use crate::config::Config;
use crate::mcp::McpMessage;
use latchkey_proto::auth::attribute_context::{HttpRequest, Peer, Request};
use latchkey_proto::auth::{AttributeContext, CheckRequest};
use latchkey_proto::core::grpc_service::{EnvoyGrpc, TargetSpecifier};
use latchkey_proto::core::socket_address::PortSpecifier;
use latchkey_proto::core::{Address, GrpcService, Metadata, SocketAddress, address};
use prost::Message;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// gRPC service and method of the call.
pub const AUTHZ_SERVICE: &str = "envoy.service.auth.v3.Authorization";
pub const AUTHZ_METHOD: &str = "Check";

/// What the host knows about a request besides its headers and body
/// (Envoy properties, read by the glue).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Connection {
    /// `source.address`, e.g. `10.0.0.1:53211` or `[::1]:53211`.
    pub source_address: Option<String>,
    /// `destination.address`.
    pub destination_address: Option<String>,
    /// `connection.uri_san_peer_certificate`: the mTLS peer's URI SAN
    /// (SPIFFE ID), when the connection had one.
    pub peer_uri_san: Option<String>,
    /// `request.protocol`, e.g. `HTTP/1.1`, `HTTP/2`.
    pub protocol: Option<String>,
    /// `request.time` (falls back to the host clock).
    pub time: Option<SystemTime>,
}

/// Everything the filter sends in one `Check`.
/// `Debug` shows sizes, not bytes: the message carries the client's
/// `Authorization` header.
#[derive(Clone, PartialEq)]
pub struct CheckCall {
    /// Serialized `GrpcService { envoy_grpc { cluster_name, authority } }`
    /// (see [`grpc_upstream`]): the `upstream` argument of
    /// `dispatch_grpc_call`.
    pub upstream: String,
    pub service: &'static str,
    pub method: &'static str,
    /// Serialized `CheckRequest`.
    pub message: Vec<u8>,
    pub timeout: Duration,
    /// Replace the held request body with this before it goes upstream (the
    /// Check still sees the original): see [`crate::round_trip`].
    pub upstream_body: Option<Vec<u8>>,
}

impl std::fmt::Debug for CheckCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckCall")
            .field("service", &self.service)
            .field("method", &self.method)
            .field("message_bytes", &self.message.len())
            .field("timeout", &self.timeout)
            .field(
                "upstream_body_bytes",
                &self.upstream_body.as_ref().map(Vec::len),
            )
            .finish_non_exhaustive()
    }
}

/// The upstream argument of `dispatch_grpc_call`: a serialized
/// `GrpcService { envoy_grpc { cluster_name, authority } }`. A bare cluster
/// name would make Envoy use it as `:authority` (invalid for Istio's
/// `outbound|…` names), so the authority is set explicitly.
///
/// proxy-wasm 0.2 takes this argument as a `&str`, so the bytes must be
/// valid UTF-8. Protobuf length prefixes of 128 or more are not, so the
/// message is written as two concatenated `GrpcService`s, one carrying the
/// cluster and one the authority: protobuf parsers merge repeated embedded
/// messages, and each part stays short. The deadline travels as the call's
/// timeout argument, not in `GrpcService.timeout` (its nanos varint would
/// not be UTF-8 either). `None` if a name is too long or not ASCII
/// ([`Config::parse`] rejects such names, so this does not happen at run
/// time).
pub fn grpc_upstream(config: &Config) -> Option<String> {
    let part = |cluster_name: &str, authority: &str| {
        GrpcService {
            target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                cluster_name: cluster_name.to_owned(),
                authority: authority.to_owned(),
            })),
            timeout: None,
            initial_metadata: Vec::new(),
        }
        .encode_to_vec()
    };
    let mut bytes = part(&config.authz_cluster, "");
    bytes.extend(part("", &config.authz_authority));
    let text = String::from_utf8(bytes).ok()?;
    text.is_ascii().then_some(text)
}

/// Parses `ip:port` / `[ipv6]:port` as Envoy prints addresses. Anything
/// else (a pipe path, a bare IP) becomes an address without a port.
pub fn socket_address(text: &str) -> Address {
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) if host.starts_with('[') && host.ends_with(']') => {
            (host.trim_start_matches('[').trim_end_matches(']'), port)
        }
        Some((host, port)) if !host.contains(':') => (host, port),
        _ => (text, ""),
    };
    let (address, port_specifier) = match port.parse::<u32>() {
        Ok(p) => (host, Some(PortSpecifier::PortValue(p))),
        Err(_) => (text, None),
    };
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            protocol: 0,
            address: address.to_owned(),
            port_specifier,
        })),
    }
}

fn peer(address: Option<&str>, principal: Option<&str>) -> Option<Peer> {
    if address.is_none() && principal.is_none() {
        return None;
    }
    Some(Peer {
        address: address.map(socket_address),
        principal: principal.unwrap_or_default().to_owned(),
        ..Peer::default()
    })
}

fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    crate::mcp::header(headers, name).unwrap_or_default()
}

/// Builds the `CheckRequest`. `headers` are all request headers (pseudo
/// headers included, `authorization` included: the service authenticates
/// with it); keys are lowercased and repeated headers joined with `,` as
/// Envoy's own ext_authz filter does. `body` is already bounded by the
/// filter's limit.
pub fn check_request(
    headers: &[(String, String)],
    body: &[u8],
    connection: &Connection,
    message: &McpMessage,
) -> CheckRequest {
    let mut map: HashMap<String, String> = HashMap::with_capacity(headers.len());
    for (k, v) in headers {
        map.entry(k.to_ascii_lowercase())
            .and_modify(|existing| {
                existing.push(',');
                existing.push_str(v);
            })
            .or_insert_with(|| v.clone());
    }
    let http = HttpRequest {
        id: header_value(headers, "x-request-id").to_owned(),
        method: header_value(headers, ":method").to_owned(),
        path: header_value(headers, ":path").to_owned(),
        host: header_value(headers, ":authority").to_owned(),
        scheme: header_value(headers, ":scheme").to_owned(),
        protocol: connection.protocol.clone().unwrap_or_default(),
        size: i64::try_from(body.len()).unwrap_or(i64::MAX),
        headers: map,
        raw_body: body.to_vec(),
        ..HttpRequest::default()
    };
    let mut filter_metadata = HashMap::new();
    filter_metadata.insert(
        latchkey_proto::MCP_METADATA_NAMESPACE.to_owned(),
        message.to_metadata(),
    );
    CheckRequest {
        attributes: Some(AttributeContext {
            source: peer(
                connection.source_address.as_deref(),
                connection.peer_uri_san.as_deref(),
            ),
            destination: peer(connection.destination_address.as_deref(), None),
            request: Some(Request {
                time: connection.time.map(prost_types::Timestamp::from),
                http: Some(http),
            }),
            metadata_context: Some(Metadata { filter_metadata }),
            ..AttributeContext::default()
        }),
    }
}

/// The whole call: serialized upstream, serialized request, deadline.
/// `None` only if the configured names cannot be encoded (see
/// [`grpc_upstream`]).
pub fn check_call(
    config: &Config,
    headers: &[(String, String)],
    body: &[u8],
    connection: &Connection,
    message: &McpMessage,
) -> Option<CheckCall> {
    Some(CheckCall {
        upstream: grpc_upstream(config)?,
        service: AUTHZ_SERVICE,
        method: AUTHZ_METHOD,
        message: check_request(headers, body, connection, message).encode_to_vec(),
        timeout: config.authz_timeout(),
        upstream_body: crate::round_trip::upstream_body(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::MessageKind;
    use serde_json::json;

    fn headers() -> Vec<(String, String)> {
        [
            (":method", "POST"),
            (":path", "/mcp?x=1"),
            (":authority", "gw.example.com"),
            (":scheme", "https"),
            ("Authorization", "Bearer t0k"),
            ("x-request-id", "rid-1"),
            ("accept", "application/json"),
            ("accept", "text/event-stream"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn message() -> McpMessage {
        McpMessage {
            kind: MessageKind::Request,
            method: Some("tools/call".into()),
            id: Some(json!(3)),
            name: Some("echo".into()),
            protocol_version: None,
            session_id: None,
        }
    }

    #[test]
    fn fills_http_attributes_peers_body_and_metadata() {
        let conn = Connection {
            source_address: Some("10.1.2.3:40000".into()),
            destination_address: Some("[::1]:10000".into()),
            peer_uri_san: Some("spiffe://corp/agent/a".into()),
            protocol: Some("HTTP/1.1".into()),
            time: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(5)),
        };
        let body = br#"{"jsonrpc":"2.0"}"#;
        let req = check_request(&headers(), body, &conn, &message());
        let attrs = req.attributes.unwrap();
        let source = attrs.source.unwrap();
        assert_eq!(source.principal, "spiffe://corp/agent/a");
        assert_eq!(source.address, Some(socket_address("10.1.2.3:40000")));
        let dest = attrs.destination.unwrap();
        assert_eq!(dest.principal, "");
        let Some(address::Address::SocketAddress(sa)) = dest.address.unwrap().address else {
            panic!("socket address expected")
        };
        assert_eq!(sa.address, "::1");
        assert_eq!(sa.port_specifier, Some(PortSpecifier::PortValue(10000)));
        let request = attrs.request.unwrap();
        assert_eq!(request.time.unwrap().seconds, 5);
        let http = request.http.unwrap();
        assert_eq!(http.id, "rid-1");
        assert_eq!(http.method, "POST");
        assert_eq!(http.path, "/mcp?x=1");
        assert_eq!(http.host, "gw.example.com");
        assert_eq!(http.scheme, "https");
        assert_eq!(http.protocol, "HTTP/1.1");
        assert_eq!(http.headers["authorization"], "Bearer t0k");
        assert_eq!(http.headers["accept"], "application/json,text/event-stream");
        assert_eq!(http.headers[":authority"], "gw.example.com");
        assert_eq!(http.raw_body, body.to_vec());
        assert_eq!(http.size, body.len() as i64);
        let md = &attrs.metadata_context.unwrap().filter_metadata["latchkey.mcp"];
        assert_eq!(McpMessage::from_metadata(md), Some(message()));
    }

    #[test]
    fn peers_absent_when_unknown() {
        let req = check_request(&headers(), b"", &Connection::default(), &message());
        let attrs = req.attributes.unwrap();
        assert_eq!(attrs.source, None);
        assert_eq!(attrs.destination, None);
        assert_eq!(attrs.request.unwrap().time, None);
    }

    #[test]
    fn upstream_is_utf8_and_merges_into_one_grpc_service() {
        // Names as long as the configuration allows still give ASCII bytes.
        let config = Config {
            authz_cluster: "c".repeat(125),
            authz_authority: "a".repeat(125),
            ..Config::default()
        };
        let upstream = grpc_upstream(&config).unwrap();
        let svc = GrpcService::decode(upstream.as_bytes()).unwrap();
        let Some(TargetSpecifier::EnvoyGrpc(g)) = svc.target_specifier else {
            panic!("envoy_grpc expected")
        };
        assert_eq!(g.cluster_name, "c".repeat(125));
        assert_eq!(g.authority, "a".repeat(125));
        assert_eq!(svc.timeout, None);
        // Beyond that the length prefix is not UTF-8: refused, not mangled.
        let long = Config {
            authz_cluster: "c".repeat(126),
            ..Config::default()
        };
        assert_eq!(grpc_upstream(&long), None);
        let defaults = grpc_upstream(&Config::default()).unwrap();
        assert!(defaults.contains("latchkey_authz") && defaults.contains("latchkey-authz"));
    }

    #[test]
    fn address_parsing() {
        let sa = |t: &str| match socket_address(t).address {
            Some(address::Address::SocketAddress(sa)) => (sa.address, sa.port_specifier),
            _ => unreachable!(),
        };
        assert_eq!(
            sa("127.0.0.1:80"),
            ("127.0.0.1".into(), Some(PortSpecifier::PortValue(80)))
        );
        assert_eq!(
            sa("[fe80::1]:443"),
            ("fe80::1".into(), Some(PortSpecifier::PortValue(443)))
        );
        assert_eq!(sa("fe80::1"), ("fe80::1".into(), None));
        assert_eq!(sa("/tmp/sock"), ("/tmp/sock".into(), None));
    }

    #[test]
    fn call_targets_grpc_service_with_authority() {
        let config = Config {
            authz_cluster: "outbound|9191||authz.latchkey.svc.cluster.local".into(),
            authz_authority: "authz.latchkey.svc".into(),
            authz_timeout_ms: 2500,
            ..Config::default()
        };
        let call = check_call(
            &config,
            &headers(),
            b"{}",
            &Connection::default(),
            &message(),
        )
        .unwrap();
        assert_eq!(call.service, "envoy.service.auth.v3.Authorization");
        assert_eq!(call.method, "Check");
        assert_eq!(call.timeout, Duration::from_millis(2500));
        let svc = GrpcService::decode(call.upstream.as_bytes()).unwrap();
        let Some(TargetSpecifier::EnvoyGrpc(g)) = svc.target_specifier else {
            panic!("envoy_grpc expected")
        };
        assert_eq!(
            g.cluster_name,
            "outbound|9191||authz.latchkey.svc.cluster.local"
        );
        assert_eq!(g.authority, "authz.latchkey.svc");
        let req = CheckRequest::decode(call.message.as_slice()).unwrap();
        assert_eq!(
            req.attributes
                .unwrap()
                .request
                .unwrap()
                .http
                .unwrap()
                .raw_body,
            b"{}".to_vec()
        );
    }
}
