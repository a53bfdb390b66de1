#!/usr/bin/env bash
# Tunnel benchmark, one hop (issue 7, "Benchmark"; anchors in shared/design/tunnel.md).
#
# Two network namespaces A and B joined by one veth pair (10.77.0.1/24 ↔ 10.77.0.2/24). Every
# case runs in the same invocation, so the figures compare within one run (this 2-vCPU machine
# is shared and noisy: absolute Mbit/s swing ±25 % run to run):
#
#   veth        plain veth, the ceiling (MTU 1500)
#   ferry       two release `ferry up` nodes (A, B) that are friends, `ferry tunnel up` on both,
#               traffic to B's mesh IPv6 address (TUN MTU 1372, ferry's fixed tunnel MTU).
#               Four DHT-only ferry nodes in B give the onion enough nodes to find the friend.
#   ferry-base  the same with a second binary ($FERRY_BASE, e.g. a build of main), if given
#   boringtun   boringtun-cli on both sides, configured with `wg` over its UAPI socket, MTU 1420
#
# Per case: iperf3 TCP A→B, 1 and 4 streams ($DUR s each), idle ping p50/p99 (200 pings, 10 ms
# apart), ping p50 while a 1-stream transfer runs, and CPU % of one core of each daemon (A/B)
# during each transfer (utime+stime from /proc/PID/stat).
#
# Needs root, iproute2, iperf3, ping, python3; boringtun-cli and wg for the boringtun case
# (missing ones are installed with apt-get/cargo when INSTALL=1, else the case is reported as
# skipped). Sends nothing outside the namespaces it creates; kills what it started by PID and
# deletes its namespaces on exit (also on Ctrl-C or error). Bounded: a watchdog ends the run
# after $MAX_SECONDS.
#
# Env: DUR (s, default 10), FERRY (default target/release/ferry), FERRY_BASE (optional second
# ferry binary), BORINGTUN (default: boringtun-cli on PATH or ~/.cargo/bin), CASES (default
# "veth ferry ferry-base boringtun"), INSTALL (1 = install missing tools), MAX_SECONDS (900),
# DIAG (1 = print socket queues and qdisc backlogs 3 s into each 1-stream transfer).
#
# Usage: sudo bench/tunnel.sh            (prints a Markdown table)
set -euo pipefail

DUR=${DUR:-10}
MAX_SECONDS=${MAX_SECONDS:-900}
INSTALL=${INSTALL:-1}
CASES=${CASES:-"veth ferry ferry-base boringtun"}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FERRY=${FERRY:-$ROOT/target/release/ferry}
FERRY_BASE=${FERRY_BASE:-}
TAG="tb$$"
NSA="${TAG}a"
NSB="${TAG}b"
IPA=10.77.0.1
IPB=10.77.0.2
WORK=$(mktemp -d /tmp/ferry-bench.XXXXXX)
PIDS=()
CLK_TCK=$(getconf CLK_TCK)

log() { echo "[$(date +%T)] $*" >&2; }

