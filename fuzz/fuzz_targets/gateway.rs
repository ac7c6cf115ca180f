#![no_main]
//! `cargo +nightly fuzz run gateway`: see `event_fuzz::gateway`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| event_fuzz::gateway::run(data));
