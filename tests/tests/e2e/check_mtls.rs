//! The Check listener answers only the Envoys meant to call it. An allowed
//! Check carries the decrypted downstream credential, so with
//! `[listen.grpc_tls]` the gRPC listener requires a client certificate from
//! its own CA naming an allowed client, and `latchkey envoy render
//! --authz-ca/--authz-cert/--authz-key/--authz-name` gives Envoy's cluster
//! for it (the Wasm filter's Check and native ext_authz alike) that
//! certificate. Real Envoy with the real `.wasm`, real Redis, and a
//! process of the test's own as the attacker calling Check directly: with
//! no TLS, with no client certificate, with a certificate from another CA
//! naming Envoy, and with one from the right CA for another name (an
//! agent's SPIFFE ID). Each is refused and gets no credential; the same
//! Check with Envoy's certificate gets one (the positive control, read the
//! same way). `latchkey serve` refuses a plaintext non-loopback gRPC
//! address, naming both ways out, and starts with the explicit opt-out,
//! warning loudly.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use latchkey_e2e::attacker::{Caller, direct_check, whoami_check};
use latchkey_e2e::stack::{AuthzMode, ENVOY_CHECK_CLIENT};
use latchkey_e2e::{McpClient, Process, Stack, StackOptions, free_port, paths};
use serde_json::json;

