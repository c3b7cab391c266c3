//! `load-bench`: what Latchkey adds to every tool call, measured side by side.
//!
//! Starts, on loopback, one Redis, the identity provider, the `fast-mcp`
//! upstream and one `latchkey serve`, then three Envoys (same binary, same
//! upstream, `--concurrency 1`), one per configuration:
//! * `floor`    — Envoy straight to the upstream, no filter;
//! * `native`   — Envoy's `envoy.filters.http.mcp` + native `ext_authz` → latchkey serve;
//! * `latchkey` — the Latchkey Wasm filter → latchkey serve, credential injected.
//!
//! `--smoke` sends a few hundred `tools/call` requests through each and
//! checks every answer (no timing). Without it, `oha` drives the same
//! request through each configuration in interleaved rounds: fixed rates
//! (latency percentiles, added latency over floor) and fixed concurrency
//! (throughput), with CPU seconds per 10 000 requests for Envoy and for
//! latchkey serve, Redis commands per request, and latchkey serve's memory
//! with 10 000 and 100 000 stored identities. Results go to
//! `<out>/load-<date>.json` and `.md`.
//!
//! Usage: `load-bench [--smoke] [--out DIR] [--rounds N] [--seconds S] [--oha PATH]`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use latchkey_e2e::process::{Process, free_port};
use latchkey_e2e::stack::run;
use latchkey_e2e::{Envoy, Idp, Redis, TokenRequest, paths, scenario_dir};
use serde_json::{Value, json};

const CONFIGS: [(&str, &str); 3] = [
    ("floor", "none"),
    ("native", "native"),
    ("latchkey", "wasm"),
];
const RATES: [u32; 2] = [500, 2000];
const CONCURRENCY: u32 = 32;
const TOOL_CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"tool_01","arguments":{"text":"hello"}}}"#;

struct Opts {
    smoke: bool,
    out: PathBuf,
    rounds: usize,
    seconds: u64,
    oha: Option<PathBuf>,
}

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
            "--rounds" => o.rounds = value()?.parse()?,
            "--seconds" => o.seconds = value()?.parse()?,
            "--oha" => o.oha = Some(PathBuf::from(value()?)),
            other => bail!(
                "unknown flag {other}; usage: load-bench [--smoke] [--out DIR] [--rounds N] [--seconds S] [--oha PATH]"
            ),
        }
    }
    Ok(o)
}

/// One running configuration.
struct Target {
    name: &'static str,
    envoy: Envoy,
    url: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let o = opts()?;
    let dir = scenario_dir(if o.smoke {
        "load-bench-smoke"
    } else {
        "load-bench"
    })?;
    let redis = Redis::start(&dir)?;
    let idp = Idp::start(&dir)?;
    let fast_port = free_port();
    let mut fast_cmd = Command::new(paths::workspace_bin("fast-mcp")?);
    fast_cmd.args(["--port", &fast_port.to_string()]);
    let mut fast = Process::spawn("fast-mcp", fast_cmd, &dir)?;
    fast.wait_for_port(fast_port, Duration::from_secs(10))?;

    // One gateway public URL for all three Envoys: requests carry its Host.
    let public_port = free_port();
    let public = format!("http://127.0.0.1:{public_port}/mcp");
    let (grpc, http, admin) = (free_port(), free_port(), free_port());
    let key_line = run(
        Command::new(paths::latchkey_bin()?).args(["keys", "generate", "--id", "bench1"]),
        None,
    )?;
    let key_file = dir.join("master.keys");
    std::fs::write(&key_file, key_line)?;
    let config = format!(
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
    );
    let config_path = dir.join("latchkey.toml");
    std::fs::write(&config_path, &config)?;
    run(
        Command::new(paths::latchkey_bin()?)
            .args(["identity", "put-shared", "--config"])
            .arg(&config_path)
            .args(["--id", "fast-sa", "--server", "fast"]),
        Some("bench-service-account-secret"),
    )?;
    let mut serve_cmd = Command::new(paths::latchkey_bin()?);
    serve_cmd
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("LATCHKEY_LOG", "warn");
    let mut serve = Process::spawn("latchkey", serve_cmd, &dir)?;
    serve.wait_for_http(
        &format!("http://127.0.0.1:{http}/readyz"),
        200,
        Duration::from_secs(20),
    )?;

    let mut targets = Vec::new();
    for (name, mode) in CONFIGS {
        let listen = free_port();
        let yaml = run(
            Command::new(paths::latchkey_bin()?)
                .args(["envoy", "render", "--config"])
                .arg(&config_path)
                .args(["--listen", &format!("127.0.0.1:{listen}")])
                .args(["--mode", mode, "--wasm"])
                .arg(paths::filter_wasm()?),
            None,
        )?;
        let envoy = Envoy::start_named(&dir, &format!("envoy-{name}"), &yaml)?;
        targets.push(Target {
            name,
            envoy,
            url: format!("http://127.0.0.1:{listen}/mcp/fast"),
        });
    }
    let token = idp
        .token(&TokenRequest::new("bench-user", &public).client("bench-agent"))
        .await?;
    let host = format!("127.0.0.1:{public_port}");

