#!/usr/bin/env bash
# net_crypto bulk throughput (issue 6 point 4). Not run in CI.
#
#   bench/throughput.sh [MIB] [loopback|netem|all]
#
# 1. loopback: two ferry nodes in one process on 127.0.0.1 (crates/ferry-net/benches/throughput.rs),
#    bulk custom lossless packets (1373 B) plus a chat message every 20 ms; and a plain TCP copy
#    of the same bytes on loopback as the ceiling.
# 2. netem: namespaces A and B joined through a middle namespace M that adds 10 ms delay and 0.25 %
#    loss each way (20 ms RTT, ~0.5 % loss round trip); one ferry node in A and one in B, then the
#    TCP copy over the same path. This VM's kernel has no sch_netem, so M routes both directions
#    through a userspace TUN delay line (bench/delay_tun.py: constant delay, per-packet random
#    loss, after the kernel split GSO/TSO batches). Being Python, it is itself a bottleneck of
#    some 30–60k packets/s, for TCP and ferry alike. Namespaces get unique names and are removed
#    on exit (needs root).
#
# Prints MiB/s per case and ferry/TCP ratios. Absolute numbers swing on the shared 2-vCPU machine;
# compare within one run.
set -euo pipefail
MIB=${1:-256}
WHAT=${2:-all}
NETEM_MIB=${NETEM_MIB:-$MIB}
cd "$(dirname "$0")/.."

BIN=$(nice -n 10 cargo bench -p ferry-net --bench throughput --no-run --message-format=json 2>/dev/null |
	jq -r 'select(.reason=="compiler-artifact" and .target.name=="throughput" and .executable!=null) | .executable' | tail -1)
[ -x "$BIN" ] || { echo "bench binary not built" >&2; exit 1; }

# A TCP copy of N MiB: receiver counts bytes, sender writes 1 MiB chunks; prints MiB/s.
tcp_copy_py='
import socket, sys, time
mode, addr, port, mib = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
total = mib * 1024 * 1024
if mode == "recv":
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(1)
    c, _ = s.accept()
    got, t0 = 0, None
    buf = bytearray(1 << 20)
    while got < total:
        n = c.recv_into(buf)
        if n == 0: break
        if t0 is None: t0 = time.monotonic()
        got += n
    dt = time.monotonic() - t0
    print("TCP mib=%d secs=%.3f mib_per_s=%.1f" % (mib, dt, got / dt / 1048576))
else:
    for _ in range(200):
        try:
            c = socket.create_connection((addr, port)); break
        except OSError:
            time.sleep(0.05)
    chunk = b"\0" * (1 << 20)
    for _ in range(mib):
        c.sendall(chunk)
    c.close()
'

val() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" | tail -1; }

loopback() {
	echo "== loopback, ${MIB} MiB"
	out=$(nice -n 10 "$BIN" both --mib "$MIB" --time-limit 300 | grep RESULT)
	echo "ferry->ferry  $out"
	tcp=$( (python3 -c "$tcp_copy_py" recv 127.0.0.1 47311 "$MIB" &
		sleep 0.3; python3 -c "$tcp_copy_py" send 127.0.0.1 47311 "$MIB"; wait) | grep TCP)
	echo "tcp copy      $tcp"
	f=$(echo "$out" | val mib_per_s); t=$(echo "$tcp" | val mib_per_s)
	echo "ratio ferry/tcp: $(python3 -c "print('%.3f' % ($f / $t))")   ferry/c-toxcore(6.25 MiB/s): $(python3 -c "print('%.1fx' % ($f / 6.25))")"
}

