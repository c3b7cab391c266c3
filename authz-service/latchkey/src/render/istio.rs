//! Renders the Istio resources that put Latchkey in front of a mesh's MCP
//! servers, from the same config and the same filter fragments as
//! `envoy render` (`render::envoy`), so the filter Istio runs is the one the
//! end-to-end tests run.
//!
//! The filter runs on an Istio gateway (selected by labels): an `EnvoyFilter`
//! adds it as an extension config, because Istio's `WasmPlugin` cannot set
//! `allow_on_headers_stop_iteration`, and inserts it before the router,
//! waiting for that config before the listener takes traffic. A
//! `VirtualService` per Latchkey gateway routes each published endpoint to its
//! server (path and authority rewritten), and the protected-resource metadata
//! to Latchkey's HTTP side with the filter off. `https` servers get a
//! `DestinationRule` that originates TLS and checks the server's name, and a
//! `ServiceEntry` when they are outside the cluster. With `--mode native`
//! Envoy's own ext_authz is used instead: an `AuthorizationPolicy` with
//! `action: CUSTOM` and the mesh config's extension provider (printed as a
//! comment: it belongs in the mesh config, not in a resource).
//!
//! In both modes Latchkey's gRPC port hands out decrypted credentials, so
//! only the gateway may call it: a `PeerAuthentication` makes mTLS STRICT
//! for Latchkey's workload (no plaintext caller), and an
//! `AuthorizationPolicy` denies its gRPC port to every principal but the
//! gateway's service account. A DENY rather than an ALLOW: an ALLOW policy
//! on the workload would also shut its other ports (the HTTP side browsers
//! reach, the admin API, metrics) unless each were listed, and no ALLOW
//! policy added later can reopen a port a DENY closes.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::render::envoy::{
    AuthzMode, WasmCode, endpoints, host_header, plugin_configuration, upstream_path,
    wasm_filter_config,
};
use latchkey_core::config::Config;

/// The Envoy type of the Wasm HTTP filter (what the extension config carries).
const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// How Latchkey is deployed in the cluster and how the mesh reaches it.
#[derive(Debug, Clone)]
pub struct IstioOptions {
    pub mode: AuthzMode,
    /// Where the resources go: the namespace of the gateway workload the
    /// `EnvoyFilter` selects.
    pub namespace: String,
    /// Labels of the gateway workload(s) that run the filter.
    pub selector: BTreeMap<String, String>,
    /// The Istio `Gateway` resource the routes bind to (`namespace/name`).
    pub gateway: String,
    /// Latchkey's Service (`<name>.<namespace>.svc.cluster.local`).
    pub service_host: String,
    pub grpc_port: u16,
    pub http_port: u16,
    /// Where the istio-agent downloads `latchkey_filter.wasm` (`https://…`).
    pub wasm_url: String,
    /// The module's SHA-256 (hex): the agent refuses any other bytes.
    pub wasm_sha256: Option<String>,
    pub max_body_bytes: u64,
    pub authz_timeout_ms: u64,
    /// A CA bundle path (in the gateway pod) `https` servers must chain to,
    /// unless a server names its own `ca_file`; none: Istio's default roots.
    pub upstream_ca: Option<String>,
    /// Labels of Latchkey's own pods (what the mTLS resources select).
    pub service_selector: BTreeMap<String, String>,
    /// The mesh principals that may call Latchkey's gRPC port: the gateway
    /// workload's service account (`<trust domain>/ns/<ns>/sa/<account>`).
    pub gateway_principals: Vec<String>,
}

impl IstioOptions {
    /// The cluster Istio creates for Latchkey's gRPC port.
    pub fn authz_cluster(&self) -> String {
        format!("outbound|{}||{}", self.grpc_port, self.service_host)
    }

    /// Latchkey's namespace, from its Service host
    /// (`<name>.<namespace>.svc.cluster.local`).
    pub fn service_namespace(&self) -> &str {
        self.service_host.split('.').nth(1).unwrap_or("default")
    }

    /// The principal Istio gives the default ingress gateway of `namespace`.
    pub fn default_gateway_principal(namespace: &str) -> String {
        format!("cluster.local/ns/{namespace}/sa/istio-ingressgateway-service-account")
    }
}

