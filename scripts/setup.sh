#!/usr/bin/env bash
# Installs what the test suite and scripts/run.sh need on a fresh Debian 12
# machine (as root). Idempotent: a warm run takes about a second.
#   scripts/setup.sh          everything
#   scripts/setup.sh broker   only the broker (what scripts/run.sh needs)
#   apt:  rabbitmq-server, php-cli, php-amqp (C extension), php-amqplib,
#         chromium and chromium-driver (the status page's browser test),
#         rpm (to read the .rpm scripts/package.sh builds)
#   pip:  pika, pytest and selenium, in a virtualenv at .cache/venv
#   npm:  amqplib, in tests/clients/node_modules (from the lockfile)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
t0=$SECONDS

packages=(rabbitmq-server php-cli php-amqp php-amqplib python3-venv openssl iproute2 chromium chromium-driver rpm)
[[ ${1:-} == broker ]] && packages=(rabbitmq-server)
need=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
  echo "setup: apt-get install ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [[ ${1:-} == broker ]]; then
  echo "setup: broker ready in $((SECONDS - t0))s"
  exit 0
fi

VENV=$ROOT/.cache/venv
if [[ ! -x $VENV/bin/python ]]; then
  python3 -m venv "$VENV"
fi
if ! cmp -s "$ROOT/tests/requirements.txt" "$VENV/.installed-requirements" 2>/dev/null; then
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$ROOT/tests/requirements.txt"
  cp "$ROOT/tests/requirements.txt" "$VENV/.installed-requirements"
fi

if [[ ! -d $ROOT/tests/clients/node_modules/amqplib ]]; then
  (cd "$ROOT/tests/clients" && npm ci --silent --no-audit --no-fund >/dev/null)
fi
echo "setup: done in $((SECONDS - t0))s"
