//! What the connect page keeps between requests, and the small pieces
//! that keep it safe: the signed-in session (in Redis under the hash of
//! its cookie), a flow between its start and its callback (in a sealed
//! cookie of its own), the cookies themselves, and the random tokens and
//! ids Latchkey mints. Every flow builds on these; `connect`'s module
//! comment says why each is kept where it is.

use axum::http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};

use super::errors::store_down;
use super::html::Page;
use super::{Connect, FLOW_COOKIE, FLOW_TTL, SESSION_COOKIE};
use latchkey_core::hex;

// --- what is kept: sessions in Redis, flows in sealed cookies -----------------

/// A signed-in person. Stored under the hash of the cookie value.
#[derive(Serialize, Deserialize)]
pub(super) struct Session {
    pub(super) user: String,
    /// Every form carries it; compared in constant time.
    pub(super) csrf: String,
    pub(super) created_at: String,
    /// The ID token's groups and roles claim values (at most
    /// [`MAX_SESSION_ROLES`]), for the approval rules' roles.
    #[serde(default)]
    pub(super) roles: Vec<String>,
    /// Whether the ID token carries `approvals:decide` (as `[admin]` maps
    /// claims to capabilities): the person may decide others' calls.
    #[serde(default)]
    pub(super) decides_for_others: bool,
}

/// The most role values a session keeps (each at most 128 bytes): the
/// identity provider signed them, and Redis keeps them for the session.
pub(super) const MAX_SESSION_ROLES: usize = 64;

impl Session {
    /// The signed-in person as policy reads them (their roles).
    pub(super) fn caller(&self) -> latchkey_core::principal::Caller {
        latchkey_core::principal::Caller {
            subject: self.user.clone(),
            roles: self.roles.clone(),
            ..Default::default()
        }
    }
}

/// What a flow cookie holds, sealed: the flow, the `state` it was issued
/// under (compared with the callback's) and when it stops being accepted
/// (the cookie's own `Max-Age` is the browser's to keep or not).
#[derive(Serialize, Deserialize)]
struct SealedFlow {
    state: String,
    /// Unix seconds.
    exp: i64,
    flow: Flow,
}

/// An authorization flow between its start and its callback. No `Debug`:
/// it holds a PKCE verifier.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum Flow {
    /// Signing in at the organisation's identity provider.
    SignIn {
        nonce: String,
        pkce_verifier: String,
        /// Page to go back to (a URL under `[connect] public_url`).
        return_to: String,
    },
    /// Authorising at a server's provider.
    Server {
        /// Hash of the session cookie that started it.
        session: String,
        user: String,
        gateway: String,
        server: String,
        request: Option<String>,
        pkce_verifier: String,
    },
}

/// What a provider sends back to a flow's callback.
#[derive(Deserialize)]
pub(super) struct CallbackQuery {
    pub(super) state: Option<String>,
    pub(super) code: Option<String>,
    pub(super) error: Option<String>,
    /// RFC 9207: the issuer of the authorisation response.
    pub(super) iss: Option<String>,
}

// --- small pieces: randomness, hashes, cookies, ids -------------------------

/// 32 random bytes, base64url without padding (43 characters).
pub fn random_token() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether two secrets are equal, in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

/// A value this module generated: base64url, 43 characters. Anything else
/// is refused before it reaches Redis.
pub fn well_formed_token(value: &str) -> bool {
    value.len() == 43
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A consent request id or identity id as it may appear in a form or link.
pub(super) fn well_formed_id(value: &str) -> bool {
    latchkey_core::identity::valid_identity_id(value)
}

/// The value of cookie `name` in the request, if any.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    cookies(headers, name).next()
}

/// Every value of cookie `name` in the request, at most four. A browser
/// sends one per path it holds, the most specific path first, so a value
/// planted under a narrower path comes before Latchkey's own: each is
/// tried rather than only the first (which would let it shadow a session).
pub fn cookies<'a>(headers: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
        .take(4)
}

