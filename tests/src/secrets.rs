//! The check that no secret used in a run appears in any log it produced.

use std::path::Path;

use anyhow::{Result, bail};

/// Fails naming file and line when any of `secrets` occurs in a log file
/// (`*.log`: process output and CLI output) under `dir`.
pub fn scan_logs(dir: &Path, secrets: &[String]) -> Result<usize> {
    let mut hits = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path.is_file() || path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        files += 1;
        let text = String::from_utf8_lossy(&std::fs::read(&path)?).into_owned();
        for (n, line) in text.lines().enumerate() {
            for s in secrets.iter().filter(|s| !s.is_empty()) {
                if line.contains(s.as_str()) {
                    hits.push(format!(
                        "{}:{}: contains a secret ({} chars)",
                        path.display(),
                        n + 1,
                        s.len()
                    ));
                }
            }
        }
    }
    if !hits.is_empty() {
        bail!("secrets leaked into logs:\n{}", hits.join("\n"));
    }
    Ok(files)
}
