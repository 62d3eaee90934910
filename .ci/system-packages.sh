#!/usr/bin/env bash
# Debian packages the suite drives for real: Chromium (dashboard tests, headless) and
# Node.js/npm (TypeScript client) when the machine lacks them. The Go toolchain and
# Debian's Go libraries are installed by clients/go/test.sh; PostgreSQL by .ci/postgres.sh.
set -euo pipefail
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v npm >/dev/null || missing+=(nodejs npm)
if ((${#missing[@]})); then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
