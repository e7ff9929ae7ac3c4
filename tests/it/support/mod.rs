//! Test support: a recording upstream, the gateway launched in-process from
//! a YAML string, and clients (hyper and raw sockets).

#![expect(dead_code, reason = "each test module uses a part of the support kit")]

pub mod jwt;
pub mod otlp;
pub mod tls;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate::app::{Gateway, StartOptions};

/// Longest any single test step may wait for a socket before failing
/// (generous: debug builds on 2 shared cores).
pub const IO_WAIT: Duration = Duration::from_secs(10);

/// How often a condition is checked while a test waits for it.
pub const POLL: Duration = Duration::from_millis(20);

/// Long enough for a 1 s freshness lifetime (`max-age=1`, `default_ttl:
/// 1s`) to run out: `Age` counts whole seconds, so just over one.
pub const PAST_ONE_SECOND: Duration = Duration::from_millis(1100);

/// Waits until `check` holds, checking every `POLL` for at most `IO_WAIT`;
/// fails the test naming `what` otherwise.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + IO_WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {IO_WAIT:?} for: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Opens a WebSocket to the test upstream's `/ws` through the gateway at
/// `gw`: the 101 (with `Upgrade: websocket`) has come back, and the socket
/// is the tunnel.
pub async fn websocket_open(gw: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(gw).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(IO_WAIT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    s
}

/// A WebSocket upgrade through the gateway at `gw` to the test upstream
/// `up` (its `/ws` echoes): the 101 comes back, bytes go both ways, and
/// the upstream saw the `Upgrade` field.
pub async fn websocket_echoes(gw: SocketAddr, up: &Upstream) {
    let mut s = websocket_open(gw).await;
    websocket_ping(&mut s).await;
    assert_eq!(up.last().headers["upgrade"], "websocket");
}

/// Sends 16 bytes through an open tunnel to the echoing upstream and
/// reads them back.
pub async fn websocket_ping(s: &mut TcpStream) {
    s.write_all(b"ping-frame-bytes").await.unwrap();
    let mut got = [0u8; 16];
    tokio::time::timeout(IO_WAIT, s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"ping-frame-bytes");
}

/// What the upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A test upstream on 127.0.0.1:0 that records requests. Paths:
/// `/slow/MS` sleeps, `/status/N` answers N, `/bytes/N` streams N bytes,
/// `/echo` returns the body, `/ws` answers 101 and echoes raw bytes;
/// anything else answers 200 with the upstream's name.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub hits: Arc<AtomicU64>,
    /// Connections accepted.
    pub conns: Arc<AtomicU64>,
    /// When not 0, every request is answered with this status.
    pub fail: Arc<std::sync::atomic::AtomicU16>,
    /// With `fail`: wait this many milliseconds before answering.
    pub fail_delay_ms: Arc<AtomicU64>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// On a given address (to bring a stopped upstream back on its port).
    pub async fn start_on(name: &str, addr: SocketAddr) -> Upstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fail = Arc::new(std::sync::atomic::AtomicU16::new(0));
        let fail_delay_ms = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hits = Arc::new(AtomicU64::new(0));
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let conns = Arc::new(AtomicU64::new(0));
        let accepted = conns.clone();
        let (s, h, n, f) = (seen.clone(), hits.clone(), name.to_owned(), fail.clone());
        let fd = fail_delay_ms.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = stop_rx.changed() => return,
                };
                accepted.fetch_add(1, Ordering::Relaxed);
                let (s, h, n, f, fd) = (s.clone(), h.clone(), n.clone(), f.clone(), fd.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let code = f.load(Ordering::Relaxed);
                        let delay = fd.load(Ordering::Relaxed);
                        upstream_handle(req, s.clone(), h.clone(), n.clone(), (code, delay))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            name: name.to_owned(),
            seen,
            hits,
            conns,
            fail,
            fail_delay_ms,
            stop,
        }
    }

    /// Answers every request with `status` from now on (0: back to normal).
    pub fn set_fail(&self, status: u16) {
        self.fail.store(status, Ordering::Relaxed);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw a request")
    }

    pub fn count(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn upstream_handle(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    hits: Arc<AtomicU64>,
    name: String,
    (fail, fail_delay_ms): (u16, u64),
) -> Result<Response<UpBody>, Infallible> {
    hits.fetch_add(1, Ordering::Relaxed);
    if fail != 0 {
        tokio::time::sleep(Duration::from_millis(fail_delay_ms)).await;
        let mut r = Response::new(Full::new(Bytes::from(format!("failing with {fail}"))).boxed());
        *r.status_mut() = StatusCode::from_u16(fail).unwrap();
        return Ok(r);
    }
    let path = req.uri().path().to_owned();
    if path == "/ws" {
        let (parts, _) = req.into_parts();
        let mut req = Request::from_parts(parts.clone(), ());
        let on = hyper::upgrade::on(&mut req);
        seen.lock().unwrap().push(Seen {
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            headers: parts.headers,
            body: Bytes::new(),
        });
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut r = Response::new(Full::new(Bytes::new()).boxed());
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        r.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        return Ok(r);
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let mut segs = path.trim_start_matches('/').splitn(2, '/');
    let resp = match (segs.next(), segs.next()) {
        (Some("slow"), Some(ms)) => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            Response::new(Full::new(Bytes::from(name)).boxed())
        }
        (Some("status"), Some(code)) => {
            let mut r = Response::new(Full::new(Bytes::from(format!("status {code}"))).boxed());
            *r.status_mut() = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap();
            r
        }
        (Some("bytes"), Some(n)) => {
            let total: usize = n.parse().unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; 64 << 10]);
            Response::new(Bytestream { left: total, chunk }.boxed())
        }
        (Some("echo"), _) => Response::new(Full::new(body).boxed()),
        (Some("sum"), _) => Response::new(
            Full::new(Bytes::from(format!(
                "{}:{:016x}",
                body.len(),
                checksum(&body)
            )))
            .boxed(),
        ),
        _ => {
            let mut r = Response::new(Full::new(Bytes::from(name)).boxed());
            r.headers_mut()
                .insert("x-upstream-header", "yes".parse().unwrap());
            r.headers_mut()
                .insert("connection", "x-hop".parse().unwrap());
            r.headers_mut().insert("x-hop", "secret".parse().unwrap());
            r
        }
    };
    Ok(resp)
}

