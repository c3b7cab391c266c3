//! The alert webhook (`[alerts]`): refusals worth a person's attention,
//! delivered to a receiver the organisation runs (a SIEM, a chat bridge,
//! an incident tool) as well as counted in `/metrics`.
//!
//! Nothing here is on a decision's path: a refusal of a configured reason
//! is queued without waiting (dropped, and counted, when the queue is
//! full), gathered for `flush_secs` into groups (reason, gateway,
//! assignment, person, agent, name, with a count, so a person probing
//! hidden tools a hundred times is one line saying 100), and delivered by
//! a task of its own, retried with doubling back-off. Failed token renewals
//! since the last batch ride along.
//!
//! Each delivery is signed: `latchkey-signature: t=<unix seconds>,v1=<hex
//! HMAC-SHA256 of "<t>.<body>" under the configured key>`, so a receiver
//! can tell Latchkey's bodies from anyone's and refuse old ones replayed;
//! `latchkey-delivery` is the batch's id, the same on every retry, so a
//! receiver can drop a repeat. The key is read from the environment at
//! start and never logged.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use latchkey_core::audit::DecisionEvent;
use latchkey_core::config::AlertsConfig;
use latchkey_core::metrics::{Metrics, RefreshCounter};
use serde::Serialize;
use tokio::sync::mpsc;

/// Refusals waiting to be gathered; more are dropped (counted).
const QUEUE: usize = 4096;
/// Distinct groups per batch; refusals beyond them are counted as dropped.
const MAX_GROUPS: usize = 500;
/// Batches waiting for delivery while an earlier one is retried.
const BATCHES: usize = 8;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why the webhook cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    #[error(
        "[alerts] secret_env names {0}, which is not set or empty; set it to the HMAC key the webhook receiver checks signatures with"
    )]
    NoSecret(String),
    #[error("[alerts]: cannot build the HTTP client: {0}")]
    Client(String),
}

/// One refusal, as much of its decision event as an alert carries.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct GroupKey {
    reason: &'static str,
    gateway: Option<String>,
    assignment: Option<String>,
    user: Option<String>,
    agent: Option<String>,
    name: Option<String>,
}

struct Refusal {
    key: GroupKey,
    time: String,
    request_id: String,
}

#[derive(Debug, Serialize, PartialEq)]
struct Group {
    reason: &'static str,
    gateway: Option<String>,
    assignment: Option<String>,
    user: Option<String>,
    agent: Option<String>,
    /// The tool, prompt or resource named.
    name: Option<String>,
    count: u64,
    first: String,
    last: String,
    /// The last refusal's request id, to find it in the audit trail.
    request_id: String,
}

#[derive(Debug, Serialize, PartialEq)]
struct FailedRenewal {
    server: String,
    result: &'static str,
    count: u64,
}

/// One delivery's body.
#[derive(Debug, Serialize)]
struct Batch {
    source: &'static str,
    replica: String,
    sent_at: String,
    refusals: Vec<Group>,
    failed_renewals: Vec<FailedRenewal>,
    /// Refusals left out of this batch (queue full, or past its bound).
    dropped: u64,
}

/// Hands refusals to the webhook (cheap to clone).
#[derive(Clone)]
pub struct AlertSender {
    queue: mpsc::Sender<Refusal>,
    reasons: Arc<HashSet<String>>,
    metrics: Arc<Metrics>,
}

