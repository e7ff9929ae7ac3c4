//! The last token verified on one client connection.

use std::sync::{Arc, Mutex, Weak};

use super::jwt::unix_now;
use super::{Identity, Provider};

/// The last token verified on one client connection: a keep-alive client
/// that sends the same token again is recognized by comparing the bytes,
/// without hashing the token or touching the shared cache. Per connection,
/// so nothing is shared between clients.
#[derive(Default)]
pub struct ConnMemo {
    slot: Mutex<Option<Memo>>,
}

struct Memo {
    // A `Weak` keeps the provider's allocation, so its address cannot be
    // reused by another provider while this memo names it.
    provider: Weak<Provider>,
    generation: u64,
    token: Box<str>,
    identity: Arc<Identity>,
}

impl ConnMemo {
    pub(super) fn get(&self, provider: &Arc<Provider>, token: &str) -> Option<Arc<Identity>> {
        let slot = self.slot.lock().ok()?;
        let m = slot.as_ref()?;
        (std::ptr::eq(m.provider.as_ptr(), Arc::as_ptr(provider))
            && m.generation == provider.keys.generation()
            && *m.token == *token
            && m.identity.exp > unix_now())
        .then(|| Arc::clone(&m.identity))
    }

    pub(super) fn put(
        &self,
        provider: &Arc<Provider>,
        generation: u64,
        token: &str,
        identity: &Arc<Identity>,
    ) {
        if let Ok(mut slot) = self.slot.lock() {
            *slot = Some(Memo {
                provider: Arc::downgrade(provider),
                generation,
                token: token.into(),
                identity: Arc::clone(identity),
            });
        }
    }
}
