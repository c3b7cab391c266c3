//! The real peers Latchkey talks to in tests, each started on a free
//! loopback port: Redis, OAuth providers (`idp.mjs` on oauth2-mock-server:
//! the organisation's identity provider and downstream providers people
//! sign in to), and upstream MCP servers
//! (`@modelcontextprotocol/server-everything`, the rmcp-based
//! `auth-echo` and `oauth-mcp`, and the recording peers of the
//! differential tests on rmcp and on the Python SDK).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::paths;
use crate::process::{Process, free_port, on_a_free_port};

pub struct Redis {
    pub port: u16,
    pub process: Process,
    /// Where a persistent Redis keeps `dump.rdb` (None: nothing is kept).
    data_dir: Option<std::path::PathBuf>,
    log_dir: std::path::PathBuf,
    restarts: u32,
}

impl Redis {
    pub fn start(dir: &Path) -> Result<Redis> {
        on_a_free_port(|port| Self::start_on(dir, port, None, "redis"))
    }

    /// A Redis whose data survives `stop_saving` + `restart` (an RDB file
    /// in `<dir>/redis-data`), for scenarios where Redis goes away mid-run.
    pub fn start_persistent(dir: &Path) -> Result<Redis> {
        let data = dir.join("redis-data");
        std::fs::create_dir_all(&data)?;
        on_a_free_port(|port| Self::start_on(dir, port, Some(data.clone()), "redis"))
    }

    /// A Redis replicating `master` (for Sentinel to promote on failover).
    pub fn start_replica_of(dir: &Path, master: &Redis, name: &str) -> Result<Redis> {
        let master = master.port.to_string();
        on_a_free_port(|port| {
            Self::start_with(
                dir,
                port,
                None,
                name,
                &["--replicaof", "127.0.0.1", &master],
            )
        })
    }

    /// A Redis on `port` (the local stack's, from its config), logging to
    /// `<dir>/<name>.log`; `data_dir`: where it keeps `dump.rdb`, if anywhere.
    pub fn start_on(
        dir: &Path,
        port: u16,
        data_dir: Option<std::path::PathBuf>,
        name: &str,
    ) -> Result<Redis> {
        Self::start_with(dir, port, data_dir, name, &[])
    }

