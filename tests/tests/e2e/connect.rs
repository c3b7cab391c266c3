//! The connect page end to end: a real Envoy with the Wasm filter, `latchkey
//! serve` with `[connect]`, the organisation's identity provider and a second
//! one as the downstream OAuth provider of an rmcp upstream that accepts only
//! its tokens, and a person in headless Chromium. The consent link a refused
//! call hands out is opened, the person signs in, authorises one server,
//! picks an identity they already have for another, and their own token
//! goes upstream; disconnecting revokes it. A link opened by someone else,
//! a declined authorisation, a reused and a tampered state each end on a
//! page that says so, with nothing stored.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use latchkey_e2e::client::INITIALIZE;
use latchkey_e2e::connect_client::{
    authorise, both, clears, csrf_in, flow_cookie, get, press, query_param, raw_client, set_cookie,
    sign_in, start_sign_in, with_param,
};
use latchkey_e2e::peers::{Idp, OauthMcp, code_in, jwt_claims, start_provider_and_upstream};
use latchkey_e2e::stack::LATCHKEY_HTTP;
use latchkey_e2e::{Browser, McpClient, Stack, StackOptions, post_json, scenario_dir};
use serde_json::{Value, json};

/// The audience the upstream `oauth-mcp` accepts (RFC 8707 `resource`).
const RESOURCE: &str = "https://crm.example.test/mcp";

struct Scenario {
    stack: Stack,
    provider: Idp,
    upstream: OauthMcp,
    /// Where the provider and the upstream log (the stack's folder is
    /// emptied when it starts).
    peers_dir: PathBuf,
}

impl Scenario {
    async fn start(name: &str) -> Result<Scenario> {
        let peers_dir = scenario_dir(&format!("{name}-peers"))?;
        let (provider, upstream) =
            start_provider_and_upstream(&peers_dir, env!("CARGO_BIN_EXE_oauth-mcp"), RESOURCE)?;
        let extra = format!(
            r#"
[connect]
public_url = "{LATCHKEY_HTTP}"
client_id = "latchkey-connect"
consent_ttl_secs = 600

[[servers]]
name = "crm"
url = "{upstream}"
auth = {{ type = "static_header", header = "authorization", prefix = "Bearer " }}

[servers.oauth]
authorization_endpoint = "{authorize}"
token_endpoint = "{token}"
revocation_endpoint = "{revoke}"
client_id = "latchkey"
scopes = ["crm.read"]
resource = "{RESOURCE}"
issuer = "{issuer}"
authorization_response_iss_parameter_supported = true

[[gateways.assignments]]
name = "crm"
server = "crm"
scheme = "per_user"
"#,
            upstream = upstream.url(),
            authorize = provider.authorize_url(),
            token = provider.token_url(),
            revoke = provider.revocation_url(),
            issuer = provider.issuer(),
        );
        let stack = Stack::start(
            name,
            StackOptions {
                extra_config: Some(extra),
                ..StackOptions::default()
            },
        )
        .await?;
        Ok(Scenario {
            stack,
            provider,
            upstream,
            peers_dir,
        })
    }

    fn http(&self) -> String {
        self.stack.replicas[0].http_url()
    }

    /// The connect link `user`'s first call to `assignment` is answered with.
    async fn consent_link(&self, assignment: &str, token: &str) -> Result<String> {
        let r = post_json(&self.stack.url(assignment), Some(token), INITIALIZE, &[]).await?;
        let prefix = format!("{}/connect/e2e?request=", self.http());
        r.body
            .split(|c: char| c.is_whitespace() || c == '"')
            .find(|w| w.starts_with(&prefix))
            .map(|w| w.trim_end_matches(['.', ',', ')']).to_string())
            .with_context(|| format!("no connect link in the answer: {} {}", r.status, r.body))
    }

    fn redis(&self) -> Result<redis::Connection> {
        Ok(redis::Client::open(self.stack.redis.url())?.get_connection()?)
    }

