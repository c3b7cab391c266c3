//! `/Users` and `/Groups`: create, read, list, replace, patch and delete,
//! one implementation for both kinds; the route handlers name the kind.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::ScimState;
use super::errors::{not_json, refusal, scim_json, store_refusal, too_large, write_refusal};
use super::render;
use latchkey_core::scim::schema::normalize;
use latchkey_core::scim::{MAX_BODY_BYTES, ResourceKind, ScimError, patch};
use latchkey_store::scim::StoredResource;

type Scim = State<Arc<ScimState>>;
type Params = Query<Vec<(String, String)>>;

const USER: ResourceKind = ResourceKind::User;
const GROUP: ResourceKind = ResourceKind::Group;

pub(super) async fn list_users(s: Scim, h: HeaderMap, q: Params) -> Response {
    list(&s, USER, &h, &q).await
}
pub(super) async fn list_groups(s: Scim, h: HeaderMap, q: Params) -> Response {
    list(&s, GROUP, &h, &q).await
}
pub(super) async fn create_user(s: Scim, h: HeaderMap, body: Body) -> Response {
    create(&s, USER, &h, body).await
}
pub(super) async fn create_group(s: Scim, h: HeaderMap, body: Body) -> Response {
    create(&s, GROUP, &h, body).await
}
pub(super) async fn get_user(s: Scim, h: HeaderMap, Path(id): Path<String>, q: Params) -> Response {
    read(&s, USER, &h, &id, &q).await
}
pub(super) async fn get_group(
    s: Scim,
    h: HeaderMap,
    Path(id): Path<String>,
    q: Params,
) -> Response {
    read(&s, GROUP, &h, &id, &q).await
}
pub(super) async fn replace_user(
    s: Scim,
    h: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    replace(&s, USER, &h, &id, body).await
}
pub(super) async fn replace_group(
    s: Scim,
    h: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    replace(&s, GROUP, &h, &id, body).await
}
pub(super) async fn patch_user(
    s: Scim,
    h: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    modify(&s, USER, &h, &id, body).await
}
pub(super) async fn patch_group(
    s: Scim,
    h: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    modify(&s, GROUP, &h, &id, body).await
}
pub(super) async fn delete_user(s: Scim, Path(id): Path<String>) -> Response {
    delete(&s, USER, &id).await
}
pub(super) async fn delete_group(s: Scim, Path(id): Path<String>) -> Response {
    delete(&s, GROUP, &id).await
}

/// The request body as JSON, within [`MAX_BODY_BYTES`].
async fn json_body(body: Body) -> Result<Value, Response> {
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| too_large())?;
    serde_json::from_slice(&bytes).map_err(|e| refusal(&not_json(&e)))
}

async fn list(
    s: &ScimState,
    kind: ResourceKind,
    headers: &HeaderMap,
    params: &[(String, String)],
) -> Response {
    let query = match render::Query::parse(kind, params) {
        Ok(q) => q,
        Err(e) => return refusal(&e),
    };
    let found = s
        .provisioning
        .list(
            kind,
            query.filter.as_ref(),
            query.start_index - 1,
            query.count,
        )
        .await;
    let (total, page) = match found {
        Ok(found) => found,
        Err(e) => return store_refusal(&e),
    };
    let base = s.base_url(headers);
    let resources = page
        .iter()
        .map(|r| render::resource(kind, r, &base, &query.excluded))
        .collect();
    scim_json(
        StatusCode::OK,
        &render::list(resources, total, query.start_index),
    )
}

async fn read(
    s: &ScimState,
    kind: ResourceKind,
    headers: &HeaderMap,
    id: &str,
    params: &[(String, String)],
) -> Response {
    let query = match render::Query::parse(kind, params) {
        Ok(q) => q,
        Err(e) => return refusal(&e),
    };
    match s.provisioning.get(kind, id).await {
        Ok(Some(r)) => scim_json(
            StatusCode::OK,
            &render::resource(kind, &r, &s.base_url(headers), &query.excluded),
        ),
        Ok(None) => refusal(&ScimError::not_found(kind, id)),
        Err(e) => store_refusal(&e),
    }
}

