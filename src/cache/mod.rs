//! The response cache (pipeline stages 5 and 8): a shared in-memory store
//! (moka, weighed by bytes) that routes opt into with `cache:`. GET and
//! HEAD are served from fresh entries (HEAD from a stored GET) with `Age`
//! and `Cache-Status`; cacheable responses are stored as they stream
//! through, within `max_object_size`. The storage rules are RFC 9111's for
//! a shared cache, in `policy`.
//!
//! Concurrent misses for one key are coalesced: one request goes to the
//! origin, the others wait for its entry.
//!
//! A stale entry stands in for a failing upstream within `stale_if_error`.
//!
//! Responses with `Vary` are stored per variant.
//!
//! Not built yet: stale-while-revalidate, and revalidation with validators
//! (so `no-cache` responses are not stored).

pub mod policy;
pub mod store;
