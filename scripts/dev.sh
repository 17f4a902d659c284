#!/usr/bin/env bash
# Runs nearkv with a local JetStream nats-server (installed into .tools/ if missing) and the
# `shop_orders` and `bench` buckets from config/dev.toml. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh
ensure_nats_server
# For the quick start's plain-NATS read (tests/peers/nats_py_kv.py).
ensure_nats_py

port="${NATS_PORT:-4222}"
nats_pid=""
cleanup() { [ -n "$nats_pid" ] && kill "$nats_pid" 2>/dev/null || true; }
trap cleanup EXIT

echo "building nearkv (release; the first build takes a few minutes)" >&2
cargo build --release

if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "a server is already listening on 127.0.0.1:$port; using it as NATS" >&2
else
  mkdir -p .tools/dev-store
  "$NATS_SERVER" -js -a 127.0.0.1 -p "$port" -sd .tools/dev-store >.tools/dev-nats.log 2>&1 &
  nats_pid=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  echo "$("$NATS_SERVER" --version) on nats://127.0.0.1:$port (log: .tools/dev-nats.log)" >&2
fi

./target/release/nearkv serve --config config/dev.toml --nats-url "nats://127.0.0.1:$port" "$@"
