#![no_main]
//! `cargo +nightly fuzz run amqp_wire`: see `event_fuzz::amqp_wire`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| event_fuzz::amqp_wire::run(data));
