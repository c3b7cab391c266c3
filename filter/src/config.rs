//! Plugin configuration: the JSON string Envoy passes as the Wasm
//! `PluginConfig.configuration`, its defaults and its validation.
//!
//! An invalid configuration never panics: [`Config::parse`] returns an error,
//! the glue logs it, and every request is answered 503 (fail closed).

use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// Default Envoy cluster of the authorization service.
pub const DEFAULT_AUTHZ_CLUSTER: &str = "latchkey_authz";
/// Default `:authority` of the gRPC calls to the authorization service.
pub const DEFAULT_AUTHZ_AUTHORITY: &str = "latchkey-authz";
/// Default deadline of one `Check` call.
pub const DEFAULT_AUTHZ_TIMEOUT_MS: u64 = 2000;
/// Default largest request body the filter buffers (1 MiB, Envoy's default
/// `per_connection_buffer_limit_bytes`).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// Upper bound on `authz_timeout_ms`: a minute is already far more than a
/// client should wait for an authorization decision.
const MAX_TIMEOUT_MS: u64 = 60_000;
/// Longest `authz_cluster` / `authz_authority` (one byte protobuf length
/// prefix per name, see `check::grpc_upstream`).
const MAX_NAME_LEN: usize = 125;
/// Upper bound on `max_body_bytes` (64 MiB): the body is held in the VM.
const MAX_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// The filter's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Envoy cluster (HTTP/2) that reaches the authorization service.
    pub authz_cluster: String,
    /// `:authority` sent on the gRPC call (Istio's `outbound|…` cluster names
    /// are not valid authorities, so this is separate from the cluster).
    pub authz_authority: String,
    /// Deadline of one `Check`, in milliseconds.
    pub authz_timeout_ms: u64,
    /// Largest request body buffered and sent to the service, in bytes.
    pub max_body_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            authz_cluster: DEFAULT_AUTHZ_CLUSTER.to_string(),
            authz_authority: DEFAULT_AUTHZ_AUTHORITY.to_string(),
            authz_timeout_ms: DEFAULT_AUTHZ_TIMEOUT_MS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// Why a configuration was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid latchkey filter configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Parses the plugin configuration. `None`, an empty or all-whitespace
    /// string means "all defaults"; unknown keys are rejected so a typo does
    /// not silently fall back to a default.
    pub fn parse(raw: Option<&[u8]>) -> Result<Config, ConfigError> {
        let raw = raw.unwrap_or_default();
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Ok(Config::default());
        }
        let config: Config = serde_json::from_slice(raw)
            .map_err(|e| ConfigError(format!("expected a JSON object: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("authz_cluster", &self.authz_cluster),
            ("authz_authority", &self.authz_authority),
        ] {
            // See `check::grpc_upstream`: proxy-wasm 0.2 passes the
            // serialized GrpcService as a string, which bounds each name.
            if value.is_empty()
                || value.len() > MAX_NAME_LEN
                || !value.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(ConfigError(format!(
                    "{key} must be 1 to {MAX_NAME_LEN} printable ASCII characters without spaces, got {value:?}"
                )));
            }
        }
        if self.authz_timeout_ms == 0 || self.authz_timeout_ms > MAX_TIMEOUT_MS {
            return Err(ConfigError(format!(
                "authz_timeout_ms must be between 1 and {MAX_TIMEOUT_MS}, got {}",
                self.authz_timeout_ms
            )));
        }
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_BODY_LIMIT {
            return Err(ConfigError(format!(
                "max_body_bytes must be between 1 and {MAX_BODY_LIMIT}, got {}",
                self.max_body_bytes
            )));
        }
        Ok(())
    }

    /// The `Check` deadline as a [`Duration`].
    pub fn authz_timeout(&self) -> Duration {
        Duration::from_millis(self.authz_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_means_defaults() {
        assert_eq!(Config::parse(None).unwrap(), Config::default());
        assert_eq!(Config::parse(Some(b"")).unwrap(), Config::default());
        assert_eq!(Config::parse(Some(b"  \n")).unwrap(), Config::default());
        assert_eq!(Config::parse(Some(b"{}")).unwrap(), Config::default());
        let d = Config::default();
        assert_eq!(d.authz_cluster, "latchkey_authz");
        assert_eq!(d.authz_authority, "latchkey-authz");
        assert_eq!(d.authz_timeout(), Duration::from_millis(2000));
        assert_eq!(d.max_body_bytes, 1_048_576);
    }

    #[test]
    fn partial_override_keeps_other_defaults() {
        let c = Config::parse(Some(
            br#"{"authz_cluster":"outbound|9191||authz.ns.svc","max_body_bytes":10}"#,
        ))
        .unwrap();
        assert_eq!(c.authz_cluster, "outbound|9191||authz.ns.svc");
        assert_eq!(c.authz_authority, "latchkey-authz");
        assert_eq!(c.max_body_bytes, 10);
        assert_eq!(c.authz_timeout_ms, 2000);
    }

    #[test]
    fn name_length_limit() {
        let ok = format!(r#"{{"authz_cluster":"{}"}}"#, "c".repeat(125));
        assert!(Config::parse(Some(ok.as_bytes())).is_ok());
        let long = format!(r#"{{"authz_cluster":"{}"}}"#, "c".repeat(126));
        assert!(Config::parse(Some(long.as_bytes())).is_err());
    }

    #[test]
    fn invalid_configs_are_errors() {
        for bad in [
            &b"not json"[..],
            br#"[1,2]"#,
            br#"{"authz_cluster":""}"#,
            br#"{"authz_authority":"  "}"#,
            br#"{"authz_authority":"a b"}"#,
            "{\"authz_cluster\":\"clüster\"}".as_bytes(),
            br#"{"authz_timeout_ms":0}"#,
            br#"{"authz_timeout_ms":600000}"#,
            br#"{"max_body_bytes":0}"#,
            br#"{"max_body_bytes":-1}"#,
            br#"{"authz_timeout_ms":"2s"}"#,
            br#"{"authz_clusterr":"typo"}"#,
        ] {
            let err = Config::parse(Some(bad)).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("invalid latchkey filter configuration")
            );
        }
    }
}
