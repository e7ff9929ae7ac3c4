//! cargo-fuzz target: `tollgate::fuzz::upstream_response` (see src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate::fuzz::upstream_response(data);
});
