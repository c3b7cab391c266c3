//! Tokens over time: keeps the OAuth access token of a per-user identity
//! usable. `decide` hands over the identity it resolved; when its access
//! token expires within `[connect] refresh_margin_secs` (or already has),
//! this module refreshes it with the server's provider and hands back the
//! identity to inject — or says why it cannot (consent needed, provider
//! unavailable). It owns the refresh lock, the fenced write of new tokens,
//! marking an identity `consent_required`, and the refresh metric and
//! lifecycle events.
//!
//! Once per identity across all replicas: the refresher takes the Redis
//! lock `Store::refresh_lock_key` (`SET NX PX`, so a dead holder's lock
//! lapses), re-reads the record, and writes the new tokens with a
//! compare-and-set that only succeeds while the record still has the version
//! it read under the lock. A holder whose lock expired while it talked to the
//! provider therefore cannot overwrite a newer version. The lock is released
//! only while it still holds this holder's token. Replicas that do not get
//! the lock poll the record (up to `[connect] refresh_wait_ms`) and use the
//! result. Within one replica, concurrent requests for the same identity
//! queue on one async mutex per identity: the first does the work, the rest
//! take its result from memory without asking Redis.
//!
//! A rotated refresh token replaces the old one in the same write; a
//! provider that sends none keeps the old one. `invalid_grant` (or an
//! expired token with no refresh token) marks the identity
//! `consent_required`, so its owner is asked again instead of failing
//! forever. A provider that cannot be reached is survived while the current
//! access token is still valid, and fails closed once it has expired.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::oauth::{OauthError, Providers, TokenSet};
use latchkey_core::audit::{LifecycleEvent, identity_summary};
use latchkey_core::config::ConnectConfig;
use latchkey_core::identity::{CredentialKind, IdentitySecret, VaultRecord, now_rfc3339};
use latchkey_core::metrics::{RefreshCounter, RefreshResult};
use latchkey_store::cache::OpenIdentity;
use latchkey_store::credentials::{CredentialError, Credentials};
use latchkey_store::store::{Mutation, StoreError};

/// Who the lifecycle events of refreshes name as the actor.
pub const ACTOR: &str = "latchkey (token refresh)";

/// How long the refresh lock lives unless released: longer than a provider
/// call may take (its HTTP timeout is 10 s), so a live holder keeps it.
const LOCK_TTL: Duration = Duration::from_secs(15);

/// The least time a request waits for a refresh it started, even when its
/// wait for another replica's used up `refresh_wait_ms`.
const MIN_HOLDER_WAIT: Duration = Duration::from_millis(200);

/// How often a replica waiting for another's refresh looks at the record.
const POLL: Duration = Duration::from_millis(25);

/// After a failed attempt, how long requests of this replica use the
/// outcome instead of asking the provider again.
const RETRY_PAUSE: Duration = Duration::from_secs(2);

/// A token that was already within the margin when this replica got it (a
/// provider issuing tokens shorter-lived than the margin) is used for this
/// long before it is refreshed again, rather than on every request.
const REUSE_FRESH: Duration = Duration::from_secs(10);

/// Why the identity cannot be injected.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// Its owner has to authorise again (refresh token refused, or an
    /// expired token with nothing to refresh it with, or the identity is gone).
    #[error("identity '{identity}' needs its owner's consent again: {why}")]
    ConsentNeeded { identity: String, why: &'static str },
    /// The access token expired and no new one could be had.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Credential(#[from] CredentialError),
}

/// What one replica knows about one identity's refresh.
#[derive(Default)]
struct Slot {
    /// The newest identity this replica read or wrote while refreshing.
    latest: Option<Arc<OpenIdentity>>,
    /// When `latest` was refreshed (or seen refreshed), if it was already
    /// due then.
    short_lived_since: Option<Instant>,
    /// The last attempt failed: when, for which version, and why.
    failed: Option<(Instant, u64, String)>,
}

