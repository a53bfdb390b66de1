#!/usr/bin/env bash
# Offline message delivery after the recipient returns (issue 9 goal: median under 5 s on
# loopback). Not run in CI.
#
#   bench/offline.sh [ROUNDS=10] [down|up|cold|inflight|all=all] [STORERS=8]
#
# On 127.0.0.1 only: 2 in-process DHT nodes, STORERS `ferry up` store holders, sender A and
# recipient B (friends, both ferry nodes). Each round B is stopped (by PID, after `ferry stop`),
# A sends with `ferry send`, and once A logs that a holder stored the sealed mail, B is
# restarted and polled with `ferry messages --json` until the message shows. "down": A is
# stopped before B returns, so only B's mailbox collection can deliver; "up": A stays up and its
# direct resend (when the friend connection comes up) races the mailbox. Times are from B's
# process start and from B's first store-capable peer (`ferry store status`); `path` is read
# from B's log ("offline message delivered" vs "... directly"). The run ends by checking that B
# holds every message exactly once and in order. "cold": A down, B killed with SIGKILL by PID
# (no goodbye) and the store peers saved in B's mail.json emptied before each restart, so B must
# find holders through the DHT alone; A sends once it has noticed B is gone (its session timing
# out, ~30 s, in the first round). "inflight": A stays up, B is killed and A sends at once,
# before its session to B has timed out (the message goes into the dead session; B comes back
# before A notices, and A resends when the new session is up).
# Driver: crates/ferry-cli/examples/offlinebench.rs.
# Debug build (the shared machine's rule); OFFLINEBENCH_LOGS=1 prints B's log of each round.
set -euo pipefail
ROUNDS=${1:-10}
WHAT=${2:-both}
STORERS=${3:-8}
cd "$(dirname "$0")/.."
nice -n 10 cargo build -q -p ferry-cli --bin ferry --example offlinebench
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
FERRY=$TARGET/debug/ferry
DRIVER=$TARGET/debug/examples/offlinebench

run() {
	echo "== $1: $ROUNDS rounds, $STORERS storers"
	shift
	timeout $((120 + ROUNDS * 150)) "$DRIVER" --ferry "$FERRY" --rounds "$ROUNDS" \
		--storers "$STORERS" "$@" | grep -E "^(ROUND|SUMMARY|PATHS|EXACTLY)"
}

case "$WHAT" in
down) run down --sender down ;;
up) run up --sender up ;;
cold) run cold --sender down --stop kill --cold ;;
inflight) run inflight --sender up --stop kill --no-wait ;;
all)
	run down --sender down
	run up --sender up
	run cold --sender down --stop kill --cold
	run inflight --sender up --stop kill --no-wait
	;;
*) echo "usage: $0 [ROUNDS] [down|up|cold|inflight|all] [STORERS]" >&2; exit 2 ;;
esac
