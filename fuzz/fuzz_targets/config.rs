//! cargo-fuzz target: `tollgate::fuzz::config` (see src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate::fuzz::config(data);
});
