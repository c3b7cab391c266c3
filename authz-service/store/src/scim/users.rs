//! SCIM Users: created, changed (PUT or PATCH) and deleted together with
//! the person's principal record, which follows `active` and the Groups.

use serde_json::{Map, Value, json};

use super::{
    ATTEMPTS, Batch, IndexChange, Provisioning, ScimWriteError, StatusChanges, StoredResource,
    Write, contended, group_names, taken, to_json,
};
use crate::store::parse;
use latchkey_core::audit::LifecycleEvent;
use latchkey_core::identity::{PrincipalKind, Status};
use latchkey_core::scim::{ResourceKind, ScimError};

const USER: ResourceKind = ResourceKind::User;

/// What the audit trail says of a User: who, and whether active (not
/// their emails or names).
fn summary(r: &StoredResource) -> Value {
    let mut s = json!({ "id": r.id, "userName": r.text("userName"), "active": r.active() });
    if let Some(x) = r.attributes.get("externalId") {
        s["externalId"] = x.clone();
    }
    s
}

fn status(active: bool) -> Status {
    if active {
        Status::Enabled
    } else {
        Status::Disabled
    }
}

impl Provisioning {
    /// Stores a new User (already read through the schema): the person
    /// named by its `userName` is enabled or not as `active` says, with
    /// no SCIM groups yet.
    pub async fn create_user(
        &self,
        attributes: Map<String, Value>,
    ) -> Result<(StoredResource, StatusChanges), ScimWriteError> {
        let id = latchkey_core::hex::random(16);
        let resource = StoredResource::new(id.clone(), attributes);
        let name = resource.text("userName").to_string();
        let name_key = self.store.scim_name_key(USER, &name);
        let principal_key = self.store.principal_key(PrincipalKind::User, &name);
        for _ in 0..ATTEMPTS {
            let mut raws = self
                .read(&[name_key.clone(), principal_key.clone()])
                .await?;
            let principal = raws.pop().flatten();
            if raws.pop().flatten().is_some() {
                return Err(taken(USER, &name));
            }
            let mut batch = Batch {
                writes: vec![
                    Write {
                        key: self.store.scim_key(USER, &id),
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
                events: vec![LifecycleEvent::new(
                    "scim.user.create",
                    &self.actor,
                    "scim_user",
                    &name,
                    None,
                    Some(summary(&resource)),
                )],
            };
            let mut changes = StatusChanges::default();
            self.principal_change(
                &mut batch,
                &mut changes,
                &name,
                principal,
                Some(status(resource.active())),
                Some(Vec::new()),
            )?;
            if self.try_commit(USER, &batch).await? {
                return Ok((resource, changes));
            }
        }
        Err(contended(USER, &id))
    }

    /// Changes User `id` with `change` (a PUT's new attributes, or a PATCH
    /// applied to the current ones), recording `action`. A change of
    /// `active` deactivates or reactivates the person; a new `userName`
    /// moves the SCIM groups to the person it names (the one it named
    /// keeps their status and goes back to their token's claims).
    pub async fn change_user(
        &self,
        id: &str,
        action: &str,
        mut change: impl FnMut(&StoredResource) -> Result<Map<String, Value>, ScimError>,
    ) -> Result<(StoredResource, StatusChanges), ScimWriteError> {
        if !super::valid_id(id) {
            return Err(ScimError::not_found(USER, id).into());
        }
        let key = self.store.scim_key(USER, id);
        for _ in 0..ATTEMPTS {
            let Some(raw) = self.store.get_raw(&key).await? else {
                return Err(ScimError::not_found(USER, id).into());
            };
            let current: StoredResource = parse(&key, &raw)?;
            let mut attributes = change(&current)?;
            // The Groups say which groups a User is in, never the User.
            match current.attributes.get("groups") {
                Some(groups) => attributes.insert("groups".into(), groups.clone()),
                None => attributes.remove("groups"),
            };
            let new = current.changed(attributes);
            let (old_name, new_name) = (current.text("userName"), new.text("userName"));
            let renamed = old_name != new_name;
            let new_pointer = old_name.to_lowercase() != new_name.to_lowercase();
            let keys = [
                self.store.principal_key(PrincipalKind::User, new_name),
                self.store.principal_key(PrincipalKind::User, old_name),
                self.store.scim_name_key(USER, new_name),
                self.store.scim_name_key(USER, old_name),
            ];
            let raws = self.read(&keys).await?;
            let mut batch = Batch {
                writes: vec![Write {
                    key: key.clone(),
                    expected: Some(raw.clone()),
                    new: Some(to_json(&new)),
                    publish: false,
                }],
                index: None,
                events: vec![LifecycleEvent::new(
                    action,
                    &self.actor,
                    "scim_user",
                    new_name,
                    Some(summary(&current)),
                    Some(summary(&new)),
                )],
            };
            if new_pointer {
                if raws[2].as_deref().is_some_and(|other| other != id) {
                    return Err(taken(USER, new_name));
                }
                batch.writes.push(Write {
                    key: keys[2].clone(),
                    expected: raws[2].clone(),
                    new: Some(id.to_string()),
                    publish: false,
                });
                if raws[3].as_deref() == Some(id) {
                    batch.writes.push(Write {
                        key: keys[3].clone(),
                        expected: raws[3].clone(),
                        new: None,
                        publish: false,
                    });
                }
            }
            let mut changes = StatusChanges::default();
            let active_changed = current.active() != new.active();
            if renamed {
                self.principal_change(
                    &mut batch,
                    &mut changes,
                    old_name,
                    raws[1].clone(),
                    None,
                    None,
                )?;
            }
            self.principal_change(
                &mut batch,
                &mut changes,
                new_name,
                raws[0].clone(),
                (renamed || active_changed).then(|| status(new.active())),
                Some(group_names(&new)),
            )?;
            if self.try_commit(USER, &batch).await? {
                return Ok((new, changes));
            }
        }
        Err(contended(USER, id))
    }

    /// Deletes User `id`: the person is deactivated (their identities
    /// stay, as with `latchkey user deactivate`) and leaves every Group.
    pub async fn delete_user(&self, id: &str) -> Result<StatusChanges, ScimWriteError> {
        if !super::valid_id(id) {
            return Err(ScimError::not_found(USER, id).into());
        }
        let key = self.store.scim_key(USER, id);
        for _ in 0..ATTEMPTS {
            let Some(raw) = self.store.get_raw(&key).await? else {
                return Err(ScimError::not_found(USER, id).into());
            };
            let current: StoredResource = parse(&key, &raw)?;
            let name = current.text("userName");
            let groups = current.ids("groups");
            let mut keys = vec![
                self.store.scim_name_key(USER, name),
                self.store.principal_key(PrincipalKind::User, name),
            ];
            keys.extend(
                groups
                    .iter()
                    .map(|g| self.store.scim_key(ResourceKind::Group, g)),
            );
            let raws = self.read(&keys).await?;
            let mut batch = Batch {
                writes: vec![Write {
                    key: key.clone(),
                    expected: Some(raw.clone()),
                    new: None,
                    publish: false,
                }],
                index: Some((IndexChange::Remove, id.to_string())),
                events: vec![LifecycleEvent::new(
                    "scim.user.delete",
                    &self.actor,
                    "scim_user",
                    name,
                    Some(summary(&current)),
                    None,
                )],
            };
            if raws[0].as_deref() == Some(id) {
                batch.writes.push(Write {
                    key: keys[0].clone(),
                    expected: raws[0].clone(),
                    new: None,
                    publish: false,
                });
            }
            for (group_key, group_raw) in keys[2..].iter().zip(&raws[2..]) {
                let Some(group_raw) = group_raw else { continue };
                let group: StoredResource = parse(group_key, group_raw)?;
                let mut attributes = group.attributes.clone();
                if let Some(Value::Array(members)) = attributes.get_mut("members") {
                    members.retain(|m| m.get("value").and_then(Value::as_str) != Some(id));
                    if members.is_empty() {
                        attributes.remove("members");
                    }
                }
                batch.writes.push(Write {
                    key: group_key.clone(),
                    expected: Some(group_raw.clone()),
                    new: Some(to_json(&group.changed(attributes))),
                    publish: false,
                });
            }
            let mut changes = StatusChanges::default();
            self.principal_change(
                &mut batch,
                &mut changes,
                name,
                raws[1].clone(),
                Some(Status::Disabled),
                None,
            )?;
            if self.try_commit(USER, &batch).await? {
                return Ok(changes);
            }
        }
        Err(contended(USER, id))
    }
}
