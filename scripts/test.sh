#!/usr/bin/env bash
# The project's test command: provides the brokers the tests need (scripts/brokers.sh:
# Apache Kafka, RabbitMQ, NATS with JetStream, Redis, each installed when missing and started
# when stopped), then runs every test (unit, doc, trybuild, conformance, broker-backed).
# Broker-backed tests fail, not skip, when their broker is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/event-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
STATE_DIR="${EVENT_TEST_STATE:-$HOME/.cache/event-test}"
mkdir -p "$STATE_DIR"

scripts/brokers.sh start
eval "$(scripts/brokers.sh env)"

for example in quickstart kafka amqp nats tracing; do
    echo "== example $example (must exit 0 on its own)"
    cargo run --quiet --example "$example" > "$STATE_DIR/$example.out"
    tail -n 1 "$STATE_DIR/$example.out"
done
# one trace across three services on each real broker too
for url in "kafka://$EVENT_TEST_KAFKA" "$EVENT_TEST_AMQP" "$EVENT_TEST_NATS"; do
    echo "== example tracing on ${url%%:*}"
    EVENT_BROKER="$url" cargo run --quiet --example tracing > "$STATE_DIR/tracing-${url%%:*}.out"
    tail -n 1 "$STATE_DIR/tracing-${url%%:*}.out"
done

EVENT_GO_MICRO_PEER="$(interop/go-micro/build.sh)"; export EVENT_GO_MICRO_PEER  # the go-micro peer of the interop tests
EVENT_GO_REDIS_CLIENT="$(interop/go-redis/build.sh)"; export EVENT_GO_REDIS_CLIENT  # go-redis, for event-gateway's tests
echo "== cargo test (workspace, all features: unit, integration, broker-backed, trybuild, doc tests)"
cargo test --workspace --all-features --no-fail-fast
