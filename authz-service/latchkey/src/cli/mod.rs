//! The `latchkey` command line: what each command takes (clap) and where
//! it runs. One file per command group: `serve`, `admin` (identities,
//! users, connections, keys: calls to the admin API, and the offline
//! `identity put-shared`), `agent` (disable, enable, and onboarding
//! requests, over the same API), `approval` (tool calls held for
//! approval, over the same API), `access` (`review`, from the config and
//! Redis), `policy` (`check` and `lint` against a
//! config file), `audit` (`query` and `tail` of the stream in Redis) and
//! `envoy` (`render` and `istio`, the deployment config).

mod access;
mod admin;
mod agent;
mod approval;
mod audit;
mod envoy;
mod policy;
mod serve;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use latchkey_core::config::Config;
use latchkey_core::vault::KeyRing;
use latchkey_store::credentials::Credentials;
use latchkey_store::redis_backend::Topology;
use latchkey_store::store::Store;

use self::access::AccessCommand;
use self::admin::{AdminArgs, ConnectionCommand, IdentityCommand, KeysCommand, UserCommand};
use self::agent::AgentCommand;
use self::approval::ApprovalCommand;
use self::audit::AuditCommand;
use self::envoy::EnvoyCommand;
use self::policy::PolicyCommand;

#[derive(Parser)]
#[command(
    name = "latchkey",
    version,
    about = "The identity layer for MCP traffic in Envoy"
)]
pub struct Cli {
    #[command(flatten)]
    admin: AdminArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC Check service and the HTTP side.
    Serve {
        #[arg(long, env = "LATCHKEY_CONFIG")]
        config: PathBuf,
    },
    /// Identities: credentials for upstream servers.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Users: deactivate and reactivate.
    #[command(subcommand)]
    User(UserCommand),
    /// Connections: which identity a user uses for each per-user server of a gateway.
    #[command(subcommand)]
    Connection(ConnectionCommand),
    /// Agents: disable and enable; onboard the ones nobody provisioned.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Master keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Tool calls held for approval: list, show, approve, deny.
    #[command(subcommand)]
    Approval(ApprovalCommand),
    /// Who the admin API thinks you are, and your capabilities.
    Whoami,
    /// Envoy configuration.
    #[command(subcommand)]
    Envoy(EnvoyCommand),
    /// Tool-level policy in a config file: check a call, lint the rules.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The audit trail: decisions and changes, read from Redis.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Access review: who may call what where, and what looks stale.
    #[command(subcommand)]
    Access(AccessCommand),
}

/// Runs one parsed command line to its end.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve { config } => serve::run(config),
        Command::Identity(IdentityCommand::PutShared {
            config,
            id,
            server,
            owner,
        }) => admin::put_shared(config, id, server, owner),
        Command::Keys(KeysCommand::Generate { id }) => {
            println!("{}", KeyRing::generate_line(&id));
            Ok(())
        }
        Command::Identity(c) => block_on(admin::identity(&cli.admin, c))?,
        Command::User(c) => block_on(admin::user(&cli.admin, c))?,
        Command::Connection(c) => block_on(admin::connection(&cli.admin, c))?,
        Command::Agent(c) => block_on(agent::run(&cli.admin, c))?,
        Command::Keys(c) => block_on(admin::keys(&cli.admin, c))?,
        Command::Approval(c) => block_on(approval::run(&cli.admin, c))?,
        Command::Whoami => block_on(admin::whoami(&cli.admin))?,
        Command::Audit(c) => audit::run(c, cli.admin.json),
        Command::Access(c) => access::run(c, cli.admin.json),
        Command::Policy(c) => policy::run(c),
        Command::Envoy(c) => envoy::run(c),
    }
}

/// One command's work on a runtime of the calling thread (every command
/// but `serve`, which runs a multi-threaded one).
fn block_on<F: Future>(work: F) -> Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work))
}

/// The vault over Redis, as `serve` and the offline commands open it.
async fn open_credentials(config: &Config) -> Result<Credentials> {
    let keys = KeyRing::from_config(&config.vault)?;
    tracing::debug!(active_key = keys.active_id(), "master keys loaded");
    let store = Store::open(config, Duration::ZERO).await.with_context(|| {
        format!(
            "connecting to Redis at {}",
            Topology::from_config(&config.redis).describe()
        )
    })?;
    Ok(Credentials::new(
        store,
        keys,
        Duration::from_secs(config.vault.cache_ttl_secs),
    ))
}

