//! Renders an Envoy bootstrap from the Latchkey config: one listener, a route
//! per server assignment to its upstream cluster, the Latchkey Wasm filter
//! (or Envoy's native ext_authz filter) in front of the router, and clusters
//! for the authorization service and every upstream. The local stack, the
//! end-to-end tests and the benchmarks all run bootstraps rendered here, so
//! there is one place that knows how Latchkey is wired into Envoy; `istio`
//! builds its resources from the same fragments (the filter's config, the
//! endpoints and their rewrites).

use std::net::SocketAddr;

use serde_json::{Value, json};
use url::Url;

use latchkey_core::config::Config;

/// How Envoy asks Latchkey.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthzMode {
    /// The Latchkey Wasm filter (MCP-aware, calls Check itself).
    Wasm,
    /// Envoy's built-in `envoy.filters.http.ext_authz`, body forwarded to Check.
    Native,
    /// No authorization at all: a baseline for benchmarks only.
    None,
}

#[derive(Debug, Clone)]
pub struct RenderOptions {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub mode: AuthzMode,
    /// Path of `latchkey_filter.wasm` as Envoy will see it.
    pub wasm_path: String,
    pub max_body_bytes: u64,
    pub authz_timeout_ms: u64,
    /// The name of the authorization service's cluster (Istio names its
    /// clusters `outbound|<port>||<host>`; the filter copes with either).
    pub authz_cluster: String,
    /// The `:authority` of the Check calls (under Istio: the Service's host).
    pub authz_authority: String,
    /// Every `latchkey serve` replica's gRPC address, balanced round-robin;
    /// empty means the config's own `listen.grpc`.
    pub authz_endpoints: Vec<SocketAddr>,
    /// Serve the listener over TLS (and mTLS when a client CA is given).
    pub tls: Option<DownstreamTls>,
    /// The PEM bundle `https` upstreams' certificates must chain to, unless
    /// a server names its own `ca_file`.
    pub upstream_ca: String,
    /// mTLS to the authorization service (its `[listen.grpc_tls]`); the
    /// Wasm filter's Check and native ext_authz both go through that cluster.
    pub authz_tls: Option<AuthzTls>,
}

/// How Envoy calls an authorization service that requires mTLS: it checks
/// the service's certificate (chain to `ca`, `name` among its SANs) and
/// presents its own. PEM paths as Envoy sees them.
#[derive(Debug, Clone)]
pub struct AuthzTls {
    pub ca: String,
    /// The service's DNS name (also sent as SNI) or IP address.
    pub name: String,
    /// Envoy's client certificate chain and key, issued by the CA the
    /// service has as `client_ca`.
    pub cert: String,
    pub key: String,
}

/// The authorization service's cluster in a rendered bootstrap.
pub const DEFAULT_AUTHZ_CLUSTER: &str = "latchkey_authz";
pub const DEFAULT_AUTHZ_AUTHORITY: &str = "latchkey-authz";

/// Where Debian, Ubuntu and Alpine keep the system's trusted CAs.
pub const DEFAULT_UPSTREAM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How Envoy checks an `https` upstream before any credential goes to it.
#[derive(Debug, Clone)]
struct UpstreamTls<'a> {
    /// Host name for SNI (none for an IP literal) and the SAN to require.
    host: &'a str,
    ca: &'a str,
    /// Envoy's own certificate and key, for an upstream that requires one.
    client: Option<(&'a str, &'a str)>,
}

/// PEM files for a TLS listener, as paths Envoy will see.
#[derive(Debug, Clone)]
pub struct DownstreamTls {
    pub cert: String,
    pub key: String,
    /// Clients must present a certificate this CA issued; its URI SAN (a
    /// SPIFFE ID) is the peer identity Latchkey recognises agents by.
    pub client_ca: Option<String>,
}

/// The bootstrap as YAML: one serde value (as `istio` renders its
/// resources), so a name or path from the config is always a quoted YAML
/// string and never changes the document's structure.
pub fn render(config: &Config, opts: &RenderOptions) -> String {
    let yaml = serde_yaml_ng::to_string(&bootstrap(config, opts)).unwrap_or_default();
    format!(
        "# Rendered by `latchkey envoy render`; edit the Latchkey config and render again.\n{yaml}"
    )
}

