//! `server.ip` and `routes[i].ip`: the lists compiled into address sets.
//! List files are read relative to the config, and their bytes are part
//! of the config version, so an edited list is a change on reload.

use std::path::Path;

use super::Errors;
use crate::access::ip::{IpRules, IpSet, parse_list, parse_net};
use crate::config::spec::IpRulesSpec;
use crate::config::units::Str;

/// The rules of `spec` at field path `p`.
pub(super) fn ip_rules(
    spec: &IpRulesSpec,
    p: &str,
    base: &Path,
    errs: &mut Errors,
    files_hash: &mut u64,
) -> IpRules {
    let mut list = |entries: &[Str], file: &Option<Str>, field: &str| {
        let mut nets = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            match parse_net(e.as_str()) {
                Some(n) => nets.push(n),
                None => errs.push(
                    format!("{p}.{field}[{i}]"),
                    format!("`{e}` is not a CIDR or address"),
                ),
            }
        }
        let from_file = file.is_some();
        if let Some(f) = file {
            let path = format!("{p}.{field}_file");
            if let Some(bytes) = super::auth::read(base, f.as_str(), &path, errs, files_hash) {
                match parse_list(&String::from_utf8_lossy(&bytes)) {
                    Ok(more) => nets.extend(more),
                    Err(m) => errs.push(path, format!("{f}: {m}")),
                }
            }
        }
        (nets, from_file)
    };
    let (allow, allow_file) = list(&spec.allow, &spec.allow_file, "allow");
    let (deny, _) = list(&spec.deny, &spec.deny_file, "deny");
    IpRules {
        // An allow file that lists nothing still means "only these".
        allow: (!allow.is_empty() || allow_file).then(|| IpSet::new(allow)),
        deny: IpSet::new(deny),
    }
}
