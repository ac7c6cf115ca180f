//! The cost of the AMQP header mapping alone, without a broker: a typed message turned into
//! AMQP properties (`to_amqp`, per wire profile) and a consumed one turned back
//! (`from_amqp`).
//!
//! ```text
//! cargo bench -p event-amqp --bench wire              # 200,000 calls per run, 7 rounds
//! CALLS=20000 ROUNDS=1 PROFILE=lean cargo bench -p event-amqp --bench wire
//! ```
//!
//! The message is a 64-byte `Tick` as `Publisher<Tick>` encodes it (the headers of a typed
//! publish without a trace context). Each row prints its median time per call over `ROUNDS`
//! runs of `CALLS` calls. `valgrind --tool=callgrind` on this binary counts the instructions
//! per call exactly, which is what a change to the mapping should be judged by on a busy
//! two-core machine.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use event_amqp::{__fuzz, AmqpBroker, WireProfile};
use event_core::Publisher;
use event_proto::bench::v1::Tick;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median of `rounds` runs of `calls` calls of `f`, in nanoseconds per call.
fn time(rounds: usize, calls: usize, mut f: impl FnMut()) -> f64 {
    let mut per_call: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..calls {
                f();
            }
            t.elapsed().as_nanos() as f64 / calls as f64
        })
        .collect();
    per_call.sort_by(f64::total_cmp);
    per_call[per_call.len() / 2]
}

fn main() {
    let calls = env("CALLS", 200_000).max(1);
    // one profile only (its `wire` URL value), or every one
    let only: Option<WireProfile> = std::env::var("PROFILE")
        .ok()
        .map(|p| p.parse().expect("PROFILE: a wire profile"));
    let rounds = env("ROUNDS", 7).max(1);
    // a broker that is never connected: the publisher only encodes
    let broker = AmqpBroker::builder("amqp://127.0.0.1:5672/%2f")
        .build()
        .expect("a valid URL");
    let topic = "bench.wire";
    let publisher = Publisher::<Tick>::new(Arc::new(broker), "bench", topic);
    let tick = Tick {
        seq: 1 << 20,
        payload: vec![0xab; 58].into(),
    };
    let message = publisher.encode(&tick, None);
    println!(
        "{calls} calls per run, median of {rounds} runs; a typed message of {} bytes with {} headers",
        message.payload.len(),
        message.headers.len()
    );
    for profile in [
        WireProfile::LEAN,
        WireProfile::GO_MICRO,
        WireProfile::CLOUDEVENTS,
    ] {
        if only.is_some_and(|only| only != profile) {
            continue;
        }
        // the `wire` URL value
        let label = profile.to_string();
        let ns = time(rounds, calls, || {
            black_box(__fuzz::to_amqp_with(topic, black_box(&message), profile).expect("maps"));
        });
        println!("to_amqp,   {label:<12} {ns:8.1} ns per call");
        let properties = __fuzz::to_amqp_with(topic, &message, profile).expect("maps");
        let payload = message.payload.to_vec();
        let ns = time(rounds, calls, || {
            black_box(__fuzz::from_amqp(
                topic,
                false,
                black_box(&properties),
                payload.clone(),
            ));
        });
        println!("from_amqp, {label:<12} {ns:8.1} ns per call (with a copy of the payload)");
    }
}
