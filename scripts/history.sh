#!/usr/bin/env bash
# The history checker in its long mode: a release build, 300 s by default, the NATS server
# restarted about every 20 s. NEARKV_HISTORY_SECS sets the length; NEARKV_HISTORY_SEED reruns a
# failure with the same operation choices.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh
ensure_nats_server
export NEARKV_NATS_SERVER="$NATS_SERVER"
export NEARKV_HISTORY_SECS="${NEARKV_HISTORY_SECS:-300}"
cargo test --release --locked --test integration history::history_checker -- --test-threads 1 --nocapture
