//! The operator API (`latchkey.admin.v1.Admin`): who is asking (a token from
//! the organisation's identity provider, audience `[admin] audience`), what
//! they may do (their own identities and connections always; everything
//! else by capability), and doing it through `credentials` and `store`, one
//! audited atomic change at a time. Secrets go in, never out.

use std::sync::Arc;

use serde::de::DeserializeOwned;

use latchkey_proto::admin as pb;
use latchkey_proto::admin::admin_server::Admin;
use tonic::{Request, Response, Status as RpcStatus};

use crate::shared::ControlState;

mod agent_requests;
mod approvals;
mod operator;
mod wire;

use self::operator::{Operator, Whose};
use self::wire::{
    availability_from, change_status, connection_pb, credential_status, identity_pb,
    identity_secret_from, principal_pb, status_from, store_status,
};
use latchkey_check::authn::bearer_token;
use latchkey_core::audit::{LifecycleEvent, identity_summary, principal_summary};
use latchkey_core::capability::{Capabilities, Capability};
use latchkey_core::config::IdentityScheme;
use latchkey_core::identity::{
    Availability, ConnectionRecord, EXCHANGED_ID_PREFIX, PrincipalKind, PrincipalRecord, Status,
    UseError, VaultRecord, now_rfc3339,
};
use latchkey_store::credentials::{ChangeError, NewIdentity, PutError, RotateError};
use latchkey_store::store::{Mutation, StoreError};

pub struct AdminService {
    pub state: Arc<ControlState>,
}

type Reply<T> = Result<Response<T>, RpcStatus>;

/// Response metadata carrying what the caller should know about a change
/// that was made but may not be seen everywhere yet (`latchkey_store::propagation`).
pub const WARNING_METADATA: &str = "latchkey-warning";

impl AdminService {
    /// The answer to a change, sent once every replica has applied it (or the
    /// wait ran out, which the answer then says).
    async fn settled<T>(&self, message: T) -> Reply<T> {
        let settled = latchkey_store::propagation::after_change(
            &self.state.credentials.store,
            &self.state.metrics,
        )
        .await;
        let mut response = Response::new(message);
        if let Some(warning) = settled.warning() {
            // Metadata values are visible ASCII; the warning is built from ids and fixed text.
            if let Ok(value) = warning.parse() {
                response.metadata_mut().insert(WARNING_METADATA, value);
            }
        }
        Ok(response)
    }

    /// A handler's start: who calls (refused unless authenticated) and
    /// what they sent.
    async fn open<T>(&self, request: Request<T>) -> Result<(Operator, T), RpcStatus> {
        let op = self.operator(&request).await?;
        Ok((op, request.into_inner()))
    }

