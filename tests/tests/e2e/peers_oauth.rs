//! Proves the OAuth test peers with neither Envoy nor Latchkey: a person
//! signs in at a downstream OAuth provider (`idp.mjs`) in a real headless
//! Chromium, the authorization code (+ PKCE S256) is exchanged, and the
//! `oauth-mcp` upstream accepts that provider's token and reports who it
//! belongs to, while refusing the organisation IdP's token. Codes are single
//! use, refresh tokens rotate, revocation (RFC 7009 and "the person revoked
//! the app") makes refresh fail, and the provider's counters say exactly
//! what happened. Screenshots land in `target/e2e-artifacts/peers_oauth/`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use axum::extract::{Query, State};
use axum::response::Html;
use latchkey_e2e::peers::CodeFlow;
use latchkey_e2e::{
    Browser, Idp, IdpOptions, IdpStats, McpClient, OauthMcp, TokenRequest, jwt_claims, pkce_pair,
    post_json, scenario_dir, secrets_scan, sign_in_directly,
};
use serde_json::{Value, json};

const CLIENT_ID: &str = "latchkey-connect";
const RESOURCE: &str = "https://tickets.example/mcp";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

type Callbacks = Arc<Mutex<Vec<HashMap<String, String>>>>;

/// A tiny redirect target: remembers every query it got and shows a page
/// that says what came back (never the code itself).
async fn callback(
    State(seen): State<Callbacks>,
    Query(q): Query<HashMap<String, String>>,
) -> Html<String> {
    let page = match (q.get("code"), q.get("error")) {
        (Some(_), _) => format!(
            "code received for state {}",
            q.get("state").map_or("", String::as_str)
        ),
        (None, Some(e)) => format!("error {e}"),
        (None, None) => "nothing".to_string(),
    };
    seen.lock().unwrap_or_else(|e| e.into_inner()).push(q);
    Html(format!(
        "<!doctype html><title>callback</title><p>{page}</p>"
    ))
}

fn authorize_url(idp: &Idp, redirect_uri: &str, state: &str, challenge: &str) -> Result<String> {
    Ok(reqwest::Url::parse_with_params(
        &idp.authorize_url(),
        [
            ("response_type", "code"),
            ("client_id", CLIENT_ID),
            ("redirect_uri", redirect_uri),
            ("scope", "tickets:read"),
            ("state", state),
            ("resource", RESOURCE),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ],
    )?
    .to_string())
}

fn callback_for(seen: &Callbacks, state: &str) -> Result<HashMap<String, String>> {
    seen.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|q| q.get("state").map(String::as_str) == Some(state))
        .cloned()
        .with_context(|| format!("no callback with state {state}"))
}

fn field(reply: &Value, name: &str) -> Result<String> {
    reply[name]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("token response without {name}: keys {:?}", keys(reply)))
}

