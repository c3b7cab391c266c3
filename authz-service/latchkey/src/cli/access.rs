//! `latchkey access review`: who may call what where, through which
//! identity, when it was last used and refreshed, and what looks stale
//! (`latchkey_core::review`), read straight from the config file and Redis
//! as `latchkey audit` is: an operator with the config reviews without
//! the admin API, and nothing here can change anything. Each finding
//! names the command that acts on it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use latchkey_core::config::Config;
use latchkey_core::identity::{ConnectionRecord, PrincipalKind, PrincipalRecord, VaultRecord};
use latchkey_core::onboarding::merged_with;
use latchkey_core::review::{self, Review, ReviewFilter, ReviewInput};
use latchkey_core::scim::ResourceKind;
use latchkey_store::redis_backend::Topology;
use latchkey_store::scim::StoredResource;
use latchkey_store::store::Store;

#[derive(Subcommand, Debug)]
pub enum AccessCommand {
    /// Every person and agent Latchkey knows: what they may call where,
    /// through which identity, and what looks stale.
    Review {
        /// The service config: its policy, and where Redis is.
        #[arg(long, env = "LATCHKEY_CONFIG")]
        config: PathBuf,
        /// Only this person.
        #[arg(long, conflicts_with = "agent")]
        user: Option<String>,
        /// Only this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Only access through this gateway.
        #[arg(long)]
        gateway: Option<String>,
        /// An identity or connection unused for this many days is stale.
        #[arg(long, default_value_t = 30)]
        stale_days: u64,
        /// One line per principal and assignment, comma-separated (the
        /// findings go to standard error).
        #[arg(long, conflicts_with = "json")]
        csv: bool,
        /// One JSON document: principals and findings.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: AccessCommand, global_json: bool) -> Result<()> {
    let AccessCommand::Review {
        config,
        user,
        agent,
        gateway,
        stale_days,
        csv,
        json,
    } = command;
    let config = Config::load(&config)?;
    let filter = ReviewFilter {
        user,
        agent,
        gateway,
    };
    let review = super::block_on(read_and_review(&config, &filter, stale_days))??;
    if csv {
        print!("{}", review::to_csv(&review));
        for f in &review.findings {
            eprintln!("{}: {}", f.kind, f.detail);
        }
    } else if json || global_json {
        println!("{}", serde_json::to_string_pretty(&review)?);
    } else {
        print!("{}", text(&review));
    }
    Ok(())
}

async fn read_and_review(
    config: &Config,
    filter: &ReviewFilter,
    stale_days: u64,
) -> Result<Review> {
    let store = Store::open(config, Duration::ZERO).await.with_context(|| {
        format!(
            "connecting to Redis at {}",
            Topology::from_config(&config.redis).describe()
        )
    })?;
    let records = async |index: String| -> Result<Vec<String>> { Ok(store.members(&index).await?) };
    let ids = records(store.identities_index()).await?;
    let identities: Vec<VaultRecord> = store
        .get_many(
            &ids.iter()
                .map(|i| store.identity_key(i))
                .collect::<Vec<_>>(),
        )
        .await?;
    let connection_keys = records(store.connections_index()).await?;
    let connections: Vec<ConnectionRecord> = store.get_many(&connection_keys).await?;
    // People provisioned over SCIM, including those with no principal
    // record (active, in no group): known people, listed.
    let scim_ids = records(store.scim_index(ResourceKind::User)).await?;
    let scim_users: Vec<StoredResource> = store
        .get_many(
            &scim_ids
                .iter()
                .map(|i| store.scim_key(ResourceKind::User, i))
                .collect::<Vec<_>>(),
        )
        .await?;
    let provisioned_users: BTreeSet<String> = scim_users
        .iter()
        .map(|u| u.text("userName").to_string())
        .filter(|u| !u.is_empty())
        .collect();
    let mut principals: Vec<PrincipalRecord> = Vec::new();
    for kind in [PrincipalKind::User, PrincipalKind::Agent] {
        let ids = records(store.principals_index(kind)).await?;
        let keys: Vec<String> = ids.iter().map(|i| store.principal_key(kind, i)).collect();
        principals.extend(store.get_many::<PrincipalRecord>(&keys).await?);
    }
    let onboarded = store.onboarded_agents().await?;
    let last_used = store.last_used().await?;
    let (merged, _) = merged_with(config, &onboarded);
    let onboarded: BTreeSet<String> = onboarded.into_iter().map(|a| a.name).collect();
    let input = ReviewInput {
        config: &merged,
        onboarded: &onboarded,
        identities: &identities,
        connections: &connections,
        principals: &principals,
        provisioned_users: &provisioned_users,
        last_used: &last_used,
        now: latchkey_core::unix_now(),
        stale_after_days: stale_days,
    };
    Ok(review::review(&input, filter))
}

/// For a person at a terminal: a block per principal, then the findings.
fn text(review: &Review) -> String {
    let mut out = String::new();
    let or_never = |t: &Option<String>| t.clone().unwrap_or_else(|| "never".into());
    for p in &review.principals {
        let source = p.source.map(|s| format!(", {s}")).unwrap_or_default();
        out.push_str(&format!(
            "{} {} ({}{source}), last let through: {}\n",
            p.kind,
            p.name,
            p.status,
            or_never(&p.last_used)
        ));
        for a in &p.access {
            out.push_str(&format!(
                "  {}/{} ({}, server {}): tools {}{} by {}; identity {}",
                a.gateway,
                a.assignment,
                a.scheme,
                a.server,
                a.tools.join(","),
                if a.tools_denied.is_empty() {
                    String::new()
                } else {
                    format!(" but not {}", a.tools_denied.join(","))
                },
                a.grants.join(", "),
                a.identity.as_deref().unwrap_or("none chosen"),
            ));
            if a.identity.is_some() {
                out.push_str(&format!(
                    " ({}, last used {}, refreshed {})",
                    a.identity_status.unwrap_or("absent"),
                    or_never(&a.identity_last_used),
                    a.identity_refreshed.as_deref().unwrap_or("-")
                ));
            }
            out.push('\n');
        }
        for i in &p.identities {
            out.push_str(&format!(
                "  own identity {} (server {}, {}): last used {}, refreshed {}\n",
                i.id,
                i.server,
                i.status,
                or_never(&i.last_used),
                i.refreshed
            ));
        }
    }
    if review.findings.is_empty() {
        out.push_str("\nnothing looks stale\n");
    } else {
        out.push_str("\nfindings:\n");
        for f in &review.findings {
            out.push_str(&format!("  {}: {}\n", f.kind, f.detail));
            if let Some(fix) = &f.fix {
                out.push_str(&format!("    -> {fix}\n"));
            }
        }
    }
    out
}
