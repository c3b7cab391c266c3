//! A whole Latchkey deployment for one scenario: Redis, the identity
//! provider, upstreams, `latchkey serve` with a generated master key and
//! stored service-account secrets, and Envoy running a bootstrap rendered by
//! `latchkey envoy render` — the same path operators use.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::envoy::Envoy;
use crate::paths;
use crate::peers::{AuthEcho, Everything, FastMcp, Idp, IdpOptions, Recorder, Redis, TokenRequest};
use crate::pki::Pki;
use crate::process::{Process, free_port};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthzMode {
    /// The Latchkey Wasm filter.
    Wasm,
    /// Envoy's native ext_authz filter calling the same service.
    Native,
}

#[derive(Debug, Clone)]
pub struct StackOptions {
    /// More arguments to `latchkey envoy render` (e.g. Istio-style names).
    pub render_args: Vec<String>,
    /// Give each replica a `[listen] metrics` port of its own.
    pub metrics_listener: bool,
    pub mode: AuthzMode,
    /// Also start server-everything (slower to start; not every scenario needs it).
    pub everything: bool,
    /// Also start the recording upstreams of the differential tests:
    /// `record-mcp` (rmcp; assignment `record-rmcp`) and the Python SDK's
    /// `record_server.py` (assignment `record-py`, seconds to start).
    pub recorders: bool,
    pub authz_timeout_ms: u64,
    pub max_body_bytes: u64,
    /// How many `latchkey serve` replicas share Redis behind Envoy (round-robin).
    pub replicas: usize,
    /// Master key ids in the key file; the first is the configured active one.
    pub key_ids: Vec<String>,
    /// Keep Redis data across a stop (`Redis::stop_saving` / `restart`).
    pub persistent_redis: bool,
    /// One Redis, a three-node Cluster, or one Redis watched by a Sentinel.
    pub redis_topology: RedisTopology,
    /// Also start `fast-mcp` (assignment `fast`), listing tools this many
    /// per page.
    pub fast_mcp_page_size: Option<usize>,
    /// A `[policy]` section (TOML) for the config; none: unrestricted.
    pub policy: Option<String>,
    /// More top-level config (TOML), e.g. an `[audit]` section.
    pub extra_config: Option<String>,
    /// Envoy listens over mTLS: clients must present a certificate from the
    /// scenario's CA (`Stack::pki`), whose SPIFFE ID names the agent.
    pub mtls: bool,
    /// How often `auth-echo` (servers `whoami*`) sends an SSE keep-alive
    /// (rmcp's 15 s when `None`).
    pub echo_keep_alive: Option<Duration>,
    /// Envoy worker threads (each with its own Wasm VM).
    pub envoy_workers: usize,
    /// The gRPC (Check) listener requires mTLS (`[listen.grpc_tls]`, CA
    /// and certificates in `Stack::grpc_pki`), and Envoy calls it with a
    /// client certificate naming [`ENVOY_CHECK_CLIENT`], the one allowed.
    pub grpc_mtls: bool,
    /// `[vault] cache_ttl_secs`: how long a replica keeps what it read from
    /// Redis (0: every request reads and decrypts its credential).
    pub credential_cache_secs: u64,
    /// Every replica at `LATCHKEY_LOG=debug` and Envoy at debug (see
    /// [`crate::envoy::DEBUG_LOGGING`]), for the log scan: a secret must
    /// not show at any level an operator may turn on.
    pub debug_logs: bool,
    /// How the identity provider is started (a port picked in advance,
    /// exchange clients, ...).
    pub idp: IdpOptions,
    /// More environment for every replica (e.g. a client secret a
    /// `client_secret_env` names).
    pub replica_env: Vec<(String, String)>,
    /// Gateway `e2e`'s `unknown_agents` (`"deny"` when `None`).
    pub unknown_agents: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedisTopology {
    #[default]
    Single,
    Cluster,
    Sentinel,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            mode: AuthzMode::Wasm,
            everything: false,
            recorders: false,
            authz_timeout_ms: 2000,
            max_body_bytes: 64 * 1024,
            replicas: 1,
            key_ids: vec!["e2e1".into()],
            persistent_redis: false,
            redis_topology: RedisTopology::Single,
            fast_mcp_page_size: None,
            mtls: false,
            extra_config: None,
            policy: None,
            echo_keep_alive: None,
            envoy_workers: 1,
            render_args: Vec::new(),
            metrics_listener: false,
            grpc_mtls: false,
            debug_logs: false,
            credential_cache_secs: 30,
            idp: IdpOptions::default(),
            replica_env: Vec::new(),
            unknown_agents: None,
        }
    }
}