/// The name cookie `base` goes by: `__Host-<base>` when `secure`.
pub fn cookie_name(base: &str, secure: bool) -> String {
    if secure {
        format!("__Host-{base}")
    } else {
        base.to_string()
    }
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Lax (the callbacks are
/// top-level navigations from the providers' sites), Secure when served
/// over https. `max_age` 0 removes it. See [`Connect::set_cookie`] for the
/// name prefix and path.
pub fn set_cookie(name: &str, value: &str, path: &str, max_age: u64, secure: bool) -> String {
    let mut c = format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax");
    if secure {
        c.push_str("; Secure");
    }
    c
}

/// A new identity's id: `<server>-<user>-<random>`, reduced to the
/// characters ids allow and at most 128 of them.
pub fn new_identity_id(server: &str, user: &str) -> String {
    let clean = |s: &str, max: usize| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .take(max)
            .collect()
    };
    let suffix = hex::random(6);
    format!("{}-{}-{suffix}", clean(server, 48), clean(user, 64))
}

// --- the service's cookies: their names and paths, flows, the session --------

impl Connect {
    fn secure(&self) -> bool {
        self.settings.public_url.scheme() == "https"
    }

    /// Cookie `base`'s name: `__Host-<base>` over https (the browser then
    /// insists on Secure, `Path=/` and no `Domain`, so no other host, not
    /// even a sibling subdomain, can plant or overwrite it), `<base>` on
    /// http, where browsers allow no prefix (loopback development).
    fn cookie_name(&self, base: &str) -> String {
        cookie_name(base, self.secure())
    }

    /// A `Set-Cookie` for cookie `base`: over https a `__Host-` cookie
    /// (`Path=/`, as the prefix requires), on http scoped to the connect
    /// pages.
    pub(super) fn set_cookie(&self, base: &str, value: &str, max_age: u64) -> String {
        let path = if self.secure() {
            "/".to_string()
        } else {
            self.cookie_path()
        };
        set_cookie(
            &self.cookie_name(base),
            value,
            &path,
            max_age,
            self.secure(),
        )
    }

    /// The name of the cookie that carries the flow issued under `state`.
    fn flow_cookie(state: &str) -> String {
        format!("{FLOW_COOKIE}{}", &hex::sha256(state.as_bytes())[..16])
    }

    /// Seals `flow`, issued under `state`, into the `Set-Cookie` of its own
    /// flow cookie. Nothing is written anywhere else.
    pub(super) fn seal_flow(&self, state: &str, flow: Flow) -> Result<String, Page> {
        let base = Self::flow_cookie(state);
        let sealed = SealedFlow {
            state: state.to_string(),
            exp: time::OffsetDateTime::now_utc().unix_timestamp() + FLOW_TTL.as_secs() as i64,
            flow,
        };
        let value = serde_json::to_vec(&sealed)
            .ok()
            .and_then(|plain| {
                self.app
                    .credentials
                    .keys
                    .seal_value(&self.cookie_name(&base), &plain)
            })
            .ok_or_else(|| {
                tracing::warn!(target: "latchkey::connect", "sealing a flow cookie failed");
                Page::message(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Latchkey cannot start this authorisation",
                    &["Its vault key is not usable on this replica; tell your operator. Nothing was changed."],
                )
            })?;
        Ok(self.set_cookie(&base, &value, FLOW_TTL.as_secs()))
    }

    /// The flow this browser started under `state`: its cookie opened,
    /// unexpired and issued for exactly this `state`; and the `Set-Cookie`
    /// that removes that cookie (sent with whatever the callback answers,
    /// so a flow is finished at most once per browser).
    pub(super) fn open_flow(&self, headers: &HeaderMap, state: &str) -> (Option<Flow>, String) {
        let base = Self::flow_cookie(state);
        let name = self.cookie_name(&base);
        let clear = self.set_cookie(&base, "", 0);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let flow = cookies(headers, &name)
            .filter(|v| v.len() <= 4096)
            .filter_map(|v| self.app.credentials.keys.open_value(&name, v))
            .filter_map(|plain| serde_json::from_slice::<SealedFlow>(&plain).ok())
            .find(|f| same_secret(&f.state, state) && f.exp >= now)
            .map(|f| f.flow);
        (flow, clear)
    }

    /// The session the request's cookie names, with the hash it is kept under.
    pub(super) async fn session(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<(String, Session)>, Page> {
        let name = self.cookie_name(SESSION_COOKIE);
        let store = self.store();
        for id in cookies(headers, &name).filter(|v| well_formed_token(v)) {
            let hash = hex::sha256(id.as_bytes());
            match store
                .get::<Session>(&store.connect_session_key(&hash))
                .await
            {
                Ok(Some(s)) => return Ok(Some((hash, s))),
                Ok(None) => continue,
                Err(e) => return Err(store_down(&e)),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn random_tokens_are_fresh_and_well_formed() {
        let a = random_token();
        let b = random_token();
        assert_ne!(a, b);
        assert!(well_formed_token(&a), "{a}");
        assert!(!well_formed_token("short"));
        assert!(!well_formed_token(&format!("{}!", &a[..42])));
    }

    #[test]
    fn keys_are_named_by_a_digest_not_the_value() {
        let v = random_token();
        let d = hex::sha256(v.as_bytes());
        assert_eq!(d.len(), 64);
        assert!(!d.contains(&v));
        assert_eq!(d, hex::sha256(v.as_bytes()));
        assert_ne!(d, hex::sha256(random_token().as_bytes()));
    }

    #[test]
    fn csrf_comparison_needs_the_exact_token() {
        let t = random_token();
        assert!(same_secret(&t, &t.clone()));
        assert!(!same_secret(&t, &random_token()));
        assert!(!same_secret(&t, ""));
        assert!(!same_secret(&t, &t[..42]));
    }

    #[test]
    fn cookies_are_read_by_exact_name() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("latchkey_connect_x=aaa; latchkey_connect=bbb"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("other=1"));
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("bbb"));
        assert_eq!(cookie(&h, "latchkey_connect_x"), Some("aaa"));
        assert_eq!(cookie(&h, "other"), Some("1"));
        assert_eq!(cookie(&h, "latchkey"), None);
        // Every value of a name, as a browser sends one per path.
        h.append(
            header::COOKIE,
            HeaderValue::from_static("latchkey_connect=ccc"),
        );
        assert_eq!(
            cookies(&h, SESSION_COOKIE).collect::<Vec<_>>(),
            vec!["bbb", "ccc"]
        );
    }

    #[test]
    fn session_cookie_is_http_only_lax_and_secure_on_https() {
        let c = set_cookie(SESSION_COOKIE, "v", "/connect", 3600, true);
        assert_eq!(
            c,
            "latchkey_connect=v; Path=/connect; Max-Age=3600; HttpOnly; SameSite=Lax; Secure"
        );
        assert!(!set_cookie(SESSION_COOKIE, "v", "/connect", 1, false).contains("Secure"));
    }

    #[test]
    fn new_identity_ids_are_valid_whatever_the_user_name() {
        for user in [
            "alice",
            "alice@example.com",
            "CN=Alice Smith,O=Acme",
            "ü",
            &"x".repeat(300),
        ] {
            let id = new_identity_id("crm", user);
            assert!(latchkey_core::identity::valid_identity_id(&id), "{id}");
            assert!(id.starts_with("crm-"), "{id}");
        }
        assert_ne!(
            new_identity_id("crm", "alice"),
            new_identity_id("crm", "alice")
        );
    }

    #[test]
    fn https_cookies_are_host_cookies_and_http_ones_keep_their_scope() {
        let name = cookie_name(SESSION_COOKIE, true);
        assert_eq!(name, "__Host-latchkey_connect");
        // What browsers require of a __Host- cookie: Secure, Path=/, no Domain.
        let c = set_cookie(&name, "v", "/", 3600, true);
        assert!(c.starts_with("__Host-latchkey_connect=v; Path=/;"), "{c}");
        assert!(c.ends_with("; Secure") && !c.contains("Domain"), "{c}");
        assert_eq!(cookie_name(SESSION_COOKIE, false), "latchkey_connect");
    }

    #[test]
    fn a_flow_cookie_is_named_by_its_state_and_opens_only_under_that_name() {
        // The record is tagged by kind, so a sign-in flow cannot finish a
        // server flow; the verifier is only ever inside the sealed value.
        let keys = latchkey_core::vault::KeyRing::parse(
            &latchkey_core::vault::KeyRing::generate_line("k1"),
            None,
        )
        .unwrap();
        let state = random_token();
        let name = Connect::flow_cookie(&state);
        assert!(name.starts_with(FLOW_COOKIE) && name.len() == FLOW_COOKIE.len() + 16);
        assert!(!name.contains(&state));
        assert_ne!(name, Connect::flow_cookie(&random_token()));
        let f = SealedFlow {
            state: state.clone(),
            exp: 0,
            flow: Flow::Server {
                session: hex::sha256(b"s"),
                user: "alice".into(),
                gateway: "corp".into(),
                server: "crm".into(),
                request: None,
                pkce_verifier: "verifier-1".into(),
            },
        };
        let plain = serde_json::to_vec(&f).unwrap();
        let json = String::from_utf8(plain.clone()).unwrap();
        assert!(json.contains("\"kind\":\"server\""), "{json}");
        let sealed = keys.seal_value(&name, &plain).unwrap();
        assert!(!sealed.contains("verifier-1") && !sealed.contains("alice"));
        let back: SealedFlow =
            serde_json::from_slice(&keys.open_value(&name, &sealed).unwrap()).unwrap();
        assert!(matches!(back.flow, Flow::Server { .. }));
        // Moved into another flow's cookie, it does not open.
        let other = Connect::flow_cookie(&random_token());
        assert!(keys.open_value(&other, &sealed).is_none());
    }
}
