#!/usr/bin/env bash
# The fault and hostile-client suites, with the figures they print (README "Reliability"):
# cluster leader loss, network cut, consumer loss, SIGTERM under load, slow watcher memory,
# limits, access control, NATS auth and TLS, hostile clients, slow readers, shutdown grace,
# /readyz through a NATS outage, compare-and-set under concurrency. They also run in ./scripts/test.sh, quietly.
# The long fuzz run is separate: cargo +nightly fuzz run frames_and_requests -- -max_total_time=600
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh
ensure_nats_server
export NEARKV_NATS_SERVER="$NATS_SERVER"
cargo test --locked --test integration -- --nocapture --test-threads 1 \
  cluster:: faults:: limits:: access:: auth:: outage:: fleet:: cas:: failover:: operability::readyz 2>&1 |
  grep -E "^(test |3-node|network cut|consumer deleted|sidecar SIGTERM|slow watcher|hostile client|shutdown with|slow reader|NATS outage|creates on a deleted key|failover,|test result)"