    fn start_with(
        dir: &Path,
        port: u16,
        data_dir: Option<std::path::PathBuf>,
        name: &str,
        extra: &[&str],
    ) -> Result<Redis> {
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
            // A replica syncs at once instead of waiting for others to join.
            "--repl-diskless-sync-delay",
            "0",
        ])
        .args(extra)
        .current_dir(data_dir.as_deref().unwrap_or(dir));
        let mut process = Process::spawn(name, cmd, dir)
            .context("redis-server could not be started: run scripts/setup")?;
        process.wait_for_port(port, Duration::from_secs(10))?;
        Ok(Redis {
            port,
            process,
            data_dir,
            log_dir: dir.to_path_buf(),
            restarts: 0,
        })
    }

    /// `n` Redis servers formed into a Cluster (no replicas), ready once
    /// every node reports `cluster_state:ok`.
    pub fn start_cluster(dir: &Path, n: usize) -> Result<Vec<Redis>> {
        let mut nodes = Vec::new();
        for i in 0..n {
            let port = crate::process::free_cluster_port();
            let mut cmd = Command::new("redis-server");
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .current_dir(dir);
            let mut process = Process::spawn(&format!("redis-node{i}"), cmd, dir)?;
            process.wait_for_port(port, Duration::from_secs(10))?;
            nodes.push(Redis {
                port,
                process,
                data_dir: None,
                log_dir: dir.to_path_buf(),
                restarts: 0,
            });
        }
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .context("redis-cli --cluster create")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            loop {
                let info = node.command(&["CLUSTER", "INFO"]).unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    bail!(
                        "redis cluster node {} never reached cluster_state:ok: {info}",
                        node.port
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(nodes)
    }

    /// A Sentinel monitoring `master` under `name`; returns it and its port.
    pub fn start_sentinel(dir: &Path, master: &Redis, name: &str) -> Result<(Process, u16)> {
        let port = free_port();
        let conf = dir.join(format!("sentinel-{port}.conf"));
        // Sentinel rewrites its config file, so each run writes a fresh one.
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nsentinel monitor {name} 127.0.0.1 {} 1\nsentinel down-after-milliseconds {name} 2000\n",
                master.port
            ),
        )?;
        let mut cmd = Command::new("redis-server");
        cmd.arg(&conf).arg("--sentinel").current_dir(dir);
        let mut process = Process::spawn("redis-sentinel", cmd, dir)?;
        process.wait_for_port(port, Duration::from_secs(10))?;
        Ok((process, port))
    }

    /// Stops Redis after writing its data to disk (persistent Redis only).
    pub fn stop_saving(&mut self) -> Result<()> {
        if self.data_dir.is_none() {
            bail!("this Redis was not started persistent");
        }
        // The connection closes as Redis exits; the reply may never come.
        let _ = self.command(&["SHUTDOWN", "SAVE"]);
        self.process.stop();
        Ok(())
    }

    /// Starts Redis again on the same port with the data it saved.
    pub fn restart(&mut self) -> Result<()> {
        self.restarts += 1;
        let again = Self::start_on(
            &self.log_dir.clone(),
            self.port,
            self.data_dir.clone(),
            &format!("redis-{}", self.restarts + 1),
        )?;
        let restarts = self.restarts;
        *self = again;
        self.restarts = restarts;
        Ok(())
    }

    fn connection(&self) -> Result<redis::Connection> {
        redis::Client::open(self.url())?
            .get_connection_with_timeout(Duration::from_secs(2))
            .with_context(|| format!("connecting to redis on port {}", self.port))
    }

    /// What `TYPE key` answers: `stream`, `string`, ..., or `none` when the
    /// key does not exist (a Cluster node that does not own it answers an
    /// error naming `MOVED`).
    pub fn key_type(&self, key: &str) -> Result<String> {
        let kind: String = redis::cmd("TYPE")
            .arg(key)
            .query(&mut self.connection()?)
            .with_context(|| format!("TYPE {key} on redis port {}", self.port))?;
        Ok(kind)
    }

    /// The JSON documents in field `field` of every entry of stream `key`.
    ///
    /// A key that is not a stream is an error, not an empty list (`XRANGE`
    /// answers a missing key with nothing): a check that no event was
    /// written must not pass because it read the wrong key.
    pub fn stream_json(&self, key: &str, field: &str) -> Result<Vec<serde_json::Value>> {
        let kind = self.key_type(key)?;
        if kind != "stream" {
            bail!(
                "redis port {}: {key} is not a stream (TYPE answers {kind})",
                self.port
            );
        }
        let mut conn = self.connection()?;
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .query(&mut conn)?;
        reply
            .ids
            .iter()
            .map(|entry| {
                let text: String = entry
                    .get(field)
                    .with_context(|| format!("stream entry {} has no '{field}'", entry.id))?;
                serde_json::from_str(&text)
                    .with_context(|| format!("stream entry {} is not JSON: {text}", entry.id))
            })
            .collect()
    }

    /// Every key and its value (strings, set members, stream fields,
    /// hash fields) as text, for scanning Redis for plaintext secrets.
    pub fn dump_all(&self) -> Result<Vec<(String, String)>> {
        let mut conn = self.connection()?;
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn)?;
        let mut out = Vec::new();
        for key in keys {
            let kind: String = redis::cmd("TYPE").arg(&key).query(&mut conn)?;
            let value = match kind.as_str() {
                "string" => redis::cmd("GET").arg(&key).query::<String>(&mut conn)?,
                "set" => redis::cmd("SMEMBERS")
                    .arg(&key)
                    .query::<Vec<String>>(&mut conn)?
                    .join("\n"),
                "hash" => redis::cmd("HGETALL")
                    .arg(&key)
                    .query::<Vec<String>>(&mut conn)?
                    .join("\n"),
                "stream" => {
                    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                        .arg(&key)
                        .arg("-")
                        .arg("+")
                        .query(&mut conn)?;
                    reply
                        .ids
                        .iter()
                        .flat_map(|e| e.map.values())
                        .filter_map(|v| redis::from_redis_value::<String>(v.clone()).ok())
                        .collect::<Vec<_>>()
                        .join("\n")
                }
                other => format!("<{other}>"),
            };
            out.push((key, value));
        }
        Ok(out)
    }

    /// Reads a string key (None when absent).
    pub fn get(&self, key: &str) -> Result<Option<String>> {
        Ok(redis::cmd("GET").arg(key).query(&mut self.connection()?)?)
    }

    /// Writes a string key.
    pub fn set(&self, key: &str, value: &str) -> Result<()> {
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query::<()>(&mut self.connection()?)?;
        Ok(())
    }

    /// Calls of every command since start but `ignored` ones (e.g. the
    /// `info` used to read this, or replicas' periodic announcements).
    pub fn calls_except(&self, ignored: &[&str]) -> Result<u64> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.connection()?)?;
        Ok(info
            .lines()
            .filter_map(|l| l.strip_prefix("cmdstat_"))
            .filter_map(|l| l.split_once(":calls="))
            .filter(|(name, _)| !ignored.iter().any(|i| i.eq_ignore_ascii_case(name)))
            .filter_map(|(_, rest)| rest.split(',').next()?.parse::<u64>().ok())
            .sum())
    }

    /// Total calls of one command since start, from `INFO commandstats`.
    pub fn command_calls(&self, command: &str) -> Result<u64> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.connection()?)?;
        let prefix = format!("cmdstat_{}:calls=", command.to_ascii_lowercase());
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0))
    }

    /// `PING`, expecting `PONG`.
    pub fn ping(&self) -> Result<()> {
        let reply = self.command(&["PING"])?;
        if reply.trim_end() != "+PONG" {
            bail!("redis on port {} answered PING with {reply:?}", self.port);
        }
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends one command (RESP over a raw connection) and returns the raw
    /// reply as text, e.g. `+PONG\r\n` or `$5\r\nvalue\r\n`.
    pub fn command(&self, args: &[&str]) -> Result<String> {
        command_on(self.port, args)
    }
}

