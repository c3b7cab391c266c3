//! Waiting for something asynchronous (a reloaded policy, an audit event, a
//! log line) without fixed sleeps: poll until it shows or a deadline passes.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Polls `probe` every 100 ms until it gives a value, for at most 15 s;
/// the error names `what` and the last thing seen.
pub async fn eventually<T>(
    what: &str,
    mut probe: impl AsyncFnMut() -> Result<Result<T, String>>,
) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match probe().await? {
            Ok(v) => return Ok(v),
            Err(seen) if Instant::now() > deadline => bail!("{what}: still {seen}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
