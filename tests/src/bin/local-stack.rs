//! `local-stack`: starts the local stack `scripts/start` shows (see
//! `latchkey_e2e::local`) and keeps it up until asked to stop (SIGINT,
//! SIGTERM or SIGHUP), then stops everything it started.
//!
//! Once every part answers it writes `<state>/ready` (the gateway's URL);
//! its pid is in `<state>/local-stack.pid` from the start, so a later run
//! can stop this one.
//!
//! Usage: `local-stack --config <file> --state <dir> [--envoy-admin <port>] [--workers <n>]`

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use latchkey_e2e::local::{LocalStack, LocalStackOptions};
use latchkey_e2e::process::{stop_all_started, stop_requested};

const USAGE: &str =
    "usage: local-stack --config <file> --state <dir> [--envoy-admin <port>] [--workers <n>]";

fn options() -> Result<LocalStackOptions> {
    let mut config = None;
    let mut state = None;
    let mut envoy_admin = 9901;
    let mut envoy_workers = 2;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value; {USAGE}"))?;
        match flag.as_str() {
            "--config" => config = Some(PathBuf::from(value)),
            "--state" => state = Some(PathBuf::from(value)),
            "--envoy-admin" => envoy_admin = value.parse().context("--envoy-admin: a port")?,
            "--workers" => envoy_workers = value.parse().context("--workers: a number")?,
            other => bail!("unknown flag {other}; {USAGE}"),
        }
    }
    Ok(LocalStackOptions {
        config: config.with_context(|| format!("--config is required; {USAGE}"))?,
        state: state.with_context(|| format!("--state is required; {USAGE}"))?,
        envoy_admin,
        envoy_workers,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let opts = options()?;
    std::fs::create_dir_all(&opts.state)
        .with_context(|| format!("creating {}", opts.state.display()))?;
    let ready = opts.state.join("ready");
    let _ = std::fs::remove_file(&ready);
    std::fs::write(
        opts.state.join("local-stack.pid"),
        std::process::id().to_string(),
    )?;
    // A stop asked for while the stack is still starting ends it there.
    let starting = tokio::spawn(async {
        stop_requested().await;
        eprintln!("local-stack: stopping everything it started");
        stop_all_started();
        std::process::exit(130);
    });

    let stack = tokio::task::spawn_blocking(move || {
        LocalStack::start(&opts, |step| println!("==> {step}")).map(|s| (s, opts))
    })
    .await?;
    let (stack, opts) = match stack {
        Ok(s) => s,
        Err(e) => {
            stop_all_started();
            return Err(e);
        }
    };
    starting.abort();
    std::fs::write(&ready, format!("{}\n", stack.gateway_url))?;

    stop_requested().await;
    let _ = std::fs::remove_file(&ready);
    let _ = std::fs::remove_file(opts.state.join("local-stack.pid"));
    drop(stack);
    stop_all_started();
    Ok(())
}
