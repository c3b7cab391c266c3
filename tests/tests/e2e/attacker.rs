//! Every finding of the 2026-12 adversarial review (SECURITY.md's table),
//! run in one scenario the way an attacker would run them one after
//! another against one deployment: a real Envoy loading the real `.wasm`,
//! and again behind Envoy's native ext_authz; a real `latchkey serve` whose
//! Check listener requires Envoy's client certificate; real Redis; real
//! upstreams (server-everything, auth-echo, oauth-mcp) and a real OAuth
//! provider; a `[policy]` that hides tools and resources; every process
//! logging at debug.
//!
//! Each finding's own test (named in SECURITY.md) proves the whole class;
//! this one shows that the secure answers hold together, in both modes,
//! in the order an attacker would try them. Every absence is read from the
//! same counter as a positive control. Where native ext_authz cannot give
//! the secure answer (it never sees the upstream's reply), the finding is
//! reported as that mode's known limit, as SECURITY.md documents it, and
//! the scenario checks the list of findings is complete either way.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use latchkey_e2e::attacker::{
    Caller, audit_stream_size, direct_check, forged_with_unknown_kid, listed_names, reply_shape,
    whoami_check,
};
use latchkey_e2e::client::{HttpReply, INITIALIZE, assert_jsonrpc_error, parse_sse, tools_call};
use latchkey_e2e::connect_client::{
    authorise, both, get, raw_client, set_cookie, sign_in, start_sign_in,
};
use latchkey_e2e::peers::{Idp, OauthMcp, start_provider_and_upstream};
use latchkey_e2e::scrape::scrape;
use latchkey_e2e::stack::{AuthzMode, ENVOY_CHECK_CLIENT, LATCHKEY_HTTP, random_hex};
use latchkey_e2e::{
    McpClient, Stack, StackOptions, eventually, open_sse, post_json, scenario_dir, send,
};
use serde_json::{Value, json};

/// The OAuth client Latchkey is at the `crm` provider, and the audience
/// `oauth-mcp` accepts.
const CRM_CLIENT: &str = "latchkey-crm";
/// The team's global OAuth identity behind the shared assignment `crm-team`.
const TEAM: &str = "crm-team-sa";

const POLICY: &str = r#"
[policy.hidden.tool]
style = "tool_result"
message = "MCP error -32602: Tool {name} not found"
[policy.hidden.resource]
code = -32602
message = "MCP error -32602: Resource {name} not found"

[[policy.grants]]
name = "everyone"
gateway = "e2e"
assignments = ["everything"]
users = ["*"]
tools = { allow = ["echo", "get-sum", "no-such-*"] }
resources = { allow = ["demo://resource/static/document/*"], deny = ["demo://resource/static/document/features.md"] }

[[policy.grants]]
name = "whoami-and-crm"
gateway = "e2e"
assignments = ["whoami", "crm", "crm-team"]
users = ["*"]
tools = { allow = ["whoami"] }
"#;

/// server-everything's documents: one the policy shows, and a spelling of
/// a dynamic resource it hides that a glob over the raw URI would match.
const VISIBLE: &str = "demo://resource/static/document/architecture.md";
const DOT_SEGMENTS: &str = "demo://resource/static/document/../../dynamic/text/1";

/// The `crm` server (oauth-mcp, its provider), a per-user assignment of it
/// and the team's shared one, and the connect page.
fn extra_config(provider: &Idp, upstream: &OauthMcp) -> String {
    format!(
        r#"
[connect]
public_url = "{LATCHKEY_HTTP}"
client_id = "latchkey-connect"

[[servers]]
name = "crm"
url = "{upstream}"
auth = {{ type = "static_header", header = "authorization", prefix = "Bearer " }}

[servers.oauth]
authorization_endpoint = "{authorize}"
token_endpoint = "{token}"
revocation_endpoint = "{revoke}"
client_id = "{CRM_CLIENT}"
issuer = "{issuer}"
authorization_response_iss_parameter_supported = true

[[gateways.assignments]]
name = "crm"
server = "crm"
scheme = "per_user"

[[gateways.assignments]]
name = "crm-team"
server = "crm"
scheme = "shared"
identity = "{TEAM}"
"#,
        upstream = upstream.url(),
        authorize = provider.authorize_url(),
        token = provider.token_url(),
        revoke = provider.revocation_url(),
        issuer = provider.issuer(),
    )
}

