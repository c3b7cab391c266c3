//! The service configuration file (TOML): where to listen, Redis, master keys,
//! the inbound identity provider, upstream MCP servers and the gateways that
//! publish them. Loading validates cross references so a mistake is reported
//! with the name that is wrong, before anything starts.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod admin;
mod alerts;
mod audit;
mod connect;
mod gateways;
mod identity_provider;
mod listen;
mod policy;
mod redis;
mod scim;
mod servers;
mod vault;

pub use self::admin::*;
pub use self::alerts::*;
pub use self::audit::*;
pub use self::connect::*;
pub use self::gateways::*;
pub use self::identity_provider::*;
pub use self::listen::*;
pub use self::policy::*;
pub use self::redis::*;
pub use self::scim::*;
pub use self::servers::*;
pub use self::vault::*;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config is not consistent: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listen: Listen,
    #[serde(default)]
    pub redis: RedisConfig,
    pub vault: VaultConfig,
    pub identity_provider: IdentityProvider,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub servers: Vec<Server>,
    #[serde(default)]
    pub gateways: Vec<Gateway>,
    /// Provisioned agents (reloaded with `[policy]`).
    #[serde(default)]
    pub agents: Vec<crate::agents::AgentConfig>,
    /// Tool-level policy. Absent: every authenticated caller sees every
    /// tool (logged as a warning at start). Present: nothing is visible
    /// unless a grant allows it.
    pub policy: Option<PolicyConfig>,
    /// The connect page and per-user OAuth (`[connect]`). Absent: a user
    /// without an identity for a per-user server is told to ask an operator.
    pub connect: Option<ConnectConfig>,
    /// A webhook for refusals worth a person's attention (`[alerts]`).
    pub alerts: Option<AlertsConfig>,
    /// The SCIM 2.0 endpoint an identity provider provisions people and
    /// groups through (`[scim]`). Absent: no `/scim/v2`.
    pub scim: Option<ScimConfig>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn gateway(&self, name: &str) -> Option<&Gateway> {
        self.gateways.iter().find(|g| g.name == name)
    }

    pub fn server(&self, name: &str) -> Option<&Server> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// Where the config names `id` as a shared assignment's identity, as
    /// `gateway 'g', assignment 'a'`, with that assignment's server — the
    /// first place, `None` when nowhere.
    /// Such ids are reserved for the organisation's global identities: a
    /// person who took one first as a private identity would break (or,
    /// for themself, take over) that assignment, and an operator could not
    /// store the service account under the name the config expects.
    pub fn reserved_identity(&self, id: &str) -> Option<(String, &str)> {
        self.gateways.iter().find_map(|g| {
            g.assignments.iter().find_map(|a| match &a.scheme {
                IdentityScheme::Shared { identity } if identity == id => Some((
                    format!("gateway '{}', assignment '{}'", g.name, a.name),
                    a.server.as_str(),
                )),
                _ => None,
            })
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.vault.key_file.is_none() && self.vault.key_env.is_none() {
            return invalid(
                "[vault] needs key_file or key_env: master keys never live in Redis".into(),
            );
        }
        self.listen.validate().map_err(ConfigError::Invalid)?;
        if let Some(alerts) = &self.alerts {
            alerts.validate().map_err(ConfigError::Invalid)?;
        }
        let mut names = HashSet::new();
        for s in &self.servers {
            if !names.insert(s.name.as_str()) {
                return invalid(format!("server '{}' is declared twice", s.name));
            }
            if let Some(o) = &s.oauth
                && o.authorization_response_iss_parameter_supported
                && o.issuer.as_deref().is_none_or(str::is_empty)
            {
                return invalid(format!(
                    "server '{}': [servers.oauth] authorization_response_iss_parameter_supported needs \
                     issuer, the provider's issuer identifier to compare the `iss` with",
                    s.name
                ));
            }
            if let Some(x) = &s.exchange {
                if s.oauth.is_some() {
                    return invalid(format!(
                        "server '{}' has both [servers.oauth] and [servers.exchange]; a person's \
                         credential comes from one: a consent at the provider, or an exchange of \
                         their token",
                        s.name
                    ));
                }
                if let Some(problem) = x.problem() {
                    return invalid(format!("server '{}': [servers.exchange] {problem}", s.name));
                }
            }
            if let ServerAuth::StaticHeader { header, .. } = &s.auth
                && http_header_name_invalid(header)
            {
                return invalid(format!(
                    "server '{}': '{header}' is not a valid HTTP header name",
                    s.name
                ));
            }
        }
        if !self.redis.cluster_nodes.is_empty() && !self.redis.sentinel_nodes.is_empty() {
            return invalid(
                "[redis] names both cluster_nodes and sentinel_nodes; pick the one your Redis is"
                    .into(),
            );
        }
        if !self.redis.sentinel_nodes.is_empty()
            && self
                .redis
                .sentinel_master
                .as_deref()
                .unwrap_or("")
                .is_empty()
        {
            return invalid(
                "[redis] sentinel_nodes needs sentinel_master, the name the Sentinels monitor"
                    .into(),
            );
        }
        if let Some(problem) = self.scim.as_ref().and_then(ScimConfig::problem) {
            return invalid(format!("[scim] {problem}"));
        }
        for (role, caps) in &self.admin.roles {
            for cap in caps {
                let parsed = crate::capability::Capability::parse(cap);
                if parsed.is_some_and(|c| !c.claimable()) {
                    return invalid(format!(
                        "[admin.roles] '{role}': '{cap}' is held only by the [scim] token, the identity provider's; no role can grant it"
                    ));
                }
                if parsed.is_none() {
                    return invalid(format!(
                        "[admin.roles] '{role}': unknown capability '{cap}' (known: {})",
                        crate::capability::Capability::names()
                    ));
                }
            }
        }
        let mut gateways = HashSet::new();
        for g in &self.gateways {
            if !gateways.insert(g.name.as_str()) {
                return invalid(format!("gateway '{}' is declared twice", g.name));
            }
            if g.name.is_empty() || g.name.contains(':') {
                return invalid(format!(
                    "gateway '{}': a gateway name must be non-empty and without ':'",
                    g.name
                ));
            }
            if g.public_url.host_str().is_none() {
                return invalid(format!("gateway '{}': public_url has no host", g.name));
            }
            let mut assignments = HashSet::new();
            for a in &g.assignments {
                if a.name.is_empty() || a.name.contains('/') {
                    return invalid(format!(
                        "gateway '{}': assignment name '{}' must be one non-empty path segment",
                        g.name, a.name
                    ));
                }
                if !assignments.insert(a.name.as_str()) {
                    return invalid(format!(
                        "gateway '{}': assignment '{}' is declared twice",
                        g.name, a.name
                    ));
                }
                if self.server(&a.server).is_none() {
                    return invalid(format!(
                        "gateway '{}', assignment '{}': unknown server '{}' (declare it under [[servers]])",
                        g.name, a.name, a.server
                    ));
                }
            }
            for c in &g.combined {
                g.validate_combined(c, &mut assignments)
                    .map_err(ConfigError::Invalid)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[vault]
key_env = "LATCHKEY_MASTER_KEYS"

[identity_provider]
issuer = "http://127.0.0.1:8080"

[[servers]]
name = "everything"
url = "http://127.0.0.1:3001/mcp"
auth = { type = "static_header", header = "authorization", prefix = "Bearer " }

[[gateways]]
name = "local"
public_url = "http://127.0.0.1:10000/mcp"

[[gateways.assignments]]
name = "everything"
server = "everything"
scheme = "shared"
identity = "everything-sa"

[[gateways.assignments]]
name = "everything-mine"
server = "everything"
scheme = "per_user"
"#;

    #[test]
    fn parses_sample_with_defaults() {
        let c = Config::parse(SAMPLE).unwrap();
        assert_eq!(c.listen.grpc.port(), 9191);
        assert_eq!(c.listen.http.port(), 8181);
        assert_eq!(c.redis.url, "redis://127.0.0.1:6379");
        let g = &c.gateways[0];
        assert_eq!(g.base_path(), "/mcp");
        assert_eq!(g.authority(), "127.0.0.1:10000");
        assert_eq!(g.assignment_path(&g.assignments[0]), "/mcp/everything");
        assert_eq!(
            g.resource_metadata_url(),
            "http://127.0.0.1:10000/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            g.assignments[0].scheme,
            IdentityScheme::Shared {
                identity: "everything-sa".into()
            }
        );
        assert_eq!(g.assignments[1].scheme, IdentityScheme::PerUser);
    }

    #[test]
    fn unknown_server_is_named() {
        let text = SAMPLE.replace(
            "server = \"everything\"\nscheme = \"per_user\"",
            "server = \"nope\"\nscheme = \"per_user\"",
        );
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("unknown server 'nope'"), "{err}");
    }

    #[test]
    fn missing_master_keys_is_refused() {
        let text = SAMPLE.replace("key_env = \"LATCHKEY_MASTER_KEYS\"", "cache_ttl_secs = 5");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("key_file or key_env"), "{err}");
    }

    #[test]
    fn typo_in_field_is_refused_with_its_name() {
        let text = SAMPLE
            .replace("leeway_secs", "x")
            .replace("issuer =", "isuer =");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("isuer"), "{err}");
    }

    #[test]
    fn a_required_iss_needs_the_issuer_to_compare_it_with() {
        let oauth = |extra: &str| {
            SAMPLE.replace(
                "prefix = \"Bearer \" }\n",
                &format!(
                    "prefix = \"Bearer \" }}\n\n[servers.oauth]\nauthorization_endpoint = \"https://p.example/a\"\n\
                     token_endpoint = \"https://p.example/t\"\nclient_id = \"latchkey\"\n{extra}\n"
                ),
            )
        };
        let err = Config::parse(&oauth(
            "authorization_response_iss_parameter_supported = true",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("server 'everything'") && err.contains("needs issuer"),
            "{err}"
        );
        let c = Config::parse(&oauth(
            "issuer = \"https://p.example\"\nauthorization_response_iss_parameter_supported = true",
        ))
        .unwrap();
        let o = c.servers[0].oauth.as_ref().unwrap();
        assert_eq!(o.issuer.as_deref(), Some("https://p.example"));
        assert!(o.authorization_response_iss_parameter_supported);
    }

    #[test]
    fn an_exchange_section_is_read_with_its_defaults_and_its_mistakes_named() {
        let exchange = |body: &str| {
            SAMPLE.replace(
                "prefix = \"Bearer \" }\n",
                &format!(
                    "prefix = \"Bearer \" }}\n\n[servers.exchange]\nclient_id = \"gw\"\n{body}\n"
                ),
            )
        };
        let c = Config::parse(&exchange("kind = \"token_exchange\"\naudience = \"crm\"")).unwrap();
        let x = c.servers[0].exchange.as_ref().unwrap();
        assert_eq!(x.kind, ExchangeKind::TokenExchange);
        assert_eq!(x.subject_token_type(), token_types::ACCESS_TOKEN);
        assert!(
            x.actor_token,
            "the agent goes as the actor unless turned off"
        );
        assert!(
            x.token_endpoint.is_none(),
            "discovered from the identity provider"
        );
        let c = Config::parse(&exchange(
            "kind = \"id_jag\"\nauthorization_server = \"https://as.example\"",
        ))
        .unwrap();
        assert_eq!(
            c.servers[0].exchange.as_ref().unwrap().kind,
            ExchangeKind::IdJag
        );
        let c = Config::parse(&exchange(
            "kind = \"token_exchange\"\nsubject_token_header = \"x-id-token\"",
        ))
        .unwrap();
        assert_eq!(
            c.servers[0].exchange.as_ref().unwrap().subject_token_type(),
            token_types::ID_TOKEN,
            "an ID token from the header is sent as one"
        );

        for (body, says) in [
            ("kind = \"id_jag\"", "needs authorization_server"),
            (
                "kind = \"token_exchange\"\nauthorization_server = \"https://as.example\"",
                "are for kind = \"id_jag\"",
            ),
            (
                "kind = \"id_jag\"\nauthorization_server = \"https://as.example\"\naudience = \"x\"",
                "audience is for kind = \"token_exchange\"",
            ),
            (
                "kind = \"id_jag\"\nauthorization_server = \"https://as.example\"\n\
                 requested_token_type = \"urn:ietf:params:oauth:token-type:access_token\"",
                "remove requested_token_type",
            ),
            ("kind = \"exchange_please\"", "unknown variant"),
            (
                "kind = \"token_exchange\"\nprivate_key_file = \"k.pem\"\nclient_secret_env = \"S\"",
                "keep one",
            ),
            (
                "kind = \"token_exchange\"\nsubject_token_header = \"Authorization\"",
                "not authorization, cookie or host",
            ),
            (
                "kind = \"token_exchange\"\nprivate_key_id = \"k1\"",
                "private_key_file, which is not set",
            ),
        ] {
            let err = Config::parse(&exchange(body)).unwrap_err().to_string();
            assert!(err.contains(says), "{body}: {err}");
        }
        let err = Config::parse(
            &exchange("kind = \"token_exchange\"")
                .replace("client_id = \"gw\"", "client_id = \"\""),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("client_id must not be empty"), "{err}");
        let both = exchange("kind = \"token_exchange\"").replace(
            "[servers.exchange]",
            "[servers.oauth]\nauthorization_endpoint = \"https://p.example/a\"\n\
             token_endpoint = \"https://p.example/t\"\nclient_id = \"latchkey\"\n\n[servers.exchange]",
        );
        let err = Config::parse(&both).unwrap_err().to_string();
        assert!(
            err.contains("both [servers.oauth] and [servers.exchange]"),
            "{err}"
        );
    }

    #[test]
    fn scheme_and_identity_must_agree() {
        let text = SAMPLE.replace("identity = \"everything-sa\"\n", "");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("needs `identity"), "{err}");
        let text = SAMPLE.replace(
            "scheme = \"per_user\"",
            "scheme = \"per_user\"\nidentity = \"x\"",
        );
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("remove `identity`"), "{err}");
    }

    #[test]
    fn the_grpc_listeners_tls_is_read_and_checked() {
        let with = |listen: &str| {
            Config::parse(&SAMPLE.replace(
                "[identity_provider]",
                &format!("{listen}\n\n[identity_provider]"),
            ))
        };
        let c = with(
            "[listen]\ngrpc = \"0.0.0.0:9191\"\n[listen.grpc_tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\nclient_ca = \"/ca.pem\"\nallowed_clients = [\"spiffe://corp/ns/gw/sa/envoy\"]",
        )
        .unwrap();
        let tls = c.listen.grpc_tls.unwrap();
        assert_eq!(tls.client_ca, PathBuf::from("/ca.pem"));
        assert_eq!(tls.allowed_clients, ["spiffe://corp/ns/gw/sa/envoy"]);
        assert!(!c.listen.grpc_insecure);
        let err = with(
            "[listen]\ngrpc_insecure = true\n[listen.grpc_tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\nclient_ca = \"/ca.pem\"",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("remove grpc_insecure"), "{err}");
        let err = with(
            "[listen.grpc_tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\nclient_ca = \"/ca.pem\"\nallowed_clients = [\"spiffe://a b\"]",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("is not a SAN"), "{err}");
        // A client CA is not optional: TLS without it would authenticate nobody.
        let err = with("[listen.grpc_tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("client_ca"), "{err}");
    }

    #[test]
    fn redis_topology_and_admin_roles_are_checked() {
        let both = SAMPLE.replace(
            "[identity_provider]",
            "[redis]\ncluster_nodes = [\"redis://a:1\"]\nsentinel_nodes = [\"redis://b:2\"]\nsentinel_master = \"m\"\n\n[identity_provider]",
        );
        let err = Config::parse(&both).unwrap_err().to_string();
        assert!(err.contains("pick the one"), "{err}");
        let no_master = SAMPLE.replace(
            "[identity_provider]",
            "[redis]\nsentinel_nodes = [\"redis://b:2\"]\n\n[identity_provider]",
        );
        let err = Config::parse(&no_master).unwrap_err().to_string();
        assert!(err.contains("sentinel_master"), "{err}");
        let typo = SAMPLE.replace(
            "[identity_provider]",
            "[admin.roles]\nops = [\"users:manage\", \"user:manage\"]\n\n[identity_provider]",
        );
        let err = Config::parse(&typo).unwrap_err().to_string();
        assert!(err.contains("unknown capability 'user:manage'"), "{err}");
        let ok = SAMPLE.replace(
            "[identity_provider]",
            "[admin]\nlisten = \"127.0.0.1:9999\"\n\n[admin.roles]\nops = [\"users:manage\"]\n\n[identity_provider]",
        );
        let c = Config::parse(&ok).unwrap();
        assert_eq!(c.admin.listen.port(), 9999);
        assert_eq!(c.admin.audience, "latchkey-admin");
        assert_eq!(c.redis.timeout_ms, 500);
    }

    #[test]
    fn the_scim_section_names_its_token_and_provider_and_no_role_grants_provisioning() {
        let with_scim = |section: &str| {
            Config::parse(&SAMPLE.replace(
                "[identity_provider]",
                &format!("{section}\n\n[identity_provider]"),
            ))
        };
        let ok =
            with_scim("[scim]\ntoken_env = \"LATCHKEY_SCIM_TOKEN\"\nprovider = \"okta\"").unwrap();
        let scim = ok.scim.unwrap();
        assert_eq!(scim.actor(), "scim:okta");
        assert_eq!((scim.max_users, scim.max_groups), (50_000, 5_000));
        let err = with_scim("[scim]\ntoken_env = \"T\"\nprovider = \"okta inc\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("[scim] provider"), "{err}");
        let err = with_scim("[scim]\ntoken_env = \"\"\nprovider = \"okta\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("token_env"), "{err}");
        let err = with_scim("[scim]\ntoken = \"inline\"\nprovider = \"okta\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown field"),
            "a token is never written in the file: {err}"
        );
        let err = with_scim("[admin.roles]\nidp = [\"scim:provision\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("held only by the [scim] token"), "{err}");
    }

    fn with_combined(combined: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "{SAMPLE}\n[[servers]]\nname = \"other\"\nurl = \"http://127.0.0.1:3002/mcp\"\n\n[[gateways.assignments]]\nname = \"other\"\nserver = \"other\"\nscheme = \"per_user\"\n{combined}"
        );
        Config::parse(&text)
    }

    fn combined_error(combined: &str) -> String {
        with_combined(combined).unwrap_err().to_string()
    }

    #[test]
    fn combined_endpoint_parses_in_order() {
        let c = with_combined(
            "[[gateways.combined]]\nname = \"both\"\nassignments = [\"everything-mine\", \"everything\"]\n",
        )
        .unwrap();
        let g = &c.gateways[0];
        assert_eq!(g.combined[0].name, "both");
        assert_eq!(g.combined[0].assignments, ["everything-mine", "everything"]);
        assert_eq!(g.endpoint_path("both"), "/mcp/both");
        assert!(with_combined("").unwrap().gateways[0].combined.is_empty());
    }

    #[test]
    fn combined_endpoint_rules_are_named() {
        let err = combined_error(
            "[[gateways.combined]]\nname = \"both\"\nassignments = [\"everything\", \"nope\"]\n",
        );
        assert!(
            err.contains("combined 'both': no assignment 'nope'"),
            "{err}"
        );
        let err = combined_error(
            "[[gateways.combined]]\nname = \"both\"\nassignments = [\"everything\", \"other\"]\n",
        );
        assert!(
            err.contains("'other' is of server 'other' but 'everything' is of server 'everything'"),
            "{err}"
        );
        let err = combined_error(
            "[[gateways.combined]]\nname = \"both\"\nassignments = [\"everything\"]\n",
        );
        assert!(err.contains("needs at least two"), "{err}");
        let err = combined_error(
            "[[gateways.combined]]\nname = \"both\"\nassignments = [\"everything\", \"everything\"]\n",
        );
        assert!(err.contains("'everything' is named twice"), "{err}");
        let err = combined_error(
            "[[gateways.combined]]\nname = \"a/b\"\nassignments = [\"everything\", \"everything-mine\"]\n",
        );
        assert!(err.contains("one non-empty path segment"), "{err}");
        let err = combined_error(
            "[[gateways.combined]]\nname = \"\"\nassignments = [\"everything\", \"everything-mine\"]\n",
        );
        assert!(err.contains("one non-empty path segment"), "{err}");
        let err = combined_error(
            "[[gateways.combined]]\nname = \"other\"\nassignments = [\"everything\", \"everything-mine\"]\n",
        );
        assert!(
            err.contains("combined 'other': the name is already published"),
            "{err}"
        );
        let twice = "[[gateways.combined]]\nname = \"both\"\nassignments = [\"everything\", \"everything-mine\"]\n";
        let err = combined_error(&format!("{twice}{twice}"));
        assert!(
            err.contains("combined 'both': the name is already published"),
            "{err}"
        );
        let err = combined_error(
            "[[gateways.combined]]\nname = \"both\"\nassignments = [\"everything\", \"everything-mine\"]\nextra = 1\n",
        );
        assert!(err.contains("extra"), "{err}");
    }

    #[test]
    fn bad_header_name_is_refused() {
        let text = SAMPLE.replace("header = \"authorization\"", "header = \"bad header\"");
        assert!(Config::parse(&text).is_err());
    }
}