cleanup() {
    set +e
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null
    done
    sleep 0.3
    for p in "${PIDS[@]}"; do
        kill -9 "$p" 2>/dev/null
    done
    ip netns del "$NSA" 2>/dev/null
    ip netns del "$NSB" 2>/dev/null
    rm -f "/var/run/wireguard/${TAG}a.sock" "/var/run/wireguard/${TAG}b.sock"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Watchdog: the whole run is bounded.
MAIN=$$
( n=0; while kill -0 "$MAIN" 2>/dev/null; do
      sleep 1; n=$((n + 1))
      if ((n >= MAX_SECONDS)); then echo "bench: watchdog after ${MAX_SECONDS}s" >&2; kill -TERM "$MAIN"; break; fi
  done ) </dev/null >/dev/null &
PIDS+=($!)

[ "$(id -u)" = 0 ] || { echo "bench/tunnel.sh needs root" >&2; exit 1; }

need() { command -v "$1" >/dev/null 2>&1; }
for t in ip ping python3; do
    need "$t" || { echo "missing $t" >&2; exit 1; }
done
if ! need iperf3; then
    if [ "$INSTALL" = 1 ]; then
        log "installing iperf3"
        DEBIAN_FRONTEND=noninteractive apt-get install -y iperf3 >/dev/null 2>&1 \
            || { apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y iperf3 >/dev/null 2>&1; }
    fi
    need iperf3 || { echo "missing iperf3 (apt-get install -y iperf3)" >&2; exit 1; }
fi
SKIPPED=()
BORINGTUN=${BORINGTUN:-$(command -v boringtun-cli || echo "$HOME/.cargo/bin/boringtun-cli")}
if [[ " $CASES " == *" boringtun "* ]]; then
    if [ ! -x "$BORINGTUN" ] && [ "$INSTALL" = 1 ]; then
        log "installing boringtun-cli (cargo install, takes minutes)"
        nice -n 10 cargo install boringtun-cli --locked >/dev/null 2>&1 || true
        BORINGTUN="$HOME/.cargo/bin/boringtun-cli"
    fi
    if ! need wg && [ "$INSTALL" = 1 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y wireguard-tools >/dev/null 2>&1 || true
    fi
    if [ ! -x "$BORINGTUN" ] || ! need wg; then
        SKIPPED+=("boringtun (boringtun-cli or wg missing)")
        CASES=${CASES//boringtun/}
    fi
fi
if [ -z "$FERRY_BASE" ]; then
    CASES=${CASES//ferry-base/}
fi
if [[ " $CASES " == *" ferry "* ]] && [ ! -x "$FERRY" ]; then
    echo "no ferry binary at $FERRY (cargo build --release -p ferry-cli)" >&2
    exit 1
fi
need iperf3

# --- topology -------------------------------------------------------------------------------
log "namespaces $NSA $NSB"
ip netns add "$NSA"
ip netns add "$NSB"
ip link add "${TAG}va" type veth peer name "${TAG}vb"
ip link set "${TAG}va" netns "$NSA"
ip link set "${TAG}vb" netns "$NSB"
for ns in "$NSA" "$NSB"; do
    ip -n "$ns" link set lo up
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=0 || true
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.accept_dad=0 || true
done
ip -n "$NSA" addr add "$IPA/24" dev "${TAG}va"
ip -n "$NSB" addr add "$IPB/24" dev "${TAG}vb"
ip -n "$NSA" link set "${TAG}va" up
ip -n "$NSB" link set "${TAG}vb" up

inA() { ip netns exec "$NSA" "$@"; }
inB() { ip netns exec "$NSB" "$@"; }

# iperf3 server in B for the whole run.
ip netns exec "$NSB" iperf3 -s -p 5201 >/dev/null 2>&1 &
PIDS+=($!)
sleep 0.5

cpu_ticks() { # PID -> utime+stime ticks (0 if gone)
    awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0
}

# run_iperf DEST STREAMS OUTFILE PIDA PIDB : iperf3 JSON to OUTFILE, prints "cpuA cpuB" (% of a core)
run_iperf() {
    local dest=$1 streams=$2 out=$3 pa=${4:-} pb=${5:-}
    local a0=0 b0=0 t0 t1
    [ -n "$pa" ] && a0=$(cpu_ticks "$pa")
    [ -n "$pb" ] && b0=$(cpu_ticks "$pb")
    t0=$(date +%s.%N)
    timeout $((DUR + 30)) ip netns exec "$NSA" iperf3 -c "$dest" -p 5201 -t "$DUR" -P "$streams" -J >"$out" 2>/dev/null || true
    t1=$(date +%s.%N)
    local a1=0 b1=0
    [ -n "$pa" ] && a1=$(cpu_ticks "$pa")
    [ -n "$pb" ] && b1=$(cpu_ticks "$pb")
    python3 - "$a0" "$a1" "$b0" "$b1" "$t0" "$t1" "$CLK_TCK" "$pa" "$pb" <<'EOF'
import sys
a0, a1, b0, b1, t0, t1, tck = (float(x) for x in sys.argv[1:8])
pa, pb = sys.argv[8], sys.argv[9]
dt = max(t1 - t0, 1e-6)
ca = f"{100 * (a1 - a0) / tck / dt:.0f}" if pa else "-"
cb = f"{100 * (b1 - b0) / tck / dt:.0f}" if pb else "-"
print(ca, cb)
EOF
}

# iperf_result FILE -> "Mbit/s retransmits"
iperf_result() {
    python3 - "$1" <<'EOF'
import json, sys
try:
    j = json.load(open(sys.argv[1]))
    e = j["end"]
    mbps = e["sum_received"]["bits_per_second"] / 1e6
    retr = e["sum_sent"].get("retransmits", 0)
    print(f"{mbps:.0f} {retr}")
except Exception:
    print("fail -")
EOF
}

# ping_stats DEST COUNT INTERVAL -> "p50 p99" in ms
ping_stats() {
    local dest=$1 count=$2 interval=$3
    timeout $((count / 5 + 20)) ip netns exec "$NSA" ping -n -c "$count" -i "$interval" -W 1 "$dest" 2>/dev/null \
        | python3 -c '
import re, sys
t = sorted(float(m.group(1)) for m in (re.search(r"time=([0-9.]+)", l) for l in sys.stdin) if m)
if not t:
    print("fail fail")
else:
    q = lambda p: t[min(len(t) - 1, int(round(p * (len(t) - 1))))]
    print(f"{q(0.5):.3f} {q(0.99):.3f}")
' || echo "fail fail"
}

ROWS=()
# measure CASE MTU DEST PIDA PIDB
measure() {
    local name=$1 mtu=$2 dest=$3 pa=${4:-} pb=${5:-}
    log "$name: idle ping"
    local idle
    idle=$(ping_stats "$dest" 200 0.01)
    log "$name: iperf3 1 stream"
    local cpu1 r1 cpu4 r4 loaded
    # Ping during a 1-stream transfer: the transfer runs in the background, pings start 1 s in.
    cpu1=$(run_iperf "$dest" 1 "$WORK/$name.1.json" "$pa" "$pb" &
        if [ "${DIAG:-0}" = 1 ]; then
            # Where the queue builds under load: socket queues and qdisc backlogs, both sides.
            (sleep 3; for ns in "$NSA" "$NSB"; do
                echo "== $name $ns"; ip netns exec "$ns" ss -uanm; tc -n "$ns" -s qdisc show
            done) >"$WORK/$name.diag" 2>&1 &
        fi
        sleep 1
        ping_stats "$dest" $(((DUR - 2) * 20)) 0.05 >"$WORK/$name.loaded"
        wait)
    loaded=$(cut -d' ' -f1 <"$WORK/$name.loaded")
    r1=$(iperf_result "$WORK/$name.1.json")
    sleep 1
    log "$name: iperf3 4 streams"
    cpu4=$(run_iperf "$dest" 4 "$WORK/$name.4.json" "$pa" "$pb")
    r4=$(iperf_result "$WORK/$name.4.json")
    ROWS+=("$name|$mtu|$r1|$r4|$idle|$loaded|$cpu1|$cpu4")
    [ -f "$WORK/$name.diag" ] && cat "$WORK/$name.diag" >&2
    log "$name: 1 stream ${r1% *} Mbit/s, 4 streams ${r4% *} Mbit/s, idle ping $idle ms, loaded $loaded ms, cpu $cpu1 / $cpu4"
}

wait_ping() { # DEST SECONDS
    local end=$((SECONDS + $2))
    while ((SECONDS < end)); do
        inA ping -n -c 1 -W 1 "$1" >/dev/null 2>&1 && return 0
        sleep 0.3
    done
    return 1
}

# --- cases ----------------------------------------------------------------------------------
case_veth() {
    measure veth 1500 "$IPB"
}

# ferry_cli BIN PROFILE ARGS...
ferry_cli() {
    local bin=$1 prof=$2
    shift 2
    timeout 20 "$bin" --profile "$prof" "$@"
}

# ferry_start BIN NS PROFILE PORT ARGS... -> PID on stdout
ferry_start() {
    local bin=$1 ns=$2 prof=$3 port=$4
    shift 4
    mkdir -p "$prof"
    "$bin" --profile "$prof" init >/dev/null 2>&1
    ip netns exec "$ns" "$bin" --profile "$prof" up --udp-port "$port" --bind 0.0.0.0 \
        --no-default-bootstrap --no-lan --no-bootstrap-relays "$@" \
        >"$prof.log" 2>&1 &
    local pid=$!
    local end=$((SECONDS + 20))
    until ferry_cli "$bin" "$prof" status --json >/dev/null 2>&1; do
        ((SECONDS < end)) || { echo "ferry up in $ns never answered" >&2; break; }
        sleep 0.1
    done
    echo "$pid"
}

json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

case_ferry() { # NAME BIN
    local name=$1 bin=$2 d="$WORK/$1"
    mkdir -p "$d"
    log "$name: starting DHT nodes and peers ($bin)"
    local boot=() p pid key case_pids=()
    for i in 0 1 2 3; do
        p=$((33446 + i))
        pid=$(ferry_start "$bin" "$NSB" "$d/dht$i" "$p" "${boot[@]}")
        PIDS+=("$pid")
        case_pids+=("$pid")
        key=$(ferry_cli "$bin" "$d/dht$i" status --json | json_field '["dht_public_key"]')
        boot+=(--bootstrap "$IPB:$p:$key")
    done
    local pa pb
    pa=$(ferry_start "$bin" "$NSA" "$d/a" 33445 "${boot[@]}")
    pb=$(ferry_start "$bin" "$NSB" "$d/b" 33445 "${boot[@]}")
    PIDS+=("$pa" "$pb")
    case_pids+=("$pa" "$pb")
    ferry_cli "$bin" "$d/b" set auto-accept on >/dev/null
    local b_tox a_pk b_pk
    b_tox=$(ferry_cli "$bin" "$d/b" id --json | json_field '["tox_id"]')
    b_pk=$(ferry_cli "$bin" "$d/b" id --json | json_field '["public_key"]')
    a_pk=$(ferry_cli "$bin" "$d/a" id --json | json_field '["public_key"]')
    ferry_cli "$bin" "$d/a" friend add "$b_tox" bench >/dev/null
    local t0=$SECONDS
    online() { # PROFILE PK
        ferry_cli "$bin" "$1" friend list --json 2>/dev/null | python3 -c "
import json, sys
l = json.load(sys.stdin)
sys.exit(0 if any(f['public_key'] == '$2' and f['connection'] != 'none' for f in l) else 1)"
    }
    until online "$d/a" "$b_pk" && online "$d/b" "$a_pk"; do
        if ((SECONDS - t0 > 120)); then
            echo "$name: friends not online in 120 s" >&2
            ROWS+=("$name|1372|fail -|fail -|fail fail|fail|- -|- -")
            return 0
        fi
        sleep 0.5
    done
    log "$name: friends online after $((SECONDS - t0)) s ($(ferry_cli "$bin" "$d/a" friend list --json | json_field '[0]["connection"]'))"
    ferry_cli "$bin" "$d/a" tunnel up >/dev/null
    ferry_cli "$bin" "$d/b" tunnel up >/dev/null
    sleep 0.2
    log "$name: $(sed 's/\x1b\[[0-9;]*m//g' "$d/a.log" | grep -o 'tunnel up.*' | head -1)"
    local dest
    dest=$(ferry_cli "$bin" "$d/b" tunnel status --json | json_field '["address"]')
    wait_ping "$dest" 30 || log "$name: no ping through the tunnel yet"
    measure "$name" 1372 "$dest" "$pa" "$pb"
    ferry_cli "$bin" "$d/a" tunnel status --json >"$WORK/$name.status-a.json" 2>/dev/null || true
    log "$name: A tunnel status $(tr -d '\n' <"$WORK/$name.status-a.json" | head -c 400)"
    # Stop this case's daemons before the next case (they would take CPU).
    for f in "$d"/dht0 "$d"/dht1 "$d"/dht2 "$d"/dht3 "$d"/a "$d"/b; do
        ferry_cli "$bin" "$f" stop >/dev/null 2>&1 || true
    done
    sleep 1
    for p in "${case_pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
}

case_boringtun() {
    mkdir -p /var/run/wireguard
    local ka kb pka pkb
    ka=$(wg genkey)
    kb=$(wg genkey)
    pka=$(echo "$ka" | wg pubkey)
    pkb=$(echo "$kb" | wg pubkey)
    local ifa="${TAG}a" ifb="${TAG}b"
    log "boringtun: starting $BORINGTUN"
    ip netns exec "$NSA" "$BORINGTUN" "$ifa" --foreground --disable-drop-privileges >"$WORK/bt-a.log" 2>&1 &
    local pa=$!
    PIDS+=("$pa")
    ip netns exec "$NSB" "$BORINGTUN" "$ifb" --foreground --disable-drop-privileges >"$WORK/bt-b.log" 2>&1 &
    local pb=$!
    PIDS+=("$pb")
    local end=$((SECONDS + 10))
    until [ -S "/var/run/wireguard/$ifa.sock" ] && [ -S "/var/run/wireguard/$ifb.sock" ]; do
        ((SECONDS < end)) || { echo "boringtun UAPI sockets never appeared" >&2; return 0; }
        sleep 0.1
    done
    echo "$ka" >"$WORK/ka"
    echo "$kb" >"$WORK/kb"
    inA wg set "$ifa" private-key "$WORK/ka" listen-port 51820 \
        peer "$pkb" endpoint "$IPB:51820" allowed-ips 10.78.0.2/32
    inB wg set "$ifb" private-key "$WORK/kb" listen-port 51820 \
        peer "$pka" endpoint "$IPA:51820" allowed-ips 10.78.0.1/32
    inA ip addr add 10.78.0.1/24 dev "$ifa"
    inB ip addr add 10.78.0.2/24 dev "$ifb"
    inA ip link set "$ifa" mtu 1420 up
    inB ip link set "$ifb" mtu 1420 up
    wait_ping 10.78.0.2 20 || log "boringtun: no ping yet"
    measure boringtun 1420 10.78.0.2 "$pa" "$pb"
    kill "$pa" "$pb" 2>/dev/null || true
    sleep 0.5
}

for c in $CASES; do
    case $c in
        veth) case_veth ;;
        ferry) case_ferry ferry "$FERRY" ;;
        ferry-base) case_ferry ferry-base "$FERRY_BASE" ;;
        boringtun) case_boringtun ;;
        *) echo "unknown case $c" >&2 ;;
    esac