/// How refreshing across replicas ended.
enum Outcome {
    /// The identity to use: refreshed here, by another replica, or found
    /// not to need it after all.
    Fresh(Arc<OpenIdentity>),
    /// Consent needed; the identity as marked, when it still exists.
    Consent(Option<Arc<OpenIdentity>>, &'static str),
    /// No new token; why.
    Unavailable(String),
}

/// Cheap to clone (shared caches and counters): a refresh that outlives the
/// request that started it runs on a clone.
#[derive(Clone)]
pub struct Refresher {
    providers: Providers,
    margin: Duration,
    wait: Duration,
    lock_ttl: Duration,
    slots: moka::sync::Cache<String, Arc<tokio::sync::Mutex<Slot>>>,
    counts: RefreshCounter,
}

impl Default for Refresher {
    /// No provider: nothing is ever refreshed.
    fn default() -> Self {
        Refresher::new(Providers::default(), None, RefreshCounter::default())
    }
}

impl Refresher {
    /// Refreshes with `providers` (by server name), on the timing of
    /// `[connect]` (its defaults without one), counting into `counts`.
    pub fn new(
        providers: Providers,
        connect: Option<&ConnectConfig>,
        counts: RefreshCounter,
    ) -> Self {
        let (margin, wait) = connect
            .map(|c| (c.refresh_margin_secs, c.refresh_wait_ms))
            .unwrap_or((60, 5000));
        Refresher {
            providers,
            margin: Duration::from_secs(margin),
            wait: Duration::from_millis(wait),
            lock_ttl: LOCK_TTL,
            slots: moka::sync::Cache::builder()
                .time_to_idle(Duration::from_secs(120))
                .max_capacity(100_000)
                .build(),
            counts,
        }
    }

    /// Other timing (tests: a short lock to see fencing at work).
    pub fn with_timing(mut self, margin: Duration, wait: Duration, lock_ttl: Duration) -> Self {
        self.margin = margin;
        self.wait = wait;
        self.lock_ttl = lock_ttl;
        self
    }

    /// Whether `record` holds an OAuth access token that expires within the
    /// margin (or has expired). Unknown expiry: never due.
    pub fn due(&self, record: &VaultRecord) -> bool {
        record.kind == CredentialKind::Oauth
            && expiry(record).is_some_and(|at| at - OffsetDateTime::now_utc() <= self.margin)
    }

    /// The identity to inject for `open`: itself when its token is not due,
    /// else after refreshing it (once across replicas).
    pub async fn fresh(
        &self,
        credentials: &Credentials,
        open: Arc<OpenIdentity>,
    ) -> Result<Arc<OpenIdentity>, RefreshError> {
        self.fresh_with(credentials, open, false).await
    }

    /// Like [`Self::fresh`] for an identity whose current token the upstream
    /// refused (reported by the filter): refreshed whatever its expiry says,
    /// once across replicas; the version fences it, so a report that
    /// arrives after the refresh changes nothing.
    pub async fn after_refusal(
        &self,
        credentials: &Credentials,
        open: Arc<OpenIdentity>,
    ) -> Result<Arc<OpenIdentity>, RefreshError> {
        self.fresh_with(credentials, open, true).await
    }

    async fn fresh_with(
        &self,
        credentials: &Credentials,
        open: Arc<OpenIdentity>,
        refused: bool,
    ) -> Result<Arc<OpenIdentity>, RefreshError> {
        if !refused && !self.due(&open.record) {
            return Ok(open);
        }
        let IdentitySecret::Oauth { refresh_token, .. } = &open.secret else {
            return Ok(open);
        };
        // Nothing to refresh with, or nobody to ask: the token serves until
        // it expires.
        if !expired(&open.record)
            && (refresh_token.is_none() || self.providers.get(&open.record.server).is_none())
        {
            return Ok(open);
        }
        let slot = self
            .slots
            .get_with(open.record.id.clone(), Default::default);
        let mut slot = slot.lock().await;
        // A refused token is only answered by a newer version.
        if let Some(latest) = &slot.latest
            && latest.record.version >= open.record.version
            && (!refused || latest.record.version > open.record.version)
        {
            if latest.record.consent_required {
                return Err(consent(
                    &latest.record.id,
                    "the provider refused its refresh token",
                ));
            }
            let recent = slot
                .short_lived_since
                .is_some_and(|t| t.elapsed() < REUSE_FRESH);
            if refused || !self.due(&latest.record) || (recent && !expired(&latest.record)) {
                return Ok(latest.clone());
            }
        }
        if let Some((at, version, why)) = &slot.failed
            && *version == open.record.version
            && at.elapsed() < RETRY_PAUSE
        {
            return fall_back(open.clone(), why, false);
        }
        match self.across_replicas(credentials, &open, refused).await? {
            Outcome::Fresh(identity) => {
                slot.short_lived_since = self.due(&identity.record).then(Instant::now);
                slot.latest = Some(identity.clone());
                slot.failed = None;
                Ok(identity)
            }
            Outcome::Consent(marked, why) => {
                slot.latest = marked;
                slot.short_lived_since = None;
                Err(consent(&open.record.id, why))
            }
            Outcome::Unavailable(why) => {
                slot.failed = Some((Instant::now(), open.record.version, why.clone()));
                fall_back(open, &why, true)
            }
        }
    }

