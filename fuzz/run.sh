#!/usr/bin/env bash
# Build and run every cargo-fuzz target for a fixed budget each: fuzz/run.sh BUDGET_SECONDS
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); .ci/run calls it with 30 s per target.
# Each target starts from the committed seeds (fuzz/seeds/<target>/) and regression inputs
# (fuzz/regressions/<target>/), both read only, plus whatever earlier runs left in
# fuzz/corpus/<target>/ (not committed; new inputs are written there).
# A crash leaves its input under fuzz/artifacts/<target>/ and run.sh prints it (base64) in the
# log: minimize it (`cargo fuzz tmin -s none <target> <file>`), fix the bug, and commit the
# input under fuzz/regressions/<target>/: proto/tests/fuzz_regressions.rs replays every seed and
# regression input through the targets' entry points (fuzz/entry_points.rs) in the test suite.
# Exit status: non-zero if a target failed to build or any target crashed (all targets still run).
set -euo pipefail
budget="${1:?usage: fuzz/run.sh BUDGET_SECONDS}"
cd "$(dirname "$0")"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: cargo-fuzz is not installed; install it with: cargo install cargo-fuzz --locked" >&2
    exit 2
fi
# Build flags, shared by build and run (any difference would make `cargo fuzz run` rebuild).
# -s none: no AddressSanitizer. What these targets look for is panics (a panic is a crash to
# libFuzzer with or without a sanitizer), unbounded allocation (-rss_limit_mb) and hangs
# (-timeout); berth-proto forbids unsafe code and saphyr-parser has none, so ASan would only
# watch the unsafe code of serde_json/prost/bytes. Measured on the 2-core machine: ASan made the
# cold build ~20% more CPU and every execution 4-5x slower (manifest: 546 vs 2330 exec/s), i.e.
# a 30 s budget would try a quarter of the inputs. Without a sanitizer no -Z flag is passed, so a
# stable toolchain builds this without RUSTC_BOOTSTRAP.
# No -O: cargo-fuzz's default is an optimized build *with* debug assertions and overflow checks,
# so an arithmetic overflow on hostile input is a crash rather than a silent wrap (-O drops them).
flags=(-s none)
targets=(manifest api_decode)

start=$(date +%s)
cargo fuzz build "${flags[@]}"
echo "fuzz/run.sh: build of ${targets[*]} took $(( $(date +%s) - start ))s"

status=0
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "seeds/$t" "regressions/$t"
    log="$(mktemp)" since="$(mktemp)" # since: a timestamp, to find the inputs this run wrote
    echo "fuzz/run.sh: running $t for ${budget}s"
    # -rss_limit_mb: an input that makes the loader allocate unboundedly is a finding too.
    if cargo fuzz run "${flags[@]}" "$t" "corpus/$t" "seeds/$t" "regressions/$t" -- \
        -max_total_time="$budget" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 2>&1 | tee "$log"; then
        result=ok
    else
        result="FAILED (input under fuzz/artifacts/$t/, printed above)"
        status=1
        # libFuzzer prints only short inputs itself, and a CI machine may not keep artifacts/.
        find "artifacts/$t" -type f -newer "$since" 2>/dev/null | while read -r f; do
            echo "fuzz/run.sh: $t input fuzz/$f ($(wc -c <"$f") bytes), base64:"
            base64 -w 0 "$f"
            echo
        done || true
    fi
    done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true)"
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    summary+=("$t: $result; execs=${execs:-?}; ${done_line:-no final stats}")
    rm -f "$log" "$since"
done
echo "fuzz/run.sh: summary (${budget}s per target):"
printf '  %s\n' "${summary[@]}"
exit "$status"
