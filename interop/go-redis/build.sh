#!/usr/bin/env bash
# Builds the go-redis client the event-gateway tests spawn (a real Redis client,
# github.com/redis/go-redis/v9, see main.go) into
#   $EVENT_INTEROP_HOME/go-redis-client
# EVENT_INTEROP_HOME defaults to ~/.cache/event-interop. Modules come from the Go module
# cache (GOMODCACHE, by default ~/go/pkg/mod), outside the clone; the first run fetches them
# through the module proxy, later runs need no network. Prints the binary's path on stdout,
# everything else on stderr.
set -euo pipefail
cd "$(dirname "$0")"
out="${EVENT_INTEROP_HOME:-$HOME/.cache/event-interop}"
mkdir -p "$out"
export GOFLAGS=-mod=mod
command -v go > /dev/null || { echo "interop/go-redis/build.sh: go is not installed" >&2; exit 1; }
go build -o "$out/go-redis-client" . >&2
echo "$out/go-redis-client"
