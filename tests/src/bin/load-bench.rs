//! `load-bench`: what Latchkey adds to every tool call, measured side by side.
//!
//! Starts, on loopback, one Redis, the identity provider, the `fast-mcp`
//! upstream and one `latchkey serve`, then one Envoy per configuration in
//! [`SETUPS`] (same binary, same upstream, `--concurrency 1`):
//! * `floor`    — Envoy straight to the upstream, no filter;
//! * `native`   — Envoy's `envoy.filters.http.mcp` + native `ext_authz` → latchkey serve;
//! * `latchkey` — the Latchkey Wasm filter → latchkey serve, credential injected;
//! * `latchkey-lists` — the same with a tool policy in force (its own
//!   `latchkey serve` with a `[policy]`): every call is checked against it
//!   and `tools/list` answers are trimmed for the caller (10 of 20 tools).
//!
//! `--smoke` sends a few hundred `tools/call` requests (and one `initialize`
//! and one `tools/list`) through each and checks every answer, including
//! which credential reached the upstream; no timing. Without it, `oha`
//! drives the same request through each configuration in interleaved
//! rounds: fixed rates (latency percentiles, added latency over floor) and
//! fixed concurrency (throughput), then `tools/list` at fixed concurrency
//! (what list trimming costs), with CPU seconds per 10 000 requests for
//! Envoy and for latchkey serve, Redis commands per request, and latchkey
//! serve's memory with 10 000 and 100 000 stored identities. Results go to
//! `<out>/load-<date>.json` (`bench/report.py` turns it into Markdown and a
//! chart).
//!
//! Usage: `load-bench [--smoke] [--out DIR] [--rounds N] [--seconds S] [--oha PATH]`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use latchkey_e2e::process::{Process, free_port, stop_all_started, stop_requested};
use latchkey_e2e::stack::run;
use latchkey_e2e::{Envoy, Idp, Redis, TokenRequest, paths, scenario_dir};
use serde_json::{Value, json};

/// One configuration under test. Adding a configuration is adding an entry
/// to [`SETUPS`]; everything downstream (checks, rounds, report) follows.
struct Setup {
    name: &'static str,
    /// `latchkey envoy render --mode`.
    mode: &'static str,
    /// Extra `latchkey envoy render` arguments.
    render_args: &'static [&'static str],
    /// Whether the upstream must receive the service-account credential
    /// (otherwise, with no filter, it sees the client's own token).
    injects: bool,
    /// Served by the `latchkey serve` whose config has a `[policy]`.
    policy: bool,
    /// Why it cannot be measured in this build, if it cannot.
    unavailable: Option<&'static str>,
    about: &'static str,
}

const SETUPS: &[Setup] = &[
    Setup {
        name: "floor",
        mode: "none",
        render_args: &[],
        injects: false,
        policy: false,
        unavailable: None,
        about: "Envoy straight to the upstream, no filter (`latchkey envoy render --mode none`)",
    },
    Setup {
        name: "native",
        mode: "native",
        render_args: &[],
        injects: true,
        policy: false,
        unavailable: None,
        about: "Envoy's `envoy.filters.http.mcp` + native `ext_authz` (request body forwarded) calling `latchkey serve` (`--mode native`)",
    },
    Setup {
        name: "latchkey",
        mode: "wasm",
        render_args: &[],
        injects: true,
        policy: false,
        unavailable: None,
        about: "the Latchkey Wasm filter calling `latchkey serve`, service-account credential injected (`--mode wasm`)",
    },
    Setup {
        name: "latchkey-lists",
        mode: "wasm",
        render_args: &[],
        injects: true,
        policy: true,
        unavailable: None,
        about: "the Latchkey Wasm filter calling a `latchkey serve` with a `[policy]` (2 grants): calls checked, `tools/list` trimmed to the caller's 10 of 20 tools (`--mode wasm`)",
    },
];

const RATES: [u32; 2] = [500, 2000];
/// Connections oha may open to hold a fixed rate.
const RATE_CONNECTIONS: u32 = 64;
/// Connections for the throughput runs.
const CONCURRENCY: u32 = 32;
const PROTOCOL: &str = "2026-07-28";
const TOOL: &str = "tool_01";
const TOOL_CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"tool_01","arguments":{"text":"hello"}}}"#;
const TOOLS_LIST: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
/// The policy of the `latchkey-lists` configuration: the benchmark's user
/// sees `tool_00` … `tool_09`; a second grant (to a role the user lacks)
/// makes the lookup more than a single match.
const POLICY: &str = r#"
[[policy.grants]]
name = "everyone"
gateway = "bench"
assignments = ["fast"]
users = ["*"]
tools = { allow = ["tool_0*"], deny = ["tool_1*"] }

