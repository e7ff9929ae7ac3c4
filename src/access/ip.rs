//! IP allow and deny lists: sets of CIDRs merged into sorted, disjoint
//! address ranges, so a lookup is one binary search (about 17 steps for
//! 100,000 CIDRs) whatever the list's size.

use std::net::IpAddr;

use ipnet::IpNet;

/// A set of addresses, from CIDRs (IPv4 and IPv6 kept apart; an
/// IPv4-mapped IPv6 address is looked up as IPv4).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IpSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

/// Sorts inclusive ranges and merges those that overlap or touch.
fn merged<T: Ord + Copy>(mut ranges: Vec<(T, T)>, next: impl Fn(T) -> Option<T>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        if let Some(last) = out.last_mut()
            && next(last.1).is_none_or(|n| lo <= n)
        {
            last.1 = last.1.max(hi);
            continue;
        }
        out.push((lo, hi));
    }
    out.shrink_to_fit();
    out
}

fn contains<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    let i = ranges.partition_point(|r| r.1 < x);
    ranges.get(i).is_some_and(|r| r.0 <= x)
}

impl IpSet {
    /// The set of `nets`.
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for n in nets {
            match n {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        Self {
            v4: merged(v4, |x| x.checked_add(1)),
            v6: merged(v6, |x| x.checked_add(1)),
        }
    }

    /// True when `ip` is in the set.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(a) => contains(&self.v4, u32::from(a)),
            IpAddr::V6(a) => contains(&self.v6, u128::from(a)),
        }
    }

    /// True when the set holds no address.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Disjoint ranges held (after merging).
    pub fn ranges(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

/// A CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a single address.
pub fn parse_net(text: &str) -> Option<IpNet> {
    let t = text.trim();
    t.parse::<IpNet>()
        .ok()
        .or_else(|| t.parse::<IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

/// The CIDRs of a list file: one per line; blank lines and `#` comments
/// are skipped. A line that is no CIDR is an error naming its line.
pub fn parse_list(text: &str) -> Result<Vec<IpNet>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        match parse_net(entry) {
            Some(n) => out.push(n),
            None => {
                return Err(format!(
                    "line {}: `{entry}` is not a CIDR or address",
                    i + 1
                ));
            }
        }
    }
    Ok(out)
}

/// Allow and deny lists (`server.ip`, `routes[i].ip`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IpRules {
    /// When set, only these addresses are let through.
    pub allow: Option<IpSet>,
    /// Never let through (deny wins over allow).
    pub deny: IpSet,
}

impl IpRules {
    /// True when `ip` may pass.
    pub fn permits(&self, ip: IpAddr) -> bool {
        !self.deny.contains(ip) && self.allow.as_ref().is_none_or(|a| a.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(nets: &[&str]) -> IpSet {
        IpSet::new(nets.iter().map(|n| parse_net(n).unwrap()))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_merge_into_disjoint_ranges_and_lookups_find_their_edges() {
        let s = set(&[
            "10.0.0.0/24",
            "10.0.1.0/24",
            "10.0.0.128/25",
            "192.168.1.7",
            "2001:db8::/32",
        ]);
        assert_eq!(
            s.ranges(),
            3,
            "10.0.0.0/24 and 10.0.1.0/24 touch; the /25 is inside"
        );
        for (a, inside) in [
            ("10.0.0.0", true),
            ("10.0.1.255", true),
            ("10.0.2.0", false),
            ("9.255.255.255", false),
            ("192.168.1.7", true),
            ("192.168.1.8", false),
            ("2001:db8:ffff::1", true),
            ("2001:db9::", false),
            ("::ffff:10.0.0.9", true),
        ] {
            assert_eq!(s.contains(ip(a)), inside, "{a}");
        }
        let all = set(&["0.0.0.0/0", "::/0"]);
        assert!(all.contains(ip("255.255.255.255")) && all.contains(ip("ffff::1")));
        assert!(!IpSet::default().contains(ip("1.2.3.4")));
    }

    #[test]
    fn deny_wins_and_an_allow_list_excludes_the_rest() {
        let r = IpRules {
            allow: Some(set(&["10.0.0.0/8"])),
            deny: set(&["10.9.0.0/16"]),
        };
        assert!(r.permits(ip("10.1.2.3")));
        assert!(!r.permits(ip("10.9.0.1")), "deny wins");
        assert!(!r.permits(ip("11.0.0.1")), "not allowed");
        let open = IpRules::default();
        assert!(open.permits(ip("1.2.3.4")));
    }

    #[test]
    fn list_files_skip_comments_and_name_a_bad_line() {
        let nets = parse_list("# office\n10.0.0.0/8  # vpn\n\n2001:db8::1\n").unwrap();
        assert_eq!(nets.len(), 2);
        assert_eq!(
            parse_list("10.0.0.0/8\nnot-an-ip\n").unwrap_err(),
            "line 2: `not-an-ip` is not a CIDR or address"
        );
    }

    #[test]
    fn a_brute_force_check_agrees_with_the_ranges() {
        let nets: Vec<IpNet> = (0..500)
            .map(|_| {
                let a = std::net::Ipv4Addr::from(fastrand::u32(..));
                IpNet::V4(
                    ipnet::Ipv4Net::new(a, fastrand::u8(8..=32))
                        .unwrap()
                        .trunc(),
                )
            })
            .collect();
        let s = IpSet::new(nets.iter().copied());
        for _ in 0..20_000 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(fastrand::u32(..)));
            assert_eq!(s.contains(a), nets.iter().any(|n| n.contains(&a)), "{a}");
        }
        for n in &nets {
            assert!(s.contains(n.network()) && s.contains(n.broadcast()));
        }
    }
}
