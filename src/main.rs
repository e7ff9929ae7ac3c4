//! The `tollgate` command line: run, validate, explain, diff, schema,
//! healthcheck, hash-key.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tollgate::app::{Gateway, StartOptions, wait_for_signal};
use tollgate::config;

#[derive(Parser)]
#[command(name = "tollgate", version, about = "An API gateway and reverse proxy")]
struct Cli {
    /// Config file (YAML).
    #[arg(
        short,
        long,
        global = true,
        default_value = "/etc/tollgate/tollgate.yaml"
    )]
    config: PathBuf,
    /// Log format; json when stdout is not a terminal.
    #[arg(long, global = true)]
    log_format: Option<LogFormat>,
    /// Log level or filter (overrides RUST_LOG), e.g. `info` or `tollgate=debug`.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Pretty,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Check a config file: prints OK and a summary, or every error.
    Validate,
    /// What a reload from OLD to NEW would do: routes, upstreams,
    /// providers, policies and certificates added, removed or changed;
    /// what is kept warm and what starts afresh; settings that need a
    /// restart. Exits 0 when nothing changes, 1 when something does, 2
    /// when a file is invalid (with its located errors).
    Diff {
        /// The config running now.
        old: PathBuf,
        /// The config to reload.
        new: PathBuf,
        /// Print the plan as JSON (what `POST /reload?dry_run=true` answers).
        #[arg(long)]
        json: bool,
    },
    /// Exits 0 when the gateway's `/readyz` answers 200, 1 otherwise (a
    /// container health check that needs no curl).
    Healthcheck {
        /// The admin listener; default: the config's, else 127.0.0.1:9901.
        #[arg(long)]
        admin: Option<String>,
    },
    /// Print the keys-file entry (SHA-256, consumer, tenant) of an API key
    /// read from stdin, or of a new random key (`--generate`, the key on
    /// stderr). The key itself is never written to stdout.
    HashKey {
        /// Who the key belongs to (the identity's `sub`).
        #[arg(long)]
        consumer: String,
        /// The consumer's tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Make a new random key instead of reading one.
        #[arg(long)]
        generate: bool,
    },
    /// Print the config's JSON Schema (for editors: the example configs
    /// point at config/tollgate.schema.json).
    Schema,
    /// Show which route a request would take and why.
    Explain {
        /// Method, e.g. GET.
        method: String,
        /// URL, e.g. http://api.example.com/users/7.
        url: String,
    },
}

fn init_logs(cli: &Cli) {
    let filter = cli
        .log_level
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match cli.log_format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Pretty) => false,
        None => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().with_current_span(false).init();
    } else {
        builder.init();
    }
}

/// Writes the CLI's answer to stdout. A reader that went away (`| head`,
/// a closed pipe) ends the command quietly, never with a panic, which is
/// what `println!` would do.
fn answer(text: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// Writes error lines to stderr, quietly when no one reads them.
fn complain(lines: impl IntoIterator<Item = String>) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    for line in lines {
        if writeln!(err, "{line}").is_err() {
            return;
        }
    }
}

fn validate(cli: &Cli) -> ExitCode {
    match config::load(&cli.config, None) {
        Ok(s) => {
            let routes = s.routes.len();
            let upstreams = s.upstreams.len();
            let endpoints: usize = s.upstreams.values().map(|u| u.endpoints.len()).sum();
            answer(&format!(
                "OK {}: {routes} routes, {upstreams} upstreams, {endpoints} endpoints, {} auth providers (version {})",
                cli.config.display(),
                s.auth.len(),
                s.version
            ))
        }
        Err(e) => {
            complain(e.lines());
            ExitCode::FAILURE
        }
    }
}

