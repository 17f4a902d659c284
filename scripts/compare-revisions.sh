#!/usr/bin/env bash
# Same-run before/after of the read path: builds two revisions (release), then, against one
# nats-server and one seeded bucket, alternates their sidecars round by round under the same
# `nearkv bench` workloads, so that the machine's drift hits both alike. Not part of CI.
#
# usage: ./scripts/compare-revisions.sh BEFORE [AFTER (default: the work tree)] [ROUNDS (default 3)]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh
ensure_nats_server
before="$1"; after="${2:-}"; rounds="${3:-3}"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null; git worktree remove --force "$work/before" 2>/dev/null; rm -rf "$work"' EXIT
build() { # REV DIR
  git worktree add --detach --force "$2" "$1" >/dev/null
  (cd "$2" && cargo build --release --locked --quiet)
}
build "$before" "$work/before"
A_BIN="$work/before/target/release/nearkv"
if [ -n "$after" ]; then
  build "$after" "$work/after"; B_BIN="$work/after/target/release/nearkv"
else
  cargo build --release --locked --quiet; B_BIN="$PWD/target/release/nearkv"
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url="nats://127.0.0.1:$port"
"$NATS_SERVER" -js -a 127.0.0.1 -p "$port" -sd "$work/js" >/dev/null 2>&1 &
sleep 1
"$B_BIN" bench --socket "$work/none" --against nats --nats-url "$url" --bucket bench --workload seed --keys 10000 >/dev/null
run() { # BINARY LABEL
  "$1" serve --create-buckets --nats-url "$url" --bucket bench --socket "$work/s.sock" \
    --http-listen 127.0.0.1:0 --log-level warn >/dev/null 2>&1 &
  local sidecar=$!
  for _ in $(seq 100); do [ -S "$work/s.sock" ] && break; sleep 0.1; done
  sleep 1
  for workload in "get --pipeline 1 --connections 2" "get --pipeline 32 --connections 2" \
                  "mget --mget-keys 10 --pipeline 8 --connections 2"; do
    # shellcheck disable=SC2086
    printf '%-7s %s\n' "$2" "$("$B_BIN" bench --socket "$work/s.sock" --nats-url "$url" --bucket bench \
      --quiet --no-seed --keys 10000 --duration 5s --warmup 1s --workload $workload | tail -1)"
  done
  kill "$sidecar"; wait "$sidecar" 2>/dev/null || true; rm -f "$work/s.sock"
}
for _ in $(seq "$rounds"); do run "$A_BIN" before; run "$B_BIN" after; done
