//! Build script: tells the tests whether they can start a real
//! `redis-server` (cfg `tollgate_redis`), a real `prometheus` (cfg
//! `tollgate_prometheus`) and a headless `chromium` (cfg
//! `tollgate_chromium`, for the admin dashboard).
//!
//! Tests that need one are marked `ignore` with the reason when it is not
//! installed, so `cargo test` says so in its summary instead of passing
//! them silently. With `TOLLGATE_REQUIRE_REDIS` / `TOLLGATE_REQUIRE_PROMETHEUS`
//! set (as `.ci/run` does) they always run, and fail when the program is
//! missing.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(tollgate_redis)");
    println!("cargo::rustc-check-cfg=cfg(tollgate_prometheus)");
    println!("cargo::rustc-check-cfg=cfg(tollgate_chromium)");
    println!("cargo::rerun-if-env-changed=PATH");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .filter(|d| Path::new(d).is_dir())
        .collect();
    let mut watch_dirs = false;
    for (program, required, cfg) in [
        ("redis-server", "TOLLGATE_REQUIRE_REDIS", "tollgate_redis"),
        (
            "prometheus",
            "TOLLGATE_REQUIRE_PROMETHEUS",
            "tollgate_prometheus",
        ),
        ("chromium", "TOLLGATE_REQUIRE_CHROMIUM", "tollgate_chromium"),
    ] {
        println!("cargo::rerun-if-env-changed={required}");
        let found = dirs.iter().map(|d| d.join(program)).find(|c| c.is_file());
        match &found {
            // Only paths that exist are watched (a missing one would rerun
            // this script, and rebuild the crate, on every build).
            Some(file) => println!("cargo::rerun-if-changed={}", file.display()),
            // Installing it later changes one of the PATH directories.
            None => watch_dirs = true,
        }
        if found.is_some() || std::env::var_os(required).is_some() {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
    if watch_dirs {
        for d in &dirs {
            println!("cargo::rerun-if-changed={}", d.display());
        }
    }
}
