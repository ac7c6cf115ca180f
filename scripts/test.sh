#!/usr/bin/env bash
# The project's test command: checks or starts the brokers the tests need, then runs every
# test (unit, doc, trybuild, conformance). Broker-backed tests fail, not skip, when their
# broker is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/event-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== quickstart (must exit 0 on its own)"
cargo run --quiet --example quickstart > "$CARGO_TARGET_DIR/quickstart.out"
tail -n 1 "$CARGO_TARGET_DIR/quickstart.out"

echo "== cargo test (workspace, all features: unit, integration, trybuild, doc tests)"
cargo test --workspace --all-features --no-fail-fast
