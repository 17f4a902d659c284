"""Runs the benchmark matrix and writes docs/BENCHMARKS.md (see scripts/bench.sh)."""
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEARKV = os.path.join(ROOT, "target", "release", "nearkv")
NATS_SERVER = os.environ["NATS_SERVER"]
QUICK = "--quick" in sys.argv
REPEATS = 1 if QUICK else 3
DURATION = "2s" if QUICK else "5s"
BIG_KEYS = 100_000 if QUICK else 1_000_000
IDLE_SECONDS = 10


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_and_wakeups(pid):
    """The process's CPU seconds so far (its threads' time on a CPU, to the nanosecond: the clock
    ticks of /proc/<pid>/stat are too coarse for an idle process), and its threads' voluntary
    context switches (each one a sleep, so a wake-up)."""
    cpu, wakeups = 0.0, 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as f:
            cpu += int(f.read().split()[0]) / 1e9
        with open(f"/proc/{pid}/task/{task}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    wakeups += int(line.split()[1])
    return cpu, wakeups


class Env:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="nearkv-bench-")
        self.procs = []
        self.nats_port = free_port()
        self.nats_url = f"nats://127.0.0.1:{self.nats_port}"
        self.spawn([NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.nats_port), "-sd", os.path.join(self.dir, "js")])
        wait_for(lambda: self.port_open(self.nats_port), "nats-server")
        self.redis_sock = os.path.join(self.dir, "redis.sock")
        self.spawn(["redis-server", "--port", "0", "--unixsocket", self.redis_sock, "--save", "", "--appendonly", "no"])
        wait_for(lambda: os.path.exists(self.redis_sock), "redis")

    def port_open(self, port):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            return False

    def spawn(self, args, **kw):
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
        self.procs.append(p)
        return p

    def sidecar(self, name, bucket, http="", extra=()):
        sock = os.path.join(self.dir, f"{name}.sock")
        p = self.spawn([NEARKV, "serve", "--nats-url", self.nats_url, "--bucket", bucket, "--create-buckets",
                        "--socket", sock, "--http-listen", http, *extra])
        wait_for(lambda: os.path.exists(sock), f"sidecar {name}")
        return sock, p

    def close(self):
        for p in reversed(self.procs):
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def bench(env, sock, *args, duration=DURATION):
    cmd = [NEARKV, "--socket", sock, "--json", "bench", "--quiet", "--duration", duration,
           "--nats-url", env.nats_url, *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr}")
    return json.loads(done.stdout)


