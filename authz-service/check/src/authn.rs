//! Who is calling: verification of the organisation's OIDC/JWT bearer tokens
//! against the issuer's JWKS (fetched once, cached, re-fetched on an unknown
//! `kid` at most every few seconds), with `iss`, `aud`, `exp` and `nbf` checks.
//!
//! A token already verified for an audience is remembered (keyed by the
//! SHA-256 of audience and token, never the token itself) until its `exp` or
//! for `verified_token_cache_secs`, whichever is sooner, so the steady state
//! skips the RS256 check that dominates a Check's cost. A JWKS change
//! forgets everything. Its hits and misses are counted for `/metrics`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

use latchkey_core::config::IdentityProvider;
use latchkey_core::metrics::{LookupCounts, Lookups};
use latchkey_core::principal::Caller;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthnError {
    #[error("no bearer token: send `Authorization: Bearer <token>` from your identity provider")]
    Missing,
    #[error("the bearer token is not a well-formed JWT")]
    Malformed,
    #[error("the token is signed with {0}, which the identity provider does not publish")]
    UnknownKey(ShownKeyId),
    #[error("the token's signature is not valid")]
    BadSignature,
    #[error("the token has expired; get a new one from your identity provider")]
    Expired,
    #[error("the token is not valid yet (nbf in the future)")]
    NotYetValid,
    #[error("the token is for another audience; request one for {expected}")]
    WrongAudience { expected: String },
    #[error("the token was issued by another issuer; expected {expected}")]
    WrongIssuer { expected: String },
    #[error("the token lacks the '{0}' claim")]
    MissingClaim(&'static str),
    #[error("the token uses an algorithm this gateway does not accept")]
    BadAlgorithm,
    #[error("the token's delegation chain (nested `act` claims) is deeper than 16 actors")]
    DelegationTooDeep,
    #[error("the identity provider's signing keys are unavailable: {0}")]
    KeysUnavailable(String),
}

/// A token's `kid` as an error may show it. The `kid` is the client's to
/// choose (any JSON string), and the message travels in the 401's
/// `WWW-Authenticate` header, the JSON-RPC error, the log and the audit
/// event: a short, plain one is named so an operator can tell which key
/// the client used; anything else (long, control characters, quotes) only
/// by its length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownKeyId(String);

impl ShownKeyId {
    /// The longest `kid` named back as sent.
    pub const MAX: usize = 64;

    pub fn of(kid: &str) -> ShownKeyId {
        let plain = !kid.is_empty()
            && kid.len() <= Self::MAX
            && kid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:+/=-".contains(&b));
        ShownKeyId(if plain {
            format!("key '{kid}'")
        } else {
            format!("a key id of {} bytes", kid.len())
        })
    }
}

impl std::fmt::Display for ShownKeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl AuthnError {
    /// Whether the client can fix this by getting a (new) token, as opposed
    /// to a gateway-side failure.
    pub fn is_client_error(&self) -> bool {
        !matches!(self, AuthnError::KeysUnavailable(_))
    }

    /// RFC 6750 error code for `WWW-Authenticate`.
    pub fn bearer_error(&self) -> Option<&'static str> {
        match self {
            AuthnError::Missing => None,
            AuthnError::KeysUnavailable(_) => None,
            _ => Some("invalid_token"),
        }
    }
}

/// The deepest delegation chain accepted; a longer one is refused rather
/// than cut, so the audit trail never shows half a chain.
pub const MAX_DELEGATION_DEPTH: usize = 16;

/// An RFC 8693 `act` claim: who acts, and on whose behalf they did.
#[derive(Debug, Deserialize)]
struct Actor {
    sub: Option<String>,
    client_id: Option<String>,
    act: Option<Box<Actor>>,
}

