//! Every end-to-end test in one test binary.
//!
//! Each binary under `tests/` links the whole proxy (wasmtime and Cranelift
//! included), so fourteen of them took fourteen links and over a gigabyte of
//! disk; one binary with a module per area takes one. Pick an area with a
//! filter: `cargo test -p plumeway-tests --test e2e grpc::`.

mod builtin_plugins;
mod cli;
mod client_http1;
mod config_errors;
mod discovery;
mod errors;
mod forwarding;
mod grpc;
mod hardening;
mod operations;
mod plugins;
mod process;
mod resilience;
mod tls;
mod upstream_http1;
mod websocket;
