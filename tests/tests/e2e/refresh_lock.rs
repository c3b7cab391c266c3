//! The token refresh of `latchkey_check::refresh` against a real Redis: the
//! refresh lock, fencing by record version, one refresh across replicas and
//! within one, rotation, `invalid_grant`, and a provider that is down. Each
//! "replica" is a `Credentials` (its own cache) plus a `Refresher` over the
//! same Redis; the provider is a small token endpoint in this file that
//! counts refresh grants and can rotate, refuse, stall or stay silent.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use latchkey_check::oauth::Providers;
use latchkey_check::refresh::{RefreshError, Refresher};
use latchkey_core::config::Config;
use latchkey_core::identity::{Availability, IdentitySecret, VaultRecord};
use latchkey_core::metrics::{Metrics, Readings};
use latchkey_core::vault::{KeyRing, Secret};
use latchkey_e2e::{Redis, free_port, scenario_dir};
use latchkey_store::cache::OpenIdentity;
use latchkey_store::credentials::{Credentials, NewIdentity, TokenMeta};
use latchkey_store::redis_backend::Topology;
use latchkey_store::store::Store;
use serde_json::{Value, json};

const ID: &str = "gh-alice";
const SERVER: &str = "github";

/// What the token endpoint does.
#[derive(Default)]
struct Behaviour {
    /// Issue a new refresh token each time and retire the one presented.
    rotate: bool,
    /// Answer every refresh with `invalid_grant`.
    refuse: bool,
    /// How long the n-th refresh (0-based) takes before answering.
    delays: Vec<Duration>,
    /// `expires_in` of new access tokens.
    ttl: i64,
}

struct ProviderState {
    behaviour: Mutex<Behaviour>,
    /// Refresh tokens it accepts.
    active: Mutex<HashSet<String>>,
    /// Successful refresh grants.
    grants: AtomicUsize,
    /// Every refresh request, answered or not.
    calls: AtomicUsize,
}

/// A token endpoint on a free port; its `POST /token` takes refresh grants.
struct Provider {
    state: Arc<ProviderState>,
    url: String,
}

impl Provider {
    async fn start(behaviour: Behaviour, refresh_token: &str) -> Result<Provider> {
        let state = Arc::new(ProviderState {
            behaviour: Mutex::new(behaviour),
            active: Mutex::new(HashSet::from([refresh_token.to_string()])),
            grants: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route("/token", axum::routing::post(token))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Provider { state, url })
    }

    fn grants(&self) -> usize {
        self.state.grants.load(Ordering::SeqCst)
    }

    fn accepts(&self, refresh_token: &str) -> bool {
        self.state.active.lock().unwrap().contains(refresh_token)
    }
}

async fn token(
    State(state): State<Arc<ProviderState>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let n = state.calls.fetch_add(1, Ordering::SeqCst);
    let (delay, rotate, refuse, ttl) = {
        let b = state.behaviour.lock().unwrap();
        (b.delays.get(n).copied(), b.rotate, b.refuse, b.ttl)
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let presented = form.get("refresh_token").cloned().unwrap_or_default();
    let invalid = || {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant", "error_description": "refresh token revoked"})),
        )
            .into_response()
    };
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") || refuse {
        return invalid();
    }
    let mut active = state.active.lock().unwrap();
    if !active.contains(&presented) {
        return invalid();
    }
    let grant = state.grants.fetch_add(1, Ordering::SeqCst) + 1;
    let mut body = json!({
        "access_token": format!("at-{grant}"),
        "token_type": "Bearer",
        "expires_in": ttl,
        "scope": "repo",
    });
    if rotate {
        active.remove(&presented);
        let next = format!("rt-{grant}");
        active.insert(next.clone());
        body["refresh_token"] = json!(next);
    }
    Json(body).into_response()
}

/// The config `Providers` reads: server `github` whose provider is `url`.
fn config(redis_url: &str, provider_url: &str) -> Result<Config> {
    Ok(Config::parse(&format!(
        r#"
[listen]
grpc = "127.0.0.1:1"
http = "127.0.0.1:2"
[redis]
url = "{redis_url}"
[vault]
key_env = "UNUSED_IN_THIS_TEST"
[identity_provider]
issuer = "http://127.0.0.1:3"
[connect]
public_url = "http://127.0.0.1:4"
client_id = "latchkey"
[[servers]]
name = "{SERVER}"
url = "http://127.0.0.1:5/mcp"
auth = {{ type = "static_header", header = "authorization", prefix = "Bearer " }}
[servers.oauth]
authorization_endpoint = "{provider_url}/authorize"
token_endpoint = "{provider_url}/token"
client_id = "latchkey"
"#
    ))?)
}

