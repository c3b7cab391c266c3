//! What an identity provider reads to learn what this server does
//! (RFC 7644 §4): `ServiceProviderConfig`, `ResourceTypes`, `Schemas`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::ScimState;
use super::errors::{refusal, scim_json};
use super::render;
use latchkey_core::scim::schema::{
    ENTERPRISE_SCHEMA_DEF, GROUP_SCHEMA_DEF, Schema, USER_SCHEMA_DEF, schema_document,
};
use latchkey_core::scim::{
    ENTERPRISE_USER_SCHEMA, MAX_BODY_BYTES, MAX_PAGE, ResourceKind, ScimError,
};

static SCHEMAS: [&Schema; 3] = [&USER_SCHEMA_DEF, &ENTERPRISE_SCHEMA_DEF, &GROUP_SCHEMA_DEF];

pub(super) async fn service_provider_config(
    State(s): State<Arc<ScimState>>,
    headers: HeaderMap,
) -> Response {
    let base = s.base_url(&headers);
    scim_json(
        StatusCode::OK,
        &json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
            "patch": {"supported": true},
            "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": MAX_BODY_BYTES},
            "filter": {"supported": true, "maxResults": MAX_PAGE},
            "changePassword": {"supported": false},
            "sort": {"supported": false},
            "etag": {"supported": false},
            "authenticationSchemes": [{
                "type": "oauthbearertoken",
                "name": "Bearer token",
                "description": "The token Latchkey's [scim] token_env names, sent as `Authorization: Bearer <token>`",
                "primary": true,
            }],
            "meta": {
                "resourceType": "ServiceProviderConfig",
                "location": format!("{base}/ServiceProviderConfig"),
            },
        }),
    )
}

fn resource_type(kind: ResourceKind, base: &str) -> Value {
    let mut doc = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
        "id": kind.name(),
        "name": kind.name(),
        "endpoint": kind.endpoint(),
        "description": match kind {
            ResourceKind::User => "A person; userName is their Latchkey user id",
            ResourceKind::Group => "A group; its displayName is a role value of each member",
        },
        "schema": kind.core_schema(),
        "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/{}", kind.name())},
    });
    if kind == ResourceKind::User {
        doc["schemaExtensions"] = json!([{"schema": ENTERPRISE_USER_SCHEMA, "required": false}]);
    }
    doc
}

pub(super) async fn resource_types(
    State(s): State<Arc<ScimState>>,
    headers: HeaderMap,
) -> Response {
    let base = s.base_url(&headers);
    let all = vec![
        resource_type(ResourceKind::User, &base),
        resource_type(ResourceKind::Group, &base),
    ];
    scim_json(StatusCode::OK, &render::list(all, 2, 1))
}

pub(super) async fn resource_type_named(
    State(s): State<Arc<ScimState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let kind = [ResourceKind::User, ResourceKind::Group]
        .into_iter()
        .find(|k| k.name() == name);
    match kind {
        Some(kind) => scim_json(StatusCode::OK, &resource_type(kind, &s.base_url(&headers))),
        None => refusal(&ScimError::new(
            404,
            None,
            "no such resource type; Latchkey serves User and Group",
        )),
    }
}

pub(super) async fn schemas(State(s): State<Arc<ScimState>>, headers: HeaderMap) -> Response {
    let base = s.base_url(&headers);
    let all: Vec<Value> = SCHEMAS
        .iter()
        .map(|schema| schema_document(schema, &format!("{base}/Schemas/{}", schema.urn)))
        .collect();
    let total = all.len();
    scim_json(StatusCode::OK, &render::list(all, total, 1))
}

pub(super) async fn schema_named(
    State(s): State<Arc<ScimState>>,
    headers: HeaderMap,
    Path(urn): Path<String>,
) -> Response {
    let base = s.base_url(&headers);
    match SCHEMAS.iter().find(|schema| schema.urn == urn) {
        Some(schema) => scim_json(
            StatusCode::OK,
            &schema_document(schema, &format!("{base}/Schemas/{}", schema.urn)),
        ),
        None => refusal(&ScimError::new(404, None, "no such schema")),
    }
}