    async fn operator<T>(&self, request: &Request<T>) -> Result<Operator, RpcStatus> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let token = bearer_token(header).map_err(|e| RpcStatus::unauthenticated(e.to_string()))?;
        let admin = &self.state.config.admin;
        let (caller, claims) = self
            .state
            .verifier
            .verify_with_claims(token, &admin.audience)
            .await
            .map_err(|e| {
                if e.is_client_error() {
                    RpcStatus::unauthenticated(format!(
                        "{e} (admin tokens need audience '{}')",
                        admin.audience
                    ))
                } else {
                    RpcStatus::unavailable(e.to_string())
                }
            })?;
        let status = self
            .state
            .credentials
            .principal_status(PrincipalKind::User, &caller.subject)
            .await
            .map_err(credential_status)?;
        if status == Status::Disabled {
            return Err(RpcStatus::permission_denied(format!(
                "user '{}' is deactivated",
                caller.subject
            )));
        }
        Ok(Operator {
            subject: caller.subject.clone(),
            capabilities: Capabilities::from_claims(&claims, &admin.claim_grants()),
            caller,
        })
    }

    async fn identity_record(&self, id: &str) -> Result<VaultRecord, RpcStatus> {
        let store = &self.state.credentials.store;
        store
            .get::<VaultRecord>(&store.identity_key(id))
            .await
            .map_err(store_status)?
            .ok_or_else(|| RpcStatus::not_found(format!("there is no identity '{id}'")))
    }

    /// Who may change an identity: its owner while it is private; a global
    /// identity belongs to the organisation, so only identity managers.
    fn may_manage(op: &Operator, record: &VaultRecord, to: &str) -> Result<(), RpcStatus> {
        match record.availability {
            Availability::Private => {
                op.require_unless_self(&record.owner, Capability::IdentitiesManage, to)
            }
            Availability::Global => op.require(Capability::IdentitiesManage, to),
        }
    }

    /// Applies `change` to identity `id` (metadata only; the secret and its
    /// version are untouched) as one audited change.
    async fn change_identity(
        &self,
        op: &Operator,
        id: &str,
        action: &'static str,
        change: impl Fn(&mut VaultRecord),
    ) -> Result<VaultRecord, RpcStatus> {
        let store = &self.state.credentials.store;
        let key = store.identity_key(id);
        let updated = store
            .mutate(&key, &[], id, |current: Option<VaultRecord>| {
                let Some(before) = current else {
                    return Err(ChangeError::NotFound(format!(
                        "there is no identity '{id}'"
                    )));
                };
                let mut after = before.clone();
                change(&mut after);
                after.updated_by = op.subject.clone();
                after.updated_at = now_rfc3339();
                Ok(Mutation {
                    event: LifecycleEvent::new(
                        action,
                        &op.subject,
                        "identity",
                        id,
                        Some(identity_summary(&before)),
                        Some(identity_summary(&after)),
                    ),
                    new: Some(after),
                })
            })
            .await
            .map_err(change_status)?;
        updated.ok_or_else(|| RpcStatus::not_found(format!("there is no identity '{id}'")))
    }

    async fn set_principal_status(
        &self,
        op: &Operator,
        kind: PrincipalKind,
        id: &str,
        status: Status,
    ) -> Result<PrincipalRecord, RpcStatus> {
        if id.is_empty() {
            return Err(RpcStatus::invalid_argument(format!(
                "name the {} to change",
                kind.as_str()
            )));
        }
        let action = match (kind, status) {
            (PrincipalKind::User, Status::Disabled) => "user.deactivate",
            (PrincipalKind::User, Status::Enabled) => "user.reactivate",
            (PrincipalKind::Agent, Status::Disabled) => "agent.disable",
            (PrincipalKind::Agent, Status::Enabled) => "agent.enable",
        };
        let store = &self.state.credentials.store;
        let written = store
            .mutate(
                &store.principal_key(kind, id),
                &[store.principals_index(kind)],
                id,
                |current: Option<PrincipalRecord>| {
                    let after = PrincipalRecord {
                        id: id.to_string(),
                        kind,
                        status,
                        updated_by: op.subject.clone(),
                        updated_at: now_rfc3339(),
                        // A status change keeps what SCIM says of their groups.
                        scim_groups: current.as_ref().and_then(|c| c.scim_groups.clone()),
                    };
                    Ok::<_, StoreError>(Mutation {
                        event: LifecycleEvent::new(
                            action,
                            &op.subject,
                            kind.as_str(),
                            id,
                            // No record means it was enabled.
                            Some(current.as_ref().map(principal_summary).unwrap_or_else(
                                || serde_json::json!({ "kind": kind, "status": Status::Enabled }),
                            )),
                            Some(principal_summary(&after)),
                        ),
                        new: Some(after),
                    })
                },
            )
            .await
            .map_err(store_status)?;
        let written = written.ok_or_else(|| RpcStatus::internal("the change was not written"))?;
        if status == Status::Disabled {
            // Tokens exchanged for them are dropped, not kept for later.
            let dropped = self
                .state
                .credentials
                .drop_exchanged(&op.subject, kind, id)
                .await
                .map_err(change_status)?;
            if !dropped.is_empty() {
                tracing::info!(principal = %id, kind = kind.as_str(), dropped = dropped.len(), "exchanged tokens dropped");
            }
        }
        Ok(written)
    }

    /// What a list call returns, for identities and connections alike:
    /// the records of one index, read in one round trip. `owner` picks it:
    /// empty is the caller's own, `*` everyone's (`everyone`), another name
    /// that person's (`of`); anything not the caller's needs `capability`.
    /// `key` turns an index member into its record's key.
    async fn listed<T: DeserializeOwned>(
        &self,
        op: &Operator,
        owner: &str,
        (capability, what): (Capability, &str),
        everyone: String,
        of: impl Fn(&str) -> String,
        key: impl Fn(&str) -> String,
    ) -> Result<Vec<T>, RpcStatus> {
        let index = match op.whose(owner, capability, what)? {
            Whose::Mine => of(&op.subject),
            Whose::Everyone => everyone,
            Whose::Of(owner) => of(&owner),
        };
        let store = &self.state.credentials.store;
        let members = store.members(&index).await.map_err(store_status)?;
        let keys: Vec<String> = members.iter().map(|m| key(m)).collect();
        store.get_many(&keys).await.map_err(store_status)
    }

    async fn change_connection(
        &self,
        op: &Operator,
        user: &str,
        gateway: &str,
        action: &'static str,
        create: bool,
        change: impl Fn(&mut ConnectionRecord),
    ) -> Result<ConnectionRecord, RpcStatus> {
        self.state
            .credentials
            .change_connection(&op.subject, user, gateway, action, create, change)
            .await
            .map_err(change_status)
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn who_am_i(&self, request: Request<pb::WhoAmIRequest>) -> Reply<pb::WhoAmIResponse> {
        let op = self.operator(&request).await?;
        Ok(Response::new(pb::WhoAmIResponse {
            subject: op.subject,
            capabilities: op.capabilities.names(),
        }))
    }

    async fn create_identity(
        &self,
        request: Request<pb::CreateIdentityRequest>,
    ) -> Reply<pb::Identity> {
        let (op, req) = self.open(request).await?;
        if self.state.config.server(&req.server).is_none() {
            return Err(RpcStatus::invalid_argument(format!(
                "unknown server '{}'; servers are declared under [[servers]] in the config",
                req.server
            )));
        }
        let (secret, meta) = identity_secret_from(req.secret, req.oauth)?;
        let owner = op.acting_for(
            &req.owner,
            Capability::IdentitiesManage,
            "creating an identity for someone else",
        )?;
        let availability = availability_from(req.availability)?.unwrap_or(Availability::Private);
        if availability == Availability::Global {
            op.require(Capability::IdentitiesManage, "creating a global identity")?;
        }
        let id = if req.id.is_empty() {
            format!("{}-{}", req.server, latchkey_core::hex::random(6))
        } else {
            req.id.clone()
        };
        // Exchanged tokens are stored under ids of their own: a person who
        // stored a secret there would have it injected instead of the token
        // the identity provider agreed to (or refused) to issue.
        if id.starts_with(EXCHANGED_ID_PREFIX) {
            return Err(RpcStatus::invalid_argument(format!(
                "identity ids starting with '{EXCHANGED_ID_PREFIX}' hold the tokens Latchkey exchanges ([servers.exchange]); choose another id"
            )));
        }
        // Ids the config names for shared assignments belong to the
        // organisation: only a global identity for that server, created by
        // someone who manages identities, may take one.
        if let Some((place, server)) = self.state.config.reserved_identity(&id) {
            op.require(
                Capability::IdentitiesManage,
                &format!("creating identity '{id}', reserved for the shared identity of {place}"),
            )?;
            if availability != Availability::Global || server != req.server {
                return Err(RpcStatus::invalid_argument(format!(
                    "identity id '{id}' is reserved for the shared identity of {place}: create it with --global for server '{server}', or choose another id"
                )));
            }
        }
        let record = self
            .state
            .credentials
            .put_identity(NewIdentity {
                actor: &op.subject,
                id: &id,
                server: &req.server,
                owner: &owner,
                availability,
                secret: &secret,
                replace: false,
                meta,
            })
            .await
            .map_err(|e| match e {
                PutError::Exists(_) => RpcStatus::already_exists(e.to_string()),
                PutError::Mismatch(_) => RpcStatus::already_exists(e.to_string()),
                PutError::Raced(_) => RpcStatus::aborted(e.to_string()),
                PutError::BadId(_) => RpcStatus::invalid_argument(e.to_string()),
                PutError::Credential(c) => credential_status(c),
            })?;
        self.settled(identity_pb(&record)).await
    }

    async fn list_identities(
        &self,
        request: Request<pb::ListIdentitiesRequest>,
    ) -> Reply<pb::ListIdentitiesResponse> {
        let (op, req) = self.open(request).await?;
        let store = &self.state.credentials.store;
        let records: Vec<VaultRecord> = self
            .listed(
                &op,
                &req.owner,
                (Capability::IdentitiesManage, "identities"),
                store.identities_index(),
                |owner| store.owner_index(owner),
                |id| store.identity_key(id),
            )
            .await?;
        Ok(Response::new(pb::ListIdentitiesResponse {
            identities: records
                .iter()
                .filter(|r| req.server.is_empty() || r.server == req.server)
                .map(identity_pb)
                .collect(),
        }))
    }

    async fn get_identity(&self, request: Request<pb::GetIdentityRequest>) -> Reply<pb::Identity> {
        let op = self.operator(&request).await?;
        let record = self.identity_record(&request.get_ref().id).await?;
        // Global identities are selectable by anyone, so anyone may see them.
        if record.availability == Availability::Private {
            op.require_unless_self(
                &record.owner,
                Capability::IdentitiesManage,
                "showing another user's identity",
            )?;
        }
        Ok(Response::new(identity_pb(&record)))
    }

    async fn set_identity_status(
        &self,
        request: Request<pb::SetIdentityStatusRequest>,
    ) -> Reply<pb::Identity> {
        let (op, req) = self.open(request).await?;
        let status = status_from(req.status)?;
        let record = self.identity_record(&req.id).await?;
        Self::may_manage(&op, &record, "changing this identity")?;
        let action = match status {
            Status::Enabled => "identity.enable",
            Status::Disabled => "identity.disable",
        };
        let updated = self
            .change_identity(&op, &req.id, action, |r| r.status = status)
            .await?;
        self.settled(identity_pb(&updated)).await
    }

    async fn set_identity_availability(
        &self,
        request: Request<pb::SetIdentityAvailabilityRequest>,
    ) -> Reply<pb::Identity> {
        let (op, req) = self.open(request).await?;
        let availability = availability_from(req.availability)?.ok_or_else(|| {
            RpcStatus::invalid_argument("say which availability: PRIVATE or GLOBAL")
        })?;
        let record = self.identity_record(&req.id).await?;
        // Either direction moves ownership between a person and the organisation.
        op.require(
            Capability::IdentitiesManage,
            "making an identity global or private",
        )?;
        if availability == Availability::Private
            && let Some((place, _)) = self.state.config.reserved_identity(&record.id)
        {
            return Err(RpcStatus::failed_precondition(format!(
                "identity '{}' is the shared identity of {place} and must stay global",
                record.id
            )));
        }
        let action = match availability {
            Availability::Global => "identity.make_global",
            Availability::Private => "identity.make_private",
        };
        let updated = self
            .change_identity(&op, &record.id, action, |r| r.availability = availability)
            .await?;
        self.settled(identity_pb(&updated)).await
    }

    async fn delete_identity(
        &self,
        request: Request<pb::DeleteIdentityRequest>,
    ) -> Reply<pb::DeleteIdentityResponse> {
        let op = self.operator(&request).await?;
        let id = request.into_inner().id;
        let record = self.identity_record(&id).await?;
        Self::may_manage(&op, &record, "deleting this identity")?;
        self.state
            .credentials
            .delete_identity(&op.subject, &record.id)
            .await
            .map_err(change_status)?;
        self.settled(pb::DeleteIdentityResponse {}).await
    }

    async fn set_user_status(
        &self,
        request: Request<pb::SetPrincipalStatusRequest>,
    ) -> Reply<pb::Principal> {
        let (op, req) = self.open(request).await?;
        op.require(
            Capability::UsersManage,
            "deactivating or reactivating users",
        )?;
        let status = status_from(req.status)?;
        if req.id == op.subject && status == Status::Disabled {
            return Err(RpcStatus::failed_precondition(
                "you cannot deactivate yourself; ask another user manager",
            ));
        }
        let record = self
            .set_principal_status(&op, PrincipalKind::User, &req.id, status)
            .await?;
        self.settled(principal_pb(&record)).await
    }

    async fn set_agent_status(
        &self,
        request: Request<pb::SetPrincipalStatusRequest>,
    ) -> Reply<pb::Principal> {
        let (op, req) = self.open(request).await?;
        op.require(Capability::AgentsManage, "disabling or enabling agents")?;
        let status = status_from(req.status)?;
        let record = self
            .set_principal_status(&op, PrincipalKind::Agent, &req.id, status)
            .await?;
        self.settled(principal_pb(&record)).await
    }

    async fn use_identity(
        &self,
        request: Request<pb::UseIdentityRequest>,
    ) -> Reply<pb::Connection> {
        let (op, req) = self.open(request).await?;
        let user = op.acting_for(
            &req.user,
            Capability::ConnectionsManage,
            "changing another user's connection",
        )?;
        let gateway = self.state.config.gateway(&req.gateway).ok_or_else(|| {
            RpcStatus::invalid_argument(format!("unknown gateway '{}'", req.gateway))
        })?;
        let per_user = gateway
            .assignments
            .iter()
            .any(|a| a.server == req.server && a.scheme == IdentityScheme::PerUser);
        if !per_user {
            return Err(RpcStatus::invalid_argument(format!(
                "gateway '{}' has no per-user assignment of server '{}'",
                req.gateway, req.server
            )));
        }
        let record = self.identity_record(&req.identity_id).await?;
        // Private means private: no capability lets anyone use another's.
        record.usable_by(&user, &req.server).map_err(|e| match e {
            UseError::PrivateToOwner(_) => RpcStatus::permission_denied(e.to_string()),
            _ => RpcStatus::failed_precondition(e.to_string()),
        })?;
        let server = req.server.clone();
        let identity_id = req.identity_id.clone();
        let connection = self
            .change_connection(
                &op,
                &user,
                &req.gateway,
                "connection.use_identity",
                true,
                |c| {
                    c.identities.insert(server.clone(), identity_id.clone());
                },
            )
            .await?;
        self.settled(connection_pb(&connection)).await
    }

    async fn list_connections(
        &self,
        request: Request<pb::ListConnectionsRequest>,
    ) -> Reply<pb::ListConnectionsResponse> {
        let (op, req) = self.open(request).await?;
        let store = &self.state.credentials.store;
        let records: Vec<ConnectionRecord> = self
            .listed(
                &op,
                &req.user,
                (Capability::ConnectionsManage, "connections"),
                store.connections_index(),
                |user| store.user_connections_index(user),
                // The connection indexes hold the records' keys.
                str::to_string,
            )
            .await?;
        Ok(Response::new(pb::ListConnectionsResponse {
            connections: records.iter().map(connection_pb).collect(),
        }))
    }

    async fn set_connection_status(
        &self,
        request: Request<pb::SetConnectionStatusRequest>,
    ) -> Reply<pb::Connection> {
        let (op, req) = self.open(request).await?;
        let user = op.acting_for(
            &req.user,
            Capability::ConnectionsManage,
            "changing another user's connection",
        )?;
        let status = status_from(req.status)?;
        let action = match status {
            Status::Enabled => "connection.enable",
            Status::Disabled => "connection.disable",
        };
        let connection = self
            .change_connection(&op, &user, &req.gateway, action, false, |c| {
                c.status = status
            })
            .await?;
        self.settled(connection_pb(&connection)).await
    }

    async fn list_approvals(
        &self,
        request: Request<pb::ListApprovalsRequest>,
    ) -> Reply<pb::ListApprovalsResponse> {
        let op = self.operator(&request).await?;
        let all = request.get_ref().all;
        Ok(Response::new(approvals::list(&self.state, &op, all).await?))
    }

    async fn get_approval(&self, request: Request<pb::GetApprovalRequest>) -> Reply<pb::Approval> {
        let op = self.operator(&request).await?;
        let id = &request.get_ref().id;
        Ok(Response::new(approvals::get(&self.state, &op, id).await?))
    }

    async fn decide_approval(
        &self,
        request: Request<pb::DecideApprovalRequest>,
    ) -> Reply<pb::Approval> {
        let op = self.operator(&request).await?;
        let decided = approvals::decide(&self.state, &op, request.into_inner()).await?;
        Ok(Response::new(decided))
    }

    async fn list_agent_requests(
        &self,
        request: Request<pb::ListAgentRequestsRequest>,
    ) -> Reply<pb::ListAgentRequestsResponse> {
        let op = self.operator(&request).await?;
        Ok(Response::new(agent_requests::list(&self.state, &op).await?))
    }

    async fn decide_agent_request(
        &self,
        request: Request<pb::DecideAgentRequestRequest>,
    ) -> Reply<pb::AgentRequest> {
        let (op, request) = self.open(request).await?;
        let decided = agent_requests::decide(&self.state, &op, request).await?;
        self.settled(decided).await
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Reply<pb::ListKeysResponse> {
        let op = self.operator(&request).await?;
        op.require(Capability::KeysManage, "listing master keys")?;
        let credentials = &self.state.credentials;
        let active = credentials
            .store
            .active_key()
            .await
            .map_err(store_status)?
            .unwrap_or_else(|| credentials.keys.active_id().to_string());
        let counts = credentials
            .records_per_key()
            .await
            .map_err(credential_status)?;
        let mut ids: Vec<String> = credentials.keys.key_ids().map(str::to_string).collect();
        ids.extend(counts.keys().cloned());
        ids.push(active.clone());
        ids.sort();
        ids.dedup();
        Ok(Response::new(pb::ListKeysResponse {
            keys: ids
                .into_iter()
                .map(|id| pb::KeyInfo {
                    loaded: credentials.keys.has(&id),
                    active: id == active,
                    records: counts.get(&id).copied().unwrap_or(0),
                    id,
                })
                .collect(),
        }))
    }

    async fn rotate_keys(
        &self,
        request: Request<pb::RotateKeysRequest>,
    ) -> Reply<pb::RotateKeysResponse> {
        let op = self.operator(&request).await?;
        op.require(Capability::KeysManage, "rotating master keys")?;
        let to = request.into_inner().key_id;
        let done = self
            .state
            .credentials
            .rotate(&op.subject, &to)
            .await
            .map_err(|e| match e {
                RotateError::Credential(c) => credential_status(c),
                other => RpcStatus::failed_precondition(other.to_string()),
            })?;
        self.settled(pb::RotateKeysResponse {
            active_key: to,
            re_encrypted: done.re_encrypted,
            already_current: done.already_current,
        })
        .await
    }
}
