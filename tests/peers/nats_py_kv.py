"""A plain NATS KV client (nats-py) for the interop tests.

usage: nats_py_kv.py URL BUCKET put KEY HEXVALUE   -> prints the revision
       nats_py_kv.py URL BUCKET get KEY            -> prints {"value_hex": ..., "revision": ...} or null
"""
import asyncio
import json
import sys

import nats


async def main(url, bucket, op, key, *rest):
    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().key_value(bucket)
        if op == "put":
            print(await kv.put(key, bytes.fromhex(rest[0])))
        elif op == "get":
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                print("null")
                return
            print(json.dumps({"value_hex": (entry.value or b"").hex(), "revision": entry.revision}))
        else:
            raise SystemExit(f"unknown op {op}")
    finally:
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
