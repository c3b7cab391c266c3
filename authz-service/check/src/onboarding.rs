//! The request path's side of agent onboarding: a call from an
//! unprovisioned agent to a gateway with `unknown_agents = "request"` is
//! refused at once, and its sighting is handed to a background task that
//! records it in Redis (`latchkey_store::agent_requests`). The refusal
//! never waits for Redis, and an agent that keeps calling costs at most one
//! write per agent per [`FLUSH_EVERY`] on each replica: sightings are
//! coalesced in memory first. When the queue is full (Redis slow or gone)
//! sightings are dropped: the calls are refused all the same, and the
//! next sighting records the request. Ids and people longer than
//! `MAX_AGENT_ID_LEN` are not stored.

use std::collections::HashMap;
use std::time::Duration;

use latchkey_core::onboarding::MAX_AGENT_ID_LEN;
use latchkey_store::agent_requests::{Sighted, Sighting};
use latchkey_store::store::Store;
use tokio::sync::mpsc;

/// How long sightings are gathered before they are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Sightings waiting to be gathered; more are dropped.
const QUEUE: usize = 1024;
/// Distinct (agent, gateway, person) sightings gathered per flush; more
/// wait for the next one.
const MAX_GATHERED: usize = 256;

/// Hands sightings to the task that records them (cheap to clone).
#[derive(Clone)]
pub struct SightingRecorder {
    queue: mpsc::Sender<Sighting>,
}

impl SightingRecorder {
    /// Starts the task writing to `store`.
    pub fn start(store: Store) -> SightingRecorder {
        let (queue, received) = mpsc::channel(QUEUE);
        tokio::spawn(record(store, received));
        SightingRecorder { queue }
    }

    /// Queues one refused call; never waits.
    pub fn sighted(&self, mut sighting: Sighting) {
        if sighting.agent.len() > MAX_AGENT_ID_LEN {
            return;
        }
        // A subject no person's id is this long: counted, not named.
        if sighting
            .user
            .as_ref()
            .is_some_and(|u| u.len() > MAX_AGENT_ID_LEN)
        {
            sighting.user = None;
        }
        if self.queue.try_send(sighting).is_err() {
            tracing::debug!("agent sighting dropped: the onboarding queue is full");
        }
    }
}

async fn record(store: Store, mut received: mpsc::Receiver<Sighting>) {
    while let Some(first) = received.recv().await {
        let mut gathered: HashMap<Sighting, u64> = HashMap::new();
        gathered.insert(first, 1);
        let until = tokio::time::Instant::now() + FLUSH_EVERY;
        while gathered.len() < MAX_GATHERED {
            match tokio::time::timeout_at(until, received.recv()).await {
                Ok(Some(s)) => *gathered.entry(s).or_default() += 1,
                Ok(None) | Err(_) => break,
            }
        }
        for (sighting, calls) in gathered {
            match store.record_sighting(&sighting, calls).await {
                Ok(Sighted::Created) => tracing::info!(
                    agent = %latchkey_core::audit::bound(&sighting.agent),
                    gateway = %sighting.gateway,
                    "an unprovisioned agent asked to be onboarded; `latchkey agent requests` lists it"
                ),
                Ok(Sighted::Counted) => {}
                Ok(Sighted::Full) => tracing::warn!(
                    max = latchkey_core::onboarding::MAX_REQUESTS,
                    "onboarding requests are full: a new agent's request was not recorded; reject or approve some"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot record an agent's onboarding request"),
            }
        }
    }
}