[[policy.grants]]
name = "operators"
gateway = "bench"
assignments = ["fast"]
roles = ["operators"]
tools = { allow = ["*"] }
"#;
/// How many tools the benchmark's user sees with and without the policy.
const VISIBLE_WITH_POLICY: usize = 10;
const TOOLS_UPSTREAM: usize = 20;
/// The shared service-account secret stored for the upstream; a benchmark
/// value, never printed.
const SERVICE_SECRET: &str = "bench-service-account-secret";
/// Redis commands that are not on the request path: the benchmark's own
/// `INFO` and the service's replica announcement (`HSET` every 10 s).
const BACKGROUND_COMMANDS: [&str; 2] = ["info", "hset"];
/// What the audit writer sends, off the request path: one script call
/// (`EVALSHA`, `EVAL` on a cold script cache) per batch of decision events,
/// which runs `HGET`, one `XADD` per event and `HSET` inside Redis.
const AUDIT_ROUND_TRIPS: [&str; 2] = ["evalsha", "eval"];
const AUDIT_IN_SCRIPT: [&str; 3] = ["xadd", "hget", "xtrim"];

struct Opts {
    smoke: bool,
    out: PathBuf,
    rounds: usize,
    seconds: u64,
    oha: Option<PathBuf>,
}

const USAGE: &str =
    "usage: load-bench [--smoke] [--out DIR] [--rounds N] [--seconds S] [--oha PATH]";

fn opts() -> Result<Opts> {
    let mut o = Opts {
        smoke: false,
        out: paths::workspace_root().join("bench/results"),
        rounds: 3,
        seconds: 5,
        oha: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--smoke" => o.smoke = true,
            "--out" => o.out = PathBuf::from(value()?),
            "--rounds" => o.rounds = value()?.parse().context("--rounds")?,
            "--seconds" => o.seconds = value()?.parse().context("--seconds")?,
            "--oha" => o.oha = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}; {USAGE}"),
        }
    }
    ensure!(o.rounds >= 1, "--rounds must be at least 1");
    ensure!(o.seconds >= 1, "--seconds must be at least 1");
    Ok(o)
}

/// One running configuration.
struct Target {
    setup: &'static Setup,
    envoy: Envoy,
    url: String,
    /// The `latchkey serve` it calls (none for floor).
    serve_pid: u32,
}

/// Everything a measurement needs to reach and observe.
struct Bench {
    dir: PathBuf,
    redis: Redis,
    // Held so they run until the benchmark ends (dropping one stops it).
    _idp: Idp,
    _upstream: Process,
    serve: Process,
    _serve_lists: Process,
    targets: Vec<Target>,
    token: String,
    host: String,
    commands: Value,
}

#[tokio::main]
async fn main() -> Result<()> {
    // Drops do not run when a signal ends the program: stop every process
    // started here (they sit in their own process groups) before leaving.
    tokio::spawn(async {
        stop_requested().await;
        eprintln!("load-bench: interrupted; stopping everything it started");
        stop_all_started();
        std::process::exit(130);
    });
    let o = opts()?;
    let bench = start(&o).await?;

    // Every configuration answers correctly before anything is measured.
    let checks = if o.smoke { 300 } else { 50 };
    for t in &bench.targets {
        let seen = check_answers(t, &bench.host, &bench.token, checks).await?;
        println!(
            "{:>14}: {checks}/{checks} tools/call answered correctly (upstream saw credential: {seen}); initialize and tools/list ({} tools) too",
            t.setup.name,
            if t.setup.policy {
                VISIBLE_WITH_POLICY
            } else {
                TOOLS_UPSTREAM
            }
        );
    }
    for s in SETUPS {
        if let Some(why) = s.unavailable {
            println!("{:>14}: {why}", s.name);
        }
    }
    if o.smoke {
        println!("smoke: every available configuration answered correctly");
        return Ok(());
    }
    measure(&o, &bench).await
}