async fn create(s: &ScimState, kind: ResourceKind, headers: &HeaderMap, body: Body) -> Response {
    let input = match json_body(body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let attributes = match normalize(kind, &input) {
        Ok(a) => a,
        Err(e) => return refusal(&e),
    };
    let created = match kind {
        ResourceKind::User => s.provisioning.create_user(attributes).await,
        ResourceKind::Group => s.provisioning.create_group(attributes).await,
    };
    let (resource, changes) = match created {
        Ok(done) => done,
        Err(e) => return write_refusal(&e),
    };
    s.settle(&changes).await;
    let base = s.base_url(headers);
    let mut response = scim_json(
        StatusCode::CREATED,
        &render::resource(kind, &resource, &base, &[]),
    );
    if let Ok(location) = HeaderValue::from_str(&render::location(kind, &resource.id, &base)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// PUT: the body is the whole new resource.
async fn replace(
    s: &ScimState,
    kind: ResourceKind,
    headers: &HeaderMap,
    id: &str,
    body: Body,
) -> Response {
    let input = match json_body(body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let attributes = match normalize(kind, &input) {
        Ok(a) => a,
        Err(e) => return refusal(&e),
    };
    let action = match kind {
        ResourceKind::User => "scim.user.replace",
        ResourceKind::Group => "scim.group.replace",
    };
    change(
        s,
        kind,
        headers,
        id,
        action,
        |_| Ok(attributes.clone()),
        true,
    )
    .await
}

/// PATCH: operations applied to the resource as stored. A User is
/// answered with itself; a Group with 204 (Entra's preference, which Okta
/// accepts), so a large member list is not sent back.
async fn modify(
    s: &ScimState,
    kind: ResourceKind,
    headers: &HeaderMap,
    id: &str,
    body: Body,
) -> Response {
    let input = match json_body(body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let ops = match patch::parse(&input) {
        Ok(ops) => ops,
        Err(e) => return refusal(&e),
    };
    let action = match kind {
        ResourceKind::User => "scim.user.patch",
        ResourceKind::Group => "scim.group.patch",
    };
    let apply = |current: &StoredResource| -> Result<Map<String, Value>, ScimError> {
        let mut attributes = current.attributes.clone();
        patch::apply(kind, &mut attributes, &ops)?;
        Ok(attributes)
    };
    change(
        s,
        kind,
        headers,
        id,
        action,
        apply,
        kind == ResourceKind::User,
    )
    .await
}

async fn change(
    s: &ScimState,
    kind: ResourceKind,
    headers: &HeaderMap,
    id: &str,
    action: &str,
    apply: impl FnMut(&StoredResource) -> Result<Map<String, Value>, ScimError>,
    answer_with_resource: bool,
) -> Response {
    let changed = match kind {
        ResourceKind::User => s.provisioning.change_user(id, action, apply).await,
        ResourceKind::Group => s.provisioning.change_group(id, action, apply).await,
    };
    let (resource, changes) = match changed {
        Ok(done) => done,
        Err(e) => return write_refusal(&e),
    };
    s.settle(&changes).await;
    if !answer_with_resource {
        return StatusCode::NO_CONTENT.into_response();
    }
    scim_json(
        StatusCode::OK,
        &render::resource(kind, &resource, &s.base_url(headers), &[]),
    )
}

async fn delete(s: &ScimState, kind: ResourceKind, id: &str) -> Response {
    let deleted = match kind {
        ResourceKind::User => s.provisioning.delete_user(id).await,
        ResourceKind::Group => s.provisioning.delete_group(id).await,
    };
    match deleted {
        Ok(changes) => {
            s.settle(&changes).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => write_refusal(&e),
    }
}
