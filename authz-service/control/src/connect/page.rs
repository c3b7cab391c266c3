//! `GET /connect/{gateway}[?request=<consent id>]`: the page itself. It
//! signs the person in first when there is no session, then shows each
//! per-user server of the gateway, connected or not, with what could
//! connect it (its HTML is `html`'s).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::Connect;
use super::errors::{expired_request, store_down};
use super::html::{Candidate, Page, Row, View, connect_page};
use super::session::{Session, well_formed_id};
use super::sign_in::start_sign_in;
use latchkey_check::consent::ConsentRecord;
use latchkey_core::config::Gateway;
use latchkey_core::identity::{Availability, ConnectionRecord, Status, VaultRecord};

/// The page's query: the consent request it was opened for, and the
/// server just connected (said in a notice).
#[derive(Deserialize)]
pub(super) struct PageQuery {
    request: Option<String>,
    connected: Option<String>,
}

pub(super) async fn page(
    State(c): State<Arc<Connect>>,
    Path(gateway): Path<String>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    match page_inner(&c, &gateway, q, &headers).await {
        Ok(r) => r,
        Err(p) => p.into_response(),
    }
}

async fn page_inner(
    c: &Connect,
    gateway: &str,
    q: PageQuery,
    headers: &HeaderMap,
) -> Result<Response, Page> {
    let gw = c.gateway(gateway)?;
    let request = q.request.as_deref().filter(|r| !r.is_empty());
    if request.is_some_and(|r| !well_formed_id(r)) {
        return Err(expired_request());
    }
    let Some((_, session)) = c.session(headers).await? else {
        return start_sign_in(c, &c.page_url(&gw.name, request, None)).await;
    };
    c.require_enabled(&session.user).await?;
    let consent = c.consent(request, &session.user, &gw.name).await?;
    let notice = q
        .connected
        .as_deref()
        .filter(|s| Connect::per_user_servers(gw).iter().any(|x| x == s))
        .map(|s| format!("Connected {s}."));
    Ok(render(c, gw, &session, request, consent.as_ref(), notice)
        .await?
        .into_response())
}

async fn render(
    c: &Connect,
    gw: &Gateway,
    session: &Session,
    request: Option<&str>,
    consent: Option<&ConsentRecord>,
    notice: Option<String>,
) -> Result<Page, Page> {
    let store = c.store();
    let connection: Option<ConnectionRecord> = store
        .get(&store.connection_key(&gw.name, &session.user))
        .await
        .map_err(|e| store_down(&e))?;
    let rows = c.rows(gw, &session.user, connection.as_ref()).await?;
    // A request whose server already has an identity (connected earlier,
    // or elsewhere) is complete as soon as its person opens it.
    if let Some(record) = consent.filter(|r| r.completed_at.is_none())
        && rows
            .iter()
            .any(|row| matches!(row, Row::Connected { server, .. } if *server == record.server))
    {
        c.complete_consent(request, &session.user, &record.server)
            .await;
    }
    let action_base = format!("{}/{}", c.cookie_path(), gw.name);
    let view = View {
        gateway: &gw.name,
        user: &session.user,
        csrf: &session.csrf,
        request,
        requested_server: consent.map(|r| r.server.as_str()),
        rows,
        notice,
        connection_disabled: connection
            .as_ref()
            .is_some_and(|c| c.status == Status::Disabled),
        action_base: &action_base,
    };
    Ok(connect_page(&view))
}

impl Connect {
    /// Whether `record` can back `user`'s requests to `server` right now.
    fn usable(record: &VaultRecord, user: &str, server: &str) -> bool {
        record.usable_by(user, server).is_ok() && !record.consent_required
    }

    /// The rows of the page: each per-user server, connected or not, and
    /// what could connect it.
    async fn rows(
        &self,
        gateway: &Gateway,
        user: &str,
        connection: Option<&ConnectionRecord>,
    ) -> Result<Vec<Row>, Page> {
        let store = self.store();
        let servers = Self::per_user_servers(gateway);
        // Candidates: the person's own identities and the organisation's global ones.
        let mut ids = store
            .members(&store.owner_index(user))
            .await
            .map_err(|e| store_down(&e))?;
        ids.extend(
            store
                .members(&store.identities_index())
                .await
                .map_err(|e| store_down(&e))?,
        );
        ids.sort();
        ids.dedup();
        let keys: Vec<String> = ids.iter().map(|id| store.identity_key(id)).collect();
        let records: Vec<VaultRecord> = store.get_many(&keys).await.map_err(|e| store_down(&e))?;
        let mut rows = Vec::new();
        for server in servers {
            let current = connection.and_then(|c| c.identities.get(&server));
            let current_record = current.and_then(|id| records.iter().find(|r| &r.id == id));
            if let Some(r) = current_record.filter(|r| Self::usable(r, user, &server)) {
                rows.push(Row::Connected {
                    server,
                    identity: r.id.clone(),
                });
                continue;
            }
            let why = match (current, current_record) {
                (None, _) => "not connected".to_string(),
                (Some(id), None) => format!("identity {id} no longer exists"),
                (Some(id), Some(r)) if r.consent_required => {
                    format!("identity {id} needs authorising again")
                }
                (Some(id), Some(r)) => match r.usable_by(user, &server) {
                    Err(e) => e.to_string(),
                    Ok(()) => format!("identity {id} cannot be used"),
                },
            };
            let mut candidates: Vec<Candidate> = records
                .iter()
                .filter(|r| Self::usable(r, user, &server))
                .filter(|r| r.owner == user || r.availability == Availability::Global)
                .map(|r| Candidate {
                    id: r.id.clone(),
                    whose: if r.availability == Availability::Global {
                        "shared by the organisation"
                    } else {
                        "yours"
                    },
                })
                .collect();
            // The person's own first.
            candidates.sort_by_key(|c| c.whose != "yours");
            rows.push(Row::Needed {
                can_authorise: self.app.providers.get(&server).is_some(),
                server,
                why,
                candidates,
            });
        }
        Ok(rows)
    }
}
