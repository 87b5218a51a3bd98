#!/usr/bin/env bash
# https beside nginx, in one run on this machine: the same certificate, the same backend.
#
#   bench/https.sh
#
# Targets (each a process group whose CPU, backend included, is charged to it):
#   nginx               wrk -> nginx (TLS, 1 worker) -> backend (Unix socket, keepalive)
#   portshare-upstream  wrk -> portshare serve (TLS) -> the same backend's Unix socket
#   portshare-attached  wrk -> portshare serve (TLS) -> hello --body (SDK worker)
#
# Measures, rotating the targets' order each round, the median of ROUNDS rounds:
#   1. keep-alive HTTP/1.1 over TLS with wrk at CONNS connections: req/s, p99, and the
#      server CPU µs per request (server groups, backend included, and without it);
#   2. handshakes per second (examples/tls_load: connect, TLS handshake, one request,
#      close) at HS_CONNS in flight, full TLS 1.3 and resumed;
#   3. HTTP/2 with h2load (-c16 -m10) against both servers' h2.
# Session resumption is by the server's cache, tickets off, on both servers.
#
# Knobs: DURATION [10] ROUNDS [3] CONNS ["16 64 256"] HS_CONNS [16] WORKERS [1]
#        TARGETS ["nginx portshare-upstream portshare-attached"] H2 [1]
# Builds the release binaries and the shared bench backend; installs wrk, nginx, h2load and
# openssl with apt-get when missing (root only). Binds 127.0.0.1 only; stops what it starts.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED_BENCH=${SHARED_BENCH:-$ROOT/../shared/bench}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-"16 64 256"}
HS_CONNS=${HS_CONNS:-16}
WORKERS=${WORKERS:-1}
TARGETS=${TARGETS:-"nginx portshare-upstream portshare-attached"}
H2=${H2:-1}
HOST=127.0.0.1
SNI=bench.test
REQ_PATH=/app/hello

