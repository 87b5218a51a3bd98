#!/usr/bin/env bash
# The scale lab: one daemon with many registrations.
#
#   bench/scale.sh            100,000 URLs (COUNT), on port 18080 (PORT)
#   PARTS=config bench/scale.sh   only the configuration file's parts (api: the others)
#
# 1. registered over one control connection, one request each, then removed the same way
#    (examples/registrations: the time of each tenth and the daemon's memory);
# 2. the same in batches of 1,000 (BATCH), when the daemon takes lists;
# 3. a configuration file listing them all: the time from start until the daemon's first
#    answer on its control socket (the state view, every URL registered);
# 4. a reload of that file with one URL changed.
#
# Each part starts its own release daemon on 127.0.0.1 with its own control socket and
# folder, and stops it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COUNT=${COUNT:-100000}
PORT=${PORT:-18080}
BATCH=${BATCH:-1000}
PARTS=${PARTS:-api,config}
(cd "$ROOT" && cargo build --release --bin portshare --example registrations >&2)
BIN=$ROOT/target/release

work=$(mktemp -d)
pid=
stop() {
    if [[ -n $pid ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    pid=
}
trap 'stop; rm -rf "$work"' EXIT

# start CONFIG_TEXT: a daemon on the configuration, once its control socket exists.
start() {
    rm -rf "$work/d" && mkdir -p "$work/d"
    printf 'state_file = "%s/state.toml"\n[errlog]\nenabled = false\n%s' "$work/d" "$1" \
        >"$work/d/portshare.toml"
    PORTSHARE_LOG=warn "$BIN/portshare" serve --control "$work/d/control.sock" \
        --iplisten 127.0.0.1 --config "$work/d/portshare.toml" 2>"$work/d/daemon.log" &
    pid=$!
    for _ in $(seq 2000); do [[ -S $work/d/control.sock ]] && return; sleep 0.01; done
    cat "$work/d/daemon.log" >&2
    exit 1
}

if [[ $PARTS == *api* ]]; then
echo "## $COUNT URLs, one request each"
start ""
"$BIN/examples/registrations" --control "$work/d/control.sock" --pid "$pid" \
    --count "$COUNT" --step $((COUNT / 10)) --port "$PORT"
stop

if "$BIN/examples/registrations" --help | grep -q -- --batch; then
    echo "## $COUNT URLs, $BATCH a request"
    start ""
    "$BIN/examples/registrations" --control "$work/d/control.sock" --pid "$pid" \
        --count "$COUNT" --step $((COUNT / 10)) --port "$PORT" --batch "$BATCH"
    stop
fi
fi
[[ $PARTS == *config* ]] || exit 0

echo "## a configuration file with $COUNT URLs"
urls() { # urls SKIP EXTRA: the URL list, without tenant SKIP, with EXTRA
    local n
    echo 'urls = ['
    for ((n = 0; n < COUNT; n++)); do
        ((n == $1)) || echo "  \"http://+:$PORT/tenant$n/app/\","
    done
    [[ -n $2 ]] && echo "  \"$2\","
    echo ']'
}
config=$(printf '[[queue]]\nname = "tenants"\n%s\n' "$(urls -1 "")")
t0=$(date +%s.%N)
start "$config"
# The control socket is bound first; the daemon answers once the configuration is applied.
"$BIN/portshare" show servicestate --control "$work/d/control.sock" --json >"$work/state.json"
t1=$(date +%s.%N)
count=$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(sum(len(q["urls"]) for q in s["queues"]))' "$work/state.json")
echo "start: the first answer after $(python3 -c "print(round($t1 - $t0, 2))") s, with $count URLs registered"
sed -i '/^\[\[queue\]\]/,$d' "$work/d/portshare.toml"
printf '[[queue]]\nname = "tenants"\n%s\n' "$(urls 7 "http://+:$PORT/renamed/app/")" \
    >>"$work/d/portshare.toml"
t0=$(date +%s.%N)
"$BIN/portshare" reload --control "$work/d/control.sock" | tail -3
t1=$(date +%s.%N)
echo "reload with one URL changed: $(python3 -c "print(round($t1 - $t0, 2))") s"
stop
