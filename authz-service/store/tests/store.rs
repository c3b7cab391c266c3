//! The Redis store's promises, against a real `redis-server` this test
//! starts on a free loopback port (`scripts/setup` installs it): a change
//! is one compare-and-set that writes the record, its indexes and its audit
//! event together or not at all; a concurrent change is retried, never
//! lost; one-use records are used once; locks free themselves and are
//! released only by their holder; short-lived records expire. Every
//! refusal is paired with the same operation succeeding.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::Redis;
use latchkey_core::audit::LifecycleEvent;
use latchkey_store::store::{Mutation, StoreError};
use redis::AsyncCommands;

fn event(action: &str, target: &str) -> LifecycleEvent {
    LifecycleEvent::new(action, "tester", "identity", target, None, None)
}

#[tokio::test]
async fn a_change_writes_the_record_its_index_and_its_event_together() {
    let redis = Redis::start();
    let store = redis.store().await;
    let mut conn = redis.conn().await;
    let key = store.identity_key("a");
    let index = store.identities_index();

    let written: Option<u32> = store
        .mutate::<u32, StoreError>(&key, std::slice::from_ref(&index), "a", |current| {
            assert_eq!(current, None);
            Ok(Mutation {
                new: Some(1),
                event: event("identity.create", "a"),
            })
        })
        .await
        .unwrap();
    assert_eq!(written, Some(1));
    assert_eq!(store.get::<u32>(&key).await.unwrap(), Some(1));
    assert_eq!(store.members(&index).await.unwrap(), ["a"]);
    let events: usize = conn.xlen(store.audit_stream()).await.unwrap();
    assert_eq!(events, 1);

    // A change function that refuses writes nothing: no record change, no
    // event, the index as it was.
    let refused = store
        .mutate::<u32, StoreError>(&key, std::slice::from_ref(&index), "a", |_| {
            Err(StoreError::Contended("refused on purpose".into()))
        })
        .await;
    assert!(refused.is_err());
    assert_eq!(store.get::<u32>(&key).await.unwrap(), Some(1));
    let events: usize = conn.xlen(store.audit_stream()).await.unwrap();
    assert_eq!(events, 1);

    // Deleting takes it off the index, with its own event.
    store
        .mutate::<u32, StoreError>(&key, std::slice::from_ref(&index), "a", |_| {
            Ok(Mutation {
                new: None,
                event: event("identity.delete", "a"),
            })
        })
        .await
        .unwrap();
    assert_eq!(store.get::<u32>(&key).await.unwrap(), None);
    assert!(store.members(&index).await.unwrap().is_empty());
    let events: usize = conn.xlen(store.audit_stream()).await.unwrap();
    assert_eq!(events, 2);
}

#[tokio::test]
async fn concurrent_changes_are_retried_and_none_is_lost() {
    let redis = Redis::start();
    let store = redis.store().await;
    let key = store.identity_key("counter");
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (store, key, calls) = (store.clone(), key.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            store
                .mutate::<u32, StoreError>(&key, &[], "counter", |current| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok(Mutation {
                        new: Some(current.unwrap_or(0) + 1),
                        event: event("identity.update", "counter"),
                    })
                })
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(store.get::<u32>(&key).await.unwrap(), Some(8));
    assert!(calls.load(Ordering::SeqCst) >= 8);
}

#[tokio::test]
async fn a_replacement_applies_only_over_the_value_it_expected() {
    let redis = Redis::start();
    let store = redis.store().await;
    let key = store.identity_key("sealed");
    let mut conn = redis.conn().await;
    let _: () = conn.set(&key, "v1").await.unwrap();
    assert!(!store.replace_if_unchanged(&key, "v0", "v2").await.unwrap());
    assert_eq!(store.get_raw(&key).await.unwrap().as_deref(), Some("v1"));
    assert!(store.replace_if_unchanged(&key, "v1", "v2").await.unwrap());
    assert_eq!(store.get_raw(&key).await.unwrap().as_deref(), Some("v2"));
    // No event: a re-encryption changes no plaintext.
    let events: usize = conn.xlen(store.audit_stream()).await.unwrap();
    assert_eq!(events, 0);
}

#[tokio::test]
async fn a_one_use_record_is_taken_once_however_many_race_for_it() {
    let redis = Redis::start();
    let store = redis.store().await;
    let key = store.consent_key("c1");
    store
        .put_expiring(&key, &"pending", Duration::from_secs(60))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (store, key) = (store.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            store.take::<String>(&key).await.unwrap()
        }));
    }
    let mut taken = Vec::new();
    for t in tasks {
        taken.extend(t.await.unwrap());
    }
    assert_eq!(taken, ["pending"]);
    assert_eq!(store.take::<String>(&key).await.unwrap(), None);
}

#[tokio::test]
async fn short_lived_records_expire_and_keep_their_expiry_when_replaced() {
    let redis = Redis::start();
    let store = redis.store().await;
    let mut conn = redis.conn().await;
    let key = store.connect_session_key("s1");
    // A replacement of what is not there stores nothing.
    assert!(!store.replace_keep_ttl(&key, &"x").await.unwrap());
    assert_eq!(store.get_raw(&key).await.unwrap(), None);
    store
        .put_expiring(&key, &"one", Duration::from_secs(100))
        .await
        .unwrap();
    assert!(store.replace_keep_ttl(&key, &"two").await.unwrap());
    assert_eq!(
        store.get::<String>(&key).await.unwrap().as_deref(),
        Some("two")
    );
    let ttl: i64 = conn.ttl(&key).await.unwrap();
    assert!((1..=100).contains(&ttl), "ttl {ttl}");
    store
        .put_expiring(&key, &"brief", Duration::from_secs(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(store.get_raw(&key).await.unwrap(), None);
}

#[tokio::test]
async fn a_lock_is_released_only_by_its_holder_and_frees_itself() {
    let redis = Redis::start();
    let store = redis.store().await;
    let key = store.refresh_lock_key("id");
    assert!(
        store
            .try_lock(&key, "mine", Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert!(
        !store
            .try_lock(&key, "theirs", Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert!(!store.unlock(&key, "theirs").await.unwrap());
    assert!(store.locked(&key).await.unwrap());
    assert!(store.unlock(&key, "mine").await.unwrap());
    assert!(!store.locked(&key).await.unwrap());
    // A holder that never releases holds nothing after the lock's time.
    assert!(
        store
            .try_lock(&key, "gone", Duration::from_millis(200))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        store
            .try_lock(&key, "next", Duration::from_secs(30))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_corrupt_record_is_reported_by_its_key_and_a_dead_redis_as_unavailable() {
    let mut redis = Redis::start();
    let store = redis.store().await;
    let key = store.identity_key("broken");
    let mut conn = redis.conn().await;
    let _: () = conn.set(&key, "{not json").await.unwrap();
    match store.get::<u32>(&key).await {
        Err(StoreError::Corrupt { key: k, .. }) => assert_eq!(k, key),
        other => panic!("{other:?}"),
    }
    let _: () = conn.set(&key, "7").await.unwrap();
    assert_eq!(store.get::<u32>(&key).await.unwrap(), Some(7));
    redis.child.kill().unwrap();
    redis.child.wait().unwrap();
    match store.get::<u32>(&key).await {
        Err(StoreError::Unavailable(message)) => assert!(!message.is_empty()),
        other => panic!("a stopped Redis answered {other:?}"),
    }
}
