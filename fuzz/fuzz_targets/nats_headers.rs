#![no_main]
//! `cargo +nightly fuzz run nats_headers`: see `event_fuzz::nats_headers`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| event_fuzz::nats_headers::run(data));