/// The command line as an operator types it: what parses, and what is
/// refused before anything runs (naming the flag that is missing).
#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    use super::envoy::label;
    use super::*;
    use crate::render::envoy::AuthzMode;

    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("latchkey").chain(line.split_whitespace()))
    }

    fn refused(line: &str) -> String {
        match parse(line) {
            Ok(_) => panic!("accepted: latchkey {line}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn envoy_render_takes_the_authz_mtls_flags_all_together_or_not_at_all() {
        let all = "envoy render --config c.toml --authz-ca ca.pem --authz-cert envoy.pem --authz-key envoy.key --authz-name latchkey.internal";
        let Command::Envoy(EnvoyCommand::Render {
            authz_ca,
            authz_name,
            mode,
            ..
        }) = parse(all).unwrap().command
        else {
            panic!("not envoy render");
        };
        assert_eq!(authz_ca.as_deref(), Some("ca.pem"));
        assert_eq!(authz_name.as_deref(), Some("latchkey.internal"));
        assert_eq!(mode, AuthzMode::Wasm);
        for missing in [
            "--authz-cert envoy.pem",
            "--authz-key envoy.key",
            "--authz-name latchkey.internal",
        ] {
            let line = all.replace(missing, "");
            let error = refused(&line);
            let flag = missing.split(' ').next().unwrap();
            assert!(error.contains(flag), "{line}: {error}");
        }
        // A client certificate without the CA that checks the service.
        let error = refused("envoy render --config c.toml --authz-cert envoy.pem");
        assert!(error.contains("--authz-ca"), "{error}");
    }

    #[test]
    fn envoy_render_takes_a_listener_key_only_with_its_certificate() {
        assert!(refused("envoy render --config c.toml --tls-key k.pem").contains("--tls-cert"));
        assert!(refused("envoy render --config c.toml --client-ca ca.pem").contains("--tls-cert"));
        assert!(parse("envoy render --config c.toml --tls-cert c.pem --tls-key k.pem").is_ok());
        let error = refused("envoy render --config c.toml --mode grpc");
        assert!(
            error.contains("wasm") && error.contains("native"),
            "{error}"
        );
    }

    #[test]
    fn envoy_istio_needs_a_wasm_url_only_for_the_filter() {
        let error = refused("envoy istio --config c.toml --mode wasm");
        assert!(error.contains("--wasm-url"), "{error}");
        assert!(parse("envoy istio --config c.toml --mode native").is_ok());
        let Command::Envoy(EnvoyCommand::Istio { selector, .. }) = parse(
            "envoy istio --config c.toml --mode native --selector app=gw --selector tier=edge",
        )
        .unwrap()
        .command
        else {
            panic!("not envoy istio");
        };
        assert_eq!(
            selector,
            [("app".into(), "gw".into()), ("tier".into(), "edge".into())]
        );
        let error = refused("envoy istio --config c.toml --mode native --selector appgw");
        assert!(
            error.contains("'appgw' is not a label: write key=value"),
            "{error}"
        );
    }

    #[test]
    fn labels_are_key_equals_value_with_a_key() {
        assert_eq!(label("a=b"), Ok(("a".into(), "b".into())));
        assert_eq!(label("a="), Ok(("a".into(), String::new())));
        assert!(label("=b").is_err());
        assert!(label("ab").is_err());
    }

    #[test]
    fn policy_check_judges_one_item_at_a_time() {
        let base = "policy check --config c.toml --user alice --gateway g --server s";
        assert!(parse(&format!("{base} --tool echo --role dev --role ops")).is_ok());
        let e = parse(&format!("{base} --tool echo --prompt p"))
            .err()
            .unwrap();
        assert_eq!(e.kind(), ErrorKind::ArgumentConflict, "{e}");
        // `--assignment` is the same flag as `--server`.
        assert!(parse("policy check --config c.toml --user a --gateway g --assignment s").is_ok());
        assert!(refused("policy check --config c.toml --gateway g --server s").contains("--user"));
    }

    #[test]
    fn an_unknown_command_or_flag_is_refused_with_a_suggestion() {
        let error = refused("identty list");
        assert!(error.contains("identity"), "{error}");
        let error = refused("serve --confg c.toml");
        assert!(error.contains("--config"), "{error}");
    }
}
