//! `[[gateways]]`: the public endpoints, their server assignments (which
//! identity scheme each uses) and combined endpoints, and their checks.

use std::collections::HashSet;

use serde::Deserialize;
use url::Url;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    pub name: String,
    /// Public base URL; also the `aud` inbound tokens must carry. Each
    /// assignment is published at `<public_url>/<assignment name>`.
    pub public_url: Url,
    /// Other `Host` values that reach this gateway (e.g. a mesh-internal name).
    #[serde(default)]
    pub extra_hosts: Vec<String>,
    /// Requests from an agent not in `[[agents]]`: `deny` (default) or `allow`.
    #[serde(default)]
    pub unknown_agents: crate::agents::UnknownAgents,
    #[serde(default)]
    pub assignments: Vec<Assignment>,
    /// Endpoints that combine several assignments of the same server
    /// (`[[gateways.combined]]`), each published at `<public_url>/<name>`.
    #[serde(default)]
    pub combined: Vec<Combined>,
}

/// One endpoint over several assignments of one server: a named request
/// goes to the first assignment whose policy lets the caller see the name,
/// a list shows the union of what they show.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Combined {
    pub name: String,
    /// The candidate assignments, in the order they are tried.
    pub assignments: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawAssignment")]
pub struct Assignment {
    pub name: String,
    pub server: String,
    pub scheme: IdentityScheme,
}

/// Whose credential is injected for an assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityScheme {
    /// Each person brings their own identity for the server.
    PerUser,
    /// One global identity (typically a service account) used by everyone.
    Shared { identity: String },
}

impl IdentityScheme {
    /// As written in the config (`per_user`, `shared`).
    pub fn name(&self) -> &'static str {
        match self {
            IdentityScheme::PerUser => "per_user",
            IdentityScheme::Shared { .. } => "shared",
        }
    }
}

/// An assignment as written: `scheme = "shared"` needs `identity`,
/// `scheme = "per_user"` must not have one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAssignment {
    name: String,
    server: String,
    scheme: SchemeName,
    identity: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum SchemeName {
    PerUser,
    Shared,
}

impl TryFrom<RawAssignment> for Assignment {
    type Error = String;

    fn try_from(raw: RawAssignment) -> Result<Self, String> {
        let scheme = match (raw.scheme, raw.identity) {
            (SchemeName::Shared, Some(identity)) if !identity.is_empty() => {
                IdentityScheme::Shared { identity }
            }
            (SchemeName::Shared, _) => {
                return Err(format!(
                    "assignment '{}': scheme \"shared\" needs `identity = \"<global identity id>\"`",
                    raw.name
                ));
            }
            (SchemeName::PerUser, None) => IdentityScheme::PerUser,
            (SchemeName::PerUser, Some(_)) => {
                return Err(format!(
                    "assignment '{}': scheme \"per_user\" takes each user's own identity; remove `identity`",
                    raw.name
                ));
            }
        };
        Ok(Assignment {
            name: raw.name,
            server: raw.server,
            scheme,
        })
    }
}

impl Gateway {
    /// Path prefix under which this gateway's assignments are published, without trailing `/`.
    pub fn base_path(&self) -> &str {
        self.public_url.path().trim_end_matches('/')
    }

    /// The `host[:port]` clients use to reach the gateway.
    pub fn authority(&self) -> String {
        authority_of(&self.public_url)
    }

    /// Public path of one assignment.
    pub fn assignment_path(&self, assignment: &Assignment) -> String {
        self.endpoint_path(&assignment.name)
    }

    /// Public path of an assignment or a combined endpoint by its name.
    pub fn endpoint_path(&self, name: &str) -> String {
        format!("{}/{}", self.base_path(), name)
    }

    pub fn assignment(&self, name: &str) -> Option<&Assignment> {
        self.assignments.iter().find(|a| a.name == name)
    }

    /// RFC 9728 metadata URL for this gateway: the well-known prefix inserted
    /// before the resource's path.
    pub fn resource_metadata_url(&self) -> String {
        let mut origin = self.public_url.clone();
        origin.set_path("");
        origin.set_query(None);
        format!(
            "{}/.well-known/oauth-protected-resource{}",
            origin.as_str().trim_end_matches('/'),
            self.base_path()
        )
    }
}

pub fn authority_of(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    }
}

impl Gateway {
    /// A combined endpoint's rules; `taken` holds the names already
    /// published on this gateway (assignments and earlier combined ones).
    pub(super) fn validate_combined<'a>(
        &'a self,
        c: &'a Combined,
        taken: &mut HashSet<&'a str>,
    ) -> Result<(), String> {
        let at = format!("gateway '{}', combined '{}'", self.name, c.name);
        if c.name.is_empty() || c.name.contains(['/', '?', '#']) {
            return Err(format!("{at}: the name must be one non-empty path segment"));
        }
        if !taken.insert(c.name.as_str()) {
            return Err(format!(
                "{at}: the name is already published on this gateway (an assignment or another combined endpoint has it)"
            ));
        }
        if c.assignments.len() < 2 {
            return Err(format!(
                "{at}: combines {} assignment(s); it needs at least two (publish a single assignment at its own path)",
                c.assignments.len()
            ));
        }
        let mut seen = HashSet::new();
        let mut server: Option<&str> = None;
        for name in &c.assignments {
            let Some(a) = self.assignment(name) else {
                return Err(format!(
                    "{at}: no assignment '{name}' on this gateway (declare it under [[gateways.assignments]])"
                ));
            };
            if !seen.insert(name.as_str()) {
                return Err(format!("{at}: assignment '{name}' is named twice"));
            }
            match server {
                None => server = Some(&a.server),
                Some(s) if s != a.server => {
                    return Err(format!(
                        "{at}: assignment '{name}' is of server '{}' but '{}' is of server '{s}'; a combined endpoint joins assignments of the same server, so each name belongs to one of them",
                        a.server, c.assignments[0]
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

pub(super) fn http_header_name_invalid(name: &str) -> bool {
    name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
