//! SCIM Users and Groups in Redis, and what they change of the people
//! Latchkey knows.
//!
//! Each resource is one record (`scim:user:<id>`, `scim:group:<id>`) in an
//! index set (`scim:users`, `scim:groups`, bounded in size), with a pointer
//! from its lowercased name (`scim:user_name:<userName>`,
//! `scim:group_name:<displayName>`) that makes names unique in any case.
//! A User's `userName` is a person's Latchkey user id: their
//! `PrincipalRecord` (the one `latchkey user deactivate` writes) follows
//! the User's `active` and carries the display names of the Groups they
//! are in (`scim_groups`), which the request path reads as their roles.
//!
//! Every change is one script (`commit`): the resource, its name pointer,
//! its index, every record it touches (a Group's members, their principal
//! records) and its lifecycle events are written together or not at all,
//! and only over the records as they were read, so two replicas racing
//! for one name or one person cannot both win (the loser reads again and
//! is refused). Principal records are published on the invalidation
//! channel like every principal change, so each replica drops what it
//! cached of them. All keys share the store's hash tag (Redis Cluster).

mod groups;
mod users;

use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::store::{Store, StoreError, log_lifecycle, parse};
use latchkey_core::audit::{LifecycleEvent, principal_summary};
use latchkey_core::identity::{PrincipalKind, PrincipalRecord, Status, now_rfc3339};
use latchkey_core::scim::filter::{Filter, FilterAttr};
use latchkey_core::scim::{ResourceKind, ScimError, ScimType};

/// How many times a change is read again after another writer got in first.
const ATTEMPTS: usize = 8;

/// KEYS[1] audit stream, KEYS[2] index set, KEYS[3..] records.
/// ARGV[1] number of records n, ARGV[2] index change ('add', 'remove' or
/// ''), ARGV[3] index member, ARGV[4] index bound, ARGV[5] stream max
/// length, ARGV[6] invalidation channel, ARGV[7] how a user's principal
/// key starts; then per record its expected value ('' = absent), new value
/// ('' = delete) and whether to publish it ('1'); then the events. The
/// last key is the users' principals index: a person whose principal
/// record SCIM writes is in it, as when the admin API writes one.
/// Returns 1 applied, 0 a record changed since it was read, -1 the index
/// is full.
const COMMIT: &str = r#"
local n = tonumber(ARGV[1])
for i = 1, n do
  local current = redis.call('GET', KEYS[2 + i])
  local expected = ARGV[5 + 3 * i]
  if expected == '' then
    if current then return 0 end
  elseif current ~= expected then
    return 0
  end
end
if ARGV[2] == 'add' and redis.call('SISMEMBER', KEYS[2], ARGV[3]) == 0
   and redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[4]) then
  return -1
