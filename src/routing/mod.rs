//! Route matching: stage 2 of the pipeline.
//!
//! The route table is compiled once per config into a host map (exact names,
//! then wildcard suffixes longest first, then routes without hosts), and per
//! host group into an exact-path map, a template trie, a prefix trie and a
//! list of regexes. Precedence, one rule for every request:
//!
//! 1. host group: exact host > wildcard host (longest suffix) > no host;
//! 2. within a group: exact path > template > longest prefix > regex (in
//!    declared order);
//! 3. among routes of equal rank, declared order; the first whose method,
//!    header and query constraints hold wins.
//!
//! A group with no taker falls through to the next. When no route takes the
//! request but some matched host and path and failed only on method, the
//! answer is 405 with those routes' methods in `Allow`; otherwise 404.
//!
//! The routing module knows routes only by index; the snapshot maps indexes
//! to what a route does.

pub mod error;
pub mod explain;
pub mod matchers;
pub mod normalize;
pub mod tree;

use http::{HeaderMap, Method};
use regex::Regex;

pub use matchers::{Constraints, Rejection, ValueMatcher};
use tree::{HashMap, PrefixTrie, TemplateTrie};

/// How a route matches the path.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// Exactly this path.
    Exact(String),
    /// A `{param}` template.
    Template(String),
    /// A segment-boundary prefix.
    Prefix(String),
    /// An anchored regex.
    Regex(Regex),
}

impl PathMatch {
    /// The rank name used in explanations.
    pub fn kind(&self) -> &'static str {
        match self {
            PathMatch::Exact(_) => "exact path",
            PathMatch::Template(_) => "path template",
            PathMatch::Prefix(_) => "path prefix",
            PathMatch::Regex(_) => "path regex",
        }
    }

    /// The pattern as written.
    pub fn pattern(&self) -> &str {
        match self {
            PathMatch::Exact(p) | PathMatch::Template(p) | PathMatch::Prefix(p) => p,
            PathMatch::Regex(r) => r.as_str(),
        }
    }
}

/// One route's matching definition.
#[derive(Debug, Clone)]
pub struct RouteMatcher {
    /// Host names; empty matches any.
    pub hosts: Vec<String>,
    /// Path rule.
    pub path: PathMatch,
    /// Method, header and query constraints.
    pub constraints: Constraints,
}

/// What the router needs from a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Method.
    pub method: &'a Method,
    /// Lower-case host without port.
    pub host: &'a str,
    /// Normalized path.
    pub path: &'a str,
    /// Query string without `?`.
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

/// The outcome of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteLookup {
    /// This route takes the request.
    Found(usize),
    /// Host and path matched routes, but none for this method.
    MethodNotAllowed(Vec<Method>),
    /// Nothing matched.
    NotFound,
}

/// Observer of the matching process; `()` observes nothing and compiles away.
pub trait Trace {
    /// A host group is being searched.
    fn group(&mut self, _group: &'static str) {}
    /// Route `id` matched host and path, with the constraint outcome.
    fn candidate(&mut self, _id: usize, _outcome: Result<(), Rejection>) {}
}

impl Trace for () {}

#[derive(Debug, Default)]
struct HostTable {
    exact: HashMap<Box<str>, Vec<usize>>,
    templates: TemplateTrie,
    prefixes: PrefixTrie,
    regexes: Vec<(Regex, usize)>,
}

/// The compiled route table.
#[derive(Debug, Default)]
pub struct Router {
    exact_hosts: HashMap<Box<str>, HostTable>,
    /// (".example.com", table), longest suffix first.
    wildcard_hosts: Vec<(Box<str>, HostTable)>,
    any_host: HostTable,
    matchers: Vec<RouteMatcher>,
}

impl Router {
    /// Builds the table; route ids are positions in `routes`.
    pub fn new(routes: Vec<RouteMatcher>) -> Self {
        let mut r = Router::default();
        for (id, m) in routes.iter().enumerate() {
            if m.hosts.is_empty() {
                add(&mut r.any_host, &m.path, id);
            }
            for host in &m.hosts {
                let table = if let Some(suffix) = host.strip_prefix('*') {
                    match r.wildcard_hosts.iter().position(|(s, _)| **s == *suffix) {
                        Some(i) => &mut r.wildcard_hosts[i].1,
                        None => {
                            r.wildcard_hosts.push((suffix.into(), HostTable::default()));
                            let last = r.wildcard_hosts.len() - 1;
                            &mut r.wildcard_hosts[last].1
                        }
                    }
                } else {
                    r.exact_hosts.entry(host.as_str().into()).or_default()
                };
                add(table, &m.path, id);
            }
        }
        r.wildcard_hosts
            .sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        r.matchers = routes;
        r
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.matchers.len()
    }

