//! The Redis face: real Redis clients, unmodified, over the sidecar's Unix socket (the same
//! socket protocol v1 clients use). ./scripts/test.sh installs redis-py into .tools/python, the
//! Node client into tests/peers/node (from its lock file) and Debian's redis-tools.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use nearkv::client::WatchEvent;
use nearkv::config::BucketConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{bucket, NatsServer, Sidecar};

/// `main` (database 0, limit markers so that TTLs work), `second` (database 1), and the
/// read-only `frozen`.
fn buckets() -> Vec<BucketConfig> {
    let mut main = bucket("main");
    main.limit_markers = Duration::from_secs(1);
    let mut frozen = bucket("frozen");
    frozen.read_only = true;
    vec![main, bucket("second"), frozen]
}

fn tool(name: &str) -> String {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()
        .filter(|o| o.status.success());
    match found {
        Some(output) => String::from_utf8_lossy(&output.stdout).trim().to_string(),
        None => panic!(
            "{name} is not installed: run ./scripts/test.sh, which installs Debian's redis-tools \
             (or apt-get install redis-tools redis-server)"
        ),
    }
}

fn run(program: &str, args: &[&str], env: &[(&str, String)], what: &str) -> String {
    let output = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap_or_else(|err| panic!("{what}: cannot run {program}: {err}"));
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn pythonpath() -> String {
    std::env::var("NEARKV_PYTHONPATH")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.tools/python").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_sync_and_asyncio_in_resp2_and_resp3() {
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start(&nats.url(), buckets()).await;
    sidecar.synced_client().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/peers/redis_py_client.py"
    );
    let socket = sidecar.socket.to_str().unwrap().to_string();
    for (mode, protocol) in [("sync", "2"), ("sync", "3"), ("async", "2"), ("async", "3")] {
        let nats_url = nats.url();
        let args = [script, &socket, &nats_url, mode, protocol];
        let out = tokio::task::spawn_blocking({
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                run(
                    "python3",
                    &args,
                    &[("PYTHONPATH", pythonpath())],
                    "redis-py peer (run ./scripts/test.sh, which installs redis-py into .tools/python)",
                )
            }
        })
        .await
        .unwrap();
        let last = out.lines().last().unwrap_or_default().to_string();
        println!("redis-py {mode} RESP{protocol}: {last}");
        assert!(last.starts_with("ok "), "{out}");
    }
}

