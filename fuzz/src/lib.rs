//! The code of the fuzz targets in `fuzz_targets/`, kept in a library so that the seed
//! corpus writer (`examples/seeds.rs`) and the replay test (`tests/replay.rs`, stable
//! toolchain) run exactly what libFuzzer runs.
//!
//! | target | what |
//! |---|---|
//! | `classify` | [`event_core::codec::classify`] on arbitrary headers and payload ([`classify::run`]) |
//! | `decode` | [`Protobuf`](event_core::codec::Protobuf) and [`ProtoJson`](event_core::codec::ProtoJson) decoding with round trips, and [`Diagnosis::of`](event_core::codec::Diagnosis::of) ([`decode::run`]) |
//! | `amqp_wire` | event-amqp's header mapping, AMQP → `Message` → AMQP → `Message` ([`amqp_wire::run`]) |
//! | `nats_headers` | event-nats's reading of a header block async-nats refuses, and the dead letter made of it ([`nats_headers::run`]) |
//! | `gateway` | one event-gateway connection fed arbitrary bytes: framing, every command, the replies ([`gateway::run`]) |
//!
//! Inputs are read with [`input::Reader`] (a thin layer over [`arbitrary::Unstructured`]
//! whose byte format is easy to write by hand: [`input::Writer`]).

pub mod amqp_wire;
pub mod classify;
pub mod decode;
pub mod gateway;
pub mod input;
pub mod nats_headers;
