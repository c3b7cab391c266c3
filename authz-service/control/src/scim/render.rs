//! Stored resources as the identity provider reads them: `schemas`, `id`,
//! the attributes and `meta` (RFC 7643 §3.1), and lists of them
//! (`ListResponse`, RFC 7644 §3.4.2), with the query parameters a list
//! takes.

use serde_json::{Map, Value, json};

use latchkey_core::scim::filter::Filter;
use latchkey_core::scim::{LIST_RESPONSE_SCHEMA, MAX_PAGE, ResourceKind, ScimError, ScimType};
use latchkey_store::scim::StoredResource;

/// The resource `r` of `kind` under the SCIM base URL `base`, without the
/// attributes named in `excluded` (Entra asks Groups without `members`).
pub(crate) fn resource(
    kind: ResourceKind,
    r: &StoredResource,
    base: &str,
    excluded: &[String],
) -> Value {
    let mut schemas = vec![json!(kind.core_schema())];
    let mut out = Map::new();
    for (name, value) in &r.attributes {
        if excluded.iter().any(|x| x.eq_ignore_ascii_case(name)) {
            continue;
        }
        if kind.extension().is_some_and(|e| e.urn == name.as_str()) {
            schemas.push(json!(name));
        }
        out.insert(name.clone(), value.clone());
    }
    // Okta reads `active` on every User.
    if kind == ResourceKind::User && !out.contains_key("active") {
        out.insert("active".into(), Value::Bool(r.active()));
    }
    out.insert("schemas".into(), Value::Array(schemas));
    out.insert("id".into(), json!(r.id));
    out.insert(
        "meta".into(),
        json!({
            "resourceType": kind.name(),
            "created": r.created,
            "lastModified": r.last_modified,
            "location": location(kind, &r.id, base),
            "version": format!("W/\"{}\"", r.version),
        }),
    );
    Value::Object(out)
}

pub(crate) fn location(kind: ResourceKind, id: &str, base: &str) -> String {
    format!("{base}{}/{id}", kind.endpoint())
}

pub(crate) fn list(resources: Vec<Value>, total: usize, start_index: usize) -> Value {
    json!({
        "schemas": [LIST_RESPONSE_SCHEMA],
        "totalResults": total,
        "startIndex": start_index,
        "itemsPerPage": resources.len(),
        "Resources": resources,
    })
}

/// What a list or read asks for, from its query string.
#[derive(Debug, Default)]
pub(crate) struct Query {
    pub filter: Option<Filter>,
    /// 1-based, as SCIM counts.
    pub start_index: usize,
    pub count: usize,
    pub excluded: Vec<String>,
}

impl Query {
    /// Reads `filter`, `startIndex`, `count` and `excludedAttributes`
    /// (names in any case); others are ignored.
    pub fn parse(kind: ResourceKind, params: &[(String, String)]) -> Result<Query, ScimError> {
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let number = |name: &str| -> Result<Option<i64>, ScimError> {
            get(name)
                .map(|v| {
                    v.trim().parse::<i64>().map_err(|_| {
                        ScimError::bad(
                            ScimType::InvalidValue,
                            format!("'{name}' must be a whole number"),
                        )
                    })
                })
                .transpose()
        };
        let filter = match get("filter") {
            Some(text) => Some(Filter::parse(kind, text)?),
            None => None,
        };
        // RFC 7644 §3.4.2.4: below 1 counts as 1, a negative count as 0.
        let start_index = number("startIndex")?.unwrap_or(1).max(1) as usize;
        let count = number("count")?
            .unwrap_or(MAX_PAGE as i64)
            .clamp(0, MAX_PAGE as i64) as usize;
        let excluded = get("excludedAttributes")
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Query {
            filter,
            start_index,
            count,
            excluded,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn pages_are_read_as_scim_counts_them() {
        let q = Query::parse(
            ResourceKind::User,
            &params(&[("startIndex", "0"), ("count", "-5")]),
        )
        .unwrap();
        assert_eq!((q.start_index, q.count), (1, 0));
        let q = Query::parse(ResourceKind::User, &params(&[("COUNT", "100000")])).unwrap();
        assert_eq!((q.start_index, q.count), (1, MAX_PAGE));
        let e = Query::parse(ResourceKind::User, &params(&[("count", "ten")])).unwrap_err();
        assert_eq!(e.scim_type, Some(ScimType::InvalidValue));
        let e = Query::parse(
            ResourceKind::User,
            &params(&[("filter", "userName co \"a\"")]),
        )
        .unwrap_err();
        assert_eq!(e.scim_type, Some(ScimType::InvalidFilter));
        let q = Query::parse(
            ResourceKind::Group,
            &params(&[("excludedAttributes", "members, externalId")]),
        )
        .unwrap();
        assert_eq!(q.excluded, ["members", "externalId"]);
    }

    #[test]
    fn a_resource_carries_schemas_id_and_meta_and_leaves_out_what_is_excluded() {
        let r = StoredResource {
            id: "0123456789abcdef0123456789abcdef".into(),
            created: "c".into(),
            last_modified: "m".into(),
            version: 3,
            attributes: json!({"displayName": "Eng", "members": [{"value": "u"}]})
                .as_object()
                .cloned()
                .unwrap(),
        };
        let v = resource(
            ResourceKind::Group,
            &r,
            "https://l.example/scim/v2",
            &["members".into()],
        );
        assert!(v.get("members").is_none());
        assert_eq!(v["schemas"], json!([latchkey_core::scim::GROUP_SCHEMA]));
        assert_eq!(
            v["meta"]["location"],
            "https://l.example/scim/v2/Groups/0123456789abcdef0123456789abcdef"
        );
        assert_eq!(v["meta"]["version"], "W/\"3\"");
        let u = resource(ResourceKind::User, &r, "b", &[]);
        assert_eq!(u["active"], true, "a User without `active` reads as active");
    }
}
