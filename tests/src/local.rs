//! The local stack `scripts/start` runs (through the `local-stack` binary):
//! the same peers and steps as a scenario's [`crate::stack::Stack`], laid out
//! by a config file a newcomer reads (`envoy/latchkey.local.toml`) and on the
//! ports that config names instead of free ones.
//!
//! The config is the topology: Redis at `[redis] url` (one already answering
//! there is used as it is), the identity provider at
//! `[identity_provider] issuer`, a demo upstream at each `[[servers]] url`
//! (which one, by the server's name: [`DemoPeer`]), `latchkey serve` on the
//! config itself, and Envoy on the first gateway's `public_url` with a
//! bootstrap from `latchkey envoy render`, the path operators use. Before
//! anything starts, every port it would bind is checked, so a second copy or
//! another program fails with the port's name instead of half a stack.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use latchkey_core::config::{Config, IdentityScheme};

use crate::envoy::Envoy;
use crate::paths;
use crate::peers::{AuthEcho, Everything, Idp, IdpOptions, OauthMcp, Redis, command_on};
use crate::process::Process;
use crate::stack::{random_hex, run, start_latchkey};

/// Which demo upstream serves a `[[servers]]` entry of the local config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoPeer {
    /// `everything`: the TypeScript SDK's server-everything.
    Everything,
    /// `whoami`: `auth-echo`, which answers with the credential it received.
    AuthEcho,
    /// `crm`: `oauth-mcp`, which takes only tokens its own provider (the
    /// local identity provider, playing crm's) issued for it.
    OauthMcp,
}

impl DemoPeer {
    pub fn for_server(name: &str) -> Result<DemoPeer> {
        Ok(match name {
            "everything" => DemoPeer::Everything,
            "whoami" => DemoPeer::AuthEcho,
            "crm" => DemoPeer::OauthMcp,
            other => bail!(
                "the local stack has no demo upstream for server {other:?} \
                 (it knows everything, whoami and crm); remove it from the config \
                 or point it at a server you run yourself"
            ),
        })
    }

    /// Whether the stack stores a service-account secret for it. crm's team
    /// account is a token crm's provider issues, which the demo walk stores.
    fn takes_static_secret(self) -> bool {
        !matches!(self, DemoPeer::OauthMcp)
    }
}

pub struct LocalStackOptions {
    /// The Latchkey config (e.g. `envoy/latchkey.local.toml`).
    pub config: PathBuf,
    /// Where the stack keeps what it makes: `logs/`, the service-account
    /// secrets (`<server>.secret`, mode 0600).
    pub state: PathBuf,
    /// Envoy's admin port.
    pub envoy_admin: u16,
    /// Envoy worker threads.
    pub envoy_workers: usize,
}

pub struct LocalStack {
    /// Started here; `None` when one was already answering at `[redis] url`.
    pub redis: Option<Redis>,
    pub idp: Idp,
    pub everything: Option<Everything>,
    pub whoami: Option<AuthEcho>,
    pub crm: Option<OauthMcp>,
    pub latchkey: Process,
    pub envoy: Envoy,
    /// The first gateway's public URL (Envoy listens on its port).
    pub gateway_url: String,
    /// Each server whose service-account secret was stored, and its file.
    pub secret_files: Vec<(String, PathBuf)>,
}

