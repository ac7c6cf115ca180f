//! Runnable examples of the event framework: `cargo run --example quickstart`.
