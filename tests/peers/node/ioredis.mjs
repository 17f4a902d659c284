// ioredis, unmodified, against nearkv's Unix socket: its ready check waits for the mirrors'
// initial sync (INFO's `loading`), then the documented commands of docs/RESP.md work.
//
// usage: node ioredis.mjs SOCKET
// The sidecar mirrors `main` (database 0, with limit markers) and `late`, a bucket that the test
// creates in NATS only after this client has connected. Prints "ok <checks> waited_ms=<ms>" or
// exits non-zero with what was wrong.
import Redis from "ioredis";
import { checker } from "./check.mjs";

const socket = process.argv[2];
const tag = "ioredis-";
const checks = checker(tag);
const check = checks.check;

const started = Date.now();
const client = new Redis({ path: socket });
client.on("error", (err) => console.error("client error", err.message));
// Sent before the client is ready: ioredis queues it until its ready check passes.
const queued = client.get("late:" + tag + "k");
await new Promise((resolve) => client.once("ready", resolve));
const waited = Date.now() - started;
const nearkv = await client.info("nearkv");
check(!nearkv.includes("synced=0"), `ready only once every bucket is synced: ${nearkv}`);
check((await queued) === null, "the queued GET of the late bucket");

check((await client.set(tag + "a", "1")) === "OK", "SET");
check((await client.get("main:" + tag + "a")) === "1", "GET bucket:key");
check(JSON.stringify(await client.mget(tag + "a", tag + "none")) === JSON.stringify(["1", null]), "MGET");
await client.set(tag + "ttl", "v", "PX", 30000);
const pttl = await client.pttl(tag + "ttl");
check(pttl > 0 && pttl <= 30000, `PTTL ${pttl}`);
const piped = await client.pipeline().set(tag + "p", "v1").get(tag + "p").set(tag + "p", "v2").get(tag + "p").exec();
check(JSON.stringify(piped.map(([err, value]) => err ?? value)) === JSON.stringify(["OK", "v1", "OK", "v2"]),
  `read-your-writes in a pipeline: ${JSON.stringify(piped)}`);
const rev = await client.call("NEARKV.SET", tag + "cas", "v1");
try {
  await client.call("NEARKV.SET", tag + "cas", "v2", "IFREV", String(rev - 1));
  check(false, "a stale IFREV must fail");
} catch (err) {
  check(err.message.startsWith(`WRONG_REVISION current_revision=${rev} `), `stale IFREV: ${err.message}`);
}
check((await client.role())[0] === "master", "ROLE");
client.disconnect();
console.log(`ok ${checks.count} waited_ms=${waited}`);
