#!/usr/bin/env bash
# CI for the TypeScript client, on a fresh machine with Node >= 20 and the repo's Python venv
# (`.venv/bin/modelroute` and `.venv/bin/buf`, or MODELROUTE_BIN / BUF pointing elsewhere).
#   1. install exactly the locked dependencies
#   2. regenerate the protobuf-es stubs and fail if they differ from the committed ones
#   3. type-check
#   4. run the tests (they start real modelroute servers)
set -euo pipefail
cd "$(dirname "$0")"
repo_root="$(cd ../.. && pwd)"
export BUF="${BUF:-$repo_root/.venv/bin/buf}"
export MODELROUTE_BIN="${MODELROUTE_BIN:-$repo_root/.venv/bin/modelroute}"

npm ci --no-audit --no-fund
npm run generate
if ! git diff --exit-code -- src/gen || [ -n "$(git status --porcelain -- src/gen)" ]; then
  echo "src/gen is out of date: run 'npm run generate' in clients/typescript and commit" >&2
  exit 1
fi
npx tsc --noEmit
npm test