/// [`Redis::command`] to whatever speaks RESP on `port` (e.g. a Sentinel).
pub fn command_on(port: u16, args: &[&str]) -> Result<String> {
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
            .with_context(|| format!("connecting to redis on port {port}"))?;
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

/// What to put in a token the identity provider issues (client credentials
/// grant; `idp.mjs` turns the extra form parameters into claims).
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The `client_id` and `azp` claims.
    pub client_id: String,
    pub sub: String,
    pub aud: String,
    /// Seconds from now until `exp`; negative for an expired token.
    pub exp_offset: i64,
    /// Overrides the `iss` claim (the signature stays valid).
    pub iss: Option<String>,
    /// The `scope` claim (space-separated); absent when `None`.
    pub scope: Option<String>,
    /// More claims, merged into the payload.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl TokenRequest {
    /// `sub` for audience `aud`, client `e2e-agent`, valid for 10 minutes.
    pub fn new(sub: &str, aud: &str) -> Self {
        Self {
            client_id: "e2e-agent".into(),
            sub: sub.into(),
            aud: aud.into(),
            exp_offset: 600,
            iss: None,
            scope: None,
            claims: Default::default(),
        }
    }

    /// Adds one claim, e.g. `groups` or `latchkey_capabilities`.
    pub fn claim(mut self, name: &str, value: serde_json::Value) -> Self {
        self.claims.insert(name.into(), value);
        self
    }

    pub fn client(mut self, client_id: &str) -> Self {
        self.client_id = client_id.into();
        self
    }

    pub fn scope(mut self, scope: &str) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// Expired `seconds_ago` seconds ago (and issued a minute before that).
    pub fn expired(mut self, seconds_ago: i64) -> Self {
        self.exp_offset = -seconds_ago.abs().max(1);
        self
    }

    /// Claims issuer `iss` while signed by this identity provider's key.
    pub fn issuer(mut self, iss: &str) -> Self {
        self.iss = Some(iss.into());
        self
    }
}

/// How to start an [`Idp`].
#[derive(Debug, Clone, Default)]
pub struct IdpOptions {
    /// The `iss` of its tokens (default `http://127.0.0.1:<port>`).
    pub issuer: Option<String>,
    /// Refresh tokens are not rotated: a refresh keeps the same one and the
    /// response carries none (`idp.mjs --no-rotate`).
    pub no_rotate: bool,
    /// Names its log file `<name>.log` (default `idp`); two providers in one
    /// scenario need different names.
    pub name: Option<String>,
    /// Listen on this port (the local stack's, from its config) instead of a
    /// free one.
    pub port: Option<u16>,
    /// Clients (id, secret) that may exchange tokens (RFC 8693) or redeem
    /// ID-JAGs here (`--exchange-client`).
    pub exchange_clients: Vec<(String, String)>,
    /// Clients (id, public key SPKI PEM file) that authenticate with
    /// `private_key_jwt` (`--exchange-client-key`).
    pub exchange_client_keys: Vec<(String, std::path::PathBuf)>,
    /// Play a server's authorization server that redeems the ID-JAGs of
    /// this identity provider (`--trust-issuer`).
    pub trust_issuer: Option<String>,
}

/// What the token and revocation endpoints did (`GET /control/stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct IdpStats {
    /// Successful authorization code exchanges.
    pub authorization_code: u64,
    /// Successful refresh token exchanges.
    pub refresh_token: u64,
    /// Successful refresh token exchanges per subject.
    pub refresh_token_by_sub: std::collections::BTreeMap<String, u64>,
    /// Requests to the RFC 7009 revocation endpoint.
    pub revocations: u64,
    /// Token requests answered `invalid_grant`.
    pub invalid_grant: u64,
    /// Successful RFC 8693 exchanges for an access token, in all and per subject.
    #[serde(default)]
    pub token_exchange: u64,
    #[serde(default)]
    pub token_exchange_by_sub: std::collections::BTreeMap<String, u64>,
    /// ID-JAGs issued.
    #[serde(default)]
    pub id_jag: u64,
    /// ID-JAGs redeemed (as a server's authorization server), in all and per subject.
    #[serde(default)]
    pub jwt_bearer: u64,
    #[serde(default)]
    pub jwt_bearer_by_sub: std::collections::BTreeMap<String, u64>,
    /// Exchanges refused because the subject is on the deny list.
    #[serde(default)]
    pub exchange_refused: u64,
}

