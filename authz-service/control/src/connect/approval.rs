//! The approval page: `GET /connect/{gateway}/approval?id=<request>`
//! shows a tool call held for approval exactly as it will run (server,
//! tool, every argument, the agent, the person it is for, when it was
//! asked, the rule that asked) to a signed-in person who may see it, with
//! Approve and Deny (and an optional reason) when they may decide it;
//! `POST /connect/{gateway}/approval` is those buttons (the session's CSRF
//! token in the form). Who may see and decide is `crate::approvals`', the
//! same rules as `latchkey approval`. Signing in is the connect page's.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::Connect;
use super::errors::store_down;
use super::html::{Page, escape};
use super::session::{Session, well_formed_id};
use super::sign_in::start_sign_in;
use super::signed_in::{SignedInForm, SignedInPost};
use crate::approvals::{self, Approver, DecideError};
use latchkey_check::approval::approval_link;
use latchkey_core::approval::{ApprovalRecord, ApprovalStatus};

#[derive(Deserialize)]
pub(super) struct ApprovalQuery {
    id: Option<String>,
}

/// The page's form: which request, approve or deny, and why.
#[derive(Deserialize)]
pub(super) struct ApprovalForm {
    csrf: String,
    id: String,
    decision: String,
    #[serde(default)]
    reason: String,
}

impl SignedInForm for ApprovalForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }

    fn request(&self) -> Option<&str> {
        None
    }
}

impl Connect {
    /// `<public_url path>/connect/{gateway}/approval[?id=…]`: the link
    /// the gate hands out, or (without an id) where the form posts.
    fn approval_url(&self, gateway: &str, id: Option<&str>) -> String {
        let mut url = approval_link(&self.settings.public_url, gateway, id.unwrap_or_default());
        if id.is_none() {
            url.set_query(None);
        }
        url.to_string()
    }
}

fn no_such_request() -> Page {
    Page::message(
        StatusCode::NOT_FOUND,
        "No such approval request",
        &[
            "This approval request does not exist, has expired, or is not yours to see. \
             If a call is still waiting, make it again for a new request.",
        ],
    )
}

fn decide_error(e: DecideError) -> Page {
    match e {
        DecideError::NotFound(_) => no_such_request(),
        DecideError::Refused(why) => Page::message(
            StatusCode::FORBIDDEN,
            "You cannot decide this call",
            &[&why, "Nothing was changed."],
        ),
        DecideError::Store(e) => store_down(&e),
    }
}

fn approver(session: &Session) -> (latchkey_core::principal::Caller, bool) {
    (session.caller(), session.decides_for_others)
}

pub(super) async fn approval_page(
    State(c): State<Arc<Connect>>,
    Path(gateway): Path<String>,
    Query(q): Query<ApprovalQuery>,
    headers: HeaderMap,
) -> Response {
    match approval_page_inner(&c, &gateway, q, &headers).await {
        Ok(r) => r,
        Err(p) => p.into_response(),
    }
}

async fn approval_page_inner(
    c: &Connect,
    gateway: &str,
    q: ApprovalQuery,
    headers: &HeaderMap,
) -> Result<Response, Page> {
    let gw = c.gateway(gateway)?;
    let id =
        q.id.as_deref()
            .filter(|id| well_formed_id(id))
            .ok_or_else(no_such_request)?;
    let Some((_, session)) = c.session(headers).await? else {
        return start_sign_in(c, &c.approval_url(&gw.name, Some(id))).await;
    };
    c.require_enabled(&session.user).await?;
    let (caller, decides_for_others) = approver(&session);
    let who = Approver {
        caller: &caller,
        decides_for_others,
    };
    let record = approvals::find(&c.app, &who, id)
        .await
        .map_err(decide_error)?;
    if record.gateway != gw.name {
        return Err(no_such_request());
    }
    let decidable = who.may_decide(&c.app, &record);
    Ok(render(c, &record, &session, decidable).into_response())
}

