//! The `plumeway` binary, built inside the test package (see Cargo.toml).

fn main() -> std::process::ExitCode {
    plumeway::cli::main()
}
