#!/usr/bin/env bash
# Runs every test: installs the external test tools if missing (helm, kubernetes-validate),
# then the whole workspace suite. The tools are required here, so tool-gated tests fail instead
# of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x scripts/install-test-tools.sh ]; then
  scripts/install-test-tools.sh
fi
export DRIFTLESS_REQUIRE_TOOLS=1
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
