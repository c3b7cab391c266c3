//! Which gateway and server assignment a request is for, from its `Host` and
//! path. Built once per config load; lookups do no allocation beyond the
//! lower-casing of the host.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Assignment, Config, Gateway, Server};

/// One published MCP endpoint: a gateway's assignment of an upstream server.
#[derive(Debug)]
pub struct Route {
    pub gateway: Gateway,
    pub assignment: Assignment,
    pub server: Server,
}

#[derive(Debug, Default)]
pub struct RouteTable {
    /// (lower-case authority, path) → route.
    routes: HashMap<(String, String), Arc<Route>>,
}

impl RouteTable {
    pub fn build(config: &Config) -> Self {
        let mut routes = HashMap::new();
        for g in &config.gateways {
            let hosts = std::iter::once(g.authority()).chain(g.extra_hosts.iter().cloned());
            let hosts: Vec<String> = hosts.map(|h| h.to_ascii_lowercase()).collect();
            for a in &g.assignments {
                let Some(server) = config.server(&a.server) else {
                    continue;
                };
                let route = Arc::new(Route {
                    gateway: g.clone(),
                    assignment: a.clone(),
                    server: server.clone(),
                });
                for h in &hosts {
                    routes.insert((h.clone(), g.assignment_path(a)), route.clone());
                }
            }
        }
        Self { routes }
    }

    /// The route for `host` and `path` (query and one trailing `/` ignored).
    pub fn find(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let path = match path.strip_suffix('/') {
            Some(p) if !p.is_empty() => p,
            _ => path,
        };
        self.routes
            .get(&(host.to_ascii_lowercase(), path.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let c = Config::parse(
            r#"
[vault]
key_env = "K"
[identity_provider]
issuer = "http://idp"
[[servers]]
name = "s1"
url = "http://127.0.0.1:1/mcp"
[[gateways]]
name = "g"
public_url = "http://GW.example:10000/mcp/"
extra_hosts = ["gw.internal"]
[[gateways.assignments]]
name = "one"
server = "s1"
scheme = "per_user"
"#,
        )
        .unwrap();
        RouteTable::build(&c)
    }

    #[test]
    fn finds_by_host_and_exact_path() {
        let t = table();
        assert_eq!(
            t.find("gw.example:10000", "/mcp/one")
                .unwrap()
                .assignment
                .name,
            "one"
        );
        assert!(t.find("GW.EXAMPLE:10000", "/mcp/one/").is_some());
        assert!(t.find("gw.internal", "/mcp/one?x=1").is_some());
    }

    #[test]
    fn misses_other_hosts_paths_and_prefixes() {
        let t = table();
        assert!(t.find("gw.example:10001", "/mcp/one").is_none());
        assert!(t.find("gw.example:10000", "/mcp/one/extra").is_none());
        assert!(t.find("gw.example:10000", "/mcp/on").is_none());
        assert!(t.find("gw.example:10000", "/").is_none());
    }
}
