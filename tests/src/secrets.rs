//! The check that no secret used in a run appears in any log it produced.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Fails, naming file and line (never the secret itself), when any of
/// `secrets` occurs in a log file (`*.log`: process output and CLI output)
/// under `dir`, searched recursively. Returns how many log files it read.
pub fn secrets_scan(dir: &Path, secrets: &[&str]) -> Result<usize> {
    let mut files = Vec::new();
    collect_logs(dir, &mut files)?;
    files.sort();
    let mut hits = Vec::new();
    for path in &files {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let text = String::from_utf8_lossy(&bytes);
        for (n, line) in text.lines().enumerate() {
            for (i, secret) in secrets.iter().enumerate().filter(|(_, s)| !s.is_empty()) {
                if line.contains(secret) {
                    hits.push(format!(
                        "{}:{}: contains secret #{i} ({} chars)",
                        path.display(),
                        n + 1,
                        secret.len()
                    ));
                }
            }
        }
    }
    if !hits.is_empty() {
        bail!("secrets leaked into logs:\n{}", hits.join("\n"));
    }
    Ok(files.len())
}

/// [`secrets_scan`] for owned strings.
pub fn scan_logs(dir: &Path, secrets: &[String]) -> Result<usize> {
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    secrets_scan(dir, &secrets)
}

fn collect_logs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            collect_logs(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "log") {
            out.push(path);
        }
    }
    Ok(())
}
