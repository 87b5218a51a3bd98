#!/usr/bin/env bash
# Fuzzes one target with AFL++ (through afl.rs, on the stable toolchain) for a while.
#
#   fuzz/run.sh [TARGET] [SECONDS]     TARGET: canon, prefix, head or all (default canon)
#                                      SECONDS: per target (default 600)
#
# Installs cargo-afl and builds AFL++ if missing (apt-get for make/cc only when root),
# builds the instrumented targets, starts from seeds/TARGET with dict/TARGET.dict, and
# resumes the corpus in out/TARGET when there is one. Findings land in
# out/TARGET/default/{crashes,hangs}; the exit status is 1 when there are any.
set -euo pipefail

target=${1:-canon}
seconds=${2:-600}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"

case $target in
canon | prefix | head) targets=("$target") ;;
all) targets=(canon prefix head) ;;
*)
    echo "usage: $0 [canon|prefix|head|all] [SECONDS]" >&2
    exit 2
    ;;
esac

# --- tools -------------------------------------------------------------------------------
if ! command -v make >/dev/null || ! command -v cc >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update && apt-get install -y --no-install-recommends build-essential
    else
        echo "AFL++ needs make and a C compiler: install build-essential (as root)" >&2
        exit 1
    fi
fi
if ! cargo afl --version >/dev/null 2>&1; then
    cargo install cargo-afl --locked
fi
# Builds AFL++ (without the LLVM plugins, which need nightly) unless already built.
if ! out=$(cargo afl config --build 2>&1); then
    if ! grep -q "already built" <<<"$out"; then
        echo "$out" >&2
        exit 1
    fi
fi

# --- build -------------------------------------------------------------------------------
# A target dir of its own: cargo afl's RUSTFLAGS would otherwise rebuild plain builds.
cargo afl build --release --target-dir target/afl --bins

# --- fuzz --------------------------------------------------------------------------------
export AFL_NO_UI=1 AFL_AUTORESUME=1 AFL_SKIP_CPUFREQ=1
# The machine is shared: do not pin a core.
export AFL_NO_AFFINITY=1
# Core dumps piped to a helper (apport, systemd-coredump) only slow crash detection.
if grep -q '^|' /proc/sys/kernel/core_pattern 2>/dev/null; then
    export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
fi

status=0
for t in "${targets[@]}"; do
    out_dir=out/$t
    mkdir -p "$out_dir"
    echo "fuzzing $t for ${seconds}s; log in fuzz/$out_dir.log"
    start=$(date +%s)
    # -V stops AFL++ after the time; timeout is only a backstop.
    timeout --signal=INT $((seconds + 300)) \
        cargo afl fuzz -V "$seconds" -t 500 -i "seeds/$t" -o "$out_dir" -x "dict/$t.dict" \
        -- "target/afl/release/$t" >"$out_dir.log" 2>&1 || {
        echo "afl-fuzz failed; the end of fuzz/$out_dir.log:" >&2
        tail -20 "$out_dir.log" >&2
        exit 1
    }
    wall=$(($(date +%s) - start))
    stats=$out_dir/default/fuzzer_stats
    field() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
    crashes=$(find "$out_dir/default/crashes" -type f -name 'id:*' | wc -l)
    hangs=$(find "$out_dir/default/hangs" -type f -name 'id:*' | wc -l)
    printf '%s: wall %ss, afl run_time %ss, execs %s, execs/s %s, corpus %s, crashes %s, hangs %s\n' \
        "$t" "$wall" "$(field run_time)" "$(field execs_done)" "$(field execs_per_sec)" \
        "$(field corpus_count)" "$crashes" "$hangs"
    if [ "$crashes" -gt 0 ] || [ "$hangs" -gt 0 ]; then
        echo "  findings in fuzz/$out_dir/default/{crashes,hangs}; replay with:"
        echo "  (cd fuzz && cargo run --release --bin $t -- $out_dir/default/crashes)"
        status=1
    fi
done
exit $status