netem() {
	A=fspeed-$$-a M=fspeed-$$-m B=fspeed-$$-b
	cleanup() {
		for p in ${RPID:-} ${DPID:-}; do kill "$p" 2>/dev/null || true; done
		ip netns del "$A" 2>/dev/null || true
		ip netns del "$M" 2>/dev/null || true
		ip netns del "$B" 2>/dev/null || true
	}
	trap cleanup EXIT INT TERM
	ip netns add "$A"; ip netns add "$M"; ip netns add "$B"
	ip link add va netns "$A" type veth peer name vma netns "$M"
	ip link add vb netns "$B" type veth peer name vmb netns "$M"
	ip -n "$A" addr add 10.77.1.1/24 dev va; ip -n "$M" addr add 10.77.1.2/24 dev vma
	ip -n "$B" addr add 10.77.2.1/24 dev vb; ip -n "$M" addr add 10.77.2.2/24 dev vmb
	for ns in "$A" "$M" "$B"; do ip -n "$ns" link set lo up; done
	ip -n "$A" link set va up; ip -n "$B" link set vb up
	ip -n "$M" link set vma up; ip -n "$M" link set vmb up
	ip -n "$A" route add default via 10.77.1.2; ip -n "$B" route add default via 10.77.2.2
	ip netns exec "$M" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
	# This kernel has no sch_netem: delay and loss in a userspace TUN delay line.
	ip -n "$M" tuntap add dev fdl mode tun
	ip -n "$M" link set fdl up
	ip netns exec "$M" sysctl -qw net.ipv4.conf.fdl.rp_filter=0
	ip -n "$M" rule add iif vma lookup 100; ip -n "$M" rule add iif vmb lookup 100
	ip -n "$M" route add default dev fdl table 100
	ip -n "$M" link set fdl txqueuelen 10000
	ip netns exec "$M" python3 bench/delay_tun.py fdl 10 0.25 >"/tmp/fspeed-$$-dl.txt" &
	DPID=$!
	sleep 0.5
	echo "== 'netem': namespaces A - M - B, 10 ms delay + 0.25 % loss each way (20 ms RTT, ~0.5 % loss), ${NETEM_MIB} MiB"
	ip netns exec "$B" nice -n 10 "$BIN" recv --bind 10.77.2.1:40001 --peer 10.77.1.1:40001 \
		--mib "$NETEM_MIB" --time-limit 600 >"/tmp/fspeed-$$-recv.txt" &
	RPID=$!
	ip netns exec "$A" env ${FERRY_BENCH_VERBOSE:+FERRY_BENCH_VERBOSE=1} nice -n 10 "$BIN" send --bind 10.77.1.1:40001 --peer 10.77.2.1:40001 \
		--mib "$NETEM_MIB" --time-limit 600 | grep SENT || true
	wait "$RPID" || true; RPID=
	out=$(grep RESULT "/tmp/fspeed-$$-recv.txt" || echo "RESULT failed mib_per_s=0")
	rm -f "/tmp/fspeed-$$-recv.txt"
	echo "ferry->ferry  $out"
	for ns in "$A" "$B"; do
		echo "udp drops in ${ns##*-}: $(ip netns exec "$ns" awk '/^Udp:/ {if (h) {print "RcvbufErrors=" $6, "SndbufErrors=" $7} else h=1}' /proc/net/snmp)"
	done
	ip netns exec "$B" python3 -c "$tcp_copy_py" recv 10.77.2.1 47312 "$NETEM_MIB" >"/tmp/fspeed-$$-tcp.txt" &
	RPID=$!
	sleep 0.3
	ip netns exec "$A" python3 -c "$tcp_copy_py" send 10.77.2.1 47312 "$NETEM_MIB"
	wait "$RPID" || true; RPID=
	tcp=$(grep TCP "/tmp/fspeed-$$-tcp.txt"); rm -f "/tmp/fspeed-$$-tcp.txt"
	echo "tcp copy      $tcp  (cc: $(ip netns exec "$A" cat /proc/sys/net/ipv4/tcp_congestion_control))"
	kill "$DPID"; wait "$DPID" 2>/dev/null || true; DPID=
	cat "/tmp/fspeed-$$-dl.txt"; rm -f "/tmp/fspeed-$$-dl.txt"
	f=$(echo "$out" | val mib_per_s); t=$(echo "$tcp" | val mib_per_s)
	echo "ratio ferry/tcp: $(python3 -c "print('%.3f' % ($f / $t))")"
	cleanup; trap - EXIT INT TERM
}

case "$WHAT" in
loopback) loopback ;;
netem) netem ;;
all) loopback; netem ;;
esac
