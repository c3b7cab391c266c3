//! When each identity, person and agent was last let through, for
//! `latchkey access review`: taken from the decisions this replica makes
//! (the same events the audit trail gets), kept in memory, and written to
//! one Redis hash every [`FLUSH_EVERY`] by a task of its own, so the
//! request path gains no Redis round trip. A field keeps the latest time
//! any replica wrote (a script compares), in Unix seconds.
//!
//! Bounded: at most [`MAX_PENDING`] names wait between two flushes (more
//! are seen again at the next request); the hash holds one field per
//! identity, person and agent that was ever let through, which the
//! identity provider and the vault bound.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use latchkey_core::audit::DecisionEvent;
use latchkey_core::review::{LastUsedTimes, Used};

use crate::store::{Store, StoreError};

pub const FLUSH_EVERY: Duration = Duration::from_secs(5);
const MAX_PENDING: usize = 10_000;

/// KEYS: the hash. ARGV: field, time, field, time, ... Keeps the larger time.
const KEEP_LATEST: &str = r#"
for i = 1, #ARGV, 2 do
  local old = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) > old then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
"#;

static KEEP_LATEST_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(KEEP_LATEST));

/// Last-used times seen since the last flush.
#[derive(Default)]
pub struct LastUsed {
    pending: Mutex<HashMap<String, i64>>,
}

impl LastUsed {
    /// Starts flushing to `store`.
    pub fn start(store: Store) -> Arc<LastUsed> {
        let last_used = Arc::new(LastUsed::default());
        tokio::spawn(flush(store, last_used.clone()));
        last_used
    }

    /// Notes an allowed decision's identity, person and agent; never waits
    /// for anything but this replica's own lock.
    pub fn observe(&self, e: &DecisionEvent) {
        if e.decision != "allow" {
            return;
        }
        let now = latchkey_core::unix_now();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (kind, name) in [
            (Used::Identity, e.identity.as_deref()),
            (Used::User, e.user.as_deref()),
            (Used::Agent, e.agent.as_deref()),
        ] {
            let Some(name) = name else { continue };
            let field = kind.field(name);
            if pending.len() < MAX_PENDING || pending.contains_key(&field) {
                pending.insert(field, now);
            }
        }
    }

    fn take(&self) -> HashMap<String, i64> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

async fn flush(store: Store, last_used: Arc<LastUsed>) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let seen = last_used.take();
        if seen.is_empty() {
            continue;
        }
        if let Err(e) = store.keep_latest_use(&seen).await {
            // Lost for this round only: the next request is seen again.
            tracing::warn!(error = %e, names = seen.len(), "cannot write last-used times");
        }
    }
}

impl Store {
    fn last_used_key(&self) -> String {
        format!("{}:last_used", self.prefix)
    }

    async fn keep_latest_use(&self, seen: &HashMap<String, i64>) -> Result<(), StoreError> {
        let mut conn = self.redis.clone();
        let mut invocation = KEEP_LATEST_SCRIPT.prepare_invoke();
        invocation.key(self.last_used_key());
        for (field, at) in seen {
            invocation.arg(field).arg(at);
        }
        let _: i64 = invocation.invoke_async(&mut conn).await?;
        Ok(())
    }

    /// When `name` (an identity, person or agent) was last let through, in
    /// Unix seconds, as far as any replica wrote it.
    pub async fn last_used(&self) -> Result<LastUsedTimes, StoreError> {
        let mut conn = self.redis.clone();
        let all: HashMap<String, i64> = redis::cmd("HGETALL")
            .arg(self.last_used_key())
            .query_async(&mut conn)
            .await?;
        Ok(LastUsedTimes(all))
    }
}
