//! Envoy 1.40 from the repo-local `.venv`, run on a given bootstrap with its
//! admin interface moved to a free loopback port, ready once admin `/ready`
//! answers `LIVE`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::paths;
use crate::process::{Process, free_port, http_get};

pub struct Envoy {
    pub admin_port: u16,
    /// The bootstrap file Envoy runs (`<dir>/<name>.yaml`).
    pub bootstrap: PathBuf,
    pub process: Process,
}

impl Envoy {
    /// Starts Envoy on `bootstrap_yaml`, logging to `<dir>/envoy.log`.
    pub fn start(dir: &Path, bootstrap_yaml: &str) -> Result<Envoy> {
        Self::start_named(dir, "envoy", bootstrap_yaml)
    }

    /// As [`Envoy::start`], with a process name for the log and bootstrap
    /// files (for scenarios that run several Envoys).
    ///
    /// Whatever `admin` the bootstrap names, the admin listens on a free
    /// port: `--config-yaml` merges an override over the file.
    pub fn start_named(dir: &Path, name: &str, bootstrap_yaml: &str) -> Result<Envoy> {
        Self::start_with_workers(dir, name, bootstrap_yaml, 1)
    }

    /// As [`Envoy::start_named`], with `workers` worker threads, each with
    /// its own Wasm VM. With more than one, each listener balances exactly
    /// (a new connection goes to the worker with the fewest), so that two
    /// connections open at once are on different workers: what one VM
    /// learns, a test can require another to know.
    pub fn start_with_workers(
        dir: &Path,
        name: &str,
        bootstrap_yaml: &str,
        workers: usize,
    ) -> Result<Envoy> {
        Self::start_logging(dir, name, bootstrap_yaml, workers, &["--log-level", "info"])
    }

    /// As [`Envoy::start_with_workers`], with `logging` as Envoy's log
    /// level arguments (e.g. [`DEBUG_LOGGING`]).
    pub fn start_logging(
        dir: &Path,
        name: &str,
        bootstrap_yaml: &str,
        workers: usize,
        logging: &[&str],
    ) -> Result<Envoy> {
        Self::start_full(dir, name, bootstrap_yaml, workers, logging, free_port())
    }

    /// Envoy on `bootstrap_yaml` as an operator runs it: admin on
    /// `admin_port` (the local stack's fixed one), `workers` threads, info logs.
    pub fn start_with_admin(
        dir: &Path,
        name: &str,
        bootstrap_yaml: &str,
        workers: usize,
        admin_port: u16,
    ) -> Result<Envoy> {
        Self::start_full(
            dir,
            name,
            bootstrap_yaml,
            workers,
            &["--log-level", "info"],
            admin_port,
        )
    }

    fn start_full(
        dir: &Path,
        name: &str,
        bootstrap_yaml: &str,
        workers: usize,
        logging: &[&str],
        admin_port: u16,
    ) -> Result<Envoy> {
        let balanced;
        let bootstrap_yaml = if workers > 1 {
            balanced = exact_balance(bootstrap_yaml)?;
            balanced.as_str()
        } else {
            bootstrap_yaml
        };
        let envoy = paths::envoy()?;
        let bootstrap = dir.join(format!("{name}.yaml"));
        std::fs::write(&bootstrap, bootstrap_yaml)
            .with_context(|| format!("writing {}", bootstrap.display()))?;
        let admin = format!(
            "{{admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}}}}}"
        );
        let mut cmd = Command::new(envoy);
        cmd.arg("-c")
            .arg(&bootstrap)
            .args(["--config-yaml", &admin])
            .args(["--base-id", &unique_base_id().to_string()])
            .args(["--concurrency", &workers.max(1).to_string()])
            .args(logging)
            // No shared memory: nothing stale is left behind by a killed run.
            .arg("--disable-hot-restart")
            .current_dir(dir);
        let mut process = Process::spawn(name, cmd, dir)?;
        let ready = format!("http://127.0.0.1:{admin_port}/ready");
        process.wait_until(&format!("LIVE at {ready}"), Duration::from_secs(30), || {
            http_get(&ready).is_some_and(|(status, body)| status == 200 && body.contains("LIVE"))
        })?;
        Ok(Envoy {
            admin_port,
            bootstrap,
            process,
        })
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// One admin page as text, e.g. `stats?filter=wasm` or `clusters`.
    pub fn admin_get(&self, path: &str) -> Result<String> {
        let url = format!("{}/{}", self.admin_url(), path.trim_start_matches('/'));
        http_get(&url)
            .map(|(_, body)| body)
            .with_context(|| format!("{}: no answer from {url}", self.process.name))
    }

    /// The value of one counter or gauge from admin `/stats`.
    ///
    /// A stat Envoy does not have is an error, never 0: an absence check
    /// ("nothing reached the upstream") that read a misspelt or renamed
    /// stat as 0 would pass whatever happened.
    pub fn stat(&self, name: &str) -> Result<u64> {
        let text = self.admin_get(&format!("stats?filter={name}"))?;
        let value = text.lines().find_map(|line| {
            let (k, v) = line.split_once(": ")?;
            (k == name).then_some(v.trim())
        });
        let value =
            value.with_context(|| format!("{}: Envoy has no stat {name}", self.process.name))?;
        value.parse().with_context(|| {
            format!(
                "{}: stat {name} is not a number: {value}",
                self.process.name
            )
        })
    }

    /// How many requests Envoy sent to the cluster of the upstream server
    /// `server` (as `latchkey envoy render` names it: `server_<name>`).
    pub fn upstream_requests(&self, server: &str) -> Result<u64> {
        self.stat(&format!("cluster.server_{server}.upstream_rq_total"))
    }
}

/// Envoy at debug for the log scan: every logger, the Wasm filter's and
/// ext_authz's included, but for the ones that print whole header maps at
/// debug (`http`: the request headers as they arrive; `router`: the headers
/// sent upstream, the injected credential included). No setting redacts
/// those lines, so an operator must keep these loggers at info wherever
/// real credentials pass (the README says so).
pub const DEBUG_LOGGING: &[&str] = &[
    "--log-level",
    "debug",
    "--component-log-level",
    "http:info,router:info",
];

/// A base id no other Envoy of this test run uses (pid-derived, so parallel
/// test binaries differ too).
fn unique_base_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    (std::process::id() % 100_000) * 100 + NEXT.fetch_add(1, Ordering::Relaxed) % 100
}

/// `bootstrap` with `connection_balance_config: {exact_balance: {}}` on
/// every listener (a rendered bootstrap: listeners at four spaces, each
/// with `filter_chains`).
fn exact_balance(bootstrap: &str) -> Result<String> {
    const AT: &str = "\n    filter_chains:";
    if !bootstrap.contains(AT) {
        anyhow::bail!("no listener with filter_chains in the bootstrap to balance");
    }
    Ok(bootstrap.replace(
        AT,
        &format!("\n    connection_balance_config: {{exact_balance: {{}}}}{AT}"),
    ))
}
