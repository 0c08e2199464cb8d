#!/usr/bin/env bash
# The short-lived client latency benchmark (see bench/latency.py): starts a
# throwaway broker, runs every real client directly and through warren
# across a 50 ms round-trip link, prints the table, stops the broker.
#   scripts/bench-latency.sh [--cycles N] [--delay-ms D]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
scripts/setup.sh
cargo build --release --quiet
PORT=${WARREN_BENCH_BROKER_PORT:-5872}
trap 'FAST_STOP=1 scripts/broker.sh stop "$PORT" >/dev/null 2>&1 || true' EXIT
scripts/broker.sh start "$PORT"
WARREN_BENCH_BROKER_PORT=$PORT .cache/venv/bin/python bench/latency.py "$@"