    /// The identities `owner` has.
    fn identities_of(&self, owner: &str) -> Result<Vec<String>> {
        let mut ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("latchkey:identities:owner:{owner}"))
            .query(&mut self.redis()?)?;
        ids.sort();
        Ok(ids)
    }

    /// `user`'s connection to gateway `e2e`, if any.
    fn connection(&self, user: &str) -> Result<Option<Value>> {
        let raw: Option<String> = redis::cmd("GET")
            .arg(format!("latchkey:connection:e2e:{user}"))
            .query(&mut self.redis()?)?;
        Ok(raw.map(|r| serde_json::from_str(&r)).transpose()?)
    }

    fn consent(&self, request: &str) -> Result<Value> {
        let raw: String = redis::cmd("GET")
            .arg(format!("latchkey:consent:{request}"))
            .query(&mut self.redis()?)?;
        Ok(serde_json::from_str(&raw)?)
    }

    /// Opens identity `id` with the stack's master key: its access and
    /// refresh tokens (remembered as secrets for the log scan).
    async fn open_identity(&self, id: &str) -> Result<(String, Option<String>)> {
        use latchkey_core::identity::{IdentitySecret, VaultRecord};
        use latchkey_core::vault::KeyRing;
        let config = latchkey_core::config::Config::load(&self.stack.config_path)?;
        let keys = KeyRing::from_config(&config.vault)?;
        let raw: String = redis::cmd("GET")
            .arg(format!("latchkey:identity:{id}"))
            .query(&mut self.redis()?)?;
        let record: VaultRecord = serde_json::from_str(&raw)?;
        match record.open(&keys)? {
            IdentitySecret::Oauth {
                access_token,
                refresh_token,
            } => {
                let access = access_token.expose().to_string();
                let refresh = refresh_token.map(|t| t.expose().to_string());
                self.stack.remember_secret(&access);
                if let Some(r) = &refresh {
                    self.stack.remember_secret(r);
                }
                Ok((access, refresh))
            }
            IdentitySecret::Static { .. } => bail!("identity {id} is not an OAuth identity"),
        }
    }

    /// Every lifecycle event `actor` caused, as `action target` lines.
    fn actions_by(&self, actor: &str) -> Result<Vec<String>> {
        Ok(self
            .stack
            .audit_events()?
            .into_iter()
            .filter(|e| e["event"] == "lifecycle" && e["actor"] == actor)
            .map(|e| {
                format!(
                    "{} {}",
                    e["action"].as_str().unwrap_or_default(),
                    e["target"].as_str().unwrap_or_default()
                )
            })
            .collect())
    }

    /// No secret of the run in the stack's logs, the peers' logs, the
    /// browser's artifacts, or the audit stream.
    fn assert_no_secret_anywhere(&self, secrets: &[String], test: &str) -> Result<()> {
        self.stack.assert_no_secret_in_logs()?;
        latchkey_e2e::secrets::scan_logs(&self.peers_dir, secrets)?;
        let artifacts = latchkey_e2e::paths::target_dir()
            .join("e2e-artifacts")
            .join(test);
        if artifacts.exists() {
            latchkey_e2e::secrets::scan_logs(&artifacts, secrets)?;
        }
        let audit = serde_json::to_string(&self.stack.audit_events()?)?;
        for s in secrets {
            assert!(
                !audit.contains(s.as_str()),
                "a secret is in the audit stream"
            );
        }
        Ok(())
    }
}

