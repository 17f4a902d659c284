"""A nearkv client in Python, written from docs/PROTOCOL.md alone (needs the `msgpack` package).

usage: protocol_client.py SOCKET BUCKET   -> runs a scripted session, prints one JSON line per step
"""
import json
import socket
import struct
import sys

import msgpack


class Nearkv:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.next_id = 1
        self.pending = {}  # responses that arrived for other ids

    def send(self, op, **fields):
        rid = self.next_id
        self.next_id += 1
        body = msgpack.packb({"id": rid, "op": op, **fields}, use_bin_type=True)
        self.sock.sendall(struct.pack(">I", len(body)) + body)
        return rid

    def read(self):
        length = struct.unpack(">I", self._exact(4))[0]
        return msgpack.unpackb(self._exact(length), raw=False)

    def _exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("connection closed")
            buf += chunk
        return buf

    def wait(self, rid):
        while rid not in self.pending:
            msg = self.read()
            self.pending[msg["id"]] = msg
        return self.pending.pop(rid)

    def call(self, op, **fields):
        return self.wait(self.send(op, **fields))


def main(path, bucket):
    c = Nearkv(path)
    out = lambda step, value: print(json.dumps({"step": step, "value": value}), flush=True)
    out("ping", c.call("ping"))
    put = c.call("put", bucket=bucket, key="py.1", value=b"\x00hello")
    out("put", put)
    got = c.call("get", bucket=bucket, key="py.1")
    out("get", {"value_hex": got["entry"]["value"].hex(), "revision": got["entry"]["revision"],
                "operation": got["entry"]["operation"], "mirror_revision": got["revision"],
                "age_ms": got["age_ms"]})
    strong = c.call("get", bucket=bucket, key="py.1", consistency="strong", allow_stale=None)
    out("strong", {"mirror_revision": strong["revision"], "value_hex": strong["entry"]["value"].hex()})
    out("ttl_on_delete", c.call("delete", bucket=bucket, key="py.1", ttl_ms=5000)["error"]["code"])
    out("get_absent", c.call("get", bucket=bucket, key="py.none"))
    out("cas_conflict", c.call("put", bucket=bucket, key="py.1", value=b"x", expect_revision=0)["error"])
    out("cas_ok", c.call("put", bucket=bucket, key="py.1", value=b"y", expect_revision=put["revision"]))
    out("unknown_bucket", c.call("get", bucket="nope", key="k")["error"]["code"])
    out("invalid_key", c.call("get", bucket=bucket, key="a..b")["error"]["code"])
    out("unknown_op", c.call("fly")["error"]["code"])
    # Pipelined: three requests written before any response is read.
    ids = [c.send("get", bucket=bucket, key="py.1") for _ in range(3)]
    out("pipelined", [c.wait(i)["entry"]["value"].decode() for i in ids])
    wid = c.send("watch", bucket=bucket, filter="py.>")
    out("watch", c.wait(wid))
    first = c.wait(wid)
    out("watch_initial", {"key": first["event"]["key"], "operation": first["event"]["operation"]})
    out("watch_synced", c.wait(wid))
    deleted = c.call("delete", bucket=bucket, key="py.1")
    event = c.wait(wid)
    out("watch_delete", {"operation": event["event"]["operation"], "revision_matches": event["event"]["revision"] == deleted["revision"]})
    uid = c.send("unwatch", watch=wid)
    out("unwatch", c.wait(uid))
    out("watch_end", c.wait(wid))
    out("keys", c.call("keys", bucket=bucket, filter="py.>"))
    status = c.call("status", bucket=bucket)
    out("status", {"bucket": status["buckets"][0]["bucket"], "synced": status["buckets"][0]["synced"]})


if __name__ == "__main__":
    main(*sys.argv[1:])
