#!/usr/bin/env bash
# Builds and runs every fuzz target for SECONDS each (default 60), one
# after the other, and reports how many inputs each one ran.
#
#   fuzz/run.sh [SECONDS_PER_TARGET]
#
# Exits non-zero if any target crashed (the input is kept under
# fuzz/artifacts/TARGET/). The corpus grows under fuzz/corpus/TARGET/,
# seeded from fuzz/seeds/TARGET/. CARGO_BUILD_JOBS (default 2) bounds the
# build's parallelism.
set -euo pipefail

secs="${1:-60}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -eq 0 ]; then
    echo "usage: $0 [SECONDS_PER_TARGET]" >&2
    exit 2
fi

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$fuzz_dir/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
# cargo-fuzz passes nightly-only flags (-Zsanitizer=address); this lets
# the stable toolchain accept them.
export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

targets=(client_message delta_ops sequencer)
logs="$fuzz_dir/target/run-logs"
mkdir -p "$logs"

start=$(date +%s)
cargo fuzz build
echo "build: $(( $(date +%s) - start )) s"

failed=()
for t in "${targets[@]}"; do
    corpus="$fuzz_dir/corpus/$t"
    mkdir -p "$corpus"
    if [ -d "$fuzz_dir/seeds/$t" ]; then
        cp -n "$fuzz_dir/seeds/$t"/* "$corpus"/ 2>/dev/null || true
    fi
    extra=()
    case "$t" in
        client_message) extra=(-max_len=4096 "-dict=$fuzz_dir/client_message.dict") ;;
    esac
    echo "== $t: ${secs} s"
    if cargo fuzz run "$t" "$corpus" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=60 -print_final_stats=1 \
        "${extra[@]}" >"$logs/$t.log" 2>&1; then
        :
    else
        failed+=("$t")
        echo "!! $t failed; the end of its log ($logs/$t.log):"
        tail -n 60 "$logs/$t.log"
    fi
done

echo
printf '%-16s %12s %8s %10s %8s\n' target runs seconds 'exec/s' corpus
for t in "${targets[@]}"; do
    done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$logs/$t.log" | tail -n 1 || true)
    if [ -n "$done_line" ]; then
        runs=$(awk '{print $2}' <<<"$done_line")
        took=$(awk '{print $5}' <<<"$done_line")
    else
        # Stopped early (a crash): the last status line has the count.
        runs=$(grep -oE '^#[0-9]+' "$logs/$t.log" | tail -n 1 | tr -d '#' || true)
        took="-"
    fi
    runs=${runs:-0}
    if [ "$took" != "-" ] && [ "$took" -gt 0 ]; then
        rate=$(( runs / took ))
    else
        rate="-"
    fi
    files=$(find "$fuzz_dir/corpus/$t" -type f | wc -l)
    printf '%-16s %12s %8s %10s %8s\n' "$t" "$runs" "$took" "$rate" "$files"
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "crashed: ${failed[*]} (inputs in $fuzz_dir/artifacts/)" >&2
    exit 1
fi