/// An OAuth 2.0 / OIDC provider, `node tests/peers/idp.mjs`
/// (oauth2-mock-server) with an RS256 key generated at start: the
/// organisation's identity provider, or a downstream OAuth provider with a
/// sign-in page (selectors `#username`, `#sign-in`, `#deny`).
pub struct Idp {
    pub port: u16,
    issuer: String,
    /// `None` when talking to an identity provider someone else started.
    pub process: Option<Process>,
}

impl Idp {
    /// An identity provider already running at `issuer` (`http://127.0.0.1:<port>`).
    pub fn at(issuer: &str) -> Idp {
        let issuer = issuer.trim_end_matches('/').to_string();
        let port = issuer
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        Idp {
            port,
            issuer,
            process: None,
        }
    }

    /// Starts one on a free port with issuer `http://127.0.0.1:<port>`.
    pub fn start(dir: &Path) -> Result<Idp> {
        Self::start_with(dir, IdpOptions::default())
    }

    /// Starts one on a free port; `issuer` (e.g. a public URL in front of
    /// it) overrides the `iss` of its tokens and discovery document.
    pub fn start_with_issuer(dir: &Path, issuer: Option<&str>) -> Result<Idp> {
        Self::start_with(
            dir,
            IdpOptions {
                issuer: issuer.map(str::to_string),
                ..IdpOptions::default()
            },
        )
    }

    /// Starts one on a free port as `options` say (a second provider in the
    /// same scenario needs its own `name`, which names its log file).
    pub fn start_with(dir: &Path, options: IdpOptions) -> Result<Idp> {
        if !paths::peers_dir()
            .join("node_modules/oauth2-mock-server")
            .exists()
        {
            bail!("tests/peers/node_modules/oauth2-mock-server is missing: run scripts/setup");
        }
        match options.port {
            Some(port) => Self::start_at(dir, &options, port),
            None => on_a_free_port(|port| Self::start_at(dir, &options, port)),
        }
    }

    fn start_at(dir: &Path, options: &IdpOptions, port: u16) -> Result<Idp> {
        let script = paths::peers_dir().join("idp.mjs");
        let issuer = options
            .issuer
            .as_deref()
            .map(|i| i.trim_end_matches('/').to_string())
            .unwrap_or_else(|| format!("http://127.0.0.1:{port}"));
        let mut cmd = Command::new("node");
        cmd.arg(&script)
            .args(["--port", &port.to_string()])
            .args(["--issuer", &issuer]);
        if options.no_rotate {
            cmd.arg("--no-rotate");
        }
        for (id, secret) in &options.exchange_clients {
            cmd.args(["--exchange-client", &format!("{id}:{secret}")]);
        }
        for (id, key) in &options.exchange_client_keys {
            cmd.args(["--exchange-client-key", &format!("{id}:{}", key.display())]);
        }
        if let Some(trusted) = &options.trust_issuer {
            cmd.args(["--trust-issuer", trusted]);
        }
        let name = options.name.as_deref().unwrap_or("idp");
        let mut process =
            Process::spawn(name, cmd, dir).context("node not found: install Node.js 20+")?;
        process.wait_for_log("IDP_READY", Duration::from_secs(20))?;
        Ok(Idp {
            port,
            issuer,
            process: Some(process),
        })
    }

    /// The `iss` of its tokens.
    pub fn issuer(&self) -> String {
        self.issuer.clone()
    }

