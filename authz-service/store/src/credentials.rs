//! The credential source the rest of the service talks to: cached reads of
//! users, agents, connections and opened identities for the request path,
//! sealing with the active master key for writes, and online re-encryption
//! onto a new key. Combines `store` (Redis), `vault` (keys) and `cache`.

use std::sync::Arc;
use std::time::Duration;

use crate::cache::{Entry, OpenIdentity, ReplicaCache};
use crate::store::{Mutation, Store, StoreError};
use latchkey_core::audit::{LifecycleEvent, connection_summary, identity_summary};
use latchkey_core::identity::{
    Availability, ConnectionRecord, IdentitySecret, PrincipalKind, PrincipalRecord, Status,
    VaultRecord, now_rfc3339,
};
use latchkey_core::vault::{KeyRing, Sealed, VaultError};

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// What a provider said about tokens besides the tokens themselves.
#[derive(Debug, Clone, Default)]
pub struct TokenMeta {
    /// Access token expiry, RFC 3339.
    pub expires_at: Option<String>,
    pub scopes: Vec<String>,
    /// Got by exchanging the owner's token (`[servers.exchange]`).
    pub exchanged: Option<latchkey_core::identity::Exchanged>,
}

/// Cheap to clone: Redis connections, keys and cache are shared.
#[derive(Clone)]
pub struct Credentials {
    pub store: Store,
    pub keys: Arc<KeyRing>,
    pub cache: Arc<ReplicaCache>,
}

/// One identity to store (`Credentials::put_identity`), by name: several
/// of these are strings, and the actor and the owner are often the same.
pub struct NewIdentity<'a> {
    /// Who stores it (the lifecycle event's actor).
    pub actor: &'a str,
    pub id: &'a str,
    pub server: &'a str,
    /// The user it belongs to.
    pub owner: &'a str,
    pub availability: Availability,
    pub secret: &'a IdentitySecret,
    /// Store a new version of an existing identity (same server and owner);
    /// otherwise an existing id is refused.
    pub replace: bool,
    /// What is known about an OAuth token (expiry, scopes); the default for
    /// a static secret.
    pub meta: TokenMeta,
}

/// The outcome of moving every record onto one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rotation {
    pub re_encrypted: u64,
    pub already_current: u64,
}

impl Credentials {
    pub fn new(store: Store, keys: KeyRing, cache_ttl: Duration) -> Self {
        Self {
            store,
            keys: Arc::new(keys),
            cache: Arc::new(ReplicaCache::new(cache_ttl, 200_000)),
        }
    }

    // --- the request path (cached) -----------------------------------------

    pub async fn principal(
        &self,
        kind: PrincipalKind,
        id: &str,
    ) -> Result<Option<Arc<PrincipalRecord>>, CredentialError> {
        let key = self.store.principal_key(kind, id);
        let load = async {
            let record: Option<PrincipalRecord> = self.store.get(&key).await?;
            Ok::<_, CredentialError>(Entry::Principal(record.map(Arc::new)))
        };
        match self.cache.get_or_load(&key, load).await? {
            Entry::Principal(p) => Ok(p),
            _ => Ok(None),
        }
    }

    /// Whether a user or agent is enabled (no record means enabled).
    pub async fn principal_status(
        &self,
        kind: PrincipalKind,
        id: &str,
    ) -> Result<Status, CredentialError> {
        Ok(self
            .principal(kind, id)
            .await?
            .map(|p| p.status)
            .unwrap_or_default())
    }

    pub async fn connection(
        &self,
        gateway: &str,
        user: &str,
    ) -> Result<Option<Arc<ConnectionRecord>>, CredentialError> {
        let key = self.store.connection_key(gateway, user);
        let load = async {
            let record: Option<ConnectionRecord> = self.store.get(&key).await?;
            Ok::<_, CredentialError>(Entry::Connection(record.map(Arc::new)))
        };
        match self.cache.get_or_load(&key, load).await? {
            Entry::Connection(c) => Ok(c),
            _ => Ok(None),
        }
    }

    /// An identity with its secret opened, or None when there is no such record.
    pub async fn identity(&self, id: &str) -> Result<Option<Arc<OpenIdentity>>, CredentialError> {
        let key = self.store.identity_key(id);
        let load = async {
            let Some(record) = self.store.get::<VaultRecord>(&key).await? else {
                return Ok::<_, CredentialError>(Entry::Identity(None));
            };
            let secret = record.open(&self.keys)?;
            Ok(Entry::Identity(Some(Arc::new(OpenIdentity {
                record,
                secret,
            }))))
        };
        match self.cache.get_or_load(&key, load).await? {
            Entry::Identity(i) => Ok(i),
            _ => Ok(None),
        }
    }

