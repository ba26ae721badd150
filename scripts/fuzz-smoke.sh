#!/usr/bin/env bash
# CI smoke run of every fuzz target (docs/fuzzing.md): installs cargo-fuzz if missing, builds the
# targets on the stable toolchain (no sanitizer), then runs each one from its committed seed corpus
# for FUZZ_SECONDS (default 20; 9 targets, about 3 minutes). New inputs go to a scratch corpus
# under fuzz/target, so the committed corpus is left as it is. A crash, panic, timeout (10 s per
# input) or out-of-memory (2 GiB) fails the script; libFuzzer saves the input under
# fuzz/artifacts/<target>/.
#
# Usage: scripts/fuzz-smoke.sh [TARGET...]   (default: every target)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export CARGO_TERM_COLOR=never
secs="${FUZZ_SECONDS:-20}"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi
cargo fmt --check
cargo fuzz build -s none
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
for t in "${targets[@]}"; do
  echo "== fuzz $t (${secs}s)"
  scratch="target/smoke-corpus/$t"
  mkdir -p "$scratch"
  cargo fuzz run -s none "$t" "$scratch" "corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