/// What one finding's attack got in this mode.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The secure answer SECURITY.md gives, asserted.
    Secure,
    /// This mode cannot give it; SECURITY.md's known limits say so.
    KnownLimit(&'static str),
}

const NATIVE_SEES_NO_ANSWER: &str = "native ext_authz never sees the upstream's answer (SECURITY.md, Known limits): use the Wasm filter";

/// The deployment under attack, and what the attacker holds: an ordinary
/// user's valid token (alice), and sessions opened with it.
struct Target {
    stack: Stack,
    mode: AuthzMode,
    provider: Idp,
    upstream: OauthMcp,
    alice: String,
    /// server-everything's session for alice, and the id of its first SSE
    /// event (its event store replays from there).
    everything_session: String,
    first_event: String,
}

impl Target {
    async fn start(mode: AuthzMode) -> Result<Target> {
        let name = format!("attacker_{mode:?}").to_lowercase();
        let (provider, upstream) = start_provider_and_upstream(
            &scenario_dir(&format!("{name}-peers"))?,
            env!("CARGO_BIN_EXE_oauth-mcp"),
            CRM_CLIENT,
        )?;
        let stack = Stack::start(
            &name,
            StackOptions {
                mode,
                everything: true,
                grpc_mtls: true,
                debug_logs: true,
                // Room for finding 3's megabyte: the body limit alone must
                // not be what stops it.
                max_body_bytes: 2 << 20,
                policy: Some(POLICY.to_owned()),
                extra_config: Some(extra_config(&provider, &upstream)),
                ..StackOptions::default()
            },
        )
        .await?;
        let alice = stack.token("alice").await?;
        let mut target = Target {
            stack,
            mode,
            provider,
            upstream,
            alice,
            everything_session: String::new(),
            first_event: String::new(),
        };
        let init = target.post("everything", INITIALIZE, &[]).await?;
        ensure!(
            init.status == 200,
            "initialize: {} {}",
            init.status,
            init.body
        );
        target.everything_session = init
            .header("mcp-session-id")
            .context("server-everything keeps sessions")?
            .to_owned();
        target.first_event = parse_sse(&init.body)?
            .into_iter()
            .find_map(|e| e.id)
            .context("server-everything numbers its events")?;
        let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string();
        let r = target.on_everything(&note).await?;
        ensure!(r.status == 202, "initialized: {} {}", r.status, r.body);
        Ok(target)
    }

    /// A POST of `body` to `assignment` with alice's token.
    async fn post(
        &self,
        assignment: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Result<HttpReply> {
        post_json(
            &self.stack.url(assignment),
            Some(&self.alice),
            body,
            headers,
        )
        .await
    }

    /// A POST on alice's server-everything session.
    async fn on_everything(&self, body: &str) -> Result<HttpReply> {
        self.post(
            "everything",
            body,
            &[
                ("mcp-session-id", &self.everything_session),
                ("mcp-protocol-version", "2025-11-25"),
            ],
        )
        .await
    }

    /// Requests Envoy sent to `server`'s upstream; a missing stat is an error.
    fn upstream(&self, server: &str) -> Result<u64> {
        self.stack.envoy.upstream_requests(server)
    }

    fn redis_keys(&self) -> Result<BTreeSet<String>> {
        let mut c = redis::Client::open(self.stack.redis.url())?.get_connection()?;
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c)?;
        Ok(keys.into_iter().collect())
    }

    fn connect_page(&self) -> String {
        format!("{}/connect/e2e", self.stack.replicas[0].http_url())
    }

    fn is_native(&self) -> bool {
        self.mode == AuthzMode::Native
    }
}

/// The one JSON-RPC message of a reply (SSE or JSON).
fn message(reply: &HttpReply) -> Result<Value> {
    let mut messages = reply.messages();
    ensure!(
        messages.len() == 1,
        "expected one message: {} {}",
        reply.status,
        reply.body
    );
    Ok(messages.remove(0))
}

