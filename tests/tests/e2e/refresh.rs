//! Per-user OAuth tokens over time, end to end: a real Envoy running the
//! Wasm filter in front of two `latchkey serve` replicas sharing one Redis, a
//! real downstream OAuth provider (`idp.mjs`, rotating refresh tokens) and an
//! upstream (`oauth-mcp`) that accepts only that provider's unexpired tokens
//! and reports whose they are.
//!
//! Alice's identity is stored with the provider's tokens (`latchkey identity
//! create --oauth`), its access token short-lived. Once it has expired, fifty concurrent
//! `tools/call`s, spread over both replicas, make exactly one refresh at the
//! provider; the rotated refresh token is what is stored (the old one is
//! refused, the new one works at the next refresh). Once alice revokes the
//! app at the provider, the next refresh gets `invalid_grant`: the call is
//! answered "consent needed" (not a 401), and the identity says consent is
//! required. No token shows up in any log or in the audit trail.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use latchkey_core::identity::{IdentitySecret, VaultRecord};
use latchkey_core::vault::KeyRing;
use latchkey_e2e::client::INITIALIZE;
use latchkey_e2e::{
    Idp, McpClient, OauthMcp, Stack, StackOptions, eventually, http_get, post_json, scenario_dir,
    secrets_scan, start_provider_and_upstream,
};
use serde_json::{Value, json};

/// Latchkey's client id at the downstream provider (also the audience of
/// the provider's access tokens, as no `resource` is asked for).
const CLIENT_ID: &str = "latchkey-github";
const IDENTITY: &str = "github-alice";
/// The team's global identity behind the shared assignment `github-team`
/// (the config reserves its id: nobody can take it as a private one).
const TEAM: &str = "github-team-sa";
/// `[connect] refresh_margin_secs`: none, so the fifty calls below come
/// with a token that has really expired, not one about to.
const MARGIN: u64 = 0;
/// Lifetime of the provider's access tokens: each is due for refresh
/// `TTL - MARGIN` seconds after it was issued.
const TTL: u64 = 8;

fn due_after() -> Duration {
    Duration::from_secs(TTL - MARGIN) + Duration::from_millis(500)
}

/// The config added to the stack: the provider as `github`'s OAuth
/// provider, `oauth-mcp` as its upstream, a per-user assignment of it.
fn extra_config(provider: &Idp, upstream: &OauthMcp) -> String {
    extra_config_waiting(provider, upstream, 5000)
}

/// [`extra_config`] with `[connect] refresh_wait_ms = wait_ms`.
fn extra_config_waiting(provider: &Idp, upstream: &OauthMcp, wait_ms: u64) -> String {
    format!(
        r#"
[[gateways.assignments]]
name = "github-mine"
server = "github"
scheme = "per_user"

[[gateways.assignments]]
name = "github-team"
server = "github"
scheme = "shared"
identity = "{TEAM}"

[connect]
public_url = "https://connect.example.test/latchkey"
client_id = "latchkey-connect"
refresh_margin_secs = {MARGIN}
refresh_wait_ms = {wait_ms}

[[servers]]
name = "github"
url = "{upstream}"
auth = {{ type = "static_header", header = "authorization", prefix = "Bearer " }}

[servers.oauth]
authorization_endpoint = "{authorize}"
token_endpoint = "{token}"
revocation_endpoint = "{revoke}"
client_id = "{CLIENT_ID}"
"#,
        upstream = upstream.url(),
        authorize = provider.authorize_url(),
        token = provider.token_url(),
        revoke = provider.revocation_url(),
    )
}

/// Alice signs in at the provider (its sign-in form's own request, no
/// browser needed here) and the code is exchanged as Latchkey's client
/// would: the token response.
async fn alice_tokens(provider: &Idp) -> Result<Value> {
    let flow = provider
        .code_flow_without_browser("alice", CLIENT_ID)
        .await?;
    ensure!(flow.status == 200, "code exchange answered {}", flow.status);
    Ok(flow.tokens)
}

