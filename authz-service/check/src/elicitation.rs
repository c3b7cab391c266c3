//! `latchkey.elicitation.v1.Elicitations`: the Wasm filter asks which of
//! the URL elicitations (-32042 answers) it handed out have been completed
//! (a consent request on the connect page, an approval request decided), to
//! announce them to the client with `notifications/elicitation/complete`
//! (see `latchkey_filter::completion`).
//!
//! The answer is read from the requests themselves (a consent request's
//! `completed_at`, an approval request's status), so any replica answers
//! the same. It grants nothing: an id is reported completed only to the
//! user it was issued to.

use latchkey_proto::elicitation::elicitations_server::Elicitations;
use latchkey_proto::elicitation::{CompletedRequest, CompletedResponse};
use tonic::{Request, Response, Status};

use crate::consent::ConsentRecord;
use latchkey_core::approval::{ApprovalRecord, ApprovalStatus};
use latchkey_store::store::Store;

/// Most ids one question may carry (the filter keeps at most as many).
pub const MAX_IDS: usize = latchkey_filter::completion::MAX_PENDING;

/// Reads the consent requests in Redis; holds nothing else.
pub struct ElicitationService {
    pub store: Store,
}

/// One request a URL elicitation was handed out for: its id, whose it
/// is, and whether the person is done with it.
pub struct Outcome<'a> {
    pub id: &'a str,
    pub user: &'a str,
    pub done: bool,
}

impl<'a> From<&'a ConsentRecord> for Outcome<'a> {
    fn from(r: &'a ConsentRecord) -> Self {
        Outcome {
            id: &r.id,
            user: &r.user,
            done: r.completed_at.is_some(),
        }
    }
}

impl<'a> From<&'a ApprovalRecord> for Outcome<'a> {
    fn from(r: &'a ApprovalRecord) -> Self {
        Outcome {
            id: &r.id,
            user: &r.user,
            done: r.status != ApprovalStatus::Pending,
        }
    }
}

/// The ids of `asked` whose request in `outcomes` is done, for the same user.
pub fn completed_ids(asked: &CompletedRequest, outcomes: &[Outcome<'_>]) -> Vec<String> {
    asked
        .elicitations
        .iter()
        .filter(|e| {
            outcomes
                .iter()
                .any(|r| r.id == e.id && r.user == e.user && r.done)
        })
        .map(|e| e.id.clone())
        .collect()
}

#[tonic::async_trait]
impl Elicitations for ElicitationService {
    async fn completed(
        &self,
        request: Request<CompletedRequest>,
    ) -> Result<Response<CompletedResponse>, Status> {
        let asked = request.into_inner();
        if asked.elicitations.len() > MAX_IDS {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_IDS} elicitations per question, got {}",
                asked.elicitations.len()
            )));
        }
        let store = &self.store;
        let keys: Vec<String> = asked
            .elicitations
            .iter()
            .map(|e| store.consent_key(&e.id))
            .collect();
        let unavailable = |e: latchkey_store::store::StoreError| {
            Status::unavailable(format!("the requests cannot be read: {e}"))
        };
        let consents: Vec<ConsentRecord> = store.get_many(&keys).await.map_err(unavailable)?;
        let keys: Vec<String> = asked
            .elicitations
            .iter()
            .map(|e| store.approval_key(&e.id))
            .collect();
        let approvals: Vec<ApprovalRecord> = store.get_many(&keys).await.map_err(unavailable)?;
        let outcomes: Vec<Outcome<'_>> = consents
            .iter()
            .map(Outcome::from)
            .chain(approvals.iter().map(Outcome::from))
            .collect();
        Ok(Response::new(CompletedResponse {
            completed: completed_ids(&asked, &outcomes),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_proto::elicitation::PendingElicitation;

    fn record(id: &str, user: &str, completed: bool) -> ConsentRecord {
        ConsentRecord {
            id: id.into(),
            user: user.into(),
            gateway: "gw".into(),
            server: "crm".into(),
            assignment: "crm".into(),
            agent: None,
            created_at: "2026-11-30T00:00:00Z".into(),
            expires_at: "2026-11-30T00:10:00Z".into(),
            completed_at: completed.then(|| "2026-11-30T00:01:00Z".into()),
        }
    }

    #[test]
    fn only_completed_requests_of_the_same_user_are_reported() {
        let asked = CompletedRequest {
            elicitations: [
                ("a", "alice"),
                ("b", "alice"),
                ("c", "bob"),
                ("gone", "alice"),
            ]
            .iter()
            .map(|(id, user)| PendingElicitation {
                id: (*id).into(),
                user: (*user).into(),
            })
            .collect(),
        };
        let records = [
            record("a", "alice", true),
            record("b", "alice", false),
            // Completed, but issued to alice: bob's question gets nothing.
            record("c", "alice", true),
        ];
        let outcomes: Vec<Outcome<'_>> = records.iter().map(Outcome::from).collect();
        assert_eq!(completed_ids(&asked, &outcomes), ["a"]);
    }
}
