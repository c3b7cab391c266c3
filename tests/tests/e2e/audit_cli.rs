//! `latchkey audit query` and `latchkey audit tail` against the audit
//! stream of a real deployment: decisions made through Envoy and the Wasm
//! filter by two users, read back with the operator CLI from the config's
//! Redis, and compared with what the stream itself holds.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use latchkey_e2e::client::{INITIALIZE, post_json, tools_call};
use latchkey_e2e::stack::run;
use latchkey_e2e::{RedisTopology, Stack, StackOptions, TokenRequest, free_port};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr};

async fn start(scenario: &str) -> Result<Stack> {
    Stack::start(
        scenario,
        StackOptions {
            fast_mcp_page_size: Some(100),
            ..Default::default()
        },
    )
    .await
}

/// `latchkey audit <args>` with the stack's config; its stdout lines.
fn audit(stack: &Stack, args: &[&str]) -> Result<Vec<String>> {
    let out = run(stack.config_cli()?.arg("audit").args(args), None)?;
    Ok(out.lines().map(str::to_string).collect())
}

/// The same with `--json`: one event per line.
fn audit_json(stack: &Stack, args: &[&str]) -> Result<Vec<Value>> {
    audit(stack, &[args, &["--json"]].concat())?
        .iter()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

/// Sends one MCP message and checks the status the gateway answered.
async fn expect(url: &str, token: &str, body: &str, status: u16) -> Result<()> {
    let r = post_json(url, Some(token), body, &[]).await?;
    ensure!(
        r.status == status,
        "{url}: expected {status}, got {}: {}",
        r.status,
        r.body
    );
    Ok(())
}

/// The stream's events once `decisions` decision events are in it (the
/// writer is off the request path, so they land a moment later).
async fn stream_with_decisions(stack: &Stack, decisions: usize) -> Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = stack.audit_events()?;
        let n = events.iter().filter(|e| e["event"] == "decision").count();
        if n >= decisions {
            ensure!(n == decisions, "expected {decisions} decisions, found {n}");
            return Ok(events);
        }
        if Instant::now() > deadline {
            bail!("only {n} of {decisions} decision events reached the stream");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pick(events: &[Value], keep: impl Fn(&Value) -> bool) -> Vec<Value> {
    events.iter().filter(|e| keep(e)).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_query_prints_exactly_the_events_asked_for() -> Result<()> {
    let stack = start("audit_cli_query").await?;
    let gateway = stack.gateway_url();
    let alice = stack
        .token_with(&TokenRequest::new("alice", &gateway).client("audit-agent"))
        .await?;
    let bob = stack
        .token_with(&TokenRequest::new("bob", &gateway).client("other"))
        .await?;
    let stranger = stack
        .token_with(&TokenRequest::new(
            "mallory",
            "https://elsewhere.example/mcp",
        ))
        .await?;
    let call = tools_call(json!(2), "tool_03");
    // alice: two allowed, one refused (no connection for a per-user server);
    // bob: one allowed, one refused; and a token for another audience.
    expect(&stack.url("fast"), &alice, INITIALIZE, 200).await?;
    expect(&stack.url("fast"), &alice, &call, 200).await?;
    expect(&stack.url("whoami-mine"), &alice, &call, 403).await?;
    expect(&stack.url("fast"), &bob, INITIALIZE, 200).await?;
    expect(&stack.url("whoami-mine"), &bob, &call, 403).await?;
    expect(&stack.url("fast"), &stranger, INITIALIZE, 401).await?;
    let all = stream_with_decisions(&stack, 6).await?;

    // alice's allowed decisions, exactly, oldest first; none of bob's.
    let got = audit_json(&stack, &["query", "--user", "alice", "--decision", "allow"])?;
    let want = pick(&all, |e| e["user"] == "alice" && e["decision"] == "allow");
    assert_eq!(got, want);
    let methods: Vec<&Value> = got.iter().map(|e| &e["method"]).collect();
    assert_eq!(methods, [&json!("initialize"), &json!("tools/call")]);
    assert!(got.iter().all(|e| e["agent"] == "audit-agent"));
    let text = serde_json::to_string(&got)?;
    assert!(!text.contains("bob") && !text.contains("mallory"), "{text}");

    // The readable form: one line per event with its time, outcome, who,
    // where, what and why.
    let lines = audit(&stack, &["query", "--user", "alice", "--decision", "allow"])?;
    assert_eq!(
        lines,
        [
            format!(
                "{} allow user=alice agent=audit-agent at=e2e/fast initialize reason=allowed status=200",
                want[0]["time"].as_str().unwrap_or_default()
            ),
            format!(
                "{} allow user=alice agent=audit-agent at=e2e/fast tools/call tool_03 reason=allowed status=200",
                want[1]["time"].as_str().unwrap_or_default()
            ),
        ]
    );
    let refused = pick(&all, |e| e["user"] == "bob" && e["decision"] == "deny");
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["reason"], "consent_needed");
    assert_eq!(
        audit(&stack, &["query", "--user", "bob", "--decision", "deny"])?,
        [format!(
            "{} deny user=bob agent=other at=e2e/whoami-mine tools/call tool_03 reason=consent_needed status=403",
            refused[0]["time"].as_str().unwrap_or_default()
        )]
    );

    // Other filters and their combinations.
    let calls = audit_json(&stack, &["query", "--tool", "tool_03"])?;
    assert_eq!(calls, pick(&all, |e| e["name"] == "tool_03"));
    assert_eq!(calls.len(), 3, "alice's call, her refusal and bob's");
    let denies = audit_json(&stack, &["query", "--decision", "deny"])?;
    assert_eq!(denies, pick(&all, |e| e["decision"] == "deny"));
    assert_eq!(denies.len(), 3, "two refusals and the stranger");
    assert!(
        denies
            .iter()
            .any(|e| e["user"].is_null() && e["status"] == 401)
    );
    let bob_agent = audit_json(&stack, &["query", "--agent", "other"])?;
    assert_eq!(bob_agent, pick(&all, |e| e["agent"] == "other"));
    assert_eq!(bob_agent.len(), 2);
    // --user also finds changes by or about the user: the stack stored its
    // shared identities as `operator`.
    let operator = audit_json(&stack, &["query", "--user", "operator"])?;
    assert_eq!(operator, pick(&all, |e| e["event"] == "lifecycle"));
    assert_eq!(operator.len(), 4);
    assert!(operator.iter().all(|e| e["action"] == "identity.create"));

    // --limit keeps the newest; --since bounds from when.
    let newest = audit_json(&stack, &["query", "--user", "alice", "--limit", "1"])?;
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0]["decision"], "deny");
    assert_eq!(
        audit_json(
            &stack,
            &[
                "query",
                "--user",
                "alice",
                "--decision",
                "allow",
                "--limit",
                "1"
            ]
        )?,
        want[1..]
    );
    assert_eq!(audit_json(&stack, &["query", "--since", "15m"])?, all);
    assert_eq!(
        audit_json(&stack, &["query", "--since", "1970-01-01T00:00:00Z"])?,
        all
    );
    assert!(audit_json(&stack, &["query", "--since", "2999-01-01T00:00:00Z"])?.is_empty());

    // Mistakes are said in terms a person can act on.
    let err = format!(
        "{:#}",
        audit(&stack, &["query", "--since", "yesterday"]).unwrap_err()
    );
    assert!(
        err.contains("'yesterday'") && err.contains("RFC 3339") && err.contains("15m"),
        "{err}"
    );
    let nowhere = format!("redis://127.0.0.1:{}", free_port());
    let config = std::fs::read_to_string(&stack.config_path)?;
    ensure!(
        config.contains(&stack.redis.url()),
        "the config names its Redis"
    );
    let elsewhere = stack.dir.join("latchkey-no-redis.toml");
    std::fs::write(&elsewhere, config.replace(&stack.redis.url(), &nowhere))?;
    let err = format!(
        "{:#}",
        run(
            stack
                .config_cli()?
                .args(["audit", "query", "--config"])
                .arg(&elsewhere),
            None
        )
        .unwrap_err()
    );
    assert!(
        err.contains(&format!("cannot reach Redis at {nowhere}")),
        "{err}"
    );

    // No token in what the CLI printed, nor in any log.
    let everything = audit(&stack, &["query"])?.join("\n");
    assert_eq!(everything.lines().count(), all.len());
    for token in [&alice, &bob, &stranger] {
        assert!(!everything.contains(token.as_str()));
    }
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

/// A `latchkey audit tail` running in the background.
struct Tail {
    child: Child,
    notices: Lines<BufReader<ChildStderr>>,
}

impl Tail {
    /// Starts it and waits until it says where it follows from: events
    /// after that are its to print.
    async fn start(stack: &Stack, args: &[&str]) -> Result<Tail> {
        let mut cmd = tokio::process::Command::from(stack.config_cli()?);
        cmd.args(["audit", "tail"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting latchkey audit tail")?;
        let mut notices = BufReader::new(child.stderr.take().context("stderr")?).lines();
        let first = tokio::time::timeout(Duration::from_secs(10), notices.next_line())
            .await
            .context("latchkey audit tail said nothing in 10 s")??
            .unwrap_or_default();
        ensure!(
            first.starts_with("following the audit stream"),
            "unexpected first notice: {first}"
        );
        Ok(Tail { child, notices })
    }

    /// Waits for it to exit by itself (`--count`); its stdout lines.
    async fn finish(self) -> Result<Vec<String>> {
        let Tail { child, mut notices } = self;
        let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
            .await
            .context("latchkey audit tail did not exit after --count events")??;
        let mut rest = Vec::new();
        while let Ok(Some(l)) = notices.next_line().await {
            rest.push(l);
        }
        ensure!(
            out.status.success(),
            "latchkey audit tail failed: {}",
            rest.join("\n")
        );
        Ok(String::from_utf8(out.stdout)?
            .lines()
            .map(str::to_string)
            .collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_tail_prints_new_events_as_they_arrive() -> Result<()> {
    let stack = start("audit_cli_tail").await?;
    let gateway = stack.gateway_url();
    let alice = stack
        .token_with(&TokenRequest::new("alice", &gateway).client("audit-agent"))
        .await?;
    let bob = stack
        .token_with(&TokenRequest::new("bob", &gateway).client("other"))
        .await?;
    let fast = stack.url("fast");
    // Before any tail starts: not theirs to print.
    expect(&fast, &alice, INITIALIZE, 200).await?;
    let before = stream_with_decisions(&stack, 1).await?;

    let every = Tail::start(&stack, &["--count", "2", "--json"]).await?;
    let bobs = Tail::start(&stack, &["--count", "1", "--user", "bob"]).await?;
    expect(&fast, &alice, INITIALIZE, 200).await?;
    expect(&fast, &bob, INITIALIZE, 200).await?;
    let printed: Vec<Value> = every
        .finish()
        .await?
        .iter()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect::<Result<_>>()?;
    let bob_lines = bobs.finish().await?;

    let all = stream_with_decisions(&stack, 3).await?;
    assert_eq!(printed, all[before.len()..], "the two new events, in order");
    let users: Vec<&Value> = printed.iter().map(|e| &e["user"]).collect();
    assert_eq!(users, [&json!("alice"), &json!("bob")]);
    let bobs_event = &all[all.len() - 1];
    assert_eq!(
        bob_lines,
        [format!(
            "{} allow user=bob agent=other at=e2e/fast initialize reason=allowed status=200",
            bobs_event["time"].as_str().unwrap_or_default()
        )]
    );

    // --from-start begins with the oldest event kept.
    let first = audit_json(&stack, &["tail", "--from-start", "--count", "1"])?;
    assert_eq!(first, all[..1]);
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_commands_read_a_redis_cluster() -> Result<()> {
    // Every key carries the `{latchkey}` hash tag there: the CLI finds the
    // stream by the same prefix logic as the service.
    let stack = Stack::start(
        "audit_cli_cluster",
        StackOptions {
            fast_mcp_page_size: Some(100),
            redis_topology: RedisTopology::Cluster,
            ..Default::default()
        },
    )
    .await?;
    let alice = stack
        .token_with(&TokenRequest::new("alice", &stack.gateway_url()).client("audit-agent"))
        .await?;
    expect(&stack.url("fast"), &alice, INITIALIZE, 200).await?;
    let all = stream_with_decisions(&stack, 1).await?;
    assert_eq!(audit_json(&stack, &["query"])?, all);
    assert_eq!(
        audit_json(&stack, &["query", "--user", "alice"])?,
        all[all.len() - 1..]
    );
    assert_eq!(
        audit_json(&stack, &["tail", "--from-start", "--count", "1"])?,
        all[..1]
    );
    Ok(())
}