fn request_id(link: &str) -> String {
    link.split("request=")
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_connects_on_the_page_and_their_own_token_goes_upstream() -> Result<()> {
    let s = Scenario::start("connect_flow").await?;
    let stack = &s.stack;
    let alice = stack.token("alice").await?;

    // Alice already has an identity of her own for `whoami`.
    let pat = stack
        .create_own_identity("alice", "whoami", "whoami-alice")
        .await?;

    // Her first call to `crm` is answered with a link to the connect page.
    let link = s.consent_link("crm", &alice).await?;
    let request = request_id(&link);
    assert!(!link.contains("alice"), "{link}");

    let browser = Browser::new("connect_flow")?;
    browser
        .run(json!({"steps": [
            {"goto": link},
            // Signing in at the organisation's identity provider first.
            {"expect_text": "latchkey-connect asks to act on your behalf"},
            {"screenshot": "01-sign-in"},
            {"fill": "#username", "value": "alice"},
            {"click": "#sign-in"},
            {"expect_text": "Connect your accounts for e2e"},
            {"expect_text": "Your client needs an identity for crm"},
            {"screenshot": "02-connect-page"},
            // crm: authorise at its provider.
            {"click": "#authorise-crm"},
            {"expect_text": "latchkey asks to act on your behalf"},
            {"screenshot": "03-provider-sign-in"},
            {"fill": "#username", "value": "alice"},
            {"click": "#sign-in"},
            {"expect_text": "Connected crm."},
            {"screenshot": "04-crm-connected"},
            // whoami: the identity she already has.
            {"select": "#identity-whoami", "value": "whoami-alice"},
            {"click": "#use-whoami"},
            {"expect_text": "You're connected"},
            {"expect_text": "Go back to your client and retry"},
            {"expect_text": "whoami-alice"},
            {"screenshot": "05-connected"},
        ]}))
        .await?;

    // What was stored: a new private OAuth identity of hers on her connection.
    let connection = s.connection("alice")?.context("alice's connection")?;
    assert_eq!(connection["identities"]["whoami"], "whoami-alice");
    let crm_id = connection["identities"]["crm"]
        .as_str()
        .context("an identity for crm")?
        .to_string();
    assert!(crm_id.starts_with("crm-alice-"), "{crm_id}");
    assert!(s.identities_of("alice")?.contains(&crm_id));
    let (access, refresh) = s.open_identity(&crm_id).await?;
    assert_eq!(jwt_claims(&access)?["sub"], "alice");
    assert_eq!(jwt_claims(&access)?["aud"], RESOURCE);
    let refresh = refresh.context("the provider issued a refresh token")?;
    assert!(
        s.consent(&request)?["completed_at"].is_string(),
        "the consent request is marked completed"
    );

    // The MCP calls go through now, each with alice's own credential.
    let client = McpClient::connect(&stack.url("crm"), &alice).await?;
    let result = client.call_tool("whoami", json!({})).await?;
    assert_eq!(McpClient::text(&result), "alice");
    client.close().await?;
    assert!(
        s.upstream
            .subjects()
            .await?
            .iter()
            .all(|sub| sub == "alice")
    );
    let client = McpClient::connect(&stack.url("whoami-mine"), &alice).await?;
    client.call_tool("whoami", json!({})).await?;
    client.close().await?;
    assert!(
        stack
            .echo
            .seen_authorizations()
            .await?
            .contains(&format!("Bearer {pat}"))
    );

    // Disconnecting crm (in a new browser: signing in again) revokes and deletes it.
    let before = s.provider.stats().await?.revocations;
    browser
        .run(json!({"steps": [
            {"goto": format!("{}/connect/e2e", s.http())},
            {"fill": "#username", "value": "alice"},
            {"click": "#sign-in"},
            {"expect_text": "You're connected"},
            {"click": "#disconnect-crm"},
            {"expect_text": "Disconnected crm"},
            {"expect_text": "The provider revoked its tokens"},
            {"screenshot": "06-disconnected"},
        ]}))
        .await?;
    let after = s.provider.stats().await?;
    assert!(after.revocations >= before + 2, "{before} -> {after:?}");
    let (status, answer) = s
        .provider
        .post_token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", "latchkey"),
        ])
        .await?;
    assert_eq!(status, 400, "the refresh token was revoked: {answer}");
    assert!(!s.identities_of("alice")?.contains(&crm_id));
    let connection = s.connection("alice")?.context("alice's connection")?;
    assert!(
        connection["identities"].get("crm").is_none(),
        "{connection}"
    );
    assert_eq!(connection["identities"]["whoami"], "whoami-alice");
    // The next call asks for consent again.
    s.consent_link("crm", &alice).await?;

    // Lifecycle events name alice as the actor.
    let actions = s.actions_by("alice")?;
    for want in [
        format!("identity.create {crm_id}"),
        "connection.use_identity e2e/alice".to_string(),
        "connection.disconnect e2e/alice".to_string(),
        format!("identity.delete {crm_id}"),
    ] {
        assert!(actions.contains(&want), "{want} not in {actions:?}");
    }
    s.assert_no_secret_anywhere(&[access, refresh, pat], "connect_flow")?;
    Ok(())
}

