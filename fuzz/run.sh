#!/usr/bin/env bash
# Build and run every cargo-fuzz target for a fixed budget each: fuzz/run.sh BUDGET_SECONDS
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). cargo-fuzz passes nightly-only flags
# (-Zsanitizer); on a stable toolchain RUSTC_BOOTSTRAP=1 lets them through.
# A crash leaves its input under fuzz/artifacts/<target>/: turn it into a regression test in
# proto/tests/fuzz_regressions.rs. Exit status: non-zero if a target failed to build or crashed.
set -euo pipefail
budget="${1:?usage: fuzz/run.sh BUDGET_SECONDS}"
cd "$(dirname "$0")"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: cargo-fuzz is not installed; install it with: cargo install cargo-fuzz --locked" >&2
    exit 2
fi
export RUSTC_BOOTSTRAP=1
targets=(manifest api_decode)
cargo fuzz build -O
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "fuzz/run.sh: running $t for ${budget}s"
    # -rss_limit_mb: an input that makes the loader allocate unboundedly is a finding too.
    cargo fuzz run -O "$t" "corpus/$t" -- \
        -max_total_time="$budget" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
done