/// The names in a token response (never the values, which are secrets).
fn keys(reply: &Value) -> Vec<String> {
    reply
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// POSTs a token request, answering the status and the JSON reply.
async fn token_request(idp: &Idp, form: &[(&str, String)]) -> Result<(u16, Value)> {
    let refs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    idp.post_token(&refs).await
}

fn code_exchange(code: &str, verifier: &str, redirect_uri: &str) -> Vec<(&'static str, String)> {
    vec![
        ("grant_type", "authorization_code".into()),
        ("code", code.into()),
        ("code_verifier", verifier.into()),
        ("client_id", CLIENT_ID.into()),
        ("redirect_uri", redirect_uri.into()),
    ]
}

fn refresh_request(token: &str) -> Vec<(&'static str, String)> {
    vec![
        ("grant_type", "refresh_token".into()),
        ("refresh_token", token.into()),
        ("client_id", CLIENT_ID.into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_peers_sign_in_exchange_refresh_revoke() -> Result<()> {
    let dir = scenario_dir("peers_oauth")?;
    let org = Idp::start_with(
        &dir,
        IdpOptions {
            name: Some("org-idp".into()),
            ..IdpOptions::default()
        },
    )?;
    let provider = Idp::start_with(
        &dir,
        IdpOptions {
            name: Some("provider".into()),
            ..IdpOptions::default()
        },
    )?;
    let upstream = OauthMcp::start_bin(
        &dir,
        env!("CARGO_BIN_EXE_oauth-mcp"),
        &provider.issuer(),
        &provider.jwks_uri(),
        RESOURCE,
    )?;

    // The redirect target, on a port of its own.
    let callbacks: Callbacks = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let redirect_uri = format!("http://{}/callback", listener.local_addr()?);
    let app = axum::Router::new()
        .route("/callback", axum::routing::get(callback))
        .with_state(callbacks.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    // Alice signs in and consents; Bob (another cookie jar) first declines,
    // then signs in too.
    let (alice_verifier, alice_challenge) = pkce_pair();
    let (bob_verifier, bob_challenge) = pkce_pair();
    let browser = Browser::new("peers_oauth")?;
    let steps = browser
        .run(json!({"steps": [
            {"goto": authorize_url(&provider, &redirect_uri, "st-alice", &alice_challenge)?},
            {"expect_text": "Sign in"},
            {"screenshot": "provider-sign-in"},
            {"fill": "#username", "value": "alice"},
            {"click": "#sign-in"},
            {"expect_url_prefix": format!("{redirect_uri}?code=")},
            {"expect_text": "code received for state st-alice"},
            {"screenshot": "callback-alice"},
            {"context": "bob"},
            {"goto": authorize_url(&provider, &redirect_uri, "st-bob-no", &bob_challenge)?},
            {"click": "#deny"},
            {"expect_url_prefix": format!("{redirect_uri}?error=access_denied")},
            {"expect_text": "error access_denied"},
            {"goto": authorize_url(&provider, &redirect_uri, "st-bob", &bob_challenge)?},
            {"fill": "#username", "value": "bob"},
            {"click": "#sign-in"},
            {"expect_text": "code received for state st-bob"},
        ]}))
        .await?;
    assert!(steps.iter().all(|s| s.ok), "{steps:?}");
    assert_eq!(steps[0].status, Some(200), "{steps:?}");
    assert!(
        steps[5].url.contains("code=REDACTED") && steps[5].url.contains("state=st-alice"),
        "the code is never printed: {}",
        steps[5].url
    );
    assert_eq!(steps[8].context, "bob");
    for shot in ["provider-sign-in.png", "callback-alice.png"] {
        ensure!(
            browser.artifacts_dir().join(shot).exists(),
            "screenshot {shot} saved"
        );
    }
    let denied = callback_for(&callbacks, "st-bob-no")?;
    assert_eq!(
        denied.get("error").map(String::as_str),
        Some("access_denied")
    );
    assert!(!denied.contains_key("code"), "{denied:?}");
    let alice_code = callback_for(&callbacks, "st-alice")?
        .get("code")
        .cloned()
        .context("alice's code")?;
    let bob_code = callback_for(&callbacks, "st-bob")?
        .get("code")
        .cloned()
        .context("bob's code")?;

    // Alice's code, exchanged with her verifier.
    let (status, alice) = token_request(
        &provider,
        &code_exchange(&alice_code, &alice_verifier, &redirect_uri),
    )
    .await?;
    assert_eq!(status, 200, "keys {:?}", keys(&alice));
    let alice_access = field(&alice, "access_token")?;
    let alice_refresh = field(&alice, "refresh_token")?;
    let alice_id = field(&alice, "id_token")?;
    assert_eq!(alice["expires_in"], 3600);
    assert_eq!(alice["scope"], "tickets:read");
    let claims = jwt_claims(&alice_access)?;
    assert_eq!(claims["sub"], "alice", "{claims}");
    assert_eq!(claims["aud"], RESOURCE, "{claims}");
    assert_eq!(claims["iss"], provider.issuer(), "{claims}");
    assert_eq!(claims["client_id"], CLIENT_ID, "{claims}");
    let id = jwt_claims(&alice_id)?;
    assert_eq!(id["sub"], "alice", "{id}");
    assert_eq!(id["aud"], CLIENT_ID, "{id}");

    // The same code again: invalid_grant.
    let (status, again) = token_request(
        &provider,
        &code_exchange(&alice_code, &alice_verifier, &redirect_uri),
    )
    .await?;
    assert_eq!(status, 400, "{again}");
    assert_eq!(again["error"], "invalid_grant");

    // Bob's code with Alice's verifier: invalid_grant, and the code is spent.
    let (status, wrong) = token_request(
        &provider,
        &code_exchange(&bob_code, &alice_verifier, &redirect_uri),
    )
    .await?;
    assert_eq!((status, &wrong["error"]), (400, &json!("invalid_grant")));
    let (status, spent) = token_request(
        &provider,
        &code_exchange(&bob_code, &bob_verifier, &redirect_uri),
    )
    .await?;
    assert_eq!((status, &spent["error"]), (400, &json!("invalid_grant")));

    // The upstream knows Alice by her provider token...
    let client = McpClient::connect(&upstream.url(), &alice_access).await?;
    let result = client.call_tool("whoami", json!({})).await?;
    assert_eq!(McpClient::text(&result), "alice");
    client.close().await?;

    // ...and refuses the organisation IdP's token (right audience, other
    // issuer and keys), provider-signed tokens for another audience, with
    // another issuer or expired, and no token.
    let org_token = org.token(&TokenRequest::new("alice", RESOURCE)).await?;
    let other_aud = provider
        .token(&TokenRequest::new("alice", "https://elsewhere.example/mcp"))
        .await?;
    let other_iss = provider
        .token(&TokenRequest::new("alice", RESOURCE).issuer("https://evil.example"))
        .await?;
    let expired = provider
        .token(&TokenRequest::new("alice", RESOURCE).expired(60))
        .await?;
    let refused = [
        Some(org_token.as_str()),
        Some(other_aud.as_str()),
        Some(other_iss.as_str()),
        Some(expired.as_str()),
        None,
    ];
    for token in refused {
        let reply = post_json(
            &upstream.url(),
            token,
            latchkey_e2e::client::INITIALIZE,
            &[],
        )
        .await?;
        assert_eq!(reply.status, 401, "{}", reply.body);
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Bearer error=\"invalid_token\"")
        );
    }

    // Refresh: a shorter lifetime from now on; the token rotates and the
    // old one stops working; the new access token is still Alice's.
    provider.set_access_ttl(120).await?;
    let (status, refreshed) = token_request(&provider, &refresh_request(&alice_refresh)).await?;
    assert_eq!(status, 200, "keys {:?}", keys(&refreshed));
    assert_eq!(refreshed["expires_in"], 120);
    let access2 = field(&refreshed, "access_token")?;
    let refresh2 = field(&refreshed, "refresh_token")?;
    assert_ne!(refresh2, alice_refresh, "rotated");
    let c2 = jwt_claims(&access2)?;
    assert_eq!(
        (&c2["sub"], &c2["aud"]),
        (&json!("alice"), &json!(RESOURCE))
    );
    let exp = c2["exp"].as_i64().context("exp")?;
    assert!((exp - (now() + 120)).abs() <= 5, "exp = now + 120: {c2}");
    let (status, old) = token_request(&provider, &refresh_request(&alice_refresh)).await?;
    assert_eq!((status, &old["error"]), (400, &json!("invalid_grant")));
    let client = McpClient::connect(&upstream.url(), &access2).await?;
    assert_eq!(
        McpClient::text(&client.call_tool("whoami", json!({})).await?),
        "alice"
    );
    client.close().await?;

    // Alice revokes the app at the provider: her refresh token is dead.
    assert_eq!(provider.revoke_subject("alice").await?, 1);
    let (status, revoked) = token_request(&provider, &refresh_request(&refresh2)).await?;
    assert_eq!((status, &revoked["error"]), (400, &json!("invalid_grant")));

    // RFC 7009: a refresh token revoked at /revoke stops working.
    // Bob needs a fresh code: his first one was spent above.
    let code = sign_in_directly(
        &authorize_url(&provider, &redirect_uri, "st-bob-2", &bob_challenge)?,
        "bob",
    )
    .await?;
    let (status, bob) = token_request(
        &provider,
        &code_exchange(&code, &bob_verifier, &redirect_uri),
    )
    .await?;
    assert_eq!(status, 200, "keys {:?}", keys(&bob));
    assert_eq!(jwt_claims(&field(&bob, "access_token")?)?["sub"], "bob");
    let bob_refresh = field(&bob, "refresh_token")?;
    let (status, _) = provider
        .post_revoke(&[
            ("token", &bob_refresh),
            ("token_type_hint", "refresh_token"),
        ])
        .await?;
    assert_eq!(status, 200);
    let (status, gone) = token_request(&provider, &refresh_request(&bob_refresh)).await?;
    assert_eq!((status, &gone["error"]), (400, &json!("invalid_grant")));

    // The counters say exactly what happened.
    assert_eq!(
        provider.stats().await?,
        IdpStats {
            authorization_code: 2,
            refresh_token: 1,
            refresh_token_by_sub: [("alice".to_string(), 1)].into(),
            revocations: 1,
            invalid_grant: 6,
            ..IdpStats::default()
        }
    );
    provider.reset_stats().await?;
    assert_eq!(provider.stats().await?, IdpStats::default());

    // What reached the upstream: Alice only, and the refusals.
    let seen = upstream.seen().await?;
    let subjects = upstream.subjects().await?;
    assert!(subjects.len() >= 4, "two sessions: {seen}");
    assert!(subjects.iter().all(|s| s == "alice"), "{seen}");
    assert_eq!(seen["rejected"], refused.len(), "{seen}");
    assert_eq!(
        seen["requests"].as_u64(),
        Some((subjects.len() + refused.len()) as u64),
        "{seen}"
    );

    server.abort();
    let secrets = [
        alice_code.as_str(),
        bob_code.as_str(),
        alice_verifier.as_str(),
        bob_verifier.as_str(),
        alice_access.as_str(),
        alice_refresh.as_str(),
        alice_id.as_str(),
        access2.as_str(),
        refresh2.as_str(),
        bob_refresh.as_str(),
    ];
    secrets_scan(&dir, &secrets)?;
    secrets_scan(browser.artifacts_dir(), &secrets)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_provider_without_rotation_keeps_the_refresh_token() -> Result<()> {
    let dir = scenario_dir("peers_oauth_no_rotate")?;
    let provider = Idp::start_with(
        &dir,
        IdpOptions {
            no_rotate: true,
            ..IdpOptions::default()
        },
    )?;
    let CodeFlow {
        status,
        tokens,
        code,
        verifier,
    } = provider
        .code_flow_without_browser("carol", CLIENT_ID)
        .await?;
    assert_eq!(status, 200, "keys {:?}", keys(&tokens));
    // No resource asked: the audience is the client.
    assert_eq!(
        jwt_claims(&field(&tokens, "access_token")?)?["aud"],
        CLIENT_ID
    );
    let refresh = field(&tokens, "refresh_token")?;
    for _ in 0..2 {
        let (status, again) = provider
            .post_token(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh),
                ("client_id", CLIENT_ID),
            ])
            .await?;
        assert_eq!(status, 200, "keys {:?}", keys(&again));
        assert!(again.get("refresh_token").is_none(), "no new refresh token");
        assert_eq!(jwt_claims(&field(&again, "access_token")?)?["sub"], "carol");
    }
    let stats = provider.stats().await?;
    assert_eq!(
        (stats.authorization_code, stats.refresh_token),
        (1, 2),
        "{stats:?}"
    );
    secrets_scan(&dir, &[&code, &verifier, &refresh])?;
    Ok(())
}