impl LocalStack {
    /// Starts everything `opts.config` names; `progress` hears each step.
    pub fn start(opts: &LocalStackOptions, progress: impl Fn(&str)) -> Result<LocalStack> {
        let text = std::fs::read_to_string(&opts.config)
            .with_context(|| format!("reading {}", opts.config.display()))?;
        let config = Config::parse(&text)
            .with_context(|| format!("{} is not a valid config", opts.config.display()))?;
        // Absolute: Envoy and Redis run inside it, and read files named in it.
        let state = std::path::absolute(&opts.state)?;
        let logs = state.join("logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        let latchkey_bin = paths::latchkey_bin()?;

        let gateway = config
            .gateways
            .first()
            .context("the config has no [[gateways]] for Envoy to serve")?;
        let gateway_url = gateway.public_url.to_string().trim_end_matches('/').into();
        let envoy_port = port_of(gateway.public_url.as_str())?;
        let idp_port = port_of(&config.identity_provider.issuer)?;
        let redis_port = port_of(&config.redis.url)?;
        let mut peers = Vec::new();
        for server in &config.servers {
            peers.push((
                server,
                DemoPeer::for_server(&server.name)?,
                port_of(server.url.as_str())?,
            ));
        }

        let mut ports = vec![
            (idp_port, "the identity provider".to_string()),
            (
                config.listen.grpc.port(),
                "latchkey serve's gRPC (Check)".into(),
            ),
            (
                config.listen.http.port(),
                "latchkey serve's HTTP side".into(),
            ),
            (
                config.admin.listen.port(),
                "latchkey serve's admin API".into(),
            ),
            (envoy_port, "Envoy's listener".into()),
            (opts.envoy_admin, "Envoy's admin".into()),
        ];
        ports.extend(
            peers
                .iter()
                .map(|(s, _, p)| (*p, format!("server {}", s.name))),
        );
        for (port, what) in &ports {
            if TcpStream::connect(("127.0.0.1", *port)).is_ok() {
                bail!(
                    "port {port} ({what}) is in use by another program; stop it (or an \
                     earlier stack) and start again"
                );
            }
        }

        if let Some(key_file) = &config.vault.key_file {
            let empty = std::fs::metadata(key_file).map_or(true, |m| m.len() == 0);
            if empty {
                progress(&format!(
                    "creating a master key in {} (mode 0600, never in Redis)",
                    key_file.display()
                ));
                let line = run(
                    Command::new(&latchkey_bin).args(["keys", "generate", "--id", "local1"]),
                    None,
                )?;
                write_private(key_file, &line)?;
            }
        }

        let redis = if command_on(redis_port, &["PING"]).is_ok_and(|r| r.contains("PONG")) {
            progress(&format!(
                "Redis: using the one already on 127.0.0.1:{redis_port}"
            ));
            None
        } else {
            progress(&format!("Redis: starting on 127.0.0.1:{redis_port}"));
            Some(Redis::start_on(&logs, redis_port, None, "redis")?)
        };

        progress(&format!(
            "identity provider on :{idp_port}, upstream MCP servers on {}",
            peers
                .iter()
                .map(|(s, _, p)| format!(":{p} ({})", s.name))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let idp = Idp::start_with(
            &logs,
            IdpOptions {
                issuer: Some(config.identity_provider.issuer.clone()),
                port: Some(idp_port),
                ..IdpOptions::default()
            },
        )?;
        let (mut everything, mut whoami, mut crm) = (None, None, None);
        for (server, peer, port) in &peers {
            match peer {
                DemoPeer::Everything => everything = Some(Everything::start_on(&logs, *port)?),
                DemoPeer::AuthEcho => {
                    whoami = Some(AuthEcho::start_on(
                        &logs,
                        paths::workspace_bin("auth-echo")?,
                        *port,
                        None,
                    )?)
                }
                DemoPeer::OauthMcp => {
                    let audience = server
                        .oauth
                        .as_ref()
                        .map(|o| o.client_id.clone())
                        .with_context(|| {
                            format!("server {} needs [servers.oauth] (its client id is the audience its tokens carry)", server.name)
                        })?;
                    // Keep-alives every second: the demo's GET stream stays
                    // open through the browser walk.
                    crm = Some(OauthMcp::start_on(
                        &logs,
                        paths::workspace_bin("oauth-mcp")?,
                        *port,
                        Some(Duration::from_secs(1)),
                        &idp.issuer(),
                        &idp.jwks_uri(),
                        &audience,
                    )?)
                }
            }
        }

        progress("storing the service-account secrets, encrypted (latchkey identity put-shared)");
        let mut secret_files = Vec::new();
        for gateway in &config.gateways {
            for a in &gateway.assignments {
                let IdentityScheme::Shared { identity } = &a.scheme else {
                    continue;
                };
                let takes_secret = peers
                    .iter()
                    .any(|(s, p, _)| s.name == a.server && p.takes_static_secret());
                if !takes_secret || secret_files.iter().any(|(s, _)| s == &a.server) {
                    continue;
                }
                let secret = random_hex();
                let file = state.join(format!("{}.secret", a.server));
                write_private(&file, &secret)?;
                let out = run(
                    Command::new(&latchkey_bin)
                        .args(["identity", "put-shared", "--config"])
                        .arg(&opts.config)
                        .args(["--id", identity, "--server", &a.server]),
                    Some(&secret),
                )?;
                progress(out.trim());
                secret_files.push((a.server.clone(), file));
            }
        }

        progress(&format!(
            "latchkey serve (gRPC :{}, HTTP :{}, admin API :{})",
            config.listen.grpc.port(),
            config.listen.http.port(),
            config.admin.listen.port()
        ));
        let latchkey = start_latchkey(
            &latchkey_bin,
            &opts.config,
            &logs,
            config.listen.http.port(),
            0,
            &[("LATCHKEY_LOG".to_string(), "info".to_string())],
        )?;

        progress(&format!(
            "Envoy with the Latchkey filter on :{envoy_port} (admin :{})",
            opts.envoy_admin
        ));
        let bootstrap = run(
            Command::new(&latchkey_bin)
                .args(["envoy", "render", "--config"])
                .arg(&opts.config)
                .args(["--listen", &format!("127.0.0.1:{envoy_port}")])
                .args(["--admin", &format!("127.0.0.1:{}", opts.envoy_admin)])
                .arg("--wasm")
                .arg(paths::filter_wasm()?),
            None,
        )?;
        let envoy = Envoy::start_with_admin(
            &logs,
            "envoy",
            &bootstrap,
            opts.envoy_workers,
            opts.envoy_admin,
        )?;

        Ok(LocalStack {
            redis,
            idp,
            everything,
            whoami,
            crm,
            latchkey,
            envoy,
            gateway_url,
            secret_files,
        })
    }
}

/// The port of a `scheme://host:port/...` URL, or the scheme's default.
fn port_of(url: &str) -> Result<u16> {
    let (scheme, rest) = url
        .split_once("://")
        .with_context(|| format!("{url:?} is not a URL"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    match authority.rsplit_once(':') {
        Some((_, port)) => port
            .parse()
            .with_context(|| format!("{url:?} has no valid port")),
        None => match scheme {
            "http" => Ok(80),
            "https" => Ok(443),
            "redis" => Ok(6379),
            _ => bail!("{url:?} names no port"),
        },
    }
}

/// Writes `text` to `path` readable by its owner only (a master key, a secret).
fn write_private(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_port_is_read_from_the_authority_or_the_schemes_default() {
        assert_eq!(port_of("http://127.0.0.1:9400").unwrap(), 9400);
        assert_eq!(port_of("http://127.0.0.1:3001/mcp").unwrap(), 3001);
        assert_eq!(port_of("redis://127.0.0.1:6379/0").unwrap(), 6379);
        assert_eq!(port_of("redis://127.0.0.1").unwrap(), 6379);
        assert_eq!(port_of("https://gateway.example/mcp").unwrap(), 443);
        assert!(port_of("127.0.0.1:80").is_err());
        assert!(port_of("http://h:port/").is_err());
    }

    #[test]
    fn only_the_three_demo_servers_have_a_peer() {
        assert_eq!(DemoPeer::for_server("crm").unwrap(), DemoPeer::OauthMcp);
        let err = DemoPeer::for_server("billing").unwrap_err().to_string();
        assert!(err.contains("\"billing\""), "{err}");
    }
}
