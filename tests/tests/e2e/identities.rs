//! Identities, users, connections, agents and master keys, end to end: the
//! `latchkey` CLI against the admin API of real `latchkey serve` replicas
//! sharing one real Redis, and requests through a real Envoy running the
//! Wasm filter, balanced round-robin over the replicas.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use latchkey_e2e::client::{INITIALIZE, assert_jsonrpc_error};
use latchkey_e2e::stack::random_hex;
use latchkey_e2e::{McpClient, RedisTopology, Stack, StackOptions, post_json};
use serde_json::{Value, json};

const ADMINS: &[&str] = &["platform-admins"];

/// `latchkey identity create --server whoami --id <id>` on replica `n` as
/// `token`'s owner, the secret on stdin; the created identity.
fn create(stack: &Stack, n: usize, token: &str, id: &str, secret: &str) -> Result<Value> {
    let out = stack.cli(
        n,
        token,
        &["identity", "create", "--server", "whoami", "--id", id],
        Some(secret),
    )?;
    out.into_iter()
        .next()
        .context("identity create printed nothing")
}

/// `latchkey connection use --gateway e2e --server whoami --identity <id>`
/// on replica `n` as `token`'s owner.
fn connect(stack: &Stack, n: usize, token: &str, id: &str) -> Result<Vec<Value>> {
    stack.cli(
        n,
        token,
        &[
            "connection",
            "use",
            "--gateway",
            "e2e",
            "--server",
            "whoami",
            "--identity",
            id,
        ],
        None,
    )
}

/// A stack and the three tokens most scenarios here use: an operator with
/// every capability, alice on the admin API, and alice at the gateway.
struct Scene {
    stack: Stack,
    ops: String,
    alice_admin: String,
    alice: String,
}

async fn scene(scenario: &str, opts: StackOptions) -> Result<Scene> {
    let stack = Stack::start(scenario, opts).await?;
    Ok(Scene {
        ops: stack.admin_token("ops", ADMINS).await?,
        alice_admin: stack.admin_token("alice", &[]).await?,
        alice: stack.token("alice").await?,
        stack,
    })
}

/// Two replicas on `topology`.
fn two_replicas(topology: RedisTopology) -> StackOptions {
    StackOptions {
        replicas: 2,
        redis_topology: topology,
        ..Default::default()
    }
}

/// Alice's own identity `id` for `whoami` with a fresh secret (remembered
/// as a secret of the run), created through replica 0 and connected
/// through replica `connect_on`; returns the secret.
fn alices_identity(scene: &Scene, id: &str, connect_on: usize) -> Result<String> {
    let secret = format!("{id}-{}", random_hex());
    scene.stack.remember_secret(&secret);
    create(&scene.stack, 0, &scene.alice_admin, id, &secret)?;
    connect(&scene.stack, connect_on, &scene.alice_admin, id)?;
    Ok(secret)
}

/// Runs `command` (blocking) while `replica` is frozen, thawing it 700 ms
/// in; returns what the command returned and whether it returned only after
/// the thaw (it waited for the frozen replica).
fn while_frozen<T>(replica: &latchkey_e2e::Process, command: impl FnOnce() -> T) -> (T, bool) {
    replica.pause(true);
    std::thread::scope(|scope| {
        let thaw = scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(700));
            let at = std::time::Instant::now();
            replica.pause(false);
            at
        });
        let out = command();
        let answered = std::time::Instant::now();
        let resumed = thaw.join().expect("the thaw thread panicked");
        (out, answered > resumed)
    })
}

/// The status and body of an `initialize` on `assignment` with `token`:
/// every request is checked, so this is the decision for that caller.
async fn initialize(stack: &Stack, assignment: &str, token: &str) -> Result<(u16, String)> {
    let r = post_json(&stack.url(assignment), Some(token), INITIALIZE, &[]).await?;
    Ok((r.status, r.body))
}

/// How many decisions replica `n` has logged so far.
fn decisions(stack: &Stack, n: usize) -> usize {
    stack.replicas[n]
        .process
        .as_ref()
        .map(|p| {
            p.log_text()
                .lines()
                .filter(|l| l.contains("\"latchkey::decision\""))
                .count()
        })
        .unwrap_or(0)
}

/// Sends one request per replica (Envoy balances round-robin), checks each
/// got `status` with `needle` in the body, and that every replica decided one.
async fn expect_on_every_replica(
    stack: &Stack,
    assignment: &str,
    token: &str,
    status: u16,
    needle: &str,
) -> Result<()> {
    let before: Vec<usize> = (0..stack.replicas.len())
        .map(|n| decisions(stack, n))
        .collect();
    for _ in 0..stack.replicas.len() {
        let (got, body) = initialize(stack, assignment, token).await?;
        ensure!(
            got == status && body.contains(needle),
            "{assignment}: expected {status} with {needle:?}, got {got}: {body}"
        );
        if status != 200 {
            assert_jsonrpc_error(&body, &json!(1), -32003);
        }
    }
    // Decisions are logged right after they are answered.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (n, b) in before.iter().enumerate() {
        ensure!(
            decisions(stack, n) > *b,
            "replica {n} took no decision: round-robin did not reach it"
        );
    }
    Ok(())
}

