#![no_main]
// Body and invariants: `latchkey_authz_fuzz::config` (src/lib.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| latchkey_authz_fuzz::config(data));