/// Stands for a replica's HTTP side URL (`http://127.0.0.1:<port>`) in
/// `extra_config`, e.g. as `[connect] public_url`.
pub const LATCHKEY_HTTP: &str = "@LATCHKEY_HTTP@";

/// The master's name under `RedisTopology::Sentinel`.
pub const SENTINEL_MASTER: &str = "latchkey-e2e";

/// The audience admin tokens carry in every stack.
pub const ADMIN_AUDIENCE: &str = "latchkey-admin";

/// The identity (URI SAN) of Envoy's client certificate for the Check
/// listener under `grpc_mtls`, the one name in `allowed_clients`.
pub const ENVOY_CHECK_CLIENT: &str = "spiffe://e2e.test/ns/gateway/sa/envoy";

/// One `latchkey serve` process and its ports (its own config file, since
/// the listen addresses differ; everything else is shared).
pub struct Replica {
    pub grpc_port: u16,
    pub http_port: u16,
    pub admin_port: u16,
    /// `[listen] metrics`, when the stack was asked for one.
    pub metrics_port: Option<u16>,
    pub config_path: PathBuf,
    pub process: Option<Process>,
    /// `[listen.grpc_tls]`'s keys (TOML), under `grpc_mtls`.
    grpc_tls: Option<String>,
}

impl Replica {
    /// Picks free ports and writes this replica's config with them.
    fn pick_ports(&mut self, shared: &str) -> Result<()> {
        (self.grpc_port, self.http_port, self.admin_port) = (free_port(), free_port(), free_port());
        if self.metrics_port.is_some() {
            self.metrics_port = Some(free_port());
        }
        self.write_config(shared)
    }

    /// Writes this replica's config: its listen addresses, then `shared`
    /// with [`LATCHKEY_HTTP`] replaced by this replica's HTTP side URL.
    fn write_config(&self, shared: &str) -> Result<()> {
        let shared = shared.replace(
            LATCHKEY_HTTP,
            &format!("http://127.0.0.1:{}", self.http_port),
        );
        // The listen sections go first: TOML tables after [admin.roles] would nest.
        let metrics = self
            .metrics_port
            .map(|p| format!("metrics = \"127.0.0.1:{p}\"\n"))
            .unwrap_or_default();
        let grpc_tls = self
            .grpc_tls
            .as_ref()
            .map(|t| format!("[listen.grpc_tls]\n{t}\n"))
            .unwrap_or_default();
        let config = format!(
            "[listen]\ngrpc = \"127.0.0.1:{}\"\nhttp = \"127.0.0.1:{}\"\n{metrics}\n{grpc_tls}[admin]\nlisten = \"127.0.0.1:{}\"\naudience = \"{ADMIN_AUDIENCE}\"\n{shared}",
            self.grpc_port, self.http_port, self.admin_port
        );
        std::fs::write(&self.config_path, config)?;
        Ok(())
    }

    /// Its HTTP side (health, metrics, the connect page).
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }
}