fn read(uri: &str) -> String {
    json!({"jsonrpc":"2.0","id":7,"method":"resources/read","params":{"uri":uri}}).to_string()
}

/// 1: a resource URI whose dot segments lead the upstream's URL parser to
/// a hidden resource gets the hidden-resource answer for what it resolves
/// to; nothing reaches the upstream. Control: a visible document is read.
async fn resource_uri_spelled_past_the_policy(t: &Target) -> Result<Outcome> {
    let before = t.upstream("everything")?;
    let answer = message(&t.on_everything(&read(VISIBLE)).await?)?;
    ensure!(
        answer["result"]["contents"][0]["uri"] == VISIBLE,
        "{answer}"
    );
    ensure!(
        t.upstream("everything")? > before,
        "the control went upstream"
    );

    let before = t.upstream("everything")?;
    let reply = t.on_everything(&read(DOT_SEGMENTS)).await?;
    let answer = message(&reply)?;
    ensure!(reply.status == 200, "{} {}", reply.status, reply.body);
    ensure!(
        answer["error"]["message"]
            == "MCP error -32602: Resource demo://resource/dynamic/text/1 not found",
        "{answer}"
    );
    ensure!(
        t.upstream("everything")? == before,
        "the hidden resource was asked of the upstream"
    );
    Ok(Outcome::Secure)
}

/// 2: a process without Envoy's client certificate sends its own Check and
/// gets no answer, so no credential. Control: the same Check with Envoy's
/// certificate carries the credential.
async fn check_from_a_mesh_neighbour(t: &Target) -> Result<Outcome> {
    let credential = format!("Bearer {}", t.stack.whoami_secret);
    let pki = t
        .stack
        .grpc_pki
        .as_ref()
        .context("an mTLS Check listener")?;
    let envoys = pki.client(ENVOY_CHECK_CLIENT)?;
    let headers = direct_check(
        &t.stack,
        Caller::Tls(Some(&envoys)),
        whoami_check(&t.stack, &t.alice),
    )
    .await
    .map_err(|e| anyhow::anyhow!("Envoy's own certificate was refused: {e}"))?;
    ensure!(headers.iter().any(|(_, v)| *v == credential));
    for caller in [Caller::Plaintext, Caller::Tls(None)] {
        match direct_check(&t.stack, caller, whoami_check(&t.stack, &t.alice)).await {
            Ok(_) => bail!("a Check without Envoy's certificate was answered"),
            Err(e) => ensure!(!e.contains(&t.stack.whoami_secret), "{e}"),
        }
    }
    Ok(Outcome::Secure)
}

/// 3: one unauthenticated POST with a megabyte tool name is refused with
/// 413 and its id before any Check; the audit stream does not grow (behind
/// native ext_authz: by one small event without the value). Control: a
/// normal call afterwards grows it.
async fn megabyte_tool_name_without_a_token(t: &Target) -> Result<Outcome> {
    let url = t.stack.url("whoami");
    // Earlier findings' events are written asynchronously: let them land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = audit_stream_size(&t.stack)?;
    let upstream = t.upstream("whoami")?;
    let huge = tools_call(json!(3), &"x".repeat(1_000_000));
    let r = post_json(&url, None, &huge, &[]).await?;
    ensure!(r.status == 413, "{} {:.300}", r.status, r.body);
    assert_jsonrpc_error(&r.body, &json!(3), -32600);
    tokio::time::sleep(Duration::from_millis(300)).await;
    if t.is_native() {
        // Behind native ext_authz the service itself refuses it: one small
        // bad_request event, never the value.
        let last = eventually("the refusal's event", async || {
            let last = t.stack.audit_events()?.pop().unwrap_or_default();
            Ok(if last["reason"] == "bad_request" {
                Ok(last)
            } else {
                Err(last.to_string())
            })
        })
        .await?;
        let text = last.to_string();
        ensure!(
            text.len() <= 1024 && !text.contains("xxxxxxxxxx"),
            "{text:.300}"
        );
        ensure!(audit_stream_size(&t.stack)?.0 == before.0 + 1);
    } else {
        ensure!(
            audit_stream_size(&t.stack)? == before,
            "the audit stream grew"
        );
    }
    ensure!(t.upstream("whoami")? == upstream);

    let r = post_json(&url, Some(&t.alice), &tools_call(json!(4), "whoami"), &[]).await?;
    ensure!(
        r.body.contains("Session ID is required"),
        "the control call was answered by the upstream: {} {}",
        r.status,
        r.body
    );
    eventually("the control call audited", async || {
        let now = audit_stream_size(&t.stack)?;
        Ok(if now.0 > before.0 {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        })
    })
    .await?;
    Ok(Outcome::Secure)
}

