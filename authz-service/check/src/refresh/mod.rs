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
//! Tokens of servers with `[servers.exchange]` go the same way, renewed by
//! exchanging the caller's token again instead of with a refresh token; the
//! first one is made under the same lock, so fifty concurrent first calls
//! exchange once. What the lock holder does is `holder`'s.
//!
//! A rotated refresh token replaces the old one in the same write; a
//! provider that sends none keeps the old one. `invalid_grant` (or an
//! expired token with no refresh token) marks the identity
//! `consent_required`, so its owner is asked again instead of failing
//! forever. A provider that cannot be reached is survived while the current
//! access token is still valid, and fails closed once it has expired.

use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::exchange::{Exchanger, Exchangers};
use crate::oauth::Providers;
use latchkey_core::config::ConnectConfig;
use latchkey_core::identity::{CredentialKind, IdentitySecret, VaultRecord};
use latchkey_core::metrics::{RefreshCounter, RefreshResult};
use latchkey_core::vault::Secret;
use latchkey_store::cache::OpenIdentity;
use latchkey_store::credentials::{CredentialError, Credentials};

mod holder;

use self::holder::{load, settled};

/// Who the lifecycle events of refreshes name as the actor.
pub const ACTOR: &str = "latchkey (token refresh)";

/// Who the lifecycle events of exchanged tokens name as the actor.
pub const EXCHANGE_ACTOR: &str = "latchkey (token exchange)";

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
    /// The identity provider (or the server's authorization server)
    /// refused to exchange the caller's token: what it said.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Credential(#[from] CredentialError),
}

/// How a token that is due (or that the upstream refused) is renewed.
#[derive(Clone)]
enum Renewal {
    /// With the identity's refresh token, at its server's provider.
    RefreshToken,
    /// By exchanging the caller's token again (`[servers.exchange]`).
    Exchange(Arc<ExchangeCall>),
}

/// One token exchange the request path asks for: whose token, for whom,
/// and which identity keeps the result. `Debug` shows no token.
pub struct ExchangeCall {
    pub exchanger: Exchanger,
    /// The caller's verified token.
    pub subject: Secret,
    /// The `actor_token`, where the agent is its own principal.
    pub actor: Option<Secret>,
    pub user: String,
    pub agent: Option<String>,
    /// `latchkey_core::identity::exchanged_identity_id` of the above.
    pub id: String,
    pub server: String,
}

/// Why the last attempt failed, as the requests after it answer.
#[derive(Clone)]
enum Failure {
    /// Use the current token while it lasts.
    Unavailable(String),
    /// Refused outright: no token, whatever is stored.
    Refused(String),
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
    failed: Option<(Instant, u64, Failure)>,
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
    /// The exchange was refused; what was said.
    Refused(String),
}

/// Cheap to clone (shared caches and counters): a refresh that outlives the
/// request that started it runs on a clone.
#[derive(Clone)]
pub struct Refresher {
    providers: Providers,
    exchangers: Exchangers,
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
            exchangers: Exchangers::default(),
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

    /// Also renews the tokens of the servers with `[servers.exchange]`.
    pub fn with_exchangers(mut self, exchangers: Exchangers) -> Self {
        self.exchangers = exchangers;
        self
    }

    /// The token exchange of `server`, when it has `[servers.exchange]`.
    pub fn exchanger(&self, server: &str) -> Option<&Exchanger> {
        self.exchangers.get(server)
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
        let id = open.record.id.clone();
        self.single_flight(credentials, &id, Some(open), refused, Renewal::RefreshToken)
            .await
    }

    /// The exchanged token `call` asks for: `current` (what is stored under
    /// `call.id`, if anything) while it is not due and the upstream did not
    /// refuse it; else a new exchange, once across replicas, stored sealed
    /// under `call.id` for every replica to use.
    pub async fn exchanged(
        &self,
        credentials: &Credentials,
        current: Option<Arc<OpenIdentity>>,
        refused: bool,
        call: ExchangeCall,
    ) -> Result<Arc<OpenIdentity>, RefreshError> {
        if let Some(open) = &current
            && !refused
            && !self.due(&open.record)
        {
            return Ok(open.clone());
        }
        let id = call.id.clone();
        self.single_flight(
            credentials,
            &id,
            current,
            refused,
            Renewal::Exchange(Arc::new(call)),
        )
        .await
    }

