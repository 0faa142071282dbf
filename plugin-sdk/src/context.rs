//! Facts about the current request that are not in its head.

use crate::bindings::imports::plumeway::plugin::context as wit;

/// A fact about the current request: `route`, `plugin`, `client-ip`,
/// `request-id`, `upstream`, `endpoint`. `None` when unknown (and always in
/// unit tests).
pub fn attribute(name: &str) -> Option<String> {
    if cfg!(target_arch = "wasm32") {
        wit::attribute(name)
    } else {
        None
    }
}

pub(crate) fn endpoint_url(index: usize) -> Option<String> {
    if cfg!(target_arch = "wasm32") {
        wit::endpoint_url(u32::try_from(index).ok()?)
    } else {
        None
    }
}
