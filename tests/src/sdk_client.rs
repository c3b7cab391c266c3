//! The official MCP SDKs as client processes, each printing one JSON line
//! per step, which the test reads as they come:
//! `tests/peers/url-elicitation-client.mjs` (TypeScript: declares URL-mode
//! elicitation, calls a tool, waits for `notifications/elicitation/complete`
//! and retries) and `tests/peers/approval_client.py` (Python: a call held
//! for approval, retried once a person decided, then made a third time).

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use crate::paths;

/// A running SDK client script.
pub struct SdkClient {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl SdkClient {
    /// Starts the TypeScript client against `url` as `token` (passed in the
    /// environment, never on the command line), calling `tool`, and waiting
    /// at most `wait` for the completion notification.
    pub fn typescript_url_elicitation(
        url: &str,
        token: &str,
        tool: &str,
        wait: Duration,
    ) -> Result<Self> {
        if !paths::peers_dir()
            .join("node_modules/@modelcontextprotocol/sdk")
            .exists()
        {
            bail!(
                "tests/peers/node_modules/@modelcontextprotocol/sdk is missing: run scripts/setup"
            );
        }
        let mut cmd = tokio::process::Command::new("node");
        cmd.arg(paths::peers_dir().join("url-elicitation-client.mjs"))
            .args([url, tool, &wait.as_millis().to_string()]);
        Self::spawn(
            cmd,
            token,
            "node for url-elicitation-client.mjs: install Node.js 20+",
        )
    }

    /// Starts the Python client against `url` as `token`, calling `tool`
    /// with `arguments`, retrying once `go_file` exists.
    pub fn python_approval(
        url: &str,
        token: &str,
        tool: &str,
        arguments: &serde_json::Value,
        go_file: &std::path::Path,
    ) -> Result<Self> {
        let mut cmd = tokio::process::Command::new(paths::venv_python()?);
        cmd.arg(paths::peers_dir().join("approval_client.py"))
            .args([url, tool, &arguments.to_string()])
            .arg(go_file);
        Self::spawn(cmd, token, "the Python SDK client approval_client.py")
    }

    fn spawn(mut cmd: tokio::process::Command, token: &str, what: &str) -> Result<Self> {
        let mut child = cmd
            .env("MCP_TOKEN", token)
            .current_dir(paths::peers_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
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