    /// Takes the refresh lock and refreshes, or waits for whoever holds it.
    async fn across_replicas(
        &self,
        credentials: &Credentials,
        open: &OpenIdentity,
        refused: bool,
    ) -> Result<Outcome, CredentialError> {
        let store = &credentials.store;
        let id = &open.record.id;
        let server = &open.record.server;
        let seen = open.record.version;
        let lock = store.refresh_lock_key(id);
        let token = lock_token();
        let deadline = Instant::now() + self.wait;
        let mut waited = false;
        loop {
            if store.try_lock(&lock, &token, self.lock_ttl).await? {
                // On its own task: if Envoy stops waiting for this Check, the
                // provider's answer is still stored. A rotating provider has
                // spent the old refresh token the moment it answered, so a
                // refresh cut short would cost the person a new consent.
                let holder = self.clone();
                let owned = credentials.clone();
                let (id, lock) = (id.to_string(), lock.clone());
                let refresh = tokio::spawn(async move {
                    let outcome = holder.as_holder(&owned, &id, seen, waited, refused).await;
                    release(&owned, &id, &lock, &token).await;
                    outcome
                });
                let budget = deadline
                    .saturating_duration_since(Instant::now())
                    .max(MIN_HOLDER_WAIT);
                return match tokio::time::timeout(budget, refresh).await {
                    Ok(Ok(outcome)) => outcome,
                    Ok(Err(e)) => Ok(Outcome::Unavailable(format!(
                        "the refresh of identity '{}' failed: {e}",
                        open.record.id
                    ))),
                    Err(_) => Ok(Outcome::Unavailable(format!(
                        "{server}'s provider has not answered the refresh of identity '{}' within {} ms; it is stored when it comes, retry shortly",
                        open.record.id,
                        budget.as_millis()
                    ))),
                };
            }
            // Another replica (or another process) is refreshing: use its result.
            waited = true;
            loop {
                tokio::time::sleep(POLL).await;
                let Some(current) = load(credentials, id).await? else {
                    return Ok(Outcome::Consent(None, "the identity was deleted"));
                };
                if current.record.version != seen || current.record.consent_required {
                    self.counts.count(server, RefreshResult::Waited);
                    return Ok(settled(current));
                }
                if Instant::now() >= deadline {
                    self.counts.count(server, RefreshResult::Unavailable);
                    return Ok(Outcome::Unavailable(format!(
                        "another replica's refresh of identity '{id}' did not finish within {} ms",
                        self.wait.as_millis()
                    )));
                }
                if !store.locked(&lock).await? {
                    // Its holder gave up (or finished just now): try ourselves.
                    break;
                }
            }
        }
    }