def median_run(fn):
    runs = [fn() for _ in range(REPEATS)]
    runs.sort(key=lambda r: r["ops_per_sec"])
    return runs[len(runs) // 2]


def redis(env, clients, pipeline):
    def once():
        out = subprocess.run(["redis-benchmark", "-s", env.redis_sock, "-t", "get", "-n",
                              str(100_000 if QUICK else 400_000), "-r", "10000", "-d", "100",
                              "-c", str(clients), "-P", str(pipeline), "--csv"],
                             check=True, capture_output=True, text=True).stdout.strip().splitlines()
        fields = [f.strip('"') for f in out[-1].split(",")]
        # test, rps, avg, min, p50, p95, p99, max (milliseconds)
        return {"target": "redis", "workload": "get", "connections": clients, "pipeline": pipeline,
                "ops_per_sec": float(fields[1]), "p50_us": float(fields[4]) * 1000,
                "p99_us": float(fields[6]) * 1000, "p999_us": None}
    subprocess.run(["redis-benchmark", "-s", env.redis_sock, "-t", "set", "-n", "10000", "-r", "10000",
                    "-d", "100", "-q"], check=True, capture_output=True)
    return median_run(once)


MGET10 = ["mget"] + ["key:__rand_int__"] * 10


def redis_benchmark_once(sock, label, args):
    """One redis-benchmark run, as the same command drives nearkv's Redis face and Redis."""
    out = subprocess.run(["redis-benchmark", "-s", sock, "-r", "10000", "-d", "100", "--csv", *args],
                         check=True, capture_output=True, text=True).stdout.strip().splitlines()
    fields = [f.strip('"') for f in out[-1].split(",")]
    return {"target": label, "workload": args[-1], "ops_per_sec": float(fields[1]),
            "p50_us": float(fields[4]) * 1000, "p99_us": float(fields[6]) * 1000, "p999_us": None}


def redis_face(env, results):
    """The same redis-benchmark commands against nearkv's Redis face and a local redis-server,
    interleaved run by run (this machine's speed drifts within minutes), median of each."""
    # redis-benchmark's keys are `key:<n>`: nearkv serves them from a bucket named `key`.
    resp, _ = env.sidecar("resp", "key")
    n = "100000" if QUICK else "400000"
    targets = [("redis-server", env.redis_sock), ("nearkv resp", resp)]
    for target, sock in targets:
        subprocess.run(["redis-benchmark", "-s", sock, "-t", "set", "-n", "20000", "-r", "10000", "-d", "100",
                        "-c", "50", "-q"], check=True, capture_output=True)
    shapes = [
        ("GET c50", ["-c", "50", "-n", n, "-t", "get"]),
        ("GET c50 P16", ["-c", "50", "-P", "16", "-n", str(int(n) * 4), "-t", "get"]),
        ("MGET 10 keys c50", ["-c", "50", "-n", n, *MGET10]),
        ("SET c50", ["-c", "50", "-n", "20000", "-t", "set"]),
        ("SET c1 P16", ["-c", "1", "-P", "16", "-n", "40000", "-t", "set"]),
    ]
    for shape, args in shapes:
        runs = {target: [] for target, _ in targets}
        for _ in range(max(REPEATS, 5)):
            for target, sock in targets:
                runs[target].append(redis_benchmark_once(sock, target, args))
        for target, measured in runs.items():
            measured.sort(key=lambda r: r["ops_per_sec"])
            results[f"{target} {shape}"] = measured[len(measured) // 2]


def preencoded_reads(env, a, results):
    """GET, 50 connections pipelined 16, with one generator for every side (`nearkv bench`,
    requests encoded before the clock starts, replies read in order): nearkv's protocol v1 and
    its Redis face on its socket, and redis-server on its own. Interleaved run by run, median of
    five."""
    sides = [("pre nearkv v1", a, ["--preencoded"]),
             ("pre redis-server", env.redis_sock, ["--against", "redis"]),
             ("pre nearkv resp", a, ["--against", "redis"])]
    shape = ["--workload", "get", "--connections", "50", "--pipeline", "16"]
    for name, sock, extra in sides:  # writes the working set once on each side
        bench(env, sock, *shape, *extra, duration="1s")
    runs = {name: [] for name, _, _ in sides}
    for _ in range(max(REPEATS, 5)):
        for name, sock, extra in sides:
            runs[name].append(bench(env, sock, "--no-seed", *shape, *extra))
    for name, measured in runs.items():
        measured.sort(key=lambda r: r["ops_per_sec"])
        results[f"{name} get c50 p16"] = measured[len(measured) // 2]


def ready_at(env, name, bucket, extra=()):
    """Starts a sidecar; returns (seconds until /readyz answered 200, its process)."""
    port = free_port()
    start = time.time()
    _, p = env.sidecar(name, bucket, http=f"127.0.0.1:{port}", extra=extra)

    def ready():
        # /readyz over HTTP: polling it costs the sidecar next to nothing.
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False
    wait_for(ready, f"sidecar {name} ready", timeout=600)
    return time.time() - start, p


def stop(p):
    p.send_signal(signal.SIGTERM)
    p.wait(60)


def redis_rss_kib(env, keys):
    """RSS of a fresh redis-server holding `keys` keys of the big bucket's shape (`key-0000000`,
    100-byte values), loaded with redis-cli --pipe."""
    sock = os.path.join(env.dir, "redis-big.sock")
    p = env.spawn(["redis-server", "--port", "0", "--unixsocket", sock, "--save", "", "--appendonly", "no"])
    wait_for(lambda: os.path.exists(sock), "redis-server for the memory row")
    value = "v" * 100
    commands = "".join(f"*3\r\n$3\r\nSET\r\n$11\r\nkey-{i:07}\r\n$100\r\n{value}\r\n" for i in range(keys))
    subprocess.run(["redis-cli", "-s", sock, "--pipe"], input=commands.encode(), check=True, capture_output=True)
    dbsize = subprocess.run(["redis-cli", "-s", sock, "dbsize"], check=True, capture_output=True, text=True)
    assert int(dbsize.stdout) == keys, dbsize.stdout
    time.sleep(1)
    rss = rss_kib(p.pid)
    stop(p)
    return rss


def footprint(env, a, results):
    """Issue 13's rows: ready after a cold start (vs a bare watcher's snapshot) and after a warm
    start (vs cold), RSS with the big bucket mirrored (vs redis-server holding the same data), and
    RSS idle with one empty bucket."""
    seed = bench(env, a, "--workload", "seed", "--bucket", "big", "--keys", str(BIG_KEYS))
    results["seed big"] = seed
    # Let nats-server settle, and read the store once, so both sides start equally warm.
    time.sleep(5)
    bench(env, a, "--workload", "snapshot", "--against", "nats", "--bucket", "big")
    snaps, cold, warm, cold_rss, warm_rss = [], [], [], [], []
    for i in range(REPEATS):
        snaps.append(bench(env, a, "--workload", "snapshot", "--against", "nats", "--bucket", "big"))
        state = os.path.join(env.dir, f"state{i}")
        os.makedirs(state)
        extra = ("--state-dir", state)
        seconds, p = ready_at(env, f"cold{i}", "big", extra)
        cold.append(seconds)
        time.sleep(1)
        cold_rss.append(rss_kib(p.pid))
        stop(p)  # saves the mirror to the state directory
        seconds, p = ready_at(env, f"warm{i}", "big", extra)
        warm.append(seconds)
        time.sleep(1)
        warm_rss.append(rss_kib(p.pid))
        stop(p)
    snaps.sort(key=lambda r: r["seconds"])
    results["nats snapshot big"] = snaps[len(snaps) // 2]
    results["nearkv ready big"] = {"seconds": statistics.median(cold), "rss_kib": statistics.median(cold_rss),
                                   "keys": BIG_KEYS, "runs": cold}
    results["nearkv warm big"] = {"seconds": statistics.median(warm), "rss_kib": statistics.median(warm_rss),
                                  "runs": warm}
    results["redis big"] = {"rss_kib": redis_rss_kib(env, BIG_KEYS), "keys": BIG_KEYS}
    _, p = ready_at(env, "idle", "idle")
    time.sleep(2)
    cpu0, woken0 = cpu_and_wakeups(p.pid)
    time.sleep(IDLE_SECONDS)
    cpu1, woken1 = cpu_and_wakeups(p.pid)
    results["nearkv idle"] = {"rss_kib": rss_kib(p.pid),
                              "cpu_ms_per_s": (cpu1 - cpu0) * 1000 / IDLE_SECONDS,
                              "wakeups_per_s": (woken1 - woken0) / IDLE_SECONDS}
    stop(p)


def main():
    env = Env()
    results = {}
    try:
        if "--footprint" in sys.argv:
            a, _ = env.sidecar("a", "bench")
            footprint(env, a, results)
            print(json.dumps(results, indent=1))
            return
        a, _ = env.sidecar("a", "bench")
        b, _ = env.sidecar("b", "bench")
        # Seed the working set once (10,000 keys of 100 bytes), then measure.
        bench(env, a, "--workload", "get", duration="1s")
        R = lambda name, sock, *args: results.__setitem__(name, median_run(lambda: bench(env, sock, "--no-seed", *args)))
        for c, p in [(1, 1), (16, 1), (50, 1), (50, 16)]:
            R(f"nearkv get c{c} p{p}", a, "--connections", str(c), "--pipeline", str(p))
            R(f"raw get c{c} p{p}", a, "--against", "raw", "--connections", str(c), "--pipeline", str(p))
            results[f"redis get c{c} p{p}"] = redis(env, c, p)
        # Before the writes below add keys to the bucket: every read row, here and above, reads
        # the same 10,000 keys from a bucket that holds only them, as redis-server does.
        preencoded_reads(env, a, results)
        for c, p in [(1, 1), (1, 16), (16, 1), (1, 64)]:
            R(f"nats get c{c} p{p}", a, "--against", "nats", "--connections", str(c), "--pipeline", str(p))
        for w in ["put", "cas"]:
            R(f"nearkv {w} c1 p1", a, "--workload", w)
            R(f"nats {w} c1 p1", a, "--workload", w, "--against", "nats")
            R(f"nearkv {w} c16 p1", a, "--workload", w, "--connections", "16")
            R(f"nats {w} c1 p16", a, "--workload", w, "--against", "nats", "--pipeline", "16")
            R(f"nats {w} c16 p1", a, "--workload", w, "--against", "nats", "--connections", "16")
        redis_face(env, results)
        R("nats watch (NATS put -> NATS watcher)", a, "--workload", "watch", "--against", "nats", "--rate", "1000")
        R("nearkv watch (NATS put -> nearkv watcher)", a, "--workload", "watch", "--rate", "1000")
        R("nearkv watch (put via sidecar A -> watcher on sidecar B)", b, "--workload", "watch", "--rate", "1000",
          "--write-socket", a)

        footprint(env, a, results)
    finally:
        env.close()
    write_report(results)


def fmt(v, digits=0):
    return "–" if v is None else f"{v:,.{digits}f}"


def write_report(r):
    os.makedirs(os.path.join(ROOT, "docs"), exist_ok=True)
    rows = []
    for name, x in r.items():
        if "ops_per_sec" in x and "snapshot" not in name and "seed" not in name:
            rows.append(f"| {name} | {fmt(x['ops_per_sec'])} | {fmt(x['p50_us'], 1)} | {fmt(x['p99_us'], 1)} | {fmt(x.get('p999_us'), 1)} |")
    g = lambda k, f="ops_per_sec": r[k][f]
    best_nats16 = max(g("nats get c1 p16"), g("nats get c16 p1"))
    big = r["nearkv ready big"]
    raw_bytes = big["keys"] * (len("key-0000000") + 100)
    # (what, ratio or value, ">=" or "<=", bound)
    targets = [
        ("get, 16 connections ≥ 3× direct NATS KV get at 16 concurrent (best of 1 client × 16 and 16 clients × 1)",
         g("nearkv get c16 p1") / best_nats16, ">=", 3.0),
        ("get, 50 connections ≥ 1.0× Redis GET, 50 clients (stretch 1.5×)", g("nearkv get c50 p1") / g("redis get c50 p1"), ">=", 1.0),
        ("get, 50 connections pipelined 16 ≥ 1.0× Redis pipelined 16 (each side's own generator: `nearkv bench` against redis-benchmark)",
         g("nearkv get c50 p16") / g("redis get c50 p16"), ">=", 1.0),
        ("get, 50 connections pipelined 16 ≥ 1.0× Redis, one pre-encoding generator for both (protocol v1 against redis-server)",
         g("pre nearkv v1 get c50 p16") / g("pre redis-server get c50 p16"), ">=", 1.0),
        ("the same through nearkv's Redis face (RESP against redis-server, one generator)",
         g("pre nearkv resp get c50 p16") / g("pre redis-server get c50 p16"), ">=", 1.0),
        ("get, 1 connection: p50 ≤ 1.1× the raw socket floor (ratio shown: nearkv p50 / raw p50; lower is better)",
         g("nearkv get c1 p1", "p50_us") / g("raw get c1 p1", "p50_us"), "<=", 1.1),
        ("put p50 ≤ raw floor p50 + direct put p50 + put→watch p50 (ratio shown: nearkv / that sum; lower is better)",
         g("nearkv put c1 p1", "p50_us") / (g("raw get c1 p1", "p50_us") + g("nats put c1 p1", "p50_us")
                                           + g("nats watch (NATS put -> NATS watcher)", "p50_us")), "<=", 1.0),
        ("CAS put p50 ≤ raw floor p50 + direct update p50 + put→watch p50 (ratio shown, lower is better)",
         g("nearkv cas c1 p1", "p50_us") / (g("raw get c1 p1", "p50_us") + g("nats cas c1 p1", "p50_us")
                                           + g("nats watch (NATS put -> NATS watcher)", "p50_us")), "<=", 1.0),
        ("put throughput, 16 connections ≥ 0.9× direct puts at 16 concurrent (best of both shapes)",
         g("nearkv put c16 p1") / max(g("nats put c1 p16"), g("nats put c16 p1")), ">=", 0.9),
        ("CAS throughput, 16 connections ≥ 0.9× direct updates at 16 concurrent (best of both shapes)",
         g("nearkv cas c16 p1") / max(g("nats cas c1 p16"), g("nats cas c16 p1")), ">=", 0.9),
        ("put through one sidecar seen through another: p99 ≤ 1.5× raw put→watch p99 (ratio shown, lower is better)",
         g("nearkv watch (put via sidecar A -> watcher on sidecar B)", "p99_us")
         / g("nats watch (NATS put -> NATS watcher)", "p99_us"), "<=", 1.5),
        (f"ready after a cold start on a {big['keys']:,}-key bucket ≤ 1.25× a bare watcher's snapshot (ratio shown, lower is better)",
         big["seconds"] / r["nats snapshot big"]["seconds"], "<=", 1.25),
        ("ready after a warm start (`state_dir`, the sidecar restarted) ≤ 0.25× the cold start (ratio shown, lower is better)",
         r["nearkv warm big"]["seconds"] / big["seconds"], "<=", 0.25),
        (f"RSS with {big['keys']:,} keys of 100 bytes mirrored ≤ redis-server's RSS holding the same keys (ratio shown, lower is better)",
         big["rss_kib"] / r["redis big"]["rss_kib"], "<=", 1.0),
        ("stretch: the same RSS ≤ 1.3× the raw key+value bytes (ratio shown, lower is better)",
         big["rss_kib"] * 1024 / raw_bytes, "<=", 1.3),
        ("RSS idle with one empty bucket ≤ 16 MiB (MiB shown)", r["nearkv idle"]["rss_kib"] / 1024, "<=", 16.0),
    ]
    resp_ratio = lambda shape: g(f"nearkv resp {shape}") / g(f"redis-server {shape}")
    pre = lambda face: g(f"pre nearkv {face} get c50 p16") / g("pre redis-server get c50 p16")
    targets += [
        ("Redis face: redis-benchmark GET, 50 clients ≥ 1.0× the same against redis-server", resp_ratio("GET c50"), ">=", 1.0),
        ("Redis face: GET, 50 clients pipelined 16 ≥ 1.0× redis-server", resp_ratio("GET c50 P16"), ">=", 1.0),
        ("Redis face: MGET of 10 keys, 50 clients ≥ 1.0× redis-server", resp_ratio("MGET 10 keys c50"), ">=", 1.0),
        ("Redis face: SET, 50 clients (a NATS write each; shown, no target)", resp_ratio("SET c50"), ">=", 0.0),
        ("Redis face: SET, 1 client pipelined 16 (sent to NATS together; shown, no target)", resp_ratio("SET c1 P16"), ">=", 0.0),
    ]
    trows = []
    for what, ratio, direction, bound in targets:
        met = ratio >= bound if direction == ">=" else ratio <= bound
        trows.append(f"| {what} | {ratio:.2f} | {'met' if met else 'not met'} |")
    chart(r)
    warm = r["nearkv warm big"]
    text = f"""# Benchmarks

Produced by `./scripts/bench.sh` on {time.strftime('%Y-%m-%d')} ({os.cpu_count()} cores; nats-server, Redis,
nearkv and the load generator all on this one machine, so they compete for the same cores). Every
number comes from this one run; each row is the median of {REPEATS} runs of {DURATION}. Values are 100
bytes; reads pick random keys among 10,000. The load generator is `nearkv bench` for nearkv, the raw
socket floor and direct async-nats KV calls, and `redis-benchmark` for Redis (Unix socket). Do not
compare these figures with another machine's; compare the ratios.

- **nearkv**: requests over its Unix socket (protocol v1), `--pipeline` requests in flight per connection.
- **raw**: a Rust Unix-socket server answering a 4-byte length-prefixed key with the value from a
  `HashMap`, in its own process (`nearkv bench --against raw`): the floor of any socket round trip.
- **nats**: direct async-nats KV calls (`get` is a direct get) to the local nats-server;
  `c` clients × `p` concurrent calls each.
- **redis**: `redis-benchmark -t get -d 100 -c C -P P` over a Unix socket.
- **pre ...**: `nearkv bench --preencoded` (protocol v1) and `nearkv bench --against redis` (RESP, on
  redis-server's socket and on nearkv's): one generator for every side, each connection sending
  requests encoded before the clock starts and reading the replies in order, as redis-benchmark
  does.
- **redis-server / nearkv resp**: the same `redis-benchmark` command (100-byte values, 10,000 keys,
  `-r 10000`) against a local redis-server's Unix socket and against nearkv's Redis face on its
  socket (docs/RESP.md; redis-benchmark's `key:<n>` keys are served from a bucket named `key`).

## Targets

| target | ratio | |
|---|---|---|
{chr(10).join(trows)}

## All measurements

| run | ops/s | p50 µs | p99 µs | p99.9 µs |
|---|---|---|---|---|
{chr(10).join(rows)}

Sync of a big bucket: a bare async-nats watcher received the {r['nats snapshot big']['ops']:,}-key snapshot in
{r['nats snapshot big']['seconds']:.2f} s; a nearkv sidecar started on the same bucket was ready (`/readyz` 200)
after {big['seconds']:.2f} s (cold: no saved mirror; process start and NATS connection included), with an RSS of
{big['rss_kib'] / 1024:.0f} MiB for {raw_bytes / 1048576:.0f} MiB of keys and values; `redis-server` holding the same keys and values
(loaded with `redis-cli --pipe`) had an RSS of {r['redis big']['rss_kib'] / 1024:.0f} MiB. Restarted with the mirror it saved on SIGTERM
(`--state-dir`), the sidecar was ready after {warm['seconds']:.2f} s (RSS {warm['rss_kib'] / 1024:.0f} MiB). Idle with one empty
bucket: {r['nearkv idle']['rss_kib'] / 1024:.1f} MiB, {r['nearkv idle']['cpu_ms_per_s']:.1f} ms of CPU and
{r['nearkv idle']['wakeups_per_s']:.1f} wake-ups a second (over {IDLE_SECONDS} s). Runs, cold: {', '.join(f"{x:.2f}" for x in big['runs'])} s; warm:
{', '.join(f"{x:.2f}" for x in warm['runs'])} s.

![latency](benchmarks-latency.png)

## Why the unmet targets are unmet (what the profiles say)

- **get, 16 connections vs direct NATS ×3.** nearkv is near the raw socket floor here (compare the
  `nearkv get c16 p1` and `raw get c16 p1` rows: 0.91× the floor in the run at 926835e, 0.80× in
  the run at c56a073); on two cores shared by the load generator, the
  sidecar and nats-server, the floor itself is less than 3× direct NATS gets. Only a cheaper round
  trip than a Unix-socket request/response could meet it.
- **Pipelined get vs Redis.** The unmet row compares two generators: `nearkv bench` (MessagePack
  encoding per request, HDR recording, one task for all connections) against redis-benchmark (C,
  requests encoded once). Driven by one generator that encodes its requests before the clock starts
  and reads the replies in order (`--preencoded`, `--against redis`; the `pre` rows), protocol v1
  reaches {pre('v1'):.2f}× and the Redis face {pre('resp'):.2f}× redis-server's GETs at 50 connections × 16.
  These rows run before the write rows add keys to the bucket, so that nearkv and redis-server
  hold the same 10,000 keys (at 100,000 keys, the hot keys' table slots no longer share cache
  lines). Server-side, the largest item left in `perf` is the DashMap lookup itself: two dependent
  cache misses, the table slot and then the value's block (the key compare), from a fifth to a
  third of the sidecar's time depending on how busy the machine's memory is. The generator and
  the server share the two cores, so the ratio follows the sum of their CPU per request: the
  same generator costs about the same per request on each side, and the CPU per `get` (user +
  system from `/proc/<pid>/stat`, medians of ten interleaved rounds) is 0.98 µs for the sidecar
  with protocol v1 and 0.76 µs through its Redis face, against 0.88 to 1.03 µs for redis-server.
- **The Redis face vs redis-server.** The same `redis-benchmark` commands, interleaved run by run
  (this machine's speed swings by ±20% from one minute to the next; the table shows the median of
  five). redis-server answers from one thread next to a one-thread client on two cores. `perf
  record -g` on nearkv under `redis-benchmark -P 16` now shows the DashMap lookup (two cache
  misses: 21%), the kernel's socket send waking the client (10%) and RESP parsing (8%) as the
  largest items. Before this run, updating the shared metrics and reading the clock three times
  per GET took another 11% of the samples (see 11 below). Connections are now served from one
  thread (12 below; since 13 the NATS side shares it), which removed the work-stealing scheduler's
  thread switches that led the unpipelined profiles. What is left without pipelining is what redis-server
  pays too: a `recvfrom` and a `sendto` per request (`strace -c` counted 10,453 and 10,448 for
  10,000 GETs, with 581 `epoll_wait`s), so the ratio sits at about 1.0 and moves with the
  machine's noise. Costs that were nearkv's alone: each reply the client read woke the sidecar's
  epoll for write space it had not asked for (19 below), and each wake-up polled two cancellation
  tokens and set a write timer (20 and 21 below). After those, redis-server still spends less user
  CPU per GET (1.57 against 2.10 µs in 20's rounds); the kernel's share is the same on both. GET
  at 50 clients sits within this machine's swings of 1.0: met by 1% in the run at 926835e (1.01),
  missed by 1% in the run at c56a073 (0.99).
- **Rows that move across their bound between runs.** Four rows changed between two runs of this
  script with no change to their path in between: get at 50 connections against Redis, the Redis
  face's GET and MGET at 50 clients, and the cold start. They were 1.05, 0.99, 1.02 and 1.08 in
  the run at afbb5db, and 0.98, 0.95, 0.98 and 1.30 in the run at ac63e13. Over minutes, this machine's speed
  moves by more than those margins. For the cold start, I interleaved five cold starts of each
  revision on a 1,000,000-key bucket in one phase (`/readyz` polled every 10 ms). The newer one
  was ready sooner in all five, in 1.77 to 2.19 s against 1.79 to 2.48 s. Three more cold starts,
  each next to a bare watcher's snapshot, gave 1.22 to 1.27× the bare watcher.
  In the run at b29a09b the whole machine was slower than in the run before it (the raw floor's
  p50 at 1 connection 60.5 against 54.2 µs, redis-benchmark's 63 against 47 µs), and get at 1
  connection read 1.23× the floor. Right after it, six interleaved rounds of `nearkv bench
  --connections 1` against the code before 19 (below) and after it, side by side on one
  nats-server, gave p50 medians of 66.5 and 67.1 µs; five more interleaved rounds of the script's
  own Redis-face GET command (`-c 50 -n 400000`, redis-server first) gave medians of 101,652 and
  98,692 GETs/s (0.97).
  In the run at c56a073 the raw floor, redis-server and direct NATS were all faster than in the
  run at 926835e (raw get at 1 connection 19,527 against 7,178/s, redis-benchmark's GET at 50
  clients 121,544 against 90,131/s, a direct NATS get at 1 client 6,895 against 4,466/s), while
  nearkv's get at 50 connections measured the same (108,637 against 108,373/s); so the ratios
  against them fell: get at 50 connections against Redis 1.20 → 0.89, get at 16 against direct
  NATS 2.78 → 1.98, pre-encoded protocol v1 against redis-server 1.23 → 0.96. The one change
  between those runs is how often the NATS connection's state is read (22 below). Right after
  the run, the code before and after it, side by side on one nats-server, measured the same:
  ten interleaved rounds of `redis-benchmark -c 50 -n 300000 -r 10000 -d 100 -t get` on their
  Redis faces gave medians of 107,700 and 106,550 GETs/s; four of `nearkv bench --preencoded
  --connections 50 --pipeline 16`, 889,900 and 883,100 gets/s; four of `nearkv bench
  --connections 16`, 105,300 and 101,100, each within the spread of its rounds (for example
  81,056-112,405 and 82,335-121,870 at 16 connections).
- **Put/CAS throughput at 16 connections.** Every nearkv write costs nats-server a consumer
  delivery to the sidecar's watcher on top of the store and ack (that is how read-your-writes is
  kept), and costs the sidecar that event's decoding; with the generator on the same two cores the
  extra work shows as throughput. The budget, measured at b29a09b (CPU of each process from
  `/proc/<pid>/stat` and the generator's from `/usr/bin/time`, 4 s runs, two rounds): through
  nearkv at 16 connections, nats-server 34–37 µs, the sidecar 26–28 µs and the generator 14 µs
  per put, 79 µs in all, so at most about 25,000 puts/s on two cores; direct, one client × 16:
  23–25 µs, 4 µs (the sidecar only mirroring) and 11 µs, 38 µs in all. 0.9× the direct rate
  allows 58 µs per put at full use of both cores; take nats-server at its best batched cost and
  the generator's 14 µs for a request over a socket of its own, and about 20 µs would be left for
  the sidecar at full use of both cores, about 15 µs at the three quarters they are used now:
  against 26–28 µs spent, half of it in the kernel (49% of `perf`'s samples: the client's `recv`
  and `send`, their wake-ups, NATS's socket). Latency per write is within its target. CPU per put read from
  `/proc/<pid>/stat` over 4 s runs (16 connections through the sidecar; direct: one client × 16,
  with the sidecar mirroring the bucket): nats-server 46 µs through nearkv against 28 µs direct;
  the sidecar 42 µs per put against 4.7 µs per update it only mirrors. `perf` puts 30% of the
  sidecar's samples under `put c16` in the scheduler and the kernel's wake-ups (the connection,
  the NATS client's task for the publish and its ack, the actor for the delivery, the waiter).
  With 12's layout these were cross-thread wake-ups (2.3 `eventfd` writes per put); 13 below put
  everything on one thread, and the sidecar's CPU per put (user + system, `/proc/<pid>/stat`)
  fell from 45–55 µs to 31–34 µs. What is left is about half kernel: the client's `recvfrom` and
  `sendto` and the wake-up of the process that reads them, and NATS's socket; about half user
  space, spread thin (async-nats' per-publish inbox and request, the DashMap insert, malloc). The
  target needs the hop through the sidecar to cost well under 10 µs of CPU per write on cores the
  generator and nats-server share: not reached.
  Running a connection's waiting requests in its own task instead of spawning them saved a spawn
  and a channel hop per write and measured the same (13,663 against 13,750 puts/s, medians of
  five interleaved rounds), so it was not kept.
  Measured again at 80080e1, to see what is left to take (`nearkv bench --workload put
  --connections 16` against `--against nats --pipeline 16`, 4 s runs, each process's CPU from
  `/proc/<pid>/stat`, three rounds): nearkv 22,031-24,567 puts/s (nats-server 28-31 µs, the sidecar
  22-25 µs, the generator 12-13 µs per put) against 32,606-38,391 direct (23-27, 4 and 11-12 µs);
  the raw socket floor at 16 connections costs its generator and server 12-13 µs per request
  together. The two cores were 1.5 busy in both, so at 16 requests in flight the rate is set by the
  time a put takes: 16 / 22,500 per second is 711 µs. Timed inside the sidecar, a put spends 371-410
  µs from its publish to NATS's acknowledgement (as long as a direct put takes at 16 in flight) and
  44-50 µs more until the mirror has applied it (over runs at 16 connections and at 1, 80% of puts
  waited for the mirror, 85 µs on average when they did); the other 250 µs are the two socket hops between the generator and the sidecar and
  their wake-ups on the shared cores. 0.9× the direct rate allows a put 16 / (0.9 × 37,500) = 474
  µs: once NATS has answered, 64-100 µs for both hops and the wait for the mirror, while the raw
  socket floor's round trip alone is 54-65 µs at one connection on an idle machine and 138 µs at 16.
  A build that answered at NATS's acknowledgement without waiting for the mirror (which would break
  read-your-writes) measured +12%, -2% and +5% against the current code in three interleaved
  rounds (both sidecars mirroring the bucket meanwhile); more connections raise both sides alike (nearkv 30,773-34,598 puts/s at 64 connections
  against 56,078-62,877 direct at 64 in flight). So no change to the sidecar's side of a put
  reaches 0.9× on this machine.
- **Put through one sidecar seen through another (p99).** A p99 of about 900 paced events per
  second swings from run to run on this machine (0.99, 1.21 and 2.01 in three consecutive runs of
  this script, with no change to the watch path in between); an interleaved A/B of this path
  (four rounds of `nearkv bench --workload watch --rate 1000 --write-socket`, two sidecars per
  revision on one nats-server) gave a median p99 of 876 µs for the current code against 822 µs
  for the code before the footprint work: the same within that spread. After the thread layout
  of 12 below, the same A/B (four rounds) gave p99s of 865, 869, 1,111 and 1,631 µs against 860,
  905, 1,002 and 1,184 µs for the layout before it, and p50s about 5% higher: within the spread,
  perhaps slightly worse, since an event then crossed from the NATS runtime to the serving
  thread. Since 13 it does not: the NATS connection, the feed and the watch share one thread.
- **get, 1 connection, against the raw socket floor.** One serving thread costs a sequential,
  unpipelined client a few microseconds: interleaved runs of `nearkv bench` at 1 connection gave
  the one-thread layout a p50 3–10% above the old two-worker layout's (median of five: 61.9
  against 56.3 µs, raw floor about 55–60 µs), while every concurrent and pipelined read row
  gained (12 below). Interleaved again at 926835e, the gap is not noise: two series of five
  rounds of `nearkv bench --connections 1` against nearkv and against the raw server gave p50
  medians of 73.5 against 59.1 µs and 65.5 against 51.4 µs (1.24× and 1.27×); a raw server on a
  one-thread runtime like the sidecar's measured the same as on two (58.2 µs in the second
  series), and `strace` shows the sidecar making exactly the raw server's system calls per
  request (one `epoll_wait`, one `recvfrom`, one `sendto`). At one request in flight the round
  trip is mostly two cross-CPU wake-ups: with the generator and the raw server pinned to one CPU
  it took 21 µs, and the sidecar spent 30–33 µs of CPU per request at 1 connection (about 6 at
  50), three quarters of it in the kernel's task switch and wake-up paths. Where the extra 10 µs
  go (the generator's MessagePack decoding of a 211-byte answer against the raw server's
  104 bytes is part; the kernel's placement of the two processes may be the rest) is not
  settled, and the target is not met.
- **Ready time on 1M keys (cold).** The bare watcher's time is mostly async-nats decoding the
  messages; the sidecar adds process start, connection, the stream checks, building each value's
  slot (one allocation and one copy) and the DashMap inserts (the table is sized from the stream's
  subject count first, so it never rehashes during the load). A million-key snapshot used to
  overflow async-nats' default subscription queue (65,536 messages): thousands of dropped messages,
  each making the ordered consumer start over; the queue is now 2^18 messages, the smallest size
  that dropped none in these runs (2^17 dropped 256). The load is bound by this machine's two
  cores, not by any one thread: CPU seconds read from `/proc/<pid>/stat` over one cold start
  were 1.9 for nats-server and 2.1 for the sidecar (spread over three threads, none busy more
  than a third of the time), against 1.8 for nats-server and 1.1 for the bare watcher. So only
  less sidecar CPU per value shortens it. Tried and not kept, each the same within this
  machine's noise (six interleaved runs): inserting into the staging table on a thread of its
  own (it moved CPU, it did not remove any), and making the loop's shutdown and reconnect
  futures once instead of per message. Kept: the feed reads each message's `$JS.ACK` reply
  subject itself (`AckMetadata` in `src/cache/feed.rs`: four numbers). async-nats'
  `Message::info` parses every token, the timestamp as an i128 and then a date type: with its
  token splitting that was about a sixth of the sidecar's samples in a cold start. Interleaved
  cold starts, medians of six: 2.74 → 2.55 s (0.93×). Also dropped: a clock read per message
  for the progress log (now one per 1,024 messages). Then the inserts: `perf annotate` put 17%
  of a cold start's samples on two instructions of the DashMap insert, the load of the slot's
  control bytes and the store of its pointer, each a cache miss at a random place in a table of
  a million entries. A snapshot's writes are now kept in per-shard lists while it loads and put
  in the table when it is complete, each shard's in the order of their table positions, so the
  table is written front to back (`Staging::flush` in `src/cache/mirror.rs`; 5% of the samples,
  sorting included). And the messages already received are taken up to 256 at a time without a
  `select!` each (its shutdown and reconnect futures took a lock and a waker registration per
  message: 3% of the samples). Last, the feed runs the ordered-consumer protocol itself on a
  plain subscription (`src/cache/feed.rs`): async-nats' `push::Ordered` wrapped each message in a
  `jetstream::Message` (a clone and drop of the JetStream context: a `Client`, a `String`, a
  channel sender) and parsed its whole `$JS.ACK` subject, the timestamp as an i128 and a date,
  although the feed parses the four numbers it needs itself: about a tenth of the samples.
  Interleaved cold starts, medians of six (start, then poll `/readyz` every 10 ms): 2.24 s
  before, 1.97 s with the ordered inserts, 1.89 s with the bursts (bare watcher 1.43 s in those
  rounds); then 1.75 s before and 1.63 s after the feed's own consumer (bare watcher 1.39 s).
  The sidecar's CPU over a cold start (`/proc/<pid>/stat`, two runs each): 1.66 and 1.73 s
  before these three changes, 1.04 and 1.13 s after, about what the bare watcher spends. What
  remains above the bare watcher's time is process start, the stream checks and building the
  slots, on cores that nats-server (1.6–2.0 s of CPU per cold start) needs too.
- **Ready time after a restart (warm).** Reading and checking the 140 MB file (CRC-32) takes about
  0.1 s and building the million slots on two threads most of the rest; the feed then resumes from
  the file's next revision and the sidecar is ready once it has caught up. The slots are made and
  sorted by shard on every thread, then each thread puts whole shards in the table in
  table-position order, as a cold snapshot does (above): interleaved warm starts, medians of
  seven, 0.45 s before, 0.35 s after. The target is a ratio to the cold start, which got faster
  too.
- **RSS at 1M keys.** Each value is one allocation behind an 8-byte pointer (`src/cache/slot.rs`:
  a length header with an expiry flag, key length, revision, created, the expiry only when there is
  one, key, value: 132 bytes for an 11-byte key and a 100-byte value, glibc's 144-byte class), and
  the table holds only that pointer per slot: 2^15 buckets in each of 64 shards (15,625 keys a shard
  is past 7/8 of 2^14, hashbrown's load limit), 18 MiB with the control bytes. That is 137 + 18 MiB
  plus the process itself (the idle row). Before the pointer was thin, the table held a 16-byte
  `Box<[u8]>` per bucket: 34 MiB, and RSS after a cold start was 185 MiB against 170 MiB now
  (interleaved runs, three each). glibc's free pages left by the snapshot's transit are returned
  with `malloc_trim` after the load. The stretch target (1.3× raw bytes, 138 MiB here) is out of
  reach of one allocation per value: glibc's smallest class that holds a 100-byte value, an 11-byte
  key and a revision is 128 bytes (120 usable), so the values alone would take 122 MiB before the
  table and the process. Nor would packing the entries into shared blocks (an arena) reach it:
  138 MiB less the idle process's 12 MiB leaves 132 bytes per key. The key and value take 111,
  the revision and creation time 16 (each read answers both, at NATS's full precision), and a
  hash table at least a control byte and a 4-byte index per key at hashbrown's 7/8 load limit
  (5.7 bytes): 133 bytes with no allocator overhead, no fragmentation and no length field. Only
  storing less than a read returns would meet it.

## Reproduce

```sh
./scripts/bench.sh            # the full matrix (about 10 minutes); --quick for a short run
./target/release/nearkv bench --help
cargo bench --bench read_path # micro-benchmarks of the read path (criterion)
```

## What was changed for speed, and why

Profiled with `perf record -g -p $(pgrep -f 'nearkv serve')` under `nearkv bench --connections 50 --pipeline 16`
and with the criterion benches:

1. **One task per connection reads and writes.** Responses first went through a channel to a writer
   task: every answer woke a second task. Now the reading task writes answers from memory itself and
   only waiting requests (writes, `min_revision`, strong reads) and watches queue through a channel.
   Sequential get p50 went from about 1.25× to about 1.05× the raw floor.
2. **Responses encoded straight from the mirror.** A `get` is encoded from a borrowed entry while
   its DashMap shard is read-locked: no owned `Entry`, no key `String`, no `Bytes` clone; the only
   allocation is the connection's output buffer, shared by a pipelined burst and written with one
   `write`.
3. **One block per value, aHash.** aHash replaces SipHash (a random-key mirror read fell from 213 ns
   to 135 ns). Keys were first kept inline in the table slot (`CompactString`) to save the cache
   miss of comparing a boxed key; the slot is now a pointer to one block holding the key, the
   metadata and the value, so a lookup touches the table and that one block (key compare, revision,
   value in adjacent bytes) and the table is a fifth of its former size.
4. **Request metrics without locks.** Prometheus' `with_label_values` takes a read lock shared by all
   connections; the per-bucket, per-op counters and histograms are resolved once at start.
5. **One-pass decoding of a plain `get`.** serde decoded a request in two or three passes (header,
   body, options), with `serde_path_to_error` tracking field paths on every request: 135 ns of a
   227 ns dispatch in `cargo bench --bench read_path`. A plain `get` (only `id`, `op`, `bucket`, `key`)
   is now read in one pass by a small hand-written reader that borrows from the frame; everything
   else takes the serde path, and path tracking runs only after a decode failed, to name the field.
6. **Read-your-writes waits wake only their own waiter.** Writes waited on a `tokio::sync::watch`
   channel, which wakes every waiting writer on every update (16 writers: 16 wake-ups per put). A
   `BTreeMap` of waiters by revision now wakes exactly those whose revision was applied, and applying
   an update takes no lock when nobody waits.
7. **Events are built only for watchers.** Applying an update no longer allocates a broadcast event
   when no watch is open. A value is copied once, from NATS's read buffer into its slot (a watch
   event gets a copy of its own, so that no event waiting for a slow watch pins that buffer).
8. **Writes** are published by the request's own task on the shared NATS connection, so concurrent
   writes are pipelined to NATS rather than serialised.
9. The load generator reads a response's `id` and `ok` without serde (`peek_id_ok`), the same
   fast path the Rust client's reader uses.
10. **One shutdown registration per connection.** The read loop's `select!` created a fresh
    `CancellationToken::cancelled()` future per request, which locks the token's mutex (one token
    shared by every connection) and registers with a `Notify`: 3 % of the profile. The future is now
    created once and polled by reference; pipelined get throughput rose by about 11 %.
11. **Reads counted and timed once per burst.** Every read updated shared Prometheus atomics (a
    request counter, a histogram, hit and miss counters), written by both cores, and read a precise
    clock three times (start, end, and the mirror's age). A connection now tallies the reads it
    answers from memory and adds them to the shared metrics once per pipelined burst, timed from
    the burst's first read to its replies (docs/METRICS.md), and the mirror's age (milliseconds,
    against a `max_staleness` of at least 200 ms) comes from the kernel's coarse clock. Interleaved
    `redis-benchmark -c 50 -P 16` runs against the Redis face: median of seven 846,113 → 993,789
    GETs/s (1.17×).
12. **One thread serves the clients, the NATS side runs apart** (`socket.threads`, default 1;
    the layout of the previous stop, replaced by 13). Both ran on one work-stealing runtime with a worker per core: on two
    cores shared with the load generator (and nats-server), a connection's task moved between
    workers and woke threads that the generator needed. Now the socket's connections are served by
    one thread, as redis-server serves its clients, and the NATS connection, the bucket actors and
    their feeds run on a runtime of their own (a worker per core, two at most: with a single
    worker the cold start measured 4–6% slower in two interleaved series, with two the same as
    before). Interleaved `redis-benchmark` runs
    against the Redis face, medians (old layout → new, as ratios to redis-server in the same
    rounds): GET at 50 connections 0.93 → 0.99 (seven rounds), GET pipelined 16 1.05 → 1.14
    (five), MGET of 10 keys 0.93 → 0.98 (seven); pre-encoded GETs at 50 × 16: protocol v1 838k →
    893k/s, the Redis face 1.13M → 1.21M/s. Puts at 16 connections measured the same (16,285 and
    16,455/s, five rounds); running a write's task on the NATS side instead measured 0.7× and was
    dropped. Each layout was first tried by hand: a
    single-threaded runtime for everything (`TOKIO_WORKER_THREADS=1`) was faster on reads but put
    throughput fell to about 0.8×, and a thread per core serving connections without stealing
    helped only unpipelined GETs. With one serving thread, a walk of a large bucket (`KEYS`, `SCAN`,
    v1 `keys`; over 10,000 keys) runs on the blocking pool so that it holds up no other client, and
    a `SCAN` page is one walk that keeps only the page's candidates (it sorted every key of the
    bucket per call: 1.2 s → 0.33 s per `SCAN 0 COUNT 10` on a million keys).
13. **Everything on one thread: writes no longer wake three.** With 12's layout a put crossed
    threads three times (the client's task handed the message to NATS's connection task, the ack
    came back, then the mirror's feed woke the write again): `strace -c` counted 2.3 `eventfd`
    writes per put, and the sidecar spent 45–55 µs of CPU per put at 16 connections, more than
    half of it in the kernel. Now the NATS connection and the bucket actors run on the same runtime
    as the clients' connections (one thread by default, `socket.threads` more), so these wakeups
    are a queue push; the work that would stall that thread runs on the blocking pool instead
    (walks of over 10,000 keys, the lowest-revision check after a reconnect, freeing a replaced
    table). CPU per put fell to 31–34 µs. Interleaved `nearkv bench --workload put --connections
    16` rounds, medians: puts 16,408 → 19,604/s (six rounds, 1.19×), CAS 14,392 → 16,396/s (five,
    1.14×). Reads measured the same in the prototype (`redis-benchmark` GET at 50 connections
    114,482 and 114,286/s, five rounds; the cold start of a million keys 2.89 and 2.93 s, five) and
    a dedicated current-thread runtime for the NATS side gained only 1.05× on puts. The trial under
    12 that found puts at about 0.8× used tokio's multi-thread scheduler with one worker
    (`TOKIO_WORKER_THREADS=1`), not the current-thread scheduler measured here.
14. **Protocol v1's plain `get` takes a lane of its own.** It was decoded by the one-pass reader
    (5), then turned into a `Command` holding `Bytes` slices of the frame (two reference-count
    increments and decrements per request), and its bucket was looked up twice (to answer, and to
    label the metrics). Now the connection answers a plain `get` straight from the decoded
    `(id, bucket, key)`, the bucket found once, as the Redis face's `GET` does; field names are
    compared as bytes, not checked as UTF-8 first. Pre-encoded GETs at 50 connections × 16, two
    sidecars side by side, seven interleaved rounds (`nearkv bench --preencoded`): median 986,631 →
    1,160,266/s (1.18×).
15. **Pipelined `SET`s and `DEL`s are in flight to NATS together.** The Redis face ran a connection's
    commands one by one, so each pipelined `SET` waited for its NATS round trip before the next was
    sent: one connection pipelining 16 `SET`s stored about 6,000 per second. Plain `SET`s (no `NX`,
    `XX` or `GET`), `SETEX`, `PSETEX` and `MSET`'s pairs are now handed to the NATS connection one
    after another, in the order received (so NATS stores them in that order), and awaited together
    before the next other command runs, each answered in its place (docs/RESP.md). Interleaved
    `redis-benchmark -t set` runs, two sidecars side by side, medians of three: 1 connection × 16
    pipelined 6,241 → 31,746/s (5.1×); 50 connections × 16 53,022 → 73,421/s (1.38×); unpipelined
    50 connections the same (35,907 and 34,394/s). `DEL` and `UNLINK` join them (which keys a
    `DEL` deletes is decided from the mirror and the writes before it): node-redis on one client,
    bursts of 50 concurrent `SET`s then 50 `DEL`s, 5,362 and 5,632 → 31,042 and 29,825 writes/s
    (two rounds each).
16. **A burst of plain `get`s is answered where it lies.** The connection took each frame out of its
    input (a `Bytes` split off) and went through its `select!` (shutdown, queued answers, input,
    idle clock) before every request; the Redis face already answered a burst in a plain loop.
    Now the plain `get`s at the front of the input are answered in place, one after the other, and
    the loop comes back to `select!` only for anything else. Pre-encoded GETs at 50 connections ×
    16, two sidecars side by side, ten interleaved rounds: the sidecar's CPU per `get` (user +
    system, `/proc/<pid>/stat`) 1.08 → 0.98 µs (medians), 1,024,010 → 1,039,429 gets/s (faster in
    7 of 10 rounds). On two cores shared with the generator, CPU per request is what decides
    throughput. Tried and not kept: prefetching the next 16 requests' entries in two steps
    (their table positions, then the blocks they point to) to overlap the two cache misses of each
    lookup. Ten interleaved rounds twice: +5.5% and +3% for protocol v1, +5.7% and −1% for the
    Redis face, each faster in only half to four fifths of the rounds.
17. **A waiting request's future is boxed before it is spawned.** A protocol v1 write (and any
    request that waits) runs as a task of its own; its future is about 3.8 KB, and spawning moved
    it by value through several calls into tokio's task cell (`memmove` was the largest user-space
    item of `put c16` in `perf`, 1.2 µs per put). Boxed, spawning moves a pointer. `put` at 16
    connections, two sidecars side by side, two series of six interleaved rounds: the sidecar's
    CPU per put 36.9 → 32.1 µs and 37.9 → 34.8 µs, puts/s 16,505 → 18,440 and 16,062 → 16,857
    (medians).
18. **Pipelined `NEARKV.SET`/`DEL`/`PURGE` are in flight together.** They ran one by one, a NATS
    round trip each, while plain `SET`s were already sent in order and awaited together. Now the
    `NEARKV.*` writes (with or without `IFREV n`; creates still run alone) take the same path; a
    refused one is never sent again, so it keeps its place among the writes sent after it.
    `redis-benchmark -c 1 -P 16 -r 10000 NEARKV.SET key:__rand_int__ <100 bytes>`, two sidecars
    side by side, three interleaved rounds: 4,062 → 22,124 writes/s (medians; plain `SET` on the
    same runs 20,080–25,575/s on both).
19. **Client sockets are registered for reading only.** tokio registers a stream for readable and
    writable readiness at once (edge-triggered). Each time a client read a reply, the kernel's
    write-space callback then found the sidecar's epoll entry asking for writability, queued it,
    and woke the serving thread if it slept: a wake-up for nothing per reply, paid inside the
    client's `recv`. `perf record -g` on `redis-benchmark -c 50 -t get` put 8.5 and 10.1% of its
    samples under `unix_write_space` against nearkv (two runs), 1.8% against redis-server, which
    registers only its readable interest. The sidecar's client sockets
    (`src/server/client_socket.rs`) are now registered for reading only: a reply is written at
    once, and only a write that would block registers a duplicate of the descriptor for
    writability, dropped once the write is through (a unit test reads the registrations from
    `/proc/self/fdinfo`). A read that returns less than it asked for clears the readiness, as
    tokio's own streams do, so no extra `recv` learns that the socket is empty. After: 1.95% of
    redis-benchmark's samples. Seven interleaved rounds of `redis-benchmark -s <socket> -c 50 -n
    300000 -r 10000 -d 100 -t get`, two sidecars side by side and redis-server (medians): the
    sidecar's context switches per GET 0.177 → 0.135 (redis-server 0.121), its CPU per GET 6.67
    → 6.33 µs, GETs/s 105,820 → 107,257 (redis-server 103,448). Pipelined GETs (pre-encoded, 50 ×
    16) measured the same: 0.065 `recvfrom` and 0.065 `sendto` per GET on both.
20. **A connection asks whether the server is shutting down for the price of an atomic load.**
    Each connection's loop waits on its socket and on the shutdown at once, and a task wrapper
    waited on a second token that closed it after the grace period: every wake-up polled both
    `CancellationToken` futures, two mutexes each. `perf record -e cpu-clock:u` under
    `redis-benchmark -c 50 -t get` put the tokens' `is_cancelled`, their waits and their `Notify`
    polls at about 4% of the sidecar's user time. Now the server sets one flag and wakes the
    connections once (`src/server/draining.rs`: the future registers its task on the first poll,
    then reads the flag), and the connections still open after the grace period are aborted from
    their `JoinSet`. Seven interleaved rounds of `redis-benchmark -s <socket> -c 50 -n 400000 -r
    10000 -d 100 -t get`, two sidecars side by side and redis-server, user and system CPU from
    `/proc/<pid>/stat` (medians): the sidecar's user CPU per GET 2.42 → 2.10 µs (redis-server
    1.57), its CPU per GET 6.58 → 6.25 µs (redis-server 5.70), GETs/s 103,600 → 109,529
    (redis-server 109,110).
21. **A reply that goes through at once reads no clock.** Each reply was written under
    `tokio::time::timeout(socket.write_timeout, ...)`, which reads the clock to set its deadline
    (1.5% of the sidecar's user time under the same load). The writer now writes at once and
    starts the timer only when the socket's buffer is full. Seven interleaved rounds as in 20:
    user CPU per GET 2.35 → 2.17 µs, CPU per GET 6.42 → 6.25 µs (medians).
22. **An idle sidecar wakes 5 times a second, not 68.** The NATS connection's state (up, and how
    many times established) was read every 20 ms, so that a write in flight fails at once when
    its connection drops and a feed is recreated as soon as the connection is back. Each read was
    a timer wake-up of the serving thread, plus a wake-up of its own through tokio's event fd
    when the timer was set again: an idle sidecar with one empty bucket spent 4.4 ms of CPU and
    68 wake-ups a second, in every pod. The client's event callback, which the sidecar sets when
    it connects, now signals each connect and disconnect; the state is read at once on an event,
    every 20 ms for 2 s after one (async-nats reports an event just before it records the new
    state), and once a second otherwise. A client an embedder connected, whose callback is not
    ours, is still read every 20 ms. Measured with `perf stat -e
    context-switches,raw_syscalls:sys_enter,task-clock -p <pid> -- sleep 10` on two idle sidecars
    side by side: 684 → 55 context switches, 1,651 → 76 system calls, 43.9 → 8.8 ms of CPU in the
    10 s. The failover tests still see a write in flight at a node's death fail within 2-3 ms, and
    the sidecar write again 22-41 ms after the kill.
"""
    with open(os.path.join(ROOT, "docs", "BENCHMARKS.md"), "w") as f:
        f.write(text)
    with open(os.path.join(ROOT, "docs", "benchmarks.json"), "w") as f:
        json.dump(r, f, indent=1)
    print(text)


def chart(r):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shapes = ["c1 p1", "c16 p1", "c50 p1", "c50 p16"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for target, colour in [("nearkv", "tab:blue"), ("raw", "tab:gray"), ("redis", "tab:red")]:
        xs = [s for s in shapes if f"{target} get {s}" in r]
        axes[0].plot(xs, [r[f"{target} get {s}"]["p50_us"] for s in xs], "o-", color=colour, label=f"{target} p50")
        axes[0].plot(xs, [r[f"{target} get {s}"]["p99_us"] for s in xs], "o--", color=colour, alpha=0.6, label=f"{target} p99")
        axes[1].plot(xs, [r[f"{target} get {s}"]["ops_per_sec"] for s in xs], "o-", color=colour, label=target)
    for s, marker in [("c1 p1", "s"), ("c16 p1", "^")]:
        if f"nats get {s}" in r:
            axes[0].plot([s], [r[f"nats get {s}"]["p50_us"]], marker, color="tab:green", label=f"nats p50 ({s})")
            axes[1].plot([s], [r[f"nats get {s}"]["ops_per_sec"]], marker, color="tab:green", label=f"nats ({s})")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("latency, µs (log)")
    axes[0].set_title("get latency by connections × pipeline")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("ops/s (log)")
    axes[1].set_title("get throughput")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(ROOT, "docs", "benchmarks-latency.png"), dpi=110)


if __name__ == "__main__":
    main()
