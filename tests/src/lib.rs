//! Support for plumeway's end-to-end tests: real backends, a real proxy
//! (in-process or as the real binary) and a plain HTTP client, all on
//! 127.0.0.1 with ports the OS picks.

pub mod backend;
pub mod chaos;
pub mod dns;
/// Paths of the compiled test plugins, and `foreach_test_plugin!`.
pub mod plugins {
    include!(concat!(env!("OUT_DIR"), "/test_plugins.rs"));
}
pub mod client;
pub mod harness;

pub use backend::{Backend, Echo};
pub use client::{Client, Reply};
pub use harness::{BinaryProxy, TestProxy};

/// Upper bound for any single step of a test, so a bug hangs nothing.
pub const STEP: std::time::Duration = std::time::Duration::from_secs(20);

/// Awaits `fut`, failing the test if it takes longer than [`STEP`].
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(STEP, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {STEP:?}: {what}"),
    }
}