/// The page: the call in full, then the buttons or why there are none.
fn render(
    c: &Connect,
    r: &ApprovalRecord,
    session: &Session,
    decidable: Result<(), String>,
) -> Page {
    let arguments =
        serde_json::to_string_pretty(&r.arguments).unwrap_or_else(|_| r.arguments.to_string());
    let row = |label: &str, id: &str, value: &str| {
        format!(
            "<tr><th>{}</th><td id=\"{id}\">{}</td></tr>\n",
            escape(label),
            escape(value)
        )
    };
    let mut body = format!(
        "<h1 id=\"title\">Approve a call to {}?</h1>\n<p class=\"note\">Signed in as {}. \
         This is exactly what will run if it is approved; a call with anything different needs its own approval.</p>\n<table>\n",
        escape(&r.tool),
        escape(&session.user)
    );
    body.push_str(&row("Server", "server", &r.server));
    body.push_str(&row("Tool", "tool", &r.tool));
    body.push_str(&format!(
        "<tr><th>Arguments</th><td><pre id=\"arguments\">{}</pre></td></tr>\n",
        escape(&arguments)
    ));
    body.push_str(&row("For", "user", &r.user));
    body.push_str(&row(
        "Agent",
        "agent",
        r.agent
            .as_deref()
            .unwrap_or("none (the person's own client)"),
    ));
    if !r.actors.is_empty() {
        body.push_str(&row("Acting through", "actors", &r.actors.join(" → ")));
    }
    body.push_str(&row("Asked", "requested", &r.requested_at));
    body.push_str(&row("Expires", "expires", &r.expires_at));
    body.push_str(&row("Rule", "rule", &r.rule));
    body.push_str(&row("Status", "status", r.status.as_str()));
    if let Some(a) = &r.approver {
        body.push_str(&row("Decided by", "approver", a));
    }
    if let Some(reason) = &r.reason {
        body.push_str(&row("Reason", "reason-given", reason));
    }
    body.push_str("</table>\n");
    match (r.status, decidable) {
        (ApprovalStatus::Pending, Ok(())) => {
            body.push_str(&format!(
                "<form method=\"post\" action=\"{}\">\n\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\">\n\
                 <input type=\"hidden\" name=\"id\" value=\"{}\">\n\
                 <p><label for=\"reason\">Reason (optional; told to the caller if you deny)</label><br>\n\
                 <textarea id=\"reason\" name=\"reason\" rows=\"2\" cols=\"50\" maxlength=\"{}\"></textarea></p>\n\
                 <button id=\"approve\" type=\"submit\" name=\"decision\" value=\"approve\">Approve</button>\n\
                 <button id=\"deny\" type=\"submit\" name=\"decision\" value=\"deny\">Deny</button>\n\
                 </form>\n",
                escape(&c.approval_url(&r.gateway, None)),
                escape(&session.csrf),
                escape(&r.id),
                approvals::MAX_REASON_CHARS
            ));
        }
        (ApprovalStatus::Pending, Err(why)) => {
            body.push_str(&format!("<p id=\"waiting\">{}</p>\n", escape(&why)));
        }
        (status, _) => {
            body.push_str(&format!(
                "<p id=\"decided\">This request is {}; nothing more can be decided.</p>\n",
                status.as_str()
            ));
        }
    }
    Page::html(StatusCode::OK, &format!("Approve {}", r.tool), body)
}

/// `POST /connect/{gateway}/approval`: Approve or Deny.
pub(super) async fn decide(
    State(c): State<Arc<Connect>>,
    SignedInPost {
        gateway,
        session,
        form,
        ..
    }: SignedInPost<ApprovalForm>,
) -> Result<Response, Page> {
    let approve = match form.decision.as_str() {
        "approve" => true,
        "deny" => false,
        _ => {
            return Err(Page::message(
                StatusCode::BAD_REQUEST,
                "Approve or deny",
                &["The form said neither. Nothing was changed."],
            ));
        }
    };
    if !well_formed_id(&form.id) {
        return Err(no_such_request());
    }
    let (caller, decides_for_others) = approver(&session);
    let who = Approver {
        caller: &caller,
        decides_for_others,
    };
    let record = approvals::find(&c.app, &who, &form.id)
        .await
        .map_err(decide_error)?;
    if record.gateway != gateway.name {
        return Err(no_such_request());
    }
    let r = approvals::decide(&c.app, &who, &form.id, approve, &form.reason)
        .await
        .map_err(decide_error)?;
    let back = c.approval_url(&r.gateway, Some(&r.id));
    let page = if approve {
        Page::message(
            StatusCode::OK,
            "Approved",
            &[&format!(
                "The call to {} goes through once, when it is made again with the same arguments (before {}).",
                r.tool, r.expires_at
            )],
        )
    } else {
        Page::message(
            StatusCode::OK,
            "Denied",
            &[&format!(
                "The call to {} will be refused{}.",
                r.tool,
                r.reason
                    .as_deref()
                    .map(|x| format!(" with your reason: {x}"))
                    .unwrap_or_default()
            )],
        )
    };
    Ok(page.with_link(&back, "Back to the request").into_response())
}
