#!/usr/bin/env bash
# Issue 4 benchmarks, side by side with c-toxcore in one run (loopback only):
#   * time from start to "friend online" for ferry<->ferry, ferry<->c-toxcore, c-toxcore<->c-toxcore
#   * message round trip ferry<->ferry
# Needs libtoxcore-dev and pkg-config (scripts/test installs them). Release build.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release -p ferry-cli --test bench_friends -- --ignored --nocapture --test-threads 1 2>&1 \
    | grep -E "^(time from|ferry|c-toxcore|message round trip|test result)"
