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
    let dirs: Vec<_> = std::env::split_paths(&path)
        .filter(|d| Path::new(d).is_dir())
        .collect();
    let found = dirs
        .iter()
        .map(|d| d.join("redis-server"))
        .find(|c| c.is_file());
    match &found {
        // Only paths that exist are watched (a missing one would rerun this
        // script, and rebuild the crate, on every build).
        Some(file) => println!("cargo::rerun-if-changed={}", file.display()),
        // Installing it later changes one of these directories.
        None => {
            for d in &dirs {
                println!("cargo::rerun-if-changed={}", d.display());
            }
        }
    }
    let found = found.is_some();
    if found || std::env::var_os("TOLLGATE_REQUIRE_REDIS").is_some() {
        println!("cargo::rustc-cfg=tollgate_redis");
    }
}