/// Starts Redis, the IdP, fast-mcp, latchkey serve and one Envoy per
/// available configuration.
async fn start(o: &Opts) -> Result<Bench> {
    let dir = scenario_dir(if o.smoke {
        "load-bench-smoke"
    } else {
        "load-bench"
    })?;
    let redis = Redis::start(&dir)?;
    let idp = Idp::start(&dir)?;
    let fast_port = free_port();
    let fast_bin = paths::workspace_bin("fast-mcp")?;
    let mut fast_cmd = Command::new(&fast_bin);
    fast_cmd.args(["--port", &fast_port.to_string()]).env(
        "FAST_MCP_EXPECT_AUTHORIZATION",
        format!("Bearer {SERVICE_SECRET}"),
    );
    let mut fast = Process::spawn("fast-mcp", fast_cmd, &dir)?;
    fast.wait_for_port(fast_port, Duration::from_secs(10))?;

    // One gateway public URL for all Envoys: requests carry its Host.
    let public_port = free_port();
    let public = format!("http://127.0.0.1:{public_port}/mcp");
    let (grpc, http, admin) = (free_port(), free_port(), free_port());
    let latchkey = paths::latchkey_bin()?;
    let key_line = run(
        Command::new(&latchkey).args(["keys", "generate", "--id", "bench1"]),
        None,
    )?;
    let key_file = dir.join("master.keys");
    std::fs::write(&key_file, key_line)?;
    let config = |grpc: u16, http: u16, admin: u16| {
        format!(
            r#"[listen]
grpc = "127.0.0.1:{grpc}"
http = "127.0.0.1:{http}"

[admin]
listen = "127.0.0.1:{admin}"

[redis]
url = "{redis}"

[vault]
key_file = "{key_file}"
cache_ttl_secs = 3600

[identity_provider]
issuer = "{issuer}"

[[agents]]
name = "bench-agent"

[[servers]]
name = "fast"
url = "http://127.0.0.1:{fast_port}/mcp"
auth = {{ type = "static_header", header = "authorization", prefix = "Bearer " }}

[[gateways]]
name = "bench"
public_url = "{public}"

[[gateways.assignments]]
name = "fast"
server = "fast"
scheme = "shared"
identity = "fast-sa"
"#,
            redis = redis.url(),
            key_file = key_file.display(),
            issuer = idp.issuer(),
        )
    };
    let config_path = dir.join("latchkey.toml");
    std::fs::write(&config_path, config(grpc, http, admin))?;
    let (grpc2, http2, admin2) = (free_port(), free_port(), free_port());
    let lists_config_path = dir.join("latchkey-lists.toml");
    std::fs::write(
        &lists_config_path,
        format!("{}{POLICY}", config(grpc2, http2, admin2)),
    )?;
    run(
        Command::new(&latchkey)
            .args(["identity", "put-shared", "--config"])
            .arg(&config_path)
            .args(["--id", "fast-sa", "--server", "fast"]),
        Some(SERVICE_SECRET),
    )?;
    let start_serve = |name: &str, config: &Path, http: u16| -> Result<Process> {
        let mut cmd = Command::new(&latchkey);
        cmd.args(["serve", "--config"])
            .arg(config)
            .env("LATCHKEY_LOG", "warn");
        let mut serve = Process::spawn(name, cmd, &dir)?;
        serve.wait_for_own_readyz(
            &format!("http://127.0.0.1:{http}/readyz"),
            Duration::from_secs(20),
        )?;
        Ok(serve)
    };
    let serve = start_serve("latchkey", &config_path, http)?;
    let serve_lists = start_serve("latchkey-lists", &lists_config_path, http2)?;

    let mut targets = Vec::new();
    let mut renders = json!({});
    for setup in SETUPS.iter().filter(|s| s.unavailable.is_none()) {
        let listen = free_port();
        let mut render = Command::new(&latchkey);
        let (config, serve) = if setup.policy {
            (&lists_config_path, &serve_lists)
        } else {
            (&config_path, &serve)
        };
        render
            .args(["envoy", "render", "--config"])
            .arg(config)
            .args(["--listen", &format!("127.0.0.1:{listen}")])
            .args(["--mode", setup.mode])
            .args(setup.render_args)
            .arg("--wasm")
            .arg(paths::filter_wasm()?);
        renders[setup.name] = json!(shown(&render));
        let yaml = run(&mut render, None)?;
        let envoy = Envoy::start_named(&dir, &format!("envoy-{}", setup.name), &yaml)?;
        targets.push(Target {
            setup,
            envoy,
            url: format!("http://127.0.0.1:{listen}/mcp/fast"),
            serve_pid: serve.pid().context("serve pid")?,
        });
    }
    let token = idp
        .token(&TokenRequest::new("bench-user", &public).client("bench-agent"))
        .await?;
    let commands = json!({
        "redis": format!("redis-server --port <free> --bind 127.0.0.1 --save \"\" --appendonly no"),
        "idp": "node tests/peers/idp.mjs --port <free>",
        "upstream": format!("{} --port <free>", rel(&fast_bin)),
        "serve": format!("{} serve --config <generated latchkey.toml>", rel(&latchkey)),
        "serve_lists": format!("{} serve --config <generated latchkey-lists.toml: the same plus a [policy] of 2 grants>", rel(&latchkey)),
        "render": renders,
        "envoy": format!(
            "{} -c envoy-<config>.yaml --config-yaml <admin on a free port> --base-id <unique> --concurrency 1 --log-level info --disable-hot-restart",
            rel(&paths::envoy()?)
        ),
    });
    Ok(Bench {
        dir,
        redis,
        _idp: idp,
        _upstream: fast,
        serve,
        _serve_lists: serve_lists,
        targets,
        token,
        host: format!("127.0.0.1:{public_port}"),
        commands,
    })
}

