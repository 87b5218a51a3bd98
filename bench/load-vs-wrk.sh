#!/usr/bin/env bash
# `portshare load` beside wrk on one target: a release daemon on 127.0.0.1 with `hello`
# attached to http://+:PORT/, loaded in turn by `wrk -t2 -c64 -d10s` and by
# `portshare load --rate RATE --duration 10s --connections 64 --threads 2`, PAIRS times,
# back to back (the first of each pair alternates, so a drift of the machine falls on
# both). RATE is well above what the target can serve, so both are limited by the target
# and a connection back from a response always finds a request due (at a rate close to the
# target's, such as 40000 against one serving 30,000 to 45,000 a second, it often waits for
# the next request's time instead, as an open loop should); the achieved rates are the responses a second each reports. Then `portshare load` runs at
# shares of wrk's median rate (PACED, default 0.9 and 0.5), to show the open loop holds the
# rate it is asked for.
#
#   bench/load-vs-wrk.sh              3 pairs; PORT=18090 RATE=80000 DURATION=10s PAIRS=3
#   LOAD=/path/to/portshare BUILD=0 bench/load-vs-wrk.sh    another build's generator
#
# Prints each pair's rates, ratio and CPU a response (each tool's, and the target's: daemon
# and hello), the median ratio, and the paced runs' summaries. Builds
# the release binaries first; stops everything it started.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PORT=${PORT:-18090}
RATE=${RATE:-80000}
DURATION=${DURATION:-10s}
PAIRS=${PAIRS:-3}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}

command -v wrk >/dev/null || { echo "load-vs-wrk: wrk is not installed" >&2; exit 1; }
[[ ${BUILD:-1} == 0 ]] || (cd "$ROOT" && cargo build --release --bin portshare --example hello >&2)
BIN=$ROOT/target/release
LOAD=${LOAD:-$BIN/portshare}

work=$(mktemp -d)
pids=()
stop() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
}
trap 'stop; rm -rf "$work"' EXIT

printf 'state_file = "%s/state.toml"\n[errlog]\nenabled = false\n' "$work" >"$work/portshare.toml"
"$BIN/portshare" serve --control "$work/control.sock" --iplisten 127.0.0.1 \
    --config "$work/portshare.toml" 2>"$work/daemon.log" &
pids+=($!)
for _ in $(seq 200); do [[ -S $work/control.sock ]] && break; sleep 0.05; done
"$BIN/examples/hello" --control "$work/control.sock" --name bench --body "hello" \
    "http://+:$PORT/" >"$work/hello.out" 2>"$work/hello.log" &
pids+=($!)
for _ in $(seq 200); do grep -q ready "$work/hello.out" 2>/dev/null && break; sleep 0.05; done
grep -q ready "$work/hello.out" || { cat "$work/hello.log" >&2; exit 1; }
URL=http://127.0.0.1:$PORT/

# Each sets `got` to the responses a second the tool reports, `cpu` to the tool's CPU (user
# and system) a response and `server` to the target's (daemon and hello), in µs. The tools
# run in the foreground, so an interrupted script stops them too.
daemon=${pids[0]} app=${pids[1]}
ticks() { awk '{ t += $14 + $15 } END { print t }' "/proc/$daemon/stat" "/proc/$app/stat"; }
per_response() {
    awk -v n="$1" -v t0="$2" -v t1="$(ticks)" -v hz="$(getconf CLK_TCK)" '{
        n = n > 0 ? n : 1
        printf "%.1f %.1f\n", ($1 + $2) * 1e6 / n, (t1 - t0) / hz * 1e6 / n
    }' "$work/cpu"
}
run_wrk() {
    local t0
    t0=$(ticks)
    /usr/bin/time -o "$work/cpu" -f '%U %S' \
        wrk -t2 -c"$CONNECTIONS" -d"$DURATION" "$URL" >"$work/wrk.txt"
    cat "$work/wrk.txt" >>"$work/wrk-all.txt"
    got=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$work/wrk.txt")
    read -r cpu server < <(per_response "$(awk '/requests in/ { print $1 }' "$work/wrk.txt")" "$t0")
}
run_load() {
    local t0
    t0=$(ticks)
    /usr/bin/time -o "$work/cpu" -f '%U %S' \
        "$LOAD" load "$URL" --rate "$1" --duration "$DURATION" --connections "$CONNECTIONS" \
        --threads "$THREADS" --control "$work/control.sock" >"$work/load.txt"
    cat "$work/load.txt" >>"$work/load-all.txt"
    got=$(awk '$1 == "2xx" { gsub(/[()\/s]/, "", $3); printf "%.0f", $3 }' "$work/load.txt")
    read -r cpu server < <(per_response "$(awk '$1 == "2xx" { print $2 }' "$work/load.txt")" "$t0")
}

ratios=()
wrks=()
echo "pair  wrk/s     load/s    load/wrk  CPU µs a response: wrk  load  target(wrk)  target(load)"
for i in $(seq "$PAIRS"); do
    if ((i % 2)); then
        run_wrk; w=$got wc=$cpu ws=$server; sleep 1; run_load "$RATE"; l=$got lc=$cpu ls=$server
    else
        run_load "$RATE"; l=$got lc=$cpu ls=$server; sleep 1; run_wrk; w=$got wc=$cpu ws=$server
    fi
    r=$(awk -v l="$l" -v w="$w" 'BEGIN { printf "%.3f", l / w }')
    printf '%-5s %-9s %-9s %-9s %22s %5s %12s %13s\n' "$i" "$w" "$l" "$r" "$wc" "$lc" "$ws" "$ls"
    ratios+=("$r")
    wrks+=("$w")
    sleep 1
done
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "median load/wrk: $(median "${ratios[@]}")"
for share in ${PACED:-0.9 0.5}; do
    paced=$(awk -v w="$(median "${wrks[@]}")" -v s="$share" 'BEGIN { printf "%.0f", w * s }')
    echo "## portshare load --rate $paced ($share of wrk's median)"
    run_load "$paced"
    cat "$work/load.txt"
    echo "  CPU µs a response: generator $cpu, target $server"
done
