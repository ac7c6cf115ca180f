#![no_main]
//! `cargo +nightly fuzz run decode`: see `event_fuzz::decode`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| event_fuzz::decode::run(data));