/// FNV-1a over the bytes: what `/sum` answers with the length.
pub fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Streams `left` bytes in 64 KiB chunks.
pub struct Bytestream {
    pub left: usize,
    pub chunk: Bytes,
}

impl http_body::Body for Bytestream {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len());
        self.left -= n;
        std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }
}

/// A gateway started in-process from YAML text.
pub struct TestGateway {
    pub gw: Option<Gateway>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A fresh config file path in a fresh directory, under
/// `$TMPDIR/tollgate-it/PID-N`. The first call in a test process removes
/// the directories of test processes that have ended, so runs do not pile
/// up in the temp directory.
pub fn config_path() -> PathBuf {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let root = ROOT.get_or_init(|| {
        let root = std::env::temp_dir().join("tollgate-it");
        for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let pid = name.to_str().and_then(|n| n.split('-').next());
            if let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok())
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        root
    });
    let dir = root.join(format!(
        "{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("tollgate.yaml")
}

/// The tests' `server:` block: ephemeral ports, access log off, plus
/// `extra` lines under `server:` (such as `limits: { ... }`).
pub fn server_with(extra: &str) -> String {
    let mut out = String::from(
        "server:\n  listen: [\"127.0.0.1:0\"]\n  admin_listen: \"127.0.0.1:0\"\n  access_log: { enabled: false }\n",
    );
    for line in extra.lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// One upstream `app` at `url` and a catch-all route `app` to it.
pub fn proxy_all(url: &str) -> String {
    format!(
        "upstreams:\n  app: {{ endpoints: [\"{url}\"] }}\nroutes:\n  - {{ name: app, match: {{ path_prefix: / }}, upstream: app }}\n"
    )
}

/// Adds the tests' `server:` block unless the YAML has one of its own.
pub fn with_server(yaml: &str) -> String {
    if yaml.contains("server:") {
        yaml.to_owned()
    } else {
        server_with("") + yaml
    }
}

impl TestGateway {
    pub async fn start(yaml: &str) -> TestGateway {
        Self::start_with(yaml, false).await
    }

    pub async fn start_with(yaml: &str, watch_file: bool) -> TestGateway {
        let config = config_path();
        std::fs::write(&config, with_server(yaml)).unwrap();
        let gw = Gateway::start(
            config.clone(),
            StartOptions {
                watch_file,
                sighup: false,
            },
        )
        .await
        .unwrap();
        TestGateway {
            addr: gw.listen[0],
            admin: gw.admin,
            gw: Some(gw),
            config,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn write_config(&self, yaml: &str) {
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, with_server(yaml)).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A client that speaks h2c (prior knowledge) only.
pub fn h2c_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A response with its body collected.
pub struct Got {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

pub async fn send(c: &TestClient, req: Request<Full<Bytes>>) -> Got {
    let resp = tokio::time::timeout(IO_WAIT, c.request(req))
        .await
        .expect("response in time")
        .expect("response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(IO_WAIT, resp.into_body().collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    Got {
        status,
        headers,
        body,
    }
}

pub async fn get(c: &TestClient, url: &str) -> Got {
    send(c, Request::get(url).body(Full::new(Bytes::new())).unwrap()).await
}

pub async fn get_with(c: &TestClient, url: &str, headers: &[(&str, &str)]) -> Got {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(c, b.body(Full::new(Bytes::new())).unwrap()).await
}

pub async fn post(c: &TestClient, url: &str, body: &str) -> Got {
    send(
        c,
        Request::post(url)
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap(),
    )
    .await
}

/// Runs the `tollgate` binary with `args`: (exit code, stdout, stderr).
pub fn tollgate_cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One raw h2 frame: its 9-byte head, then `payload`.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Sends raw bytes and reads until the server closes or `IO_WAIT` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(IO_WAIT, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Status code of the first response in raw text.
pub fn raw_status(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Counts by key.
/// A loopback port that refuses connections for as long as this value
/// lives: the socket is bound (so no other test can take the port) but
/// never listens, so a connect gets a reset at once.
pub struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    /// The refused address.
    pub addr: SocketAddr,
}

impl ClosedPort {
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        ClosedPort {
            _socket: socket,
            addr,
        }
    }
}

pub fn tally<T: std::hash::Hash + Eq>(items: impl IntoIterator<Item = T>) -> HashMap<T, usize> {
    let mut m = HashMap::new();
    for i in items {
        *m.entry(i).or_insert(0) += 1;
    }
    m
}

/// The `tollgate` binary running on a config, with its output collected.
pub struct Binary {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub stdout: Arc<Mutex<Vec<String>>>,
    /// Its log (stderr), line by line.
    pub stderr: Arc<Mutex<Vec<String>>>,
}

/// Longest wait for the binary to start listening.
const BINARY_START: Duration = Duration::from_secs(20);

impl Binary {
    /// Starts `tollgate run` on `yaml` (listeners on ephemeral ports unless
    /// the YAML has its own `server:`); reads the bound addresses from the
    /// JSON start-up log line.
    pub fn start(yaml: &str) -> Binary {
        Self::spawn(yaml, true)
    }

    /// As `start`, with stdout a pipe no one reads (it fills after 64 KiB
    /// and every later write blocks).
    pub fn start_with_stalled_stdout(yaml: &str) -> Binary {
        Self::spawn(yaml, false)
    }

    fn spawn(yaml: &str, read_stdout: bool) -> Binary {
        use std::io::BufRead;
        let config = config_path();
        std::fs::write(&config, with_server(yaml)).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args([
                "run",
                "-c",
                config.to_str().unwrap(),
                "--log-format",
                "json",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        // Owned by the guard from here on, so a failed start still kills it.
        let unbound: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut bin = Binary {
            child,
            addr: unbound,
            admin: unbound,
            stdout: stdout.clone(),
            stderr: stderr.clone(),
        };
        std::thread::spawn(move || {
            if !read_stdout {
                // Held open, never read.
                let _stalled = out;
                std::thread::park();
                return;
            }
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                stdout.lock().unwrap().push(line);
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                stderr.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + BINARY_START;
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
                .expect("tollgate started");
            let Ok(j) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if j["fields"]["message"] == "tollgate started" {
                let listen = j["fields"]["listen"]
                    .as_str()
                    .unwrap()
                    .trim_matches(['[', ']']);
                bin.addr = listen.split(',').next().unwrap().trim().parse().unwrap();
                bin.admin = j["fields"]["admin"].as_str().unwrap().parse().unwrap();
                return bin;
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The first `tls_listen` address, read from the start-up log line.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.stderr.lock().unwrap().iter().find_map(|line| {
            let j: serde_json::Value = serde_json::from_str(line).ok()?;
            (j["fields"]["message"] == "tollgate started").then_some(())?;
            j["fields"]["tls_listen"]
                .as_str()?
                .trim_matches(['[', ']'])
                .split(',')
                .next()?
                .trim()
                .parse()
                .ok()
        })
    }

    /// Peak resident memory (VmHWM) in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Downloads `url`, checking as it streams that every byte is `x` (what
/// the test upstream's `/bytes/N` sends); returns the byte count.
pub async fn download_x(c: &TestClient, url: &str) -> usize {
    use http_body_util::BodyExt;
    let resp = c.get(url.parse().unwrap()).await.unwrap();
    let mut body = resp.into_body();
    let mut total = 0usize;
    while let Some(f) = body.frame().await {
        if let Some(d) = f.unwrap().data_ref() {
            assert!(d.iter().all(|b| *b == b'x'));
            total += d.len();
        }
    }
    total
}

/// Starts `n` concurrent GETs of `url`; each task yields the status.
pub fn spawn_gets(c: &TestClient, url: &str, n: usize) -> Vec<tokio::task::JoinHandle<u16>> {
    (0..n)
        .map(|_| {
            let (c, url) = (c.clone(), url.to_owned());
            tokio::spawn(async move { get(&c, &url).await.status })
        })
        .collect()
}

/// The value of one series (`name{labels}` exactly as rendered) in
/// Prometheus text, or 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// A real `redis-server` on 127.0.0.1 and a free port, stopped on drop.
pub struct RedisServer {
    pub port: u16,
    child: std::process::Child,
}

impl RedisServer {
    /// Starts one. Tests that call this are marked `ignore` when the build
    /// found no `redis-server` (see `build.rs`); one that runs without it
    /// fails with the reason.
    pub async fn start() -> RedisServer {
        let found = std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok();
        assert!(
            found,
            "redis-server is not installed here (apt-get install -y redis-server)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let server = RedisServer { port, child };
        for _ in 0..200 {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await {
                let _ = s.write_all(b"PING\r\n").await;
                let mut buf = [0u8; 16];
                if let Ok(Ok(n)) = tokio::time::timeout(IO_WAIT, s.read(&mut buf)).await
                    && buf[..n].starts_with(b"+PONG")
                {
                    return server;
                }
            }
            tokio::time::sleep(POLL).await;
        }
        panic!("redis-server did not start on {port}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts the gateway on a config file already written.
pub async fn start_path(path: PathBuf, watch_file: bool) -> tollgate::app::Gateway {
    let opts = StartOptions {
        watch_file,
        sighup: false,
    };
    Gateway::start(path, opts).await.unwrap()
}
