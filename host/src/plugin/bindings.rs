//! Host bindings for the `any-plugin` world: every hook, loaded one by one
//! from a plugin only when it exports it.

#![allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    reason = "generated code"
)]

wasmtime::component::bindgen!({
    world: "any-plugin",
    path: "../wit",
    // Hooks and host functions are synchronous (see `wasi.rs` for why) and
    // host functions trappable, so a host function's own failure (fields
    // that cannot be read back into a map) ends the call, not the proxy.
    imports: { default: trappable },
});
