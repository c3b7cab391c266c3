//! Policy reload: the config file is watched, and when it changes its
//! `[policy]` and `[[agents]]` are compiled again and swapped in between two
//! requests (no request is dropped or sees half a policy). A file that does
//! not parse or compile is refused with a message naming the line, and the
//! policy in force stays. Everything else takes effect at restart.
//! Reloads are counted, taken and refused, for `/metrics`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use latchkey_core::config::{Config, ConfigError};
use latchkey_core::policy::Policy;

/// The policy in force, and where it came from.
pub struct PolicySource {
    current: ArcSwap<Policy>,
    path: Option<PathBuf>,
    reloaded: AtomicU64,
    refused: AtomicU64,
}

/// How many reloads put a new policy in force, and how many were refused.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReloadCounts {
    pub ok: u64,
    pub refused: u64,
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
            reloaded: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    pub fn watched(policy: Policy, path: PathBuf) -> PolicySource {
        PolicySource {
            current: ArcSwap::from_pointee(policy),
            path: Some(path),
            reloaded: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    pub fn current(&self) -> arc_swap::Guard<Arc<Policy>> {
        self.current.load()
    }

    pub fn reloads(&self) -> ReloadCounts {
        ReloadCounts {
            ok: self.reloaded.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    /// Reads the file again and, if it holds a valid policy for the running
    /// gateways, puts it in force. The error says why the file was refused.
    pub fn reload(&self, running: &Config) -> Result<(), String> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let outcome = self.load(path, running);
        let counter = if outcome.is_ok() {
            &self.reloaded
        } else {
            &self.refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
        outcome
    }

    fn load(&self, path: &Path, running: &Config) -> Result<(), String> {
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
                "gateways changed in the config file; only [policy] and [[agents]] are reloaded, restart to apply the rest"
            );
        }
        // `[[agents]]` is part of the policy (who may act, and for whom):
        // taken from the file too, not from the config the process started
        // with, or a provisioned or removed agent would wait for a restart.
        let merged = Config {
            policy: fresh.policy,
            agents: fresh.agents,
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

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = concat!(
        include_str!("../../testdata/gateway.toml"),
        r#"
[[gateways.assignments]]
name = "gh"
server = "gh"
scheme = "shared"
identity = "gh-sa"
"#
    );

    #[test]
    fn reloads_are_counted_taken_and_refused() {
        let path = std::env::temp_dir().join(format!(
            "latchkey-reload-{}-{:?}.toml",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, CONFIG).unwrap();
        let running = Config::parse(CONFIG).unwrap();
        let policy = Policy::compile(&running, CONFIG).unwrap();
        let source = PolicySource::watched(policy, path.clone());
        assert_eq!(source.reloads(), ReloadCounts::default());
        source.reload(&running).unwrap();
        std::fs::write(&path, "[[gateways]\n").unwrap();
        assert!(source.reload(&running).is_err());
        std::fs::remove_file(&path).unwrap();
        assert!(
            source.reload(&running).is_err(),
            "a missing file is refused"
        );
        assert_eq!(source.reloads(), ReloadCounts { ok: 1, refused: 2 });
        // A fixed policy has no file: nothing to reload, nothing counted.
        let fixed = PolicySource::fixed(Policy::compile(&running, CONFIG).unwrap());
        fixed.reload(&running).unwrap();
        assert_eq!(fixed.reloads(), ReloadCounts::default());
    }
}
