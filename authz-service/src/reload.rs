//! Policy reload: the config file is watched, and when it changes its
//! `[policy]` is compiled again and swapped in between two requests (no
//! request is dropped or sees half a policy). A file that does not parse or
//! compile is refused with a message naming the line, and the policy in
//! force stays. Everything outside `[policy]` takes effect at restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::config::{Config, ConfigError};
use crate::policy::Policy;

/// The policy in force, and where it came from.
pub struct PolicySource {
    current: ArcSwap<Policy>,
    path: Option<PathBuf>,
}

/// Size and modification time: what tells a changed file.
type Stamp = Option<(u64, SystemTime)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}

impl PolicySource {
    /// A policy that never changes (benchmarks, tests).
    pub fn fixed(policy: Policy) -> PolicySource {
        PolicySource {
            current: ArcSwap::from_pointee(policy),
            path: None,
        }
    }

    pub fn watched(policy: Policy, path: PathBuf) -> PolicySource {
        PolicySource {
            current: ArcSwap::from_pointee(policy),
            path: Some(path),
        }
    }

    pub fn current(&self) -> arc_swap::Guard<Arc<Policy>> {
        self.current.load()
    }

    /// Reads the file again and, if it holds a valid policy for the running
    /// gateways, puts it in force. The error says why the file was refused.
    pub fn reload(&self, running: &Config) -> Result<(), String> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let fresh = Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => {
                format!("config file {} is not valid: {message}", path.display())
            }
            other => format!("{}: {other}", path.display()),
        })?;
        if fresh.gateways.len() != running.gateways.len()
            || fresh
                .gateways
                .iter()
                .zip(&running.gateways)
                .any(|(a, b)| a.name != b.name || a.assignments.len() != b.assignments.len())
        {
            tracing::warn!(
                path = %path.display(),
                "gateways changed in the config file; only [policy] is reloaded, restart to apply the rest"
            );
        }
        let merged = Config {
            policy: fresh.policy,
            ..running.clone()
        };
        let policy =
            Policy::compile(&merged, &text).map_err(|e| format!("{}: {e}", path.display()))?;
        self.current.store(Arc::new(policy));
        Ok(())
    }

    /// Polls the file every `every` and reloads when it changed. Polling
    /// (not inotify) works the same on every filesystem, including the
    /// symlink swaps of a Kubernetes ConfigMap.
    pub async fn watch(self: Arc<Self>, running: Config, every: Duration) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let mut last = stamp(&path);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = stamp(&path);
            if now == last {
                continue;
            }
            last = now;
            match self.reload(&running) {
                Ok(()) => tracing::info!(
                    path = %path.display(),
                    enforced = self.current().is_enforced(),
                    "policy reloaded"
                ),
                Err(e) => tracing::error!(
                    error = %e,
                    "policy reload refused; the previous policy stays in force"
                ),
            }
        }
    }
}