/// A path relative to the workspace, for showing command lines.
fn rel(p: &Path) -> String {
    p.strip_prefix(paths::workspace_root())
        .unwrap_or(p)
        .display()
        .to_string()
}

/// A command line as text, paths relative to the workspace.
fn shown(cmd: &Command) -> String {
    let mut parts = vec![rel(Path::new(cmd.get_program()))];
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        let p = Path::new(a.as_ref());
        parts.push(if p.is_absolute() {
            rel(p)
        } else {
            a.into_owned()
        });
    }
    parts.join(" ")
}

/// What a run sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    /// `tools/call` of `tool_01`: the main measurement.
    Call,
    /// `tools/list`: what trimming a list costs.
    List,
}

impl Request {
    fn parts(self, token: &str, host: &str) -> (&'static str, Vec<(&'static str, String)>) {
        let mut headers = request_headers(token, host);
        match self {
            Request::Call => (TOOL_CALL, headers),
            Request::List => {
                headers.retain(|(h, _)| *h != "mcp-name");
                for (h, v) in &mut headers {
                    if *h == "mcp-method" {
                        *v = "tools/list".into();
                    }
                }
                (TOOLS_LIST, headers)
            }
        }
    }
}

/// The headers every request carries (MCP 2026-07-28: the body's method and
/// name mirrored into `Mcp-Method` / `Mcp-Name`).
fn request_headers(token: &str, host: &str) -> Vec<(&'static str, String)> {
    vec![
        ("authorization", format!("Bearer {token}")),
        ("content-type", "application/json".into()),
        ("accept", "application/json, text/event-stream".into()),
        ("mcp-protocol-version", PROTOCOL.into()),
        ("mcp-method", "tools/call".into()),
        ("mcp-name", TOOL.into()),
        ("host", host.into()),
    ]
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&'static str, String)],
    body: &str,
) -> Result<(u16, String)> {
    let mut req = client
        .post(url)
        .body(body.to_string())
        .timeout(Duration::from_secs(10));
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    let resp = req.send().await.with_context(|| format!("POST {url}"))?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await?))
}

/// Sends `n` tools/call requests (8 at a time), one initialize and one
/// tools/list, and checks each answer; returns which credential the
/// upstream saw.
async fn check_answers(t: &Target, host: &str, token: &str, n: usize) -> Result<&'static str> {
    let client = reqwest::Client::new();
    let url = &t.url;
    let name = t.setup.name;
    let headers = request_headers(token, host);
    let want_credential = if t.setup.injects { "expected" } else { "other" };
    for chunk in (0..n).collect::<Vec<_>>().chunks(8) {
        let calls = chunk
            .iter()
            .map(|_| post(&client, url, &headers, TOOL_CALL));
        for answer in futures_util::future::join_all(calls).await {
            let (status, body) = answer?;
            ensure!(status == 200, "{name}: {url} answered {status}: {body}");
            let v: Value =
                serde_json::from_str(&body).with_context(|| format!("{name}: {url}: {body}"))?;
            let result = &v["result"];
            ensure!(
                v["id"] == 1
                    && result["content"][0]["text"] == format!("ok {TOOL}")
                    && result["structuredContent"]["echo"] == json!({"text": "hello"}),
                "{name}: {url} answered something else: {body}"
            );
            let seen = result["structuredContent"]["credential"]
                .as_str()
                .unwrap_or("");
            ensure!(
                seen == want_credential,
                "{name}: the upstream saw credential \"{seen}\", expected \"{want_credential}\""
            );
        }
    }
    let mut other = headers.clone();
    other.retain(|(h, _)| *h != "mcp-method" && *h != "mcp-name");
    let init = format!(
        r#"{{"jsonrpc":"2.0","id":"i","method":"initialize","params":{{"protocolVersion":"{PROTOCOL}","capabilities":{{}},"clientInfo":{{"name":"load-bench","version":"1"}}}}}}"#
    );
    let (status, body) = post(&client, url, &other, &init).await?;
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    ensure!(
        status == 200 && v["result"]["serverInfo"]["name"] == "fast-mcp",
        "{name}: initialize answered {status}: {body}"
    );
    other.push(("mcp-method", "tools/list".into()));
    let (status, body) = post(&client, url, &other, TOOLS_LIST).await?;
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    let visible = if t.setup.policy {
        VISIBLE_WITH_POLICY
    } else {
        TOOLS_UPSTREAM
    };
    ensure!(
        status == 200 && v["result"]["tools"].as_array().map(Vec::len) == Some(visible),
        "{name}: tools/list answered {status} (expected {visible} tools): {body}"
    );
    Ok(want_credential)
}