/// tests/peers/node, with node-redis and ioredis installed from its lock file.
fn node_peer() -> String {
    let dir = std::env::var("NEARKV_NODE_PEER")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/node").to_string());
    for client in ["redis", "ioredis"] {
        assert!(
            std::path::Path::new(&dir)
                .join("node_modules")
                .join(client)
                .exists(),
            "the Node client `{client}` is not installed in {dir}: run ./scripts/test.sh (npm ci there)"
        );
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_redis_in_resp2_and_resp3() {
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start(&nats.url(), buckets()).await;
    sidecar.synced_client().await;
    let script = format!("{}/client.mjs", node_peer());
    let socket = sidecar.socket.to_str().unwrap().to_string();
    for resp in ["2", "3"] {
        let (script, socket) = (script.clone(), socket.clone());
        let out = tokio::task::spawn_blocking(move || {
            run("node", &[&script, &socket, resp], &[], "node-redis peer")
        })
        .await
        .unwrap();
        println!("node-redis RESP{resp}: {}", out.trim());
        assert!(out.trim().starts_with("ok "), "{out}");
    }
}

/// ioredis sends nothing before its ready check (`INFO`) says the server has finished loading: it
/// waits for the sidecar's initial sync, here of a bucket created only after it connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ioredis_waits_for_the_initial_sync_then_works() {
    let nats = NatsServer::start().await;
    let mut late = bucket("late");
    late.create = false;
    let sidecar = Sidecar::start(&nats.url(), vec![buckets().remove(0), late]).await;
    let script = format!("{}/ioredis.mjs", node_peer());
    let socket = sidecar.socket.to_str().unwrap().to_string();
    let peer =
        tokio::task::spawn_blocking(move || run("node", &[&script, &socket], &[], "ioredis peer"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !peer.is_finished(),
        "ioredis became ready before every bucket was synced"
    );
    nats.kv("late").await;
    let out = peer.await.unwrap();
    println!("ioredis: {}", out.trim());
    assert!(out.trim().starts_with("ok "), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_commands_and_pipe() {
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start(&nats.url(), buckets()).await;
    let client = sidecar.synced_client().await;
    let cli = tool("redis-cli");
    let socket = sidecar.socket.to_str().unwrap().to_string();
    let socket_for = socket.clone();
    let cli_for = cli.clone();
    let say = move |args: &[&str]| {
        let mut all = vec!["-s", socket_for.as_str()];
        all.extend_from_slice(args);
        run(&cli_for, &all, &[], "redis-cli").trim().to_string()
    };
    let say = std::sync::Arc::new(say);
    let blocking = |args: Vec<&'static str>| {
        let say = say.clone();
        tokio::task::spawn_blocking(move || say(&args))
    };
    assert_eq!(blocking(vec!["PING"]).await.unwrap(), "PONG");
    assert_eq!(
        blocking(vec!["SET", "cli.k", "hello world"]).await.unwrap(),
        "OK"
    );
    assert_eq!(
        blocking(vec!["GET", "main:cli.k"]).await.unwrap(),
        "hello world"
    );
    assert_eq!(
        blocking(vec!["-n", "1", "SET", "cli.k", "one"])
            .await
            .unwrap(),
        "OK"
    );
    assert_eq!(blocking(vec!["GET", "second:cli.k"]).await.unwrap(), "one");
    let error = blocking(vec!["GET", "nosuch:x"]).await.unwrap();
    assert!(error.starts_with("UNKNOWN_BUCKET"), "{error}");
    // Compare-and-set with a conflict, TTL and SCAN, as the other clients run them.
    let revision = blocking(vec!["NEARKV.SET", "cli.cas", "a"]).await.unwrap();
    let revision: u64 = revision.parse().expect("NEARKV.SET answers the revision");
    let conflict = blocking(vec!["NEARKV.SET", "cli.cas", "b", "IFREV", "1"])
        .await
        .unwrap();
    assert!(
        conflict.starts_with(&format!("WRONG_REVISION current_revision={revision} ")),
        "{conflict}"
    );
    assert_eq!(
        blocking(vec!["SET", "cli.ttl", "v", "EX", "60"])
            .await
            .unwrap(),
        "OK"
    );
    let ttl: i64 = blocking(vec!["TTL", "cli.ttl"])
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&ttl), "{ttl}");
    let scan = blocking(vec!["--scan", "--pattern", "cli.*"])
        .await
        .unwrap();
    let mut scanned: Vec<&str> = scan.lines().collect();
    scanned.sort();
    assert_eq!(scanned, ["cli.cas", "cli.k", "cli.ttl"]);
    // The value is what a protocol v1 client (and so every NATS client) reads.
    let entry = client.get("main", "cli.k").await.unwrap().unwrap();
    assert_eq!(&entry.value[..], b"hello world");

    // Mass insertion with --pipe: raw RESP on stdin, as Redis documents it. More keys than a
    // listing walks inline (1,000), so KEYS, SCAN and v1 `keys` below walk on the blocking pool.
    let mut input = Vec::new();
    for i in 0..12_000 {
        let (key, value) = (format!("pipe.{i}"), format!("v{i}"));
        write!(
            input,
            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
            key.len(),
            value.len()
        )
        .unwrap();
    }
    let (cli_pipe, socket_pipe) = (cli.clone(), socket.clone());
    let output = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(cli_pipe)
            .args(["-s", &socket_pipe, "--pipe"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("redis-cli --pipe starts");
        child.stdin.take().unwrap().write_all(&input).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&output.stdout).to_string();
    println!("redis-cli --pipe: {}", report.trim().replace('\n', " | "));
    assert!(output.status.success(), "{report}");
    assert!(report.contains("errors: 0, replies: 12000"), "{report}");
    let keys = client.keys("main", Some("pipe.*"), false).await.unwrap();
    assert_eq!(keys.len(), 12_000);
    // A watch's initial entries of a bucket this large are listed on the blocking pool: all of
    // them, then the synced marker.
    let mut watch = client.watch("main", Some("pipe.*"), true).await.unwrap();
    let mut listed = std::collections::HashSet::new();
    while let WatchEvent::Entry(entry) = tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("the watch's initial entries arrive")
        .expect("the watch goes on")
        .expect("no error on the watch")
    {
        assert!(listed.insert(entry.key.clone()), "{}", entry.key);
    }
    assert_eq!(
        listed.len(),
        12_000,
        "a watch lists every key of a large bucket"
    );
    drop(watch);
    assert_eq!(
        &client.get("main", "pipe.999").await.unwrap().unwrap().value[..],
        b"v999"
    );
    let say_scan = say.clone();
    let mut scanned = tokio::task::spawn_blocking(move || {
        let (mut cursor, mut scanned) = ("0".to_string(), Vec::new());
        loop {
            let page = say_scan(&["SCAN", &cursor, "MATCH", "pipe.*", "COUNT", "1000"]);
            let mut lines = page.lines();
            cursor = lines.next().expect("SCAN answers a cursor").to_string();
            scanned.extend(lines.map(str::to_string));
            if cursor == "0" {
                return scanned;
            }
        }
    })
    .await
    .unwrap();
    scanned.sort_unstable();
    scanned.dedup();
    assert_eq!(
        scanned.len(),
        12_000,
        "SCAN lists every key of a large bucket"
    );
    let keys = blocking(vec!["KEYS", "pipe.1?"]).await.unwrap();
    let mut keys: Vec<&str> = keys.lines().collect();
    keys.sort_unstable();
    let expected: Vec<String> = (10..20).map(|i| format!("pipe.{i}")).collect();
    assert_eq!(keys, expected);
    // Named with its bucket, a pattern lists keys as `GET` takes them: `bucket:key`.
    let keys = blocking(vec!["KEYS", "main:pipe.1?"]).await.unwrap();
    let mut keys: Vec<&str> = keys.lines().collect();
    keys.sort_unstable();
    let expected: Vec<String> = (10..20).map(|i| format!("main:pipe.{i}")).collect();
    assert_eq!(keys, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_benchmark_drives_nearkv() {
    let nats = NatsServer::start().await;
    // redis-benchmark's keys are `key:<n>`: the bucket named `key`.
    let sidecar = Sidecar::start(&nats.url(), vec![bucket("key")]).await;
    let client = sidecar.synced_client().await;
    let benchmark = tool("redis-benchmark");
    let socket = sidecar.socket.to_str().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        run(
            &benchmark,
            &[
                "-s",
                &socket,
                "-t",
                "set,get,mset",
                "-n",
                "2000",
                "-r",
                "500",
                "-c",
                "10",
                "-d",
                "100",
                "--csv",
            ],
            &[],
            "redis-benchmark",
        )
    })
    .await
    .unwrap();
    println!("redis-benchmark:\n{out}");
    for test in ["\"SET\"", "\"GET\"", "\"MSET (10 keys)\""] {
        let line = out
            .lines()
            .find(|l| l.starts_with(test))
            .unwrap_or_else(|| panic!("no {test} row in {out}"));
        let rps: f64 = line
            .split(',')
            .nth(1)
            .unwrap()
            .trim_matches('"')
            .parse()
            .unwrap();
        assert!(rps > 0.0, "{line}");
    }
    // What it wrote is in the bucket, 100-byte values.
    let keys = client.keys("key", None, false).await.unwrap();
    assert!(!keys.is_empty() && keys.len() <= 500, "{} keys", keys.len());
    let entry = client.get("key", &keys[0]).await.unwrap().unwrap();
    assert_eq!(entry.value.len(), 100);
}

/// [`exchange`]'s answer as text.
async fn exchange_text(socket: &std::path::Path, send: &[u8]) -> String {
    String::from_utf8_lossy(&exchange(socket, send).await).into_owned()
}

async fn exchange(socket: &std::path::Path, send: &[u8]) -> Vec<u8> {
    exchange_within(socket, send, Duration::from_secs(5)).await
}

/// Sends `send` on a new connection and reads until the sidecar closes it (after a `QUIT`), or
/// for `wait` at most.
async fn exchange_within(socket: &std::path::Path, send: &[u8], wait: Duration) -> Vec<u8> {
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    stream.write_all(send).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut got)).await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_protocols_share_the_socket_and_bad_resp_is_refused_without_harm() {
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start_with(&nats.url(), vec![bucket("main")], |config| {
        config.socket.max_frame_size = 64 * 1024;
    })
    .await;
    let client = sidecar.synced_client().await;
    client.put("main", "k", b"v").await.unwrap();
    // An inline command (as telnet sends), then QUIT.
    let got = exchange(&sidecar.socket, b"GET k\r\nQUIT\r\n").await;
    assert_eq!(got, b"$1\r\nv\r\n+OK\r\n");
    // Malformed input: answered with a protocol error, the connection closed.
    for bad in [
        &b"*x\r\n"[..],
        b"*1\r\n:5\r\n",
        b"*1\r\n$-7\r\n",
        b"GET \"open\r\n",
    ] {
        let got = String::from_utf8(exchange(&sidecar.socket, bad).await).unwrap();
        assert!(got.starts_with("-ERR Protocol error"), "{bad:?} -> {got}");
    }
    // A bulk string longer than socket.max_frame_size is refused from its header alone.
    let got = String::from_utf8(
        exchange(
            &sidecar.socket,
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000000\r\n",
        )
        .await,
    )
    .unwrap();
    assert!(
        got.starts_with("-ERR Protocol error: a command of more than 65536 bytes"),
        "{got}"
    );
    // Nothing of that reached the data or the other clients.
    assert_eq!(
        &client.get("main", "k").await.unwrap().unwrap().value[..],
        b"v"
    );
    assert!(client.ping().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_redis_client_is_told_in_resp() {
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start_with(&nats.url(), vec![bucket("main")], |config| {
        config.socket.max_connections = 1;
    })
    .await;
    let _held = tokio::net::UnixStream::connect(&sidecar.socket)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let got = String::from_utf8(exchange(&sidecar.socket, b"*1\r\n$4\r\nPING\r\n").await).unwrap();
    assert!(got.starts_with("-TOO_MANY_CONNECTIONS "), "{got}");
}

/// Clients that wait for Redis to finish loading (ioredis' ready check reads `INFO`'s `loading`)
/// wait for the mirrors' initial sync; clients that look for a primary find one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_says_loading_until_every_bucket_is_synced() {
    let nats = NatsServer::start().await;
    let mut missing = bucket("missing");
    missing.create = false;
    let sidecar = Sidecar::start(&nats.url(), vec![bucket("main"), missing]).await;
    let info = exchange_text(&sidecar.socket, b"INFO persistence\r\nQUIT\r\n").await;
    assert!(info.contains("\r\nloading:1\r\n"), "{info}");
    let told = exchange_text(
        &sidecar.socket,
        b"ROLE\r\nCONFIG GET databases\r\nINFO replication\r\nQUIT\r\n",
    )
    .await;
    assert!(
        told.starts_with("*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n*2\r\n$9\r\ndatabases\r\n$1\r\n2\r\n"),
        "{told}"
    );
    assert!(told.contains("\r\nrole:master\r\n"), "{told}");
}

/// Pipelined plain `SET`s are in flight to NATS together, yet land as if run one by one: in the
/// order sent (revisions grow with it, the last `SET` of a key wins), each answered in its place,
/// an error among them only its own, and every read after them sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_sets_are_stored_in_the_order_sent() {
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start(&nats.url(), buckets()).await;
    let client = sidecar.synced_client().await;
    let mut send = Vec::new();
    // More than one turn of SETs sent together (64).
    for i in 0..150 {
        send.extend(format!("SET same {i}\r\nSET k{i} v\r\n").into_bytes());
        if i == 70 {
            send.extend(b"SET nosuch:k x\r\nSET frozen:k x\r\nDEL frozen:k\r\n");
            send.extend(b"SET second:k EX 1\r\nGET same\r\n");
        }
    }
    send.extend(b"SETEX ttl 30 t\r\nGET same\r\nQUIT\r\n");
    let told = exchange_text(&sidecar.socket, &send).await;
    let (before, after) = told.split_once("-UNKNOWN_BUCKET ").unwrap();
    assert_eq!(before, "+OK\r\n".repeat(142), "{told}");
    let mut lines = after.split("\r\n").skip(1);
    assert!(lines.next().unwrap().starts_with("-READONLY "), "{after}");
    // The refused SET stored nothing: the DEL after it finds no value to delete.
    assert_eq!(lines.next().unwrap(), ":0", "{after}");
    // `SET second:k EX 1`: a syntax error, answered in its place.
    assert_eq!(lines.next().unwrap(), "-ERR syntax error");
    assert_eq!(
        (lines.next(), lines.next()),
        (Some("$2"), Some("70")),
        "a read sees the SETs before it"
    );
    let rest: Vec<&str> = lines.collect();
    // The 158 SETs after it and the SETEX, then GET and QUIT.
    assert_eq!(rest[..159], ["+OK"; 159]);
    assert_eq!(rest[159..], ["$3", "149", "+OK", ""]);

    // NATS stored them in the order sent.
    let mut last = 0;
    for i in 0..150 {
        let entry = client.get("main", &format!("k{i}")).await.unwrap().unwrap();
        assert!(
            entry.revision > last,
            "k{i} at {} after {last}",
            entry.revision
        );
        last = entry.revision;
    }
    let same = client.get("main", "same").await.unwrap().unwrap();
    assert_eq!(&same.value[..], b"149");
    // MSET's pairs too: in flight together, stored in order.
    let told = exchange_text(
        &sidecar.socket,
        b"MSET m a n b m c\r\nMGET m n\r\nMSET m d nosuch:k e\r\nGET m\r\nQUIT\r\n",
    )
    .await;
    assert!(
        told.starts_with("+OK\r\n*2\r\n$1\r\nc\r\n$1\r\nb\r\n-UNKNOWN_BUCKET "),
        "{told}"
    );
    assert!(told.ends_with("\r\n$1\r\nd\r\n+OK\r\n"), "{told}");
    let ttl = exchange_text(&sidecar.socket, b"TTL ttl\r\nQUIT\r\n").await;
    let seconds: u64 = ttl[1..ttl.find("\r\n").unwrap()].parse().unwrap();
    assert!((1..=30).contains(&seconds), "{ttl}");
}

/// Random pipelines of writes and reads of a few keys answer exactly as the same commands run
/// one by one: a connection's `SET`s, `DEL`s and `NEARKV.*` writes may be in flight together,
/// never out of order, and each `IFREV` is compared with the revision the writes before it left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_pipelines_answer_as_if_run_one_by_one() {
    let nats = NatsServer::start().await;
    let sidecar = Sidecar::start(&nats.url(), buckets()).await;
    sidecar.synced_client().await;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |below: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % below
    };
    /// A key's value and the revision of its latest message (a marker's too; 0 if none).
    #[derive(Default, Clone)]
    struct Key {
        value: Option<String>,
        last: u64,
    }
    // Nothing else writes to the bucket: each stored write takes the next revision.
    let told = exchange_text(&sidecar.socket, b"NEARKV.SET r0 start\r\nQUIT\r\n").await;
    let mut revision: u64 = told[1..told.find("\r\n").unwrap()].parse().unwrap();
    let mut model = std::collections::HashMap::<String, Key>::new();
    model.insert(
        "r0".into(),
        Key {
            value: Some("start".into()),
            last: revision,
        },
    );
    let mut stored = |model: &mut std::collections::HashMap<String, Key>, key: &str, value| {
        revision += 1;
        model.insert(
            key.to_string(),
            Key {
                value,
                last: revision,
            },
        );
        revision
    };
    // One line per reply line. A refusal's current_revision is read after NATS refused the
    // write, so it may come from a write pipelined after it: the key's revision then, or a later
    // one, or 0 (no value then, or later). The marker line carries both.
    let refused = |key: &Key| {
        let current = if key.value.is_some() { key.last } else { 0 };
        vec![format!("refused {current} {}", key.last)]
    };
    for round in 0..6 {
        let (mut send, mut expected) = (String::new(), Vec::<String>::new());
        for i in 0..300 {
            let key = format!("r{}", next(4));
            let value = format!("v{round}-{i}");
            let now = model.get(&key).cloned().unwrap_or_default();
            match next(14) {
                0..=3 => {
                    send.push_str(&format!("SET {key} {value}\r\n"));
                    expected.push("+OK".into());
                    stored(&mut model, &key, Some(value));
                }
                4 => {
                    send.push_str(&format!("SETEX {key} 60 {value}\r\n"));
                    expected.push("+OK".into());
                    stored(&mut model, &key, Some(value));
                }
                5 => {
                    let other = format!("r{}", next(4));
                    send.push_str(&format!("MSET {key} {value} {other} {value}x\r\n"));
                    expected.push("+OK".into());
                    stored(&mut model, &key, Some(value.clone()));
                    stored(&mut model, &other, Some(format!("{value}x")));
                }
                6 | 7 => {
                    // One, two or three keys, perhaps one named twice.
                    let keys: Vec<String> =
                        (0..=next(3)).map(|_| format!("r{}", next(4))).collect();
                    send.push_str(&format!("DEL {}\r\n", keys.join(" ")));
                    let mut deleted = 0;
                    for k in &keys {
                        if model.get(k).is_some_and(|k| k.value.is_some()) {
                            stored(&mut model, k, None);
                            deleted += 1;
                        }
                    }
                    expected.push(format!(":{deleted}"));
                }
                8 | 9 => {
                    // No condition, the key's own revision, a create, or a wrong revision.
                    let (option, expect) = match next(4) {
                        0 => (String::new(), None),
                        1 => (format!(" IFREV {}", now.last), Some(now.last)),
                        2 => (" IFREV 0".to_string(), Some(0)),
                        _ => (format!(" IFREV {}", now.last + 7), Some(now.last + 7)),
                    };
                    send.push_str(&format!("NEARKV.SET {key} {value}{option}\r\n"));
                    let holds = match expect {
                        None => true,
                        Some(0) => now.value.is_none(),
                        Some(n) => n == now.last,
                    };
                    if holds {
                        let at = stored(&mut model, &key, Some(value));
                        expected.push(format!(":{at}"));
                    } else {
                        expected.extend(refused(&now));
                    }
                }
                10 => {
                    let command = if next(2) == 0 { "DEL" } else { "PURGE" };
                    let expect = match next(3) {
                        1 if now.last > 0 => Some(now.last),
                        2 if now.last > 0 => Some(now.last + 7),
                        _ => None,
                    };
                    let option = expect.map_or(String::new(), |n| format!(" IFREV {n}"));
                    send.push_str(&format!("NEARKV.{command} {key}{option}\r\n"));
                    if expect.is_none_or(|n| n == now.last) {
                        let at = stored(&mut model, &key, None);
                        expected.push(format!(":{at}"));
                    } else {
                        expected.extend(refused(&now));
                    }
                }
                _ => {
                    send.push_str(&format!("GET {key}\r\n"));
                    match now.value {
                        Some(v) => expected.extend([format!("${}", v.len()), v]),
                        None => expected.push("$-1".into()),
                    }
                }
            }
        }
        send.push_str("QUIT\r\n");
        expected.push("+OK".into());
        let told = exchange_text(&sidecar.socket, send.as_bytes()).await;
        let lines: Vec<&str> = told.trim_end_matches("\r\n").split("\r\n").collect();
        assert_eq!(lines.len(), expected.len(), "round {round}: {send}\n{told}");
        for (at, (line, want)) in lines.iter().zip(&expected).enumerate() {
            let matches = match want.strip_prefix("refused ") {
                Some(revisions) => {
                    let (then, last) = revisions.split_once(' ').unwrap();
                    let (then, last): (u64, u64) = (then.parse().unwrap(), last.parse().unwrap());
                    line.strip_prefix("-WRONG_REVISION current_revision=")
                        .and_then(|rest| rest.split(' ').next()?.parse::<u64>().ok())
                        .is_some_and(|told| told == then || told == 0 || told > last)
                }
                None => line == want,
            };
            assert!(
                matches,
                "round {round}, line {at}: {line:?}, expected {want:?}\n{send}\n{told}"
            );
        }
    }
}