/// 4: `tools/list` with the id spelled `7.0` (the upstream answers `7`)
/// reaches the caller trimmed to the names the policy shows.
async fn list_under_another_id_spelling(t: &Target) -> Result<Outcome> {
    if t.is_native() {
        return Ok(Outcome::KnownLimit(NATIVE_SEES_NO_ANSWER));
    }
    let before = t.upstream("everything")?;
    let reply = t
        .on_everything(r#"{"jsonrpc":"2.0","id":7.0,"method":"tools/list"}"#)
        .await?;
    ensure!(
        t.upstream("everything")? > before,
        "the list came from the upstream"
    );
    ensure!(
        listed_names(&message(&reply)?, "tools", "name") == ["echo", "get-sum"],
        "{}",
        reply.body
    );
    ensure!(!reply.body.contains("get-env"), "{}", reply.body);
    Ok(Outcome::Secure)
}

/// 5: resuming the session's stream with `Last-Event-ID` replays earlier
/// answers, the list of finding 4 among them: trimmed too.
async fn replay_of_earlier_lists(t: &Target) -> Result<Outcome> {
    if t.is_native() {
        return Ok(Outcome::KnownLimit(NATIVE_SEES_NO_ANSWER));
    }
    let token = format!("Bearer {}", t.alice);
    let mut replay = open_sse(
        "GET",
        &t.stack.url("everything"),
        &[
            ("authorization", token.as_str()),
            ("accept", "text/event-stream"),
            ("mcp-session-id", t.everything_session.as_str()),
            ("mcp-protocol-version", "2025-11-25"),
            ("last-event-id", t.first_event.as_str()),
        ],
        Vec::new(),
    )
    .await?;
    ensure!(replay.status == 200);
    let mut lists = 0;
    while let Some(event) = replay.next_event(Duration::from_secs(5)).await? {
        ensure!(!event.data.contains("get-env"), "replayed: {}", event.data);
        if event.data.contains("\"tools\":[") {
            // The control: the replay happened, with the visible names.
            ensure!(listed_names(&event.json()?, "tools", "name") == ["echo", "get-sum"]);
            lists += 1;
            break;
        }
    }
    ensure!(lists == 1, "the earlier list was replayed");
    Ok(Outcome::Secure)
}

/// 6: cookieless visits to the connect page store nothing. Control: a
/// sign-in the identity provider verified stores a session.
async fn cookieless_visits_to_the_connect_page(t: &Target) -> Result<Outcome> {
    let c = raw_client()?;
    let before = t.redis_keys()?;
    for _ in 0..5 {
        let r = c.get(t.connect_page()).send().await?;
        ensure!(r.status() == 303, "{}", r.status());
    }
    ensure!(t.redis_keys()? == before, "a visit wrote to Redis");
    let session = sign_in(&c, &t.connect_page(), "alice").await?;
    t.stack
        .remember_secret(session.split_once('=').map(|(_, v)| v).unwrap_or_default());
    let after = t.redis_keys()?;
    ensure!(
        after
            .difference(&before)
            .any(|k| k.contains(":connect:session:")),
        "a sign-in stores its session"
    );
    Ok(Outcome::Secure)
}

/// 7: an `Mcp-Session-Id` too long, or with a control character, is
/// refused before any Check. Control: alice's real session id works
/// (findings 1, 4 and 14 use it).
async fn absurd_session_ids(t: &Target) -> Result<Outcome> {
    let before = t.upstream("everything")?;
    let ping = json!({"jsonrpc":"2.0","id":9,"method":"ping"}).to_string();
    let long = "s".repeat(300);
    for (sid, status) in [(long.as_str(), 413), ("a\tb", 400)] {
        let r = t
            .post("everything", &ping, &[("mcp-session-id", sid)])
            .await?;
        ensure!(r.status == status, "{status}: {} {}", r.status, r.body);
        assert_jsonrpc_error(&r.body, &json!(9), -32600);
    }
    ensure!(t.upstream("everything")? == before);
    let r = t.on_everything(&ping).await?;
    ensure!(r.status == 200, "{} {}", r.status, r.body);
    ensure!(t.upstream("everything")? > before);
    Ok(Outcome::Secure)
}

/// 8: an authorization answer for `crm` delivered at another redirect
/// address (the sign-in's) is refused before any code exchange. Control:
/// the same answer at crm's own address connects crm.
async fn authorization_answer_at_another_address(t: &Target) -> Result<Outcome> {
    let c = raw_client()?;
    let http = t.stack.replicas[0].http_url();
    let session = sign_in(&c, &t.connect_page(), "alice").await?;
    t.stack
        .remember_secret(session.split_once('=').map(|(_, v)| v).unwrap_or_default());
    let (callback, flow) = authorise(&c, &http, &session, "crm", "alice").await?;
    if let Some(code) = latchkey_e2e::connect_client::query_param(&callback, "code") {
        t.stack.remember_secret(&code);
    }
    let exchanges = t.provider.stats().await?.authorization_code;
    let elsewhere = callback.replace("/connect/callback/crm?", "/connect/callback?");
    let (status, body) = get(&c, &elsewhere, &both(&session, &flow)).await?;
    ensure!(status == 400, "{status}: {body}");
    ensure!(
        body.contains("This answer came from the wrong provider"),
        "{body}"
    );
    ensure!(t.provider.stats().await?.authorization_code == exchanges);
    let (status, body) = get(&c, &callback, &both(&session, &flow)).await?;
    ensure!(status == 303, "{status}: {body}");
    ensure!(t.provider.stats().await?.authorization_code == exchanges + 1);
    Ok(Outcome::Secure)
}

/// 9: a client reports the team's shared identity as refused
/// (`x-latchkey-rejected-credentials`) to force its refresh: nothing is
/// refreshed. Control (Wasm: only the filter sees the upstream's 401): the
/// upstream really refusing alice's own token refreshes it, read from the
/// same provider counter.
async fn forged_refused_credential_report(t: &Target) -> Result<Outcome> {
    let tokens = t
        .provider
        .code_flow_without_browser("alice", CRM_CLIENT)
        .await?
        .tokens;
    let (access, refresh) = (
        tokens["access_token"].as_str().context("an access token")?,
        tokens["refresh_token"]
            .as_str()
            .context("a refresh token")?,
    );
    t.stack.remember_secret(access);
    t.stack.remember_secret(refresh);
    let ops = t.stack.admin_token("ops", &["platform-admins"]).await?;
    t.stack.cli(
        0,
        &ops,
        &[
            "identity",
            "create",
            "--oauth",
            "--server",
            "crm",
            "--id",
            TEAM,
            "--global",
            "--expires-in",
            "3600",
        ],
        Some(&format!("{access}\n{refresh}\n")),
    )?;
    let refreshed = t.provider.stats().await?.refresh_token;
    let bob = t.stack.token("bob").await?;
    for _ in 0..3 {
        let r = post_json(
            &t.stack.url("crm-team"),
            Some(&bob),
            INITIALIZE,
            &[("x-latchkey-rejected-credentials", &format!("{TEAM}@1"))],
        )
        .await?;
        ensure!(r.status == 200, "{} {}", r.status, r.body);
    }
    ensure!(
        t.provider.stats().await?.refresh_token == refreshed,
        "a client's report refreshed the team's token"
    );
    if t.is_native() {
        return Ok(Outcome::Secure);
    }
    // Alice's own crm identity (connected at finding 8) is refreshable on
    // a refusal; a shared one only when due.
    let client = McpClient::connect(&t.stack.url("crm"), &t.alice).await?;
    // The provider's `iat` has second granularity.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    t.upstream.reject_tokens_issued_before_now("alice").await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ensure!(
        client.call_tool("whoami", json!({})).await.is_err(),
        "the upstream refused alice's token"
    );
    // The next request carries the filter's report of the refusal.
    let again = client.call_tool("whoami", json!({})).await?;
    ensure!(McpClient::text(&again) == "alice", "{again:?}");
    let stats = t.provider.stats().await?;
    ensure!(
        stats.refresh_token == refreshed + 1,
        "the upstream's own 401 refreshed alice's token once: {stats:?}"
    );
    client.close().await?;
    Ok(Outcome::Secure)
}

