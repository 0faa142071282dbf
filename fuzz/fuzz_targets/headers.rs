//! `cargo fuzz run headers`: see fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| plumeway::fuzzing::headers(data));