    /// Holding the lock: look again, then refresh and write with fencing.
    async fn as_holder(
        &self,
        credentials: &Credentials,
        id: &str,
        seen: u64,
        waited: bool,
        refused: bool,
    ) -> Result<Outcome, CredentialError> {
        let Some(base) = load(credentials, id).await? else {
            return Ok(Outcome::Consent(None, "the identity was deleted"));
        };
        let server = base.record.server.clone();
        if base.record.version != seen
            || base.record.consent_required
            || (!refused && !self.due(&base.record))
        {
            // Someone finished between our look and the lock.
            if waited && base.record.version != seen {
                self.counts.count(&server, RefreshResult::Waited);
            }
            return Ok(settled(base));
        }
        let IdentitySecret::Oauth { refresh_token, .. } = &base.secret else {
            return Ok(Outcome::Fresh(base));
        };
        let Some(refresh_token) = refresh_token else {
            if !expired(&base.record) {
                return Ok(Outcome::Fresh(base));
            }
            return self
                .require_consent(credentials, &base, "no_refresh_token")
                .await;
        };
        let Some(provider) = self.providers.get(&server) else {
            return Ok(Outcome::Unavailable(format!(
                "server '{server}' has no [servers.oauth] provider to refresh tokens with"
            )));
        };
        match provider.refresh(refresh_token).await {
            Ok(tokens) => self.store_tokens(credentials, &base, tokens).await,
            Err(OauthError::InvalidGrant { .. }) => {
                self.counts.count(&server, RefreshResult::InvalidGrant);
                self.require_consent(credentials, &base, "invalid_grant")
                    .await
            }
            Err(e) => {
                self.counts.count(&server, RefreshResult::Unavailable);
                let why = e.to_string();
                let event = LifecycleEvent::new(
                    "identity.refresh_failed",
                    ACTOR,
                    "identity",
                    id,
                    None,
                    Some(json!({
                        "server": server,
                        "version": base.record.version,
                        "reason": "provider_unavailable",
                        "message": why,
                        "access_token_expired": expired(&base.record),
                    })),
                );
                if let Err(e) = credentials.store.append_event(&event).await {
                    tracing::warn!(identity = %id, error = %e, "cannot record the failed refresh");
                }
                Ok(Outcome::Unavailable(why))
            }
        }
    }

    /// Writes the new tokens as the next version, only if the record still
    /// has the version they were refreshed from.
    async fn store_tokens(
        &self,
        credentials: &Credentials,
        base: &OpenIdentity,
        tokens: TokenSet,
    ) -> Result<Outcome, CredentialError> {
        let r = &base.record;
        let old_refresh = match &base.secret {
            IdentitySecret::Oauth { refresh_token, .. } => refresh_token.clone(),
            IdentitySecret::Static { .. } => None,
        };
        let rotated = tokens
            .refresh_token
            .as_ref()
            .is_some_and(|new| old_refresh.as_ref().is_none_or(|old| old != new));
        let secret = IdentitySecret::Oauth {
            access_token: tokens.access_token,
            // A provider that does not rotate sends none: keep the old one.
            refresh_token: tokens.refresh_token.or(old_refresh),
        };
        let version = r.version + 1;
        let sealed = credentials.seal(&r.id, &r.server, version, &secret).await?;
        let expires_at = tokens.expires_at.and_then(|t| t.format(&Rfc3339).ok());
        let scopes = if tokens.scopes.is_empty() {
            r.scopes.clone()
        } else {
            tokens.scopes
        };
        let written = self
            .fenced(credentials, r, |current| {
                let mut next = current.clone();
                next.version = version;
                next.sealed = sealed.clone();
                next.expires_at = expires_at.clone();
                next.scopes = scopes.clone();
                next.consent_required = false;
                next.updated_by = ACTOR.to_string();
                next.updated_at = now_rfc3339();
                let mut after = identity_summary(&next);
                after["expires_at"] = json!(next.expires_at);
                after["refresh_token_rotated"] = json!(rotated);
                let event = LifecycleEvent::new(
                    "identity.refresh",
                    ACTOR,
                    "identity",
                    &r.id,
                    Some(identity_summary(current)),
                    Some(after),
                );
                (next, event)
            })
            .await?;
        let Some(record) = written else {
            // Fenced off: someone wrote a newer version; use that.
            return superseded(credentials, &r.id).await;
        };
        self.counts.count(
            &r.server,
            if rotated {
                RefreshResult::Rotated
            } else {
                RefreshResult::Refreshed
            },
        );
        tracing::info!(identity = %r.id, server = %r.server, version, rotated, "access token refreshed");
        Ok(Outcome::Fresh(Arc::new(OpenIdentity { record, secret })))
    }