    // Every configuration answers correctly before anything is measured.
    let checks = if o.smoke { 300 } else { 50 };
    for t in &targets {
        let ok = check_answers(&t.url, &host, &token, checks).await?;
        println!("{:>9}: {ok}/{checks} tools/call answered correctly", t.name);
    }
    if o.smoke {
        println!("smoke: every configuration answered correctly");
        return Ok(());
    }

    let oha = o
        .oha
        .clone()
        .or_else(|| {
            let local = paths::workspace_root().join(".local/tools/bin/oha");
            local.exists().then_some(local)
        })
        .context("oha not found: scripts/bench installs it into .local/tools")?;
    let headers = [
        format!("authorization: Bearer {token}"),
        "content-type: application/json".to_string(),
        "accept: application/json, text/event-stream".to_string(),
        "mcp-protocol-version: 2025-11-25".to_string(),
        format!("host: {host}"),
    ];
    let mut rounds: Vec<BTreeMap<&'static str, Value>> = Vec::new();
    for round in 0..o.rounds {
        let mut measured = BTreeMap::new();
        // Rotate the order so drift hits every configuration alike.
        let order: Vec<&Target> = (0..targets.len())
            .map(|i| &targets[(i + round) % targets.len()])
            .collect();
        for t in order {
            let mut entry = json!({});
            for rate in RATES {
                let r = run_oha(&oha, &t.url, &headers, o.seconds, Some(rate), 64)?;
                entry[format!("rate_{rate}")] = r;
            }
            let envoy_pgid = t.envoy.process.pid().context("envoy pid")?;
            let serve_pid = serve.pid().context("serve pid")?;
            let (cpu_envoy0, cpu_serve0) = (group_cpu_secs(envoy_pgid), group_cpu_secs(serve_pid));
            let calls0 = redis.calls_except(&["info", "hset", "hgetall", "hdel", "ping"])?;
            let r = run_oha(&oha, &t.url, &headers, o.seconds, None, CONCURRENCY)?;
            let calls1 = redis.calls_except(&["info", "hset", "hgetall", "hdel", "ping"])?;
            let (cpu_envoy1, cpu_serve1) = (group_cpu_secs(envoy_pgid), group_cpu_secs(serve_pid));
            let n = r["requests"].as_f64().unwrap_or(0.0).max(1.0);
            entry["throughput"] = r;
            entry["cpu_envoy_s_per_10k"] = json!((cpu_envoy1 - cpu_envoy0) / n * 10_000.0);
            entry["cpu_serve_s_per_10k"] = json!(if t.name == "floor" {
                0.0
            } else {
                (cpu_serve1 - cpu_serve0) / n * 10_000.0
            });
            entry["redis_commands_per_request"] = json!((calls1 - calls0) as f64 / n);
            println!("round {} {:>9}: {}", round + 1, t.name, summary(&entry));
            measured.insert(t.name, entry);
        }
        rounds.push(measured);
    }