/// Pipelined `SET`s and `DEL`s, sent to NATS together, while NATS is killed (some of them in
/// flight) and restarted: every command is answered in its place, stored or refused with an error
/// that says a retry is safe, and what was acknowledged is what a read finds afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_writes_through_a_nats_restart_are_each_answered() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let mut nats = NatsServer::start().await;
    let sidecar = Sidecar::start(&nats.url(), buckets()).await;
    sidecar.synced_client().await;
    let mut history = PipelinedHistory::new(30);
    for _ in 0..10 {
        assert_eq!(history.round(&sidecar.socket).await, 0, "NATS is up");
    }
    let (done, failed, clean) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let rounds = tokio::spawn({
        let (done, failed, clean) = (done.clone(), failed.clone(), clean.clone());
        let socket = sidecar.socket.clone();
        async move {
            while !done.load(Ordering::SeqCst) {
                match history.round(&socket).await {
                    0 => clean.fetch_add(1, Ordering::SeqCst),
                    n => {
                        failed.fetch_add(n, Ordering::SeqCst);
                        clean.swap(0, Ordering::SeqCst)
                    }
                };
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            history
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        failed.load(Ordering::SeqCst) > 0,
        "pipelined writes kept succeeding with NATS killed"
    );
    nats.restart().await;
    let back = std::time::Instant::now();
    while clean.load(Ordering::SeqCst) < 5 {
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "writes still fail 30 s after NATS came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done.store(true, Ordering::SeqCst);
    let mut history = rounds.await.unwrap();
    for _ in 0..10 {
        assert_eq!(history.round(&sidecar.socket).await, 0, "NATS is back");
    }
    history.check_reads(&sidecar.socket).await;
    assert!(
        history.dels_checked > 10,
        "{} DEL counts checked",
        history.dels_checked
    );
}

/// Rounds of 10 pipelined `SET`s and a `DEL` over a few keys, and what they acknowledged: each
/// key's value (`None`: deleted, or never written), or no entry once a write of it failed (it may
/// or may not have been stored).
struct PipelinedHistory {
    keys: usize,
    known: std::collections::HashMap<String, Option<String>>,
    rounds: usize,
    /// `DEL`s whose count was checked.
    dels_checked: usize,
}

impl PipelinedHistory {
    fn new(keys: usize) -> PipelinedHistory {
        let known = (0..keys).map(|i| (format!("p{i}"), None)).collect();
        PipelinedHistory {
            keys,
            known,
            rounds: 0,
            dels_checked: 0,
        }
    }

    /// Runs one round; returns how many of its commands failed.
    async fn round(&mut self, socket: &std::path::Path) -> usize {
        let round = self.rounds;
        self.rounds += 1;
        let mut writes: Vec<(String, Option<String>)> = (0..10)
            .map(|j| {
                let key = format!("p{}", (round * 10 + j) % self.keys);
                (key, Some(format!("v{round}-{j}")))
            })
            .collect();
        writes.push((format!("p{}", (round * 7) % self.keys), None));
        let mut send = String::new();
        for (key, value) in &writes {
            match value {
                Some(value) => send.push_str(&format!("SET {key} {value}\r\n")),
                None => send.push_str(&format!("DEL {key}\r\n")),
            }
        }
        send.push_str("QUIT\r\n");
        // Longer than socket.request_timeout, the most a write waits for NATS.
        let told = exchange_within(socket, send.as_bytes(), Duration::from_secs(30)).await;
        let told = String::from_utf8_lossy(&told).into_owned();
        let answers: Vec<&str> = told.split("\r\n").collect();
        assert_eq!(
            answers.len(),
            writes.len() + 2,
            "one answer per command: {told}"
        );
        assert_eq!(answers[writes.len()..], ["+OK", ""], "{told}");
        let mut failed = 0;
        for ((key, value), answer) in writes.iter().zip(&answers) {
            if let Some(code) = answer.strip_prefix('-') {
                let code = code.split(' ').next().unwrap_or_default();
                assert!(
                    ["UNAVAILABLE", "TIMEOUT"].contains(&code),
                    "an error that does not say to retry: {told}"
                );
                self.known.remove(key);
                failed += 1;
                continue;
            }
            match value {
                Some(value) => {
                    assert_eq!(*answer, "+OK", "{told}");
                    self.known.insert(key.clone(), Some(value.clone()));
                }
                None => {
                    // A DEL counts what the writes before it in the batch left, when all of
                    // them were stored.
                    if let (0, Some(state)) = (failed, self.known.get(key)) {
                        let count = if state.is_some() { ":1" } else { ":0" };
                        assert_eq!(*answer, count, "DEL {key}: {told}");
                        self.dels_checked += 1;
                    }
                    assert!(answer.starts_with(':'), "{told}");
                    // `:0` sent nothing: a write that failed before it may still show up.
                    if *answer != ":0" {
                        self.known.insert(key.clone(), None);
                    }
                }
            }
        }
        failed
    }

    /// Every key whose last write was acknowledged reads as that write left it.
    async fn check_reads(&self, socket: &std::path::Path) {
        let keys: Vec<String> = (0..self.keys).map(|i| format!("p{i}")).collect();
        let told = exchange_text(
            socket,
            format!("MGET {}\r\nQUIT\r\n", keys.join(" ")).as_bytes(),
        )
        .await;
        let mut lines = told.split("\r\n");
        assert_eq!(
            lines.next(),
            Some(format!("*{}", self.keys).as_str()),
            "{told}"
        );
        let mut checked = 0;
        for key in &keys {
            let read = match lines.next() {
                Some("$-1") => None,
                Some(_) => lines.next().map(str::to_string),
                None => panic!("{told}"),
            };
            if let Some(known) = self.known.get(key) {
                assert_eq!(&read, known, "{key}");
                checked += 1;
            }
        }
        assert!(
            checked > self.keys / 2,
            "only {checked} keys known at the end"
        );
    }
}