/// The Latchkey plugin configuration under Istio: Istio's cluster name, and
/// the Service's host as the `:authority` (the cluster name is not a valid
/// one).
pub fn istio_plugin_configuration(opts: &IstioOptions) -> Value {
    plugin_configuration(
        &opts.authz_cluster(),
        &opts.service_host,
        opts.authz_timeout_ms,
        opts.max_body_bytes,
    )
}

/// The resources, as one multi-document YAML stream for `kubectl apply -f -`.
pub fn render_istio(config: &Config, opts: &IstioOptions) -> String {
    let mut out = String::from(
        "# Rendered by `latchkey envoy istio`; edit the Latchkey config and render again.\n",
    );
    if opts.mode == AuthzMode::Native {
        out.push_str(&mesh_config_comment(opts));
    }
    let mut resources = Vec::new();
    match opts.mode {
        AuthzMode::Wasm => resources.push(envoy_filter(config, opts)),
        AuthzMode::Native => resources.push(authorization_policy(config, opts)),
        AuthzMode::None => {}
    }
    resources.extend(check_port_callers(opts));
    resources.extend(virtual_services(config, opts));
    resources.extend(upstream_tls(config, opts));
    for r in resources {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&r).unwrap_or_default());
    }
    out
}

fn metadata(name: &str, opts: &IstioOptions) -> Value {
    json!({ "name": name, "namespace": opts.namespace, "labels": { "app.kubernetes.io/managed-by": "latchkey" } })
}

/// The name every Latchkey gateway's metadata route has: the filter is
/// switched off on it (clients read it before they have a token). Latchkey's
/// own route names have no `:`, which every endpoint's route has
/// (`<gateway>:<endpoint>`, and a gateway name has none), so no
/// configuration can switch the filter off on an MCP endpoint.
fn metadata_route(gateway: &str) -> String {
    format!("protected-resource-metadata.{gateway}")
}

/// The route of the connect page (`[connect]`): people's browsers, no bearer
/// token, so the filter is off on it too.
const CONNECT_ROUTE: &str = "connect-page";

/// Where browsers reach the connect page: its host, and the route that
/// strips `public_url`'s path (the HTTP side serves `/connect/...`).
fn connect_route(config: &Config, opts: &IstioOptions) -> Option<(String, Value)> {
    let connect = config.connect.as_ref()?;
    let url = &connect.public_url;
    let prefix = url.path().trim_end_matches('/');
    Some((
        upstream_host(url),
        json!({
            "name": CONNECT_ROUTE,
            "match": [{ "uri": { "prefix": format!("{prefix}/connect/") } }],
            "rewrite": { "uri": "/connect/" },
            "route": [{ "destination": {
                "host": opts.service_host,
                "port": { "number": opts.http_port },
            } }],
        }),
    ))
}

/// Routes the Latchkey filter must leave alone: each gateway's metadata
/// route, and the connect page.
fn unfiltered_routes(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = config
        .gateways
        .iter()
        .map(|g| metadata_route(&g.name))
        .collect();
    if config.connect.is_some() {
        names.push(CONNECT_ROUTE.to_string());
    }
    names
}

fn envoy_filter(config: &Config, opts: &IstioOptions) -> Value {
    let code = WasmCode::Remote {
        url: &opts.wasm_url,
        sha256: opts.wasm_sha256.as_deref(),
    };
    let filter = wasm_filter_config(&istio_plugin_configuration(opts), &code);
    let mut patches = vec![
        json!({
            "applyTo": "EXTENSION_CONFIG",
            "patch": { "operation": "ADD", "value": { "name": "latchkey", "typed_config": filter } },
        }),
        json!({
            "applyTo": "HTTP_FILTER",
            "match": {
                "context": "GATEWAY",
                "listener": { "filterChain": { "filter": {
                    "name": "envoy.filters.network.http_connection_manager",
                    "subFilter": { "name": "envoy.filters.http.router" },
                } } },
            },
            "patch": {
                "operation": "INSERT_BEFORE",
                "value": {
                    "name": "latchkey",
                    "config_discovery": {
                        // 0s: the listener waits for the filter; no request
                        // passes before it is there.
                        "config_source": { "ads": {}, "initial_fetch_timeout": "0s" },
                        "type_urls": [WASM_TYPE],
                    },
                },
            },
        }),
    ];
    for route in unfiltered_routes(config) {
        patches.push(json!({
            "applyTo": "HTTP_ROUTE",
            "match": {
                "context": "GATEWAY",
                "routeConfiguration": { "vhost": { "route": { "name": route } } },
            },
            "patch": {
                "operation": "MERGE",
                "value": { "typed_per_filter_config": { "latchkey": {
                    "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                    "disabled": true,
                } } },
            },
        }));
    }
    json!({
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": metadata("latchkey", opts),
        "spec": {
            "workloadSelector": { "labels": opts.selector },
            "configPatches": patches,
        },
    })
}

