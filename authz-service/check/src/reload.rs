//! Policy reload: the config file is watched, and when it changes its
//! `[policy]` and `[[agents]]` are compiled again and swapped in between two
//! requests (no request is dropped or sees half a policy). A file that does
//! not parse or compile is refused with a message naming the line, and the
//! policy in force stays. Everything else takes effect at restart.
//! Reloads are counted, taken and refused, for `/metrics`.
//!
//! Agents onboarded by approval (`latchkey_core::onboarding`) live in
//! Redis, not in the file: they are merged into every compile, and a
//! change to them (each replica's invalidation listener runs
//! [`PolicySource::onboarded_hook`]) compiles the policy again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use latchkey_core::config::{Config, ConfigError};
use latchkey_core::onboarding::{OnboardedAgent, merged_with};
use latchkey_core::policy::Policy;
use latchkey_store::cache::ChangeHook;
use latchkey_store::store::Store;

/// The policy in force, and where it came from.
pub struct PolicySource {
    current: ArcSwap<Policy>,
    path: Option<PathBuf>,
    /// Agents onboarded by approval, as last read from Redis.
    onboarded: ArcSwap<Vec<OnboardedAgent>>,
    /// Held while compiling: the file watcher and the onboarding hook must
    /// not put an older compile in force after a newer one.
    compiling: std::sync::Mutex<()>,
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
            onboarded: Default::default(),
            compiling: Default::default(),
            reloaded: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    pub fn watched(policy: Policy, path: PathBuf) -> PolicySource {
        PolicySource {
            current: ArcSwap::from_pointee(policy),
            path: Some(path),
            onboarded: Default::default(),
            compiling: Default::default(),
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
        let _one_at_a_time = self.compiling.lock().unwrap_or_else(|e| e.into_inner());
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
        let onboarded = self.onboarded.load();
        let policy = Self::compile_file(path, running, &onboarded)?;
        self.current.store(Arc::new(policy));
        Ok(())
    }

    /// The file's `[policy]` and `[[agents]]` (over the rest of the
    /// running config) with `onboarded` merged in.
    fn compile_file(
        path: &Path,
        running: &Config,
        onboarded: &[OnboardedAgent],
    ) -> Result<Policy, String> {
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
        let from_file = Config {
            policy: fresh.policy,
            agents: fresh.agents,
            ..running.clone()
        };
        let (merged, skipped) = merged_with(&from_file, onboarded);
        if !skipped.is_empty() {
            tracing::warn!(
                agents = ?skipped,
                "agents onboarded by approval are also in the config file's [[agents]]; the file's entries apply"
            );
        }
        Policy::compile(&merged, &text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Whether the policy would still compile with `candidate` onboarded
    /// too (checked before an approval is written); the error says why not.
    pub fn check_onboarding(
        &self,
        running: &Config,
        candidate: &OnboardedAgent,
    ) -> Result<(), String> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut onboarded: Vec<OnboardedAgent> = self
            .onboarded
            .load()
            .iter()
            .filter(|a| a.name != candidate.name)
            .cloned()
            .collect();
        onboarded.push(candidate.clone());
        Self::compile_file(path, running, &onboarded).map(|_| ())
    }

    /// Puts `agents` (every agent onboarded by approval) into the policy
    /// in force; a policy that does not compile with them is refused and
    /// the one in force stays. Not a reload of the file: not counted as one.
    pub fn set_onboarded(
        &self,
        agents: Vec<OnboardedAgent>,
        running: &Config,
    ) -> Result<(), String> {
        if agents.is_empty() && self.onboarded.load().is_empty() {
            return Ok(());
        }
        let previous = self.onboarded.swap(Arc::new(agents));
        let Some(path) = &self.path else {
            return Ok(());
        };
        let _one_at_a_time = self.compiling.lock().unwrap_or_else(|e| e.into_inner());
        let outcome = self.load(path, running);
        if outcome.is_err() {
            self.onboarded.store(previous);
        }
        outcome
    }

    /// The invalidation listener's hook for onboarded agents: read them
    /// all from Redis again and compile them in. A read that fails keeps
    /// the policy in force (the listener runs the hook again when it
    /// resubscribes).
    pub fn onboarded_hook(self: &Arc<Self>, store: Store, running: Config) -> ChangeHook {
        let source = self.clone();
        let running = Arc::new(running);
        Arc::new(move || {
            let (source, store, running) = (source.clone(), store.clone(), running.clone());
            Box::pin(async move {
                match store.onboarded_agents().await {
                    Ok(agents) => {
                        let count = agents.len();
                        match source.set_onboarded(agents, &running) {
                            Ok(()) => tracing::info!(
                                onboarded = count,
                                "agents onboarded by approval compiled into the policy"
                            ),
                            Err(e) => tracing::error!(
                                error = %e,
                                "agents onboarded by approval do not compile; the previous policy stays in force"
                            ),
                        }
                    }
                    Err(e) => tracing::error!(
                        error = %e,
                        "cannot read the agents onboarded by approval; the previous policy stays in force"
                    ),
                }
            })
        })
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
        // Agents onboarded by approval are compiled in, not counted as
        // reloads; a set that does not compile leaves the policy in force
        // (with a [policy]: without one, grants are not added at all).
        std::fs::write(&path, format!("{CONFIG}\n[policy]\n")).unwrap();
        let onboarded = |grant: &str| latchkey_core::onboarding::OnboardedAgent {
            name: "new-bot".into(),
            source: "client_id".into(),
            grants: vec![latchkey_core::onboarding::AgentGrant::parse(grant).unwrap()],
            approved_by: "ops".into(),
            approved_at: "t".into(),
        };
        assert!(!source.current().agents.is_provisioned("new-bot"));
        source
            .set_onboarded(vec![onboarded("g/gh")], &running)
            .unwrap();
        assert!(source.current().agents.is_provisioned("new-bot"));
        let e = source
            .set_onboarded(vec![onboarded("g/nope")], &running)
            .unwrap_err();
        assert!(e.contains("nope"), "{e}");
        assert!(source.current().agents.is_provisioned("new-bot"));
        assert!(
            source
                .check_onboarding(&running, &onboarded("g/nope"))
                .is_err()
        );
        assert!(
            source
                .check_onboarding(&running, &onboarded("g/gh"))
                .is_ok()
        );
        std::fs::remove_file(&path).unwrap();
        assert_eq!(source.reloads(), ReloadCounts { ok: 1, refused: 2 });
        // A fixed policy has no file: nothing to reload, nothing counted.
        let fixed = PolicySource::fixed(Policy::compile(&running, CONFIG).unwrap());
        fixed.reload(&running).unwrap();
        assert_eq!(fixed.reloads(), ReloadCounts::default());
    }
}