/// 10: tokens with made-up `kid`s are refused and do not empty the
/// verified-token cache: alice's token is still answered from memory.
/// Control: a token the verifier has not seen is a miss.
async fn forged_kids_to_flush_the_token_cache(t: &Target) -> Result<Outcome> {
    let url = t.stack.url("whoami");
    let lookups = async || -> Result<(f64, f64)> {
        let s = scrape(&t.stack).await?;
        Ok((
            s.value("latchkey_cache_hits_total{cache=\"verified_token\"}")
                .context("no verified_token hits series")?,
            s.value("latchkey_cache_misses_total{cache=\"verified_token\"}")
                .context("no verified_token misses series")?,
        ))
    };
    ensure!(
        post_json(&url, Some(&t.alice), INITIALIZE, &[])
            .await?
            .status
            == 200
    );
    let (hits, misses) = lookups().await?;
    for _ in 0..3 {
        let forged = forged_with_unknown_kid("mallory", &t.stack.gateway_url());
        ensure!(
            post_json(&url, Some(&forged), INITIALIZE, &[])
                .await?
                .status
                == 401
        );
    }
    ensure!(
        post_json(&url, Some(&t.alice), INITIALIZE, &[])
            .await?
            .status
            == 200
    );
    let (hits_now, misses_now) = lookups().await?;
    ensure!(
        (hits_now, misses_now) == (hits + 1.0, misses + 3.0),
        "alice's token was forgotten: hits {hits} → {hits_now}, misses {misses} → {misses_now}"
    );
    let fresh = t
        .stack
        .token_with(
            &latchkey_e2e::TokenRequest::new("alice", &t.stack.gateway_url())
                .claim("n", json!(random_hex())),
        )
        .await?;
    ensure!(post_json(&url, Some(&fresh), INITIALIZE, &[]).await?.status == 200);
    ensure!(lookups().await? == (hits_now, misses_now + 1.0));
    Ok(Outcome::Secure)
}

