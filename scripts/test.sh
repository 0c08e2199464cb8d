#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (as root):
# installs what it needs, checks formatting and lints, builds, runs the Rust
# unit tests, fuzzes for a minute (scripts/fuzz.sh), starts a throwaway
# RabbitMQ on loopback and runs the end-to-end tests with real clients
# through warren. Stops only what it started.
#
#   scripts/test.sh [PYTEST_ARGS...]      e.g. scripts/test.sh -k heartbeat
#
# WARREN_TEST_BROKER_PORT picks the broker port (default: 5772, or the next
# free one).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

scripts/setup.sh

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PORT=${WARREN_TEST_BROKER_PORT:-}
if [[ -z $PORT ]]; then
  for candidate in 5772 5782 5792 5802 5812; do
    if port_free "$candidate" && port_free $((candidate + 10000)) && port_free $((candidate + 20000)) &&
      port_free $((candidate + 30000)); then
      PORT=$candidate
      break
    fi
  done
fi
[[ -n $PORT ]] || { echo "test: no free broker port found" >&2; exit 1; }
export WARREN_TEST_BROKER_PORT=$PORT

echo "== format, lints and the shape of the source"
cargo fmt --all --check
cargo clippy --release --workspace --all-targets -- -D warnings
# No file over 600 lines, no function over 80, no import cycle.
scripts/code-shape.py --check >/dev/null

echo "== build"
cargo build --release

echo "== unit tests"
cargo test --release --workspace

echo "== fuzzing (cargo-fuzz, 20 s per target)"
scripts/fuzz.sh "${WARREN_FUZZ_SECONDS:-20}"

echo "== cargo install"
# What the README tells a user to run works (reusing this build's artifacts).
INSTALL_ROOT=$(mktemp -d)
CARGO_TARGET_DIR=$ROOT/target cargo install --quiet --locked --offline --path . --root "$INSTALL_ROOT"
"$INSTALL_ROOT/bin/warren" --version
# warren alone: the benchmark tool is a crate of its own.
[[ $(ls "$INSTALL_ROOT/bin") == warren ]] || { echo "cargo install installed more than warren" >&2; exit 1; }
rm -rf "$INSTALL_ROOT"

echo "== packages"
# The .deb and .rpm (test_package.py installs the .deb with dpkg).
scripts/package.sh
export WARREN_TEST_PACKAGE_DIR=$ROOT/target/package

echo "== test certificates"
export WARREN_TEST_TLS_DIR=$ROOT/target/test-ca
scripts/test-ca.sh "$WARREN_TEST_TLS_DIR"

echo "== broker on 127.0.0.1:$PORT"
stop_broker() { FAST_STOP=1 "$ROOT/scripts/broker.sh" stop "$PORT" >/dev/null 2>&1 || true; }
trap stop_broker EXIT
# With a TLS listener on PORT+10000 for the TLS tests.
TLS_DIR=$WARREN_TEST_TLS_DIR scripts/broker.sh start "$PORT"

echo "== end-to-end tests"
export WARREN_TEST_LOGS=${WARREN_TEST_LOGS:-$ROOT/target/e2e-logs}
mkdir -p "$WARREN_TEST_LOGS"
cd tests/e2e
"$ROOT/.cache/venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
