//! The check that no secret used in a run appears in any log it produced.
//!
//! Not only whole secrets: a log line that shows part of one (a truncated
//! header value, a token split across fields, a JWT's signature without
//! its header) leaks it too. So every secret is searched for as each of its
//! [`WINDOW`]-character windows, and a JWT as the windows of its signature
//! (its header and claims are not secret, and a log may name claims).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// How long a piece of a secret may show before it counts as leaked.
pub const WINDOW: usize = 16;

/// Fails, naming file and line (never the secret itself), when any of
/// `secrets` — or any [`WINDOW`]-character piece of one (of a JWT: of its
/// signature) — occurs in a log file (`*.log`: process output and CLI
/// output) under `dir`, searched recursively. Returns how many log files it
/// read.
pub fn secrets_scan(dir: &Path, secrets: &[&str]) -> Result<usize> {
    let mut files = Vec::new();
    collect_logs(dir, &mut files)?;
    files.sort();
    let pieces = Pieces::of(secrets);
    let mut hits = Vec::new();
    for path in &files {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
            if let Some(i) = pieces.find_in(line) {
                hits.push(format!(
                    "{}:{}: contains (part of) secret #{i} ({} chars)",
                    path.display(),
                    n + 1,
                    secrets[i].len()
                ));
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

/// What a leak looks like: every window of every secret (with the index of
/// the secret it came from), and whole secrets too short for a window.
struct Pieces<'a> {
    windows: HashMap<&'a [u8], usize>,
    short: Vec<(usize, &'a [u8])>,
}

impl<'a> Pieces<'a> {
    fn of(secrets: &[&'a str]) -> Pieces<'a> {
        let mut windows = HashMap::new();
        let mut short = Vec::new();
        for (i, &secret) in secrets.iter().enumerate() {
            let secret = jwt_signature(secret).unwrap_or(secret).as_bytes();
            if secret.is_empty() {
                continue;
            }
            if secret.len() < WINDOW {
                short.push((i, secret));
                continue;
            }
            for w in secret.windows(WINDOW) {
                windows.entry(w).or_insert(i);
            }
        }
        Pieces { windows, short }
    }

    /// The index of a secret `line` shows (part of), if any.
    fn find_in(&self, line: &[u8]) -> Option<usize> {
        if line.len() >= WINDOW
            && let Some(i) = line.windows(WINDOW).find_map(|w| self.windows.get(w))
        {
            return Some(*i);
        }
        self.short
            .iter()
            .find(|(_, s)| line.windows(s.len()).any(|w| w == *s))
            .map(|(i, _)| *i)
    }
}

/// The signature of a compact JWS (`header.claims.signature`, each part
/// base64url), `None` for anything else.
fn jwt_signature(secret: &str) -> Option<&str> {
    let mut parts = secret.split('.');
    let (Some(header), Some(_claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let base64url = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (header.starts_with("eyJ") && base64url(header) && base64url(signature)).then_some(signature)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(log: &str, secrets: &[&str]) -> Result<usize> {
        let dir = std::env::temp_dir().join(format!(
            "latchkey-secrets-scan-{}-{}",
            std::process::id(),
            crate::stack::random_hex()
        ));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("x.log"), log)?;
        let result = secrets_scan(&dir, secrets);
        std::fs::remove_dir_all(&dir)?;
        result
    }

    const SECRET: &str = "sa-whoami-0123456789abcdef0123456789abcdef";
    const JWT: &str =
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLW9mLWFsaWNlcy10b2tlbi1vbmx5";

    #[test]
    fn a_whole_secret_a_piece_of_one_and_a_jwt_signature_are_found() {
        assert!(scan(&format!("x {SECRET} y"), &[SECRET]).is_err());
        // Sixteen characters of it, cut anywhere.
        assert!(scan("header: 456789abcdef0123…", &[SECRET]).is_err());
        // A JWT's signature on its own.
        let signature = JWT.rsplit('.').next().unwrap();
        let err = scan(&format!("sig={signature}"), &[JWT]).unwrap_err();
        assert!(!format!("{err:#}").contains(signature), "{err:#}");
        // Short secrets are searched for whole.
        assert!(scan("pin=1234", &["1234"]).is_err());
    }

    #[test]
    fn fifteen_characters_and_a_jwts_public_parts_are_not_a_leak() {
        assert_eq!(scan("456789abcdef012 and more", &[SECRET]).unwrap(), 1);
        // A JWT's header and claims name no secret.
        let public = JWT.rsplit_once('.').unwrap().0;
        assert_eq!(scan(public, &[JWT]).unwrap(), 1);
        assert_eq!(scan("nothing here", &[SECRET, JWT, ""]).unwrap(), 1);
    }
}
