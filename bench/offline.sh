#!/usr/bin/env bash
# Offline message delivery after the recipient returns (issue 9 goal: median under 5 s on
# loopback). Not run in CI.
#
#   bench/offline.sh [ROUNDS=10] [down|up|both=both] [STORERS=8]
#
# On 127.0.0.1 only: 2 in-process DHT nodes, STORERS `ferry up` store holders, sender A and
# recipient B (friends, both ferry nodes). Each round B is stopped (by PID, after `ferry stop`),
# A sends with `ferry send`, and once A logs that a holder stored the sealed mail, B is
# restarted and polled with `ferry messages --json` until the message shows. "down": A is
# stopped before B returns, so only B's mailbox collection can deliver; "up": A stays up and its
# direct resend (when the friend connection comes up) races the mailbox. Times are from B's
# process start and from B's first store-capable peer (`ferry store status`); `path` is read
# from B's log ("offline message delivered" vs "... directly"). The run ends by checking that B
# holds every message exactly once and in order. Driver: crates/ferry-cli/examples/offlinebench.rs.
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
	echo "== sender $1: $ROUNDS rounds, $STORERS storers"
	timeout $((120 + ROUNDS * 150)) "$DRIVER" --ferry "$FERRY" --rounds "$ROUNDS" \
		--storers "$STORERS" --sender "$1"
}

case "$WHAT" in
down | up) run "$WHAT" ;;
both) run down; run up ;;
*) echo "usage: $0 [ROUNDS] [down|up|both] [STORERS]" >&2; exit 2 ;;
esac
