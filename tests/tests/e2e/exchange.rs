//! Per-user credentials with no consent screen (`[servers.exchange]`), end
//! to end: a real Envoy running the Wasm filter in front of two `latchkey
//! serve` replicas sharing one Redis, the organisation's identity provider
//! (`idp.mjs`, which exchanges tokens and issues ID-JAGs), for ID-JAG the
//! server's own authorization server (a second `idp.mjs` that redeems the
//! identity provider's grants), and upstreams (`oauth-mcp`) that accept
//! only tokens issued for them and report whose they are and who acts.
//! Clients are the official Rust SDK (rmcp) and raw HTTP for refusals.
//!
//! No browser and no connect page anywhere: the first call of a person
//! reaches the server with a token exchanged for them and their agent.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use latchkey_core::identity::{IdentitySecret, VaultRecord, exchanged_identity_id};
use latchkey_core::vault::KeyRing;
use latchkey_e2e::client::INITIALIZE;
use latchkey_e2e::{
    AuthEcho, Idp, IdpOptions, McpClient, OauthMcp, Stack, StackOptions, TokenRequest, free_port,
    post_json, scenario_dir,
};
use serde_json::{Value, json};

/// Latchkey's client at the identity provider (and at the server's
/// authorization server), and the variable its secret is read from.
const CLIENT: &str = "latchkey-gateway";
const SECRET_ENV: &str = "LATCHKEY_E2E_EXCHANGE_SECRET";
/// The agent the stack's tokens are issued to (`TokenRequest`'s client).
const AGENT: &str = "e2e-agent";

/// What both scenarios share: the identity provider on a port picked
/// first (the authorization server must name it before the stack starts),
/// knowing Latchkey's client.
struct Org {
    idp_port: u16,
    secret: String,
    /// [`KEY_CLIENT`]'s `private_key_jwt` key: the private key's file (for
    /// Latchkey), the public key's (for the identity provider), the PEM.
    key: (std::path::PathBuf, std::path::PathBuf, String),
}

/// Latchkey's client that authenticates with `private_key_jwt`.
const KEY_CLIENT: &str = "latchkey-gateway-key";

impl Org {
    fn new(dir: &std::path::Path) -> Result<Org> {
        let key = rcgen::KeyPair::generate()?;
        let (private, public) = (
            dir.join("exchange-key.pem"),
            dir.join("exchange-key.pub.pem"),
        );
        std::fs::write(&private, key.serialize_pem())?;
        std::fs::write(&public, key.public_key_pem())?;
        Ok(Org {
            idp_port: free_port(),
            secret: format!("exchange-secret-{}", latchkey_e2e::stack::random_hex()),
            key: (private, public, key.serialize_pem()),
        })
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.idp_port)
    }

    fn client(&self) -> Vec<(String, String)> {
        vec![(CLIENT.to_string(), self.secret.clone())]
    }

    /// Two replicas, the identity provider as above, `extra` config.
    async fn stack(&self, scenario: &str, extra: String) -> Result<Stack> {
        let stack = Stack::start(
            scenario,
            StackOptions {
                replicas: 2,
                extra_config: Some(extra),
                idp: IdpOptions {
                    port: Some(self.idp_port),
                    exchange_clients: self.client(),
                    exchange_client_keys: vec![(KEY_CLIENT.to_string(), self.key.1.clone())],
                    ..IdpOptions::default()
                },
                replica_env: vec![(SECRET_ENV.to_string(), self.secret.clone())],
                ..StackOptions::default()
            },
        )
        .await?;
        stack.remember_secret(&self.secret);
        for line in self.key.2.lines().filter(|l| !l.starts_with("-----")) {
            stack.remember_secret(line);
        }
        Ok(stack)
    }
}

