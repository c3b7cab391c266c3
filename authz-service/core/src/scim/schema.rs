//! The attributes of the resources Latchkey accepts (RFC 7643 §4 and §8.7):
//! a User (with the enterprise extension) and a Group, as static tables;
//! reading a resource a client sent into its stored form (`normalize`),
//! and the `/Schemas` documents that describe the tables.
//!
//! The stored form keeps every attribute under its canonical name (SCIM
//! attribute names are case-insensitive), extension attributes in an
//! object under the extension's URN, and nothing a client may not set:
//! `id`, `meta` and a User's `groups` are the server's, and a `password`
//! is never stored (Okta sends one with every new user).

use serde_json::{Map, Value, json};

use super::{
    ENTERPRISE_USER_SCHEMA, GROUP_SCHEMA, MAX_GROUP_MEMBERS, MAX_STRING_BYTES, MAX_USER_NAME_BYTES,
    MAX_VALUES, ResourceKind, ScimError, ScimType, USER_SCHEMA, shorten,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    String,
    Boolean,
    Reference,
    Complex,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutability {
    ReadWrite,
    /// The server's: ignored when a client sends it.
    ReadOnly,
    /// Accepted and never stored or returned.
    WriteOnly,
}

#[derive(Debug)]
pub struct Attr {
    pub name: &'static str,
    pub ty: Type,
    pub multi: bool,
    pub required: bool,
    /// Whether values compare case-sensitively (filters, uniqueness).
    pub case_exact: bool,
    pub mutability: Mutability,
    pub sub: &'static [Attr],
}

const fn string(name: &'static str) -> Attr {
    Attr {
        name,
        ty: Type::String,
        multi: false,
        required: false,
        case_exact: false,
        mutability: Mutability::ReadWrite,
        sub: &[],
    }
}
const fn exact(name: &'static str) -> Attr {
    Attr {
        case_exact: true,
        ..string(name)
    }
}
const fn boolean(name: &'static str) -> Attr {
    Attr {
        ty: Type::Boolean,
        ..string(name)
    }
}
const fn reference(name: &'static str) -> Attr {
    Attr {
        ty: Type::Reference,
        ..exact(name)
    }
}
const fn complex(name: &'static str, sub: &'static [Attr]) -> Attr {
    Attr {
        ty: Type::Complex,
        sub,
        ..string(name)
    }
}
const fn multi(name: &'static str, sub: &'static [Attr]) -> Attr {
    Attr {
        multi: true,
        ..complex(name, sub)
    }
}

const VALUE_TYPE_PRIMARY: &[Attr] = &[
    string("value"),
    string("display"),
    string("type"),
    boolean("primary"),
];
const NAME: &[Attr] = &[
    string("formatted"),
    string("familyName"),
    string("givenName"),
    string("middleName"),
    string("honorificPrefix"),
    string("honorificSuffix"),
];
const ADDRESS: &[Attr] = &[
    string("formatted"),
    string("streetAddress"),
    string("locality"),
    string("region"),
    string("postalCode"),
    string("country"),
    string("type"),
    boolean("primary"),
];
/// A Group a User belongs to, or a Group's member: `value` is the id.
const REFERENCE: &[Attr] = &[
    exact("value"),
    reference("$ref"),
    string("display"),
    string("type"),
];
const MANAGER: &[Attr] = &[exact("value"), reference("$ref"), string("displayName")];

const USER: &[Attr] = &[
    Attr {
        required: true,
        ..string("userName")
    },
    complex("name", NAME),
    string("displayName"),
    string("nickName"),
    reference("profileUrl"),
    string("title"),
    string("userType"),
    string("preferredLanguage"),
    string("locale"),
    string("timezone"),
    boolean("active"),
    Attr {
        mutability: Mutability::WriteOnly,
        ..string("password")
    },
    multi("emails", VALUE_TYPE_PRIMARY),
    multi("phoneNumbers", VALUE_TYPE_PRIMARY),
    multi("ims", VALUE_TYPE_PRIMARY),
    multi("photos", VALUE_TYPE_PRIMARY),
    multi("addresses", ADDRESS),
    Attr {
        mutability: Mutability::ReadOnly,
        ..multi("groups", REFERENCE)
    },
    multi("entitlements", VALUE_TYPE_PRIMARY),
    multi("roles", VALUE_TYPE_PRIMARY),
    multi("x509Certificates", VALUE_TYPE_PRIMARY),
    exact("externalId"),
];
const ENTERPRISE: &[Attr] = &[
    string("employeeNumber"),
    string("costCenter"),
    string("organization"),
    string("division"),
    string("department"),
    complex("manager", MANAGER),
];
const GROUP: &[Attr] = &[
    Attr {
        required: true,
        ..string("displayName")
    },
    multi("members", REFERENCE),
    exact("externalId"),
];

/// One schema: its URN, name and attributes.
#[derive(Debug)]
pub struct Schema {
    pub urn: &'static str,
    pub name: &'static str,
    pub attrs: &'static [Attr],
}

pub static USER_SCHEMA_DEF: Schema = Schema {
    urn: USER_SCHEMA,
    name: "User",
    attrs: USER,
};
pub static ENTERPRISE_SCHEMA_DEF: Schema = Schema {
    urn: ENTERPRISE_USER_SCHEMA,
    name: "EnterpriseUser",
    attrs: ENTERPRISE,
};
pub static GROUP_SCHEMA_DEF: Schema = Schema {
    urn: GROUP_SCHEMA,
    name: "Group",
    attrs: GROUP,
};

impl ResourceKind {
    pub fn schema(self) -> &'static Schema {
        match self {
            ResourceKind::User => &USER_SCHEMA_DEF,
            ResourceKind::Group => &GROUP_SCHEMA_DEF,
        }
    }

    pub fn extension(self) -> Option<&'static Schema> {
        match self {
            ResourceKind::User => Some(&ENTERPRISE_SCHEMA_DEF),
            ResourceKind::Group => None,
        }
    }
}