async fn mtls_check_listener(mode: AuthzMode, scenario: &str) -> Result<()> {
    let stack = Stack::start(
        scenario,
        StackOptions {
            mode,
            grpc_mtls: true,
            ..StackOptions::default()
        },
    )
    .await?;
    let alice = stack.token("alice").await?;
    let credential = format!("Bearer {}", stack.whoami_secret);

    // Positive control through Envoy: every message goes through Check
    // over mTLS and the upstream gets the service account's credential.
    let client = McpClient::connect(&stack.url("whoami"), &alice).await?;
    let result = client.call_tool("whoami", json!({})).await?;
    ensure!(
        McpClient::text(&result) == credential,
        "the upstream did not get the service account's credential"
    );
    client.close().await?;

    // The same Check, sent by a process with Envoy's client certificate:
    // answered, with the credential (the direct caller works).
    let pki = stack.grpc_pki.as_ref().context("the Check listener's CA")?;
    let envoys = pki.client(ENVOY_CHECK_CLIENT)?;
    let headers = direct_check(
        &stack,
        Caller::Tls(Some(&envoys)),
        whoami_check(&stack, &alice),
    )
    .await
    .map_err(|e| anyhow::anyhow!("Envoy's certificate was refused: {e}"))?;
    ensure!(
        headers.iter().any(|(_, v)| *v == credential),
        "an allowed Check carries the credential: {:?}",
        headers.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );

    // Every other caller: refused, and no credential in any answer.
    let same_ca_other_name = pki.client("spiffe://e2e.test/ns/agents/sa/e2e-agent")?;
    let other_ca = pki.untrusted_client(ENVOY_CHECK_CLIENT)?;
    let attempts: [(&str, Caller<'_>); 4] = [
        ("no TLS", Caller::Plaintext),
        ("TLS without a client certificate", Caller::Tls(None)),
        (
            "a certificate from another CA naming Envoy",
            Caller::Tls(Some(&other_ca)),
        ),
        (
            "a certificate from the right CA for another name",
            Caller::Tls(Some(&same_ca_other_name)),
        ),
    ];
    for (what, caller) in attempts {
        match direct_check(&stack, caller, whoami_check(&stack, &alice)).await {
            Ok(headers) => bail!(
                "{what}: answered, credential included: {}",
                headers
                    .iter()
                    .any(|(_, v)| v.contains(&stack.whoami_secret))
            ),
            Err(e) => {
                ensure!(!e.contains(&stack.whoami_secret), "{what}: {e}");
                eprintln!("{what}: refused ({e})");
                if what.contains("right CA") {
                    // Past the handshake, stopped before the service.
                    ensure!(
                        e.contains("PermissionDenied") && e.contains("allowed_clients"),
                        "{what}: {e}"
                    );
                }
            }
        }
    }
    // Nothing the refused callers sent reached a decision: the one direct
    // Check that was answered is the only one with its request id.
    let decisions = stack
        .latchkey()
        .context("replica 0")?
        .log_text()
        .lines()
        .filter(|l| l.contains("\"latchkey::decision\"") && l.contains("direct-check"))
        .count();
    ensure!(
        decisions == 1,
        "{decisions} decisions of direct Checks, not 1"
    );
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_envoys_certificate_gets_an_answer_from_the_check_listener_wasm() -> Result<()> {
    mtls_check_listener(AuthzMode::Wasm, "check_mtls_wasm").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_envoys_certificate_gets_an_answer_from_the_check_listener_native() -> Result<()> {
    mtls_check_listener(AuthzMode::Native, "check_mtls_native").await
}

/// Replica 0's config with its listen addresses on fresh ports, its gRPC
/// one on every interface, and `extra` after the `grpc` line.
fn reachable_config(stack: &Stack, extra: &str) -> Result<String> {
    let r = &stack.replicas[0];
    let text = std::fs::read_to_string(&r.config_path)?;
    let grpc = format!("grpc = \"127.0.0.1:{}\"", r.grpc_port);
    ensure!(text.contains(&grpc), "the stack's config changed shape");
    Ok(text
        .replace(
            &grpc,
            &format!("grpc = \"0.0.0.0:{}\"\n{extra}", free_port()),
        )
        .replace(
            &format!("127.0.0.1:{}", r.http_port),
            &format!("127.0.0.1:{}", free_port()),
        )
        .replace(
            &format!("127.0.0.1:{}", r.admin_port),
            &format!("127.0.0.1:{}", free_port()),
        ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_plaintext_grpc_off_loopback_unless_told_it_is_insecure() -> Result<()> {
    let stack = Stack::start("check_reachable", StackOptions::default()).await?;
    let bin = paths::latchkey_bin()?;

    // Plaintext on 0.0.0.0: refused at start, naming both ways out.
    let refused = stack.dir.join("reachable.toml");
    std::fs::write(&refused, reachable_config(&stack, "")?)?;
    let mut cmd = Command::new(&bin);
    cmd.args(["serve", "--config"]).arg(&refused);
    let mut p = Process::spawn("latchkey-refused", cmd, &stack.dir)?;
    let status = p
        .wait_exit(Duration::from_secs(10))
        .with_context(|| format!("serve did not refuse to start: {}", p.log_text()))?;
    let stderr = p.log_text();
    ensure!(!status.success(), "serve exited 0: {stderr}");
    ensure!(
        stderr.contains("refusing to serve gRPC on 0.0.0.0:")
            && stderr.contains("[listen.grpc_tls]")
            && stderr.contains("grpc_insecure = true"),
        "{stderr}"
    );

    // The explicit opt-out: it starts (ready), and says loudly what it does.
    let insecure = stack.dir.join("insecure.toml");
    let text = reachable_config(&stack, "grpc_insecure = true")?;
    std::fs::write(&insecure, &text)?;
    let http_port = text
        .split("http = \"127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("the http port")?
        .to_string();
    let mut cmd = Command::new(&bin);
    cmd.args(["serve", "--config"]).arg(&insecure);
    let mut p = Process::spawn("latchkey-insecure", cmd, &stack.dir)?;
    p.wait_for_own_readyz(
        &format!("http://127.0.0.1:{http_port}/readyz"),
        Duration::from_secs(20),
    )?;
    let warning = p
        .log_text()
        .lines()
        .find(|l| l.contains("INSECURE"))
        .map(str::to_string)
        .context("no INSECURE line in the log")?;
    ensure!(
        warning.contains("\"level\":\"WARN\"")
            && warning.contains("grpc_insecure")
            && warning.contains("decrypted credential"),
        "{warning}"
    );
    // The loopback replica of the stack says nothing of the kind.
    ensure!(
        !stack
            .latchkey()
            .context("replica 0")?
            .log_text()
            .contains("INSECURE")
    );
    p.stop();
    Ok(())
}
