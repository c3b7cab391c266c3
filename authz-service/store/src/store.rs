//! Redis: identity records (sealed), users, agents, connections, their
//! indexes, the active key id, the replica registry, the invalidation
//! channel and the audit stream. Every change is one atomic compare-and-set
//! that also appends its audit event and publishes the changed key, so a
//! change is either entirely there (record, index, event, notification) or
//! not at all.
//!
//! The request path reads through `cache`; only misses reach this module.

use std::time::Duration;

use redis::AsyncCommands;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::redis_backend::{Backend, Topology};
use latchkey_core::audit::LifecycleEvent;
use latchkey_core::config::Config;
use latchkey_core::identity::PrincipalKind;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the credential store (Redis) is unavailable: {0}")]
    Unavailable(String),
    #[error("record '{key}' in Redis is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("'{0}' kept changing while this change was applied; try again")]
    Contended(String),
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// Compare-and-set of one record plus its index entries, audit event and
/// invalidation message, atomically.
///
/// KEYS[1] record, KEYS[2] audit stream, KEYS[3..] index sets.
/// ARGV[1] expected current value ("" = must not exist), ARGV[2] new value
/// ("" = delete), ARGV[3] audit event ("" = none), ARGV[4] stream max length,
/// ARGV[5] invalidation channel ("" = none), ARGV[6] index member.
const CHANGE_SCRIPT: &str = r#"
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
  if current then return 0 end
elseif current ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
  for i = 3, #KEYS do redis.call('SREM', KEYS[i], ARGV[6]) end
else
  redis.call('SET', KEYS[1], ARGV[2])
  for i = 3, #KEYS do redis.call('SADD', KEYS[i], ARGV[6]) end
end
if ARGV[3] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'event', ARGV[3])
end
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[5], KEYS[1]) end
return 1
"#;

/// Appends a batch of events once, however often it is sent: a batch whose
/// number is not above the last one applied for this writer is skipped, so
/// a retry after a timeout (the first attempt may still run) adds nothing.
///
/// Events older than the configured age are trimmed at the same time.
///
/// KEYS[1] audit stream, KEYS[2] hash of each writer's last batch number.
/// ARGV[1] writer, ARGV[2] batch number, ARGV[3] stream max length,
/// ARGV[4] oldest entry id to keep ('0': no age bound), ARGV[5..] events.
const APPEND_ONCE_SCRIPT: &str = r#"
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if tonumber(ARGV[2]) <= last then return 0 end
for i = 5, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'event', ARGV[i])
end
if ARGV[4] ~= '0' then redis.call('XTRIM', KEYS[1], 'MINID', ARGV[4]) end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"#;

/// How long a settle marker's confirmations are kept (far beyond any wait).
const SETTLE_RECORD_SECS: i64 = 60;

/// How many times a change is retried when another writer got there first.
const CHANGE_ATTEMPTS: usize = 8;

/// The outcome of a change function: the new value (None deletes) and the
/// event that describes it.
pub struct Mutation<T> {
    pub new: Option<T>,
    pub event: LifecycleEvent,
}

/// One `latchkey serve` process as it announces itself to the others.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReplicaInfo {
    pub id: String,
    pub pid: u32,
    /// Ids (never material) of the master keys it holds.
    pub key_ids: Vec<String>,
    pub started_at: String,
}

#[derive(Clone)]
pub struct Store {
    pub(crate) redis: Backend,
    pub(crate) prefix: String,
    pub(crate) audit_max_len: usize,
    change: redis::Script,
    append_once: redis::Script,
    /// Events older than this are trimmed from the stream (with each batch).
    audit_max_age: Option<Duration>,
}

impl Store {
    /// The store the config's `[redis]` names. `extra_wait` lengthens the
    /// bound on each reply, for reads that block on purpose (`XREAD BLOCK`).
    pub async fn open(config: &Config, extra_wait: Duration) -> Result<Self, StoreError> {
        Self::connect(
            &Topology::from_config(&config.redis),
            &config.redis.key_prefix,
            Duration::from_millis(config.redis.timeout_ms) + extra_wait,
            config.audit.stream_max_len,
        )
        .await
        .map(|s| s.with_audit_max_age(config.audit.stream_max_age_secs.map(Duration::from_secs)))
    }

    /// Bounds the audit stream by age as well as by length.
    pub fn with_audit_max_age(mut self, age: Option<Duration>) -> Self {
        self.audit_max_age = age;
        self
    }

