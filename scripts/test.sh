#!/usr/bin/env bash
# The project's test command: installs or starts the brokers the tests need, then runs every
# test (unit, doc, trybuild, conformance, broker-backed). Broker-backed tests fail, not skip,
# when their broker is missing.
#
# - Kafka protocol: tansu (from crates.io, cached in ~/.cargo/bin) on 127.0.0.1:9092, started
#   here when nothing listens there.
# - RabbitMQ on 127.0.0.1:5672 (guest/guest): started when installed but stopped, installed
#   from Debian's packages when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/event-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export PATH="$HOME/.cargo/bin:$PATH"
STATE_DIR="${EVENT_TEST_STATE:-$HOME/.cache/event-test}"
mkdir -p "$STATE_DIR"

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() { # host port seconds what
    local deadline=$((SECONDS + $3))
    until port_open "$1" "$2"; do
        if ((SECONDS > deadline)); then
            echo "error: $4 did not open $1:$2 within $3 s" >&2
            return 1
        fi
        sleep 0.5
    done
}

ensure_tansu_binary() {
    if ! command -v tansu > /dev/null; then
        echo "== installing tansu (Kafka-compatible broker; about 12 minutes the first time)"
        cargo install tansu --locked --features dynostore,libsql
    fi
    export EVENT_TANSU_BIN="$(command -v tansu)"
}

ensure_kafka() {
    ensure_tansu_binary
    if port_open 127.0.0.1 9092; then
        echo "== Kafka protocol broker already listening on 127.0.0.1:9092"
    else
        echo "== starting tansu on 127.0.0.1:9092 (log: $STATE_DIR/tansu.log)"
        nohup "$EVENT_TANSU_BIN" broker \
            --listener-url tcp://127.0.0.1:9092 \
            --advertised-listener-url tcp://127.0.0.1:9092 \
            --storage-engine memory://tansu/ \
            > "$STATE_DIR/tansu.log" 2>&1 &
        wait_port 127.0.0.1 9092 60 "tansu" || { tail -n 20 "$STATE_DIR/tansu.log" >&2; exit 1; }
    fi
    export EVENT_TEST_KAFKA="127.0.0.1:9092"
}

ensure_rabbitmq() {
    if port_open 127.0.0.1 5672; then
        echo "== RabbitMQ already listening on 127.0.0.1:5672"
    else
        if ! command -v rabbitmq-server > /dev/null; then
            echo "== installing RabbitMQ from Debian's packages"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server
        fi
        echo "== starting RabbitMQ"
        rabbitmq-server -detached || true
        timeout 120 rabbitmqctl await_startup
        wait_port 127.0.0.1 5672 60 "RabbitMQ"
    fi
    export EVENT_TEST_AMQP="amqp://guest:guest@127.0.0.1:5672/%2f"
}

ensure_kafka
ensure_rabbitmq

for example in quickstart kafka amqp tracing; do
    echo "== example $example (must exit 0 on its own)"
    cargo run --quiet --example "$example" > "$STATE_DIR/$example.out"
    tail -n 1 "$STATE_DIR/$example.out"
done
# one trace across three services on each real broker too
for url in "kafka://127.0.0.1:9092" "$EVENT_TEST_AMQP"; do
    echo "== example tracing on ${url%%:*}"
    EVENT_BROKER="$url" cargo run --quiet --example tracing > "$STATE_DIR/tracing-${url%%:*}.out"
    tail -n 1 "$STATE_DIR/tracing-${url%%:*}.out"
done

echo "== cargo test (workspace, all features: unit, integration, broker-backed, trybuild, doc tests)"
cargo test --workspace --all-features --no-fail-fast
