//! `cargo fuzz run plugin_output`: see fuzz/README.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| plumeway::fuzzing::plugin_output(data));