fn authorization_policy(config: &Config, opts: &IstioOptions) -> Value {
    let mut paths: Vec<String> = config
        .gateways
        .iter()
        .flat_map(|g| endpoints(config, g).into_iter().map(|e| e.path))
        .collect();
    paths.sort();
    paths.dedup();
    json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": metadata("latchkey", opts),
        "spec": {
            "selector": { "matchLabels": opts.selector },
            "action": "CUSTOM",
            "provider": { "name": "latchkey" },
            "rules": [{ "to": [{ "operation": { "paths": paths } }] }],
        },
    })
}

/// Who may reach Latchkey's gRPC port: mesh mTLS only (STRICT), and of the
/// mesh's workloads only the gateway (see the module comment).
fn check_port_callers(opts: &IstioOptions) -> Vec<Value> {
    let namespace = opts.service_namespace();
    let metadata = |name: &str| json!({ "name": name, "namespace": namespace, "labels": { "app.kubernetes.io/managed-by": "latchkey" } });
    vec![
        json!({
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": metadata("latchkey"),
            "spec": {
                "selector": { "matchLabels": opts.service_selector },
                "mtls": { "mode": "STRICT" },
            },
        }),
        json!({
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": metadata("latchkey-check-callers"),
            "spec": {
                "selector": { "matchLabels": opts.service_selector },
                "action": "DENY",
                "rules": [{
                    "from": [{ "source": { "notPrincipals": opts.gateway_principals } }],
                    "to": [{ "operation": { "ports": [opts.grpc_port.to_string()] } }],
                }],
            },
        }),
    ]
}

/// The mesh config's extension provider for `--mode native`, as a comment.
fn mesh_config_comment(opts: &IstioOptions) -> String {
    let provider = json!({
        "extensionProviders": [{
            "name": "latchkey",
            "envoyExtAuthzGrpc": {
                "service": opts.service_host,
                "port": opts.grpc_port,
                "timeout": format!("{}ms", opts.authz_timeout_ms),
                "failOpen": false,
                "statusOnError": "503",
                "includeRequestBodyInCheck": {
                    "maxRequestBytes": opts.max_body_bytes,
                    "allowPartialMessage": false,
                    "packAsBytes": true,
                },
            },
        }],
    });
    let mut out = String::from(
        "# Add to the mesh config (IstioOperator spec.meshConfig, or the `mesh` key\n# of the istio ConfigMap):\n",
    );
    for line in serde_yaml_ng::to_string(&provider)
        .unwrap_or_default()
        .lines()
    {
        out.push_str(&format!("#   {line}\n"));
    }
    out
}

fn virtual_services(config: &Config, opts: &IstioOptions) -> Vec<Value> {
    let mut connect = connect_route(config, opts);
    let mut out: Vec<Value> = config
        .gateways
        .iter()
        .map(|g| {
            let mut hosts = vec![upstream_host(&g.public_url)];
            hosts.extend(g.extra_hosts.iter().cloned());
            hosts.dedup();
            let mut routes = vec![json!({
                "name": metadata_route(&g.name),
                "match": [{ "uri": { "prefix": "/.well-known/oauth-protected-resource" } }],
                "route": [{ "destination": {
                    "host": opts.service_host,
                    "port": { "number": opts.http_port },
                } }],
            })];
            // The connect page on a gateway's own host goes in its service:
            // one VirtualService per host and gateway.
            if connect
                .as_ref()
                .is_some_and(|(host, _)| hosts.contains(host))
                && let Some((_, route)) = connect.take()
            {
                routes.push(route);
            }
            for e in endpoints(config, g) {
                let url = &e.server.url;
                let mut rewrite = json!({ "uri": upstream_path(url) });
                if let Some(authority) = host_header(url) {
                    rewrite["authority"] = authority.into();
                }
                routes.push(json!({
                    "name": e.name,
                    "match": [{ "uri": { "exact": e.path } }],
                    "rewrite": rewrite,
                    "route": [{ "destination": {
                        "host": upstream_host(url),
                        "port": { "number": url.port_or_known_default().unwrap_or(80) },
                    } }],
                    // SSE streams stay open.
                    "timeout": "0s",
                }));
            }
            virtual_service(&format!("latchkey-{}", g.name), hosts, routes, opts)
        })
        .collect();
    if let Some((host, route)) = connect {
        out.push(virtual_service(
            "latchkey-connect",
            vec![host],
            vec![route],
            opts,
        ));
    }
    out
}

