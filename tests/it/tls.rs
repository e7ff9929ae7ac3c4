//! TLS termination over real sockets: SNI picks the certificate (exact,
//! wildcard, default, refusal), ALPN serves h2 and HTTP/1.1, the minimum
//! version holds, X-Forwarded-Proto is https, certificates are swapped on
//! reload without dropping open connections, and bad certificates are
//! refused at load.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::support::tls::TestCa;
use crate::support::*;

struct Site {
    ca: TestCa,
    dir: std::path::PathBuf,
    config: std::path::PathBuf,
}

/// Writes three certificates (exact `a.test`, wildcard `*.wild.test`,
/// default `default.test` + 127.0.0.1) next to a fresh config path.
fn site() -> Site {
    let ca = TestCa::new("tollgate test CA");
    let config = config_path();
    let dir = config.parent().unwrap().to_owned();
    for (name, names, ip) in [
        ("a", vec!["a.test"], false),
        ("wild", vec!["*.wild.test"], false),
        ("default", vec!["default.test"], true),
    ] {
        let (c, k) = ca.leaf(&names, ip);
        std::fs::write(dir.join(format!("{name}.pem")), c).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), k).unwrap();
    }
    Site { ca, dir, config }
}

fn yaml(up: &str, tls_extra: &str) -> String {
    format!(
        "server:\n  listen: [\"127.0.0.1:0\"]\n  tls_listen: [\"127.0.0.1:0\"]\n  admin_listen: \"127.0.0.1:0\"\n  access_log: {{ enabled: false }}\n  tls:\n    certificates:\n      - {{ cert: a.pem, key: a.key }}\n      - {{ cert: wild.pem, key: wild.key }}\n      - {{ cert: default.pem, key: default.key }}\n{tls_extra}{}",
        proxy_all(up)
    )
}