    pub async fn connect(
        topology: &Topology,
        prefix: &str,
        timeout: Duration,
        audit_max_len: usize,
    ) -> Result<Self, StoreError> {
        let redis = Backend::connect(topology, timeout).await?;
        Ok(Self {
            redis,
            prefix: topology.key_prefix(prefix),
            audit_max_len,
            change: redis::Script::new(CHANGE_SCRIPT),
            append_once: redis::Script::new(APPEND_ONCE_SCRIPT),
            audit_max_age: None,
        })
    }

    /// Where to open the invalidation subscription (a dedicated connection);
    /// `attempt` spreads reconnections over a Cluster's nodes.
    pub async fn pubsub_client(&self, attempt: usize) -> Result<redis::Client, StoreError> {
        Ok(self.redis.pubsub_client(attempt).await?)
    }

    // --- key names -------------------------------------------------------

    pub fn identity_key(&self, id: &str) -> String {
        format!("{}:identity:{id}", self.prefix)
    }
    pub fn identities_index(&self) -> String {
        format!("{}:identities", self.prefix)
    }
    pub fn owner_index(&self, owner: &str) -> String {
        format!("{}:identities:owner:{owner}", self.prefix)
    }
    pub fn principal_key(&self, kind: PrincipalKind, id: &str) -> String {
        format!("{}:{}:{id}", self.prefix, kind.as_str())
    }
    /// Every user (or agent) with a status record, for the access review.
    pub fn principals_index(&self, kind: PrincipalKind) -> String {
        format!("{}:{}s", self.prefix, kind.as_str())
    }
    /// Gateway names cannot contain `:`, so the user part may.
    pub fn connection_key(&self, gateway: &str, user: &str) -> String {
        format!("{}:connection:{gateway}:{user}", self.prefix)
    }
    pub fn connections_index(&self) -> String {
        format!("{}:connections", self.prefix)
    }
    pub fn user_connections_index(&self, user: &str) -> String {
        format!("{}:connections:user:{user}", self.prefix)
    }
    pub fn active_key_key(&self) -> String {
        format!("{}:vault:active_key", self.prefix)
    }
    pub fn audit_stream(&self) -> String {
        format!("{}:audit", self.prefix)
    }
    pub fn channel(&self) -> String {
        format!("{}:invalidate", self.prefix)
    }
    /// A consent request handed to a client (its id is in the connect link).
    pub fn consent_key(&self, id: &str) -> String {
        format!("{}:consent:{id}", self.prefix)
    }
    /// A signed-in connect page session (its id is the cookie).
    pub fn connect_session_key(&self, id: &str) -> String {
        format!("{}:connect:session:{id}", self.prefix)
    }
    /// The refresh lock of one identity.
    pub fn refresh_lock_key(&self, identity: &str) -> String {
        format!("{}:lock:refresh:{identity}", self.prefix)
    }
    /// What a client declared it can do at its last `initialize` (MCP
    /// before 2026-07-28 declares capabilities once per session).
    pub fn client_capabilities_key(&self, gateway: &str, user: &str, client: &str) -> String {
        format!("{}:client_caps:{gateway}:{client}:{user}", self.prefix)
    }
    fn replicas_key(&self) -> String {
        format!("{}:replicas", self.prefix)
    }
    /// Where the replicas confirm having applied the changes published
    /// before settle marker `token`; also the marker's message.
    pub fn settle_key(&self, token: &str) -> String {
        format!("{}{token}", self.settle_key_prefix())
    }
    pub fn settle_key_prefix(&self) -> String {
        format!("{}:settle:", self.prefix)
    }