/// The attribute called `name` (any case) among `attrs`.
pub fn find(attrs: &'static [Attr], name: &str) -> Option<&'static Attr> {
    attrs.iter().find(|a| a.name.eq_ignore_ascii_case(name))
}

/// An attribute of a resource: in the core schema (`ext` none) or in the
/// extension whose URN `ext` is.
#[derive(Debug, Clone, Copy)]
pub struct Located {
    pub ext: Option<&'static str>,
    pub attr: &'static Attr,
}

/// Where `name` is in `kind`: a plain name (core first, then the
/// extension, as Entra names `manager`), or one prefixed by its schema's
/// URN (`urn:…:enterprise:2.0:User:employeeNumber`). The rest of `name`
/// after the attribute (`.sub`, `[filter]`) is returned as is.
pub fn locate(kind: ResourceKind, name: &str) -> Option<(Located, &str)> {
    let (ext, rest) = strip_urn(kind, name)?;
    let end = rest.find(['.', '[']).unwrap_or(rest.len());
    let (head, tail) = rest.split_at(end);
    match ext {
        Some(schema) => find(schema.attrs, head).map(|attr| Located {
            ext: Some(schema.urn),
            attr,
        }),
        None => find(kind.schema().attrs, head)
            .map(|attr| Located { ext: None, attr })
            .or_else(|| {
                let schema = kind.extension()?;
                find(schema.attrs, head).map(|attr| Located {
                    ext: Some(schema.urn),
                    attr,
                })
            }),
    }
    .map(|l| (l, tail))
}

/// Removes a schema URN prefix from `name`: the extension it names (None
/// for the core schema or no prefix), and the rest.
fn strip_urn(kind: ResourceKind, name: &str) -> Option<(Option<&'static Schema>, &str)> {
    if !name
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("urn:"))
    {
        return Some((None, name));
    }
    let prefixed = |urn: &str| {
        name.get(..urn.len())
            .filter(|p| p.eq_ignore_ascii_case(urn))
            .and_then(|_| name[urn.len()..].strip_prefix(':'))
    };
    if let Some(rest) = prefixed(kind.schema().urn) {
        return Some((None, rest));
    }
    let ext = kind.extension()?;
    prefixed(ext.urn).map(|rest| (Some(ext), rest))
}