/// The chain of actors in an `act` claim, current actor first.
fn delegation_chain(act: Option<Actor>) -> Result<Vec<String>, AuthnError> {
    let mut chain = Vec::new();
    let mut next = act.map(Box::new);
    while let Some(a) = next {
        if chain.len() == MAX_DELEGATION_DEPTH {
            return Err(AuthnError::DelegationTooDeep);
        }
        let id = a
            .sub
            .or(a.client_id)
            .filter(|s| !s.is_empty())
            .ok_or(AuthnError::MissingClaim("act.sub"))?;
        chain.push(id);
        next = a.act;
    }
    Ok(chain)
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    client_id: Option<String>,
    azp: Option<String>,
    exp: Option<u64>,
    #[serde(default)]
    groups: OneOrMany,
    #[serde(default)]
    roles: OneOrMany,
    act: Option<Actor>,
    /// RFC 9068 / RFC 8693: space-separated.
    scope: Option<String>,
    /// The list form some providers use instead.
    #[serde(default)]
    scp: OneOrMany,
    acr: Option<String>,
    auth_time: Option<u64>,
}

impl Claims {
    /// The caller a verified token's claims establish, and the token's `exp`.
    fn into_caller(
        all: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(Caller, Option<u64>), AuthnError> {
        let all = serde_json::Value::Object(all);
        // Claims of the wrong type (a numeric `sub`, a `scope` list) make
        // the token malformed rather than silently absent.
        let claims = Claims::deserialize(&all).map_err(|_| AuthnError::Malformed)?;
        let serde_json::Value::Object(all) = all else {
            return Err(AuthnError::Malformed);
        };
        let subject = claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(AuthnError::MissingClaim("sub"))?;
        let mut scopes: Vec<String> = claims
            .scope
            .as_deref()
            .unwrap_or_default()
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .chain(claims.scp.into_vec())
            .collect();
        scopes.sort();
        scopes.dedup();
        let caller = Caller {
            subject,
            client_id: claims.client_id.or(claims.azp),
            roles: role_values(claims.groups, claims.roles),
            actors: delegation_chain(claims.act)?,
            scopes,
            acr: claims.acr,
            auth_time: claims.auth_time,
            claims: std::sync::Arc::new(all),
            ..Caller::default()
        };
        Ok((caller, claims.exp))
    }
}

/// A claim that is one string or a list of strings (both are common).
#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::None => Vec::new(),
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// The union of `groups` and `roles`, sorted, without repeats.
fn role_values(groups: OneOrMany, roles: OneOrMany) -> Vec<String> {
    let mut all = groups.into_vec();
    all.extend(roles.into_vec());
    all.sort();
    all.dedup();
    all
}

/// A verified caller and when its token stops being valid.
#[derive(Clone)]
struct Verified {
    caller: Caller,
    exp: u64,
}

/// One verification key of the identity provider, with the JWK it came
/// from serialized: two fetches of the same key set compare equal, so a
/// refetch that changed nothing keeps the verified-token cache.
#[derive(Clone)]
struct TrustedKey {
    key: DecodingKey,
    alg: Algorithm,
    jwk: String,
}

/// Verifies inbound tokens for one issuer.
pub struct TokenVerifier {
    issuer: String,
    jwks_uri: RwLock<Option<String>>,
    leeway: u64,
    /// Minimum time between JWKS fetches triggered by unknown `kid`s.
    refetch_interval: Duration,
    http: reqwest::Client,
    keys: RwLock<HashMap<String, TrustedKey>>,
    /// Held while fetching, so concurrent misses share one fetch.
    fetch: Mutex<Option<Instant>>,
    /// sha256(audience ‖ 0 ‖ token) → the caller it verified as.
    verified: Option<moka::sync::Cache<[u8; 32], Verified>>,
    /// Lookups in `verified` (none while it is off).
    verified_lookups: Lookups,
}

impl TokenVerifier {
    pub fn new(idp: &IdentityProvider) -> Self {
        Self {
            issuer: idp.issuer.clone(),
            jwks_uri: RwLock::new(idp.jwks_uri.clone()),
            leeway: idp.leeway_secs,
            refetch_interval: Duration::from_secs(idp.jwks_refetch_min_secs),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            keys: RwLock::new(HashMap::new()),
            fetch: Mutex::new(None),
            verified: (idp.verified_token_cache_secs > 0).then(|| {
                moka::sync::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(Duration::from_secs(idp.verified_token_cache_secs))
                    .build()
            }),
            verified_lookups: Lookups::default(),
        }
    }

