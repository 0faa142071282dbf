//! The `plumeway` binary; everything lives in the library so that tests and
//! embedders run the same code.

fn main() -> std::process::ExitCode {
    plumeway::cli::main()
}