    /// Marks the identity `consent_required` (same version, same secret),
    /// if nobody changed it since it was read.
    async fn require_consent(
        &self,
        credentials: &Credentials,
        base: &OpenIdentity,
        reason: &'static str,
    ) -> Result<Outcome, CredentialError> {
        let r = &base.record;
        let written = self
            .fenced(credentials, r, |current| {
                let mut next = current.clone();
                next.consent_required = true;
                next.updated_by = ACTOR.to_string();
                next.updated_at = now_rfc3339();
                let mut after = identity_summary(&next);
                after["consent_required"] = json!(true);
                after["reason"] = json!(reason);
                let event = LifecycleEvent::new(
                    "identity.consent_required",
                    ACTOR,
                    "identity",
                    &r.id,
                    Some(identity_summary(current)),
                    Some(after),
                );
                (next, event)
            })
            .await?;
        let Some(record) = written else {
            return superseded(credentials, &r.id).await;
        };
        tracing::warn!(identity = %r.id, server = %r.server, reason, "the identity needs its owner's consent again");
        let why = match reason {
            "invalid_grant" => "the provider refused its refresh token",
            _ => "its access token expired and there is no refresh token",
        };
        Ok(Outcome::Consent(
            Some(Arc::new(OpenIdentity {
                record,
                secret: base.secret.clone(),
            })),
            why,
        ))
    }

    /// One compare-and-set of `base`'s record through `Store::mutate` (the
    /// event and the invalidation go with it), refused when the stored
    /// version is no longer `base.version`. `None` when refused.
    async fn fenced(
        &self,
        credentials: &Credentials,
        base: &VaultRecord,
        change: impl Fn(&VaultRecord) -> (VaultRecord, LifecycleEvent),
    ) -> Result<Option<VaultRecord>, CredentialError> {
        let store = &credentials.store;
        let key = store.identity_key(&base.id);
        let result = store
            .mutate(&key, &[], &base.id, |current: Option<VaultRecord>| {
                let Some(current) = current.filter(|c| c.version == base.version) else {
                    return Err(Fence::Superseded);
                };
                let (next, event) = change(&current);
                Ok(Mutation {
                    new: Some(next),
                    event,
                })
            })
            .await;
        match result {
            Ok(written) => {
                // This replica sees its own write at once; the others when
                // the invalidation reaches them.
                credentials.cache.invalidate(&key).await;
                Ok(written)
            }
            Err(Fence::Superseded) => Ok(None),
            Err(Fence::Store(e)) => Err(e.into()),
        }
    }
}

/// Why a fenced write did not happen.
enum Fence {
    Superseded,
    Store(StoreError),
}

impl From<StoreError> for Fence {
    fn from(e: StoreError) -> Self {
        Fence::Store(e)
    }
}

/// The record as it is in Redis now (not the cache), opened. A version this
/// replica's cache may still hold is dropped from it.
async fn load(
    credentials: &Credentials,
    id: &str,
) -> Result<Option<Arc<OpenIdentity>>, CredentialError> {
    let key = credentials.store.identity_key(id);
    let Some(record) = credentials.store.get::<VaultRecord>(&key).await? else {
        return Ok(None);
    };
    let secret = record.open(&credentials.keys)?;
    Ok(Some(Arc::new(OpenIdentity { record, secret })))
}

/// After losing a fenced write: whatever is stored now.
async fn superseded(credentials: &Credentials, id: &str) -> Result<Outcome, CredentialError> {
    credentials
        .cache
        .invalidate(&credentials.store.identity_key(id))
        .await;
    Ok(match load(credentials, id).await? {
        Some(current) => settled(current),
        None => Outcome::Consent(None, "the identity was deleted"),
    })
}

/// An identity someone else settled: consent needed or ready to use.
fn settled(current: Arc<OpenIdentity>) -> Outcome {
    if current.record.consent_required {
        Outcome::Consent(Some(current), "the provider refused its refresh token")
    } else {
        Outcome::Fresh(current)
    }
}

/// No new token: the current one while it lasts, then a refusal.
fn fall_back(
    open: Arc<OpenIdentity>,
    why: &str,
    first: bool,
) -> Result<Arc<OpenIdentity>, RefreshError> {
    let r = &open.record;
    if !expired(r) {
        if first {
            tracing::warn!(
                identity = %r.id,
                server = %r.server,
                reason = %why,
                "cannot refresh the access token; using the current one until it expires"
            );
        }
        return Ok(open);
    }
    Err(RefreshError::Unavailable(format!(
        "the access token of identity '{}' for server '{}' has expired and could not be refreshed: {why}",
        r.id, r.server
    )))
}

fn consent(identity: &str, why: &'static str) -> RefreshError {
    RefreshError::ConsentNeeded {
        identity: identity.to_string(),
        why,
    }
}

/// The access token's expiry; a stored value that does not parse counts as
/// expired (a refresh writes a good one).
fn expiry(record: &VaultRecord) -> Option<OffsetDateTime> {
    let at = record.expires_at.as_deref()?;
    Some(OffsetDateTime::parse(at, &Rfc3339).unwrap_or(OffsetDateTime::UNIX_EPOCH))
}

/// `secs` from now as RFC 3339 (how `expires_in` is stored); None when out
/// of range.
pub fn expires_at_after(secs: i64) -> Option<String> {
    OffsetDateTime::now_utc()
        .checked_add(time::Duration::seconds(secs))?
        .format(&Rfc3339)
        .ok()
}

/// Whether the access token has expired (unknown expiry: it has not).
pub fn expired(record: &VaultRecord) -> bool {
    expiry(record).is_some_and(|at| at <= OffsetDateTime::now_utc())
}

/// A lock value nobody else will hold.
/// Releases the refresh lock if it is still this holder's.
async fn release(credentials: &Credentials, id: &str, lock: &str, token: &str) {
    match credentials.store.unlock(lock, token).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            identity = %id,
            "the refresh lock expired before the refresh ended; the version check kept the record consistent"
        ),
        Err(e) => {
            tracing::warn!(identity = %id, error = %e, "cannot release the refresh lock; it lapses on its own")
        }
    }
}

