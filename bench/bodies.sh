#!/usr/bin/env bash
# Large bodies through Portshare beside nginx, HAProxy and a direct connection: one
# bench/peers.sh run per row, each row side by side in its own run.
#
#   bench/bodies.sh            every row: attached and upstream, responses and uploads of
#                              64 KiB and 1 MiB (about 10 minutes)
#   ROWS="attached:down:1048576" bench/bodies.sh
#                              chosen rows, PATH:DIRECTION:BYTES with PATH attached or
#                              upstream and DIRECTION down (response body) or up (upload)
#
# CONNS [16 64], DURATION [4], ROUNDS [1] and TARGETS [direct nginx haproxy dispatcher]
# pass through to peers.sh, with H2=0 (h2load sends no body). An upload row's response is
# the 13-byte body. Output: each row's heading, then peers.sh's tables.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROWS=${ROWS:-"attached:down:65536 upstream:down:65536 attached:down:1048576 upstream:down:1048576 attached:up:65536 upstream:up:65536 attached:up:1048576 upstream:up:1048576"}
export CONNS=${CONNS:-"16 64"} DURATION=${DURATION:-4} ROUNDS=${ROUNDS:-1} H2=0
export TARGETS=${TARGETS:-"direct nginx haproxy dispatcher"}

for row in $ROWS; do
    IFS=: read -r path dir bytes <<<"$row"
    case "$path:$dir" in
        attached:down|upstream:down) body=$bytes upload="" ;;
        attached:up|upstream:up) body=13 upload=$bytes ;;
        *) echo "bench/bodies.sh: bad row $row (PATH:DIRECTION:BYTES)" >&2; exit 2 ;;
    esac
    [[ "$bytes" =~ ^[0-9]+$ ]] || { echo "bench/bodies.sh: bad size in $row" >&2; exit 2; }
    echo "# row $row"
    if [[ -n "$upload" ]]; then
        BODY_SIZE=$body UPLOAD_SIZE=$upload "$ROOT/bench/peers.sh" "$path"
    else
        BODY_SIZE=$body "$ROOT/bench/peers.sh" "$path"
    fi
done