    /// Renews identity `id` (`current`: as this request has it; `None`:
    /// there is none yet) once per replica, and across replicas.
    async fn single_flight(
        &self,
        credentials: &Credentials,
        id: &str,
        current: Option<Arc<OpenIdentity>>,
        refused: bool,
        renewal: Renewal,
    ) -> Result<Arc<OpenIdentity>, RefreshError> {
        let seen = current.as_ref().map_or(0, |o| o.record.version);
        let slot = self.slots.get_with(id.to_string(), Default::default);
        let mut slot = slot.lock().await;
        // A refused token is only answered by a newer version. With nothing
        // stored (an exchanged token not made yet, or dropped when its
        // person or agent was disabled), what this replica remembers is not
        // used: Redis says what exists.
        if let Some(latest) = slot.latest.as_ref().filter(|_| current.is_some())
            && latest.record.version >= seen
            && (!refused || latest.record.version > seen)
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
        if let Some((at, version, failure)) = &slot.failed
            && *version == seen
            && at.elapsed() < RETRY_PAUSE
        {
            return match failure {
                Failure::Unavailable(why) => fall_back(id, current, why, false),
                Failure::Refused(why) => Err(RefreshError::Refused(why.clone())),
            };
        }
        match self
            .across_replicas(credentials, id, seen, refused, &renewal)
            .await?
        {
            Outcome::Fresh(identity) => {
                slot.short_lived_since = self.due(&identity.record).then(Instant::now);
                slot.latest = Some(identity.clone());
                slot.failed = None;
                Ok(identity)
            }
            Outcome::Consent(marked, why) => {
                slot.latest = marked;
                slot.short_lived_since = None;
                Err(consent(id, why))
            }
            Outcome::Unavailable(why) => {
                slot.failed = Some((Instant::now(), seen, Failure::Unavailable(why.clone())));
                fall_back(id, current, &why, true)
            }
            Outcome::Refused(why) => {
                slot.failed = Some((Instant::now(), seen, Failure::Refused(why.clone())));
                Err(RefreshError::Refused(why))
            }
        }
    }

    /// Takes the refresh lock and refreshes, or waits for whoever holds it.
    async fn across_replicas(
        &self,
        credentials: &Credentials,
        id: &str,
        seen: u64,
        refused: bool,
        renewal: &Renewal,
    ) -> Result<Outcome, CredentialError> {
        let store = &credentials.store;
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
                let renewal = renewal.clone();
                let (held, lock) = (id.to_string(), lock.clone());
                let refresh = tokio::spawn(async move {
                    let outcome = holder
                        .as_holder(&owned, &held, seen, waited, refused, &renewal)
                        .await;
                    release(&owned, &held, &lock, &token).await;
                    outcome
                });
                let budget = deadline
                    .saturating_duration_since(Instant::now())
                    .max(MIN_HOLDER_WAIT);
                return match tokio::time::timeout(budget, refresh).await {
                    Ok(Ok(outcome)) => outcome,
                    Ok(Err(e)) => Ok(Outcome::Unavailable(format!(
                        "the refresh of identity '{id}' failed: {e}"
                    ))),
                    Err(_) => Ok(Outcome::Unavailable(format!(
                        "no new token for identity '{id}' within {} ms (the provider has not answered); it is stored when it comes, retry shortly",
                        budget.as_millis()
                    ))),
                };
            }
            // Another replica (or another process) is refreshing: use its result.
            waited = true;
            loop {
                tokio::time::sleep(POLL).await;
                match load(credentials, id).await? {
                    Some(current)
                        if current.record.version != seen || current.record.consent_required =>
                    {
                        self.counts
                            .count(&current.record.server, RefreshResult::Waited);
                        return Ok(settled(current));
                    }
                    Some(_) => {}
                    // Not there yet: the holder is exchanging a first token
                    // (or one that was dropped).
                    None if matches!(renewal, Renewal::Exchange(_)) => {}
                    None => return Ok(Outcome::Consent(None, "the identity was deleted")),
                }
                if Instant::now() >= deadline {
                    let server = match renewal {
                        Renewal::Exchange(call) => call.server.clone(),
                        Renewal::RefreshToken => load(credentials, id)
                            .await?
                            .map(|c| c.record.server.clone())
                            .unwrap_or_default(),
                    };
                    self.counts.count(&server, RefreshResult::Unavailable);
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
}

/// No new token: the current one while it lasts, then a refusal.
fn fall_back(
    id: &str,
    open: Option<Arc<OpenIdentity>>,
    why: &str,
    first: bool,
) -> Result<Arc<OpenIdentity>, RefreshError> {
    let Some(open) = open else {
        return Err(RefreshError::Unavailable(format!(
            "no token could be had for identity '{id}': {why}"
        )));
    };
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
    use latchkey_core::identity::{Availability, Status, now_rfc3339};
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
            exchanged: None,
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
