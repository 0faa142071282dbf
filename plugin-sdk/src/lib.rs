//! Write plugins for [plumeway](https://example.invalid/plumeway), the
//! reverse proxy extended by WebAssembly components.
//!
//! A plugin is a Rust library compiled to `wasm32-wasip2`. It implements
//! [`Plugin`] (build yourself from your config) and one or more hooks:
//!
//! | hook | trait | runs | route key |
//! |---|---|---|---|
//! | path rewrite | [`Rewrite`] | first | `rewrite = "NAME"` |
//! | request filter | [`RequestFilter`] | in list order, before the upstream | `request = [...]` |
//! | response filter | [`ResponseFilter`] | in list order, after it | `response = [...]` |
//! | error handler | [`ErrorHandler`] | when the proxy cannot deliver | `on_error = "NAME"` |
//! | balancer | [`Balancer`] | to pick an endpoint | `balancer = { plugin = "NAME" }` |
//!
//! then names them in [`export!`]:
//!
//! ```
//! use plumeway_sdk::{Action, Config, Plugin, Request, RequestFilter};
//!
//! pub struct AddHeader { value: String }
//!
//! impl Plugin for AddHeader {
//!     fn init(config: Config) -> Result<Self, String> {
//!         #[derive(plumeway_sdk::serde::Deserialize)]
//!         #[serde(crate = "plumeway_sdk::serde")]
//!         struct Settings { value: String }
//!         let s: Settings = config.parse()?;
//!         Ok(AddHeader { value: s.value })
//!     }
//! }
//!
//! impl RequestFilter for AddHeader {
//!     fn on_request(&self, req: &mut Request<'_>) -> Result<Action, plumeway_sdk::Error> {
//!         req.headers_mut().set("x-added", &self.value)?;
//!         Ok(Action::Continue)
//!     }
//! }
//!
//! plumeway_sdk::export!(AddHeader: RequestFilter);
//! # fn main() {}
//! ```
//!
//! Your crate's `Cargo.toml` needs `crate-type = ["cdylib", "rlib"]` and
//! only `plumeway-sdk` as a dependency; build with
//! `cargo build --release --target wasm32-wasip2`. The same types work on
//! the host target, so plugin logic is unit-tested with plain `cargo test`
//! (see [`Request::builder`], [`Response::builder`]).
//!
//! Instances are reused across requests: state in `self` or globals lives
//! on, so never rely on it being fresh. A panic traps the instance; the
//! proxy answers that request with a 5xx, throws the instance away and
//! serves the next request with a new one.

#![deny(missing_docs)]

extern crate self as plumeway_sdk;

#[doc(hidden)]
pub mod bindings;
mod config;
pub mod context;
mod glue;
mod headers;
mod hooks;
pub mod log;
mod message;

pub use config::Config;
pub use headers::{HeaderError, Headers};
pub use hooks::{
    Action, Balancer, Endpoint, Error, ErrorHandler, ErrorKind, Needs, PickContext, Plugin, ProxyError, RequestFilter,
    ResponseAction, ResponseFilter, Rewrite,
};
pub use message::{LocalResponse, Request, RequestBuilder, RequestHead, Response, ResponseBuilder};
/// serde, for `#[derive(Deserialize)]` on config types with
/// `#[serde(crate = "plumeway_sdk::serde")]`.
pub use serde;

#[doc(hidden)]
pub mod __private {
    pub use crate::bindings;
    pub use crate::glue::{Glue, Slot};
    pub use wit_bindgen;
}

/// Exports a plugin type and the hooks it implements, e.g.
/// `plumeway_sdk::export!(MyPlugin: RequestFilter, ResponseFilter);`.
///
/// Hooks: `Rewrite`, `RequestFilter`, `ResponseFilter`, `ErrorHandler`,
/// `Balancer`. Call it once per plugin crate.
#[macro_export]
macro_rules! export {
    ($plugin:ty : $($hook:ident),+ $(,)?) => {
        // Only a component has these exports; on the host target (unit
        // tests) the plugin is plain Rust, and the export names (with `:`)
        // would not even link.
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        mod __plumeway_exports {
            #[allow(unused_imports)]
            use super::*;
            type __PlumewayPlugin = $crate::__private::Glue<$plugin>;
            impl $crate::__private::Slot for $plugin {
                fn slot() -> &'static ::std::thread::LocalKey<::core::cell::RefCell<::core::option::Option<Self>>> {
                    ::std::thread_local! {
                        static SLOT: ::core::cell::RefCell<::core::option::Option<$plugin>> =
                            const { ::core::cell::RefCell::new(::core::option::Option::None) };
                    }
                    &SLOT
                }
            }
            $crate::__private::bindings::lifecycle::export_lifecycle!(__PlumewayPlugin);
            $( $crate::__export_hook!($hook); )+
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_hook {
    (Rewrite) => {
        $crate::__private::bindings::rewrite::export_rewrite!(__PlumewayPlugin);
    };
    (RequestFilter) => {
        $crate::__private::bindings::request_filter::export_request_filter!(__PlumewayPlugin);
    };
    (ResponseFilter) => {
        $crate::__private::bindings::response_filter::export_response_filter!(__PlumewayPlugin);
    };
    (ErrorHandler) => {
        $crate::__private::bindings::error_handler::export_error_handler!(__PlumewayPlugin);
    };
    (Balancer) => {
        $crate::__private::bindings::balancer::export_balancer!(__PlumewayPlugin);
    };
    ($other:ident) => {
        compile_error!(concat!(
            "unknown hook `",
            stringify!($other),
            "`: expected Rewrite, RequestFilter, ResponseFilter, ErrorHandler or Balancer"
        ));
    };
}