    // --- reads -----------------------------------------------------------

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.redis.clone();
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok(())
    }

    pub async fn get_raw(&self, key: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.redis.clone();
        match conn.get(key).await {
            Err(e) if reconnectable(&e) => {
                // The first command after Redis came back only triggers the
                // reconnection; a read is safe to send again.
                tokio::time::sleep(RECONNECT_PAUSE).await;
                Ok(conn.get(key).await?)
            }
            other => Ok(other?),
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        match self.get_raw(key).await? {
            Some(raw) => parse(key, &raw).map(Some),
            None => Ok(None),
        }
    }

    /// Many records at once (missing ones are skipped), in chunks.
    pub async fn get_many<T: DeserializeOwned>(
        &self,
        keys: &[String],
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        let mut conn = self.redis.clone();
        for chunk in keys.chunks(500) {
            let raws: Vec<Option<String>> =
                redis::cmd("MGET").arg(chunk).query_async(&mut conn).await?;
            for (key, raw) in chunk.iter().zip(raws) {
                if let Some(raw) = raw {
                    out.push(parse(key, &raw)?);
                }
            }
        }
        Ok(out)
    }

    pub async fn members(&self, index: &str) -> Result<Vec<String>, StoreError> {
        let mut conn = self.redis.clone();
        let mut members: Vec<String> = conn.smembers(index).await?;
        members.sort();
        Ok(members)
    }

    /// The master key id new ciphertexts are sealed with, when one was set
    /// by a rotation (otherwise the configured default applies).
    pub async fn active_key(&self) -> Result<Option<String>, StoreError> {
        self.get_raw(&self.active_key_key()).await
    }

    // --- short-lived records (connect sessions, flows, consent) -----------

    /// Replaces the value of `key` if it still exists, keeping its expiry;
    /// `Ok(false)` when it is gone.
    pub async fn replace_keep_ttl<T: Serialize>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(value).map_err(|e| StoreError::Corrupt {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        let mut conn = self.redis.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(json)
            .arg("XX")
            .arg("KEEPTTL")
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    /// Reads and deletes `key` in one step (GETDEL), so a record can be
    /// used once only, however many requests race for it.
    pub async fn take<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let mut conn = self.redis.clone();
        let raw: Option<String> = redis::cmd("GETDEL").arg(key).query_async(&mut conn).await?;
        match raw {
            Some(raw) => parse(key, &raw).map(Some),
            None => Ok(None),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let mut conn = self.redis.clone();
        conn.del::<_, ()>(key).await?;
        Ok(())
    }

    // --- the audit stream, read back --------------------------------------

    /// Audit entries from stream id `start` (inclusive; `-` for the oldest)
    /// on, at most `count`, oldest first.
    pub async fn audit_range(
        &self,
        start: &str,
        count: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut conn = self.redis.clone();
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.audit_stream())
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await?;
        Ok(reply.ids.into_iter().map(AuditEntry::from).collect())
    }

    /// The id of the newest audit entry, `0-0` while the stream is empty.
    pub async fn audit_last_id(&self) -> Result<String, StoreError> {
        let mut conn = self.redis.clone();
        let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(self.audit_stream())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .next()
            .map_or_else(|| "0-0".to_string(), |e| e.id))
    }

    /// Audit entries after stream id `after`, at most `count`, waiting up
    /// to `block` for the first one (none when nothing came). The reply
    /// bound given to `open` must exceed `block`.
    pub async fn audit_read_after(
        &self,
        after: &str,
        block: Duration,
        count: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut conn = self.redis.clone();
        let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(self.audit_stream())
            .arg(after)
            .query_async(&mut conn)
            .await?;
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(AuditEntry::from)
            .collect())
    }

    // --- changes ---------------------------------------------------------

    /// Reads `key`, lets `change` decide the new value and its event, and
    /// writes both atomically, retrying if someone else changed the record
    /// in between. `indexes` are sets that hold `member` while the record
    /// exists. Returns the value written (None when deleted).
    pub async fn mutate<T, E>(
        &self,
        key: &str,
        indexes: &[String],
        member: &str,
        mut change: impl FnMut(Option<T>) -> Result<Mutation<T>, E>,
    ) -> Result<Option<T>, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<StoreError>,
    {
        for _ in 0..CHANGE_ATTEMPTS {
            let raw = self.get_raw(key).await?;
            let current = match &raw {
                Some(r) => Some(parse::<T>(key, r)?),
                None => None,
            };
            let Mutation { new, event } = change(current)?;
            let new_raw = match &new {
                Some(v) => serde_json::to_string(v).map_err(|e| StoreError::Corrupt {
                    key: key.to_string(),
                    reason: e.to_string(),
                })?,
                None => String::new(),
            };
            let event_json = event.to_json();
            let applied = self
                .apply(
                    key,
                    indexes,
                    raw.as_deref().unwrap_or(""),
                    &new_raw,
                    &event_json,
                    true,
                    member,
                )
                .await?;
            if applied {
                log_lifecycle(&event);
                return Ok(new);
            }
        }
        Err(StoreError::Contended(key.to_string()).into())
    }

    /// Replaces a record's value if it is still `expected`, with no event and
    /// no notification (re-encryption: the plaintext is unchanged).
    pub async fn replace_if_unchanged(
        &self,
        key: &str,
        expected: &str,
        new: &str,
    ) -> Result<bool, StoreError> {
        self.apply(key, &[], expected, new, "", false, "").await
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply(
        &self,
        key: &str,
        indexes: &[String],
        expected: &str,
        new: &str,
        event: &str,
        notify: bool,
        member: &str,
    ) -> Result<bool, StoreError> {
        let mut conn = self.redis.clone();
        let mut invocation = self.change.prepare_invoke();
        invocation.key(key).key(self.audit_stream());
        for index in indexes {
            invocation.key(index);
        }
        invocation
            .arg(expected)
            .arg(new)
            .arg(event)
            .arg(self.audit_max_len)
            .arg(if notify {
                self.channel()
            } else {
                String::new()
            })
            .arg(member);
        let applied: i64 = invocation.invoke_async(&mut conn).await?;
        Ok(applied == 1)
    }

    /// Sets the active key id, with its event, and tells every replica.
    /// A short-lived value (a consent request, what a client declared): no
    /// index, no lifecycle event; Redis forgets it after `ttl`.
    pub async fn put_expiring<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let raw = serde_json::to_string(value).unwrap_or_default();
        let mut conn = self.redis.clone();
        let _: () = conn.set_ex(key, raw, ttl.as_secs().max(1)).await?;
        Ok(())
    }

    pub async fn set_active_key(
        &self,
        key_id: &str,
        event: &LifecycleEvent,
    ) -> Result<(), StoreError> {
        let mut conn = self.redis.clone();
        redis::pipe()
            .atomic()
            .set(self.active_key_key(), key_id)
            .ignore()
            .cmd("XADD")
            .arg(self.audit_stream())
            .arg("MAXLEN")
            .arg("~")
            .arg(self.audit_max_len)
            .arg("*")
            .arg("event")
            .arg(event.to_json())
            .ignore()
            .publish(self.channel(), self.active_key_key())
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        log_lifecycle(event);
        Ok(())
    }

    /// Appends batch `batch` of `writer`'s events (JSON) to the audit
    /// stream exactly once; `Ok(false)` when it was already applied.
    pub async fn append_batch_once(
        &self,
        writer: &str,
        batch: u64,
        events: &[String],
    ) -> Result<bool, StoreError> {
        let mut conn = self.redis.clone();
        let mut invocation = self.append_once.prepare_invoke();
        invocation
            .key(self.audit_stream())
            .key(format!("{}:audit:batches", self.prefix))
            .arg(writer)
            .arg(batch)
            .arg(self.audit_max_len)
            .arg(self.oldest_kept_id());
        for e in events {
            invocation.arg(e);
        }
        let applied: i64 = invocation.invoke_async(&mut conn).await?;
        Ok(applied == 1)
    }

    /// The stream id (milliseconds) below which events are past the age
    /// bound; `"0"` when there is none.
    fn oldest_kept_id(&self) -> String {
        let Some(age) = self.audit_max_age else {
            return "0".into();
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        now.saturating_sub(age).as_millis().max(1).to_string()
    }

    /// Appends an event that is not tied to one record's change.
    pub async fn append_event(&self, event: &LifecycleEvent) -> Result<(), StoreError> {
        let mut conn = self.redis.clone();
        redis::cmd("XADD")
            .arg(self.audit_stream())
            .arg("MAXLEN")
            .arg("~")
            .arg(self.audit_max_len)
            .arg("*")
            .arg("event")
            .arg(event.to_json())
            .query_async::<String>(&mut conn)
            .await?;
        log_lifecycle(event);
        Ok(())
    }

    // --- replicas --------------------------------------------------------

    /// Announces this replica (and the key ids it holds); it counts as live
    /// for `ttl` after each announcement. A hash rather than expiring keys,
    /// so the same commands work on one server and on a Cluster.
    pub async fn announce(&self, info: &ReplicaInfo, ttl: Duration) -> Result<(), StoreError> {
        let mut conn = self.redis.clone();
        let entry = AnnouncedReplica {
            info: info.clone(),
            live_until: unix_now() + ttl.as_secs().max(1),
        };
        let json = serde_json::to_string(&entry).unwrap_or_default();
        conn.hset::<_, _, _, ()>(self.replicas_key(), &info.id, json)
            .await?;
        Ok(())
    }

    /// The replicas that announced themselves recently; stale entries are removed.
    pub async fn replicas(&self) -> Result<Vec<ReplicaInfo>, StoreError> {
        let mut conn = self.redis.clone();
        let all: std::collections::HashMap<String, String> =
            conn.hgetall(self.replicas_key()).await?;
        let now = unix_now();
        let mut live = Vec::new();
        for (id, json) in all {
            match serde_json::from_str::<AnnouncedReplica>(&json) {
                Ok(r) if r.live_until >= now => live.push(r.info),
                _ => {
                    conn.hdel::<_, _, ()>(self.replicas_key(), &id).await?;
                }
            }
        }
        live.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(live)
    }

    /// Removes this replica from the registry (a clean shutdown), so changes
    /// made after it stopped do not wait for its confirmation.
    pub async fn withdraw(&self, id: &str) -> Result<(), StoreError> {
        let mut conn = self.redis.clone();
        conn.hdel::<_, _, ()>(self.replicas_key(), id).await?;
        Ok(())
    }

    // --- settling changes --------------------------------------------------

    /// Publishes settle marker `token` on the invalidation channel. It is
    /// published by the node that holds Latchkey's slot, like every change,
    /// so each subscriber receives it after the changes published before it
    /// (on a Cluster, messages from one node reach a subscriber in order;
    /// from two nodes they need not).
    pub async fn publish_settle_marker(&self, token: &str) -> Result<(), StoreError> {
        let mut conn = self.redis.clone();
        let key = self.settle_key(token);
        redis::Script::new("redis.call('PUBLISH', ARGV[1], KEYS[1]) return 1")
            .key(&key)
            .arg(self.channel())
            .invoke_async::<i64>(&mut conn)
            .await?;
        Ok(())
    }

    /// Records that replica `id` applied everything published before the
    /// marker whose key is `settle_key`.
    pub async fn confirm_settled(&self, settle_key: &str, id: &str) -> Result<(), StoreError> {
        let mut conn = self.redis.clone();
        redis::pipe()
            .atomic()
            .sadd(settle_key, id)
            .ignore()
            .expire(settle_key, SETTLE_RECORD_SECS)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// The replicas that confirmed marker `token` so far.
    pub async fn settled_replicas(
        &self,
        token: &str,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut conn = self.redis.clone();
        Ok(conn.smembers(self.settle_key(token)).await?)
    }

    // --- locks -----------------------------------------------------------

    /// Takes the lock `key` for `ttl` with `token` as its value (`SET NX PX`):
    /// true when this caller holds it now. The lock frees itself after `ttl`
    /// if it is never released, so a holder that died holds nothing.
    pub async fn try_lock(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut conn = self.redis.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    /// Releases the lock `key` only if its value is still `token`: a holder
    /// whose lock expired and was taken by another cannot release that one.
    /// True when it was ours and is gone.
    pub async fn unlock(&self, key: &str, token: &str) -> Result<bool, StoreError> {
        let mut conn = self.redis.clone();
        let released: i64 = redis::Script::new(UNLOCK_SCRIPT)
            .key(key)
            .arg(token)
            .invoke_async(&mut conn)
            .await?;
        Ok(released == 1)
    }

    /// Whether anyone holds the lock `key` right now.
    pub async fn locked(&self, key: &str) -> Result<bool, StoreError> {
        let mut conn = self.redis.clone();
        Ok(conn.exists(key).await?)
    }
}

/// Deletes a lock only while it holds the caller's token.
///
/// KEYS[1] the lock, ARGV[1] the token its holder set.
const UNLOCK_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// One entry of the audit stream: its id (`<ms>-<seq>`) and the event
/// (JSON) in its `event` field, if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: String,
    pub event: Option<String>,
}

impl From<redis::streams::StreamId> for AuditEntry {
    fn from(entry: redis::streams::StreamId) -> Self {
        let event = entry.get::<String>("event");
        AuditEntry {
            id: entry.id,
            event,
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct AnnouncedReplica {
    info: ReplicaInfo,
    live_until: u64,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How long a read waits before its one retry after a dropped connection.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

/// Errors after which the command was not executed and the connection is
/// being re-established. Only reads are retried: a write's script may have
/// run before its reply was lost.
fn reconnectable(e: &redis::RedisError) -> bool {
    e.is_connection_refusal() || e.is_connection_dropped() || e.is_io_error()
}

pub(crate) fn parse<T: DeserializeOwned>(key: &str, raw: &str) -> Result<T, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// Echoes a lifecycle event, once it is in the stream, to the structured
/// log (target `latchkey::audit`) and to the OpenTelemetry collector, if
/// one is configured. The event type (`audit`) stays pure data; writing it
/// anywhere is this layer's job.
pub(crate) fn log_lifecycle(event: &LifecycleEvent) {
    let summary = |v: &Option<Value>| v.as_ref().map(Value::to_string);
    tracing::info!(
        target: "latchkey::audit",
        action = %event.action,
        actor = %event.actor,
        target_kind = event.target_kind,
        target = %event.target,
        before = summary(&event.before).as_deref(),
        after = summary(&event.after).as_deref(),
    );
    crate::otlp::export(&event.to_json());
}
