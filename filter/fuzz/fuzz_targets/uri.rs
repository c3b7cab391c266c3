#![no_main]
// Body and invariants: `latchkey_filter_fuzz::uri` (src/lib.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| latchkey_filter_fuzz::uri(data));
