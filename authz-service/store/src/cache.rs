//! What this replica remembers between requests: user and agent status,
//! connections and opened identities, each for a short configurable time, so
//! the common allowed path makes no Redis round trip.
//!
//! Every change in Redis is published on the invalidation channel with the
//! changed record's key; the listener drops that entry at once. A replica
//! whose subscription broke cannot know what it missed, so it flushes
//! everything when the subscription is back. A load that raced with an
//! invalidation is answered but not kept (the epoch check), so a stale value
//! is never cached past a change. Settle markers on the same channel are
//! confirmed in order with the invalidations (`propagation`). What is not
//! a cached entry but compiled from Redis (agents onboarded by approval,
//! compiled into the policy) registers a hook for its keys' prefix: the
//! listener runs it, and waits for it, before the next message, so a
//! settle marker is confirmed only after the hook applied the change.
//! Hits and misses are counted for `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;

use latchkey_core::identity::{ConnectionRecord, IdentitySecret, PrincipalRecord, VaultRecord};
use latchkey_core::metrics::{LookupCounts, Lookups};

/// An identity as the request path needs it: metadata and the opened secret.
#[derive(Debug)]
pub struct OpenIdentity {
    pub record: VaultRecord,
    pub secret: IdentitySecret,
}

/// One cached lookup, keyed by the Redis key it was read from. Absence is
/// cached too: most users have no record at all.
#[derive(Debug, Clone)]
pub enum Entry {
    Principal(Option<Arc<PrincipalRecord>>),
    Connection(Option<Arc<ConnectionRecord>>),
    Identity(Option<Arc<OpenIdentity>>),
}

/// Work the listener does when a key with a registered prefix changes,
/// or when it (re)subscribes and anything may have changed.
pub type ChangeHook = Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>;

pub struct ReplicaCache {
    entries: moka::future::Cache<String, Entry>,
    /// Key prefix → the hook run when a key under it changes.
    hooks: std::sync::Mutex<Vec<(String, ChangeHook)>>,
    /// Bumped by every invalidation; a load that saw it move is not kept.
    epoch: AtomicU64,
    subscribed: AtomicBool,
    lookups: Lookups,
}

impl ReplicaCache {
    pub fn new(ttl: Duration, capacity: u64) -> Self {
        Self {
            entries: moka::future::Cache::builder()
                .time_to_live(ttl)
                .max_capacity(capacity)
                .build(),
            hooks: std::sync::Mutex::new(Vec::new()),
            epoch: AtomicU64::new(0),
            subscribed: AtomicBool::new(false),
            lookups: Lookups::default(),
        }
    }

    /// The cached entry for `key` (a hit), or `load`'s answer (a miss; kept
    /// unless an invalidation arrived while loading).
    pub async fn get_or_load<E>(
        &self,
        key: &str,
        load: impl std::future::Future<Output = Result<Entry, E>>,
    ) -> Result<Entry, E> {
        if let Some(entry) = self.entries.get(key).await {
            self.lookups.hit();
            return Ok(entry);
        }
        self.lookups.miss();
        let epoch = self.epoch.load(Ordering::Acquire);
        let entry = load.await?;
        if self.epoch.load(Ordering::Acquire) == epoch {
            self.entries.insert(key.to_string(), entry.clone()).await;
        }
        Ok(entry)
    }

    pub async fn invalidate(&self, key: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.entries.invalidate(key).await;
    }

    pub fn flush(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.entries.invalidate_all();
    }

    /// Runs `hook` (to its end, before the next invalidation is applied)
    /// whenever a key starting with `prefix` changes, and after every
    /// (re)subscription.
    pub fn on_change(&self, prefix: String, hook: ChangeHook) {
        self.hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((prefix, hook));
    }

