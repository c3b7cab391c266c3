//! What the holder of an identity's refresh lock does: looks at the record
//! again, gets a new token (a refresh token grant at the server's provider,
//! or a token exchange), and writes it with a compare-and-set on the version
//! it read, or marks the identity `consent_required`. A first exchanged
//! token is stored as a new private identity of its person.

use std::sync::Arc;

use serde_json::json;
use time::format_description::well_known::Rfc3339;

use super::{ACTOR, EXCHANGE_ACTOR, ExchangeCall, Outcome, Refresher, Renewal, expired};
use crate::exchange::ExchangeError;
use crate::oauth::{OauthError, TokenSet};
use latchkey_core::audit::{LifecycleEvent, identity_summary};
use latchkey_core::identity::{Availability, Exchanged, IdentitySecret, VaultRecord, now_rfc3339};
use latchkey_core::metrics::RefreshResult;
use latchkey_store::cache::OpenIdentity;
use latchkey_store::credentials::{CredentialError, Credentials, NewIdentity, PutError, TokenMeta};
use latchkey_store::store::{Mutation, StoreError};

impl Refresher {
    /// Holding the lock: look again, then refresh and write with fencing.
    pub(super) async fn as_holder(
        &self,
        credentials: &Credentials,
        id: &str,
        seen: u64,
        waited: bool,
        refused: bool,
        renewal: &Renewal,
    ) -> Result<Outcome, CredentialError> {
        let base = match (load(credentials, id).await?, renewal) {
            (Some(base), _) => base,
            (None, Renewal::Exchange(call)) => return self.first_exchange(credentials, call).await,
            (None, Renewal::RefreshToken) => {
                return Ok(Outcome::Consent(None, "the identity was deleted"));
            }
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
        if let Renewal::Exchange(call) = renewal {
            return match call
                .exchanger
                .exchange(&call.subject, call.actor.as_ref())
                .await
            {
                Ok(x) => {
                    let exchanged = exchanged_meta(call, x.jti);
                    self.store_tokens(credentials, &base, x.tokens, Some(exchanged))
                        .await
                }
                Err(e) => Ok(self.exchange_failed(call, e)),
            };
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
            Ok(tokens) => self.store_tokens(credentials, &base, tokens, None).await,
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

    /// A first token for `call` (nothing stored under its id): exchanged
    /// and stored as a new private identity of the caller. Losing the race
    /// to create it means using the one that won.
    async fn first_exchange(
        &self,
        credentials: &Credentials,
        call: &ExchangeCall,
    ) -> Result<Outcome, CredentialError> {
        let x = match call
            .exchanger
            .exchange(&call.subject, call.actor.as_ref())
            .await
        {
            Ok(x) => x,
            Err(e) => return Ok(self.exchange_failed(call, e)),
        };
        let secret = IdentitySecret::Oauth {
            access_token: x.tokens.access_token.clone(),
            refresh_token: None,
        };
        let put = credentials
            .put_identity(NewIdentity {
                actor: EXCHANGE_ACTOR,
                id: &call.id,
                server: &call.server,
                owner: &call.user,
                availability: Availability::Private,
                secret: &secret,
                replace: false,
                meta: TokenMeta {
                    expires_at: x.tokens.expires_at.and_then(|t| t.format(&Rfc3339).ok()),
                    scopes: x.tokens.scopes.clone(),
                    exchanged: Some(exchanged_meta(call, x.jti)),
                },
            })
            .await;
        // This replica may have remembered that there was none.
        credentials
            .cache
            .invalidate(&credentials.store.identity_key(&call.id))
            .await;
        match put {
            Ok(record) => {
                self.counts.count(&call.server, RefreshResult::Exchanged);
                tracing::info!(identity = %call.id, server = %call.server, user = %call.user, "token exchanged");
                Ok(Outcome::Fresh(Arc::new(OpenIdentity { record, secret })))
            }
            Err(PutError::Exists(_) | PutError::Raced(_)) => {
                superseded(credentials, &call.id).await
            }
            Err(PutError::Credential(e)) => Err(e),
            Err(e @ (PutError::Mismatch(_) | PutError::BadId(_))) => {
                Ok(Outcome::Unavailable(e.to_string()))
            }
        }
    }

    /// The outcome of an exchange that gave no token (counted and logged;
    /// never with a token).
    fn exchange_failed(&self, call: &ExchangeCall, e: ExchangeError) -> Outcome {
        let why = e.to_string();
        match e {
            ExchangeError::Refused { .. } => {
                self.counts
                    .count(&call.server, RefreshResult::ExchangeRefused);
                tracing::warn!(server = %call.server, user = %call.user, reason = %why, "token exchange refused");
                Outcome::Refused(why)
            }
            ExchangeError::Unavailable { .. } | ExchangeError::Config { .. } => {
                self.counts.count(&call.server, RefreshResult::Unavailable);
                tracing::warn!(server = %call.server, user = %call.user, reason = %why, "token exchange failed");
                Outcome::Unavailable(why)
            }
        }
    }

    /// Writes the new tokens as the next version, only if the record still
    /// has the version they were refreshed from. `exchanged`: they came
    /// from a token exchange, and this is where.
    async fn store_tokens(
        &self,
        credentials: &Credentials,
        base: &OpenIdentity,
        tokens: TokenSet,
        exchanged: Option<Exchanged>,
    ) -> Result<Outcome, CredentialError> {
        let r = &base.record;
        let actor = if exchanged.is_some() {
            EXCHANGE_ACTOR
        } else {
            ACTOR
        };
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
                if exchanged.is_some() {
                    next.exchanged = exchanged.clone();
                }
                next.updated_by = actor.to_string();
                next.updated_at = now_rfc3339();
                let mut after = identity_summary(&next);
                after["expires_at"] = json!(next.expires_at);
                after["refresh_token_rotated"] = json!(rotated);
                let event = LifecycleEvent::new(
                    "identity.refresh",
                    actor,
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
            if exchanged.is_some() {
                RefreshResult::Exchanged
            } else if rotated {
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
pub(super) async fn load(
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
pub(super) async fn superseded(
    credentials: &Credentials,
    id: &str,
) -> Result<Outcome, CredentialError> {
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
pub(super) fn settled(current: Arc<OpenIdentity>) -> Outcome {
    if current.record.consent_required {
        Outcome::Consent(Some(current), "the provider refused its refresh token")
    } else {
        Outcome::Fresh(current)
    }
}

/// What the exchanged identity records of where its token came from.
fn exchanged_meta(call: &ExchangeCall, jti: Option<String>) -> Exchanged {
    Exchanged {
        kind: call.exchanger.kind().name().to_string(),
        agent: call.agent.clone(),
        jti,
    }
}
