//! The real peers Latchkey talks to in tests: Redis, the organisation's
//! identity provider (oauth2-mock-server), and upstream MCP servers
//! (`@modelcontextprotocol/server-everything` and the rmcp-based `auth-echo`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::paths;
use crate::process::{Process, free_port, http_status};

pub struct Redis {
    pub port: u16,
    pub process: Process,
}

impl Redis {
    pub fn start(dir: &Path) -> Result<Redis> {
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .current_dir(dir);
        let mut process = Process::spawn("redis", cmd, dir)
            .context("redis-server not found: run scripts/setup")?;
        process.wait_for_port(port, Duration::from_secs(10))?;
        Ok(Redis { port, process })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs one command with redis-cli semantics over a raw connection.
    pub fn command(&self, args: &[&str]) -> Result<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes())?;
        let mut buf = vec![0u8; 1 << 16];
        let n = s.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

/// What to put in a token the identity provider issues.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub client_id: String,
    pub sub: String,
    pub aud: String,
    /// Seconds from now until `exp`; negative for an expired token.
    pub exp_offset: i64,
    /// Overrides the `iss` claim (the signature stays valid).
    pub iss: Option<String>,
}

impl TokenRequest {
    pub fn new(sub: &str, aud: &str) -> Self {
        Self {
            client_id: "e2e-agent".into(),
            sub: sub.into(),
            aud: aud.into(),
            exp_offset: 600,
            iss: None,
        }
    }
}

pub struct Idp {
    pub port: u16,
    /// `None` when talking to an identity provider someone else started.
    pub process: Option<Process>,
}

impl Idp {
    /// An identity provider already running at `issuer` (`http://127.0.0.1:<port>`).
    pub fn at(issuer: &str) -> Idp {
        let port = issuer
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .unwrap_or(0);
        Idp {
            port,
            process: None,
        }
    }

    pub fn start(dir: &Path) -> Result<Idp> {
        let port = free_port();
        let mut cmd = Command::new("node");
        cmd.arg(paths::peers_dir().join("idp.mjs"))
            .args(["--port", &port.to_string()]);
        if !paths::peers_dir().join("node_modules").exists() {
            bail!("tests/peers/node_modules is missing: run scripts/setup");
        }
        let mut process = Process::spawn("idp", cmd, dir)?;
        process.wait_for_log("IDP_READY", Duration::from_secs(20))?;
        Ok(Idp {
            port,
            process: Some(process),
        })
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn token(&self, req: &TokenRequest) -> Result<String> {
        let mut form = vec![
            ("grant_type", "client_credentials".to_string()),
            ("client_id", req.client_id.clone()),
            ("sub", req.sub.clone()),
            ("aud", req.aud.clone()),
            ("exp_offset", req.exp_offset.to_string()),
        ];
        if let Some(iss) = &req.iss {
            form.push(("iss", iss.clone()));
        }
        let reply: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/token", self.issuer()))
            .form(&form)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        reply["access_token"]
            .as_str()
            .map(str::to_string)
            .context("identity provider answered without access_token")
    }
}

/// The claims of a JWT, without verifying it (for test assertions).
pub fn jwt_claims(token: &str) -> Result<serde_json::Value> {
    let payload = token.split('.').nth(1).context("not a JWT")?;
    Ok(serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload)?)?)
}

/// The protected header of a JWT (for test assertions).
pub fn jwt_header(token: &str) -> Result<serde_json::Value> {
    let header = token.split('.').next().context("not a JWT")?;
    Ok(serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header)?)?)
}

/// The same token with its signature altered (a forged token).
pub fn tamper_signature(token: &str) -> String {
    let (rest, sig) = token.rsplit_once('.').unwrap_or((token, ""));
    let mut bytes = URL_SAFE_NO_PAD.decode(sig).unwrap_or_default();
    if let Some(b) = bytes.get_mut(10) {
        *b ^= 0x55;
    }
    format!("{rest}.{}", URL_SAFE_NO_PAD.encode(bytes))
}

pub struct Everything {
    pub port: u16,
    pub process: Process,
}

impl Everything {
    pub fn start(dir: &Path) -> Result<Everything> {
        let port = free_port();
        let mut cmd = Command::new(paths::node_bin("mcp-server-everything")?);
        cmd.arg("streamableHttp").env("PORT", port.to_string());
        let mut process = Process::spawn("everything", cmd, dir)?;
        process.wait_for_port(port, Duration::from_secs(20))?;
        Ok(Everything { port, process })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }
}

pub struct AuthEcho {
    pub port: u16,
    pub process: Process,
}

impl AuthEcho {
    pub fn start(dir: &Path) -> Result<AuthEcho> {
        let port = free_port();
        let mut cmd = Command::new(paths::workspace_bin("auth-echo")?);
        cmd.args(["--port", &port.to_string()]);
        let mut process = Process::spawn("auth-echo", cmd, dir)?;
        process.wait_for_port(port, Duration::from_secs(10))?;
        Ok(AuthEcho { port, process })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    /// What the upstream received so far: `authorization` values, header names, request count.
    pub async fn seen(&self) -> Result<serde_json::Value> {
        Ok(reqwest::get(format!("http://127.0.0.1:{}/seen", self.port))
            .await?
            .json()
            .await?)
    }

    pub async fn requests(&self) -> Result<u64> {
        Ok(self.seen().await?["requests"].as_u64().unwrap_or(0))
    }
}

/// Waits (blocking) for an HTTP endpoint to answer `want`.
pub fn wait_http(process: &mut Process, url: &str, want: u16, timeout: Duration) -> Result<()> {
    process.wait_until(&format!("answering {want} on {url}"), timeout, || {
        http_status(url) == Some(want)
    })
}
