//! A real browser for scenarios where a person uses a web page (sign in,
//! consent): Debian's Chromium, headless, driven by `tests/peers/browser.mjs`
//! (npm `playwright-core`) through a plan of steps.
//!
//! ```ignore
//! let browser = Browser::new("connect_flow")?;   // screenshots in target/e2e-artifacts/connect_flow/
//! let steps = browser.run(json!({"steps": [
//!     {"goto": url},
//!     {"fill": "#username", "value": "alice"},
//!     {"click": "#sign-in"},
//!     {"expect_text": "Connected"},
//!     {"screenshot": "connected"},
//!     {"context": "bob"},            // a second cookie jar, e.g. another person
//! ]})).await?;
//! ```
//! The plan's format is documented at the top of `browser.mjs`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::paths;

/// Where Debian's `chromium` package puts the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The bound on one whole plan.
pub const PLAN_TIMEOUT: Duration = Duration::from_secs(120);

/// What one step of a plan did (one JSON line of `browser.mjs`).
#[derive(Debug, Clone, Deserialize)]
pub struct StepResult {
    pub index: usize,
    /// `goto`, `fill`, `click`, `select`, `expect_text`, `expect_url_prefix`,
    /// `read_text`, `screenshot`, `context`, `set_cookie` or `cookie_digest`.
    pub action: String,
    pub ok: bool,
    /// The page's URL after the step, secret query parameters (`code`,
    /// tokens) shown as `REDACTED`.
    #[serde(default)]
    pub url: String,
    /// The cookie jar the step ran in (`default` until a `context` step).
    #[serde(default)]
    pub context: String,
    /// The HTTP status of a `goto`.
    pub status: Option<u16>,
    /// The element text of a `read_text`; for `cookie_digest` the SHA-256
    /// (hex) of each value of the cookie, comma-separated (empty: none).
    pub text: Option<String>,
    /// Where a `screenshot` went.
    pub path: Option<PathBuf>,
    /// Why the step failed.
    pub error: Option<String>,
    /// The first 2 000 characters of the page when the step failed.
    pub page_text: Option<String>,
    /// The `failure.png` of a failed step.
    pub screenshot: Option<PathBuf>,
}

/// Runs plans for one test, keeping screenshots, plans and browser output
/// under `target/e2e-artifacts/<test>/`.
pub struct Browser {
    artifacts: PathBuf,
    runs: AtomicU32,
}

impl Browser {
    /// Checks Chromium and `playwright-core` are installed and empties the
    /// test's artifacts folder.
    pub fn new(test: &str) -> Result<Browser> {
        if !Path::new(CHROMIUM).exists() {
            bail!("{CHROMIUM} is missing: run scripts/setup (installs Debian's chromium)");
        }
        if !paths::peers_dir()
            .join("node_modules/playwright-core")
            .exists()
        {
            bail!("tests/peers/node_modules/playwright-core is missing: run scripts/setup");
        }
        let artifacts = paths::target_dir().join("e2e-artifacts").join(test);
        let _ = std::fs::remove_dir_all(&artifacts);
        std::fs::create_dir_all(&artifacts)
            .with_context(|| format!("creating {}", artifacts.display()))?;
        Ok(Browser {
            artifacts,
            runs: AtomicU32::new(0),
        })
    }

    /// `target/e2e-artifacts/<test>/`: screenshots, `failure.png`, and each
    /// run's `plan-<n>.json` and `browser-<n>.log`.
    pub fn artifacts_dir(&self) -> &Path {
        &self.artifacts
    }

    /// Runs `plan` (a JSON object with `steps`; `screenshots_dir` defaults
    /// to the artifacts folder) in a fresh headless Chromium and returns one
    /// result per step. Fails when a step fails, naming the step, the page's
    /// URL and text, with the browser's whole output.
    pub async fn run(&self, mut plan: serde_json::Value) -> Result<Vec<StepResult>> {
        let object = plan
            .as_object_mut()
            .context("a browser plan is a JSON object with \"steps\"")?;
        object
            .entry("screenshots_dir")
            .or_insert_with(|| self.artifacts.to_string_lossy().into_owned().into());
        let n = self.runs.fetch_add(1, Ordering::Relaxed) + 1;
        let plan_file = self.artifacts.join(format!("plan-{n}.json"));
        std::fs::write(&plan_file, serde_json::to_vec_pretty(&plan)?)
            .with_context(|| format!("writing {}", plan_file.display()))?;

        let mut cmd = tokio::process::Command::new("node");
        cmd.arg(paths::peers_dir().join("browser.mjs"))
            .arg(&plan_file)
            .current_dir(paths::peers_dir())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            // Its own process group, so Chromium goes too if the plan hangs.
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .context("starting node for browser.mjs: install Node.js 20+")?;
        let pid = child.id();
        let output = match tokio::time::timeout(PLAN_TIMEOUT, child.wait_with_output()).await {
            Ok(output) => output.context("waiting for browser.mjs")?,
            Err(_) => {
                if let Some(pid) = pid {
                    // SAFETY: signalling the process group we created; no memory is touched.
                    unsafe {
                        libc::kill(-(pid as i32), libc::SIGKILL);
                    }
                }
                bail!(
                    "the browser plan {} did not finish within {PLAN_TIMEOUT:?}",
                    plan_file.display()
                );
            }
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let log = self.artifacts.join(format!("browser-{n}.log"));
        let _ = std::fs::write(&log, format!("{stdout}{stderr}"));

        let results: Vec<StepResult> = stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if !output.status.success() {
            let failed = results.iter().find(|r| !r.ok);
            let what = match failed {
                Some(r) => format!(
                    "step {} ({}) failed: {}\n  url: {}\n  page text: {}\n  screenshot: {}",
                    r.index,
                    r.action,
                    r.error.as_deref().unwrap_or("?"),
                    r.url,
                    r.page_text.as_deref().unwrap_or(""),
                    r.screenshot
                        .as_deref()
                        .map_or_else(|| "none".into(), |p| p.display().to_string())
                ),
                None => format!("browser.mjs exited with {}", output.status),
            };
            bail!(
                "browser plan {} failed: {what}\n--- browser output ({}) ---\n{stdout}{stderr}",
                plan_file.display(),
                log.display()
            );
        }
        let steps = plan["steps"].as_array().map_or(0, Vec::len);
        if results.len() != steps {
            bail!(
                "browser plan {}: {} of {steps} steps reported\n{stdout}{stderr}",
                plan_file.display(),
                results.len()
            );
        }
        Ok(results)
    }
}