impl AlertSender {
    /// Reads the key and starts gathering and delivering.
    pub fn start(
        config: &AlertsConfig,
        replica: String,
        metrics: Arc<Metrics>,
    ) -> Result<AlertSender, AlertsError> {
        let key = std::env::var(&config.secret_env)
            .ok()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| AlertsError::NoSecret(config.secret_env.clone()))?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| AlertsError::Client(e.to_string()))?;
        let (queue, received) = mpsc::channel(QUEUE);
        let (batches, to_deliver) = mpsc::channel(BATCHES);
        let delivery = Delivery {
            client,
            url: config.webhook_url.to_string(),
            key: key.into_bytes(),
            attempts: config.max_attempts,
            metrics: metrics.clone(),
        };
        tokio::spawn(gather(
            received,
            Duration::from_secs(config.flush_secs),
            replica,
            metrics.refreshes(),
            batches,
            metrics.clone(),
        ));
        tokio::spawn(delivery.run(to_deliver));
        Ok(AlertSender {
            queue,
            reasons: Arc::new(config.reasons.iter().cloned().collect()),
            metrics,
        })
    }

    /// Queues `event` if its reason is one alerts are sent for; never waits.
    pub fn observe(&self, event: &DecisionEvent) {
        if event.decision != "deny" || !self.reasons.contains(event.reason) {
            return;
        }
        let refusal = Refusal {
            key: GroupKey {
                reason: event.reason,
                gateway: event.gateway.clone(),
                assignment: event.assignment.clone(),
                user: event.user.clone(),
                agent: event.agent.clone(),
                name: event.name.clone(),
            },
            time: event.time.clone(),
            request_id: event.request_id.clone(),
        };
        if self.queue.try_send(refusal).is_err() {
            self.metrics.count_alert_delivery("dropped");
        }
    }
}

/// Gathers refusals for `every`, then hands the batch to delivery.
async fn gather(
    mut received: mpsc::Receiver<Refusal>,
    every: Duration,
    replica: String,
    refreshes: RefreshCounter,
    batches: mpsc::Sender<Batch>,
    metrics: Arc<Metrics>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut groups: BTreeMap<GroupKey, Group> = BTreeMap::new();
    let mut dropped = 0u64;
    loop {
        tokio::select! {
            refusal = received.recv() => {
                let Some(r) = refusal else { return };
                add(&mut groups, &mut dropped, r);
            }
            _ = tick.tick() => {
                let failed_renewals: Vec<FailedRenewal> = refreshes
                    .take_failures()
                    .into_iter()
                    .map(|(server, result, count)| FailedRenewal { server, result, count })
                    .collect();
                if groups.is_empty() && failed_renewals.is_empty() && dropped == 0 {
                    continue;
                }
                let batch = Batch {
                    source: "latchkey",
                    replica: replica.clone(),
                    sent_at: latchkey_core::identity::now_rfc3339(),
                    refusals: std::mem::take(&mut groups).into_values().collect(),
                    failed_renewals,
                    dropped: std::mem::take(&mut dropped),
                };
                if batches.try_send(batch).is_err() {
                    metrics.count_alert_delivery("dropped");
                    tracing::warn!("alert batch dropped: earlier batches are still being delivered");
                }
            }
        }
    }
}

fn add(groups: &mut BTreeMap<GroupKey, Group>, dropped: &mut u64, r: Refusal) {
    if let Some(g) = groups.get_mut(&r.key) {
        g.count += 1;
        g.last = r.time;
        g.request_id = r.request_id;
        return;
    }
    if groups.len() >= MAX_GROUPS {
        *dropped += 1;
        return;
    }
    let k = r.key.clone();
    groups.insert(
        r.key,
        Group {
            reason: k.reason,
            gateway: k.gateway,
            assignment: k.assignment,
            user: k.user,
            agent: k.agent,
            name: k.name,
            count: 1,
            first: r.time.clone(),
            last: r.time,
            request_id: r.request_id,
        },
    );
}

struct Delivery {
    client: reqwest::Client,
    url: String,
    key: Vec<u8>,
    attempts: u32,
    metrics: Arc<Metrics>,
}

/// `latchkey-signature`'s value for `body` sent at `t` (unix seconds).
pub fn signature(key: &[u8], t: i64, body: &str) -> String {
    let signed = format!("{t}.{body}");
    format!(
        "t={t},v1={}",
        latchkey_core::hex::hmac_sha256(key, signed.as_bytes())
    )
}

