//! The official TypeScript MCP SDK as a client process
//! (`tests/peers/url-elicitation-client.mjs`): it declares URL-mode
//! elicitation, calls a tool, waits for `notifications/elicitation/complete`
//! and retries, printing one JSON line per step, which the test reads as
//! they come.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use crate::paths;

/// A running `url-elicitation-client.mjs`.
pub struct UrlElicitationClient {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl UrlElicitationClient {
    /// Starts the client against `url` as `token` (passed in the
    /// environment, never on the command line), calling `tool`, and waiting
    /// at most `wait` for the completion notification.
    pub fn start(url: &str, token: &str, tool: &str, wait: Duration) -> Result<Self> {
        if !paths::peers_dir()
            .join("node_modules/@modelcontextprotocol/sdk")
            .exists()
        {
            bail!(
                "tests/peers/node_modules/@modelcontextprotocol/sdk is missing: run scripts/setup"
            );
        }
        let mut child = tokio::process::Command::new("node")
            .arg(paths::peers_dir().join("url-elicitation-client.mjs"))
            .args([url, tool, &wait.as_millis().to_string()])
            .env("MCP_TOKEN", token)
            .current_dir(paths::peers_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting node for url-elicitation-client.mjs: install Node.js 20+")?;
        let stdout = child.stdout.take().context("the client's stdout")?;
        Ok(Self {
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// The next step line, which must be `step`; fails on a `failed` line,
    /// on another step, on the end of output, or after `timeout`.
    pub async fn expect(&mut self, step: &str, timeout: Duration) -> Result<serde_json::Value> {
        let line = tokio::time::timeout(timeout, self.lines.next_line())
            .await
            .with_context(|| {
                format!("the SDK client printed no step within {timeout:?} (waiting for {step})")
            })??;
        let Some(line) = line else {
            let stderr = self.stderr().await;
            bail!("the SDK client ended before step {step}; its stderr: {stderr}");
        };
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("not a step line: {line}"))?;
        if v["step"] != step {
            let stderr = self.stderr().await;
            bail!("expected step {step}, the SDK client said {v}; its stderr: {stderr}");
        }
        Ok(v)
    }

    async fn stderr(&mut self) -> String {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        let mut out = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use tokio::io::AsyncReadExt;
            let _ = e.read_to_string(&mut out).await;
        }
        out
    }

    /// Waits for the client to exit; fails unless it exited 0.
    pub async fn finish(mut self) -> Result<()> {
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .context("the SDK client did not exit")??;
        if !status.success() {
            let stderr = self.stderr().await;
            bail!("the SDK client exited with {status}; its stderr: {stderr}");
        }
        Ok(())
    }
}
