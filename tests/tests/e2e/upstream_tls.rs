//! An `https` upstream must prove who it is before a credential goes to it:
//! the gateway's Envoy (bootstrap from `latchkey envoy render`) checks the
//! upstream's chain against the server's `ca_file` and its SANs against the
//! host in the URL. The upstream is `auth-echo` behind a second Envoy that
//! terminates TLS with a certificate for `localhost` from the scenario's CA;
//! a server entry for the same URL that trusts another CA never reaches it,
//! nor does one whose front presents a certificate from the right CA for
//! another name.

use anyhow::{Result, ensure};
use latchkey_e2e::client::{INITIALIZE, post_json};
use std::path::Path;

use latchkey_e2e::pki::Pki;
use latchkey_e2e::{Envoy, McpClient, Stack, StackOptions, free_port, scenario_dir};
use serde_json::json;

/// A bootstrap for an Envoy that serves `127.0.0.1:<port>` over TLS with
/// the certificate `cert` (key `key`) and forwards everything to
/// `127.0.0.1:<upstream>`.
fn tls_front(cert: &Path, key: &Path, port: u16, upstream: u16) -> String {
    format!(
        r#"
static_resources:
  listeners:
  - name: tls
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{ filename: "{cert}" }}
              private_key: {{ filename: "{key}" }}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: tls
          request_timeout: 0s
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: echo, timeout: 0s }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: echo
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: echo
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {upstream} }}
"#,
        cert = cert.display(),
        key = key.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_gets_a_credential_only_after_proving_its_name() -> Result<()> {
    let certs = scenario_dir("upstream_tls_certs")?;
    let pki = Pki::create(&certs)?;
    let elsewhere = certs.join("other");
    std::fs::create_dir_all(&elsewhere)?;
    let other_ca = Pki::create(&elsewhere)?;
    let (port, misnamed_port) = (free_port(), free_port());
    let config = format!(
        r#"
[[gateways.assignments]]
name = "secure"
server = "secure"
scheme = "per_user"

[[gateways.assignments]]
name = "impostor"
server = "impostor"
scheme = "per_user"

[[servers]]
name = "secure"
url = "https://localhost:{port}/mcp"
ca_file = "{ca}"
auth = {{ type = "static_header", header = "authorization", prefix = "Bearer " }}

# The same upstream, trusted only if another CA issued its certificate.
[[servers]]
name = "impostor"
url = "https://localhost:{port}/mcp"
ca_file = "{other}"
auth = {{ type = "static_header", header = "authorization", prefix = "Bearer " }}

[[gateways.assignments]]
name = "misnamed"
server = "misnamed"
scheme = "per_user"

# The right CA, but the front presents a certificate for another name.
[[servers]]
name = "misnamed"
url = "https://localhost:{misnamed_port}/mcp"
ca_file = "{ca}"
auth = {{ type = "static_header", header = "authorization", prefix = "Bearer " }}
"#,
        ca = pki.ca_pem.display(),
        other = other_ca.ca_pem.display(),
    );
    let stack = Stack::start(
        "upstream_tls",
        StackOptions {
            extra_config: Some(config),
            ..StackOptions::default()
        },
    )
    .await?;
    let _front = Envoy::start_named(
        &certs,
        "tls-front",
        &tls_front(&pki.server_cert, &pki.server_key, port, stack.echo.port),
    )?;
    let (other_cert, other_key) = pki.server_cert_for(&certs, "elsewhere.example")?;
    let _misnamed_front = Envoy::start_named(
        &certs,
        "tls-front-misnamed",
        &tls_front(&other_cert, &other_key, misnamed_port, stack.echo.port),
    )?;
    let secret = stack
        .connect_own_identity("alice", "secure", "alice-secure")
        .await?;
    let impostor_secret = stack
        .connect_own_identity("alice", "impostor", "alice-impostor")
        .await?;
    let misnamed_secret = stack
        .connect_own_identity("alice", "misnamed", "alice-misnamed")
        .await?;
    let alice = stack.token("alice").await?;

    // Verified: the call goes through TLS with alice's credential (the
    // positive control for the counts below, read the same way).
    let before = stack.echo.requests().await?;
    let client = McpClient::connect(&stack.url("secure"), &alice).await?;
    let r = client.call_tool("whoami", json!({})).await?;
    ensure!(
        McpClient::text(&r) == format!("Bearer {secret}"),
        "the upstream behind TLS got alice's credential: {r:?}"
    );
    client.close().await?;
    ensure!(
        stack.echo.requests().await? > before,
        "the verified calls reached the upstream"
    );

    // Not verified: Envoy refuses the connection, nothing reaches the
    // upstream, and the credential was never sent.
    let before = stack.echo.requests().await?;
    let r = post_json(&stack.url("impostor"), Some(&alice), INITIALIZE, &[]).await?;
    ensure!(
        r.status == 503,
        "an unverified upstream: {} {}",
        r.status,
        r.body
    );
    ensure!(
        stack.echo.requests().await? == before,
        "nothing reached the upstream"
    );
    let seen = stack.echo.seen_authorizations().await?;
    ensure!(
        !seen.iter().any(|a| a.contains(&impostor_secret)),
        "the credential for the unverified upstream was never sent"
    );
    let failures = stack
        .envoy
        .stat("cluster.server_impostor.ssl.fail_verify_error")?;
    ensure!(failures >= 1, "fail_verify_error = {failures}");

    // The right CA, the wrong name: refused as well, for its SAN.
    let before = stack.echo.requests().await?;
    let r = post_json(&stack.url("misnamed"), Some(&alice), INITIALIZE, &[]).await?;
    ensure!(
        r.status == 503,
        "an upstream with another name's certificate: {} {}",
        r.status,
        r.body
    );
    ensure!(
        stack.echo.requests().await? == before,
        "nothing reached the misnamed upstream"
    );
    let seen = stack.echo.seen_authorizations().await?;
    ensure!(
        !seen.iter().any(|a| a.contains(&misnamed_secret)),
        "the credential for the misnamed upstream was never sent"
    );
    let failures = stack
        .envoy
        .stat("cluster.server_misnamed.ssl.fail_verify_san")?;
    ensure!(failures >= 1, "fail_verify_san = {failures}");
    stack.assert_no_secret_in_logs()?;
    Ok(())
}
