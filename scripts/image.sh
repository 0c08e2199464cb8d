#!/usr/bin/env bash
# Builds warren's container image from the Dockerfile with docker or podman
# (CONTAINER_TOOL picks one), tagged warren:VERSION and warren:latest. The
# build stage pulls rust:*-bookworm, the runtime stage
# gcr.io/distroless/cc-debian12.
#
#   scripts/image.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

tool=${CONTAINER_TOOL:-}
if [[ -z $tool ]]; then
  for candidate in docker podman; do
    if command -v "$candidate" >/dev/null && "$candidate" info >/dev/null 2>&1; then
      tool=$candidate
      break
    fi
  done
fi
[[ -n $tool ]] || { echo "image: neither docker nor podman is installed and running" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
"$tool" build \
  --build-arg "WARREN_COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)" \
  --build-arg "SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)" \
  --tag "warren:$version" --tag warren:latest .
echo "image: warren:$version"
