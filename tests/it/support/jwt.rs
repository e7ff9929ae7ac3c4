//! Token makers (RSA, EC P-256, Ed25519 keys generated per test; HMAC
//! secrets) and a JWKS server on 127.0.0.1 that can rotate keys and counts
//! its fetches.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A signing key with its public forms.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    pub enc: EncodingKey,
    /// Public JWK (with kid and alg), for JWKS documents.
    pub jwk: Value,
    /// Public key PEM (asymmetric keys).
    pub public_pem: String,
}

impl SigningKey {
    fn finish(kid: &str, alg: Algorithm, enc: EncodingKey, public_pem: String) -> Self {
        let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&enc, alg).unwrap()).unwrap();
        jwk["kid"] = json!(kid);
        SigningKey {
            kid: kid.to_owned(),
            alg,
            enc,
            jwk,
            public_pem,
        }
    }

    pub fn rsa(kid: &str) -> Self {
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der: Pkcs8V1Der = kp.as_der().unwrap();
        let private = pem("PRIVATE KEY", der.as_ref());
        let public: PublicKeyX509Der = kp.public_key().as_der().unwrap();
        let enc = EncodingKey::from_rsa_pem(private.as_bytes()).unwrap();
        Self::finish(
            kid,
            Algorithm::RS256,
            enc,
            pem("PUBLIC KEY", public.as_ref()),
        )
    }

    /// An RSA key that signs with `alg` (RS* or PS*).
    pub fn rsa_with(kid: &str, alg: Algorithm) -> Self {
        let mut k = Self::rsa(kid);
        k.alg = alg;
        k.jwk["alg"] = json!(format!("{alg:?}"));
        k
    }

    pub fn ec(kid: &str) -> Self {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let der = kp.to_pkcs8v1().unwrap();
        let public: PublicKeyX509Der = kp.public_key().as_der().unwrap();
        let enc = EncodingKey::from_ec_der(der.as_ref());
        Self::finish(
            kid,
            Algorithm::ES256,
            enc,
            pem("PUBLIC KEY", public.as_ref()),
        )
    }

    pub fn ed(kid: &str) -> Self {
        let kp = aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap();
        let der = kp.to_pkcs8().unwrap();
        let public: PublicKeyX509Der = kp.public_key().as_der().unwrap();
        let enc = EncodingKey::from_ed_der(der.as_ref());
        // jsonwebtoken cannot derive an OKP JWK: written by hand.
        let x = URL_SAFE_NO_PAD.encode(kp.public_key().as_ref());
        SigningKey {
            kid: kid.to_owned(),
            alg: Algorithm::EdDSA,
            enc,
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid}),
            public_pem: pem("PUBLIC KEY", public.as_ref()),
        }
    }

    pub fn hmac(secret: &str) -> Self {
        SigningKey {
            kid: String::new(),
            alg: Algorithm::HS256,
            enc: EncodingKey::from_secret(secret.as_bytes()),
            jwk: Value::Null,
            public_pem: String::new(),
        }
    }

    /// A token with this key's kid (when it has one) and `claims`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        if !self.kid.is_empty() {
            h.kid = Some(self.kid.clone());
        }
        self.sign_with(h, claims)
    }

    pub fn sign_with(&self, header: Header, claims: &Value) -> String {
        jsonwebtoken::encode(&header, claims, &self.enc).unwrap()
    }
}

/// A token with a hand-written header, signed by `key` (for headers
/// jsonwebtoken would not write, such as `crit` or `alg: none`).
pub fn sign_raw(key: &SigningKey, header: &Value, claims: &Value) -> String {
    let h = URL_SAFE_NO_PAD.encode(header.to_string());
    let c = URL_SAFE_NO_PAD.encode(claims.to_string());
    let message = format!("{h}.{c}");
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key.enc, key.alg).unwrap();
    format!("{message}.{sig}")
}

/// Standard claims valid for an hour.
pub fn claims(iss: &str, aud: &str) -> Value {
    json!({
        "iss": iss,
        "aud": aud,
        "sub": "user-1",
        "tenant": "acme",
        "exp": now() + 3600,
        "iat": now(),
    })
}

pub fn jwks(keys: &[&SigningKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
}

/// A JWKS (and OpenID discovery) server.
pub struct JwksServer {
    pub addr: SocketAddr,
    pub doc: Arc<Mutex<Value>>,
    pub fetches: Arc<AtomicU64>,
    pub cache_control: Arc<Mutex<Option<String>>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl JwksServer {
    pub async fn start(doc: Value) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, doc, None)
    }

    /// Over TLS with `tls` (https://127.0.0.1:PORT/jwks).
    pub async fn start_tls(doc: Value, tls: Arc<rustls::ServerConfig>) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, doc, Some(tls))
    }

    /// On a port chosen earlier (for "down at start, then up").
    pub async fn start_on(addr: SocketAddr, doc: Value) -> JwksServer {
        let listener = TcpListener::bind(addr).await.unwrap();
        Self::serve(listener, doc, None)
    }

    fn serve(
        listener: TcpListener,
        doc: Value,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> JwksServer {
        let addr = listener.local_addr().unwrap();
        let doc = Arc::new(Mutex::new(doc));
        let fetches = Arc::new(AtomicU64::new(0));
        let cache_control: Arc<Mutex<Option<String>>> = Arc::default();
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let (d, f, cc) = (doc.clone(), fetches.clone(), cache_control.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = stop_rx.changed() => return,
                };
                let (d, f, cc) = (d.clone(), f.clone(), cc.clone());
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (d, f, cc) = (d.clone(), f.clone(), cc.clone());
                        async move {
                            let path = req.uri().path().to_owned();
                            let mut resp = if path == "/.well-known/openid-configuration" {
                                let host = req
                                    .headers()
                                    .get("host")
                                    .and_then(|h| h.to_str().ok())
                                    .unwrap_or("")
                                    .to_owned();
                                Response::new(Full::new(Bytes::from(
                                    json!({ "issuer": format!("http://{host}"), "jwks_uri": format!("http://{host}/jwks") })
                                        .to_string(),
                                )))
                            } else {
                                f.fetch_add(1, Ordering::SeqCst);
                                let body = d.lock().unwrap().to_string();
                                Response::new(Full::new(Bytes::from(body)))
                            };
                            if let Some(c) = cc.lock().unwrap().clone() {
                                resp.headers_mut()
                                    .insert("cache-control", c.parse().unwrap());
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(cfg) => {
                            if let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(stream).await
                            {
                                let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        JwksServer {
            addr,
            doc,
            fetches,
            cache_control,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    pub fn https_url(&self) -> String {
        format!("https://{}/jwks", self.addr)
    }

    pub fn set(&self, doc: Value) {
        *self.doc.lock().unwrap() = doc;
    }

    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}
