//! TLS to upstreams (`https://` endpoints): the rustls client config an
//! upstream's connections use, verified against its `ca_file` or the
//! webpki roots, with an optional client certificate (mTLS) and ALPN for
//! the upstream's protocol.

use std::sync::Arc;

use super::UpstreamTlsError;

/// The files an upstream's TLS reads, already loaded.
pub(crate) struct UpstreamFiles<'a> {
    /// `ca_file` (PEM); `None`: the webpki roots.
    pub ca: Option<&'a [u8]>,
    /// `client_cert` (PEM certificate chain, PEM key).
    pub client: Option<(&'a [u8], &'a [u8])>,
}

/// Accepts any server certificate (`insecure_skip_verify`).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The rustls client config of an upstream.
pub(crate) fn client_config(
    files: UpstreamFiles<'_>,
    insecure_skip_verify: bool,
    h2: bool,
) -> Result<Arc<rustls::ClientConfig>, UpstreamTlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamTlsError::new("", e.to_string()))?;
    let builder = if insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match files.ca {
            Some(pem) => {
                for c in CertificateDer::pem_slice_iter(pem) {
                    match c
                        .map_err(|e| e.to_string())
                        .and_then(|c| roots.add(c).map_err(|e| e.to_string()))
                    {
                        Ok(()) => {}
                        Err(e) => {
                            return Err(UpstreamTlsError::new(
                                "ca_file",
                                format!("not a usable CA file: {e}"),
                            ));
                        }
                    }
                }
                if roots.is_empty() {
                    return Err(UpstreamTlsError::new(
                        "ca_file",
                        "no certificate in the file".to_owned(),
                    ));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots)
    };
    let mut cfg = match files.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain: Result<Vec<CertificateDer<'static>>, _> =
                CertificateDer::pem_slice_iter(cert).collect();
            let key = PrivateKeyDer::from_pem_slice(key);
            match (chain, key) {
                (Ok(chain), Ok(key)) if !chain.is_empty() => {
                    match builder.with_client_auth_cert(chain, key) {
                        Ok(c) => c,
                        Err(e) => {
                            return Err(UpstreamTlsError::new(
                                "client_cert",
                                format!("unusable: {e}"),
                            ));
                        }
                    }
                }
                _ => {
                    return Err(UpstreamTlsError::new(
                        "client_cert",
                        "not a PEM certificate and key".to_owned(),
                    ));
                }
            }
        }
    };
    cfg.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Ok(Arc::new(cfg))
}