/// 11: a connect-page session cookie planted in the browser is never
/// adopted: the page still asks to sign in, stores nothing, and signing in
/// mints a new session. Control: that new session opens the page.
async fn planted_session_cookie(t: &Target) -> Result<Outcome> {
    let c = raw_client()?;
    let planted = format!("latchkey_connect={}", random_hex());
    let before = t.redis_keys()?;
    let r = c
        .get(t.connect_page())
        .header("cookie", &planted)
        .send()
        .await?;
    ensure!(
        r.status() == 303,
        "a planted session was taken: {}",
        r.status()
    );
    ensure!(t.redis_keys()? == before);
    let (callback, flow) = start_sign_in(&c, &t.connect_page(), "alice").await?;
    let r = c
        .get(callback)
        .header("cookie", both(&planted, &flow))
        .send()
        .await?;
    ensure!(r.status() == 303);
    let minted = set_cookie(&r, "latchkey_connect")?;
    t.stack
        .remember_secret(minted.split_once('=').map(|(_, v)| v).unwrap_or_default());
    ensure!(minted != planted, "the planted session was adopted");
    let (status, page) = get(&c, &t.connect_page(), &minted).await?;
    ensure!(
        status == 200 && page.contains("Connect your accounts"),
        "{status}"
    );
    let (status, _) = get(&c, &t.connect_page(), &planted).await?;
    ensure!(status == 303, "the planted value opens nothing");
    Ok(Outcome::Secure)
}

