//! Test plugin: exports the lifecycle as the contract has it, and `rewrite`
//! as it was before session 27, without the path argument. A plugin built
//! against that contract and not rebuilt looks like this; plumeway must
//! refuse it when it loads and say why, not fail to convert a function.

// wit-bindgen's export glue (`export!`, expanded here) is unsafe code; the
// SDK's is the same, generated through its own macros.
#![allow(unsafe_code, reason = "wit-bindgen's generated export glue")]

// The SDK's generated bindings would bring the current contract: these are
// generated here, from the old shape.
mod bindings {
    wit_bindgen::generate!({
        inline: r#"
        package plumeway:plugin@0.1.0;

        interface types {
            record plugin-error { message: string }
        }

        interface lifecycle {
            flags needs { request-body, response-body }
            init: func(config: string) -> result<needs, string>;
        }

        interface rewrite {
            use types.{plugin-error};
            rewrite: func() -> result<option<string>, plugin-error>;
        }

        world old-contract {
            export lifecycle;
            export rewrite;
        }
    "#,
    });
}

use bindings::exports::plumeway::plugin::{lifecycle, rewrite};

struct OldContract;

impl lifecycle::Guest for OldContract {
    fn init(_config: String) -> Result<lifecycle::Needs, String> {
        Ok(lifecycle::Needs::empty())
    }
}

impl rewrite::Guest for OldContract {
    fn rewrite() -> Result<Option<String>, bindings::plumeway::plugin::types::PluginError> {
        Ok(Some("/old".to_owned()))
    }
}

// Exported only in the component: the host build of this crate (a
// workspace member) cannot link names like `plumeway:plugin/...`.
#[cfg(target_arch = "wasm32")]
bindings::export!(OldContract with_types_in bindings);
