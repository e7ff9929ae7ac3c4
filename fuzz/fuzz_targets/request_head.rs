//! cargo-fuzz target: `tollgate::fuzz::request_head` (see src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate::fuzz::request_head(data);
});
