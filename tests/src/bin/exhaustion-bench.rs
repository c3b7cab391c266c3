//! `exhaustion-bench`: what a flood of each request kind leaves behind, with
//! and without a token: Redis bytes per request and `latchkey serve`
//! resident memory growth. Not a timed test: the figures are bytes.
//!
//! Starts the e2e stack ([`Stack`]: Envoy with the Latchkey Wasm filter, or
//! Envoy's native ext_authz with `--native`, one `latchkey serve`, Redis,
//! the identity provider, the `whoami` upstream), then for every request
//! kind in [`KINDS`] × {no token, a valid token} sends `--requests N`
//! requests (16 at a time) and reads, before and after:
//! * Redis `used_memory` (`INFO memory`), its key count (`DBSIZE`, state
//!   that outlives the request) and the audit stream (`XLEN`, `MEMORY USAGE`);
//! * `latchkey serve`'s `VmRSS` (`/proc/<pid>/status`).
//!
//! The audit queue is drained before each reading (the stream stops
//! growing), so the bytes are what stays. Prints a Markdown table; with
//! `--out DIR` also writes it to `DIR/exhaustion-<date>.md`.
//!
//! Usage: `exhaustion-bench [--native] [--requests N] [--out DIR]`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use latchkey_e2e::client::{INITIALIZE, open, send, tools_call};
use latchkey_e2e::process::{stop_all_started, stop_requested};
use latchkey_e2e::stack::AuthzMode;
use latchkey_e2e::{Stack, StackOptions};
use serde_json::json;

/// One request kind of the flood.
struct Kind {
    name: &'static str,
    method: &'static str,
    /// The POST body; none for GET.
    body: fn(usize) -> String,
}

fn message(i: usize, method: &str, params: serde_json::Value) -> String {
    json!({"jsonrpc": "2.0", "id": i, "method": method, "params": params}).to_string()
}

const KINDS: &[Kind] = &[
    Kind {
        name: "initialize",
        method: "POST",
        body: |_| INITIALIZE.to_owned(),
    },
    Kind {
        name: "tools/call",
        method: "POST",
        body: |i| tools_call(json!(i), "whoami"),
    },
    Kind {
        name: "tools/list",
        method: "POST",
        body: |i| message(i, "tools/list", json!({})),
    },
    Kind {
        name: "resources/read",
        method: "POST",
        body: |i| {
            message(
                i,
                "resources/read",
                json!({"uri": format!("file:///doc/{i}")}),
            )
        },
    },
    Kind {
        name: "GET stream",
        method: "GET",
        body: |_| String::new(),
    },
    Kind {
        name: "garbage",
        method: "POST",
        body: |i| format!("{{\"jsonrpc\":\"2.0\",\"id\":{i},\"method\":"),
    },
    Kind {
        name: "oversize name (60 KB)",
        method: "POST",
        body: |i| tools_call(json!(i), &"x".repeat(60_000)),
    },
    Kind {
        name: "long allowed URI (4 KB)",
        method: "POST",
        body: |i| {
            message(
                i,
                "resources/read",
                json!({"uri": format!("file:///{i}/{}", "u".repeat(4000))}),
            )
        },
    },
];

struct Opts {
    native: bool,
    requests: usize,
    out: Option<PathBuf>,
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        native: false,
        requests: 2000,
        out: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--native" => o.native = true,
            "--requests" => o.requests = args.next().context("--requests N")?.parse()?,
            "--out" => o.out = Some(args.next().context("--out DIR")?.into()),
            other => bail!(
                "unknown argument {other}; usage: exhaustion-bench [--native] [--requests N] [--out DIR]"
            ),
        }
    }
    Ok(o)
}

/// What is measured between two floods.
#[derive(Clone, Copy)]
struct Reading {
    redis_used: i64,
    keys: i64,
    stream_entries: i64,
    stream_bytes: i64,
    rss: i64,
}

fn redis_field(info: &str, field: &str) -> Option<i64> {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
}

fn int_reply(reply: &str) -> i64 {
    reply
        .strip_prefix(':')
        .and_then(|r| r.trim_end().parse().ok())
        .unwrap_or(0)
}

fn rss_bytes(pid: u32) -> Result<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: i64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

/// A reading once the audit stream stopped growing (the writer's queue is
/// drained in batches a few milliseconds apart).
async fn settled(stack: &Stack, pid: u32) -> Result<Reading> {
    let redis = &stack.redis;
    let mut last = -1;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entries = int_reply(&redis.command(&["XLEN", "latchkey:audit"])?);
        if entries == last || Instant::now() > deadline {
            break;
        }
        last = entries;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let info = redis.command(&["INFO", "memory"])?;
    Ok(Reading {
        redis_used: redis_field(&info, "used_memory").context("used_memory")?,
        keys: int_reply(&redis.command(&["DBSIZE"])?),
        stream_entries: int_reply(&redis.command(&["XLEN", "latchkey:audit"])?),
        stream_bytes: int_reply(&redis.command(&[
            "MEMORY",
            "USAGE",
            "latchkey:audit",
            "SAMPLES",
            "0",
        ])?),
        rss: rss_bytes(pid)?,
    })
}

