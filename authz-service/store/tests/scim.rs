//! SCIM provisioning's promises in Redis, against a real `redis-server`:
//! a name is taken once however many replicas race for it (in any case);
//! a person's principal record follows their User's `active` and the
//! Groups they are in, in the same step as the resources; the index is
//! bounded. Each refusal is paired with the same change succeeding.

mod common;

use common::Redis;
use latchkey_core::identity::{PrincipalKind, PrincipalRecord, Status};
use latchkey_core::scim::schema::normalize;
use latchkey_core::scim::{ResourceKind, ScimType};
use latchkey_store::scim::{Provisioning, ScimWriteError};
use latchkey_store::store::Store;
use serde_json::{Map, Value, json};

fn provisioning(store: Store, max_users: usize) -> Provisioning {
    Provisioning {
        store,
        actor: "scim:test".into(),
        max_users,
        max_groups: 10,
    }
}

fn user(name: &str, active: bool) -> Map<String, Value> {
    normalize(
        ResourceKind::User,
        &json!({"userName": name, "active": active}),
    )
    .unwrap()
}

fn group(name: &str, members: &[&str]) -> Map<String, Value> {
    let members: Vec<Value> = members.iter().map(|m| json!({"value": m})).collect();
    normalize(
        ResourceKind::Group,
        &json!({"displayName": name, "members": members}),
    )
    .unwrap()
}

async fn principal(store: &Store, user: &str) -> Option<PrincipalRecord> {
    store
        .get(&store.principal_key(PrincipalKind::User, user))
        .await
        .unwrap()
}

fn refused_as(e: ScimWriteError) -> (u16, Option<ScimType>) {
    match e {
        ScimWriteError::Refused(e) => (e.status, e.scim_type),
        ScimWriteError::Store(e) => panic!("a store failure: {e}"),
    }
}

#[tokio::test]
async fn two_replicas_racing_for_one_user_name_create_it_once() {
    let redis = Redis::start();
    let (a, b) = (
        provisioning(redis.store().await, 100),
        provisioning(redis.store().await, 100),
    );
    for round in 0..20 {
        let name = format!("racer{round}");
        let upper = name.to_uppercase();
        let (x, y) = tokio::join!(
            a.create_user(user(&name, true)),
            b.create_user(user(&upper, true))
        );
        let won = [x.is_ok(), y.is_ok()];
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "round {round}: {won:?}"
        );
        let lost = match (x, y) {
            (Ok(_), Err(e)) | (Err(e), Ok(_)) => e,
            _ => unreachable!("exactly one won"),
        };
        assert_eq!(refused_as(lost), (409, Some(ScimType::Uniqueness)));
    }
    let (total, _) = a.list(ResourceKind::User, None, 0, 100).await.unwrap();
    assert_eq!(total, 20);
}

