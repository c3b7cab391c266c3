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

[[gateways.assignments]]
name = "crm"
server = "crm"
scheme = "per_user"
"#,
            upstream = upstream.url(),
            authorize = provider.authorize_url(),
            token = provider.token_url(),
            revoke = provider.revocation_url(),
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
        use latchkey_authz::identity::{IdentitySecret, VaultRecord};
        use latchkey_authz::vault::KeyRing;
        let config = latchkey_authz::config::Config::load(&self.stack.config_path)?;
        let keys = KeyRing::from_config(&config.vault)?;
        let raw: String = redis::cmd("GET")
            .arg(format!("latchkey:identity:{id}"))
            .query(&mut self.redis()?)?;
        let record: VaultRecord = serde_json::from_str(&raw)?;
        match keys.open_identity(&record)? {
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
fn raw_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

fn location(r: &reqwest::Response) -> Result<String> {
    Ok(r.headers()
        .get("location")
        .context("a Location header")?
        .to_str()?
        .to_string())
}

/// The `name=value` of cookie `name` set by `r`.
fn set_cookie(r: &reqwest::Response, name: &str) -> Result<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_string)
        .with_context(|| format!("no {name} cookie set"))
}

/// Signs `login` in on the connect page without a browser; the session cookie.
async fn sign_in(c: &reqwest::Client, page: &str, login: &str) -> Result<String> {
    let r = c.get(page).send().await?;
    assert_eq!(r.status(), 303);
    let signin = set_cookie(&r, "latchkey_connect_signin")?;
    let r = c
        .get(format!("{}&login={login}", location(&r)?))
        .send()
        .await?;
    assert_eq!(r.status(), 302);
    let r = c
        .get(location(&r)?)
        .header("cookie", &signin)
        .send()
        .await?;
    assert_eq!(r.status(), 303);
    set_cookie(&r, "latchkey_connect")
}

/// Starts authorising `server` with `session`; the provider's redirect back
/// (with a code and the state) after `login` signed in there.
async fn authorise(
    c: &reqwest::Client,
    http: &str,
    session: &str,
    server: &str,
    login: &str,
) -> Result<String> {
    let page = c
        .get(format!("{http}/connect/e2e"))
        .header("cookie", session)
        .send()
        .await?
        .text()
        .await?;
    let csrf = csrf_in(&page)?;
    let r = c
        .post(format!("{http}/connect/e2e/authorise"))
        .header("cookie", session)
        .form(&[("csrf", csrf.as_str()), ("server", server)])
        .send()
        .await?;
    assert_eq!(r.status(), 303);
    let r = c
        .get(format!("{}&login={login}", location(&r)?))
        .send()
        .await?;
    assert_eq!(r.status(), 302);
    location(&r)
}

/// The CSRF token of the connect page's forms.
fn csrf_in(page: &str) -> Result<String> {
    Ok(page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("a CSRF token in the page")?
        .to_string())
}

async fn get(c: &reqwest::Client, url: &str, cookie: &str) -> Result<(u16, String)> {
    let r = c.get(url).header("cookie", cookie).send().await?;
    Ok((r.status().as_u16(), r.text().await?))
}

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
    let callback = authorise(&c, &http, &session, "crm", "alice").await?;
    codes.push(code_in(&callback)?);
    let state = callback
        .split("state=")
        .nth(1)
        .and_then(|v| v.split('&').next())
        .context("a state in the callback")?
        .to_string();
    let tampered = callback.replace(&state, &format!("{state}x"));
    let (status, body) = get(&c, &tampered, &session).await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("has expired or was already used"), "{body}");
    assert!(body.contains("Nothing was stored"), "{body}");
    assert!(s.identities_of("alice")?.is_empty());

    // Another session (bob's) cannot finish alice's authorisation.
    let (status, body) = get(&c, &callback, &bob_session).await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("State mismatch"), "{body}");
    assert!(s.identities_of("alice")?.is_empty());
    assert!(s.identities_of("bob")?.is_empty());
    assert!(s.connection("bob")?.is_none());

    // The right session finishes it once; the same state again is refused.
    let callback = authorise(&c, &http, &session, "crm", "alice").await?;
    codes.push(code_in(&callback)?);
    let (status, body) = get(&c, &callback, &session).await?;
    assert_eq!(status, 303, "{body}");
    assert_eq!(s.identities_of("alice")?.len(), 1);
    let (status, body) = get(&c, &callback, &session).await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("has expired or was already used"), "{body}");
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
    let callback = authorise(&c, &http, &session, "crm", "alice").await?;
    codes.push(code_in(&callback)?);
    let (status, body) = get(&c, &callback, &session).await?;
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
    let callback = authorise(&c, &http, &session, "crm", "alice").await?;
    let code = code_in(&callback)?;
    s.provider
        .process
        .as_mut()
        .context("the provider was started here")?
        .stop();
    let (status, body) = get(&c, &callback, &session).await?;
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