async fn flood(url: &str, kind: &Kind, token: Option<&str>, n: usize) -> Vec<u16> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    futures_util::stream::iter(0..n)
        .map(|i| {
            let bearer = bearer.clone();
            async move {
                let mut headers = vec![("accept", "application/json, text/event-stream")];
                if let Some(b) = &bearer {
                    headers.push(("authorization", b.as_str()));
                }
                if kind.method == "GET" {
                    // Headers only: the stream may stay open.
                    return open("GET", url, &headers).await.map_or(0, |(s, _)| s);
                }
                headers.push(("content-type", "application/json"));
                send("POST", url, &headers, (kind.body)(i).into_bytes())
                    .await
                    .map_or(0, |r| r.status)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    tokio::spawn(async {
        stop_requested().await;
        eprintln!("exhaustion-bench: interrupted; stopping everything it started");
        stop_all_started();
        std::process::exit(130);
    });
    let o = opts()?;
    let mode = if o.native {
        AuthzMode::Native
    } else {
        AuthzMode::Wasm
    };
    let stack = Stack::start(
        if o.native {
            "exhaustion_native"
        } else {
            "exhaustion_wasm"
        },
        StackOptions {
            mode,
            max_body_bytes: 256 * 1024,
            ..Default::default()
        },
    )
    .await?;
    let pid = stack
        .latchkey()
        .and_then(|p| p.pid())
        .context("latchkey serve has no pid")?;
    let token = stack.token("alice").await?;
    let url = stack.url("whoami");
    let n = o.requests;

    // Warm up (connections, caches, the stream's first node) so the first
    // row does not pay for everyone.
    for kind in KINDS {
        flood(&url, kind, Some(&token), 50).await;
    }

    let mut table = format!(
        "Flood of {n} requests per row, 16 at a time, {} mode. Redis B/req is the growth of Redis `used_memory` per request after the audit queue drained; keys is new Redis keys (state outliving the requests); stream B/req the audit stream's own growth (`MEMORY USAGE`); RSS the growth of `latchkey serve`'s resident memory over the row.\n\n| request | token | statuses | Redis B/req | new keys | stream events/req | stream B/req | latchkey RSS Δ (KiB) |\n|---|---|---|---:|---:|---:|---:|---:|\n",
        if o.native {
            "native ext_authz"
        } else {
            "Wasm filter"
        }
    );
    let start_rss = rss_bytes(pid)?;
    for kind in KINDS {
        for (who, t) in [("none", None), ("valid", Some(token.as_str()))] {
            let before = settled(&stack, pid).await?;
            let statuses = flood(&url, kind, t, n).await;
            let after = settled(&stack, pid).await?;
            let mut counts = std::collections::BTreeMap::new();
            for s in statuses {
                *counts.entry(s).or_insert(0usize) += 1;
            }
            let shown: Vec<String> = counts.iter().map(|(s, c)| format!("{s}×{c}")).collect();
            let per = |d: i64| d as f64 / n as f64;
            let row = format!(
                "| {} | {who} | {} | {:.0} | {} | {:.2} | {:.0} | {} |\n",
                kind.name,
                shown.join(" "),
                per(after.redis_used - before.redis_used),
                after.keys - before.keys,
                per(after.stream_entries - before.stream_entries),
                per(after.stream_bytes - before.stream_bytes),
                (after.rss - before.rss) / 1024,
            );
            print!("{row}");
            table.push_str(&row);
        }
    }
    let end_rss = rss_bytes(pid)?;
    let total = KINDS.len() * 2 * n;
    let summary = format!(
        "\nlatchkey serve RSS over all {total} requests: {} KiB → {} KiB ({:+} KiB).\n",
        start_rss / 1024,
        end_rss / 1024,
        (end_rss - start_rss) / 1024
    );
    print!("{summary}");
    table.push_str(&summary);
    println!("\n{table}");
    if let Some(dir) = o.out {
        std::fs::create_dir_all(&dir)?;
        let date = std::process::Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let mode = if o.native { "native" } else { "wasm" };
        let path = dir.join(format!("exhaustion-{mode}-{date}.md"));
        std::fs::write(&path, &table)?;
        println!("written to {}", path.display());
    }
    drop(stack);
    Ok(())
}