/// A client that follows no redirect and keeps cookies by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn someone_else_declined_reused_and_tampered_end_on_a_page_and_store_nothing() -> Result<()> {
    let s = Scenario::start("connect_errors").await?;
    let stack = &s.stack;
    let alice = stack.token("alice").await?;
    let link = s.consent_link("crm", &alice).await?;
    let request = request_id(&link);

    // Bob opens the link made for alice; then alice declines at the provider.
    let browser = Browser::new("connect_errors")?;
    browser
        .run(json!({"steps": [
            {"context": "bob"},
            {"goto": link},
            {"fill": "#username", "value": "bob"},
            {"click": "#sign-in"},
            {"expect_text": "This link was made for someone else"},
            {"expect_text": "Nothing was connected to anyone"},
            {"screenshot": "01-someone-else"},
            {"context": "alice"},
            {"goto": link},
            {"fill": "#username", "value": "alice"},
            {"click": "#sign-in"},
            {"expect_text": "Connect your accounts for e2e"},
            {"click": "#authorise-crm"},
            {"expect_text": "latchkey asks to act on your behalf"},
            {"click": "#deny"},
            {"expect_text": "You declined"},
            {"expect_text": "nothing was connected"},
            {"screenshot": "02-declined"},
        ]}))
        .await?;
    for user in ["alice", "bob"] {
        assert!(s.identities_of(user)?.is_empty(), "{user} has no identity");
        assert!(s.connection(user)?.is_none(), "{user} has no connection");
    }
    assert!(s.consent(&request)?["completed_at"].is_null());
    assert_eq!(s.provider.stats().await?.authorization_code, 0);

    let c = raw_client()?;
    let http = s.http();
    let session = sign_in(&c, &format!("{http}/connect/e2e"), "alice").await?;
    let bob_session = sign_in(&c, &format!("{http}/connect/e2e"), "bob").await?;

    // Codes are secrets too: none may show up in a log or an event.
    let mut codes = Vec::new();
    // A state that was changed is not one Latchkey issued.
    let (callback, flow) = authorise(&c, &http, &session, "crm", "alice").await?;
    codes.push(code_in(&callback)?);
    // The callback comes back to crm's own redirect URI, naming crm's issuer.
    assert!(
        callback.starts_with(&format!("{http}/connect/callback/crm?")),
        "{callback}"
    );
    assert_eq!(
        query_param(&callback, "iss").as_deref(),
        Some(s.provider.issuer().as_str()),
        "{callback}"
    );
    let state = callback
        .split("state=")
        .nth(1)
        .and_then(|v| v.split('&').next())
        .context("a state in the callback")?
        .to_string();
    let tampered = callback.replace(&state, &format!("{state}x"));
    let (status, body) = get(&c, &tampered, &both(&session, &flow)).await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("has expired or was already used"), "{body}");
    assert!(body.contains("Nothing was stored"), "{body}");
    assert!(s.identities_of("alice")?.is_empty());

    // Another browser (without the flow's cookie) cannot finish alice's
    // authorisation; nor can another session, even holding that cookie.
    let (status, body) = get(&c, &callback, &bob_session).await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("has expired or was already used"), "{body}");
    let (status, body) = get(&c, &callback, &both(&bob_session, &flow)).await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("State mismatch"), "{body}");
    assert!(s.identities_of("alice")?.is_empty());
    assert!(s.identities_of("bob")?.is_empty());
    assert!(s.connection("bob")?.is_none());

    // The right session finishes it once, and the answer removes the flow
    // cookie; the same state again is refused, and so is a replay by someone
    // who kept a copy of the cookie (the provider's code is single use).
    let (callback, flow) = authorise(&c, &http, &session, "crm", "alice").await?;
    codes.push(code_in(&callback)?);
    let r = c
        .get(&callback)
        .header("cookie", both(&session, &flow))
        .send()
        .await?;
    assert_eq!(r.status(), 303);
    assert!(clears(&r, &flow), "the flow cookie is removed");
    assert_eq!(s.identities_of("alice")?.len(), 1);
    let (status, body) = get(&c, &callback, &session).await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("has expired or was already used"), "{body}");
    let (status, body) = get(&c, &callback, &both(&session, &flow)).await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("This code was already used"), "{body}");
    assert!(body.contains("Nothing was stored"), "{body}");
    assert_eq!(s.identities_of("alice")?.len(), 1);
    assert_eq!(s.provider.stats().await?.authorization_code, 1);

    // That authorisation did not name the request; opening the request's
    // link now shows crm connected and completes the request.
    assert!(s.consent(&request)?["completed_at"].is_null());
    let (status, body) = get(&c, &link, &session).await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("connected with"), "{body}");
    assert!(s.consent(&request)?["completed_at"].is_string());

    // A form without the session's CSRF token changes nothing.
    let r = c
        .post(format!("{http}/connect/e2e/disconnect"))
        .header("cookie", &session)
        .form(&[("csrf", "forged"), ("server", "crm")])
        .send()
        .await?;
    assert_eq!(r.status(), 403);
    assert_eq!(s.identities_of("alice")?.len(), 1);

    let id = s.identities_of("alice")?.remove(0);
    let (access, refresh) = s.open_identity(&id).await?;
    let mut secrets = vec![access];
    secrets.extend(refresh);

    // An identity waiting for consent again (its refresh token stopped
    // working) gets the new tokens under the same id, as its next version.
    let key = format!("latchkey:identity:{id}");
    let raw: String = redis::cmd("GET").arg(&key).query(&mut s.redis()?)?;
    let mut record: Value = serde_json::from_str(&raw)?;
    assert_eq!(record["version"], 1);
    record["consent_required"] = json!(true);
    redis::cmd("SET")
        .arg(&key)
        .arg(record.to_string())
        .query::<()>(&mut s.redis()?)?;
    let page = get(&c, &format!("{http}/connect/e2e"), &session).await?.1;
    assert!(page.contains("needs authorising again"), "{page}");
    let (callback, flow) = authorise(&c, &http, &session, "crm", "alice").await?;
    codes.push(code_in(&callback)?);
    let (status, body) = get(&c, &callback, &both(&session, &flow)).await?;
    assert_eq!(status, 303, "{body}");
    assert_eq!(s.identities_of("alice")?, vec![id.clone()]);
    let raw: String = redis::cmd("GET").arg(&key).query(&mut s.redis()?)?;
    let record: Value = serde_json::from_str(&raw)?;
    assert_eq!(record["version"], 2, "{record}");
    assert!(record.get("consent_required").is_none(), "{record}");
    let (access, refresh) = s.open_identity(&id).await?;
    secrets.push(access);
    secrets.extend(refresh);

    // Signing out: a forged form changes nothing; the real one ends the
    // session in Redis and in the browser, and what was connected stays.
    let sessions = |s: &Scenario| -> Result<usize> {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("latchkey:connect:session:*")
            .query(&mut s.redis()?)?;
        Ok(keys.len())
    };
    let before = sessions(&s)?;
    let r = c
        .post(format!("{http}/connect/e2e/signout"))
        .header("cookie", &session)
        .form(&[("csrf", "forged")])
        .send()
        .await?;
    assert_eq!(r.status(), 403);
    assert_eq!(sessions(&s)?, before);
    let page = get(&c, &format!("{http}/connect/e2e"), &session).await?.1;
    assert!(page.contains("id=\"sign-out\""), "{page}");
    let csrf = csrf_in(&page)?;
    let r = c
        .post(format!("{http}/connect/e2e/signout"))
        .header("cookie", &session)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let cleared = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.starts_with("latchkey_connect=;") && v.contains("Max-Age=0"));
    assert!(cleared, "the session cookie is removed");
    assert!(r.text().await?.contains("signed out"));
    assert_eq!(sessions(&s)?, before - 1);
    let (status, _) = get(&c, &format!("{http}/connect/e2e"), &session).await?;
    assert_eq!(status, 303, "the old cookie no longer signs anyone in");
    assert_eq!(s.identities_of("alice")?, vec![id.clone()]);

    for cookie in [&session, &bob_session] {
        let value = cookie.split_once('=').map(|(_, v)| v).unwrap_or_default();
        stack.remember_secret(value);
        secrets.push(value.to_string());
    }
    for code in codes {
        stack.remember_secret(&code);
        secrets.push(code);
    }
    s.assert_no_secret_anywhere(&secrets, "connect_errors")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_link_and_a_provider_that_is_down_end_on_a_page_and_store_nothing() -> Result<()>
{
    let mut s = Scenario::start("connect_down").await?;
    let c = raw_client()?;
    let http = s.http();
    let session = sign_in(&c, &format!("{http}/connect/e2e"), "alice").await?;

    // A link whose consent request Redis no longer has (expired, or never issued).
    let (status, body) = get(
        &c,
        &format!("{http}/connect/e2e?request=0123456789abcdef0123456789abcdef"),
        &session,
    )
    .await?;
    assert_eq!(status, 410, "{body}");
    assert!(body.contains("This link has expired"), "{body}");

    // The provider goes down between the consent screen and the code exchange.
    let (callback, flow) = authorise(&c, &http, &session, "crm", "alice").await?;
    let code = code_in(&callback)?;
    s.provider
        .process
        .as_mut()
        .context("the provider was started here")?
        .stop();
    let (status, body) = get(&c, &callback, &both(&session, &flow)).await?;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("The provider is down"), "{body}");
    assert!(body.contains("Nothing was stored"), "{body}");
    assert!(s.identities_of("alice")?.is_empty());
    assert!(s.connection("alice")?.is_none());
    let value = session.split_once('=').map(|(_, v)| v).unwrap_or_default();
    s.stack.remember_secret(value);
    s.stack.remember_secret(&code);
    s.assert_no_secret_anywhere(&[value.to_string(), code], "connect_down")?;
    Ok(())
}

