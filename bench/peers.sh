#!/usr/bin/env bash
# Portshare in ../shared/bench/peers.sh, beside nginx, HAProxy and a direct connection.
#
#   bench/peers.sh attached   wrk -> portshare serve -> hello --body-file --read-body (SDK worker)
#   bench/peers.sh upstream   wrk -> portshare serve -> the stock backend's Unix socket
#   bench/peers.sh both       one peers.sh run per row (the default)
#
# Each row starts its own daemon on --control {workdir}/control.sock with
# --threads $BENCH_WORKERS; peers.sh charges the daemon and its app (or the backend) to
# the row. Builds the release binaries first; installs wrk, nginx, haproxy and h2load
# with apt-get when they are missing (root only). Every peers.sh knob passes through
# (DURATION, CONNS, SYSCALLS=1, ...). Output: peers.sh's tables, on stdout.
#
#   EXTRA_URLS=100000 bench/peers.sh attached
#                             the same, the daemon holding that many other registrations
#                             on the port (http://+:PORT/tenantN/app/, from
#                             examples/registrations) before the app registers: the A/B
#                             of routing among many URLs
#   UPLOAD_SIZE=65536 bench/peers.sh upstream
#                             every request a POST of that many bytes (bench/wrk/wrk
#                             wraps wrk for the shared harness), the response body still
#                             BODY_SIZE; use with H2=0, as h2load sends no body
#   PIPELINE=16 bench/peers.sh upstream
#                             the upstream queue with pipeline = 16: bodiless GETs from
#                             many clients wait on few backend connections
#   CLOSE=1 bench/peers.sh attached
#                             every request with Connection: close, so each opens a
#                             connection of its own (use with H2=0)
#   TURNS=1 bench/peers.sh attached
#                             two apps on the port, at {prefix} and {prefix}b/ (two hello
#                             workers, or two upstream queues to the one backend), and
#                             requests alternating between them on each connection; the
#                             peers forward both paths to their one backend (use with H2=0)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PEERS=${PEERS:-$ROOT/../shared/bench/peers.sh}
[[ -x "$PEERS" || -f "$PEERS" ]] || { echo "bench/peers.sh: $PEERS not found (set PEERS=)" >&2; exit 1; }

missing=()
for t in wrk nginx haproxy h2load curl; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
if (( ${#missing[@]} )); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "bench/peers.sh: installing ${missing[*]}" >&2
        apt-get install -y -qq wrk nginx haproxy nghttp2-client curl >&2
    else
        echo "bench/peers.sh: needs ${missing[*]} (apt-get install wrk nginx haproxy nghttp2-client curl)" >&2
        exit 1
    fi
fi

(cd "$ROOT" && cargo build --release --bin portshare --example hello --example registrations >&2)
EXTRA_URLS=${EXTRA_URLS:-0}
BIN=$ROOT/target/release
CLOSE=${CLOSE:-0} TURNS=${TURNS:-0}
if [[ -n "${UPLOAD_SIZE:-}" ]] || (( CLOSE || TURNS )); then
    export UPLOAD_SIZE CLOSE TURNS PATH="$ROOT/bench/wrk:$PATH"
fi

wait_sock='for _ in $(seq 200); do [[ -S {workdir}/control.sock ]] && break; sleep 0.05; done'

# The body the stock backend sends: "hello, world\n" at 13 bytes, else that many x's; in a
# file, since an argument cannot hold a large one.
body='if [[ $BENCH_BODY_SIZE == 13 ]]; then printf "hello, world\n" >{workdir}/body; else head -c "$BENCH_BODY_SIZE" /dev/zero | tr "\0" x >{workdir}/body; fi'

extra=""
if (( EXTRA_URLS > 0 )); then
    extra="$BIN/examples/registrations --control {workdir}/control.sock --count $EXTRA_URLS --batch 1000 --port {port} --keep >{workdir}/extra.log 2>&1 &
for _ in \$(seq 1200); do grep -q registered {workdir}/extra.log && break; sleep 0.1; done"
    export DISPATCHER_READY_TIMEOUT=${DISPATCHER_READY_TIMEOUT:-180}
fi
# TURNS=1: the second app, at {prefix}b/.
second=""
second_queue=""
if (( TURNS )); then
    second="$BIN/examples/hello --control {workdir}/control.sock --name bench-b --threads \$BENCH_WORKERS --body-file {workdir}/body --read-body http://+:{port}{prefix}b/ >{workdir}/second.log 2>&1 &
for _ in \$(seq 200); do grep -q ready {workdir}/second.log && break; sleep 0.05; done"
    second_queue='[[queue]]\nname = "app-b"\nurls = ["http://+:{port}{prefix}b/"]\nupstream = "unix:{sock}"\n'
fi

attached="$BIN/portshare serve --control {workdir}/control.sock --threads \$BENCH_WORKERS --iplisten {host} 2>{workdir}/daemon.log &
$wait_sock
$extra
$body
$second
exec $BIN/examples/hello --control {workdir}/control.sock --name bench --threads \$BENCH_WORKERS --body-file {workdir}/body --read-body http://+:{port}{prefix}"

PIPELINE=${PIPELINE:-1}
[[ "$PIPELINE" =~ ^[0-9]+$ ]] || { echo "PIPELINE must be a number (1: none)" >&2; exit 2; }
upstream="printf '[[queue]]\nname = \"app\"\nurls = [\"http://+:{port}{prefix}\"]\nupstream = \"unix:{sock}\"\npipeline = $PIPELINE\n$second_queue' > {workdir}/portshare.toml
exec $BIN/portshare serve --control {workdir}/control.sock --threads \$BENCH_WORKERS --iplisten {host} --config {workdir}/portshare.toml 2>{workdir}/daemon.log"

run() {
    local name=$1 cmd=$2
    echo "## portshare-$name"
    DISPATCHER_NAME="portshare-$name" DISPATCHER_CMD="$cmd" bash "$PEERS"
}

case "${1:-both}" in
    attached) run attached "$attached" ;;
    upstream) run upstream "$upstream" ;;
    both) run attached "$attached"; H2=0 TARGETS="${TARGETS:-nginx dispatcher}" run upstream "$upstream" ;;
    *) echo "usage: bench/peers.sh [attached|upstream|both]" >&2; exit 2 ;;
esac
