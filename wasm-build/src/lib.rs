//! Used by build scripts (the host's built-in plugins, the tests' test
//! plugins) to compile plugin crates of this workspace to `wasm32-wasip2`
//! components, so that a plain `cargo build` or `cargo test` on a fresh
//! machine needs no extra step.
//!
//! The nested cargo uses its own target directory, so it never waits for
//! the lock that the outer cargo holds, and the `wasm-plugin` profile of the
//! workspace (optimised for speed, `panic = "abort"`).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The wasm target plugins are built for.
pub const TARGET: &str = "wasm32-wasip2";

/// One compiled plugin.
#[derive(Debug)]
pub struct Built {
    /// The crate's package name, e.g. `plumeway-plugin-headers`.
    pub package: String,
    /// The component file.
    pub wasm: PathBuf,
}

/// Compiles each package in `packages` (crates of this workspace) to a
/// component, and tells cargo to rerun the build script when any of
/// `watch` changes. Panics with a readable message on failure: this runs
/// in build scripts.
pub fn build(packages: &[String], watch: &[PathBuf]) -> Vec<Built> {
    for path in watch {
        println!("cargo::rerun-if-changed={}", path.display());
    }
    ensure_target();
    let workspace = workspace_root();
    let target_dir = outer_target_dir().join("wasm-plugins");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .args(["build", "--profile", "wasm-plugin", "--target", TARGET, "--target-dir"])
        .arg(&target_dir);
    for p in packages {
        cmd.args(["-p", p]);
    }
    // The outer build's settings are for the host target (and clippy's
    // wrapper, when linting); none of them belong in the wasm build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build plugins: {e}"));
    assert!(
        status.success(),
        "building the wasm plugins {packages:?} failed (see the cargo output above)"
    );
    let out = target_dir.join(TARGET).join("wasm-plugin");
    packages
        .iter()
        .map(|p| {
            let wasm = out.join(format!("{}.wasm", p.replace('-', "_")));
            assert!(wasm.exists(), "{} was not produced", wasm.display());
            Built {
                package: p.clone(),
                wasm,
            }
        })
        .collect()
}

/// The package names of the crates in `dir/*/Cargo.toml`, sorted.
pub fn packages_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|entry| {
            let manifest = entry.ok()?.path().join("Cargo.toml");
            let text = std::fs::read_to_string(manifest).ok()?;
            package_name(&text)
        })
        .collect();
    names.sort();
    names
}

fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package && let Some(rest) = line.strip_prefix("name") {
            let value = rest.trim_start().strip_prefix('=')?.trim().trim_matches('"');
            return Some(value.to_owned());
        }
    }
    None
}

/// `rust-toolchain.toml` lists the target, but with `RUSTUP_AUTO_INSTALL=0`
/// rustup does not install it by itself; a fresh machine would fail here.
fn ensure_target() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let installed = sysroot
        .as_ref()
        .is_some_and(|s| Path::new(s).join("lib/rustlib").join(TARGET).exists());
    if installed {
        return;
    }
    println!("cargo::warning=installing the {TARGET} target with rustup (needed to build plugins)");
    let status = Command::new("rustup").args(["target", "add", TARGET]).status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "the {TARGET} target is missing and `rustup target add {TARGET}` failed; install it and build again"
    );
}

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|dir| std::fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|t| t.contains("[workspace]")))
        .expect("workspace root")
        .to_owned()
}

/// The outer build's target directory, found from `OUT_DIR`
/// (`<target>/<profile>/build/<pkg>-<hash>/out`).
fn outer_target_dir() -> PathBuf {
    if let Some(dir) = env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    out.ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "build"))
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(Path::to_owned)
        .unwrap_or_else(|| workspace_root().join("target"))
}
