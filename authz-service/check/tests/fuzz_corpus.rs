//! Replays every committed fuzz seed (`authz-service/fuzz/corpus/<target>/`) through the
//! same target bodies libFuzzer runs (`authz-service/fuzz/src/lib.rs`), on stable, in
//! `cargo test`: a seed that panics or breaks an invariant fails the suite,
//! and so does a target without seeds or without a body.

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod bodies;

#[path = "../../../filter/fuzz/replay.rs"]
mod replay;

#[test]
fn every_committed_fuzz_seed_of_the_service_passes_its_targets_invariants() {
    replay::replay(concat!(env!("CARGO_MANIFEST_DIR"), "/.."), bodies::TARGETS);
}
