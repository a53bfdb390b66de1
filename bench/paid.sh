#!/usr/bin/env bash
# Payment overhead (issue 8 goal: tunnel throughput with contracts and vouchers on ≥ 0.97× the
# same run with payments off). Topology, all network namespaces on veth links:
#
#   client C 10.91.1.1 ── 10.91.1.2 exit E 10.91.2.1 ── 10.91.2.2 server S
#
# E also holds 4 DHT-only ferry nodes and `ferry chain serve` on 10.91.1.2:8545 (the shared
# ledger). Per round, for MODE in off, on: fresh profiles, `ferry up` C and E (on: `--market
# --market-backend json-rpc`, E at PRICE wei/KiB, both accounts funded with `ferry chain fund`),
# friendship, `ferry tunnel up --exit E --route 10.91.2.0/24`, a 2 s iperf3 warm-up (on: opens
# the payment channel), then iperf3 TCP C → S for DUR s (the metered direction), then the
# daemons are stopped. Rounds alternate off/on ROUNDS times; prints a Markdown table and the
# on/off ratio of the medians.
#
# Env: FERRY (default target/release/ferry), DUR (default 10), ROUNDS (default 3), PRICE (default
# 1000000000), MAX_SECONDS (watchdog, default 900). Needs root, iproute2, iperf3, python3. Sends
# nothing outside its namespaces; kills what it started by PID and deletes its namespaces on exit.
#
# Usage: sudo bench/paid.sh
set -euo pipefail

DUR=${DUR:-10}
ROUNDS=${ROUNDS:-3}
PRICE=${PRICE:-1000000000}
MAX_SECONDS=${MAX_SECONDS:-900}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FERRY=${FERRY:-$ROOT/target/release/ferry}
TAG="pb$$"
NS_C="${TAG}c"
NS_E="${TAG}e"
NS_S="${TAG}s"
ALL_NS=("$NS_C" "$NS_E" "$NS_S")
IP_E=10.91.1.2
IP_S=10.91.2.2
UPLINK="${TAG}es"
WORK=$(mktemp -d /tmp/ferry-paid.XXXXXX)
PIDS=()
RPC="http://$IP_E:8545"

log() { echo "[$(date +%T)] $*" >&2; }

cleanup() {
    set +e
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    for ns in "${ALL_NS[@]}"; do ip netns del "$ns" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || { echo "bench/paid.sh needs root" >&2; exit 1; }
[ -x "$FERRY" ] || { echo "no ferry binary at $FERRY (cargo build --release -p ferry-cli)" >&2; exit 1; }
for t in ip python3 iperf3; do
    command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 1; }
done
MAIN=$$
( n=0; while kill -0 "$MAIN" 2>/dev/null; do
      sleep 1; n=$((n + 1))
      if ((n >= MAX_SECONDS)); then echo "bench: watchdog after ${MAX_SECONDS}s" >&2; kill -TERM "$MAIN"; break; fi
  done ) </dev/null >/dev/null &
PIDS+=($!)

for ns in "${ALL_NS[@]}"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
done
link() {
    ip link add "$2" type veth peer name "$5"
    ip link set "$2" netns "$1"
    ip link set "$5" netns "$4"
    ip -n "$1" addr add "$3/24" dev "$2"
    ip -n "$4" addr add "$6/24" dev "$5"
    ip -n "$1" link set "$2" up
    ip -n "$4" link set "$5" up
}
link "$NS_C" "${TAG}ce" 10.91.1.1 "$NS_E" "${TAG}ec" "$IP_E"
link "$NS_E" "$UPLINK" 10.91.2.1 "$NS_S" "${TAG}se" "$IP_S"
ip -n "$NS_S" route add default via 10.91.2.1

ip netns exec "$NS_S" iperf3 -s -p 5201 >/dev/null 2>&1 &
PIDS+=($!)
ip netns exec "$NS_E" "$FERRY" chain serve --listen "$IP_E:8545" >"$WORK/chain.log" 2>&1 &
PIDS+=($!)

fcli() { local p=$1; shift; timeout 20 "$FERRY" --profile "$p" "$@"; }
json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
fstart() { # NS PROFILE PORT ARGS... -> PID
    local ns=$1 prof=$2 port=$3
    shift 3
    mkdir -p "$prof"
    "$FERRY" --profile "$prof" init >/dev/null 2>&1
    ip netns exec "$ns" "$FERRY" --profile "$prof" up --udp-port "$port" --bind 0.0.0.0 \
        --no-default-bootstrap --no-lan --no-bootstrap-relays "$@" >"$prof.log" 2>&1 &
    local pid=$! end=$((SECONDS + 20))
    until fcli "$prof" status --json >/dev/null 2>&1; do
        ((SECONDS < end)) || { echo "ferry up in $ns never answered" >&2; break; }
        sleep 0.1
    done
    echo "$pid"
}
online() { # PROFILE PK
    fcli "$1" friend list --json 2>/dev/null | python3 -c "
import json, sys
l = json.load(sys.stdin)
sys.exit(0 if any(f['public_key'] == '$2' and f['connection'] != 'none' for f in l) else 1)"
}
mbps() {
    python3 -c "
import json, sys
try: print('%.0f' % (json.load(open(sys.argv[1]))['end']['sum_received']['bits_per_second'] / 1e6))
except Exception: print('fail')" "$1"
}