async fn start(site: &Site, yaml: &str) -> tollgate::app::Gateway {
    std::fs::write(&site.config, yaml).unwrap();
    start_path(site.config.clone(), false).await
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn handshake(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    name: &str,
) -> Result<Tls, std::io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    tokio::time::timeout(
        IO_WAIT,
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// One GET over an established TLS stream, h1 or h2 by ALPN.
async fn get_over(tls: Tls, path: &str) -> (u16, String, http::Version) {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let req = Request::get(format!("https://a.test{path}"))
        .header("host", "a.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = if h2 {
        let (mut tx, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut req = req;
        req.headers_mut().remove("host");
        tx.send_request(req).await.unwrap()
    } else {
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = req;
        *req.uri_mut() = path.parse().unwrap();
        tx.send_request(req).await.unwrap()
    };
    let status = resp.status().as_u16();
    let version = resp.version();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), version)
}

#[tokio::test]
async fn sni_picks_exact_wildcard_and_default_certificates() {
    let up = Upstream::start("app").await;
    let site = site();
    let gw = start(
        &site,
        &yaml(&up.url(), "    default_certificate: default.pem\n"),
    )
    .await;
    let addr = gw.tls_listen[0];
    let cfg = site.ca.client(&["http/1.1"]);
    // Each handshake verifies the served certificate against the name.
    for name in ["a.test", "x.wild.test", "default.test"] {
        let tls = handshake(addr, Arc::clone(&cfg), name).await;
        assert!(tls.is_ok(), "{name}: {:?}", tls.err());
    }
    // No SNI (an IP address): the default certificate, valid for 127.0.0.1.
    let tls = handshake(addr, Arc::clone(&cfg), "127.0.0.1")
        .await
        .unwrap();
    let (status, body, _) = get_over(tls, "/").await;
    assert_eq!((status, body.as_str()), (200, "app"));
    assert_eq!(up.last().headers["x-forwarded-proto"], "https");
    // An unknown name gets the default, which does not match it.
    assert!(
        handshake(addr, Arc::clone(&cfg), "other.test")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn without_a_default_unknown_names_are_refused() {
    let up = Upstream::start("app").await;
    let site = site();
    let gw = start(&site, &yaml(&up.url(), "")).await;
    let cfg = site.ca.client(&["http/1.1"]);
    assert!(
        handshake(gw.tls_listen[0], Arc::clone(&cfg), "a.test")
            .await
            .is_ok()
    );
    assert!(handshake(gw.tls_listen[0], cfg, "127.0.0.1").await.is_err());
    let c = client();
    let m = get(&c, &format!("http://{}/metrics", gw.admin))
        .await
        .text();
    assert!(
        metric(
            &m,
            r#"tollgate_tls_handshakes_total{result="failure",version="none"}"#
        ) >= 1.0
    );
    assert!(m.contains("tollgate_tls_certificate_expiry_timestamp_seconds{name=\"a.pem\"}"));
}

#[tokio::test]
async fn alpn_serves_h2_and_http1_and_min_version_holds() {
    let up = Upstream::start("app").await;
    let site = site();
    let gw = start(
        &site,
        &yaml(
            &up.url(),
            "    min_version: \"1.3\"\n    session_resumption: false\n",
        ),
    )
    .await;
    let addr = gw.tls_listen[0];
    let tls = handshake(addr, site.ca.client(&["h2", "http/1.1"]), "a.test")
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (status, body, version) = get_over(tls, "/h2").await;
    assert_eq!(
        (status, body.as_str(), version),
        (200, "app", http::Version::HTTP_2)
    );
    let tls = handshake(addr, site.ca.client(&["http/1.1"]), "a.test")
        .await
        .unwrap();
    let (status, _, version) = get_over(tls, "/h1").await;
    assert_eq!((status, version), (200, http::Version::HTTP_11));
    // A TLS 1.2-only client is refused under min_version 1.3.
    let mut roots = rustls::RootCertStore::empty();
    for c in <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::pem_slice_iter(
        site.ca.pem().as_bytes(),
    ) {
        roots.add(c.unwrap()).unwrap();
    }
    let old = rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
        .with_root_certificates(roots)
        .with_no_client_auth();
    assert!(handshake(addr, Arc::new(old), "a.test").await.is_err());
}

#[tokio::test]
async fn certificates_swap_on_reload_without_dropping_open_connections() {
    let up = Upstream::start("app").await;
    let site = site();
    let gw = start(&site, &yaml(&up.url(), "")).await;
    let addr = gw.tls_listen[0];
    // A keep-alive connection opened before the swap.
    let tls = handshake(addr, site.ca.client(&["http/1.1"]), "a.test")
        .await
        .unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let send = |tx: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>| {
        tx.send_request(
            Request::get("/keep")
                .header("host", "a.test")
                .body(Empty::new())
                .unwrap(),
        )
    };
    assert_eq!(send(&mut tx).await.unwrap().status(), 200);
    // Replace a.test's certificate with one from another CA.
    let ca2 = TestCa::new("second CA");
    let (c, k) = ca2.leaf(&["a.test"], false);
    std::fs::write(site.dir.join("a.pem"), c).unwrap();
    std::fs::write(site.dir.join("a.key"), k).unwrap();
    let r = gw.reloader.reload_async("test").await.unwrap();
    assert!(
        matches!(r, tollgate::config::reload::ReloadOutcome::Applied { .. }),
        "{r:?}"
    );
    assert!(
        handshake(addr, ca2.client(&["http/1.1"]), "a.test")
            .await
            .is_ok()
    );
    assert!(
        handshake(addr, site.ca.client(&["http/1.1"]), "a.test")
            .await
            .is_err()
    );
    // Time for a swap that closed open connections to show it.
    const AFTER_THE_SWAP: Duration = Duration::from_millis(50);
    tokio::time::sleep(AFTER_THE_SWAP).await;
    assert_eq!(
        send(&mut tx).await.unwrap().status(),
        200,
        "the open connection lives on"
    );
    // A broken replacement (key of another certificate) is refused.
    let (_, other_key) = ca2.leaf(&["a.test"], false);
    std::fs::write(site.dir.join("a.key"), other_key).unwrap();
    let err = gw.reloader.reload_async("test").await.unwrap_err();
    let lines = err.lines().join("\n");
    assert!(
        lines.contains("a.pem: the private key does not match the certificate"),
        "{lines}"
    );
    assert!(
        handshake(addr, ca2.client(&["http/1.1"]), "a.test")
            .await
            .is_ok(),
        "old one kept"
    );
}

#[tokio::test]
async fn unreadable_or_mismatched_certificates_are_config_errors() {
    let site = site();
    let (_, other_key) = site.ca.leaf(&["x.test"], false);
    std::fs::write(site.dir.join("bad.key"), other_key).unwrap();
    let (c, k) = site.ca.expired_leaf("old.test");
    std::fs::write(site.dir.join("old.pem"), c).unwrap();
    std::fs::write(site.dir.join("old.key"), k).unwrap();
    let yaml = "server:\n  tls_listen: [\"127.0.0.1:0\"]\n  tls:\n    certificates:\n      - { cert: a.pem, key: bad.key }\n      - { cert: missing.pem, key: a.key }\n      - { cert: old.pem, key: old.key }\n    default_certificate: nope.pem\n    min_version: \"1.1\"\nroutes: []\n";
    std::fs::write(&site.config, yaml).unwrap();
    let err = tollgate::config::load(&site.config, None).err().unwrap();
    let lines = err.lines().join("\n");
    for want in [
        "server.tls.certificates[0]: a.pem: the private key does not match the certificate",
        "server.tls.certificates[1].cert: cannot read",
        "server.tls.default_certificate: `nope.pem` is not the cert of a listed certificate",
        "server.tls.min_version: `1.1`",
        "server.tls.certificates[2]: old.pem: the certificate has expired",
    ] {
        assert!(lines.contains(want), "missing `{want}` in:\n{lines}");
    }
}

#[tokio::test]
async fn a_silent_tls_client_is_closed_after_the_handshake_timeout() {
    use tokio::io::AsyncReadExt;
    let up = Upstream::start("app").await;
    let site = site();
    let yaml = yaml(&up.url(), "").replace(
        "  access_log: { enabled: false }\n",
        "  access_log: { enabled: false }\n  limits: { tls_handshake_timeout: 300ms }\n",
    );
    let gw = start(&site, &yaml).await;
    let mut s = TcpStream::connect(gw.tls_listen[0]).await.unwrap();
    let t = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(IO_WAIT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a byte");
    assert!(
        t.elapsed() >= Duration::from_millis(250) && t.elapsed() < Duration::from_secs(3),
        "{:?}",
        t.elapsed()
    );
    let m = get(&client(), &format!("http://{}/metrics", gw.admin))
        .await
        .text();
    assert!(
        metric(
            &m,
            r#"tollgate_tls_handshakes_total{result="timeout",version="none"}"#
        ) >= 1.0
    );
}

#[tokio::test]
async fn redirect_http_and_hsts() {
    let up = Upstream::start("app").await;
    let site = site();
    let gw = start(
        &site,
        &yaml(
            &up.url(),
            "    redirect_http: true\n    hsts: { max_age: 1y, include_subdomains: true }\n",
        ),
    )
    .await;
    let resp = raw(
        gw.listen[0],
        b"GET /a/b?c=1 HTTP/1.1\r\nHost: a.test:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&resp), 308, "{resp}");
    let port = gw.tls_listen[0].port();
    assert!(
        resp.contains(&format!("location: https://a.test:{port}/a/b?c=1\r\n")),
        "{resp}"
    );
    assert!(
        !resp.contains("strict-transport-security"),
        "not on plain http"
    );
    assert_eq!(up.count(), 0);
    let tls = handshake(gw.tls_listen[0], site.ca.client(&["http/1.1"]), "a.test")
        .await
        .unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let r = tx
        .send_request(
            Request::get("/")
                .header("host", "a.test")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );
}

#[tokio::test]
async fn client_certificates_required_and_optional() {
    let up = Upstream::start("app").await;
    let site = site();
    let clients = TestCa::new("client CA");
    std::fs::write(site.dir.join("clients.pem"), clients.pem()).unwrap();
    let (good_cert, good_key) = clients.leaf(&["alice.clients.test"], false);
    let stranger = TestCa::new("stranger CA");
    let (bad_cert, bad_key) = stranger.leaf(&["mallory.test"], false);
    let with = |cert: &str, key: &str| site.ca.client_with_cert(cert, key);
    for required in [true, false] {
        let gw = start(
            &site,
            &yaml(
                &up.url(),
                &format!("    client_auth: {{ ca: clients.pem, required: {required} }}\n"),
            ),
        )
        .await;
        let addr = gw.tls_listen[0];
        // A good client certificate: served, its subject forwarded, and a
        // forged subject header replaced.
        let tls = handshake(addr, with(&good_cert, &good_key), "a.test")
            .await
            .unwrap();
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let r = tx
            .send_request(
                Request::get("/")
                    .header("host", "a.test")
                    .header("x-client-cert-subject", "CN=forged")
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let subject = up.last().headers["x-client-cert-subject"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(!subject.contains("forged"), "{subject}");
        // A certificate from another CA is always refused.
        let bad = handshake(addr, with(&bad_cert, &bad_key), "a.test").await;
        let refused = match bad {
            Err(_) => true,
            // TLS 1.3: the server's refusal arrives after the client's
            // handshake completes, on the first read.
            Ok(tls) => {
                let sent =
                    hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
                        .await;
                match sent {
                    Err(_) => true,
                    Ok((mut tx, conn)) => {
                        tokio::spawn(conn);
                        tx.send_request(
                            Request::get("/")
                                .header("host", "a.test")
                                .body(Empty::new())
                                .unwrap(),
                        )
                        .await
                        .is_err()
                    }
                }
            }
        };
        assert!(refused, "a stranger's certificate (required: {required})");
        // No certificate: refused when required, served when optional.
        let none = handshake(addr, site.ca.client(&["http/1.1"]), "a.test").await;
        let served = match none {
            Err(_) => false,
            Ok(tls) => {
                match hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
                    .await
                {
                    Err(_) => false,
                    Ok((mut tx, conn)) => {
                        tokio::spawn(conn);
                        tx.send_request(
                            Request::get("/")
                                .header("host", "a.test")
                                .header("x-client-cert-subject", "CN=forged")
                                .body(Empty::new())
                                .unwrap(),
                        )
                        .await
                        .is_ok_and(|r| r.status() == 200)
                    }
                }
            }
        };
        assert_eq!(
            served, !required,
            "no client certificate (required: {required})"
        );
        if !required {
            assert!(
                up.last().headers.get("x-client-cert-subject").is_none(),
                "forged copy removed"
            );
        }
    }
}

/// An HTTPS upstream with a certificate from `ca` for `backend.test`,
/// answering `https <version>`; with `client_ca`, client certificates from
/// it are required. Returns its address and a connection counter.
async fn https_upstream(
    ca: &TestCa,
    client_ca: Option<&TestCa>,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = ca.leaf(&["backend.test"], false);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        Some(cc) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(cc.pem().as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .unwrap(),
            )
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(chain, key).unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = Arc::clone(&conns);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let body = format!("https {:?}", req.version());
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::from(body)),
                        ))
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, conns)
}

fn https_config(dir: &std::path::Path, addr: SocketAddr, tls: &str, protocol: &str) -> String {
    let _ = dir;
    format!(
        "upstreams:\n  app: {{ endpoints: [\"https://{addr}\"], protocol: {protocol}, tls: {tls} }}\nroutes:\n  - {{ name: app, match: {{ path_prefix: / }}, upstream: app }}\n"
    )
}

#[tokio::test]
async fn https_upstreams_are_verified_pooled_and_speak_h2_by_alpn() {
    let ca = TestCa::new("internal CA");
    let (addr, conns) = https_upstream(&ca, None).await;
    let path = config_path();
    let dir = path.parent().unwrap().to_owned();
    std::fs::write(dir.join("internal-ca.pem"), ca.pem()).unwrap();
    let ok_tls = "{ ca_file: internal-ca.pem, server_name: backend.test }";
    std::fs::write(
        &path,
        with_server(&https_config(&dir, addr, ok_tls, "http1")),
    )
    .unwrap();
    let gw = start_path(path.clone(), false).await;
    let c = client();
    let url = format!("http://{}/x", gw.listen[0]);
    for _ in 0..5 {
        let g = get(&c, &url).await;
        assert_eq!((g.status, g.text()), (200, "https HTTP/1.1".to_owned()));
    }
    assert_eq!(
        conns.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one pooled TLS connection"
    );
    // h2 over TLS by ALPN.
    std::fs::write(&path, with_server(&https_config(&dir, addr, ok_tls, "h2"))).unwrap();
    gw.reloader.reload_async("test").await.unwrap();
    let g = get(&c, &url).await;
    assert_eq!((g.status, g.text()), (200, "https HTTP/2.0".to_owned()));
    // The wrong name is refused: 502, never served.
    let wrong = "{ ca_file: internal-ca.pem, server_name: other.test }";
    std::fs::write(
        &path,
        with_server(&https_config(&dir, addr, wrong, "http1")),
    )
    .unwrap();
    gw.reloader.reload_async("test").await.unwrap();
    let g = get(&c, &url).await;
    assert_eq!(g.status, 502, "{}", g.text());
    // Without the private CA (webpki roots only): refused too.
    std::fs::write(
        &path,
        with_server(&https_config(
            &dir,
            addr,
            "{ server_name: backend.test }",
            "http1",
        )),
    )
    .unwrap();
    gw.reloader.reload_async("test").await.unwrap();
    assert_eq!(get(&c, &url).await.status, 502);
    // insecure_skip_verify accepts it (with a warning at load).
    std::fs::write(
        &path,
        with_server(&https_config(
            &dir,
            addr,
            "{ insecure_skip_verify: true }",
            "http1",
        )),
    )
    .unwrap();
    gw.reloader.reload_async("test").await.unwrap();
    assert_eq!(get(&c, &url).await.status, 200);
}

#[tokio::test]
async fn upstream_mtls_presents_the_gateway_certificate() {
    let ca = TestCa::new("internal CA");
    let gw_ca = TestCa::new("gateway client CA");
    let (addr, _) = https_upstream(&ca, Some(&gw_ca)).await;
    let path = config_path();
    let dir = path.parent().unwrap().to_owned();
    std::fs::write(dir.join("internal-ca.pem"), ca.pem()).unwrap();
    let (c_pem, k_pem) = gw_ca.leaf(&["gateway.test"], false);
    std::fs::write(dir.join("gw.pem"), c_pem).unwrap();
    std::fs::write(dir.join("gw.key"), k_pem).unwrap();
    let with_cert = "{ ca_file: internal-ca.pem, server_name: backend.test, client_cert: { cert: gw.pem, key: gw.key } }";
    std::fs::write(
        &path,
        with_server(&https_config(&dir, addr, with_cert, "http1")),
    )
    .unwrap();
    let gw = start_path(path.clone(), false).await;
    let c = client();
    let url = format!("http://{}/x", gw.listen[0]);
    assert_eq!(get(&c, &url).await.status, 200);
    let without = "{ ca_file: internal-ca.pem, server_name: backend.test }";
    std::fs::write(
        &path,
        with_server(&https_config(&dir, addr, without, "http1")),
    )
    .unwrap();
    gw.reloader.reload_async("test").await.unwrap();
    assert_eq!(
        get(&c, &url).await.status,
        502,
        "the upstream wants a client certificate"
    );
}

#[tokio::test]
async fn replacing_a_certificate_in_its_own_directory_is_picked_up_by_the_watcher() {
    let up = Upstream::start("app").await;
    let ca = TestCa::new("first CA");
    let config = config_path();
    let certs = config.parent().unwrap().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (c, k) = ca.leaf(&["a.test"], false);
    std::fs::write(certs.join("a.pem"), c).unwrap();
    std::fs::write(certs.join("a.key"), k).unwrap();
    let yaml = format!(
        "server:\n  listen: [\"127.0.0.1:0\"]\n  tls_listen: [\"127.0.0.1:0\"]\n  admin_listen: \"127.0.0.1:0\"\n  access_log: {{ enabled: false }}\n  tls:\n    certificates: [{{ cert: certs/a.pem, key: certs/a.key }}]\n{}",
        proxy_all(&up.url())
    );
    std::fs::write(&config, yaml).unwrap();
    let gw = start_path(config, true).await;
    let addr = gw.tls_listen[0];
    assert!(
        handshake(addr, ca.client(&["http/1.1"]), "a.test")
            .await
            .is_ok()
    );
    // cert-manager style: write new files, rename into place.
    let ca2 = TestCa::new("second CA");
    let (c, k) = ca2.leaf(&["a.test"], false);
    std::fs::write(certs.join("a.key.tmp"), k).unwrap();
    std::fs::write(certs.join("a.pem.tmp"), c).unwrap();
    std::fs::rename(certs.join("a.key.tmp"), certs.join("a.key")).unwrap();
    std::fs::rename(certs.join("a.pem.tmp"), certs.join("a.pem")).unwrap();
    let mut swapped = false;
    for _ in 0..250 {
        if handshake(addr, ca2.client(&["http/1.1"]), "a.test")
            .await
            .is_ok()
        {
            swapped = true;
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert!(swapped, "the new certificate is served without a restart");
}

/// A TLS front for a plain test upstream: each connection's handshake is
/// answered with a `backend.test` certificate from `ca`, then its bytes are
/// copied both ways to `plain`.
async fn tls_front(ca: &TestCa, plain: SocketAddr) -> SocketAddr {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = ca.leaf(&["backend.test"], false);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let Ok(mut back) = tokio::net::TcpStream::connect(plain).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut back).await;
            });
        }
    });
    addr
}

