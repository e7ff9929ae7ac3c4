//! The `tollgate` binary: validate, explain, diff and healthcheck.

use std::process::Command;

use crate::support::{config_path, tollgate_cli as tollgate};

#[test]
fn validate_lists_every_error_with_location_and_path() {
    let path = config_path();
    std::fs::write(
        &path,
        "upstreams:\n  users:\n    endpoints: [\"http://127.0.0.1:9001\"]\nroutes:\n  - name: a\n    match: { path_prefix: /a }\n    upstream: userz\n  - name: b\n    match: { path: /b, methods: [get] }\n    upstream: users\n    timeout: 0s\n",
    )
    .unwrap();
    let file = path.display().to_string();
    let (code, stdout, stderr) = tollgate(&["validate", "-c", &file]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines.contains(
            &format!("{file}:7:5: routes[0].upstream: unknown upstream \"userz\" (defined: users)")
                .as_str()
        ),
        "{stderr}"
    );
    assert!(
        lines.contains(
            &format!(
                "{file}:9:34: routes[1].match.methods[0]: `get` is not an upper-case method name"
            )
            .as_str()
        ),
        "{stderr}"
    );
    assert!(
        lines.contains(&format!("{file}:11:5: routes[1].timeout: must be more than zero").as_str()),
        "{stderr}"
    );
}

#[test]
fn validate_reports_parse_errors_with_location_and_path() {
    let path = config_path();
    std::fs::write(&path, "routes:\n  - name: a\n    match: { path: /a }\n    respond: { body: x }\n    colour: blue\n").unwrap();
    let file = path.display().to_string();
    let (code, _, stderr) = tollgate(&["validate", "-c", &file]);
    assert_eq!(code, 1);
    assert!(stderr.starts_with(&format!("{file}:5:")), "{stderr}");
    assert!(stderr.contains("routes[0].colour"), "{stderr}");
    assert!(stderr.contains("unknown field"), "{stderr}");
}

#[test]
fn validate_accepts_the_shipped_configs_and_explain_answers() {
    for file in ["config/tollgate.yaml", "config/demo.yaml"] {
        let (code, stdout, stderr) = tollgate(&["validate", "-c", file]);
        assert_eq!(code, 0, "{file}: {stderr}");
        assert!(stdout.starts_with("OK "), "{stdout}");
    }
    let (code, stdout, _) = tollgate(&[
        "explain",
        "-c",
        "config/demo.yaml",
        "GET",
        "http://localhost/ping",
    ]);
    assert_eq!(code, 0);
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(j["matched"], "ping");
}

#[test]
fn environment_variables_expand_in_string_values() {
    let path = config_path();
    std::fs::write(&path, "upstreams:\n  u: { endpoints: [\"http://${TOLLGATE_TEST_HOST}:9001\"] }\nroutes:\n  - { name: r, match: { path: /r }, upstream: u }\n").unwrap();
    let file = path.display().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["validate", "-c", &file])
        .env("TOLLGATE_TEST_HOST", "127.0.0.1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["validate", "-c", &file])
        .env_remove("TOLLGATE_TEST_HOST")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains(&format!("{file}:2:"))
            && stderr.contains("environment variable `TOLLGATE_TEST_HOST` is not set"),
        "{stderr}"
    );
}