    /// The hooks for `key` (every hook when `None`).
    async fn run_hooks(&self, key: Option<&str>) {
        let due: Vec<ChangeHook> = self
            .hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(prefix, _)| key.is_none_or(|k| k.starts_with(prefix.as_str())))
            .map(|(_, hook)| hook.clone())
            .collect();
        for hook in due {
            hook().await;
        }
    }

    /// Hits and misses of `get_or_load` so far (for `/metrics`).
    pub fn lookups(&self) -> LookupCounts {
        self.lookups.counts()
    }

    /// Whether the invalidation subscription is live (reported by `/readyz`).
    pub fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    /// Keeps a subscription to `channel` for as long as the process runs,
    /// reconnecting with back-off and flushing the cache on every
    /// (re)subscription. Settle markers are confirmed as replica `replica`
    /// once everything before them is applied (`propagation`).
    pub async fn listen(self: Arc<Self>, store: crate::store::Store, replica: String) {
        let channel = store.channel();
        let mut backoff = Duration::from_millis(100);
        let mut first = true;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let pubsub = match store.pubsub_client(attempt).await {
                Ok(client) => client.get_async_pubsub().await,
                Err(e) => Err(redis::RedisError::from(std::io::Error::other(
                    e.to_string(),
                ))),
            };
            match pubsub {
                Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                    Ok(()) => {
                        // Anything may have changed while we were not listening.
                        self.flush();
                        self.run_hooks(None).await;
                        self.subscribed.store(true, Ordering::Release);
                        if first {
                            tracing::info!(%channel, "invalidation subscription established");
                        } else {
                            tracing::warn!(
                                %channel,
                                "invalidation subscription re-established; cache flushed"
                            );
                        }
                        first = false;
                        backoff = Duration::from_millis(100);
                        let mut messages = pubsub.on_message();
                        while let Some(msg) = messages.next().await {
                            match msg.get_payload::<String>() {
                                Ok(key) => {
                                    if !crate::propagation::confirm_if_marker(
                                        &store, &replica, &key,
                                    ) {
                                        self.invalidate(&key).await;
                                        self.run_hooks(Some(&key)).await;
                                    }
                                }
                                // An unreadable message: drop everything to be safe.
                                Err(_) => {
                                    self.flush();
                                    self.run_hooks(None).await;
                                }
                            }
                        }
                        self.subscribed.store(false, Ordering::Release);
                        tracing::warn!(%channel, "invalidation subscription lost; reconnecting");
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot subscribe to invalidations"),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the invalidation subscription")
                }
            }
            self.subscribed.store(false, Ordering::Release);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(status: latchkey_core::identity::Status) -> Entry {
        Entry::Principal(Some(Arc::new(PrincipalRecord {
            id: "u".into(),
            kind: latchkey_core::identity::PrincipalKind::User,
            status,
            updated_by: "x".into(),
            updated_at: "t".into(),
            scim_groups: None,
        })))
    }

    fn status_of(e: &Entry) -> Option<latchkey_core::identity::Status> {
        match e {
            Entry::Principal(Some(p)) => Some(p.status),
            _ => None,
        }
    }

    #[tokio::test]
    async fn second_lookup_is_served_from_memory_until_invalidated() {
        use latchkey_core::identity::Status::*;
        let cache = ReplicaCache::new(Duration::from_secs(60), 100);
        let loads = AtomicU64::new(0);
        let load = |s| {
            loads.fetch_add(1, Ordering::Relaxed);
            async move { Ok::<_, ()>(principal(s)) }
        };
        let a = cache.get_or_load("k", load(Enabled)).await.unwrap();
        let b = cache.get_or_load("k", load(Disabled)).await.unwrap();
        assert_eq!(
            (status_of(&a), status_of(&b)),
            (Some(Enabled), Some(Enabled))
        );
        cache.invalidate("k").await;
        let c = cache.get_or_load("k", load(Disabled)).await.unwrap();
        assert_eq!(status_of(&c), Some(Disabled));
        assert_eq!(loads.load(Ordering::Relaxed), 3);
        // Every load was a miss, the one lookup served from memory a hit.
        assert_eq!(cache.lookups(), LookupCounts { hits: 1, misses: 2 });
    }

    #[tokio::test]
    async fn load_racing_an_invalidation_is_not_kept() {
        use latchkey_core::identity::Status::*;
        let cache = ReplicaCache::new(Duration::from_secs(60), 100);
        // The invalidation lands while the (stale) value is being read.
        let stale = async {
            cache.invalidate("k").await;
            Ok::<_, ()>(principal(Enabled))
        };
        let got = cache.get_or_load("k", stale).await.unwrap();
        assert_eq!(status_of(&got), Some(Enabled), "answered");
        let fresh = cache
            .get_or_load("k", async { Ok::<_, ()>(principal(Disabled)) })
            .await
            .unwrap();
        assert_eq!(status_of(&fresh), Some(Disabled), "but not cached");
    }

    #[tokio::test]
    async fn flush_drops_everything() {
        use latchkey_core::identity::Status::*;
        let cache = ReplicaCache::new(Duration::from_secs(60), 100);
        for k in ["a", "b"] {
            cache
                .get_or_load(k, async { Ok::<_, ()>(principal(Enabled)) })
                .await
                .unwrap();
        }
        cache.flush();
        for k in ["a", "b"] {
            let e = cache
                .get_or_load(k, async { Ok::<_, ()>(principal(Disabled)) })
                .await
                .unwrap();
            assert_eq!(status_of(&e), Some(Disabled));
        }
    }
}