say() { echo "bench/https.sh: $*" >&2; }
die() { say "$*"; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

missing=()
for t in wrk nginx h2load openssl curl; do have "$t" || missing+=("$t"); done
if (( ${#missing[@]} )); then
    if [[ $(id -u) == 0 ]] && have apt-get; then
        say "installing ${missing[*]}"
        apt-get install -y -qq wrk nginx nghttp2-client openssl curl >&2
    else
        die "needs ${missing[*]} (apt-get install wrk nginx nghttp2-client openssl curl)"
    fi
fi
[[ -d "$SHARED_BENCH/backend" ]] || die "$SHARED_BENCH/backend not found (set SHARED_BENCH=)"

(cd "$ROOT" && cargo build --release -q --bin portshare --example hello --example tls_load >&2)
BIN=$ROOT/target/release
BENCH_TARGET=${BENCH_TARGET:-${TMPDIR:-/tmp}/peers-bench-target}
(cd "$SHARED_BENCH/backend" && CARGO_TARGET_DIR="$BENCH_TARGET" cargo build --release -q) \
    || die "backend build failed"
BACKEND=$BENCH_TARGET/release/backend

WORK=$(mktemp -d "${TMPDIR:-/tmp}/https-bench.XXXXXX")
PGIDS=()
cleanup() {
    local rc=$?
    for pg in "${PGIDS[@]}"; do kill -TERM -- "-$pg" 2>/dev/null || true; done
    sleep 0.3
    for pg in "${PGIDS[@]}"; do kill -KILL -- "-$pg" 2>/dev/null || true; done
    [[ -n "${KEEP_WORK:-}" ]] || rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CMD...: CMD in its own process group; STARTED_PID is the group id.
start() {
    local name=$1; shift
    setsid "$@" >"$WORK/$name.log" 2>&1 </dev/null &
    STARTED_PID=$!
    PGIDS+=("$STARTED_PID")
}
free_port() {
    local p
    for _ in $(seq 200); do
        p=$(( 20000 + RANDOM % 12000 ))
        if ! (exec 3<>"/dev/tcp/$HOST/$p") 2>/dev/null; then echo "$p"; return 0; fi
    done
    die "no free port found"
}
wait_https() { # URL PGID SECONDS
    local deadline=$(( $(date +%s) + $3 ))
    while (( $(date +%s) < deadline )); do
        kill -0 "$2" 2>/dev/null || return 1
        [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 --cacert "$WORK/ca.pem" \
              --resolve "$SNI:${1##*:}:$HOST" "https://$SNI:${1##*:}$REQ_PATH" || true) == 200 ]] && return 0
        sleep 0.1
    done
    return 1
}
# CPU ticks (user+system) of every process in the given process groups.
group_ticks() {
    # A process may end between the glob and the read: that is not a failure.
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v groups="$*" '
        BEGIN { n = split(groups, g, " "); for (i = 1; i <= n; i++) want[g[i]] = 1 }
        { sub(/^.*\) /, ""); if ($3 in want) t += $12 + $13 }
        END { printf "%d\n", t }'
}
CLK_TCK=$(getconf CLK_TCK)

# One certificate for everyone, ECDSA P-256 as most sites now serve, issued by a CA made
# here (ca.pem is what clients trust; cert.pem is the chain the servers send).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=bench CA" -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=$SNI" -keyout "$WORK/key.pem" -out "$WORK/leaf.csr" 2>/dev/null
printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' "$SNI" >"$WORK/leaf.ext"
openssl x509 -req -in "$WORK/leaf.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial \
    -days 2 -extfile "$WORK/leaf.ext" -out "$WORK/leaf.pem" 2>/dev/null
cat "$WORK/leaf.pem" "$WORK/ca.pem" >"$WORK/cert.pem"
chmod 600 "$WORK/key.pem"

SOCK=$WORK/backend.sock
start backend "$BACKEND" --unix "$SOCK" --threads 1 --body-size 13
BACKEND_PG=$STARTED_PID
for _ in $(seq 100); do [[ -S "$SOCK" ]] && break; sleep 0.05; done
chmod 666 "$SOCK"

declare -A PORT=() GROUPS_OF=() BACKEND_OF=()
want() { [[ " $TARGETS " == *" $1 "* ]]; }

if want nginx; then
    PORT[nginx]=$(free_port)
    mkdir -p "$WORK/nginx"
    user_line=""; (( EUID == 0 )) && user_line="user root;"
    cat >"$WORK/nginx/nginx.conf" <<EOF
$user_line
worker_processes $WORKERS;
worker_rlimit_nofile 65536;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 16384; multi_accept on; }
http {
    access_log off;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    tcp_nodelay on;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    upstream app { server unix:$SOCK; keepalive 512; keepalive_requests 1000000; }
    server {
        listen $HOST:${PORT[nginx]} ssl http2 backlog=4096;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets off;
        location /app/ { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
        location / { return 404; }
    }
}
EOF
    start nginx nginx -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf"
    GROUPS_OF[nginx]="$STARTED_PID $BACKEND_PG"; BACKEND_OF[nginx]=$BACKEND_PG
    wait_https ":${PORT[nginx]}" "$STARTED_PID" 10 || die "nginx did not answer over https"
fi

sslcert() { # PORT
    printf '[[sslcert]]\nipport = "%s:%s"\ncert = "%s"\nkey = "%s"\nhttp2 = true\n' \
        "$HOST" "$1" "$WORK/cert.pem" "$WORK/key.pem"
}

if want portshare-upstream; then
    p=$(free_port); PORT[portshare-upstream]=$p
    mkdir -p "$WORK/pu"
    { sslcert "$p"; printf '[[queue]]\nname = "app"\nurls = ["https://+:%s/app/"]\nupstream = "unix:%s"\n' "$p" "$SOCK"; } \
        >"$WORK/pu/portshare.toml"
    start portshare-upstream "$BIN/portshare" serve --config "$WORK/pu/portshare.toml" \
        --control "$WORK/pu/control.sock" --iplisten "$HOST" --threads "$WORKERS"
    GROUPS_OF[portshare-upstream]="$STARTED_PID $BACKEND_PG"; BACKEND_OF[portshare-upstream]=$BACKEND_PG
    wait_https ":$p" "$STARTED_PID" 20 || die "portshare (upstream) did not answer over https"
fi

if want portshare-attached; then
    p=$(free_port); PORT[portshare-attached]=$p
    mkdir -p "$WORK/pa"
    sslcert "$p" >"$WORK/pa/portshare.toml"
    start portshare-attached bash -c "
        '$BIN/portshare' serve --config '$WORK/pa/portshare.toml' --control '$WORK/pa/control.sock' \
            --iplisten $HOST --threads $WORKERS 2>'$WORK/pa/daemon.log' &
        for _ in \$(seq 200); do [[ -S '$WORK/pa/control.sock' ]] && break; sleep 0.05; done
        exec '$BIN/examples/hello' --control '$WORK/pa/control.sock' --name bench --threads $WORKERS \
            --body \"hello, world
\" https://+:$p/app/"
    GROUPS_OF[portshare-attached]="$STARTED_PID"; BACKEND_OF[portshare-attached]=""
    wait_https ":$p" "$STARTED_PID" 20 || die "portshare (attached) did not answer over https"
fi

ACTIVE=()
for t in $TARGETS; do [[ -n "${PORT[$t]:-}" ]] && ACTIVE+=("$t"); done
(( ${#ACTIVE[@]} )) || die "no target came up"
say "targets: ${ACTIVE[*]}; $ROUNDS round(s) of ${DURATION}s points"

RAW=$WORK/raw.tsv
: >"$RAW"
# point KIND TARGET PARAM: one measurement; appends "kind target param rate srv_us own_us p99" to RAW
point() {
    local kind=$1 t=$2 param=$3 port=${PORT[$2]} out g0 g1 k0 k1 n secs p99="-"
    local url="https://$SNI:$port$REQ_PATH"
    g0=$(group_ticks ${GROUPS_OF[$t]}); k0=$(group_ticks ${BACKEND_OF[$t]:-0})
    case $kind in
    wrk)
        out=$(timeout $(( DURATION + 30 )) wrk -t1 -c"$param" -d"${DURATION}s" --latency --timeout 5s \
              "https://$HOST:$port$REQ_PATH" 2>&1 || true)
        n=$(awk '/requests in/ { print $1 }' <<<"$out")
        secs=$(awk '/requests in/ { v = $4; sub(/,$/, "", v); if (v ~ /ms$/) { sub(/ms$/, "", v); v /= 1000 }
                    else if (v ~ /m$/) { sub(/m$/, "", v); v *= 60 } else sub(/s$/, "", v); print v }' <<<"$out")
        p99=$(awk '$1 == "99%" { print $2 }' <<<"$out") ;;
    full|resumed)
        out=$(timeout $(( DURATION + 30 )) "$BIN/examples/tls_load" --ca "$WORK/ca.pem" --sni "$SNI" \
              --conns "$param" --secs "$DURATION" $([[ $kind == resumed ]] && echo --resume) \
              "https://$HOST:$port$REQ_PATH" 2>&1 || true)
        read -r n secs <<<"$(awk '/^RESULT/ { print $2, $5 }' <<<"$out")" ;;
    h2)
        out=$(timeout $(( DURATION + 30 )) h2load -t1 -c16 -m10 -D"$DURATION" --warm-up-time=1 \
              "https://$HOST:$port$REQ_PATH" 2>&1 || true)
        n=$(awk '/^requests:/ { print $8 }' <<<"$out"); secs=$DURATION ;;
    esac
    g1=$(group_ticks ${GROUPS_OF[$t]}); k1=$(group_ticks ${BACKEND_OF[$t]:-0})
    if [[ -z "${n:-}" || "${n:-0}" == 0 ]]; then
        say "$kind $t $param: no result: $(tail -n 2 <<<"$out" | tr '\n' ' ')"; return 0
    fi
    awk -v k="$kind" -v t="$t" -v p="$param" -v n="$n" -v s="$secs" -v g=$(( g1 - g0 )) -v b=$(( k1 - k0 )) \
        -v hz="$CLK_TCK" -v p99="$p99" 'BEGIN {
        printf "%s\t%s\t%s\t%.0f\t%.1f\t%.1f\t%s\n", k, t, p, n / s, 1e6 * g / hz / n, 1e6 * (g - b) / hz / n, p99 }' >>"$RAW"
    tail -n 1 "$RAW" | awk -F'\t' '{ printf "  %-8s %-19s %-4s %9s /s  server %6s us  own %6s us  p99 %s\n", $1, $2, $3, $4, $5, $6, $7 }' >&2
}

for (( r = 0; r < ROUNDS; r++ )); do
    order=("${ACTIVE[@]:r % ${#ACTIVE[@]}}" "${ACTIVE[@]:0:r % ${#ACTIVE[@]}}")
    for c in $CONNS; do for t in "${order[@]}"; do point wrk "$t" "$c"; done; done
    for t in "${order[@]}"; do point full "$t" "$HS_CONNS"; point resumed "$t" "$HS_CONNS"; done
    if [[ "$H2" == 1 ]]; then for t in "${order[@]}"; do point h2 "$t" 16x10; done; fi
done

echo "# https bench: $(nproc) CPUs, $(uname -sr); $(nginx -v 2>&1 | sed 's/.*: //'); portshare $("$BIN/portshare" --version 2>/dev/null | awk '{print $2}')"
echo "# ${DURATION}s points, median of $ROUNDS round(s); server CPU counts the backend; own leaves it out"
echo
echo "| test | target | load | rate (/s) | server CPU µs per op | own CPU µs per op | p99 |"
echo "|---|---|---|---:|---:|---:|---:|"
sort -t$'\t' -k1,1 -k3,3n -k2,2 "$RAW" | awk -F'\t' '
function med(s,    a, n, i, j, v) { n = split(s, a, " "); for (i = 2; i <= n; i++) { v = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > v; j--) a[j + 1] = a[j]; a[j + 1] = v }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
{ key = $1 "\t" $2 "\t" $3; if (!(key in rate)) order[++n] = key
  rate[key] = rate[key] " " $4; srv[key] = srv[key] " " $5; own[key] = own[key] " " $6; p99[key] = $7 }
END { for (i = 1; i <= n; i++) { k = order[i]; split(k, f, "\t")
    label = (f[1] == "wrk") ? "keep-alive h1" : (f[1] == "h2") ? "h2 (h2load)" : f[1] " handshakes"
    printf "| %s | %s | %s | %.0f | %.1f | %.1f | %s |\n", label, f[2], f[3], med(rate[k]), med(srv[k]), med(own[k]), p99[k] } }'