/// The bootstrap: Envoy's admin listener, the MCP listener and the clusters.
pub fn bootstrap(config: &Config, opts: &RenderOptions) -> Value {
    json!({
        "admin": { "address": socket_address(&opts.admin.ip().to_string(), opts.admin.port()) },
        "static_resources": {
            "listeners": [listener(config, opts)],
            "clusters": clusters(config, opts),
        },
    })
}

fn socket_address(host: &str, port: u16) -> Value {
    json!({ "socket_address": { "address": host, "port_value": port } })
}

fn typed(type_name: &str, mut fields: Value) -> Value {
    fields["@type"] = format!("type.googleapis.com/{type_name}").into();
    fields
}

fn file(path: &str) -> Value {
    json!({ "filename": path })
}

fn listener(config: &Config, opts: &RenderOptions) -> Value {
    // Envoy buffers the whole request body for the Check: leave room above
    // the filter's own limit so the filter, not Envoy, answers an oversize body.
    let buffer_limit = opts.max_body_bytes.saturating_mul(2).max(1 << 20);
    let manager = typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        json!({
            "stat_prefix": "mcp",
            "codec_type": "AUTO",
            // SSE streams stay open: no overall request timeout, a long idle timeout.
            "request_timeout": "0s",
            "stream_idle_timeout": "3600s",
            "route_config": {
                "name": "mcp",
                "virtual_hosts": config.gateways.iter().map(|g| virtual_host(config, g, opts)).collect::<Vec<_>>(),
            },
            "http_filters": http_filters(opts),
        }),
    );
    let mut chain = json!({
        "filters": [{ "name": "envoy.filters.network.http_connection_manager", "typed_config": manager }],
    });
    if let Some(tls) = &opts.tls {
        let mut context = json!({
            "common_tls_context": {
                "tls_certificates": [{ "certificate_chain": file(&tls.cert), "private_key": file(&tls.key) }],
            },
        });
        if let Some(ca) = &tls.client_ca {
            context["require_client_certificate"] = true.into();
            context["common_tls_context"]["validation_context"] = json!({ "trusted_ca": file(ca) });
        }
        chain["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": typed("envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext", context),
        });
    }
    json!({
        "name": "mcp",
        "address": socket_address(&opts.listen.ip().to_string(), opts.listen.port()),
        "per_connection_buffer_limit_bytes": buffer_limit,
        "filter_chains": [chain],
    })
}

/// A gateway's host: its RFC 9728 metadata (no filter: token-less clients
/// read it), then a route per published endpoint to its server's cluster.
fn virtual_host(
    config: &Config,
    g: &latchkey_core::config::Gateway,
    opts: &RenderOptions,
) -> Value {
    let mut domains = vec![g.authority()];
    if let Some(h) = g.public_url.host_str()
        && !domains.iter().any(|d| d == h)
    {
        domains.push(h.to_string());
    }
    domains.extend(g.extra_hosts.iter().cloned());
    let mut metadata = json!({
        "match": { "prefix": "/.well-known/oauth-protected-resource" },
        "route": { "cluster": "latchkey_http" },
    });
    if opts.mode != AuthzMode::None {
        metadata["typed_per_filter_config"] = json!({
            "latchkey": typed("envoy.config.route.v3.FilterConfig", json!({ "disabled": true })),
        });
    }
    let mut routes = vec![metadata];
    for Endpoint { path, server, .. } in endpoints(config, g) {
        let mut route = json!({
            "cluster": format!("server_{}", server.name),
            "prefix_rewrite": upstream_path(&server.url),
            "timeout": "0s",
            "idle_timeout": "3600s",
        });
        if let Some(host) = host_header(&server.url) {
            route["host_rewrite_literal"] = host.into();
        }
        routes.push(json!({ "match": { "path": path }, "route": route }));
    }
    json!({ "name": format!("gateway_{}", g.name), "domains": domains, "routes": routes })
}