    /// Where it listens (differs from the issuer when one was given).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.base_url())
    }

    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.base_url())
    }

    /// The JWK set (`{"keys": [...]}`).
    pub async fn jwks(&self) -> Result<serde_json::Value> {
        get_json(&self.jwks_uri()).await
    }

    /// Its authorization endpoint (the sign-in page).
    pub fn authorize_url(&self) -> String {
        format!("{}/authorize", self.base_url())
    }

    pub fn token_url(&self) -> String {
        format!("{}/token", self.base_url())
    }

    /// Its RFC 7009 revocation endpoint.
    pub fn revocation_url(&self) -> String {
        format!("{}/revoke", self.base_url())
    }

    /// The whole authorization code flow with PKCE for `login` at this
    /// provider, as client `client_id`, without a browser.
    pub async fn code_flow_without_browser(
        &self,
        login: &str,
        client_id: &str,
    ) -> Result<CodeFlow> {
        let (verifier, challenge) = pkce_pair();
        let redirect_uri = "http://127.0.0.1:9/callback";
        let authorize = reqwest::Url::parse_with_params(
            &self.authorize_url(),
            [
                ("response_type", "code"),
                ("client_id", client_id),
                ("redirect_uri", redirect_uri),
                ("state", "s"),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
            ],
        )?;
        let code = sign_in_directly(authorize.as_str(), login).await?;
        let (status, tokens) = self
            .post_token(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("code_verifier", &verifier),
                ("client_id", client_id),
                ("redirect_uri", redirect_uri),
            ])
            .await?;
        Ok(CodeFlow {
            status,
            tokens,
            code,
            verifier,
        })
    }

    /// POSTs `form` to the token endpoint: the status and the JSON answer
    /// (for code and refresh exchanges, including the refused ones).
    pub async fn post_token(&self, form: &[(&str, &str)]) -> Result<(u16, serde_json::Value)> {
        post_form(&self.token_url(), form).await
    }

    /// POSTs `form` to the revocation endpoint (RFC 7009: `token`, optional
    /// `token_type_hint`); answers 200 whatever the token was.
    pub async fn post_revoke(&self, form: &[(&str, &str)]) -> Result<(u16, serde_json::Value)> {
        post_form(&self.revocation_url(), form).await
    }

    /// User access tokens (authorization code and refresh grants) issued
    /// from now on live `seconds` (negative: already expired).
    pub async fn set_access_ttl(&self, seconds: i64) -> Result<()> {
        let seconds = seconds.to_string();
        self.control("access-ttl", &[("seconds", &seconds)]).await?;
        Ok(())
    }

    /// Answers refresh grants `ms` late from now on (a slow provider); the
    /// presented refresh token is spent at once, as a rotating provider does.
    /// Lifetime of the tokens exchanged from now on (`/control/exchange-ttl`).
    pub async fn set_exchange_ttl(&self, seconds: i64) -> Result<()> {
        self.control("exchange-ttl", &[("seconds", &seconds.to_string())])
            .await?;
        Ok(())
    }

    /// From now on these subjects' exchanges are refused (`/control/exchange-deny`).
    pub async fn deny_exchange(&self, subs: &[&str]) -> Result<()> {
        self.control("exchange-deny", &[("subs", &subs.join(","))])
            .await?;
        Ok(())
    }

    pub async fn set_refresh_delay(&self, ms: u64) -> Result<()> {
        self.control("refresh-delay", &[("ms", &ms.to_string())])
            .await?;
        Ok(())
    }

    /// Revokes every refresh token of `sub` (the person revoked the app at
    /// the provider); returns how many were still active.
    pub async fn revoke_subject(&self, sub: &str) -> Result<u64> {
        let reply = self.control("revoke-subject", &[("sub", sub)]).await?;
        reply["revoked"]
            .as_u64()
            .with_context(|| format!("revoke-subject answered {reply}"))
    }

    /// Extra claims (a JSON object) in every user token of `sub` from now on.
    pub async fn set_user_claims(&self, sub: &str, claims: serde_json::Value) -> Result<()> {
        let claims = claims.to_string();
        self.control("user-claims", &[("sub", sub), ("claims", &claims)])
            .await?;
        Ok(())
    }

    /// What its token and revocation endpoints did since start (or the last
    /// [`Idp::reset_stats`]).
    pub async fn stats(&self) -> Result<IdpStats> {
        let v = get_json(&format!("{}/control/stats", self.base_url())).await?;
        serde_json::from_value(v.clone()).with_context(|| format!("control/stats answered {v}"))
    }

    pub async fn reset_stats(&self) -> Result<()> {
        self.control("reset-stats", &[]).await?;
        Ok(())
    }

    /// Makes the provider stop playing along (`POST /control/misbehave`):
    /// `wrong_nonce`, `wrong_id_token_aud`, `require_pkce` (each `"1"`),
    /// `iss` (`"omit"` or the value to send), `revoke_fails`. Replaces what was set before;
    /// no switches: it behaves again.
    pub async fn misbehave(&self, switches: &[(&str, &str)]) -> Result<()> {
        self.control("misbehave", switches).await?;
        Ok(())
    }

    async fn control(&self, what: &str, form: &[(&str, &str)]) -> Result<serde_json::Value> {
        let url = format!("{}/control/{what}", self.base_url());
        let (status, reply) = post_form(&url, form).await?;
        if status != 200 {
            bail!("POST {url} answered {status}: {reply}");
        }
        Ok(reply)
    }

    /// A signed JWT shaped by `req`.
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
        if let Some(scope) = &req.scope {
            form.push(("scope", scope.clone()));
        }
        if !req.claims.is_empty() {
            form.push((
                "claims",
                serde_json::Value::Object(req.claims.clone()).to_string(),
            ));
        }
        let url = format!("{}/token", self.base_url());
        let resp = reqwest::Client::new()
            .post(&url)
            .form(&form)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .with_context(|| format!("identity provider at {url}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("identity provider answered {status} at {url}: {text}");
        }
        let reply: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("identity provider answered non-JSON: {text}"))?;
        reply["access_token"]
            .as_str()
            .map(str::to_string)
            .context("identity provider answered without access_token")
    }
}

