//! cargo-fuzz target: `tollgate::fuzz::cache_control` (see src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate::fuzz::cache_control(data);
});
