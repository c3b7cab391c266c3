//! `GET /metrics` on a replica's HTTP side, read as a test reads it: each
//! sample line by its exact series, a missing series an error to the
//! caller rather than a zero.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::client::send;
use crate::stack::Stack;

/// One scrape: each sample line as `name{labels}` → value, and the text.
pub struct Scrape {
    samples: BTreeMap<String, f64>,
    pub text: String,
}

impl Scrape {
    /// The value of one series, written exactly as the text has it.
    pub fn value(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }

    /// The sum over every series of `name` that carries all of `labels`
    /// (`key="value"` each).
    pub fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.samples
            .iter()
            .filter(|(series, _)| {
                series
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
                    && labels.iter().all(|l| series.contains(l))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

pub async fn scrape(stack: &Stack) -> Result<Scrape> {
    scrape_replica(stack, 0).await
}

/// One scrape of replica `n` (each counts what it decided itself).
pub async fn scrape_replica(stack: &Stack, n: usize) -> Result<Scrape> {
    let replica = stack.replicas.get(n).context("no such replica")?;
    let url = format!("http://127.0.0.1:{}/metrics", replica.http_port);
    let reply = send("GET", &url, &[], Vec::new()).await?;
    ensure!(reply.status == 200, "GET {url}: {}", reply.status);
    let kind = reply.header("content-type").unwrap_or_default();
    ensure!(
        kind.starts_with("text/plain; version=0.0.4"),
        "content-type {kind}"
    );
    let mut samples = BTreeMap::new();
    for line in reply.body.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line
            .rsplit_once(' ')
            .with_context(|| format!("not a sample line: {line}"))?;
        let value: f64 = value
            .parse()
            .with_context(|| format!("not a number: {line}"))?;
        ensure!(
            samples.insert(series.to_string(), value).is_none(),
            "series twice: {series}"
        );
    }
    Ok(Scrape {
        samples,
        text: reply.body,
    })
}

/// Scrapes until `done` holds, for at most 20 s; the last scrape either way.
pub async fn scrape_until(stack: &Stack, done: impl Fn(&Scrape) -> bool) -> Result<Scrape> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = scrape(stack).await?;
        if done(&s) || Instant::now() > deadline {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