/// HTTP/1.1 to `https://` upstreams runs on the same codec as plain ones:
/// request bodies, streamed responses, pooling and WebSocket upgrades all
/// work over TLS (an upgrade to an https upstream used to get 502).
#[tokio::test]
async fn https_upstreams_share_the_http1_stack_upgrades_included() {
    let ca = TestCa::new("internal CA");
    let up = Upstream::start("app").await;
    let front = tls_front(&ca, up.addr).await;
    let path = config_path();
    let dir = path.parent().unwrap().to_owned();
    std::fs::write(dir.join("internal-ca.pem"), ca.pem()).unwrap();
    std::fs::write(
        &path,
        with_server(&https_config(
            &dir,
            front,
            "{ ca_file: internal-ca.pem, server_name: backend.test }",
            "http1",
        )),
    )
    .unwrap();
    let gw = start_path(path, false).await;
    let gw_addr = gw.listen[0];
    let c = client();
    let base = format!("http://{gw_addr}");
    let g = post(&c, &format!("{base}/echo"), "over tls").await;
    assert_eq!((g.status, g.text()), (200, "over tls".to_owned()));
    let n = download_x(&c, &format!("{base}/bytes/300000")).await;
    assert_eq!(n, 300_000);
    let g = get(&c, &format!("{base}/x")).await;
    assert_eq!((g.status, g.text()), (200, "app".to_owned()));
    // The connections went back to the pool: one or two (the download and
    // the POST may have overlapped), never one per request.
    let idle = gw.live.load().upstreams["app"].endpoints[0]
        .pool
        .idle_count();
    assert!((1..=2).contains(&idle), "idle TLS connections: {idle}");

    websocket_echoes(gw_addr, &up).await;
}
