#!/usr/bin/env bash
# Runs warren. With an upstream URL, in front of that broker; without one, in
# front of a throwaway local RabbitMQ that this script installs (if needed),
# starts on 127.0.0.1:5772 and stops again when warren exits.
#
#   scripts/run.sh [UPSTREAM_URL] [WARREN_OPTIONS...]
#
# Clients then connect to amqp://guest:guest@127.0.0.1:5673/ (or the --port given).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

UPSTREAM=
if [[ $# -gt 0 && $1 =~ ^amqps?:// ]]; then
  UPSTREAM=$1
  shift
fi
cargo build --release --quiet --package warren

if [[ -z $UPSTREAM ]]; then
  scripts/setup.sh broker
  BROKER_PORT=${WARREN_BROKER_PORT:-5772}
  scripts/broker.sh start "$BROKER_PORT"
  trap 'FAST_STOP=1 scripts/broker.sh stop "$BROKER_PORT" >/dev/null 2>&1 || true' EXIT
  UPSTREAM=amqp://127.0.0.1:$BROKER_PORT
  echo "run: local broker at $UPSTREAM (users guest/guest on / and /app, app/secret on /app)"
fi

PORT=5673
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case ${args[i]} in -p | --port) PORT=${args[i + 1]:-$PORT} ;; --port=*) PORT=${args[i]#--port=} ;; esac
done
echo "run: connect clients to amqp://guest:guest@127.0.0.1:$PORT/ (Ctrl-C stops)"
echo "run: status page http://127.0.0.1:15673/ and metrics http://127.0.0.1:15673/metrics (unless --http-port says otherwise)"
target/release/warren "$@" "$UPSTREAM" &
WARREN_PID=$!
trap 'kill -TERM $WARREN_PID 2>/dev/null || true' INT TERM
wait $WARREN_PID || wait $WARREN_PID