/// The per-user assignment `name` of server `name` on gateway `e2e`, the
/// server at `upstream` with `exchange` as its `[servers.exchange]`.
fn exchange_server(name: &str, upstream: &OauthMcp, exchange: &str) -> String {
    format!(
        r#"
[[gateways.assignments]]
name = "{name}"
server = "{name}"
scheme = "per_user"

[[servers]]
name = "{name}"
url = "{url}"
auth = {{ type = "static_header", header = "authorization", prefix = "Bearer " }}

[servers.exchange]
client_id = "{CLIENT}"
client_secret_env = "{SECRET_ENV}"
scopes = ["crm.read"]
{exchange}
"#,
        url = upstream.url()
    )
}

/// The exchanged token stored for `user` (through [`AGENT`]) at `server`,
/// opened with the stack's key file and remembered for the log scan.
fn stored_exchange(
    stack: &Stack,
    user: &str,
    server: &str,
) -> Result<Option<(VaultRecord, String)>> {
    let id = exchanged_identity_id(user, Some(AGENT), server, &["crm.read".to_string()]);
    let Some(raw) = stack.redis.get(&format!("latchkey:identity:{id}"))? else {
        return Ok(None);
    };
    let record: VaultRecord = serde_json::from_str(&raw)?;
    let keys = KeyRing::parse(&std::fs::read_to_string(&stack.key_file)?, None)?;
    let IdentitySecret::Oauth { access_token, .. } = record.open(&keys)? else {
        anyhow::bail!("the exchanged identity {id} does not hold a token");
    };
    let token = access_token.expose().to_string();
    stack.remember_secret(&token);
    Ok(Some((record, token)))
}

