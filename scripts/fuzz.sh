#!/usr/bin/env bash
# Fuzzes warren's frame reader, client handshake, channel state machine and
# method grammar
# (fuzz/fuzz_targets/) with cargo-fuzz and libFuzzer, each target for a
# bounded time, starting from the committed seed corpus (fuzz/corpus/).
# Installs cargo-fuzz into .cache/cargo if missing. Runs on the stable
# toolchain: without a sanitizer (-s none) cargo-fuzz needs no nightly
# flags; Rust's own checks (bounds, overflow, debug assertions) stay on.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 20; all targets)
#
# A crash leaves its input in fuzz/artifacts/TARGET/ and fails the script;
# reproduce with: cargo fuzz run -s none --fuzz-dir fuzz TARGET fuzz/artifacts/TARGET/crash-...
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

EACH=${1:-20}
shift || true
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(frames handshake channel methods)

export PATH="$ROOT/.cache/cargo/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --quiet --locked cargo-fuzz --root "$ROOT/.cache/cargo"
fi

for target in "${TARGETS[@]}"; do
  scratch="$ROOT/target/fuzz-corpus/$target"
  mkdir -p "$scratch"
  echo "== fuzz $target for ${EACH}s"
  log="$ROOT/target/fuzz-$target.log"
  # New inputs go to the scratch corpus (the first directory), never into
  # the committed seeds.
  if ! cargo fuzz run --fuzz-dir fuzz --sanitizer none "$target" "$scratch" "fuzz/corpus/$target" -- \
    -max_total_time="$EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz: $target failed; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E "^stat::(number_of_executed_units|peak_rss_mb)|^#[0-9]+ +DONE" "$log" || tail -n 3 "$log"
done
