//! Replaying a fuzz crate's committed corpus on stable, for `cargo test`
//! (included by `filter/tests/fuzz_corpus.rs` and
//! `authz-service/check/tests/fuzz_corpus.rs`; libFuzzer needs nightly, the
//! replay does not).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

/// A target: its name and its body.
pub type Target<'a> = (&'a str, fn(&[u8]));

/// Runs every file of `<crate_dir>/fuzz/corpus/<target>/` through its
/// target. Fails when a file panics (an invariant broke), when a target has
/// no seeds, and when `fuzz_targets/` and `targets` disagree.
pub fn replay(crate_dir: &str, targets: &[Target<'_>]) {
    let fuzz = Path::new(crate_dir).join("fuzz");
    let mut declared: Vec<String> = std::fs::read_dir(fuzz.join("fuzz_targets"))
        .expect("fuzz/fuzz_targets/ is readable")
        .map(|e| e.expect("a directory entry").path())
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .collect();
    declared.sort();
    let mut bodies: Vec<String> = targets.iter().map(|(n, _)| (*n).to_owned()).collect();
    bodies.sort();
    assert_eq!(declared, bodies, "fuzz_targets/*.rs and TARGETS disagree");

    let mut failures = Vec::new();
    for (name, body) in targets {
        let dir = fuzz.join("corpus").join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("the corpus of {name} ({}) is missing: {e}", dir.display()))
            .map(|e| e.expect("a directory entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(
            !files.is_empty(),
            "the corpus of {name} ({}) has no seeds",
            dir.display()
        );
        for file in files {
            let data = std::fs::read(&file).expect("a seed is readable");
            if catch_unwind(AssertUnwindSafe(|| body(&data))).is_err() {
                failures.push(format!("{name}: {}", file.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "fuzz seeds that break their target (the panic message of each is above):\n{}",
        failures.join("\n")
    );
}