/// `user` calls `whoami` on `assignment` with a fresh rmcp session; the
/// upstream's answer (the `sub` of the token it got).
async fn whoami(stack: &Stack, assignment: &str, user: &str) -> Result<String> {
    let token = stack.token(user).await?;
    let client = McpClient::connect(&stack.url(assignment), &token).await?;
    let tools = client.list_tools().await?;
    ensure!(tools.iter().any(|t| t.name == "whoami"), "{tools:?}");
    let r = client.call_tool("whoami", json!({})).await?;
    client.close().await?;
    Ok(McpClient::text(&r))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_gives_each_person_their_own_token_for_them_and_their_agent_without_a_browser()
-> Result<()> {
    let peers = scenario_dir("exchange_peers")?;
    let org = Org::new(&peers)?;
    // The server trusts the identity provider's tokens issued for it.
    let upstream = OauthMcp::start_bin(
        &peers,
        env!("CARGO_BIN_EXE_oauth-mcp"),
        &org.issuer(),
        &format!("{}/jwks", org.issuer()),
        "crm-x",
    )?;
    // The same server again, Latchkey's client there authenticating with
    // private_key_jwt instead of a secret.
    let with_key = exchange_server(
        "crm-k",
        &upstream,
        &format!(
            "kind = \"token_exchange\"\naudience = \"crm-x\"\nprivate_key_file = \"{}\"",
            org.key.0.display()
        ),
    )
    .replace(
        &format!("client_id = \"{CLIENT}\"\nclient_secret_env = \"{SECRET_ENV}\"\n"),
        &format!("client_id = \"{KEY_CLIENT}\"\n"),
    );
    // A server whose exchange takes the person's ID token, sent in its own
    // header, as the subject; an upstream that reports every header it got.
    let echo = AuthEcho::start_bin(&peers, env!("CARGO_BIN_EXE_auth-echo"))?;
    let with_id_token = exchange_server(
        "crm-id",
        &upstream,
        "kind = \"token_exchange\"\naudience = \"crm-id\"\nsubject_token_header = \"x-id-token\"",
    )
    .replace(&upstream.url(), &echo.url());
    let stack = org
        .stack(
            "exchange",
            exchange_server(
                "crm-x",
                &upstream,
                "kind = \"token_exchange\"\naudience = \"crm-x\"",
            ) + &with_key
                + &with_id_token,
        )
        .await?;

    // Alice: two sessions, several requests each, over both replicas.
    ensure!(whoami(&stack, "crm-x", "alice").await? == "alice");
    ensure!(whoami(&stack, "crm-x", "alice").await? == "alice");
    let stats = stack.idp.stats().await?;
    ensure!(
        stats.token_exchange_by_sub.get("alice") == Some(&1),
        "one exchange for alice, reused after: {stats:?}"
    );
    let seen = upstream.seen().await?;
    let actors = seen["actors"].as_array().context("actors")?;
    ensure!(
        !actors.is_empty() && actors.iter().all(|a| a == AGENT),
        "every token the upstream got names alice's agent in act: {seen}"
    );
    let (record, alices_token) =
        stored_exchange(&stack, "alice", "crm-x")?.context("alice's exchanged token is stored")?;
    ensure!(record.owner == "alice" && record.exchanged.is_some());
    ensure!(
        record.exchanged.as_ref().and_then(|x| x.agent.as_deref()) == Some(AGENT),
        "{record:?}"
    );

    // Nobody can store a secret of their own under an exchanged token's id.
    let alice_admin = stack.admin_token("alice", &[]).await?;
    let taken = stack
        .cli(
            0,
            &alice_admin,
            &[
                "identity", "create", "--server", "crm-x", "--id", &record.id,
            ],
            Some("alices-own-secret"),
        )
        .err()
        .context("an identity was created under an exchanged token's id")?;
    ensure!(
        format!("{taken:#}").contains("hold the tokens Latchkey exchanges"),
        "{taken:#}"
    );

    // Bob gets his own, not alice's.
    ensure!(whoami(&stack, "crm-x", "bob").await? == "bob");
    let stats = stack.idp.stats().await?;
    ensure!(
        stats.token_exchange_by_sub.get("bob") == Some(&1) && stats.token_exchange == 2,
        "{stats:?}"
    );
    let (_, bobs_token) =
        stored_exchange(&stack, "bob", "crm-x")?.context("bob's exchanged token is stored")?;
    ensure!(bobs_token != alices_token);

    // Carol is not entitled: 403, a JSON-RPC error naming the server and
    // what the identity provider said; nothing of hers reaches the server
    // (whose reports above show alice's and bob's calls arriving).
    stack.idp.deny_exchange(&["carol"]).await?;
    let carol = stack.token("carol").await?;
    let refused = post_json(&stack.url("crm-x"), Some(&carol), INITIALIZE, &[]).await?;
    ensure!(refused.status == 403, "{} {}", refused.status, refused.body);
    let error = refused.json()?;
    let message = error["error"]["message"].as_str().unwrap_or_default();
    ensure!(error["id"] == 1, "{error}");
    ensure!(
        message.contains("'crm-x'") && message.contains("carol is not entitled"),
        "{message}"
    );
    ensure!(!message.contains(&carol), "the refusal carries no token");
    let seen = upstream.seen().await?;
    ensure!(
        seen["subjects"].as_array().is_some_and(|s| {
            s.iter().any(|x| x == "alice")
                && s.iter().any(|x| x == "bob")
                && !s.iter().any(|x| x == "carol")
        }),
        "{seen}"
    );
    ensure!(stack.idp.stats().await?.exchange_refused == 1);

    // The audit trail names the source and the token's jti, never the token.
    let events = stack.audit_events()?;
    let created = events
        .iter()
        .find(|e| {
            e["action"] == "identity.create"
                && e["after"]["owner"] == "alice"
                && e["after"]["source"] == "exchange"
        })
        .with_context(|| format!("no exchange identity.create for alice in {events:?}"))?;
    ensure!(created["actor"] == "latchkey (token exchange)", "{created}");
    ensure!(
        created["after"]["exchange"] == "token_exchange",
        "{created}"
    );
    ensure!(
        created["after"]["jti"]
            .as_str()
            .is_some_and(|j| !j.is_empty()),
        "{created}"
    );
    ensure!(created["after"]["expires_at"].is_string(), "{created}");
    let refusal = events
        .iter()
        .find(|e| e["event"] == "decision" && e["user"] == "carol")
        .context("carol's refusal is audited")?;
    ensure!(refusal["reason"] == "exchange_refused", "{refusal}");
    let decision = events
        .iter()
        .find(|e| e["event"] == "decision" && e["user"] == "alice" && e["decision"] == "allow")
        .context("alice's calls are audited")?;
    ensure!(
        decision["credential_source"] == "exchange" && decision["identity"] == record.id.as_str(),
        "{decision}"
    );
    let trail = serde_json::to_string(&events)?;
    ensure!(!trail.contains(&alices_token) && !trail.contains(&bobs_token));

    // Disabling the agent drops every token exchanged for it, alice's and bob's.
    let ops = stack.admin_token("ops", &["platform-admins"]).await?;
    stack.cli(0, &ops, &["agent", "disable", AGENT], None)?;
    ensure!(stored_exchange(&stack, "alice", "crm-x")?.is_none());
    ensure!(stored_exchange(&stack, "bob", "crm-x")?.is_none());
    stack.cli(1, &ops, &["agent", "enable", AGENT], None)?;
    ensure!(whoami(&stack, "crm-x", "alice").await? == "alice");
    ensure!(stack.idp.stats().await?.token_exchange_by_sub.get("alice") == Some(&2));
    ensure!(whoami(&stack, "crm-k", "alice").await? == "alice");
    ensure!(
        stack.idp.stats().await?.token_exchange_by_sub.get("alice") == Some(&3),
        "a client authenticating with private_key_jwt exchanges too"
    );

    // An ID token as the subject: alice's own, issued to her agent, is
    // exchanged, and never reaches the upstream; none, another person's or
    // another client's is refused before anything is exchanged.
    let access = stack.token("alice").await?;
    let id_token = async |sub: &str, client: &str| {
        stack
            .token_with(&TokenRequest::new(sub, client).client(client))
            .await
    };
    let (alices, bobs, elsewhere) = (
        id_token("alice", AGENT).await?,
        id_token("bob", AGENT).await?,
        id_token("alice", "another-client").await?,
    );
    let exchanges = stack.idp.stats().await?.token_exchange;
    for (header, says) in [
        (None, "the request has none"),
        (Some(&bobs), "another person's"),
        (Some(&elsewhere), "it is not valid"),
    ] {
        let headers: Vec<(&str, &str)> = header
            .map(|h| ("x-id-token", h.as_str()))
            .into_iter()
            .collect();
        let refused = post_json(&stack.url("crm-id"), Some(&access), INITIALIZE, &headers).await?;
        ensure!(
            refused.status == 403 && refused.body.contains(says),
            "{} {}",
            refused.status,
            refused.body
        );
    }
    ensure!(
        stack.idp.stats().await?.token_exchange == exchanges,
        "nothing was exchanged for those"
    );
    let with_header = [("x-id-token", alices.as_str())];
    let init = post_json(
        &stack.url("crm-id"),
        Some(&access),
        INITIALIZE,
        &with_header,
    )
    .await?;
    ensure!(init.status == 200, "{} {}", init.status, init.body);
    let session = init
        .header("mcp-session-id")
        .context("a session")?
        .to_string();
    let call = post_json(
        &stack.url("crm-id"),
        Some(&access),
        &latchkey_e2e::client::tools_call(json!(2), "whoami"),
        &[
            ("x-id-token", alices.as_str()),
            ("mcp-session-id", session.as_str()),
            ("mcp-protocol-version", "2025-11-25"),
        ],
    )
    .await?;
    let credential = call
        .messages()
        .first()
        .and_then(|m| {
            m["result"]["content"][0]["text"]
                .as_str()
                .map(str::to_string)
        })
        .with_context(|| format!("whoami answered {} {}", call.status, call.body))?;
    let exchanged = credential
        .strip_prefix("Bearer ")
        .context("a bearer token")?;
    stack.remember_secret(exchanged);
    let claims = latchkey_e2e::jwt_claims(exchanged)?;
    ensure!(
        claims["sub"] == "alice" && claims["aud"] == "crm-id",
        "{claims}"
    );
    ensure!(stack.idp.stats().await?.token_exchange == exchanges + 1);
    let seen = echo.seen().await?;
    let names = seen["header_names"].as_array().context("header_names")?;
    ensure!(
        names.iter().any(|n| n == "authorization") && !names.iter().any(|n| n == "x-id-token"),
        "the ID token stays at the gateway: {seen}"
    );
    // Nor does it reach a server without exchange, which the client sends
    // it to all the same; a header of no meaning to Latchkey does (the
    // report lists the headers it got).
    let plain = post_json(
        &stack.url("whoami"),
        Some(&access),
        INITIALIZE,
        &[("x-id-token", alices.as_str()), ("x-e2e-marker", "1")],
    )
    .await?;
    ensure!(plain.status == 200, "{} {}", plain.status, plain.body);
    let seen = stack.echo.seen().await?;
    let names = seen["header_names"].as_array().context("header_names")?;
    ensure!(
        names.iter().any(|n| n == "x-e2e-marker") && !names.iter().any(|n| n == "x-id-token"),
        "an ID token never goes upstream, on any route: {seen}"
    );

    // The identity provider goes away: a person without an exchanged token
    // gets 503 saying so; alice's, still good, keeps serving her.
    let (alice, dave) = (stack.token("alice").await?, stack.token("dave").await?);
    let mut stack = stack;
    if let Some(idp) = stack.idp.process.as_mut() {
        idp.stop();
    }
    let down = post_json(&stack.url("crm-x"), Some(&dave), INITIALIZE, &[]).await?;
    ensure!(down.status == 503, "{} {}", down.status, down.body);
    ensure!(
        down.body.contains("could not be reached") && down.body.contains("'crm-x'"),
        "{}",
        down.body
    );
    let client = McpClient::connect(&stack.url("crm-x"), &alice).await?;
    ensure!(McpClient::text(&client.call_tool("whoami", json!({})).await?) == "alice");
    client.close().await?;
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_jag_is_redeemed_once_renewed_once_across_replicas_and_dropped_when_the_person_is_deactivated()
-> Result<()> {
    let peers = scenario_dir("id_jag_peers")?;
    let org = Org::new(&peers)?;
    // crm's own authorization server: redeems the identity provider's
    // ID-JAGs for Latchkey's client, issues tokens for the resource.
    let authorization_server = Idp::start_with(
        &peers,
        IdpOptions {
            name: Some("crm-as".into()),
            exchange_clients: org.client(),
            trust_issuer: Some(org.issuer()),
            ..IdpOptions::default()
        },
    )?;
    let upstream = OauthMcp::start_bin(
        &peers,
        env!("CARGO_BIN_EXE_oauth-mcp"),
        &authorization_server.issuer(),
        &authorization_server.jwks_uri(),
        "urn:crm",
    )?;
    let stack = org
        .stack(
            "id_jag",
            exchange_server(
                "crm",
                &upstream,
                &format!(
                    "kind = \"id_jag\"\nresource = \"urn:crm\"\nauthorization_server = \"{}\"",
                    authorization_server.issuer()
                ),
            ),
        )
        .await?;

    ensure!(whoami(&stack, "crm", "alice").await? == "alice");
    ensure!(whoami(&stack, "crm", "alice").await? == "alice");
    let (idp, redeemed) = (
        stack.idp.stats().await?,
        authorization_server.stats().await?,
    );
    ensure!(
        idp.id_jag == 1 && redeemed.jwt_bearer_by_sub.get("alice") == Some(&1),
        "one ID-JAG, redeemed once, for all of alice's requests: {idp:?} {redeemed:?}"
    );
    let seen = upstream.seen().await?;
    ensure!(
        seen["actors"]
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|x| x == AGENT)),
        "the agent is named in act through the ID-JAG: {seen}"
    );

    // The upstream refuses alice's stored token (as when its provider
    // revoked it): the request that met the 401 says retry, and the next
    // one exchanges once. (`iat` has whole seconds: wait out the second.)
    // The new token lives 63 s: due in 3 s under the 60 s refresh margin.
    authorization_server.set_exchange_ttl(63).await?;
    let alice = stack.token("alice").await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    upstream.reject_tokens_issued_before_now("alice").await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refused = McpClient::connect(&stack.url("crm"), &alice).await;
    ensure!(refused.is_err(), "the stored token was refused upstream");
    let client = McpClient::connect(&stack.url("crm"), &alice).await?;
    let renewed = authorization_server.stats().await?;
    ensure!(
        renewed.jwt_bearer == 2,
        "the upstream's 401 led to exactly one new exchange: {renewed:?}"
    );
    ensure!(upstream.seen().await?["rejected"] == 1);

    // Due now: fifty concurrent calls, spread over both replicas, renew it
    // exactly once.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = (
        stack.decided(0, "crm", "tools/call"),
        stack.decided(1, "crm", "tools/call"),
    );
    let calls = (0..50).map(|_| client.call_tool("whoami", json!({})));
    for r in futures_util::future::join_all(calls).await {
        let r = r?;
        ensure!(McpClient::text(&r) == "alice", "{r:?}");
    }
    client.close().await?;
    ensure!(
        stack.decided(0, "crm", "tools/call") > before.0
            && stack.decided(1, "crm", "tools/call") > before.1,
        "both replicas decided some of the calls"
    );
    let (idp, redeemed) = (
        stack.idp.stats().await?,
        authorization_server.stats().await?,
    );
    ensure!(
        redeemed.jwt_bearer == 3 && idp.id_jag == 3,
        "fifty calls on two replicas, one renewal: {idp:?} {redeemed:?}"
    );

    // Deactivating alice drops her exchanged token (from Redis, so from
    // every replica); her calls are refused; reactivated, she gets a new one.
    ensure!(stored_exchange(&stack, "alice", "crm")?.is_some());
    let ops = stack.admin_token("ops", &["platform-admins"]).await?;
    stack.cli(1, &ops, &["user", "deactivate", "alice"], None)?;
    ensure!(
        stored_exchange(&stack, "alice", "crm")?.is_none(),
        "alice's exchanged token is gone from the vault"
    );
    for _ in 0..2 {
        let refused = post_json(&stack.url("crm"), Some(&alice), INITIALIZE, &[]).await?;
        ensure!(
            refused.status == 403 && refused.body.contains("deactivated"),
            "{} {}",
            refused.status,
            refused.body
        );
    }
    stack.cli(0, &ops, &["user", "reactivate", "alice"], None)?;
    for _ in 0..2 {
        ensure!(whoami(&stack, "crm", "alice").await? == "alice");
    }
    let redeemed = authorization_server.stats().await?;
    ensure!(
        redeemed.jwt_bearer == 4,
        "one new exchange after reactivation, shared by both replicas: {redeemed:?}"
    );
    let events = stack.audit_events()?;
    ensure!(
        events.iter().any(|e| e["action"] == "identity.delete"
            && e["actor"] == "ops"
            && e["before"]["source"] == "exchange"),
        "the drop is audited"
    );
    ensure!(
        events.iter().any(|e| e["action"] == "identity.refresh"
            && e["actor"] == "latchkey (token exchange)"
            && e["after"]["source"] == "exchange"
            && e["after"]["jti"].is_string()),
        "a renewal is an identity.refresh by the exchange, naming the new token's jti"
    );
    let decisions: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "decision" && e["user"] == "alice" && e["decision"] == "allow")
        .collect();
    ensure!(
        decisions.iter().all(|e| e["identity"]
            .as_str()
            .is_some_and(|i| i.starts_with("exchanged-"))),
        "alice's calls are attributed to her exchanged identity"
    );
    stack.assert_no_secret_in_logs()?;
    Ok(())
}
