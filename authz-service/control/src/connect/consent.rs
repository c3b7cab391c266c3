//! The consent request a connect link names (`?request=<id>`), handed to
//! a client whose call needed an identity: honoured only for the person it
//! was made for, on its gateway, until it expires (a link someone else
//! sends is refused, not completed for them), and marked completed once
//! its server has an identity.

use axum::http::StatusCode;

use super::Connect;
use super::errors::{expired_request, someone_elses_request, store_down};
use super::html::Page;
use super::session::well_formed_id;
use latchkey_check::consent::ConsentRecord;
use latchkey_core::identity::now_rfc3339;

fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

impl Connect {
    /// The consent request a page or form names, checked against the
    /// signed-in person and the gateway.
    pub(super) async fn consent(
        &self,
        request: Option<&str>,
        user: &str,
        gateway: &str,
    ) -> Result<Option<ConsentRecord>, Page> {
        let Some(id) = request else { return Ok(None) };
        if !well_formed_id(id) {
            return Err(expired_request());
        }
        let store = self.store();
        let record = store
            .get::<ConsentRecord>(&store.consent_key(id))
            .await
            .map_err(|e| store_down(&e))?
            .ok_or_else(expired_request)?;
        let expired =
            parse_time(&record.expires_at).is_none_or(|t| t <= time::OffsetDateTime::now_utc());
        if expired {
            return Err(expired_request());
        }
        if record.user != user {
            tracing::warn!(
                target: "latchkey::connect",
                signed_in = %user,
                gateway,
                "a connect link made for another user was opened; nothing attached"
            );
            return Err(someone_elses_request(user));
        }
        if record.gateway != gateway {
            return Err(Page::message(
                StatusCode::BAD_REQUEST,
                "This link is for another gateway",
                &[&format!(
                    "It was made for gateway {}; open the link exactly as your client gave it.",
                    record.gateway
                )],
            ));
        }
        Ok(Some(record))
    }

    /// Sets `completed_at` on the consent request once its server has an
    /// identity (keeps the record's expiry).
    pub(super) async fn complete_consent(&self, request: Option<&str>, user: &str, server: &str) {
        let Some(id) = request else { return };
        let store = self.store();
        let key = store.consent_key(id);
        let Ok(Some(mut record)) = store.get::<ConsentRecord>(&key).await else {
            return;
        };
        if record.user != user || record.server != server || record.completed_at.is_some() {
            return;
        }
        record.completed_at = Some(now_rfc3339());
        if let Err(e) = store.replace_keep_ttl(&key, &record).await {
            tracing::warn!(target: "latchkey::connect", error = %e, "marking a consent request completed");
        }
    }
}
