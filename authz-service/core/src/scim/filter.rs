//! List filters (RFC 7644 §3.4.2.2), as far as identity providers use
//! them: one attribute compared with `eq` to a quoted string —
//! `userName eq "alice@example.com"`, `externalId eq "…"`,
//! `displayName eq "…"` (and `id eq "…"`). Anything else (other
//! operators, `and`/`or`, value paths) is refused with `invalidFilter`
//! rather than answered wrongly.

use serde_json::{Map, Value};

use super::schema::{Type, locate};
use super::{ResourceKind, ScimError, ScimType, shorten};

/// The attributes a filter may compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterAttr {
    Id,
    UserName,
    ExternalId,
    DisplayName,
}

impl FilterAttr {
    pub fn name(self) -> &'static str {
        match self {
            FilterAttr::Id => "id",
            FilterAttr::UserName => "userName",
            FilterAttr::ExternalId => "externalId",
            FilterAttr::DisplayName => "displayName",
        }
    }

    /// RFC 7643: ids and external ids compare exactly, names in any case.
    pub fn case_exact(self) -> bool {
        matches!(self, FilterAttr::Id | FilterAttr::ExternalId)
    }
}

/// `attr eq "value"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub attr: FilterAttr,
    pub value: String,
}

impl Filter {
    /// Reads a `filter` query parameter for resources of `kind`.
    pub fn parse(kind: ResourceKind, text: &str) -> Result<Self, ScimError> {
        let refuse = |why: &str| {
            ScimError::bad(
                ScimType::InvalidFilter,
                format!(
                    "filter '{}' is not one Latchkey answers ({why}); it answers `ATTRIBUTE eq \"value\"` with ATTRIBUTE one of {}",
                    shorten(text),
                    allowed(kind)
                        .iter()
                        .map(|a| a.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        };
        let (name, value) = comparison(text).map_err(|why| refuse(&why))?;
        let Value::String(value) = value else {
            return Err(refuse("the value must be a quoted string"));
        };
        let attr = filter_attr(kind, name).ok_or_else(|| refuse("unsupported attribute"))?;
        Ok(Filter { attr, value })
    }

    /// Whether the resource with `id` and stored attributes `resource` matches.
    pub fn matches(&self, id: &str, resource: &Map<String, Value>) -> bool {
        let have = match self.attr {
            FilterAttr::Id => Some(id),
            other => resource.get(other.name()).and_then(Value::as_str),
        };
        have.is_some_and(|have| {
            if self.attr.case_exact() {
                have == self.value
            } else {
                have.to_lowercase() == self.value.to_lowercase()
            }
        })
    }
}

fn allowed(kind: ResourceKind) -> &'static [FilterAttr] {
    match kind {
        ResourceKind::User => &[
            FilterAttr::UserName,
            FilterAttr::ExternalId,
            FilterAttr::DisplayName,
            FilterAttr::Id,
        ],
        ResourceKind::Group => &[
            FilterAttr::DisplayName,
            FilterAttr::ExternalId,
            FilterAttr::Id,
        ],
    }
}

fn filter_attr(kind: ResourceKind, name: &str) -> Option<FilterAttr> {
    let plain = if name.eq_ignore_ascii_case("id") {
        "id"
    } else {
        // `urn:…:core:2.0:User:userName` names the same attribute.
        let (located, rest) = locate(kind, name)?;
        if !rest.is_empty() || located.ext.is_some() || located.attr.ty != Type::String {
            return None;
        }
        located.attr.name
    };
    allowed(kind)
        .iter()
        .copied()
        .find(|a| a.name().eq_ignore_ascii_case(plain))
}

/// `name eq VALUE`, VALUE a JSON scalar; the operator in any case, the
/// three parts separated by spaces. The reason otherwise.
pub(crate) fn comparison(text: &str) -> Result<(&str, Value), String> {
    let text = text.trim();
    let (name, rest) = text
        .split_once(' ')
        .ok_or_else(|| "expected ATTRIBUTE eq VALUE".to_string())?;
    let rest = rest.trim_start();
    let (op, value) = rest
        .split_once(' ')
        .ok_or_else(|| "expected ATTRIBUTE eq VALUE".to_string())?;
    if !op.eq_ignore_ascii_case("eq") {
        return Err(format!(
            "operator '{}' is not supported, only eq",
            shorten(op)
        ));
    }
    if name.contains(['[', ']', '(', ')', '"']) {
        return Err("value paths and grouping are not supported".into());
    }
    let value: Value = serde_json::from_str(value.trim()).map_err(|_| {
        "the value must be one quoted string, number or boolean (no and/or)".to_string()
    })?;
    if value.is_object() || value.is_array() || value.is_null() {
        return Err("the value must be a string, number or boolean".into());
    }
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_filters_okta_and_entra_send_are_read() {
        let f = Filter::parse(ResourceKind::User, "userName eq \"test.user@okta.local\"").unwrap();
        assert_eq!(
            f,
            Filter {
                attr: FilterAttr::UserName,
                value: "test.user@okta.local".into()
            }
        );
        let f = Filter::parse(ResourceKind::User, "externalId eq \"0a21f0f2-8d2a\"").unwrap();
        assert_eq!(f.attr, FilterAttr::ExternalId);
        let f = Filter::parse(ResourceKind::Group, "displayName eq \"Test SCIMv2\"").unwrap();
        assert_eq!(
            (f.attr, f.value.as_str()),
            (FilterAttr::DisplayName, "Test SCIMv2")
        );
        // Names and operators in any case, a URN-prefixed name, JSON escapes.
        let f = Filter::parse(ResourceKind::User, "UserName EQ \"a\\\"b\"").unwrap();
        assert_eq!((f.attr, f.value.as_str()), (FilterAttr::UserName, "a\"b"));
        let f = Filter::parse(
            ResourceKind::User,
            "urn:ietf:params:scim:schemas:core:2.0:User:userName eq \"x\"",
        )
        .unwrap();
        assert_eq!(f.attr, FilterAttr::UserName);
        assert_eq!(
            Filter::parse(ResourceKind::Group, "id eq \"g1\"")
                .unwrap()
                .attr,
            FilterAttr::Id
        );
    }

    #[test]
    fn other_filters_are_refused_as_invalid_filters() {
        for (kind, text) in [
            (ResourceKind::User, "userName co \"a\""),
            (ResourceKind::User, "userName sw \"a\""),
            (ResourceKind::User, "userName pr"),
            (ResourceKind::User, "userName eq \"a\" and active eq true"),
            (ResourceKind::User, "userName eq \"a\" or userName eq \"b\""),
            (
                ResourceKind::User,
                "emails[type eq \"work\"].value eq \"a@b\"",
            ),
            (ResourceKind::User, "title eq \"boss\""),
            (ResourceKind::User, "active eq true"),
            (ResourceKind::User, "userName eq a"),
            (ResourceKind::User, "userName eq 7"),
            (ResourceKind::User, "manager eq \"1\""),
            (ResourceKind::Group, "userName eq \"a\""),
            (ResourceKind::Group, "members eq \"a\""),
            (ResourceKind::User, ""),
            (ResourceKind::User, "not (userName eq \"a\")"),
        ] {
            let e = Filter::parse(kind, text).unwrap_err();
            assert_eq!(
                (e.status, e.scim_type),
                (400, Some(ScimType::InvalidFilter)),
                "{text}"
            );
        }
    }

    #[test]
    fn user_names_match_in_any_case_external_ids_exactly() {
        let resource = json!({"userName": "Alice@Example.com", "externalId": "AbC"});
        let resource = resource.as_object().unwrap();
        let f = Filter::parse(ResourceKind::User, "userName eq \"alice@example.COM\"").unwrap();
        assert!(f.matches("u1", resource));
        let f = Filter::parse(ResourceKind::User, "externalId eq \"abc\"").unwrap();
        assert!(!f.matches("u1", resource));
        let f = Filter::parse(ResourceKind::User, "externalId eq \"AbC\"").unwrap();
        assert!(f.matches("u1", resource));
        let f = Filter::parse(ResourceKind::User, "id eq \"u1\"").unwrap();
        assert!(f.matches("u1", resource));
    }
}
