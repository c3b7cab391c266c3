//! The credential source the request path and the admin API share, against
//! a real `redis-server` of the test's own: a stored secret comes back
//! opened, and only the way it was stored; a second identity under the same
//! id is refused unless it replaces one of the same server and owner, which
//! bumps its version; a deleted identity is gone for every reader; a key
//! rotation re-encrypts every record onto the new key and refuses a key
//! this replica does not hold.

mod common;

use std::time::Duration;

use common::Redis;
use latchkey_core::identity::{Availability, IdentitySecret};
use latchkey_core::vault::{KeyRing, Secret};
use latchkey_store::credentials::{Credentials, NewIdentity, PutError, RotateError};

/// A key file with keys `k1` and `k2`; each replica parses the same text.
fn key_file() -> String {
    format!(
        "{}\n{}\n",
        KeyRing::generate_line("k1"),
        KeyRing::generate_line("k2")
    )
}

fn keys(active: &str) -> KeyRing {
    KeyRing::parse(&key_file(), Some(active)).unwrap()
}

fn secret(value: &str) -> IdentitySecret {
    IdentitySecret::Static {
        value: Secret::new(value),
    }
}

fn value(secret: &IdentitySecret) -> String {
    match secret {
        IdentitySecret::Static { value } => value.expose().to_string(),
        IdentitySecret::Oauth { access_token, .. } => access_token.expose().to_string(),
    }
}

fn new<'a>(id: &'a str, owner: &'a str, s: &'a IdentitySecret, replace: bool) -> NewIdentity<'a> {
    NewIdentity {
        actor: owner,
        id,
        server: "crm",
        owner,
        availability: Availability::Private,
        secret: s,
        replace,
        meta: Default::default(),
    }
}

#[tokio::test]
async fn a_stored_secret_comes_back_opened_and_a_replacement_bumps_its_version() {
    let redis = Redis::start();
    // No cache: every read goes to Redis and opens the ciphertext.
    let creds = Credentials::new(redis.store().await, keys("k1"), Duration::ZERO);
    let first = secret("s3cret-one");
    let record = creds
        .put_identity(new("crm-alice", "alice", &first, false))
        .await
        .unwrap();
    assert_eq!((record.version, record.owner.as_str()), (1, "alice"));
    let opened = creds.identity("crm-alice").await.unwrap().unwrap();
    assert_eq!(value(&opened.secret), "s3cret-one");
    // Redis holds the ciphertext, never the secret.
    let raw = creds
        .store
        .get_raw(&creds.store.identity_key("crm-alice"))
        .await
        .unwrap()
        .unwrap();
    assert!(!raw.contains("s3cret-one"), "{raw}");

    // The same id again: refused, unless it replaces (same server, owner).
    let second = secret("s3cret-two");
    assert!(matches!(
        creds
            .put_identity(new("crm-alice", "alice", &second, false))
            .await,
        Err(PutError::Exists(_))
    ));
    assert!(matches!(
        creds
            .put_identity(new("crm-alice", "bob", &second, true))
            .await,
        Err(PutError::Mismatch(_))
    ));
    let replaced = creds
        .put_identity(new("crm-alice", "alice", &second, true))
        .await
        .unwrap();
    assert_eq!(replaced.version, 2);
    let opened = creds.identity("crm-alice").await.unwrap().unwrap();
    assert_eq!(value(&opened.secret), "s3cret-two");
    assert_eq!(opened.record.version, 2);
    // An id outside the allowed alphabet never reaches Redis.
    assert!(matches!(
        creds
            .put_identity(new("crm alice", "alice", &first, false))
            .await,
        Err(PutError::BadId(_))
    ));
    assert!(creds.identity("crm alice").await.unwrap().is_none());
}

#[tokio::test]
async fn a_deleted_identity_is_gone_for_every_reader() {
    let redis = Redis::start();
    let store = redis.store().await;
    let file = key_file();
    let ring = || KeyRing::parse(&file, Some("k1")).unwrap();
    let writer = Credentials::new(store.clone(), ring(), Duration::ZERO);
    let reader = Credentials::new(store, ring(), Duration::ZERO);
    let s = secret("to-be-deleted");
    writer
        .put_identity(new("crm-bob", "bob", &s, false))
        .await
        .unwrap();
    assert!(reader.identity("crm-bob").await.unwrap().is_some());
    let deleted = writer.delete_identity("bob", "crm-bob").await.unwrap();
    assert_eq!(deleted.id, "crm-bob");
    assert!(reader.identity("crm-bob").await.unwrap().is_none());
    assert!(writer.delete_identity("bob", "crm-bob").await.is_err());
}

#[tokio::test]
async fn a_rotation_moves_every_record_onto_the_new_key_and_needs_it_here() {
    let redis = Redis::start();
    let store = redis.store().await;
    let creds = Credentials::new(store.clone(), keys("k1"), Duration::ZERO);
    for (id, v) in [("a", "secret-a"), ("b", "secret-b"), ("c", "secret-c")] {
        creds
            .put_identity(new(id, "alice", &secret(v), false))
            .await
            .unwrap();
    }
    let per_key = creds.records_per_key().await.unwrap();
    assert_eq!(per_key.get("k1"), Some(&3));
    assert!(matches!(
        creds.rotate("ops", "k9").await,
        Err(RotateError::NotLoadedHere(_))
    ));
    let rotation = creds.rotate("ops", "k2").await.unwrap();
    assert_eq!((rotation.re_encrypted, rotation.already_current), (3, 0));
    let per_key = creds.records_per_key().await.unwrap();
    assert_eq!(per_key.get("k2"), Some(&3));
    assert_eq!(per_key.get("k1"), None);
    // Opened with the new key, the same secrets; a second rotation has
    // nothing left to move.
    for (id, v) in [("a", "secret-a"), ("b", "secret-b"), ("c", "secret-c")] {
        assert_eq!(value(&creds.identity(id).await.unwrap().unwrap().secret), v);
    }
    assert_eq!(creds.rotate("ops", "k2").await.unwrap().already_current, 3);
    // New writes are sealed with the key the rotation made active, even by
    // a replica configured with the old one.
    assert_eq!(creds.sealing_key().await.unwrap(), "k2");
    let only_k1 = KeyRing::parse(&KeyRing::generate_line("k1"), Some("k1")).unwrap();
    let stale = Credentials::new(store, only_k1, Duration::ZERO);
    assert!(stale.sealing_key().await.is_err(), "k2 is not held there");
}