/// The oha command line for one run (the token shown as `<token>`).
fn oha_command(
    oha: &Path,
    url: &str,
    body: &str,
    headers: &[(&'static str, String)],
    seconds: u64,
    rate: Option<u32>,
    out: &Path,
) -> (Command, String) {
    let mut cmd = Command::new(oha);
    cmd.args(["--no-tui", "--output-format", "json", "-o"])
        .arg(out)
        .args(["-m", "POST", "-d", body])
        // -w: requests in flight at the deadline finish (and are checked)
        // instead of being counted as aborted.
        .args(["-z", &format!("{seconds}s"), "-w"]);
    match rate {
        Some(q) => cmd.args(["-c", &RATE_CONNECTIONS.to_string()]).args([
            "-q",
            &q.to_string(),
            "--latency-correction",
        ]),
        None => cmd.args(["-c", &CONCURRENCY.to_string()]),
    };
    for (name, value) in headers {
        cmd.args(["-H", &format!("{name}: {value}")]);
    }
    cmd.arg(url);
    let mut text =
        format!("oha --no-tui --output-format json -o <file> -m POST -d '{body}' -z {seconds}s -w");
    match rate {
        Some(q) => text += &format!(" -c {RATE_CONNECTIONS} -q {q} --latency-correction"),
        None => text += &format!(" -c {CONCURRENCY}"),
    }
    for (name, value) in headers {
        let value = if *name == "authorization" {
            "Bearer <token>"
        } else {
            value
        };
        text += &format!(" -H '{name}: {value}'");
    }
    text += &format!(" {url}");
    (cmd, text)
}

/// One oha run; fails unless every response was 200, showing a response
/// that was not.
async fn run_oha(
    bench: &Bench,
    oha: &Path,
    t: &Target,
    request: Request,
    seconds: u64,
    rate: Option<u32>,
) -> Result<Value> {
    let (body, headers) = request.parts(&bench.token, &bench.host);
    let out = bench.dir.join("oha-last.json");
    let _ = std::fs::remove_file(&out);
    let (cmd, _) = oha_command(oha, &t.url, body, &headers, seconds, rate, &out);
    let mut p = Process::spawn("oha", cmd, &bench.dir)?;
    let status = p.wait_exit(Duration::from_secs(seconds + 60))?;
    ensure!(status.success(), "oha failed ({status}): {}", p.log_tail());
    let v: Value = serde_json::from_slice(&std::fs::read(&out)?).context("oha JSON")?;
    let codes = &v["statusCodeDistribution"];
    let total: u64 = codes
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    let ok = codes["200"].as_u64().unwrap_or(0);
    let errors = &v["errorDistribution"];
    let error_count: u64 = errors
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    if total == 0 || ok != total || error_count > 0 {
        let sample = match post(&reqwest::Client::new(), &t.url, &headers, body).await {
            Ok((status, body)) => format!("HTTP {status}: {body}"),
            Err(e) => format!("{e:#}"),
        };
        bail!(
            "{}: not every response was 200 (status codes {codes}, connection errors {errors}); a request sent now gets {sample}",
            t.setup.name
        );
    }
    let p = &v["latencyPercentiles"];
    let ms = |k: &str| p[k].as_f64().map(|s| s * 1000.0);
    Ok(json!({
        "requests": total,
        "rps": v["summary"]["requestsPerSec"],
        "p50_ms": ms("p50"),
        "p90_ms": ms("p90"),
        "p99_ms": ms("p99"),
        "p99_9_ms": ms("p99.9"),
    }))
}

/// Interleaved rounds over every configuration, then memory; writes the JSON.
async fn measure(o: &Opts, bench: &Bench) -> Result<()> {
    let oha = o
        .oha
        .clone()
        .or_else(|| {
            let local = paths::workspace_root().join(".local/tools/bin/oha");
            local.exists().then_some(local)
        })
        .context("oha not found: scripts/bench installs it into .local/tools")?;
    let headers = request_headers(&bench.token, &bench.host);
    let example_url = "http://127.0.0.1:<port of the configuration's Envoy>/mcp/fast";
    let dummy = Path::new("<file>");
    let mut commands = bench.commands.clone();
    commands["oha_rate"] = json!(
        oha_command(
            &oha,
            example_url,
            TOOL_CALL,
            &headers,
            o.seconds,
            Some(RATES[0]),
            dummy
        )
        .1
    );
    commands["oha_throughput"] = json!(
        oha_command(
            &oha,
            example_url,
            TOOL_CALL,
            &headers,
            o.seconds,
            None,
            dummy
        )
        .1
    );
    let (list_body, list_headers) = Request::List.parts(&bench.token, &bench.host);
    commands["oha_list_throughput"] = json!(
        oha_command(
            &oha,
            example_url,
            list_body,
            &list_headers,
            o.seconds,
            None,
            dummy
        )
        .1
    );

    let serve_pid = bench.serve.pid().context("serve pid")?;
    let load_before = loadavg();
    let call = |key: String, rate| (key, Request::Call, rate);
    let mut rounds: Vec<BTreeMap<&'static str, Value>> = Vec::new();
    for round in 0..o.rounds {
        let mut measured = BTreeMap::new();
        // Rotate the order so drift hits every configuration alike.
        let n = bench.targets.len();
        for t in (0..n).map(|i| &bench.targets[(i + round) % n]) {
            let envoy_pgid = t.envoy.process.pid().context("envoy pid")?;
            let mut entry = json!({});
            let redis0 = bench.redis_calls()?;
            let mut requests = 0u64;
            let runs: Vec<(String, Request, Option<u32>)> = RATES
                .iter()
                .map(|r| call(format!("rate_{r}"), Some(*r)))
                .chain([
                    call("throughput".to_string(), None),
                    ("list_throughput".to_string(), Request::List, None),
                ])
                .collect();
            for (key, request, rate) in runs {
                let serve_pid = t.serve_pid;
                let (e0, s0) = (group_cpu_secs(envoy_pgid), group_cpu_secs(serve_pid));
                let mut r = run_oha(bench, &oha, t, request, o.seconds, rate).await?;
                let (e1, s1) = (group_cpu_secs(envoy_pgid), group_cpu_secs(serve_pid));
                let n = r["requests"].as_u64().unwrap_or(0);
                requests += n;
                let per10k = |cpu: f64| cpu / (n.max(1) as f64) * 10_000.0;
                r["cpu_envoy_s_per_10k"] = json!(per10k(e1 - e0));
                r["cpu_serve_s_per_10k"] = json!(per10k(s1 - s0));
                entry[key] = r;
            }
            let redis1 = bench.redis_calls()?;
            let mut delta = BTreeMap::new();
            for (cmd, calls) in &redis1 {
                let d = calls - redis0.get(cmd).copied().unwrap_or(0);
                if d > 0 {
                    delta.insert(cmd.clone(), d);
                }
            }
            let count = |keep: &dyn Fn(&str) -> bool| -> u64 {
                delta
                    .iter()
                    .filter(|(c, _)| keep(c.as_str()))
                    .map(|(_, d)| d)
                    .sum()
            };
            let on_path = count(&|c| {
                !BACKGROUND_COMMANDS.contains(&c)
                    && !AUDIT_ROUND_TRIPS.contains(&c)
                    && !AUDIT_IN_SCRIPT.contains(&c)
            });
            let audit_trips = count(&|c| AUDIT_ROUND_TRIPS.contains(&c));
            let per_request = |n: u64| n as f64 / requests.max(1) as f64;
            entry["redis_commands"] = json!(delta);
            entry["redis_commands_per_request"] = json!(per_request(on_path));
            entry["audit_round_trips_per_request"] = json!(per_request(audit_trips));
            entry["requests"] = json!(requests);
            entry["envoy_rss_kib"] = json!(rss_kib(envoy_pgid));
            println!(
                "round {} {:>14}: {}",
                round + 1,
                t.setup.name,
                summary(&entry)
            );
            measured.insert(t.setup.name, entry);
        }
        rounds.push(measured);
    }
    let load_after = loadavg();

    let serve_rss_after_runs = rss_kib(serve_pid);
    let memory = memory_with_identities(bench).await?;
    let setups: Vec<Value> = SETUPS
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "about": s.about,
                "available": s.unavailable.is_none(),
                "unavailable": s.unavailable,
            })
        })
        .collect();
    let results = json!({
        "commit": commit(),
        "machine": machine(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "versions": versions(&oha),
        "upstream": "fast-mcp (tests/src/bin/fast-mcp.rs): a minimal stateless MCP server on axum/hyper, one application/json answer per request (initialize, tools/list of 20 fixed tools, tools/call echo); no SSE, no session",
        "request": format!("POST tools/call {TOOL} on MCP {PROTOCOL} (Mcp-Method/Mcp-Name mirrored), bearer token from oauth2-mock-server; body {TOOL_CALL}"),
        "list_request": format!("POST tools/list on MCP {PROTOCOL} (Mcp-Method mirrored), same token; body {TOOLS_LIST}; the upstream lists {TOOLS_UPSTREAM} tools, latchkey-lists trims them to {VISIBLE_WITH_POLICY}"),
        "envoy": "--concurrency 1 (one worker thread, so per-worker Wasm VMs and caches are not multiplied), one Envoy per configuration, same binary",
        "rounds": o.rounds,
        "seconds_per_run": o.seconds,
        "rates": RATES,
        "rate_connections": RATE_CONNECTIONS,
        "concurrency": CONCURRENCY,
        "setups": setups,
        "commands": commands,
        "medians": medians(&rounds, &bench.targets),
        "per_round": rounds,
        "serve_rss_after_runs_kib": serve_rss_after_runs,
        "serve_memory": memory,
    });
    std::fs::create_dir_all(&o.out)?;
    // Never overwrite a result: a second run the same day is `-run2`, etc.
    let date = date_today();
    let json_path = (1..)
        .map(|n| match n {
            1 => o.out.join(format!("load-{date}.json")),
            n => o.out.join(format!("load-{date}-run{n}.json")),
        })
        .find(|p| !p.exists())
        .context("no free result name")?;
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)?)?;
    println!("wrote {}", json_path.display());
    Ok(())
}

