#!/usr/bin/env bash
# What one client's large request does to another client's reads: a bucket of KEYS keys (default
# 1,000,000 of 100 bytes), three concurrent listings of all of them (`KEYS`, v1 `keys`,
# `NEARKV.KEYS`), three `watch`es with their initial entries, or three whole `SCAN`s at
# redis-cli's COUNT of 10, while one other connection sends GETs for 4 s; last, the bucket's
# stream purged behind the sidecar's back while a watch follows it (a rebuild that tells the watch
# of every vanished key). Prints the GETs' p50, p99 and worst latency for each. Then what greedy
# clients that read nothing do to the sidecar's memory: 3,000 pipelined `get`s of a 1 MB value,
# one `mget` naming it 3,000 times, 300 `keys` of the bucket, 10 `watch`es of it, 1,000 pipelined
# `put`s of 1 MB while NATS is stalled (SIGSTOP). Used for
# README.md and the issue notes; run it against two builds to compare (NEARKV=path/to/nearkv).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh
ensure_nats_server
ensure_redis_tools
ensure_nats_py
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
  # Continued first: a NATS stopped for the stalled puts would not act on the signal.
  kill -CONT "$nats" 2>/dev/null || true
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

probe() { # label, seconds: one connection's GETs meanwhile, timed
  python3 - "$sock" "$key" "$1" "$2" <<'PY'
import socket, sys, time
path, key, label, seconds = sys.argv[1], sys.argv[2].encode(), sys.argv[3], float(sys.argv[4])
s = socket.socket(socket.AF_UNIX)
s.connect(path)
get = b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key)
lat = []
end = time.time() + seconds
while time.time() < end:
    t = time.perf_counter()
    s.sendall(get)
    buf = b""
    while not (buf.startswith(b"$-1\r\n") or buf.count(b"\r\n") >= 2):
        buf += s.recv(4096)
    lat.append((time.perf_counter() - t) * 1000)
lat.sort()
print(f"{label:28} GETs {len(lat):>7}  p50 {lat[len(lat)//2]:.2f} ms  p99 {lat[int(len(lat)*.99)]:.2f} ms  worst {lat[-1]:.1f} ms")
PY
}

measure() { # label, then the command three clients run at once
  local label=$1
  shift
  (for _ in 1 2 3; do "$@" >/dev/null 2>&1 & done; wait) &
  local listers=$!
  sleep 0.05
  probe "$label" 4
  wait "$listers" 2>/dev/null || true
  pkill -f "$sock watch" 2>/dev/null || true
}
measure "3 x KEYS big:*" redis-cli -s "$sock" KEYS 'big:*'
measure "3 x v1 keys" "$NEARKV" --socket "$sock" keys big
measure "3 x NEARKV.KEYS" redis-cli -s "$sock" NEARKV.KEYS 'big:>'
measure "3 x watch (initial, 4 s)" timeout 4 "$NEARKV" --socket "$sock" watch big
# Three whole scans at once, as `redis-cli --scan` runs them (COUNT 10), cut off after 60 s:
# how long each took and how many keys it listed, besides the GETs meanwhile.
started=$(date +%s.%N)
(for i in 1 2 3; do
  (timeout 60 redis-cli -s "$sock" --scan --pattern 'big:*' | wc -l >"$dir/scan.$i" || true
   date +%s.%N >>"$dir/scan.$i") &
done; wait) &
scans=$!
sleep 0.05
probe "3 x SCAN (COUNT 10)" 4
wait "$scans"
for i in 1 2 3; do
  { read -r listed; read -r ended; } <"$dir/scan.$i"
  echo "  scan $i: $listed keys listed in $(python3 -c "print(f'{$ended - $started:.1f}')") s"
done

# Greedy clients: each sends its requests in one burst to a sidecar of its own, just started, and
# reads nothing for 6 s (less than the default write_timeout). That sidecar's RSS once ready, and
# the most it reached meanwhile.
head -c 1000000 /dev/zero | tr '\0' x | "$NEARKV" --socket "$sock" put big huge - >/dev/null
greedy() { # label, op, count
  local fresh="$dir/greedy.sock" fresh_http before peak rss
  fresh_http=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$NEARKV" serve --nats-url "$url" --bucket big --socket "$fresh" \
    --http-listen "127.0.0.1:$fresh_http" --log-level error &
  local greedy_sidecar=$!
  until curl -sf "http://127.0.0.1:$fresh_http/readyz" >/dev/null 2>&1; do sleep 0.1; done
  sleep 1
  before=$(awk '/VmRSS/ {print $2}' "/proc/$greedy_sidecar/status")
  # Puts wait for NATS: it is stalled meanwhile, so that they all wait.
  [ "$2" = put ] && kill -STOP "$nats"
  PYTHONPATH="$NEARKV_PYTHONPATH" python3 - "$fresh" "$2" "$3" <<'PY' &
import socket, struct, sys, threading, time, msgpack
path, op, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
request = {"op": op, "bucket": "big"}
if op == "get":
    request["key"] = "huge"
elif op == "mget":
    request["keys"] = ["huge"] * 3000
elif op == "put":
    request["key"] = "flood"
    request["value"] = b"x" * 1000000
frames = []
for i in range(count):
    body = msgpack.packb(dict(request, id=i + 1))
    frames += [struct.pack(">I", len(body)), body]
burst = b"".join(frames)
s = socket.socket(socket.AF_UNIX)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect(path)
# As fast as the sidecar reads them, in the background, for as long as it reads.
threading.Thread(target=s.sendall, args=(burst,), daemon=True).start()
time.sleep(6)
PY
  local client=$!
  peak=$before
  for _ in $(seq 28); do
    sleep 0.2
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$greedy_sidecar/status")
    [ "$rss" -gt "$peak" ] && peak=$rss
  done
  wait "$client" 2>/dev/null || true
  if [ "$2" = put ]; then
    # Gone before NATS wakes, so that the stalled puts are not written.
    kill -KILL "$greedy_sidecar"
    kill -CONT "$nats"
  else
    kill "$greedy_sidecar"
  fi
  wait "$greedy_sidecar" 2>/dev/null || true
  printf '%-34s RSS %d MiB before, at most %d MiB while it read nothing\n' "$1" $((before / 1024)) $((peak / 1024))
}
greedy "3,000 x get of 1 MB" get 3000
greedy "mget of 1 MB x 3,000" mget 1
greedy "300 x v1 keys" keys 300
greedy "10 x watch" watch 10
greedy "1,000 x put of 1 MB, NATS stalled" put 1000

# Last, as it empties the bucket: a watch follows it, and the stream is purged behind the
# sidecar's back; the sidecar notices at its next stream check and reloads.
"$NEARKV" --socket "$sock" watch big --no-initial >/dev/null 2>&1 &
sleep 0.5
(sleep 0.5; PYTHONPATH="$NEARKV_PYTHONPATH" python3 -c '
import asyncio, sys, nats
async def purge():
    nc = await nats.connect(sys.argv[1])
    await nc.jetstream().purge_stream("KV_big")
    await nc.close()
asyncio.run(purge())' "$url") &
probe "rebuild, watched (6 s)" 6
pkill -f "$sock watch" 2>/dev/null || true