impl Delivery {
    async fn run(self, mut batches: mpsc::Receiver<Batch>) {
        while let Some(batch) = batches.recv().await {
            let body = serde_json::to_string(&batch).unwrap_or_default();
            let id = latchkey_core::hex::random(12);
            let result = if self.deliver(&id, &body).await {
                "delivered"
            } else {
                "failed"
            };
            self.metrics.count_alert_delivery(result);
        }
    }

    /// Tries up to `attempts` times; true once the receiver took it (2xx).
    /// A refusal that retrying cannot mend (4xx but 408 and 429) ends it.
    async fn deliver(&self, id: &str, body: &str) -> bool {
        let mut backoff = Duration::from_millis(500);
        for attempt in 1..=self.attempts {
            let sent = self
                .client
                .post(&self.url)
                .header("content-type", "application/json")
                .header("latchkey-delivery", id)
                .header(
                    "latchkey-signature",
                    signature(&self.key, latchkey_core::unix_now(), body),
                )
                .body(body.to_string())
                .send()
                .await;
            let retry = match sent {
                Ok(r) if r.status().is_success() => return true,
                Ok(r) => {
                    let status = r.status();
                    let retry = status.is_server_error()
                        || status == reqwest::StatusCode::REQUEST_TIMEOUT
                        || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                    tracing::warn!(delivery = id, attempt, %status, "the alert webhook refused a batch");
                    retry
                }
                Err(e) => {
                    tracing::warn!(delivery = id, attempt, error = %e, "the alert webhook did not answer");
                    true
                }
            };
            if !retry || attempt == self.attempts {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        tracing::error!(delivery = id, "an alert batch was given up");
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(user: &str, name: &str, time: &str) -> Refusal {
        Refusal {
            key: GroupKey {
                reason: "hidden_by_policy",
                gateway: Some("g".into()),
                assignment: Some("a".into()),
                user: Some(user.into()),
                agent: None,
                name: Some(name.into()),
            },
            time: time.into(),
            request_id: format!("{user}-{time}"),
        }
    }

    #[test]
    fn refusals_of_one_person_on_one_name_are_one_group_with_a_count() {
        let (mut groups, mut dropped) = (BTreeMap::new(), 0);
        for t in ["t1", "t2", "t3"] {
            add(
                &mut groups,
                &mut dropped,
                refusal("mallory", "admin_tool", t),
            );
        }
        add(
            &mut groups,
            &mut dropped,
            refusal("alice", "admin_tool", "t4"),
        );
        let mallory = groups
            .values()
            .find(|g| g.user.as_deref() == Some("mallory"))
            .unwrap();
        assert_eq!(
            (mallory.count, mallory.first.as_str(), mallory.last.as_str()),
            (3, "t1", "t3")
        );
        assert_eq!(mallory.request_id, "mallory-t3");
        assert_eq!((groups.len(), dropped), (2, 0));
    }

    #[test]
    fn a_batch_holds_a_bounded_number_of_groups_and_counts_the_rest() {
        let (mut groups, mut dropped) = (BTreeMap::new(), 0);
        for i in 0..MAX_GROUPS + 7 {
            add(
                &mut groups,
                &mut dropped,
                refusal("mallory", &format!("tool_{i}"), "t"),
            );
        }
        assert_eq!((groups.len(), dropped), (MAX_GROUPS, 7));
        // A group already there still counts.
        add(
            &mut groups,
            &mut dropped,
            refusal("mallory", "tool_0", "t9"),
        );
        assert_eq!(dropped, 7);
    }

    #[test]
    fn the_signature_is_an_hmac_of_the_time_and_the_body() {
        let s = signature(b"k", 1_700_000_000, "{}");
        assert_eq!(
            s,
            format!(
                "t=1700000000,v1={}",
                latchkey_core::hex::hmac_sha256(b"k", b"1700000000.{}")
            )
        );
        assert_ne!(s, signature(b"other", 1_700_000_000, "{}"));
        assert_ne!(s, signature(b"k", 1_700_000_001, "{}"));
    }
}