impl Bench {
    /// Calls per Redis command since Redis started (`INFO commandstats`).
    fn redis_calls(&self) -> Result<BTreeMap<String, u64>> {
        let info = self.redis.command(&["INFO", "commandstats"])?;
        Ok(info
            .lines()
            .filter_map(|l| l.strip_prefix("cmdstat_"))
            .filter_map(|l| l.split_once(":calls="))
            .filter_map(|(name, rest)| {
                Some((name.to_string(), rest.split(',').next()?.parse().ok()?))
            })
            .collect())
    }
}

fn summary(e: &Value) -> String {
    let f = |g: &str, k: &str| e[g][k].as_f64().unwrap_or(f64::NAN);
    format!(
        "500/s p50 {:.3} p99 {:.3} ms | 2000/s p50 {:.3} p99 {:.3} ms | {:.0} req/s @{CONCURRENCY} | tools/list {:.0} req/s | Redis/req {:.4} | audit trips/req {:.4}",
        f("rate_500", "p50_ms"),
        f("rate_500", "p99_ms"),
        f("rate_2000", "p50_ms"),
        f("rate_2000", "p99_ms"),
        f("throughput", "rps"),
        f("list_throughput", "rps"),
        e["redis_commands_per_request"].as_f64().unwrap_or(f64::NAN),
        e["audit_round_trips_per_request"]
            .as_f64()
            .unwrap_or(f64::NAN),
    )
}

