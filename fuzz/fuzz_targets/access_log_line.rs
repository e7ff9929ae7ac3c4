//! cargo-fuzz target: `tollgate::fuzz::access_log_line` (see src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate::fuzz::access_log_line(data);
});
