//! The `tollgate` command line: run, validate, explain.

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
        Some(Command::Run) | None => {
            init_logs(&cli);
            run(&cli)
        }
    }
}