#[tokio::test]
async fn a_person_follows_their_user_and_their_groups() {
    let redis = Redis::start();
    let store = redis.store().await;
    let scim = provisioning(store.clone(), 100);

    let (alice, changes) = scim.create_user(user("alice", true)).await.unwrap();
    assert!(changes.deactivated.is_empty());
    let p = principal(&store, "alice").await.unwrap();
    assert_eq!(
        (p.status, p.scim_groups.clone()),
        (Status::Enabled, Some(vec![]))
    );
    assert_eq!(p.updated_by, "scim:test");
    // Listed with the people the admin API changed (the access review).
    assert_eq!(
        store
            .members(&store.principals_index(PrincipalKind::User))
            .await
            .unwrap(),
        ["alice"]
    );

    let (eng, _) = scim
        .create_group(group("Engineering", &[&alice.id]))
        .await
        .unwrap();
    let p = principal(&store, "alice").await.unwrap();
    assert_eq!(p.scim_groups, Some(vec!["Engineering".to_string()]));

    // Deactivated and back, by `active`.
    let (_, changes) = scim
        .change_user(&alice.id, "scim.user.patch", |current| {
            let mut a = current.attributes.clone();
            a.insert("active".into(), json!(false));
            Ok(a)
        })
        .await
        .unwrap();
    assert_eq!(changes.deactivated, ["alice"]);
    assert_eq!(
        principal(&store, "alice").await.unwrap().status,
        Status::Disabled
    );
    let (_, changes) = scim
        .change_user(&alice.id, "scim.user.patch", |current| {
            let mut a = current.attributes.clone();
            a.insert("active".into(), json!(true));
            Ok(a)
        })
        .await
        .unwrap();
    assert_eq!(changes.reactivated, ["alice"]);

    // A renamed group renames the role; an emptied one takes it away.
    scim.change_group(&eng.id, "scim.group.patch", |_| {
        Ok(group("Platform", &[&alice.id]))
    })
    .await
    .unwrap();
    assert_eq!(
        principal(&store, "alice").await.unwrap().scim_groups,
        Some(vec!["Platform".to_string()])
    );
    scim.change_group(&eng.id, "scim.group.patch", |_| Ok(group("Platform", &[])))
        .await
        .unwrap();
    assert_eq!(
        principal(&store, "alice").await.unwrap().scim_groups,
        Some(vec![])
    );
    scim.change_group(&eng.id, "scim.group.patch", |_| {
        Ok(group("Platform", &[&alice.id]))
    })
    .await
    .unwrap();

    // Deleted: deactivated, out of the group, no longer SCIM's.
    let changes = scim.delete_user(&alice.id).await.unwrap();
    assert_eq!(changes.deactivated, ["alice"]);
    let p = principal(&store, "alice").await.unwrap();
    assert_eq!((p.status, p.scim_groups), (Status::Disabled, None));
    let g = scim
        .get(ResourceKind::Group, &eng.id)
        .await
        .unwrap()
        .unwrap();
    assert!(g.ids("members").is_empty());
    assert!(
        scim.get(ResourceKind::User, &alice.id)
            .await
            .unwrap()
            .is_none()
    );
    // Its name is free again.
    scim.create_user(user("alice", false)).await.unwrap();
}

#[tokio::test]
async fn a_group_cannot_name_a_member_that_is_not_a_user_and_names_are_unique() {
    let redis = Redis::start();
    let scim = provisioning(redis.store().await, 100);
    let e = scim
        .create_group(group("Ghosts", &["0123456789abcdef0123456789abcdef"]))
        .await
        .unwrap_err();
    assert_eq!(refused_as(e), (400, Some(ScimType::InvalidValue)));
    scim.create_group(group("Ghosts", &[])).await.unwrap();
    let e = scim.create_group(group("GHOSTS", &[])).await.unwrap_err();
    assert_eq!(refused_as(e), (409, Some(ScimType::Uniqueness)));
}

#[tokio::test]
async fn the_number_of_users_is_bounded() {
    let redis = Redis::start();
    let scim = provisioning(redis.store().await, 2);
    scim.create_user(user("a", true)).await.unwrap();
    let (b, _) = scim.create_user(user("b", true)).await.unwrap();
    let e = scim.create_user(user("c", true)).await.unwrap_err();
    let (status, _) = refused_as(e);
    assert_eq!(status, 400);
    // Nothing of the refused one was written.
    assert!(principal(&scim.store, "c").await.is_none());
    scim.delete_user(&b.id).await.unwrap();
    scim.create_user(user("c", true)).await.unwrap();
}

#[tokio::test]
async fn lists_are_filtered_and_paged_in_a_stable_order() {
    let redis = Redis::start();
    let scim = provisioning(redis.store().await, 100);
    for n in 0..5 {
        let mut u = user(&format!("user{n}"), true);
        u.insert("externalId".into(), json!(format!("ext-{}", n % 2)));
        scim.create_user(u).await.unwrap();
    }
    let (total, first) = scim.list(ResourceKind::User, None, 0, 2).await.unwrap();
    let (_, second) = scim.list(ResourceKind::User, None, 2, 2).await.unwrap();
    assert_eq!((total, first.len(), second.len()), (5, 2, 2));
    assert!(first[1].id < second[0].id);
    let f =
        latchkey_core::scim::filter::Filter::parse(ResourceKind::User, "externalId eq \"ext-1\"")
            .unwrap();
    let (total, found) = scim
        .list(ResourceKind::User, Some(&f), 0, 100)
        .await
        .unwrap();
    assert_eq!((total, found.len()), (2, 2));
    let f = latchkey_core::scim::filter::Filter::parse(ResourceKind::User, "userName eq \"USER3\"")
        .unwrap();
    let (total, found) = scim
        .list(ResourceKind::User, Some(&f), 0, 100)
        .await
        .unwrap();
    assert_eq!((total, found[0].text("userName")), (1, "user3"));
}