/// One replica: its own cache and refresher, the shared Redis.
struct Replica {
    credentials: Credentials,
    refresher: Refresher,
    metrics: Metrics,
}

impl Replica {
    async fn start(redis: &Redis, key_line: &str, provider_url: &str) -> Result<Replica> {
        Self::start_with(redis, key_line, provider_url, None).await
    }

    async fn start_with(
        redis: &Redis,
        key_line: &str,
        provider_url: &str,
        lock_ttl: Option<Duration>,
    ) -> Result<Replica> {
        let store = Store::connect(
            &Topology::Single { url: redis.url() },
            "latchkey",
            Duration::from_secs(2),
            10_000,
        )
        .await?;
        let credentials = Credentials::new(
            store,
            KeyRing::parse(key_line, None)?,
            Duration::from_secs(60),
        );
        // Invalidations, as `latchkey serve` listens for them.
        tokio::spawn(
            credentials
                .cache
                .clone()
                .listen(credentials.store.clone(), "refresh-lock-test".to_string()),
        );
        latchkey_e2e::eventually("the invalidation subscription", async || {
            Ok(if credentials.cache.subscribed() {
                Ok(())
            } else {
                Err("not subscribed".to_string())
            })
        })
        .await?;
        let config = config(&redis.url(), provider_url)?;
        let metrics = Metrics::new();
        let mut refresher = Refresher::new(
            Providers::from_config(&config)?,
            config.connect.as_ref(),
            metrics.refreshes(),
        );
        if let Some(ttl) = lock_ttl {
            refresher = refresher.with_timing(Duration::from_secs(60), Duration::from_secs(5), ttl);
        }
        Ok(Replica {
            credentials,
            refresher,
            metrics,
        })
    }

    /// The identity as this replica's cache has it, then through the refresher.
    async fn fresh(&self) -> Result<Result<Arc<OpenIdentity>, RefreshError>> {
        let open = self
            .credentials
            .identity(ID)
            .await?
            .context("identity missing")?;
        Ok(self.refresher.fresh(&self.credentials, open).await)
    }

