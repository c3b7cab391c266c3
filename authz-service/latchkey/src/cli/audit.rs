//! `latchkey audit query|tail`: the audit stream read straight from Redis
//! (`latchkey_store::audit_read`), as the config's `[redis]` names it.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use latchkey_core::config::Config;
use latchkey_store::audit_read::{self, AuditReader, Filter};

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Print the events kept in the audit stream that match, newest last.
    Query {
        /// The service config: its `[redis]` says where the stream is.
        #[arg(long, env = "LATCHKEY_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        filter: Filter,
        /// From when: an RFC 3339 time (2025-06-01T09:30:00Z) or a duration
        /// back from now (90s, 15m, 2h, 7d, 2w). Default: the oldest kept.
        #[arg(long)]
        since: Option<String>,
        /// Only the newest N events that match.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Print events that match as they arrive, until interrupted.
    Tail {
        /// The service config: its `[redis]` says where the stream is.
        #[arg(long, env = "LATCHKEY_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        filter: Filter,
        /// Start with the oldest event kept instead of the next new one.
        #[arg(long)]
        from_start: bool,
        /// Exit after printing N events.
        #[arg(long)]
        count: Option<usize>,
    },
}

impl AuditCommand {
    pub fn config(&self) -> &PathBuf {
        match self {
            AuditCommand::Query { config, .. } | AuditCommand::Tail { config, .. } => config,
        }
    }
}

/// `latchkey audit query|tail`: straight from Redis, as the config names it.
pub fn run(command: AuditCommand, json: bool) -> Result<()> {
    let config = Config::load(command.config())?;
    // A mistyped --since is said before Redis is asked anything.
    let since_ms = match &command {
        AuditCommand::Query {
            since: Some(since), ..
        } => Some(audit_read::parse_since(since, audit_read::now_ms())?),
        _ => None,
    };
    let run = async {
        let reader = AuditReader::connect(&config).await?;
        let mut out = std::io::stdout().lock();
        match command {
            AuditCommand::Query { filter, limit, .. } => {
                reader.query(&filter, since_ms, limit, json, &mut out).await
            }
            AuditCommand::Tail {
                filter,
                from_start,
                count,
                ..
            } => {
                reader
                    .tail(
                        &filter,
                        from_start,
                        count,
                        json,
                        &mut out,
                        &mut std::io::stderr(),
                    )
                    .await
            }
        }
    };
    let outcome = super::block_on(run)?;
    match outcome {
        Ok(_) => Ok(()),
        Err(e) if e.is_broken_pipe() => Ok(()),
        Err(e) => Err(e.into()),
    }
}
