//! The local stack `scripts/start` shows, started by the same code
//! (`latchkey_e2e::local`) from `envoy/latchkey.local.toml` itself, with
//! only its ports moved to free ones (a developer's own local stack may be
//! running on the real ones) and its master key put in the scenario folder.

use std::process::Command;

use anyhow::{Context, Result};
use latchkey_e2e::local::{LocalStack, LocalStackOptions};
use latchkey_e2e::paths::{workspace_bin, workspace_root};
use latchkey_e2e::secrets::scan_logs;
use latchkey_e2e::{free_port, scenario_dir};

/// Every loopback port the local config names.
const LOCAL_PORTS: [u16; 9] = [9191, 8181, 9192, 6379, 9400, 3001, 3002, 3003, 10000];

#[test]
fn the_local_stack_starts_what_its_config_names_and_an_mcp_client_gets_through() -> Result<()> {
    let dir = scenario_dir("local_stack")?;
    let mut config = std::fs::read_to_string(workspace_root().join("envoy/latchkey.local.toml"))?;
    for port in LOCAL_PORTS {
        config = config.replace(
            &format!("127.0.0.1:{port}"),
            &format!("127.0.0.1:{}", free_port()),
        );
    }
    let key_file = dir.join("master.keys");
    config = config.replace(".local/master.keys", &key_file.display().to_string());
    let config_path = dir.join("latchkey.local.toml");
    std::fs::write(&config_path, &config)?;
    let opts = LocalStackOptions {
        config: config_path,
        state: dir.clone(),
        envoy_admin: free_port(),
        envoy_workers: 1,
    };
    let stack = LocalStack::start(&opts, |s| println!("{s}"))?;
    assert!(
        stack.redis.is_some(),
        "nothing was on the config's Redis port, so the stack starts its own"
    );
    assert!(
        std::fs::read_to_string(&key_file)?.starts_with("local1:"),
        "a master key was created where the config's key_file says"
    );
    let servers: Vec<&str> = stack.secret_files.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        servers,
        ["everything", "whoami"],
        "service-account secrets are stored for the shared assignments' static-secret servers"
    );

    // A second stack on the same config is refused before it starts
    // anything, naming the first port it found taken.
    let second = LocalStack::start(&opts, |_| {})
        .err()
        .context("a second local stack on the same ports started; it must be refused")?;
    let second = format!("{second:#}");
    assert!(
        second.contains("(the identity provider) is in use by another program"),
        "{second}"
    );

    // The demo client `scripts/start` runs, against the first stack, which
    // the refused second one left working.
    let whoami_secret = dir.join("whoami.secret");
    let out = Command::new(workspace_bin("mcp-demo")?)
        .args(["--gateway", &stack.gateway_url])
        .args(["--idp", &stack.idp.issuer()])
        .arg("--expect-credential-file")
        .arg(&whoami_secret)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    std::fs::write(
        dir.join("mcp-demo.log"),
        [&out.stdout[..], &out.stderr[..]].concat(),
    )?;
    assert!(
        out.status.success(),
        "mcp-demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("upstream received the gateway's service-account credential: yes"),
        "{stdout}"
    );
    assert!(stdout.contains("The local stack works."), "{stdout}");

    let mut secrets: Vec<String> = stack
        .secret_files
        .iter()
        .map(|(_, f)| std::fs::read_to_string(f).map(|s| s.trim().to_string()))
        .collect::<std::io::Result<_>>()?;
    let key = std::fs::read_to_string(&key_file)?;
    secrets.push(
        key.trim()
            .split_once(':')
            .map(|(_, k)| k.to_string())
            .unwrap_or_default(),
    );
    // The secret files themselves hold the secrets; every log must not.
    let scanned = scan_logs(&dir.join("logs"), &secrets)?;
    assert!(scanned > 0, "the log scan read the stack's logs");
    Ok(())
}
