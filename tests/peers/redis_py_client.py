"""redis-py, unmodified, against nearkv's Unix socket: the documented commands of docs/RESP.md.

usage: redis_py_client.py SOCKET NATS_URL sync|async 2|3

The sidecar mirrors three buckets: `main` (database 0, with limit markers so TTLs work),
`second` (database 1) and `frozen` (read-only). Each check raises on a wrong answer; the last
line printed is "ok <checks>".
"""
import asyncio
import sys
import time

import nats
import redis
import redis.asyncio

SOCKET, NATS_URL, MODE, PROTOCOL = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
TAG = f"{MODE}{PROTOCOL}"
checks = 0


def check(condition, what):
    global checks
    if not condition:
        raise AssertionError(f"[{TAG}] {what}")
    checks += 1


def field(reply, name):
    """A NEARKV.GET reply: a dict in RESP3, a flat list in RESP2."""
    if isinstance(reply, dict):
        return reply[name.encode()] if name.encode() in reply else reply[name]
    items = list(reply)
    for i in range(0, len(items), 2):
        if items[i] in (name, name.encode()):
            return items[i + 1]
    raise KeyError(name)


async def nats_put(bucket, key, value):
    nc = await nats.connect(NATS_URL)
    try:
        kv = await nc.jetstream().key_value(bucket)
        return await kv.put(key, value)
    finally:
        await nc.close()


async def nats_get(bucket, key):
    nc = await nats.connect(NATS_URL)
    try:
        kv = await nc.jetstream().key_value(bucket)
        return (await kv.get(key)).value
    finally:
        await nc.close()


def wait_message(pubsub, want, timeout=10.0):
    deadline = time.time() + timeout
    seen = []
    while time.time() < deadline:
        message = pubsub.get_message(timeout=0.2)
        if message and message["type"] in ("message", "pmessage"):
            seen.append((message["channel"], message["data"]))
            if (message["channel"], message["data"]) == want:
                return
    raise AssertionError(f"[{TAG}] no {want} among {seen}")


