//! `server.admin`: the admin listener's address, its bearer token and its
//! connection limits. A non-loopback address without a token is refused
//! unless `allow_public_without_token` says otherwise.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use super::Errors;
use crate::config::spec::Spec;

/// The admin token (from `token` or `token_file`); checks the admin
/// settings on the way. The token file's bytes are part of the config
/// version, so a new token with an unchanged YAML is a change on reload.
pub(super) fn token(
    spec: &Spec,
    base: &Path,
    errs: &mut Errors,
    files_hash: &mut u64,
) -> Option<Arc<[u8]>> {
    let s = &spec.server;
    let a = &s.admin;
    let p = "server.admin";
    if let Some(l) = &a.listen
        && l.as_str().parse::<SocketAddr>().is_err()
    {
        errs.push(
            format!("{p}.listen"),
            format!("`{l}` is not an address such as 127.0.0.1:9901"),
        );
    }
    if !(1..=10_000).contains(&a.max_connections) {
        errs.push(format!("{p}.max_connections"), "must be from 1 to 10000");
    }
    if a.header_read_timeout.0.is_zero() {
        errs.push(format!("{p}.header_read_timeout"), "must be more than zero");
    }
    let token: Option<Arc<[u8]>> = match (&a.token, &a.token_file) {
        (Some(_), Some(_)) => {
            errs.push(format!("{p}.token"), "give one of `token` and `token_file`");
            None
        }
        (Some(t), None) => Some(t.as_str().as_bytes().into()),
        (None, Some(f)) => super::auth::read(
            base,
            f.as_str(),
            &format!("{p}.token_file"),
            errs,
            files_hash,
        )
        .map(|bytes| bytes.trim_ascii().into()),
        (None, None) => None,
    };
    if token.as_ref().is_some_and(|t| t.len() < 16) {
        errs.push(
            format!("{p}.token"),
            "an admin token must be at least 16 bytes",
        );
    }
    let public = s
        .admin_address()
        .as_str()
        .parse::<SocketAddr>()
        .is_ok_and(|addr| !addr.ip().is_loopback());
    if public && token.is_none() && !a.allow_public_without_token {
        errs.push(
            format!("{p}.token"),
            format!(
                "the admin API listens on `{}`, which is not a loopback address, without a token: anyone who reaches it could reload the config and purge the cache. Set `token` (or `token_file`), or `allow_public_without_token: true` if a network policy guards it",
                s.admin_address()
            ),
        );
    }
    token
}
