//! The response cache (pipeline stages 6 and 8): a shared in-memory store
//! (moka, weighed by bytes) that routes opt into with `cache:`. GET and
//! HEAD are served from fresh entries (HEAD from a stored GET) with `Age`
//! and `Cache-Status`; cacheable responses are stored as they stream
//! through, within `max_object_size`. The storage rules are RFC 9111's for
//! a shared cache, in `policy`.
//!
//! Concurrent misses for one key are coalesced: one request goes to the
//! origin, the others wait for its entry. Responses with `Vary` are stored
//! per variant. Stale entries are served while a background refresh runs
//! (stale-while-revalidate) and stand in for a failing upstream
//! (stale-if-error); entries with validators are revalidated with
//! conditional requests.
//!
//! Modules: `policy` (RFC 9111 storage and freshness), `validate`
//! (conditional requests, 304 updates, invalidation targets), `vary`
//! (variants), `key` (a route's cache and its keys), `store` (moka),
//! `coalesce` (one origin request per key), `fleet` (purges and
//! invalidations shared by the replicas through Redis). The request's side, one
//! object per request, is `crate::proxy::cache`.

pub mod coalesce;
pub mod fleet;
pub mod key;
pub mod policy;
pub mod store;
pub mod validate;
pub mod vary;
