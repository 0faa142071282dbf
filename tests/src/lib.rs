//! Support for plumeway's end-to-end tests: real backends, a real proxy
//! (in-process or as the real binary) and a plain HTTP client, all on
//! 127.0.0.1 with ports the OS picks.

pub mod backend;
pub mod browser;
pub mod chaos;
pub mod consul;
pub mod dns;
pub mod etcd;
pub mod grpc;
/// Paths of the compiled test plugins, and `foreach_test_plugin!`.
pub mod plugins {
    include!(concat!(env!("OUT_DIR"), "/test_plugins.rs"));
}
pub mod client;
pub mod harness;
pub mod tls;

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

/// Makes sure `binary` runs, installing Debian's `packages` when it does
/// not (these machines run tests as root; `.ci/run` installs them first so
/// that apt stays out of a normal test run).
pub fn ensure_installed(binary: &str, packages: &[&str]) {
    let runs = |b: &str| {
        std::process::Command::new(b)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|e| e.to_string())
            .and_then(|s| if s.success() { Ok(()) } else { Err(s.to_string()) })
    };
    // Tests run in parallel and apt allows one install at a time: installs
    // from this process take turns, and apt waits for a lock held elsewhere
    // instead of failing at once.
    static APT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = APT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Err(first) = runs(binary) else { return };
    const WAIT_FOR_LOCK: [&str; 2] = ["-o", "DPkg::Lock::Timeout=300"];
    let _ = std::process::Command::new("apt-get")
        .args(WAIT_FOR_LOCK)
        .arg("update")
        .stdout(std::process::Stdio::null())
        .status();
    let installed = std::process::Command::new("apt-get")
        .args(WAIT_FOR_LOCK)
        .args(["install", "-y"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(std::process::Stdio::null())
        .status();
    if let Err(again) = runs(binary) {
        panic!(
            "{binary} does not run ({first}), and after `apt-get install {}` ({installed:?}) still not: {again}",
            packages.join(" ")
        );
    }
}

/// A port that was free a moment ago on 127.0.0.1 (for servers that must
/// be told their port, and may lose it to another test: retry on failure).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}
