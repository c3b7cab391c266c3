//! SCIM Groups: a Group's display name is a role value for each of its
//! members, so every change of a Group also rewrites the records of the
//! members it touches (their `groups`) and their principal records (the
//! names the request path reads), in the same step.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::{
    ATTEMPTS, Batch, IndexChange, Provisioning, ScimWriteError, StatusChanges, StoredResource,
    Write, contended, group_names, taken, to_json,
};
use crate::store::parse;
use latchkey_core::audit::LifecycleEvent;
use latchkey_core::identity::PrincipalKind;
use latchkey_core::scim::{ResourceKind, ScimError, ScimType, shorten};

const GROUP: ResourceKind = ResourceKind::Group;
/// How many member names an event lists (the count is always there).
const NAMES_IN_EVENT: usize = 50;

fn summary(r: &StoredResource) -> Value {
    let mut s = json!({
        "id": r.id,
        "displayName": r.text("displayName"),
        "members": r.ids("members").len(),
    });
    if let Some(x) = r.attributes.get("externalId") {
        s["externalId"] = x.clone();
    }
    s
}

/// Who joined and who left, by user name, for the event.
#[derive(Default)]
struct Moves {
    joined: Vec<String>,
    left: Vec<String>,
}

impl Moves {
    fn describe(&self, mut after: Value) -> Value {
        let listed = |names: &[String]| {
            names
                .iter()
                .take(NAMES_IN_EVENT)
                .cloned()
                .collect::<Vec<_>>()
        };
        if !self.joined.is_empty() {
            after["joined"] = json!(listed(&self.joined));
        }
        if !self.left.is_empty() {
            after["left"] = json!(listed(&self.left));
        }
        after
    }
}

impl Provisioning {
    pub async fn create_group(
        &self,
        attributes: Map<String, Value>,
    ) -> Result<(StoredResource, StatusChanges), ScimWriteError> {
        let id = latchkey_core::hex::random(16);
        let resource = StoredResource::new(id.clone(), attributes);
        let name = resource.text("displayName").to_string();
        let name_key = self.store.scim_name_key(GROUP, &name);
        let members = resource.ids("members");
        for _ in 0..ATTEMPTS {
            if self.store.get_raw(&name_key).await?.is_some() {
                return Err(taken(GROUP, &name));
            }
            let mut batch = Batch {
                writes: vec![
                    Write {
                        key: self.store.scim_key(GROUP, &id),
                        expected: None,
                        new: Some(to_json(&resource)),
                        publish: false,
                    },
                    Write {
                        key: name_key.clone(),
                        expected: None,
                        new: Some(id.clone()),
                        publish: false,
                    },
                ],
                index: Some((IndexChange::Add, id.clone())),
                events: Vec::new(),
            };
            let mut changes = StatusChanges::default();
            let moves = self
                .restate_members(
                    &mut batch,
                    &mut changes,
                    &id,
                    &name,
                    &members,
                    &members,
                    &members,
                )
                .await?;
            batch.events.push(LifecycleEvent::new(
                "scim.group.create",
                &self.actor,
                "scim_group",
                &name,
                None,
                Some(moves.describe(summary(&resource))),
            ));
            if self.try_commit(GROUP, &batch).await? {
                return Ok((resource, changes));
            }
        }
        Err(contended(GROUP, &id))
    }

    /// Changes Group `id` with `change` (PUT or PATCH), recording `action`;
    /// the members who join or leave (all of them on a rename) are
    /// rewritten with it.
    pub async fn change_group(
        &self,
        id: &str,
        action: &str,
        mut change: impl FnMut(&StoredResource) -> Result<Map<String, Value>, ScimError>,
    ) -> Result<(StoredResource, StatusChanges), ScimWriteError> {
        if !super::valid_id(id) {
            return Err(ScimError::not_found(GROUP, id).into());
        }
        let key = self.store.scim_key(GROUP, id);
        for _ in 0..ATTEMPTS {
            let Some(raw) = self.store.get_raw(&key).await? else {
                return Err(ScimError::not_found(GROUP, id).into());
            };
            let current: StoredResource = parse(&key, &raw)?;
            let new = current.changed(change(&current)?);
            let (old_name, new_name) = (current.text("displayName"), new.text("displayName"));
            let before: BTreeSet<String> = current.ids("members").into_iter().collect();
            let after: BTreeSet<String> = new.ids("members").into_iter().collect();
            let added: Vec<String> = after.difference(&before).cloned().collect();
            let affected: Vec<String> = if old_name != new_name {
                before.union(&after).cloned().collect()
            } else {
                before.symmetric_difference(&after).cloned().collect()
            };
            let mut batch = Batch {
                writes: vec![Write {
                    key: key.clone(),
                    expected: Some(raw.clone()),
                    new: Some(to_json(&new)),
                    publish: false,
                }],
                index: None,
                events: Vec::new(),
            };
            if old_name.to_lowercase() != new_name.to_lowercase() {
                let keys = [
                    self.store.scim_name_key(GROUP, new_name),
                    self.store.scim_name_key(GROUP, old_name),
                ];
                let raws = self.read(&keys).await?;
                if raws[0].as_deref().is_some_and(|other| other != id) {
                    return Err(taken(GROUP, new_name));
                }
                batch.writes.push(Write {
                    key: keys[0].clone(),
                    expected: raws[0].clone(),
                    new: Some(id.to_string()),
                    publish: false,
                });
                if raws[1].as_deref() == Some(id) {
                    batch.writes.push(Write {
                        key: keys[1].clone(),
                        expected: raws[1].clone(),
                        new: None,
                        publish: false,
                    });
                }
            }
            let members: Vec<String> = after.iter().cloned().collect();
            let mut changes = StatusChanges::default();
            let moves = self
                .restate_members(
                    &mut batch,
                    &mut changes,
                    id,
                    new_name,
                    &members,
                    &affected,
                    &added,
                )
                .await?;
            batch.events.push(LifecycleEvent::new(
                action,
                &self.actor,
                "scim_group",
                new_name,
                Some(summary(&current)),
                Some(moves.describe(summary(&new))),
            ));
            if self.try_commit(GROUP, &batch).await? {
                return Ok((new, changes));
            }
        }
        Err(contended(GROUP, id))
    }

