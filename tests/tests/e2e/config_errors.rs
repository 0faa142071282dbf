//! Every invalid-config message a user can hit, pinned word for word.
//!
//! Each `tests/config/invalid/NAME.toml` has a `NAME.err` beside it holding
//! the exact message. After an intended wording change, regenerate them with
//! `PLUMEWAY_BLESS=1 cargo test -p plumeway-tests --test e2e config_errors::` and
//! review the diff.

use std::path::{Path, PathBuf};

use plumeway::config::Config;

fn invalid_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/invalid")
}

#[test]
fn each_invalid_config_gives_its_pinned_message() {
    let bless = std::env::var_os("PLUMEWAY_BLESS").is_some();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(invalid_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "the invalid-config cases are missing");
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap();
        let source = std::fs::read_to_string(case).unwrap();
        let got = match Config::parse(Path::new(name), &source) {
            Ok(_) => format!("(accepted: {} should be rejected)", name.to_string_lossy()),
            Err(err) => err.to_string(),
        };
        let expected_path = case.with_extension("err");
        if bless {
            std::fs::write(&expected_path, format!("{got}\n")).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} has no .err file; run with PLUMEWAY_BLESS=1", case.display()));
        if got != expected.trim_end_matches('\n') {
            failures.push(format!("{}:\n--- expected\n{expected}--- got\n{got}\n", case.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_example_config_is_valid() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let dir = entry.unwrap().path();
        let config = dir.join("plumeway.toml");
        if config.exists() {
            Config::load(&config).unwrap_or_else(|e| panic!("{e}"));
            checked += 1;
        }
    }
    assert!(checked >= 1, "no example configs found under {}", examples.display());
}
