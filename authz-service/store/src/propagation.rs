//! Settling a change: a person who disables an identity, connects one on the
//! connect page or rotates a key is told "done" only once every live replica
//! has dropped what it cached of the old state, so their next request sees
//! the change whichever replica answers it.
//!
//! Invalidations travel on a Redis channel and arrive a little later than
//! the change itself (on a Cluster, over the cluster bus). After a change the
//! writer publishes a marker on the same channel; each replica's listener
//! applies messages in order, so when it reaches the marker it has applied
//! every change before it, and it confirms in Redis. The writer waits for
//! the confirmations of the replicas in the registry, for a bounded time: a
//! replica that stopped without withdrawing, or lost its subscription, does
//! not hold the change up forever, and is named instead.

use std::time::Duration;

use tokio::time::Instant;

use crate::store::{Store, StoreError};
use latchkey_core::metrics::Metrics;

/// How long a change waits for the replicas' confirmations: under Envoy's
/// authorization timeout, so a connect page or CLI answer is not held up
/// for longer than a request could be.
pub const SETTLE_WITHIN: Duration = Duration::from_secs(2);

/// What became of a settle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Every live replica answers with the change.
    Everywhere,
    /// These live replicas had not confirmed by the deadline.
    Unconfirmed(Vec<String>),
    /// Redis did not answer the settle itself (the change was made).
    Unknown(String),
}

impl Settled {
    /// The `result` label of `latchkey_changes_settled_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Settled::Everywhere => "everywhere",
            Settled::Unconfirmed(_) => "unconfirmed",
            Settled::Unknown(_) => "unknown",
        }
    }

    /// What to tell the person who made the change, when it may not be seen
    /// everywhere yet.
    pub fn warning(&self) -> Option<String> {
        match self {
            Settled::Everywhere => None,
            Settled::Unconfirmed(ids) => Some(format!(
                "the change is made, but replica(s) {} did not confirm it within {} s; until they do they may answer from their cache for at most [vault] cache_ttl_secs (check that they are running and subscribed: /readyz)",
                ids.join(", "),
                SETTLE_WITHIN.as_secs()
            )),
            Settled::Unknown(why) => Some(format!(
                "the change is made, but whether every replica saw it could not be checked ({why}); replicas may answer from their cache for at most [vault] cache_ttl_secs"
            )),
        }
    }
}

/// Waits, for at most `within`, until every live replica has applied every
/// change published before this call.
pub async fn settle(store: &Store, within: Duration) -> Result<Settled, StoreError> {
    let deadline = Instant::now() + within;
    let live: Vec<String> = store.replicas().await?.into_iter().map(|r| r.id).collect();
    if live.is_empty() {
        return Ok(Settled::Everywhere);
    }
    let token = latchkey_core::hex::random(16);
    store.publish_settle_marker(&token).await?;
    let mut pause = Duration::from_millis(2);
    loop {
        let confirmed = store.settled_replicas(&token).await?;
        let unconfirmed: Vec<String> = live
            .iter()
            .filter(|id| !confirmed.contains(*id))
            .cloned()
            .collect();
        if unconfirmed.is_empty() {
            return Ok(Settled::Everywhere);
        }
        if Instant::now() >= deadline {
            return Ok(Settled::Unconfirmed(unconfirmed));
        }
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// [`settle`] within [`SETTLE_WITHIN`] for a change already made: a failure
/// to check becomes [`Settled::Unknown`], the outcome is counted, and
/// anything short of everywhere is logged.
pub async fn after_change(store: &Store, metrics: &Metrics) -> Settled {
    let settled = settle(store, SETTLE_WITHIN)
        .await
        .unwrap_or_else(|e| Settled::Unknown(e.to_string()));
    metrics.count_settle(settled.label());
    if let Some(warning) = settled.warning() {
        tracing::warn!("{warning}");
    }
    settled
}

/// The listener's side: `payload` is a message from the invalidation
/// channel. When it is a settle marker, this replica confirms it (every
/// message before it has been applied by then); returns whether it was one.
pub fn confirm_if_marker(store: &Store, replica: &str, payload: &str) -> bool {
    if !payload.starts_with(&store.settle_key_prefix()) {
        return false;
    }
    let store = store.clone();
    let replica = replica.to_string();
    let key = payload.to_string();
    // Off the listener's loop: the next invalidation need not wait for this write.
    tokio::spawn(async move {
        if let Err(e) = store.confirm_settled(&key, &replica).await {
            tracing::warn!(error = %e, "cannot confirm a settled change");
        }
    });
    true
}
