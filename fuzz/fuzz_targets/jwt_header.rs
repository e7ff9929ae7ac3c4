//! cargo-fuzz target: `tollgate::fuzz::jwt_header` (see src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate::fuzz::jwt_header(data);
});