log "DHT nodes in $NS_E"
BOOT=()
for i in 0 1 2 3; do
    p=$((33446 + i))
    pid=$(fstart "$NS_E" "$WORK/dht$i" "$p" "${BOOT[@]}")
    PIDS+=("$pid")
    key=$(fcli "$WORK/dht$i" status --json | json_field '["dht_public_key"]')
    BOOT+=(--bootstrap "$IP_E:$p:$key")
done
CHAIN_ID=$(ip netns exec "$NS_E" python3 -c "
import json, urllib.request
r = urllib.request.urlopen(urllib.request.Request('$RPC', json.dumps({'jsonrpc':'2.0','id':1,'method':'eth_chainId','params':[]}).encode(), {'Content-Type':'application/json'}))
print(int(json.load(r)['result'], 16))")

declare -A RESULT
run() { # MODE ROUND
    local mode=$1 r=$2 d="$WORK/$1$2" market=()
    mkdir -p "$d"
    if [ "$mode" = on ]; then
        market=(--market --market-backend json-rpc --rpc-url "$RPC" --chain-id "$CHAIN_ID")
    fi
    local pe pc
    pe=$(fstart "$NS_E" "$d/e" 33445 "${BOOT[@]}" --exit-node --uplink "$UPLINK" "${market[@]}" \
        ${market[0]:+--price-per-kib "$PRICE"})
    pc=$(fstart "$NS_C" "$d/c" 33445 "${BOOT[@]}" "${market[@]}" \
        ${market[0]:+--max-price-per-kib "$((2 * PRICE))"})
    PIDS+=("$pe" "$pc")
    if [ "$mode" = on ]; then
        for n in e c; do
            addr=$(fcli "$d/$n" wallet --json | json_field '["address"]')
            ip netns exec "$NS_E" "$FERRY" chain fund "$addr" 1000000000000000000000 --rpc-url "$RPC" >/dev/null
        done
    fi
    local epk cpk
    epk=$(fcli "$d/e" id --json | json_field '["public_key"]')
    cpk=$(fcli "$d/c" id --json | json_field '["public_key"]')
    fcli "$d/c" friend add "$epk" bench >/dev/null
    local end=$((SECONDS + 120))
    until online "$d/c" "$epk" && online "$d/e" "$cpk"; do
        ((SECONDS < end)) || { log "$mode$r: not online"; break; }
        sleep 0.5
    done
    fcli "$d/c" tunnel up --exit "$epk" --route 10.91.2.0/24 --json >/dev/null
    end=$((SECONDS + 30))
    until ip netns exec "$NS_C" ping -c1 -W1 "$IP_S" >/dev/null 2>&1; do
        ((SECONDS < end)) || { log "$mode$r: no ping"; break; }
    done
    ip netns exec "$NS_C" iperf3 -c "$IP_S" -t 2 -J >"$d/warm.json" 2>/dev/null || true
    sleep 1
    timeout $((DUR + 30)) ip netns exec "$NS_C" iperf3 -c "$IP_S" -t "$DUR" -J >"$d/run.json" 2>/dev/null || true
    RESULT[$mode$r]=$(mbps "$d/run.json")
    local extra=""
    if [ "$mode" = on ]; then
        extra=" earnings $(fcli "$d/e" earnings --json | tr -d '\n ') contracts $(fcli "$d/e" contracts --json | tr -d '\n ' | head -c 300)"
    fi
    log "$mode$r: warm-up $(mbps "$d/warm.json") Mbit/s, run ${RESULT[$mode$r]} Mbit/s$extra"
    fcli "$d/c" stop >/dev/null 2>&1 || true
    fcli "$d/e" stop >/dev/null 2>&1 || true
    sleep 2
    kill "$pe" "$pc" 2>/dev/null || true
}

for r in $(seq 1 "$ROUNDS"); do
    run off "$r"
    run on "$r"
done

echo "| round | payments off (Mbit/s) | payments on (Mbit/s) |"
echo "|---|---|---|"
OFF=() ON=()
for r in $(seq 1 "$ROUNDS"); do
    echo "| $r | ${RESULT[off$r]} | ${RESULT[on$r]} |"
    OFF+=("${RESULT[off$r]}")
    ON+=("${RESULT[on$r]}")
done
python3 - "${OFF[*]}" "${ON[*]}" <<'PY'
import statistics, sys
def nums(s): return [float(x) for x in s.split() if x.replace('.', '', 1).isdigit()]
off, on = nums(sys.argv[1]), nums(sys.argv[2])
if off and on:
    a, b = statistics.median(off), statistics.median(on)
    print(f"\nmedian off {a:.0f} Mbit/s, on {b:.0f} Mbit/s, on/off = {b / a:.3f} (goal ≥ 0.97)")
PY
