//! SCIM 2.0 (RFC 7643 schema, RFC 7644 protocol) as pure data and logic:
//! the resources Latchkey accepts from an identity provider (`schema`),
//! the list filters it answers (`filter`), PATCH operations applied to a
//! resource (`patch`) and the error every refusal takes (`ScimError`).
//! Storage is `latchkey-store`'s `scim`; the HTTP side is
//! `latchkey-control`'s `scim`.
//!
//! What a SCIM resource means to Latchkey: a User's `userName` is the
//! person's Latchkey user id (the `sub` of their tokens); `active` is their
//! status; the `displayName`s of the Groups listing them are the role
//! values policy grants match.

pub mod filter;
pub mod patch;
pub mod schema;

use serde_json::{Value, json};

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const ENTERPRISE_USER_SCHEMA: &str =
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const PATCH_OP_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
pub const LIST_RESPONSE_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
pub const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
/// The media type of every SCIM answer.
pub const CONTENT_TYPE: &str = "application/scim+json";

/// The largest request body read, in bytes: a User or a PatchOp is a few
/// KiB; a Group's full member list at [`MAX_GROUP_MEMBERS`] fits.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The longest string attribute value stored, in bytes.
pub const MAX_STRING_BYTES: usize = 1024;
/// The longest `userName` (a Latchkey user id, part of Redis keys).
pub const MAX_USER_NAME_BYTES: usize = 256;
/// The most values of one multi-valued attribute (emails, phone numbers, ...),
/// members aside.
pub const MAX_VALUES: usize = 32;
/// The most members of one Group (each change of a Group rewrites the
/// records of the members it touches, in one step).
pub const MAX_GROUP_MEMBERS: usize = 1000;
/// The most operations in one PATCH.
pub const MAX_PATCH_OPERATIONS: usize = 100;
/// The most resources one list answer carries.
pub const MAX_PAGE: usize = 200;

/// The two resource types Latchkey serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    User,
    Group,
}

impl ResourceKind {
    pub fn name(self) -> &'static str {
        match self {
            ResourceKind::User => "User",
            ResourceKind::Group => "Group",
        }
    }

    /// The endpoint under the SCIM base (`/Users`).
    pub fn endpoint(self) -> &'static str {
        match self {
            ResourceKind::User => "/Users",
            ResourceKind::Group => "/Groups",
        }
    }

    pub fn core_schema(self) -> &'static str {
        match self {
            ResourceKind::User => USER_SCHEMA,
            ResourceKind::Group => GROUP_SCHEMA,
        }
    }
}

/// RFC 7644 §3.12's `scimType` values Latchkey answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScimType {
    InvalidFilter,
    TooMany,
    Uniqueness,
    Mutability,
    InvalidSyntax,
    InvalidPath,
    NoTarget,
    InvalidValue,
}

impl ScimType {
    pub fn as_str(self) -> &'static str {
        match self {
            ScimType::InvalidFilter => "invalidFilter",
            ScimType::TooMany => "tooMany",
            ScimType::Uniqueness => "uniqueness",
            ScimType::Mutability => "mutability",
            ScimType::InvalidSyntax => "invalidSyntax",
            ScimType::InvalidPath => "invalidPath",
            ScimType::NoTarget => "noTarget",
            ScimType::InvalidValue => "invalidValue",
        }
    }
}

/// A refusal in SCIM's own error format: the identity provider shows
/// `detail` to the administrator, so it says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {detail}")]
pub struct ScimError {
    pub status: u16,
    pub scim_type: Option<ScimType>,
    pub detail: String,
}

impl ScimError {
    pub fn new(status: u16, scim_type: Option<ScimType>, detail: impl Into<String>) -> Self {
        Self {
            status,
            scim_type,
            detail: detail.into(),
        }
    }

    /// 400 with `scim_type`.
    pub fn bad(scim_type: ScimType, detail: impl Into<String>) -> Self {
        Self::new(400, Some(scim_type), detail)
    }

    pub fn not_found(kind: ResourceKind, id: &str) -> Self {
        Self::new(
            404,
            None,
            format!("there is no {} with id '{}'", kind.name(), shorten(id)),
        )
    }

    /// The body: `status` is a string (RFC 7644 §3.12).
    pub fn to_json(&self) -> Value {
        let mut body = json!({
            "schemas": [ERROR_SCHEMA],
            "status": self.status.to_string(),
            "detail": self.detail,
        });
        if let Some(t) = self.scim_type {
            body["scimType"] = json!(t.as_str());
        }
        body
    }
}

/// At most 64 characters of something a client sent, for a message.
pub fn shorten(s: &str) -> String {
    if s.len() <= 64 {
        return s.to_string();
    }
    let mut end = 64;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_carries_its_status_as_a_string_and_its_type() {
        let e = ScimError::bad(ScimType::InvalidFilter, "no");
        assert_eq!(
            e.to_json(),
            json!({"schemas": [ERROR_SCHEMA], "status": "400", "scimType": "invalidFilter", "detail": "no"})
        );
        let e = ScimError::not_found(ResourceKind::User, "x");
        assert_eq!(e.to_json()["status"], "404");
        assert!(e.to_json().get("scimType").is_none());
    }

    #[test]
    fn long_client_values_are_shortened_on_a_character_boundary() {
        let s = "é".repeat(100);
        let short = shorten(&s);
        assert!(short.ends_with('…'));
        assert!(short.len() <= 64 + '…'.len_utf8());
    }
}
