//! Compiles the test plugins (`tests/plugins/*`) and the example plugin to
//! wasm components, and generates their paths plus `foreach_test_plugin!`,
//! which the plugin tests use so that a test plugin without a test does not
//! compile.

use std::fmt::Write;
use std::path::Path;

fn main() {
    // Read at run time: a build script compiled for one checkout may be
    // reused by another that shares the target directory.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let manifest = Path::new(&manifest);
    let root = manifest.join("..");
    let dir = manifest.join("plugins");
    let mut packages = plumeway_wasm_build::packages_in(&dir);
    packages.push("hello-plugin".to_owned());
    let built = plumeway_wasm_build::build(
        &packages,
        &[
            dir,
            root.join("examples/hello-plugin"),
            root.join("plugin-sdk/src"),
            root.join("wit"),
            // The workspace manifest holds the `wasm-plugin` profile.
            root.join("Cargo.toml"),
        ],
    );
    let mut code = String::new();
    let mut names = Vec::new();
    for plugin in &built {
        let name = plugin
            .package
            .strip_prefix("plumeway-test-plugin-")
            .unwrap_or(&plugin.package)
            .replace('-', "_");
        let _ = writeln!(
            code,
            "/// The `{}` component.\npub const {}: &str = {:?};",
            plugin.package,
            name.to_uppercase(),
            plugin.wasm
        );
        names.push(name);
    }
    let _ = writeln!(
        code,
        "/// Calls `$mac!(name)` for every test plugin.\n#[macro_export]\nmacro_rules! foreach_test_plugin {{\n    ($mac:ident) => {{\n{}    }};\n}}",
        names
            .iter()
            .map(|n| format!("        $mac!({n});\n"))
            .collect::<String>()
    );
    let out = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("test_plugins.rs");
    std::fs::write(out, code).expect("write test_plugins.rs");

    // The gRPC test service, compiled without protoc (protox is a
    // protobuf compiler in Rust), so a fresh machine needs nothing more.
    let proto = manifest.join("proto/echo.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let descriptors = protox::compile([&proto], [manifest.join("proto")]).expect("compile echo.proto");
    tonic_prost_build::configure()
        .compile_fds(descriptors)
        .expect("generate the gRPC code");
}
