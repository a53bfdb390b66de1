#!/usr/bin/env bash
# File transfer benchmark (issue 6 "Benchmark"). Not run in CI.
#
#   bench/file.sh [MIB=256] [loopback|netem|all]
#
# Moves one random MIB MiB file ferry→ferry, ferry→c-toxcore, c-toxcore→ferry and
# c-toxcore→c-toxcore (toxpeer, ferry-testkit's c-toxcore 0.2.18 client) with real `ferry up`
# daemons (release build, --no-lan --no-default-bootstrap, bootstrapped only from local in-process
# nodes), checks the BLAKE3 hash of every received copy, and copies the same bytes over plain TCP
# as the ceiling. The driver is crates/ferry-cli/examples/filebench.rs. During ferry→ferry a chat
# message is sent every 100 ms through the sender's control API (one kept-alive connection, as
# `ferry chat` or any chat client) and its delay measured on the receiver (`ferry messages
# --follow`); FILEBENCH_CHAT=cli sends each with a `ferry send` process instead (includes the
# process start on the cores the transfer saturates).
#
# netem: the namespaces A - M - B path of bench/throughput.sh (10 ms delay + 0.25 % loss each way
# in the userspace TUN delay line bench/delay_tun.py, as this kernel has no sch_netem); senders in
# A, receivers in B, the driver and its bootstrap nodes in M. Needs root. Unique names, removed on
# exit; processes killed by PID.
set -euo pipefail
MIB=${1:-256}
WHAT=${2:-all}
CASES=${CASES:-ff,ft,tf,tt}
cd "$(dirname "$0")/.."
# FERRY_BIN=PATH runs another ferry binary (e.g. an older build for a side-by-side run);
# FILEBENCH_NO_BUILD=1 uses the binaries already built.
if [ -z "${FILEBENCH_NO_BUILD:-}" ]; then
	nice -n 10 cargo build --release -q -p ferry-cli --bin ferry --example filebench
fi
FERRY=${FERRY_BIN:-$PWD/target/release/ferry}
DRIVER=$PWD/target/release/examples/filebench
WORK=$(mktemp -d ${FILEBENCH_DIR:-/tmp}/ferry-filebench.XXXXXX)
head -c $((MIB << 20)) /dev/urandom >"$WORK/src.bin"
# On disk before the runs, as a file a user sends is: its dirty pages would otherwise make every
# fsync of the daemons (message commits) wait for their writeback.
sync "$WORK/src.bin"

tcp_copy_py='
import socket, sys, time
mode, addr, port, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if mode == "recv":
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(1)
    c, _ = s.accept()
    t0 = time.monotonic(); got = 0
    with open(path, "wb") as f:
        while True:
            b = c.recv(1 << 20)
            if not b: break
            f.write(b); got += len(b)
    dt = time.monotonic() - t0
    print("RESULT case=tcp mib=%.0f secs=%.3f mib_per_s=%.1f" % (got / 1048576, dt, got / dt / 1048576))
else:
    for _ in range(200):
        try:
            c = socket.create_connection((addr, port)); break
        except OSError:
            time.sleep(0.05)
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b: break
            c.sendall(b)
    c.close()
'
PIDS=()
A= M= B=
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for ns in $A $M $B; do ip netns del "$ns" 2>/dev/null || true; done
	# FILEBENCH_KEEP=DIR keeps the daemons' logs (e.g. with RUST_LOG=ferry_daemon::chat=debug).
	if [ -n "${FILEBENCH_KEEP:-}" ]; then
		mkdir -p "$FILEBENCH_KEEP" && find "$WORK" -name '*.log' -exec cp {} "$FILEBENCH_KEEP/" \; || true
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# tcp NS_RECV NS_SEND ADDR PORT: one TCP copy of src.bin, hash checked.
tcp() {
	local rx=() tx=()
	[ -n "$1" ] && rx=(ip netns exec "$1")
	[ -n "$2" ] && tx=(ip netns exec "$2")
	"${rx[@]}" python3 -c "$tcp_copy_py" recv "$3" "$4" "$WORK/tcp.out" >"$WORK/tcp.txt" &
	local rp=$!; PIDS+=("$rp")
	sleep 0.3
	"${tx[@]}" python3 -c "$tcp_copy_py" send "$3" "$4" "$WORK/src.bin"
	wait "$rp" || true
	local ok=MISMATCH
	cmp -s "$WORK/src.bin" "$WORK/tcp.out" && ok=ok
	echo "$(cat "$WORK/tcp.txt") hash=$ok"
	rm -f "$WORK/tcp.out"
}

val() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" | head -1; }

summary() { # lines with RESULT case=... mib_per_s=...
	local out=$1 tt tcp
	tt=$(grep 'case=c-toxcore->c-toxcore' <<<"$out" | val mib_per_s || true)
	tcp=$(grep 'case=tcp' <<<"$out" | val mib_per_s || true)
	printf '%-22s %10s %8s %10s %8s\n' case MiB/s hash "/c-toxcore" /tcp
	grep RESULT <<<"$out" | while read -r line; do
		c=$(val case <<<"$line"); r=$(val mib_per_s <<<"$line"); h=$(val hash <<<"$line")
		printf '%-22s %10s %8s %10s %8s\n' "$c" "$r" "$h" \
			"$(python3 -c "print('%.1fx' % ($r / $tt))" 2>/dev/null || echo -)" \
			"$(python3 -c "print('%.3f' % ($r / $tcp))" 2>/dev/null || echo -)"
	done
	grep CHAT <<<"$out" || true
}

loopback() {
	echo "== loopback, ${MIB} MiB"
	out=$(nice -n 10 "$DRIVER" --ferry "$FERRY" --file "$WORK/src.bin" --work "$WORK/lo" --cases "$CASES")
	out+=$'\n'$(tcp "" "" 127.0.0.1 47321)
	summary "$out"
}

netem() {
	A=ffile-$$-a M=ffile-$$-m B=ffile-$$-b
	ip netns add "$A"; ip netns add "$M"; ip netns add "$B"
	ip link add va netns "$A" type veth peer name vma netns "$M"
	ip link add vb netns "$B" type veth peer name vmb netns "$M"
	ip -n "$A" addr add 10.78.1.1/24 dev va; ip -n "$M" addr add 10.78.1.2/24 dev vma
	ip -n "$B" addr add 10.78.2.1/24 dev vb; ip -n "$M" addr add 10.78.2.2/24 dev vmb
	for ns in "$A" "$M" "$B"; do ip -n "$ns" link set lo up; done
	ip -n "$A" link set va up; ip -n "$B" link set vb up
	ip -n "$M" link set vma up; ip -n "$M" link set vmb up
	ip -n "$A" route add default via 10.78.1.2; ip -n "$B" route add default via 10.78.2.2
	ip netns exec "$M" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
	ip -n "$M" tuntap add dev fdl mode tun
	ip -n "$M" link set fdl up
	ip netns exec "$M" sysctl -qw net.ipv4.conf.fdl.rp_filter=0
	ip -n "$M" rule add iif vma lookup 100; ip -n "$M" rule add iif vmb lookup 100
	ip -n "$M" route add default dev fdl table 100
	ip -n "$M" link set fdl txqueuelen 10000
	ip netns exec "$M" python3 bench/delay_tun.py fdl 10 0.25 >"$WORK/dl.txt" &
	PIDS+=($!)
	sleep 0.5
	echo "== 'netem': namespaces A - M - B, 10 ms delay + 0.25 % loss each way (20 ms RTT, ~0.5 % loss), ${MIB} MiB"
	out=$(ip netns exec "$M" nice -n 10 "$DRIVER" --ferry "$FERRY" --file "$WORK/src.bin" --work "$WORK/ne" \
		--cases "$CASES" --infra-ip 10.78.1.2 --a "$A:10.78.1.1" --b "$B:10.78.2.1")
	out+=$'\n'$(tcp "$B" "$A" 10.78.2.1 47322)
	summary "$out"
}

case "$WHAT" in
loopback) loopback ;;
netem) netem ;;
all) loopback; netem ;;
esac