    /// Hits and misses of the verified-token cache so far (for `/metrics`);
    /// an expired token found there is a hit, since it is refused from memory.
    pub fn cache_lookups(&self) -> LookupCounts {
        self.verified_lookups.counts()
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub async fn has_keys(&self) -> bool {
        !self.keys.read().await.is_empty()
    }

    /// Fetches the JWKS now (at start-up and on unknown `kid`).
    pub async fn refresh(&self) -> Result<usize, AuthnError> {
        let mut last = self.fetch.lock().await;
        let uri = self.jwks_uri().await?;
        let set: JwkSet = self.get_json(&uri, "JWKS").await?;
        let n = self.install(&set).await;
        *last = Some(Instant::now());
        Ok(n)
    }

    /// Replaces the verification keys with those of `set` (keys without a
    /// `kid` or of an unsupported type are skipped); returns how many were taken.
    pub async fn install(&self, set: &JwkSet) -> usize {
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            if let (Some(kid), Some((key, alg))) = (jwk.common.key_id.clone(), decoding_key(jwk)) {
                let jwk = serde_json::to_string(jwk).unwrap_or_default();
                keys.insert(kid, TrustedKey { key, alg, jwk });
            }
        }
        let n = keys.len();
        let mut current = self.keys.write().await;
        // A key that left the set (or changed under its `kid`) must not keep
        // its tokens valid. Only then is everything verified forgotten: a
        // token with a made-up `kid` makes the verifier refetch the set, and
        // if every refetch emptied the cache, anyone could make every caller
        // pay a full signature check again every few seconds.
        let withdrawn = current
            .iter()
            .any(|(kid, old)| keys.get(kid).is_none_or(|new| new.jwk != old.jwk));
        *current = keys;
        drop(current);
        if withdrawn && let Some(v) = &self.verified {
            v.invalidate_all();
        }
        n
    }

