//! PATCH (RFC 7644 §3.5.2) applied to a stored resource, in the forms
//! identity providers send:
//!
//! * Okta: lowercase ops; `{"op":"replace","value":{"active":false}}` (no
//!   path, a value object, which for a Group rename also carries the
//!   Group's `id`); members added with `path: "members"` and a list,
//!   removed with `members[value eq "…"]`;
//! * Entra ID: capitalised ops (`"Replace"`); `"path":"active"` with
//!   `"value":"False"` (a boolean as a string); filtered paths such as
//!   `emails[type eq "work"].value`, created when no work address exists
//!   yet; extension attributes by URN (`urn:…:enterprise:2.0:User:manager`);
//!   members removed with `path: "members"` and the list of those to
//!   remove; a no-path value object whose keys are paths (`name.givenName`).
//!
//! Operations apply in order to a copy; the caller stores it only when
//! every one succeeded, so a failed PATCH changes nothing.

use serde_json::{Map, Value};

use super::filter::comparison;
use super::schema::{
    Attr, Located, Mutability, Type, check_required, coerce, extension_named, find, locate,
    same_value,
};
use super::{MAX_PATCH_OPERATIONS, PATCH_OP_SCHEMA, ResourceKind, ScimError, ScimType, shorten};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Remove,
    Replace,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub op: Op,
    pub path: Option<String>,
    pub value: Option<Value>,
}

/// Reads a PatchOp request body.
pub fn parse(body: &Value) -> Result<Vec<Operation>, ScimError> {
    let syntax = |m: String| ScimError::bad(ScimType::InvalidSyntax, m);
    let Value::Object(fields) = body else {
        return Err(syntax("a PATCH body must be a PatchOp JSON object".into()));
    };
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    let lists_patch_op = field("schemas")
        .and_then(Value::as_array)
        .is_some_and(|s| s.iter().any(|u| u.as_str() == Some(PATCH_OP_SCHEMA)));
    if !lists_patch_op {
        return Err(syntax(format!(
            "a PATCH body's 'schemas' must list {PATCH_OP_SCHEMA}"
        )));
    }
    let Some(Value::Array(ops)) = field("Operations") else {
        return Err(syntax("a PATCH body needs 'Operations', a list".into()));
    };
    if ops.is_empty() || ops.len() > MAX_PATCH_OPERATIONS {
        return Err(syntax(format!(
            "a PATCH carries 1 to {MAX_PATCH_OPERATIONS} operations, not {}",
            ops.len()
        )));
    }
    ops.iter().map(operation).collect()
}

fn operation(raw: &Value) -> Result<Operation, ScimError> {
    let syntax = |m: String| ScimError::bad(ScimType::InvalidSyntax, m);
    let Value::Object(fields) = raw else {
        return Err(syntax("each operation must be an object".into()));
    };
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    let op = match get("op")
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase)
    {
        Some(op) if op == "add" => Op::Add,
        Some(op) if op == "remove" => Op::Remove,
        Some(op) if op == "replace" => Op::Replace,
        other => {
            return Err(syntax(format!(
                "operation 'op' must be add, remove or replace, not {}",
                other.map_or_else(|| "nothing".to_string(), |o| format!("'{}'", shorten(&o)))
            )));
        }
    };
    let path = match get("path") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) if p.trim().is_empty() => None,
        Some(Value::String(p)) => Some(p.trim().to_string()),
        Some(_) => return Err(syntax("operation 'path' must be a string".into())),
    };
    let value = get("value").filter(|v| !v.is_null()).cloned();
    if op != Op::Remove && value.is_none() {
        return Err(syntax("add and replace need a 'value'".into()));
    }
    Ok(Operation { op, path, value })
}