    /// `latchkey_token_refreshes_total{server="github",result}` here.
    fn refreshes(&self, result: &str) -> f64 {
        let text = self.metrics.render(&Readings::default());
        let prefix =
            format!("latchkey_token_refreshes_total{{server=\"{SERVER}\",result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim().parse().unwrap_or(f64::NAN))
            .unwrap_or(0.0)
    }
}

/// Stores alice's OAuth identity: `access`, `refresh`, expiring in `expires_in` s.
async fn store_identity(
    replica: &Replica,
    access: &str,
    refresh: Option<&str>,
    expires_in: i64,
) -> Result<VaultRecord> {
    let expires_at = latchkey_check::refresh::expires_at_after(expires_in).context("range")?;
    Ok(replica
        .credentials
        .put_identity(NewIdentity {
            actor: "alice",
            id: ID,
            server: SERVER,
            owner: "alice",
            availability: Availability::Private,
            secret: &IdentitySecret::Oauth {
                access_token: Secret::new(access),
                refresh_token: refresh.map(Secret::new),
            },
            replace: false,
            meta: TokenMeta {
                expires_at: Some(expires_at),
                scopes: vec![],
                exchanged: None,
            },
        })
        .await?)
}

/// The record and opened secret as Redis has them now.
async fn stored(replica: &Replica) -> Result<(VaultRecord, IdentitySecret)> {
    let store = &replica.credentials.store;
    let record: VaultRecord = store
        .get(&store.identity_key(ID))
        .await?
        .context("identity gone")?;
    let secret = record.open(&replica.credentials.keys)?;
    Ok((record, secret))
}

fn tokens(secret: &IdentitySecret) -> (String, Option<String>) {
    match secret {
        IdentitySecret::Oauth {
            access_token,
            refresh_token,
        } => (
            access_token.expose().to_string(),
            refresh_token.as_ref().map(|t| t.expose().to_string()),
        ),
        IdentitySecret::Static { value } => (value.expose().to_string(), None),
    }
}

/// The lifecycle events about alice's identity, oldest first.
async fn events(replica: &Replica) -> Result<Vec<Value>> {
    let entries = replica.credentials.store.audit_range("-", 10_000).await?;
    let mut out = Vec::new();
    for text in entries.iter().filter_map(|e| e.event.as_deref()) {
        // Every token of this file is a JSON string starting "at-" or "rt-".
        ensure!(
            !text.contains("\"at-") && !text.contains("\"rt-"),
            "a token in an audit event: {text}"
        );
        let v: Value = serde_json::from_str(text)?;
        if v["target"] == ID {
            out.push(v);
        }
    }
    Ok(out)
}

struct Setup {
    redis: Redis,
    key_line: String,
}

fn setup(scenario: &str) -> Result<Setup> {
    let dir = scenario_dir(scenario)?;
    Ok(Setup {
        redis: Redis::start(&dir)?,
        key_line: KeyRing::generate_line("t1"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lock_is_exclusive_lapses_and_is_released_only_by_its_holder() -> Result<()> {
    let s = setup("refresh-lock")?;
    let r = Replica::start(&s.redis, &s.key_line, "http://127.0.0.1:9").await?;
    let store = &r.credentials.store;
    let key = store.refresh_lock_key(ID);
    let ttl = Duration::from_millis(300);
    ensure!(
        store.try_lock(&key, "a", ttl).await?,
        "a takes the free lock"
    );
    ensure!(
        !store.try_lock(&key, "b", ttl).await?,
        "b cannot while a holds it"
    );
    ensure!(!store.unlock(&key, "b").await?, "b cannot release a's lock");
    ensure!(store.locked(&key).await?);
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    ensure!(!store.locked(&key).await?, "a's lock lapsed");
    ensure!(store.try_lock(&key, "b", ttl).await?, "b takes it after");
    ensure!(
        !store.unlock(&key, "a").await?,
        "a, whose lock lapsed, cannot release b's"
    );
    ensure!(store.locked(&key).await?, "b still holds it");
    ensure!(store.unlock(&key, "b").await?);
    ensure!(!store.locked(&key).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_requests_on_two_replicas_refresh_once_and_store_the_rotated_token()
-> Result<()> {
    let s = setup("refresh-once")?;
    let provider = Provider::start(
        Behaviour {
            rotate: true,
            // Slow enough that every request arrives while it runs.
            delays: vec![Duration::from_millis(300)],
            ttl: 3600,
            ..Behaviour::default()
        },
        "rt-0",
    )
    .await?;
    let a = Arc::new(Replica::start(&s.redis, &s.key_line, &provider.url).await?);
    let b = Arc::new(Replica::start(&s.redis, &s.key_line, &provider.url).await?);
    let before = store_identity(&a, "at-0", Some("rt-0"), -10).await?;

    let mut calls = Vec::new();
    for n in 0..50 {
        let r = if n % 2 == 0 { a.clone() } else { b.clone() };
        calls.push(tokio::spawn(async move { r.fresh().await }));
    }
    let mut seen = HashSet::new();
    for c in calls {
        let identity = c.await???;
        seen.insert(tokens(&identity.secret).0);
    }
    ensure!(
        seen == HashSet::from(["at-1".to_string()]),
        "every request got the one new access token: {seen:?}"
    );
    ensure!(
        provider.grants() == 1,
        "{} refresh grants",
        provider.grants()
    );
    ensure!(
        provider.state.calls.load(Ordering::SeqCst) == 1,
        "one call to the provider"
    );

    let (record, secret) = stored(&a).await?;
    ensure!(record.version == before.version + 1, "{record:?}");
    ensure!(
        tokens(&secret) == ("at-1".into(), Some("rt-1".into())),
        "the rotated refresh token replaced the old one in the same write"
    );
    ensure!(!record.consent_required && record.expires_at.is_some());
    ensure!(record.scopes == vec!["repo".to_string()]);
    ensure!(!provider.accepts("rt-0") && provider.accepts("rt-1"));

    // One replica refreshed (rotated); the other used its result.
    let rotated = a.refreshes("rotated") + b.refreshes("rotated");
    let waited = a.refreshes("waited") + b.refreshes("waited");
    ensure!(rotated == 1.0, "rotated {rotated}");
    ensure!(
        waited == 1.0,
        "waited {waited}: one waiter per other replica"
    );

    let refreshes: Vec<Value> = events(&a)
        .await?
        .into_iter()
        .filter(|e| e["action"] == "identity.refresh")
        .collect();
    ensure!(refreshes.len() == 1, "{refreshes:?}");
    let e = &refreshes[0];
    ensure!(e["actor"] == latchkey_check::refresh::ACTOR);
    ensure!(e["before"]["version"] == json!(before.version));
    ensure!(e["after"]["version"] == json!(before.version + 1));
    ensure!(e["after"]["refresh_token_rotated"] == json!(true));

    // A fresh token is not refreshed again.
    ensure!(tokens(&a.fresh().await??.secret).0 == "at-1");
    ensure!(tokens(&b.fresh().await??.secret).0 == "at-1");
    ensure!(provider.grants() == 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_whose_lock_lapsed_cannot_overwrite_the_newer_version() -> Result<()> {
    let s = setup("refresh-fencing")?;
    // The first refresh outlives its 200 ms lock; the second is quick.
    let provider = Provider::start(
        Behaviour {
            delays: vec![Duration::from_millis(900)],
            ttl: 3600,
            ..Behaviour::default()
        },
        "rt-0",
    )
    .await?;
    let lock = Some(Duration::from_millis(200));
    let slow = Arc::new(Replica::start_with(&s.redis, &s.key_line, &provider.url, lock).await?);
    let quick = Replica::start_with(&s.redis, &s.key_line, &provider.url, lock).await?;
    store_identity(&slow, "at-0", Some("rt-0"), -10).await?;

    let first = tokio::spawn({
        let slow = slow.clone();
        async move { slow.fresh().await }
    });
    // After the slow holder's lock lapsed, the other replica takes it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = quick.fresh().await??;
    let (record, _) = stored(&quick).await?;
    ensure!(
        tokens(&second.secret).0 == "at-1" && record.version == 2,
        "the second refresh (answered first) wrote version 2: {record:?}"
    );

    // The slow holder then gets at-2 from the provider, but version 1 is
    // gone: its write is refused and it uses what is stored.
    let first = first.await???;
    ensure!(
        tokens(&first.secret).0 == "at-1",
        "the lapsed holder used the newer version, got {}",
        tokens(&first.secret).0
    );
    let (record, secret) = stored(&quick).await?;
    ensure!(
        record.version == 2,
        "nothing overwrote version 2: {record:?}"
    );
    ensure!(tokens(&secret) == ("at-1".into(), Some("rt-0".into())));
    ensure!(provider.grants() == 2);
    // The lapsed holder released nothing that was not its own.
    let store = &quick.credentials.store;
    ensure!(!store.locked(&store.refresh_lock_key(ID)).await?);
    let refreshes = events(&quick)
        .await?
        .into_iter()
        .filter(|e| e["action"] == "identity.refresh")
        .count();
    ensure!(refreshes == 1, "one refresh written, not two: {refreshes}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_that_does_not_rotate_keeps_the_old_refresh_token() -> Result<()> {
    let s = setup("refresh-no-rotate")?;
    let provider = Provider::start(
        Behaviour {
            ttl: 30, // inside the 60 s margin: due again at once
            ..Behaviour::default()
        },
        "rt-0",
    )
    .await?;
    let a = Replica::start(&s.redis, &s.key_line, &provider.url).await?;
    store_identity(&a, "at-0", Some("rt-0"), 5).await?;
    ensure!(tokens(&a.fresh().await??.secret).0 == "at-1");
    let (_, secret) = stored(&a).await?;
    ensure!(tokens(&secret) == ("at-1".into(), Some("rt-0".into())));
    ensure!(a.refreshes("refreshed") == 1.0 && a.refreshes("rotated") == 0.0);
    // Just refreshed: used as is although inside the margin.
    ensure!(tokens(&a.fresh().await??.secret).0 == "at-1");
    ensure!(provider.grants() == 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_grant_marks_the_identity_consent_required() -> Result<()> {
    let s = setup("refresh-invalid-grant")?;
    let provider = Provider::start(
        Behaviour {
            refuse: true,
            ttl: 3600,
            ..Behaviour::default()
        },
        "rt-0",
    )
    .await?;
    let a = Replica::start(&s.redis, &s.key_line, &provider.url).await?;
    let b = Replica::start(&s.redis, &s.key_line, &provider.url).await?;
    let before = store_identity(&a, "at-0", Some("rt-0"), -10).await?;
    // Prime b's cache with the record as it was.
    b.credentials.identity(ID).await?;
    match a.fresh().await? {
        Err(RefreshError::ConsentNeeded { .. }) => {}
        other => anyhow::bail!("expected consent needed, got {other:?}"),
    }
    let (record, secret) = stored(&a).await?;
    ensure!(record.consent_required, "{record:?}");
    ensure!(record.version == before.version, "the secret is unchanged");
    ensure!(tokens(&secret) == ("at-0".into(), Some("rt-0".into())));
    ensure!(a.refreshes("invalid_grant") == 1.0);
    let marked: Vec<Value> = events(&a)
        .await?
        .into_iter()
        .filter(|e| e["action"] == "identity.consent_required")
        .collect();
    ensure!(marked.len() == 1, "{marked:?}");
    ensure!(marked[0]["after"]["reason"] == "invalid_grant");
    ensure!(marked[0]["after"]["consent_required"] == json!(true));
    // The change was broadcast: b's cached copy is gone, and it reads the mark.
    latchkey_e2e::eventually("b sees consent_required", async || {
        let open = b.credentials.identity(ID).await?.context("gone")?;
        Ok(if open.record.consent_required {
            Ok(())
        } else {
            Err("not marked".to_string())
        })
    })
    .await?;
    ensure!(provider.state.calls.load(Ordering::SeqCst) == 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_token_without_a_refresh_token_needs_consent() -> Result<()> {
    let s = setup("refresh-no-refresh-token")?;
    let provider = Provider::start(Behaviour::default(), "rt-0").await?;
    let a = Replica::start(&s.redis, &s.key_line, &provider.url).await?;
    // Still valid, inside the margin: used as is, nothing asked.
    store_identity(&a, "at-0", None, 30).await?;
    ensure!(tokens(&a.fresh().await??.secret).0 == "at-0");
    // Expired: consent needed, and the identity says so.
    let c = Replica::start(&s.redis, &s.key_line, &provider.url).await?;
    let store = &c.credentials.store;
    let key = store.identity_key(ID);
    let mut record: VaultRecord = store.get(&key).await?.context("gone")?;
    let raw = serde_json::to_string(&record)?;
    record.expires_at = Some("2020-01-01T00:00:00Z".into());
    ensure!(
        store
            .replace_if_unchanged(&key, &raw, &serde_json::to_string(&record)?)
            .await?
    );
    match c.fresh().await? {
        Err(RefreshError::ConsentNeeded { .. }) => {}
        other => anyhow::bail!("expected consent needed, got {other:?}"),
    }
    let (record, _) = stored(&c).await?;
    ensure!(record.consent_required);
    let marked: Vec<Value> = events(&c)
        .await?
        .into_iter()
        .filter(|e| e["action"] == "identity.consent_required")
        .collect();
    ensure!(marked.len() == 1 && marked[0]["after"]["reason"] == "no_refresh_token");
    ensure!(provider.state.calls.load(Ordering::SeqCst) == 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_that_is_down_is_survived_while_the_token_is_valid() -> Result<()> {
    let s = setup("refresh-provider-down")?;
    // Nothing listens there.
    let down = format!("http://127.0.0.1:{}", free_port());
    let a = Replica::start(&s.redis, &s.key_line, &down).await?;
    store_identity(&a, "at-0", Some("rt-0"), 30).await?;
    ensure!(
        tokens(&a.fresh().await??.secret).0 == "at-0",
        "the still valid token is used"
    );
    ensure!(a.refreshes("unavailable") == 1.0);
    let failed: Vec<Value> = events(&a)
        .await?
        .into_iter()
        .filter(|e| e["action"] == "identity.refresh_failed")
        .collect();
    ensure!(
        failed.len() == 1 && failed[0]["after"]["reason"] == "provider_unavailable",
        "{failed:?}"
    );
    // The next requests do not ask the provider again right away.
    ensure!(tokens(&a.fresh().await??.secret).0 == "at-0");
    ensure!(a.refreshes("unavailable") == 1.0);

    // Expired: fail closed, with a message that says why.
    let b = Replica::start(&s.redis, &s.key_line, &down).await?;
    let store = &b.credentials.store;
    b.credentials
        .put_identity(NewIdentity {
            actor: "alice",
            id: "gh-alice-2",
            server: SERVER,
            owner: "alice",
            availability: Availability::Private,
            secret: &IdentitySecret::Oauth {
                access_token: Secret::new("at-9"),
                refresh_token: Some(Secret::new("rt-9")),
            },
            replace: false,
            meta: TokenMeta {
                expires_at: Some("2020-01-01T00:00:00Z".into()),
                scopes: vec![],
                exchanged: None,
            },
        })
        .await?;
    let open = b
        .credentials
        .identity("gh-alice-2")
        .await?
        .context("missing")?;
    match b.refresher.fresh(&b.credentials, open).await {
        Err(RefreshError::Unavailable(message)) => ensure!(
            message.contains("has expired and could not be refreshed")
                && message.contains("could not be reached")
                && !message.contains("at-9")
                && !message.contains("rt-9"),
            "{message}"
        ),
        other => anyhow::bail!("expected unavailable, got {other:?}"),
    }
    let record: VaultRecord = store
        .get(&store.identity_key("gh-alice-2"))
        .await?
        .context("gone")?;
    ensure!(!record.consent_required, "an outage is not a revocation");
    Ok(())
}