end
for i = 1, n do
  local new = ARGV[6 + 3 * i]
  if new == '' then redis.call('DEL', KEYS[2 + i]) else redis.call('SET', KEYS[2 + i], new) end
  local key = KEYS[2 + i]
  if new ~= '' and string.sub(key, 1, #ARGV[7]) == ARGV[7] then
    redis.call('SADD', KEYS[3 + n], string.sub(key, #ARGV[7] + 1))
  end
end
if ARGV[2] == 'add' then redis.call('SADD', KEYS[2], ARGV[3]) end
if ARGV[2] == 'remove' then redis.call('SREM', KEYS[2], ARGV[3]) end
for i = 8 + 3 * n, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', 'event', ARGV[i])
end
for i = 1, n do
  if ARGV[7 + 3 * i] == '1' then redis.call('PUBLISH', ARGV[6], KEYS[2 + i]) end
end
return 1
"#;

static COMMIT_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(COMMIT));

/// A User or Group as stored: the server's own attributes beside the
/// client's (`attributes`, in `latchkey_core::scim::schema`'s stored form;
/// a User's `groups` there is kept by the Groups).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResource {
    pub id: String,
    pub created: String,
    pub last_modified: String,
    /// Increases with every change (`meta.version`).
    pub version: u64,
    pub attributes: Map<String, Value>,
}

impl StoredResource {
    fn new(id: String, attributes: Map<String, Value>) -> Self {
        let now = now_rfc3339();
        Self {
            id,
            created: now.clone(),
            last_modified: now,
            version: 1,
            attributes,
        }
    }

    /// The next version of this resource with `attributes`.
    fn changed(&self, attributes: Map<String, Value>) -> Self {
        Self {
            id: self.id.clone(),
            created: self.created.clone(),
            last_modified: now_rfc3339(),
            version: self.version + 1,
            attributes,
        }
    }

    pub fn text(&self, name: &str) -> &str {
        self.attributes
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// A User's `active` (absent: active).
    pub fn active(&self) -> bool {
        self.attributes
            .get("active")
            .and_then(Value::as_bool)
            .unwrap_or(true)
    }

    /// The ids in a multi-valued reference attribute (`members`, `groups`).
    pub fn ids(&self, name: &str) -> Vec<String> {
        self.attributes
            .get(name)
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i.get("value").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Why a SCIM change was not made: the request's fault (answered in
/// SCIM's error format) or Redis's.
#[derive(Debug, thiserror::Error)]
pub enum ScimWriteError {
    #[error(transparent)]
    Refused(#[from] ScimError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a change did to people's status, for the caller to follow up
/// (tokens exchanged for a deactivated person are dropped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusChanges {
    pub deactivated: Vec<String>,
    pub reactivated: Vec<String>,
}

/// SCIM provisioning over the store, as one identity provider (`actor`,
/// `scim:<provider>`), within the configured bounds.
#[derive(Clone)]
pub struct Provisioning {
    pub store: Store,
    pub actor: String,
    pub max_users: usize,
    pub max_groups: usize,
}

/// One record of a commit.
struct Write {
    key: String,
    expected: Option<String>,
    new: Option<String>,
    /// Published on the invalidation channel (principal records).
    publish: bool,
}

enum IndexChange {
    Add,
    Remove,
}

/// Everything one change writes.
struct Batch {
    writes: Vec<Write>,
    index: Option<(IndexChange, String)>,
    events: Vec<LifecycleEvent>,
}

enum Committed {
    Applied,
    Changed,
    Full,
}

impl Store {
    pub fn scim_key(&self, kind: ResourceKind, id: &str) -> String {
        format!("{}:scim:{}:{id}", self.prefix, kind_part(kind))
    }
    /// Every stored resource of `kind`, by id.
    pub fn scim_index(&self, kind: ResourceKind) -> String {
        format!("{}:scim:{}s", self.prefix, kind_part(kind))
    }
    /// Names are unique in any case (`userName` is not case-exact; Entra
    /// needs Group names unique).
    fn scim_name_key(&self, kind: ResourceKind, name: &str) -> String {
        format!(
            "{}:scim:{}_name:{}",
            self.prefix,
            kind_part(kind),
            name.to_lowercase()
        )
    }
}

fn kind_part(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::User => "user",
        ResourceKind::Group => "group",
    }
}

/// The name attribute that is unique for `kind`.
fn name_attribute(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::User => "userName",
        ResourceKind::Group => "displayName",
    }
}

/// Ids are minted here (32 hex digits); anything else names nothing, and
/// never reaches a Redis key.
pub fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Provisioning {
    /// One resource by id.
    pub async fn get(
        &self,
        kind: ResourceKind,
        id: &str,
    ) -> Result<Option<StoredResource>, StoreError> {
        if !valid_id(id) {
            return Ok(None);
        }
        self.store.get(&self.store.scim_key(kind, id)).await
    }

    /// The resources matching `filter` (all without one), ordered by id so
    /// pages are stable: how many there are, and those from `start` (0-based),
    /// at most `count`.
    pub async fn list(
        &self,
        kind: ResourceKind,
        filter: Option<&Filter>,
        start: usize,
        count: usize,
    ) -> Result<(usize, Vec<StoredResource>), StoreError> {
        let matching: Vec<StoredResource> = match filter {
            // The name pointer answers the filter IdPs send most.
            Some(f) if f.attr == FilterAttr::Id || f.attr.name() == name_attribute(kind) => {
                let id = if f.attr == FilterAttr::Id {
                    Some(f.value.clone())
                } else {
                    self.store
                        .get_raw(&self.store.scim_name_key(kind, &f.value))
                        .await?
                };
                let found = match id {
                    Some(id) => self.get(kind, &id).await?,
                    None => None,
                };
                found
                    .into_iter()
                    .filter(|r| f.matches(&r.id, &r.attributes))
                    .collect()
            }
            Some(f) => {
                let ids = self.store.members(&self.store.scim_index(kind)).await?;
                let keys: Vec<String> =
                    ids.iter().map(|id| self.store.scim_key(kind, id)).collect();
                let mut all: Vec<StoredResource> = self.store.get_many(&keys).await?;
                all.retain(|r| f.matches(&r.id, &r.attributes));
                all
            }
            None => {
                let ids = self.store.members(&self.store.scim_index(kind)).await?;
                let total = ids.len();
                let keys: Vec<String> = ids
                    .iter()
                    .skip(start)
                    .take(count)
                    .map(|id| self.store.scim_key(kind, id))
                    .collect();
                return Ok((total, self.store.get_many(&keys).await?));
            }
        };
        let total = matching.len();
        Ok((
            total,
            matching.into_iter().skip(start).take(count).collect(),
        ))
    }

    /// Raw values of `keys`, in order.
    async fn read(&self, keys: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.store.redis.clone();
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(500) {
            let raws: Vec<Option<String>> =
                redis::cmd("MGET").arg(chunk).query_async(&mut conn).await?;
            out.extend(raws);
        }
        Ok(out)
    }

    async fn commit(&self, kind: ResourceKind, batch: &Batch) -> Result<Committed, StoreError> {
        let mut conn = self.store.redis.clone();
        let mut invocation = COMMIT_SCRIPT.prepare_invoke();
        invocation
            .key(self.store.audit_stream())
            .key(self.store.scim_index(kind));
        for w in &batch.writes {
            invocation.key(&w.key);
        }
        invocation.key(self.store.principals_index(PrincipalKind::User));
        let (change, member) = match &batch.index {
            Some((IndexChange::Add, m)) => ("add", m.as_str()),
            Some((IndexChange::Remove, m)) => ("remove", m.as_str()),
            None => ("", ""),
        };
        let bound = match kind {
            ResourceKind::User => self.max_users,
            ResourceKind::Group => self.max_groups,
        };
        invocation
            .arg(batch.writes.len())
            .arg(change)
            .arg(member)
            .arg(bound)
            .arg(self.store.audit_max_len)
            .arg(self.store.channel())
            .arg(self.store.principal_key(PrincipalKind::User, ""));
        for w in &batch.writes {
            invocation
                .arg(w.expected.as_deref().unwrap_or(""))
                .arg(w.new.as_deref().unwrap_or(""))
                .arg(if w.publish { "1" } else { "0" });
        }
        for e in &batch.events {
            invocation.arg(e.to_json());
        }
        let answer: i64 = invocation.invoke_async(&mut conn).await?;
        Ok(match answer {
            1 => {
                for e in &batch.events {
                    log_lifecycle(e);
                }
                Committed::Applied
            }
            -1 => Committed::Full,
            _ => Committed::Changed,
        })
    }

    /// Commits `batch`; `Ok(false)` when a record changed since it was
    /// read (read again and retry); the bound's refusal when full.
    async fn try_commit(&self, kind: ResourceKind, batch: &Batch) -> Result<bool, ScimWriteError> {
        match self.commit(kind, batch).await? {
            Committed::Applied => Ok(true),
            Committed::Changed => Ok(false),
            Committed::Full => Err(ScimError::new(
                400,
                None,
                match kind {
                    ResourceKind::User => format!(
                        "Latchkey holds at most {} SCIM Users ([scim] max_users); delete some or raise the bound",
                        self.max_users
                    ),
                    ResourceKind::Group => format!(
                        "Latchkey holds at most {} SCIM Groups ([scim] max_groups); delete some or raise the bound",
                        self.max_groups
                    ),
                },
            )
            .into()),
        }
    }

    /// The change of a person's principal record that a SCIM change
    /// makes: `status` when SCIM changes it, `groups` as SCIM now says
    /// (None: no longer provisioned). Adds the write (only when something
    /// changes) and, for a status change, the `user.deactivate` or
    /// `user.reactivate` event the admin API writes for the same change.
    fn principal_change(
        &self,
        batch: &mut Batch,
        changes: &mut StatusChanges,
        user: &str,
        raw: Option<String>,
        status: Option<Status>,
        groups: Option<Vec<String>>,
    ) -> Result<(), StoreError> {
        let key = self.store.principal_key(PrincipalKind::User, user);
        let current: Option<PrincipalRecord> = match &raw {
            Some(r) => Some(parse(&key, r)?),
            None => None,
        };
        let before_status = current.as_ref().map(|c| c.status).unwrap_or_default();
        let after = PrincipalRecord {
            id: user.to_string(),
            kind: PrincipalKind::User,
            status: status.unwrap_or(before_status),
            updated_by: self.actor.clone(),
            updated_at: now_rfc3339(),
            scim_groups: groups,
        };
        let unchanged = current
            .as_ref()
            .is_some_and(|c| c.status == after.status && c.scim_groups == after.scim_groups)
            || (current.is_none()
                && after.status == Status::Enabled
                && after.scim_groups.is_none());
        if unchanged {
            return Ok(());
        }
        if after.status != before_status {
            let action = if after.status == Status::Disabled {
                changes.deactivated.push(user.to_string());
                "user.deactivate"
            } else {
                changes.reactivated.push(user.to_string());
                "user.reactivate"
            };
            batch.events.push(LifecycleEvent::new(
                action,
                &self.actor,
                "user",
                user,
                Some(current.as_ref().map(principal_summary).unwrap_or_else(
                    || json!({ "kind": PrincipalKind::User, "status": Status::Enabled }),
                )),
                Some(principal_summary(&after)),
            ));
        }
        batch.writes.push(Write {
            key,
            expected: raw,
            new: Some(serde_json::to_string(&after).unwrap_or_default()),
            publish: true,
        });
        Ok(())
    }
}

/// The display names of the Groups a stored User is in.
fn group_names(user: &StoredResource) -> Vec<String> {
    let mut names: Vec<String> = user
        .attributes
        .get("groups")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.get("display").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.dedup();
    names
}

fn to_json(r: &StoredResource) -> String {
    serde_json::to_string(r).unwrap_or_default()
}

/// A name already taken by another resource: 409 `uniqueness`.
fn taken(kind: ResourceKind, name: &str) -> ScimWriteError {
    ScimError::new(
        409,
        Some(ScimType::Uniqueness),
        format!(
            "a {} named '{}' exists already ({} compare in any case)",
            kind.name(),
            latchkey_core::scim::shorten(name),
            name_attribute(kind)
        ),
    )
    .into()
}

fn contended(kind: ResourceKind, id: &str) -> ScimWriteError {
    StoreError::Contended(format!("SCIM {} {id}", kind.name())).into()
}