/// Alice's tokens from the provider, remembered as secrets of the run and
/// stored as her identity, its access token expiring `expires_in` seconds
/// from now as far as Latchkey knows (`None`: as the provider said).
/// Returns the access token, the refresh token and the provider's `expires_in`.
async fn provision_alice(
    stack: &Stack,
    provider: &Idp,
    expires_in: Option<i64>,
) -> Result<(String, String, i64)> {
    let tokens = alice_tokens(provider).await?;
    let (access, refresh) = (
        field(&tokens, "access_token")?,
        field(&tokens, "refresh_token")?,
    );
    stack.remember_secret(&access);
    stack.remember_secret(&refresh);
    let said = tokens["expires_in"].as_i64().context("expires_in")?;
    let admin = stack.admin_token("alice", &[]).await?;
    store_alices_identity(stack, &admin, &access, &refresh, expires_in.unwrap_or(said))?;
    Ok((access, refresh, said))
}

/// The team's service account signs in at the provider (as `alice`, the
/// provider's only user) and an identity manager stores its tokens as the
/// global identity [`TEAM`] behind `github-team`.
async fn provision_team(stack: &Stack, provider: &Idp, expires_in: i64) -> Result<String> {
    let tokens = alice_tokens(provider).await?;
    let (access, refresh) = (
        field(&tokens, "access_token")?,
        field(&tokens, "refresh_token")?,
    );
    stack.remember_secret(&access);
    stack.remember_secret(&refresh);
    let ops = stack.admin_token("ops", &["platform-admins"]).await?;
    let created = stack.cli(
        0,
        &ops,
        &[
            "identity",
            "create",
            "--oauth",
            "--server",
            "github",
            "--id",
            TEAM,
            "--global",
            "--expires-in",
            &expires_in.to_string(),
        ],
        Some(&format!("{access}\n{refresh}\n")),
    )?;
    ensure!(
        created[0]["availability"] == "global" && created[0]["version"] == 1,
        "{created:?}"
    );
    Ok(access)
}

fn field(v: &Value, name: &str) -> Result<String> {
    v[name]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no {name} in the token response"))
}

/// Stores alice's provider tokens as her OAuth identity for `github`
/// (through replica 0) and puts it on her connection (through the last
/// replica), as `latchkey identity create --oauth` and `connection use` do.
fn store_alices_identity(
    stack: &Stack,
    admin: &str,
    access: &str,
    refresh: &str,
    expires_in: i64,
) -> Result<()> {
    let created = stack.cli(
        0,
        admin,
        &[
            "identity",
            "create",
            "--oauth",
            "--server",
            "github",
            "--id",
            IDENTITY,
            "--expires-in",
            &expires_in.to_string(),
        ],
        Some(&format!("{access}\n{refresh}\n")),
    )?;
    ensure!(
        created[0]["kind"] == "oauth" && created[0]["version"] == 1,
        "{created:?}"
    );
    stack.cli(
        stack.replicas.len() - 1,
        admin,
        &[
            "connection",
            "use",
            "--gateway",
            "e2e",
            "--server",
            "github",
            "--identity",
            IDENTITY,
        ],
        None,
    )?;
    Ok(())
}

/// The tokens stored for alice now, opened with the stack's master key the
/// way a replica opens them (so the test knows every token to look for).
fn stored_tokens(stack: &Stack) -> Result<(VaultRecord, String, Option<String>)> {
    stored_tokens_of(stack, IDENTITY)
}

/// [`stored_tokens`] of identity `id`.
fn stored_tokens_of(stack: &Stack, id: &str) -> Result<(VaultRecord, String, Option<String>)> {
    let raw = stack
        .redis
        .get(&format!("latchkey:identity:{id}"))?
        .with_context(|| format!("identity {id} is not in Redis"))?;
    let record: VaultRecord = serde_json::from_str(&raw)?;
    let keys = KeyRing::parse(&std::fs::read_to_string(&stack.key_file)?, None)?;
    match record.open(&keys)? {
        IdentitySecret::Oauth {
            access_token,
            refresh_token,
        } => {
            let (a, r) = (
                access_token.expose().to_string(),
                refresh_token.map(|t| t.expose().to_string()),
            );
            stack.remember_secret(&a);
            if let Some(r) = &r {
                stack.remember_secret(r);
            }
            Ok((record, a, r))
        }
        IdentitySecret::Static { .. } => anyhow::bail!("alice's identity is not OAuth"),
    }
}