    /// True when there are no routes.
    pub fn is_empty(&self) -> bool {
        self.matchers.is_empty()
    }

    /// The matching definition of route `id`.
    pub fn matcher(&self, id: usize) -> Option<&RouteMatcher> {
        self.matchers.get(id)
    }

    /// Finds the route for a request.
    pub fn lookup(&self, req: &RequestView<'_>) -> RouteLookup {
        self.lookup_traced(req, &mut ())
    }

    /// [`Router::lookup`], reporting each step to `trace`.
    pub fn lookup_traced<T: Trace>(&self, req: &RequestView<'_>, trace: &mut T) -> RouteLookup {
        let (found, method_miss) = self.search(req, trace);
        match found {
            Some(id) => RouteLookup::Found(id),
            None if method_miss => RouteLookup::MethodNotAllowed(self.allowed_methods(req)),
            None => RouteLookup::NotFound,
        }
    }

    /// Walks the groups in precedence order; returns the route taken and
    /// whether some route failed only on its method.
    fn search<T: Trace>(&self, req: &RequestView<'_>, trace: &mut T) -> (Option<usize>, bool) {
        let mut method_miss = false;
        let mut result = None;
        let mut try_table = |table: &HostTable, group: &'static str, trace: &mut T| -> bool {
            trace.group(group);
            let mut take = |id: usize| -> bool {
                let outcome =
                    self.matchers[id]
                        .constraints
                        .check(req.method, req.headers, req.query);
                trace.candidate(id, outcome);
                method_miss |= outcome == Err(Rejection::Method);
                outcome.is_ok() && {
                    result = Some(id);
                    true
                }
            };
            table
                .exact
                .get(req.path)
                .is_some_and(|ids| ids.iter().any(|&id| take(id)))
                || table.templates.visit(req.path, &mut take)
                || table.prefixes.visit(req.path, &mut take)
                || table
                    .regexes
                    .iter()
                    .any(|(re, id)| re.is_match(req.path) && take(*id))
        };
        let _ = self
            .exact_hosts
            .get(req.host)
            .is_some_and(|t| try_table(t, "exact host", trace))
            || self.wildcard_hosts.iter().any(|(suffix, t)| {
                req.host.len() > suffix.len()
                    && req.host.ends_with(&**suffix)
                    && try_table(t, "wildcard host", trace)
            })
            || try_table(&self.any_host, "any host", trace);
        (result, method_miss)
    }

    /// Methods of every route that matches host and path (for `Allow`).
    fn allowed_methods(&self, req: &RequestView<'_>) -> Vec<Method> {
        struct Collect(Vec<usize>);
        impl Trace for Collect {
            fn candidate(&mut self, id: usize, outcome: Result<(), Rejection>) {
                if outcome == Err(Rejection::Method) {
                    self.0.push(id);
                }
            }
        }
        // Search again with a method no route lists, collecting every route
        // that matched up to the method check.
        let probe = Method::from_bytes(b"X-TOLLGATE-PROBE").unwrap_or(Method::TRACE);
        let mut c = Collect(Vec::new());
        self.search(
            &RequestView {
                method: &probe,
                ..*req
            },
            &mut c,
        );
        let mut methods: Vec<Method> = Vec::new();
        for id in c.0 {
            for m in &self.matchers[id].constraints.methods {
                if !methods.contains(m) {
                    methods.push(m.clone());
                }
            }
        }
        methods
    }
}

fn add(table: &mut HostTable, path: &PathMatch, id: usize) {
    match path {
        PathMatch::Exact(p) => table.exact.entry(p.as_str().into()).or_default().push(id),
        PathMatch::Template(p) => table.templates.insert(p, id),
        PathMatch::Prefix(p) => table.prefixes.insert(p, id),
        PathMatch::Regex(r) => table.regexes.push((r.clone(), id)),
    }
}