def run_sync():
    r = redis.Redis(unix_socket_path=SOCKET, protocol=PROTOCOL)
    second = redis.Redis(unix_socket_path=SOCKET, db=1, protocol=PROTOCOL)
    check(r.ping() is True, "PING")
    p = f"{TAG}-"
    # Bucket addressing: a key of database 0, the same key as bucket:key, database 1.
    check(r.set(p + "a", "1") is True, "SET")
    check(r.get(p + "a") == b"1", "GET from database 0")
    check(r.get("main:" + p + "a") == b"1", "GET bucket:key")
    check(second.set(p + "b", "two") is True, "SET in database 1")
    check(r.get("second:" + p + "b") == b"two", "database 1 is bucket second")
    check(r.get(p + "b") is None, "database 0 does not see database 1's key")
    r.execute_command("SELECT", 1)
    check(r.get(p + "b") == b"two", "SELECT 1")
    r.execute_command("SELECT", 0)
    # Values are the exact bytes given, as every NATS client reads them.
    binary = bytes(range(256))
    r.set(p + "bin", binary)
    check(r.get(p + "bin") == binary, "binary value")
    check(asyncio.run(nats_get("main", p + "bin")) == binary, "nats-py reads the bytes redis-py wrote")
    asyncio.run(nats_put("main", p + "fromnats", b"hello\x00"))
    deadline = time.time() + 5
    while r.get(p + "fromnats") is None and time.time() < deadline:
        time.sleep(0.02)
    check(r.get(p + "fromnats") == b"hello\x00", "redis-py reads what nats-py wrote")
    # Strings.
    check(r.mget([p + "a", p + "missing", "second:" + p + "b"]) == [b"1", None, b"two"], "MGET")
    check(r.set(p + "a", "x", nx=True) is None, "SET NX on an existing key")
    check(r.set(p + "new", "x", nx=True) is True, "SET NX creates")
    check(r.set(p + "absent", "x", xx=True) is None, "SET XX on an absent key")
    check(r.set(p + "a", "2", get=True) == b"1", "SET GET answers the old value")
    check(r.exists(p + "a", p + "new", p + "missing") == 2, "EXISTS counts")
    check(r.strlen(p + "a") == 1 and r.type(p + "a") in (b"string", "string"), "STRLEN, TYPE")
    check(r.setnx(p + "a", "3") is False, "SETNX")
    check(r.mset({p + "m1": "1", p + "m2": "2"}) is True, "MSET")
    check(r.getdel(p + "m1") == b"1" and r.get(p + "m1") is None, "GETDEL")
    check(r.delete(p + "m2", p + "missing") == 1, "DEL counts the keys that existed")
    # Read-your-writes in a pipeline: each command sees the ones before it.
    pipe = r.pipeline(transaction=False)
    pipe.set(p + "pipe", "v1").get(p + "pipe").set(p + "pipe", "v2").get(p + "pipe")
    check(pipe.execute() == [True, b"v1", True, b"v2"], "pipelined writes then reads")
    # TTL (NATS per-message TTL, at least one second).
    check(r.set(p + "ttl", "v", ex=30) is True, "SET EX")
    check(0 < r.ttl(p + "ttl") <= 30 and 0 < r.pttl(p + "ttl") <= 30000, "TTL and PTTL")
    check(r.ttl(p + "a") == -1 and r.ttl(p + "missing") == -2, "TTL without expiry, of a missing key")
    r.set(p + "short", "v", px=1000)
    deadline = time.time() + 10
    while r.get(p + "short") is not None and time.time() < deadline:
        time.sleep(0.05)
    check(r.get(p + "short") is None, "a value expires after its TTL")
    # SCAN and KEYS with Redis glob patterns.
    for i in range(40):
        r.set(f"{p}scan.{i}", i)
    found = set(r.scan_iter(match=p + "scan.*", count=7))
    check(found == {f"{p}scan.{i}".encode() for i in range(40)}, f"SCAN finds every key ({len(found)})")
    check(sorted(r.keys(p + "scan.1?")) == sorted(f"{p}scan.1{i}".encode() for i in range(10)), "KEYS pattern")
    check(r.dbsize() >= 40, "DBSIZE")
    # Compare-and-set through NEARKV.*.
    rev = r.execute_command("NEARKV.SET", p + "cas", "v1")
    rev2 = r.execute_command("NEARKV.SET", p + "cas", "v2", "IFREV", rev)
    check(rev2 > rev, "NEARKV.SET IFREV with the right revision")
    try:
        r.execute_command("NEARKV.SET", p + "cas", "v3", "IFREV", rev)
        check(False, "a stale IFREV must fail")
    except redis.ResponseError as err:
        check(str(err).startswith(f"WRONG_REVISION current_revision={rev2} "), f"WRONG_REVISION: {err}")
    try:
        r.execute_command("NEARKV.SET", p + "cas", "again", "IFREV", 0)
        check(False, "IFREV 0 on an existing key must fail")
    except redis.ResponseError as err:
        check(str(err).startswith("WRONG_REVISION"), "IFREV 0 is a create")
    entry = r.execute_command("NEARKV.GET", p + "cas", "STRONG")
    check(field(entry, "value") == b"v2" and field(entry, "revision") == rev2, f"NEARKV.GET {entry}")
    check(field(entry, "mirror_revision") >= rev2, "NEARKV.GET carries the mirror's revision")
    rev3 = r.execute_command("NEARKV.DEL", p + "cas", "IFREV", rev2)
    check(rev3 > rev2 and r.get(p + "cas") is None, "NEARKV.DEL IFREV")
    keys = r.execute_command("NEARKV.KEYS", "main:" + p + "scan.*")
    check(len(keys) == 40, "NEARKV.KEYS takes NATS wildcards")
    status = r.execute_command("NEARKV.STATUS", "main")
    check(len(status) == 1 and field(status[0], "bucket") == b"main", f"NEARKV.STATUS {status}")
    # Errors.
    for command, prefix in [
        (("GET", "nosuch:k"), "UNKNOWN_BUCKET"),
        (("GET", "bad key"), "INVALID_KEY"),
        (("HGETALL", "h"), "unknown command"),
        (("SET", "k"), "wrong number of arguments"),
    ]:
        try:
            r.execute_command(*command)
            check(False, f"{command} must fail")
        except redis.ResponseError as err:
            check(str(err).startswith(prefix), f"{command}: {err}")
    try:
        r.set("frozen:" + p + "k", "v")
        check(False, "a read-only bucket refuses writes")
    except redis.exceptions.ReadOnlyError as err:
        check("read-only" in str(err), f"READONLY: {err}")
    # Keyspace notifications, seen by a subscriber when another client, and nats-py, write.
    sub = redis.Redis(unix_socket_path=SOCKET, protocol=PROTOCOL).pubsub()
    sub.psubscribe("__keyspace@0__:" + p + "watched*")
    sub.subscribe("__keyevent@0__:del", "__nearkv@0__:" + p + "watched")
    time.sleep(0.2)
    r.set(p + "watched", "1")
    wait_message(sub, (f"__keyspace@0__:{p}watched".encode(), b"set"))
    revision = asyncio.run(nats_put("main", p + "watched", b"2"))
    wait_message(sub, (f"__nearkv@0__:{p}watched".encode(), f"set {revision}".encode()))
    r.delete(p + "watched")
    wait_message(sub, (b"__keyevent@0__:del", (p + "watched").encode()))
    sub.close()
    # Handshake commands clients send.
    r.client_setname("tester")
    check(r.client_getname() in (b"tester", "tester"), "CLIENT SETNAME/GETNAME")
    info = r.info()
    check("redis_version" in info and "db0" in info, "INFO")
    check(r.info("persistence")["loading"] == 0, "INFO persistence: loading:0 once synced")
    check(r.info("replication")["role"] == "master", "INFO replication")
    check(r.execute_command("ROLE")[0] in (b"master", "master"), "ROLE")
    check(r.config_get("databases") == {"databases": "3"}, f"CONFIG GET databases: {r.config_get('databases')}")
    check(r.echo("hi") == b"hi", "ECHO")
    try:
        redis.Redis(unix_socket_path=SOCKET, password="secret", protocol=PROTOCOL).ping()
        check(False, "AUTH must fail")
    except redis.exceptions.ResponseError as err:
        check("peer" in str(err), f"AUTH: {err}")
    except redis.exceptions.AuthenticationError as err:
        check("peer" in str(err), f"AUTH: {err}")