    /// GETs a JSON document from the identity provider; any failure means
    /// its keys are unavailable (and every Check fails closed).
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        what: &str,
    ) -> Result<T, AuthnError> {
        self.http
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| AuthnError::KeysUnavailable(format!("GET {url}: {e}")))?
            .json()
            .await
            .map_err(|e| AuthnError::KeysUnavailable(format!("{what} at {url} is not valid: {e}")))
    }

    async fn jwks_uri(&self) -> Result<String, AuthnError> {
        if let Some(uri) = self.jwks_uri.read().await.clone() {
            return Ok(uri);
        }
        #[derive(Deserialize)]
        struct Discovery {
            jwks_uri: String,
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let d: Discovery = self.get_json(&url, "OIDC discovery document").await?;
        *self.jwks_uri.write().await = Some(d.jwks_uri.clone());
        Ok(d.jwks_uri)
    }

    async fn key_for(&self, kid: &str) -> Result<(DecodingKey, Algorithm), AuthnError> {
        if let Some(k) = self.keys.read().await.get(kid) {
            return Ok((k.key.clone(), k.alg));
        }
        let recently = self
            .fetch
            .lock()
            .await
            .is_some_and(|t| t.elapsed() < self.refetch_interval);
        if !recently || !self.has_keys().await {
            self.refresh().await?;
        }
        self.keys
            .read()
            .await
            .get(kid)
            .map(|k| (k.key.clone(), k.alg))
            .ok_or_else(|| AuthnError::UnknownKey(ShownKeyId::of(kid)))
    }

    /// Verifies `token` for a gateway whose public URL is `audience`.
    pub async fn verify(&self, token: &str, audience: &str) -> Result<Caller, AuthnError> {
        let cache_key = self
            .verified
            .as_ref()
            .map(|_| token_digest(audience, token));
        if let (Some(cache), Some(key)) = (&self.verified, &cache_key) {
            if let Some(hit) = cache.get(key) {
                self.verified_lookups.hit();
                if unix_now() <= hit.exp + self.leeway {
                    return Ok(hit.caller);
                }
                cache.invalidate(key);
                return Err(AuthnError::Expired);
            }
            self.verified_lookups.miss();
        }
        let (caller, exp) = Claims::into_caller(self.verify_as(token, audience).await?)?;
        if let (Some(cache), Some(key), Some(exp)) = (&self.verified, cache_key, exp) {
            cache.insert(
                key,
                Verified {
                    caller: caller.clone(),
                    exp,
                },
            );
        }
        Ok(caller)
    }

    /// Verifies `token` for `audience` and returns the caller and every
    /// claim (for the admin API, which reads capabilities from them).
    pub async fn verify_with_claims(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<(Caller, serde_json::Map<String, serde_json::Value>), AuthnError> {
        let claims: serde_json::Map<String, serde_json::Value> =
            self.verify_as(token, audience).await?;
        let (caller, _) = Claims::into_caller(claims.clone())?;
        Ok((caller, claims))
    }

    async fn verify_as<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<T, AuthnError> {
        let header = decode_header(token).map_err(|_| AuthnError::Malformed)?;
        let kid = header.kid.ok_or(AuthnError::MissingClaim("kid"))?;
        let (key, alg) = self.key_for(&kid).await?;
        if header.alg != alg {
            return Err(AuthnError::BadAlgorithm);
        }
        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = decode::<T>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => AuthnError::Expired,
                K::ImmatureSignature => AuthnError::NotYetValid,
                K::InvalidAudience => AuthnError::WrongAudience {
                    expected: audience.to_string(),
                },
                K::InvalidIssuer => AuthnError::WrongIssuer {
                    expected: self.issuer.clone(),
                },
                K::InvalidSignature => AuthnError::BadSignature,
                K::MissingRequiredClaim(c) => AuthnError::MissingClaim(match c.as_str() {
                    "exp" => "exp",
                    "iss" => "iss",
                    "aud" => "aud",
                    _ => "sub",
                }),
                K::InvalidAlgorithm | K::InvalidAlgorithmName => AuthnError::BadAlgorithm,
                _ => AuthnError::Malformed,
            }
        })?;
        Ok(data.claims)
    }
}

fn decoding_key(jwk: &Jwk) -> Option<(DecodingKey, Algorithm)> {
    use jsonwebtoken::jwk::{AlgorithmParameters as P, KeyAlgorithm as KA};
    let key = DecodingKey::from_jwk(jwk).ok()?;
    let alg = match jwk.common.key_algorithm {
        Some(KA::RS256) => Algorithm::RS256,
        Some(KA::RS384) => Algorithm::RS384,
        Some(KA::RS512) => Algorithm::RS512,
        Some(KA::PS256) => Algorithm::PS256,
        Some(KA::PS384) => Algorithm::PS384,
        Some(KA::PS512) => Algorithm::PS512,
        Some(KA::ES256) => Algorithm::ES256,
        Some(KA::ES384) => Algorithm::ES384,
        Some(KA::EdDSA) => Algorithm::EdDSA,
        Some(_) => return None,
        // No `alg` on the key: infer the common default for its type.
        None => match &jwk.algorithm {
            P::RSA(_) => Algorithm::RS256,
            P::EllipticCurve(_) => Algorithm::ES256,
            P::OctetKeyPair(_) => Algorithm::EdDSA,
            P::OctetKey(_) => return None,
        },
    };
    Some((key, alg))
}