/// 12: a DELETE carrying a body is refused before the upstream. Control:
/// the same DELETE without a body is the upstream's to answer.
async fn delete_with_a_body(t: &Target) -> Result<Outcome> {
    let url = t.stack.url("everything");
    let bearer = format!("Bearer {}", t.alice);
    let headers = [
        ("authorization", bearer.as_str()),
        ("mcp-session-id", "not-a-session-of-the-upstream"),
        ("mcp-protocol-version", "2025-11-25"),
        ("content-type", "application/json"),
    ];
    let before = t.upstream("everything")?;
    let r = send(
        "DELETE",
        &url,
        &headers,
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get-env"}}"#.to_vec(),
    )
    .await?;
    ensure!(r.status == 400, "{} {}", r.status, r.body);
    ensure!(r.body.contains("must not carry a body"), "{}", r.body);
    ensure!(t.upstream("everything")? == before);
    let r = send("DELETE", &url, &headers[..3], Vec::new()).await?;
    ensure!(!r.body.contains("must not carry a body"), "{}", r.body);
    ensure!(
        t.upstream("everything")? > before,
        "the control went upstream"
    );
    Ok(Outcome::Secure)
}

/// 13: with every process at debug, no log prints an injected credential.
/// Control: the credential really passed through them to the upstream.
/// (The scan itself runs at the end of the scenario, over every log.)
async fn credential_in_debug_logs(t: &Target) -> Result<Outcome> {
    let client = McpClient::connect(&t.stack.url("whoami"), &t.alice).await?;
    let result = client.call_tool("whoami", json!({})).await?;
    ensure!(McpClient::text(&result) == format!("Bearer {}", t.stack.whoami_secret));
    client.close().await?;
    Ok(Outcome::Secure)
}

/// 14: a call to a hidden tool is answered exactly as a call to an absent
/// one (status, content type, session header, body but for the name),
/// without reaching the upstream. Control: the absent one reaches it.
async fn hidden_tool_told_from_an_absent_one(t: &Target) -> Result<Outcome> {
    let call = |name: &str| tools_call(json!(14), name);
    let before = t.upstream("everything")?;
    let hidden = t.on_everything(&call("get-env")).await?;
    ensure!(
        t.upstream("everything")? == before,
        "the hidden call reached the upstream"
    );
    let absent = t.on_everything(&call("no-such-tool")).await?;
    ensure!(
        t.upstream("everything")? > before,
        "the absent call went upstream"
    );
    let (hidden, absent) = (
        reply_shape(&hidden, "get-env")?,
        reply_shape(&absent, "no-such-tool")?,
    );
    ensure!(hidden == absent, "hidden {hidden:?}\nabsent {absent:?}");
    Ok(Outcome::Secure)
}

/// 15: taking the id the config names for a shared assignment as a
/// private identity, while the operator replaces it. Control: the same
/// person creates an identity under another id.
async fn squatting_a_reserved_identity_id(t: &Target) -> Result<Outcome> {
    let ops = t.stack.admin_token("ops", &["platform-admins"]).await?;
    let mallory = t.stack.admin_token("mallory", &[]).await?;
    t.stack
        .cli(0, &ops, &["identity", "delete", "late-sa"], None)?;
    let secret = format!("mallory-{}", random_hex());
    t.stack.remember_secret(&secret);
    let create = |id: &str| {
        t.stack.cli(
            0,
            &mallory,
            &["identity", "create", "--server", "whoami", "--id", id],
            Some(&secret),
        )
    };
    let refused = create("late-sa").err().context("mallory took late-sa")?;
    ensure!(format!("{refused:#}").contains("reserved"), "{refused:#}");
    ensure!(create(&format!("mallory-{}", random_hex()))?[0]["owner"] == "mallory");
    Ok(Outcome::Secure)
}