/// The extension of `kind` whose URN `key` is (any case).
pub fn extension_named(kind: ResourceKind, key: &str) -> Option<&'static Schema> {
    kind.extension().filter(|s| s.urn.eq_ignore_ascii_case(key))
}

/// Reads a resource a client sent (POST or PUT) into its stored form.
/// Unknown attributes are refused (a typo would otherwise vanish), except
/// when null: Entra sends nulls for attributes it does not have.
pub fn normalize(kind: ResourceKind, input: &Value) -> Result<Map<String, Value>, ScimError> {
    let Value::Object(fields) = input else {
        return Err(ScimError::bad(
            ScimType::InvalidSyntax,
            format!("a {} must be a JSON object", kind.name()),
        ));
    };
    let mut out = Map::new();
    for (key, value) in fields {
        if key.eq_ignore_ascii_case("schemas") {
            check_schemas(value)?;
            continue;
        }
        if key.eq_ignore_ascii_case("id") || key.eq_ignore_ascii_case("meta") {
            continue;
        }
        if let Some(ext) = extension_named(kind, key) {
            if value.is_null() {
                continue;
            }
            let Value::Object(inner) = value else {
                return Err(ScimError::bad(
                    ScimType::InvalidValue,
                    format!("'{}' must be an object of its attributes", ext.urn),
                ));
            };
            let mut stored = Map::new();
            for (k, v) in inner {
                set_attribute(&mut stored, ext.attrs, k, v, ext.urn)?;
            }
            if !stored.is_empty() {
                out.insert(ext.urn.to_string(), Value::Object(stored));
            }
            continue;
        }
        set_attribute(&mut out, kind.schema().attrs, key, value, kind.name())?;
    }
    check_required(kind, &out)?;
    Ok(out)
}

/// Adds attribute `key` of `attrs` with the client's `value` to `out`.
fn set_attribute(
    out: &mut Map<String, Value>,
    attrs: &'static [Attr],
    key: &str,
    value: &Value,
    owner: &str,
) -> Result<(), ScimError> {
    let Some(attr) = find(attrs, key) else {
        if value.is_null() {
            return Ok(());
        }
        return Err(unknown_attribute(key, owner, attrs));
    };
    if attr.mutability == Mutability::ReadOnly {
        return Ok(());
    }
    match coerce(attr, value)? {
        Some(v) => out.insert(attr.name.to_string(), v),
        None => out.remove(attr.name),
    };
    Ok(())
}

pub(crate) fn unknown_attribute(key: &str, owner: &str, attrs: &[Attr]) -> ScimError {
    let known: Vec<&str> = attrs.iter().map(|a| a.name).collect();
    ScimError::bad(
        ScimType::InvalidSyntax,
        format!(
            "'{}' is not an attribute of {owner} (known: {})",
            shorten(key),
            known.join(", ")
        ),
    )
}

/// `schemas` is a list of URNs. Others than Latchkey's are tolerated:
/// Entra lists a Microsoft one on every Group.
fn check_schemas(value: &Value) -> Result<(), ScimError> {
    match value {
        Value::Array(items) if items.iter().all(Value::is_string) => Ok(()),
        _ => Err(ScimError::bad(
            ScimType::InvalidValue,
            "'schemas' must be a list of schema URNs",
        )),
    }
}

/// The stored form of `value` for `attr`; None when it leaves the
/// attribute unassigned (null, an empty list, a write-only value).
pub fn coerce(attr: &'static Attr, value: &Value) -> Result<Option<Value>, ScimError> {
    if value.is_null() || attr.mutability == Mutability::WriteOnly {
        return Ok(None);
    }
    if attr.multi {
        let Value::Array(items) = value else {
            return Err(wrong_type(attr, "a list"));
        };
        let bound = if attr.name == "members" {
            MAX_GROUP_MEMBERS
        } else {
            MAX_VALUES
        };
        if items.len() > bound {
            return Err(ScimError::bad(
                ScimType::InvalidValue,
                format!(
                    "'{}' has {} values; Latchkey keeps at most {bound}",
                    attr.name,
                    items.len()
                ),
            ));
        }
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            if let Some(v) = coerce_one(attr, item)?
                && !out.contains(&v)
            {
                out.push(v);
            }
        }
        return Ok((!out.is_empty()).then_some(Value::Array(out)));
    }
    // Entra wraps a single-valued complex value (a manager) in a list.
    match value {
        Value::Array(items) if attr.ty == Type::Complex && items.len() == 1 => {
            coerce_one(attr, &items[0])
        }
        _ => coerce_one(attr, value),
    }
}

