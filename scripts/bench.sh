#!/usr/bin/env bash
# The comparison behind docs/BENCHMARKS.md: starts nats-server, Redis (Unix socket) and nearkv,
# runs the same workloads against nearkv, direct NATS KV, Redis and the raw socket floor in one
# run, and rewrites docs/BENCHMARKS.md and docs/benchmarks-latency.png. Takes about 10 minutes.
# Not part of CI. Usage: ./scripts/bench.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh
ensure_nats_server
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
  echo "installing redis-server and redis-tools (Debian)" >&2
  (apt-get update -qq && apt-get install -y -qq redis-server redis-tools) >&2
fi
if ! PYTHONPATH="$TOOLS/bench" python3 -c 'import matplotlib' 2>/dev/null; then
  echo "installing matplotlib into .tools/bench (PyPI)" >&2
  pip_install "$TOOLS/bench" matplotlib
fi
cargo build --release --locked --quiet
PYTHONPATH="$TOOLS/bench" python3 scripts/bench_compare.py "$@"