    // --- writes ------------------------------------------------------------

    /// The key new ciphertexts are sealed with: the one the last rotation
    /// made active, else the configured one. Read on every write (writes are
    /// rare) so a rotation on any replica applies to all of them at once.
    pub async fn sealing_key(&self) -> Result<String, CredentialError> {
        let active = self
            .store
            .active_key()
            .await?
            .unwrap_or_else(|| self.keys.active_id().to_string());
        if !self.keys.has(&active) {
            return Err(VaultError::NoKeys(format!(
                "the active key is '{active}' but this replica does not hold it; add it to the key file and restart"
            ))
            .into());
        }
        Ok(active)
    }

    pub async fn seal(
        &self,
        id: &str,
        server: &str,
        version: u64,
        secret: &IdentitySecret,
    ) -> Result<Sealed, CredentialError> {
        let key_id = self.sealing_key().await?;
        Ok(secret.seal(&self.keys, &key_id, id, server, version)?)
    }

    /// Stores an identity: a new record, or (when `replace`) a new version
    /// of an existing one for the same server. The record, its indexes and
    /// the lifecycle event are written atomically. Storing a secret clears
    /// `consent_required`.
    pub async fn put_identity(&self, new: NewIdentity<'_>) -> Result<VaultRecord, PutError> {
        let NewIdentity {
            actor,
            id,
            server,
            owner,
            availability,
            secret,
            replace,
            meta,
        } = new;
        if !latchkey_core::identity::valid_identity_id(id) {
            return Err(PutError::BadId(id.to_string()));
        }
        let key = self.store.identity_key(id);
        let indexes = [self.store.identities_index(), self.store.owner_index(owner)];
        // Sealing needs the version, which depends on what is stored: read
        // first, seal, then compare-and-set; a concurrent writer in between
        // makes the version stale and the change is refused, not merged.
        let now = now_rfc3339();
        let existing: Option<VaultRecord> = self.store.get(&key).await?;
        let version = match &existing {
            Some(_) if !replace => return Err(PutError::Exists(id.to_string())),
            Some(r) if r.server != server || r.owner != owner => {
                return Err(PutError::Mismatch(id.to_string()));
            }
            Some(r) => r.version + 1,
            None => 1,
        };
        let sealed = self.seal(id, server, version, secret).await?;
        let written = self
            .store
            .mutate(&key, &indexes, id, |current: Option<VaultRecord>| {
                let current_version = current.as_ref().map(|r| r.version).unwrap_or(0);
                if version != current_version + 1 {
                    return Err(PutError::Raced(id.to_string()));
                }
                let record = VaultRecord {
                    id: id.to_string(),
                    server: server.to_string(),
                    owner: owner.to_string(),
                    availability,
                    status: current.as_ref().map(|r| r.status).unwrap_or_default(),
                    kind: secret.kind(),
                    expires_at: meta.expires_at.clone(),
                    scopes: meta.scopes.clone(),
                    consent_required: false,
                    exchanged: meta.exchanged.clone(),
                    version,
                    created_by: current
                        .as_ref()
                        .map(|r| r.created_by.clone())
                        .unwrap_or_else(|| actor.to_string()),
                    created_at: current
                        .as_ref()
                        .map(|r| r.created_at.clone())
                        .unwrap_or_else(|| now.clone()),
                    updated_by: actor.to_string(),
                    updated_at: now.clone(),
                    sealed: sealed.clone(),
                };
                let action = if current.is_some() {
                    "identity.replace_secret"
                } else {
                    "identity.create"
                };
                Ok(Mutation {
                    event: LifecycleEvent::new(
                        action,
                        actor,
                        "identity",
                        id,
                        current.as_ref().map(identity_summary),
                        Some(identity_summary(&record)),
                    ),
                    new: Some(record),
                })
            })
            .await?;
        written.ok_or_else(|| PutError::Raced(id.to_string()))
    }