    let memory = memory_with_identities(&config_path, &serve, &redis).await?;
    let results = json!({
        "machine": machine(),
        "versions": versions(&oha),
        "upstream": "fast-mcp (tests/src/bin/fast-mcp.rs): stateless axum server, one application/json answer per request",
        "request": "POST tools/call tool_01 (2025-11-25), bearer token from oauth2-mock-server, shared service-account credential injected",
        "envoy": "--concurrency 1, one Envoy per configuration, same binary",
        "rounds": o.rounds,
        "seconds_per_run": o.seconds,
        "concurrency": CONCURRENCY,
        "medians": medians(&rounds),
        "per_round": rounds,
        "serve_memory": memory,
    });
    std::fs::create_dir_all(&o.out)?;
    let date = date_today();
    let json_path = o.out.join(format!("load-{date}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)?)?;
    println!("wrote {}", json_path.display());
    Ok(())
}

/// Sends `n` tools/call requests (8 at a time) and checks each answer is
/// the upstream's result for that call.
async fn check_answers(url: &str, host: &str, token: &str, n: usize) -> Result<usize> {
    let client = reqwest::Client::new();
    let mut ok = 0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(8) {
        let calls = chunk.iter().map(|_| {
            client
                .post(url)
                .header("host", host)
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2025-11-25")
                .body(TOOL_CALL)
                .timeout(Duration::from_secs(10))
                .send()
        });
        for resp in futures_util::future::join_all(calls).await {
            let resp = resp.with_context(|| format!("POST {url}"))?;
            let status = resp.status().as_u16();
            let body = resp.text().await?;
            ensure!(status == 200, "{url} answered {status}: {body}");
            let v: Value = serde_json::from_str(&body).with_context(|| format!("{url}: {body}"))?;
            ensure!(
                v["result"]["content"][0]["text"] == "ok tool_01",
                "{url} answered something else: {body}"
            );
            ok += 1;
        }
    }
    Ok(ok)
}

/// One oha run; fails unless every response was 200.
fn run_oha(
    oha: &Path,
    url: &str,
    headers: &[String],
    seconds: u64,
    rate: Option<u32>,
    concurrency: u32,
) -> Result<Value> {
    let mut cmd = Command::new(oha);
    cmd.args([
        "--no-tui",
        "--output-format",
        "json",
        "-m",
        "POST",
        "-d",
        TOOL_CALL,
    ])
    .args(["-z", &format!("{seconds}s")])
    .args(["-c", &concurrency.to_string()]);
    if let Some(q) = rate {
        cmd.args(["-q", &q.to_string(), "--latency-correction"]);
    }
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(url);
    let out = cmd.output().context("running oha")?;
    ensure!(
        out.status.success(),
        "oha failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).context("oha JSON")?;
    let codes = &v["statusCodeDistribution"];
    let total: u64 = codes
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    let ok = codes["200"].as_u64().unwrap_or(0);
    ensure!(
        total > 0 && ok == total,
        "{url}: not every response was 200: {codes} errors: {}",
        v["errorDistribution"]
    );
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

fn summary(e: &Value) -> String {
    format!(
        "500/s p50 {:.3} ms p99 {:.3} ms | 2000/s p50 {:.3} ms p99 {:.3} ms | {:.0} req/s @{CONCURRENCY}",
        e["rate_500"]["p50_ms"].as_f64().unwrap_or(f64::NAN),
        e["rate_500"]["p99_ms"].as_f64().unwrap_or(f64::NAN),
        e["rate_2000"]["p50_ms"].as_f64().unwrap_or(f64::NAN),
        e["rate_2000"]["p99_ms"].as_f64().unwrap_or(f64::NAN),
        e["throughput"]["rps"].as_f64().unwrap_or(f64::NAN),
    )
}

/// The median of each number over the rounds, per configuration.
fn medians(rounds: &[BTreeMap<&'static str, Value>]) -> Value {
    let mut out = json!({});
    for (name, _) in CONFIGS {
        let paths: [(&str, &str); 14] = [
            ("rate_500", "p50_ms"),
            ("rate_500", "p90_ms"),
            ("rate_500", "p99_ms"),
            ("rate_500", "p99_9_ms"),
            ("rate_2000", "p50_ms"),
            ("rate_2000", "p90_ms"),
            ("rate_2000", "p99_ms"),
            ("rate_2000", "p99_9_ms"),
            ("throughput", "rps"),
            ("throughput", "p50_ms"),
            ("", "cpu_envoy_s_per_10k"),
            ("", "cpu_serve_s_per_10k"),
            ("", "redis_commands_per_request"),
            ("throughput", "p99_ms"),
        ];
        for (group, key) in paths {
            let mut values: Vec<f64> = rounds
                .iter()
                .filter_map(|r| r.get(name))
                .filter_map(|e| {
                    if group.is_empty() {
                        e[key].as_f64()
                    } else {
                        e[group][key].as_f64()
                    }
                })
                .collect();
            values.sort_by(|a, b| a.total_cmp(b));
            let median = values.get(values.len() / 2).copied();
            let label = if group.is_empty() {
                key.to_string()
            } else {
                format!("{group}.{key}")
            };
            out[name][label] = json!(median);
        }
    }
    out
}

/// CPU seconds (user + system) of every process in process group `pgid`.
fn group_cpu_secs(pgid: u32) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
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
        // rest[0] is field 3 (state): pgrp is field 5, utime 14, stime 15.
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

/// RSS of latchkey serve with 10 000 and then 100 000 identities stored
/// (real sealed records, written through the same library the service uses).
async fn memory_with_identities(
    config_path: &Path,
    serve: &Process,
    redis: &Redis,
) -> Result<Value> {
    use latchkey_authz::config::Config;
    use latchkey_authz::credentials::Credentials;
    use latchkey_authz::identity::{Availability, IdentitySecret};
    use latchkey_authz::redis_backend::Topology;
    use latchkey_authz::store::Store;
    use latchkey_authz::vault::{KeyRing, Secret};

    let config = Config::load(config_path)?;
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
    let pid = serve.pid().context("serve pid")?;
    let mut out = json!({ "idle_kib": rss_kib(pid) });
    let mut stored = 0usize;
    for target in [10_000usize, 100_000] {
        while stored < target {
            let batch: Vec<_> = (stored..(stored + 200).min(target))
                .map(|i| {
                    let c = credentials.clone();
                    tokio::spawn(async move {
                        let secret = IdentitySecret::Static {
                            value: Secret::new(format!("bench-secret-{i}")),
                        };
                        c.put_identity(
                            "bench",
                            &format!("bench-{i}"),
                            "fast",
                            &format!("user-{i}"),
                            Availability::Private,
                            &secret,
                            true,
                        )
                        .await
                    })
                })
                .collect();
            for b in batch {
                b.await??;
            }
            stored = (stored + 200).min(target);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        out[format!("stored_{target}_kib")] = json!(rss_kib(pid));
        out[format!("redis_used_memory_{target}")] = json!(redis_used_memory(redis)?);
    }
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
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": model,
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
    })
}

fn date_today() -> String {
    let out = Command::new("date").arg("+%Y-%m-%d").output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "undated".into())
}
