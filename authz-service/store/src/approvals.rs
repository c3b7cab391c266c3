//! Approvals in Redis: each request under `approval:<id>` (expiring with
//! it), a pointer from the call's digest to the request that covers it, a
//! per-person sorted set of the ones still waiting (bounded, so nobody can
//! fill Redis with requests) and an index of every live one, for listing.
//! Every change is one script: the record, its indexes and its lifecycle
//! event are written together or not at all, and a state change applies
//! only to the record as it was read (an approval is used once, however
//! many replicas race for it). All keys share the store's hash tag, so the
//! scripts run on a Redis Cluster too.

use std::sync::LazyLock;
use std::time::Duration;

use latchkey_core::approval::{ApprovalRecord, ApprovalStatus, MAX_PENDING_PER_USER};
use latchkey_core::audit::LifecycleEvent;

use crate::store::{Store, StoreError, log_lifecycle, parse};

/// KEYS: record, call pointer, the person's pending set, the index, the
/// audit stream. ARGV: record, id, ttl secs, now, expiry (unix), max
/// pending, event, stream max length, the prefix of record keys (the
/// record a pointer names shares the keys' hash tag, so its slot), now
/// (RFC 3339).
/// Returns the id of a live request already covering the call (pending or
/// approved), `""` when this one was created, or `"!full"`.
///
/// The person's requests that expired still waiting leave their pending
/// set here, each with an `approval.expired` event: Redis forgets the
/// records themselves silently, so the trail records an expiry when the
/// person next asks.
const CREATE: &str = r#"
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[4])) do
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[8], '*', 'event', cjson.encode({
    time = ARGV[10], event = 'lifecycle', action = 'approval.expired', actor = 'latchkey',
    target_kind = 'approval', target = gone}))
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[4])
local existing = redis.call('GET', KEYS[2])
if existing then
  local raw = redis.call('GET', ARGV[9] .. existing)
  if raw then
    local status = cjson.decode(raw)['status']
    if status == 'pending' or status == 'approved' then return existing end
  end
end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[6]) then return '!full' end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[2])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[8], '*', 'event', ARGV[7])
return ''
"#;

/// KEYS: record, the person's pending set, the audit stream. ARGV: the
/// record as read, the new record, id, event, stream max length, whether
/// the request stops waiting ('1'). Applies only to the record as read,
/// keeping its expiry; 1 when applied.
const TRANSITION: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
if ARGV[6] == '1' then redis.call('ZREM', KEYS[2], ARGV[3]) end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'event', ARGV[4])
return 1
"#;

static CREATE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CREATE));
static TRANSITION_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(TRANSITION));

/// What creating a request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    New,
    /// A live request already covers the call: this id.
    Existing(String),
    /// The person has [`MAX_PENDING_PER_USER`] requests waiting.
    TooMany,
}

/// Why a state change was not made.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error("no approval request '{0}' (it never existed or has expired)")]
    NotFound(String),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    pub fn approval_key(&self, id: &str) -> String {
        format!("{}:approval:{id}", self.prefix)
    }
    fn approval_call_key(&self, digest: &str) -> String {
        format!("{}:approval_call:{digest}", self.prefix)
    }
    fn approvals_pending_key(&self, user: &str) -> String {
        format!("{}:approvals_pending:{user}", self.prefix)
    }
    fn approvals_index(&self) -> String {
        format!("{}:approvals", self.prefix)
    }

    /// Records a new request for `record`'s call, with its
    /// `approval.requested` event, unless a live one covers the call.
    pub async fn create_approval(
        &self,
        record: &ApprovalRecord,
        ttl: Duration,
        actor: &str,
    ) -> Result<Created, StoreError> {
        let now = latchkey_core::unix_now();
        let event = LifecycleEvent::new(
            "approval.requested",
            actor,
            "approval",
            &record.id,
            None,
            Some(record.audit_view()),
        );
        let mut conn = self.redis.clone();
        let answer: String = CREATE_SCRIPT
            .key(self.approval_key(&record.id))
            .key(self.approval_call_key(&record.digest))
            .key(self.approvals_pending_key(&record.user))
            .key(self.approvals_index())
            .key(self.audit_stream())
            .arg(serde_json::to_string(record).unwrap_or_default())
            .arg(&record.id)
            .arg(ttl.as_secs().max(1))
            .arg(now)
            .arg(now + ttl.as_secs().max(1) as i64)
            .arg(MAX_PENDING_PER_USER)
            .arg(event.to_json())
            .arg(self.audit_max_len)
            .arg(self.approval_key(""))
            .arg(latchkey_core::identity::now_rfc3339())
            .invoke_async(&mut conn)
            .await?;
        Ok(match answer.as_str() {
            "" => {
                log_lifecycle(&event);
                Created::New
            }
            "!full" => Created::TooMany,
            id => Created::Existing(id.to_string()),
        })
    }

    /// The live request covering the call with `digest`, if any.
    pub async fn approval_for_call(
        &self,
        digest: &str,
    ) -> Result<Option<ApprovalRecord>, StoreError> {
        let Some(id) = self.get_raw(&self.approval_call_key(digest)).await? else {
            return Ok(None);
        };
        self.get(&self.approval_key(&id)).await
    }

    /// Every request still live (waiting, or decided and not yet expired),
    /// oldest first.
    pub async fn approvals(&self) -> Result<Vec<ApprovalRecord>, StoreError> {
        let mut conn = self.redis.clone();
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.approvals_index())
            .arg(latchkey_core::unix_now())
            .arg("+inf")
            .query_async(&mut conn)
            .await?;
        let keys: Vec<String> = ids.iter().map(|id| self.approval_key(id)).collect();
        let mut found: Vec<ApprovalRecord> = self.get_many::<ApprovalRecord>(&keys).await?;
        found.sort_by(|a, b| a.requested_at.cmp(&b.requested_at));
        Ok(found)
    }

    /// Changes request `id` with `change` (which sees it as it is and
    /// says why not, if not), writing its `action` event in the same step;
    /// retried when another replica changed it in between.
    pub async fn transition_approval(
        &self,
        id: &str,
        action: &str,
        actor: &str,
        mut change: impl FnMut(&ApprovalRecord) -> Result<ApprovalRecord, String>,
    ) -> Result<ApprovalRecord, TransitionError> {
        let key = self.approval_key(id);
        for _ in 0..8 {
            let Some(raw) = self.get_raw(&key).await? else {
                return Err(TransitionError::NotFound(id.to_string()));
            };
            let current: ApprovalRecord = parse(&key, &raw)?;
            let new = change(&current).map_err(TransitionError::Refused)?;
            let event = LifecycleEvent::new(
                action,
                actor,
                "approval",
                id,
                Some(current.audit_view()),
                Some(new.audit_view()),
            );
            let stops_waiting =
                current.status == ApprovalStatus::Pending && new.status != ApprovalStatus::Pending;
            let mut conn = self.redis.clone();
            let applied: i64 = TRANSITION_SCRIPT
                .key(&key)
                .key(self.approvals_pending_key(&current.user))
                .key(self.audit_stream())
                .arg(&raw)
                .arg(serde_json::to_string(&new).unwrap_or_default())
                .arg(id)
                .arg(event.to_json())
                .arg(self.audit_max_len)
                .arg(if stops_waiting { "1" } else { "0" })
                .invoke_async(&mut conn)
                .await
                .map_err(StoreError::from)?;
            if applied == 1 {
                log_lifecycle(&event);
                return Ok(new);
            }
        }
        Err(StoreError::Contended(key).into())
    }
}