fn http_filters(opts: &RenderOptions) -> Vec<Value> {
    let mut filters = Vec::new();
    match opts.mode {
        AuthzMode::Wasm => {
            let plugin = plugin_configuration(
                &opts.authz_cluster,
                &opts.authz_authority,
                opts.authz_timeout_ms,
                opts.max_body_bytes,
            );
            let code = WasmCode::Local {
                filename: &opts.wasm_path,
            };
            filters.push(
                json!({ "name": "latchkey", "typed_config": wasm_filter_config(&plugin, &code) }),
            );
        }
        AuthzMode::Native => {
            // The refused-credential report is the Latchkey filter's; a
            // client's copy goes before ext_authz sees the request (the
            // service also ignores it without the filter's metadata).
            filters.push(json!({
                "name": "envoy.filters.http.header_mutation",
                "typed_config": typed(
                    "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                    json!({ "mutations": { "request_mutations": [{ "remove": latchkey_filter::stale::REJECTED_HEADER }] } }),
                ),
            }));
            // Envoy's own MCP parser first, as a native MCP deployment has it;
            // the service still reads the forwarded body for the decision.
            filters.push(json!({
                "name": "envoy.filters.http.mcp",
                "typed_config": typed("envoy.extensions.filters.http.mcp.v3.Mcp", json!({})),
            }));
            filters.push(json!({
                "name": "latchkey",
                "typed_config": typed(
                    "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                    json!({
                        "transport_api_version": "V3",
                        "grpc_service": {
                            "envoy_grpc": { "cluster_name": opts.authz_cluster, "authority": opts.authz_authority },
                            "timeout": format!("{}s", opts.authz_timeout_ms as f64 / 1000.0),
                        },
                        "failure_mode_allow": false,
                        "status_on_error": { "code": "ServiceUnavailable" },
                        "with_request_body": {
                            "max_request_bytes": opts.max_body_bytes,
                            "allow_partial_message": false,
                            "pack_as_bytes": true,
                        },
                    }),
                ),
            }));
        }
        AuthzMode::None => {}
    }
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": typed("envoy.extensions.filters.http.router.v3.Router", json!({})),
    }));
    filters
}

/// The authorization service's gRPC replicas, its HTTP side, and every
/// upstream server.
fn clusters(config: &Config, opts: &RenderOptions) -> Vec<Value> {
    let authz = loopback_if_unspecified(config.listen.grpc);
    let http = loopback_if_unspecified(config.listen.http);
    let replicas: Vec<(String, u16)> = if opts.authz_endpoints.is_empty() {
        vec![(authz.ip().to_string(), authz.port())]
    } else {
        opts.authz_endpoints
            .iter()
            .map(|a| {
                let a = loopback_if_unspecified(*a);
                (a.ip().to_string(), a.port())
            })
            .collect()
    };
    let authz_tls = opts.authz_tls.as_ref().map(|t| UpstreamTls {
        host: &t.name,
        ca: &t.ca,
        client: Some((&t.cert, &t.key)),
    });
    let mut all = vec![
        cluster(&opts.authz_cluster, &replicas, true, authz_tls),
        cluster(
            "latchkey_http",
            &[(http.ip().to_string(), http.port())],
            false,
            None,
        ),
    ];
    for s in &config.servers {
        // `host_str` keeps an IPv6 literal's brackets; Envoy wants it bare.
        let host = s
            .url
            .host_str()
            .unwrap_or("127.0.0.1")
            .trim_start_matches('[')
            .trim_end_matches(']');
        let tls = (s.url.scheme() == "https").then(|| UpstreamTls {
            host,
            ca: s.ca_file.as_deref().unwrap_or(&opts.upstream_ca),
            client: None,
        });
        let port = s.url.port_or_known_default().unwrap_or(80);
        all.push(cluster(
            &format!("server_{}", s.name),
            &[(host.to_string(), port)],
            false,
            tls,
        ));
    }
    all
}

/// One published MCP endpoint and the server behind it: every assignment,
/// and every combined endpoint (which goes to the server its assignments share).
pub struct Endpoint<'c> {
    /// The route name Istio sees: `<gateway>:<endpoint>`. A gateway name has
    /// no `:`, so the first one splits it and no two endpoints share a name;
    /// Latchkey's own routes have no `:` at all.
    pub name: String,
    pub path: String,
    pub server: &'c latchkey_core::config::Server,
}

pub fn endpoints<'c>(
    config: &'c Config,
    g: &'c latchkey_core::config::Gateway,
) -> Vec<Endpoint<'c>> {
    let combined = g.combined.iter().filter_map(|c| {
        let first = g.assignment(c.assignments.first()?)?;
        Some((c.name.as_str(), g.endpoint_path(&c.name), first))
    });
    g.assignments
        .iter()
        .map(|a| (a.name.as_str(), g.assignment_path(a), a))
        .chain(combined)
        .filter_map(|(name, path, a)| {
            Some(Endpoint {
                name: format!("{}:{name}", g.name),
                path,
                server: config.server(&a.server)?,
            })
        })
        .collect()
}