/// One value (of a list, for a multi-valued attribute).
fn coerce_one(attr: &'static Attr, value: &Value) -> Result<Option<Value>, ScimError> {
    Ok(Some(match (attr.ty, value) {
        (_, Value::Null) => return Ok(None),
        (Type::String | Type::Reference, Value::String(s)) => {
            if s.len() > MAX_STRING_BYTES {
                return Err(ScimError::bad(
                    ScimType::InvalidValue,
                    format!(
                        "'{}' is {} bytes long; Latchkey keeps at most {MAX_STRING_BYTES}",
                        attr.name,
                        s.len()
                    ),
                ));
            }
            value.clone()
        }
        (Type::Boolean, Value::Bool(_)) => value.clone(),
        // Entra (without `aadOptscim062020`) sends booleans as "True"/"False".
        (Type::Boolean, Value::String(s)) if s.eq_ignore_ascii_case("true") => Value::Bool(true),
        (Type::Boolean, Value::String(s)) if s.eq_ignore_ascii_case("false") => Value::Bool(false),
        (Type::Complex, Value::Object(fields)) => {
            let mut out = Map::new();
            for (k, v) in fields {
                set_attribute(&mut out, attr.sub, k, v, attr.name)?;
            }
            if out.is_empty() {
                return Ok(None);
            }
            Value::Object(out)
        }
        // A bare id where a reference is expected (`"manager": "123"`).
        (Type::Complex, Value::String(_)) if find(attr.sub, "value").is_some() => {
            json!({ "value": coerce_one(find(attr.sub, "value").unwrap_or(attr), value)? })
        }
        (Type::String | Type::Reference, _) => return Err(wrong_type(attr, "a string")),
        (Type::Boolean, _) => return Err(wrong_type(attr, "true or false")),
        (Type::Complex, _) => return Err(wrong_type(attr, "an object")),
    }))
}

fn wrong_type(attr: &Attr, expected: &str) -> ScimError {
    ScimError::bad(
        ScimType::InvalidValue,
        format!("'{}' must be {expected}", attr.name),
    )
}

/// The attributes a resource cannot be without, and what a `userName`
/// must be to serve as a Latchkey user id.
pub fn check_required(kind: ResourceKind, resource: &Map<String, Value>) -> Result<(), ScimError> {
    for attr in kind.schema().attrs.iter().filter(|a| a.required) {
        match resource.get(attr.name).and_then(Value::as_str) {
            Some(s) if !s.trim().is_empty() => {}
            _ => {
                return Err(ScimError::bad(
                    ScimType::InvalidValue,
                    format!("a {} needs a non-empty '{}'", kind.name(), attr.name),
                ));
            }
        }
    }
    if kind == ResourceKind::User {
        let name = resource
            .get("userName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if name.len() > MAX_USER_NAME_BYTES || name.chars().any(char::is_control) {
            return Err(ScimError::bad(
                ScimType::InvalidValue,
                format!(
                    "'userName' is the person's Latchkey user id: at most {MAX_USER_NAME_BYTES} bytes, no control characters"
                ),
            ));
        }
    }
    Ok(())
}

/// Whether two values of `attr` are equal as SCIM compares them.
pub fn same_value(attr: &Attr, a: &str, b: &str) -> bool {
    if attr.case_exact {
        a == b
    } else {
        a.to_lowercase() == b.to_lowercase()
    }
}