/// 16: an upstream answering 401 with a challenge pointing elsewhere: the
/// client gets a JSON-RPC error with its id and no challenge. Control:
/// Latchkey's own 401 keeps its `resource_metadata`.
async fn upstream_steers_oauth_discovery(t: &Target) -> Result<Outcome> {
    if t.is_native() {
        return Ok(Outcome::KnownLimit(NATIVE_SEES_NO_ANSWER));
    }
    let url = t.stack.url("whoami");
    let own = post_json(&url, None, &tools_call(json!(1), "whoami"), &[]).await?;
    ensure!(own.status == 401);
    ensure!(
        own.header("www-authenticate")
            .is_some_and(|c| c.contains("resource_metadata=")),
        "{own:?}"
    );
    let init = t.post("whoami", INITIALIZE, &[]).await?;
    let sid = init
        .header("mcp-session-id")
        .context("auth-echo keeps sessions")?
        .to_owned();
    let session = [
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string();
    t.post("whoami", &note, &session).await?;
    t.stack
        .echo
        .challenge(
            401,
            r#"Bearer resource_metadata="http://evil.example/.well-known/oauth-protected-resource""#,
        )
        .await?;
    let before = t.stack.echo.requests().await?;
    let reply = t
        .post("whoami", &tools_call(json!("c16"), "whoami"), &session)
        .await?;
    t.stack.echo.challenge(0, "").await?;
    ensure!(
        t.stack.echo.requests().await? > before,
        "the upstream answered 401 itself"
    );
    ensure!(reply.status == 200, "{} {}", reply.status, reply.body);
    ensure!(reply.header("www-authenticate").is_none());
    ensure!(!reply.body.contains("evil"), "{}", reply.body);
    assert_jsonrpc_error(&reply.body, &json!("c16"), -32603);
    Ok(Outcome::Secure)
}

async fn every_finding(mode: AuthzMode) -> Result<()> {
    let t = Target::start(mode).await?;
    let mut outcomes = Vec::new();
    macro_rules! attack {
        ($n:expr, $f:ident) => {
            let outcome = $f(&t)
                .await
                .with_context(|| format!("finding {} ({}), {mode:?}", $n, stringify!($f)))?;
            eprintln!(
                "finding {:>2} {:<45} {mode:?}: {outcome:?}",
                $n,
                stringify!($f)
            );
            outcomes.push(($n, outcome));
        };
    }
    attack!(1, resource_uri_spelled_past_the_policy);
    attack!(2, check_from_a_mesh_neighbour);
    attack!(3, megabyte_tool_name_without_a_token);
    attack!(4, list_under_another_id_spelling);
    attack!(5, replay_of_earlier_lists);
    attack!(6, cookieless_visits_to_the_connect_page);
    attack!(7, absurd_session_ids);
    attack!(8, authorization_answer_at_another_address);
    attack!(9, forged_refused_credential_report);
    attack!(10, forged_kids_to_flush_the_token_cache);
    attack!(11, planted_session_cookie);
    attack!(12, delete_with_a_body);
    attack!(13, credential_in_debug_logs);
    attack!(14, hidden_tool_told_from_an_absent_one);
    attack!(15, squatting_a_reserved_identity_id);
    attack!(16, upstream_steers_oauth_discovery);

    let numbers: Vec<u32> = outcomes.iter().map(|(n, _)| *n).collect();
    ensure!(
        numbers == (1..=16).collect::<Vec<_>>(),
        "every finding, once"
    );
    let limits: Vec<u32> = outcomes
        .iter()
        .filter(|(_, o)| *o != Outcome::Secure)
        .map(|(n, _)| *n)
        .collect();
    let expected: &[u32] = match mode {
        AuthzMode::Wasm => &[],
        AuthzMode::Native => &[4, 5, 16],
    };
    ensure!(
        limits == expected,
        "{mode:?}: known limits {limits:?}, SECURITY.md documents {expected:?}"
    );
    let scanned = t.stack.assert_no_secret_in_logs()?;
    ensure!(scanned > 0, "the secret scan read no log");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_finding_of_the_review_gets_the_secure_answer_through_the_wasm_filter() -> Result<()>
{
    every_finding(AuthzMode::Wasm).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_finding_of_the_review_gets_the_secure_answer_behind_native_ext_authz_but_its_known_limits()
-> Result<()> {
    every_finding(AuthzMode::Native).await
}