/// The path an endpoint is rewritten to upstream (the server URL's own).
pub fn upstream_path(url: &Url) -> &str {
    match url.path() {
        "" => "/",
        p => p,
    }
}

/// What the Latchkey Wasm filter reads from its plugin configuration: which
/// cluster and `:authority` its gRPC Check goes to, how long it waits, and
/// the largest body it reads.
pub fn plugin_configuration(
    authz_cluster: &str,
    authz_authority: &str,
    authz_timeout_ms: u64,
    max_body_bytes: u64,
) -> serde_json::Value {
    serde_json::json!({
        "authz_cluster": authz_cluster,
        "authz_authority": authz_authority,
        "authz_timeout_ms": authz_timeout_ms,
        "max_body_bytes": max_body_bytes,
    })
}

/// Where Envoy gets the filter's code.
pub enum WasmCode<'a> {
    /// A file Envoy can read.
    Local { filename: &'a str },
    /// A URL (under Istio the istio-agent fetches it, checks `sha256` and
    /// hands Envoy a local file).
    Remote {
        url: &'a str,
        sha256: Option<&'a str>,
    },
}

/// The Wasm HTTP filter's `typed_config`, the same for a rendered bootstrap
/// and for Istio's extension config.
pub fn wasm_filter_config(plugin: &serde_json::Value, code: &WasmCode<'_>) -> serde_json::Value {
    let code = match code {
        WasmCode::Local { filename } => serde_json::json!({ "local": { "filename": filename } }),
        WasmCode::Remote { url, sha256 } => {
            let mut remote = serde_json::json!({
                "http_uri": { "uri": url, "timeout": "30s" },
            });
            if let Some(sum) = sha256 {
                remote["sha256"] = (*sum).into();
            }
            serde_json::json!({ "remote": remote })
        }
    };
    serde_json::json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {
            "name": "latchkey",
            "root_id": "latchkey",
            // Lets the filter hold the headers while it reads the body, and
            // still change them afterwards (Envoy >= 1.35); without it a POST
            // hangs until the stream idle timeout.
            "allow_on_headers_stop_iteration": true,
            // A broken filter refuses traffic rather than letting it through.
            "fail_open": false,
            "configuration": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": plugin.to_string(),
            },
            "vm_config": {
                "runtime": "envoy.wasm.runtime.v8",
                "code": code,
            },
        },
    })
}

/// A cluster of `endpoints` (host, port); several are balanced round-robin.
fn cluster(
    name: &str,
    endpoints: &[(String, u16)],
    http2: bool,
    tls: Option<UpstreamTls<'_>>,
) -> Value {
    let all_ips = endpoints
        .iter()
        .all(|(h, _)| h.parse::<std::net::IpAddr>().is_ok());
    let lb_endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(host, port)| json!({ "endpoint": { "address": socket_address(host, *port) } }))
        .collect();
    let mut c = json!({
        "name": name,
        "type": if all_ips { "STATIC" } else { "STRICT_DNS" },
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": lb_endpoints }] },
    });
    if !all_ips {
        // `localhost` and friends often resolve to ::1 as well: prefer v4.
        c["dns_lookup_family"] = "V4_PREFERRED".into();
    }
    if http2 {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                json!({ "explicit_http_config": { "http2_protocol_options": {} } }),
            ),
        });
    }
    if let Some(tls) = tls {
        // The upstream proves who it is before a credential is sent: its
        // chain must reach `ca` and its SANs name the host it was asked for.
        let ip = tls.host.parse::<std::net::IpAddr>().is_ok();
        let mut common = json!({
            "validation_context": {
                "trusted_ca": file(tls.ca),
                "match_typed_subject_alt_names": [{
                    "san_type": if ip { "IP_ADDRESS" } else { "DNS" },
                    "matcher": { "exact": tls.host },
                }],
            },
        });
        if let Some((cert, key)) = tls.client {
            // gRPC over TLS negotiates HTTP/2 by ALPN.
            common["alpn_protocols"] = json!(["h2"]);
            common["tls_certificates"] =
                json!([{ "certificate_chain": file(cert), "private_key": file(key) }]);
        }
        let mut context = json!({ "common_tls_context": common });
        if !ip {
            // SNI carries host names only (RFC 6066).
            context["sni"] = tls.host.into();
        }
        c["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": typed("envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", context),
        });
    }
    c
}