/// Applies `ops` in order to `resource` (stored form), then checks the
/// result still has what a resource needs.
pub fn apply(
    kind: ResourceKind,
    resource: &mut Map<String, Value>,
    ops: &[Operation],
) -> Result<(), ScimError> {
    for operation in ops {
        match (&operation.path, &operation.value) {
            (Some(path), value) => {
                let path = Path::parse(kind, path)?;
                if path.loc.attr.mutability == Mutability::ReadOnly {
                    return Err(ScimError::bad(
                        ScimType::Mutability,
                        format!(
                            "'{}' is set by Latchkey, not by a client",
                            path.loc.attr.name
                        ),
                    ));
                }
                path.apply(resource, operation.op, value.as_ref())?;
            }
            (None, _) if operation.op == Op::Remove => {
                return Err(ScimError::bad(ScimType::NoTarget, "remove needs a 'path'"));
            }
            (None, Some(Value::Object(fields))) => {
                for (key, value) in fields {
                    keyed(kind, resource, operation.op, key, value)?;
                }
            }
            (None, _) => {
                return Err(ScimError::bad(
                    ScimType::InvalidValue,
                    "without a 'path', the 'value' must be an object of attributes",
                ));
            }
        }
    }
    check_required(kind, resource)
}

/// One key of a no-path value object, read as a path (Entra sends
/// `name.givenName` and URN-prefixed keys); an extension's object applies
/// each of its attributes. The server's attributes (`id`, `meta`, a
/// User's `groups`) are ignored: Okta's Group rename sends the `id`.
fn keyed(
    kind: ResourceKind,
    resource: &mut Map<String, Value>,
    op: Op,
    key: &str,
    value: &Value,
) -> Result<(), ScimError> {
    if ["id", "meta", "schemas"]
        .iter()
        .any(|k| k.eq_ignore_ascii_case(key))
    {
        return Ok(());
    }
    if let Some(ext) = extension_named(kind, key) {
        let Value::Object(inner) = value else {
            return Err(ScimError::bad(
                ScimType::InvalidValue,
                format!("'{}' must be an object of its attributes", ext.urn),
            ));
        };
        for (k, v) in inner {
            keyed(kind, resource, op, &format!("{}:{k}", ext.urn), v)?;
        }
        return Ok(());
    }
    let path = Path::parse(kind, key)?;
    if path.loc.attr.mutability == Mutability::ReadOnly {
        return Ok(());
    }
    path.apply(resource, op, Some(value))
}

/// `attr`, `attr.sub`, `attr[sub eq "v"]` or `attr[sub eq "v"].sub`,
/// resolved against the schema.
struct Path {
    loc: Located,
    filter: Option<(&'static Attr, Value)>,
    sub: Option<&'static Attr>,
}

impl Path {
    fn parse(kind: ResourceKind, text: &str) -> Result<Path, ScimError> {
        let invalid = |why: &str| {
            ScimError::bad(
                ScimType::InvalidPath,
                format!("path '{}': {why}", shorten(text)),
            )
        };
        let (loc, mut rest) = locate(kind, text)
            .ok_or_else(|| invalid(&format!("no such attribute of a {}", kind.name())))?;
        let attr = loc.attr;
        let mut filter = None;
        if let Some(inner) = rest.strip_prefix('[') {
            let (inside, after) = inner
                .rsplit_once(']')
                .ok_or_else(|| invalid("an unclosed '['"))?;
            if !attr.multi {
                return Err(invalid(&format!(
                    "'{}' has one value: no filter",
                    attr.name
                )));
            }
            let (name, value) = comparison(inside).map_err(|why| {
                ScimError::bad(
                    ScimType::InvalidFilter,
                    format!("path '{}': {why}", shorten(text)),
                )
            })?;
            let sub = find(attr.sub, name)
                .ok_or_else(|| invalid(&format!("'{name}' is not part of '{}'", attr.name)))?;
            filter = Some((sub, value));
            rest = after;
        }
        let sub =
            match rest {
                "" => None,
                _ => {
                    let name = rest
                        .strip_prefix('.')
                        .ok_or_else(|| invalid("expected '.' and a sub-attribute"))?;
                    if attr.ty != Type::Complex {
                        return Err(invalid(&format!("'{}' has no sub-attributes", attr.name)));
                    }
                    Some(find(attr.sub, name).ok_or_else(|| {
                        invalid(&format!("'{name}' is not part of '{}'", attr.name))
                    })?)
                }
            };
        Ok(Path { loc, filter, sub })
    }