pub struct Stack {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    /// The Redis (the first node of a Cluster; the master under Sentinel).
    pub redis: Redis,
    /// The other Cluster nodes, or the replica under Sentinel.
    pub redis_extra: Vec<Redis>,
    /// The Sentinel (under `RedisTopology::Sentinel`) and its port; it
    /// watches the master as [`SENTINEL_MASTER`].
    pub sentinel: Option<(Process, u16)>,
    pub idp: Idp,
    pub echo: AuthEcho,
    pub everything: Option<Everything>,
    pub fast: Option<FastMcp>,
    /// Under `recorders`: the rmcp and the Python SDK recorders.
    pub record_rmcp: Option<Recorder>,
    pub record_py: Option<Recorder>,
    pub replicas: Vec<Replica>,
    /// The config every replica shares, without `[policy]`.
    shared_config: String,
    pub envoy: Envoy,
    pub envoy_port: u16,
    /// The CA and certificates of an mTLS scenario.
    pub pki: Option<Pki>,
    /// Under `grpc_mtls`: the Check listener's CA (it issued the
    /// listener's certificate for `localhost` and Envoy's client certificate).
    pub grpc_pki: Option<Pki>,
    /// The master key file every replica reads.
    pub key_file: PathBuf,
    /// The service-account secret stored for the `whoami` server.
    pub whoami_secret: String,
    /// The service-account secret stored for `everything`.
    pub everything_secret: String,
    /// Every secret this run created or handed out, for the log scan.
    secrets: Mutex<Vec<String>>,
    /// The environment of every replica (`LATCHKEY_LOG` and
    /// `StackOptions::replica_env`), also when one restarts.
    replica_env: Vec<(String, String)>,
}