fn lock_token() -> String {
    format!("{}-{}", std::process::id(), latchkey_core::hex::random(16))
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_core::identity::{Availability, Status};
    use latchkey_core::vault::Sealed;

    fn record(kind: CredentialKind, expires_in: Option<i64>) -> VaultRecord {
        VaultRecord {
            id: "gh-alice".into(),
            server: "github".into(),
            owner: "alice".into(),
            availability: Availability::Private,
            status: Status::Enabled,
            kind,
            expires_at: expires_in.map(|s| {
                (OffsetDateTime::now_utc() + time::Duration::seconds(s))
                    .format(&Rfc3339)
                    .unwrap()
            }),
            scopes: vec![],
            consent_required: false,
            version: 1,
            created_by: "alice".into(),
            created_at: now_rfc3339(),
            updated_by: "alice".into(),
            updated_at: now_rfc3339(),
            sealed: Sealed {
                key_id: "k1".into(),
                nonce: String::new(),
                ciphertext: String::new(),
            },
        }
    }

    #[test]
    fn due_within_the_margin_or_past_never_when_unknown_or_static() {
        let r = Refresher::default().with_timing(
            Duration::from_secs(60),
            Duration::from_secs(1),
            LOCK_TTL,
        );
        assert!(!r.due(&record(CredentialKind::Oauth, Some(3600))));
        assert!(r.due(&record(CredentialKind::Oauth, Some(30))));
        assert!(r.due(&record(CredentialKind::Oauth, Some(-5))));
        assert!(!r.due(&record(CredentialKind::Oauth, None)));
        assert!(!r.due(&record(CredentialKind::Static, Some(-5))));
        let mut garbled = record(CredentialKind::Oauth, Some(3600));
        garbled.expires_at = Some("tomorrow".into());
        assert!(r.due(&garbled) && expired(&garbled));
        assert!(!expired(&record(CredentialKind::Oauth, Some(30))));
    }
}