    fn apply(
        &self,
        resource: &mut Map<String, Value>,
        op: Op,
        value: Option<&Value>,
    ) -> Result<(), ScimError> {
        let Some(urn) = self.loc.ext else {
            return self.apply_in(resource, op, value);
        };
        let mut inner = match resource.remove(urn) {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let applied = self.apply_in(&mut inner, op, value);
        if !inner.is_empty() {
            resource.insert(urn.to_string(), Value::Object(inner));
        }
        applied
    }

    /// The operation on the object that holds the attribute.
    fn apply_in(
        &self,
        holder: &mut Map<String, Value>,
        op: Op,
        value: Option<&Value>,
    ) -> Result<(), ScimError> {
        let attr = self.loc.attr;
        let name = attr.name;
        match (op, &self.filter, self.sub) {
            (Op::Remove, None, None) => {
                if attr.required {
                    return Err(ScimError::bad(
                        ScimType::Mutability,
                        format!("'{name}' is required and cannot be removed"),
                    ));
                }
                match (value, attr.multi) {
                    // Entra removes members by listing them.
                    (Some(listed), true) => {
                        let listed = as_list(listed);
                        retain(holder, name, |item| {
                            !listed.iter().any(|l| {
                                l.get("value").is_some_and(|v| Some(v) == item.get("value"))
                            })
                        });
                    }
                    _ => {
                        holder.remove(name);
                    }
                }
            }
            (Op::Remove, filter, Some(sub)) => {
                each_matching(holder, attr, filter.as_ref(), |item| {
                    item.remove(sub.name);
                });
                tidy(holder, name);
            }
            (Op::Remove, Some(filter), None) => {
                retain(holder, name, |item| !matches(item, filter));
            }
            (_, None, None) => {
                let value = value.unwrap_or(&Value::Null);
                if attr.multi {
                    let new = coerce(attr, &Value::Array(as_list(value)))?;
                    let mut items = match (op, holder.remove(name)) {
                        (Op::Add, Some(Value::Array(items))) => items,
                        _ => Vec::new(),
                    };
                    for item in new.map(|v| as_list(&v)).unwrap_or_default() {
                        let same = |i: &Value| {
                            i == &item
                                || (i.get("value").is_some() && i.get("value") == item.get("value"))
                        };
                        match items.iter_mut().find(|i| same(i)) {
                            Some(existing) => *existing = item,
                            None => items.push(item),
                        }
                    }
                    set_list(holder, attr, items)?;
                } else if attr.ty == Type::Complex {
                    // Sub-attributes given replace theirs; others stay.
                    let mut merged = match holder.remove(name) {
                        Some(Value::Object(m)) => m,
                        _ => Map::new(),
                    };
                    if let Some(Value::Object(new)) = coerce(attr, value)? {
                        merged.extend(new);
                    }
                    if !merged.is_empty() {
                        holder.insert(name.to_string(), Value::Object(merged));
                    }
                } else {
                    match coerce(attr, value)? {
                        Some(v) => holder.insert(name.to_string(), v),
                        None => holder.remove(name),
                    };
                }
            }
            (_, None, Some(sub)) if !attr.multi => {
                let new = coerce(sub, value.unwrap_or(&Value::Null))?;
                let mut object = match holder.remove(name) {
                    Some(Value::Object(m)) => m,
                    _ => Map::new(),
                };
                match new {
                    Some(v) => object.insert(sub.name.to_string(), v),
                    None => object.remove(sub.name),
                };
                if !object.is_empty() {
                    holder.insert(name.to_string(), Value::Object(object));
                }
            }
            (_, filter, sub) => {
                let value = value.unwrap_or(&Value::Null);
                // What replaces (or merges into) each matching value.
                let new = match sub {
                    Some(sub) => coerce(sub, value)?,
                    None => coerce(attr, &Value::Array(as_list(value)))?
                        .and_then(|v| as_list(&v).into_iter().next()),
                };
                let Some(new) = new else {
                    return Err(ScimError::bad(
                        ScimType::InvalidValue,
                        format!("'{name}' needs a value"),
                    ));
                };
                let mut found = false;
                each_matching(holder, attr, filter.as_ref(), |item| {
                    found = true;
                    match (sub, &new) {
                        (Some(sub), v) => {
                            item.insert(sub.name.to_string(), v.clone());
                        }
                        (None, Value::Object(fields)) => item.extend(fields.clone()),
                        (None, _) => {}
                    }
                });
                if !found {
                    // Entra sets `emails[type eq "work"].value` on a user
                    // with no work address yet: that value is created.
                    let Some((filter_attr, filter_value)) = filter.as_ref() else {
                        return Err(ScimError::bad(
                            ScimType::NoTarget,
                            format!("'{name}' has no values to change"),
                        ));
                    };
                    if sub.is_none() && op == Op::Replace {
                        return Err(ScimError::bad(
                            ScimType::NoTarget,
                            format!("no value of '{name}' matches the path's filter"),
                        ));
                    }
                    let mut item = match (sub, new) {
                        (Some(sub), v) => Map::from_iter([(sub.name.to_string(), v)]),
                        (None, Value::Object(fields)) => fields,
                        (None, _) => Map::new(),
                    };
                    item.insert(filter_attr.name.to_string(), filter_value.clone());
                    let mut items = match holder.remove(name) {
                        Some(Value::Array(items)) => items,
                        _ => Vec::new(),
                    };
                    items.push(Value::Object(item));
                    set_list(holder, attr, items)?;
                }
            }
        }
        Ok(())
    }
}

/// A value as a list: itself when it is one.
fn as_list(value: &Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items.clone(),
        Value::Null => Vec::new(),
        other => vec![other.clone()],
    }
}

/// Stores `items` as `attr`'s values, within its bound (re-read through
/// the schema, which enforces it).
fn set_list(
    holder: &mut Map<String, Value>,
    attr: &'static Attr,
    items: Vec<Value>,
) -> Result<(), ScimError> {
    match coerce(attr, &Value::Array(items))? {
        Some(v) => holder.insert(attr.name.to_string(), v),
        None => holder.remove(attr.name),
    };
    Ok(())
}

fn matches(item: &Value, (sub, expected): &(&'static Attr, Value)) -> bool {
    match (item.get(sub.name), expected) {
        (Some(Value::String(have)), Value::String(want)) => same_value(sub, have, want),
        (Some(have), want) => have == want,
        (None, _) => false,
    }
}

/// Runs `change` on each value of the multi-valued (or the one complex)
/// `attr` that matches `filter` (every value without one).
fn each_matching(
    holder: &mut Map<String, Value>,
    attr: &'static Attr,
    filter: Option<&(&'static Attr, Value)>,
    mut change: impl FnMut(&mut Map<String, Value>),
) {
    match holder.get_mut(attr.name) {
        Some(Value::Array(items)) => {
            for item in items {
                if filter.is_none_or(|f| matches(item, f))
                    && let Value::Object(fields) = item
                {
                    change(fields);
                }
            }
        }
        Some(Value::Object(fields)) if filter.is_none() => change(fields),
        _ => {}
    }
}

fn retain(holder: &mut Map<String, Value>, name: &str, keep: impl Fn(&Value) -> bool) {
    if let Some(Value::Array(items)) = holder.get_mut(name) {
        items.retain(|i| keep(i));
    }
    tidy(holder, name);
}

/// An attribute left with no values is unassigned.
fn tidy(holder: &mut Map<String, Value>, name: &str) {
    if let Some(Value::Array(items)) = holder.get_mut(name) {
        items.retain(|i| !i.as_object().is_some_and(Map::is_empty));
    }
    let empty = match holder.get(name) {
        Some(Value::Array(items)) => items.is_empty(),
        Some(Value::Object(fields)) => fields.is_empty(),
        _ => false,
    };
    if empty {
        holder.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::schema::normalize;
    use crate::scim::{ENTERPRISE_USER_SCHEMA, USER_SCHEMA};
    use serde_json::json;

    fn patch(ops: Value) -> Value {
        json!({"schemas": [PATCH_OP_SCHEMA], "Operations": ops})
    }

    fn user() -> Map<String, Value> {
        normalize(
            ResourceKind::User,
            &json!({"schemas": [USER_SCHEMA], "userName": "alice@example.com", "active": true,
                "name": {"givenName": "Alice", "familyName": "Liddell"},
                "emails": [{"value": "alice@example.com", "type": "work", "primary": true}]}),
        )
        .unwrap()
    }

    fn group() -> Map<String, Value> {
        normalize(
            ResourceKind::Group,
            &json!({"displayName": "Engineering", "members": [{"value": "u1"}, {"value": "u2"}]}),
        )
        .unwrap()
    }

    fn patched(
        kind: ResourceKind,
        mut resource: Map<String, Value>,
        ops: Value,
    ) -> Result<Map<String, Value>, ScimError> {
        apply(kind, &mut resource, &parse(&patch(ops))?)?;
        Ok(resource)
    }

    fn members(g: &Map<String, Value>) -> Vec<&str> {
        g.get("members")
            .and_then(Value::as_array)
            .map(|m| m.iter().filter_map(|i| i["value"].as_str()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn okta_deactivates_and_reactivates_with_a_value_object() {
        let u = patched(
            ResourceKind::User,
            user(),
            json!([{"op": "replace", "value": {"active": false}}]),
        )
        .unwrap();
        assert_eq!(u["active"], false);
        let u = patched(
            ResourceKind::User,
            u,
            json!([{"op": "replace", "value": {"active": true}}]),
        )
        .unwrap();
        assert_eq!(u["active"], true);
    }

    #[test]
    fn okta_password_sync_is_accepted_and_never_stored() {
        let u = patched(
            ResourceKind::User,
            user(),
            json!([{"op": "replace", "value": {"password": "s3cret"}}]),
        )
        .unwrap();
        assert!(u.get("password").is_none());
    }

    #[test]
    fn okta_renames_a_group_with_its_id_in_the_value() {
        let g = patched(
            ResourceKind::Group,
            group(),
            json!([{"op": "replace", "value": {"id": "g1", "displayName": "Platform"}}]),
        )
        .unwrap();
        assert_eq!(g["displayName"], "Platform");
        assert!(g.get("id").is_none());
    }

    #[test]
    fn okta_adds_and_removes_members_in_one_patch() {
        let g = patched(
            ResourceKind::Group,
            group(),
            json!([
                {"op": "remove", "path": "members[value eq \"u1\"]"},
                {"op": "add", "path": "members", "value": [{"value": "u3", "display": "carol@example.com"}]}
            ]),
        )
        .unwrap();
        assert_eq!(members(&g), ["u2", "u3"]);
        // The whole set, replaced.
        let g = patched(
            ResourceKind::Group,
            g,
            json!([{"op": "replace", "path": "members", "value": [{"value": "u9"}]}]),
        )
        .unwrap();
        assert_eq!(members(&g), ["u9"]);
    }

    #[test]
    fn entra_replaces_active_with_a_string_boolean_and_capitalised_op() {
        for (text, expected) in [("False", false), ("True", true), ("false", false)] {
            let u = patched(
                ResourceKind::User,
                user(),
                json!([{"op": "Replace", "path": "active", "value": text}]),
            )
            .unwrap();
            assert_eq!(u["active"], expected);
        }
        let u = patched(
            ResourceKind::User,
            user(),
            json!([{"op": "replace", "path": "active", "value": false}]),
        )
        .unwrap();
        assert_eq!(u["active"], false);
    }

    #[test]
    fn entra_replaces_the_work_email_and_names_by_path() {
        let u = patched(
            ResourceKind::User,
            user(),
            json!([
                {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "updated@example.com"},
                {"op": "Replace", "path": "name.familyName", "value": "Pleasance"},
                {"op": "Add", "path": "nickName", "value": "Al"}
            ]),
        )
        .unwrap();
        assert_eq!(
            u["emails"],
            json!([{"value": "updated@example.com", "type": "work", "primary": true}])
        );
        assert_eq!(
            u["name"],
            json!({"givenName": "Alice", "familyName": "Pleasance"})
        );
        assert_eq!(u["nickName"], "Al");
    }

    #[test]
    fn entra_creates_a_work_email_the_user_did_not_have() {
        let mut u = user();
        u.remove("emails");
        let u = patched(
            ResourceKind::User,
            u,
            json!([{"op": "Add", "path": "emails[type eq \"work\"].value", "value": "new@example.com"}]),
        )
        .unwrap();
        assert_eq!(
            u["emails"],
            json!([{"value": "new@example.com", "type": "work"}])
        );
    }

    #[test]
    fn entra_sets_enterprise_attributes_by_urn_and_the_manager_wrapped_in_a_list() {
        let u = patched(
            ResourceKind::User,
            user(),
            json!([
                {"op": "Replace", "path": format!("{ENTERPRISE_USER_SCHEMA}:employeeNumber"), "value": "42"},
                {"op": "Add", "path": "manager", "value": [{"$ref": null, "value": "boss"}]}
            ]),
        )
        .unwrap();
        assert_eq!(
            u[ENTERPRISE_USER_SCHEMA],
            json!({"employeeNumber": "42", "manager": {"value": "boss"}})
        );
        let u = patched(
            ResourceKind::User,
            u,
            json!([{"op": "Remove", "path": format!("{ENTERPRISE_USER_SCHEMA}:manager")},
                   {"op": "Remove", "path": format!("{ENTERPRISE_USER_SCHEMA}:employeeNumber")}]),
        )
        .unwrap();
        assert!(
            u.get(ENTERPRISE_USER_SCHEMA).is_none(),
            "an emptied extension goes"
        );
    }

    #[test]
    fn entra_replaces_with_dotted_and_urn_keys_in_a_value_object() {
        let u = patched(
            ResourceKind::User,
            user(),
            json!([{"op": "replace", "value": {
                "displayName": "Alice L", "name.givenName": "Ally",
                format!("{ENTERPRISE_USER_SCHEMA}:department"): "Research",
                ENTERPRISE_USER_SCHEMA: {"division": "Labs"}}}]),
        )
        .unwrap();
        assert_eq!(u["displayName"], "Alice L");
        assert_eq!(u["name"]["givenName"], "Ally");
        assert_eq!(
            u[ENTERPRISE_USER_SCHEMA],
            json!({"department": "Research", "division": "Labs"})
        );
    }

    #[test]
    fn entra_adds_members_with_null_refs_and_removes_them_by_listing() {
        let g = patched(
            ResourceKind::Group,
            group(),
            json!([{"op": "Add", "path": "members", "value": [{"$ref": null, "value": "u3"}, {"value": "u1"}]}]),
        )
        .unwrap();
        assert_eq!(
            members(&g),
            ["u1", "u2", "u3"],
            "adding a member twice changes nothing"
        );
        let g = patched(
            ResourceKind::Group,
            g,
            json!([{"op": "Remove", "path": "members", "value": [{"$ref": null, "value": "u1"}, {"value": "u3"}]}]),
        )
        .unwrap();
        assert_eq!(members(&g), ["u2"]);
        let g = patched(
            ResourceKind::Group,
            g,
            json!([{"op": "Replace", "path": "displayName", "value": "Ops"}]),
        )
        .unwrap();
        assert_eq!(g["displayName"], "Ops");
        // Removing without a value removes every member.
        let g = patched(
            ResourceKind::Group,
            g,
            json!([{"op": "remove", "path": "members"}]),
        )
        .unwrap();
        assert!(g.get("members").is_none());
    }

    #[test]
    fn a_user_name_change_by_path_is_applied() {
        let u = patched(
            ResourceKind::User,
            user(),
            json!([{"op": "Replace", "path": "userName", "value": "alice2"}]),
        )
        .unwrap();
        assert_eq!(u["userName"], "alice2");
    }

    #[test]
    fn bad_patches_are_refused_with_their_scim_type() {
        let cases = [
            (
                json!([{"op": "frobnicate", "path": "active", "value": true}]),
                ScimType::InvalidSyntax,
            ),
            (
                json!([{"op": "replace", "path": "active"}]),
                ScimType::InvalidSyntax,
            ),
            (
                json!([{"op": "replace", "path": "shoeSize", "value": 9}]),
                ScimType::InvalidPath,
            ),
            (
                json!([{"op": "replace", "path": "name.nick", "value": "x"}]),
                ScimType::InvalidPath,
            ),
            (
                json!([{"op": "replace", "path": "active.x", "value": "x"}]),
                ScimType::InvalidPath,
            ),
            (
                json!([{"op": "replace", "path": "emails[type co \"w\"].value", "value": "x"}]),
                ScimType::InvalidFilter,
            ),
            (
                json!([{"op": "replace", "path": "emails[type eq \"w\"", "value": "x"}]),
                ScimType::InvalidPath,
            ),
            (
                json!([{"op": "replace", "path": "active", "value": "perhaps"}]),
                ScimType::InvalidValue,
            ),
            (
                json!([{"op": "replace", "path": "emails", "value": 7}]),
                ScimType::InvalidValue,
            ),
            (
                json!([{"op": "replace", "value": {"favouriteColour": "blue"}}]),
                ScimType::InvalidPath,
            ),
            (
                json!([{"op": "replace", "value": "not an object"}]),
                ScimType::InvalidValue,
            ),
            (json!([{"op": "remove"}]), ScimType::NoTarget),
            (
                json!([{"op": "remove", "path": "userName"}]),
                ScimType::Mutability,
            ),
            (
                json!([{"op": "replace", "path": "groups", "value": [{"value": "g"}]}]),
                ScimType::Mutability,
            ),
            (
                json!([{"op": "replace", "path": "phoneNumbers[type eq \"work\"]", "value": {"value": "1"}}]),
                ScimType::NoTarget,
            ),
            (
                json!([{"op": "replace", "path": "userName", "value": ""}]),
                ScimType::InvalidValue,
            ),
            (json!([]), ScimType::InvalidSyntax),
        ];
        for (ops, expected) in cases {
            let e = patched(ResourceKind::User, user(), ops.clone()).unwrap_err();
            assert_eq!((e.status, e.scim_type), (400, Some(expected)), "{ops}: {e}");
        }
        // Setting `groups` is refused on a User: the Groups say who is in them.
        let e = patched(
            ResourceKind::User,
            user(),
            json!([{"op": "add", "path": "groups", "value": [{"value": "g"}]}]),
        )
        .unwrap_err();
        assert_eq!(e.scim_type, Some(ScimType::Mutability), "{e}");
        let no_schema = json!({"Operations": [{"op": "replace", "value": {"active": false}}]});
        assert_eq!(
            parse(&no_schema).unwrap_err().scim_type,
            Some(ScimType::InvalidSyntax)
        );
    }

    #[test]
    fn a_failed_operation_leaves_the_resource_as_it_was_for_the_caller() {
        // `apply` works on the caller's copy; the caller keeps its original.
        let original = user();
        let mut copy = original.clone();
        let ops = parse(&patch(json!([
            {"op": "replace", "path": "displayName", "value": "changed"},
            {"op": "replace", "path": "shoeSize", "value": 1}
        ])))
        .unwrap();
        assert!(apply(ResourceKind::User, &mut copy, &ops).is_err());
        assert!(original.get("displayName").is_none());
    }

    #[test]
    fn members_are_bounded_when_added() {
        let many: Vec<Value> = (0..crate::scim::MAX_GROUP_MEMBERS)
            .map(|i| json!({"value": format!("m{i}")}))
            .collect();
        let g = patched(
            ResourceKind::Group,
            group(),
            json!([{"op": "replace", "path": "members", "value": many}]),
        )
        .unwrap();
        let e = patched(
            ResourceKind::Group,
            g,
            json!([{"op": "add", "path": "members", "value": [{"value": "one-more"}]}]),
        )
        .unwrap_err();
        assert_eq!(e.scim_type, Some(ScimType::InvalidValue));
        assert!(e.detail.contains("1000"), "{e}");
    }
}