/// Asserts the audit stream holds `(action, actor, target)` in this order
/// (other events may come between), each with no secret in it.
fn assert_audited(stack: &Stack, expected: &[(&str, &str, &str)], secrets: &[&str]) -> Result<()> {
    let events = stack.audit_events()?;
    let mut at = 0;
    for (action, actor, target) in expected {
        let found = events[at..]
            .iter()
            .position(|e| e["action"] == *action && e["actor"] == *actor && e["target"] == *target);
        let Some(i) = found else {
            anyhow::bail!(
                "no audit event {action} by {actor} on {target} after position {at}; events: {}",
                serde_json::to_string_pretty(&events)?
            );
        };
        let e = &events[at + i];
        ensure!(e["event"] == "lifecycle" && e["time"].is_string(), "{e}");
        at += i + 1;
    }
    for e in &events {
        let text = e.to_string();
        for s in secrets {
            ensure!(!text.contains(s), "an audit event carries a secret: {text}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_and_enable_take_effect_on_every_replica() -> Result<()> {
    let stack = Stack::start(
        "replicas_disable",
        StackOptions {
            replicas: 2,
            ..Default::default()
        },
    )
    .await?;
    let ops = stack.admin_token("ops", ADMINS).await?;
    let alice_admin = stack.admin_token("alice", &[]).await?;
    let alice = stack.token("alice").await?;
    let secret = format!("alice-pat-{}", random_hex());
    stack.remember_secret(&secret);

    // Alice brings her own identity (through replica 0) and connects it
    // (through replica 1).
    let created = create(&stack, 0, &alice_admin, "alice-whoami", &secret)?;
    assert_eq!(created["owner"], "alice");
    assert_eq!(created["availability"], "private");
    assert_eq!(created["status"], "enabled");
    assert_eq!(created["key_id"], "e2e1");
    assert!(!created.to_string().contains(&secret));
    connect(&stack, 1, &alice_admin, "alice-whoami")?;

    // The upstream sees alice's own credential, not her token.
    let client = McpClient::connect(&stack.url("whoami-mine"), &alice).await?;
    let result = client.call_tool("whoami", json!({})).await?;
    assert_eq!(McpClient::text(&result), format!("Bearer {secret}"));
    client.close().await?;
    expect_on_every_replica(&stack, "whoami-mine", &alice, 200, "").await?;

    // Warm: the allowed path makes no Redis round trip on either replica.
    // Heartbeats, and the audit writer's batches (queued off the request path).
    let background = [
        "info", "hset", "hgetall", "hdel", "ping", "evalsha", "eval", "xadd", "hget",
    ];
    let before = stack.redis.calls_except(&background)?;
    for _ in 0..10 {
        let (status, body) = initialize(&stack, "whoami-mine", &alice).await?;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        stack.redis.calls_except(&background)?,
        before,
        "Redis commands on the cached allowed path"
    );

    // Identity.
    stack.cli(0, &ops, &["identity", "disable", "alice-whoami"], None)?;
    expect_on_every_replica(&stack, "whoami-mine", &alice, 403, "disabled").await?;
    stack.cli(1, &ops, &["identity", "enable", "alice-whoami"], None)?;
    expect_on_every_replica(&stack, "whoami-mine", &alice, 200, "").await?;

    // User: deactivation stops every gateway path, shared ones too.
    stack.cli(1, &ops, &["user", "deactivate", "alice"], None)?;
    expect_on_every_replica(&stack, "whoami-mine", &alice, 403, "deactivated").await?;
    expect_on_every_replica(&stack, "whoami", &alice, 403, "deactivated").await?;
    let refused = stack.cli_refused(0, &alice_admin, &["identity", "list"])?;
    assert!(refused.contains("deactivated"), "{refused}");
    stack.cli(0, &ops, &["user", "reactivate", "alice"], None)?;
    expect_on_every_replica(&stack, "whoami-mine", &alice, 200, "").await?;

    // Connection: alice turns her own off and on.
    stack.cli(
        0,
        &alice_admin,
        &["connection", "disable", "--gateway", "e2e"],
        None,
    )?;
    expect_on_every_replica(&stack, "whoami-mine", &alice, 403, "connection").await?;
    stack.cli(
        1,
        &alice_admin,
        &["connection", "enable", "--gateway", "e2e"],
        None,
    )?;
    expect_on_every_replica(&stack, "whoami-mine", &alice, 200, "").await?;

    // Agent: the client alice's token was issued to.
    stack.cli(1, &ops, &["agent", "disable", "e2e-agent"], None)?;
    expect_on_every_replica(&stack, "whoami-mine", &alice, 403, "agent 'e2e-agent'").await?;
    let other_agent = stack
        .token_with(&latchkey_e2e::TokenRequest::new("alice", &stack.gateway_url()).client("other"))
        .await?;
    expect_on_every_replica(&stack, "whoami-mine", &other_agent, 200, "").await?;
    stack.cli(0, &ops, &["agent", "enable", "e2e-agent"], None)?;
    expect_on_every_replica(&stack, "whoami-mine", &alice, 200, "").await?;

    let listed = stack.cli(0, &alice_admin, &["connection", "list"], None)?;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["identities"]["whoami"], "alice-whoami");

    assert_audited(
        &stack,
        &[
            ("identity.create", "alice", "alice-whoami"),
            ("connection.use_identity", "alice", "e2e/alice"),
            ("identity.disable", "ops", "alice-whoami"),
            ("identity.enable", "ops", "alice-whoami"),
            ("user.deactivate", "ops", "alice"),
            ("user.reactivate", "ops", "alice"),
            ("connection.disable", "alice", "e2e/alice"),
            ("connection.enable", "alice", "e2e/alice"),
            ("agent.disable", "ops", "e2e-agent"),
            ("agent.enable", "ops", "e2e-agent"),
        ],
        &[&secret],
    )?;
    let disable = stack
        .audit_events()?
        .into_iter()
        .find(|e| e["action"] == "identity.disable")
        .context("identity.disable event")?;
    assert_eq!(disable["before"]["status"], "enabled", "{disable}");
    assert_eq!(disable["after"]["status"], "disabled", "{disable}");
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_identities_stay_private_and_global_ones_are_shared() -> Result<()> {
    let stack = Stack::start("private_global", StackOptions::default()).await?;
    let ops = stack.admin_token("ops", ADMINS).await?;
    let alice_admin = stack.admin_token("alice", &[]).await?;
    let bob_admin = stack.admin_token("bob", &[]).await?;
    let (alice, bob, ops_user) = (
        stack.token("alice").await?,
        stack.token("bob").await?,
        stack.token("ops").await?,
    );
    let secret = format!("alice-private-{}", random_hex());
    stack.remember_secret(&secret);
    create(&stack, 0, &alice_admin, "alice-pat", &secret)?;
    let use_it = |user: &'static str| {
        [
            "connection",
            "use",
            "--gateway",
            "e2e",
            "--server",
            "whoami",
            "--identity",
            "alice-pat",
            "--user",
            user,
        ]
    };

    // Nobody else can use it: not bob, not an administrator (for himself or for bob).
    let refused = stack.cli_refused(0, &bob_admin, &use_it("bob"))?;
    assert!(refused.contains("private to its owner"), "{refused}");
    for user in ["ops", "bob"] {
        let refused = stack.cli_refused(0, &ops, &use_it(user))?;
        assert!(refused.contains("private to its owner"), "{refused}");
    }
    // Bob cannot even look at it; the administrator sees metadata, never the secret.
    let refused = stack.cli_refused(0, &bob_admin, &["identity", "show", "alice-pat"])?;
    assert!(refused.contains("'identities:manage'"), "{refused}");
    let shown = stack.cli(0, &ops, &["identity", "show", "alice-pat"], None)?;
    assert_eq!(shown[0]["owner"], "alice");
    assert!(!shown[0].to_string().contains(&secret));
    // Missing capabilities are named.
    let refused = stack.cli_refused(0, &bob_admin, &["user", "deactivate", "alice"])?;
    assert!(refused.contains("'users:manage'"), "{refused}");
    let refused = stack.cli_refused(0, &alice_admin, &["identity", "make-global", "alice-pat"])?;
    assert!(refused.contains("'identities:manage'"), "{refused}");
    let refused = stack.cli_refused(0, &bob_admin, &["keys", "list"])?;
    assert!(refused.contains("'keys:manage'"), "{refused}");
    // A gateway token is not an admin token.
    let refused = stack.cli_refused(0, &bob, &["whoami"])?;
    assert!(refused.contains("audience"), "{refused}");

    // Alice herself can.
    stack.cli(0, &alice_admin, &use_it("alice"), None)?;
    let (status, body) = initialize(&stack, "whoami-mine", &alice).await?;
    assert_eq!(status, 200, "{body}");

    // Made global, bob may select it; made private again, the gateway refuses
    // bob even though his connection still names it, and alice keeps it.
    stack.cli(0, &ops, &["identity", "make-global", "alice-pat"], None)?;
    stack.cli(0, &bob_admin, &use_it("bob"), None)?;
    let (status, body) = initialize(&stack, "whoami-mine", &bob).await?;
    assert_eq!(status, 200, "{body}");
    stack.cli(0, &ops, &["identity", "make-private", "alice-pat"], None)?;
    let (status, body) = initialize(&stack, "whoami-mine", &bob).await?;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("private to its owner"), "{body}");
    let (status, body) = initialize(&stack, "whoami-mine", &alice).await?;
    assert_eq!(status, 200, "{body}");
    // The administrator has no connection and gets none through the gateway.
    let (status, body) = initialize(&stack, "whoami-mine", &ops_user).await?;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("consent needed"), "{body}");

    // Global identities back shared assignments for everyone.
    for token in [&alice, &bob, &ops_user] {
        let (status, body) = initialize(&stack, "whoami", token).await?;
        assert_eq!(status, 200, "{body}");
    }
    // Listing: your own by default, everyone's with the capability.
    let mine = stack.cli(0, &bob_admin, &["identity", "list"], None)?;
    assert!(mine.is_empty(), "{mine:?}");
    let all = stack.cli(0, &ops, &["identity", "list", "--owner", "*"], None)?;
    assert!(all.len() >= 4, "alice-pat and three shared: {all:?}");

    assert_audited(
        &stack,
        &[
            ("identity.create", "alice", "alice-pat"),
            ("connection.use_identity", "alice", "e2e/alice"),
            ("identity.make_global", "ops", "alice-pat"),
            ("connection.use_identity", "bob", "e2e/bob"),
            ("identity.make_private", "ops", "alice-pat"),
        ],
        &[&secret],
    )?;
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivating_the_creator_of_a_global_identity_keeps_it_working() -> Result<()> {
    let stack = Stack::start("global_creator", StackOptions::default()).await?;
    let ops = stack.admin_token("ops", ADMINS).await?;
    let carol_admin = stack.admin_token("carol", &["secops"]).await?;
    let (bob, carol) = (stack.token("bob").await?, stack.token("carol").await?);
    let secret = format!("carol-global-{}", random_hex());
    stack.remember_secret(&secret);

    // Carol (identity manager) replaces the shared identity behind `whoami-late`.
    stack.cli(0, &ops, &["identity", "delete", "late-sa"], None)?;
    let created = stack.cli(
        0,
        &carol_admin,
        &[
            "identity", "create", "--server", "whoami", "--id", "late-sa", "--global",
        ],
        Some(&secret),
    )?;
    assert_eq!(created[0]["availability"], "global");
    assert_eq!(created[0]["owner"], "carol");

    let client = McpClient::connect(&stack.url("whoami-late"), &bob).await?;
    let r = client.call_tool("whoami", json!({})).await?;
    assert_eq!(McpClient::text(&r), format!("Bearer {secret}"));

    stack.cli(0, &ops, &["user", "deactivate", "carol"], None)?;
    // Bob's shared-scheme calls go on with the identity carol created.
    let r = client.call_tool("whoami", json!({})).await?;
    assert_eq!(McpClient::text(&r), format!("Bearer {secret}"));
    let (status, body) = initialize(&stack, "whoami-late", &bob).await?;
    assert_eq!(status, 200, "{body}");
    client.close().await?;
    // Carol herself is out.
    let (status, body) = initialize(&stack, "whoami-late", &carol).await?;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("deactivated"), "{body}");

    assert_audited(
        &stack,
        &[
            ("identity.delete", "ops", "late-sa"),
            ("identity.create", "carol", "late-sa"),
            ("user.deactivate", "ops", "carol"),
        ],
        &[&secret],
    )?;
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

/// Finding: an identity id the config names for a shared assignment could
/// be taken first by anyone as a private identity (while the operator
/// replaces the service account, say): the assignment then broke for
/// everyone, and `put-shared` could not store it. Those ids are reserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_the_config_names_for_shared_assignments_cannot_be_squatted() -> Result<()> {
    let stack = Stack::start("squatting", StackOptions::default()).await?;
    let ops = stack.admin_token("ops", ADMINS).await?;
    let mallory = stack.admin_token("mallory", &[]).await?;
    let carol = stack.admin_token("carol", &["secops"]).await?;
    let bob = stack.token("bob").await?;
    let create = |token: &str, args: &[&str], secret: &str| {
        let mut all = vec!["identity", "create", "--server", "whoami"];
        all.extend_from_slice(args);
        stack.cli(0, token, &all, Some(secret))
    };

    // The operator is replacing the shared identity behind `whoami-late`.
    stack.cli(0, &ops, &["identity", "delete", "late-sa"], None)?;
    let squat = format!("mallory-{}", random_hex());
    stack.remember_secret(&squat);
    let refused = create(&mallory, &["--id", "late-sa"], &squat)
        .err()
        .context("mallory took the reserved id late-sa")?;
    let refused = format!("{refused:#}");
    assert!(
        refused.contains(
            "reserved for the shared identity of gateway 'e2e', assignment 'whoami-late'"
        ),
        "{refused}"
    );
    // Even an identity manager cannot make it private, or global for another server.
    let refused = format!(
        "{:#}",
        create(&carol, &["--id", "late-sa"], &squat).unwrap_err()
    );
    assert!(
        refused.contains("create it with --global for server 'whoami'"),
        "{refused}"
    );
    let refused = stack
        .cli(
            0,
            &carol,
            &[
                "identity", "create", "--server", "fast", "--id", "late-sa", "--global",
            ],
            Some(&squat),
        )
        .err()
        .context("late-sa created for the wrong server")?;
    assert!(format!("{refused:#}").contains("reserved"), "{refused:#}");
    // Control, read the same way: the same person, any other id.
    let own = create(&mallory, &["--id", "mallory-own"], &squat)?;
    assert_eq!(own[0]["owner"], "mallory");

    // The organisation's global identity takes the id and serves the assignment.
    let secret = format!("late-{}", random_hex());
    stack.remember_secret(&secret);
    let created = create(&carol, &["--id", "late-sa", "--global"], &secret)?;
    assert_eq!(created[0]["availability"], "global");
    let client = McpClient::connect(&stack.url("whoami-late"), &bob).await?;
    let r = client.call_tool("whoami", json!({})).await?;
    assert_eq!(McpClient::text(&r), format!("Bearer {secret}"));
    client.close().await?;
    // It stays global while the config names it.
    let refused = stack.cli_refused(0, &ops, &["identity", "make-private", "late-sa"])?;
    assert!(refused.contains("must stay global"), "{refused}");
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holds_no_plaintext_and_moved_or_flipped_ciphertexts_are_refused() -> Result<()> {
    let stack = Stack::start("vault_integrity", StackOptions::default()).await?;
    let alice_admin = stack.admin_token("alice", &[]).await?;
    let alice = stack.token("alice").await?;
    let secrets: Vec<String> = (0..3)
        .map(|i| format!("alice-{i}-{}", random_hex()))
        .collect();
    for (i, s) in secrets.iter().enumerate() {
        stack.remember_secret(s);
        create(&stack, 0, &alice_admin, &format!("a{i}"), s)?;
    }
    let connect = |id: &str| connect(&stack, 0, &alice_admin, id);
    connect("a0")?;
    let (status, body) = initialize(&stack, "whoami-mine", &alice).await?;
    assert_eq!(status, 200, "{body}");

    // No plaintext secret anywhere in Redis: records, indexes, audit stream.
    let dump = stack.redis.dump_all()?;
    assert!(dump.len() >= 8, "{dump:?}");
    let mut all_secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    all_secrets.extend([
        stack.whoami_secret.as_str(),
        stack.everything_secret.as_str(),
    ]);
    for (key, value) in &dump {
        for s in &all_secrets {
            assert!(!value.contains(s), "plaintext secret in Redis key {key}");
        }
    }

    // a1's ciphertext copied onto a2 (same owner and server): a2 no longer opens.
    let record = |id: &str| -> Result<Value> {
        let raw = stack
            .redis
            .get(&format!("latchkey:identity:{id}"))?
            .context("record")?;
        Ok(serde_json::from_str(&raw)?)
    };
    let mut a2 = record("a2")?;
    a2["sealed"] = record("a1")?["sealed"].clone();
    stack.redis.set("latchkey:identity:a2", &a2.to_string())?;
    connect("a2")?;
    let (status, body) = initialize(&stack, "whoami-mine", &alice).await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("failed to decrypt"), "{body}");
    assert_jsonrpc_error(&body, &json!(1), -32603);

    // One flipped bit in a1's ciphertext.
    let mut a1 = record("a1")?;
    let ct = a1["sealed"]["ciphertext"].as_str().context("ciphertext")?;
    let mut bytes = base64_decode(ct)?;
    bytes[3] ^= 0x01;
    a1["sealed"]["ciphertext"] = json!(base64_encode(&bytes));
    stack.redis.set("latchkey:identity:a1", &a1.to_string())?;
    connect("a1")?;
    let (status, body) = initialize(&stack, "whoami-mine", &alice).await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("failed to decrypt"), "{body}");
    for s in &secrets {
        assert!(!body.contains(s.as_str()));
    }
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

