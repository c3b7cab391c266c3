//! The load benchmark's smoke mode, as part of the suite: every
//! configuration it measures (Envoy alone, Envoy's MCP + native ext_authz,
//! the Latchkey Wasm filter) starts and answers a few hundred `tools/call`
//! requests correctly, with the service-account credential reaching the
//! upstream where Latchkey injects it. No timing is asserted; figures come
//! from `scripts/bench`, never from a test. It runs the debug build of
//! `load-bench` the suite already has (no second, release build).

use std::process::Command;

#[test]
fn every_benchmark_configuration_answers_correctly() {
    let out = Command::new(env!("CARGO_BIN_EXE_load-bench"))
        .arg("--smoke")
        .output()
        .expect("running load-bench --smoke");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "load-bench --smoke failed:\n{stdout}\n{stderr}"
    );
    for (config, credential, tools) in [
        ("floor", "other", 20),
        ("native", "expected", 20),
        ("latchkey", "expected", 20),
        // A policy in force: the list is trimmed for the caller.
        ("latchkey-lists", "expected", 10),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{config}:")))
            .unwrap_or_else(|| panic!("no smoke line for {config}:\n{stdout}"));
        assert!(line.contains("300/300"), "{line}");
        assert!(
            line.contains(&format!("credential: {credential}")),
            "{line}"
        );
        assert!(
            line.contains(&format!("tools/list ({tools} tools)")),
            "{line}"
        );
    }
    assert!(stdout.contains("smoke: every available configuration answered correctly"));
}