impl Stack {
    pub async fn start(scenario: &str, opts: StackOptions) -> Result<Stack> {
        let dir = paths::scenario_dir(scenario)?;
        let (redis, redis_extra, sentinel, redis_section) = match opts.redis_topology {
            RedisTopology::Single => {
                let redis = if opts.persistent_redis {
                    Redis::start_persistent(&dir)?
                } else {
                    Redis::start(&dir)?
                };
                let section = format!("[redis]\nurl = \"{}\"\n", redis.url());
                (redis, Vec::new(), None, section)
            }
            RedisTopology::Cluster => {
                let mut nodes = Redis::start_cluster(&dir, 3)?;
                let section = format!(
                    "[redis]\ncluster_nodes = [{}]\n",
                    nodes
                        .iter()
                        .map(|n| format!("\"{}\"", n.url()))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let first = nodes.remove(0);
                (first, nodes, None, section)
            }
            RedisTopology::Sentinel => {
                let redis = Redis::start(&dir)?;
                // A replica, so the Sentinel has something to promote.
                let replica = Redis::start_replica_of(&dir, &redis, "redis-replica")?;
                // The Sentinel learns of replicas from the master's INFO:
                // attached before it starts, it knows this one at once.
                crate::wait::eventually("the replica syncs with the master", async || {
                    let info = replica.command(&["INFO", "replication"])?;
                    Ok(if info.contains("master_link_status:up") {
                        Ok(())
                    } else {
                        Err(info)
                    })
                })
                .await?;
                let (sentinel, port) = Redis::start_sentinel(&dir, &redis, SENTINEL_MASTER)?;
                let section = format!(
                    "[redis]\nsentinel_nodes = [\"redis://127.0.0.1:{port}\"]\nsentinel_master = \"{SENTINEL_MASTER}\"\n"
                );
                (redis, vec![replica], Some((sentinel, port)), section)
            }
        };
        let idp = Idp::start_with(&dir, opts.idp.clone())?;
        let echo = AuthEcho::start_with(
            &dir,
            crate::paths::workspace_bin("auth-echo")?,
            opts.echo_keep_alive,
        )?;
        let everything = if opts.everything {
            Some(Everything::start(&dir)?)
        } else {
            None
        };
        let (record_rmcp, record_py) = if opts.recorders {
            (
                Some(Recorder::start_rmcp(&dir)?),
                Some(Recorder::start_python(&dir)?),
            )
        } else {
            (None, None)
        };
        // fast-mcp reports whether a call came with this service account's
        // credential (`structuredContent.credential` is "expected").
        let fast_secret = format!("sa-fast-{}", random_hex());
        let fast = match opts.fast_mcp_page_size {
            Some(page) => Some(FastMcp::start(
                &dir,
                page,
                Some(&format!("Bearer {fast_secret}")),
            )?),
            None => None,
        };
        let fast_url = fast
            .as_ref()
            .map(FastMcp::url)
            .unwrap_or_else(|| "http://127.0.0.1:9/mcp".into());

        let envoy_port = free_port();
        let admin_port = free_port();
        let latchkey_bin = paths::latchkey_bin()?;

        let mut key_lines = String::new();
        let mut key_material = Vec::new();
        for id in &opts.key_ids {
            let line = run(
                Command::new(&latchkey_bin).args(["keys", "generate", "--id", id]),
                None,
            )?;
            key_material.push(
                line.trim()
                    .split_once(':')
                    .map(|(_, k)| k.to_string())
                    .unwrap_or_default(),
            );
            key_lines.push_str(&line);
        }
        let key_file = dir.join("master.keys");
        std::fs::write(&key_file, &key_lines)?;
        let active_key = opts.key_ids.first().cloned().unwrap_or_default();

        let everything_url = everything
            .as_ref()
            .map(Everything::url)
            .unwrap_or_else(|| "http://127.0.0.1:9/mcp".into());
        let shared = format!(
            r#"
{redis_section}
[vault]
key_file = "{key_file}"
active_key = "{active_key}"
cache_ttl_secs = {cache_ttl_secs}

[admin.roles]
"platform-admins" = ["identities:manage", "users:manage", "agents:manage", "connections:manage", "keys:manage"]
"secops" = ["identities:manage"]
"approvers" = ["approvals:decide"]

[identity_provider]
issuer = "{issuer}"
# Scenarios rotate keys right after start; production keeps the 5 s default.
jwks_refetch_min_secs = 0

# The clients scenarios' tokens name; any other is an unknown agent.
[[agents]]
name = "e2e-agent"
[[agents]]
name = "audit-agent"
[[agents]]
name = "other"

[[servers]]
name = "whoami"
url = "{echo}"
auth = {{ type = "static_header", header = "authorization", prefix = "Bearer " }}

[[servers]]
name = "everything"
url = "{everything_url}"
auth = {{ type = "static_header", header = "authorization", prefix = "Bearer " }}
# server-everything answers requests over SSE; hidden names are answered so too.
responses = "sse"

[[servers]]
name = "fast"
url = "{fast_url}"
auth = {{ type = "static_header", header = "authorization", prefix = "Bearer " }}
# Its tools say honestly which read (tool_00..09) and which destroy.
trust_annotations = true

[[gateways]]
name = "e2e"
public_url = "{scheme}://127.0.0.1:{envoy_port}/mcp"
unknown_agents = "{unknown_agents}"

[[gateways.assignments]]
name = "fast"
server = "fast"
scheme = "shared"
identity = "fast-sa"

[[gateways.assignments]]
name = "whoami"
server = "whoami"
scheme = "shared"
identity = "whoami-sa"

[[gateways.assignments]]
name = "everything"
server = "everything"
scheme = "shared"
identity = "everything-sa"

[[gateways.assignments]]
name = "whoami-mine"
server = "whoami"
scheme = "per_user"

[[gateways.assignments]]
name = "whoami-late"
server = "whoami"
scheme = "shared"
identity = "late-sa"
"#,
            key_file = key_file.display(),
            cache_ttl_secs = opts.credential_cache_secs,
            scheme = if opts.mtls { "https" } else { "http" },
            unknown_agents = opts.unknown_agents.unwrap_or("deny"),
            issuer = idp.issuer(),
            echo = echo.url(),
        );
        // The recorders' servers and assignments (gateway `e2e`, before any
        // extra config opens another gateway), only when they run.
        let mut shared = shared;
        for (name, r) in [("record-rmcp", &record_rmcp), ("record-py", &record_py)] {
            let Some(r) = r else { continue };
            shared.push_str(&format!(
                r#"
[[servers]]
name = "{name}"
url = "{url}"
auth = {{ type = "static_header", header = "authorization", prefix = "Bearer " }}
# Both SDKs answer requests over SSE; hidden names are answered so too.
responses = "sse"

[[gateways.assignments]]
name = "{name}"
server = "{name}"
scheme = "shared"
identity = "{name}-sa"
"#,
                url = r.url()
            ));
        }
        let shared_config = match &opts.extra_config {
            Some(extra) => format!("{shared}\n{extra}\n"),
            None => shared,
        };
        let shared = match &opts.policy {
            Some(p) => format!("{shared_config}\n{p}\n"),
            None => shared_config.clone(),
        };
        // The Check listener's own CA: the agents' CA (`pki`) must not be
        // able to mint a certificate it accepts.
        let mut grpc_render_args: Vec<std::ffi::OsString> = Vec::new();
        let (grpc_pki, grpc_tls) = if opts.grpc_mtls {
            let pki_dir = dir.join("grpc-pki");
            std::fs::create_dir_all(&pki_dir)?;
            let pki = Pki::create(&pki_dir)?;
            let (cert, key) = pki.client_files(&pki_dir, "envoy-client", ENVOY_CHECK_CLIENT)?;
            for (flag, value) in [
                ("--authz-ca", pki.ca_pem.as_os_str()),
                ("--authz-cert", cert.as_os_str()),
                ("--authz-key", key.as_os_str()),
                ("--authz-name", "localhost".as_ref()),
            ] {
                grpc_render_args.push(flag.into());
                grpc_render_args.push(value.into());
            }
            let section = format!(
                "cert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nallowed_clients = [\"{ENVOY_CHECK_CLIENT}\"]",
                pki.server_cert.display(),
                pki.server_key.display(),
                pki.ca_pem.display()
            );
            (Some(pki), Some(section))
        } else {
            (None, None)
        };
        let latchkey_log = if opts.debug_logs { "debug" } else { "info" };
        let mut replica_env = vec![("LATCHKEY_LOG".to_string(), latchkey_log.to_string())];
        replica_env.extend(opts.replica_env.iter().cloned());
        let mut replicas = Vec::new();
        for n in 0..opts.replicas.max(1) {
            let config_path = dir.join(if n == 0 {
                "latchkey.toml".to_string()
            } else {
                format!("latchkey-{n}.toml")
            });
            let mut r = Replica {
                grpc_port: 0,
                http_port: 0,
                admin_port: 0,
                metrics_port: opts.metrics_listener.then_some(0),
                config_path,
                process: None,
                grpc_tls: grpc_tls.clone(),
            };
            r.pick_ports(&shared)?;
            replicas.push(r);
        }
        let config_path = replicas[0].config_path.clone();

        let whoami_secret = format!("sa-whoami-{}", random_hex());
        let everything_secret = format!("sa-everything-{}", random_hex());
        let late_secret = format!("sa-late-{}", random_hex());
        let record_secret = format!("sa-record-{}", random_hex());
        let recorded: &[(&str, &str, &String)] = if opts.recorders {
            &[
                ("record-rmcp-sa", "record-rmcp", &record_secret),
                ("record-py-sa", "record-py", &record_secret),
            ]
        } else {
            &[]
        };
        for &(id, server, secret) in [
            ("whoami-sa", "whoami", &whoami_secret),
            ("everything-sa", "everything", &everything_secret),
            ("late-sa", "whoami", &late_secret),
            ("fast-sa", "fast", &fast_secret),
        ]
        .iter()
        .chain(recorded)
        {
            let out = run(
                Command::new(&latchkey_bin)
                    .args(["identity", "put-shared", "--config"])
                    .arg(&config_path)
                    .args(["--id", id, "--server", server]),
                Some(secret),
            )?;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("cli.log"))?
                .write_all(out.as_bytes())?;
        }

        for (n, r) in replicas.iter_mut().enumerate() {
            // A port picked as free can be taken before the replica binds it
            // (parallel tests, outgoing connections): pick again and retry.
            let mut attempt = 0;
            loop {
                match start_latchkey(
                    &latchkey_bin,
                    &r.config_path,
                    &dir,
                    r.http_port,
                    n,
                    &replica_env,
                ) {
                    Ok(p) => {
                        r.process = Some(p);
                        break;
                    }
                    Err(e) if attempt < 2 => {
                        attempt += 1;
                        eprintln!("replica {n} did not start ({e:#}); retrying on other ports");
                        r.pick_ports(&shared)?;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let authz_args: Vec<String> = replicas
            .iter()
            .flat_map(|r| ["--authz".to_string(), format!("127.0.0.1:{}", r.grpc_port)])
            .collect();

        let mode = match opts.mode {
            AuthzMode::Wasm => "wasm",
            AuthzMode::Native => "native",
        };
        let pki = if opts.mtls {
            Some(Pki::create(&dir)?)
        } else {
            None
        };
        let mut tls_args: Vec<std::ffi::OsString> = Vec::new();
        if let Some(p) = &pki {
            for (flag, path) in [
                ("--tls-cert", &p.server_cert),
                ("--tls-key", &p.server_key),
                ("--client-ca", &p.ca_pem),
            ] {
                tls_args.push(flag.into());
                tls_args.push(path.into());
            }
        }
        let bootstrap = run(
            Command::new(&latchkey_bin)
                .args(["envoy", "render", "--config"])
                .arg(&config_path)
                .args(["--listen", &format!("127.0.0.1:{envoy_port}")])
                .args(["--admin", &format!("127.0.0.1:{admin_port}")])
                .args(["--mode", mode, "--wasm"])
                .arg(paths::filter_wasm()?)
                .args(["--max-body-bytes", &opts.max_body_bytes.to_string()])
                .args(["--authz-timeout-ms", &opts.authz_timeout_ms.to_string()])
                .args(&authz_args)
                .args(&tls_args)
                .args(&grpc_render_args)
                .args(&opts.render_args),
            None,
        )?;
        let envoy = if opts.debug_logs {
            Envoy::start_logging(
                &dir,
                "envoy",
                &bootstrap,
                opts.envoy_workers,
                crate::envoy::DEBUG_LOGGING,
            )?
        } else {
            Envoy::start_with_workers(&dir, "envoy", &bootstrap, opts.envoy_workers)?
        };

        Ok(Stack {
            dir,
            config_path,
            redis,
            redis_extra,
            sentinel,
            idp,
            echo,
            everything,
            fast,
            record_rmcp,
            record_py,
            replicas,
            shared_config,
            envoy,
            envoy_port,
            pki,
            grpc_pki,
            key_file,
            secrets: Mutex::new(
                [
                    vec![
                        whoami_secret.clone(),
                        everything_secret.clone(),
                        late_secret,
                        fast_secret,
                        record_secret,
                    ],
                    key_material,
                ]
                .concat(),
            ),
            whoami_secret,
            everything_secret,
            replica_env,
        })
    }

    pub fn gateway_url(&self) -> String {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/mcp", self.envoy_port)
    }

    /// Rewrites every replica's config file with `policy` as its `[policy]`
    /// (none: no policy). Running replicas pick it up on their own.
    pub fn set_policy(&self, policy: Option<&str>) -> Result<()> {
        let shared = match policy {
            Some(p) => format!("{}\n{p}\n", self.shared_config),
            None => self.shared_config.clone(),
        };
        for r in &self.replicas {
            r.write_config(&shared)?;
        }
        Ok(())
    }

    /// The public URL of one assignment, through Envoy.
    pub fn url(&self, assignment: &str) -> String {
        format!("{}/{assignment}", self.gateway_url())
    }

    /// A valid token for `sub`, audience = this gateway.
    pub async fn token(&self, sub: &str) -> Result<String> {
        self.token_with(&TokenRequest::new(sub, &self.gateway_url()))
            .await
    }

    pub async fn token_with(&self, req: &TokenRequest) -> Result<String> {
        let t = self.idp.token(req).await?;
        self.remember_secret(&t);
        Ok(t)
    }

    pub fn remember_secret(&self, s: &str) {
        if let Ok(mut v) = self.secrets.lock() {
            v.push(s.to_string());
        }
    }

    /// Replica 0's process (the only one unless `replicas` was set).
    pub fn latchkey(&self) -> Option<&Process> {
        self.replicas.first().and_then(|r| r.process.as_ref())
    }

    pub fn stop_latchkey(&mut self) {
        self.stop_replica(0);
    }

    pub fn restart_latchkey(&mut self) -> Result<()> {
        self.restart_replica(0)
    }

    pub fn stop_replica(&mut self, n: usize) {
        if let Some(r) = self.replicas.get_mut(n) {
            r.process = None;
        }
    }

    pub fn restart_replica(&mut self, n: usize) -> Result<()> {
        let bin = paths::latchkey_bin()?;
        let r = self.replicas.get_mut(n).context("no such replica")?;
        r.process = None;
        r.process = Some(start_latchkey(
            &bin,
            &r.config_path,
            &self.dir,
            r.http_port,
            n,
            &self.replica_env,
        )?);
        Ok(())
    }

    /// How many `method` requests to `assignment` replica `n` has decided
    /// so far (its `latchkey::decision` log lines), e.g. to see that calls
    /// were spread over the replicas.
    pub fn decided(&self, n: usize, assignment: &str, method: &str) -> usize {
        let (assignment, method) = (
            format!("\"assignment\":\"{assignment}\""),
            format!("\"method\":\"{method}\""),
        );
        self.replicas[n]
            .process
            .as_ref()
            .map(|p| {
                p.log_text()
                    .lines()
                    .filter(|l| {
                        l.contains("\"latchkey::decision\"")
                            && l.contains(&assignment)
                            && l.contains(&method)
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    /// A token for the admin API: `sub`, audience `latchkey-admin`, with
    /// `groups` (mapped to capabilities in `[admin.roles]`).
    pub async fn admin_token(&self, sub: &str, groups: &[&str]) -> Result<String> {
        self.token_with(
            &TokenRequest::new(sub, ADMIN_AUDIENCE)
                .client("latchkey-cli")
                .claim("groups", serde_json::json!(groups)),
        )
        .await
    }

    /// `user` stores an identity of their own for `server` (a random
    /// secret, remembered for the log scan) through replica 0's admin API,
    /// as they would with the CLI, without using it anywhere yet. Returns
    /// the secret.
    pub async fn create_own_identity(&self, user: &str, server: &str, id: &str) -> Result<String> {
        let admin = self.admin_token(user, &[]).await?;
        let secret = format!("{user}-{server}-{}", random_hex());
        self.remember_secret(&secret);
        self.cli(
            0,
            &admin,
            &["identity", "create", "--server", server, "--id", id],
            Some(&secret),
        )?;
        Ok(secret)
    }

    /// As [`Stack::create_own_identity`], then puts it on `user`'s
    /// connection to gateway `e2e`. Returns the secret.
    pub async fn connect_own_identity(&self, user: &str, server: &str, id: &str) -> Result<String> {
        let secret = self.create_own_identity(user, server, id).await?;
        let admin = self.admin_token(user, &[]).await?;
        self.cli(
            0,
            &admin,
            &[
                "connection",
                "use",
                "--gateway",
                "e2e",
                "--server",
                server,
                "--identity",
                id,
            ],
            None,
        )?;
        Ok(secret)
    }

    /// Runs the `latchkey` CLI against replica `n`'s admin API with `token`,
    /// `--json`, and `stdin` piped in; its parsed JSON lines on success, its
    /// stderr in the error.
    pub fn cli(
        &self,
        n: usize,
        token: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<Vec<serde_json::Value>> {
        Ok(self.cli_with_stderr(n, token, args, stdin)?.0)
    }

    /// [`Stack::cli`], also returning what the CLI wrote to standard error
    /// (warnings) when it succeeded.
    pub fn cli_with_stderr(
        &self,
        n: usize,
        token: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<(Vec<serde_json::Value>, String)> {
        let r = self.replicas.get(n).context("no such replica")?;
        let (out, err) = run_with_stderr(
            Command::new(paths::latchkey_bin()?)
                .args(["--json", "--admin-url", &r.admin_url()])
                .args(args)
                .env("LATCHKEY_TOKEN", token),
            stdin,
        )?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("cli.log"))?
            .write_all(format!("$ latchkey {}\n{out}{err}", args.join(" ")).as_bytes())?;
        let values = out
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("CLI printed non-JSON: {l}")))
            .collect::<Result<_>>()?;
        Ok((values, err))
    }

    /// Runs the CLI expecting it to fail; returns its stderr.
    pub fn cli_refused(&self, n: usize, token: &str, args: &[&str]) -> Result<String> {
        match self.cli(n, token, args, None) {
            Ok(out) => bail!(
                "`latchkey {}` succeeded but should not have: {out:?}",
                args.join(" ")
            ),
            Err(e) => Ok(format!("{e:#}")),
        }
    }

    /// A `latchkey` command that reads this stack's config through
    /// `LATCHKEY_CONFIG`, for the subcommands that go to the config or to
    /// Redis themselves rather than through the admin API (`audit`, `policy`).
    pub fn config_cli(&self) -> Result<Command> {
        let mut cmd = Command::new(paths::latchkey_bin()?);
        cmd.env("LATCHKEY_CONFIG", &self.config_path);
        Ok(cmd)
    }

    /// Every event in the audit stream, oldest first.
    ///
    /// No audit stream on any node is an error, never an empty list: the
    /// stack's set-up already writes lifecycle events, so a missing stream
    /// means the check reads the wrong place, and an absence check ("no
    /// event for ...") must not pass because of it.
    pub fn audit_events(&self) -> Result<Vec<serde_json::Value>> {
        let mut looked = Vec::new();
        // A Cluster keeps every Latchkey key on the node owning its hash tag.
        for node in std::iter::once(&self.redis).chain(&self.redis_extra) {
            for key in ["latchkey:audit", "{latchkey}:audit"] {
                match node.key_type(key) {
                    Ok(kind) if kind == "stream" => return node.stream_json(key, "event"),
                    Ok(kind) => looked.push(format!("port {}: {key} is {kind}", node.port)),
                    // Other Cluster nodes answer MOVED for the tagged key.
                    Err(e) if format!("{e:#}").to_ascii_lowercase().contains("moved") => {
                        looked.push(format!("port {}: {key} MOVED", node.port));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        bail!("no audit stream on any Redis node: {}", looked.join("; "))
    }

    /// Fails if any secret of this run is in any log of this run.
    pub fn assert_no_secret_in_logs(&self) -> Result<usize> {
        let secrets = self.secrets.lock().map(|v| v.clone()).unwrap_or_default();
        crate::secrets::scan_logs(&self.dir, &secrets)
    }
}

pub(crate) fn start_latchkey(
    bin: &PathBuf,
    config: &PathBuf,
    dir: &std::path::Path,
    http_port: u16,
    replica: usize,
    env: &[(String, String)],
) -> Result<Process> {
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--config"]).arg(config);
    for (name, value) in env {
        cmd.env(name, value);
    }
    let base = if replica == 0 {
        "latchkey".to_string()
    } else {
        format!("latchkey-r{replica}")
    };
    let name = if dir.join(format!("{base}.log")).exists() {
        format!("{base}-{}", random_hex())
    } else {
        base
    };
    let mut p = Process::spawn(&name, cmd, dir)?;
    p.wait_for_own_readyz(
        &format!("http://127.0.0.1:{http_port}/readyz"),
        Duration::from_secs(20),
    )?;
    Ok(p)
}

/// Runs a command to completion; its stdout on success, stderr in the error.
pub fn run(cmd: &mut Command, stdin: Option<&str>) -> Result<String> {
    Ok(run_with_stderr(cmd, stdin)?.0)
}

/// [`run`], also returning standard error.
pub fn run_with_stderr(cmd: &mut Command, stdin: Option<&str>) -> Result<(String, String)> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        // Program and arguments only: the environment carries tokens.
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        bail!(
            "{} {} failed: {}",
            cmd.get_program().to_string_lossy(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

pub fn random_hex() -> String {
    format!(
        "{:016x}{:016x}",
        crate::process::random_u64(),
        crate::process::random_u64()
    )
}