/// Every key in the scenario's Redis.
fn redis_keys(s: &Scenario) -> Result<std::collections::BTreeSet<String>> {
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut s.redis()?)?;
    Ok(keys.into_iter().collect())
}

/// The connect page sessions in Redis.
fn sessions(s: &Scenario) -> Result<Vec<String>> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("latchkey:connect:session:*")
        .query(&mut s.redis()?)?;
    Ok(keys)
}

/// Whether `r` sets a connect page session cookie.
fn sets_session(r: &reqwest::Response) -> bool {
    set_cookie(r, "latchkey_connect").is_ok_and(|c| c != "latchkey_connect=")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_visits_store_nothing_and_a_planted_session_cookie_is_replaced_at_sign_in()
-> Result<()> {
    let s = Scenario::start("connect_anonymous").await?;
    let c = raw_client()?;
    let http = s.http();
    let page = format!("{http}/connect/e2e");
    let before = redis_keys(&s)?;

    // Visits without a session: plain, with a consent request id, with a
    // made-up session cookie; each is sent to sign in with a flow cookie of
    // bounded size, and none leaves anything on the server.
    let planted = latchkey_control::connect::random_token();
    for i in 0..150 {
        let (url, cookie) = match i % 3 {
            0 => (page.clone(), String::new()),
            1 => (
                format!("{page}?request=0123456789abcdef0123456789abcdef"),
                String::new(),
            ),
            _ => (page.clone(), format!("latchkey_connect={planted}")),
        };
        let r = c.get(&url).header("cookie", cookie).send().await?;
        assert_eq!(r.status(), 303, "visit {i}");
        let flow = flow_cookie(&r)?;
        assert!(flow.len() < 1024, "a flow cookie is {} bytes", flow.len());
        assert!(!sets_session(&r));
    }
    // Callbacks with states nobody issued, at every redirect URI.
    for url in [
        format!("{http}/connect/callback?state=made-up&code=x"),
        format!("{http}/connect/callback/crm?state=made-up&code=x"),
        format!("{http}/connect/callback/nope?state=made-up&code=x"),
    ] {
        let r = c
            .get(&url)
            .header("cookie", "latchkey_flow_0123456789abcdef=forged")
            .send()
            .await?;
        assert_eq!(r.status(), 400, "{url}");
    }
    let after = redis_keys(&s)?;
    assert_eq!(
        after.difference(&before).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "anonymous visits wrote nothing to Redis"
    );

    // Positive control, read the same way: a person signing in in a
    // browser that carries a planted session cookie adds exactly one key,
    // their session, under a value Latchkey minted; the planted one
    // granted nothing before and grants nothing after.
    let browser = Browser::new("connect_anonymous")?;
    let steps = browser
        .run(json!({"steps": [
            {"set_cookie": {"name": "latchkey_connect", "value": planted, "url": page}},
            {"goto": page},
            {"expect_text": "latchkey-connect asks to act on your behalf"},
            {"fill": "#username", "value": "alice"},
            {"click": "#sign-in"},
            {"expect_text": "Connect your accounts for e2e"},
            {"cookie_digest": "latchkey_connect"},
        ]}))
        .await?;
    // The planted cookie (under its own, narrower path) is still in the
    // jar and sent first; it did not shadow the minted one.
    let digests = steps
        .last()
        .and_then(|r| r.text.clone())
        .context("the session cookies' digests")?;
    let digest = |v: &str| latchkey_core::hex::sha256(v.as_bytes());
    let planted_digest = digest(&planted);
    let minted: Vec<&str> = digests
        .split(',')
        .filter(|d| !d.is_empty() && *d != planted_digest)
        .collect();
    assert_eq!(minted.len(), 1, "one session cookie minted: {digests}");
    let minted = minted[0].to_string();
    let after = redis_keys(&s)?;
    assert_eq!(
        after.difference(&before).cloned().collect::<Vec<_>>(),
        vec![format!("latchkey:connect:session:{minted}")],
        "signing in stored exactly the session the browser now holds"
    );
    let (status, _) = get(&c, &page, &format!("latchkey_connect={planted}")).await?;
    assert_eq!(status, 303, "the planted value signs nobody in");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_from_another_provider_is_refused_and_its_own_provider_connects() -> Result<()> {
    let s = Scenario::start("connect_mixup").await?;
    let c = raw_client()?;
    let http = s.http();
    let session = sign_in(&c, &format!("{http}/connect/e2e"), "alice").await?;
    let (callback, flow) = authorise(&c, &http, &session, "crm", "alice").await?;
    let cookies = both(&session, &flow);
    let other_issuer = s.stack.idp.issuer();
    let wrong = |status: u16, body: &str, why: &str| {
        assert_eq!(status, 400, "{body}");
        assert!(
            body.contains("This answer came from the wrong provider"),
            "{body}"
        );
        assert!(body.contains(why), "{why}: {body}");
        assert!(body.contains("nothing was stored"), "{body}");
    };

    // The answer names another issuer (RFC 9207), or none though crm's
    // provider always names itself.
    let (status, body) = get(
        &c,
        &with_param(&callback, "iss", Some(&other_issuer))?,
        &cookies,
    )
    .await?;
    wrong(status, &body, "names another issuer");
    let (status, body) = get(&c, &with_param(&callback, "iss", None)?, &cookies).await?;
    wrong(status, &body, "does not say which issuer sent it");
    // The answer arrives at another provider's redirect URI: another
    // server's, or the sign-in's.
    let elsewhere = callback.replace("/connect/callback/crm?", "/connect/callback/whoami?");
    let (status, body) = get(&c, &elsewhere, &cookies).await?;
    wrong(
        status,
        &body,
        "came back to the redirect address of server whoami",
    );
    let at_sign_in = callback.replace("/connect/callback/crm?", "/connect/callback?");
    let (status, body) = get(&c, &at_sign_in, &cookies).await?;
    wrong(status, &body, "came back to the sign-in address");
    // A sign-in answer delivered to crm's redirect URI.
    let (sign_in_callback, sign_in_flow) =
        start_sign_in(&c, &format!("{http}/connect/e2e"), "alice").await?;
    let (status, body) = get(
        &c,
        &sign_in_callback.replace("/connect/callback?", "/connect/callback/crm?"),
        &sign_in_flow,
    )
    .await?;
    wrong(
        status,
        &body,
        "came back to the redirect address of server crm",
    );
    // The provider itself sends a wrong `iss`.
    s.provider.misbehave(&[("iss", &other_issuer)]).await?;
    let (sent_wrong, sent_wrong_flow) = authorise(&c, &http, &session, "crm", "alice").await?;
    s.provider.misbehave(&[]).await?;
    let (status, body) = get(&c, &sent_wrong, &both(&session, &sent_wrong_flow)).await?;
    wrong(status, &body, "names another issuer");

    // None of those reached the token endpoint or stored anything.
    assert_eq!(s.provider.stats().await?.authorization_code, 0);
    assert_eq!(s.provider.stats().await?.invalid_grant, 0);
    assert!(s.identities_of("alice")?.is_empty());
    assert!(s.connection("alice")?.is_none());

    // The same answer, unaltered, at crm's own redirect URI connects crm.
    let (status, body) = get(&c, &callback, &cookies).await?;
    assert_eq!(status, 303, "{body}");
    assert_eq!(s.provider.stats().await?.authorization_code, 1);
    assert_eq!(s.identities_of("alice")?.len(), 1);
    let connection = s.connection("alice")?.context("alice's connection")?;
    assert!(connection["identities"]["crm"].is_string(), "{connection}");
    let mut secrets = vec![code_in(&callback)?, code_in(&sent_wrong)?];
    let value = session.split_once('=').map(|(_, v)| v).unwrap_or_default();
    secrets.push(value.to_string());
    for secret in &secrets {
        s.stack.remember_secret(secret);
    }
    s.assert_no_secret_anywhere(&secrets, "connect_mixup")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_provider_that_does_not_play_along_signs_nobody_in() -> Result<()> {
    let s = Scenario::start("connect_idp_misbehaves").await?;
    let c = raw_client()?;
    let page = format!("{}/connect/e2e", s.http());
    let idp = &s.stack.idp;
    let other_issuer = s.provider.issuer();
    let mut codes = Vec::new();

    // Each misbehaviour ends on a page that says what went wrong; no
    // session is stored or handed to the browser.
    type Switches<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Switches, u16, &str); 4] = [
        (&[("wrong_nonce", "1")], 400, "nonce mismatch"),
        (
            &[("wrong_id_token_aud", "1")],
            400,
            "Sign-in could not be verified",
        ),
        (&[("iss", &other_issuer)], 400, "names another issuer"),
        (&[("iss", "omit")], 400, "does not say which issuer sent it"),
    ];
    for (switches, want_status, want_text) in cases {
        idp.misbehave(switches).await?;
        let (callback, flow) = start_sign_in(&c, &page, "alice").await?;
        codes.push(code_in(&callback)?);
        let r = c.get(&callback).header("cookie", &flow).send().await?;
        let status = r.status().as_u16();
        assert!(!sets_session(&r), "{switches:?}");
        let body = r.text().await?;
        assert_eq!(status, want_status, "{switches:?}: {body}");
        assert!(body.contains(want_text), "{switches:?}: {body}");
        assert!(sessions(&s)?.is_empty(), "{switches:?}");
    }

    // PKCE: with a provider that insists on S256, sign-in works (Latchkey
    // sends it); a code issued to one sign-in and injected into another's
    // callback is refused, because it was bound to the first one's verifier.
    idp.misbehave(&[("require_pkce", "1")]).await?;
    let (victim_callback, victim_flow) = start_sign_in(&c, &page, "alice").await?;
    let (attacker_callback, _) = start_sign_in(&c, &page, "mallory").await?;
    let injected = with_param(
        &victim_callback,
        "code",
        Some(&code_in(&attacker_callback)?),
    )?;
    codes.push(code_in(&attacker_callback)?);
    codes.push(code_in(&victim_callback)?);
    let before = idp.stats().await?.invalid_grant;
    let r = c
        .get(&injected)
        .header("cookie", &victim_flow)
        .send()
        .await?;
    assert!(!sets_session(&r));
    let status = r.status().as_u16();
    let body = r.text().await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Nothing was stored"), "{body}");
    assert_eq!(
        idp.stats().await?.invalid_grant,
        before + 1,
        "the provider refused the injected code's verifier"
    );
    assert!(sessions(&s)?.is_empty());

    // The same provider, playing along (but still insisting on PKCE): the
    // person is signed in, with exactly one session.
    let session = sign_in(&c, &page, "alice").await?;
    assert_eq!(sessions(&s)?.len(), 1);
    let (status, body) = get(&c, &page, &session).await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Connect your accounts for e2e"), "{body}");
    idp.misbehave(&[]).await?;

    let value = session.split_once('=').map(|(_, v)| v).unwrap_or_default();
    let mut secrets = codes;
    secrets.push(value.to_string());
    for secret in &secrets {
        s.stack.remember_secret(secret);
    }
    s.assert_no_secret_anywhere(&secrets, "connect_idp_misbehaves")?;
    Ok(())
}

/// Disconnecting while the provider's revocation endpoint is down: the
/// tokens are deleted here all the same (they are never used again), and
/// the page says the revocation failed and where to revoke by hand. The
/// provider's refresh grant still honouring the token shows the revocation
/// really failed; the page's wording and the missing identity show what
/// Latchkey did about it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_whose_revocation_fails_still_deletes_the_tokens_here_and_says_so()
-> Result<()> {
    let s = Scenario::start("connect_revocation_fails").await?;
    let c = raw_client()?;
    let http = s.http();
    let session = sign_in(&c, &format!("{http}/connect/e2e"), "alice").await?;
    let (callback, flow) = authorise(&c, &http, &session, "crm", "alice").await?;
    let (status, body) = get(&c, &callback, &both(&session, &flow)).await?;
    assert_eq!(status, 303, "{body}");
    let connection = s.connection("alice")?.context("alice's connection")?;
    let crm_id = connection["identities"]["crm"]
        .as_str()
        .context("an identity for crm")?
        .to_string();
    assert!(s.identities_of("alice")?.contains(&crm_id));
    let (access, refresh) = s.open_identity(&crm_id).await?;
    let refresh = refresh.context("the provider issued a refresh token")?;
    s.stack.remember_secret(&access);
    s.stack.remember_secret(&refresh);

    s.provider.misbehave(&[("revoke_fails", "1")]).await?;
    let before = s.provider.stats().await?.revocations;
    let r = press(&c, &http, &session, "disconnect", "crm").await?;
    let status = r.status().as_u16();
    let body = r.text().await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Disconnected (revocation failed)"), "{body}");
    assert!(body.contains("Latchkey deleted them anyway"), "{body}");
    assert!(
        body.contains("revoke Latchkey&#39;s access in your account settings"),
        "{body}"
    );
    // Both tokens were offered to the provider, which refused both.
    assert!(
        s.provider.stats().await?.revocations >= before + 2,
        "the provider was asked to revoke"
    );
    s.provider.misbehave(&[]).await?;

    // Deleted here: no identity, nothing on the connection.
    assert!(!s.identities_of("alice")?.contains(&crm_id));
    let connection = s.connection("alice")?.context("alice's connection")?;
    assert!(
        connection["identities"].get("crm").is_none(),
        "{connection}"
    );
    // Not revoked there: the refresh token still works at the provider,
    // which is why the page tells the person to revoke it by hand.
    let (status, answer) = s
        .provider
        .post_token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", "latchkey"),
        ])
        .await?;
    assert_eq!(status, 200, "the revocation failed: {answer}");
    if let Some(rotated) = answer["refresh_token"].as_str() {
        s.stack.remember_secret(rotated);
    }
    if let Some(issued) = answer["access_token"].as_str() {
        s.stack.remember_secret(issued);
    }
    let value = session.split_once('=').map(|(_, v)| v).unwrap_or_default();
    s.assert_no_secret_anywhere(
        &[access, refresh, value.to_string()],
        "connect_revocation_fails",
    )?;
    Ok(())
}