    /// Applies `change` to the connection of `user` to `gateway` (creating
    /// it first when `create`) as one audited change by `actor`. The admin
    /// API and the connect page both change connections through here.
    pub async fn change_connection(
        &self,
        actor: &str,
        user: &str,
        gateway: &str,
        action: &'static str,
        create: bool,
        change: impl Fn(&mut ConnectionRecord),
    ) -> Result<ConnectionRecord, ChangeError> {
        let store = &self.store;
        let key = store.connection_key(gateway, user);
        let indexes = [
            store.connections_index(),
            store.user_connections_index(user),
        ];
        let written = store
            .mutate(&key, &indexes, &key, |current: Option<ConnectionRecord>| {
                let before = current.clone();
                let mut after = match current {
                    Some(c) => c,
                    None if create => ConnectionRecord {
                        user: user.to_string(),
                        gateway: gateway.to_string(),
                        status: Status::Enabled,
                        identities: Default::default(),
                        updated_by: String::new(),
                        updated_at: String::new(),
                    },
                    None => {
                        return Err(ChangeError::NotFound(format!(
                            "user '{user}' has no connection to gateway '{gateway}'"
                        )));
                    }
                };
                change(&mut after);
                after.updated_by = actor.to_string();
                after.updated_at = now_rfc3339();
                Ok(Mutation {
                    event: LifecycleEvent::new(
                        action,
                        actor,
                        "connection",
                        &format!("{gateway}/{user}"),
                        before.as_ref().map(connection_summary),
                        Some(connection_summary(&after)),
                    ),
                    new: Some(after),
                })
            })
            .await?;
        written.ok_or_else(|| ChangeError::NotFound("the change was not written".into()))
    }

    /// Deletes identity `id` (record and index entries) as one audited
    /// change by `actor`; returns what was deleted. Who may delete it is
    /// the caller's check.
    pub async fn delete_identity(&self, actor: &str, id: &str) -> Result<VaultRecord, ChangeError> {
        let store = &self.store;
        let key = store.identity_key(id);
        let Some(record) = store.get::<VaultRecord>(&key).await? else {
            return Err(ChangeError::NotFound(format!(
                "there is no identity '{id}'"
            )));
        };
        let indexes = [store.identities_index(), store.owner_index(&record.owner)];
        let mut deleted = None;
        store
            .mutate(&key, &indexes, id, |current: Option<VaultRecord>| {
                let Some(before) = current else {
                    return Err(ChangeError::NotFound(format!(
                        "there is no identity '{id}'"
                    )));
                };
                let event = LifecycleEvent::new(
                    "identity.delete",
                    actor,
                    "identity",
                    id,
                    Some(identity_summary(&before)),
                    None,
                );
                deleted = Some(before);
                Ok(Mutation { new: None, event })
            })
            .await?;
        deleted.ok_or_else(|| ChangeError::NotFound(format!("there is no identity '{id}'")))
    }

    /// Deletes the tokens exchanged for a user (`PrincipalKind::User`: the
    /// identities they own that an exchange made) or for an agent (those
    /// exchanged for it, whoever owns them), each as an audited
    /// `identity.delete` by `actor`; every replica drops them from its
    /// cache. The next request after re-enabling exchanges anew. Returns
    /// the ids deleted.
    pub async fn drop_exchanged(
        &self,
        actor: &str,
        kind: PrincipalKind,
        principal: &str,
    ) -> Result<Vec<String>, ChangeError> {
        let index = match kind {
            PrincipalKind::User => self.store.owner_index(principal),
            // Rare (an agent disabled), so a scan of every identity will do.
            PrincipalKind::Agent => self.store.identities_index(),
        };
        let keys: Vec<String> = self
            .store
            .members(&index)
            .await?
            .iter()
            .map(|id| self.store.identity_key(id))
            .collect();
        let records: Vec<VaultRecord> = self.store.get_many(&keys).await?;
        let mut dropped = Vec::new();
        for r in records {
            let Some(x) = &r.exchanged else { continue };
            let mine = match kind {
                PrincipalKind::User => r.owner == principal,
                PrincipalKind::Agent => x.agent.as_deref() == Some(principal),
            };
            if !mine {
                continue;
            }
            match self.delete_identity(actor, &r.id).await {
                // Someone else deleted it in between: gone either way.
                Ok(_) | Err(ChangeError::NotFound(_)) => dropped.push(r.id),
                Err(e) => return Err(e),
            }
        }
        Ok(dropped)
    }

