#![no_main]
//! `cargo +nightly fuzz run classify`: see `event_fuzz::classify`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| event_fuzz::classify::run(data));
