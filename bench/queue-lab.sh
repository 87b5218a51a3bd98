#!/usr/bin/env bash
# The queue lab of the README: slow_worker (4 slots of 100 ms: 40 requests a second) behind
# a queue of 100, loaded by `portshare load` at half its capacity for 5 s, twice its
# capacity for 20 s, and half again for 10 s; once with each 503 verbosity.
#
#   bench/queue-lab.sh                 both verbosities, pictures in docs/img/
#   bench/queue-lab.sh limited         one of them (limited, basic or full)
#
# Each run starts its own daemon on 127.0.0.1 (PORT, default 18080) with its own control
# socket and state in a temporary folder, the slow worker, then the load; it writes
# docs/img/queue-lab-VERBOSITY.svg (its CSV too, into CSV_DIR when set), prints the load's
# summary, and stops what it started. Builds the debug binaries first (PROFILE=release for release ones).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PORT=${PORT:-18080}
PROFILE=${PROFILE:-debug}
STEPS=${STEPS:-20:5s,80:20s,20:10s}
OUT=${OUT:-$ROOT/docs/img}

flags=()
[[ $PROFILE == release ]] && flags=(--release)
(cd "$ROOT" && cargo build "${flags[@]}" --bin portshare --example slow_worker >&2)
BIN=$ROOT/target/$PROFILE
mkdir -p "$OUT"

work=$(mktemp -d)
pids=()
stop() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
}
trap 'stop; rm -rf "$work"' EXIT

lab() {
    local verbosity=$1 dir=$work/$1
    mkdir -p "$dir"
    printf 'state_file = "%s/state.toml"\n[errlog]\nenabled = false\n' "$dir" >"$dir/portshare.toml"
    "$BIN/portshare" serve --control "$dir/control.sock" --iplisten 127.0.0.1 \
        --config "$dir/portshare.toml" 2>"$dir/daemon.log" &
    pids+=($!)
    for _ in $(seq 200); do [[ -S $dir/control.sock ]] && break; sleep 0.05; done
    "$BIN/examples/slow_worker" --control "$dir/control.sock" --name lab --delay-ms 100 \
        --workers 4 --queue-length 100 --verbosity "$verbosity" \
        "http://+:$PORT/lab/" >"$dir/worker.out" 2>"$dir/worker.log" &
    pids+=($!)
    for _ in $(seq 200); do grep -q ready "$dir/worker.out" 2>/dev/null && break; sleep 0.05; done
    grep -q ready "$dir/worker.out" || { cat "$dir/worker.log" >&2; exit 1; }
    echo "## $verbosity"
    "$BIN/portshare" load "http://127.0.0.1:$PORT/lab/" --steps "$STEPS" \
        --control "$dir/control.sock" --timeout 10s \
        --title "slow_worker (40/s) behind a queue of 100, verbosity $verbosity: $STEPS" \
        --csv "${CSV_DIR:-$dir}/queue-lab-$verbosity.csv" --plot "$OUT/queue-lab-$verbosity.svg"
    stop
}

case "${1:-both}" in
    limited | basic | full) lab "$1" ;;
    both) lab limited; lab basic ;;
    *) echo "usage: bench/queue-lab.sh [limited|basic|full|both]" >&2; exit 2 ;;
esac
