#!/usr/bin/env bash
# Content fetch benchmark (issue 10 goal: "fetch from 3 providers on loopback at >= 3x the rate
# of fetching from one"). Not run in CI.
#
#   bench/content.sh [MIB=1024]
#
# Real `ferry up` daemons (release build, --no-lan --no-default-bootstrap --bind 127.0.0.1): one
# bootstrap node, providers P1..P3 and fetchers F1, F3. P1 publishes a random MIB MiB file and F1
# fetches it (one provider); then P2 and P3 publish the same file and F3 (a fresh node) fetches it
# from all three. Both copies are checked against the source's BLAKE3 (b3sum, or python's
# hashlib when b3sum is missing: sha256 then). Prints both rates (MiB/s over the fetch command's
# wall time, and the daemon's own rate from the first provider session) and their ratio.
# UPLOAD_KIB_S=N caps every node's content upload (`[content] upload_kib_s`), as a provider's
# uplink would: on loopback one uncapped provider already saturates the fetcher's node task.
# Profiles and files live in a temporary directory under $TMPDIR (2 x MIB MiB; TMPDIR=/dev/shm
# when the disk is short); processes are killed by PID on exit.
set -euo pipefail
MIB=${1:-1024}
cd "$(dirname "$0")/.."
# FERRY=path/to/ferry skips the build (e.g. one built with CARGO_PROFILE_RELEASE_DEBUG=0).
if [ -z "${FERRY:-}" ]; then
    nice -n 10 cargo build --release -q -p ferry-cli --bin ferry
    FERRY=$PWD/target/release/ferry
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ferry-contentbench.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start NAME [bootstrap args...]: init a profile and run `ferry up` in the background (its UDP
# port in PORT; not called in a subshell, so PIDS keeps the process for cleanup).
start() {
    local name=$1; shift
    local prof=$WORK/$name
    PORT=$(free_port)
    "$FERRY" --profile "$prof" init >/dev/null 2>&1
    printf '[store]\nputs_per_minute = 1000\nper_source_items = 1000\n' >"$prof/config.toml"
    if [ -n "${UPLOAD_KIB_S:-}" ]; then
        printf '[content]\nupload_kib_s = %s\n' "$UPLOAD_KIB_S" >>"$prof/config.toml"
    fi
    "$FERRY" --profile "$prof" up --bind 127.0.0.1 --udp-port "$PORT" --no-lan \
        --no-default-bootstrap "$@" >/dev/null 2>"$WORK/$name.log" </dev/null &
    PIDS+=($!)
    for _ in $(seq 100); do
        "$FERRY" --profile "$prof" status --json >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "ferry up $name never answered" >&2; exit 1
}
f() { local name=$1; shift; "$FERRY" --profile "$WORK/$name" "$@"; }

start boot
BPORT=$PORT
BKEY=$(f boot status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["dht_public_key"])')
BOOT=(--bootstrap "127.0.0.1:$BPORT:$BKEY")
for n in p1 p2 p3 f1 f3; do start "$n" "${BOOT[@]}"; done

# Wait until every node knows >= 2 store-capable peers.
for n in p1 p2 p3 f1 f3; do
    for _ in $(seq 300); do
        c=$(f "$n" store status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["capable_nodes"])')
        [ "$c" -ge 2 ] && break
        sleep 0.2
    done
done

head -c $((MIB << 20)) /dev/urandom >"$WORK/src.bin"
hashof() {
    if command -v b3sum >/dev/null; then b3sum --no-names "$1"
    else python3 -c 'import hashlib,sys; h=hashlib.sha256(); f=open(sys.argv[1],"rb")
while True:
    b=f.read(1<<20)
    if not b: break
    h.update(b)
print(h.hexdigest())' "$1"; fi
}
SRC_HASH=$(hashof "$WORK/src.bin")

publish() {
    for _ in $(seq 60); do
        out=$(f "$1" publish "$WORK/src.bin" --json)
        if [ "$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["announced"])')" -gt 0 ]; then
            echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
            return
        fi
        sleep 0.5
    done
    echo "publish on $1: record never stored" >&2; exit 1
}

# fetch NAME ID -> "wall_mib_s daemon_mib_s used dropped"
fetch() {
    local out t0 t1
    mkdir -p "$WORK/out-$1"
    t0=$(date +%s.%N)
    out=$(f "$1" fetch "$2" --to "$WORK/out-$1" --json)
    t1=$(date +%s.%N)
    [ "$(hashof "$WORK/out-$1/src.bin")" = "$SRC_HASH" ] || { echo "hash mismatch on $1" >&2; exit 1; }
    rm -f "$WORK/out-$1/src.bin"
    echo "$out" | python3 -c "import json,sys; j=json.load(sys.stdin); w=$t1-$t0
print('%.1f %.1f %d %d' % ($MIB / w, j['rate'] / 1048576, j['providers_used'], j['providers_dropped']))"
}

ID=$(publish p1)
read -r W1 D1 U1 X1 <<<"$(fetch f1 "$ID")"
echo "RESULT providers=1 mib=$MIB wall_mib_per_s=$W1 daemon_mib_per_s=$D1 used=$U1 dropped=$X1"
[ "$(publish p2)" = "$ID" ]
[ "$(publish p3)" = "$ID" ]
read -r W3 D3 U3 X3 <<<"$(fetch f3 "$ID")"
echo "RESULT providers=3 mib=$MIB wall_mib_per_s=$W3 daemon_mib_per_s=$D3 used=$U3 dropped=$X3"
python3 -c "print('RESULT ratio_3_to_1 wall=%.2f daemon=%.2f' % ($W3 / $W1, $D3 / $D1))"
