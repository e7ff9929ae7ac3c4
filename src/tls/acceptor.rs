//! TLS termination: certificates loaded and checked when the config is
//! compiled, picked per handshake by SNI (exact host before wildcard, then
//! the default), in a rustls `ServerConfig` that lives in the snapshot. A
//! reload that changes a certificate file takes effect for new handshakes;
//! open connections keep the session they have.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::observability::metrics::metrics;

/// One certificate with its key, ready for handshakes.
#[derive(Debug)]
pub(crate) struct Loaded {
    /// The certificate file (the `name` label of the expiry metric).
    pub name: String,
    /// Host names it serves: from `hosts`, or its DNS SANs.
    pub hosts: Vec<String>,
    /// Chain and signing key.
    pub key: Arc<CertifiedKey>,
}

/// Reads and checks a certificate chain and its key (PEM: RSA, ECDSA or
/// Ed25519): the key must match the certificate, and the certificate must
/// not be expired.
pub(crate) fn load(
    name: &str,
    cert_pem: &[u8],
    key_pem: &[u8],
    hosts: &[String],
) -> Result<Loaded, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    let leaf = certs.first().ok_or("no certificate in the file")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("no private key: {e}"))?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    let certified = CertifiedKey::new(certs.clone(), signing);
    certified
        .keys_match()
        .map_err(|_| "the private key does not match the certificate".to_owned())?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let not_after = parsed.validity().not_after.timestamp();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if not_after < now {
        return Err("the certificate has expired".to_owned());
    }
    let hosts = if hosts.is_empty() {
        let mut from_sans = Vec::new();
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for n in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                    from_sans.push(d.to_ascii_lowercase());
                }
            }
        }
        from_sans
    } else {
        hosts.iter().map(|h| h.to_ascii_lowercase()).collect()
    };
    metrics()
        .tls_certificate_expiry
        .with_label_values(&[name])
        .set(not_after);
    Ok(Loaded {
        name: name.to_owned(),
        hosts,
        key: Arc::new(certified),
    })
}

/// Picks the certificate for a handshake by SNI.
#[derive(Debug, Default)]
pub(crate) struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    /// A resolver over `certs` (first listed wins a host) with `default`
    /// for handshakes without SNI or with an unknown name.
    pub(crate) fn new(certs: &[Loaded], default: Option<Arc<CertifiedKey>>) -> Self {
        let mut r = SniResolver {
            default,
            ..Self::default()
        };
        for c in certs {
            for h in &c.hosts {
                let map = match h.strip_prefix("*.") {
                    Some(suffix) => r.wildcard.entry(suffix.to_owned()),
                    None => r.exact.entry(h.clone()),
                };
                map.or_insert_with(|| Arc::clone(&c.key));
            }
        }
        r
    }

    /// The certificate for `name` (no default).
    fn by_name(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Some(Arc::clone(k));
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent).cloned()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        hello
            .server_name()
            .and_then(|n| self.by_name(n))
            .or_else(|| self.default.clone())
    }
}

/// A verifier of client certificates chaining to the CAs in `ca_pem`;
/// with `required` false, clients without a certificate are let in too.
pub(crate) fn client_verifier(
    ca_pem: &[u8],
    required: bool,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        let c = c.map_err(|e| format!("not a PEM certificate file: {e}"))?;
        roots
            .add(c)
            .map_err(|e| format!("certificate not usable as a CA: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no certificate in the file".to_owned());
    }
    let b = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots));
    let b = if required {
        b
    } else {
        b.allow_unauthenticated()
    };
    b.build().map_err(|e| e.to_string())
}

/// The subject of a verified client certificate, as text.
pub(crate) fn subject(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.subject().to_string())
}

/// The server config: TLS 1.2 (unless `min13`) and 1.3, the resolver,
/// ALPN, and client certificates when `client` is set.
pub(crate) fn server_config(
    resolver: SniResolver,
    min13: bool,
    alpn: &[String],
    client: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    resumption: bool,
) -> Arc<ServerConfig> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = if min13 {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = ServerConfig::builder_with_protocol_versions(versions);
    let builder = match client {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    if !resumption {
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
    }
    Arc::new(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_win_over_wildcards() {
        let key = |n: u8| {
            Arc::new(CertifiedKey::new(
                vec![CertificateDer::from(vec![n])],
                rustls::crypto::aws_lc_rs::sign::any_supported_type(
                    &PrivateKeyDer::from_pem_slice(
                        rcgen::KeyPair::generate()
                            .unwrap()
                            .serialize_pem()
                            .as_bytes(),
                    )
                    .unwrap(),
                )
                .unwrap(),
            ))
        };
        let loaded = |hosts: &[&str], n: u8| Loaded {
            name: String::new(),
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            key: key(n),
        };
        let r = SniResolver::new(
            &[
                loaded(&["*.example.com"], 1),
                loaded(&["api.example.com"], 2),
            ],
            None,
        );
        let first = |n: &str| r.by_name(n).map(|k| k.cert[0].as_ref()[0]);
        assert_eq!(first("api.example.com"), Some(2));
        assert_eq!(first("API.Example.com."), Some(2));
        assert_eq!(first("www.example.com"), Some(1));
        assert_eq!(first("a.b.example.com"), None, "one label only");
        assert_eq!(first("example.com"), None);
    }
}
