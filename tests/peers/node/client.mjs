// node-redis, unmodified, against nearkv's Unix socket: the documented commands of docs/RESP.md.
//
// usage: node client.mjs SOCKET 2|3
// The sidecar mirrors `main` (database 0, with limit markers) and `second` (database 1), as for
// tests/peers/redis_py_client.py. Prints "ok <checks>" or exits non-zero with what was wrong.
import { createClient } from "redis";
import { checker } from "./check.mjs";

const [socket, resp] = [process.argv[2], Number(process.argv[3])];
const tag = `node${resp}-`;
const checks = checker(tag);
const check = checks.check;
async function rejects(promise, prefix, what) {
  try {
    await promise;
    check(false, `${what} must fail`);
  } catch (err) {
    check(String(err.message).startsWith(prefix), `${what}: ${err.message}`);
  }
}
const options = { socket: { path: socket }, RESP: resp };
const client = createClient(options);
client.on("error", (err) => console.error("client error", err));
await client.connect();
const second = createClient({ ...options, database: 1 });
await second.connect();

check((await client.ping()) === "PONG", "PING");
check((await client.set(tag + "a", "1")) === "OK", "SET");
check((await client.get(tag + "a")) === "1", "GET");
check((await client.get("main:" + tag + "a")) === "1", "GET bucket:key");
await second.set(tag + "b", "two");
check((await client.get("second:" + tag + "b")) === "two", "database 1 is bucket second");
check((await client.get(tag + "b")) === null, "database 0 does not see it");
check(JSON.stringify(await client.mGet([tag + "a", tag + "none"])) === JSON.stringify(["1", null]), "MGET");
check((await client.set(tag + "a", "x", { condition: "NX" })) === null, "SET NX on an existing key");
await client.set(tag + "ttl", "v", { expiration: { type: "EX", value: 30 } });
const ttl = await client.ttl(tag + "ttl");
check(ttl > 0 && ttl <= 30, `TTL ${ttl}`);

// Pipelined (auto-pipelined by node-redis): each command sees the writes before it.
const [s1, g1, s2, g2] = await Promise.all([
  client.set(tag + "p", "v1"),
  client.get(tag + "p"),
  client.set(tag + "p", "v2"),
  client.get(tag + "p"),
]);
check(s1 === "OK" && g1 === "v1" && s2 === "OK" && g2 === "v2", "read-your-writes in a pipeline");

for (let i = 0; i < 30; i++) await client.set(`${tag}scan.${i}`, String(i));
const seen = new Set();
for await (const page of client.scanIterator({ MATCH: tag + "scan.*", COUNT: 7 })) {
  for (const key of Array.isArray(page) ? page : [page]) seen.add(key);
}
check(seen.size === 30, `SCAN found ${seen.size} keys`);

const rev = await client.sendCommand(["NEARKV.SET", tag + "cas", "v1"]);
const rev2 = await client.sendCommand(["NEARKV.SET", tag + "cas", "v2", "IFREV", String(rev)]);
check(rev2 > rev, "NEARKV.SET IFREV");
await rejects(
  client.sendCommand(["NEARKV.SET", tag + "cas", "v3", "IFREV", String(rev)]),
  `WRONG_REVISION current_revision=${rev2} `,
  "stale IFREV",
);
await rejects(client.get("nosuch:k"), "UNKNOWN_BUCKET", "unknown bucket");
await rejects(client.sendCommand(["LPUSH", "l", "x"]), "ERR unknown command", "LPUSH");

// Keyspace notifications on a subscriber connection.
const subscriber = client.duplicate();
await subscriber.connect();
const got = new Promise((resolve) => {
  subscriber.pSubscribe(`__keyspace@0__:${tag}w*`, (message, channel) => resolve([channel, message]));
});
await new Promise((r) => setTimeout(r, 200));
await client.set(tag + "w", "x");
const [channel, message] = await Promise.race([
  got,
  new Promise((_, reject) => setTimeout(() => reject(new Error("no notification")), 10000)),
]);
check(channel === `__keyspace@0__:${tag}w` && message === "set", `notification ${channel} ${message}`);

await subscriber.quit();
await second.quit();
await client.quit();
console.log(`ok ${checks.count}`);