    /// Deletes Group `id`; its members lose its name as a role.
    pub async fn delete_group(&self, id: &str) -> Result<StatusChanges, ScimWriteError> {
        if !super::valid_id(id) {
            return Err(ScimError::not_found(GROUP, id).into());
        }
        let key = self.store.scim_key(GROUP, id);
        for _ in 0..ATTEMPTS {
            let Some(raw) = self.store.get_raw(&key).await? else {
                return Err(ScimError::not_found(GROUP, id).into());
            };
            let current: StoredResource = parse(&key, &raw)?;
            let name = current.text("displayName");
            let name_key = self.store.scim_name_key(GROUP, name);
            let mut batch = Batch {
                writes: vec![Write {
                    key: key.clone(),
                    expected: Some(raw.clone()),
                    new: None,
                    publish: false,
                }],
                index: Some((IndexChange::Remove, id.to_string())),
                events: Vec::new(),
            };
            let pointer = self.store.get_raw(&name_key).await?;
            if pointer.as_deref() == Some(id) {
                batch.writes.push(Write {
                    key: name_key,
                    expected: pointer,
                    new: None,
                    publish: false,
                });
            }
            let mut changes = StatusChanges::default();
            let moves = self
                .restate_members(
                    &mut batch,
                    &mut changes,
                    id,
                    name,
                    &[],
                    &current.ids("members"),
                    &[],
                )
                .await?;
            batch.events.push(LifecycleEvent::new(
                "scim.group.delete",
                &self.actor,
                "scim_group",
                name,
                Some(moves.describe(summary(&current))),
                None,
            ));
            if self.try_commit(GROUP, &batch).await? {
                return Ok(changes);
            }
        }
        Err(contended(GROUP, id))
    }

    /// Rewrites each `affected` User for Group `group` (named `display`):
    /// in it when `members` lists them, out of it otherwise; and their
    /// principal records with their new group names. A User in `required`
    /// (a new member) must exist; others may be gone already.
    #[allow(clippy::too_many_arguments)]
    async fn restate_members(
        &self,
        batch: &mut Batch,
        changes: &mut StatusChanges,
        group: &str,
        display: &str,
        members: &[String],
        affected: &[String],
        required: &[String],
    ) -> Result<Moves, ScimWriteError> {
        let mut moves = Moves::default();
        let user_keys: Vec<String> = affected
            .iter()
            .map(|u| self.store.scim_key(ResourceKind::User, u))
            .collect();
        let mut valid = Vec::new();
        for (user, key) in affected.iter().zip(&user_keys) {
            if super::valid_id(user) {
                valid.push((user, key));
            } else if required.contains(user) {
                return Err(not_a_user(user));
            }
        }
        let keys: Vec<String> = valid.iter().map(|(_, k)| (*k).clone()).collect();
        let raws = self.read(&keys).await?;
        let mut rewritten = Vec::new();
        for ((user, key), raw) in valid.into_iter().zip(raws) {
            let Some(raw) = raw else {
                if required.contains(user) {
                    return Err(not_a_user(user));
                }
                continue;
            };
            let current: StoredResource = parse(key, &raw)?;
            let mut groups: Vec<Value> = current
                .attributes
                .get("groups")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let was_in = groups.iter().any(|g| g["value"] == group);
            groups.retain(|g| g["value"] != group);
            let now_in = members.contains(user);
            if now_in {
                groups.push(json!({ "value": group, "display": display, "type": "direct" }));
            }
            let mut attributes = current.attributes.clone();
            if groups.is_empty() {
                attributes.remove("groups");
            } else {
                attributes.insert("groups".into(), Value::Array(groups));
            }
            if attributes == current.attributes {
                continue;
            }
            let name = current.text("userName").to_string();
            match (was_in, now_in) {
                (false, true) => moves.joined.push(name.clone()),
                (true, false) => moves.left.push(name.clone()),
                _ => {}
            }
            let new = current.changed(attributes);
            batch.writes.push(Write {
                key: key.clone(),
                expected: Some(raw),
                new: Some(to_json(&new)),
                publish: false,
            });
            rewritten.push((name, new));
        }
        let principal_keys: Vec<String> = rewritten
            .iter()
            .map(|(name, _)| self.store.principal_key(PrincipalKind::User, name))
            .collect();
        let raws = self.read(&principal_keys).await?;
        for ((name, user), raw) in rewritten.iter().zip(raws) {
            self.principal_change(batch, changes, name, raw, None, Some(group_names(user)))?;
        }
        Ok(moves)
    }
}

fn not_a_user(id: &str) -> ScimWriteError {
    ScimError::bad(
        ScimType::InvalidValue,
        format!(
            "member '{}' is not a User provisioned here (members are User ids; Groups in Groups are not supported)",
            shorten(id)
        ),
    )
    .into()
}
