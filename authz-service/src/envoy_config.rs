//! Renders an Envoy bootstrap from the Latchkey config: one listener, a route
//! per server assignment to its upstream cluster, the Latchkey Wasm filter
//! (or Envoy's native ext_authz filter) in front of the router, and clusters
//! for the authorization service and every upstream. The local stack, the
//! end-to-end tests and the benchmarks all run bootstraps rendered here, so
//! there is one place that knows how Latchkey is wired into Envoy; `istio`
//! builds its resources from the same fragments (the filter's config, the
//! endpoints and their rewrites).

use std::fmt::Write;
use std::net::SocketAddr;

use url::Url;

use crate::config::Config;

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

pub fn render(config: &Config, opts: &RenderOptions) -> String {
    let mut y = String::new();
    let authz = loopback_if_unspecified(config.listen.grpc);
    let http = loopback_if_unspecified(config.listen.http);
    // Envoy buffers the whole request body for the Check: leave room above
    // the filter's own limit so the filter, not Envoy, answers an oversize body.
    let buffer_limit = opts.max_body_bytes.saturating_mul(2).max(1 << 20);

    let _ = writeln!(
        y,
        "# Rendered by `latchkey envoy render`; edit the Latchkey config and render again."
    );
    let _ = writeln!(
        y,
        "admin:\n  address:\n    socket_address: {{ address: {}, port_value: {} }}",
        opts.admin.ip(),
        opts.admin.port()
    );
    let _ = writeln!(y, "static_resources:\n  listeners:\n  - name: mcp");
    let _ = writeln!(
        y,
        "    address:\n      socket_address: {{ address: {}, port_value: {} }}",
        opts.listen.ip(),
        opts.listen.port()
    );
    let _ = writeln!(y, "    per_connection_buffer_limit_bytes: {buffer_limit}");
    let _ = writeln!(y, "    filter_chains:");
    match &opts.tls {
        Some(tls) => {
            let _ = writeln!(
                y,
                "    - transport_socket:\n        name: envoy.transport_sockets.tls\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
            );
            if tls.client_ca.is_some() {
                let _ = writeln!(y, "          require_client_certificate: true");
            }
            let _ = writeln!(
                y,
                "          common_tls_context:\n            tls_certificates:\n            - certificate_chain: {{ filename: \"{}\" }}\n              private_key: {{ filename: \"{}\" }}",
                tls.cert, tls.key
            );
            if let Some(ca) = &tls.client_ca {
                let _ = writeln!(
                    y,
                    "            validation_context:\n              trusted_ca: {{ filename: \"{ca}\" }}"
                );
            }
            let _ = writeln!(y, "      filters:");
        }
        None => {
            let _ = writeln!(y, "    - filters:");
        }
    }
    let _ = writeln!(
        y,
        "      - name: envoy.filters.network.http_connection_manager\n        typed_config:"
    );
    let _ = writeln!(
        y,
        "          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    );
    let _ = writeln!(y, "          stat_prefix: mcp\n          codec_type: AUTO");
    let _ = writeln!(
        y,
        "          # SSE streams stay open: no overall request timeout, a long idle timeout."
    );
    let _ = writeln!(
        y,
        "          request_timeout: 0s\n          stream_idle_timeout: 3600s"
    );
    let _ = writeln!(
        y,
        "          route_config:\n            name: mcp\n            virtual_hosts:"
    );
    for g in &config.gateways {
        let mut domains = vec![g.authority()];
        if let Some(h) = g.public_url.host_str()
            && !domains.iter().any(|d| d == h)
        {
            domains.push(h.to_string());
        }
        domains.extend(g.extra_hosts.iter().cloned());
        let domains: Vec<String> = domains.iter().map(|d| format!("\"{d}\"")).collect();
        let _ = writeln!(
            y,
            "            - name: gateway_{}\n              domains: [{}]\n              routes:",
            g.name,
            domains.join(", ")
        );
        let _ = writeln!(
            y,
            "              - match: {{ prefix: \"/.well-known/oauth-protected-resource\" }}\n                route: {{ cluster: latchkey_http }}"
        );
        if opts.mode != AuthzMode::None {
            let _ = writeln!(
                y,
                "                typed_per_filter_config:\n                  latchkey:\n                    \"@type\": type.googleapis.com/envoy.config.route.v3.FilterConfig\n                    disabled: true"
            );
        }
        for Endpoint { path, server, .. } in endpoints(config, g) {
            let upstream_path = upstream_path(&server.url);
            let _ = writeln!(y, "              - match: {{ path: \"{path}\" }}");
            let _ = writeln!(
                y,
                "                route:\n                  cluster: server_{}\n                  prefix_rewrite: \"{upstream_path}\"\n                  timeout: 0s\n                  idle_timeout: 3600s",
                server.name
            );
            if let Some(host) = host_header(&server.url) {
                let _ = writeln!(y, "                  host_rewrite_literal: \"{host}\"");
            }
        }
    }
    let _ = writeln!(y, "          http_filters:");
    match opts.mode {
        AuthzMode::Wasm => {
            let plugin = plugin_configuration(
                &opts.authz_cluster,
                &opts.authz_authority,
                opts.authz_timeout_ms,
                opts.max_body_bytes,
            );
            let filter = wasm_filter_config(
                &plugin,
                &WasmCode::Local {
                    filename: &opts.wasm_path,
                },
            );
            let _ = writeln!(
                y,
                "          # allow_on_headers_stop_iteration: the filter holds the headers while it\n          # reads the body, and still changes them afterwards (Envoy >= 1.35).\n          - name: latchkey\n            typed_config:"
            );
            y.push_str(&indented_yaml(&filter, 14));
        }
        AuthzMode::Native => {
            // The refused-credential report is the Latchkey filter's; a
            // client's copy goes before ext_authz sees the request (the
            // service also ignores it without the filter's metadata).
            let _ = writeln!(
                y,
                "          - name: envoy.filters.http.header_mutation\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation\n              mutations:\n                request_mutations:\n                - remove: \"{}\"",
                latchkey_filter::stale::REJECTED_HEADER
            );
            // Envoy's own MCP parser first, as a native MCP deployment has it;
            // the service still reads the forwarded body for the decision.
            let _ = writeln!(
                y,
                "          - name: envoy.filters.http.mcp\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.mcp.v3.Mcp"
            );
            let _ = writeln!(
                y,
                "          - name: latchkey\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz\n              transport_api_version: V3"
            );
            let _ = writeln!(
                y,
                "              grpc_service:\n                envoy_grpc: {{ cluster_name: \"{}\", authority: \"{}\" }}\n                timeout: {}s",
                opts.authz_cluster,
                opts.authz_authority,
                opts.authz_timeout_ms as f64 / 1000.0
            );
            let _ = writeln!(
                y,
                "              failure_mode_allow: false\n              status_on_error: {{ code: ServiceUnavailable }}"
            );
            let _ = writeln!(
                y,
                "              with_request_body: {{ max_request_bytes: {}, allow_partial_message: false, pack_as_bytes: true }}",
                opts.max_body_bytes
            );
        }
        AuthzMode::None => {}
    }
    let _ = writeln!(
        y,
        "          - name: envoy.filters.http.router\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    );
    let _ = writeln!(y, "  clusters:");
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
    cluster(&mut y, &opts.authz_cluster, &replicas, true, authz_tls);
    cluster(
        &mut y,
        "latchkey_http",
        &[(http.ip().to_string(), http.port())],
        false,
        None,
    );
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
        cluster(
            &mut y,
            &format!("server_{}", s.name),
            &[(host.to_string(), port)],
            false,
            tls,
        );
    }
    y
}

/// One published MCP endpoint and the server behind it: every assignment,
/// and every combined endpoint (which goes to the server its assignments share).
pub struct Endpoint<'c> {
    /// The route name Istio sees: `<gateway>:<endpoint>`. A gateway name has
    /// no `:`, so the first one splits it and no two endpoints share a name;
    /// Latchkey's own routes have no `:` at all.
    pub name: String,
    pub path: String,
    pub server: &'c crate::config::Server,
}

