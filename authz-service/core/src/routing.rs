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
    /// The assignment; of a combined endpoint, its first candidate.
    pub assignment: Assignment,
    pub server: Server,
    /// Set when the endpoint combines several assignments of `server`.
    pub combined: Option<Combined>,
}

/// A combined endpoint (`[[gateways.combined]]`): the decision picks one
/// of its candidates per request.
#[derive(Debug)]
pub struct Combined {
    pub name: String,
    /// One single-assignment route per candidate, in the configured order.
    pub candidates: Vec<Arc<Route>>,
}

impl Route {
    /// The name the endpoint is published under.
    pub fn endpoint(&self) -> &str {
        match &self.combined {
            Some(c) => &c.name,
            None => &self.assignment.name,
        }
    }

    /// The routes a request here may go through: the candidates of a
    /// combined endpoint, or this route alone.
    pub fn candidates(self: &Arc<Route>) -> &[Arc<Route>] {
        match &self.combined {
            Some(c) => &c.candidates,
            None => std::slice::from_ref(self),
        }
    }
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
            let mut singles: HashMap<&str, Arc<Route>> = HashMap::new();
            for a in &g.assignments {
                let Some(server) = config.server(&a.server) else {
                    continue;
                };
                let route = Arc::new(Route {
                    gateway: g.clone(),
                    assignment: a.clone(),
                    server: server.clone(),
                    combined: None,
                });
                for h in &hosts {
                    routes.insert((h.clone(), g.assignment_path(a)), route.clone());
                }
                singles.insert(a.name.as_str(), route);
            }
            for c in &g.combined {
                let candidates: Option<Vec<Arc<Route>>> = c
                    .assignments
                    .iter()
                    .map(|name| singles.get(name.as_str()).cloned())
                    .collect();
                // Validation refuses a config where this cannot happen.
                let Some(candidates) = candidates.filter(|c| !c.is_empty()) else {
                    continue;
                };
                let first = &candidates[0];
                let route = Arc::new(Route {
                    gateway: g.clone(),
                    assignment: first.assignment.clone(),
                    server: first.server.clone(),
                    combined: Some(Combined {
                        name: c.name.clone(),
                        candidates,
                    }),
                });
                for h in &hosts {
                    routes.insert((h.clone(), g.endpoint_path(&c.name)), route.clone());
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
[[gateways.assignments]]
name = "two"
server = "s1"
scheme = "shared"
identity = "sa"
[[gateways.combined]]
name = "both"
assignments = ["two", "one"]
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
        let one = t.find("gw.example:10000", "/mcp/one").unwrap();
        assert!(one.combined.is_none());
        assert_eq!(one.endpoint(), "one");
        assert_eq!(one.candidates().len(), 1);
        assert!(Arc::ptr_eq(&one.candidates()[0], one));
    }

    #[test]
    fn a_combined_endpoint_carries_its_candidates_in_order() {
        let t = table();
        let both = t.find("gw.example:10000", "/mcp/both/").unwrap();
        assert_eq!(both.endpoint(), "both");
        assert_eq!(both.server.name, "s1");
        let names: Vec<&str> = both
            .candidates()
            .iter()
            .map(|r| r.assignment.name.as_str())
            .collect();
        assert_eq!(names, ["two", "one"]);
        // The candidates are the assignments' own routes, unchanged.
        let one = t.find("gw.internal", "/mcp/one").unwrap();
        assert!(Arc::ptr_eq(&both.candidates()[1], one));
        assert!(both.candidates().iter().all(|c| c.combined.is_none()));
        assert_eq!(
            both.gateway.resource_metadata_url(),
            one.gateway.resource_metadata_url()
        );
        assert!(t.find("gw.internal", "/mcp/both?x").is_some());
        assert!(t.find("gw.example:10000", "/mcp/both/one").is_none());
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
