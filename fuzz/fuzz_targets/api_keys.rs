//! cargo-fuzz target: `tollgate::fuzz::api_keys` (see src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate::fuzz::api_keys(data);
});