/// The `Host` an upstream expects, when it differs from what clients sent.
pub fn host_header(url: &Url) -> Option<String> {
    Some(latchkey_core::config::authority_of(url)).filter(|h| !h.is_empty())
}

fn loopback_if_unspecified(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> Config {
        Config::parse(include_str!("../../../../envoy/latchkey.local.toml")).unwrap()
    }

    fn defaults(mode: AuthzMode) -> RenderOptions {
        RenderOptions {
            listen: "127.0.0.1:10000".parse().unwrap(),
            admin: "127.0.0.1:9901".parse().unwrap(),
            mode,
            wasm_path: "target/wasm32-wasip1/release/latchkey_filter.wasm".into(),
            max_body_bytes: 1 << 20,
            authz_timeout_ms: 2000,
            authz_endpoints: vec![],
            tls: None,
            upstream_ca: DEFAULT_UPSTREAM_CA.into(),
            authz_cluster: DEFAULT_AUTHZ_CLUSTER.into(),
            authz_authority: DEFAULT_AUTHZ_AUTHORITY.into(),
            authz_tls: None,
        }
    }

    /// `envoy/local.yaml` is kept for reading; it must be what the renderer
    /// produces (`latchkey envoy render --config envoy/latchkey.local.toml`).
    #[test]
    fn committed_local_bootstrap_is_current() {
        assert_eq!(
            render(&local(), &defaults(AuthzMode::Wasm)),
            include_str!("../../../../envoy/local.yaml"),
            "re-render: latchkey envoy render --config envoy/latchkey.local.toml > envoy/local.yaml"
        );
    }

    /// A rendered bootstrap read back as Envoy reads it (YAML as JSON values).
    fn parsed(y: &str) -> Value {
        serde_yaml_ng::from_str(y).unwrap()
    }

    fn manager(b: &Value) -> &Value {
        &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    }

    /// The route whose match is `path`, on the first virtual host.
    fn route<'b>(b: &'b Value, path: &str) -> &'b Value {
        manager(b)["route_config"]["virtual_hosts"][0]["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["match"]["path"] == path)
            .unwrap_or_else(|| panic!("no route for {path}"))
    }

    /// The cluster `name` of a rendered bootstrap.
    fn cluster_of<'b>(b: &'b Value, name: &str) -> &'b Value {
        b["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no cluster {name}"))
    }

    /// The filters of the listener, by name, in order.
    fn http_filters(b: &Value) -> Vec<String> {
        manager(b)["http_filters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn routes_each_assignment_and_holds_headers_for_the_body() {
        let b = parsed(&render(&local(), &defaults(AuthzMode::Wasm)));
        assert_eq!(
            route(&b, "/mcp/everything")["route"]["prefix_rewrite"],
            "/mcp"
        );
        let wasm = &manager(&b)["http_filters"][0]["typed_config"]["config"];
        assert_eq!(wasm["allow_on_headers_stop_iteration"], true);
        assert_eq!(wasm["fail_open"], false);
        assert_eq!(wasm["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
        // The metadata route bypasses the filter so token-less clients can read it.
        let metadata = &manager(&b)["route_config"]["virtual_hosts"][0]["routes"][0];
        assert_eq!(
            metadata["match"]["prefix"],
            "/.well-known/oauth-protected-resource"
        );
        assert_eq!(
            metadata["typed_per_filter_config"]["latchkey"]["disabled"],
            true
        );
    }

    #[test]
    fn config_values_read_back_as_the_config_has_them() {
        // A server URL path with YAML's own syntax in it (`: `, quotes,
        // flow braces): one string, the document's structure unchanged.
        let text = include_str!("../../../../envoy/latchkey.local.toml").replace(
            "url = \"http://127.0.0.1:3002/mcp\"",
            "url = \"http://127.0.0.1:3002/mcp: 'x'/{y}, [z]\"",
        );
        let config = Config::parse(&text).unwrap();
        let whoami = config.server("whoami").unwrap().url.clone();
        let b = parsed(&render(&config, &defaults(AuthzMode::Wasm)));
        assert_eq!(
            route(&b, "/mcp/whoami")["route"]["prefix_rewrite"],
            upstream_path(&whoami)
        );
        assert_eq!(
            b["static_resources"]["clusters"].as_array().unwrap().len(),
            2 + config.servers.len()
        );
    }

    #[test]
    fn a_combined_endpoint_is_routed_to_its_server() {
        let text = format!(
            "{}\n[[gateways.combined]]\nname = \"whoami-both\"\nassignments = [\"whoami\", \"whoami-mine\"]\n",
            include_str!("../../../../envoy/latchkey.local.toml")
        );
        let b = parsed(&render(
            &Config::parse(&text).unwrap(),
            &defaults(AuthzMode::Wasm),
        ));
        assert_eq!(
            route(&b, "/mcp/whoami-both")["route"]["cluster"],
            "server_whoami"
        );
    }

    #[test]
    fn a_client_ca_makes_the_listener_require_client_certificates() {
        let mut opts = defaults(AuthzMode::Wasm);
        opts.tls = Some(DownstreamTls {
            cert: "/certs/envoy.pem".into(),
            key: "/certs/envoy.key".into(),
            client_ca: Some("/certs/ca.pem".into()),
        });
        let b = parsed(&render(&local(), &opts));
        let chain = &b["static_resources"]["listeners"][0]["filter_chains"][0];
        let tls = &chain["transport_socket"]["typed_config"];
        assert!(
            tls["@type"]
                .as_str()
                .unwrap()
                .ends_with("DownstreamTlsContext")
        );
        assert_eq!(tls["require_client_certificate"], true);
        assert_eq!(
            tls["common_tls_context"]["validation_context"]["trusted_ca"]["filename"],
            "/certs/ca.pem"
        );
        // The HTTP connection manager is still the chain's filter.
        assert_eq!(
            chain["filters"][0]["name"],
            "envoy.filters.network.http_connection_manager"
        );
        // Server TLS only: no client certificate asked for.
        opts.tls.as_mut().unwrap().client_ca = None;
        let b = parsed(&render(&local(), &opts));
        let tls = &b["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"]["typed_config"];
        assert!(tls.is_object() && tls.get("require_client_certificate").is_none());
    }

    #[test]
    fn native_mode_fails_closed_and_forwards_the_body() {
        let b = parsed(&render(&local(), &defaults(AuthzMode::Native)));
        let authz = manager(&b)["http_filters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "latchkey")
            .unwrap();
        let config = &authz["typed_config"];
        assert!(
            config["@type"]
                .as_str()
                .unwrap()
                .ends_with("ext_authz.v3.ExtAuthz")
        );
        assert_eq!(config["failure_mode_allow"], false);
        assert_eq!(config["with_request_body"]["pack_as_bytes"], true);
        assert!(!http_filters(&b).is_empty());
        assert!(!render(&local(), &defaults(AuthzMode::Native)).contains("envoy.wasm.runtime.v8"));
    }

    #[test]
    fn native_mode_drops_a_clients_refused_credential_report_before_ext_authz() {
        let b = parsed(&render(&local(), &defaults(AuthzMode::Native)));
        let filters = http_filters(&b);
        let strip = filters
            .iter()
            .position(|f| f == "envoy.filters.http.header_mutation")
            .expect("a header mutation filter");
        let authz = filters.iter().position(|f| f == "latchkey").unwrap();
        assert!(strip < authz, "{filters:?}");
        assert_eq!(
            manager(&b)["http_filters"][strip]["typed_config"]["mutations"]["request_mutations"][0]
                ["remove"],
            latchkey_filter::stale::REJECTED_HEADER
        );
        // The Wasm filter drops it itself.
        let wasm = parsed(&render(&local(), &defaults(AuthzMode::Wasm)));
        assert!(!http_filters(&wasm).contains(&"envoy.filters.http.header_mutation".into()));
    }

    #[test]
    fn the_authz_cluster_speaks_mtls_and_checks_the_services_name() {
        for mode in [AuthzMode::Wasm, AuthzMode::Native] {
            let mut opts = defaults(mode);
            opts.authz_tls = Some(AuthzTls {
                ca: "/certs/latchkey-ca.pem".into(),
                name: "latchkey.internal".into(),
                cert: "/certs/envoy-client.pem".into(),
                key: "/certs/envoy-client.key".into(),
            });
            let b = parsed(&render(&local(), &opts));
            let tls = &cluster_of(&b, DEFAULT_AUTHZ_CLUSTER)["transport_socket"]["typed_config"];
            assert!(
                tls["@type"]
                    .as_str()
                    .unwrap()
                    .ends_with("UpstreamTlsContext")
            );
            assert_eq!(tls["sni"], "latchkey.internal");
            let common = &tls["common_tls_context"];
            assert_eq!(common["alpn_protocols"][0], "h2");
            assert_eq!(
                common["tls_certificates"][0]["certificate_chain"]["filename"],
                "/certs/envoy-client.pem"
            );
            assert_eq!(
                common["tls_certificates"][0]["private_key"]["filename"],
                "/certs/envoy-client.key"
            );
            let validation = &common["validation_context"];
            assert_eq!(
                validation["trusted_ca"]["filename"],
                "/certs/latchkey-ca.pem"
            );
            let san = &validation["match_typed_subject_alt_names"][0];
            assert_eq!(san["san_type"], "DNS");
            assert_eq!(san["matcher"]["exact"], "latchkey.internal");
            // An IP address: its SAN, no SNI.
            opts.authz_tls.as_mut().unwrap().name = "10.0.0.9".into();
            let b = parsed(&render(&local(), &opts));
            let tls = &cluster_of(&b, DEFAULT_AUTHZ_CLUSTER)["transport_socket"]["typed_config"];
            assert_eq!(
                tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"][0]
                    ["san_type"],
                "IP_ADDRESS"
            );
            assert!(tls.get("sni").is_none());
            // Without it the cluster is plaintext, as before.
            let b = parsed(&render(&local(), &defaults(mode)));
            assert!(
                cluster_of(&b, DEFAULT_AUTHZ_CLUSTER)
                    .get("transport_socket")
                    .is_none()
            );
        }
    }

    #[test]
    fn an_https_upstream_must_prove_its_name_before_a_credential_goes_to_it() {
        let text = format!(
            "{}\n{}",
            include_str!("../../../../envoy/latchkey.local.toml"),
            r#"
[[servers]]
name = "github"
url = "https://api.github.example/mcp"

[[servers]]
name = "internal"
url = "https://10.0.0.7:8443/mcp"
ca_file = "/etc/corp/ca.pem"

[[servers]]
name = "v6"
url = "https://[fd00::7]/mcp"
"#
        );
        let b = parsed(&render(
            &Config::parse(&text).unwrap(),
            &defaults(AuthzMode::Wasm),
        ));
        let tls_of = |c: &Value| c["transport_socket"]["typed_config"].clone();
        let san_of = |c: &Value| {
            tls_of(c)["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"]
                [0]
            .clone()
        };
        let ca_of = |c: &Value| {
            tls_of(c)["common_tls_context"]["validation_context"]["trusted_ca"]["filename"].clone()
        };
        let port_of = |c: &Value| {
            c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"]
                .clone()
        };

        let github = cluster_of(&b, "server_github");
        assert!(
            tls_of(github)["@type"]
                .as_str()
                .unwrap()
                .ends_with("UpstreamTlsContext")
        );
        assert_eq!(tls_of(github)["sni"], "api.github.example");
        assert_eq!(ca_of(github), DEFAULT_UPSTREAM_CA);
        assert_eq!(san_of(github)["san_type"], "DNS");
        assert_eq!(san_of(github)["matcher"]["exact"], "api.github.example");
        assert_eq!(github["dns_lookup_family"], "V4_PREFERRED");
        assert_eq!(port_of(github)["port_value"], 443);

        let internal = cluster_of(&b, "server_internal");
        assert_eq!(ca_of(internal), "/etc/corp/ca.pem");
        assert_eq!(san_of(internal)["san_type"], "IP_ADDRESS");
        assert_eq!(san_of(internal)["matcher"]["exact"], "10.0.0.7");
        assert!(tls_of(internal).get("sni").is_none(), "no SNI for an IP");
        assert_eq!(internal["type"], "STATIC");

        let v6 = cluster_of(&b, "server_v6");
        assert_eq!(port_of(v6)["address"], "fd00::7");
        assert_eq!(san_of(v6)["matcher"]["exact"], "fd00::7");

        // Plain http upstreams have no TLS at all.
        assert!(
            cluster_of(&b, "server_whoami")
                .get("transport_socket")
                .is_none()
        );
    }
}
