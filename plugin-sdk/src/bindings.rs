//! The generated bindings. Hidden from plugin authors: they see the traits
//! in the crate root.
//!
//! One `generate!` per exported interface, because wit-bindgen cannot
//! generate two worlds that export the same interface in one crate
//! (wit-bindgen#1502). The imports are generated once and shared through
//! `with`.

#![allow(missing_docs, unreachable_pub, clippy::all, reason = "generated code")]

pub mod imports {
    wit_bindgen::generate!({
        world: "imports",
        path: "wit",
        runtime_path: "plumeway_sdk::__private::wit_bindgen::rt",
        type_section_suffix: "imports",
        generate_all,
    });
}

macro_rules! export_world {
    (no_types $module:ident, $world:literal, $macro_name:literal, $bindings:literal, $suffix:literal) => {
        pub mod $module {
            wit_bindgen::generate!({
                inline: $world,
                path: "wit",
                pub_export_macro: true,
                export_macro_name: $macro_name,
                default_bindings_module: $bindings,
                runtime_path: "plumeway_sdk::__private::wit_bindgen::rt",
                type_section_suffix: $suffix,
            });
        }
    };
    ($module:ident, $world:literal, $macro_name:literal, $bindings:literal, $suffix:literal) => {
        pub mod $module {
            wit_bindgen::generate!({
                inline: $world,
                path: "wit",
                pub_export_macro: true,
                export_macro_name: $macro_name,
                default_bindings_module: $bindings,
                runtime_path: "plumeway_sdk::__private::wit_bindgen::rt",
                type_section_suffix: $suffix,
                with: { "plumeway:plugin/types@0.1.0": crate::bindings::imports::plumeway::plugin::types },
            });
        }
    };
}

export_world!(
    no_types lifecycle,
    "package plumeway:sdk-lifecycle; world export-lifecycle { export plumeway:plugin/lifecycle@0.1.0; }",
    "export_lifecycle",
    "plumeway_sdk::__private::bindings::lifecycle",
    "lifecycle"
);
export_world!(
    rewrite,
    "package plumeway:sdk-rewrite; world export-rewrite { export plumeway:plugin/rewrite@0.1.0; }",
    "export_rewrite",
    "plumeway_sdk::__private::bindings::rewrite",
    "rewrite"
);
export_world!(
    request_filter,
    "package plumeway:sdk-request; world export-request-filter { export plumeway:plugin/request-filter@0.1.0; }",
    "export_request_filter",
    "plumeway_sdk::__private::bindings::request_filter",
    "request-filter"
);
export_world!(
    response_filter,
    "package plumeway:sdk-response; world export-response-filter { export plumeway:plugin/response-filter@0.1.0; }",
    "export_response_filter",
    "plumeway_sdk::__private::bindings::response_filter",
    "response-filter"
);
export_world!(
    error_handler,
    "package plumeway:sdk-error; world export-error-handler { export plumeway:plugin/error-handler@0.1.0; }",
    "export_error_handler",
    "plumeway_sdk::__private::bindings::error_handler",
    "error-handler"
);
export_world!(
    balancer,
    "package plumeway:sdk-balancer; world export-balancer { export plumeway:plugin/balancer@0.1.0; }",
    "export_balancer",
    "plumeway_sdk::__private::bindings::balancer",
    "balancer"
);
