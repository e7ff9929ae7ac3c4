//! TLS: termination for clients (`acceptor`: certificates loaded and
//! checked when the config is compiled, picked per handshake by SNI) and
//! origination to `https://` upstreams (`upstream`). rustls with the
//! aws-lc-rs provider throughout; no OpenSSL.

mod acceptor;
mod error;
mod upstream;

pub(crate) use acceptor::{SniResolver, client_verifier, load, server_config, subject};
pub(crate) use error::UpstreamTlsError;
pub(crate) use upstream::{UpstreamFiles, client_config};
