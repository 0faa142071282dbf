//! Compiles the built-in plugins (`plugins/*`) to wasm components and
//! embeds them, so `builtin = "NAME"` works with no files around and a
//! fresh machine needs no extra build step.

use std::fmt::Write;
use std::path::Path;

fn main() {
    // Read at run time: a build script compiled for one checkout may be
    // reused by another that shares the target directory.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let root = Path::new(&manifest).join("..");
    let plugins = root.join("plugins");
    let packages = plumeway_wasm_build::packages_in(&plugins);
    let built = plumeway_wasm_build::build(
        &packages,
        &[
            plugins,
            root.join("plugin-sdk/src"),
            root.join("plugin-sdk/Cargo.toml"),
            root.join("wit"),
            root.join("Cargo.lock"),
            // The workspace manifest holds the `wasm-plugin` profile.
            root.join("Cargo.toml"),
        ],
    );
    let mut code = String::from(
        "/// The built-in plugins: name and component bytes.\npub(crate) const BUILTINS: &[(&str, &[u8])] = &[\n",
    );
    for plugin in &built {
        let name = plugin
            .package
            .strip_prefix("plumeway-plugin-")
            .unwrap_or(&plugin.package);
        let _ = writeln!(code, "    ({name:?}, include_bytes!({:?})),", plugin.wasm);
    }
    code.push_str("];\n");
    let out = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("builtin_plugins.rs");
    std::fs::write(out, code).expect("write builtin_plugins.rs");
}
