#!/usr/bin/env bash
# What one client's large request does to another client's reads: a bucket of KEYS keys (default
# 1,000,000 of 100 bytes), three concurrent listings of all of them (`KEYS`, v1 `keys`,
# `NEARKV.KEYS`) or three `watch`es with their initial entries, while one other connection sends
# GETs for 4 s. Prints the GETs' p50, p99 and worst latency for each. Used for docs/BENCHMARKS.md
# and the issue notes; run it against two builds to compare (NEARKV=path/to/nearkv).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh
ensure_nats_server
ensure_redis_tools
KEYS="${KEYS:-1000000}"
if [ -z "${NEARKV:-}" ]; then
  cargo build --release --locked --quiet
  NEARKV=target/release/nearkv
fi
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
http=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$NATS_SERVER" -js -a 127.0.0.1 -p "$port" -sd "$dir/js" >/dev/null 2>&1 &
nats=$!
sidecar=
cleanup() {
  [ -n "$sidecar" ] && kill "$sidecar" 2>/dev/null || true
  kill "$nats" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
sleep 1
url="nats://127.0.0.1:$port"
sock="$dir/nearkv.sock"
"$NEARKV" serve --nats-url "$url" --bucket big --create-buckets --socket "$sock" \
  --http-listen "127.0.0.1:$http" --log-level warn &
sidecar=$!
until curl -sf "http://127.0.0.1:$http/readyz" >/dev/null 2>&1; do sleep 0.1; done
"$NEARKV" --socket "$sock" bench --quiet --nats-url "$url" --workload seed --bucket big \
  --keys "$KEYS" >/dev/null
key=$(redis-cli -s "$sock" SCAN 0 COUNT 5 | sed -n 2p)

measure() { # label, then the command three clients run at once
  local label=$1
  shift
  (for _ in 1 2 3; do "$@" >/dev/null 2>&1 & done; wait) &
  local listers=$!
  sleep 0.05
  python3 - "$sock" "$key" "$label" <<'PY'
import socket, sys, time
path, key, label = sys.argv[1], sys.argv[2].encode(), sys.argv[3]
s = socket.socket(socket.AF_UNIX)
s.connect(path)
get = b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key)
lat = []
end = time.time() + 4
while time.time() < end:
    t = time.perf_counter()
    s.sendall(get)
    buf = b""
    while buf.count(b"\r\n") < 2:
        buf += s.recv(4096)
    lat.append((time.perf_counter() - t) * 1000)
lat.sort()
print(f"{label:28} GETs {len(lat):>7}  p50 {lat[len(lat)//2]:.2f} ms  p99 {lat[int(len(lat)*.99)]:.2f} ms  worst {lat[-1]:.1f} ms")
PY
  wait "$listers" 2>/dev/null || true
  pkill -f "$sock watch" 2>/dev/null || true
}
measure "3 x KEYS big:*" redis-cli -s "$sock" KEYS 'big:*'
measure "3 x v1 keys" "$NEARKV" --socket "$sock" keys big
measure "3 x NEARKV.KEYS" redis-cli -s "$sock" NEARKV.KEYS 'big:>'
measure "3 x watch (initial, 4 s)" timeout 4 "$NEARKV" --socket "$sock" watch big
