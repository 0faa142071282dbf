//! `cargo fuzz run request_head`: see fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| plumeway::fuzzing::request_head(data));