pub fn endpoints<'c>(config: &'c Config, g: &'c crate::config::Gateway) -> Vec<Endpoint<'c>> {
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

/// `value` as block YAML, each line indented by `spaces`.
pub fn indented_yaml(value: &serde_json::Value, spaces: usize) -> String {
    let text = serde_yaml_ng::to_string(value).unwrap_or_default();
    let pad = " ".repeat(spaces);
    text.lines()
        .filter(|l| *l != "---")
        .map(|l| format!("{pad}{l}\n"))
        .collect()
}

/// A cluster of `endpoints` (host, port); several are balanced round-robin.
fn cluster(
    y: &mut String,
    name: &str,
    endpoints: &[(String, u16)],
    http2: bool,
    tls: Option<UpstreamTls<'_>>,
) {
    let all_ips = endpoints
        .iter()
        .all(|(h, _)| h.parse::<std::net::IpAddr>().is_ok());
    let kind = if all_ips { "STATIC" } else { "STRICT_DNS" };
    let _ = writeln!(
        y,
        "  - name: {name}\n    type: {kind}\n    connect_timeout: 1s\n    lb_policy: ROUND_ROBIN"
    );
    if !all_ips {
        // `localhost` and friends often resolve to ::1 as well: prefer v4.
        let _ = writeln!(y, "    dns_lookup_family: V4_PREFERRED");
    }
    let _ = writeln!(
        y,
        "    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:"
    );
    for (host, port) in endpoints {
        let _ = writeln!(
            y,
            "        - endpoint:\n            address:\n              socket_address: {{ address: \"{host}\", port_value: {port} }}"
        );
    }
    if http2 {
        let _ = writeln!(
            y,
            "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config:\n          http2_protocol_options: {{}}"
        );
    }
    if let Some(tls) = tls {
        // The upstream proves who it is before a credential is sent: its
        // chain must reach `ca` and its SANs name the host it was asked for.
        let ip = tls.host.parse::<std::net::IpAddr>().is_ok();
        let _ = writeln!(
            y,
            "    transport_socket:\n      name: envoy.transport_sockets.tls\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
        );
        if !ip {
            // SNI carries host names only (RFC 6066).
            let _ = writeln!(y, "        sni: \"{}\"", tls.host);
        }
        let _ = writeln!(y, "        common_tls_context:");
        if let Some((cert, key)) = tls.client {
            // gRPC over TLS negotiates HTTP/2 by ALPN.
            let _ = writeln!(
                y,
                "          alpn_protocols: [\"h2\"]\n          tls_certificates:\n          - certificate_chain: {{ filename: \"{cert}\" }}\n            private_key: {{ filename: \"{key}\" }}"
            );
        }
        let _ = writeln!(
            y,
            "          validation_context:\n            trusted_ca: {{ filename: \"{}\" }}\n            match_typed_subject_alt_names:\n            - san_type: {}\n              matcher: {{ exact: \"{}\" }}",
            tls.ca,
            if ip { "IP_ADDRESS" } else { "DNS" },
            tls.host
        );
    }
}

/// The `Host` an upstream expects, when it differs from what clients sent.
pub fn host_header(url: &Url) -> Option<String> {
    Some(crate::config::authority_of(url)).filter(|h| !h.is_empty())
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
        Config::parse(include_str!("../../envoy/latchkey.local.toml")).unwrap()
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
            include_str!("../../envoy/local.yaml"),
            "re-render: latchkey envoy render --config envoy/latchkey.local.toml > envoy/local.yaml"
        );
    }

    #[test]
    fn routes_each_assignment_and_holds_headers_for_the_body() {
        let y = render(&local(), &defaults(AuthzMode::Wasm));
        assert!(y.contains("match: { path: \"/mcp/everything\" }"));
        assert!(y.contains("prefix_rewrite: \"/mcp\""));
        assert!(y.contains("allow_on_headers_stop_iteration: true"));
        assert!(y.contains("envoy.wasm.runtime.v8"));
        assert!(y.contains("fail_open: false"));
        // The metadata route bypasses the filter so token-less clients can read it.
        assert!(y.contains("disabled: true"));
    }

    #[test]
    fn a_combined_endpoint_is_routed_to_its_server() {
        let text = format!(
            "{}\n[[gateways.combined]]\nname = \"whoami-both\"\nassignments = [\"whoami\", \"whoami-mine\"]\n",
            include_str!("../../envoy/latchkey.local.toml")
        );
        let y = render(&Config::parse(&text).unwrap(), &defaults(AuthzMode::Wasm));
        let at = y
            .find("match: { path: \"/mcp/whoami-both\" }")
            .expect("combined route");
        let route = &y[at..];
        let next = route[1..].find("- match").map_or(route.len(), |n| n + 1);
        assert!(
            route[..next].contains("cluster: server_whoami"),
            "{}",
            &route[..next]
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
        let y = render(&local(), &opts);
        assert!(y.contains("DownstreamTlsContext"));
        assert!(y.contains("require_client_certificate: true"));
        assert!(y.contains("trusted_ca: { filename: \"/certs/ca.pem\" }"));
        // The HTTP connection manager is still the chain's filter.
        let chain = y.split("filter_chains:").nth(1).unwrap();
        assert!(chain.find("transport_socket").unwrap() < chain.find("filters:").unwrap());
        // Server TLS only: no client certificate asked for.
        opts.tls.as_mut().unwrap().client_ca = None;
        let y = render(&local(), &opts);
        assert!(y.contains("DownstreamTlsContext") && !y.contains("require_client_certificate"));
    }

    #[test]
    fn native_mode_fails_closed_and_forwards_the_body() {
        let y = render(&local(), &defaults(AuthzMode::Native));
        assert!(y.contains("envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"));
        assert!(y.contains("failure_mode_allow: false"));
        assert!(y.contains("pack_as_bytes: true"));
        assert!(!y.contains("envoy.wasm.runtime.v8"));
    }

    /// The filters of the listener, by name, in order.
    fn http_filters(y: &str) -> Vec<String> {
        let bootstrap: serde_json::Value = serde_yaml_ng::from_str(y).unwrap();
        bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["http_filters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn native_mode_drops_a_clients_refused_credential_report_before_ext_authz() {
        let y = render(&local(), &defaults(AuthzMode::Native));
        let filters = http_filters(&y);
        let strip = filters
            .iter()
            .position(|f| f == "envoy.filters.http.header_mutation")
            .expect("a header mutation filter");
        let authz = filters.iter().position(|f| f == "latchkey").unwrap();
        assert!(strip < authz, "{filters:?}");
        assert!(y.contains(&format!(
            "- remove: \"{}\"",
            latchkey_filter::stale::REJECTED_HEADER
        )));
        // The Wasm filter drops it itself.
        let wasm = render(&local(), &defaults(AuthzMode::Wasm));
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
            let y = render(&local(), &opts);
            let authz = cluster_of(&y, DEFAULT_AUTHZ_CLUSTER);
            assert!(authz.contains("UpstreamTlsContext"), "{authz}");
            assert!(authz.contains("sni: \"latchkey.internal\""), "{authz}");
            assert!(authz.contains("alpn_protocols: [\"h2\"]"), "{authz}");
            assert!(
                authz.contains("certificate_chain: { filename: \"/certs/envoy-client.pem\" }"),
                "{authz}"
            );
            assert!(
                authz.contains("private_key: { filename: \"/certs/envoy-client.key\" }"),
                "{authz}"
            );
            assert!(
                authz.contains("trusted_ca: { filename: \"/certs/latchkey-ca.pem\" }"),
                "{authz}"
            );
            assert!(authz.contains("san_type: DNS"), "{authz}");
            assert!(
                authz.contains("matcher: { exact: \"latchkey.internal\" }"),
                "{authz}"
            );
            // An IP address: its SAN, no SNI.
            opts.authz_tls.as_mut().unwrap().name = "10.0.0.9".into();
            let y = render(&local(), &opts);
            let authz = cluster_of(&y, DEFAULT_AUTHZ_CLUSTER);
            assert!(authz.contains("san_type: IP_ADDRESS") && !authz.contains("sni:"));
            // Without it the cluster is plaintext, as before.
            let y = render(&local(), &defaults(mode));
            assert!(!cluster_of(&y, DEFAULT_AUTHZ_CLUSTER).contains("transport_socket"));
        }
    }

    /// The cluster block of `name` in a rendered bootstrap.
    fn cluster_of<'y>(y: &'y str, name: &str) -> &'y str {
        let at = y.find(&format!("  - name: {name}\n")).expect("cluster");
        let rest = &y[at + 1..];
        &y[at..at + 1 + rest.find("\n  - name: ").unwrap_or(rest.len())]
    }

    #[test]
    fn an_https_upstream_must_prove_its_name_before_a_credential_goes_to_it() {
        let text = format!(
            "{}\n{}",
            include_str!("../../envoy/latchkey.local.toml"),
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
        let y = render(&Config::parse(&text).unwrap(), &defaults(AuthzMode::Wasm));
        let github = cluster_of(&y, "server_github");
        assert!(github.contains("UpstreamTlsContext"), "{github}");
        assert!(github.contains("sni: \"api.github.example\""), "{github}");
        assert!(
            github.contains(&format!(
                "trusted_ca: {{ filename: \"{DEFAULT_UPSTREAM_CA}\" }}"
            )),
            "{github}"
        );
        assert!(github.contains("san_type: DNS"), "{github}");
        assert!(
            github.contains("matcher: { exact: \"api.github.example\" }"),
            "{github}"
        );
        assert!(
            github.contains("dns_lookup_family: V4_PREFERRED"),
            "{github}"
        );
        assert!(github.contains("port_value: 443"), "{github}");

        let internal = cluster_of(&y, "server_internal");
        assert!(
            internal.contains("trusted_ca: { filename: \"/etc/corp/ca.pem\" }"),
            "{internal}"
        );
        assert!(internal.contains("san_type: IP_ADDRESS"), "{internal}");
        assert!(
            internal.contains("matcher: { exact: \"10.0.0.7\" }"),
            "{internal}"
        );
        assert!(!internal.contains("sni:"), "no SNI for an IP: {internal}");
        assert!(internal.contains("type: STATIC"), "{internal}");

        let v6 = cluster_of(&y, "server_v6");
        assert!(v6.contains("address: \"fd00::7\""), "{v6}");
        assert!(v6.contains("matcher: { exact: \"fd00::7\" }"), "{v6}");

        // Plain http upstreams have no TLS at all.
        assert!(!cluster_of(&y, "server_whoami").contains("transport_socket"));
    }
}
