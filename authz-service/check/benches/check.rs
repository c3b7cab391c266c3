//! The service's per-request costs on the steady-state path:
//! * `jwt_verify_cached_jwks`: RS256 signature + claims, keys already cached
//!   (the verified-token cache off, so the signature is checked every time);
//! * `aes_gcm_open`: decrypting one stored credential;
//! * `check_cached`: a whole gRPC `Check` handler call (CheckRequest in →
//!   context → JWT (a verified-token cache hit) → route → user and agent
//!   status → cached credential → CheckResponse out, the decision counted
//!   for `/metrics` and queued for audit), with a real Redis behind it
//!   that, once warm, this path does not touch.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use latchkey_check::authn::TokenVerifier;
use latchkey_check::reload::PolicySource;
use latchkey_check::service::CheckService;
use latchkey_core::config::Config;
use latchkey_core::identity::{Availability, IdentitySecret};
use latchkey_core::metrics::Metrics;
use latchkey_core::policy::Policy;
use latchkey_core::routing::RouteTable;
use latchkey_core::vault::{KeyRing, Secret};
use latchkey_proto::auth::authorization_server::Authorization;
use latchkey_proto::auth::{AttributeContext, CheckRequest, attribute_context};
use latchkey_store::audit_writer::AuditWriter;
use latchkey_store::credentials::{Credentials, NewIdentity, TokenMeta};
use latchkey_store::redis_backend::Topology;
use latchkey_store::store::Store;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use std::hint::black_box;

const GATEWAY: &str = "http://127.0.0.1:10000/mcp";
const ISSUER: &str = "http://127.0.0.1:9400";

struct Idp {
    encoding: EncodingKey,
    jwks: JwkSet,
}

fn idp() -> Idp {
    let key = rsa::RsaPrivateKey::new(&mut rand_core_rng(), 2048).expect("rsa key");
    let der = key.to_pkcs1_der().expect("der");
    let jwks: JwkSet = serde_json::from_value(serde_json::json!({"keys": [{
        "kty": "RSA", "kid": "bench-key", "alg": "RS256", "use": "sig",
        "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
    }]}))
    .expect("jwks");
    Idp {
        encoding: EncodingKey::from_rsa_der(der.as_bytes()),
        jwks,
    }
}

fn rand_core_rng() -> rsa::rand_core::OsRng {
    rsa::rand_core::OsRng
}

fn token(idp: &Idp) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("bench-key".into());
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() + 3600)
        .unwrap_or(0);
    let claims = serde_json::json!({"iss": ISSUER, "aud": GATEWAY, "sub": "alice", "exp": exp, "client_id": "agent"});
    jsonwebtoken::encode(&header, &claims, &idp.encoding).expect("sign")
}

fn idp_config(redis_url: &str) -> Config {
    Config::parse(&format!(
        r#"
[redis]
url = "{redis_url}"
[vault]
key_env = "LATCHKEY_BENCH_KEYS"
[identity_provider]
issuer = "{ISSUER}"
jwks_uri = "{ISSUER}/jwks"
[[agents]]
name = "agent"
[[servers]]
name = "crm"
url = "http://127.0.0.1:3001/mcp"
auth = {{ type = "static_header", header = "authorization", prefix = "Bearer " }}
[[gateways]]
name = "bench"
public_url = "{GATEWAY}"
[[gateways.assignments]]
name = "crm"
server = "crm"
scheme = "shared"
identity = "crm-sa"
"#
    ))
    .expect("config")
}

struct RedisGuard(Child);
impl Drop for RedisGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> (RedisGuard, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (run scripts/setup)");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (RedisGuard(child), format!("redis://127.0.0.1:{port}"))
}

fn check_request(token: &str) -> CheckRequest {
    let mut http = attribute_context::HttpRequest {
        id: "bench".into(),
        method: "POST".into(),
        path: "/mcp/crm".into(),
        host: "127.0.0.1:10000".into(),
        ..Default::default()
    };
    http.headers
        .insert("authorization".into(), format!("Bearer {token}"));
    http.headers
        .insert("content-type".into(), "application/json".into());
    http.raw_body = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"lookup","arguments":{"q":"acme"}}}"#.to_vec();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                time: None,
                http: Some(http),
            }),
            ..Default::default()
        }),
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let idp = idp();
    let token = token(&idp);

    let (_redis, redis_url) = start_redis();
    let key_line = KeyRing::generate_line("bench");
    // SAFETY: single-threaded at this point; the variable is only read by KeyRing::from_config below.
    unsafe { std::env::set_var("LATCHKEY_BENCH_KEYS", &key_line) };
    let config = idp_config(&redis_url);

    // The signature check itself: the verified-token cache turned off.
    let mut uncached = config.identity_provider.clone();
    uncached.verified_token_cache_secs = 0;
    let verifier = TokenVerifier::new(&uncached);
    assert_eq!(rt.block_on(verifier.install(&idp.jwks)), 1);
    c.bench_function("jwt_verify_cached_jwks", |b| {
        b.to_async(&rt).iter(|| async {
            verifier
                .verify(black_box(&token), GATEWAY)
                .await
                .expect("valid")
        })
    });

    let ring = KeyRing::parse(&key_line, None).expect("key");
    let aad = b"latchkey/v1/identity\x00crm-sa\x00crm\x001";
    let sealed = ring
        .seal(aad, b"service-account-secret-of-typical-length-0123456789")
        .expect("seal");
    c.bench_function("aes_gcm_open", |b| {
        b.iter(|| {
            ring.open("crm-sa", black_box(aad), black_box(&sealed))
                .expect("open")
        })
    });

    let service = rt.block_on(async {
        let keys = KeyRing::from_config(&config.vault).expect("keys");
        let store = Store::connect(
            &Topology::Single {
                url: redis_url.clone(),
            },
            "bench",
            Duration::from_secs(2),
            1000,
        )
        .await
        .expect("redis");
        let credentials = Credentials::new(store, keys, Duration::from_secs(3600));
        let secret = IdentitySecret::Static {
            value: Secret::new("sa-secret"),
        };
        credentials
            .put_identity(NewIdentity {
                actor: "bench",
                id: "crm-sa",
                server: "crm",
                owner: "bench",
                availability: Availability::Global,
                secret: &secret,
                replace: true,
                meta: TokenMeta::default(),
            })
            .await
            .expect("store");
        let verifier = TokenVerifier::new(&config.identity_provider);
        verifier.install(&idp.jwks).await;
        let credentials_store = credentials.store.clone();
        // The agents the config provisions live with the (here empty) policy.
        let policy = Arc::new(PolicySource::fixed(
            Policy::compile(&config, "").expect("policy"),
        ));
        CheckService {
            routes: Arc::new(RouteTable::build(&config)),
            config: Arc::new(config),
            verifier: Arc::new(verifier),
            credentials,
            policy,
            audit: AuditWriter::start(credentials_store, "bench".into(), 100_000),
            metrics: Arc::new(Metrics::new()),
            client_capabilities: Default::default(),
            tool_annotations: Default::default(),
            refresher: Default::default(),
            sightings: None,
            alerts: None,
        }
    });
    let request = check_request(&token);
    // Warm the credential cache, and prove the path allows.
    let warm = rt
        .block_on(service.check(tonic::Request::new(request.clone())))
        .expect("check");
    assert_eq!(
        warm.get_ref().status.as_ref().map(|s| s.code),
        Some(0),
        "{:?}",
        warm.get_ref()
    );
    c.bench_function("check_cached", |b| {
        b.to_async(&rt).iter(|| async {
            service
                .check(tonic::Request::new(black_box(request.clone())))
                .await
                .expect("check")
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