fn diff(old: &std::path::Path, new: &std::path::Path, json: bool) -> ExitCode {
    let old = match config::load(old, None) {
        Ok(s) => s,
        Err(e) => {
            complain(e.lines());
            return ExitCode::from(2);
        }
    };
    let new_snapshot = match config::load(new, Some(&old)) {
        Ok(s) => s,
        Err(e) => {
            complain(e.lines());
            return ExitCode::from(2);
        }
    };
    let plan = config::plan::Plan::of(&old, &new_snapshot, &old.start_only);
    let text = if json {
        serde_json::to_string_pretty(&plan).unwrap_or_default()
    } else {
        plan.lines().join("\n")
    };
    let written = answer(&text);
    if written != ExitCode::SUCCESS {
        return written;
    }
    if plan.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// GET `/readyz` on the admin listener with a 2 s deadline: 0 on a 200.
fn healthcheck(cli: &Cli, admin: Option<&str>) -> ExitCode {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
    use std::time::Duration;
    let wait = Duration::from_secs(2);
    let configured = || {
        let text = std::fs::read_to_string(&cli.config).ok()?;
        let (spec, _) = config::parse(&cli.config.display().to_string(), &text).ok()?;
        Some(spec.server.admin_address().to_string())
    };
    let addr = admin
        .map(str::to_owned)
        .or_else(configured)
        .unwrap_or_else(|| "127.0.0.1:9901".to_owned());
    let Some(mut target) = addr.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        complain([format!("`{addr}` is not an address")]);
        return ExitCode::FAILURE;
    };
    // A listener on every address is asked on loopback.
    if target.ip().is_unspecified() {
        target = match target {
            SocketAddr::V4(a) => SocketAddr::from(([127, 0, 0, 1], a.port())),
            SocketAddr::V6(a) => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port())),
        };
    }
    let ask = || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&target, wait)?;
        s.set_read_timeout(Some(wait))?;
        s.set_write_timeout(Some(wait))?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: tollgate\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 64];
        let n = s.read(&mut head)?;
        Ok(String::from_utf8_lossy(&head[..n]).into_owned())
    };
    match ask() {
        Ok(head) if head.starts_with("HTTP/1.1 200") => ExitCode::SUCCESS,
        Ok(head) => {
            complain([format!(
                "{target}/readyz: {}",
                head.lines().next().unwrap_or("no answer")
            )]);
            ExitCode::FAILURE
        }
        Err(e) => {
            complain([format!("{target}/readyz: {e}")]);
            ExitCode::FAILURE
        }
    }
}

fn hash_key(consumer: &str, tenant: Option<&str>, generate: bool) -> ExitCode {
    use tollgate::api_keys;
    let key = if generate {
        match api_keys::generate() {
            Ok(k) => {
                complain([format!(
                    "key (hand it to {consumer}; only its hash is kept): {k}"
                )]);
                k
            }
            Err(e) => {
                complain([e]);
                return ExitCode::FAILURE;
            }
        }
    } else {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().read_line(&mut line) {
            complain([format!("cannot read the key from stdin: {e}")]);
            return ExitCode::FAILURE;
        }
        let key = line.trim_end_matches(['\r', '\n']).to_owned();
        if key.is_empty() {
            complain(["give the key on stdin, or --generate a new one".to_owned()]);
            return ExitCode::FAILURE;
        }
        key
    };
    if consumer.trim().is_empty() {
        complain(["--consumer must not be empty".to_owned()]);
        return ExitCode::FAILURE;
    }
    answer(&api_keys::entry_line(&key, consumer, tenant))
}

fn explain(cli: &Cli, method: &str, url: &str) -> ExitCode {
    let snap = match config::load(&cli.config, None) {
        Ok(s) => s,
        Err(e) => {
            complain(e.lines());
            return ExitCode::FAILURE;
        }
    };
    let Ok(uri) = url.parse::<http::Uri>() else {
        complain([format!("`{url}` is not a URL")]);
        return ExitCode::FAILURE;
    };
    let host = uri.authority().map(|a| a.as_str()).unwrap_or("");
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let out = snap.explain(method, host, pq);
    answer(&serde_json::to_string_pretty(&out).unwrap_or_default())
}

fn run(cli: &Cli) -> ExitCode {
    let workers = match config::load(&cli.config, None) {
        Ok(s) => s.start_only.workers,
        Err(e) => {
            complain(e.lines());
            return ExitCode::FAILURE;
        }
    };
    // One worker: a current-thread runtime has no work-stealing overhead.
    let mut rt = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            complain([format!("cannot start the runtime: {e}")]);
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(async {
        let gw = match Gateway::start(
            cli.config.clone(),
            StartOptions {
                watch_file: true,
                sighup: true,
            },
        )
        .await
        {
            Ok(gw) => gw,
            Err(e) => {
                if let tollgate::app::StartError::Config(le) = &e {
                    for line in le.lines() {
                        tracing::error!(error = %line, "invalid config");
                    }
                } else {
                    tracing::error!(error = %e, "cannot start");
                }
                return ExitCode::FAILURE;
            }
        };
        wait_for_signal().await;
        tracing::info!("shutdown signal received; draining");
        gw.shutdown().await;
        ExitCode::SUCCESS
    });
    // Requests still held by tasks (h2 streams whose connection was cut)
    // are finished as the runtime drops them; their log lines are written
    // out before the process ends.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    tollgate::observability::access_log::flush(std::time::Duration::from_secs(2));
    code
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Validate) => validate(&cli),
        Some(Command::Explain { method, url }) => explain(&cli, method, url),
        Some(Command::Diff { old, new, json }) => diff(old, new, *json),
        Some(Command::Schema) => answer(&config::schema()),
        Some(Command::HashKey {
            consumer,
            tenant,
            generate,
        }) => hash_key(consumer, tenant.as_deref(), *generate),
        Some(Command::Healthcheck { admin }) => healthcheck(&cli, admin.as_deref()),
        Some(Command::Run) | None => {
            init_logs(&cli);
            run(&cli)
        }
    }
}