fn virtual_service(
    name: &str,
    hosts: Vec<String>,
    routes: Vec<Value>,
    opts: &IstioOptions,
) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": metadata(name, opts),
        "spec": { "hosts": hosts, "gateways": [opts.gateway], "http": routes },
    })
}

fn upstream_host(url: &url::Url) -> String {
    url.host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

/// Whether Istio knows `host` from the cluster's own Services.
fn in_cluster(host: &str) -> bool {
    host.ends_with(".svc.cluster.local") || host.ends_with(".svc")
}

/// For every `https` server: TLS originated at the gateway with the server's
/// name checked (SNI and SAN) before a credential goes to it; servers outside
/// the cluster are declared to the mesh first.
fn upstream_tls(config: &Config, opts: &IstioOptions) -> Vec<Value> {
    let mut out = Vec::new();
    for s in config.servers.iter().filter(|s| s.url.scheme() == "https") {
        let host = upstream_host(&s.url);
        let port = s.url.port_or_known_default().unwrap_or(443);
        let ip = host.parse::<std::net::IpAddr>().is_ok();
        if !in_cluster(&host) {
            out.push(json!({
                "apiVersion": "networking.istio.io/v1",
                "kind": "ServiceEntry",
                "metadata": metadata(&format!("latchkey-server-{}", s.name), opts),
                "spec": {
                    "hosts": [host],
                    "location": "MESH_EXTERNAL",
                    "resolution": if ip { "STATIC" } else { "DNS" },
                    // The gateway speaks HTTP to it; the DestinationRule adds TLS.
                    "ports": [{ "number": port, "name": format!("http-{}", s.name), "protocol": "HTTP" }],
                },
            }));
            if ip {
                out.last_mut().expect("just pushed")["spec"]["endpoints"] =
                    json!([{ "address": host }]);
            }
        }
        let mut tls = json!({ "mode": "SIMPLE", "subjectAltNames": [host] });
        if !ip {
            tls["sni"] = host.clone().into();
        }
        if let Some(ca) = s.ca_file.as_deref().or(opts.upstream_ca.as_deref()) {
            tls["caCertificates"] = ca.into();
        }
        out.push(json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": metadata(&format!("latchkey-server-{}", s.name), opts),
            "spec": {
                "host": host,
                "trafficPolicy": { "portLevelSettings": [{ "port": { "number": port }, "tls": tls }] },
            },
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::envoy::{DEFAULT_UPSTREAM_CA, RenderOptions, render};

    /// The digest the committed example carries: a placeholder, so nobody
    /// applies the example as it is (the agent refuses the download).
    const PLACEHOLDER_SHA256: &str =
        "0000000000000000000000000000000000000000000000000000000000000000";

    fn example() -> Config {
        Config::parse(include_str!("../../../../envoy/istio/example.toml")).unwrap()
    }

    fn options(mode: AuthzMode) -> IstioOptions {
        IstioOptions {
            mode,
            namespace: "istio-system".into(),
            selector: [("istio".to_string(), "ingressgateway".to_string())].into(),
            gateway: "istio-system/ingressgateway".into(),
            service_host: "latchkey.latchkey.svc.cluster.local".into(),
            grpc_port: 9191,
            http_port: 8181,
            wasm_url: "https://artifacts.example.com/latchkey/latchkey_filter.wasm".into(),
            wasm_sha256: Some(PLACEHOLDER_SHA256.into()),
            max_body_bytes: 1 << 20,
            authz_timeout_ms: 2000,
            upstream_ca: None,
            service_selector: [("app".to_string(), "latchkey".to_string())].into(),
            gateway_principals: vec![IstioOptions::default_gateway_principal("istio-system")],
        }
    }

    fn documents(yaml: &str) -> Vec<Value> {
        yaml.split("\n---\n")
            .skip(1)
            .map(|d| serde_yaml_ng::from_str(d).expect("each document parses"))
            .collect()
    }

    fn kind<'v>(docs: &'v [Value], kind: &str) -> Vec<&'v Value> {
        docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    /// `envoy/istio/example.yaml` is kept for reading; it must be what the
    /// renderer produces for `envoy/istio/example.toml`.
    #[test]
    fn committed_istio_example_is_current() {
        assert_eq!(
            render_istio(&example(), &options(AuthzMode::Wasm)),
            include_str!("../../../../envoy/istio/example.yaml"),
            "re-render: latchkey envoy istio --config envoy/istio/example.toml --wasm-url https://artifacts.example.com/latchkey/latchkey_filter.wasm --wasm-sha256 {PLACEHOLDER_SHA256} > envoy/istio/example.yaml"
        );
    }

    /// The filter Istio loads is the filter the end-to-end tests load: the
    /// bootstrap rendered with Istio's cluster name and authority carries
    /// the very same typed_config, but for where the code comes from.
    #[test]
    fn the_extension_config_is_the_tested_filter() {
        let opts = options(AuthzMode::Wasm);
        let docs = documents(&render_istio(&example(), &opts));
        let filter = kind(&docs, "EnvoyFilter")[0];
        let patches = filter["spec"]["configPatches"].as_array().unwrap();
        let extension = patches
            .iter()
            .find(|p| p["applyTo"] == "EXTENSION_CONFIG")
            .unwrap();
        let mut istio = extension["patch"]["value"]["typed_config"].clone();

        let bootstrap = render(
            &example(),
            &RenderOptions {
                listen: "127.0.0.1:10000".parse().unwrap(),
                admin: "127.0.0.1:9901".parse().unwrap(),
                mode: AuthzMode::Wasm,
                wasm_path: "latchkey_filter.wasm".into(),
                max_body_bytes: opts.max_body_bytes,
                authz_timeout_ms: opts.authz_timeout_ms,
                authz_cluster: opts.authz_cluster(),
                authz_authority: opts.service_host.clone(),
                authz_endpoints: vec![],
                tls: None,
                upstream_ca: DEFAULT_UPSTREAM_CA.into(),
                authz_tls: None,
            },
        );
        let bootstrap: Value = serde_yaml_ng::from_str(&bootstrap).unwrap();
        let hcm = &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0];
        let mut tested = hcm["typed_config"]["http_filters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "latchkey")
            .unwrap()["typed_config"]
            .clone();

        let remote = &istio["config"]["vm_config"]["code"]["remote"];
        assert_eq!(remote["http_uri"]["uri"], opts.wasm_url.as_str());
        assert_eq!(remote["sha256"], PLACEHOLDER_SHA256);
        for v in [&mut istio, &mut tested] {
            v["config"]["vm_config"]["code"] = Value::Null;
        }
        assert_eq!(istio, tested);
        let plugin: Value =
            serde_json::from_str(tested["config"]["configuration"]["value"].as_str().unwrap())
                .unwrap();
        assert_eq!(
            plugin["authz_cluster"],
            "outbound|9191||latchkey.latchkey.svc.cluster.local"
        );
        assert_eq!(
            plugin["authz_authority"],
            "latchkey.latchkey.svc.cluster.local"
        );
        assert_eq!(tested["config"]["allow_on_headers_stop_iteration"], true);
        assert_eq!(tested["config"]["fail_open"], false);
    }

    #[test]
    fn the_filter_runs_before_the_router_and_waits_for_its_config() {
        let docs = documents(&render_istio(&example(), &options(AuthzMode::Wasm)));
        let filter = kind(&docs, "EnvoyFilter")[0];
        assert_eq!(
            filter["spec"]["workloadSelector"]["labels"]["istio"],
            "ingressgateway"
        );
        let patches = filter["spec"]["configPatches"].as_array().unwrap();
        let http = patches
            .iter()
            .find(|p| p["applyTo"] == "HTTP_FILTER")
            .unwrap();
        assert_eq!(http["patch"]["operation"], "INSERT_BEFORE");
        assert_eq!(
            http["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"],
            "envoy.filters.http.router"
        );
        let discovery = &http["patch"]["value"]["config_discovery"];
        assert_eq!(http["patch"]["value"]["name"], "latchkey");
        assert_eq!(discovery["config_source"]["initial_fetch_timeout"], "0s");
        assert_eq!(discovery["type_urls"][0], WASM_TYPE);
        // Off on the metadata route only, which the VirtualService names.
        let route = patches
            .iter()
            .find(|p| p["applyTo"] == "HTTP_ROUTE")
            .unwrap();
        let name = &route["match"]["routeConfiguration"]["vhost"]["route"]["name"];
        assert_eq!(
            route["patch"]["value"]["typed_per_filter_config"]["latchkey"]["disabled"],
            true
        );
        let vs = kind(&docs, "VirtualService")[0];
        let metadata = vs["spec"]["http"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == *name)
            .unwrap();
        assert_eq!(
            metadata["match"][0]["uri"]["prefix"],
            "/.well-known/oauth-protected-resource"
        );
        assert_eq!(
            metadata["route"][0]["destination"]["host"],
            "latchkey.latchkey.svc.cluster.local"
        );
    }

    #[test]
    fn the_connect_page_is_routed_unfiltered_on_its_own_host_or_the_gateways() {
        let route_of = |text: &str| {
            let docs = documents(&render_istio(
                &Config::parse(text).unwrap(),
                &options(AuthzMode::Wasm),
            ));
            let services: Vec<Value> = kind(&docs, "VirtualService").into_iter().cloned().collect();
            let filter = kind(&docs, "EnvoyFilter")[0].clone();
            (services, filter)
        };
        // Same host as the gateway: one VirtualService carries both.
        let (services, filter) = route_of(include_str!("../../../../envoy/istio/example.toml"));
        assert_eq!(services.len(), 1);
        let connect = services[0]["spec"]["http"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == CONNECT_ROUTE)
            .expect("a connect route");
        assert_eq!(connect["match"][0]["uri"]["prefix"], "/latchkey/connect/");
        assert_eq!(connect["rewrite"]["uri"], "/connect/");
        assert_eq!(connect["route"][0]["destination"]["port"]["number"], 8181);
        let unfiltered: Vec<&Value> = filter["spec"]["configPatches"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["applyTo"] == "HTTP_ROUTE")
            .map(|p| &p["match"]["routeConfiguration"]["vhost"]["route"]["name"])
            .collect();
        assert_eq!(
            unfiltered,
            [
                &json!("protected-resource-metadata.corp"),
                &json!(CONNECT_ROUTE)
            ]
        );
        // Its own host: a VirtualService of its own.
        let text = include_str!("../../../../envoy/istio/example.toml").replace(
            "https://mcp.example.com/latchkey",
            "https://connect.example.com",
        );
        let (services, _) = route_of(&text);
        assert_eq!(services.len(), 2);
        assert_eq!(services[1]["spec"]["hosts"][0], "connect.example.com");
        assert_eq!(
            services[1]["spec"]["http"][0]["match"][0]["uri"]["prefix"],
            "/connect/"
        );
        assert!(
            !services[0]["spec"]["http"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["name"] == CONNECT_ROUTE)
        );
    }

    /// Whatever gateways and endpoints are called, the routes the filter is
    /// switched off on are Latchkey's own, never an MCP endpoint's.
    #[test]
    fn no_name_switches_the_filter_off_on_an_endpoint() {
        let text = include_str!("../../../../envoy/istio/example.toml")
            .replace("name = \"corp\"", "name = \"latchkey\"")
            .replace("gateway = \"corp\"", "gateway = \"latchkey\"")
            .replace(
                "name = \"wiki\"\nserver",
                "name = \"protected-resource-metadata\"\nserver",
            )
            .replace(
                "[\"wiki\", \"github\"]",
                "[\"protected-resource-metadata\", \"github\"]",
            )
            + "\n[[gateways.assignments]]\nname = \"connect-page\"\nserver = \"github\"\nscheme = \"per_user\"\n";
        let docs = documents(&render_istio(
            &Config::parse(&text).unwrap(),
            &options(AuthzMode::Wasm),
        ));
        let off: Vec<Value> = kind(&docs, "EnvoyFilter")[0]["spec"]["configPatches"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["applyTo"] == "HTTP_ROUTE")
            .map(|p| p["match"]["routeConfiguration"]["vhost"]["route"]["name"].clone())
            .collect();
        let routes = kind(&docs, "VirtualService")[0]["spec"]["http"]
            .as_array()
            .unwrap()
            .clone();
        let endpoints: Vec<&Value> = routes
            .iter()
            .filter(|r| r["match"][0]["uri"].get("exact").is_some())
            .map(|r| &r["name"])
            .collect();
        assert_eq!(endpoints.len(), 3, "{routes:?}");
        for name in endpoints {
            assert!(
                !off.contains(name),
                "the filter is off on endpoint route {name}"
            );
        }
    }

    #[test]
    fn every_endpoint_is_routed_to_its_server_with_path_and_authority_rewritten() {
        let text = format!(
            "{}\n[[gateways.assignments]]\nname = \"wiki-mine\"\nserver = \"wiki\"\nscheme = \"per_user\"\n[[gateways.combined]]\nname = \"wiki-all\"\nassignments = [\"wiki\", \"wiki-mine\"]\n",
            include_str!("../../../../envoy/istio/example.toml")
        );
        let docs = documents(&render_istio(
            &Config::parse(&text).unwrap(),
            &options(AuthzMode::Wasm),
        ));
        let vs = kind(&docs, "VirtualService")[0];
        assert_eq!(vs["spec"]["hosts"][0], "mcp.example.com");
        assert_eq!(vs["spec"]["gateways"][0], "istio-system/ingressgateway");
        let routes = vs["spec"]["http"].as_array().unwrap();
        let by_path = |p: &str| {
            routes
                .iter()
                .find(|r| r["match"][0]["uri"]["exact"] == p)
                .unwrap_or_else(|| panic!("no route for {p}"))
        };
        let wiki = by_path("/mcp/wiki");
        assert_eq!(wiki["rewrite"]["uri"], "/mcp");
        assert_eq!(
            wiki["rewrite"]["authority"],
            "wiki-mcp.mcp.svc.cluster.local:8080"
        );
        assert_eq!(
            wiki["route"][0]["destination"]["host"],
            "wiki-mcp.mcp.svc.cluster.local"
        );
        assert_eq!(wiki["route"][0]["destination"]["port"]["number"], 8080);
        assert_eq!(wiki["timeout"], "0s");
        let github = by_path("/mcp/github");
        assert_eq!(github["rewrite"]["uri"], "/mcp/");
        assert_eq!(github["route"][0]["destination"]["port"]["number"], 443);
        // The combined endpoint goes to the server its assignments share.
        let all = by_path("/mcp/wiki-all");
        assert_eq!(
            all["route"][0]["destination"]["host"],
            "wiki-mcp.mcp.svc.cluster.local"
        );
    }

    #[test]
    fn an_https_server_is_reached_over_verified_tls() {
        let text = include_str!("../../../../envoy/istio/example.toml").replace(
            "url = \"http://wiki-mcp.mcp.svc.cluster.local:8080/mcp\"",
            "url = \"https://wiki-mcp.mcp.svc.cluster.local:8443/mcp\"\nca_file = \"/etc/mcp-ca/ca.pem\"",
        ) + "\n[[servers]]\nname = \"lab\"\nurl = \"https://10.0.0.7:9443/mcp\"\nauth = { type = \"none\" }\n";
        let mut opts = options(AuthzMode::Wasm);
        opts.upstream_ca = Some("/etc/ssl/certs/ca-certificates.crt".into());
        let docs = documents(&render_istio(&Config::parse(&text).unwrap(), &opts));
        let rules = kind(&docs, "DestinationRule");
        let tls_of = |host: &str| {
            let rule = rules
                .iter()
                .find(|r| r["spec"]["host"] == host)
                .unwrap_or_else(|| panic!("no DestinationRule for {host}"));
            rule["spec"]["trafficPolicy"]["portLevelSettings"][0].clone()
        };
        let github = tls_of("api.githubcopilot.com");
        assert_eq!(github["port"]["number"], 443);
        assert_eq!(github["tls"]["mode"], "SIMPLE");
        assert_eq!(github["tls"]["sni"], "api.githubcopilot.com");
        assert_eq!(github["tls"]["subjectAltNames"][0], "api.githubcopilot.com");
        assert_eq!(
            github["tls"]["caCertificates"],
            "/etc/ssl/certs/ca-certificates.crt"
        );
        // A server's own CA wins; an in-cluster server needs no ServiceEntry.
        let wiki = tls_of("wiki-mcp.mcp.svc.cluster.local");
        assert_eq!(wiki["tls"]["caCertificates"], "/etc/mcp-ca/ca.pem");
        // An IP literal: no SNI, the SAN is the address, a static entry.
        let lab = tls_of("10.0.0.7");
        assert!(lab["tls"].get("sni").is_none());
        assert_eq!(lab["tls"]["subjectAltNames"][0], "10.0.0.7");
        let entries = kind(&docs, "ServiceEntry");
        let hosts: Vec<&Value> = entries.iter().map(|e| &e["spec"]["hosts"][0]).collect();
        assert_eq!(hosts, ["api.githubcopilot.com", "10.0.0.7"]);
        let lab_entry = entries[1];
        assert_eq!(lab_entry["spec"]["resolution"], "STATIC");
        assert_eq!(lab_entry["spec"]["endpoints"][0]["address"], "10.0.0.7");
        assert_eq!(lab_entry["spec"]["ports"][0]["number"], 9443);
    }

    #[test]
    fn native_mode_is_a_custom_policy_that_fails_closed() {
        let yaml = render_istio(&example(), &options(AuthzMode::Native));
        let docs = documents(&yaml);
        assert!(kind(&docs, "EnvoyFilter").is_empty());
        let policy = kind(&docs, "AuthorizationPolicy")[0];
        assert_eq!(policy["spec"]["action"], "CUSTOM");
        assert_eq!(policy["spec"]["provider"]["name"], "latchkey");
        assert_eq!(
            policy["spec"]["rules"][0]["to"][0]["operation"]["paths"],
            json!(["/mcp/github", "/mcp/wiki"])
        );
        // The provider is a comment for the mesh config, and parses as YAML.
        let provider: String = yaml
            .lines()
            .filter_map(|l| l.strip_prefix("#   "))
            .map(|l| format!("{l}\n"))
            .collect();
        let provider: Value = serde_yaml_ng::from_str(&provider).unwrap();
        let grpc = &provider["extensionProviders"][0]["envoyExtAuthzGrpc"];
        assert_eq!(grpc["service"], "latchkey.latchkey.svc.cluster.local");
        assert_eq!(grpc["port"], 9191);
        assert_eq!(grpc["failOpen"], false);
        assert_eq!(
            grpc["includeRequestBodyInCheck"]["allowPartialMessage"],
            false
        );
    }

    #[test]
    fn only_the_gateway_reaches_the_check_port_over_mesh_mtls_in_both_modes() {
        for mode in [AuthzMode::Wasm, AuthzMode::Native] {
            let docs = documents(&render_istio(&example(), &options(mode)));
            let peer = kind(&docs, "PeerAuthentication");
            assert_eq!(peer.len(), 1);
            assert_eq!(peer[0]["metadata"]["namespace"], "latchkey");
            assert_eq!(
                peer[0]["spec"]["selector"]["matchLabels"]["app"],
                "latchkey"
            );
            assert_eq!(peer[0]["spec"]["mtls"]["mode"], "STRICT");
            let callers: Vec<&Value> = kind(&docs, "AuthorizationPolicy")
                .into_iter()
                .filter(|p| p["metadata"]["name"] == "latchkey-check-callers")
                .collect();
            assert_eq!(callers.len(), 1);
            let policy = callers[0];
            assert_eq!(policy["metadata"]["namespace"], "latchkey");
            assert_eq!(policy["spec"]["selector"]["matchLabels"]["app"], "latchkey");
            assert_eq!(policy["spec"]["action"], "DENY");
            let rules = policy["spec"]["rules"].as_array().unwrap();
            assert_eq!(rules.len(), 1);
            // Every caller but the gateway's service account, on the gRPC
            // port only: the HTTP side and the admin API stay reachable.
            assert_eq!(
                rules[0]["from"][0]["source"]["notPrincipals"],
                json!(["cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"])
            );
            assert_eq!(rules[0]["to"][0]["operation"]["ports"], json!(["9191"]));
        }
    }
}
