//! plumeway: a reverse proxy and API gateway whose behaviour is extended by
//! WebAssembly components.
//!
//! The crate is the whole proxy; the `plumeway` binary is a thin CLI over
//! [`cli::main`]. The modules follow the request: [`server`] accepts,
//! [`router`] picks a route, [`proxy`] forwards to an [`upstream`].

pub mod admin;
pub mod body;
pub mod cli;
pub mod config;
pub mod deadline;
mod demo;
pub mod discovery;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod plugin;
pub mod proxy;
pub mod router;
pub mod server;
pub mod tls;
pub mod upstream;