async def run_async():
    r = redis.asyncio.Redis(unix_socket_path=SOCKET, protocol=PROTOCOL)
    p = f"{TAG}-"
    check(await r.ping() is True, "PING")
    check(await r.set(p + "a", "1") is True, "SET")
    check(await r.get("main:" + p + "a") == b"1", "GET bucket:key")
    results = await asyncio.gather(*(r.set(f"{p}c{i}", i) for i in range(50)))
    check(all(x is True for x in results), "concurrent SETs")
    values = await r.mget([f"{p}c{i}" for i in range(50)])
    check(values == [str(i).encode() for i in range(50)], "MGET after concurrent SETs")
    rev = await r.execute_command("NEARKV.SET", p + "cas", "v1")
    try:
        await r.execute_command("NEARKV.SET", p + "cas", "v2", "IFREV", rev + 100)
        check(False, "a wrong IFREV must fail")
    except redis.ResponseError as err:
        check(str(err).startswith(f"WRONG_REVISION current_revision={rev} "), f"{err}")
    sub = redis.asyncio.Redis(unix_socket_path=SOCKET, protocol=PROTOCOL).pubsub()
    await sub.subscribe("__keyspace@0__:" + p + "w")
    await asyncio.sleep(0.2)
    await r.set(p + "w", "x")
    deadline = time.time() + 10
    got = None
    while time.time() < deadline:
        message = await sub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message:
            got = message
            break
    check(got is not None and got["data"] == b"set", f"async keyspace notification {got}")
    await sub.aclose()
    await r.aclose()


if MODE == "sync":
    run_sync()
else:
    asyncio.run(run_async())
print(f"ok {checks}")