    /// Makes `to` the active key and re-encrypts every identity onto it,
    /// record by record with compare-and-set, so concurrent requests and
    /// writes never see a half-done record. Refuses unless every live
    /// replica already holds `to` (otherwise they could not read the result).
    pub async fn rotate(&self, actor: &str, to: &str) -> Result<Rotation, RotateError> {
        if !self.keys.has(to) {
            return Err(RotateError::NotLoadedHere(to.to_string()));
        }
        for replica in self.store.replicas().await.map_err(CredentialError::from)? {
            if !replica.key_ids.iter().any(|k| k == to) {
                return Err(RotateError::NotLoadedOn {
                    key: to.to_string(),
                    replica: replica.id,
                    pid: replica.pid,
                });
            }
        }
        let before = self.sealing_key().await.ok();
        self.store
            .set_active_key(
                to,
                &LifecycleEvent::new(
                    "keys.activate",
                    actor,
                    "keys",
                    to,
                    before.as_ref().map(|k| serde_json::json!({ "active": k })),
                    Some(serde_json::json!({ "active": to })),
                ),
            )
            .await
            .map_err(CredentialError::from)?;
        let mut total = Rotation::default();
        // A write sealed with the old key just before the switch can land
        // after the first pass saw its record: pass again until one is clean.
        for pass in 0..5 {
            let done = self.re_encrypt_pass(to).await?;
            total.re_encrypted += done.re_encrypted;
            if pass == 0 {
                total.already_current = done.already_current;
            }
            if done.re_encrypted == 0 {
                break;
            }
        }
        let event = LifecycleEvent::new(
            "keys.rotate",
            actor,
            "keys",
            to,
            before.map(|k| serde_json::json!({ "active": k })),
            Some(serde_json::json!({
                "active": to,
                "re_encrypted": total.re_encrypted,
                "already_current": total.already_current,
            })),
        );
        self.store
            .append_event(&event)
            .await
            .map_err(CredentialError::from)?;
        Ok(total)
    }

    async fn re_encrypt_pass(&self, to: &str) -> Result<Rotation, CredentialError> {
        let mut out = Rotation::default();
        for id in self.store.members(&self.store.identities_index()).await? {
            let key = self.store.identity_key(&id);
            for _ in 0..8 {
                let Some(raw) = self.store.get_raw(&key).await? else {
                    break;
                };
                let mut record: VaultRecord =
                    serde_json::from_str(&raw).map_err(|e| StoreError::Corrupt {
                        key: key.clone(),
                        reason: e.to_string(),
                    })?;
                if record.sealed.key_id == to {
                    out.already_current += 1;
                    break;
                }
                let secret = record.open(&self.keys)?;
                record.sealed =
                    secret.seal(&self.keys, to, &record.id, &record.server, record.version)?;
                let new = serde_json::to_string(&record).unwrap_or_default();
                if self.store.replace_if_unchanged(&key, &raw, &new).await? {
                    out.re_encrypted += 1;
                    break;
                }
            }
        }
        Ok(out)
    }

    /// How many identities each key id seals (for `keys list`).
    pub async fn records_per_key(
        &self,
    ) -> Result<std::collections::BTreeMap<String, u64>, CredentialError> {
        let ids = self.store.members(&self.store.identities_index()).await?;
        let keys: Vec<String> = ids.iter().map(|id| self.store.identity_key(id)).collect();
        let mut counts = std::collections::BTreeMap::new();
        for record in self.store.get_many::<VaultRecord>(&keys).await? {
            *counts.entry(record.sealed.key_id).or_insert(0) += 1;
        }
        Ok(counts)
    }
}

/// Why a connection or identity change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    NotFound(String),
}

#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error("identity '{0}' already exists; pick another id or delete it first")]
    Exists(String),
    #[error("identity '{0}' exists for another server or owner; pick another id")]
    Mismatch(String),
    #[error("identity '{0}' was changed by someone else at the same time; try again")]
    Raced(String),
    #[error("identity id '{0}' must be 1-128 characters of A-Z, a-z, 0-9, '.', '_' or '-'")]
    BadId(String),
}

impl From<StoreError> for PutError {
    fn from(e: StoreError) -> Self {
        PutError::Credential(e.into())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error(
        "key '{0}' is not loaded on the replica that took this request; add it to every replica's key file and restart them first"
    )]
    NotLoadedHere(String),
    #[error(
        "replica {replica} (pid {pid}) does not hold key '{key}'; add it to its key file and restart it before rotating"
    )]
    NotLoadedOn {
        key: String,
        replica: String,
        pid: u32,
    },
}

impl From<StoreError> for RotateError {
    fn from(e: StoreError) -> Self {
        RotateError::Credential(e.into())
    }
}
