//! Why a request goes where it goes: the answer behind the admin
//! `GET /routes/explain` and `tollgate explain`.

use serde::Serialize;

use super::{Rejection, RequestView, RouteLookup, Router, Trace};

/// One route that matched host and path, and what its constraints said.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    /// Route id (position in the config).
    pub id: usize,
    /// Host group it was found in.
    pub group: &'static str,
    /// `matched`, or which constraint failed.
    pub outcome: &'static str,
}

/// The full answer.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The route taken, if any.
    pub matched: Option<usize>,
    /// 200, 404 or 405 as the gateway would answer at routing.
    pub status: u16,
    /// Routes considered, in the order the precedence rule tried them.
    pub candidates: Vec<Candidate>,
    /// When nothing matched host and path: the routes whose path pattern
    /// shares the longest leading part with the request path.
    pub nearest: Vec<usize>,
}

#[derive(Default)]
struct Recorder {
    group: &'static str,
    candidates: Vec<Candidate>,
}

impl Trace for Recorder {
    fn group(&mut self, group: &'static str) {
        self.group = group;
    }
    fn candidate(&mut self, id: usize, outcome: Result<(), Rejection>) {
        let outcome = match outcome {
            Ok(()) => "matched",
            Err(Rejection::Method) => "method not allowed",
            Err(Rejection::Header) => "header constraint failed",
            Err(Rejection::Query) => "query constraint failed",
        };
        self.candidates.push(Candidate {
            id,
            group: self.group,
            outcome,
        });
    }
}

/// Explains how `req` is routed.
pub fn explain(router: &Router, req: &RequestView<'_>) -> Explanation {
    let mut rec = Recorder::default();
    let lookup = router.lookup_traced(req, &mut rec);
    let (matched, status) = match lookup {
        RouteLookup::Found(id) => (Some(id), 200),
        RouteLookup::MethodNotAllowed(_) => (None, 405),
        RouteLookup::NotFound => (None, 404),
    };
    let nearest = if rec.candidates.is_empty() {
        let mut scored: Vec<(usize, usize)> = (0..router.len())
            .filter_map(|id| {
                router
                    .matcher(id)
                    .map(|m| (id, common_prefix(m.path.pattern(), req.path)))
            })
            .collect();
        scored.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.into_iter().take(3).map(|(id, _)| id).collect()
    } else {
        Vec::new()
    };
    Explanation {
        matched,
        status,
        candidates: rec.candidates,
        nearest,
    }
}

fn common_prefix(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}
