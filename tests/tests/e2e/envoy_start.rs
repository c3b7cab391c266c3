//! `Envoy::start` on its own: a bootstrap whose admin names a busy fixed
//! port still gets its admin on a free one, Envoy reports LIVE, serves its
//! listener, and is gone after drop.

use anyhow::Result;
use latchkey_e2e::{Envoy, free_port, http_get, scenario_dir};

#[test]
fn envoy_starts_on_a_bootstrap_with_admin_on_a_free_port() -> Result<()> {
    let dir = scenario_dir("envoy_start")?;
    let listen = free_port();
    // The admin port in the file is deliberately the default one: the
    // harness must move it (9901 may well be taken by a local stack).
    let bootstrap = format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 9901 }} }}
static_resources:
  listeners:
  - name: hello
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: hello
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: "hello from envoy" }} }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    );
    let envoy = Envoy::start(&dir, &bootstrap)?;
    assert_ne!(envoy.admin_port, 9901);
    let (status, body) = http_get(&format!("http://127.0.0.1:{listen}/x")).expect("listener");
    assert_eq!((status, body.as_str()), (200, "hello from envoy"));
    assert_eq!(envoy.stat("http.hello.downstream_rq_2xx")?, 1);
    assert!(envoy.admin_get("server_info")?.contains("1.40."));

    let admin = envoy.admin_port;
    drop(envoy);
    assert!(std::net::TcpStream::connect(("127.0.0.1", admin)).is_err());
    Ok(())
}