/// The `/Schemas` document of `schema` (RFC 7643 §7).
pub fn schema_document(schema: &Schema, location: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": schema.urn,
        "name": schema.name,
        "description": format!("{} as Latchkey stores it", schema.name),
        "attributes": schema.attrs.iter().map(attribute_document).collect::<Vec<_>>(),
        "meta": {"resourceType": "Schema", "location": location},
    })
}

fn attribute_document(attr: &Attr) -> Value {
    let mut doc = json!({
        "name": attr.name,
        "type": match attr.ty {
            Type::String => "string",
            Type::Boolean => "boolean",
            Type::Reference => "reference",
            Type::Complex => "complex",
        },
        "multiValued": attr.multi,
        "description": attr.name,
        "required": attr.required,
        "caseExact": attr.case_exact,
        "mutability": match attr.mutability {
            Mutability::ReadWrite => "readWrite",
            Mutability::ReadOnly => "readOnly",
            Mutability::WriteOnly => "writeOnly",
        },
        "returned": if attr.mutability == Mutability::WriteOnly { "never" } else { "default" },
        "uniqueness": if attr.name == "userName" { "server" } else { "none" },
    });
    if attr.ty == Type::Reference {
        doc["referenceTypes"] = json!(["external", "User", "Group"]);
    }
    if !attr.sub.is_empty() {
        doc["subAttributes"] = json!(attr.sub.iter().map(attribute_document).collect::<Vec<_>>());
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn okta_user() -> Value {
        json!({"schemas": [USER_SCHEMA], "userName": "test.user@okta.local",
            "name": {"givenName": "Test", "familyName": "User"},
            "emails": [{"primary": true, "value": "test.user@okta.local", "type": "work"}],
            "displayName": "Test User", "locale": "en-US", "externalId": "00ujl29u0le5T6Aj10h7",
            "groups": [], "password": "1mz050nq", "active": true})
    }

    #[test]
    fn an_okta_user_is_stored_without_its_password_or_groups() {
        let stored = normalize(ResourceKind::User, &okta_user()).unwrap();
        assert!(stored.get("password").is_none());
        assert!(stored.get("groups").is_none());
        assert_eq!(stored["userName"], "test.user@okta.local");
        assert_eq!(stored["emails"][0]["primary"], true);
        assert!(stored.get("schemas").is_none());
    }

    #[test]
    fn an_entra_user_keeps_its_extension_and_tolerates_meta_nulls_and_empty_roles() {
        let input = json!({"schemas": [USER_SCHEMA, ENTERPRISE_USER_SCHEMA],
            "externalId": "0a21f0f2", "userName": "Test_User_ab64", "active": "True",
            "emails": [{"primary": true, "type": "work", "value": "t@testuser.com"}],
            "meta": {"resourceType": "User"}, "roles": [], "addresses": null, "title": null,
            "department": null,
            "name": {"formatted": "g f", "familyName": "f", "givenName": "g"},
            ENTERPRISE_USER_SCHEMA: {"employeeNumber": "7", "manager": "123456"}});
        let stored = normalize(ResourceKind::User, &input).unwrap();
        assert_eq!(stored["active"], true);
        assert!(stored.get("roles").is_none() && stored.get("meta").is_none());
        assert_eq!(
            stored[ENTERPRISE_USER_SCHEMA],
            json!({"employeeNumber": "7", "manager": {"value": "123456"}})
        );
    }

    #[test]
    fn attribute_names_are_read_in_any_case_and_stored_canonically() {
        let stored = normalize(
            ResourceKind::User,
            &json!({"USERNAME": "a", "Name": {"GivenName": "A"}}),
        )
        .unwrap();
        assert_eq!(stored["userName"], "a");
        assert_eq!(stored["name"]["givenName"], "A");
    }

    #[test]
    fn unknown_attributes_wrong_types_and_missing_names_are_refused_with_their_scim_type() {
        let cases = [
            (
                json!({"userName": "a", "favouriteColour": "blue"}),
                ScimType::InvalidSyntax,
            ),
            (
                json!({"userName": "a", "name": {"nick": "x"}}),
                ScimType::InvalidSyntax,
            ),
            (
                json!({"userName": "a", "active": "maybe"}),
                ScimType::InvalidValue,
            ),
            (
                json!({"userName": "a", "active": 1}),
                ScimType::InvalidValue,
            ),
            (json!({"userName": 7}), ScimType::InvalidValue),
            (
                json!({"userName": "a", "emails": {"value": "x"}}),
                ScimType::InvalidValue,
            ),
            (
                json!({"userName": "a", "schemas": "x"}),
                ScimType::InvalidValue,
            ),
            (
                json!({"displayName": "no userName"}),
                ScimType::InvalidValue,
            ),
            (json!({"userName": "   "}), ScimType::InvalidValue),
            (json!(["not", "an", "object"]), ScimType::InvalidSyntax),
        ];
        for (input, expected) in cases {
            let e = normalize(ResourceKind::User, &input).unwrap_err();
            assert_eq!(
                (e.status, e.scim_type),
                (400, Some(expected)),
                "{input}: {e}"
            );
        }
    }

    #[test]
    fn sizes_are_bounded_and_the_refusal_names_the_bound() {
        let long = "x".repeat(MAX_STRING_BYTES + 1);
        let e =
            normalize(ResourceKind::User, &json!({"userName": "a", "title": long})).unwrap_err();
        assert!(e.detail.contains(&MAX_STRING_BYTES.to_string()), "{e}");
        let name = "x".repeat(MAX_USER_NAME_BYTES + 1);
        let e = normalize(ResourceKind::User, &json!({"userName": name})).unwrap_err();
        assert!(e.detail.contains(&MAX_USER_NAME_BYTES.to_string()), "{e}");
        let emails: Vec<Value> = (0..=MAX_VALUES)
            .map(|i| json!({"value": format!("{i}@x")}))
            .collect();
        let e = normalize(
            ResourceKind::User,
            &json!({"userName": "a", "emails": emails}),
        )
        .unwrap_err();
        assert!(e.detail.contains(&MAX_VALUES.to_string()), "{e}");
        let members: Vec<Value> = (0..=MAX_GROUP_MEMBERS)
            .map(|i| json!({"value": i.to_string()}))
            .collect();
        let e = normalize(
            ResourceKind::Group,
            &json!({"displayName": "g", "members": members}),
        )
        .unwrap_err();
        assert!(e.detail.contains(&MAX_GROUP_MEMBERS.to_string()), "{e}");
    }

    #[test]
    fn an_entra_group_with_microsofts_schema_urn_is_accepted() {
        let input = json!({"schemas": [GROUP_SCHEMA,
            "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"],
            "externalId": "8aa1", "displayName": "Eng", "meta": {"resourceType": "Group"},
            "members": [{"$ref": null, "value": "u1"}, {"value": "u1"}]});
        let stored = normalize(ResourceKind::Group, &input).unwrap();
        assert_eq!(
            stored["members"],
            json!([{"value": "u1"}]),
            "repeats collapse"
        );
    }

    #[test]
    fn attributes_are_located_by_plain_or_urn_names() {
        let (l, rest) = locate(ResourceKind::User, "emails[type eq \"work\"].value").unwrap();
        assert_eq!(
            (l.ext, l.attr.name, rest),
            (None, "emails", "[type eq \"work\"].value")
        );
        let (l, rest) = locate(
            ResourceKind::User,
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber",
        )
        .unwrap();
        assert_eq!(
            (l.ext, l.attr.name, rest),
            (Some(ENTERPRISE_USER_SCHEMA), "employeeNumber", "")
        );
        let (l, _) = locate(ResourceKind::User, "manager").unwrap();
        assert_eq!(l.ext, Some(ENTERPRISE_USER_SCHEMA));
        let (l, rest) = locate(
            ResourceKind::User,
            "urn:ietf:params:scim:schemas:core:2.0:User:name.givenName",
        )
        .unwrap();
        assert_eq!((l.attr.name, rest), ("name", ".givenName"));
        assert!(locate(ResourceKind::User, "shoeSize").is_none());
        assert!(locate(ResourceKind::Group, "urn:x:y").is_none());
    }
}
