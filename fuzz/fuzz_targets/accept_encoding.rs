//! cargo-fuzz target: `tollgate::fuzz::accept_encoding` (see src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tollgate::fuzz::accept_encoding(data);
});
