#!/usr/bin/env bash
# Builds the go-micro peer the interop tests run (event-amqp/tests/go_micro.rs,
# event-kafka/tests/go_micro_peer.rs and kafka.rs, event-nats/tests/go_micro.rs): regenerates the Go types of proto/ (./gen, protoc-gen-go
# driven in process, no protoc), then builds
#   $EVENT_INTEROP_HOME/go-micro-peer        (RabbitMQ and NATS, go-micro v5)
#   $EVENT_INTEROP_HOME/go-micro-peer-kafka  (Kafka, go-micro v4 + the Kafka plugin)
# EVENT_INTEROP_HOME defaults to ~/.cache/event-interop. Modules come from the Go module
# cache (GOMODCACHE, by default ~/go/pkg/mod), outside the clone; the first run fetches them
# through the module proxy, later runs need no network. Prints the peer's path.
set -euo pipefail
cd "$(dirname "$0")"
out="${EVENT_INTEROP_HOME:-$HOME/.cache/event-interop}"
mkdir -p "$out"
export GOFLAGS=-mod=mod
command -v go > /dev/null || { echo "interop/go-micro/build.sh: go is not installed" >&2; exit 1; }
go run ./gen -proto ../../proto -out . >&2
go build -o "$out/go-micro-peer" . >&2
go build -o "$out/go-micro-peer-kafka" ./kafka >&2
echo "$out/go-micro-peer"
