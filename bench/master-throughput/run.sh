#!/usr/bin/env bash
# Master throughput benchmark: N simulated zero-cost workers on loopback against a real master.
# Usage: bench/master-throughput/run.sh [workers=256] [max_tasks=16] [shards=1024] [layers=6] [generations=4]
# Prints one JSON line (results/s, candidate counts/s, lease latency p50/p99 in ms).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo run --quiet --release -p ccsrp-master --example throughput -- "${1:-256}" "${2:-16}" "${3:-1024}" "${4:-6}" "${5:-4}"