#[test]
fn version_is_printed() {
    let (code, stdout, _) = tollgate(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        stdout.trim(),
        format!("tollgate {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn duplicate_names_and_match_definitions_are_rejected() {
    let path = config_path();
    std::fs::write(
        &path,
        "routes:\n  - { name: a, match: { path: /x, methods: [GET] }, respond: { body: a } }\n  - { name: a, match: { methods: [GET], path: /x }, respond: { body: b } }\n",
    )
    .unwrap();
    let file = path.display().to_string();
    let (code, _, stderr) = tollgate(&["validate", "-c", &file]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("{file}:3:"))
            && stderr.contains("routes[1].name: duplicate route name `a` (also routes[0])"),
        "{stderr}"
    );
    assert!(
        stderr.contains("routes[1].match: same match definition as routes[0]"),
        "{stderr}"
    );
}

#[test]
fn validate_refuses_configs_without_routes() {
    for text in ["", "# only a comment\n", "{}\n", "routes: []\n"] {
        let path = config_path();
        std::fs::write(&path, text).unwrap();
        let file = path.display().to_string();
        let (code, stdout, stderr) = tollgate(&["validate", "-c", &file]);
        assert_eq!(code, 1, "{text:?}: {stdout}{stderr}");
        assert!(stderr.contains("routes: no routes"), "{text:?}: {stderr}");
    }
}

#[test]
fn validate_refuses_an_endpoint_port_outside_1_to_65535() {
    let path = config_path();
    std::fs::write(
        &path,
        "upstreams:\n  app: { endpoints: [\"http://127.0.0.1:99999\"] }\nroutes:\n  - { name: a, match: { path_prefix: / }, upstream: app }\n",
    )
    .unwrap();
    let file = path.display().to_string();
    let (code, _, stderr) = tollgate(&["validate", "-c", &file]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!(
            "{file}:2:22: upstreams.app.endpoints[0]: `http://127.0.0.1:99999`: port `99999` is not in 1-65535"
        )),
        "{stderr}"
    );
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    for args in [
        &[
            "explain",
            "-c",
            "config/demo.yaml",
            "GET",
            "http://localhost/ping",
        ][..],
        &["validate", "-c", "config/demo.yaml"],
    ] {
        // A pipe whose reader is gone before the command writes: every
        // write fails with EPIPE, as with `tollgate explain ... | head -0`.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

#[test]
fn a_redis_password_never_appears_in_validation_errors() {
    let path = config_path();
    std::fs::write(
        &path,
        "redis: { url: \"redis://:topsecret@127.0.0.1:notaport/0\" }\nroutes:\n  - { name: a, match: { path: /a }, respond: { body: a } }\n",
    )
    .unwrap();
    let file = path.display().to_string();
    let (code, stdout, stderr) = tollgate(&["validate", "-c", &file]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("redis.url"), "{stderr}");
    assert!(!stderr.contains("topsecret"), "{stderr}");
    assert!(stderr.contains("<redacted>"), "{stderr}");
}

/// Writes `yaml` to a fresh config file; its path.
fn file_with(yaml: &str) -> String {
    let path = config_path();
    std::fs::write(&path, yaml).unwrap();
    path.display().to_string()
}

#[test]
fn diff_says_what_a_reload_would_change_keep_and_restart() {
    let old = file_with(
        "server:\n  listen: [\"127.0.0.1:8080\"]\nupstreams:\n  users: { endpoints: [\"http://127.0.0.1:9001\"] }\n  orders: { endpoints: [\"http://127.0.0.1:9002\"] }\nrate_limits:\n  per_ip: { key: client_ip, rate: 10/s }\nroutes:\n  - { name: a, match: { path_prefix: /a }, upstream: users }\n  - { name: b, match: { path_prefix: /b }, upstream: orders, rate_limit: [per_ip] }\n",
    );
    let new = file_with(
        "server:\n  listen: [\"127.0.0.1:9090\"]\n  access_log: { query: true }\nupstreams:\n  users: { endpoints: [\"http://127.0.0.1:9001\"] }\n  orders: { endpoints: [\"http://127.0.0.1:9003\"] }\nrate_limits:\n  per_ip: { key: client_ip, rate: 10/s }\nroutes:\n  - { name: a, match: { path_prefix: /a }, upstream: users, timeout: 5s }\n  - { name: c, match: { path_prefix: /c }, upstream: orders, rate_limit: [per_ip] }\n",
    );
    let (code, stdout, stderr) = tollgate(&["diff", &old, &new]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    for line in [
        "routes added: c",
        "routes removed: b",
        "routes changed: a",
        "upstreams changed: orders",
        "kept warm: upstreams.users, rate_limits.per_ip",
        "starts afresh (state dropped): upstreams.orders",
        "settings changed: server.access_log",
        "read at start only, a restart applies them: server.listen",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line}\n{stdout}");
    }
    // JSON: what `POST /reload?dry_run=true` answers.
    let (code, stdout, _) = tollgate(&["diff", "--json", &old, &new]);
    assert_eq!(code, 1);
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(plan["routes"]["added"], serde_json::json!(["c"]));
    assert_eq!(
        plan["restart_required"],
        serde_json::json!(["server.listen"])
    );
    // The same file: no change, exit 0.
    let (code, stdout, _) = tollgate(&["diff", &old, &old]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.lines().any(|l| l == "no change"), "{stdout}");
    // An invalid new file: exit 2 with the located error.
    let bad = file_with(
        "upstreams:\n  users: { endpoints: [\"http://127.0.0.1:9001\"] }\nroutes:\n  - { name: a, match: { path_prefix: /a }, upstream: userz }\n",
    );
    let (code, _, stderr) = tollgate(&["diff", &old, &bad]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!("{bad}:4:44: routes[0].upstream: unknown upstream")),
        "{stderr}"
    );
}

#[tokio::test]
async fn healthcheck_exits_zero_only_when_the_gateway_is_ready() {
    let up = crate::support::Upstream::start("app").await;
    let gw = crate::support::Binary::start(&format!(
        "{}{}",
        crate::support::server_with(""),
        crate::support::proxy_all(&up.url())
    ));
    let admin = gw.admin.to_string();
    let (code, _, stderr) = tollgate(&["healthcheck", "--admin", &admin]);
    assert_eq!(code, 0, "{stderr}");
    let closed = crate::support::ClosedPort::new();
    let (code, _, stderr) = tollgate(&["healthcheck", "--admin", &closed.addr.to_string()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("/readyz"), "{stderr}");
    // The config's admin address, when no --admin is given.
    let file = file_with(&format!(
        "server:\n  admin_listen: \"{admin}\"\n{}",
        crate::support::proxy_all(&up.url())
    ));
    let (code, _, stderr) = tollgate(&["healthcheck", "-c", &file]);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn the_committed_schema_is_the_one_the_binary_prints() {
    let (code, out, err) = tollgate(&["schema"]);
    assert_eq!(code, 0, "{err}");
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/tollgate.schema.json"
    ))
    .unwrap();
    assert!(
        out.trim_end() == committed.trim_end(),
        "config/tollgate.schema.json is stale: run `cargo run -- schema > config/tollgate.schema.json`"
    );
    let schema: serde_json::Value = serde_json::from_str(&out).unwrap();
    // Descriptions come from the doc comments, defaults from serde.
    let grace = &schema["$defs"]["ServerSpec"]["properties"]["shutdown_grace"];
    assert_eq!(grace["default"], "30s", "{grace}");
    assert!(
        grace["description"]
            .as_str()
            .unwrap()
            .contains("in-flight requests")
    );
    assert_eq!(
        schema["additionalProperties"], false,
        "unknown keys are errors"
    );
}

/// Every config the docs show (config/examples/, the migration guides' and
/// the first config) and the Kubernetes base's config validate, and carry
/// the schema modeline.
#[test]
fn every_example_config_validates() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("config/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    files.push(root.join("deploy/kubernetes/tollgate.yaml"));
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            text.starts_with("# yaml-language-server: $schema="),
            "{}: no schema modeline",
            f.display()
        );
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["validate", "-c", f.to_str().unwrap()])
            .env("TOLLGATE_ADMIN_TOKEN", "a-token-of-at-least-16-bytes")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
