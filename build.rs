//! Build script: tells the tests whether they can start a real
//! `redis-server` (cfg `tollgate_redis`).
//!
//! Tests that need one are marked `ignore` with the reason when it is not
//! installed, so `cargo test` says so in its summary instead of passing
//! them silently. With `TOLLGATE_REQUIRE_REDIS` set (as `.ci/run` does) they
//! always run, and fail when the server is missing.

use std::path::Path;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(tollgate_redis)");
    println!("cargo::rerun-if-env-changed=TOLLGATE_REQUIRE_REDIS");
    println!("cargo::rerun-if-env-changed=PATH");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut found = false;
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("redis-server");
        // Watched whether or not it exists: installing it later reruns this.
        println!("cargo::rerun-if-changed={}", candidate.display());
        found |= Path::new(&candidate).is_file();
    }
    if found || std::env::var_os("TOLLGATE_REQUIRE_REDIS").is_some() {
        println!("cargo::rustc-cfg=tollgate_redis");
    }
}
