//! The admin API's wire forms: records as protobuf messages, protobuf
//! enums as the model's, and every store or vault error as the gRPC status
//! a client can act on (unavailable, aborted, not found, ...).

use latchkey_core::identity::{
    Availability, ConnectionRecord, IdentitySecret, PrincipalRecord, Status, VaultRecord,
};
use latchkey_core::vault::Secret;
use latchkey_proto::admin as pb;
use latchkey_store::credentials::{ChangeError, CredentialError, TokenMeta};
use latchkey_store::store::StoreError;
use tonic::Status as RpcStatus;

pub(super) fn store_status(e: StoreError) -> RpcStatus {
    match e {
        StoreError::Unavailable(_) => RpcStatus::unavailable(e.to_string()),
        StoreError::Contended(_) => RpcStatus::aborted(e.to_string()),
        StoreError::Corrupt { .. } => RpcStatus::data_loss(e.to_string()),
    }
}

pub(super) fn change_status(e: ChangeError) -> RpcStatus {
    match e {
        ChangeError::Store(s) => store_status(s),
        ChangeError::NotFound(m) => RpcStatus::not_found(m),
    }
}

pub(super) fn credential_status(e: CredentialError) -> RpcStatus {
    match e {
        CredentialError::Store(s) => store_status(s),
        CredentialError::Vault(v) => RpcStatus::failed_precondition(v.to_string()),
    }
}

pub(super) fn status_from(value: i32) -> Result<Status, RpcStatus> {
    match pb::Status::try_from(value) {
        Ok(pb::Status::Enabled) => Ok(Status::Enabled),
        Ok(pb::Status::Disabled) => Ok(Status::Disabled),
        _ => Err(RpcStatus::invalid_argument(
            "say which status: ENABLED or DISABLED",
        )),
    }
}

pub(super) fn availability_from(value: i32) -> Result<Option<Availability>, RpcStatus> {
    match pb::Availability::try_from(value) {
        Ok(pb::Availability::Unspecified) => Ok(None),
        Ok(pb::Availability::Private) => Ok(Some(Availability::Private)),
        Ok(pb::Availability::Global) => Ok(Some(Availability::Global)),
        Err(_) => Err(RpcStatus::invalid_argument(
            "availability is PRIVATE or GLOBAL",
        )),
    }
}

/// The secret of a new identity: a static value, or OAuth tokens with what
/// is known about them. Exactly one of the two.
pub(super) fn identity_secret_from(
    secret: String,
    oauth: Option<pb::OauthTokens>,
) -> Result<(IdentitySecret, TokenMeta), RpcStatus> {
    match oauth {
        None if secret.is_empty() => Err(RpcStatus::invalid_argument(
            "the identity needs a secret (the header value the server expects) or OAuth tokens",
        )),
        None => Ok((
            IdentitySecret::Static {
                value: Secret::new(secret),
            },
            TokenMeta::default(),
        )),
        Some(_) if !secret.is_empty() => Err(RpcStatus::invalid_argument(
            "give either a static secret or OAuth tokens, not both",
        )),
        Some(t) if t.access_token.is_empty() => Err(RpcStatus::invalid_argument(
            "OAuth tokens need at least an access token",
        )),
        Some(t) => {
            let expires_at = match t.expires_in {
                Some(secs) => Some(latchkey_check::refresh::expires_at_after(secs).ok_or_else(
                    || RpcStatus::invalid_argument(format!("expires_in {secs} is out of range")),
                )?),
                None => None,
            };
            Ok((
                IdentitySecret::Oauth {
                    access_token: Secret::new(t.access_token),
                    refresh_token: (!t.refresh_token.is_empty())
                        .then(|| Secret::new(t.refresh_token)),
                },
                TokenMeta {
                    expires_at,
                    scopes: t.scopes,
                    exchanged: None,
                },
            ))
        }
    }
}

pub fn identity_pb(r: &VaultRecord) -> pb::Identity {
    pb::Identity {
        id: r.id.clone(),
        server: r.server.clone(),
        owner: r.owner.clone(),
        availability: match r.availability {
            Availability::Private => pb::Availability::Private,
            Availability::Global => pb::Availability::Global,
        } as i32,
        status: status_pb(r.status) as i32,
        kind: r.kind.as_str().to_string(),
        version: r.version,
        created_by: r.created_by.clone(),
        created_at: r.created_at.clone(),
        updated_by: r.updated_by.clone(),
        updated_at: r.updated_at.clone(),
        key_id: r.sealed.key_id.clone(),
        expires_at: r.expires_at.clone().unwrap_or_default(),
        scopes: r.scopes.clone(),
        consent_required: r.consent_required,
    }
}

pub(super) fn status_pb(s: Status) -> pb::Status {
    match s {
        Status::Enabled => pb::Status::Enabled,
        Status::Disabled => pb::Status::Disabled,
    }
}

pub(super) fn principal_pb(r: &PrincipalRecord) -> pb::Principal {
    pb::Principal {
        id: r.id.clone(),
        kind: r.kind.as_str().to_string(),
        status: status_pb(r.status) as i32,
        updated_by: r.updated_by.clone(),
        updated_at: r.updated_at.clone(),
    }
}

pub(super) fn connection_pb(r: &ConnectionRecord) -> pb::Connection {
    pb::Connection {
        user: r.user.clone(),
        gateway: r.gateway.clone(),
        status: status_pb(r.status) as i32,
        identities: r
            .identities
            .iter()
            .map(|(server, id)| pb::ServerIdentity {
                server: server.clone(),
                identity_id: id.clone(),
            })
            .collect(),
        updated_by: r.updated_by.clone(),
        updated_at: r.updated_at.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_status_is_refused() {
        assert!(status_from(0).is_err());
        assert_eq!(status_from(2).unwrap(), Status::Disabled);
        assert_eq!(availability_from(0).unwrap(), None);
    }
}