/// The median of every number over the rounds, per configuration, keyed
/// `group.key` (e.g. `rate_500.p50_ms`) or `key` for top-level numbers.
fn medians(rounds: &[BTreeMap<&'static str, Value>], targets: &[Target]) -> Value {
    let mut out = json!({});
    for t in targets {
        let name = t.setup.name;
        let mut series: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for e in rounds.iter().filter_map(|r| r.get(name)) {
            let Some(obj) = e.as_object() else { continue };
            for (k, v) in obj {
                if let Some(x) = v.as_f64() {
                    series.entry(k.clone()).or_default().push(x);
                } else if let Some(inner) = v.as_object()
                    && k != "redis_commands"
                {
                    for (k2, v2) in inner {
                        if let Some(x) = v2.as_f64() {
                            series.entry(format!("{k}.{k2}")).or_default().push(x);
                        }
                    }
                }
            }
        }
        for (label, mut values) in series {
            values.sort_by(f64::total_cmp);
            out[name][label] = json!(values[values.len() / 2]);
        }
    }
    out
}

/// CPU seconds (user + system) of every process in process group `pgid`,
/// from `/proc/<pid>/stat`.
fn group_cpu_secs(pgid: u32) -> f64 {
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut total = 0u64;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    for e in entries.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command name.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // f[0] is field 3 (state): pgrp is field 5, utime 14, stime 15.
        if f.len() > 12 && f[2].parse::<u32>() == Ok(pgid) {
            total += f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
        }
    }
    total as f64 / ticks
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// RSS of latchkey serve with 10 000 and then 100 000 identities stored:
/// real sealed records, written through the same library (`Credentials::
/// put_identity`: AES-256-GCM with a fresh nonce, AAD bound to the record)
/// that `latchkey identity put-shared` uses, 200 at a time instead of one
/// process per identity. No request uses them: the numbers show what merely
/// storing them costs a replica (it loads only what requests touch).
async fn memory_with_identities(bench: &Bench) -> Result<Value> {
    use latchkey_core::config::Config;
    use latchkey_core::identity::{Availability, IdentitySecret};
    use latchkey_core::vault::{KeyRing, Secret};
    use latchkey_store::credentials::{Credentials, NewIdentity, TokenMeta};
    use latchkey_store::redis_backend::Topology;
    use latchkey_store::store::Store;

    let config = Config::load(&bench.dir.join("latchkey.toml"))?;
    let store = Store::connect(
        &Topology::from_config(&config.redis),
        &config.redis.key_prefix,
        Duration::from_secs(5),
        1000,
    )
    .await?;
    let credentials = std::sync::Arc::new(Credentials::new(
        store,
        KeyRing::from_config(&config.vault)?,
        Duration::from_secs(1),
    ));
    let pid = bench.serve.pid().context("serve pid")?;
    let mut out = json!({});
    let mut stored = 0usize;
    let started = std::time::Instant::now();
    for target in [10_000usize, 100_000] {
        while stored < target {
            let batch: Vec<_> = (stored..(stored + 200).min(target))
                .map(|i| {
                    let c = credentials.clone();
                    tokio::spawn(async move {
                        let secret = IdentitySecret::Static {
                            value: Secret::new(format!("bench-secret-{i}")),
                        };
                        c.put_identity(NewIdentity {
                            actor: "bench",
                            id: &format!("bench-{i}"),
                            server: "fast",
                            owner: &format!("user-{i}"),
                            availability: Availability::Private,
                            secret: &secret,
                            replace: true,
                            meta: TokenMeta::default(),
                        })
                        .await
                    })
                })
                .collect();
            for b in batch {
                b.await??;
            }
            stored = (stored + 200).min(target);
        }
        // Let the service settle (invalidation messages, allocator).
        tokio::time::sleep(Duration::from_secs(2)).await;
        // And show it still answers.
        if let Some(t) = bench.targets.iter().find(|t| t.setup.injects) {
            check_answers(t, &bench.host, &bench.token, 8).await?;
        }
        out[format!("stored_{target}_kib")] = json!(rss_kib(pid));
        out[format!("redis_used_memory_{target}")] = json!(redis_used_memory(&bench.redis)?);
    }
    out["store_seconds"] = json!(started.elapsed().as_secs_f64());
    Ok(out)
}

fn redis_used_memory(redis: &Redis) -> Result<u64> {
    let info = redis.command(&["INFO", "memory"])?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": model,
        "memory_gib": (mem_kib as f64 / 1048576.0 * 10.0).round() / 10.0,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

fn versions(oha: &Path) -> Value {
    let out = |cmd: &mut Command| {
        cmd.output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    json!({
        // Without the binary's path: results are committed, paths are this machine's.
        "envoy": paths::envoy()
            .map(|e| out(Command::new(e).arg("--version")))
            .unwrap_or_default()
            .split_once("version:")
            .map(|(_, v)| format!("envoy version:{v}"))
            .unwrap_or_default(),
        "oha": out(Command::new(oha).arg("--version")),
        "rustc": out(Command::new("rustc").arg("--version")),
        "redis": out(Command::new("redis-server").arg("--version")),
        "node": out(Command::new("node").arg("--version")),
    })
}

/// The commit the binaries were built from, `+changes` when the tree was dirty.
fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(paths::workspace_root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".into();
    };
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(s) if !s.is_empty() => format!("{head}+changes"),
        _ => head,
    }
}

fn date_today() -> String {
    let out = Command::new("date").args(["-u", "+%Y-%m-%d"]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "undated".into())
}