/// POSTs a form and reads the JSON answer, whatever the status.
async fn post_form(url: &str, form: &[(&str, &str)]) -> Result<(u16, serde_json::Value)> {
    let resp = reqwest::Client::new()
        .post(url)
        .form(form)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    let reply = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text)
            .with_context(|| format!("POST {url} answered {status}, not JSON: {text}"))?
    };
    Ok((status, reply))
}

/// The SHA-256 of `text`, in lower-case hex: how an upstream peer reports
/// which credential reached it without echoing the credential.
pub fn sha256_hex(text: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A PKCE pair (RFC 7636): a random `code_verifier` and its S256
/// `code_challenge`.
pub fn pkce_pair() -> (String, String) {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system RNG");
    let verifier = URL_SAFE_NO_PAD.encode(bytes);
    let challenge = URL_SAFE_NO_PAD.encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref(),
    );
    (verifier, challenge)
}

async fn get_json(url: &str) -> Result<serde_json::Value> {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("GET {url} answered {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("GET {url}: not JSON: {text}"))
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
        on_a_free_port(|port| Self::start_on(dir, port))
    }

    /// On `port` (the local stack's, from its config).
    pub fn start_on(dir: &Path, port: u16) -> Result<Everything> {
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

/// `fast-mcp`: a stateless upstream answering `application/json`, with a
/// paged tool list (`tool_00` … `tool_19`).
pub struct FastMcp {
    pub port: u16,
    pub process: Process,
}

impl FastMcp {
    /// `expect`: the `Authorization` it reports as `"expected"` in each
    /// tool result's `structuredContent.credential`.
    pub fn start(dir: &Path, page_size: usize, expect: Option<&str>) -> Result<FastMcp> {
        on_a_free_port(|port| Self::start_on(dir, port, page_size, expect))
    }

    fn start_on(dir: &Path, port: u16, page_size: usize, expect: Option<&str>) -> Result<FastMcp> {
        let mut cmd = Command::new(paths::workspace_bin("fast-mcp")?);
        cmd.args(["--port", &port.to_string()])
            .args(["--page-size", &page_size.to_string()]);
        if let Some(expect) = expect {
            cmd.env("FAST_MCP_EXPECT_AUTHORIZATION", expect);
        }
        let mut process = Process::spawn("fast-mcp", cmd, dir)?;
        process.wait_for_log("FAST_MCP_READY", Duration::from_secs(10))?;
        Ok(FastMcp { port, process })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }
}

/// The rmcp upstream that reports the credential it received (`auth-echo`).
pub struct AuthEcho {
    pub port: u16,
    pub process: Process,
}

impl AuthEcho {
    /// Starts the `auth-echo` binary from the current profile folder. Inside
    /// this crate's integration tests prefer
    /// `AuthEcho::start_bin(dir, env!("CARGO_BIN_EXE_auth-echo"))`.
    pub fn start(dir: &Path) -> Result<AuthEcho> {
        Self::start_bin(dir, paths::workspace_bin("auth-echo")?)
    }

    pub fn start_bin(dir: &Path, bin: impl AsRef<Path>) -> Result<AuthEcho> {
        Self::start_with(dir, bin, None)
    }

    /// With SSE keep-alives every `keep_alive` (rmcp's 15 s when `None`).
    pub fn start_with(
        dir: &Path,
        bin: impl AsRef<Path>,
        keep_alive: Option<Duration>,
    ) -> Result<AuthEcho> {
        on_a_free_port(|port| Self::start_on(dir, bin.as_ref(), port, keep_alive))
    }

    /// As [`AuthEcho::start_with`], on `port` (the local stack's, from its config).
    pub fn start_on(
        dir: &Path,
        bin: impl AsRef<Path>,
        port: u16,
        keep_alive: Option<Duration>,
    ) -> Result<AuthEcho> {
        let mut cmd = Command::new(bin.as_ref());
        cmd.args(["--port", &port.to_string()]);
        if let Some(every) = keep_alive {
            cmd.args(["--keep-alive-ms", &every.as_millis().to_string()]);
        }
        let mut process = Process::spawn("auth-echo", cmd, dir)?;
        process.wait_for_log("AUTH_ECHO_READY", Duration::from_secs(10))?;
        Ok(AuthEcho { port, process })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    /// What the upstream received so far on `/mcp`:
    /// `{"authorization": [values...], "header_names": [...], "requests": n,
    /// "round_trip_fields": n}`.
    pub async fn seen(&self) -> Result<serde_json::Value> {
        get_json(&format!("http://127.0.0.1:{}/seen", self.port)).await
    }

    /// Every `Authorization` value received so far, in order.
    pub async fn seen_authorizations(&self) -> Result<Vec<String>> {
        strings(&self.seen().await?, "authorization")
    }

    /// The name of every cookie received so far (it keeps no value).
    pub async fn seen_cookie_names(&self) -> Result<Vec<String>> {
        strings(&self.seen().await?, "cookie_names")
    }

    /// How many requests reached `/mcp`. An answer without the count is an
    /// error, never 0 (absence checks compare it).
    pub async fn requests(&self) -> Result<u64> {
        let seen = self.seen().await?;
        seen["requests"]
            .as_u64()
            .with_context(|| format!("auth-echo /seen has no request count: {seen}"))
    }

    /// From now on answers every `/mcp` request with `status` and
    /// `WWW-Authenticate: <www_authenticate>` (a refusing or malicious
    /// upstream); status 200 answers normally with the header added, 0 stops.
    pub async fn challenge(&self, status: u16, www_authenticate: &str) -> Result<()> {
        let url = format!("http://127.0.0.1:{}/challenge", self.port);
        let resp = reqwest::Client::new()
            .post(&url)
            .json(&serde_json::json!({"status": status, "www_authenticate": www_authenticate}))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        if !resp.status().is_success() {
            bail!("POST {url}: {}", resp.status());
        }
        Ok(())
    }
}

/// The strings of the array `seen[field]`; an error when it is missing or
/// holds anything else (an empty list must mean nothing was seen).
fn strings(seen: &serde_json::Value, field: &str) -> Result<Vec<String>> {
    seen[field]
        .as_array()
        .with_context(|| format!("/seen has no array {field}: {seen}"))?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .with_context(|| format!("/seen {field} holds a non-string: {v}"))
        })
        .collect()
}

/// An upstream that records what its SDK parsed of every request:
/// `record-mcp` (rmcp) or `tests/peers/record_server.py` (the official
/// Python SDK). Both answer `GET /seen` with `{"requests": n, "calls":
/// [...]}`, where a call is what the SDK handed the server
/// (`{"method", "name" | "uri", "arguments", "id"}`, the Python one as
/// `{"method", "params", "id"}`) or what a tool acted on (`{"tool",
/// "acted"}`, the typed arguments after the SDK's validation).
pub struct Recorder {
    pub port: u16,
    pub process: Process,
}

impl Recorder {
    /// The rmcp recorder (`record-mcp`).
    pub fn start_rmcp(dir: &Path) -> Result<Recorder> {
        on_a_free_port(|port| Self::start_rmcp_on(dir, port))
    }

    fn start_rmcp_on(dir: &Path, port: u16) -> Result<Recorder> {
        let mut cmd = Command::new(paths::workspace_bin("record-mcp")?);
        cmd.args(["--port", &port.to_string()]);
        let mut process = Process::spawn("record-mcp", cmd, dir)?;
        process.wait_for_log("RECORD_MCP_READY", Duration::from_secs(10))?;
        Ok(Recorder { port, process })
    }

    /// The Python SDK recorder (`record_server.py` on `.venv`'s Python).
    pub fn start_python(dir: &Path) -> Result<Recorder> {
        on_a_free_port(|port| Self::start_python_on(dir, port))
    }

    fn start_python_on(dir: &Path, port: u16) -> Result<Recorder> {
        let mut cmd = Command::new(paths::venv_python()?);
        cmd.arg(paths::peers_dir().join("record_server.py"))
            .args(["--port", &port.to_string()]);
        let mut process = Process::spawn("record-py", cmd, dir)
            .context("the Python recorder could not start: run scripts/setup")?;
        // Importing the SDK takes seconds; the port answers once uvicorn runs.
        process
            .wait_for_port(port, Duration::from_secs(30))
            .context("record_server.py did not listen: is PyPI mcp in .venv (scripts/setup)?")?;
        Ok(Recorder { port, process })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    /// Its report, read without serde_json's nesting limit: it holds
    /// arguments nested as deep as the gateway lets through, a few levels
    /// down.
    pub async fn seen(&self) -> Result<serde_json::Value> {
        use serde::Deserialize;
        let url = format!("http://127.0.0.1:{}/seen", self.port);
        let text = reqwest::Client::new()
            .get(&url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .with_context(|| format!("GET {url}"))?
            .text()
            .await?;
        let mut de = serde_json::Deserializer::from_str(&text);
        de.disable_recursion_limit();
        serde_json::Value::deserialize(&mut de).with_context(|| format!("GET {url}: not JSON"))
    }

    /// How many requests reached `/mcp`. An answer without the count is an
    /// error, never 0 (absence checks compare it).
    pub async fn requests(&self) -> Result<u64> {
        let seen = self.seen().await?;
        seen["requests"]
            .as_u64()
            .with_context(|| format!("the recorder's /seen has no request count: {seen}"))
    }

    /// Everything recorded so far, oldest first.
    pub async fn calls(&self) -> Result<Vec<serde_json::Value>> {
        let seen = self.seen().await?;
        seen["calls"]
            .as_array()
            .cloned()
            .with_context(|| format!("the recorder's /seen has no calls: {seen}"))
    }
}

/// The rmcp upstream that accepts only a downstream OAuth provider's access
/// tokens and reports whose they were (`oauth-mcp`).
pub struct OauthMcp {
    pub port: u16,
    pub process: Process,
}

impl OauthMcp {
    /// Starts the `oauth-mcp` binary from the current profile folder,
    /// accepting RS256 tokens of `issuer` signed by a key of `jwks` with
    /// audience `audience`. Inside this crate's integration tests prefer
    /// [`OauthMcp::start_bin`] with `env!("CARGO_BIN_EXE_oauth-mcp")`.
    pub fn start(dir: &Path, issuer: &str, jwks: &str, audience: &str) -> Result<OauthMcp> {
        Self::start_bin(
            dir,
            paths::workspace_bin("oauth-mcp")?,
            issuer,
            jwks,
            audience,
        )
    }

    pub fn start_bin(
        dir: &Path,
        bin: impl AsRef<Path>,
        issuer: &str,
        jwks: &str,
        audience: &str,
    ) -> Result<OauthMcp> {
        on_a_free_port(|port| Self::start_on(dir, bin.as_ref(), port, None, issuer, jwks, audience))
    }

    /// As [`OauthMcp::start_bin`], on `port` (the local stack's, from its
    /// config), with an SSE keep-alive every `keep_alive` (rmcp's 15 s when
    /// `None`).
    pub fn start_on(
        dir: &Path,
        bin: impl AsRef<Path>,
        port: u16,
        keep_alive: Option<Duration>,
        issuer: &str,
        jwks: &str,
        audience: &str,
    ) -> Result<OauthMcp> {
        let mut cmd = Command::new(bin.as_ref());
        cmd.args(["--port", &port.to_string()])
            .args(["--issuer", issuer])
            .args(["--jwks", jwks])
            .args(["--audience", audience]);
        if let Some(every) = keep_alive {
            cmd.args(["--keep-alive-ms", &every.as_millis().to_string()]);
        }
        let mut process = Process::spawn("oauth-mcp", cmd, dir)?;
        process.wait_for_log("OAUTH_MCP_READY", Duration::from_secs(10))?;
        Ok(OauthMcp { port, process })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    /// What reached `/mcp` so far: `{"subjects": [sub of each accepted
    /// request, in order], "rejected": n, "requests": n}`.
    pub async fn seen(&self) -> Result<serde_json::Value> {
        get_json(&format!("http://127.0.0.1:{}/seen", self.port)).await
    }

    /// The `sub` of every accepted request, in order.
    pub async fn subjects(&self) -> Result<Vec<String>> {
        strings(&self.seen().await?, "subjects")
    }

    /// From now on the server refuses `sub`'s tokens issued before this
    /// second, as if its provider had revoked them.
    pub async fn reject_tokens_issued_before_now(&self, sub: &str) -> Result<()> {
        let url = format!(
            "http://127.0.0.1:{}/control/reject-before?sub={sub}",
            self.port
        );
        let (status, _) = post_form(&url, &[]).await?;
        anyhow::ensure!(status == 200, "{url}: {status}");
        Ok(())
    }
}

/// Waits (blocking) for an HTTP endpoint to answer `want`.
pub fn wait_http(process: &mut Process, url: &str, want: u16, timeout: Duration) -> Result<()> {
    process.wait_for_http(url, want, timeout)
}

/// What [`Idp::code_flow_without_browser`] went through: the token
/// endpoint's status and answer, and the code and PKCE verifier it used
/// (secrets a test scans the logs for).
pub struct CodeFlow {
    pub status: u16,
    pub tokens: serde_json::Value,
    pub code: String,
    pub verifier: String,
}

/// A downstream OAuth provider (`idp.mjs`, logging as `provider`) and an
/// `oauth-mcp` upstream (`bin`) that accepts only its tokens for `audience`.
pub fn start_provider_and_upstream(
    dir: &Path,
    bin: impl AsRef<Path>,
    audience: &str,
) -> Result<(Idp, OauthMcp)> {
    let provider = Idp::start_with(
        dir,
        IdpOptions {
            name: Some("provider".into()),
            ..IdpOptions::default()
        },
    )?;
    let upstream =
        OauthMcp::start_bin(dir, bin, &provider.issuer(), &provider.jwks_uri(), audience)?;
    Ok((provider, upstream))
}

/// The authorization code in a provider's redirect back to a client.
pub fn code_in(redirect: &str) -> Result<String> {
    reqwest::Url::parse(redirect)?
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .context("the redirect carries no code")
}

/// Signs `login` in at a provider's authorization URL without a browser
/// (the sign-in form's own request) and returns the code it redirected with.
pub async fn sign_in_directly(authorize_url: &str, login: &str) -> Result<String> {
    let reply = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?
        .get(format!("{authorize_url}&login={login}"))
        .send()
        .await?;
    let location = reply
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .with_context(|| format!("sign-in answered {} without a redirect", reply.status()))?;
    code_in(location)
}
