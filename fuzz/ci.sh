#!/usr/bin/env bash
# Short, fixed-length fuzzing of every cargo-fuzz target, for CI (issue 6).
#
# Builds all targets, then runs each from its committed seeds (fuzz/seeds/)
# for a fixed number of executions with a fixed seed, so a run is
# reproducible. Any crash, panic, timeout or out-of-memory fails the script
# (libFuzzer exits non-zero and leaves the input in fuzz/artifacts/<target>/).
# Takes about 1.5 minutes warm on 2 cores (plus the build after a change).
#
# Usage: fuzz/ci.sh [target...]     (default: every target)
# Env:   FUZZ_RUNS_SCALE=N multiplies every run count (default 1).
set -euo pipefail

cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1  # cargo-fuzz passes nightly-only flags; stable accepts them with this

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# Executions per target: about 10-20 s each on this machine's 2 cores.
declare -A RUNS=(
    [server_session]=60000
    [bdat]=40000
    [command_line]=100000
    [data_decoder]=100000
    [proxy_header]=200000
    [sasl]=100000
    [reply_parser]=150000
    [address]=200000
    [client_session]=60000
)
scale=${FUZZ_RUNS_SCALE:-1}

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for t in "${targets[@]}"; do
    runs=$(( ${RUNS[$t]:-50000} * scale ))
    mkdir -p "$work/$t"
    echo "=== $t: $runs runs"
    # New inputs go to a scratch corpus; the seeds are read, never written.
    if ! cargo fuzz run "$t" "$work/$t" "seeds/$t" -- \
        -runs="$runs" -seed=1 -dict=smtp.dict -timeout=10 -rss_limit_mb=2048 \
        -max_total_time=120 -print_final_stats=1 >"$work/$t.log" 2>&1; then
        tail -n 60 "$work/$t.log"
        echo "fuzz/ci.sh: $t FAILED (input saved under fuzz/artifacts/$t/)" >&2
        exit 1
    fi
    grep -E 'DONE|stat::average_exec_per_sec' "$work/$t.log" || true
done
echo "fuzz/ci.sh: ${#targets[@]} targets OK"
