#![no_main]
// Body and invariants: `latchkey_filter_fuzz::round_trip` (src/lib.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| latchkey_filter_fuzz::round_trip(data));
