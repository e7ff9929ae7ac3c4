//! Segment tries for prefix and template paths: lookup cost follows the
//! depth of the request path, not the number of routes.

use std::collections::HashMap as StdHashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// FNV-1a for the route table's maps. Their keys (hosts, path segments)
/// come from the config; requests only look up, so no client can flood a
/// map with colliding keys, and a fast unseeded hash is safe.
#[derive(Default)]
pub struct Fnv(u64);

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map hashed with [`Fnv`].
pub type HashMap<K, V> = StdHashMap<K, V, BuildHasherDefault<Fnv>>;

/// Deepest path (in segments) a prefix or template route may have.
pub const MAX_SEGMENTS: usize = 64;

/// Iterates the non-empty segments of a normalized path.
pub fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

/// Prefixes matched on segment boundaries; longest first.
#[derive(Debug, Default)]
pub struct PrefixTrie {
    root: PrefixNode,
}

#[derive(Debug, Default)]
struct PrefixNode {
    children: HashMap<Box<str>, PrefixNode>,
    routes: Vec<usize>,
}

impl PrefixTrie {
    /// Adds route `id` under `prefix` (e.g. `/api/users`).
    pub fn insert(&mut self, prefix: &str, id: usize) {
        let mut node = &mut self.root;
        for seg in segments(prefix) {
            node = node.children.entry(seg.into()).or_default();
        }
        node.routes.push(id);
    }

    /// Calls `visit` for each route whose prefix covers `path`, longest
    /// prefix first, declared order within one prefix; stops when `visit`
    /// returns true.
    pub fn visit(&self, path: &str, mut visit: impl FnMut(usize) -> bool) -> bool {
        walk_prefix(&self.root, &mut segments(path), 0, &mut visit)
    }
}

/// Descends as far as the path's segments go, then offers each node's
/// routes on the way back up: longest prefix first, with no buffer.
fn walk_prefix<'p>(
    node: &PrefixNode,
    segs: &mut impl Iterator<Item = &'p str>,
    depth: usize,
    visit: &mut impl FnMut(usize) -> bool,
) -> bool {
    if depth < MAX_SEGMENTS
        && let Some(seg) = segs.next()
        && let Some(next) = node.children.get(seg)
        && walk_prefix(next, segs, depth + 1, visit)
    {
        return true;
    }
    node.routes.iter().any(|&id| visit(id))
}

/// Path templates such as `/users/{id}/orders`; literal segments are tried
/// before `{param}` ones, so the more literal template wins.
#[derive(Debug, Default)]
pub struct TemplateTrie {
    root: TemplateNode,
}

#[derive(Debug, Default)]
struct TemplateNode {
    literal: HashMap<Box<str>, TemplateNode>,
    param: Option<Box<TemplateNode>>,
    routes: Vec<usize>,
}

/// True when `segment` is a `{name}` placeholder.
pub fn is_param(segment: &str) -> bool {
    segment.len() > 2 && segment.starts_with('{') && segment.ends_with('}')
}

impl TemplateTrie {
    /// Adds route `id` for `template`.
    pub fn insert(&mut self, template: &str, id: usize) {
        let mut node = &mut self.root;
        for seg in segments(template) {
            node = if is_param(seg) {
                node.param.get_or_insert_with(Box::default)
            } else {
                node.literal.entry(seg.into()).or_default()
            };
        }
        node.routes.push(id);
    }

    /// Calls `visit` for each template matching `path` (same segment count,
    /// no trailing slash difference); stops when `visit` returns true.
    pub fn visit(&self, path: &str, mut visit: impl FnMut(usize) -> bool) -> bool {
        let r = &self.root;
        // Most tables have no templates: skip the segment split entirely.
        if (r.literal.is_empty() && r.param.is_none() && r.routes.is_empty())
            || (path.len() > 1 && path.ends_with('/'))
        {
            return false;
        }
        let mut segs = [""; MAX_SEGMENTS];
        let mut count = 0;
        for (n, s) in path.split('/').skip(1).enumerate() {
            if n == MAX_SEGMENTS || s.is_empty() {
                return false;
            }
            segs[n] = s;
            count = n + 1;
        }
        walk(&self.root, &segs[..count], &mut visit)
    }
}

fn walk(node: &TemplateNode, rest: &[&str], visit: &mut impl FnMut(usize) -> bool) -> bool {
    let Some((first, tail)) = rest.split_first() else {
        return node.routes.iter().any(|&id| visit(id));
    };
    if let Some(next) = node.literal.get(*first)
        && walk(next, tail, visit)
    {
        return true;
    }
    if let Some(next) = &node.param
        && walk(next, tail, visit)
    {
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixes(t: &PrefixTrie, path: &str) -> Vec<usize> {
        let mut v = Vec::new();
        t.visit(path, |id| {
            v.push(id);
            false
        });
        v
    }

    #[test]
    fn prefix_matches_on_segment_boundaries_longest_first() {
        let mut t = PrefixTrie::default();
        t.insert("/", 0);
        t.insert("/api", 1);
        t.insert("/api/users", 2);
        assert_eq!(prefixes(&t, "/api/users"), vec![2, 1, 0]);
        assert_eq!(prefixes(&t, "/api/users/"), vec![2, 1, 0]);
        assert_eq!(prefixes(&t, "/api/users/7"), vec![2, 1, 0]);
        assert_eq!(prefixes(&t, "/api/usersX"), vec![1, 0]);
        assert_eq!(prefixes(&t, "/other"), vec![0]);
    }

    #[test]
    fn templates_prefer_literal_segments() {
        let mut t = TemplateTrie::default();
        t.insert("/users/{id}/orders", 0);
        t.insert("/users/me/orders", 1);
        let mut v = Vec::new();
        t.visit("/users/me/orders", |id| {
            v.push(id);
            false
        });
        assert_eq!(v, vec![1, 0]);
        v.clear();
        t.visit("/users/7/orders", |id| {
            v.push(id);
            false
        });
        assert_eq!(v, vec![0]);
        assert!(!t.visit("/users/7/orders/", |_| true));
        assert!(!t.visit("/users/7", |_| true));
    }
}
