#!/usr/bin/env bash
# DHT simulator benchmark (issue 3): builds ferry in release mode and runs `ferry sim dht` for the
# issue's scenarios, printing one JSON report per line and a summary table.
#
#   bench/sim-dht.sh                 # 1,000 nodes: no churn; 10 %/h and 30 %/h churn with 5 % loss
#   NODES=10000 bench/sim-dht.sh     # the same at 10,000 nodes
#   HOURS=1 SEED=1 LOOKUPS=6         # defaults
#   THREADS=2 bench/sim-dht.sh       # threads advancing the nodes (default: the idle cores, by
#                                    # load average); reports are identical for any count
#
# Everything runs in one process in virtual time; nothing touches the network.
set -euo pipefail
cd "$(dirname "$0")/.."
nodes="${NODES:-1000}"
hours="${HOURS:-1}"
seed="${SEED:-1}"
lookups="${LOOKUPS:-6}"
threads=()
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")
cargo build --release -q -p ferry-cli
out="$(mktemp)"
for spec in "0 0" "0.1 0.05" "0.3 0.05"; do
    set -- $spec
    echo "== nodes=$nodes hours=$hours churn=$1/h loss=$2 seed=$seed threads=${THREADS:-auto}" >&2
    ./target/release/ferry sim dht --nodes "$nodes" --hours "$hours" --churn "$1" --loss "$2" \
        --seed "$seed" --lookups-per-hour "$lookups" "${threads[@]}" --json | tr -d '\n ' >>"$out"
    echo >>"$out"
done
cat "$out"
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cols = ["nodes", "churn_per_hour", "loss", "lookups", "lookup_success_rate", "median_lookup_ms",
        "p99_lookup_ms", "idle_packets_per_node_minute", "bootstrap_stable_s", "wall_seconds", "peak_rss_bytes"]
print(" | ".join(cols))
for r in rows:
    speed = r["simulated_seconds"] / max(r["wall_seconds"], 1e-9)
    vals = [r["nodes"], r["churn_per_hour"], r["loss"], r["lookups"], f'{r["lookup_success_rate"]:.5f}',
            f'{r["median_lookup_ms"]:.0f}', f'{r["p99_lookup_ms"]:.0f}', f'{r["idle_packets_per_node_minute"]:.0f}',
            r["bootstrap_stable_s"], f'{r["wall_seconds"]:.1f} ({speed:.0f}x)', f'{r["peak_rss_bytes"]/2**20:.0f} MiB']
    print(" | ".join(str(v) for v in vals))
PY
rm -f "$out"