fn base64_decode(s: &str) -> Result<Vec<u8>> {
    use base64::Engine;
    Ok(base64::engine::general_purpose::STANDARD.decode(s)?)
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Stores `n` private identities of server `whoami` (random secrets,
/// remembered for the log scan) the way `identity create` does, through the
/// service's own library, 200 at a time rather than one CLI process each.
async fn seed_identities(stack: &Stack, n: usize) -> Result<()> {
    use latchkey_core::config::Config;
    use latchkey_core::identity::{Availability, IdentitySecret};
    use latchkey_core::vault::{KeyRing, Secret};
    use latchkey_store::credentials::{Credentials, NewIdentity, TokenMeta};
    use latchkey_store::redis_backend::Topology;
    use latchkey_store::store::Store;

    let config = Config::load(&stack.config_path)?;
    let store = Store::connect(
        &Topology::from_config(&config.redis),
        &config.redis.key_prefix,
        Duration::from_secs(5),
        // The stream keeps what the config says (the scenario reads it).
        config.audit.stream_max_len,
    )
    .await?;
    let credentials = Arc::new(Credentials::new(
        store,
        KeyRing::from_config(&config.vault)?,
        Duration::from_secs(1),
    ));
    for start in (0..n).step_by(200) {
        let batch: Vec<_> = (start..(start + 200).min(n))
            .map(|i| {
                let secret = format!("seeded-{i}-{}", random_hex());
                stack.remember_secret(&secret);
                let c = credentials.clone();
                tokio::spawn(async move {
                    let secret = IdentitySecret::Static {
                        value: Secret::new(secret),
                    };
                    let id = format!("seeded-{i}");
                    let owner = format!("user-{i}");
                    c.put_identity(NewIdentity {
                        actor: "seed",
                        id: &id,
                        server: "whoami",
                        owner: &owner,
                        availability: Availability::Private,
                        secret: &secret,
                        replace: true,
                        meta: TokenMeta::default(),
                    })
                    .await
                })
            })
            .collect();
        for b in batch {
            b.await??;
        }
    }
    Ok(())
}

/// Identities the rotation re-encrypts besides the stack's own: enough that
/// requests are answered while it runs (checked, not assumed).
const SEEDED: usize = 1500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_under_steady_traffic_loses_no_request() -> Result<()> {
    let mut stack = Stack::start(
        "key_rotation",
        StackOptions {
            replicas: 2,
            key_ids: vec!["e2e1".into(), "e2e2".into()],
            // Every request reads and opens its credential: the traffic
            // below meets the records while they are re-encrypted.
            credential_cache_secs: 0,
            ..Default::default()
        },
    )
    .await?;
    let ops = stack.admin_token("ops", ADMINS).await?;
    let alice_admin = stack.admin_token("alice", &[]).await?;
    let alice = stack.token("alice").await?;
    let secret = format!("alice-rot-{}", random_hex());
    stack.remember_secret(&secret);
    create(&stack, 0, &alice_admin, "alice-rot", &secret)?;
    connect(&stack, 0, &alice_admin, "alice-rot")?;
    seed_identities(&stack, SEEDED).await?;
    let records = 5 + SEEDED as u64;
    let keys = stack.cli(0, &ops, &["keys", "list"], None)?;
    let on = |keys: &[Value], id: &str| {
        keys.iter()
            .find(|k| k["id"] == id)
            .map(|k| (k["active"].as_bool(), k["records"].as_u64()))
    };
    // The stack's 4 shared identities (whoami, everything, late, fast),
    // alice's and the seeded ones.
    assert_eq!(
        on(&keys, "e2e1"),
        Some((Some(true), Some(records))),
        "{keys:?}"
    );
    assert_eq!(on(&keys, "e2e2"), Some((Some(false), Some(0))), "{keys:?}");

    let refused = stack.cli_refused(0, &ops, &["keys", "rotate", "--to", "nope"])?;
    assert!(refused.contains("not loaded"), "{refused}");

    // A live replica without the new key: the rotation is refused, naming
    // it, and nothing changes. (Replica 1 restarts on a key file without
    // e2e2; the file gets it back for later restarts.)
    let both_keys = std::fs::read_to_string(&stack.key_file)?;
    let only_old: String = both_keys
        .lines()
        .filter(|l| l.starts_with("e2e1:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&stack.key_file, only_old)?;
    stack.restart_replica(1)?;
    std::fs::write(&stack.key_file, &both_keys)?;
    let lacking = stack.replicas[1]
        .process
        .as_ref()
        .and_then(|p| p.pid())
        .context("replica 1's pid")?;
    let refused = stack.cli_refused(0, &ops, &["keys", "rotate", "--to", "e2e2"])?;
    assert!(
        refused.contains(&format!("(pid {lacking}) does not hold key 'e2e2'")),
        "{refused}"
    );
    let keys = stack.cli(0, &ops, &["keys", "list"], None)?;
    assert_eq!(
        on(&keys, "e2e1"),
        Some((Some(true), Some(records))),
        "{keys:?}"
    );
    stack.restart_replica(1)?;

    // Steady traffic on a shared and a per-user path while the keys rotate,
    // each call checking the exact secret the upstream received. Progress
    // is counted, not timed: the checks wait for requests to have happened
    // before and after the rotation, however slow the machine.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let traffic = {
        let (stop, sent) = (stop.clone(), sent.clone());
        let paths = [
            (
                stack.url("whoami"),
                format!("Bearer {}", stack.whoami_secret),
            ),
            (stack.url("whoami-mine"), format!("Bearer {secret}")),
        ];
        let token = alice.clone();
        tokio::spawn(async move {
            let mut clients = Vec::new();
            for (url, want) in paths {
                clients.push((McpClient::connect(&url, &token).await?, want));
            }
            let mut wrong = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for (client, want) in &clients {
                    match client.call_tool("whoami", json!({})).await {
                        Ok(r) if McpClient::text(&r) == *want => {}
                        // Never printed: it may be a secret.
                        Ok(_) => wrong.push("the upstream got another credential".to_string()),
                        Err(e) => wrong.push(format!("{e:#}")),
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            for (client, _) in clients {
                client.close().await?;
            }
            Ok::<_, anyhow::Error>(wrong)
        })
    };
    let wait_for = |n: usize| {
        let sent = sent.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while sent.load(Ordering::Relaxed) < n {
                ensure!(
                    tokio::time::Instant::now() < deadline,
                    "traffic stalled at {} requests",
                    sent.load(Ordering::Relaxed)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(())
        }
    };
    wait_for(4).await?;
    let before = sent.load(Ordering::Relaxed);
    let rotated = stack.cli(1, &ops, &["keys", "rotate", "--to", "e2e2"], None)?;
    let during = sent.load(Ordering::Relaxed) - before;
    assert_eq!(rotated[0]["active_key"], "e2e2");
    assert_eq!(rotated[0]["re_encrypted"], records, "{rotated:?}");
    assert!(
        during >= 4,
        "only {during} requests were answered while the keys rotated"
    );
    // A write right after the rotation is sealed with the new key.
    let later = format!("alice-later-{}", random_hex());
    stack.remember_secret(&later);
    let created = create(&stack, 0, &alice_admin, "alice-later", &later)?;
    assert_eq!(created["key_id"], "e2e2");
    wait_for(sent.load(Ordering::Relaxed) + 10).await?;
    stop.store(true, Ordering::Relaxed);
    let wrong = traffic.await??;
    assert!(wrong.is_empty(), "calls failed during rotation: {wrong:?}");

    let keys = stack.cli(0, &ops, &["keys", "list"], None)?;
    assert_eq!(on(&keys, "e2e1"), Some((Some(false), Some(0))), "{keys:?}");
    assert_eq!(
        on(&keys, "e2e2"),
        Some((Some(true), Some(records + 1))),
        "{keys:?}"
    );

    // The old key can go: replicas restarted without it (nothing cached)
    // still open every record.
    let text = std::fs::read_to_string(&stack.key_file)?;
    let only_new: String = text
        .lines()
        .filter(|l| l.starts_with("e2e2:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&stack.key_file, only_new)?;
    for n in 0..2 {
        let config = std::fs::read_to_string(&stack.replicas[n].config_path)?;
        std::fs::write(
            &stack.replicas[n].config_path,
            config.replace("active_key = \"e2e1\"", "active_key = \"e2e2\""),
        )?;
        stack.restart_replica(n)?;
    }
    expect_on_every_replica(&stack, "whoami-mine", &alice, 200, "").await?;
    expect_on_every_replica(&stack, "whoami", &alice, 200, "").await?;
    let client = McpClient::connect(&stack.url("whoami-mine"), &alice).await?;
    let r = client.call_tool("whoami", json!({})).await?;
    assert_eq!(McpClient::text(&r), format!("Bearer {secret}"));
    client.close().await?;

    assert_audited(
        &stack,
        &[
            ("identity.create", "alice", "alice-rot"),
            ("keys.activate", "ops", "e2e2"),
            ("keys.rotate", "ops", "e2e2"),
            ("identity.create", "alice", "alice-later"),
        ],
        &[&secret, &later],
    )?;
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run_fails_closed_and_recovers_clean() -> Result<()> {
    let mut stack = Stack::start(
        "redis_stopped",
        StackOptions {
            persistent_redis: true,
            ..Default::default()
        },
    )
    .await?;
    let alice_admin = stack.admin_token("alice", &[]).await?;
    let alice = stack.token("alice").await?;
    let dave = stack.token("dave").await?;
    let secret = format!("alice-redis-{}", random_hex());
    stack.remember_secret(&secret);
    create(&stack, 0, &alice_admin, "alice-r", &secret)?;
    connect(&stack, 0, &alice_admin, "alice-r")?;
    let (status, body) = initialize(&stack, "whoami-mine", &alice).await?;
    assert_eq!(status, 200, "{body}");

    stack.redis.stop_saving()?;
    // Cached: alice's status, connection and identity were read a moment ago.
    let (status, body) = initialize(&stack, "whoami-mine", &alice).await?;
    assert_eq!(status, 200, "cached credential keeps serving: {body}");
    // Not cached: a user never seen fails closed, saying why.
    let (status, body) = initialize(&stack, "whoami", &dave).await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("Redis"), "{body}");
    assert_jsonrpc_error(&body, &json!(1), -32603);
    // Writes fail whole.
    let refused = stack.cli_refused(0, &alice_admin, &["identity", "disable", "alice-r"])?;
    assert!(
        refused.contains("unavailable") || refused.contains("Redis"),
        "{refused}"
    );

    stack.redis.restart()?;
    if let Some(p) = stack.replicas[0].process.as_mut() {
        p.wait_for_log("cache flushed", Duration::from_secs(20))?;
    }
    // The flushed cache reads again from Redis, and everything is intact.
    let gets_before = stack.redis.command_calls("get")?;
    let (status, body) = initialize(&stack, "whoami-mine", &alice).await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        stack.redis.command_calls("get")? > gets_before,
        "the cache was flushed on resubscription"
    );
    let (status, body) = initialize(&stack, "whoami", &dave).await?;
    assert_eq!(status, 200, "{body}");
    let listed = stack.cli(0, &alice_admin, &["identity", "list"], None)?;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0]["status"], "enabled",
        "the failed disable left nothing"
    );
    let client = McpClient::connect(&stack.url("whoami-mine"), &alice).await?;
    let r = client.call_tool("whoami", json!({})).await?;
    assert_eq!(McpClient::text(&r), format!("Bearer {secret}"));
    client.close().await?;

    let events = stack.audit_events()?;
    assert!(
        !events.iter().any(|e| e["action"] == "identity.disable"),
        "no event for a change that did not happen"
    );
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

/// A change is answered only once every replica has applied it, so the
/// next request sees it whichever replica decides. A replica frozen while an
/// operator disables an identity holds the answer until it has dropped its
/// cached copy; one frozen for longer than the wait is named in a warning
/// (the change is made anyway); one that shut down cleanly is not waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_answered_once_every_replica_applied_it() -> Result<()> {
    let scene = scene("replicas_settle", two_replicas(RedisTopology::Single)).await?;
    alices_identity(&scene, "alice-s", 0)?;
    let Scene {
        mut stack,
        ops,
        alice,
        ..
    } = scene;
    // Both replicas now hold alice's identity in their caches.
    expect_on_every_replica(&stack, "whoami-mine", &alice, 200, "").await?;

    let frozen = stack.replicas[1]
        .process
        .as_ref()
        .context("replica 1 is not running")?;
    let frozen_pid = frozen.pid().context("replica 1 has no pid")?;
    let (out, waited) = while_frozen(frozen, || {
        stack.cli_with_stderr(0, &ops, &["identity", "disable", "alice-s"], None)
    });
    let (_, warnings) = out?;
    ensure!(
        waited,
        "the CLI answered while replica 1 was frozen, before it could have dropped its cached copy"
    );
    ensure!(warnings.is_empty(), "unexpected warning: {warnings}");
    expect_on_every_replica(&stack, "whoami-mine", &alice, 403, "disabled").await?;

    // Frozen past the wait: the change is made and the answer says which
    // replica has not confirmed it.
    frozen.pause(true);
    let enabled = stack.cli_with_stderr(0, &ops, &["identity", "enable", "alice-s"], None);
    frozen.pause(false);
    let (out, warnings) = enabled?;
    assert_eq!(out[0]["status"], "enabled", "{out:?}");
    assert!(
        warnings.contains("warning:")
            && warnings.contains("did not confirm")
            && warnings.contains(&format!("{frozen_pid}-")),
        "the warning names the frozen replica: {warnings:?}"
    );
    let settled = |result: &str| -> Result<u64> {
        let url = format!("{}/metrics", stack.replicas[0].http_url());
        let (_, text) = latchkey_e2e::http_get(&url).context("GET /metrics")?;
        let line = format!("latchkey_changes_settled_total{{result=\"{result}\"}} ");
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0))
    };
    ensure!(
        settled("unconfirmed")? == 1 && settled("everywhere")? >= 3,
        "/metrics counts the settles: unconfirmed {}, everywhere {}",
        settled("unconfirmed")?,
        settled("everywhere")?
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while expect_on_every_replica(&stack, "whoami-mine", &alice, 200, "")
        .await
        .is_err()
    {
        ensure!(
            std::time::Instant::now() < deadline,
            "replica 1 did not catch up after it was thawed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A replica that shut down cleanly left the registry: nothing waits for it.
    stack.stop_replica(1);
    let (_, warnings) =
        stack.cli_with_stderr(0, &ops, &["identity", "disable", "alice-s"], None)?;
    ensure!(
        warnings.is_empty(),
        "a stopped replica was waited for: {warnings}"
    );
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

/// The same identity lifecycle on another Redis deployment shape: two
/// replicas, a private identity, disable/enable seen by both, the shared
/// path, and the audit trail.
async fn identity_lifecycle_on(topology: RedisTopology, scenario: &str) -> Result<()> {
    let scene = scene(scenario, two_replicas(topology)).await?;
    let secret = alices_identity(&scene, "alice-t", 1)?;
    let Scene {
        stack, ops, alice, ..
    } = scene;
    let client = McpClient::connect(&stack.url("whoami-mine"), &alice).await?;
    let r = client.call_tool("whoami", json!({})).await?;
    assert_eq!(McpClient::text(&r), format!("Bearer {secret}"));
    client.close().await?;
    expect_on_every_replica(&stack, "whoami", &alice, 200, "").await?;

    stack.cli(0, &ops, &["identity", "disable", "alice-t"], None)?;
    expect_on_every_replica(&stack, "whoami-mine", &alice, 403, "disabled").await?;
    stack.cli(1, &ops, &["identity", "enable", "alice-t"], None)?;
    expect_on_every_replica(&stack, "whoami-mine", &alice, 200, "").await?;

    let keys = stack.cli(0, &ops, &["keys", "list"], None)?;
    // The stack's 4 shared identities and alice's.
    assert_eq!(keys[0]["records"], 5, "{keys:?}");
    assert_audited(
        &stack,
        &[
            ("identity.create", "alice", "alice-t"),
            ("connection.use_identity", "alice", "e2e/alice"),
            ("identity.disable", "ops", "alice-t"),
            ("identity.enable", "ops", "alice-t"),
        ],
        &[&secret],
    )?;
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_work_on_a_redis_cluster() -> Result<()> {
    identity_lifecycle_on(RedisTopology::Cluster, "redis_cluster").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_work_behind_redis_sentinel() -> Result<()> {
    identity_lifecycle_on(RedisTopology::Sentinel, "redis_sentinel").await
}

/// Runs an operator's CLI command after a failover as a person would: once,
/// and if that fails (the first command on a connection the failover closed
/// may fail, closed), once more, which must go through. No polling: a
/// change that needs more than one retry is a failure. Returns the output
/// and how many attempts failed (0 or 1).
fn cli_retried_once(
    stack: &Stack,
    n: usize,
    token: &str,
    args: &[&str],
) -> Result<(Vec<Value>, usize)> {
    match stack.cli(n, token, args, None) {
        Ok(out) => Ok((out, 0)),
        Err(first) => {
            eprintln!("`latchkey {}` failed once: {first:#}", args.join(" "));
            let out = stack.cli(n, token, args, None).with_context(|| {
                format!(
                    "`latchkey {}` failed twice; the first: {first:#}",
                    args.join(" ")
                )
            })?;
            Ok((out, 1))
        }
    }
}

/// Redis behind Sentinel fails over (the replica is promoted, the old
/// master demoted): Latchkey follows the Sentinel to the new master, so
/// changes are written there and seen by every replica, and requests are
/// answered as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_is_followed() -> Result<()> {
    use latchkey_e2e::peers::command_on;
    use latchkey_e2e::stack::SENTINEL_MASTER;

    let scene = scene("redis_failover", two_replicas(RedisTopology::Sentinel)).await?;
    let secret = alices_identity(&scene, "alice-f", 1)?;
    let Scene {
        stack, ops, alice, ..
    } = scene;
    let sentinel = stack.sentinel.as_ref().context("no Sentinel")?.1;
    let promoted = stack.redis_extra.first().context("no Redis replica")?;
    expect_on_every_replica(&stack, "whoami-mine", &alice, 200, "").await?;

    latchkey_e2e::eventually("the Sentinel fails over", async || {
        let reply = command_on(sentinel, &["SENTINEL", "FAILOVER", SENTINEL_MASTER])?;
        Ok(if reply.starts_with("+OK") {
            Ok(())
        } else {
            Err(reply)
        })
    })
    .await?;
    latchkey_e2e::eventually("the replica is the master, the master a replica", async || {
        let named = command_on(
            sentinel,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER],
        )?;
        let role = promoted.command(&["ROLE"])?;
        // Until the old master is demoted it still takes writes, which it
        // drops when it resyncs (Redis's own window, see README).
        let old = stack.redis.command(&["ROLE"])?;
        Ok(
            if named.contains(&promoted.port.to_string())
                && role.contains("master")
                && old.contains("slave")
            {
                Ok(())
            } else {
                Err(format!(
                    "Sentinel names {named:?}, the replica's role {role:?}, the old master's {old:?}"
                ))
            },
        )
    })
    .await?;

    // Changes after the failover are written on the new master and seen by
    // every replica; the identity's record there says so.
    let (_, failed_disable) =
        cli_retried_once(&stack, 0, &ops, &["identity", "disable", "alice-f"])?;
    expect_on_every_replica(&stack, "whoami-mine", &alice, 403, "disabled").await?;
    let (_, failed_enable) = cli_retried_once(&stack, 1, &ops, &["identity", "enable", "alice-f"])?;
    ensure!(
        failed_disable + failed_enable <= 1,
        "at most one operator command failed across the failover ({failed_disable} + {failed_enable})"
    );
    expect_on_every_replica(&stack, "whoami-mine", &alice, 200, "").await?;
    let record = promoted.command(&["GET", "latchkey:identity:alice-f"])?;
    ensure!(
        record.contains("\"status\":\"enabled\"") && record.contains("\"updated_by\":\"ops\""),
        "the new master holds the change: {record}"
    );
    let client = McpClient::connect(&stack.url("whoami-mine"), &alice).await?;
    let r = client.call_tool("whoami", json!({})).await?;
    assert_eq!(McpClient::text(&r), format!("Bearer {secret}"));
    client.close().await?;
    // Their lifecycle events are in the new master's audit stream.
    let events = promoted.stream_json("latchkey:audit", "event")?;
    for action in ["identity.disable", "identity.enable"] {
        ensure!(
            events
                .iter()
                .any(|e| e["action"] == action && e["actor"] == "ops" && e["target"] == "alice-f"),
            "no {action} event on the new master: {events:?}"
        );
    }
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

/// An operator replaces a shared secret with the offline `identity
/// put-shared` while the replicas serve it from their caches: the command
/// returns only once every replica has dropped the old one (a replica frozen
/// meanwhile holds it up), and from then on only the new secret goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_shared_returns_once_every_replica_dropped_the_old_secret() -> Result<()> {
    let Scene { stack, alice, .. } =
        scene("put_shared_settle", two_replicas(RedisTopology::Single)).await?;
    // Both replicas hold the service account's secret in their caches.
    expect_on_every_replica(&stack, "whoami", &alice, 200, "").await?;

    let rotated = format!("sa-whoami-rotated-{}", random_hex());
    stack.remember_secret(&rotated);
    let frozen = stack.replicas[1]
        .process
        .as_ref()
        .context("replica 1 is not running")?;
    let (out, waited) = while_frozen(frozen, || {
        stack.config_cli().and_then(|mut cmd| {
            latchkey_e2e::stack::run_with_stderr(
                cmd.args([
                    "identity",
                    "put-shared",
                    "--id",
                    "whoami-sa",
                    "--server",
                    "whoami",
                ]),
                Some(&rotated),
            )
        })
    });
    let (stdout, stderr) = out?;
    ensure!(stdout.contains("version 2"), "{stdout}");
    ensure!(stderr.is_empty(), "unexpected warning: {stderr}");
    ensure!(
        waited,
        "put-shared returned while replica 1 was frozen, before it could drop the old secret"
    );

    let before = stack.echo.seen_authorizations().await?.len();
    expect_on_every_replica(&stack, "whoami", &alice, 200, "").await?;
    let seen = stack.echo.seen_authorizations().await?;
    ensure!(seen.len() > before, "the upstream was reached");
    ensure!(
        seen[before..]
            .iter()
            .all(|a| *a == format!("Bearer {rotated}")),
        "only the new secret went out after put-shared returned"
    );
    stack.assert_no_secret_in_logs()?;
    Ok(())
}