fn token_digest(audience: &str, token: &str) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(audience.as_bytes());
    ctx.update(&[0]);
    ctx.update(token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The token from an `Authorization: Bearer` header value.
pub fn bearer_token(authorization: Option<&str>) -> Result<&str, AuthnError> {
    let value = authorization.ok_or(AuthnError::Missing)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(AuthnError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthnError::Malformed);
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kid_is_named_back_only_when_short_and_plain() {
        let shown = |kid: &str| AuthnError::UnknownKey(ShownKeyId::of(kid)).to_string();
        assert_eq!(
            shown("rotated-2026_11"),
            "the token is signed with key 'rotated-2026_11', which the identity provider does not publish"
        );
        let long = "k".repeat(ShownKeyId::MAX + 1);
        for kid in [
            "",
            "a\r\nx-injected: 1",
            "quote'\"",
            "caf\u{e9}",
            long.as_str(),
        ] {
            let text = shown(kid);
            assert!(
                text.contains(&format!("a key id of {} bytes", kid.len())),
                "{text}"
            );
            assert!(
                !text.chars().any(char::is_control) && !text.contains('"'),
                "{text}"
            );
        }
        assert!(shown(&"k".repeat(ShownKeyId::MAX)).contains("key 'kkk"));
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(Some("bearer  abc ")), Ok("abc"));
        assert_eq!(bearer_token(None), Err(AuthnError::Missing));
        assert_eq!(bearer_token(Some("Basic abc")), Err(AuthnError::Malformed));
        assert_eq!(bearer_token(Some("Bearer ")), Err(AuthnError::Malformed));
    }

    /// A signing key generated for these tests only; it protects nothing.
    const TEST_KEY_PEM: &str = include_str!("testdata/test-only-rsa-key.pem");
    const AUD: &str = "http://gw.test/mcp";

    fn signer() -> (jsonwebtoken::EncodingKey, JwkSet) {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use rsa::pkcs1::DecodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        let key = rsa::RsaPrivateKey::from_pkcs1_pem(TEST_KEY_PEM).unwrap();
        let jwks: JwkSet = serde_json::from_value(serde_json::json!({"keys": [{
            "kty": "RSA", "kid": "t1", "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
        }]}))
        .unwrap();
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let der = key.to_pkcs1_der().unwrap();
        let encoding = jsonwebtoken::EncodingKey::from_rsa_der(der.as_bytes());
        (encoding, jwks)
    }

    fn token(encoding: &jsonwebtoken::EncodingKey, exp: u64) -> String {
        let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
        header.kid = Some("t1".into());
        let claims = serde_json::json!({
            "iss": "http://idp.test", "aud": AUD, "sub": "alice",
            "client_id": "agent-1", "exp": exp, "iat": unix_now(),
        });
        jsonwebtoken::encode(&header, &claims, encoding).unwrap()
    }

    fn verifier(cache_secs: u64, leeway: u64) -> TokenVerifier {
        TokenVerifier::new(&IdentityProvider {
            issuer: "http://idp.test".into(),
            jwks_uri: Some("http://127.0.0.1:9/jwks".into()),
            leeway_secs: leeway,
            jwks_refetch_min_secs: 3600,
            verified_token_cache_secs: cache_secs,
        })
    }

    #[tokio::test]
    async fn verified_token_is_remembered_per_audience_and_forgotten_on_new_keys() {
        let (encoding, jwks) = signer();
        let v = verifier(300, 0);
        v.install(&jwks).await;
        let t = token(&encoding, unix_now() + 600);
        let caller = v.verify(&t, AUD).await.unwrap();
        assert_eq!(caller.subject, "alice");
        let remembered = |v: &TokenVerifier| {
            v.verified
                .as_ref()
                .unwrap()
                .contains_key(&token_digest(AUD, &t))
        };
        assert!(remembered(&v));
        // A hit is the same answer; another audience is checked on its own.
        assert_eq!(v.verify(&t, AUD).await.unwrap(), caller);
        assert!(matches!(
            v.verify(&t, "http://other.test/mcp").await,
            Err(AuthnError::WrongAudience { .. })
        ));
        assert_eq!(v.cache_lookups(), LookupCounts { hits: 1, misses: 2 });
        // Keys replaced by a set without `t1`: the remembered result goes too.
        v.install(&JwkSet { keys: vec![] }).await;
        assert!(!remembered(&v));
        assert!(v.verify(&t, AUD).await.is_err());
    }

    #[tokio::test]
    async fn a_refetch_that_withdraws_no_key_keeps_what_was_verified() {
        let (encoding, jwks) = signer();
        let v = verifier(300, 0);
        v.install(&jwks).await;
        let t = token(&encoding, unix_now() + 600);
        v.verify(&t, AUD).await.unwrap();
        let remembered = |v: &TokenVerifier| {
            v.verified
                .as_ref()
                .unwrap()
                .contains_key(&token_digest(AUD, &t))
        };
        // The same set again (what a made-up `kid` makes the verifier fetch).
        v.install(&jwks).await;
        assert!(remembered(&v));
        // A key added beside `t1`: tokens signed by `t1` are as valid as before.
        let mut grown = jwks.clone();
        let mut extra = grown.keys[0].clone();
        extra.common.key_id = Some("t2".into());
        grown.keys.push(extra);
        v.install(&grown).await;
        assert!(remembered(&v));
        // `t1` now names other key material: what it verified is forgotten.
        let mut swapped: JwkSet = serde_json::from_value(serde_json::json!({"keys": [{
            "kty": "RSA", "kid": "t1", "alg": "RS256", "n": "sXch", "e": "AQAB",
        }]}))
        .unwrap();
        swapped.keys.push(grown.keys[1].clone());
        v.install(&swapped).await;
        assert!(!remembered(&v));
    }

    #[tokio::test]
    async fn remembered_token_still_expires() {
        let (encoding, jwks) = signer();
        let v = verifier(300, 0);
        v.install(&jwks).await;
        // Valid now, expired two seconds from now.
        let t = token(&encoding, unix_now() + 1);
        v.verify(&t, AUD).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(v.verify(&t, AUD).await, Err(AuthnError::Expired));
        // With the cache off, the same answer comes from the signature check.
        let off = verifier(0, 0);
        off.install(&jwks).await;
        assert_eq!(off.verify(&t, AUD).await, Err(AuthnError::Expired));
        // An expired token refused from memory is a hit; an absent cache counts nothing.
        assert_eq!(v.cache_lookups(), LookupCounts { hits: 1, misses: 1 });
        assert_eq!(off.cache_lookups(), LookupCounts::default());
    }

    #[test]
    fn nested_act_claims_give_the_delegation_chain_current_actor_first() {
        let act: Actor = serde_json::from_value(serde_json::json!({
            "sub": "summariser",
            "act": {"client_id": "planner", "act": {"sub": "chat-ui"}}
        }))
        .unwrap();
        assert_eq!(
            delegation_chain(Some(act)).unwrap(),
            ["summariser", "planner", "chat-ui"]
        );
        assert_eq!(delegation_chain(None).unwrap(), Vec::<String>::new());
        let nameless: Actor = serde_json::from_value(serde_json::json!({"act": {}})).unwrap();
        assert_eq!(
            delegation_chain(Some(nameless)),
            Err(AuthnError::MissingClaim("act.sub"))
        );
        let mut deep = serde_json::json!({"sub": "a0"});
        for n in 1..=MAX_DELEGATION_DEPTH {
            deep = serde_json::json!({"sub": format!("a{n}"), "act": deep});
        }
        let deep: Actor = serde_json::from_value(deep).unwrap();
        assert_eq!(
            delegation_chain(Some(deep)),
            Err(AuthnError::DelegationTooDeep)
        );
    }

    #[test]
    fn only_missing_token_has_no_bearer_error_code() {
        assert_eq!(AuthnError::Missing.bearer_error(), None);
        assert_eq!(AuthnError::Expired.bearer_error(), Some("invalid_token"));
        assert!(!AuthnError::KeysUnavailable("x".into()).is_client_error());
    }
}
