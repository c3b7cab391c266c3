//! `latchkey access review` against a running stack: Envoy with the Wasm
//! filter, `latchkey serve`, Redis. What people and agents may call comes
//! from the policy; which identity and when it was last let through comes
//! from the decisions the replica made (written off the request path);
//! what looks stale comes with the command that acts on it.

use anyhow::{Context, Result, ensure};
use latchkey_e2e::stack::run;
use latchkey_e2e::{McpClient, Stack, StackOptions, eventually};
use serde_json::{Value, json};

const POLICY: &str = r#"
[policy]
[[policy.grants]]
name = "people-whoami"
gateway = "e2e"
assignments = ["whoami-mine"]
users = ["alice", "carol"]
tools = { allow = ["whoami"] }

[[policy.grants]]
name = "bots"
gateway = "e2e"
assignments = ["whoami"]
agents = ["ghost-bot"]
tools = { allow = ["*"] }
"#;

fn review(stack: &Stack, args: &[&str]) -> Result<Value> {
    let out = run(
        stack
            .config_cli()?
            .args(["access", "review", "--json"])
            .args(args),
        None,
    )?;
    Ok(serde_json::from_str(&out)?)
}

fn principal<'a>(review: &'a Value, kind: &str, name: &str) -> Option<&'a Value> {
    review["principals"]
        .as_array()?
        .iter()
        .find(|p| p["kind"] == kind && p["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_review_shows_who_may_call_what_through_which_identity_and_what_is_stale()
-> Result<()> {
    let stack = Stack::start(
        "access_review",
        StackOptions {
            policy: Some(POLICY.into()),
            ..Default::default()
        },
    )
    .await?;
    // Alice connects her own identity and uses it; carol stores one and is
    // then deactivated.
    stack
        .connect_own_identity("alice", "whoami", "alice-whoami")
        .await?;
    stack
        .connect_own_identity("carol", "whoami", "carol-whoami")
        .await?;
    let ops = stack.admin_token("ops", &["platform-admins"]).await?;
    stack.cli(0, &ops, &["user", "deactivate", "carol"], None)?;
    let alice = stack.token("alice").await?;
    let client = McpClient::connect(&stack.url("whoami-mine"), &alice).await?;
    client.call_tool("whoami", json!({})).await?;
    client.close().await?;

    // Last-used times arrive within a flush (5 s) of the call.
    let r = eventually("alice's identity shows as used", async || {
        let r = review(&stack, &[])?;
        let used = principal(&r, "user", "alice")
            .and_then(|a| a["access"][0]["identity_last_used"].as_str())
            .is_some();
        Ok(if used { Ok(r) } else { Err(r.to_string()) })
    })
    .await?;
    let a = principal(&r, "user", "alice").context("alice is reviewed")?;
    ensure!(
        a["status"] == "enabled" && a["last_used"].is_string(),
        "{a}"
    );
    let row = &a["access"][0];
    ensure!(
        (
            &row["gateway"],
            &row["assignment"],
            &row["server"],
            &row["scheme"],
            &row["grants"],
            &row["tools"],
            &row["identity"],
            &row["identity_status"]
        ) == (
            &json!("e2e"),
            &json!("whoami-mine"),
            &json!("whoami"),
            &json!("per_user"),
            &json!(["people-whoami"]),
            &json!(["whoami"]),
            &json!("alice-whoami"),
            &json!("enabled")
        ),
        "{row}"
    );
    ensure!(row["identity_refreshed"].is_string(), "{row}");
    ensure!(
        a["identities"][0]["id"] == "alice-whoami" && a["identities"][0]["last_used"].is_string(),
        "{a}"
    );

    // Carol: deactivated, still named by a grant, her private identity
    // kept and never used since; the grant's ghost agent is unknown.
    let c = principal(&r, "user", "carol").context("carol is reviewed")?;
    ensure!(c["status"] == "disabled", "{c}");
    ensure!(
        c["identities"][0]["id"] == "carol-whoami" && c["identities"][0]["last_used"].is_null(),
        "{c}"
    );
    let g = principal(&r, "agent", "ghost-bot").context("ghost-bot is reviewed")?;
    ensure!(
        g["source"] == "unprovisioned" && g["access"][0]["assignment"] == "whoami",
        "{g}"
    );
    let findings: Vec<(String, String)> = r["findings"]
        .as_array()
        .context("findings")?
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap_or("").to_string(),
                f["subject"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for expected in [
        ("identity_of_deactivated_user", "carol-whoami"),
        ("disabled_with_grants", "carol"),
        ("grant_names_unknown_agent", "ghost-bot"),
    ] {
        ensure!(
            findings
                .iter()
                .any(|(k, s)| (k.as_str(), s.as_str()) == expected),
            "{expected:?} in {findings:?}"
        );
    }
    // Nothing is stale by age: every identity is minutes old (positive
    // control for the fixture-tested `unused_identity`, which needs days).
    ensure!(
        !findings.iter().any(|(k, _)| k == "unused_identity"),
        "{findings:?}"
    );

    // The operator acts on a finding, and the review sees it.
    let fix = r["findings"]
        .as_array()
        .and_then(|f| {
            f.iter()
                .find(|f| f["kind"] == "identity_of_deactivated_user")
        })
        .and_then(|f| f["fix"].as_str())
        .context("a fix")?;
    ensure!(fix == "latchkey identity delete carol-whoami", "{fix}");
    stack.cli(0, &ops, &["identity", "delete", "carol-whoami"], None)?;
    let after = review(&stack, &["--user", "carol"])?;
    ensure!(
        after["principals"].as_array().map(Vec::len) == Some(1),
        "only carol: {after}"
    );
    ensure!(
        principal(&after, "user", "carol").is_some_and(|c| c.get("identities").is_none()),
        "{after}"
    );

    // CSV: a header and one line per principal and assignment.
    let csv = run(
        stack
            .config_cli()?
            .args(["access", "review", "--csv", "--user", "alice"]),
        None,
    )?;
    let lines: Vec<&str> = csv.lines().collect();
    ensure!(
        lines.len() == 2 && lines[0].starts_with("kind,name,status"),
        "{csv}"
    );
    ensure!(
        lines[1].starts_with("user,alice,enabled,") && lines[1].contains(",alice-whoami,enabled,"),
        "{csv}"
    );
    Ok(())
}
