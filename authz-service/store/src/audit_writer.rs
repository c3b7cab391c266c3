//! Decision events into the audit stream without ever holding up a
//! decision, and without losing or doubling one.
//!
//! `record` only puts the event on a bounded in-memory queue. One task
//! drains it in batches into Redis with a script that applies each
//! numbered batch at most once, so a batch retried after a timeout (whose
//! first attempt may still run once Redis wakes up) is not written twice.
//! While Redis is unavailable the batch waits and is retried with backoff;
//! events keep queueing behind it. Only a full queue loses events: each
//! one is counted (`dropped`) and logged as an error.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::store::Store;
use latchkey_core::audit::DecisionEvent;

/// Events sent to Redis in one script call, at most.
const BATCH: usize = 256;
/// How long the first event of a batch waits for others to join it: one
/// Redis round trip then carries every event of those milliseconds, rather
/// than one per request (an event reaches the stream this much later).
const LINGER: Duration = Duration::from_millis(5);

pub struct AuditWriter {
    queue: mpsc::Sender<String>,
    /// When identities, people and agents were last let through, taken
    /// from the same events (`last_used`).
    last_used: Arc<crate::last_used::LastUsed>,
    dropped: AtomicU64,
    written: Arc<AtomicU64>,
}

impl AuditWriter {
    /// Starts the writer for replica `writer_id` with room for `capacity`
    /// events while Redis is slow or away.
    pub fn start(store: Store, writer_id: String, capacity: usize) -> Arc<AuditWriter> {
        let (queue, events) = mpsc::channel(capacity.max(1));
        let written = Arc::new(AtomicU64::new(0));
        let last_used = crate::last_used::LastUsed::start(store.clone());
        tokio::spawn(drain(store, writer_id, events, written.clone()));
        Arc::new(AuditWriter {
            queue,
            last_used,
            dropped: AtomicU64::new(0),
            written,
        })
    }

    /// Logs the event and queues it for the stream; never waits. The
    /// queued copy is at most [`latchkey_core::audit::MAX_EVENT_BYTES`], so the queue holds at
    /// most its capacity times that.
    pub fn record(&self, event: &DecisionEvent) {
        let json = event.to_stream_json();
        log(event);
        self.last_used.observe(event);
        crate::otlp::export(&json);
        if self.queue.try_send(json).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // One line per thousand, not one per event: the log must not
            // become the next bottleneck.
            if n % 1000 == 1 {
                tracing::error!(
                    dropped = n,
                    "audit queue full: decision events are being dropped from the Redis stream (they are still in this log); check Redis"
                );
            }
        }
    }

    /// Events waiting for Redis.
    pub fn backlog(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Events lost because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Events written to the stream by this replica.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

/// The decision as one structured log line, a field per event field, so
/// a log shipper needs no second parse.
fn log(e: &DecisionEvent) {
    let delegation = (!e.delegation.is_empty()).then(|| e.delegation.join(" > "));
    tracing::info!(
        target: "latchkey::decision",
        decision = e.decision,
        reason = e.reason,
        status = e.status,
        request_id = %e.request_id,
        gateway = e.gateway.as_deref(),
        assignment = e.assignment.as_deref(),
        server = e.server.as_deref(),
        scheme = e.scheme,
        method = %e.method,
        name = e.name.as_deref(),
        user = e.user.as_deref(),
        agent = e.agent.as_deref(),
        agent_source = e.agent_source,
        delegation = delegation.as_deref(),
        identity = e.identity.as_deref(),
        identity_version = e.identity_version,
        latency_us = e.latency_us,
        session_id = e.session_id.as_deref(),
    );
}

async fn drain(
    store: Store,
    writer_id: String,
    mut events: mpsc::Receiver<String>,
    written: Arc<AtomicU64>,
) {
    // Batch numbers grow across restarts (time-based start), so a new
    // process never reuses a number an old one applied.
    let mut number = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64);
    let mut batch: Vec<String> = Vec::with_capacity(BATCH);
    loop {
        if batch.is_empty() {
            match events.recv().await {
                Some(e) => batch.push(e),
                None => return,
            }
            tokio::time::sleep(LINGER).await;
            while batch.len() < BATCH {
                match events.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            number += 1;
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            match store.append_batch_once(&writer_id, number, &batch).await {
                Ok(_) => {
                    written.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    batch.clear();
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, pending = batch.len(), "audit stream unavailable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}
