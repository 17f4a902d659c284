#!/usr/bin/env bash
# Runs every test: unit tests, and integration tests against real nats-server processes that the
# tests start themselves on free loopback ports. Installs nats-server, nats-py and redis-py into
# .tools/, the Node Redis clients (node-redis, ioredis) into tests/peers/node (npm ci, from the lock file), and Debian's
# redis-tools (redis-cli, redis-benchmark) when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh
ensure_nats_server
ensure_nats_py
ensure_redis_tools
ensure_node_peer
export NEARKV_NATS_SERVER="$NATS_SERVER"
export NEARKV_PYTHONPATH NEARKV_NODE_PEER
# The layering README's Layout section promises: no import cycles, the cache and the client
# within their bounds.
python3 scripts/check-layering.py
# Unit tests, and benches/ once each in criterion's test mode, so they keep working.
cargo test --locked --lib --bins --benches
# Integration tests; then the history checker (tests/integration/history/) on its own, so that
# its report shows: operations run, violations found (must be 0). Longer runs: scripts/history.sh.
cargo test --locked --test integration -- --skip history::history_checker --skip failover::
cargo test --locked --test integration history::history_checker -- --test-threads 1 --nocapture
# The failover tests compare recovery times with a direct NATS client's: on their own, one at a
# time, so that other suites' 3-node clusters do not share the two cores with them.
cargo test --locked --test integration failover:: -- --test-threads 1 --nocapture
cargo test --locked --doc
./scripts/check-deploy.sh
