//! The command line as a user meets it: `check`, exit codes, help.

use std::path::Path;
use std::process::Command;

fn plumeway(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_plumeway-e2e"))
        .args(args)
        .output()
        .expect("run plumeway");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn check_prints_a_summary_of_a_valid_config() {
    let config = repo("examples/quickstart/plumeway.toml");
    let (code, stdout, stderr) = plumeway(&["check", &config]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(": ok\n"), "{stdout}");
    assert!(stdout.contains("listeners: 127.0.0.1:8080"), "{stdout}");
    assert!(
        stdout.contains("admin: http://127.0.0.1:9901/ (dashboard, /metrics, POST /reload)"),
        "{stdout}"
    );
    assert!(stdout.contains("access log: Text"), "{stdout}");
    assert!(stdout.contains("routes (2):"), "{stdout}");
    assert!(stdout.contains("api                  path /api -> demo"), "{stdout}");
    assert!(
        stdout.contains("http://127.0.0.1:9001, http://127.0.0.1:9002"),
        "{stdout}"
    );
}

#[test]
fn check_rejects_an_invalid_config_with_exit_2_and_the_place() {
    let config = repo("tests/config/invalid/unknown-upstream.toml");
    let (code, stdout, stderr) = plumeway(&["check", &config]);
    assert_eq!(code, 2);
    assert!(stdout.is_empty());
    assert!(
        stderr.starts_with("error: ")
            && stderr.contains("unknown-upstream.toml:6:12: routes[0].upstream: unknown upstream \"userz\""),
        "{stderr}"
    );
}

#[test]
fn run_refuses_a_missing_file_clearly() {
    let (code, _, stderr) = plumeway(&["run", "/nonexistent/plumeway.toml"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("/nonexistent/plumeway.toml: cannot read the file"),
        "{stderr}"
    );
}

#[test]
fn version_and_help_work() {
    let (code, stdout, _) = plumeway(&["--version"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("plumeway "), "{stdout}");
    let (code, stdout, _) = plumeway(&["--help"]);
    assert_eq!(code, 0);
    for word in ["run", "check", "demo", "Examples:"] {
        assert!(stdout.contains(word), "help lacks {word}: {stdout}");
    }
}

#[test]
fn check_shows_each_upstreams_discovery_back_end() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("plumeway.toml");
    std::fs::write(&config, "[upstreams.users]\ndiscovery = { consul = { address = \"http://127.0.0.1:1\", service = \"users\", tag = \"v2\", meta = { zone = \"a\" }, token = \"s3cret\" } }\n[upstreams.billing]\ndiscovery = { etcd = { endpoints = [\"http://127.0.0.1:2\", \"http://127.0.0.1:3\"], prefix = \"/services/billing/\" } }\n[upstreams.search]\ndiscovery = { dns = { name = \"_http._tcp.search.test\", type = \"srv\", server = \"127.0.0.1:4\" } }\n[[routes]]\nupstream = \"users\"\n").unwrap();
    let (code, stdout, stderr) = plumeway(&["check", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    for line in [
        "discovery consul http://127.0.0.1:1 service \"users\" tag \"v2\" meta zone=\"a\"",
        "discovery etcd http://127.0.0.1:2,http://127.0.0.1:3 prefix \"/services/billing/\"",
        "discovery dns SRV _http._tcp.search.test via 127.0.0.1:4, hold 1m",
    ] {
        assert!(stdout.contains(line), "{line:?} not in:\n{stdout}");
    }
    assert!(!stdout.contains("s3cret"), "the token leaked:\n{stdout}");
}

#[test]
fn register_refuses_an_upstream_without_a_registry() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("plumeway.toml");
    std::fs::write(
        &config,
        "[upstreams.u]\ntargets = [\"http://127.0.0.1:1\"]\n[[routes]]\nupstream = \"u\"\n",
    )
    .unwrap();
    let (code, _, stderr) = plumeway(&[
        "register",
        config.to_str().unwrap(),
        "--upstream",
        "u",
        "--url",
        "http://127.0.0.1:2",
    ]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("upstream \"u\" lists its targets; it has no discovery back end"),
        "{stderr}"
    );
}

/// Runs `plumeway compile-plugin` with `input` on stdin.
fn compile_plugin(input: &[u8]) -> (i32, Vec<u8>, String) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_plumeway-e2e"))
        .arg("compile-plugin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run plumeway compile-plugin");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn plugins_compile_in_a_child_that_tells_a_bad_component_apart() {
    // The contract between the proxy and the child it compiles plugins in:
    // a component gives wasmtime's precompiled artifact (an ELF image), an
    // invalid one exit code 3 and the compiler's reason.
    let wasm = std::fs::read(plumeway_tests::plugins::CHAOS).unwrap();
    let (code, artifact, stderr) = compile_plugin(&wasm);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        artifact.starts_with(b"\x7fELF"),
        "not an artifact: {} bytes",
        artifact.len()
    );
    let (code, artifact, stderr) = compile_plugin(b"not wasm at all");
    assert_eq!(code, 3, "{stderr}");
    assert!(artifact.is_empty());
    assert!(stderr.contains("magic header not detected"), "{stderr}");

    // Through `check`: the child's reason, with the config's place.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.wasm"), b"not wasm at all").unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[upstreams.b]\ntargets = [\"http://127.0.0.1:9\"]\n[plugins.bad]\npath = \"bad.wasm\"\n[[routes]]\nupstream = \"b\"\nrequest = [\"bad\"]\n",
    )
    .unwrap();
    let (code, stdout, stderr) = plumeway(&["check", config.to_str().unwrap()]);
    assert_eq!(code, 2, "{stdout}");
    assert!(
        stderr.contains("bad.toml:3:10: plugins.bad: not a valid plugin component: failed to parse WebAssembly module: magic header not detected"),
        "{stderr}"
    );
}