done

# --- table ----------------------------------------------------------------------------------
echo
echo "Tunnel benchmark, one hop, $(date -u +%FT%TZ), DUR=${DUR}s, $(nproc) CPUs, kernel $(uname -r)"
echo
printf '%s\n' "${ROWS[@]}" >"$WORK/rows"
python3 - "$WORK/rows" <<'PY'
import sys
rows = []
for line in open(sys.argv[1]):
    line = line.rstrip("\n")
    if not line:
        continue
    name, mtu, r1, r4, idle, loaded, cpu1, cpu4 = line.split("|")
    m1, re1 = r1.split()
    m4, re4 = r4.split()
    p50, p99 = idle.split()
    rows.append(dict(name=name, mtu=mtu, m1=m1, re1=re1, m4=m4, re4=re4, p50=p50, p99=p99,
                     loaded=loaded, cpu1="/".join(cpu1.split()), cpu4="/".join(cpu4.split())))
ferry = next((r for r in rows if r["name"] == "ferry"), None)


def num(x):
    try:
        return float(x)
    except ValueError:
        return None


def ratio(a, b):
    a, b = num(a), num(b)
    return f"{a / b:.2f}" if a and b else "-"


print("| case | MTU | 1 stream Mbit/s | retr | 4 streams Mbit/s | retr | idle ping p50 ms "
      "| p99 ms | ping p50 under 1-stream load ms | CPU % A/B (1 stream) "
      "| CPU % A/B (4 streams) | ÷ ferry (1 / 4 streams) |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    rat = "-"
    if ferry:
        rat = ratio(r["m1"], ferry["m1"]) + " / " + ratio(r["m4"], ferry["m4"])
    cells = [r["name"], r["mtu"], r["m1"], r["re1"], r["m4"], r["re4"], r["p50"], r["p99"],
             r["loaded"], r["cpu1"], r["cpu4"], rat]
    print("| " + " | ".join(cells) + " |")
PY
for s in "${SKIPPED[@]}"; do
    echo "skipped: $s"
done