/// The sum over replicas of `latchkey_token_refreshes_total{server="github",result}`.
fn refreshes(stack: &Stack, result: &str) -> Result<f64> {
    let prefix =
        format!("latchkey_token_refreshes_total{{server=\"github\",result=\"{result}\"}} ");
    let mut total = 0.0;
    for r in &stack.replicas {
        let (status, text) = http_get(&format!("http://127.0.0.1:{}/metrics", r.http_port))
            .context("GET /metrics")?;
        ensure!(status == 200, "/metrics answered {status}");
        total += text
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim().parse::<f64>())
            .transpose()?
            .unwrap_or(0.0);
    }
    Ok(total)
}

/// Lifecycle events about alice's identity with `action`.
fn lifecycle(stack: &Stack, action: &str) -> Result<Vec<Value>> {
    Ok(stack
        .audit_events()?
        .into_iter()
        .filter(|e| e["event"] == "lifecycle" && e["action"] == action && e["target"] == IDENTITY)
        .collect())
}

async fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        tokio::time::sleep(at - now).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_are_refreshed_once_across_replicas_and_a_revoked_grant_asks_for_consent()
-> Result<()> {
    let peers_dir = scenario_dir("refresh_peers")?;
    let (provider, upstream) =
        start_provider_and_upstream(&peers_dir, env!("CARGO_BIN_EXE_oauth-mcp"), CLIENT_ID)?;
    let stack = Stack::start(
        "refresh",
        StackOptions {
            replicas: 2,
            extra_config: Some(extra_config(&provider, &upstream)),
            ..StackOptions::default()
        },
    )
    .await?;
    let mut secrets: Vec<String> = Vec::new();

    // Alice's tokens from the provider, the access token due for refresh
    // TTL - MARGIN seconds from now; stored through the admin API.
    provider.set_access_ttl(TTL as i64).await?;
    let issued = Instant::now();
    let (access0, refresh0, expires_in) = provision_alice(&stack, &provider, None).await?;
    secrets.extend([access0.clone(), refresh0.clone()]);
    ensure!(expires_in == TTL as i64, "expires_in {expires_in}");

    // A session while the token is not due yet: nothing is refreshed.
    let alice = stack.token("alice").await?;
    let client = McpClient::connect(&stack.url("github-mine"), &alice).await?;
    ensure!(provider.stats().await?.refresh_token == 0);

    // Expired now: fifty concurrent calls, spread over both replicas,
    // refresh it once.
    sleep_until(issued + due_after()).await;
    let before = (
        stack.decided(0, "github-mine", "tools/call"),
        stack.decided(1, "github-mine", "tools/call"),
    );
    let calls = (0..50).map(|_| client.call_tool("whoami", json!({})));
    let results = futures_util::future::join_all(calls).await;
    let refreshed = Instant::now();
    for r in results {
        let r = r?;
        ensure!(McpClient::text(&r) == "alice", "{r:?}");
    }
    let stats = provider.stats().await?;
    ensure!(
        stats.refresh_token == 1 && stats.refresh_token_by_sub.get("alice") == Some(&1),
        "exactly one refresh_token grant: {stats:?}"
    );
    ensure!(
        stack.decided(0, "github-mine", "tools/call") > before.0
            && stack.decided(1, "github-mine", "tools/call") > before.1,
        "both replicas decided some of the calls"
    );
    let seen = upstream.seen().await?;
    ensure!(
        seen["rejected"] == 0,
        "the upstream saw only valid tokens: {seen}"
    );
    ensure!(
        upstream.subjects().await?.iter().all(|s| s == "alice"),
        "{seen}"
    );
    ensure!(refreshes(&stack, "rotated")? == 1.0);
    let (record, access1, refresh1) = stored_tokens(&stack)?;
    secrets.extend([access1.clone()]);
    let refresh1 = refresh1.context("a refresh token is stored")?;
    secrets.push(refresh1.clone());
    ensure!(
        record.version == 2 && !record.consent_required,
        "{record:?}"
    );
    ensure!(
        access1 != access0 && refresh1 != refresh0,
        "new tokens stored"
    );
    let events = lifecycle(&stack, "identity.refresh")?;
    ensure!(
        events.len() == 1 && events[0]["after"]["refresh_token_rotated"] == json!(true),
        "{events:?}"
    );

    // The rotated-out refresh token is refused by the provider...
    let (status, refused) = provider
        .post_token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh0),
            ("client_id", CLIENT_ID),
        ])
        .await?;
    ensure!(
        status == 400 && refused["error"] == "invalid_grant",
        "{status} {refused}"
    );
    // ...and the stored one works: the next refresh succeeds with it.
    sleep_until(refreshed + due_after()).await;
    let r = client.call_tool("whoami", json!({})).await?;
    ensure!(McpClient::text(&r) == "alice", "{r:?}");
    let refreshed = Instant::now();
    ensure!(provider.stats().await?.refresh_token == 2);
    let (record, access2, refresh2) = stored_tokens(&stack)?;
    secrets.push(access2);
    secrets.extend(refresh2);
    ensure!(record.version == 3, "{record:?}");

    // Alice revokes the app at the provider; once the token is due again,
    // the refresh gets invalid_grant and the call asks for consent.
    ensure!(provider.revoke_subject("alice").await? >= 1);
    sleep_until(refreshed + due_after()).await;
    let reply = post_json(
        &stack.url("github-mine"),
        Some(&alice),
        &INITIALIZE.replace("\"id\":1", "\"id\":\"consent-1\""),
        &[],
    )
    .await?;
    ensure!(
        reply.status != 401,
        "consent needed is not a 401: {}",
        reply.body
    );
    let answer: Value = reply
        .messages()
        .into_iter()
        .next()
        .with_context(|| format!("no JSON-RPC answer: {}", reply.body))?;
    ensure!(
        answer["id"] == "consent-1" && answer.get("result").is_none_or(|r| r.is_null()),
        "{answer}"
    );
    let decision = eventually(
        "the consent_needed decision in the audit trail",
        async || {
            let found = stack.audit_events()?.into_iter().find(|e| {
                e["event"] == "decision"
                    && e["assignment"] == "github-mine"
                    && e["reason"] == "consent_needed"
            });
            Ok(found.ok_or_else(|| "absent".to_string()))
        },
    )
    .await?;
    ensure!(
        decision["user"] == "alice" && decision["status"] != 401,
        "{decision}"
    );
    let marked = lifecycle(&stack, "identity.consent_required")?;
    ensure!(
        marked.len() == 1 && marked[0]["after"]["reason"] == "invalid_grant",
        "{marked:?}"
    );
    let admin = stack.admin_token("alice", &[]).await?;
    let shown = stack.cli(0, &admin, &["identity", "show", IDENTITY], None)?;
    ensure!(shown[0]["consent_required"] == true, "{shown:?}");
    ensure!(refreshes(&stack, "invalid_grant")? == 1.0);
    // A second call does not ask the provider again: the identity says it all.
    let again = post_json(&stack.url("github-mine"), Some(&alice), INITIALIZE, &[]).await?;
    ensure!(
        again.status != 401 && again.messages().first().is_some_and(|m| m["id"] == 1),
        "{}",
        again.body
    );
    ensure!(
        provider.stats().await?.invalid_grant == 2,
        "the test's own try and one refresh"
    );
    ensure!(upstream.seen().await?["rejected"] == 0);

    // No token in any log, nor in the audit trail.
    let _ = client.close().await;
    stack.assert_no_secret_in_logs()?;
    let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    secrets_scan(&peers_dir, &refs)?;
    let audit = serde_json::to_string(&stack.audit_events()?)?;
    for s in &secrets {
        ensure!(!audit.contains(s.as_str()), "a token is in the audit trail");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_the_upstream_refuses_is_refreshed_and_the_client_never_sees_a_401() -> Result<()> {
    let (provider, upstream) = start_provider_and_upstream(
        &scenario_dir("refused_peers")?,
        env!("CARGO_BIN_EXE_oauth-mcp"),
        CLIENT_ID,
    )?;
    let stack = Stack::start(
        "refused",
        StackOptions {
            extra_config: Some(extra_config(&provider, &upstream)),
            // What one worker learns from the refusal, all must know.
            envoy_workers: 4,
            ..StackOptions::default()
        },
    )
    .await?;
    // An hour-long token: nothing about its expiry asks for a refresh.
    provision_alice(&stack, &provider, Some(3600)).await?;
    let alice = stack.token("alice").await?;
    let client = McpClient::connect(&stack.url("github-mine"), &alice).await?;
    let first = client.call_tool("whoami", json!({})).await?;
    ensure!(McpClient::text(&first) == "alice");

    // The provider revoked alice's outstanding access tokens: the upstream
    // now answers 401 to the stored one, which has not expired.
    // (`iat` has whole seconds: the old token's second is over before the
    // cut-off, and the cut-off's second before the refresh.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    upstream.reject_tokens_issued_before_now("alice").await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refused = client.call_tool("whoami", json!({})).await;
    let message = match refused {
        Ok(r) => anyhow::bail!("the refused call succeeded: {r:?}"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        message.contains("refused the stored credential") && message.contains("retry"),
        "a JSON-RPC error saying to retry, not the upstream's 401: {message}"
    );
    ensure!(upstream.seen().await?["rejected"] == 1);
    ensure!(
        provider.stats().await?.refresh_token == 0,
        "nothing refreshed yet"
    );

    // The next Checks, on whichever of Envoy's workers, name the refused
    // credential: refreshed once, and the upstream gets the new token. Four
    // connections opened at once (exact balance spreads them over the 4
    // workers, so most are not on the worker that saw the refusal) all go
    // through without another refusal, and so does the old one.
    let mut fresh = tokio::task::JoinSet::new();
    for n in 0..4 {
        let (url, token) = (stack.url("github-mine"), alice.clone());
        fresh.spawn(async move {
            let c = McpClient::connect(&url, &token)
                .await
                .with_context(|| format!("fresh connection {n}"))?;
            let r = c.call_tool("whoami", json!({})).await?;
            ensure!(
                McpClient::text(&r) == "alice",
                "fresh connection {n}: {r:?}"
            );
            c.close().await
        });
    }
    while let Some(done) = fresh.join_next().await {
        done??;
    }
    let again = client.call_tool("whoami", json!({})).await?;
    ensure!(McpClient::text(&again) == "alice", "{again:?}");
    let stats = provider.stats().await?;
    ensure!(stats.refresh_token == 1, "exactly one refresh: {stats:?}");
    let seen = upstream.seen().await?;
    ensure!(seen["rejected"] == 1, "one refusal in all: {seen}");
    let (record, _, _) = stored_tokens(&stack)?;
    ensure!(
        record.version == 2,
        "the refreshed tokens are stored: {}",
        record.version
    );
    ensure!(refreshes(&stack, "rotated")? == 1.0);
    client.close().await?;
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_oauth_identity_is_refreshed_too_and_an_operator_is_told_when_it_stops()
-> Result<()> {
    let peers_dir = scenario_dir("shared_refresh_peers")?;
    let (provider, upstream) =
        start_provider_and_upstream(&peers_dir, env!("CARGO_BIN_EXE_oauth-mcp"), CLIENT_ID)?;
    let stack = Stack::start(
        "shared_refresh",
        StackOptions {
            extra_config: Some(extra_config(&provider, &upstream)),
            ..StackOptions::default()
        },
    )
    .await?;
    // The team's service account signs in at the provider once; an
    // operator makes its identity global, for the shared assignment.
    provider.set_access_ttl(TTL as i64).await?;
    let issued = Instant::now();
    let access0 = provision_team(&stack, &provider, TTL as i64).await?;

    // Bob calls through the shared assignment: the team's token goes up.
    let bob = stack.token("bob").await?;
    let client = McpClient::connect(&stack.url("github-team"), &bob).await?;
    let first = client.call_tool("whoami", json!({})).await?;
    ensure!(McpClient::text(&first) == "alice", "{first:?}");
    ensure!(provider.stats().await?.refresh_token == 0);

    // Expired: refreshed once, and the call goes through.
    sleep_until(issued + due_after()).await;
    let after = client.call_tool("whoami", json!({})).await?;
    ensure!(McpClient::text(&after) == "alice", "{after:?}");
    ensure!(provider.stats().await?.refresh_token == 1);
    let (record, access1, refresh1) = stored_tokens_of(&stack, TEAM)?;
    ensure!(record.version == 2 && access1 != access0, "{record:?}");
    ensure!(refresh1.is_some());
    let refreshed = Instant::now();

    // The provider revokes it: nobody can be asked in band for a shared
    // identity, so the answer names what an operator does.
    ensure!(provider.revoke_subject("alice").await? >= 1);
    sleep_until(refreshed + due_after()).await;
    let reply = post_json(&stack.url("github-team"), Some(&bob), INITIALIZE, &[]).await?;
    ensure!(reply.status == 503, "{} {}", reply.status, reply.body);
    ensure!(
        reply.body.contains("no longer refreshes") && reply.body.contains("make-global"),
        "{}",
        reply.body
    );
    client.close().await?;
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

/// A provider slower than Envoy waits for a Check (2 s): the call that
/// started the refresh is told to retry within `refresh_wait_ms`, the
/// refresh itself goes on and the provider's rotated token is stored (the
/// old one was spent when the provider answered), so the next call goes
/// through with a fresh token and alice is never asked to consent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_slower_than_the_check_is_finished_and_kept() -> Result<()> {
    let peers_dir = scenario_dir("refresh_slow_peers")?;
    let (provider, upstream) =
        start_provider_and_upstream(&peers_dir, env!("CARGO_BIN_EXE_oauth-mcp"), CLIENT_ID)?;
    let stack = Stack::start(
        "refresh_slow",
        StackOptions {
            // A second under Envoy's 2 s wait for the Check, so Latchkey's
            // own answer (not Envoy's timeout) reaches the client.
            extra_config: Some(extra_config_waiting(&provider, &upstream, 1000)),
            ..StackOptions::default()
        },
    )
    .await?;
    // Stored as already expired: the first call refreshes.
    let (access0, refresh0, _) = provision_alice(&stack, &provider, Some(-5)).await?;
    let alice = stack.token("alice").await?;

    provider.set_refresh_delay(3000).await?;
    let r = post_json(
        &stack.url("github-mine"),
        Some(&alice),
        &latchkey_e2e::client::tools_call(json!(1), "whoami"),
        &[],
    )
    .await?;
    // Latchkey's answer, not Envoy's "authorization service unavailable".
    ensure!(
        r.status == 503 && r.body.contains("retry shortly"),
        "the first call is told to retry: {} {}",
        r.status,
        r.body
    );

    // The provider answers after 3 s; the refresh stores its tokens.
    eventually("the refreshed tokens are stored", async || {
        let (record, _, refresh) = stored_tokens(&stack)?;
        Ok(
            if record.version == 2 && refresh.as_deref() != Some(refresh0.as_str()) {
                Ok(())
            } else {
                Err(format!("version {}", record.version))
            },
        )
    })
    .await?;
    provider.set_refresh_delay(0).await?;
    let (_, access1, _) = stored_tokens(&stack)?;
    ensure!(access1 != access0, "a new access token is stored");

    let client = McpClient::connect(&stack.url("github-mine"), &alice).await?;
    let r = client.call_tool("whoami", json!({})).await?;
    ensure!(McpClient::text(&r) == "alice", "{r:?}");
    client.close().await?;
    let stats = provider.stats().await?;
    ensure!(
        stats.refresh_token == 1 && stats.invalid_grant == 0,
        "one refresh, no refused refresh token: {stats:?}"
    );
    ensure!(
        lifecycle(&stack, "identity.consent_required")?.is_empty(),
        "alice was not asked to consent again"
    );
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

/// A client cannot make Latchkey refresh a shared OAuth identity by
/// claiming the upstream refused it: behind Envoy's native ext_authz
/// (which forwards every client header to Check) Envoy drops
/// `x-latchkey-rejected-credentials` before ext_authz and the service
/// believes it only with the Latchkey filter's metadata; through the Wasm
/// filter the filter drops a client's copy. The positive control, read the
/// same way (the provider's refresh count), is the real thing: the upstream
/// refuses the same identity's token when alice uses it as her own
/// (per-user, where the filter reports refusals), and through the Wasm
/// filter that causes one refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_refused_credential_report_refreshes_nothing_only_an_upstream_401_does()
-> Result<()> {
    use latchkey_e2e::stack::AuthzMode;
    let (provider, upstream) = start_provider_and_upstream(
        &scenario_dir("forged_report_peers")?,
        env!("CARGO_BIN_EXE_oauth-mcp"),
        CLIENT_ID,
    )?;
    // The header the Latchkey filter reports refused credentials in.
    let report = "x-latchkey-rejected-credentials";
    for mode in [AuthzMode::Native, AuthzMode::Wasm] {
        let stack = Stack::start(
            &format!("forged_report_{mode:?}").to_lowercase(),
            StackOptions {
                mode,
                extra_config: Some(extra_config(&provider, &upstream)),
                ..StackOptions::default()
            },
        )
        .await?;
        // The team's account, an hour-long token: nothing asks for a refresh.
        provision_team(&stack, &provider, 3600).await?;
        // Alice's own, for the positive control below (signing in is no refresh).
        provision_alice(&stack, &provider, Some(3600)).await?;
        let before = provider.stats().await?.refresh_token;

        // Bob names the team's identity, at its stored version, as refused.
        let bob = stack.token("bob").await?;
        let forged = format!("{TEAM}@1");
        for _ in 0..3 {
            let reply = post_json(
                &stack.url("github-team"),
                Some(&bob),
                INITIALIZE,
                &[(report, forged.as_str())],
            )
            .await?;
            ensure!(
                reply.status == 200,
                "{mode:?}: {} {}",
                reply.status,
                reply.body
            );
        }
        let stats = provider.stats().await?;
        ensure!(
            stats.refresh_token == before,
            "{mode:?}: a client's report refreshed the team's token: {stats:?}"
        );
        let (record, _, _) = stored_tokens_of(&stack, TEAM)?;
        ensure!(record.version == 1, "{mode:?}: version {}", record.version);
        ensure!(refreshes(&stack, "rotated")? == 0.0, "{mode:?}");

        if mode == AuthzMode::Wasm {
            // The positive control: the upstream really refuses the token.
            let alice = stack.token("alice").await?;
            let client = McpClient::connect(&stack.url("github-mine"), &alice).await?;
            tokio::time::sleep(Duration::from_millis(1100)).await;
            upstream.reject_tokens_issued_before_now("alice").await?;
            tokio::time::sleep(Duration::from_millis(1100)).await;
            ensure!(
                client.call_tool("whoami", json!({})).await.is_err(),
                "the refused call succeeded"
            );
            let again = client.call_tool("whoami", json!({})).await?;
            ensure!(McpClient::text(&again) == "alice", "{again:?}");
            let stats = provider.stats().await?;
            ensure!(
                stats.refresh_token == before + 1,
                "the upstream's 401 refreshed once: {stats:?}"
            );
            ensure!(refreshes(&stack, "rotated")? == 1.0);
            client.close().await?;
        }
        stack.assert_no_secret_in_logs()?;
    }
    Ok(())
}
