//! The Wasm filter configured as the Istio manifests configure it
//! (`latchkey envoy istio`), in a real Envoy: Istio names the authorization
//! service's cluster `outbound|<port>||<host>` and the filter sends the
//! Service's host as `:authority`. No Kubernetes runs here (see NOTES.md), so
//! the manifests themselves are checked by unit tests (`istio.rs`), which
//! also prove their filter config is this bootstrap's, but for where the
//! code is loaded from.

use anyhow::{Context, Result, ensure};
use latchkey_e2e::client::INITIALIZE;
use latchkey_e2e::{McpClient, Stack, StackOptions, post_json};
use serde_json::json;

const SERVICE_HOST: &str = "latchkey.latchkey.svc.cluster.local";
const ISTIO_CLUSTER: &str = "outbound|9191||latchkey.latchkey.svc.cluster.local";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filter_works_with_istio_cluster_names() -> Result<()> {
    let stack = Stack::start(
        "istio_names",
        StackOptions {
            render_args: vec![
                "--authz-cluster".into(),
                ISTIO_CLUSTER.into(),
                "--authz-authority".into(),
                SERVICE_HOST.into(),
            ],
            ..Default::default()
        },
    )
    .await?;
    let alice = stack.token("alice").await?;

    // Allowed: the Check went through the Istio-named cluster and the
    // upstream got the service account's credential, not alice's token.
    let client = McpClient::connect(&stack.url("whoami"), &alice).await?;
    let r = client.call_tool("whoami", json!({})).await?;
    ensure!(
        McpClient::text(&r) == format!("Bearer {}", stack.whoami_secret),
        "the upstream got the injected credential: {r:?}"
    );
    client.close().await?;
    let checks = stack
        .envoy
        .stat(&format!("cluster.{ISTIO_CLUSTER}.upstream_rq_total"))?;
    ensure!(checks >= 3, "Checks through {ISTIO_CLUSTER}: {checks}");

    // Refused without a token, pointing at the metadata: the Check answers
    // through the same cluster.
    let r = post_json(&stack.url("whoami"), None, INITIALIZE, &[]).await?;
    ensure!(r.status == 401, "no token: {} {}", r.status, r.body);
    let challenge = r
        .header("www-authenticate")
        .context("a 401 names its metadata")?;
    ensure!(
        challenge.contains("resource_metadata="),
        "challenge: {challenge}"
    );
    stack.assert_no_secret_in_logs()?;
    Ok(())
}

/// `latchkey envoy istio` as an operator runs it: the manifest pins the
/// SHA-256 of the filter file it was given (the istio-agent loads those bytes
/// and no others), and a mistake in the arguments is named.
#[test]
fn the_cli_pins_the_filter_it_was_given_and_names_bad_arguments() -> Result<()> {
    use latchkey_e2e::paths;
    use std::process::Command;

    let wasm = paths::filter_wasm()?;
    let sum = Command::new("sha256sum").arg(&wasm).output()?;
    ensure!(sum.status.success(), "sha256sum failed");
    let sum = String::from_utf8(sum.stdout)?;
    let sum = sum
        .split_whitespace()
        .next()
        .context("sha256sum printed nothing")?;

    let config = paths::workspace_root().join("envoy/istio/example.toml");
    let rendered = Command::new(paths::latchkey_bin()?)
        .args(["envoy", "istio", "--config"])
        .arg(&config)
        .args([
            "--wasm-url",
            "https://artifacts.example.com/latchkey_filter.wasm",
            "--wasm",
        ])
        .arg(&wasm)
        .args(["--selector", "app=mcp-gateway", "--namespace", "mcp"])
        .output()?;
    let yaml = String::from_utf8(rendered.stdout)?;
    ensure!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    ensure!(
        yaml.contains(&format!("sha256: {sum}")),
        "the digest of {}: {yaml}",
        wasm.display()
    );
    ensure!(
        yaml.contains("app: mcp-gateway") && yaml.contains("namespace: mcp"),
        "{yaml}"
    );

    for (args, says) in [
        (
            vec!["--selector", "app"],
            "'app' is not a label: write key=value",
        ),
        (vec!["--wasm-sha256", "abc"], "is not a SHA-256 in hex"),
        (
            vec!["--wasm", "/nonexistent/latchkey_filter.wasm"],
            "/nonexistent/latchkey_filter.wasm",
        ),
    ] {
        let out = Command::new(paths::latchkey_bin()?)
            .args(["envoy", "istio", "--config"])
            .arg(&config)
            .args([
                "--wasm-url",
                "https://artifacts.example.com/latchkey_filter.wasm",
            ])
            .args(&args)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && err.contains(says),
            "{args:?}: {err}"
        );
        ensure!(out.stdout.is_empty(), "{args:?} printed a manifest anyway");
    }
    Ok(())
}
